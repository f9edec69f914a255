"""A tiny threaded HTTP server with byte-range support, serving one folder on 127.0.0.1.

Run as ``python range_server.py FOLDER LOG``: prints the port on its first line, then answers
``GET``/``HEAD`` (``Range: bytes=a-b`` with 206) and appends one JSON line per request to LOG
(method, path, Range header, bytes sent). It runs in its own process: GDAL holds the GIL while it
opens a remote file, so a server thread in the reading process would never be scheduled.
Idle connections close after 10 s; the test that starts it stops it.
"""

from __future__ import annotations

import http.server
import json
import re
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse


def make_handler(root: Path, log: Path) -> type[http.server.BaseHTTPRequestHandler]:
    """A request handler serving files under ``root`` and logging to ``log``."""
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as GDAL's curl expects
        timeout = 10  # seconds an idle connection is kept: every handler thread ends

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _record(self, name: str, wanted: str | None, sent: int) -> None:
            with lock, log.open("a") as handle:
                handle.write(json.dumps([self.command, name, wanted, sent]) + "\n")

        def _serve(self, body: bool) -> None:
            name = unquote(urlparse(self.path).path)
            path = (root / name.lstrip("/")).resolve()
            if root not in path.parents or not path.is_file():
                self.send_error(404)
                self._record(name, None, 0)
                return
            size = path.stat().st_size
            wanted = self.headers.get("Range")
            start, end, status = 0, size - 1, 200
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted or "")
            if match:
                start = int(match.group(1))
                end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
                status = 206
            length = max(0, end - start + 1)
            self.send_response(status)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            self.send_header("Content-Type", "application/octet-stream")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            sent = 0
            if body:
                with path.open("rb") as handle:
                    handle.seek(start)
                    self.wfile.write(handle.read(length))
                sent = length
            self._record(name, wanted, sent)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # the JSON log says what was served

    return Handler


def main() -> None:
    """Serve ``sys.argv[1]`` until terminated."""
    root, log = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(root, log))
    httpd.daemon_threads = True
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
