"""Tiny run configurations for ``mtrs train``: the tiny model, 32 px crops, a few steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fixtures_train.tiny_models import TINY_TEXT


def write_run_config(
    path: Path, source: dict[str, Any], out: Path, stage: int = 1, **sections: dict[str, Any]
) -> Path:
    """Write a YAML run of the tiny model on ``source`` into ``out``; ``sections`` update it.

    Defaults: batch 2, 3 steps, warm-up 2, lr 1e-3, a checkpoint and a log row every step.
    """
    values: dict[str, Any] = {
        "stage": stage,
        "model": {"size": "tiny", "overrides": {"text_model_config": TINY_TEXT}},
        "data": {"train": [source]},
        "augment": {"size": 32, "mode": "crop"},
        "optim": {"batch_size": 2, "max_steps": 3, "warmup_steps": 2, "lr": 1e-3},
        "run": {"out": str(out), "checkpoint_every": 1, "log_every": 1, "seed": 3},
    }
    for name, changes in sections.items():
        values[name] = {**values[name], **changes}
    path.write_text(yaml.safe_dump(values))
    return path
