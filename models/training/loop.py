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

:func:`train` runs a :class:`Trainer`, whose methods are the steps of a run: set-up (ranks, device,
network, optimizer, resumed states), the optimizer step, logging, the stop rules (SIGTERM,
``run.max_time``), checkpoints, evaluation and the final save. A run folder holds ``config.yaml``,
``log.csv``, ``eval.csv``, ``checkpoints/step_<n>/`` (``model/``, ``trainer_state.pt``,
``config.yaml``) and ``final/`` (the model folder and ``training.json``); every model folder also
holds ``training_data.json`` (:mod:`mtrs_geo.models.training.record`). A fresh run refuses a folder
that holds another run or is a checkpoint (:func:`check_run_folder`).
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

from mtrs_geo.device import autocast_dtype
from mtrs_geo.errors import InputError
from mtrs_geo.models.augment import AugmentedDataset, collate_samples
from mtrs_geo.models.data.sample import Sample
from mtrs_geo.models.loading import quiet_loading
from mtrs_geo.models.training.config import TrainConfig, check_config, dump_config
from mtrs_geo.models.training.record import RECORD_FILE, training_record
from mtrs_geo.models.training.sources import build_sources
from mtrs_geo.write import atomic_directory

STATE_FILE = "trainer_state.pt"
MODEL_DIR = "model"
LOG_FIELDS = ("step", "loss", "lr", "samples", "seconds", "samples_per_second")
# What a run writes into its folder, and what marks a folder as a checkpoint (a model folder).
RUN_NAMES = ("config.yaml", "log.csv", "eval.csv", "checkpoints", "final", "tensorboard")
CHECKPOINT_NAMES = ("model.safetensors", "pytorch_model.bin", STATE_FILE, RECORD_FILE)


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
    """Return the autocast dtype of ``run.precision`` on ``device`` (None: full precision).

    ``auto`` follows the engine's rule (:func:`mtrs_geo.device.autocast_dtype`) on CUDA and trains
    in fp32 elsewhere: the grad scaler that fp16 training needs exists for CUDA only.
    """
    if precision == "32":
        return None
    if precision == "16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    return autocast_dtype(device) if device.type == "cuda" else None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_network(config: TrainConfig) -> torch.nn.Module:
    """Build the model: fresh at ``model.size`` with overrides, or from ``model.init_from``.

    With ``init_from`` the overrides change the checkpoint's configuration (e.g. the loss weights
    of a continuation); a key the configuration does not have is an error.
    """
    from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
    from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1

    if config.model.init_from:
        folder = Path(config.model.init_from)
        if not (folder / "config.json").is_file():
            raise InputError(f"model.init_from {folder} is not a checkpoint folder (config.json)")
        overrides = dict(config.model.overrides)
        unknown = sorted(key for key in overrides if not hasattr(MTRefSegR1Config(), key))
        if unknown:
            raise InputError(f"model.overrides: {', '.join(unknown)} is not a model setting")
        with quiet_loading():
            return MTRefSegR1.from_pretrained(folder, local_files_only=True, **overrides)
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


def check_run_folder(out: Path, resume: Path | None, restart_unfinished: bool = False) -> None:
    """Refuse a run folder that would mix two runs (nothing is replaced, nothing is mixed).

    A fresh run (``resume`` None) needs a new or empty folder, or one holding none of the names a
    run writes (:data:`RUN_NAMES`); never a checkpoint folder. ``restart_unfinished`` lets it start
    over a run that was stopped before its first checkpoint (no ``final/``, no checkpoint: nothing
    that could be resumed). A resumed run continues in the folder its checkpoint belongs to.

    Raises:
        InputError: one line naming the folder and what to do.

    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"run folder {out} is a file: choose a new --out")
    if any((out / name).exists() for name in CHECKPOINT_NAMES):
        raise InputError(f"{out} is a checkpoint folder: choose a new --out for the run")
    held = out.is_dir() and any((out / name).exists() for name in RUN_NAMES)
    if not held:
        return
    if resume is not None:
        run = Path(os.path.realpath(resume)).parent.parent
        if run == Path(os.path.realpath(out)):
            return
        raise InputError(
            f"{out} already holds another run than {resume}'s: choose a new --out to continue it"
        )
    if restart_unfinished and not (out / "final").exists() and latest_checkpoint(out) is None:
        return
    raise InputError(f"{out} already holds a run: resume it with --resume, or choose a new --out")


def check_bands(dataset: Dataset[Sample], network: torch.nn.Module) -> None:
    """Refuse data whose band count is not the network's ``in_channels`` (reads one item)."""
    wanted = getattr(getattr(network, "config", None), "in_channels", None)
    if wanted is None or len(dataset) == 0:  # type: ignore[arg-type]
        return
    bands = int(dataset[0]["image_a"].shape[0])
    if bands != int(wanted):
        raise InputError(
            f"band-count mismatch: the model takes {wanted} bands (in_channels), the training "
            f"images have {bands}"
        )


def _save_model_folder(
    network: torch.nn.Module, folder: Path, config: TrainConfig, record: dict[str, Any]
) -> None:
    """Write the model (``save_pretrained``), its run config and its training-data record."""
    with quiet_loading():
        network.save_pretrained(folder)  # type: ignore[operator]
    (folder / "config.yaml").write_text(dump_config(config), encoding="utf-8")
    (folder / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _staged_folder(path: Path) -> Iterator[Path]:
    """:func:`~mtrs_geo.write.atomic_directory`, with the permissions a plain ``mkdir`` gives.

    The staging folder follows the umask; a checkpoint folder gets its parent's mode instead, as
    the folders of older versions had (a shared run folder stays readable by its group).
    """
    with atomic_directory(path) as staging:
        staging.chmod(path.parent.stat().st_mode & 0o777)
        yield staging


def _save_checkpoint(
    out: Path,
    step: int,
    network: torch.nn.Module,
    state: dict[str, Any],
    config: TrainConfig,
    keep: int,
    record: dict[str, Any],
) -> Path:
    """Write ``checkpoints/step_<n>/`` atomically (a staging folder renamed when complete)."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    # Staging folders of a killed run (this version's and older ones'); only rank 0 writes here.
    for stale in [*root.glob(".step_*.partial-*"), *root.glob(".partial_step_*")]:
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step_{step:07d}"
    with _staged_folder(final) as staging:
        _save_model_folder(network, staging / MODEL_DIR, config, record)
        torch.save(state, staging / STATE_FILE)
        (staging / "config.yaml").write_text(dump_config(config), encoding="utf-8")
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


class Trainer:
    """One training stage (or its resumption); :meth:`run` does the steps below in order.

    Construction sets up in the order exact resume relies on: devices and ranks, seeds, dataset,
    network, optimizer, then the states of a resumed checkpoint (which overwrite the RNGs).
    :meth:`run` opens the logs, trains until ``optim.max_steps``, a stop (SIGTERM,
    ``run.max_time``) or ``stop_after``, writes checkpoints and evaluations when due, and saves the
    final model folder.

    Args:
        config: the run configuration.
        resume: a checkpoint folder (``<out>/checkpoints/step_<n>``) to continue from.
        progress: show a progress bar.
        stop_after: stop (without saving) once this many optimizer steps are done, as a kill would;
            for tests of exact resume.
        restart_unfinished: a fresh run may start over a run stopped before its first checkpoint
            (``--resume auto`` that found none); see :func:`check_run_folder`.

    Raises:
        InputError: a bad configuration value, a run folder that holds another run or is a
            checkpoint, data whose band count the network does not take: all before the run
            folder is made.

    """

    def __init__(
        self,
        config: TrainConfig,
        resume: Path | None = None,
        progress: bool = True,
        stop_after: int | None = None,
        restart_unfinished: bool = False,
    ) -> None:
        check_config(config)
        self.config, self.progress, self.stop_after = config, progress, stop_after
        self.started = time.monotonic()
        self.out = Path(config.run.out)
        resume = Path(resume) if resume is not None else None
        # Every rank checks before the first collective: rank 0 writes only after all have passed.
        check_run_folder(self.out, resume, restart_unfinished)
        self.ddp, self.device = self._setup_distributed()
        seed_everything(config.run.seed + self.ddp.rank)
        self.dataset = self._build_dataset()
        state = load_trainer_state(resume) if resume is not None else None
        self.network = self._build_network(resume, state)
        check_bands(self.dataset, self.network)
        self.record = training_record(config, None if resume is None else resume / MODEL_DIR)
        self.teacher = self._build_teacher()
        self.params = [p for p in self.network.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = self._build_optimizer()
        self.amp_dtype = _autocast_dtype(config.run.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.elapsed_before = 0.0  # training seconds of the runs this one resumes
        if state is not None:
            self._restore(state)
        self.model = self._wrap_distributed()
        self.writer: Any = None  # TensorBoard, when installed (main rank)
        self.stop_requested = False
        self.window_start, self.window_samples = time.monotonic(), 0  # throughput of a log row
        self.step_lr = self.scheduler.get_last_lr()[0]  # learning rate of the last step taken

    # Set-up -------------------------------------------------------------------------------------

    def _setup_distributed(self) -> tuple[_Dist, torch.device]:
        """Join the torchrun process group (if any) and pick this rank's device."""
        name = self.config.run.device
        cuda = name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())
        ddp = _init_distributed("cuda" if cuda else "cpu")
        device = _select_device(name, ddp.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return ddp, device

    def _build_dataset(self) -> Dataset[Sample]:
        dataset = build_sources(self.config.data.train, seed=self.config.run.seed, training=True)
        if self.config.data.repeat > 1:
            from torch.utils.data import ConcatDataset

            dataset = ConcatDataset([dataset] * self.config.data.repeat)
        return dataset

    def _build_network(self, resume: Path | None, state: dict[str, Any] | None) -> torch.nn.Module:
        """Load the checkpoint's network (else build one) on the device; freeze; training mode."""
        if resume is not None:
            from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1

            with quiet_loading():
                network: torch.nn.Module = MTRefSegR1.from_pretrained(
                    resume / MODEL_DIR, local_files_only=True
                )
        else:
            network = build_network(self.config)
        network.to(self.device)
        freeze_parameters(network, self.config.model.freeze)
        if state is not None:
            # The optimizer's parameter list must be the one that was saved, whatever loading does
            # to requires_grad.
            trainable = set(state["trainable"])
            for name, parameter in network.named_parameters():
                parameter.requires_grad_(name in trainable)
        train_mode(network, self.config.model.freeze)
        return network

    def _build_teacher(self) -> torch.nn.Module | None:
        """Load ``model.teacher`` frozen, in evaluation mode (None without one)."""
        folder = self.config.model.teacher
        if not folder:
            return None
        from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1

        if not Path(folder).is_dir():
            raise InputError(f"model.teacher: checkpoint folder not found: {folder}")
        with quiet_loading():
            teacher: torch.nn.Module = MTRefSegR1.from_pretrained(folder, local_files_only=True)
        teacher.to(self.device).eval()
        teacher.requires_grad_(False)
        return teacher

    def _build_optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """AdamW on the trainable parameters; warm-up then cosine decay (:func:`lr_factor`)."""
        optim = self.config.optim
        optimizer = torch.optim.AdamW(self.params, lr=optim.lr, weight_decay=optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_factor(s, optim.warmup_steps, optim.max_steps, optim.min_lr_ratio),
        )
        return optimizer, scheduler

    def _restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's optimizer, scheduler, scaler, step, time and RNG states."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.elapsed_before = float(state.get("seconds", 0.0))
        _set_rng_state(state["rng"][min(self.ddp.rank, len(state["rng"]) - 1)])

    def _wrap_distributed(self) -> torch.nn.Module:
        """Return the module the steps call: the network, or its ``DistributedDataParallel``."""
        if self.ddp.world == 1:
            return self.network
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            self.network,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=True,
        )

    def _open_logs(self) -> None:
        """Write ``config.yaml``, trim ``log.csv`` to the step, open TensorBoard (rank 0)."""
        if not self.ddp.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(dump_config(self.config), encoding="utf-8")
        _log_rows(self.out / "log.csv", self.step)
        self.writer = _tensorboard(self.out)

    @contextlib.contextmanager
    def _sigterm_stops(self) -> Iterator[None]:
        """Let SIGTERM ask for a checkpoint and a stop after the current step (rank 0)."""
        previous = None
        if self.ddp.main and hasattr(signal, "SIGTERM"):
            try:
                previous = signal.signal(signal.SIGTERM, self._request_stop)
            except (
                ValueError
            ):  # not the main thread: no graceful SIGTERM, periodic checkpoints only
                previous = None
        try:
            yield
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _request_stop(self, *_: object) -> None:
        self.stop_requested = True

    # The loop -----------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train to ``optim.max_steps`` (or a stop) and save the final model; return the result."""
        optim = self.config.optim
        self._open_logs()
        batches = _batch_loader(
            self.dataset, self.config, self.step * optim.accumulate, self.ddp.rank, self.ddp.world
        )
        result = TrainResult(steps=self.step)
        from tqdm import tqdm

        with self._sigterm_stops():
            shown = self.progress and self.ddp.main
            bar = tqdm(total=optim.max_steps, initial=self.step, disable=not shown, unit="step")
            self.window_start, self.window_samples = time.monotonic(), 0
            try:
                while self.step < optim.max_steps:
                    loss = self._optimizer_step(batches)
                    result.losses.append((self.step, loss))
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
                    self._log(loss)
                    if self.stop_after is not None and self.step >= self.stop_after:
                        result.stopped_early = True
                        break
                    stop = self._stop_wanted()
                    if stop or self._checkpoint_due():
                        result.last_checkpoint = self._checkpoint()
                    if self._evaluation_due():
                        self._evaluate(self.writer)
                        train_mode(self.network, self.config.model.freeze)
                    if stop:
                        result.stopped_early = True
                        break
            finally:
                bar.close()
                if self.writer is not None:
                    self.writer.close()
        result.steps = self.step
        result.seconds = time.monotonic() - self.started
        if self.ddp.main and not (result.stopped_early and self.stop_after is not None):
            self._save_final(result)
        return result

    def _optimizer_step(self, batches: Iterator[dict[str, Any]]) -> float:
        """One optimizer step over ``optim.accumulate`` micro-batches; return its mean loss."""
        optim = self.config.optim
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(optim.accumulate):
            batch = next(batches)
            loss_sum += self._micro_step(batch, sync=micro == optim.accumulate - 1)
            self.window_samples += batch["mask"].shape[0] * self.ddp.world
        if optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step_lr = self.scheduler.get_last_lr()[0]  # the rate this step used (log.csv's)
        self.scheduler.step()
        self.step += 1
        if self.ddp.world > 1:
            dist.all_reduce(loss_sum)
            loss_sum /= self.ddp.world
        loss = float(loss_sum)
        if not math.isfinite(loss):
            raise RuntimeError(f"loss is {loss} at step {self.step}: lower optim.lr")
        return loss

    def _micro_step(self, batch: dict[str, Any], sync: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch (gradients synced across ranks on the last)."""
        device = self.device
        texts = None if self.config.stage == 1 else list(batch["text"])
        sync = sync or self.ddp.world == 1
        context = self.model.no_sync() if not sync else contextlib.nullcontext()  # type: ignore[operator]
        with context:
            with torch.autocast(
                device.type,
                dtype=self.amp_dtype or torch.float32,
                enabled=self.amp_dtype is not None,
            ):
                images = (
                    batch["image_a"].to(device, non_blocking=True),
                    batch["image_b"].to(device, non_blocking=True),
                )
                output = self.model(
                    *images,
                    texts=texts,
                    labels=batch["mask"].to(device, non_blocking=True),
                    target_present=batch["target_present"].to(device),
                )
                loss = output.loss
                if self.teacher is not None:
                    loss = loss + self._distillation(images, texts, output)
                loss = loss / self.config.optim.accumulate
            self.scaler.scale(loss).backward()
        return loss.detach()

    def _distillation(
        self, images: tuple[torch.Tensor, torch.Tensor], texts: list[str] | None, output: Any
    ) -> torch.Tensor:
        """``model.distill_weight`` times the student's distance to the teacher on this batch."""
        from mtrs_geo.models.losses import distillation_loss

        assert self.teacher is not None
        with torch.no_grad():
            taught = self.teacher(*images, texts=texts)
            logits, presence = taught.logits, taught.presence_logits
            if self.config.model.teacher_both_ways and texts is not None:
                logits, presence = self._both_ways(images, texts, logits, presence)
        settings: Any = self.network.config  # the student's: presence weighed as its labels are
        term = distillation_loss(
            output.logits,
            output.presence_logits,
            logits,
            presence,
            presence_weight=settings.presence_weight,
        )
        return self.config.model.distill_weight * term

    def _both_ways(
        self,
        images: tuple[torch.Tensor, torch.Tensor],
        texts: list[str],
        logits: torch.Tensor,
        presence: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Average the teacher's answers (as probabilities) with its time-reversed ones.

        Samples whose query has no reversed form (:func:`~mtrs_geo.models.time_symmetric.
        reversed_query`) keep the one-way answer.
        """
        from mtrs_geo.models.time_symmetric import reversed_query

        assert self.teacher is not None
        reverse = [reversed_query(text or "") for text in texts]
        index = [i for i, text in enumerate(reverse) if text is not None]
        if not index:
            return logits, presence
        before, after = (image[index] for image in images)
        back = self.teacher(after, before, texts=[reverse[i] for i in index])
        logits, presence = logits.float().clone(), presence.float().clone()
        logits[index] = torch.logit(
            (logits[index].sigmoid() + back.logits.float().sigmoid()) / 2, eps=1e-6
        )
        presence[index] = torch.logit(
            (presence[index].sigmoid() + back.presence_logits.float().sigmoid()) / 2, eps=1e-6
        )
        return logits, presence

    def _log(self, loss: float) -> None:
        """Append a ``log.csv`` row (and TensorBoard) every ``run.log_every`` steps (rank 0)."""
        step, optim = self.step, self.config.optim
        if not self.ddp.main or not (
            step % self.config.run.log_every == 0 or step == optim.max_steps
        ):
            return
        elapsed = time.monotonic() - self.window_start
        lr = self.step_lr
        row = {
            "step": step,
            "loss": f"{loss:.6f}",
            "lr": f"{lr:.3e}",
            "samples": step * optim.accumulate * optim.batch_size * self.ddp.world,
            "seconds": f"{time.monotonic() - self.started + self.elapsed_before:.1f}",
            "samples_per_second": f"{self.window_samples / max(elapsed, 1e-9):.2f}",
        }
        _append_log(self.out / "log.csv", row)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
        self.window_start, self.window_samples = time.monotonic(), 0

    def _stop_wanted(self) -> bool:
        """SIGTERM or ``run.max_time``; all ranks agree (or the checkpoint's gather would hang)."""
        max_time = self.config.run.max_time
        stop = self.stop_requested or (
            max_time is not None and time.monotonic() - self.started > max_time
        )
        if self.ddp.world > 1:
            flag = torch.tensor([float(stop)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def _checkpoint_due(self) -> bool:
        every, last = self.config.run.checkpoint_every, self.config.optim.max_steps
        return self.step % every == 0 or self.step == last

    def _evaluation_due(self) -> bool:
        every = self.config.run.eval_every
        return bool(every) and self.step % every == 0 and self.ddp.main

    # Saving and evaluation ----------------------------------------------------------------------

    def _checkpoint(self) -> Path | None:
        """Every rank: gather the RNG states; main rank: write ``checkpoints/step_<n>/``."""
        rng = [_rng_state()]
        if self.ddp.world > 1:
            gathered: list[Any] = [None] * self.ddp.world
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        if not self.ddp.main:
            return None
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "world": self.ddp.world,
            "seconds": time.monotonic() - self.started + self.elapsed_before,
            "trainable": [n for n, p in self.network.named_parameters() if p.requires_grad],
        }
        keep = self.config.run.keep_checkpoints
        return _save_checkpoint(
            self.out, self.step, self.network, state, self.config, keep, self.record
        )

    def _save_final(self, result: TrainResult) -> None:
        """Write ``final/`` (model folder, ``training.json``) and the last evaluation."""
        final = self.out / "final"
        with _staged_folder(final) as staging:
            _save_model_folder(self.network, staging, self.config, self.record)
        result.final_dir = final
        if self.config.data.val:
            result.metrics = self._evaluate(None)
        summary = {
            "stage": self.config.stage,
            "steps": self.step,
            "seconds": round(result.seconds, 1),
            "last_loss": result.losses[-1][1] if result.losses else None,
            "stopped_early": result.stopped_early,
            "metrics": result.metrics,
        }
        (final / "training.json").write_text(json.dumps(summary, indent=2) + "\n")

    def _evaluate(self, writer: Any) -> dict[str, Any]:
        """Score the model on each validation source; append to ``eval.csv``, return the metrics."""
        from mtrs_geo.model_api import ModelInfo
        from mtrs_geo.models.evaluate import evaluate_model
        from mtrs_geo.models.torch_inference import MTRefSegChangeModel
        from mtrs_geo.models.training.sources import build_source

        config, network = self.config, self.network
        info = ModelInfo("mtrefseg-r1@training", "model being trained", True, 3, "-")
        wrapped = MTRefSegChangeModel(network, info)  # type: ignore[arg-type]
        wrapped.to(next(network.parameters()).device)
        metrics: dict[str, Any] = {}
        for number, source in enumerate(config.data.val):
            name = (
                source.get("name") or f"{source['type']}:{Path(str(source.get('root', ''))).name}"
            )
            if source.get("split"):
                name += f"/{source['split']}"
            dataset = build_source(source, seed=config.run.seed + number, training=False)
            metrics[name] = evaluate_model(
                wrapped,
                dataset,
                ignore_query=config.stage == 1,
                input_size=config.run.eval_input_size,
            )
            if writer is not None:
                for key in ("mIoU", "oIoU"):
                    writer.add_scalar(f"val/{name}/{key}", metrics[name][key], self.step)
        _append_eval(self.out / "eval.csv", self.step, metrics)
        return metrics


def train(
    config: TrainConfig,
    resume: Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    restart_unfinished: bool = False,
) -> TrainResult:
    """Run (or resume) one training stage; return what it reached (see :class:`Trainer`)."""
    return Trainer(config, resume, progress, stop_after, restart_unfinished).run()


def _append_log(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file()
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _append_eval(path: Path, step: int, metrics: dict[str, Any]) -> None:
    new = not path.is_file()
    with path.open("a", newline="", encoding="utf-8") as handle:
        fields = ["step", "source", "mIoU", "oIoU", "Pr@50", "Pr@70", "Pr@90", "samples"]
        csv_writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        if new:
            csv_writer.writeheader()
        for name, m in metrics.items():
            csv_writer.writerow({"step": step, "source": name, **m})
