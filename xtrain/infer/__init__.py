"""Blockwise segmentation of whole volumes: blocks (split) -> predict (tiles, blend) -> write.

    from xtrain.infer import SegmentOptions, segment, segment_baseline
    segment("runs/unet/model.pt", "scan.zarr", "scan_labels.zarr", SegmentOptions(workers=2, probabilities=True))
    segment_baseline(fitted, "scan.zarr", "scan_otsu.zarr")     # a threshold baseline, the same way

Exports are imported on first use (``xtrain.lazy``).  No submodule is named like an export
(``segment`` lives in ``segmentation``): an imported submodule would shadow it.
"""

from ..lazy import lazy_exports

__all__ = ["SegmentOptions", "open_segmentation", "segment", "segment_baseline"]
__getattr__, __dir__ = lazy_exports(__name__, {"segment": ".segmentation", "open_segmentation": ".write",
                                               "SegmentOptions": ".options", "segment_baseline": ".baselines"})
