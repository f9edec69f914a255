"""Checks made before an evaluation scores anything: no input overwritten, no training data scored.

- :func:`split_inputs`: every file a split is read from, and its items as ``(real path, scene)``;
- :func:`check_report_out`: the JSON report and its ``.md`` table are two new names, neither an
  input (by path, symbolic or hard link);
- :func:`check_predictions_folder`: a ``--save-predictions`` folder neither is nor holds an input;
- :func:`check_not_trained_on`: a checkpoint is not scored on the scenes it was trained on
  (:mod:`mtrs_geo.models.training.record`);
- :func:`check_evaluation`: all of them, for ``mtrs evaluate`` and ``mtrs benchmark``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from mtrs_geo.config import checkpoint_folder, file_key
from mtrs_geo.errors import InputError
from mtrs_geo.layouts import scene_files, scene_folders
from mtrs_geo.models.data.change_folders import ChangeFolderDataset, OSCDCityDataset
from mtrs_geo.models.data.mtrefseg import EXPRESSION_DIR, MTRefSegDataset
from mtrs_geo.models.data.sample import Sample
from mtrs_geo.models.evaluate.chips import open_split, parse_model_spec
from mtrs_geo.models.evaluate.scenes import is_scene_split
from mtrs_geo.models.training.record import read_training_record, scene_of_file, trained_items

REPORT_TABLE_SUFFIX = ".md"
ALLOW_FLAG = "--allow-training-data"


@dataclass(frozen=True)
class SplitInputs:
    """What one evaluated split reads: its files, and its items as ``(real path, scene)``."""

    split: str
    files: tuple[Path, ...]
    items: tuple[tuple[Path, str], ...]


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def folder_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (none when it is not a folder)."""
    return [p for p in Path(folder).rglob("*") if p.is_file()] if Path(folder).is_dir() else []


def dataset_inputs(split: str, dataset: Dataset[Sample]) -> SplitInputs:
    """Return the inputs of an opened dataset split (MTRefSeg, ``A/ B/ label/``, OSCD cities)."""
    files: list[Path] = []
    items: list[tuple[Path, str]] = []
    if isinstance(dataset, MTRefSegDataset):
        files += sorted((Path(dataset.root) / dataset.split / EXPRESSION_DIR).glob("*.json"))
        for record in dataset.records:
            files += [record.image_a, record.image_b, *([record.mask] if record.mask else [])]
            items.append((_real(record.image_a), scene_of_file(record.image_a)))
    elif isinstance(dataset, ChangeFolderDataset):
        for pair in dataset.pairs:
            files += [pair.before, pair.after, pair.label]
            items.append((_real(pair.before), scene_of_file(pair.before)))
    elif isinstance(dataset, OSCDCityDataset):
        for city in dataset.cities:
            files += folder_files(Path(dataset.root) / city)
            items.append((_real(Path(dataset.root) / city), city))
    return SplitInputs(split, tuple(files), tuple(dict.fromkeys(items)))


def split_inputs(root: Path, split: str) -> SplitInputs:
    """Open a split (any layout :func:`evaluate_splits` scores) and return its inputs."""
    if not is_scene_split(root, split):
        return dataset_inputs(split, open_split(root, split))
    files: list[Path] = []
    items: list[tuple[Path, str]] = []
    for scene in scene_folders(Path(root) / split):
        files += folder_files(scene)
        found = scene_files(scene)
        items += [(_real(found[0]), scene.name)] if found is not None else []
    return SplitInputs(split, tuple(files), tuple(items))


def _overwritten(paths: Iterable[Path], inputs: Iterable[Path]) -> tuple[Path, Path] | None:
    """Return ``(path, input)`` where writing a path would replace an input file, else None.

    Files are compared by device and inode: a symbolic or hard link to an input is that input.
    """
    existing = {file_key(path): path for path in paths if path.exists()}
    if not existing:
        return None
    for source in inputs:
        key = file_key(source)
        if key in existing:
            return existing[key], source
    return None


def check_report_out(out: Path, inputs: Sequence[Path]) -> tuple[Path, Path]:
    """Return the report's two names (``out`` and ``out`` with ``.md``): distinct, neither an input.

    Raises:
        InputError: ``out`` ends in ``.md`` (the table would replace the report), its folder does
            not exist, or either name is an input of the evaluation (the dataset's JSON, images,
            masks, a predictions folder's files, the model's files).

    """
    out = Path(out)
    if out.suffix.lower() == REPORT_TABLE_SUFFIX:
        raise InputError(
            f"--out {out}: the JSON report cannot end in .md, its markdown table is written "
            f"beside it as <name>.md (give e.g. {out.with_suffix('.json')})"
        )
    if not out.parent.is_dir():  # found now, not after the scoring
        raise InputError(f"output folder does not exist: {out.parent}")
    table = out.with_suffix(REPORT_TABLE_SUFFIX)
    clash = _overwritten((out, table), inputs)
    if clash is not None:
        written, source = clash
        what = "the report" if written == out else f"its table {written}"
        same = "" if written == source else f" (the same file as {source})"
        raise InputError(
            f"--out {out}: {what} would replace an input of the evaluation{same}; choose "
            "another name"
        )
    return out, table


def check_predictions_folder(folder: Path, inputs: Sequence[Path]) -> None:
    """Refuse a ``--save-predictions`` folder that is, or holds, an input of the evaluation.

    Predictions are ``<json stem>_<index>.png``, the names of MTRefSeg masks: written into the
    masks' folder they would replace the ground truth.
    """
    inside = _real(Path(folder))
    for source in inputs:
        if _real(source).is_relative_to(inside) or Path(os.path.abspath(source)).is_relative_to(
            Path(os.path.abspath(folder))
        ):
            raise InputError(
                f"--save-predictions {folder} holds {source}, an input of the evaluation: "
                "choose a folder of its own"
            )


def _model_folder(spec: str) -> Path | None:
    """Return the checkpoint folder a model spec reads (``label=``, ``@any`` taken off), if any."""
    from mtrs_geo.models.evaluate.splits import split_label

    return checkpoint_folder(parse_model_spec(split_label(spec)[1])[0])


def check_not_trained_on(
    spec: str, splits: Sequence[SplitInputs], root: Path, allow: bool = False
) -> list[str]:
    """Refuse to score ``spec`` on a split holding scenes it was trained on; return notes.

    The notes say what could not be checked (a checkpoint without any record of its data, a
    starting checkpoint without one). With ``allow`` the overlap becomes a note.

    Raises:
        InputError: one line naming the split, the training source and how many items overlap.

    """
    folder = _model_folder(spec)
    if folder is None:
        return []  # no checkpoint (cva): trained on nothing
    record = read_training_record(folder)
    if record is None:
        return [
            f"cannot check {spec} against its training data: {folder} keeps no readable record "
            "of it (training_data.json or the run's config.yaml)"
        ]
    notes = [
        f"{spec} starts from {start}, which keeps no record of its training data: not checked "
        "against it"
        for start in record.get("unknown", [])
    ]
    for inputs in splits:
        hits, source = trained_items(record, inputs.items)
        if not hits or source is None:
            continue
        where = source.get("folder") or ", ".join(source.get("files", []))
        shown = Path(inputs.split) if inputs.split != "." else Path(root)
        scenes = ", ".join(sorted({scene for _, scene in hits})[:3])
        overlap = (
            f"{len(hits)} of {len(inputs.items)} image pairs of split {str(shown)!r} are from "
            f"scenes {spec} was trained on ({source['type']} {where}; e.g. {scenes})"
        )
        if not allow:
            raise InputError(
                f"{overlap}: scores there are not held-out scores",
                cli_hint=f"{ALLOW_FLAG} scores them anyway",
            )
        notes.append(f"{overlap}; scored anyway ({ALLOW_FLAG})")
    return notes


def check_evaluation(
    root: Path,
    splits: Sequence[str],
    models: Sequence[str] = (),
    predictions: Path | None = None,
    save_predictions: Path | None = None,
    out: Path | None = None,
    allow_training_data: bool = False,
) -> list[str]:
    """Make every check of an evaluation before anything is scored or written; return notes.

    Raises:
        InputError: see :func:`check_report_out`, :func:`check_predictions_folder` and
            :func:`check_not_trained_on`.

    """
    opened = [split_inputs(root, split) for split in splits]
    inputs = [path for split in opened for path in split.files]
    if predictions is not None:
        inputs += folder_files(predictions)
    for spec in models:
        folder = _model_folder(spec)
        inputs += folder_files(folder) if folder is not None else []
    if out is not None:
        check_report_out(out, inputs)
    if save_predictions is not None:
        check_predictions_folder(save_predictions, inputs)
    notes: list[str] = []
    for spec in models:
        notes += check_not_trained_on(spec, opened, root, allow_training_data)
    return notes
