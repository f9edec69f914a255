"""The engine's inference path: MTRefSeg-R1 without transformers, and encoded queries on disk."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_train.tiny_models import TINY_TEXT

from mtrs_geo.models import inference
from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1
from mtrs_geo.models.network import (
    CONFIG_KEYS,
    MTRefSegR1Network,
    load_network,
)
from mtrs_geo.models.query_cache import QueryCache, cached_embeds, default_cache_dir
from mtrs_geo.models.text import TextBranch

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    torch.manual_seed(0)
    MTRefSegR1(MTRefSegR1Config.from_size("tiny", cross_temporal_levels=[3])).save_pretrained(
        folder
    )
    return folder


def _tiles() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 64, 96, generator=gen), torch.rand(2, 3, 64, 96, generator=gen)


def test_the_config_keys_are_every_attribute_the_config_sets() -> None:
    config = MTRefSegR1Config.from_size("base").to_dict()
    own = set(inspect.signature(MTRefSegR1Config.__init__).parameters) - {"self", "kwargs"}
    assert set(CONFIG_KEYS) == own and set(CONFIG_KEYS) <= config.keys()


def test_the_network_without_transformers_gives_the_same_numbers(checkpoint: Path) -> None:
    network = MTRefSegR1Network.from_pretrained(checkpoint, local_files_only=True)
    reference = MTRefSegR1.from_pretrained(checkpoint, local_files_only=True)
    assert isinstance(network, MTRefSegR1Network) and not network.training
    assert network.state_dict().keys() == reference.state_dict().keys()
    before, after = _tiles()
    with torch.inference_mode():
        embeds = reference.encode_text(["new buildings", ""])
        for model in (network, reference):
            model.fuse_for_inference()
        answers = [
            model.decode(model.encode_pair(before, after), embeds).probabilities()
            for model in (network, reference)
        ]
        plain = [model(before, after).probabilities() for model in (network, reference)]
    assert torch.equal(answers[0], answers[1]) and torch.equal(plain[0], plain[1])
    assert not any(p.is_meta for p in network.parameters())


def test_a_folder_the_fast_loader_cannot_read_exactly_loads_through_transformers(
    checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    config = json.loads((checkpoint / "config.json").read_text())
    del config["aux_weight"]  # a config.json written by hand, without every attribute
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    assert MTRefSegR1Network.from_pretrained(folder) is None
    assert isinstance(load_network(folder), MTRefSegR1)
    assert isinstance(load_network(checkpoint), MTRefSegR1Network)
    with pytest.raises(ValueError, match="local"):
        MTRefSegR1Network.from_pretrained(checkpoint, local_files_only=False)


def test_a_query_asked_again_needs_no_text_encoder(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = inference.load_checkpoint(checkpoint, cache_dir=tmp_path)
    first.prepare_queries(["new buildings", "any change", "roads"])
    before, after = (t.numpy() for t in _tiles())
    expected = first.predict_queries(before, after)
    first.prepare("new buildings")
    single = first.predict(before, after)
    assert len(list((tmp_path / "query-embeddings").iterdir())) == 2

    def no_encoder(self: TextBranch, device: torch.device) -> None:
        raise AssertionError("the text encoder was loaded")

    monkeypatch.setattr(TextBranch, "text_model", no_encoder)
    again = inference.load_checkpoint(checkpoint, cache_dir=tmp_path)
    again.prepare_queries(["new buildings", "any change", "roads"])
    np.testing.assert_array_equal(again.predict_queries(before, after), expected)
    again.prepare("new buildings")
    np.testing.assert_array_equal(again.predict(before, after), single)
    again.prepare("any change")  # no encoder needed, nothing kept
    assert len(list((tmp_path / "query-embeddings").iterdir())) == 2
    with pytest.raises(AssertionError, match="encoder was loaded"):
        again.prepare("a query never asked")


def test_the_key_follows_the_encoder_files_and_the_exact_texts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"hidden_size": 8}))
    config = MTRefSegR1Config.from_size("tiny", text_model_path=str(encoder))
    branch = TextBranch(config, 16, 16)
    cache = QueryCache(tmp_path / "cache")
    key = cache.key(branch, ["roads"])
    assert key is not None and key == cache.key(branch, ["roads"])
    assert key != cache.key(branch, ["roads "]) and key != cache.key(branch, ["roads", "roads"])
    (encoder / "vocab.txt").write_text("changed")
    assert QueryCache(tmp_path / "cache").key(branch, ["roads"]) != key
    assert QueryCache(None).key(branch, ["roads"]) is None
    owned = TextBranch(MTRefSegR1Config.from_size("tiny", text_model_config=TINY_TEXT), 16, 16)
    assert cache.key(owned, ["roads"]) is None  # its weights are the checkpoint's
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "mtrs"


def test_an_unwritable_or_broken_cache_only_means_encoding_again(
    checkpoint: Path, tmp_path: Path
) -> None:
    model = MTRefSegR1Network.from_pretrained(checkpoint)
    assert model is not None
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    device = torch.device("cpu")
    cache = QueryCache(blocked)
    embeds = cached_embeds(cache, model.text, ["roads"], device)
    assert embeds.tokens.shape[0] == 1
    cache = QueryCache(tmp_path / "cache")
    cached_embeds(cache, model.text, ["roads"], device)
    key = cache.key(model.text, ["roads"])
    (tmp_path / "cache" / "query-embeddings" / f"{key}.safetensors").write_bytes(b"broken")
    assert cache.load(key) is None
    again = cached_embeds(cache, model.text, ["roads"], device)
    assert torch.equal(again.tokens, embeds.tokens)


@pytest.mark.slow
def test_a_repeated_query_runs_without_importing_transformers(
    checkpoint: Path, tmp_path: Path
) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from mtrs_geo.models.inference import load_checkpoint\n"
        f"model = load_checkpoint(Path({str(checkpoint)!r}), cache_dir=Path({str(tmp_path)!r}))\n"
        "model.prepare('new buildings')\n"
        "print(sorted(m for m in ('transformers', 'sympy', 'torch._dynamo') if m in sys.modules))\n"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    ]
    assert runs[0] != "[]" and runs[1] == "[]"
