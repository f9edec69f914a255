"""What a checkpoint was trained on: a small record beside its weights (``training_data.json``).

``mtrs train`` writes the record into every model folder it saves (``final/`` and
``checkpoints/step_<n>/model/``)::

    {"sources": [{"type": "change_folder", "folder": "/data/levir-cd", "scenes": ["test_2", ...]},
                 {"type": "mtrefseg", "folder": "/data/crafted/train", "scenes": null},
                 {"type": "craft_stream", "folder": "/data", "split": "train", "scenes": null},
                 {"type": "geo_scene", "files": ["/data/a/before.tif", ...]}],
     "unknown": ["/models/imported"]}

One entry per training source, with real (symlink-free) paths: the folder its items come from and,
when the source picks some of them (``names``, ``list_file``, ``cities``), the scenes it picked
(:func:`mtrs_geo.craft.sources.scene_of` of a file name: crops of one scene share it; an OSCD
city). ``null`` scenes: every item of the folder. A crafted stream takes one side of the fixed
hold-out split of its donor folders (:func:`mtrs_geo.craft.donors.is_held_out`). The record of the
checkpoint a run starts from (``model.init_from``) or resumes is merged in; a starting checkpoint
without a record is listed under ``unknown``.

Each entry also keeps the ``fingerprints`` of the items it covered when it was written
(:mod:`mtrs_geo.models.training.fingerprints`): paths are those of the training machine, and the
same files copied or mounted elsewhere are still recognised by their content.

Older run folders have no record: :func:`read_training_record` then reads the run configurations
kept beside the weights (``config.yaml``, ``stage1.yaml`` ...), without fingerprints.
:func:`trained_items` says which evaluated items a record covers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from mtrs_geo.errors import InputError
from mtrs_geo.layouts import folder_pairs, oscd_cities
from mtrs_geo.models.training.config import TrainConfig, resolve_source
from mtrs_geo.models.training.fingerprints import file_fingerprint, item_fingerprint

RECORD_FILE = "training_data.json"


def _real(path: Path | str) -> str:
    return os.path.realpath(str(path))


def scene_of_file(path: Path | str) -> str:
    """Return the scene of an image file: its stem without crop offsets (``test_2_0512`` -> ...)."""
    from mtrs_geo.craft.sources import scene_of

    return scene_of(Path(path).stem)


def _picked_names(source: dict[str, Any]) -> list[str] | None:
    """Return the file names a ``change_folder`` source picks (a list file wins); None: all."""
    if "list_file" in source:
        try:
            return Path(str(source["list_file"])).read_text(encoding="utf-8").split()
        except OSError:
            return None  # the loader names the missing list file; then nothing was trained on
    names = source.get("names")
    return None if names is None else [str(name) for name in names]


def source_entry(source: dict[str, Any]) -> dict[str, Any]:
    """Describe one training source of a run configuration (see the module's docstring)."""
    kind = str(source["type"])
    if kind == "geo_scene":
        keys = ("before", "after", "labels")
        return {"type": kind, "files": [_real(str(source[k])) for k in keys if k in source]}
    root = Path(str(source.get("root", "")))
    entry: dict[str, Any] = {"type": kind, "folder": _real(root), "scenes": None}
    if kind == "mtrefseg":
        entry["folder"] = _real(root / str(source.get("split", "train")))
    elif kind == "torchgeo":
        split = root / str(source.get("split", "train"))
        entry["folder"] = _real(split if split.is_dir() else root)
    elif kind == "change_folder":
        names = _picked_names(source)
        if names is not None:
            entry["scenes"] = sorted({scene_of_file(name) for name in names})
    elif kind == "oscd" and source.get("cities") is not None:
        entry["scenes"] = sorted(str(city) for city in source["cities"])
    elif kind == "craft_stream":
        entry["split"] = str(source.get("split", "train"))
    return entry


def merge_records(*records: dict[str, Any]) -> dict[str, Any]:
    """Union of records: every source once, in order; every unknown starting point once."""
    sources: list[dict[str, Any]] = []
    unknown: list[str] = []
    for record in records:
        sources.extend(s for s in record.get("sources", []) if s not in sources)
        unknown.extend(u for u in record.get("unknown", []) if u not in unknown)
    return {"sources": sources, "unknown": unknown}


def _candidates(entry: dict[str, Any]) -> list[tuple[Path, str, Path | None]]:
    """List ``(item, scene, after image)`` of the folder an entry names, as they lie here.

    The item is the pair's before image or an OSCD city folder (whose after image is in it).
    """
    if "files" in entry:
        files = [Path(name) for name in entry["files"]]
        return [(files[0], "", files[1] if len(files) > 1 else None)] if files else []
    folder = Path(str(entry.get("folder", "")))
    kind = entry.get("type")
    if kind == "mtrefseg":
        from mtrs_geo.models.data.mtrefseg import MTRefSegDataset

        try:
            records = MTRefSegDataset(folder.parent, folder.name).records
        except (InputError, OSError, ValueError):
            return []
        return [(Path(_real(r.image_a)), scene_of_file(r.image_a), r.image_b) for r in records]
    if kind == "craft_stream":
        from mtrs_geo.craft.donors import DONORS

        folders = [(folder / d.folder, d.layout) for d in DONORS]
    elif kind in ("change_folder", "oscd"):
        folders = [(folder, "oscd" if kind == "oscd" else "levir-cd")]
    else:
        return []  # torchgeo: its own file layouts; recognised by location only
    found: list[tuple[Path, str, Path | None]] = []
    for where, layout in folders:
        if layout == "oscd":
            found += [(city, city.name, None) for city in oscd_cities(where)]
        elif (where / "A").is_dir():
            try:
                pairs = folder_pairs(where)[0]
            except InputError:
                continue
            found += [(pair.before, scene_of_file(pair.before), pair.after) for pair in pairs]
    return found


def entry_fingerprints(entry: dict[str, Any]) -> list[str]:
    """Return the fingerprints of the items a record entry covers, as they lie on this machine.

    Both dates of each item: a copy with its dates swapped is the same training data.
    """
    keys: set[str | None] = set()
    for item, scene, after in _candidates(entry):
        if _covers(entry, Path(_real(item)), scene):
            keys.add(item_fingerprint(item))
            keys.add(file_fingerprint(after) if after else item_fingerprint(item, "imgs_2"))
    return sorted(key for key in keys if key is not None)


def training_record(config: TrainConfig, resumed: Path | None = None) -> dict[str, Any]:
    """Return the record of a run: its own sources, fingerprinted; its starting or resumed one's."""
    records = [fingerprinted({"sources": [source_entry(s) for s in config.data.train]})]
    for folder in (config.model.init_from, resumed):
        if folder:
            found = read_training_record(Path(folder))
            records.append(found if found is not None else {"unknown": [_real(folder)]})
    return merge_records(*records)


def _run_configs(folder: Path) -> Iterator[dict[str, Any]]:
    """Yield the mtrs run configurations (YAML mappings with ``data.train``) kept in a folder."""
    for path in sorted(folder.glob("*.yaml")):
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        data = values.get("data") if isinstance(values, dict) else None
        if isinstance(data, dict) and isinstance(data.get("train"), list):
            yield values


def record_from_configs(folder: Path) -> dict[str, Any] | None:
    """Rebuild what the checkpoint in ``folder`` was trained on from its run configurations.

    Without fingerprints; :func:`fingerprinted` adds them where the data lies on this machine
    (``scripts/train_bundled.py`` does so for the bundled checkpoint's ``training_data.json``).
    """
    return _record_from_configs(Path(folder), {_real(folder)})


def fingerprinted(record: dict[str, Any]) -> dict[str, Any]:
    """Return ``record`` with the fingerprints of each entry's items found on this machine."""
    sources = [
        {**entry, "fingerprints": entry_fingerprints(entry)} for entry in record.get("sources", [])
    ]
    return {**record, "sources": sources}


def _record_from_configs(folder: Path, seen: set[str]) -> dict[str, Any] | None:
    """Rebuild a record from the run configurations in ``folder`` and its starting checkpoints."""
    configs = list(_run_configs(folder))
    if not configs:
        return None
    records: list[dict[str, Any]] = []
    for values in configs:
        entries = []
        for source in values["data"]["train"]:
            try:
                entries.append(source_entry(resolve_source(source, folder)))
            except (InputError, KeyError, TypeError):
                continue
        records.append({"sources": entries})
        start = (values.get("model") or {}).get("init_from")
        if isinstance(start, str) and Path(start).is_absolute() and Path(start).is_dir():
            found = _read(Path(start), seen)
            if found is not None:
                records.append(found)
    return merge_records(*records)


def _read(folder: Path, seen: set[str]) -> dict[str, Any] | None:
    key = _real(folder)
    if key in seen:
        return None
    seen.add(key)
    path = folder / RECORD_FILE
    if path.is_file():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None  # unreadable: the run configurations may still say
        if isinstance(record, dict) and isinstance(record.get("sources"), list):
            return merge_records(record)
    return _record_from_configs(folder, seen)


def read_training_record(folder: Path) -> dict[str, Any] | None:
    """Return what the checkpoint in ``folder`` was trained on, or None when nothing says.

    Its ``training_data.json``; else (none, or none readable) the run configurations beside its
    weights (``config.yaml`` of a run folder's ``final/``, ``stage1.yaml``...), with those of the
    checkpoints they started from where these still exist.
    """
    return _read(Path(folder), set())


def _covers(entry: dict[str, Any], path: Path, scene: str) -> bool:
    """Whether a training source's items include the evaluated item at ``path`` (real path)."""
    if "files" in entry:
        return str(path) in entry["files"]
    folder = Path(str(entry.get("folder", "")))
    if not path.is_relative_to(folder):
        return False
    if entry.get("type") == "craft_stream":
        from mtrs_geo.craft.donors import DONORS, is_held_out

        parts = path.relative_to(folder).parts
        layouts = {donor.folder: donor.layout for donor in DONORS}
        if len(parts) < 2 or parts[0] not in layouts:
            return False
        scene = parts[1] if layouts[parts[0]] == "oscd" else scene
        return is_held_out(parts[0], scene) == (entry.get("split", "train") == "held_out")
    scenes = entry.get("scenes")
    return scenes is None or scene in scenes


def trained_items(
    record: dict[str, Any], items: Iterable[tuple[Path, str]]
) -> tuple[list[tuple[Path, str]], dict[str, Any] | None]:
    """Return the evaluated ``(real path, scene)`` items a record covers, and a source covering one.

    An entry covers an item by location (:func:`_covers`) or by content (its fingerprints). The
    source is the first that covers an item (None when none does), to name in a message.
    """
    hits: list[tuple[Path, str]] = []
    first: dict[str, Any] | None = None
    sources = [
        (entry, frozenset(entry.get("fingerprints", []))) for entry in record.get("sources", [])
    ]
    for path, scene in items:
        key: str | None = None
        for entry, keys in sources:
            if keys and key is None:
                key = item_fingerprint(path) or ""
            if _covers(entry, path, scene) or (key and key in keys):
                hits.append((path, scene))
                first = first or entry
                break
    return hits, first
