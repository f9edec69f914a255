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


@contextlib.contextmanager
def compute_threads(device: torch.device) -> Iterator[None]:
    """On the CPU, leave one core to the prefetching reader thread while the model runs.

    Restores torch's previous thread count on exit. Oversubscribed cores make element-wise models
    several times slower (OpenMP threads wait on each other), which matters most on small machines.
    """
    if device.type != "cpu":
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(previous, (os.cpu_count() or 1) - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
