"""``pruner_exp.py --dry-run``: what a pruning run would do, printed and written as a plan file, without data and
without trained weights; for a new architecture it also answers "what can I prune in this model?".

The model is the one ``--list-layers`` builds (:func:`utils.app.layer_list.planning_model`): a checkpoint of this tool
gives its architecture (pruned widths included) and its weights, any other model is built with random weights, and
it is traced at the size ``--list-layers`` takes. The spec goes through the very functions the real run calls
(:func:`pruning.filter.plan_filters`, ``select_filters``, ``remove_filters``; :func:`pruning.weight.compute_masks` for
weight pruning), so a spec the run would refuse is refused here with the same line, and every count is the run's:
how many filters (or weights) go, the widths, the parameters and MACs after. *Which* filters go follows the weights,
so with random weights it is not the run's choice; the output says so.

Choices, each for a reason:

* A ``model.checkpoint`` that does not exist yet is planned on random weights, with a note: the plan is most useful
  before the model is trained (the experiment files name the checkpoint training will write). The real run refuses.
* The plan goes to ``--plan-out PATH``, by default ``<output.dir>/<name>.plan.json``: a file beside the run
  directories, never a run directory (a dry run must not take the name a later real run would get). It replaces
  only an earlier plan; any other file there is an error, so a dry run never overwrites a run's files.
* ``prune.method: "sensitivity"`` is refused: it evaluates every layer at every ratio, which needs the data.
* ``prune.importance: "taylor"`` is refused: it scores channels from the gradients of training batches.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import arch_options
from pruning.filter import FilterPlan, remove_filters, select_filters
from pruning.weight import KINDS, compute_masks, prunable_weights
from utils.app.layer_list import blocked_reasons, check_takes, planning_model, trace_size
from utils.app.session import filter_plan, needs_training_batches
from utils.app.setup import seed_everything
from utils.config.schema import ExperimentConfig
from utils.core.errors import UserError
from utils.core.files import atomic_write_bytes
from utils.core.provenance import provenance
from utils.core.rundir import to_json
from utils.report.profile import count_macs, count_params, reduction

__all__ = ["PLAN_KIND", "dry_run", "format_plan", "make_plan", "plan_path"]

PLAN_KIND = "pruner_exp.py --dry-run plan"  # the "kind" of a plan file: the one file a dry run may replace
GROUP_STATUS = {  # a channel group's "status" in the plan, and how the printed list says it
    "planned": "planned", "prunable": "prunable", "together": "prunable, all together",
    "skipped": "prunable; left out by prune.skip", "blocked": "not prunable"}


def plan_path(cfg: ExperimentConfig, plan_out: str | None) -> Path:
    """Where the plan goes (see the module docstring), checked before any work: never a folder, never a file that is
    not an earlier plan."""
    path = Path(plan_out) if plan_out is not None else Path(cfg.output.dir) / f"{cfg.name}.plan.json"
    key = f"--plan-out {path}" if plan_out is not None else f"the plan file {path} (<output.dir>/<name>.plan.json)"
    if path.is_dir():
        raise UserError(f"{key} is a folder; give a file path, e.g. --plan-out {path / f'{cfg.name}.plan.json'}")
    if path.exists() and not _is_plan(path):
        raise UserError(f"{key} exists and is not a plan of --dry-run; a dry run overwrites no other file: choose "
                        "another path with --plan-out PATH")
    return path


def _is_plan(path: Path) -> bool:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(found, dict) and found.get("kind") == PLAN_KIND


def _notes(cfg: ExperimentConfig, checkpoint: str | None, classes: int | None) -> list[str]:
    """What the plan takes differently from the real run, one line each."""
    m, notes = cfg.model, []
    if checkpoint is None:
        if cfg.prune.target is not None and cfg.prune.allocation == "global":  # the ranking spreads the target
            notes.append("random weights: prune.target is met as the run will meet it, but how many filters each layer "
                         "gives and which go follow the trained weights (prune.allocation global)")
        else:
            notes.append("random weights: the counts, widths, parameters and MACs are exact; which filters or weights "
                         "go is not (it follows the trained weights)")
        if m.checkpoint is not None and not Path(m.checkpoint).exists():
            notes.append(f"model.checkpoint {m.checkpoint} does not exist (yet): planned without it; the real run "
                         "needs it")
        elif m.checkpoint is not None:
            notes.append(f"model.checkpoint {m.checkpoint} is not a checkpoint of this tool: its weights are not read "
                         "here (the counts do not depend on them)")
        elif m.pretrained:
            notes.append("model.pretrained: the pretrained weights are not loaded here (the counts do not depend on "
                         "them)")
        elif not cfg.prune.from_scratch:
            notes.append("neither model.checkpoint nor model.pretrained is set: the real run needs trained weights")
        if m.num_classes is None and classes is not None and "num_classes" in arch_options(m.arch):
            notes.append(f"{classes} classes (model.arch's default; the real run takes the dataset's: set "
                         "model.num_classes if they differ)")
    else:
        exact = cfg.prune.method == "filter" and cfg.prune.schedule == "one_shot"
        notes.append(f"the architecture and weights of {checkpoint}" + ("; the removed filters in the plan file are "
                                                                         "the run's too" if exact else ""))
    if cfg.prune.schedule != "one_shot":
        notes.append(f"prune.schedule {cfg.prune.schedule!r}: the model it ends with")
    return notes


def make_plan(cfg: ExperimentConfig) -> dict[str, Any]:
    """The plan of ``cfg``'s pruning run, as the plan file holds it (see the module docstring); a spec the run would
    refuse is the UserError the run would raise."""
    method = cfg.prune.method
    planner = _planner(cfg)
    seed_everything(cfg.seed)  # random weights drawn from the run's seed: the same plan every time
    model, checkpoint = planning_model(cfg)
    size, why = trace_size(cfg, model)
    example = torch.zeros(1, *size)
    out = check_takes(model, example, cfg.model.arch, why, flag="--dry-run")
    classes = out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() == 2 else None
    plan: dict[str, Any] = {"kind": PLAN_KIND, "name": cfg.name, "arch": cfg.model.arch, "method": method,
                            "weights": checkpoint or "random", "input_size": list(size), "input_size_from": why,
                            "notes": _notes(cfg, checkpoint, classes)}
    plan.update(planner(cfg, model, example, checkpoint is not None))
    plan["provenance"] = provenance("cpu")
    return plan


def _plan_filter(cfg: ExperimentConfig, model: nn.Module, example: torch.Tensor, trained: bool) -> dict[str, Any]:
    """The filter spec resolved, applied to a copy of ``model`` and costed. With trained weights and a one-shot
    schedule the removed filter indices are the run's and are kept in the plan; with random weights they mean nothing,
    and a gradual schedule ranks again as it retrains, so they are left out then."""
    plan = filter_plan(cfg, model, example)
    exact = trained and cfg.prune.schedule == "one_shot"
    smaller = copy.deepcopy(model)
    outcome = remove_filters(smaller, plan, select_filters(model, plan))
    layers = [{"layer": layer, "module": outcome.modules[layer], "before": before, "after": after,
               **({"removed": outcome.removed[layer]} if exact else {})}
              for layer, (before, after) in outcome.widths.items()]
    skipped = {layer for entry in cfg.prune.skip for layer in plan.names.resolve(entry, key="prune.skip")}
    return {"strategy": cfg.prune.strategy, "schedule": cfg.prune.schedule, "layers": layers,
            "groups": _group_rows(plan, skipped), **_costs(model, smaller, tuple(example.shape[1:]))}


def _group_rows(plan: FilterPlan, skipped: set[str]) -> list[dict[str, Any]]:
    """Every channel group some layer writes, in trace order: its layers, filters (of its first layer), whether it
    is planned, free to prune, prunable only with all its layers (and the name that selects them), left out by
    ``prune.skip``, or blocked (and the reasons, each once)."""
    names, rows = plan.names, []
    for index, group in enumerate(plan.graph.groups):
        if not group.producers:
            continue
        layers = [names.canonical(p) for p in group.producers]
        row: dict[str, Any] = {"group": index, "layers": layers,
                               "filters": group.channels * group.filters_per_unit(group.producers[0])}
        if index in plan.groups:
            row["status"] = "planned"
        elif not group.prunable:
            row.update(status="blocked", reasons=blocked_reasons(group.blocked or "no layer writes its channels"))
        elif skipped & set(layers):
            row["status"] = "skipped"
        elif group.summed and len(layers) > 1:
            selector = next((s for s, members in names.selectors.items() if set(members) == set(layers)), None)
            row.update(status="together", selector=selector)
        else:
            row["status"] = "prunable"
        rows.append(row)
    return rows


def _costs(before: nn.Module, after: nn.Module, size: tuple[int, ...]) -> dict[str, Any]:
    """Parameters and MACs (one input of ``size``, batch 1) of both models, and the reduction in percent."""
    counts = {"params": (count_params(before), count_params(after)),
              "macs": (count_macs(before, size), count_macs(after, size))}
    change = reduction({k: b for k, (b, _) in counts.items()}, {k: a for k, (_, a) in counts.items()})
    return {k: {"before": b, "after": a, "reduction_percent": change[k]} for k, (b, a) in counts.items()}


def _plan_weight(cfg: ExperimentConfig, model: nn.Module, example: torch.Tensor, trained: bool) -> dict[str, Any]:
    """For every ``prune.percent``: how many conv and linear weights are zeroed (exact for ``layer_type`` and
    ``layer`` scopes; with ``global`` only the total is, the split between kinds follows the weights). Weight pruning
    zeroes weights in place: the dense parameters and MACs do not change, the non-zero parameters do."""
    p, weights = cfg.prune, prunable_weights(model)
    prunable = {kind: n for kind in KINDS if (n := sum(w.numel() for k, w in weights.values() if k == kind))}
    params = count_params(model)
    rows = []
    for percent in p.percent:
        zeroed = dict.fromkeys(prunable, 0)
        for name, mask in compute_masks(model, percent, p.scope).masks.items():
            zeroed[weights[name][0]] += int((~mask).sum())
        total = sum(zeroed.values())
        rows.append({"percent": percent, "zeroed": zeroed, "total": total,
                     "nonzero_params": {"before": params, "after": params - total,
                                        "reduction_percent": total / params * 100.0}})
    return {"scope": p.scope, "schedule": p.schedule, "params": params, "prunable": prunable, "percent": rows}


PLANNERS: dict[str, Callable[[ExperimentConfig, nn.Module, torch.Tensor, bool], dict[str, Any]]] = {
    "filter": _plan_filter, "weight": _plan_weight}


def _planner(cfg: ExperimentConfig) -> Callable[[ExperimentConfig, nn.Module, torch.Tensor, bool], dict[str, Any]]:
    """The planner of ``cfg``'s method; a run that needs the data to decide its plan is one line instead."""
    method = cfg.prune.method
    if method == "filter" and needs_training_batches(cfg):
        raise UserError(f"prune.importance {cfg.prune.importance} needs training batches; --dry-run plans without "
                        "data: use l1 for the plan (--set prune.importance=l1), "
                        "or run without --dry-run")
    if method not in PLANNERS:
        raise UserError(f"prune.method {method!r}: --dry-run plans {' and '.join(PLANNERS)} pruning; a {method} "
                        "analysis evaluates every layer at every ratio, which needs the data (--list-layers shows "
                        "the layers it would sweep)")
    return PLANNERS[method]


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    """``rows`` as left-aligned columns two spaces apart (the last column unpadded)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]) for row in rows]


def _abbreviated(layers: list[str]) -> str:
    if len(layers) <= 4:
        return ", ".join(layers)
    return f"{', '.join(layers[:3])}, ..., {layers[-1]} ({len(layers)} layers)"


def _change(numbers: dict[str, Any]) -> str:
    return f"{numbers['before']:,} -> {numbers['after']:,} ({-numbers['reduction_percent']:+.1f}%)"


def _status(row: dict[str, Any]) -> str:
    """A group's status in a few words: a blocked group's first reason without its parenthesis (the hint it may
    hold is in the plan file and in --list-layers)."""
    text = GROUP_STATUS[row["status"]]
    if row.get("selector"):
        text += f" (write {row['selector']})"
    if row.get("reasons"):
        more = len(row["reasons"]) - 1
        text += f": {re.sub(r' [(][^()]*[)]$', '', row['reasons'][0])}" + (f" (and {more} more)" if more else "")
    return text


def _format_filter(plan: dict[str, Any]) -> list[str]:
    lines = [f"L1-norm filter pruning ({plan['strategy']}, {plan['schedule']}): {len(plan['layers'])} layers"]
    lines += _columns([("layer", "module", "filters"),
                       *((r["layer"], r["module"], f"{r['before']} -> {r['after']}") for r in plan["layers"])])
    others = [row for row in plan["groups"] if row["status"] != "planned"]
    if others:
        lines.append("Channel groups not in the plan (prune.layers takes a group's layers):")
        lines += _columns([("group", "layers", "filters", "status"),
                           *((str(r["group"]), _abbreviated(r["layers"]), str(r["filters"]), _status(r))
                             for r in others)])
    size = "x".join(map(str, plan["input_size"]))
    lines += [f"Parameters: {_change(plan['params'])}", f"MACs (one {size} input): {_change(plan['macs'])}"]
    return lines


def _format_weight(plan: dict[str, Any]) -> list[str]:
    kinds = list(plan["prunable"])
    prunable = ", ".join(f"{kind} {n:,}" for kind, n in plan["prunable"].items())
    lines = [f"Magnitude weight pruning (scope {plan['scope']}, {plan['schedule']}): {len(plan['percent'])} ratio(s)",
             f"Prunable weights: {prunable} (of {plan['params']:,} parameters)"]
    lines += _columns([("percent", *(f"{kind} zeroed" for kind in kinds), "non-zero parameters"),
                       *((f"{r['percent']:g}", *(f"{r['zeroed'][kind]:,}" for kind in kinds),
                          _change(r["nonzero_params"])) for r in plan["percent"])])
    if plan["scope"] == "global":
        lines.append("(scope global: the total is exact; its split between kinds follows the trained weights)")
    return lines


def format_plan(plan: dict[str, Any]) -> str:
    """The printed form of a plan (:func:`make_plan`)."""
    size = "x".join(map(str, plan["input_size"]))
    weights = "random weights" if plan["weights"] == "random" else f"weights of {plan['weights']}"
    lines = [(f"Dry run of {plan['name']}: model.arch {plan['arch']!r} ({weights}), traced with one {size} input "
              f"({plan['input_size_from']}); no data read.")]
    lines += [f"note: {note}" for note in plan["notes"]]
    lines += (_format_filter if plan["method"] == "filter" else _format_weight)(plan)
    return "\n".join(lines)


def dry_run(cfg: ExperimentConfig, *, plan_out: str | None = None) -> int:
    """Print the plan of ``cfg``'s pruning run and write it to :func:`plan_path`; the exit status (0)."""
    _planner(cfg)
    target = plan_path(cfg, plan_out)  # before the model is built: a refused path costs no tracing
    plan = make_plan(cfg)
    print(format_plan(plan))
    atomic_write_bytes(target, to_json(plan).encode())
    print(f"Plan written to {target} (no run directory made, nothing else written)")
    return 0
