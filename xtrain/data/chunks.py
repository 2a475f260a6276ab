"""Zarr chunk integrity: absent, empty, truncated and damaged shards / chunks, named with their z range.

    check_chunks(array, "'scan.zarr' image", complete=True)   # at open: listing + shard indices
    except DECODE_ERRORS as exc: raise damaged_part(array, sel, where, exc)   # at read: which chunk

Zarr reads an absent chunk or shard as the fill value, silently, and zarr-python 3.1 (3.1.6 here)
has no setting to refuse it (zarr-python #486; the config option that raises ``MissingChunkError``
instead, zarr-python #3748, was merged in April 2026, after 3.1.6: once xtrain requires a release
with it, the absent-chunk half of this check can become that option); ``Array.nchunks_initialized`` counts the stored objects but neither names the
absent ones nor sees a zero-length shard, which zarr also reads as fill value.  So:

* at open (``check_chunks``, no chunk data read): one walk of the array's folder, compared with
  its chunk grid (shards when sharded), and each shard's index read (its last 16 bytes per inner
  chunk + the crc32c zarr puts there by default: the shard's header): an absent or 0-byte file is
  ``MissingDataError``, an index that fails its crc32c or points past the end of the file (a
  truncated copy) is ``CorruptFileError``, each naming the file and the z range it holds.
  ``complete`` (an xtrain store, written with ``write_empty_chunks=True``, so all-zero chunks are
  stored too): anything absent is damage, also an inner chunk the index marks as never written.
  Otherwise (a foreign Zarr, a store from before xtrain wrote every chunk) an absent chunk is lost
  or was never written because it held only the fill value (zarr-python 3's default
  ``write_empty_chunks=False``); the files cannot say which, so it is refused the same way unless
  ``allow_missing`` (read as the fill value, with a warning).  Inner chunks a shard's index marks
  as empty are "never written" by the format's own statement and read as the fill value.
* at read (``damaged_part``): bytes that do not decode (xtrain stores carry a crc32c per inner
  chunk and per shard index, so one flipped bit fails) are a ``CorruptFileError`` naming the shard
  and the inner chunk's z, y, x range, never changed voxels.

The cost at open is one directory walk and one small read per shard: 1.0-1.3 ms for the 8 shards
of the 250 x 501 x 501 real volume (bench/checksum.py).  This module imports no other part of
xtrain's data layer: the zarr backend and ``store`` both use it.
"""

from __future__ import annotations

import logging
import os
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptFileError, MissingDataError

log = logging.getLogger(__name__)

DECODE_ERRORS = (ValueError, RuntimeError, IndexError, TypeError)  # what zarr's codecs raise for bad bytes


def array_path(array: Any) -> Path | str:
    """The folder of a zarr array on disk (a local store), else its store path as text."""
    root = getattr(array.store_path.store, "root", None)
    return Path(root) / array.store_path.path if root is not None else str(array.store_path)


def _storage_unit(array: Any) -> tuple[int, ...]:
    """The shape of one stored object: a shard, or a chunk when the array is not sharded."""
    return tuple(array.shards or array.chunks)


def _sharding(array: Any) -> Any:
    """The array's sharding codec (Zarr v3, sharded), else None."""
    from zarr.codecs import ShardingCodec

    codecs = getattr(array.metadata, "codecs", ()) if array.shards else ()
    return next((c for c in codecs if isinstance(c, ShardingCodec)), None)


def _z_range(coords: tuple[int, ...], unit: tuple[int, ...], shape: tuple[int, ...], zaxis: int) -> str:
    if zaxis < 0:  # a 2-D array: one slice
        return "z 0..0"
    z0 = coords[zaxis] * unit[zaxis]
    return f"z {z0}..{min(z0 + unit[zaxis], shape[zaxis]) - 1}"


def _listing(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (relative POSIX path -> size in bytes): one directory walk."""
    sizes: dict[str, int] = {}
    stack = [folder]
    while stack:
        here = stack.pop()
        try:
            entries = list(os.scandir(here))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            else:
                sizes[Path(entry.path).relative_to(folder).as_posix()] = entry.stat().st_size
    return sizes


def _index_problem(path: Path, size: int, codec: Any, n_inner: int, inside: np.ndarray | None
                   ) -> tuple[str, int] | None:
    """What is wrong with a shard file's index (its header), or None: (reason, first empty inner chunk or -1).

    The index is ``n_inner`` (offset, nbytes) uint64 pairs, followed by a crc32c when the codec has
    one (zarr v3 sharding spec; zarr's default), at the end or the start of the file.  A shard cut
    short loses its index (at the end) or the data the index points to (at the start).
    ``inside``: which inner chunks lie inside the array (an edge shard reaches past it); given for
    a store that writes every chunk, where one of them marked empty is a lost chunk."""
    import google_crc32c
    from zarr.codecs import BytesCodec, Crc32cCodec

    kinds = [type(c) for c in codec.index_codecs]
    if not kinds or kinds[0] is not BytesCodec or any(k not in (BytesCodec, Crc32cCodec) for k in kinds):
        return None  # an index codec chain this check does not know: zarr checks it at read time
    crc = Crc32cCodec in kinds
    endian = getattr(getattr(codec.index_codecs[0], "endian", None), "value", "little") or "little"
    nbytes = 16 * n_inner + (4 if crc else 0)
    if size < nbytes:
        return f"is truncated: {size} bytes, shorter than its index of {nbytes} bytes", -1
    at_end = getattr(codec.index_location, "value", codec.index_location) == "end"
    with open(path, "rb") as f:
        f.seek(size - nbytes if at_end else 0)
        raw = f.read(nbytes)
    if crc and np.uint32(google_crc32c.value(raw[:-4])).tobytes() != raw[-4:]:
        return "is truncated or damaged: its index fails its crc32c checksum", -1
    entries = np.frombuffer(raw[:16 * n_inner], dtype="<u8" if endian == "little" else ">u8").reshape(n_inner, 2)
    empty = (entries == np.iinfo(np.uint64).max).all(axis=1)
    if (~empty).any():
        ends = entries[~empty, 0] + entries[~empty, 1]
        limit = size - nbytes if at_end else size
        if int(ends.max()) > limit or int(entries[~empty, 0].min()) < (0 if at_end else nbytes):
            return f"is truncated: its index points to byte {int(ends.max())} of a {size}-byte file", -1
    if inside is not None and (empty & inside).any():
        return "has inner chunks that were never written", int(np.flatnonzero(empty & inside)[0])
    return None


def check_chunks(array: Any, where: str, *, complete: bool, allow_missing: bool = False, zaxis: int | None = None) -> list[str]:
    """Refuse an array with a lost, empty or truncated shard (or chunk): checked from the file listing
    and the shard indices only, no chunk data is read.  Returns the absent keys ``allow_missing`` let through.

    ``complete``: the array was written with every chunk (an xtrain store), so anything absent is
    damage and ``allow_missing`` does not apply.  ``zaxis``: the z axis (default: the third from last)
    for the z range each message names.  Raises ``MissingDataError`` (absent or empty files, inner chunks
    an xtrain store's index marks as never written) or ``CorruptFileError`` (a truncated shard).
    Arrays outside a local folder are not checked (xtrain opens folders only)."""
    folder = array_path(array)
    if not isinstance(folder, Path) or not array.size:
        return []
    zaxis = array.ndim - 3 if zaxis is None else zaxis
    unit = _storage_unit(array)
    shape = tuple(int(n) for n in array.shape)
    grid = [-(-n // u) for n, u in zip(shape, unit)]
    sizes = _listing(folder)
    kind = "shard" if array.shards else "chunk"
    missing: list[tuple[str, tuple[int, ...]]] = []
    present: list[tuple[str, tuple[int, ...]]] = []
    for coords in product(*(range(n) for n in grid)):
        key = array.metadata.encode_chunk_key(coords)
        (present if sizes.get(key, 0) > 0 else missing).append((key, coords))
    if missing:
        key, coords = missing[0]
        what = "is empty (0 bytes)" if key in sizes else "is missing"
        more = f" (and {len(missing) - 1} more of its {len(present) + len(missing)} {kind}s)" if len(missing) > 1 else ""
        head = f"{where}: {kind} '{folder / key}' ({_z_range(coords, unit, shape, zaxis)}) {what}{more}"
        if complete:
            raise MissingDataError(f"{head}; xtrain writes every chunk, so it was lost (an interrupted or partial "
                                   "copy): copy the store again from its source")
        if not allow_missing:
            err = MissingDataError(f"{head}: lost in a copy, or never written because it held only the fill value "
                                   f"{array.fill_value} (zarr's write_empty_chunks=False); copy it again, or if it is "
                                   "meant to be empty pass --allow-missing (xtrain ingest / segment) to read absent "
                                   "chunks as the fill value")
            err.fill_value = array.fill_value  # a label image's unpainted value: absent chunks may be meant (sparse.py)
            raise err
        log.warning("%s; read as the fill value %s (--allow-missing)", head, array.fill_value)
    codec = _sharding(array)
    if codec is not None:
        inner = tuple(int(c) for c in codec.chunk_shape)
        per = [u // c for u, c in zip(unit, inner)]
        n_inner = int(np.prod(per))
        starts = np.stack(np.unravel_index(np.arange(n_inner), per), axis=1) * np.asarray(inner)  # within a shard
        for key, coords in present:
            inside = ((starts + np.asarray(coords) * np.asarray(unit)) < np.asarray(shape)).all(axis=1) \
                if complete else None
            problem = _index_problem(folder / key, sizes[key], codec, n_inner, inside)
            if problem is None:
                continue
            reason, empty = problem
            head = f"{where}: shard '{folder / key}' ({_z_range(coords, unit, shape, zaxis)}) {reason}"
            if empty < 0:
                raise CorruptFileError(f"{head}; copy the store again from its source")
            start = [k * u + i * c for k, u, i, c in zip(coords, unit, np.unravel_index(empty, per), inner)]
            raise MissingDataError(f"{head}, e.g. the one at z {start[zaxis]}..{start[zaxis] + inner[zaxis] - 1}; "
                                   "xtrain writes every chunk, so it was lost: copy the store again from its source")
    return [k for k, _ in missing]


def _box(sel: tuple, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """(start, stop) per axis of a basic selection (ints and slices with step 1)."""
    box = []
    for s, n in zip(sel, shape):
        if isinstance(s, slice):
            start, stop, _ = s.indices(n)
            box.append((start, max(start, stop)))
        else:
            i = int(s) % n if n else 0
            box.append((i, i + 1))
    return box


def _bad_blocks(array: Any, box: list[tuple[int, int]], unit: tuple[int, ...],
                first_only: bool) -> list[tuple[tuple[int, ...], BaseException]]:
    """The blocks of ``unit`` (grid coordinates) inside ``box`` that fail to read, with their errors."""
    ranges = [range(a // u, (b - 1) // u + 1) if b > a else range(0) for (a, b), u in zip(box, unit)]
    bad = []
    for coords in product(*ranges):
        region = tuple(slice(c * u, min((c + 1) * u, n)) for c, u, n in zip(coords, unit, array.shape))
        try:
            array[region]
        except DECODE_ERRORS as exc:
            bad.append((coords, exc))
            if first_only:
                break
    return bad


def damaged_part(array: Any, sel: tuple, where: str, exc: BaseException) -> CorruptFileError:
    """The error for a read of ``sel`` that failed to decode.  Reads the shards it touches one at a
    time, then the inner chunks of the bad shard, to name the damaged part: "chunk z 40..40, y
    0..255, x 0..255 of shard '.../0/c/1/0/0' (z 32..63) fails to decode (ValueError: Stored and
    computed checksum do not match ...)"; the shard alone when all its chunks fail (a broken index)."""
    folder = array_path(array)
    unit = _storage_unit(array)
    shape = tuple(int(n) for n in array.shape)
    zaxis = array.ndim - 3
    found = _bad_blocks(array, _box(sel, shape), unit, first_only=True)
    coords, error = found[0] if found else (tuple(a // u for (a, _), u in zip(_box(sel, shape), unit)), exc)
    key = array.metadata.encode_chunk_key(coords)
    part = f"{'shard' if array.shards else 'chunk'} '{folder}/{key}' ({_z_range(coords, unit, shape, zaxis)})"
    if array.shards and found:
        region = [(c * u, min((c + 1) * u, n)) for c, u, n in zip(coords, unit, shape)]
        chunks = tuple(int(c) for c in array.chunks)
        inner = _bad_blocks(array, region, chunks, first_only=False)
        total = int(np.prod([-(-(b - a) // c) for (a, b), c in zip(region, chunks)]))
        if inner and len(inner) < total:  # some chunks decode: name the bad one
            bad, error = inner[0]
            span = ", ".join(f"{ax} {i * c}..{min((i + 1) * c, n) - 1}"
                             for ax, i, c, n in zip("zyx", bad[-3:], chunks[-3:], shape[-3:]))
            more = f" (and {len(inner) - 1} more of its {total} chunks)" if len(inner) > 1 else ""
            part = f"chunk {span}{more} of {part}"
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return CorruptFileError(f"{where}: {part} fails to decode ({type(error).__name__}: {first}); the file is damaged "
                            "or truncated: copy the store again from its source")
