import pytest
import torch

from mtrs_geo import device as device_module
from mtrs_geo.device import (
    ThreadTuner,
    autocast_context,
    autocast_dtype,
    select_device,
    to_device,
)
from mtrs_geo.errors import InputError


@pytest.fixture
def no_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "_mps_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(device_module, "_mps_available", lambda: True)


@pytest.mark.usefixtures("no_accelerator")
def test_auto_falls_back_to_the_cpu() -> None:
    assert select_device("auto") == torch.device("cpu")
    assert select_device("CPU") == torch.device("cpu")


@pytest.mark.usefixtures("no_accelerator")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "mps"])
def test_asking_for_an_absent_accelerator_is_an_input_error(name: str) -> None:
    with pytest.raises(InputError, match=f"device '{name}' was asked for but"):
        select_device(name)


@pytest.mark.usefixtures("two_gpus")
def test_auto_prefers_cuda_over_mps_and_indexes_are_checked() -> None:
    assert select_device("auto") == torch.device("cuda", 0)
    assert select_device("cuda:1") == torch.device("cuda", 1)
    assert select_device("mps") == torch.device("mps")
    with pytest.raises(InputError, match="has 2 CUDA GPU"):
        select_device("cuda:2")


def test_auto_picks_mps_when_there_is_no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "_mps_available", lambda: True)
    assert select_device("auto") == torch.device("mps")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "tpu", ""])
def test_unknown_device_names_are_input_errors(name: str) -> None:
    with pytest.raises(InputError, match="unknown device"):
        select_device(name)


def test_autocast_is_bf16_on_cuda_when_supported_else_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert autocast_dtype(torch.device("cuda", 0)) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert autocast_dtype(torch.device("cuda", 0)) == torch.float16
    assert autocast_dtype(torch.device("cpu")) is None


def test_autocast_is_a_no_op_on_the_cpu() -> None:
    with autocast_context(torch.device("cpu")):
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.float32
    batch = torch.zeros(1, 3, 4, 4)
    assert to_device(batch, torch.device("cpu")).device.type == "cpu"


def test_the_thread_tuner_keeps_the_faster_count_after_a_warm_up_call() -> None:
    tuner = ThreadTuner((2, 1), reprobe_every=4, first_probe=4)
    seconds = {2: 0.5, 1: 0.2}  # a busy machine: one thread is faster
    first = tuner.next_threads()
    tuner.record(first, 30.0, 1)  # the warm-up call is not counted
    order = [first]
    for _ in range(17):
        threads = tuner.next_threads()
        order.append(threads)
        tuner.record(threads, seconds[threads] * 2, 2)
    # warm-up, the guess for first_probe timed calls, then the other one once: it is faster,
    # and the slower one is timed again reprobe_every x 2.5 (its slowdown) calls later
    assert order == [2] * 5 + [1] * 11 + [2, 1]
    assert tuner.best == 1 and tuner.cost == {2: 0.5, 1: 0.2}


def test_probes_of_a_slower_count_are_rare() -> None:
    tuner = ThreadTuner((2, 1))
    order = []
    for _ in range(200):  # the guess was right: one thread takes twice as long
        threads = tuner.next_threads()
        order.append(threads)
        tuner.record(threads, {2: 0.2, 1: 0.4}[threads], 1)
    # warm-up, then the 5th call (after first_probe timed calls), then every 32 x 2 calls
    assert [index for index, threads in enumerate(order) if threads == 1] == [5, 70, 135]


def test_the_thread_tuner_follows_a_change_of_load() -> None:
    tuner = ThreadTuner((2, 1), reprobe_every=2, first_probe=2)
    tuner.record(tuner.next_threads(), 1.0, 1)
    for _ in range(3):
        threads = tuner.next_threads()
        tuner.record(threads, {2: 0.2, 1: 0.4}[threads], 1)
    assert tuner.best == 2 and set(tuner.cost) == {1, 2}
    for _ in range(12):  # the machine got busy: two threads now take 1 s a tile
        threads = tuner.next_threads()
        tuner.record(threads, {2: 1.0, 1: 0.4}[threads], 1)
    assert tuner.best == 1


def test_tuned_threads_offer_all_threads_and_one_fewer_and_restore(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        monkeypatch.setattr(device_module, "_cores_busy", lambda: False)
        with device_module.tuned_threads(torch.device("cpu")) as tuner:
            assert tuner is not None and tuner.candidates == (4, 3)
            torch.set_num_threads(3)
        assert torch.get_num_threads() == 4
        # other work keeps the cores busy: one fewer is tried first
        monkeypatch.setattr(device_module, "_cores_busy", lambda: True)
        with device_module.tuned_threads(torch.device("cpu")) as tuner:
            assert tuner is not None and tuner.candidates == (3, 4)
        torch.set_num_threads(1)
        with device_module.tuned_threads(torch.device("cpu")) as tuner:
            assert tuner is not None and tuner.candidates == (1,)
            assert [tuner.next_threads() for _ in range(3)] == [1, 1, 1]
        with device_module.tuned_threads(torch.device("cuda")) as tuner:
            assert tuner is None
    finally:
        torch.set_num_threads(previous)
