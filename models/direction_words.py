"""Direction words and their time-reversed partners ("new" <-> "removed", "built" <-> "demolished").

A query about a pair still describes the change once the dates are swapped if its direction words
are swapped with them: training's date swap (:mod:`mtrs_geo.models.augment`) and the model asked
both ways in time (:mod:`mtrs_geo.models.time_symmetric`) rewrite queries with
:func:`swap_direction_words`. No torch here: the CPU runtime imports it.
"""

from __future__ import annotations

import re

# Each word and its time-reversed partner; the mapping is applied in both directions.
DIRECTION_PAIRS: tuple[tuple[str, str], ...] = (
    ("new", "removed"),
    ("appeared", "disappeared"),
    ("appearing", "disappearing"),
    ("appear", "disappear"),
    ("built", "demolished"),
    ("construction", "demolition"),
    ("constructed", "destroyed"),
    ("added", "vanished"),
    ("gained", "lost"),
    ("emerged", "gone"),
    ("before", "after"),
    ("earlier", "later"),
    ("first", "second"),
    ("increase", "decrease"),
    ("increased", "decreased"),
    ("expanded", "shrunk"),
)
_SWAP = {a: b for a, b in DIRECTION_PAIRS} | {b: a for a, b in DIRECTION_PAIRS}
_WORD = re.compile(r"[A-Za-z]+")


def swap_direction_words(text: str) -> str:
    """Rewrite a query for the time-reversed pair ("new buildings" -> "removed buildings")."""

    def repl(match: re.Match[str]) -> str:
        word = match.group(0)
        partner = _SWAP.get(word.lower())
        if partner is None:
            return word
        if word.isupper():
            return partner.upper()
        return partner.capitalize() if word[0].isupper() else partner

    return _WORD.sub(repl, text)
