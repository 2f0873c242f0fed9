"""The forms ``model.arch`` takes, told apart by their text alone (torch-free).

``model.arch`` names a model in one of four forms:

- ``resnet20``: a model registered in this project (:mod:`models.api`);
- ``torchvision:<builder>``: one of torchvision's image-classification builders, ``torchvision:resnet50``;
- ``timm:<name>``: a model of the optional package timm, ``timm:resnet50.a1_in1k``;
- ``<python.module>:<callable>``: the user's own network, a function or ``nn.Module`` class in a module importable
  from the working directory or ``PYTHONPATH``, ``mynets.cifar:SmallNet``.

The config validation checks the *form* here, before ``torch`` is imported; :mod:`models.sources` resolves a name
of each form into a model. The form of a name is decided here once, so the two cannot disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ARCH_FORMS", "ArchForm", "arch_problem", "parse_arch"]

REGISTERED, TORCHVISION, TIMM, MODULE = "registered", "torchvision", "timm", "module"
# What model.arch takes, in words (the config's "expected ..." and the messages of an unknown name).
ARCH_FORMS = "a registered model name (e.g. resnet20), torchvision:<builder>, timm:<name> or <python.module>:<callable>"

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = re.compile(rf"{_IDENTIFIER}(\.{_IDENTIFIER})*")
_TIMM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")  # timm names carry pretrained tags: resnet50.a1_in1k


@dataclass(frozen=True)
class ArchForm:
    """``kind``: ``registered``, ``torchvision``, ``timm`` or ``module``; ``name``: the registered name, the
    builder, the timm name, or for ``module`` the module's dotted name; ``attr``: the callable's (dotted) name in
    that module (``module`` only)."""

    kind: str
    name: str
    attr: str = ""


def parse_arch(text: str) -> ArchForm:
    """The form of ``text`` (a ``ValueError`` saying what is wrong with it when it has none)."""
    problem = arch_problem(text)
    if problem is not None:
        raise ValueError(problem)
    if ":" not in text:
        return ArchForm(REGISTERED, text)
    prefix, rest = text.split(":")
    if prefix in (TORCHVISION, TIMM):
        return ArchForm(prefix, rest)
    return ArchForm(MODULE, prefix, rest)


def arch_problem(text: str) -> str | None:
    """What is wrong with the form of ``text`` as a ``model.arch``, or None (a registered name is not looked up)."""
    if not text.strip():
        return "it is blank"
    if text != text.strip():
        return "it has spaces around it; remove them"
    if ":" not in text:
        return None if re.fullmatch(r"[A-Za-z0-9_.\-]+", text) else (
            "a registered model name has only letters, digits and _ . -; the other forms have a ':'")
    if text.count(":") > 1:
        return "it has more than one ':'; the forms are torchvision:<builder>, timm:<name>, <python.module>:<callable>"
    prefix, rest = text.split(":")
    if not rest:
        what = {TORCHVISION: "builder", TIMM: "model"}.get(prefix, "callable")
        return f"nothing after '{prefix}:'; name the {what}"
    if not prefix:
        return "nothing before ':'; write torchvision:<builder>, timm:<name> or <python.module>:<callable>"
    if prefix == TORCHVISION:
        return None if re.fullmatch(_IDENTIFIER, rest) else (
            f"{rest!r} is not a torchvision builder name (a Python identifier such as resnet50)")
    if prefix == TIMM:
        return None if _TIMM_NAME.fullmatch(rest) else f"{rest!r} is not a timm model name (such as resnet50.a1_in1k)"
    if not _DOTTED.fullmatch(prefix):
        return (f"{prefix!r} is not a Python module name (dotted identifiers such as mynets.cifar); "
                "<python.module>:<callable> names the user's own network")
    if not _DOTTED.fullmatch(rest):
        return f"{rest!r} is not the name of a function or class in module {prefix} (an identifier such as SmallNet)"
    return None
