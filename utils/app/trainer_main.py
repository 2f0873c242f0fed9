"""``trainer_exp.py``: train from scratch or from weights, resume, or only evaluate."""

from __future__ import annotations

import contextlib
from pathlib import Path

from torch import nn

from utils.app.setup import build_data, build_model, check_model, make_visdom, seed_everything, select_device
from utils.checkpoint.export import export_model
from utils.checkpoint.format import model_size_kb
from utils.checkpoint.load import load_toolkit_checkpoint
from utils.config.schema import ExperimentConfig
from utils.core import distributed
from utils.core.errors import UserError
from utils.core.provenance import provenance
from utils.core.rundir import RunDir
from utils.train.engine import evaluate
from utils.train.fit import Loaders, RunTarget, fit, resume_point


def main(cfg: ExperimentConfig, *, gpu: int | None = None, visdom: bool = False, resume: str | None = None,
         evaluate_only: bool = False, export: tuple[str, ...] = ()) -> int:
    with contextlib.ExitStack() as held:  # the run directory, held from before its first write to the end
        return run_training(cfg, held, gpu=gpu, visdom=visdom, resume=resume, evaluate_only=evaluate_only,
                            export=export)


def run_training(cfg: ExperimentConfig, held: contextlib.ExitStack, *, gpu: int | None, visdom: bool,
                 resume: str | None, evaluate_only: bool, export: tuple[str, ...]) -> int:
    """Train (a new run, or on from ``resume``) or only evaluate; the run directory is held
    (:meth:`~utils.core.rundir.RunDir.hold`) on ``held`` once it is known."""
    if export and evaluate_only and resume is None:
        raise UserError("--export with --evaluate exports the checkpoint given with --resume, beside it; add "
                        "--resume CKPT")
    device = select_device(gpu)
    seed_everything(cfg.seed)
    data = build_data(cfg, train=not evaluate_only, device=device, channels_last=cfg.train.channels_last)
    if resume is not None:
        loaded = load_toolkit_checkpoint(resume, expect_arch=cfg.model.arch, num_classes=data.num_classes)
    else:
        loaded = build_model(cfg, data.num_classes)
    check_model(loaded.model, data, cfg)  # before the run directory: a model the images do not fit
    model = loaded.model.to(device)

    if evaluate_only:
        stats = evaluate(model, data.test_loader, nn.CrossEntropyLoss(), device)
        source = resume or cfg.model.checkpoint or "untrained weights"
        print(f"[Test] {source}: Top1: {stats['top1']:.4f}, Top5: {stats['top5']:.4f}, Loss: {stats['loss']:.4f}")
        if export and distributed.is_main():
            path = Path(resume)
            export_model(model, loaded.checkpoint, path.parent, path.stem, export, data.input_size)
        return 0

    if cfg.train.epochs == 0:
        raise UserError("train.epochs is 0: nothing to train; set train.epochs, or use --evaluate to only test")
    if resume is not None:
        run = RunDir(Path(resume).resolve().parent)
        ckpt = loaded.checkpoint or {}
        if ckpt.get("expanded_from", {}).get("training_state") is False:
            raise UserError(f"--resume {resume}: a compressed checkpoint without the optimizer and RNG state cannot "
                            "continue a run; resume from the run's last.pth, or train on from it with "
                            "model.checkpoint")
        saved_train = (ckpt.get("config") or {}).get("train")
        if saved_train is not None and saved_train != cfg.to_dict()["train"]:
            print(f"note: the train section differs from the one {resume} was trained with; continuing with the "
                  "experiment file's")
        held.enter_context(run.hold())
        print(f"{resume_point(resume, ckpt)} in {run.path}")
    else:
        run = RunDir.create(cfg.output.dir, cfg.name, overwrite=cfg.output.overwrite)
        print(f"Run directory: {run.path}")
        held.enter_context(run.hold())
    config = {**cfg.to_dict(), "provenance": provenance(device)}
    if resume is None:
        run.write_json("config.json", config)
    logger = make_visdom(cfg, visdom)
    target = RunTarget(run=run, arch=loaded.arch, config=config, seed=cfg.seed, print_freq=cfg.print_freq,
                       visdom=logger)
    result = fit(model, loaders=Loaders(train=data.train_loader, test=data.test_loader), optim=cfg.train,
                 device=device, target=target, masks=loaded.masks,
                 resume=loaded.checkpoint if resume is not None else None)
    if result.epochs_run:
        print(f"\nAverage test accuracy: {result.average_top1:.4f}")
        print(f"Best test accuracy: {result.best_top1:.4f}")
    print(f"Model size: {model_size_kb(model):.0f} Kb")
    print(f"Checkpoints: {run / 'last.pth'}, {run / 'best.pth'}")
    if export and distributed.is_main():  # the best epoch's model, as a user ships it (rank 0 alone wrote it)
        best = load_toolkit_checkpoint(run / "best.pth")
        export_model(best.model, best.checkpoint, run.path, "best", export, data.input_size)
    return 0
