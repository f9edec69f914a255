"""The run configuration of ``mtrs train``: small frozen dataclasses read from and saved as YAML.

A YAML file mirrors :class:`TrainConfig`::

    stage: 1                      # 1: any-change perception, 2: referring fine-tune
    model: {size: base, overrides: {}, init_from: null, freeze: []}
    data:
      train: [{type: change_folder, root: ../shared/data/levir-cd}]
      val: [{type: mtrefseg, root: data/mtrs, split: val}]
      repeat: 1
    augment: {size: 256, mode: crop, hflip: 0.5, vflip: 0.5, rot90: true, swap_dates: 0.0}
    optim: {lr: 3.0e-4, weight_decay: 0.01, warmup_steps: 50, batch_size: 8, accumulate: 1,
            max_steps: 2000, grad_clip: 1.0}
    run: {out: runs/stage1, seed: 0, device: auto, precision: auto, checkpoint_every: 100,
          log_every: 10, eval_every: 0, num_workers: 0, max_time: null, keep_checkpoints: 2}

Relative paths in ``data`` and ``model.init_from`` are resolved against the YAML file's folder;
``run.out`` is relative to the working folder (``mtrs train --out`` overrides it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtrs_geo.errors import InputError
from mtrs_geo.models.augment import AugmentConfig

SOURCE_TYPES = ("mtrefseg", "change_folder", "oscd", "torchgeo", "geo_scene", "craft_stream")
PRECISIONS = ("auto", "32", "bf16", "16")


@dataclass(frozen=True)
class ModelSection:
    """Which network to train: a named size with overrides, or initialized from a checkpoint."""

    size: str = "base"
    overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # checkpoint folder (save_pretrained) to start from
    freeze: tuple[str, ...] = ()  # parameter-name prefixes kept frozen (e.g. "backbone.")
    teacher: str | None = None  # checkpoint folder whose masks the network also learns
    distill_weight: float = 1.0  # weight of that distillation term (models.losses)
    # The teacher asked both ways in time (models.time_symmetric): its answer on the pair averaged
    # with its answer to the reversed query on the time-reversed pair, where the query has one.
    teacher_both_ways: bool = False


@dataclass(frozen=True)
class DataSection:
    """Training and validation sources (dicts with a ``type`` of :data:`SOURCE_TYPES`)."""

    train: tuple[dict[str, Any], ...] = ()
    val: tuple[dict[str, Any], ...] = ()
    repeat: int = 1  # the training sources are repeated this many times per epoch


@dataclass(frozen=True)
class OptimSection:
    """AdamW with a linear warm-up and a cosine decay to ``max_steps`` optimizer steps."""

    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    batch_size: int = 8  # per device, per micro-step
    accumulate: int = 1  # micro-steps per optimizer step
    max_steps: int = 2000
    grad_clip: float = 1.0  # 0: off
    min_lr_ratio: float = 0.05


@dataclass(frozen=True)
class RunSection:
    """Where and how the run goes: output folder, seed, device, checkpoints, logs, time cap."""

    out: str = "runs/mtrefseg"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 (or fp16 + scaler) on CUDA, fp32 elsewhere
    checkpoint_every: int = 100  # optimizer steps
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    num_workers: int = 0
    max_time: float | None = None  # seconds of training after which the run saves and stops
    keep_checkpoints: int = 2
    eval_input_size: int | None = 256


@dataclass(frozen=True)
class TrainConfig:
    """Everything one ``mtrs train`` run needs (saved as ``config.yaml`` with each checkpoint)."""

    stage: int = 1
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists instead of tuples) for YAML."""
        data = dataclasses.asdict(self)
        data["data"]["train"] = [dict(s) for s in self.data.train]
        data["data"]["val"] = [dict(s) for s in self.data.val]
        data["model"]["freeze"] = list(self.model.freeze)
        return data


def _section(cls: type, values: Any, name: str) -> Any:
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise InputError(f"config section {name!r} must be a mapping")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown key(s) in {name!r}: {', '.join(unknown)}")
    return cls(**values)


def _resolve_source(source: Any, base: Path | None) -> dict[str, Any]:
    if not isinstance(source, dict) or source.get("type") not in SOURCE_TYPES:
        raise InputError(f"each data source needs a type among {', '.join(SOURCE_TYPES)}")
    resolved = dict(source)
    if base is not None:
        for key in ("root", "before", "after", "labels"):
            if key in resolved and not Path(str(resolved[key])).is_absolute():
                resolved[key] = str((base / str(resolved[key])).resolve())
    return resolved


def config_from_dict(values: dict[str, Any], base: Path | None = None) -> TrainConfig:
    """Build and check a :class:`TrainConfig` from plain data (``base``: for relative paths)."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise InputError(f"unknown config key(s): {', '.join(unknown)}")
    stage = int(values.get("stage", 1))
    if stage not in (1, 2):
        raise InputError(f"stage must be 1 or 2, got {stage}")
    model = _section(ModelSection, values.get("model"), "model")
    model = dataclasses.replace(model, freeze=tuple(model.freeze))
    if model.init_from and base is not None and not Path(model.init_from).is_absolute():
        model = dataclasses.replace(model, init_from=str((base / model.init_from).resolve()))
    if model.teacher_both_ways and not model.teacher:
        raise InputError("model.teacher_both_ways needs a model.teacher")
    if not model.distill_weight >= 0.0:
        raise InputError(f"model.distill_weight must be >= 0, got {model.distill_weight}")
    if model.teacher and base is not None and not Path(model.teacher).is_absolute():
        model = dataclasses.replace(model, teacher=str((base / model.teacher).resolve()))
    data_values = dict(values.get("data") or {})
    train = tuple(_resolve_source(s, base) for s in data_values.pop("train", []) or [])
    val = tuple(_resolve_source(s, base) for s in data_values.pop("val", []) or [])
    data = _section(DataSection, data_values, "data")
    data = dataclasses.replace(data, train=train, val=val)
    augment = _section(AugmentConfig, values.get("augment"), "augment")
    if augment.mode not in ("crop", "resize"):
        raise InputError(f"augment.mode must be crop or resize, got {augment.mode!r}")
    if not 0.0 <= augment.misregister <= 1.0 or augment.misregister_px < 0:
        raise InputError(
            "augment.misregister must be a probability (0..1) and augment.misregister_px >= 0"
        )
    optim = _section(OptimSection, values.get("optim"), "optim")
    run = _section(RunSection, values.get("run"), "run")
    if run.precision not in PRECISIONS:
        raise InputError(f"run.precision must be one of {', '.join(PRECISIONS)}")
    if optim.batch_size < 1 or optim.accumulate < 1 or optim.max_steps < 1:
        raise InputError("optim.batch_size, optim.accumulate and optim.max_steps must be >= 1")
    return TrainConfig(stage, model, data, augment, optim, run)


def load_config(path: Path) -> TrainConfig:
    """Read a YAML run configuration."""
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(values, dict):
        raise InputError(f"{path}: a config must be a YAML mapping")
    return config_from_dict(values, base=Path(path).resolve().parent)


def dump_config(config: TrainConfig) -> str:
    """Return the configuration as YAML text."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
