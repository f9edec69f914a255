"""GeoPackage outputs: the names of a run's layers, and what an existing file there holds.

A run writes its polygons to a layer named after the file (``changes.gpkg``: ``changes``) and,
with several queries, one layer per query (``changes_new_buildings``). GeoPackage table names are
UTF-8, so a query keeps its own letters (``changes_道路``); GDAL reserves the prefix ``gpkg`` and
SQLite ``sqlite_``, so a file whose name starts with one gets layers that start with
``changes_`` (``gpkg_roads.gpkg``: ``changes_gpkg_roads``).

A run replaces an existing GeoPackage whole, like any output, but only when it holds nothing but
an earlier run's layers: a file that holds anything else (a survey layer, QGIS styles or a QGIS
project) is refused, so that nothing in it is lost.
"""

from __future__ import annotations

import contextlib
import sqlite3
import unicodedata
from collections.abc import Collection, Sequence
from pathlib import Path

from mtrs_geo.errors import InputError

# Table-name prefixes GDAL (case-insensitive "gpkg") and SQLite ("sqlite_") refuse for a layer.
RESERVED_PREFIXES = ("gpkg", "sqlite_")
SAFE_PREFIX = "changes_"
# Tables of the GeoPackage format and of SQLite itself, not layers anyone wrote.
_SYSTEM_PREFIXES = ("gpkg_", "gpkgext_", "sqlite_")
_GDAL_PLACEHOLDER = "ogr_empty_table"  # what GDAL puts in a GeoPackage without a table
_RTREE_SHADOWS = ("_node", "_parent", "_rowid")
SHOWN_NAMES = 5  # foreign layers named in an error line


def layer_name(stem: str) -> str:
    """Return the run's (first) layer in a GeoPackage named ``<stem>.gpkg``: the stem, if allowed.

    A stem that starts with a reserved prefix (``gpkg``, ``sqlite_``; any case) gets
    :data:`SAFE_PREFIX` in front: ``gpkg_roads`` -> ``changes_gpkg_roads``.
    """
    return SAFE_PREFIX + stem if stem.lower().startswith(RESERVED_PREFIXES) else stem


def _word_character(char: str) -> bool:
    """Whether ``char`` belongs in a layer name: a letter, a digit or a combining mark."""
    return char.isalnum() or unicodedata.category(char).startswith("M")


def query_slug(query: str) -> str:
    """Return the words of a query for a layer name: letters and digits of any script, lower case.

    Every run of other characters becomes one ``_``: ``"Nouveaux bâtiments!"`` ->
    ``nouveaux_bâtiments``; a query without a letter or digit gives ``""``. Combining marks stay
    with their letter (the vowel signs of Devanagari, say).
    """
    text = unicodedata.normalize("NFC", query).lower()
    return "_".join("".join(c if _word_character(c) else " " for c in text).split())


def layer_names(stem: str, queries: Sequence[str]) -> list[str]:
    """Return the GeoPackage layer of each query: ``<layer>_<query's words>``, unique.

    ``<layer>`` is :func:`layer_name` of the stem. The empty query is ``<layer>_any_change``; a
    query without a letter or digit is named by its position (``<layer>_query3``). A name given
    before gets ``_2``, ``_3``, ... (compared without case, as SQLite compares table names).
    """
    base = layer_name(stem)
    taken = {base.casefold()}
    names: list[str] = []
    for position, query in enumerate(queries, 1):
        words = query_slug(query) if query.strip() else "any_change"
        name = f"{base}_{words or f'query{position}'}"
        unique, count = name, 1
        while unique.casefold() in taken:
            count += 1
            unique = f"{name}_{count}"
        taken.add(unique.casefold())
        names.append(unique)
    return names


def _is_system_table(name: str, rtrees: Collection[str]) -> bool:
    """Whether a table belongs to the GeoPackage format, SQLite or a spatial index."""
    lowered = name.lower()
    if lowered.startswith(_SYSTEM_PREFIXES) or lowered == _GDAL_PLACEHOLDER:
        return True
    return name in rtrees or any(
        name == rtree + shadow for rtree in rtrees for shadow in _RTREE_SHADOWS
    )


def is_run_layer(
    name: str, columns: Collection[str], base: str, attributes: Collection[str]
) -> bool:
    """Whether a table is a layer an earlier run wrote to this file (and this run replaces).

    It is named ``<base>`` or ``<base>_...`` (without case) and holds every change attribute.
    """
    lowered, prefix = name.lower(), base.lower()
    named = lowered == prefix or lowered.startswith(prefix + "_")
    return named and set(attributes) <= set(columns)


def _columns(database: sqlite3.Connection, table: str) -> set[str]:
    """Return the column names of a table or view."""
    rows = database.execute("SELECT name FROM pragma_table_info(?)", (table,)).fetchall()
    return {row[0] for row in rows}


def _tables(path: Path) -> list[tuple[str, str, set[str]]] | None:
    """Return ``(kind, name, columns)`` of the tables and views of a SQLite file (None: not one).

    The GeoPackage's own tables, SQLite's and the spatial indexes are left out.

    Raises:
        InputError: the file is a database that cannot be read (locked, unreadable).

    """
    try:
        uri = path.resolve().as_uri() + "?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as database:
            rows = database.execute(
                "SELECT type, name, coalesce(sql, '') FROM sqlite_master "
                "WHERE type IN ('table', 'view')"
            ).fetchall()
            rtrees = {name for _, name, sql in rows if "using rtree" in sql.lower()}
            return [
                (kind, name, _columns(database, name))
                for kind, name, _ in rows
                if not _is_system_table(name, rtrees)
            ]
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB:
            return None
        raise InputError(f"cannot read {path} to see which layers it holds: {exc}") from exc


def foreign_layers(path: Path, attributes: Collection[str]) -> list[str]:
    """Return the layers and tables of an existing GeoPackage that a run to it would not write.

    Args:
        path: the ``.gpkg`` output; a missing file, or a file that is not a database, has none.
        attributes: the columns every layer of a run holds.

    Raises:
        InputError: the file is a database that cannot be read.

    """
    path = Path(path)
    if not path.is_file():
        return []
    tables = _tables(path) or []
    base = layer_name(path.stem)
    return [
        name
        for kind, name, columns in tables
        if kind != "table" or not is_run_layer(name, columns, base, attributes)
    ]


def check_geopackage_output(path: Path, attributes: Collection[str]) -> None:
    """Refuse a GeoPackage output whose existing file holds layers the run would not write back.

    The run replaces the file whole; an earlier run's layers (:func:`is_run_layer`) go with it.

    Raises:
        InputError: the file holds other layers or tables (named in the message), or cannot be
            read.

    """
    others = foreign_layers(path, attributes)
    if not others:
        return
    shown = ", ".join(repr(name) for name in others[:SHOWN_NAMES])
    if len(others) > SHOWN_NAMES:
        shown += f" and {len(others) - SHOWN_NAMES} more"
    raise InputError(
        f"{path} already holds layers that mtrs did not write ({shown}); replacing it would lose "
        "them: write to another file (and copy the layers into yours with QGIS or ogr2ogr -update)"
    )
