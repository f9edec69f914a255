"""Rows polygonized in a thread of their own (mtrs_geo.background_vectorize)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from affine import Affine

from mtrs_geo.background_vectorize import BackgroundVectorizer
from mtrs_geo.vectorize import StreamingVectorizer


def _vectorizer() -> StreamingVectorizer:
    return StreamingVectorizer(60, 90, Affine(10.0, 0, 0, 0, -10.0, 900.0), "EPSG:32633", 0.5, 16)


def _speckle() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.random((90, 60), dtype=np.float32)


def _no_worker_left() -> bool:
    return not any(t.name == "mtrs-vectorize" for t in threading.enumerate())


def test_rows_polygonized_in_the_background_give_the_table_of_the_vectorizer_itself() -> None:
    values = _speckle()
    direct = _vectorizer()
    with BackgroundVectorizer(_vectorizer(), depth=1) as background:
        for first in range(0, 90, 7):  # runs of rows of several sizes: buffers are recycled
            direct.add_rows(first, values[first : first + 7])
            background.add_rows(first, values[first : first + 7])
            values[first : first + 7] = 0.0  # the rows handed on were copied
        table = background.result()
    expected = direct.result()
    assert len(table) > 10
    assert [g.wkb for g in table.geometry] == [g.wkb for g in expected.geometry]
    assert table["mean_score"].tolist() == expected["mean_score"].tolist()
    assert _no_worker_left()


def test_an_error_of_the_vectorizer_reaches_the_caller() -> None:
    values = _speckle()
    background = BackgroundVectorizer(_vectorizer())
    background.add_rows(10, values[10:20])  # rows must come in order: the worker fails
    with pytest.raises(ValueError, match="rows must come in order"):
        for first in range(20, 90, 10):
            background.add_rows(first, values[first : first + 10])
        background.result()
    background.close()
    assert _no_worker_left()


def test_closing_before_every_row_came_ends_the_worker() -> None:
    with BackgroundVectorizer(_vectorizer()) as background:
        background.add_rows(0, _speckle()[:30])
    assert _no_worker_left()
    with pytest.raises(ValueError, match="closed"):
        background.add_rows(30, _speckle()[30:60])
