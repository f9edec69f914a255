"""The frozen sentence encoder as an ONNX graph: a new query without torch or ``transformers``.

A query asked before comes from the query cache (:mod:`mtrs_geo.models.query_cache`). A new one
needed torch and the encoder's ``transformers`` model: 6-8 s of a CPU run's setup on 2 cores,
for a few milliseconds of encoding. So the first time the CPU runtime
(:mod:`mtrs_geo.models.onnx_runtime`) encodes a query with torch, it also exports the encoder
(``torch.export``, about 11 s, once per machine and encoder) to
``$XDG_CACHE_HOME/mtrs/onnx/text-<fingerprint>.onnx``; the fingerprint is the query cache's
(:func:`~mtrs_geo.models.query_cache.encoder_fingerprint`: the encoder's and tokenizer's files).
Later new queries are tokenized by ``tokenizers`` from the encoder's ``tokenizer.json`` (the fast
tokenizer ``transformers`` itself runs) and encoded in ONNX Runtime (about 0.2 s with the
session): the encoder's hidden states up to float rounding, mean-pooled over the words as
:meth:`TextBranch.encode <mtrs_geo.models.text.TextBranch.encode>` pools them.

An export is checked against torch on two queries before it is kept; one that fails (or a cache
folder that cannot be written) only means the next new query uses torch again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtrs_geo.models.query_cache import default_cache_dir
from mtrs_geo.models.query_text import is_any_change

if TYPE_CHECKING:
    import torch

    from mtrs_geo.models.text import TextBranch

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TOKENIZER_FILE = "tokenizer.json"
SUBFOLDER = "onnx"
# The export is kept when its hidden states are torch's to this (they agree to ~3e-6).
TOLERANCE = 1e-4
# Two queries of different lengths: the export must hold for padded and unpadded words.
_EXAMPLES = ("new buildings", "farmland turned into construction sites near the river")


def graph_path(fingerprint: str) -> Path:
    """Where the graph of the encoder with this fingerprint is kept (the default cache folder)."""
    return default_cache_dir() / SUBFOLDER / f"text-{fingerprint[:32]}.onnx"


def pad_token(tokenizer_dir: Path) -> str:
    """Return the tokenizer's padding token (its config's, as ``transformers`` reads it; [PAD])."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            value = json.loads((tokenizer_dir / name).read_text()).get("pad_token")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            return value
    return "[PAD]"


class SentenceGraph:
    """A sentence encoder's ONNX graph and its fast tokenizer.

    Args:
        graph: the exported graph (:func:`export_text_graph`).
        tokenizer_dir: the encoder's tokenizer folder (holding ``tokenizer.json``).
        max_length: words kept per query, as the checkpoint's text branch truncates them.

    """

    def __init__(self, graph: Path, tokenizer_dir: Path, max_length: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from mtrs_geo.models.onnx_runtime import session_options

        tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / TOKENIZER_FILE))
        pad = pad_token(Path(tokenizer_dir))
        pad_id = tokenizer.token_to_id(pad)
        if pad_id is None:
            raise ValueError(f"the tokenizer in {tokenizer_dir} has no padding token {pad!r}")
        # transformers' padding=True, truncation=True, max_length: to the longest query, cut.
        tokenizer.enable_truncation(max_length)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad)
        self._tokenizer = tokenizer
        # Basic graph optimizations: the session opens in 0.19 s instead of 0.24-0.46 s (all of
        # them), and a query then runs in 5.5 ms instead of 10.
        options = session_options()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self._session = ort.InferenceSession(str(graph), options, ["CPUExecutionProvider"])

    @classmethod
    def find(cls, fingerprint: str, tokenizer_dir: str, max_length: int) -> SentenceGraph | None:
        """Open the kept graph of an encoder; None when there is none (or it does not load)."""
        path = graph_path(fingerprint)
        if not path.is_file() or not (Path(tokenizer_dir) / TOKENIZER_FILE).is_file():
            return None
        try:
            return cls(path, Path(tokenizer_dir), max_length)
        except Exception:  # noqa: BLE001 - a graph that does not load is as good as none
            return None

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Encode ``texts`` as :meth:`TextBranch.encode` does: tokens, mask, empty, pooled.

        Queries asking for any change are flagged ``empty`` (the decoder swaps in its learned
        token) and encoded as the word "change", as the text branch encodes them.
        """
        empty = np.array([is_any_change(text) for text in texts], dtype=bool)
        words = [
            text.strip() if not flag else "change" for text, flag in zip(texts, empty, strict=True)
        ]
        encodings = self._tokenizer.encode_batch(words)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        (hidden,) = self._session.run(None, feeds)
        hidden = hidden.astype(np.float32, copy=False)
        mask = feeds["attention_mask"].astype(bool)
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1.0)
        return {"tokens": hidden, "mask": mask, "empty": empty, "pooled": pooled}


def _last_hidden(model: Any) -> torch.nn.Module:
    """Wrap the encoder: the graph's three inputs in, its last hidden states out."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor
        ) -> torch.Tensor:
            hidden = self.model(input_ids=ids, attention_mask=mask, token_type_ids=types)
            return hidden.last_hidden_state.float()

    return LastHidden()


class _Disagrees(Exception):
    """The exported graph does not give the encoder's numbers (it is not kept)."""


def export_text_graph(branch: TextBranch, path: Path) -> bool:
    """Export a frozen sentence encoder's graph to ``path``, checked against torch first.

    Written under a temporary name and renamed when complete and checked. Returns whether the
    graph is there now.
    """
    import torch
    from torch.export import Dim

    from mtrs_geo.models.loading import quiet_loading
    from mtrs_geo.models.onnx_export import quiet_export
    from mtrs_geo.write import atomic_output

    path = Path(path)
    try:
        # A folder that cannot be written fails here, before the export's 11 s, not after them.
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            return False
        device = torch.device("cpu")
        model = branch.text_model(device)
        batch = branch.tokenizer(
            list(_EXAMPLES), padding=True, truncation=True, max_length=branch.max_length,
            return_tensors="pt",
        )  # fmt: skip
        inputs = tuple(batch[name] if name in batch else torch.zeros_like(batch["input_ids"])
                       for name in INPUTS)  # fmt: skip
        wrapper = _last_hidden(model)
        with torch.no_grad():
            expected = wrapper(*inputs).numpy()
        sizes = {0: Dim("queries", min=1, max=4096), 1: Dim("words", min=2, max=4096)}
        with quiet_loading(), quiet_export(), torch.no_grad():
            program = torch.onnx.export(
                wrapper, inputs, input_names=list(INPUTS), output_names=["hidden"],
                dynamic_shapes=tuple(sizes for _ in INPUTS), dynamo=True, optimize=False,
            )  # fmt: skip
        assert program is not None
        with atomic_output(path) as partial:
            program.save(str(partial), external_data=False)
            del program  # its copy of the weights, before the check opens the graph (peak RSS)
            if not _agrees(partial, inputs, expected):
                raise _Disagrees
        return True
    except Exception:  # noqa: BLE001 - the export only speeds later queries up: never fail a run
        return False  # atomic_output has removed the graph, if it was written


def _agrees(graph: Path, inputs: tuple[torch.Tensor, ...], expected: np.ndarray) -> bool:
    """Whether ``graph`` gives torch's hidden states on the example words (padding excluded)."""
    import onnxruntime as ort

    from mtrs_geo.models.onnx_runtime import session_options

    session = ort.InferenceSession(
        str(graph), session_options(), providers=["CPUExecutionProvider"]
    )
    feeds = {name: tensor.numpy() for name, tensor in zip(INPUTS, inputs, strict=True)}
    (hidden,) = session.run(None, feeds)
    words = feeds["attention_mask"].astype(bool)
    return bool(np.abs(hidden - expected)[words].max() <= TOLERANCE)
