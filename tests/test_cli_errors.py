"""Every bad input exits 2 with one line and no output file; internal errors exit 1; signals 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_run import files_in, run_mtrs
from scenes import ImageSpec, default_extent, make_pair

from mtrs_geo.errors import InputError


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """One good pair and one pair per kind of bad input (rendered once for the module)."""
    root = tmp_path_factory.mktemp("pairs")
    x0, y0, x1, y1 = default_extent()
    far = (x0 + 50_000, y0, x1 + 50_000, y1)
    made = {
        "good": make_pair(root / "good"),
        "disjoint": make_pair(root / "disjoint", after=ImageSpec(extent=far)),
        "no_crs": make_pair(root / "no_crs", after=ImageSpec(write_crs=False)),
        "bands": make_pair(root / "bands", after=ImageSpec(bands=1)),
    }
    garbage = root / "garbage.tif"
    garbage.write_text("this is not a raster")
    pairs = {name: (pair.before, pair.after) for name, pair in made.items()}
    pairs["unreadable"] = (made["good"].before, garbage)
    pairs["missing"] = (made["good"].before, root / "nowhere.tif")
    return pairs


BAD_INPUTS = [
    ("disjoint", [], "do not overlap"),
    ("no_crs", [], "no coordinate reference system"),
    ("bands", [], "band count mismatch"),
    ("unreadable", [], "cannot read after image"),
    ("missing", [], "does not exist"),
    ("good", ["--bands", "1,2,7"], "band 7 is out of range"),
    ("good", ["--model", "no-such-model"], "unknown model 'no-such-model'"),
    ("good", ["--threshold", "1.5"], "'--threshold': 1.5 is not in the range"),
    ("good", ["--threshold", "0"], "'--threshold'"),
    ("good", ["--tile-size", "0"], "'--tile-size'"),
    ("good", ["--overlap", "-3"], "'--overlap'"),
    ("good", ["--tile-size", "64", "--overlap", "64"], "overlap must be"),
    ("good", ["--batch-size", "0"], "'--batch-size'"),
    ("good", ["--device", "gpu"], "use auto, cpu, cuda, cuda:N or mps"),
    ("good", ["--bands", "a,b"], "not a comma-separated list of band numbers"),
    ("good", ["--crs", "EPSG:0"], "is not a known CRS"),
    ("good", ["--crs", "EPSG:999999"], "'EPSG:999999' is not a known CRS"),
    ("good", ["--resolution", "-5"], "'--resolution'"),
    ("good", ["--min-area", "-1"], "'--min-area'"),
    ("good", ["--mask-type", "rgb"], "'--mask-type'"),
    ("good", ["--no-such-option"], "No such option"),
]


@pytest.mark.parametrize(("pair", "extra", "message"), BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_and_no_output(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path]], pair: str, extra: list[str], message: str
) -> None:
    before, after = pairs[pair]
    out = tmp_path / "out"
    out.mkdir()

    result = run_mtrs(
        "detect", before, after, "-o", out / "c.geojson", "--mask-out", out / "m.tif", *extra
    )

    assert result.code == 2
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert result.out == ""
    assert files_in(out) == []


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("changes.txt", "unknown vector output extension '.txt'"),
        ("changes", "unknown vector output extension '(none)'"),
        ("missing/changes.geojson", "output folder does not exist"),
    ],
)
def test_bad_output_name_exits_2_before_any_work(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path]], output: str, message: str
) -> None:
    result = run_mtrs("detect", *pairs["good"], "-o", tmp_path / output)
    assert result.code == 2
    assert message in result.err and len(result.err.strip().splitlines()) == 1
    assert files_in(tmp_path) == []


def test_bad_mask_name_and_missing_outputs(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path]]
) -> None:
    png = run_mtrs("detect", *pairs["good"], "--mask-out", tmp_path / "mask.png")
    assert png.code == 2 and "the mask raster must be a .tif or .tiff file" in png.err
    nothing = run_mtrs("detect", *pairs["good"])
    assert nothing.code == 2 and "nothing to write" in nothing.err
    both = run_mtrs("detect", *pairs["good"], "--sample", "-o", tmp_path / "c.geojson")
    assert both.code == 2 and "not both" in both.err
    one = run_mtrs("detect", pairs["good"][0], "-o", tmp_path / "c.geojson")
    assert one.code == 2 and "give the BEFORE and AFTER images" in one.err
    assert files_in(tmp_path) == []


def test_info_bad_input_exits_2(pairs: dict[str, tuple[Path, Path]]) -> None:
    result = run_mtrs("info", *pairs["disjoint"])
    assert result.code == 2 and "do not overlap" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_progress_json_reports_errors_as_events(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path]]
) -> None:
    engine = run_mtrs("detect", *pairs["bands"], "-o", tmp_path / "c.gpkg", "--progress-json")
    usage = run_mtrs("detect", *pairs["good"], "-o", tmp_path / "c.gpkg", "--progress-json",
                     "--threshold", "9")  # fmt: skip
    for result, fragment in ((engine, "band count mismatch"), (usage, "--threshold")):
        assert result.code == 2
        event = json.loads(result.out.strip().splitlines()[-1])
        assert event["event"] == "error" and event["exit_code"] == 2
        assert fragment in event["message"]
    assert files_in(tmp_path) == []


def test_internal_error_exits_1_with_one_line(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mtrs_geo.pipeline

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(mtrs_geo.pipeline, "detect", broken)
    result = run_mtrs("detect", *pairs["good"], "-o", tmp_path / "c.geojson")
    assert result.code == 1
    assert result.err.strip() == "Internal error: ZeroDivisionError: a bug"


def test_input_error_from_the_engine_keeps_its_message(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mtrs_geo.pipeline

    def refuse(*args: object, **kwargs: object) -> None:
        raise InputError("the after image is all nodata")

    monkeypatch.setattr(mtrs_geo.pipeline, "detect", refuse)
    result = run_mtrs("detect", *pairs["good"], "-o", tmp_path / "c.geojson")
    assert (result.code, result.err.strip()) == (2, "Error: the after image is all nodata")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_cancels_cleanly_with_exit_130_and_no_output(tmp_path: Path, signum: int) -> None:
    x0, y0, _, _ = default_extent()
    pair = make_pair(tmp_path / "data", extent=(x0, y0, x0 + 15_360, y0 + 15_360))  # 1536 px
    out = tmp_path / "out"
    out.mkdir()
    command = [
        sys.executable, "-m", "mtrs_geo.cli.main", "detect", str(pair.before), str(pair.after),
        "-o", str(out / "c.geojson"), "--mask-out", str(out / "m.tif"), "--tile-size", "32",
        "--overlap", "0", "--batch-size", "1", "--progress-json",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    events = []
    for line in process.stdout:
        if json.loads(line)["event"] == "stage":
            continue
        events.append(json.loads(line))
        if events[-1]["event"] == "progress":
            os.kill(process.pid, signum)
            break
    rest, err = process.communicate(timeout=120)
    events += [e for e in map(json.loads, rest.splitlines()) if e["event"] != "stage"]

    assert process.returncode == 130, err
    assert events[0]["event"] == "start" and events[0]["tiles"] == 48 * 48
    assert events[-1]["event"] == "error" and events[-1]["exit_code"] == 130
    assert events[-2]["done"] < 48 * 48
    assert "cancelled" in err and "Traceback" not in err
    assert files_in(out) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_unavailable_device_exits_2(tmp_path: Path, pairs: dict[str, tuple[Path, Path]]) -> None:
    result = run_mtrs(
        "detect", *pairs["good"], "-o", tmp_path / "c.geojson", "--device", "cuda:1",
        "--model", "mtrefseg-r1",
    )  # fmt: skip
    assert result.code == 2 and "no CUDA GPU is available" in result.err
    assert files_in(tmp_path) == []


def test_an_accelerator_for_a_cpu_model_exits_2(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path]]
) -> None:
    result = run_mtrs(
        "detect", *pairs["good"], "-o", tmp_path / "c.geojson", "--model", "cva", "--device", "cuda"
    )
    assert result.code == 2 and "'cva' runs on the CPU only" in result.err
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("command", ["detect", "info", "batch"])
def test_unknown_crs_prints_our_line_and_no_gdal_line(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path]], command: str
) -> None:
    # A subprocess: GDAL writes its "ERROR 1: ..." lines to file descriptor 2 itself, which an
    # in-process redirect of sys.stderr would not see.
    before, after = pairs["good"]
    table = tmp_path / "pairs.csv"
    table.write_text(f"before,after,query,output\n{before},{after},,{tmp_path / 'c.gpkg'}\n")
    arguments = {
        "detect": [str(before), str(after), "-o", str(tmp_path / "c.gpkg")],
        "info": [str(before), str(after)],
        "batch": [str(table)],
    }[command]
    done = subprocess.run(
        [sys.executable, "-m", "mtrs_geo.cli.main", command, *arguments, "--crs", "EPSG:999999"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "'EPSG:999999' is not a known CRS" in lines[0]
    assert "ERROR 1" not in done.stderr
    assert done.stdout == ""
