"""Overhead of a weight-pruning sweep: its total time / (9 x one evaluation), for 9 ratios (target <= 1.2).

    python bench/sweep_overhead.py                      # CPU; ../shared/data or $PRUNE_SHARED_DATA
    python bench/sweep_overhead.py --gpu 0 --rounds 3 --subprocess

What is timed, and why this is the honest measure:

* the sweep is ``utils.app.pruner_main.main(cfg)``, the very function ``pruner_exp.py`` calls after parsing its
  arguments, on ``experiments/shared/cifar10_subset_weight_prune_akamaster_resnet56.json`` (the public akamaster
  ResNet-56 on the 1,017 test images of the shared lossless CIFAR-10 subset) with ``prune.percent`` set to 0.1 ... 0.9.
  So the total holds everything a user waits for except starting Python and importing torch: building the loaders and
  their worker processes, reading the checkpoint, the baseline evaluation, and per ratio copying the model, pruning,
  evaluating, the sparsity report and the saved ``pruned.pth``, then the tables. ``--subprocess`` also times ``python
  pruner_exp.py`` as a whole (interpreter and imports included), once per round;
* one evaluation is ``utils.train.engine.evaluate`` of the unpruned model over the same test loader (same batch size and
  workers), measured in the same process right before and right after each sweep, on a warm loader (the median
  of ``--evals`` passes each time, after one untimed pass): the steady cost of an evaluation, so that start-up
  costs count as overhead;
* the ratio is taken per round (evaluation and sweep back to back: load from other processes hits both) and the
  median over rounds is reported. A sweep runs 10 evaluations for 9 ratios (the baseline too), so 10/9 = 1.11 is
  what a sweep with no other cost would score if its evaluations took as long as the one timed alone. The
  breakdown shows the evaluations inside the sweep (timed by wrapping the evaluation the runner calls) and the
  rest; the ratio is also given with the median evaluation inside the sweep as the unit, which is measured at the
  same moment as the total and so less noisy on a loaded machine, but blind to evaluations made slower by the
  sweep itself (hence not the headline).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, header, median, prepare_device, shared_data, spread
from utils.app import pruner_main as pruner
from utils.app import session
from utils.app.names import check_names
from utils.app.setup import build_data, build_model, seed_everything, select_device
from utils.config.schema import ExperimentConfig
from utils.config.validate import load_config
from utils.train.engine import evaluate

EXPERIMENT = REPO / "experiments" / "shared" / "cifar10_subset_weight_prune_akamaster_resnet56.json"
RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gpu", type=int, default=None, help="as pruner_exp.py --gpu (default: the CPU)")
    p.add_argument("--rounds", type=int, default=2, help="evaluation + sweep pairs; the median ratio is reported")
    p.add_argument("--evals", type=int, default=2, help="timed evaluations before and after each sweep (each after "
                   "one untimed)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config overrides, e.g. --set data.workers=0 --set data.batch_size=256")
    p.add_argument("--subprocess", action="store_true", help="also time `python pruner_exp.py` end to end")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def overrides(out_dir: Path, extra: list[str]) -> list[str]:
    data = shared_data()
    root, weights = data / "cifar10-lossless-subset", data / "weights/cifar10/akamaster_resnet56-4bfd9763.th"
    for path in (root, weights):
        if not path.exists():
            raise SystemExit(f"shared data not found: {path} (set PRUNE_SHARED_DATA to the folder that holds it)")
    return [f"data.root={root}", f"model.checkpoint={weights}", f"prune.percent={RATIOS}", f"output.dir={out_dir}",
            "output.overwrite=true", *extra]


def time_evaluation(cfg: ExperimentConfig, gpu: int | None, evals: int) -> list[float]:
    """Seconds per evaluation of the unpruned model on a warm loader of the sweep's settings."""
    device = select_device(gpu)
    seed_everything(cfg.seed)
    data = build_data(cfg, train=False, device=device)
    model = build_model(cfg, data.num_classes).model.to(device)
    criterion = nn.CrossEntropyLoss()
    evaluate(model, data.test_loader, criterion, device)  # starts the persistent workers, warms the kernels
    times = []
    for _ in range(evals):
        start = time.perf_counter()
        evaluate(model, data.test_loader, criterion, device)
        times.append(time.perf_counter() - start)
    del data  # its workers end with the loader
    return times


def time_sweep(cfg: ExperimentConfig, gpu: int | None) -> tuple[float, list[float], str]:
    """Seconds of ``utils.app.pruner_main.main(cfg)``, the seconds of each evaluation it ran, and its printed table."""
    inside: list[float] = []

    def timed_evaluate(*args: Any, **kwargs: Any) -> dict[str, float]:
        start = time.perf_counter()
        try:
            return evaluate(*args, **kwargs)
        finally:
            inside.append(time.perf_counter() - start)

    printed = io.StringIO()
    original, session.evaluate = session.evaluate, timed_evaluate  # what Session.evaluate calls
    try:
        with contextlib.redirect_stdout(printed):
            start = time.perf_counter()
            pruner.main(cfg, gpu=gpu)
            total = time.perf_counter() - start
    finally:
        session.evaluate = original
    lines = printed.getvalue().splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("| ratio")), len(lines))
    last = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    return total, inside, "\n".join(lines[first:last])


def time_subprocess(items: list[str], gpu: int | None) -> float:
    command = [sys.executable, str(REPO / "pruner_exp.py"), "--json", str(EXPERIMENT)]
    command += [part for item in items for part in ("--set", item)] + (["--gpu", str(gpu)] if gpu is not None else [])
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"pruner_exp.py failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def main(args: argparse.Namespace) -> int:
    device = prepare_device("cpu" if args.gpu is None else f"cuda:{args.gpu}", args.threads)
    header("Weight-pruning sweep overhead (9 ratios, ResNet-56, shared CIFAR-10 subset)", device)
    with tempfile.TemporaryDirectory() as out_dir:
        items = overrides(Path(out_dir), args.overrides)
        cfg = load_config(EXPERIMENT, items)
        check_names(cfg, str(EXPERIMENT))
        d = cfg.data
        print(f"experiment: {EXPERIMENT.relative_to(REPO)}; ratios {RATIOS}; test batch "
              f"{d.test_batch_size or d.batch_size}, {d.workers} workers; outputs to a temporary directory")
        rows, table = [], ""
        for _ in range(args.rounds):
            alone = time_evaluation(cfg, args.gpu, args.evals)
            total, inside, table = time_sweep(cfg, args.gpu)
            whole = time_subprocess(items, args.gpu) if args.subprocess else None
            alone += time_evaluation(cfg, args.gpu, args.evals)  # before and after: drift hits both sides
            rows.append((median(alone), total, inside, whole))
    print(f"\n{table}\n")
    process = " pruner_exp.py (s) | its ratio |" if args.subprocess else ""
    print("| round | one evaluation alone (s) | sweep (s) | its evaluations: count, median (s), sum (s) | rest (s) | "
          f"sweep / (9 x median in it) | **sweep / (9 x evaluation alone)** |{process}")
    print("|---|---|---|---|---|---|---|" + ("---|---|" if args.subprocess else ""))
    ratios, inner_ratios, whole_ratios = [], [], []
    for r, (one, total, inside, whole) in enumerate(rows, start=1):
        ratios.append(total / (len(RATIOS) * one))
        inner_ratios.append(total / (len(RATIOS) * median(inside)))
        line = (f"| {r} | {one:.2f} | {total:.2f} | {len(inside)}, {median(inside):.2f}, {sum(inside):.2f} | "
                f"{total - sum(inside):.2f} | {inner_ratios[-1]:.3f} | **{ratios[-1]:.3f}** |")
        if whole is not None:
            whole_ratios.append(whole / (len(RATIOS) * one))
            line += f" {whole:.2f} | {whole_ratios[-1]:.3f} |"
        print(line)
    print(f"\nsweep / (9 x one evaluation) = {median(ratios):.3f} (median of {len(ratios)} rounds, spread "
          f"{spread(ratios)}; target <= 1.2). The sweep runs 10 evaluations for its 9 ratios (10/9 = 1.11).")
    print(f"with the median evaluation inside the sweep as the unit (same moment, same loader): "
          f"{median(inner_ratios):.3f} (spread {spread(inner_ratios)})")
    order = ["baseline", *(f"{r:g}" for r in RATIOS)]
    last = rows[-1][2]
    print("evaluations inside the last sweep (s): " + ", ".join(
        f"{name} {seconds:.2f}" for name, seconds in zip(order, last, strict=False)))
    if whole_ratios:
        print(f"pruner_exp.py as a process (Python start and imports included) = {median(whole_ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
