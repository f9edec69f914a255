"""The audit app's API, its decision store and mtrs craft export.

The server's defences (host, origin, tokens, request types and sizes) are pinned in
``test_issue11_audit_server.py``.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_craft.builders import make_semantic
from flask import Flask
from PIL import Image
from werkzeug.test import TestResponse

from mtrs_geo.cli.craft import craft
from mtrs_geo.craft.audit_app import TOKEN_HEADER, audit_links, create_app, make_audit_server
from mtrs_geo.craft.audit_store import DecisionStore, load_items
from mtrs_geo.craft.builder import BuildOptions, build
from mtrs_geo.craft.export import export
from mtrs_geo.craft.sources import SourceOptions
from mtrs_geo.errors import InputError


def build_audit_dataset(tmp_path: Path) -> Path:
    """A small CRAFT dataset (semantic layout) under ``tmp_path/dataset``."""
    make_semantic(tmp_path / "input")
    out = tmp_path / "dataset"
    options = BuildOptions(SourceOptions("semantic"), seed=1, max_expressions=5)
    build(tmp_path / "input", out, options)
    return out


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    return build_audit_dataset(tmp_path)


PORT = 8765


class AuditPage:
    """One auditor's page: requests to 127.0.0.1:PORT carrying that auditor's token."""

    def __init__(self, app: Flask, auditor: str, host: str = f"127.0.0.1:{PORT}") -> None:
        self.client = app.test_client()
        self.base_url = f"http://{host}"
        self.headers = {TOKEN_HEADER: app.config["AUDIT_TOKENS"][auditor]}

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        """GET with the token header."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.client.get(path, base_url=self.base_url, headers=headers, **kwargs)

    def post(self, path: str = "/api/decision", **kwargs: Any) -> TestResponse:
        """POST (a decision by default) with the token header."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.client.post(path, base_url=self.base_url, headers=headers, **kwargs)

    def decide(self, **payload: Any) -> TestResponse:
        """POST one decision as JSON."""
        return self.post(json=payload)


def _page(dataset: Path, auditor: str = "ann") -> AuditPage:
    return AuditPage(create_app(dataset, auditor, port=PORT), auditor)


def test_two_auditors_keep_their_own_decisions(dataset: Path) -> None:
    app = create_app(dataset, ["ann", "bob"], port=PORT)
    ann_page, bob_page = AuditPage(app, "ann"), AuditPage(app, "bob")
    first = ann_page.get("/api/items").get_json()
    assert first["auditor"] == "ann" and first["progress"]["done"] == 0
    item = first["items"][0]["id"]
    assert ann_page.decide(item=item, decision="accept").status_code == 200
    assert bob_page.decide(item=item, decision="reject", reason="wrong").status_code == 200
    ann = {i["id"]: i for i in ann_page.get("/api/items").get_json()["items"]}
    bob = {i["id"]: i for i in bob_page.get("/api/items").get_json()["items"]}
    assert ann[item]["status"] == "accepted"
    assert bob[item]["status"] == "rejected" and bob[item]["reason"] == "wrong"
    # a later decision by ann replaces only ann's
    ann_page.decide(item=item, decision="edit", text="the new buildings")
    latest = DecisionStore(dataset / "audit.sqlite").latest()
    assert latest[("ann", item)].decision == "edit"
    assert latest[("bob", item)].decision == "reject"
    assert len(DecisionStore(dataset / "audit.sqlite").log()) == 3


def test_bad_decisions_are_refused_with_a_message(dataset: Path) -> None:
    page = _page(dataset)
    item = page.get("/api/items").get_json()["items"][0]["id"]
    assert "reason" in page.decide(item=item, decision="reject").get_json()["error"]
    assert "text" in page.decide(item=item, decision="edit", text=" ").get_json()["error"]
    assert page.decide(item=item, decision="delete").status_code == 400
    assert page.decide(item="nope/0", decision="accept").status_code == 404
    assert page.get("/api/items").get_json()["progress"]["done"] == 0


def test_filters_progress_and_images(dataset: Path) -> None:
    client = _page(dataset)
    data = client.get("/api/items").get_json()
    items = data["items"]
    kinds = data["kinds"]
    assert "class" in kinds
    client.decide(item=items[0]["id"], decision="accept")
    client.decide(item=items[1]["id"], decision="reject", reason="ambiguous")
    client.decide(item=items[2]["id"], decision="skip")
    progress = client.get("/api/items").get_json()["progress"]
    assert progress == {
        "total": len(items), "done": 2, "left": len(items) - 2, "accepted_share": 0.5,
        "pending": len(items) - 3, "accepted": 1, "edited": 0, "rejected": 1, "skipped": 1,
    }  # fmt: skip
    rejected = client.get("/api/items?status=rejected").get_json()["items"]
    assert [i["id"] for i in rejected] == [items[1]["id"]]
    only = client.get("/api/items?kind=class").get_json()["items"]
    assert only and all(i["kind"] == "class" for i in only)
    assert len(only) == sum(i["kind"] == "class" for i in items)
    target = next(i for i in items if not i["empty_mask"])
    overlay = client.get("/image/overlay", query_string={"item": target["id"]})
    after = client.get("/image/after", query_string={"item": target["id"]})
    assert overlay.status_code == after.status_code == 200
    tinted = np.asarray(Image.open(io.BytesIO(overlay.data)).convert("RGB")).astype(int)
    plain = np.asarray(Image.open(io.BytesIO(after.data)).convert("RGB")).astype(int)
    changed = (tinted != plain).any(axis=2)
    [item] = [i for i in load_items(dataset) if i.id == target["id"]]
    assert item.mask is not None
    mask = np.asarray(Image.open(dataset / item.mask)) > 0
    assert np.array_equal(changed & ~mask, np.zeros_like(mask))  # only masked pixels tinted
    assert client.get("/image/secret", query_string={"item": target["id"]}).status_code == 404
    assert client.get("/image/before", query_string={"item": "../../etc/passwd"}).status_code == 404


def test_server_binds_loopback_only(dataset: Path) -> None:
    server = make_audit_server(dataset, "ann", port=0)
    try:
        assert server.server_address[0] == "127.0.0.1" and server.server_port > 0
        [link] = audit_links(server).values()
        assert re.fullmatch(rf"http://127\.0\.0\.1:{server.server_port}/\?token=[\w-]{{40,}}", link)
    finally:
        server.server_close()


def test_a_decision_survives_a_killed_server(dataset: Path) -> None:
    env = {**os.environ, "MTRS_AUDITOR": "kim"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mtrs_geo.cli.main", "craft", "audit", str(dataset), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=([\w-]+)", line)
        assert url and " as kim " in line, line
        base, token = url.groups()
        with pytest.raises(urllib.error.HTTPError, match="403"):  # no token, no data
            urllib.request.urlopen(base + "api/items", timeout=10)
        listing = urllib.request.Request(base + "api/items", headers={TOKEN_HEADER: token})
        items = json.load(urllib.request.urlopen(listing, timeout=10))
        item = items["items"][0]["id"]
        request = urllib.request.Request(
            base + "api/decision",
            data=json.dumps({"item": item, "decision": "accept"}).encode(),
            headers={"Content-Type": "application/json", TOKEN_HEADER: token},
        )
        assert (
            json.load(urllib.request.urlopen(request, timeout=10))["item"]["status"] == "accepted"
        )
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
        if process.stdout is not None:
            process.stdout.close()
    with sqlite3.connect(dataset / "audit.sqlite") as db:
        rows = db.execute("SELECT auditor, item, decision FROM decisions").fetchall()
    assert rows == [("kim", item, "accept")]


def test_export_writes_only_accepted_triplets_with_edits_and_the_log(
    dataset: Path, tmp_path: Path
) -> None:
    from mtrs_geo.models.data.mtrefseg import MTRefSegDataset

    items = load_items(dataset)
    store = DecisionStore(dataset / "audit.sqlite")
    store.record("ann", items[0].id, "accept")
    store.record("ann", items[1].id, "edit", text="buildings built on farmland")
    store.record("ann", items[2].id, "reject", reason="wrong class")
    store.record("ann", items[3].id, "skip")
    store.record("bob", items[0].id, "accept")
    store.record("bob", items[4].id, "accept")
    store.record("ann", items[4].id, "reject", reason="mask too big")  # a disagreement
    summary = export(dataset, tmp_path / "out")
    assert summary.exported == 2 and summary.edited == 1 and summary.rejected == 1
    assert summary.conflicts == [items[4].id]
    exported = MTRefSegDataset(tmp_path / "out", items[0].split)
    texts = [r.text for r in exported.records]
    assert texts == [items[0].text, "buildings built on farmland"]
    log = [json.loads(x) for x in (tmp_path / "out" / "audit_log.jsonl").read_text().splitlines()]
    assert [(r["auditor"], r["decision"]) for r in log][:3] == [
        ("ann", "accept"), ("ann", "edit"), ("ann", "reject")
    ]  # fmt: skip
    meta = json.loads(exported.records[0].json_path.read_text())
    assert len(meta["expression_kinds"]) == len(meta["referring_expressions"]) == 2
    # bob alone: his two accepts
    only_bob = export(dataset, tmp_path / "bob", auditors=["bob"])
    assert only_bob.exported == 2 and only_bob.conflicts == []
    with pytest.raises(InputError, match="no decisions by zed"):
        export(dataset, tmp_path / "zed", auditors=["zed"])
    result = CliRunner().invoke(craft, ["export", str(dataset), str(tmp_path / "out"), "--json"])
    assert isinstance(result.exception, InputError)  # exists, no --overwrite
    result = CliRunner().invoke(
        craft, ["export", str(dataset), str(tmp_path / "out"), "--overwrite", "--json"]
    )
    assert result.exit_code == 0 and json.loads(result.output)["exported"] == 2


def test_export_without_decisions_is_an_input_error(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no audit decisions"):
        export(dataset, tmp_path / "out")
