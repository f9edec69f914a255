import dataclasses
from pathlib import Path

import pytest
import yaml

from mtrs_geo.errors import InputError
from mtrs_geo.models.training.config import (
    check_config,
    config_from_dict,
    dump_config,
    load_config,
)
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


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("optim", {"lr": -1.0}, "optim.lr must be a number > 0, got -1.0"),
        ("optim", {"lr": "abc"}, "optim.lr must be a number > 0, got 'abc'"),
        ("optim", {"lr": "abc1"}, "optim.lr must be a number > 0"),
        ("optim", {"warmup_steps": -3}, "optim.warmup_steps must be a whole number >= 0"),
        ("optim", {"max_steps": 2.5}, "optim.max_steps must be a whole number >= 1, got 2.5"),
        ("optim", {"batch_size": 0}, "optim.batch_size must be a whole number >= 1"),
        ("model", {"size": "huge"}, "model.size must be one of tiny, base, large, got 'huge'"),
        ("augment", {"size": 0}, "augment.size must be a whole number >= 1, got 0"),
        ("augment", {"hflip": 2}, "augment.hflip must be a number >= 0 and <= 1"),
        ("run", {"checkpoint_every": 0}, "run.checkpoint_every must be a whole number >= 1"),
        ("run", {"max_time": -5}, r"run.max_time \(seconds\) must be a number > 0"),
        ("run", {"seed": -1}, "run.seed must be a whole number >= 0"),
    ],
)
def test_a_bad_value_is_a_one_line_input_error_when_the_config_is_read(
    tmp_path: Path, section: str, values: dict, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({section: values}))
    with pytest.raises(InputError, match=message) as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


def test_a_learning_rate_in_e_notation_is_a_number_and_in_quotes_is_named_text(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lr.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  warmup_steps: 10\n")
    config = load_config(path)
    assert config.optim.lr == pytest.approx(0.001) and config.optim.warmup_steps == 10
    path.write_text('optim:\n  lr: "1e-3"\n')
    with pytest.raises(InputError, match="a number in quotes is text"):
        load_config(path)


def test_a_config_with_broken_yaml_is_named_on_one_line_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("stage: [\n")
    with pytest.raises(InputError, match=r"broken.yaml: YAML syntax error at line 2") as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


def test_overrides_after_reading_are_checked_too() -> None:
    config = config_from_dict({})
    capped = dataclasses.replace(config, run=dataclasses.replace(config.run, max_time=-5.0))
    with pytest.raises(InputError, match="run.max_time"):
        check_config(capped)
