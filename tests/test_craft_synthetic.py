"""Synthetic object-level changes: exact masks, directions, date swapping, the hold-out split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtrs_geo.craft.builder import BuildOptions, craft_pair
from mtrs_geo.craft.donors import DONORS, is_held_out, load_donors
from mtrs_geo.craft.sources import SourceOptions
from mtrs_geo.craft.synthetic import (
    Cutout,
    Ground,
    ObjectBank,
    SyntheticOptions,
    appearance_change,
    compose_pair,
    cutouts_from_mask,
    procedural_roof,
    soft_alpha,
    swap_dates,
)
from mtrs_geo.models.text import is_any_change

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _ground(size: int = 160, seed: int = 0) -> Ground:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    texture = 60 + 40 * np.sin(rows / 7.0) + 40 * np.cos(cols / 5.0)
    base = (texture[None] + rng.normal(0, 4, size=(3, size, size))).clip(0, 255).astype(np.uint8)
    return Ground("fields/one", base, 0.5)


def _roof_bank() -> ObjectBank:
    rng = np.random.default_rng(1)
    return ObjectBank({"building": [procedural_roof(rng, 0.5) for _ in range(4)]})


def test_soft_alpha_is_above_one_half_exactly_on_the_mask() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:12, 4:15] = True
    alpha = soft_alpha(mask)
    assert np.array_equal(alpha > 0.5, mask)
    assert 0.0 < alpha[4, 8] < 0.5  # feathered just outside


def test_cutouts_follow_the_connected_objects_of_the_mask() -> None:
    image = np.full((3, 40, 40), 50, dtype=np.uint8)
    mask = np.zeros((40, 40), dtype=bool)
    mask[2:10, 2:12] = True
    mask[20:30, 25:33] = True
    cutouts = cutouts_from_mask(image, mask, "building", "s", 0.5, min_pixels=10)
    assert sorted(int((c.alpha > 0.5).sum()) for c in cutouts) == [80, 80]
    assert all(c.cls == "building" and c.gsd == 0.5 for c in cutouts)


def test_appeared_objects_change_only_the_after_image_and_vanished_only_the_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without the per-date radiometry the date without the object is the ground, exactly.
    monkeypatch.setattr("mtrs_geo.craft.synthetic._jitter_date", lambda image, rng: image)
    monkeypatch.setattr("mtrs_geo.craft.synthetic.DESTROYED_SHARE", 0.0)  # no burnt rubble
    options = SyntheticOptions(max_changes=6, max_static=0, empty_share=0.0, procedural_share=1.0)
    ground = _ground()
    seen = set()
    for seed in range(6):
        pair = compose_pair(ground, _roof_bank(), np.random.default_rng(seed), options, "p")
        for code, transition in pair.transitions.items():
            region = pair.change == code
            seen.add(transition.direction)
            before = pair.rgb_before.astype(float)[:, region]
            after = pair.rgb_after.astype(float)[:, region]
            truth = ground.image.astype(float)[:, region]
            plain = after if transition.direction == "disappeared" else before
            other = before if transition.direction == "disappeared" else after
            assert np.abs(plain - truth).max() <= 1
            assert np.abs(other - truth).mean() > 5
    assert seen == {"appeared", "disappeared"}


def test_destroyed_roofs_leave_dark_rubble_on_their_footprint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("mtrs_geo.craft.synthetic._jitter_date", lambda image, rng: image)
    monkeypatch.setattr("mtrs_geo.craft.synthetic.DESTROYED_SHARE", 1.0)
    options = SyntheticOptions(max_changes=6, max_static=0, empty_share=0.0, procedural_share=1.0)
    ground = _ground()
    found = 0
    for seed in range(4):
        pair = compose_pair(ground, _roof_bank(), np.random.default_rng(seed), options, "p")
        for code, transition in pair.transitions.items():
            if transition.direction == "disappeared":
                region = pair.change == code
                after = pair.rgb_after.astype(float)[:, region]
                assert np.abs(after - ground.image.astype(float)[:, region]).mean() > 5
                found += 1
    assert found


def test_objects_in_both_dates_are_not_change() -> None:
    options = SyntheticOptions(max_changes=1, max_static=3, empty_share=1.0, procedural_share=1.0)
    pair = compose_pair(_ground(), _roof_bank(), np.random.default_rng(3), options, "p")
    assert not pair.change.any() and not pair.transitions
    diff = np.abs(pair.rgb_after.astype(float) - pair.rgb_before.astype(float))
    assert diff.mean() > 0  # distractors were pasted into both dates (plus per-date radiometry)


def test_an_appearance_change_shifts_a_region_s_brightness_not_its_hue() -> None:
    image = np.full((3, 120, 160), 100.0, dtype=np.float32)
    appearance_change(image, np.random.default_rng(4))
    changed = np.abs(image - 100.0).max(0) > 1.0
    assert 0 < changed.mean() < 0.5  # a region, not the whole image
    channels = image[:, changed] - 100.0
    spread = channels.max(0) - channels.min(0)
    assert np.median(spread) < 0.5 * np.median(np.abs(channels).max(0))  # mostly brightness


def test_appearance_changes_are_no_change_of_any_class() -> None:
    options = SyntheticOptions(max_static=0, empty_share=1.0, appearance_share=1.0)
    pair = compose_pair(_ground(), _roof_bank(), np.random.default_rng(5), options, "p")
    assert not pair.change.any() and not pair.transitions
    plain = compose_pair(
        _ground(),
        _roof_bank(),
        np.random.default_rng(5),
        SyntheticOptions(max_static=0, empty_share=1.0),
        "p",
    )
    assert not np.array_equal(pair.rgb_after, plain.rgb_after) or not np.array_equal(
        pair.rgb_before, plain.rgb_before
    )


def test_swapping_dates_reverses_every_direction_and_keeps_the_masks() -> None:
    options = SyntheticOptions(max_changes=4, max_static=0, empty_share=0.0, procedural_share=1.0)
    pair = compose_pair(_ground(), _roof_bank(), np.random.default_rng(5), options, "p")
    swapped = swap_dates(pair)
    assert np.array_equal(swapped.rgb_before, pair.rgb_after)
    assert np.array_equal(swapped.change, pair.change)
    for code, transition in pair.transitions.items():
        reverse = {"appeared": "disappeared", "disappeared": "appeared"}[transition.direction or ""]
        assert swapped.transitions[code].direction == reverse
    assert swap_dates(swapped).transitions == pair.transitions


def _one_roof_pair(seed: int = 0):  # type: ignore[no-untyped-def]
    options = SyntheticOptions(max_changes=1, max_static=0, empty_share=0.0, procedural_share=1.0)
    bank = _roof_bank()
    for attempt in range(50):
        pair = compose_pair(_ground(), bank, np.random.default_rng((seed, attempt)), options, "p")
        if [t.subject for t in pair.transitions.values()] == ["building"]:
            return pair
    raise AssertionError("no roof pair generated")


def _masks_by_label(pair) -> dict[str, int]:  # type: ignore[no-untyped-def]
    build = BuildOptions(SourceOptions("levir-cd"), max_expressions=10_000)
    out: dict[str, int] = {}
    for candidate in craft_pair(pair, build).kept:
        if candidate.kind in ("direction", "no_target"):
            out.setdefault(candidate.label, int(candidate.mask.sum()))
    return out


def test_craft_writes_opposite_masks_for_new_and_demolished_after_a_swap() -> None:
    pair = _one_roof_pair()
    direction = next(iter(pair.transitions.values())).direction
    other = "disappeared" if direction == "appeared" else "appeared"
    original, reversed_ = _masks_by_label(pair), _masks_by_label(swap_dates(pair))
    assert original[f"building ({direction})"] > 0
    assert original[f"building ({other})"] == 0  # a no-target expression
    assert reversed_[f"building ({other})"] == original[f"building ({direction})"]
    assert reversed_[f"building ({direction})"] == 0


def test_queries_about_classes_that_did_not_change_have_no_target() -> None:
    masks = _masks_by_label(_one_roof_pair(1))
    for cls in ("water", "vegetation"):
        assert masks[f"{cls} (appeared)"] == 0
        assert masks[f"{cls} (disappeared)"] == 0


def test_held_out_scenes_never_reach_training() -> None:
    assert is_held_out("levir-cd", "test_7") == is_held_out("levir-cd", "test_7")
    if not (SHARED / "levir-cd").is_dir():
        pytest.skip("../shared/data not present")
    levir = tuple(d for d in DONORS if d.folder == "levir-cd")
    train = load_donors(SHARED, "train", levir)
    held = load_donors(SHARED, "held_out", levir)
    train_scenes = {p.scene for p in train.pairs} | {g.scene for g in train.grounds}
    held_scenes = {p.scene for p in held.pairs} | {g.scene for g in held.grounds}
    assert train_scenes and held_scenes and not train_scenes & held_scenes
    assert {c.source for c in train.bank.cutouts["building"]} <= train_scenes


def test_any_change_phrases() -> None:
    assert all(is_any_change(t) for t in ("", "  ", "Any change", "all changes!", "changes"))
    assert not any(is_any_change(t) for t in ("new buildings", "change of water", "any roads"))


def test_cutout_dataclass_keeps_its_pixel_size() -> None:
    cut = Cutout("water", np.zeros((3, 4, 4), np.float32), np.ones((4, 4), np.float32), "x", 10.0)
    assert cut.gsd == 10.0


def _donor_folder(root: Path) -> Path:
    """A tiny LEVIR-style donor folder: two textured 128 px pairs with one new roof each."""
    from PIL import Image

    folder = root / "levir-cd"
    for sub in ("A", "B", "label"):
        (folder / sub).mkdir(parents=True)
    for number in range(2):
        ground = _ground(128, number).image
        after = ground.copy()
        label = np.zeros((128, 128), dtype=np.uint8)
        after[:, 40:60, 30:70] = np.array([170, 80, 60], dtype=np.uint8)[:, None, None]
        label[40:60, 30:70] = 255
        name = f"train_{number}.png"
        Image.fromarray(np.moveaxis(ground, 0, 2)).save(folder / "A" / name)
        Image.fromarray(np.moveaxis(after, 0, 2)).save(folder / "B" / name)
        Image.fromarray(label).save(folder / "label" / name)
    return root


def test_craft_builds_a_referring_dataset_from_synthetic_changes(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from mtrs_geo.cli.main import cli

    donors = _donor_folder(tmp_path / "donors")
    out = tmp_path / "synthetic"
    args = ["craft", "build", str(donors), str(out), "--layout", "synthetic", "--count", "12"]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["pairs"] == 12 and summary["triplets"] > 12
    texts = [
        e["sentence"] if isinstance(e, dict) and "sentence" in e else str(e)
        for path in out.rglob("*.json")
        if path.parent.name == "referring_expression"
        for e in json.loads(path.read_text()).get("referring_expressions", [])
    ]
    assert any("new" in t or "demolished" in t or "removed" in t for t in texts)


def test_the_crafted_stream_is_reproducible_and_shaped_for_training(tmp_path: Path) -> None:
    from mtrs_geo.models.data.craft_stream import CraftStreamDataset, StreamOptions

    donors = _donor_folder(tmp_path / "donors")
    options = StreamOptions(size=96, length=1000)
    stream = CraftStreamDataset.from_root(donors, "train", options, seed=3)
    again = CraftStreamDataset.from_root(donors, "train", options, seed=3)
    kinds_of_text = set()
    for index in range(12):
        item, twin = stream[index], again[index]
        assert item["text"] == twin["text"]
        assert torch_equal(item["mask"], twin["mask"]) and torch_equal(
            item["image_a"], twin["image_a"]
        )
        assert tuple(item["image_a"].shape) == (3, 96, 96) and tuple(item["mask"].shape) == (96, 96)
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        kinds_of_text.add("empty target" if not item["mask"].any() else "target")
    assert kinds_of_text == {"empty target", "target"}
    assert len(stream) == 1000


def torch_equal(a, b) -> bool:  # type: ignore[no-untyped-def]
    import torch

    return bool(torch.equal(a, b))


def test_expressions_are_picked_per_kind_not_per_candidate() -> None:
    from mtrs_geo.craft.quality import Candidate
    from mtrs_geo.models.data.craft_stream import KIND_WEIGHTS, pick_expression

    empty, full = np.zeros((4, 4), bool), np.ones((4, 4), bool)
    candidates = [Candidate("p", f"new thing {i}", "no_target", empty, ()) for i in range(30)]
    candidates.append(Candidate("p", "new buildings", "direction", full, (1,)))
    rng = np.random.default_rng(0)
    picks = [pick_expression(candidates, rng) for _ in range(2000)]
    share = np.mean([p is not None and p.kind == "no_target" for p in picks])
    expected = KIND_WEIGHTS["no_target"] / (KIND_WEIGHTS["no_target"] + KIND_WEIGHTS["direction"])
    assert abs(share - expected) < 0.05


def test_stream_weighs_real_donors_by_real_weights() -> None:
    from types import SimpleNamespace

    from mtrs_geo.models.data.craft_stream import _odds

    pairs = [
        SimpleNamespace(scene=f"{donor}/{i}") for donor in ("levir-cd", "oscd") for i in range(3)
    ]
    pairs += [SimpleNamespace(scene="dsifn-cd/0")]
    assert _odds(pairs, {}).tolist() == pytest.approx([1 / 3] * 3)  # donors weigh equally
    assert _odds(pairs, {"oscd": 3.0}).tolist() == pytest.approx([0.2, 0.2, 0.6])
    with pytest.raises(ValueError, match="ombria"):
        _odds(pairs, {"ombria-s2": 2.0})


def test_a_stream_config_asks_for_appearance_changes_in_its_synthetic_pairs() -> None:
    from mtrs_geo.craft.donors import Donors
    from mtrs_geo.models.data.craft_stream import CraftStreamDataset, StreamOptions

    donors = Donors([_ground()], _roof_bank(), [])
    assert CraftStreamDataset(donors).synthetic.appearance_share == 0.0  # off unless asked
    stream = CraftStreamDataset(donors, StreamOptions(size=96, appearance_share=0.4))
    assert stream.synthetic.appearance_share == 0.4


def test_water_that_appeared_is_sometimes_said_as_flooded_land_and_lost_water_never() -> None:
    from mtrs_geo.models.data.craft_stream import FLOOD_WORDINGS, with_flood_wording

    rng = np.random.default_rng(0)
    said = with_flood_wording("all areas that became water in the north", rng, share=1.0)
    assert said.startswith("all ") and said.endswith(" in the north")
    assert said[4 : -len(" in the north")] in FLOOD_WORDINGS
    for text in ("water that disappeared", "the lost flood water", "former open water areas",
                 "the largest newly formed open water patch", "new buildings"):  # fmt: skip
        assert with_flood_wording(text, rng, share=1.0) == text
    kept = [with_flood_wording("new water areas", rng) == "new water areas" for _ in range(400)]
    assert 0.6 < np.mean(kept) < 0.8  # said so about 30 % of the time
