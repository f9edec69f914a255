"""Where a CRAFT command may write its dataset folder.

Never over, inside or around anything the command reads (compared by real path, symlinks
resolved), never over a file, and ``--overwrite`` replaces only a CRAFT dataset folder or an empty
one: a replaced folder is deleted, so an unrelated folder must never be one, nor one holding the
auditors' decisions (``audit.sqlite``: hours of human work that no build can make again).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mtrs_geo.craft.audit_store import decision_count
from mtrs_geo.errors import InputError

# Files only CRAFT writes at the top of its folders: a build's datasheet, an export's summary.
DATASET_MARKERS = ("datasheet.json", "audit_summary.json")


def overlap(output: Path, source: Path) -> str | None:
    """Say how ``output`` overlaps ``source`` ("is", "lies inside", "contains"); None: apart."""
    out, src = Path(output).resolve(), Path(source).resolve()
    if out == src:
        return "is"
    if out.is_relative_to(src):
        return "lies inside"
    if src.is_relative_to(out):
        return "contains"
    return None


def is_craft_dataset(folder: Path) -> bool:
    """Whether ``folder`` holds what a CRAFT build or export writes (its datasheet or summary)."""
    return any((Path(folder) / name).is_file() for name in DATASET_MARKERS)


def check_output(
    output: Path, reads: Iterable[tuple[str, Path | None]], overwrite: bool = False
) -> None:
    """Refuse an OUTPUT that a build or export must not write, before anything is written.

    Args:
        output: the dataset folder to create or replace.
        reads: (what it is, path) of everything the command reads, e.g.
            ``("the input folder", input_dir)``; None paths are skipped.
        overwrite: whether an existing CRAFT dataset folder (or an empty folder) may be replaced.

    Raises:
        InputError: OUTPUT is, lies inside or contains something read; it is a file; it is a
            non-empty folder that is not a CRAFT dataset; it exists and ``overwrite`` is off; it
            holds audit decisions.

    """
    output = Path(output)
    for what, path in reads:
        if path is not None and (relation := overlap(output, path)) is not None:
            raise InputError(
                f"OUTPUT {output} {relation} {what} {path}; choose an OUTPUT apart from what "
                "the command reads (nothing was written)"
            )
    if output.exists() and not output.is_dir():
        raise InputError(f"OUTPUT is a file, not a dataset folder: {output} (nothing was written)")
    if not output.exists():
        return
    try:
        empty = not any(output.iterdir())
    except OSError as exc:
        raise InputError(f"cannot read OUTPUT {output}: {exc.strerror or exc}") from exc
    if not empty and not is_craft_dataset(output):
        raise InputError(
            f"OUTPUT {output} is a folder that is not a CRAFT dataset; choose a new or empty "
            "folder (--overwrite replaces only a CRAFT dataset folder)"
        )
    if not overwrite:
        raise InputError(f"output exists: {output} (use --overwrite to replace it)")
    check_no_audit_decisions(output)


# Files of a dataset that are never a decisions database (not opened by the check).
DATA_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg", ".json", ".jsonl", ".md"})


def check_no_audit_decisions(output: Path) -> None:
    """Refuse to replace a folder holding auditors' decisions (checked again before the swap).

    Any SQLite file in it with a ``decisions`` table that has rows (``audit.sqlite``, or a
    ``--db`` kept there), or whose count cannot be told (a live server's write-ahead log): hours
    of human work that no build can make again. Symbolic links are not followed: replacing the
    folder removes only the link.

    Raises:
        InputError: one line naming the file and how many decisions it holds.

    """
    output = Path(output)
    if not output.is_dir():
        return
    for path in sorted(output.rglob("*")):
        if path.suffix.lower() in DATA_SUFFIXES or path.is_symlink() or not path.is_file():
            continue
        count = decision_count(path)
        if count == 0:
            continue
        held = "an audit log" if count is None else f"{count} audit decision{'s' * (count > 1)}"
        raise InputError(
            f"OUTPUT {output} holds {held} ({path}), which --overwrite would delete: move "
            f"{path.name} out of it (or export the audited dataset first), or choose another "
            "OUTPUT (nothing was written)"
        )
