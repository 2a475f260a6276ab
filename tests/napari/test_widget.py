"""The "Label loop" dock widget in a real napari viewer (xtrain/napari/widget.py): open a store through the
plugin, segment in a worker thread, step through the suggested planes, paint, save sparse labels, cancel, and
errors as notifications."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from conftest import make_store  # noqa: E402
from xtrain.data.labels import IGNORE, census  # noqa: E402
from xtrain.data.store import open_segmentation, open_store  # noqa: E402
from xtrain.infer.suggest import Pick, entropy_scores, pick_planes  # noqa: E402

SHAPE = (11, 45, 39)
TIMEOUT_MS = 180_000  # a busy 2-core machine


def last_notification():
    from napari.utils.notifications import notification_manager

    return notification_manager.records[-1].message if notification_manager.records else ""


def run(qtbot, widget, worker):
    """Wait until ``worker`` is done. Not ``waitSignal(worker.finished)``: the widget has started the worker
    already, and one that fails fast has emitted ``finished`` before a late connection could see it."""
    assert worker is not None, "the widget refused to start (see its status line)"
    qtbot.waitUntil(lambda: widget.worker is not worker, timeout=TIMEOUT_MS)


@pytest.fixture
def loop(x_display, xtrain_plugin, make_napari_viewer, tiny_model, tmp_path):
    from xtrain.napari.widget import LabelLoop

    store = make_store(tmp_path / "scan.zarr", SHAPE, seed=5)
    viewer = make_napari_viewer()
    viewer.open(str(store), plugin="xtrain")
    widget = LabelLoop(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget, store, tiny_model


def test_segment_suggest_paint_and_save_sparse_labels(loop, qtbot):
    from napari.layers import Image, Labels

    viewer, widget, store, model = loop
    assert [layer.name for layer in viewer.layers] == ["scan", "ground_truth"]
    assert widget.image_combo.currentText() == "scan"
    assert widget.labels_edit.text() == str(store.resolve().with_name("scan-labels.zarr"))
    assert widget.finetune_button.isEnabled() and "no Ray" in widget.finetune_button.toolTip()

    # 1. segment in a worker thread: the viewer's event loop keeps running meanwhile
    widget.model_edit.setText(str(model))
    widget.axes_combo.setCurrentText("zyx")
    widget.n_spin.setValue(4)
    widget.spacing_spin.setValue(3)
    worker = widget.segment()
    assert widget.segmentation is None and "prediction" not in viewer.layers  # returned at once: not done yet
    assert not widget.segment_button.isEnabled() and widget.cancel_button.isEnabled()
    run(qtbot, widget, worker)
    assert widget.progress.value() == 100 and widget.segment_button.isEnabled()
    pred, entropy = viewer.layers["prediction"], viewer.layers["entropy"]
    assert isinstance(pred, Labels) and isinstance(entropy, Image) and isinstance(viewer.layers["corrections"], Labels)
    seg = open_segmentation(widget.segmentation)
    assert np.array_equal(np.asarray(pred.data), seg.labels[:] + 1)  # class id + 1
    assert np.array_equal(np.asarray(entropy.data), seg.entropy[0].astype(np.float32))
    assert list(pred.scale) == list(viewer.layers["scan"].scale)
    assert seg.info.source["settings"]["axes"] == "zyx" and seg.info.source["settings"]["probabilities"]

    # 2. the planes suggest ranks first (entropy), the viewer on the first of them
    scores = entropy_scores(seg.entropy)
    assert widget.picks == pick_planes(scores, 4, 3) and widget.current == 0
    for i, p in enumerate(widget.picks):
        widget.go_to(i)
        d = "zyx".index(p.axis)
        assert viewer.dims.current_step[d] == p.index and viewer.dims.order[0] == d
        assert viewer.dims.displayed == tuple(e for e in range(3) if e != d)
    widget.picks = [Pick("y", 7, 0.5, 1), Pick("z", 2, 0.4, 2)]  # a y-plane: the view turns to (z, x)
    widget.go_to(0)
    assert viewer.dims.order == (1, 0, 2) and viewer.dims.current_step[1] == 7 and "y-plane 7" in \
        widget.pick_label.text()
    widget.next_plane()
    assert viewer.dims.order == (0, 1, 2) and viewer.dims.current_step[0] == 2
    widget.previous_plane()
    widget.previous_plane()  # wraps around
    assert widget.current == 1

    # 3. paint: the prediction of z-plane 2 as the start, one stroke of ni (value 3) over it, a y-plane scribble
    corrections = viewer.layers["corrections"]
    widget.copy_prediction()
    assert np.array_equal(corrections.data[2], np.asarray(pred.data)[2])
    before = np.array(corrections.data[2])
    corrections.brush_size = 5
    corrections.paint((2, 20, 20), 3)  # a round brush, in the displayed plane only
    changed = corrections.data[2] != before
    assert (corrections.data[2, 19:22, 19:22] == 3).all() and not changed[:16].any() and not changed[25:].any()
    assert np.array_equal(np.delete(corrections.data, 2, axis=0), np.delete(np.asarray(pred.data) * 0, 2, axis=0))
    corrections.data[5:8, 30, 4:9] = 1  # pore, in planes normal to y
    painted = np.array(corrections.data)

    # 4. save: class ids where painted, IGNORE elsewhere, the census, the image
    run(qtbot, widget, widget.save_labels())
    out = open_store(widget.labels_edit.text())
    expected = np.where(painted > 0, painted - 1, IGNORE).astype(np.uint8)
    assert np.array_equal(out.labels[:], expected)
    assert out.info.labels == census(expected).to_dict() and out.info.classes == ["pore", "ysz", "ni"]
    assert np.array_equal(out.image[:], open_store(store).image[:])
    assert "a new store" in widget.status.text()

    # ... and again, after repainting part of the plane: merged, the painting wins, and it says so
    corrections.data[2] = 0
    corrections.data[2, 0:3, :] = 2
    run(qtbot, widget, widget.save_labels())
    merged = open_store(widget.labels_edit.text()).labels[:]
    assert (merged[2, 0:3] == 1).all() and np.array_equal(merged[2, 3:], expected[2, 3:])
    assert np.array_equal(merged[5:8], expected[5:8])
    assert "merged with" in widget.status.text() and "merged with" in last_notification()

    # a second segmentation skips the planes labelled by now (z 2: painted whole)
    widget.axes_combo.setCurrentText("z")
    run(qtbot, widget, widget.segment())
    assert all(abs(p.index - 2) >= 3 for p in widget.picks if p.axis == "z")


def test_finetune_repredicts_what_was_corrected(loop, qtbot):
    """The round's last step: save the corrections, fine-tune, segment again: the new prediction follows the
    painting where the old one did not, and the old prediction stays to compare."""
    viewer, widget, store, model = loop
    widget.model_edit.setText(str(model))
    assert widget.finetune() is None and "Save labels" in last_notification()  # nothing saved yet
    run(qtbot, widget, widget.segment())
    old = np.asarray(viewer.layers["prediction"].data).copy()
    truth = open_store(store).labels[:]
    corrections = viewer.layers["corrections"]
    corrections.data[2] = (truth[2] + 1) % 3 + 1  # z-plane 2 painted with the classes turned round
    run(qtbot, widget, widget.save_labels())
    widget.steps_spin.setValue(40)
    worker = widget.finetune()
    assert not widget.finetune_button.isEnabled() and not widget.segment_button.isEnabled()
    run(qtbot, widget, worker)
    new = np.asarray(viewer.layers["prediction"].data)
    wanted = corrections.data[2]
    assert (new[2] == wanted).mean() > (old[2] == wanted).mean() + 0.25  # measured: 0.32 -> 0.84 (the plain fit)
    assert np.array_equal(np.asarray(viewer.layers["prediction (before)"].data), old)
    assert widget.model_edit.text().endswith("model.pt") and widget.model_edit.text() != str(model)
    assert widget.progress.value() == 100 and "fine-tuned" in widget.status.text()
    assert widget.picks and all(abs(p.index - 2) >= widget.spacing_spin.value() for p in widget.picks)

    worker = widget.finetune()  # a second round, cancelled: the model and the layers stay
    widget.cancel()
    run(qtbot, widget, worker)
    assert widget.status.text() == "cancelled" and np.array_equal(np.asarray(viewer.layers["prediction"].data), new)


def test_cancel_and_errors_are_notifications_not_tracebacks(loop, qtbot):
    viewer, widget, store, model = loop
    assert widget.segment() is None  # no model chosen: refused before anything runs
    assert "choose a model.pt" in widget.status.text() and "choose a model.pt" in last_notification()
    widget.model_edit.setText(str(store / "missing.pt"))
    assert widget.segment() is None and "does not exist" in last_notification()

    widget.model_edit.setText(str(model))
    worker = widget.segment()
    widget.cancel()  # stops at the next tile batch: nothing is shown
    run(qtbot, widget, worker)
    assert widget.status.text() == "cancelled" and "prediction" not in viewer.layers

    run(qtbot, widget, widget.segment())
    viewer.layers["corrections"].data[1, 3, 3] = 7  # not a class: refused in the worker thread
    run(qtbot, widget, widget.save_labels())
    assert "painted value 7" in widget.status.text() and "painted value 7" in last_notification()
    assert not (store.parent / "scan-labels.zarr").exists()
