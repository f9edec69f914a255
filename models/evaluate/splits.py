"""Whole splits scored: by one model or a predictions folder, or by several models side by side.

:func:`evaluate_splits` scores one model spec or a predictions folder, :func:`benchmark` several
model specs over the same splits; :func:`write_report` writes the JSON and markdown report.

Each split goes to the evaluator of its layout: dataset chips (:mod:`.chips`), a predictions
folder (:mod:`.predictions`) or georeferenced scenes through the engine (:mod:`.scenes`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtrs_geo.errors import InputError
from mtrs_geo.models.evaluate.chips import evaluate_model, load_model_spec, open_split
from mtrs_geo.models.evaluate.guard import (
    check_predictions_folder,
    check_report_out,
    dataset_inputs,
)
from mtrs_geo.models.evaluate.predictions import evaluate_predictions
from mtrs_geo.models.evaluate.scenes import evaluate_scenes, is_scene_split
from mtrs_geo.models.metrics import markdown_table


def write_report(results: dict[str, Any], out: Path, table: str) -> tuple[Path, Path]:
    """Write the JSON report and its markdown table (``<out>.md``) atomically.

    Raises:
        InputError: ``out`` ends in ``.md`` (:func:`~.guard.check_report_out`).

    """
    from mtrs_geo.write import atomic_output

    out, markdown = check_report_out(out, ())
    with atomic_output(out) as partial:
        partial.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    with atomic_output(markdown) as partial:
        partial.write_text(table, encoding="utf-8")
    return out, markdown


def evaluate_splits(
    root: Path,
    splits: list[str],
    model: str | None = None,
    predictions: Path | None = None,
    input_size: int | None = 512,
    device: str = "cpu",
    save_predictions: Path | None = None,
    progress: bool = False,
    text_field: str | None = "query",
) -> tuple[dict[str, dict[str, float | int]], str]:
    """Score each split with a model spec or a predictions folder; return (results, markdown).

    Splits in the scenes layout (georeferenced ``before``/``after`` rasters and change polygons)
    run through the full engine (:func:`evaluate_scenes`); ``text_field`` names their query.

    With several splits, ``predictions`` and ``save_predictions`` hold one subfolder per split
    (named like the split); with one split they are used as they are.

    Raises:
        InputError: ``save_predictions`` is or holds an input of a split (its masks would be
            replaced: :func:`~.guard.check_predictions_folder`), checked before anything runs.

    """
    if (model is None) == (predictions is None):
        raise InputError("give exactly one of --model and --predictions")
    datasets = {s: None if is_scene_split(root, s) else open_split(root, s) for s in splits}
    if save_predictions is not None:
        inputs = [dataset_inputs(s, d).files for s, d in datasets.items() if d is not None]
        check_predictions_folder(save_predictions, [path for files in inputs for path in files])
    results: dict[str, dict[str, float | int]] = {}
    loaded = None
    for split, dataset in datasets.items():
        if dataset is None:
            if model is None:
                raise InputError(f"split {split!r} holds georeferenced scenes: use --model")
            results[split_name(root, split)] = evaluate_scenes(
                Path(root) / split, model, text_field, device
            )
            continue
        if loaded is None and model is not None:
            loaded = load_model_spec(model, device)
        sub = Path(split) if len(splits) > 1 else Path()
        if loaded is not None:
            results[split_name(root, split)] = evaluate_model(
                loaded[0],
                dataset,
                ignore_query=loaded[1],
                input_size=input_size,
                save_dir=None if save_predictions is None else save_predictions / sub,
                progress=progress,
            )
        else:
            assert predictions is not None
            results[split_name(root, split)] = evaluate_predictions(predictions / sub, dataset)
    return results, markdown_table(results)


def split_name(root: Path, split: str) -> str:
    """Name a split in reports: its path under the root, or the root's name for the root itself."""
    return Path(root).resolve().name if Path(split) == Path(".") else split


def split_label(entry: str) -> tuple[str, str]:
    """Split ``label=spec`` into a table label and a model spec (a plain spec is its own label)."""
    label, sep, spec = entry.partition("=")
    if sep and label and "/" not in label:
        return label, spec
    return entry, entry


def benchmark(
    root: Path,
    splits: list[str],
    models: list[str],
    input_size: int | None = 512,
    device: str = "cpu",
    progress: bool = False,
    text_field: str | None = "query",
) -> tuple[dict[str, dict[str, dict[str, float | int]]], str]:
    """Run every model spec over the same splits; return ``{model: {split: metrics}}``, a table."""
    results: dict[str, dict[str, dict[str, float | int]]] = {}
    rows: dict[str, dict[str, float | int]] = {}
    datasets = {s: None if is_scene_split(root, s) else open_split(root, s) for s in splits}
    for entry in models:
        label, spec = split_label(entry)
        model, ignore_query = load_model_spec(spec, device)
        results[label] = {}
        for split, dataset in datasets.items():
            if dataset is None:
                metrics = evaluate_scenes(Path(root) / split, spec, text_field, device)
            else:
                metrics = evaluate_model(
                    model, dataset, ignore_query, input_size, progress=progress
                )
            results[label][split_name(root, split)] = metrics
            rows[f"{label} / {split_name(root, split)}"] = metrics
    return results, markdown_table(rows, first_column="model / split")
