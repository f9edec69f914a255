"""The base of torch models: numpy batches in and out, tensors on the model's device inside.

A subclass implements :meth:`TorchChangeModel.predict_tensors` (and, if it needs scene statistics,
:meth:`TorchChangeModel.calibrate_tensors`) on float32 tensors already on its device; this base
moves each batch there (pinned, non-blocking, channels-last on CUDA), runs it under inference mode
and autocast (bf16 where the GPU supports it, else fp16; fp32 on the CPU) and hands the
probabilities back as a numpy array.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from mtrs_geo.device import autocast_context, compute_threads, select_device, to_device
from mtrs_geo.model_api import ChangeModel


class TorchChangeModel(ChangeModel):
    """A :class:`~mtrs_geo.model_api.ChangeModel` whose maths runs in torch, on any device."""

    torch_device: torch.device = torch.device("cpu")

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
        """On the CPU, leave one core to the tile reader while the run predicts."""
        with compute_threads(self.torch_device):
            yield

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
