"""The epoch loop shared by ``trainer_exp.py`` and fine-tuning in ``pruner_exp.py``.

It owns the optimizer and LR schedule, prints one line per epoch as the research code did, appends
``metrics.jsonl``, plots to visdom and writes ``last.pth`` / ``best.pth`` atomically after every epoch, so
an interrupted run resumes exactly (model, optimizer, scheduler, epoch and RNG state).
"""

from __future__ import annotations

import signal
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pruning.masks import MaskKeeper
from utils.checkpoint.format import TrainingState, capture_rng_state, make_checkpoint, restore_rng_state
from utils.config.schema import OptimConfig
from utils.core import distributed
from utils.core.files import atomic_write_bytes, checkpoint_bytes
from utils.core.metrics import Meter
from utils.core.rundir import RunDir
from utils.data.sampling import epoch_seed
from utils.train.engine import StepOptions, evaluate, train_one_epoch
from utils.train.interrupt import GracefulStop, RunInterrupted
from utils.train.losses import Teacher, training_loss

PLOTTED = ("lr", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5")  # per-epoch visdom lines
AVERAGE_OVER_LAST = 5  # epochs whose test top-1 is averaged in the closing summary, as the seed reported


def build_optimizer(model: nn.Module, optim: OptimConfig) -> tuple[torch.optim.Optimizer, Any]:
    """SGD with the configured momentum/weight decay and its per-epoch LR schedule."""
    optimizer = torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum,
                                weight_decay=optim.weight_decay, nesterov=optim.nesterov and optim.momentum > 0)
    return optimizer, build_scheduler(optimizer, optim)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig) -> Any:
    """The per-epoch LR schedule ``optim`` describes, starting at epoch 0."""
    if optim.schedule == "multistep":
        scheduler: Any = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(optim.milestones),
                                                              gamma=optim.gamma)
    elif optim.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(optim.epochs, 1))
    else:
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return scheduler


def resume_schedule(optimizer: torch.optim.Optimizer, optim: OptimConfig, epoch: int) -> Any:
    """The experiment file's hyperparameters and LR schedule, advanced to ``epoch``, on a restored optimizer.

    Replayed rather than loaded from the checkpoint: the saved optimizer and scheduler states carry the settings of
    the file the run *started* with, so a run extended on resume (``train.epochs`` 1 -> 2 under ``cosine``, whose
    ``T_max`` is the epoch count) would go on at the old schedule's end (lr 0), not as the file says. Replaying the
    same file's schedule repeats the same float operations, so an interrupted run still resumes bit for bit.
    """
    for group in optimizer.param_groups:  # load_state_dict brought the saved values (momentum buffers stay)
        group.update(lr=optim.lr, initial_lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                     nesterov=optim.nesterov and optim.momentum > 0)
    scheduler = build_scheduler(optimizer, optim)
    with warnings.catch_warnings():  # no optimizer.step() yet: the steps being replayed happened before the save
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        for _ in range(epoch):
            scheduler.step()
    return scheduler


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_settings(amp: str | None, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """The autocast dtype ``train.amp`` names, and a gradient scaler for float16 (whose small range would flush
    small gradients to zero without one; bfloat16 has float32's range and needs none)."""
    if amp is None:
        return None, None
    return AMP_DTYPES[amp], torch.amp.GradScaler(device.type) if amp == "fp16" else None


def format_epoch_line(epoch: int, train: dict[str, float], test: dict[str, float], seconds: float) -> str:
    """``Epoch N. [Train] Top1: .., Top5: .., Loss: ... [Test] ... Time: hh:mm:ss`` (the seed's format)."""
    s = round(seconds)
    return (f"Epoch {epoch}. [Train] Top1: {train['top1']:.4f}, Top5: {train['top5']:.4f}, Loss: {train['loss']:.4f}. "
            f"[Test] Top1: {test['top1']:.4f}, Top5: {test['top5']:.4f}, Loss: {test['loss']:.4f}. "
            f"Time: {s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}")


def resume_point(path: Any, checkpoint: dict[str, Any]) -> str:
    """``Resuming PATH at epoch E[, step S]``: where a run picks up from ``checkpoint`` (read from ``path``)."""
    step = (checkpoint.get("progress") or {}).get("step", 0)
    return f"Resuming {path} at epoch {checkpoint.get('epoch', 0)}" + (f", step {step}" if step else "")


def start_epoch_order(loader: Any, seed: int, epoch: int, start_step: int = 0) -> None:
    """Set the batches of ``epoch`` from (seed, epoch) alone (see :mod:`utils.data.sampling`), skipping the first
    ``start_step`` batches when a run resumes inside the epoch, so a resumed run draws exactly the batches the
    uninterrupted run would have."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):  # positions count over all ranks: a step takes the global batch
        per_step = getattr(sampler, "global_batch", None) or loader.batch_size
        sampler.set_epoch(epoch, start=start_step * per_step)
    elif start_step:
        raise ValueError("resuming inside an epoch needs a loader whose sampler has set_epoch(epoch, start)")
    generator = getattr(loader, "generator", None)
    if generator is not None:  # the workers' base seed
        generator.manual_seed(epoch_seed(seed, epoch))


@dataclass
class FitResult:
    epochs_run: int  # by this call; history also holds the epochs of the run it resumed
    best_top1: float
    history: list[dict[str, Any]] = field(default_factory=list)
    masks: dict[str, torch.Tensor] | None = None  # held at the end (a gradual schedule changes them on the way)

    @property
    def last(self) -> dict[str, float]:
        """Test loss, top-1 and top-5 of the last epoch."""
        if not self.history:
            return {}
        return {k: self.history[-1][f"test_{k}"] for k in ("loss", "top1", "top5")}

    @property
    def average_top1(self) -> float:
        tail = [h["test_top1"] for h in self.history[-AVERAGE_OVER_LAST:]]
        return sum(tail) / len(tail) if tail else float("nan")


# on_step(optimizer steps so far, masks held now) -> masks to hold from now on, or None (see ScheduleHooks)
StepHook = Callable[[int, dict[str, torch.Tensor] | None], Mapping[str, torch.Tensor] | None]


@dataclass(frozen=True)
class Loaders:
    """The batches :func:`fit` trains on (``train``, whose sampler sets each epoch's order) and tests on, and what
    else labels the training batches: a ``teacher`` (:class:`~utils.train.losses.Teacher`, for distillation) whose
    soft targets the loss mixes with the labels, or None."""

    train: Any
    test: Any
    teacher: Teacher | None = None


@dataclass(frozen=True)
class RunTarget:
    """Where the results of :func:`fit` go, and what they say about the run.

    Checkpoints (``last.pth``, ``best.pth``) go to ``run``, each holding ``arch`` and ``config``; metrics go to
    ``metrics_run`` (default: ``run``), so a sweep keeps one ``metrics.jsonl``, each record starting with
    ``extra_record``. ``seed`` sets the data order and the ranks' RNG streams. ``print_freq``: a progress line every
    that many steps (0: none); ``visdom``: a logger the epochs are plotted on, or None.
    """

    run: RunDir
    arch: dict[str, Any]
    config: dict[str, Any]
    seed: int
    metrics_run: RunDir | None = None
    extra_record: dict[str, Any] | None = None
    print_freq: int = 0
    visdom: Any = None


@dataclass(frozen=True)
class ScheduleHooks:
    """What a pruning schedule (:mod:`pruning.schedule`) asks of :func:`fit`; the default asks nothing.

    ``on_step(step, masks)`` is called after every optimizer step with the number of steps this training has taken
    (over all its epochs, from 1; a function of the position alone, so a resumed run calls it with the numbers the
    uninterrupted run would have) and the masks held now; the masks it returns are held from then on (and saved in
    the checkpoints), None keeps them. ``epoch_offset``: the data order of epoch ``e`` is that of epoch
    ``e + epoch_offset`` (the rounds of an iterative schedule continue one stream of epochs, so they see the batches
    one retraining of the same total length sees). ``best_after``: epochs before it never become ``best.pth`` (a
    gradual schedule has not reached its final sparsity there).
    """

    on_step: StepHook | None = None
    epoch_offset: int = 0
    best_after: int = 0


def fit(model: nn.Module, *, loaders: Loaders, optim: OptimConfig, device: torch.device, target: RunTarget,
        masks: dict[str, torch.Tensor] | None = None, resume: dict[str, Any] | None = None,
        schedule: ScheduleHooks | None = None) -> FitResult:
    """Train ``model`` for ``optim.epochs`` epochs (continuing from ``resume``, a loaded checkpoint, if given).

    With ``masks`` the pruned weights are held at exactly zero through every optimizer step. Checkpoints, metrics
    and plots go where ``target`` (:class:`RunTarget`) says; ``schedule`` (:class:`ScheduleHooks`) lets a pruning
    schedule change the masks as training goes. The training loss is cross-entropy with what ``optim.bn_l1`` and
    ``loaders.teacher`` add to it (:func:`utils.train.losses.training_loss`; ``train_loss`` in the metrics is that
    loss); the test loss is cross-entropy alone.

    Speed (``optim``'s ``amp``, ``channels_last``, ``compile``): the weights are converted to channels-last in place;
    the training steps run through ``torch.compile`` of the model; evaluation and checkpoints use ``model`` itself.
    Under torchrun (:mod:`utils.core.distributed`) the steps go through DistributedDataParallel, with ``sync_bn`` over
    the global batch; only rank 0 writes.

    The first SIGINT/SIGTERM stops training after the current step: ``last.pth`` then holds the run in the middle of
    its epoch (step, running sums, RNG) and :class:`~utils.train.interrupt.RunInterrupted` is raised. Resuming from it
    ends with the same weights as a run never stopped.
    """
    state = _Fit(model, loaders=loaders, optim=optim, device=device, target=target,
                 schedule=schedule or ScheduleHooks(), masks=masks)
    start_epoch, progress = state.restore(resume)
    restore_batchnorm = state.prepare_steps()
    try:
        with GracefulStop() as stop:
            stopping = _StopVote(stop)
            for epoch in range(start_epoch, optim.epochs):  # progress: the epoch the run was stopped in, if any
                state.run_epoch(epoch, progress if epoch == start_epoch else None, stopping)
    finally:
        if state.keeper is not None:
            state.keeper.detach()
        if restore_batchnorm is not None:
            restore_batchnorm()
    state.result.masks = state.masks
    return state.result


class _StopVote:
    """Whether to stop after this step: every rank asks after every step, and all get the same answer (``signum``:
    the signal that asked on some rank, or 0)."""

    def __init__(self, stop: GracefulStop) -> None:
        self.stop = stop
        self.signum = 0

    def __call__(self) -> bool:
        self.signum = distributed.vote_max(self.stop.requested or 0)
        return self.signum != 0


class _Fit:
    """One call of :func:`fit` under way: what its steps, its epochs' bookkeeping and its checkpoints share.

    ``masks`` and ``keeper`` change when a schedule's step hook prunes; ``scheduler`` when a run resumes.
    """

    def __init__(self, model: nn.Module, *, loaders: Loaders, optim: OptimConfig, device: torch.device,
                 target: RunTarget, schedule: ScheduleHooks, masks: dict[str, torch.Tensor] | None) -> None:
        self.model, self.loaders, self.optim, self.device = model, loaders, optim, device
        self.target, self.schedule = target, schedule
        self.metrics_run = target.metrics_run or target.run
        self.criterion = nn.CrossEntropyLoss()  # what the test loss is, whatever the training loss adds
        self.train_loss = training_loss(model, bn_l1=optim.bn_l1, teacher=loaders.teacher)
        if optim.channels_last:
            model.to(memory_format=torch.channels_last)  # in place: the same parameters, in another layout
        self.optimizer, self.scheduler = build_optimizer(model, optim)
        self.autocast, self.scaler = amp_settings(optim.amp, device)
        self.masks, self.keeper = masks, None
        if masks:
            self.keeper = MaskKeeper(model, masks)
            self.keeper.attach(self.optimizer)
        self.result = FitResult(epochs_run=0, best_top1=float("-inf"), masks=masks)
        self.steps_per_epoch = 0
        self.train_model: nn.Module = model

    def restore(self, resume: dict[str, Any] | None) -> tuple[int, dict[str, Any] | None]:
        """Seed the ranks of a new run, or take up ``resume`` (optimizer, schedule, history, scaler, RNG); return the
        epoch to start at and, for a run stopped inside it, its ``progress``."""
        seed, optim = self.target.seed, self.optim
        if resume is None:
            distributed.seed_ranks(seed)
            return 0, None
        if resume.get("optimizer"):
            self.optimizer.load_state_dict(resume["optimizer"])
        start_epoch = int(resume.get("epoch", 0))
        self.scheduler = resume_schedule(self.optimizer, optim, start_epoch)
        if resume.get("best_top1") is not None:
            self.result.best_top1 = resume["best_top1"]
        self.result.history = list(resume.get("history") or [])
        progress = resume.get("progress")
        if self.scaler is not None and resume.get("scaler"):
            self.scaler.load_state_dict(resume["scaler"])
        if resume.get("rng"):
            restore_rng_state(resume["rng"])
        ranks_rng = resume.get("rng_ranks") or []
        if len(ranks_rng) == distributed.world_size() > 1:  # each rank goes on with its own stream
            restore_rng_state(ranks_rng[distributed.rank()])
        else:
            distributed.seed_ranks(seed + start_epoch)  # saved by another number of processes, or by none
        if start_epoch >= optim.epochs:
            print(f"The checkpoint has already completed {start_epoch} of {optim.epochs} epochs: nothing to resume.")
        return start_epoch, progress

    def prepare_steps(self) -> Callable[[], None] | None:
        """Set up the model the training steps run on (synchronised BatchNorm, DDP, torch.compile); returns what
        undoes the BatchNorm conversion, if one was made."""
        self.steps_per_epoch = len(self.loaders.train) if self.schedule.on_step is not None else 0
        restore_batchnorm = distributed.sync_batchnorm(self.model, self.device) if self.optim.sync_bn else None
        self.train_model = distributed.wrap(self.model, self.device)
        if self.optim.compile:
            self.train_model = torch.compile(self.train_model)
        return restore_batchnorm

    def step_hook_for(self, epoch: int) -> Callable[[int], None] | None:
        """``train_one_epoch``'s ``on_step`` for ``epoch``: the schedule's hook at the step count over all epochs."""
        on_step = self.schedule.on_step
        if on_step is None:
            return None

        def hook(step: int) -> None:
            new = on_step(epoch * self.steps_per_epoch + step, self.masks)
            if new is None:
                return
            self.masks = dict(new)
            if self.keeper is None:
                self.keeper = MaskKeeper(self.model, self.masks).attach(self.optimizer)
            else:
                self.keeper.update(self.masks)

        return hook

    def run_epoch(self, epoch: int, progress: dict[str, Any] | None, stopping: _StopVote) -> None:
        """Train, test, record and save ``epoch`` (going on after ``progress``'s last step when the run was stopped
        inside it); raise :class:`RunInterrupted` when a stop was asked for."""
        start = time.perf_counter()
        meter, earlier_seconds = Meter(self.device), 0.0
        if progress is not None:  # the epoch the run was stopped in: go on after its last step
            meter.load_state_dict(progress["meter"], sums=distributed.is_main())
            earlier_seconds = float(progress.get("seconds", 0.0))
        train_loader = self.loaders.train
        start_epoch_order(train_loader, self.target.seed, epoch + self.schedule.epoch_offset, start_step=meter.steps)
        lr = self.optimizer.param_groups[0]["lr"]
        options = StepOptions(autocast=self.autocast, scaler=self.scaler, channels_last=self.optim.channels_last,
                              print_freq=self.target.print_freq, on_step=self.step_hook_for(epoch), stop=stopping,
                              teacher=self.loaders.teacher.model if self.loaders.teacher is not None else None)
        train_stats = train_one_epoch(self.train_model, train_loader, self.train_loss, self.optimizer, self.device,
                                      epoch=epoch, meter=meter, options=options)
        if train_stats is None:
            seconds = earlier_seconds + time.perf_counter() - start
            self.save(epoch, None, meter, seconds)
            raise _interrupted(stopping.signum, self.target.run, f"epoch {epoch}, step {meter.steps}")
        train_stats["time"] += earlier_seconds
        distributed.sync_buffers(self.model)  # one set of BatchNorm statistics to test and save
        test_stats = evaluate(self.model, self.loaders.test, self.criterion, self.device,
                              channels_last=self.optim.channels_last)
        self.scheduler.step()
        seconds = earlier_seconds + time.perf_counter() - start
        print(format_epoch_line(epoch, train_stats, test_stats, seconds), flush=True)
        self.record_epoch(epoch, lr, seconds, train_stats, test_stats)
        if stopping() and epoch + 1 < self.optim.epochs:
            raise _interrupted(stopping.signum, self.target.run, f"the end of epoch {epoch}")

    def record_epoch(self, epoch: int, lr: float, seconds: float, train_stats: dict[str, float],
                     test_stats: dict[str, float]) -> None:
        """Append the epoch's record to ``metrics.jsonl``, the history and the plots, and save ``last.pth`` (and
        ``best.pth`` when its test top-1 is the best yet)."""
        target = self.target
        record = {**(target.extra_record or {}), "epoch": epoch, "lr": lr, "time": seconds,
                  **{f"train_{k}": v for k, v in train_stats.items() if k != "time"},
                  **{f"test_{k}": v for k, v in test_stats.items()}}
        self.metrics_run.append_metrics(record)
        self.result.history.append(record)
        if target.visdom is not None:
            target.visdom.log_epoch(epoch, {k: v for k, v in record.items() if k in PLOTTED})
        is_best = test_stats["top1"] > self.result.best_top1 and epoch >= self.schedule.best_after
        if is_best:
            self.result.best_top1 = test_stats["top1"]
        data = self.save(epoch + 1, record)
        if is_best and data is not None:
            atomic_write_bytes(target.run / "best.pth", data)
        self.result.epochs_run += 1

    def save(self, epoch: int, record: dict[str, Any] | None, meter: Meter | None = None,
             seconds: float = 0.0) -> bytes | None:
        """``last.pth`` after ``epoch`` completed epochs, or inside the next one when ``meter`` is given (rank 0
        writes; the others return None)."""
        progress = None
        if meter is not None:  # the sums over all ranks: a collective, so before the ranks part
            progress = {"step": meter.steps, "meter": meter.reduced().state_dict(), "seconds": seconds}
        ranks_rng = distributed.gather_object(capture_rng_state()) if distributed.world_size() > 1 else None
        if not distributed.is_main():
            return None
        training = TrainingState(epoch=epoch, optimizer=self.optimizer, scheduler=self.scheduler,
                                 best_top1=self.result.best_top1)
        ckpt = make_checkpoint(model=self.model, arch=self.target.arch, config=self.target.config, masks=self.masks,
                               metrics=record, device=self.device, training=training)
        ckpt["history"] = self.result.history
        if self.scaler is not None:
            ckpt["scaler"] = self.scaler.state_dict()
        if progress is not None:
            ckpt["progress"] = progress
        if ranks_rng is not None:
            ckpt["rng_ranks"] = ranks_rng
        data = checkpoint_bytes(ckpt)
        atomic_write_bytes(self.target.run / "last.pth", data)
        return data


def _interrupted(signum: int, run: RunDir, where: str) -> RunInterrupted:
    return RunInterrupted(f"{signal.Signals(signum).name}: stopped at {where}; saved {run / 'last.pth'}",
                          resume=run / "last.pth", signum=signum)
