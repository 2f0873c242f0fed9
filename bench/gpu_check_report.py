"""``summary.md`` of a ``bench/gpu_check.sh`` run: one line per step (status, seconds, key figures read from its log)
and the targets the GPU run is judged against, each computed and marked pass or FAIL.

    python bench/gpu_check_report.py OUT      # reads OUT/steps.tsv and OUT/logs/<step>.log, writes OUT/summary.md

No torch: it runs even where the steps failed to import it. A figure that a log does not hold is ``n/a`` and its
target is neither pass nor fail.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from li_headline import EPOCH_TARGET_S, TOP1_DROP_TARGET  # bench/ is on the path when a bench script runs

EPOCH_IMAGES = 50_000  # a CIFAR-10 training epoch
MULTI = re.MULTILINE


@dataclass(frozen=True)
class Target:
    what: str
    value: float | None
    limit: str  # "<= 1.05", ">= 4"

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/a"
        op, bound = self.limit.split()
        ok = self.value <= float(bound) if op == "<=" else self.value >= float(bound)
        return "pass" if ok else "FAIL"


def read_steps(out: Path) -> list[dict[str, str]]:
    """Rows of ``steps.tsv`` (header: step, status, seconds, rc, log)."""
    lines = (out / "steps.tsv").read_text().splitlines()
    keys = lines[0].split("\t")
    return [dict(zip(keys, line.split("\t"), strict=False)) for line in lines[1:] if line.strip()]


def sections(text: str) -> dict[str, str]:
    """The text of each ``## <name>:`` section of a benchmark's output, by name."""
    parts = re.split(r"^## ([\w.-]+):", text, flags=MULTI)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def env_figures(text: str) -> tuple[str, list[Target]]:
    found = dict(re.findall(r"^(torch|torchvision|cuda|gpu|commit): (.*)$", text, flags=MULTI))
    return ", ".join(f"{k} {v}" for k, v in found.items()), []


def pytest_figures(text: str) -> tuple[str, list[Target]]:
    lines = [line.strip("= ") for line in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected|"
                                                                        r"error)|no tests ran", line)]
    return (lines[-1] if lines else "no pytest summary line"), []


def smoke_figures(text: str) -> tuple[str, list[Target]]:
    found = re.findall(r"^models: .*$", text, flags=MULTI)
    return (found[-1] if found else "no summary line"), []


def throughput_figures(text: str) -> tuple[str, list[Target]]:
    """VGG16-bn's device/bf16/compile against torchvision/fp32/eager (the first variant, which the ratio column is
    against): the ratio, and its images/s as seconds per CIFAR-10 epoch of training steps."""
    notes, ratio, epoch = [], None, None
    for arch, body in sections(text).items():
        rows = re.findall(r"^\| ([\w/]+) \| ([\d,]+) \| [^|]+ \| ([\d.]+)x \|", body, flags=MULTI)
        if not rows:
            continue
        best = max(rows, key=lambda r: float(r[1].replace(",", "")))
        notes.append(f"{arch}: best {best[0]} {best[1]} img/s = {best[2]}x {rows[0][0]}")
        if arch == "vgg16_bn_cifar":
            for name, ips, vs in rows:
                if name == "device/bf16/compile":
                    ratio, epoch = float(vs), EPOCH_IMAGES / float(ips.replace(",", ""))
    return "; ".join(notes) or "no table", [
        Target("VGG16-bn device+bf16+compiled / DataLoader fp32 images/s", ratio, ">= 4"),
        Target("VGG16-bn device+bf16+compiled, s per CIFAR-10 epoch of steps (50,000 / images/s)", epoch, "<= 3")]


def masked_figures(text: str) -> tuple[str, list[Target]]:
    ratios = {arch: float(m.group(1)) for arch, body in sections(text).items()
              if (m := re.search(r"masked / dense = ([\d.]+)", body))}
    worst = max(ratios.values()) if ratios else None
    return ", ".join(f"{a} {r:.3f}" for a, r in ratios.items()) or "no ratio", [
        Target("masked step / dense step (worst model)", worst, "<= 1.05")]


def latency_figures(text: str) -> tuple[str, list[Target]]:
    found = dict(re.findall(r"^\| latency, batch (\d+) \(ms\) \| [^|]+ \| [^|]+ \| ([\d.]+)", text, flags=MULTI))
    macs = re.search(r"^\| MACs \(batch 1\) \| [^|]+ \| [^|]+ \| ([\d.]+)", text, flags=MULTI)
    note = ", ".join(f"batch {b}: {r}" for b, r in found.items()) + (f"; MACs {macs.group(1)}" if macs else "")
    return note or "no table", [Target("pruned-A / unpruned latency at batch 256", float(found["256"])
                                       if "256" in found else None, "<= 0.75")]


def headline_figures(out: Path) -> tuple[str, list[Target]]:
    """The headline's figures and its two targets (``bench/li_headline.py`` judges them; n/a without its report)."""
    path = out / "headline" / "headline.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    judged = summary.get("targets", {})
    targets = [Target("pruned-A top-1 drop after retraining (points)",
                      judged.get("top1_drop_after_retraining", {}).get("value"), f"<= {TOP1_DROP_TARGET:g}"),
               Target("fast-path epoch (s, training + evaluation)", judged.get("fast_epoch_s", {}).get("value"),
                      f"<= {EPOCH_TARGET_S:g}")]
    if not path.exists():
        return "no headline.json", targets
    acc, sizing = summary.get("top1") or {}, summary.get("sizing") or {}
    timing = summary.get("timing", {})
    fast, std = (timing.get(k, {}).get("epoch_s") or [None] for k in ("fast", "standard"))

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    note = (f"top-1 {num(acc.get('before'))} -> pruned {num(acc.get('pruned'))} -> retrained "
            f"{num(acc.get('retrained'))}; epochs {sizing.get('baseline_epochs', 'n/a')}+"
            f"{sizing.get('retrain_epochs', 'n/a')}; epoch s fast {num(fast[-1])} vs standard {num(std[-1])}")
    return note, targets


PARSERS: dict[str, Callable[[str], tuple[str, list[Target]]]] = {
    "env": env_figures, "cuda_tests": pytest_figures, "cuda_smoke": smoke_figures, "throughput": throughput_figures,
    "masked_step": masked_figures, "pruned_latency": latency_figures,
}


def summary(out: Path) -> str:
    lines = ["# GPU check", "", "| step | status | seconds | key figures |", "|---|---|---|---|"]
    targets: list[Target] = []
    for row in read_steps(out):
        log = out / row.get("log", "")
        text = log.read_text(errors="replace") if log.is_file() else ""
        if row["step"] == "headline":
            note, found = headline_figures(out)
        elif row["step"] in PARSERS:
            note, found = PARSERS[row["step"]](text)
        else:
            note, found = "", []
        targets += found
        lines.append(f"| {row['step']} | {row['status']} | {row['seconds']} | {note.replace('|', '/')} |")
    lines += ["", "## Targets", "", "| target | value | limit | verdict |", "|---|---|---|---|"]
    lines += [f"| {t.what} | {'n/a' if t.value is None else f'{t.value:.3f}'} | {t.limit} | {t.verdict} |"
              for t in targets]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python bench/gpu_check_report.py OUT", file=sys.stderr)
        return 2
    out = Path(argv[0])
    text = summary(out)
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
