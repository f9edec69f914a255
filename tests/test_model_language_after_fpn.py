"""MTRefSeg-R1 with the words gating the FPN's outputs (``language_after_fpn``): the FPN runs once
per pair, several queries give one forward pass each's numbers, new gates start shut, and the
checkpoints shipped before the option load as they did."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mtrs_geo.models import inference, onnx_runtime
from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1
from mtrs_geo.models.network import MTRefSegR1Network
from mtrs_geo.models.onnx_export import export_graphs

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _after_fpn(seed: int = 0) -> MTRefSegR1:
    torch.manual_seed(seed)
    return MTRefSegR1(MTRefSegR1Config.from_size("tiny", language_after_fpn=True)).eval()


def _open_gates(model: MTRefSegR1, seed: int = 1) -> None:
    """Give the shut gates weights, as training would (else every gate passes its input on)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in model.memory_word:
            last = gate.gate[2]
            last.weight.copy_(torch.randn(last.weight.shape, generator=gen) * 0.2)


def _tiles() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return torch.rand(2, 3, 64, 96, generator=gen), torch.rand(2, 3, 64, 96, generator=gen)


def test_the_new_gates_start_shut_and_sit_on_the_fpn_memory() -> None:
    model = _after_fpn()
    assert len(model.memory_word) == 3 and not hasattr(model, "pixel_word")  # strides 8-32
    before, after = _tiles()
    with torch.inference_mode():
        features = model.encode_pair(before, after)
        words, mask, _ = model.text(
            model.encode_text(["new buildings"]).expand(2),
            features.before_coarse,
            features.after_coarse,
        )
        strides = [64 // f.shape[-2] for f in features.fused]
        assert strides == [4, 8, 16, 32]
        for gate, level in zip(model.memory_word, features.fused[1:], strict=True):
            assert torch.equal(gate(level, words, mask), level)


def test_several_queries_give_one_forward_pass_each() -> None:
    model = _after_fpn()
    _open_gates(model)
    before, after = _tiles()
    queries = ["new buildings", "demolished roads", ""]
    with torch.inference_mode():
        together = model.decode(
            model.encode_pair(before, after), model.encode_text(queries)
        ).probabilities()
        alone = [model(before, after, texts=[q]).probabilities() for q in queries]
    torch.testing.assert_close(together, torch.cat(alone), rtol=0, atol=1e-6)
    assert not torch.allclose(alone[0], alone[1])  # the words reach the answer


def test_it_saves_and_loads_without_transformers(tmp_path: Path) -> None:
    model = _after_fpn()
    _open_gates(model)
    model.save_pretrained(tmp_path / "ckpt")
    network = MTRefSegR1Network.from_pretrained(tmp_path / "ckpt")
    assert network is not None and network.config.language_after_fpn
    before, after = _tiles()
    with torch.inference_mode():
        expected = model(before, after, texts=["new buildings"]).probabilities()
        got = network.fuse_for_inference()(before, after, texts=["new buildings"]).probabilities()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_a_config_from_before_the_option_loads_fast_with_the_gates_before_the_fpn(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    MTRefSegR1(MTRefSegR1Config.from_size("tiny")).save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    config = json.loads(config_file.read_text())
    del config["language_after_fpn"]  # as in the checkpoints shipped before it
    config_file.write_text(json.dumps(config))
    network = MTRefSegR1Network.from_pretrained(tmp_path / "old")
    assert network is not None and not network.config.language_after_fpn
    assert len(network.pixel_word) == 4


def test_its_graphs_give_the_networks_probabilities(tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    model = _after_fpn()
    _open_gates(model)
    model.save_pretrained(folder)
    export_graphs(folder, folder / onnx_runtime.SUBFOLDER)
    in_torch = inference.load_checkpoint(folder, cache_dir=tmp_path)
    in_onnx = inference.load_checkpoint(folder, cache_dir=tmp_path, device="cpu")
    rng = np.random.default_rng(0)
    before = rng.random((2, 3, 40, 72), dtype=np.float32)
    after = before.copy()
    after[:, :, 10:20, 24:] = 1.0 - after[:, :, 10:20, 24:]
    queries = ["new buildings", "demolished roads", "any change"]
    in_torch.prepare_queries(queries)  # type: ignore[attr-defined]
    in_onnx.prepare_queries(queries)  # type: ignore[attr-defined]
    expected = in_torch.predict_queries(before, after)  # type: ignore[attr-defined]
    got = in_onnx.predict_queries(before, after)  # type: ignore[attr-defined]
    assert got.shape == expected.shape == (3, 2, 40, 72)
    np.testing.assert_allclose(got, expected, atol=2e-5)


@pytest.mark.parametrize("device", ["cpu", None])  # ONNX Runtime, torch
def test_both_ways_in_one_pass_answers_as_two_one_way_passes(
    tmp_path: Path, device: str | None
) -> None:
    folder = tmp_path / "tiny"
    model = _after_fpn()
    _open_gates(model)
    model.save_pretrained(folder)
    export_graphs(folder, folder / onnx_runtime.SUBFOLDER)
    loaded = inference.load_checkpoint(folder, cache_dir=tmp_path, device=device)
    rng = np.random.default_rng(1)
    before = rng.random((2, 3, 40, 72), dtype=np.float32)
    after = before.copy()
    after[:, :, 8:30, :40] = 1.0 - after[:, :, 8:30, :40]
    forward, backward = ["new buildings", "any change"], ["removed buildings"]
    loaded.prepare_queries(forward)  # type: ignore[attr-defined]
    expected_forward = loaded.predict_queries(before, after)  # type: ignore[attr-defined]
    loaded.prepare_queries(backward)  # type: ignore[attr-defined]
    expected_backward = loaded.predict_queries(after, before)  # type: ignore[attr-defined]
    loaded.prepare_both_ways(forward, backward)  # type: ignore[attr-defined]
    got_forward, asked, got_backward = loaded.predict_both_ways(before, after)  # type: ignore[attr-defined]
    assert asked.all() and got_forward.shape == (2, 2, 40, 72)
    np.testing.assert_allclose(got_forward, expected_forward, atol=2e-5)
    np.testing.assert_allclose(got_backward, expected_backward, atol=2e-5)


def test_a_checkpoint_gated_before_the_fpn_starts_the_new_design_with_its_weights(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    old = MTRefSegR1(MTRefSegR1Config.from_size("tiny"))
    old.save_pretrained(tmp_path / "old")
    new = MTRefSegR1.from_pretrained(tmp_path / "old", language_after_fpn=True)
    kept = {k: v for k, v in old.state_dict().items() if not k.startswith("pixel_word.")}
    state = new.state_dict()
    assert kept.keys() == {k for k in state if not k.startswith("memory_word.")}
    assert all(torch.equal(state[k], v) for k, v in kept.items())
    assert all(not gate.gate[2].weight.any() for gate in new.memory_word)  # shut


def test_words_on_the_mask_features_start_as_the_identity_and_then_reach_the_answer(
    tmp_path: Path,
) -> None:
    student = _after_fpn()
    _open_gates(student)
    student.save_pretrained(tmp_path / "student")
    widened = MTRefSegR1.from_pretrained(tmp_path / "student", mask_word_width=8).eval()
    assert widened.mask_word.attention.query.out_channels == 8
    before, after = _tiles()
    with torch.inference_mode():
        expected = student(before, after, texts=["new buildings"]).probabilities()
        torch.testing.assert_close(
            widened(before, after, texts=["new buildings"]).probabilities(), expected
        )
        with torch.no_grad():
            widened.mask_word.up.weight.normal_(0, 0.5)
        changed = widened(before, after, texts=["new buildings"]).probabilities()
    assert not torch.allclose(changed, expected, atol=1e-4)


def test_words_on_the_mask_features_need_the_fpn_before_the_words() -> None:
    with pytest.raises(ValueError, match="mask_word_width needs language_after_fpn"):
        MTRefSegR1Config.from_size("tiny", mask_word_width=8)


def test_graphs_with_words_on_the_mask_features_give_the_networks_probabilities(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "tiny"
    torch.manual_seed(3)
    config = MTRefSegR1Config.from_size("tiny", language_after_fpn=True, mask_word_width=8)
    model = MTRefSegR1(config).eval()
    _open_gates(model)
    with torch.no_grad():
        model.mask_word.up.weight.normal_(0, 0.5)
    model.save_pretrained(folder)
    network = MTRefSegR1Network.from_pretrained(folder)
    assert network is not None and network.config.mask_word_width == 8
    export_graphs(folder, folder / onnx_runtime.SUBFOLDER)
    in_torch = inference.load_checkpoint(folder, cache_dir=tmp_path)
    in_onnx = inference.load_checkpoint(folder, cache_dir=tmp_path, device="cpu")
    rng = np.random.default_rng(4)
    before = rng.random((2, 3, 40, 72), dtype=np.float32)
    after = before.copy()
    after[:, :, 10:20, 24:] = 1.0 - after[:, :, 10:20, 24:]
    queries = ["new buildings", "demolished roads", "any change"]
    in_torch.prepare_queries(queries)  # type: ignore[attr-defined]
    in_onnx.prepare_queries(queries)  # type: ignore[attr-defined]
    expected = in_torch.predict_queries(before, after)  # type: ignore[attr-defined]
    got = in_onnx.predict_queries(before, after)  # type: ignore[attr-defined]
    np.testing.assert_allclose(got, expected, atol=2e-5)
