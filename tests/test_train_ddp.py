import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures_train.builders import make_mtrefseg
from fixtures_train.tiny_models import TINY_TEXT

pytestmark = pytest.mark.slow  # two torchrun processes: `make unit-fast` leaves it out


def test_two_process_ddp_run_on_cpu_trains_and_resumes_exactly(tmp_path: Path) -> None:
    make_mtrefseg(tmp_path / "mt", "train", size=(48, 48))
    config = {
        "stage": 2,
        "model": {"size": "tiny", "overrides": {"text_model_config": TINY_TEXT}},
        "data": {"train": [{"type": "mtrefseg", "root": str(tmp_path / "mt"), "split": "train"}]},
        "augment": {"size": 32},
        "optim": {"batch_size": 1, "accumulate": 2, "max_steps": 3, "warmup_steps": 1},
        "run": {
            "out": str(tmp_path / "run"),
            "checkpoint_every": 2,
            "log_every": 1,
            "device": "cpu",
        },
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    command = [*torchrun, "-m", "mtrs_geo.cli.main", "train", "-c", str(path), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=300)
    whole = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert len(whole) == 4 and (tmp_path / "run" / "final" / "config.json").is_file()
    assert whole[1].split(",")[3] == "4"  # samples: 2 ranks x 1 x 2 micro-batches
    resume = str(tmp_path / "run" / "checkpoints" / "step_0000002")
    subprocess.run(
        [*command, "--resume", resume], check=True, env=env, capture_output=True, timeout=300
    )
    again = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert again[3].split(",")[1] == whole[3].split(",")[1]  # step 3 loss: same after resume
