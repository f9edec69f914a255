"""Turn QGIS inputs into files the engine reads: band stacks of single-band layers, area polygons.

Both are written into a run's temporary folder, which the algorithm removes when the run ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsFeatureSink,
    QgsProcessingContext,
    QgsProcessingException,
    QgsVectorFileWriter,
    QgsWkbTypes,
)


def stack_layers(sources: list[str], folder: Path, name: str) -> str:
    """Write a VRT whose bands are the first bands of ``sources``, in order; return its path.

    Per-band downloads (Sentinel-2's ``B04.jp2``, ``B03.jp2``, ``B02.jp2``; OSCD's band files) so
    become one multi-band image without a VRT built by hand. Files of other resolutions are
    resampled to the finest one.

    Raises:
        QgsProcessingException: GDAL cannot build the stack.

    """
    from osgeo import gdal

    path = folder / f"{Path(sources[0]).stem}_stack.vrt"
    options = gdal.BuildVRTOptions(separate=True, resolution="highest", bandList=[1])
    dataset = gdal.BuildVRT(str(path), sources, options=options)
    if dataset is None:
        raise QgsProcessingException(
            f"cannot stack {', '.join(Path(s).name for s in sources)}: {gdal.GetLastErrorMsg()}"
        )
    for index, source in enumerate(sources, start=1):
        dataset.GetRasterBand(index).SetDescription(Path(source).stem)
    dataset = None  # closing writes the VRT
    return str(path)


def export_area(source: Any, folder: Path, context: QgsProcessingContext) -> str:
    """Write the polygons of a feature source (selected ones when asked) to a GeoPackage.

    Raises:
        QgsProcessingException: the source holds no polygon or cannot be written.

    """
    if QgsWkbTypes.geometryType(source.wkbType()) != QgsWkbTypes.PolygonGeometry:
        raise QgsProcessingException("the area of interest must be a polygon layer")
    path = folder / "area_of_interest.gpkg"
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    writer = QgsVectorFileWriter.create(
        str(path), source.fields(), source.wkbType(), source.sourceCrs(),
        context.transformContext(), options,
    )  # fmt: skip
    if writer.hasError() != QgsVectorFileWriter.NoError:
        raise QgsProcessingException(f"cannot write {path}: {writer.errorMessage()}")
    count = 0
    for feature in source.getFeatures():
        if feature.hasGeometry():
            writer.addFeature(feature, QgsFeatureSink.FastInsert)
            count += 1
    del writer  # closes the file
    if count == 0:
        raise QgsProcessingException("the area of interest holds no polygon")
    return str(path)
