"""Reading an experiment file: JSON in, ``--set`` overrides applied, validated into :mod:`utils.config.schema`.

Every mistake is one :class:`UserError` line naming the source (the file, or ``--set``), the dotted key, the bad
value and what is allowed. Torch-free, so that a bad file fails before ``torch`` is imported.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import sys
import types
import typing
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from utils.config.schema import (
    ExperimentConfig,
    OptimConfig,
    PruneConfig,
    describe,
    field_default,
    join_key,
    section_defaults,
)
from utils.core.errors import UserError

__all__ = ["apply_overrides", "from_dict", "load_config", "parse_override", "read_json", "replace"]

_MISSING = dataclasses.MISSING

# Keys that exist in another section only, with where they are: a plain "unknown key" would not say why.
_KEY_ELSEWHERE = {"train.distill": "the baseline trainer has no teacher; distillation is retrain.distill, the unpruned "
                                   "model teaching the pruned one in pruner_exp.py: move it there or remove it"}
# ``prune`` keys that choose layers or filters, with the methods that read them. ``weight`` pruning prunes every conv
# and linear layer, so a run with ``"layers": ["conv1"]`` would silently prune all of them: such a key is an error.
_LAYER_SPEC_METHODS = {"layers": ("filter", "sensitivity"), "skip": ("filter", "sensitivity"), "channels": ("filter",),
                       "ratios": ("filter",), "target": ("filter",)}


def _finite(value: float) -> bool:
    """Whether ``value`` is a finite float (an integer too large for a float is not: 1 followed by 400 zeros)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _shown(value: Any) -> str:
    """``value`` as JSON for a message, a long string cut to its first 40 characters (the message says its size)."""
    if isinstance(value, str) and len(value) > 60:
        return json.dumps(value[:40])[:-1] + f'..." ({len(value)} characters)'
    return json.dumps(value)


def _did_you_mean(name: str, known: Iterable[str], prefix: str) -> str:
    """``; did you mean prefix.KEY?`` for the known key nearest to ``name``, or "" when none is near."""
    near = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {join_key(prefix, near[0])}?" if near else ""


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
                raise self.fail(key, f"expected {describe(tp)}, got {json.dumps(value)}")
            return [self.convert(args[0], v, key) for v in value]
        ok = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, int | float) and not isinstance(value, bool),
            str: isinstance(value, str),
        }[tp]
        if not ok or (tp is float and not _finite(value)):
            raise self.fail(key, f"expected {describe(tp)}, got {json.dumps(value)}")
        return float(value) if tp is float else value

    def section(self, cls: type, raw: Any, prefix: str) -> Any:
        if not isinstance(raw, dict):
            raise self.fail(prefix, f"expected an object with keys {', '.join(f.name for f in dataclasses.fields(cls))}"
                            f", got {json.dumps(raw)}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        defaults = section_defaults(prefix)
        self.reject_unknown(raw, fields, prefix)
        values: dict[str, Any] = {}
        for name, f in fields.items():
            key = join_key(prefix, name)
            if name in raw:
                value = raw[name]
            elif name in defaults:
                value = defaults[name]
            elif dataclasses.is_dataclass(hints[name]):
                value = {}
            elif f.default is not _MISSING or f.default_factory is not _MISSING:
                continue
            else:
                raise self.fail(key, f"missing; expected {describe(hints[name])} ({f.metadata['doc']})")
            values[name] = self.field_value(f, hints[name], value, key)
        if cls is PruneConfig and values.get("method", "weight") == "weight":
            self.check_weight_pruning(values, prefix)
        if cls is PruneConfig and values.get("target") is not None:
            self.check_target(values, prefix)
        elif cls is PruneConfig and values.get("sensitivity_file") is not None:
            raise self.fail(join_key(prefix, "sensitivity_file"), "is only used by prune.allocation sensitivity "
                                                                  "with a prune.target; remove it or set both")
        if cls is ExperimentConfig:
            self.check_schedule(values["prune"], values["retrain"])
            self.check_from_scratch(values)
            self.check_distill(values)
        return cls(**values)

    def reject_unknown(self, raw: dict[str, Any], fields: Collection[str], prefix: str) -> None:
        """An unknown key is an error that suggests the nearest known one; keys starting with ``_`` are comments."""
        for name in raw:
            if name.startswith("_"):
                continue  # comments
            if name not in fields:
                key = join_key(prefix, name)
                if key in _KEY_ELSEWHERE:
                    raise self.fail(key, _KEY_ELSEWHERE[key])
                hint = _did_you_mean(name, fields, prefix)
                raise self.fail(join_key(prefix, name), f"unknown key{hint} (valid keys here: {', '.join(fields)})")

    def field_value(self, f: dataclasses.Field[Any], tp: Any, value: Any, key: str) -> Any:
        """``value`` converted to the field's type ``tp`` and checked against the field's own ``check``."""
        check, expect = f.metadata.get("check"), f.metadata.get("expect")
        try:
            converted = self.convert(tp, value, key)
        except UserError:
            if expect is None:
                raise
            # The field's own description is the complete one (``prune.percent`` also takes a single number;
            # ``data.mean`` needs 3 of them), and the whole value is what the user wrote.
            raise self.fail(key, f"expected {expect}, got {json.dumps(value)}") from None
        if check is not None and not check(converted):
            why = f.metadata.get("why")
            reason = why(converted) if why is not None else None
            raise self.fail(key, f"expected {expect}, got {_shown(value)}" + (f": {reason}" if reason else ""))
        if any("\0" in v for v in (converted if isinstance(converted, list) else [converted]) if isinstance(v, str)):
            # No path or name can hold one (the OS refuses it with a ValueError), and the terminal would not show it.
            raise self.fail(key, f"{_shown(value)} holds a NUL character (\\u0000); remove it")
        return converted

    def check_from_scratch(self, values: dict[str, Any]) -> None:
        """``prune.from_scratch`` starts from random weights and must train them: no weights given, some epochs."""
        prune, model, retrain = values["prune"], values["model"], values["retrain"]
        if not prune.from_scratch:
            return
        if model.checkpoint is not None or model.pretrained:
            given = "model.checkpoint" if model.checkpoint is not None else "model.pretrained"
            raise self.fail("prune.from_scratch", f"prunes a freshly initialised model, and {given} gives it weights; "
                                                  f"remove one of them")
        if prune.method == "sensitivity" or retrain.epochs == 0:
            what = 'prune.method "sensitivity" does not train' if prune.method == "sensitivity" else \
                "retrain.epochs is 0"
            raise self.fail("prune.from_scratch", f"the pruned architecture is trained from scratch, and {what}; "
                                                  "set retrain.epochs (and a training lr) or remove prune.from_scratch")

    def check_distill(self, values: dict[str, Any]) -> None:
        """``retrain.distill`` needs a trained teacher (the unpruned model) and a retraining to teach."""
        prune, retrain = values["prune"], values["retrain"]
        if retrain.distill is None:
            return
        fix = "remove retrain.distill"
        if prune.method == "sensitivity":
            problem = 'prune.method "sensitivity" only evaluates, it does not retrain'
        elif retrain.epochs == 0:
            problem, fix = "retrain.epochs is 0, so there is no retraining to distil", fix + " or set retrain.epochs"
        elif prune.from_scratch:
            problem = "prune.from_scratch starts from random weights, so the unpruned model is no trained teacher"
        else:
            return
        raise self.fail("retrain.distill", f"{problem}; {fix}")

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

    def check_target(self, values: dict[str, Any], prefix: str) -> None:
        """A budget names one cost, and decides the counts itself: layers, channels and ratios would be ignored."""
        target, key = values["target"], join_key(prefix, "target")
        if (target.macs is None) == (target.params is None):
            raise self.fail(key, 'expected one of {"macs": FRACTION} or {"params": FRACTION}, got '
                                 f'{json.dumps({k: v for k, v in vars(target).items() if v is not None})}')
        if (values.get("allocation") == "sensitivity") != (values.get("sensitivity_file") is not None):
            raise self.fail(join_key(prefix, "sensitivity_file"), "is needed by prune.allocation sensitivity, and "
                                                                  "used by nothing else: set both or neither")
        for name in ("layers", "channels", "ratios"):
            if values.get(name):
                raise self.fail(join_key(prefix, name), f"{key} decides how many filters each layer gives; remove "
                                                        f"{join_key(prefix, name)} (prune.skip leaves layers out)")

    def check_weight_pruning(self, values: dict[str, Any], prefix: str) -> None:
        """A layer or filter choice that ``prune.method`` "weight" would ignore is an error (_LAYER_SPEC_METHODS)."""
        fields = {f.name: f for f in dataclasses.fields(PruneConfig)}
        for name, methods in _LAYER_SPEC_METHODS.items():
            f = fields[name]
            default = field_default(f)
            if values.get(name, default) != default:
                key = join_key(prefix, name)
                raise self.fail(key, f"only used by prune.method {' and '.join(json.dumps(m) for m in methods)}; "
                                '"weight" pruning prunes every conv and linear layer (prune.scope picks where a '
                                f"threshold applies). Remove {key} or set prune.method")


# ---------------------------------------------------------------------------------------------------------------
# Loading


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=VALUE`` -> (``"a.b"``, value); the value is JSON when it parses as JSON, else the raw string."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item}: expected KEY=VALUE with a dotted key, e.g. --set data.root=/data/cifar10")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # not JSON (or a number or nesting JSON cannot hold): the raw string
        value = text
    repeated = _repeated_key(text) if isinstance(value, dict) else None
    if repeated is not None:
        raise UserError(f"--set {key.strip()}: {join_key(key.strip(), repeated[0])} is given twice; JSON keeps only "
                        "the last one silently: remove one of them")
    return key.strip(), value


def _check_override_key(key: str) -> None:
    cls: Any = ExperimentConfig
    done: list[str] = []
    for part in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if not fields:
            raise UserError(f"--set {key}: {'.'.join(done)} is a value, not a section")
        if part not in fields:
            elsewhere = _KEY_ELSEWHERE.get(join_key(".".join(done), part))
            if elsewhere:
                raise UserError(f"--set {key}: {elsewhere}")
            hint = _did_you_mean(part, fields, ".".join(done))
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
    except ValueError:  # Python reads no integer of more digits than sys.get_int_max_str_digits() (4300)
        digits = re.search(rf"\d{{{sys.get_int_max_str_digits() + 1},}}", text)
        if digits is None:
            raise UserError(f"{path}: invalid JSON: a number too long to read") from None
        line = text.count("\n", 0, digits.start()) + 1
        raise UserError(f"{path}: line {line}: a number of {len(digits.group())} digits; no key takes one so "
                        "large") from None
    except RecursionError:
        raise UserError(f"{path}: invalid JSON: objects or lists nested thousands deep") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a JSON object {{...}}, got {type(raw).__name__}")
    repeated = _repeated_key(text)
    if repeated is not None:
        key, first, second = repeated
        raise UserError(f"{path}: line {second}: {key} is given twice (also at line {first}); JSON keeps only the "
                        "last one silently: remove one of them")
    return raw


def _repeated_key(text: str) -> tuple[str, int, int] | None:
    """The first key given twice in one object of ``text`` (valid JSON): its dotted key and the lines of both.

    ``json.loads`` keeps the last value of a repeated key without a word, and its ``object_pairs_hook`` gets no
    positions, so this walks the text: strings (read by ``json``'s own scanner, escapes and all), braces, brackets and
    commas; a string right after ``{`` or an object's ``,`` is a key. Keys starting with ``_`` are comments, which may
    repeat."""
    stack: list[tuple[dict[str, int] | None, str]] = []  # per open object (its keys' lines) or array (None): its key
    last_key, expect_key, line, i = "", False, 1, 0
    while i < len(text):
        char = text[i]
        if char == '"':
            string, i = json.decoder.scanstring(text, i + 1)
            if expect_key:
                keys, prefix = stack[-1]
                assert keys is not None
                if string in keys and not string.startswith("_"):
                    return join_key(prefix, string), keys[string], line
                keys[string], last_key, expect_key = line, string, False
            continue
        if char in "{[":
            parent = stack[-1] if stack else (None, "")
            prefix = join_key(parent[1], last_key) if parent[0] is not None else parent[1]
            stack.append(({} if char == "{" else None, prefix))
            expect_key = char == "{"
        elif char in "}]":
            stack.pop()
        elif char == ",":
            expect_key = stack[-1][0] is not None
        elif char == "\n":
            line += 1
        i += 1
    return None


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
