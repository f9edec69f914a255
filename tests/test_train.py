import dataclasses
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from cli_run import run_mtrs
from click.testing import CliRunner
from fixtures_train.builders import make_change_folder, make_mtrefseg
from fixtures_train.tiny_models import TINY_TEXT

from mtrs_geo.cli.main import cli
from mtrs_geo.errors import InputError
from mtrs_geo.model_api import load_model
from mtrs_geo.models.evaluate import evaluate_model, open_split
from mtrs_geo.models.time_symmetric import reversed_query
from mtrs_geo.models.training.config import load_config
from mtrs_geo.models.training.loop import (
    STATE_FILE,
    _rng_state,
    _set_rng_state,
    latest_checkpoint,
    load_trainer_state,
    train,
)


def _config(path: Path, stage: int, train_source: dict, out: Path, **model: object) -> Path:
    values = {
        "stage": stage,
        "model": {"size": "tiny", "overrides": {"text_model_config": TINY_TEXT}, **model},
        "data": {"train": [train_source]},
        "augment": {"size": 32, "mode": "crop"},
        "optim": {"batch_size": 2, "max_steps": 3, "warmup_steps": 1, "lr": 1e-3},
        "run": {"out": str(out), "checkpoint_every": 1, "log_every": 1, "seed": 3},
    }
    path.write_text(yaml.safe_dump(values))
    return path


def test_stage1_then_stage2_saves_resumes_exactly_and_evaluates(tmp_path: Path) -> None:
    make_change_folder(tmp_path / "cd", size=(48, 48))
    make_mtrefseg(tmp_path / "mt", "train", size=(48, 48))
    make_mtrefseg(tmp_path / "mt", "val", size=(48, 48))

    # Stage 1 through the CLI, relative data path resolved against the YAML's folder.
    s1 = _config(tmp_path / "s1.yaml", 1, {"type": "change_folder", "root": "cd"}, tmp_path / "r1")
    result = CliRunner().invoke(cli, ["train", "-c", str(s1), "--quiet"])
    assert result.exit_code == 0, result.output
    stage1 = tmp_path / "r1" / "final"
    assert (stage1 / "config.json").is_file() and (stage1 / "config.yaml").is_file()
    checkpoint = latest_checkpoint(tmp_path / "r1")
    assert checkpoint is not None and checkpoint.name == "step_0000003"
    assert (checkpoint / STATE_FILE).is_file() and (checkpoint / "config.yaml").is_file()
    torch.load(checkpoint / STATE_FILE, weights_only=True)  # tensors and plain data only
    assert len((tmp_path / "r1" / "log.csv").read_text().splitlines()) == 4
    assert len(list((tmp_path / "r1" / "checkpoints").glob("step_*"))) == 2  # keep_checkpoints

    # Stage 2 from stage 1: an uninterrupted run, and one killed during step 2 then resumed.
    source = {"type": "mtrefseg", "root": "mt", "split": "train"}
    s2 = load_config(
        _config(tmp_path / "s2.yaml", 2, source, tmp_path / "r2", init_from=str(stage1))
    )
    # Gradient accumulation: two micro-batches of one per optimizer step.
    s2 = dataclasses.replace(s2, optim=dataclasses.replace(s2.optim, batch_size=1, accumulate=2))
    whole = train(s2, progress=False)
    killed_cfg = dataclasses.replace(s2, run=dataclasses.replace(s2.run, out=str(tmp_path / "r3")))
    killed = train(killed_cfg, progress=False, stop_after=2)  # no checkpoint for step 2
    assert killed.stopped_early and killed.final_dir is None
    resume_from = latest_checkpoint(tmp_path / "r3")
    assert resume_from is not None and resume_from.name == "step_0000001"
    resumed = train(killed_cfg, resume=resume_from, progress=False)
    assert [s for s, _ in resumed.losses] == [2, 3]
    assert resumed.losses == whole.losses[1:]  # same loss after resume as without the kill
    assert killed.losses == whole.losses[:2]

    assert whole.final_dir is not None
    model = load_model(str(whole.final_dir))
    metrics = evaluate_model(model, open_split(tmp_path / "mt", "val"), input_size=64)
    assert metrics["samples"] == 4 and 0.0 <= metrics["mIoU"] <= 100.0


def _draws() -> tuple[float, float, float, float]:
    return (
        random.random(),
        random.gauss(0, 1),
        float(np.random.standard_normal()),
        float(torch.rand(1)),
    )


def test_rng_states_are_plain_data_and_restore_exactly(tmp_path: Path) -> None:
    random.gauss(0, 1)  # leave a cached second Gaussian in Python's and NumPy's states
    np.random.standard_normal()
    state = _rng_state()
    expected = _draws()
    torch.save({"rng": [state]}, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)  # no pickled objects
    _draws()
    _set_rng_state(loaded["rng"][0])
    assert _draws() == expected


def _state(rng: dict) -> dict:
    return {
        "step": 1,
        "optimizer": {},
        "scheduler": {},
        "scaler": {},
        "rng": [rng],
        "trainable": [],
    }


def test_a_checkpoint_of_an_older_version_still_resumes(tmp_path: Path) -> None:
    old_rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    expected = _draws()
    torch.save(_state(old_rng), tmp_path / STATE_FILE)  # NumPy's key array pickled as an array
    _set_rng_state(load_trainer_state(tmp_path)["rng"][0])
    assert _draws() == expected


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path: Path) -> None:
    make_change_folder(tmp_path / "cd", size=(48, 48))
    config = _config(
        tmp_path / "s1.yaml", 1, {"type": "change_folder", "root": "cd"}, tmp_path / "r"
    )
    crafted = tmp_path / "r" / "checkpoints" / "step_0000001"
    crafted.mkdir(parents=True)
    marker = tmp_path / "code_ran"
    state = _state(_rng_state())
    state["scaler"] = _RunsCode(marker)
    torch.save(state, crafted / STATE_FILE)
    result = run_mtrs("train", "-c", config, "--resume", crafted, "--quiet")
    assert result.code == 2 and not marker.exists()
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert "mkdir" in result.err and "refusing to load" in result.err
    for broken, message in (
        (b"not a checkpoint", "refusing to load"),
        (b"", "empty or truncated"),
        (b"PK\x03\x04 damaged", "cannot read"),
    ):
        (crafted / STATE_FILE).write_bytes(broken)
        with pytest.raises(InputError, match=message):
            load_trainer_state(crafted)
    torch.save([1, 2], crafted / STATE_FILE)
    with pytest.raises(InputError, match="not an mtrs trainer state"):
        load_trainer_state(crafted)


def test_a_continuation_takes_setting_overrides_over_its_checkpoint(tmp_path: Path) -> None:
    from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
    from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1
    from mtrs_geo.models.training.loop import build_network

    start = tmp_path / "start"
    MTRefSegR1(MTRefSegR1Config.from_size("tiny", text_model_config=TINY_TEXT)).save_pretrained(
        start
    )
    source = {"type": "change_folder", "root": "cd"}
    overrides = {"text_model_config": TINY_TEXT, "dice_weight": 2.5}
    path = _config(tmp_path / "c.yaml", 2, source, tmp_path / "r", init_from=str(start),
                   overrides=overrides)  # fmt: skip
    assert build_network(load_config(path)).config.dice_weight == 2.5
    bad = _config(tmp_path / "bad.yaml", 2, source, tmp_path / "r", init_from=str(start),
                  overrides={"dice_wieght": 2.5})  # fmt: skip
    with pytest.raises(InputError, match="dice_wieght"):
        build_network(load_config(bad))


def test_the_distillation_term_is_least_where_the_student_says_what_the_teacher_says() -> None:
    from mtrs_geo.models.losses import distillation_loss

    teacher = torch.tensor([[[4.0, -4.0], [-4.0, 4.0]]])
    presence = torch.tensor([3.0])
    same = distillation_loss(teacher.clone(), presence.clone(), teacher, presence)
    opposite = distillation_loss(-teacher, -presence, teacher, presence)
    unsure = distillation_loss(torch.zeros_like(teacher), torch.zeros(1), teacher, presence)
    assert same < unsure < opposite
    student = torch.zeros_like(teacher, requires_grad=True)
    distillation_loss(student, torch.zeros(1), teacher, presence).backward()
    assert student.grad is not None and (student.grad.sign() == -teacher.sign()).all()


def test_a_run_with_a_teacher_learns_from_it_and_a_missing_teacher_is_an_input_error(
    tmp_path: Path,
) -> None:
    from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
    from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1

    make_change_folder(tmp_path / "cd", size=(48, 48))
    start = tmp_path / "start"
    torch.manual_seed(0)
    MTRefSegR1(MTRefSegR1Config.from_size("tiny", text_model_config=TINY_TEXT)).save_pretrained(
        start
    )
    source = {"type": "change_folder", "root": "cd"}
    plain = load_config(_config(tmp_path / "p.yaml", 2, source, tmp_path / "rp",
                                init_from=str(start)))  # fmt: skip
    taught_path = _config(tmp_path / "t.yaml", 2, source, tmp_path / "rt",
                          init_from=str(start), teacher="start", distill_weight=2.0)  # fmt: skip
    taught = load_config(taught_path)
    assert taught.model.teacher == str(start)  # relative to the YAML's folder
    without, with_teacher = train(plain, progress=False), train(taught, progress=False)
    # Same data, same start: the teacher's term adds to every step's loss.
    assert all(b > a for (_, a), (_, b) in zip(without.losses, with_teacher.losses, strict=True))
    # The command line names a teacher for a config without one; the run folder keeps it.
    plain_path = tmp_path / "p.yaml"
    result = CliRunner().invoke(
        cli, ["train", "-c", str(plain_path), "--teacher", str(start), "--out",
              str(tmp_path / "rc"), "--max-steps", "1", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    kept = yaml.safe_load((tmp_path / "rc" / "config.yaml").read_text())
    assert kept["model"]["teacher"] == str(start)
    missing = load_config(_config(tmp_path / "m.yaml", 2, source, tmp_path / "rm",
                                  init_from=str(start), teacher="nowhere"))  # fmt: skip
    with pytest.raises(InputError, match="teacher"):
        train(missing, progress=False)
    negative = _config(tmp_path / "n.yaml", 2, source, tmp_path / "rn",
                       init_from=str(start), teacher="start", distill_weight=-1.0)  # fmt: skip
    with pytest.raises(InputError, match="distill_weight"):
        load_config(negative)


def test_a_teacher_asked_both_ways_answers_the_reversed_queries_of_the_reversed_pairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtrs_geo.models.configuration_mtrefseg import MTRefSegR1Config
    from mtrs_geo.models.modeling_mtrefseg import MTRefSegR1
    from mtrs_geo.models.training import loop

    make_mtrefseg(tmp_path / "mt", "train", size=(48, 48))  # "new buildings", "vanished trees"...
    start = tmp_path / "start"
    torch.manual_seed(0)
    MTRefSegR1(MTRefSegR1Config.from_size("tiny", text_model_config=TINY_TEXT)).save_pretrained(
        start
    )
    asked: list[tuple[list[str], torch.Tensor, torch.Tensor]] = []
    build = loop.Trainer._build_teacher

    def recording(self: loop.Trainer) -> torch.nn.Module | None:
        teacher = build(self)
        assert teacher is not None
        forward = teacher.forward

        def answer(before: torch.Tensor, after: torch.Tensor, **kwargs: Any) -> Any:
            asked.append((list(kwargs["texts"]), before.clone(), after.clone()))
            return forward(before, after, **kwargs)

        teacher.forward = answer  # type: ignore[method-assign]
        return teacher

    monkeypatch.setattr(loop.Trainer, "_build_teacher", recording)
    source = {"type": "mtrefseg", "root": "mt", "split": "train"}
    both_ways = load_config(_config(tmp_path / "b.yaml", 2, source, tmp_path / "rb",
                                    init_from=str(start), teacher="start",
                                    teacher_both_ways=True))  # fmt: skip
    train(both_ways, progress=False)
    assert len(asked) == 6  # three steps, each: the batch, then its reversed pairs
    for (texts, before, after), (reverse, back_before, back_after) in zip(
        asked[::2], asked[1::2], strict=True
    ):
        assert reverse == [reversed_query(text) for text in texts]  # every fixture query has one
        assert torch.equal(back_before, after) and torch.equal(back_after, before)
    alone = _config(tmp_path / "c.yaml", 2, source, tmp_path / "rc", teacher_both_ways=True)
    with pytest.raises(InputError, match="teacher_both_ways"):
        load_config(alone)
