"""Score a model or a folder of predicted masks on dataset splits with the paper's metrics.

Models run through the :class:`~mtrs_geo.model_api.ChangeModel` interface directly, one image
pair at a time with per-image statistics (dataset samples are not georeferenced). Each prediction
is brought back to the ground truth's original resolution (the resize or padding done for the
model is undone) before it is binarized at 0.5 and scored (definitions:
:mod:`mtrs_geo.models.metrics`). Splits of georeferenced scenes run through the full engine.

- :mod:`.chips`: dataset splits opened by layout, a model run on each pair
  (:func:`predict_sample`, :func:`evaluate_model`);
- :mod:`.predictions`: folders of predicted PNG masks, written and scored;
- :mod:`.scenes`: georeferenced scenes scored through the engine;
- :mod:`.splits`: :func:`evaluate_splits`, :func:`benchmark` and the report;
- :mod:`.guard`: the checks made before anything is scored (no input overwritten by the report or
  the saved predictions, no checkpoint scored on the scenes it was trained on).

Every name is importable from this package, as it was from the single module it replaces.
"""

from mtrs_geo.models.evaluate.chips import (
    ANY_SUFFIX,
    PAD_MULTIPLE,
    evaluate_model,
    load_model_spec,
    open_split,
    parse_model_spec,
    predict_sample,
)
from mtrs_geo.models.evaluate.predictions import (
    evaluate_predictions,
    ground_truths,
    read_prediction,
    resize_probability,
    save_prediction,
)
from mtrs_geo.models.evaluate.scenes import (
    SCENE_RASTER_SUFFIXES,
    SCENE_VECTOR_SUFFIXES,
    evaluate_scene,
    evaluate_scenes,
    is_scene_split,
    scene_files,
    scene_folders,
)
from mtrs_geo.models.evaluate.splits import (
    benchmark,
    evaluate_splits,
    split_label,
    split_name,
    write_report,
)

__all__ = [
    "ANY_SUFFIX",
    "PAD_MULTIPLE",
    "SCENE_RASTER_SUFFIXES",
    "SCENE_VECTOR_SUFFIXES",
    "benchmark",
    "evaluate_model",
    "evaluate_predictions",
    "evaluate_scene",
    "evaluate_scenes",
    "evaluate_splits",
    "ground_truths",
    "is_scene_split",
    "load_model_spec",
    "open_split",
    "parse_model_spec",
    "predict_sample",
    "read_prediction",
    "resize_probability",
    "save_prediction",
    "scene_files",
    "scene_folders",
    "split_label",
    "split_name",
    "write_report",
]
