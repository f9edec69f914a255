import json
from pathlib import Path

from click.testing import CliRunner
from fixtures_train.builders import make_mtrefseg
from test_evaluate import HAND_ROW, write_hand_predictions

from mtrs_geo.cli.main import cli


def test_evaluate_predictions_prints_and_writes_the_hand_computed_table(tmp_path: Path) -> None:
    make_mtrefseg(tmp_path / "ds", "val")
    write_hand_predictions(tmp_path / "preds")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        cli,
        ["evaluate", str(tmp_path / "ds"), "--split", "val"]
        + ["--predictions", str(tmp_path / "preds"), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert HAND_ROW in result.output
    report = json.loads(out.read_text())
    val = report["splits"]["val"]
    assert set(val) >= {"mIoU", "oIoU", "Pr@50", "Pr@60", "Pr@70", "Pr@80", "Pr@90"}
    assert round(val["oIoU"], 2) == 42.48 and val["false_positives_on_empty_gt"] == 1
    assert HAND_ROW in out.with_suffix(".md").read_text()


def test_evaluate_needs_exactly_one_of_model_and_predictions(tmp_path: Path) -> None:
    make_mtrefseg(tmp_path / "ds", "val")
    result = CliRunner().invoke(
        cli, ["evaluate", str(tmp_path / "ds"), "--out", str(tmp_path / "r.json")]
    )
    assert result.exit_code != 0
    assert "exactly one of --model and --predictions" in str(result.exception)


def test_benchmark_puts_every_model_in_one_table(tmp_path: Path) -> None:
    make_mtrefseg(tmp_path / "ds", "val", size=(48, 48))
    out = tmp_path / "board.json"
    result = CliRunner().invoke(
        cli,
        ["benchmark", str(tmp_path / "ds"), "--model", "cva", "--model", "cva@any"]
        + ["--input-size", "0", "--out", str(out), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    assert "| cva / val |" in result.output and "| cva@any / val |" in result.output
    board = json.loads(out.read_text())
    assert board["models"]["cva"]["val"]["samples"] == 4
