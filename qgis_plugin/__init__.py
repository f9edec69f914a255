"""QGIS plugin "MTRS change detection": the changes a text query describes, between two rasters.

QGIS calls :func:`classFactory`; everything else is imported only then, so QGIS starts fast.
"""

from __future__ import annotations

from typing import Any


def classFactory(iface: Any) -> Any:  # noqa: N802 - the name QGIS looks for
    """Create the plugin for QGIS (``iface`` is None under ``qgis_process``)."""
    from .plugin import MtrsPlugin

    return MtrsPlugin(iface)
