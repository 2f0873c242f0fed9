"""Experiment files: JSON parsed into typed, frozen dataclasses, one per section.

The JSON file is the user interface, so every mistake in it is reported against the file and the dotted
key, with the bad value and what is allowed (``prune.json: prune.percent: expected a number in [0, 1),
got 1.5``). Unknown keys are errors with the nearest valid key suggested; keys that start with ``_`` are
comments and ignored. ``--set a.b=VALUE`` overrides any key before validation.

Every field carries its documentation in ``metadata["doc"]``; ``python -m utils.config`` prints the
reference table that the README embeds, so code and documentation cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.core.errors import UserError

_MISSING = dataclasses.MISSING


def _opt(default: Any, doc: str, *, check: Callable[[Any], bool] | None = None, expect: str | None = None,
         choices: tuple[str, ...] = ()) -> Any:
    """A config field with its documentation and an optional check (``expect`` names the allowed values)."""
    if choices:
        check, expect = (lambda v: v in choices), "one of " + ", ".join(json.dumps(c) for c in choices)
    kwargs: dict[str, Any] = {"metadata": {"doc": doc, "check": check, "expect": expect}}
    if isinstance(default, list | dict):
        kwargs["default_factory"] = lambda: type(default)(default)
    elif default is not _MISSING:
        kwargs["default"] = default
    return field(**kwargs)


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _in_unit_interval(v: Any) -> bool:
    return 0 <= v < 1


@dataclass(frozen=True)
class DataConfig:
    name: str = _opt("cifar10", "Dataset: `cifar10` (torchvision's `cifar-10-batches-py` format), `imagenet` "
                     "(ImageFolder `train/` + `val/`), `imagefolder` (any ImageFolder tree with `train/` and `val/` "
                     "or `test/`), `digits` (scikit-learn's bundled 8x8 digits, no download; the demo).")
    root: str = _opt("data", "Folder that holds the dataset (relative paths are relative to the working directory).")
    download: bool = _opt(False, "`cifar10` only: download the dataset into `data.root` when it is missing.")
    batch_size: int = _opt(128, "Training images per step: the global batch (under `torchrun` each of the N "
                           "processes takes `batch_size / N` of every step's images).", check=_positive,
                           expect="a positive integer")
    test_batch_size: int | None = _opt(None, "Images per evaluation batch (default: `data.batch_size`).",
                                       check=lambda v: v is None or v > 0, expect="a positive integer or null")
    workers: int | None = _opt(2, "DataLoader worker processes (0 loads in the main process; null: the CPU cores "
                               "this process may use, shared among torchrun's processes on the machine, less one each "
                               "for the training loop, at most 16). The batches are the same for any count.",
                               check=lambda v: v is None or v >= 0, expect="an integer >= 0 or null")
    mean: list[float] | None = _opt(None, "Per-channel normalisation mean (default: the dataset's own).",
                                    check=lambda v: v is None or len(v) == 3,
                                    expect="a list of 3 numbers (R, G, B) or null")
    std: list[float] | None = _opt(None, "Per-channel normalisation std (default: the dataset's own).",
                                   check=lambda v: v is None or (len(v) == 3 and min(v) > 0),
                                   expect="a list of 3 positive numbers (R, G, B) or null")
    image_size: int | None = _opt(None, "Crop size for `imagenet`/`imagefolder` (default 224; 64 or less switches "
                                  "to CIFAR-style pad-and-crop augmentation).",
                                  check=lambda v: v is None or v > 0, expect="a positive integer or null")
    decode: str = _opt("pil", "`imagenet`/`imagefolder` at `image_size` > 64: `pil` (PIL decodes, crops and resizes: "
                       "torchvision's reference pipeline) or `torchvision` (torchvision.io decodes, transforms.v2 "
                       "crops and resizes uint8 tensors: the same random crops, pixels within 1 level of PIL's; PIL "
                       "decodes where torchvision.io cannot load, with a warning).", choices=("pil", "torchvision"))
    loader: str = _opt("torchvision", "`torchvision` (DataLoader workers decode and augment each image) or `gpu` "
                       "(`cifar10`, and `imagefolder` with `image_size` <= 64: the whole split held on the training "
                       "device as uint8, crop and flip done there per batch; `workers` is then unused). Same "
                       "augmentation, other random draws (README, Speed).", choices=("torchvision", "gpu"))


@dataclass(frozen=True)
class ModelConfig:
    arch: str = _opt(_MISSING, "Registered model name, e.g. `vgg16_bn_cifar`, `resnet20`, `resnet56`, "
                     "`tv_resnet18`, `tv_resnet34`, `tv_mobilenet_v2` (the full list: README, Models).")
    checkpoint: str | None = _opt(None, "Weights to start from: a checkpoint of this tool (its architecture and "
                                  "masks come along) or a plain/wrapped state dict (`module.` prefixes and "
                                  "`{'state_dict': ...}` wrappers are handled). Keys are checked strictly.")
    pretrained: bool = _opt(False, "torchvision models only: start from torchvision's ImageNet weights "
                            "(offline: the file must already be in `$TORCH_HOME/hub/checkpoints`).")
    num_classes: int | None = _opt(None, "Output classes (default: the dataset's).",
                                   check=lambda v: v is None or v > 0, expect="a positive integer or null")
    shortcut: str | None = _opt(None, "CIFAR ResNets only: `A` (parameter-free, zero-padded) or `B` (1x1 conv + "
                                "BN) shortcuts where the shape changes. Default `A`.",
                                check=lambda v: v is None or v in ("A", "B"), expect='"A", "B" or null')
    classifier: list[int] | None = _opt(None, "`vgg16_bn_cifar` only: hidden widths of the classifier. Default "
                                        "`[512]` (Li et al., 1.5e7 parameters); `[4096, 4096]` is the "
                                        "filter-pruning reference's 33.6M-parameter model.",
                                        check=lambda v: v is None or all(w > 0 for w in v),
                                        expect="a list of positive integers or null")


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = _opt(0, "Epochs to run (0: none).", check=_non_negative, expect="an integer >= 0")
    lr: float = _opt(0.1, "Initial SGD learning rate (for a batch of `data.batch_size` images).",
                     check=_positive, expect="a positive number")
    momentum: float = _opt(0.9, "SGD momentum.", check=lambda v: 0 <= v < 1, expect="a number in [0, 1)")
    weight_decay: float = _opt(5e-4, "L2 weight decay.", check=_non_negative, expect="a number >= 0")
    nesterov: bool = _opt(False, "Nesterov momentum.")
    schedule: str = _opt("multistep", "LR schedule: `multistep` (times `gamma` at each of `milestones`), `cosine` "
                         "(to 0 over `epochs`) or `constant`.", choices=("multistep", "cosine", "constant"))
    milestones: list[int] = _opt([], "Epochs at which `multistep` multiplies the LR by `gamma`.",
                                 check=lambda v: all(m > 0 for m in v) and list(v) == sorted(v),
                                 expect="an increasing list of positive integers")
    gamma: float = _opt(0.1, "LR factor at each milestone.", check=_positive, expect="a positive number")
    amp: str | None = _opt(None, "Mixed precision: `bf16`, `fp16` (with a gradient scaler) or null (float32). The "
                           "forward pass and loss run under `torch.autocast`; weights, optimizer and evaluation stay "
                           "float32.", check=lambda v: v is None or v in ("bf16", "fp16"),
                           expect='"bf16", "fp16" or null')
    channels_last: bool = _opt(False, "Keep weights and images in the channels-last memory format (faster convolutions "
                               "on tensor-core GPUs, above all with `amp`).")
    compile: bool = _opt(False, "Train through `torch.compile(model)` (the first steps compile; checkpoints hold the "
                         "plain model). Needs a C++ compiler on the CPU, Triton on a GPU.")
    sync_bn: bool = _opt(False, "Under `torchrun` with several processes: BatchNorm statistics over the whole global "
                         "batch (`nn.SyncBatchNorm` on GPUs, an all-reduce BatchNorm on CPUs) instead of each "
                         "process's share; the run then computes what one process with the same global batch does.")


def _retrain_defaults() -> dict[str, Any]:
    return {"epochs": 0, "lr": 0.001, "schedule": "constant"}


@dataclass(frozen=True)
class PruneConfig:
    method: str = _opt("weight", "Pruning method: `weight` (magnitude weight pruning, Han et al. 2015), `filter` "
                       "(L1-norm filter pruning with physical removal, Li et al. 2017) or `sensitivity` (prune each "
                       "conv layer alone at `sensitivity_ratios` and evaluate: Li et al. Figure 2).")
    percent: list[float] = _opt([0.5], "Fraction of weights to prune, in [0, 1); several values make a sweep "
                                "(a single number is accepted). `--prune_percent` overrides it.",
                                check=lambda v: len(v) > 0 and all(0 <= p < 1 for p in v),
                                expect="a number in [0, 1) or a non-empty list of them")
    scope: str = _opt("layer_type", "Where a threshold applies: `layer_type` (one for all conv weights, one for all "
                      "linear weights: the seed's method), `global` (one for both) or `layer` (each layer its own).",
                      choices=("layer_type", "global", "layer"))
    layers: list[str] = _opt([], "`filter`/`sensitivity`: conv layers to prune, by the names the README lists per "
                             "model (`conv1` ... for VGG16-bn; `conv1` ... counted from the input, or stage names like "
                             "`layer2`, for ResNets). Empty: every prunable layer.")
    channels: list[int] | None = _opt(None, "`filter`: filters to remove from each of `prune.layers` (one count per "
                                      "entry, or one for all).",
                                      check=lambda v: v is None or (len(v) > 0 and all(c >= 0 for c in v)),
                                      expect="a non-empty list of integers >= 0 or null")
    ratios: list[float] | None = _opt(None, "`filter`: fraction of filters to remove from each of `prune.layers` "
                                      "(one per entry, or one for all); instead of `prune.channels`.",
                                      check=lambda v: v is None or (len(v) > 0 and all(0 <= r < 1 for r in v)),
                                      expect="a non-empty list of numbers in [0, 1) or null")
    strategy: str = _opt("independent", "`filter`: `independent` (every layer ranked on the original weights) or "
                         "`greedy` (kernels on channels already removed from the previous layer are left out of the "
                         "L1 sums; Li et al. sec. 3.3).", choices=("independent", "greedy"))
    skip: list[str] = _opt([], "`filter`/`sensitivity`: layers to leave alone (e.g. the sensitive ones a "
                           "sensitivity analysis found).")
    sensitivity_ratios: list[float] = _opt([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                                           "`sensitivity`: fractions of each layer's filters to remove, one at a time.",
                                           check=lambda v: len(v) > 0 and all(0 < r < 1 for r in v),
                                           expect="a non-empty list of numbers in (0, 1)")
    sensitivity_tolerance: float = _opt(1.0, "`sensitivity`: a layer is marked sensitive when pruning "
                                        "`sensitivity_at` of its filters costs more than this many top-1 points.",
                                        check=_non_negative, expect="a number >= 0")
    sensitivity_at: float = _opt(0.5, "`sensitivity`: the pruned fraction at which `sensitivity_tolerance` is "
                                 "checked.", check=lambda v: 0 < v < 1, expect="a number in (0, 1)")
    schedule: str = _opt("one_shot", "`weight`/`filter`: when to prune. `one_shot` (prune once, then retrain "
                         "`retrain.epochs`), `iterative` (`rounds` times: prune to a growing ratio, then retrain "
                         "`retrain.epochs / rounds` epochs) or `agp` (Zhu & Gupta's gradual pruning: every `frequency` "
                         "optimizer steps of the `retrain.epochs`). `retrain.epochs` is the total retraining budget in "
                         "all three; the ratios follow the cubic ramp (README, Pruning schedules).",
                         choices=("one_shot", "iterative", "agp"))
    rounds: int = _opt(4, "`iterative`: prune-and-retrain rounds; `retrain.epochs` must be a multiple of it.",
                       check=_positive, expect="a positive integer")
    frequency: int = _opt(100, "`agp`: optimizer steps between two pruning steps.", check=_positive,
                          expect="a positive integer")
    agp_end: float = _opt(0.75, "`agp`: the fraction of the retraining steps over which the sparsity ramps up; the "
                          "rest trains at the final sparsity.", check=lambda v: 0 < v <= 1,
                          expect="a number in (0, 1]")
    latency: bool = _opt(True, "`filter`: time inference of the unpruned and the pruned model side by side for the "
                         "report (batch 1 and 64 on a CPU, 1 and 256 on a GPU: several seconds on a CPU); `false` "
                         "leaves latency out of the report.")


@dataclass(frozen=True)
class OutputConfig:
    dir: str = _opt("checkpoints", "Where run directories are created (`<dir>/<name>`, then `<name>-2`, ... so "
                    "a re-run never overwrites an earlier one).")
    overwrite: bool = _opt(False, "Reuse `<dir>/<name>` even when it exists (its files are replaced).")


@dataclass(frozen=True)
class VisdomConfig:
    host: str = _opt("http://localhost", "Visdom server address (used with `--visdom`).")
    port: int = _opt(8097, "Visdom server port.", check=lambda v: 0 < v < 65536, expect="a port in 1..65535")
    env: str | None = _opt(None, "Visdom environment (default: the experiment's `name`).")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = _opt(_MISSING, "Experiment name: the run directory is `<output.dir>/<name>`.",
                     check=lambda v: v.strip() != "" and "/" not in v and v not in (".", ".."),
                     expect="a non-empty name without '/'")
    seed: int = _opt(0, "Seed for Python, NumPy and torch (CPU runs repeat exactly).")
    print_freq: int = _opt(0, "Print a progress line every N steps when not on a terminal (0: once per epoch).",
                           check=_non_negative, expect="an integer >= 0")
    data: DataConfig = _opt({}, "Dataset and loading.")
    model: ModelConfig = _opt({}, "The network.")
    train: OptimConfig = _opt({}, "Training from scratch or from `model.checkpoint` (`trainer_exp.py`).")
    prune: PruneConfig = _opt({}, "Pruning (`pruner_exp.py`).")
    retrain: OptimConfig = _opt({}, "Fine-tuning after pruning (`pruner_exp.py`); defaults: "
                                "0 epochs, lr 0.001, constant schedule.")
    output: OutputConfig = _opt({}, "Run outputs.")
    visdom: VisdomConfig = _opt({}, "Live plots.")

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON data (saved as ``config.json`` and in every checkpoint)."""
        return dataclasses.asdict(self)


# Section defaults that differ from the section class's own defaults.
_SECTION_DEFAULTS: dict[tuple[str, ...], Callable[[], dict[str, Any]]] = {("retrain",): _retrain_defaults}

# ``prune`` keys that choose layers or filters, with the methods that read them. ``weight`` pruning prunes every conv
# and linear layer, so a run with ``"layers": ["conv1"]`` would silently prune all of them: such a key is an error.
_LAYER_SPEC_METHODS = {"layers": ("filter", "sensitivity"), "skip": ("filter", "sensitivity"), "channels": ("filter",),
                       "ratios": ("filter",)}


# ---------------------------------------------------------------------------------------------------------------
# Validation


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_describe(a) for a in inner) + (" or null" if len(inner) < len(args) else "")
    if origin is list:
        return f"a list of {_describe(args[0]).replace('an ', '').replace('a ', '')}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


class _Validator:
    """Converts raw JSON data into a dataclass, collecting the first error with its dotted key."""

    def __init__(self, source: str, overridden: set[str]):
        self.source = source
        self.overridden = overridden

    def fail(self, key: str, message: str) -> UserError:
        # A key inside an overridden section (``--set 'data={...}'``) came from the command line too.
        parts = key.split(".")
        from_set = any(".".join(parts[:i]) in self.overridden for i in range(1, len(parts) + 1))
        source = f"--set {key}" if from_set else f"{self.source}: {key}"
        return UserError(f"{source}: {message}")

    def convert(self, tp: Any, value: Any, key: str) -> Any:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            return self.convert(inner[0], value, key) if len(inner) == 1 else value
        if dataclasses.is_dataclass(tp):
            return self.section(tp, value, key)
        if origin is list:
            if tp == list[float] and isinstance(value, int | float) and not isinstance(value, bool):
                value = [value]  # a single ratio is a one-element sweep
            if not isinstance(value, list):
                raise self.fail(key, f"expected {_describe(tp)}, got {json.dumps(value)}")
            return [self.convert(args[0], v, key) for v in value]
        ok = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, int | float) and not isinstance(value, bool),
            str: isinstance(value, str),
        }[tp]
        if not ok or (tp is float and not math.isfinite(value)):
            raise self.fail(key, f"expected {_describe(tp)}, got {json.dumps(value)}")
        return float(value) if tp is float else value

    def section(self, cls: type, raw: Any, prefix: str) -> Any:
        if not isinstance(raw, dict):
            raise self.fail(prefix, f"expected an object with keys {', '.join(f.name for f in dataclasses.fields(cls))}"
                            f", got {json.dumps(raw)}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        path = tuple(prefix.split(".")) if prefix else ()
        defaults = _SECTION_DEFAULTS.get(path, dict)()
        for name in raw:
            if name.startswith("_"):
                continue  # comments
            if name not in fields:
                near = difflib.get_close_matches(name, fields, n=1)
                hint = f"; did you mean {_join(prefix, near[0])}?" if near else ""
                raise self.fail(_join(prefix, name), f"unknown key{hint} (valid keys here: {', '.join(fields)})")
        values: dict[str, Any] = {}
        for name, f in fields.items():
            key = _join(prefix, name)
            if name in raw:
                value = raw[name]
            elif name in defaults:
                value = defaults[name]
            elif dataclasses.is_dataclass(hints[name]):
                value = {}
            elif f.default is not _MISSING or f.default_factory is not _MISSING:
                continue
            else:
                raise self.fail(key, f"missing; expected {_describe(hints[name])} ({f.metadata['doc']})")
            check, expect = f.metadata.get("check"), f.metadata.get("expect")
            try:
                converted = self.convert(hints[name], value, key)
            except UserError:
                if expect is None:
                    raise
                # The field's own description is the complete one (``prune.percent`` also takes a single number;
                # ``data.mean`` needs 3 of them), and the whole value is what the user wrote.
                raise self.fail(key, f"expected {expect}, got {json.dumps(value)}") from None
            if check is not None and not check(converted):
                raise self.fail(key, f"expected {expect}, got {json.dumps(value)}")
            values[name] = converted
        if cls is PruneConfig and values.get("method", "weight") == "weight":
            self.check_weight_pruning(values, prefix)
        if cls is ExperimentConfig:
            self.check_schedule(values["prune"], values["retrain"])
        return cls(**values)

    def check_schedule(self, prune: PruneConfig, retrain: OptimConfig) -> None:
        """A schedule that cannot run with the rest of the file: an error before any work (the rest at run time)."""
        if prune.schedule == "one_shot":
            return
        schedule = json.dumps(prune.schedule)
        if prune.method == "sensitivity":
            raise self.fail("prune.schedule", f'{schedule} prunes and retrains; prune.method "sensitivity" only '
                            'evaluates each layer pruned once. Remove prune.schedule or set it to "one_shot"')
        if retrain.epochs == 0:
            how = ("the total over all prune.rounds, a multiple of them" if prune.schedule == "iterative" else
                   "the epochs during which the model is pruned gradually")
            raise self.fail("prune.schedule", f"{schedule} needs retraining, but retrain.epochs is 0; set "
                            f"retrain.epochs ({how}), or use prune.schedule \"one_shot\"")
        rounds, epochs = prune.rounds, retrain.epochs
        if prune.schedule == "iterative" and epochs % rounds:
            lower, upper = epochs - epochs % rounds, epochs - epochs % rounds + rounds
            options = f"{lower} or {upper}" if lower > 0 else f"{upper}"
            raise self.fail("retrain.epochs", f"{epochs} is the total retraining budget of the {rounds} rounds of "
                            f'prune.schedule "iterative" and must split evenly over them; set retrain.epochs to '
                            f"{options}, or prune.rounds to a divisor of {epochs}")

    def check_weight_pruning(self, values: dict[str, Any], prefix: str) -> None:
        """A layer or filter choice that ``prune.method`` "weight" would ignore is an error (_LAYER_SPEC_METHODS)."""
        fields = {f.name: f for f in dataclasses.fields(PruneConfig)}
        for name, methods in _LAYER_SPEC_METHODS.items():
            f = fields[name]
            default = f.default if f.default_factory is _MISSING else f.default_factory()
            if values.get(name, default) != default:
                key = _join(prefix, name)
                raise self.fail(key, f"only used by prune.method {' and '.join(json.dumps(m) for m in methods)}; "
                                '"weight" pruning prunes every conv and linear layer (prune.scope picks where a '
                                f"threshold applies). Remove {key} or set prune.method")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# ---------------------------------------------------------------------------------------------------------------
# Loading


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=VALUE`` -> (``"a.b"``, value); the value is JSON when it parses as JSON, else the raw string."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item}: expected KEY=VALUE with a dotted key, e.g. --set data.root=/data/cifar10")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return key.strip(), value


def _check_override_key(key: str) -> None:
    cls: Any = ExperimentConfig
    done: list[str] = []
    for part in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if not fields:
            raise UserError(f"--set {key}: {'.'.join(done)} is a value, not a section")
        if part not in fields:
            near = difflib.get_close_matches(part, fields, n=1)
            hint = f"; did you mean {_join('.'.join(done), near[0])}?" if near else ""
            where = f" in section {'.'.join(done)}" if done else ""
            raise UserError(f"--set {key}: unknown key{where}{hint} (valid keys here: {', '.join(fields)})")
        cls = typing.get_type_hints(cls)[part]
        done.append(part)


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> set[str]:
    """Apply ``--set`` items to the raw JSON data in place; return the dotted keys they set."""
    keys = set()
    for item in overrides:
        key, value = parse_override(item)
        _check_override_key(key)
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
        keys.add(key)
    return keys


def read_json(path: str | Path) -> dict[str, Any]:
    """Read an experiment file; every failure is one line naming the file (and line/column for bad JSON)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # editors on Windows may add a BOM
    except FileNotFoundError:
        raise UserError(f"{path}: experiment file not found; check the --json path") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory; --json takes an experiment file (.json)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the experiment file ({exc})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a JSON object {{...}}, got {type(raw).__name__}")
    return raw


def from_dict(raw: dict[str, Any], *, source: str = "<config>", overridden: set[str] | None = None) -> ExperimentConfig:
    """Validate raw JSON data into an :class:`ExperimentConfig`."""
    return _Validator(source, overridden or set()).section(ExperimentConfig, raw, "")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read, override and validate an experiment file."""
    raw = read_json(path)
    overridden = apply_overrides(raw, overrides)
    return from_dict(raw, source=str(path), overridden=overridden)


def replace(cfg: ExperimentConfig, **sections: dict[str, Any]) -> ExperimentConfig:
    """A copy of ``cfg`` with fields of some sections replaced, e.g. ``replace(cfg, prune={"percent": [0.5]})``."""
    changes = {name: dataclasses.replace(getattr(cfg, name), **values) for name, values in sections.items()}
    return dataclasses.replace(cfg, **changes)


# ---------------------------------------------------------------------------------------------------------------
# Documentation


def reference_markdown() -> str:
    """The table of every key with its type, default and meaning (embedded in the README)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        path = tuple(prefix.split(".")) if prefix else ()
        defaults = _SECTION_DEFAULTS.get(path, dict)()
        for f in dataclasses.fields(cls):
            key = _join(prefix, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], key)
                continue
            if f.name in defaults:
                default = json.dumps(defaults[f.name])
            elif f.default is not _MISSING:
                default = json.dumps(f.default)
            elif f.default_factory is not _MISSING:
                default = json.dumps(f.default_factory())
            else:
                default = "required"
            lines.append(f"| `{key}` | {_describe(hints[f.name])} | `{default}` | {f.metadata['doc']} |")

    walk(ExperimentConfig, "")
    return "\n".join(lines)


README = Path(__file__).resolve().parents[2] / "README.md"
_REFERENCE_START, _REFERENCE_END = "<!-- config-reference:start", "<!-- config-reference:end -->"


def readme_with_reference(text: str) -> str:
    """``text`` (the README) with the block between the config-reference markers replaced by the current table."""
    start = text.index(_REFERENCE_START)
    start = text.index("\n", start) + 1
    end = text.index(_REFERENCE_END)
    return text[:start] + reference_markdown() + "\n" + text[end:]

