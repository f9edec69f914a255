"""An endless stream of referring triplets crafted on the fly: synthetic and real change pairs.

Each item draws a pair (a synthetic object-level change over a real ground image, or a real
labelled pair), crops and turns it, swaps its dates half of the time (exactly: the transitions are
reversed, so "new buildings" becomes "demolished buildings" with the same mask), then asks CRAFT
for every unambiguous expression of the pair and picks one, weighted by kind. Two queries about one
pair therefore have two different right answers (class, direction, place, count, no-target),
which binary change labels alone never show a model.

Everything is drawn from ``numpy.random.default_rng((seed, index))``: an item is the same
whatever the worker count, so training resumes exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
from torch.utils.data import Dataset

from mtrs_geo.craft.builder import BuildOptions, craft_pair
from mtrs_geo.craft.donors import Donors, load_donors
from mtrs_geo.craft.quality import Candidate
from mtrs_geo.craft.sources import ChangePair, SourceOptions
from mtrs_geo.craft.synthetic import (
    Ground,
    SyntheticOptions,
    compose_pair,
    procedural_ground,
    swap_dates,
)
from mtrs_geo.models.data.sample import Sample, make_sample

# Relative weight of an expression kind when one is picked for a pair.
KIND_WEIGHTS = {
    "all": 0.8,
    "class": 1.0,
    "direction": 3.0,
    "place": 1.2,
    "instance": 1.0,
    "count": 0.5,
    "spectral": 0.4,
    "no_target": 1.0,
}
TRANSITION_NO_TARGET_WEIGHT = 0.15  # share of "farmland turned into water"-style no-targets
ANY_CHANGE_SHARE = 0.3  # "all" expressions given as the empty any-change query
SYNONYMS = {
    "buildings": ("buildings", "houses", "structures", "buildings"),
    "building": ("building", "house", "structure", "building"),
    "vegetation": ("vegetation", "trees", "greenery", "woodland", "vegetation"),
    "water": ("water", "water", "flood water", "open water"),
}
_WORD = re.compile(r"[A-Za-z]+")
# Water that appeared is what a flood analyst asks for as flooded land: CRAFT's wordings of it
# ("areas that became water", "new water areas", "water that appeared") are sometimes said so.
FLOOD_SHARE = 0.3
FLOOD_WORDINGS = ("flooded areas", "flooded land", "newly flooded areas", "areas that were flooded")
_WATER_APPEARED = re.compile(
    r"\b(?:areas that became (?:flood |open )?water"
    r"|new (?:flood |open )?water areas"
    r"|newly formed (?:flood |open )?water"
    r"|(?:flood |open )?water that appeared)\b(?! patch| area| body)"
)
T = TypeVar("T")


@dataclass(frozen=True)
class StreamOptions:
    """How the stream mixes and shapes its pairs.

    Attributes:
        size: side of the square crop, pixels.
        synthetic_share: share of synthetic pairs (the rest are real labelled pairs).
        plain_ground_share: share of synthetic pairs drawn over a procedural plain ground.
        swap_dates: share of pairs whose dates are swapped (directions reversed with them).
        length: nominal dataset length (distinct items before the stream repeats).
        real_weights: relative weight of a donor folder's real pairs (default 1 each, so donors
            weigh equally whatever their number of pairs), e.g. ``{"oscd": 3.0}``.
        appearance_share: share of synthetic pairs that also get unlabelled appearance changes
            (:func:`mtrs_geo.craft.synthetic.appearance_change`); 0 keeps the stream as it was.

    """

    size: int = 256
    synthetic_share: float = 0.65
    plain_ground_share: float = 0.12
    swap_dates: float = 0.5
    length: int = 1_000_000
    real_weights: dict[str, float] = field(default_factory=dict)
    appearance_share: float = 0.0


def crop_pair(pair: ChangePair, size: int, rng: np.random.Generator) -> ChangePair:
    """Cut a random ``size`` window of a pair (all of a smaller pair), flipped and turned."""
    height, width = pair.change.shape
    top = int(rng.integers(0, max(height - size, 0) + 1))
    left = int(rng.integers(0, max(width - size, 0) + 1))
    rows, cols = slice(top, top + size), slice(left, left + size)
    turns = int(rng.integers(4))
    flip = bool(rng.random() < 0.5)

    def shape(array: np.ndarray) -> np.ndarray:
        out = array[..., rows, cols]
        if flip:
            out = out[..., ::-1]
        return np.ascontiguousarray(np.rot90(out, turns, axes=(-2, -1)))

    def maybe(array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else shape(array)

    change = shape(pair.change)
    return replace(
        pair,
        rgb_before=shape(pair.rgb_before),
        rgb_after=shape(pair.rgb_after),
        red_nir_before=maybe(pair.red_nir_before),
        red_nir_after=maybe(pair.red_nir_after),
        change=change,
        valid=shape(pair.valid),
        pixel_area_m2=np.full(change.shape[0], float(np.mean(pair.pixel_area_m2))),
    )


def with_synonyms(text: str, rng: np.random.Generator) -> str:
    """Swap class nouns for common synonyms ("buildings" -> "houses")."""

    def repl(match: re.Match[str]) -> str:
        word = match.group(0)
        options = SYNONYMS.get(word.lower())
        return word if options is None else options[int(rng.integers(len(options)))]

    return _WORD.sub(repl, text)


def with_flood_wording(text: str, rng: np.random.Generator, share: float = FLOOD_SHARE) -> str:
    """Say water that appeared as flooded land ("flooded areas"), ``share`` of the time."""
    if not _WATER_APPEARED.search(text) or rng.random() >= share:
        return text
    wording = FLOOD_WORDINGS[int(rng.integers(len(FLOOD_WORDINGS)))]
    return _WATER_APPEARED.sub(wording, text, count=1)


def pick_expression(candidates: list[Candidate], rng: np.random.Generator) -> Candidate | None:
    """One expression: a kind first (weighted, whatever its number of candidates), then one of it.

    Picking per kind keeps the share of no-target expressions near its weight: a pair has many
    more no-target expressions (every class, direction and place that did not change) than
    expressions with a target, and picking per candidate would teach mostly empty masks.
    """
    if not candidates:
        return None
    by_kind: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_kind.setdefault(candidate.kind, []).append(candidate)
    kinds = sorted(by_kind)
    weights = np.array([KIND_WEIGHTS.get(kind, 1.0) for kind in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    pool = by_kind[kind]
    if kind == "no_target":
        plain = [c for c in pool if "->" not in c.label]
        if plain and (len(plain) == len(pool) or rng.random() > TRANSITION_NO_TARGET_WEIGHT):
            pool = plain
    return pool[int(rng.integers(len(pool)))]


class CraftStreamDataset(Dataset[Sample]):
    """Referring triplets crafted per item from synthetic and real change pairs."""

    def __init__(self, donors: Donors, options: StreamOptions | None = None, seed: int = 0):
        self.options = options or StreamOptions()
        self.seed = seed
        self.bank = donors.bank
        self.grounds = _by_source(donors.grounds, lambda g: g.scene)
        self.pairs = _by_source(donors.pairs, lambda p: p.scene)
        self.pair_odds = _odds(donors.pairs, self.options.real_weights)
        self.synthetic = SyntheticOptions(appearance_share=self.options.appearance_share)

    @classmethod
    def from_root(
        cls, root: Path, split: str = "train", options: StreamOptions | None = None, seed: int = 0
    ) -> CraftStreamDataset:
        """Read the donor folders under ``root`` (one side of the hold-out split)."""
        return cls(load_donors(root, split), options, seed)

    def __len__(self) -> int:
        return self.options.length

    def draw_pair(self, rng: np.random.Generator, index: int) -> ChangePair:
        """Draw a synthetic or real pair, cropped, turned and maybe time-reversed."""
        if not self.pairs or (self.grounds and rng.random() < self.options.synthetic_share):
            if rng.random() < self.options.plain_ground_share:
                size = self.options.size + 32
                ground = Ground("procedural", procedural_ground(rng, size), rng.uniform(0.3, 1.5))
            else:
                grounds = self.grounds[int(rng.integers(len(self.grounds)))]
                ground = grounds[int(rng.integers(len(grounds)))]
            pair = compose_pair(ground, self.bank, rng, self.synthetic, f"stream_{index}")
        else:
            pairs = self.pairs[int(rng.choice(len(self.pairs), p=self.pair_odds))]
            pair = pairs[int(rng.integers(len(pairs)))]
        pair = crop_pair(pair, self.options.size, rng)
        if rng.random() < self.options.swap_dates:
            pair = swap_dates(pair)
        return pair

    def __getitem__(self, index: int) -> Sample:
        rng = np.random.default_rng((self.seed, index))
        for _attempt in range(8):
            pair = self.draw_pair(rng, index)
            build = BuildOptions(
                SourceOptions("levir-cd"),
                seed=int(rng.integers(2**31)),
                max_expressions=10_000,
            )
            chosen = pick_expression(craft_pair(pair, build).kept, rng)
            if chosen is not None:
                break
        assert chosen is not None, "no expression could be crafted for 8 pairs in a row"
        text = with_flood_wording(with_synonyms(chosen.text, rng), rng)
        if chosen.kind == "all" and chosen.mask.any() and rng.random() < ANY_CHANGE_SHARE:
            text = ""
        return make_sample(
            pair.rgb_before,
            pair.rgb_after,
            chosen.mask.astype(np.float32),
            f"{pair.name}#{index}",
            text=text,
        )


def _odds(pairs: list[ChangePair], weights: dict[str, float]) -> np.ndarray:
    """Probability of each donor group of :func:`_by_source` (in its order) under ``weights``."""
    names = sorted({pair.scene.split("/")[0] for pair in pairs})
    unknown = set(weights) - set(names)
    if pairs and unknown:
        raise ValueError(f"real_weights names donors without pairs here: {sorted(unknown)}")
    odds = np.array([float(weights.get(name, 1.0)) for name in names])
    if (odds < 0).any() or (names and odds.sum() <= 0):
        raise ValueError("real_weights must be non-negative and not all zero")
    return odds / odds.sum() if names else odds


def _by_source(items: list[T], scene_of: Callable[[T], str]) -> list[list[T]]:
    """Group items by donor folder (the first part of their scene) so donors weigh equally."""
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(scene_of(item).split("/")[0], []).append(item)
    return [groups[k] for k in sorted(groups)]
