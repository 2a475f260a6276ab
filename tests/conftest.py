"""Shared fixtures: tiny synthetic stores, the real-data path, one Ray session per test run,
a tiny trained model, and the model tests' single-thread and overfitting helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from xtrain.runtime import quiet_ray

# Ray reads some settings (RAY_AUTH_MODE: token auth once ~/.ray/auth_token exists) when it is
# first imported: set them before any test module imports ray.
quiet_ray()
# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default), so
# a finished run, a stop and a dead worker are noticed up to that much later.  Every Ray process of
# the test session (the ray_cluster fixture, CLI subprocesses, Slurm jobs: they inherit it) polls
# more often: the tiny runs of the tests last seconds.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("XTRAIN_REAL_DATA", REPO.parent / "shared" / "data" / "soc_pxct"))


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size)`` -> a folder on a freshly mounted tmpfs of ``size`` (e.g. "200k"): a file
    system that fills up, for the full-disk tests.  Unmounted afterwards; skips without root."""
    import subprocess

    mounts: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"tmpfs-{len(mounts)}"
        mnt.mkdir()
        rc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                            text=True)
        if rc.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({rc.stderr.strip() or rc.returncode}); needs root")
        mounts.append(mnt)
        return mnt

    yield mount
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real PXCT volume (../shared/data/soc_pxct); tests using it skip when it is absent."""
    if not (REAL_DATA / "images").is_dir():
        pytest.skip(f"real data not found at {REAL_DATA}")
    return REAL_DATA


def make_store(path: Path, shape=(37, 61, 53), seed: int = 0, dtype=np.uint16, classes=("pore", "ysz", "ni"),
               labelled=None) -> Path:
    """A small store with a known pattern: image = 1000 * label + noise, z-dependent offset.

    ``labelled``: a boolean (Z, Y, X) mask, or a function of the dense labels giving one: a sparse
    store, IGNORE outside it, with its label census (as ingest of sparse labels records it)."""
    from xtrain.data.labels import IGNORE, census
    from xtrain.data.stats import IntensityStats
    from xtrain.data.store import write_store

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(classes), size=shape, dtype=np.uint8)
    image = (labels.astype(np.float64) * 1000 + 1000 + rng.normal(0, 50, size=shape)).astype(dtype)
    if labelled is not None:
        mask = labelled(labels) if callable(labelled) else labelled
        labels = np.where(mask, labels, np.uint8(IGNORE)).astype(np.uint8)
    with write_store(path, shape) as w:
        img = w.create("image", shape, dtype)
        lab = w.create("labels", shape, np.uint8)
        stats = IntensityStats(dtype, (float(image.min()), float(image.max())))
        for sl in w.slabs(shape[0]):
            img[sl] = image[sl]
            lab[sl] = labels[sl]
            stats.update(image[sl])
        w.info.classes = list(classes)
        w.info.stats = stats.to_dict()
        w.info.source = {"kind": "test", "seed": seed}
        if labelled is not None:
            w.info.labels = census(labels).to_dict()
    return path


def planes(shape, axis: str = "z", at=(5,)):
    """A ``make_store(labelled=...)`` mask: whole planes normal to ``axis`` at the indices ``at``."""
    mask = np.zeros(shape, bool)
    index = [slice(None)] * 3
    index["zyx".index(axis)] = list(at)
    mask[tuple(index)] = True
    return mask


def tiny_config(store, *overrides: str):
    """configs/tiny.yaml shrunk further for tests: 32-pixel patches, 64 samples per epoch."""
    from xtrain.config import load_config

    return load_config("configs/tiny.yaml", [f"data.store={store}", "data.patch=32", "data.samples_per_epoch=64",
                                             "data.val_patches=16", *overrides])


@pytest.fixture(scope="session")
def train_store(tmp_path_factory) -> Path:
    """A small labelled store that tiny models learn in a few epochs (shared by training tests)."""
    return make_store(tmp_path_factory.mktemp("train_store") / "s.zarr", shape=(33, 50, 47))


@pytest.fixture
def tiny_store(tmp_path) -> Path:
    """An odd-sized (37, 61, 53) store with labels: catches padding and chunk-edge bugs."""
    return make_store(tmp_path / "tiny.zarr")


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray for the whole test session: two nodes of one CPU each on this machine.

    Two nodes (``ray.cluster_utils.Cluster``) rather than one, so every Ray test also
    exercises the cross-node path (2 training workers land on different nodes).  The head
    runs the dashboard: Ray Train frees the workers of a trial Tune ended through the state
    API (xtrain tune refuses a cluster without it).  Only what this fixture started is shut down.
    """
    from xtrain.train.ray_trainer import quiet_ray

    quiet_ray()
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        yield None
        return
    from xtrain.runtime import API_SERVER_ENV, free_port

    port = free_port()  # 8265 may be another Ray's on a shared machine
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True,
                                                            "dashboard_host": "127.0.0.1", "dashboard_port": port})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    # State API clients (Train's PlacementGroupCleaner) must ask this cluster, not the Ray that
    # /tmp/ray points at (see runtime.ray_session).
    api = f"http://127.0.0.1:{port}"
    previous = os.environ.get(API_SERVER_ENV)
    os.environ[API_SERVER_ENV] = api
    ray.init(address=cluster.address, log_to_driver=False, logging_level="warning",
             runtime_env={"env_vars": {API_SERVER_ENV: api}})
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if previous is None:
            os.environ.pop(API_SERVER_ENV, None)
        else:
            os.environ[API_SERVER_ENV] = previous


@pytest.fixture
def harmless_signals():
    """SIGTERM/SIGUSR1 that a test sends itself do nothing outside the command under test (a
    signal arriving just after the command restored the handlers would otherwise end pytest)."""
    import signal

    saved = {s: signal.signal(s, lambda signum, frame: None) for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """model.pt of a 2.5D (3-slice) tiny U-Net trained in-process for a few seconds (no Ray).

    Trained once per test session and shared by the inference, nightly and demo tests."""
    from xtrain.malloc import keep_freed_memory
    from xtrain.train.loop import fit

    keep_freed_memory()  # as the Ray Train worker does: the pages of each step's activations are reused
    root = tmp_path_factory.mktemp("tiny_model")
    train = make_store(root / "train.zarr", shape=(33, 50, 47), seed=1)
    cfg = tiny_config(train, "train.epochs=6", "data.slices=3")
    (root / "run").mkdir()
    fit(cfg, root / "run")
    return root / "run" / "model.pt"


# --------------------------------------------------------------------------- model tests


@pytest.fixture
def one_thread():
    # Two intra-op threads on a busy 2-core machine make each step ~15x slower (threads
    # wait on each other at every op); one thread keeps these tests fast and steady.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def overfit():
    """The tiny-batch overfitting loop, as a fixture: ``overfit(model, x, labels, lr, steps)``."""
    return overfit_losses


def overfit_losses(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, lr: float, steps: int) -> list[float]:
    """Cross-entropy of ``model`` over ``steps`` Adam steps on one fixed batch."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


class StopAfter:
    """A ``should_stop()`` that fires once it has been asked more than ``n`` times (mid-epoch stops)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.n


HOLD_LOCK = """
import sys
from xtrain.io import output_lock
with output_lock(sys.argv[1], sys.argv[2]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


class LockHolder:
    """Another real process holding the output lock of ``out`` for ``xtrain COMMAND`` until ``release()``."""

    def __init__(self, out: Path, command: str):
        import subprocess
        import sys

        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out), command], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout.readline().strip() == "locked"
        self.pid = self.proc.pid

    def release(self) -> None:
        self.proc.communicate("done\n", timeout=60)
        assert self.proc.returncode == 0

    def __enter__(self) -> "LockHolder":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.release()
