"""Several processes, one run (``torchrun``; :mod:`utils.core.distributed`), on CPUs with the gloo backend.

* The split: every step, the ranks' shares are exactly the single process's batch (samplers, device loader, test
  shards), and the drawn augmentations go with their images.
* The maths: 2 processes running :func:`utils.train.fit.fit` on a float64 model, with ``sync_bn``, end with the
  weights, BatchNorm statistics and metrics of 1 process with the same global batch (to 1e-9: float64, so the only
  difference is the order of the sums). In float32 the same runs agree only to the rounding that this network, from
  random initialisation, amplifies step after step; float64 shows that nothing else differs.
* The plumbing, through ``torchrun`` and the real scripts: rank 0 alone writes, metrics are those of the whole
  data, ``--resume`` and a SIGTERM in the middle of an epoch continue the same run, and the pruner retrains.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from test_data import write_cifar
from test_interrupt import Stopped, step_line
from test_runner import PRUNER, TRAINER, Run, cifar, load, succeeded, write_config

from utils.data.datasets import build_datasets, default_mean_std
from utils.data.device import DeviceLoader, LoaderSpec
from utils.data.loaders import build_loaders
from utils.data.sampling import SeededSampler, rank_positions

RUN_TIMEOUT_S = 600  # a hang guard: a rank waiting for another that died would otherwise wait 30 minutes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------------- the split


@pytest.mark.parametrize(("count", "batch", "world"), [(160, 32, 2), (150, 32, 2), (101, 12, 3), (7, 4, 4)])
def test_ranks_share_every_step_between_them(count: int, batch: int, world: int) -> None:
    shares = [rank_positions(count, batch, r, world) for r in range(world)]
    per = batch // world
    steps = [[s[k:k + per] for k in range(0, len(s), per)] for s in shares]
    assert len({len(st) for st in steps}) == 1  # every rank takes the same number of steps
    kept = count - (count % batch) % world  # the last step cut to a multiple of the ranks
    for k, step in enumerate(zip(*steps, strict=True)):
        together = torch.cat(step)
        first = k * batch
        assert torch.equal(together, torch.arange(first, first + len(together)))  # rank order = batch order
        assert len({len(part) for part in step}) == 1
    assert sum(len(s) for s in shares) == kept


def test_sharded_sampler_yields_the_single_process_batches_with_their_seeds() -> None:
    single = SeededSampler(150, seed=5)
    ranks = [SeededSampler(150, seed=5, global_batch=32, rank=r, world=2) for r in range(2)]
    for sampler in (single, *ranks):
        sampler.set_epoch(3, start=64)  # resumed after 2 steps of the global batch
    lengths = [len(s) for s in ranks]  # of the next pass, which starts at 64
    whole = list(single)  # 86 positions left: steps of 32, 32 and 22
    parts = [list(s) for s in ranks]
    assert [len(p) for p in parts] == lengths == [43, 43]
    for step, (lo, hi) in enumerate([(0, 16), (16, 32), (32, 43)]):  # each rank's batch: its half of the step's
        assert parts[0][lo:hi] + parts[1][lo:hi] == whole[32 * step:32 * step + 2 * (hi - lo)]
    with pytest.raises(ValueError, match="divisible"):
        SeededSampler(150, seed=5, global_batch=33, rank=0, world=2)


def test_device_loader_ranks_crop_and_flip_what_the_single_loader_does() -> None:
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(50)
    common = {"batch_size": 10, "mean": [0.5] * 3, "std": [0.25] * 3, "train": True, "seed": 2}
    single = DeviceLoader(images, labels, LoaderSpec(**common))
    ranks = [DeviceLoader(images, labels, LoaderSpec(**common, rank=r, world=2)) for r in range(2)]
    for loader in (single, *ranks):
        loader.set_epoch(1)
    whole = list(single)
    parts = [list(r) for r in ranks]
    assert len(ranks[0]) == len(ranks[1]) == len(whole) == 5
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts, strict=True):
        assert torch.equal(torch.cat([y0, y1]), y) and torch.equal(torch.cat([x0, x1]), x)


def test_test_set_is_split_into_contiguous_parts(tmp_path: Path) -> None:
    write_cifar(tmp_path, per_batch=2, n_test=11)
    mean, std = default_mean_std("cifar10")
    bundle = build_datasets("cifar10", str(tmp_path), mean=mean, std=std, train=False)
    whole = torch.cat([y for _, y in build_loaders(bundle, batch_size=4, workers=0, seed=0)[1]])
    parts = [torch.cat([y for _, y in build_loaders(bundle, batch_size=4, workers=0, seed=0, rank=r, world=3)[1]])
             for r in range(3)]
    assert [len(p) for p in parts] == [3, 4, 4] and torch.equal(torch.cat(parts), whole)


# ----------------------------------------------------------------------------------------------------- the maths


class Float64:
    """A loader's batches in float64 (with its sampler, so the training loop can set the epoch)."""

    def __init__(self, loader: Any):
        self.loader, self.sampler, self.batch_size = loader, loader.sampler, loader.batch_size
        self.generator = getattr(loader, "generator", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        return ((x.double(), y) for x, y in self.loader)


def join_as_rank(rank: int, world: int, port: int) -> None:
    """Make this spawned process rank ``rank`` of ``world`` (the environment torchrun would give it)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)


def rank_device_and_loaders(folder: str, test_batch_size: int) -> tuple[torch.device, Any, Any]:
    """This rank's device (joining the group) and its share of the tiny CIFAR-10 in ``folder``, 16 images a step."""
    from utils.app.setup import select_device
    from utils.core import distributed

    device = select_device(None)
    mean, std = default_mean_std("cifar10")
    bundle = build_datasets("cifar10", folder, mean=mean, std=std, train=True)
    train, test = build_loaders(bundle, batch_size=16, workers=0, seed=4, test_batch_size=test_batch_size,
                                rank=distributed.rank(), world=distributed.world_size())
    return device, train, test


def fit_float64(rank: int, world: int, port: int, folder: str, out: str) -> None:
    """One rank of a float64 training run with ``fit`` (``world`` 1: a plain single process)."""
    join_as_rank(rank, world, port)
    from models import get_model
    from utils.config.schema import OptimConfig
    from utils.core import distributed
    from utils.core.rundir import RunDir
    from utils.train.fit import Loaders, RunTarget, fit

    device, train, test = rank_device_and_loaders(folder, test_batch_size=7)
    torch.manual_seed(0)
    model = get_model("resnet20", num_classes=10).double()
    optim = OptimConfig(epochs=2, lr=0.02, momentum=0.9, weight_decay=5e-4, schedule="cosine", sync_bn=True)
    run = RunDir.create(out, "run")
    result = fit(model, loaders=Loaders(train=Float64(train), test=Float64(test)), optim=optim, device=device,
                 target=RunTarget(run=run, arch={"name": "resnet20", "options": {"num_classes": 10}}, config={},
                                  seed=4))
    if distributed.is_main():
        torch.save({"state": model.state_dict(), "history": result.history}, Path(out) / f"result{world}.pt")
    distributed.stop()


@pytest.mark.slow
def test_two_processes_compute_what_one_does_with_the_same_global_batch(tmp_path: Path) -> None:
    write_cifar(tmp_path / "data", per_batch=16, n_test=20)  # 80 training images: 5 steps of 16 per epoch
    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    fit_float64(0, 1, free_port(), data, out)
    torch.multiprocessing.spawn(fit_float64, args=(2, free_port(), data, out), nprocs=2, join=True)
    one, two = torch.load(Path(out) / "result1.pt"), torch.load(Path(out) / "result2.pt")
    for key, value in one["state"].items():
        assert torch.allclose(value.double(), two["state"][key].double(), rtol=1e-9, atol=1e-11), key
    torch.manual_seed(0)
    from models import get_model

    untrained = get_model("resnet20", num_classes=10).double().state_dict()
    assert (one["state"]["conv1.weight"] - untrained["conv1.weight"]).abs().max() > 1e-3  # it did train
    for a, b in zip(one["history"], two["history"], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key != "time":
                assert a[key] == pytest.approx(b[key], rel=1e-9), key
    assert sorted(p.name for p in (Path(out) / "run-2").iterdir()) == ["best.pth", "last.pth", "metrics.jsonl"]
    assert len((Path(out) / "run-2" / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0's lines only


def rng_streams(rank: int, world: int, port: int, out: str) -> None:
    """One rank: draw after :func:`seed_ranks`, gather every rank's generator state, draw again, restore, redraw."""
    join_as_rank(rank, world, port)
    from utils.checkpoint.format import capture_rng_state, restore_rng_state
    from utils.core import distributed

    distributed.start(None)
    distributed.seed_ranks(3)
    first = torch.rand(4)
    states = distributed.gather_object(capture_rng_state())
    mine = capture_rng_state()
    second = torch.rand(4)
    restore_rng_state(mine)
    again = torch.rand(4)
    draws = distributed.gather_object({"first": first, "second": second, "again": again})
    if distributed.is_main():
        torch.save({"draws": draws, "states": [s["torch"] for s in states]}, Path(out) / "rng.pt")
    distributed.stop()


def test_each_rank_draws_its_own_random_numbers_and_the_checkpoint_keeps_them_all(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(rng_streams, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    saved = torch.load(tmp_path / "rng.pt")
    draws, states = saved["draws"], saved["states"]
    assert not torch.equal(draws[0]["first"], draws[1]["first"])  # dropout would drop other units on each rank
    assert not torch.equal(states[0], states[1])
    for rank in (0, 1):
        assert torch.equal(draws[rank]["second"], draws[rank]["again"])
        seeds = torch.randint(2**62, (2,), generator=torch.Generator().manual_seed(3))  # a function of the seed
        torch.manual_seed(int(seeds[rank]))
        assert torch.equal(torch.rand(4), draws[rank]["first"])


def fit_dropout(rank: int, world: int, port: int, folder: str, out: str) -> None:
    """One rank: a small net with dropout trained 2 epochs, and again 1 epoch + a resume from its ``last.pth``."""
    join_as_rank(rank, world, port)
    from torch import nn

    from utils.checkpoint.load import load_checkpoint
    from utils.config.schema import OptimConfig
    from utils.core import distributed
    from utils.core.rundir import RunDir
    from utils.train.fit import Loaders, RunTarget, fit

    device, train, test = rank_device_and_loaders(folder, test_batch_size=10)

    def train_for(epochs: int, name: str, resume: dict[str, Any] | None = None) -> Path:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                              nn.Dropout(0.5), nn.Linear(128, 10))
        if resume is not None:
            model.load_state_dict(resume["state_dict"])
        run = RunDir(Path(out) / name)
        run.path.mkdir(parents=True, exist_ok=True)
        optim = OptimConfig(epochs=epochs, lr=0.05, momentum=0.9, schedule="constant")
        fit(model, loaders=Loaders(train=train, test=test), optim=optim, device=device,
            target=RunTarget(run=run, arch={}, config={}, seed=4), resume=resume)
        distributed.barrier()
        return run.path / "last.pth"

    train_for(2, "whole")
    train_for(2, "part", resume=load_checkpoint(train_for(1, "part")))
    distributed.stop()


@pytest.mark.slow
def test_dropout_run_resumed_under_torchrun_ends_as_the_uninterrupted_one(tmp_path: Path) -> None:
    write_cifar(tmp_path / "data", per_batch=16, n_test=20)
    out = tmp_path / "out"
    torch.multiprocessing.spawn(fit_dropout, args=(2, free_port(), str(tmp_path / "data"), str(out)), nprocs=2,
                                join=True)
    whole, part = load(out / "whole" / "last.pth"), load(out / "part" / "last.pth")
    assert len(whole["rng_ranks"]) == 2 and whole["epoch"] == part["epoch"] == 2
    for key, tensor in whole["state_dict"].items():
        assert torch.equal(tensor, part["state_dict"][key]), key


# ---------------------------------------------------------------------------------------------------- torchrun


def torchrun(script: Path, *args: str, cwd: Path, nproc: int = 2) -> Run:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={free_port()}", str(script), *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                            check=False)
    found = [line.removeprefix("Run directory: ") for line in result.stdout.splitlines()
             if line.startswith("Run directory: ")]
    return Run(result.returncode, result.stdout, result.stderr, cwd / found[0] if found else None)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("distributed")
    write_cifar(folder / "data", per_batch=32, n_test=40)  # 160 training images: 5 steps of 32 per epoch
    return folder


TRAIN = {"epochs": 2, "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine", "sync_bn": True}


def experiment(work: Path, name: str, **extra: Any) -> Path:
    sections = {"model": {"arch": "resnet20"}, "output": {"dir": "runs"}, "train": TRAIN, **extra}
    return write_config(work / f"{name}.json", name=name, seed=1, print_freq=1, data=cifar("data"), **sections)


@pytest.fixture(scope="module")
def two_epochs(work: Path) -> Run:
    return succeeded(torchrun(TRAINER, "--json", str(experiment(work, "ddp")), cwd=work))


@pytest.mark.slow
def test_torchrun_trains_with_rank_0_alone_writing_and_printing(work: Path, two_epochs: Run) -> None:
    run = two_epochs
    assert run.path is not None and run.path.name == "ddp"
    assert sorted(p.name for p in run.path.iterdir()) == ["best.pth", "config.json", "last.pth", "metrics.jsonl"]
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["ddp"]  # one run directory, not one per rank
    assert run.stdout.count("Run directory:") == 1 and run.stdout.count("Epoch 1.") == 1
    records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    for r in records:  # counts over all 160 training and 40 test images, not one rank's half
        assert (r["train_top1"] * 160 / 100) == pytest.approx(round(r["train_top1"] * 1.6), abs=1e-6)
        assert (r["test_top1"] * 40 / 100) == pytest.approx(round(r["test_top1"] * 0.4), abs=1e-6)
    saved = load(run.path / "last.pth")
    assert saved["epoch"] == 2 and all("SyncBatchNorm" not in k for k in saved["state_dict"])
    assert "_orig_mod" not in "".join(saved["state_dict"]) and "module." not in "".join(saved["state_dict"])


@pytest.mark.slow
def test_torchrun_resume_continues_the_same_run(work: Path, two_epochs: Run) -> None:
    first = succeeded(torchrun(TRAINER, "--json", str(experiment(work, "ddp_half")), "--set", "train.epochs=1",
                               cwd=work))
    assert first.path is not None
    resumed = succeeded(torchrun(TRAINER, "--json", str(experiment(work, "ddp_half")), "--resume",
                                 str(first.path / "last.pth"), cwd=work))
    assert "Resuming" in resumed.stdout
    assert_same_weights(two_epochs.path, first.path)


def assert_same_weights(a: Path | None, b: Path | None) -> None:
    assert a is not None and b is not None
    sa, sb = load(a / "last.pth"), load(b / "last.pth")
    assert sa["epoch"] == sb["epoch"]
    for key, tensor in sa["state_dict"].items():
        assert torch.equal(tensor, sb["state_dict"][key]), key
    ha = [{k: v for k, v in h.items() if k != "time"} for h in sa["history"]]
    hb = [{k: v for k, v in h.items() if k != "time"} for h in sb["history"]]
    assert ha == hb


@pytest.mark.slow
def test_sigterm_stops_every_rank_at_the_same_step_and_resume_finishes_the_run(
        work: Path, two_epochs: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    config = experiment(work, "ddp_stop")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               str(TRAINER), "--json", str(config)]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    stopped = Stopped(command, work, step_line(1, 2), signal.SIGTERM)
    run = work / "runs" / "ddp_stop"
    saved = load(run / "last.pth")
    assert saved["epoch"] == 1 and 2 <= saved["progress"]["step"] < 5, stopped.stderr
    line = next(x for x in stopped.stderr.splitlines() if x.startswith("resume with: "))
    assert stopped.stderr.count("resume with: ") == 1  # rank 0 says it once
    resume = shlex.split(line.removeprefix("resume with: "))
    assert resume[:2] == ["torchrun", "--nproc_per_node=2"]
    finished = torchrun(Path(resume[2]), *resume[3:], cwd=work)
    succeeded(finished)
    assert_same_weights(two_epochs.path, run)


@pytest.mark.slow
def test_torchrun_pruner_retrains_and_writes_one_result(work: Path, two_epochs: Run) -> None:
    assert two_epochs.path is not None
    config = write_config(work / "prune.json", name="ddp_prune", seed=1, data=cifar("data"),
                          model={"arch": "resnet20", "checkpoint": str(two_epochs.path / "best.pth")},
                          prune={"method": "weight", "percent": [0.5]}, output={"dir": "runs"},
                          retrain={"epochs": 1, "lr": 0.01, "sync_bn": True})
    run = succeeded(torchrun(PRUNER, "--json", str(config), cwd=work))
    assert run.path is not None
    results = json.loads((run.path / "results.json").read_text())
    assert [row["prune_percent"] for row in results["rows"]] == [0.5]
    assert run.stdout.count("Run directory:") == 1
    saved = load(run.path / "p0.5" / "last.pth")
    assert saved["epoch"] == 1
    for name, mask in saved["masks"].items():  # retrained with the pruned weights held at zero
        assert bool((saved["state_dict"][name][~mask] == 0).all()), name


def test_batch_that_does_not_split_is_one_clear_error(work: Path) -> None:
    run = torchrun(TRAINER, "--json", str(experiment(work, "odd")), "--set", "data.batch_size=33", cwd=work)
    assert run.returncode != 0
    assert "error: data.batch_size 33 does not split evenly over the 2 processes" in run.stderr
    assert not (work / "runs" / "odd").exists()
