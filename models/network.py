"""MTRefSeg-R1's layers and forward pass, and a loader for inference without ``transformers``.

Data flow for a batch of tile pairs ``(B, C, H, W)`` (percentile-stretched to [0, 1] by the engine):

1. ImageNet mean/std, pad to a multiple of 32 (mirrored, :mod:`mtrs_geo.padding`), one shared
   backbone over both dates -> four levels (strides 4, 8, 16, 32);
2. a bi-temporal fusion block per level (signed difference by default; optional cross-temporal
   attention for imperfect co-registration);
3. the language branch: words and a query from the sentence encoder (or the LLM's ``[SEG]`` token);
   pixel-word attention gates the change features at every level (with ``language_after_fpn``:
   the FPN's memory levels, the FPN then running in step 2, once per pair);
4. an FPN pixel decoder and a Mask2Former-style query decoder: a mask per decoder layer (deep
   supervision) and a "target present" logit that gates the mask: an absent target gives an empty
   mask.

:class:`MTRefSegR1Layers` holds the layers and the forward pass. The model that trains, saves and
loads checkpoints, :class:`~mtrs_geo.models.modeling_mtrefseg.MTRefSegR1`, is those layers in a
``transformers`` ``PreTrainedModel``; :class:`MTRefSegR1Network` is the same layers in a plain
``nn.Module`` with the same parameter names, so it takes a checkpoint's weights as they are. The
engine loads it with :func:`load_network`: importing ``transformers``' modelling code pulls in
``torch._dynamo``, ``torch.distributed.tensor`` and sympy (seconds on a small CPU), and neither that
nor its ``from_pretrained`` is needed to run a saved checkpoint. This module imports no
``transformers``; a text model (a query that must be encoded) still loads through it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Self, cast

import torch
import torch.nn.functional as F
from torch import nn

from mtrs_geo.models.backbones import STRIDES, build_backbone
from mtrs_geo.models.decoder import MaskDecoder, PixelDecoder
from mtrs_geo.models.fusion import BiTemporalFusion
from mtrs_geo.models.losses import referring_change_loss
from mtrs_geo.models.text import (
    NarrowPixelWordAttention,
    PixelWordAttention,
    TextBranch,
    TextEmbeds,
)
from mtrs_geo.padding import pad_tile

if TYPE_CHECKING:
    from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config

MODEL_TYPE = "mtrefseg-r1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# Every attribute MTRefSegR1Config sets (a saved config.json holds them all; tests check the list).
CONFIG_KEYS = (
    "size_name", "in_channels", "image_mean", "image_std", "backbone_type",
    "backbone_pretrained", "backbone_path", "backbone_config", "convnet_widths", "drop_path_rate",
    "fusion_type", "fusion_dims", "cross_temporal_levels", "cross_temporal_window", "text_mode",
    "text_model_path", "text_model_config", "text_tokenizer_path", "text_trainable",
    "text_max_length", "llm_image_grid", "hidden_size", "language_after_fpn", "mask_word_width",
    "num_decoder_layers",
    "num_attention_heads", "num_latent_queries", "decoder_ffn_dim", "dropout", "bce_weight",
    "dice_weight", "presence_weight", "aux_weight", "initializer_range",
)  # fmt: skip
# Attributes added after checkpoints were shipped: a config.json without them means these values.
CONFIG_DEFAULTS: dict[str, Any] = {"language_after_fpn": False, "mask_word_width": 0}

MIN_SIZE = 32
PAD_MULTIPLE = STRIDES[-1]


def _padded(side: int) -> int:
    """``side`` rounded up to the next multiple of :data:`PAD_MULTIPLE`."""
    return side + (-side) % PAD_MULTIPLE


def gated_probabilities(logits: torch.Tensor, presence_logits: torch.Tensor) -> torch.Tensor:
    """Change probability ``(B, H, W)``: ``sigmoid(mask) * sigmoid(present)``."""
    return logits.float().sigmoid() * presence_logits.float().sigmoid()[:, None, None]


@dataclass
class MTRefSegR1Output:
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


def gate_with_words(
    network: MTRefSegR1Layers,
    levels: list[torch.Tensor],
    words: torch.Tensor,
    word_mask: torch.Tensor,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Gate the query-free ``levels`` of :class:`PairFeatures` with the words: ``(pixels, memory)``.

    Before the FPN (the four fused levels, then the FPN) or, with ``language_after_fpn``, after it
    (``levels`` are its outputs: the memory is gated, and the mask features too where the model
    has ``mask_word_width``, else they pass as they are).
    """
    if network.config.language_after_fpn:
        pixels, *coarse = levels  # strides 4, then 8, 16, 32
        gates = network.memory_word
        gated = [pw(m, words, word_mask) for pw, m in zip(gates, coarse, strict=True)]
        if network.config.mask_word_width:
            pixels = network.mask_word(pixels, words, word_mask)
        return pixels, gated[::-1]  # the memory, coarse to fine
    fused = [pw(f, words, word_mask) for pw, f in zip(network.pixel_word, levels, strict=True)]
    return network.pixel_decoder(fused)


@dataclass
class PairFeatures:
    """The query-independent features of a batch of tile pairs (:meth:`MTRefSegR1.encode_pair`).

    Attributes:
        fused: the fused change features of the four levels, ``(B, C_l, H_l, W_l)``; for a model
            with ``language_after_fpn``, the FPN's outputs over them, at the same strides (4, 8,
            16, 32): the mask features, then the memory.
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

    def pairs(self, start: int, stop: int) -> PairFeatures:
        """Return the features of pairs ``start`` to ``stop`` (excluded)."""
        return replace(
            self,
            fused=tuple(f[start:stop] for f in self.fused),
            before_coarse=self.before_coarse[start:stop],
            after_coarse=self.after_coarse[start:stop],
        )

    def select(self, index: torch.Tensor) -> PairFeatures:
        """Return the features of the pairs at ``index`` (a 1-D integer tensor), in its order."""
        return replace(
            self,
            fused=tuple(f[index] for f in self.fused),
            before_coarse=self.before_coarse[index],
            after_coarse=self.after_coarse[index],
        )

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


class MTRefSegR1Layers(nn.Module):
    """The layers of MTRefSeg-R1 and its forward pass (see the module docstring for the data flow).

    A base of :class:`~mtrs_geo.models.modeling_mtrefseg.MTRefSegR1` (with ``transformers``) and
    of :class:`MTRefSegR1Network` (without): one set of parameter names, one forward pass.
    """

    # MTRefSegR1Config, or a namespace of its attributes (MTRefSegR1Network). Any: transformers
    # resolves these annotations when MTRefSegR1 is defined, and this module does not import it.
    config: Any
    backbone: Any  # a backbone of backbones.py: four feature maps and their ``channels``
    fusions: nn.ModuleList
    text: TextBranch
    pixel_word: nn.ModuleList  # gates before the FPN (one per fused level)
    memory_word: nn.ModuleList  # or, with ``language_after_fpn``, after it (its memory levels)
    mask_word: NarrowPixelWordAttention  # with ``mask_word_width``: on its mask features
    pixel_decoder: PixelDecoder
    decoder: MaskDecoder

    def build_layers(self, config: MTRefSegR1Config) -> None:
        """Build every layer that ``config`` describes, with initial weights."""
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
        if config.language_after_fpn:
            # The FPN's memory (strides 8, 16, 32), gates starting shut; their own names, so that
            # a checkpoint gated before the FPN hands them nothing (they start as the identity).
            self.memory_word = nn.ModuleList(
                PixelWordAttention(config.hidden_size, config.hidden_size, identity_start=True)
                for _ in range(3)
            )
            if config.mask_word_width:
                self.mask_word = NarrowPixelWordAttention(
                    config.hidden_size, config.hidden_size, config.mask_word_width
                )
        else:
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

    def fuse_for_inference(self) -> Self:
        """Fold the backbone's BatchNorms into its convs (faster inference; no training after)."""
        fuse = getattr(self.backbone, "fuse_for_inference", None)
        if fuse is not None:
            fuse()
        return self.eval()

    def encode_text(self, texts: list[str]) -> TextEmbeds:
        """Encode queries once (``""`` = any change); pass the result as ``text_embeds``."""
        return self.text.encode(list(texts), next(self.parameters()).device)

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
        batch = image_a.shape[0]
        levels = self.encode_dates(torch.cat([image_a, image_b], 0))
        return self.fuse(
            [level[:batch] for level in levels],
            [level[batch:] for level in levels],
            tuple(image_a.shape[-2:]),  # type: ignore[arg-type]
        )

    def encode_pair_both_ways(self, image_a: torch.Tensor, image_b: torch.Tensor) -> PairFeatures:
        """:meth:`encode_pair` of ``(a, b)`` and of ``(b, a)``, the backbone run once.

        Returns:
            The features of ``2 B`` pairs: the ``B`` pairs from ``a`` to ``b``, then the same
            pairs from ``b`` to ``a`` (the time-reversed pairs), as one batch.

        """
        self._check_images(image_a, image_b)
        batch = image_a.shape[0]
        levels = self.encode_dates(torch.cat([image_a, image_b], 0))
        swapped = [torch.cat([level[batch:], level[:batch]], 0) for level in levels]
        return self.fuse(levels, swapped, tuple(image_a.shape[-2:]))  # type: ignore[arg-type]

    def encode_dates(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the backbone's four levels of ``images`` ``(N, C, H, W)`` (any dates, in [0, 1]).

        The images are normalized and mirror-padded to a multiple of 32 first.
        """
        height, width = images.shape[-2:]
        padded = pad_tile(self._normalize(images), _padded(height), _padded(width))
        return list(self.backbone(padded))

    def fuse(
        self,
        before: list[torch.Tensor],
        after: list[torch.Tensor],
        size: tuple[int, int],
    ) -> PairFeatures:
        """Fuse the backbone levels of the before and the after tiles (:meth:`encode_dates`).

        Args:
            before: the four levels of the before tiles.
            after: the four levels of the after tiles, same shapes.
            size: ``(H, W)`` of the tiles before padding, pixels.

        """
        fused, before_coarse, after_coarse = [], None, None
        for fusion, first, second in zip(self.fusions, before, after, strict=True):
            out, f1, f2 = fusion(first, second)
            fused.append(out)
            before_coarse, after_coarse = f1, f2
        assert before_coarse is not None and after_coarse is not None
        if self.config.language_after_fpn:  # query-free: once per pair, whatever the queries
            pixels, memory = self.pixel_decoder(fused)
            fused = [pixels, *memory[::-1]]  # strides 4, 8, 16, 32, as the fused levels
        height, width = size
        pad = (_padded(height) - height, _padded(width) - width)
        return PairFeatures(tuple(fused), before_coarse, after_coarse, (height, width), pad)

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
        pixels, memory = gate_with_words(self, list(features.fused), words, word_mask)
        projection = self.pixel_decoder.mask_proj
        predictions, presence = self.decoder(query, memory, pixels, projection, words, word_mask)

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


class MTRefSegR1Network(MTRefSegR1Layers):
    """MTRefSeg-R1 for inference without ``transformers``: ``MTRefSegR1``'s layers, in eval mode.

    Its parameters have the names of :class:`~mtrs_geo.models.modeling_mtrefseg.MTRefSegR1`'s,
    so it loads a checkpoint's ``model.safetensors`` as it is and gives the same numbers.
    """

    def __init__(self, config: MTRefSegR1Config) -> None:
        super().__init__()
        self.config = config
        self.build_layers(config)

    @property
    def device(self) -> torch.device:
        """The device of the weights."""
        return next(self.parameters()).device

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, local_files_only: bool = True
    ) -> MTRefSegR1Network | None:
        """Load a checkpoint folder saved by ``MTRefSegR1.save_pretrained`` (offline only).

        The layers are built on the meta device (no initialization, no memory) and take the
        weights of ``model.safetensors`` as they are.

        Returns:
            The network in eval mode, or None when the folder is not one this loader reads
            exactly (a config without every attribute, weights whose names or shapes differ):
            ``MTRefSegR1.from_pretrained`` then reads it.

        Raises:
            ValueError: ``local_files_only`` is False (no downloads at run time).
            OSError: an unreadable file.

        """
        if not local_files_only:
            raise ValueError("MTRefSegR1Network loads local checkpoint folders only")
        from safetensors.torch import load

        folder = Path(folder)
        values = CONFIG_DEFAULTS | json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        if values.get("model_type") != MODEL_TYPE or any(key not in values for key in CONFIG_KEYS):
            return None
        # A saved config.json holds every attribute, checked and filled in when it was saved.
        config = cast("MTRefSegR1Config", SimpleNamespace(**values))
        with torch.device("meta"):
            network = cls(config)
        # From the file's bytes, not a memory map of it: the folder may be written again while
        # the network runs (see mtrs_geo.models.loading.own_weights).
        state = load((folder / WEIGHTS_FILE).read_bytes())
        expected = network.state_dict()
        if state.keys() != expected.keys() or any(
            state[key].shape != value.shape or state[key].dtype != value.dtype
            for key, value in expected.items()
        ):
            return None
        network.load_state_dict(state, strict=True, assign=True)
        network.text.freeze_encoder()
        return network.eval()


def load_network(folder: Path) -> MTRefSegR1Layers:
    """Load a checkpoint folder for inference: :class:`MTRefSegR1Network`, else ``MTRefSegR1``.

    The second only for a folder the first does not read exactly (see
    :meth:`MTRefSegR1Network.from_pretrained`); both with ``local_files_only=True``.
    """
    network = MTRefSegR1Network.from_pretrained(folder, local_files_only=True)
    if network is not None:
        return network
    from mtrs_geo.models.loading import quiet_loading
    from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1

    with quiet_loading():
        model: MTRefSegR1 = MTRefSegR1.from_pretrained(folder, local_files_only=True)
    return model
