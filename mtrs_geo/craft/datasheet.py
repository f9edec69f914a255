"""The datasheet of a built dataset: counts and histograms as JSON, and the same as markdown."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LENGTH_BINS = [1, 3, 5, 7, 9, 11, 13, 16, 20, 1000]  # words; bin i = [b_i, b_{i+1})
AREA_BINS = [0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0001]  # share of the image


@dataclass
class Tally:
    """Running counts over the kept triplets of a build."""

    pairs: dict[str, int] = field(default_factory=Counter)  # split -> pairs written
    triplets: dict[str, int] = field(default_factory=Counter)  # split -> triplets written
    scenes: dict[str, int] = field(default_factory=Counter)  # split -> scenes
    kinds: dict[str, int] = field(default_factory=Counter)
    classes: dict[str, int] = field(default_factory=Counter)  # expressions per class/transition
    instances: dict[str, int] = field(default_factory=Counter)  # instances per transition
    lengths: list[int] = field(default_factory=list)
    area_shares: list[float] = field(default_factory=list)  # non-empty masks only
    area_m2: list[float] = field(default_factory=list)
    empty: int = 0
    rejections: dict[str, int] = field(default_factory=Counter)
    ambiguous: dict[str, int] = field(default_factory=Counter)
    pairs_without_triplets: int = 0


def histogram(values: Sequence[float], bins: Sequence[float]) -> list[dict[str, float | int]]:
    """Count ``values`` per ``[low, high)`` bin."""
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=np.asarray(bins))
    return [
        {"low": float(bins[i]), "high": float(bins[i + 1]), "count": int(counts[i])}
        for i in range(len(bins) - 1)
    ]


def datasheet(
    tally: Tally, settings: dict[str, Any], coverage: dict[str, Any] | None
) -> dict[str, Any]:
    """Assemble the datasheet as a JSON-ready dict."""
    total = sum(tally.triplets.values())
    return {
        "settings": settings,
        "splits": {
            split: {
                "scenes": tally.scenes.get(split, 0),
                "pairs": tally.pairs.get(split, 0),
                "triplets": tally.triplets.get(split, 0),
            }
            for split in sorted(set(tally.pairs) | set(tally.scenes))
        },
        "triplets": total,
        "expressions_per_kind": dict(sorted(tally.kinds.items())),
        "expressions_per_class": dict(sorted(tally.classes.items())),
        "instances_per_class": dict(sorted(tally.instances.items())),
        "empty_target_share": tally.empty / total if total else 0.0,
        "expression_length_words": histogram([float(v) for v in tally.lengths], LENGTH_BINS),
        "mask_area_share": histogram(tally.area_shares, AREA_BINS),
        "mask_area_m2": _summary(tally.area_m2),
        "rejections_per_reason": dict(sorted(tally.rejections.items())),
        "ambiguous_dropped_per_kind": dict(sorted(tally.ambiguous.items())),
        "pairs_without_triplets": tally.pairs_without_triplets,
        "caption_vocabulary": coverage,
    }


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    data = np.asarray(values, dtype=np.float64)
    return {
        "min": round(float(data.min()), 1),
        "median": round(float(np.median(data)), 1),
        "max": round(float(data.max()), 1),
    }


def _table(rows: list[tuple[str, Any]], head: tuple[str, str]) -> list[str]:
    lines = [f"| {head[0]} | {head[1]} |", "| --- | ---: |"]
    lines += [f"| {name} | {value} |" for name, value in rows] or ["| (none) | 0 |"]
    return lines


def markdown(sheet: dict[str, Any]) -> str:
    """Render the datasheet as a markdown page."""
    lines = ["# Datasheet", "", "Built by `mtrs craft build`.", ""]
    settings = sheet["settings"]
    lines += ["## Settings", ""]
    lines += _table([(k, f"`{v}`") for k, v in settings.items()], ("setting", "value"))
    lines += ["", "## Splits (by scene: no pair is in two splits)", ""]
    lines += ["| split | scenes | pairs | triplets |", "| --- | ---: | ---: | ---: |"]
    for split, row in sheet["splits"].items():
        lines.append(f"| {split} | {row['scenes']} | {row['pairs']} | {row['triplets']} |")
    lines += ["", f"Triplets: {sheet['triplets']}; empty-target share: "
              f"{100 * sheet['empty_target_share']:.1f} %.", ""]  # fmt: skip
    lines += ["## Expressions per kind", ""]
    lines += _table(list(sheet["expressions_per_kind"].items()), ("kind", "expressions"))
    lines += ["", "## Expressions per class or transition", ""]
    lines += _table(list(sheet["expressions_per_class"].items()), ("class", "expressions"))
    lines += ["", "## Instances per class or transition", ""]
    lines += _table(list(sheet["instances_per_class"].items()), ("class", "instances"))
    lines += ["", "## Expression length (words)", ""]
    lines += _table(
        [
            (f"{int(b['low'])}-{int(b['high']) - 1}", b["count"])
            for b in sheet["expression_length_words"]
        ],
        ("words", "expressions"),
    )
    lines += ["", "## Mask area (share of the image, non-empty masks)", ""]
    lines += _table(
        [
            (f"{b['low']:.3f}-{min(b['high'], 1.0):.3f}", b["count"])
            for b in sheet["mask_area_share"]
        ],
        ("share", "masks"),
    )
    if sheet["mask_area_m2"]:
        area = sheet["mask_area_m2"]
        lines += ["", f"Ground area of non-empty masks: min {area['min']} m², median "
                  f"{area['median']} m², max {area['max']} m²."]  # fmt: skip
    lines += ["", "## Rejected triplets", ""]
    lines += _table(list(sheet["rejections_per_reason"].items()), ("reason", "triplets"))
    lines += ["", "Candidates dropped as ambiguous, per kind:", ""]
    lines += _table(list(sheet["ambiguous_dropped_per_kind"].items()), ("kind", "dropped"))
    coverage = sheet.get("caption_vocabulary")
    if coverage:
        lines += ["", "## Vocabulary coverage of real captions", ""]
        lines.append(
            f"{100 * coverage['share']:.0f} % of the {coverage['top']} most frequent content words "
            f"of {coverage['captions']} captions occur in the grammar or the class names; missing: "
            + ", ".join(coverage["missing"])
        )
    return "\n".join(lines) + "\n"
