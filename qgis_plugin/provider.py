"""The Processing provider "MTRS"."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithm import CheckEnvironmentAlgorithm, ReferringChangeAlgorithm
from .settings import register_settings, unregister_settings
from .worker import stop_workers

PROVIDER_ICON_PATH = Path(__file__).resolve().parent / "provider.svg"


class MtrsProvider(QgsProcessingProvider):
    """Holds the plugin's algorithms and its settings in Processing's options."""

    def id(self) -> str:
        """Return the provider id: algorithms are ``mtrs:<name>``."""
        return "mtrs"

    def name(self) -> str:
        """Name shown in the toolbox."""
        return "MTRS"

    def longName(self) -> str:
        """Longer name shown in tooltips."""
        return "MTRS: language-described change detection (mtrs-geo)"

    def icon(self) -> QIcon:
        """Return the provider's own icon (toolbox, Processing options)."""
        return QIcon(str(PROVIDER_ICON_PATH))

    def svgIconPath(self) -> str:  # noqa: N802 - QGIS API
        """Return the path of the provider's icon."""
        return str(PROVIDER_ICON_PATH)

    def load(self) -> bool:
        """Register the settings, then the algorithms."""
        register_settings()
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        """Stop the warm engine and remove the settings from Processing's options."""
        stop_workers()
        unregister_settings()

    def loadAlgorithms(self) -> None:
        """Add the algorithms (called by ``refreshAlgorithms``)."""
        self.addAlgorithm(ReferringChangeAlgorithm())
        self.addAlgorithm(CheckEnvironmentAlgorithm())

    def supportedOutputRasterLayerExtensions(self) -> list[str]:
        """Offer GeoTIFF only: the engine writes its raster as a Cloud-Optimized GeoTIFF."""
        return ["tif"]
