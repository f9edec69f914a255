"""The expression grammar: synonyms and word-order variety, offline and deterministic with a seed.

:func:`realize` turns a :class:`~mtrs_geo.craft.expressions.Referent` into one English phrase,
drawing every choice from the given ``random.Random``; the same seed gives the same words.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable

from mtrs_geo.craft.expressions import Group, Referent
from mtrs_geo.craft.perception import CELL_WORDS

# Classes whose appearance reads as construction and whose disappearance as demolition.
BUILT_CLASSES = {"building", "buildings", "house", "houses", "built-up", "urban", "urban area"}
# Mass nouns take no plural "s" and read as areas.
MASS_NOUNS = {
    "farmland", "water", "vegetation", "low vegetation", "grass", "bare land", "soil", "sand",
    "forest", "cropland", "grassland", "bare soil", "snow", "ice", "impervious surface", "urban",
    "built-up", "trees", "woodland", "wetland", "playground", "change",
}  # fmt: skip
NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
]

CHANGE_PLURAL = [
    "changes", "changed areas", "changed regions", "areas that changed", "altered areas",
    "areas where changes occurred", "areas that differ from before", "places of difference",
]  # fmt: skip
CHANGE_SINGULAR = ["change", "changed area", "changed region", "altered area"]
BUILT_NEW = [
    "new {p}", "newly built {p}", "newly constructed {p}", "{p} that were built",
    "{p} that appeared", "{p} that were constructed", "newly added {p}", "{p} that appear",
    "{p} that appear new",
]  # fmt: skip
BUILT_NEW_ONE = ["new {s}", "newly built {s}", "newly constructed {s}", "newly added {s}"]
BUILT_GONE = [
    "demolished {p}", "removed {p}", "{p} that were torn down", "{p} that disappeared",
    "{p} that were demolished", "vanished {p}", "original {p} that disappear",
    "{p} that were replaced", "destroyed {p}", "{p} that were destroyed",
]  # fmt: skip
BUILT_GONE_ONE = ["demolished {s}", "removed {s}", "vanished {s}", "torn-down {s}", "destroyed {s}"]
OTHER_NEW = ["new {p}", "{p} that appeared", "newly appeared {p}", "added {p}"]
OTHER_NEW_ONE = ["new {s}", "newly appeared {s}", "added {s}"]
OTHER_GONE = ["removed {p}", "{p} that disappeared", "lost {p}", "{p} that were removed"]
OTHER_GONE_ONE = ["removed {s}", "lost {s}", "vanished {s}"]
MASS_NEW = ["areas that became {c}", "new {c} areas", "{c} that appeared", "newly formed {c}"]
MASS_NEW_ONE = ["area that became {c}", "new {c} area", "newly formed {c} patch"]
MASS_GONE = [
    "areas where {c} disappeared", "lost {c}", "{c} that was removed", "former {c} areas",
    "areas that were {c} before", "original {c} that was replaced",
]  # fmt: skip
MASS_GONE_ONE = ["area where {c} disappeared", "former {c} area", "patch of lost {c}"]
TRANSITION = [
    "{a} turned into {b}", "{a} that became {b}", "{a} converted to {b}", "{a} replaced by {b}",
    "areas where {a} changed to {b}", "{b} replacing former {a}", "{b} in place of former {a}",
]  # fmt: skip
TRANSITION_ONE = ["area where {a} turned into {b}", "patch of {a} replaced by {b}"]
TRANSITION_COUNTED = ["areas where {a} turned into {b}", "patches of {a} replaced by {b}"]
MASS_NEW_COUNTED = ["areas that became {c}", "new {c} areas", "patches of new {c}"]
MASS_GONE_COUNTED = ["areas where {c} disappeared", "former {c} areas", "patches of lost {c}"]
SPECTRAL = {
    "brighter": ["that became brighter", "that turned brighter", "that got brighter"],
    "darker": ["that became darker", "that turned darker", "that got darker"],
    "vegetation gain": ["where vegetation grew", "with new vegetation", "where greenery appeared"],
    "vegetation loss": [
        "where vegetation was lost", "where trees were removed", "that cleared vegetation"
    ],
}  # fmt: skip
SHAPE_WORDS = {
    "elongated": ["elongated", "long and narrow", "linear"],
    "irregular": ["irregularly shaped"],
}
LARGEST = ["largest", "biggest"]
SMALLEST = ["smallest", "tiniest"]
COMPASS_ADJECTIVE = {
    "north": "northern", "south": "southern", "east": "eastern", "west": "western",
    "north-west": "north-western", "north-east": "north-eastern", "south-west": "south-western",
    "south-east": "south-eastern", "centre": "central",
}  # fmt: skip


def plural(name: str) -> str:
    """Plural of a class noun (mass nouns and words already ending in s stay as they are)."""
    if name in MASS_NOUNS or name.endswith("s"):
        return name
    return name + "s"


def singular(name: str) -> str:
    """Singular of a class noun (``buildings`` -> ``building``)."""
    if name in MASS_NOUNS:
        return name
    if name.endswith("ies"):
        return name[:-3] + "y"
    if name.endswith("s") and not name.endswith("ss"):
        return name[:-1]
    return name


def place_phrase(cell: tuple[int, int], georeferenced: bool, rng: random.Random) -> str:
    """Words for a 3x3 cell: compass words for georeferenced images, top/left words otherwise."""
    compass, image = CELL_WORDS[cell]
    if georeferenced:
        options = [f"in the {compass}", f"in the {COMPASS_ADJECTIVE[compass]} part"]
        if compass == "centre":
            options.append("in the middle of the scene")
        else:
            options.append(f"in the {compass} of the scene")
        return rng.choice(options)
    if image == "centre":
        return rng.choice(
            ["in the centre", "in the middle", "in the centre of the image", "around the centre"]
        )
    spaced = image.replace("-", " ")
    if "-" in image:
        upper = image.replace("top", "upper").replace("bottom", "lower").replace("-", " ")
        return rng.choice([f"in the {image} corner", f"at the {spaced}", f"in the {upper} part"])
    if image in ("top", "bottom"):
        return rng.choice(
            [
                f"at the {image}",
                f"in the {image} part",
                f"along the {image} edge",
                f"near the {image}",
            ]
        )
    return rng.choice(
        [
            f"on the {image}",
            f"in the {image} part",
            f"on the {image} side",
            f"beside the {image} edge",
        ]
    )


def group_phrase(group: Group, one: bool, rng: random.Random, counted: bool = False) -> str:
    """Phrase a group as a noun phrase: plural by default, singular when ``one``.

    ``counted`` asks for a countable plural ("areas where farmland turned into buildings"), so a
    number can stand before it even when the class is a mass noun.
    """
    if group.mode == "all":
        subject = group.subject
        if subject and subject != "change":
            if one:
                return rng.choice(
                    [f"changed {singular(subject)}", f"{singular(subject)} that changed"]
                )
            noun = plural(subject)
            return rng.choice(
                [f"changed {noun}", f"{noun} that changed", f"{singular(noun)} changes"]
            )
        return rng.choice(CHANGE_SINGULAR if one else CHANGE_PLURAL)
    if group.mode == "transition":
        options = TRANSITION_ONE if one else (TRANSITION_COUNTED if counted else TRANSITION)
        a, b = plural(group.from_class or ""), plural(group.to_class or "")
        return rng.choice(options).format(a=a, b=b)
    name = group.cls or "change"
    if name in ("urban", "built-up"):
        name = f"{name} area"
    appeared = group.mode == "appeared"
    if name in MASS_NOUNS:
        if one:
            options = MASS_NEW_ONE if appeared else MASS_GONE_ONE
        elif counted:
            options = MASS_NEW_COUNTED if appeared else MASS_GONE_COUNTED
        else:
            options = MASS_NEW if appeared else MASS_GONE
        return rng.choice(options).format(c=name)
    noun = singular(name)
    built = noun in BUILT_CLASSES or plural(noun) in BUILT_CLASSES or noun.endswith("area")
    if appeared:
        options = (
            (BUILT_NEW_ONE if one else BUILT_NEW)
            if built
            else (OTHER_NEW_ONE if one else OTHER_NEW)
        )
    else:
        options = (
            (BUILT_GONE_ONE if one else BUILT_GONE)
            if built
            else (OTHER_GONE_ONE if one else OTHER_GONE)
        )
    return rng.choice(options).format(p=plural(noun), s=noun)


def _number(count: int, rng: random.Random) -> str:
    if count < len(NUMBER_WORDS) and rng.random() < 0.6:
        return NUMBER_WORDS[count]
    return str(count)


def _area(area_m2: float) -> str:
    if area_m2 >= 100_000:
        return f"about {area_m2 / 10_000:.0f} hectares"
    rounded = float(f"{area_m2:.2g}")
    return f"about {rounded:,.0f} square metres"


def _with_place(noun: str, place: str | None, rng: random.Random) -> str:
    """Attach a place before or after a noun phrase (word-order variety)."""
    if place is None:
        return noun
    order = rng.random()
    if order < 0.55:
        return f"{noun} {place}"
    if order < 0.8:
        return f"{place}, {noun}"
    return f"{noun} located {place}"


def realize(referent: Referent, georeferenced: bool, rng: random.Random) -> str:
    """One English expression for a referent."""
    place = None if referent.place is None else place_phrase(referent.place, georeferenced, rng)
    one = len(referent.instance_ids) == 1 and referent.kind == "instance"
    if referent.kind == "instance":
        noun = group_phrase(referent.group, True, rng)
        if referent.superlative:
            word = rng.choice(LARGEST if referent.superlative == "largest" else SMALLEST)
            head = f"the {word} {noun}"
        elif referent.shape:
            head = f"the {rng.choice(SHAPE_WORDS[referent.shape])} {noun}"
        else:
            head = rng.choice([f"the only {noun}", f"the single {noun}", f"the {noun}"])
        if referent.area_m2 is not None and rng.random() < 0.3:
            head = f"{head}, {_area(referent.area_m2)},"
            if place is None:
                head = head.rstrip(",")
        text = _with_place(head, place, rng)
    elif referent.kind == "count" and referent.count is not None:
        noun = group_phrase(referent.group, False, rng, counted=True)
        if referent.count == 2:
            head = rng.choice([f"the two {noun}", f"both {noun}"])
        else:
            number = _number(referent.count, rng)
            head = rng.choice([f"the {number} {noun}", f"all {number} {noun}"])
        text = _with_place(head, place, rng)
    elif referent.kind == "spectral" and referent.spectral:
        noun = group_phrase(referent.group, False, rng)
        for _ in range(8):  # a noun phrase with its own clause reads badly before "that became ..."
            if not re.search(r"\b(that|where)\b", noun):
                break
            noun = group_phrase(referent.group, False, rng)
        else:
            noun = "changes"
        text = _with_place(f"{noun} {rng.choice(SPECTRAL[referent.spectral])}", place, rng)
    else:
        noun = group_phrase(referent.group, one, rng)
        lead = rng.choice(["", "", "all ", "the "]) if referent.group.mode != "transition" else ""
        text = _with_place(f"{lead}{noun}", place, rng)
    return re.sub(r"\s+", " ", text).strip().rstrip(",")


def vocabulary() -> set[str]:
    """Every word the grammar can produce (before class names are filled in)."""
    texts: list[str] = [*CHANGE_PLURAL, *CHANGE_SINGULAR, *BUILT_NEW, *BUILT_NEW_ONE, *BUILT_GONE]
    texts += [*BUILT_GONE_ONE, *MASS_NEW, *MASS_NEW_ONE, *MASS_GONE, *MASS_GONE_ONE, *TRANSITION]
    texts += [*OTHER_NEW, *OTHER_NEW_ONE, *OTHER_GONE, *OTHER_GONE_ONE]
    texts += [*TRANSITION_COUNTED, *MASS_NEW_COUNTED, *MASS_GONE_COUNTED]
    texts += [*TRANSITION_ONE, *LARGEST, *SMALLEST, *NUMBER_WORDS, *COMPASS_ADJECTIVE.values()]
    texts += [w for words in SPECTRAL.values() for w in words]
    texts += [w for words in SHAPE_WORDS.values() for w in words]
    texts += [w for pair in CELL_WORDS.values() for w in pair]
    texts += ["the only single all located in on at along edge side corner part upper lower middle"]
    texts += ["near beside around centre"]
    texts += ["image scene of about square metres hectares building buildings house houses"]
    words: set[str] = set()
    for text in texts:
        words.update(tokens(text.replace("{p}", "").replace("{s}", "").replace("{c}", "")))
    return words


def tokens(text: str) -> list[str]:
    """Lower-case word tokens of a text (hyphenated words split)."""
    return re.findall(r"[a-z]+", text.lower())


STOP_WORDS = {
    "the", "a", "an", "of", "and", "is", "are", "was", "were", "has", "have", "been", "be", "in",
    "on", "at", "to", "with", "by", "some", "there", "its", "it", "as", "into", "from", "for",
    "this",
    "that", "two", "scene", "scenes", "image", "images", "many", "several", "no", "nothing", "same",
}  # fmt: skip


def caption_coverage(
    captions: Iterable[str], words: set[str], top: int = 60
) -> tuple[float, list[str], list[tuple[str, int]]]:
    """How much of the real captions' change vocabulary the grammar covers.

    Args:
        captions: real change captions (e.g. LEVIR-MCI sentences).
        words: the grammar's vocabulary (:func:`vocabulary`).
        top: how many of the most frequent content words to check.

    Returns:
        Covered share of the ``top`` content words, the missing ones (most frequent first), and the
        top words with their counts.

    """
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(t for t in tokens(caption) if t not in STOP_WORDS and len(t) > 2)
    common = counts.most_common(top)
    missing = [w for w, _ in common if w not in words]
    share = 1.0 - len(missing) / len(common) if common else 0.0
    return share, missing, common
