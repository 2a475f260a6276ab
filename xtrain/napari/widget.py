"""The dock widget "Label loop": segment, see the uncertainty, label the planes it suggests, save, (fine-tune).

    viewer = napari.Viewer(); viewer.open("scan.zarr", plugin="xtrain")
    widget = LabelLoop(viewer); viewer.window.add_dock_widget(widget)     # Plugins > xtrain > Label loop

1. **Segment**: the chosen model segments the chosen image layer in a worker thread (``segment
   --probabilities``, in this process), with a progress bar and a Cancel button; the viewer stays live.
   The layers ``prediction`` (Labels, class id + 1) and ``entropy`` appear (replaced on the next run).
2. **Suggested planes**: the planes ``xtrain suggest --score entropy`` ranks first (skipping planes already
   labelled in the corrections layer and the labels store): here the entropy is on screen anyway, and a
   plane where the model is unsure is where a correction shows; on the real volume no rule beat another
   (``suggest``'s own default is ``spread``, docs/measurements.md); Previous / Next move the viewer to the plane,
   turning the view for a plane normal to y or x.
3. **Paint** corrections in the ``corrections`` Labels layer (0 = unlabelled; class id + 1, the colours and
   names of the prediction); "Copy prediction" fills the unpainted voxels of the current plane with the
   prediction, to correct rather than paint from scratch.
4. **Save labels** writes the painted voxels as sparse labels into the labels store (default: beside the
   image, ``NAME-labels.zarr``), merged with the labels it holds (painted voxels win; the message says so).
5. **Fine-tune**: the model is fine-tuned on the labels store in this process (``loop.finetune``: no Ray
   start-up, a round takes seconds for the tiny model), then segments the image again; the new model replaces
   the chosen one and the ``prediction`` and ``entropy`` layers are replaced (the old prediction is kept as
   ``prediction (before)``, to compare).

Errors show as napari notifications (one line), never as a traceback; the details go to the log.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QProgressBar,
                            QPushButton, QSpinBox, QVBoxLayout, QWidget)

from ..data.labels import AXES, census
from ..errors import InvalidInputError, RunInterrupted, XtrainError
from ..infer.suggest import SPACING, Pick
from . import loop
from .reader import label_kwargs, read_store

log = logging.getLogger(__name__)

PREDICTION, ENTROPY, CORRECTIONS, BEFORE = "prediction", "entropy", "corrections", "prediction (before)"


def _notify(kind: str, message: str) -> None:
    from napari.utils import notifications

    {"info": notifications.show_info, "warning": notifications.show_warning,
     "error": notifications.show_error}[kind](message)


class LabelLoop(QWidget):
    """The human-in-the-loop dock widget (see the module docstring); ``napari_viewer`` is injected by napari."""

    progressed = Signal(int, int)  # (done, total), emitted from the worker thread, shown on the main thread

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.picks: list[Pick] = []
        self.current = -1
        self.classes: list[str] | None = None
        self.segmentation: Path | None = None
        self.worker: Any = None  # the running worker thread; None when idle
        self._stop = threading.Event()
        self._work: Path | None = None
        self._runs = 0
        self._build()
        self.progressed.connect(self._on_progress)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_images)
        self._refresh_images()

    # ------------------------------------------------------------------ the form

    # Long by design: the form's widgets declared top to bottom in the order the user sees them; no logic.
    def _build(self) -> None:
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("model.pt from xtrain train")
        browse = QPushButton("…")
        browse.setToolTip("choose a model.pt")
        browse.clicked.connect(self._browse)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_edit)
        model_row.addWidget(browse)
        self.image_combo = QComboBox()
        self.image_combo.currentTextChanged.connect(self._image_changed)
        self.axes_combo = QComboBox()
        self.axes_combo.addItems(["z", "zyx"])
        self.axes_combo.setToolTip("z: planes normal to z from the z pass; zyx: z/y/x passes averaged, planes "
                                   "normal to z, y and x suggested (3x the time)")
        self.n_spin = QSpinBox()
        self.n_spin.setRange(1, 500)
        self.n_spin.setValue(10)
        self.spacing_spin = QSpinBox()
        self.spacing_spin.setRange(1, 1000)
        self.spacing_spin.setValue(SPACING)
        self.spacing_spin.setToolTip("least distance in planes between two suggestions and from a labelled plane")
        form = QFormLayout()
        form.addRow("Model", model_row)
        form.addRow("Image", self.image_combo)
        form.addRow("Axes", self.axes_combo)
        form.addRow("Planes to suggest", self.n_spin)
        form.addRow("Spacing", self.spacing_spin)

        self.segment_button = QPushButton("Segment")
        self.segment_button.setToolTip("segment the image with the model (probabilities and entropy too)")
        self.segment_button.clicked.connect(self.segment)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        run_row = QHBoxLayout()
        run_row.addWidget(self.segment_button)
        run_row.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)

        self.previous_button = QPushButton("◀ Previous")
        self.next_button = QPushButton("Next ▶")
        self.previous_button.clicked.connect(self.previous_plane)
        self.next_button.clicked.connect(self.next_plane)
        self.pick_label = QLabel("no suggestions yet: segment first")
        nav_row = QHBoxLayout()
        nav_row.addWidget(self.previous_button)
        nav_row.addWidget(self.next_button)
        self.copy_button = QPushButton("Copy prediction into this plane")
        self.copy_button.setToolTip("fill the unpainted voxels of the current plane of 'corrections' with the "
                                    "prediction, then correct what is wrong")
        self.copy_button.clicked.connect(self.copy_prediction)

        self.labels_edit = QLineEdit()
        self.labels_edit.setPlaceholderText("labels store, e.g. scan-labels.zarr")
        self.save_button = QPushButton("Save labels")
        self.save_button.setToolTip("write the painted voxels as sparse labels (merged with the store's)")
        self.save_button.clicked.connect(self.save_labels)
        self.finetune_button = QPushButton("Fine-tune")
        self.finetune_button.setToolTip("fine-tune the model on the saved labels store (in this process, no Ray), "
                                        "then segment again with the new model")
        self.finetune_button.clicked.connect(self.finetune)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 100_000)
        self.steps_spin.setValue(loop.FINETUNE_STEPS)
        self.steps_spin.setToolTip("optimiser steps of the fine-tune (batches of patches around painted pixels)")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        box = QVBoxLayout(self)
        box.addLayout(form)
        box.addLayout(run_row)
        box.addWidget(self.progress)
        box.addWidget(QLabel("<b>Suggested planes</b>"))
        box.addWidget(self.pick_label)
        box.addLayout(nav_row)
        box.addWidget(self.copy_button)
        box.addWidget(QLabel("<b>Labels</b>"))
        box.addWidget(self.labels_edit)
        box.addWidget(self.save_button)
        tune_row = QHBoxLayout()
        tune_row.addWidget(self.finetune_button)
        tune_row.addWidget(QLabel("steps"))
        tune_row.addWidget(self.steps_spin)
        box.addLayout(tune_row)
        box.addWidget(self.status)
        box.addStretch(1)
        self._set_busy(False)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model", "", "xtrain model (*.pt)")
        if path:
            self.model_edit.setText(path)

    def _refresh_images(self, event: Any = None) -> None:
        current = self.image_combo.currentText()
        from napari.layers import Image

        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)
                 and self._role(layer) in (None, "image")]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        if current not in names:
            self._image_changed(self.image_combo.currentText())

    def _image_changed(self, name: str) -> None:
        layer = self._layer(name)
        store = self._store(layer) if layer is not None else None
        if store and not self.labels_edit.text():
            self.labels_edit.setText(str(store.with_name(store.name.removesuffix(".zarr") + "-labels.zarr")))

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _role(layer: Any) -> str | None:
        return layer.metadata.get("xtrain", {}).get("role")

    def _layer(self, name: str) -> Any:
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    @staticmethod
    def _store(layer: Any) -> Path | None:
        store = layer.metadata.get("xtrain", {}).get("store")
        return Path(store) if store and layer.metadata["xtrain"].get("role") == "image" else None

    def image_layer(self) -> Any:
        layer = self._layer(self.image_combo.currentText())
        if layer is None:
            raise InvalidInputError("open an image first (File > Open, e.g. an xtrain store)")
        return layer

    def _volume(self, layer: Any):
        store = self._store(layer)
        return loop.volume_of(store if store else (layer.data[0] if layer.multiscale else layer.data), layer.name)

    def _set_busy(self, busy: bool) -> None:
        self.segment_button.setEnabled(not busy)
        self.save_button.setEnabled(not busy)
        self.finetune_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setValue(int(round(100 * done / max(total, 1))))

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, RunInterrupted):
            self.status.setText("cancelled")
            _notify("info", "xtrain: cancelled")
            return
        message = str(exc) if isinstance(exc, XtrainError) else f"{type(exc).__name__}: {exc}"
        log.debug("xtrain widget: %s", message, exc_info=exc)
        self.status.setText(message)
        _notify("error", f"xtrain: {message}")

    def _run(self, function, on_done, *args: Any, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)`` in a napari worker thread; ``on_done(result)`` on the main thread."""
        from napari.qt.threading import create_worker

        self._stop.clear()
        # errored connected here: without a handler of its own create_worker re-raises the error in the event loop
        worker = create_worker(function, *args, _start_thread=False, _connect={"errored": self._on_error}, **kwargs)
        worker.returned.connect(on_done)
        worker.finished.connect(self._finished)
        self.worker = worker
        self._set_busy(True)
        worker.start()
        return worker

    def _finished(self) -> None:
        self.worker = None  # connected before the start: ``worker is None`` is a race-free "done" for callers
        self._set_busy(False)

    def cancel(self) -> None:
        """Stop the running segmentation at its next tile batch, a fine-tune at its next step (nothing of either
        is shown or kept as the model)."""
        self._stop.set()
        self.status.setText("cancelling …")

    def _work_dir(self) -> Path:
        if self._work is None:
            self._work = Path(tempfile.mkdtemp(prefix="xtrain-napari-"))
            log.info("segmentations of this session go to %s", self._work)
        return self._work

    def labelled_planes(self) -> dict[str, list[int]]:
        """Planes labelled already: painted in the corrections layer, or in the labels store."""
        from ..infer.suggest import labelled_planes

        planes: dict[str, set[int]] = {a: set() for a in AXES}
        layer = self._layer(CORRECTIONS)
        if layer is not None and np.any(layer.data):
            c = census(np.where(np.asarray(layer.data) > 0, 0, 255).astype(np.uint8))
            for a in AXES:
                planes[a].update(c.painted(a))
        out = Path(self.labels_edit.text()) if self.labels_edit.text() else None
        if out is not None and out.exists():
            for a, idx in labelled_planes(out, tuple(layer.data.shape) if layer is not None else
                                          self._volume(self.image_layer()).shape).items():
                planes[a].update(idx)
        return {a: sorted(v) for a, v in planes.items()}

    # ------------------------------------------------------------------ 1. segment

    def segment(self) -> Any:
        """Segment the chosen image with the chosen model in a worker thread; returns the worker."""
        try:
            model = self.model_edit.text().strip()
            if not model:
                raise InvalidInputError("choose a model.pt first")
            from ..models.checkpoint import load_checkpoint, model_info

            self.classes = model_info(load_checkpoint(model), model).classes
            layer = self.image_layer()
            volume = self._volume(layer)
            labelled = self.labelled_planes()
        except Exception as exc:  # bad input before anything runs: a notification, not a traceback
            self._on_error(exc)
            return None
        self._runs += 1
        out = self._work_dir() / f"segmentation-{self._runs}.zarr"
        axes, n, spacing = self.axes_combo.currentText(), self.n_spin.value(), self.spacing_spin.value()
        self.progress.setValue(0)
        self.status.setText(f"segmenting {layer.name} with {Path(model).name} …")

        def work():
            seg = loop.segment_volume(model, volume, out, axes=axes, progress=self.progressed.emit,
                                      should_stop=self._stop.is_set)
            return seg, loop.ranked_planes(seg, n, axes=axes, spacing=spacing, labelled=labelled)

        return self._run(work, self._segmented)

    def _segmented(self, result: tuple[Path, list[Pick]]) -> None:
        seg, picks = result
        image = self.image_layer()
        placement = {"scale": image.scale, "translate": image.translate}
        self._show_segmentation(seg, placement)
        self.segmentation, self.picks, self.current = seg, picks, -1
        self.progress.setValue(100)
        self.status.setText(f"segmented: {seg}; {len(picks)} planes suggested")
        if picks:
            self.next_plane()

    def _show_segmentation(self, seg: Path, placement: dict[str, Any]) -> None:
        for data, kwargs, _kind in read_store(seg):
            role = kwargs["metadata"]["xtrain"]["role"]
            if role not in (PREDICTION, ENTROPY):
                continue
            if kwargs["name"] in self.viewer.layers:
                self.viewer.layers.remove(kwargs["name"])
            kwargs = {**kwargs, **placement, "visible": True}
            kwargs.pop("units", None)  # the image's units hold (its scale is used)
            if role == PREDICTION:
                self.viewer.add_labels(data, **kwargs)
            else:
                self.viewer.add_image(data, **{**kwargs, "blending": "additive", "opacity": 0.6})
        if CORRECTIONS not in self.viewer.layers:
            shape = tuple(self.viewer.layers[PREDICTION].level_shapes[0])
            layer = self.viewer.add_labels(np.zeros(shape, np.uint8), name=CORRECTIONS, **placement,
                                           **label_kwargs(self.classes),
                                           metadata={"xtrain": {"role": CORRECTIONS, "classes": self.classes}})
            layer.selected_label = 1
        self.viewer.layers.selection.active = self.viewer.layers[CORRECTIONS]

    # ------------------------------------------------------------------ 2. suggested planes

    def go_to(self, i: int) -> None:
        """Show suggestion ``i``: the viewer's slider axis becomes the plane's normal, at its index."""
        if not self.picks:
            return
        self.current = i % len(self.picks)
        p = self.picks[self.current]
        d = AXES.index(p.axis)
        lead = self.viewer.dims.ndim - 3  # a 4th axis (none here) would stay in front
        self.viewer.dims.ndisplay = 2
        self.viewer.dims.order = (*range(lead), lead + d, *(lead + e for e in range(3) if e != d))
        self.viewer.dims.set_current_step(lead + d, p.index)
        self.pick_label.setText(f"{self.current + 1}/{len(self.picks)}: {p.axis}-plane {p.index} "
                                f"(mean entropy {p.score:.3g})")

    def next_plane(self) -> None:
        self.go_to(self.current + 1)

    def previous_plane(self) -> None:
        self.go_to(self.current - 1)

    # ------------------------------------------------------------------ 3. paint

    def copy_prediction(self) -> None:
        """The prediction of the current suggested plane into the unpainted voxels of ``corrections``."""
        if self.current < 0 or PREDICTION not in self.viewer.layers or CORRECTIONS not in self.viewer.layers:
            _notify("warning", "xtrain: segment first, then pick a suggested plane")
            return
        p = self.picks[self.current]
        sl = [slice(None)] * 3
        sl[AXES.index(p.axis)] = p.index
        pred = self.viewer.layers[PREDICTION]
        plane = np.asarray((pred.data[0] if pred.multiscale else pred.data)[tuple(sl)])
        corrections = self.viewer.layers[CORRECTIONS]
        target = corrections.data[tuple(sl)]
        target[target == 0] = plane[target == 0]
        corrections.refresh()

    # ------------------------------------------------------------------ 4. save

    def save_labels(self) -> Any:
        """Save the corrections layer into the labels store in a worker thread; returns the worker."""
        from ..data.painted import save_painted

        try:
            layer = self._layer(CORRECTIONS)
            if layer is None:
                raise InvalidInputError("nothing to save: segment first, then paint in the 'corrections' layer")
            out = self.labels_edit.text().strip()
            if not out:
                raise InvalidInputError("give the labels store to save into, e.g. scan-labels.zarr")
            image = self.image_layer()
            volume = self._volume(image)
            painted = np.array(layer.data, copy=True)  # the layer may change while the worker writes
            classes = self.classes or layer.metadata["xtrain"]["classes"]
        except Exception as exc:
            self._on_error(exc)
            return None
        source = {"image": volume.spec, "model": self.model_edit.text().strip(), "painted_in": "napari"}
        self.status.setText(f"saving labels into {out} …")
        return self._run(save_painted, self._saved, out, painted, classes=classes, image=volume, source=source)

    def _saved(self, report) -> None:
        self.status.setText(report.summary())
        _notify("warning" if report.replaced else "info", f"xtrain: {report.summary()}")

    # ------------------------------------------------------------------ 5. fine-tune

    def finetune(self) -> Any:
        """Fine-tune the model on the labels store, then segment again, in a worker thread; returns the worker.
        Progress: the fine-tune's steps fill the bar to half, the segmentation the rest."""
        try:
            model = self.model_edit.text().strip()
            if not model:
                raise InvalidInputError("choose a model.pt first")
            labels = self.labels_edit.text().strip()
            if not labels or not Path(labels).exists():
                raise InvalidInputError(f"no labels store '{labels}' yet: paint corrections, then Save labels")
            volume = self._volume(self.image_layer())
            labelled = self.labelled_planes()
        except Exception as exc:
            self._on_error(exc)
            return None
        self._runs += 1
        run, out = self._work_dir() / f"finetune-{self._runs}", self._work_dir() / f"segmentation-{self._runs}.zarr"
        axes, n, spacing, steps = (self.axes_combo.currentText(), self.n_spin.value(), self.spacing_spin.value(),
                                   self.steps_spin.value())
        self.progress.setValue(0)
        self.status.setText(f"fine-tuning {Path(model).name} on {Path(labels).name} ({steps} steps) …")

        def work():
            new = loop.finetune(labels, model, run, lambda i, k: self.progressed.emit(i, 2 * k),
                                should_stop=self._stop.is_set, steps=steps)
            seg = loop.segment_volume(new, volume, out, axes=axes, progress=lambda i, k: self.progressed.emit(
                k + i, 2 * k), should_stop=self._stop.is_set)
            return new, seg, loop.ranked_planes(seg, n, axes=axes, spacing=spacing, labelled=labelled)

        return self._run(work, self._finetuned)

    def _finetuned(self, result: tuple[Path, Path, list[Pick]]) -> None:
        new, seg, picks = result
        if PREDICTION in self.viewer.layers:  # kept to compare; replaced on the next round
            if BEFORE in self.viewer.layers:
                self.viewer.layers.remove(BEFORE)
            self.viewer.layers[PREDICTION].name = BEFORE
            self.viewer.layers[BEFORE].visible = False
        self.model_edit.setText(str(new))
        self._segmented((seg, picks))
        self.status.setText(f"fine-tuned: {new}; segmented again: {seg}; {len(picks)} planes suggested")
        _notify("info", f"xtrain: fine-tuned model {new}; the prediction layer shows its segmentation")

