"""``mtrs craft audit``: a local Flask page to accept, reject, edit or skip triplets.

The page (``static/``) talks to a small JSON API; decisions go to :class:`DecisionStore` at once.
The server binds 127.0.0.1 only.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, Response, abort, jsonify, request, send_file
from PIL import Image
from werkzeug.serving import BaseWSGIServer, make_server

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
STATIC = Path(__file__).parent / "static"
OVERLAY_COLOUR = np.array([255, 40, 40], dtype=np.float32)
OVERLAY_ALPHA = 0.45


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


def create_app(dataset: Path, auditor: str, db_path: Path | None = None) -> Flask:
    """Build the audit app for one dataset.

    Args:
        dataset: dataset root in MTRefSeg-21K layout.
        auditor: default auditor name (the page may switch to another name).
        db_path: decisions file; ``<dataset>/audit.sqlite`` by default.

    """
    dataset = Path(dataset).resolve()
    items = load_items(dataset)
    by_id = {item.id: item for item in items}
    store = DecisionStore(db_path or dataset / DB_NAME)
    kinds = sorted({item.kind for item in items if item.kind})
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config["store"] = store

    def auditor_of(payload: dict[str, Any] | None = None) -> str:
        name = (payload or {}).get("auditor") or request.args.get("auditor") or auditor
        return str(name).strip()

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
        return send_file(STATIC / "index.html")

    @app.get("/api/whoami")
    def whoami() -> Response:
        return jsonify({"auditor": auditor, "dataset": dataset.name, "items": len(items)})

    @app.get("/api/items")
    def list_items() -> Response:
        who = auditor_of()
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
    def decide() -> Response | tuple[Response, int]:
        payload = request.get_json(silent=True) or {}
        who = auditor_of(payload)
        item_id = str(payload.get("item", ""))
        if item_id not in by_id:
            return jsonify({"error": f"unknown item {item_id!r}"}), 404
        try:
            decision = store.record(
                who,
                item_id,
                str(payload.get("decision", "")),
                text=payload.get("text"),
                reason=payload.get("reason"),
            )
        except InputError as exc:
            return jsonify({"error": str(exc)}), 400
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
    dataset: Path, auditor: str, port: int = 0, db_path: Path | None = None
) -> BaseWSGIServer:
    """Create (not start) the threaded audit server on 127.0.0.1; port 0 picks a free port."""
    app = create_app(dataset, auditor, db_path)
    try:
        return make_server(HOST, port, app, threaded=True)
    except OSError as exc:
        raise InputError(f"cannot listen on {HOST}:{port}: {exc}") from exc
