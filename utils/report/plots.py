"""PNG plots of sensitivity curves, run comparisons and per-layer charts, with no server and no display.

Visdom shows live curves only while its server runs; these files stay next to the run's results and can
be put in a report. Two choices follow from that:

* Figures are built with matplotlib's object API (:class:`matplotlib.figure.Figure` drawn by the Agg
  canvas) and never through ``pyplot``. pyplot keeps every figure in a global registry until it is
  closed and picks a GUI backend when a display exists; a bare Figure needs neither a backend switch
  (which would change the backend of a notebook that imported this module) nor a ``close``: it is freed
  like any object, so a sweep that writes hundreds of plots leaks nothing.
* matplotlib is imported inside the functions, so ``import utils.report.plots`` costs nothing for a run that
  never plots (and works where matplotlib is not installed until a plot is asked for).

Files are written atomically (:func:`utils.core.files.atomic_write_bytes`): a reader never sees half a PNG.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.core.files import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["DPI", "FIGSIZE", "plot_bars", "plot_lines"]

FIGSIZE: tuple[float, float] = (8.0, 5.0)  # inches, of the axes area before any legend column is added
DPI = 120  # 960 x 600 pixels at FIGSIZE: readable on screen and in a report without being heavy
# Up to this many series take distinct colours from matplotlib's default cycle (tab10); more series
# sample a continuous colour map instead, so that neighbouring layers get neighbouring colours.
MAX_CYCLE_COLORS = 10
LEGEND_ROWS = 18  # entries per legend column; more entries spill into further columns
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")
_HLINE_STYLES = ("--", ":", "-.")


def plot_lines(path: str | Path, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str,
               xlabel: str, ylabel: str, hlines: Mapping[str, float] | None = None) -> Path:
    """Write a line plot of ``series`` (``{label: (x values, y values)}``) to the PNG ``path``.

    Every series gets markers (sensitivity sweeps have few points, and a marker shows where they are) and
    a legend entry; ``hlines`` adds dashed horizontal reference lines such as ``{"baseline": 93.4}``, their
    value shown in the legend. The legend sits outside the axes, to the right, in as many columns as it
    needs (27 layers of a ResNet-56 make two), so it can never hide a curve; the figure widens for it and
    keeps its height. Returns ``path``.
    """
    if not series:
        raise ValueError("plot_lines: no series to plot")
    for label, (xs, ys) in series.items():
        if len(xs) != len(ys):
            raise ValueError(f"plot_lines: series {label!r} has {len(xs)} x values but {len(ys)} y values")
    path = _png_path(path)
    hlines = dict(hlines or {})
    entries = [*series, *(f"{name} ({value:g})" for name, value in hlines.items())]
    fig, columns = _figure(entries)
    ax = fig.add_subplot()
    colors = _colors(len(series))
    for index, (label, (xs, ys)) in enumerate(series.items()):
        ax.plot(list(xs), list(ys), label=label, color=colors[index], marker=_MARKERS[index % len(_MARKERS)],
                markersize=4, linewidth=1.3)
    for index, (name, value) in enumerate(hlines.items()):
        ax.axhline(value, color="0.25", linestyle=_HLINE_STYLES[index % len(_HLINE_STYLES)], linewidth=1.2,
                   label=f"{name} ({value:g})")
    _decorate(ax, title=title, xlabel=xlabel, ylabel=ylabel)
    fig.legend(loc="outside right upper", ncols=columns, fontsize="small", frameon=False)
    return _save(fig, path)


def plot_bars(path: str | Path, labels: Sequence[str], values: Sequence[float], *, title: str, ylabel: str,
              hline: tuple[str, float] | None = None) -> Path:
    """Write a bar chart with one bar per label (per-layer sparsity, kept width) to the PNG ``path``.

    Labels are layer names, so they are written vertically and the figure widens with their number
    (a bar stays wide enough to read at 55 layers). ``hline`` = ``(name, value)`` adds a reference line,
    e.g. the global target sparsity. Returns ``path``.
    """
    if len(labels) != len(values):
        raise ValueError(f"plot_bars: {len(labels)} labels but {len(values)} values")
    if not labels:
        raise ValueError("plot_bars: no bars to plot")
    path = _png_path(path)
    from matplotlib.figure import Figure

    width = max(FIGSIZE[0], 0.22 * len(labels) + 1.5)
    fig = Figure(figsize=(width, FIGSIZE[1]), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    positions = list(range(len(labels)))
    ax.bar(positions, list(values), color="tab:blue", width=0.8)
    ax.set_xticks(positions, [str(label) for label in labels], rotation=90, fontsize="small")
    ax.set_xlim(-0.6, len(labels) - 0.4)
    if hline is not None:
        name, value = hline
        ax.axhline(value, color="0.25", linestyle="--", linewidth=1.2, label=f"{name} ({value:g})")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    _decorate(ax, title=title, xlabel=None, ylabel=ylabel)
    ax.grid(axis="x", visible=False)
    return _save(fig, path)


def _png_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plot files are PNG: {path} should end in .png")
    return path


def _figure(entries: Sequence[str]) -> tuple[Figure, int]:
    """A figure of FIGSIZE's height, widened by the legend's columns; returns it and the column count."""
    from matplotlib.figure import Figure

    columns = max(1, math.ceil(len(entries) / LEGEND_ROWS))
    # A "small" (~8 pt) character is about 0.075 in wide; the line-and-marker handle takes about 0.6 in.
    column_width = 0.6 + 0.075 * max(len(entry) for entry in entries)
    fig = Figure(figsize=(FIGSIZE[0] + columns * column_width, FIGSIZE[1]), dpi=DPI, layout="constrained")
    return fig, columns


def _colors(count: int) -> list[Any]:
    """Colours for ``count`` series: the default cycle while it has enough, else samples of a colour map."""
    import matplotlib as mpl

    if count <= MAX_CYCLE_COLORS:
        return [f"C{index}" for index in range(count)]
    # turbo spans blue to red with even lightness steps; its darkest ends are clipped off.
    cmap = mpl.colormaps["turbo"]
    return [cmap(0.05 + 0.9 * index / (count - 1)) for index in range(count)]


def _decorate(ax: Axes, *, title: str, xlabel: str | None, ylabel: str) -> None:
    ax.set_title(title)
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _save(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    # No bbox_inches="tight": the constrained layout already fits the legend, and a fixed canvas size
    # means plots of the same kind line up side by side.
    fig.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())
    return path
