"""The base of torch models: numpy batches in and out, tensors on the model's device inside.

A subclass implements :meth:`TorchChangeModel.predict_tensors` (and, if it needs scene statistics,
:meth:`TorchChangeModel.calibrate_tensors`) on float32 tensors already on its device; this base
moves each batch there (pinned, non-blocking, channels-last on CUDA), runs it under inference mode
and autocast (bf16 where the GPU supports it, else fp16; fp32 on the CPU) and hands the
probabilities back as a numpy array.

On the CPU a batch is cut into calls of about :attr:`TorchChangeModel.cpu_call_pixels` pixels per
date (a 512 px tile pair at a time is faster than eight: the activations stay in the caches, and
memory follows one call, not the engine's batch), and while a run predicts
(:meth:`TorchChangeModel.session`) a :class:`~mtrs_geo.device.ThreadTuner` keeps the faster of
all of torch's threads and one fewer.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import numpy as np
import torch

from mtrs_geo.device import ThreadTuner, autocast_context, select_device, to_device, tuned_threads
from mtrs_geo.model_api import ChangeModel

T = TypeVar("T")


class TorchChangeModel(ChangeModel):
    """A :class:`~mtrs_geo.model_api.ChangeModel` whose maths runs in torch, on any device."""

    torch_device: torch.device = torch.device("cpu")
    # On the CPU a call holds at most this many pixels per date (at least one tile); None: the
    # engine's whole batch in one call.
    cpu_call_pixels: int | None = None
    _tuner: ThreadTuner | None = None

    def to(self, device: str | torch.device) -> TorchChangeModel:
        """Resolve ``device`` (``auto`` picks CUDA, then MPS, then the CPU) and move there."""
        resolved = device if isinstance(device, torch.device) else select_device(device)
        self.torch_device = resolved
        self.device = str(resolved)
        self.move_to(resolved)
        return self

    def move_to(self, device: torch.device) -> None:  # noqa: B027 - optional hook
        """Move weights and cached tensors to ``device`` (called by :meth:`to`)."""

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """On the CPU, tune torch's thread count while the run predicts (restored at the end)."""
        with tuned_threads(self.torch_device) as tuner:
            self._tuner = tuner
            try:
                yield
            finally:
                self._tuner = None

    def call_size(self, height: int, width: int) -> int | None:
        """Tile pairs per call on this device for ``height`` x ``width`` tiles (None: any)."""
        if self.torch_device.type != "cpu" or self.cpu_call_pixels is None:
            return None
        return max(1, self.cpu_call_pixels // max(1, height * width))

    def run_calls(
        self,
        run: Callable[[np.ndarray, np.ndarray], T],
        before: np.ndarray,
        after: np.ndarray,
        axis: int = 0,
        join: Callable[[list[T]], T] | None = None,
    ) -> T:
        """``run`` over the batch in calls of :meth:`call_size` pairs, joined along ``axis``.

        Each call runs on the thread count the session's tuner picks, and is timed for it.
        ``join`` joins the calls' answers instead, when they are not one array.
        """
        count = before.shape[0]
        size = self.call_size(*before.shape[-2:]) or count
        answers: list[T] = []
        for start in range(0, count, size):
            part_b, part_a = before[start : start + size], after[start : start + size]
            if self._tuner is None:
                answers.append(run(part_b, part_a))
                continue
            threads = self._tuner.next_threads()
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            answers.append(run(part_b, part_a))
            self._tuner.record(threads, time.perf_counter() - t0, part_b.shape[0])
        if join is not None:
            return join(answers)
        if len(answers) == 1:
            return answers[0]
        return cast(T, np.concatenate(cast(list[np.ndarray], answers), axis=axis))

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return to_device(torch.from_numpy(np.ascontiguousarray(array)), self.torch_device)

    def calibrate(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> None:
        """Hand the scene-wide samples to :meth:`calibrate_tensors` on the model's device."""
        if type(self).calibrate_tensors is TorchChangeModel.calibrate_tensors:
            return  # the model sees no scene statistics: nothing to move to the device
        with torch.inference_mode(), autocast_context(self.torch_device):
            self.calibrate_tensors(
                self._tensor(before),
                self._tensor(after),
                torch.from_numpy(np.ascontiguousarray(valid)).to(self.torch_device),
            )

    def predict(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Run :meth:`predict_tensors` on the model's device; return float32 ``(B, H, W)``."""
        return self.run_calls(self._predict_call, before, after)

    def _predict_call(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), autocast_context(self.torch_device):
            probability = self.predict_tensors(self._tensor(before), self._tensor(after))
        return probability.float().cpu().numpy()

    def calibration(self) -> dict[str, Any] | None:
        """Return ``{}`` when the model sees no scene statistics, else the base class's answer."""
        own = type(self)
        if own.calibrate_tensors is TorchChangeModel.calibrate_tensors and not self.scene_pass:
            return {}
        return super().calibration()

    def calibrate_tensors(  # noqa: B027 - optional hook
        self, before: torch.Tensor, after: torch.Tensor, valid: torch.Tensor
    ) -> None:
        """:meth:`~mtrs_geo.model_api.ChangeModel.calibrate` on tensors on the model's device."""

    @abc.abstractmethod
    def predict_tensors(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """:meth:`~mtrs_geo.model_api.ChangeModel.predict` on tensors on the model's device."""
