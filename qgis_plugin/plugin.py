"""The plugin object QGIS loads: Processing provider, menu entries and a toolbar button."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QApplication, QMessageBox

from .algorithm import ICON_PATH
from .backend import check_environment
from .environment import EnvironmentProblem
from .provider import MtrsProvider
from .settings import current_settings

MENU = "&MTRS change detection"
ALGORITHM_ID = "mtrs:referring_change_segmentation"


class MtrsPlugin:
    """Registers the provider (also headless, for ``qgis_process``) and, with a GUI, its actions."""

    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.provider: MtrsProvider | None = None
        self.actions: list[QAction] = []
        self.dialog: Any = None

    def initProcessing(self) -> None:  # noqa: N802 - QGIS plugin API
        """Add the Processing provider (called by QGIS, also without a GUI)."""
        if self.provider is None:
            self.provider = MtrsProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 - QGIS plugin API
        """Add the provider, the Raster menu entries and the toolbar button."""
        self.initProcessing()
        window = self.iface.mainWindow()
        run = QAction(QIcon(str(ICON_PATH)), "Referring change segmentation…", window)
        run.setObjectName("mtrsRunAlgorithm")
        run.triggered.connect(self.open_algorithm_dialog)
        check = QAction("Check environment", window)
        check.setObjectName("mtrsCheckEnvironment")
        check.triggered.connect(self.show_environment)
        options = QAction("Settings…", window)
        options.setObjectName("mtrsSettings")
        options.triggered.connect(self.open_settings)
        for action in (run, check, options):
            self.iface.addPluginToRasterMenu(MENU, action)
        self.iface.addToolBarIcon(run)
        self.actions = [run, check, options]

    def unload(self) -> None:
        """Remove everything :meth:`initGui` and :meth:`initProcessing` added."""
        for action in self.actions:
            self.iface.removePluginRasterMenu(MENU, action)
            self.iface.removeToolBarIcon(action)
        self.actions = []
        if self.dialog is not None:
            self.dialog.close()
            self.dialog = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    def open_algorithm_dialog(self) -> None:
        """Show the algorithm's Processing dialog (non-modal, like the toolbox does)."""
        import processing

        self.dialog = processing.createAlgorithmDialog(ALGORITHM_ID, {})
        self.dialog.show()

    def open_settings(self) -> None:
        """Open Processing's options on the providers page, where the MTRS settings are."""
        self.iface.showOptionsDialog(self.iface.mainWindow(), currentPage="processingOptions")

    def show_environment(self) -> None:
        """Probe the engine's environment and show the mtrs and torch versions and CUDA."""
        QApplication.setOverrideCursor(Qt.WaitCursor)
        try:
            lines = check_environment(current_settings()).lines()
            title, text, ok = "MTRS environment", "\n".join(lines), True
        except EnvironmentProblem as exc:
            title, text, ok = "MTRS environment problem", str(exc), False
        finally:
            QApplication.restoreOverrideCursor()
        box = QMessageBox.information if ok else QMessageBox.warning
        box(self.iface.mainWindow(), title, text)
