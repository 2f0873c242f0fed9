"""What both entry scripts share: the common arguments and the error boundary.

A :class:`~utils.core.errors.UserError` anywhere below ``main`` becomes one line on stderr and exit status 2. A run
stopped by Ctrl-C or SIGTERM during training saves itself and prints the command that resumes it (exit 130 / 143);
elsewhere they stop without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from utils.core.choices import EXPORT_FORMATS
from utils.core.errors import UserError
from utils.train.interrupt import RunInterrupted, Terminated, terminate_as_interrupt


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", required=True, metavar="FILE", help="experiment file (see experiments/)")
    parser.add_argument("--gpu", type=int, default=None, metavar="N", help="run on cuda:N (default: the CPU)")
    parser.add_argument("--visdom", action="store_true", help="plot live curves to the visdom server in the config")
    parser.add_argument("--export", nargs="+", default=[], metavar="FORMAT", choices=EXPORT_FORMATS,
                        help="also write the final model as: compressed (non-zero values plus a bitmask or indices "
                             "per tensor), compressed-fp16 (values in half precision), onnx (checked against PyTorch "
                             "under onnxruntime; needs pip install onnx onnxruntime)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key by its dotted name, e.g. --set data.root=/data "
                             "--set 'data.mean=[0.5,0.5,0.5]' (the value is read as JSON when it parses)")


def add_list_layers_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list-layers", action="store_true",
                        help="print the layer names prune.layers and prune.skip take for model.arch (one line per "
                             "conv: name, module, channels, prunable or why not) and exit; needs no data, and no "
                             "weights unless model.checkpoint is a checkpoint of this tool (a pruned model)")


def add_dry_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="print what the pruning run would do (filters before -> after per layer, the groups that "
                             "could be pruned too or why not, parameters and MACs before/after) and write it as a "
                             "plan file, then exit; needs no data and no trained weights")
    parser.add_argument("--plan-out", metavar="PATH", default=None,
                        help="with --dry-run: where the plan is written (default: <output.dir>/<name>.plan.json); "
                             "only an earlier plan is ever replaced")


def check_dry_run_arguments(args: argparse.Namespace) -> None:
    """``--dry-run`` plans a new run and ``--list-layers`` lists names: neither goes with what only a real run does."""
    if args.plan_out is not None and not args.dry_run:
        raise UserError(f"--plan-out {args.plan_out}: only with --dry-run (it says where the plan is written)")
    if args.dry_run and args.list_layers:
        raise UserError("--dry-run and --list-layers: give one of them (--dry-run also lists the groups that could "
                        "be pruned)")
    if args.dry_run and (args.resume is not None or args.export):
        flag = "--resume" if args.resume is not None else "--export"
        raise UserError(f"--dry-run with {flag}: a dry run plans a new run and writes no model; drop {flag}")


def run_main(main: Callable[[], int | None]) -> None:
    """Call ``main`` and turn user errors into one clear line and a non-zero exit, and a run stopped by a signal into
    the command that resumes it."""
    terminate_as_interrupt()
    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except RunInterrupted as exc:
        from utils.core import distributed  # not at the top: the entry scripts import this module before torch

        if distributed.is_main():  # every rank stopped at the same step; one says so
            print(f"{exc}\nresume with: {resume_command(sys.argv, exc.resume)}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        print("terminated" if isinstance(exc, Terminated) else "interrupted", file=sys.stderr)
        sys.exit(143 if isinstance(exc, Terminated) else 130)
    sys.exit(code or 0)


def resume_command(argv: list[str], resume: Path) -> str:
    """The command line that ran, with ``--resume`` (replaced or added) pointing at ``resume`` (under torchrun, the
    torchrun command with the same process count)."""
    args, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            args.append(arg)
    from utils.core import distributed  # not at the top: the entry scripts import this module before torch

    launcher, launch = ["python"], distributed.launched()
    if launch is not None:
        world, local = launch.world_size, launch.local_world_size
        launcher = ["torchrun", f"--nproc_per_node={local}"] + ([f"--nnodes={world // local}"] if world > local else [])
    return shlex.join([*launcher, argv[0], *args, "--resume", str(resume)])
