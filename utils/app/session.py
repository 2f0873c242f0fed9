"""What every pruning method's runner shares: the :class:`Session` (config, device, data, model, run directory)
built once by :func:`utils.app.pruner_main.main`, the registry of runners (``prune.method``), and small helpers."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from pruning.budget import plan_to_target
from pruning.filter import FilterPlan, FilterSpec, plan_filters
from pruning.gradients import TaylorStats, taylor_statistics
from pruning.importance import needs_gradients
from pruning.schedule import agp_plan
from utils.app.setup import Data, make_visdom
from utils.checkpoint.format import make_checkpoint
from utils.checkpoint.load import LoadedModel, load_toolkit_checkpoint
from utils.config.schema import ExperimentConfig, RetrainConfig
from utils.core import distributed
from utils.core.errors import UserError
from utils.core.files import atomic_torch_save
from utils.core.registry import Registry
from utils.core.rundir import RunDir
from utils.report.profile import count_macs, count_params
from utils.train.engine import evaluate
from utils.train.fit import FitResult, Loaders, RunTarget, ScheduleHooks, fit, resume_point
from utils.train.interrupt import RunInterrupted
from utils.train.losses import frozen_teacher


@dataclass
class Session:
    """Everything a runner needs, built once by :func:`utils.app.pruner_main.main`."""

    cfg: ExperimentConfig
    device: torch.device
    data: Data
    loaded: LoadedModel
    run: RunDir
    config: dict[str, Any]  # the resolved config with provenance, as saved in config.json and checkpoints
    logger: Any
    prepared: Any = None  # what prepare_pruning found while checking the spec (see there)
    resuming: bool = False  # --resume: retraining goes on from the last.pth files already in ``run``
    export: tuple[str, ...] = ()  # --export: the formats utils.app.exporting.export_final writes

    def evaluate(self, model: nn.Module, desc: str) -> dict[str, float]:
        return evaluate(model, self.data.test_loader, nn.CrossEntropyLoss(), self.device, desc=desc)

    def finetune(self, model: nn.Module, *, run: RunDir, arch: dict[str, Any], masks: dict[str, torch.Tensor] | None,
                 prefix: str = "", extra: dict[str, Any] | None = None, optim: RetrainConfig | None = None,
                 schedule: ScheduleHooks | None = None) -> FitResult:
        """Retrain ``model`` (``optim``: default ``retrain``) into ``run``; the rest goes to :func:`fit`
        (``schedule``: a pruning schedule's step hook and epochs, :class:`~utils.train.fit.ScheduleHooks`).

        When resuming, a ``last.pth`` in ``run`` means this retraining had started: it goes on from there
        (weights and masks from the file), and a complete one returns at once with its history.
        """
        cfg = self.cfg
        optim = optim or cfg.retrain
        resume = None
        if self.resuming and (run / "last.pth").exists():  # this model's retraining had started: go on from there
            resume = load_toolkit_checkpoint(run / "last.pth", expect_arch=cfg.model.arch).checkpoint
            model.load_state_dict(resume["state_dict"])
            masks = resume.get("masks") or None
            print(resume_point(run / "last.pth", resume))
        print(f"Retraining for {optim.epochs} epochs (lr {optim.lr:g}"
              + ("; pruned weights held at zero" if masks else "") + f"; loss: {loss_title(optim)})")
        # The teacher is the model as loaded, never the checkpoint resumed from: the runners prune copies of it.
        teacher = None if optim.distill is None else frozen_teacher(
            self.loaded.model, alpha=optim.distill.alpha, temperature=optim.distill.temperature)
        try:
            target = RunTarget(run=run, arch=arch, config=self.config, seed=cfg.seed, metrics_run=self.run,
                               extra_record=extra, print_freq=cfg.print_freq,
                               visdom=make_visdom(cfg, self.logger.active, title_prefix=prefix))
            loaders = Loaders(train=self.data.train_loader, test=self.data.test_loader, teacher=teacher)
            return fit(model, loaders=loaders, optim=optim, device=self.device, target=target, masks=masks,
                       resume=resume, schedule=schedule)
        except RunInterrupted as exc:
            exc.resume = self.run.path  # a pruning run resumes as a whole, from its directory
            raise

    def gradients(self, model: nn.Module) -> TaylorStats | None:
        """The gradient statistics of ``model`` as it is now that ``prune.importance`` scores from (``None`` for the
        weight criteria): see :func:`gradient_stats`."""
        return gradient_stats(self.cfg, model, self.data, self.device)

    def save_pruned(self, model: nn.Module, path: str, *, arch: dict[str, Any], masks: dict[str, torch.Tensor] | None,
                    metrics: dict[str, float]) -> str:
        ckpt = make_checkpoint(model=model, arch=arch, config=self.config, masks=masks, metrics=metrics,
                               device=self.device)
        atomic_torch_save(ckpt, self.run / path)
        return str(self.run / path)


METHODS: Registry[Callable[[Session], None]] = Registry("pruning method")  # prune.method -> its runner


def agp_plan_for(cfg: ExperimentConfig, data: Data, final: float) -> Any:
    return agp_plan(final, epochs=cfg.retrain.epochs, steps_per_epoch=len(data.train_loader),
                    frequency=cfg.prune.frequency, end=cfg.prune.agp_end)


def schedule_title(cfg: ExperimentConfig) -> str:
    p = cfg.prune
    if p.schedule == "iterative":
        per_round = cfg.retrain.epochs // p.rounds
        return f", iterative: {p.rounds} rounds of {per_round} epoch{'s' if per_round > 1 else ''} retraining"
    if p.schedule == "agp":
        return (f", AGP: pruning every {p.frequency} steps over the first {p.agp_end:g} of {cfg.retrain.epochs} "
                "epochs retraining")
    return ""


def schedule_record(cfg: ExperimentConfig) -> dict[str, Any]:
    p = cfg.prune
    record: dict[str, Any] = {"name": p.schedule, "retrain_epochs": cfg.retrain.epochs}
    if p.schedule == "iterative":
        record.update(rounds=p.rounds, epochs_per_round=cfg.retrain.epochs // p.rounds)
    elif p.schedule == "agp":
        record.update(frequency=p.frequency, agp_end=p.agp_end)
    return record


def retrain_loss_record(retrain: RetrainConfig) -> str | dict[str, Any]:
    """What ``results.json`` says the retraining minimised: ``"cross-entropy"``, or the distillation and BatchNorm L1
    settings that changed it."""
    if retrain.distill is None and not retrain.bn_l1:
        return "cross-entropy"
    record: dict[str, Any] = {"name": "distillation" if retrain.distill is not None else "cross-entropy"}
    if retrain.distill is not None:
        record.update(alpha=retrain.distill.alpha, temperature=retrain.distill.temperature,
                      teacher="the unpruned model")
    if retrain.bn_l1:
        record["bn_l1"] = retrain.bn_l1
    return record


def loss_title(retrain: RetrainConfig) -> str:
    """The retraining loss in words, for the line that starts a retraining."""
    text = "cross-entropy"
    if retrain.distill is not None:
        text = (f"distillation from the unpruned model (alpha {retrain.distill.alpha:g}, temperature "
                f"{retrain.distill.temperature:g})")
    return text + (f" + {retrain.bn_l1:g} x BatchNorm L1" if retrain.bn_l1 else "")


def loss_suffix(retrain: RetrainConfig) -> str:
    """The retraining loss for a results title: nothing for plain cross-entropy."""
    if retrain.epochs == 0 or (retrain.distill is None and not retrain.bn_l1):
        return ""
    return f", retrained with {loss_title(retrain)}"


def example_input(input_size: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    return torch.zeros(1, *input_size, device=device)  # shapes only; no draw from the global RNG


def needs_training_batches(cfg: ExperimentConfig) -> bool:
    """Whether the run scores channels from gradients (``prune.importance`` ``taylor`` of a filter or sensitivity
    run), so the training split has to be loaded even without retraining."""
    return cfg.prune.method in ("filter", "sensitivity") and needs_gradients(cfg.prune.importance)


def training_batches(loader: Iterable[Any], count: int) -> Iterator[Any]:
    """The first ``count`` batches of a new pass over ``loader`` (fewer if it has fewer), one at a time.

    A pass of this tool's loaders is drawn from the epoch's seed (``set_epoch``), not from the global generator, so
    drawing these changes neither the order nor the augmentation of the training that follows. A DataLoader with
    persistent workers has one pass at a time: a second ``iter()`` would reset the pass in progress (an ``agp``
    step scores inside the training's pass), so the batches come from a shallow copy without persistent workers
    (its own short-lived workers, the same dataset, sampler and collation) and with a generator of its own (the
    training loader's, which seeds its workers, is not advanced)."""
    if isinstance(loader, DataLoader) and loader.persistent_workers:
        view = copy.copy(loader)
        # DataLoader refuses to set persistent_workers after construction; the copy is private and never reused.
        view.__dict__.update(persistent_workers=False, _iterator=None, generator=torch.Generator())
        loader = view
    return itertools.islice(iter(loader), count)


def gradient_stats(cfg: ExperimentConfig, model: nn.Module, data: Data, device: torch.device
                   ) -> TaylorStats | None:
    """What a criterion that needs gradients scores from: :func:`pruning.gradients.taylor_statistics` of ``model``
    (eval mode, nothing on the model changed) on ``prune.taylor_batches`` batches of the training loader; ``None``
    when ``prune.importance`` needs none. Under torchrun each rank holds its share of every batch: the statistics are
    averaged over the ranks, which gives those of the whole batch (``p * dL/dp`` is linear in the gradient, and the
    batch's mean loss is the mean of the ranks' equal shares), so every rank ranks the same channels."""
    if not needs_training_batches(cfg):
        return None
    assert data.train_loader is not None, "build_data(train=True) when needs_training_batches(cfg)"
    stats = taylor_statistics(model, training_batches(data.train_loader, cfg.prune.taylor_batches), device=device)
    if distributed.active():
        world = distributed.world_size()
        stats = TaylorStats(per_batch={name: (distributed.all_reduce_sum(t.to(device)) / world).cpu()
                                       for name, t in stats.per_batch.items()}, batches=stats.batches)
    return stats


def filter_options(cfg: ExperimentConfig) -> dict[str, Any]:
    p = cfg.prune
    return {"layers": list(p.layers), "channels": p.channels, "ratios": p.ratios, "strategy": p.strategy,
            "importance": p.importance, "skip": list(p.skip)}


def filter_plan(cfg: ExperimentConfig, model: nn.Module, example: torch.Tensor, *,
                gradients: TaylorStats | None = None) -> FilterPlan:
    """The filter plan of ``cfg.prune``: its layers and counts, or with ``prune.target`` the counts
    :func:`pruning.budget.plan_to_target` finds for that budget (what it reached is printed). The one place the
    real run, its schedules and the dry run get their plan from. ``gradients``: what ``taylor`` scores from
    (:func:`gradient_stats` of ``model``)."""
    p = cfg.prune
    if p.target is None:
        return plan_filters(model, **filter_options(cfg), example_input=example, gradients=gradients)
    kind = "macs" if p.target.macs is not None else "params"
    fraction = p.target.macs if kind == "macs" else p.target.params
    size = tuple(example.shape[1:])
    cost = count_params if kind == "params" else (lambda m: count_macs(m, size))
    spec = FilterSpec(strategy=p.strategy, skip=list(p.skip), importance=p.importance, gradients=gradients)
    curves = sensitivity_curves(p.sensitivity_file) if p.sensitivity_file else None
    plan, before, after = plan_to_target(model, target=fraction, cost=cost, allocation=p.allocation,
                                         max_ratio=p.max_ratio, spec=spec, example_input=example, sensitivity=curves)
    print(f"prune.target: {kind} {fraction:g} of {before:,} ({p.allocation} allocation): {after:,} "
          f"({after / before:.4f}) over {len(plan.groups)} channel groups")
    return plan


def sensitivity_curves(path: str) -> dict[str, tuple[list[float], list[float], int]]:
    """``{layer: (ratios, top-1 drops, filters)}`` from the ``sensitivity.json`` of a sensitivity run; a file that is
    missing or not one is one line."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        base, ratios = float(data["baseline"]["top1"]), [float(r) for r in data["ratios"]]
        return {str(layer): (ratios, [base - float(t) for t in curve["top1"]], int(curve["filters"]))
                for layer, curve in data["layers"].items()}
    except FileNotFoundError:
        raise UserError(f"prune.sensitivity_file: {path} does not exist; run prune.method sensitivity on this model "
                        "first and give its sensitivity.json") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"prune.sensitivity_file: {path} is not the sensitivity.json of a sensitivity run "
                        f"({type(exc).__name__}: {exc})") from None
