"""Measure the first and second query on one pair in a headless QGIS (figures for the README).

Run with QGIS's Python, the project's venv set as the plugin's environment::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_suite/measure_warm.py

Each query runs through ``processing.runAndLoadResults`` (the dialog's path) with ``mtrefseg-r1`` on
the bundled 6-band sample (bands left to their defaults), and prints seconds to the first tile
(from the request to the engine's first finished batch, as the plugin logs it) and in total.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
home = Path(tempfile.mkdtemp(prefix="mtrs-qgis-home-"))
os.environ.update(HOME=str(home), XDG_RUNTIME_DIR=str(home))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import conftest  # noqa: E402


def main() -> None:
    """Run the queries and print one JSON line per query."""
    import importlib

    import qgis.utils
    from qgis.core import QgsSettings
    from qgis.testing import start_app

    start_app()
    qgis.utils.iface = conftest.make_iface()
    sys.path.append(str(conftest.QGIS_PROCESSING_PLUGINS))
    from processing.core.Processing import Processing

    Processing.initialize()
    import processing

    build = conftest._build_plugin_module()
    plugins = Path(tempfile.mkdtemp())
    build.stage_plugin(plugins)
    sys.path.insert(0, str(plugins))
    QgsSettings().setValue("Processing/Configuration/MTRS_ENVIRONMENT", str(conftest.MTRS))
    plugin = importlib.import_module(conftest.PLUGIN_FOLDER).classFactory(None)
    plugin.initProcessing()
    sample = Path(tempfile.mkdtemp())
    from mtrs_geo_plugin.worker import stop_workers

    try:
        import subprocess

        subprocess.run([str(conftest.MTRS), "sample", str(sample)], check=True, capture_output=True)
        from qgis.core import QgsProcessingFeedback

        class Feedback(QgsProcessingFeedback):
            def __init__(self) -> None:
                super().__init__()
                self.lines: list[str] = []

            def pushInfo(self, info: str) -> None:  # noqa: N802 - QGIS API
                self.lines.append(info)

        for index, query in enumerate(["new buildings", "new roads", "new buildings"]):
            feedback = Feedback()
            started = time.monotonic()
            processing.runAndLoadResults(
                "mtrs:referring_change_segmentation",
                {
                    "BEFORE": str(sample / "before.tif"),
                    "AFTER": str(sample / "after.tif"),
                    "MODEL": "mtrefseg-r1",
                    "QUERY": query,
                    "OUTPUT": str(sample / f"changes_{index}.gpkg"),
                },
                feedback=feedback,
            )
            total = time.monotonic() - started
            first = next(line for line in feedback.lines if line.startswith("predicting after "))
            print(
                json.dumps(
                    {
                        "query": index + 1,
                        "text": query,
                        "first_tile_s": float(first.split()[2]),
                        "total_s": round(total, 2),
                    }
                )
            )
    finally:
        stop_workers()
        plugin.unload()


if __name__ == "__main__":
    main()
