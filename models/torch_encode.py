"""A machine's first new query on the CPU: encoded by torch in a child process.

The CPU runtime (:mod:`mtrs_geo.models.onnx_runtime`) needs neither torch nor ``transformers``
once the sentence encoder has its own graph (:mod:`mtrs_geo.models.text_graph`). The first new
query a machine sees has no graph yet: torch encodes it and the graph is exported for the next
ones. Doing that in the run's own process kept torch, the encoder and the export's copies of
its weights there for the whole run (peak RSS 1.53 GiB one way, 1.68 GiB asked both ways, on a
2048^2 pair; the target is 1.5 GiB). A child does it instead::

    python -m mtrs_geo.models.torch_encode CHECKPOINT OUT TEXT [TEXT ...]

It encodes the texts with the checkpoint's text branch, writes the arrays to ``OUT``
(safetensors: ``tokens``, ``mask``, ``empty``, ``pooled``), exports the encoder's graph when the
machine has none, and exits; the run reads ``OUT`` and goes on without torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from mtrs_geo.errors import ModelError

ARRAYS = ("tokens", "mask", "empty", "pooled")


def child_python() -> str | None:
    """Return the interpreter for a child: this one, if it is a Python (not QGIS embedding it)."""
    executable = Path(sys.executable)
    return str(executable) if executable.name.startswith("python") else None


def encode_in_child(checkpoint: Path, texts: list[str], python: str) -> dict[str, np.ndarray]:
    """Encode ``texts`` with ``checkpoint``'s text branch in a child process; its arrays.

    Raises:
        ModelError: the child failed (its last line of error output is the message).

    """
    from safetensors.numpy import load_file

    with tempfile.TemporaryDirectory(prefix="mtrs-encode-") as folder:
        out = Path(folder) / "embeds.safetensors"
        command = [python, "-m", "mtrs_geo.models.torch_encode", str(checkpoint), str(out)]
        # The child imports what this process imports, wherever its paths came from.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path for path in sys.path if path))
        done = subprocess.run(
            [*command, *texts], capture_output=True, text=True, check=False, env=env
        )
        if done.returncode != 0 or not out.is_file():
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit status {done.returncode}"
            raise ModelError(f"cannot encode the query with {Path(checkpoint).name}: {reason}")
        arrays = load_file(str(out))
    return {name: arrays[name] for name in ARRAYS}


def encode_with_torch(checkpoint: Path, texts: list[str]) -> dict[str, np.ndarray]:
    """Encode ``texts`` with ``checkpoint``'s text branch in this process; export its graph.

    The sentence encoder's graph is exported when the machine has none, for the next new query.

    Raises:
        ModelError: the checkpoint's text encoder cannot be loaded, or does not pool its words.

    """
    import torch

    from mtrs_geo.models.loading import quiet_loading
    from mtrs_geo.models.network import load_network
    from mtrs_geo.models.query_cache import encoder_fingerprint
    from mtrs_geo.models.text_graph import export_text_graph, graph_path

    try:
        branch = load_network(checkpoint).text
        with quiet_loading(), torch.inference_mode():
            embeds = branch.encode(texts, torch.device("cpu"))
    except OSError as exc:
        raise ModelError(f"cannot load the text encoder of {checkpoint}: {exc}") from exc
    if embeds.pooled is None:
        raise ModelError(f"the text branch of {checkpoint} does not pool its words")
    if branch.model_dir is not None and branch.tokenizer_dir is not None:
        fingerprint = encoder_fingerprint(branch.model_dir, branch.tokenizer_dir, branch.max_length)
        if fingerprint and not graph_path(fingerprint).is_file():
            export_text_graph(branch, graph_path(fingerprint))
    tensors = dict(
        zip(ARRAYS, (embeds.tokens, embeds.mask, embeds.empty, embeds.pooled), strict=True)
    )
    return {name: np.ascontiguousarray(tensor.numpy()) for name, tensor in tensors.items()}


def main(argv: list[str] | None = None) -> int:
    """Encode, export the encoder's graph if missing, write the arrays (see the module doc)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3:
        print(
            "usage: python -m mtrs_geo.models.torch_encode CHECKPOINT OUT TEXT...", file=sys.stderr
        )
        return 2
    from safetensors.numpy import save_file

    from mtrs_geo.write import atomic_output

    out = Path(args[1])
    try:
        arrays = encode_with_torch(Path(args[0]), list(args[2:]))
    except ModelError as error:
        print(error, file=sys.stderr)
        return 1
    with atomic_output(out) as partial:
        save_file(arrays, str(partial))
    return 0


if __name__ == "__main__":
    sys.exit(main())
