"""The names an experiment file picks from a registry (model, dataset, pruning method), checked before any work."""

from __future__ import annotations

import difflib

from models import check_arch, list_models
from utils.app.pruner_main import METHODS
from utils.config.schema import ExperimentConfig
from utils.core.errors import UserError
from utils.data.datasets import dataset_names


def check_names(cfg: ExperimentConfig, source: str) -> None:
    """Check the registry names in the config (model, dataset, pruning method) before any work starts; a
    ``model.arch`` of another form (``torchvision:``, ``timm:``, ``<module>:<callable>``) must name a model that
    can be built here (its module is imported)."""
    if ":" in cfg.model.arch:
        try:
            check_arch(cfg.model.arch)
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None
    for key, value, known in (("model.arch", cfg.model.arch, list_models()), ("data.name", cfg.data.name,
                              dataset_names()), ("prune.method", cfg.prune.method, METHODS.names())):
        if value not in known and not (key == "model.arch" and ":" in value):
            near = _nearest(value, known)
            hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
            forms = "; or torchvision:<builder>, timm:<name>, <python.module>:<callable>" if key == "model.arch" else ""
            raise UserError(f"{source}: {key}: unknown name {value!r}; known: {', '.join(known)}{hint}{forms}")


def _nearest(value: str, known: list[str]) -> list[str]:
    """The known names most like ``value``: all of those that tie (``resnet21`` is as near ``resnet20`` as
    ``resnet32``, and naming one of them would be a guess)."""
    def score(name: str) -> float:
        return difflib.SequenceMatcher(None, value, name).ratio()

    near = difflib.get_close_matches(value, known, n=len(known))
    return sorted(n for n in near if score(n) == score(near[0]))
