"""Georeferenced scenes: a model run through the full engine, scored against change polygons.

A scenes-layout split holds folders with ``before``/``after`` rasters and one polygon file
(:func:`mtrs_geo.layouts.scene_files`); each (scene, query) is one sample.
"""

from __future__ import annotations

from pathlib import Path

from mtrs_geo.errors import InputError
from mtrs_geo.layouts import (
    SCENE_RASTER_SUFFIXES,
    VECTOR_SUFFIXES,
    rasterize_changes,
    read_change_polygons,
    scene_files,
    scene_folders,
)
from mtrs_geo.models.data.mtrefseg import EXPRESSION_DIR
from mtrs_geo.models.evaluate.chips import parse_model_spec
from mtrs_geo.models.metrics import SampleScore, binarize, score_sample
from mtrs_geo.models.metrics import split_metrics as aggregate

SCENE_VECTOR_SUFFIXES = VECTOR_SUFFIXES

__all__ = [
    "SCENE_RASTER_SUFFIXES",
    "SCENE_VECTOR_SUFFIXES",
    "evaluate_scene",
    "evaluate_scenes",
    "is_scene_split",
    "scene_files",
    "scene_folders",
]


def is_scene_split(root: Path, split: str) -> bool:
    """Whether a split folder holds georeferenced scenes (and no MTRefSeg-layout triplets)."""
    folder = Path(root) / split
    if (folder / EXPRESSION_DIR).is_dir() or not folder.is_dir():
        return False
    return bool(scene_folders(folder))


def evaluate_scene(
    before: Path,
    after: Path,
    labels: Path,
    model: str,
    query: str,
    text_field: str | None = "query",
    ignore_query: bool = False,
    device: str = "cpu",
    tile_size: int = 0,
    overlap: int = 64,
) -> SampleScore:
    """Score one (scene, query) through the full engine against its rasterized reference polygons.

    The engine runs as ``mtrs detect`` would (tiling, stitching included; ``tile_size`` 0: the
    model's own, as ``mtrs detect`` picks it) and writes its probability raster on the common
    grid; the reference polygons of ``query`` are rasterized on that grid, and pixels outside the
    pair's valid footprint are left out of both masks.
    """
    import tempfile

    import rasterio

    from mtrs_geo.config import DetectConfig
    from mtrs_geo.pipeline import detect

    polygons = read_change_polygons(labels)
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
    truth = rasterize_changes(polygons.to_crs(crs).geometry, shape, transform).astype(bool)
    return score_sample(binarize(probability) & valid, truth & valid)


def evaluate_scenes(
    folder: Path,
    model_spec: str,
    text_field: str | None = "query",
    device: str = "cpu",
    tile_size: int = 0,
    overlap: int = 64,
) -> dict[str, float | int]:
    """Score every (scene, query) of a scenes-layout split through the engine.

    Queries are the distinct values of ``text_field`` in each scene's polygons (one sample each);
    without that attribute (or with ``text_field=None``) each scene is one any-change sample.
    """
    import geopandas as gpd

    model, ignore_query = parse_model_spec(model_spec)
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
