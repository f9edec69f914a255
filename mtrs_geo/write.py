"""Every output file of a run: scratch folders, staged and verified writes, vectors, the mask COG.

A run writes each output under its own name in a hidden scratch folder beside the destination
(``.mtrs-run-HOST-PID-XXXX``, same file system, so GDAL picks the same driver and the rename is
atomic), checks that the finished file reads back whole, and renames every output into place
only at the end (:class:`StagedOutputs`): a failed or interrupted run never leaves a file that looks
finished and never replaces a file with a broken one. Scratch folders are removed when the run
ends, and those left by a killed run are removed by the next run that writes into the folder.

Geopandas, pyogrio and rasterio are imported when a function needs them, so that importing the
engine stays fast.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from mtrs_geo.errors import InputError, MtrsError, OutputError
from mtrs_geo.geopackage import check_geopackage_output, layer_name
from mtrs_geo.probability_raster import MASK_NODATA, PROBABILITY_BLOCK, PROBABILITY_NODATA

if TYPE_CHECKING:
    import geopandas as gpd

# extension -> (OGR driver, whether the file is written in EPSG:4326 per RFC 7946)
VECTOR_FORMATS: dict[str, tuple[str, bool]] = {
    ".geojson": ("GeoJSON", True),
    ".json": ("GeoJSON", True),
    ".gpkg": ("GPKG", False),
    ".fgb": ("FlatGeobuf", False),
    ".shp": ("ESRI Shapefile", False),
}
RASTER_EXTENSIONS = (".tif", ".tiff")
# Files that make up one shapefile besides the .shp itself.
_SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".shp.xml")
ATTRIBUTE_COLUMNS = ("id", "query", "model", "area_m2", "mean_score", "before", "after")
SCRATCH_PREFIX = ".mtrs-run-"
# Where the owner of a scratch folder cannot be asked whether it still runs (another machine on a
# shared folder, or no process check on this system), its folder counts as stale after this long.
STALE_SCRATCH_SECONDS = 24 * 3600.0


def _partial_path(path: Path) -> Path:
    """Return a hidden temporary name beside ``path``, same extension (``.name.partial-x.ext``)."""
    suffix = ".shp.xml" if path.name.endswith(".shp.xml") else path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}.partial-{uuid.uuid4().hex[:8]}{suffix}")


def _family(path: Path) -> list[Path]:
    """List the files GDAL may write for ``path``: itself and, for a shapefile, its sidecars."""
    if path.suffix.lower() != ".shp":
        return [path]
    stem = path.with_suffix("")
    return [path] + [stem.with_name(stem.name + ext) for ext in _SHAPEFILE_SIDECARS]


def _remove_quietly(paths: list[Path]) -> None:
    for item in paths:
        with contextlib.suppress(FileNotFoundError):
            item.unlink()


def remove_output(path: Path) -> None:
    """Delete a finished output file, with its shapefile sidecars; a missing file is fine."""
    _remove_quietly(_family(Path(path)))


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (POSIX; elsewhere assume it does)."""
    if sys.platform == "win32":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    # A killed process whose parent has not reaped it yet (a zombie) still answers signal 0.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _scratch_is_stale(folder: Path) -> bool:
    """Whether a scratch folder was left by a run that no longer runs."""
    host, _, rest = folder.name[len(SCRATCH_PREFIX) :].rpartition("-")[0].rpartition("-")
    try:
        pid = int(rest)
    except ValueError:
        return False
    if host == socket.gethostname() and sys.platform != "win32":
        return pid != os.getpid() and not _process_alive(pid)
    try:
        return time.time() - folder.stat().st_mtime > STALE_SCRATCH_SECONDS
    except OSError:
        return False


def clean_stale_scratch(folder: Path) -> list[Path]:
    """Remove the scratch folders that killed runs left in ``folder``; return what was removed."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in Path(folder).iterdir():
            if (
                entry.name.startswith(SCRATCH_PREFIX)
                and entry.is_dir()
                and _scratch_is_stale(entry)
            ):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def make_scratch(folder: Path) -> Path:
    """Create a hidden scratch folder in ``folder`` (stale ones of killed runs are removed first).

    Raises:
        InputError: ``folder`` does not exist.
        OutputError: it cannot be written to.

    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"output folder does not exist: {folder}")
    clean_stale_scratch(folder)
    prefix = f"{SCRATCH_PREFIX}{socket.gethostname()}-{os.getpid()}-"
    try:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    except OSError as exc:
        raise OutputError(f"cannot write in {folder}: {_reason(exc)}") from exc


# Free bytes under which a failed write is put down to a full disk (GDAL often reports only
# "Write failed" and leaves the reason to a log line).
FULL_DISK_BYTES = 1024 * 1024


def disk_full(exc: BaseException, folder: Path | None = None) -> bool:
    """Tell whether a failed write ran out of space (errno, text, or ``folder``'s free space)."""
    if getattr(exc, "errno", None) == errno.ENOSPC or "no space left" in str(exc).lower():
        return True
    if folder is None:
        return False
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        return False


def _reason(exc: BaseException, folder: Path | None = None) -> str:
    """Say in plain words why a write failed."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if disk_full(exc, folder):
        return "the disk is full (no space left on device)"
    return text


def write_failure(exc: BaseException, folder: Path) -> OutputError | None:
    """Return the :class:`OutputError` of a failed write in ``folder`` (None: not a write)."""
    text = str(exc).lower()
    if disk_full(exc, folder) or "write failed" in text or isinstance(exc, PermissionError):
        return OutputError(
            f"cannot write in {folder}: {_reason(exc, folder)}; nothing was replaced"
        )
    return None


def _vanished(scratch: Path) -> OutputError:
    return OutputError(
        f"the run's scratch folder {scratch} vanished while the run was writing (was it "
        "deleted?); no output was written"
    )


@contextlib.contextmanager
def _writing(destination: Path, partial: Path) -> Iterator[None]:
    """Turn any failure of a write into an :class:`OutputError` that says why in plain words."""
    try:
        yield
    except MtrsError:
        raise
    except Exception as exc:  # noqa: BLE001 - GDAL and OGR report a failed write in many types
        if not partial.parent.is_dir():
            raise _vanished(partial.parent) from exc
        raise OutputError(
            f"cannot write {destination}: {_reason(exc, partial.parent)}; a file already there "
            "is kept"
        ) from exc


def _fsync(path: Path) -> None:
    """Flush a written file to the disk (where the system allows it)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StagedOutputs:
    """The outputs of one run, written in scratch folders and renamed into place together.

    Use it as a context manager: :meth:`stage` gives the scratch path of a destination,
    :meth:`commit` renames every staged file into place, and leaving the block removes the scratch
    folders (with any file not committed).
    """

    def __init__(self) -> None:
        self._scratch: dict[str, Path] = {}
        self._staged: list[tuple[Path, Path]] = []  # (scratch file, destination)

    def __enter__(self) -> StagedOutputs:
        """Start a set of outputs."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Remove the scratch folders."""
        self.close()

    def scratch(self, folder: Path) -> Path:
        """Return the run's scratch folder in ``folder`` (created on first use)."""
        key = os.path.abspath(folder)
        if key not in self._scratch:
            self._scratch[key] = make_scratch(Path(folder))
        return self._scratch[key]

    def check_scratch(self) -> None:
        """Raise :class:`OutputError` naming a scratch folder that vanished."""
        for scratch in self._scratch.values():
            if not scratch.is_dir():
                raise _vanished(scratch)

    def stage(self, destination: Path) -> Path:
        """Return the scratch path to write ``destination`` to (the same name, in scratch)."""
        destination = Path(destination)
        # In a folder of their own: a run's other scratch files may bear an output's name.
        staging = self.scratch(destination.parent) / "staged"
        staging.mkdir(exist_ok=True)
        partial = staging / destination.name
        self._staged.append((partial, destination))
        return partial

    def commit(self) -> list[Path]:
        """Rename every staged file into place; return the destinations.

        Raises:
            OutputError: a staged file is missing (its scratch folder vanished); nothing is renamed.

        """
        self.check_scratch()
        for partial, _ in self._staged:
            if not partial.exists():
                raise OutputError(
                    f"the run's scratch file {partial} vanished; no output was written"
                )
        for partial, destination in self._staged:
            written, destinations = _family(partial), _family(destination)
            # A shapefile being replaced must not keep sidecars of its previous version.
            _remove_quietly(
                [d for d, w in zip(destinations, written, strict=True) if not w.exists()]
            )
            for source, target in reversed(list(zip(written, destinations, strict=True))):
                if source.exists():
                    os.replace(source, target)
        return [destination for _, destination in self._staged]

    def close(self) -> None:
        """Remove the scratch folders and whatever they still hold."""
        for scratch in self._scratch.values():
            shutil.rmtree(scratch, ignore_errors=True)
        self._scratch.clear()


@contextlib.contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block completes.

    On any exception (``KeyboardInterrupt`` and ``SystemExit`` included) the temporary file and
    its shapefile sidecars are removed and the exception propagates; an existing ``path`` is left
    as it was.
    For a shapefile the sidecars are renamed first and the ``.shp`` last.

    Raises:
        InputError: the destination folder does not exist.

    """
    target = Path(path)
    if not target.parent.is_dir():
        raise InputError(f"output folder does not exist: {target.parent}")
    partial = _partial_path(target)
    written = _family(partial)
    try:
        yield partial
        if not partial.exists():
            raise RuntimeError(f"nothing was written to {partial.name}")
    except BaseException:
        _remove_quietly(written)
        raise
    destinations = _family(target)
    # A shapefile being replaced must not keep sidecars of its previous version.
    _remove_quietly([d for d, w in zip(destinations, written, strict=True) if not w.exists()])
    for source, destination in reversed(list(zip(written, destinations, strict=True))):
        if source.exists():
            os.replace(source, destination)


def _staging_prefix(target: Path) -> str:
    """Name start of the staging folders of ``target``: ``.NAME.partial-``."""
    return f".{target.name}.partial-"


def _staging_is_stale(folder: Path, prefix: str) -> bool:
    """Whether a staging folder (``PREFIX HOST-PID-XXXXXXXX``) was left by a run no longer running.

    One of this machine's is stale when its process is gone; one of another machine, or of an
    older version whose names carry no process (``PREFIX XXXXXXXX``), after a day untouched.
    """
    owner = folder.name[len(prefix) :].rpartition("-")[0]
    host, _, pid = owner.rpartition("-")
    if host == socket.gethostname() and pid.isdigit() and sys.platform != "win32":
        return int(pid) != os.getpid() and not _process_alive(int(pid))
    try:
        return time.time() - folder.stat().st_mtime > STALE_SCRATCH_SECONDS
    except OSError:
        return False


def clean_stale_staging(target: Path) -> list[Path]:
    """Remove the staging folders of ``target`` that killed runs left beside it; return them."""
    target, prefix = Path(target), _staging_prefix(Path(target))
    removed = []
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            if (
                entry.name.startswith(prefix)
                and entry.is_dir()
                and not entry.is_symlink()
                and _staging_is_stale(entry, prefix)
            ):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def _make_staging(target: Path) -> Path:
    """Create ``.NAME.partial-HOST-PID-XXXXXXXX`` beside ``target``, with umask permissions."""
    owner = f"{socket.gethostname()}-{os.getpid()}"
    staging = target.with_name(f"{_staging_prefix(target)}{owner}-{uuid.uuid4().hex[:8]}")
    staging.mkdir()  # like a plain mkdir: 0777 less the umask (tempfile.mkdtemp would give 0700)
    return staging


def _replace_folder(staging: Path, target: Path) -> None:
    """Put ``staging`` in the place of ``target``, which is moved aside first and removed last."""
    if not target.exists() and not target.is_symlink():
        staging.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        old.rename(target)  # the previous folder comes back
        raise
    if old.is_symlink() or not old.is_dir():
        old.unlink()
    else:
        shutil.rmtree(old)


@contextlib.contextmanager
def atomic_directory(path: Path | str) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; it replaces ``path`` when the block completes.

    The staging folder (``.NAME.partial-HOST-PID-XXXXXXXX``) gets the permissions of a plain
    ``mkdir`` (0777 less the umask); staging folders of ``path`` that killed runs left are removed
    first. On any exception the staging folder is removed and an existing ``path`` is left as it
    was.

    Raises:
        InputError: ``path`` exists and is not a folder (nothing is written).
        OutputError: the staging folder cannot be created (a read-only folder, say).

    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InputError(f"{target} is a file, not a folder; nothing was written")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(target)
        staging = _make_staging(target)
    except OSError as exc:
        raise OutputError(f"cannot write in {target.parent}: {_reason(exc)}") from exc
    try:
        yield staging
        _replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def vector_format(path: Path) -> tuple[str, bool]:
    """Return ``(OGR driver, written in EPSG:4326)`` for an output path, from its extension.

    Raises:
        InputError: the extension is not one of the supported vector formats.

    """
    suffix = path.suffix.lower()
    if suffix not in VECTOR_FORMATS:
        known = ", ".join(VECTOR_FORMATS)
        shown = suffix or "(none)"
        raise InputError(f"unknown vector output extension {shown!r}: use one of {known}")
    return VECTOR_FORMATS[suffix]


def check_raster_output(path: Path) -> None:
    """Raise :class:`InputError` unless ``path`` is a GeoTIFF name (``.tif``/``.tiff``)."""
    if path.suffix.lower() not in RASTER_EXTENSIONS:
        raise InputError(f"the mask raster must be a .tif or .tiff file, got {path.name!r}")


def check_existing_output(path: Path | str | None) -> None:
    """Refuse to replace an existing output that holds more than the run writes back.

    A GeoPackage holding layers or tables that an earlier run did not write (a survey layer,
    QGIS styles or a project) would lose them: :func:`mtrs_geo.geopackage.check_geopackage_output`.
    A missing file, other formats and ``None`` (no such output) pass.

    Raises:
        InputError: the existing file would lose data (the layers are named), or cannot be read.

    """
    if path is not None and Path(path).suffix.lower() == ".gpkg":
        check_geopackage_output(Path(path), ATTRIBUTE_COLUMNS)


def vector_layer(path: Path) -> str:
    """Return the layer name of a vector output: its stem (a GeoPackage's: never ``gpkg...``)."""
    path = Path(path)
    return layer_name(path.stem) if path.suffix.lower() == ".gpkg" else path.stem


def write_vectors(gdf: gpd.GeoDataFrame, path: Path, staged: StagedOutputs | None = None) -> Path:
    """Write polygons (format by extension), check that they read back, and return ``path``.

    ``.geojson``/``.json`` are RFC 7946 (EPSG:4326, longitude/latitude order); ``.gpkg``,
    ``.fgb`` and ``.shp`` keep the GeoDataFrame's CRS. With ``staged`` the file is only staged
    (renamed into place by ``staged.commit()``); without, it is renamed into place at once. The
    layer is named after the file (:func:`vector_layer`).

    Raises:
        InputError: unknown extension, missing destination folder, or an existing GeoPackage that
            holds other layers (:func:`check_existing_output`).
        OutputError: the file could not be written whole (a full disk, say); nothing is renamed.

    """
    path = Path(path)
    driver, lonlat = vector_format(path)
    if staged is None:
        with StagedOutputs() as own:
            write_vectors(gdf, path, own)
            own.commit()
        return path
    check_existing_output(path)
    import pyogrio

    frame = gdf.to_crs(4326) if lonlat and gdf.crs is not None else gdf
    if lonlat:
        from mtrs_geo.areas import valid_polygons

        # GeoJSON keeps 7 decimals of a degree: snap to that grid first, so that the rounding
        # cannot make a simplified polygon self-intersect.
        frame = frame.set_geometry(valid_polygons(frame.geometry.to_numpy(), grid_size=1e-7))
    kinds = set(frame.geometry.geom_type.dropna())
    geometry_type = "MultiPolygon" if "MultiPolygon" in kinds else "Polygon"
    options: dict[str, str] = {"RFC7946": "YES"} if driver == "GeoJSON" else {}
    if driver == "ESRI Shapefile":
        options["ENCODING"] = "UTF-8"
    partial = staged.stage(path)
    with _writing(path, partial), warnings.catch_warnings():
        # A Shapefile field name is at most 10 characters: GDAL cuts before_date to before_dat
        # (documented with the schema) and pyogrio warns of it at every write.
        warnings.filterwarnings("ignore", "Normalized/laundered field name", RuntimeWarning)
        pyogrio.write_dataframe(
            frame,
            partial,
            driver=driver,
            layer=vector_layer(path),
            geometry_type=geometry_type,
            promote_to_multi=geometry_type == "MultiPolygon",
            layer_options=options,
        )
        # A GeoPackage may hold more layers (a query's each): count the one just written.
        layer = vector_layer(path) if driver == "GPKG" else None
        count = pyogrio.read_info(partial, layer=layer, force_feature_count=True)["features"]
        if count != len(frame):
            raise OutputError(
                f"cannot write {path}: {count} of {len(frame)} polygons read back; a file "
                "already there is kept"
            )
        for part in _family(partial):
            if part.exists():
                _fsync(part)
    return path


def change_table(
    polygons: gpd.GeoDataFrame,
    *,
    query: str,
    model: str,
    before: str,
    after: str,
    min_area_m2: float = 0.0,
    simplify_m: float = 0.0,
    extra: dict[str, str] | None = None,
) -> gpd.GeoDataFrame:
    """Build the output attribute table from vectorized polygons (``mean_score`` + geometry).

    Simplifies (tolerance in metres), measures ground areas, drops polygons under ``min_area_m2``,
    and numbers the rest from 1. Columns: ``id, query, model, area_m2, mean_score, before, after``,
    then ``extra`` (constant string columns), then ``geometry``; the CRS is the polygons' CRS.
    """
    import geopandas as gpd

    from mtrs_geo.areas import filter_min_area, ground_areas, simplify_metres

    simplified = simplify_metres(polygons, simplify_m)
    kept, areas = filter_min_area(simplified, ground_areas(simplified), min_area_m2)
    count = len(kept)
    columns: dict[str, object] = {
        "id": np.arange(1, count + 1, dtype=np.int64),
        "query": [query] * count,
        "model": [model] * count,
        "area_m2": areas.astype(np.float64),
        "mean_score": kept["mean_score"].to_numpy(dtype=np.float64),
        "before": [before] * count,
        "after": [after] * count,
    }
    for name, value in (extra or {}).items():
        columns[name] = [value] * count
    return gpd.GeoDataFrame(columns, geometry=kept.geometry.to_numpy(), crs=polygons.crs)


def _cog_options(dtype: str) -> dict[str, str]:
    """Creation options of the COG driver for a mask or probability raster."""
    return {
        "COMPRESS": "DEFLATE",
        "PREDICTOR": "YES" if dtype == "float32" else "NO",
        "BLOCKSIZE": str(PROBABILITY_BLOCK),
        "OVERVIEWS": "AUTO",
        "OVERVIEW_RESAMPLING": "NEAREST" if dtype == "uint8" else "AVERAGE",
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": "ALL_CPUS",
    }


def check_tiff_complete(path: Path) -> None:
    """Check that a written GeoTIFF is whole: every block of the file lies inside it.

    A write cut short (a full disk that GDAL did not report, say) leaves blocks whose recorded
    offset and size run past the end of the file; the last block is also decoded.

    Raises:
        OutputError: the file cannot be opened or is cut short.

    """
    import rasterio

    size = os.path.getsize(path)
    with rasterio.open(path) as ds:
        windows = list(ds.block_windows(1))
        for (row, col), _ in windows:
            offset = ds.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1)
            length = ds.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1)
            if offset and length and int(offset) + int(length) > size:
                raise OutputError(f"{path} is cut short: block {row},{col} lies past its end")
        ds.read(1, window=windows[-1][1])


def _binary_mask_tiff(prob_path: Path, dst: Path, threshold: float) -> None:
    """Write a tiled uint8 GeoTIFF of the thresholded probability (1 change, 0 none, 255 nodata)."""
    import rasterio

    with rasterio.open(prob_path) as src:
        nodata = src.nodata if src.nodata is not None else PROBABILITY_NODATA
        profile = src.profile | {
            "driver": "GTiff",
            "dtype": "uint8",
            "nodata": MASK_NODATA,
            "tiled": True,
            "blockxsize": PROBABILITY_BLOCK,
            "blockysize": PROBABILITY_BLOCK,
            "compress": "deflate",
            "BIGTIFF": "IF_SAFER",
        }
        with rasterio.open(dst, "w", **profile) as out:
            for _, window in src.block_windows(1):
                values = src.read(1, window=window)
                mask = np.where(values >= threshold, 1, 0).astype(np.uint8)
                mask[(values == nodata) | ~np.isfinite(values)] = MASK_NODATA
                out.write(mask, 1, window=window)


@contextlib.contextmanager
def _described(source: Path, description: str | None, folder: Path) -> Iterator[Path]:
    """Yield ``source``, or a VRT in ``folder`` that reads it with ``description`` on its band."""
    if description is None:
        yield source
        return
    import rasterio
    import rasterio.shutil

    vrt = folder / f".described-{uuid.uuid4().hex[:8]}.vrt"
    try:
        rasterio.shutil.copy(source, vrt, driver="VRT")
        with rasterio.open(vrt, "r+") as dataset:
            dataset.set_band_description(1, description)
        yield vrt
    finally:
        with contextlib.suppress(FileNotFoundError):
            vrt.unlink()


def write_probability_cog(
    prob_path: Path,
    dst: Path,
    mask_type: Literal["probability", "binary"] = "probability",
    threshold: float = 0.5,
    staged: StagedOutputs | None = None,
    *,
    description: str | None = None,
) -> Path:
    """Convert the run's probability raster into a Cloud-Optimized GeoTIFF at ``dst``.

    The COG is written in a scratch folder, checked whole (:func:`check_tiff_complete`) and then
    renamed into place, at once or, with ``staged``, by ``staged.commit()``.

    Args:
        prob_path: the stitched probability GeoTIFF (float32 in [0, 1], nodata -1).
        dst: destination ``.tif``.
        mask_type: ``"probability"`` keeps float32 probabilities (nodata -1); ``"binary"`` writes
            uint8: 1 = changed (probability >= threshold), 0 = unchanged, 255 = nodata.
        threshold: probability threshold of the binary mask.
        staged: the run's staged outputs; None: rename into place now.
        description: the band's description (the query: "any change" for none); None: none.

    Returns:
        ``dst``.

    Raises:
        OutputError: the COG could not be written whole (a full disk, say) or the probability
            raster vanished; nothing is renamed.

    """
    dst = Path(dst)
    check_raster_output(dst)
    if mask_type not in ("probability", "binary"):
        raise InputError(f"unknown mask type {mask_type!r}: use probability or binary")
    if staged is None:
        with StagedOutputs() as own:
            write_probability_cog(
                prob_path, dst, mask_type, threshold, own, description=description
            )
            own.commit()
        return dst
    import rasterio.shutil

    prob_path = Path(prob_path)
    partial = staged.stage(dst)
    with _writing(dst, partial):
        if not prob_path.exists():
            if not prob_path.parent.is_dir():
                raise _vanished(prob_path.parent)
            raise OutputError(f"the run's scratch file {prob_path} vanished; no output was written")
        check_tiff_complete(prob_path)
        if mask_type == "probability":
            with _described(prob_path, description, partial.parent) as source:
                rasterio.shutil.copy(source, partial, driver="COG", **_cog_options("float32"))
        else:
            binary = partial.with_name(f".binary-{uuid.uuid4().hex[:8]}.tif")
            try:
                _binary_mask_tiff(prob_path, binary, threshold)
                with _described(binary, description, partial.parent) as source:
                    rasterio.shutil.copy(source, partial, driver="COG", **_cog_options("uint8"))
            finally:
                with contextlib.suppress(FileNotFoundError):
                    binary.unlink()
        check_tiff_complete(partial)
        _fsync(partial)
    return dst
