"""Remote and multi-file inputs: COGs over HTTP (range requests), STAC items, lists of band files.

A small threaded HTTP server with range support on 127.0.0.1 (``range_server.py``, in a process of
its own) serves generated COGs; its fixture starts and stops it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import rasterio.shutil
from cli_run import files_in, run_mtrs
from scenes import ImageSpec, make_pair

from mtrs_geo.errors import InputError
from mtrs_geo.sources import gdal_path, resolve_in, resolve_source

PIXEL_M = 5.0  # 512 x 512 px scenes


@dataclass
class RangeServer:
    """The running range server: its URL and the log of what it served."""

    root: Path
    url: str
    log: Path

    def served(self, name: str) -> list[tuple[str, str | None, int]]:
        """``(method, Range header, bytes sent)`` of every request for ``name``."""
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [(m, r, n) for m, path, r, n in entries if path == f"/{name}"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Served folder: before/after COGs, their bands as single-band COGs, and STAC items."""
    root = tmp_path_factory.mktemp("served")
    pair = make_pair(root / "render", before=ImageSpec(pixel_size_m=PIXEL_M))
    for role, path in (("before", pair.before), ("after", pair.after)):
        cog = {"COMPRESS": "DEFLATE", "BLOCKSIZE": "256", "OVERVIEWS": "AUTO"}
        rasterio.shutil.copy(path, root / f"{role}.tif", driver="COG", **cog)
        with rasterio.open(path) as src:
            profile = src.profile | {"count": 1}
            for band, colour in zip((1, 2, 3), ("red", "green", "blue"), strict=True):
                single = root / "render" / f"{role}_{colour}.tif"
                with rasterio.open(single, "w", **profile) as dst:
                    dst.write(src.read(band), 1)
                rasterio.shutil.copy(single, root / f"{role}_{colour}.tif", driver="COG", **cog)
        item = pystac.Item(
            id=f"scene-{role}",
            geometry=None,
            bbox=None,
            datetime=datetime(2020 if role == "before" else 2024, 6, 1, tzinfo=UTC),
            properties={},
        )
        for colour in ("red", "green", "blue"):
            item.add_asset(colour, pystac.Asset(href=f"./{role}_{colour}.tif", roles=["data"]))
        item.add_asset("thumbnail", pystac.Asset(href=f"./{role}.tif", roles=["thumbnail"]))
        document = item.to_dict(include_self_link=False, transform_hrefs=False)
        (root / f"{role}.json").write_text(json.dumps(document))
    return root


@pytest.fixture(scope="module")
def server(scenes: Path) -> Iterator[RangeServer]:
    """Serve ``scenes`` on 127.0.0.1 (an unused port) for the module; stopped at its end."""
    log = scenes.parent / f"{scenes.name}-requests.jsonl"
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("range_server.py")), str(scenes), str(log)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    patch = pytest.MonkeyPatch()
    patch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a proxy of the environment must not see it
    patch.setenv("no_proxy", "127.0.0.1,localhost")
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield RangeServer(scenes, f"http://127.0.0.1:{port}", log)
    finally:
        patch.undo()
        process.terminate()
        process.wait(timeout=10)


def detect_outputs(folder: Path, before: object, after: object, *extra: object) -> np.ndarray:
    """Run ``mtrs detect`` (cva) into ``folder``; return the probability raster it wrote."""
    folder.mkdir(exist_ok=True)
    result = run_mtrs(
        "detect", before, after, "-o", folder / "c.gpkg", "--mask-out", folder / "m.tif",
        "--quiet", *extra,
    )  # fmt: skip
    assert result.code == 0, result.err
    with rasterio.open(folder / "m.tif") as ds:
        return ds.read(1)


@pytest.fixture(scope="module")
def local_result(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The probabilities of the pair read from local files: what every other form must give."""
    return detect_outputs(
        tmp_path_factory.mktemp("local"), scenes / "before.tif", scenes / "after.tif"
    )


def test_cog_over_http_is_described_with_range_requests_only(server: RangeServer) -> None:
    result = run_mtrs("info", f"{server.url}/before.tif", f"{server.url}/after.tif", "--json")

    assert result.code == 0, result.err
    described = json.loads(result.out)
    assert (described["width"], described["height"]) == (512, 512)
    size = (server.root / "before.tif").stat().st_size
    gets = [(r, n) for m, r, n in server.served("before.tif") if m == "GET"]
    assert gets and all(r is not None and r.startswith("bytes=") for r, _ in gets)
    assert sum(n for _, n in gets) < size / 2  # the header and one block, not the file


def test_cog_over_http_gives_the_local_result(
    server: RangeServer, local_result: np.ndarray, tmp_path: Path
) -> None:
    remote = detect_outputs(tmp_path, f"{server.url}/before.tif", f"{server.url}/after.tif")
    np.testing.assert_array_equal(remote, local_result)


def test_missing_url_exits_2_with_one_line(server: RangeServer, tmp_path: Path) -> None:
    result = run_mtrs(
        "detect", f"{server.url}/nowhere.tif", f"{server.url}/after.tif", "-o", tmp_path / "c.gpkg"
    )
    assert result.code == 2
    assert "cannot read before image http://127.0.0.1" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("where", ["file", "url"])
def test_stac_items_with_chosen_assets_give_the_local_result(
    server: RangeServer, scenes: Path, local_result: np.ndarray, tmp_path: Path, where: str
) -> None:
    base = str(scenes) if where == "file" else server.url
    items = (f"{base}/before.json", f"{base}/after.json")

    described = run_mtrs("info", *items, "--assets", "red,green,blue", "--json")
    stacked = detect_outputs(tmp_path, *items, "--assets", "red,green,blue")

    assert described.code == 0, described.err
    assert json.loads(described.out)["bands_before"] == [1, 2, 3]
    np.testing.assert_array_equal(stacked, local_result)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "has no 'visual' asset: choose the assets to stack, in band order, among red,"),
        (["--assets", "red,nir"], "has no asset 'nir'; it has red, green, blue, thumbnail"),
        (["--assets", "red,,blue"], "not a comma-separated list of asset keys"),
    ],
)
def test_stac_item_without_the_assets_exits_2(
    scenes: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    result = run_mtrs(
        "detect", scenes / "before.json", scenes / "after.json", "-o", tmp_path / "c.gpkg", *extra
    )
    assert result.code == 2 and message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert "--assets" not in str(_library_message(scenes, extra))


def _library_message(scenes: Path, extra: list[str]) -> str:
    """The library's own message for the STAC case (it must not name a CLI flag)."""
    assets = tuple(extra[1].split(",")) if extra and "" not in extra[1].split(",") else None
    try:
        resolve_source(str(scenes / "before.json"), "before", assets)
    except InputError as exc:
        return str(exc)
    return ""


def test_list_of_band_files_local_and_remote_gives_the_local_result(
    server: RangeServer, scenes: Path, local_result: np.ndarray, tmp_path: Path
) -> None:
    local = ",".join(str(scenes / f"before_{c}.tif") for c in ("red", "green", "blue"))
    remote = ",".join(f"{server.url}/after_{c}.tif" for c in ("red", "green", "blue"))

    stacked = detect_outputs(tmp_path, local, remote)

    np.testing.assert_array_equal(stacked, local_result)


def test_an_output_over_a_listed_band_file_is_refused(scenes: Path, tmp_path: Path) -> None:
    bands = [tmp_path / f"b{i}.tif" for i in range(3)]
    for band in bands:
        band.write_bytes((scenes / "before_red.tif").read_bytes())
    listed = ",".join(map(str, bands))

    result = run_mtrs("detect", listed, listed, "--mask-out", bands[1])

    assert result.code == 2 and "would destroy the input" in result.err
    assert bands[1].read_bytes() == (scenes / "before_red.tif").read_bytes()


def test_a_list_of_multiband_files_is_refused(scenes: Path, tmp_path: Path) -> None:
    listed = f"{scenes / 'before.tif'},{scenes / 'before_red.tif'}"
    result = run_mtrs("info", listed, listed)
    assert result.code == 2 and "a stack takes single-band rasters" in result.err


def test_batch_rows_take_urls_and_relative_band_lists(
    server: RangeServer, scenes: Path, local_result: np.ndarray, tmp_path: Path
) -> None:
    listed = ",".join(f"before_{c}.tif" for c in ("red", "green", "blue"))
    table = scenes / "pairs.csv"
    out = tmp_path / "out.gpkg"
    table.write_text(f'before,after,query,output\n"{listed}",{server.url}/after.tif,,{out}\n')

    result = run_mtrs("batch", table, "--mask-out-dir", tmp_path, "--quiet")

    assert result.code == 0, result.err
    with rasterio.open(tmp_path / "out.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), local_result)


def test_input_strings_resolve_to_gdal_paths(tmp_path: Path) -> None:
    assert gdal_path("https://example.com/a b.tif") == "/vsicurl/https://example.com/a b.tif"
    assert gdal_path("s3://bucket/key/scene.tif") == "/vsis3/bucket/key/scene.tif"
    assert gdal_path("gs://bucket/scene.tif") == "/vsigs/bucket/scene.tif"
    assert gdal_path("/vsizip/a.zip/b.tif") == "/vsizip/a.zip/b.tif"
    assert (
        resolve_in("a.tif,sub/b.tif", tmp_path) == f"{tmp_path / 'a.tif'},{tmp_path / 'sub/b.tif'}"
    )
    assert resolve_in("https://h/x.tif", tmp_path) == "https://h/x.tif"
    source = resolve_source("s3://bucket/key/scene.tif", "before")
    assert (source.dataset, source.name) == ("/vsis3/bucket/key/scene.tif", "scene.tif")
