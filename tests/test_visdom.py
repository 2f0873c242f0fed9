"""VisdomLogger against a real visdom server on loopback: what is plotted is what was logged, and a
missing, stalled or vanished server costs one warning and no time, never an exception.
"""

from __future__ import annotations

import html
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from visdom_server import VisdomServer, free_port, running_visdom_server

from utils.report.visdom_logger import VisdomLogger

# visdom's own client (used here to read windows back) calls the deprecated logger.warn().
pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]
LOGGER_NAME = "utils.report.visdom_logger"
# A hang guard, not a benchmark: a healthy failure path takes milliseconds (or one timeout_s).
PROMPT_S = 10.0

EPOCHS = [
    {"train_loss": 2.3, "train_top1": 11.0, "test_loss": 2.1, "test_top1": 15.5, "test_top5": 52.0, "lr": 0.1},
    {"train_loss": 1.7, "train_top1": 38.25, "test_loss": 1.6, "test_top1": 41.0, "test_top5": 80.5, "lr": 0.1},
    {"train_loss": 1.2, "train_top1": 57.5, "test_loss": 1.3, "test_top1": 55.0, "test_top5": 90.0, "lr": 0.01},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VisdomServer]:
    with running_visdom_server(tmp_path_factory.mktemp("visdom_env")) as running:
        yield running


@pytest.fixture
def env(request: pytest.FixtureRequest) -> str:
    """A visdom env per test, so tests sharing the module's server never see each other's windows."""
    return request.node.name.replace("[", "_").replace("]", "")


def read_window(server: VisdomServer, win: str | None, env: str) -> dict:
    """A window (all windows of ``env`` for ``win=None``) as the server holds it, via visdom's own API."""
    import visdom  # here, not at the top: the disabled-logger test checks that our module avoids it

    client = visdom.Visdom(
        server=server.host, port=server.port, env=env, raise_exceptions=True, use_incoming_socket=False
    )
    return json.loads(client.get_window_data(win, env))


def traces(window: dict) -> dict[str, tuple[list, list]]:
    return {trace["name"]: (trace["x"], trace["y"]) for trace in window["content"]["data"]}


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME and r.levelno >= logging.WARNING]


def test_epochs_are_plotted_as_logged(server: VisdomServer, env: str) -> None:
    logger = VisdomLogger(enabled=True, host=server.host, port=server.port, env=env, title_prefix="r56 ")
    assert logger.active
    for epoch, metrics in enumerate(EPOCHS, start=1):
        logger.log_epoch(epoch, metrics)
    assert logger.active

    epochs = [1.0, 2.0, 3.0]
    for metric in ("loss", "top1"):
        window = read_window(server, f"r56 {metric}", env)
        assert window["title"] == f"r56 {metric}"
        assert traces(window) == {
            "train": (epochs, [m[f"train_{metric}"] for m in EPOCHS]),
            "test": (epochs, [m[f"test_{metric}"] for m in EPOCHS]),
        }
    assert traces(read_window(server, "r56 top5", env)) == {"test": (epochs, [m["test_top5"] for m in EPOCHS])}
    assert traces(read_window(server, "r56 lr", env)) == {"lr": (epochs, [m["lr"] for m in EPOCHS])}


def test_bare_keys_take_the_phase_and_non_numbers_are_skipped(server: VisdomServer, env: str) -> None:
    logger = VisdomLogger(enabled=True, host=server.host, port=server.port, env=env)
    logger.log_epoch(1, {"loss": 0.9, "top1": 70.0, "epoch": 1, "note": "warmup"}, phase="val")
    logger.log_epoch(2, {"loss": float("nan"), "top1": float("inf")}, phase="val")

    assert traces(read_window(server, "loss", env)) == {"val": ([1.0, 2.0], [0.9, None])}
    assert traces(read_window(server, "top1", env)) == {"val": ([1.0, 2.0], [70.0, None])}
    windows = read_window(server, None, env)
    assert set(windows) == {"loss", "top1"}  # no window for "epoch" or the string "note"


def test_resumed_run_appends_to_the_same_windows(server: VisdomServer, env: str) -> None:
    first = VisdomLogger(enabled=True, host=server.host, port=server.port, env=env)
    for epoch, metrics in enumerate(EPOCHS[:2], start=1):
        first.log_epoch(epoch, metrics)
    resumed = VisdomLogger(enabled=True, host=server.host, port=server.port, env=env)
    resumed.log_epoch(3, EPOCHS[2])

    window = read_window(server, "loss", env)
    assert window["title"] == "loss"  # the layout from the first run survives the appends
    assert traces(window)["train"] == ([1.0, 2.0, 3.0], [m["train_loss"] for m in EPOCHS])


def test_sweep_lines_replace_by_name(server: VisdomServer, env: str) -> None:
    logger = VisdomLogger(enabled=True, host=server.host, port=server.port, env=env)
    ratios = [0.1, 0.3, 0.5, 0.7]
    logger.log_sweep(ratios, [93.0, 92.5, 90.0, 81.25])
    logger.log_sweep(ratios, [93.0, 92.0, 88.0, 70.0], name="conv1")
    logger.log_sweep(ratios, [93.1, 92.6, 90.2, 81.0])  # a rerun of the first sweep replaces its line

    assert traces(read_window(server, "sweep", env)) == {
        "top1 (without fine-tune)": (ratios, [93.1, 92.6, 90.2, 81.0]),
        "conv1": (ratios, [93.0, 92.0, 88.0, 70.0]),
    }


def test_text_round_trips(server: VisdomServer, env: str) -> None:
    logger = VisdomLogger(enabled=True, host=server.host, port=server.port, env=env)
    table = "| model | top1 |\n|---|---|\n| resnet56 <pruned> & tuned | 93.1 |"
    logger.log_text("first version")
    logger.log_text(table)

    window = read_window(server, "summary", env)
    assert window["type"] == "text"
    content = window["content"]
    assert content.startswith("<pre>") and content.endswith("</pre>")
    assert html.unescape(content.removeprefix("<pre>").removesuffix("</pre>")) == table


def test_sweep_with_mismatched_lists_is_a_caller_error_even_when_disabled() -> None:
    with pytest.raises(ValueError, match="3 ratios and 2 accuracies"):
        VisdomLogger(enabled=False).log_sweep([0.1, 0.2, 0.3], [90.0, 80.0])


def _exercise(logger: VisdomLogger) -> float:
    """Every kind of call, a few times; returns the seconds they took."""
    start = time.monotonic()
    for epoch, metrics in enumerate(EPOCHS, start=1):
        logger.log_epoch(epoch, metrics)
        logger.log_sweep([0.1, 0.5], [90.0, 80.0])
        logger.log_text("table")
    return time.monotonic() - start


def test_unreachable_server_warns_once_and_returns_promptly(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there
    start = time.monotonic()
    logger = VisdomLogger(enabled=True, host="http://127.0.0.1", port=port)
    _exercise(logger)
    elapsed = time.monotonic() - start

    assert not logger.active
    [message] = warnings_from(caplog)
    assert f"127.0.0.1:{port}" in message and "metrics.jsonl" in message
    assert elapsed < PROMPT_S


def test_server_that_never_answers_costs_one_timeout(caplog: pytest.LogCaptureFixture) -> None:
    """A port that accepts connections but never replies: visdom alone would wait forever."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel completes connections into the backlog; nobody reads them
        port = listener.getsockname()[1]
        start = time.monotonic()
        logger = VisdomLogger(enabled=True, host="http://127.0.0.1", port=port, timeout_s=0.5)
        _exercise(logger)
        elapsed = time.monotonic() - start

    assert not logger.active
    [message] = warnings_from(caplog)
    assert f"127.0.0.1:{port}" in message and "no answer within 0.5 s" in message
    assert elapsed < PROMPT_S


def test_other_program_on_the_port_is_not_taken_for_visdom(caplog: pytest.LogCaptureFixture) -> None:
    class NotFound(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        logger = VisdomLogger(enabled=True, host="http://127.0.0.1", port=httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not logger.active
    [message] = warnings_from(caplog)
    assert "not as a visdom server" in message


def test_server_killed_mid_run_warns_once_then_calls_are_no_ops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running_visdom_server(tmp_path) as own_server:
        logger = VisdomLogger(enabled=True, host=own_server.host, port=own_server.port)
        logger.log_epoch(0, EPOCHS[0])
        assert logger.active and not warnings_from(caplog)
        own_server.stop()
        elapsed = _exercise(logger)

    assert not logger.active
    [message] = warnings_from(caplog)
    assert f"127.0.0.1:{own_server.port}" in message and "lost the server" in message
    assert elapsed < PROMPT_S


def test_disabled_logger_never_imports_visdom() -> None:
    code = (
        "import sys\n"
        "from utils.report.visdom_logger import VisdomLogger\n"
        "logger = VisdomLogger(enabled=False, port=1)\n"
        "logger.log_epoch(1, {'train_loss': 1.0, 'lr': 0.1})\n"
        "logger.log_sweep([0.1], [90.0])\n"
        "logger.log_text('x')\n"
        "assert not logger.active\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('visdom', 'requests')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert result.stderr == ""  # in particular, no warning
