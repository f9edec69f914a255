"""Export an MTRefSeg-R1 checkpoint to the three ONNX graphs the CPU runtime runs.

The network is cut after its backbone
(:meth:`~mtrs_geo.models.network.MTRefSegR1Layers.encode_dates`), so that a pair asked both ways
in time shares one backbone pass, and where
:meth:`~mtrs_geo.models.network.MTRefSegR1Layers.encode_pair` ends, so that several queries share
one fusion (:mod:`mtrs_geo.models.onnx_runtime`):

* ``backbone.onnx``: ``images`` ``(N, C, H, W)`` float32 in [0, 1] (``H`` and ``W`` multiples of
  32; the runtime mirror-pads) -> the backbone's four levels ``level0`` .. ``level3``;
* ``fusion.onnx``: the levels of the before tiles (``before0`` .. ``before3``) and of the after
  tiles (``after0`` .. ``after3``) -> the four fused change levels ``fused0`` .. ``fused3``;
* ``decoder.onnx``: the four levels and ``Q`` encoded queries (``tokens (Q, L, D)``, ``mask (Q, L)``
  bool, ``empty (Q,)`` bool, ``pooled (Q, D)``) -> ``probability (Q * N, H, W)``, the
  presence-gated change probability, query-major (query ``q`` of pair ``b`` at ``q * N + b``).

The decoder computes the text branch's sentence-mode projection with tensor arithmetic where the
network branches on values (an "any change" row takes the learned token), so the same numbers come
out as from the network. Only sentence-mode checkpoints with a frozen encoder export (an LLM runs
per batch, and a trained text model is part of the weights).

Needs ``torch`` and the ``onnx`` package (the exporter's); the runtime itself needs neither.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

from mtrs_geo.models import decoder as decoders
from mtrs_geo.models.network import gate_with_words
from mtrs_geo.models.onnx_runtime import (
    BACKBONE_FILE,
    BACKBONE_INPUTS,
    BACKBONE_LEVELS,
    DECODER_FILE,
    DECODER_INPUTS,
    FORMAT,
    FUSION_FILE,
    FUSION_INPUTS,
    LEVELS,
    MANIFEST_FILE,
    MULTIPLE,
    SUBFOLDER,
    weights_digest,
)
from mtrs_geo.write import atomic_output

if TYPE_CHECKING:
    from mtrs_geo.models.network import MTRefSegR1Layers

OPSET = 18


def exportable(network: MTRefSegR1Layers) -> bool:
    """Whether the network's text branch is one the decoder graph computes (sentence, frozen)."""
    text = network.text
    return text.mode == "sentence" and text.encoder is None and text.model_dir is not None


def _unit_steps(count: int | torch.SymInt, device: torch.device) -> torch.Tensor:
    """``torch.linspace(0, 1, count)`` from a size the exporter keeps symbolic (to a float ulp)."""
    steps = torch.arange(count, device=device, dtype=torch.float32)
    return steps / steps[-1:].clamp(min=1.0)


def _traceable_position_encoding(
    height: int, width: int, dim: int, device: torch.device
) -> torch.Tensor:
    """:func:`~mtrs_geo.models.decoder.sine_position_encoding` without ``linspace``.

    ``linspace`` takes its step count as a number, so an exported graph would keep the example's
    sides; this is the same encoding from ``arange``, whose size stays an axis of the graph.
    """
    return decoders.position_encoding_of(
        _unit_steps(height, device), _unit_steps(width, device), dim
    )


class _Backbone(nn.Module):
    def __init__(self, network: MTRefSegR1Layers) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.network.encode_dates(images))


class _Fusion(nn.Module):
    def __init__(self, network: MTRefSegR1Layers) -> None:
        super().__init__()
        self.network = network

    def forward(self, *levels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # The fused levels do not depend on the tile size (it only describes the padding).
        size = (MULTIPLE, MULTIPLE)
        return self.network.fuse(list(levels[:4]), list(levels[4:]), size).fused


class _Decoder(nn.Module):
    def __init__(self, network: MTRefSegR1Layers, stride: int) -> None:
        super().__init__()
        self.network = network
        self.stride = stride

    def forward(
        self,
        fused0: torch.Tensor,
        fused1: torch.Tensor,
        fused2: torch.Tensor,
        fused3: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        empty: torch.Tensor,
        pooled: torch.Tensor,
    ) -> torch.Tensor:
        net, text = self.network, self.network.text
        count, batch = tokens.shape[0], fused0.shape[0]
        # TextBranch.forward in sentence mode, without its branches on values.
        chosen = empty.to(tokens.dtype)
        words = text.word_proj(tokens) * (1 - chosen)[:, None, None]
        words = words + text.any_change * chosen[:, None, None]
        query = text.query_proj(pooled) * (1 - chosen)[:, None] + text.any_change * chosen[:, None]
        first = torch.arange(mask.shape[1]) == 0
        mask = mask | (empty[:, None] & first[None, :])

        # Every query over every pair, query-major (as MTRefSegR1Layers.decode repeats them), by
        # expand and reshape: the exported repeats would mix up the two axes.
        def pairs_of_queries(tensor: torch.Tensor) -> torch.Tensor:
            return tensor[None].expand(count, *tensor.shape).flatten(0, 1)

        def queries_of_pairs(tensor: torch.Tensor) -> torch.Tensor:
            return tensor[:, None].expand(tensor.shape[0], batch, *tensor.shape[1:]).flatten(0, 1)

        levels = [pairs_of_queries(f) for f in (fused0, fused1, fused2, fused3)]
        words, mask, query = (queries_of_pairs(t) for t in (words, mask, query))
        pixels, memory = gate_with_words(net, levels, words, mask)
        projection = net.pixel_decoder.mask_proj
        predictions, presence = net.decoder(query, memory, pixels, projection, words, mask)
        logits = F.interpolate(
            predictions[-1][:, None], scale_factor=float(self.stride), mode="bilinear"
        )[:, 0]
        return logits.sigmoid() * presence.sigmoid()[:, None, None]


def export_graphs(checkpoint: Path, folder: Path) -> Path:
    """Write ``checkpoint``'s three graphs and their manifest into ``folder``; return ``folder``.

    The graphs are written under temporary names and renamed when complete, the manifest last:
    a folder with a manifest holds whole graphs.

    Raises:
        ValueError: the checkpoint's text branch cannot run in the decoder graph.

    """
    from mtrs_geo.models.network import load_network

    network = load_network(Path(checkpoint)).eval()
    if not exportable(network):
        raise ValueError(f"{checkpoint}: only a sentence-mode checkpoint with a frozen encoder")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # An example whose every axis has its own size, none 0 or 1: the exporter fixes sizes 0 and 1
    # and would take axes of equal sizes for one. 2 pairs of 3 x 4 coarse cells, 3 queries of 5.
    size = 3 * MULTIPLE
    image = torch.rand(2, network.config.in_channels, size, 4 * MULTIPLE)
    embeds = network.text.any_change_embeds(1, torch.device("cpu"))
    width = network.text.text_dim
    tokens = torch.randn(3, 5, width)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    empty = torch.tensor([False, False, True])
    pooled = torch.randn(3, width)
    backbone, fusion = _Backbone(network).eval(), _Fusion(network).eval()
    with torch.inference_mode():
        dates = backbone(torch.cat([image, image]))
        pair = (*(level[:2] for level in dates), *(level[2:] for level in dates))
        levels = fusion(*pair)
    decoder = _Decoder(network, size // _prediction_side(network, embeds, size)).eval()

    # The backbone and the fusion by tracing: torch.export's graph of them gives other numbers in
    # ONNX Runtime (its decoder graph gives the network's). Their sides stay axes of the graph
    # for multiples of 32 (the runtime pads to them).
    def traced(names: tuple[str, ...]) -> dict[str, dict[int, str]]:
        return {name: {0: "tiles", 2: f"rows{name[-1]}", 3: f"cols{name[-1]}"} for name in names}

    _trace(
        backbone,
        (torch.cat([image, image]),),
        folder / BACKBONE_FILE,
        BACKBONE_INPUTS,
        BACKBONE_LEVELS,
        {BACKBONE_INPUTS[0]: {0: "tiles", 2: "rows", 3: "cols"}} | traced(BACKBONE_LEVELS),
    )
    _trace(
        fusion, pair, folder / FUSION_FILE, FUSION_INPUTS, LEVELS, traced(FUSION_INPUTS + LEVELS)
    )
    # The decoder by torch.export, with every axis symbolic (the tracer keeps the example's query
    # and word counts). Sides in units of the coarsest stride: level l is 2 ** (3 - l) of them.
    pairs, queries = Dim("pairs", min=1, max=4096), Dim("queries", min=1, max=1024)
    words = Dim("words", min=1, max=4096)
    rows, cols = (Dim(name, min=1, max=4096) for name in ("rows", "cols"))
    axes: dict[str, dict[int, Any]] = {
        name: {0: pairs, 2: 2 ** (3 - i) * rows, 3: 2 ** (3 - i) * cols}
        for i, name in enumerate(LEVELS)
    }
    axes |= {"tokens": {0: queries, 1: words}, "mask": {0: queries, 1: words}}
    axes |= {"empty": {0: queries}, "pooled": {0: queries}}
    with (
        quiet_export(),
        mock.patch.object(decoders, "sine_position_encoding", _traceable_position_encoding),
    ):
        program = torch.onnx.export(
            decoder,
            (*levels, tokens, mask, empty, pooled),
            input_names=list(DECODER_INPUTS),
            output_names=["probability"],
            dynamic_shapes=axes,
            opset_version=OPSET,
            dynamo=True,
        )
    assert program is not None
    with atomic_output(folder / DECODER_FILE) as partial:
        program.save(str(partial), external_data=False)
    manifest = {
        "format": FORMAT,
        "weights_sha256": weights_digest(Path(checkpoint)),
        "text_width": width,
        "in_channels": network.config.in_channels,
        "torch": torch.__version__,
    }
    with atomic_output(folder / MANIFEST_FILE) as partial:
        partial.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder


def _trace(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    axes: dict[str, dict[int, str]],
) -> None:
    """Export ``module`` by tracing ``example`` to ``path`` (a temporary name, then renamed)."""
    with atomic_output(path) as partial, quiet_export(), torch.inference_mode():
        torch.onnx.export(
            module,
            example,
            str(partial),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence the exporters' progress lines and their notes on shapes."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _prediction_side(network: MTRefSegR1Layers, embeds: object, size: int) -> int:
    """Side of the decoder's last mask prediction for the export's square image, pixels."""
    captured: list[int] = []

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        predictions = output[0]  # type: ignore[index]
        captured.append(int(predictions[-1].shape[-1]))

    handle = network.decoder.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            features = network.encode_pair(
                torch.rand(1, network.config.in_channels, size, size),
                torch.rand(1, network.config.in_channels, size, size),
            )
            network.decode(features, embeds)  # type: ignore[arg-type]
    finally:
        handle.remove()
    return captured[0]


def main(argv: list[str] | None = None) -> None:
    """``python -m mtrs_geo.models.onnx_export CHECKPOINT [--out FOLDER]``: write the graphs."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mtrs_geo.models.onnx_export",
        description="Export a checkpoint's encoder and decoder graphs for ONNX Runtime.",
    )
    parser.add_argument("checkpoint", type=Path, help="a save_pretrained checkpoint folder")
    parser.add_argument("--out", type=Path, help=f"graph folder (default: CHECKPOINT/{SUBFOLDER})")
    args = parser.parse_args(argv)
    if not (args.checkpoint / "model.safetensors").is_file():
        parser.exit(
            2, f"error: {args.checkpoint} is not a checkpoint folder (no model.safetensors)\n"
        )
    try:
        print(export_graphs(args.checkpoint, args.out or args.checkpoint / SUBFOLDER))
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
