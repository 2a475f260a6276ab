"""Training throughput: a plain single-process torch loop vs Ray Train with 1 and 2 workers.

All three run the same ``xtrain.train.loop.fit`` on the same synthetic store, model, patches,
batch size and number of cores: the plain loop in this process with ``--cores`` torch threads;
Ray Train with 1 worker of ``--cores`` CPUs (Ray sets its OMP_NUM_THREADS) and with 2 workers
of ``--cores / 2`` CPUs each (DDP over gloo), inside a private local Ray of ``--cores`` CPUs.
Throughput is the median over epochs 2.. of the training samples per second that ``fit``
records in metrics.csv (epoch 1 warms up; Ray's start-up and validation are not counted);
the variants run interleaved for ``--rounds`` rounds and the best round of each counts.

    python bench/train_throughput.py --cores 2 --epochs 4
    python bench/train_throughput.py --one-thread      # a busy machine: 1 torch thread per process

``--one-thread``: every process (the plain loop, each Ray worker) gets 1 CPU and 1 torch
thread, so plain and 1 Ray worker use one core each and 2 Ray workers two.  On a shared,
loaded 2-core machine two intra-op threads per process made each step many times slower and
the figures meaningless (measured: 3.3 vs 51.5 samples/s for 2x1 against 1x2 threads).

Last line: ``RESULT ray1_vs_plain=... ray2_vs_plain=... plain_samples_per_s=... ray1_samples_per_s=...
ray2_samples_per_s=...`` (target: ray1_vs_plain >= 0.9).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path

import torch

from xtrain.config import load_config
from xtrain.data.synth import synthesize
from xtrain.runtime import ray_session
from xtrain.malloc import keep_freed_memory
from xtrain.train.loop import WorkerContext, fit
from xtrain.train.ray_trainer import fit_trainer, make_trainer
from xtrain.train.run_dir import METRICS, prepare_run_dir, read_metrics

REPO = Path(__file__).resolve().parents[1]


def throughput(run_dir: Path) -> float:
    rates = [float(r["samples_per_s"]) for r in read_metrics(run_dir / METRICS)]
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="48,192,192", help="synthetic store Z,Y,X")
    p.add_argument("--cores", type=int, default=2, help="cores for every variant (even: 2 workers split them)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--samples", type=int, default=512, help="training patches per epoch (all workers together)")
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--one-thread", action="store_true", help="1 CPU and 1 torch thread per process (see above)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each variant counts")
    args = p.parse_args()
    per_worker = (lambda workers: 1) if args.one_thread else (lambda workers: args.cores // workers)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    root = Path(tempfile.mkdtemp(prefix="xtrain-throughput-"))
    store = synthesize(root / "synth.zarr", shape=tuple(int(v) for v in args.shape.split(",")), preset="medium",
                       seed=0)

    def config(workers: int):
        return load_config(REPO / "configs" / "tiny.yaml", [
            f"data.store={store}", f"data.patch={args.patch}", f"data.samples_per_epoch={args.samples}",
            "data.val_patches=16", "data.loader_workers=0", f"train.batch_size={args.batch}",
            f"train.epochs={args.epochs}", f"train.workers={workers}", "train.max_failures=0"])

    torch.set_num_threads(per_worker(1))
    rates: dict[str, list[float]] = {"plain": [], "ray1": [], "ray2": []}
    with ray_session(num_cpus=args.cores):
        for r in range(args.rounds):  # interleaved, best of each: a shared machine's load drifts
            plain_dir = root / f"plain-{r}"
            plain_dir.mkdir()
            keep_freed_memory()  # as the Ray Train worker does (train_loop_per_worker)
            fit(config(1), plain_dir, WorkerContext())
            rates["plain"].append(throughput(plain_dir))
            print(f"round {r + 1}: plain torch loop, {per_worker(1)} threads: {rates['plain'][-1]:.1f} samples/s",
                  flush=True)
            for workers in (1, 2):
                cfg = config(workers)
                run_dir, _ = prepare_run_dir(root / f"ray{workers}-{r}", cfg, resume=False)
                trainer, attempt = make_trainer(cfg, run_dir, None, cpus_per_worker=per_worker(workers))
                fit_trainer(trainer, run_dir, attempt=attempt)
                rates[f"ray{workers}"].append(throughput(run_dir))
                print(f"round {r + 1}: Ray Train, {workers} worker(s) x {per_worker(workers)} CPUs: "
                      f"{rates[f'ray{workers}'][-1]:.1f} samples/s", flush=True)
    rates = {k: max(v) for k, v in rates.items()}  # type: ignore[assignment]

    print(f"RESULT ray1_vs_plain={rates['ray1'] / rates['plain']:.3f} ray2_vs_plain={rates['ray2'] / rates['plain']:.3f} "
          f"plain_samples_per_s={rates['plain']:.1f} ray1_samples_per_s={rates['ray1']:.1f} "
          f"ray2_samples_per_s={rates['ray2']:.1f} threads_per_process={'1' if args.one_thread else 'cores/workers'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
