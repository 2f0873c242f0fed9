"""End to end: the real entry scripts (``trainer_exp.py``, ``pruner_exp.py``) as a user runs them, in subprocesses.

Each run gets a tiny experiment file in a temporary folder and its outputs are read back from disk: config, metrics,
checkpoints, results tables, visdom windows. The data is a small CIFAR-10 written in the real ``cifar-10-batches-py``
pickle format (random pixels and labels: these runs test plumbing and exactness, not learning, and an epoch of
ResNet-20 takes about a second); the digits demo data appears where only evaluation is needed. The runs that several
tests inspect are module-scoped fixtures, so the whole file trains only a handful of short epochs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_data import write_cifar
from visdom_server import free_port, running_visdom_server

from utils.checkpoint.load import load_toolkit_checkpoint

REPO = Path(__file__).resolve().parents[1]
TRAINER = REPO / "trainer_exp.py"
PRUNER = REPO / "pruner_exp.py"
RUN_TIMEOUT_S = 600  # a hang guard; the longest run here takes seconds

DIGITS = {"name": "digits", "batch_size": 128, "test_batch_size": 360, "workers": 0}
CIFAR_PER_BATCH, CIFAR_TEST = 64, 100  # 5 x 64 training images, 100 test images
NAME = "runner_resnet20"
LR_OVERRIDE = "train.lr=0.05"  # every run of NAME passes it, so config.json must show the override, not the file
RATIOS = (0.3, 0.6)

_NUM = r"(\d+\.\d{4})"
EPOCH_LINE = re.compile(rf"^Epoch (\d+)\. \[Train\] Top1: {_NUM}, Top5: {_NUM}, Loss: {_NUM}\. "
                        rf"\[Test\] Top1: {_NUM}, Top5: {_NUM}, Loss: {_NUM}\. Time: \d\d:[0-5]\d:[0-5]\d$")
EVAL_LINE = re.compile(rf"^\[Test\] (.+): Top1: {_NUM}, Top5: {_NUM}, Loss: {_NUM}$")

# visdom's own client (used to read windows back) calls the deprecated logger.warn().
pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")


# ------------------------------------------------------------------------------------------------------ helpers


@dataclass
class Run:
    """One finished script run: its exit status, output and (when it made one) its run directory."""

    returncode: int
    stdout: str
    stderr: str
    path: Path | None

    def metrics(self) -> list[dict[str, Any]]:
        assert self.path is not None
        return [json.loads(line) for line in (self.path / "metrics.jsonl").read_text().splitlines()]


def run_script(script: Path, *args: str, cwd: Path, preexec_fn: Callable[[], None] | None = None) -> Run:
    """Run an entry script exactly as a user would (``python trainer_exp.py ...``) from ``cwd``.

    ``preexec_fn`` runs in the child before the script starts (e.g. to limit the file size it may write).
    """
    # Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine (tests beside other jobs) spinning
    # threads made every run 2-4x slower; with the cores free it costs nothing. The results are the same.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    result = subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=RUN_TIMEOUT_S, check=False, preexec_fn=preexec_fn)
    return script_run(result.returncode, result.stdout, result.stderr, cwd=cwd)


def script_run(returncode: int, stdout: str, stderr: str, *, cwd: Path) -> Run:
    """The :class:`Run` of a script that ran in ``cwd`` (its run directory from the "Run directory:" line)."""
    found = re.search(r"^Run directory: (.+)$", stdout, re.MULTILINE)
    return Run(returncode, stdout, stderr, cwd / found.group(1) if found else None)


def succeeded(run: Run) -> Run:
    assert run.returncode == 0, f"exit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    return run


def cifar(root: Path | str) -> dict[str, Any]:
    """The ``data`` section for the tiny CIFAR-10 under ``root``."""
    return {"name": "cifar10", "root": str(root), "batch_size": 32, "test_batch_size": CIFAR_TEST, "workers": 0}


def write_config(path: Path, **sections: Any) -> Path:
    path.write_text(json.dumps(sections, indent=2))
    return path


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file under ``folder`` with its bytes, and every folder (None), to show that a run left them alone."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def epoch_lines(stdout: str) -> list[re.Match[str]]:
    return [m for line in stdout.splitlines() if (m := EPOCH_LINE.match(line))]


def without_time(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "time"}


def git_head() -> str:
    """The checkout's commit, as provenance should record it ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=False, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def prunable(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, np.ndarray]]:
    """Conv and fc weights of a CIFAR ResNet state dict, told apart by rank alone (4-d conv, 2-d linear)."""
    kinds: dict[str, dict[str, np.ndarray]] = {"conv": {}, "fc": {}}
    for name, tensor in state_dict.items():
        if name.endswith(".weight") and tensor.ndim in (2, 4):
            kinds["conv" if tensor.ndim == 4 else "fc"][name] = tensor.numpy()
    return kinds


def expected_pruning(weights: dict[str, np.ndarray], percent: float) -> tuple[float, dict[str, np.ndarray], int, int]:
    """Independent magnitude pruning of one layer type with numpy: threshold, kept-masks, k and n.

    All |w| of the kind in one sorted array; ``k = round(p * n)`` smallest are pruned and the threshold is the k-th
    smallest. A stable sort breaks ties in layer order, then index order, as the documented rule says.
    """
    flat = np.concatenate([np.abs(w).ravel() for w in weights.values()])
    n = flat.size
    k = round(percent * n)
    threshold = float(np.sort(flat)[k - 1])
    pruned = np.zeros(n, dtype=bool)
    pruned[np.argsort(flat, kind="stable")[:k]] = True
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = ~pruned[start:start + w.size].reshape(w.shape)
        start += w.size
    return threshold, masks, k, n


def assert_masked_zeros(state_dict: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    """Masked weights are exactly zero, and only they are (no weight drifted, none was zeroed besides)."""
    assert masks
    for name, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape == state_dict[name].shape, name
        assert torch.equal(state_dict[name] == 0, ~mask), name


def assert_trained_only_unmasked(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor],
                                 masks: dict[str, torch.Tensor]) -> None:
    """Training moved (nearly) every kept weight and no pruned one."""
    kept = changed = 0
    for name, mask in masks.items():
        assert not after[name][~mask].any(), f"{name}: a pruned weight is no longer 0"
        kept += int(mask.sum())
        changed += int((after[name] != before[name])[mask].sum())
    assert changed >= 0.99 * kept, f"only {changed} of {kept} kept weights changed"


# ------------------------------------------------------------------------------------------- shared training runs


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory of the shared runs, with the tiny CIFAR-10 in ``data/``."""
    folder = tmp_path_factory.mktemp("runner")
    write_cifar(folder / "data", per_batch=CIFAR_PER_BATCH, n_test=CIFAR_TEST)
    return folder


@pytest.fixture(scope="module")
def base_json(work: Path) -> Path:
    """Two epochs of cosine schedule; the file says lr 0.1 and every run overrides it to 0.05 (``LR_OVERRIDE``).

    Paths are relative, as in the shipped experiment files: relative to the working directory.
    """
    return write_config(work / "base.json", name=NAME, seed=0, data=cifar("data"), model={"arch": "resnet20"},
                        train={"epochs": 2, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine"},
                        output={"dir": "runs"})


@pytest.fixture(scope="module")
def baseline(work: Path, base_json: Path) -> Run:
    """The uninterrupted two-epoch run."""
    return succeeded(run_script(TRAINER, "--json", str(base_json), "--set", LR_OVERRIDE, cwd=work))


@pytest.fixture(scope="module")
def interrupted(work: Path, base_json: Path, baseline: Run) -> tuple[dict[str, bytes], Run]:
    """The same experiment again, stopped after its first epoch; with the baseline's files as they were before."""
    assert baseline.path is not None
    before = snapshot(baseline.path)
    run = run_script(TRAINER, "--json", str(base_json), "--set", LR_OVERRIDE, "--set", "train.epochs=1", cwd=work)
    return before, succeeded(run)


@pytest.fixture(scope="module")
def resumed(work: Path, base_json: Path, interrupted: tuple[dict[str, bytes], Run]) -> Run:
    """The interrupted run resumed from its last.pth with the file's two epochs."""
    first = interrupted[1]
    assert first.path is not None
    return succeeded(run_script(TRAINER, "--json", str(base_json), "--set", LR_OVERRIDE,
                                "--resume", str(first.path / "last.pth"), cwd=work))


@pytest.mark.slow
def test_training_run_writes_config_metrics_and_checkpoints(baseline: Run, work: Path) -> None:
    assert baseline.path == work / "runs" / NAME
    assert baseline.stderr == ""  # a healthy run says nothing on stderr (no progress bars off a terminal)
    assert sorted(p.name for p in baseline.path.iterdir()) == ["best.pth", "config.json", "last.pth", "metrics.jsonl"]

    config = json.loads((baseline.path / "config.json").read_text())
    assert config["name"] == NAME and config["model"]["arch"] == "resnet20" and config["data"] == {
        **cifar("data"), "download": False, "mean": None, "std": None, "image_size": None, "decode": "pil",
        "loader": "torchvision", "skip_bad_images": False}
    assert config["train"]["lr"] == 0.05 and config["train"]["epochs"] == 2  # the override wins over the file
    assert config["output"] == {"dir": "runs", "overwrite": False}
    assert config["retrain"] == {"epochs": 0, "lr": 0.001, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False,
                                 "schedule": "constant", "milestones": [], "gamma": 0.1, "amp": None,
                                 "channels_last": False, "compile": False, "sync_bn": False, "bn_l1": 0.0,
                                 "distill": None}  # defaults resolved
    commit = config["provenance"]["git_commit"]
    assert commit.removesuffix("-dirty") == git_head()
    assert config["provenance"]["device"].startswith("cpu")

    metrics = baseline.metrics()
    assert [m["epoch"] for m in metrics] == [0, 1]
    for m in metrics:
        assert set(m) == {"epoch", "lr", "time", "train_loss", "train_top1", "train_top5", "test_loss", "test_top1",
                          "test_top5"}
        assert 0 <= m["test_top1"] <= m["test_top5"] <= 100 and m["train_loss"] > 0
    assert [m["lr"] for m in metrics] == [0.05, 0.025]  # cosine over 2 epochs from the overridden lr

    lines = epoch_lines(baseline.stdout)
    assert len(lines) == 2
    for match, m in zip(lines, metrics, strict=True):
        assert int(match.group(1)) == m["epoch"]
        printed = [float(x) for x in match.groups()[1:]]
        logged = [m[k] for k in ("train_top1", "train_top5", "train_loss", "test_top1", "test_top5", "test_loss")]
        assert printed == [round(v, 4) for v in logged]
    assert f"Best test accuracy: {max(m['test_top1'] for m in metrics):.4f}" in baseline.stdout

    last, best = load(baseline.path / "last.pth"), load(baseline.path / "best.pth")
    assert last["epoch"] == 2 and last["arch"]["name"] == "resnet20" and last["masks"] is None
    assert last["config"] == config  # the resolved config, provenance included, inside every checkpoint
    best_epoch = max(range(len(metrics)), key=lambda i: (metrics[i]["test_top1"], -i))  # the first best epoch
    assert best["epoch"] == best_epoch + 1 and best["metrics"]["test_top1"] == metrics[best_epoch]["test_top1"]
    assert best["best_top1"] == last["best_top1"] == max(m["test_top1"] for m in metrics)


@pytest.mark.slow
def test_rerun_gets_its_own_directory_and_leaves_the_first_untouched(
    baseline: Run, interrupted: tuple[dict[str, bytes], Run]
) -> None:
    before, second = interrupted
    assert baseline.path is not None and second.path is not None
    assert second.path == baseline.path.with_name(f"{NAME}-2")
    assert snapshot(baseline.path) == before
    assert [m["epoch"] for m in second.metrics()] == [0]
    assert json.loads((second.path / "config.json").read_text())["train"]["epochs"] == 1


@pytest.mark.slow
def test_resume_continues_bit_for_bit(baseline: Run, interrupted: tuple[dict[str, bytes], Run],
                                      resumed: Run) -> None:
    """1 epoch + resume to 2 == 2 uninterrupted: weights, BN statistics, optimizer state and metrics.

    The first part ran with ``train.epochs=1``, so its saved cosine schedule ends at lr 0; the resumed run must follow
    the file's 2-epoch schedule, as an uninterrupted run does, rather than the one saved in the checkpoint.
    """
    first = interrupted[1]
    assert first.path is not None and baseline.path is not None
    assert resumed.path is None  # no new run directory: it goes on in the checkpoint's
    assert f"Resuming {first.path / 'last.pth'} at epoch 1 in {first.path}" in resumed.stdout
    assert [int(m.group(1)) for m in epoch_lines(resumed.stdout)] == [1]
    assert sorted(p.name for p in first.path.iterdir()) == ["best.pth", "config.json", "last.pth", "metrics.jsonl"]

    whole, pieced = load(baseline.path / "last.pth"), load(first.path / "last.pth")
    assert pieced["epoch"] == whole["epoch"] == 2
    assert whole["state_dict"].keys() == pieced["state_dict"].keys()
    for key, tensor in whole["state_dict"].items():
        assert torch.equal(tensor, pieced["state_dict"][key]), key
    momentum = [s["momentum_buffer"] for s in whole["optimizer"]["state"].values()]
    assert len(momentum) == len(pieced["optimizer"]["state"])
    for a, b in zip(momentum, [s["momentum_buffer"] for s in pieced["optimizer"]["state"].values()], strict=True):
        assert torch.equal(a, b)
    assert whole["optimizer"]["param_groups"] == pieced["optimizer"]["param_groups"]  # lr, initial_lr, momentum..
    assert whole["scheduler"] == pieced["scheduler"]  # T_max 2, not the interrupted file's 1
    assert whole["best_top1"] == pieced["best_top1"]

    run = Run(0, "", "", first.path)
    assert [without_time(m) for m in run.metrics()] == [without_time(m) for m in baseline.metrics()]
    assert snapshot(baseline.path) == interrupted[0]  # the first run is still as it was


@pytest.mark.slow
def test_evaluate_untrained_on_digits_prints_top1_and_creates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    config = write_config(tmp_path / "digits.json", name="runner_digits", seed=0, data=DIGITS,
                          model={"arch": "resnet20"}, train={"epochs": 3}, output={"dir": str(out)})
    run = succeeded(run_script(TRAINER, "--json", str(config), "--evaluate", cwd=tmp_path))
    assert run.stderr == ""
    [line] = run.stdout.splitlines()
    match = EVAL_LINE.match(line)
    assert match and match.group(1) == "untrained weights"
    top1, top5 = float(match.group(2)), float(match.group(3))
    assert 0 <= top1 <= top5 <= 100
    assert abs(top1 * 3.6 - round(top1 * 3.6)) < 1e-3  # a whole number of the 360 test digits
    assert not out.exists()


@pytest.mark.slow
def test_evaluate_checkpoint_reproduces_the_best_epoch(work: Path, base_json: Path, baseline: Run) -> None:
    assert baseline.path is not None
    out = work / "eval_ckpt_runs"
    ckpt = baseline.path / "best.pth"
    before = snapshot(baseline.path)
    run = succeeded(run_script(TRAINER, "--json", str(base_json), "--evaluate", "--resume", str(ckpt),
                               "--set", f"output.dir={out}", cwd=work))
    [line] = run.stdout.splitlines()
    match = EVAL_LINE.match(line)
    assert match and match.group(1) == str(ckpt)
    best = max(baseline.metrics(), key=lambda m: m["test_top1"])
    assert [float(x) for x in match.groups()[1:]] == [round(best[k], 4) for k in ("test_top1", "test_top5",
                                                                                  "test_loss")]
    assert not out.exists() and snapshot(baseline.path) == before


# ------------------------------------------------------------------------------------------------------- pruning


@pytest.fixture(scope="module")
def sweep(work: Path, baseline: Run) -> Run:
    """``--prune_percent 0.3 0.6`` on the baseline's best.pth, each ratio fine-tuned for one epoch."""
    assert baseline.path is not None
    prune_json = write_config(
        work / "prune.json", name="runner_prune", seed=0, data=cifar("data"),
        model={"arch": "resnet20", "checkpoint": str(baseline.path / "best.pth")},
        prune={"method": "weight", "percent": 0.5, "scope": "layer_type"},
        retrain={"epochs": 1, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "constant"},
        output={"dir": "runs"})
    return succeeded(run_script(PRUNER, "--json", str(prune_json), "--prune_percent", *map(str, RATIOS), cwd=work))


@pytest.mark.slow
def test_sweep_thresholds_and_sparsity_match_an_independent_computation(sweep: Run, baseline: Run,
                                                                        work: Path) -> None:
    assert sweep.path is not None and baseline.path is not None
    results = json.loads((sweep.path / "results.json").read_text())
    assert results["arch"] == "resnet20" and results["method"] == "weight" and results["scope"] == "layer_type"
    assert results["provenance"]["git_commit"].removesuffix("-dirty") == git_head()
    best = max(baseline.metrics(), key=lambda m: m["test_top1"])
    assert results["baseline"]["top1"] == best["test_top1"]  # the checkpoint evaluates as it did in training
    assert results["baseline"]["sparsity"]["conv"] == 0.0

    weights = prunable(load(baseline.path / "best.pth")["state_dict"])
    assert [row["prune_percent"] for row in results["rows"]] == list(RATIOS)
    for row in results["rows"]:
        p = row["prune_percent"]
        assert sweep.path / f"p{p:g}" / "pruned.pth" == work / row["checkpoint"]  # relative, like output.dir
        total_k = total_n = 0
        for kind in ("conv", "fc"):
            threshold, masks, k, n = expected_pruning(weights[kind], p)
            assert row["thresholds"][kind] == threshold, (p, kind)
            assert row["sparsity"][kind] == k / n, (p, kind)
            for name, mask in masks.items():
                layer = row["sparsity"]["layers"][name]
                assert layer["kind"] == kind and layer["numel"] == mask.size
                assert layer["zeros"] == int((~mask).sum()), name
            total_k, total_n = total_k + k, total_n + n
        assert row["sparsity"]["total"] == total_k / total_n
        assert set(row["sparsity"]["layers"]) == set(weights["conv"]) | set(weights["fc"])
        assert 0 <= row["top1"] <= row["top5"] <= 100
        # Fine-tuning held every zero: the sparsity after it is the sparsity before it.
        assert row["sparsity_finetuned"] == {k: v for k, v in row["sparsity"].items() if k != "layers"}


@pytest.mark.slow
def test_sweep_table_is_printed_and_saved(sweep: Run) -> None:
    assert sweep.path is not None
    results = json.loads((sweep.path / "results.json").read_text())
    md = (sweep.path / "results.md").read_text()
    rows = results["rows"]
    base = results["baseline"]["top1"]
    assert md.startswith("## runner_prune: resnet20, weight pruning, scope layer_type\n")
    expected = [
        "| ratio | Baseline | 0.3 | 0.6 |",
        f"| top1 (without fine-tune) | {base:.2f} | {rows[0]['top1']:.2f} | {rows[1]['top1']:.2f} |",
        f"| conv threshold | 0 | {rows[0]['thresholds']['conv']:.2e} | {rows[1]['thresholds']['conv']:.2e} |",
        f"| fc threshold | 0 | {rows[0]['thresholds']['fc']:.2e} | {rows[1]['thresholds']['fc']:.2e} |",
        f"| top1 (fine-tuned) | {base:.2f} | {rows[0]['top1_finetuned']:.2f} | {rows[1]['top1_finetuned']:.2f} |",
    ]
    table = "\n".join(expected[:1] + ["|---|---|---|---|"] + expected[1:])
    assert table in md and table in sweep.stdout
    assert "| **all conv** | conv |  | 30.0 | 60.0 |" in md
    for row in rows:
        assert f"Pruned {row['prune_percent']:g}: Top1 {row['top1']:.2f}" in sweep.stdout

    phases = [(m.get("phase"), m.get("prune_percent"), m.get("epoch")) for m in sweep.metrics()]
    assert phases == [("baseline", None, None), ("pruned", 0.3, None), (None, 0.3, 0), ("pruned", 0.6, None),
                      (None, 0.6, 0)]


@pytest.mark.slow
def test_pruned_checkpoints_load_back_with_masks_and_exactly_their_zeros(sweep: Run, baseline: Run,
                                                                          work: Path) -> None:
    from utils.data.datasets import build_datasets, default_mean_std
    from utils.data.loaders import build_loaders
    from utils.train.engine import evaluate

    assert sweep.path is not None and baseline.path is not None
    results = json.loads((sweep.path / "results.json").read_text())
    original = load(baseline.path / "best.pth")["state_dict"]
    weights = prunable(original)
    mean, std = default_mean_std("cifar10")
    _, test_loader = build_loaders(build_datasets("cifar10", str(work / "data"), mean=mean, std=std, train=False),
                                   batch_size=CIFAR_TEST, workers=0, seed=0)
    for row in results["rows"]:
        loaded = load_toolkit_checkpoint(sweep.path / f"p{row['prune_percent']:g}" / "pruned.pth",
                                         expect_arch="resnet20")
        assert loaded.masks is not None
        state = loaded.model.state_dict()
        assert_masked_zeros(state, loaded.masks)
        expected = {}
        for kind in ("conv", "fc"):
            expected.update(expected_pruning(weights[kind], row["prune_percent"])[1])
        assert set(loaded.masks) == set(expected)
        for name, mask in loaded.masks.items():
            np.testing.assert_array_equal(mask.numpy(), expected[name], err_msg=name)
        for key, tensor in original.items():  # pruning touched nothing but the pruned weights
            kept = loaded.masks.get(key, torch.ones_like(tensor, dtype=torch.bool))
            assert torch.equal(state[key][kept], tensor[kept]), key
        stats = evaluate(loaded.model, test_loader, torch.nn.CrossEntropyLoss(), torch.device("cpu"))
        assert stats["top1"] == row["top1"]  # the file is the model that the table reports


@pytest.mark.slow
def test_fine_tuning_keeps_pruned_weights_at_zero(sweep: Run) -> None:
    assert sweep.path is not None
    folder = sweep.path / "p0.6"
    assert {"pruned.pth", "last.pth", "best.pth"} <= {p.name for p in folder.iterdir()}
    pruned, tuned = load(folder / "pruned.pth"), load(folder / "last.pth")
    assert tuned["epoch"] == 1 and tuned["arch"] == pruned["arch"]
    assert tuned["masks"].keys() == pruned["masks"].keys()
    for name, mask in pruned["masks"].items():
        assert torch.equal(tuned["masks"][name], mask), name
    assert_masked_zeros(tuned["state_dict"], tuned["masks"])
    assert_trained_only_unmasked(pruned["state_dict"], tuned["state_dict"], tuned["masks"])


@pytest.mark.slow
def test_training_a_pruned_checkpoint_further_keeps_its_masks(work: Path, sweep: Run) -> None:
    """``trainer_exp.py`` with ``model.checkpoint`` = the fine-tuned pruned model: the masks come with the file."""
    assert sweep.path is not None
    start = sweep.path / "p0.6" / "last.pth"
    config = write_config(work / "continue.json", name="runner_continue_pruned", seed=1, data=cifar("data"),
                          model={"arch": "resnet20", "checkpoint": str(start)},
                          train={"epochs": 1, "lr": 0.01, "schedule": "constant"}, output={"dir": "runs"})
    run = succeeded(run_script(TRAINER, "--json", str(config), cwd=work))
    assert run.path is not None and len(epoch_lines(run.stdout)) == 1
    before, after = load(start), load(run.path / "last.pth")
    assert after["masks"] is not None and after["masks"].keys() == before["masks"].keys()
    for name, mask in before["masks"].items():
        assert torch.equal(after["masks"][name], mask), name
    assert_masked_zeros(after["state_dict"], after["masks"])
    assert_trained_only_unmasked(before["state_dict"], after["state_dict"], after["masks"])
    assert load_toolkit_checkpoint(run.path / "last.pth").masks is not None  # and it loads back as a pruned model


# ------------------------------------------------------------------------------------------------------ visdom


def read_traces(host: str, port: int, win: str, env: str) -> dict[str, tuple[list, list]]:
    import visdom

    client = visdom.Visdom(server=host, port=port, env=env, raise_exceptions=True, use_incoming_socket=False)
    window = json.loads(client.get_window_data(win, env))
    assert window["title"] == win
    return {trace["name"]: (trace["x"], trace["y"]) for trace in window["content"]["data"]}


@pytest.fixture
def visdom_server(tmp_path: Path) -> Iterator[Any]:
    with running_visdom_server(tmp_path / "visdom_env") as server:
        yield server


@pytest.mark.slow
def test_visdom_windows_hold_what_metrics_records(tmp_path: Path, work: Path, visdom_server: Any) -> None:
    config = write_config(tmp_path / "visdom.json", name="runner_visdom", seed=0, data=cifar(work / "data"),
                          model={"arch": "resnet20"}, train={"epochs": 2, "lr": 0.05, "schedule": "multistep",
                                                             "milestones": [1]},
                          output={"dir": str(tmp_path / "runs")})
    run = succeeded(run_script(TRAINER, "--json", str(config), "--visdom", "--set", f"visdom.port={visdom_server.port}",
                               "--set", f"visdom.host={visdom_server.host}", cwd=tmp_path))
    assert run.stderr == ""  # the server was there: no warning
    metrics = run.metrics()
    epochs = [float(m["epoch"]) for m in metrics]
    assert epochs == [0.0, 1.0]

    def line(key: str) -> tuple[list, list]:
        return epochs, [m[key] for m in metrics]

    env = "runner_visdom"  # visdom.env defaults to the experiment name
    host, port = visdom_server.host, visdom_server.port
    assert read_traces(host, port, "top1", env) == {"train": line("train_top1"), "test": line("test_top1")}
    assert read_traces(host, port, "loss", env) == {"train": line("train_loss"), "test": line("test_loss")}
    assert read_traces(host, port, "top5", env) == {"test": line("test_top5")}
    assert read_traces(host, port, "lr", env) == {"lr": line("lr")}
    assert [m["lr"] for m in metrics] == [0.05, 0.05 * 0.1]  # the milestone took effect


@pytest.mark.slow
def test_visdom_without_a_server_warns_once_and_trains(tmp_path: Path, work: Path) -> None:
    port = free_port()  # nothing listens there
    config = write_config(tmp_path / "novisdom.json", name="runner_no_visdom", seed=0, data=cifar(work / "data"),
                          model={"arch": "resnet20"}, train={"epochs": 2, "lr": 0.05},
                          visdom={"host": "http://127.0.0.1", "port": port}, output={"dir": str(tmp_path / "runs")})
    run = succeeded(run_script(TRAINER, "--json", str(config), "--visdom", cwd=tmp_path))
    [warning] = run.stderr.splitlines()
    assert f"visdom: cannot reach a server at http://127.0.0.1:{port}" in warning
    assert "metrics.jsonl" in warning
    assert run.path is not None and (run.path / "last.pth").is_file()
    assert len(run.metrics()) == 2 and len(epoch_lines(run.stdout)) == 2  # and no second warning at any epoch


# --------------------------------------------------------------------------------------------------- shared data


@pytest.mark.slow
def test_shared_akamaster_resnet56_sweep(shared, tmp_path: Path) -> None:
    """A published checkpoint through the pruner: its accuracy is reproduced, and pruning hurts as it should."""
    weights = shared("weights", "cifar10", "akamaster_resnet56-4bfd9763.th")
    root = shared("cifar10-lossless-subset")
    config = write_config(
        tmp_path / "akamaster.json", name="runner_akamaster56", seed=0,
        data={"name": "imagefolder", "root": str(root), "image_size": 32, "mean": [0.485, 0.456, 0.406],
              "std": [0.229, 0.224, 0.225], "batch_size": 256, "workers": 0},
        model={"arch": "resnet56", "shortcut": "A", "checkpoint": str(weights)},
        output={"dir": str(tmp_path / "runs")})
    run = succeeded(run_script(PRUNER, "--json", str(config), "--prune_percent", "0.3", "0.9", cwd=tmp_path))
    assert run.path is not None
    results = json.loads((run.path / "results.json").read_text())
    base = results["baseline"]["top1"]
    assert base == pytest.approx(92.72, abs=0.1)  # the data README's number: checkpoint, shortcut A, mean/std right
    mild, severe = results["rows"]
    assert (mild["prune_percent"], severe["prune_percent"]) == (0.3, 0.9)
    assert mild["top1"] > 90
    assert severe["top1"] < base - 30
    weights = prunable(load(weights)["state_dict"])  # akamaster's own keys ("module.", "linear"): rank tells kinds
    assert len(weights["conv"]) == 55 and len(weights["fc"]) == 1
    for row in (mild, severe):
        for kind in ("conv", "fc"):
            threshold, _, k, n = expected_pruning(weights[kind], row["prune_percent"])
            assert row["thresholds"][kind] == threshold and row["sparsity"][kind] == k / n, (row["prune_percent"], kind)
    assert "top1_finetuned" not in mild  # retrain.epochs defaults to 0: no fine-tuning
    assert f"| top1 (without fine-tune) | {base:.2f} | {mild['top1']:.2f} | {severe['top1']:.2f} |" in run.stdout
