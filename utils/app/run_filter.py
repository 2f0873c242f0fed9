"""``prune.method: "filter"``: L1-norm filter pruning with physical removal, on every schedule, and the
before/after report (parameters, MACs, size, accuracy, latency)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pruning import (
    FilterPruneResult,
    apply_masks,
    prune_filters,
)
from pruning.filter import filter_masks, masked_filters, remove_filters, select_filters
from pruning.schedule import epochs_per_round, scheduled_count
from utils.app.exporting import export_final, results_kept_on_error
from utils.app.session import (
    METHODS,
    Session,
    agp_plan_for,
    example_input,
    filter_plan,
    loss_suffix,
    retrain_loss_record,
    schedule_record,
    schedule_title,
)
from utils.checkpoint.load import load_toolkit_checkpoint
from utils.core.rundir import RunDir
from utils.report.profile import compare_latency, profile_model, reduction
from utils.report.tables import format_before_after, format_export_table, format_filter_rounds
from utils.train.fit import ScheduleHooks


@dataclass
class FilterDone:
    """What a filter schedule leaves for the report: the final (physically smaller) model and its numbers.

    ``outcome``: widths and removed filters relative to the original model, over the whole schedule; ``pruned``:
    test metrics right after the last pruning step (before the retraining that follows it); ``checkpoint``: the
    model saved there (``pruned.pth``); ``final_checkpoint``: the file that holds ``model`` (``pruned.pth`` without
    retraining, ``last.pth`` after it, ``final.pth`` for ``agp``: what ``--export`` writes); ``extra``: schedule
    details for ``results.json``.
    """

    model: nn.Module
    outcome: Any
    pruned: dict[str, float]
    checkpoint: str
    final_checkpoint: str
    final: dict[str, float]
    average: float | None
    extra: dict[str, Any]



def _print_widths(widths: dict[str, tuple[int, int]]) -> None:
    for layer, (old, new) in widths.items():
        print(f"  {layer}: {old} -> {new} filters")



def _filter_one_shot(s: Session) -> FilterDone:
    """The spec applied at once (``prepare_pruning`` already did it on a copy), evaluated, retrained."""
    cfg = s.cfg
    model, outcome = s.prepared
    arch = {**s.loaded.arch, "shapes": outcome.shapes}
    _print_widths(outcome.widths)
    pruned = s.evaluate(model, "pruned")
    print(f"Pruned, before retraining: Top1 {pruned['top1']:.2f}, Top5 {pruned['top5']:.2f}, "
          f"Loss {pruned['loss']:.4f}")
    s.run.append_metrics({"phase": "pruned", **pruned})
    checkpoint = s.save_pruned(model, "pruned.pth", arch=arch, masks=None, metrics=pruned)

    final, average, final_checkpoint = pruned, None, checkpoint
    if cfg.retrain.epochs > 0:
        result = s.finetune(model, run=s.run, arch=arch, masks=None, prefix="retrain ")
        final, average, final_checkpoint = result.last, result.average_top1, str(s.run / "last.pth")
        print(f"\nAverage test accuracy: {average:.4f}")
    return FilterDone(model=model, outcome=outcome, pruned=pruned, checkpoint=checkpoint,
                      final_checkpoint=final_checkpoint, final=final, average=average, extra={})



def _filter_iterative(s: Session) -> FilterDone:
    """``prune.rounds`` rounds: remove filters physically up to the round's count, retrain ``epochs / rounds``.

    Each layer's count follows the cubic ramp to the one-shot count (``ceil(fraction * count)``), ranked by the
    criterion on the current weights of the already smaller model (``taylor``: on fresh gradients of it); each
    round is its own ``fit`` (a fresh optimizer for the new shapes). Round ``i`` writes ``round<i>/``
    (``pruned.pth``, ``last.pth``, ``best.pth``), the last round the run directory itself, as a one-shot run.
    Resuming: as for weight pruning, each round prunes again from the weights the round before ended with and
    retraining goes on from the round's ``last.pth``.
    """
    cfg, p = s.cfg, s.cfg.prune
    _, one_shot = s.prepared  # the spec resolved and checked: which layers, how many filters in the end
    final_counts = {layer: old - new for layer, (old, new) in one_shot.widths.items()}
    alive = {layer: list(range(old)) for layer, (old, _) in one_shot.widths.items()}  # original channel indices
    per_round = epochs_per_round(cfg.retrain.epochs, p.rounds)
    optim = dataclasses.replace(cfg.retrain, epochs=per_round)
    model = copy.deepcopy(s.loaded.model)
    example = example_input(s.data.trace_size, s.device)
    rounds: list[dict[str, Any]] = []
    for i in range(1, p.rounds + 1):
        per = one_shot.per_unit  # filters tied into one channel unit go together: the ramp counts units
        counts = {layer: per.get(layer, 1) * scheduled_count(final // per.get(layer, 1), i, p.rounds)
                  - (one_shot.widths[layer][0] - len(alive[layer])) for layer, final in final_counts.items()}
        step = prune_filters(model, layers=list(counts), channels=list(counts.values()), strategy=p.strategy,
                             importance=p.importance, gradients=s.gradients(model), example_input=example)
        for layer, gone in step.removed.items():
            gone_set = set(gone)
            alive[layer] = [c for j, c in enumerate(alive[layer]) if j not in gone_set]
        widths = {layer: len(kept) for layer, kept in alive.items()}
        arch = {**s.loaded.arch, "shapes": step.shapes}
        stats = s.evaluate(model, f"pruned, round {i}")
        print(f"Round {i}/{p.rounds}: " + ", ".join(f"{layer} {n}" for layer, n in widths.items())
              + f" filters. Pruned: Top1 {stats['top1']:.2f}, Top5 {stats['top5']:.2f}, Loss {stats['loss']:.4f}")
        s.run.append_metrics({"phase": "pruned", "round": i, "widths": widths, **stats})
        last = i == p.rounds
        checkpoint = s.save_pruned(model, "pruned.pth" if last else f"round{i}/pruned.pth", arch=arch, masks=None,
                                   metrics=stats)
        result = s.finetune(model, run=s.run if last else RunDir(s.run / f"round{i}"), arch=arch, masks=None,
                            prefix=f"round {i} ", extra={"round": i}, optim=optim,
                            schedule=ScheduleHooks(epoch_offset=(i - 1) * per_round))
        record = {"round": i, "widths": widths, "top1": stats["top1"], "top5": stats["top5"], "loss": stats["loss"],
                  "top1_finetuned": result.last["top1"], "top5_finetuned": result.last["top5"]}
        s.run.append_metrics({"phase": "round", **record})
        rounds.append({**record, "checkpoint": checkpoint})
    print(f"\nAverage test accuracy: {result.average_top1:.4f}")
    outcome = FilterPruneResult(
        removed={layer: sorted(set(range(one_shot.widths[layer][0])) - set(kept)) for layer, kept in alive.items()},
        widths={layer: (one_shot.widths[layer][0], len(kept)) for layer, kept in alive.items()},
        modules=one_shot.modules, shapes=step.shapes, strategy=p.strategy)
    return FilterDone(model=model, outcome=outcome, pruned=stats, checkpoint=checkpoint,
                      final_checkpoint=str(s.run / "last.pth"), final=result.last, average=result.average_top1,
                      extra={"rounds": rounds})



def _filter_agp(s: Session) -> FilterDone:
    """One retraining during which the filters are *zeroed* on the cubic ramp, then removed physically.

    Removing filters while training would change the parameters under the optimizer, so the chosen filters are
    masked instead (:func:`pruning.filter.filter_masks`: the masked model computes what the smaller one would) and
    the masks grow every ``prune.frequency`` steps. ``last.pth`` and ``best.pth`` are that full-width training
    state (resumable, evaluable); ``pruned.pth`` is the model at the last pruning step with the filters removed;
    ``final.pth`` the retrained model with the filters removed, the one the report measures.
    """
    cfg = s.cfg
    model = copy.deepcopy(s.loaded.model)
    plan = filter_plan(cfg, model, example_input(s.data.trace_size, s.device), gradients=s.gradients(model))
    agp = agp_plan_for(cfg, s.data, 1.0)
    finals = {index: count for index, (_, count) in plan.groups.items()}

    def removal_counts(k: int) -> dict[int, int]:
        return {index: scheduled_count(final, k, agp.steps) for index, final in finals.items()}

    def on_step(step: int, masks: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        k = agp.pruning_step(step)
        if k is None:
            return None
        assert masks is not None  # fit starts with the all-kept masks below
        counts = removal_counts(k)
        now = dataclasses.replace(plan, gradients=s.gradients(model))  # taylor: the masked model's gradients now
        removed = select_filters(model, now, counts=counts, first=masked_filters(plan, masks))
        new = filter_masks(model, plan, removed)
        apply_masks(model, new)
        s.run.append_metrics({"phase": "agp", "step": step, "pruning_step": k, "fraction": agp.fraction_at(step),
                              "removed": {layer: counts[index] for index, (layers, _) in plan.groups.items()
                                          for layer in layers}})
        if step == agp.last_step:
            stats = s.evaluate(model, f"pruned at step {step}")
            model.train()  # back to training for the rest of the epoch
            smaller = copy.deepcopy(model)
            done = remove_filters(smaller, plan, removed)
            s.save_pruned(smaller, "pruned.pth", arch={**s.loaded.arch, "shapes": done.shapes}, masks=None,
                          metrics={**stats, "step": step})
            print(f"Pruned at step {step} ({k}/{agp.steps} pruning steps): Top1 {stats['top1']:.2f}, "
                  f"Top5 {stats['top5']:.2f}, Loss {stats['loss']:.4f}", flush=True)
        return new

    print(f"Pruning gradually: {agp.steps} pruning steps, every {agp.frequency} of the {agp.total_steps} "
          f"optimizer steps, the last at step {agp.last_step}")
    result = s.finetune(model, run=s.run, arch=s.loaded.arch, masks=filter_masks(model, plan, {}),
                        prefix="retrain ", schedule=ScheduleHooks(
                            on_step=on_step, best_after=agp.first_epoch_at_final(len(s.data.train_loader))))
    print(f"\nAverage test accuracy: {result.average_top1:.4f}")
    assert result.masks is not None
    removed = masked_filters(plan, result.masks)
    if {index: len(gone) for index, gone in removed.items()} != finals:  # an internal invariant of the ramp
        raise RuntimeError(f"filter agp ended with {removed} removed, not the planned counts {finals}")
    outcome = remove_filters(model, plan, removed)
    _print_widths(outcome.widths)
    final = s.evaluate(model, "pruned and retrained, filters removed")
    print(f"Filters removed after retraining: Top1 {final['top1']:.2f}, Top5 {final['top5']:.2f}, "
          f"Loss {final['loss']:.4f} (the full-width model with them zeroed: Top1 {result.last['top1']:.2f})")
    s.run.append_metrics({"phase": "removed", **final})
    final_checkpoint = s.save_pruned(model, "final.pth", arch={**s.loaded.arch, "shapes": outcome.shapes},
                                     masks=None, metrics=final)
    at_last = load_toolkit_checkpoint(s.run / "pruned.pth", expect_arch=cfg.model.arch).checkpoint["metrics"]
    pruned = {k: at_last[k] for k in ("top1", "top5", "loss")}
    return FilterDone(model=model, outcome=outcome, pruned=pruned, checkpoint=str(s.run / "pruned.pth"),
                      final_checkpoint=final_checkpoint, final=final, average=result.average_top1,
                      extra={"final_checkpoint": final_checkpoint, "top1_masked": result.last["top1"],
                             "agp": {"pruning_steps": agp.steps, "frequency": agp.frequency,
                                     "last_step": agp.last_step, "total_steps": agp.total_steps,
                                     "end": cfg.prune.agp_end}})



FILTER_SCHEDULES: dict[str, Callable[[Session], FilterDone]] = {
    "one_shot": _filter_one_shot, "iterative": _filter_iterative, "agp": _filter_agp}



@METHODS.register("filter")
def run_filter(s: Session) -> None:
    cfg, original = s.cfg, s.loaded.model  # the unpruned model stays, for timing both side by side at the end
    base = s.evaluate(original, "before")
    print(f"Before: Top1 {base['top1']:.2f}, Top5 {base['top5']:.2f}, Loss {base['loss']:.4f}")
    s.run.append_metrics({"phase": "before", **base})
    before = {**profile_model(original, s.data.input_size, device=s.device, latency=False),
              "top1": base["top1"], "top5": base["top5"]}
    done = FILTER_SCHEDULES[cfg.prune.schedule](s)
    model, outcome, pruned, final, average = done.model, done.outcome, done.pruned, done.final, done.average
    after = {**profile_model(model, s.data.input_size, device=s.device, latency=False),
             "top1": final["top1"], "top5": final["top5"]}
    if cfg.prune.latency:
        timings = compare_latency({"before": original, "after": model}, s.data.input_size, device=s.device)
        before.update(timings["before"])
        after.update(timings["after"])
    accuracy = ("top1", "top5")
    change = reduction({k: v for k, v in before.items() if k not in accuracy}, after)
    for key in accuracy:  # relative like the costs where defined; the table shows the change in points
        change[key] = (before[key] - after[key]) / before[key] * 100.0 if before[key] else None
    table = format_before_after(before, after, change)
    print(f"Model size: {before['size_kb']:.0f} Kb -> {after['size_kb']:.0f} Kb\n\n{table}\n")
    rounds = format_filter_rounds(done.extra.get("rounds", []))
    criterion = "L1-norm" if cfg.prune.importance == "l1" else cfg.prune.importance
    markdown = (f"## {cfg.name}: {cfg.model.arch}, {criterion} filter pruning ({cfg.prune.strategy})"
                f"{schedule_title(cfg)}{loss_suffix(cfg.retrain)}\n\n{table}\n{rounds}")
    if rounds:
        print(rounds)
    results = {
        "name": cfg.name, "arch": cfg.model.arch, "method": "filter", "strategy": cfg.prune.strategy,
        "importance": cfg.prune.importance,
        "target": dataclasses.asdict(cfg.prune.target) if cfg.prune.target is not None else None,
        "schedule": schedule_record(cfg), "retrain_loss": retrain_loss_record(cfg.retrain),
        "before": before, "after": after, "reduction_percent": change,
        "pruned_before_retraining": pruned, "average_top1_last_epochs": average,
        "widths": {k: list(v) for k, v in outcome.widths.items()}, "removed": outcome.removed,
        "checkpoint": done.checkpoint, **done.extra, "provenance": s.config["provenance"], "seed": cfg.seed,
    }
    s.run.write_text("results.md", markdown)
    s.run.write_json("results.json", results)  # before exporting: a failing export loses none of the run
    if s.export:
        with results_kept_on_error(s):
            results["export"] = export_final(s, done.final_checkpoint)
        exports = format_export_table(results["export"])
        print(exports)
        s.run.write_text("results.md", markdown + exports)
        s.run.write_json("results.json", results)
    s.logger.log_text(table)
    print(f"Results: {s.run / 'results.md'}, {s.run / 'results.json'}")
