"""Real change data as donors: grounds and object cutouts for synthesis, real pairs, hold-out split.

A *donor* is a folder of real change pairs (``A/ B/ label/`` or OSCD cities) described by a
:class:`DonorSpec`: its pixel size, what its labels mean (subject and direction) and which class of
object its labels cut out. :func:`load_donors` reads the folders under one data root and returns,
for one side of a fixed scene-level hold-out split, the ground images, the object bank and the real
pairs (with their CRAFT transitions). Training takes the ``train`` side, benchmarks the
``held_out`` side, so no evaluated scene is ever trained on.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from pathlib import Path

from mtrs_geo.craft.sources import ChangePair, SourceOptions, read_pairs
from mtrs_geo.craft.synthetic import Cutout, Ground, ObjectBank, cutouts_from_mask, vegetation_mask

SPLITS = ("train", "held_out")
HELD_OUT_SHARE = 5  # one scene in this many is held out (by a stable hash of its name)
CHIP = 320  # chips of at least 256 px a side where the image allows (training crops)


@dataclass(frozen=True)
class DonorSpec:
    """What one donor folder holds.

    Attributes:
        folder: folder name under the data root.
        layout: CRAFT layout (``levir-cd`` or ``oscd``).
        gsd: metres per pixel.
        subject: noun of its change labels.
        direction: ``"appeared"`` when its labels mark only things that appeared, else None.
        object_class: class of the objects its labels outline in the after image (cut out as
            transplants), or None when labels mix classes.
        grounds: whether its before images serve as grounds for synthesis.

    """

    folder: str
    layout: str
    gsd: float
    subject: str
    direction: str | None
    object_class: str | None
    grounds: bool = True


DONORS: tuple[DonorSpec, ...] = (
    DonorSpec("levir-cd", "levir-cd", 0.5, "building", "appeared", "building"),
    DonorSpec("egy-bcd", "levir-cd", 0.5, "building", "appeared", "building"),
    DonorSpec("ombria-s2", "levir-cd", 10.0, "water", "appeared", "water"),
    DonorSpec("sztaki-airchange", "levir-cd", 1.5, "change", None, None),
    DonorSpec("dsifn-cd", "levir-cd", 2.0, "change", None, None),
    # OSCD's labels mix new buildings with the roads between them: not cut out as objects. (Cut
    # out as 10 m "building" transplants, they lowered held-out OSCD F1: 29.5 -> 26.5; kept to
    # coarse grounds as built-up land, 22.6 -> 21.9 over eight orientations: docs/MODEL_HISTORY.md.)
    DonorSpec("oscd", "oscd", 10.0, "buildings and roads", "appeared", None),
)


# Scenes the bundled checkpoint's first stages (CRAFT's seed-0 val/test splits) never saw; the
# other donors were not used by those stages and are split by a stable hash of the scene name.
HELD_OUT_SCENES: dict[str, frozenset[str]] = {
    "levir-cd": frozenset({"test_77", "train_412"}),
    "dsifn-cd": frozenset({"5_3", "8_3"}),
    "oscd": frozenset({"bordeaux"}),
}


def is_held_out(source: str, scene: str) -> bool:
    """Whether a scene of a donor belongs to the held-out side (stable across machines)."""
    if source in HELD_OUT_SCENES:
        return scene in HELD_OUT_SCENES[source]
    return zlib.crc32(f"{source}/{scene}".encode()) % HELD_OUT_SHARE == 0


@dataclass(frozen=True)
class Donors:
    """Everything read from the donors for one side of the split."""

    grounds: list[Ground]
    bank: ObjectBank
    pairs: list[ChangePair]


def _on_side(source: str, scene: str, split: str) -> bool:
    return is_held_out(source, scene) == (split == "held_out")


def load_donors(
    root: Path,
    split: str,
    donors: tuple[DonorSpec, ...] = DONORS,
    max_ombria_pairs: int | None = 160,
) -> Donors:
    """Read the donor folders under ``root`` (e.g. ``../shared/data``) for one side of the split.

    Missing folders are skipped. OMBRIA pairs are thinned to ``max_ombria_pairs`` (406 small
    Sentinel-2 flood chips would otherwise outnumber everything else).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    grounds: list[Ground] = []
    cutouts: dict[str, list[Cutout]] = {}
    pairs: list[ChangePair] = []
    for spec in donors:
        folder = Path(root) / spec.folder
        if not folder.is_dir():
            continue
        options = SourceOptions(
            spec.layout,
            gsd=spec.gsd,
            chip_size=CHIP,
            subject=spec.subject,
            direction=spec.direction,
        )
        taken = [p for p in read_pairs(folder, options) if _on_side(spec.folder, p.scene, split)]
        if spec.folder == "ombria-s2" and max_ombria_pairs and len(taken) > max_ombria_pairs:
            step = len(taken) / max_ombria_pairs
            taken = [taken[int(i * step)] for i in range(max_ombria_pairs)]
        for pair in taken:
            pair = replace(
                pair, name=f"{spec.folder}/{pair.name}", scene=f"{spec.folder}/{pair.scene}"
            )
            pairs.append(pair)
            if spec.grounds and min(pair.change.shape) >= 64:
                grounds.append(Ground(pair.scene, pair.rgb_before, spec.gsd))
            if spec.object_class:
                cutouts.setdefault(spec.object_class, []).extend(
                    cutouts_from_mask(
                        pair.rgb_after, pair.change > 0, spec.object_class, pair.scene, spec.gsd
                    )
                )
            if spec.gsd <= 3.0:
                green = vegetation_mask(pair.rgb_before) & (pair.change == 0)
                cutouts.setdefault("vegetation", []).extend(
                    cutouts_from_mask(
                        pair.rgb_before, green, "vegetation", pair.scene, spec.gsd, 60
                    )
                )
    return Donors(grounds, ObjectBank(cutouts), pairs)
