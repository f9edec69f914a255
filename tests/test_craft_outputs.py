"""Where ``mtrs craft`` writes: never over its inputs, a file or an unrelated folder.

OUTPUT equal to, inside or around an input is refused (by real path) before anything is written,
with or without ``--overwrite``; ``--overwrite`` replaces only a CRAFT dataset folder or an empty
one. The dataset folder gets the umask's permissions, SIGTERM cancels a build like SIGINT, and
staging folders left by killed builds are removed by the next build into the same OUTPUT.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_run import files_in, run_mtrs
from fixtures_craft.builders import make_semantic

from mtrs_geo.craft.audit_store import DecisionStore, load_items
from mtrs_geo.craft.builder import BuildOptions, build
from mtrs_geo.craft.export import export
from mtrs_geo.craft.sources import SourceOptions
from mtrs_geo.errors import InputError
from mtrs_geo.write import atomic_directory

OPTIONS = BuildOptions(SourceOptions("semantic"), splits=(("train", 1.0),))


def _digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones included) with its content hash."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _build_args(source: Path, output: Path, *extra: object) -> list[object]:
    return ["craft", "build", source, output, "--layout", "semantic", "--splits", "train=1", *extra]


def _one_line_exit_2(result: object, *words: str) -> None:
    assert result.code == 2, (result.out, result.err)  # type: ignore[attr-defined]
    lines = result.err.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "input"
    make_semantic(root)
    return root


# --- B2: OUTPUT must not be, lie inside or contain anything the command reads ---


@pytest.mark.parametrize("overwrite", [True, False], ids=["overwrite", "no-overwrite"])
def test_output_that_is_the_input_is_refused_and_the_input_stays_whole(
    source: Path, overwrite: bool
) -> None:
    before = _digest(source)
    flags = ["--overwrite"] if overwrite else []
    result = run_mtrs(*_build_args(source, source, *flags))
    _one_line_exit_2(result, "is the input folder")
    assert _digest(source) == before
    assert files_in(source.parent) == ["input"]


def test_output_inside_or_around_the_input_is_refused_by_real_path(
    source: Path, tmp_path: Path
) -> None:
    before = _digest(source)
    link = tmp_path / "link"
    link.symlink_to(source, target_is_directory=True)
    cases = [
        (source / "dataset", "lies inside the input folder"),
        (tmp_path, "contains the input folder"),
        (link, "is the input folder"),  # a symlink to the input is the input
        (link / "train", "lies inside the input folder"),
    ]
    for output, words in cases:
        _one_line_exit_2(run_mtrs(*_build_args(source, output, "--overwrite")), words)
        with pytest.raises(InputError, match=words):
            build(source, output, OPTIONS, overwrite=True)
    _one_line_exit_2(run_mtrs(*_build_args(link, source, "--overwrite")), "is the input folder")
    assert _digest(source) == before
    assert sorted(files_in(tmp_path)) == ["input", "link"]


def test_output_around_the_paraphrase_model_or_the_captions_is_refused(
    source: Path, tmp_path: Path
) -> None:
    dataset = tmp_path / "dataset"
    build(source, dataset, OPTIONS)
    (dataset / "model").mkdir()
    (dataset / "model" / "config.json").write_text("{}")
    (dataset / "captions.jsonl").write_text('{"sentences": ["a new road"]}\n')
    before = _digest(dataset)
    model = run_mtrs(
        *_build_args(source, dataset, "--overwrite", "--paraphrase-model", dataset / "model")
    )
    _one_line_exit_2(model, "contains the --paraphrase-model folder")
    captions = run_mtrs(
        *_build_args(source, dataset, "--overwrite", "--captions", dataset / "captions.jsonl")
    )
    _one_line_exit_2(captions, "contains the --captions file")
    assert _digest(dataset) == before


def test_export_into_the_audited_dataset_or_around_its_decisions_is_refused(
    source: Path, tmp_path: Path
) -> None:
    dataset = tmp_path / "dataset"
    build(source, dataset, OPTIONS)
    store = DecisionStore(dataset / "audit.sqlite")
    store.record("ann", load_items(dataset)[0].id, "accept")
    before = _digest(dataset)
    for output in (dataset, dataset / "accepted"):
        result = run_mtrs("craft", "export", dataset, output, "--overwrite")
        _one_line_exit_2(result, "the dataset")
    with pytest.raises(InputError, match="contains the decisions file"):
        export(source, dataset, db_path=dataset / "audit.sqlite", overwrite=True)
    assert _digest(dataset) == before
    assert files_in(tmp_path) == ["dataset", "input"]


# --- B3: --overwrite replaces only a CRAFT dataset folder or an empty folder ---


def test_output_that_is_a_file_is_refused_before_anything_is_written(
    source: Path, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    for flags in (["--overwrite"], []):
        result = run_mtrs(*_build_args(source, notes, *flags))
        _one_line_exit_2(result, "OUTPUT is a file, not a dataset folder")
    assert notes.read_text() == "my notes"
    assert files_in(tmp_path) == ["input", "notes.txt"]


def test_the_staging_helper_never_replaces_a_file(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    with pytest.raises(InputError, match="is a file"), atomic_directory(notes) as staging:
        (staging / "datasheet.json").write_text("{}")
    assert notes.read_text() == "my notes"
    assert files_in(tmp_path) == ["notes.txt"]


def test_overwrite_refuses_a_folder_that_is_not_a_craft_dataset(
    source: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"\xff\xd8 not really")
    result = run_mtrs(*_build_args(source, photos, "--overwrite"))
    _one_line_exit_2(result, "not a CRAFT dataset")
    assert files_in(photos) == ["holiday.jpg"]
    assert files_in(tmp_path) == ["input", "photos"]


def test_overwrite_replaces_a_craft_dataset_or_an_empty_folder(
    source: Path, tmp_path: Path
) -> None:
    empty, dataset = tmp_path / "empty", tmp_path / "dataset"
    empty.mkdir()
    build(source, dataset, OPTIONS)
    (dataset / "stale.txt").write_text("from an earlier build")
    for output in (empty, dataset):
        result = run_mtrs(*_build_args(source, output, "--overwrite", "--json"))
        assert result.code == 0, result.err
        assert json.loads(result.out)["pairs"] == 4
        assert (output / "datasheet.json").is_file() and not (output / "stale.txt").exists()
    assert files_in(tmp_path) == ["dataset", "empty", "input"]


def test_overwrite_never_deletes_the_auditors_decisions(source: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    build(source, dataset, OPTIONS)
    store = DecisionStore(dataset / "audit.sqlite")
    assert run_mtrs(*_build_args(source, dataset, "--overwrite")).code == 0  # no decision yet
    store = DecisionStore(dataset / "audit.sqlite")
    item = load_items(dataset)[0].id
    store.record("ann", item, "accept")
    store.record("bob", item, "reject", reason="wrong place")
    kept = _digest(dataset)
    result = run_mtrs(*_build_args(source, dataset, "--overwrite", "--seed", "3"))
    _one_line_exit_2(result, "holds 2 audit decisions", "which --overwrite would delete")
    with pytest.raises(InputError, match="holds 2 audit decisions"):
        build(source, dataset, OPTIONS, overwrite=True)
    assert _digest(dataset) == kept
    server = sqlite3.connect(dataset / "audit.sqlite", isolation_level=None)  # a live server
    server.execute("PRAGMA journal_mode=WAL")
    server.execute("INSERT INTO decisions VALUES (9, 'cy', 'x', 'skip', NULL, NULL, 'now')")
    assert (dataset / "audit.sqlite-wal").stat().st_size > 0  # the decision is in its WAL
    _one_line_exit_2(run_mtrs(*_build_args(source, dataset, "--overwrite")), "an audit log")
    server.close()
    (dataset / "audit.sqlite").rename(tmp_path / "audit.sqlite")  # moved out: the way to rebuild
    assert run_mtrs(*_build_args(source, dataset, "--overwrite")).code == 0


def test_decisions_kept_under_any_name_inside_the_dataset_are_kept(
    source: Path, tmp_path: Path
) -> None:
    dataset = tmp_path / "dataset"
    build(source, dataset, OPTIONS)
    elsewhere = DecisionStore(dataset / "train" / "round2.db")  # `craft audit --db` inside it
    elsewhere.record("ann", load_items(dataset)[0].id, "accept")
    _one_line_exit_2(
        run_mtrs(*_build_args(source, dataset, "--overwrite")),
        f"holds 1 audit decision ({dataset / 'train' / 'round2.db'})",
    )
    (dataset / "train" / "round2.db").rename(tmp_path / "round2.db")
    (dataset / "audit.sqlite").symlink_to(tmp_path / "round2.db")  # only the link goes
    (dataset / "notes.sqlite").write_bytes(b"not a database")
    assert run_mtrs(*_build_args(source, dataset, "--overwrite")).code == 0
    assert DecisionStore(tmp_path / "round2.db").latest()  # the decision is where it was


def test_a_decision_recorded_while_the_build_ran_stops_it_before_the_swap(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mtrs_geo.craft.builder as builder

    dataset = tmp_path / "dataset"
    build(source, dataset, OPTIONS)
    item = load_items(dataset)[0].id
    DecisionStore(dataset / "audit.sqlite")  # a server started on it, nothing decided yet
    real = builder._build_into

    def build_while_ann_decides(*args, **kwargs):  # type: ignore[no-untyped-def]
        summary = real(*args, **kwargs)
        DecisionStore(dataset / "audit.sqlite").record("ann", item, "accept")
        return summary

    monkeypatch.setattr(builder, "_build_into", build_while_ann_decides)
    with pytest.raises(InputError, match="holds 1 audit decision"):
        build(source, dataset, OPTIONS, overwrite=True, cancel=None)
    assert [d.auditor for d in DecisionStore(dataset / "audit.sqlite").latest().values()] == ["ann"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "input"]  # no staging left


# --- B9: permissions, SIGTERM, stale staging folders ---


@pytest.mark.parametrize(
    "umask, mode", [(0o022, 0o755), (0o027, 0o750)], ids=["umask-022", "umask-027"]
)
def test_dataset_folder_gets_the_permissions_of_a_plain_mkdir(
    source: Path, tmp_path: Path, umask: int, mode: int
) -> None:
    previous = os.umask(umask)
    try:
        build(source, tmp_path / "dataset", OPTIONS)
    finally:
        os.umask(previous)
    assert (tmp_path / "dataset").stat().st_mode & 0o777 == mode
    assert (tmp_path / "dataset" / "train").stat().st_mode & 0o777 == mode


# Runs ``mtrs ARGS`` with a SIGTERM sent to itself while the first pair is crafted.
SIGTERM_DURING_BUILD = """
import os, signal, sys
import mtrs_geo.craft.builder as builder
real = builder.craft_pair
def craft_then_terminate(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
builder.craft_pair = craft_then_terminate
from mtrs_geo.cli.main import main
main(sys.argv[1:])
"""


def test_sigterm_cancels_a_build_like_sigint_and_keeps_the_previous_dataset(
    source: Path, tmp_path: Path
) -> None:
    dataset = tmp_path / "dataset"
    build(source, dataset, OPTIONS)
    before = _digest(dataset)
    args = [str(a) for a in _build_args(source, dataset, "--overwrite", "--seed", "9")]
    run = subprocess.run(
        [sys.executable, "-c", SIGTERM_DURING_BUILD, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 130, (run.returncode, run.stderr)
    assert run.stderr.strip() == "Error: cancelled: no output was written"
    assert files_in(tmp_path) == ["dataset", "input"]  # no .dataset.partial-* left
    assert _digest(dataset) == before


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_a_build_removes_the_staging_folders_that_killed_builds_left(
    source: Path, tmp_path: Path
) -> None:
    host = socket.gethostname()
    killed = tmp_path / f".dataset.partial-{host}-{_dead_pid()}-k1llt3rm"
    running = tmp_path / f".dataset.partial-{host}-{os.getppid()}-running1"
    older_version = tmp_path / ".dataset.partial-ab12cd34"  # mkdtemp's names, no process in them
    recent_older_version = tmp_path / ".dataset.partial-ef56gh78"
    other_output = tmp_path / f".other.partial-{host}-{_dead_pid()}-0ther0ut"
    for folder in (killed, running, older_version, recent_older_version, other_output):
        folder.mkdir()
        (folder / "A").mkdir()
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(older_version, (two_days_ago, two_days_ago))
    build(source, tmp_path / "dataset", OPTIONS)
    left = {running.name, recent_older_version.name, other_output.name}
    assert set(files_in(tmp_path)) == left | {"dataset", "input"}


# --- --paraphrase-model that is not a model: one line, exit 2 ---


@pytest.mark.parametrize(
    "config, words",
    [
        (None, "is not a transformers model folder"),
        ('{"model_type": "t5"}', "cannot load paraphrase model"),
        ("not json", "cannot load paraphrase model"),
    ],
    ids=["no-config", "no-weights", "broken-config"],
)
def test_a_paraphrase_model_folder_that_is_not_a_model_is_one_line_and_exit_2(
    source: Path, tmp_path: Path, config: str | None, words: str
) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a model")
    if config is not None:
        (folder / "config.json").write_text(config)
    result = run_mtrs(*_build_args(source, tmp_path / "dataset", "--paraphrase-model", folder))
    _one_line_exit_2(result, words)
    assert not (tmp_path / "dataset").exists()


def test_signal_handlers_are_restored_after_a_build(source: Path, tmp_path: Path) -> None:
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert run_mtrs(*_build_args(source, tmp_path / "dataset")).code == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
