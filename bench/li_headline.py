"""Li et al.'s VGG-16 pruned-A headline in the time one command has: train the baseline on the fast path, prune,
retrain, and report top-1 before, after pruning and after retraining, with the fast path's epoch time against the
standard DataLoader path's.

    python bench/li_headline.py --data /tmp/cifar10-jpeg --out /tmp/headline --budget 240 --gpu 0
    python bench/li_headline.py --fake 4 --out /tmp/headline --budget 60 --no-compile      # a toy run on the CPU

Everything runs through the entry scripts, as a user would repeat it (each command is printed):

1. two short timing runs of ``trainer_exp.py`` over the same first ``--timing-epochs`` epochs: the fast path
   (``experiments/shared/cifar10_jpeg_vgg16_bn_fast.json``: data on the GPU, bf16, channels-last, compiled) and the
   standard one (``cifar10_jpeg_vgg16_bn.json``: DataLoader workers, float32, eager); their ``metrics.jsonl`` give the
   epoch times;
2. the number of epochs the rest of ``--budget`` allows (:func:`size_epochs`: the timing run's last epoch as the epoch
   time, its start-up as each further run's), split between the baseline and the retraining;
3. the baseline: the fast experiment with ``train.epochs`` set to that and a cosine schedule (to zero over the epochs
   the budget allows, in place of the 160-epoch step schedule);
4. ``pruner_exp.py`` with ``experiments/prune/cifar10_filter_prune_vgg16_bn.json`` (pruned-A: half the filters of conv1
   and conv8-conv13) on the baseline's ``last.pth`` and the same data, retraining on the fast path (not compiled:
   compiling the pruned shapes would cost more than the few epochs save).

Data: ``--data`` is an ImageFolder tree with ``train/`` and ``test/`` (the shared lossy ``cifar10-jpeg``: never quote
its numbers as CIFAR-10 numbers); ``--fake N`` writes N random 32x32 JPEGs per class and split instead. Writes
``headline.json`` and ``headline.md`` to ``--out``, with the targets (pruned-A within 0.3 points of its baseline after
retraining; the fast path at most 3 s per epoch) judged.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FAST = REPO / "experiments" / "shared" / "cifar10_jpeg_vgg16_bn_fast.json"
STANDARD = REPO / "experiments" / "shared" / "cifar10_jpeg_vgg16_bn.json"
PRUNE = REPO / "experiments" / "prune" / "cifar10_filter_prune_vgg16_bn.json"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TOP1_DROP_TARGET = 0.3  # points: pruned-A after retraining against its baseline
EPOCH_TARGET_S = 3.0  # seconds per CIFAR-10 epoch on the fast path


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=None, help="ImageFolder tree with train/ and test/ (an unpacked cifar10-jpeg)")
    p.add_argument("--fake", type=int, default=None, metavar="N", help="write N random JPEGs per class and split")
    p.add_argument("--out", required=True, help="folder for headline.json and headline.md")
    p.add_argument("--runs", default=None, help="output.dir of the runs, checkpoints included (default: <out>/runs)")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for everything, start-ups included")
    p.add_argument("--gpu", type=int, default=None, help="cuda:N (default: the CPU)")
    p.add_argument("--timing-epochs", type=int, default=2, help="epochs of each timing run (the last one is timed)")
    p.add_argument("--max-epochs", type=int, default=160, help="at most this many baseline epochs")
    p.add_argument("--max-retrain-epochs", type=int, default=40, help="at most this many retraining epochs (Li et "
                   "al. retrain VGG-16 for 40)")
    p.add_argument("--retrain-share", type=float, default=0.25, help="share of the epochs that retrain pruned-A")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers of the standard path "
                   "(default: the cores less 2, at most 12)")
    p.add_argument("--no-compile", action="store_true", help="leave train.compile off (a CPU without a compiler)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to every run (e.g. data.batch_size=16 for a toy run)")
    return p


@dataclass(frozen=True)
class Sizing:
    baseline_epochs: int
    retrain_epochs: int
    epoch_s: float
    left_s: float


def size_epochs(left_s: float, *, epoch_s: float, startup_s: float, max_epochs: int, max_retrain: int = 40,
                retrain_share: float = 0.25) -> Sizing:
    """Epochs of baseline and retraining that fit in ``left_s`` seconds: two more runs (baseline, pruner), each with
    ``startup_s`` of start-up (imports, data decoding, compilation, evaluation) and ``epoch_s`` per epoch, with 10% of
    the time kept back. At least one epoch of each, even when they do not fit (the run is then cut by its deadline and
    says so); the baseline at most ``max_epochs``, the retraining at most ``max_retrain``."""
    usable = 0.9 * left_s - 2 * startup_s
    total = max(2, math.floor(usable / epoch_s)) if epoch_s > 0 else 2
    retrain = min(max_retrain, max(1, round(retrain_share * total)))
    baseline = min(max_epochs, max(1, total - retrain))
    return Sizing(baseline_epochs=baseline, retrain_epochs=retrain, epoch_s=epoch_s, left_s=left_s)


def write_fake_folder(root: Path, per_class: int, seed: int = 0) -> Path:
    """``root/{train,test}/<class>/NNNN.jpg``: ``per_class`` random 32x32 JPEGs per class and split (the layout of the
    shared ``cifar10-jpeg``), for a run where the real copy is absent."""
    import numpy as np  # not at the top: --help and the sizing tests need neither
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) // 4 + 24 * label  # a class-dependent tint
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=75)
    return root


@dataclass
class Run:
    """One entry-script run: its command, exit status, wall time and run directory."""
    name: str
    command: list[str]
    rc: int | None = None
    wall_s: float = 0.0
    run_dir: str = ""


def run_script(run: Run, run_dir: Path, deadline: float) -> Run:
    """Run ``run.command`` (printed first), cut by SIGTERM at ``deadline`` (the trainer then saves ``last.pth``)."""
    print(f"\n$ {shlex.join(run.command)}", flush=True)
    start = time.monotonic()
    left = deadline - start
    if left <= 5:
        run.rc = 124
        print(f"{run.name}: skipped, {left:.0f} s left", flush=True)
        return run
    proc = subprocess.Popen(run.command, cwd=REPO)
    try:
        run.rc = proc.wait(timeout=left)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        run.rc = 124
    run.wall_s = time.monotonic() - start
    run.run_dir = str(run_dir)
    print(f"{run.name}: exit {run.rc} after {run.wall_s:.1f} s", flush=True)
    return run


def epoch_times(run_dir: Path) -> list[float]:
    """Seconds per epoch (training and evaluation) from a run's ``metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [float(r["time"]) for r in records if "time" in r and "epoch" in r]


def trainer_command(experiment: Path, name: str, args: argparse.Namespace, sets: list[str]) -> list[str]:
    command = [sys.executable, str(REPO / "trainer_exp.py"), "--json", str(experiment)]
    if args.gpu is not None:
        command += ["--gpu", str(args.gpu)]
    for item in [f"name={name}", *common_sets(args), *sets, *args.overrides]:
        command += ["--set", item]
    return command


def common_sets(args: argparse.Namespace) -> list[str]:
    """Overrides every run takes: the data folder and the run folder."""
    return [f"data.root={args.data}", f"output.dir={args.runs}", "output.overwrite=true"]


def pruner_command(checkpoint: Path, retrain_epochs: int, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, str(REPO / "pruner_exp.py"), "--json", str(PRUNE)]
    if args.gpu is not None:
        command += ["--gpu", str(args.gpu)]
    sets = ["name=li_pruned_a", *common_sets(args), "data.name=imagefolder", "data.image_size=32", "data.loader=gpu",
            f"model.checkpoint={checkpoint}", f"retrain.epochs={retrain_epochs}", "retrain.amp=bf16",
            "retrain.channels_last=true", "prune.latency=false", *args.overrides]
    for item in sets:
        command += ["--set", item]
    return command


def timing(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    """The two timing runs over the same first epochs; their epoch times and start-up seconds."""
    runs = Path(args.runs)
    epochs = [f"train.epochs={args.timing_epochs}"]
    fast_sets = [*epochs, *(["train.compile=false"] if args.no_compile else [])]
    workers = args.workers if args.workers is not None else max(1, min(12, (os.cpu_count() or 2) - 2))
    result: dict[str, Any] = {}
    standard_sets = [*epochs, f"data.workers={workers}"]
    for key, experiment, sets in (("fast", FAST, fast_sets), ("standard", STANDARD, standard_sets)):
        name = f"li_timing_{key}"
        run = run_script(Run(name, trainer_command(experiment, name, args, sets)), runs / name, deadline)
        times = epoch_times(runs / name)
        result[key] = {**asdict(run), "epoch_s": times, "startup_s": max(0.0, run.wall_s - sum(times))}
    result["standard"]["workers"] = workers
    return result


def top1(results: dict[str, Any]) -> dict[str, float | None]:
    """Top-1 before, right after pruning and after retraining, from the pruner's ``results.json``."""
    def get(*keys: str) -> float | None:
        node: Any = results
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return float(node) if isinstance(node, int | float) else None

    return {"before": get("before", "top1"), "pruned": get("pruned_before_retraining", "top1"),
            "retrained": get("after", "top1")}


def judge(summary: dict[str, Any]) -> dict[str, Any]:
    """The headline's targets, each ``{"value", "target", "pass"}`` (``pass`` None when there is no value)."""
    acc = summary.get("top1", {})
    drop = (acc["before"] - acc["retrained"]) if acc.get("before") is not None and acc.get("retrained") is not None \
        else None
    fast = summary.get("timing", {}).get("fast", {}).get("epoch_s") or []
    epoch = fast[-1] if fast else None
    return {"top1_drop_after_retraining": {"value": drop, "target": f"<= {TOP1_DROP_TARGET}",
                                           "pass": None if drop is None else drop <= TOP1_DROP_TARGET},
            "fast_epoch_s": {"value": epoch, "target": f"<= {EPOCH_TARGET_S}",
                             "pass": None if epoch is None else epoch <= EPOCH_TARGET_S}}


def markdown(summary: dict[str, Any]) -> str:
    """The headline as a short markdown report."""
    def num(value: Any, fmt: str = ".2f") -> str:
        return "n/a" if value is None else format(value, fmt)

    acc, t, targets = summary.get("top1", {}), summary.get("timing", {}), summary.get("targets", {})
    fast, std = t.get("fast", {}).get("epoch_s") or [], t.get("standard", {}).get("epoch_s") or []
    sizing = summary.get("sizing") or {}
    width = max(len(fast), len(std), 1)
    lines = [f"## Li et al. VGG-16 pruned-A headline ({summary.get('data')})", "",
             (f"device: {summary.get('device')}; commit: {summary.get('commit')}; baseline "
              f"{sizing.get('baseline_epochs', 'n/a')} epochs (cosine), retraining "
              f"{sizing.get('retrain_epochs', 'n/a')} epochs (lr 0.001 constant)"), "",
             "| top-1 | before | pruned-A, not retrained | pruned-A, retrained |", "|---|---|---|---|",
             f"| % | {num(acc.get('before'))} | {num(acc.get('pruned'))} | {num(acc.get('retrained'))} |", "",
             "| epoch time (s), same first epochs | " + " | ".join(f"epoch {i}" for i in range(width)) + " |",
             "|---" * (1 + width) + "|",
             "| fast (GPU data, bf16, channels-last, compiled) | " + " | ".join(num(v) for v in fast) + " |",
             "| standard (DataLoader, fp32, eager) | " + " | ".join(num(v) for v in std) + " |", ""]
    for key, target in targets.items():
        verdict = "n/a" if target["pass"] is None else ("pass" if target["pass"] else "FAIL")
        lines.append(f"- {key}: {num(target['value'], '.3f')} (target {target['target']}): {verdict}")
    for run in summary.get("runs", []):
        lines.append(f"- `{shlex.join(run['command'])}`: exit {run['rc']}, {run['wall_s']:.0f} s")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.runs = str(Path(args.runs) if args.runs else out / "runs")
    if args.data is None:
        if args.fake is None:
            print("error: give --data (an ImageFolder tree) or --fake N", file=sys.stderr)
            return 2
        args.data = str(write_fake_folder(out / "fake-jpeg", args.fake))
    sys.path.insert(0, str(REPO))
    from utils.core.provenance import git_commit  # not at the top: torch loads with it

    summary: dict[str, Any] = {"data": args.data, "commit": git_commit(), "budget_s": args.budget,
                               "device": f"cuda:{args.gpu}" if args.gpu is not None else "cpu"}
    summary["timing"] = timing(args, deadline)
    runs = [summary["timing"][k] for k in ("fast", "standard")]
    fast = summary["timing"]["fast"]
    status = 0
    if fast["rc"] == 0 and fast["epoch_s"]:
        sizing = size_epochs(deadline - time.monotonic(), epoch_s=fast["epoch_s"][-1],
                             startup_s=fast["startup_s"] + fast["epoch_s"][0] - fast["epoch_s"][-1],
                             max_epochs=args.max_epochs, max_retrain=args.max_retrain_epochs,
                             retrain_share=args.retrain_share)
        summary["sizing"] = asdict(sizing)
        print(f"\nsizing: {sizing}", flush=True)
        base_sets = [f"train.epochs={sizing.baseline_epochs}", "train.schedule=cosine", "train.milestones=[]",
                     *(["train.compile=false"] if args.no_compile else [])]
        base = run_script(Run("li_baseline", trainer_command(FAST, "li_baseline", args, base_sets)),
                          Path(args.runs) / "li_baseline", deadline)
        runs.append(asdict(base))
        checkpoint = Path(args.runs) / "li_baseline" / "last.pth"
        if base.rc == 0 and checkpoint.exists():
            prune = run_script(Run("li_pruned_a", pruner_command(checkpoint, sizing.retrain_epochs, args)),
                               Path(args.runs) / "li_pruned_a", deadline)
            runs.append(asdict(prune))
            results_file = Path(args.runs) / "li_pruned_a" / "results.json"
            if prune.rc == 0 and results_file.exists():
                summary["top1"] = top1(json.loads(results_file.read_text()))
            status = prune.rc or (0 if "top1" in summary else 1)
        else:
            status = base.rc or 1
    else:
        status = fast["rc"] or 1
    summary["runs"] = [{k: r[k] for k in ("name", "command", "rc", "wall_s")} for r in runs]
    summary["targets"] = judge(summary)
    (out / "headline.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = markdown(summary)
    (out / "headline.md").write_text(report)
    print("\n" + report, flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
