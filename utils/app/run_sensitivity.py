"""``prune.method: "sensitivity"``: every conv layer pruned alone at several ratios and evaluated without
retraining (Li et al. 2017, Figure 2)."""

from __future__ import annotations

import csv
import io
from typing import Any

from pruning import (
    analyse,
)
from pruning.importance import Scoring
from pruning.sensitivity import layer_sensitivity
from utils.app.session import METHODS, Session, example_input
from utils.report.plots import plot_lines


@METHODS.register("sensitivity")
def run_sensitivity(s: Session) -> None:
    cfg, original = s.cfg, s.loaded.model
    p = cfg.prune
    base = s.evaluate(original, "baseline")
    print(f"Baseline: Top1 {base['top1']:.2f}, Top5 {base['top5']:.2f}")
    example = example_input(s.data.trace_size, s.device)
    names = list(p.layers) or s.prepared  # both checked by prepare_pruning
    names = [n for n in names if n not in set(p.skip)]
    ratios = sorted(p.sensitivity_ratios)
    graph = analyse(original, example)
    scoring = Scoring(p.importance, s.gradients(original))  # every layer is scored on the original: computed once
    curves: dict[str, dict[str, Any]] = {}
    for layer in names:
        points = layer_sensitivity(original, layer, ratios, s.data.test_loader, s.device, graph=graph,
                                   importance=scoring)
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
