"""``mtrs batch``: one output per row, relative paths, goes on past failing rows, exit 1 if any."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pytest
from cli_run import files_in, run_mtrs
from scenes import ImageSpec, make_pair


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with two pairs: ``a/`` (UTM) and ``b/`` (after image in EPSG:4326)."""
    root = tmp_path_factory.mktemp("batch")
    make_pair(root / "a")
    make_pair(root / "b", after=ImageSpec(crs="EPSG:4326"), seed=3)
    return root


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(["before,after,query,output", *rows]) + "\n")
    return path


def test_batch_goes_on_past_a_failing_row_and_exits_1(folder: Path, tmp_path: Path) -> None:
    out = folder / "out1"
    out.mkdir()
    csv_path = write_csv(
        folder / "pairs1.csv",
        [
            "a/before.tif,a/after.tif,new buildings,out1/a.geojson",
            "a/before.tif,missing.tif,new roads,out1/broken.gpkg",
            "b/before.tif,b/after.tif,,out1/b.gpkg",
            "a/before.tif,a/after.tif,x,out1/a.txt",
        ],
    )

    result = run_mtrs("batch", csv_path, "--model", "cva")

    assert result.code == 1
    assert files_in(out) == ["a.geojson", "b.gpkg"]
    assert "row 1: ok" in result.out and "row 3: ok" in result.out
    assert "row 2: FAILED" in result.err and "missing.tif does not exist" in result.err
    assert "row 4: FAILED" in result.err and "unknown vector output extension" in result.err
    assert "2 of 4 rows done, 2 failed" in result.out
    assert set(gpd.read_file(out / "a.geojson")["query"]) == {"new buildings"}
    assert len(gpd.read_file(out / "b.gpkg")) > 0


def test_batch_json_reports_each_row(folder: Path) -> None:
    csv_path = write_csv(
        folder / "pairs2.csv",
        [
            f"{folder / 'a' / 'before.tif'},{folder / 'a' / 'after.tif'},new buildings,out2.fgb",
            "a/before.tif,a/after.tif,new buildings,no_folder/out2.fgb",
        ],
    )
    result = run_mtrs("batch", csv_path, "--json", "--min-area", "1000")
    records = [json.loads(line) for line in result.out.splitlines()]
    assert result.code == 1
    assert [r.get("status") for r in records[:2]] == ["ok", "failed"]
    assert records[0]["outputs"] == [str(folder / "out2.fgb")]
    assert (gpd.read_file(folder / "out2.fgb")["area_m2"] >= 1000).all()
    assert records[1]["exit_code"] == 2
    assert records[1]["message"].startswith("output folder does not exist")
    assert records[2] == {"rows": 2, "ok": 1, "failed": 1}


def test_batch_all_rows_ok_exits_0_with_mask_column(folder: Path) -> None:
    (folder / "pairs3.csv").write_text(
        "query,output,after,before,mask_out\ntrees,out3.gpkg,a/after.tif,a/before.tif,out3.tif\n"
    )
    result = run_mtrs("batch", folder / "pairs3.csv", "--quiet")
    assert (result.code, result.out, result.err) == (0, "", "")
    assert (folder / "out3.gpkg").is_file() and (folder / "out3.tif").is_file()


def test_rows_carry_their_own_dates_and_a_bad_one_fails_its_row(folder: Path) -> None:
    (folder / "pairs_dated.csv").write_text(
        "before,after,query,output,before_date,after_date\n"
        "a/before.tif,a/after.tif,,dated1.gpkg,2019-05-01,2021-06-01\n"
        "a/before.tif,a/after.tif,,dated2.gpkg,2021-06-01,2019-05-01\n"
        "a/before.tif,a/after.tif,,dated3.gpkg,soon,\n"
    )
    result = run_mtrs("batch", folder / "pairs_dated.csv", "--model", "cva")
    assert result.code == 1
    frame = gpd.read_file(folder / "dated1.gpkg")
    assert set(frame["before_date"]) == {"2019-05-01"}
    assert set(frame["after_date"]) == {"2021-06-01"}
    assert "row 2: FAILED" in result.err and "time order" in result.err
    assert "row 3: FAILED" in result.err and "'soon' is not a date" in result.err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("before,after,output\nx.tif,y.tif,o.geojson\n", "lacks the column(s) query"),
        ("before,after,query,output\n", "has no rows"),
    ],
)
def test_bad_csv_exits_2(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text(content)
    result = run_mtrs("batch", path)
    assert result.code == 2 and message in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_missing_csv_exits_2(tmp_path: Path) -> None:
    result = run_mtrs("batch", tmp_path / "nope.csv")
    assert result.code == 2 and "cannot read" in result.err


def test_batch_mask_out_dir(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "data")
    (tmp_path / "pairs.csv").write_text(
        f"before,after,query,output\n{pair.before},{pair.after},new buildings,one.geojson\n"
    )
    masks = tmp_path / "masks"
    masks.mkdir()
    result = run_mtrs("batch", tmp_path / "pairs.csv", "--mask-out-dir", masks, "--quiet")
    assert result.code == 0, result.err
    assert files_in(masks) == ["one.tif"] and (tmp_path / "one.geojson").is_file()


def test_a_missing_mask_folder_is_one_error_before_any_row(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "data")
    (tmp_path / "pairs.csv").write_text(
        "before,after,query,output\n"
        f"{pair.before},{pair.after},q,one.gpkg\n{pair.before},{pair.after},q,two.gpkg\n"
    )
    result = run_mtrs("batch", tmp_path / "pairs.csv", "--mask-out-dir", tmp_path / "missing")
    assert result.code == 2 and result.out == ""
    assert result.err.strip() == (
        f"Error: the folder for the mask rasters does not exist: {tmp_path / 'missing'}"
    )
    assert files_in(tmp_path) == ["data", "pairs.csv"]


def three_rows(tmp_path: Path) -> Path:
    """A CSV of three rows over one generated pair, writing one.gpkg, two.gpkg, three.gpkg."""
    pair = make_pair(tmp_path / "data")
    lines = [f"{pair.before},{pair.after},,{name}.gpkg" for name in ("one", "two", "three")]
    table = tmp_path / "pairs.csv"
    table.write_text("\n".join(["before,after,query,output", *lines]) + "\n")
    return table


def test_a_cancel_in_the_second_row_keeps_the_first_and_names_the_rest(tmp_path: Path) -> None:
    from mtrs_geo.batch import BatchCancelled, batch_configs, read_pairs_csv, run_batch
    from mtrs_geo.cancel import CancelSwitch
    from mtrs_geo.config import DetectConfig

    rows = batch_configs(
        read_pairs_csv(three_rows(tmp_path)), DetectConfig(before=Path(), after=Path(), model="cva")
    )
    cancel = CancelSwitch()

    def progress_for(number: int):  # type: ignore[no-untyped-def]
        return (lambda done, total: cancel.set()) if number == 2 else None

    with pytest.raises(BatchCancelled) as raised:
        run_batch(rows, on_row=lambda outcome: None, progress_for=progress_for, cancel=cancel)

    stopped = raised.value
    assert [(o.number, o.ok) for o in stopped.finished] == [(1, True)]
    assert (stopped.stopped, stopped.not_run, stopped.exit_code) == ((2,), (3,), 130)
    assert str(stopped) == (
        "cancelled: 1 of 3 rows finished, their outputs are kept; row 2, in progress, wrote "
        "nothing; 1 row not run"
    )
    assert [p.name for p in tmp_path.glob("*.gpkg")] == ["one.gpkg"]


def sigint_in_row_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the second row's run start with a SIGINT, as Ctrl+C in the middle of a batch."""
    import os
    import signal

    import mtrs_geo.pipeline

    real_detect = mtrs_geo.pipeline.detect

    def detect(config, *args, **kwargs):  # type: ignore[no-untyped-def]
        if config.output.name == "two.gpkg":
            os.kill(os.getpid(), signal.SIGINT)
        return real_detect(config, *args, **kwargs)

    monkeypatch.setattr(mtrs_geo.pipeline, "detect", detect)


def test_ctrl_c_after_a_row_finished_says_its_output_is_kept_and_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = three_rows(tmp_path)
    sigint_in_row_two(monkeypatch)

    result = run_mtrs("batch", table, "--model", "cva")

    assert result.code == 130
    assert result.err.strip() == (
        "Error: cancelled: 1 of 3 rows finished, their outputs are kept; row 2, in progress, "
        "wrote nothing; 1 row not run"
    )
    assert "row 1: ok" in result.out
    assert [p.name for p in tmp_path.glob("*.gpkg")] == ["one.gpkg"]


def test_ctrl_c_with_json_still_ends_with_a_summary_naming_the_rows_not_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = three_rows(tmp_path)
    sigint_in_row_two(monkeypatch)

    result = run_mtrs("batch", table, "--model", "cva", "--json")

    records = [json.loads(line) for line in result.out.splitlines()]
    assert result.code == 130
    assert [(r["row"], r["status"]) for r in records[:-1]] == [(1, "ok")]
    summary = records[-1]
    assert summary["message"] == result.err.strip().removeprefix("Error: ")
    assert {k: v for k, v in summary.items() if k != "message"} == {
        "rows": 3, "ok": 1, "failed": 0, "cancelled": [2], "not_run": [3], "exit_code": 130
    }  # fmt: skip
