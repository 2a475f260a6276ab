"""compare: models, predictions and baselines evaluated on the same region; the demo end to end."""

from __future__ import annotations

import json

import pytest

from conftest import make_store
from xtrain.cli import main
from xtrain.pipelines.compare import compare
from xtrain.evaluate.core import evaluate
from xtrain.infer import SegmentOptions, segment


def test_models_predictions_and_baselines_in_one_table(tiny_model, tmp_path):
    labels = make_store(tmp_path / "truth.zarr", shape=(21, 40, 36), seed=5)
    pred = tmp_path / "given.zarr"
    segment(tiny_model, labels, pred, tile=32, halo=4)
    result = compare([str(tiny_model), str(pred)], str(labels), tmp_path / "rep", z_range=(2, 19),
                     baselines=["otsu", "kmeans"], fit=str(labels), fit_z=(0, 10),
                     segment_options=SegmentOptions(tile=32, halo=4))
    rows = {r["method"]: r for r in result["summary"]}
    assert set(rows) == {"run", "given", "otsu", "kmeans", "labels (truth)"}  # run/model.pt is named by its run
    # the model segmented by compare equals the prediction segmented by hand
    assert rows["run"]["mean_dice"] == rows["given"]["mean_dice"]
    # every number is the evaluation of that prediction on the same z range
    direct = evaluate(str(pred), str(labels), z_range=(2, 19))
    assert rows["given"]["mean_dice"] == direct["overlap"]["mean_dice"]
    assert rows["given"]["tpb_ratio"] == direct["microstructure"]["ratio"]["tpb"]["density"]
    assert rows["labels (truth)"]["tpb_density"] == direct["microstructure"]["labels"]["tpb"]["density"]
    for name in ("compare.md", "compare.json", "compare.csv", "compare.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    saved = json.loads((tmp_path / "rep" / "compare.json").read_text())
    assert [r["method"] for r in saved["summary"]] == [r["method"] for r in result["summary"]]
    assert "| otsu" in (tmp_path / "rep" / "compare.md").read_text()


def test_bad_entries_are_one_line_exit_2(tmp_path, capsys):
    labels = make_store(tmp_path / "truth.zarr", shape=(5, 9, 7))
    code = main(["compare", str(tmp_path / "missing_run"), "--labels", str(labels), "--report", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "missing_run" in err and err.strip().count("\n") == 0
    code = main(["compare", "--labels", str(labels), "--report", str(tmp_path / "r"), "--baselines", "otsu"])
    err = capsys.readouterr().err
    assert code == 2 and "--fit" in err


@pytest.mark.slow
def test_demo_runs_end_to_end_and_the_model_beats_otsu(ray_cluster, tmp_path, capsys):
    """The README's first command, shortened (fewer epochs), through the CLI."""
    code = main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "unet" in out and "otsu" in out and "labels (truth)" in out
    rows = {r["method"]: r for r in json.loads((tmp_path / "demo" / "report" / "compare.json").read_text())["summary"]}
    assert rows["unet"]["mean_dice"] > rows["otsu"]["mean_dice"] > 0.85
    # both rows of the model: its validated settings (trained on all axes: zyx + clean) and z planes only
    assert rows["unet"]["inference"] == "zyx clean (model's)" and rows["unet-z-only"]["inference"] == "z (given)"
    assert (tmp_path / "demo" / "unet" / "model.pt").exists()


def test_a_study_is_read_from_the_sweep_results(tmp_path):
    from xtrain.pipelines.compare import read_study

    (tmp_path / "results.csv").write_text(
        "trial_id,status,epochs,data.fraction,train.seed,final_val_mean_dice,best_val_mean_dice,model_path\n"
        "b,finished,3,0.5,0,0.90,0.91,x\n"
        "a,finished,3,0.1,0,0.80,0.82,x\n"
        "c,failed,0,1.0,0,,,\n")
    assert read_study(str(tmp_path)) == [{"parameter": "data.fraction", "value": 0.1, "dice": 0.82},
                                         {"parameter": "data.fraction", "value": 0.5, "dice": 0.91}]


def test_compare_against_sparse_labels_gives_no_labels_tpb(tmp_path):
    """A prediction compared with a store of sparse labels: Dice over the labelled voxels, no TPB ratio."""
    import numpy as np

    from xtrain.data.labels import IGNORE
    from xtrain.data.store import open_store, write_store

    dense = make_store(tmp_path / "dense.zarr", shape=(9, 24, 20), seed=3)
    truth = open_store(dense).labels[:]
    sparse = np.full(truth.shape, IGNORE, np.uint8)
    sparse[[2, 6]] = truth[[2, 6]]
    with write_store(tmp_path / "sparse.zarr", truth.shape) as w:
        w.create("image", truth.shape, np.uint16)[:] = open_store(dense).image[:]
        w.create("labels", truth.shape, np.uint8)[:] = sparse
    result = compare([str(dense)], str(tmp_path / "sparse.zarr"), tmp_path / "rep")
    rows = {r["method"]: r for r in result["summary"]}
    assert rows["dense"]["mean_dice"] == 1.0 and "tpb_ratio" not in rows["dense"] and "tpb_density" in rows["dense"]
    assert rows["labels (truth)"] == {"method": "labels (truth)"}
    md = (tmp_path / "rep" / "compare.md").read_text()
    assert md.count("is not computed, it needs every voxel labelled") == 1


def test_a_refused_compare_leaves_no_empty_report_folder(tmp_path, capsys):
    labels = make_store(tmp_path / "truth.zarr", shape=(5, 9, 7))
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")  # refused by segment, after the report folder was planned
    report = tmp_path / "reports" / "r"
    (tmp_path / "reports").mkdir()
    assert main(["compare", str(bad), "--labels", str(labels), "--report", str(report)]) == 2
    assert "broken.pt" in capsys.readouterr().err
    assert list((tmp_path / "reports").iterdir()) == []  # neither r/ nor r/predictions/ left behind
