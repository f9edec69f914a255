"""A loaded checkpoint keeps its weights when its folder is written again while it runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1
from mtrs_geo.models.network import MTRefSegR1Network

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _save(folder: Path, seed: int) -> None:
    torch.manual_seed(seed)
    MTRefSegR1(MTRefSegR1Config.from_size("tiny")).save_pretrained(folder)


@pytest.mark.parametrize(
    "load",
    [
        lambda folder: MTRefSegR1.from_pretrained(folder, local_files_only=True),
        MTRefSegR1Network.from_pretrained,  # the engine's loader
    ],
    ids=["transformers", "network"],
)
def test_weights_do_not_change_when_the_file_is_overwritten_in_place(
    tmp_path: Path, load: object
) -> None:
    _save(tmp_path / "running", seed=0)
    _save(tmp_path / "retrained", seed=1)
    model = load(tmp_path / "running")  # type: ignore[operator]
    weights = {name: value.detach().clone() for name, value in model.state_dict().items()}
    # What shutil.copyfile does: the same file (inode) truncated and written again.
    shutil.copyfile(
        tmp_path / "retrained" / "model.safetensors", tmp_path / "running" / "model.safetensors"
    )
    changed = [
        name for name, value in model.state_dict().items() if not torch.equal(value, weights[name])
    ]
    assert changed == []
    retrained = load(tmp_path / "running")  # type: ignore[operator]
    assert any(
        not torch.equal(value, weights[name]) for name, value in retrained.state_dict().items()
    )
