"""Stopping and resuming: Ctrl-C, SIGTERM and kill -9 during training and fine-tuning lose nothing.

The end-to-end tests run the real scripts in subprocesses, read their step lines as they come and send the signal
in the middle of an epoch; the pieced-together run must end with exactly the weights, optimizer state and metrics of
the run that was never stopped (CPU, fixed seeds). The first stop uses 2 DataLoader workers where the reference run
uses none: the batches are the same either way (:mod:`utils.data.sampling`), and the test shows it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from test_data import write_cifar
from test_runner import PRUNER, TRAINER, cifar, load, run_script, snapshot, succeeded, without_time, write_config

from utils.app.cli import resume_command
from utils.core.rundir import RunDir
from utils.data.loaders import auto_workers
from utils.data.sampling import SeededAugmentation, SeededSampler

STOP_TIMEOUT_S = 300  # a hang guard: every run here takes seconds


# ------------------------------------------------------------------------------------------------- sampling


class Noisy(torch.utils.data.Dataset):
    """Item ``i`` is ``i`` plus a draw from torch's global RNG, as a random transform makes one."""

    def __len__(self) -> int:
        return 20

    def __getitem__(self, index: int) -> torch.Tensor:
        return index + torch.rand(())


def batches(workers: int, epoch: int, start: int = 0, seed: int = 3) -> list[torch.Tensor]:
    sampler = SeededSampler(20, seed)
    loader = torch.utils.data.DataLoader(SeededAugmentation(Noisy()), batch_size=4, sampler=sampler,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         generator=torch.Generator())  # as build_loaders: no base-seed draw
    out = []
    for e in range(epoch + 1):  # earlier epochs pass through the same (persistent) workers first
        sampler.set_epoch(e, start=start * 4 if e == epoch else 0)
        out = list(loader)
    return out


def test_batches_depend_on_seed_and_epoch_only() -> None:
    zero = batches(0, epoch=2)
    order = torch.cat(zero).floor().long().tolist()
    assert order != list(range(20)) and sorted(order) == list(range(20))  # shuffled, every item once
    two = batches(2, epoch=2)
    assert all(torch.equal(a, b) for a, b in zip(zero, two, strict=True))  # the worker count changes nothing
    state = torch.get_rng_state()
    assert all(torch.equal(a, b) for a, b in zip(zero[2:], batches(0, epoch=2, start=2), strict=True))
    assert torch.equal(torch.get_rng_state(), state)  # augmentation left the global RNG alone
    other_epoch, other_seed = batches(0, epoch=1), batches(0, epoch=2, seed=4)
    assert not torch.equal(torch.cat(zero), torch.cat(other_epoch))
    assert not torch.equal(torch.cat(zero), torch.cat(other_seed))


def test_sampler_skip_applies_to_one_pass_only() -> None:
    sampler = SeededSampler(10, 0)
    sampler.set_epoch(1, start=4)
    assert len(sampler) == 6
    rest, whole = list(sampler), list(sampler)
    assert len(whole) == 10 and rest == whole[4:]


@pytest.mark.parametrize(("argv", "expected"), [
    (["trainer_exp.py", "--json", "a b.json"], "python trainer_exp.py --json 'a b.json' --resume runs/x/last.pth"),
    (["trainer_exp.py", "--json", "a.json", "--resume", "old.pth", "--gpu", "0"],
     "python trainer_exp.py --json a.json --gpu 0 --resume runs/x/last.pth"),
    (["trainer_exp.py", "--resume=old.pth", "--json", "a.json"],
     "python trainer_exp.py --json a.json --resume runs/x/last.pth"),
])
def test_resume_command_replaces_or_adds_resume(argv: list[str], expected: str) -> None:
    assert resume_command(argv, Path("runs/x/last.pth")) == expected


# ------------------------------------------------------------------------------------------------- end to end


class Stopped:
    """A script run that received ``signum`` once ``when(line)`` matched a line of its output (with ``group``, its whole
    process group did, DataLoader workers included, as from ``timeout``, SLURM, systemd or Ctrl-C in a terminal)."""

    def __init__(self, command: list[str], cwd: Path, when: Any, signum: int, *, group: bool = False):
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                bufsize=1, start_new_session=group)
        watchdog = threading.Timer(STOP_TIMEOUT_S, proc.kill)
        watchdog.start()
        lines, sent = [], False
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if not sent and when(line):
                os.killpg(proc.pid, signum) if group else proc.send_signal(signum)
                sent = True
        self.stderr = proc.stderr.read()
        self.returncode = proc.wait()
        watchdog.cancel()
        self.stdout = "\n".join(lines)
        assert sent, f"the signal was never sent\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"

    def resume_argv(self) -> list[str]:
        """The command the run printed to resume it, to be run as printed (with this interpreter)."""
        line = self.stderr.strip().splitlines()[-1]
        assert line.startswith("resume with: python "), self.stderr
        return [sys.executable, *shlex.split(line.removeprefix("resume with: python "))]


def step_line(epoch: int, step: int, nth: int = 1) -> Any:
    """A predicate true on the ``nth`` time ``Epoch {epoch} step {step}:`` is printed."""
    seen = [0]

    def when(line: str) -> bool:
        if line.startswith(f"Epoch {epoch} step {step}:"):
            seen[0] += 1
        return seen[0] == nth

    return when


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("interrupt")
    write_cifar(folder / "data", per_batch=48, n_test=50)  # 240 training images: 30 steps of 8 per epoch
    return folder


def experiment(work: Path, name: str, *, data: dict[str, Any] | None = None, **extra: Any) -> Path:
    data = {**cifar("data"), "batch_size": 8, **(data or {})}
    sections = {"model": {"arch": "resnet20"}, "output": {"dir": "runs"}, **extra}
    return write_config(work / f"{name}.json", name=name, seed=1, print_freq=1, data=data, **sections)


TRAIN = {"epochs": 2, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine"}


def assert_same_training(whole: Path, pieced: Path) -> None:
    """Two run directories hold the same training: weights, buffers, optimizer, epoch records, best checkpoint."""
    a, b = load(whole / "last.pth"), load(pieced / "last.pth")
    assert a["epoch"] == b["epoch"] and "progress" not in b
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key
    for (i, sa), (j, sb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items(), strict=True):
        assert i == j and torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert [without_time(h) for h in a["history"]] == [without_time(h) for h in b["history"]]
    assert load(whole / "best.pth")["epoch"] == load(pieced / "best.pth")["epoch"]

    def records(folder: Path) -> list[dict[str, Any]]:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [without_time(r) for r in map(json.loads, lines) if r.get("phase") != "resumed"]

    assert records(whole) == records(pieced)


@pytest.fixture(scope="module")
def uninterrupted(work: Path) -> Path:
    run = succeeded(run_script(TRAINER, "--json", str(experiment(work, "train", train=TRAIN)), cwd=work))
    assert run.path is not None
    return run.path


@pytest.mark.slow
def test_ctrl_c_then_sigterm_then_resume_equals_an_uninterrupted_run(work: Path, uninterrupted: Path) -> None:
    config = experiment(work, "train", train=TRAIN)
    first = Stopped([sys.executable, str(TRAINER), "--json", str(config), "--set", "data.workers=2"], work,
                    step_line(0, 3), signal.SIGINT)
    assert first.returncode == 130, first.stderr
    run = work / "runs" / "train-2"
    saved = load(run / "last.pth")
    step = saved["progress"]["step"]
    assert saved["epoch"] == 0 and 3 <= step < 30  # stopped inside epoch 0, after the step it was in
    assert f"SIGINT: stopped at epoch 0, step {step}; saved runs/train-2/last.pth" in first.stderr
    assert "Traceback" not in first.stderr
    assert not (run / "best.pth").exists() and not (run / "metrics.jsonl").exists()  # no epoch completed
    command = first.resume_argv()
    assert command[1:] == [str(TRAINER), "--json", str(config), "--set", "data.workers=2", "--resume",
                           "runs/train-2/last.pth"]

    second = Stopped(command, work, step_line(1, 2), signal.SIGTERM)
    assert second.returncode == 143, second.stderr
    assert f"Resuming runs/train-2/last.pth at epoch 0, step {step} in" in second.stdout
    assert f"Epoch 0 step {step + 1}:" in second.stdout and f"Epoch 0 step {step}:" not in second.stdout
    assert load(run / "last.pth")["epoch"] == 1 and "SIGTERM: stopped at epoch 1, step" in second.stderr

    third = run_script(TRAINER, *second.resume_argv()[2:], cwd=work)
    succeeded(third)
    assert_same_training(uninterrupted, run)
    assert not list(run.glob(".*.tmp"))


@pytest.mark.slow
def test_kill_9_keeps_the_last_complete_checkpoint(work: Path, uninterrupted: Path) -> None:
    config = experiment(work, "train", train=TRAIN)
    runs_before = set((work / "runs").iterdir())
    killed = Stopped([sys.executable, str(TRAINER), "--json", str(config)], work, step_line(1, 5), signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    [run] = set((work / "runs").iterdir()) - runs_before
    saved = load(run / "last.pth")  # loads: the file is whole
    assert saved["epoch"] == 1 and "progress" not in saved
    succeeded(run_script(TRAINER, "--json", str(config), "--resume", str(run / "last.pth"), cwd=work))
    assert_same_training(uninterrupted, run)


@pytest.mark.slow
def test_signals_to_the_whole_group_stop_once_and_resume_to_the_uninterrupted_weights(work: Path,
                                                                                      uninterrupted: Path) -> None:
    """``timeout -s TERM``, SLURM and systemd signal every process of the job, and Ctrl-C in a terminal the whole
    foreground group: the DataLoader workers (``data.workers`` null: as many as the cores allow) get the signal too."""
    if auto_workers() == 0:
        pytest.skip("one CPU core: data.workers null means no DataLoader workers here")
    config = experiment(work, "group", data={"workers": None}, train=TRAIN)
    first = Stopped([sys.executable, str(TRAINER), "--json", str(config)], work, step_line(0, 3), signal.SIGINT,
                    group=True)
    assert first.returncode == 130, first.stderr
    assert first.stderr.count("SIGINT: stopping after the current step") == 1, first.stderr  # not once per worker
    assert "Traceback" not in first.stderr and "DataLoader worker" not in first.stderr
    run = work / "runs" / "group"
    assert load(run / "last.pth")["progress"]["step"] >= 3

    # After the last step of epoch 0 comes its evaluation, on the test loader's workers.
    second = Stopped(first.resume_argv(), work, step_line(0, 30), signal.SIGTERM, group=True)
    assert second.returncode == 143, second.stderr
    assert "SIGTERM: stopped at" in second.stderr and f"saved {run.resolve() / 'last.pth'}" in second.stderr
    assert "Traceback" not in second.stderr and "DataLoader worker" not in second.stderr

    succeeded(run_script(TRAINER, *second.resume_argv()[2:], cwd=work))
    assert_same_training(uninterrupted, run)


@pytest.mark.slow
def test_a_second_resume_of_a_running_checkpoint_is_refused(work: Path) -> None:
    config = experiment(work, "twice", train=TRAIN)
    succeeded(run_script(TRAINER, "--json", str(config), "--set", "train.epochs=1", cwd=work))
    run = (work / "runs" / "twice").resolve()
    command = [sys.executable, str(TRAINER), "--json", str(config), "--resume", str(run / "last.pth")]
    first = subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    watchdog = threading.Timer(STOP_TIMEOUT_S, first.kill)
    watchdog.start()
    assert first.stdout is not None
    for line in first.stdout:
        if line.startswith("Resuming "):
            first.send_signal(signal.SIGSTOP)  # holds the run folder, stopped: the second run cannot come too late
            break
    before = snapshot(run)
    try:
        second = run_script(TRAINER, *command[2:], cwd=work)
        after = snapshot(run)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate()
    watchdog.cancel()
    assert first.returncode == 0, err
    assert second.returncode == 2, second.stderr
    assert second.stderr.startswith(f"error: the run folder {run} is in use by another run (pid {first.pid} on "
                                    f"{socket.gethostname()}, since "), second.stderr
    assert len(second.stderr.splitlines()) == 1
    assert after == before  # the second run wrote nothing
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]  # each epoch once
    assert not (run / ".lock").exists()  # removed by the run that held it, at its end


def test_a_resume_removes_what_a_killed_save_left_and_nothing_else(tmp_path: Path) -> None:
    from models import get_model
    from utils.checkpoint.format import TrainingState, make_checkpoint
    from utils.core.files import atomic_torch_save

    write_cifar(tmp_path / "data", per_batch=8, n_test=10)
    run = tmp_path / "runs" / "done"
    model = get_model("resnet20", num_classes=10)
    atomic_torch_save(make_checkpoint(model=model, arch={"name": "resnet20", "options": {"num_classes": 10}},
                                      config={}, training=TrainingState(epoch=TRAIN["epochs"])), run / "last.pth")
    stale, writing = run / ".best.pth.k3j_9x0a.tmp", run / ".last.pth.w1r1t1ng.tmp"
    kept = [writing, run / ".notes.tmp", run / "sub" / ".last.pth.s0bf0ld3.tmp"]  # not ours, or being written
    for path in [stale, *kept]:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half a checkpoint")
    config = experiment(tmp_path, "done", train=TRAIN)
    with open(writing, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as atomic_write_bytes holds the file it writes
        result = succeeded(run_script(TRAINER, "--json", str(config), "--resume", str(run / "last.pth"),
                                      cwd=tmp_path))
    assert f"Removed 1 temporary file(s) that an interrupted save left in {run}: {stale.name}" in result.stdout
    assert not stale.exists() and all(path.exists() for path in kept)
    assert not (run / ".lock").exists()


@pytest.mark.slow
def test_stopped_fine_tuning_resumes_the_pruning_run(work: Path) -> None:
    from models import get_model
    from utils.checkpoint.format import make_checkpoint
    from utils.core.files import atomic_torch_save

    weights = work / "trained.pth"
    if not weights.exists():
        model = get_model("resnet20", num_classes=10)
        atomic_torch_save(make_checkpoint(model=model, arch={"name": "resnet20", "options": {"num_classes": 10}},
                                          config={}), weights)
    retrain = {"epochs": 2, "lr": 0.01, "momentum": 0.9, "schedule": "cosine"}
    config = experiment(work, "sweep", model={"arch": "resnet20", "checkpoint": "trained.pth"},
                        prune={"method": "weight", "percent": [0.3, 0.6]}, retrain=retrain)
    whole = succeeded(run_script(PRUNER, "--json", str(config), cwd=work)).path
    assert whole is not None

    stopped = Stopped([sys.executable, str(PRUNER), "--json", str(config)], work, step_line(0, 4, nth=2),
                      signal.SIGINT)  # in the second ratio's fine-tuning
    assert stopped.returncode == 130, stopped.stderr
    run = work / "runs" / "sweep-2"
    assert f"saved {Path('runs/sweep-2/p0.6/last.pth')}" in stopped.stderr
    assert not (run / "results.json").exists()
    command = stopped.resume_argv()
    assert command[-2:] == ["--resume", "runs/sweep-2"]
    before = snapshot(run / "p0.3")

    with RunDir(run).hold(subfolders=True):  # as a pruning run still going on there would
        refused = run_script(PRUNER, *command[2:], cwd=work)
    assert refused.returncode == 2 and refused.stderr.startswith(
        f"error: the run folder {Path('runs/sweep-2')} is in use by another run (pid {os.getpid()} on"), refused.stderr
    assert snapshot(run / "p0.3") == before
    stale = [run / "p0.3" / ".best.pth.ab12cd34.tmp", run / "p0.6" / ".last.pth.ef56gh78.tmp"]  # killed saves
    for path in stale:
        path.write_bytes(b"half a checkpoint")

    resumed = succeeded(run_script(PRUNER, *command[2:], cwd=work))
    assert "Removed 2 temporary file(s) that an interrupted save left in runs/sweep-2" in resumed.stdout
    assert not any(path.exists() for path in stale)
    assert "Resuming runs/sweep-2/p0.3/last.pth at epoch 2" in resumed.stdout  # complete: nothing retrained
    assert "Resuming runs/sweep-2/p0.6/last.pth at epoch 0, step" in resumed.stdout
    assert snapshot(run / "p0.3")["last.pth"] == before["last.pth"]
    for ratio in ("p0.3", "p0.6"):
        a, b = load(whole / ratio / "last.pth"), load(run / ratio / "last.pth")
        for key, tensor in a["state_dict"].items():
            assert torch.equal(tensor, b["state_dict"][key]), (ratio, key)
    rows = [json.loads((path / "results.json").read_text())["rows"] for path in (whole, run)]
    for a_row, b_row in zip(*rows, strict=True):
        for key in ("prune_percent", "top1", "thresholds", "top1_finetuned", "best_top1_finetuned",
                    "average_top1_finetuned", "sparsity_finetuned"):
            assert a_row[key] == b_row[key], key


def test_resume_of_a_pruning_run_with_other_settings_is_refused(work: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "earlier"
    run.mkdir(parents=True)
    saved = {"seed": 1, "data": {"name": "digits"}, "model": {"arch": "resnet20"}, "prune": {"percent": [0.5]}}
    (run / "config.json").write_text(json.dumps(saved))
    config = write_config(tmp_path / "x.json", name="x", seed=1, data={"name": "digits"},
                          model={"arch": "resnet20", "checkpoint": "w.pth"}, prune={"percent": [0.5]})
    before = snapshot(tmp_path)
    result = run_script(PRUNER, "--json", str(config), "--resume", str(run), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(f"error: --resume {run}: data.root was null")
    assert snapshot(tmp_path) == before
