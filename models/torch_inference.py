"""MTRefSeg-R1 in torch behind the engine's interface: any device, batched, query encoded once.

The CPU runs the same network in ONNX Runtime when the checkpoint carries its graphs
(:mod:`mtrs_geo.models.onnx_runtime`); this class runs it on CUDA and MPS, on the CPU otherwise,
and in training's validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from mtrs_geo.device import autocast_context
from mtrs_geo.errors import ModelError
from mtrs_geo.model_api import ModelInfo
from mtrs_geo.models.both_ways import AskBack, BothWays, join_both_ways
from mtrs_geo.models.query_cache import QueryCache, cached_embeds
from mtrs_geo.models.query_text import is_any_change
from mtrs_geo.padding import pad_tile
from mtrs_geo.torch_model import TorchChangeModel

if TYPE_CHECKING:
    from mtrs_geo.models.network import MTRefSegR1Layers, PairFeatures
    from mtrs_geo.models.text import TextEmbeds

MIN_TILE = 32


class MTRefSegChangeModel(TorchChangeModel):
    """Batched MTRefSeg-R1 inference: query encoded once, presence-gated probabilities per tile.

    It runs channels-last with the backbone's BatchNorms folded; on CUDA under autocast (bf16
    where supported, else fp16), on CPU in fp32 (the autocast comes from the base class). On the
    CPU one 512 x 512 tile pair per call (``benchmarks/model.py``: 5.3 tiles/s at batch 1 against
    3.9 at batch 8 on 2 cores, and a fifth of the memory), four 256 px pairs, and so on.
    """

    cpu_call_pixels = 512 * 512

    def __init__(
        self, model: MTRefSegR1Layers, info: ModelInfo, queries: QueryCache | None = None
    ) -> None:
        # Channels-last convs are faster on CPU too (oneDNN): about 40 % on the base size.
        self.model = model.fuse_for_inference().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.info = info
        self.queries = queries or QueryCache(None)  # encoded queries kept on disk
        self._embeds: TextEmbeds | None = None
        self._query_embeds: TextEmbeds | None = None  # several queries (prepare_queries)
        self._both_ways: tuple[TextEmbeds, TextEmbeds] | None = None  # (prepare_both_ways)

    def move_to(self, device: torch.device) -> None:
        """Move the network (and the encoded query) to ``device``."""
        if next(self.model.parameters()).device != device:  # a no-op move still visits each layer
            self.model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self._embeds is not None:
            self._embeds = self._embeds.to(device)
        if self._query_embeds is not None:
            self._query_embeds = self._query_embeds.to(device)
        if self._both_ways is not None:
            self._both_ways = (self._both_ways[0].to(device), self._both_ways[1].to(device))

    def prepare(self, query: str | None) -> None:
        """Encode ``query`` once per run; ``None``/empty selects the stage-1 "any change" mode."""
        text = (query or "").strip()
        if is_any_change(text):
            self._embeds = None
            return
        self._embeds = self._encode([text])

    def prepare_queries(self, queries: Sequence[str | None]) -> None:
        """Encode several queries at once; :meth:`predict_queries` then runs them in one pass."""
        texts = tuple((query or "").strip() for query in queries)
        self._queries = texts
        self._query_embeds = None
        if len(texts) <= 1:
            self.prepare(texts[0] if texts else None)
            return
        self._embeds = None
        self._query_embeds = self._encode(texts)

    def _encode(self, texts: Sequence[str]) -> TextEmbeds:
        """Encode ``texts`` as one batch ("any change" as ""): kept on disk, encoder loaded once."""
        device = next(self.model.parameters()).device
        words = ["" if is_any_change(text) else text for text in texts]
        try:
            return cached_embeds(self.queries, self.model.text, words, device)
        except OSError as exc:
            raise ModelError(f"cannot load the text encoder of {self.info.name}: {exc}") from exc

    def predict_queries(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Return ``(Q, B, H, W)``: backbone and fusion once, the language part per query."""
        if self._query_embeds is None:
            return self.predict(before, after)[None]
        return self.run_calls(self._predict_queries_call, before, after, axis=1)

    def _predict_queries_call(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), autocast_context(self.torch_device):
            probability = self.predict_queries_tensors(self._tensor(before), self._tensor(after))
        return probability.float().cpu().numpy()

    def predict_queries_tensors(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """:meth:`predict_queries` on tensors on the model's device."""
        assert self._query_embeds is not None, "prepare_queries() comes first"
        pair, height, width = self._pair(before, after)
        count = before.shape[0]
        features = self.model.encode_pair(pair[:count], pair[count:])
        output = self.model.decode(features, self._query_embeds)
        probability = output.probabilities()[:, :height, :width].float().clamp(0.0, 1.0)
        return probability.reshape(len(self._query_embeds), count, height, width)

    def prepare_both_ways(self, forward: Sequence[str], backward: Sequence[str]) -> None:
        """Encode the queries asked from before to after and those asked from after to before."""
        self._both_ways = (self._encode(forward), self._encode(backward))

    def predict_both_ways(
        self, before: np.ndarray, after: np.ndarray, ask_back: AskBack | None = None
    ) -> BothWays:
        """Answer both ways in time in torch (``AsksBothWays.predict_both_ways``)."""

        def call(part_b: np.ndarray, part_a: np.ndarray) -> BothWays:
            return self._both_ways_call(part_b, part_a, ask_back)

        return self.run_calls(call, before, after, join=join_both_ways)

    def _both_ways_call(
        self, before: np.ndarray, after: np.ndarray, ask_back: AskBack | None
    ) -> BothWays:
        assert self._both_ways is not None, "prepare_both_ways() comes first"
        forward_embeds, backward_embeds = self._both_ways
        count = before.shape[0]
        with torch.inference_mode(), autocast_context(self.torch_device):
            pair, height, width = self._pair(self._tensor(before), self._tensor(after))
            size = (int(pair.shape[-2]), int(pair.shape[-1]))

            def answers(features: PairFeatures, embeds: TextEmbeds) -> np.ndarray:
                output = self.model.decode(features, embeds).probabilities()
                probability = output[:, :height, :width].float().clamp(0.0, 1.0)
                return probability.reshape(len(embeds), -1, height, width).cpu().numpy()

            queries = len(backward_embeds)
            if ask_back is None:  # both directions in one fusion
                features = self.model.encode_pair_both_ways(pair[:count], pair[count:])
                forward = answers(features.pairs(0, count), forward_embeds)
                backward = answers(features.pairs(count, 2 * count), backward_embeds)
                return forward, np.ones((queries, count), dtype=bool), backward
            levels = self.model.encode_dates(pair)
            firsts, seconds = [lv[:count] for lv in levels], [lv[count:] for lv in levels]
            forward = answers(self.model.fuse(firsts, seconds, size), forward_embeds)
            asked = np.asarray(ask_back(forward), dtype=bool).reshape(queries, count)
            backward = np.zeros((queries, count, height, width), dtype=np.float32)
            pairs = np.flatnonzero(asked.any(axis=0))  # fused backward once for every query
            if pairs.size == 0:
                return forward, asked, backward
            chosen = torch.from_numpy(pairs).to(pair.device)
            fused = self.model.fuse(
                [level[chosen] for level in seconds], [level[chosen] for level in firsts], size
            )
            for query in range(queries):
                mine = np.flatnonzero(asked[query, pairs])  # among the fused pairs
                if mine.size == 0:
                    continue
                some = (
                    fused
                    if mine.size == pairs.size
                    else fused.select(torch.from_numpy(mine).to(pair.device))
                )
                backward[query, pairs[mine]] = answers(some, backward_embeds.select([query]))[0]
        return forward, asked, backward

    def predict_tensors(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Return the presence-gated probability ``(B, H, W)`` of the referred change."""
        pair, height, width = self._pair(before, after)
        count = before.shape[0]
        output = self.model(pair[:count], pair[count:], text_embeds=self._embeds)
        return output.probabilities()[:, :height, :width].float().clamp(0.0, 1.0)

    def _pair(self, before: torch.Tensor, after: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Both dates in one channels-last batch, mirror-padded to the smallest tile; their size."""
        bands = self.model.config.in_channels
        if before.ndim != 4 or before.shape[1] != bands or after.shape != before.shape:
            raise ModelError(
                f"{self.info.name} takes two (B, {bands}, H, W) batches, got "
                f"{tuple(before.shape)} and {tuple(after.shape)}"
            )
        height, width = before.shape[-2:]
        pair = torch.cat([before, after], 0).float()  # already on the device (the base class)
        pair = pad_tile(pair, max(MIN_TILE, height), max(MIN_TILE, width))
        return pair.contiguous(memory_format=torch.channels_last), int(height), int(width)
