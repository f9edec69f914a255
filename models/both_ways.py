"""The answers of one pass that asks its queries both ways in time, and how calls' answers join.

A model that answers both ways at once (:class:`mtrs_geo.models.time_symmetric.AsksBothWays`)
asks the forward queries of every pair (before -> after), and each backward one (after -> before)
of the pairs an :data:`AskBack` picks for it from the forward answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# Picks, from the forward answers ``(Qf, B, H, W)``, the pairs to ask each backward query of:
# ``(Qb, B)`` bool.
AskBack = Callable[[np.ndarray], np.ndarray]
# The forward answers ``(Qf, B, H, W)``, which backward query was asked of which pair (``(Qb, B)``
# bool) and the backward answers ``(Qb, B, H, W)``, meaningful where asked.
BothWays = tuple[np.ndarray, np.ndarray, np.ndarray]


def join_both_ways(parts: Sequence[BothWays]) -> BothWays:
    """Join the answers of consecutive calls (their pairs in order) into one."""
    if len(parts) == 1:
        return parts[0]
    forward, asked, backward = zip(*parts, strict=True)
    return (
        np.concatenate(forward, axis=1),
        np.concatenate(asked, axis=1),
        np.concatenate(backward, axis=1),
    )
