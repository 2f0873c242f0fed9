"""Import torchvision even when its compiled operators cannot load.

The registry's torchvision wheels are built against CUDA torch. Next to a CPU-only torch their
``_C`` extension fails to load, which torchvision tolerates, but ``torchvision._meta_registrations``
then calls ``torch.library.register_fake("torchvision::nms")`` for an operator that was never
defined, and ``import torchvision`` dies with "operator torchvision::nms does not exist".

The models, datasets and transforms this project uses are pure Python, so the fix is to declare the
two operator *schemas* that the fake registrations need (no kernels: calling ``nms`` still fails
loudly) and import again. Where torchvision imports cleanly nothing is touched.
"""

from __future__ import annotations

import sys
import types

import torch

# Schemas of the operators that torchvision registers fake kernels for with ``register_fake``
# (the others go through ``register_meta``, which checks that the ops exist first).
_FAKE_REGISTERED_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)

# The Library must stay alive: torch removes its definitions when it is garbage collected.
_schema_library: torch.library.Library | None = None


def _forget_partial_import() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def import_torchvision() -> types.ModuleType:
    """Return the ``torchvision`` module, declaring missing operator schemas if its import needs them."""
    global _schema_library
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or "does not exist" not in str(exc):
            raise
        _forget_partial_import()
        _schema_library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _FAKE_REGISTERED_OPS:
            _schema_library.define(schema)
        import torchvision
    return torchvision


torchvision = import_torchvision()
