"""The one interface between the engine and every change model, and the model registry.

A model takes a batch of before tiles, a batch of after tiles (both already aligned on the same grid
and normalized with :func:`mtrs_geo.normalize.percentile_stretch`, values mostly in [0, 1], numpy
float32, shape ``(B, C, H, W)``) and returns a per-pixel change probability ``(B, H, W)`` float32
in [0, 1]. The query is encoded once per run by :meth:`ChangeModel.prepare`, not per tile.

The interface speaks numpy so that the engine never imports a deep-learning framework itself: a
numpy model (``cva``) runs without torch in the process. Torch models derive from
:class:`mtrs_geo.torch_model.TorchChangeModel`, which moves batches to their device and back.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtrs_geo.device import parse_device
from mtrs_geo.errors import InputError, ModelError


@dataclass(frozen=True)
class ModelInfo:
    """What ``mtrs models`` prints about a model."""

    name: str
    description: str
    query_aware: bool
    in_channels: int | None  # None: any band count (the same in both images)
    needs: str  # human-readable: bands, device, checkpoint
    trained_on: str = "-"
    size: str = "-"
    understands: str = "-"  # what a query-aware model can be asked (classes, directions, places)


class ChangeModel(abc.ABC):
    """Base class of every model the engine can run; this base runs on the CPU only."""

    info: ModelInfo
    device: str = "cpu"  # where the model runs, as torch names it ("cpu", "cuda:0", ...)
    # True: the engine streams every tile of the scene through calibrate_scene() before predicting.
    scene_pass: bool = False
    # The queries of prepare_queries(), in order (one None: the single query of prepare()).
    _queries: tuple[str | None, ...] = (None,)

    def to(self, device: str) -> ChangeModel:
        """Run on ``device`` (``auto | cpu | cuda[:N] | mps``) and return the model.

        Raises:
            InputError: an unknown device name, or one this model cannot run on.

        """
        if parse_device(device) not in ("auto", "cpu"):
            raise InputError(
                f"model {self.info.name!r} runs on the CPU only: choose device auto or cpu"
            )
        self.device = "cpu"
        return self

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Hold what a run's predictions need (threads, inference mode); entered once per run."""
        yield

    def prepare(self, query: str | None) -> None:  # noqa: B027 - optional hook
        """Encode the query once per run; ``None`` or empty means "any change" (stage-1 mode)."""

    def preparing_note(self, queries: Sequence[str | None]) -> str | None:
        """Return what :meth:`prepare_queries` will cost, when worth telling a user (else None)."""
        return None

    def prepare_queries(self, queries: Sequence[str | None]) -> None:
        """Take several queries for :meth:`predict_queries` (once per run).

        This default prepares a single query with :meth:`prepare`; with several, a model that
        ignores queries predicts once, and a query-aware one runs one query after another.
        Query-aware models override it (and :meth:`predict_queries`) to share the query-free work.
        """
        self._queries = tuple(queries) or (None,)
        if len(self._queries) == 1 or not self.info.query_aware:
            self.prepare(self._queries[0])

    def predict_queries(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Return the float32 probability ``(Q, B, H, W)`` of each query of :meth:`prepare_queries`.

        The engine may modify the returned array in place.
        """
        if len(self._queries) == 1:
            return self.predict(before, after)[None]
        if not self.info.query_aware:  # one answer, whatever the question
            return np.repeat(self.predict(before, after)[None], len(self._queries), axis=0)
        answers = []
        for query in self._queries:
            self.prepare(query)
            answers.append(self.predict(before, after))
        return np.stack(answers)

    def cut_at(self, threshold: float | None) -> None:  # noqa: B027 - optional hook
        """Take the probability the run's masks are cut at (``0 < threshold <= 1``), once a run.

        A model may then skip work that cannot bring a pixel to it; its answers below the
        threshold may differ from those of a run that did not say it. None: every answer must be
        exact (a run that writes probabilities; a cached model hears it again each run).
        """

    def calibrate(  # noqa: B027 - optional hook
        self, before: np.ndarray, after: np.ndarray, valid: np.ndarray
    ) -> None:
        """See scene-wide samples before tiling (``valid`` is ``(B, H, W)`` bool).

        Models whose output depends on scene statistics (a global threshold, say) fix them here so
        that every tile is predicted the same way and tiles stitch without seams.
        """

    def calibrate_scene(self, batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """See every tile of the scene once, as ``(before, after, valid)`` batches (``scene_pass``).

        Called after :meth:`calibrate` and before the first :meth:`predict`, only for models whose
        ``scene_pass`` is True: a statistic of the whole scene (a histogram) costs a streamed read
        of the scene, in constant memory. The arrays are only valid during one iteration. This
        default is :meth:`settle_scene` of the one :meth:`scene_summary` of every batch: a model
        implements those two, and a cluster then summarizes the parts of a scene on its workers.
        """
        self.settle_scene([self.scene_summary(batches)])

    def scene_summary(self, batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Any:
        """Summarize the tiles of a part of the scene (a histogram, say; small and picklable).

        The summaries of parts that together hold every pixel once go to :meth:`settle_scene`; the
        statistic must not depend on how the scene was cut. The default summarizes nothing.
        """
        return None

    def settle_scene(self, summaries: Sequence[Any]) -> None:  # noqa: B027 - optional hook
        """Fix the scene-wide statistic from the :meth:`scene_summary` of every part of it."""

    def calibration(self) -> dict[str, Any] | None:
        """Return what :meth:`calibrate` and :meth:`settle_scene` fixed, small and picklable.

        A cluster run calibrates one copy of the model and hands this to the copies that predict
        the scene's panels (:meth:`restore_calibration`). ``{}``: the model keeps no calibration
        (this default for a model that overrides neither hook); None: it does, but cannot hand it
        over, so its scenes cannot be split among workers.
        """
        own = type(self)
        calibrates = own.calibrate is not ChangeModel.calibrate or self.scene_pass
        return None if calibrates else {}

    def restore_calibration(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Take the :meth:`calibration` of another copy of this model (same name and device)."""

    @abc.abstractmethod
    def predict(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Return the float32 change probability ``(B, H, W)`` of normalized ``(B, C, H, W)`` tiles.

        The engine may modify the returned array in place.
        """


class PixelScoreModel(ChangeModel):
    """A model whose answer at a pixel is a function of one score of that pixel alone.

    :meth:`predict` is :meth:`probabilities` of :meth:`scores`, and the calibration those
    probabilities follow is fixed by the scene's scores (:meth:`settle_scene` of the summed
    :meth:`score_summary` of every part): no pixel's answer depends on its neighbours or on the
    tile it is seen in. The engine then decodes the scene once (:mod:`mtrs_geo.score_pass`): one
    pass computes and keeps every pixel's score while it sums their summaries, and the kept scores
    become the probabilities of the overlapping tiles.
    """

    scene_pass = True

    @abc.abstractmethod
    def scores(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Return the float32 score ``(B, H, W)`` of normalized tiles (finite at valid pixels)."""

    @abc.abstractmethod
    def score_summary(self, scores: np.ndarray, valid: np.ndarray) -> Any:
        """Summarize the valid pixels' scores (a histogram, say); may overwrite ``scores``."""

    @abc.abstractmethod
    def merge_summaries(self, summaries: Sequence[Any]) -> Any:
        """Return the one summary of several parts (as :meth:`settle_scene` would count them)."""

    @abc.abstractmethod
    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Return the float32 probabilities of ``scores``, computed in place in ``scores``."""

    def min_score(self, probability: float) -> float:
        """Return a score below which no probability reaches ``probability`` (0 < it < 1).

        The engine computes the probabilities of the pixels at or above it only, when nothing but
        the changed pixels is asked for (polygons without a probability raster). The default,
        ``-inf``, computes every pixel's; a model with monotone probabilities returns a bound
        a little below its exact cut (the pixels in between get their exact probabilities).
        """
        return -math.inf

    def scene_summary(self, batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Any:
        """Return the merged :meth:`score_summary` of every batch's scores."""
        total = None
        for before, after, valid in batches:
            summary = self.score_summary(self.scores(before, after), valid)
            total = summary if total is None else self.merge_summaries([total, summary])
        return total


# name -> module. Each module exports ``MODEL_INFO: ModelInfo`` and
# ``build_model(device=None) -> ChangeModel``; they are imported lazily so the CLI starts fast.
_REGISTRY: dict[str, str] = {
    "cva": "mtrs_geo.baselines.cva",
    "mtrefseg-r1": "mtrs_geo.models.inference",
    "mtrefseg-r1-both-ways": "mtrs_geo.models.time_symmetric",
}


def registered_names() -> list[str]:
    """Names accepted by ``--model`` besides a checkpoint folder."""
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """Describe a registered model without loading its weights."""
    info = getattr(importlib.import_module(_REGISTRY[name]), "MODEL_INFO", None)
    if not isinstance(info, ModelInfo):
        raise ModelError(f"model {name!r} does not describe itself")
    return info


def load_model(name_or_path: str, device: str | None = None) -> ChangeModel:
    """Build a registered model by name, or load a checkpoint folder by path.

    With ``device`` the model comes back on it (:meth:`ChangeModel.to`), and a model with a faster
    runtime for that device loads in it (MTRefSeg-R1 on the CPU: ONNX Runtime, when its checkpoint
    carries the graphs).
    """
    if name_or_path in _REGISTRY:
        model = importlib.import_module(_REGISTRY[name_or_path]).build_model(device=device)
    elif Path(name_or_path).is_dir():
        from mtrs_geo.models.inference import load_checkpoint  # heavy import, only when asked

        model = load_checkpoint(Path(name_or_path), device=device)
    else:
        known = ", ".join(registered_names())
        raise ModelError(
            f"unknown model {name_or_path!r}: use one of {known} or a checkpoint folder"
        )
    if not isinstance(model, ChangeModel):
        raise ModelError(f"model {name_or_path!r} does not implement the ChangeModel interface")
    return model
