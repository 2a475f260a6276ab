"""The steps of one labelling round, without Qt: what the dock widget runs in its worker threads.

    seg = segment_volume("model.pt", "scan.zarr", work, axes="z", progress=bar, should_stop=stop.is_set)
    picks = ranked_planes(seg, n=10, axes="z", labelled={"z": [40]})      # suggest's ranking of seg's entropy
    report = save_painted("scan-labels.zarr", painted, classes=classes, image=image)   # xtrain.data.painted
    model = finetune(store, model, run_dir, progress, should_stop)        # not yet: needs xtrain train --init

Each one is the library's own code (``xtrain.infer.segment`` with ``--probabilities``,
``xtrain.infer.suggest``, ``xtrain.data.painted``), so the widget's results are those of the CLI.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..data.volumes import Volume, array_volume, open_volume
from ..infer.suggest import SPACING, Pick, entropy_scores, pick_planes
from ..stop import never

log = logging.getLogger(__name__)

# Fine-tuning from a model needs ``xtrain train --init MODEL.pt`` (issue 21: branch ``train``), which is not
# merged yet; the widget's "Fine-tune" button stays disabled, with this reason as its tooltip, until
# ``finetune`` below is written and this becomes None.
FINETUNE_MISSING = ("Fine-tuning needs 'xtrain train --init MODEL.pt' (issue 21), which is not in this xtrain yet: "
                    "train on the saved labels store with 'xtrain train' meanwhile")


def volume_of(source: "str | os.PathLike | np.ndarray", name: str = "layer") -> Volume:
    """The raw volume behind an image layer: a path (an xtrain store or any format ``open_volume`` reads)
    or the layer's (Z, Y, X) array (read into memory: the interactive, small-volume case)."""
    if isinstance(source, (str, os.PathLike)):
        return open_volume(source)
    return array_volume(np.asarray(source), spec=name)


def segment_volume(model: str | os.PathLike, volume: str | os.PathLike | Volume, out: str | os.PathLike, *,
                   axes: str = "z", progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] = never) -> Path:
    """``xtrain segment MODEL VOLUME OUT --probabilities --axes AXES`` in this process; ``progress(done, total)``
    in voxels after each block.  Raises ``RunInterrupted`` once ``should_stop()`` (the blocks in flight are
    abandoned) and every error ``segment`` raises."""
    from ..infer import segment

    vol = open_volume(volume)
    total = int(np.prod(vol.shape))
    done = [0]

    def on_block(block) -> None:
        done[0] += block.voxels
        if progress is not None:
            progress(done[0], total)

    return segment(model, vol, out, axes=axes, probabilities=True, should_stop=should_stop, on_block=on_block)


def ranked_planes(segmentation: str | os.PathLike, n: int, *, axes: str = "z", spacing: int = SPACING,
                  labelled: Mapping[str, Sequence[int]] | None = None) -> list[Pick]:
    """The ``n`` planes ``xtrain suggest --score entropy`` picks, from the entropy a ``--probabilities``
    segmentation stored (no second prediction): z-planes for ``axes`` "z", planes normal to z, y and x for "zyx".
    ``labelled``: axis -> planes already labelled (skipped, and kept ``spacing`` planes away from)."""
    from ..data.store import open_segmentation

    scores = entropy_scores(open_segmentation(segmentation).entropy)
    planes = ("z",) if axes == "z" else ("z", "y", "x")
    return pick_planes({a: scores[a] for a in planes}, n, spacing, labelled)


def finetune(store: str | os.PathLike, model: str | os.PathLike, run_dir: str | os.PathLike,
             progress: Callable[[int, int], None] | None = None,
             should_stop: Callable[[], bool] = never) -> Path:
    """Fine-tune ``model`` on the sparse labels of ``store`` into ``run_dir``; returns ``run_dir/model.pt``.

    To be written once ``xtrain train --init`` exists (see ``FINETUNE_MISSING``): call the in-process
    ``xtrain.train.loop.fit`` (no Ray start-up: issue 23 section 3 measures which is faster) with the config
    of ``model`` plus ``data.store=store`` and ``train.init=model``, reporting ``progress(step, steps)`` and
    stopping at ``should_stop()``.  The widget then re-segments with the new model and replaces the
    prediction layer (``LabelLoop._finetuned``)."""
    raise NotImplementedError(FINETUNE_MISSING)
