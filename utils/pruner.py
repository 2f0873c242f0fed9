"""``pruner_exp.py``: load a trained model, prune it, evaluate, fine-tune, report.

``prune.method`` picks a runner:

- ``weight``: a sweep over ``prune.percent``. The data and the model are loaded once; every ratio starts from a
  copy of the unpruned model, so the rows of the table are independent of each other and of their order.
- ``filter``: one physical filter-pruning run with the before/after report (parameters, MACs, size, accuracy,
  latency).
- ``sensitivity``: every conv layer pruned alone at several ratios and evaluated without retraining.
"""

from __future__ import annotations

import copy
import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from utils.checkpoint import atomic_torch_save, make_checkpoint, model_size_kb, provenance
from utils.config import ExperimentConfig
from utils.engine import evaluate
from utils.errors import UserError
from utils.interrupt import RunInterrupted
from utils.run import RunDir
from utils.setup import (
    Data,
    LoadedModel,
    build_data,
    build_model,
    load_toolkit_checkpoint,
    make_visdom,
    seed_everything,
    select_device,
)
from utils.training import FitResult, fit


@dataclass
class Session:
    """Everything a runner needs, built once by :func:`main`."""

    cfg: ExperimentConfig
    device: torch.device
    data: Data
    loaded: LoadedModel
    run: RunDir
    config: dict[str, Any]  # the resolved config with provenance, as saved in config.json and checkpoints
    logger: Any
    prepared: Any = None  # what prepare_pruning found while checking the spec (see there)
    resuming: bool = False  # --resume: retraining goes on from the last.pth files already in ``run``

    def evaluate(self, model: nn.Module, desc: str) -> dict[str, float]:
        return evaluate(model, self.data.test_loader, nn.CrossEntropyLoss(), self.device, desc=desc)

    def finetune(self, model: nn.Module, *, run: RunDir, arch: dict[str, Any], masks: dict[str, torch.Tensor] | None,
                 prefix: str = "", extra: dict[str, Any] | None = None) -> FitResult:
        cfg = self.cfg
        resume = None
        if self.resuming and (run / "last.pth").exists():  # this model's retraining had started: go on from there
            resume = load_toolkit_checkpoint(run / "last.pth", expect_arch=cfg.model.arch).checkpoint
            model.load_state_dict(resume["state_dict"])
            masks = resume.get("masks") or None
            step = (resume.get("progress") or {}).get("step", 0)
            print(f"Resuming {run / 'last.pth'} at epoch {resume.get('epoch', 0)}" + (f", step {step}" if step else ""))
        print(f"Retraining for {cfg.retrain.epochs} epochs (lr {cfg.retrain.lr:g}"
              + ("; pruned weights held at zero)" if masks else ")"))
        try:
            return fit(model, train_loader=self.data.train_loader, test_loader=self.data.test_loader,
                       optim=cfg.retrain, device=self.device, run=run, arch=arch, config=self.config, seed=cfg.seed,
                       masks=masks, visdom=make_visdom(cfg, self.logger.active, title_prefix=prefix),
                       print_freq=cfg.print_freq, resume=resume, extra_record=extra, metrics_run=self.run)
        except RunInterrupted as exc:
            exc.resume = self.run.path  # a pruning run resumes as a whole, from its directory
            raise

    def save_pruned(self, model: nn.Module, path: str, *, arch: dict[str, Any], masks: dict[str, torch.Tensor] | None,
                    metrics: dict[str, float]) -> str:
        ckpt = make_checkpoint(model=model, arch=arch, config=self.config, masks=masks, metrics=metrics,
                               device=self.device)
        atomic_torch_save(ckpt, self.run / path)
        return str(self.run / path)


RUNNERS: dict[str, Callable[[Session], None]] = {}


def register_runner(name: str) -> Callable[[Callable[[Session], None]], Callable[[Session], None]]:
    def decorator(fn: Callable[[Session], None]) -> Callable[[Session], None]:
        RUNNERS[name] = fn
        return fn

    return decorator


def runner_names() -> list[str]:
    return sorted(RUNNERS)


def main(cfg: ExperimentConfig, *, gpu: int | None = None, visdom: bool = False, resume: str | None = None) -> int:
    if cfg.prune.method not in RUNNERS:
        raise UserError(f"prune.method: unknown method {cfg.prune.method!r}; known: {', '.join(runner_names())}")
    if cfg.model.checkpoint is None and not cfg.model.pretrained:
        raise UserError("pruning needs trained weights: set model.checkpoint (e.g. checkpoints/<run>/best.pth) or "
                        "model.pretrained: true for torchvision models")
    if resume is not None:
        run = open_run_to_resume(resume, cfg)
    device = select_device(gpu)
    seed_everything(cfg.seed)
    retrains = cfg.retrain.epochs > 0 and cfg.prune.method != "sensitivity"
    data = build_data(cfg, train=retrains, pin_memory=device.type == "cuda")
    loaded = build_model(cfg, data.num_classes)
    loaded.model.to(device)
    prepared = prepare_pruning(cfg, loaded.model, _example_input(data.input_size, device))
    config = {**cfg.to_dict(), "provenance": provenance(device)}
    if resume is None:
        run = RunDir.create(cfg.output.dir, cfg.name, overwrite=cfg.output.overwrite)
        print(f"Run directory: {run.path}")
        run.write_json("config.json", config)
    else:
        print(f"Resuming the run in {run.path}: pruning again, retraining from its checkpoints")
        run.append_metrics({"phase": "resumed", "provenance": config["provenance"]})
    session = Session(cfg=cfg, device=device, data=data, loaded=loaded, run=run, config=config,
                      logger=make_visdom(cfg, visdom), prepared=prepared, resuming=resume is not None)
    RUNNERS[cfg.prune.method](session)
    return 0


RESUME_MUST_MATCH = ("seed", "data", "model", "prune")  # what decides the pruned model and its retraining data


def open_run_to_resume(path: str, cfg: ExperimentConfig) -> RunDir:
    """The run directory ``path`` of an interrupted pruning run, if it was made with this experiment's settings."""
    run = RunDir(path)
    saved_path = run / "config.json"
    if not saved_path.is_file():
        raise UserError(f"--resume {path}: not a run directory of pruner_exp.py (no config.json); give the folder "
                        "the interrupted run printed as 'Run directory:'")
    try:
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--resume {path}: cannot read {saved_path} ({exc}); start a new run instead") from None
    current = cfg.to_dict()
    for section in RESUME_MUST_MATCH:
        difference = first_difference(saved.get(section), current.get(section), section)
        if difference is not None:
            key, was, now = difference
            raise UserError(f"--resume {path}: {key} was {json.dumps(was)} in that run but is {json.dumps(now)} "
                            "now; resume with the settings it was started with (its config.json), or start a new run")
    if saved.get("retrain") != current["retrain"]:
        print("note: the retrain section differs from the one the run started with; continuing with the "
              "experiment file's")
    return run


def first_difference(a: Any, b: Any, key: str) -> tuple[str, Any, Any] | None:
    """The first dotted key under which ``a`` and ``b`` differ, with both values; None if they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for name in list(a) + [n for n in b if n not in a]:
            found = first_difference(a.get(name), b.get(name), f"{key}.{name}")
            if found is not None:
                return found
        return None
    return None if a == b else (key, a, b)


def prepare_pruning(cfg: ExperimentConfig, model: nn.Module, example: torch.Tensor) -> Any:
    """Raise the UserError a filter/sensitivity run would raise for its layer spec (unknown layer, too many
    filters, coupled layers, a layer that cannot be pruned alone), before the run directory exists: a mistake
    then leaves no half-made run behind and costs no evaluation first.

    A filter spec is checked by applying it to a copy of ``model`` (the model itself is not touched); that
    pruned copy and its outcome are returned for the run to use, so the pruning is done once; for a sensitivity
    spec, the layers that can be pruned alone.
    """
    from pruning import prunable_layers, prune_filters

    p = cfg.prune
    if p.method == "filter":
        pruned = copy.deepcopy(model)
        return pruned, prune_filters(pruned, **_filter_options(cfg), example_input=example)
    elif p.method == "sensitivity":
        alone = prunable_layers(model, example, alone=True)
        for key, given in (("prune.layers", p.layers), ("prune.skip", p.skip)):
            unknown = [n for n in list(given) if n not in alone]
            if unknown:
                raise UserError(f"{key}: {', '.join(unknown)}: not a layer that can be pruned alone, as a sensitivity "
                                f"analysis prunes each; those that can: {', '.join(alone)}")
        return list(alone)
    return None


# ---------------------------------------------------------------------------------------------------------------
# Magnitude weight pruning: a sweep over ratios


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


@register_runner("weight")
def run_weight_sweep(s: Session) -> None:
    from pruning import format_sweep_table, prune_weights, sparsity_report

    cfg, original = s.cfg, s.loaded.model
    base = s.evaluate(original, "baseline")
    baseline = {"top1": base["top1"], "top5": base["top5"], "loss": base["loss"],
                "size_kb": model_size_kb(original), "sparsity": _summary(sparsity_report(original))}
    print(f"Baseline: Top1 {base['top1']:.2f}, Top5 {base['top5']:.2f}, Loss {base['loss']:.4f}")
    s.run.append_metrics({"phase": "baseline", **base})

    rows: list[dict[str, Any]] = []
    for percent in cfg.prune.percent:
        model = copy.deepcopy(original)
        outcome = prune_weights(model, percent=percent, scope=cfg.prune.scope)
        stats = s.evaluate(model, f"pruned {percent:g}")
        report = sparsity_report(model)
        print(f"Pruned {percent:g}: Top1 {stats['top1']:.2f}, Top5 {stats['top5']:.2f}, Loss {stats['loss']:.4f}, "
              f"conv sparsity {_pct(report.get('conv'))}, fc sparsity {_pct(report.get('fc'))}")
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
            row.update(top1_finetuned=result.last["top1"], top5_finetuned=result.last["top5"],
                       best_top1_finetuned=result.best_top1, average_top1_finetuned=result.average_top1,
                       sparsity_finetuned=_summary(sparsity_report(model)))
            print(f"Average test accuracy: {result.average_top1:.4f}")
        rows.append(row)

    table = format_sweep_table(baseline["top1"], rows)
    layer_table = format_layer_sweep_table(rows)
    title = f"## {cfg.name}: {cfg.model.arch}, weight pruning, scope {cfg.prune.scope}"
    print(f"\n{title}\n\n{table}\n\nPer-layer sparsity (%):\n\n{layer_table}\n")
    s.run.write_text("results.md", f"{title}\n\n{table}\n\n### Per-layer sparsity (%)\n\n{layer_table}\n")
    s.run.write_json("results.json", {"name": cfg.name, "arch": cfg.model.arch, "method": "weight",
                                      "scope": cfg.prune.scope, "baseline": baseline, "rows": rows,
                                      "provenance": s.config["provenance"], "seed": cfg.seed})
    ratios = [r["prune_percent"] for r in rows]
    s.logger.log_sweep(ratios, [r["top1"] for r in rows])
    if cfg.retrain.epochs > 0:
        s.logger.log_sweep(ratios, [r["top1_finetuned"] for r in rows], name="top1 (fine-tuned)")
    s.logger.log_text(table)
    print(f"Results: {s.run / 'results.md'}, {s.run / 'results.json'}")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "layers"}


# ---------------------------------------------------------------------------------------------------------------
# L1-norm filter pruning with physical removal


def _example_input(input_size: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    return torch.zeros(1, *input_size, device=device)  # shapes only; no draw from the global RNG


def _filter_options(cfg: ExperimentConfig) -> dict[str, Any]:
    p = cfg.prune
    return {"layers": list(p.layers), "channels": p.channels, "ratios": p.ratios, "strategy": p.strategy,
            "skip": list(p.skip)}


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


@register_runner("filter")
def run_filter(s: Session) -> None:
    from utils.profile import compare_latency, profile_model, reduction

    cfg, original = s.cfg, s.loaded.model  # the unpruned model stays, for timing both side by side at the end
    model, outcome = s.prepared
    base = s.evaluate(original, "before")
    print(f"Before: Top1 {base['top1']:.2f}, Top5 {base['top5']:.2f}, Loss {base['loss']:.4f}")
    s.run.append_metrics({"phase": "before", **base})
    before = {**profile_model(original, s.data.input_size, device=s.device, latency=False),
              "top1": base["top1"], "top5": base["top5"]}
    arch = {**s.loaded.arch, "shapes": outcome.shapes}
    for layer, (old, new) in outcome.widths.items():
        print(f"  {layer}: {old} -> {new} filters")
    pruned = s.evaluate(model, "pruned")
    print(f"Pruned, before retraining: Top1 {pruned['top1']:.2f}, Top5 {pruned['top5']:.2f}, "
          f"Loss {pruned['loss']:.4f}")
    s.run.append_metrics({"phase": "pruned", **pruned})
    checkpoint = s.save_pruned(model, "pruned.pth", arch=arch, masks=None, metrics=pruned)

    final, average = pruned, None
    if cfg.retrain.epochs > 0:
        result = s.finetune(model, run=s.run, arch=arch, masks=None, prefix="retrain ")
        final, average = result.last, result.average_top1
        print(f"\nAverage test accuracy: {average:.4f}")
    after = {**profile_model(model, s.data.input_size, device=s.device, latency=False),
             "top1": final["top1"], "top5": final["top5"]}
    timings = compare_latency({"before": original, "after": model}, s.data.input_size, device=s.device)
    before.update(timings["before"])
    after.update(timings["after"])
    accuracy = ("top1", "top5")
    change = reduction({k: v for k, v in before.items() if k not in accuracy}, after)
    for key in accuracy:  # relative like the costs where defined; the table shows the change in points
        change[key] = (before[key] - after[key]) / before[key] * 100.0 if before[key] else None
    table = format_before_after(before, after, change)
    print(f"Model size: {before['size_kb']:.0f} Kb -> {after['size_kb']:.0f} Kb\n\n{table}\n")
    s.run.write_text("results.md", f"## {cfg.name}: {cfg.model.arch}, L1-norm filter pruning "
                                   f"({cfg.prune.strategy})\n\n{table}\n")
    s.run.write_json("results.json", {
        "name": cfg.name, "arch": cfg.model.arch, "method": "filter", "strategy": cfg.prune.strategy,
        "before": before, "after": after, "reduction_percent": change,
        "pruned_before_retraining": pruned, "average_top1_last_epochs": average,
        "widths": {k: list(v) for k, v in outcome.widths.items()}, "removed": outcome.removed,
        "checkpoint": checkpoint, "provenance": s.config["provenance"], "seed": cfg.seed,
    })
    s.logger.log_text(table)
    print(f"Results: {s.run / 'results.md'}, {s.run / 'results.json'}")


# ---------------------------------------------------------------------------------------------------------------
# Sensitivity analysis (Li et al. Figure 2)


@register_runner("sensitivity")
def run_sensitivity(s: Session) -> None:
    from pruning import analyse
    from pruning.sensitivity import layer_sensitivity
    from utils.plots import plot_lines

    cfg, original = s.cfg, s.loaded.model
    p = cfg.prune
    base = s.evaluate(original, "baseline")
    print(f"Baseline: Top1 {base['top1']:.2f}, Top5 {base['top5']:.2f}")
    example = _example_input(s.data.input_size, s.device)
    names = list(p.layers) or s.prepared  # both checked by prepare_pruning
    names = [n for n in names if n not in set(p.skip)]
    ratios = sorted(p.sensitivity_ratios)
    graph = analyse(original, example)
    curves: dict[str, dict[str, Any]] = {}
    for layer in names:
        points = layer_sensitivity(original, layer, ratios, s.data.test_loader, s.device, graph=graph)
        for point in points:
            s.run.append_metrics({"phase": "sensitivity", "layer": layer, **point})
        top1 = [p["top1"] for p in points]
        curves[layer] = {"filters": points[0]["filters"], "kept": [p["kept"] for p in points], "top1": top1,
                         "top5": [p["top5"] for p in points]}
        print(f"{layer:>12}: " + " ".join(f"{a:6.2f}" for a in top1))
        s.logger.log_sweep(ratios, top1, name=layer, win="sensitivity")

    at = min(ratios, key=lambda r: abs(r - p.sensitivity_at))
    sensitive = [n for n, c in curves.items() if base["top1"] - c["top1"][ratios.index(at)] > p.sensitivity_tolerance]
    result = {"baseline": base, "ratios": ratios, "layers": curves, "tolerance": p.sensitivity_tolerance,
              "checked_at": at, "sensitive": sensitive, "provenance": s.config["provenance"]}
    s.run.write_json("sensitivity.json", result)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["layer", "filters", "ratio", "filters_kept", "top1", "top5"])
    for layer, c in curves.items():
        for i, ratio in enumerate(ratios):
            writer.writerow([layer, c["filters"], ratio, c["kept"][i], f"{c['top1'][i]:.4f}", f"{c['top5'][i]:.4f}"])
    s.run.write_text("sensitivity.csv", buffer.getvalue())
    plot_lines(s.run / "sensitivity.png",
               {layer: ([100 * r for r in ratios], c["top1"]) for layer, c in curves.items()},
               title=f"{cfg.model.arch}: pruning each layer alone (smallest L1 first)",
               xlabel="filters pruned away (%)", ylabel="top-1 (%)", hlines={"baseline": base["top1"]})
    print(f"\nSensitive at {at:g} (drop > {p.sensitivity_tolerance:g} points): {', '.join(sensitive) or 'none'}")
    print(f'Use them as "prune.skip": {sensitive}')
    print(f"Results: {s.run / 'sensitivity.json'}, {s.run / 'sensitivity.csv'}, {s.run / 'sensitivity.png'}")
