"""Pure parts of CRAFT: perception, referents, the grammar, quality checks, paraphrase guard."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from mtrs_geo.craft.builder import BuildOptions, assign_splits, craft_pair
from mtrs_geo.craft.expressions import referents, select_mask
from mtrs_geo.craft.language import caption_coverage, realize, vocabulary
from mtrs_geo.craft.paraphrase import keeps_meaning
from mtrs_geo.craft.perception import (
    Transition,
    describe_instances,
    grid_cell,
    label_instances,
    ndvi,
    shape_of,
)
from mtrs_geo.craft.quality import Candidate, check_pair
from mtrs_geo.craft.sources import ChangePair, SourceOptions, chip_windows, scene_of

BINARY = {1: Transition(subject="building", direction="appeared")}


def _describe(change: np.ndarray, transitions: dict[int, Transition] = BINARY):
    instances, codes = label_instances(change, min_pixels=4)
    described = describe_instances(
        instances,
        codes,
        transitions,
        np.full(change.shape[0], 0.25),
        np.zeros(change.shape, dtype=np.float32),
        None,
        np.ones(change.shape, dtype=bool),
    )
    return instances, described


def test_instances_are_connected_components_per_transition_above_the_minimum_size() -> None:
    change = np.zeros((20, 20), dtype=np.int32)
    change[1:4, 1:4] = 1  # 9 px
    change[1:4, 4:6] = 2  # touches the first but is another transition
    change[10, 10] = 1  # 1 px: below the minimum
    instances, codes = label_instances(change, min_pixels=4)
    assert codes == [1, 2]
    assert (instances == 1).sum() == 9 and (instances == 2).sum() == 6
    assert instances[10, 10] == 0


def test_grid_cells_and_borders() -> None:
    assert grid_cell((10.0, 90.0), (99, 99)) == ((0, 2), frozenset({(0, 2)}))
    cell, near = grid_cell((32.5, 50.0), (99, 99))  # on the first row border
    assert len(near) > 1 and cell in near


def test_shapes_elongated_compact_irregular() -> None:
    rows, cols = np.nonzero(np.ones((2, 30)))
    assert shape_of(rows, cols) == ("elongated", True)
    rows, cols = np.nonzero(np.ones((10, 10)))
    assert shape_of(rows, cols) == ("compact", True)
    ring = np.zeros((30, 30), dtype=bool)
    ring[0, :] = ring[-1, :] = ring[:, 0] = ring[:, -1] = True
    rows, cols = np.nonzero(ring)
    assert shape_of(rows, cols)[0] == "irregular"


def test_ndvi_of_vegetation_and_bare_soil() -> None:
    values = ndvi(np.array([[100.0, 300.0, 0.0]]), np.array([[900.0, 300.0, 0.0]]))
    assert np.allclose(values, [[0.8, 0.0, 0.0]])


def test_size_tie_gives_no_largest_and_a_clear_winner_does() -> None:
    change = np.zeros((90, 90), dtype=np.int32)
    change[5:15, 5:15] = 1  # 100 px, top-left
    change[5:15, 70:80] = 1  # 100 px, top-right: a tie
    _, described = _describe(change)
    found, dropped = referents(described, change, BINARY, (), "building", False)
    assert not [r for r in found if r.superlative == "largest" and r.place is None]
    assert dropped.get("instance", 0) >= 1
    change[70:85, 40:55] = 1  # 225 px, bottom: now clearly the largest
    _, described = _describe(change)
    found, _ = referents(described, change, BINARY, (), "building", False)
    largest = [r for r in found if r.superlative == "largest" and r.place is None]
    assert largest and all(r.instance_ids == frozenset({3}) for r in largest)


def test_an_instance_on_a_cell_border_blocks_place_expressions_for_those_cells() -> None:
    change = np.zeros((90, 90), dtype=np.int32)
    change[25:35, 5:15] = 1  # centroid row 29.5: on the border of the top and middle rows
    change[70:80, 70:80] = 1
    _, described = _describe(change)
    found, dropped = referents(described, change, BINARY, (), "building", False)
    places = {r.place for r in found if r.kind == "place"}
    assert (0, 0) not in places and (1, 0) not in places and (2, 2) in places
    assert dropped["place"] >= 2


def test_no_target_needs_a_truly_empty_group_or_cell() -> None:
    change = np.zeros((90, 90), dtype=np.int32)
    change[5:20, 5:20] = 1
    change[50, 50] = 1  # one pixel: no instance, but a change in the centre cell
    _, described = _describe(change)
    found, _ = referents(described, change, BINARY, (), "building", False)
    empty = [r for r in found if r.kind == "no_target"]
    assert all(not r.instance_ids for r in empty)
    assert (1, 1) not in {r.place for r in empty}  # the centre holds a changed pixel
    assert any(r.group.mode == "disappeared" for r in empty)  # declared "appeared" only


def test_select_mask_is_the_union_of_instances() -> None:
    instances = np.array([[0, 1, 2], [3, 1, 0]])
    assert select_mask(instances, [1, 3]).tolist() == [[False, True, False], [True, True, False]]
    assert not select_mask(instances, []).any()


def test_quality_checks_reject_with_reasons() -> None:
    valid = np.ones((10, 10), dtype=bool)
    valid[:, :5] = False
    big = np.zeros((10, 10), dtype=bool)
    big[:, 5:] = True
    tiny = np.zeros((10, 10), dtype=bool)
    tiny[0, 9] = True
    on_nodata = np.zeros((10, 10), dtype=bool)
    on_nodata[:, :3] = True
    other = np.zeros((10, 10), dtype=bool)
    other[5:, 5:] = True
    empty = np.zeros((10, 10), dtype=bool)

    def cand(text: str, mask: np.ndarray, kind: str = "place") -> Candidate:
        return Candidate("p", text, kind, mask, ())

    kept, rejected = check_pair(
        [
            cand("all changes", big, "all"),
            cand("All changes", big, "all"),  # duplicate (same text, same mask)
            cand("tiny one", tiny),
            cand("on nodata", on_nodata),
            cand("the building", big, "instance"),
            cand("the building", other, "instance"),  # same text, another mask
            cand("demolished buildings", empty, "no_target"),
        ],
        valid,
        min_mask_pixels=4,
    )
    assert [c.text for c in kept] == ["all changes", "demolished buildings"]
    reasons = {r.text: r.reason for r in rejected}
    assert reasons["All changes"] == "duplicate expression"
    assert reasons["tiny one"] == "tiny mask (1 px < 4 px)"
    assert reasons["on nodata"] == "mask touches only nodata"
    assert reasons["the building"] == "same expression with different masks"
    assert len(rejected) == 5


def test_grammar_is_seeded_and_varied() -> None:
    change = np.zeros((90, 90), dtype=np.int32)
    change[5:20, 5:20] = 1
    change[60:85, 60:85] = 1
    _, described = _describe(change)
    found, _ = referents(described, change, BINARY, (), "building", False)
    first = [realize(r, False, random.Random(4)) for r in found]
    assert first == [realize(r, False, random.Random(4)) for r in found]
    variants = {realize(found[0], False, random.Random(seed)) for seed in range(30)}
    assert len(variants) >= 4  # synonyms and word order
    geo = " ".join(realize(r, True, random.Random(1)) for r in found if r.place)
    assert "north" in geo or "south" in geo


def test_caption_coverage_counts_missing_content_words() -> None:
    share, missing, common = caption_coverage(
        ["many new buildings are built", "a road is built"], vocabulary(), top=4
    )
    assert [w for w, _ in common][:1] == ["built"]
    assert "road" in missing and 0 < share < 1


def test_paraphrase_guard_keeps_places_numbers_and_classes() -> None:
    classes = {"farmland", "buildings"}
    original = "the three new buildings in the north-west"
    assert keeps_meaning(original, "in the north-west, the three newly built buildings", classes)
    assert not keeps_meaning(original, "the three new buildings", classes)  # place lost
    assert not keeps_meaning(original, "the new buildings in the north-west", classes)  # count lost
    assert not keeps_meaning(original, "", classes)


class ShoutingParaphraser:
    """A deterministic stand-in that rewrites every expression by a fixed rule."""

    def __init__(self, drop_place: bool) -> None:
        self.drop_place = drop_place

    def paraphrase(self, text: str) -> str:
        if self.drop_place:
            return "some changes"
        return f"please find {text}"


def test_build_uses_a_paraphrase_only_when_it_keeps_the_meaning() -> None:
    change = np.zeros((60, 60), dtype=np.int32)
    change[5:20, 5:20] = 1
    pair = ChangePair(
        name="p",
        scene="p",
        rgb_before=np.zeros((3, 60, 60), dtype=np.uint8),
        rgb_after=np.full((3, 60, 60), 200, dtype=np.uint8),
        red_nir_before=None,
        red_nir_after=None,
        change=change,
        transitions=BINARY,
        classes=(),
        valid=np.ones((60, 60), dtype=bool),
        pixel_area_m2=np.ones(60),
        georeferenced=False,
    )
    options = BuildOptions(SourceOptions("levir-cd", subject="building"), seed=1)
    plain = [c.text for c in craft_pair(pair, options).kept]
    kept = [c.text for c in craft_pair(pair, options, ShoutingParaphraser(False)).kept]
    assert kept == [f"please find {t}" for t in plain]
    fallback = [c.text for c in craft_pair(pair, options, ShoutingParaphraser(True)).kept]
    assert fallback == plain


def test_transformers_paraphraser_loads_a_local_model_and_is_deterministic(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    from mtrs_geo.craft.paraphrase import TransformersParaphraser

    words = ["<pad>", "</s>", "<unk>", "paraphrase", ":", "new", "buildings", "in", "the", "north"]
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    raw = tokenizers.Tokenizer(model)
    raw.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(tmp_path)
    config = T5Config(
        vocab_size=len(words), d_model=8, d_ff=16, d_kv=4, num_layers=1, num_heads=2,
        pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    config.decoder_start_token_id = 0
    T5ForConditionalGeneration(config).save_pretrained(tmp_path)
    paraphraser = TransformersParaphraser(tmp_path, max_new_tokens=6)
    first = paraphraser.paraphrase("new buildings in the north")
    assert first == paraphraser.paraphrase("new buildings in the north")
    assert set(first.split()) <= set(words)


def test_splits_by_scene_follow_the_shares() -> None:
    scenes = [f"s{i}" for i in range(10)]
    mapping = assign_splits(scenes, [("train", 0.8), ("val", 0.1), ("test", 0.1)], seed=3)
    assert sorted(mapping) == scenes
    counts = {s: list(mapping.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 8, "val": 1, "test": 1}
    assert mapping == assign_splits(scenes, [("train", 0.8), ("val", 0.1), ("test", 0.1)], 3)
    assert assign_splits(["a"], [("train", 0.1), ("val", 0.9)], 0) == {"a": "train"}


def test_chips_and_scene_names() -> None:
    assert chip_windows(256, 256, 512) == [(0, 0, 256, 256)]
    windows = chip_windows(525, 471, 512)
    assert len(windows) == 2 and sum(h for _, _, h, _ in windows) == 525
    assert scene_of("test_2_0000_0512") == "test_2" and scene_of("test_113_0256") == "test_113"
