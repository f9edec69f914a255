#!/usr/bin/env bash
# The CUDA path end to end, in under 8 minutes, on a GPU machine lent for a few minutes:
#   1. engine inference with mtrefseg-r1 on CUDA (bf16 autocast) over a generated 2048^2 pair,
#      timed next to the same run on the CPU of that machine, and with the default model
#      (mtrefseg-r1-both-ways) on CUDA;
#   2. the model benchmark on CUDA (base size, 512 px, batch 1/8/32, fp32 and bf16);
#   3. a short AMP training run of the bundled recipe (configs/bundled_language.yaml) on CUDA.
# Figures go to $OUT/device_check.json (+ the raw logs); copy them into the README's GPU table.
#
#   bash scripts/device_check.sh              # on the GPU machine (device tool: run)
#   DEVICE=cpu QUICK=1 bash scripts/device_check.sh   # smoke test of the script itself, anywhere
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/device_check}"
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-0}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG="$OUT/device_check.log"
: >"$LOG"

# A Python with the project importable: the venv if present or buildable, else the machine's own
# Python with the repository mapped onto the installed names (no network needed).
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
    if ! timeout 240 make venv >>"$LOG" 2>&1; then
        PY="$(command -v python3)"
        SHIM="$(mktemp -d)"
        mkdir -p "$SHIM/mtrs_geo"
        cp -r mtrs_geo/. "$SHIM/mtrs_geo/"
        cp -r models "$SHIM/mtrs_geo/models"
        cp -r cli "$SHIM/mtrs_geo/cli"
        export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
        echo "no venv: using $PY with PYTHONPATH=$SHIM" | tee -a "$LOG"
    fi
fi
MTRS=("$PY" -m mtrs_geo.cli.main)

SIZE=2048; STEPS=60; BATCHES="1 8 32"
DTYPES="fp32 bf16"; REPEATS=3
if [ "$QUICK" = 1 ]; then SIZE=256; STEPS=3; BATCHES="1"; DTYPES="fp32"; REPEATS=1; fi

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its output, time it
    local name=$1 limit=$2; shift 2
    local start end
    start=$(date +%s.%N)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    end=$(date +%s.%N)
    echo "$name rc=$rc seconds=$(awk "BEGIN{printf \"%.1f\", $end - $start}")" | tee -a "$LOG"
    return 0
}

"$PY" - >"$OUT/environment.json" 2>>"$LOG" <<'EOF'
import json, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.cuda.is_available()}
if torch.cuda.is_available():
    info |= {"gpu": torch.cuda.get_device_name(0), "bf16": torch.cuda.is_bf16_supported(),
             "capability": torch.cuda.get_device_capability(0)}
print(json.dumps(info))
EOF
cat "$OUT/environment.json" | tee -a "$LOG"

# 1. Engine inference: a generated georeferenced pair with planted roofs.
"$PY" - "$OUT" "$SIZE" >>"$LOG" 2>&1 <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from language import roofs_pair
out, size = Path(sys.argv[1]), int(sys.argv[2])
roofs_pair(out, 0, size=size)
EOF
BEFORE="$OUT/roofs_0_before.tif"; AFTER="$OUT/roofs_0_after.tif"
for device in "$DEVICE" cpu; do
    step "engine_$device" 200 "${MTRS[@]}" detect "$BEFORE" "$AFTER" -q "new buildings" \
        --model mtrefseg-r1 --device "$device" -o "$OUT/changes_$device.gpkg" --json
    [ "$DEVICE" = cpu ] && break
done
# The engine's default model (the checkpoint asked both ways in time, one backbone pass for both).
step "engine_${DEVICE}_both_ways" 200 "${MTRS[@]}" detect "$BEFORE" "$AFTER" -q "new buildings" \
    --model mtrefseg-r1-both-ways --device "$DEVICE" -o "$OUT/changes_both_ways.gpkg" --json

# 2. The network alone.
step model_benchmark 200 "$PY" benchmarks/model.py --sizes base --px 512 --batch $BATCHES \
    --dtypes $DTYPES --repeats "$REPEATS" --json "$OUT/model.json"

# 3. A short mixed-precision training run of the bundled recipe.
step amp_training 200 "${MTRS[@]}" train -c configs/bundled_language.yaml \
    --init-from models/checkpoints/mtrefseg-r1 --out "$OUT/amp_run" --max-steps "$STEPS" \
    --device "$DEVICE" --quiet

"$PY" - "$OUT" >"$OUT/device_check.json" 2>>"$LOG" <<'EOF'
import csv, json, sys
from pathlib import Path
out = Path(sys.argv[1])
report = {"environment": json.loads((out / "environment.json").read_text() or "{}")}
for line in (out / "device_check.log").read_text().splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1].startswith("rc="):
        report[parts[0]] = {"rc": int(parts[1][3:]), "seconds": float(parts[2][8:])}
for name in ("engine_cuda", "engine_cpu", "engine_cuda_both_ways", "engine_cpu_both_ways"):
    log = out / f"{name}.log"
    if log.is_file():
        for line in log.read_text().splitlines():
            if line.startswith("{"):
                report.setdefault(name, {})["summary"] = json.loads(line)
if (out / "model.json").is_file():
    report["model_benchmark"] = json.loads((out / "model.json").read_text())
rows = list(csv.DictReader(open(out / "amp_run" / "log.csv"))) if (out / "amp_run" / "log.csv").is_file() else []
if rows:
    report.setdefault("amp_training", {}).update({"steps": int(rows[-1]["step"]),
                               "samples_per_second": float(rows[-1]["samples_per_second"])})
print(json.dumps(report, indent=1))
EOF
cat "$OUT/device_check.json"
