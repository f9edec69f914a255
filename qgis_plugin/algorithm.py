"""The Processing algorithm "Referring change segmentation" and the "Check environment" algorithm.

The algorithm only collects parameters into a :class:`DetectRequest`, hands it to the backend and
turns the backend's outcome into Processing results and errors: the detection logic is the engine's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsColorRampShader,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputBoolean,
    QgsProcessingOutputString,
    QgsProcessingParameterBand,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorFileWriter,
    QgsVectorLayer,
)
from qgis.PyQt import sip
from qgis.PyQt.QtGui import QColor, QIcon

from .backend import check_environment, model_names, run_detection
from .environment import EnvironmentProblem
from .inputs import export_area, stack_layers
from .runner import DetectRequest, RunCancelled, RunFailed, RunSummary
from .settings import DEFAULT_MODEL, DEVICES, current_settings

PLUGIN_DIR = Path(__file__).resolve().parent
ICON_PATH = PLUGIN_DIR / "icon.svg"
STYLE_PATH = PLUGIN_DIR / "styles" / "changes.qml"
# Vector formats the engine writes itself; any other OGR format is converted from FlatGeobuf.
ENGINE_VECTOR_EXTENSIONS = {".geojson", ".gpkg", ".fgb", ".shp"}
MASK_TYPES = ["probability", "binary"]
ENGINE_DEFAULT = "empty: the engine's default"


def query_list_text(text: str) -> str:
    """Return the query field as one line: several queries (one per line) joined with ``; ``.

    The engine answers every query of a ``;``-separated list in one pass.
    """
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def layer_name(query: str, summary: RunSummary) -> str:
    """Name of the loaded changes layer: the query only when the model used it."""
    if query and summary.raw.get("query_used") is True:
        return f"Changes: {query}"
    if query:
        return "Changes (any change; the model ignores the query)"
    return "Changes"


# Probability ramp: viridis colours at equal steps over [0, 1]; nodata (-1, 255 in a binary mask)
# stays transparent.
_VIRIDIS = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")
PROBABILITY_RAMP = tuple((i / (len(_VIRIDIS) - 1), c) for i, c in enumerate(_VIRIDIS))
PROBABILITY_OPACITY = 0.8


class StyleChangesLayer(QgsProcessingLayerPostProcessorInterface):
    """Applies the plugin's default style to the change polygons once they are loaded."""

    def postProcessLayer(
        self, layer: Any, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        """Load ``styles/changes.qml`` into the output layer."""
        if isinstance(layer, QgsVectorLayer) and STYLE_PATH.is_file():
            layer.loadNamedStyle(str(STYLE_PATH))
            layer.triggerRepaint()


def probability_renderer(layer: QgsRasterLayer) -> QgsSingleBandPseudoColorRenderer:
    """Return a graduated ramp over probabilities [0, 1] for band 1 of ``layer`` (clipped)."""
    ramp = QgsColorRampShader(0.0, 1.0)
    ramp.setColorRampType(QgsColorRampShader.Interpolated)
    ramp.setColorRampItemList(
        [QgsColorRampShader.ColorRampItem(v, QColor(c), f"{v:g}") for v, c in PROBABILITY_RAMP]
    )
    ramp.setClip(True)
    shader = QgsRasterShader(0.0, 1.0)
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(0.0)
    renderer.setClassificationMax(1.0)
    renderer.setOpacity(PROBABILITY_OPACITY)
    return renderer


class StyleProbabilityLayer(QgsProcessingLayerPostProcessorInterface):
    """Draws the change-probability raster with a ramp over [0, 1], nodata transparent."""

    def postProcessLayer(
        self, layer: Any, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        """Set the ramp renderer on the loaded raster."""
        if isinstance(layer, QgsRasterLayer) and layer.isValid():
            layer.dataProvider().setUseSourceNoDataValue(1, True)
            layer.setRenderer(probability_renderer(layer))
            layer.triggerRepaint()


# QGIS deletes a layer post-processor once it has used it, and keeps only a pointer until then
# (the algorithm copy is gone by that time): each run makes its own, and Python holds them here
# until QGIS has deleted them.
_PENDING_POST_PROCESSORS: list[QgsProcessingLayerPostProcessorInterface] = []


def post_processor_for_run(
    processor: QgsProcessingLayerPostProcessorInterface,
) -> QgsProcessingLayerPostProcessorInterface:
    """Keep a fresh post-processor alive until QGIS deletes it after use, and return it."""
    _PENDING_POST_PROCESSORS[:] = [p for p in _PENDING_POST_PROCESSORS if not sip.isdeleted(p)]
    _PENDING_POST_PROCESSORS.append(processor)
    return processor


def raster_source(layer: QgsRasterLayer | None, name: str) -> str:
    """Return the GDAL dataset name of a raster layer parameter (a file path for file layers).

    Raises:
        QgsProcessingException: the layer is missing or not read by GDAL (a WMS, say).

    """
    if layer is None:
        raise QgsProcessingException(f"{name}: no raster layer given")
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"{name}: layer {layer.name()!r} is not a GDAL raster "
            f"(provider {layer.providerType()}); save it as a GeoTIFF first"
        )
    return layer.source()


def export_vector(source: Path, destination: str, context: QgsProcessingContext) -> None:
    """Write the engine's vector file ``source`` to ``destination`` in the OGR format of its suffix.

    The files are written in a temporary folder beside the destination and moved into place when
    complete (a multi-file format moves every file of the same stem).
    """
    layer = QgsVectorLayer(str(source), "changes", "ogr")
    if not layer.isValid():
        raise QgsProcessingException(f"cannot read the engine's output {source}")
    dest = Path(destination)
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = QgsVectorFileWriter.driverForExtension(dest.suffix.lstrip("."))
    options.fileEncoding = "UTF-8"
    if not options.driverName:
        raise QgsProcessingException(f"no OGR driver writes {dest.suffix!r} files")
    staging = Path(tempfile.mkdtemp(prefix=".mtrs-", dir=dest.parent))
    try:
        error, message, *_ = QgsVectorFileWriter.writeAsVectorFormatV3(
            layer, str(staging / dest.name), context.transformContext(), options
        )
        if error != QgsVectorFileWriter.NoError:
            raise QgsProcessingException(f"cannot write {dest}: {message}")
        for written in staging.iterdir():
            os.replace(written, dest.parent / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class ReferringChangeAlgorithm(QgsProcessingAlgorithm):
    """Finds the changes a text query describes between a before and an after raster."""

    BEFORE = "BEFORE"
    AFTER = "AFTER"
    QUERY = "QUERY"
    MODEL = "MODEL"
    CHECKPOINT = "CHECKPOINT"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    BATCH_SIZE = "BATCH_SIZE"
    DEVICE = "DEVICE"
    THRESHOLD = "THRESHOLD"
    MIN_AREA = "MIN_AREA"
    SIMPLIFY = "SIMPLIFY"
    MASK_TYPE = "MASK_TYPE"
    OUTPUT = "OUTPUT"
    MASK = "MASK"
    BEFORE_BANDS = "BEFORE_BANDS"
    AFTER_BANDS = "AFTER_BANDS"
    BEFORE_MORE = "BEFORE_MORE"
    AFTER_MORE = "AFTER_MORE"
    EXTENT = "EXTENT"
    AREA = "AREA"
    BEFORE_DATE = "BEFORE_DATE"
    AFTER_DATE = "AFTER_DATE"

    def __init__(self) -> None:
        super().__init__()
        self._models: list[str] = []

    def name(self) -> str:
        """Algorithm id inside the provider."""
        return "referring_change_segmentation"

    def displayName(self) -> str:
        """Name shown in the toolbox."""
        return "Referring change segmentation"

    def shortHelpString(self) -> str:
        """Help shown beside the dialog."""
        return (
            "Finds the changes that a text query describes (for example 'new buildings') "
            "between a before and an after raster, and writes them as polygons with their ground "
            "area (m²) and mean score. The rasters may differ in CRS and resolution: the after "
            "image is aligned to the before image's grid. Empty query: any change. MODEL picks a "
            "registered model; a checkpoint folder, when given, overrides it. Bands: empty takes "
            "every band, or the red, green and blue bands (by colour interpretation or band "
            "description) for a model that takes 3; single-band files (Sentinel-2 B04, B03, B02) "
            "are stacked in the order given under 'More before/after bands'. Extent and area of "
            "interest limit the run to a rectangle or to polygons. The engine runs inside QGIS "
            "when mtrs-geo is installed there, otherwise in a warm worker of the mtrs command of "
            "the environment set in Processing > Options > Providers > MTRS, which keeps the "
            "model loaded between runs."
        )

    def icon(self) -> QIcon:
        """Return the plugin icon."""
        return QIcon(str(ICON_PATH))

    def createInstance(self) -> ReferringChangeAlgorithm:
        """Return a fresh copy for each run."""
        return ReferringChangeAlgorithm()

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        """Declare the parameters and outputs."""
        settings = current_settings()
        self._models = model_names(settings)
        self.addParameter(QgsProcessingParameterRasterLayer(self.BEFORE, "Before raster"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.AFTER, "After raster"))
        for name, label, parent in (
            (self.BEFORE_BANDS, "Before bands (empty: all, or red/green/blue)", self.BEFORE),
            (self.AFTER_BANDS, "After bands (empty: like the before bands)", self.AFTER),
        ):
            self.addParameter(
                QgsProcessingParameterBand(
                    name, label, None, parent, optional=True, allowMultiple=True
                )
            )
        self.addParameter(
            QgsProcessingParameterString(
                self.QUERY,
                "What changed (text query; several: one per line or separated by ';'; "
                "empty: any change)",
                "",
                True,
                True,
            )
        )
        default_model = DEFAULT_MODEL if DEFAULT_MODEL in self._models else self._models[0]
        self.addParameter(
            QgsProcessingParameterEnum(
                self.MODEL,
                "Model",
                self._models,
                allowMultiple=False,
                defaultValue=default_model,
                usesStaticStrings=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.CHECKPOINT,
                "Checkpoint folder (overrides the model)",
                behavior=QgsProcessingParameterFile.Folder,
                optional=True,
            )
        )
        # Defaults and bounds are the engine's: an empty number takes its default, and the engine
        # checks every value (the same check as the CLI's).
        self.addParameter(
            QgsProcessingParameterNumber(
                self.THRESHOLD,
                f"Probability threshold ({ENGINE_DEFAULT})",
                QgsProcessingParameterNumber.Double,
                None,
                True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MIN_AREA,
                "Minimum polygon area (m²)",
                QgsProcessingParameterNumber.Double,
                0.0,
                False,
                0.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterExtent(
                self.EXTENT, "Process only this extent (empty: the whole pair)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.AREA,
                "Process only inside these polygons (area of interest)",
                [QgsProcessing.TypeVectorPolygon],
                optional=True,
            )
        )
        advanced = [
            QgsProcessingParameterMultipleLayers(
                self.BEFORE_MORE,
                "More before bands: single-band rasters stacked after the before raster",
                QgsProcessing.TypeRaster,
                optional=True,
            ),
            QgsProcessingParameterMultipleLayers(
                self.AFTER_MORE,
                "More after bands: single-band rasters stacked after the after raster",
                QgsProcessing.TypeRaster,
                optional=True,
            ),
            QgsProcessingParameterString(
                self.BEFORE_DATE,
                "Before acquisition date (YYYY-MM-DD; empty: from the raster's tags)",
                optional=True,
            ),
            QgsProcessingParameterString(
                self.AFTER_DATE,
                "After acquisition date (YYYY-MM-DD; empty: from the raster's tags)",
                optional=True,
            ),
            QgsProcessingParameterNumber(
                self.SIMPLIFY,
                "Simplify tolerance (m)",
                QgsProcessingParameterNumber.Double,
                0.0,
                False,
                0.0,
            ),
            QgsProcessingParameterNumber(
                self.TILE_SIZE,
                f"Tile size (pixels; {ENGINE_DEFAULT})",
                QgsProcessingParameterNumber.Integer,
                None,
                True,
            ),
            QgsProcessingParameterNumber(
                self.OVERLAP,
                f"Tile overlap (pixels; {ENGINE_DEFAULT})",
                QgsProcessingParameterNumber.Integer,
                None,
                True,
            ),
            QgsProcessingParameterNumber(
                self.BATCH_SIZE,
                f"Batch size (tiles; {ENGINE_DEFAULT})",
                QgsProcessingParameterNumber.Integer,
                None,
                True,
            ),
            QgsProcessingParameterEnum(
                self.DEVICE, "Device", DEVICES, defaultValue=settings.device, usesStaticStrings=True
            ),
            QgsProcessingParameterEnum(
                self.MASK_TYPE,
                "Mask values",
                MASK_TYPES,
                defaultValue="probability",
                usesStaticStrings=True,
            ),
        ]
        for parameter in advanced:
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(parameter)
        output = QgsProcessingParameterVectorDestination(
            self.OUTPUT, "Changes", QgsProcessing.TypeVectorPolygon
        )
        output.setSupportsNonFileBasedOutput(False)  # the engine writes files
        self.addParameter(output)
        # Written and added to the map by default: the ramp lets a user judge the threshold by eye.
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.MASK, "Change probability raster", optional=True, createByDefault=True
            )
        )

    def _number(
        self, parameters: dict[str, Any], name: str, context: QgsProcessingContext, whole: bool
    ) -> Any:
        """Return an optional number parameter; None when it is not set (engine default)."""
        value = parameters.get(name)
        # Unset: absent, None, an empty string, or QGIS's NULL variant.
        if value is None or value == "" or (hasattr(value, "isNull") and value.isNull()):
            return None
        if whole:
            return self.parameterAsInt(parameters, name, context)
        return self.parameterAsDouble(parameters, name, context)

    def _image(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        role: str,
        folder: Path,
    ) -> tuple[str, tuple[int, ...] | None]:
        """Return one image's dataset (a stack when more bands are given) and its chosen bands."""
        layer_name, bands_name, more_name = {
            "before": (self.BEFORE, self.BEFORE_BANDS, self.BEFORE_MORE),
            "after": (self.AFTER, self.AFTER_BANDS, self.AFTER_MORE),
        }[role]
        source = raster_source(self.parameterAsRasterLayer(parameters, layer_name, context), role)
        more = self.parameterAsLayerList(parameters, more_name, context)
        bands = tuple(self.parameterAsInts(parameters, bands_name, context) or ()) or None
        if more:
            layers = [source, *(raster_source(layer, role) for layer in more)]
            return stack_layers(layers, folder, role), None  # the stack's bands, in order
        return source, bands

    def _area(
        self, parameters: dict[str, Any], context: QgsProcessingContext, folder: Path
    ) -> dict[str, Any]:
        """Return the request's extent and area-of-interest fields."""
        fields: dict[str, Any] = {}
        if parameters.get(self.EXTENT) not in (None, ""):
            rectangle = self.parameterAsExtent(parameters, self.EXTENT, context)
            if not rectangle.isNull() and not rectangle.isEmpty():
                crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
                fields["extent"] = (
                    rectangle.xMinimum(), rectangle.yMinimum(),
                    rectangle.xMaximum(), rectangle.yMaximum(),
                )  # fmt: skip
                fields["extent_crs"] = (crs.authid() or crs.toWkt()) if crs.isValid() else None
        if parameters.get(self.AREA) not in (None, ""):
            source = self.parameterAsSource(parameters, self.AREA, context)
            if source is not None:
                fields["aoi"] = export_area(source, folder, context)
        return fields

    def _request(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        output: str,
        mask: str,
        folder: Path,
    ) -> DetectRequest:
        before, bands_before = self._image(parameters, context, "before", folder)
        after, bands_after = self._image(parameters, context, "after", folder)
        checkpoint = self.parameterAsFile(parameters, self.CHECKPOINT, context)
        model = checkpoint or self.parameterAsEnumString(parameters, self.MODEL, context)
        dates = {
            field: self.parameterAsString(parameters, name, context).strip() or None
            for field, name in (("before_date", self.BEFORE_DATE), ("after_date", self.AFTER_DATE))
        }
        return DetectRequest(
            before=before,
            after=after,
            bands_before=bands_before,
            bands_after=bands_after,
            **self._area(parameters, context, folder),
            **dates,
            query=query_list_text(self.parameterAsString(parameters, self.QUERY, context)),
            output=output,
            mask_out=mask or None,
            mask_type=self.parameterAsEnumString(parameters, self.MASK_TYPE, context) or None,
            model=model or None,
            tile_size=self._number(parameters, self.TILE_SIZE, context, whole=True),
            overlap=self._number(parameters, self.OVERLAP, context, whole=True),
            batch_size=self._number(parameters, self.BATCH_SIZE, context, whole=True),
            device=self.parameterAsEnumString(parameters, self.DEVICE, context) or None,
            threshold=self._number(parameters, self.THRESHOLD, context, whole=False),
            min_area=self._number(parameters, self.MIN_AREA, context, whole=False),
            simplify=self._number(parameters, self.SIMPLIFY, context, whole=False),
        )

    def processAlgorithm(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Run the engine and return the written outputs."""
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        mask = self.parameterAsOutputLayer(parameters, self.MASK, context) or ""
        if not output or "|" in output or output.startswith(("memory:", "ogr:", "postgis:")):
            raise QgsProcessingException(f"OUTPUT must be a file, got {output!r}")
        native = Path(output).suffix.lower() in ENGINE_VECTOR_EXTENSIONS
        # The run's own files (a converted output, band stacks, area polygons) live here.
        scratch = tempfile.TemporaryDirectory(prefix="mtrs-qgis-")
        try:
            engine_output = output if native else str(Path(scratch.name) / "changes.fgb")
            request = self._request(parameters, context, engine_output, mask, Path(scratch.name))
            feedback.pushInfo(f"query: {request.query or '(any change)'}; model: {request.model}")
            try:
                summary = run_detection(
                    request,
                    current_settings(),
                    progress=feedback.setProgress,
                    log=feedback.pushInfo,
                    is_cancelled=feedback.isCanceled,
                )
            except RunCancelled as exc:
                raise QgsProcessingException(f"Cancelled: {exc}; earlier files are kept") from exc
            except RunFailed as exc:
                raise QgsProcessingException(str(exc)) from exc
            if not native:
                export_vector(Path(engine_output), output, context)
        finally:
            scratch.cleanup()
        if summary.polygons is not None:
            seconds = f" in {summary.seconds:.1f} s" if summary.seconds is not None else ""
            feedback.pushInfo(f"{summary.polygons} change polygons{seconds}")
        # A post-processor per run and output: QGIS deletes each after its use.
        if context.willLoadLayerOnCompletion(output):
            details = context.layerToLoadOnCompletionDetails(output)
            details.name = layer_name(request.query, summary)
            details.setPostProcessor(post_processor_for_run(StyleChangesLayer()))
        if mask and context.willLoadLayerOnCompletion(mask):
            details = context.layerToLoadOnCompletionDetails(mask)
            details.name = "Change probability"
            details.setPostProcessor(post_processor_for_run(StyleProbabilityLayer()))
        return {self.OUTPUT: output, self.MASK: mask or None}


class CheckEnvironmentAlgorithm(QgsProcessingAlgorithm):
    """Reports the mtrs version, torch version and CUDA availability of the engine's environment."""

    MTRS_VERSION = "MTRS_VERSION"
    TORCH_VERSION = "TORCH_VERSION"
    CUDA_AVAILABLE = "CUDA_AVAILABLE"
    EXECUTABLE = "EXECUTABLE"

    def name(self) -> str:
        """Algorithm id inside the provider."""
        return "check_environment"

    def displayName(self) -> str:
        """Name shown in the toolbox."""
        return "Check environment"

    def shortHelpString(self) -> str:
        """Help shown beside the dialog."""
        return (
            "Shows which mtrs-geo environment the plugin uses (in-process or the mtrs command), "
            "with its mtrs and torch versions, whether CUDA is available, and the registered "
            "models."
        )

    def icon(self) -> QIcon:
        """Return the plugin icon."""
        return QIcon(str(ICON_PATH))

    def createInstance(self) -> CheckEnvironmentAlgorithm:
        """Return a fresh copy for each run."""
        return CheckEnvironmentAlgorithm()

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        """Declare the outputs (no parameters)."""
        self.addOutput(QgsProcessingOutputString(self.EXECUTABLE, "Engine"))
        self.addOutput(QgsProcessingOutputString(self.MTRS_VERSION, "mtrs version"))
        self.addOutput(QgsProcessingOutputString(self.TORCH_VERSION, "torch version"))
        self.addOutput(QgsProcessingOutputBoolean(self.CUDA_AVAILABLE, "CUDA available"))

    def processAlgorithm(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Probe the environment and report it."""
        try:
            report = check_environment(current_settings())
        except EnvironmentProblem as exc:
            raise QgsProcessingException(str(exc)) from exc
        for line in report.lines():
            feedback.pushInfo(line)
        return {
            self.EXECUTABLE: report.executable,
            self.MTRS_VERSION: report.mtrs_version,
            self.TORCH_VERSION: report.torch_version,
            self.CUDA_AVAILABLE: report.cuda_available,
        }
