"""Where one query's decoding goes, and what a decoder gating after the FPN would cost (issue 14).

Times, in torch on the CPU, the parts of the bundled checkpoint's language-dependent pass for one
query (pixel-word attention per level, the FPN pixel decoder, the mask decoder, the upsampling),
then the same checkpoint with the model option ``language_after_fpn`` (the FPN over the query-free
fused features, once per pair whatever the number of queries; pixel-word attention on its three
memory levels, its new gates untrained: their cost, not their answers). Random tiles; per pair,
median of ``--repeats`` timed calls after two warm-up calls.

    .venv/bin/python benchmarks/decoder_parts.py
    .venv/bin/python benchmarks/decoder_parts.py --batch 4 --tile 256 --repeats 20

``--onnx-rows`` times instead the bundled checkpoint's ONNX graphs as the CPU runtime runs them,
at several rows per call (interleaved rounds, medians): three queries of ``--batch`` pairs in one
decoder call and in one call per query, and the backbone at 2, 4 and 8 images a call. It is what
sets ``models/onnx_runtime.py``'s calls (``decoder_queries_per_call``, ``BACKBONE_PIXELS``)::

    .venv/bin/python benchmarks/decoder_parts.py --onnx-rows --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "models" / "checkpoints" / "mtrefseg-r1"


def per_pair_ms(call: Callable[[], object], batch: int, repeats: int) -> float:
    """Median milliseconds of ``call`` divided by the pairs it runs."""
    for _ in range(2):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000 / batch


def onnx_rows(batch: int, tile: int, repeats: int) -> None:
    """Time the ONNX graphs at several rows per call (see the module's docstring)."""
    import numpy as np

    from mtrs_geo.model_api import load_model
    from mtrs_geo.models.onnx_runtime import BACKBONE_INPUTS, OnnxMTRefSegModel

    model = load_model("mtrefseg-r1", device="cpu")
    assert isinstance(model, OnnxMTRefSegModel), "the ONNX runtime is not available"
    model.prepare_queries(["new buildings", "cleared vegetation", "new roads"])
    rng = np.random.default_rng(0)
    before = rng.random((batch, 3, tile, tile), dtype=np.float32)
    after = rng.random((batch, 3, tile, tile), dtype=np.float32)
    feeds: dict[str, np.ndarray] = {}
    decoder = model._decoder

    class Capture:
        def run(self, names: object, given: dict[str, np.ndarray]) -> list[np.ndarray]:
            feeds.update(given)
            return decoder.run(names, given)

    model._decoder = Capture()  # type: ignore[assignment]
    model.predict_queries(before, after)  # one decoder call per query: the feeds of the last
    model._decoder = decoder
    levels = {name: feeds[name] for name in feeds if name.startswith("fused")}
    text = {name: model._text[name] for name in ("tokens", "mask", "empty", "pooled")}
    one_query = [{n: a[q : q + 1] for n, a in text.items()} for q in range(3)]
    images = np.concatenate([before, after, before, after])
    calls: dict[str, Callable[[], object]] = {
        f"decoder, 3 queries x {batch} pairs in one call": lambda: decoder.run(None, levels | text),
        f"decoder, 3 calls of 1 query x {batch} pairs": lambda: [
            decoder.run(None, levels | part) for part in one_query
        ],
    }
    for per_call in (2, 4, 8):
        calls[f"backbone, 8 images, {per_call} a call"] = lambda per_call=per_call: [
            model._backbone.run(None, {BACKBONE_INPUTS[0]: images[i : i + per_call]})
            for i in range(0, 8, per_call)
        ]
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(repeats + 2):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_ >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - start)
    print(f"ONNX Runtime, {tile} px, medians of {repeats} interleaved rounds:")
    for name, values in times.items():
        rows = 3 * batch if name.startswith("decoder") else 8
        per_row = statistics.median(values) * 1000 / rows
        print(f"  {name:44s} {per_row:6.2f} ms a row")


def main() -> None:
    from mtrs_geo.models.loading import quiet_loading
    from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1
    from mtrs_geo.models.network import load_network

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="tile pairs per call")
    parser.add_argument("--tile", type=int, default=256, help="tile side, pixels")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per part")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--onnx-rows", action="store_true", help="the ONNX graphs' rows per call")
    args = parser.parse_args()
    if args.onnx_rows:
        onnx_rows(args.batch, args.tile, args.repeats)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    net = load_network(CHECKPOINT).eval().fuse_for_inference()
    shape = (args.batch, 3, args.tile, args.tile)
    before, after = torch.rand(shape), torch.rand(shape)
    embeds = net.encode_text(["new buildings"])
    rows: list[tuple[str, float]] = []

    def timed(name: str, call: Callable[[], object]) -> None:
        rows.append((name, per_pair_ms(call, args.batch, args.repeats)))

    with torch.no_grad():
        features = net.encode_pair(before, after)
        words, mask, query = net.text(
            embeds.expand(args.batch), features.before_coarse, features.after_coarse
        )
        gated = [pw(f, words, mask) for pw, f in zip(net.pixel_word, features.fused, strict=True)]
        pixels, memory = net.pixel_decoder(gated)
        projection = net.pixel_decoder.mask_proj

        timed("query-free: backbone and fusion", lambda: net.encode_pair(before, after))
        timed("one query today: all of it", lambda: net.decode(features, embeds))
        for level, (pw, f) in enumerate(zip(net.pixel_word, features.fused, strict=True)):
            timed(f"  pixel-word attention, level {level}", lambda pw=pw, f=f: pw(f, words, mask))
        timed("  FPN pixel decoder", lambda: net.pixel_decoder(gated))
        timed(
            "  mask decoder",
            lambda: net.decoder(query, memory, pixels, projection, words, mask),
        )

        # The same checkpoint with the option on: every layer as shipped, the new gates shut
        # (untrained, but costing what trained ones cost).
        with quiet_loading():
            gated_after = MTRefSegR1.from_pretrained(
                CHECKPOINT, local_files_only=True, language_after_fpn=True
            )
        gated_after.eval().fuse_for_inference()
        after_features = gated_after.encode_pair(before, after)
        timed(
            "gating after the FPN: the FPN, query-free",
            lambda: gated_after.pixel_decoder(list(features.fused)),
        )
        timed(
            "gating after the FPN: one query",
            lambda: gated_after.decode(after_features, embeds),
        )

    print(f"per pair, torch, {args.threads} threads, batch {args.batch} of {args.tile} px:")
    for name, value in rows:
        print(f"  {name:44s} {value:7.2f} ms")


if __name__ == "__main__":
    main()
