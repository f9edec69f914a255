"""``mtrs craft build``: change data in, an MTRefSeg-21K-layout referring dataset out.

Per pair: perception (instances and their descriptions) -> referents (what to say) -> the grammar
(how to say it) -> quality checks -> files. The whole dataset is written into a temporary folder
beside the output and renamed when complete; the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mtrs_geo.cancel import begin_commit, check_cancel
from mtrs_geo.craft.datasheet import Tally, datasheet, markdown
from mtrs_geo.craft.expressions import Referent, choose, referents, select_mask
from mtrs_geo.craft.language import caption_coverage, realize, tokens, vocabulary
from mtrs_geo.craft.outputs import check_no_audit_decisions, check_output
from mtrs_geo.craft.paraphrase import Paraphraser, keeps_meaning
from mtrs_geo.craft.perception import (
    Instance,
    brightness,
    describe_instances,
    label_instances,
    ndvi,
)
from mtrs_geo.craft.quality import Candidate, Rejection, check_pair
from mtrs_geo.craft.sources import ChangePair, SourceOptions, read_pairs, scene_names
from mtrs_geo.errors import InputError
from mtrs_geo.write import atomic_directory

EXPRESSION_DIR = "referring_expression"


@dataclass(frozen=True)
class BuildOptions:
    """Settings of one build.

    Attributes:
        source: how to read the input.
        seed: drives every random choice (splits, expression choice, wording).
        min_instance_pixels: connected changes smaller than this are not instances.
        min_mask_pixels: non-empty masks smaller than this are rejected as tiny.
        max_expressions: most expressions kept per pair.
        splits: split name -> share of the scenes.
        captions: real captions file (JSON lines with ``sentences``) to check vocabulary coverage.

    """

    source: SourceOptions
    seed: int = 0
    min_instance_pixels: int = 16
    min_mask_pixels: int = 16
    max_expressions: int = 10
    splits: tuple[tuple[str, float], ...] = (("train", 0.8), ("val", 0.1), ("test", 0.1))
    captions: Path | None = None


@dataclass
class BuildSummary:
    """What a build wrote."""

    output: Path
    pairs: int = 0
    triplets: int = 0
    rejected: int = 0
    splits: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the summary as a JSON-ready dict."""
        return {
            "output": str(self.output),
            "pairs": self.pairs,
            "triplets": self.triplets,
            "rejected": self.rejected,
            "splits": self.splits,
        }


@dataclass(frozen=True)
class PairResult:
    """The kept triplets of one pair, with the instance map and descriptions they refer to."""

    pair: ChangePair
    instances: np.ndarray
    described: list[Instance]
    kept: list[Candidate]
    rejected: list[Rejection]
    ambiguous: dict[str, int]


def assign_splits(
    scenes: list[str], shares: Iterable[tuple[str, float]], seed: int
) -> dict[str, str]:
    """Map each scene to a split: a seeded shuffle cut by the shares (largest remainder rounding).

    The first split always gets at least one scene; a split whose share rounds to zero stays empty.
    """
    shares = list(shares)
    if not shares or any(share < 0 for _, share in shares) or sum(s for _, s in shares) <= 0:
        raise InputError("split shares must be non-negative and sum to more than zero")
    order = sorted(scenes)
    random.Random(f"splits:{seed}").shuffle(order)
    total = sum(share for _, share in shares)
    exact = [len(order) * share / total for _, share in shares]
    counts = [int(x) for x in exact]
    remainders = sorted(range(len(shares)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in remainders[: len(order) - sum(counts)]:
        counts[i] += 1
    if order and counts[0] == 0:
        donor = max(range(len(counts)), key=lambda i: counts[i])
        counts[donor] -= 1
        counts[0] += 1
    mapping: dict[str, str] = {}
    start = 0
    for (name, _), count in zip(shares, counts, strict=True):
        for scene in order[start : start + count]:
            mapping[scene] = name
        start += count
    return mapping


def perceive(pair: ChangePair, min_instance_pixels: int) -> tuple[np.ndarray, list[Instance]]:
    """Instances of a pair and their descriptions (size, place, shape, class, spectral change)."""
    instances, codes = label_instances(pair.change, min_instance_pixels)
    delta = brightness(pair.rgb_after / 255.0) - brightness(pair.rgb_before / 255.0)
    ndvi_delta = None
    if pair.red_nir_before is not None and pair.red_nir_after is not None:
        ndvi_delta = ndvi(*pair.red_nir_after) - ndvi(*pair.red_nir_before)
    described = describe_instances(
        instances, codes, pair.transitions, pair.pixel_area_m2, delta, ndvi_delta, pair.valid
    )
    return instances, described


def _class_label(referent: Referent) -> str:
    group = referent.group
    if group.mode == "transition":
        return f"{group.from_class}->{group.to_class}"
    if group.mode in ("appeared", "disappeared"):
        return f"{group.cls} ({group.mode})"
    return group.subject or "change"


def craft_pair(
    pair: ChangePair,
    options: BuildOptions,
    paraphraser: Paraphraser | None = None,
) -> PairResult:
    """Build the checked triplets of one pair (pure apart from the optional paraphraser)."""
    instances, described = perceive(pair, options.min_instance_pixels)
    found, ambiguous = referents(
        described,
        pair.change,
        pair.transitions,
        pair.classes,
        options.source.subject,
        pair.red_nir_before is not None,
    )
    rng = random.Random(f"{options.seed}:{pair.name}")
    chosen = choose(found, options.max_expressions, rng)
    class_words = {w for name in pair.classes for w in tokens(name)}
    class_words |= {w for t in pair.transitions.values() for w in tokens(t.subject or "")}
    candidates = []
    for referent in chosen:
        text = realize(referent, pair.georeferenced, rng)
        if paraphraser is not None:
            rewritten = paraphraser.paraphrase(text)
            if keeps_meaning(text, rewritten, class_words):
                text = rewritten
        candidates.append(
            Candidate(
                pair=pair.name,
                text=text,
                kind=referent.kind,
                mask=select_mask(instances, referent.instance_ids),
                instance_ids=tuple(sorted(referent.instance_ids)),
                label=_class_label(referent),
            )
        )
    kept, rejected = check_pair(candidates, pair.valid, options.min_mask_pixels)
    return PairResult(pair, instances, described, kept, rejected, ambiguous)


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG")


def _instance_json(instance: Instance) -> dict[str, Any]:
    t = instance.transition
    return {
        "id": instance.id,
        "transition": t.key,
        "from_class": t.from_class,
        "to_class": t.to_class,
        "pixels": instance.pixels,
        "area_m2": round(instance.area_m2, 2),
        "cell": list(instance.cell),
        "shape": instance.shape,
        "brightness": instance.brightness,
        "vegetation": instance.vegetation,
    }


def write_pair(result: PairResult, folder: Path) -> None:
    """Write one pair's images, masks, instance map and JSON into a split folder."""
    pair, name = result.pair, result.pair.name
    _save_png(np.moveaxis(pair.rgb_before, 0, 2), folder / "A" / f"{name}.png")
    _save_png(np.moveaxis(pair.rgb_after, 0, 2), folder / "B" / f"{name}.png")
    _save_png(result.instances.astype(np.uint16), folder / "instances" / f"{name}.png")
    masks = []
    for index, candidate in enumerate(result.kept):
        mask_name = f"masks/{name}_{index}.png"
        _save_png(candidate.mask.astype(np.uint8) * 255, folder / mask_name)
        masks.append({"path": mask_name})
    meta = {
        "img_A": f"A/{name}.png",
        "img_B": f"B/{name}.png",
        "referring_expressions": [c.text for c in result.kept],
        "mask": masks,
        "expression_kinds": [c.kind for c in result.kept],
        "expression_classes": [c.label for c in result.kept],
        "instance_ids": [list(c.instance_ids) for c in result.kept],
        "instance_map": f"instances/{name}.png",
        "instances": [_instance_json(i) for i in result.described],
        "scene": pair.scene,
        "georeferenced": pair.georeferenced,
    }
    text = json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    (folder / EXPRESSION_DIR / f"{name}.json").write_text(text, encoding="utf-8")


def _tally_pair(tally: Tally, result: PairResult, split: str) -> None:
    tally.pairs[split] += 1
    tally.triplets[split] += len(result.kept)
    image_pixels = float(result.instances.size)
    for candidate in result.kept:
        tally.kinds[candidate.kind] += 1
        tally.classes[candidate.label] += 1
        tally.lengths.append(len(candidate.text.split()))
        size = int(candidate.mask.sum())
        if size == 0:
            tally.empty += 1
        else:
            tally.area_shares.append(size / image_pixels)
            rows = np.nonzero(candidate.mask)[0]
            tally.area_m2.append(float(result.pair.pixel_area_m2[rows].sum()))
    for instance in result.described:
        tally.instances[instance.transition.key] += 1
    for rejection in result.rejected:
        tally.rejections[rejection.reason.split(" (")[0]] += 1
    for kind, count in result.ambiguous.items():
        tally.ambiguous[kind] += count


def _coverage(path: Path, classes: set[str]) -> dict[str, Any]:
    captions: list[str] = []
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                captions.extend(json.loads(line).get("sentences", []))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read captions {path}: {exc}") from exc
    words = vocabulary() | {w for name in classes for w in tokens(name)}
    share, missing, _ = caption_coverage(captions, words, top=60)
    return {"captions": len(captions), "top": 60, "share": round(share, 3), "missing": missing}


def build(
    input_dir: Path,
    output: Path,
    options: BuildOptions,
    paraphraser: Paraphraser | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> BuildSummary:
    """Build a referring dataset from change data.

    Args:
        input_dir: the input folder (layout in ``options.source``).
        output: dataset folder to create; written under a temporary name and renamed when complete.
        options: build settings.
        paraphraser: optional rewording backend.
        overwrite: replace an existing output that is a CRAFT dataset folder (or empty).
        progress: called as ``progress(done_scenes, total_scenes)`` after each pair.
        cancel: once set, the build stops at the next pair and writes nothing.

    Raises:
        InputError: unreadable input; an output that is, lies inside or contains the input or the
            captions, is a file or an unrelated folder, or exists without ``overwrite``
            (:func:`~mtrs_geo.craft.outputs.check_output`).
        Cancelled: ``cancel`` was set before the dataset was renamed into place.

    """
    output = Path(output)
    check_output(output, build_reads(input_dir, options), overwrite)
    scenes = scene_names(input_dir, options.source)
    if not scenes:
        raise InputError(f"no pairs found in {input_dir} for layout {options.source.layout}")
    split_of = assign_splits(scenes, options.splits, options.seed)
    check_cancel(cancel)
    with atomic_directory(output) as staging:
        summary = _build_into(input_dir, staging, options, split_of, paraphraser, progress, cancel)
        check_no_audit_decisions(output)  # decided while the build ran: kept
        begin_commit(cancel)
    summary.output = output
    return summary


def build_reads(input_dir: Path, options: BuildOptions) -> list[tuple[str, Path | None]]:
    """List what a build reads, named for error messages: the input folder, the captions."""
    return [("the input folder", Path(input_dir)), ("the --captions file", options.captions)]


def _build_into(
    input_dir: Path,
    root: Path,
    options: BuildOptions,
    split_of: dict[str, str],
    paraphraser: Paraphraser | None,
    progress: Callable[[int, int], None] | None,
    cancel: threading.Event | None,
) -> BuildSummary:
    tally = Tally()
    summary = BuildSummary(output=root)
    for split in sorted(set(split_of.values())):
        for sub in ("A", "B", "masks", "instances", EXPRESSION_DIR):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
    for split in split_of.values():
        tally.scenes[split] += 1
    rejections: list[Rejection] = []
    classes: set[str] = set()
    done_scenes: set[str] = set()
    for pair in read_pairs(input_dir, options.source):
        check_cancel(cancel)
        if pair.scene not in split_of:
            raise InputError(f"pair {pair.name}: scene {pair.scene!r} was not listed")
        split = split_of[pair.scene]
        result = craft_pair(pair, options, paraphraser)
        classes.update(pair.classes)
        classes.update(t.subject for t in pair.transitions.values() if t.subject)
        rejections.extend(result.rejected)
        summary.rejected += len(result.rejected)
        if not result.kept:
            tally.pairs_without_triplets += 1
        else:
            write_pair(result, root / split)
            _tally_pair(tally, result, split)
            summary.pairs += 1
            summary.triplets += len(result.kept)
            summary.splits[split] = summary.splits.get(split, 0) + len(result.kept)
        if progress is not None:
            done_scenes.add(pair.scene)
            progress(len(done_scenes), len(split_of))
    settings = {
        "layout": options.source.layout,
        "seed": options.seed,
        **{k: v for k, v in asdict(options.source).items() if k != "layout"},
        "min_instance_pixels": options.min_instance_pixels,
        "min_mask_pixels": options.min_mask_pixels,
        "max_expressions": options.max_expressions,
        "splits": ",".join(f"{name}={share}" for name, share in options.splits),
        "paraphrase": paraphraser is not None,
    }
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}
    coverage = _coverage(options.captions, classes) if options.captions else None
    sheet = datasheet(tally, settings, coverage)
    (root / "datasheet.json").write_text(
        json.dumps(sheet, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    (root / "datasheet.md").write_text(markdown(sheet), encoding="utf-8")
    lines = [json.dumps(r.to_json(), sort_keys=True, ensure_ascii=False) for r in rejections]
    (root / "rejections.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return summary
