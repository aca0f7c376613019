"""``ls-report`` on a sweep directory fabricated file by file, and on a real 2-job sweep run in a subprocess."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ls_lightning.metrics import BinStats
from ls_lightning.report import main, report

BIN = Path(sys.executable).parent
HEADER = (
    "epoch,step,test/acc,test/ece,test/h_pq,test/overconfidence,train/acc,train/loss_epoch,"
    "val/acc,val/ece,val/h_pq,val/overconfidence"
)
# (schedule, seed) -> final (acc, ece, h_pq, overconfidence) of val, then of test
FINAL = {
    ("none", 0): ((0.90, 0.05, 0.3, 0.04), (0.88, 0.06, 0.35, 0.05)),
    ("none", 1): ((0.92, 0.07, 0.5, 0.06), (0.90, 0.08, 0.45, 0.07)),
    ("constant", 0): ((0.95, 0.02, 0.2, -0.01), (0.94, 0.03, 0.25, -0.02)),
    ("constant", 1): ((0.97, 0.04, 0.4, -0.03), (0.96, 0.05, 0.35, -0.04)),
}
# mean ± sample std over the two seeds, by hand: e.g. val acc of none: 91.00 ± |90 - 92| / √2 = 1.41
EXPECTED_TABLE = """\
| setting | seeds | val acc (%) | val ECE (%) | val H(p,q) | val conf − acc (%) | test acc (%) | test ECE (%) | \
test H(p,q) | test conf − acc (%) |
|---|---|---|---|---|---|---|---|---|---|
| schedule=none | 2 | 91.00 ± 1.41 | 6.00 ± 1.41 | 0.4000 ± 0.1414 | 5.00 ± 1.41 | 89.00 ± 1.41 | 7.00 ± 1.41 | \
0.4000 ± 0.0707 | 6.00 ± 1.41 |
| schedule=constant | 2 | 96.00 ± 1.41 | 3.00 ± 1.41 | 0.3000 ± 0.1414 | -2.00 ± 1.41 | 95.00 ± 1.41 | 4.00 ± 1.41 | \
0.3000 ± 0.0707 | -3.00 ± 1.41 |"""


def _write_job(path: Path, overrides: list[str], rows: list[str] | None) -> None:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if rows is not None:
        (path / "metrics.csv").write_text("\n".join([HEADER, *rows]) + "\n")


def _rows(val: tuple[float, ...], test: tuple[float, ...] | None) -> list[str]:
    """Lightning's layout: a row per logged step; epoch 0's values are superseded by epoch 1's (the final ones)."""
    first = ",".join(str(v / 2) for v in val)
    rows = [
        f"0,9,,,,,,,{first}",
        "0,9,,,,,0.5,1.2,,,,",
        f"1,19,,,,,,,{','.join(map(str, val))}",
        "1,19,,,,,0.8,0.9,,,,",
    ]
    if test is not None:
        rows.append(f"2,20,{','.join(map(str, test))},,,,,,")
    return rows


def _curve(correct: list[float]) -> dict[str, list[float]]:
    """reliability.json of two bins."""
    return {"counts": [2.0, 2.0, 0.0], "conf_sums": [0.6, 1.6, 0.0], "correct_sums": correct, "edges": [0, 0.5, 1]}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "train" / "2026-01-01" / "12-00-00"
    common = ["trainer.max_epochs=2"]
    for number, ((schedule, seed), (val, test)) in enumerate(FINAL.items()):
        job = root / str(number)
        _write_job(job, [f"label_smoothing/schedule={schedule}", f"seed={seed}", *common], _rows(val, test))
        (job / "reliability.json").write_text(json.dumps(_curve([1.0, 2.0 - seed, 0.0])))
    _write_job(root / "4", ["label_smoothing/schedule=cosine", "seed=0", *common], None)  # crashed at start
    _write_job(root / "5", ["label_smoothing/schedule=cosine", "seed=1", *common], _rows((0.5,) * 4, None))  # no test
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_table_of_a_fabricated_sweep(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep), "--no-figure"]) == 1  # two jobs failed
    out = capsys.readouterr().out
    assert out.startswith(EXPECTED_TABLE + "\n")
    assert f"failed: {sweep / '4'} (label_smoothing/schedule=cosine seed=0 trainer.max_epochs=2): no metrics.csv" in out
    assert f"failed: {sweep / '5'} " in out and "no final test/acc in metrics.csv" in out
    markdown = (sweep / "report.md").read_text()
    assert EXPECTED_TABLE in markdown and "4 of 6 jobs finished" in markdown and "`trainer.max_epochs=2`" in markdown
    assert not (sweep / "report.png").exists() and "report.png" not in markdown


def test_csv_has_one_row_per_job_with_raw_values(sweep: Path) -> None:
    report(sweep, figure=False)
    with open(sweep / "report.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    assert [r["seed"] for r in rows] == ["0", "1", "0", "1", "0", "1"]
    assert rows[1]["setting"] == "label_smoothing/schedule=none trainer.max_epochs=2"
    assert float(rows[3]["test/overconfidence"]) == -0.04 and float(rows[0]["val/h_pq"]) == 0.3
    assert rows[0]["status"] == "ok" and rows[4]["status"] == "failed: no metrics.csv"
    assert rows[5]["status"].startswith("failed: no final test/acc") and float(rows[5]["val/acc"]) == 0.5


def test_curves_are_pooled_over_seeds_and_drawn(sweep: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.image

    result = report(sweep)
    none = result.settings[0].pooled_curve()
    assert isinstance(none, BinStats)
    torch.testing.assert_close(none.correct_sums, torch.tensor([2.0, 3.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(none.counts, torch.tensor([4.0, 4.0, 0.0], dtype=torch.float64))
    assert sweep / "report.png" in result.written
    image = matplotlib.image.imread(sweep / "report.png")
    assert image.shape[1] > 1000 and image.std() > 0.05


def test_optional_temperature_columns_appear_when_logged(tmp_path: Path) -> None:
    header = "epoch,step,test/acc,val/acc,val/ece_ts,val/temperature"
    job = tmp_path / "0"
    _write_job(job, ["seed=0"], None)
    (job / "metrics.csv").write_text(f"{header}\n0,3,,0.75,0.0125,1.5\n1,3,0.5,,,\n")
    result = report(tmp_path, figure=False)
    assert result.table.splitlines()[0].endswith("| val T | val ECE after T (%) |")
    assert result.table.splitlines()[2] == (
        "| (no override) | 1 | 75.00 | n/a | n/a | n/a | 50.00 | n/a | n/a | n/a | 1.500 | 1.25 |"
    )


def test_no_job_or_no_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for target in (tmp_path, tmp_path / "missing"):
        with pytest.raises(SystemExit) as info:
            main([str(target)])
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"ls-report: error: no job found in {tmp_path}" in err and "to be a directory" in err


def test_labels_stay_distinct_when_short_names_collide(tmp_path: Path) -> None:
    for number, override in enumerate(["model.lr=0.1", "optim.lr=0.1"]):
        job = tmp_path / str(number)
        _write_job(job, [override], _rows((0.9, 0.1, 0.3, 0.0), (0.9, 0.1, 0.3, 0.0)))
    labels = [s.label for s in report(tmp_path, figure=False).settings]
    assert labels == ["model.lr=0.1", "optim.lr=0.1"]


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "PYTHONPATH")}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _last(path: Path, key: str) -> float:
    with open(path, newline="") as file:
        return [float(r[key]) for r in csv.DictReader(file) if r.get(key)][-1]


@pytest.mark.slow
def test_report_over_a_real_two_job_sweep(tmp_path: Path) -> None:
    small = ["data=synthetic", "data.num_train=128", "data.num_val=64", "data.num_test=64", "trainer.max_epochs=1"]
    quiet = ["trainer.accelerator=cpu", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]
    result = _run([str(BIN / "ls-train"), "-m", "label_smoothing/schedule=none,constant", *small, *quiet], tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep,) = {p.parent for p in tmp_path.rglob("multirun.yaml")}
    result = _run([str(BIN / "ls-report"), str(sweep)], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" | ")[0] for line in lines[2:4]] == ["| schedule=none", "| schedule=constant"]
    for number, line in enumerate(lines[2:4]):
        cells = line.strip("| ").split(" | ")
        job_csv = sweep / str(number) / "metrics.csv"
        assert (
            cells[2] == f"{100 * _last(job_csv, 'val/acc'):.2f}"
            and cells[7] == f"{100 * _last(job_csv, 'test/ece'):.2f}"
        )
        assert (sweep / str(number) / "reliability.json").is_file()
    assert {"report.md", "report.csv", "report.png"} <= {p.name for p in sweep.iterdir()}
