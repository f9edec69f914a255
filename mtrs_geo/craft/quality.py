"""Quality checks that reject a triplet, each with a reason that goes into the rejection log."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Candidate:
    """A (pair, expression, mask) triplet before the quality checks."""

    pair: str
    text: str
    kind: str
    mask: np.ndarray  # (H, W) bool
    instance_ids: tuple[int, ...]
    label: str = ""  # the class or transition the expression names, for the datasheet


@dataclass(frozen=True)
class Rejection:
    """Why a candidate triplet was not kept."""

    pair: str
    text: str
    kind: str
    reason: str

    def to_json(self) -> dict[str, str]:
        """Return the rejection as a JSON object."""
        return {"pair": self.pair, "text": self.text, "kind": self.kind, "reason": self.reason}


def normalize_text(text: str) -> str:
    """Text as compared for duplicates: lower case, single spaces, no trailing punctuation."""
    return " ".join(text.lower().replace(",", " ").split()).rstrip(".")


def mask_digest(mask: np.ndarray) -> str:
    """Hash the content of a boolean mask (shape included)."""
    packed = np.packbits(np.asarray(mask, dtype=bool))
    return hashlib.sha1(packed.tobytes() + str(mask.shape).encode()).hexdigest()


def check_pair(
    candidates: list[Candidate], valid: np.ndarray, min_mask_pixels: int
) -> tuple[list[Candidate], list[Rejection]]:
    """Apply every check to the candidates of one pair.

    Rejects: a non-empty mask smaller than ``min_mask_pixels`` ("tiny mask"), a non-empty mask with
    no pixel on valid data ("mask touches only nodata"), an empty mask on an expression that has a
    target, a repeat of an earlier expression with the same mask ("duplicate expression"), and every
    copy of an expression that appears with different masks ("same expression with different
    masks").

    Args:
        candidates: the pair's triplets, in order.
        valid: ``(H, W)`` pixels with data in both dates.
        min_mask_pixels: the smallest legal non-empty mask, pixels.

    Returns:
        The kept candidates (in order) and the rejections.

    """
    kept: list[Candidate] = []
    rejected: list[Rejection] = []
    for candidate in candidates:
        size = int(candidate.mask.sum())
        reason = None
        if size == 0 and candidate.kind != "no_target":
            reason = "empty mask for an expression with a target"
        elif size and candidate.kind == "no_target":
            reason = "no-target expression with a non-empty mask"
        elif 0 < size < min_mask_pixels:
            reason = f"tiny mask ({size} px < {min_mask_pixels} px)"
        elif size and not (candidate.mask & valid).any():
            reason = "mask touches only nodata"
        if reason:
            rejected.append(Rejection(candidate.pair, candidate.text, candidate.kind, reason))
        else:
            kept.append(candidate)
    masks_by_text: dict[str, set[str]] = {}
    for candidate in kept:
        masks_by_text.setdefault(normalize_text(candidate.text), set()).add(
            mask_digest(candidate.mask)
        )
    final: list[Candidate] = []
    seen: set[str] = set()
    for candidate in kept:
        key = normalize_text(candidate.text)
        if len(masks_by_text[key]) > 1:
            reason = "same expression with different masks"
        elif key in seen:
            reason = "duplicate expression"
        else:
            seen.add(key)
            final.append(candidate)
            continue
        rejected.append(Rejection(candidate.pair, candidate.text, candidate.kind, reason))
    return final, rejected
