"""The speed options on the CPU, where they run: ``train.amp``, ``train.channels_last``, ``train.compile`` and
``data.loader: "gpu"`` (which holds the data on whatever device trains, the CPU included).

Each test shows the option is really in effect (the dtype or memory format a convolution sees, a compiled graph)
and that it changes nothing else: checkpoints hold the plain float32 model, masks are kept, resume restores the
gradient scaler, and results agree with the plain run to the precision the option computes in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_data import write_cifar
from test_runner import EVAL_LINE, TRAINER, cifar, load, run_script, succeeded, write_config
from torch import nn

from utils.config.schema import OptimConfig
from utils.core.rundir import RunDir
from utils.data.device import DeviceLoader, LoaderSpec
from utils.train.fit import Loaders, RunTarget, fit

# torch.compile's CPU backend calls a deprecated torch.jit helper of its own.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def loaders(train_batch: int = 16) -> tuple[DeviceLoader, DeviceLoader]:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8, generator=g)
    labels = (images.float().mean(dim=(1, 2, 3)) > 127).long() + 2 * (images[:, 0, 0, 0] > 127).long()
    common = {"mean": [0.5] * 3, "std": [0.25] * 3, "seed": 3}
    return (DeviceLoader(images, labels, LoaderSpec(batch_size=train_batch, train=True, **common)),
            DeviceLoader(images[:32], labels[:32], LoaderSpec(batch_size=32, train=False, **common)))


def train(tmp_path: Path, name: str, *, masks: dict[str, torch.Tensor] | None = None,
          resume: dict[str, Any] | None = None, model: nn.Module | None = None, **options: Any) -> tuple[nn.Module,
                                                                                                     Any]:
    model = model or tiny_net()
    train_loader, test_loader = loaders()
    optim = OptimConfig(epochs=options.pop("epochs", 2), lr=0.02, momentum=0.9, weight_decay=5e-4, **options)
    run = RunDir(tmp_path / name)
    run.path.mkdir(exist_ok=True)
    result = fit(model, loaders=Loaders(train=train_loader, test=test_loader), optim=optim, device=torch.device("cpu"),
                 target=RunTarget(run=run, arch={"name": "tiny", "options": {}}, config={}, seed=0), masks=masks,
                 resume=resume)
    return model, result


def input_dtypes_and_formats(model: nn.Module) -> list[tuple[torch.dtype, bool]]:
    """Record (output dtype, input is channels-last) of the first convolution in training mode."""
    seen: list[tuple[torch.dtype, bool]] = []

    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        if module.training:
            seen.append((output.dtype, args[0].is_contiguous(memory_format=torch.channels_last)))

    model[0].register_forward_hook(hook)
    return seen


def assert_close_state(a: nn.Module, b: nn.Module, rtol: float) -> None:
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if x.is_floating_point():
            assert torch.linalg.vector_norm(x - y) <= rtol * torch.linalg.vector_norm(x) + 1e-6, key


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    return train(tmp_path_factory.mktemp("plain"), "plain")[0]


@pytest.mark.parametrize(("amp", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_runs_the_forward_pass_in_half_precision_and_keeps_float32_weights(
        tmp_path: Path, plain: nn.Module, amp: str, dtype: torch.dtype) -> None:
    model = tiny_net()
    seen = input_dtypes_and_formats(model)
    model, result = train(tmp_path, amp, model=model, amp=amp)
    assert {d for d, _ in seen} == {dtype}
    saved = load(tmp_path / amp / "last.pth")
    assert all(t.dtype == torch.float32 for t in saved["state_dict"].values() if t.is_floating_point())
    assert ("scaler" in saved) == (amp == "fp16")
    assert_close_state(plain, model, rtol=0.1)  # it learned the same thing, to half precision's few digits
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history)


def test_fp16_resume_restores_the_gradient_scale(tmp_path: Path) -> None:
    train(tmp_path, "whole", amp="fp16", epochs=2)
    train(tmp_path, "half", amp="fp16", epochs=1)
    half = load(tmp_path / "half" / "last.pth")
    assert half["scaler"]["scale"] > 0
    model = tiny_net()
    model.load_state_dict(half["state_dict"])
    model, _ = train(tmp_path, "half", model=model, resume=half, amp="fp16", epochs=2)
    whole = load(tmp_path / "whole" / "last.pth")
    assert load(tmp_path / "half" / "last.pth")["scaler"] == whole["scaler"]
    for key, tensor in whole["state_dict"].items():
        assert torch.equal(tensor, model.state_dict()[key]), key


def test_masks_hold_under_fp16_with_its_scaler(tmp_path: Path) -> None:
    model = tiny_net()
    masks = {name: torch.rand(p.shape, generator=torch.Generator().manual_seed(i)) > 0.5
             for i, (name, p) in enumerate(model.named_parameters()) if p.dim() > 1}
    model, _ = train(tmp_path, "masked", model=model, masks=masks, amp="fp16")
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert bool((params[name][~mask] == 0).all()) and bool((params[name][mask] != 0).all()), name


def test_channels_last_trains_in_that_layout_and_computes_the_same(tmp_path: Path, plain: nn.Module) -> None:
    model = tiny_net()
    seen = input_dtypes_and_formats(model)
    model, _ = train(tmp_path, "cl", model=model, channels_last=True)
    assert seen and all(cl for _, cl in seen)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert_close_state(plain, model, rtol=1e-4)


@pytest.mark.slow
def test_compile_trains_the_same_model_and_saves_plain_weights(tmp_path: Path, plain: nn.Module) -> None:
    torch._dynamo.reset()
    model, result = train(tmp_path, "compiled", compile=True)
    assert_close_state(plain, model, rtol=1e-4)
    keys = load(tmp_path / "compiled" / "last.pth")["state_dict"].keys()
    assert keys == plain.state_dict().keys()  # no "_orig_mod." prefixes
    assert result.epochs_run == 2


def test_gpu_loader_on_the_cpu_through_the_trainer(tmp_path: Path) -> None:
    """``data.loader: "gpu"`` holds the data on the training device, the CPU here: the test split is the torchvision
    path's exactly, so evaluating a checkpoint gives the same numbers through both loaders."""
    write_cifar(tmp_path / "data", per_batch=16, n_test=30)
    config = write_config(tmp_path / "gpu.json", name="gpu_loader", seed=0, data={**cifar("data"), "loader": "gpu"},
                          model={"arch": "resnet20"}, train={"epochs": 1, "lr": 0.02}, output={"dir": "runs"})
    run = succeeded(run_script(TRAINER, "--json", str(config), cwd=tmp_path))
    assert run.path is not None
    numbers = []
    for loader in ("gpu", "torchvision"):
        out = succeeded(run_script(TRAINER, "--json", str(config), "--evaluate", "--resume",
                                   str(run.path / "last.pth"), "--set", f"data.loader={loader}", cwd=tmp_path))
        numbers.append(next(m.groups()[1:] for line in out.stdout.splitlines() if (m := EVAL_LINE.match(line))))
    assert numbers[0] == numbers[1]
