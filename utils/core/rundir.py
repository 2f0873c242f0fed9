"""Run directories: where a run's config, metrics, checkpoints and results go.

A new run never overwrites an earlier one: ``<output.dir>/<name>`` is taken when free, else ``<name>-2``,
``<name>-3``, ... (``output.overwrite`` reuses ``<name>``). ``--resume`` continues in the directory of the
checkpoint it resumes. While a run writes to its directory it holds it (:meth:`RunDir.hold`): a second run into the
same directory is refused, not interleaved.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from utils.core import distributed
from utils.core.errors import UserError
from utils.core.files import append_bytes, atomic_write_bytes, remove_stale_temporaries, write_error

LOCK_NAME = ".lock"  # in a run directory while a run writes to it: who holds it (see RunDir.hold)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


class RunDir:
    """One run's output folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, output_dir: str | Path, name: str, *, overwrite: bool = False) -> RunDir:
        """Make a fresh run directory (see the module docstring for the naming). Under torchrun rank 0 makes it and
        the other ranks get its path (or rank 0's error)."""
        if not distributed.active():
            return cls._create(output_dir, name, overwrite=overwrite)
        outcome: tuple[bool, str] = (False, "")
        if distributed.is_main():
            try:
                outcome = (True, str(cls._create(output_dir, name, overwrite=overwrite).path))
            except UserError as exc:
                outcome = (False, str(exc))
        made, text = distributed.broadcast_object(outcome)
        if not made:
            raise UserError(text)
        return cls(text)

    @classmethod
    def _create(cls, output_dir: str | Path, name: str, *, overwrite: bool) -> RunDir:
        base = Path(output_dir)
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # "File exists" / "Not a directory" alone do not say which part of the path is in the way.
            blocker = next((p for p in (base, *base.parents) if p.exists() and not p.is_dir()), None)
            why = f"{blocker} is a file, not a folder" if blocker is not None else exc.strerror or str(exc)
            raise UserError(f"output.dir {str(base)!r} cannot be created ({why}); choose a writable "
                            "folder with --set output.dir=PATH") from None
        if not os.access(base, os.W_OK | os.X_OK):
            raise UserError(f"output.dir {str(base)!r} is not writable; choose a writable folder with "
                            "--set output.dir=PATH")
        candidate, n = base / name, 1
        while True:
            try:
                candidate.mkdir(exist_ok=overwrite)
                return cls(candidate)
            except FileExistsError:
                n += 1
                candidate = base / f"{name}-{n}"
            except OSError as exc:
                raise UserError(f"cannot create the run directory {candidate} ({exc.strerror or exc}); choose "
                                "another output.dir") from None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as JSON atomically (a crash never leaves a half-written results file)."""
        return self.write_text(name, to_json(obj))

    def write_text(self, name: str, text: str) -> Path:
        """Write ``text`` atomically (rank 0's under torchrun: the others write nothing)."""
        path = self.path / name
        atomic_write_bytes(path, text.encode())  # makes the folders it needs
        return path

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` (one line per epoch or evaluation; rank 0's under torchrun)."""
        if distributed.is_main():
            append_bytes(self.path / "metrics.jsonl", (json.dumps(record, default=_json_default) + "\n").encode())

    @contextlib.contextmanager
    def hold(self, *, subfolders: bool = False) -> Iterator[None]:
        """Hold this directory for the run that writes to it, from before its first write to its end.

        First checks that the directory (and its ``subfolders``, where a pruning run keeps one run per ratio) can be
        written: a folder that became read-only would otherwise fail after a whole epoch. Then takes a lock on
        ``.lock``, which says who holds it: a second run into the directory (two ``--resume`` of one checkpoint)
        stops with one line naming that run, instead of writing every epoch twice into ``metrics.jsonl``. The OS
        drops the lock when the process ends, killed or not; a clean end also removes the file. Holding it, the
        temporary files that a killed save left are removed (:func:`~utils.core.files.remove_stale_temporaries`).

        A POSIX record lock (``lockf``), not ``flock``: DataLoader workers forked from the run do not inherit it, so a
        run killed with ``kill -9`` does not keep its directory locked until its workers notice. Under torchrun rank 0
        alone holds it; the other ranks get its outcome.
        """
        fd, error = None, ""
        if distributed.is_main():
            try:
                fd = self._take(subfolders)
            except UserError as exc:
                error = str(exc)
        error = distributed.broadcast_object(error)
        if error:
            raise UserError(error)
        try:
            yield
        finally:
            if fd is not None:
                with contextlib.suppress(OSError):  # a folder that became read-only keeps the (unlocked) file
                    (self.path / LOCK_NAME).unlink()
                os.close(fd)  # releases the lock

    def _take(self, subfolders: bool) -> int | None:
        """Check, lock and clean the directory (see :meth:`hold`); return the lock file's descriptor (None: no lock)."""
        folders = [self.path, *sorted(p for p in self.path.rglob("*") if p.is_dir())] if subfolders else [self.path]
        for folder in folders:
            _check_writable(folder)
        fd = _lock(self.path / LOCK_NAME)
        if fd is None:
            return None
        removed = remove_stale_temporaries(self.path, recursive=subfolders)
        if removed:
            names = ", ".join(str(p.relative_to(self.path)) for p in removed)
            print(f"Removed {len(removed)} temporary file(s) that an interrupted save left in {self.path}: {names}")
        return fd


def _check_writable(folder: Path) -> None:
    """A UserError unless a file can be made in ``folder`` and its ``metrics.jsonl`` (if any) appended to: asked of
    the file system itself (read-only mounts, root, access lists), by making a file."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=folder)
        os.close(fd)
        Path(probe).unlink(missing_ok=True)  # a run starting beside this one may have cleaned it up already
        metrics = folder / "metrics.jsonl"
        if metrics.exists() and not os.access(metrics, os.W_OK):
            raise PermissionError(errno.EACCES, f"{metrics.name} is read-only")
    except OSError as exc:
        raise UserError(f"the run folder {folder} is not writable ({exc.strerror or exc}); --resume continues a run "
                        "in its folder: make the folder writable, or copy it somewhere writable and resume the "
                        "copy") from None


def _lock(path: Path) -> int | None:
    """Lock ``path`` (made if absent) and write who holds it; a UserError naming the holder if another process does;
    None (said on stdout) where the file system has no locks."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise write_error(path, exc) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "a process that is starting"
            os.close(fd)
            if exc.errno not in (errno.EACCES, errno.EAGAIN):  # a file system without locks (some network mounts)
                path.unlink(missing_ok=True)
                print(f"note: {path.parent} cannot be locked ({exc.strerror}): a second run into it would not be "
                      "refused, and temporary files left by a killed save stay")
                return None
            raise UserError(f"the run folder {path.parent} is in use by another run ({holder}); wait for it to end "
                            "or stop it, then run this again") from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed the file on its way out after it was opened: lock the one there now
    held_by = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, held_by.encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise write_error(path, exc) from None
    return fd
