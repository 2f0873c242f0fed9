"""``pruner_exp.py --list-layers``: the names ``prune.layers`` and ``prune.skip`` take, for the model of an experiment
file, one line per conv layer (name, module, channels, prunable or why not), then the names that stand for several.

No data is loaded and no weights are needed: the names, the channel counts and what may be pruned follow from the
architecture alone. A checkpoint of this tool is read for its architecture (a pruned model has other widths); any
other model is built with random weights, so the list can be printed before a model is trained or downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import build_arch
from pruning import analyse, layer_names
from pruning.dependency import DEFAULT_INPUT_SIZE  # what pruning traces a model that declares no size with
from utils.checkpoint.diagnose import first_line
from utils.checkpoint.format import is_toolkit_checkpoint
from utils.checkpoint.load import load_toolkit_checkpoint, read_checkpoint_file
from utils.config.schema import ExperimentConfig
from utils.core.errors import UserError

__all__ = ["blocked_reasons", "check_takes", "layer_rows", "list_layers", "planning_model", "trace_size", "why_blocked"]


def planning_model(cfg: ExperimentConfig) -> tuple[nn.Module, str | None]:
    """The model of ``cfg`` as far as it can be had without data: from ``model.checkpoint`` when that is a checkpoint
    of this tool (its architecture, pruned widths included, and its weights), else built with random weights. The
    second value is the checkpoint the model came from (None: random weights). Also used by ``--dry-run``."""
    m = cfg.model
    if m.checkpoint is not None and Path(m.checkpoint).is_file():
        obj = read_checkpoint_file(m.checkpoint)
        if is_toolkit_checkpoint(obj):
            loaded = load_toolkit_checkpoint(m.checkpoint, expect_arch=m.arch, ckpt=obj, key="model.checkpoint")
            return loaded.model, m.checkpoint
    options = {key: getattr(m, key) for key in ("num_classes", "shortcut", "classifier") if getattr(m, key) is not None}
    return build_arch(m.arch, options).model, None


def _model(cfg: ExperimentConfig) -> tuple[nn.Module, str]:
    """The model whose layers are listed, and where its architecture came from (for the header line)."""
    model, checkpoint = planning_model(cfg)
    if checkpoint is not None:
        return model, f"the architecture of {checkpoint}"
    m = cfg.model
    missing = f"; model.checkpoint {m.checkpoint} is not there yet" if m.checkpoint is not None and \
        not Path(m.checkpoint).exists() else ""
    return model, f"random weights: the names follow from the architecture alone{missing}"


def blocked_reasons(blocked: str) -> list[str]:
    """The distinct reasons a group may not be pruned (the trace may give the same one for every sum it meets). They
    are joined by "; ", which a reason may hold in parentheses too (the option-A shortcut's hint): only a separator
    outside them splits."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(blocked):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and blocked.startswith("; ", i):
            parts.append(blocked[start:i])
            start = i + 2
    return list(dict.fromkeys([*parts, blocked[start:]]))


def why_blocked(blocked: str) -> str:
    """The first of the reasons a group may not be pruned, and how many more there are."""
    reasons = blocked_reasons(blocked)
    return reasons[0] + (f" (and {len(reasons) - 1} more reason(s))" if len(reasons) > 1 else "")


def trace_size(cfg: ExperimentConfig, model: nn.Module) -> tuple[tuple[int, ...], str]:
    """The size of the one input the model is traced with, and which key or default gave it."""
    if cfg.model.input_size is not None:
        return tuple(cfg.model.input_size), "model.input_size"
    if cfg.data.image_size is not None:
        return (3, cfg.data.image_size, cfg.data.image_size), "data.image_size"
    declared = getattr(model, "input_size", None)
    if declared is not None:
        return tuple(declared), f"the size {type(model).__name__} declares"
    return DEFAULT_INPUT_SIZE, "the default; set model.input_size to the data's size"


def layer_rows(model: nn.Module, example: torch.Tensor) -> tuple[list[tuple[str, str, str, str]], dict[str, Any]]:
    """``(name, module, channels, prunable or why not)`` for every conv whose filters can be ranked, in input order,
    and the names that stand for several layers (``layer2``, ``layer2.residual``) with the layers they stand for."""
    graph = analyse(model, example_input=example)
    names = layer_names(model, example_input=example)
    group_of = {producer: group for group in graph.groups for producer in group.producers}
    short = {module: name for name, module in names.layers.items()}
    rows = []
    for module in names.producers:
        group, name = group_of.get(module), short.get(module, module)
        if group is None:
            rows.append((name, module, "?", "not prunable: the trace does not follow its channels"))
            continue
        if group.blocked is not None or not group.prunable:
            status = f"not prunable: {why_blocked(group.blocked)}" if group.blocked else "not prunable"
        elif not group.summed:
            status = "prunable"
        else:
            coupled = [short.get(p, p) for p in group.producers]
            selector = next((s for s, members in names.selectors.items() if set(members) == set(coupled)), None)
            others = [n for n in coupled if n != name]
            status = f"prunable only with {', '.join(others)}" + (f" (write {selector})" if selector else "")
        rows.append((name, module, str(group.channels * group.filters_per_unit(module)), status))
    return rows, dict(names.selectors)


def check_takes(model: nn.Module, example: torch.Tensor, arch: str, why: str, *, flag: str = "--list-layers") -> Any:
    """The model's output for ``example`` (one forward pass in eval mode, without gradients); a model that refuses it
    is one line saying which size was tried and why (``why``) and how to change it."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(example)
    except (RuntimeError, ValueError, AssertionError) as exc:  # AssertionError: torch._assert's size checks (ViT)
        raise UserError(f"{flag}: model.arch {arch!r} cannot take one input of {list(example.shape[1:])} "
                        f"({why}; {first_line(exc)}); set model.input_size to the [C, H, W] it takes") from None
    finally:
        model.train(training)


def list_layers(cfg: ExperimentConfig) -> int:
    """Print the layer names of ``cfg``'s model (see the module docstring); the exit status (0)."""
    model, source = _model(cfg)
    size, why = trace_size(cfg, model)
    example = torch.zeros(1, *size)
    check_takes(model, example, cfg.model.arch, why)
    rows, selectors = layer_rows(model, example)
    print(f"model.arch {cfg.model.arch!r} ({source}), traced with one {'x'.join(map(str, size))} input ({why}).")
    print("Names prune.layers and prune.skip take (a conv's module name is taken too):")
    header = ("name", "module", "channels", "prune.layers")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3])
    if selectors:
        print("Names that stand for several layers:")
        for name, members in selectors.items():
            print(f"{name}: {', '.join(members)}")
    return 0
