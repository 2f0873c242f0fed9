"""The markdown tables of a pruning run's ``results.md``: the sweep table the research code publishes, per-layer
sparsity, rounds of a schedule, the filter report's before/after, and the exports."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pruning.weight import KINDS
from utils.core.choices import EXPORT_FORMATS


def compressed_formats(records: list[dict[str, Any]]) -> list[str]:
    return [fmt for fmt in EXPORT_FORMATS if fmt.startswith("compressed") and any(fmt in r for r in records)]



def format_export_sweep_rows(rows: list[dict[str, Any]]) -> str:
    """Lines to append to the sweep table with each row's exports (nothing without ``--export``): the dense
    checkpoint's bytes, each compressed file's bytes and share of them, the ONNX file's bytes and its largest
    difference from PyTorch under onnxruntime. The baseline is not exported ("-")."""
    records = [row.get("export") or {} for row in rows]

    def line(label: str, fmt: str, show: Callable[[dict[str, Any]], str]) -> str:
        return "\n| " + " | ".join([label, "-", *(show(r[fmt]) if fmt in r else "-" for r in records)]) + " |"

    compressed = compressed_formats(records)
    out = ""
    if compressed:
        out += line("checkpoint, dense (bytes)", compressed[0], lambda e: f"{e['dense_file_bytes']:,}")
    for fmt in compressed:
        out += line(f"{fmt} (bytes, % of dense)", fmt, lambda e: f"{e['file_bytes']:,} ({e['percent_of_dense']:.1f}%)")
    if any("onnx" in r for r in records):
        out += line("onnx (bytes)", "onnx", lambda e: f"{e['bytes']:,}")
        out += line("onnx max abs diff", "onnx", lambda e: f"{e['max_abs_diff']:.1e}" if e["checked"] else "unchecked")
    return out



ENCODING_LEGEND = ("bitmask: 1 bit per weight, then the non-zero values; indices/uint8 (int16, ...): per non-zero "
                   "value the number of zeros before it, in that type, then the values; dense: every value.")



def format_encoding_tables(rows: list[dict[str, Any]]) -> str:
    """Per compressed format, the encoding each prunable weight is stored in, one column per ratio."""
    records = [row.get("export") or {} for row in rows]
    parts = []
    for fmt in compressed_formats(records):
        names = next(r[fmt]["layers"] for r in records if fmt in r)
        header = ["layer", *(f"{row['prune_percent']:g}" for row in rows)]
        lines = [f"### Encoding per layer, {fmt}", "", ENCODING_LEGEND, "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join([name, *(r[fmt]["layers"][name] if fmt in r else "-" for r in records)]) + " |"
                  for name in names]
        parts.append("\n".join(lines) + "\n")
    return "".join("\n" + part for part in parts)



def format_export_table(record: dict[str, Any]) -> str:
    """A filter run's exports in markdown: each file's bytes, against the dense checkpoint's or PyTorch's output."""
    if not any(fmt in record for fmt in EXPORT_FORMATS):
        return ""  # nothing exported (a torchrun rank other than 0)
    source = Path(record["checkpoint"]).name
    lines = ["", f"### Exports of {source}", "", "| format | file | bytes | |", "|---|---|---|---|"]
    compressed = compressed_formats([record])
    if compressed:
        dense = record[compressed[0]]["dense_file_bytes"]
        lines.append(f"| dense | {source} without its optimizer and RNG state | {dense:,} | 100% |")
    for fmt in compressed:
        e = record[fmt]
        share = f"{e['percent_of_dense']:.1f}% of dense"
        lines.append(f"| {fmt} | {Path(e['path']).name} | {e['file_bytes']:,} | {share} |")
    if "onnx" in record:
        e = record["onnx"]
        check = f"max abs diff {e['max_abs_diff']:.1e} from PyTorch" if e["checked"] else "unchecked (no onnxruntime)"
        lines.append(f"| onnx | {Path(e['path']).name} | {e['bytes']:,} | {check} |")
    return "\n".join(lines) + "\n"



def format_layer_sweep_table(rows: list[dict[str, Any]]) -> str:
    """Per-layer sparsity (%) with one column per ratio: the layers a user may want to spare stand out."""
    if not rows:
        return ""
    layers = rows[0]["sparsity"]["layers"]
    header = ["layer", "kind", "weights"] + [f"{row['prune_percent']:g}" for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, info in layers.items():
        cells = [name, info["kind"], str(info["numel"])]
        cells += [f"{100 * row['sparsity']['layers'][name]['sparsity']:.1f}" for row in rows]
        lines.append("| " + " | ".join(cells) + " |")
    totals = ["**all conv**", "conv", ""], ["**all fc**", "fc", ""]
    for cells, kind in zip(totals, ("conv", "fc"), strict=True):
        if rows[0]["sparsity"].get(kind) is not None:
            lines.append("| " + " | ".join(cells + [f"{100 * row['sparsity'][kind]:.1f}" for row in rows]) + " |")
    return "\n".join(lines)



def format_rounds_tables(rows: list[dict[str, Any]]) -> str:
    """Per ratio of an iterative sweep: each round's ratio and top-1 after pruning and after retraining."""
    parts = []
    for row in rows:
        if not row.get("rounds"):
            continue
        lines = [f"### Rounds of {row['prune_percent']:g}", "",
                 "| round | ratio | top1 after pruning | top1 after retraining |", "|---|---|---|---|"]
        lines += [f"| {r['round']} | {r['ratio']:.4g} | {r['top1']:.2f} | {r['top1_finetuned']:.2f} |"
                  for r in row["rounds"]]
        parts.append("\n".join(lines) + "\n\n")
    return "".join(parts)



def format_before_after(before: dict[str, Any], after: dict[str, Any], reduction: dict[str, Any]) -> str:
    """The filter-pruning report as a markdown table: one row per measure, before / after / change
    (relative for costs, in points for accuracy)."""
    lines = ["| | before | after | change |", "|---|---|---|---|"]
    for label, key in (("parameters", "params"), ("MACs", "macs"), ("size (KB)", "size_kb")):
        lines.append(f"| {label} | {before[key]:,.0f} | {after[key]:,.0f} | {-reduction[key]:+.1f}% |")
    for label, key in (("top-1 (%)", "top1"), ("top-5 (%)", "top5")):
        lines.append(f"| {label} | {before[key]:.2f} | {after[key]:.2f} | {after[key] - before[key]:+.2f} points |")
    for batch, ms in before.get("latency_ms", {}).items():
        lines.append(f"| latency, batch {batch} (ms, {before.get('device', '?')}) | {ms:.2f} | "
                     f"{after['latency_ms'][batch]:.2f} | {-reduction['latency_ms'][batch]:+.1f}% |")
    return "\n".join(lines)



def format_filter_rounds(rounds: list[dict[str, Any]]) -> str:
    """An iterative filter run's rounds: filters left per layer, top-1 after pruning and after retraining."""
    if not rounds:
        return ""
    layers = list(rounds[0]["widths"])
    header = ["round", *layers, "top1 after pruning", "top1 after retraining"]
    lines = ["", "### Rounds (filters left per layer)", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for r in rounds:
        cells = [str(r["round"]), *(str(r["widths"][layer]) for layer in layers), f"{r['top1']:.2f}",
                 f"{r['top1_finetuned']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _markdown(rows: Sequence[Sequence[str]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)



def _threshold_cell(row: Mapping[str, Any], kind: str) -> str:
    thresholds: Mapping[str, float] = row.get("thresholds", {})
    if kind in thresholds:
        value = float(thresholds[kind])
        return "0" if value == 0 else f"{value:.2e}"
    # layer scope: thresholds are keyed by parameter name, one per layer: too many for a table cell.
    if row.get("scope") == "layer" or any(key not in (*KINDS, "global") for key in thresholds):
        return "per layer"
    return "-"



def format_sweep_table(baseline_top1: float, rows: Sequence[Mapping[str, Any]]) -> str:
    """The pruning-sweep table in markdown: one column per ratio after the unpruned baseline.

    Each row is ``{"prune_percent": float, "top1": float (percent), "thresholds": {"conv": ..,
    "fc": ..}}``, optionally with ``"top1_finetuned"`` (adds a ``top1 (fine-tuned)`` row, "-" where
    missing) and ``"scope"`` (``"layer"`` shows "per layer" in the threshold rows). Accuracy has two
    decimals, thresholds three significant digits (``2.98e-02``); the baseline's thresholds are 0.
    """
    table = [
        ["ratio", "Baseline", *(f"{float(row['prune_percent']):g}" for row in rows)],
        ["top1 (without fine-tune)", f"{baseline_top1:.2f}", *(f"{float(row['top1']):.2f}" for row in rows)],
        ["conv threshold", "0", *(_threshold_cell(row, "conv") for row in rows)],
        ["fc threshold", "0", *(_threshold_cell(row, "fc") for row in rows)],
    ]
    if any(row.get("top1_finetuned") is not None for row in rows):
        finetuned = [f"{row['top1_finetuned']:.2f}" if row.get("top1_finetuned") is not None else "-" for row in rows]
        table.append(["top1 (fine-tuned)", f"{baseline_top1:.2f}", *finetuned])
    return _markdown(table)



def format_layer_table(report: Mapping[str, Any]) -> str:
    """Per-layer sparsity of a :func:`sparsity_report` in markdown, with a total per kind and overall."""
    table = [["layer", "kind", "weights", "zeros", "sparsity"]]
    layers: Mapping[str, Mapping[str, Any]] = report["layers"]

    def line(label: str, kind: str, numel: int, zeros: int) -> list[str]:
        return [label, kind, str(numel), str(zeros), f"{100 * zeros / numel:.2f}%" if numel else "-"]

    for name, layer in layers.items():
        table.append(line(name, layer["kind"], layer["numel"], layer["zeros"]))
    for kind in KINDS:
        of_kind = [layer for layer in layers.values() if layer["kind"] == kind]
        if of_kind:
            table.append(line(f"all {kind}", kind, sum(x["numel"] for x in of_kind), sum(x["zeros"] for x in of_kind)))
    table.append(line("total", "", sum(x["numel"] for x in layers.values()), sum(x["zeros"] for x in layers.values())))
    return _markdown(table)
