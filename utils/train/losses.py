"""The training loss: cross-entropy, optionally distilled from a teacher, plus an optional BatchNorm L1 penalty.

One loss object for every training (:func:`utils.train.fit.fit` builds it with :func:`training_loss`), so there is
one training step and one loop whatever the loss: the step calls ``criterion(output, target)``, or, when it runs a
teacher (:class:`Teacher`, given through ``StepOptions.teacher``), ``criterion(output, target, teacher_output)``.

- Distillation (Hinton et al. 2015, ``retrain.distill``): ``(1 - alpha) * CE(student, labels) + alpha * T^2 *
  KL(softmax(teacher / T) || softmax(student / T))``, the KL averaged over the batch (``batchmean``); the ``T^2``
  keeps the soft term's gradients on the scale of the hard term's as ``T`` changes.
- Network slimming (Liu et al. 2017, ``train.bn_l1`` / ``retrain.bn_l1``): ``bn_l1 * sum(|gamma|)`` over every
  BatchNorm scale, added to the loss, so autograd applies its subgradient ``bn_l1 * sign(gamma)`` in the same step
  (through the gradient scaler and DDP's reduction like every other gradient; ``sign(0) = 0`` leaves a scale held at
  zero by a pruning mask at zero).

A weight of 0 leaves its term out entirely, so ``alpha`` 0 and ``bn_l1`` 0 compute exactly the plain cross-entropy
step (tests/test_distill.py checks bit for bit).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Teacher", "TrainingLoss", "bn_l1_penalty", "frozen_teacher", "soft_target_loss", "training_loss"]


def soft_target_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, summed over classes, averaged over the batch."""
    log_p_student = F.log_softmax(student.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (temperature * temperature)


def bn_l1_penalty(scales: list[torch.Tensor]) -> torch.Tensor:
    """``sum(|gamma|)`` over the BatchNorm scales ``scales`` (its subgradient is ``sign(gamma)``)."""
    return torch.stack([gamma.abs().sum() for gamma in scales]).sum()


def batchnorm_scales(model: nn.Module) -> list[nn.Parameter]:
    """The scale (``weight``) of every affine BatchNorm of ``model``: the parameters themselves, which DDP, synchronised
    BatchNorm and the optimizer share, so the penalty reaches them whatever wraps the model later."""
    return [m.weight for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]


@dataclass(frozen=True)
class Teacher:
    """A frozen network whose outputs on each training batch the student learns from, and how much.

    ``model`` runs in eval mode under ``torch.no_grad()`` (:func:`utils.train.engine.train_step`), never wrapped in
    DDP: each rank runs it on its own share of the batch. ``alpha``: the soft term's weight; ``temperature``: ``T``.
    """

    model: nn.Module
    alpha: float
    temperature: float


def frozen_teacher(model: nn.Module, *, alpha: float, temperature: float) -> Teacher | None:
    """A :class:`Teacher` of a copy of ``model`` (in eval mode, no gradients; ``model`` itself is left as it was),
    or None when ``alpha`` is 0: the soft term then weighs nothing, and plain cross-entropy needs no teacher."""
    if alpha == 0:
        return None
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return Teacher(model=teacher, alpha=alpha, temperature=temperature)


class TrainingLoss(nn.Module):
    """Cross-entropy, mixed with a teacher's soft targets (``distill``) and plus ``bn_l1 * sum(|gamma|)`` over
    ``scales``; a term of weight 0 is not computed."""

    def __init__(self, *, distill: Teacher | None = None, bn_l1: float = 0.0,
                 scales: list[torch.Tensor] | None = None) -> None:
        super().__init__()
        self.alpha = distill.alpha if distill is not None else 0.0
        self.temperature = distill.temperature if distill is not None else 1.0
        self.bn_l1 = bn_l1
        self.scales = list(scales or []) if bn_l1 else []

    def forward(self, output: torch.Tensor, target: torch.Tensor,
                teacher_output: torch.Tensor | None = None) -> torch.Tensor:
        if self.alpha == 0:
            loss = F.cross_entropy(output, target)
        else:
            if teacher_output is None:
                raise ValueError("a distillation loss needs the teacher's output (StepOptions.teacher)")
            soft = soft_target_loss(output, teacher_output, self.temperature)
            loss = soft * self.alpha if self.alpha == 1 else \
                F.cross_entropy(output, target) * (1 - self.alpha) + soft * self.alpha
        if self.scales:
            loss = loss + self.bn_l1 * bn_l1_penalty(self.scales)
        return loss


def training_loss(model: nn.Module, *, bn_l1: float = 0.0, teacher: Teacher | None = None) -> nn.Module:
    """The loss :func:`~utils.train.fit.fit` trains ``model`` with: plain ``nn.CrossEntropyLoss`` when there is no
    teacher and no penalty (the loss every run had before these options), else a :class:`TrainingLoss`."""
    if teacher is None and not bn_l1:
        return nn.CrossEntropyLoss()
    return TrainingLoss(distill=teacher, bn_l1=bn_l1, scales=batchnorm_scales(model))
