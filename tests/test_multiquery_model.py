"""Several queries in one pass: the backbone and fusion run once, the answers match one-by-one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtrs_geo.model_api import ChangeModel, ModelInfo
from mtrs_geo.models import inference
from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1

pytestmark = pytest.mark.usefixtures("torch_one_thread")

QUERIES = ["new buildings", "", "cleared vegetation", "new roads"]


def _pair(batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return (
        torch.rand(batch, 3, height, width, generator=gen),
        torch.rand(batch, 3, height, width, generator=gen),
    )


@pytest.fixture(scope="module")
def tiny() -> MTRefSegR1:
    torch.manual_seed(0)
    return MTRefSegR1(MTRefSegR1Config.from_size("tiny")).eval()


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory: pytest.TempPathFactory) -> ChangeModel:
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-run"
    torch.manual_seed(0)
    MTRefSegR1(MTRefSegR1Config.from_size("tiny")).save_pretrained(folder)
    return inference.load_checkpoint(folder)


def test_forward_is_encode_pair_then_decode_for_one_query(tiny: MTRefSegR1) -> None:
    before, after = _pair(2, 50, 71)
    with torch.no_grad():
        expected = tiny(before, after, texts=["new buildings"])
        embeds = tiny.encode_text(["new buildings"])
        got = tiny.decode(tiny.encode_pair(before, after), embeds)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(got.presence_logits, expected.presence_logits, rtol=0, atol=0)


def test_several_queries_decoded_together_equal_one_query_at_a_time(tiny: MTRefSegR1) -> None:
    before, after = _pair(3, 64, 80)
    with torch.no_grad():
        together = tiny.decode(tiny.encode_pair(before, after), tiny.encode_text(QUERIES))
        probabilities = together.probabilities().reshape(len(QUERIES), 3, 64, 80)
        for index, query in enumerate(QUERIES):
            texts = None if not query else [query]
            alone = tiny(before, after, texts=texts).probabilities()
            torch.testing.assert_close(probabilities[index], alone, rtol=0, atol=1e-5)


def test_both_ways_features_are_those_of_the_pairs_and_of_the_reversed_pairs(
    tiny: MTRefSegR1,
) -> None:
    before, after = _pair(2, 50, 71)
    with torch.no_grad():
        both = tiny.encode_pair_both_ways(before, after)
        expected = (tiny.encode_pair(before, after), tiny.encode_pair(after, before))
    assert both.batch == 4 and both.size == (50, 71)
    for start, one_way in zip((0, 2), expected, strict=True):
        part = both.pairs(start, start + 2)
        for got, want in zip(part.fused, one_way.fused, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        torch.testing.assert_close(part.after_coarse, one_way.after_coarse, rtol=0, atol=1e-6)
        assert part.pad == one_way.pad


def test_the_engine_model_answers_several_queries_as_one_by_one(wrapped: ChangeModel) -> None:
    before, after = (t.numpy() for t in _pair(2, 48, 40))  # under-sized tiles are padded too
    wrapped.prepare_queries(QUERIES)
    together = wrapped.predict_queries(before, after)
    assert together.shape == (len(QUERIES), 2, 48, 40) and together.dtype == np.float32
    for index, query in enumerate(QUERIES):
        wrapped.prepare(query)
        np.testing.assert_allclose(together[index], wrapped.predict(before, after), atol=1e-5)
    wrapped.prepare_queries(["new roads"])  # one query: the plain path
    single = wrapped.predict_queries(before, after)
    np.testing.assert_allclose(single[0], together[3], atol=1e-5)


class _Difference(ChangeModel):
    """A numpy model: the absolute difference of the first band, query or not."""

    def __init__(self, query_aware: bool) -> None:
        self.info = ModelInfo("difference", "test", query_aware, None, "-")
        self.prepared: list[str | None] = []

    def prepare(self, query: str | None) -> None:
        self.prepared.append(query)

    def predict(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        scale = 0.5 if self.prepared[-1] == "half" else 1.0
        return (np.abs(after[:, 0] - before[:, 0]) * scale).astype(np.float32)


def test_a_model_that_ignores_queries_predicts_once_for_all_of_them() -> None:
    model = _Difference(query_aware=False)
    before, after = np.zeros((2, 3, 8, 8), np.float32), np.ones((2, 3, 8, 8), np.float32)
    model.prepare_queries(["a", "b", "c"])
    out = model.predict_queries(before, after)
    assert out.shape == (3, 2, 8, 8) and (out == 1).all()
    assert model.prepared == ["a"]


def test_a_query_aware_model_without_a_batched_path_runs_queries_in_turn() -> None:
    model = _Difference(query_aware=True)
    before, after = np.zeros((1, 3, 4, 4), np.float32), np.ones((1, 3, 4, 4), np.float32)
    model.prepare_queries(["full", "half"])
    out = model.predict_queries(before, after)
    assert out[0].max() == 1.0 and out[1].max() == 0.5
