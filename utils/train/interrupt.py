"""Stopping a run on Ctrl-C or SIGTERM without losing it.

While :class:`GracefulStop` is active (around a training loop), the first SIGINT or SIGTERM only *asks* for a stop:
the loop finishes the optimizer step it is in, saves a resumable checkpoint and raises :class:`RunInterrupted`. A
second signal stops at once (KeyboardInterrupt), for a user who cannot wait for the step to end; the last checkpoint
written is then what is kept.

Outside a training loop, :func:`terminate_as_interrupt` makes SIGTERM behave like Ctrl-C, so a job killed by a
scheduler unwinds through the same clean-up (no half-written temporary files) instead of dying on the spot.

Ctrl-C in a terminal, ``timeout``, SLURM and systemd signal every process of the job, DataLoader workers included.
The workers ignore :data:`STOP_SIGNALS` (:func:`utils.data.loaders._seed_worker`): the training process alone
stops, at the step, and says so once.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Self

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # the signals that stop a run (and that its DataLoader workers ignore)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as a shell reports a killed job


class RunInterrupted(Exception):
    """A run stopped on request after saving ``checkpoint``; ``resume`` is what ``--resume`` should be given."""

    def __init__(self, message: str, *, resume: Path, signum: int):
        super().__init__(message)
        self.resume = resume
        self.exit_code = EXIT_CODES.get(signal.Signals(signum), 130)


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop: unwinds like Ctrl-C, exits with 143."""


class GracefulStop:
    """A context manager whose :attr:`requested` becomes the signal's number on the first SIGINT/SIGTERM.

    Signal handlers can only be installed from the main thread; elsewhere (a test calling ``fit`` from a worker
    thread) it does nothing and :attr:`requested` stays None.
    """

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:  # the second signal: stop now
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        self.requested = signum
        print(f"\n{signal.Signals(signum).name}: stopping after the current step and saving a checkpoint to resume "
              "from (signal again to stop at once)", file=sys.stderr, flush=True)


def terminate_as_interrupt() -> None:
    """Make SIGTERM raise :class:`Terminated`, a KeyboardInterrupt, as Ctrl-C does (main thread only)."""

    def handle(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handle)
