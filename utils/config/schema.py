"""Experiment files: the typed, frozen dataclasses, one per section, that a JSON file is parsed into.

The JSON file is the user interface, so every mistake in it is reported against the file and the dotted
key, with the bad value and what is allowed (``prune.json: prune.percent: expected a number in [0, 1),
got 1.5``). Unknown keys are errors with the nearest valid key suggested; keys that start with ``_`` are
comments and ignored. ``--set a.b=VALUE`` overrides any key before validation.

The package in four modules: this one declares the sections and their fields, :mod:`utils.config.bounds` holds the
limits of their values, :mod:`utils.config.validate` reads, overrides and validates a file into them,
:mod:`utils.config.reference` documents them. Every field carries
its documentation in ``metadata["doc"]``; ``python -m utils.config`` prints the reference table that the README
embeds, so code and documentation cannot drift apart. The allowed values of a key are those of
:mod:`utils.core.choices`, which the libraries that act on them import too.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from utils.config.bounds import (
    MAX_BATCH,
    MAX_CLASSES,
    MAX_EPOCHS,
    MAX_IMAGE_SIZE,
    MAX_INPUT_CHANNELS,
    MAX_NAME_BYTES,
    MAX_TAYLOR_BATCHES,
    MAX_TEMPERATURE,
    MAX_WIDTH,
    MAX_WORKERS,
    SEED_RANGE,
    input_size_problem,
    repeated_ratio,
    run_name_problem,
)
from utils.core import choices
from utils.core.archform import ARCH_FORMS, arch_problem

__all__ = ["SECTION_DEFAULTS", "DataConfig", "DistillConfig", "ExperimentConfig", "ModelConfig", "OptimConfig",
           "OutputConfig", "PruneConfig", "RetrainConfig", "VisdomConfig", "describe", "field_default", "join_key",
           "section_defaults"]

_MISSING = dataclasses.MISSING


def _opt(default: Any, doc: str, *, check: Callable[[Any], bool] | None = None, expect: str | None = None,
         choices: tuple[str, ...] = (), or_null: bool = False, why: Callable[[Any], str] | None = None) -> Any:
    """A config field with its documentation and an optional check (``expect`` names the allowed values).

    ``choices``: the allowed values (from :mod:`utils.core.choices`), and with ``or_null`` null as well. ``why``:
    what is wrong with a value that fails ``check``, where "expected X, got Y" alone would leave the reader
    searching (which of the rules of a name it breaks, which ratio is repeated)."""
    if choices:
        names = ", ".join(json.dumps(c) for c in choices)
        if or_null:
            check, expect = (lambda v: v is None or v in choices), f"{names} or null"
        else:
            check, expect = (lambda v: v in choices), f"one of {names}"
    kwargs: dict[str, Any] = {"metadata": {"doc": doc, "check": check, "expect": expect, "why": why}}
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


def _int_range(low: int, high: int, *, or_null: bool = False) -> dict[str, Any]:
    """``check`` and ``expect`` of an integer key in ``[low, high]`` (and null with ``or_null``)."""
    lowest = {0: "an integer >= 0", 1: "a positive integer"}[low]
    return {"check": lambda v: (v is None and or_null) or (v is not None and low <= v <= high),
            "expect": f"{lowest}, at most {high}" + (", or null" if or_null else "")}


@dataclass(frozen=True)
class DataConfig:
    name: str = _opt("cifar10", "Dataset: `cifar10` (torchvision's `cifar-10-batches-py` format), `imagenet` "
                     "(ImageFolder `train/` + `val/`), `imagefolder` (any ImageFolder tree with `train/` and `val/` "
                     "or `test/`), `digits` (scikit-learn's bundled 8x8 digits, no download; the demo).")
    root: str = _opt("data", "Folder that holds the dataset (relative paths are relative to the working directory).")
    download: bool = _opt(False, "`cifar10` only: download the dataset into `data.root` when it is missing.")
    batch_size: int = _opt(128, "Training images per step: the global batch (under `torchrun` each of the N "
                           "processes takes `batch_size / N` of every step's images). At most "
                           f"{MAX_BATCH}.", **_int_range(1, MAX_BATCH))
    test_batch_size: int | None = _opt(None, "Images per evaluation batch (default: `data.batch_size`). At most "
                                       f"{MAX_BATCH}.", **_int_range(1, MAX_BATCH, or_null=True))
    workers: int | None = _opt(2, "DataLoader worker processes (0 loads in the main process; null: the CPU cores "
                               "this process may use, shared among torchrun's processes on the machine, less one each "
                               "for the training loop, at most 16). The batches are the same for any count. At most "
                               f"{MAX_WORKERS}.", **_int_range(0, MAX_WORKERS, or_null=True))
    mean: list[float] | None = _opt(None, "Per-channel normalisation mean (default: the dataset's own).",
                                    check=lambda v: v is None or len(v) == 3,
                                    expect="a list of 3 numbers (R, G, B) or null")
    std: list[float] | None = _opt(None, "Per-channel normalisation std (default: the dataset's own).",
                                   check=lambda v: v is None or (len(v) == 3 and min(v) > 0),
                                   expect="a list of 3 positive numbers (R, G, B) or null")
    image_size: int | None = _opt(None, "Crop size for `imagenet`/`imagefolder` (64 or less switches to CIFAR-style "
                                  "pad-and-crop augmentation). Default: the images' own side when the headers of up "
                                  "to 64 of the eval split's images show one square size of 64 or less (CIFAR as "
                                  "PNGs: 32; a note says so), else 224 (with a warning when every image read is "
                                  f"smaller: each is then scaled up). At most {MAX_IMAGE_SIZE}; the model must take it "
                                  "(one forward pass checks that before the run starts).",
                                  **_int_range(1, MAX_IMAGE_SIZE, or_null=True))
    decode: str = _opt("pil", "`imagenet`/`imagefolder` at `image_size` > 64: `pil` (PIL decodes, crops and resizes: "
                       "torchvision's reference pipeline) or `torchvision` (torchvision.io decodes, transforms.v2 "
                       "crops and resizes uint8 tensors: the same random crops, pixels within 1 level of PIL's; PIL "
                       "decodes where torchvision.io cannot load, with a warning).", choices=choices.DECODERS)
    skip_bad_images: bool = _opt(False, "`imagenet`/`imagefolder`: leave out image files that cannot be decoded "
                                 "(empty, truncated, not an image, over PIL's decompression-bomb limit of 89 "
                                 "megapixels), counted and the first few named once per split, instead of stopping at "
                                 "the first with an error that names it. Hidden files and folders (`.` names, such as "
                                 "macOS's `._x.png` companions) are never read as images; folder links are followed "
                                 "only to folders outside `data.root` (README, Data).")
    loader: str = _opt("torchvision", "`torchvision` (DataLoader workers decode and augment each image) or `gpu` "
                       "(`cifar10`, and `imagefolder` with `image_size` <= 64: the whole split held on the training "
                       "device as uint8, crop and flip done there per batch; `workers` is then unused). Same "
                       "augmentation, other random draws (README, Speed).", choices=choices.LOADERS)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = _opt(_MISSING, "The network: a registered model name (`vgg16_bn_cifar`, `resnet20`, `resnet56`, "
                     "`tv_resnet18`, ...: README, Models), `torchvision:<builder>` (any of torchvision's "
                     "classification builders, e.g. `torchvision:mobilenet_v3_small`), `timm:<name>` (needs `pip "
                     "install timm`) or `<python.module>:<callable>` (your own network: a function or `nn.Module` "
                     "class importable from the working directory or PYTHONPATH, called with `num_classes=` when it "
                     "takes it; README, Your own model).",
                     check=lambda v: arch_problem(v) is None, why=arch_problem, expect=f"a string: {ARCH_FORMS}")
    checkpoint: str | None = _opt(None, "Weights to start from: a checkpoint of this tool (its architecture and "
                                  "masks come along) or a plain/wrapped state dict (`module.` prefixes and "
                                  "`{'state_dict': ...}` wrappers are handled). Keys are checked strictly.")
    pretrained: bool = _opt(False, "torchvision and timm models only (`tv_*`, `torchvision:`, `timm:`): start from "
                            "their default ImageNet weights (torchvision offline: the file must already be in "
                            "`$TORCH_HOME/hub/checkpoints`, and the error names it; timm: the Hugging Face cache). "
                            "With `num_classes` other than the weights' 1000, the classifier layer is replaced by a "
                            "new, randomly initialised one.")
    num_classes: int | None = _opt(None, f"Output classes (default: the dataset's). At most {MAX_CLASSES}.",
                                   **_int_range(1, MAX_CLASSES, or_null=True))
    shortcut: str | None = _opt(None, "CIFAR ResNets only: `A` (parameter-free, zero-padded) or `B` (1x1 conv + "
                                "BN) shortcuts where the shape changes. Default `A`.",
                                choices=choices.SHORTCUTS, or_null=True)
    input_size: list[int] | None = _opt(None, "`[C, H, W]` of one input: what the model is traced with for filter "
                                        "pruning and checked with by one forward pass before a run. Default: the "
                                        "data's images (3 x `data.image_size`); `--list-layers`, which loads no "
                                        "data, takes `data.image_size`, else the size the model class declares, else "
                                        "3x224x224. When set, the data's images are checked too. "
                                        f"Channels at most {MAX_INPUT_CHANNELS}, height and width at most "
                                        f"{MAX_IMAGE_SIZE}.", check=lambda v: input_size_problem(v) is None,
                                        why=input_size_problem,
                                        expect=f"a list of 3 positive integers [C, H, W] (C at most "
                                        f"{MAX_INPUT_CHANNELS}, H and W at most {MAX_IMAGE_SIZE}) or null")
    classifier: list[int] | None = _opt(None, "`vgg16_bn_cifar` only: hidden widths of the classifier. Default "
                                        "`[512]` (Li et al., 1.5e7 parameters); `[4096, 4096]` is the "
                                        f"filter-pruning reference's 33.6M-parameter model. Each at most {MAX_WIDTH}.",
                                        check=lambda v: v is None or all(0 < w <= MAX_WIDTH for w in v),
                                        expect=f"a list of positive integers, each at most {MAX_WIDTH}, or null")


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = _opt(0, f"Epochs to run (0: none; at most {MAX_EPOCHS}).", **_int_range(0, MAX_EPOCHS))
    lr: float = _opt(0.1, "Initial SGD learning rate (for a batch of `data.batch_size` images).",
                     check=_positive, expect="a positive number")
    momentum: float = _opt(0.9, "SGD momentum.", check=lambda v: 0 <= v < 1, expect="a number in [0, 1)")
    weight_decay: float = _opt(5e-4, "L2 weight decay.", check=_non_negative, expect="a number >= 0")
    nesterov: bool = _opt(False, "Nesterov momentum.")
    schedule: str = _opt("multistep", "LR schedule: `multistep` (times `gamma` at each of `milestones`), `cosine` "
                         "(to 0 over `epochs`) or `constant`.", choices=choices.LR_SCHEDULES)
    milestones: list[int] = _opt([], "Epochs at which `multistep` multiplies the LR by `gamma`.",
                                 check=lambda v: all(m > 0 for m in v) and list(v) == sorted(v),
                                 expect="an increasing list of positive integers")
    gamma: float = _opt(0.1, "LR factor at each milestone.", check=_positive, expect="a positive number")
    amp: str | None = _opt(None, "Mixed precision: `bf16`, `fp16` (with a gradient scaler) or null (float32). The "
                           "forward pass and loss run under `torch.autocast`; weights, optimizer and evaluation stay "
                           "float32.", choices=choices.AMP, or_null=True)
    channels_last: bool = _opt(False, "Keep weights and images in the channels-last memory format (faster convolutions "
                               "on tensor-core GPUs, above all with `amp`).")
    compile: bool = _opt(False, "Train through `torch.compile(model)` (the first steps compile; checkpoints hold the "
                         "plain model). Needs a C++ compiler on the CPU, Triton on a GPU.")
    sync_bn: bool = _opt(False, "Under `torchrun` with several processes: BatchNorm statistics over the whole global "
                         "batch (`nn.SyncBatchNorm` on GPUs, an all-reduce BatchNorm on CPUs) instead of each "
                         "process's share; the run then computes what one process with the same global batch does.")
    bn_l1: float = _opt(0.0, "Network slimming (Liu et al. 2017): add `bn_l1` times the sum of the absolute "
                        "BatchNorm scales (gamma) of the model to the training loss, driving the scales of unneeded "
                        "channels toward 0 for `prune.importance: bn_scale` to find (their paper: 1e-5 to 1e-4). 0: "
                        "plain loss.",
                        check=_non_negative, expect="a number >= 0")


@dataclass(frozen=True)
class DistillConfig:
    alpha: float = _opt(_MISSING, "Weight of the teacher's soft targets (0: plain cross-entropy, 1: labels unused).",
                        check=lambda v: 0 <= v <= 1, expect="a number in [0, 1]")
    temperature: float = _opt(_MISSING, "Softmax temperature of both networks' logits in the soft-target term "
                              f"(Hinton et al. use 1-20), at most {MAX_TEMPERATURE:g}.",
                              check=lambda v: 0 < v <= MAX_TEMPERATURE,
                              expect=f"a number in (0, {MAX_TEMPERATURE:g}]")


@dataclass(frozen=True)
class RetrainConfig(OptimConfig):
    """The training settings of fine-tuning after pruning: those of ``train`` plus a teacher, which only a pruning
    run has (the unpruned model)."""

    distill: DistillConfig | None = _opt(None, "Knowledge distillation from the unpruned model (Hinton et al. "
                                         "2015): `{\"alpha\": A, \"temperature\": T}` (both required; alpha in "
                                         f"[0, 1], T in (0, {MAX_TEMPERATURE:g}]) makes the retraining loss `(1 - A) * "
                                         "cross-entropy + A * T^2 * KL(teacher/T || student/T)`, the teacher "
                                         "being the model as loaded (frozen, eval mode; README, Retraining loss). "
                                         "Needs trained weights and `retrain.epochs` > 0; alpha 0 is plain "
                                         "retraining, bit for bit.")


def _retrain_defaults() -> dict[str, Any]:
    return {"epochs": 0, "lr": 0.001, "schedule": "constant"}


def _fraction_or_null(doc: str) -> Any:
    return _opt(None, doc, check=lambda v: v is None or 0 < v < 1, expect="a fraction in (0, 1) or null")


@dataclass(frozen=True)
class TargetConfig:
    macs: float | None = _fraction_or_null("The pruned model's multiply-accumulates as a fraction of the "
                                           "original's (one forward pass at the traced input size).")
    params: float | None = _fraction_or_null("The pruned model's parameters as a fraction of the original's.")


@dataclass(frozen=True)
class PruneConfig:
    method: str = _opt("weight", "Pruning method: `weight` (magnitude weight pruning, Han et al. 2015), `filter` "
                       "(L1-norm filter pruning with physical removal, Li et al. 2017) or `sensitivity` (prune each "
                       "conv layer alone at `sensitivity_ratios` and evaluate: Li et al. Figure 2).")
    percent: list[float] = _opt([0.5], "Fraction of weights to prune, in [0, 1); several values make a sweep "
                                "(a single number is accepted; each once). `--prune_percent` overrides it.",
                                check=lambda v: len(v) > 0 and all(0 <= p < 1 for p in v) and not repeated_ratio(v),
                                expect="a number in [0, 1) or a non-empty list of distinct ones", why=repeated_ratio)
    scope: str = _opt("layer_type", "Where a threshold applies: `layer_type` (one for all conv weights, one for all "
                      "linear weights: the seed's method), `global` (one for both) or `layer` (each layer its own).",
                      choices=choices.WEIGHT_SCOPES)
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
                         "L1 sums; Li et al. sec. 3.3).", choices=choices.FILTER_STRATEGIES)
    importance: str = _opt("l1", "`filter`/`sensitivity`: how channels are scored, the lowest going first: `l1` (sum "
                           "of a filter's absolute weights, Li et al.), `l2` (its Euclidean norm), `fpgm` (its "
                           "distance to the layer's other filters: near the geometric median is redundant, He et al. "
                           "2019), "
                           "`bn_scale` (the BatchNorm scale of the channel, Liu et al. 2017), `taylor` (Molchanov "
                           "et al. 2019: the squared first-order Taylor estimate of the loss change, from the "
                           "gradients of `taylor_batches` training batches; not with `--dry-run`) or `random` (seeded "
                           "by `seed`: the control). A channel written by several layers sums their scores.",
                           choices=choices.FILTER_IMPORTANCES)
    taylor_batches: int = _opt(10, "`filter`/`sensitivity` with `importance: taylor`: training batches (of "
                               "`data.batch_size` images, in eval mode) whose gradients score the channels; a "
                               "forward and backward pass each, again at every pruning step of `iterative`/`agp`. "
                               f"At most {MAX_TAYLOR_BATCHES}.", **_int_range(1, MAX_TAYLOR_BATCHES))
    skip: list[str] = _opt([], "`filter`/`sensitivity`: layers to leave alone (e.g. the sensitive ones a "
                           "sensitivity analysis found).")
    sensitivity_ratios: list[float] = _opt([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                                           "`sensitivity`: fractions of each layer's filters to remove, one at a time "
                                           "(each once).",
                                           check=lambda v: len(v) > 0 and all(0 < r < 1 for r in v)
                                           and not repeated_ratio(v),
                                           expect="a non-empty list of distinct numbers in (0, 1)", why=repeated_ratio)
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
                         choices=choices.PRUNE_SCHEDULES)
    rounds: int = _opt(4, "`iterative`: prune-and-retrain rounds; `retrain.epochs` must be a multiple of it (at "
                       f"most {MAX_EPOCHS}).",
                       **_int_range(1, MAX_EPOCHS))
    frequency: int = _opt(100, "`agp`: optimizer steps between two pruning steps.", check=_positive,
                          expect="a positive integer")
    agp_end: float = _opt(0.75, "`agp`: the fraction of the retraining steps over which the sparsity ramps up; the "
                          "rest trains at the final sparsity.", check=lambda v: 0 < v <= 1,
                          expect="a number in (0, 1]")
    target: TargetConfig | None = _opt(None, "`filter`: a budget instead of `layers`/`channels`/`ratios`: "
                                       "`{\"macs\": 0.5}` or `{\"params\": 0.3}` (one of them); the tool finds how "
                                       "many filters every prunable layer gives (`allocation`) so that the pruned "
                                       "model meets it within 1%, and reports what it reached.")
    allocation: str = _opt("global", "`filter` with `target`: `uniform` (the same fraction of every layer), "
                           "`global` (one ranking of all channels, each layer's scores divided by their mean so "
                           "layers of different scale compete fairly) or `sensitivity` (from `sensitivity_file`: "
                           "each layer gives what costs the same top-1 drop, the least sensitive most).",
                           choices=choices.ALLOCATIONS)
    sensitivity_file: str | None = _opt(None, "`filter` with `allocation: sensitivity`: the `sensitivity.json` of a "
                                        "`sensitivity` run of this model.")
    max_ratio: float = _opt(0.9, "`filter` with `target`: no layer loses more than this fraction of its filters.",
                            check=lambda v: 0 < v < 1, expect="a number in (0, 1)")
    from_scratch: bool = _opt(False, "`filter`/`weight`: prune a freshly initialised model instead of trained weights "
                              "and train it for `retrain.epochs` (Liu et al. 2019's 'train the pruned architecture "
                              "from scratch' baseline). Without it, pruning refuses a model with no "
                              "`model.checkpoint` or `model.pretrained`.")
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
    name: str = _opt(_MISSING, "Experiment name: the run directory is `<output.dir>/<name>`, so one folder name: "
                     "not empty, `.` or `..`; no `/`, `\\` or control characters; at most "
                     f"{MAX_NAME_BYTES} bytes in UTF-8 (255 less room for the `-N` of a repeated run).",
                     check=lambda v: run_name_problem(v) is None, why=run_name_problem,
                     expect="a folder name (not empty, '.' or '..'; no '/', '\\' or control characters; at most "
                     f"{MAX_NAME_BYTES} bytes in UTF-8)")
    seed: int = _opt(0, "Seed for Python, NumPy and torch (CPU runs repeat exactly), from "
                     f"{SEED_RANGE[0]} to {SEED_RANGE[1]}: the data order of epoch e is drawn from a torch generator "
                     f"seeded with `seed * {choices.SEED_STRIDE} + e`, which must lie in [-2^63, 2^64).",
                     check=lambda v: SEED_RANGE[0] <= v <= SEED_RANGE[1],
                     expect=f"an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]} (seed * {choices.SEED_STRIDE} + "
                     "epoch seeds torch's generators, which take -2**63 to 2**64 - 1)")
    print_freq: int = _opt(0, "Print a progress line every N steps when not on a terminal (0: once per epoch).",
                           check=_non_negative, expect="an integer >= 0")
    data: DataConfig = _opt({}, "Dataset and loading.")
    model: ModelConfig = _opt({}, "The network.")
    train: OptimConfig = _opt({}, "Training from scratch or from `model.checkpoint` (`trainer_exp.py`).")
    prune: PruneConfig = _opt({}, "Pruning (`pruner_exp.py`).")
    retrain: RetrainConfig = _opt({}, "Fine-tuning after pruning (`pruner_exp.py`); defaults: "
                                "0 epochs, lr 0.001, constant schedule.")
    output: OutputConfig = _opt({}, "Run outputs.")
    visdom: VisdomConfig = _opt({}, "Live plots.")

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON data (saved as ``config.json`` and in every checkpoint)."""
        return dataclasses.asdict(self)


# Section defaults that differ from the section class's own defaults.
SECTION_DEFAULTS: dict[tuple[str, ...], Callable[[], dict[str, Any]]] = {("retrain",): _retrain_defaults}



def section_defaults(prefix: str) -> dict[str, Any]:
    """The :data:`SECTION_DEFAULTS` of the section at dotted ``prefix`` ("" for the top level)."""
    path = tuple(prefix.split(".")) if prefix else ()
    return SECTION_DEFAULTS.get(path, dict)()


def field_default(f: dataclasses.Field[Any]) -> Any:
    """The class's own default of a field, or ``dataclasses.MISSING`` for a required one."""
    return f.default if f.default_factory is _MISSING else f.default_factory()


def describe(tp: Any) -> str:
    """A type annotation in words, for error messages and the reference table: ``a list of integers or null``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(describe(a) for a in inner) + (" or null" if len(inner) < len(args) else "")
    if dataclasses.is_dataclass(tp):
        return "an object"
    if origin is list:
        return f"a list of {describe(args[0]).replace('an ', '').replace('a ', '')}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def join_key(prefix: str, name: str) -> str:
    """The dotted key of ``name`` in the section at ``prefix``."""
    return f"{prefix}.{name}" if prefix else name
