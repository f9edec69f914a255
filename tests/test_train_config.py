from pathlib import Path

import pytest

from mtrs_geo.errors import InputError
from mtrs_geo.models.training.config import config_from_dict, dump_config, load_config
from mtrs_geo.models.training.loop import StreamSampler, lr_factor

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_parse_and_resolve_data_paths_against_their_folder(path: Path) -> None:
    config = load_config(path)
    assert config.stage in (1, 2) and config.data.train
    for source in config.data.train:
        for key in ("root", "before", "after", "labels"):
            if key in source:
                assert Path(source[key]).is_absolute()
    assert load_config(path) == config  # deterministic


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    config = config_from_dict(
        {"stage": 2, "data": {"train": [{"type": "mtrefseg", "root": "/d", "split": "RS/train"}]}}
    )
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


def test_unknown_keys_and_bad_values_are_input_errors() -> None:
    with pytest.raises(InputError, match="unknown key"):
        config_from_dict({"optim": {"learning_rate": 1e-3}})
    with pytest.raises(InputError, match="stage must be 1 or 2"):
        config_from_dict({"stage": 3})
    with pytest.raises(InputError, match="needs a type"):
        config_from_dict({"data": {"train": [{"root": "x"}]}})
    with pytest.raises(InputError, match="misregister must be a probability"):
        config_from_dict({"augment": {"misregister": 1.5}})


def test_ranks_read_disjoint_slices_and_every_epoch_visits_each_item_once() -> None:
    ranks = [StreamSampler(10, seed=1, batch_size=2, rank=r, world=2) for r in range(2)]
    streams = [[next(it) for _ in range(10)] for it in (iter(s) for s in ranks)]
    epoch0 = [k for stream in streams for k in stream if k[0] == 0]
    assert sorted(i for _, i in epoch0) == list(range(10))
    resumed = StreamSampler(10, seed=1, batch_size=2, start=3, rank=0, world=2)
    assert [next(iter(resumed)) for _ in range(1)][0] == streams[0][6]  # micro-batch 3, rank 0


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
