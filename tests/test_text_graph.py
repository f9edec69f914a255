"""The sentence encoder's ONNX graph: a new query on the CPU without torch or transformers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scenes import make_pair

from mtrs_geo.models import inference, text_graph
from mtrs_geo.models.network import load_network
from mtrs_geo.models.onnx_runtime import OnnxMTRefSegModel
from mtrs_geo.models.query_cache import encoder_fingerprint
from mtrs_geo.models.text import TextBranch

pytestmark = pytest.mark.usefixtures("torch_one_thread")

QUERIES = [
    ["new buildings"],
    ["new buildings", "any change", "trees cleared near the river, north of the old town"],
    ["flooded fields " * 30],  # longer than the text branch keeps: cut as the tokenizer cuts
]


@pytest.fixture(scope="module")
def branch() -> TextBranch:
    """The bundled checkpoint's text branch (the packaged MiniLM, frozen)."""
    return load_network(inference.CHECKPOINT_DIR).text


_RUN = """
import sys
from pathlib import Path
from mtrs_geo.config import DetectConfig
from mtrs_geo.pipeline import detect
before, after, out, query = sys.argv[1:5]
detect(DetectConfig(before=Path(before), after=Path(after), query=query, output=Path(out),
                    model="mtrefseg-r1", device="cpu"))
print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""


def _detect(folder: Path, query: str, name: str) -> str:
    """Run detect with ``query`` in a fresh process whose cache is ``folder/cache``.

    Returns the list of torch and transformers if the run imported them.
    """
    pair = make_pair(folder / "pair")
    env = dict(os.environ, XDG_CACHE_HOME=str(folder / "cache"), OMP_NUM_THREADS="1")
    env.pop(inference.RUNTIME_VARIABLE, None)
    out = folder / f"{name}.gpkg"
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(pair.before), str(pair.after), str(out), query],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.is_file()
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A CPU run with the first new query on a machine (about 25 s): its folder and imports."""
    folder = tmp_path_factory.mktemp("first-run")
    return folder, _detect(folder, "new buildings", "first")


@pytest.fixture(scope="module")
def graph(first_run: tuple[Path, str]) -> Path:
    """The encoder's graph that the first run exported."""
    found = list((first_run[0] / "cache" / "mtrs" / text_graph.SUBFOLDER).glob("text-*.onnx"))
    assert len(found) == 1
    return found[0]


def _fingerprint(branch: TextBranch) -> str:
    assert branch.model_dir is not None and branch.tokenizer_dir is not None
    found = encoder_fingerprint(branch.model_dir, branch.tokenizer_dir, branch.max_length)
    assert found is not None
    return found


@pytest.mark.parametrize("texts", QUERIES)
def test_the_graph_encodes_queries_as_the_text_branch_does(
    branch: TextBranch, graph: Path, texts: list[str]
) -> None:
    assert branch.tokenizer_dir is not None
    encoded = text_graph.SentenceGraph(graph, Path(branch.tokenizer_dir), branch.max_length)
    got = encoded.encode(texts)
    with torch.inference_mode():
        want = branch.encode(texts, torch.device("cpu"))
    assert want.pooled is not None
    np.testing.assert_array_equal(got["mask"], want.mask.numpy())
    np.testing.assert_array_equal(got["empty"], want.empty.numpy())
    words = got["mask"]
    np.testing.assert_allclose(got["tokens"][words], want.tokens.numpy()[words], atol=1e-4)
    np.testing.assert_allclose(got["pooled"], want.pooled.numpy(), atol=1e-4)


def test_a_graph_is_kept_only_when_it_gives_torchs_hidden_states(
    branch: TextBranch, graph: Path
) -> None:
    words = branch.tokenizer(["new buildings", "a new road through the fields"], padding=True,
                             return_tensors="pt")  # fmt: skip
    inputs = tuple(words[name] for name in text_graph.INPUTS)
    with torch.inference_mode():
        model = branch.text_model(torch.device("cpu"))
        hidden = model(**words).last_hidden_state.numpy()
    assert text_graph._agrees(graph, inputs, hidden)
    assert not text_graph._agrees(graph, inputs, hidden + 1e-3)


def test_a_failed_export_leaves_no_file_and_fails_no_run(
    branch: TextBranch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("cannot export")

    monkeypatch.setattr(torch.onnx, "export", broken)
    path = tmp_path / "onnx" / "text.onnx"
    assert not text_graph.export_text_graph(branch, path)
    assert not path.exists() and not list(tmp_path.rglob("*partial*"))


def test_the_cpu_runtime_with_the_graph_predicts_as_torch(
    branch: TextBranch, graph: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    kept = text_graph.graph_path(_fingerprint(branch))
    kept.parent.mkdir(parents=True)
    shutil.copyfile(graph, kept)
    in_onnx = inference.load_checkpoint(inference.CHECKPOINT_DIR, tmp_path / "q", device="cpu")
    in_torch = inference.load_checkpoint(inference.CHECKPOINT_DIR, tmp_path / "t")
    assert isinstance(in_onnx, OnnxMTRefSegModel)
    queries = ["new roads across the fields", "any change"]
    rng = np.random.default_rng(0)
    before = rng.random((1, 3, 64, 64), dtype=np.float32)
    after = before.copy()
    after[:, :, 16:40, 20:50] = 1.0 - after[:, :, 16:40, 20:50]
    for model in (in_onnx, in_torch):
        model.prepare_queries(queries)
    np.testing.assert_allclose(
        in_onnx.predict_queries(before, after), in_torch.predict_queries(before, after), atol=1e-4
    )
    assert in_onnx._sentence_graph is not None  # encoded by the graph, not by torch
    assert len(list((tmp_path / "q").rglob("*.safetensors"))) == 1  # and kept in the cache


def test_after_the_first_new_query_a_new_query_needs_no_torch(
    first_run: tuple[Path, str], graph: Path
) -> None:
    folder, imported = first_run
    # The first new query: torch encodes it and the graph is exported, in a child process.
    assert imported == "[]"
    assert list((folder / "cache" / "mtrs" / text_graph.SUBFOLDER).glob("text-*.onnx"))
    again = _detect(folder, "cleared vegetation by the road", "again")
    assert again == "[]"  # another new query: the graph, neither torch nor transformers


def test_a_run_is_told_when_its_query_needs_torch(
    branch: TextBranch, graph: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    model = inference.load_checkpoint(inference.CHECKPOINT_DIR, tmp_path / "q", device="cpu")
    assert model.preparing_note(["any change"]) is None  # no encoder at all
    note = model.preparing_note(["new roads", None])
    assert note is not None and "torch" in note and "once" in note
    kept = text_graph.graph_path(_fingerprint(branch))
    kept.parent.mkdir(parents=True)
    shutil.copyfile(graph, kept)
    assert model.preparing_note(["new roads", None]) is None  # the graph will encode it
    kept.unlink()
    model.prepare_queries(["new roads", None])  # torch encodes it; the cache keeps it
    kept.unlink(missing_ok=True)  # (and the export left a graph: without it, only the cache)
    assert model.preparing_note(["new roads", None]) is None


def test_a_graph_that_disagrees_with_torch_is_not_kept(
    branch: TextBranch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[Path] = []

    class Program:
        def save(self, where: str, external_data: bool) -> None:
            Path(where).write_bytes(b"graph")
            written.append(Path(where))

    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: Program())
    monkeypatch.setattr(text_graph, "_agrees", lambda *args: False)
    path = tmp_path / "onnx" / "text.onnx"
    assert not text_graph.export_text_graph(branch, path)
    assert written and not written[0].exists()  # it was written, checked, and removed
    assert not path.exists() and not list(tmp_path.rglob("*partial*"))
