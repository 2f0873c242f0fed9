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
import csv
import dataclasses
import importlib.util
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning import (
    FilterPruneResult,
    analyse,
    apply_masks,
    compute_masks,
    format_sweep_table,
    prunable_layers,
    prunable_weights,
    prune_filters,
    prune_weights,
    sparsity_report,
)
from pruning.filter import filter_masks, masked_filters, plan_filters, remove_filters, select_filters
from pruning.schedule import agp_plan, epochs_per_round, round_ratios, scheduled_count
from pruning.sensitivity import layer_sensitivity
from pruning.weight import prune_weights_further
from utils.app.setup import Data, build_data, build_model, make_visdom, seed_everything, select_device
from utils.checkpoint.export import export_model
from utils.checkpoint.format import make_checkpoint, model_size_kb
from utils.checkpoint.load import LoadedModel, load_toolkit_checkpoint
from utils.config.schema import ExperimentConfig, OptimConfig, from_dict
from utils.core import distributed
from utils.core.choices import EXPORT_FORMATS
from utils.core.errors import UserError
from utils.core.files import atomic_torch_save
from utils.core.provenance import provenance
from utils.core.rundir import RunDir
from utils.report.plots import plot_lines
from utils.report.profile import compare_latency, profile_model, reduction
from utils.train.engine import evaluate
from utils.train.fit import FitResult, Loaders, RunTarget, ScheduleHooks, StepHook, fit, resume_point
from utils.train.interrupt import RunInterrupted


@dataclass
class Session:
    """Everything a runner needs, built once by :func:`main`."""

    cfg: ExperimentConfig
    device: torch.device
    data: Data
    loaded: LoadedModel
    run: RunDir
    config: dict[str, Any]  # the resolved config with provenance, as saved in config.json and checkpoints
    logger: Any
    prepared: Any = None  # what prepare_pruning found while checking the spec (see there)
    resuming: bool = False  # --resume: retraining goes on from the last.pth files already in ``run``
    export: tuple[str, ...] = ()  # --export: formats to write the final model(s) in (:func:`export_final`)

    def evaluate(self, model: nn.Module, desc: str) -> dict[str, float]:
        return evaluate(model, self.data.test_loader, nn.CrossEntropyLoss(), self.device, desc=desc)

    def finetune(self, model: nn.Module, *, run: RunDir, arch: dict[str, Any], masks: dict[str, torch.Tensor] | None,
                 prefix: str = "", extra: dict[str, Any] | None = None, optim: OptimConfig | None = None,
                 on_step: StepHook | None = None, epoch_offset: int = 0, best_after: int = 0) -> FitResult:
        """Retrain ``model`` (``optim``: default ``retrain``) into ``run``; the rest goes to :func:`fit`.

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
              + ("; pruned weights held at zero)" if masks else ")"))
        try:
            target = RunTarget(run=run, arch=arch, config=self.config, seed=cfg.seed, metrics_run=self.run,
                               extra_record=extra, print_freq=cfg.print_freq,
                               visdom=make_visdom(cfg, self.logger.active, title_prefix=prefix))
            return fit(model, loaders=Loaders(train=self.data.train_loader, test=self.data.test_loader),
                       optim=optim, device=self.device, target=target, masks=masks, resume=resume,
                       schedule=ScheduleHooks(on_step=on_step, epoch_offset=epoch_offset, best_after=best_after))
        except RunInterrupted as exc:
            exc.resume = self.run.path  # a pruning run resumes as a whole, from its directory
            raise

    def save_pruned(self, model: nn.Module, path: str, *, arch: dict[str, Any], masks: dict[str, torch.Tensor] | None,
                    metrics: dict[str, float]) -> str:
        ckpt = make_checkpoint(model=model, arch=arch, config=self.config, masks=masks, metrics=metrics,
                               device=self.device)
        atomic_torch_save(ckpt, self.run / path)
        return str(self.run / path)


RUNNERS: dict[str, Callable[[Session], None]] = {}


def register_runner(name: str) -> Callable[[Callable[[Session], None]], Callable[[Session], None]]:
    def decorator(fn: Callable[[Session], None]) -> Callable[[Session], None]:
        RUNNERS[name] = fn
        return fn

    return decorator


def runner_names() -> list[str]:
    return sorted(RUNNERS)


def main(cfg: ExperimentConfig, *, gpu: int | None = None, visdom: bool = False, resume: str | None = None,
         export: tuple[str, ...] = ()) -> int:
    if cfg.prune.method not in RUNNERS:
        raise UserError(f"prune.method: unknown method {cfg.prune.method!r}; known: {', '.join(runner_names())}")
    check_export(cfg, export)
    if cfg.model.checkpoint is None and not cfg.model.pretrained:
        raise UserError("pruning needs trained weights: set model.checkpoint (e.g. checkpoints/<run>/best.pth) or "
                        "model.pretrained: true for torchvision models")
    if resume is not None:
        run = open_run_to_resume(resume, cfg)
    device = select_device(gpu)
    seed_everything(cfg.seed)
    retrains = cfg.retrain.epochs > 0 and cfg.prune.method != "sensitivity"
    data = build_data(cfg, train=retrains, device=device, channels_last=cfg.retrain.channels_last)
    loaded = build_model(cfg, data.num_classes)
    loaded.model.to(device)
    prepared = prepare_pruning(cfg, loaded.model, _example_input(data.input_size, device))
    if retrains and cfg.prune.schedule == "agp":
        _agp_plan(cfg, data, 1.0)  # a frequency that leaves no pruning step is an error before the run directory
    config = {**cfg.to_dict(), "provenance": provenance(device)}
    if resume is None:
        run = RunDir.create(cfg.output.dir, cfg.name, overwrite=cfg.output.overwrite)
        print(f"Run directory: {run.path}")
        run.write_json("config.json", config)
    else:
        print(f"Resuming the run in {run.path}: pruning again, retraining from its checkpoints")
        run.append_metrics({"phase": "resumed", "provenance": config["provenance"]})
    session = Session(cfg=cfg, device=device, data=data, loaded=loaded, run=run, config=config,
                      logger=make_visdom(cfg, visdom), prepared=prepared, resuming=resume is not None,
                      export=tuple(dict.fromkeys(export)))
    RUNNERS[cfg.prune.method](session)
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


def prepare_pruning(cfg: ExperimentConfig, model: nn.Module, example: torch.Tensor) -> Any:
    """Raise the UserError a filter/sensitivity run would raise for its layer spec (unknown layer, too many
    filters, coupled layers, a layer that cannot be pruned alone), before the run directory exists: a mistake
    then leaves no half-made run behind and costs no evaluation first.

    A filter spec is checked by applying it to a copy of ``model`` (the model itself is not touched); that
    pruned copy and its outcome are returned for the run to use, so the pruning is done once; for a sensitivity
    spec, the layers that can be pruned alone.
    """
    p = cfg.prune
    if p.method == "filter":
        pruned = copy.deepcopy(model)
        return pruned, prune_filters(pruned, **_filter_options(cfg), example_input=example)
    elif p.method == "sensitivity":
        alone = prunable_layers(model, example, alone=True)
        for key, given in (("prune.layers", p.layers), ("prune.skip", p.skip)):
            unknown = [n for n in list(given) if n not in alone]
            if unknown:
                raise UserError(f"{key}: {', '.join(unknown)}: not a layer that can be pruned alone, as a sensitivity "
                                f"analysis prunes each; those that can: {', '.join(alone)}")
        return list(alone)
    return None


# ---------------------------------------------------------------------------------------------------------------
# --export: the final model of every sweep row (weight) or of the run (filter) in other forms

EXPORTABLE = ("weight", "filter")  # the methods that end with a model to export


def check_export(cfg: ExperimentConfig, export: Sequence[str]) -> None:
    """Raise the UserError ``--export`` would meet, before any work: the run directory does not exist yet.

    Only a missing ``onnx`` is checked this early; onnxruntime is optional (without it the file is written
    unchecked, and the report says so).
    """
    if not export:
        return
    if cfg.prune.method not in EXPORTABLE:
        raise UserError(f"--export applies to weight and filter pruning; prune.method {json.dumps(cfg.prune.method)} "
                        "ends with no model to export: leave out --export")
    if "onnx" in export and importlib.util.find_spec("onnx") is None:
        raise UserError("--export onnx needs the optional package 'onnx', which is not installed; run `pip install "
                        "onnx onnxruntime`, or leave out onnx")


def export_final(s: Session, checkpoint: str | Path) -> dict[str, Any]:
    """Write the model saved in ``checkpoint`` in each ``--export`` format beside it, named after it (``last.pth``:
    ``last.sparse.pth``, ``last.fp16.sparse.pth``, ``last.onnx``); return what ``results.json`` records.

    The model is read back from the file, not taken from memory: the export is what the checkpoint holds, and a
    resumed run whose retraining was complete exports the same model. The record: ``{"checkpoint",
    "checkpoint_file_bytes" (that file as written, optimizer state included), "compressed" / "compressed-fp16":
    {"path", "file_bytes", "dense_file_bytes" (the same checkpoint written by torch.save without the optimizer and
    RNG state, which the compressed file leaves out too), "percent_of_dense", "encodings" (tensors per encoding),
    "layers" ({weight: encoding} of the prunable weights, read back from the file)}, "onnx": the report of
    :func:`utils.checkpoint.export.export_onnx`}``. Under torchrun rank 0 alone exports (it alone writes files).
    """
    path = Path(checkpoint)
    record: dict[str, Any] = {"checkpoint": str(path)}
    if not distributed.is_main():
        return record
    loaded = load_toolkit_checkpoint(path, expect_arch=s.cfg.model.arch)
    record["checkpoint_file_bytes"] = path.stat().st_size
    reports = export_model(loaded.model, loaded.checkpoint, path.parent, path.stem, s.export, s.data.input_size)
    for fmt, report in reports.items():
        if fmt.startswith("compressed"):
            report = {**report, "percent_of_dense": 100 * report["file_bytes"] / report["dense_file_bytes"],
                      "layers": _stored_encodings(report["path"], prunable_weights(loaded.model))}
        record[fmt] = report
    return record


def _stored_encodings(path: str, names: Iterable[str]) -> dict[str, str]:
    """The encoding the compressed file ``path`` stores each of ``names`` in, read back from the file: ``dense``,
    ``bitmask`` or ``indices/<gap type>`` (``indices/uint8``: one byte per non-zero value)."""
    tensors = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]["tensors"]
    found = {}
    for name in names:
        entry = tensors[name]
        gaps = entry.get("gaps")
        found[name] = entry["encoding"] + (f"/{str(gaps.dtype).removeprefix('torch.')}" if gaps is not None else "")
    return found


@contextlib.contextmanager
def _results_kept_on_error(s: Session) -> Iterator[None]:
    """Around the exports, which run after the results are saved: a failing one (onnxruntime disagrees with
    PyTorch, the disk is full) also says that the run's results are kept, and how to export again."""
    try:
        yield
    except UserError as exc:
        raise UserError(f"{exc} (--export, after the run: its results are saved, without the export, in "
                        f"{s.run / 'results.md'} and results.json; --resume {s.run.path} --export "
                        f"{' '.join(s.export)} exports again without retraining)") from None


def _compressed_formats(records: list[dict[str, Any]]) -> list[str]:
    return [fmt for fmt in EXPORT_FORMATS if fmt.startswith("compressed") and any(fmt in r for r in records)]


def format_export_sweep_rows(rows: list[dict[str, Any]]) -> str:
    """Lines to append to the sweep table with each row's exports (nothing without ``--export``): the dense
    checkpoint's bytes, each compressed file's bytes and share of them, the ONNX file's bytes and its largest
    difference from PyTorch under onnxruntime. The baseline is not exported ("-")."""
    records = [row.get("export") or {} for row in rows]

    def line(label: str, fmt: str, show: Callable[[dict[str, Any]], str]) -> str:
        return "\n| " + " | ".join([label, "-", *(show(r[fmt]) if fmt in r else "-" for r in records)]) + " |"

    compressed = _compressed_formats(records)
    out = ""
    if compressed:
        out += line("checkpoint, dense (bytes)", compressed[0], lambda e: f"{e['dense_file_bytes']:,}")
    for fmt in compressed:
        out += line(f"{fmt} (bytes, % of dense)", fmt, lambda e: f"{e['file_bytes']:,} ({e['percent_of_dense']:.1f}%)")
    if any("onnx" in r for r in records):
        out += line("onnx (bytes)", "onnx", lambda e: f"{e['bytes']:,}")
        out += line("onnx max abs diff", "onnx", lambda e: f"{e['max_abs_diff']:.1e}" if e["checked"] else "unchecked")
    return out


ENCODING_LEGEND = ("bitmask: 1 bit per weight, then the non-zero values; indices/uint8 (int16, ...): per non-zero "
                   "value the number of zeros before it, in that type, then the values; dense: every value.")


def format_encoding_tables(rows: list[dict[str, Any]]) -> str:
    """Per compressed format, the encoding each prunable weight is stored in, one column per ratio."""
    records = [row.get("export") or {} for row in rows]
    parts = []
    for fmt in _compressed_formats(records):
        names = next(r[fmt]["layers"] for r in records if fmt in r)
        header = ["layer", *(f"{row['prune_percent']:g}" for row in rows)]
        lines = [f"### Encoding per layer, {fmt}", "", ENCODING_LEGEND, "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join([name, *(r[fmt]["layers"][name] if fmt in r else "-" for r in records)]) + " |"
                  for name in names]
        parts.append("\n".join(lines) + "\n")
    return "".join("\n" + part for part in parts)


def format_export_table(record: dict[str, Any]) -> str:
    """A filter run's exports in markdown: each file's bytes, against the dense checkpoint's or PyTorch's output."""
    if not any(fmt in record for fmt in EXPORT_FORMATS):
        return ""  # nothing exported (a torchrun rank other than 0)
    source = Path(record["checkpoint"]).name
    lines = ["", f"### Exports of {source}", "", "| format | file | bytes | |", "|---|---|---|---|"]
    compressed = _compressed_formats([record])
    if compressed:
        dense = record[compressed[0]]["dense_file_bytes"]
        lines.append(f"| dense | {source} without its optimizer and RNG state | {dense:,} | 100% |")
    for fmt in compressed:
        e = record[fmt]
        share = f"{e['percent_of_dense']:.1f}% of dense"
        lines.append(f"| {fmt} | {Path(e['path']).name} | {e['file_bytes']:,} | {share} |")
    if "onnx" in record:
        e = record["onnx"]
        check = f"max abs diff {e['max_abs_diff']:.1e} from PyTorch" if e["checked"] else "unchecked (no onnxruntime)"
        lines.append(f"| onnx | {Path(e['path']).name} | {e['bytes']:,} | {check} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Magnitude weight pruning: a sweep over ratios


def format_layer_sweep_table(rows: list[dict[str, Any]]) -> str:
    """Per-layer sparsity (%) with one column per ratio: the layers a user may want to spare stand out."""
    if not rows:
        return ""
    layers = rows[0]["sparsity"]["layers"]
    header = ["layer", "kind", "weights"] + [f"{row['prune_percent']:g}" for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, info in layers.items():
        cells = [name, info["kind"], str(info["numel"])]
        cells += [f"{100 * row['sparsity']['layers'][name]['sparsity']:.1f}" for row in rows]
        lines.append("| " + " | ".join(cells) + " |")
    totals = ["**all conv**", "conv", ""], ["**all fc**", "fc", ""]
    for cells, kind in zip(totals, ("conv", "fc"), strict=True):
        if rows[0]["sparsity"].get(kind) is not None:
            lines.append("| " + " | ".join(cells + [f"{100 * row['sparsity'][kind]:.1f}" for row in rows]) + " |")
    return "\n".join(lines)


@register_runner("weight")
def run_weight_sweep(s: Session) -> None:
    cfg, original = s.cfg, s.loaded.model
    base = s.evaluate(original, "baseline")
    baseline = {"top1": base["top1"], "top5": base["top5"], "loss": base["loss"],
                "size_kb": model_size_kb(original), "sparsity": _summary(sparsity_report(original))}
    print(f"Baseline: Top1 {base['top1']:.2f}, Top5 {base['top5']:.2f}, Loss {base['loss']:.4f}")
    s.run.append_metrics({"phase": "baseline", **base})

    schedule = cfg.prune.schedule
    rows: list[dict[str, Any]] = []
    for percent in cfg.prune.percent:
        model = copy.deepcopy(original)  # every ratio runs its whole schedule from the unpruned weights
        rows.append(WEIGHT_SCHEDULES[schedule](s, model, percent))

    if s.export:
        _write_weight_results(s, baseline, rows)  # first, so that a failing export loses none of the run
        with _results_kept_on_error(s):
            for row in rows:
                row["export"] = export_final(s, _weight_final_checkpoint(s, row))
    table, printed = _write_weight_results(s, baseline, rows)
    print(printed)
    ratios = [r["prune_percent"] for r in rows]
    s.logger.log_sweep(ratios, [r["top1"] for r in rows])
    if cfg.retrain.epochs > 0:
        s.logger.log_sweep(ratios, [r["top1_finetuned"] for r in rows], name="top1 (fine-tuned)")
    s.logger.log_text(table)
    print(f"Results: {s.run / 'results.md'}, {s.run / 'results.json'}")


def _write_weight_results(s: Session, baseline: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[str, str]:
    """Write ``results.md`` and ``results.json`` of a sweep; return the sweep table and the text to print."""
    cfg, schedule = s.cfg, s.cfg.prune.schedule
    table = format_sweep_table(baseline["top1"], rows)
    if schedule != "one_shot":  # the earlier rounds / steps were retrained: the first row is not "without" it
        table = table.replace("| top1 (without fine-tune) |", "| top1 (at the last pruning step) |", 1)
    table += format_export_sweep_rows(rows)
    layer_table = format_layer_sweep_table(rows)
    title = f"## {cfg.name}: {cfg.model.arch}, weight pruning, scope {cfg.prune.scope}{_schedule_title(cfg)}"
    rounds = format_rounds_tables(rows)
    encodings = format_encoding_tables(rows)
    s.run.write_text("results.md", f"{title}\n\n{table}\n\n{rounds}### Per-layer sparsity (%)\n\n{layer_table}\n"
                                   f"{encodings}")
    s.run.write_json("results.json", {"name": cfg.name, "arch": cfg.model.arch, "method": "weight",
                                      "scope": cfg.prune.scope, "schedule": _schedule_record(cfg),
                                      "baseline": baseline, "rows": rows,
                                      "provenance": s.config["provenance"], "seed": cfg.seed})
    return table, f"\n{title}\n\n{table}\n\n{rounds}Per-layer sparsity (%):\n\n{layer_table}\n{encodings}"


def _weight_final_checkpoint(s: Session, row: dict[str, Any]) -> Path:
    """The file of the model a sweep row ends with: ``p<ratio>/last.pth`` after retraining (every schedule writes
    its final model there), else the pruned model, ``p<ratio>/pruned.pth``."""
    return s.run / f"p{row['prune_percent']:g}" / "last.pth" if s.cfg.retrain.epochs > 0 else Path(row["checkpoint"])


def _weight_one_shot(s: Session, model: nn.Module, percent: float) -> dict[str, Any]:
    """Prune once to ``percent``, evaluate, save ``p<ratio>/pruned.pth``, retrain ``retrain.epochs``."""
    cfg = s.cfg
    outcome = prune_weights(model, percent=percent, scope=cfg.prune.scope)
    stats = s.evaluate(model, f"pruned {percent:g}")
    report = sparsity_report(model)
    print(f"Pruned {percent:g}: Top1 {stats['top1']:.2f}, Top5 {stats['top5']:.2f}, Loss {stats['loss']:.4f}, "
          f"conv sparsity {_pct(report.get('conv'))}, fc sparsity {_pct(report.get('fc'))}")
    s.run.append_metrics({"phase": "pruned", "prune_percent": percent, **stats})
    masks = dict(outcome.masks)
    row: dict[str, Any] = {
        "prune_percent": percent, "top1": stats["top1"], "top5": stats["top5"], "loss": stats["loss"],
        "thresholds": dict(outcome.thresholds), "sparsity": report,
        "checkpoint": s.save_pruned(model, f"p{percent:g}/pruned.pth", arch=s.loaded.arch, masks=masks,
                                    metrics=stats),
    }
    if cfg.retrain.epochs > 0:
        result = s.finetune(model, run=RunDir(s.run / f"p{percent:g}"), arch=s.loaded.arch, masks=masks,
                            prefix=f"p{percent:g} ", extra={"prune_percent": percent})
        _add_finetuned(row, result, model)
    return row


def _add_finetuned(row: dict[str, Any], result: FitResult, model: nn.Module) -> None:
    row.update(top1_finetuned=result.last["top1"], top5_finetuned=result.last["top5"],
               best_top1_finetuned=result.best_top1, average_top1_finetuned=result.average_top1,
               sparsity_finetuned=_summary(sparsity_report(model)))
    print(f"Average test accuracy: {result.average_top1:.4f}")


def _weight_iterative(s: Session, model: nn.Module, percent: float) -> dict[str, Any]:
    """``prune.rounds`` rounds of pruning to the next ratio of the cubic ramp and retraining ``epochs / rounds``.

    Round ``i`` of ``R`` writes ``p<ratio>/round<i>/`` (``pruned.pth``, ``last.pth``, ``best.pth``), the last round
    ``p<ratio>/`` itself, so the final model is where a one-shot run puts it. Resuming: each round prunes again
    from the weights the round before ended with (its ``last.pth``; deterministic), and retraining goes on from the
    round's own ``last.pth`` when there is one, so a complete round is not retrained.
    """
    cfg, p = s.cfg, s.cfg.prune
    per_round = epochs_per_round(cfg.retrain.epochs, p.rounds)
    optim = dataclasses.replace(cfg.retrain, epochs=per_round)
    folder = f"p{percent:g}"
    masks: dict[str, torch.Tensor] | None = None
    rounds: list[dict[str, Any]] = []
    for i, ratio in enumerate(round_ratios(percent, p.rounds), start=1):
        where = folder if i == p.rounds else f"{folder}/round{i}"
        if masks is None:
            outcome = prune_weights(model, percent=ratio, scope=p.scope)
        else:
            outcome = prune_weights_further(model, masks, percent=ratio, scope=p.scope)
        masks = dict(outcome.masks)
        stats = s.evaluate(model, f"pruned {percent:g}, round {i}")
        report = sparsity_report(model)
        print(f"Pruned {percent:g}, round {i}/{p.rounds} to {ratio:.4g}: Top1 {stats['top1']:.2f}, "
              f"Top5 {stats['top5']:.2f}, Loss {stats['loss']:.4f}, conv sparsity {_pct(report.get('conv'))}, "
              f"fc sparsity {_pct(report.get('fc'))}")
        s.run.append_metrics({"phase": "pruned", "prune_percent": percent, "round": i, "ratio": ratio, **stats})
        checkpoint = s.save_pruned(model, f"{where}/pruned.pth", arch=s.loaded.arch, masks=masks, metrics=stats)
        result = s.finetune(model, run=RunDir(s.run / where), arch=s.loaded.arch, masks=masks,
                            prefix=f"{folder} round {i} ", extra={"prune_percent": percent, "round": i},
                            optim=optim, epoch_offset=(i - 1) * per_round)
        masks = result.masks
        record = {"round": i, "ratio": ratio, "top1": stats["top1"], "top5": stats["top5"], "loss": stats["loss"],
                  "top1_finetuned": result.last["top1"], "top5_finetuned": result.last["top5"],
                  "thresholds": dict(outcome.thresholds), "sparsity": _summary(report), "checkpoint": checkpoint}
        s.run.append_metrics({"phase": "round", "prune_percent": percent,
                              **{k: v for k, v in record.items() if k != "checkpoint"}})
        rounds.append(record)
    row: dict[str, Any] = {"prune_percent": percent, "top1": stats["top1"], "top5": stats["top5"],
                           "loss": stats["loss"], "thresholds": dict(outcome.thresholds), "sparsity": report,
                           "checkpoint": checkpoint}
    _add_finetuned(row, result, model)
    row["rounds"] = rounds
    return row


def _weight_agp(s: Session, model: nn.Module, percent: float) -> dict[str, Any]:
    """One retraining of ``retrain.epochs`` that prunes to the cubic ramp every ``prune.frequency`` steps.

    ``p<ratio>/pruned.pth`` is the model at the last pruning step (the final sparsity reached, before the rest of
    the retraining), evaluated there; ``last.pth`` and ``best.pth`` as for one-shot, ``best.pth`` only among the
    epochs that end at the final sparsity. Resuming goes on from ``last.pth``: its masks are the current ones and
    the ramp is a function of the step, so the pruning steps still to come are those of the uninterrupted run.
    """
    cfg, p = s.cfg, s.cfg.prune
    folder = f"p{percent:g}"
    plan = _agp_plan(cfg, s.data, percent)

    def on_step(step: int, masks: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        k = plan.pruning_step(step)
        if k is None:
            return None
        assert masks is not None  # fit starts with the all-kept masks below
        ratio = plan.ratio_at(step)
        outcome = prune_weights_further(model, masks, percent=ratio, scope=p.scope)
        s.run.append_metrics({"phase": "agp", "prune_percent": percent, "step": step, "pruning_step": k,
                              "ratio": ratio, "thresholds": dict(outcome.thresholds)})
        if step == plan.last_step:
            stats = s.evaluate(model, f"pruned {percent:g} at step {step}")
            model.train()  # back to training for the rest of the epoch
            metrics = {**stats, "ratio": ratio, "step": step, "thresholds": dict(outcome.thresholds)}
            s.save_pruned(model, f"{folder}/pruned.pth", arch=s.loaded.arch, masks=dict(outcome.masks),
                          metrics=metrics)
            print(f"Pruned {percent:g} at step {step} ({k}/{plan.steps} pruning steps): Top1 {stats['top1']:.2f}, "
                  f"Top5 {stats['top5']:.2f}, Loss {stats['loss']:.4f}", flush=True)
        return dict(outcome.masks)

    start = compute_masks(model, 0.0, p.scope).masks  # all kept: the ramp starts at 0
    print(f"Pruning {percent:g} gradually: {plan.steps} pruning steps, every {plan.frequency} of the "
          f"{plan.total_steps} optimizer steps, the last at step {plan.last_step}")
    result = s.finetune(model, run=RunDir(s.run / folder), arch=s.loaded.arch, masks=start,
                        prefix=f"{folder} ", extra={"prune_percent": percent}, on_step=on_step,
                        best_after=plan.first_epoch_at_final(len(s.data.train_loader)))
    pruned_path = s.run / f"{folder}/pruned.pth"
    at_last = _load_reached(pruned_path, s.cfg.model.arch)  # written by this run, or before it was resumed
    row: dict[str, Any] = {"prune_percent": percent, "top1": at_last["metrics"]["top1"],
                           "top5": at_last["metrics"]["top5"], "loss": at_last["metrics"]["loss"],
                           "thresholds": at_last["metrics"]["thresholds"], "sparsity": at_last["sparsity"],
                           "checkpoint": str(pruned_path)}
    _add_finetuned(row, result, model)
    row["agp"] = {"pruning_steps": plan.steps, "frequency": plan.frequency, "last_step": plan.last_step,
                  "total_steps": plan.total_steps, "end": p.agp_end}
    return row


WEIGHT_SCHEDULES: dict[str, Callable[[Session, nn.Module, float], dict[str, Any]]] = {
    "one_shot": _weight_one_shot, "iterative": _weight_iterative, "agp": _weight_agp}


def _load_reached(path: Any, arch: str) -> dict[str, Any]:
    """The metrics and sparsity of the model an AGP run saved at its last pruning step."""
    loaded = load_toolkit_checkpoint(path, expect_arch=arch)
    return {"metrics": loaded.checkpoint["metrics"], "sparsity": sparsity_report(loaded.model)}


def _agp_plan(cfg: ExperimentConfig, data: Data, final: float) -> Any:
    return agp_plan(final, epochs=cfg.retrain.epochs, steps_per_epoch=len(data.train_loader),
                    frequency=cfg.prune.frequency, end=cfg.prune.agp_end)


def _schedule_title(cfg: ExperimentConfig) -> str:
    p = cfg.prune
    if p.schedule == "iterative":
        per_round = cfg.retrain.epochs // p.rounds
        return f", iterative: {p.rounds} rounds of {per_round} epoch{'s' if per_round > 1 else ''} retraining"
    if p.schedule == "agp":
        return (f", AGP: pruning every {p.frequency} steps over the first {p.agp_end:g} of {cfg.retrain.epochs} "
                "epochs retraining")
    return ""


def _schedule_record(cfg: ExperimentConfig) -> dict[str, Any]:
    p = cfg.prune
    record: dict[str, Any] = {"name": p.schedule, "retrain_epochs": cfg.retrain.epochs}
    if p.schedule == "iterative":
        record.update(rounds=p.rounds, epochs_per_round=cfg.retrain.epochs // p.rounds)
    elif p.schedule == "agp":
        record.update(frequency=p.frequency, agp_end=p.agp_end)
    return record


def format_rounds_tables(rows: list[dict[str, Any]]) -> str:
    """Per ratio of an iterative sweep: each round's ratio and top-1 after pruning and after retraining."""
    parts = []
    for row in rows:
        if not row.get("rounds"):
            continue
        lines = [f"### Rounds of {row['prune_percent']:g}", "",
                 "| round | ratio | top1 after pruning | top1 after retraining |", "|---|---|---|---|"]
        lines += [f"| {r['round']} | {r['ratio']:.4g} | {r['top1']:.2f} | {r['top1_finetuned']:.2f} |"
                  for r in row["rounds"]]
        parts.append("\n".join(lines) + "\n\n")
    return "".join(parts)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "layers"}


# ---------------------------------------------------------------------------------------------------------------
# L1-norm filter pruning with physical removal


def _example_input(input_size: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    return torch.zeros(1, *input_size, device=device)  # shapes only; no draw from the global RNG


def _filter_options(cfg: ExperimentConfig) -> dict[str, Any]:
    p = cfg.prune
    return {"layers": list(p.layers), "channels": p.channels, "ratios": p.ratios, "strategy": p.strategy,
            "skip": list(p.skip)}


def format_before_after(before: dict[str, Any], after: dict[str, Any], reduction: dict[str, Any]) -> str:
    """The filter-pruning report as a markdown table: one row per measure, before / after / change
    (relative for costs, in points for accuracy)."""
    lines = ["| | before | after | change |", "|---|---|---|---|"]
    for label, key in (("parameters", "params"), ("MACs", "macs"), ("size (KB)", "size_kb")):
        lines.append(f"| {label} | {before[key]:,.0f} | {after[key]:,.0f} | {-reduction[key]:+.1f}% |")
    for label, key in (("top-1 (%)", "top1"), ("top-5 (%)", "top5")):
        lines.append(f"| {label} | {before[key]:.2f} | {after[key]:.2f} | {after[key] - before[key]:+.2f} points |")
    for batch, ms in before.get("latency_ms", {}).items():
        lines.append(f"| latency, batch {batch} (ms, {before.get('device', '?')}) | {ms:.2f} | "
                     f"{after['latency_ms'][batch]:.2f} | {-reduction['latency_ms'][batch]:+.1f}% |")
    return "\n".join(lines)


@dataclass
class FilterDone:
    """What a filter schedule leaves for the report: the final (physically smaller) model and its numbers.

    ``outcome``: widths and removed filters relative to the original model, over the whole schedule; ``pruned``:
    test metrics right after the last pruning step (before the retraining that follows it); ``checkpoint``: the
    model saved there (``pruned.pth``); ``final_checkpoint``: the file that holds ``model`` (``pruned.pth`` without
    retraining, ``last.pth`` after it, ``final.pth`` for ``agp``: what ``--export`` writes); ``extra``: schedule
    details for ``results.json``.
    """

    model: nn.Module
    outcome: Any
    pruned: dict[str, float]
    checkpoint: str
    final_checkpoint: str
    final: dict[str, float]
    average: float | None
    extra: dict[str, Any]


def _print_widths(widths: dict[str, tuple[int, int]]) -> None:
    for layer, (old, new) in widths.items():
        print(f"  {layer}: {old} -> {new} filters")


def _filter_one_shot(s: Session) -> FilterDone:
    """The spec applied at once (``prepare_pruning`` already did it on a copy), evaluated, retrained."""
    cfg = s.cfg
    model, outcome = s.prepared
    arch = {**s.loaded.arch, "shapes": outcome.shapes}
    _print_widths(outcome.widths)
    pruned = s.evaluate(model, "pruned")
    print(f"Pruned, before retraining: Top1 {pruned['top1']:.2f}, Top5 {pruned['top5']:.2f}, "
          f"Loss {pruned['loss']:.4f}")
    s.run.append_metrics({"phase": "pruned", **pruned})
    checkpoint = s.save_pruned(model, "pruned.pth", arch=arch, masks=None, metrics=pruned)

    final, average, final_checkpoint = pruned, None, checkpoint
    if cfg.retrain.epochs > 0:
        result = s.finetune(model, run=s.run, arch=arch, masks=None, prefix="retrain ")
        final, average, final_checkpoint = result.last, result.average_top1, str(s.run / "last.pth")
        print(f"\nAverage test accuracy: {average:.4f}")
    return FilterDone(model=model, outcome=outcome, pruned=pruned, checkpoint=checkpoint,
                      final_checkpoint=final_checkpoint, final=final, average=average, extra={})


def _filter_iterative(s: Session) -> FilterDone:
    """``prune.rounds`` rounds: remove filters physically up to the round's count, retrain ``epochs / rounds``.

    Each layer's count follows the cubic ramp to the one-shot count (``ceil(fraction * count)``), ranked by L1 on
    the current weights of the already smaller model; each round is its own ``fit`` (a fresh optimizer for the
    new shapes). Round ``i`` writes ``round<i>/`` (``pruned.pth``, ``last.pth``, ``best.pth``), the last round
    the run directory itself, as a one-shot run. Resuming: as for weight pruning, each round prunes again from
    the weights the round before ended with and retraining goes on from the round's ``last.pth``.
    """
    cfg, p = s.cfg, s.cfg.prune
    _, one_shot = s.prepared  # the spec resolved and checked: which layers, how many filters in the end
    final_counts = {layer: old - new for layer, (old, new) in one_shot.widths.items()}
    alive = {layer: list(range(old)) for layer, (old, _) in one_shot.widths.items()}  # original channel indices
    per_round = epochs_per_round(cfg.retrain.epochs, p.rounds)
    optim = dataclasses.replace(cfg.retrain, epochs=per_round)
    model = copy.deepcopy(s.loaded.model)
    example = _example_input(s.data.input_size, s.device)
    rounds: list[dict[str, Any]] = []
    for i in range(1, p.rounds + 1):
        counts = {layer: scheduled_count(final, i, p.rounds) - (one_shot.widths[layer][0] - len(alive[layer]))
                  for layer, final in final_counts.items()}
        step = prune_filters(model, layers=list(counts), channels=list(counts.values()), strategy=p.strategy,
                             example_input=example)
        for layer, gone in step.removed.items():
            gone_set = set(gone)
            alive[layer] = [c for j, c in enumerate(alive[layer]) if j not in gone_set]
        widths = {layer: len(kept) for layer, kept in alive.items()}
        arch = {**s.loaded.arch, "shapes": step.shapes}
        stats = s.evaluate(model, f"pruned, round {i}")
        print(f"Round {i}/{p.rounds}: " + ", ".join(f"{layer} {n}" for layer, n in widths.items())
              + f" filters. Pruned: Top1 {stats['top1']:.2f}, Top5 {stats['top5']:.2f}, Loss {stats['loss']:.4f}")
        s.run.append_metrics({"phase": "pruned", "round": i, "widths": widths, **stats})
        last = i == p.rounds
        checkpoint = s.save_pruned(model, "pruned.pth" if last else f"round{i}/pruned.pth", arch=arch, masks=None,
                                   metrics=stats)
        result = s.finetune(model, run=s.run if last else RunDir(s.run / f"round{i}"), arch=arch, masks=None,
                            prefix=f"round {i} ", extra={"round": i}, optim=optim,
                            epoch_offset=(i - 1) * per_round)
        record = {"round": i, "widths": widths, "top1": stats["top1"], "top5": stats["top5"], "loss": stats["loss"],
                  "top1_finetuned": result.last["top1"], "top5_finetuned": result.last["top5"]}
        s.run.append_metrics({"phase": "round", **record})
        rounds.append({**record, "checkpoint": checkpoint})
    print(f"\nAverage test accuracy: {result.average_top1:.4f}")
    outcome = FilterPruneResult(
        removed={layer: sorted(set(range(one_shot.widths[layer][0])) - set(kept)) for layer, kept in alive.items()},
        widths={layer: (one_shot.widths[layer][0], len(kept)) for layer, kept in alive.items()},
        modules=one_shot.modules, shapes=step.shapes, strategy=p.strategy)
    return FilterDone(model=model, outcome=outcome, pruned=stats, checkpoint=checkpoint,
                      final_checkpoint=str(s.run / "last.pth"), final=result.last, average=result.average_top1,
                      extra={"rounds": rounds})


def _filter_agp(s: Session) -> FilterDone:
    """One retraining during which the filters are *zeroed* on the cubic ramp, then removed physically.

    Removing filters while training would change the parameters under the optimizer, so the chosen filters are
    masked instead (:func:`pruning.filter.filter_masks`: the masked model computes what the smaller one would) and
    the masks grow every ``prune.frequency`` steps. ``last.pth`` and ``best.pth`` are that full-width training
    state (resumable, evaluable); ``pruned.pth`` is the model at the last pruning step with the filters removed;
    ``final.pth`` the retrained model with the filters removed, the one the report measures.
    """
    cfg = s.cfg
    model = copy.deepcopy(s.loaded.model)
    plan = plan_filters(model, **_filter_options(cfg), example_input=_example_input(s.data.input_size, s.device))
    agp = _agp_plan(cfg, s.data, 1.0)
    finals = {index: count for index, (_, count) in plan.groups.items()}

    def removal_counts(k: int) -> dict[int, int]:
        return {index: scheduled_count(final, k, agp.steps) for index, final in finals.items()}

    def on_step(step: int, masks: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        k = agp.pruning_step(step)
        if k is None:
            return None
        assert masks is not None  # fit starts with the all-kept masks below
        counts = removal_counts(k)
        removed = select_filters(model, plan, counts=counts, first=masked_filters(plan, masks))
        new = filter_masks(model, plan, removed)
        apply_masks(model, new)
        s.run.append_metrics({"phase": "agp", "step": step, "pruning_step": k, "fraction": agp.fraction_at(step),
                              "removed": {layer: counts[index] for index, (layers, _) in plan.groups.items()
                                          for layer in layers}})
        if step == agp.last_step:
            stats = s.evaluate(model, f"pruned at step {step}")
            model.train()  # back to training for the rest of the epoch
            smaller = copy.deepcopy(model)
            done = remove_filters(smaller, plan, removed)
            s.save_pruned(smaller, "pruned.pth", arch={**s.loaded.arch, "shapes": done.shapes}, masks=None,
                          metrics={**stats, "step": step})
            print(f"Pruned at step {step} ({k}/{agp.steps} pruning steps): Top1 {stats['top1']:.2f}, "
                  f"Top5 {stats['top5']:.2f}, Loss {stats['loss']:.4f}", flush=True)
        return new

    print(f"Pruning gradually: {agp.steps} pruning steps, every {agp.frequency} of the {agp.total_steps} "
          f"optimizer steps, the last at step {agp.last_step}")
    result = s.finetune(model, run=s.run, arch=s.loaded.arch, masks=filter_masks(model, plan, {}),
                        prefix="retrain ", on_step=on_step,
                        best_after=agp.first_epoch_at_final(len(s.data.train_loader)))
    print(f"\nAverage test accuracy: {result.average_top1:.4f}")
    assert result.masks is not None
    removed = masked_filters(plan, result.masks)
    if {index: len(gone) for index, gone in removed.items()} != finals:  # an internal invariant of the ramp
        raise RuntimeError(f"filter agp ended with {removed} removed, not the planned counts {finals}")
    outcome = remove_filters(model, plan, removed)
    _print_widths(outcome.widths)
    final = s.evaluate(model, "pruned and retrained, filters removed")
    print(f"Filters removed after retraining: Top1 {final['top1']:.2f}, Top5 {final['top5']:.2f}, "
          f"Loss {final['loss']:.4f} (the full-width model with them zeroed: Top1 {result.last['top1']:.2f})")
    s.run.append_metrics({"phase": "removed", **final})
    final_checkpoint = s.save_pruned(model, "final.pth", arch={**s.loaded.arch, "shapes": outcome.shapes},
                                     masks=None, metrics=final)
    at_last = load_toolkit_checkpoint(s.run / "pruned.pth", expect_arch=cfg.model.arch).checkpoint["metrics"]
    pruned = {k: at_last[k] for k in ("top1", "top5", "loss")}
    return FilterDone(model=model, outcome=outcome, pruned=pruned, checkpoint=str(s.run / "pruned.pth"),
                      final_checkpoint=final_checkpoint, final=final, average=result.average_top1,
                      extra={"final_checkpoint": final_checkpoint, "top1_masked": result.last["top1"],
                             "agp": {"pruning_steps": agp.steps, "frequency": agp.frequency,
                                     "last_step": agp.last_step, "total_steps": agp.total_steps,
                                     "end": cfg.prune.agp_end}})


FILTER_SCHEDULES: dict[str, Callable[[Session], FilterDone]] = {
    "one_shot": _filter_one_shot, "iterative": _filter_iterative, "agp": _filter_agp}


def format_filter_rounds(rounds: list[dict[str, Any]]) -> str:
    """An iterative filter run's rounds: filters left per layer, top-1 after pruning and after retraining."""
    if not rounds:
        return ""
    layers = list(rounds[0]["widths"])
    header = ["round", *layers, "top1 after pruning", "top1 after retraining"]
    lines = ["", "### Rounds (filters left per layer)", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for r in rounds:
        cells = [str(r["round"]), *(str(r["widths"][layer]) for layer in layers), f"{r['top1']:.2f}",
                 f"{r['top1_finetuned']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@register_runner("filter")
def run_filter(s: Session) -> None:
    cfg, original = s.cfg, s.loaded.model  # the unpruned model stays, for timing both side by side at the end
    base = s.evaluate(original, "before")
    print(f"Before: Top1 {base['top1']:.2f}, Top5 {base['top5']:.2f}, Loss {base['loss']:.4f}")
    s.run.append_metrics({"phase": "before", **base})
    before = {**profile_model(original, s.data.input_size, device=s.device, latency=False),
              "top1": base["top1"], "top5": base["top5"]}
    done = FILTER_SCHEDULES[cfg.prune.schedule](s)
    model, outcome, pruned, final, average = done.model, done.outcome, done.pruned, done.final, done.average
    after = {**profile_model(model, s.data.input_size, device=s.device, latency=False),
             "top1": final["top1"], "top5": final["top5"]}
    if cfg.prune.latency:
        timings = compare_latency({"before": original, "after": model}, s.data.input_size, device=s.device)
        before.update(timings["before"])
        after.update(timings["after"])
    accuracy = ("top1", "top5")
    change = reduction({k: v for k, v in before.items() if k not in accuracy}, after)
    for key in accuracy:  # relative like the costs where defined; the table shows the change in points
        change[key] = (before[key] - after[key]) / before[key] * 100.0 if before[key] else None
    table = format_before_after(before, after, change)
    print(f"Model size: {before['size_kb']:.0f} Kb -> {after['size_kb']:.0f} Kb\n\n{table}\n")
    rounds = format_filter_rounds(done.extra.get("rounds", []))
    markdown = (f"## {cfg.name}: {cfg.model.arch}, L1-norm filter pruning ({cfg.prune.strategy}){_schedule_title(cfg)}"
                f"\n\n{table}\n{rounds}")
    if rounds:
        print(rounds)
    results = {
        "name": cfg.name, "arch": cfg.model.arch, "method": "filter", "strategy": cfg.prune.strategy,
        "schedule": _schedule_record(cfg), "before": before, "after": after, "reduction_percent": change,
        "pruned_before_retraining": pruned, "average_top1_last_epochs": average,
        "widths": {k: list(v) for k, v in outcome.widths.items()}, "removed": outcome.removed,
        "checkpoint": done.checkpoint, **done.extra, "provenance": s.config["provenance"], "seed": cfg.seed,
    }
    s.run.write_text("results.md", markdown)
    s.run.write_json("results.json", results)  # before exporting: a failing export loses none of the run
    if s.export:
        with _results_kept_on_error(s):
            results["export"] = export_final(s, done.final_checkpoint)
        exports = format_export_table(results["export"])
        print(exports)
        s.run.write_text("results.md", markdown + exports)
        s.run.write_json("results.json", results)
    s.logger.log_text(table)
    print(f"Results: {s.run / 'results.md'}, {s.run / 'results.json'}")


# ---------------------------------------------------------------------------------------------------------------
# Sensitivity analysis (Li et al. Figure 2)


@register_runner("sensitivity")
def run_sensitivity(s: Session) -> None:
    cfg, original = s.cfg, s.loaded.model
    p = cfg.prune
    base = s.evaluate(original, "baseline")
    print(f"Baseline: Top1 {base['top1']:.2f}, Top5 {base['top5']:.2f}")
    example = _example_input(s.data.input_size, s.device)
    names = list(p.layers) or s.prepared  # both checked by prepare_pruning
    names = [n for n in names if n not in set(p.skip)]
    ratios = sorted(p.sensitivity_ratios)
    graph = analyse(original, example)
    curves: dict[str, dict[str, Any]] = {}
    for layer in names:
        points = layer_sensitivity(original, layer, ratios, s.data.test_loader, s.device, graph=graph)
        for point in points:
            s.run.append_metrics({"phase": "sensitivity", "layer": layer, **point})
        top1 = [p["top1"] for p in points]
        curves[layer] = {"filters": points[0]["filters"], "kept": [p["kept"] for p in points], "top1": top1,
                         "top5": [p["top5"] for p in points]}
        print(f"{layer:>12}: " + " ".join(f"{a:6.2f}" for a in top1))
        s.logger.log_sweep(ratios, top1, name=layer, win="sensitivity")

    at = min(ratios, key=lambda r: abs(r - p.sensitivity_at))
    sensitive = [n for n, c in curves.items() if base["top1"] - c["top1"][ratios.index(at)] > p.sensitivity_tolerance]
    result = {"baseline": base, "ratios": ratios, "layers": curves, "tolerance": p.sensitivity_tolerance,
              "checked_at": at, "sensitive": sensitive, "provenance": s.config["provenance"]}
    s.run.write_json("sensitivity.json", result)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["layer", "filters", "ratio", "filters_kept", "top1", "top5"])
    for layer, c in curves.items():
        for i, ratio in enumerate(ratios):
            writer.writerow([layer, c["filters"], ratio, c["kept"][i], f"{c['top1'][i]:.4f}", f"{c['top5'][i]:.4f}"])
    s.run.write_text("sensitivity.csv", buffer.getvalue())
    plot_lines(s.run / "sensitivity.png",
               {layer: ([100 * r for r in ratios], c["top1"]) for layer, c in curves.items()},
               title=f"{cfg.model.arch}: pruning each layer alone (smallest L1 first)",
               xlabel="filters pruned away (%)", ylabel="top-1 (%)", hlines={"baseline": base["top1"]})
    print(f"\nSensitive at {at:g} (drop > {p.sensitivity_tolerance:g} points): {', '.join(sensitive) or 'none'}")
    print(f'Use them as "prune.skip": {sensitive}')
    print(f"Results: {s.run / 'sensitivity.json'}, {s.run / 'sensitivity.csv'}, {s.run / 'sensitivity.png'}")
