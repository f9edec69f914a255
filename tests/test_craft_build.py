"""mtrs craft build on real LEVIR-CD and OSCD samples and on generated scenes with known classes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_craft.builders import (
    SEMANTIC_SCENES,
    box_mask,
    make_georeferenced_scene,
    make_semantic,
)
from PIL import Image

from mtrs_geo.cli.craft import craft
from mtrs_geo.craft.builder import BuildOptions, build
from mtrs_geo.craft.sources import SourceOptions
from mtrs_geo.errors import InputError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LEVIR = SHARED / "levir-cd"
OSCD = SHARED / "oscd"
CAPTIONS = SHARED / "levir-cc-examples" / "levir_mci_captions.jsonl"
COMPASS = re.compile(r"\b(north|south|east|west|centre|central|middle)")
IMAGE_WORDS = re.compile(r"\b(top|bottom|left|right|upper|lower|centre|middle)\b")

needs_levir = pytest.mark.skipif(not LEVIR.is_dir(), reason="../shared/data/levir-cd missing")
needs_oscd = pytest.mark.skipif(not OSCD.is_dir(), reason="../shared/data/oscd missing")


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _pairs(root: Path) -> list[tuple[Path, dict]]:
    return [
        (path.parent.parent, json.loads(path.read_text()))
        for path in sorted(root.glob("*/referring_expression/*.json"))
    ]


def _check_masks_are_unions(root: Path) -> dict[str, int]:
    """Every mask equals the union of the instances its expression names; return kind counts."""
    kinds: dict[str, int] = {}
    for folder, meta in _pairs(root):
        instances = _read(folder / meta["instance_map"])
        assert len(meta["mask"]) == len(meta["referring_expressions"])
        for entry, kind, ids in zip(
            meta["mask"], meta["expression_kinds"], meta["instance_ids"], strict=True
        ):
            mask = _read(folder / entry["path"]) > 0
            assert np.array_equal(mask, np.isin(instances, ids)), entry["path"]
            assert (kind == "no_target") == (not mask.any()), entry["path"]
            assert (kind == "no_target") == (ids == [])
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def levir_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not LEVIR.is_dir():
        pytest.skip("../shared/data/levir-cd missing")
    out = tmp_path_factory.mktemp("levir") / "dataset"
    options = BuildOptions(SourceOptions("levir-cd", subject="building"), seed=5, captions=CAPTIONS)
    build(LEVIR, out, options)
    return out


@pytest.fixture(scope="module")
def semantic_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("semantic") / "input"
    make_semantic(root)
    return root


@needs_levir
def test_levir_build_has_the_expected_kinds_and_every_mask_is_the_union_of_its_instances(
    levir_dataset: Path,
) -> None:
    kinds = _check_masks_are_unions(levir_dataset)
    assert {"all", "place", "instance", "count", "no_target"} <= set(kinds)
    texts = [t for _, meta in _pairs(levir_dataset) for t in meta["referring_expressions"]]
    assert all("building" in t for t in texts if "change" not in t)
    assert not any(re.search(r"north|south|east|west", t) for t in texts), "compass words in PNGs"
    assert any(IMAGE_WORDS.search(t) for t in texts)
    sheet = json.loads((levir_dataset / "datasheet.json").read_text())
    assert sheet["triplets"] == len(texts)
    assert sheet["expressions_per_kind"] == dict(sorted(kinds.items()))
    assert 0 < sheet["empty_target_share"] < 1
    assert sum(b["count"] for b in sheet["expression_length_words"]) == len(texts)
    assert (levir_dataset / "datasheet.md").read_text().startswith("# Datasheet")
    # real LEVIR-MCI captions: the grammar plus the class name covers most of their top words
    assert sheet["caption_vocabulary"]["captions"] == 50385
    assert sheet["caption_vocabulary"]["share"] >= 0.5


@needs_levir
def test_levir_output_loads_with_the_training_loader(levir_dataset: Path) -> None:
    from mtrs_geo.models.data.mtrefseg import MTRefSegDataset, list_splits

    splits = list_splits(levir_dataset)
    assert set(splits) <= {"train", "val", "test"} and "train" in splits
    total = 0
    for split in splits:
        dataset = MTRefSegDataset(levir_dataset, split)
        metas = [meta for folder, meta in _pairs(levir_dataset) if folder.name == split]
        assert len(dataset) == sum(len(m["referring_expressions"]) for m in metas)
        total += len(dataset)
        sample = dataset[0]
        assert sample["image_a"].shape[0] == 3 and sample["mask"].ndim >= 2
        first = metas[0]
        expected = (_read(levir_dataset / split / first["mask"][0]["path"]) > 0).sum()
        assert float(sample["mask"].sum()) == float(expected)
        assert sample["text"] == first["referring_expressions"][0]
    sheet = json.loads((levir_dataset / "datasheet.json").read_text())
    assert total == sheet["triplets"]


@needs_levir
def test_splits_are_made_by_scene(levir_dataset: Path) -> None:
    split_of: dict[str, set[str]] = {}
    for folder, meta in _pairs(levir_dataset):
        split_of.setdefault(meta["scene"], set()).add(folder.name)
    assert all(len(splits) == 1 for splits in split_of.values())
    # test_2_0000_0000 and test_2_0000_0512 are crops of one LEVIR scene
    assert split_of["test_2"] and len(split_of) == 10


@needs_oscd
def test_oscd_build_uses_compass_words_ground_areas_and_ndvi(tmp_path: Path) -> None:
    out = tmp_path / "oscd"
    source = SourceOptions("oscd", subject="urban area", direction="appeared")
    build(OSCD, out, BuildOptions(source, seed=2, max_expressions=20))
    kinds = _check_masks_are_unions(out)
    assert {"all", "direction", "place", "instance", "no_target"} <= set(kinds)
    texts = [t for _, meta in _pairs(out) for t in meta["referring_expressions"]]
    assert any(COMPASS.search(t) for t in texts)
    assert not any(re.search(r"\b(top|bottom)\b", t) for t in texts)
    instances = [i for _, meta in _pairs(out) for i in meta["instances"]]
    # Sentinel-2 10 m bands in EPSG:4326: about 100 m2 per pixel on the ground
    per_pixel = [i["area_m2"] / i["pixels"] for i in instances]
    assert 80 < min(per_pixel) and max(per_pixel) < 130
    # B08 gives NDVI: some urban changes read as vegetation loss
    assert any(i["vegetation"] == "loss" for i in instances)
    # a declared "appeared" map proves demolitions absent: an empty no-target expression
    assert any(
        kind == "no_target" and "disappeared" in label
        for _, meta in _pairs(out)
        for kind, label in zip(meta["expression_kinds"], meta["expression_classes"], strict=True)
    )


def test_semantic_scene_transitions_select_exactly_their_known_changes(
    semantic_input: Path, tmp_path: Path
) -> None:
    out = tmp_path / "semantic"
    options = BuildOptions(SourceOptions("semantic"), seed=0, max_expressions=40)
    build(semantic_input, out, options)
    kinds = _check_masks_are_unions(out)
    assert set(kinds) >= {
        "all", "class", "direction", "place", "instance", "count", "spectral", "no_target"
    }  # fmt: skip
    checked = 0
    for folder, meta in _pairs(out):
        boxes = SEMANTIC_SCENES[Path(meta["img_A"]).stem]
        for text, kind, label, entry in zip(
            meta["referring_expressions"],
            meta["expression_kinds"],
            meta["expression_classes"],
            meta["mask"],
            strict=True,
        ):
            mask = _read(folder / entry["path"]) > 0
            if kind == "class":  # "farmland turned into buildings" = every box of that transition
                assert np.array_equal(mask, box_mask(boxes, 144, label)), text
                checked += 1
            if kind == "all":
                assert np.array_equal(mask, box_mask(boxes, 144)), text
            if kind == "no_target":
                assert not mask.any()
    assert checked >= 4
    alpha = json.loads((out / "train" / "referring_expression" / "alpha_0000.json").read_text())
    largest = [
        (t, ids)
        for t, ids, label in zip(
            alpha["referring_expressions"],
            alpha["instance_ids"],
            alpha["expression_classes"],
            strict=True,
        )
        if re.search(r"largest|biggest", t) and label == "building (appeared)"
    ]
    for text, ids in largest:  # the 30x30 new building in the top-left corner
        instance = next(i for i in alpha["instances"] if i["id"] == ids[0])
        assert instance["pixels"] == 900 and instance["cell"] == [0, 0], text


def test_same_seed_gives_a_byte_identical_dataset_and_another_seed_does_not(
    semantic_input: Path, tmp_path: Path
) -> None:
    options = BuildOptions(SourceOptions("semantic"), seed=11)
    build(semantic_input, tmp_path / "one", options)
    build(semantic_input, tmp_path / "two", options)
    build(semantic_input, tmp_path / "three", BuildOptions(SourceOptions("semantic"), seed=12))
    first = _digest(tmp_path / "one")
    assert first == _digest(tmp_path / "two")
    other = _digest(tmp_path / "three")
    assert first != other


def test_georeferenced_scene_reprojects_polygons_and_rejects_masks_on_nodata(
    tmp_path: Path,
) -> None:
    make_georeferenced_scene(tmp_path / "input", nodata_box=True)
    out = tmp_path / "scenes"
    options = BuildOptions(SourceOptions("scenes", nir_band=4), seed=0, max_expressions=40)
    summary = build(tmp_path / "input", out, options)
    _check_masks_are_unions(out)
    [(_, meta)] = _pairs(out)
    by_transition = {i["transition"]: i for i in meta["instances"]}
    forest = by_transition["forest->building"]
    assert forest["pixels"] == 900 and forest["cell"] == [0, 0]
    assert forest["vegetation"] == "loss" and forest["brightness"] == "brighter"
    assert by_transition["farmland->water"]["brightness"] == "darker"
    assert 89_000 < forest["area_m2"] < 91_000  # 900 pixels of 10 m x 10 m
    assert any(COMPASS.search(t) for t in meta["referring_expressions"])
    rejections = [json.loads(line) for line in (out / "rejections.jsonl").read_text().splitlines()]
    assert summary.rejected == len(rejections) > 0
    assert {r["reason"] for r in rejections} == {"mask touches only nodata"}
    sheet = json.loads((out / "datasheet.json").read_text())
    assert sheet["rejections_per_reason"] == {"mask touches only nodata": len(rejections)}


def test_cli_build_writes_a_summary_and_refuses_to_overwrite(
    semantic_input: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cli"
    args = ["build", str(semantic_input), str(out), "--layout", "semantic", "--seed", "3"]
    result = CliRunner().invoke(craft, [*args, "--json", "--splits", "train=1"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["pairs"] == 4 and set(summary["splits"]) == {"train"}
    again = CliRunner().invoke(craft, args)
    assert isinstance(again.exception, InputError) and "output exists" in str(again.exception)
    missing = CliRunner().invoke(
        craft, ["build", str(tmp_path / "nope"), str(out), "--layout", "oscd"]
    )
    assert isinstance(missing.exception, InputError)
