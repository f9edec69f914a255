"""An input is never overwritten: not the area of interest, not a checkpoint, not another row's.

``detect`` refuses an output that names any file the run reads; ``batch`` refuses, before any
work, an output of one row that another row reads. Each refusal is one line and exit 2.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import geopandas as gpd
import pytest
from cli_run import files_in, run_mtrs
from scenes import BASE_CRS

from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import InputError


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_aoi(path: Path, pair) -> Path:  # type: ignore[no-untyped-def]
    """A vector file holding one polygon around the pair's first planted change."""
    gpd.GeoDataFrame(geometry=[pair.changes[0].buffer(60.0)], crs=BASE_CRS).to_file(path)
    return path


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("name", ["aoi.gpkg", "aoi.geojson", "aoi.fgb"])
def test_polygons_written_over_the_area_of_interest_are_refused(
    tmp_path: Path, pair, name: str
) -> None:
    aoi = write_aoi(tmp_path / name, pair)
    kept = digest(aoi)

    result = run_mtrs("detect", pair.before, pair.after, "--model", "cva", "--aoi", aoi, "-o", aoi)

    assert result.code == 2
    assert "is the area of interest" in one_error_line(result.err)
    assert digest(aoi) == kept


@pytest.mark.parametrize("how", ["relative-path", "symlink", "hard-link"])
def test_an_output_reaching_the_area_of_interest_by_another_name_is_refused(
    tmp_path: Path, pair, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    aoi = write_aoi(tmp_path / "aoi.gpkg", pair)
    kept = digest(aoi)
    target = tmp_path / "changes.gpkg"
    if how == "relative-path":
        monkeypatch.chdir(tmp_path)
        target = Path("data") / ".." / "aoi.gpkg"
    elif how == "symlink":
        target.symlink_to(aoi)
    else:
        os.link(aoi, target)

    result = run_mtrs(
        "detect", pair.before, pair.after, "--model", "cva", "--aoi", aoi, "-o", target
    )

    assert result.code == 2 and "area of interest" in one_error_line(result.err)
    assert digest(aoi) == kept


def test_the_library_check_refuses_the_area_of_interest_as_the_mask(tmp_path: Path, pair) -> None:
    aoi = tmp_path / "aoi.tif"
    shutil.copy(pair.after, aoi)  # any file: the check names it before reading it
    config = DetectConfig(before=pair.before, after=pair.after, aoi=aoi, mask_out=aoi, model="cva")
    with pytest.raises(InputError, match="is the area of interest"):
        config.check()


def test_a_later_image_of_a_series_given_as_a_band_list_is_an_input(tmp_path: Path, pair) -> None:
    third = tmp_path / "third.tif"
    shutil.copy(pair.after, third)
    config = DetectConfig(
        before=pair.before,
        after=pair.after,
        more_images=(f"{third},{pair.after}",),
        mask_out=third,
        model="cva",
    )
    with pytest.raises(InputError, match="is image 3"):
        config.check()


def test_an_output_over_a_file_of_the_model_checkpoint_is_refused(tmp_path: Path, pair) -> None:
    checkpoint = tmp_path / "my-model"
    checkpoint.mkdir()
    settings = checkpoint / "config.json"
    settings.write_text('{"inference_tile_size": 256}')
    config = DetectConfig(
        before=pair.before, after=pair.after, model=str(checkpoint), output=settings
    )
    with pytest.raises(InputError, match="file of the model checkpoint"):
        config.check()
    assert settings.read_text() == '{"inference_tile_size": 256}'
    # A new file beside the checkpoint's destroys nothing.
    DetectConfig(
        before=pair.before, after=pair.after, model=str(checkpoint), output=checkpoint / "c.json"
    ).check()


# --------------------------------------------------------------------------------------------------
# batch: no row writes over what any row reads
# --------------------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(["before,after,query,output,mask_out", *rows]) + "\n")
    return path


def test_a_row_writing_over_the_after_image_of_another_row_is_refused_before_any_work(
    tmp_path: Path, pair
) -> None:
    shared = tmp_path / "r1.tif"
    shutil.copy(pair.after, shared)
    kept = digest(shared)
    (tmp_path / "out").mkdir()
    csv_path = write_csv(
        tmp_path / "cross.csv",
        [
            f"{pair.before},{pair.after},x,out/m1.gpkg,r1.tif",
            f"{pair.before},r1.tif,x,out/m2.gpkg,",
        ],
    )

    result = run_mtrs("batch", csv_path, "--model", "cva")

    assert result.code == 2
    line = one_error_line(result.err)
    assert "row 1" in line and "row 2" in line and "after image" in line
    assert digest(shared) == kept
    assert files_in(tmp_path / "out") == []  # row 1 did not run either


def test_a_later_row_writing_over_an_earlier_rows_before_image_is_refused(
    tmp_path: Path, pair
) -> None:
    shared = tmp_path / "b1.tif"
    shutil.copy(pair.before, shared)
    kept = digest(shared)
    csv_path = write_csv(
        tmp_path / "cross.csv",
        [f"b1.tif,{pair.after},x,m1.gpkg,", f"{pair.before},{pair.after},x,m2.gpkg,b1.tif"],
    )
    result = run_mtrs("batch", csv_path, "--model", "cva", "--json")
    assert result.code == 2 and result.out == ""
    assert "row 2 writes" in result.err and "before image of row 1" in result.err
    assert digest(shared) == kept and not (tmp_path / "m1.gpkg").exists()


def test_masks_named_by_the_mask_folder_may_not_land_on_another_rows_input(
    tmp_path: Path, pair
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(pair.before, inputs / "b.tif")
    shutil.copy(pair.after, inputs / "a.tif")
    kept = digest(inputs / "a.tif")
    # Row 1's polygons are a.gpkg, so its mask in the input folder would be a.tif: row 2's input.
    csv_path = write_csv(
        tmp_path / "pairs.csv",
        [f"{pair.before},{pair.after},x,a.gpkg,", "inputs/b.tif,inputs/a.tif,x,other.gpkg,"],
    )
    result = run_mtrs("batch", csv_path, "--model", "cva", "--mask-out-dir", inputs)
    assert result.code == 2
    assert "row 1 writes" in one_error_line(result.err) and "after image of row 2" in result.err
    assert digest(inputs / "a.tif") == kept
    assert files_in(inputs) == ["a.tif", "b.tif"]


def test_a_row_writing_over_a_file_another_rows_vrt_reads_is_refused(tmp_path: Path, pair) -> None:
    from rasterio.shutil import copy

    source = tmp_path / "after_copy.tif"
    shutil.copy(pair.after, source)
    copy(source, tmp_path / "after.vrt", driver="VRT")
    kept = digest(source)
    csv_path = write_csv(
        tmp_path / "pairs.csv",
        [
            f"{pair.before},{pair.after},x,one.gpkg,after_copy.tif",
            f"{pair.before},after.vrt,x,two.gpkg,",
        ],
    )
    result = run_mtrs("batch", csv_path, "--model", "cva")
    assert result.code == 2 and "of row 2" in one_error_line(result.err)
    assert digest(source) == kept


def test_a_row_writing_over_the_area_of_interest_is_refused(tmp_path: Path, pair) -> None:
    aoi = write_aoi(tmp_path / "aoi.gpkg", pair)
    kept = digest(aoi)
    csv_path = write_csv(
        tmp_path / "pairs.csv",
        [f"{pair.before},{pair.after},x,one.gpkg,", f"{pair.before},{pair.after},x,aoi.gpkg,"],
    )
    result = run_mtrs("batch", csv_path, "--model", "cva", "--aoi", aoi)
    assert result.code == 2 and "row 2" in result.err
    assert "area of interest" in one_error_line(result.err)
    assert digest(aoi) == kept and not (tmp_path / "one.gpkg").exists()


def test_rows_reading_one_input_and_writing_their_own_outputs_still_run(
    tmp_path: Path, pair
) -> None:
    csv_path = write_csv(
        tmp_path / "pairs.csv",
        [
            f"{pair.before},{pair.after},x,one.gpkg,one.tif",
            f"{pair.before},{pair.after},x,two.gpkg,",
        ],
    )
    result = run_mtrs("batch", csv_path, "--model", "cva", "--quiet")
    assert result.code == 0, result.err
    assert {"one.gpkg", "one.tif", "two.gpkg"} <= set(files_in(tmp_path))
