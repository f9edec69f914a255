import numpy as np
import pytest
import torch

from mtrs_geo.model_api import ModelInfo
from mtrs_geo.torch_model import TorchChangeModel


class Doubling(TorchChangeModel):
    """Probability = 2 x the first band of the change, clamped; remembers what it was handed."""

    info = ModelInfo("doubling", "test model", False, None, "-")

    def __init__(self) -> None:
        self.seen: list[tuple[torch.device, torch.dtype, bool]] = []
        self.moved_to: torch.device | None = None

    def move_to(self, device: torch.device) -> None:
        self.moved_to = device

    def calibrate_tensors(
        self, before: torch.Tensor, after: torch.Tensor, valid: torch.Tensor
    ) -> None:
        self.seen.append((valid.device, valid.dtype, torch.is_inference_mode_enabled()))

    def predict_tensors(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        self.seen.append((before.device, before.dtype, torch.is_inference_mode_enabled()))
        return ((after - before)[:, 0] * 2).clamp(0, 1)


def test_numpy_batches_go_in_and_come_out_around_tensor_maths() -> None:
    model = Doubling()
    model.to("cpu")
    assert model.device == "cpu" and model.moved_to == torch.device("cpu")
    before = np.zeros((2, 3, 4, 5), dtype=np.float32)
    after = np.full((2, 3, 4, 5), 0.25, dtype=np.float32)
    model.calibrate(before, after, np.ones((2, 4, 5), dtype=bool))
    probability = model.predict(before, after)
    assert isinstance(probability, np.ndarray) and probability.dtype == np.float32
    assert probability.shape == (2, 4, 5) and np.allclose(probability, 0.5)
    assert model.seen == [
        (torch.device("cpu"), torch.bool, True),
        (torch.device("cpu"), torch.float32, True),
    ]


def test_the_session_times_all_threads_and_one_fewer_then_restores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mtrs_geo import device as device_module

    monkeypatch.setattr(device_module, "_cores_busy", lambda: False)
    init = device_module.ThreadTuner.__init__

    def tuner_every_call(self: device_module.ThreadTuner, candidates: tuple[int, ...]) -> None:
        init(self, candidates, first_probe=1)  # the other count is timed at the 2nd call

    previous = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        model = Doubling().to("cpu")
        model.cpu_call_pixels = 4 * 5  # one 4 x 5 tile pair per call
        monkeypatch.setattr(device_module.ThreadTuner, "__init__", tuner_every_call)
        threads_seen = []
        tensors = model.predict_tensors

        def spy(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
            threads_seen.append(torch.get_num_threads())
            return tensors(before, after)

        model.predict_tensors = spy  # type: ignore[method-assign]
        before = np.zeros((4, 3, 4, 5), dtype=np.float32)
        with model.session():
            model.predict(before, before + 0.25)
            assert model._tuner is not None and set(model._tuner.cost) == {4, 3}
        assert threads_seen[:3] == [4, 4, 3] and len(threads_seen) == 4
        assert torch.get_num_threads() == 4 and model._tuner is None
    finally:
        torch.set_num_threads(previous)


def test_on_the_cpu_a_batch_is_cut_into_calls_of_the_model_s_size() -> None:
    model = Doubling().to("cpu")
    gen = np.random.default_rng(0)
    before = gen.random((5, 3, 4, 5), dtype=np.float32)
    after = gen.random((5, 3, 4, 5), dtype=np.float32)
    whole = model.predict(before, after)
    model.cpu_call_pixels = 2 * 4 * 5  # two pairs per call: 2 + 2 + 1
    assert model.call_size(4, 5) == 2 and model.call_size(40, 50) == 1
    model.seen.clear()
    np.testing.assert_array_equal(model.predict(before, after), whole)
    assert len(model.seen) == 3


def test_a_model_without_calibration_gets_no_samples_moved() -> None:
    class Plain(TorchChangeModel):
        info = ModelInfo("plain", "test model", False, None, "-")

        def predict_tensors(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
            return (after - before)[:, 0]

    model = Plain().to("cpu")
    sentinel = np.zeros((1, 3, 2, 2), dtype=np.float32)
    # Arrays that could not even become tensors: calibrate must not touch them.
    model.calibrate(sentinel, sentinel, np.array([[["not", "bool"]]], dtype=object))
    assert model.predict(sentinel, sentinel + 1).tolist() == [[[1.0, 1.0], [1.0, 1.0]]]
