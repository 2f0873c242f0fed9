"""Compare finished runs side by side: one markdown table and PNG plots.

    python -m utils.report checkpoints/run_a checkpoints/run_b ... [--out DIR]

A run directory is what ``trainer_exp.py`` or ``pruner_exp.py`` wrote (see README, "What a run writes"); its kind
follows from its files:

============  ==============================================================================================
training      ``metrics.jsonl`` with epoch lines and no pruning results (``trainer_exp.py``)
weight        ``results.json`` with ``"method": "weight"`` (a sweep over prune ratios, ``pruner_exp.py``)
filter        ``results.json`` with ``"method": "filter"``
sensitivity   ``sensitivity.json``
============  ==============================================================================================

The table has one column per run. Its rows are the run kind, the config keys (dotted, from each run's
``config.json``) whose values differ between the runs, and the results: epochs and best/last test top-1 of
training (and of retraining); top-1 of the unpruned model, and per prune ratio pruned and fine-tuned (weight
sweeps); parameters, MACs, size and top-1 before/after (filter pruning); the sensitive layers (sensitivity).
The config keys equal in all runs follow the table on one line. When the table is printed it is also written
to ``<out>/report.md`` (default ``./report``) with the plots beside it:

* ``accuracy_vs_ratio.png``: top-1 against the prune ratio, every weight sweep (pruned and fine-tuned);
* ``accuracy_vs_macs.png``: top-1 against MACs, every filter run (before, pruned, after retraining);
* ``sparsity_<run>.png``: per-layer sparsity of a weight sweep at its highest ratio;
* ``widths_<run>.png``: filters kept per pruned layer of a filter run (labels ``layer before→after``);
* ``training_curves.png``: test top-1 per epoch of every run that trained (training, fine-tuning, retraining).

A path that is not a run directory, or a run directory without results (an interrupted run), is one line
``error: ...`` and exit status 2; nothing is written then.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.core.errors import UserError
from utils.core.files import atomic_write_bytes
from utils.report.plots import plot_bars, plot_lines

__all__ = ["KINDS", "Run", "comparison_table", "get_args_parser", "main", "read_run", "read_runs", "write_plots",
           "write_report"]

KINDS = ("training", "weight", "filter", "sensitivity")
KIND_TITLES = {"training": "training", "weight": "weight pruning", "filter": "filter pruning",
               "sensitivity": "sensitivity"}
# Config keys left out of the comparison: they differ between any two runs and say nothing about the setup.
IGNORED_KEYS = ("provenance.created",)
MISSING = "—"  # a cell for a key or result a run does not have
DEFAULT_OUT = "report"


@dataclass
class Run:
    """One run directory, read: its kind, resolved config and results (see the module docstring)."""

    path: Path
    kind: str
    config: dict[str, Any]
    results: dict[str, Any] | None  # results.json or sensitivity.json; None for training
    metrics: list[dict[str, Any]] = field(default_factory=list)
    label: str = ""

    def epochs(self, prune_percent: float | None = None) -> list[dict[str, Any]]:
        """The epoch lines of ``metrics.jsonl`` in epoch order (the last line of an epoch repeated by a resume wins);
        for a weight sweep, those of the fine-tuning at ``prune_percent``."""
        by_epoch: dict[int, dict[str, Any]] = {}
        for record in self.metrics:
            if "epoch" in record and "test_top1" in record and record.get("prune_percent") == prune_percent:
                by_epoch[int(record["epoch"])] = record
        return [by_epoch[epoch] for epoch in sorted(by_epoch)]


# ------------------------------------------------------------------------------------------------------ reading


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); the file is damaged") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of ``metrics.jsonl``; a last line cut short by a crash (no newline) is left out."""
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the unfinished last line of an interrupted run
                continue
            raise UserError(f"{path}: line {number} is not valid JSON; the file is damaged") from None
        if isinstance(record, dict):
            records.append(record)
    return records


def read_run(path: str | Path) -> Run:
    """Read the run directory ``path`` (a :class:`UserError` when it is not one, or has no results yet)."""
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is a file, not a folder"
        raise UserError(f"{path} {what}; pass run directories that trainer_exp.py or pruner_exp.py wrote, e.g. "
                        "checkpoints/<name>")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a run directory (no config.json); pass folders that trainer_exp.py or "
                        "pruner_exp.py wrote, e.g. checkpoints/<name>")
    config = _read_json(path / "config.json")
    if not isinstance(config, dict):
        raise UserError(f"{path / 'config.json'}: expected a JSON object, got {type(config).__name__}")
    metrics = _read_metrics(path / "metrics.jsonl")
    results: dict[str, Any] | None = None
    if (path / "results.json").is_file():
        results = _read_json(path / "results.json")
        kind = results.get("method") if isinstance(results, dict) else None
        if kind not in ("weight", "filter"):
            raise UserError(f"{path / 'results.json'}: unknown method {kind!r} (this report reads weight and filter "
                            "results); was it written by another version of the tool?")
    elif (path / "sensitivity.json").is_file():
        results, kind = _read_json(path / "sensitivity.json"), "sensitivity"
        if not isinstance(results, dict):
            raise UserError(f"{path / 'sensitivity.json'}: expected a JSON object")
    else:
        kind = "training"
        pruning = any(record.get("phase") in ("baseline", "before", "pruned", "sensitivity") for record in metrics)
        run = Run(path=path, kind=kind, config=config, results=None, metrics=metrics)
        if pruning or not run.epochs():
            what = "a pruning run that stopped before writing results.json" if pruning else \
                "no results: no results.json, no sensitivity.json and no epoch in metrics.jsonl"
            raise UserError(f"{path}: {what}; run it (again) to the end, or leave it out of the report")
        return run
    return Run(path=path, kind=kind, config=config, results=results, metrics=metrics)


def _labels(paths: Sequence[Path]) -> list[str]:
    """Column names: each run's folder name, with as many parent folders as it takes to tell them apart."""
    parts = [p.resolve().parts for p in paths]
    depth = 1
    while depth < max(len(p) for p in parts):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
        depth += 1
    return [f"{path.name} ({i + 1})" for i, path in enumerate(paths)]  # the same folder given twice


def read_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Read every run directory of ``paths`` and give each a distinct column label."""
    runs = [read_run(p) for p in paths]
    if not runs:
        raise UserError("no run directories given; pass one or more, e.g. checkpoints/run_a checkpoints/run_b")
    for run, label in zip(runs, _labels([r.path for r in runs]), strict=True):
        run.label = label
    return runs


# ------------------------------------------------------------------------------------------------------ the table


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``; lists stay values; ``_comment`` keys are left out."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if str(key).startswith("_"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _value(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value
    return text.replace("|", "\\|")


def config_rows(runs: Sequence[Run]) -> tuple[list[tuple[str, list[str]]], dict[str, Any]]:
    """The differing config keys as rows, and the keys every run has with the same value."""
    flats = [flatten(run.config) for run in runs]
    keys: list[str] = []
    for flat in sorted(flats, key=len, reverse=True):  # the newest config schema (most keys) sets the order
        keys += [key for key in flat if key not in keys and key not in IGNORED_KEYS]
    rows, same = [], {}
    absent = object()
    for key in keys:
        values = [flat.get(key, absent) for flat in flats]
        if all(v is not absent for v in values) and all(v == values[0] for v in values):
            same[key] = values[0]
        else:
            rows.append((key, [MISSING if v is absent else _value(v) for v in values]))
    return rows, same


def _pct(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else MISSING


def _change(before: Any, after: Any, fmt: str) -> str:
    if not all(isinstance(v, (int, float)) for v in (before, after)):
        return MISSING
    change = f" ({(after - before) / before * 100:+.1f}%)" if before else ""
    return f"{before:{fmt}} → {after:{fmt}}{change}"


def _ratios(runs: Sequence[Run]) -> list[float]:
    found = {row["prune_percent"] for run in runs if run.kind == "weight" for row in run.results["rows"]}
    return sorted(found)


def _sweep_row(run: Run, ratio: float) -> dict[str, Any] | None:
    return next((row for row in run.results["rows"] if row["prune_percent"] == ratio), None)


def result_rows(runs: Sequence[Run]) -> list[tuple[str, list[str]]]:
    """The result rows that at least one of ``runs`` fills, each cell formatted (top-1 in % with 2 decimals)."""

    def cells(fn: Any) -> list[str]:
        return [fn(run) for run in runs]

    def trained(run: Run) -> list[dict[str, Any]]:
        return run.epochs() if run.kind in ("training", "filter") else []

    rows: list[tuple[str, list[str]]] = []
    rows.append(("epochs trained", cells(lambda r: str(len(trained(r))) if trained(r) else MISSING)))
    rows.append(("best top-1 (%)", cells(lambda r: _pct(max(e["test_top1"] for e in trained(r)))
                                         if trained(r) else MISSING)))
    rows.append(("last top-1 (%)", cells(lambda r: _pct(trained(r)[-1]["test_top1"]) if trained(r) else MISSING)))

    def unpruned(run: Run) -> Any:
        res = run.results or {}
        return {"weight": lambda: res["baseline"]["top1"], "filter": lambda: res["before"]["top1"],
                "sensitivity": lambda: res["baseline"]["top1"]}.get(run.kind, lambda: None)()

    rows.append(("top-1 unpruned (%)", cells(lambda r: _pct(unpruned(r)))))
    weight = [run for run in runs if run.kind == "weight"]
    finetuned = any("top1_finetuned" in row for run in weight for row in run.results["rows"])
    for ratio in _ratios(runs):
        def at(run: Run, key: str, ratio: float = ratio) -> str:
            row = _sweep_row(run, ratio) if run.kind == "weight" else None
            return _pct(row.get(key)) if row else MISSING

        rows.append((f"top-1 at ratio {ratio:g}, pruned (%)", cells(lambda r, at=at: at(r, "top1"))))
        if finetuned:
            rows.append((f"top-1 at ratio {ratio:g}, fine-tuned (%)", cells(lambda r, at=at: at(r, "top1_finetuned"))))

    def filtered(run: Run, fn: Any) -> str:
        return fn(run.results) if run.kind == "filter" else MISSING

    rows.append(("parameters", cells(lambda r: filtered(r, lambda s: _change(s["before"]["params"],
                                                                             s["after"]["params"], ",.0f")))))
    rows.append(("MACs", cells(lambda r: filtered(r, lambda s: _change(s["before"]["macs"], s["after"]["macs"],
                                                                       ",.0f")))))
    rows.append(("size (KB)", cells(lambda r: filtered(r, lambda s: _change(s["before"]["size_kb"],
                                                                            s["after"]["size_kb"], ",.1f")))))
    rows.append(("top-1 pruned, before retraining (%)",
                 cells(lambda r: filtered(r, lambda s: _pct((s.get("pruned_before_retraining") or {}).get("top1"))))))
    rows.append(("top-1 after (%)", cells(lambda r: filtered(r, lambda s: _pct(s["after"]["top1"])))))
    rows.append(("sensitive layers", cells(lambda r: ", ".join(r.results["sensitive"]) or "none"
                                           if r.kind == "sensitivity" else MISSING)))
    return [(name, values) for name, values in rows if any(v != MISSING for v in values)]


def comparison_table(runs: Sequence[Run]) -> tuple[str, str]:
    """The markdown table of ``runs`` (one column each) and the line of config keys equal in all of them."""
    diff, same = config_rows(runs)
    header = ["", *(run.label.replace("|", "\\|") for run in runs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    body = [("kind", [KIND_TITLES[run.kind] for run in runs]), *((f"`{k}`", v) for k, v in diff),
            *result_rows(runs)]
    lines += ["| " + " | ".join([name, *values]) + " |" for name, values in body]
    equal = ", ".join(f"`{key}`={_value(value)}" for key, value in same.items())
    summary = f"Same in all runs ({len(same)} config keys): {equal}" if same else "No config key is equal in all runs."
    return "\n".join(lines), summary


# ------------------------------------------------------------------------------------------------------ the plots


def _file_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run"


def write_plots(runs: Sequence[Run], out: Path) -> list[Path]:
    """Write every plot the runs have data for into ``out`` (see the module docstring); return their paths."""
    written: list[Path] = []
    weight = [run for run in runs if run.kind == "weight"]
    if weight:
        series: dict[str, tuple[list[float], list[float]]] = {}
        for run in weight:
            rows = sorted(run.results["rows"], key=lambda row: row["prune_percent"])
            ratios = [100 * row["prune_percent"] for row in rows]
            series[f"{run.label} pruned"] = ([0.0, *ratios], [run.results["baseline"]["top1"],
                                                               *(row["top1"] for row in rows)])
            tuned = [(x, row["top1_finetuned"]) for x, row in zip(ratios, rows, strict=True) if "top1_finetuned" in row]
            if tuned:
                series[f"{run.label} fine-tuned"] = ([x for x, _ in tuned], [y for _, y in tuned])
        written.append(plot_lines(out / "accuracy_vs_ratio.png", series, title="Weight pruning: top-1 vs prune ratio",
                                  xlabel="weights pruned (%)", ylabel="top-1 (%)"))
        for run in weight:
            # Bars named by layer at the sweep's highest ratio, where the layers differ most (every ratio's
            # per-layer sparsity is in the run's results.md); one line per ratio over a layer index read worse.
            top = max(run.results["rows"], key=lambda row: row["prune_percent"])
            layers = top["sparsity"]["layers"]
            if layers:
                written.append(plot_bars(out / f"sparsity_{_file_label(run.label)}.png", list(layers),
                                         [100 * info["sparsity"] for info in layers.values()],
                                         title=f"{run.label}: per-layer sparsity at ratio {top['prune_percent']:g}",
                                         ylabel="weights pruned (%)", hline=("ratio", 100 * top["prune_percent"])))
    filters = [run for run in runs if run.kind == "filter"]
    if filters:
        series = {}
        for run in filters:
            res = run.results
            before, after = res["before"], res["after"]
            xs, ys = [before["macs"] / 1e6, after["macs"] / 1e6], [before["top1"], after["top1"]]
            series[f"{run.label} before → after"] = (xs, ys)
            pruned = (res.get("pruned_before_retraining") or {}).get("top1")
            if pruned is not None and run.epochs():
                series[f"{run.label} pruned, not retrained"] = ([after["macs"] / 1e6], [pruned])
        written.append(plot_lines(out / "accuracy_vs_macs.png", series, title="Filter pruning: top-1 vs MACs",
                                  xlabel="MACs per image (millions)", ylabel="top-1 (%)"))
        for run in filters:
            widths = run.results.get("widths") or {}
            if widths:
                labels = [f"{layer} {before}→{after}" for layer, (before, after) in widths.items()]
                kept = [100 * after / before if before else 0.0 for before, after in widths.values()]
                written.append(plot_bars(out / f"widths_{_file_label(run.label)}.png", labels, kept,
                                         title=f"{run.label}: filters kept per pruned layer",
                                         ylabel="filters kept (%)", hline=("unpruned", 100.0)))
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for run in runs:
        if run.kind == "weight":
            for row in sorted(run.results["rows"], key=lambda row: row["prune_percent"]):
                epochs = run.epochs(row["prune_percent"])
                if epochs:
                    curves[f"{run.label} p{row['prune_percent']:g}"] = (
                        [e["epoch"] + 1 for e in epochs], [e["test_top1"] for e in epochs])
        elif run.kind in ("training", "filter") and run.epochs():
            epochs = run.epochs()
            curves[run.label] = ([e["epoch"] + 1 for e in epochs], [e["test_top1"] for e in epochs])
    if curves:
        written.append(plot_lines(out / "training_curves.png", curves, title="Test top-1 per epoch",
                                  xlabel="epoch", ylabel="test top-1 (%)"))
    return written


# ------------------------------------------------------------------------------------------------------ the report


def write_report(paths: Iterable[str | Path], out: str | Path = DEFAULT_OUT) -> dict[str, Any]:
    """Read the runs, write ``report.md`` and the plots into ``out``; return ``{"runs", "table", "summary",
    "report", "plots"}`` (the runs read, the markdown table, the equal-keys line and the paths written)."""
    runs = read_runs(paths)
    table, summary = comparison_table(runs)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; choose a folder for the report")
    plots = write_plots(runs, out)
    sources = "\n".join(f"- `{run.label}`: {run.path}" for run in runs)
    images = "\n\n".join(f"![{p.stem}]({p.name})" for p in plots)
    text = f"# Run comparison\n\n{table}\n\n{summary}\n\nRuns:\n\n{sources}\n" + (f"\n{images}\n" if images else "")
    report = out / "report.md"
    atomic_write_bytes(report, text.encode())
    return {"runs": runs, "table": table, "summary": summary, "report": report, "plots": plots}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (checkpoints/<name>)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder for report.md and the plots (default: ./{DEFAULT_OUT})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    result = write_report(args.runs, args.out)
    print(f"{result['table']}\n\n{result['summary']}\n")
    print(f"Report: {result['report']}" + (f"; plots: {', '.join(str(p) for p in result['plots'])}"
                                           if result["plots"] else ""))
    return 0

