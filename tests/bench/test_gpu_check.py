"""bench/gpu_check.sh, the one-shot GPU check: without a GPU it says so in one line and exits 0; its Python
part runs every step on the CPU (--dry-run) with the packages the GPU machine lacks made unimportable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_without_a_gpu_one_line_and_exit_0():
    env = {**os.environ, "PY": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().count("\n") == 0 and done.stdout.startswith("gpu_check: no CUDA GPU here")
    assert done.stderr == ""


@pytest.mark.slow
def test_dry_run_runs_every_step_without_the_absent_packages():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--size", "40"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gpu_train.py imports: ok" in done.stdout and "skipped" not in done.stdout
    result = dict(kv.split("=") for kv in done.stdout.strip().splitlines()[-1].removeprefix("RESULT ").split())
    for key in ("seg_z_mvox_s", "seg_zyx_mvox_s", "forward_b1_mvox_s", "forward_gpu_mvox_s", "eager_mvox_s",
                "bf16_mvox_s", "agree_bf16"):
        assert re.fullmatch(r"[\d.e+-]+", result[key]) and float(result[key]) > 0, key
    assert float(result["agree_eager"]) == 1.0
