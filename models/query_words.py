"""Does a query name what the bundled MTRefSeg-R1 was taught? Told before a run, torch-free.

The bundled checkpoint learned buildings, water (floods) and vegetation, their directions, places,
counts and sizes, and "any change" (:mod:`mtrs_geo.models.vocabulary`). Asked about something
else ("new ships", "purple elephants", "new roads" alone), it does not answer with an empty mask:
it keeps the words it knows ("new") and marks whatever changed that way, buildings mostly
(measured on the held-out pairs: "new ships" marked 23 % of the real new-building pairs, "new
buildings" 22 %). The run still answers (an analyst may ask "new roads" beside other queries),
but says so before it starts, with the taught words offered where a word looks misspelt ("new
buidings": "new buildings"); words the model ignores beside a taught class ("new buildings near
the river") are named too.

Only the words matter here, not the model: checkpoints trained elsewhere are not checked.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from mtrs_geo.models.query_text import is_any_change

# What a query can be about: the taught classes, their synonyms the sentence encoder maps onto
# them, and the words of "any change" (a query about changes in general, a size or a brightness).
TARGET_WORDS = frozenset(
    {
        # buildings (LEVIR-CD, EGY-BCD, synthetic roofs); 10 m built-up land (OSCD)
        "building", "buildings", "house", "houses", "structure", "structures", "construction",
        "constructions", "home", "homes", "dwelling", "dwellings", "built", "urban", "settlement",
        "settlements",
        # water and floods (OMBRIA, synthetic water)
        "water", "waters", "flood", "floods", "flooded", "flooding", "lake", "lakes", "pond",
        "ponds", "reservoir", "reservoirs", "river", "rivers",
        # vegetation (synthetic vegetation, cleared and grown)
        "vegetation", "tree", "trees", "greenery", "woodland", "woodlands", "forest", "forests",
        "woods", "bushes", "shrubs", "grass",
        # change itself, any change
        "change", "changes", "changed", "difference", "differences", "differ", "altered",
        "brighter", "darker",
    }
)  # fmt: skip
# Words of the taught grammar (CRAFT's templates, directions, places, counts, sizes) and the
# filler of a request ("please find ... in this image"): known, but about nothing by themselves.
GRAMMAR_WORDS = frozenset(
    {
        # directions and their time-reversed partners
        "new", "newly", "appeared", "appear", "appears", "appearing", "disappeared", "disappear",
        "disappearing", "added", "demolished", "demolition", "removed", "destroyed", "torn",
        "down", "vanished", "lost", "gained", "emerged", "gone", "cleared", "constructed",
        "replaced", "replacing", "former", "original", "before", "after", "earlier", "later",
        "first", "second", "increase", "decrease", "increased", "decreased", "expanded",
        "shrunk", "grew", "grown", "became", "become", "turned", "turn", "got", "converted",
        "formed", "that", "where", "recently", "recent", "planted", "burnt", "burned",
        # places, counts, sizes, shapes
        "north", "south", "east", "west", "northern", "southern", "eastern", "western",
        "centre", "center", "central", "middle", "top", "bottom", "left", "right", "upper",
        "lower", "corner", "side", "part", "half", "zero", "one", "two", "three", "four", "five",
        "six", "seven", "eight", "nine", "ten", "both", "all", "every", "each", "single",
        "only", "largest", "biggest", "smallest", "tiniest", "large", "small", "big", "about",
        "around", "square", "metres", "meters", "elongated", "long", "narrow", "linear",
        "irregularly", "shaped",
        # what a change is called, and the filler of a request
        "area", "areas", "region", "regions", "patch", "patches", "place", "places", "land",
        "any", "anything", "everything", "what", "which", "open", "please", "find", "show",
        "me", "mark", "highlight", "detect", "identify", "locate", "segment", "map", "get",
        "give", "see", "are", "is", "was", "were", "has", "have", "been", "be", "the", "a",
        "an", "of", "and", "or", "in", "on", "at", "to", "with", "by", "some", "there", "its",
        "it", "as", "into", "from", "for", "this", "these", "those", "image", "images",
        "scene", "scenes", "picture", "tile", "between", "dates", "date", "now", "then",
        "since", "here", "many", "several", "no", "not", "same", "occurred", "happened",
        "other", "others",
    }
)  # fmt: skip
# Taught as a phrase only: 10 m built-up land (OSCD) was asked as "new buildings and roads".
TAUGHT_PHRASES = ("buildings and roads",)
# Words not taught that the model knows by another name: offered in place of them.
BETTER_WORDS = {
    "inundation": "flooded areas",
    "inundations": "flooded areas",
    "inundated": "flooded",
}
_WORD = re.compile(r"[^\W\d_]+")  # letters of any script
TAUGHT = "buildings (houses, structures), water (flooded areas), vegetation (trees, greenery)"


@dataclass(frozen=True)
class QueryWords:
    """What a query's words name: the words the model ignores, and whether it names a target."""

    query: str
    unknown: tuple[str, ...]  # words neither a target nor the grammar's, in order, once each
    has_target: bool  # a taught class or change word, or an any-change query

    @property
    def untaught(self) -> bool:
        """Whether the query names nothing the model was taught: only unknown words and grammar."""
        return bool(self.unknown) and not self.has_target

    def suggestion(self) -> str | None:
        """Return the query with each misspelt or untaught word replaced (None: none is)."""
        known = sorted(TARGET_WORDS | GRAMMAR_WORDS)
        text, changed = self.query.lower(), False
        for word in self.unknown:
            close = difflib.get_close_matches(word, known, n=1, cutoff=0.8)
            better = BETTER_WORDS.get(word) or (close[0] if close else None)
            if better is not None:
                text, changed = re.sub(rf"\b{re.escape(word)}\b", better, text), True
        return text if changed else None


def query_words(query: str) -> QueryWords:
    """Sort a query's words into targets, grammar and words the bundled model was not taught."""
    text = query.lower()
    for phrase in TAUGHT_PHRASES:
        text = text.replace(phrase, "buildings")
    words = _WORD.findall(text)
    unknown = [w for w in words if w not in TARGET_WORDS and w not in GRAMMAR_WORDS]
    has_target = is_any_change(query) or any(w in TARGET_WORDS for w in words)
    return QueryWords(query, tuple(dict.fromkeys(unknown)), has_target)


def query_notes(queries: list[str]) -> list[str]:
    """Return a note for each query with words the bundled model was not taught (none: none).

    A query naming nothing it was taught is answered with other changes, and its note says so,
    with the taught words offered for misspelt or untaught ones; a query naming a taught class
    is answered without the other words.
    """
    notes = []
    for query in queries:
        found = query_words(query)
        if not found.unknown:
            continue
        named = ", ".join(repr(word) for word in found.unknown)
        if found.untaught:
            suggestion = found.suggestion()
            hint = f"did you mean {suggestion!r}? " if suggestion else ""
            notes.append(
                f"note: the bundled model was not taught {named}: its answer to {query!r} shows "
                f"the changes it knows in that direction instead; {hint}it knows {TAUGHT} and "
                "any change"
            )
        else:
            them = "it" if len(found.unknown) == 1 else "them"
            notes.append(
                f"note: the bundled model was not taught {named} and answers {query!r} "
                f"without {them}"
            )
    return notes
