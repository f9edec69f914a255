"""Bi-temporal fusion: turn the two dates' features of one level into change features.

The ``signed`` block keeps the direction of the change: ``f2 - f1`` is not ``f1 - f2``, so
"appeared" and "disappeared" stay apart. ``concat``, ``absdiff`` and ``average`` are the paper's
ablations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mtrs_geo.models.backbones import SeparableConv, group_norm


class CrossTemporalAttention(nn.Module):
    """Local attention that re-aligns the before features to the after features.

    Each after-pixel attends to the ``window x window`` neighbourhood of the same place in the
    before features, so a shift of up to ``window // 2`` pixels (of this level) is absorbed.
    A centre bias makes it start close to the identity (perfectly co-registered pairs).
    """

    def __init__(self, dim: int, window: int = 3) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"cross_temporal_window must be odd and positive, got {window}")
        self.window = window
        self.query = nn.Conv2d(dim, dim, 1)
        self.key = nn.Conv2d(dim, dim, 1)
        self.position_bias = nn.Parameter(torch.zeros(window * window))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Centre-biased start: the before features are first taken (almost) as they are."""
        if self.position_bias.is_meta:
            return  # built to receive a checkpoint's weights: nothing to initialize
        from transformers import initialization as init  # only to initialize: it is slow to import

        bias = torch.zeros_like(self.position_bias)
        bias[(self.window * self.window) // 2] = 2.0
        init.copy_(self.position_bias, bias)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Return ``before`` ``(B, C, H, W)`` resampled towards ``after`` (same shape)."""
        batch, channels, height, width = before.shape
        taps = self.window * self.window
        pad = self.window // 2
        query = self.query(after).reshape(batch, channels, 1, height * width)
        keys = F.unfold(self.key(before), self.window, padding=pad)
        keys = keys.reshape(batch, channels, taps, height * width)
        values = F.unfold(before, self.window, padding=pad).reshape(batch, channels, taps, -1)
        logits = (query * keys).sum(1) / math.sqrt(channels) + self.position_bias[None, :, None]
        weights = logits.softmax(dim=1)
        aligned = (values * weights[:, None]).sum(2)
        return aligned.reshape(batch, channels, height, width)


class BiTemporalFusion(nn.Module):
    """Fuse one level of before/after features into change features ``(B, dim, H, W)``.

    ``signed``: project each date (shared 1x1 conv), ``d = f2 - f1``, ``|d|``, a difference encoder
    over ``[d, |d|]``, a fused branch over ``[f1, f2, |d|, diff]``, a channel gate from pooled
    ``[f1, f2]``; output ``norm(act(fused + gate * diff + 0.5 * (f1 + f2)))``.
    """

    def __init__(
        self, in_channels: int, dim: int, variant: str = "signed", align_window: int | None = None
    ) -> None:
        super().__init__()
        self.variant = variant
        self.project = nn.Sequential(nn.Conv2d(in_channels, dim, 1, bias=False), group_norm(dim))
        self.align = CrossTemporalAttention(dim, align_window) if align_window else None
        if variant == "signed":
            self.diff_encoder = nn.Sequential(SeparableConv(2 * dim, dim), SeparableConv(dim, dim))
            self.fused_branch = nn.Sequential(
                nn.Conv2d(4 * dim, dim, 1, bias=False),
                group_norm(dim),
                nn.GELU(),
                SeparableConv(dim, dim),
            )
            hidden = max(dim // 4, 8)
            self.gate = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(2 * dim, hidden, 1),
                nn.GELU(),
                nn.Conv2d(hidden, dim, 1),
                nn.Sigmoid(),
            )
            self.out_norm = group_norm(dim)
        elif variant == "concat":
            self.mix = nn.Sequential(SeparableConv(2 * dim, dim), SeparableConv(dim, dim))
        elif variant in ("absdiff", "average"):
            self.mix = nn.Sequential(SeparableConv(dim, dim), SeparableConv(dim, dim))
        else:
            raise ValueError(f"unknown fusion variant {variant!r}")

    def forward(
        self, before: torch.Tensor, after: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(fused, f1, f2)``: the change features and the projected (aligned) dates."""
        f1 = self.project(before)
        f2 = self.project(after)
        if self.align is not None:
            f1 = self.align(f1, f2)
        if self.variant == "signed":
            signed = f2 - f1
            magnitude = signed.abs()
            diff = self.diff_encoder(torch.cat([signed, magnitude], 1))
            fused = self.fused_branch(torch.cat([f1, f2, magnitude, diff], 1))
            gate = self.gate(torch.cat([f1, f2], 1))
            out = self.out_norm(F.gelu(fused + gate * diff + 0.5 * (f1 + f2)))
        elif self.variant == "concat":
            out = self.mix(torch.cat([f1, f2], 1))
        elif self.variant == "absdiff":
            out = self.mix((f2 - f1).abs())
        else:
            out = self.mix(0.5 * (f1 + f2))
        return out, f1, f2
