"""The training loop of ``mtrs train``: a plain PyTorch loop with exact, step-level resume.

Why not a Lightning ``Trainer``: its resume restarts an interrupted epoch's data from the start.
Here every micro-batch is a pure function of ``(seed, position)`` (a stream of per-epoch
permutations, see :class:`StreamSampler`, and augmentations seeded by ``(seed, epoch, index)``), and
a checkpoint holds the stream position with the model, optimizer, scheduler, grad-scaler and RNG
states. A run killed after a checkpoint and resumed from it computes the same losses as a run that
was never killed.

Multi-GPU and multi-node: launch with ``torchrun`` (``torchrun --nproc_per_node 4 -m
mtrs_geo.cli.main train --config run.yaml``); ranks read disjoint slices of every global batch and
the model is wrapped in ``DistributedDataParallel``. Mixed precision: bf16 autocast on CUDA (fp16 +
grad scaler where bf16 is missing). Logs: ``log.csv`` (and TensorBoard when installed), a tqdm bar.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import pickle
import random
import re
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from mtrs_geo.errors import InputError
from mtrs_geo.models.augment import AugmentedDataset, collate_samples
from mtrs_geo.models.data.sample import Sample
from mtrs_geo.models.loading import quiet_loading
from mtrs_geo.models.training.config import TrainConfig, dump_config
from mtrs_geo.models.training.sources import build_sources

STATE_FILE = "trainer_state.pt"
MODEL_DIR = "model"
LOG_FIELDS = ("step", "loss", "lr", "samples", "seconds", "samples_per_second")


class StreamSampler(Sampler[tuple[int, int]]):
    """An endless stream of ``(epoch, index)`` keys, from micro-batch ``start`` on.

    Epoch ``e`` visits the dataset in the permutation drawn from ``(seed, e)``. Micro-batch ``m``
    of the whole job covers stream positions ``[m * W * B, (m + 1) * W * B)``; rank ``r`` takes
    ``B`` of them starting at ``m * W * B + r * B``.
    """

    def __init__(
        self, length: int, seed: int, batch_size: int, start: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        self.length, self.seed, self.batch_size = length, seed, batch_size
        self.start, self.rank, self.world = start, rank, world
        self._perms: dict[int, np.ndarray] = {}

    def key(self, position: int) -> tuple[int, int]:
        """Return the ``(epoch, index)`` at a stream position."""
        epoch, offset = divmod(position, self.length)
        if epoch not in self._perms:
            self._perms = {
                epoch: np.random.default_rng((self.seed, epoch)).permutation(self.length)
            }
        return epoch, int(self._perms[epoch][offset])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        micro = self.start
        while True:
            base = (micro * self.world + self.rank) * self.batch_size
            for j in range(self.batch_size):
                yield self.key(base + j)
            micro += 1


class StreamDataset(Dataset[Sample]):
    """Index an :class:`AugmentedDataset` with ``(epoch, index)`` keys."""

    def __init__(self, augmented: AugmentedDataset) -> None:
        self.augmented = augmented

    def __len__(self) -> int:
        return len(self.augmented)

    def __getitem__(self, key: tuple[int, int]) -> Sample:  # type: ignore[override]
        epoch, index = key
        return self.augmented.item(epoch, index)


@dataclass
class TrainResult:
    """What a run reached."""

    steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    final_dir: Path | None = None
    last_checkpoint: Path | None = None
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_kind: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _select_device(name: str, local_rank: int) -> torch.device:
    """Resolve ``run.device``; under torchrun a bare ``cuda``/``auto`` means this rank's GPU."""
    from mtrs_geo.device import select_device

    device = select_device(name)
    if device.type == "cuda" and name.strip().lower() in ("auto", "cuda"):
        device = torch.device("cuda", local_rank)
    return device


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_network(config: TrainConfig) -> torch.nn.Module:
    """Build the model: fresh at ``model.size`` with overrides, or from ``model.init_from``."""
    from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
    from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1

    if config.model.init_from:
        folder = Path(config.model.init_from)
        if not (folder / "config.json").is_file():
            raise InputError(f"model.init_from {folder} is not a checkpoint folder (config.json)")
        with quiet_loading():
            return MTRefSegR1.from_pretrained(folder, local_files_only=True)
    return MTRefSegR1(MTRefSegR1Config.from_size(config.model.size, **config.model.overrides))


def freeze_parameters(network: torch.nn.Module, prefixes: tuple[str, ...]) -> int:
    """Stop gradients of parameters whose name starts with a prefix; return how many were frozen."""
    count = 0
    for name, parameter in network.named_parameters():
        if prefixes and name.startswith(prefixes):
            parameter.requires_grad_(False)
            count += 1
    if prefixes and count == 0:
        raise InputError(f"model.freeze {list(prefixes)} matches no parameter name")
    return count


def train_mode(network: torch.nn.Module, frozen: tuple[str, ...]) -> None:
    """Training mode, except batch norms of frozen parts keep their running statistics."""
    network.train()
    for name, module in network.named_modules():
        if frozen and f"{name}.".startswith(frozen) and isinstance(module, torch.nn.BatchNorm2d):
            module.eval()


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _rng_state() -> dict[str, Any]:
    """Capture every RNG state as tensors and plain data (loadable with ``weights_only=True``)."""
    version, internal, gauss_next = random.getstate()
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`_rng_state` captured (or the pickled tuples of older checkpoints)."""
    python, numpy_state = state["python"], state["numpy"]
    if isinstance(python, dict):
        python = (python["version"], tuple(int(v) for v in python["state"]), python["gauss_next"])
    random.setstate(python)
    if isinstance(numpy_state, dict):
        numpy_state = (
            numpy_state["kind"],
            np.asarray(numpy_state["keys"], dtype=np.int64).astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Checkpoints written before the RNG states were plain data hold NumPy's uint32 key array; these
# globals rebuild exactly that (no object arrays, no other callable). The array's own reduce gives
# NumPy's rebuild function under its name in the installed NumPy (1.x or 2.x).
_LEGACY_SAFE_GLOBALS: list[Any] = [
    np.zeros(1, np.uint32).__reduce__()[0],
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
]
_STATE_KEYS = ("step", "optimizer", "scheduler", "scaler", "rng", "trainable")


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """Read ``<checkpoint>/trainer_state.pt`` without running code from it.

    The file is loaded with ``torch.load(weights_only=True)``: tensors and plain data only.

    Raises:
        InputError: no state file, an unreadable one, one that names code (a crafted
            checkpoint), or one that is not an mtrs trainer state.

    """
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise InputError(f"{checkpoint} is not a training checkpoint (no {STATE_FILE})")
    try:
        with torch.serialization.safe_globals(_LEGACY_SAFE_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if named:
            raise InputError(
                f"{path} names {named.group(1)}, which a trainer state never holds: refusing to "
                "load it (a crafted checkpoint could run code)"
            ) from exc
        raise InputError(
            f"{path} is not a trainer state of tensors and plain data: refusing to load it "
            "(damaged, or crafted to run code)"
        ) from exc
    except EOFError as exc:
        raise InputError(f"cannot read {path}: the file is empty or truncated") from exc
    except (RuntimeError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read {path}: {reason}") from exc
    if not isinstance(state, dict) or any(key not in state for key in _STATE_KEYS):
        raise InputError(f"{path} is not an mtrs trainer state")
    return state


def latest_checkpoint(out: Path) -> Path | None:
    """Return the newest complete checkpoint folder of a run, if any."""
    found = sorted((Path(out) / "checkpoints").glob("step_*/" + STATE_FILE))
    return found[-1].parent if found else None


def _save_model_folder(network: torch.nn.Module, folder: Path, config: TrainConfig) -> None:
    with quiet_loading():
        network.save_pretrained(folder)  # type: ignore[operator]
    (folder / "config.yaml").write_text(dump_config(config), encoding="utf-8")


def _save_checkpoint(
    out: Path,
    step: int,
    network: torch.nn.Module,
    state: dict[str, Any],
    config: TrainConfig,
    keep: int,
) -> Path:
    """Write ``checkpoints/step_<n>/`` atomically (a temporary folder renamed when complete)."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    partial = root / f".partial_step_{step:07d}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    _save_model_folder(network, partial / MODEL_DIR, config)
    torch.save(state, partial / STATE_FILE)
    (partial / "config.yaml").write_text(dump_config(config), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    for old in sorted(root.glob("step_*"))[: -max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _log_rows(path: Path, keep_until: int) -> None:
    """On resume, drop log rows after the resumed step (they will be written again)."""
    if not path.is_file():
        return
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= keep_until]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _tensorboard(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: the CSV log is always written
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _batch_loader(
    dataset: Dataset[Sample], config: TrainConfig, start: int, rank: int, world: int
) -> Iterator[dict[str, Any]]:
    augmented = AugmentedDataset(dataset, config.augment, seed=config.run.seed)
    sampler = StreamSampler(
        len(augmented), config.run.seed, config.optim.batch_size, start, rank, world
    )
    loader = DataLoader(
        StreamDataset(augmented),
        batch_size=config.optim.batch_size,
        sampler=sampler,  # type: ignore[arg-type]
        num_workers=config.run.num_workers,
        collate_fn=collate_samples,
        persistent_workers=config.run.num_workers > 0,
        # Its own generator: creating the iterator must not draw from the global RNG (exact resume).
        generator=torch.Generator().manual_seed(config.run.seed),
    )
    return iter(loader)


def train(
    config: TrainConfig,
    resume: Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Run (or resume) one training stage; return what it reached.

    Args:
        config: the run configuration.
        resume: a checkpoint folder (``<out>/checkpoints/step_<n>``) to continue from.
        progress: show a progress bar.
        stop_after: stop (without saving) once this many optimizer steps are done, as a kill would;
            for tests of exact resume.

    """
    started = time.monotonic()
    out = Path(config.run.out)
    device_guess = (
        "cuda"
        if config.run.device.startswith("cuda")
        or (config.run.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    ddp = _init_distributed(device_guess)
    device = _select_device(config.run.device, ddp.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed_everything(config.run.seed + ddp.rank)

    dataset = build_sources(config.data.train, seed=config.run.seed, training=True)
    if config.data.repeat > 1:
        from torch.utils.data import ConcatDataset

        dataset = ConcatDataset([dataset] * config.data.repeat)

    state: dict[str, Any] | None = None
    if resume is not None:
        resume = Path(resume)
        state = load_trainer_state(resume)
        from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1

        with quiet_loading():
            network: torch.nn.Module = MTRefSegR1.from_pretrained(
                resume / MODEL_DIR, local_files_only=True
            )
    else:
        network = build_network(config)
    network.to(device)
    freeze_parameters(network, config.model.freeze)
    if state is not None:
        # The optimizer's parameter list must be the one that was saved, whatever loading does
        # to requires_grad.
        trainable = set(state["trainable"])
        for name, parameter in network.named_parameters():
            parameter.requires_grad_(name in trainable)
    train_mode(network, config.model.freeze)
    params = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    optim_cfg = config.optim
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, optim_cfg.warmup_steps, optim_cfg.max_steps, optim_cfg.min_lr_ratio),
    )
    amp_dtype = _autocast_dtype(config.run.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    step = 0
    elapsed_before = 0.0  # training seconds of the runs this one resumes
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        elapsed_before = float(state.get("seconds", 0.0))
        _set_rng_state(state["rng"][min(ddp.rank, len(state["rng"]) - 1)])

    model: torch.nn.Module = network
    if ddp.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            network,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )

    log_path = out / "log.csv"
    writer = None
    if ddp.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(config), encoding="utf-8")
        _log_rows(log_path, step)
        writer = _tensorboard(out)

    micro_start = step * optim_cfg.accumulate
    batches = _batch_loader(dataset, config, micro_start, ddp.rank, ddp.world)
    result = TrainResult(steps=step)
    stop_requested = {"flag": False}
    previous_handler = None
    if ddp.main and hasattr(signal, "SIGTERM"):
        try:
            previous_handler = signal.signal(
                signal.SIGTERM, lambda *_: stop_requested.update(flag=True)
            )
        except ValueError:  # not the main thread: no graceful SIGTERM, periodic checkpoints only
            previous_handler = None

    from tqdm import tqdm

    bar = tqdm(
        total=optim_cfg.max_steps, initial=step, disable=not (progress and ddp.main), unit="step"
    )
    window_start, window_samples = time.monotonic(), 0
    try:
        while step < optim_cfg.max_steps:
            optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=device)
            for micro in range(optim_cfg.accumulate):
                batch = next(batches)
                texts = None if config.stage == 1 else list(batch["text"])
                sync = micro == optim_cfg.accumulate - 1 or ddp.world == 1
                context = model.no_sync() if not sync else contextlib.nullcontext()  # type: ignore[operator]
                with context:
                    with torch.autocast(
                        device.type,
                        dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None,
                    ):
                        output = model(
                            batch["image_a"].to(device, non_blocking=True),
                            batch["image_b"].to(device, non_blocking=True),
                            texts=texts,
                            labels=batch["mask"].to(device, non_blocking=True),
                            target_present=batch["target_present"].to(device),
                        )
                        loss = output.loss / optim_cfg.accumulate
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
                window_samples += batch["mask"].shape[0] * ddp.world
            if optim_cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, optim_cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            if ddp.world > 1:
                dist.all_reduce(loss_sum)
                loss_sum /= ddp.world
            loss_value = float(loss_sum)
            if not math.isfinite(loss_value):
                raise RuntimeError(f"loss is {loss_value} at step {step}: lower optim.lr")
            result.losses.append((step, loss_value))
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if ddp.main and (step % config.run.log_every == 0 or step == optim_cfg.max_steps):
                elapsed = time.monotonic() - window_start
                row = {
                    "step": step,
                    "loss": f"{loss_value:.6f}",
                    "lr": f"{scheduler.get_last_lr()[0]:.3e}",
                    "samples": step * optim_cfg.accumulate * optim_cfg.batch_size * ddp.world,
                    "seconds": f"{time.monotonic() - started + elapsed_before:.1f}",
                    "samples_per_second": f"{window_samples / max(elapsed, 1e-9):.2f}",
                }
                _append_log(log_path, row)
                if writer is not None:
                    writer.add_scalar("train/loss", loss_value, step)
                    writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                window_start, window_samples = time.monotonic(), 0
            if stop_after is not None and step >= stop_after:
                result.stopped_early = True
                break
            stop = stop_requested["flag"] or (
                config.run.max_time is not None and time.monotonic() - started > config.run.max_time
            )
            if ddp.world > 1:  # every rank must agree, or the checkpoint's gather would hang
                flag = torch.tensor([float(stop)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
            due = step % config.run.checkpoint_every == 0 or step == optim_cfg.max_steps
            if due or stop:
                seconds = time.monotonic() - started + elapsed_before
                result.last_checkpoint = _checkpoint(
                    out, step, network, optimizer, scheduler, scaler, config, ddp, seconds
                )
            if config.run.eval_every and step % config.run.eval_every == 0 and ddp.main:
                _evaluate_into(network, config, out, step, writer)
                train_mode(network, config.model.freeze)
            if stop:
                result.stopped_early = True
                break
    finally:
        bar.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        if writer is not None:
            writer.close()
    result.steps = step
    result.seconds = time.monotonic() - started
    if ddp.main and not (result.stopped_early and stop_after is not None):
        final = out / "final"
        if final.exists():
            shutil.rmtree(final)
        _save_model_folder(network, final, config)
        result.final_dir = final
        if config.data.val:
            result.metrics = _evaluate_into(network, config, out, step, None)
        summary = {
            "stage": config.stage,
            "steps": step,
            "seconds": round(result.seconds, 1),
            "last_loss": result.losses[-1][1] if result.losses else None,
            "stopped_early": result.stopped_early,
            "metrics": result.metrics,
        }
        (final / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return result


def _append_log(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file()
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _checkpoint(
    out: Path,
    step: int,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    ddp: _Dist,
    seconds: float,
) -> Path | None:
    rng = [_rng_state()]
    if ddp.world > 1:
        gathered: list[Any] = [None] * ddp.world
        dist.all_gather_object(gathered, rng[0])
        rng = gathered
    if not ddp.main:
        return None
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng,
        "world": ddp.world,
        "seconds": seconds,
        "trainable": [n for n, p in network.named_parameters() if p.requires_grad],
    }
    return _save_checkpoint(out, step, network, state, config, config.run.keep_checkpoints)


def _evaluate_into(
    network: torch.nn.Module, config: TrainConfig, out: Path, step: int, writer: Any
) -> dict[str, Any]:
    """Score the model on each validation source; append to ``eval.csv`` and return the metrics."""
    from mtrs_geo.model_api import ModelInfo
    from mtrs_geo.models.evaluate import evaluate_model
    from mtrs_geo.models.inference import MTRefSegChangeModel
    from mtrs_geo.models.training.sources import build_source

    info = ModelInfo("mtrefseg-r1@training", "model being trained", True, 3, "-")
    wrapped = MTRefSegChangeModel(network, info)  # type: ignore[arg-type]
    wrapped.to(next(network.parameters()).device)
    metrics: dict[str, Any] = {}
    for number, source in enumerate(config.data.val):
        name = source.get("name") or f"{source['type']}:{Path(str(source.get('root', ''))).name}"
        if source.get("split"):
            name += f"/{source['split']}"
        dataset = build_source(source, seed=config.run.seed + number, training=False)
        ignore_query = config.stage == 1
        metrics[name] = evaluate_model(
            wrapped, dataset, ignore_query=ignore_query, input_size=config.run.eval_input_size
        )
        if writer is not None:
            for key in ("mIoU", "oIoU"):
                writer.add_scalar(f"val/{name}/{key}", metrics[name][key], step)
    eval_path = out / "eval.csv"
    new = not eval_path.is_file()
    with eval_path.open("a", newline="", encoding="utf-8") as handle:
        fields = ["step", "source", "mIoU", "oIoU", "Pr@50", "Pr@70", "Pr@90", "samples"]
        csv_writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        if new:
            csv_writer.writeheader()
        for name, m in metrics.items():
            csv_writer.writerow({"step": step, "source": name, **m})
    return metrics
