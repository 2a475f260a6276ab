"""Blockwise segmentation of whole volumes: blocks (split) -> predict (tiles, blend) -> write.

    from xtrain.infer import segment
    segment("runs/unet/model.pt", "scan.zarr", "scan_labels.zarr", workers=2, probabilities=True)
"""

from .segment import segment
from .write import open_segmentation

__all__ = ["open_segmentation", "segment"]
