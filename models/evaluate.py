"""Score a model or a folder of predicted masks on dataset splits with the paper's metrics.

Models run through the :class:`~mtrs_geo.model_api.ChangeModel` interface directly, one image
pair at a time with per-image statistics (dataset samples are not georeferenced). Each prediction
is brought back to the ground truth's original resolution (the resize or padding done for the
model is undone) before it is binarized at 0.5 and scored (definitions:
:mod:`mtrs_geo.models.metrics`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from mtrs_geo.errors import InputError
from mtrs_geo.model_api import ChangeModel, load_model
from mtrs_geo.models.data.change_folders import ChangeFolderDataset, OSCDCityDataset
from mtrs_geo.models.data.images import read_image, read_mask
from mtrs_geo.models.data.mtrefseg import EXPRESSION_DIR, MTRefSegDataset
from mtrs_geo.models.data.sample import Sample
from mtrs_geo.models.metrics import SampleScore, binarize, markdown_table, score_sample
from mtrs_geo.models.metrics import split_metrics as aggregate

ANY_SUFFIX = "@any"  # model spec suffix: ignore the query (stage-1 any-change mode)
PAD_MULTIPLE = 32  # inputs at native size are padded to a multiple of this, pixels


def open_split(root: Path, split: str) -> Dataset[Sample]:
    """Open a split in whichever layout it has: MTRefSeg-21K, ``A/ B/ label/`` or OSCD cities."""
    folder = Path(root) / split
    if (folder / EXPRESSION_DIR).is_dir():
        return MTRefSegDataset(root, split)
    if (folder / "A").is_dir() and (folder / "B").is_dir():
        return ChangeFolderDataset(folder)
    if folder.is_dir() and any(
        (p / "cm").is_dir() and (p / "imgs_1").is_dir() for p in folder.iterdir()
    ):
        return OSCDCityDataset(folder)
    raise InputError(
        f"{folder}: not a dataset split "
        f"(need {EXPRESSION_DIR}/, A/ B/ label/, or OSCD city folders)"
    )


def ground_truths(dataset: Dataset[Sample]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(sample_id, mask)`` without decoding images where the layout allows it."""
    if isinstance(dataset, MTRefSegDataset):
        for record in dataset.records:
            if record.mask is None:
                shape = read_image(record.image_a).shape[-2:]
                yield record.sample_id, np.zeros(shape, np.float32)
            else:
                yield record.sample_id, read_mask(record.mask)
        return
    for index in range(len(dataset)):  # type: ignore[arg-type]
        sample = dataset[index]
        yield sample["sample_id"], sample["mask"].numpy()


def read_prediction(folder: Path, sample_id: str, shape: tuple[int, int]) -> np.ndarray:
    """Read ``<folder>/<sample_id>.png`` as a probability map at ``shape``.

    0/1 masks are taken as they are; other 8-bit images are probabilities scaled by 255 (a 0/255
    mask included). A prediction at another size is resized (bilinear) to the ground truth's.
    """
    path = folder / f"{sample_id}.png"
    if not path.is_file():
        raise InputError(f"prediction missing: {path} (name: <json stem>_<expression index>.png)")
    with Image.open(path) as img:
        array = np.asarray(img.convert("L"), dtype=np.float32)
    probability = array if array.max() <= 1.0 else array / 255.0
    return resize_probability(probability, shape)


def resize_probability(probability: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a ``(H, W)`` probability map to ``shape``."""
    if probability.shape == tuple(shape):
        return probability
    tensor = torch.from_numpy(np.ascontiguousarray(probability, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def predict_sample(model: ChangeModel, sample: Sample, input_size: int | None = 512) -> np.ndarray:
    """Run ``model`` on one normalized pair; return the probability at the mask's resolution.

    ``input_size``: the pair is resized to this square side for the model (``None``: native size,
    zero-padded to a multiple of 32). The model must already be prepared with the query.
    """
    before = sample["image_a"][None].float()
    after = sample["image_b"][None].float()
    height, width = sample["mask"].shape[-2:]
    if input_size is not None:
        size = (input_size, input_size)
        before = F.interpolate(before, size=size, mode="bilinear", align_corners=False)
        after = F.interpolate(after, size=size, mode="bilinear", align_corners=False)
    else:
        pad_h = (-before.shape[-2]) % PAD_MULTIPLE
        pad_w = (-before.shape[-1]) % PAD_MULTIPLE
        before = F.pad(before, (0, pad_w, 0, pad_h))
        after = F.pad(after, (0, pad_w, 0, pad_h))
    before_np, after_np = before.numpy(), after.numpy()
    model.calibrate(before_np, after_np, np.ones((1, *before_np.shape[-2:]), dtype=bool))
    probability = model.predict(before_np, after_np)[0]
    if input_size is None:
        probability = probability[: sample["image_a"].shape[-2], : sample["image_a"].shape[-1]]
    return resize_probability(probability, (int(height), int(width)))


def load_model_spec(spec: str, device: str = "cpu") -> tuple[ChangeModel, bool]:
    """Load ``name``, ``checkpoint folder`` or either with ``@any`` (query ignored)."""
    ignore_query = spec.endswith(ANY_SUFFIX)
    name = spec[: -len(ANY_SUFFIX)] if ignore_query else spec
    return load_model(name).to(device), ignore_query


def evaluate_model(
    model: ChangeModel,
    dataset: Dataset[Sample],
    ignore_query: bool = False,
    input_size: int | None = 512,
    save_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, float | int]:
    """Score ``model`` on every sample of ``dataset``; optionally save its predictions as PNG."""
    from tqdm import tqdm

    scores: list[SampleScore] = []
    prepared: str | None = None
    first = True
    indexes = range(len(dataset))  # type: ignore[arg-type]
    for index in tqdm(indexes, desc="evaluate", disable=not progress, unit="sample"):
        sample = dataset[index]
        query = None if ignore_query else (sample["text"] or None)
        if first or query != prepared:
            model.prepare(query)
            prepared, first = query, False
        probability = predict_sample(model, sample, input_size)
        if save_dir is not None:
            save_prediction(probability, save_dir / f"{sample['sample_id']}.png")
        scores.append(score_sample(binarize(probability), sample["mask"].numpy() > 0))
    return aggregate(scores)


def evaluate_predictions(folder: Path, dataset: Dataset[Sample]) -> dict[str, float | int]:
    """Score a folder of predicted masks (``<sample_id>.png``) against the split's ground truth."""
    if not Path(folder).is_dir():
        raise InputError(f"predictions folder not found: {folder}")
    scores = []
    for sample_id, mask in ground_truths(dataset):
        probability = read_prediction(Path(folder), sample_id, mask.shape)
        scores.append(score_sample(binarize(probability), mask > 0))
    return aggregate(scores)


def save_prediction(probability: np.ndarray, path: Path) -> None:
    """Write a probability map as an 8-bit PNG (``round(255 p)``: ``p >= 0.5`` <=> value >= 128)."""
    from mtrs_geo.write import atomic_output

    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.clip(np.rint(np.asarray(probability) * 255.0), 0, 255).astype(np.uint8)
    with atomic_output(path) as partial:
        Image.fromarray(values).save(partial, format="PNG")


def write_report(results: dict[str, Any], out: Path, table: str) -> tuple[Path, Path]:
    """Write the JSON report and its markdown table (``<out>.md``) atomically."""
    from mtrs_geo.write import atomic_output

    out = Path(out)
    markdown = out.with_suffix(".md")
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
    """
    if (model is None) == (predictions is None):
        raise InputError("give exactly one of --model and --predictions")
    results: dict[str, dict[str, float | int]] = {}
    loaded = None
    for split in splits:
        if is_scene_split(root, split):
            if model is None:
                raise InputError(f"split {split!r} holds georeferenced scenes: use --model")
            results[split_name(root, split)] = evaluate_scenes(
                Path(root) / split, model, text_field, device
            )
            continue
        if loaded is None and model is not None:
            loaded = load_model_spec(model, device)
        dataset = open_split(root, split)
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


SCENE_RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
SCENE_VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml")


def scene_files(folder: Path) -> tuple[Path, Path, Path] | None:
    """Return ``(before, after, polygons)`` of a scenes-layout folder, or None."""
    if not folder.is_dir():
        return None
    files = {
        p.stem.lower(): p for p in folder.iterdir() if p.suffix.lower() in SCENE_RASTER_SUFFIXES
    }
    vectors = sorted(p for p in folder.iterdir() if p.suffix.lower() in SCENE_VECTOR_SUFFIXES)
    if "before" not in files or "after" not in files or len(vectors) != 1:
        return None
    return files["before"], files["after"], vectors[0]


def is_scene_split(root: Path, split: str) -> bool:
    """Whether a split folder holds georeferenced scenes (and no MTRefSeg-layout triplets)."""
    folder = Path(root) / split
    if (folder / EXPRESSION_DIR).is_dir() or not folder.is_dir():
        return False
    return bool(scene_folders(folder))


def scene_folders(folder: Path) -> list[Path]:
    """Scene folders of a split: the folder itself, or its sub-folders, in the scenes layout."""
    if scene_files(folder) is not None:
        return [folder]
    return sorted(p for p in Path(folder).iterdir() if scene_files(p) is not None)


def evaluate_scene(
    before: Path,
    after: Path,
    labels: Path,
    model: str,
    query: str,
    text_field: str | None = "query",
    ignore_query: bool = False,
    device: str = "cpu",
    tile_size: int = 512,
    overlap: int = 64,
) -> SampleScore:
    """Score one (scene, query) through the full engine against its rasterized reference polygons.

    The engine runs as ``mtrs detect`` would (tiling, stitching included) and writes its probability
    raster on the common grid; the reference polygons of ``query`` are rasterized on that grid, and
    pixels outside the pair's valid footprint are left out of both masks.
    """
    import tempfile

    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize

    from mtrs_geo.config import DetectConfig
    from mtrs_geo.pipeline import detect

    polygons = gpd.read_file(labels)
    if text_field is not None and query:
        polygons = polygons[polygons[text_field].astype(str).str.strip() == query]
    with tempfile.TemporaryDirectory(prefix="mtrs-eval-") as tmp:
        probability_path = Path(tmp) / "probability.tif"
        config = DetectConfig(
            before=before,
            after=after,
            query=query,
            mask_out=probability_path,
            mask_type="probability",
            model=model,
            any_change=ignore_query or not query,
            device=device,
            tile_size=tile_size,
            overlap=overlap,
        )
        detect(config)
        with rasterio.open(probability_path) as src:
            probability = src.read(1)
            transform, crs, shape = src.transform, src.crs, (src.height, src.width)
    valid = probability >= 0.0  # nodata is -1 outside the footprint intersection
    shapes = [g for g in polygons.to_crs(crs).geometry if g is not None and not g.is_empty]
    truth = (
        rasterize(shapes, out_shape=shape, transform=transform, dtype="uint8").astype(bool)
        if shapes
        else np.zeros(shape, dtype=bool)
    )
    return score_sample(binarize(probability) & valid, truth & valid)


def evaluate_scenes(
    folder: Path,
    model_spec: str,
    text_field: str | None = "query",
    device: str = "cpu",
    tile_size: int = 512,
    overlap: int = 64,
) -> dict[str, float | int]:
    """Score every (scene, query) of a scenes-layout split through the engine.

    Queries are the distinct values of ``text_field`` in each scene's polygons (one sample each);
    without that attribute (or with ``text_field=None``) each scene is one any-change sample.
    """
    import geopandas as gpd

    ignore_query = model_spec.endswith(ANY_SUFFIX)
    model = model_spec[: -len(ANY_SUFFIX)] if ignore_query else model_spec
    scores = []
    scenes = scene_folders(folder)
    if not scenes:
        raise InputError(f"{folder}: no scene (before.tif, after.tif and one polygon file)")
    for scene in scenes:
        files = scene_files(scene)
        assert files is not None
        columns = gpd.read_file(files[2], rows=1).columns
        field = text_field if text_field is not None and text_field in columns else None
        queries = [""]
        if field is not None:
            values = gpd.read_file(files[2], columns=[field])[field].astype(str).str.strip()
            queries = sorted(set(values))
        for query in queries:
            scores.append(
                evaluate_scene(
                    *files, model, query, field, ignore_query, device, tile_size, overlap
                )
            )
    return aggregate(scores)
