"""Run entry scripts many times, each in a process of its own, paying the interpreter's and torch's start-up once.

``python tests/forkrun.py JOBS OUT`` is a small server: it imports torch and torchvision (``utils.core.tvguard``, 2-5 s
of every ``python trainer_exp.py ...``), then forks one child per job of the JSON file ``JOBS``, ``parallel`` at a
time. From there on a child is what ``python SCRIPT ARGS...`` run in ``cwd`` is once the interpreter has started:

- ``sys.argv`` and ``sys.path[0]`` as Python sets them, and the script run as ``__main__``: its imports, the project's
  modules among them, happen in the child, as they would in a new process;
- stdin from /dev/null, stdout and stderr each a pipe at the file-descriptor level (as ``capture_output``), so what
  torch or a DataLoader worker writes is caught too;
- an uncaught exception printed with its traceback and exit status 1, ``SystemExit`` as the interpreter treats it,
  non-daemon threads joined and ``atexit`` handlers run, and its own exit status, or the signal that killed it;
- a job may limit the file size (a disk that fills up) or leave root for a user namespace of its own, as a
  subprocess's ``preexec_fn`` does: a forked child has one thread, so both are safe beside the others.

The server writes ``OUT/<job>.out``, ``OUT/<job>.err`` and ``OUT/codes.json``. What a child does not repeat is the
interpreter's start-up and the import of torch and torchvision; a test about those runs the script fresh.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import resource
import runpy
import selectors
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Job:
    script: str
    args: tuple[str, ...]
    cwd: str
    fsize: int | None = None  # RLIMIT_FSIZE in bytes; SIGXFSZ ignored, so a write beyond it fails with EFBIG
    leave_root: bool = False  # unshare(CLONE_NEWUSER) first (:func:`leave_root`)


def run_jobs(jobs: dict[str, Job], out: Path, *, parallel: int, timeout: float) -> dict[str, tuple[int, str, str]]:
    """``{job: (exit status, stdout, stderr)}``, the outputs decoded as ``subprocess.run(text=True)`` decodes them;
    a job still running ``timeout`` seconds after it started is killed (exit status -9), and the server itself after
    ``timeout`` + 120 s in all (hang guards: the jobs here take a second or less each)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "jobs.json").write_text(json.dumps({name: asdict(job) for name, job in jobs.items()}))
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}  # as run_script
    server = subprocess.run([sys.executable, __file__, str(out / "jobs.json"), str(out), str(parallel), str(timeout)],
                            env=env, capture_output=True, text=True, timeout=timeout + 120, check=False)
    assert server.returncode == 0, f"the fork server failed\nstdout:\n{server.stdout}\nstderr:\n{server.stderr}"
    codes = json.loads((out / "codes.json").read_text())
    return {name: (codes[name], _text(out / f"{name}.out"), _text(out / f"{name}.err")) for name in jobs}


def _text(path: Path) -> str:
    with open(path, encoding=None, newline=None) as file:  # the locale's encoding, universal newlines: text=True's
        return file.read()


# ------------------------------------------------------------------------------------------------ the server


def limit_file_size(limit: int) -> None:
    """In a child: no file may grow past ``limit`` bytes, and a write beyond it fails with EFBIG (SIGXFSZ, which
    would kill the process instead, is ignored): a disk that fills up."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


CLONE_NEWUSER = 0x10000000  # <sched.h>


def leave_root() -> None:
    """In a child: a user namespace of its own. Root there still owns root's files, but its power to write any file
    whatever its mode stops at the namespace, so a read-only folder is read-only to it as to any user."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")


def _exit_status(exc: SystemExit) -> int:
    """The exit status the interpreter gives ``sys.exit(code)`` (a code that is not an int is printed first)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _child(job: dict, stdout: int, stderr: int, inherited: list[int]) -> NoReturn:
    """In the forked child: become ``python SCRIPT ARGS`` and exit with its status; never returns. ``inherited``: the
    server's ends of the pipes, closed here (a subprocess does not inherit them either)."""
    status, interrupted = 1, False
    try:
        for fd in inherited:
            os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        for source, target in ((null, 0), (stdout, 1), (stderr, 2)):
            os.dup2(source, target)
            os.close(source)
        os.chdir(job["cwd"])
        if job["fsize"]:
            limit_file_size(job["fsize"])
        if job["leave_root"]:
            leave_root()
        sys.argv = [job["script"], *job["args"]]
        sys.path[0] = os.path.dirname(job["script"])
        runpy.run_path(job["script"], run_name="__main__")
        status = 0
    except SystemExit as exc:
        status = _exit_status(exc)
    except BaseException as exc:  # noqa: BLE001 - printed as the interpreter prints it
        _print_from(exc, job["script"])
        interrupted = isinstance(exc, KeyboardInterrupt)
    try:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        if interrupted:  # as the interpreter ends on an uncaught KeyboardInterrupt: killed by SIGINT
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        os._exit(status)


def _print_from(exc: BaseException, script: str) -> None:
    """The traceback of ``exc`` from the script's frames on, as ``python SCRIPT`` prints it (without runpy's)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != script:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb or exc.__traceback__)


def serve(jobs_file: Path, out: Path, parallel: int, timeout: float) -> None:
    sys.path[0] = str(REPO)
    import utils.core.tvguard  # noqa: F401 - torch and torchvision, imported once for every child

    pending = list(json.loads(jobs_file.read_text()).items())
    selector = selectors.DefaultSelector()
    running: dict[int, tuple[str, float]] = {}  # pid -> (job, start)
    outputs: dict[str, dict[int, bytearray]] = {}  # job -> {1: stdout, 2: stderr}
    codes: dict[str, int] = {}
    while pending or running or selector.get_map():
        while pending and len(running) < parallel:
            name, job = pending.pop(0)
            pipes = {fd: os.pipe() for fd in (1, 2)}
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                inherited = [key.fd for key in selector.get_map().values()] + [pipes[1][0], pipes[2][0]]
                selector.close()
                _child(job, pipes[1][1], pipes[2][1], inherited)
            outputs[name] = {1: bytearray(), 2: bytearray()}
            for fd, (read, write) in pipes.items():
                os.close(write)
                selector.register(read, selectors.EVENT_READ, (name, fd))
            running[pid] = (name, time.monotonic())
        for key, _ in selector.select(timeout=0.05):
            name, fd = key.data
            chunk = os.read(key.fd, 65536)
            if chunk:
                outputs[name][fd] += chunk
            else:  # every writer closed it (the child and any process it started)
                selector.unregister(key.fd)
                os.close(key.fd)
        for pid, (name, start) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes[name] = os.waitstatus_to_exitcode(status)
                del running[pid]
            elif time.monotonic() - start > timeout:
                os.kill(pid, signal.SIGKILL)  # a hang guard; reaped on a later pass
    for name, streams in outputs.items():
        (out / f"{name}.out").write_bytes(streams[1])
        (out / f"{name}.err").write_bytes(streams[2])
    (out / "codes.json").write_text(json.dumps(codes))


if __name__ == "__main__":
    serve(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
