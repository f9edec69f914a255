"""Issue 11, items 14 and 15: the audit server admits only its own pages, and only sane requests.

A web page of another site can make the browser send requests to 127.0.0.1, or rebind its own name
to 127.0.0.1 (DNS rebinding) and read the answers. The server accepts only its loopback ``Host``,
refuses cross-origin writes, and needs the secret per-auditor token of the link it printed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_craft_audit import PORT, AuditPage, build_audit_dataset

from mtrs_geo.craft.audit_app import MAX_REQUEST_BYTES, TOKEN_HEADER, create_app, new_tokens
from mtrs_geo.craft.audit_store import MAX_TEXT_CHARS, DecisionStore
from mtrs_geo.errors import InputError


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    return build_audit_dataset(tmp_path)


def _rows(dataset: Path) -> list[tuple[str, str]]:
    return [(r["auditor"], r["decision"]) for r in DecisionStore(dataset / "audit.sqlite").log()]


def _first_item(page: AuditPage) -> str:
    return str(page.get("/api/items").get_json()["items"][0]["id"])


@pytest.mark.parametrize(
    "host",
    [
        f"evil.example:{PORT}",  # a rebound name
        f"127.0.0.1.evil.example:{PORT}",
        "127.0.0.1:9999",  # another port
        "127.0.0.1",
        "0.0.0.0:8765",
    ],
)
def test_a_request_for_another_host_name_is_refused(dataset: Path, host: str) -> None:
    app = create_app(dataset, "ann", port=PORT)
    page = AuditPage(app, "ann", host=host)
    for path in ("/", "/api/items", "/api/whoami", "/static/audit.js"):
        response = page.get(path, query_string={"token": app.config["AUDIT_TOKENS"]["ann"]})
        assert response.status_code == 421, path
    response = page.decide(item=_first_item(AuditPage(app, "ann")), decision="accept")
    assert response.status_code == 421 and "host" in response.get_json()["error"]
    assert _rows(dataset) == []


@pytest.mark.parametrize("host", [f"127.0.0.1:{PORT}", f"localhost:{PORT}", f"[::1]:{PORT}"])
def test_the_loopback_names_with_the_port_are_accepted(dataset: Path, host: str) -> None:
    page = AuditPage(create_app(dataset, "ann", port=PORT), "ann", host=host)
    assert page.get("/api/whoami").get_json()["auditor"] == "ann"


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": f"http://evil.example:{PORT}"},
        {"Origin": f"https://127.0.0.1:{PORT}"},
        {"Origin": "http://127.0.0.1:9999"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": f"http://127.0.0.1:{PORT}", "Sec-Fetch-Site": "cross-site"},
    ],
)
def test_a_cross_origin_write_is_refused(dataset: Path, headers: dict[str, str]) -> None:
    page = AuditPage(create_app(dataset, "ann", port=PORT), "ann")
    response = page.post(json={"item": _first_item(page), "decision": "accept"}, headers=headers)
    assert response.status_code == 403 and "refused" in response.get_json()["error"]
    assert _rows(dataset) == []


def test_a_write_from_the_page_itself_is_accepted(dataset: Path) -> None:
    page = AuditPage(create_app(dataset, "ann", port=PORT), "ann")
    for origin in (f"http://127.0.0.1:{PORT}", f"http://localhost:{PORT}"):
        headers = {"Origin": origin, "Sec-Fetch-Site": "same-origin"}
        response = page.post(json={"item": _first_item(page), "decision": "skip"}, headers=headers)
        assert response.status_code == 200
    assert _rows(dataset) == [("ann", "skip"), ("ann", "skip")]


def test_without_the_token_nothing_is_read_or_written(dataset: Path) -> None:
    app = create_app(dataset, "ann", port=PORT)
    token = app.config["AUDIT_TOKENS"]["ann"]
    item = _first_item(AuditPage(app, "ann"))
    client = app.test_client()
    base = f"http://127.0.0.1:{PORT}"
    wrong = {TOKEN_HEADER: token[:-1] + ("A" if token[-1] != "A" else "B")}
    for headers in ({}, wrong, {TOKEN_HEADER: ""}):
        for path in ("/", "/api/items", "/api/whoami", f"/image/after?item={item}"):
            response = client.get(path, base_url=base, headers=headers)
            assert response.status_code == 403, (path, headers)
            assert b"token" in response.data
        response = client.post(
            "/api/decision",
            base_url=base,
            headers=headers,
            json={"item": item, "decision": "accept"},
        )
        assert response.status_code == 403
    # the API takes the token from its header only; the page and its images from the link too
    assert client.get(f"/api/items?token={token}", base_url=base).status_code == 403
    assert client.get(f"/?token={token}", base_url=base).status_code == 200
    assert client.get(f"/image/after?item={item}&token={token}", base_url=base).status_code == 200
    assert client.get("/static/audit.js", base_url=base).status_code == 200  # no data in it
    assert _rows(dataset) == []


def test_the_token_not_the_request_names_the_auditor(dataset: Path) -> None:
    app = create_app(dataset, ["ann", "bob"], port=PORT)
    ann = AuditPage(app, "ann")
    item = _first_item(ann)
    response = ann.decide(item=item, decision="accept", auditor="bob")
    assert response.status_code == 403 and "'ann'" in response.get_json()["error"]
    assert ann.get("/api/items?auditor=bob").status_code == 403
    assert ann.decide(item=item, decision="accept", auditor="ann").status_code == 200
    assert AuditPage(app, "bob").decide(item=item, decision="skip").status_code == 200
    assert _rows(dataset) == [("ann", "accept"), ("bob", "skip")]
    assert ann.get("/api/whoami").get_json()["auditor"] == "ann"


def test_every_start_makes_new_unguessable_tokens(dataset: Path) -> None:
    first = create_app(dataset, ["ann", "bob"]).config["AUDIT_TOKENS"]
    second = create_app(dataset, ["ann", "bob"]).config["AUDIT_TOKENS"]
    tokens = [*first.values(), *second.values()]
    assert len(set(tokens)) == 4 and all(len(t) >= 40 for t in tokens)
    with pytest.raises(InputError, match="empty name"):
        new_tokens(["ann", " "])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (["accept"], "JSON object"),
        ("accept", "JSON object"),
        (7, "JSON object"),
        (None, "JSON object"),
        ({"item": 5, "decision": "accept"}, "'item' must be a string"),
        ({"decision": "accept"}, "'item' must be a string"),
        ({"item": "ITEM", "decision": ["accept"]}, "'decision' must be a string"),
        ({"item": "ITEM", "decision": {"a": 1}}, "'decision' must be a string"),
        ({"item": "ITEM", "decision": "edit", "text": 12}, "'text' must be a string"),
        ({"item": "ITEM", "decision": "reject", "reason": ["x"]}, "'reason' must be a string"),
        ({"item": "ITEM", "decision": "accept", "auditor": 1}, "'auditor' must be a string"),
    ],
)
def test_wrong_json_types_are_a_400_with_a_message(
    dataset: Path, body: object, message: str
) -> None:
    page = AuditPage(create_app(dataset, "ann", port=PORT), "ann")
    if isinstance(body, dict) and body.get("item") == "ITEM":
        body = {**body, "item": _first_item(page)}
    response = page.post(json=body)
    assert response.status_code == 400
    assert message in response.get_json()["error"]
    assert _rows(dataset) == []


def test_a_body_that_is_not_json_is_a_400(dataset: Path) -> None:
    page = AuditPage(create_app(dataset, "ann", port=PORT), "ann")
    for data, kind in (("{not json", "application/json"), ("item=x", "text/plain")):
        response = page.post(data=data, content_type=kind)
        assert response.status_code == 400 and "JSON object" in response.get_json()["error"]


def test_oversized_requests_and_texts_are_refused(dataset: Path) -> None:
    page = AuditPage(create_app(dataset, "ann", port=PORT), "ann")
    item = _first_item(page)
    huge = page.decide(item=item, decision="edit", text="x" * 5_000_000)
    assert huge.status_code == 413 and "KiB" in huge.get_json()["error"]
    padded = page.post(data="{" + " " * MAX_REQUEST_BYTES + "}", content_type="application/json")
    assert padded.status_code == 413
    long_text = page.decide(item=item, decision="edit", text="y" * (MAX_TEXT_CHARS + 1))
    assert long_text.status_code == 400 and "limit" in long_text.get_json()["error"]
    long_reason = page.decide(item=item, decision="reject", reason="z" * (MAX_TEXT_CHARS + 1))
    assert long_reason.status_code == 400
    assert _rows(dataset) == []
    assert page.decide(item=item, decision="edit", text="w" * MAX_TEXT_CHARS).status_code == 200


def test_audit_command_prints_one_private_link_per_auditor(dataset: Path) -> None:
    command = [sys.executable, "-m", "mtrs_geo.cli.main", "craft", "audit", str(dataset)]
    process = subprocess.Popen(
        [*command, "--port", "0", "--auditor", "ann", "--auditor", "bob"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    links = [re.search(r" as (\w+) at http://127\.0\.0\.1:\d+/\?token=([\w-]+)$", x) for x in lines]
    assert links[0] and links[1], lines
    assert [links[0].group(1), links[1].group(1)] == ["ann", "bob"]
    assert links[0].group(2) != links[1].group(2)
    assert "private" in lines[2]
