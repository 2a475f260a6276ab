"""Error classes.

Every error a user can cause is an ``XtrainError`` that also inherits the matching
built-in (``FileNotFoundError``, ``ValueError`` ...), so library callers can catch
either.  The message is one line: what is wrong, the bad value, and how to fix it.
Only the CLI turns these into ``xtrain: error: ...`` and exit code 2 (3 for ``RunInterrupted``
and, for resumable commands, ``DiskFullError``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class XtrainError(Exception):
    """Base class of all errors caused by user input (exit code 2 at the CLI)."""


class InputNotFoundError(XtrainError, FileNotFoundError):
    """A path the user named does not exist or holds nothing usable."""


class OutputExistsError(XtrainError, FileExistsError):
    """The output exists and the user did not ask to overwrite or resume it."""


class InvalidInputError(XtrainError, ValueError):
    """Input data that cannot be used as it is (shape, dtype, values)."""


class CorruptFileError(InvalidInputError):
    """A file that exists but cannot be decoded (truncated or corrupt TIFF, broken store)."""


class MissingDataError(CorruptFileError):
    """A volume with parts missing: a lost Zarr shard or chunk, an HDF5 virtual dataset's source file or an
    external link's file that is not there, a gap in a numbered slice folder.  Refused, never filled in;
    the message names the missing part and the z range it holds."""


class ShapeMismatchError(InvalidInputError):
    """Two inputs that must agree in shape (image/labels, slices of a stack) do not."""


class LabelValueError(InvalidInputError):
    """A label volume holds a value that is not one of the declared classes."""


class ModelMismatchError(InvalidInputError):
    """A model given to start from (``--init``) whose architecture or classes are not the run's."""


class NonFiniteError(InvalidInputError):
    """NaN or Inf where finite numbers are required."""


class ConfigError(XtrainError, ValueError):
    """A configuration file or ``--set`` override that is not valid."""


class UnknownNameError(XtrainError, ValueError):
    """A name (config key, model, preset ...) that is not one of the valid ones."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], where: str = ""):
        valid = sorted(valid)
        self.kind, self.name, self.valid = kind, name, valid
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(valid)}"
        loc = f" in {where}" if where else ""
        super().__init__(f"unknown {kind} '{name}'{loc}; {hint}")


class RunStateError(XtrainError, RuntimeError):
    """A run directory in a state that does not allow the requested action."""


class LockedError(RunStateError):
    """Another process holds the output's exclusive lock (one writer per output); the message names its pid."""


class RunInterrupted(XtrainError, RuntimeError):
    """A long command stopped on request (SIGTERM / SIGUSR1) after checkpointing: exit 3, resumable."""


class DiskFullError(XtrainError, OSError):
    """The output file system is full (ENOSPC), over quota (EDQUOT) or the file too big (EFBIG)."""


class SettingsMismatchError(RunStateError):
    """A finished or interrupted output made with other settings than the ones given now."""


class SpatialMetadataError(InvalidInputError):
    """Spatial metadata (voxel size, origin, units) that xtrain cannot carry through: a grid that is not
    regular (uneven or decreasing coordinates, sheared planes), sizes that are not positive, metadata
    that contradicts itself."""
