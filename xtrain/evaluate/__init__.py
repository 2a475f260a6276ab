"""Evaluation: a label volume against the true labels, classic baselines, reports.

    from xtrain.evaluate.core import evaluate, to_json
    result = evaluate("seg.zarr", "soc.zarr", z_range=(205, 250))
    result["overlap"]["per_class"]["ni"]["dice"], result["microstructure"]["ratio"]["tpb"]["density"]

Modules: ``metrics`` (confusion matrix, Dice/IoU), ``microstructure`` (phase fractions,
interfacial areas, TPB, percolation), ``core`` (``evaluate``, label inputs), ``baselines``
(Otsu, k-means, median + Otsu, fitted; ``xtrain.infer.baselines`` segments with them) and
``report`` (tables, Markdown + PNG).  Comparing models,
predictions and baselines side by side is a pipeline: ``xtrain.pipelines.compare``.
Exports are imported on first use (``xtrain.lazy``).
"""

from ..lazy import lazy_exports

__all__ = ["BASELINES", "ConfusionMatrix", "analyze", "confusion_matrix", "evaluate", "fit_baseline",
           "format_tables", "open_image_volume", "open_label_volume", "scores", "to_json",
           "write_report"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "BASELINES": ".baselines", "fit_baseline": ".baselines",
    "evaluate": ".core", "open_image_volume": ".core", "open_label_volume": ".core", "to_json": ".core",
    "ConfusionMatrix": ".metrics", "confusion_matrix": ".metrics", "scores": ".metrics",
    "analyze": ".microstructure", "format_tables": ".report", "write_report": ".report",
})
