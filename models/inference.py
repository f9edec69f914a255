"""MTRefSeg-R1 behind the engine's :class:`~mtrs_geo.model_api.ChangeModel` interface.

``--model mtrefseg-r1`` resolves to the checkpoint bundled in ``models/checkpoints/mtrefseg-r1/``;
``--model PATH`` loads any checkpoint folder (``config.json`` + ``model.safetensors``, optionally a
model card ``README.md`` and ``training_metadata.json`` or ``training.json`` with ``trained_on``).

Describing a checkpoint (``mtrs models``) reads only its small JSON/markdown files, not the weights.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from math import prod
from pathlib import Path
from typing import Any

from mtrs_geo.device import parse_device
from mtrs_geo.errors import ModelError
from mtrs_geo.model_api import ChangeModel, ModelInfo
from mtrs_geo.models.query_cache import QueryCache, default_cache_dir

NAME = "mtrefseg-r1"
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints" / NAME
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "training_metadata.json"
# The trainer's run summary; its ``trained_on`` entry is read as well.
TRAINING_SUMMARY_FILE = "training.json"
MODEL_TYPE = "mtrefseg-r1"
# ``MTRS_RUNTIME=torch`` keeps a CPU run in torch even when the checkpoint carries ONNX graphs.
RUNTIME_VARIABLE = "MTRS_RUNTIME"
_DESCRIPTION = (
    "MTRefSeg-R1: change-aware referring segmentation (text query -> mask of that change)"
)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _parameter_count(weights: Path) -> int | None:
    """Count the stored values of a safetensors file from its JSON header only (None: no header)."""
    try:
        with weights.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if not 0 < length <= weights.stat().st_size - 8:
                return None
            header = json.loads(handle.read(length))
        return sum(prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")
    except (OSError, ValueError, TypeError, KeyError, AttributeError, struct.error):
        return None


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
        count = _parameter_count(weights)
        params = "" if count is None else f"{count / 1e6:.1f}M params, "
        size = f"{size}, {params}{megabytes:.1f} MB"
    text = "an LLM [SEG] token" if config.get("text_mode") == "llm" else "all-MiniLM-L6-v2"
    # Whether its graphs are of these weights is checked when it loads (a hash of the weights).
    runtime = "ONNX Runtime" if (folder / "onnx" / "onnx.json").is_file() else "torch"
    bands = "RGB (3 bands)" if in_channels == 3 else f"{in_channels} bands"
    return ModelInfo(
        name=name,
        description=_DESCRIPTION,
        query_aware=True,
        in_channels=in_channels,
        needs=f"{bands}, text via {text}; CPU ({runtime}) or CUDA",
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


def load_checkpoint(
    path: Path, cache_dir: Path | None = None, device: str | None = None
) -> ChangeModel:
    """Load an MTRefSeg-R1 checkpoint folder as a :class:`ChangeModel`.

    ``cache_dir`` keeps encoded queries (:mod:`mtrs_geo.models.query_cache`; default
    ``$XDG_CACHE_HOME/mtrs``). Without ``device`` the torch model comes back, on the CPU (the
    network loads without ``transformers``: :func:`mtrs_geo.models.network.load_network`); with
    one, the model comes back on it: in ONNX Runtime when that is the CPU and the checkpoint
    carries graphs of its weights (:mod:`mtrs_geo.models.onnx_runtime`; no torch import), else
    in torch moved there.

    Raises:
        ModelError: not a loadable checkpoint.
        InputError: an unknown device name.

    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(f"checkpoint folder {folder} does not exist")
    if not _is_checkpoint(folder):
        raise ModelError(
            f"{folder} is not an MTRefSeg-R1 checkpoint (needs config.json with model_type "
            f"{MODEL_TYPE!r} and {WEIGHTS_FILE})"
        )
    name = NAME if folder.resolve() == CHECKPOINT_DIR else f"{NAME}@{folder.name}"
    info = describe_checkpoint(folder, name)
    queries = QueryCache(default_cache_dir() if cache_dir is None else cache_dir)
    if device is not None and _runs_on_cpu(device):
        onnx_model = _onnx_model(folder, info, queries)
        if onnx_model is not None:
            return onnx_model
    from mtrs_geo.models.network import load_network
    from mtrs_geo.models.torch_inference import MTRefSegChangeModel

    try:
        model = load_network(folder)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable checkpoint folder
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load checkpoint {folder}: {message}") from exc
    loaded = MTRefSegChangeModel(model, info, queries)
    return loaded if device is None else loaded.to(device)


def _runs_on_cpu(device: str) -> bool:
    """Whether ``device`` resolves to the CPU, without importing torch where it can be told.

    ``auto`` picks CUDA, then MPS (:func:`mtrs_geo.device.select_device`): without an NVIDIA
    driver and off macOS neither can be there.
    """
    name = parse_device(device)
    if name == "cpu":
        return True
    if name != "auto":
        return False
    if not Path("/proc/driver/nvidia/version").exists() and sys.platform != "darwin":
        return True
    from mtrs_geo.device import select_device

    return select_device("auto").type == "cpu"


def _onnx_model(folder: Path, info: ModelInfo, queries: QueryCache) -> ChangeModel | None:
    """Return the checkpoint in ONNX Runtime; None: no graphs, no runtime, or torch asked for."""
    if os.environ.get(RUNTIME_VARIABLE, "").strip().lower() == "torch":
        return None
    from mtrs_geo.models import onnx_runtime

    if not onnx_runtime.runtime_available():
        return None
    graphs = onnx_runtime.graph_folder(folder)
    if graphs is None:
        return None
    config = _read_json(folder / "config.json")
    width = int(_read_json(graphs / onnx_runtime.MANIFEST_FILE).get("text_width", 0))
    text = onnx_runtime.TextEncoder.of_checkpoint(config, width)
    if text is None or width <= 0:
        return None
    try:
        return onnx_runtime.OnnxMTRefSegModel(folder, graphs, info, text, queries)
    except Exception as exc:  # noqa: BLE001 - graphs that name these weights but do not load
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load the ONNX graphs of {folder}: {message}") from exc


def build_model(device: str | None = None) -> ChangeModel:
    """Load the bundled MTRefSeg-R1 checkpoint (:class:`ModelError` while none is bundled)."""
    if not _is_checkpoint(CHECKPOINT_DIR):
        raise ModelError(
            "no MTRefSeg-R1 checkpoint is bundled yet: pass --model PATH to a checkpoint folder "
            "(config.json + model.safetensors)"
        )
    return load_checkpoint(CHECKPOINT_DIR, device=device)
