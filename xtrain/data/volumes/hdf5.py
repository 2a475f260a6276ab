"""HDF5 / NeXus backend of the volume layer (``open_volume``), through h5py and hdf5plugin.

    open_volume("scan.h5:/entry/data/data")   # a named dataset
    open_volume("scan.nxs")                    # NeXus: default -> NXdata -> signal
    open_volume("tomo.h5")                     # TomoPy / TomocuPy: /exchange/data

Importing hdf5plugin registers the filters beamlines compress with (bitshuffle, LZ4, Blosc,
Zstd ...); a dataset whose filter still cannot be loaded is a ``CodecError`` naming the package.
Without a dataset path the volume is found, in this order, from the NeXus attributes, then
``/exchange/data``, then the only 3-D dataset in the file (datasets behind external links
included); otherwise the error lists the candidates.  The NeXus rules ("find the plottable
data"): the root's ``default`` names the NXentry, or, without it, the file's only NXentry; the
entry's ``default`` names the NXdata (or an NXsubentry, followed the same way), or, without it,
its only NXdata; the NXdata's ``signal`` names the field (or the one field with the older
``signal=1`` attribute).  A ``signal`` decides even when other 3-D fields sit beside it; an
attribute naming something that does not exist is refused, never guessed around.

Missing parts are refused at open (``MissingDataError``: the file and the z range), never read as
HDF5's fill value: an external link whose file is not there (on the way to the dataset, or
anywhere in a file whose volume is found by elimination), a virtual dataset's source file (or
its dataset) that is not there (``allow_missing``: read as the fill value, with a warning), a
dataset's external raw-data file that is missing or too short.  Relative file names are looked
up as HDF5 does: ``HDF5_EXT_PREFIX`` / ``HDF5_VDS_PREFIX``, then beside the file, then the
working directory.  4-D and 5-D datasets take ``channel``/``time``
from a NeXus ``axes`` attribute or the Data Exchange convention (theta, z, y, x is not a
volume: a 4-D dataset without axes names is refused with its shape).

The reader reopens the file in every process (h5py handles do not pickle) and holds one
handle per thread: h5py serialises calls internally, so concurrent Dask reads are safe.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CorruptFileError, InputNotFoundError, InvalidInputError, MissingDataError
from .base import HandleReader, Volume, check_dtype, decode_error, make_volume, select_axes, z_chunks

log = logging.getLogger(__name__)

EXCHANGE = "/exchange/data"


def _h5py():
    import h5py

    try:
        import hdf5plugin  # noqa: F401  (registers the filters on import)
    except ImportError:  # pragma: no cover - a dependency; a filtered dataset then names the package
        log.warning("hdf5plugin is not installed: bitshuffle/LZ4/Blosc compressed datasets cannot be read "
                    "(pip install hdf5plugin)")
    return h5py


def _decode(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.size == 1:
        return _decode(value.reshape(-1)[0])
    return str(value)


def _datasets(f) -> list[tuple[str, tuple[int, ...]]]:
    """Every dataset of 2 or more dimensions (each object once), datasets behind external links
    to files that exist included."""
    found: list[tuple[str, tuple[int, ...]]] = []
    h5py = _h5py()

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim >= 2:
            found.append(("/" + name, tuple(obj.shape)))

    f.visititems(visit)  # does not follow external links: those are added below
    for name, _ in _external_links(f, broken=False):
        target = f[name]
        if isinstance(target, h5py.Dataset) and target.ndim >= 2:
            found.append((name, tuple(target.shape)))
        elif isinstance(target, h5py.Group):
            target.visititems(lambda sub, obj: visit(f"{name.lstrip('/')}/{sub}", obj))
    return found


def resolve_linked(name: str, parent: Path, env: str) -> Path | None:
    """The file an external link or virtual-dataset source names, as HDF5 looks for it: as given when
    absolute, else under the prefix in ``env``, beside ``parent``'s file, then the working directory."""
    path = Path(name)
    candidates = [path] if path.is_absolute() else []
    prefix = os.environ.get(env)
    if prefix:
        candidates.append(Path(prefix) / (path.name if path.is_absolute() else path))
    if not path.is_absolute():
        candidates += [parent / path, Path.cwd() / path]
    return next((c for c in candidates if c.is_file()), None)


def _external_raw_file(name: str, path: Path) -> Path:
    """Where HDF5 reads a dataset's external raw-data file ``name`` from: as given when absolute, else under
    ``HDF5_EXTFILE_PREFIX`` (``${ORIGIN}``: the folder of ``path``), else the working directory."""
    if Path(name).is_absolute():
        return Path(name)
    prefix = os.environ.get("HDF5_EXTFILE_PREFIX")
    if prefix:
        return Path(prefix.replace("${ORIGIN}", str(path.resolve().parent))) / name
    return Path.cwd() / name


def _external_links(f, broken: bool) -> list[tuple[str, str]]:
    """(link path, file it names) of every external link in ``f`` whose file is (``broken``) or is not missing."""
    h5py = _h5py()
    links: list[tuple[str, str]] = []
    parent = Path(f.filename).parent

    def visit(name: str, link: Any) -> None:
        if isinstance(link, h5py.ExternalLink):
            missing = resolve_linked(link.filename, parent, "HDF5_EXT_PREFIX") is None
            if missing == broken:
                links.append(("/" + name, link.filename))

    f.visititems_links(visit)
    return links


def _missing_link(f, name: str, path: Path) -> None:
    """Refuse ``name`` when it, or a group on the way to it, is an external link to a missing file."""
    h5py = _h5py()
    node = ""
    for part in [p for p in name.split("/") if p]:
        node = f"{node}/{part}"
        link = f.get(node, getlink=True)
        if link is None:
            return
        if isinstance(link, h5py.ExternalLink) and resolve_linked(link.filename, path.parent, "HDF5_EXT_PREFIX") is None:
            raise MissingDataError(f"'{path}:{node}' is an external link to '{link.filename}', which does not exist "
                                   f"(looked for beside '{path}'); copy that file next to it (or set HDF5_EXT_PREFIX)")


def _nx_class(node) -> str:
    return _decode(node.attrs.get("NX_class", ""))


def _nexus_child(f, node, path: str, name: str, attr: str, file: Path):
    """Follow attribute ``attr`` of ``path`` naming ``name``: refused when it names nothing."""
    child = f"{path}/{name}"
    _missing_link(f, child, file)
    if name not in node:
        raise InvalidInputError(f"'{file}': the NeXus attribute {path or '/'}@{attr}='{name}' names nothing that "
                                f"exists; fix the attribute or name the dataset as '{file}:/PATH'")
    return node[name], child


def _subgroups(node) -> list[str]:
    """Names of the groups in ``node`` (a broken external link is skipped: ``_find`` refuses it later)."""
    h5py = _h5py()
    names = []
    for k in node:
        try:
            if node.get(k, getclass=True) is h5py.Group:
                names.append(k)
        except (KeyError, OSError, RuntimeError):  # h5py: "Can't get deprecated info for object (can't open file)"
            continue
    return names


def _nexus_signal(f, file: Path) -> str | None:
    """Path of the NeXus default plottable signal (see the module docstring), None when the file does
    not say (no NeXus attributes to follow)."""
    h5py = _h5py()
    node, path = f, ""
    for depth in range(6):  # root -> entry -> (subentries) -> data
        if not isinstance(node, h5py.Group):
            return None
        signal = node.attrs.get("signal") if depth else None
        if signal is not None:
            _, child = _nexus_child(f, node, path, _decode(signal), "signal", file)
            return child
        if _nx_class(node) == "NXdata":  # the older convention: the field with signal=1
            flagged = [k for k, v in node.items() if isinstance(v, h5py.Dataset) and _decode(v.attrs.get("signal", ""))
                       in ("1", "True", "true")]
            return f"{path}/{flagged[0]}" if len(flagged) == 1 else None
        default = node.attrs.get("default")
        if default is not None:
            node, path = _nexus_child(f, node, path, _decode(default), "default", file)
            continue
        wanted = ("NXentry",) if depth == 0 else ("NXdata",)
        kids = [k for k in _subgroups(node) if _nx_class(node[k]) in wanted]
        if len(kids) != 1:
            return None
        node, path = node[kids[0]], f"{path}/{kids[0]}"
    return None


def _find(f, path: Path) -> tuple[str, str]:
    """(dataset path, how it was found) when none was named."""
    signal = _nexus_signal(f, path)
    if signal is not None:
        return signal, "NeXus default/signal"
    if EXCHANGE in f:
        return EXCHANGE, "Data Exchange /exchange/data"
    broken = _external_links(f, broken=True)
    if broken:  # the volume might be behind it: choosing among the others would be a guess
        name, target = broken[0]
        raise MissingDataError(f"'{path}:{name}' is an external link to '{target}', which does not exist, so the "
                               f"volume cannot be found by elimination; copy '{target}' beside '{path}', or name the "
                               f"dataset as '{path}:/PATH'")
    candidates = _datasets(f)
    three_d = [name for name, shape in candidates if len(shape) == 3]
    if len(three_d) == 1:
        return three_d[0], "the only 3-D dataset"
    higher = [name for name, shape in candidates if len(shape) in (4, 5)]
    if not three_d and len(higher) == 1:
        return higher[0], "the only 3-D to 5-D dataset"
    listed = ", ".join(f"{n} {s}" for n, s in candidates) or "none"
    raise InvalidInputError(f"'{path}' has {len(three_d)} 3-D datasets, so the volume is ambiguous (datasets: "
                            f"{listed}); name one as '{path}:/PATH'")


def _check_sources(dset, path: Path, where: str, zaxis: int, allow_missing: bool) -> list[str]:
    """Refuse a virtual dataset whose source files (or their datasets) are missing, and a dataset whose
    external raw-data files are missing or too short (HDF5 reads both as the fill value).  Returns the
    missing sources ``allow_missing`` let through."""
    h5py = _h5py()
    missing: list[tuple[str, str]] = []  # (what, z range)
    if dset.is_virtual:
        for src in dset.virtual_sources():
            name = src.file_name
            if "%" in name:  # a printf-style pattern (unlimited VDS): resolved per block by HDF5
                log.debug("%s: virtual source pattern '%s' not checked", where, name)
                continue
            found = path if name == "." else resolve_linked(name, path.parent, "HDF5_VDS_PREFIX")
            problem = "is missing" if found is None else None
            if found is not None:
                try:
                    with h5py.File(found, "r") as g:
                        if src.dset_name not in g:
                            problem = f"has no dataset '{src.dset_name}'"
                except OSError as exc:
                    problem = f"cannot be opened ({exc})"
            if problem:
                lo, hi = src.vspace.get_select_bounds()
                z = f"z {lo[zaxis]}..{hi[zaxis]}" if zaxis >= 0 else "z 0..0"
                missing.append((f"its source '{name}' {problem}", z))
    for name, offset, size in dset.external or ():
        name = name if isinstance(name, str) else name.decode()
        file = _external_raw_file(name, path)
        need = offset + size if size != h5py.h5f.UNLIMITED else offset
        if not file.is_file() or file.stat().st_size < need:
            why = "is shorter than {need} bytes" if file.is_file() else "does not exist"
            raise MissingDataError(f"{where} keeps its raw data in '{name}', which {why.format(need=need)} (looked "
                                   f"for as '{file}': HDF5 reads relative names from the working directory, or under "
                                   "HDF5_EXTFILE_PREFIX, e.g. '${ORIGIN}' for beside the file); copy it there or set "
                                   "the variable")
    if not missing:
        return []
    what, z = missing[0]
    more = f" (and {len(missing) - 1} more sources)" if len(missing) > 1 else ""
    head = f"{where} is a virtual dataset: {what}, so {z} would read as fill values{more}"
    if not allow_missing:
        raise MissingDataError(f"{head}; copy the source files beside it, or pass --allow-missing (xtrain ingest / "
                               "segment) to read them as the fill value")
    log.warning("%s; read as the fill value (--allow-missing)", head)
    return [w for w, _ in missing]


def _axes(dset, ndim: int, where: str) -> str:
    """Axis letters of a dataset: 3-D is ZYX; 4-D/5-D need NeXus ``axes`` names on its NXdata group."""
    if ndim == 3:
        return "ZYX"
    names = dset.parent.attrs.get("axes")
    if names is not None:
        names = [_decode(n).lower() for n in np.atleast_1d(names)]
        letters = {"z": "Z", "y": "Y", "x": "X", "c": "C", "channel": "C", "channels": "C", "t": "T", "time": "T"}
        if len(names) == ndim and all(n in letters for n in names):
            return "".join(letters[n] for n in names)
    if ndim == 2:
        return "YX"
    raise InvalidInputError(f"{where} is {ndim}-D {tuple(dset.shape)} without NeXus axes names (z, y, x, channel, "
                            "time); write one 3-D (Z, Y, X) dataset, or name its axes")


class Hdf5Reader(HandleReader):
    """One dataset of one file, (Z, Y, X) after ``index``; picklable (path + names only)."""

    def __init__(self, path: Path, name: str, index: tuple, zaxis: int, shape: tuple[int, int, int], dtype: np.dtype):
        self.path, self.name, self.index, self.zaxis, self.shape, self.dtype = path, name, index, zaxis, shape, dtype
        super().__init__()

    def _dataset(self):
        dset = getattr(self._local, "dset", None)
        if dset is None:
            f = _h5py().File(self.path, "r")
            self._local.file, dset = f, f[self.name]
            self._local.dset = dset
        return dset

    def __getitem__(self, key) -> np.ndarray:
        zs, ys, xs = key
        full: list[Any] = []
        spatial = iter((zs, ys, xs) if self.zaxis >= 0 else (ys, xs))
        for i in self.index:
            full.append(next(spatial) if i is None else i)
        try:
            data = np.asarray(self._dataset()[tuple(full)])
        except Exception as exc:
            raise decode_error(exc, f"'{self.path}:{self.name}'", "hdf5plugin") from exc
        if self.zaxis < 0:
            data = data[np.newaxis][zs]
        return data


def open_hdf5(spec: str, path: Path, dataset: str | None, channel: int | None, time: int | None,
              allow_missing: bool = False) -> Volume:
    """The named (or discovered) dataset of an HDF5 / NeXus file as a ``Volume``; missing external files
    and virtual-dataset sources refused (see the module docstring)."""
    h5py = _h5py()
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CorruptFileError(f"'{path}' is not a readable HDF5 file ({exc}); check or copy it again") from exc
    with f:
        how = "named"
        if dataset is None:
            dataset, how = _find(f, path)
        name = dataset if dataset.startswith("/") else "/" + dataset
        _missing_link(f, name, path)
        if name not in f or not isinstance(f[name], h5py.Dataset):
            three_d = [n for n, s in _datasets(f) if len(s) == 3]
            raise InputNotFoundError(f"'{path}' has no dataset '{name}'; its 3-D datasets: "
                                     f"{', '.join(three_d) or 'none'} (give '{path}:/PATH')")
        dset = f[name]
        where = f"'{path}:{name}'"
        source_dtype, _ = check_dtype(dset.dtype, where)
        axes = _axes(dset, dset.ndim, where)
        index, zaxis = select_axes(axes, tuple(dset.shape), channel, time, where)
        absent = _check_sources(dset, path, where, zaxis, allow_missing)
        yx = [n for a, n in zip(axes, dset.shape) if a in "YX"]
        shape = (int(dset.shape[zaxis]) if zaxis >= 0 else 1, int(yx[0]), int(yx[1]))
        native_z = int(dset.chunks[zaxis]) if dset.chunks and zaxis >= 0 else 1
        source_shape = [int(s) for s in dset.shape]
        filters = [str(k) for k in (dset.compression, *(["shuffle"] if dset.shuffle else []))] if dset.compression \
            else []
        voxel = None
        for key in ("voxel_size_nm", "pixel_size_nm"):
            if key in dset.attrs:
                v = np.atleast_1d(dset.attrs[key]).astype(float)
                voxel = tuple(v) if v.size == 3 else (float(v[0]),) * 3
    reader = Hdf5Reader(path.resolve(), name, index, zaxis, shape, source_dtype)
    return make_volume(spec, "hdf5", reader, source_dtype, chunks=z_chunks(shape, source_dtype.itemsize, native_z),
                       voxel_size_zyx_nm=voxel, provenance={
                           "files": str(path.resolve()), "dataset": name, "found_by": how, "axes": axes,
                           "source_shape": source_shape, "filters": filters,
                           "channel": channel, "time": time,
                           **({"absent_sources_read_as_fill": len(absent)} if absent else {})})

