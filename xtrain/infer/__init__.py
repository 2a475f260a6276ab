"""Blockwise segmentation of whole volumes: blocks (split) -> predict (tiles, blend) -> write.

    from xtrain.infer import segment
    segment("runs/unet/model.pt", "scan.zarr", "scan_labels.zarr", workers=2, probabilities=True)

Exports are imported on first use (``xtrain.lazy``).
"""

from ..lazy import lazy_exports

__all__ = ["open_segmentation", "segment"]
__getattr__, __dir__ = lazy_exports(__name__, {"segment": ".segmentation", "open_segmentation": ".write"})
