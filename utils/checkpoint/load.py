"""The one place that reads a checkpoint: plain weight files, this tool's checkpoints and compressed ones.

Every file is loaded with strict keys, and every failure turns into one clear line.

A checkpoint that loads with ``strict=False`` into the wrong architecture silently evaluates a
half-random network, and the resulting accuracy looks like a pruning result. So loading here is
always strict, and a mismatch is a :class:`UserError` that says what differs and, where the pattern
is known (the other shortcut option, another depth), which model option to change.

Accepted files: a bare state dict, or a dict that wraps one under ``state_dict`` (akamaster, this
project's own checkpoints) or ``model``. A ``module.`` prefix from ``nn.DataParallel`` is removed.
Files are read with ``weights_only=True``: a checkpoint is data, and unpickling arbitrary objects
from a downloaded file can run code.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import get_model, model_options
from pruning.masks import validate_masks
from pruning.surgery import apply_shapes
from utils.checkpoint.compress import expand_checkpoint, is_compressed_checkpoint
from utils.checkpoint.format import FORMAT_VERSION, is_toolkit_checkpoint
from utils.core.errors import UserError

# Wrapper keys under which training scripts store the state dict, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model")
_DATA_PARALLEL_PREFIX = "module."
# Old checkpoints (before PyTorch 0.4.1, e.g. akamaster's) have no BatchNorm step counter. The
# counter only matters for BatchNorm with momentum=None, so the model's own value is kept.
_TOLERATED_MISSING_SUFFIX = "num_batches_tracked"
_KEYS_SHOWN = 3


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else {EOFError: "unexpected end of file"}.get(type(exc), type(exc).__name__)
    line = line.split(". ")[0]  # torch appends paragraphs of advice to the first sentence, which is the news
    if line.strip("'").isdigit():  # a KeyError from inside the unpickler says only "101"
        line = f"{type(exc).__name__} {line}"
    return line if len(line) <= 100 else line[:97] + "..."


# What torch.save writes first: a zip archive (PyTorch >= 1.6) or a pickle (legacy format, protocol 2+).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
_HEAD_SHOWN = 16


def _header_problem(path: Path) -> str | None:
    """What the first bytes of ``path`` say about a file torch cannot read, or None when they look like torch's.

    torch's own errors for such files ("Unsupported operand 110", "KeyError 101") describe the unpickler's state, not
    the file; the header tells an empty file, a text file (an HTML error page saved by a failed download, notes) and
    random bytes apart, and a zip archive that breaks off before its end is a file cut short.
    """
    try:
        with path.open("rb") as f:
            head = f.read(_HEAD_SHOWN)
    except OSError:
        return None
    if not head:
        return "the file is empty"
    if head.startswith(_ZIP_MAGIC):
        return "a zip archive that ends early or is damaged: was it cut short while saving, copying or downloading?"
    if head[0] == _PICKLE_PROTO:
        return None
    text = head.decode("utf-8", errors="replace")  # the cut may split a character: only the last one can be lost
    if all(c != "\ufffd" and (c.isprintable() or c.isspace()) for c in text.rstrip("\ufffd")):
        return f"it is a text file that begins {text.strip()!r}"
    return (f"it begins with the bytes {head[:4].hex(' ')}, not a zip archive ({_ZIP_MAGIC[:2].decode()}) or a "
            "pickle as torch.save writes")


def _corrupt(path: Path, exc: BaseException, reason: str | None = None, *, key: str = "model.checkpoint") -> str:
    reason = reason or _first_line(exc)
    header = _header_problem(path)
    reason = f"{reason}; {header}" if header else reason
    return f"checkpoint {path} is truncated, corrupt or not a PyTorch checkpoint ({reason}); check {key}"


def read_checkpoint_file(path: str | os.PathLike[str], *, key: str = "model.checkpoint") -> Any:
    """Whatever ``path`` holds (read on the CPU, tensors and plain containers only), or a one-line UserError.

    The checkpoint code uses this to tell this tool's own checkpoints from plain weight files
    before deciding how to load them; :func:`read_state_dict` uses it for plain weights. ``key`` is
    where the user gave the path (``model.checkpoint``, ``--resume``): the messages send them there.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}; check {key}")
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory, not a weights file; check {key}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise UserError(f"checkpoint {path} cannot be read ({exc.strerror or _first_line(exc)}); check its "
                        f"permissions or {key}") from exc
    except pickle.UnpicklingError as exc:
        # weights_only refuses classes outside its allow-list ("Unsupported global: GLOBAL x.y.Z");
        # any other unpickling error (also wrapped in its long "Weights only load failed" text) is damage.
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise UserError(
                f"checkpoint {path} holds pickled Python objects ({refused.group(1)}), not only tensors; "
                f"save model.state_dict() instead, since loading arbitrary objects can run code"
            ) from exc
        detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", str(exc))
        raise UserError(_corrupt(path, exc, detail.group(1) if detail else None, key=key)) from exc
    # A damaged file fails anywhere inside the deserialiser, and the exception type depends on where:
    # observed are RuntimeError (zip reader, short storage), EOFError, OSError, struct.error and
    # KeyError (a text file). All of them mean the same thing to the user, so all are caught here.
    except Exception as exc:
        raise UserError(_corrupt(path, exc, key=key)) from exc


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping):
        wrapper = next((key for key in _WRAPPER_KEYS if isinstance(obj.get(key), Mapping)), None)
        if wrapper is None:
            break
        obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise UserError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict; check model.checkpoint")
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(
                f"checkpoint {path}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a state dict "
                f"or a dict that holds one under {' or '.join(repr(k) for k in _WRAPPER_KEYS)}"
            )
    return dict(obj)


def unwrap_state_dict(obj: object, path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict inside what a checkpoint file held: wrappers removed, no ``module.`` prefix."""
    state_dict = _unwrap(obj, Path(path))
    return {key.removeprefix(_DATA_PARALLEL_PREFIX): value for key, value in state_dict.items()}


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` on the CPU, unwrapped and without a ``module.`` prefix."""
    return unwrap_state_dict(read_checkpoint_file(path), path)


def _apply_aliases(state_dict: Mapping[str, torch.Tensor], aliases: Mapping[str, str]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state_dict.items():
        for old, new in aliases.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key] = value
    return renamed


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:_KEYS_SHOWN])
    return shown + (f" (and {len(keys) - _KEYS_SHOWN} more)" if len(keys) > _KEYS_SHOWN else "")


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load ``state_dict`` into ``model`` with strict keys and shapes; ``source`` names it in errors.

    The model's class may declare ``checkpoint_key_aliases`` (prefix renames, e.g. ``{"linear.": "fc."}``)
    and a ``checkpoint_hint(missing, unexpected)`` method that explains a known mismatch.
    """
    loaded = _apply_aliases(state_dict, getattr(model, "checkpoint_key_aliases", {}))
    expected = model.state_dict()
    # Shapes first: a width or depth mismatch usually shows as both, and the shape names the layer.
    for key, tensor in expected.items():
        if key in loaded and loaded[key].shape != tensor.shape:
            raise UserError(
                f"checkpoint {source}: {key} has shape {tuple(loaded[key].shape)} but the model expects "
                f"{tuple(tensor.shape)}; was it made for another architecture or model option?"
            )
    for key in expected:
        # Tolerate the counter only where the rest of its BatchNorm is there: a whole missing layer
        # must still be reported, counter included.
        if key.endswith(_TOLERATED_MISSING_SUFFIX) and key not in loaded:
            stem = key[: -len(_TOLERATED_MISSING_SUFFIX)]
            if stem + "running_mean" in loaded:
                loaded[key] = expected[key].clone()
    missing = [key for key in expected if key not in loaded]
    unexpected = [key for key in loaded if key not in expected]
    if missing or unexpected:
        parts = [f"checkpoint {source} does not match the model"]
        if missing:
            parts.append(f"missing keys {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_some(unexpected)}")
        hint_of = getattr(model, "checkpoint_hint", None)
        hint = hint_of(missing, unexpected) if callable(hint_of) else None
        parts.append(hint or "was it made for another architecture or model option?")
        raise UserError("; ".join(parts))
    model.load_state_dict(loaded, strict=True)


def load_weights_file(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Read ``path`` and load it into ``model`` with strict keys (see :func:`load_state_dict_strict`)."""
    load_state_dict_strict(model, read_state_dict(path), source=str(path))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by this tool, with clear errors for missing, corrupt or foreign files."""
    return check_checkpoint(read_checkpoint_file(path), path)


def check_checkpoint(obj: Any, path: str | Path) -> dict[str, Any]:
    """``obj`` if it is a checkpoint of this tool in a format version this code reads, else a UserError."""
    if not is_toolkit_checkpoint(obj):
        raise UserError(f"{path}: not a checkpoint written by this tool (no 'format' key); to start from plain "
                        "weights use model.checkpoint in the experiment file instead of --resume")
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format version {version} is not supported by this version of the tool "
                        f"(it reads version {FORMAT_VERSION}); use the tool version that wrote it "
                        f"(git commit {obj.get('provenance', {}).get('git_commit', 'unknown')})")
    return expand_checkpoint(obj, source=path) if is_compressed_checkpoint(obj) else obj


@dataclass
class LoadedModel:
    model: nn.Module
    arch: dict[str, Any]  # {"name": ..., "options": {...}}: enough to rebuild the model
    masks: dict[str, torch.Tensor] | None
    checkpoint: dict[str, Any] | None  # the tool's own checkpoint it came from, if any


def build_model_from_arch(arch: dict[str, Any]) -> nn.Module:
    """Build the model ``arch`` describes: registry name and options, then, for a physically pruned model,
    the per-module sizes in ``arch["shapes"]`` (see :func:`pruning.surgery.pruned_shapes`)."""
    model = get_model(arch["name"], **arch["options"])
    if arch.get("shapes"):
        apply_shapes(model, arch["shapes"])
    return model


def _outputs(arch: dict[str, Any]) -> int:
    """How many classes a model of ``arch`` predicts (its builder's default when the options do not say)."""
    return int(arch["options"].get("num_classes", model_options(arch["name"])["num_classes"]))


def load_toolkit_checkpoint(path: str | Path, *, expect_arch: str | None = None,
                            ckpt: dict[str, Any] | None = None, key: str = "--resume",
                            num_classes: int | None = None) -> LoadedModel:
    """Rebuild a model from a checkpoint of this tool: architecture (pruned widths included), weights, masks.

    ``key`` names where the path came from in messages about an unreadable file (``--resume`` when ``ckpt`` is not
    given: :func:`build_model` reads ``model.checkpoint`` itself and passes what it found). With ``num_classes``
    (the dataset's), a model that predicts fewer classes is an error here rather than an IndexError in the loss.
    """
    ckpt = check_checkpoint(read_checkpoint_file(path, key=key) if ckpt is None else ckpt, path)
    arch = ckpt["arch"]
    if expect_arch is not None and arch["name"] != expect_arch:
        raise UserError(f"{path}: the checkpoint holds a {arch['name']} but model.arch is {expect_arch!r}; set "
                        f"model.arch to {arch['name']!r} or pick another checkpoint")
    if num_classes is not None and _outputs(arch) < num_classes:
        raise UserError(f"{path}: the checkpoint's {arch['name']} predicts {_outputs(arch)} classes but the dataset "
                        f"has {num_classes}; pick a checkpoint trained on this dataset, or check data.name and "
                        "data.root")
    model = build_model_from_arch(arch)
    load_state_dict_strict(model, ckpt["state_dict"], source=str(path))
    masks = ckpt.get("masks") or None
    if masks:
        validate_masks(model, masks)
    return LoadedModel(model=model, arch=arch, masks=masks, checkpoint=ckpt)


def load_compressed(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint of this tool, compressed or not, as an ordinary checkpoint dict (errors: UserError)."""
    obj = check_checkpoint(read_checkpoint_file(path), path)
    return expand_checkpoint(obj, source=path)
