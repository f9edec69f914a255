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
import math
import re
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


def resolve_source(source: Any, base: Path | None) -> dict[str, Any]:
    """Check a data source's type; make its relative paths absolute against ``base``."""
    if not isinstance(source, dict) or source.get("type") not in SOURCE_TYPES:
        raise InputError(f"each data source needs a type among {', '.join(SOURCE_TYPES)}")
    resolved = dict(source)
    if base is not None:
        for key in ("root", "before", "after", "labels"):
            if key in resolved and not Path(str(resolved[key])).is_absolute():
                resolved[key] = str((base / str(resolved[key])).resolve())
    return resolved


def _whole(where: str, value: Any, low: int) -> None:
    """Raise :class:`InputError` unless ``value`` is a whole number >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{where} must be a whole number >= {low}, got {value!r}")


def _in_range(value: Any, low: float, high: float | None = None, above: bool = False) -> bool:
    """Whether ``value`` is a finite number in ``[low, high]`` (``(low, high]`` with ``above``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return (value > low if above else value >= low) and (high is None or value <= high)


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader that reads ``1e-3`` as a number, as YAML 1.2 and people do.

    YAML 1.1 (PyYAML) wants a dot in a float's mantissa, so ``lr: 1e-3`` would be the text
    ``"1e-3"``.
    """


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def _real(
    where: str, value: Any, low: float, high: float | None = None, above: bool = False
) -> None:
    """Raise :class:`InputError` unless ``value`` is a finite number in range (:func:`_in_range`).

    A number written as text (in quotes: ``"1e-3"``) is named as such.
    """
    if _in_range(value, low, high, above):
        return
    wanted = f"a number {'>' if above else '>='} {low:g}" + (
        "" if high is None else f" and <= {high:g}"
    )
    hint = ""
    if isinstance(value, str):
        try:
            float(value)
            hint = " (a number in quotes is text: leave the quotes out)"
        except ValueError:
            pass
    raise InputError(f"{where} must be {wanted}, got {value!r}{hint}")


def _flag(where: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InputError(f"{where} must be true or false, got {value!r}")


def _text(where: str, value: Any, optional: bool = False) -> None:
    if not (isinstance(value, str) and value.strip()) and not (optional and value is None):
        raise InputError(f"{where} must be a non-empty text, got {value!r}")


def check_model(model: ModelSection) -> None:
    """Check the ``model`` section's values (one :class:`InputError` naming the first bad one)."""
    from mtrs_geo.models.configuration_mtrefseg import SIZES

    if model.size not in SIZES:
        raise InputError(f"model.size must be one of {', '.join(SIZES)}, got {model.size!r}")
    if not isinstance(model.overrides, dict):
        raise InputError(f"model.overrides must be a mapping, got {model.overrides!r}")
    _text("model.init_from", model.init_from, optional=True)
    _text("model.teacher", model.teacher, optional=True)
    if not all(isinstance(prefix, str) and prefix for prefix in model.freeze):
        raise InputError(
            f"model.freeze must be a list of parameter-name prefixes, got {model.freeze!r}"
        )
    _real("model.distill_weight", model.distill_weight, 0.0)
    _flag("model.teacher_both_ways", model.teacher_both_ways)
    if model.teacher_both_ways and not model.teacher:
        raise InputError("model.teacher_both_ways needs a model.teacher")


def check_augment(augment: AugmentConfig) -> None:
    """Check the ``augment`` section's values."""
    if augment.size is not None:
        _whole("augment.size", augment.size, 1)
    if augment.mode not in ("crop", "resize"):
        raise InputError(f"augment.mode must be crop or resize, got {augment.mode!r}")
    for name in ("hflip", "vflip", "swap_dates"):
        _real(f"augment.{name}", getattr(augment, name), 0.0, 1.0)
    if not _in_range(augment.misregister, 0.0, 1.0) or not _in_range(augment.misregister_px, 0.0):
        raise InputError(
            "augment.misregister must be a probability (0..1) and augment.misregister_px >= 0"
        )
    _flag("augment.rot90", augment.rot90)
    for name in ("brightness", "contrast"):
        _real(f"augment.{name}", getattr(augment, name), 0.0)


def check_optim(optim: OptimSection) -> None:
    """Check the ``optim`` section's values."""
    _real("optim.lr", optim.lr, 0.0, above=True)
    _real("optim.weight_decay", optim.weight_decay, 0.0)
    _whole("optim.warmup_steps", optim.warmup_steps, 0)
    for name in ("batch_size", "accumulate", "max_steps"):
        _whole(f"optim.{name}", getattr(optim, name), 1)
    _real("optim.grad_clip", optim.grad_clip, 0.0)
    _real("optim.min_lr_ratio", optim.min_lr_ratio, 0.0, 1.0)


def check_run(run: RunSection) -> None:
    """Check the ``run`` section's values (``--max-time`` and the other overrides included)."""
    _text("run.out", run.out)
    _whole("run.seed", run.seed, 0)
    _text("run.device", run.device)
    if run.precision not in PRECISIONS:
        raise InputError(f"run.precision must be one of {', '.join(PRECISIONS)}")
    for name in ("checkpoint_every", "log_every", "keep_checkpoints"):
        _whole(f"run.{name}", getattr(run, name), 1)
    for name in ("eval_every", "num_workers"):
        _whole(f"run.{name}", getattr(run, name), 0)
    if run.max_time is not None:
        _real("run.max_time (seconds)", run.max_time, 0.0, above=True)
    if run.eval_input_size is not None:
        _whole("run.eval_input_size", run.eval_input_size, 1)


def check_data(data: DataSection) -> None:
    """Check the ``data`` section's repeat counts (the loaders check the sources' own keys)."""
    _whole("data.repeat", data.repeat, 1)
    for number, source in enumerate(data.train + data.val, start=1):
        _whole(f"data source {number} ({source['type']}) repeat", source.get("repeat", 1), 1)


def check_config(config: TrainConfig) -> None:
    """Check every value of a run configuration; raise an :class:`InputError` for the first bad one.

    Called when a configuration is read and again after the command line's overrides, so a bad value
    stops the run before any folder is made.
    """
    if isinstance(config.stage, bool) or config.stage not in (1, 2):
        raise InputError(f"stage must be 1 or 2, got {config.stage!r}")
    check_model(config.model)
    check_data(config.data)
    check_augment(config.augment)
    check_optim(config.optim)
    check_run(config.run)


def config_from_dict(values: dict[str, Any], base: Path | None = None) -> TrainConfig:
    """Build and check a :class:`TrainConfig` from plain data (``base``: for relative paths)."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise InputError(f"unknown config key(s): {', '.join(unknown)}")
    stage = values.get("stage", 1)
    model = _section(ModelSection, values.get("model"), "model")
    freeze = model.freeze
    model = dataclasses.replace(
        model, freeze=tuple(freeze) if isinstance(freeze, list | tuple) else (freeze,)
    )
    if model.init_from and base is not None and not Path(str(model.init_from)).is_absolute():
        model = dataclasses.replace(model, init_from=str((base / str(model.init_from)).resolve()))
    if model.teacher and base is not None and not Path(str(model.teacher)).is_absolute():
        model = dataclasses.replace(model, teacher=str((base / str(model.teacher)).resolve()))
    data_values = values.get("data") or {}
    if not isinstance(data_values, dict):
        raise InputError("config section 'data' must be a mapping")
    data_values = dict(data_values)
    sources = {}
    for key in ("train", "val"):
        given = data_values.pop(key, []) or []
        if not isinstance(given, list | tuple):
            raise InputError(f"data.{key} must be a list of sources")
        sources[key] = tuple(resolve_source(s, base) for s in given)
    data = _section(DataSection, data_values, "data")
    data = dataclasses.replace(data, train=sources["train"], val=sources["val"])
    augment = _section(AugmentConfig, values.get("augment"), "augment")
    optim = _section(OptimSection, values.get("optim"), "optim")
    run = _section(RunSection, values.get("run"), "run")
    config = TrainConfig(stage, model, data, augment, optim, run)
    check_config(config)
    return config


def load_config(path: Path) -> TrainConfig:
    """Read a YAML run configuration; a syntax error is named on one line (where, and what)."""
    try:
        values = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_ConfigLoader) or {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InputError(
            f"cannot read config {path}: YAML syntax error{where}: {exc.problem or exc.context}"
        ) from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read config {path}: {reason}") from exc
    if not isinstance(values, dict):
        raise InputError(f"{path}: a config must be a YAML mapping")
    return config_from_dict(values, base=Path(path).resolve().parent)


def dump_config(config: TrainConfig) -> str:
    """Return the configuration as YAML text."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
