"""``mtrs craft export``: the accepted triplets of an audited dataset, edits applied, plus the log.

A triplet is exported when at least one of the chosen auditors decided on it (skips do not count),
every one of them accepted or edited it, and their edited texts agree; the edited text replaces the
original. Disagreements are listed in the summary, never resolved silently.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtrs_geo.cancel import begin_commit, check_cancel
from mtrs_geo.craft.audit_store import (
    DB_NAME,
    EXPRESSION_DIR,
    Decision,
    DecisionStore,
    Item,
    load_items,
    split_folders,
)
from mtrs_geo.craft.outputs import check_no_audit_decisions, check_output
from mtrs_geo.errors import InputError
from mtrs_geo.write import atomic_directory

# JSON keys that hold one value per expression and are filtered along with the expressions.
PER_EXPRESSION = (
    "referring_expressions",
    "mask",
    "expression_kinds",
    "expression_classes",
    "instance_ids",
)


@dataclass
class ExportSummary:
    """What an export wrote."""

    output: Path
    auditors: list[str]
    exported: int = 0
    edited: int = 0
    rejected: int = 0
    undecided: int = 0
    conflicts: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the summary as a JSON-ready dict."""
        return {
            "output": str(self.output),
            "auditors": self.auditors,
            "exported": self.exported,
            "edited": self.edited,
            "rejected": self.rejected,
            "undecided": self.undecided,
            "conflicts": self.conflicts,
        }


def verdict(item: Item, decisions: list[Decision]) -> tuple[str, str | None]:
    """Combine the auditors' latest decisions on one item.

    Returns:
        (``"accept"``, final text) when it is exported; otherwise (``"reject"``, None),
        (``"undecided"``, None) or (``"conflict"``, None).

    """
    decided = [d for d in decisions if d.decision != "skip"]
    if not decided:
        return "undecided", None
    verdicts = {d.decision for d in decided}
    if verdicts == {"reject"}:
        return "reject", None
    if "reject" in verdicts:
        return "conflict", None
    edits = {d.text for d in decided if d.decision == "edit"}
    if len(edits) > 1:
        return "conflict", None
    return "accept", edits.pop() if edits else item.text


def export(
    dataset: Path,
    output: Path,
    auditors: list[str] | None = None,
    db_path: Path | None = None,
    overwrite: bool = False,
    cancel: threading.Event | None = None,
) -> ExportSummary:
    """Write the accepted triplets (edits applied) and the audit log into a new dataset folder.

    Args:
        dataset: the audited dataset (MTRefSeg-21K layout).
        output: folder to create; written under a temporary name and renamed when complete.
        auditors: whose decisions count; everyone who decided when None.
        db_path: decisions file; ``<dataset>/audit.sqlite`` by default.
        overwrite: replace an existing output that is a CRAFT dataset folder (or empty).
        cancel: once set, the export stops before its folder is renamed into place.

    Raises:
        InputError: no decisions, an unknown auditor, or an output that overlaps the dataset or
            the decisions file, is a file or an unrelated folder, or exists without ``overwrite``
            (:func:`~mtrs_geo.craft.outputs.check_output`).
        Cancelled: ``cancel`` was set before the folder was renamed into place.

    """
    dataset, output = Path(dataset), Path(output)
    db = Path(db_path) if db_path else dataset / DB_NAME
    check_output(output, [("the dataset", dataset), ("the decisions file", db)], overwrite)
    if not db.is_file():
        raise InputError(f"no audit decisions found: {db} (run `mtrs craft audit` first)")
    store = DecisionStore(db)
    known = store.auditors()
    chosen = list(auditors) if auditors else known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise InputError(f"no decisions by {', '.join(unknown)}; auditors: {', '.join(known)}")
    latest = store.latest()
    items = load_items(dataset)
    summary = ExportSummary(output=output, auditors=chosen)
    final: dict[str, str] = {}  # item id -> exported text
    for item in items:
        decisions = [latest[(a, item.id)] for a in chosen if (a, item.id) in latest]
        outcome, text = verdict(item, decisions)
        if outcome == "accept" and text is not None:
            final[item.id] = text
            summary.exported += 1
            summary.edited += int(text != item.text)
        elif outcome == "reject":
            summary.rejected += 1
        elif outcome == "conflict":
            summary.conflicts.append(item.id)
        else:
            summary.undecided += 1
    check_cancel(cancel)
    with atomic_directory(output) as staging:
        _write(dataset, staging, final)
        log = store.log()
        (staging / "audit_log.jsonl").write_text(
            "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in log),
            encoding="utf-8",
        )
        (staging / "audit_summary.json").write_text(
            json.dumps({**summary.to_json(), "output": output.name}, indent=1, sort_keys=True)
            + "\n",
            encoding="utf-8",
        )
        check_no_audit_decisions(output)  # decided while the export ran: kept
        begin_commit(cancel)
    return summary


def _write(dataset: Path, root: Path, final: dict[str, str]) -> None:
    """Copy every JSON with at least one exported expression, filtered, and the files it names."""
    for folder in split_folders(dataset):
        split = folder.relative_to(dataset).as_posix() if folder != dataset else "."
        for path in sorted((folder / EXPRESSION_DIR).glob("*.json")):
            meta = json.loads(path.read_text(encoding="utf-8"))
            texts = meta["referring_expressions"]
            texts = [texts] if isinstance(texts, str) else list(texts)
            keep = [i for i in range(len(texts)) if f"{split}/{path.stem}/{i}" in final]
            if not keep:
                continue
            out = dict(meta)
            for key in PER_EXPRESSION:
                values = meta.get(key)
                if isinstance(values, list) and len(values) == len(texts):
                    out[key] = [values[i] for i in keep]
            out["referring_expressions"] = [final[f"{split}/{path.stem}/{i}"] for i in keep]
            out["source_expression_index"] = keep
            target = root / split
            files = [str(meta["img_A"]), str(meta["img_B"])]
            files += [
                m["path"] for m in out.get("mask", []) if isinstance(m, dict) and m.get("path")
            ]
            for name, subdir in zip(files, ["A", "B"] + ["masks"] * (len(files) - 2), strict=True):
                source = _find(folder, name, subdir, path)
                destination = target / source.relative_to(folder)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)
            if (
                isinstance(meta.get("instance_map"), str)
                and (folder / meta["instance_map"]).is_file()
            ):
                destination = target / meta["instance_map"]
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / meta["instance_map"], destination)
            (target / EXPRESSION_DIR).mkdir(parents=True, exist_ok=True)
            (target / EXPRESSION_DIR / path.name).write_text(
                json.dumps(out, indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                encoding="utf-8",
            )


def _find(folder: Path, name: str, subdir: str, json_path: Path) -> Path:
    """Resolve a file named in a JSON: split-relative, or a bare name in ``subdir``."""
    for candidate in (folder / name, folder / subdir / Path(name).name):
        if candidate.is_file() and candidate.resolve().is_relative_to(folder.resolve()):
            return candidate
    raise InputError(f"{json_path.name}: file {name!r} not found in {folder}")
