"""The one place that reads a checkpoint: plain weight files, this tool's checkpoints and compressed ones.

Every file is loaded with strict keys, and every failure turns into one clear line.

A checkpoint that loads with ``strict=False`` into the wrong architecture silently evaluates a
half-random network, and the resulting accuracy looks like a pruning result. So loading here is
always strict, and a mismatch is a :class:`UserError` that says what differs and, where the pattern
is known (the other shortcut option, another depth), which model option to change.

Accepted files: a bare state dict, or a dict that wraps one under ``state_dict`` (akamaster, this
project's own checkpoints) or ``model``. A ``module.`` prefix from ``nn.DataParallel`` is removed.
Files are read with ``weights_only=True``: a checkpoint is data, and unpickling arbitrary objects
from a downloaded file can run code; a file torch cannot read is explained by :mod:`utils.checkpoint.diagnose`.
Weights with NaN or infinite values (a diverged training run) are refused too.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import arch_options, build_arch, check_arch, list_models
from pruning.masks import validate_masks
from pruning.surgery import apply_shapes
from utils.checkpoint.compress import expand_checkpoint, is_compressed_checkpoint
from utils.checkpoint.diagnose import explain_unreadable, first_line, listed
from utils.checkpoint.format import FORMAT_VERSION, is_toolkit_checkpoint
from utils.core.errors import UserError

# Wrapper keys under which training scripts store the state dict, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model")
_DATA_PARALLEL_PREFIX = "module."
# Old checkpoints (before PyTorch 0.4.1, e.g. akamaster's) have no BatchNorm step counter. The
# counter only matters for BatchNorm with momentum=None, so the model's own value is kept.
_TOLERATED_MISSING_SUFFIX = "num_batches_tracked"


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
    # What torch warns about on the way to an error (a pickle protocol it "might not support") the error line says
    # better; warnings from a file that loads are passed on.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except PermissionError as exc:
            raise UserError(f"checkpoint {path} cannot be read ({exc.strerror or first_line(exc)}); check its "
                            f"permissions or {key}") from exc
        # A damaged file fails anywhere inside the deserialiser, and the exception type depends on where: observed
        # are RuntimeError (zip reader, short storage), EOFError, OSError, struct.error, KeyError (a text file) and
        # UnpicklingError, which weights_only also raises for what it refuses. The file itself tells which.
        except Exception as exc:
            raise UserError(explain_unreadable(path, exc, key)) from exc
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return obj


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
            parts.append(f"missing keys {listed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {listed(unexpected)}")
        hint_of = getattr(model, "checkpoint_hint", None)
        hint = hint_of(missing, unexpected) if callable(hint_of) else None
        parts.append(hint or "was it made for another architecture or model option?")
        raise UserError("; ".join(parts))
    check_finite(state_dict, source=source)
    model.load_state_dict(loaded, strict=True)


def check_finite(state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """A UserError naming the first tensor of ``state_dict`` with NaN or infinite values, and how many it has.

    Every floating-point (and complex) tensor is checked: weights and biases, and buffers such as BatchNorm's running
    mean and variance, which a diverged training run also fills with NaN. Such weights evaluate to chance, prune to
    NaN thresholds (so nothing is pruned), and in training blame the learning rate for a loss that was never finite.
    """
    bad = [key for key, t in state_dict.items()
           if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]
    if not bad:
        return
    tensor = state_dict[bad[0]]
    nan = int(torch.isnan(tensor).sum())
    infinite = tensor.numel() - nan - int(torch.isfinite(tensor).sum())
    counts = " and ".join(part for part in (f"{nan} NaN" if nan else "", f"{infinite} infinite" if infinite else "")
                          if part)
    more = f", as do {listed(bad[1:])}" if len(bad) > 1 else ""
    raise UserError(f"checkpoint {source}: {bad[0]} holds NaN or infinite values ({counts} of {tensor.numel()}){more}; "
                    "such weights cannot be evaluated, pruned or trained (was it saved after training diverged?): "
                    "use an earlier or another checkpoint")


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
                        f"(git commit {_commit(obj)})")
    ckpt = expand_checkpoint(obj, source=path) if is_compressed_checkpoint(obj) else obj
    _check_fields(ckpt, path)
    return ckpt


def _commit(ckpt: Mapping[str, Any]) -> str:
    """The git commit of the tool that wrote ``ckpt`` (from its provenance), or "unknown"."""
    provenance = ckpt.get("provenance")
    return str(provenance.get("git_commit", "unknown")) if isinstance(provenance, Mapping) else "unknown"


def _check_fields(ckpt: Mapping[str, Any], path: str | Path) -> None:
    """The fields every reader of a checkpoint uses, ``arch``, ``state_dict`` and ``masks``, are there and of their
    types (a hand-edited or stripped file otherwise fails with a KeyError deep in the loading). What ``arch`` must hold
    to rebuild a model is checked where a model is rebuilt (:func:`load_toolkit_checkpoint`)."""
    state_dict = ckpt.get("state_dict")
    problem = None
    for field, what in (("arch", "the model's name and options"), ("state_dict", "the weights")):
        if field not in ckpt:
            problem = f"has no {field!r} ({what})"
            break
    else:
        if not isinstance(state_dict, Mapping):
            problem = f"'state_dict' is a {type(state_dict).__name__}, not a dict of tensors"
        elif not isinstance(ckpt.get("masks") or {}, Mapping):
            problem = f"'masks' is a {type(ckpt['masks']).__name__}, not a dict of bool tensors"
        else:
            odd = next((key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)), None)
            if odd is not None:
                problem = f"'state_dict' entry {odd!r} is a {type(state_dict[odd]).__name__}, not a tensor"
    if problem:
        _edited(path, problem)


def _check_arch(arch: Any, path: str | Path) -> None:
    """``arch`` describes a model to rebuild: a dict with the model's name (``model.arch``) and its options."""
    if not (isinstance(arch, Mapping) and isinstance(arch.get("name"), str)
            and isinstance(arch.get("options"), Mapping)):
        _edited(path, f"'arch' is {arch!r:.60}, not {{'name': <model>, 'options': {{...}}}}")


def _edited(path: str | Path, problem: str) -> None:
    raise UserError(f"{path}: the checkpoint {problem}; the file was edited or stripped: use it as the tool wrote it, "
                    "or another checkpoint")


@dataclass
class LoadedModel:
    model: nn.Module
    arch: dict[str, Any]  # {"name": ..., "options": {...}}: enough to rebuild the model
    masks: dict[str, torch.Tensor] | None
    checkpoint: dict[str, Any] | None  # the tool's own checkpoint it came from, if any


def build_model_from_arch(arch: dict[str, Any]) -> nn.Module:
    """Build the model ``arch`` describes: its name (any form ``model.arch`` takes) and options through
    :func:`models.build_arch`, then, for a physically pruned model, the per-module sizes in ``arch["shapes"]``
    (see :func:`pruning.surgery.pruned_shapes`).

    A UserError names the key inside ``arch``: ``arch.name: ...``, ``arch.options.<option>: ...``, ``arch.shapes: ...``.
    """
    model = build_arch(arch["name"], arch["options"], name_key="arch.name", option_key="arch.options").model
    if arch.get("shapes"):
        apply_shapes(model, arch["shapes"])
    return model


def _outputs(arch: dict[str, Any]) -> int | None:
    """How many classes a model of ``arch`` predicts (its builder's default when the options do not say); None when
    neither says (a user's network that takes no ``num_classes``: the forward-pass check before a run counts)."""
    held = arch["options"].get("num_classes", arch_options(arch["name"], name_key="arch.name").get("num_classes"))
    return None if held is None else int(held)


def load_toolkit_checkpoint(path: str | Path, *, expect_arch: str | None = None,
                            ckpt: dict[str, Any] | None = None, key: str = "--resume",
                            num_classes: int | None = None) -> LoadedModel:
    """Rebuild a model from a checkpoint of this tool: architecture (pruned widths included), weights, masks.

    ``key`` names where the path came from in messages about an unreadable file (``--resume`` when ``ckpt`` is not
    given: :func:`build_model` reads ``model.checkpoint`` itself and passes what it found). With ``num_classes``
    (the dataset's), a model that predicts another number of classes is an error here: fewer would be an IndexError
    in the loss, more a top-1 over classes the data does not have.
    """
    ckpt = check_checkpoint(read_checkpoint_file(path, key=key) if ckpt is None else ckpt, path)
    arch = ckpt["arch"]
    _check_arch(arch, path)
    try:  # before anything suggests model.arch: that name
        check_arch(arch["name"], name_key="arch.name")
    except UserError as exc:
        if ":" in arch["name"]:  # torchvision:, timm:, module:callable: what is missing here is said by the reason
            raise UserError(f"{path}: the checkpoint's model {arch['name']!r} cannot be built here: "
                            f"{str(exc).removeprefix('arch.name: ')}") from None
        raise UserError(f"{path}: the checkpoint holds a model {arch['name']!r} that this version of the tool does not "
                        f"know (known: {', '.join(list_models())}); use the version that wrote it (git commit "
                        f"{_commit(ckpt)})") from None
    if expect_arch is not None and arch["name"] != expect_arch:
        raise UserError(f"{path}: the checkpoint holds a {arch['name']} but model.arch is {expect_arch!r}; set "
                        f"model.arch to {arch['name']!r} or pick another checkpoint")
    if num_classes is not None and _outputs(arch) not in (None, num_classes):  # fewer: an IndexError; more: wrong top-1
        raise UserError(f"{path}: the checkpoint's {arch['name']} predicts {_outputs(arch)} classes but the dataset "
                        f"has {num_classes}; pick a checkpoint trained on this dataset, or check data.name and "
                        "data.root")
    try:
        model = build_model_from_arch(arch)
    except UserError as exc:
        raise UserError(f"{path}: {exc}; the checkpoint was edited, or written by another version of the tool (git "
                        f"commit {_commit(ckpt)})") from None
    load_state_dict_strict(model, ckpt["state_dict"], source=str(path))
    masks = ckpt.get("masks") or None
    if masks:
        validate_masks(model, masks)
    return LoadedModel(model=model, arch=arch, masks=masks, checkpoint=ckpt)


def load_compressed(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint of this tool, compressed or not, as an ordinary checkpoint dict (errors: UserError)."""
    obj = check_checkpoint(read_checkpoint_file(path), path)
    return expand_checkpoint(obj, source=path)
