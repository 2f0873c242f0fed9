"""Train a model from an experiment file, resume an interrupted run, or only evaluate.

    python trainer_exp.py --json experiments/baseline/cifar10_resnet20.json --gpu 0 --visdom
    python trainer_exp.py --json experiments/baseline/cifar10_resnet20.json \
        --resume checkpoints/cifar10_resnet20/last.pth
    python trainer_exp.py --json experiments/baseline/cifar10_resnet20.json --evaluate --resume checkpoints/x/best.pth
    python trainer_exp.py --json experiments/baseline/cifar10_resnet20.json --evaluate --resume checkpoints/x/best.pth \
        --export onnx compressed
"""

from __future__ import annotations

import argparse

from utils.app.cli import add_common_arguments, run_main


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--resume", metavar="CKPT", default=None,
                        help="continue an interrupted run from its checkpoint (model, optimizer, scheduler, epoch, "
                             "RNG); with --evaluate, the checkpoint to evaluate")
    parser.add_argument("--evaluate", action="store_true", help="only evaluate the model on the test split")
    return parser


def cli() -> int:
    args = get_args_parser().parse_args()
    from utils.config.validate import load_config

    cfg = load_config(args.json, args.overrides)  # before torch is imported: a bad file fails at once
    from utils.app.names import check_names
    from utils.app.trainer_main import main

    check_names(cfg, args.json)
    return main(cfg, gpu=args.gpu, visdom=args.visdom, resume=args.resume, evaluate_only=args.evaluate,
                export=tuple(args.export))


if __name__ == "__main__":
    run_main(cli)
