"""A query naming what the bundled model was not taught is told so before the run."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_run import files_in, run_mtrs

from mtrs_geo.craft import language
from mtrs_geo.models.query_words import GRAMMAR_WORDS, TARGET_WORDS, query_notes, query_words


@pytest.mark.parametrize(
    "query",
    [
        "new buildings",
        "NEW BUILDINGS",
        "buildings that were torn down",
        "construction of new structures",
        "please find the new buildings in this image",
        "flooded areas",
        "water that appeared",
        "cleared vegetation",
        "new buildings and roads",
        "the largest new building in the north-west",
        "the three areas that changed",
        "changes that became darker",
        "any change",
        "",
    ],
)
def test_taught_wordings_pass_without_a_note(query: str) -> None:
    assert query_notes([query]) == []


@pytest.mark.parametrize(
    ("query", "unknown"),
    [
        ("new ships", "'ships'"),
        ("new roads", "'roads'"),  # taught only beside buildings (10 m built-up land)
        ("purple elephants", "'purple', 'elephants'"),
        ("zones inondées", "'zones', 'inondées'"),
    ],
)
def test_a_query_naming_nothing_taught_is_said_to_get_other_changes(
    query: str, unknown: str
) -> None:
    (note,) = query_notes([query])
    assert note.startswith(f"note: the bundled model was not taught {unknown}: its answer to")
    assert "shows the changes it knows in that direction instead" in note


def test_a_misspelt_or_untaught_word_gets_the_taught_one_offered() -> None:
    assert query_words("new buidings").suggestion() == "new buildings"
    assert query_words("flodded areas").suggestion() == "flooded areas"
    assert query_words("inundated areas").suggestion() == "flooded areas"
    (note,) = query_notes(["new buidings"])
    assert "did you mean 'new buildings'?" in note


def test_words_ignored_beside_a_taught_class_are_named_in_a_note() -> None:
    notes = query_notes(["trees cleared near the river", "new buildings"])
    assert notes == [
        "note: the bundled model was not taught 'near' and answers 'trees cleared near the "
        "river' without it"
    ]


def test_every_word_of_the_grammar_for_the_taught_classes_is_known() -> None:
    # The words CRAFT's templates put around a class name, as the training stream used them.
    templates = [
        *language.CHANGE_PLURAL, *language.CHANGE_SINGULAR, *language.BUILT_NEW,
        *language.BUILT_NEW_ONE, *language.BUILT_GONE, *language.BUILT_GONE_ONE,
        *language.OTHER_NEW, *language.OTHER_GONE, *language.MASS_NEW, *language.MASS_GONE,
        *language.MASS_NEW_ONE, *language.MASS_GONE_ONE, *language.LARGEST, *language.SMALLEST,
        *language.NUMBER_WORDS, *(w for words in language.SPECTRAL.values() for w in words),
        *language.COMPASS_ADJECTIVE, *language.COMPASS_ADJECTIVE.values(),
    ]  # fmt: skip
    words = {w for text in templates for w in language.tokens(text.format(p="", s="", c=""))}
    assert words - (TARGET_WORDS | GRAMMAR_WORDS) == set()


def test_the_run_says_so_and_answers_and_cva_is_not_checked(tmp_path: Path) -> None:
    told = run_mtrs("detect", "--sample", "-q", "new ships", "-o", tmp_path / "c.geojson")
    assert told.code == 0, told.err
    assert "not taught 'ships'" in told.err
    assert "polygon" in told.out  # answered all the same
    blind = run_mtrs(
        "detect", "--sample", "--model", "cva", "-q", "new ships", "-o", tmp_path / "d.geojson"
    )
    assert "not taught" not in blind.err and "ignores the query" in blind.err
    assert sorted(files_in(tmp_path)) == ["c.geojson", "d.geojson"]
