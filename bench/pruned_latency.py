"""Inference latency of Li et al.'s VGG-16 pruned-A against the unpruned VGG-16-BN (target: latency ratio <= 0.75;
MACs ratio 0.66).

    python bench/pruned_latency.py --device cuda
    python bench/pruned_latency.py --device cpu --threads 1 --rounds 3       # a loaded CPU: see utils/report/profile.py

The pruned model is made as ``pruner_exp.py`` makes it: the experiment file's filter spec
(``experiments/prune/cifar10_filter_prune_vgg16_bn.json``: half the filters of conv1 and conv8-conv13) applied by
``utils.app.pruner_main.prepare_pruning`` (``pruning.prune_filters``, physical removal). Weights are random unless
``--checkpoint`` is given: which filters go depends on the weights, how many (so the shapes, MACs and latency) does
not. Latency comes from ``utils.report.profile.compare_latency``: both models timed in turn in every round, medians per
batch size, so the ratio is side by side.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, header, prepare_device
from models import build_arch
from utils.app.pruner_main import prepare_pruning
from utils.app.setup import requested_options
from utils.checkpoint.load import load_toolkit_checkpoint
from utils.config.validate import load_config
from utils.report.profile import compare_latency, count_macs, count_params

EXPERIMENT = REPO / "experiments" / "prune" / "cifar10_filter_prune_vgg16_bn.json"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--experiment", default=str(EXPERIMENT), help="filter-pruning experiment file (its prune spec)")
    p.add_argument("--checkpoint", default=None, help="a trained checkpoint of this tool (default: random weights)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    p.add_argument("--rounds", type=int, default=3, help="compare_latency rounds; medians are reported")
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement (blocked_autorange)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(args: argparse.Namespace) -> int:
    device = prepare_device(args.device, args.threads)
    header("Filter-pruned VGG-16 (Li et al. pruned-A) vs unpruned: inference latency", device)
    cfg = load_config(args.experiment)
    torch.manual_seed(args.seed)
    if args.checkpoint:
        model = load_toolkit_checkpoint(args.checkpoint, expect_arch=cfg.model.arch).model
    else:
        model = build_arch(cfg.model.arch, requested_options(cfg, num_classes=10)).model
    model = model.to(device).eval()
    input_size = (3, 32, 32)
    pruned, outcome = prepare_pruning(cfg, model, torch.zeros(1, *input_size, device=device))
    pruned = pruned.to(device).eval()
    widths = ", ".join(f"{layer} {old}->{new}" for layer, (old, new) in outcome.widths.items())
    print(f"spec: {Path(args.experiment).name} ({cfg.prune.strategy}); weights: {args.checkpoint or 'random'}")
    print(f"filters: {widths}")
    macs = {"unpruned": count_macs(model, input_size), "pruned-A": count_macs(pruned, input_size)}
    params = {"unpruned": count_params(model), "pruned-A": count_params(pruned)}
    timings = compare_latency({"unpruned": model, "pruned-A": pruned}, input_size, device=device,
                              batch_sizes=args.batch_sizes, rounds=args.rounds, min_run_time=args.min_run_time)
    threads = timings["unpruned"]["num_threads"]
    print(f"\nlatency: median of {args.rounds} rounds, each timing both models in turn; {threads} threads")
    print("| | unpruned | pruned-A | pruned / unpruned |")
    print("|---|---|---|---|")
    print(f"| MACs (batch 1) | {macs['unpruned']:,} | {macs['pruned-A']:,} | "
          f"{macs['pruned-A'] / macs['unpruned']:.3f} (target 0.66) |")
    print(f"| parameters | {params['unpruned']:,} | {params['pruned-A']:,} | "
          f"{params['pruned-A'] / params['unpruned']:.3f} |")
    for batch in args.batch_sizes:
        before = timings["unpruned"]["latency_ms"][str(batch)]
        after = timings["pruned-A"]["latency_ms"][str(batch)]
        print(f"| latency, batch {batch} (ms) | {before:.2f} | {after:.2f} | {after / before:.3f} (target <= 0.75) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
