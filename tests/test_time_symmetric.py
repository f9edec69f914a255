"""``mtrefseg-r1-both-ways``: each query asked before -> after and, reversed, after -> before."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from cli_run import run_mtrs
from scenes import make_pair

from mtrs_geo.config import DetectConfig, MaskType, model_tile_size
from mtrs_geo.model_api import ChangeModel, ModelInfo, load_model, model_info, registered_names
from mtrs_geo.models.both_ways import AskBack, BothWays
from mtrs_geo.models.time_symmetric import (
    NAME,
    AsksBothWays,
    TimeSymmetricModel,
    reversed_query,
)
from mtrs_geo.pipeline import prepare_model

INFO = ModelInfo("fake", "answers by query and date order", True, None, "-")


@pytest.mark.parametrize(
    ("query", "reverse"),
    [
        ("new buildings", "removed buildings"),
        ("New buildings", "Removed buildings"),
        ("demolished buildings", "newly built buildings"),
        ("newly built buildings", "demolished buildings"),
        ("destroyed buildings", "constructed buildings"),
        ("new water", "water that disappeared"),
        ("flooded areas", "water that disappeared"),
        ("flooded area", "water that disappeared"),
        ("water that disappeared", "water that appeared"),
        ("cleared vegetation", "new vegetation"),
        ("new vegetation", "cleared vegetation"),
        ("changes that became darker", "changes that became brighter"),
        ("the largest new building in the north", "the largest removed building in the north"),
        ("new buildings and roads", "removed buildings and roads"),
    ],
)
def test_a_direction_is_reversed(query: str, reverse: str) -> None:
    assert reversed_query(query) == reverse


@pytest.mark.parametrize("query", ["any change", "all changes", ""])
def test_any_change_is_the_same_both_ways(query: str) -> None:
    assert reversed_query(query) == query


@pytest.mark.parametrize(
    "query", ["buildings", "farmland turned into construction sites", "planted trees"]
)
def test_a_query_without_a_reversible_direction_has_no_reverse(query: str) -> None:
    assert reversed_query(query) is None


class Fake(ChangeModel):
    """Answers each query with a constant: 0.2 before -> after, 0.6 after -> before."""

    info = INFO

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str | None, ...], bool]] = []
        self.calibrated = False

    def prepare_queries(self, queries: Sequence[str | None]) -> None:
        self._queries = tuple(queries)

    def calibrate(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> None:
        self.calibrated = True

    def predict_queries(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        forward = bool(before[0, 0, 0, 0] == 0)
        self.calls.append((self._queries, forward))
        value = 0.2 if forward else 0.6
        return np.full((len(self._queries), *before[:, 0].shape), value, np.float32)

    def predict(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        return self.predict_queries(before, after)[0]


def _dates() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((2, 3, 4, 5), np.float32), np.ones((2, 3, 4, 5), np.float32)


def test_a_reversible_query_gets_the_mean_of_both_answers_and_the_other_one_way() -> None:
    inner = Fake()
    model = TimeSymmetricModel(inner, INFO)
    model.prepare_queries(["new buildings", "buildings"])
    answers = model.predict_queries(*_dates())
    assert answers.shape == (2, 2, 4, 5)
    np.testing.assert_allclose(answers[0], 0.4)  # (0.2 + 0.6) / 2
    np.testing.assert_allclose(answers[1], 0.2)  # no reverse: before -> after only
    # each pass decodes only its own queries: the reversible one's reverse alone the second time
    assert inner.calls == [(("new buildings", "buildings"), True), (("removed buildings",), False)]


class OnePassFake(Fake):
    """A :class:`Fake` that also answers both ways in one pass (as the bundled model does)."""

    def prepare_both_ways(self, forward: Sequence[str], backward: Sequence[str]) -> None:
        self.both = (tuple(forward), tuple(backward))

    def predict_both_ways(
        self, before: np.ndarray, after: np.ndarray, ask_back: AskBack | None = None
    ) -> BothWays:
        """0.2 forward (``low`` for the pairs in ``self.low``), 0.6 backward."""
        forward, backward = self.both
        self.calls.append(((*forward, *backward), True))
        shape = before[:, 0].shape
        answers = np.full((len(forward), *shape), 0.2, np.float32)
        answers[:, list(getattr(self, "low", ()))] = 0.02
        asked = np.ones((len(backward), len(before)), bool)
        if ask_back is not None:
            asked = ask_back(answers)
        self.asked = asked
        back = np.where(asked[:, :, None, None], np.float32(0.6), np.float32(np.nan))
        return answers, asked, np.broadcast_to(back, (len(backward), *shape)).astype(np.float32)


def test_a_model_that_answers_both_ways_at_once_is_asked_in_one_pass() -> None:
    inner = OnePassFake()
    assert isinstance(inner, AsksBothWays) and not isinstance(Fake(), AsksBothWays)
    model = TimeSymmetricModel(inner, INFO)
    model.prepare_queries(["new buildings", "buildings", "demolished roads"])
    answers = model.predict_queries(*_dates())
    np.testing.assert_allclose(answers[0], 0.4)
    np.testing.assert_allclose(answers[1], 0.2)
    np.testing.assert_allclose(answers[2], 0.4)
    assert inner.both == (
        ("new buildings", "buildings", "demolished roads"),
        ("removed buildings", "newly built roads"),
    )
    assert len(inner.calls) == 1


def test_with_the_threshold_known_a_pair_whose_forward_answer_is_low_is_asked_one_way() -> None:
    inner = OnePassFake()
    inner.low = (1,)  # forward answers 0.2 for pair 0, 0.02 for pair 1
    model = TimeSymmetricModel(inner, INFO)
    model.prepare_queries(["buildings", "new buildings", "demolished roads"])
    answers = model.predict_queries(*_dates())
    assert inner.asked.tolist() == [[True, True]] * 2  # no threshold: every pair both ways
    np.testing.assert_allclose(answers[1:, 0], 0.4)  # (0.2 + 0.6) / 2
    np.testing.assert_allclose(answers[1:, 1], 0.31)  # (0.02 + 0.6) / 2
    model.cut_at(0.5)  # asked backward where a forward answer reaches 0.125
    answers = model.predict_queries(*_dates())
    assert inner.asked.tolist() == [[True, False]] * 2
    np.testing.assert_allclose(answers[1:, 0], 0.4)
    np.testing.assert_allclose(answers[1:, 1], 0.02)  # its forward answer
    np.testing.assert_allclose(answers[0], [np.full((4, 5), 0.2), np.full((4, 5), 0.02)])
    model.cut_at(0.05)  # 0.02 reaches a quarter of 0.05: both pairs both ways again
    np.testing.assert_allclose(model.predict_queries(*_dates())[1:, 1], 0.31)
    assert inner.asked.tolist() == [[True, True]] * 2
    model.cut_at(0.5)
    model.cut_at(None)  # a run that writes probabilities: exact everywhere
    np.testing.assert_allclose(model.predict_queries(*_dates())[1:, 1], 0.31)


@pytest.mark.parametrize(
    ("mask_out", "mask_type", "told"),
    [(None, "probability", True), ("mask.tif", "binary", True), ("mask.tif", "probability", False)],
)
def test_a_run_tells_the_model_its_threshold_unless_it_writes_probabilities(
    tmp_path: Path, mask_out: str | None, mask_type: MaskType, told: bool
) -> None:
    heard: list[float | None] = []

    class Listening(Fake):
        def cut_at(self, threshold: float | None) -> None:
            heard.append(threshold)

    config = DetectConfig(
        before=tmp_path / "a.tif",
        after=tmp_path / "b.tif",
        output=tmp_path / "changes.geojson",
        query="new buildings",
        threshold=0.4,
        mask_out=None if mask_out is None else tmp_path / mask_out,
        mask_type=mask_type,
    )
    model = Listening()
    prepare_model(model, config)
    assert model._queries == ("new buildings",)
    assert heard == [0.4 if told else None]  # said every run: a cached model hears it again


def test_no_reversible_query_runs_the_inner_model_once() -> None:
    inner = Fake()
    model = TimeSymmetricModel(inner, INFO)
    model.prepare("farmland turned into construction sites")
    np.testing.assert_allclose(model.predict(*_dates()), 0.2)
    assert inner.calls == [(("farmland turned into construction sites",), True)]


def test_calibration_goes_to_the_inner_model() -> None:
    inner = Fake()
    model = TimeSymmetricModel(inner, INFO)
    model.calibrate(*_dates(), np.ones((2, 4, 5), bool))
    assert inner.calibrated
    assert model.calibration() == inner.calibration()


def test_it_is_registered_with_the_bundled_checkpoint_s_tile() -> None:
    assert NAME in registered_names()
    info = model_info(NAME)
    assert info.query_aware
    assert info.in_channels == model_info("mtrefseg-r1").in_channels
    assert model_tile_size(NAME) == model_tile_size("mtrefseg-r1")


def test_the_bundled_model_both_ways_averages_its_two_one_way_answers() -> None:
    model = load_model(NAME, device="cpu")
    assert isinstance(model, TimeSymmetricModel)
    assert isinstance(model.inner, AsksBothWays)  # so the one-pass path is the one checked
    rng = np.random.default_rng(0)
    before = rng.random((1, 3, 64, 64), dtype=np.float32)
    after = rng.random((1, 3, 64, 64), dtype=np.float32)
    model.prepare("new buildings")
    both = model.predict(before, after)
    one_way = model.inner
    one_way.prepare("new buildings")
    forward = one_way.predict(before, after)
    one_way.prepare("removed buildings")
    backward = one_way.predict(after, before)
    np.testing.assert_allclose(both, (forward + backward) / 2, atol=1e-6)


def test_detect_runs_it_by_name(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    out = tmp_path / "changes.geojson"
    result = run_mtrs(
        "detect", str(pair.before), str(pair.after), "-q", "new buildings",
        "--model", NAME, "-o", str(out),
    )  # fmt: skip
    assert result.code == 0, result.err
    assert out.is_file()
