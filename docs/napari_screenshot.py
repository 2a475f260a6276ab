"""Screenshot of an xtrain store or segmentation in napari, opened as it is by napari-ome-zarr.

napari and a Qt binding are not xtrain dependencies: install them in a separate venv and run
headless under Xvfb, e.g.

    python3 -m venv /tmp/napari && /tmp/napari/bin/pip install "napari[pyqt5]" napari-ome-zarr
    xvfb-run -a -s "-screen 0 1280x900x24" /tmp/napari/bin/python docs/napari_screenshot.py \
        soc-seg.zarr docs/napari_soc.png --z 230

It prints the layers napari made (name, kind, levels) so the log shows that the labels came
in as a Labels layer, switches the label layers on (napari-ome-zarr adds them hidden) and
writes a PNG of the whole window (canvas + layer list).
"""

from __future__ import annotations

import argparse
import sys
import time

import napari
import numpy as np
from PIL import Image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="an xtrain .zarr store or segmentation")
    parser.add_argument("png", help="output PNG")
    parser.add_argument("--z", type=int, default=None, help="z slice to show (default: the middle)")
    parser.add_argument("--size", default="1280,900", help="window size W,H")
    parser.add_argument("--opacity", type=float, default=0.45, help="labels layer opacity")
    parser.add_argument("--colors", type=int, default=128, help="palette size of the PNG (default 128)")
    parser.add_argument("--wait", type=float, default=5.0, help="seconds to let the layers draw before the shot")
    args = parser.parse_args(argv)

    viewer = napari.Viewer(show=True)
    w, h = (int(v) for v in args.size.split(","))
    viewer.window.resize(w, h)
    layers = viewer.open(args.store, plugin="napari-ome-zarr")
    for layer in layers:
        levels = len(layer.data) if getattr(layer, "multiscale", False) else 1
        print(f"{layer.name}: {type(layer).__name__}, {levels} levels, shape {layer.data[0].shape}", flush=True)
        if isinstance(layer, napari.layers.Labels):
            layer.opacity = args.opacity
            layer.visible = True  # napari-ome-zarr adds label images hidden (the eye in the layer list)
    depth = layers[0].data[0].shape[0]
    viewer.dims.set_point(0, (args.z if args.z is not None else depth // 2) * viewer.layers[0].scale[0])
    viewer.reset_view()
    deadline = time.monotonic() + args.wait  # let the (asynchronous) multiscale slices load and draw
    while time.monotonic() < deadline:
        napari.qt.get_qapp().processEvents()
        time.sleep(0.05)
    image = viewer.screenshot(canvas_only=False, flash=False)  # (H, W, 4) uint8
    # a 128-colour palette PNG: a third of the RGBA size, no visible change for labels over grey values
    Image.fromarray(image[..., :3]).quantize(colors=args.colors, dither=Image.Dither.NONE).save(args.png,
                                                                                               optimize=True)
    print(f"wrote {args.png}: {image.shape[1]}x{image.shape[0]} px, labels shown: "
          f"{sorted(np.unique(np.asarray(layers[-1].data[-1][0])).tolist())}", flush=True)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
