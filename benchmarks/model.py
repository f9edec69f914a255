"""MTRefSeg-R1 inference speed and peak memory per size, tile size, batch size and precision.

Run by hand (slow)::

    .venv/bin/python benchmarks/model.py          # all sizes, 256/512 px, batch 1/8, fp32/bf16
    .venv/bin/python benchmarks/model.py --sizes base --px 512 --batch 1 --dtypes fp32

Tiles/s counts tile *pairs* (one before + one after tile) through the network with a text query
encoded once, as the engine runs it. Every setting runs in a fresh process. Peak memory: CUDA
``max_memory_allocated`` during the runs; CPU the peak resident set size of the process (sampled
every 2 ms) and its rise over the level before the first forward pass (model loaded, query
encoded). ``large`` is the Swin-B + LLM design; without ``--large-backbone`` and ``--large-llm``
folders of real weights it runs its wiring with tiny random configs of the same classes (not the
real large model's speed; labelled so).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1

# The tiny random configs of the large design are test fixtures (tests/fixtures_train/).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures_train.tiny_models import TINY_DECODER, TINY_LLM_CONFIG, TINY_SWIN_CONFIG  # noqa: E402

QUERY = "new buildings"


@dataclass
class Row:
    size: str
    device: str
    px: int
    batch: int
    dtype: str
    tiles_per_s: float
    ms_per_batch: float
    peak_mb: float  # CUDA: peak allocated; CPU: peak resident set size of the process
    rise_mb: float  # CPU: peak RSS above the level before the first forward pass; CUDA: = peak_mb
    params_m: float


class PeakRss:
    """Peak resident set size of this process (bytes), sampled in a thread (Linux)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def build(size: str, args: argparse.Namespace) -> tuple[MTRefSegR1, str]:
    if size != "large":
        return MTRefSegR1(MTRefSegR1Config.from_size(size)), size
    overrides: dict[str, Any] = {}
    if args.large_backbone:
        overrides["backbone_path"] = args.large_backbone
    else:
        overrides["backbone_config"] = TINY_SWIN_CONFIG
    if args.large_llm:
        overrides["text_model_path"] = args.large_llm
    else:
        overrides["text_model_config"] = TINY_LLM_CONFIG
    label = "large"
    if not (args.large_backbone and args.large_llm):
        label = "large (tiny wiring)"
        overrides.update(TINY_DECODER)
    return MTRefSegR1(MTRefSegR1Config.from_size("large", **overrides)), label


def measure_one(
    args: argparse.Namespace, size: str, device_name: str, px: int, batch: int, dtype: str
) -> Row:
    """Build one model and time ``args.repeats`` batches of one setting (median)."""
    device = torch.device(device_name)
    model, label = build(size, args)
    # As the engine's wrapper runs it: BatchNorms folded, channels-last.
    model.fuse_for_inference().to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    gen = torch.Generator().manual_seed(0)
    before = torch.rand(batch, 3, px, px, generator=gen).to(device)
    after = torch.rand(batch, 3, px, px, generator=gen).to(device)
    before = before.contiguous(memory_format=torch.channels_last)
    after = after.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        embeds = model.encode_text([QUERY])
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
    )

    def run() -> None:
        with torch.inference_mode(), autocast:
            model(before, after, text_embeds=embeds).probabilities()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start_rss = PeakRss.rss()
    times = []
    with PeakRss() as rss:
        run()  # warm-up (kernels, allocator), inside the memory sampling
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = rise = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak, rise = rss.peak / 2**20, (rss.peak - start_rss) / 2**20
    seconds = statistics.median(times)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return Row(
        label, device_name, px, batch, dtype, batch / seconds, seconds * 1e3, peak, rise, params
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base", "large"])
    parser.add_argument("--px", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument(
        "--devices", nargs="+", default=None, help="default: cpu (+ cuda if present)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--large-backbone", default=None, help="local Swin-B backbone folder")
    parser.add_argument("--large-llm", default=None, help="local causal LM folder (e.g. Phi-1.5)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--one", nargs=5, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:  # child process: one setting, one JSON line
        size, device, px, batch, dtype = args.one
        print(json.dumps(asdict(measure_one(args, size, device, int(px), int(batch), dtype))))
        return

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    passthrough = [str(a) for a in sys.argv[1:] if a != "--json"]
    if args.json:
        passthrough = [a for a in passthrough if a != str(args.json)]
    rows: list[Row] = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(
        "| size | device | px | batch | dtype | tiles/s | ms/batch | peak MiB | rise MiB "
        "| params M |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        for device in devices:
            for px in args.px:
                for batch in args.batch:
                    for dtype in args.dtypes:
                        one = [size, device, str(px), str(batch), dtype]
                        done = subprocess.run(
                            [sys.executable, __file__, *passthrough, "--one", *one],
                            capture_output=True,
                            text=True,
                            check=True,
                        )
                        row = Row(**json.loads(done.stdout.strip().splitlines()[-1]))
                        rows.append(row)
                        print(
                            f"| {row.size} | {device} | {px} | {batch} | {dtype} | "
                            f"{row.tiles_per_s:.2f} | {row.ms_per_batch:.0f} | {row.peak_mb:.0f} | "
                            f"{row.rise_mb:.0f} | {row.params_m:.2f} |",
                            flush=True,
                        )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
