"""Compute device names, selection and mixed precision.

:func:`parse_device` is plain Python; the rest imports torch when called, so that the engine can
check a ``--device`` name for a numpy model without loading torch.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mtrs_geo.errors import InputError

if TYPE_CHECKING:
    import torch

_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


def parse_device(name: str) -> str:
    """Normalize a device name (``auto | cpu | cuda | cuda:N | mps``, any case).

    Raises:
        InputError: an unknown name.

    """
    name = name.strip().lower()
    if name in ("auto", "cpu", "cuda", "mps") or _CUDA_INDEX.match(name):
        return name
    raise InputError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(name: str = "auto") -> torch.device:
    """Resolve ``auto | cpu | cuda | cuda:N | mps`` to a torch device.

    ``auto`` picks CUDA, then Apple MPS, then the CPU.

    Raises:
        InputError: an unknown name, or a device that is not available on this machine.

    """
    import torch

    name = parse_device(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise InputError("device 'mps' was asked for but Apple MPS is not available here")
        return torch.device("mps")
    match = _CUDA_INDEX.match(name)
    if name == "cuda" or match:
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} was asked for but no CUDA GPU is available here")
        index = int(match.group(1)) if match else torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise InputError(
                f"device {name!r} does not exist: this machine has {count} CUDA GPU(s)"
            )
        return torch.device("cuda", index)
    raise AssertionError(f"parse_device let {name!r} through")  # pragma: no cover


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype: bf16 on CUDA if supported, else fp16; None on the CPU."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None


@contextlib.contextmanager
def autocast_context(device: torch.device) -> Iterator[None]:
    """Mixed precision for inference on accelerators; a no-op on the CPU."""
    import torch

    dtype = autocast_dtype(device)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a ``(B, C, H, W)`` batch to ``device`` (channels-last memory on CUDA, non-blocking)."""
    import torch

    if device.type == "cuda":
        return (
            batch.pin_memory()
            .to(device, non_blocking=True)
            .contiguous(memory_format=torch.channels_last)
        )
    return batch.to(device)


class ThreadTuner:
    """Keeps, while a run predicts on the CPU, the faster of a few torch thread counts.

    On an idle machine every core is fastest; on a shared one a thread that waits for a core
    stalls the others at each OpenMP barrier, and one fewer thread can be several times faster.
    The first candidate is the likely one (the caller's guess); the first call (it warms up the
    allocator and the kernels) is not counted, and the next ones time it (seconds per tile).
    After ``first_probe`` timed calls another candidate is timed once, and the cheapest is kept
    (a wrong guess costs a few calls, not the run); the next probe comes ``reprobe_every`` times
    the slowdown of the slowest candidate later, so probes cost about ``1 / reprobe_every`` of
    the time. Plain Python: the caller sets the thread count and times the call.
    """

    def __init__(
        self, candidates: tuple[int, ...], reprobe_every: int = 32, first_probe: int = 4
    ) -> None:
        self.candidates = candidates
        self.reprobe_every = reprobe_every
        self.cost: dict[int, float] = {}  # seconds per tile, smoothed
        self._warm = False
        self._calls = 0  # timed calls
        self._next_probe: float = first_probe  # at this many timed calls
        self._probing: int | None = None
        self._probes = 0

    @property
    def best(self) -> int:
        """The cheapest candidate timed so far (the first one before any is timed)."""
        if not self.cost:
            return self.candidates[0]
        return min(self.cost, key=self.cost.__getitem__)

    def next_threads(self) -> int:
        """Return the thread count for the next call."""
        if not self.cost:
            return self.candidates[0]
        if self._calls >= self._next_probe:
            others = [threads for threads in self.candidates if threads != self.best]
            pool = [threads for threads in others if threads not in self.cost] or others
            if pool:  # the untimed ones first, then each in turn
                self._probing = pool[self._probes % len(pool)]
                return self._probing
        return self.best

    def record(self, threads: int, seconds: float, tiles: int) -> None:
        """Note that a call of ``tiles`` tiles on ``threads`` threads took ``seconds``."""
        if not self._warm:
            self._warm = True
            return
        per_tile = seconds / max(tiles, 1)
        known = self.cost.get(threads)
        self.cost[threads] = per_tile if known is None else 0.5 * (known + per_tile)
        self._calls += 1
        if self._probing == threads:
            self._probing = None
            self._probes += 1
            slowdown = max(self.cost.values()) / max(min(self.cost.values()), 1e-9)
            self._next_probe = self._calls + self.reprobe_every * slowdown


@contextlib.contextmanager
def tuned_threads(device: torch.device) -> Iterator[ThreadTuner | None]:
    """On the CPU, a :class:`ThreadTuner` between torch's thread count and one fewer.

    Every thread first, or one fewer when other work already keeps every core busy (the load
    average; the tuner checks the guess as the run goes). Yields None on an accelerator
    (nothing to tune) and restores torch's thread count on exit. With one thread (a Dask worker,
    a test) there is nothing to choose: the tuner keeps it.
    """
    if device.type != "cpu":
        yield None
        return
    import torch

    previous = torch.get_num_threads()
    candidates: tuple[int, ...] = (previous,)
    if previous >= 2:
        candidates = (previous - 1, previous) if _cores_busy() else (previous, previous - 1)
    try:
        yield ThreadTuner(candidates)
    finally:
        torch.set_num_threads(previous)


def _cores_busy() -> bool:
    """Whether the 1-minute load average is at least the number of cores (False: unknown)."""
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except (OSError, AttributeError):  # no load average on this system
        return False
