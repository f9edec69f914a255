"""A machine's first new query on the CPU is encoded by torch in a child process."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtrs_geo.errors import ModelError
from mtrs_geo.models import inference
from mtrs_geo.models.network import load_network
from mtrs_geo.models.query_cache import encoder_fingerprint
from mtrs_geo.models.text_graph import graph_path
from mtrs_geo.models.torch_encode import child_python, encode_in_child, encode_with_torch

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_the_child_encodes_as_the_text_branch_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    branch = load_network(inference.CHECKPOINT_DIR).text
    assert branch.model_dir is not None and branch.tokenizer_dir is not None
    fingerprint = encoder_fingerprint(branch.model_dir, branch.tokenizer_dir, branch.max_length)
    assert fingerprint is not None
    graph = graph_path(fingerprint)  # there already: the child skips the export (20 s)
    graph.parent.mkdir(parents=True)
    graph.write_bytes(b"")
    texts = ["new buildings", ""]
    python = child_python()
    assert python is not None
    got = encode_in_child(inference.CHECKPOINT_DIR, texts, python)
    with torch.inference_mode():
        want = branch.encode(texts, torch.device("cpu"))
    assert want.pooled is not None
    np.testing.assert_array_equal(got["mask"], want.mask.numpy())
    np.testing.assert_array_equal(got["empty"], want.empty.numpy())
    np.testing.assert_allclose(got["tokens"], want.tokens.numpy(), atol=1e-6)
    np.testing.assert_allclose(got["pooled"], want.pooled.numpy(), atol=1e-6)
    here = encode_with_torch(inference.CHECKPOINT_DIR, texts)  # where no child can be started
    for name, array in got.items():
        np.testing.assert_array_equal(here[name], array)


def test_a_child_that_fails_is_a_one_line_model_error(tmp_path: Path) -> None:
    python = child_python()
    assert python is not None
    with pytest.raises(ModelError) as error:
        encode_in_child(tmp_path / "missing", ["new buildings"], python)
    assert "\n" not in str(error.value) and "cannot encode the query" in str(error.value)


def test_an_interpreter_embedded_in_another_program_encodes_in_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "executable", "/usr/bin/qgis")
    assert child_python() is None
