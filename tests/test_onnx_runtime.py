"""MTRefSeg-R1 on the CPU in ONNX Runtime: the torch network's numbers, without importing torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scenes import make_pair

from mtrs_geo.errors import ModelError
from mtrs_geo.model_api import load_model
from mtrs_geo.models import inference, onnx_runtime
from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1
from mtrs_geo.models.onnx_export import export_graphs
from mtrs_geo.models.onnx_runtime import OnnxMTRefSegModel
from mtrs_geo.models.torch_inference import MTRefSegChangeModel

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint with its graphs (the export takes tens of seconds: once)."""
    folder = tmp_path_factory.mktemp("onnx") / "tiny"
    torch.manual_seed(0)
    MTRefSegR1(MTRefSegR1Config.from_size("tiny")).save_pretrained(folder)
    export_graphs(folder, folder / onnx_runtime.SUBFOLDER)
    return folder


def test_the_export_writes_the_graphs_and_manifest_and_nothing_else(exported: Path) -> None:
    names = sorted(path.name for path in (exported / onnx_runtime.SUBFOLDER).iterdir())
    assert names == sorted([*onnx_runtime.GRAPH_FILES, onnx_runtime.MANIFEST_FILE])


def _pair(count: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    before = rng.random((count, 3, height, width), dtype=np.float32)
    after = before.copy()
    after[:, :, height // 4 : height // 2, width // 3 :] = (
        1.0 - after[:, :, height // 4 : height // 2, width // 3 :]
    )
    return before, after


@pytest.mark.parametrize(
    "queries",
    [["new buildings"], ["any change"], ["new buildings", "demolished roads", "any change"]],
)
@pytest.mark.parametrize("shape", [(1, 64, 64), (3, 40, 72), (2, 20, 33)])
def test_the_graphs_give_the_networks_probabilities(
    exported: Path, tmp_path: Path, queries: list[str], shape: tuple[int, int, int]
) -> None:
    in_torch = inference.load_checkpoint(exported, cache_dir=tmp_path)
    in_onnx = inference.load_checkpoint(exported, cache_dir=tmp_path, device="cpu")
    assert isinstance(in_torch, MTRefSegChangeModel) and isinstance(in_onnx, OnnxMTRefSegModel)
    before, after = _pair(*shape)
    in_torch.prepare_queries(queries)
    in_onnx.prepare_queries(queries)
    expected = in_torch.predict_queries(before, after)
    got = in_onnx.predict_queries(before, after)
    assert got.shape == expected.shape == (len(queries), *shape)
    np.testing.assert_allclose(got, expected, atol=2e-5)


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_both_ways_in_one_pass_answers_as_two_one_way_passes_for_the_pairs_picked(
    exported: Path, tmp_path: Path, runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = inference.load_checkpoint(
        exported, cache_dir=tmp_path, device="cpu" if runtime == "onnx" else None
    )
    assert isinstance(model, OnnxMTRefSegModel if runtime == "onnx" else MTRefSegChangeModel)
    before, after = _pair(3, 40, 72, seed=5)
    forward, backward = ["new buildings", "any change"], ["removed buildings", "new water"]
    model.prepare_queries(forward)
    expected_forward = model.predict_queries(before, after)
    model.prepare_queries(backward)
    expected_backward = model.predict_queries(after, before)
    model.prepare_both_ways(forward, backward)
    got_forward, asked, got_backward = model.predict_both_ways(before, after)
    assert got_forward.shape == got_backward.shape == (2, 3, 40, 72)
    assert asked.tolist() == [[True, True, True], [True, True, True]]
    np.testing.assert_allclose(got_forward, expected_forward, atol=2e-5)
    np.testing.assert_allclose(got_backward, expected_backward, atol=2e-5)
    # Each backward query is asked of the pairs picked for it from the forward answers, alone.
    seen: list[int] = []
    picks = np.array([[False, True, False], [True, False, True]])  # by pair, wherever it falls

    def pick(answers: np.ndarray) -> np.ndarray:
        seen.append(answers.shape[1])

        def which(pair: np.ndarray) -> int:
            return next(i for i in range(3) if np.allclose(pair, expected_forward[:, i], atol=2e-5))

        return picks[:, [which(answers[:, b]) for b in range(answers.shape[1])]]

    def check(got_forward: np.ndarray, asked: np.ndarray, got_backward: np.ndarray) -> None:
        assert asked.tolist() == picks.tolist()
        np.testing.assert_allclose(got_forward, expected_forward, atol=2e-5)
        np.testing.assert_allclose(got_backward[picks], expected_backward[picks], atol=2e-5)

    check(*model.predict_both_ways(before, after, pick))
    assert seen == [3]
    _, asked, _ = model.predict_both_ways(before, after, lambda f: np.zeros((2, 3), bool))
    assert not asked.any()
    # A pair a call: the calls' answers join in order.
    if runtime == "onnx":
        monkeypatch.setattr(onnx_runtime, "CALL_PIXELS", 40 * 72)
    else:
        monkeypatch.setattr(type(model), "cpu_call_pixels", 40 * 72)
    seen.clear()
    check(*model.predict_both_ways(before, after, pick))
    assert seen == [1, 1, 1]


def test_one_query_predicts_as_the_first_of_several(exported: Path, tmp_path: Path) -> None:
    model = inference.load_checkpoint(exported, cache_dir=tmp_path, device="cpu")
    before, after = _pair(2, 64, 64, seed=3)
    model.prepare("demolished roads")
    alone = model.predict(before, after)
    model.prepare_queries(["demolished roads", "new water"])
    together = model.predict_queries(before, after)
    np.testing.assert_allclose(together[0], alone, atol=2e-6)


@pytest.mark.parametrize("both_ways", [False, True])
def test_images_and_queries_split_over_calls_answer_as_in_one_call(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, both_ways: bool
) -> None:
    model = inference.load_checkpoint(exported, cache_dir=tmp_path, device="cpu")
    assert isinstance(model, OnnxMTRefSegModel)
    before, after = _pair(3, 40, 72, seed=5)
    queries = ["new buildings", "demolished roads", "any change"]
    if both_ways:
        model.prepare_both_ways(queries, ["demolished buildings", "new roads", "any change"])
    else:
        model.prepare_queries(queries)
    calls: list[int] = []
    decoder = model._decoder

    class Counted:
        def run(self, names: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            calls.append(len(feeds["empty"]))
            return decoder.run(names, feeds)

    monkeypatch.setattr(model, "_decoder", Counted())
    monkeypatch.setattr(onnx_runtime, "decoder_queries_per_call", lambda *shape: 8)

    def answers() -> np.ndarray:
        if not both_ways:
            return model.predict_queries(before, after)
        forward, asked, backward = model.predict_both_ways(before, after)
        assert asked.all()
        return np.concatenate([forward, backward])

    together = answers()
    assert calls == [3] * (2 if both_ways else 1)
    calls.clear()
    monkeypatch.setattr(onnx_runtime, "decoder_queries_per_call", lambda *shape: 2)
    monkeypatch.setattr(onnx_runtime, "BACKBONE_PIXELS", 2 * 64 * 96)  # 40 x 72, padded: 2 a call
    split = answers()
    assert calls == [2, 1] * (2 if both_ways else 1)
    assert split.shape == together.shape == (6 if both_ways else 3, 3, 40, 72)
    np.testing.assert_allclose(split, together, atol=2e-6)


def test_a_decoder_call_takes_one_calls_pixels_of_rows_and_at_least_one_query() -> None:
    per_call = onnx_runtime.decoder_queries_per_call
    assert per_call(4, 256, 256) == 1  # four pairs: a query per call
    assert per_call(2, 256, 256) == 2
    assert per_call(1, 128, 128) == onnx_runtime.CALL_PIXELS // (128 * 128)
    assert per_call(1, 1024, 1024) == 1  # always at least one


def test_torch_is_loaded_without_a_device_when_asked_or_for_other_weights(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(inference.load_checkpoint(exported, cache_dir=tmp_path), MTRefSegChangeModel)
    monkeypatch.setenv(inference.RUNTIME_VARIABLE, "torch")
    forced = inference.load_checkpoint(exported, cache_dir=tmp_path, device="cpu")
    assert isinstance(forced, MTRefSegChangeModel)
    monkeypatch.delenv(inference.RUNTIME_VARIABLE)
    retrained = tmp_path / "retrained"
    shutil.copytree(exported, retrained)
    manifest = retrained / onnx_runtime.SUBFOLDER / onnx_runtime.MANIFEST_FILE
    record = json.loads(manifest.read_text())
    record["weights_sha256"] = "0" * 64  # graphs of other weights
    manifest.write_text(json.dumps(record))
    assert onnx_runtime.graph_folder(retrained) is None
    stale = inference.load_checkpoint(retrained, cache_dir=tmp_path, device="cpu")
    assert isinstance(stale, MTRefSegChangeModel)
    older = tmp_path / "older"
    shutil.copytree(exported, older)
    manifest = older / onnx_runtime.SUBFOLDER / onnx_runtime.MANIFEST_FILE
    record = json.loads(manifest.read_text())
    record["format"] = "mtrs-onnx-1"  # one encoder graph: the backbone cannot be shared
    manifest.write_text(json.dumps(record))
    assert onnx_runtime.graph_folder(older) is None


def test_without_onnx_runtime_installed_the_cpu_runs_torch(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_runtime, "runtime_available", lambda: False)
    model = inference.load_checkpoint(exported, cache_dir=tmp_path, device="cpu")
    assert isinstance(model, MTRefSegChangeModel) and model.device == "cpu"


def test_graphs_that_name_the_weights_but_do_not_load_are_a_one_line_model_error(
    exported: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / onnx_runtime.SUBFOLDER / onnx_runtime.DECODER_FILE).write_bytes(b"not a graph")
    with pytest.raises(ModelError) as error:
        inference.load_checkpoint(broken, cache_dir=tmp_path, device="cpu")
    assert "\n" not in str(error.value) and "ONNX graphs" in str(error.value)


def test_a_model_in_onnx_runtime_runs_on_the_cpu_only(exported: Path, tmp_path: Path) -> None:
    model = inference.load_checkpoint(exported, cache_dir=tmp_path, device="cpu")
    assert model.to("cpu") is model and model.device == "cpu"
    with pytest.raises(Exception, match="CPU only"):
        model.to("cuda")


def test_the_bundled_checkpoint_ships_graphs_of_its_weights() -> None:
    assert onnx_runtime.graph_folder(inference.CHECKPOINT_DIR) is not None
    assert isinstance(load_model("mtrefseg-r1", device="cpu"), OnnxMTRefSegModel)


_RUN = """
import sys
from pathlib import Path
from mtrs_geo.config import DetectConfig
from mtrs_geo.pipeline import detect
before, after, out = (Path(a) for a in sys.argv[1:4])
detect(DetectConfig(before=before, after=after, query="new buildings", output=out,
                    model="mtrefseg-r1", device="cpu"))
print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""


def test_a_cpu_run_with_a_query_asked_before_imports_no_torch(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop(inference.RUNTIME_VARIABLE, None)
    imported = []
    for run in ("first", "again"):
        out = tmp_path / f"{run}.gpkg"
        done = subprocess.run(
            [sys.executable, "-c", _RUN, str(pair.before), str(pair.after), str(out)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.is_file()
        imported.append(done.stdout.strip().splitlines()[-1])
    # The new query is encoded by torch in a child process (mtrs_geo.models.torch_encode), then
    # it comes from the cache: the run itself imports neither torch nor transformers either time.
    assert imported == ["[]", "[]"]
    assert list((tmp_path / "cache" / "mtrs" / "query-embeddings").glob("*.safetensors"))
