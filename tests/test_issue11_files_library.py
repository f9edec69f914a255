"""Issue 11: the library owns the behaviour; the CLI and the QGIS plugin only show its answers.

One ``DetectConfig`` check (defaults and bounds in ``mtrs_geo.config``), the batch loop in
``mtrs_geo.batch``, library messages that name no CLI flag, one CLI module per command, the note
about a query the model ignores, and an engine import that loads no heavy library.
"""

from __future__ import annotations

import ast
import importlib
import io
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from cli_run import run_mtrs
from test_qgis_plugin import runner

from mtrs_geo import config as engine_config
from mtrs_geo.batch import BatchRow, run_batch
from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import InputError
from mtrs_geo.pipeline import RunMessage

REPO = Path(__file__).resolve().parent.parent
FLAG = re.compile(r"(^|[\s'\"(])(--[a-z]|-o\b)")


def bad_configs(pair, tmp_path: Path) -> dict[str, DetectConfig]:  # type: ignore[no-untyped-def]
    good = DetectConfig(before=pair.before, after=pair.after, output=tmp_path / "c.geojson")
    return {
        "nothing to write": replace(good, output=None),
        "mask raster must be a .tif": replace(good, mask_out=tmp_path / "m.png"),
        "unknown vector output extension": replace(good, output=tmp_path / "c.txt"),
        "output folder does not exist": replace(good, output=tmp_path / "no" / "c.gpkg"),
        "is the after image": replace(good, mask_out=pair.after),
        "threshold must be": replace(good, threshold=0.0),
        "tile size must be": replace(good, tile_size=16),
        "overlap must be": replace(good, overlap=512),
        "batch size must be": replace(good, batch_size=0),
        "unknown device": replace(good, device="gpu"),
        "unknown model": replace(good, model="nope"),
        "minimum area must be": replace(good, min_area=float("inf")),
        "unknown mask type": replace(good, mask_type="rgb"),  # type: ignore[arg-type]
        "is not a known CRS": replace(good, crs="EPSG:999999"),
    }


def test_library_checks_name_no_cli_flag(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for fragment, config in bad_configs(pair, tmp_path).items():
        with pytest.raises(InputError) as raised:
            config.check()
        message = str(raised.value)
        assert fragment in message
        assert not FLAG.search(message), message
        assert "\n" not in message


def test_the_cli_and_the_qgis_runner_give_the_library_answer(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    request = runner.DetectRequest(
        before=str(pair.before), after=str(pair.after), mask_out=str(pair.after)
    )
    config = DetectConfig(before=pair.before, after=pair.after, mask_out=pair.after)
    with pytest.raises(InputError) as raised:
        config.check()
    with pytest.raises(runner.RunFailed) as qgis:
        runner.run_in_process(
            request, progress=lambda p: None, log=lambda m: None, is_cancelled=lambda: False
        )
    cli = run_mtrs("detect", pair.before, pair.after, "--mask-out", pair.after)
    assert str(qgis.value) == str(raised.value)
    assert (cli.code, cli.err.strip()) == (2, f"Error: {raised.value}")


def test_threshold_zero_is_refused_by_every_front_end(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    request = runner.DetectRequest(
        before=str(pair.before), after=str(pair.after), output=str(tmp_path / "c.gpkg"),
        threshold=0.0,
    )  # fmt: skip
    with pytest.raises(runner.RunFailed, match="threshold must be above 0"):
        runner.run_in_process(
            request, progress=lambda p: None, log=lambda m: None, is_cancelled=lambda: False
        )
    cli = run_mtrs("detect", pair.before, pair.after, "-o", tmp_path / "c.gpkg", "--threshold", 0)
    assert cli.code == 2


def test_defaults_live_in_the_config_module_only() -> None:
    request = runner.DetectRequest(before="a.tif", after="b.tif", output="c.gpkg")
    assert not {"--tile-size", "--overlap", "--batch-size", "--threshold"} & set(request.cli_args())
    config = DetectConfig(before=Path("a"), after=Path("b"))
    assert config.model == engine_config.DEFAULT_MODEL == "mtrefseg-r1-both-ways"
    plugin = ast.parse((REPO / "qgis_plugin" / "settings.py").read_text())
    assigned = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in plugin.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id == "DEFAULT_MODEL"
    }
    assert assigned["DEFAULT_MODEL"] == engine_config.DEFAULT_MODEL  # QGIS offers the same
    assert (config.tile_size, config.overlap, config.batch_size, config.threshold) == (
        engine_config.model_tile_size(engine_config.DEFAULT_MODEL),
        engine_config.DEFAULT_OVERLAP,
        engine_config.DEFAULT_BATCH_SIZE,
        engine_config.DEFAULT_THRESHOLD,
    )
    for folder in ("qgis_plugin", "cli"):
        for source in (REPO / folder).glob("*.py"):
            if source.name in ("train.py", "craft.py"):
                continue
            text = source.read_text()
            for literal in ("512", "8192", "1024", "0.5,", "= 0.5"):
                assert literal not in text, f"{source.name} repeats the default {literal}"


def test_the_batch_loop_runs_in_the_library(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    template = DetectConfig(before=pair.before, after=pair.after, tile_size=128)
    rows = [
        BatchRow(1, replace(template, output=tmp_path / "a.gpkg"), output="a.gpkg"),
        BatchRow(2, None, InputError("before and after must both be given"), "b.gpkg"),
        BatchRow(3, replace(template, output=tmp_path / "no" / "c.gpkg"), output="c.gpkg"),
    ]
    seen: list[int] = []
    outcomes = run_batch(rows, on_row=lambda outcome: seen.append(outcome.number))
    assert seen == [1, 2, 3]
    assert [o.ok for o in outcomes] == [True, False, False]
    assert [o.exit_code for o in outcomes] == [0, 2, 2]
    assert (tmp_path / "a.gpkg").is_file()
    assert outcomes[0].to_json()["status"] == "ok" and outcomes[2].to_json()["exit_code"] == 2


@pytest.mark.parametrize("command", ["detect", "info", "batch", "models", "sample"])
def test_each_command_has_its_own_module(command: str) -> None:
    import click

    module = importlib.import_module(f"mtrs_geo.cli.{command}")
    assert isinstance(getattr(module, command), click.Command)
    commands = [name for name, value in vars(module).items() if isinstance(value, click.Command)]
    assert commands == [command]


def test_a_query_ignored_by_the_model_is_said_once_on_stderr(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "c.geojson"
    result = run_mtrs(
        "detect",
        pair.before,
        pair.after,
        "-q",
        "new buildings",
        "-o",
        out,
        "--json",
        "--model",
        "cva",
    )
    assert result.code == 0, result.err
    notes = [line for line in result.err.splitlines() if "ignores the query" in line]
    assert notes == ["note: model 'cva' ignores the query 'new buildings': it finds any change"]
    assert json.loads(result.out)["query_used"] is False
    for extra in (["--any-change"], ["--quiet"]):
        quiet = run_mtrs(
            "detect", pair.before, pair.after, "-q", "x", "-o", out, "--model", "cva", *extra
        )
        assert quiet.code == 0 and "ignores the query" not in quiet.err
    without = run_mtrs("detect", pair.before, pair.after, "-o", out, "--model", "cva")
    assert "ignores the query" not in without.err


def test_setup_stages_are_shown_while_a_bar_is(monkeypatch: pytest.MonkeyPatch) -> None:
    from mtrs_geo.cli.common import MessagePrinter

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    printer = MessagePrinter("bar", quiet=False)
    printer(RunMessage("stage", "loading model mtrefseg-r1"))
    printer(RunMessage("note", "note: once"))
    printer(RunMessage("note", "note: once"))
    MessagePrinter("none", quiet=False)(RunMessage("stage", "hidden"))
    assert err.getvalue().splitlines() == ["loading model mtrefseg-r1 ...", "note: once"]


def test_importing_the_engine_loads_no_heavy_library() -> None:
    probe = (
        "import sys, time; t = time.perf_counter(); import mtrs_geo.pipeline; "
        "import mtrs_geo.cli.detect; "
        "print(sorted(m for m in ('geopandas', 'scipy', 'shapely', 'pyogrio', 'torch', 'pandas')"
        " if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_query_without_a_model_is_answered_by_the_language_model(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "c.geojson"
    result = run_mtrs(
        "detect", pair.before, pair.after, "-q", "new buildings", "-o", out, "--json",
        "--tile-size", 64, "--overlap", 8,
    )  # fmt: skip
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["model"] == "mtrefseg-r1-both-ways" and summary["query_used"] is True
    assert "ignores the query" not in result.err
