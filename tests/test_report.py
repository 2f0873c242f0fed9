"""``python -m utils.report``: the comparison table and plots of real run directories.

The runs are made by the real entry scripts on a tiny CIFAR-10 (two short trainings, a weight sweep with fine-tuning
and a filter-pruning run of the first training's model), two at a time, once for the module. Every number the tests
expect is read here from the runs' own results.json and metrics.jsonl, so 40 training and 20 test images do: on the
1,797 digits the four runs took 40 s, spent on images that no assertion looks at.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from test_data import write_cifar
from test_runner import PRUNER, TRAINER, Run, cifar, run_script, succeeded, write_config

from utils.app.cli import run_main
from utils.core.errors import UserError
from utils.report.compare import _labels, comparison_table, config_rows, flatten, main, read_run, write_report

REPO = Path(__file__).resolve().parents[1]
RATIOS = [0.5, 0.9]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"a", "b"}``: one-epoch trainings that differ in lr, schedule and weight decay; ``{"weight", "filter"}``: a's
    model weight-pruned at RATIOS with one epoch of fine-tuning, and filter-pruned (half the block-first filters)."""
    work = tmp_path_factory.mktemp("report_runs")
    write_cifar(work / "data", per_batch=8, n_test=20)
    common = {"seed": 0, "data": cifar("data"), "output": {"dir": "runs"}}
    model = {"arch": "resnet20"}
    write_config(work / "a.json", name="train_a", model=model, train={"epochs": 1, "lr": 0.1, "schedule": "cosine"},
                 **common)
    write_config(work / "b.json", name="train_b", model=model, train={"epochs": 1, "lr": 0.05,
                                                                       "weight_decay": 1e-4}, **common)
    checkpoint = {**model, "checkpoint": "runs/train_a/best.pth"}
    write_config(work / "w.json", name="sweep", model=checkpoint, prune={"method": "weight", "percent": RATIOS},
                 retrain={"epochs": 1, "lr": 0.01}, **common)
    write_config(work / "f.json", name="filters", model=checkpoint,
                 prune={"method": "filter", "ratios": [0.5], "latency": False}, **common)

    def launch(jobs: dict[str, tuple[Path, str]]) -> dict[str, Run]:
        with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time: imports and data loading overlap
            futures = {key: pool.submit(run_script, script, "--json", str(work / file), cwd=work)
                       for key, (script, file) in jobs.items()}
            return {key: succeeded(future.result()) for key, future in futures.items()}

    made = launch({"a": (TRAINER, "a.json"), "b": (TRAINER, "b.json")})
    made |= launch({"weight": (PRUNER, "w.json"), "filter": (PRUNER, "f.json")})
    return {key: run.path for key, run in made.items()}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def epochs(run: Path, **match: Any) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "epoch" in r and all(r.get(k) == v for k, v in match.items())
            and ("prune_percent" in r) == ("prune_percent" in match)]


def parse_table(table: str) -> tuple[list[str], dict[str, list[str]]]:
    """The markdown table as (column labels, {row name: cells})."""
    lines = table.splitlines()
    assert lines[1].startswith("|---")
    split = [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in lines]
    columns = split[0][1:]
    rows = {cells[0]: cells[1:] for cells in split[2:]}
    assert all(len(cells) == len(columns) for cells in rows.values())
    assert len(rows) == len(split) - 2  # no row name twice
    return columns, rows


@pytest.fixture(scope="module")
def report(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("report") / "out"
    return write_report([runs[k] for k in ("a", "b", "weight", "filter")], out)


def test_table_shows_the_runs_numbers(runs: dict[str, Path], report: dict[str, Any]) -> None:
    columns, rows = parse_table(report["table"])
    assert columns == ["train_a", "train_b", "sweep", "filters"]
    assert rows["kind"] == ["training", "training", "weight pruning", "filter pruning"]
    col = {key: columns.index(runs[key].name) for key in runs}

    for key, count in (("a", 1), ("b", 1)):
        history = epochs(runs[key])
        assert rows["epochs trained"][col[key]] == str(count) == str(len(history))
        assert rows["best top-1 (%)"][col[key]] == f"{max(r['test_top1'] for r in history):.2f}"
        assert rows["last top-1 (%)"][col[key]] == f"{history[-1]['test_top1']:.2f}"

    sweep = read_json(runs["weight"] / "results.json")
    assert rows["top-1 unpruned (%)"][col["weight"]] == f"{sweep['baseline']['top1']:.2f}"
    for row in sweep["rows"]:
        ratio = row["prune_percent"]
        assert rows[f"top-1 at ratio {ratio:g}, pruned (%)"][col["weight"]] == f"{row['top1']:.2f}"
        tuned = epochs(runs["weight"], prune_percent=ratio)[-1]["test_top1"]
        assert rows[f"top-1 at ratio {ratio:g}, fine-tuned (%)"][col["weight"]] == f"{tuned:.2f}"
        assert rows[f"top-1 at ratio {ratio:g}, pruned (%)"][col["a"]] == "—"  # not a sweep

    filt = read_json(runs["filter"] / "results.json")
    before, after = filt["before"], filt["after"]
    assert after["params"] < before["params"]
    assert rows["parameters"][col["filter"]].startswith(f"{before['params']:,} → {after['params']:,} (")
    assert rows["MACs"][col["filter"]].startswith(f"{before['macs']:,} → {after['macs']:,} (")
    assert rows["size (KB)"][col["filter"]].startswith(f"{before['size_kb']:,.1f} → {after['size_kb']:,.1f}")
    assert rows["top-1 unpruned (%)"][col["filter"]] == f"{before['top1']:.2f}"
    assert rows["top-1 after (%)"][col["filter"]] == f"{after['top1']:.2f}"
    assert rows["top-1 pruned, before retraining (%)"][col["filter"]] == \
        f"{filt['pruned_before_retraining']['top1']:.2f}"


def test_table_rows_are_the_config_keys_that_differ(runs: dict[str, Path], report: dict[str, Any]) -> None:
    _, rows = parse_table(report["table"])
    configs = [read_json(runs[k] / "config.json") for k in ("a", "b", "weight", "filter")]
    assert rows["`train.lr`"] == [str(c["train"]["lr"]) for c in configs] == ["0.1", "0.05", "0.1", "0.1"]
    assert rows["`train.weight_decay`"][:2] == ["0.0005", "0.0001"]
    assert rows["`prune.method`"] == ["weight", "weight", "weight", "filter"]  # the trainings keep the default
    assert rows["`model.checkpoint`"] == ["null", "null", "runs/train_a/best.pth", "runs/train_a/best.pth"]
    assert rows["`prune.percent`"][2] == "[0.5,0.9]"
    for same in ("model.arch", "data.name", "seed", "data.batch_size"):
        assert f"`{same}`" not in rows
        assert f"`{same}`=" in report["summary"]
    assert "`model.arch`=resnet20" in report["summary"] and "`data.name`=cifar10" in report["summary"]
    assert "provenance.created" not in report["table"] + report["summary"]  # differs always, means nothing


def test_report_file_and_plots(runs: dict[str, Path], report: dict[str, Any]) -> None:
    out = report["report"].parent
    expected = {"accuracy_vs_ratio.png", "accuracy_vs_macs.png", "sparsity_sweep.png", "widths_filters.png",
                "training_curves.png"}
    assert {p.name for p in report["plots"]} == expected
    assert {p.name for p in out.iterdir()} == expected | {"report.md"}  # no temporary files left
    for plot in report["plots"]:
        with Image.open(plot) as image:
            image.verify()
        with Image.open(plot) as image:
            assert image.format == "PNG" and image.size[0] >= 900
    text = report["report"].read_text()
    assert report["table"] in text and report["summary"] in text
    assert all(f"({name})" in text for name in expected)  # embedded as images


def test_cli_prints_the_table_and_writes_the_report(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "-m", "utils.report", str(runs["a"]), str(runs["b"]), "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("|  | train_a | train_b |")
    assert (out / "report.md").is_file() and (out / "training_curves.png").is_file()
    assert not (out / "accuracy_vs_ratio.png").exists()  # no sweep among these runs


def test_bad_input_is_one_line_and_exit_2(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        run_main(lambda: main([str(runs["a"]), str(tmp_path / "missing"), "--out", str(tmp_path / "never")]))
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"error: {tmp_path / 'missing'} does not exist; pass run directories")
    assert not (tmp_path / "never").exists()


def test_bad_run_directories_are_one_clear_error(runs: dict[str, Path], tmp_path: Path) -> None:
    not_a_run = tmp_path / "folder"
    not_a_run.mkdir()
    (tmp_path / "file.txt").write_text("x")
    no_results = tmp_path / "no_results"
    no_results.mkdir()
    shutil.copy(runs["a"] / "config.json", no_results)
    interrupted = tmp_path / "interrupted_sweep"
    interrupted.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(runs["weight"] / name, interrupted)
    broken = tmp_path / "broken"
    shutil.copytree(runs["filter"], broken)
    (broken / "results.json").write_text('{"method": "filter", ')
    cases = {not_a_run: "not a run directory (no config.json)", tmp_path / "file.txt": "is a file, not a folder",
             no_results: "no results: no results.json", interrupted: "stopped before writing results.json",
             broken: "results.json: not valid JSON"}
    for path, message in cases.items():
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            main([str(runs["a"]), str(path), "--out", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()


def test_a_run_cut_short_keeps_its_finished_epochs(runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "cut"
    run.mkdir()
    shutil.copy(runs["a"] / "config.json", run)
    first = (runs["a"] / "metrics.jsonl").read_text().splitlines()[0]
    (run / "metrics.jsonl").write_text(first + "\n" + first.replace('"epoch": 0', '"epoch": 1')[:40])  # cut short
    assert [e["epoch"] for e in read_run(run).epochs()] == [0]


def test_sensitivity_runs_show_their_sensitive_layers(runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "sens"
    run.mkdir()
    config = read_json(runs["filter"] / "config.json")
    config["prune"]["method"] = "sensitivity"
    (run / "config.json").write_text(json.dumps(config))
    curves = {"conv2": {"filters": 16, "kept": [8], "top1": [40.0], "top5": [90.0]}}
    (run / "sensitivity.json").write_text(json.dumps({  # the fields run_sensitivity writes
        "baseline": {"top1": 51.25, "top5": 95.0, "loss": 1.0}, "ratios": [0.5], "layers": curves, "tolerance": 1.0,
        "checked_at": 0.5, "sensitive": ["conv2", "conv20"], "provenance": config["provenance"]}))
    result = write_report([runs["filter"], run], tmp_path / "out")
    _, rows = parse_table(result["table"])
    assert rows["kind"] == ["filter pruning", "sensitivity"]
    assert rows["`prune.method`"] == ["filter", "sensitivity"]
    assert rows["sensitive layers"] == ["—", "conv2, conv20"]
    assert rows["top-1 unpruned (%)"][1] == "51.25"


def test_config_comparison_details() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "_comment": "x", "e": {}}) == {"a.b": 1, "a.c.d": [1, 2],
                                                                                       "e": {}}
    runs = [read_run_like({"name": "x", "train": {"lr": 0.1}, "extra": {"k": 1}}),
            read_run_like({"name": "y", "train": {"lr": 0.1}})]
    rows, same = config_rows(runs)
    assert rows == [("name", ["x", "y"]), ("extra.k", ["1", "—"])]  # a key one run lacks differs
    assert same == {"train.lr": 0.1}
    table, summary = comparison_table(runs)
    assert summary == "Same in all runs (1 config keys): `train.lr`=0.1"
    assert "| `extra.k` | 1 | — |" in table
    assert _labels([Path("/x/a/run"), Path("/x/b/run")]) == ["a/run", "b/run"]
    assert _labels([Path("/x/run"), Path("/x/run")]) == ["run (1)", "run (2)"]


def read_run_like(config: dict[str, Any]) -> Any:
    """A training run with ``config`` and one epoch, not read from disk (for the table's config rows only)."""
    from utils.report.compare import Run as ReportRun

    record = {"epoch": 0, "test_top1": 50.0}
    return ReportRun(path=Path(config["name"]), kind="training", config=config, results=None, metrics=[record],
                     label=config["name"])
