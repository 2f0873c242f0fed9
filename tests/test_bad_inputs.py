"""Bad inputs through the real entry scripts: one table, one row per mistake a user can make.

Every row of ``CASES`` runs ``trainer_exp.py`` or ``pruner_exp.py`` in a process and a folder of its own. The
folder already holds an earlier run of the same experiment (``runs/bad_input`` with ``last.pth``,
``best.pth``, ``metrics.jsonl``, ``results.json``: arbitrary bytes) and the files the row refers to (``{name}`` in a
row is a file built by ``FILES``; ``{tmp}`` is the folder, ``{data}`` a tiny CIFAR-10). Each row must end with exit
status 2 and exactly one stderr line, ``error: ...``, without a traceback, that holds all the row's fragments (the
file, the dotted key, the value, what is allowed or what to do); argparse's own usage errors (``argparse=True``) print
usage lines first, so there the last line is checked. And the folder must be left exactly as it was: every file
byte-for-byte, nothing new, unless the row says what it may create (``creates``: a disk that fills up during a
checkpoint save does so after the run directory was made; even then no ``*.tmp`` and no half-written checkpoint).

Most rows fail before any data is read, but a fresh ``python pruner_exp.py`` spends 2-5 s importing torch and
torchvision, so the selected rows run in one module fixture (``outcomes``), and each test then checks its own row.

- Rows marked ``fresh`` (one or two a room: the experiment file, argparse, checkpoints, data read by DataLoader
  workers, a full disk) run as a user runs them, a new ``python SCRIPT ...`` each, side by side; those that limit the
  file size (``fsize``) or make a folder read-only (``read_only``; as root the script then runs in a user namespace of
  its own, where root cannot write it either) after the others, one at a time (``preexec_fn`` is not safe beside
  threads).
- Every other row runs in a process forked from one that has imported torch and torchvision (``forkrun.py``): its own
  process, exit status, stdout and stderr pipes, working folder, file size limit and user namespace, the script run as
  ``__main__`` with the project's own imports; only the interpreter's start-up is shared (``test_forkrun.py``). When
  this was written, every row run both ways gave the same exit status, stderr and files, and stdout but for ``Time:``.

Layer spec errors that need a traced model (unknown ``prune.layers`` of a filter run, too many filters, coupled layers)
are ``FILTER_ERRORS`` in ``test_filter_runner.py`` and are not repeated here.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import os
import random
import re
import struct
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from forkrun import Job, leave_root, limit_file_size, run_jobs
from test_data import write_cifar
from test_runner import PRUNER, RUN_TIMEOUT_S, TRAINER, Run, cifar, run_script, script_run, snapshot

NAME = "bad_input"
EARLIER = {"last.pth": b"earlier last checkpoint", "best.pth": b"earlier best checkpoint",
           "metrics.jsonl": b'{"epoch": 0}\n', "results.json": b'{"rows": []}\n'}
BASE: dict[str, Any] = {"name": NAME, "seed": 0, "data": cifar("{data}"), "model": {"arch": "resnet20"},
                        "train": {"epochs": 1, "lr": 0.05, "schedule": "constant"}, "output": {"dir": "{tmp}/runs"}}
WEIGHTS = {"model.checkpoint": "{r20}"}  # pruner rows that must get past "pruning needs trained weights"
# Root reads a file whatever its mode, so there the unreadable checkpoint is a directory (also not a weights file).
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
FSIZE_LIMIT = 64 * 1024  # bytes: room for config.json and metrics.jsonl, not for a ResNet-20 checkpoint (~2 MB)
DROP = object()  # an edit that deletes the key


@dataclass(frozen=True)
class Case:
    script: Path
    fragments: tuple[str, ...]  # each must appear in the error line ({names} expanded)
    edits: dict[str, Any] = field(default_factory=dict)  # dotted key -> value in BASE (DROP deletes the key)
    args: tuple[str, ...] = ()  # after --json FILE
    text: str | None = None  # the experiment file's text, instead of BASE with edits
    json: str = "{tmp}/bad.json"  # the --json argument
    fsize: int | None = None  # RLIMIT_FSIZE of the run: a disk that fills up
    creates: tuple[str, ...] = ()  # what the run may add to the folder before it fails
    argparse: bool = False  # argparse's usage error: its last line is checked
    read_only: str | None = None  # a folder ({names}) made read-only while the script runs (see leave_root)
    xfail: str | None = None  # the change outside this file's reach that the row waits for
    fresh: bool = False  # run as a new process (``python SCRIPT ...``), not forked from one that has imported torch


# ------------------------------------------------------------------------------------------------ files of the rows


def _save_toolkit_checkpoint(path: Path, arch: str, num_classes: int = 10) -> Path:
    """A checkpoint of this tool for a freshly initialised (seeded) ``arch``, as training writes it (epoch 0)."""
    from models import get_model
    from utils.checkpoint.format import make_checkpoint

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"num_classes": num_classes}
    torch.save(make_checkpoint(model=get_model(arch, **options), arch={"name": arch, "options": options}, config={}),
               path)
    return path


def _save_state_dict(path: Path, arch: str) -> Path:
    from models import get_model

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(get_model(arch, num_classes=10).state_dict(), path)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _truncated(folder: Path) -> Path:
    whole = _save_toolkit_checkpoint(folder / "weights" / "whole.pth", "resnet20").read_bytes()
    return _write(folder / "weights" / "half.pth", whole[: len(whole) // 2])


def _unreadable(folder: Path) -> Path:
    path = folder / "weights" / "unreadable.pth"
    if ROOT:
        path.mkdir(parents=True)
        return path
    return _write(path, b"mode 000 while the script runs")  # the mode is set after the snapshot (see run_case)


def _png(width: int, height: int, bit_depth_one: bool = False, seed: int = 0) -> bytes:
    """A PNG file: random RGB pixels, or with ``bit_depth_one`` an all-black 1-bit image, which compresses to almost
    nothing at any size (a decompression bomb)."""
    import zlib

    if not bit_depth_one:
        from PIL import Image

        buffer = io.BytesIO()
        pixels = random.Random(seed).randbytes(width * height * 3)
        Image.frombytes("RGB", (width, height), pixels).save(buffer, format="PNG")
        return buffer.getvalue()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(bytes(1 + (width + 7) // 8) * height, 9)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)  # a macOS ._ companion's start


def _image_tree(folder: Path, name: str, extra: dict[str, bytes] | None = None,
                links: dict[str, str] | None = None) -> Path:
    """``folder/name``: an ImageFolder of 32x32 PNGs, ``train/`` and ``val/`` with two classes of two images, plus
    ``extra`` files (path in the tree -> bytes) and folder ``links`` (path in the tree -> the link's text)."""
    root = folder / name
    for i, (split, cls, n) in enumerate((s, c, n) for s in ("train", "val") for c in ("cat", "dog") for n in (0, 1)):
        _write(root / split / cls / f"{n}.png", _png(32, 32, seed=i))
    for path, data in (extra or {}).items():
        _write(root / path, data)
    for path, target in (links or {}).items():
        (root / path).symlink_to(target)
    return root


def _edited(path: Path, save: Callable[[Path], Path], edit: Callable[[dict[str, Any]], object], *,
            compressed: bool = False) -> Path:
    """What ``save`` writes at ``path``, changed by ``edit`` (a checkpoint dict or a state dict, in place) and written
    again: as torch.save writes it, or compressed (``utils.checkpoint.compress.save_compressed``)."""
    from utils.checkpoint.compress import save_compressed

    obj = torch.load(save(path), weights_only=True)
    edit(obj)
    if compressed:
        save_compressed(path, obj)
    else:
        torch.save(obj, path)
    return path


def _nan_weights(state_dict: dict[str, torch.Tensor]) -> None:
    state_dict["layer1.0.conv1.weight"][0, 0, :, 0] = float("nan")  # 3 values of 2304


def _code_carrying(folder: Path) -> Path:
    """Weights beside an object whose unpickling opens (creates) ``code_ran`` in the folder: refused unread, the
    folder stays as it was; loaded with weights_only=False, the row would fail on the new file."""

    class Hook:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(folder / "code_ran"), "w"))

    path = _save_state_dict(folder / "weights" / "with_code.pth", "resnet20")
    torch.save({"state_dict": torch.load(path, weights_only=True), "hook": Hook()}, path)
    return path


def _zip_of_notes(folder: Path) -> Path:
    path = folder / "weights" / "notes.zip.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "the weights are on the shared drive")
    return path


def _pickled_model(folder: Path) -> Path:
    from models import get_model

    path = folder / "weights" / "whole_model.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(get_model("resnet20", num_classes=10), path)
    return path


def _protocol_4(folder: Path) -> Path:
    path = _save_state_dict(folder / "weights" / "protocol_4.pth", "resnet20")
    torch.save(torch.load(path, weights_only=True), path, pickle_protocol=4)
    return path


def _imagefolder_with_empty_class(folder: Path) -> Path:
    from PIL import Image

    root = folder / "images"
    for split, cls in (("train", "cat"), ("val", "cat"), ("val", "dog")):
        (root / split / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32), (128, 64, 32)).save(root / split / cls / "0.png")
    (root / "train" / "dog").mkdir()  # the empty class folder
    return root


def _imagefolder_8px(folder: Path) -> Path:
    """An ImageFolder of 8x8 images, two classes: smaller than VGG-16's five pools can take."""
    from PIL import Image

    root = folder / "images_8px"
    for split in ("train", "val"):
        for index, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8), (100 * index, 64, 32)).save(root / split / cls / "0.png")
    return root


def _interrupted_with_a_long_log(run: Path) -> Path:
    """A run to resume whose ``metrics.jsonl`` nearly fills :data:`FSIZE_LIMIT`: the next record does not fit."""
    checkpoint = _save_toolkit_checkpoint(run / "last.pth", "resnet20")
    line = b'{"epoch": 0, "note": "an earlier record"}\n'
    (run / "metrics.jsonl").write_bytes(line * ((FSIZE_LIMIT - 100) // len(line)))
    return checkpoint


FILES: dict[str, Callable[[Path], Path]] = {
    "r20": lambda d: _save_toolkit_checkpoint(d / "weights" / "resnet20.pth", "resnet20"),
    "r20_2_classes": lambda d: _save_toolkit_checkpoint(d / "weights" / "resnet20_2_classes.pth", "resnet20", 2),
    "r56_toolkit": lambda d: _save_toolkit_checkpoint(d / "weights" / "resnet56_toolkit.pth", "resnet56"),
    "r56_state_dict": lambda d: _save_state_dict(d / "weights" / "resnet56_state_dict.pth", "resnet56"),
    "tv18_state_dict": lambda d: _save_state_dict(d / "weights" / "tv_resnet18_state_dict.pth", "tv_resnet18"),
    "half": _truncated,
    "random": lambda d: _write(d / "weights" / "random.pth", random.Random(0).randbytes(4096)),
    "text": lambda d: _write(d / "weights" / "notes.pth", b"notes: the weights are on the shared drive\n"),
    "unreadable": _unreadable,
    "imagefolder": _imagefolder_with_empty_class,
    "file": lambda d: _write(d / "a_file", b"a regular file where a folder is expected"),
    "interrupted": lambda d: _save_toolkit_checkpoint(d / "interrupted" / "last.pth", "resnet20"),
    # values (the config room)
    "images_8px": _imagefolder_8px,
    "vgg": lambda d: _save_toolkit_checkpoint(d / "weights" / "vgg16_bn_cifar.pth", "vgg16_bn_cifar", 2),

    # bad data files (the data room)
    "truncated_png": lambda d: _image_tree(d, "truncated_png", {"val/dog/1.png": _png(32, 32, seed=9)[:300],
                                                                "val/cat/._0.png": APPLE_DOUBLE}),
    "empty_jpeg": lambda d: _image_tree(d, "empty_jpeg", {"train/cat/2.jpg": b""}),
    "bomb_png": lambda d: _image_tree(d, "bomb_png", {"val/cat/2.png": _png(20_000, 20_000, bit_depth_one=True)}),
    "link_loop": lambda d: _image_tree(d, "link_loop", links={"val/cat/loop": ".."}),
    "link_to_itself": lambda d: _image_tree(d, "link_to_itself", links={"train/dog/again": "."}),
    "link_to_class": lambda d: _image_tree(d, "link_to_class", links={"val/kitty": "cat"}),

    # checkpoints (the checkpoint room)
    "nan_state_dict": lambda d: _edited(d / "weights" / "nan_state_dict.pth",
                                        functools.partial(_save_state_dict, arch="resnet20"), _nan_weights),
    "nan_toolkit": lambda d: _edited(d / "weights" / "nan_toolkit.pth",
                                     functools.partial(_save_toolkit_checkpoint, arch="resnet20"),
                                     lambda c: _nan_weights(c["state_dict"])),
    "nan_compressed": lambda d: _edited(d / "weights" / "nan.sparse.pth",
                                        functools.partial(_save_toolkit_checkpoint, arch="resnet20"),
                                        lambda c: _nan_weights(c["state_dict"]), compressed=True),
    "inf_buffer": lambda d: _edited(d / "weights" / "inf_running_var.pth",
                                    functools.partial(_save_toolkit_checkpoint, arch="resnet20"),
                                    lambda c: c["state_dict"]["bn1.running_var"][:2].fill_(float("inf"))),
    "r20_100_classes": lambda d: _save_toolkit_checkpoint(d / "weights" / "resnet20_100_classes.pth", "resnet20", 100),
    "with_code": _code_carrying,
    "whole_model": _pickled_model,
    "protocol_4": _protocol_4,
    "zip_of_notes": _zip_of_notes,
    "no_state_dict": lambda d: _edited(d / "weights" / "no_state_dict.pth",
                                       functools.partial(_save_toolkit_checkpoint, arch="resnet20"),
                                       lambda c: c.pop("state_dict")),
    "no_arch": lambda d: _edited(d / "weights" / "no_arch.pth",
                                 functools.partial(_save_toolkit_checkpoint, arch="resnet20"),
                                 lambda c: c.pop("arch")),
    "unknown_option": lambda d: _edited(d / "weights" / "unknown_option.pth",
                                        functools.partial(_save_toolkit_checkpoint, arch="resnet20"),
                                        lambda c: c["arch"]["options"].update(width=2)),

    # the run folder (training, run directories)
    "long_log": lambda d: _interrupted_with_a_long_log(d / "long_log"),

}


# ------------------------------------------------------------------------------------------------------- the table

GPUS = torch.cuda.device_count()
BAD_JSON = '{\n  "name": "bad_input",\n  "model": {"arch": "resnet20",}\n}\n'  # trailing comma: line 3 column 32
NEW_RUN = "runs/bad_input-2"  # the run directory a new run gets beside the earlier runs/bad_input

CASES: dict[str, Case] = {
    # the experiment file itself
    "json_file_missing": Case(TRAINER, ("{tmp}/absent.json", "experiment file not found", "--json"),
                              json="{tmp}/absent.json"),
    "json_is_a_directory": Case(TRAINER, ("{tmp}: is a directory", "--json takes an experiment file"), json="{tmp}"),
    "json_malformed": Case(TRAINER, ("{tmp}/bad.json", "invalid JSON at line 3 column 32", "property name"),
                           text=BAD_JSON, fresh=True),
    "json_top_level_list": Case(TRAINER, ("{tmp}/bad.json", "top level must be a JSON object", "got list"),
                                text='[{"name": "bad_input"}]\n'),
    "missing_model_arch": Case(TRAINER, ("bad.json: model.arch: missing", "expected a string", "resnet20"),
                               edits={"model.arch": DROP}),
    "missing_name": Case(TRAINER, ("bad.json: name: missing", "expected a string", "run directory"),
                         edits={"name": DROP}),
    "unknown_section": Case(TRAINER, ("bad.json: trian: unknown key", "did you mean train?", "valid keys here: name"),
                            edits={"trian.epochs": 1}),
    "unknown_key": Case(TRAINER, ("bad.json: train.lrr: unknown key", "did you mean train.lr?",
                                  "valid keys here: epochs, lr, momentum"), edits={"train.lrr": 0.1}),
    # wrong types
    "string_for_int": Case(TRAINER, ("bad.json: train.epochs", "expected an integer >= 0", 'got "2"'),
                           edits={"train.epochs": "2"}),
    "list_for_float": Case(TRAINER, ("bad.json: train.lr", "expected a positive number", "got [0.1]"),
                           edits={"train.lr": [0.1]}),
    "bool_for_number": Case(TRAINER, ("bad.json: data.batch_size", "expected a positive integer", "got true"),
                            edits={"data.batch_size": True}),
    "object_for_string": Case(TRAINER, ("bad.json: model.arch", "expected a string", 'got {"name": "resnet20"}'),
                              edits={"model.arch": {"name": "resnet20"}}),
    # values out of range
    "epochs_negative": Case(TRAINER, ("bad.json: train.epochs", "an integer >= 0", "got -1"),
                            edits={"train.epochs": -1}),
    "lr_zero": Case(TRAINER, ("bad.json: train.lr", "a positive number", "got 0"), edits={"train.lr": 0}),
    "lr_negative": Case(TRAINER, ("bad.json: train.lr", "a positive number", "got -0.1"), edits={"train.lr": -0.1}),
    "schedule_unknown": Case(TRAINER, ("bad.json: train.schedule", 'one of "multistep", "cosine", "constant"',
                                       'got "step"'), edits={"train.schedule": "step"}),
    "prune_percent_json_negative": Case(PRUNER, ("bad.json: prune.percent", "[0, 1)", "got -0.1"),
                                        edits={"prune.percent": -0.1}),
    "prune_percent_json_one": Case(PRUNER, ("bad.json: prune.percent", "[0, 1)", "got 1.0"),
                                   edits={"prune.percent": 1.0}),
    "prune_percent_json_above_one": Case(PRUNER, ("bad.json: prune.percent", "[0, 1)", "got [0.5, 1.5]"),
                                         edits={"prune.percent": [0.5, 1.5]}),
    "prune_percent_cli_negative": Case(PRUNER, ("--prune_percent -0.1:", "[0, 1)"), args=("--prune_percent", "-0.1")),
    "prune_percent_cli_one": Case(PRUNER, ("--prune_percent 1.0:", "[0, 1)"), args=("--prune_percent", "1.0")),
    "prune_percent_cli_above_one": Case(PRUNER, ("--prune_percent 1.5", "[0, 1)"),
                                        args=("--prune_percent", "0.5", "1.5")),
    "prune_percent_cli_not_a_number": Case(PRUNER, ("argument --prune_percent", "invalid float value: 'abc'"),
                                           args=("--prune_percent", "abc"), argparse=True, fresh=True),
    # registry names and what the chosen method reads
    "unknown_arch": Case(TRAINER, ("bad.json: model.arch", "'resnet21'", "resnet20", "resnet56", "vgg16_bn_cifar",
                                   "tv_resnet18", "did you mean 'resnet20' or 'resnet32'?"),
                         edits={"model.arch": "resnet21"}),
    "unknown_dataset": Case(TRAINER, ("bad.json: data.name", "'cifar100'", "cifar10, digits, imagefolder, imagenet",
                                      "did you mean 'cifar10'?"), edits={"data.name": "cifar100"}),
    "unknown_prune_method": Case(PRUNER, ("bad.json: prune.method", "'filters'", "filter, sensitivity, weight",
                                          "did you mean 'filter'?"), edits={**WEIGHTS, "prune.method": "filters"}),
    "weight_pruning_given_layers": Case(PRUNER, ("bad.json: prune.layers", 'prune.method "filter" and "sensitivity"',
                                                 "every conv and linear layer", "Remove prune.layers"),
                                        edits={**WEIGHTS, "prune.layers": ["conv1"]}),
    "sensitivity_unknown_layer": Case(PRUNER, ("prune.layers", "conv99", "can be pruned alone", "conv2, conv4"),
                                      edits={**WEIGHTS, "prune.method": "sensitivity", "prune.layers": ["conv99"]}),
    "pruner_without_weights": Case(PRUNER, ("pruning needs trained weights", "model.checkpoint",
                                            "model.pretrained")),
    "pruner_resume_not_a_run": Case(PRUNER, ("--resume {tmp}/nowhere", "not a run directory of pruner_exp.py",
                                             "'Run directory:'"),
                                    edits=WEIGHTS, args=("--resume", "{tmp}/nowhere")),
    # --set
    "set_without_equals": Case(TRAINER, ("--set train.epochs", "KEY=VALUE"), args=("--set", "train.epochs")),
    "export_evaluate_without_resume": Case(TRAINER, ("--export with --evaluate", "add --resume CKPT"),
                                           args=("--evaluate", "--export", "onnx")),
    "export_unknown_format": Case(TRAINER, ("argument --export", "invalid choice: 'tflite'"),
                                  args=("--export", "tflite"), argparse=True),
    "set_unknown_key": Case(TRAINER, ("--set train.lrr", "unknown key", "did you mean train.lr?"),
                            args=("--set", "train.lrr=0.1")),
    "set_bad_type": Case(TRAINER, ("--set train.epochs", "expected an integer >= 0", 'got "two"'),
                         args=("--set", "train.epochs=two")),
    # the machine
    "gpu_absent": Case(TRAINER, (f"--gpu {GPUS}", "CUDA device", "leave out --gpu"), args=("--gpu", str(GPUS))),
    # checkpoints
    "checkpoint_missing": Case(TRAINER, ("checkpoint not found", "{tmp}/absent.pth", "check model.checkpoint"),
                               edits={"model.checkpoint": "{tmp}/absent.pth"}),
    "checkpoint_unreadable": Case(TRAINER, ("checkpoint {unreadable}", "is a directory" if ROOT else "cannot be read",
                                            "model.checkpoint"), edits={"model.checkpoint": "{unreadable}"}),
    "checkpoint_truncated": Case(TRAINER, ("checkpoint {half} is truncated", "cut short", "check model.checkpoint"),
                                 edits={"model.checkpoint": "{half}"}, fresh=True),
    "checkpoint_random_bytes": Case(TRAINER, ("checkpoint {random}", "not a PyTorch checkpoint", "not a zip archive",
                                              "check model.checkpoint"), edits={"model.checkpoint": "{random}"}),
    "checkpoint_text_file": Case(TRAINER, ("checkpoint {text}", "text file that begins 'notes: the weig",
                                           "check model.checkpoint"), edits={"model.checkpoint": "{text}"}),
    "checkpoint_other_arch_keys": Case(TRAINER, ("{r56_state_dict}", "does not match the model",
                                                 "unexpected keys layer1.3.conv1.weight"),
                                       edits={"model.checkpoint": "{r56_state_dict}"}),
    "checkpoint_other_arch_shapes": Case(TRAINER, ("{tv18_state_dict}", "conv1.weight has shape (64, 3, 7, 7)",
                                                   "the model expects (16, 3, 3, 3)", "another architecture"),
                                         edits={"model.checkpoint": "{tv18_state_dict}"}),
    "checkpoint_other_arch_toolkit": Case(TRAINER, ("{r56_toolkit}", "holds a resnet56", "model.arch is 'resnet20'"),
                                          edits={"model.checkpoint": "{r56_toolkit}"}),
    "checkpoint_fewer_classes": Case(TRAINER, ("{r20_2_classes}", "predicts 2 classes but the dataset has 10",
                                               "data.name"), edits={"model.checkpoint": "{r20_2_classes}"}),
    "num_classes_fewer_than_data": Case(TRAINER, ("model.num_classes: 2 is fewer than the 10 classes",
                                                  "data.name 'cifar10'", "at least 10"),
                                        edits={"model.num_classes": 2}),
    "num_classes_contradicts_checkpoint": Case(PRUNER, ("model.num_classes: 100",
                                                        "{r20} holds a model with num_classes 10",
                                                        "leave model.num_classes out"),
                                               edits={**WEIGHTS, "model.num_classes": 100}),
    "resume_fewer_classes": Case(TRAINER, ("{r20_2_classes}", "predicts 2 classes but the dataset has 10"),
                                 args=("--resume", "{r20_2_classes}")),
    "resume_missing": Case(TRAINER, ("checkpoint not found", "{tmp}/absent.pth", "check --resume"),
                           args=("--resume", "{tmp}/absent.pth")),
    "evaluate_missing": Case(TRAINER, ("checkpoint not found", "{tmp}/absent.pth", "check --resume"),
                             args=("--evaluate", "--resume", "{tmp}/absent.pth")),
    "resume_truncated": Case(TRAINER, ("checkpoint {half} is truncated", "check --resume"),
                             args=("--resume", "{half}")),
    "resume_foreign_file": Case(TRAINER, ("{r56_state_dict}", "not a checkpoint written by this tool",
                                          "model.checkpoint"), args=("--resume", "{r56_state_dict}")),
    # data
    "cifar10_missing_root": Case(TRAINER, ("{tmp}/no_cifar/cifar-10-batches-py", "data_batch_1..data_batch_5",
                                           "test_batch", "batches.meta", "data.root", "data.download"),
                                 edits={"data.root": "{tmp}/no_cifar"}),
    "imagefolder_missing_root": Case(TRAINER, ("imagefolder: data.root {tmp}/no_images does not exist",
                                               "<data.root>/train/<class>/*.jpg", "point data.root"),
                                     edits={"data.name": "imagefolder", "data.root": "{tmp}/no_images"}),
    "imagefolder_empty_class": Case(TRAINER, ("class folder {imagefolder}/train/dog has no images", ".png",
                                              "add images or delete the folder"),
                                    edits={"data.name": "imagefolder", "data.root": "{imagefolder}",
                                           "data.image_size": 32}),
    # outputs. A full disk: config.json and metrics.jsonl fit, the checkpoint does not; what may appear is listed, so
    # a last.pth or a *.tmp left behind fails the row, and the resumed run's own last.pth must keep its bytes.
    "output_dir_under_a_file": Case(TRAINER, ("output.dir '{file}/runs' cannot be created", "{file} is a file",
                                              "--set output.dir=PATH"), edits={"output.dir": "{file}/runs"}),
    "disk_full_new_run": Case(TRAINER, (f"could not write {{tmp}}/{NEW_RUN}/last.pth", "File too large",
                                        "the previous file, if any, is intact"), fsize=FSIZE_LIMIT,
                              creates=(NEW_RUN, f"{NEW_RUN}/config.json", f"{NEW_RUN}/metrics.jsonl"), fresh=True),
    "disk_full_resume": Case(TRAINER, ("could not write {interrupted}", "File too large", "is intact"),
                             args=("--resume", "{interrupted}"), fsize=FSIZE_LIMIT,
                             creates=("interrupted/metrics.jsonl",)),
    # values accepted and then crashing or misleading (the config room)
    "seed_above_range": Case(TRAINER, ("bad.json: seed", "expected an integer from -92230953439944 to 184461906879889",
                                       "got 184461906879890"), edits={"seed": 184461906879890}),
    "seed_2_to_the_63": Case(TRAINER, ("bad.json: seed", "to 184461906879889", f"got {2**63}"),
                             edits={"seed": 2**63}),
    "batch_size_1e20": Case(TRAINER, ("bad.json: data.batch_size", "a positive integer, at most 1048576",
                                      f"got {10**20}"), edits={"data.batch_size": 10**20}),
    "num_classes_1e9": Case(TRAINER, ("bad.json: model.num_classes", "at most 100000", "got 1000000000"),
                            edits={"model.num_classes": 10**9}),
    "name_with_nul": Case(TRAINER, ("bad.json: name", 'got "bad\\u0000input"', 'it holds "\\u0000"',
                                    "no path separator or control character"), edits={"name": "bad\x00input"}),
    "name_300_characters": Case(TRAINER, ("bad.json: name", "(300 characters)", "300 bytes in UTF-8, more than 248"),
                                edits={"name": "x" * 300}),
    "image_size_too_small_trainer": Case(TRAINER, ("data.image_size 8", "'vgg16_bn_cifar' cannot take 8x8 images",
                                                   "the smallest size it takes is 32", "set data.image_size to 32"),
                                         edits={"data.name": "imagefolder", "data.root": "{images_8px}",
                                                "data.image_size": 8, "model.arch": "vgg16_bn_cifar"}),
    "image_size_too_small_pruner": Case(PRUNER, ("data.image_size 8", "'vgg16_bn_cifar' cannot take 8x8 images",
                                                 "set data.image_size to 32"),
                                        edits={"data.name": "imagefolder", "data.root": "{images_8px}",
                                               "data.image_size": 8, "model.arch": "vgg16_bn_cifar",
                                               "model.checkpoint": "{vgg}"}),
    "image_size_too_large_for_vgg": Case(TRAINER, ("data.image_size 96", "cannot take 96x96 images",
                                                   "it takes sizes 32 to 63"),
                                         edits={"data.name": "imagefolder", "data.root": "{images_8px}",
                                                "data.image_size": 96, "model.arch": "vgg16_bn_cifar"}),
    # json.loads would keep the second "train" without a word, and train for 0 epochs
    "json_key_given_twice": Case(TRAINER, ("{tmp}/bad.json: line 4: train is given twice (also at line 3)",
                                           "keeps only the last one"),
                                 text='{\n  "name": "bad_input",\n  "train": {"epochs": 1, "lr": 0.05},\n'
                                      '  "train": {"lr": 0.05},\n  "model": {"arch": "resnet20"}\n}\n'),
    "prune_percent_cli_repeated": Case(PRUNER, ("--prune_percent 0.5 0.3 0.5: 0.5 is given twice",
                                                "remove the repeat"), edits=WEIGHTS,
                                       args=("--prune_percent", "0.5", "0.3", "0.5")),
    "prune_percent_json_repeated": Case(PRUNER, ("bad.json: prune.percent", "got [0.5, 0.5]", "0.5 is given twice"),
                                        edits={**WEIGHTS, "prune.percent": [0.5, 0.5]}),

    # bad data files (the data room). A file that cannot be decoded stops the run with one line naming it, in any
    # process (a DataLoader worker's included); where that is past the start of training or a sweep, the new run
    # folder holds only its config.json. A macOS ._ companion, which sorts first, is not read at all.
    "image_truncated": Case(TRAINER, ("cannot read the image {truncated_png}/val/dog/1.png", "is truncated or damaged",
                                      "replace or delete the file", "data.skip_bad_images: true"),
                            edits={"data.name": "imagefolder", "data.root": "{truncated_png}"}, args=("--evaluate",)),
    "image_empty_in_worker": Case(TRAINER, ("cannot read the image {empty_jpeg}/train/cat/2.jpg", "empty (0 bytes)",
                                            "data.skip_bad_images: true"),
                                  edits={"data.name": "imagefolder", "data.root": "{empty_jpeg}", "data.workers": 2},
                                  creates=(NEW_RUN, f"{NEW_RUN}/config.json"), fresh=True),
    "image_decompression_bomb_in_sweep": Case(PRUNER, ("cannot read the image {bomb_png}/val/cat/2.png",
                                                       "decompression-bomb limit", "data.skip_bad_images: true"),
                                              edits={"data.name": "imagefolder", "data.root": "{bomb_png}",
                                                     "model.checkpoint": "{r20_2_classes}"},
                                              creates=(NEW_RUN, f"{NEW_RUN}/config.json")),
    # A folder link back into the tree would read other classes' images again under its label: refused, by name.
    "image_link_loop": Case(TRAINER, ("folder link {link_loop}/val/cat/loop -> ..", "leads back into",
                                      "remove the link"),
                            edits={"data.name": "imagefolder", "data.root": "{link_loop}"}),
    "image_link_to_itself": Case(TRAINER, ("folder link {link_to_itself}/train/dog/again -> .", "leads back into",
                                           "remove the link"),
                                 edits={"data.name": "imagefolder", "data.root": "{link_to_itself}"}),
    "image_class_link_to_class": Case(TRAINER, ("folder link {link_to_class}/val/kitty -> cat", "leads back into"),
                                      edits={"data.name": "imagefolder", "data.root": "{link_to_class}"}),

    # checkpoints (the checkpoint room)
    "checkpoint_nan_weights": Case(TRAINER, ("checkpoint {nan_state_dict}: layer1.0.conv1.weight holds NaN",
                                             "(3 NaN of 2304)", "training diverged", "use an earlier"),
                                   edits={"model.checkpoint": "{nan_state_dict}"}),
    "checkpoint_nan_weights_pruned": Case(PRUNER, ("checkpoint {nan_toolkit}: layer1.0.conv1.weight holds NaN",
                                                   "(3 NaN of 2304)"), edits={"model.checkpoint": "{nan_toolkit}"}),
    "checkpoint_nan_compressed": Case(PRUNER, ("checkpoint {nan_compressed}: layer1.0.conv1.weight holds NaN",),
                                      edits={"model.checkpoint": "{nan_compressed}"}, fresh=True),
    "checkpoint_inf_running_var": Case(PRUNER, ("checkpoint {inf_buffer}: bn1.running_var holds NaN or infinite",
                                                "(2 infinite of 16)"), edits={"model.checkpoint": "{inf_buffer}"}),
    "resume_nan_weights": Case(TRAINER, ("checkpoint {nan_toolkit}: layer1.0.conv1.weight holds NaN",),
                               args=("--resume", "{nan_toolkit}")),
    "checkpoint_more_classes": Case(TRAINER, ("{r20_100_classes}", "predicts 100 classes but the dataset has 10",
                                              "data.name"), edits={"model.checkpoint": "{r20_100_classes}"}),
    "resume_more_classes": Case(TRAINER, ("{r20_100_classes}", "predicts 100 classes but the dataset has 10"),
                                args=("--evaluate", "--resume", "{r20_100_classes}")),
    "checkpoint_carries_code": Case(TRAINER, ("checkpoint {with_code} holds Python objects other than tensors",
                                              "refused for safety: io.open;", "weights_only=False would run code",
                                              "if you trust its source, convert it once"),
                                    edits={"model.checkpoint": "{with_code}"}),
    "resume_pickled_model": Case(TRAINER, ("checkpoint {whole_model} holds Python objects other than tensors",
                                           "models.resnet_cifar.", "model.state_dict() of a saved model",
                                           "give that as model.checkpoint"), args=("--resume", "{whole_model}")),
    "checkpoint_pickle_protocol_4": Case(TRAINER, ("checkpoint {protocol_4} was saved with pickle protocol 4",
                                                   "weights_only=True", "convert it once"),
                                         edits={"model.checkpoint": "{protocol_4}"}),
    "checkpoint_zip_not_a_checkpoint": Case(PRUNER, ("checkpoint {zip_of_notes} is not a PyTorch checkpoint",
                                                     "a zip archive of readme.txt", "<name>/data.pkl",
                                                     "check model.checkpoint"),
                                            edits={"model.checkpoint": "{zip_of_notes}"}),
    "checkpoint_no_state_dict": Case(PRUNER, ("{no_state_dict}: the checkpoint has no 'state_dict'",
                                              "edited or stripped"), edits={"model.checkpoint": "{no_state_dict}"}),
    "resume_no_arch": Case(TRAINER, ("{no_arch}: the checkpoint has no 'arch'", "edited or stripped"),
                           args=("--resume", "{no_arch}")),
    "checkpoint_unknown_option": Case(TRAINER, ("{unknown_option}: arch.options.width",
                                                "not an option of model 'resnet20'", "it takes num_classes, shortcut",
                                                "was edited"), edits={"model.checkpoint": "{unknown_option}"}),

    # the run folder (training, run directories). A run folder that became read-only is refused before any work, and
    # a full disk while appending to metrics.jsonl leaves the log as it was (no half line).
    "resume_read_only_run": Case(TRAINER, ("the run folder {tmp}/interrupted is not writable", "Permission denied",
                                           "make the folder writable", "resume the copy"),
                                 args=("--resume", "{interrupted}"), read_only="{tmp}/interrupted"),
    "disk_full_metrics": Case(TRAINER, ("could not write {tmp}/long_log/metrics.jsonl", "File too large",
                                        "free some space", "is intact"),
                              args=("--resume", "{long_log}"), fsize=FSIZE_LIMIT),

}


# ------------------------------------------------------------------------------------------------------ the runs


def expand(value: Any, names: dict[str, str]) -> Any:
    """``value`` with every ``{name}`` of ``names`` replaced (other braces, as in JSON, stay)."""
    if isinstance(value, str):
        return re.sub(r"\{(\w+)\}", lambda m: names.get(m.group(1), m.group(0)), value)
    if isinstance(value, list | tuple):
        return type(value)(expand(v, names) for v in value)
    if isinstance(value, dict):
        return {k: expand(v, names) for k, v in value.items()}
    return value


def experiment(case: Case, names: dict[str, str]) -> str:
    if case.text is not None:
        return case.text
    config = copy.deepcopy(BASE)
    for key, value in case.edits.items():
        *sections, last = key.split(".")
        node = config
        for section in sections:
            node = node.setdefault(section, {})
        if value is DROP:
            del node[last]
        else:
            node[last] = value
    return json.dumps(expand(config, names), indent=2)


@functools.cache
def can_leave_root() -> bool:
    try:
        return subprocess.run(["true"], preexec_fn=leave_root, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def preexec_for(case: Case) -> Callable[[], None] | None:
    """What a fresh row's child runs before the script: a file size limit, or leaving root for a read-only folder.
    Such rows run one at a time (``preexec_fn`` is not safe beside threads)."""
    if case.fsize:
        return functools.partial(limit_file_size, case.fsize)
    return leave_root if case.read_only and ROOT else None


@dataclass
class Outcome:
    names: dict[str, str]
    before: dict[str, bytes | None]
    run: Run | None = None
    after: dict[str, bytes | None] | None = None


def prepare(case: Case, folder: Path, data: Path) -> Outcome:
    """Build the row's files and the earlier run in ``folder`` and snapshot it."""
    names = {"tmp": str(folder), "data": str(data)}
    used = re.findall(r"\{(\w+)\}", json.dumps([case.edits, case.args, case.json, case.fragments], default=str))
    for name in dict.fromkeys(used):
        if name not in names:
            names[name] = str(FILES[name](folder))
    (folder / "bad.json").write_text(experiment(case, names))
    earlier = folder / "runs" / NAME
    earlier.mkdir(parents=True)
    for file, content in EARLIER.items():
        (earlier / file).write_bytes(content)
    return Outcome(names, snapshot(folder))


@contextlib.contextmanager
def locked(case: Case, names: dict[str, str]) -> Iterator[None]:
    """While the row's script runs: the unreadable checkpoint unreadable, the row's read-only folder read-only."""
    unreadable = Path(names["unreadable"]) if "unreadable" in names and not ROOT else None
    frozen = Path(expand(case.read_only, names)) if case.read_only else None
    if unreadable is not None:
        unreadable.chmod(0)
    if frozen is not None:
        frozen.chmod(0o555)
    try:
        yield
    finally:
        if unreadable is not None:
            unreadable.chmod(0o644)
        if frozen is not None:
            frozen.chmod(0o755)


def argv(case: Case, names: dict[str, str]) -> tuple[str, ...]:
    """The row's arguments after the script."""
    return ("--json", expand(case.json, names), *expand(case.args, names))


def execute(case: Case, folder: Path, outcome: Outcome) -> Outcome:
    """Run the row's script fresh (``python SCRIPT ...``) in ``folder`` and snapshot the folder again."""
    with locked(case, outcome.names):
        outcome.run = run_script(case.script, *argv(case, outcome.names), cwd=folder, preexec_fn=preexec_for(case))
    outcome.after = snapshot(folder)
    return outcome


def execute_forked(rows: dict[str, tuple[Case, Path, Outcome]], work: Path, parallel: int) -> None:
    """Run the rows' scripts, each in a process forked from one that has imported torch (``forkrun.py``), and
    snapshot each row's folder again."""
    jobs = {name: Job(str(case.script), argv(case, outcome.names), str(folder), fsize=case.fsize,
                      leave_root=bool(case.read_only and ROOT)) for name, (case, folder, outcome) in rows.items()}
    with contextlib.ExitStack() as stack:
        for case, _, outcome in rows.values():
            stack.enter_context(locked(case, outcome.names))
        finished = run_jobs(jobs, work, parallel=parallel, timeout=RUN_TIMEOUT_S)
    for name, (_, folder, outcome) in rows.items():
        outcome.run = script_run(*finished[name], cwd=folder)
        outcome.after = snapshot(folder)


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The outcome of every selected row (or the exception that stopped it): the ``fresh`` rows as new processes, side
    by side, then those with a ``preexec_fn`` one at a time; at the same time the others, forked (``forkrun.py``)."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.module is request.module and "case" in getattr(getattr(item, "callspec", None), "params", {})]
    data = tmp_path_factory.mktemp("bad_inputs_data")
    write_cifar(data, per_batch=8, n_test=10)
    folders = {case: tmp_path_factory.mktemp(case) for case in selected}
    results: dict[str, Any] = {}
    for case in selected:
        try:
            results[case] = prepare(CASES[case], folders[case], data)
        except Exception as exc:  # noqa: BLE001 - reported by the row's own test
            results[case] = exc
    ready = [case for case in selected if isinstance(results[case], Outcome)]
    forked = {case: (CASES[case], folders[case], results[case]) for case in ready if not CASES[case].fresh}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    with ThreadPoolExecutor(max_workers=cores) as pool:
        futures = {}
        if forked:  # first: its server starts at once, while the fresh rows queue for the pool's other threads
            futures["<forked>"] = pool.submit(execute_forked, forked, tmp_path_factory.mktemp("forkrun"), cores)
        futures |= {case: pool.submit(execute, CASES[case], folders[case], results[case]) for case in ready
                    if CASES[case].fresh and preexec_for(CASES[case]) is None}
    for case, future in futures.items():
        if future.exception() is not None:  # a forked batch that failed as a whole fails each of its rows
            results.update({row: future.exception() for row in (forked if case == "<forked>" else [case])})
    for case in ready:  # fresh rows with a preexec_fn, one at a time now that the pool's threads are gone
        if CASES[case].fresh and preexec_for(CASES[case]) is not None:
            try:
                results[case] = execute(CASES[case], folders[case], results[case])
            except Exception as exc:  # noqa: BLE001 - reported by the row's own test
                results[case] = exc
    return results


# ------------------------------------------------------------------------------------------------------ the test


@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.xfail(strict=True, reason=row.xfail))
                                  if row.xfail else case for case, row in CASES.items()])
def test_user_errors_are_one_line_exit_2_and_touch_nothing(case: str, outcomes: dict[str, Any]) -> None:
    outcome, row = outcomes[case], CASES[case]
    if row.read_only and ROOT and not can_leave_root():
        pytest.skip("root writes to a read-only folder, and no user namespace can be made here to test as a user")
    if isinstance(outcome, BaseException):
        raise outcome
    run = outcome.run
    assert run is not None and outcome.after is not None
    report = f"exit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert run.returncode == 2, report
    assert "Traceback" not in run.stderr, report
    lines = run.stderr.splitlines()
    if row.argparse:
        line = lines[-1]
        assert line.startswith(f"{row.script.name}: error: "), report
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), report
        line = lines[0]
    for fragment in expand(row.fragments, outcome.names):
        assert fragment in line, (fragment, line)

    # Nothing touched: the earlier run and every input byte-for-byte, nothing new but what the row may create.
    assert not [p for p in outcome.after if p.endswith(".tmp")], sorted(outcome.after)
    assert sorted(set(outcome.after) - set(outcome.before)) == sorted(expand(row.creates, outcome.names))
    changed = [p for p, content in outcome.before.items() if outcome.after.get(p, b"<gone>") != content]
    assert changed == [], changed
    if not row.creates:
        assert run.path is None  # no "Run directory:" announced
