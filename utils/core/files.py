"""Files written atomically: a crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

import io
import os
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import torch

from utils.core import distributed
from utils.core.errors import UserError


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
    rank 0 alone writes (:mod:`utils.core.distributed`); on the other ranks this writes nothing."""
    if not distributed.is_main():
        return len(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make results unreadable to the rest of a team
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UserError(f"could not write {path}: {exc.strerror or exc}; free some space or choose another "
                            "output.dir (the previous file, if any, is intact)") from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return len(data)



@cache
def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask
