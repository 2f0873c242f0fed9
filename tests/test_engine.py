"""The training and evaluation loops, checked against independent re-implementations with plain torch ops.

Loaders here are plain lists of ``(images, target)`` batches where the order must be fixed (the engine only
iterates), and a shuffling DataLoader where the seed is the point.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from utils.core.errors import UserError
from utils.train.engine import StepOptions, TrainingDiverged, evaluate, train_one_epoch

CPU = torch.device("cpu")


class TinyNet(nn.Module):
    """Conv + BatchNorm + Dropout + Linear: BN and dropout make train and eval mode observably different."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.fc(self.drop(x))


def make_model(num_classes: int = 10, seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet(num_classes)
    with torch.no_grad():  # BN statistics that are not the defaults, so eval mode gives different outputs
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


def make_batches(sizes: list[int], num_classes: int = 10, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, 5, 5, generator=g), torch.randint(num_classes, (n,), generator=g)) for n in sizes]


def rank_of_target(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How many classes score strictly higher than the target (0: a top-1 hit; < 5: a top-5 hit)."""
    return (output > output.gather(1, target.unsqueeze(1))).sum(dim=1)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


# ---------------------------------------------------------------------------------------------------------------
# evaluate


@pytest.mark.parametrize("num_classes", [10, 6, 5, 3])
def test_evaluate_equals_an_independent_computation(num_classes: int):
    model = make_model(num_classes)
    batches = make_batches([8, 8, 7], num_classes)  # a final partial batch
    images = torch.cat([x for x, _ in batches])
    model.eval()
    with torch.no_grad():
        logits = model(images)
    # Half the targets are the model's own top class, so top-1 is neither 0 nor 100 by chance...
    target = torch.cat([y for _, y in batches])
    target[::2] = logits[::2].argmax(dim=1)
    target[1] = logits[1].argmin()  # and one the model ranks last: top-5 < 100% whenever there are > 5 classes
    batches = list(zip(images.split(8), target.split(8), strict=True))

    model.train()  # evaluate must switch to eval mode itself
    before = state(model)
    stats = evaluate(model, batches, nn.CrossEntropyLoss(), CPU, desc="test")

    rank = rank_of_target(logits, target)
    assert stats["loss"] == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    assert stats["top1"] == pytest.approx(100.0 * (rank == 0).sum().item() / len(target))
    assert stats["top5"] == pytest.approx(100.0 * (rank < 5).sum().item() / len(target))
    assert 0 < stats["top1"] < 100
    if num_classes <= 5:  # every class is among the top 5
        assert stats["top5"] == 100.0
    else:
        assert stats["top5"] < 100.0
    assert not model.training
    assert_bitwise_equal(state(model), before)  # no BN statistics updated, no weights touched


def test_evaluate_does_not_depend_on_the_batch_size():
    # In eval mode each image's output is independent of its batch, so only rounding may differ.
    model = make_model()
    images, target = make_batches([23])[0]
    results = [evaluate(model, list(zip(images.split(bs), target.split(bs), strict=True)), nn.CrossEntropyLoss(), CPU)
               for bs in (1, 5, 23)]
    for other in results[1:]:
        assert other["loss"] == pytest.approx(results[0]["loss"], rel=1e-5)
        assert (other["top1"], other["top5"]) == (results[0]["top1"], results[0]["top5"])


# ---------------------------------------------------------------------------------------------------------------
# train_one_epoch


def replica_epoch(model: nn.Module, batches: list, optimizer: torch.optim.Optimizer) -> tuple[list, list, list]:
    """The training loop written out: per-batch (loss before the step, batch size, top-1 hits, top-5 hits)."""
    losses, sizes, hits = [], [], []
    model.train()
    for x, y in batches:
        out = model(x)
        loss = F.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        rank = rank_of_target(out.detach(), y)
        losses.append(loss.item())
        sizes.append(len(y))
        hits.append(((rank == 0).sum().item(), (rank < 5).sum().item()))
    return losses, sizes, hits


def sgd(model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)


def test_train_one_epoch_matches_a_replica_of_the_loop():
    batches = make_batches([8, 8, 2])  # unequal sizes: a plain mean of batch losses would differ
    model = make_model()
    model.eval()  # train_one_epoch must switch to train mode itself
    twin = copy.deepcopy(model)
    initial = state(model)
    opt, twin_opt = sgd(model), sgd(twin)

    torch.manual_seed(5)  # same dropout masks in both loops
    stats = train_one_epoch(model, batches, nn.CrossEntropyLoss(), opt, CPU, epoch=1)
    torch.manual_seed(5)
    losses, sizes, hits = replica_epoch(twin, batches, twin_opt)

    total = sum(sizes)
    weighted = sum(loss * n for loss, n in zip(losses, sizes, strict=True)) / total
    assert stats["loss"] == pytest.approx(weighted, rel=1e-6)
    assert stats["loss"] != pytest.approx(sum(losses) / len(losses), rel=1e-3)  # the test can tell them apart
    assert stats["top1"] == pytest.approx(100.0 * sum(h[0] for h in hits) / total)
    assert stats["top5"] == pytest.approx(100.0 * sum(h[1] for h in hits) / total)
    assert stats["time"] >= 0

    assert model.training
    assert_bitwise_equal(state(model), state(twin))  # same steps, same weights and BN statistics
    after = state(model)
    for name, _ in model.named_parameters():
        assert not torch.equal(after[name], initial[name]), f"{name} did not move"
    # BN statistics move in training (and only there: see the evaluate test), one count per step.
    assert not torch.equal(after["bn.running_mean"], initial["bn.running_mean"])
    assert after["bn.num_batches_tracked"].item() == initial["bn.num_batches_tracked"].item() + len(batches)


def test_reported_loss_is_taken_before_each_step():
    # With a large learning rate the loss after a step differs clearly from the loss before it.
    batches = make_batches([16])
    model = make_model()
    model.drop.p = 0.0
    with torch.no_grad():
        model.train()
        before = F.cross_entropy(copy.deepcopy(model)(batches[0][0]), batches[0][1]).item()
    stats = train_one_epoch(model, batches, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=1.0),
                            CPU, epoch=1)
    with torch.no_grad():
        after = F.cross_entropy(copy.deepcopy(model)(batches[0][0]), batches[0][1]).item()
    assert stats["loss"] == pytest.approx(before, rel=1e-6)
    assert after != pytest.approx(before, rel=1e-3)


def test_print_freq_prints_the_running_mean(capsys: pytest.CaptureFixture[str]):
    batches = make_batches([4, 4, 4, 4, 4])
    model = make_model()
    model.drop.p = 0.0
    twin = copy.deepcopy(model)
    train_one_epoch(model, batches, nn.CrossEntropyLoss(), sgd(model), CPU, epoch=7, options=StepOptions(print_freq=2))
    losses, _, _ = replica_epoch(twin, batches, sgd(twin))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["Epoch 7 step 2", "Epoch 7 step 4"]
    for line, step in zip(lines, (2, 4), strict=True):
        printed = float(line.split("loss ")[1].split(",")[0])
        assert printed == pytest.approx(sum(losses[:step]) / step, abs=1e-4)  # equal batch sizes


class CountingLoader:
    """A list of batches that records how many were drawn."""

    def __init__(self, batches: list) -> None:
        self.batches, self.drawn = batches, 0

    def __iter__(self) -> Iterator:
        for batch in self.batches:
            self.drawn += 1
            yield batch


class InfAt(nn.Module):
    """Cross-entropy that turns infinite at one call."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self.calls = step, 0

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = F.cross_entropy(output, target)
        return loss * float("inf") if self.calls == self.step else loss


@pytest.mark.parametrize(("how", "bad_step"), [("nan-input", 3), ("inf-loss", 2), ("nan-input", 1)])
def test_diverged_loss_raises_naming_epoch_and_step(how: str, bad_step: int):
    batches = make_batches([4] * 5)
    criterion: nn.Module = nn.CrossEntropyLoss()
    if how == "nan-input":
        batches[bad_step - 1][0][0, 0, 0, 0] = float("nan")
    else:
        criterion = InfAt(bad_step)
    loader = CountingLoader(batches)
    model = make_model()
    with pytest.raises(TrainingDiverged) as info:
        train_one_epoch(model, loader, criterion, sgd(model), CPU, epoch=4)
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message
    assert f"epoch 4, step {bad_step};" in message
    assert "lower the learning rate" in message and "train.lr" in message
    assert loader.drawn == bad_step  # on the CPU it stops at once instead of finishing the epoch


def test_finite_training_does_not_raise_for_a_large_but_finite_loss():
    batches = make_batches([4, 4])
    model = make_model()
    with torch.no_grad():
        model.fc.weight.mul_(1e4)  # huge logits, huge but finite cross-entropy
    stats = train_one_epoch(model, batches, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=1e-9),
                            CPU, epoch=1)
    assert stats["loss"] > 10


# ---------------------------------------------------------------------------------------------------------------
# Determinism


def seeded_run(seed: int) -> dict[str, torch.Tensor]:
    """Model init, shuffling and dropout all drawn from the one torch seed; two epochs."""
    g = torch.Generator().manual_seed(123)  # the data itself is fixed
    dataset = TensorDataset(torch.randn(40, 3, 5, 5, generator=g), torch.randint(10, (40,), generator=g))
    torch.manual_seed(seed)
    model = TinyNet()
    loader = DataLoader(dataset, batch_size=8, shuffle=True)
    opt = sgd(model)
    for epoch in (1, 2):
        train_one_epoch(model, loader, nn.CrossEntropyLoss(), opt, CPU, epoch=epoch)
    return state(model)


def test_same_seed_gives_bitwise_identical_weights_on_cpu():
    first = seeded_run(0)
    assert_bitwise_equal(first, seeded_run(0))
    other = seeded_run(1)  # and the seed matters (otherwise the check above proves nothing)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())
