"""The retraining loss: distillation from the unpruned model (``retrain.distill``) and the BatchNorm L1 penalty of
network slimming (``train.bn_l1`` / ``retrain.bn_l1``), in :mod:`utils.train.losses`.

The loss terms equal independent computations written out from their definitions; a weight of 0 gives the plain
run bit for bit (through :func:`fit`, and through the real ``pruner_exp.py`` on the demo experiment); the teacher
gets no gradient and stays as it was; alpha 1 ignores the labels; bn_l1 shrinks the BatchNorm scales; every setting
that cannot work is one line naming the key.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_data import write_cifar
from test_interrupt import Stopped, step_line
from test_runner import PRUNER, REPO, load, run_script, succeeded, write_config
from torch import nn

from utils.config.schema import OptimConfig
from utils.config.validate import from_dict, load_config
from utils.core.errors import UserError
from utils.core.rundir import RunDir
from utils.train.fit import Loaders, RunTarget, fit
from utils.train.losses import (
    Teacher,
    TrainingLoss,
    batchnorm_scales,
    bn_l1_penalty,
    frozen_teacher,
    soft_target_loss,
    training_loss,
)

CPU = torch.device("cpu")


class Tiny(nn.Module):
    """Two BatchNorms, so the penalty sums over more than one layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _logits(seed: int, n: int = 6, classes: int = 5) -> torch.Tensor:
    return torch.randn(n, classes, generator=torch.Generator().manual_seed(seed)) * 3


# ---------------------------------------------------------------------------------------------------- loss terms


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_soft_target_loss_is_t_squared_times_the_batch_mean_kl(temperature: float) -> None:
    student, teacher = _logits(0).double(), _logits(1).double()
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):  # written out, one sample at a time
        s_exp = [math.exp(v / temperature) for v in s_row]
        t_exp = [math.exp(v / temperature) for v in t_row]
        p = [v / sum(t_exp) for v in t_exp]
        q = [v / sum(s_exp) for v in s_exp]
        expected += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
    expected = expected / len(student) * temperature**2
    got = soft_target_loss(student.float(), teacher.float(), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert soft_target_loss(teacher, teacher, temperature).abs().item() < 1e-6  # a student equal to its teacher


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_distillation_loss_mixes_cross_entropy_and_soft_targets(alpha: float) -> None:
    student, teacher, labels = _logits(2), _logits(3), torch.tensor([0, 1, 2, 3, 4, 0])
    loss = TrainingLoss(distill=Teacher(model=nn.Identity(), alpha=alpha, temperature=4.0))
    ce = -F.log_softmax(student, 1)[torch.arange(6), labels].mean()
    soft = (F.softmax(teacher / 4, 1) * (F.log_softmax(teacher / 4, 1) - F.log_softmax(student / 4, 1))).sum() / 6
    expected = (1 - alpha) * ce + alpha * 16 * soft
    assert loss(student, labels, teacher).item() == pytest.approx(expected.item(), rel=1e-5)
    if alpha == 0:  # the plain loss, bit for bit
        assert torch.equal(loss(student, labels, teacher), F.cross_entropy(student, labels))


def test_alpha_one_ignores_the_labels() -> None:
    student, teacher = _logits(4).requires_grad_(), _logits(5)
    loss = TrainingLoss(distill=Teacher(model=nn.Identity(), alpha=1.0, temperature=2.0))
    a = loss(student, torch.tensor([0, 1, 2, 3, 4, 0]), teacher)
    b = loss(student, torch.tensor([4, 4, 1, 0, 2, 3]), teacher)  # other labels
    assert torch.equal(a, b)
    (grad_a,) = torch.autograd.grad(a, student)
    (grad_b,) = torch.autograd.grad(b, student)
    assert torch.equal(grad_a, grad_b)


def test_bn_l1_penalty_is_the_sum_of_absolute_scales_and_its_gradient_their_sign() -> None:
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.randn(6))
        model.bn2.weight.copy_(torch.randn(8))
        model.bn2.weight[3] = 0.0
    scales = batchnorm_scales(model)
    assert [id(s) for s in scales] == [id(model.bn1.weight), id(model.bn2.weight)]
    expected = sum(abs(v) for v in model.bn1.weight.tolist() + model.bn2.weight.tolist())
    assert bn_l1_penalty(scales).item() == pytest.approx(expected, rel=1e-6)
    output, labels = model(torch.randn(4, 3, 6, 6)), torch.tensor([0, 1, 2, 3])
    loss = TrainingLoss(bn_l1=0.01, scales=scales)
    assert (loss(output, labels) - F.cross_entropy(output, labels)).item() == pytest.approx(0.01 * expected, rel=1e-5)
    plain_grad = torch.autograd.grad(F.cross_entropy(output, labels), model.bn2.weight, retain_graph=True)[0]
    grad = torch.autograd.grad(loss(output, labels), model.bn2.weight)[0]
    torch.testing.assert_close(grad - plain_grad, 0.01 * torch.sign(model.bn2.weight.detach()))
    assert (grad - plain_grad)[3] == 0  # a scale at zero (a pruned channel) is left there


def test_no_teacher_and_no_penalty_is_the_plain_cross_entropy() -> None:
    assert isinstance(training_loss(Tiny()), nn.CrossEntropyLoss)
    assert frozen_teacher(Tiny(), alpha=0.0, temperature=4.0) is None


# ----------------------------------------------------------------------------------------------------- via fit


def _fit(tmp_path: Path, name: str, *, teacher: Teacher | None = None, bn_l1: float = 0.0,
         epochs: int = 2) -> nn.Module:
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        for scale in batchnorm_scales(model):
            scale.fill_(0.5)
    generator = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(32, 3, 6, 6, generator=generator),
                                          torch.randint(0, 5, (32,), generator=generator))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    run = RunDir(tmp_path / name)
    run.path.mkdir()
    fit(model, loaders=Loaders(train=loader, test=loader, teacher=teacher),
        optim=OptimConfig(epochs=epochs, lr=0.1, bn_l1=bn_l1), device=CPU,
        target=RunTarget(run=run, arch={"name": "tiny", "options": {}}, config={}, seed=0))
    return model


def _teacher_net() -> nn.Module:
    torch.manual_seed(7)
    return Tiny()


def test_distillation_through_fit_leaves_the_teacher_unchanged_and_without_gradients(tmp_path: Path) -> None:
    original = _teacher_net()
    before = copy.deepcopy(original.state_dict())
    teacher = frozen_teacher(original, alpha=0.5, temperature=4.0)
    assert teacher is not None and teacher.model is not original and not teacher.model.training
    distilled = _fit(tmp_path, "distilled", teacher=teacher)
    plain = _fit(tmp_path, "plain")
    for net in (original, teacher.model):  # the model given and its frozen copy: same weights and statistics
        for key, value in net.state_dict().items():
            assert torch.equal(value, before[key]), key
    assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())
    assert not teacher.model.training
    assert any(not torch.equal(a, b) for a, b in zip(distilled.state_dict().values(), plain.state_dict().values(),
                                                     strict=True))  # the teacher did change the training


def test_alpha_zero_with_the_teacher_run_is_plain_training_bit_for_bit(tmp_path: Path) -> None:
    # frozen_teacher skips the teacher at alpha 0; here it runs on every batch anyway and must change nothing.
    teacher = Teacher(model=_teacher_net().eval().requires_grad_(False), alpha=0.0, temperature=4.0)
    distilled, plain = _fit(tmp_path, "alpha0", teacher=teacher), _fit(tmp_path, "plain")
    for (key, a), b in zip(distilled.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    assert (tmp_path / "alpha0" / "metrics.jsonl").read_text() != ""
    drop = ("time",)
    rows = [[{k: v for k, v in json.loads(line).items() if k not in drop}
             for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()] for name in ("alpha0", "plain")]
    assert rows[0] == rows[1]


def test_bn_l1_shrinks_the_scales_and_zero_is_plain_training(tmp_path: Path) -> None:
    plain, zero = _fit(tmp_path, "plain"), _fit(tmp_path, "zero", bn_l1=0.0)
    slim = _fit(tmp_path, "slim", bn_l1=0.05)
    for a, b in zip(plain.state_dict().values(), zero.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert bn_l1_penalty(batchnorm_scales(slim)) < bn_l1_penalty(batchnorm_scales(plain)) - 0.05


# ---------------------------------------------------------------------------------------------------- validation

BASE: dict[str, Any] = {"name": "d", "model": {"arch": "resnet20", "checkpoint": "w.pth"},
                        "prune": {"method": "weight"}, "retrain": {"epochs": 1}}
DISTILL = {"alpha": 0.5, "temperature": 4}


def _error(**sections: dict[str, Any]) -> str:
    raw = json.loads(json.dumps(BASE))
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    with pytest.raises(UserError) as info:
        from_dict(raw, source="x.json")
    return str(info.value)


@pytest.mark.parametrize(("sections", "fragments"), [
    ({"retrain": {"distill": {"alpha": 1.5, "temperature": 4}}}, ["retrain.distill.alpha", "[0, 1]", "1.5"]),
    ({"retrain": {"distill": {"alpha": -0.1, "temperature": 4}}}, ["retrain.distill.alpha", "[0, 1]"]),
    ({"retrain": {"distill": {"alpha": 0.5, "temperature": 0}}}, ["retrain.distill.temperature", "(0, 100]"]),
    ({"retrain": {"distill": {"alpha": 0.5, "temperature": 101}}}, ["retrain.distill.temperature", "101"]),
    ({"retrain": {"distill": {"alpha": 0.5}}}, ["retrain.distill.temperature", "missing"]),
    ({"retrain": {"distill": {"alpha": 0.5, "temp": 4}}}, ["retrain.distill.temp", "unknown key"]),
    ({"retrain": {"distill": 0.5}}, ["retrain.distill", "expected an object"]),
    ({"train": {"distill": DISTILL}}, ["train.distill", "no teacher", "retrain.distill"]),
    ({"retrain": {"epochs": 0, "distill": DISTILL}}, ["retrain.distill", "retrain.epochs is 0", "set retrain.epochs"]),
    ({"retrain": {"distill": DISTILL}, "prune": {"method": "sensitivity"}}, ["retrain.distill", '"sensitivity"']),
    ({"retrain": {"distill": DISTILL}, "prune": {"from_scratch": True}, "model": {"checkpoint": None}},
     ["retrain.distill", "prune.from_scratch", "no trained teacher"]),
    ({"train": {"bn_l1": -1e-5}}, ["train.bn_l1", ">= 0", "-1e-05"]),
    ({"retrain": {"bn_l1": "big"}}, ["retrain.bn_l1", '"big"']),
])
def test_settings_that_cannot_work_are_one_line_naming_the_key(sections: dict[str, Any], fragments: list[str]) -> None:
    message = _error(**sections)
    assert message.startswith("x.json: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_set_train_distill_names_where_it_belongs(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps(BASE))
    with pytest.raises(UserError, match=r"^--set train.distill: the baseline trainer has no teacher; .*retrain"):
        load_config(path, [f"train.distill={json.dumps(DISTILL)}"])
    cfg = load_config(path, [f"retrain.distill={json.dumps(DISTILL)}", "retrain.bn_l1=1e-4"])
    assert (cfg.retrain.distill.alpha, cfg.retrain.distill.temperature, cfg.retrain.bn_l1) == (0.5, 4.0, 1e-4)
    assert from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # config.json and checkpoints round-trip


# ------------------------------------------------------------------------------------------ the real pruner_exp.py

DEMO = REPO / "experiments" / "demo" / "digits_weight_prune_resnet20.json"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's folder layout with an untrained ResNet-20 as its ``checkpoints/demo_digits_resnet20/best.pth``, and
    a tiny CIFAR-10 (80 training images: 5 steps of 16) that the runs train on instead of the digits, for speed."""
    from models import get_model
    from utils.checkpoint.format import make_checkpoint
    from utils.core.files import atomic_torch_save

    folder = tmp_path_factory.mktemp("distill_demo")
    write_cifar(folder / "data", per_batch=16, n_test=20)
    torch.manual_seed(0)
    model = get_model("resnet20", num_classes=10)
    (folder / "checkpoints" / "demo_digits_resnet20").mkdir(parents=True)
    atomic_torch_save(make_checkpoint(model=model, arch={"name": "resnet20", "options": {"num_classes": 10}},
                                      config={}), folder / "checkpoints" / "demo_digits_resnet20" / "best.pth")
    return folder


DATA = {"name": "cifar10", "root": "data", "batch_size": 16, "test_batch_size": 20, "workers": 0}


def _prune(folder: Path, name: str, *sets: str) -> Path:
    sets = (f"name={name}", "output.dir=runs", f"data={json.dumps(DATA)}", *sets)
    succeeded(run_script(PRUNER, "--json", str(DEMO), "--prune_percent", "0.5",
                         *[a for s in sets for a in ("--set", s)], cwd=folder))
    return folder / "runs" / name


@pytest.mark.slow
def test_pruner_alpha_zero_is_plain_retraining_and_results_name_the_loss(demo: Path) -> None:
    plain = _prune(demo, "plain")
    zero = _prune(demo, "alpha0", f"retrain.distill={json.dumps({'alpha': 0, 'temperature': 4})}")
    half = _prune(demo, "alpha05", f"retrain.distill={json.dumps(DISTILL)}")
    a, b, c = (load(run / "p0.5" / "last.pth")["state_dict"] for run in (plain, zero, half))
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert any(not torch.equal(a[key], c[key]) for key in a)
    results = [json.loads((run / "results.json").read_text()) for run in (plain, zero, half)]
    assert [r["rows"][0]["top1_finetuned"] for r in results[:2]] == [results[0]["rows"][0]["top1_finetuned"]] * 2
    assert results[0]["retrain_loss"] == "cross-entropy"
    assert results[2]["retrain_loss"] == {"name": "distillation", "alpha": 0.5, "temperature": 4.0,
                                          "teacher": "the unpruned model"}


@pytest.mark.slow
def test_distilled_agp_with_taylor_stopped_and_resumed_equals_the_run_never_stopped(demo: Path) -> None:
    """The options meet in one run: AGP prunes by taylor (fresh gradients at every pruning step, drawn inside the
    training's pass) while the loss distils from the unpruned model; Ctrl-C in the second epoch and ``--resume``
    (the teacher rebuilt from ``model.checkpoint``, not from the checkpoint resumed) end with the weights of the run
    never stopped."""
    config = write_config(demo / "agp.json", name="agp", seed=1, print_freq=1, data=DATA,
                          model={"arch": "resnet20", "checkpoint": "checkpoints/demo_digits_resnet20/best.pth"},
                          prune={"method": "filter", "layers": ["conv2", "conv4"], "ratios": [0.5],
                                 "importance": "taylor", "taylor_batches": 2, "latency": False, "schedule": "agp",
                                 "frequency": 2, "agp_end": 0.5},
                          retrain={"epochs": 2, "lr": 0.01, "distill": DISTILL}, output={"dir": "runs"})
    whole = succeeded(run_script(PRUNER, "--json", str(config), cwd=demo)).path
    stopped = Stopped([sys.executable, str(PRUNER), "--json", str(config)], demo, step_line(1, 2), signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    assert not (demo / "runs" / "agp-2" / "results.json").exists()
    succeeded(run_script(PRUNER, *stopped.resume_argv()[2:], cwd=demo))
    a, b = (load(run / "final.pth")["state_dict"] for run in (whole, demo / "runs" / "agp-2"))
    assert all(torch.equal(a[key], b[key]) for key in a)
    results = [json.loads((run / "results.json").read_text()) for run in (whole, demo / "runs" / "agp-2")]
    assert results[0]["after"] == results[1]["after"]
    assert results[0]["retrain_loss"]["name"] == "distillation"
