"""Does the model follow the words? Per query class and direction, on held-out pairs only.

Five sets, none of which the bundled checkpoint was trained on:

* ``synthetic``: object-level changes (roofs, water, vegetation appearing, vanishing, burnt)
  composed over the *held-out* ground images with objects cut from *held-out* scenes
  (``mtrs_geo.craft.donors``: a fixed scene-level split of ../shared/data);
* ``real``: the held-out real pairs: LEVIR-CD / EGY-BCD (new buildings; also time-reversed,
  where the same buildings are "demolished"), OMBRIA (flood water appeared), OSCD cities (new
  buildings and roads), SZTAKI and DSIFN (any change);
* ``shifted``: the ``real`` pairs with the after image moved by half a pixel along both axes
  (bilinear), as a pair is once the engine warps one date onto the other's grid: a model should
  score about as on ``real``;
* ``roofs``: generated georeferenced GeoTIFF pairs in which identical roofs appear in some places
  and vanish in others, run through ``mtrs detect`` itself (default threshold), as a user would;
* ``oscd``: the held-out OSCD cities as georeferenced scenes through ``mtrs detect`` at six tilings
  (tile side and overlap, the default first), each city also turned and flipped the eight ways of
  the square: F1 of "new buildings and roads" at each. One city's few dozen changed objects give
  an F1 that moves by several points with where the tile edges fall and which way is up, so the
  mean over orientations and tilings is the figure to compare, not one draw.

Per query: IoU with the right answer (mean over pairs with a target, and overall), pixel F1, the
predicted area where the right answer is empty, and the IoU between the masks of contrasting
queries on the same pairs ("new X" vs "demolished X", "X" vs "Y"). The query-blind ``cva`` baseline
is scored the same way (one mask for every query).

    .venv/bin/python benchmarks/language.py --out runs/language_board     # JSON + markdown
    .venv/bin/python benchmarks/language.py --model runs/language/final --pairs 40
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

# (class, direction) -> the words a user would type.
QUERIES: dict[tuple[str, str], str] = {
    ("building", "appeared"): "new buildings",
    ("building", "disappeared"): "demolished buildings",
    ("water", "appeared"): "new water",
    ("water", "disappeared"): "water that disappeared",
    ("vegetation", "appeared"): "new vegetation",
    ("vegetation", "disappeared"): "cleared vegetation",
}
CONTRASTS = (
    ("new buildings", "demolished buildings"),
    ("new water", "water that disappeared"),
    ("new vegetation", "cleared vegetation"),
    ("new buildings", "new water"),
    ("new buildings", "new vegetation"),
    ("new water", "new vegetation"),
)
ANY = "any change"


@dataclass
class QueryScore:
    """Running sums for one (set, query, model)."""

    ious: list[float] = field(default_factory=list)
    tp: int = 0
    fp: int = 0
    fn: int = 0
    empty_area: list[float] = field(default_factory=list)

    def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
        """Score one pair."""
        tp = int((pred & truth).sum())
        fp, fn = int((pred & ~truth).sum()), int((~pred & truth).sum())
        self.tp, self.fp, self.fn = self.tp + tp, self.fp + fp, self.fn + fn
        if truth.any():
            self.ious.append(tp / max(tp + fp + fn, 1))
        else:
            self.empty_area.append(float(pred.mean()))

    def row(self) -> dict[str, float | int | None]:
        """Percentages (None where no pair of that kind was seen)."""
        union = self.tp + self.fp + self.fn
        return {
            "pairs_with_target": len(self.ious),
            "mIoU": 100 * float(np.mean(self.ious)) if self.ious else None,
            "oIoU": 100 * self.tp / union if self.ious and union else None,
            "F1": 100 * 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.ious else None,
            "pairs_without_target": len(self.empty_area),
            "area_when_empty": 100 * float(np.mean(self.empty_area)) if self.empty_area else None,
        }


@dataclass(frozen=True)
class Case:
    """One evaluated pair: images (uint8 ``(3, H, W)``) and the right answer of each query."""

    name: str
    before: np.ndarray
    after: np.ndarray
    truths: dict[str, np.ndarray]


def synthetic_cases(count: int, seed: int) -> list[Case]:
    """Object-level changes over held-out grounds with held-out objects."""
    from mtrs_geo.craft.donors import load_donors
    from mtrs_geo.craft.synthetic import SyntheticOptions, compose_pair

    donors = load_donors(SHARED, "held_out")
    fine = [g for g in donors.grounds if g.gsd <= 3.0]
    coarse = [g for g in donors.grounds if g.gsd > 3.0]
    options = SyntheticOptions(empty_share=0.05)
    cases = []
    for number in range(count):
        rng = np.random.default_rng((seed, number))
        pool = coarse if coarse and number % 4 == 3 else fine
        ground = pool[int(rng.integers(len(pool)))]
        pair = compose_pair(ground, donors.bank, rng, options, f"synthetic_{number}")
        truths = {}
        for (cls, direction), query in QUERIES.items():
            codes = [
                code
                for code, t in pair.transitions.items()
                if t.subject == cls and t.direction == direction
            ]
            truths[query] = np.isin(pair.change, codes)
        truths[ANY] = pair.change > 0
        cases.append(Case(pair.name, pair.rgb_before, pair.rgb_after, truths))
    return cases


def real_cases() -> list[Case]:
    """The held-out real pairs with the right answers their labels give."""
    from mtrs_geo.craft.donors import load_donors

    donors = load_donors(SHARED, "held_out", max_ombria_pairs=24)
    cases = []
    for pair in donors.pairs:
        source = pair.scene.split("/")[0]
        change = pair.change > 0
        empty = np.zeros_like(change)
        truths = {ANY: change}
        if source in ("levir-cd", "egy-bcd"):
            cases.append(
                Case(
                    pair.name + " (reversed)",
                    pair.rgb_after,
                    pair.rgb_before,
                    {ANY: change, "new buildings": empty, "demolished buildings": change,
                     "new water": empty},
                )
            )  # fmt: skip
            truths |= {"new buildings": change, "demolished buildings": empty, "new water": empty}
        elif source == "ombria-s2":
            truths |= {"new water": change, "flooded areas": change, "new buildings": empty}
        elif source == "oscd":
            truths |= {"new buildings and roads": change}
        cases.append(Case(pair.name, pair.rgb_before, pair.rgb_after, truths))
    return cases


def shifted_cases(cases: Iterable[Case], dx: float = 0.5, dy: float = 0.5) -> list[Case]:
    """The cases with the after image moved by ``(dx, dy)`` pixels (bilinear); answers kept."""
    import torch

    from mtrs_geo.models.augment import shift_image

    def shift(image: np.ndarray) -> np.ndarray:
        moved = shift_image(torch.from_numpy(image.astype(np.float32)), dx, dy)
        return np.clip(np.round(moved.numpy()), 0, 255).astype(np.uint8)

    return [
        Case(case.name + " (after shifted)", case.before, shift(case.after), case.truths)
        for case in cases
    ]


def predict(model: object, case: Case, query: str | None) -> np.ndarray:
    """Binary mask of ``model`` (a ChangeModel) for one case and query (default threshold)."""
    from mtrs_geo.models.data.sample import make_sample
    from mtrs_geo.models.evaluate import predict_sample

    model.prepare(query)  # type: ignore[attr-defined]
    sample = make_sample(case.before, case.after, np.zeros(case.before.shape[1:]), case.name)
    return predict_sample(model, sample, input_size=None) >= 0.5  # type: ignore[arg-type]


def score_cases(model_spec: str, cases: Iterable[Case], set_name: str) -> dict[str, object]:
    """Scores per query and contrast IoUs of one model on one set."""
    from mtrs_geo.model_api import load_model

    model = load_model(model_spec)
    query_blind = not model.info.query_aware  # type: ignore[attr-defined]
    scores: dict[str, QueryScore] = {}
    contrast: dict[str, list[float]] = {}
    for case in cases:
        masks: dict[str, np.ndarray] = {}
        blind = predict(model, case, None) if query_blind else None
        for query, truth in case.truths.items():
            mask = blind if blind is not None else predict(model, case, query)
            masks[query] = mask
            scores.setdefault(query, QueryScore()).add(mask, truth)
        for a, b in CONTRASTS:
            if a in masks and b in masks:
                union = (masks[a] | masks[b]).sum()
                if union:
                    inter = (masks[a] & masks[b]).sum()
                    contrast.setdefault(f"{a} | {b}", []).append(float(inter / union))
    return {
        "set": set_name,
        "model": model_spec,
        "queries": {q: s.row() for q, s in sorted(scores.items())},
        "contrast_iou": {k: 100 * float(np.mean(v)) for k, v in contrast.items()},
    }


# --- generated georeferenced pairs through `mtrs detect` -------------------------------------


def roofs_pair(
    folder: Path, seed: int, size: int = 768
) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """Write a 0.5 m UTM pair where identical roofs appear in some places and vanish in others."""
    import rasterio
    from affine import Affine
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field_ = ndimage.gaussian_filter(rng.standard_normal((size, size)), 12)
    field_ = (field_ - field_.min()) / (np.ptp(field_) + 1e-9)
    ground = np.stack([90 + 60 * field_, 110 + 50 * field_, 70 + 40 * field_])
    ground += rng.normal(0, 3, size=ground.shape)
    before, after = ground.copy(), ground.copy()
    appeared = np.zeros((size, size), dtype=bool)
    vanished = np.zeros((size, size), dtype=bool)
    roof = np.array([176, 86, 64], dtype=np.float64)  # the same red-tiled roof everywhere
    height, width = 24, 36
    spots = [(r, c) for r in range(60, size - 80, 110) for c in range(60, size - 80, 120)]
    rng.shuffle(spots)
    for number, (row, col) in enumerate(spots[:16]):
        target = appeared if number % 2 == 0 else vanished
        image = after if number % 2 == 0 else before
        image[:, row : row + height, col : col + width] = roof[:, None, None]
        image[:, row : row + height // 2, col : col + width] *= 1.1  # ridge: lit half
        target[row : row + height, col : col + width] = True
    transform = Affine(0.5, 0, 500_000, 0, -0.5, 5_000_000)
    paths = []
    for name, image in (("before", before), ("after", after)):
        path = folder / f"roofs_{seed}_{name}.tif"
        profile = {"driver": "GTiff", "width": size, "height": size, "count": 3,
                   "dtype": "uint8", "crs": "EPSG:32633", "transform": transform}  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.clip(image, 0, 255).round().astype(np.uint8))
        paths.append(path)
    return paths[0], paths[1], appeared, vanished


def detect_mask(
    before: Path, after: Path, query: str, model: str, out: Path, options: Iterable[str] = ()
) -> np.ndarray:
    """Run ``mtrs detect`` (binary mask output, default threshold) and read the mask."""
    import rasterio

    command = [sys.executable, "-m", "mtrs_geo.cli.main", "detect", str(before), str(after)]
    command += ["-q", query, "--model", model, "--mask-out", str(out), "--mask-type", "binary"]
    command += list(options)
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    with rasterio.open(out) as src:
        return src.read(1) == 1


def roofs_scores(model: str, pairs: int) -> dict[str, object]:
    """IoU of "newly built buildings" / "demolished buildings" with the appeared/vanished roofs."""
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for seed in range(pairs):
            before, after, appeared, vanished = roofs_pair(folder, seed)
            for query in ("newly built buildings", "demolished buildings"):
                mask = detect_mask(before, after, query, model, folder / f"m{seed}.tif")
                for name, truth in (("appeared", appeared), ("vanished", vanished)):
                    iou = (mask & truth).sum() / max((mask | truth).sum(), 1)
                    rows.setdefault(f"{query} ~ {name}", []).append(100 * float(iou))
    return {"set": "roofs", "model": model, "iou": {k: float(np.mean(v)) for k, v in rows.items()}}


# Tile side and overlap of each run over a held-out OSCD city; the first is `mtrs detect`'s
# default for the bundled checkpoint. The F1 of one city's 26 changed objects moves with where the
# tile edges fall (the decoder attends over the whole tile): one tiling alone is a draw.
OSCD_TILINGS = ((256, 64), (192, 0), (192, 64), (256, 128), (320, 0), (320, 64))

# The eight symmetries of the square, each a turn of a scene's arrays (the last two axes), the
# distributed orientation first. Which way a city is up is a draw as well (training turns and
# flips every crop, so no orientation is the model's own): over a city turned all eight ways the
# same objects fall on other tiles and in other places of them.
ORIENTATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "as distributed": lambda a: a,
    "left-right": lambda a: a[..., ::-1],
    "upside down": lambda a: a[..., ::-1, :],
    "half turn": lambda a: a[..., ::-1, ::-1],
    "transposed": lambda a: np.swapaxes(a, -1, -2),
    "quarter turn": lambda a: np.rot90(a, 1, axes=(-2, -1)),
    "three quarters": lambda a: np.rot90(a, 3, axes=(-2, -1)),
    "anti-transposed": lambda a: np.swapaxes(a, -1, -2)[..., ::-1, ::-1],
}


def oriented_scene(scene: Path, name: str, folder: Path) -> tuple[Path, Path]:
    """Write ``scene``'s before and after turned by ``ORIENTATIONS[name]`` (same transform)."""
    import rasterio

    turn = ORIENTATIONS[name]
    paths = []
    for date in ("before", "after"):
        with rasterio.open(scene / f"{date}.tif") as src:
            data = np.ascontiguousarray(turn(src.read()))
            profile = src.profile
        profile.update(height=data.shape[1], width=data.shape[2])
        path = folder / f"{date}_{name.replace(' ', '_')}.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        paths.append(path)
    return paths[0], paths[1]


def oscd_scores(
    model: str,
    tilings: Sequence[tuple[int, int]] = OSCD_TILINGS,
    orientations: int = len(ORIENTATIONS),
) -> dict[str, object]:
    """F1 of "new buildings and roads" on the held-out OSCD cities through ``mtrs detect``.

    Each city is written as ``scripts/oscd_scenes.py`` writes it (bands B04/B03/B02 as uint16 on
    their 10 m grid), turned the first ``orientations`` ways of :data:`ORIENTATIONS` (its change
    map with it), and run at every tiling; the F1 pools the city's pixels per run. ``f1`` holds
    the distributed orientation's F1 per tiling, ``f1_orientations`` every orientation's.
    """
    from mtrs_geo.craft.donors import HELD_OUT_SCENES
    from mtrs_geo.layouts import read_oscd_change

    sys.path.insert(0, str(REPO / "scripts"))
    from oscd_scenes import QUERY, write_scene

    cities = [SHARED / "oscd" / name for name in sorted(HELD_OUT_SCENES["oscd"])]
    turns = list(ORIENTATIONS)[: max(1, orientations)]
    f1: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for city in (c for c in cities if c.is_dir()):
            scene = write_scene(city, folder)
            change = read_oscd_change(city)
            for turn in turns:
                before, after = oriented_scene(scene, turn, folder)
                truth = ORIENTATIONS[turn](change)
                for tile, overlap in tilings:
                    options = ("--tile-size", str(tile), "--overlap", str(overlap))
                    mask = detect_mask(before, after, QUERY, model, folder / "mask.tif", options)
                    hits = int((mask & truth).sum())
                    wrong = int((mask != truth).sum())
                    score = 200 * hits / max(2 * hits + wrong, 1)
                    f1.setdefault(city.name, {}).setdefault(turn, []).append(score)
    return {
        "set": "oscd",
        "model": model,
        "query": QUERY,
        "tilings": list(tilings),
        "f1": {city: runs[turns[0]] for city, runs in f1.items()},
        "f1_orientations": f1,
    }


# --- report ------------------------------------------------------------------------------------


def _fmt(value: object) -> str:
    return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def markdown(results: list[dict[str, object]]) -> str:
    """The language table(s) of the README."""
    lines = [
        "| set | query | model | pairs with target | mIoU | F1 | pairs without "
        "| area when empty (%) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    contrast_lines = [
        "| set | queries | model | IoU between the two masks |",
        "| --- | --- | --- | ---: |",
    ]
    roof_lines = ["| model | query ~ roofs | IoU |", "| --- | --- | ---: |"]
    oscd_lines = [
        "| model | held-out OSCD city | F1 at the default tiling | mean over tilings | range "
        "| mean over orientations and tilings | orientations' means |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        model = str(result["model"])
        name = "mtrefseg-r1" if Path(model).is_dir() else model
        if result["set"] == "oscd":
            turned = result.get("f1_orientations", {})
            for city, values in result["f1"].items():  # type: ignore[attr-defined]
                runs = turned.get(city, {"as distributed": values})  # type: ignore[attr-defined]
                means = [float(np.mean(v)) for v in runs.values()]
                everything = [score for v in runs.values() for score in v]
                oscd_lines.append(
                    f"| {name} | {city} | {values[0]:.1f} | {np.mean(values):.1f} "
                    f"| {min(values):.1f}-{max(values):.1f} | {np.mean(everything):.1f} "
                    f"({len(runs)} x {len(values)}) | {min(means):.1f}-{max(means):.1f} |"
                )
            continue
        if result["set"] == "roofs":
            for key, value in result["iou"].items():  # type: ignore[attr-defined]
                roof_lines.append(f"| {name} | {key} | {value:.1f} |")
            continue
        for query, row in result["queries"].items():  # type: ignore[attr-defined]
            lines.append(
                f"| {result['set']} | {query} | {name} | {row['pairs_with_target']} | "
                f"{_fmt(row['mIoU'])} | {_fmt(row['F1'])} | {row['pairs_without_target']} | "
                f"{_fmt(row['area_when_empty'])} |"
            )
        for key, value in result["contrast_iou"].items():  # type: ignore[attr-defined]
            contrast_lines.append(f"| {result['set']} | {key} | {name} | {value:.1f} |")
    return "\n".join([*lines, "", *contrast_lines, "", *roof_lines, "", *oscd_lines, ""])


def main() -> None:
    """Run every set for the model and cva; write JSON and markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        help="registered name or checkpoint folder, repeatable "
        "(default: mtrefseg-r1-both-ways, the engine's default, and mtrefseg-r1)",
    )
    parser.add_argument("--pairs", type=int, default=80, help="synthetic held-out pairs")
    parser.add_argument("--roof-pairs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "language_board")
    parser.add_argument("--skip-cva", action="store_true")
    parser.add_argument(
        "--sets", default="synthetic,real,shifted,roofs,oscd", help="comma-separated subset"
    )
    parser.add_argument(
        "--oscd-orientations",
        type=int,
        default=len(ORIENTATIONS),
        help="ways each OSCD city is turned (1: as distributed; 8: every symmetry of the square)",
    )
    args = parser.parse_args()
    started = time.time()
    sets = set(args.sets.split(","))
    synthetic = synthetic_cases(args.pairs, args.seed) if "synthetic" in sets else []
    real = real_cases() if sets & {"real", "shifted"} else []
    asked = args.model or ["mtrefseg-r1-both-ways", "mtrefseg-r1"]
    models = asked + ([] if args.skip_cva else ["cva"])
    results: list[dict[str, object]] = []
    for model in models:
        if synthetic:
            results.append(score_cases(model, synthetic, "synthetic"))
        if "real" in sets:
            results.append(score_cases(model, real, "real"))
        if "shifted" in sets:
            results.append(score_cases(model, shifted_cases(real), "shifted"))
        if "roofs" in sets:
            results.append(roofs_scores(model, args.roof_pairs))
        if "oscd" in sets:
            results.append(oscd_scores(model, orientations=args.oscd_orientations))
        print(f"{model}: done at {time.time() - started:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "seconds": round(time.time() - started),
        "synthetic_pairs": args.pairs,
        "real_pairs": len(real),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (args.out / "language.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1)
    )
    table = markdown(results)
    (args.out / "language.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
