"""Losses of MTRefSeg-R1: sigmoid BCE + dice on every mask prediction, BCE on "target present".

All functions are pure: logits and labels in, a scalar out. Empty targets (a query that refers to
nothing) are ordinary samples: BCE and the smoothed dice both push their mask to zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over the batch of ``1 - dice(sigmoid(logits), labels)`` for ``(B, H, W)`` inputs."""
    probs = logits.float().sigmoid().flatten(1)
    target = labels.float().flatten(1)
    overlap = (probs * target).sum(1)
    total = probs.sum(1) + target.sum(1)
    return (1.0 - (2.0 * overlap + smooth) / (total + smooth)).mean()


def mask_loss(
    logits: torch.Tensor, labels: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 1.0
) -> torch.Tensor:
    """``bce_weight * BCE + dice_weight * dice`` of ``(B, H, W)`` mask logits against 0/1 labels."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return bce_weight * bce + dice_weight * dice_loss(logits, labels)


def referring_change_loss(
    logits: torch.Tensor,
    aux_logits: list[torch.Tensor],
    presence_logits: torch.Tensor,
    labels: torch.Tensor,
    target_present: torch.Tensor | None = None,
    *,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    presence_weight: float = 0.5,
    aux_weight: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its parts (``mask``, ``aux``, ``presence``, detached) for one batch.

    Args:
        logits: final mask logits ``(B, H, W)``.
        aux_logits: intermediate mask logits, each ``(B, H, W)`` (deep supervision).
        presence_logits: "target present" logits ``(B,)``.
        labels: ``(B, H, W)`` 0/1 masks of the referred change.
        target_present: ``(B,)`` 0/1; defaults to "the label mask is not empty".
        bce_weight: weight of the BCE term of every mask loss.
        dice_weight: weight of the dice term of every mask loss.
        presence_weight: weight of the presence BCE.
        aux_weight: weight of each intermediate mask loss.

    """
    labels = labels.float()
    if target_present is None:
        target_present = labels.flatten(1).amax(1)
    main = mask_loss(logits, labels, bce_weight, dice_weight)
    aux = sum(
        (mask_loss(a, labels, bce_weight, dice_weight) for a in aux_logits),
        start=torch.zeros((), device=logits.device),
    )
    presence = F.binary_cross_entropy_with_logits(
        presence_logits.float(), target_present.float().to(presence_logits.device)
    )
    total = main + aux_weight * aux + presence_weight * presence
    parts = {"mask": main.detach(), "aux": aux.detach(), "presence": presence.detach()}
    return total, parts


def distillation_loss(
    logits: torch.Tensor,
    presence_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_presence_logits: torch.Tensor,
    *,
    presence_weight: float = 0.5,
) -> torch.Tensor:
    """BCE of a student's mask and presence against a teacher's probabilities (soft targets).

    ``logits`` and ``teacher_logits`` are ``(B, H, W)``, the presence logits ``(B,)``; the
    teacher's are taken as they are (no gradient flows into them).
    """
    mask = F.binary_cross_entropy_with_logits(
        logits.float(), teacher_logits.detach().float().sigmoid()
    )
    presence = F.binary_cross_entropy_with_logits(
        presence_logits.float(), teacher_presence_logits.detach().float().sigmoid()
    )
    return mask + presence_weight * presence
