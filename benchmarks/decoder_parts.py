"""Where one query's decoding goes, and what a decoder gating after the FPN would cost (issue 14).

Times, in torch on the CPU, the parts of the bundled checkpoint's language-dependent pass for one
query (pixel-word attention per level, the FPN pixel decoder, the mask decoder, the upsampling),
then the same pass with the language moved after the FPN: the FPN over the query-free fused
features (it would run once per pair, whatever the number of queries) and pixel-word attention on
its three memory levels, with untrained stand-in layers of the right shapes (their cost, not their
answers). Random tiles; per pair, median of ``--repeats`` timed calls after two warm-up calls.

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
import torch.nn.functional as F

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
    from mtrs_geo.models.network import load_network
    from mtrs_geo.models.text import PixelWordAttention

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

        plain_pixels, plain_memory = net.pixel_decoder(list(features.fused))
        hidden = int(net.config.hidden_size)
        stand_ins = [PixelWordAttention(hidden, words.shape[-1]).eval() for _ in plain_memory]
        size = (args.tile, args.tile)

        def after_fpn() -> torch.Tensor:
            levels = [pw(m, words, mask) for pw, m in zip(stand_ins, plain_memory, strict=True)]
            predictions, _ = net.decoder(query, levels, plain_pixels, projection, words, mask)
            return F.interpolate(predictions[-1][:, None], size, mode="bilinear")

        timed(
            "gating after the FPN: the FPN, query-free",
            lambda: net.pixel_decoder(list(features.fused)),
        )
        timed("gating after the FPN: one query", after_fpn)

    print(f"per pair, torch, {args.threads} threads, batch {args.batch} of {args.tile} px:")
    for name, value in rows:
        print(f"  {name:44s} {value:7.2f} ms")


if __name__ == "__main__":
    main()
