"""MTRefSeg-R1: segment the change between two dates that a text query refers to.

The layers and the forward pass live in :mod:`mtrs_geo.models.network` (no ``transformers``
import there, so the engine runs a checkpoint without it); this module makes them a
``transformers`` model that trains, saves and loads checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
from mtrs_geo.models.decoder import MaskDecoder
from mtrs_geo.models.fusion import CrossTemporalAttention
from mtrs_geo.models.loading import own_weights
from mtrs_geo.models.network import (
    MIN_SIZE,
    PAD_MULTIPLE,
    MTRefSegR1Layers,
    MTRefSegR1Output,
    PairFeatures,
    gated_probabilities,
)
from mtrs_geo.models.text import TextBranch

__all__ = [
    "MIN_SIZE",
    "PAD_MULTIPLE",
    "MTRefSegR1",
    "MTRefSegR1Output",
    "MTRefSegR1PreTrainedModel",
    "PairFeatures",
    "gated_probabilities",
]


class MTRefSegR1PreTrainedModel(PreTrainedModel):
    """Weight initialization and checkpoint plumbing shared by the MTRefSeg-R1 models."""

    config_class = MTRefSegR1Config
    config: MTRefSegR1Config
    base_model_prefix = "mtrefseg"
    main_input_name = "image_a"
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialize: Kaiming convs, truncated-normal linears, unit norms, learned tokens."""
        if isinstance(module, nn.Conv2d) and getattr(module, "zero_init", False):
            init.zeros_(module.weight)  # a gate that starts shut (PixelWordAttention)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d)):
            if module.weight is not None:
                init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None:
                assert module.running_var is not None
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
        elif isinstance(module, nn.MultiheadAttention):
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
            init.zeros_(module.out_proj.bias)
        if isinstance(module, (CrossTemporalAttention, TextBranch, MaskDecoder)):
            module.reset_parameters()


class MTRefSegR1(MTRefSegR1Layers, MTRefSegR1PreTrainedModel):
    """The change-aware referring segmentation network (see the module docstring for the data flow).

    The layers and forward pass are :class:`~mtrs_geo.models.network.MTRefSegR1Layers`'.

    A freshly built model starts its backbone from the configured pretrained weights (ImageNet
    EfficientNet-Lite0 for ``base``); ``from_pretrained`` takes every weight from the checkpoint.
    """

    text: TextBranch
    backbone: Any

    def __init__(self, config: MTRefSegR1Config) -> None:
        super().__init__(config)
        MTRefSegR1Layers.build_layers(self, config)
        self.post_init()
        if not any(p.is_meta for p in self.parameters()):
            self.load_pretrained_parts()

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """Load a checkpoint folder (``from_pretrained``); frozen parts stay frozen.

        The weights are copied out of the file's memory map (:func:`~mtrs_geo.models.loading.
        own_weights`): the folder may be written again while the model runs.
        """
        model: MTRefSegR1 = super().from_pretrained(*args, **kwargs)
        model.text.freeze_encoder()
        own_weights(model)
        return model

    def load_pretrained_parts(self) -> None:
        """Copy the configured pretrained weights into the backbone (and a trainable text model).

        Runs when a model is built from a config; ``from_pretrained`` skips it (the checkpoint
        has them).
        """
        config = self.config
        if config.backbone_type == "hf" or (
            config.backbone_type == "efficientnet-lite0" and config.backbone_pretrained
        ):
            self.backbone.load_pretrained()
        self.text.load_pretrained()
