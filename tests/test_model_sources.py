"""``model.arch`` beyond the registry: ``torchvision:<builder>``, ``timm:<name>`` (a fake timm module stands in for
the optional package), ``<python.module>:<callable>`` (a module written to a temporary folder), ``model.input_size``,
checkpoints of each kind, and ``pruner_exp.py --list-layers``.

Most tests call the functions in-process (``models.build_arch``, ``utils.app.setup``, ``utils.app.layer_list``); one
end-to-end test trains, lists, prunes and reloads a user's own network through the real scripts, as a user runs them.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import textwrap
import types
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from models import arch_options, build_arch
from models.torchvision_models import expected_weights_file
from utils.app.layer_list import layer_rows, list_layers
from utils.app.pruner_main import prepare_pruning
from utils.app.setup import Data, build_model, check_model, requested_options
from utils.checkpoint.format import make_checkpoint
from utils.checkpoint.load import build_model_from_arch, load_toolkit_checkpoint
from utils.config.validate import from_dict
from utils.core.archform import MODULE, REGISTERED, TIMM, TORCHVISION, arch_problem, parse_arch
from utils.core.errors import UserError
from utils.core.tvguard import torchvision

REPO = Path(__file__).resolve().parents[1]


def _cfg(arch: str, **model: Any) -> Any:
    return from_dict({"name": "t", "data": {"name": "digits"}, "model": {"arch": arch, **model}})


def _error(call: Callable[[], Any]) -> str:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------ the form (torch-free)


@pytest.mark.parametrize(("text", "kind", "name", "attr"), [
    ("resnet20", REGISTERED, "resnet20", ""),
    ("torchvision:mobilenet_v3_small", TORCHVISION, "mobilenet_v3_small", ""),
    ("timm:resnet50.a1_in1k", TIMM, "resnet50.a1_in1k", ""),
    ("nets.cifar:SmallNet", MODULE, "nets.cifar", "SmallNet"),
    ("nets:Factory.build", MODULE, "nets", "Factory.build"),
])
def test_the_form_of_an_arch_is_read_from_its_text(text: str, kind: str, name: str, attr: str) -> None:
    form = parse_arch(text)
    assert (form.kind, form.name, form.attr) == (kind, name, attr)


@pytest.mark.parametrize(("text", "why"), [
    ("a:b:c", "more than one ':'"), ("torchvision:", "nothing after 'torchvision:'"), (":Net", "nothing before"),
    ("torchvision:res-net", "not a torchvision builder name"), ("1nets:Net", "not a Python module name"),
    ("nets:1Net", "not the name of a function or class"), ("resnet 20", "only letters, digits"),
    (" resnet20", "spaces around it"), ("", "blank"),
])
def test_a_malformed_arch_is_refused_by_the_config_naming_the_key(text: str, why: str) -> None:
    assert why in (arch_problem(text) or "")
    message = _error(lambda: _cfg(text))
    assert message.startswith("<config>: model.arch: expected a string: a registered model name") and why in message


@pytest.mark.parametrize(("size", "why"), [
    ([3, 32], "2 entries"), ([0, 32, 32], "at least 1"), ([65, 32, 32], "65 channels, more than 64"),
    ([3, 32, 5000], "a side of 5000 pixels, more than 4096"), ([3, 32.5, 32], None), ("3x32x32", None),
])
def test_model_input_size_is_validated_like_every_key(size: Any, why: str | None) -> None:
    message = _error(lambda: _cfg("resnet20", input_size=size))
    assert message.startswith("<config>: model.input_size: expected a list of 3 positive integers [C, H, W]")
    assert why is None or why in message
    assert _cfg("resnet20", input_size=[1, 28, 28]).model.input_size == [1, 28, 28]


# ------------------------------------------------------------------------------------------ torchvision:<builder>


def test_torchvision_builder_builds_with_the_asked_classes() -> None:
    built = build_arch("torchvision:resnet18", {"num_classes": 10})
    assert built.options == {"num_classes": 10}
    assert isinstance(built.model, torchvision.models.ResNet)
    assert built.model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert arch_options("torchvision:resnet18") == {"num_classes": 1000, "pretrained": False}


def test_torchvision_names_it_does_not_take_are_one_line() -> None:
    message = _error(lambda: build_arch("torchvision:resnet19", {}))
    assert message.startswith("model.arch: unknown torchvision classification model 'resnet19'; did you mean resnet18")
    message = _error(lambda: build_arch("torchvision:fasterrcnn_resnet50_fpn", {}))
    assert "is not an image-classification model" in message
    message = _error(lambda: build_arch("torchvision:resnet18", {"shortcut": "B"}))
    assert message == "model.shortcut: not an option of model 'torchvision:resnet18'; it takes num_classes, pretrained"


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME, and no network: a download fails at once, as offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch_home"


def _place_weights(builder: str, **options: Any) -> dict[str, torch.Tensor]:
    """Weights for torchvision's ``builder`` (seeded random ones) where its weights API looks for the DEFAULT file:
    torchvision checks a file's hash only when it downloads it."""
    weights = torchvision.models.get_model_weights(builder).DEFAULT
    torch.manual_seed(1)
    state = torchvision.models.get_model(builder, weights=None, **options).state_dict()
    path = expected_weights_file(weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_pretrained_with_other_classes_replaces_the_classifier_and_the_checkpoint_rebuilds(
        torch_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = _place_weights("mobilenet_v3_small")
    built = build_arch("torchvision:mobilenet_v3_small", {"num_classes": 10, "pretrained": True})
    assert built.options == {"num_classes": 10}
    loaded = built.model.state_dict()
    for key, value in state.items():
        if key.startswith("classifier.3."):
            assert loaded[key].shape[0] == 10, key  # the new classifier layer
        else:
            assert torch.equal(loaded[key], value), key  # everything else is the weights file's
    assert "classifier.3 replaced by a new, randomly initialised layer of 10 outputs" in capsys.readouterr().out
    rebuilt = build_model_from_arch({"name": "torchvision:mobilenet_v3_small", "options": built.options})
    rebuilt.load_state_dict(loaded, strict=True)  # the same keys and shapes, without the weights


def test_pretrained_offline_without_the_file_is_one_line_naming_it(torch_home: Path) -> None:
    expected = torch_home / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    message = _error(lambda: build_arch("torchvision:mobilenet_v3_small", {"num_classes": 10, "pretrained": True}))
    assert message.startswith("model.pretrained: the torchvision:mobilenet_v3_small weights are not in "
                              f"{expected} and could not be downloaded (")
    assert "TORCH_HOME" in message and "model.checkpoint" in message


@pytest.mark.filterwarnings("ignore:The default weight initialization of GoogleNet:FutureWarning")
def test_options_the_weights_set_are_recorded_so_the_checkpoint_computes_the_same(torch_home: Path) -> None:
    """GoogLeNet's weights make torchvision set transform_input (and drop the auxiliary heads): a model rebuilt from
    a checkpoint without them must do the same, or it would silently compute another function."""
    _place_weights("googlenet", aux_logits=True, init_weights=False)
    built = build_arch("torchvision:googlenet", {"num_classes": 1000, "pretrained": True})
    assert built.model.transform_input is True
    assert built.options == {"num_classes": 1000, "builder_options": {"aux_logits": False, "transform_input": True}}
    rebuilt = build_model_from_arch({"name": "torchvision:googlenet", "options": built.options})
    rebuilt.load_state_dict(built.model.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(rebuilt.eval()(x), built.model.eval()(x))


def test_a_toolkit_checkpoint_of_a_torchvision_model_and_of_its_pruned_copy_reload_equal(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = from_dict({"name": "t", "model": {"arch": "torchvision:mobilenet_v3_small"},
                     "prune": {"method": "filter", "layers": ["features.2.block.0.0"], "ratios": [0.5]}})
    built = build_arch(cfg.model.arch, {"num_classes": 10})
    model = built.model.eval()
    x = torch.randn(2, 3, 64, 64)
    pruned, outcome = prepare_pruning(cfg, model, torch.zeros(1, 3, 64, 64))
    for name, net, shapes in (("full", model, None), ("pruned", pruned.eval(), outcome.shapes)):
        arch = {"name": cfg.model.arch, "options": built.options, **({"shapes": shapes} if shapes else {})}
        torch.save(make_checkpoint(model=net, arch=arch, config={}), tmp_path / f"{name}.pth")
        loaded = load_toolkit_checkpoint(tmp_path / f"{name}.pth", expect_arch=cfg.model.arch, num_classes=10)
        assert torch.equal(loaded.model.eval()(x), net(x)), name
    assert outcome.widths["features.2.block.0.0"] == (72, 36)  # outside the registry, layers go by module name


# ------------------------------------------------------------------------------------------ timm:<name>


class _FakeTimm(types.ModuleType):
    """What this tool uses of timm: ``is_model``, ``list_models``, ``create_model``."""

    def __init__(self) -> None:
        super().__init__("timm")
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def is_model(self, name: str) -> bool:
        return name.split(".")[0] in ("tinynet", "tinynet_wide")

    def list_models(self) -> list[str]:
        return ["tinynet", "tinynet_wide"]

    def create_model(self, name: str, pretrained: bool = False, num_classes: int = 1000) -> nn.Module:
        self.calls.append((name, {"pretrained": pretrained, "num_classes": num_classes}))
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load this file.\nMore text")
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(4, num_classes))
        model.num_classes = num_classes  # as timm's models keep it
        return model


@pytest.fixture
def fake_timm(monkeypatch: pytest.MonkeyPatch) -> _FakeTimm:
    timm = _FakeTimm()
    monkeypatch.setitem(sys.modules, "timm", timm)
    return timm


def test_timm_builds_through_create_model_and_its_checkpoint_rebuilds(fake_timm: _FakeTimm) -> None:
    built = build_arch("timm:tinynet.a1_in1k", {"num_classes": 10})
    assert fake_timm.calls == [("tinynet.a1_in1k", {"pretrained": False, "num_classes": 10})]
    assert built.options == {"num_classes": 10}
    assert built.model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    rebuilt = build_model_from_arch({"name": "timm:tinynet.a1_in1k", "options": built.options})
    rebuilt.load_state_dict(built.model.state_dict(), strict=True)


def test_timm_unknown_name_and_offline_weights_are_one_line(fake_timm: _FakeTimm) -> None:
    message = _error(lambda: build_arch("timm:tinynett", {"num_classes": 10}))
    assert message.startswith("model.arch: unknown timm model 'tinynett'; did you mean tinynet")
    message = _error(lambda: build_arch("timm:tinynet", {"num_classes": 10, "pretrained": True}))
    assert message.startswith("model.pretrained: timm could not load the weights of tinynet (OSError: We couldn't "
                              "connect to 'https://huggingface.co' to load this file.)")
    assert "HF_HOME" in message


def test_timm_not_installed_is_one_line_naming_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    for call in (lambda: build_arch("timm:resnet18", {"num_classes": 10}),
                 lambda: build_model(_cfg("timm:resnet18"), 10)):
        message = _error(call)
        assert message.startswith("model.arch: 'timm:resnet18' needs the optional package timm, which is not "
                                  "installed; run `pip install timm`")


# ------------------------------------------------------------------------------------------ <python.module>:<callable>

TINY_NET = """
    from torch import nn

    def tiny_net(num_classes=10):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

    class TinyNet(nn.Module):
        def __init__(self, *, num_classes: int = 10, width: int = 8) -> None:
            super().__init__()
            self.body = tiny_net(num_classes)

        def forward(self, x):
            return self.body(x)

    def fixed_net():
        return tiny_net(10)

    def tuple_net(num_classes=10):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes)), "extra"

    def three_class_net():
        return tiny_net(3)

    def broken_net(num_classes=10):
        raise ValueError("width must be even\\nsecond line")

    NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], str]]:
    """Write a module into a fresh working directory (imported from there, as a user's is); forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    written: list[str] = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("attr", ["tiny_net", "TinyNet"])
def test_a_user_callable_is_built_with_the_datasets_classes(user_module: Callable[[str, str], str], attr: str) -> None:
    user_module("usernets_a", TINY_NET)
    cfg = _cfg(f"usernets_a:{attr}")
    loaded = build_model(cfg, num_classes=7)
    assert loaded.arch == {"name": f"usernets_a:{attr}", "options": {"num_classes": 7}}
    assert loaded.model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    check_model(loaded.model, Data(num_classes=7, input_size=(3, 32, 32), train_loader=None, test_loader=None), cfg)


def test_a_user_callable_without_num_classes_is_built_as_it_is(user_module: Callable[[str, str], str]) -> None:
    user_module("usernets_b", TINY_NET)
    assert requested_options(_cfg("usernets_b:fixed_net"), 10) == {}
    loaded = build_model(_cfg("usernets_b:fixed_net"), num_classes=10)
    assert loaded.arch["options"] == {}
    message = _error(lambda: build_model(_cfg("usernets_b:fixed_net", num_classes=12), num_classes=10))
    assert message.startswith("model.num_classes: usernets_b:fixed_net takes no num_classes parameter")


@pytest.mark.parametrize(("arch", "start", "more"), [
    ("no_such_module:Net", ("model.arch: 'no_such_module:Net': no module named 'no_such_module' in the working "
     "directory ("), "run from the folder that holds no_such_module.py, or add that folder to PYTHONPATH"),
    ("usernets_c:Missing", "model.arch: 'usernets_c:Missing': module usernets_c (", ("has no attribute 'Missing'; "
     "it defines TinyNet, broken_net, fixed_net")),
    ("usernets_c:NOT_CALLABLE", ("model.arch: 'usernets_c:NOT_CALLABLE': usernets_c.NOT_CALLABLE is a int, not "
     "callable"), "name a function or nn.Module class"),
    ("usernets_c:tuple_net", "model.arch: usernets_c:tuple_net returned a tuple, not a torch.nn.Module",
     "make tuple_net return the network"),
    ("usernets_c:broken_net", ("model.arch: calling usernets_c:broken_net(num_classes=10) raised ValueError: width "
     "must be even;"), "fix broken_net in usernets_c"),
    ("usernets_raises:Net", ("model.arch: 'usernets_raises:Net': importing module usernets_raises raised "
     "ZeroDivisionError: division by zero;"), "fix the module"),
    ("usernets_imports:Net", ("model.arch: 'usernets_imports:Net': importing module usernets_imports raised "
     "ModuleNotFoundError: No module named 'not_installed_pkg'"), "install what it imports"),
])
def test_each_mistake_in_a_user_callable_is_one_line_with_the_fix(
        user_module: Callable[[str, str], str], arch: str, start: str, more: str) -> None:
    user_module("usernets_c", TINY_NET)
    user_module("usernets_raises", "x = 1 / 0\n")
    user_module("usernets_imports", "import not_installed_pkg\n")
    message = _error(lambda: build_model(_cfg(arch), num_classes=10))
    assert message.startswith(start) and more in message, message


def test_the_forward_pass_check_counts_what_a_user_network_returns(user_module: Callable[[str, str], str]) -> None:
    user_module("usernets_d", TINY_NET)
    data = Data(num_classes=10, input_size=(3, 32, 32), train_loader=None, test_loader=None)
    few = build_model(_cfg("usernets_d:three_class_net"), 10).model
    message = _error(lambda: check_model(few, data, _cfg("usernets_d:three_class_net")))
    assert message.startswith("model.arch 'usernets_d:three_class_net': the model predicts 3 classes, but data.name "
                              "'digits' has 10; give it at least 10 outputs")


def test_model_input_size_is_what_the_model_is_checked_with(user_module: Callable[[str, str], str]) -> None:
    model = build_arch("vgg16_bn_cifar", {"num_classes": 10}).model
    data = Data(num_classes=10, input_size=(3, 32, 32), train_loader=None, test_loader=None, trace_size=(3, 16, 16))
    message = _error(lambda: check_model(model, data, _cfg("vgg16_bn_cifar", input_size=[3, 16, 16])))
    assert message.startswith("model.input_size: model.arch 'vgg16_bn_cifar' cannot take one input of [3, 16, 16] (")
    data.trace_size = (1, 32, 32)
    message = _error(lambda: check_model(model, data, _cfg("vgg16_bn_cifar", input_size=[1, 32, 32])))
    assert message == ("model.input_size: [1, 32, 32] has 1 channel(s), but the images of data.name 'digits' have 3; "
                       "set its first entry to 3")
    data.trace_size = (3, 40, 40)  # VGG takes 32 to 63 pixels: both sizes pass
    check_model(model, data, _cfg("vgg16_bn_cifar", input_size=[3, 40, 40]))


def test_a_checkpoint_of_a_user_network_needs_its_module_at_load_time(
        user_module: Callable[[str, str], str], tmp_path: Path) -> None:
    user_module("usernets_e", TINY_NET)
    loaded = build_model(_cfg("usernets_e:tiny_net"), num_classes=10)
    torch.save(make_checkpoint(model=loaded.model, arch=loaded.arch, config={}), tmp_path / "c.pth")
    again = load_toolkit_checkpoint(tmp_path / "c.pth", expect_arch="usernets_e:tiny_net", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again.model.eval()(x), loaded.model.eval()(x))
    (tmp_path / "usernets_e.py").unlink()
    sys.modules.pop("usernets_e")
    message = _error(lambda: load_toolkit_checkpoint(tmp_path / "c.pth", num_classes=10))
    assert message.startswith(f"{tmp_path / 'c.pth'}: the checkpoint's model 'usernets_e:tiny_net' cannot be built "
                              "here: 'usernets_e:tiny_net': no module named 'usernets_e' in the working directory")


# ------------------------------------------------------------------------------------------ --list-layers


def _listed(out: str) -> list[tuple[str, str, str]]:
    """(name, module, status) of each layer line --list-layers printed."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("name ")) + 1
    end = next((i for i, line in enumerate(lines) if line.startswith("Names that stand")), len(lines))
    rows = []
    for line in lines[start:end]:
        name, module, _channels, status = re.split(r"\s{2,}", line, maxsplit=3)
        rows.append((name, module, status))
    return rows


def _accepted(cfg: Any, model: nn.Module, layers: list[str], size: int) -> dict[str, tuple[int, int]]:
    """What the pruner does with ``prune.layers: layers`` (one filter each): the widths before and after."""
    spec = {"method": "filter", "layers": layers, "channels": [1], "latency": False}
    cfg = from_dict({**cfg.to_dict(), "prune": {**cfg.to_dict()["prune"], **spec}})
    _, outcome = prepare_pruning(cfg, copy.deepcopy(model), torch.zeros(1, 3, size, size))
    return outcome.widths


@pytest.mark.parametrize(("arch", "size"), [("resnet20", 32), ("torchvision:resnet18", 64)])
def test_list_layers_prints_names_that_prune_layers_takes(arch: str, size: int,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = from_dict({"name": "t", "model": {"arch": arch, "shortcut": "B"} if arch == "resnet20" else {"arch": arch},
                     "data": {"name": "imagefolder", "image_size": size}})
    assert list_layers(cfg) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"model.arch {arch!r} (random weights: the names follow from the architecture alone), "
                          f"traced with one 3x{size}x{size} input (data.image_size).")
    rows = _listed(out)
    model = build_arch(arch, {"num_classes": 10, **({"shortcut": "B"} if arch == "resnet20" else {})}).model
    assert [row[1] for row in rows] == [row[1] for row in layer_rows(model, torch.zeros(1, 3, size, size))[0]]
    alone = [name for name, _, status in rows if status == "prunable"]
    assert alone and _accepted(cfg, model, alone, size).keys() == set(alone)
    selectors = {m.group(1) for _, _, status in rows if (m := re.search(r"\(write (\S+)\)", status))}
    assert selectors  # the residual sums: their coupled layers go together, by the selector the line names
    for selector in selectors:
        assert _accepted(cfg, model, [selector], size)
    coupled = next(name for name, _, status in rows if status.startswith("prunable only with"))
    with pytest.raises(UserError):
        _accepted(cfg, model, [coupled], size)  # alone, as the line says, it is refused


def test_list_layers_says_why_a_layer_is_not_prunable(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = from_dict({"name": "t", "model": {"arch": "resnet20"}})  # option-A shortcuts pin the residual sums
    list_layers(cfg)
    rows = _listed(capsys.readouterr().out)
    blocked = [row for row in rows if row[2].startswith("not prunable: ")]
    assert blocked[-1] == ("fc", "fc", "not prunable: its channels are the model's output")  # the logits
    assert blocked[:-1] and all("zero-padding shortcut" in status for _, _, status in blocked[:-1])
    model = build_arch("resnet20", {"num_classes": 10}).model
    with pytest.raises(UserError):
        _accepted(cfg, model, [blocked[0][0]], 32)


# ------------------------------------------------------------------------------------------ through the scripts


def _script(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.mark.slow
def test_a_user_network_trains_lists_prunes_and_reloads_through_the_scripts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a folder holding the user's module: train one epoch on the digits, list its layers, filter-prune its
    checkpoint and evaluate the pruned one; from a folder without the module, one line before any work."""
    (tmp_path / "my_nets.py").write_text(textwrap.dedent(TINY_NET), encoding="utf-8")
    data = {"name": "digits", "batch_size": 128, "test_batch_size": 360, "workers": 0}
    common = {"data": data, "output": {"dir": str(tmp_path / "runs")}}
    train = {"name": "mine", "model": {"arch": "my_nets:tiny_net"}, "train": {"epochs": 1, "lr": 0.05}, **common}
    (tmp_path / "train.json").write_text(json.dumps(train), encoding="utf-8")
    done = _script("trainer_exp.py", "--json", "train.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    best = tmp_path / "runs" / "mine" / "best.pth"
    prune = {"name": "mine_pruned", "model": {"arch": "my_nets:tiny_net", "checkpoint": str(best)},
             "prune": {"method": "filter", "layers": ["0"], "ratios": [0.5], "latency": False}, **common}
    (tmp_path / "prune.json").write_text(json.dumps(prune), encoding="utf-8")
    listed = _script("pruner_exp.py", "--json", "prune.json", "--list-layers", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [row[:2] for row in _listed(listed.stdout)] == [("0", "0"), ("3", "3"), ("8", "8")]  # module names
    pruned = _script("pruner_exp.py", "--json", "prune.json", cwd=tmp_path)
    assert pruned.returncode == 0, pruned.stderr
    monkeypatch.syspath_prepend(str(tmp_path))  # this process reads the checkpoint too: it needs the module
    monkeypatch.delitem(sys.modules, "my_nets", raising=False)
    model = load_toolkit_checkpoint(tmp_path / "runs" / "mine_pruned" / "pruned.pth").model
    sys.modules.pop("my_nets")
    assert model[0].out_channels == 4 and model[3].in_channels == 4  # conv1 lost half its filters, conv2 their inputs
    evaluated = _script("trainer_exp.py", "--json", "prune.json", "--evaluate", "--resume",
                        "runs/mine_pruned/pruned.pth", cwd=tmp_path)
    assert evaluated.returncode == 0 and "[Test] runs/mine_pruned/pruned.pth: Top1: " in evaluated.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    failed = _script("trainer_exp.py", "--json", str(tmp_path / "prune.json"), "--evaluate", "--resume", str(best),
                     cwd=elsewhere)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr == (f"error: {tmp_path / 'prune.json'}: model.arch: 'my_nets:tiny_net': no module named "
                             f"'my_nets' in the working directory ({elsewhere}) or on PYTHONPATH; run from the folder "
                             "that holds my_nets.py, or add that folder to PYTHONPATH\n")
