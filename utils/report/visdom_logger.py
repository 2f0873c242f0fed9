"""Live training curves on a visdom server: optional, and never a reason for a run to stop.

``metrics.jsonl`` in the run directory is the record of a run; these plots are only a live view of the
same numbers. So every failure here (visdom not installed, no server, a server that dies or stalls
mid-run) costs at most one warning and one bounded wait, after which the logger is inactive and every
call returns at once.

Why ``logging`` and not ``warnings.warn``: a missing server is a fact about the machine, not a misuse
of this API, which is the line the Python docs draw between the two ("logging.warning() if there is
nothing the client application can do about the situation"). ``warnings`` would also show the message
only once per code location per process (a second run in the same process, e.g. a sensitivity sweep
after training, would lose it) and turns into an exception under ``-W error``. With no logging set
up, Python's last-resort handler still prints the warning to stderr.
"""

from __future__ import annotations

import functools
import html
import logging
import math
import re
import warnings
from typing import Any

import numpy as np

_LOG = logging.getLogger(__name__)

# Metrics measured once per data split: ``<split>_<metric>`` keys share the window ``<metric>`` and get
# one line per split, so train and test curves sit on the same axes.
_SPLIT_METRICS = ("loss", "top1", "top5")
# The x axis of every epoch plot, so never a window of its own if a caller passes it in ``metrics``.
_X_KEY = "epoch"
_STILL_RECORDED = "the metrics are still written to metrics.jsonl"


class VisdomLogger:
    """Plot per-epoch metrics, prune-ratio sweeps and text to a visdom server, if one is there.

    Window ids are ``f"{title_prefix}{name}"`` (``loss``, ``top1``, ``lr``, ``sweep``, ``summary``, ...)
    and never random: a resumed run with the same ``env`` and ``title_prefix`` appends to the windows
    the first part of the run drew, as long as the server kept them.
    """

    def __init__(
        self,
        *,
        enabled: bool,
        host: str = "http://localhost",
        port: int = 8097,
        env: str = "main",
        title_prefix: str = "",
        timeout_s: float = 2.0,
    ) -> None:
        """Connect now when ``enabled``, so a missing server shows up (as one warning) before training.

        ``timeout_s`` bounds each HTTP request to the server (connect and read; seconds). Only one
        request ever times out: the logger goes inactive after the first failure.
        """
        self._address = f"{host}:{port}"
        self._env = env
        self._prefix = title_prefix
        self._timeout_s = timeout_s
        # Windows known to exist on the server (asked once per window, so a resumed run finds the old
        # ones): plots into these append; any other window is created first, so that it gets its title
        # and axis labels (visdom's append-creates-the-window path leaves it without a layout).
        self._windows: set[str] = set()
        self._client: Any = None
        if enabled:
            self._client = self._connect(host=host, port=port)

    @property
    def active(self) -> bool:
        """True while calls still reach the server; False when disabled or after a failure."""
        return self._client is not None

    def log_epoch(self, epoch: int, metrics: dict[str, float], *, phase: str = "train") -> None:
        """Append one point per metric at x = ``epoch``.

        ``train_loss`` and ``test_loss`` become the lines ``train`` and ``test`` of the window ``loss``
        (likewise ``*_top1``, ``*_top5``); a bare ``loss``/``top1``/``top5`` is a line named ``phase``.
        Any other key (``lr``) gets a window of its own. Values that are not numbers are skipped, so the
        same dict that goes to metrics.jsonl can be passed unchanged; NaN and inf become gaps, because
        plotly cannot draw them.
        """
        if self._client is None:
            return
        points = _epoch_points(metrics, phase)
        try:
            for window, line, value in points:
                self._plot(window, [float(epoch)], [value], name=line, update="append", xlabel="epoch")
        except Exception as exc:  # noqa: BLE001 - whatever the server or client does, training goes on
            self._deactivate(exc, f"epoch {epoch}")

    def log_sweep(
        self, ratios: list[float], top1: list[float], *, name: str = "top1 (without fine-tune)", win: str = "sweep"
    ) -> None:
        """Draw accuracy against prune ratio as the line ``name`` of window ``win``.

        A sweep arrives whole, so the line replaces an earlier line of the same ``name`` instead of
        growing; lines with other names (e.g. after fine-tuning) stay in the window for comparison.
        Mismatched or empty lists raise ``ValueError`` even when plotting is off: that is a caller bug,
        and it should not hide until someone turns visdom on.
        """
        if len(ratios) != len(top1) or not ratios:
            raise ValueError(
                f"log_sweep needs equally long, non-empty lists; got {len(ratios)} ratios and {len(top1)} accuracies"
            )
        if self._client is None:
            return
        try:
            self._plot(
                win,
                [float(r) for r in ratios],
                [_finite(float(a)) for a in top1],
                name=name,
                update="replace",
                xlabel="prune ratio",
                ylabel="top1",
            )
        except Exception as exc:  # noqa: BLE001 - whatever the server or client does, the sweep goes on
            self._deactivate(exc, f"the sweep {name!r}")

    def log_text(self, text: str, *, win: str = "summary") -> None:
        """Show ``text`` (e.g. the markdown results table) in window ``win``, replacing what was there.

        visdom renders text panes as HTML and has no markdown, so the text goes in escaped inside
        ``<pre>``: a markdown table is made to be read in a monospace font, and ``<``/``&`` survive.
        """
        if self._client is None:
            return
        window = self._prefix + win
        try:
            self._client.text(f"<pre>{html.escape(text)}</pre>", win=window, env=self._env, opts={"title": window})
        except Exception as exc:  # noqa: BLE001 - whatever the server or client does, the run goes on
            self._deactivate(exc, f"the text window {window!r}")

    def _connect(self, *, host: str, port: int) -> Any:
        """Return a client that has answered one request, or None after warning why not."""
        try:
            client_class = _client_class()
        except ImportError as exc:
            _LOG.warning(
                "visdom: live plots are off because visdom cannot be imported (%s; pip install visdom==0.2.4); %s",
                exc,
                _STILL_RECORDED,
            )
            return None
        try:
            # The constructor already posts to the server (to create the env), and raise_exceptions
            # makes that fail loudly instead of printing a traceback; check_connection with no wait is a
            # single request that also tells a visdom server from another program on the port.
            with warnings.catch_warnings():
                # visdom 0.2.4 calls the deprecated logger.warn() here; that is its business, not the user's.
                warnings.filterwarnings("ignore", "The 'warn' method is deprecated", DeprecationWarning)
                client = client_class(
                    server=host,
                    port=port,
                    env=self._env,
                    raise_exceptions=True,
                    use_incoming_socket=False,
                    timeout_s=self._timeout_s,
                )
            if client.check_connection(timeout_seconds=0):
                return client
            reason = "something answered, but not as a visdom server"
        except Exception as exc:  # noqa: BLE001 - any failure to connect means: no live plots, nothing more
            reason = self._reason(exc)
        _LOG.warning(
            "visdom: cannot reach a server at %s (%s); live plots are off for this run, %s",
            self._address,
            reason,
            _STILL_RECORDED,
        )
        return None

    def _plot(
        self,
        key: str,
        x: list[float],
        y: list[float],
        *,
        name: str,
        update: str,
        xlabel: str,
        ylabel: str | None = None,
    ) -> None:
        """Add the line ``name`` to window ``prefix + key``, creating the window on first use."""
        window = self._prefix + key
        client = self._client
        if window not in self._windows and client.win_exists(window, env=self._env):
            self._windows.add(window)
        xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if window in self._windows:
            client.line(Y=ys, X=xs, win=window, env=self._env, update=update, name=name)
            return
        opts = {"title": window, "xlabel": xlabel, "ylabel": ylabel or key, "showlegend": True}
        client.line(Y=ys, X=xs, win=window, env=self._env, opts=opts, name=name)
        self._windows.add(window)

    def _deactivate(self, exc: Exception, what: str) -> None:
        """Warn once and stop talking to the server: later calls return at once."""
        self._client = None
        _LOG.warning(
            "visdom: lost the server at %s while plotting %s (%s); live plots are off for the rest of this run, %s",
            self._address,
            what,
            self._reason(exc),
            _STILL_RECORDED,
        )

    def _reason(self, exc: BaseException) -> str:
        """A short cause: visdom replaces the requests error with a bare 'Error connecting', so dig."""
        cause = exc.__cause__ or exc.__context__ or exc
        text = str(cause)
        errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
        if errno:
            return errno.group(0).strip()
        if "timed out" in text.lower() or "timeout" in type(cause).__name__.lower():
            return f"no answer within {self._timeout_s:g} s"
        return f"{type(cause).__name__}: {text[:200]}"


def _finite(value: float) -> float:
    """NaN for non-finite values: visdom sends NaN as a gap, but inf as JSON that browsers reject."""
    return value if math.isfinite(value) else math.nan


def _epoch_points(metrics: dict[str, Any], phase: str) -> list[tuple[str, str, float]]:
    """``(window key, line name, value)`` for each plottable metric; see :meth:`VisdomLogger.log_epoch`."""
    points = []
    for key, raw in metrics.items():
        if key == _X_KEY or isinstance(raw, (str, bytes, bool)):
            continue
        try:
            value = _finite(float(raw))
        except (TypeError, ValueError):
            continue
        split, _, metric = key.rpartition("_")
        if split and metric in _SPLIT_METRICS:
            points.append((metric, split, value))
        elif key in _SPLIT_METRICS:
            points.append((key, phase, value))
        else:
            points.append((key, key, value))
    return points


class _DropSocketNotice(logging.Filter):
    """Drops visdom's notice that use_incoming_socket=False means no events: we never want events."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Without the incoming socket")


@functools.cache
def _client_class() -> type:
    """Build the visdom client class with bounded requests.

    Built on first use so that a disabled logger never imports visdom: that costs a second of imports,
    and visdom quiets the process-wide ``requests`` and ``urllib3`` loggers as a side effect.
    """
    import requests
    import visdom

    logging.getLogger("visdom").addFilter(_DropSocketNotice())

    class _BoundedVisdom(visdom.Visdom):
        """A visdom client whose every request gives up after ``timeout_s``.

        visdom 0.2.4 posts with no timeout, so a server that accepts but never answers would hang the
        run; ``_handle_post`` is the hook visdom documents for changing how requests are sent.
        """

        def __init__(self, *args: Any, timeout_s: float, **kwargs: Any) -> None:
            # Set before super().__init__, which already sends a request.
            self._timeout_s = timeout_s
            self._http = requests.Session()
            super().__init__(*args, **kwargs)

        def _handle_post(self, url: str, data: Any = None) -> str:
            # Our own session also skips visdom's "Setting up a new session..." warning.
            return self._http.post(url, data=data or {}, timeout=self._timeout_s).text

        def win_exists(self, win: str, env: str | None = None) -> bool | None:
            # visdom's version prints to stdout and returns None when the server is gone, after which
            # line(update="append") goes on to a second failing request; raising here ends it at once.
            return {"true": True, "false": False}.get(self._win_exists_wrap(win, env))

    return _BoundedVisdom
