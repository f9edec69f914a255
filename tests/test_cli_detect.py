"""``mtrs detect``, ``info``, ``models`` and ``sample`` on generated scenes and real GeoTIFFs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from cli_run import assert_changes_found_in_place, files_in, run_mtrs
from rasterio.warp import Resampling, calculate_default_transform, reproject
from scenes import BASE_CRS, ImageSpec, make_pair, planted_mask

GEOTIFF = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "geotiff"


@pytest.mark.parametrize(
    ("before", "after", "pixel_m"),
    [
        (ImageSpec(), ImageSpec(), 10.0),
        (ImageSpec(), ImageSpec(crs="EPSG:4326"), 10.0),
        (ImageSpec(), ImageSpec(crs="EPSG:3857", pixel_size_m=7.0), 10.0),
        (ImageSpec(), ImageSpec(pixel_size_m=20.0, shift_px=(0.3, 0.6)), 10.0),
        (ImageSpec(crs="EPSG:3857", pixel_size_m=12.0), ImageSpec(), 12.0),
        (ImageSpec(crs="EPSG:4326"), ImageSpec(crs="EPSG:32633", pixel_size_m=5.0), 10.0),
    ],
    ids=["utm-utm", "utm-4326", "utm-3857", "utm-20m-shifted", "3857-utm", "4326-utm5m"],
)
def test_planted_changes_come_back_at_their_ground_position(
    tmp_path: Path, before: ImageSpec, after: ImageSpec, pixel_m: float
) -> None:
    pair = make_pair(tmp_path / "data", before=before, after=after)
    out = tmp_path / "changes.geojson"
    native = tmp_path / "changes.gpkg"

    result = run_mtrs(
        "detect", "--model", "cva", pair.before, pair.after, "-q", "new buildings", "-o", out
    )
    assert result.code == 0, result.err
    run_mtrs("detect", "--model", "cva", pair.before, pair.after, "-o", native, "--quiet")

    detected = assert_changes_found_in_place(out, pair.changes, BASE_CRS, pixel_m)
    assert set(detected["query"]) == {"new buildings"}
    assert set(detected["model"]) == {"cva"}
    assert set(detected["before"]) == {"before.tif"} and set(detected["after"]) == {"after.tif"}
    assert (detected["mean_score"] >= 0.5).all() and (detected["mean_score"] <= 1.0).all()
    # area_m2 is the ground area, whatever the CRS of the grid.
    ground = detected.to_crs(detected.estimate_utm_crs()).area.to_numpy()
    assert detected["area_m2"].to_numpy() == pytest.approx(ground, rel=2e-3)
    # .gpkg keeps the common grid's CRS: the before image's.
    with rasterio.open(pair.before) as src:
        assert gpd.read_file(native).crs == src.crs


def test_nodata_borders_stay_out_of_the_polygons(tmp_path: Path) -> None:
    pair = make_pair(
        tmp_path,
        before=ImageSpec(nodata=0, nodata_border=20),
        after=ImageSpec(crs="EPSG:3857", mask_border=True, nodata_border=12),
    )
    out, mask = tmp_path / "changes.fgb", tmp_path / "m.tif"
    result = run_mtrs(
        "detect", "--model", "cva", pair.before, pair.after, "-o", out, "--mask-out", mask
    )
    assert result.code == 0, result.err
    assert_changes_found_in_place(out, pair.changes, BASE_CRS, 10.0)
    with rasterio.open(mask) as src:
        values = src.read(1)
        assert (values[:20] == -1).all() and (values[:, :20] == -1).all()
        assert ((values[20:-20, 20:-20] >= 0) & (values[20:-20, 20:-20] <= 1)).all()


def test_json_summary_and_binary_mask(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "data")
    out, mask = tmp_path / "changes.shp", tmp_path / "mask.tif"

    result = run_mtrs(
        "detect", pair.before, pair.after, "--model", "cva", "-o", out, "--mask-out", mask,
        "--mask-type", "binary", "--tile-size", "96", "--overlap", "16", "--json",
    )  # fmt: skip

    assert result.code == 0, result.err
    lines = result.out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["outputs"] == [str(out), str(mask)]
    assert summary["polygons"] == len(gpd.read_file(out))
    assert summary["tiles"] == 9 and summary["tiles_run"] + summary["tiles_skipped"] == 9
    assert {"read", "model", "stitch", "vectorize"} <= set(summary["timings"])
    with rasterio.open(mask) as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 255
        found = src.read(1) == 1
        truth = planted_mask(pair.changes, src.transform, src.width, src.height, str(src.crs))
    assert (found & ~truth).sum() == 0
    assert (found & truth).sum() >= 0.8 * truth.sum()


def test_progress_json_lines(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "data")
    result = run_mtrs(
        "detect", pair.before, pair.after, "--model", "cva", "-o", tmp_path / "c.geojson",
        "--tile-size", "64", "--overlap", "0", "--batch-size", "3", "--progress-json",
    )  # fmt: skip
    assert result.code == 0, result.err
    events = [json.loads(line) for line in result.out.splitlines()]
    stages = [e for e in events if e["event"] == "stage"]
    assert stages and {"opening the images", "loading model cva"} <= {e["message"] for e in stages}
    events = [e for e in events if e["event"] != "stage"]
    assert events[0] == {"event": "start", "tiles": 16}
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["done"] for e in progress] == sorted(e["done"] for e in progress)
    assert progress[-1] == {"event": "progress", "done": 16, "total": 16}
    assert events[-1]["event"] == "done" and events[-1]["polygons"] > 0


def test_min_area_and_simplify(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "data", after=ImageSpec(crs="EPSG:4326"))
    exact, filtered = tmp_path / "exact.gpkg", tmp_path / "filtered.gpkg"
    assert run_mtrs("detect", "--model", "cva", pair.before, pair.after, "-o", exact).code == 0
    result = run_mtrs(
        "detect", pair.before, pair.after, "--model", "cva", "-o", filtered, "--min-area", "50000",
        "--simplify", "15",
    )  # fmt: skip
    assert result.code == 0, result.err
    every, big = gpd.read_file(exact), gpd.read_file(filtered)
    assert (big["area_m2"] >= 50_000).all()
    assert len(big) == (every["area_m2"] >= 50_000).sum() > 0
    assert big["id"].tolist() == list(range(1, len(big) + 1))
    vertices = shapely.get_num_coordinates(big.geometry.to_numpy()).sum()
    kept = every[every["area_m2"] >= 50_000].geometry.to_numpy()
    assert vertices < 0.5 * shapely.get_num_coordinates(kept).sum()
    assert (
        shapely.union_all(kept)
        .symmetric_difference(shapely.union_all(big.geometry.to_numpy()))
        .area
        < 0.05 * shapely.union_all(kept).area
    )


def test_any_change_and_explicit_options(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "data")
    out = tmp_path / "c.geojson"
    result = run_mtrs(
        "detect", pair.before, pair.after, "--model", "cva", "-o", out, "--any-change",
        "--bands", "3,2,1",
        "--after-bands", "3,2,1", "--device", "cpu", "--threshold", "0.4", "--crs", "EPSG:3857",
        "--resolution", "14",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "polygon" in result.out and str(out) in result.out
    assert_changes_found_in_place(out, pair.changes, BASE_CRS, 14.0 * 1.42)


def plant_patch(src_path: Path, dst_path: Path, crs: str | None = None) -> None:
    """Copy a real GeoTIFF (optionally reprojected) with a bright square planted in it."""
    with rasterio.open(src_path) as src:
        data = src.read()
        profile = src.profile | {"tiled": True, "blockxsize": 256, "blockysize": 256}
        if crs is not None:
            transform, width, height = calculate_default_transform(
                src.crs, crs, src.width, src.height, *src.bounds
            )
            warped = np.zeros((src.count, height, width), dtype=data.dtype)
            reproject(
                data, warped, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                dst_crs=crs, resampling=Resampling.nearest, src_nodata=src.nodata,
                dst_nodata=src.nodata,
            )  # fmt: skip
            data = warped
            profile |= {"crs": crs, "transform": transform, "width": width, "height": height}
    data[:, 300:340, 400:440] = np.array([250, 30, 200], dtype=data.dtype)[:, None, None]
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)


def test_real_geotiff_change_is_found_where_it_was_planted(tmp_path: Path) -> None:
    before = GEOTIFF / "RGB.byte.tif"
    after = tmp_path / "after.tif"
    plant_patch(before, after)
    out = tmp_path / "changes.geojson"

    result = run_mtrs(
        "detect", "--model", "cva", before, after, "-q", "new pond", "-o", out, "--json"
    )

    assert result.code == 0, result.err
    with rasterio.open(after) as src:
        patch = shapely.box(*src.xy(340, 400, offset="ul"), *src.xy(300, 440, offset="ul"))
        pixel = src.res[0]
        crs = str(src.crs)
    detected = assert_changes_found_in_place(out, [patch], crs, pixel)
    assert len(detected) == 1
    assert detected["area_m2"].iloc[0] == pytest.approx(1600 * pixel * pixel, rel=0.01)


def test_real_geotiff_against_its_web_mercator_copy(tmp_path: Path) -> None:
    before = GEOTIFF / "RGB.byte.tif"
    after = tmp_path / "after_3857.tif"
    plant_patch(before, after, crs="EPSG:3857")
    info = run_mtrs("info", before, after, "--json")
    assert info.code == 0, info.err
    assert json.loads(info.out)["after_read"] == "warp"
    with rasterio.open(after) as src:
        patch = shapely.box(*src.xy(340, 400, offset="ul"), *src.xy(300, 440, offset="ul"))
    patch_utm = gpd.GeoSeries([patch], crs=3857).to_crs(32618).iloc[0]
    out = tmp_path / "changes.gpkg"

    result = run_mtrs("detect", "--model", "cva", before, after, "-o", out, "--min-area", "1000000")

    assert result.code == 0, result.err
    detected = gpd.read_file(out)
    assert detected.crs.to_epsg() == 32618
    largest = detected.geometry.iloc[int(detected["area_m2"].argmax())]
    # The planted square lands on the before image's grid within about one (300 m) pixel.
    assert largest.hausdorff_distance(patch_utm) <= 300.0 * 1.5
    assert largest.intersection(patch_utm).area >= 0.8 * patch_utm.area


def test_sample_pair_runs_offline(tmp_path: Path) -> None:
    out = tmp_path / "demo.geojson"
    result = run_mtrs(
        "detect", "--model", "cva", "--sample", "-q", "any change", "-o", out, "--json"
    )
    assert result.code == 0, result.err
    assert json.loads(result.out)["polygons"] == len(gpd.read_file(out)) > 0

    copied = run_mtrs("sample", tmp_path / "pair")
    assert copied.code == 0, copied.err
    assert {"after.tif", "before.tif"} <= set(files_in(tmp_path / "pair"))
    assert str(tmp_path / "pair" / "before.tif") in copied.out


def test_sample_series_writes_three_dated_images_that_info_reads(tmp_path: Path) -> None:
    written = run_mtrs("sample", tmp_path / "series", "--series")
    assert written.code == 0, written.err
    images = written.out.split()
    assert len(images) == 3 and "SOURCE.md" in files_in(tmp_path / "series")
    assert not [name for name in files_in(tmp_path / "series") if "partial" in name]
    info = run_mtrs("info", *images, "--json")
    assert info.code == 0, info.err
    assert json.loads(info.out)["dates"] == ["2000-03-17", "2001-08-27", "2003-02-06"]


def test_info_reports_grid_overlap_and_tiles(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, after=ImageSpec(crs="EPSG:4326"))
    as_json = run_mtrs(
        "info", pair.before, pair.after, "--tile-size", "100", "--overlap", "10", "--json"
    )
    assert as_json.code == 0, as_json.err
    info = json.loads(as_json.out)
    assert (info["width"], info["height"], info["crs"]) == (256, 256, "EPSG:32633")
    assert info["tiles"] == 9 and info["after_read"] == "warp"
    assert info["area_m2"] == pytest.approx(2560.0**2, rel=0.01)
    text = run_mtrs("info", pair.before, pair.after)
    assert text.code == 0
    assert "256 x 256 px" in text.out and "EPSG:32633" in text.out and "km^2" in text.out


def test_models_lists_every_registered_model_without_crashing() -> None:
    result = run_mtrs("models")
    assert result.code == 0, result.err
    assert "cva:" in result.out and "query-aware: no" in result.out
    assert "mtrefseg-r1" in result.out
    records = [json.loads(line) for line in run_mtrs("models", "--json").out.splitlines()]
    assert {r["name"] for r in records} == {"cva", "mtrefseg-r1", "mtrefseg-r1-both-ways"}
    cva = next(r for r in records if r["name"] == "cva")
    assert cva["available"] and cva["query_aware"] is False
    assert [r["name"] for r in records if r["default"]] == ["mtrefseg-r1-both-ways"]
    assert "mtrefseg-r1-both-ways (the default):" in result.out


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from mtrs_geo.cli.common import ProgressReporter, progress_mode

    assert progress_mode(quiet=False, as_json=False, progress_json=False) == "none"  # not a tty
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert progress_mode(quiet=False, as_json=False, progress_json=False) == "bar"
    assert progress_mode(quiet=True, as_json=False, progress_json=False) == "none"
    assert progress_mode(quiet=False, as_json=True, progress_json=False) == "none"
    assert progress_mode(quiet=False, as_json=False, progress_json=True) == "json"
    reporter = ProgressReporter("bar")
    for done in (2, 5, 10):
        reporter(done, 10)
    reporter.close()
    shown = terminal.getvalue()
    assert "10/10" in shown and "tiles/s" in shown and "<" in shown  # count, rate, ETA
