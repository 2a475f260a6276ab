"""The package graph: import-linter's contracts (layers, Ray at the edges, no cycles), ruff, and what a
Ray Train worker imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_import_linter_contracts_are_kept():
    out = run(str(BIN / "lint-imports"), "--no-cache")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout or "broken" not in out.stdout.lower()


def test_ruff_passes():
    out = run(sys.executable, "-m", "ruff", "check", "--no-cache", ".")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def test_a_training_worker_imports_no_plotting_image_library_or_segmentation_driver():
    """``python -X importtime -c "import xtrain.train.loop"``: what every Ray Train worker loads."""
    out = run(sys.executable, "-X", "importtime", "-c", "import xtrain.train.loop")
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "xtrain.train.loop" in loaded  # the listing is what it says it is
    for name in ("skimage", "matplotlib", "xtrain.infer.segmentation", "xtrain.pipelines.compare", "ray", "mlflow",
                 "tensorboard", "tensorboardX", "torch.utils.tensorboard", "xtrain.train.tracking"):
        assert not {m for m in loaded if m == name or m.startswith(name + ".")}, f"{name} is imported"
