"""Tests for :mod:`utils.report.plots`: real PNG files of the documented size, drawn in the colours promised.

Reading a plot back cannot say whether it is *good*; these tests pin what can be checked: the file is a
complete PNG of the fixed canvas height, many series widen the figure for a multi-column legend instead
of covering the axes, each series is drawn in its own colour, bad input fails before anything is
written, and plotting leaves no pyplot state or temporary files behind.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image  # installed with matplotlib, which depends on it

from utils.report.plots import DPI, FIGSIZE, plot_bars, plot_lines

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]


def _open_png(path: Path) -> Image.Image:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = Image.open(path)
    assert image.format == "PNG"
    image.load()  # decodes every row: a truncated file fails here
    return image


def _curves(count: int, points: int = 6) -> dict[str, tuple[list[float], list[float]]]:
    xs = [i / (points - 1) for i in range(points)]
    return {f"layer{i // 9 + 1}.{i % 9}.conv1": (xs, [93.0 - (i + 1) * x**2 for x in xs]) for i in range(count)}


def _count_color(image: Image.Image, rgb: tuple[int, int, int], tolerance: int = 3) -> int:
    """Pixels within ``tolerance`` of ``rgb`` per channel (line and marker interiors are exact colours)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int((np.abs(pixels - np.array(rgb, dtype=np.int16)) <= tolerance).all(axis=-1).sum())


def _has_color(image: Image.Image, rgb: tuple[int, int, int]) -> bool:
    return _count_color(image, rgb) > 0


def test_one_series_is_a_png_of_the_fixed_height(tmp_path: Path) -> None:
    path = plot_lines(tmp_path / "one.png", _curves(1), title="t", xlabel="x", ylabel="y")
    assert path == tmp_path / "one.png"
    width, height = _open_png(path).size
    assert height == FIGSIZE[1] * DPI  # a fixed canvas, not cropped to the content
    assert width > FIGSIZE[0] * DPI  # the legend column is added to the axes' width, not taken from it


def test_many_series_get_more_legend_columns_and_distinct_colours(tmp_path: Path) -> None:
    import matplotlib as mpl

    one = _open_png(plot_lines(tmp_path / "one.png", _curves(1), title="t", xlabel="x", ylabel="y"))
    many = _open_png(plot_lines(tmp_path / "many.png", _curves(30), title="ResNet-56 sensitivity",
                                xlabel="fraction pruned", ylabel="top-1 (%)", hlines={"baseline": 93.0}))
    assert many.size[1] == one.size[1]
    # 31 legend entries need two columns: at least one more label's width than the single-series plot.
    assert many.size[0] - one.size[0] > 100
    # The first and last of 30 series take the two ends of the colour map; both must be in the picture.
    cmap = mpl.colormaps["turbo"]
    for fraction in (0.05, 0.95):
        rgb = tuple(round(255 * c) for c in cmap(fraction)[:3])
        assert _has_color(many, rgb), rgb


def test_hlines_none_and_empty_are_the_same_plot(tmp_path: Path) -> None:
    a = plot_lines(tmp_path / "a.png", _curves(2), title="t", xlabel="x", ylabel="y", hlines=None)
    b = plot_lines(tmp_path / "b.png", _curves(2), title="t", xlabel="x", ylabel="y", hlines={})
    assert _open_png(a).tobytes() == _open_png(b).tobytes()


def test_hline_is_drawn(tmp_path: Path) -> None:
    plain = _open_png(plot_lines(tmp_path / "a.png", _curves(1), title="t", xlabel="x", ylabel="y"))
    ruled = _open_png(plot_lines(tmp_path / "b.png", _curves(1), title="t", xlabel="x", ylabel="y",
                                 hlines={"baseline": 92.5}))
    assert plain.tobytes() != ruled.tobytes()
    # The reference line's dark grey ("0.25"): antialiased text has a few such pixels, a dashed line
    # across the axes hundreds.
    grey = (64, 64, 64)
    assert _count_color(ruled, grey, tolerance=1) > _count_color(plain, grey, tolerance=1) + 200


def test_bad_series_are_rejected_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "bad.png"
    with pytest.raises(ValueError, match="'b' has 3 x values but 2 y values"):
        plot_lines(path, {"a": ([0, 1], [1, 2]), "b": ([0, 1, 2], [1, 2])}, title="t", xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match="no series"):
        plot_lines(path, {}, title="t", xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match=r"\.png"):
        plot_lines(tmp_path / "plot.pdf", _curves(1), title="t", xlabel="x", ylabel="y")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "curve.png"
    plot_lines(path, _curves(1), title="first", xlabel="x", ylabel="y")
    first = path.read_bytes()
    plot_lines(path, _curves(3), title="second", xlabel="x", ylabel="y")
    assert path.read_bytes() != first
    _open_png(path)
    assert [p.name for p in path.parent.iterdir()] == ["curve.png"]


def test_bars(tmp_path: Path) -> None:
    labels = [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(9)] * 2 + ["conv1"]
    values = [i / len(labels) for i in range(len(labels))]
    image = _open_png(plot_bars(tmp_path / "bars.png", labels, values, title="sparsity", ylabel="fraction zero",
                                hline=("target", 0.5)))
    assert image.size[1] == FIGSIZE[1] * DPI
    assert image.size[0] > FIGSIZE[0] * DPI  # 55 bars widen the figure
    assert _has_color(image, (31, 119, 180))  # tab:blue bars
    small = _open_png(plot_bars(tmp_path / "small.png", ["a", "b"], [0.1, 0.9], title="t", ylabel="y"))
    assert small.size == (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)
    with pytest.raises(ValueError, match="2 labels but 1 values"):
        plot_bars(tmp_path / "bad.png", ["a", "b"], [1.0], title="t", ylabel="y")
    with pytest.raises(ValueError, match="no bars"):
        plot_bars(tmp_path / "bad.png", [], [], title="t", ylabel="y")


def test_import_is_lazy_and_plotting_never_touches_pyplot() -> None:
    code = (
        "import sys\n"
        "import utils.report.plots\n"
        "assert 'matplotlib' not in sys.modules, 'importing utils.report.plots imported matplotlib'\n"
        "import tempfile, pathlib\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        "    utils.report.plots.plot_lines(pathlib.Path(d) / 'p.png', {'a': ([0, 1], [1, 0])}, title='t', xlabel='x',"
        " ylabel='y')\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'plotting imported pyplot'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
