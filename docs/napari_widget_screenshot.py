"""Screenshot of xtrain's "Label loop" dock widget in napari, after a segmentation and a painted correction.

Runs the widget as a user would: opens STORE with xtrain's reader, segments it with MODEL (the widget's worker
thread), goes to the first suggested plane, copies the prediction into the corrections layer there and
paints one stroke over it, then grabs the whole window (canvas, layer list and the dock widget).  Headless:

    pip install -e '.[napari]'
    xvfb-run -a -s "-screen 0 1400x900x24" python docs/napari_widget_screenshot.py scan.zarr model.pt \
        docs/napari_label_loop.png
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

# napari's deprecation warning for PyQt5 would show as a toast over the canvas: filtered before napari loads
warnings.filterwarnings("ignore", message="napari support for the PyQt5 backend")

import napari  # noqa: E402
import npe2  # noqa: E402
from PIL import Image  # noqa: E402

MANIFEST = Path(__file__).resolve().parents[1] / "xtrain" / "napari" / "napari.yaml"


def wait_for(worker, timeout: float = 600.0) -> None:
    done = []
    worker.finished.connect(lambda: done.append(True))
    deadline = time.monotonic() + timeout
    while not done and time.monotonic() < deadline:
        napari.qt.get_qapp().processEvents()
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="an xtrain store (image, and labels if any)")
    parser.add_argument("model", help="model.pt")
    parser.add_argument("png", help="output PNG")
    parser.add_argument("--size", default="1400,900", help="window size W,H")
    parser.add_argument("--n", type=int, default=5, help="planes to suggest")
    parser.add_argument("--colors", type=int, default=128, help="palette size of the PNG")
    args = parser.parse_args(argv)

    pm = npe2.PluginManager.instance()
    if "xtrain" not in pm:  # a venv installed before the plugin existed: register this tree's manifest
        pm.register(npe2.PluginManifest.from_file(MANIFEST))
    from xtrain.napari.widget import LabelLoop

    viewer = napari.Viewer(show=True)
    w, h = (int(v) for v in args.size.split(","))
    viewer.window.resize(w, h)
    viewer.open(args.store, plugin="xtrain")
    if "ground_truth" in viewer.layers:
        viewer.layers["ground_truth"].visible = False
    widget = LabelLoop(viewer)
    viewer.window.add_dock_widget(widget, name="Label loop (xtrain)", area="right")
    widget.model_edit.setText(args.model)
    widget.n_spin.setValue(args.n)
    wait_for(widget.segment())
    widget.copy_prediction()  # the plane the widget moved to: the first suggestion
    p = widget.picks[widget.current]
    corrections = viewer.layers["corrections"]
    corrections.brush_size = 15
    u, v = (n // 2 for n in corrections.data.shape[1:])
    for k in range(-20, 21, 4):
        corrections.paint((p.index, u + k, v + k), 3)
    viewer.layers["entropy"].visible = False
    viewer.layers["prediction"].visible = False  # the corrections hold it on this plane; the grey values show
    corrections.opacity = 0.5
    viewer.reset_view()
    for _ in range(40):
        napari.qt.get_qapp().processEvents()
        time.sleep(0.05)
    image = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(image[..., :3]).quantize(colors=args.colors, dither=Image.Dither.NONE).save(args.png,
                                                                                               optimize=True)
    print(f"wrote {args.png}: {image.shape[1]}x{image.shape[0]} px; {widget.status.text()}", flush=True)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
