"""A real visdom server on loopback for tests, started without network access and never left behind.

``python -m visdom.server`` first downloads its JS/CSS from a CDN and dies offline, so the server is
started through ``visdom.server.run_server.main()``, which skips the download (the browser UI may lack
scripts; the HTTP API the client uses does not need them). It runs in a subprocess because its tornado
loop blocks forever, and that subprocess watches its parent: if pytest itself is killed, the server
exits within a second instead of lingering as an orphan.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Runs in the child. argv: parent pid, port, env_path.
_SERVER_CODE = """
import os, sys, threading, time
parent, port, env_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def exit_with_parent():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)

threading.Thread(target=exit_with_parent, daemon=True).start()
sys.argv = ["visdom", "-port", port, "-env_path", env_path, "-bind_local", "-logging_level", "WARNING"]
from visdom.server.run_server import main
main()
"""

STARTUP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class VisdomServer:
    """Where a test server listens, and the process to stop it by."""

    host: str
    port: int
    process: subprocess.Popen

    def stop(self) -> None:
        """Terminate (then kill) the server and reap it; safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def free_port() -> int:
    """A loopback port nothing listens on right now (the OS picks it, so parallel runs do not clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@contextlib.contextmanager
def running_visdom_server(env_path: Path) -> Iterator[VisdomServer]:
    """Start a server on a free loopback port with its env files under ``env_path``; stop it on exit."""
    port = free_port()
    log_path = env_path / "server.log"
    env_path.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _SERVER_CODE, str(os.getpid()), str(port), str(env_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = VisdomServer(host="http://127.0.0.1", port=port, process=process)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _port_answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(
                    f"visdom test server did not come up on port {port} (exit code {process.poll()}):\n{tail}"
                )
            time.sleep(0.1)
        yield server
    finally:
        server.stop()
