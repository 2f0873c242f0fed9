"""Prune the model an experiment file names, evaluate it, optionally fine-tune it, and report.

    python pruner_exp.py --json experiments/prune/cifar10_weight_prune_resnet20.json --gpu 0 --prune_percent 0.5
    python pruner_exp.py --json experiments/prune/cifar10_weight_prune_resnet20.json --prune_percent 0.3 0.5 0.7 0.9
    python pruner_exp.py --json experiments/prune/cifar10_weight_prune_resnet20.json --resume checkpoints/<run>
    python pruner_exp.py --json experiments/prune/cifar10_weight_prune_resnet20.json --export compressed onnx
    python pruner_exp.py --json experiments/prune/cifar10_filter_prune_vgg16_bn.json --list-layers
    python pruner_exp.py --json experiments/prune/cifar10_filter_prune_resnet56_pruned_b.json --dry-run
"""

from __future__ import annotations

import argparse

from utils.app.cli import (
    add_common_arguments,
    add_dry_run_arguments,
    add_list_layers_argument,
    check_dry_run_arguments,
    run_main,
)
from utils.core.errors import UserError


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--prune_percent", type=float, nargs="+", default=None, metavar="P",
                        help="fraction(s) in [0, 1) to prune; several make a sweep (overrides prune.percent)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue a run stopped during retraining, in its run directory (same experiment "
                             "settings): it prunes again and retrains from the checkpoints there")
    add_list_layers_argument(parser)
    add_dry_run_arguments(parser)
    return parser


def cli() -> int:
    args = get_args_parser().parse_args()
    check_dry_run_arguments(args)
    from utils.config.bounds import repeated_ratio
    from utils.config.validate import load_config

    overrides = list(args.overrides)
    if args.prune_percent is not None:
        for p in args.prune_percent:
            if not 0 <= p < 1:
                raise UserError(f"--prune_percent {p}: expected fractions in [0, 1), e.g. --prune_percent 0.3 0.5")
        repeated = repeated_ratio(args.prune_percent)
        if repeated is not None:
            given = " ".join(repr(p) for p in args.prune_percent)
            raise UserError(f"--prune_percent {given}: {repeated}")
        overrides.append(f"prune.percent={list(args.prune_percent)}")
    cfg = load_config(args.json, overrides)  # before torch is imported: a bad file fails at once
    from utils.app.names import check_names
    from utils.app.pruner_main import main

    check_names(cfg, args.json)
    if args.list_layers:
        from utils.app.layer_list import list_layers

        return list_layers(cfg)
    if args.dry_run:
        from utils.app.dry_run import dry_run

        return dry_run(cfg, plan_out=args.plan_out)
    return main(cfg, gpu=args.gpu, visdom=args.visdom, resume=args.resume, export=tuple(args.export))


if __name__ == "__main__":
    run_main(cli)
