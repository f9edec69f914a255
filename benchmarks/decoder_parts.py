"""Where one query's decoding goes, and what a decoder gating after the FPN would cost (issue 14).

Times, in torch on the CPU, the parts of the bundled checkpoint's language-dependent pass for one
query (pixel-word attention per level, the FPN pixel decoder, the mask decoder, the upsampling),
then the same checkpoint with the model option ``language_after_fpn`` (the FPN over the query-free
fused features, once per pair whatever the number of queries; pixel-word attention on its three
memory levels, its new gates untrained: their cost, not their answers). Random tiles; per pair,
median of ``--repeats`` timed calls after two warm-up calls.

    .venv/bin/python benchmarks/decoder_parts.py
    .venv/bin/python benchmarks/decoder_parts.py --batch 4 --tile 256 --repeats 20
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


def main() -> None:
    from mtrs_geo.models.loading import quiet_loading
    from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1
    from mtrs_geo.models.network import load_network

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="tile pairs per call")
    parser.add_argument("--tile", type=int, default=256, help="tile side, pixels")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per part")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
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
