"""Several processes, one run: ``torchrun --nproc_per_node=N trainer_exp.py ...`` (and ``pruner_exp.py``).

torchrun starts N copies of the script with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`start` joins them
into one process group (NCCL on GPUs, gloo on CPUs), and everything else follows from three rules:

* **The data is split, not repeated.** ``data.batch_size`` is the global batch: every step each rank takes its own
  contiguous ``batch_size / N`` of the positions the single-process run's step would take (:func:`shard_bounds`), so
  the ranks see, together, exactly the images and augmentations that one process sees, and the gradient DDP averages
  is the one process's. Evaluation splits the test set into N contiguous parts.
* **Results are reduced.** Loss and accuracy sums are summed over the ranks (:func:`all_reduce_sum`) before anything
  is printed, so every rank reports the whole run's numbers. A stop (Ctrl-C, SIGTERM) or a NaN on any rank stops all
  of them at the same step (:func:`vote_max`): a rank that stopped alone would leave the others waiting forever.
* **Rank 0 alone writes.** Checkpoints, metrics, results, exports and visdom: :func:`is_main` guards the one function
  every file goes through (:func:`utils.core.files.atomic_write_bytes`) and the metrics log; the other ranks print
  nothing (``stdout`` is closed for them; errors still reach ``stderr``).

BatchNorm normalises each rank's share of the batch unless ``train.sync_bn`` (:func:`sync_batchnorm`). Each rank
draws its own random numbers (:func:`seed_ranks`), and a checkpoint holds every rank's generator state, so that a
resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from utils.core.errors import UserError

_CONTROL: Any = None  # a gloo group for the per-step stop vote: no device synchronisation, even with NCCL


@dataclass(frozen=True)
class Launch:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int  # the processes on this machine


def launched() -> Launch | None:
    """The torchrun environment of this process, None when it was started alone (or by torchrun with 1 process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Launch(rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                  local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True in a single process and on rank 0: the process that writes files and talks to visdom."""
    return rank() == 0


def start(gpu: int | None) -> torch.device:
    """Join torchrun's process group and return this rank's device: ``cuda:LOCAL_RANK`` when ``--gpu`` was given
    (each process on its own GPU, numbered from 0 on every machine), else the CPU (gloo)."""
    launch = launched()
    assert launch is not None
    if gpu is not None:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if launch.local_rank >= count:
            raise UserError(f"--gpu under torchrun: process {launch.local_rank} on this machine needs cuda:"
                            f"{launch.local_rank}, but only {count} CUDA device(s) are visible; start at most {count} "
                            "processes per machine (--nproc_per_node), or leave out --gpu to train on CPUs")
        device = torch.device(f"cuda:{launch.local_rank}")
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    timeout = datetime.timedelta(minutes=30)
    dist.init_process_group(backend=backend, timeout=timeout, device_id=device if backend == "nccl" else None)
    atexit.register(stop)
    global _CONTROL
    _CONTROL = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
    if launch.rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process: one rank prints
    return device


def stop() -> None:
    """Leave the process group (the end of a distributed run)."""
    global _CONTROL
    if active():
        dist.destroy_process_group()
    _CONTROL = None


def shard_bounds(size: int, rank: int, world: int) -> tuple[int, int]:
    """``[lo, hi)``: rank ``rank``'s contiguous part of ``size`` items split as evenly as possible over ``world``."""
    return size * rank // world, size * (rank + 1) // world


def split_batch(global_batch: int, world: int) -> int:
    """Each rank's images per step; the global batch must divide evenly."""
    if global_batch % world:
        raise UserError(f"data.batch_size {global_batch} does not split evenly over the {world} processes torchrun "
                        f"started; set it to a multiple of {world} (it is the global batch; each process takes "
                        f"batch_size / {world})")
    return global_batch // world


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks (in place; returned for convenience). A no-op in a single process."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def vote_max(value: int) -> int:
    """The largest of the ranks' ``value`` on every rank (through a gloo group: no GPU synchronisation), e.g. the
    number of a signal one rank received, 0 on the others, so that all of them stop at the same step."""
    if not active():
        return value
    vote = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=_CONTROL)
    return int(vote.item())


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. the run directory rank 0 created)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_CONTROL)
    return box[0]


def gather_object(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0, None on the others (``[obj]`` in one process)."""
    if not active():
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0, group=_CONTROL)
    return out


def seed_ranks(seed: int) -> None:
    """Give each rank its own stream of random numbers (dropout), derived from ``seed`` alone: rank r's seed is the
    r-th draw of a generator seeded with ``seed``. With one seed everywhere every rank would drop the same units of
    its own share of the batch. One process: nothing changes."""
    if world_size() > 1:
        seeds = torch.randint(2**62, (world_size(),), generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(int(seeds[rank()]))


def barrier() -> None:
    if active():
        dist.barrier(group=_CONTROL)


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's BatchNorm running statistics on every rank. DDP broadcasts buffers before each training forward, so
    after the last step of an epoch each rank holds the statistics its own share updated: evaluating (and saving)
    needs one set."""
    if not active():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (gradients averaged over the ranks at each backward), or as it is."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


# ----------------------------------------------------------------------------------------------- BatchNorm


class _SumOverRanks(torch.autograd.Function):
    """``x`` summed over the ranks; the gradient, being that of a sum of every rank's loss, is summed too."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _AllReduceBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the global batch's: the per-channel sums of ``x`` (with the count),
    then of the squared deviations from the global mean, are summed over the ranks (differentiably: the backward pass
    sums their gradients over the ranks too).

    For CPUs and gloo, where ``nn.SyncBatchNorm`` refuses to run; the maths is BatchNorm's (biased variance to
    normalise, unbiased in the running estimate), so a rank computes what one process with the whole batch computes.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not active():
            return super().forward(x)
        dims, shape = [0, 2, 3], (1, x.size(1), 1, 1)
        total = _SumOverRanks.apply(torch.cat([x.sum(dims), x.new_full((1,), x.numel() / x.size(1))]))
        count = total[-1]
        mean = total[:-1] / count
        centred = x - mean.view(shape)  # two passes: sum(x*x)/n - mean**2 loses float32 digits to cancellation
        var = _SumOverRanks.apply((centred * centred).sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * count / (count - 1), momentum)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batchnorm(model: nn.Module, device: torch.device) -> Any:
    """Make every BatchNorm2d of ``model`` normalise over the global batch (see ``train.sync_bn``), keeping its
    parameters and buffers (the same tensors: optimizer, masks and checkpoints are unaffected). Returns a function
    that puts the original modules back (pruning surgery and checkpoints expect BatchNorm2d)."""
    if not active():
        return lambda: None
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.BatchNorm2d:
                continue
            if device.type == "cuda":
                sync: nn.Module = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                                   child.track_running_stats)
            else:
                sync = _AllReduceBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                           child.track_running_stats)
            for key in ("weight", "bias"):
                setattr(sync, key, getattr(child, key))
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                sync.register_buffer(key, getattr(child, key))
            sync.train(child.training)
            setattr(parent, name, sync)
            swapped.append((parent, name, child))

    def restore() -> None:
        for parent, name, child in swapped:
            sync = getattr(parent, name)
            child.train(sync.training)
            setattr(parent, name, child)  # the same parameter and buffer tensors: nothing to copy back

    return restore
