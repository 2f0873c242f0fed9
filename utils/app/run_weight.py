"""``prune.method: "weight"``: magnitude weight pruning as a sweep over ``prune.percent``, on every schedule.

The data and the model are loaded once; every ratio starts from a copy of the unpruned model, so the rows of the
table are independent of each other and of their order.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning import (
    compute_masks,
    prune_weights,
)
from pruning.schedule import epochs_per_round, round_ratios
from pruning.sparsity import sparsity_report
from pruning.weight import prune_weights_further
from utils.app.exporting import export_final, results_kept_on_error
from utils.app.session import (
    METHODS,
    Session,
    agp_plan_for,
    loss_suffix,
    retrain_loss_record,
    schedule_record,
    schedule_title,
)
from utils.checkpoint.format import model_size_kb
from utils.checkpoint.load import load_toolkit_checkpoint
from utils.core.rundir import RunDir
from utils.report.tables import (
    format_encoding_tables,
    format_export_sweep_rows,
    format_layer_sweep_table,
    format_rounds_tables,
    format_sweep_table,
)
from utils.train.fit import FitResult, ScheduleHooks


@METHODS.register("weight")
def run_weight_sweep(s: Session) -> None:
    cfg, original = s.cfg, s.loaded.model
    base = s.evaluate(original, "baseline")
    baseline = {"top1": base["top1"], "top5": base["top5"], "loss": base["loss"],
                "size_kb": model_size_kb(original), "sparsity": sparsity_summary(sparsity_report(original))}
    print(f"Baseline: Top1 {base['top1']:.2f}, Top5 {base['top5']:.2f}, Loss {base['loss']:.4f}")
    s.run.append_metrics({"phase": "baseline", **base})

    schedule = cfg.prune.schedule
    rows: list[dict[str, Any]] = []
    for percent in cfg.prune.percent:
        model = copy.deepcopy(original)  # every ratio runs its whole schedule from the unpruned weights
        rows.append(WEIGHT_SCHEDULES[schedule](s, model, percent))

    if s.export:
        _write_weight_results(s, baseline, rows)  # first, so that a failing export loses none of the run
        with results_kept_on_error(s):
            for row in rows:
                row["export"] = export_final(s, _weight_final_checkpoint(s, row))
    table, printed = _write_weight_results(s, baseline, rows)
    print(printed)
    ratios = [r["prune_percent"] for r in rows]
    s.logger.log_sweep(ratios, [r["top1"] for r in rows])
    if cfg.retrain.epochs > 0:
        s.logger.log_sweep(ratios, [r["top1_finetuned"] for r in rows], name="top1 (fine-tuned)")
    s.logger.log_text(table)
    print(f"Results: {s.run / 'results.md'}, {s.run / 'results.json'}")



def _write_weight_results(s: Session, baseline: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[str, str]:
    """Write ``results.md`` and ``results.json`` of a sweep; return the sweep table and the text to print."""
    cfg, schedule = s.cfg, s.cfg.prune.schedule
    table = format_sweep_table(baseline["top1"], rows)
    if schedule != "one_shot":  # the earlier rounds / steps were retrained: the first row is not "without" it
        table = table.replace("| top1 (without fine-tune) |", "| top1 (at the last pruning step) |", 1)
    table += format_export_sweep_rows(rows)
    layer_table = format_layer_sweep_table(rows)
    title = f"## {cfg.name}: {cfg.model.arch}, weight pruning, scope {cfg.prune.scope}{schedule_title(cfg)}"
    title += loss_suffix(cfg.retrain)
    rounds = format_rounds_tables(rows)
    encodings = format_encoding_tables(rows)
    s.run.write_text("results.md", f"{title}\n\n{table}\n\n{rounds}### Per-layer sparsity (%)\n\n{layer_table}\n"
                                   f"{encodings}")
    s.run.write_json("results.json", {"name": cfg.name, "arch": cfg.model.arch, "method": "weight",
                                      "scope": cfg.prune.scope, "schedule": schedule_record(cfg),
                                      "retrain_loss": retrain_loss_record(cfg.retrain),
                                      "baseline": baseline, "rows": rows,
                                      "provenance": s.config["provenance"], "seed": cfg.seed})
    return table, f"\n{title}\n\n{table}\n\n{rounds}Per-layer sparsity (%):\n\n{layer_table}\n{encodings}"



def _weight_final_checkpoint(s: Session, row: dict[str, Any]) -> Path:
    """The file of the model a sweep row ends with: ``p<ratio>/last.pth`` after retraining (every schedule writes
    its final model there), else the pruned model, ``p<ratio>/pruned.pth``."""
    return s.run / f"p{row['prune_percent']:g}" / "last.pth" if s.cfg.retrain.epochs > 0 else Path(row["checkpoint"])



def _weight_one_shot(s: Session, model: nn.Module, percent: float) -> dict[str, Any]:
    """Prune once to ``percent``, evaluate, save ``p<ratio>/pruned.pth``, retrain ``retrain.epochs``."""
    cfg = s.cfg
    outcome = prune_weights(model, percent=percent, scope=cfg.prune.scope)
    stats = s.evaluate(model, f"pruned {percent:g}")
    report = sparsity_report(model)
    print(f"Pruned {percent:g}: Top1 {stats['top1']:.2f}, Top5 {stats['top5']:.2f}, Loss {stats['loss']:.4f}, "
          f"conv sparsity {percent_text(report.get('conv'))}, fc sparsity {percent_text(report.get('fc'))}")
    s.run.append_metrics({"phase": "pruned", "prune_percent": percent, **stats})
    masks = dict(outcome.masks)
    row: dict[str, Any] = {
        "prune_percent": percent, "top1": stats["top1"], "top5": stats["top5"], "loss": stats["loss"],
        "thresholds": dict(outcome.thresholds), "sparsity": report,
        "checkpoint": s.save_pruned(model, f"p{percent:g}/pruned.pth", arch=s.loaded.arch, masks=masks,
                                    metrics=stats),
    }
    if cfg.retrain.epochs > 0:
        result = s.finetune(model, run=RunDir(s.run / f"p{percent:g}"), arch=s.loaded.arch, masks=masks,
                            prefix=f"p{percent:g} ", extra={"prune_percent": percent})
        _add_finetuned(row, result, model)
    return row



def _add_finetuned(row: dict[str, Any], result: FitResult, model: nn.Module) -> None:
    row.update(top1_finetuned=result.last["top1"], top5_finetuned=result.last["top5"],
               best_top1_finetuned=result.best_top1, average_top1_finetuned=result.average_top1,
               sparsity_finetuned=sparsity_summary(sparsity_report(model)))
    print(f"Average test accuracy: {result.average_top1:.4f}")



def _weight_iterative(s: Session, model: nn.Module, percent: float) -> dict[str, Any]:
    """``prune.rounds`` rounds of pruning to the next ratio of the cubic ramp and retraining ``epochs / rounds``.

    Round ``i`` of ``R`` writes ``p<ratio>/round<i>/`` (``pruned.pth``, ``last.pth``, ``best.pth``), the last round
    ``p<ratio>/`` itself, so the final model is where a one-shot run puts it. Resuming: each round prunes again
    from the weights the round before ended with (its ``last.pth``; deterministic), and retraining goes on from the
    round's own ``last.pth`` when there is one, so a complete round is not retrained.
    """
    cfg, p = s.cfg, s.cfg.prune
    per_round = epochs_per_round(cfg.retrain.epochs, p.rounds)
    optim = dataclasses.replace(cfg.retrain, epochs=per_round)
    folder = f"p{percent:g}"
    masks: dict[str, torch.Tensor] | None = None
    rounds: list[dict[str, Any]] = []
    for i, ratio in enumerate(round_ratios(percent, p.rounds), start=1):
        where = folder if i == p.rounds else f"{folder}/round{i}"
        if masks is None:
            outcome = prune_weights(model, percent=ratio, scope=p.scope)
        else:
            outcome = prune_weights_further(model, masks, percent=ratio, scope=p.scope)
        masks = dict(outcome.masks)
        stats = s.evaluate(model, f"pruned {percent:g}, round {i}")
        report = sparsity_report(model)
        print(f"Pruned {percent:g}, round {i}/{p.rounds} to {ratio:.4g}: Top1 {stats['top1']:.2f}, "
              f"Top5 {stats['top5']:.2f}, Loss {stats['loss']:.4f}, conv sparsity {percent_text(report.get('conv'))}, "
              f"fc sparsity {percent_text(report.get('fc'))}")
        s.run.append_metrics({"phase": "pruned", "prune_percent": percent, "round": i, "ratio": ratio, **stats})
        checkpoint = s.save_pruned(model, f"{where}/pruned.pth", arch=s.loaded.arch, masks=masks, metrics=stats)
        result = s.finetune(model, run=RunDir(s.run / where), arch=s.loaded.arch, masks=masks,
                            prefix=f"{folder} round {i} ", extra={"prune_percent": percent, "round": i},
                            optim=optim, schedule=ScheduleHooks(epoch_offset=(i - 1) * per_round))
        masks = result.masks
        record = {"round": i, "ratio": ratio, "top1": stats["top1"], "top5": stats["top5"], "loss": stats["loss"],
                  "top1_finetuned": result.last["top1"], "top5_finetuned": result.last["top5"],
                  "thresholds": dict(outcome.thresholds), "sparsity": sparsity_summary(report),
                  "checkpoint": checkpoint}
        s.run.append_metrics({"phase": "round", "prune_percent": percent,
                              **{k: v for k, v in record.items() if k != "checkpoint"}})
        rounds.append(record)
    row: dict[str, Any] = {"prune_percent": percent, "top1": stats["top1"], "top5": stats["top5"],
                           "loss": stats["loss"], "thresholds": dict(outcome.thresholds), "sparsity": report,
                           "checkpoint": checkpoint}
    _add_finetuned(row, result, model)
    row["rounds"] = rounds
    return row



def _weight_agp(s: Session, model: nn.Module, percent: float) -> dict[str, Any]:
    """One retraining of ``retrain.epochs`` that prunes to the cubic ramp every ``prune.frequency`` steps.

    ``p<ratio>/pruned.pth`` is the model at the last pruning step (the final sparsity reached, before the rest of
    the retraining), evaluated there; ``last.pth`` and ``best.pth`` as for one-shot, ``best.pth`` only among the
    epochs that end at the final sparsity. Resuming goes on from ``last.pth``: its masks are the current ones and
    the ramp is a function of the step, so the pruning steps still to come are those of the uninterrupted run.
    """
    cfg, p = s.cfg, s.cfg.prune
    folder = f"p{percent:g}"
    plan = agp_plan_for(cfg, s.data, percent)

    def on_step(step: int, masks: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        k = plan.pruning_step(step)
        if k is None:
            return None
        assert masks is not None  # fit starts with the all-kept masks below
        ratio = plan.ratio_at(step)
        outcome = prune_weights_further(model, masks, percent=ratio, scope=p.scope)
        s.run.append_metrics({"phase": "agp", "prune_percent": percent, "step": step, "pruning_step": k,
                              "ratio": ratio, "thresholds": dict(outcome.thresholds)})
        if step == plan.last_step:
            stats = s.evaluate(model, f"pruned {percent:g} at step {step}")
            model.train()  # back to training for the rest of the epoch
            metrics = {**stats, "ratio": ratio, "step": step, "thresholds": dict(outcome.thresholds)}
            s.save_pruned(model, f"{folder}/pruned.pth", arch=s.loaded.arch, masks=dict(outcome.masks),
                          metrics=metrics)
            print(f"Pruned {percent:g} at step {step} ({k}/{plan.steps} pruning steps): Top1 {stats['top1']:.2f}, "
                  f"Top5 {stats['top5']:.2f}, Loss {stats['loss']:.4f}", flush=True)
        return dict(outcome.masks)

    start = compute_masks(model, 0.0, p.scope).masks  # all kept: the ramp starts at 0
    print(f"Pruning {percent:g} gradually: {plan.steps} pruning steps, every {plan.frequency} of the "
          f"{plan.total_steps} optimizer steps, the last at step {plan.last_step}")
    result = s.finetune(model, run=RunDir(s.run / folder), arch=s.loaded.arch, masks=start,
                        prefix=f"{folder} ", extra={"prune_percent": percent}, schedule=ScheduleHooks(
                            on_step=on_step, best_after=plan.first_epoch_at_final(len(s.data.train_loader))))
    pruned_path = s.run / f"{folder}/pruned.pth"
    at_last = _load_reached(pruned_path, s.cfg.model.arch)  # written by this run, or before it was resumed
    row: dict[str, Any] = {"prune_percent": percent, "top1": at_last["metrics"]["top1"],
                           "top5": at_last["metrics"]["top5"], "loss": at_last["metrics"]["loss"],
                           "thresholds": at_last["metrics"]["thresholds"], "sparsity": at_last["sparsity"],
                           "checkpoint": str(pruned_path)}
    _add_finetuned(row, result, model)
    row["agp"] = {"pruning_steps": plan.steps, "frequency": plan.frequency, "last_step": plan.last_step,
                  "total_steps": plan.total_steps, "end": p.agp_end}
    return row



WEIGHT_SCHEDULES: dict[str, Callable[[Session, nn.Module, float], dict[str, Any]]] = {
    "one_shot": _weight_one_shot, "iterative": _weight_iterative, "agp": _weight_agp}



def _load_reached(path: Any, arch: str) -> dict[str, Any]:
    """The metrics and sparsity of the model an AGP run saved at its last pruning step."""
    loaded = load_toolkit_checkpoint(path, expect_arch=arch)
    return {"metrics": loaded.checkpoint["metrics"], "sparsity": sparsity_report(loaded.model)}


def percent_text(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"



def sparsity_summary(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "layers"}
