"""Evaluation: a label volume against the true labels, classic baselines, reports and comparisons.

    from xtrain.evaluate.core import evaluate, to_json
    result = evaluate("seg.zarr", "soc.zarr", z_range=(205, 250))
    result["overlap"]["per_class"]["ni"]["dice"], result["microstructure"]["ratio"]["tpb"]["density"]

Modules: ``metrics`` (confusion matrix, Dice/IoU), ``microstructure`` (phase fractions,
interfacial areas, TPB, percolation), ``core`` (``evaluate``, label inputs), ``baselines``
(Otsu, k-means, median + Otsu), ``report`` (tables, Markdown + PNG) and ``compare``
(models, predictions and baselines side by side).
"""

from .baselines import BASELINES, fit_baseline, segment_baseline
from .compare import compare
from .core import evaluate, open_image_volume, open_label_volume, to_json
from .metrics import ConfusionMatrix, confusion_matrix, scores
from .microstructure import analyze
from .report import format_tables, write_report

__all__ = [
    "BASELINES",
    "ConfusionMatrix",
    "analyze",
    "compare",
    "confusion_matrix",
    "evaluate",
    "fit_baseline",
    "format_tables",
    "open_image_volume",
    "open_label_volume",
    "scores",
    "segment_baseline",
    "to_json",
    "write_report",
]
