"""What is done with a pruning decision: masks applied to weights, and held through fine-tuning.

A mask is a bool tensor shaped like its parameter, True = kept, keyed by the parameter's qualified
name (``layer1.0.conv1.weight``). Masks are plain data so they go into checkpoints as they are
(``torch.load(weights_only=True)`` reads them back) and do not depend on how they were chosen.

:class:`MaskKeeper` holds pruned weights at exactly 0.0 through fine-tuning with any ``torch.optim``
optimizer by hooking the optimizer's step rather than the model: no wrapper modules, no
reparametrisation (``torch.nn.utils.prune`` doubles the parameters and changes the state-dict keys,
which would break strict checkpoint loading).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from utils.core.errors import UserError


def validate_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, nn.Parameter]:
    """Check ``masks`` against ``model`` and return the masked parameters by name.

    Masks usually come from a checkpoint, where a mismatch means the checkpoint belongs to another
    architecture (or width): say so in one line instead of failing later with a broadcast error.
    """
    params = dict(model.named_parameters())
    found: dict[str, nn.Parameter] = {}
    for name, mask in masks.items():
        problem = None
        if name not in params:
            problem = f"the model has no parameter {name!r}"
        elif not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            problem = f"mask {name!r} must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}"
        elif mask.shape != params[name].shape:
            problem = f"mask {name!r} has shape {tuple(mask.shape)} but the parameter has {tuple(params[name].shape)}"
        if problem is not None:
            raise UserError(f"checkpoint masks do not match the model: {problem} "
                            "(load the checkpoint into the architecture it was saved from)")
        found[name] = params[name]
    return found


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero, in place, every weight whose mask entry is False.

    ``masked_fill_`` rather than ``mul_``: it writes +0.0 even where a weight is inf/NaN or negative
    (a multiply would give NaN or -0.0).
    """
    params = validate_masks(model, masks)
    with torch.no_grad():
        for name, mask in masks.items():
            param = params[name]
            param.masked_fill_(~mask.to(param.device), 0.0)


class MaskKeeper:
    """Keeps masked weights exactly zero while an optimizer trains the model.

    ``keeper = MaskKeeper(model, masks); keeper.attach(optimizer)`` registers two optimizer hooks:

    * before each step, the gradients at pruned positions are zeroed, so momentum and Adam moment
      buffers never accumulate anything there (weight decay adds ``wd * w = 0`` for a zero weight),
      and a pruned weight would stay zero even without the second hook;
    * after each step, pruned weights are set to 0.0 again: a guarantee that does not depend on how
      a particular optimizer updates (and that also repairs weights loaded non-zero).

    The cost is two multiplies by a 0/1 mask in the parameter's dtype per masked parameter per step, the masks
    cached once on the parameters' device (and moved again only if the model is moved): on a CPU, ``masked_fill_``
    with a bool mask took 40 times as long and made a masked VGG16 step 24% slower than a dense one
    (``bench/masked_step.py``). A multiply leaves a NaN or infinite gradient NaN where ``masked_fill_`` would write
    0: the weights it reaches are then NaN, and so is the next loss, which stops the run (a diverged run).

    Gradient clipping runs before ``optimizer.step()`` and therefore sees the raw gradients at
    pruned positions; call :meth:`zero_pruned_grads` before clipping when that matters.

    The keeper binds the ``nn.Parameter`` objects present at construction, so build it after the
    model's weights are loaded (``load_state_dict`` copies into the same parameters, which is fine).
    :meth:`update` swaps the masks while training goes on (gradual pruning).
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        self._model = model
        self._handles: list[RemovableHandle] = []
        self._optimizers: list[torch.optim.Optimizer] = []
        self._set(masks)

    def _set(self, masks: Mapping[str, torch.Tensor]) -> None:
        params = validate_masks(self._model, masks)
        self._masks = {name: mask.detach().to("cpu", copy=True) for name, mask in masks.items()}
        # Only parameters with at least one pruned entry need work on every step.
        self._entries: list[tuple[nn.Parameter, torch.Tensor]] = [
            (params[name], mask.to(params[name].device, params[name].dtype))
            for name, mask in masks.items() if not bool(mask.all())
        ]

    @torch.no_grad()
    def update(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Hold ``masks`` from now on (gradual pruning: a schedule prunes more while training goes on).

        The newly pruned weights are zeroed at once, and so is the optimizer state at every pruned position of the
        attached optimizers (SGD momentum, Adam moments: any state tensor shaped like its parameter): momentum
        gathered before the weight was pruned would otherwise keep pushing it away from zero at every step, to be
        zeroed again by the post-step hook, and would be saved in checkpoints as if it meant something.
        """
        self._set(masks)
        for optimizer in self._optimizers:
            for param, keep in self._entries:
                for value in optimizer.state.get(param, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == param.shape:
                        value.masked_fill_(keep.to(value.device) == 0, 0)
        self.apply()

    @classmethod
    def from_state_dict(cls, model: nn.Module, state: Mapping[str, torch.Tensor]) -> MaskKeeper:
        """Rebuild a keeper from :meth:`state_dict` output (e.g. a checkpoint's ``masks``), validating it."""
        return cls(model, state)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The masks as ``{parameter name: bool CPU tensor}``, ready for ``torch.save``."""
        return {name: mask.clone() for name, mask in self._masks.items()}

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The kept-masks (True = kept), on the CPU; a copy, so editing it changes nothing here."""
        return self.state_dict()

    def _keep(self, index: int) -> tuple[nn.Parameter, torch.Tensor]:
        param, keep = self._entries[index]
        if keep.device != param.device or keep.dtype != param.dtype:  # the model was moved after the keeper was built
            keep = keep.to(param.device, param.dtype)
            self._entries[index] = (param, keep)
        return param, keep

    @torch.no_grad()
    def zero_pruned_grads(self) -> None:
        """Zero the gradients at pruned positions (run automatically before each optimizer step)."""
        for index in range(len(self._entries)):
            param, keep = self._keep(index)
            if param.grad is not None:
                param.grad.mul_(keep)

    @torch.no_grad()
    def apply(self) -> None:
        """Set the pruned weights to 0.0 now (run automatically after each optimizer step and on attach)."""
        for index in range(len(self._entries)):
            param, keep = self._keep(index)
            param.mul_(keep)

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.zero_pruned_grads()

    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.apply()

    def attach(self, optimizer: torch.optim.Optimizer) -> MaskKeeper:
        """Hook ``optimizer`` (several optimizers may be attached) and zero the pruned weights now."""
        self.apply()
        self._handles.append(optimizer.register_step_pre_hook(self._pre_step))
        self._handles.append(optimizer.register_step_post_hook(self._post_step))
        self._optimizers.append(optimizer)
        return self

    def detach(self) -> None:
        """Remove every hook this keeper registered; the weights are left as they are."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._optimizers.clear()
