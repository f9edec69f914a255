"""What an expression refers to: referents select instances, independent of wording.

A :class:`Referent` names a group of changes (all, a transition, a direction of a class), optionally
narrowed by a place, a spectral change, a superlative or a shape, and the set of instance ids it
selects.
Referents that would not select their instances unambiguously are never produced: an instance near a
cell border, a size tie, a borderline spectral value, a shape near a threshold.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from mtrs_geo.craft.perception import Instance, Transition

KINDS = ("all", "class", "direction", "place", "instance", "count", "spectral", "no_target")
SIZE_MARGIN = 1.3  # the largest must be this many times the second largest to be "the largest"
MAX_COUNT = 10  # counts above this are not phrased as counts


@dataclass(frozen=True)
class Group:
    """A set of changes by what changed.

    ``mode`` is ``"all"``, ``"transition"`` (``from_class`` -> ``to_class``), ``"appeared"`` (to
    ``cls``) or ``"disappeared"`` (from ``cls``). ``subject`` is the noun of a binary change map.
    """

    mode: str
    subject: str | None = None
    from_class: str | None = None
    to_class: str | None = None
    cls: str | None = None

    def selects(self, transition: Transition) -> bool:
        """Whether a change of this transition belongs to the group."""
        if self.mode == "all":
            return True
        if self.mode == "transition":
            return (transition.from_class, transition.to_class) == (self.from_class, self.to_class)
        if self.mode == "appeared":
            if transition.from_class or transition.to_class:
                return transition.to_class == self.cls and transition.from_class != self.cls
            return transition.subject == self.cls and transition.direction == "appeared"
        if self.mode == "disappeared":
            if transition.from_class or transition.to_class:
                return transition.from_class == self.cls and transition.to_class != self.cls
            return transition.subject == self.cls and transition.direction == "disappeared"
        raise ValueError(f"unknown group mode {self.mode!r}")


@dataclass(frozen=True)
class Referent:
    """What one expression means and the instance ids it selects (empty = no target)."""

    kind: str
    group: Group
    instance_ids: frozenset[int]
    place: tuple[int, int] | None = None
    spectral: str | None = None  # brighter, darker, vegetation gain, vegetation loss
    superlative: str | None = None  # largest, smallest
    shape: str | None = None
    count: int | None = None
    area_m2: float | None = None  # ground area of a single selected instance


def select_mask(instances: np.ndarray, ids: Iterable[int]) -> np.ndarray:
    """Return the union of the given instances as a boolean mask."""
    wanted = np.asarray(sorted(ids), dtype=instances.dtype)
    if wanted.size == 0:
        return np.zeros(instances.shape, dtype=bool)
    return np.isin(instances, wanted)


def _groups(
    instances: list[Instance],
    transitions: dict[int, Transition],
    classes: tuple[str, ...],
    subject: str,
) -> list[Group]:
    """List the groups worth an expression: all, each transition (present or not), directions."""
    groups = [Group("all", subject=subject)]
    present = {i.transition for i in instances}
    pairs = {(t.from_class, t.to_class) for t in present if t.from_class and t.to_class}
    pairs |= {(a, b) for a in classes for b in classes if a != b}
    for a, b in sorted(pairs):  # type: ignore[type-var]
        groups.append(Group("transition", from_class=a, to_class=b))
    for name in classes:
        groups.append(Group("appeared", cls=name))
        groups.append(Group("disappeared", cls=name))
    binary = {(t.subject, t.direction) for t in transitions.values() if t.subject and t.direction}
    for noun, direction in sorted(binary):  # type: ignore[type-var]
        groups.append(Group(direction, cls=noun))
        # A binary map declared to hold only one direction proves the other one absent.
        groups.append(Group("disappeared" if direction == "appeared" else "appeared", cls=noun))
    return groups


def _spectral_value(instance: Instance, name: str) -> tuple[bool, bool]:
    """(has the property, value is clear of the threshold) for a spectral property name."""
    if name in ("brighter", "darker"):
        return instance.brightness == name, instance.brightness_certain
    word = name.split()[-1]
    return instance.vegetation == word, instance.vegetation_certain


def _in_place(instances: list[Instance], cell: tuple[int, int]) -> list[Instance] | None:
    """Return the instances centred in ``cell``; None when any instance is near its border."""
    for inst in instances:
        if cell in inst.near_cells and len(inst.near_cells) > 1:
            return None
    return [i for i in instances if i.cell == cell]


def referents(
    instances: list[Instance],
    change: np.ndarray,
    transitions: dict[int, Transition],
    classes: tuple[str, ...],
    subject: str,
    has_nir: bool,
) -> tuple[list[Referent], dict[str, int]]:
    """Find every unambiguous referent of a pair, and count the ambiguous ones dropped per kind.

    Args:
        instances: the pair's described instances.
        change: the pair's transition-code map; no-target referents need zero changed pixels.
        transitions: transition per code of ``change``.
        classes: class names known for the input.
        subject: noun of a binary change map.
        has_nir: whether vegetation referents are possible.

    """
    out: list[Referent] = []
    dropped: dict[str, int] = {}

    def drop(kind: str) -> None:
        dropped[kind] = dropped.get(kind, 0) + 1

    def ids(items: Iterable[Instance]) -> frozenset[int]:
        return frozenset(i.id for i in items)

    height, width = change.shape
    changed = change > 0
    present = [transitions[int(c)] for c in np.unique(change) if c > 0]
    spectral_names = ["brighter", "darker"] + (
        ["vegetation gain", "vegetation loss"] if has_nir else []
    )
    for group in _groups(instances, transitions, classes, subject):
        members = [i for i in instances if group.selects(i.transition)]
        group_kind = {"all": "all", "transition": "class"}.get(group.mode, "direction")
        if members:
            out.append(Referent(group_kind, group, ids(members)))
        elif not any(group.selects(t) for t in present):
            # no changed pixel at all of this group, not even below the minimum instance size
            out.append(Referent("no_target", group, frozenset()))
        for row in range(3):
            for col in range(3):
                cell = (row, col)
                cell_pixels = changed[
                    row * height // 3 : (row + 1) * height // 3,
                    col * width // 3 : (col + 1) * width // 3,
                ]
                if not members:
                    continue
                local = _in_place(members, cell)
                if local is None:
                    drop("place")
                    continue
                if not local:
                    if group.mode == "all" and not cell_pixels.any():
                        out.append(Referent("no_target", group, frozenset(), place=cell))
                    continue
                out.append(Referent("place", group, ids(local), place=cell))
                if 2 <= len(local) <= MAX_COUNT:
                    out.append(Referent("count", group, ids(local), place=cell, count=len(local)))
                out.extend(_instance_referents(local, group, cell, drop))
        if 2 <= len(members) <= MAX_COUNT:
            out.append(Referent("count", group, ids(members), count=len(members)))
        if members:
            out.extend(_instance_referents(members, group, None, drop))
        for name in spectral_names:
            flags = [_spectral_value(i, name) for i in members]
            if not members:
                continue
            if not all(certain for _, certain in flags):
                drop("spectral")
                continue
            chosen = [i for i, (has, _) in zip(members, flags, strict=True) if has]
            if chosen:
                out.append(Referent("spectral", group, ids(chosen), spectral=name))
    return _unique(out), dropped


def _instance_referents(
    scope: list[Instance], group: Group, cell: tuple[int, int] | None, drop: Callable[[str], None]
) -> list[Referent]:
    """Single-instance referents in a scope: the only one, the largest/smallest, a unique shape."""
    found: list[Referent] = []
    if len(scope) == 1:
        only = scope[0]
        found.append(
            Referent(
                "instance", group, frozenset({only.id}), place=cell, count=1, area_m2=only.area_m2
            )
        )
        return found
    by_size = sorted(scope, key=lambda i: i.pixels, reverse=True)
    if by_size[0].pixels >= SIZE_MARGIN * by_size[1].pixels:
        largest = by_size[0]
        found.append(
            Referent(
                "instance",
                group,
                frozenset({largest.id}),
                place=cell,
                superlative="largest",
                area_m2=largest.area_m2,
            )
        )
    else:
        drop("instance")
    if by_size[-2].pixels >= SIZE_MARGIN * by_size[-1].pixels:
        smallest = by_size[-1]
        found.append(
            Referent(
                "instance",
                group,
                frozenset({smallest.id}),
                place=cell,
                superlative="smallest",
                area_m2=smallest.area_m2,
            )
        )
    if all(i.shape_certain for i in scope):
        for shape in ("elongated", "irregular"):
            matching = [i for i in scope if i.shape == shape]
            if len(matching) == 1:
                found.append(
                    Referent(
                        "instance",
                        group,
                        frozenset({matching[0].id}),
                        place=cell,
                        shape=shape,
                        area_m2=matching[0].area_m2,
                    )
                )
    return found


def _unique(items: list[Referent]) -> list[Referent]:
    seen: set[Referent] = set()
    out: list[Referent] = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def choose(items: list[Referent], limit: int, rng: random.Random) -> list[Referent]:
    """Pick at most ``limit`` referents, round-robin over kinds so every kind present shows."""
    by_kind: dict[str, list[Referent]] = {}
    for item in items:
        by_kind.setdefault(item.kind, []).append(item)
    queues = []
    for kind in KINDS:
        if kind in by_kind:
            queue = list(by_kind[kind])
            rng.shuffle(queue)
            queues.append(queue)
    chosen: list[Referent] = []
    while queues and len(chosen) < limit:
        for queue in list(queues):
            if len(chosen) >= limit:
                break
            chosen.append(queue.pop(0))
            if not queue:
                queues.remove(queue)
    return chosen
