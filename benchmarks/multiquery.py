"""Several queries in one pass: the engine's cost of 1 and of 3 queries on one scene, side by side.

Run by hand (slow; on an otherwise idle machine)::

    .venv/bin/python benchmarks/multiquery.py                  # 2048^2, mtrefseg-r1, CPU
    .venv/bin/python benchmarks/multiquery.py --size 1024 --repeats 1

Each setting runs ``detect`` in a fresh process (imports, model loading and calibration included)
on the generated scene of ``benchmarks/engine.py``; the figures are the best of ``--repeats`` runs:
wall seconds, the model's seconds (``timings["model"]``), setup seconds, the process's CPU seconds
and peak RSS; then the ratio of each round and their median, of the wall time and of the CPU time
(one run of each count, one after the other: the counts alternate, so a slow spell of a shared
machine hits both). The issue's target: three queries cost at most 1.5x one query.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import generate_pair  # noqa: E402

QUERIES = ("new buildings", "cleared vegetation", "new roads")


def run_child(before: Path, after: Path, out: Path, count: int, model: str) -> dict[str, Any]:
    """One run in this process: ``count`` queries through the engine."""
    start = time.perf_counter()
    from mtrs_geo.config import DetectConfig
    from mtrs_geo.pipeline import detect

    imports = time.perf_counter() - start
    config = DetectConfig(
        before=before,
        after=after,
        queries=QUERIES[:count] if count > 1 else (),
        query=QUERIES[0] if count == 1 else "",
        output=out / f"changes-{count}.fgb",
        model=model,
        device="cpu",
    )
    result = detect(config)
    summary = result.to_json()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "queries": count,
        "seconds": time.perf_counter() - start,
        "imports": imports,
        "timings": summary["timings"],
        "tiles": summary["tiles"],
        # CPU seconds of every thread, imports included: steadier than the wall time on a
        # shared machine, whose other jobs take turns on the cores.
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="scene side in pixels")
    parser.add_argument("--model", default="mtrefseg-r1")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path("/tmp/mtrs-bench"))
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        before, after, out, count = args.child
        row = run_child(Path(before), Path(after), Path(out), int(count), args.model)
        print(json.dumps(row))
        return
    before, after = generate_pair(args.data, args.size, args.size)
    out = args.data / "multiquery-out"
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[int, list[dict[str, Any]]] = {1: [], 3: []}
    for _ in range(args.repeats):  # interleaved: a slow spell of the machine hits both counts
        for count in (1, 3):
            child = [sys.executable, __file__, "--model", args.model, "--child"]
            child += [str(before), str(after), str(out), str(count)]
            done = subprocess.run(child, check=True, capture_output=True, text=True)
            runs[count].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = {count: min(runs[count], key=lambda row: row["seconds"]) for count in runs}

    def per_round(key: str) -> list[float]:
        return [three[key] / one[key] for one, three in zip(runs[1], runs[3], strict=True)]

    paired, cpu = per_round("seconds"), per_round("cpu_s")
    print(f"{args.size}^2, {args.model}, {rows[1]['tiles']} tiles, best of {args.repeats}")
    print("| queries | wall s | model s | setup s | CPU s | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for count, row in rows.items():
        t = row["timings"]
        print(
            f"| {count} | {row['seconds']:.1f} | {t['model']:.1f} | {t['setup']:.1f} "
            f"| {row['cpu_s']:.1f} | {row['peak_rss_mib']:.0f} |"
        )
    wall = rows[3]["seconds"] / rows[1]["seconds"]
    model = rows[3]["timings"]["model"] / rows[1]["timings"]["model"]
    print(f"3 queries / 1 query: wall {wall:.2f}x, model {model:.2f}x (target <= 1.5x)")
    print("3 queries / 1 query, wall, each round: " + ", ".join(f"{r:.2f}x" for r in paired))
    print(f"  median {statistics.median(paired):.2f}x")
    print("3 queries / 1 query, CPU, each round: " + ", ".join(f"{r:.2f}x" for r in cpu))
    print(f"  median {statistics.median(cpu):.2f}x")
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
