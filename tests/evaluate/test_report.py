"""Report: files exist, its numbers match --json; tables; the evaluate/baseline CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xtrain.cli import main


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A synthetic store (truth, with image) and an Otsu segmentation of it (via the CLI)."""
    from xtrain.data.synth import synthesize

    d = tmp_path_factory.mktemp("rep")
    truth = synthesize(d / "t.zarr", shape=(12, 40, 36), preset="easy", seed=2)
    assert main(["-q", "baseline", "otsu", "--fit", str(truth), "--fit-z", "0,8", str(truth), str(d / "p.zarr")]) == 0
    return d / "p.zarr", truth


def test_report_files_and_numbers_match_json(pair, tmp_path, capsys):
    pred, truth = pair
    assert main(["evaluate", str(pred), str(truth), "--json", "--z", "2,11"]) == 0
    printed = json.loads(capsys.readouterr().out)  # stdout is exactly one JSON document
    rep = tmp_path / "rep"
    assert main(["-q", "evaluate", str(pred), str(truth), "--z", "2,11", "--report", str(rep)]) == 0
    human = capsys.readouterr().out
    for name in ("report.md", "metrics.json", "slices.png", "confusion.png", "dice_z.png"):
        assert (rep / name).is_file() and (rep / name).stat().st_size > 0, name
    assert json.loads((rep / "metrics.json").read_text()) == printed
    md = (rep / "report.md").read_text()
    dice = printed["overlap"]["per_class"]["ni"]["dice"]
    ni = printed["microstructure"]["ratio"]["fractions"]["ni"]
    assert f"{dice:.4f}" in md and f"{dice:.4f}" in human
    assert f"{ni:.4f}" in md and "![" in md and "slices.png" in md
    assert printed["z_range"] == [2, 11] and printed["voxel_size_nm"] == 10.0  # synth stores carry 10 nm
    # an existing report is not replaced silently
    assert main(["-q", "evaluate", str(pred), str(truth), "--report", str(rep)]) == 2
    assert main(["-q", "evaluate", str(pred), str(truth), "--report", str(rep), "--overwrite"]) == 0


def test_table_alignment():
    from xtrain.evaluate.report import table

    text = table(["a", "long header"], [["x", 1.5], ["yy", float("nan")]])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1 and "n/a" in text
    md = table(["a", "b"], [["x", 2]], markdown=True)
    assert md.splitlines()[1].startswith("|--") and md.splitlines()[2].startswith("| x")


def test_report_without_image_uses_three_columns(tmp_path):
    from xtrain.evaluate.core import evaluate, open_label_volume
    from xtrain.evaluate.report import write_report

    rng = np.random.default_rng(0)
    t = rng.integers(0, 3, (5, 8, 9)).astype(np.uint8)
    pv, tv = open_label_volume(t), open_label_volume(t)
    path = write_report(evaluate(pv, tv), tmp_path / "r", pv, tv)
    assert path.read_text().count("![") == 3 and (tmp_path / "r" / "slices.png").exists()


def test_figures_leave_no_pyplot_or_backend_behind(tmp_path):
    """Library code draws on matplotlib.figure.Figure: writing a report and the comparison's figures in a fresh
    process imports no pyplot and leaves the backend the process chose (here svg) as it was."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, matplotlib\n"
        "from xtrain.evaluate.core import evaluate, open_label_volume\n"
        "from xtrain.evaluate.report import write_report\n"
        "from xtrain.pipelines.compare import _plot_study, _plot_summary\n"
        "t = np.random.default_rng(0).integers(0, 3, (5, 8, 9)).astype(np.uint8)\n"
        "pv, tv = open_label_volume(t), open_label_volume(t)\n"
        f"out = {str(tmp_path)!r}\n"
        "write_report(evaluate(pv, tv), out + '/r', pv, tv)\n"
        "_plot_summary(out + '/c.png', [{'method': 'a', 'mean_dice': 0.9, 'dice_ni': 0.8, 'tpb_ratio': 1.1}])\n"
        "_plot_study(out + '/s.png', 'x', [{'parameter': 'p', 'value': 1.0, 'dice': 0.9}])\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "print(matplotlib.get_backend())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, "MPLBACKEND": "svg"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "svg"
    for name in ("r/slices.png", "r/confusion.png", "r/dice_z.png", "c.png", "s.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
