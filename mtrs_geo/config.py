"""Run configuration: small frozen dataclasses passed from the front ends into the engine."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mtrs_geo.errors import InputError, ModelError

MaskType = Literal["probability", "binary"]
MASK_TYPES: tuple[str, ...] = ("probability", "binary")

# The defaults and bounds of the options every front end offers (the CLI's options and the QGIS
# plugin's parameters read them from here).
DEFAULT_TILE_SIZE = 512  # pixels
DEFAULT_OVERLAP = 64  # pixels
DEFAULT_BATCH_SIZE = 4  # tiles per model call
DEFAULT_THRESHOLD = 0.5  # probability
DEFAULT_DEVICE = "auto"
# The bundled MTRefSeg-R1 asked each query both ways in time (mtrs_geo/models/time_symmetric.py):
# held-out F1 up on buildings, water and the Sentinel-2 city at 1.2-1.5x the one-way cost (one
# query; three queries 1.8x one, against 1.5x one way: README, "Asking both ways in time").
DEFAULT_MODEL = "mtrefseg-r1-both-ways"
DEFAULT_PANEL_WIDTH = 4096  # pixels
TILE_SIZE_RANGE = (32, 8192)  # pixels, both included
BATCH_SIZE_RANGE = (1, 1024)  # tiles, both included
# The threshold is in (0, 1]: at 0 every pixel, nodata aside, would be "changed".
THRESHOLD_RANGE = (0.0, 1.0)


@dataclass(frozen=True)
class DetectConfig:
    """Everything one ``mtrs detect`` run needs.

    Distances are in metres, areas in square metres, sizes in pixels of the common grid.
    """

    # Inputs: a file, a URL (http, https, s3, gs, az), a STAC item (.json) or a comma-separated
    # list of single-band rasters (see mtrs_geo.sources).
    before: Path | str
    after: Path | str
    query: str = ""
    output: Path | None = None  # vector output (.geojson, .gpkg, .fgb, .shp); None: no vectors
    mask_out: Path | None = None  # raster output (Cloud-Optimized GeoTIFF)
    mask_type: MaskType = "probability"
    model: str = DEFAULT_MODEL
    bands_before: tuple[int, ...] | None = None  # 1-based band indexes; None: all bands
    bands_after: tuple[int, ...] | None = None  # None: same as bands_before
    assets: tuple[str, ...] | None = None  # STAC asset keys stacked in band order; None: visual
    pixel_grid: bool = False  # pair the images pixel by pixel (no georeferencing; pixel units)
    crs: str | None = None  # common grid CRS; None: the before image's CRS
    resolution: float | None = None  # common grid pixel size in CRS units; None: before's
    # Tile side in pixels; 0: the model's own (:func:`model_tile_size`).
    tile_size: int = 0
    overlap: int = DEFAULT_OVERLAP
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = DEFAULT_DEVICE  # auto | cpu | cuda | cuda:N | mps
    threshold: float = DEFAULT_THRESHOLD
    min_area: float = 0.0  # m^2
    simplify: float = 0.0  # m
    any_change: bool = False  # ignore the query: stage-1 "any change" mode
    prefetch: int = 4  # tiles read ahead of the model
    # Tile columns are processed in panels about this wide (pixels), one after the other: memory
    # follows the panel's width, not the scene's.
    panel_width: int = DEFAULT_PANEL_WIDTH
    extra_attributes: dict[str, str] = field(default_factory=dict)
    # Area of interest: only this rectangle (xmin, ymin, xmax, ymax in ``extent_crs``, None: the
    # common grid's CRS) and/or the polygons of a vector file are processed.
    extent: tuple[float, float, float, float] | None = None
    extent_crs: str | None = None
    aoi: Path | None = None
    # Acquisition dates written on every polygon (ISO 8601); None: read from the rasters' tags.
    before_date: str | None = None
    after_date: str | None = None
    # Several queries answered in one pass (backbone and fusion run once per tile); empty: those
    # of ``query`` (one, or several separated by ";" or line breaks).
    queries: tuple[str, ...] = ()
    # A time series: the images after ``after``, in time order; each consecutive pair is compared.
    more_images: tuple[Path | str, ...] = ()
    # Acquisition dates of every image in order (before, after, more_images); empty: from tags.
    dates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.tile_size == 0:
            object.__setattr__(self, "tile_size", model_tile_size(self.model))

    def query_list(self) -> tuple[str, ...]:
        """Return the run's queries, stripped: ``queries``, else those of ``query``.

        ``query`` may list several queries, separated by ``;`` or line breaks (what a batch CSV's
        query column or the QGIS query field holds): see :func:`mtrs_geo.multiquery.split_queries`.
        """
        if self.queries:
            return tuple(query.strip() for query in self.queries)
        from mtrs_geo.multiquery import split_queries

        return split_queries(self.query)

    def images(self) -> tuple[Path | str, ...]:
        """Return every input image in time order: before, after, then ``more_images``."""
        return (self.before, self.after, *self.more_images)

    def outputs(self) -> list[Path]:
        """Return the files this run writes: the vector output, then the mask raster."""
        return [Path(p) for p in (self.output, self.mask_out) if p is not None]

    def check(self, *, needs_output: bool = True) -> None:
        """Check every option and output name before any heavy work; see :func:`check_config`."""
        check_config(self, needs_output=needs_output)


# A checkpoint's config.json key: the tile side the model works best at (near its training crops).
TILE_SIZE_KEY = "inference_tile_size"
# Registered models that run another's bundled checkpoint (its tile size is theirs).
CHECKPOINT_OF = {"mtrefseg-r1-both-ways": "mtrefseg-r1"}
# The registered models that ask the bundled checkpoint: its vocabulary is known, and checked.
BUNDLED_LANGUAGE_MODELS = ("mtrefseg-r1", "mtrefseg-r1-both-ways")


def model_tile_size(model: str) -> int:
    """Return the tile side ``model`` asks for: its checkpoint's ``inference_tile_size``.

    ``model`` is a registered name or a checkpoint folder; models without a checkpoint, or whose
    checkpoint names no size, get :data:`DEFAULT_TILE_SIZE`. Reads one small JSON file, nothing
    is imported.
    """
    folder = checkpoint_folder(model)
    if folder is None:
        return DEFAULT_TILE_SIZE
    try:
        settings = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        size = int(settings.get(TILE_SIZE_KEY) or DEFAULT_TILE_SIZE)
    except (OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_TILE_SIZE
    low, high = TILE_SIZE_RANGE
    return size if low <= size <= high else DEFAULT_TILE_SIZE


def _bundled_checkpoint(name: str) -> Path:
    """Return the folder of a checkpoint shipped in the package (``models/checkpoints/NAME``)."""
    spec = importlib.util.find_spec("mtrs_geo.models")
    roots = spec.submodule_search_locations if spec is not None else None
    return Path(next(iter(roots or [""]), "")) / "checkpoints" / name


def file_key(path: Path) -> tuple[object, ...]:
    """Return what identifies the file ``path`` names: its device and inode, else its real path.

    Two paths with equal keys name one file (the same path, a symbolic or a hard link); a file
    that does not exist (yet) is known by its real path. Keys compare in constant time, so many
    outputs can be checked against many inputs through a dict.
    """
    try:
        stat = os.stat(path)
    except OSError:  # it does not exist (yet)
        return ("path", os.path.realpath(path))
    return ("inode", stat.st_dev, stat.st_ino)


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same path, a symbolic link or a hard link to it."""
    return file_key(a) == file_key(b)


@dataclass(frozen=True)
class InputFile:
    """A local file a run reads: its path, what it is, and the input as it was given."""

    path: Path
    role: str  # "before image", "after image", "image 3", "area of interest"
    given: str  # the input as given (a comma-separated list of files names each of them)

    def describe(self) -> str:
        """Name the input in a sentence: ``the after image a.tif``, ``image 3 (c.tif)``."""
        if self.role.startswith("image "):
            return f"{self.role} ({self.given})"
        return f"the {self.role} {self.given}"


def input_files(config: DetectConfig) -> list[InputFile]:
    """Return the local files a run reads: each file of every image, then the area of interest.

    Opens nothing: URLs and GDAL paths are left out, and the files a VRT document or a STAC item
    names are the engine's to check once it opens them.
    """
    from mtrs_geo.sources import local_inputs

    roles = ["before image", "after image"]
    roles += [f"image {index}" for index in range(3, 3 + len(config.more_images))]
    files = [
        InputFile(Path(name), role, os.fspath(image))
        for role, image in zip(roles, config.images(), strict=True)
        for name in local_inputs(image)
    ]
    if config.aoi is not None:
        files.append(InputFile(Path(config.aoi), "area of interest", os.fspath(config.aoi)))
    return files


def checkpoint_folder(model: str) -> Path | None:
    """Return the folder ``model``'s checkpoint is read from (None: a model without one).

    Resolved as :func:`mtrs_geo.model_api.load_model` does: a registered name first (a folder of
    that name in the working directory does not hide the bundled checkpoint), then a folder.
    """
    from mtrs_geo.model_api import registered_names

    if model in registered_names():
        folder = _bundled_checkpoint(CHECKPOINT_OF.get(model, model))
    else:
        folder = Path(model)
    return folder if folder.is_dir() else None


def checkpoint_file_written(config: DetectConfig) -> Path | None:
    """Return an output that is an existing file of the model's checkpoint folder (None: none is).

    Only existing files count: a new file beside the checkpoint's destroys nothing.
    """
    folder = checkpoint_folder(config.model)
    if folder is None:
        return None
    inside = Path(os.path.realpath(folder))
    for output in config.outputs():
        real = Path(os.path.realpath(output))
        if real.is_file() and real.is_relative_to(inside):
            return output
    return None


def _check_numbers(config: DetectConfig) -> None:
    low, high = TILE_SIZE_RANGE
    if not low <= config.tile_size <= high:
        raise InputError(f"tile size must be {low} to {high} pixels, got {config.tile_size}")
    if not 0 <= config.overlap < config.tile_size:
        raise InputError(
            f"overlap must be at least 0 and less than the tile size ({config.tile_size} px), "
            f"got {config.overlap}"
        )
    low, high = BATCH_SIZE_RANGE
    if not low <= config.batch_size <= high:
        raise InputError(f"batch size must be {low} to {high} tiles, got {config.batch_size}")
    if config.panel_width < 1:
        raise InputError(f"panel width must be at least 1 pixel, got {config.panel_width}")
    if config.prefetch < 1:
        raise InputError(f"prefetch must be at least 1, got {config.prefetch}")
    low_t, high_t = THRESHOLD_RANGE
    if not low_t < config.threshold <= high_t:
        raise InputError(
            f"threshold must be above {low_t:g} and at most {high_t:g}, got {config.threshold}"
        )
    if not (math.isfinite(config.min_area) and config.min_area >= 0):
        raise InputError(f"minimum area must be a number >= 0 m^2, got {config.min_area}")
    if not (math.isfinite(config.simplify) and config.simplify >= 0):
        raise InputError(f"simplify tolerance must be a number >= 0 m, got {config.simplify}")
    if config.resolution is not None and not (
        math.isfinite(config.resolution) and config.resolution > 0
    ):
        raise InputError(f"resolution must be a number above 0, got {config.resolution}")


def _check_outputs(config: DetectConfig, needs_output: bool) -> None:
    from mtrs_geo.write import check_existing_output, check_raster_output, vector_format

    outputs = config.outputs()
    if needs_output and not outputs:
        raise InputError("nothing to write: ask for polygons, a mask raster, or both")
    if config.output is not None:
        vector_format(Path(config.output))
    if config.mask_out is not None:
        check_raster_output(Path(config.mask_out))
    if len(outputs) == 2 and same_file(*outputs):
        raise InputError(f"the polygons and the mask raster would be one file: {outputs[0]}")
    inputs = input_files(config)
    for path in outputs:
        for read in inputs:
            if same_file(path, read.path):
                raise InputError(
                    f"output {path} is {read.describe()}: writing it would destroy the input; "
                    "choose another name"
                )
    written = checkpoint_file_written(config)
    if written is not None:
        raise InputError(
            f"output {written} is a file of the model checkpoint {config.model}: writing it would "
            "destroy the model; choose another name"
        )
    for path in outputs:
        if not path.parent.is_dir():
            raise InputError(f"output folder does not exist: {path.parent}")
    check_existing_output(config.output)  # a GeoPackage that holds layers of its own


def check_config(config: DetectConfig, *, needs_output: bool = True) -> None:
    """Check a run's options and output names: the one check both front ends rely on.

    Args:
        config: the run's options.
        needs_output: refuse a config that writes nothing (``False`` to describe a pair only).

    Raises:
        InputError: an option out of its range, an unknown device, model, CRS or mask type, no
            output, an output with an unknown extension, in a missing folder, or naming an input
            (an image, the area of interest, a file of the model's checkpoint; the same path, a
            symbolic or a hard link) or the other output.

    """
    from mtrs_geo.device import parse_device

    _check_numbers(config)
    parse_device(config.device)
    if config.mask_type not in MASK_TYPES:
        raise InputError(f"unknown mask type {config.mask_type!r}: use probability or binary")
    check_model_name(config.model)
    _check_pixel_grid(config)
    if config.crs is not None:
        from mtrs_geo.grid import parse_crs

        parse_crs(config.crs)
    _check_area_and_dates(config)
    _check_queries_and_series(config)
    _check_outputs(config, needs_output)


def _check_area_and_dates(config: DetectConfig) -> None:
    from mtrs_geo.aoi import check_extent
    from mtrs_geo.dates import parse_date

    if config.extent is not None:
        check_extent(config.extent, config.extent_crs)
    if config.aoi is not None and not Path(config.aoi).is_file():
        raise InputError(f"area of interest {config.aoi} does not exist")
    for role, date in (("before", config.before_date), ("after", config.after_date)):
        if date is not None:
            parse_date(date, role)


def _check_pixel_grid(config: DetectConfig) -> None:
    """Refuse what a pair on a pixel grid cannot do: another CRS or pixel size, GeoJSON."""
    if not config.pixel_grid:
        return
    if config.crs is not None or config.resolution is not None:
        raise InputError(
            "images paired on a pixel grid keep their pixels: a target CRS or resolution does "
            "not apply"
        )
    if config.output is not None and Path(config.output).suffix.lower() in (".geojson", ".json"):
        raise InputError(
            f"cannot write {Path(config.output).name}: GeoJSON holds longitude and latitude, "
            "which images on a pixel grid do not have; write .gpkg (or .fgb, .shp) instead"
        )


def check_model_name(name: str) -> None:
    """Refuse a model that is neither a registered name nor a checkpoint folder.

    Raises:
        ModelError: an unknown model.

    """
    from mtrs_geo.model_api import registered_names

    if name not in registered_names() and not Path(name).is_dir():
        known = ", ".join(registered_names())
        raise ModelError(f"unknown model {name!r}: use one of {known} or a checkpoint folder")


def _check_queries_and_series(config: DetectConfig) -> None:
    """Refuse duplicate queries, and dates that do not match the images."""
    from mtrs_geo.dates import parse_date

    queries = config.query_list()
    if len(set(queries)) != len(queries):
        raise InputError(f"a query is asked twice: {', '.join(repr(q) for q in queries)}")
    images = config.images()
    if config.more_images and (config.before_date is not None or config.after_date is not None):
        raise InputError(
            "a time series takes the dates of all its images, one per image, not a before and an "
            "after date"
        )
    if config.dates:
        if len(config.dates) != len(images):
            raise InputError(
                f"{len(config.dates)} dates for {len(images)} images: give one date per image"
            )
        if config.before_date is not None or config.after_date is not None:
            raise InputError("give the dates of all images or the before and after dates, not both")
        for index, date in enumerate(config.dates, start=1):
            parse_date(date, f"image {index}")
