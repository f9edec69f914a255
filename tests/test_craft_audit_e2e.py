"""The audit page end to end in headless Chromium (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_craft.builders import make_semantic

from mtrs_geo.craft.audit_app import audit_links, make_audit_server
from mtrs_geo.craft.audit_store import DecisionStore, load_items
from mtrs_geo.craft.builder import BuildOptions, build
from mtrs_geo.craft.export import export
from mtrs_geo.craft.sources import SourceOptions

pytestmark = pytest.mark.slow  # a headless Chromium: `make unit-fast` leaves it out

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> str:
    """Path of the system chromium; skip (fail in CI) when it or Playwright is missing."""
    path = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        message = "Debian chromium or the playwright package is missing (scripts/system-deps.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    make_semantic(tmp_path / "input")
    dataset = tmp_path / "dataset"
    options = BuildOptions(SourceOptions("semantic"), seed=4, max_expressions=4)
    build(tmp_path / "input", dataset, options)
    server = make_audit_server(dataset, "e2e", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield audit_links(server)["e2e"], dataset  # http://127.0.0.1:PORT/?token=...
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_accept_edit_reject_then_reload_and_export(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    executable = _chromium()
    from playwright.sync_api import expect, sync_playwright

    url, dataset = served
    items = load_items(dataset)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url.partition("?")[0])  # the link without its token shows nothing
            expect(page.locator("body")).to_contain_text("token")
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']")
            expect(page.locator("#auditor")).to_have_text("e2e")
            expect(page.locator("#expression")).to_have_text(items[0].text)
            overlay = page.locator("#img-overlay")
            expect(overlay).to_have_attribute("src", re.compile(r"^/image/overlay\?item="))
            page.wait_for_function("document.getElementById('img-overlay').naturalWidth > 0")
            assert page.evaluate("document.getElementById('img-overlay').naturalWidth") == 144

            page.keyboard.press("a")  # accept the first
            expect(page.locator("#progress-text")).to_contain_text("done 1 ")
            expect(page.locator("#expression")).to_have_text(items[1].text)

            page.keyboard.press("e")  # edit the second
            expect(page.locator("#edit-text")).to_be_focused()
            page.locator("#edit-text").fill("the buildings on former farmland")
            page.keyboard.press("Enter")
            expect(page.locator("#progress-text")).to_contain_text("done 2 ")
            expect(page.locator("#expression")).to_have_text(items[2].text)

            page.keyboard.press("r")  # reject the third, with a reason
            page.locator("#reject-reason").fill("mask does not match the expression")
            page.keyboard.press("Enter")
            expect(page.locator("#progress-text")).to_contain_text("done 3 ")

            page.reload()
            page.wait_for_selector("body[data-ready='1']")
            left = len(items) - 3
            expect(page.locator("#progress-text")).to_have_text(
                f"done 3 · left {left} · accepted 67%"
            )
            expect(page.locator("#expression")).to_have_text(items[3].text)  # first pending
            page.select_option("#filter-status", "rejected")
            expect(page.locator("#expression")).to_have_text(items[2].text)
            expect(page.locator("#edited")).to_have_text(
                "rejected: mask does not match the expression"
            )
            page.select_option("#filter-status", "edited")
            expect(page.locator("#edited")).to_have_text("edited: the buildings on former farmland")
        finally:
            browser.close()

    latest = DecisionStore(dataset / "audit.sqlite").latest("e2e")
    assert latest[("e2e", items[0].id)].decision == "accept"
    assert latest[("e2e", items[1].id)].text == "the buildings on former farmland"
    assert latest[("e2e", items[2].id)].reason == "mask does not match the expression"
    assert len(latest) == 3

    summary = export(dataset, tmp_path / "exported")
    assert summary.exported == 2 and summary.edited == 1 and summary.rejected == 1
    from mtrs_geo.models.data.mtrefseg import MTRefSegDataset

    records = MTRefSegDataset(tmp_path / "exported", items[0].split).records
    assert [r.text for r in records] == [items[0].text, "the buildings on former farmland"]
    assert (tmp_path / "exported" / "audit_log.jsonl").read_text().count("\n") == 3
