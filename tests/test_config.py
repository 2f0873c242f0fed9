"""Experiment files: every shipped file validates; types, defaults, errors and ``--set`` behave as documented.

Error cases are table-driven and each asserts the whole contract of a message: it is one line, starts with
the source (the file, or ``--set``) and the dotted key, and shows the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from utils.app.names import check_names
from utils.config.reference import reference_markdown
from utils.config.schema import ExperimentConfig
from utils.config.validate import apply_overrides, from_dict, load_config, parse_override, read_json
from utils.core.errors import UserError

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "experiments").rglob("*.json"))
BASE: dict[str, Any] = {"name": "t", "model": {"arch": "resnet20"}}


def with_values(**sections: Any) -> dict[str, Any]:
    """``BASE`` with some keys set: ``with_values(data={"root": "x"}, seed=3)`` (sections are merged)."""
    raw = copy.deepcopy(BASE)
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(name), dict):
            raw[name].update(value)
        else:
            raw[name] = value
    return raw


def write(tmp_path: Path, raw: Any, name: str = "f.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(raw), encoding="utf-8")  # json.dumps writes NaN as the bare literal NaN
    return path


def load_error(path: Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(UserError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message, f"an error must be one line: {message!r}"
    return message


def leaf_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every dotted leaf key, walked over ``dataclasses.fields`` (independently of the walker in
    ``utils.config.reference``)."""
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def get_key(cfg: ExperimentConfig, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def raw_leaves(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The dotted leaf values a raw experiment file sets (comments left out)."""
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name.startswith("_"):
            continue
        if isinstance(value, dict):
            out.update(raw_leaves(value, f"{prefix}{name}."))
        else:
            out[prefix + name] = value
    return out


# ---------------------------------------------------------------------------------------------------------------
# The shipped experiment files


def test_experiment_files_are_found():
    # Guard against the glob silently matching nothing (then the parametrised test below would not run at all).
    assert len(EXPERIMENTS) >= 5 and any(p.parent.name == "demo" for p in EXPERIMENTS)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_experiment_file_loads_validates_and_keeps_its_values(path: Path):
    cfg = load_config(path)
    check_names(cfg, str(path))
    # What the file says is what the config holds (numbers may widen to float, a single ratio to a list).
    for key, value in raw_leaves(read_json(path)).items():
        expected = [value] if key == "prune.percent" and not isinstance(value, list) else value
        assert get_key(cfg, key) == expected, key
    # The resolved config is plain JSON and validates again to the same thing (what checkpoints store).
    assert from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_experiment_names_are_unique():
    # Two files with one name would share a run directory family (``<dir>/<name>``, ``<name>-2``, ...).
    names = [load_config(p).name for p in EXPERIMENTS]
    assert len(names) == len(set(names)), sorted(names)


@pytest.mark.parametrize(("key", "value"), [("model.arch", "resnet21"), ("data.name", "cifar11"),
                                            ("prune.method", "channel")])
def test_check_names_rejects_unregistered_names_and_lists_the_known_ones(key: str, value: str):
    section, name = key.split(".")
    cfg = from_dict(with_values(**{section: {name: value}}))
    with pytest.raises(UserError) as info:
        check_names(cfg, "f.json")
    message = str(info.value)
    assert message.startswith(f"f.json: {key}: unknown name {value!r}; known: ")
    known = {"model.arch": "resnet20", "data.name": "cifar10", "prune.method": "weight"}[key]
    assert known in message.split("known: ")[1].split("; ")[0].split(", ")  # a "; did you mean ..." may follow


# ---------------------------------------------------------------------------------------------------------------
# Types and defaults


def test_typed_values_are_converted():
    cfg = from_dict(with_values(
        seed=7,
        data={"root": "/d", "download": True, "batch_size": 32, "test_batch_size": None, "mean": [0, 0.5, 1],
              "std": [1, 1, 1]},
        model={"checkpoint": None, "classifier": [256, 128], "num_classes": 3, "shortcut": "B"},
        train={"lr": 1, "milestones": [10, 20], "nesterov": True, "gamma": 0.2},
        visdom={"env": None},
    ))
    assert cfg.seed == 7 and type(cfg.seed) is int
    assert cfg.data.root == "/d" and cfg.data.download is True
    assert cfg.data.batch_size == 32 and type(cfg.data.batch_size) is int
    assert cfg.data.test_batch_size is None and cfg.model.checkpoint is None and cfg.visdom.env is None
    # An int is accepted where a number is expected and stored as a float, inside lists too.
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float
    assert cfg.data.mean == [0.0, 0.5, 1.0] and all(type(v) is float for v in cfg.data.mean)
    assert cfg.train.milestones == [10, 20] and all(type(v) is int for v in cfg.train.milestones)
    assert cfg.model.classifier == [256, 128] and cfg.model.num_classes == 3 and cfg.model.shortcut == "B"
    assert cfg.train.nesterov is True and cfg.train.gamma == 0.2


@pytest.mark.parametrize(("value", "expected"), [(0.3, [0.3]), (0, [0.0]), ([0.1, 0.9], [0.1, 0.9]), ([0], [0.0])])
def test_prune_percent_single_number_becomes_a_one_element_sweep(value: Any, expected: list[float]):
    percent = from_dict(with_values(prune={"percent": value})).prune.percent
    assert percent == expected and all(type(p) is float for p in percent)


def test_defaults():
    cfg = from_dict(BASE)
    assert (cfg.seed, cfg.print_freq) == (0, 0)
    assert (cfg.data.name, cfg.data.batch_size, cfg.data.workers, cfg.data.mean) == ("cifar10", 128, 2, None)
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.schedule, cfg.train.milestones) == (0, 0.1, "multistep", [])
    assert (cfg.prune.method, cfg.prune.percent, cfg.prune.scope) == ("weight", [0.5], "layer_type")
    # retrain has its own defaults (fine-tuning is gentler than training) and the class defaults elsewhere.
    assert (cfg.retrain.epochs, cfg.retrain.lr, cfg.retrain.schedule) == (0, 0.001, "constant")
    assert (cfg.retrain.momentum, cfg.retrain.weight_decay) == (cfg.train.momentum, cfg.train.weight_decay)
    assert (cfg.output.dir, cfg.output.overwrite, cfg.visdom.port) == ("checkpoints", False, 8097)


def test_retrain_defaults_fill_only_the_keys_not_given():
    cfg = from_dict(with_values(retrain={"epochs": 3}))
    assert (cfg.retrain.epochs, cfg.retrain.lr, cfg.retrain.schedule) == (3, 0.001, "constant")
    cfg = from_dict(with_values(retrain={"lr": 0.05, "schedule": "cosine"}))
    assert (cfg.retrain.epochs, cfg.retrain.lr, cfg.retrain.schedule) == (0, 0.05, "cosine")
    # ... and they do not leak into train.
    assert from_dict(with_values(retrain={"epochs": 3})).train.lr == 0.1


def test_underscore_keys_are_comments_anywhere():
    raw = with_values(_comment="top", data={"_note": {"anything": [1, 2]}, "root": "x"}, _other=5)
    cfg = from_dict(raw)
    assert cfg == from_dict(with_values(data={"root": "x"}))


def test_config_is_frozen_and_list_defaults_are_not_shared():
    a, b = from_dict(BASE), from_dict(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.data.batch_size = 1  # type: ignore[misc]
    assert a.prune.percent == b.prune.percent and a.prune.percent is not b.prune.percent


# ---------------------------------------------------------------------------------------------------------------
# Bad values: (section values, dotted key, the bad value as shown, what is allowed)

BAD_VALUES = [
    # wrong types
    pytest.param({"data": {"batch_size": "8"}}, "data.batch_size", '"8"', "positive integer", id="str-for-int"),
    pytest.param({"data": {"batch_size": [8]}}, "data.batch_size", "[8]", "positive integer", id="list-for-int"),
    pytest.param({"data": {"batch_size": True}}, "data.batch_size", "true", "positive integer", id="bool-for-int"),
    pytest.param({"data": {"batch_size": 8.0}}, "data.batch_size", "8.0", "positive integer", id="float-for-int"),
    pytest.param({"seed": True}, "seed", "true", "an integer", id="bool-for-int-top-level"),
    pytest.param({"train": {"lr": [0.1]}}, "train.lr", "[0.1]", "positive number", id="list-for-number"),
    pytest.param({"train": {"lr": True}}, "train.lr", "true", "positive number", id="bool-for-number"),
    pytest.param({"train": {"lr": math.nan}}, "train.lr", "NaN", "positive number", id="nan"),
    pytest.param({"train": {"lr": math.inf}}, "train.lr", "Infinity", "positive number", id="inf"),
    pytest.param({"data": {"download": "yes"}}, "data.download", '"yes"', "true or false", id="str-for-bool"),
    pytest.param({"data": {"download": 1}}, "data.download", "1", "true or false", id="int-for-bool"),
    pytest.param({"data": {"root": 5}}, "data.root", "5", "a string", id="int-for-str"),
    pytest.param({"data": {"root": None}}, "data.root", "null", "a string", id="null-not-allowed"),
    pytest.param({"data": 5}, "data", "5", "an object with keys name, root", id="section-not-object"),
    pytest.param({"model": {"classifier": [512.5]}}, "model.classifier", "[512.5]", "list of positive integers",
                 id="float-in-int-list"),
    pytest.param({"data": {"mean": [0.5, "x", 0.5]}}, "data.mean", '[0.5, "x", 0.5]', "a list of 3 numbers",
                 id="str-in-number-list"),
    pytest.param({"prune": {"percent": "0.5"}}, "prune.percent", '"0.5"', "a number in [0, 1) or a non-empty list",
                 id="percent-str"),
    pytest.param({"prune": {"percent": [0.5, True]}}, "prune.percent", "[0.5, true]", "a number in [0, 1)",
                 id="percent-bool-in-list"),
    # out of range / not one of the choices
    pytest.param({"prune": {"percent": 1.5}}, "prune.percent", "1.5", "a number in [0, 1) or a non-empty list",
                 id="percent-1.5"),
    pytest.param({"prune": {"percent": -0.1}}, "prune.percent", "-0.1", "a number in [0, 1)", id="percent-negative"),
    pytest.param({"prune": {"percent": [0.5, 1.0]}}, "prune.percent", "[0.5, 1.0]", "a number in [0, 1)",
                 id="percent-list-with-1"),
    pytest.param({"prune": {"percent": []}}, "prune.percent", "[]", "non-empty list", id="percent-empty"),
    pytest.param({"prune": {"scope": "all"}}, "prune.scope", '"all"', '"layer_type", "global", "layer"',
                 id="scope"),
    pytest.param({"data": {"batch_size": 0}}, "data.batch_size", "0", "a positive integer", id="batch-size-0"),
    pytest.param({"data": {"test_batch_size": 0}}, "data.test_batch_size", "0",
                 "a positive integer, at most 1048576, or null", id="test-batch-size-0"),
    pytest.param({"data": {"workers": -1}}, "data.workers", "-1", "an integer >= 0", id="workers-negative"),
    pytest.param({"data": {"mean": [0.5, 0.5]}}, "data.mean", "[0.5, 0.5]", "a list of 3 numbers", id="mean-2"),
    pytest.param({"data": {"std": [0.5, 0, 0.5]}}, "data.std", "[0.5, 0, 0.5]", "3 positive numbers", id="std-0"),
    pytest.param({"train": {"momentum": 1.0}}, "train.momentum", "1.0", "a number in [0, 1)", id="momentum-1"),
    pytest.param({"train": {"lr": 0}}, "train.lr", "0", "a positive number", id="lr-0"),
    pytest.param({"retrain": {"epochs": -1}}, "retrain.epochs", "-1", "an integer >= 0", id="retrain-epochs"),
    pytest.param({"model": {"shortcut": "C"}}, "model.shortcut", '"C"', '"A", "B" or null', id="shortcut-C"),
    pytest.param({"train": {"schedule": "linear"}}, "train.schedule", '"linear"', '"multistep", "cosine", "constant"',
                 id="schedule-linear"),
    pytest.param({"train": {"milestones": [100, 50]}}, "train.milestones", "[100, 50]", "an increasing list",
                 id="milestones-decreasing"),
    pytest.param({"train": {"milestones": [0, 50]}}, "train.milestones", "[0, 50]", "positive integers",
                 id="milestones-zero"),
    pytest.param({"visdom": {"port": 70000}}, "visdom.port", "70000", "a port in 1..65535", id="port"),
    pytest.param({"name": "a/b"}, "name", '"a/b"', 'a folder name (not empty, \'.\' or \'..\'; no \'/\'',
                 id="name-slash"),
    pytest.param({"name": "  "}, "name", '"  "', "it is blank", id="name-blank"),
    pytest.param({"name": ".."}, "name", '".."', "names output.dir itself or its parent", id="name-dotdot"),
    # values that passed and then crashed or misled (issue 13)
    pytest.param({"name": "a\\b"}, "name", '"a\\\\b"', 'it holds "\\\\"', id="name-backslash"),
    pytest.param({"name": "a\x00b"}, "name", '"a\\u0000b"', 'it holds "\\u0000"', id="name-nul"),
    pytest.param({"name": "a\nb"}, "name", '"a\\nb"', 'it holds "\\n"', id="name-newline"),
    pytest.param({"name": "x" * 300}, "name", '"xxxxxxxx', "300 bytes in UTF-8, more than 248", id="name-300"),
    pytest.param({"name": "\u00e9" * 125}, "name", '"\\u00e9', "250 bytes in UTF-8, more than 248",
                 id="name-250-bytes-in-125-characters"),
    pytest.param({"name": "a\ud800"}, "name", '"a\\ud800"', "lone surrogate", id="name-surrogate"),
    pytest.param({"seed": 2**63}, "seed", str(2**63), "an integer from -92230953439944 to 184461906879889",
                 id="seed-2^63"),
    pytest.param({"seed": 184461906879890}, "seed", "184461906879890", "to 184461906879889", id="seed-above"),
    pytest.param({"seed": -92230953439945}, "seed", "-92230953439945", "from -92230953439944", id="seed-below"),
    pytest.param({"data": {"batch_size": 10**20}}, "data.batch_size", str(10**20), "at most 1048576",
                 id="batch-size-1e20"),
    pytest.param({"data": {"test_batch_size": 2**20 + 1}}, "data.test_batch_size", str(2**20 + 1),
                 "at most 1048576", id="test-batch-size-huge"),
    pytest.param({"data": {"workers": 10**6}}, "data.workers", "1000000", "at most 1024", id="workers-1e6"),
    pytest.param({"data": {"image_size": 10**5}}, "data.image_size", "100000", "at most 4096", id="image-size-1e5"),
    pytest.param({"model": {"num_classes": 10**9}}, "model.num_classes", "1000000000", "at most 100000",
                 id="num-classes-1e9"),
    pytest.param({"model": {"classifier": [512, 10**6]}}, "model.classifier", "[512, 1000000]", "each at most 16384",
                 id="classifier-width"),
    pytest.param({"train": {"epochs": 10**6}}, "train.epochs", "1000000", "an integer >= 0, at most 10000",
                 id="epochs-1e6"),
    pytest.param({"retrain": {"epochs": 10_001}}, "retrain.epochs", "10001", "at most 10000",
                 id="retrain-epochs"),
    pytest.param({"prune": {"rounds": 10**6}}, "prune.rounds", "1000000", "at most 10000", id="rounds-1e6"),
    pytest.param({"train": {"lr": 10**400}}, "train.lr", "1" + "0" * 400, "a positive number", id="lr-int-overflow"),
    pytest.param({"prune": {"percent": [0.5, 0.3, 0.5]}}, "prune.percent", "[0.5, 0.3, 0.5]",
                 "0.5 is given twice; each ratio runs once", id="percent-repeated"),
    pytest.param({"prune": {"percent": [0.3, 0.30000001]}}, "prune.percent", "[0.3, 0.30000001]",
                 "0.3 and 0.30000001 are both 0.3", id="percent-same-to-6-digits"),
    pytest.param({"prune": {"method": "sensitivity", "sensitivity_ratios": [0.1, 0.1]}}, "prune.sensitivity_ratios",
                 "[0.1, 0.1]", "0.1 is given twice", id="sensitivity-ratios-repeated"),
    pytest.param({"output": {"dir": "runs\x00x"}}, "output.dir", '"runs\\u0000x"', "holds a NUL character",
                 id="output-dir-nul"),
    pytest.param({"prune": {"method": "filter", "layers": ["conv1", "conv\x002"]}}, "prune.layers",
                 '["conv1", "conv\\u00002"]', "holds a NUL character", id="layers-nul"),
    # unknown keys: the "value" is the key, the "allowed" the suggestion
    pytest.param({"data": {"rot": "/d"}}, "data.rot", "unknown key", "did you mean data.root?", id="unknown-data.rot"),
    pytest.param({"tran": {}}, "tran", "unknown key", "did you mean train?", id="unknown-section"),
    pytest.param({"model": {"zzzz": 1}}, "model.zzzz", "unknown key", "valid keys here: arch, checkpoint",
                 id="unknown-no-suggestion"),
    pytest.param({"prune": {"percnt": 0.5}}, "prune.percnt", "unknown key", "did you mean prune.percent?",
                 id="unknown-prune.percnt"),
]


@pytest.mark.parametrize(("sections", "key", "shown", "allowed"), BAD_VALUES)
def test_bad_value_is_reported_with_file_key_value_and_what_is_allowed(
        tmp_path: Path, sections: dict[str, Any], key: str, shown: str, allowed: str):
    path = write(tmp_path, with_values(**sections))
    message = load_error(path)
    assert message.startswith(f"{path}: {key}: "), message
    assert shown in message and allowed in message, message
    # The value comes after the key, not just somewhere (e.g. in a list of valid keys).
    assert shown in message[len(f"{path}: {key}: "):]


@pytest.mark.parametrize("key", ["name", "model.arch"])
def test_missing_required_key(tmp_path: Path, key: str):
    raw = copy.deepcopy(BASE)
    if key == "name":
        del raw["name"]
    else:
        raw["model"] = {"checkpoint": "x.pth"}
    message = load_error(write(tmp_path, raw))
    assert message.startswith(f"{tmp_path / 'f.json'}: {key}: missing; expected a string"), message


@pytest.mark.parametrize(("raw", "kind"), [([BASE], "list"), ("cfg", "str"), (3, "int"), (None, "NoneType")])
def test_top_level_must_be_an_object(tmp_path: Path, raw: Any, kind: str):
    path = write(tmp_path, raw)
    assert load_error(path) == f"{path}: the top level must be a JSON object {{...}}, got {kind}"


def test_malformed_json_names_line_and_column(tmp_path: Path):
    lines = ['{', '  "name": "t",', '  "data": {"batch_size": 8,},', '  "model": {"arch": "resnet20"}', '}']
    path = tmp_path / "bad.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    column = lines[2].index(",}") + 2  # 1-based column of the "}" after the trailing comma
    message = load_error(path)
    assert message.startswith(f"{path}: invalid JSON at line 3 column {column}: "), message


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nope.json"
    message = load_error(path)
    assert message.startswith(f"{path}: ") and "not found" in message and "--json" in message


def test_directory_instead_of_file(tmp_path: Path):
    message = load_error(tmp_path)
    assert message.startswith(f"{tmp_path}: is a directory") and "--json" in message


def test_unreadable_encoding(tmp_path: Path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"name": "caf\u00e9"}'.encode("latin-1"))
    message = load_error(path)
    assert message.startswith(f"{path}: cannot read the experiment file"), message


@pytest.mark.parametrize(("lines", "key", "first", "second"), [
    (['{', '  "name": "t",', '  "train": {"epochs": 3},', '  "model": {"arch": "resnet20"},', '  "train": {"lr": 1}',
      '}'], "train", 3, 5),
    (['{"name": "t", "model": {"arch": "resnet20",', '  "num_classes": 10,', '  "arch": "resnet56"}}'], "model.arch",
     1, 3),
    # the same key in different objects is no repeat; a string that looks like a key is none either
    (['{"name": "t", "model": {"arch": "resnet20"}, "train": {"epochs": 1, "lr": 0.1},', '  "retrain": {"epochs": 1,',
      '  "_c": "\\"epochs\\": 2, {", "lr": 0.1, "epochs": 2}}'], "retrain.epochs", 2, 3),
])
def test_repeated_key_is_refused_with_its_lines(tmp_path: Path, lines: list[str], key: str, first: int, second: int):
    """json.loads keeps the last of two equal keys without a word (``"train"`` twice: the first section is lost)."""
    path = tmp_path / "twice.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    message = load_error(path)
    assert message.startswith(f"{path}: line {second}: {key} is given twice (also at line {first})"), message
    assert "remove one" in message


def test_repeated_comment_keys_and_keys_of_other_objects_are_fine(tmp_path: Path):
    raw = '{"_c": 1, "_c": 2, "name": "t", "model": {"arch": "resnet20", "_c": 3}, "train": {"lr": 0.1},' \
          ' "retrain": {"lr": 0.01}}'
    path = tmp_path / "ok.json"
    path.write_text(raw, encoding="utf-8")
    cfg = load_config(path)
    assert (cfg.train.lr, cfg.retrain.lr) == (0.1, 0.01)


def test_repeated_key_in_a_set_value_is_refused(tmp_path: Path):
    message = load_error(write(tmp_path, BASE), ('train={"epochs": 1, "epochs": 2}',))
    assert message.startswith("--set train: train.epochs is given twice"), message


def test_number_too_long_for_python_is_one_line_with_its_line(tmp_path: Path):
    path = tmp_path / "long.json"
    path.write_text('{"name": "t",\n "seed": 1' + "0" * 5000 + "}\n", encoding="utf-8")
    assert load_error(path) == f"{path}: line 2: a number of 5001 digits; no key takes one so large"
    message = load_error(write(tmp_path, BASE), ("seed=1" + "0" * 5000,))  # --set: read as the string it is
    assert message.startswith('--set seed: expected an integer from -92230953439944'), message


def test_json_nested_too_deep_is_one_line(tmp_path: Path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    assert load_error(path) == f"{path}: invalid JSON: objects or lists nested thousands deep"


def test_seed_range_is_every_seed_whose_epochs_torch_takes():
    """Both ends of SEED_RANGE seed every allowed epoch's generator (utils.data.sampling.epoch_seed); one beyond
    either end does not even seed epoch 0: the range is every seed that works."""
    import torch

    from utils.config.bounds import MAX_EPOCHS, SEED_RANGE
    from utils.data.sampling import epoch_seed

    low, high = SEED_RANGE
    for seed, epoch in ((low, 0), (low, MAX_EPOCHS - 1), (high, 0), (high, MAX_EPOCHS - 1)):
        torch.Generator().manual_seed(epoch_seed(seed, epoch))
    for seed, epoch in ((low - 1, 0), (high + 1, 0)):
        with pytest.raises((RuntimeError, ValueError)):
            torch.Generator().manual_seed(epoch_seed(seed, epoch))
    for seed in (low, high):  # and the load accepts them
        assert from_dict(with_values(seed=seed)).seed == seed


def test_largest_values_are_accepted(tmp_path: Path):
    """The upper bounds are inclusive: the largest value of each key loads."""
    from utils.config.bounds import MAX_BATCH, MAX_CLASSES, MAX_EPOCHS, MAX_IMAGE_SIZE, MAX_NAME_BYTES, MAX_WORKERS

    cfg = from_dict(with_values(name="\u00e9" * (MAX_NAME_BYTES // 2), data={
        "batch_size": MAX_BATCH, "test_batch_size": MAX_BATCH, "workers": MAX_WORKERS, "image_size": MAX_IMAGE_SIZE},
        model={"arch": "resnet20", "num_classes": MAX_CLASSES}, train={"epochs": MAX_EPOCHS}))
    assert (cfg.data.batch_size, cfg.train.epochs, cfg.model.num_classes) == (MAX_BATCH, MAX_EPOCHS, MAX_CLASSES)


# ---------------------------------------------------------------------------------------------------------------
# --set


@pytest.mark.parametrize(("item", "key", "value"), [
    ("data.mean=[0.5,0.5,0.5]", "data.mean", [0.5, 0.5, 0.5]),
    ("data.batch_size=32", "data.batch_size", 32),
    ("train.lr=0.05", "train.lr", 0.05),
    ("train.lr=1e-3", "train.lr", 0.001),
    ("data.download=true", "data.download", True),
    ("model.checkpoint=null", "model.checkpoint", None),
    ("prune.percent=0.3", "prune.percent", [0.3]),
    ("data.root=/x", "data.root", "/x"),               # not JSON: the raw string
    ("data.root=a=b", "data.root", "a=b"),             # only the first "=" separates
    ('model.checkpoint="c.pth"', "model.checkpoint", "c.pth"),  # a quoted JSON string
    ("name=run one", "name", "run one"),
    (" data.root =/y", "data.root", "/y"),             # spaces around the key are ignored
])
def test_set_values_are_parsed_as_json_with_string_fallback(tmp_path: Path, item: str, key: str, value: Any):
    cfg = load_config(write(tmp_path, with_values(data={"root": "/file", "batch_size": 8})), [item])
    assert get_key(cfg, key) == value
    assert type(get_key(cfg, key)) is type(value)


def test_parse_override():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a.b=") == ("a.b", "")
    assert parse_override("a.b={") == ("a.b", "{")


def test_set_creates_missing_sections_and_keeps_section_defaults(tmp_path: Path):
    path = write(tmp_path, BASE)  # no retrain, no visdom section in the file
    cfg = load_config(path, ["retrain.epochs=3", "visdom.port=9000"])
    assert (cfg.retrain.epochs, cfg.retrain.lr, cfg.retrain.schedule) == (3, 0.001, "constant")
    assert cfg.visdom.port == 9000


def test_apply_overrides_mutates_raw_and_returns_keys():
    raw = copy.deepcopy(BASE)
    keys = apply_overrides(raw, ["retrain.epochs=3", "model.arch=resnet56", "model.arch=resnet32"])
    assert keys == {"retrain.epochs", "model.arch"}
    assert raw == {"name": "t", "model": {"arch": "resnet32"}, "retrain": {"epochs": 3}}  # the last --set wins


def test_set_overrides_the_file_and_leaves_other_keys(tmp_path: Path):
    path = write(tmp_path, with_values(data={"root": "/file", "batch_size": 8}))
    cfg = load_config(path, ["data.root=/cli"])
    assert (cfg.data.root, cfg.data.batch_size) == ("/cli", 8)


@pytest.mark.parametrize(("item", "start", "hint"), [
    ("data.rot=/x", "--set data.rot: unknown key", "did you mean data.root?"),
    ("tran.lr=1", "--set tran.lr: unknown key", "did you mean train?"),
    ("train.milestone=[5]", "--set train.milestone: unknown key", "did you mean train.milestones?"),
])
def test_set_unknown_key(tmp_path: Path, item: str, start: str, hint: str):
    message = load_error(write(tmp_path, BASE), (item,))
    assert message.startswith(start) and hint in message, message


@pytest.mark.parametrize("item", ["data.root", "=5", ""])
def test_set_without_key_value_form(tmp_path: Path, item: str):
    message = load_error(write(tmp_path, BASE), (item,))
    assert message.startswith(f"--set {item}: expected KEY=VALUE"), message


@pytest.mark.parametrize(("item", "key", "shown", "allowed"), [
    ("data.batch_size=abc", "data.batch_size", '"abc"', "a positive integer"),
    ("data.batch_size=0", "data.batch_size", "0", "a positive integer"),
    ("prune.percent=[0.5,1]", "prune.percent", "[0.5, 1]", "a number in [0, 1)"),
    ('data={"batch_size": 0}', "data.batch_size", "0", "a positive integer"),  # a whole section from --set
    ('data={"rot": 1}', "data.rot", "unknown key", "did you mean data.root?"),
])
def test_type_error_on_overridden_key_names_set_as_the_source(tmp_path: Path, item: str, key: str, shown: str,
                                                               allowed: str):
    path = write(tmp_path, BASE)
    message = load_error(path, (item,))
    assert message.startswith(f"--set {key}: "), message
    assert shown in message and allowed in message and str(path) not in message, message


def test_file_error_is_still_blamed_on_the_file_when_other_keys_are_set(tmp_path: Path):
    path = write(tmp_path, with_values(data={"batch_size": 0}))
    assert load_error(path, ("data.root=/x",)).startswith(f"{path}: data.batch_size: ")


# ---------------------------------------------------------------------------------------------------------------
# Documentation and round trip


def documented_rows() -> list[list[str]]:
    rows = [line.split(" | ") for line in reference_markdown().splitlines() if line.startswith("| `")]
    return [[cell.strip("| `") for cell in row] for row in rows]


def test_reference_lists_every_leaf_key_exactly_once():
    documented = [row[0] for row in documented_rows()]
    assert len(documented) == len(set(documented)), "a key is documented twice"
    assert sorted(documented) == sorted(leaf_keys())
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?", key) for key in documented)  # bn_l1 has a digit


def test_reference_defaults_are_the_real_defaults():
    # The documented default of each key is what a config that leaves the key out gets.
    cfg = from_dict(BASE)
    for key, _type, default, doc in documented_rows():
        assert doc, f"{key} has no documentation"
        if default == "required":
            assert key in ("name", "model.arch")
        else:
            assert get_key(cfg, key) == json.loads(default), key


@pytest.mark.parametrize("raw", [
    BASE,
    with_values(seed=3, data={"name": "digits", "mean": [0.1, 0.2, 0.3], "test_batch_size": 7},
                model={"shortcut": "B", "classifier": [64], "checkpoint": "c.pth"},
                train={"milestones": [3, 6], "lr": 2}, prune={"percent": 0.25, "scope": "global"},
                retrain={"epochs": 2}, output={"overwrite": True}, visdom={"env": "e"}),
], ids=["defaults", "everything-set"])
def test_to_dict_round_trips(raw: dict[str, Any]):
    cfg = from_dict(raw)
    data = cfg.to_dict()
    assert from_dict(data) == cfg
    assert from_dict(json.loads(json.dumps(data))) == cfg  # what config.json and checkpoints hold
    assert sorted(raw_leaves(data)) == sorted(leaf_keys())  # every key is written out, explicitly


def test_readme_documents_every_key_as_the_code_does():
    """The README's key table is generated from the dataclasses' metadata; a stale copy fails here
    (regenerate it with ``python -m utils.config --update-readme``)."""
    from utils.config.reference import README, readme_with_reference

    text = README.read_text(encoding="utf-8")
    assert readme_with_reference(text) == text
