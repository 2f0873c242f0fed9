"""``prune.importance: taylor`` (Molchanov et al. 2019): the scores equal an independent autograd computation of
``(sum p * dL/dp)^2`` averaged over batches (BatchNorm scale and shift where the channel has a BatchNorm, the
producing filters where it has none, a residual group's members summed before squaring), scoring leaves the model
exactly as it was, and the application draws training batches for it (a real ``pruner_exp.py`` run), refuses it in
``--dry-run`` with one line, and validates ``prune.taylor_batches``."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from test_filter_runner import conv_modules, save_checkpoint, smallest_l1
from test_importance import _net
from test_runner import PRUNER, run_script, succeeded, write_config
from torch import nn

import pruner_exp
from pruning import analyse, prune_filters
from pruning.gradients import taylor_statistics
from pruning.importance import Scoring, group_scores, needs_gradients
from pruning.sensitivity import layer_sensitivity
from utils.app.cli import run_main
from utils.checkpoint.load import load_toolkit_checkpoint
from utils.config.validate import from_dict
from utils.core.errors import UserError

X = torch.zeros(1, 3, 6, 6)


def _batches(count: int = 3, size: int = 4, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 6, 6, generator=g), torch.randint(0, 2, (size,), generator=g)) for _ in range(count)]


def _logits(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return net(images).mean(dim=(2, 3))  # the test net's head is a 1x1 conv: (N, 2, H, W) -> (N, 2) logits


def _by_hand(net: nn.Module, batches: list, parts: list[tuple[nn.Module, bool]]) -> torch.Tensor:
    """``mean over batches of (sum over parts of sum over the channel's parameters of p * dL/dp)^2``, by autograd on
    the eval-mode model; ``parts``: ``(module, rows)``: a BatchNorm's gamma and beta (rows False) or a conv's filter
    rows and bias (rows True)."""
    net.eval()
    squares = []
    for images, target in batches:
        loss = nn.functional.cross_entropy(_logits(net, images), target)
        params = [p for module, _ in parts for p in (module.weight, module.bias)]
        grads = torch.autograd.grad(loss, params)
        total = 0
        for i, (module, rows) in enumerate(parts):
            w, b, gw, gb = (t.detach().double() for t in (module.weight, module.bias, grads[2 * i], grads[2 * i + 1]))
            total = total + ((w * gw).flatten(1).sum(1) if rows else w * gw) + b * gb
        squares.append(total**2)
    return torch.stack(squares).mean(dim=0)


class _Logits(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(self.net, x)


def test_scores_equal_an_independent_autograd_computation() -> None:
    net = _net()
    batches = _batches()
    stats = taylor_statistics(_Logits(net), batches)
    stats = type(stats)(per_batch={k.removeprefix("net."): v for k, v in stats.per_batch.items()}, batches=3)
    graph = analyse(net, X)
    # conv1's channels go through bn1: gamma and beta
    expected = _by_hand(net, batches, [(net.bn1, False)])
    torch.testing.assert_close(group_scores(net, graph.group_of("conv1"), importance="taylor", gradients=stats),
                               expected, rtol=1e-9, atol=1e-15)
    # the residual group conv2/conv3: bn2's and bn3's contributions summed per batch, then squared
    expected = _by_hand(net, batches, [(net.bn2, False), (net.bn3, False)])
    torch.testing.assert_close(group_scores(net, graph.group_of("conv2"), importance="taylor", gradients=stats),
                               expected, rtol=1e-9, atol=1e-15)


def test_without_a_batchnorm_the_producing_filters_are_scored() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 2, 1), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten())
    batches = _batches(count=2)
    stats = taylor_statistics(net, batches)
    net.eval()
    squares = []
    for images, target in batches:
        conv = net[0]
        gw, gb = torch.autograd.grad(nn.functional.cross_entropy(net(images), target), [conv.weight, conv.bias])
        w, b = conv.weight.detach().double(), conv.bias.detach().double()
        squares.append(((w * gw.double()).sum(dim=(1, 2, 3)) + b * gb.double()) ** 2)
    scores = group_scores(net, analyse(net, X).group_of("0"), importance="taylor", gradients=stats)
    torch.testing.assert_close(scores, torch.stack(squares).mean(dim=0), rtol=1e-9, atol=1e-15)
    result = prune_filters(net, layers=["0"], channels=[2], importance="taylor", gradients=stats, example_input=X)
    assert list(result.removed.values()) == [sorted(torch.argsort(scores, stable=True)[:2].tolist())]


def test_scoring_leaves_the_model_as_it_was() -> None:
    net = _Logits(_net()).train()
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.5) if p.dim() > 1 else None  # what a training loop may have left
    state = copy.deepcopy(net.state_dict())
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()}
    taylor_statistics(net, _batches())
    assert net.training  # the mode it was in
    after = net.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # weights and BatchNorm buffers alike
    for n, p in net.named_parameters():
        assert (p.grad is None) if grads[n] is None else torch.equal(p.grad, grads[n])


def test_needs_gradients_and_a_call_without_them_is_one_line() -> None:
    assert needs_gradients("taylor") and not needs_gradients("l1")
    with pytest.raises(UserError, match=r"prune.importance: taylor scores channels from gradients, and none were "
                                        r"given; compute them with pruning.gradients.taylor_statistics"):
        prune_filters(_net(), layers=["conv1"], channels=[1], importance="taylor", example_input=X)
    with pytest.raises(ValueError, match="no batch"):
        taylor_statistics(_net(), [])


def test_sensitivity_ranks_by_taylor() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    batches = _batches(count=2)
    stats = taylor_statistics(net, batches)
    points = layer_sensitivity(net, "0", [0.25, 0.5], batches, torch.device("cpu"), example_input=X,
                               importance=Scoring("taylor", stats))
    assert [p["kept"] for p in points] == [3, 2]


def _digits_config(tmp_path: Path, checkpoint: Path) -> Path:
    return write_config(tmp_path / "taylor.json", name="taylor", seed=0,
                        data={"name": "digits", "batch_size": 32, "workers": 0},
                        model={"arch": "resnet20", "checkpoint": str(checkpoint)},
                        prune={"method": "filter", "layers": ["conv2", "conv4"], "ratios": [0.5], "latency": False,
                               "taylor_batches": 2},
                        retrain={"epochs": 0}, output={"dir": str(tmp_path / "runs")})


@pytest.mark.slow
def test_a_pruner_run_with_taylor_draws_training_batches_and_prunes(tmp_path: Path) -> None:
    checkpoint = save_checkpoint(tmp_path / "r20.pth", "resnet20")
    config = _digits_config(tmp_path, checkpoint)
    succeeded(run_script(PRUNER, "--json", str(config), "--set", "prune.importance=taylor", cwd=tmp_path))
    results = json.loads((tmp_path / "runs" / "taylor" / "results.json").read_text())
    assert results["importance"] == "taylor" and results["widths"] == {"conv2": [16, 8], "conv4": [16, 8]}
    model = load_toolkit_checkpoint(checkpoint).model
    modules = conv_modules("resnet20", num_classes=10)
    l1 = {layer: smallest_l1(model.get_submodule(modules[layer]).weight, 8) for layer in ("conv2", "conv4")}
    assert results["removed"] != l1  # scored from the data, not from the weights


def test_dry_run_refuses_taylor_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = _digits_config(tmp_path, tmp_path / "none.pth")
    monkeypatch.setattr(sys, "argv", ["pruner_exp.py", "--json", str(config), "--dry-run",
                                      "--set", "prune.importance=taylor"])
    with pytest.raises(SystemExit) as info:
        run_main(pruner_exp.cli)
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "error: prune.importance taylor needs training batches; --dry-run plans without data: use l1 for the plan "
        "(--set prune.importance=l1), or run without --dry-run\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taylor.json"]


@pytest.mark.parametrize(("value", "message"), [(0, "expected a positive integer, at most 1000, got 0"),
                                                 (1001, "at most 1000, got 1001"), ("ten", "got \"ten\""),
                                                 (2.5, "got 2.5")])
def test_taylor_batches_is_validated(value: object, message: str) -> None:
    model = {"arch": "resnet20"}
    assert from_dict({"name": "t", "model": model}).prune.taylor_batches == 10
    with pytest.raises(UserError, match="prune.taylor_batches") as info:
        from_dict({"name": "t", "model": model, "prune": {"taylor_batches": value}})
    assert message in str(info.value)
