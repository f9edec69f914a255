"""Ask each question both ways in time: ``mtrefseg-r1-both-ways``.

"New buildings" from the before to the after image is the same change as "removed buildings" from
the after to the before image. The bundled checkpoint was trained on pairs whose dates were swapped
with the direction words of their queries
(:func:`mtrs_geo.models.direction_words.swap_direction_words`), so it can be asked both
questions; averaging the two answers (a test-time ensemble over time, like averaging over flips;
the backbone runs once for both, the fusion and the decoder twice) is steadier than either alone.
Measured on held-out pairs (``benchmarks/language.py --model mtrefseg-r1-both-ways``): see the
README.

A query is asked the other way only when its direction can be reversed with confidence
(:func:`reversed_query`); any other query is asked once, as ``mtrefseg-r1`` asks it. Once a run
says its threshold (:meth:`TimeSymmetricModel.cut_at`), a query is asked the other way only of
the tiles where its first answer comes near it (:data:`ASK_BACK_SHARE`).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mtrs_geo.model_api import ChangeModel, ModelInfo
from mtrs_geo.models.both_ways import AskBack, BothWays
from mtrs_geo.models.direction_words import swap_direction_words
from mtrs_geo.models.inference import MODEL_INFO as ONE_WAY_INFO
from mtrs_geo.models.inference import build_model as build_one_way
from mtrs_geo.models.query_text import is_any_change

# Phrases the direction-word swap does not know, with their time-reversed partners. A phrase is
# replaced as a whole (case-insensitive), before the word swap, and its replacement is not swapped
# again.
PHRASES: tuple[tuple[str, str], ...] = (
    ("new water", "water that disappeared"),
    ("new vegetation", "cleared vegetation"),
    ("newly flooded areas", "water that disappeared"),
    ("flooded areas", "water that disappeared"),
    ("flooded area", "water that disappeared"),
    ("flooded land", "water that disappeared"),
    ("newly built", "demolished"),
    ("torn down", "newly built"),
    ("demolished", "newly built"),
    ("cleared", "new"),
    ("lost", "new"),
    ("became darker", "became brighter"),
    ("became brighter", "became darker"),
)
# Words that mark a change from one thing into another, or a direction the swap cannot reverse: a
# query with one of them is asked one way only.
UNREVERSIBLE = frozenset(
    {"into", "turned", "converted", "replaced", "from", "burnt", "burned", "flooded", "planted"}
)
# Once a run's threshold t is known (cut_at), a query is asked backward only of the pairs where
# its forward answer reaches this share of t somewhere. Elsewhere the mean of the two answers
# could reach t only where the backward answer exceeded 2t - t/4 (0.875 at the default 0.5;
# nowhere above t = 4/7), the two directions disagreeing that far: on the held-out board
# (benchmarks/language.py, 858 tile answers, 23 % of them asked one way) no pixel's mask changed.
# A tile without the change asked about, most of a real scene, costs a query one way.
ASK_BACK_SHARE = 0.25
_PHRASE = re.compile(
    "|".join(rf"\b{re.escape(phrase)}\b" for phrase, _ in PHRASES), flags=re.IGNORECASE
)
_PARTNER = {phrase: partner for phrase, partner in PHRASES}
_WORD = re.compile(r"[A-Za-z]+")


def reversed_query(query: str) -> str | None:
    """Return the question ``query`` asks of the time-reversed pair; None when it is unclear.

    "new buildings" -> "removed buildings", "flooded areas" -> "water that disappeared"; "any
    change" (or no query) is the same both ways; a query with no direction word, or one describing
    a change from one thing into another ("farmland turned into construction sites"), gives None.
    """
    text = query.strip()
    if is_any_change(text):
        return text
    if {word.lower() for word in _WORD.findall(_PHRASE.sub(" ", text))} & UNREVERSIBLE:
        return None
    pieces: list[str] = []
    position = 0
    for match in _PHRASE.finditer(text):
        pieces += [swap_direction_words(text[position : match.start()])]
        pieces += [_PARTNER[match.group(0).lower()]]
        position = match.end()
    pieces.append(swap_direction_words(text[position:]))
    reverse = "".join(pieces)
    return None if reverse == text else reverse


def _both_ways(
    queries: Sequence[str | None],
) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
    """Return the queries, the reversed forms of the reversible ones, and which those are."""
    forward = tuple((query or "").strip() for query in queries)
    reverse = [reversed_query(text) for text in forward]
    backward = tuple(text for text in reverse if text is not None)
    return forward, backward, np.array([text is not None for text in reverse], dtype=bool)


@runtime_checkable
class AsksBothWays(Protocol):
    """A model that answers a batch both ways in time in one pass (one backbone pass per tile)."""

    def prepare_both_ways(self, forward: Sequence[str], backward: Sequence[str]) -> None:
        """Encode the queries asked from before to after and those asked from after to before."""

    def predict_both_ways(
        self, before: np.ndarray, after: np.ndarray, ask_back: AskBack | None = None
    ) -> BothWays:
        """Answer the forward queries of (before, after), the backward ones of (after, before).

        The queries are those of :meth:`prepare_both_ways`; the backbone runs once over both
        dates for both directions. ``ask_back`` (given the forward answers ``(Qf, b, H, W)`` of
        the pairs of one call) picks the pairs each backward query is asked of; without it, every
        pair is asked every query.

        Returns:
            The forward answers, which backward query was asked of which pair, and the backward
            answers (:data:`~mtrs_geo.models.both_ways.BothWays`).

        """


class TimeSymmetricModel(ChangeModel):
    """A query-aware model asked each query both ways in time; the two answers averaged.

    The inner model answers the queries on (before, after) and their reversed forms
    (:func:`reversed_query`) on (after, before): in one pass that runs the backbone once over
    both dates when it can (:class:`AsksBothWays`: the bundled model, in ONNX Runtime and in
    torch), else in two. A query that cannot be reversed keeps its one-way answer.
    """

    def __init__(self, inner: ChangeModel, info: ModelInfo) -> None:
        self.inner = inner
        self.info = info
        self.scene_pass = inner.scene_pass
        self._queries: tuple[str | None, ...] = (None,)
        self._forward: tuple[str, ...] = ("",)
        self._backward: tuple[str, ...] = ("",)  # the reversed forms of the reversible queries
        self._reversible = np.ones(1, dtype=bool)
        self._lock = threading.Lock()  # one question at a time: the inner model holds one
        self._ask_back_from: float | None = None  # every pair is asked backward (cut_at)

    @property
    def device(self) -> str:  # type: ignore[override]
        """Return the inner model's device."""
        return self.inner.device

    def to(self, device: str) -> TimeSymmetricModel:
        """Move the inner model to ``device``."""
        self.inner = self.inner.to(device)
        return self

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Open the inner model's session."""
        with self.inner.session():
            yield

    def preparing_note(self, queries: Sequence[str | None]) -> str | None:
        """Return the inner model's note about encoding the queries and their reversed forms."""
        forward, backward, _ = _both_ways(queries)
        return self.inner.preparing_note([*forward, *backward])

    def prepare(self, query: str | None) -> None:
        """Encode ``query`` and its reversed form."""
        self.prepare_queries([query])

    def prepare_queries(self, queries: Sequence[str | None]) -> None:
        """Encode the queries and the reversed forms of those that have one."""
        self._queries = tuple(queries)
        self._forward, self._backward, self._reversible = _both_ways(queries)
        with self._lock:
            if self._backward and isinstance(self.inner, AsksBothWays):
                self.inner.prepare_both_ways(self._forward, self._backward)
                return
            if self._backward:
                self.inner.prepare_queries(self._backward)  # encoded now, asked from the cache
            self.inner.prepare_queries(self._forward)

    def predict_queries(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Return ``(Q, B, H, W)``: the mean of each query's answers both ways where it has two.

        The inner model answers the queries on (before, after) and the reversed forms on
        (after, before), each pass (or half of its one pass) decoding only its own queries.
        """
        asked: np.ndarray | None = None  # the pairs asked backward: all, unless picked
        with self._lock:
            if self._backward and isinstance(self.inner, AsksBothWays):
                ask_back = None if self._ask_back_from is None else self._ask_back
                answers, asked, backward = self.inner.predict_both_ways(before, after, ask_back)
            else:
                self.inner.prepare_queries(self._forward)
                answers = self.inner.predict_queries(before, after)
                if not self._backward:
                    return answers  # no query can be reversed: asked one way
                self.inner.prepare_queries(self._backward)
                backward = self.inner.predict_queries(after, before)
        if not answers.flags.writeable:
            answers = answers.copy()
        if asked is None or asked.all():
            answers[self._reversible] = (answers[self._reversible] + backward) * np.float32(0.5)
            return answers
        for row, query in enumerate(np.flatnonzero(self._reversible)):
            pairs = np.flatnonzero(asked[row])
            answers[query, pairs] = (answers[query, pairs] + backward[row, pairs]) * np.float32(0.5)
        return answers

    def cut_at(self, threshold: float | None) -> None:
        """Ask a query backward only of the pairs whose forward answer reaches a share of it.

        The share of ``threshold`` is :data:`ASK_BACK_SHARE`; a query keeps its forward answer on
        any other pair. None: every pair is asked both ways.
        """
        self._ask_back_from = None if threshold is None else ASK_BACK_SHARE * threshold

    def _ask_back(self, forward: np.ndarray) -> np.ndarray:
        """Return ``(Qb, B)``: where a reversible query's forward answer reaches the floor."""
        assert self._ask_back_from is not None
        peaks = np.stack(
            [
                forward[query].reshape(len(forward[query]), -1).max(axis=1)
                for query in np.flatnonzero(self._reversible)
            ]
        )
        return peaks >= self._ask_back_from

    def predict(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Return ``(B, H, W)``: :meth:`predict_queries` of the first query."""
        return self.predict_queries(before, after)[0]

    def calibrate(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> None:
        """Calibrate the inner model."""
        self.inner.calibrate(before, after, valid)

    def calibrate_scene(self, batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Run the inner model's scene pass."""
        self.inner.calibrate_scene(batches)

    def calibration(self) -> dict[str, Any] | None:
        """Return the inner model's calibration state."""
        return self.inner.calibration()

    def restore_calibration(self, state: dict[str, Any]) -> None:
        """Restore the inner model's calibration state."""
        self.inner.restore_calibration(state)


NAME = "mtrefseg-r1-both-ways"
MODEL_INFO: ModelInfo = replace(
    ONE_WAY_INFO,
    name=NAME,
    description=(
        "the bundled MTRefSeg-R1 asked each query both ways in time (the query on before -> after "
        "and its reversed form on after -> before, averaged; the second only of the tiles where "
        "the first comes near the threshold): steadier masks, the backbone shared"
    ),
)


def build_model(device: str | None = None) -> ChangeModel:
    """Load the bundled MTRefSeg-R1 and wrap it (:class:`~mtrs_geo.errors.ModelError` if none)."""
    return TimeSymmetricModel(build_one_way(device=device), MODEL_INFO)
