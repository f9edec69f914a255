r"""Reproduce the bundled ``mtrefseg-r1`` checkpoint (``base`` size) on CPU from ../shared/data.

Steps (every one seeded):

1. ``mtrs craft build`` turns the real change pairs (LEVIR-CD and DSIFN crops, OSCD cities) into
   MTRefSeg-21K-layout triplets, split by scene; its ``val`` and ``test`` splits are held out.
2. Stage 1 (any change) on the training pairs' change labels (A/ B/ label/ folders, OSCD cities).
3. Stage 2 (referring) from stage 1 on the training triplets, plus the any-change pairs.
4. ``mtrs benchmark`` on the held-out splits (cva, stage-1 mode, the new model); the model card
   (README.md), training_metadata.json and the leaderboard go next to the weights.

Usage::

    .venv/bin/python scripts/train_bundled.py --work runs/bundled \
        --stage1-minutes 25 --stage2-minutes 35 --out models/checkpoints/mtrefseg-r1
    .venv/bin/python scripts/train_bundled.py --work runs/board --evaluate-only  # the table only
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
HELD_OUT = ("val", "test")
# source name -> (input folder, craft layout, craft subject)
CRAFT_INPUTS = {
    "levir": ("levir-cd", "levir-cd", "building"),
    "dsifn": ("dsifn-cd", "levir-cd", "change"),
    "oscd": ("oscd", "oscd", "change"),
}


def craft(work: Path, seed: int) -> dict[str, Path]:
    """Build the triplet datasets with the CRAFT builder; return name -> dataset folder."""
    from mtrs_geo.craft.builder import BuildOptions, build
    from mtrs_geo.craft.sources import SourceOptions

    out = {}
    for name, (folder, layout, subject) in CRAFT_INPUTS.items():
        target = work / "triplets" / name
        options = BuildOptions(SourceOptions(layout, subject=subject), seed=seed)
        summary = build(SHARED / folder, target, options, overwrite=True)
        print(f"craft {name}: {summary.pairs} pairs, {summary.triplets} triplets {summary.splits}")
        out[name] = target
    return out


def pair_names(dataset: Path, split: str) -> set[str]:
    """File names of the before images a split of a crafted dataset uses."""
    from mtrs_geo.models.data.mtrefseg import MTRefSegDataset, list_splits

    if split not in list_splits(dataset):
        return set()
    return {r.image_a.name for r in MTRefSegDataset(dataset, split).records}


def held_out_stems(dataset: Path) -> set[str]:
    """Scene stems (before crafting's chipping) of the held-out splits."""
    from mtrs_geo.craft.sources import scene_of

    names = set().union(*(pair_names(dataset, split) for split in HELD_OUT))
    return {scene_of(Path(n).stem) for n in names}


def stage1_sources(crafted: dict[str, Path]) -> list[dict[str, object]]:
    """Any-change sources over the training scenes only (held-out scenes left out)."""
    from mtrs_geo.craft.sources import scene_of

    sources: list[dict[str, object]] = []
    for name in ("levir", "dsifn"):
        folder = SHARED / CRAFT_INPUTS[name][0]
        held = held_out_stems(crafted[name])
        names = sorted(
            p.name
            for p in (folder / "label").iterdir()
            if scene_of(p.stem) not in held and (folder / "A" / p.name).is_file()
        )
        sources.append({"type": "change_folder", "root": str(folder), "names": names})
    held = held_out_stems(crafted["oscd"])
    cities = sorted(
        p.name for p in (SHARED / "oscd").iterdir() if (p / "cm").is_dir() and p.name not in held
    )
    cities = [c for c in cities if not any(scene_of(h) == c or h.startswith(c) for h in held)]
    sources.append({"type": "oscd", "root": str(SHARED / "oscd"), "cities": cities, "repeat": 6})
    return sources


def run_config(path: Path, values: dict[str, object]) -> None:
    """Write a YAML run configuration."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False))


def mtrs(*args: str) -> None:
    """Run the ``mtrs`` CLI of this checkout."""
    command = [sys.executable, "-m", "mtrs_geo.cli.main", *args]
    print("$ mtrs " + " ".join(args), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def main() -> None:
    """Run the whole recipe."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bundled")
    parser.add_argument("--out", type=Path, default=REPO / "models" / "checkpoints" / "mtrefseg-r1")
    parser.add_argument("--stage1-minutes", type=float, default=25.0)
    parser.add_argument("--stage2-minutes", type=float, default=35.0)
    parser.add_argument("--stage1-steps", type=int, default=2000)
    parser.add_argument("--stage2-steps", type=int, default=3000)
    parser.add_argument("--size", type=int, default=128, help="training crop side, pixels")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--freeze",
        nargs="*",
        default=["backbone."],
        help="parameter-name prefixes kept frozen (default: the ImageNet backbone)",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="only rebuild the held-out triplets and benchmark the bundled checkpoint",
    )
    args = parser.parse_args()
    work = args.work.resolve()
    started = time.time()

    crafted = craft(work, args.seed)
    if args.evaluate_only:
        leaderboard(work, crafted, ["cva", "mtrefseg-r1@any", "mtrefseg-r1"], args.eval_size)
        return
    any_change = stage1_sources(crafted)
    common = {
        "augment": {"size": args.size, "mode": "crop", "swap_dates": 0.0},
        "run": {"seed": args.seed, "checkpoint_every": 25, "log_every": 5, "keep_checkpoints": 2},
    }
    stage1 = {
        "stage": 1,
        "model": {"size": "base", "freeze": list(args.freeze)},
        "data": {"train": any_change},
        "optim": {
            "lr": 5e-4,
            "warmup_steps": 20,
            "batch_size": args.batch,
            "max_steps": args.stage1_steps,
        },
        **common,
    }
    stage1["run"] = {
        **common["run"],  # type: ignore[dict-item]
        "out": str(work / "stage1"),
        "max_time": args.stage1_minutes * 60,
    }
    run_config(work / "stage1.yaml", stage1)
    mtrs("train", "-c", str(work / "stage1.yaml"), "--quiet", "--resume", "auto")

    triplets = [
        {"type": "mtrefseg", "root": str(path), "split": "train"} for path in crafted.values()
    ]
    stage2 = {
        "stage": 2,
        "model": {
            "size": "base",
            "init_from": str(work / "stage1" / "final"),
            "freeze": list(args.freeze),
        },
        "data": {"train": triplets + any_change},
        "optim": {
            "lr": 3e-4,
            "warmup_steps": 20,
            "batch_size": args.batch,
            "max_steps": args.stage2_steps,
        },
        **common,
    }
    stage2["run"] = {
        **common["run"],  # type: ignore[dict-item]
        "out": str(work / "stage2"),
        "max_time": args.stage2_minutes * 60,
    }
    run_config(work / "stage2.yaml", stage2)
    mtrs("train", "-c", str(work / "stage2.yaml"), "--quiet", "--resume", "auto")

    final = work / "stage2" / "final"
    models = ["cva", f"mtrefseg-r1@any={final}@any", f"mtrefseg-r1={final}"]
    splits = leaderboard(work, crafted, models, args.eval_size)
    write_checkpoint(work, final, args.out.resolve(), time.time() - started, splits)


def leaderboard(work: Path, crafted: dict[str, Path], models: list[str], size: int) -> list[str]:
    """Benchmark ``models`` on the held-out splits into ``work/leaderboard.json`` (+ ``.md``)."""
    splits = [
        f"{name}/{split}"
        for name, path in crafted.items()
        for split in HELD_OUT
        if pair_names(path, split)
    ]
    split_args = [arg for split in splits for arg in ("--split", split)]
    model_args = [arg for model in models for arg in ("--model", model)]
    mtrs(
        "benchmark",
        str(work / "triplets"),
        *split_args,
        *model_args,
        "--input-size",
        str(size),
        "--out",
        str(work / "leaderboard.json"),
        "--quiet",
    )
    return splits


def _training_summary(run: Path) -> dict[str, object]:
    return json.loads((run / "final" / "training.json").read_text())


def write_checkpoint(work: Path, final: Path, out: Path, seconds: float, splits: list[str]) -> None:
    """Copy the weights, write training_metadata.json, the model card and the leaderboard."""
    s1, s2 = _training_summary(work / "stage1"), _training_summary(work / "stage2")
    board = json.loads((work / "leaderboard.json").read_text())
    table = (work / "leaderboard.md").read_text()
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(final / name, out / name)
        (out / name).chmod(0o644)
    shutil.copy2(work / "stage1.yaml", out / "stage1.yaml")
    shutil.copy2(work / "stage2.yaml", out / "stage2.yaml")
    shutil.copy2(work / "leaderboard.json", out / "leaderboard.json")
    trained_on = (
        "LEVIR-CD + DSIFN-CD crops and 4 OSCD cities from ../shared/data (stage 1), "
        "CRAFT triplets built from them (stage 2); held-out scenes excluded"
    )
    metadata = {
        "trained_on": trained_on,
        "stage1": s1,
        "stage2": s2,
        "total_seconds": round(seconds),
        "held_out_splits": splits,
        "leaderboard": board["models"],
    }
    (out / "training_metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    size_mb = (out / "model.safetensors").stat().st_size / 1e6
    stage2_config = yaml.safe_load((work / "stage2.yaml").read_text())
    frozen = ", ".join(stage2_config["model"].get("freeze") or []) or "nothing"
    crop = stage2_config["augment"]["size"]
    batch = stage2_config["optim"]["batch_size"]
    card = f"""# MTRefSeg-R1 (base), bundled checkpoint

- Trained on: {trained_on}
- Size: `base` (EfficientNet-Lite0 ImageNet backbone, all-MiniLM-L6-v2 text encoder from its
  package, frozen and not stored here); weights {size_mb:.1f} MB.
- Stage 1 (any change): {s1["steps"]} steps in {s1["seconds"]} s, last loss {s1["last_loss"]:.4f}
  (stopped early by its time cap: {s1["stopped_early"]}).
- Stage 2 (referring): {s2["steps"]} steps in {s2["seconds"]} s, last loss {s2["last_loss"]:.4f}
  (stopped early by its time cap: {s2["stopped_early"]}).
- Parameters frozen during training: {frozen}; crops {crop} px, batch {batch}.
- Hardware: CPU only (2 shared cores); total {seconds / 60:.0f} minutes including evaluation.
- Reproduce: `.venv/bin/python scripts/train_bundled.py` (configs: stage1.yaml, stage2.yaml).

## Held-out metrics (percent; scenes never seen in training)

Splits are CRAFT's `val` and `test` scenes of each source; `@any` runs the model with the query
ignored (stage-1 any-change mode). Predictions scored at the ground truth's resolution.

{table}
## Limits

Tiny real training set (tens of pairs) and minutes of CPU training: expect coarse masks. It is a
working starting point for `mtrs train` with your own data, not a model of the paper's quality.
"""
    (out / "README.md").write_text(card)
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
