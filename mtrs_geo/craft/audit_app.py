"""``mtrs craft audit``: a local Flask page to accept, reject, edit or skip triplets.

The page (``static/``) talks to a small JSON API; decisions go to :class:`DecisionStore` at once.
The server binds 127.0.0.1 only, and because any web page can make a browser send requests to
127.0.0.1 (or rebind its own name to it), every request is checked:

- the ``Host`` header must be ``127.0.0.1``, ``localhost`` or ``[::1]`` with the server's port
  (421 otherwise: a page of another site that rebinds its name to 127.0.0.1 sends its own name);
- a write must come from the page itself (``Origin`` and ``Sec-Fetch-Site``, where present; 403);
- every API and image request carries a secret token, one per auditor, made at each start and
  printed in the page's link (``/?token=...``); the page sends it in the ``X-Audit-Token`` header
  (images: the ``token`` query parameter) and the server takes the auditor from the token (403
  without a valid one).
"""

from __future__ import annotations

import hmac
import io
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

try:  # Flask is the optional extra ``craft``: a core install builds and exports without it
    from flask import Flask, Response, abort, g, jsonify, request, send_file
    from werkzeug.exceptions import RequestEntityTooLarge
    from werkzeug.serving import BaseWSGIServer, make_server
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(
        f"the CRAFT audit page needs Flask ({exc.name} is not installed): "
        "pip install 'mtrs-geo[craft]'",
        name=exc.name,
    ) from exc

from mtrs_geo.craft.audit_store import (
    DB_NAME,
    DecisionStore,
    Item,
    load_items,
    progress,
    status_of,
)
from mtrs_geo.errors import InputError

HOST = "127.0.0.1"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
TOKEN_HEADER = "X-Audit-Token"
MAX_REQUEST_BYTES = 64 * 1024
STATIC = Path(__file__).parent / "static"
OVERLAY_COLOUR = np.array([255, 40, 40], dtype=np.float32)
OVERLAY_ALPHA = 0.45
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_SAME_SITE = ("same-origin", "none")  # Sec-Fetch-Site values of the page's own requests


def overlay(after: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Tint the masked pixels of an ``(H, W, 3)`` uint8 image red, the rest unchanged."""
    image = after.astype(np.float32)
    if mask is not None:
        selected = mask > 0
        image[selected] = (1 - OVERLAY_ALPHA) * image[selected] + OVERLAY_ALPHA * OVERLAY_COLOUR
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        array = np.asarray(image)
    return array if array.ndim == 2 else array[..., 0]


def allowed_hosts(port: int) -> frozenset[str]:
    """List the ``Host`` header values of a loopback server on ``port`` (lower case)."""
    hosts = {f"{name}:{port}" for name in LOOPBACK_NAMES}
    if port == 80:  # browsers leave out the default port
        hosts.update(LOOPBACK_NAMES)
    return frozenset(hosts)


def new_tokens(auditors: Sequence[str]) -> dict[str, str]:
    """One fresh secret token per auditor name (``auditor -> token``).

    Raises:
        InputError: no auditor, or an empty name.

    """
    names = list(dict.fromkeys(name.strip() for name in auditors))
    if not names or not all(names):
        raise InputError("the audit needs at least one auditor name, and no empty name")
    return {name: secrets.token_urlsafe(32) for name in names}


def auditor_of_token(tokens: Mapping[str, str], presented: str) -> str | None:
    """Find the auditor whose token is ``presented`` (None: no one), in constant time."""
    found = None
    for name, token in tokens.items():
        if hmac.compare_digest(token.encode(), presented.encode()):
            found = name
    return found


def _text_field(payload: dict[str, Any], key: str, required: bool) -> str | None:
    value = payload.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        kind = "missing" if value is None else f"a JSON {type(value).__name__}"
        raise InputError(f"field {key!r} must be a string, not {kind}")
    return value


def create_app(
    dataset: Path,
    auditors: str | Sequence[str],
    db_path: Path | None = None,
    *,
    port: int = 0,
) -> Flask:
    """Build the audit app for one dataset.

    Args:
        dataset: dataset root in MTRefSeg-21K layout.
        auditors: the auditor name, or several; each gets its own token (page link).
        db_path: decisions file; ``<dataset>/audit.sqlite`` by default.
        port: the port the server listens on, for the ``Host`` check
            (:func:`make_audit_server` sets it once bound).

    The tokens are in ``app.config["AUDIT_TOKENS"]`` (``auditor -> token``).

    """
    dataset = Path(dataset).resolve()
    names = [auditors] if isinstance(auditors, str) else list(auditors)
    tokens = new_tokens(names)
    items = load_items(dataset)
    by_id = {item.id: item for item in items}
    store = DecisionStore(db_path or dataset / DB_NAME)
    kinds = sorted({item.kind for item in items if item.kind})
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config.update(
        store=store, AUDIT_TOKENS=tokens, AUDIT_PORT=port, MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES
    )

    def refuse(code: int, message: str) -> Response:
        if request.path.startswith("/api/"):
            response = jsonify({"error": message})
        else:
            response = Response(message + "\n", mimetype="text/plain")
        response.status_code = code
        return response

    @app.before_request
    def guard() -> Response | None:
        if request.host.lower() not in allowed_hosts(app.config["AUDIT_PORT"]):
            return refuse(421, f"host {request.host!r} is not this audit server; use 127.0.0.1")
        if request.method not in _SAFE_METHODS:
            hosts = allowed_hosts(app.config["AUDIT_PORT"])
            origin = request.headers.get("Origin")
            if origin is not None and origin.lower().removeprefix("http://") not in hosts:
                return refuse(403, f"cross-origin write refused (Origin {origin!r})")
            site = request.headers.get("Sec-Fetch-Site")
            if site is not None and site.lower() not in _SAME_SITE:
                return refuse(403, f"cross-site write refused (Sec-Fetch-Site {site!r})")
        if request.path.startswith("/static/"):
            return None
        # The API takes the token from a header only: a cross-origin page cannot send one
        # without a CORS preflight, which this server never grants.
        presented = request.headers.get(TOKEN_HEADER, "")
        if not request.path.startswith("/api/"):
            presented = presented or request.args.get("token", "")
        who = auditor_of_token(app.config["AUDIT_TOKENS"], presented)
        if who is None:
            return refuse(
                403,
                "missing or unknown audit token: open the link that mtrs craft audit printed "
                "at start (tokens change at every start)",
            )
        g.auditor = who
        return None

    @app.after_request
    def harden(response: Response) -> Response:
        response.headers["Referrer-Policy"] = "no-referrer"  # the link holds the token
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_: RequestEntityTooLarge) -> Response:
        return refuse(413, f"request body larger than {MAX_REQUEST_BYTES // 1024} KiB")

    def auditor_of(named: Any) -> str:
        """Return the token's auditor; a request naming another one is refused (403)."""
        who = str(g.auditor)
        if named not in (None, "", who):
            abort(refuse(403, f"this page belongs to auditor {who!r}, not {named!r}"))
        return who

    def item_json(item: Item, latest: dict[tuple[str, str], Any], who: str) -> dict[str, Any]:
        decision = latest.get((who, item.id))
        return {
            "id": item.id,
            "split": item.split,
            "stem": item.stem,
            "index": item.index,
            "kind": item.kind,
            "text": item.text,
            "status": status_of(decision),
            "edited_text": decision.text if decision else None,
            "reason": decision.reason if decision else None,
            "empty_mask": item.mask is None,
        }

    @app.get("/")
    def index() -> Response:
        return send_file(STATIC / "index.html", max_age=0)

    @app.get("/api/whoami")
    def whoami() -> Response:
        return jsonify({"auditor": g.auditor, "dataset": dataset.name, "items": len(items)})

    @app.get("/api/items")
    def list_items() -> Response:
        who = auditor_of(request.args.get("auditor"))
        status = request.args.get("status", "all")
        kind = request.args.get("kind", "all")
        latest = store.latest(who)
        rows = [item_json(item, latest, who) for item in items]
        if status != "all":
            rows = [r for r in rows if r["status"] == status]
        if kind != "all":
            rows = [r for r in rows if r["kind"] == kind]
        return jsonify(
            {
                "auditor": who,
                "items": rows,
                "kinds": kinds,
                "progress": progress(items, latest, who),
            }
        )

    @app.post("/api/decision")
    def decide() -> Response:
        payload = request.get_json(silent=True)
        if not isinstance(payload, dict):
            return refuse(400, "send one JSON object (Content-Type: application/json)")
        try:
            who = auditor_of(_text_field(payload, "auditor", required=False))
            item_id = _text_field(payload, "item", required=True) or ""
            decision_name = _text_field(payload, "decision", required=True) or ""
            text = _text_field(payload, "text", required=False)
            reason = _text_field(payload, "reason", required=False)
            if item_id not in by_id:
                return refuse(404, f"unknown item {item_id!r}")
            decision = store.record(who, item_id, decision_name, text=text, reason=reason)
        except InputError as exc:
            return refuse(400, str(exc))
        latest = store.latest(who)
        return jsonify(
            {
                "item": item_json(by_id[item_id], latest, who),
                "seq": decision.seq,
                "progress": progress(items, latest, who),
            }
        )

    @app.get("/image/<kind>")
    def image(kind: str) -> Response:
        item = by_id.get(request.args.get("item", ""))
        if item is None or kind not in ("before", "after", "overlay"):
            abort(404)
        path = dataset / (item.image_a if kind == "before" else item.image_b)
        if kind != "overlay":
            return send_file(path, mimetype="image/png", max_age=3600)
        mask = _read_mask(dataset / item.mask) if item.mask else None
        buffer = io.BytesIO()
        Image.fromarray(overlay(_read_rgb(path), mask)).save(buffer, format="PNG")
        buffer.seek(0)
        return send_file(buffer, mimetype="image/png", max_age=3600)

    return app


def make_audit_server(
    dataset: Path, auditors: str | Sequence[str], port: int = 0, db_path: Path | None = None
) -> BaseWSGIServer:
    """Create (not start) the threaded audit server on 127.0.0.1; port 0 picks a free port.

    :func:`audit_links` gives each auditor's page link.
    """
    app = create_app(dataset, auditors, db_path, port=port)
    try:
        server = make_server(HOST, port, app, threaded=True)
    except OSError as exc:
        raise InputError(f"cannot listen on {HOST}:{port}: {exc}") from exc
    app.config["AUDIT_PORT"] = server.server_port
    return server


def audit_links(server: BaseWSGIServer) -> dict[str, str]:
    """Each auditor's page link (``auditor -> http://127.0.0.1:PORT/?token=...``)."""
    tokens: dict[str, str] = server.app.config["AUDIT_TOKENS"]  # type: ignore[attr-defined]
    return {
        name: f"http://{HOST}:{server.server_port}/?token={token}" for name, token in tokens.items()
    }
