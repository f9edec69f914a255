"""The plugin object QGIS loads: Processing provider, menu entries and a toolbar button."""

from __future__ import annotations

from typing import Any

from qgis.core import Qgis, QgsApplication
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QApplication, QMessageBox, QWidget

from .algorithm import ICON_PATH
from .backend import check_environment
from .environment import EnvironmentProblem
from .provider import MtrsProvider
from .settings import GROUP, current_settings
from .worker import stop_workers

MENU = "&MTRS change detection"
ALGORITHM_ID = "mtrs:referring_change_segmentation"
OPTIONS_PAGE = "processingOptions"  # object name of Processing's page in QGIS's options dialog


def select_settings_group(config_widget: Any, group: str = GROUP) -> bool:
    """Expand and select a provider's settings in Processing's options tree.

    The label column is kept to at most half the tree's width, so long labels never push the
    values out of sight. Returns whether the group was found.
    """
    tree, root = config_widget.tree, config_widget.model.invisibleRootItem()
    for row in range(root.rowCount()):
        parent = root.child(row)
        for child_row in range(parent.rowCount()):
            item = parent.child(child_row)
            if item.text() != group:
                continue
            tree.expand(parent.index())
            tree.expand(item.index())
            tree.setCurrentIndex(item.index())
            tree.scrollTo(item.index())
            config_widget.adjustColumns()
            half = max(tree.viewport().width() // 2, 200)
            tree.setColumnWidth(0, min(tree.columnWidth(0), half))
            return True
    return False


def reveal_provider_settings() -> bool:
    """Select the MTRS settings in the open Processing options page; whether one was open."""
    for top in QApplication.topLevelWidgets():
        pages = [top] if top.objectName() == OPTIONS_PAGE else []
        pages += top.findChildren(QWidget, OPTIONS_PAGE)
        for page in pages:
            config_widget = getattr(page, "config_widget", None)
            if config_widget is not None and select_settings_group(config_widget):
                return True
    return False


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
        if self.dialog is not None and not sip.isdeleted(self.dialog):  # closed: deleted later
            self.dialog.close()
        self.dialog = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        stop_workers()  # the warm engine ends with the plugin

    def open_algorithm_dialog(self) -> None:
        """Show the algorithm's Processing dialog (non-modal, like the toolbox does)."""
        import processing

        self.dialog = processing.createAlgorithmDialog(ALGORITHM_ID, {})
        self.dialog.show()

    def open_settings(self) -> None:
        """Open Processing's options with the MTRS provider's settings expanded and selected."""
        # The options dialog is modal: the MTRS group is selected once it is shown.
        QTimer.singleShot(0, reveal_provider_settings)
        self.iface.showOptionsDialog(self.iface.mainWindow(), currentPage=OPTIONS_PAGE)

    def show_environment(self) -> None:
        """Probe the engine's environment and show the mtrs and torch versions and CUDA.

        The probe starts the warm engine (seconds): a message says so while it works. A problem
        comes with a button that opens the settings.
        """
        bar = self.iface.messageBar()
        bar.pushMessage(
            "MTRS", "checking the engine's environment (starting the engine)…", Qgis.Info, 5
        )
        QApplication.processEvents()
        QApplication.setOverrideCursor(Qt.WaitCursor)
        try:
            lines = check_environment(current_settings()).lines()
            title, text, ok = "MTRS environment", "\n".join(lines), True
        except EnvironmentProblem as exc:
            title, text, ok = "MTRS environment problem", str(exc), False
        finally:
            QApplication.restoreOverrideCursor()
        icon = QMessageBox.Information if ok else QMessageBox.Warning
        box = QMessageBox(icon, title, text, QMessageBox.Close, self.iface.mainWindow())
        settings = None if ok else box.addButton("Settings…", QMessageBox.ActionRole)
        box.exec_()
        if settings is not None and box.clickedButton() is settings:
            self.open_settings()
