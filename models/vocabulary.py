"""What the bundled MTRefSeg-R1 can be asked: the classes, directions and places it was taught.

The bundled checkpoint learned its words from CRAFT's grammar over synthetic object-level changes
and real labelled pairs (``mtrs_geo.craft.synthetic``, ``mtrs_geo.models.data.craft_stream``).
Other words reach it through the sentence encoder's similarity only: close synonyms work, new
concepts (roads, ships, cars, crops by type) do not.
"""

from __future__ import annotations

CLASSES: dict[str, tuple[str, ...]] = {
    "building": ("buildings", "houses", "structures"),
    "water": ("water", "flood water", "open water"),
    "vegetation": ("vegetation", "trees", "greenery", "woodland"),
    "urban change (10 m Sentinel-2)": ("new buildings and roads",),
}
DIRECTIONS: dict[str, tuple[str, ...]] = {
    "appeared": (
        "new",
        "newly built",
        "constructed",
        "added",
        "that appeared",
        "areas that became",
    ),
    "disappeared": ("demolished", "removed", "destroyed", "torn down", "lost", "that disappeared"),
}
PLACES = (
    "north, south, east, west, north-west, ... (north-up tiles)",
    "top, bottom, left, right, top-left, ..., centre",
)
OTHER = (
    'water that appeared is also "flooded areas" ("flooded land", "newly flooded areas")',
    '"any change" (also "all changes", "changes", or no query): every change',
    'counts ("both new buildings", "the three areas that changed")',
    'size ("the largest new building", "the change of about 800 square metres")',
    'brightness ("changes that became darker")',
    "a query about a class or direction that did not change gives an empty mask",
)
LIMITS = (
    "places and sizes are judged per tile (256 px by default), not over the whole scene",
    "classes outside the list (roads alone, cars, ships, crop types) are not understood: asked "
    "about one, the model marks the changes it knows in that direction ('new ships': new "
    "buildings), so a run says so in a note before it starts, with the taught word offered for a "
    "misspelt or untaught one ('new buidings': 'new buildings'; 'inundated areas': 'flooded "
    "areas'), and names the words it ignores beside a taught class (mtrs_geo.models.query_words)",
    "RGB only (3 bands); trained at 0.5-10 m per pixel",
)


def summary() -> str:
    """One line for ``mtrs models``."""
    classes = ", ".join(CLASSES)
    return (
        f"classes: {classes}; directions: new/built vs demolished/removed/destroyed; "
        "places (compass or image words), counts, sizes, 'any change'; "
        "an unrequested class or direction gives an empty mask"
    )


def markdown() -> str:
    """Render the vocabulary as a markdown table (README and model card)."""
    lines = ["| what | words the model was taught |", "| --- | --- |"]
    for name, words in CLASSES.items():
        lines.append(f"| class: {name} | {', '.join(words)} |")
    for name, words in DIRECTIONS.items():
        lines.append(f"| direction: {name} | {', '.join(words)} |")
    lines.append(f"| places | {'; '.join(PLACES)} |")
    for item in OTHER:
        lines.append(f"| also | {item} |")
    lines += ["", "Limits: " + "; ".join(LIMITS) + "."]
    return "\n".join(lines)
