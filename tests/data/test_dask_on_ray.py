"""Volume-wide Dask graphs run on Ray (``ray.util.dask``) inside a Ray cluster: same numbers, both nodes used.

The decision is the edge's (``runtime.volume_scheduler``, entered by the CLI): library code
alone never joins a cluster, whatever RAY_ADDRESS says."""

from __future__ import annotations

import time

import dask
import numpy as np
import pytest
import tifffile

from xtrain.data.stats import volume_stats
from xtrain.data.scheduler import compute, scheduler
from xtrain.data.volumes import open_volume
from xtrain.evaluate import evaluate
from xtrain.runtime import volume_scheduler

pytestmark = pytest.mark.slow


def test_graphs_run_on_a_two_node_ray_cluster(ray_cluster, tmp_path, monkeypatch):
    import ray
    from ray.util.dask import ray_dask_get

    def _node(i: int) -> str:  # nested: pickled by value, so Ray workers need not import this test module
        import ray

        time.sleep(0.5)  # long enough that one node's single CPU cannot take every task
        return ray.get_runtime_context().get_node_id()

    rng = np.random.default_rng(0)
    image = rng.integers(0, 60000, size=(21, 37, 33)).astype(np.uint16)
    labels = rng.integers(0, 3, size=image.shape).astype(np.uint8)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    threaded = volume_stats(open_volume(tmp_path / "img.tif"))
    ev_threaded = evaluate(str(tmp_path / "lab.tif"), str(tmp_path / "lab.tif"), slab=4, percolation=False)

    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    monkeypatch.delenv("XTRAIN_DASK_ON_RAY", raising=False)
    assert scheduler() == "threads", "library code chose Ray on its own"
    with volume_scheduler() as sched:
        assert sched is ray_dask_get and scheduler() is ray_dask_get
        nodes = set(compute(*[dask.delayed(_node)(i) for i in range(6)]))
        assert len(nodes) == 2, "the graph's tasks ran on one node only"
        assert volume_stats(open_volume(tmp_path / "img.tif")) == threaded
        ev = evaluate(str(tmp_path / "lab.tif"), str(tmp_path / "lab.tif"), slab=4, percolation=False)
        assert ev["confusion_matrix"] == ev_threaded["confusion_matrix"]
        assert ev["per_slice"]["mean_dice"] == ev_threaded["per_slice"]["mean_dice"]
    assert scheduler() == "threads"
    assert ray.is_initialized(), "the edge disconnected a Ray it did not start"
    monkeypatch.setenv("XTRAIN_DASK_ON_RAY", "0")
    with volume_scheduler() as sched:
        assert sched == "threads" and scheduler() == "threads"
