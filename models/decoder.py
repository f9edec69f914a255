"""A light Mask2Former-style decoder with a language query and a "target present" head.

The pixel decoder (an FPN over the four fused levels) gives stride-4 mask features and a
multi-scale memory. The language query (first cross-attending to the coarse change features) and a
few learned latent queries go through decoder layers of masked cross-attention to the memory
(one level per layer, coarse to fine, round robin), cross-attention to the query words,
self-attention and a feed-forward block. Every layer predicts a mask (deep supervision); the final
language query also predicts whether the referred change exists at all.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mtrs_geo.models.backbones import SeparableConv, group_norm


def sine_position_encoding(height: int, width: int, dim: int, device: torch.device) -> torch.Tensor:
    """2-D sine/cosine position encoding ``(H * W, dim)`` (half the channels per axis)."""
    rows = torch.linspace(0, 1, height, device=device)
    cols = torch.linspace(0, 1, width, device=device)
    return position_encoding_of(rows, cols, dim)


def position_encoding_of(rows: torch.Tensor, cols: torch.Tensor, dim: int) -> torch.Tensor:
    """:func:`sine_position_encoding` of the rows' and columns' positions in [0, 1] (1-D each)."""
    height, width, device = rows.shape[0], cols.shape[0], rows.device
    quarter = max(dim // 4, 1)
    freq = torch.exp(torch.arange(quarter, device=device) * (-math.log(10000.0) / quarter))
    ys = rows[:, None] * freq * 2 * math.pi
    xs = cols[:, None] * freq * 2 * math.pi
    y_enc = torch.cat([ys.sin(), ys.cos()], 1)[:, None, :].expand(height, width, -1)
    x_enc = torch.cat([xs.sin(), xs.cos()], 1)[None, :, :].expand(height, width, -1)
    enc = torch.cat([y_enc, x_enc], 2).reshape(height * width, -1)
    if enc.shape[1] < dim:
        enc = F.pad(enc, (0, dim - enc.shape[1]))
    return enc[:, :dim]


class PixelDecoder(nn.Module):
    """FPN over the four levels: stride-4 mask features and a coarse-to-fine memory (32 to 8)."""

    def __init__(self, in_dims: list[int], dim: int) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, 1, bias=False), group_norm(dim)) for c in in_dims
        )
        self.outputs = nn.ModuleList(SeparableConv(dim, dim) for _ in in_dims)
        self.mask_proj = nn.Conv2d(dim, dim, 1)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return ``(pixels (B, dim, H/4, W/4), [memory at strides 32, 16, 8])``.

        The mask features are ``mask_proj(pixels)``; the mask decoder folds that 1x1 projection
        into its mask embeddings (:func:`mask_logits`) instead of running it over every pixel.
        """
        x = self.laterals[3](features[3])
        outs = [self.outputs[3](x)]
        for level in (2, 1, 0):
            lateral = self.laterals[level](features[level])
            x = lateral + F.interpolate(x, lateral.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(self.outputs[level](x))
        return outs[-1], outs[:3]


def mask_logits(embed: torch.Tensor, pixels: torch.Tensor, projection: nn.Conv2d) -> torch.Tensor:
    """Return the ``(B, Q, H, W)`` products of ``embed`` ``(B, Q, C)`` with ``projection(pixels)``.

    Computed as ``(embed W) pixels + embed b``: one product over the pixels instead of a 1x1
    convolution and a product.
    """
    weight = projection.weight.flatten(1).to(embed.dtype)  # (C, C_in)
    folded = torch.matmul(embed, weight)
    offset = torch.matmul(embed, projection.bias.to(embed.dtype))[..., None]  # type: ignore[union-attr]
    logits = torch.matmul(folded, pixels.flatten(2)) + offset
    return logits.view(*logits.shape[:2], *pixels.shape[-2:])


class DecoderLayer(nn.Module):
    """Masked cross-attention to pixels, then to words, self-attention, FFN (post-norm)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.pixel_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.word_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))

    def forward(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        pixel_mask: torch.Tensor | None,
        words: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Update ``queries`` ``(B, Q, dim)``; ``pixel_mask`` ``(B*heads, Q, HW)``, True blocks."""
        attended = self.pixel_attn(
            queries + query_pos,
            memory + memory_pos,
            memory,
            attn_mask=pixel_mask,
            need_weights=False,
        )[0]
        queries = self.norms[0](queries + attended)
        attended = self.word_attn(
            queries + query_pos, words, words, key_padding_mask=~word_mask, need_weights=False
        )[0]
        queries = self.norms[1](queries + attended)
        q = queries + query_pos
        queries = self.norms[2](queries + self.self_attn(q, q, queries, need_weights=False)[0])
        return self.norms[3](queries + self.ffn(queries))


class MaskDecoder(nn.Module):
    """Language query + latent queries -> per-layer mask logits and a "target present" logit."""

    def __init__(
        self, dim: int, heads: int, layers: int, latent_queries: int, ffn_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.heads = heads
        self.query_init_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.query_init_norm = nn.LayerNorm(dim)
        self.latent = nn.Parameter(torch.zeros(latent_queries, dim))
        self.query_pos = nn.Parameter(torch.zeros(latent_queries + 1, dim))
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.layers = nn.ModuleList(
            DecoderLayer(dim, heads, ffn_dim, dropout) for _ in range(layers)
        )
        self.out_norm = nn.LayerNorm(dim)
        self.mask_embed = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim)
        )
        self.presence = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialize the learned queries and embeddings."""
        if self.latent.is_meta:
            return  # built to receive a checkpoint's weights: nothing to initialize
        from transformers import initialization as init  # only to initialize: it is slow to import

        for param in (self.latent, self.query_pos, self.level_embed):
            init.normal_(param, std=0.02)

    def forward(
        self,
        query: torch.Tensor,
        memory: list[torch.Tensor],
        pixels: torch.Tensor,
        projection: nn.Conv2d,
        words: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Return ``([mask logits (B, H/4, W/4) per prediction, final last], presence (B,))``.

        ``query`` ``(B, dim)`` is the language query; ``memory`` the coarse-to-fine pixel features;
        the mask features are ``projection(pixels)`` (:class:`PixelDecoder`).
        """
        batch, dim = query.shape
        flat = [m.flatten(2).transpose(1, 2) for m in memory]
        pos = [
            sine_position_encoding(m.shape[-2], m.shape[-1], dim, m.device).to(m.dtype)[None]
            + self.level_embed[i]
            for i, m in enumerate(memory)
        ]
        # The language query first reads the coarse change features: it becomes the decoder query.
        q0 = query[:, None]
        coarse = flat[0] + pos[0]
        q0 = self.query_init_norm(
            q0 + self.query_init_attn(q0, coarse, flat[0], need_weights=False)[0]
        )
        queries = torch.cat([q0, self.latent.expand(batch, -1, -1).to(q0.dtype)], dim=1)
        query_pos = self.query_pos[None].to(q0.dtype)
        masks, pixel_mask = self._predict(queries, pixels, projection, memory[0].shape[-2:])
        predictions = [masks[:, 0]]
        for index, layer in enumerate(self.layers):
            level = index % len(memory)
            queries = layer(
                queries, query_pos, flat[level], pos[level], pixel_mask, words, word_mask
            )
            next_size = memory[(index + 1) % len(memory)].shape[-2:]
            masks, pixel_mask = self._predict(queries, pixels, projection, next_size)
            predictions.append(masks[:, 0])
        presence = self.presence(self.out_norm(queries[:, 0])).squeeze(-1)
        return predictions, presence

    def _predict(
        self, queries: torch.Tensor, pixels: torch.Tensor, projection: nn.Conv2d, size: torch.Size
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict every query's mask logits and the attention mask they give at ``size``."""
        masks = mask_logits(self.mask_embed(self.out_norm(queries)), pixels, projection)
        small = F.interpolate(masks.detach(), size, mode="bilinear", align_corners=False)
        blocked = (small < 0).flatten(2)  # sigmoid < 0.5
        # A query whose mask is empty attends everywhere (as in Mask2Former).
        blocked = blocked & ~blocked.all(-1, keepdim=True)
        return masks, blocked.repeat_interleave(self.heads, dim=0)
