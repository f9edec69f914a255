"""MTRefSeg-R1 behind the engine's :class:`~mtrs_geo.model_api.ChangeModel` interface.

``--model mtrefseg-r1`` resolves to the checkpoint bundled in ``models/checkpoints/mtrefseg-r1/``;
``--model PATH`` loads any checkpoint folder (``config.json`` + ``model.safetensors``, optionally a
model card ``README.md`` and ``training_metadata.json`` or ``training.json`` with ``trained_on``).

Describing a checkpoint (``mtrs models``) reads only its small JSON/markdown files, not the weights.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from math import prod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mtrs_geo.device import autocast_context
from mtrs_geo.errors import ModelError
from mtrs_geo.model_api import ChangeModel, ModelInfo
from mtrs_geo.models.query_cache import QueryCache, cached_embeds, default_cache_dir
from mtrs_geo.models.text import is_any_change
from mtrs_geo.padding import pad_tile
from mtrs_geo.torch_model import TorchChangeModel

if TYPE_CHECKING:
    from mtrs_geo.models.network import MTRefSegR1Layers
    from mtrs_geo.models.text import TextEmbeds

NAME = "mtrefseg-r1"
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints" / NAME
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "training_metadata.json"
# The trainer's run summary; its ``trained_on`` entry is read as well.
TRAINING_SUMMARY_FILE = "training.json"
MODEL_TYPE = "mtrefseg-r1"
MIN_TILE = 32
_DESCRIPTION = (
    "MTRefSeg-R1: change-aware referring segmentation (text query -> mask of that change)"
)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _parameter_count(weights: Path) -> int:
    """Count the stored values of a safetensors file from its JSON header only."""
    with weights.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return sum(prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")


def _trained_on(folder: Path) -> str:
    """``trained_on`` from the training metadata, else a ``Trained on:`` line of the model card."""
    for name in (METADATA_FILE, TRAINING_SUMMARY_FILE):
        value = _read_json(folder / name).get("trained_on")
        if value:
            return str(value)
    card = folder / "README.md"
    if card.is_file():
        for line in card.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, rest = line.strip().lstrip("-*# ").partition(":")
            if key.strip().lower().replace("_", " ") == "trained on" and rest.strip():
                return rest.strip().strip("*").strip()
    return "-"


def _is_checkpoint(folder: Path) -> bool:
    config = _read_json(folder / "config.json")
    return config.get("model_type") == MODEL_TYPE and (folder / WEIGHTS_FILE).is_file()


def describe_checkpoint(folder: Path, name: str = NAME) -> ModelInfo:
    """Describe a checkpoint folder for ``mtrs models`` (reads no weights)."""
    config = _read_json(folder / "config.json")
    weights = folder / WEIGHTS_FILE
    in_channels = int(config.get("in_channels", 3))
    size = str(config.get("size_name", "custom"))
    if weights.is_file():
        megabytes = weights.stat().st_size / 1e6
        size = f"{size}, {_parameter_count(weights) / 1e6:.1f}M params, {megabytes:.1f} MB"
    text = "an LLM [SEG] token" if config.get("text_mode") == "llm" else "all-MiniLM-L6-v2"
    bands = "RGB (3 bands)" if in_channels == 3 else f"{in_channels} bands"
    return ModelInfo(
        name=name,
        description=_DESCRIPTION,
        query_aware=True,
        in_channels=in_channels,
        needs=f"{bands}, text via {text}; CPU or CUDA",
        trained_on=_trained_on(folder),
        size=size,
        understands=_understands(folder),
    )


def _understands(folder: Path) -> str:
    """Read the vocabulary line of the training metadata (scripts/train_bundled.py writes it)."""
    value = _read_json(folder / METADATA_FILE).get("understands")
    return str(value) if value else "-"


def _bundled_info() -> ModelInfo:
    if _is_checkpoint(CHECKPOINT_DIR):
        return describe_checkpoint(CHECKPOINT_DIR)
    return ModelInfo(
        name=NAME,
        description=_DESCRIPTION,
        query_aware=True,
        in_channels=3,
        needs="RGB (3 bands); a checkpoint: none is bundled yet, pass --model PATH",
        trained_on="-",
        size="base (not bundled yet)",
    )


MODEL_INFO: ModelInfo = _bundled_info()


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

    def move_to(self, device: torch.device) -> None:
        """Move the network (and the encoded query) to ``device``."""
        if next(self.model.parameters()).device != device:  # a no-op move still visits each layer
            self.model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self._embeds is not None:
            self._embeds = self._embeds.to(device)
        if self._query_embeds is not None:
            self._query_embeds = self._query_embeds.to(device)

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
        self._query_embeds = self._encode(["" if is_any_change(text) else text for text in texts])

    def _encode(self, texts: list[str]) -> TextEmbeds:
        """Encode ``texts`` as one batch: kept on disk, the encoder is loaded only once ever."""
        device = next(self.model.parameters()).device
        try:
            return cached_embeds(self.queries, self.model.text, texts, device)
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


def load_checkpoint(path: Path, cache_dir: Path | None = None) -> ChangeModel:
    """Load an MTRefSeg-R1 checkpoint folder as a :class:`ChangeModel` (on CPU).

    ``cache_dir`` keeps encoded queries (:mod:`mtrs_geo.models.query_cache`; default
    ``$XDG_CACHE_HOME/mtrs``). The network loads without ``transformers``
    (:func:`mtrs_geo.models.network.load_network`).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(f"checkpoint folder {folder} does not exist")
    if not _is_checkpoint(folder):
        raise ModelError(
            f"{folder} is not an MTRefSeg-R1 checkpoint (needs config.json with model_type "
            f"{MODEL_TYPE!r} and {WEIGHTS_FILE})"
        )
    from mtrs_geo.models.network import load_network

    try:
        model = load_network(folder)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable checkpoint folder
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load checkpoint {folder}: {message}") from exc
    name = NAME if folder.resolve() == CHECKPOINT_DIR else f"{NAME}@{folder.name}"
    queries = QueryCache(default_cache_dir() if cache_dir is None else cache_dir)
    return MTRefSegChangeModel(model, describe_checkpoint(folder, name), queries)


def build_model() -> ChangeModel:
    """Load the bundled MTRefSeg-R1 checkpoint (:class:`ModelError` while none is bundled)."""
    if not _is_checkpoint(CHECKPOINT_DIR):
        raise ModelError(
            "no MTRefSeg-R1 checkpoint is bundled yet: pass --model PATH to a checkpoint folder "
            "(config.json + model.safetensors)"
        )
    return load_checkpoint(CHECKPOINT_DIR)
