"""``pruner_exp.py``: load a trained model, prune it, evaluate, fine-tune, report.

``prune.method`` picks a runner:

- ``weight``: a sweep over ``prune.percent``. The data and the model are loaded once; every ratio starts from a
  copy of the unpruned model, so the rows of the table are independent of each other and of their order.
- ``filter``: one physical filter-pruning run with the before/after report (parameters, MACs, size, accuracy,
  latency).
- ``sensitivity``: every conv layer pruned alone at several ratios and evaluated without retraining.

``weight`` and ``filter`` follow ``prune.schedule`` (:mod:`pruning.schedule`): ``one_shot``, ``iterative`` rounds
(one ``fit`` per round, so that filter pruning gets a fresh optimizer for its new shapes) or ``agp`` (one ``fit``
that prunes from its step hook; filters are zeroed while training and removed at the end).
"""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import torch
from torch import nn

from pruning import prunable_layers
from pruning.filter import remove_filters, select_filters
from pruning.gradients import TaylorStats

# Importing the runners registers each under its prune.method name in METHODS.
from utils.app import run_filter, run_sensitivity, run_weight  # noqa: F401
from utils.app.exporting import check_export
from utils.app.session import (
    METHODS,
    Session,
    agp_plan_for,
    example_input,
    filter_plan,
    gradient_stats,
    needs_training_batches,
)
from utils.app.setup import build_data, build_model, check_model, make_visdom, seed_everything, select_device
from utils.config.schema import ExperimentConfig
from utils.config.validate import from_dict
from utils.core.errors import UserError
from utils.core.provenance import provenance
from utils.core.rundir import RunDir


def main(cfg: ExperimentConfig, *, gpu: int | None = None, visdom: bool = False, resume: str | None = None,
         export: tuple[str, ...] = ()) -> int:
    with contextlib.ExitStack() as held:  # the run directory, held from before its first write to the end
        return run_pruning(cfg, held, gpu=gpu, visdom=visdom, resume=resume, export=export)


def run_pruning(cfg: ExperimentConfig, held: contextlib.ExitStack, *, gpu: int | None, visdom: bool,
                resume: str | None, export: tuple[str, ...]) -> int:
    """Prune, evaluate, fine-tune and report: a new run, or the resumed run ``resume``; the run directory is held
    (:meth:`~utils.core.rundir.RunDir.hold`) on ``held`` once it is known."""
    if cfg.prune.method not in METHODS:
        raise UserError(f"prune.method: unknown method {cfg.prune.method!r}; known: {', '.join(METHODS.names())}")
    check_export(cfg, export)
    if cfg.model.checkpoint is None and not cfg.model.pretrained and not cfg.prune.from_scratch:
        raise UserError("pruning needs trained weights: set model.checkpoint (e.g. checkpoints/<run>/best.pth) or "
                        "model.pretrained: true for torchvision and timm models (or prune.from_scratch: true to "
                        "prune a freshly initialised model and train it)")
    if resume is not None:
        run = open_run_to_resume(resume, cfg)
    device = select_device(gpu)
    if resume is not None:
        held.enter_context(run.hold(subfolders=True))
    seed_everything(cfg.seed)
    retrains = cfg.retrain.epochs > 0 and cfg.prune.method != "sensitivity"
    data = build_data(cfg, train=retrains or needs_training_batches(cfg), device=device,
                      channels_last=cfg.retrain.channels_last)
    loaded = build_model(cfg, data.num_classes)
    check_model(loaded.model, data, cfg)  # before the run directory: a model the images do not fit
    loaded.model.to(device)
    gradients = gradient_stats(cfg, loaded.model, data, device) if cfg.prune.method == "filter" else None
    prepared = prepare_pruning(cfg, loaded.model, example_input(data.trace_size, device), gradients=gradients)
    if retrains and cfg.prune.schedule == "agp":
        agp_plan_for(cfg, data, 1.0)  # a frequency that leaves no pruning step is an error before the run directory
    config = {**cfg.to_dict(), "provenance": provenance(device)}
    if resume is None:
        run = RunDir.create(cfg.output.dir, cfg.name, overwrite=cfg.output.overwrite)
        print(f"Run directory: {run.path}")
        held.enter_context(run.hold(subfolders=True))
        run.write_json("config.json", config)
    else:
        print(f"Resuming the run in {run.path}: pruning again, retraining from its checkpoints")
        run.append_metrics({"phase": "resumed", "provenance": config["provenance"]})
    session = Session(cfg=cfg, device=device, data=data, loaded=loaded, run=run, config=config,
                      logger=make_visdom(cfg, visdom), prepared=prepared, resuming=resume is not None,
                      export=tuple(dict.fromkeys(export)))
    METHODS.get(cfg.prune.method)(session)
    return 0


RESUME_MUST_MATCH = ("seed", "data", "model", "prune")  # what decides the pruned model and its retraining data


def open_run_to_resume(path: str, cfg: ExperimentConfig) -> RunDir:
    """The run directory ``path`` of an interrupted pruning run, if it was made with this experiment's settings."""
    run = RunDir(path)
    saved_path = run / "config.json"
    if not saved_path.is_file():
        raise UserError(f"--resume {path}: not a run directory of pruner_exp.py (no config.json); give the folder "
                        "the interrupted run printed as 'Run directory:'")
    try:
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--resume {path}: cannot read {saved_path} ({exc}); start a new run instead") from None
    try:  # keys added to the tool since that run took their defaults there: fill them in before comparing
        saved = {**saved, **from_dict({k: v for k, v in saved.items() if k != "provenance"},
                                      source=str(saved_path)).to_dict()}
    except UserError:
        pass  # a key this version no longer knows: compare what was written
    current = cfg.to_dict()
    for section in RESUME_MUST_MATCH:
        difference = first_difference(saved.get(section), current.get(section), section)
        if difference is not None:
            key, was, now = difference
            raise UserError(f"--resume {path}: {key} was {json.dumps(was)} in that run but is {json.dumps(now)} "
                            "now; resume with the settings it was started with (its config.json), or start a new run")
    was_epochs = (saved.get("retrain") or {}).get("epochs")
    if cfg.prune.schedule != "one_shot" and was_epochs != cfg.retrain.epochs:
        raise UserError(f"--resume {path}: retrain.epochs was {json.dumps(was_epochs)} in that run but is "
                        f"{cfg.retrain.epochs} now; prune.schedule {json.dumps(cfg.prune.schedule)} spreads its "
                        "pruning over the retraining, so resume with the epochs it was started with")
    if saved.get("retrain") != current["retrain"]:
        print("note: the retrain section differs from the one the run started with; continuing with the "
              "experiment file's")
    return run


def first_difference(a: Any, b: Any, key: str) -> tuple[str, Any, Any] | None:
    """The first dotted key under which ``a`` and ``b`` differ, with both values; None if they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for name in list(a) + [n for n in b if n not in a]:
            found = first_difference(a.get(name), b.get(name), f"{key}.{name}")
            if found is not None:
                return found
        return None
    return None if a == b else (key, a, b)


def prepare_pruning(cfg: ExperimentConfig, model: nn.Module, example: torch.Tensor, *,
                    gradients: TaylorStats | None = None) -> Any:
    """Raise the UserError a filter/sensitivity run would raise for its layer spec (unknown layer, too many
    filters, coupled layers, a layer that cannot be pruned alone), before the run directory exists: a mistake
    then leaves no half-made run behind and costs no evaluation first.

    A filter spec is checked by applying it to a copy of ``model`` (the model itself is not touched); that
    pruned copy and its outcome are returned for the run to use, so the pruning is done once; for a sensitivity
    spec, the layers that can be pruned alone. ``gradients``: what ``prune.importance`` ``taylor`` scores from
    (:func:`utils.app.session.gradient_stats` of ``model``).
    """
    p = cfg.prune
    if p.method == "filter":
        pruned = copy.deepcopy(model)
        plan = filter_plan(cfg, pruned, example, gradients=gradients)
        return pruned, remove_filters(pruned, plan, select_filters(pruned, plan))
    elif p.method == "sensitivity":
        alone = prunable_layers(model, example, alone=True)
        for key, given in (("prune.layers", p.layers), ("prune.skip", p.skip)):
            unknown = [n for n in list(given) if n not in alone]
            if unknown:
                raise UserError(f"{key}: {', '.join(unknown)}: not a layer that can be pruned alone, as a sensitivity "
                                f"analysis prunes each; those that can: {', '.join(alone)}")
        return list(alone)
    return None
