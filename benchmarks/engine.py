"""Engine benchmark: throughput, peak memory and time split of ``mtrs detect`` with ``cva`` on CPU.

For each size (default 4096^2, 8192^2 and 16384^2) it generates a 3-band uint8 before/after pair
on disk (tiled, compressed GeoTIFFs, written block by block so generation itself stays low-memory,
with planted rectangular changes), then runs three things, each in its own child process so peak
RSS figures do not contaminate each other:

* ``engine``: :func:`mtrs_geo.pipeline.detect` (tile 512, overlap 64, batch 4, polygons to .fgb);
* ``floor``:  the I/O floor, a bare loop that only reads the same windows of both images;
* ``naive``:  read both scenes whole, normalize, predict with ``cva`` in one call, polygonize the
  whole mask at once (skipped above ``--naive-max-side``: it needs ~65 bytes per pixel).

It prints one table and checks the targets: peak RSS under 1 GiB, growing less than 20% from the
smallest to the largest size, and throughput at least half of the I/O floor.

Usage::

    .venv/bin/python benchmarks/engine.py                       # all three sizes
    .venv/bin/python benchmarks/engine.py --sizes 4096 --json-out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PIXEL_M = 1.0
ORIGIN = (500_000.0, 5_010_000.0)  # upper-left corner, EPSG:32633
CELL = 512  # one planted change per CELL x CELL block
CHANGE_SPECTRUM = (235, 70, 40)
TILE, OVERLAP, BATCH = 512, 64, 4
GIB = 1024**3


# -- data generation ---------------------------------------------------------------------------


def _texture(rows: np.ndarray, cols: np.ndarray, band: int) -> np.ndarray:
    """A smooth multi-scale texture in [0, 255] (float32), different per band."""
    y = rows[:, None].astype(np.float32)
    x = cols[None, :].astype(np.float32)
    phase = 1.3 * band
    value = (
        110.0
        + 45.0 * np.sin(x / 97.0 + phase) * np.cos(y / 131.0 - phase)
        + 25.0 * np.sin((x + y) / 41.0 + 2 * phase)
        + 15.0 * np.cos((x - 2 * y) / 17.0)
    )
    return value.astype(np.float32)


def _planted_rectangles(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """One rectangle ``(row0, row1, col0, col1)`` per CELL block, sizes 24..160 px, seeded."""
    rng = np.random.default_rng(7)
    rectangles = []
    for row in range(0, height - CELL + 1, CELL):
        for col in range(0, width - CELL + 1, CELL):
            tall, wide = (int(v) for v in rng.integers(24, 160, size=2))
            r0 = row + int(rng.integers(8, CELL - tall - 8))
            c0 = col + int(rng.integers(8, CELL - wide - 8))
            rectangles.append((r0, r0 + tall, c0, c0 + wide))
    return rectangles


def size_label(width: int, height: int) -> str:
    """``4096^2`` for a square scene, ``32768x2048`` otherwise."""
    return f"{width}^2" if width == height else f"{width}x{height}"


def _file_tag(width: int, height: int) -> str:
    return str(width) if width == height else f"{width}x{height}"


def generate_pair(folder: Path, width: int, height: int) -> tuple[Path, Path]:
    """Write ``before_{tag}.tif`` and ``after_{tag}.tif`` (reused when already there)."""
    import rasterio
    from affine import Affine

    folder.mkdir(parents=True, exist_ok=True)
    tag = _file_tag(width, height)
    before, after = folder / f"before_{tag}.tif", folder / f"after_{tag}.tif"
    if before.exists() and after.exists():
        return before, after
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": Affine(PIXEL_M, 0.0, ORIGIN[0], 0.0, -PIXEL_M, ORIGIN[1]),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "zlevel": 1,
        "interleave": "pixel",
        "BIGTIFF": "IF_SAFER",
    }
    rectangles = np.array(_planted_rectangles(width, height)).reshape(-1, 4)
    cols = np.arange(width)
    partial_b, partial_a = before.with_suffix(".partial.tif"), after.with_suffix(".partial.tif")
    with (
        rasterio.open(partial_b, "w", **profile) as dst_b,
        rasterio.open(partial_a, "w", **profile) as dst_a,
    ):
        for row0 in range(0, height, 512):
            rows = np.arange(row0, min(row0 + 512, height))
            rng = np.random.default_rng(row0)
            block_b = np.empty((3, rows.size, width), dtype=np.uint8)
            block_a = np.empty_like(block_b)
            for band in range(3):
                texture = _texture(rows, cols, band)
                noise = rng.integers(-3, 4, size=texture.shape, dtype=np.int16)
                block_b[band] = np.clip(texture, 0, 255).astype(np.uint8)
                block_a[band] = np.clip(texture * 1.03 + noise, 0, 255).astype(np.uint8)
            hit = (rectangles[:, 0] < rows[-1] + 1) & (rectangles[:, 1] > row0)
            for r0, r1, c0, c1 in rectangles[hit]:
                top, bottom = max(r0, row0) - row0, min(r1, rows[-1] + 1) - row0
                block_a[:, top:bottom, c0:c1] = np.array(CHANGE_SPECTRUM, np.uint8)[:, None, None]
            window = rasterio.windows.Window(0, row0, width, rows.size)
            dst_b.write(block_b, window=window)
            dst_a.write(block_a, window=window)
    os.replace(partial_b, before)
    os.replace(partial_a, after)
    return before, after


# -- the three measured runs (child processes) ---------------------------------------------------


def _current_rss() -> int:
    """Resident set size of this process now, in bytes (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def run_engine(before: Path, after: Path, out: Path) -> dict[str, Any]:
    """The real pipeline, polygons to a FlatGeobuf."""
    from mtrs_geo.config import DetectConfig
    from mtrs_geo.pipeline import detect

    imported = _current_rss()
    config = DetectConfig(
        before=before,
        after=after,
        output=out / "engine.fgb",
        model="cva",
        device="cpu",
        tile_size=TILE,
        overlap=OVERLAP,
        batch_size=BATCH,
    )
    start = time.perf_counter()
    result = detect(config)
    seconds = time.perf_counter() - start
    summary = result.to_json()
    return {
        "seconds": seconds,
        "polygons": summary["polygons"],
        "timings": summary["timings"],
        "import_rss_bytes": imported,
    }


def run_floor(before: Path, after: Path, out: Path) -> dict[str, Any]:
    """Read the engine's windows from both images, nothing else."""
    import rasterio

    from mtrs_geo.grid import tile_windows

    start = time.perf_counter()
    with rasterio.open(before) as src_b, rasterio.open(after) as src_a:
        windows = tile_windows(src_b.width, src_b.height, TILE, OVERLAP)
        checksum = 0
        for window in windows:
            checksum += int(src_b.read(window=window)[0, 0, 0])
            checksum += int(src_a.read(window=window)[0, 0, 0])
    return {"seconds": time.perf_counter() - start, "windows": len(windows), "checksum": checksum}


def run_naive(before: Path, after: Path, out: Path) -> dict[str, Any]:
    """Whole scenes in memory: read, normalize, predict, polygonize in one go."""
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.features import shapes

    from mtrs_geo.model_api import load_model
    from mtrs_geo.normalize import band_stats, percentile_stretch

    timings: dict[str, float] = {}
    start = time.perf_counter()
    with rasterio.open(before) as src_b, rasterio.open(after) as src_a:
        image_b, image_a = src_b.read(), src_a.read()
        valid = (src_b.dataset_mask() > 0) & (src_a.dataset_mask() > 0)
        transform, crs = src_b.transform, src_b.crs
    timings["read"] = time.perf_counter() - start
    t0 = time.perf_counter()
    norm_b = percentile_stretch(image_b, band_stats(image_b, valid))
    norm_a = percentile_stretch(image_a, band_stats(image_a, valid))
    del image_b, image_a
    model = load_model("cva")
    model.calibrate(norm_b[None], norm_a[None], valid[None])
    probability = model.predict(norm_b[None], norm_a[None])[0]
    del norm_b, norm_a
    timings["model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    changed = ((probability >= 0.5) & valid).astype(np.uint8)
    polygons = [
        shapely.geometry.shape(geometry)
        for geometry, _ in shapes(changed, mask=changed > 0, transform=transform)
    ]
    frame = gpd.GeoDataFrame(geometry=polygons, crs=crs)
    frame.to_file(out / "naive.fgb", engine="pyogrio")
    timings["vectorize"] = time.perf_counter() - t0
    return {
        "seconds": time.perf_counter() - start,
        "polygons": len(polygons),
        "timings": timings,
    }


CHILD_RUNS = {"engine": run_engine, "floor": run_floor, "naive": run_naive}


def measure(kind: str, before: Path, after: Path, out: Path) -> dict[str, Any]:
    """Run one measurement in a fresh child process; add its own peak RSS (from wait4)."""
    command = [sys.executable, __file__, "--child", kind, str(before), str(after), str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{kind} run failed with exit code {process.returncode}")
    record: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    record["peak_rss_bytes"] = usage.ru_maxrss * 1024  # Linux reports KiB
    return record


# -- report ------------------------------------------------------------------------------------


def _mib(value: float) -> str:
    return f"{value / 1024**2:,.0f}"


def benchmark_size(width: int, height: int, data: Path, naive_max_side: int) -> dict[str, Any]:
    """Generate (or reuse) the pair of one size and run the three measurements."""
    t0 = time.perf_counter()
    before, after = generate_pair(data, width, height)
    generated = time.perf_counter() - t0
    out = data / f"out_{_file_tag(width, height)}"
    out.mkdir(exist_ok=True)
    floor = measure("floor", before, after, out)
    engine = measure("engine", before, after, out)
    small = max(width, height) <= naive_max_side
    naive = measure("naive", before, after, out) if small else None
    megapixels = width * height / 1e6
    return {
        "label": size_label(width, height),
        "megapixels": megapixels,
        "generate_seconds": generated,
        "engine": engine,
        "floor": floor,
        "naive": naive,
        "engine_mpx_s": megapixels / engine["seconds"],
        "floor_mpx_s": megapixels / floor["seconds"],
        "naive_mpx_s": megapixels / naive["seconds"] if naive else None,
    }


def report(results: list[dict[str, Any]], naive_max_side: int) -> tuple[str, bool]:
    """A Markdown table of the figures and the target checks; returns (text, all targets met)."""
    header = (
        "| size | engine s | engine Mpx/s | peak RSS MiB | of which imports | read+align s "
        "| model s | stitch s "
        "| vectorize s | I/O floor Mpx/s | engine/floor | naive s | naive Mpx/s | naive RSS MiB "
        "| engine/naive speed |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [header]
    for r in results:
        timings = r["engine"]["timings"]
        naive = r["naive"]
        naive_cells = (
            f"{naive['seconds']:.1f} | {r['naive_mpx_s']:.1f} | {_mib(naive['peak_rss_bytes'])} "
            f"| {r['engine_mpx_s'] / r['naive_mpx_s']:.2f}x"
            if naive
            else f"skipped (> {naive_max_side}^2) | - | - | -"
        )
        rows.append(
            f"| {r['label']} | {r['engine']['seconds']:.1f} | {r['engine_mpx_s']:.1f} "
            f"| {_mib(r['engine']['peak_rss_bytes'])} | {_mib(r['engine']['import_rss_bytes'])} "
            f"| {timings.get('read', 0):.1f} "
            f"| {timings.get('model', 0):.1f} | {timings.get('stitch', 0):.1f} "
            f"| {timings.get('vectorize', 0):.1f} | {r['floor_mpx_s']:.1f} "
            f"| {r['engine_mpx_s'] / r['floor_mpx_s']:.2f} | {naive_cells} |"
        )
    peaks = [r["engine"]["peak_rss_bytes"] for r in results]
    checks = [
        (f"peak RSS under 1 GiB at every size (max {_mib(max(peaks))} MiB)", max(peaks) < GIB),
        *[
            (
                f"{r['label']}: throughput >= half the I/O floor "
                f"({r['engine_mpx_s']:.1f} vs {r['floor_mpx_s']:.1f} Mpx/s)",
                r["engine_mpx_s"] >= 0.5 * r["floor_mpx_s"],
            )
            for r in results
        ],
    ]
    working = [p - r["engine"]["import_rss_bytes"] for p, r in zip(peaks, results, strict=True)]
    note = "note: RSS above the imports: " + ", ".join(
        f"{r['label']} {_mib(w)} MiB" for r, w in zip(results, working, strict=True)
    )
    if len(results) > 1:
        growth = peaks[-1] / peaks[0] - 1
        checks.append(
            (
                f"peak RSS grows {growth * 100:.1f}% from {results[0]['label']} to "
                f"{results[-1]['label']} (target < 20%)",
                growth < 0.20,
            )
        )
    lines = [*rows, ""] + [f"- [{'x' if ok else ' '}] {text}" for text, ok in checks] + [note]
    return "\n".join(lines), all(ok for _, ok in checks)


def parse_size(text: str) -> tuple[int, int]:
    """``4096`` -> (4096, 4096); ``32768x2048`` -> (32768, 2048)."""
    width, _, height = text.strip().lower().partition("x")
    return int(width), int(height or width)


def main() -> None:
    """Parse the command line and run the benchmark (or one child measurement)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="4096,8192,16384",
        help="comma-separated sides (px) of square scenes, or WIDTHxHEIGHT",
    )
    parser.add_argument("--data", type=Path, default=Path("/tmp/mtrs-bench"), help="data folder")
    parser.add_argument(
        "--naive-max-side", type=int, default=8192, help="largest side the naive run tries"
    )
    parser.add_argument("--json-out", type=Path, help="also write the raw figures here")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "BEFORE", "AFTER", "OUT"))
    args = parser.parse_args()

    if args.child:
        kind, before, after, out = args.child
        record = CHILD_RUNS[kind](Path(before), Path(after), Path(out))
        print(json.dumps(record))
        return

    shapes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    results = []
    for width, height in shapes:
        print(f"running {size_label(width, height)} ...", file=sys.stderr, flush=True)
        results.append(benchmark_size(width, height, args.data, args.naive_max_side))
    text, ok = report(results, args.naive_max_side)
    cpus = os.cpu_count()
    print(f"cva on CPU ({cpus} cores), tile {TILE}, overlap {OVERLAP}, batch {BATCH}\n")
    print(text)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
