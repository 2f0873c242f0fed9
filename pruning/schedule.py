"""On what schedule pruning happens: one-shot, iterative rounds, or gradually during training (AGP).

The third of the three parts (which / how / what *and when*): the maths of the schedules, independent of how
weights or filters are chosen. The pruners (:mod:`pruning.weight`, :mod:`pruning.filter`) take the ratios and
counts computed here; the runner (:mod:`utils.app.pruner_main`) calls them at the right moments.

* ``one_shot``: prune once to the final ratio, then retrain (Han et al.'s single step; Li et al.).
* ``iterative``: ``rounds`` times prune to a growing ratio, then retrain ``retrain.epochs / rounds`` epochs
  (Han et al. 2015 §3.5 reach their compression by alternating prune and retrain).
* ``agp``: automated gradual pruning (Zhu & Gupta 2017, "To prune, or not to prune"): every ``frequency``
  optimizer steps of one retraining run, prune to the sparsity of the cubic ramp at that step, so that the
  network recovers while it is being pruned.

Both growing schedules follow Zhu & Gupta's cubic ramp from ``s_i = 0``::

    s(t) = s_f * (1 - (1 - t / T) ** 3),   t = 0 .. T

It prunes fast while there are many redundant weights and slowly near the target, where every further
weight costs accuracy. ``iterative`` evaluates it at the end of round ``i`` of ``R`` (``t / T = i / R``);
``agp`` at its pruning steps ``t = k * frequency``, ``k = 1 .. n``, with ``T = n * frequency``, so the last
pruning step reaches ``s_f`` exactly. A count (filters to remove) follows the same ramp:
``ceil(fraction(t) * final count)``, so the last step removes exactly what one-shot pruning removes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from utils.core import choices
from utils.core.errors import UserError

__all__ = ["SCHEDULES", "AgpPlan", "agp_plan", "cubic_fraction", "epochs_per_round", "round_ratios",
           "scheduled_count", "sparsity_at"]

SCHEDULES = choices.PRUNE_SCHEDULES  # prune.schedule

# ceil(fraction * count) in floating point: 0.875 * 8 may come out as 7.000000000000001, which must give 7.
_ROUNDING_SLACK = 1e-9
# Ratios are shown to users and written to results: 0.8 * 0.875 should read 0.7, not 0.7000000000000001.
_RATIO_DIGITS = 12


def cubic_fraction(t: float, total: float) -> float:
    """How much of the final amount is pruned at time ``t`` of ``total``: ``1 - (1 - t/total)^3``, in [0, 1].

    Exactly 0 at ``t <= 0`` and exactly 1 at ``t >= total`` (no rounding error at the ends).
    """
    if total <= 0:
        raise ValueError(f"the ramp needs a positive length, got {total}")
    if t <= 0:
        return 0.0
    if t >= total:
        return 1.0
    return 1.0 - (1.0 - t / total) ** 3


def sparsity_at(final: float, t: float, total: float, *, initial: float = 0.0) -> float:
    """Zhu & Gupta's ``s_t = s_f + (s_i - s_f) * (1 - t/T)^3`` (``s_i`` = ``initial``), clamped to [0, T]."""
    return initial + (final - initial) * cubic_fraction(t, total)


def round_ratios(final: float, rounds: int) -> list[float]:
    """The ratio each of ``rounds`` iterative rounds prunes to; the last is exactly ``final``.

    >>> [round(r, 4) for r in round_ratios(0.8, 4)]
    [0.4625, 0.7, 0.7875, 0.8]
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    return [round(sparsity_at(final, i, rounds), _RATIO_DIGITS) for i in range(1, rounds)] + [final]


def scheduled_count(final_count: int, t: float, total: float) -> int:
    """Filters removed by time ``t`` when ``final_count`` go by ``total``: ``ceil(fraction * final_count)``.

    Never decreasing in ``t``, 0 at ``t = 0`` and ``final_count`` at ``t = total``.
    """
    return min(final_count, math.ceil(cubic_fraction(t, total) * final_count - _ROUNDING_SLACK))


def epochs_per_round(epochs: int, rounds: int) -> int:
    """``retrain.epochs`` (the total budget) split evenly over the ``iterative`` rounds; a remainder is an error.

    An uneven split would give the last rounds less retraining than the first without anyone having asked for
    it, and would make "the same total budget" comparisons between schedules depend on how it is spread.
    """
    if epochs <= 0:
        raise UserError(f'prune.schedule "iterative": retrain.epochs is {epochs}, but every round retrains; set '
                        f"retrain.epochs to the total retraining budget, a multiple of prune.rounds ({rounds})")
    if epochs % rounds:
        lower, upper = epochs - epochs % rounds, epochs - epochs % rounds + rounds
        options = f"{lower} or {upper}" if lower > 0 else f"{upper}"
        raise UserError(f"retrain.epochs {epochs} is the total retraining budget of the {rounds} rounds "
                        f"(prune.rounds) and must split evenly over them; set retrain.epochs to {options}, or "
                        f"prune.rounds to a divisor of {epochs}")
    return epochs // rounds


@dataclass(frozen=True)
class AgpPlan:
    """When an AGP run prunes: at optimizer steps ``frequency, 2 * frequency, ..., steps * frequency``.

    ``final`` is the target (a ratio, or 1.0 when the caller scales counts itself); ``total_steps`` the optimizer
    steps of the whole retraining. After ``last_step`` the run trains on at the final sparsity.
    """

    final: float
    frequency: int
    steps: int  # pruning steps (n)
    total_steps: int

    @property
    def last_step(self) -> int:
        return self.steps * self.frequency

    def pruning_step(self, step: int) -> int | None:
        """``k`` (1-based) if optimizer step ``step`` (counted from 1) is the ``k``-th pruning step, else None."""
        if step <= 0 or step % self.frequency or step > self.last_step:
            return None
        return step // self.frequency

    def fraction_at(self, step: int) -> float:
        """The share of the final amount pruned once optimizer step ``step`` is done."""
        return cubic_fraction(min(step, self.last_step) // self.frequency, self.steps)

    def ratio_at(self, step: int) -> float:
        """The sparsity once optimizer step ``step`` is done (0 before the first pruning step)."""
        return self.final if step >= self.last_step else round(self.final * self.fraction_at(step), _RATIO_DIGITS)

    def first_epoch_at_final(self, steps_per_epoch: int) -> int:
        """The first (0-based) epoch that ends at the final sparsity: the first that may count as the best."""
        return math.ceil(self.last_step / steps_per_epoch) - 1


def agp_plan(final: float, *, epochs: int, steps_per_epoch: int, frequency: int, end: float) -> AgpPlan:
    """The pruning steps of an AGP run over ``epochs`` epochs of ``steps_per_epoch`` optimizer steps.

    The ramp covers the first ``end`` of the steps (Zhu & Gupta leave the rest for recovery at the final
    sparsity): ``n = floor(end * total / frequency)`` pruning steps. No pruning step at all is a UserError that
    says how to get one.
    """
    total = epochs * steps_per_epoch
    ramp = math.floor(end * total + _ROUNDING_SLACK)
    steps = ramp // frequency
    if steps < 1:
        raise UserError(f'prune.schedule "agp": retraining takes {total} optimizer steps ({epochs} epochs of '
                        f"{steps_per_epoch}), of which prune.agp_end {end:g} ramps over {ramp}; prune.frequency "
                        f"{frequency} leaves no pruning step in them. Set prune.frequency to at most {max(ramp, 1)} "
                        "(a few dozen pruning steps is typical) or raise retrain.epochs")
    return AgpPlan(final=final, frequency=frequency, steps=steps, total_steps=total)
