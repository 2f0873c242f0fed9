"""``forkrun.py``, which runs most rows of ``test_bad_inputs.py``: a forked child ends as ``python SCRIPT`` ends.

Each way a script can end (an uncaught exception, ``sys.exit`` with a message, Ctrl-C, a write at the file-descriptor
level, more output than a pipe holds, a file size limit, ``atexit``) gives the same exit status, stdout and stderr
forked as in a new interpreter.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

from forkrun import Job, limit_file_size, run_jobs

SCRIPT = '''\
import atexit, os, sys
atexit.register(lambda: print("atexit ran", file=sys.stderr))
print("argv", sys.argv, "path[0]", sys.path[0], "cwd", os.getcwd(), "main", __name__)
mode = sys.argv[1]
if mode == "raise":
    raise ValueError("boom")
if mode == "exit_message":
    sys.exit("a message")
if mode == "ctrl_c":
    raise KeyboardInterrupt
if mode == "fd":
    os.write(2, b"written to fd 2\\n")
if mode == "big":
    print("x" * 200_000)
if mode == "fsize":
    with open("big.bin", "wb") as file:
        file.write(bytes(5000))
sys.exit(3)
'''
MODES = ("raise", "exit_message", "ctrl_c", "fd", "big", "fsize", "plain")
FSIZE = 4096  # bytes: the "fsize" mode writes 5000


def test_a_forked_child_ends_as_a_fresh_interpreter(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    for side in ("fresh", "forked"):
        for mode in MODES:
            (tmp_path / side / mode).mkdir(parents=True)
    jobs = {mode: Job(str(script), (mode,), str(tmp_path / "forked" / mode), fsize=FSIZE if mode == "fsize" else None)
            for mode in MODES}
    forked = run_jobs(jobs, tmp_path / "out", parallel=2, timeout=60)
    for mode in MODES:
        fresh = subprocess.run([sys.executable, str(script), mode], cwd=tmp_path / "fresh" / mode, capture_output=True,
                               text=True, timeout=60, check=False,
                               preexec_fn=functools.partial(limit_file_size, FSIZE) if mode == "fsize" else None)
        code, out, err = forked[mode]
        assert code == fresh.returncode, (mode, forked[mode], fresh)
        assert out.replace("/forked/", "/fresh/") == fresh.stdout, mode
        assert err.replace("/forked/", "/fresh/") == fresh.stderr, mode
    assert forked["raise"][0] == 1 and "Traceback (most recent call last)" in forked["raise"][2]
    assert forked["ctrl_c"][0] == -2 and forked["exit_message"][2] == "a message\natexit ran\n"
    assert "File too large" in forked["fsize"][2]
    assert (tmp_path / "forked" / "fsize" / "big.bin").stat().st_size == FSIZE
    assert f"'{script}', 'plain'] path[0] {tmp_path} cwd {tmp_path}/forked/plain main __main__" in forked["plain"][1]
