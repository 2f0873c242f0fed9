"""Loss, top-1 and top-5 accumulated over batches: what every evaluation and training epoch reports."""

from __future__ import annotations

from typing import Any

import torch

from utils.core import distributed


class Meter:
    """Sums of loss and correct predictions, kept on the device so a step never waits for the GPU."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct1 = torch.zeros((), dtype=torch.int64, device=device)
        self.correct5 = torch.zeros((), dtype=torch.int64, device=device)
        self.count = 0
        self.steps = 0  # training steps taken into the sums (batches, for evaluation)
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)

    def update(self, loss: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> None:
        n = target.size(0)
        k = min(5, output.size(1))
        top = output.topk(k, dim=1).indices
        hits = top.eq(target.unsqueeze(1))
        self.loss += loss.detach().double() * n
        self.correct1 += hits[:, 0].sum()
        self.correct5 += hits.any(dim=1).sum()
        self.count += n
        self.steps += 1

    def note_finite(self, loss: torch.Tensor, step: int) -> None:
        """Remember the first step whose loss was NaN/inf, on the device (no synchronisation)."""
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, torch.full_like(self.first_bad_step, step), self.first_bad_step)

    def state_dict(self) -> dict[str, Any]:
        """The running sums, exactly (for a checkpoint taken in the middle of an epoch)."""
        return {"loss": self.loss.cpu(), "correct1": self.correct1.cpu(), "correct5": self.correct5.cpu(),
                "count": self.count, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any], *, sums: bool = True) -> None:
        """Go on from ``state``; ``sums=False`` takes only the step count (the ranks of a distributed run but one
        start from zero, since a saved meter holds the sums over all ranks)."""
        device = self.loss.device
        if sums:
            self.loss = state["loss"].to(device)
            self.correct1 = state["correct1"].to(device)
            self.correct5 = state["correct5"].to(device)
            self.count = int(state["count"])
        self.steps = int(state["steps"])

    def reduced(self) -> Meter:
        """The sums over every rank of a distributed run (a new meter; this one is unchanged), or this meter."""
        if not distributed.active():
            return self
        total = Meter(self.loss.device)
        packed = torch.stack([self.loss, self.correct1.double(), self.correct5.double(),
                              torch.tensor(float(self.count), dtype=torch.float64, device=self.loss.device)])
        distributed.all_reduce_sum(packed)
        total.loss = packed[0]
        total.correct1, total.correct5 = packed[1].round().long(), packed[2].round().long()
        total.count, total.steps = int(packed[3].item()), self.steps
        total.first_bad_step = distributed.all_reduce_max(self.first_bad_step.clone())
        return total

    def result(self) -> dict[str, float]:
        count = max(self.count, 1)
        return {
            "loss": self.loss.item() / count,
            "top1": 100.0 * self.correct1.item() / count,
            "top5": 100.0 * self.correct5.item() / count,
        }
