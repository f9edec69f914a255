import dataclasses
from pathlib import Path

import yaml
from click.testing import CliRunner
from fixtures_train.builders import make_change_folder, make_mtrefseg

from mtrs_geo.cli.main import cli
from mtrs_geo.model_api import load_model
from mtrs_geo.models.evaluate import evaluate_model, open_split
from mtrs_geo.models.training.config import load_config
from mtrs_geo.models.training.loop import STATE_FILE, latest_checkpoint, train

# A one-layer random text encoder (the MiniLM tokenizer): keeps the test fast.
TINY_TEXT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 30522,
}


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
