"""Cluster benchmark: a 32-row batch and one 16384^2 scene on 1, 2 and 4 local Dask workers.

Run by hand (slow; on an otherwise idle machine)::

    .venv/bin/python benchmarks/distributed.py                     # 32 x 2048^2 rows, 16384^2 scene
    .venv/bin/python benchmarks/distributed.py --quick             # 8 x 512^2 rows, 2048^2 scene
    .venv/bin/python benchmarks/distributed.py --json-out d.json --markdown-out d.md

Each measurement runs in a fresh child process (its own local cluster of worker processes, one
thread each, started before the clock starts): ``mtrs batch --scheduler local:N`` on the rows
(:func:`mtrs_geo.distributed.run_batch_on_cluster`) and ``mtrs detect --scheduler local:N`` on
the scene (:func:`mtrs_geo.distributed.detect_on_cluster`), and the same work in one process
without Dask (``0`` workers) for reference. Inputs are the generated pairs of
``benchmarks/engine.py`` (3-band uint8, one planted change per 512 px block), model ``cva``.

Figures: wall seconds, speed-up over 1 worker, peak RSS of each worker process (max and mean) and
of the client, the scheduler's round trip per task (200 empty tasks), and the bytes each kind of
task moves: its arguments pickled (out) and its result pickled (back).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

# This file's name is Dask's package name: its folder must not be on the import path.
BENCHMARKS = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != BENCHMARKS]
_spec = importlib.util.spec_from_file_location("mtrs_bench_engine", BENCHMARKS / "engine.py")
assert _spec is not None and _spec.loader is not None
_engine = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_engine)
generate_pair = _engine.generate_pair

WORKERS = (1, 2, 4)
FULL = {"rows": 32, "row_size": 2048, "scene_size": 16384, "panel_width": 2048}
QUICK = {"rows": 8, "row_size": 512, "scene_size": 2048, "panel_width": 512}
EMPTY_TASKS = 200


def _peak_rss_mib() -> float:
    """This process's peak resident memory, MiB (run on every worker by ``client.run``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _nothing(number: int) -> int:
    return number


def task_round_trip_ms(client: Any) -> float:
    """Mean wall milliseconds per empty task, submitted and gathered together."""
    start = time.perf_counter()
    futures = client.map(_nothing, range(EMPTY_TASKS), pure=False)
    client.gather(futures)
    return (time.perf_counter() - start) / EMPTY_TASKS * 1000


def _summary(values: list[int]) -> dict[str, float]:
    return {"tasks": len(values), "mean": sum(values) / max(1, len(values)), "max": max(values)}


def measured_predictor(client: Any) -> Any:
    """A :class:`ClusterPredictor` that records the pickled bytes of each task's args and result."""
    from mtrs_geo.distributed import ClusterPredictor

    class Measured(ClusterPredictor):
        def __init__(self, client: Any) -> None:
            super().__init__(client)
            self.out: dict[str, list[int]] = {}
            self.back: dict[str, list[int]] = {}
            self._kind: dict[str, str] = {}

        def _submit(self, task: Any, *args: Any, key: str) -> Any:
            kind = key.split("-")[0]
            self.out.setdefault(kind, []).append(len(pickle.dumps(args)))
            if kind == "settle":  # the scene pass's summaries go from worker to worker
                summaries = self.client.gather(args[2])
                self.back["pass"] = [len(pickle.dumps(summary)) for summary in summaries]
            future = super()._submit(task, *args, key=key)
            self._kind[future.key] = kind
            return future

        def _wait(self, futures: Any, on_done: Any = None) -> list[Any]:
            results = super()._wait(futures, on_done)
            for future, result in zip(futures, results, strict=True):
                kind = self._kind[future.key]
                self.back.setdefault(kind, []).append(len(pickle.dumps(result)))
            return results

    return Measured(client)


def run_scene(config: Any, workers: int) -> dict[str, Any]:
    """One scene: in this process (0 workers) or on a local cluster of ``workers`` processes."""
    from mtrs_geo.pipeline import detect, run_detect

    if workers == 0:
        start = time.perf_counter()
        result = detect(config)
        return {"seconds": time.perf_counter() - start, "polygons": result.polygons}
    from mtrs_geo.distributed import Scheduler, dask_client

    started = time.perf_counter()
    with dask_client(Scheduler(workers=workers)) as client:
        client.wait_for_workers(workers)
        start_s = time.perf_counter() - started
        round_trip = task_round_trip_ms(client)
        predictor = measured_predictor(client)
        start = time.perf_counter()
        result = run_detect(config, predictor)
        seconds = time.perf_counter() - start
        peaks = list(client.run(_peak_rss_mib).values())
    return {
        "seconds": seconds,
        "cluster_start_s": start_s,
        "polygons": result.polygons,
        "task_round_trip_ms": round_trip,
        "worker_peak_rss_mib": peaks,
        "bytes_out": {kind: _summary(sizes) for kind, sizes in predictor.out.items()},
        "bytes_back": {kind: _summary(sizes) for kind, sizes in predictor.back.items()},
        "worker_seconds": result.timings,
    }


def run_rows(rows: list[Any], workers: int) -> dict[str, Any]:
    """The batch: row after row in this process (0 workers), or as Dask tasks."""
    from mtrs_geo.batch import run_batch
    from mtrs_geo.distributed import Scheduler, dask_client, run_batch_on_cluster

    if workers == 0:
        start = time.perf_counter()
        outcomes = run_batch(rows, on_row=lambda outcome: None)
        return {"seconds": time.perf_counter() - start, "ok": sum(o.ok for o in outcomes)}
    started = time.perf_counter()
    with dask_client(Scheduler(workers=workers)) as client:
        client.wait_for_workers(workers)
        start_s = time.perf_counter() - started
        round_trip = task_round_trip_ms(client)
        start = time.perf_counter()
        address = client.scheduler.address
        outcomes = run_batch_on_cluster(rows, address, on_row=lambda outcome: None)
        seconds = time.perf_counter() - start
        peaks = list(client.run(_peak_rss_mib).values())
    out = [len(pickle.dumps((row.number, row.output, row.config))) for row in rows]
    return {
        "seconds": seconds,
        "cluster_start_s": start_s,
        "ok": sum(outcome.ok for outcome in outcomes),
        "task_round_trip_ms": round_trip,
        "worker_peak_rss_mib": peaks,
        "bytes_out": {"row": _summary(out)},
        "bytes_back": {"row": _summary([len(pickle.dumps(o)) for o in outcomes])},
    }


def child(kind: str, workers: int, sizes: dict[str, int], data: Path, model: str) -> None:
    """One measurement (a child process); prints its JSON row."""
    from mtrs_geo.batch import BatchRow
    from mtrs_geo.config import DetectConfig

    out = data / f"distributed-out-{kind}-{workers}"
    out.mkdir(parents=True, exist_ok=True)
    if kind == "scene":
        side = sizes["scene_size"]
        before, after = generate_pair(data, side, side)
        config = DetectConfig(
            before=before, after=after, output=out / "changes.fgb", model=model, device="cpu",
            panel_width=sizes["panel_width"],
        )  # fmt: skip
        row = run_scene(config, workers)
    else:
        side = sizes["row_size"]
        before, after = generate_pair(data, side, side)
        rows = [
            BatchRow(
                number,
                DetectConfig(
                    before=before,
                    after=after,
                    model=model,
                    device="cpu",
                    output=out / f"row{number}.fgb",
                ),
            )  # fmt: skip
            for number in range(1, sizes["rows"] + 1)
        ]
        row = run_rows(rows, workers)
    row.update(kind=kind, workers=workers, client_peak_rss_mib=_peak_rss_mib())
    print(json.dumps(row))


def markdown(rows: list[dict[str, Any]], sizes: dict[str, int], quick: bool) -> str:
    """The results as markdown: a table per workload, then the bytes moved per task."""
    cores = os.cpu_count()
    run = "quick smoke run (--quick)" if quick else "full run"
    lines = [
        f"{run}, {date.today().isoformat()}, {cores} cores, model cva: batch of {sizes['rows']} "
        f"rows of {sizes['row_size']}^2 px; one {sizes['scene_size']}^2 px scene in panels of "
        f"{sizes['panel_width']} px",
        "",
    ]
    for kind, title in (("batch", "batch"), ("scene", "scene")):
        by_workers = {row["workers"]: row for row in rows if row["kind"] == kind}
        base = by_workers.get(1, {}).get("seconds")
        lines += [
            f"| {title}: workers | wall s | speed-up over 1 | worker peak RSS MiB (max / mean) "
            "| client peak RSS MiB | task round trip ms |",
            "|---|---|---|---|---|---|",
        ]
        for workers, row in sorted(by_workers.items()):
            speed = f"{base / row['seconds']:.2f}x" if base and workers else "-"
            peaks = row.get("worker_peak_rss_mib")
            memory = f"{max(peaks):.0f} / {sum(peaks) / len(peaks):.0f}" if peaks else "-"
            trip = f"{row['task_round_trip_ms']:.1f}" if "task_round_trip_ms" in row else "-"
            label = str(workers) if workers else "0 (one process, no Dask)"
            lines.append(
                f"| {label} | {row['seconds']:.1f} | {speed} | {memory} "
                f"| {row['client_peak_rss_mib']:.0f} | {trip} |"
            )
        lines.append("")
    lines += ["| task | count (4 workers) | bytes out (mean / max) | bytes back (mean / max) |"]
    lines += ["|---|---|---|---|"]
    for row in rows:
        if row["workers"] != max(WORKERS):
            continue
        for task, out in row["bytes_out"].items():
            back = row["bytes_back"].get(task, {"mean": 0, "max": 0})
            lines.append(
                f"| {row['kind']} {task} | {out['tasks']} | {out['mean']:.0f} / {out['max']} "
                f"| {back['mean']:.0f} / {back['max']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--model", default="cva")
    parser.add_argument("--data", type=Path, default=Path("/tmp/mtrs-bench"))
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--markdown-out", type=Path, default=None)
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.child:
        kind, workers = args.child
        child(kind, int(workers), sizes, args.data, args.model)
        return
    rows = []
    for kind in ("batch", "scene"):
        for workers in (0, *WORKERS):
            command = [sys.executable, __file__, "--model", args.model, "--data", str(args.data)]
            command += ["--quick"] * args.quick + ["--child", kind, str(workers)]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{kind}, {workers} workers: {rows[-1]['seconds']:.1f} s", file=sys.stderr)
    table = markdown(rows, sizes, args.quick)
    print(table)
    if args.json_out:
        args.json_out.write_text(json.dumps({"sizes": sizes, "rows": rows}, indent=2))
    if args.markdown_out:
        args.markdown_out.write_text(table)


if __name__ == "__main__":
    main()
