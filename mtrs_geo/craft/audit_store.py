"""The audit's triplets and its decisions: an append-only SQLite log, one row per decision.

Every decision is a new row (auditor, item, decision, text, reason) committed at once in WAL mode
with full synchronous writes, so it survives a killed server; an auditor's current decision on an
item is their latest row, so two auditors never overwrite each other.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mtrs_geo.errors import InputError

EXPRESSION_DIR = "referring_expression"
DECISIONS = ("accept", "reject", "edit", "skip")
DB_NAME = "audit.sqlite"
MAX_TEXT_CHARS = 1000  # an edited expression or a rejection reason; real ones are a line

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    auditor TEXT NOT NULL,
    item TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('accept', 'reject', 'edit', 'skip')),
    text TEXT,
    reason TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_auditor ON decisions (auditor, item, seq);
"""


@dataclass(frozen=True)
class Item:
    """One triplet of the dataset under audit.

    ``id`` is ``<split>/<json stem>/<expression index>`` (split ``.`` when the dataset root is a
    split).
    Image and mask paths are relative to the dataset root.
    """

    id: str
    split: str
    stem: str
    index: int
    text: str
    kind: str
    image_a: str
    image_b: str
    mask: str | None


@dataclass(frozen=True)
class Decision:
    """An auditor's latest decision on an item."""

    auditor: str
    item: str
    decision: str
    text: str | None
    reason: str | None
    seq: int
    created_at: str


def split_folders(root: Path) -> list[Path]:
    """Find every split folder (one holding ``referring_expression/``) under a dataset root."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder not found: {root}")
    return sorted(d.parent for d in root.rglob(EXPRESSION_DIR) if d.is_dir())


def load_items(root: Path) -> list[Item]:
    """Read every triplet of a dataset (MTRefSeg-21K layout) in split, file, expression order."""
    root = Path(root)
    items: list[Item] = []
    for folder in split_folders(root):
        split = folder.relative_to(root).as_posix() if folder != root else "."
        for path in sorted((folder / EXPRESSION_DIR).glob("*.json")):
            try:
                meta = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read {path}: {exc}") from exc
            texts = meta.get("referring_expressions", [])
            texts = [texts] if isinstance(texts, str) else list(texts)
            masks = meta.get("mask") or []
            masks = masks if isinstance(masks, list) else [masks]
            kinds = meta.get("expression_kinds") or [""] * len(texts)
            for index, text in enumerate(texts):
                entry = masks[index] if index < len(masks) else (masks[0] if masks else None)
                mask = entry.get("path") if isinstance(entry, dict) else entry
                items.append(
                    Item(
                        id=f"{split}/{path.stem}/{index}",
                        split=split,
                        stem=path.stem,
                        index=index,
                        text=str(text),
                        kind=str(kinds[index]) if index < len(kinds) else "",
                        image_a=_relative(root, folder, str(meta["img_A"]), "A"),
                        image_b=_relative(root, folder, str(meta["img_B"]), "B"),
                        mask=_relative(root, folder, str(mask), "masks") if mask else None,
                    )
                )
    if not items:
        raise InputError(f"no triplets found under {root} (expected */{EXPRESSION_DIR}/*.json)")
    return items


def _relative(root: Path, folder: Path, value: str, subdir: str) -> str:
    """Resolve a JSON path (split-relative, or a bare name in ``subdir``) against the root."""
    candidates = [folder / value, folder / subdir / Path(value).name]
    for candidate in candidates:
        resolved = candidate.resolve()
        if resolved.is_file() and resolved.is_relative_to(root.resolve()):
            return resolved.relative_to(root.resolve()).as_posix()
    raise InputError(f"{folder}: file {value!r} not found inside the dataset")


SQLITE_HEADER = b"SQLite format 3\x00"


def decision_count(path: Path) -> int | None:
    """Return how many audit decisions a file holds (0: none, or not a decisions file).

    None when it cannot be told: the file cannot be read, or a write-ahead log beside it has
    content (a server still running, or killed), which an immutable read would miss. The file is
    read as immutable, so that nothing is written beside it (no ``-shm``/``-wal``).
    """
    path = Path(path)
    wal = path.with_name(f"{path.name}-wal")
    try:
        with open(path, "rb") as handle:
            if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                return 0  # not an SQLite database: no decision in it
        if wal.exists() and wal.stat().st_size > 0:
            return None
        db = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True, timeout=10.0)
    except (OSError, sqlite3.Error):
        return None
    try:
        tables = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'decisions'").fetchall()
        return int(db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]) if tables else 0
    except sqlite3.Error:
        return None
    finally:
        db.close()


class DecisionStore:
    """Decisions of every auditor on one dataset, in an SQLite file.

    Args:
        path: the SQLite file (created when missing).

    """

    def __init__(self, path: Path):
        self.path = Path(path)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=10000")
            yield db
        finally:
            db.close()

    def record(
        self,
        auditor: str,
        item: str,
        decision: str,
        text: str | None = None,
        reason: str | None = None,
    ) -> Decision:
        """Append one decision and commit it before returning.

        Raises:
            InputError: an unknown decision, an empty auditor name, an edit without text, a
                rejection without a reason, or a text or reason over ``MAX_TEXT_CHARS``.

        """
        for label, value in (("edit text", text), ("reason", reason)):
            if value is not None and len(value) > MAX_TEXT_CHARS:
                raise InputError(
                    f"the {label} has {len(value)} characters; the limit is {MAX_TEXT_CHARS}"
                )
        auditor = auditor.strip()
        if not auditor:
            raise InputError("auditor name is empty")
        if decision not in DECISIONS:
            raise InputError(f"unknown decision {decision!r}; use one of {', '.join(DECISIONS)}")
        if decision == "edit" and not (text and text.strip()):
            raise InputError("an edit needs the new expression text")
        if decision == "reject" and not (reason and reason.strip()):
            raise InputError("a rejection needs a reason")
        text = text.strip() if decision == "edit" and text else None
        reason = reason.strip() if decision == "reject" and reason else None
        created = datetime.now(UTC).isoformat(timespec="seconds")
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO decisions (auditor, item, decision, text, reason, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (auditor, item, decision, text, reason, created),
            )
            seq = int(cursor.lastrowid or 0)
        return Decision(auditor, item, decision, text, reason, seq, created)

    def latest(self, auditor: str | None = None) -> dict[tuple[str, str], Decision]:
        """Latest decision per (auditor, item), for one auditor or all of them."""
        query = (
            "SELECT auditor, item, decision, text, reason, seq, created_at FROM decisions d "
            "WHERE seq = (SELECT MAX(seq) FROM decisions e "
            "WHERE e.auditor = d.auditor AND e.item = d.item)"
        )
        params: tuple[Any, ...] = ()
        if auditor is not None:
            query += " AND auditor = ?"
            params = (auditor,)
        with self._connect() as db:
            rows = db.execute(query, params).fetchall()
        return {(r[0], r[1]): Decision(*r) for r in rows}

    def log(self) -> list[dict[str, Any]]:
        """Every decision row in the order it was made (the audit log)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT seq, auditor, item, decision, text, reason, created_at "
                "FROM decisions ORDER BY seq"
            ).fetchall()
        keys = ("seq", "auditor", "item", "decision", "text", "reason", "created_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def auditors(self) -> list[str]:
        """Names of everyone who recorded a decision."""
        with self._connect() as db:
            rows = db.execute("SELECT DISTINCT auditor FROM decisions ORDER BY auditor").fetchall()
        return [r[0] for r in rows]


def status_of(decision: Decision | None) -> str:
    """Map a decision to an item status: pending, accepted, edited, rejected or skipped."""
    if decision is None:
        return "pending"
    return {"accept": "accepted", "edit": "edited", "reject": "rejected", "skip": "skipped"}[
        decision.decision
    ]


def progress(
    items: list[Item], latest: dict[tuple[str, str], Decision], auditor: str
) -> dict[str, Any]:
    """Count one auditor's progress: done (accepted, edited or rejected), left, accepted share."""
    counts = {"pending": 0, "accepted": 0, "edited": 0, "rejected": 0, "skipped": 0}
    for item in items:
        counts[status_of(latest.get((auditor, item.id)))] += 1
    done = counts["accepted"] + counts["edited"] + counts["rejected"]
    kept = counts["accepted"] + counts["edited"]
    return {
        "total": len(items),
        "done": done,
        "left": len(items) - done,
        "accepted_share": kept / done if done else 0.0,
        **counts,
    }
