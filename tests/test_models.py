"""Tests for the model registry, the architectures and strict weight loading.

Architecture tests check the numbers papers and reference checkpoints give (parameter counts,
FLOPs, state-dict file size), not just that a forward pass runs. Loading tests reproduce the
published accuracy of real public checkpoints on real data from ``../shared/data``: a key, shape
or shortcut mistake that still loads would show up there as lost accuracy.
"""

from __future__ import annotations

import inspect
import re
import time
import urllib.error
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from torch import nn

from models import (
    CifarResNet,
    get_model,
    get_model_builder,
    list_models,
    model_options,
    register_model,
    resnet20,
    resnet56,
    vgg16_bn_cifar,
)
from models.torchvision_models import expected_weights_file
from tests.conftest import shared_path
from tests.pruned import rebuilt_pruned
from utils.checkpoint.load import load_state_dict_strict, load_weights_file, read_checkpoint_file, read_state_dict
from utils.core.errors import UserError
from utils.core.tvguard import torchvision

AKAMASTER_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # what akamaster trained with
CHENYAOFO_NORM = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # what chenyaofo trained with
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _input_size(name: str) -> int:
    # torchvision models downsample 32x; 64x64 keeps them fast and still leaves a 2x2 final map.
    return 64 if name.startswith("tv_") else 32


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- every registered model


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, num_classes=7)
    size = _input_size(name)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([1, 5])).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{name}: {param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: {param_name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name}: {param_name} has an all-zero gradient"


@pytest.mark.parametrize("name", list_models())
def test_every_builder_is_keyword_only_with_defaults(name: str) -> None:
    options = model_options(name)
    assert "num_classes" in options
    for param in inspect.signature(get_model_builder(name)).parameters.values():
        assert param.kind is inspect.Parameter.KEYWORD_ONLY


# --------------------------------------------------------------------------- registry errors


def test_unknown_model_lists_known_models() -> None:
    with pytest.raises(UserError) as info:
        get_model("resnet21")
    message = str(info.value)
    assert message.startswith("unknown model 'resnet21'; known models: ")
    for name in list_models():
        assert name in message
    with pytest.raises(UserError, match="unknown model 'nope'"):
        model_options("nope")


def test_unknown_option_names_option_model_and_accepted_options() -> None:
    with pytest.raises(UserError) as info:
        get_model("resnet20", shortcutt="B")
    message = str(info.value)
    assert message.startswith("shortcutt: ")
    assert "'resnet20'" in message
    for option in ("num_classes", "shortcut"):
        assert option in message


def test_model_options_reads_the_signature() -> None:
    assert model_options("resnet56") == {"num_classes": 10, "shortcut": "A"}
    assert model_options("vgg16_bn_cifar") == {"num_classes": 10, "classifier": (512,)}
    assert model_options("tv_resnet18") == {"num_classes": 1000, "pretrained": False}


def test_bad_shortcut_lists_choices() -> None:
    with pytest.raises(UserError) as info:
        get_model("resnet20", shortcut="C")
    message = str(info.value)
    assert message.startswith("shortcut: ")
    assert '"A"' in message and '"B"' in message and "'C'" in message


def test_register_model_rejects_positional_builders() -> None:
    def positional(num_classes: int = 10) -> nn.Module:
        return nn.Linear(1, num_classes)

    with pytest.raises(TypeError, match="keyword-only"):
        register_model("test_positional")(positional)
    with pytest.raises(ValueError, match="registered twice"):
        register_model("resnet20")(resnet20)
    assert "test_positional" not in list_models()


# --------------------------------------------------------------------------- sizes from the papers


@pytest.mark.parametrize(
    ("name", "params", "paper"),
    # Exact counts of He et al.'s option-A networks (equal to akamaster's); the paper rounds them.
    [
        ("resnet20", 269_722, 0.27e6),
        ("resnet32", 464_154, 0.46e6),
        ("resnet44", 658_586, 0.66e6),
        ("resnet56", 853_018, 0.85e6),
        ("resnet110", 1_727_962, 1.7e6),
    ],
)
def test_resnet_param_counts(name: str, params: int, paper: float) -> None:
    model = get_model(name)
    assert _num_params(model) == params
    assert _num_params(model) == pytest.approx(paper, rel=0.02)


def test_vgg_default_matches_li_et_al() -> None:
    model = vgg16_bn_cifar()
    assert _num_params(model) == pytest.approx(1.5e7, rel=0.01)  # Li et al. 2017, Table 1
    # FLOPs as Li et al. count them (multiply-adds of convs and linears): 3.13e8.
    macs = 0

    def count(module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            macs += output[0].numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features

    for module in model.modules():
        module.register_forward_hook(count)
    model.eval()
    model(torch.zeros(1, 3, 32, 32))
    assert macs == pytest.approx(3.13e8, rel=0.01)


def test_vgg_imagenet_style_head_size(tmp_path: Path) -> None:
    model = vgg16_bn_cifar(classifier=[4096, 4096])
    assert _num_params(model) == pytest.approx(33.6e6, rel=0.01)
    path = tmp_path / "vgg.pth"
    torch.save(model.state_dict(), path)
    assert path.stat().st_size / 1024 == pytest.approx(131_482, rel=0.01)


def test_vgg_layer_names() -> None:
    model = vgg16_bn_cifar()
    names = model.conv_layer_names()
    assert names == [f"features.conv{i}" for i in range(1, 14)]
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    assert convs == names  # input order
    assert model.features.conv1.in_channels == 3 and model.features.conv13.out_channels == 512
    assert isinstance(model.features.bn7, nn.BatchNorm2d) and isinstance(model.features.pool5, nn.MaxPool2d)
    assert list(dict(model.classifier.named_children())) == ["fc1", "bn1", "relu1", "fc2"]


# --------------------------------------------------------------------------- options


def test_shortcut_a_is_parameter_free_and_b_has_downsample() -> None:
    a = resnet20(shortcut="A")
    b = resnet20(shortcut="B")
    assert not any("downsample" in key for key in a.state_dict())
    down = sorted({key.rsplit(".", 2)[0] for key in b.state_dict() if "downsample" in key})
    assert down == ["layer2.0.downsample", "layer3.0.downsample"]  # only where the shape changes
    assert isinstance(b.layer2[0].downsample[0], nn.Conv2d) and isinstance(b.layer2[0].downsample[1], nn.BatchNorm2d)
    # 1x1 convs 16->32 and 32->64 plus their BN weights and biases.
    assert _num_params(b) - _num_params(a) == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64


def test_shortcut_a_pads_channels_symmetrically() -> None:
    shortcut = resnet20().layer2[0].shortcut
    x = torch.randn(1, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])  # akamaster: planes // 4 zeros on each side
    assert not y[:, :8].any() and not y[:, 24:].any()


def test_vgg_rebuilt_with_pruned_widths() -> None:
    widths = [8, 8, 16, 16, 24, 24, 24, 32, 32, 32, 40, 40, 48]
    model = rebuilt_pruned("vgg16_bn_cifar", widths, classifier=[32])
    assert [model.get_submodule(name).out_channels for name in model.conv_layer_names()] == widths
    assert model.features.conv2.in_channels == 8 and model.features.bn13.num_features == 48
    assert model.classifier.fc1.in_features == 48
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet_rebuilt_with_pruned_widths(shortcut: str) -> None:
    widths = [4, 8, 12, 5, 10, 15, 6, 12, 18]
    model = rebuilt_pruned("resnet20", widths, shortcut=shortcut)
    for (_, block), width in zip(model.blocks(), widths, strict=True):
        assert block.conv1.out_channels == width and block.bn1.num_features == width
        assert block.conv2.in_channels == width
    assert [block.conv2.out_channels for _, block in model.blocks()] == [16] * 3 + [32] * 3 + [64] * 3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_names_match_reference_checkpoints() -> None:
    keys = set(resnet56(shortcut="B").state_dict())
    for key in ("conv1.weight", "bn1.running_var", "layer1.8.conv2.weight", "layer3.0.downsample.0.weight", "fc.bias"):
        assert key in keys
    assert CifarResNet.checkpoint_key_aliases == {"linear.": "fc."}


# --------------------------------------------------------------------------- reference checkpoints


@pytest.fixture(scope="module")
def cifar_subset() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,017 pixel-exact CIFAR-10 test images, as unnormalised [0, 1] tensors, and labels."""
    root = shared_path("cifar10-lossless-subset", "test")
    dataset = torchvision.datasets.ImageFolder(root, transform=torchvision.transforms.ToTensor())
    images = torch.stack([image for image, _ in dataset])
    return images, torch.tensor(dataset.targets)


def _top1(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, int]:
    """Top-1 accuracy in percent and the number of images."""
    # channels_last roughly halves CPU inference time with oneDNN; the result is the same network.
    model = model.eval().to(memory_format=torch.channels_last)
    correct = total = 0
    with torch.inference_mode():
        for images, labels in batches:
            logits = model(images.contiguous(memory_format=torch.channels_last))
            correct += (logits.argmax(1) == labels).sum().item()
            total += len(labels)
    return 100.0 * correct / total, total


CIFAR_CHECKPOINTS = [
    # file, model, shortcut, normalisation, top-1 measured on the 1,017-image subset
    # (the data README gives 91.64, 92.72, ~92.6 and ~94.2; 942 and 958 of 1,017 are 92.63 and 94.20)
    ("akamaster_resnet20-12fca82f.th", "resnet20", "A", AKAMASTER_NORM, 91.64),
    ("akamaster_resnet56-4bfd9763.th", "resnet56", "A", AKAMASTER_NORM, 92.72),
    ("chenyaofo_cifar10_resnet20-4118986f.pt", "resnet20", "B", CHENYAOFO_NORM, 92.63),
    ("chenyaofo_cifar10_resnet56-187c023a.pt", "resnet56", "B", CHENYAOFO_NORM, 94.20),
]


@pytest.mark.parametrize(("filename", "name", "shortcut", "mean_std", "top1"), CIFAR_CHECKPOINTS)
def test_cifar_checkpoint_reproduces_accuracy(
    cifar_subset: tuple[torch.Tensor, torch.Tensor],
    filename: str,
    name: str,
    shortcut: str,
    mean_std: tuple[tuple[float, ...], tuple[float, ...]],
    top1: float,
) -> None:
    path = shared_path("weights", "cifar10", filename)
    model = get_model(name, shortcut=shortcut)
    load_weights_file(model, path)
    images, labels = cifar_subset
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in mean_std)
    accuracy, count = _top1(model, zip(((images - mean) / std).split(128), labels.split(128), strict=True))
    print(f"{filename}: top-1 {accuracy:.2f} on {count} images")
    assert count == 1017
    assert accuracy == pytest.approx(top1, abs=0.1 + 1e-9)


def test_read_checkpoint_file_returns_the_raw_object() -> None:
    raw = read_checkpoint_file(shared_path("weights", "cifar10", "akamaster_resnet20-12fca82f.th"))
    assert set(raw) == {"best_prec1", "state_dict"}
    assert "module.linear.weight" in raw["state_dict"]


def test_old_checkpoint_without_num_batches_tracked_loads() -> None:
    state_dict = read_state_dict(shared_path("weights", "cifar10", "akamaster_resnet20-12fca82f.th"))
    assert not any(key.endswith("num_batches_tracked") for key in state_dict)  # the case being tested
    assert "linear.weight" in state_dict and not any(key.startswith("module.") for key in state_dict)
    model = resnet20()
    load_state_dict_strict(model, state_dict, source="akamaster")
    assert torch.equal(model.fc.weight, state_dict["linear.weight"])


@pytest.mark.slow
def test_imagenet_mobilenet_v2_reproduces_accuracy() -> None:
    """The data README's top-1 for these weights, 82.4 on the whole 1,000-image sample: exactly 824 right.

    All 1,000 images, though they take 15-20 s alone: a subset's accuracy is not the published number, and a
    tolerance wide enough for a subset's sampling error (a standard error of 2.7 points at 200 images) would let
    through the small losses of a slightly wrong transform or weight mapping, which this exact count catches."""
    path = shared_path("weights", "imagenet", "mobilenet_v2_dequantized_from_q925.pth")
    root = shared_path("imagenet-sample", "val")
    transforms = torchvision.transforms
    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(*IMAGENET_MEAN_STD),
        ]
    )
    dataset = torchvision.datasets.ImageFolder(root, transform=transform)
    model = get_model("tv_mobilenet_v2")
    load_weights_file(model, path)
    start = time.perf_counter()
    # Batches of 16 keep memory small and were the fastest size on 2 CPU cores.
    accuracy, count = _top1(model, torch.utils.data.DataLoader(dataset, batch_size=16))
    print(f"mobilenet_v2: top-1 {accuracy:.2f} on {count} images in {time.perf_counter() - start:.1f} s")
    assert count == 1000
    assert accuracy == pytest.approx(82.4, abs=0.1 + 1e-9)


# --------------------------------------------------------------------------- loading errors


def test_option_b_checkpoint_into_option_a_model_hints_shortcut() -> None:
    path = shared_path("weights", "cifar10", "chenyaofo_cifar10_resnet20-4118986f.pt")
    with pytest.raises(UserError) as info:
        load_weights_file(resnet20(shortcut="A"), path)
    message = str(info.value)
    assert str(path) in message and "unexpected keys layer2.0.downsample.0.weight" in message
    assert 'set model.shortcut to "B"' in message


def test_option_a_checkpoint_into_option_b_model_hints_shortcut() -> None:
    path = shared_path("weights", "cifar10", "akamaster_resnet20-12fca82f.th")
    with pytest.raises(UserError) as info:
        load_weights_file(resnet20(shortcut="B"), path)
    message = str(info.value)
    assert "missing keys layer2.0.downsample.0.weight" in message and 'set model.shortcut to "A"' in message


def test_deeper_checkpoint_into_shallower_model_names_depths() -> None:
    path = shared_path("weights", "cifar10", "akamaster_resnet56-4bfd9763.th")
    with pytest.raises(UserError) as info:
        load_weights_file(resnet20(), path)
    message = str(info.value)
    assert "unexpected keys layer1.3." in message
    assert message.endswith(
        "the checkpoint has 9 blocks per stage (resnet56) but the model has 3 (resnet20): "
        "build resnet56 or use a resnet20 checkpoint"
    )


def test_shallower_checkpoint_into_deeper_model_with_other_shortcut_gets_both_hints() -> None:
    path = shared_path("weights", "cifar10", "akamaster_resnet20-12fca82f.th")
    with pytest.raises(UserError) as info:
        load_weights_file(resnet56(shortcut="B"), path)
    message = str(info.value)
    # The counters of missing layers are reported too: only a lone missing counter is tolerated.
    assert "missing keys layer1.3.conv1.weight" in message
    assert 'set model.shortcut to "A"' in message and "(resnet20) but the model has 9 (resnet56)" in message


def test_shape_mismatch_names_key_and_both_shapes() -> None:
    path = shared_path("weights", "cifar10", "akamaster_resnet20-12fca82f.th")
    model = rebuilt_pruned("resnet20", [8, 16, 16, 32, 32, 32, 64, 64, 64])
    with pytest.raises(UserError) as info:
        load_weights_file(model, path)
    assert str(info.value) == (
        f"checkpoint {path}: layer1.0.conv1.weight has shape (16, 16, 3, 3) but the model expects (8, 16, 3, 3); "
        "was it made for another architecture or model option?"
    )


@pytest.mark.parametrize("filename", ["akamaster_resnet20-12fca82f.th", "chenyaofo_cifar10_resnet20-4118986f.pt"])
def test_truncated_checkpoint(tmp_path: Path, filename: str) -> None:
    # akamaster's file is the legacy (pre-1.6) format, chenyaofo's the zip format: both must be caught.
    data = shared_path("weights", "cifar10", filename).read_bytes()
    for cut in (0, 10, len(data) // 100, len(data) // 2):
        path = tmp_path / f"half_{cut}_{filename}"
        path.write_bytes(data[:cut])
        with pytest.raises(UserError) as info:
            read_state_dict(path)
        message = str(info.value)
        assert message.startswith(f"checkpoint {path} is truncated, corrupt or not a PyTorch checkpoint (")
        assert "\n" not in message


def test_missing_directory_text_and_pickled_module_files(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        read_state_dict(tmp_path / "nope.pth")
    assert str(info.value) == f"checkpoint not found: {tmp_path / 'nope.pth'}; check model.checkpoint"
    with pytest.raises(UserError, match="is a directory"):
        read_state_dict(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(UserError, match=r"truncated, corrupt or not a PyTorch checkpoint \(Unsupported operand"):
        read_state_dict(text)
    pickled = tmp_path / "module.pth"
    torch.save(nn.Linear(2, 2), pickled)
    with pytest.raises(
        UserError, match=r"refused for safety: torch\.nn\.modules\.linear\.Linear; .*model\.state_dict\(\)"
    ):
        read_state_dict(pickled)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(UserError, match="holds a list, not a state dict"):
        read_state_dict(not_a_dict)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", None])
def test_read_state_dict_unwraps_and_strips_data_parallel_prefix(tmp_path: Path, wrapper: str | None) -> None:
    source = resnet20().state_dict()
    data = {f"module.{key}": value for key, value in source.items()}
    path = tmp_path / "ckpt.pth"
    torch.save({wrapper: data, "epoch": 3} if wrapper else data, path)
    loaded = read_state_dict(path)
    assert list(loaded) == list(source)
    model = resnet20()
    load_weights_file(model, path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, source[key])


# --------------------------------------------------------------------------- torchvision pretrained weights


def test_pretrained_offline_names_expected_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network in tests")

    # The machines have no internet anyway; this makes sure no test ever waits on a socket.
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
        get_model("tv_resnet18", pretrained=True)
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert f"not in {expected} " in message and "no network in tests" in message
    assert "TORCH_HOME" in message and "model.checkpoint" in message and "\n" not in message
    assert not expected.exists()


def test_pretrained_reads_a_file_placed_where_torchvision_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.MobileNet_V2_Weights.DEFAULT
    expected = expected_weights_file(weights)
    assert expected == tmp_path / "hub" / "checkpoints" / "mobilenet_v2-7ebf99e0.pth"
    source = shared_path("weights", "imagenet", "mobilenet_v2_dequantized_from_q925.pth")
    expected.parent.mkdir(parents=True)
    expected.symlink_to(source)  # torchvision checks the hash only when it downloads
    model = get_model("tv_mobilenet_v2", pretrained=True)
    reference = read_state_dict(source)
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key

    expected.unlink()
    expected.write_bytes(source.read_bytes()[:1000])
    with pytest.raises(UserError, match=re.escape(f"cannot read the tv_mobilenet_v2 weights {expected} (")):
        get_model("tv_mobilenet_v2", pretrained=True)


def test_pretrained_with_other_classes_gets_a_new_classifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """torchvision's 1000-class weights for 10 classes: the weights load, then the classifier layer is replaced by a
    new one of 10 outputs, and the model has the shapes of the model built for 10 classes (its checkpoints rebuild)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = expected_weights_file(torchvision.models.MobileNet_V2_Weights.DEFAULT)
    expected.parent.mkdir(parents=True)
    torch.manual_seed(1)
    source = torchvision.models.mobilenet_v2(weights=None).state_dict()
    torch.save(source, expected)
    model = get_model("tv_mobilenet_v2", num_classes=10, pretrained=True)
    assert "classifier.1 replaced by a new, randomly initialised layer of 10 outputs" in capsys.readouterr().out
    state = model.state_dict()
    assert {k: v.shape for k, v in state.items()} == \
        {k: v.shape for k, v in get_model("tv_mobilenet_v2", num_classes=10).state_dict().items()}
    for key, value in source.items():
        assert key.startswith("classifier.1.") or torch.equal(state[key], value), key
