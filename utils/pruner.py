"""``pruner_exp.py``: load a trained model, prune it at one or several ratios, evaluate, fine-tune, report.

A sweep loads the data and the model once; every ratio starts from a copy of the unpruned model, so the
rows of the table are independent of each other and of their order.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from utils.checkpoint import atomic_torch_save, make_checkpoint, model_size_kb, provenance
from utils.config import ExperimentConfig
from utils.engine import evaluate
from utils.errors import UserError
from utils.run import RunDir
from utils.setup import build_data, build_model, seed_everything, select_device
from utils.trainer import make_visdom
from utils.training import fit


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


def _method_options(cfg: ExperimentConfig, percent: float) -> dict[str, Any]:
    """Config -> the keyword arguments of the registered method (the config never reaches library code)."""
    if cfg.prune.method == "weight":
        return {"percent": percent, "scope": cfg.prune.scope}
    return {"percent": percent}


def main(cfg: ExperimentConfig, *, gpu: int | None = None, visdom: bool = False) -> int:
    from pruning import format_sweep_table, get_method, sparsity_report

    method = get_method(cfg.prune.method)
    if cfg.model.checkpoint is None and not cfg.model.pretrained:
        raise UserError("pruning needs trained weights: set model.checkpoint (e.g. checkpoints/<run>/best.pth) or "
                        "model.pretrained: true for torchvision models")
    device = select_device(gpu)
    seed_everything(cfg.seed)
    finetune = cfg.retrain.epochs > 0
    data = build_data(cfg, train=finetune, pin_memory=device.type == "cuda")
    loaded = build_model(cfg, data.num_classes)
    original = loaded.model.to(device)
    run = RunDir.create(cfg.output.dir, cfg.name, overwrite=cfg.output.overwrite)
    print(f"Run directory: {run.path}")
    config = {**cfg.to_dict(), "provenance": provenance(device)}
    run.write_json("config.json", config)
    logger = make_visdom(cfg, visdom)
    criterion = nn.CrossEntropyLoss()

    base = evaluate(original, data.test_loader, criterion, device, desc="baseline")
    baseline = {"top1": base["top1"], "top5": base["top5"], "loss": base["loss"],
                "size_kb": model_size_kb(original), "sparsity": _summary(sparsity_report(original))}
    print(f"Baseline: Top1 {base['top1']:.2f}, Top5 {base['top5']:.2f}, Loss {base['loss']:.4f}")
    run.append_metrics({"phase": "baseline", **base})

    rows: list[dict[str, Any]] = []
    for percent in cfg.prune.percent:
        model = copy.deepcopy(original)
        outcome = method(model, **_method_options(cfg, percent))
        stats = evaluate(model, data.test_loader, criterion, device, desc=f"pruned {percent:g}")
        report = sparsity_report(model)
        row: dict[str, Any] = {
            "prune_percent": percent, "top1": stats["top1"], "top5": stats["top5"], "loss": stats["loss"],
            "thresholds": dict(getattr(outcome, "thresholds", {})), "sparsity": report,
        }
        print(f"Pruned {percent:g}: Top1 {stats['top1']:.2f}, Top5 {stats['top5']:.2f}, Loss {stats['loss']:.4f}, "
              f"conv sparsity {_pct(report.get('conv'))}, fc sparsity {_pct(report.get('fc'))}")
        run.append_metrics({"phase": "pruned", "prune_percent": percent, **stats})
        masks = dict(outcome.masks) or None
        sub = RunDir(run / f"p{percent:g}")
        ckpt = make_checkpoint(model=model, arch=loaded.arch, config=config, masks=masks, metrics=stats, device=device)
        atomic_torch_save(ckpt, sub / "pruned.pth")
        row["checkpoint"] = str(sub / "pruned.pth")
        if finetune:
            print(f"Fine-tuning the {percent:g}-pruned model for {cfg.retrain.epochs} epochs "
                  f"(lr {cfg.retrain.lr:g}; pruned weights held at zero)")
            result = fit(model, train_loader=data.train_loader, test_loader=data.test_loader, optim=cfg.retrain,
                         device=device, run=sub, arch=loaded.arch, config=config, seed=cfg.seed, masks=masks,
                         visdom=make_visdom(cfg, logger.active, title_prefix=f"p{percent:g} "),
                         print_freq=cfg.print_freq, extra_record={"prune_percent": percent}, metrics_run=run)
            row.update(top1_finetuned=result.last["top1"], top5_finetuned=result.last["top5"],
                       best_top1_finetuned=result.best_top1, average_top1_finetuned=result.average_top1,
                       sparsity_finetuned=_summary(sparsity_report(model)))
            print(f"Average test accuracy: {result.average_top1:.4f}")
        rows.append(row)

    table = format_sweep_table(baseline["top1"], rows)
    layer_table = format_layer_sweep_table(rows)
    title = f"## {cfg.name}: {cfg.model.arch}, {cfg.prune.method} pruning, scope {cfg.prune.scope}"
    print(f"\n{title}\n\n{table}\n\nPer-layer sparsity (%):\n\n{layer_table}\n")
    run.write_text("results.md", f"{title}\n\n{table}\n\n### Per-layer sparsity (%)\n\n{layer_table}\n")
    run.write_json("results.json", {"name": cfg.name, "arch": cfg.model.arch, "method": cfg.prune.method,
                                    "scope": cfg.prune.scope, "baseline": baseline, "rows": rows,
                                    "provenance": config["provenance"], "seed": cfg.seed})
    ratios = [r["prune_percent"] for r in rows]
    logger.log_sweep(ratios, [r["top1"] for r in rows])
    if finetune:
        logger.log_sweep(ratios, [r["top1_finetuned"] for r in rows], name="top1 (fine-tuned)")
    logger.log_text(table)
    print(f"Results: {run / 'results.md'}, {run / 'results.json'}")
    return 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "layers"}
