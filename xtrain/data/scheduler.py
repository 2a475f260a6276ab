"""Where volume-wide Dask graphs run, and ``compute`` that runs them.

    with use_scheduler(ray_dask_get):     # the edges only (runtime.volume_scheduler)
        counts, = compute(graph)          # library code: the configured scheduler, else threads

Volume-wide passes (statistics, ingest, baselines, the confusion matrix, microstructure, QC)
are Dask graphs over ``Volume.array``; this module is the one place that runs them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


_schedulers: list[Any] = []  # pushed and popped by use_scheduler only (the edges decide)


@contextlib.contextmanager
def use_scheduler(sched: Any) -> Iterator[Any]:
    """Run the volume-wide graphs of ``compute`` with the Dask scheduler ``sched`` while the block runs.

    For the edges (``xtrain.runtime.volume_scheduler``: the CLI and ``jobs/``), not for library
    code.  Only ``compute`` reads it: other Dask calls (``da.store`` of a pyramid) keep Dask's
    own default, so a zarr array, which ``ray.util.dask`` cannot rebuild as a task argument, is
    never handed to Ray.  Nested blocks restore the outer choice."""
    _schedulers.append(sched)
    try:
        yield sched
    finally:
        _schedulers.pop()


def scheduler() -> Any:
    """The Dask scheduler volume-wide graphs run with: the innermost ``use_scheduler``'s, else
    ``"threads"`` (Dask's threaded scheduler).  Library code joins no cluster and sets nothing:
    the CLI sets Ray's ``ray.util.dask.ray_dask_get`` inside a Ray cluster, once at start."""
    return _schedulers[-1] if _schedulers else "threads"


_configured_scheduler = scheduler  # compute's ``scheduler`` argument shadows the name


def compute(*graphs: Any, scheduler: Any = None) -> tuple[Any, ...]:
    """``dask.compute`` of ``graphs`` with ``scheduler`` (default: the configured one, ``scheduler()``).

    On threads, the pool is this call's own and is joined before returning or raising: when
    one task fails, Dask raises at once while its siblings still run, and a caller that then
    removes a partial output (``write_store``) must not see them write into it afterwards.
    """
    import dask

    sched = _configured_scheduler() if scheduler is None else scheduler
    if sched not in ("threads", "threading"):
        return dask.compute(*graphs, scheduler=sched)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # exit = shutdown(wait=True)
        return dask.compute(*graphs, scheduler="threads", pool=pool)
