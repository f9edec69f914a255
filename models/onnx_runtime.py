"""MTRefSeg-R1 on the CPU through ONNX Runtime: the same network, without importing torch.

On a CPU the network runs about twice as fast in ONNX Runtime as in eager torch (2 cores, 256 px
tiles: ``benchmarks/model_path.py``), and a run that asks a query seen before needs neither torch
nor ``transformers``: the graphs hold the weights and the query cache
(:mod:`mtrs_geo.models.query_cache`) holds the encoded query. A query not seen before is encoded
by the sentence encoder's own graph (:mod:`mtrs_geo.models.text_graph`); torch runs only for the
first one a machine encodes, in a child process that also exports that graph
(:mod:`mtrs_geo.models.torch_encode`).

The graphs (:mod:`mtrs_geo.models.onnx_export`) are a ``backbone.onnx`` (once per tile of each
date), a ``fusion.onnx`` (bi-temporal fusion, once per tile pair, or twice for a pair asked both
ways in time: :meth:`OnnxMTRefSegModel.predict_both_ways`) and a ``decoder.onnx`` (language and
mask decoder, every query of a run at once), in the checkpoint's ``onnx/`` folder with a
manifest naming the weights they were exported from (their SHA-256). The bundled checkpoint ships
them (``scripts/train_bundled.py`` writes them when it ships one; ``python -m
mtrs_geo.models.onnx_export PATH`` for any other); a checkpoint without graphs for its weights
runs in torch.

Inputs are mirror-padded as the network pads them (:func:`mtrs_geo.padding.pad_tile`, to a
multiple of 32 and at least 32 px), so the probabilities are the network's up to float rounding.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtrs_geo.errors import ModelError
from mtrs_geo.model_api import ChangeModel, ModelInfo
from mtrs_geo.models.both_ways import AskBack, BothWays, join_both_ways
from mtrs_geo.models.query_cache import QueryCache, encoder_fingerprint
from mtrs_geo.models.query_text import encoder_folders, is_any_change
from mtrs_geo.models.text_graph import graph_path
from mtrs_geo.padding import pad_tile

if TYPE_CHECKING:
    from mtrs_geo.models.text_graph import SentenceGraph

FORMAT = "mtrs-onnx-2"  # 1: one encoder graph (backbone and fusion), which cannot share a backbone
BACKBONE_FILE = "backbone.onnx"
FUSION_FILE = "fusion.onnx"
DECODER_FILE = "decoder.onnx"
GRAPH_FILES = (BACKBONE_FILE, FUSION_FILE, DECODER_FILE)
MANIFEST_FILE = "onnx.json"
SUBFOLDER = "onnx"  # of a checkpoint, and of the cache folder
BACKBONE_INPUTS = ("images",)
BACKBONE_LEVELS = ("level0", "level1", "level2", "level3")
FUSION_INPUTS = ("before0", "before1", "before2", "before3", "after0", "after1", "after2", "after3")
LEVELS = ("fused0", "fused1", "fused2", "fused3")
DECODER_INPUTS = (*LEVELS, "tokens", "mask", "empty", "pooled")
MULTIPLE = 32  # the network's coarsest stride: inputs are padded to a multiple of it
# Pixels per date in one call of the fusion, and per decoder call (its rows: query x pair): one
# 512 px pair, four 256 px pairs (as the torch path on the CPU).
CALL_PIXELS = 512 * 512
# Images per backbone call: two 256 px images (one 512 px) run faster per image than eight in one
# call (4.1 against 4.8 ms an image here: its working set outgrows the CPU's caches).
BACKBONE_PIXELS = 2 * 256 * 256


def decoder_queries_per_call(pairs: int, height: int, width: int) -> int:
    """Return the queries per decoder call: its rows (query x pair) within :data:`CALL_PIXELS`.

    The decoder runs every query over every pair of the call. Beyond about four 256 px rows its
    working set outgrows the CPU's caches: three queries of four pairs cost 4.7-5.3 ms a row in
    one call and 4.0-4.5 ms in three (``benchmarks/decoder_parts.py --onnx-rows``, 2 cores).
    At least one query.
    """
    return max(1, CALL_PIXELS // max(1, pairs * height * width))


def padded_sides(height: int, width: int) -> tuple[int, int]:
    """Return the sides a tile is mirror-padded to: a multiple of :data:`MULTIPLE`, at least it."""
    return (
        max(MULTIPLE, -(-height // MULTIPLE) * MULTIPLE),
        max(MULTIPLE, -(-width // MULTIPLE) * MULTIPLE),
    )


def weights_digest(checkpoint: Path) -> str:
    """SHA-256 of a checkpoint's ``model.safetensors`` (what its graphs were exported from)."""
    digest = hashlib.sha256()
    with (Path(checkpoint) / "model.safetensors").open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def runtime_available() -> bool:
    """Whether ONNX Runtime is installed (the CPU path falls back to torch without it)."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _manifest(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _holds_graphs(folder: Path, digest: str) -> bool:
    manifest = _manifest(folder)
    return (
        manifest.get("format") == FORMAT
        and manifest.get("weights_sha256") == digest
        and all((folder / name).is_file() for name in GRAPH_FILES)
    )


def graph_folder(checkpoint: Path) -> Path | None:
    """Return the folder of ``checkpoint``'s graphs, None when it has none for these weights."""
    folder = Path(checkpoint) / SUBFOLDER
    if not (folder / MANIFEST_FILE).is_file():
        return None
    return folder if _holds_graphs(folder, weights_digest(Path(checkpoint))) else None


def session_threads() -> int:
    """Intra-op threads: ``OMP_NUM_THREADS`` when set (as torch reads it), else 0 (ORT's own)."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 0


_POOL: list[bool] = []  # [whether the process-wide thread pool is in use], once set


def session_options() -> Any:
    """Options of the three sessions: one thread pool for all, else no spinning threads.

    The backbone, the fusion and the decoder run in turn. Each session's own pool would keep its
    threads spinning after its run, on the cores the others need (a third slower on 2 cores); one
    process-wide pool (ONNX Runtime's global pool, set before its environment exists) serves
    them all, and where it cannot be had the sessions' threads do not spin.
    """
    import onnxruntime as ort

    if not _POOL:
        try:
            from onnxruntime.capi import _pybind_state

            _pybind_state.set_global_thread_pool_sizes(session_threads(), 1)
            _POOL.append(True)
        except (ImportError, AttributeError, RuntimeError):  # an older runtime, or env made
            _POOL.append(False)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if _POOL[0]:
        options.use_per_session_threads = False
    else:
        options.intra_op_num_threads = session_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


@dataclass(frozen=True)
class TextEncoder:
    """Where a checkpoint's frozen sentence encoder lives (the query cache's key needs it)."""

    model_dir: str
    tokenizer_dir: str
    max_length: int
    width: int

    @classmethod
    def of_checkpoint(cls, config: dict[str, Any], width: int) -> TextEncoder | None:
        """Read the encoder of a checkpoint's ``config.json``; None when it is not a frozen one."""
        if config.get("text_mode", "sentence") != "sentence" or config.get("text_model_config"):
            return None
        if config.get("text_trainable"):
            return None
        model_dir, tokenizer_dir = encoder_folders(
            config.get("text_model_path"), config.get("text_tokenizer_path")
        )
        length = int(config.get("text_max_length", 32))
        return cls(str(model_dir), str(tokenizer_dir), length, width)


def _texts(queries: Sequence[str | None]) -> tuple[str, ...]:
    """Return a run's queries as texts (``None`` is "", any change); at least one."""
    return tuple((query or "").strip() for query in queries) or ("",)


def _encoder_words(texts: Sequence[str]) -> list[str] | None:
    """Return what the sentence encoder is given (any change as ""); None: it is not needed."""
    if all(is_any_change(text) for text in texts):
        return None
    return ["" if is_any_change(text) else text for text in texts]


class OnnxMTRefSegModel(ChangeModel):
    """MTRefSeg-R1's probabilities from its ONNX graphs, on the CPU (see the module docstring).

    Args:
        checkpoint: the checkpoint folder (its torch network encodes new queries).
        graphs: the folder of its graphs (:func:`graph_folder`).
        info: the checkpoint's description.
        text: its sentence encoder.
        queries: the query cache.

    """

    def __init__(
        self,
        checkpoint: Path,
        graphs: Path,
        info: ModelInfo,
        text: TextEncoder,
        queries: QueryCache,
    ) -> None:
        import onnxruntime as ort

        self.checkpoint = Path(checkpoint)
        self.info = info
        self.text = text
        self.queries = queries
        self.graphs = graphs
        options = session_options()
        providers = ["CPUExecutionProvider"]
        self._backbone, self._fusion, self._decoder = (
            ort.InferenceSession(str(graphs / name), options, providers) for name in GRAPH_FILES
        )
        self._bands = int(_manifest(graphs).get("in_channels", 3))
        self._fingerprint: str | None = None
        self._sentence_graph: SentenceGraph | None = None  # the encoder's graph, once opened
        self._text: dict[str, np.ndarray] = self._any_change(1)
        self._back: dict[str, np.ndarray] | None = None  # the backward queries (both ways)

    def _any_change(self, count: int) -> dict[str, np.ndarray]:
        width = self.text.width
        return {
            "tokens": np.zeros((count, 1, width), np.float32),
            "mask": np.zeros((count, 1), bool),
            "empty": np.ones(count, bool),
            "pooled": np.zeros((count, width), np.float32),
        }

    def prepare(self, query: str | None) -> None:
        """Encode ``query`` once per run; ``None``/empty selects the "any change" mode."""
        self.prepare_queries([query])

    def preparing_note(self, queries: Sequence[str | None]) -> str | None:
        """Say so when the queries need torch: the machine's first new query (once)."""
        words = _encoder_words(_texts(queries))
        if words is None or self._cached(words) is not None:
            return None
        fingerprint = self._encoder_fingerprint()
        if fingerprint and graph_path(fingerprint).is_file():
            return None
        return (
            "encoding the query with torch; the first new query on this machine also prepares "
            "the text encoder for later ones (about 20 s, once)"
        )

    def prepare_queries(self, queries: Sequence[str | None]) -> None:
        """Encode the run's queries as one batch (the decoder takes them a few at a time)."""
        texts = _texts(queries)
        self._queries = texts
        words = _encoder_words(texts)
        self._text = self._any_change(len(texts)) if words is None else self._encode(words)

    def _encoder_fingerprint(self) -> str:
        """Return the sentence encoder's fingerprint (the query cache's key; "": unreadable)."""
        if self._fingerprint is None:
            fingerprint = encoder_fingerprint(
                self.text.model_dir, self.text.tokenizer_dir, self.text.max_length
            )
            self._fingerprint = fingerprint or ""
        return self._fingerprint

    def _cache_key(self, words: list[str]) -> str | None:
        return self.queries.key_of(self._encoder_fingerprint() or None, words)

    def _cached(self, words: list[str]) -> dict[str, np.ndarray] | None:
        """Return the query cache's embeddings of ``words`` (None: none kept with pooling)."""
        arrays = self.queries.load_arrays(self._cache_key(words))
        return arrays if arrays is not None and "pooled" in arrays else None

    def _encode(self, words: list[str]) -> dict[str, np.ndarray]:
        """Return the embeddings of ``words``: the query cache's, the encoder graph's or torch's."""
        arrays = self._cached(words)
        if arrays is None:
            arrays = self._encode_with_graph(words)
            if arrays is None:
                arrays = self._encode_with_torch(words)
            self.queries.store_arrays(self._cache_key(words), arrays)
        return {
            "tokens": np.ascontiguousarray(arrays["tokens"], np.float32),
            "mask": np.ascontiguousarray(arrays["mask"], bool),
            "empty": np.ascontiguousarray(arrays["empty"], bool),
            "pooled": np.ascontiguousarray(arrays["pooled"], np.float32),
        }

    def _encode_with_graph(self, texts: list[str]) -> dict[str, np.ndarray] | None:
        """Encode ``texts`` with the encoder's ONNX graph (:mod:`~mtrs_geo.models.text_graph`).

        None when the encoder has no graph yet.
        """
        from mtrs_geo.models.text_graph import SentenceGraph

        fingerprint = self._encoder_fingerprint()
        if not fingerprint:
            return None
        if self._sentence_graph is None:
            self._sentence_graph = SentenceGraph.find(
                fingerprint, self.text.tokenizer_dir, self.text.max_length
            )
        return None if self._sentence_graph is None else self._sentence_graph.encode(texts)

    def _encode_with_torch(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Encode ``texts`` with torch, and export the encoder's graph for the next new query.

        In a child process (:mod:`mtrs_geo.models.torch_encode`), so that torch and the export
        never weigh on this one; in this process only where no Python can be started (an
        interpreter embedded in another program).
        """
        from mtrs_geo.models.torch_encode import child_python, encode_in_child, encode_with_torch

        python = child_python()
        if python is None:
            return encode_with_torch(self.checkpoint, texts)
        return encode_in_child(self.checkpoint, texts, python)

    def prepare_both_ways(self, forward: Sequence[str], backward: Sequence[str]) -> None:
        """Encode the queries asked from before to after and those asked from after to before."""
        self.prepare_queries(backward)
        back = self._text
        self.prepare_queries(forward)
        self._back = back

    def predict(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Return the probability ``(B, H, W)`` of the (first) prepared query."""
        return self.predict_queries(before, after)[0]

    def predict_queries(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Return ``(Q, B, H, W)``: the encoder once per pair, the decoder for every query."""
        return self._in_calls(before, after)

    def predict_both_ways(
        self, before: np.ndarray, after: np.ndarray, ask_back: AskBack | None = None
    ) -> BothWays:
        """Answer both ways in time in ONNX Runtime (``AsksBothWays.predict_both_ways``)."""
        assert self._back is not None, "prepare_both_ways() comes first"
        self._check(before, after)
        return join_both_ways(
            [
                self._both_ways_call(before[first:last], after[first:last], ask_back)
                for first, last in self._calls(before)
            ]
        )

    def _check(self, before: np.ndarray, after: np.ndarray) -> None:
        bands = self._bands
        if before.ndim != 4 or before.shape[1] != bands or after.shape != before.shape:
            raise ModelError(
                f"{self.info.name} takes two (B, {bands}, H, W) batches, got "
                f"{tuple(before.shape)} and {tuple(after.shape)}"
            )

    @staticmethod
    def _calls(images: np.ndarray) -> list[tuple[int, int]]:
        """Return the ``(first, last)`` pairs of each call: :data:`CALL_PIXELS` per date."""
        count, height, width = images.shape[0], images.shape[2], images.shape[3]
        size = max(1, CALL_PIXELS // max(1, height * width))
        return [(first, min(first + size, count)) for first in range(0, count, size)]

    def _in_calls(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        self._check(before, after)
        calls = self._calls(before)
        parts = [self._call(before[first:last], after[first:last]) for first, last in calls]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def _backbone_levels(self, images: np.ndarray) -> list[np.ndarray]:
        """Return the backbone's levels of ``images``, :data:`BACKBONE_PIXELS` at most a call."""
        per_call = max(1, BACKBONE_PIXELS // max(1, images.shape[2] * images.shape[3]))
        parts = [
            self._backbone.run(None, {BACKBONE_INPUTS[0]: images[first : first + per_call]})
            for first in range(0, len(images), per_call)
        ]
        return (
            parts[0]
            if len(parts) == 1
            else [np.concatenate(level) for level in zip(*parts, strict=True)]
        )

    def _levels(self, before: np.ndarray, after: np.ndarray) -> list[np.ndarray]:
        """Return the backbone's levels of both dates, padded: the before tiles, then the after."""
        padded = padded_sides(before.shape[2], before.shape[3])
        images = np.concatenate(
            [pad_tile(image, *padded) for image in (before, after)], dtype=np.float32
        )
        return self._backbone_levels(images)

    def _fused(
        self, firsts: Sequence[np.ndarray], seconds: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """Return the fused levels of the pairs from ``firsts`` to ``seconds``."""
        return self._fusion.run(None, dict(zip(FUSION_INPUTS, [*firsts, *seconds], strict=True)))

    def _decode(
        self, fused: Sequence[np.ndarray], text: dict[str, np.ndarray], height: int, width: int
    ) -> np.ndarray:
        """Return the probability ``(Q, B, height, width)`` of every query of ``text`` per pair."""
        count, (padded_h, padded_w) = len(fused[0]), padded_sides(height, width)
        feeds = dict(zip(LEVELS, fused, strict=True))
        per_call = decoder_queries_per_call(count, padded_h, padded_w)
        answers = []
        for first in range(0, len(text["empty"]), per_call):
            some = {name: array[first : first + per_call] for name, array in text.items()}
            (probability,) = self._decoder.run(None, feeds | some)
            answers.append(probability.reshape(-1, count, padded_h, padded_w))
        probability = answers[0] if len(answers) == 1 else np.concatenate(answers)
        np.clip(probability, 0.0, 1.0, out=probability)  # the runtime's own array: no copy
        return probability[:, :, :height, :width]

    def _call(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        count, height, width = before.shape[0], before.shape[2], before.shape[3]
        levels = self._levels(before, after)
        firsts, seconds = [level[:count] for level in levels], [level[count:] for level in levels]
        return self._decode(self._fused(firsts, seconds), self._text, height, width)

    def _both_ways_call(
        self, before: np.ndarray, after: np.ndarray, ask_back: AskBack | None
    ) -> BothWays:
        assert self._back is not None
        count, height, width = before.shape[0], before.shape[2], before.shape[3]
        levels = self._levels(before, after)
        firsts, seconds = [level[:count] for level in levels], [level[count:] for level in levels]
        queries = len(self._back["empty"])
        if ask_back is None:  # both directions in one fusion call
            swapped = [np.concatenate([s, f]) for s, f in zip(seconds, firsts, strict=True)]
            fused = self._fused(levels, swapped)  # the pairs one way, then the other
            forward = self._decode([level[:count] for level in fused], self._text, height, width)
            backward = self._decode([level[count:] for level in fused], self._back, height, width)
            return forward, np.ones((queries, count), dtype=bool), backward
        forward = self._decode(self._fused(firsts, seconds), self._text, height, width)
        asked = np.asarray(ask_back(forward), dtype=bool).reshape(queries, count)
        backward = np.zeros((queries, count, height, width), dtype=np.float32)
        pairs = np.flatnonzero(asked.any(axis=0))  # fused backward once for every query
        if pairs.size == 0:
            return forward, asked, backward
        fused = self._fused([level[pairs] for level in seconds], [level[pairs] for level in firsts])
        for query in range(queries):
            mine = np.flatnonzero(asked[query, pairs])  # among the fused pairs
            if mine.size == 0:
                continue
            text = {name: array[query : query + 1] for name, array in self._back.items()}
            some = fused if mine.size == pairs.size else [level[mine] for level in fused]
            backward[query, pairs[mine]] = self._decode(some, text, height, width)[0]
        return forward, asked, backward
