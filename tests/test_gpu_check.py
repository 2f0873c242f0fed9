"""bench/gpu_check.sh and its helpers: the smoke run on the CPU (every step ok, the summary complete), the epoch sizing
of the Li et al. headline, the figures and targets the summary reads from the benchmarks' output, and the data
archive."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from gpu_check_report import (  # bench/ scripts import as top-level modules
    Target,
    latency_figures,
    masked_figures,
    pytest_figures,
    throughput_figures,
)
from li_headline import judge, size_epochs, write_fake_folder
from pack_cifar_jpeg import pack

STEPS = ["env", "cuda_tests", "cuda_smoke", "throughput", "masked_step", "pruned_latency", "data", "headline"]


def test_sizing_fills_the_time_left() -> None:
    s = size_epochs(300, epoch_s=3.0, startup_s=30.0, max_epochs=160)
    total = s.baseline_epochs + s.retrain_epochs
    assert total == (0.9 * 300 - 60) // 3 == 70
    assert s.retrain_epochs == round(0.25 * 70)
    assert 2 * 30 + total * 3 <= 300


def test_sizing_minimums_and_caps() -> None:
    tight = size_epochs(10, epoch_s=3.0, startup_s=30.0, max_epochs=160)
    assert (tight.baseline_epochs, tight.retrain_epochs) == (1, 1)
    capped = size_epochs(10_000, epoch_s=1.0, startup_s=10.0, max_epochs=20, max_retrain=5)
    assert (capped.baseline_epochs, capped.retrain_epochs) == (20, 5)


def test_judge_marks_the_headline_targets() -> None:
    summary = {"top1": {"before": 90.0, "pruned": 80.0, "retrained": 89.8},
               "timing": {"fast": {"epoch_s": [30.0, 2.5]}}}
    targets = judge(summary)
    assert targets["top1_drop_after_retraining"]["pass"] and targets["fast_epoch_s"]["value"] == 2.5
    assert judge({})["fast_epoch_s"]["pass"] is None


def test_target_verdicts() -> None:
    assert Target("x", 4.2, ">= 4").verdict == "pass"
    assert Target("x", 1.06, "<= 1.05").verdict == "FAIL"
    assert Target("x", None, "<= 1").verdict == "n/a"


THROUGHPUT = """## vgg16_bn_cifar: images/s, median of 3 rounds of 30 steps (batch 128)
| variant (loader/precision/mode) | images/s | spread | vs torchvision/fp32/eager | warm-up (s) |
|---|---|---|---|---|
| torchvision/fp32/eager | 5,000 | 1..2 | 1.00x | 1.0 |
| device/bf16/compile | 25,000 | 1..2 | 4.80x | 30.0 |

## resnet20: images/s, median of 3 rounds of 30 steps (batch 128)
| torchvision/fp32/eager | 9,000 | 1..2 | 1.00x | 1.0 |
"""


def test_throughput_figures() -> None:
    note, (ratio, epoch) = throughput_figures(THROUGHPUT)
    assert ratio.value == 4.8 and ratio.verdict == "pass"
    assert epoch.value == 2.0 and epoch.verdict == "pass"
    assert "vgg16_bn_cifar: best device/bf16/compile" in note and "resnet20" in note


def test_masked_and_latency_figures() -> None:
    masked = "## resnet20: x\nmasked / dense = 1.020 (median\n## vgg16_bn_cifar: y\nmasked / dense = 1.070 (median\n"
    assert masked_figures(masked)[1][0].value == 1.07
    latency = ("| MACs (batch 1) | 10 | 6 | 0.660 (target 0.66) |\n"
               "| latency, batch 1 (ms) | 2.00 | 1.50 | 0.750 (t) |\n"
               "| latency, batch 256 (ms) | 40.00 | 28.00 | 0.700 (target <= 0.75) |\n")
    note, (target,) = latency_figures(latency)
    assert target.value == 0.7 and target.verdict == "pass" and "MACs 0.660" in note
    assert latency_figures("")[1][0].verdict == "n/a"
    assert pytest_figures("....\n== 1 passed, 30 deselected in 3.0s ==\n")[0] == "1 passed, 30 deselected in 3.0s"


def test_pack_round_trip(tmp_path: Path) -> None:
    src = write_fake_folder(tmp_path / "fake", 1)
    archive = pack(src, tmp_path / "out")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names == sorted(names) and len(names) == 20
    assert names[0] == "cifar10-jpeg/test/airplane/0000.jpg"
    assert pack(src, tmp_path / "again").read_bytes()[10:] == archive.read_bytes()[10:]  # gzip header aside


def test_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    result = subprocess.run(["shellcheck", str(REPO / "bench" / "gpu_check.sh")], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
def test_smoke_run_every_step_ok(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--smoke", str(out)], capture_output=True,
                            text=True, env=env, timeout=600, check=False)
    rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == STEPS, result.stdout[-3000:]
    assert all(r[1] == "ok" for r in rows), rows
    assert result.returncode == 0
    summary = (out / "summary.md").read_text()
    for step in STEPS:
        assert f"| {step} | ok |" in summary
    assert "## Targets" in summary and "masked step / dense step" in summary
    assert "models: 2 ok, 0 failed" in summary
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert "logs/headline.log" in names and "summary.md" in names and "headline/headline.json" in names
