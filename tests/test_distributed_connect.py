"""A --scheduler address where no Dask scheduler answers is one line, in bounded time."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from mtrs_geo import distributed
from mtrs_geo.errors import InputError


def serve(reply: bytes | None) -> Iterator[str]:
    """Listen on a free port; answer every connection with ``reply`` (None: never answer)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            if reply is None:
                held.append(connection)  # accepted, and silent
            else:
                connection.sendall(reply)
                connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        server.close()


@pytest.fixture
def http_server() -> Iterator[str]:
    yield from serve(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture
def silent_server() -> Iterator[str]:
    yield from serve(None)


def test_a_server_that_is_not_dask_is_named_so_not_an_internal_error(http_server: str) -> None:
    with pytest.raises(InputError, match="cannot reach the Dask scheduler at tcp://127.0.0.1"):
        distributed._connect(http_server)


def test_a_server_that_never_answers_is_given_up_on(
    silent_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT_S", 0.5)
    started = time.monotonic()
    with pytest.raises(InputError, match="no Dask answer in 6 s"):
        distributed._connect(silent_server)
    assert time.monotonic() - started < 15
