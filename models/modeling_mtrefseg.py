"""MTRefSeg-R1: segment the change between two dates that a text query refers to.

Data flow for a batch of tile pairs ``(B, C, H, W)`` (percentile-stretched to [0, 1] by the engine):

1. ImageNet mean/std, pad to a multiple of 32 (mirrored, :mod:`mtrs_geo.padding`), one shared
   backbone over both dates -> four levels (strides 4, 8, 16, 32);
2. a bi-temporal fusion block per level (signed difference by default; optional cross-temporal
   attention for imperfect co-registration);
3. the language branch: words and a query from the sentence encoder (or the LLM's ``[SEG]`` token);
   pixel-word attention gates the change features at every level;
4. an FPN pixel decoder and a Mask2Former-style query decoder: a mask per decoder layer (deep
   supervision) and a "target present" logit that gates the mask: an absent target gives an empty
   mask.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from mtrs_geo.models.backbones import STRIDES, build_backbone
from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
from mtrs_geo.models.decoder import MaskDecoder, PixelDecoder
from mtrs_geo.models.fusion import BiTemporalFusion, CrossTemporalAttention
from mtrs_geo.models.losses import referring_change_loss
from mtrs_geo.models.text import PixelWordAttention, TextBranch, TextEmbeds
from mtrs_geo.padding import pad_tile

MIN_SIZE = 32
PAD_MULTIPLE = STRIDES[-1]


def gated_probabilities(logits: torch.Tensor, presence_logits: torch.Tensor) -> torch.Tensor:
    """Change probability ``(B, H, W)``: ``sigmoid(mask) * sigmoid(present)``."""
    return logits.float().sigmoid() * presence_logits.float().sigmoid()[:, None, None]


@dataclass
class MTRefSegR1Output(ModelOutput):
    """Output of :class:`MTRefSegR1`.

    Attributes:
        loss: total loss (when ``labels`` were given).
        logits: ``(B, H, W)`` final mask logits at input resolution (not gated by presence).
        presence_logits: ``(B,)`` "the referred change exists in this pair" logits.
        aux_logits: intermediate mask logits ``(B, H, W)`` of the earlier decoder layers
            (training or when ``labels`` were given; ``None`` at plain inference).
        mask_loss: final mask BCE + dice (detached), when ``labels`` were given.
        aux_loss: summed intermediate mask losses (detached).
        presence_loss: presence BCE (detached).

    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    presence_logits: torch.Tensor | None = None
    aux_logits: tuple[torch.Tensor, ...] | None = None
    mask_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    presence_loss: torch.Tensor | None = None

    def probabilities(self) -> torch.Tensor:
        """Return the gated change probability ``(B, H, W)`` (what the engine stitches)."""
        assert self.logits is not None and self.presence_logits is not None
        return gated_probabilities(self.logits, self.presence_logits)


@dataclass
class PairFeatures:
    """The query-independent features of a batch of tile pairs (:meth:`MTRefSegR1.encode_pair`).

    Attributes:
        fused: the fused change features of the four levels, ``(B, C_l, H_l, W_l)``.
        before_coarse: the coarsest projected before features (the LLM's image tokens).
        after_coarse: the coarsest projected after features.
        size: ``(H, W)`` of the input tiles, pixels.
        pad: ``(pad_h, pad_w)`` mirror padding added to reach a multiple of 32, pixels.

    """

    fused: tuple[torch.Tensor, ...]
    before_coarse: torch.Tensor
    after_coarse: torch.Tensor
    size: tuple[int, int]
    pad: tuple[int, int]

    @property
    def batch(self) -> int:
        """Number of tile pairs."""
        return int(self.fused[0].shape[0])

    def repeat(self, count: int) -> PairFeatures:
        """Return the features of every pair ``count`` times over, query-major (``q * B + b``)."""

        def tile(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.repeat(count, *([1] * (tensor.ndim - 1)))

        return replace(
            self,
            fused=tuple(tile(f) for f in self.fused),
            before_coarse=tile(self.before_coarse),
            after_coarse=tile(self.after_coarse),
        )


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
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
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


class MTRefSegR1(MTRefSegR1PreTrainedModel):
    """The change-aware referring segmentation network (see the module docstring for the data flow).

    A freshly built model starts its backbone from the configured pretrained weights (ImageNet
    EfficientNet-Lite0 for ``base``); ``from_pretrained`` takes every weight from the checkpoint.
    """

    def __init__(self, config: MTRefSegR1Config) -> None:
        super().__init__(config)
        self.backbone = build_backbone(config)
        channels = list(self.backbone.channels)
        dims = config.fusion_dims
        self.fusions = nn.ModuleList(
            BiTemporalFusion(
                channels[level],
                dims[level],
                config.fusion_type,
                config.cross_temporal_window if level in config.cross_temporal_levels else None,
            )
            for level in range(4)
        )
        self.text = TextBranch(config, config.hidden_size, dims[3])
        self.pixel_word = nn.ModuleList(PixelWordAttention(d, config.hidden_size) for d in dims)
        self.pixel_decoder = PixelDecoder(dims, config.hidden_size)
        self.decoder = MaskDecoder(
            config.hidden_size,
            config.num_attention_heads,
            config.num_decoder_layers,
            config.num_latent_queries,
            config.decoder_ffn_dim,
            config.dropout,
        )
        self.post_init()
        if not any(p.is_meta for p in self.parameters()):
            self.load_pretrained_parts()

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """Load a checkpoint folder (``from_pretrained``); frozen parts stay frozen."""
        model = super().from_pretrained(*args, **kwargs)
        model.text.freeze_encoder()
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

    def fuse_for_inference(self) -> MTRefSegR1:
        """Fold the backbone's BatchNorms into its convs (faster inference; no training after)."""
        fuse = getattr(self.backbone, "fuse_for_inference", None)
        if fuse is not None:
            fuse()
        return self.eval()

    def encode_text(self, texts: list[str]) -> TextEmbeds:
        """Encode queries once (``""`` = any change); pass the result as ``text_embeds``."""
        return self.text.encode(list(texts), self.device)

    def forward(
        self,
        image_a: torch.Tensor,
        image_b: torch.Tensor,
        texts: list[str] | None = None,
        text_embeds: TextEmbeds | None = None,
        labels: torch.Tensor | None = None,
        target_present: torch.Tensor | None = None,
    ) -> MTRefSegR1Output:
        """Predict the mask of the change ``texts`` refer to, from ``image_a`` to ``image_b``.

        Args:
            image_a: before tiles ``(B, C, H, W)``, float, percentile-stretched to [0, 1];
                H, W >= 32.
            image_b: after tiles, same shape.
            texts: one query per pair (or one for all); ``None`` and ``""`` mean "any change".
            text_embeds: precomputed :meth:`encode_text` output (takes precedence over ``texts``).
            labels: ``(B, H, W)`` 0/1 masks of the referred change; the loss is computed when given.
            target_present: ``(B,)`` 0/1 (default: the label mask is not empty).

        """
        self._check_images(image_a, image_b)
        batch = image_a.shape[0]
        device = image_a.device
        if text_embeds is None:
            if texts is None:
                text_embeds = self.text.any_change_embeds(batch, device)
            else:
                text_embeds = self.encode_text(texts)
        text_embeds = text_embeds.to(device).expand(batch)
        features = self.encode_pair(image_a, image_b)
        want_aux = self.training or labels is not None
        logits, aux, presence = self._decode(features, text_embeds, want_aux)
        height, width = features.size
        output = MTRefSegR1Output(
            logits=logits, presence_logits=presence, aux_logits=aux if want_aux else None
        )
        if labels is not None:
            if labels.shape != (batch, height, width):
                raise ValueError(
                    f"labels must be {(batch, height, width)}, got {tuple(labels.shape)}"
                )
            cfg = self.config
            loss, parts = referring_change_loss(
                logits,
                list(aux),
                presence,
                labels.to(device),
                target_present,
                bce_weight=cfg.bce_weight,
                dice_weight=cfg.dice_weight,
                presence_weight=cfg.presence_weight,
                aux_weight=cfg.aux_weight,
            )
            output.loss = loss
            output.mask_loss, output.aux_loss = parts["mask"], parts["aux"]
            output.presence_loss = parts["presence"]
        return output

    def encode_pair(self, image_a: torch.Tensor, image_b: torch.Tensor) -> PairFeatures:
        """Run the query-independent part once: backbone over both dates and bi-temporal fusion.

        Args:
            image_a: before tiles ``(B, C, H, W)``, float, percentile-stretched to [0, 1].
            image_b: after tiles, same shape.

        Returns:
            The fused features that :meth:`decode` turns into a mask per query.

        """
        self._check_images(image_a, image_b)
        batch, _, height, width = image_a.shape
        pad_h, pad_w = (-height) % PAD_MULTIPLE, (-width) % PAD_MULTIPLE
        both = self._normalize(torch.cat([image_a, image_b], 0))
        both = pad_tile(both, height + pad_h, width + pad_w)
        levels = self.backbone(both)

        fused, before_coarse, after_coarse = [], None, None
        for fusion, feature in zip(self.fusions, levels, strict=True):
            out, f1, f2 = fusion(feature[:batch], feature[batch:])
            fused.append(out)
            before_coarse, after_coarse = f1, f2
        assert before_coarse is not None and after_coarse is not None
        return PairFeatures(
            tuple(fused), before_coarse, after_coarse, (height, width), (pad_h, pad_w)
        )

    def decode(self, features: PairFeatures, text_embeds: TextEmbeds) -> MTRefSegR1Output:
        """Run the language-dependent part: every query of ``text_embeds`` over every pair.

        Args:
            features: :meth:`encode_pair` output for ``B`` tile pairs.
            text_embeds: :meth:`encode_text` output for ``Q`` queries (``Q = 1``: one query).

        Returns:
            Logits ``(Q * B, H, W)`` and presence logits ``(Q * B,)``, query-major (query ``q`` of
            pair ``b`` at ``q * B + b``): the same numbers as one :meth:`forward` call per query.

        """
        batch = features.batch
        device = features.fused[0].device
        text_embeds = text_embeds.to(device)
        count = len(text_embeds)
        if count > 1:
            features = features.repeat(count)
            index = torch.arange(count, device=device).repeat_interleave(batch)
            text_embeds = text_embeds.select(index)
        text_embeds = text_embeds.expand(features.batch)
        logits, _, presence = self._decode(features, text_embeds, want_aux=False)
        return MTRefSegR1Output(logits=logits, presence_logits=presence)

    def _decode(
        self, features: PairFeatures, text_embeds: TextEmbeds, want_aux: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
        """Text branch, pixel-word attention and decoders: ``(logits, aux logits, presence)``."""
        words, word_mask, query = self.text(
            text_embeds, features.before_coarse, features.after_coarse
        )
        words = words.to(features.fused[0].dtype)
        fused = [
            pwam(f, words, word_mask)
            for pwam, f in zip(self.pixel_word, features.fused, strict=True)
        ]
        mask_features, memory = self.pixel_decoder(fused)
        predictions, presence = self.decoder(query, memory, mask_features, words, word_mask)

        (height, width), (pad_h, pad_w) = features.size, features.pad
        padded = (height + pad_h, width + pad_w)
        upsampled = [
            F.interpolate(p[:, None], padded, mode="bilinear", align_corners=False)[
                :, 0, :height, :width
            ]
            for p in (predictions if want_aux else predictions[-1:])
        ]
        return upsampled[-1], tuple(upsampled[:-1]), presence

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.config.image_mean, device=images.device, dtype=images.dtype)
        std = torch.tensor(self.config.image_std, device=images.device, dtype=images.dtype)
        return (images - mean[:, None, None]) / std[:, None, None]

    def _check_images(self, image_a: torch.Tensor, image_b: torch.Tensor) -> None:
        if image_a.shape != image_b.shape or image_a.ndim != 4:
            raise ValueError(
                f"both dates must be (B, C, H, W) of one shape, got {tuple(image_a.shape)} "
                f"and {tuple(image_b.shape)}"
            )
        if image_a.shape[1] != self.config.in_channels:
            raise ValueError(
                f"the model takes {self.config.in_channels} bands, "
                f"the images have {image_a.shape[1]}"
            )
        if min(image_a.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"tiles must be at least {MIN_SIZE}x{MIN_SIZE} pixels")
