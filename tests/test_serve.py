"""``mtrs serve --stdio``: JSON lines in and out, one model cache, cancel, errors as events."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from scenes import make_pair

from mtrs_geo import model_api
from mtrs_geo.model_api import ChangeModel
from mtrs_geo.serve import ModelCache, Server, config_from_json


def answers(lines: list[dict[str, object]], models: ModelCache | None = None) -> list[dict]:
    stdin = io.StringIO("".join(json.dumps(line) + "\n" for line in lines))
    stdout = io.StringIO()
    assert Server(stdin, stdout, models).serve() == 0
    return [json.loads(line) for line in stdout.getvalue().splitlines()]


def test_two_runs_share_one_loaded_model_and_answer_with_their_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = make_pair(tmp_path / "pair")
    config = {
        "before": str(pair.before), "after": str(pair.after), "model": "cva", "tile_size": 64,
        "overlap": 8,
    }  # fmt: skip
    loads: list[str] = []
    cache = ModelCache()
    original = model_api.load_model

    def counting(name: str, device: str | None = None) -> ChangeModel:
        loads.append(name)
        return original(name, device=device)

    monkeypatch.setattr(model_api, "load_model", counting)
    events = answers(
        [
            {"id": "a", "op": "detect", "config": config | {"output": str(tmp_path / "a.fgb")}},
            {"id": "b", "op": "detect", "config": config | {"output": str(tmp_path / "b.fgb")}},
            {"id": "c", "op": "detect", "config": config | {"bands_before": [1, 9]}},
            {"id": "d", "op": "nonsense"},
        ],
        cache,
    )
    assert events[0] == {"event": "ready"}
    done = {e["id"]: e for e in events if e.get("event") in ("done", "error")}
    assert done["a"]["event"] == done["b"]["event"] == "done"
    assert done["a"]["polygons"] == done["b"]["polygons"] > 0
    assert done["b"]["first_tile_seconds"] is not None
    assert done["c"]["exit_code"] == 2 and "nothing to write" in done["c"]["message"]
    assert done["d"]["exit_code"] == 2 and "unknown request" in done["d"]["message"]
    assert loads == ["cva"]  # loaded once, reused by the second run
    starts = [e for e in events if e.get("event") == "start"]
    assert [e["id"] for e in starts] == ["a", "b"]


def test_requests_become_the_engine_config() -> None:
    config = config_from_json(
        {"before": "a.tif", "after": "b.tif", "bands_before": [3, 2, 1], "extent": [0, 0, 1, 1]}
    )
    assert config.before == Path("a.tif") and config.bands_before == (3, 2, 1)
    assert config.extent == (0, 0, 1, 1)


def test_a_cancel_that_comes_before_its_run_starts_still_cancels_it(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "pair")
    output = str(tmp_path / "c.fgb")
    config = {"before": str(pair.before), "after": str(pair.after), "output": output}
    events = answers(
        [
            {"id": "1", "op": "detect", "config": config},
            {"op": "cancel", "target": "1"},
        ]
    )
    (end,) = [e for e in events if e.get("event") in ("done", "error")]
    assert end["exit_code"] == 130 and not (tmp_path / "c.fgb").exists()


def test_the_warm_cache_loads_per_device_in_the_fastest_runtime_there() -> None:
    from mtrs_geo.models.onnx_runtime import OnnxMTRefSegModel

    cache = ModelCache()
    on_cpu = cache.on("cpu")
    model = on_cpu("mtrefseg-r1")
    assert isinstance(model, OnnxMTRefSegModel)  # the bundled checkpoint ships its graphs
    assert on_cpu("mtrefseg-r1") is model  # loaded once per device
    assert cache("mtrefseg-r1") is not model  # without a device: the torch model, as before
