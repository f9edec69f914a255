"""``mtrs train`` keeps runs apart, stops bad values before any folder, and logs what it did."""

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch
from cli_run import run_mtrs
from fixtures_train.builders import make_change_folder
from fixtures_train.runs import write_run_config
from fixtures_train.tiny_models import TINY_TEXT

from mtrs_geo.models.training.fingerprints import file_fingerprint
from mtrs_geo.models.training.loop import lr_factor
from mtrs_geo.models.training.record import RECORD_FILE


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished three-step run of the tiny model: (its config, its run folder)."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("run")
    make_change_folder(folder / "cd", size=(48, 48))
    config = write_run_config(
        folder / "run.yaml", {"type": "change_folder", "root": "cd"}, folder / "r"
    )
    result = run_mtrs("train", "-c", config, "--quiet")
    assert result.code == 0, result.err
    return config, folder / "r"


def test_a_fresh_run_into_a_folder_holding_a_run_is_refused_and_the_run_is_kept(
    finished_run: tuple[Path, Path],
) -> None:
    config, run = finished_run
    before = _digests(run)
    result = run_mtrs("train", "-c", config, "--max-steps", "1", "--quiet")
    assert result.code == 2
    assert result.err.strip() == (
        f"Error: {run} already holds a run: resume it with --resume, or choose a new --out"
    )
    assert _digests(run) == before


def test_a_fresh_run_into_a_checkpoint_folder_is_refused(finished_run: tuple[Path, Path]) -> None:
    config, run = finished_run
    for checkpoint in (run / "final", run / "checkpoints" / "step_0000003"):
        before = _digests(checkpoint)
        result = run_mtrs("train", "-c", config, "--out", checkpoint, "--quiet")
        assert result.code == 2 and len(result.err.strip().splitlines()) == 1
        assert "is a checkpoint folder: choose a new --out" in result.err
        assert _digests(checkpoint) == before


def test_a_fresh_run_into_an_empty_folder_trains(
    finished_run: tuple[Path, Path], tmp_path: Path
) -> None:
    config, _ = finished_run
    (tmp_path / "empty").mkdir()
    result = run_mtrs("train", "-c", config, "--out", tmp_path / "empty", "--max-steps", "1")
    assert result.code == 0, result.err
    assert (tmp_path / "empty" / "final" / "config.json").is_file()


def test_resume_auto_starts_over_a_run_stopped_before_its_first_checkpoint(
    finished_run: tuple[Path, Path], tmp_path: Path
) -> None:
    config, _ = finished_run
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "config.yaml").write_text("stage: 1\n")
    (stopped / "log.csv").write_text("step,loss,lr,samples,seconds,samples_per_second\n")
    fresh = run_mtrs("train", "-c", config, "--out", stopped, "--max-steps", "1", "--quiet")
    assert fresh.code == 2 and "already holds a run" in fresh.err
    auto = run_mtrs("train", "-c", config, "--out", stopped, "--max-steps", "1", "--resume", "auto")
    assert auto.code == 0, auto.err
    assert (stopped / "final" / "config.json").is_file()


def test_log_rows_carry_the_learning_rate_each_step_used(finished_run: tuple[Path, Path]) -> None:
    _, run = finished_run
    with (run / "log.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    # lr 1e-3, warm-up 2, 3 steps: step 1 runs at half the rate, step 2 at the full rate.
    expected = [f"{1e-3 * lr_factor(step - 1, 2, 3, 0.05):.3e}" for step in (1, 2, 3)]
    assert [row["lr"] for row in rows] == expected == ["5.000e-04", "1.000e-03", "1.000e-03"]


def test_every_saved_model_records_the_data_it_was_trained_on(
    finished_run: tuple[Path, Path],
) -> None:
    _, run = finished_run
    final = json.loads((run / "final" / RECORD_FILE).read_text())
    folder = (run.parent / "cd").resolve()
    images = [path for sub in ("A", "B") for path in (folder / sub).iterdir()]
    both_dates = sorted(file_fingerprint(path) for path in images)
    assert final == {
        "sources": [
            {
                "type": "change_folder",
                "folder": str(folder),
                "scenes": None,
                "fingerprints": both_dates,  # its images, known by their content elsewhere
            }
        ],
        "unknown": [],
    }
    step = run / "checkpoints" / "step_0000003" / "model" / RECORD_FILE
    assert json.loads(step.read_text()) == final


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optim": {"lr": -1.0}}, "optim.lr must be a number > 0"),
        ({"run": {"checkpoint_every": 0}}, "run.checkpoint_every must be a whole number >= 1"),
        (
            {"model": {"overrides": {"text_model_config": TINY_TEXT, "in_channels": 4}}},
            "band-count mismatch: the model takes 4 bands (in_channels), the training images "
            "have 3",
        ),
    ],
)
def test_a_bad_config_stops_with_one_line_before_the_run_folder_is_made(
    tmp_path: Path, change: dict, message: str
) -> None:
    make_change_folder(tmp_path / "cd", size=(48, 48))
    config = write_run_config(
        tmp_path / "bad.yaml", {"type": "change_folder", "root": "cd"}, tmp_path / "r", **change
    )
    result = run_mtrs("train", "-c", config, "--quiet")
    assert result.code == 2 and result.err.startswith(f"Error: {message}")
    assert len(result.err.strip().splitlines()) == 1
    assert "Internal error" not in result.err and not (tmp_path / "r").exists()


def test_a_negative_time_cap_is_refused(finished_run: tuple[Path, Path], tmp_path: Path) -> None:
    config, _ = finished_run
    result = run_mtrs("train", "-c", config, "--out", tmp_path / "r", "--max-time", "-5")
    assert result.code == 2 and "--max-time" in result.err
    assert not (tmp_path / "r").exists()
