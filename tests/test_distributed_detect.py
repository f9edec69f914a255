"""One scene split into panels predicted on a real Dask cluster (``conftest.cluster``).

A scene run on the cluster must write what one process writes: the same polygons (geometry and
every attribute, in the same order) and the same mask raster. Models load once per worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from cli_run import files_in, run_mtrs
from rasterio.crs import CRS
from scenes import ImageSpec, ScenePair, make_pair
from scipy import ndimage

from mtrs_geo.config import DetectConfig
from mtrs_geo.errors import Cancelled, InputError, OutputError
from mtrs_geo.grid import Grid, Panel, scene_tiling
from mtrs_geo.model_api import load_model
from mtrs_geo.panel_tasks import SceneJob, halo_panels, predict_panel, scene_setup
from mtrs_geo.pipeline import detect
from mtrs_geo.read import open_raster
from mtrs_geo.stitch import StripStitcher
from mtrs_geo.vectorize import PanelVectorizer, SeamJoiner, StreamingVectorizer, panel_strips
from mtrs_geo.worker_models import PLUGIN_NAME

# A 1024 px scene in tiles of 128 px every 112 px: five panels (of two tile columns), four seams.
SPLIT = ("--tile-size", "128", "--overlap", "16", "--panel-width", "300")


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> ScenePair:
    """The planted changes at 2.5 m: 1024 x 1024 px, four regions, most cut by a panel seam."""
    return make_pair(tmp_path_factory.mktemp("scene"), before=ImageSpec(pixel_size_m=2.5))


def assert_same_outputs(expected: Path, got: Path) -> None:
    """Same rows, attributes and geometries (byte for byte) in two vector files."""
    one, other = gpd.read_file(expected), gpd.read_file(got)
    assert len(one) > 0
    assert list(one.columns) == list(other.columns)
    left, right = one.drop(columns="geometry"), other.drop(columns="geometry")
    differ = [c for c in left.columns if not left[c].equals(right[c])]
    assert not differ, {c: (left[c].tolist(), right[c].tolist()) for c in differ}
    assert wkb(one) == wkb(other)


def wkb(table: gpd.GeoDataFrame) -> list[bytes]:
    return shapely.to_wkb(table.geometry.values).tolist()


def assert_same_raster(expected: Path, got: Path) -> None:
    with rasterio.open(expected) as one, rasterio.open(got) as other:
        assert one.profile == other.profile
        np.testing.assert_array_equal(one.read(), other.read())


def noisy_field(height: int, width: int, seed: int) -> np.ndarray:
    """Blobs of many sizes, holes, and a nodata band."""
    rng = np.random.default_rng(seed)
    values = ndimage.uniform_filter(rng.random((height, width)), size=5).astype(np.float32)
    values = (values - values.min()) / (values.max() - values.min())
    values[:, width // 3 : width // 3 + 2] = -1.0
    return values


@pytest.mark.parametrize("min_pixels", [0, 12])
def test_panels_polygonized_apart_and_joined_at_their_seams_give_the_one_pass_table(
    min_pixels: int,
) -> None:
    values = noisy_field(101, 57, seed=3)
    panels = [Panel(0, 20, 16, ()), Panel(16, 20, 16, ()), Panel(32, 25, 25, ())]
    streamer = StreamingVectorizer(
        57, 101, Affine.identity(), None, 0.55, 16, block_rows=20, panels=panels,
        min_pixels=min_pixels,
    )  # fmt: skip
    strips = panel_strips(panels, 101, 16, block_rows=20)
    joiner = SeamJoiner(panels, min_pixels)
    for index, panel in enumerate(panels):
        own = values[:, panel.col_off : panel.col_off + panel.own_width]
        streamer.add_rows(0, own.copy(), panel.col_off)
        apart = PanelVectorizer(panels, index, strips, 0.55, min_pixels=min_pixels)
        for row in range(0, 101, 30):
            apart.add_rows(row, own[row : row + 30].copy())
        joiner.add_panel(apart.regions())

    expected, result = streamer.result(), joiner.table(Affine.identity(), None)

    assert len(expected) > 10
    assert expected.drop(columns="geometry").equals(result.drop(columns="geometry"))
    assert wkb(expected) == wkb(result)


@pytest.mark.parametrize(("overlap", "panel_width"), [(16, 300), (80, 130)])
def test_a_panel_stitched_after_its_halo_gets_the_rows_of_the_whole_scene(
    overlap: int, panel_width: int
) -> None:
    grid = Grid(CRS.from_epsg(32633), Affine(1, 0, 0, 0, -1, 0), 700, 300)
    tiling = scene_tiling(grid, 128, overlap, panel_width)
    panels = list(tiling.panels)
    rng = np.random.default_rng(overlap)
    answers = {
        (int(w.col_off), int(w.row_off)): (
            rng.random((128, 128), dtype=np.float32),
            rng.random((128, 128)) > 0.1,  # some invalid pixels: weights that are not the taper
        )
        for panel in panels
        for w in panel.windows
    }

    def stitch(layout: list[Panel], keep: int | None) -> np.ndarray:
        rows = np.full((300, 700), np.nan, dtype=np.float32)

        def on_rows(first_row: int, first_col: int, values: np.ndarray) -> None:
            if keep is None or first_col == keep:
                height, width = values.shape
                rows[first_row : first_row + height, first_col : first_col + width] = values

        with StripStitcher(None, grid, replace(tiling, panels=tuple(layout)), on_rows) as stitcher:
            for panel in layout:
                for w in panel.windows:
                    stitcher.add(w, *answers[(int(w.col_off), int(w.row_off))])
        return rows

    whole = stitch(panels, None)
    assert len(panels) >= 3
    for index, panel in enumerate(panels):
        halo = halo_panels(panels, index)
        own = slice(panel.col_off, panel.col_off + panel.own_width)
        alone = stitch([*halo, panel], panel.col_off)
        np.testing.assert_array_equal(alone[:, own], whole[:, own])
        assert len(halo) == min(index, 1 if overlap < 64 else 2)


def test_detect_on_the_cluster_writes_what_one_process_writes(
    cluster: str, scene: ScenePair, tmp_path: Path
) -> None:
    one, split = tmp_path / "one", tmp_path / "split"
    one.mkdir()
    split.mkdir()
    common = (scene.before, scene.after, *SPLIT, "--min-area", "60", "--json")

    single = run_mtrs(
        "detect", "--model", "cva", *common, "-o", one / "changes.gpkg", "--mask-out", one / "p.tif"
    )
    remote = run_mtrs("detect", "--model", "cva", *common, "-o", split / "changes.gpkg",
                      "--mask-out", split / "p.tif", "--scheduler", cluster)  # fmt: skip

    assert single.code == 0 and remote.code == 0, remote.err
    assert_same_outputs(one / "changes.gpkg", split / "changes.gpkg")
    assert_same_raster(one / "p.tif", split / "p.tif")
    assert files_in(split) == ["changes.gpkg", "p.tif"]  # no scratch folder, no panel file left
    # Polygons cross the seams between the panels; the counts add up to the whole scene's.
    table = gpd.read_file(split / "changes.gpkg")
    seams = [224 * k for k in range(1, 5)]
    columns = (table.geometry.bounds[["minx", "maxx"]] - 500_000.0) / 2.5
    assert any(((columns.minx < s) & (columns.maxx > s)).any() for s in seams)
    summary = [json.loads(r.out) for r in (single, remote)]
    for key in ("tiles", "tiles_run", "tiles_skipped", "polygons"):
        assert summary[0][key] == summary[1][key]


def test_a_time_series_with_a_binary_mask_on_the_cluster_equals_one_process(
    cluster: str, scene: ScenePair, tmp_path: Path
) -> None:
    config = DetectConfig(
        model="cva",
        before=scene.before, after=scene.after, more_images=(scene.before,),
        output=tmp_path / "one" / "changes.gpkg", mask_out=tmp_path / "one" / "mask.tif",
        mask_type="binary", tile_size=128, overlap=16, panel_width=300, batch_size=3,
    )  # fmt: skip
    split = replace(
        config, output=tmp_path / "split" / "changes.gpkg", mask_out=tmp_path / "split" / "mask.tif"
    )
    for folder in ("one", "split"):
        (tmp_path / folder).mkdir()

    expected = detect(config)
    result = detect(split, scheduler=cluster)

    assert result.intervals == 2 and result.polygons == expected.polygons > 0
    assert_same_outputs(config.output, split.output)  # type: ignore[arg-type]
    assert_same_raster(config.mask_out, split.mask_out)  # type: ignore[arg-type]


def test_models_load_once_per_worker_process(
    cluster: str, scene: ScenePair, tmp_path: Path
) -> None:
    from dask.distributed import Client

    config = DetectConfig(
        model="cva",
        before=scene.before, after=scene.after, output=tmp_path / "a.geojson",
        tile_size=128, overlap=16, panel_width=130,
    )  # fmt: skip
    detect(config, scheduler=cluster)
    detect(replace(config, output=tmp_path / "b.geojson"), scheduler=cluster)

    with Client(cluster) as client:
        loads = client.run(lambda dask_worker: dask_worker.plugins[PLUGIN_NAME].loads)
    # Two runs of 9 panels (and the parts of cva's pass over the scene) on 2 workers: the
    # model loaded once in each worker that ran a task, whatever ran on the cluster before.
    assert len(loads) == 2
    assert all(counts.get("cva@auto", 0) <= 1 for counts in loads.values()), loads
    assert sum(counts.get("cva@auto", 0) for counts in loads.values()) >= 1


@pytest.mark.slow
def test_mtrefseg_on_the_cluster_equals_one_process_at_batch_size_one(
    cluster: str, tmp_path: Path
) -> None:
    pair = make_pair(tmp_path / "data")  # 256 x 256 px
    # Any change: the pair's generated changes are no building a query could name.
    common = (pair.before, pair.after, "--any-change", "--model", "mtrefseg-r1",
              "--tile-size", "64", "--overlap", "8", "--panel-width", "100",
              "--batch-size", "1", "--quiet")  # fmt: skip

    import torch

    # One torch thread, as a Dask worker runs: other thread counts differ in float rounding.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_mtrs(
            "detect", *common, "-o", tmp_path / "one.gpkg", "--mask-out", tmp_path / "one.tif"
        )
    finally:
        torch.set_num_threads(threads)
    remote = run_mtrs("detect", *common, "-o", tmp_path / "two.gpkg",
                      "--mask-out", tmp_path / "two.tif", "--scheduler", cluster)  # fmt: skip

    assert single.code == 0 and remote.code == 0, remote.err
    assert_same_outputs(tmp_path / "one.gpkg", tmp_path / "two.gpkg")
    assert_same_raster(tmp_path / "one.tif", tmp_path / "two.tif")


def test_a_cancelled_cluster_run_stops_its_panels_and_leaves_no_file(
    cluster: str, scene: ScenePair, tmp_path: Path
) -> None:
    from dask.distributed import Client

    out = tmp_path / "out"
    out.mkdir()
    config = DetectConfig(
        model="cva",
        before=scene.before, after=scene.after, output=out / "changes.gpkg",
        mask_out=out / "p.tif", tile_size=64, overlap=8, panel_width=70,
    )  # fmt: skip
    cancel = threading.Event()

    with pytest.raises(Cancelled):
        detect(config, progress=lambda done, total: cancel.set(), cancel=cancel, scheduler=cluster)

    assert files_in(out) == []
    with Client(cluster) as client:
        deadline = time.monotonic() + 30
        while any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(client.processing().values())


def test_errors_on_the_workers_come_back_as_one_line(
    cluster: str, scene: ScenePair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mtrs_geo.distributed.CONNECT_TIMEOUT_S", 2.0)  # Dask retries until then
    # The device is resolved where the model loads: on a worker.
    result = run_mtrs("detect", scene.before, scene.after, "-o", tmp_path / "c.gpkg",
                      "--model", "cva", "--device", "cuda", "--scheduler", cluster)  # fmt: skip
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "Error: model 'cva' runs on the CPU only: choose device auto or cpu"
    ]
    missing = run_mtrs("detect", scene.before, tmp_path / "nowhere.tif", "-o", tmp_path / "c.gpkg",
                       "--model", "cva", "--scheduler", cluster)  # fmt: skip
    assert missing.code == 2 and "does not exist" in missing.err
    assert "Traceback" not in missing.err + result.err
    unreachable = run_mtrs("detect", scene.before, scene.after, "-o", tmp_path / "c.gpkg",
                           "--model", "cva", "--scheduler", "tcp://127.0.0.1:9")  # fmt: skip
    assert unreachable.code == 2
    assert unreachable.err.startswith("Error: cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    assert not (tmp_path / "c.gpkg").exists()


def test_relative_paths_name_the_same_files_on_workers_started_elsewhere(
    cluster: str, scene: ScenePair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "images").symlink_to(scene.before.parent)
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)  # the workers' working folder is the test run's, not this one

    result = run_mtrs("detect", "images/before.tif", "images/after.tif", *SPLIT, "--quiet",
                      "--model", "cva", "-o", "out/changes.gpkg", "--mask-out", "out/p.tif",
                      "--scheduler", cluster)  # fmt: skip

    assert result.code == 0, result.err
    assert files_in(tmp_path / "out") == ["changes.gpkg", "p.tif"]


def test_a_mask_panel_on_a_worker_without_the_scratch_folder_fails_in_one_line(
    pair: ScenePair, tmp_path: Path
) -> None:
    config = DetectConfig(
        model="cva", before=pair.before, after=pair.after, mask_out=tmp_path / "m.tif"
    )
    before, after = open_raster(pair.before), open_raster(pair.after)
    job = SceneJob(config, before, after, before.grid, None, 0, tmp_path / ".mtrs-run-gone")

    def models(name: str, device: str):  # type: ignore[no-untyped-def]
        return load_model(name).to(device)

    setup = scene_setup(job, models)
    with pytest.raises(OutputError, match="needs its folder on storage every worker shares"):
        predict_panel(job, setup, 0, models)


def test_a_local_cluster_runs_the_scene(scene: ScenePair, tmp_path: Path) -> None:
    result = run_mtrs("detect", scene.before, scene.after, *SPLIT, "-o", tmp_path / "c.geojson",
                      "--model", "cva", "--scheduler", "local:2", "--quiet")  # fmt: skip
    assert result.code == 0, result.err
    assert result.err == ""  # no log line of the local workers
    assert len(gpd.read_file(tmp_path / "c.geojson")) > 0


def test_bad_schedulers_are_refused_before_any_work(scene: ScenePair, tmp_path: Path) -> None:
    result = run_mtrs("detect", scene.before, scene.after, "-o", tmp_path / "c.gpkg",
                      "--model", "cva", "--scheduler", "local:0")  # fmt: skip
    assert result.code == 2 and "local:N needs a number of workers" in result.err
    with pytest.raises(InputError, match="neither local:N nor an address"):
        config = DetectConfig(
            before=scene.before, after=scene.after, output=tmp_path / "c.gpkg", model="cva"
        )
        detect(config, scheduler="nowhere")


def test_ctrl_c_on_a_local_cluster_run_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """Ctrl+C reaches the run and its local workers alike (one process group)."""
    import psutil

    pair = make_pair(tmp_path / "big", before=ImageSpec(pixel_size_m=0.5))  # a minute of panels
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.Popen(
        [sys.executable, "-m", "mtrs_geo.cli.main", "detect", str(pair.before), str(pair.after),
         "-o", str(out / "changes.gpkg"), "--scheduler", "local:2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own group, as a terminal's foreground job
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(psutil.Process(run.pid).children(recursive=True)) < 2:  # the two workers
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(3.0)  # the workers busy with panels
        os.killpg(run.pid, signal.SIGINT)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert (run.returncode, err.strip()) == (130, "Error: cancelled: no output was written")
    assert files_in(out) == []  # no output, no scratch folder
