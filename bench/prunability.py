"""Prunability of torchvision's classifiers (issue 14): how much of each model the channel trace can prune, and
whether the pruned model computes what the masked original computes.

    python bench/prunability.py --out prunability.md --json prunability.json       # all builders, ratio 0.3
    python bench/prunability.py --models 'resnet*' 'vit_*' --ratio 0.5

Every builder of ``torchvision.models.list_models(module=torchvision.models)`` is built with random weights
(``weights=None``, seeded), in eval mode, and fed the smallest input it accepts (:func:`input_side`). Then
``pruning.filter.plan_every_group`` plans ``ceil(ratio * n)`` channels off every prunable group, the L1-smallest
are selected, a deep copy is masked (``filter_masks`` + ``apply_masks``) and the model itself has them removed
(``remove_filters``). Reported per model: prunable / total groups, channels reachable (channels of prunable groups /
channels of all groups that have a producer), the blocking reasons, the largest difference between the pruned and
the masked model's outputs on one seeded batch of 2 relative to the masked output's largest magnitude, parameters
and MACs before and after, and the seconds of analyse + plan + select + remove. A ``UserError`` from the library is
recorded as "refused", any other exception as "crashed" (with the step it happened in): findings, not failures
of the benchmark. Also timed: the trace (``pruning.analyse`` alone) of a ResNet-50 at 224x224 (target < 2 s).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fnmatch
import json
import re
import signal
import statistics
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import describe_device, header, prepare_device
from pruning import analyse, apply_masks
from pruning.filter import filter_masks, plan_every_group, remove_filters, select_filters
from pruning.groups import WRITERS, ChannelGraph, ChannelGroup
from utils.core.errors import UserError
from utils.core.provenance import provenance
from utils.core.tvguard import torchvision
from utils.report.profile import count_macs, count_params

EQUIVALENT = 1e-4  # largest |pruned - masked| / largest |masked output| that counts as the same function
# Input sides found by a search over every side from 56 (alexnet) or 70 (inception_v3) upwards; 32 for the rest.
# MaxViT checks at build time that every stage's input divides by its partition size 7: 221..224 all give stages
# of 56/28/14/7, and 224 (the side it was designed for) is used. ViT: see vit_side().
KNOWN_SIDES = {"alexnet": 63, "inception_v3": 75, "maxvit_t": 224}
SEARCHED_SIDES = (32, 48, 64, 96, 128, 160, 224, 299)  # the others: the first of these a forward pass accepts
RESNET50_TRACE_TARGET_S = 2.0


class ModelTimeout(BaseException):
    """Raised by the SIGALRM handler; a BaseException so that the library's ``except Exception`` (which turns a
    failed trace into a UserError) cannot swallow it."""


def builders(patterns: Sequence[str] = ("*",)) -> list[str]:
    """torchvision's classification builders whose names match any of the glob ``patterns``, in its order."""
    names = torchvision.models.list_models(module=torchvision.models)
    return [name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def vit_side(name: str) -> int:
    """ViT checks that its input is exactly ``image_size``, which its builders take as a keyword: it is built at
    the smallest multiple of its patch size from 32 up (32 for the /16 and /32 models, 42 for vit_h_14)."""
    patch = int(name.rsplit("_", 1)[1])
    return -(-32 // patch) * patch


def _runs(model: nn.Module, side: int) -> bool:
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, side, side))
        return True
    except Exception:  # noqa: BLE001 - any failure means "not this size": the next one is tried
        return False


def input_side(name: str, model: nn.Module | None = None) -> int:
    """The smallest square input side ``name`` accepts: ViT's build size, the table, else the first of
    ``SEARCHED_SIDES`` that runs through ``model`` (built with the default keywords)."""
    if name.startswith("vit_"):
        return vit_side(name)
    if name in KNOWN_SIDES:
        return KNOWN_SIDES[name]
    model = model if model is not None else build(name, None)
    side = next((s for s in SEARCHED_SIDES if _runs(model, s)), None)
    if side is None:
        raise ValueError(f"{name}: no input side of {SEARCHED_SIDES} runs through it")
    return side


def build(name: str, side: int | None, *, seed: int = 0) -> nn.Module:
    """``name`` with random weights (seeded), in eval mode; ViT and MaxViT built for ``side`` (None: their
    smallest). Parameters that are entirely zero (ViT's zero-initialised head, the biases most builders zero) get
    N(0, 0.02) values: with them the outputs of a zero head would be exactly 0 and no difference could show."""
    kwargs: dict[str, Any] = {}
    if name.startswith("vit_"):
        kwargs["image_size"] = side or vit_side(name)
    elif name.startswith("maxvit"):
        kwargs["input_size"] = (side or KNOWN_SIDES[name],) * 2
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # googlenet/inception_v3: "the default weight initialization will change"
        warnings.simplefilter("ignore")
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point() and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return model.eval()


_REASONS = (  # (pattern of a ChannelGroup.blocked reason, its short form); the first match wins
    (r"its channels go through (\w+) [\w.]+, which", r"\1 (module)"),
    (r"its channels go through (\w+) in ", r"\1"),
    (r"the model's input", "model input"),
    (r"the model's output", "model output"),
    (r"depthwise conv \S+ reads channels that are not followed", "depthwise conv after an unfollowed op"),
    (r"grouped conv \S+ \(groups=\d+\)", "grouped conv"),
    (r"called more than once", "shared module"),
    (r"added to a tensor the channel analysis does not follow", "add with an unfollowed tensor"),
    (r"zero-padding shortcut", "channel zero-padding"),
)


def short_reasons(blocked: str) -> list[str]:
    """The short forms of the reasons in ``blocked`` (several are joined by "; "): module names and counts left
    out, so that the same cause in fifty blocks counts once per group. An unknown wording is cut at 50 characters
    with dotted names replaced by "…" (the trace is being rewritten; its messages may change)."""
    found = []
    for reason in blocked.split("; "):
        for pattern, short in _REASONS:
            match = re.search(pattern, reason)
            if match:
                found.append(match.expand(short))
                break
        else:
            found.append(re.sub(r"\b\w+(?:\.\w+)+\b", "…", reason)[:50])
    return list(dict.fromkeys(found))


# The reason of the groups that are the model's output (the logits): fixed by the task, left out of the totals.
OUTPUT = "its channels are the model's output"


def width(group: ChannelGroup) -> int:
    """Channels of a group as its first producer counts them (a unit of a grouped conv's input is several)."""
    first = next(m for m in group.members if m.role in WRITERS)
    return sum(len(positions) for positions in first.index)


def group_stats(graph: ChannelGraph) -> dict[str, Any]:
    """Groups prunable / total and channels reachable / total over the groups that have a producer (the model's
    input has none) and are not the model's output (the logits), and ``blocks``: ``{short reason: [groups,
    channels]}`` over the blocked ones, most channels first."""
    produced = [g for g in graph.groups if g.producers and g.blocked != OUTPUT]
    prunable = [g for g in produced if g.prunable]
    blocks: dict[str, list[int]] = {}
    for group in produced:
        for reason in short_reasons(group.blocked) if group.blocked else ():
            entry = blocks.setdefault(reason, [0, 0])
            entry[0] += 1
            entry[1] += width(group)
    return {
        "groups_prunable": len(prunable), "groups_total": len(produced),
        "channels_reachable": sum(map(width, prunable)), "channels_total": sum(map(width, produced)),
        "blocks": dict(sorted(blocks.items(), key=lambda item: (-item[1][1], item[0]))),
    }


def _first_tensor(output: Any) -> torch.Tensor:
    """A classifier's logits: the output itself, or the first element of a tuple (GoogLeNet/Inception outputs)."""
    return output if isinstance(output, torch.Tensor) else _first_tensor(output[0])


def _relative_difference(pruned: nn.Module, masked: nn.Module, side: int, seed: int) -> float:
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected, got = _first_tensor(masked(x)), _first_tensor(pruned(x))
    if got.shape != expected.shape:
        raise RuntimeError(f"the pruned output has shape {tuple(got.shape)}, the masked {tuple(expected.shape)}")
    scale = expected.abs().max().item()
    difference = (got - expected).abs().max().item()
    return difference / scale if scale > 0 else (0.0 if difference == 0 else float("inf"))


def _prune(model: nn.Module, record: dict[str, Any], *, ratio: float, side: int, seed: int) -> None:
    """Plan, select, mask a copy, remove from ``model``, compare; fills ``record`` as it goes."""
    example = torch.zeros(1, 3, side, side)
    start = time.perf_counter()
    record["step"] = "analyse+plan"
    plan = plan_every_group(model, ratio=ratio, example_input=example)
    record.update(group_stats(plan.graph), groups_pruned=len(plan.groups),
                  channels_removed=sum(count for _, count in plan.groups.values()))
    record["step"] = "select"
    removed = select_filters(model, plan)
    elapsed = time.perf_counter() - start
    record["step"] = "mask"
    masked = copy.deepcopy(model)
    apply_masks(masked, filter_masks(masked, plan, removed))
    start = time.perf_counter()
    record["step"] = "remove"
    remove_filters(model, plan, removed)
    record["seconds"] = round(elapsed + time.perf_counter() - start, 3)
    model.eval()
    record["step"] = "compare"
    record["rel_diff"] = _relative_difference(model, masked, side, seed)
    record["step"] = "count after"
    record["params_after"] = count_params(model)
    record["macs_after"] = count_macs(model, (3, side, side))
    record["status"] = "pruned" if plan.groups else "nothing prunable"


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`ModelTimeout` after ``seconds`` (0: never; needs SIGALRM, so Unix and the main thread)."""
    if seconds <= 0:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise ModelTimeout(f"timeout after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def measure(name: str, *, ratio: float = 0.3, side: int | None = None, seed: int = 0,
            timeout: float = 0) -> dict[str, Any]:
    """Everything the benchmark reports for one builder (see the module docstring), as a JSON-ready dict.

    ``status``: "pruned", "nothing prunable", "refused: <UserError>", "crashed: <type: message>" or "timeout
    after N s"; ``step`` says which step ended it. Fields of steps not reached are absent.
    """
    record: dict[str, Any] = {"model": name, "ratio": ratio, "seed": seed, "step": "build"}
    try:
        with _deadline(timeout):
            model = build(name, side, seed=seed)
            record["step"] = "input side"
            record["side"] = side = side or input_side(name, model)
            record["step"] = "count before"
            record["params_before"] = count_params(model)
            record["macs_before"] = count_macs(model, (3, side, side))
            _prune(model, record, ratio=ratio, side=side, seed=seed)
    except UserError as exc:
        record["status"] = f"refused: {str(exc)[:120]}"
    except ModelTimeout as exc:
        record["status"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - a finding about the library, recorded; the benchmark goes on
        record["status"] = f"crashed: {type(exc).__name__}: {str(exc).strip()[:200]}"
    return record


def resnet50_trace_seconds(repeats: int = 3) -> list[float]:
    """Seconds of ``pruning.analyse`` alone on a torchvision ResNet-50 with a 224x224 example input."""
    model = build("resnet50", None)
    example = torch.zeros(1, 3, 224, 224)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        analyse(model, example)
        times.append(time.perf_counter() - start)
    return times


def _millions(value: int | None) -> str:
    if value is None:
        return "–"
    return f"{value / 1e9:.2f}G" if value >= 1e9 else f"{value / 1e6:.1f}M" if value >= 1e5 else f"{value / 1e3:.1f}k"


def _before_after(record: dict[str, Any], key: str) -> str:
    before, after = record.get(f"{key}_before"), record.get(f"{key}_after")
    if after is None:
        return _millions(before)
    return f"{_millions(before)}→{_millions(after)} ({after / before:.2f})"


def _reachable(record: dict[str, Any]) -> float | None:
    total = record.get("channels_total")
    return record["channels_reachable"] / total if total else None


def format_row(record: dict[str, Any]) -> str:
    """One markdown table row; a refused or crashed model's row carries its message instead of the figures."""
    status = record["status"]
    if not status.startswith(("pruned", "nothing")):
        step = "" if status.startswith("refused") else f" (in {record['step']})"
        return f"| {record['model']} | {record.get('side', '–')} | {status.replace('|', '/')}{step} |" + " |" * 6
    reachable = _reachable(record)
    blocks = ", ".join(f"{reason} ×{groups}" for reason, (groups, _) in list(record["blocks"].items())[:3])
    return (f"| {record['model']} | {record['side']} | {record['groups_prunable']}/{record['groups_total']} | "
            f"{record['channels_reachable']}/{record['channels_total']} "
            f"({'–' if reachable is None else f'{reachable:.0%}'}) | {blocks or '–'} | {record['rel_diff']:.1e} | "
            f"{_before_after(record, 'params')} | {_before_after(record, 'macs')} | {record['seconds']:.1f} |")


def format_table(records: Sequence[dict[str, Any]]) -> str:
    head = ("| model | side | groups prunable/total | channels reachable | main blocks (groups) | rel. diff | "
            "params (after/before) | MACs (after/before) | s |")
    return "\n".join([head, "|---" * 9 + "|", *(format_row(r) for r in records)])


# Families for the compact table (the first glob that matches wins); a builder matching none is its own family.
FAMILIES = (("AlexNet", "alexnet"), ("VGG", "vgg*[0-9]"), ("VGG-BN", "vgg*_bn"), ("ResNet", "resnet*"),
            ("Wide ResNet", "wide_resnet*"), ("ResNeXt", "resnext*"), ("DenseNet", "densenet*"),
            ("GoogLeNet", "googlenet"), ("Inception v3", "inception_v3"), ("SqueezeNet", "squeezenet*"),
            ("ShuffleNet v2", "shufflenet_v2_*"), ("MobileNet v2", "mobilenet_v2"), ("MobileNet v3", "mobilenet_v3_*"),
            ("MNASNet", "mnasnet*"), ("EfficientNet", "efficientnet_b*"), ("EfficientNet v2", "efficientnet_v2_*"),
            ("RegNetX", "regnet_x_*"), ("RegNetY", "regnet_y_*"), ("ConvNeXt", "convnext_*"), ("ViT", "vit_*"),
            ("Swin", "swin_[bst]"), ("Swin v2", "swin_v2_*"), ("MaxViT", "maxvit_*"))


def family(name: str) -> str:
    return next((label for label, pattern in FAMILIES if fnmatch.fnmatchcase(name, pattern)), name)


def _span(values: Sequence[float], fmt: str) -> str:
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low}–{high}"


def format_family_row(label: str, records: Sequence[dict[str, Any]]) -> str:
    """One row for a family: ranges over its models; refused and crashed models are counted, not averaged."""
    done = [r for r in records if r["status"].startswith(("pruned", "nothing"))]
    failed = len(records) - len(done)
    head = f"| {label} | {len(records)}{f' ({failed} failed)' if failed else ''} |"
    if not done:
        return head + " –  |" * 7
    blocks: dict[str, int] = {}
    for record in done:
        for reason, (groups, _) in record["blocks"].items():
            blocks[reason] = blocks.get(reason, 0) + groups
    top = ", ".join(reason for reason, _ in sorted(blocks.items(), key=lambda item: -item[1])[:3])
    ratio = {key: [r[f"{key}_after"] / r[f"{key}_before"] for r in done] for key in ("params", "macs")}
    diffs = [r["rel_diff"] for r in done if r["status"] == "pruned"]
    diff = f"{max(diffs):.1e}" if diffs else "–"
    return (f"{head} {_span([r['side'] for r in done], 'd')} | "
            f"{_span([r['groups_prunable'] for r in done], 'd')} / {_span([r['groups_total'] for r in done], 'd')} | "
            f"{_span([_reachable(r) or 0.0 for r in done], '.0%')} | {top or '–'} | "
            f"{diff} | {_span(ratio['params'], '.2f')} | {_span(ratio['macs'], '.2f')} |")


def format_family_table(records: Sequence[dict[str, Any]]) -> str:
    """The compact table: one row per family (:data:`FAMILIES`, in that order), ranges over its models."""
    order = {label: i for i, (label, _) in enumerate(FAMILIES)}
    by_family: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: order.get(family(r["model"]), len(order))):
        by_family.setdefault(family(record["model"]), []).append(record)
    head = ("| family | models | side | groups prunable / total | channels reachable | blocked by | max rel. diff | "
            "params after/before | MACs after/before |")
    return "\n".join([head, "|---" * 9 + "|", *(format_family_row(label, rows) for label, rows in by_family.items())])


def summarize(records: Sequence[dict[str, Any]], trace_seconds: Sequence[float] | None) -> dict[str, Any]:
    """The summary figures: models pruned, equivalent, refused, crashed; median channels reachable (over the
    models that trace, and over all with a refusal counted as 0%); the ResNet-50 trace time."""
    pruned = [r for r in records if r["status"] == "pruned"]
    traced = [v for r in records if (v := _reachable(r)) is not None]
    summary = {
        "models": len(records), "pruned": len(pruned),
        "equivalent": sum(r["rel_diff"] < EQUIVALENT for r in pruned),
        "nothing_prunable": sum(r["status"] == "nothing prunable" for r in records),
        "refused": sum(r["status"].startswith("refused") for r in records),
        "crashed": sum(r["status"].startswith(("crashed", "timeout")) for r in records),
        "median_reachable_traced": statistics.median(traced) if traced else None,
        "median_reachable_all": statistics.median(traced + [0.0] * (len(records) - len(traced))) if records else None,
    }
    if trace_seconds:
        summary["resnet50_trace_s"] = {"median": statistics.median(trace_seconds), "min": min(trace_seconds),
                                       "runs": len(trace_seconds), "target": RESNET50_TRACE_TARGET_S}
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    def percent(value: float | None) -> str:
        return "–" if value is None else f"{value:.0%}"

    line = (f"{summary['pruned']}/{summary['models']} models pruned, {summary['equivalent']} of them equivalent "
            f"(rel. diff < {EQUIVALENT:g}); {summary['nothing_prunable']} with nothing prunable, "
            f"{summary['refused']} refused, {summary['crashed']} crashed; median channels reachable "
            f"{percent(summary['median_reachable_all'])} ({percent(summary['median_reachable_traced'])} over the "
            "models that trace)")
    trace = summary.get("resnet50_trace_s")
    if trace:
        line += (f"; ResNet-50 224x224 trace (analyse) {trace['median']:.2f} s median of {trace['runs']} "
                 f"(min {trace['min']:.2f}; target < {trace['target']:g} s)")
    return line


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["*"], help="glob patterns of torchvision builder names")
    p.add_argument("--ratio", type=float, default=0.3, help="fraction of every prunable group's channels removed")
    p.add_argument("--size", type=int, default=None, help="input side for every model (default: each one's smallest)")
    p.add_argument("--seed", type=int, default=0, help="weights and the compared batch")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--timeout-per-model", type=float, default=0, help="seconds (0: none); recorded as a timeout")
    p.add_argument("--trace-repeats", type=int, default=3, help="ResNet-50 trace timings (0: skip)")
    p.add_argument("--out", default=None, help="write the markdown table and summary to this file")
    p.add_argument("--json", default=None, help="write every figure, the summary and the provenance to this file")
    return p


def main(args: argparse.Namespace) -> int:
    device = prepare_device("cpu", args.threads)
    header(f"Prunability of torchvision classifiers (ratio {args.ratio:g})", device)
    names = builders(args.models)
    if not names:
        raise SystemExit(f"--models {' '.join(args.models)}: no torchvision builder matches")
    records = []
    for name in names:
        records.append(measure(name, ratio=args.ratio, side=args.size, seed=args.seed,
                               timeout=args.timeout_per_model))
        print(format_row(records[-1]), flush=True)
    trace = resnet50_trace_seconds(args.trace_repeats) if args.trace_repeats > 0 else None
    summary = summarize(records, trace)
    text = f"{format_table(records)}\n\n{format_family_table(records)}\n\n{summary_line(summary)}\n"
    print(f"\n{text}")
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    if args.json:
        data = {"provenance": provenance(device), "device": describe_device(device), "args": vars(args),
                "summary": summary, "models": records}
        Path(args.json).write_text(json.dumps(data, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
