"""The plugin as QGIS's loader starts it with a GUI: classFactory, menu, toolbar, dialog, unload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import PLUGIN_FOLDER

ALGORITHM_ID = "mtrs:referring_change_segmentation"


def test_plugin_starts_through_class_factory_with_menu_toolbar_and_dialog(
    qgis_app: Any, plugin_dir: Path, mtrs_executable: Path, slot_errors: list[BaseException]
) -> None:
    import qgis.utils
    from qgis.core import QgsApplication, QgsSettings
    from qgis.PyQt.QtCore import QTimer
    from qgis.PyQt.QtWidgets import QApplication

    QgsSettings().setValue("Processing/Configuration/MTRS_ENVIRONMENT", str(mtrs_executable))
    iface = qgis.utils.iface
    qgis.utils.plugin_paths = [str(plugin_dir)]
    qgis.utils.updateAvailablePlugins()
    assert PLUGIN_FOLDER in qgis.utils.available_plugins
    assert qgis.utils.pluginMetadata(PLUGIN_FOLDER, "hasProcessingProvider") == "yes"

    assert qgis.utils.loadPlugin(PLUGIN_FOLDER)
    assert qgis.utils.startPlugin(PLUGIN_FOLDER)  # classFactory(iface), then initGui()
    plugin = qgis.utils.plugins[PLUGIN_FOLDER]
    try:
        registry = QgsApplication.processingRegistry()
        provider = registry.providerById("mtrs")
        assert provider is not None and provider.name() == "MTRS"
        assert {alg.id() for alg in provider.algorithms()} == {
            ALGORITHM_ID,
            "mtrs:check_environment",
        }

        menu_actions = [call.args[1] for call in iface.addPluginToRasterMenu.call_args_list]
        assert [action.text() for action in menu_actions] == [
            "Referring change segmentation…",
            "Check environment",
            "Settings…",
        ]
        toolbar_action = iface.addToolBarIcon.call_args.args[0]
        assert toolbar_action is menu_actions[0]
        assert not toolbar_action.icon().isNull()

        toolbar_action.trigger()  # opens the algorithm's Processing dialog
        assert slot_errors == []
        dialog = plugin.dialog
        assert dialog is not None and dialog.isVisible()
        assert dialog.algorithm().id() == ALGORITHM_ID
        dialog.close()

        shown: list[str] = []

        def read_and_close_message_box() -> None:
            box = QApplication.activeModalWidget()
            if box is None:  # not shown yet: the probe is still running
                QTimer.singleShot(200, read_and_close_message_box)
                return
            shown.append(box.text())
            box.done(0)

        QTimer.singleShot(200, read_and_close_message_box)
        menu_actions[1].trigger()  # Check environment: a message box with the versions
        assert len(shown) == 1
        assert f"mtrs: {mtrs_executable}" in shown[0].splitlines()
        assert any(line.startswith("torch version: ") for line in shown[0].splitlines())
        assert any(line.startswith("CUDA available: ") for line in shown[0].splitlines())

        menu_actions[2].trigger()  # Settings…: Processing's options, where the MTRS settings are
        iface.showOptionsDialog.assert_called_once_with(
            iface.mainWindow(), currentPage="processingOptions"
        )
        assert slot_errors == []
    finally:
        assert qgis.utils.unloadPlugin(PLUGIN_FOLDER)

    assert QgsApplication.processingRegistry().providerById("mtrs") is None
    assert iface.removePluginRasterMenu.call_count == 3


def test_environment_problem_offers_a_button_that_opens_the_settings(
    qgis_app: Any, plugin_dir: Path, slot_errors: list[BaseException], tmp_path: Path
) -> None:
    import qgis.utils
    from qgis.core import QgsSettings
    from qgis.PyQt.QtCore import QTimer
    from qgis.PyQt.QtWidgets import QApplication

    iface = qgis.utils.iface
    iface.showOptionsDialog.reset_mock()
    qgis.utils.plugin_paths = [str(plugin_dir)]
    qgis.utils.updateAvailablePlugins()
    assert qgis.utils.loadPlugin(PLUGIN_FOLDER) and qgis.utils.startPlugin(PLUGIN_FOLDER)
    plugin = qgis.utils.plugins[PLUGIN_FOLDER]
    key = "Processing/Configuration/MTRS_ENVIRONMENT"
    saved = QgsSettings().value(key)
    from processing.core.ProcessingConfig import ProcessingConfig

    ProcessingConfig.setSettingValue("MTRS_ENVIRONMENT", str(tmp_path))  # a folder without mtrs
    shown: list[str] = []

    def press_settings() -> None:
        box = QApplication.activeModalWidget()
        if box is None:
            QTimer.singleShot(100, press_settings)
            return
        shown.append(box.text())
        (button,) = [b for b in box.buttons() if b.text() == "Settings…"]
        button.click()

    try:
        QTimer.singleShot(100, press_settings)
        plugin.show_environment()
        assert shown and "mtrs-geo was not found" in shown[0]
        iface.showOptionsDialog.assert_called_once_with(
            iface.mainWindow(), currentPage="processingOptions"
        )
        assert slot_errors == []
    finally:
        ProcessingConfig.setSettingValue("MTRS_ENVIRONMENT", saved or "")
        assert qgis.utils.unloadPlugin(PLUGIN_FOLDER)
