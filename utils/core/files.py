"""Files written atomically: a crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import torch

from utils.core import distributed
from utils.core.errors import UserError

# A temporary file of atomic_write_bytes: mkstemp(prefix=".NAME.", suffix=".tmp") adds 8 characters of these.
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def atomic_torch_save(obj: Any, path: str | Path) -> int:
    """Write ``obj`` to ``path`` through a temporary file, fsync and rename: a crash leaves the old file or the
    new one, never half of one. Returns the file size in bytes."""
    return atomic_write_bytes(path, checkpoint_bytes(obj))



def checkpoint_bytes(obj: Any) -> bytes:
    """``obj`` serialised by torch.save (once, so ``last`` and ``best`` can share the bytes)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()



def atomic_write_bytes(path: str | Path, data: bytes) -> int:
    """Atomically replace ``path`` with ``data`` (temp file in the same folder, fsync, rename, fsync folder).

    Every file the project writes goes through here, so this is where the rule of a run under torchrun is kept:
    rank 0 alone writes (:mod:`utils.core.distributed`); on the other ranks this writes nothing.

    The temporary file is locked (flock) while it is written, so :func:`remove_stale_temporaries` tells the file
    of a live writer from one a killed process left behind."""
    if not distributed.is_main():
        return len(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(OSError):  # a file system without locks: written all the same
                fcntl.flock(fd, fcntl.LOCK_EX)  # a new file: nobody else holds it
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make results unreadable to the rest of a team
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)  # before the file (and its lock) is closed
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return len(data)


def append_bytes(path: str | Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (made if absent) whole or not at all: a write that fails part-way (a full disk) is
    cut off again, so a log of JSON lines never ends in half a line."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        size = os.fstat(fd).st_size
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
    except OSError as exc:
        os.ftruncate(fd, size)
        raise write_error(path, exc) from None
    finally:
        os.close(fd)


def write_error(path: Path, exc: OSError) -> UserError:
    """The one line for a file that could not be written (a full disk, a folder that became read-only)."""
    return UserError(f"could not write {path}: {exc.strerror or exc}; free some space or choose another output.dir "
                     "(the previous file, if any, is intact)")


def remove_stale_temporaries(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write_bytes` that a killed save left in ``folder`` (and its
    subfolders when ``recursive``); return them. A file still locked by its writer is left alone.

    Call it only while holding the run folder (:meth:`utils.core.rundir.RunDir.hold`): no other run writes there
    then, and a writer outside a run (an export beside a checkpoint) holds its file's lock."""
    removed = []
    for path in sorted(folder.glob("**/.*.tmp" if recursive else ".*.tmp")):
        if not TEMPORARY.fullmatch(path.name) or not path.is_file():
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # gone already, or not ours to read
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
            removed.append(path)
        except OSError:
            pass  # being written now (locked), or the folder is not writable: leave it
        finally:
            os.close(fd)
    return removed


@cache
def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask
