"""What the provenance record's input checksum costs, next to reading the same input once.

    .venv/bin/python bench/provenance.py [--data ../shared/data/soc_pxct] [--rounds 3]

The record (``xtrain.provenance.provenance``) hashes every file of every input once per output
(sha256 over each file's name, size and content).  Side by side, in interleaved rounds (best
round kept: the machine is shared), on the real scan's 250 TIFF slices (``images/``; a synthetic
folder of 64 slices when --data is absent) and on the store ``xtrain ingest`` makes of them:

  hash_tiff   ``hash_input`` of the slice folder's volume (every file read and hashed)
  read_tiff   the same volume read and decoded once (``Volume.read`` of all planes: what ingest,
              segment or evaluate read at least once)
  hash_store  ``hash_input`` of the ingested store (the files of the Zarr v3 group)
  read_store  the store's image read once (``open_store(...).image[:]``: decode of every shard)

The last line is machine-readable:

    RESULT hash_tiff_s=... read_tiff_s=... tiff_ratio=... hash_store_s=... read_store_s=... store_ratio=... \
mb_s=... tiff_mb=... store_mb=...

``*_ratio``: hash time / read time (the record's share on top of one read of the input); ``mb_s``:
sha256 throughput over the TIFF files (MB/s, 10^6 bytes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xtrain.data.ingest import ingest  # noqa: E402
from xtrain.data.store import open_store  # noqa: E402
from xtrain.data.volumes import open_volume  # noqa: E402
from xtrain.provenance import hash_input  # noqa: E402


def slice_folder(data: Path, tmp: Path) -> Path:
    images = data / "images"
    if images.is_dir():
        return images
    import tifffile

    rng = np.random.default_rng(0)
    folder = tmp / "slices"
    folder.mkdir()
    for z in range(64):
        tifffile.imwrite(folder / f"s{z:04d}.tif", (20000 + rng.normal(0, 1500, (501, 501))).astype(np.uint16))
    print(f"{images} not found: a synthetic folder of 64 slices 501 x 501")
    return folder


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "soc_pxct")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        folder = slice_folder(args.data, tmp)
        store = ingest(folder, tmp / "scan.zarr")
        vol = open_volume(folder)
        image = open_store(store).image
        print(f"volume {folder} {vol.shape} {vol.dtype}: {size(folder) / 1e6:.1f} MB of TIFF, store {size(store) / 1e6:.1f} MB")
        cases = {"hash_tiff": lambda: hash_input(vol), "read_tiff": lambda: vol.read(vol.planes(0, vol.shape[0])),
                 "hash_store": lambda: hash_input(store), "read_store": lambda: image[:]}
        best = {k: float("inf") for k in cases}
        for r in range(args.rounds):
            for name, fn in cases.items():
                best[name] = min(best[name], timed(fn))
            print(f"round {r + 1}: " + "  ".join(f"{k} {v:.3f} s" for k, v in best.items()))
        tiff_mb, store_mb = size(folder) / 1e6, size(store) / 1e6
    print(f"hash / read: TIFF slices {best['hash_tiff'] / best['read_tiff']:.2f}, store "
          f"{best['hash_store'] / best['read_store']:.2f}; sha256 {tiff_mb / best['hash_tiff']:.0f} MB/s")
    print(f"RESULT hash_tiff_s={best['hash_tiff']:.3f} read_tiff_s={best['read_tiff']:.3f} "
          f"tiff_ratio={best['hash_tiff'] / best['read_tiff']:.3f} hash_store_s={best['hash_store']:.3f} "
          f"read_store_s={best['read_store']:.3f} store_ratio={best['hash_store'] / best['read_store']:.3f} "
          f"mb_s={tiff_mb / best['hash_tiff']:.0f} tiff_mb={tiff_mb:.1f} store_mb={store_mb:.1f}")


if __name__ == "__main__":
    main()
