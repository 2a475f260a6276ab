"""xtrain.io: one writer per output (the lock a second process refuses on, naming the first one's pid)."""

from __future__ import annotations

import os
import socket

import pytest

from conftest import LockHolder
from xtrain.errors import LockedError
from xtrain.io import lock_path, output_lock


def test_a_second_process_is_refused_naming_the_pid_and_the_lock_goes_with_the_holder(tmp_path):
    out = tmp_path / "seg.zarr"
    with LockHolder(out, "segment") as holder:
        assert lock_path(out).read_text() == f"{holder.pid} on {socket.gethostname()}"
        with pytest.raises(LockedError) as e:
            with output_lock(out, "segment"):
                pass
        assert str(e.value) == (f"another 'xtrain segment' is writing '{out}' (pid {holder.pid} on "
                                f"{socket.gethostname()}); wait for it to finish, or stop that process")
        holder.release()
    assert not lock_path(out).exists()  # removed by its holder at the end
    with output_lock(out, "segment"):  # free again
        assert lock_path(out).read_text().startswith(f"{os.getpid()} on ")
    assert not lock_path(out).exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    holder = LockHolder(out, "train")
    holder.proc.kill()  # SIGKILL: no cleanup ran, the file is still there
    holder.proc.wait()
    assert lock_path(out).exists()
    with output_lock(out, "train"):  # the OS released the flock with the process
        pass


def test_no_lock_without_the_output_folder(tmp_path):
    with output_lock(tmp_path / "missing" / "out.zarr", "segment"):
        assert not (tmp_path / "missing").exists()  # nothing created: the command refuses the folder itself
