"""``mtrs train``, ``evaluate``, ``benchmark``: thin click shells over :mod:`mtrs_geo.models`.

The work happens in :mod:`mtrs_geo.models.training.loop` (``train`` runs a ``Trainer``) and
:mod:`mtrs_geo.models.evaluate`. This module applies the command-line overrides to the YAML run
configuration (``--out``, ``--stage``, ``--init-from``, ``--teacher``, ``--max-steps``,
``--max-time``, ``--device``, ``--seed``), resolves ``--resume auto`` to the run's latest
checkpoint, picks the splits to score, makes the checks of :mod:`mtrs_geo.models.evaluate.guard`
before scoring (no input overwritten, no checkpoint scored on its training data), and prints the
results (under ``torchrun``, rank 0 only).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import click

from mtrs_geo.errors import InputError

DEFAULT_BENCHMARK_MODELS = ("cva", "mtrefseg-r1@any", "mtrefseg-r1", "mtrefseg-r1-both-ways")


def _input_size(value: int) -> int | None:
    return None if value <= 0 else value


# Options evaluate and benchmark share.
INPUT_SIZE = click.option(
    "--input-size",
    type=click.IntRange(min=0),
    default=512,
    show_default=True,
    help="Model input side in pixels (0: native size); scores are at the ground truth's size.",
)
DEVICE = click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N, auto.")
TEXT_FIELD = click.option(
    "--text-field",
    default="query",
    show_default=True,
    help="Scenes layout: the polygon attribute holding the query.",
)
ALLOW_TRAINING_DATA = click.option(
    "--allow-training-data",
    is_flag=True,
    help="Score a checkpoint even on scenes it was trained on (refused by default; the overlap "
    "is printed).",
)


def _print_notes(notes: list[str]) -> None:
    """Print what the checks before an evaluation could not check (or let through)."""
    for note in notes:
        click.echo(f"Note: {note}", err=True)


def _table_with_notes(table: str, notes: list[str]) -> str:
    """Return the report's markdown table followed by the checks' notes."""
    return table + "".join(f"\nNote: {note}\n" for note in notes)


def _splits(root: Path, given: tuple[str, ...]) -> list[str]:
    """Return the splits to score: those given, else every MTRefSeg split found, else the root."""
    if given:
        return list(given)
    from mtrs_geo.models.data.mtrefseg import list_splits

    found = list_splits(root)
    return found or ["."]


@click.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="YAML run configuration (see configs/).",
)
@click.option("--stage", type=click.IntRange(1, 2), help="Override the config's stage.")
@click.option("--out", type=click.Path(file_okay=False), help="Override run.out (run folder).")
@click.option(
    "--init-from",
    type=click.Path(exists=True, file_okay=False),
    help="Start from this checkpoint folder (stage 2: the stage-1 result, <out>/final).",
)
@click.option(
    "--teacher",
    type=click.Path(exists=True, file_okay=False),
    help="Also learn this checkpoint's masks (distillation; weight: model.distill_weight).",
)
@click.option(
    "--resume",
    help="Continue from a checkpoint folder (<out>/checkpoints/step_N) or 'auto' (the latest).",
)
@click.option("--max-steps", type=click.IntRange(min=1), help="Override optim.max_steps.")
@click.option(
    "--max-time",
    type=click.FloatRange(min=0, min_open=True),
    help="Override run.max_time (seconds > 0; saves, then stops).",
)
@click.option("--device", help="Override run.device (auto, cpu, cuda, cuda:N, mps).")
@click.option("--seed", type=int, help="Override run.seed.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(
    config_path: Path,
    stage: int | None,
    out: str | None,
    init_from: str | None,
    teacher: str | None,
    resume: str | None,
    max_steps: int | None,
    max_time: float | None,
    device: str | None,
    seed: int | None,
    quiet: bool,
) -> None:
    r"""Train MTRefSeg-R1: stage 1 (any change) or stage 2 (referring) as the config says.

    \b
    Examples:
        mtrs train -c configs/stage1_change_folders.yaml --out runs/s1
        mtrs train -c configs/stage2_mtrefseg21k.yaml --init-from runs/s1/final --out runs/s2
        mtrs train -c configs/stage2_mtrefseg21k.yaml --out runs/s2 --resume auto
        torchrun --nproc_per_node 4 -m mtrs_geo.cli.main train -c run.yaml
    """
    from mtrs_geo.models.training.config import check_config, load_config
    from mtrs_geo.models.training.loop import latest_checkpoint
    from mtrs_geo.models.training.loop import train as run_training

    config = load_config(config_path)
    run_changes: dict[str, Any] = {}
    if out is not None:
        run_changes["out"] = out
    if max_time is not None:
        run_changes["max_time"] = max_time
    if device is not None:
        run_changes["device"] = device
    if seed is not None:
        run_changes["seed"] = seed
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, **run_changes))
    if stage is not None:
        config = dataclasses.replace(config, stage=stage)
    if init_from is not None:
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, init_from=os.path.abspath(init_from))
        )
    if teacher is not None:
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, teacher=os.path.abspath(teacher))
        )
    if max_steps is not None:
        config = dataclasses.replace(
            config, optim=dataclasses.replace(config.optim, max_steps=max_steps)
        )
    check_config(config)
    checkpoint: Path | None = None
    if resume == "auto":
        checkpoint = latest_checkpoint(Path(config.run.out))
        if checkpoint is None:
            click.echo(f"No checkpoint in {config.run.out}: starting fresh.", err=True)
    elif resume:
        checkpoint = Path(resume)
    result = run_training(
        config,
        resume=checkpoint,
        progress=not quiet and sys.stderr.isatty(),
        restart_unfinished=resume == "auto",
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 reports
    last = f"{result.losses[-1][1]:.4f}" if result.losses else "-"
    click.echo(
        f"Stage {config.stage}: {result.steps} steps in {result.seconds:.0f} s, last loss {last}"
        + (" (stopped early: time cap or SIGTERM)" if result.stopped_early else "")
    )
    if result.final_dir is not None:
        click.echo(f"Model: {result.final_dir}")
    for name, metrics in result.metrics.items():
        click.echo(f"  {name}: mIoU {metrics['mIoU']:.2f}  oIoU {metrics['oIoU']:.2f}")


@click.command()
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--split",
    "splits",
    multiple=True,
    help="Split to score (path under DATASET_DIR; repeatable). Default: every split found.",
)
@click.option(
    "--model", help="Model: cva, mtrefseg-r1, a checkpoint folder; '@any' ignores the query."
)
@click.option(
    "--predictions",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of predicted masks <json stem>_<expression index>.png (one subfolder per split "
    "when several splits are scored).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="JSON report, not ending in .md (the markdown table goes beside it as <name>.md).",
)
@INPUT_SIZE
@DEVICE
@click.option(
    "--save-predictions",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write the model's predictions as 8-bit PNG (probability x 255), into a folder "
    "that holds no input of the evaluation.",
)
@TEXT_FIELD
@ALLOW_TRAINING_DATA
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate(
    dataset_dir: Path,
    splits: tuple[str, ...],
    model: str | None,
    predictions: Path | None,
    out: Path,
    input_size: int,
    device: str,
    save_predictions: Path | None,
    text_field: str,
    allow_training_data: bool,
    quiet: bool,
) -> None:
    r"""Score a model or a folder of predictions on dataset splits: mIoU, oIoU, Pr@50-90, counts.

    \b
    A split is a folder in the MTRefSeg-21K layout, an A/ B/ label/ folder (any change), OSCD
    city folders, or georeferenced scenes (<scene>/before.tif, after.tif and one polygon file
    whose --text-field attribute holds the query), which run through the full engine.

    \b
    Examples:
        mtrs evaluate data/MTRefSeg-21K --split RS/val --model mtrefseg-r1 --out rs_val.json
        mtrs evaluate data/MTRefSeg-21K --split val --predictions preds/ --out ext.json
        mtrs evaluate data/regions --split val_scenes --model mtrefseg-r1 --out geo.json
    """
    from mtrs_geo.models.evaluate import evaluate_splits, write_report
    from mtrs_geo.models.evaluate.guard import check_evaluation

    if (model is None) == (predictions is None):
        raise InputError("give exactly one of --model and --predictions")
    names = _splits(dataset_dir, splits)
    notes = check_evaluation(
        dataset_dir,
        names,
        models=[model] if model is not None else [],
        predictions=predictions,
        save_predictions=save_predictions,
        out=out,
        allow_training_data=allow_training_data,
    )
    _print_notes(notes)
    results, table = evaluate_splits(
        dataset_dir,
        names,
        model=model,
        predictions=predictions,
        input_size=_input_size(input_size),
        device=device,
        save_predictions=save_predictions,
        progress=not quiet and sys.stderr.isatty(),
        text_field=text_field,
    )
    report = {
        "dataset": str(dataset_dir),
        "source": model if model is not None else str(predictions),
        "splits": results,
        "notes": notes,
    }
    json_path, md_path = write_report(report, out, _table_with_notes(table, notes))
    click.echo(table, nl=False)
    click.echo(f"Wrote {json_path} and {md_path}")


@click.command()
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", "splits", multiple=True, help="Split (repeatable; default: all found).")
@click.option(
    "--model",
    "models",
    multiple=True,
    help="Model spec (repeatable): cva, mtrefseg-r1, a checkpoint folder, any of them + '@any'. "
    "Default: cva, mtrefseg-r1@any (stage-1 mode, query ignored), mtrefseg-r1, "
    "mtrefseg-r1-both-ways (the engine's default).",
)
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="Extra checkpoint folder to add to the models (repeatable).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="JSON board, not ending in .md (the markdown table goes beside it as <name>.md).",
)
@INPUT_SIZE
@DEVICE
@TEXT_FIELD
@ALLOW_TRAINING_DATA
@click.option("--quiet", is_flag=True, help="No progress bar.")
def benchmark(
    dataset_dir: Path,
    splits: tuple[str, ...],
    models: tuple[str, ...],
    checkpoints: tuple[str, ...],
    out: Path,
    input_size: int,
    device: str,
    text_field: str,
    allow_training_data: bool,
    quiet: bool,
) -> None:
    r"""Run several models over the same splits and write one leaderboard table.

    \b
    Example:
        mtrs benchmark data/mtrs-real --split val --checkpoint runs/s2/final --out board.json
    """
    from mtrs_geo.models.evaluate import benchmark as run_benchmark
    from mtrs_geo.models.evaluate import write_report
    from mtrs_geo.models.evaluate.guard import check_evaluation

    specs = list(models or DEFAULT_BENCHMARK_MODELS) + list(checkpoints)
    names = _splits(dataset_dir, splits)
    notes = check_evaluation(
        dataset_dir, names, models=specs, out=out, allow_training_data=allow_training_data
    )
    _print_notes(notes)
    results, table = run_benchmark(
        dataset_dir,
        names,
        specs,
        input_size=_input_size(input_size),
        device=device,
        progress=not quiet and sys.stderr.isatty(),
        text_field=text_field,
    )
    report = {"dataset": str(dataset_dir), "splits": names, "models": results, "notes": notes}
    json_path, md_path = write_report(report, out, _table_with_notes(table, notes))
    click.echo(table, nl=False)
    click.echo(f"Wrote {json_path} and {md_path}")
