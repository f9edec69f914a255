"""ONNX Runtime graphs of MTRefSeg-R1 timed alone: backbone and fusion per pair, decoder per query.

Run by hand (on an otherwise idle machine)::

    .venv/bin/python benchmarks/onnx_graphs.py                      # the bundled graphs
    .venv/bin/python benchmarks/onnx_graphs.py OLD_FOLDER NEW_FOLDER  # two exports side by side

Each folder is a checkpoint's ``onnx/`` graph folder (``python -m mtrs_geo.models.onnx_export CKPT
--out FOLDER``). The sessions are built as the engine builds them (one process-wide thread pool),
fed random 256 px tile pairs, ``--pairs`` a call (the engine's 4), and the encoded queries of the
bundled checkpoint; the decoders are timed in turn, round after round, so a busy spell hits all of
them. Prints milliseconds per pair: the backbone's (both dates), the fusion's (one way), and each
decoder's for 1 and 3 queries (median and best of the rounds).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

BUNDLED = Path(__file__).resolve().parents[1] / "models" / "checkpoints" / "mtrefseg-r1" / "onnx"
QUERIES = ("new buildings", "cleared vegetation", "new roads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, help="graph folders (default: bundled)")
    parser.add_argument("--pairs", type=int, default=4, help="tile pairs a call")
    parser.add_argument("--size", type=int, default=256, help="tile side in pixels")
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds")
    parser.add_argument("--calls", type=int, default=4, help="calls a round")
    args = parser.parse_args()

    import onnxruntime as ort

    from mtrs_geo.model_api import load_model
    from mtrs_geo.models.onnx_runtime import (
        BACKBONE_FILE,
        BACKBONE_INPUTS,
        DECODER_FILE,
        FUSION_FILE,
        FUSION_INPUTS,
        LEVELS,
        session_options,
    )

    folders = args.folders or [BUNDLED]
    model = load_model("mtrefseg-r1", device="cpu")  # the queries' encodings, from its cache

    def session(path: Path) -> ort.InferenceSession:
        return ort.InferenceSession(
            str(path), session_options(), providers=["CPUExecutionProvider"]
        )

    def per_pair(graph: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> float:
        start = time.perf_counter()
        for _ in range(args.calls):
            graph.run(None, feeds)
        return (time.perf_counter() - start) / (args.calls * args.pairs) * 1000

    backbone = session(folders[0] / BACKBONE_FILE)
    fusion = session(folders[0] / FUSION_FILE)
    decoders = {folder: session(folder / DECODER_FILE) for folder in folders}
    rng = np.random.default_rng(0)
    shape = (2 * args.pairs, 3, args.size, args.size)
    images = {BACKBONE_INPUTS[0]: rng.random(shape, dtype=np.float32)}
    dates = backbone.run(None, images)
    pair = [level[: args.pairs] for level in dates] + [level[args.pairs :] for level in dates]
    pair_feeds = dict(zip(FUSION_INPUTS, pair, strict=True))
    levels = fusion.run(None, pair_feeds)
    print(f"backbone ({folders[0]}): {per_pair(backbone, images):.2f} ms per pair")
    print(f"fusion ({folders[0]}): {per_pair(fusion, pair_feeds):.2f} ms per pair")
    for count in (1, 3):
        model.prepare_queries(list(QUERIES[:count]))
        feeds = dict(zip(LEVELS, levels, strict=True)) | model._text  # type: ignore[attr-defined]
        times: dict[Path, list[float]] = {folder: [] for folder in folders}
        for _ in range(args.rounds):
            for folder, decoder in decoders.items():
                decoder.run(None, feeds)  # warm
                start = time.perf_counter()
                for _ in range(args.calls):
                    decoder.run(None, feeds)
                elapsed = time.perf_counter() - start
                times[folder].append(elapsed / (args.calls * args.pairs) * 1000)
        for folder, values in times.items():
            print(
                f"decoder ({folder}), {count} quer{'y' if count == 1 else 'ies'}: "
                f"{statistics.median(values):.2f} ms per pair (best {min(values):.2f})"
            )


if __name__ == "__main__":
    main()
