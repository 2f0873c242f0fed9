"""The budget study of the README's Results: ResNet-56 pruned to half its MACs, every allocation and criterion, with
and without distillation, two seeds, against Li et al.'s hand-made pruned-B.

    OMP_WAIT_POLICY=PASSIVE python bench/budget_study.py --out studies/budget          # every run (hours on 2 cores)
    python bench/budget_study.py --out studies/budget --only uniform-l1 pruned-B        # some of them
    python bench/budget_study.py --out studies/budget --report                          # the tables, from what ran

Every run is ``pruner_exp.py`` on ``experiments/shared/cifar10_subset_budget_akamaster_resnet56.json`` (the public
akamaster ResNet-56, retrained on the 5,085 training images of the lossless CIFAR-10 subset and tested on its 1,017
test images) with ``--set`` for what varies, so each is a run a user can repeat by hand; the commands are printed.
A run whose ``results.json`` exists is not run again, so the study resumes where it stopped.

The ``sensitivity`` allocation needs a sensitivity sweep; it is measured on 100 *training* images of each class (a
folder of links made under ``--out``), not on the test images the study reports, so the allocation does not see
the test set. Latency is measured at the end, every pruned model and the unpruned one side by side in one process
(:func:`utils.report.profile.compare_latency`), so its ratios hold on a loaded machine.

1,017 test images give each accuracy a standard error of about 0.9 points, as large as the differences studied. So
the report also evaluates every final model (``trainer_exp.py --evaluate``, cached in the run's ``jpeg.json``) on the
10,000 test images of ``cifar10-jpeg``, the lossy JPEG copy of all of CIFAR-10: about 0.3 points of standard error,
but not CIFAR-10's pixels (models trained on the originals lose about 10 points on it), so only its differences
between runs mean something.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, describe_device, shared_data
from utils.checkpoint.load import build_model_from_arch, load_toolkit_checkpoint, load_weights_file
from utils.report.profile import compare_latency

BASE = REPO / "experiments/shared/cifar10_subset_budget_akamaster_resnet56.json"
PRUNED_B = REPO / "experiments/shared/cifar10_subset_filter_prune_akamaster_resnet56_pruned_b.json"
SENSITIVITY = REPO / "experiments/shared/cifar10_subset_sensitivity_akamaster_resnet56.json"
PRUNED_B_MACS = 90_907_264 / 125_485_696  # pruned-B's MACs over ResNet-56's (its --dry-run)
DISTILL = '{"alpha": 0.5, "temperature": 4}'
CALIBRATION_IMAGES = 100  # per class, from the training split, for the sensitivity sweep


@dataclass(frozen=True)
class Study:
    """One configuration of the study: the experiment file and the ``--set`` items that make it."""

    name: str
    experiment: Path = BASE
    sets: tuple[str, ...] = ()
    needs_sensitivity: bool = False
    what: str = ""


def _budget(allocation: str, importance: str, *extra: str, name: str = "", what: str = "") -> Study:
    return Study(name or f"{allocation}-{importance}", sets=(f"prune.allocation={allocation}",
                                                             f"prune.importance={importance}", *extra),
                 needs_sensitivity=allocation == "sensitivity", what=what or f"0.5x MACs, {allocation}, {importance}")


STUDIES = (
    *(_budget("uniform", c) for c in ("l1", "l2", "fpgm", "bn_scale", "taylor", "random")),
    _budget("global", "l1"),
    _budget("sensitivity", "l1"),
    _budget("uniform", "l1", f"retrain.distill={DISTILL}", name="uniform-l1-distill",
            what="0.5x MACs, uniform, l1, distilled (alpha 0.5, T 4)"),
    _budget("global", "l1", f"retrain.distill={DISTILL}", name="global-l1-distill",
            what="0.5x MACs, global, l1, distilled (alpha 0.5, T 4)"),
    Study("pruned-B", experiment=PRUNED_B, what="Li et al. pruned-B (hand-made, 0.724x MACs)"),
    _budget("global", "l1", f'prune.target={{"macs": {PRUNED_B_MACS:.6f}}}', name="global-l1-at-B",
            what="pruned-B's MACs, global, l1"),
)
RETRAIN = ("retrain.epochs=4", "retrain.lr=0.01", "retrain.schedule=cosine", "retrain.weight_decay=0.0001",
           "prune.latency=false")  # pruned-B's file retrains otherwise: the same budget for every run


@dataclass
class Outcome:
    """What the runs of one study gave, one entry per seed."""

    study: Study
    pruned: list[float] = field(default_factory=list)
    retrained: list[float] = field(default_factory=list)
    macs: list[float] = field(default_factory=list)
    params: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    jpeg: list[float] = field(default_factory=list)


def calibration_tree(out: Path) -> Path:
    """``out/calibration/{train,test}``: both links to the same 100 training images of each class."""
    root = out / "calibration"
    images = root / "images"
    if not images.exists():
        train = shared_data() / "cifar10-lossless-subset" / "train"
        for folder in sorted(p for p in train.iterdir() if p.is_dir()):
            (images / folder.name).mkdir(parents=True)
            for path in sorted(folder.glob("*.png"))[:CALIBRATION_IMAGES]:
                (images / folder.name / path.name).symlink_to(path)
        for split in ("train", "test"):
            (root / split).symlink_to("images")
    return root


def pruner(experiment: Path, sets: list[str], out: Path, name: str) -> None:
    """``pruner_exp.py`` into ``out/name`` unless its results are there; the command is printed first."""
    if (out / name / "results.json").exists() or (out / name / "sensitivity.json").exists():
        return
    command = [sys.executable, "pruner_exp.py", "--json", str(experiment), *(f"--set={s}" for s in sets),
               f"--set=output.dir={out}", f"--set=name={name}", "--set=output.overwrite=true"]
    print("$ " + " ".join(command[1:]), flush=True)
    log = out / f"{name}.log"
    with log.open("w") as handle:
        code = subprocess.call(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"{name} failed (exit {code}); see {log}")


def sensitivity_file(out: Path) -> Path:
    sets = [f"data.root={calibration_tree(out)}", "prune.sensitivity_ratios=[0.1, 0.3, 0.5, 0.7, 0.9]"]
    pruner(SENSITIVITY, sets, out, "sensitivity")
    return out / "sensitivity" / "sensitivity.json"


def run_all(studies: list[Study], seeds: list[int], out: Path) -> None:
    """Every study at every seed, seed by seed (so one seed of everything is done first)."""
    for seed in seeds:
        for study in studies:
            sets = [*study.sets, *RETRAIN, f"seed={seed}"]
            if study.needs_sensitivity:
                sets.append(f"prune.sensitivity_file={sensitivity_file(out)}")
            pruner(study.experiment, sets, out, f"{study.name}-s{seed}")


def collect(studies: list[Study], seeds: list[int], out: Path) -> list[Outcome]:
    outcomes = []
    for study in studies:
        outcome = Outcome(study)
        for seed in seeds:
            path = out / f"{study.name}-s{seed}" / "results.json"
            if not path.exists():
                continue
            results = json.loads(path.read_text())
            outcome.pruned.append(results["pruned_before_retraining"]["top1"])
            outcome.retrained.append(results["after"]["top1"])
            outcome.macs.append(results["after"]["macs"] / results["before"]["macs"])
            outcome.params.append(results["after"]["params"])
            history = [json.loads(line) for line in (out / f"{study.name}-s{seed}" / "metrics.jsonl").open()]
            outcome.seconds.append(sum(r.get("time", 0.0) for r in history if "epoch" in r))
            run = out / f"{study.name}-s{seed}"
            outcome.jpeg.append(jpeg_top1(run / "last.pth", run / "jpeg.json"))
        if outcome.retrained:
            outcomes.append(outcome)
    return outcomes


def jpeg_top1(checkpoint: Path | None, cache: Path) -> float:
    """Top-1 of ``checkpoint`` (None: the unpruned ResNet-56 of the study's file) on the 10,000 test images of
    ``cifar10-jpeg``, by ``trainer_exp.py --evaluate``; cached in ``cache``."""
    if cache.exists():
        return float(json.loads(cache.read_text())["top1"])
    command = [sys.executable, "trainer_exp.py", "--json", str(BASE), "--evaluate",
               f"--set=data.root={shared_data() / 'cifar10-jpeg'}"]
    if checkpoint is not None:
        command.append(f"--resume={checkpoint}")
    printed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
    top1 = float(re.search(r"\[Test\] .*: Top1: ([0-9.]+)", printed).group(1))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"top1": top1, "checkpoint": str(checkpoint)}) + "\n")
    return top1


def _mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"{statistics.mean(values):.2f} ± {(max(values) - min(values)) / 2:.2f}"


def latency(outcomes: list[Outcome], out: Path) -> dict[str, float]:
    """Batch-64 CPU latency of each study's pruned model (seed 0's) over the unpruned model's, side by side."""
    models: dict[str, torch.nn.Module] = {}
    for outcome in outcomes:
        run = next(p for p in sorted(out.glob(f"{outcome.study.name}-s*")) if (p / "last.pth").exists())
        models[outcome.study.name] = load_toolkit_checkpoint(run / "last.pth").model.eval()
    unpruned = build_model_from_arch({"name": "resnet56", "options": {"num_classes": 10, "shortcut": "A"}})
    load_weights_file(unpruned, shared_data() / "weights/cifar10/akamaster_resnet56-4bfd9763.th")
    models["unpruned"] = unpruned.eval()
    timings = compare_latency(models, (3, 32, 32), device="cpu", batch_sizes=(64,), rounds=3)
    base = timings["unpruned"]["latency_ms"]["64"]
    print(f"latency: batch 64 on {describe_device(torch.device('cpu'))}, unpruned {base:.1f} ms")
    return {name: t["latency_ms"]["64"] / base for name, t in timings.items()}


def report(outcomes: list[Outcome], ratios: dict[str, float], unpruned: dict[str, float]) -> str:
    """The study's table; ``unpruned``: the original model's ``params`` and ``top1`` (any run's ``before``) and its
    ``jpeg`` top-1."""
    header = ("| run | MACs | parameters | top-1 pruned, before retraining | top-1 after 4 epochs | top-1 on the "
              "10,000 JPEG test images | latency (batch 64) | seeds |")
    lines = [header, "|---|---|---|---|---|---|---|---|",
             (f"| unpruned | 1.000x | {unpruned['params']:,.0f} | {unpruned['top1']:.2f} | - | {unpruned['jpeg']:.2f} "
             "| 1.00x | - |")]
    for o in outcomes:
        ratio = f"{ratios[o.study.name]:.2f}x" if o.study.name in ratios else "-"
        lines.append(f"| {o.study.what} | {statistics.mean(o.macs):.3f}x | {statistics.mean(o.params):,.0f} | "
                     f"{_mean_spread(o.pruned)} | {_mean_spread(o.retrained)} | {_mean_spread(o.jpeg)} | {ratio} | "
                     f"{len(o.retrained)} |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "checkpoints" / "budget_study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--only", nargs="+", default=None, choices=[s.name for s in STUDIES], metavar="STUDY",
                        help="run these studies only (default: all): " + ", ".join(s.name for s in STUDIES))
    parser.add_argument("--report", action="store_true", help="no runs: the table of what has run, with latency")
    return parser


def main(args: argparse.Namespace) -> int:
    studies = [s for s in STUDIES if args.only is None or s.name in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        run_all(studies, args.seeds, args.out)
    outcomes = collect(studies, args.seeds, args.out)
    if not outcomes:
        raise SystemExit(f"no finished runs in {args.out}")
    first = next(args.out.glob("*-s*/results.json"))
    unpruned = {**json.loads(first.read_text())["before"], "jpeg": jpeg_top1(None, args.out / "unpruned" / "jpeg.json")}
    table = report(outcomes, latency(outcomes, args.out), unpruned)
    print(table)
    (args.out / "study.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
