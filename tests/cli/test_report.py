"""``ls-report`` on sweep directories fabricated file by file (on a real sweep: tests/e2e/test_sweeps.py)."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from ls_lightning.cli.report import (
    COLUMNS,
    OPTIONAL_COLUMNS,
    RANK_LEGEND,
    Job,
    Setting,
    find_jobs,
    main,
    rank_settings,
    rank_table,
    report,
    report_figure,
)
from ls_lightning.metrics import BinStats

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


# --- ranking ----------------------------------------------------------------------------------------------------


def _setting(label: str, values: dict[str, list[float]]) -> Setting:
    jobs = [Job(Path(f"{label}{i}"), [f"seed={i}"], {k: v[i] for k, v in values.items()}) for i in range(2)]
    return Setting(label, jobs)


def test_ranks_by_the_shown_mean_with_ties_sharing_the_better_rank() -> None:
    settings = [
        # val/acc means 0.900, 0.950, 0.950; val/ece means 0.01231 and 0.01234 (both shown as 1.23), 0.0100;
        # val/overconfidence means 0.05, -0.02, 0.02 (closest to 0: -0.02 and 0.02, tied)
        _setting("a", {"val/acc": [0.89, 0.91], "val/ece": [0.01230, 0.01232], "val/overconfidence": [0.04, 0.06]}),
        _setting("b", {"val/acc": [0.94, 0.96], "val/ece": [0.01232, 0.01236], "val/overconfidence": [-0.03, -0.01]}),
        _setting("c", {"val/acc": [0.95, 0.95], "val/ece": [0.0100, 0.0100], "val/overconfidence": [0.01, 0.03]}),
        _setting("d", {}),  # no value: no rank
    ]
    acc, ece, _, over = (c for c in COLUMNS if c.key.startswith("val/"))
    assert rank_settings(settings, acc) == [3, 1, 1, None]
    assert rank_settings(settings, ece) == [2, 2, 1, None]
    assert rank_settings(settings, over) == [3, 1, 1, None]
    temperature = next(c for c in OPTIONAL_COLUMNS if c.key == "val/temperature")
    assert rank_settings(settings, temperature) == [None] * 4  # not ranked
    lines = rank_table(settings, [acc, temperature, ece]).splitlines()
    assert lines[0] == "| setting | val acc (%) | val ECE (%) |"
    assert lines[2:] == ["| a | 3 | 2 |", "| b | 1 | 2 |", "| c | 1 | 1 |", "| d | – | – |"]


def test_report_prints_and_writes_the_ranks(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main([str(sweep), "--no-figure"])
    out = capsys.readouterr().out
    # constant beats none in every column of FINAL (|−2| < |5| for val conf − acc, |−3| < |6| for test)
    expected = "\n".join(
        [
            "| setting | val acc (%) | val ECE (%) | val H(p,q) | val conf − acc (%) | test acc (%) | test ECE (%) | "
            "test H(p,q) | test conf − acc (%) |",
            "|---|---|---|---|---|---|---|---|---|",
            "| schedule=none | 2 | 2 | 2 | 2 | 2 | 2 | 2 | 2 |",
            "| schedule=constant | 1 | 1 | 1 | 1 | 1 | 1 | 1 | 1 |",
        ]
    )
    assert f"{RANK_LEGEND}\n{expected}\n" in out
    assert expected in (sweep / "report.md").read_text()


# --- launchers' layouts -----------------------------------------------------------------------------------------


def _hydra_yaml(output_dir: Path, number: int) -> None:
    """The part of Hydra's hydra.yaml that the report reads (the job number), as Hydra writes it."""
    (output_dir / "hydra.yaml").write_text(
        f"hydra:\n  job:\n    name: train\n    num: {number}\n    id: '{9000 + number}'\n"
    )


def _schedule_jobs(root: Path, dirs: list[str], output_subdir: str = ".hydra") -> None:
    """Jobs 0..3 (none/constant × seeds 0, 1, as in FINAL) in the directories ``dirs`` (job number order)."""
    for number, (name, ((schedule, seed), (val, test))) in enumerate(zip(dirs, FINAL.items(), strict=True)):
        job = root / name
        (job / output_subdir).mkdir(parents=True)
        overrides = [f"label_smoothing/schedule={schedule}", f"seed={seed}"]
        (job / output_subdir / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        _hydra_yaml(job / output_subdir, number)
        (job / "metrics.csv").write_text("\n".join([HEADER, *_rows(val, test)]) + "\n")


def _first_rows(out: str) -> list[str]:
    return [line.split(" | ")[0] + " | " + line.split(" | ")[2] for line in out.splitlines()[2:4]]


@pytest.mark.parametrize(
    ("dirs", "output_subdir"),
    [
        # joblib and the basic launcher: <sweep>/<hydra.job.num>
        (["0", "1", "2", "3"], ".hydra"),
        # hydra.sweep.subdir=${hydra.job.override_dirname}: nested, and name order is not job order
        (
            [
                "label_smoothing/schedule=none,seed=0",
                "label_smoothing/schedule=none,seed=1",
                "label_smoothing/schedule=constant,seed=0",
                "label_smoothing/schedule=constant,seed=1",
            ],
            ".hydra",
        ),
        # hydra.sweep.subdir=${hydra.job.num}_${hydra.job.id} (submitit's job id) and hydra.output_subdir=hydra_cfg
        (["0_9000", "1_9001", "2_9002", "3_9003"], "hydra_cfg"),
    ],
)
def test_sweeps_of_other_launchers_and_layouts(
    tmp_path: Path, dirs: list[str], output_subdir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "multirun"
    _schedule_jobs(root, dirs, output_subdir)
    # submitit keeps its logs and pickles beside the jobs; an Optuna sweep writes its result there
    submitit = root / ".submitit" / "9000"
    submitit.mkdir(parents=True)
    for name in ("9000_submitted.pkl", "9000_0_result.pkl", "9000_0_log.out", "9000_0_log.err"):
        (submitit / name).write_bytes(b"\x80\x04N.")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    (root / "optimization_results.yaml").write_text("name: optuna\nbest_params: {}\nbest_value: 0.3\n")
    assert find_jobs(root) == [root / d for d in dirs]
    assert main([str(root), "--no-figure"]) == 0
    assert capsys.readouterr().out.startswith(EXPECTED_TABLE + "\n")


def test_job_order_falls_back_to_the_directory_name(tmp_path: Path) -> None:
    for name in ("10", "9", "b", "a"):
        _write_job(tmp_path / name, ["seed=0"], None)
    _hydra_yaml(tmp_path / "b" / ".hydra", 1)  # a job number beats a name
    (tmp_path / "a" / ".hydra" / "hydra.yaml").write_text("hydra: [unclosed\n")  # a half-written file
    assert [p.name for p in find_jobs(tmp_path)] == ["b", "9", "10", "a"]


# --- figure -----------------------------------------------------------------------------------------------------


def test_figure_overlays_curves_and_places_each_job_by_nll_and_ece(sweep: Path) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_hex

    settings = report(sweep, figure=False).settings
    figure = report_figure(settings)
    ece_ax, _, curve_ax, scatter_ax = figure.axes[:4]
    # one point per job and stage, at (H(p,q), 100 · ECE) of FINAL
    points = {
        (to_hex(c.get_facecolor()[0]), tuple(map(float, xy))) for c in scatter_ax.collections for xy in c.get_offsets()
    }
    expected = {
        (to_hex(f"C{i}"), (stage[2], 100 * stage[1]))
        for i, schedule in enumerate(("none", "constant"))
        for (name, _), stages in FINAL.items()
        if name == schedule
        for stage in stages
    }
    assert len(points) == 8
    for colour, (x, y) in expected:
        assert any(c == colour and math.isclose(px, x) and math.isclose(py, y) for c, (px, py) in points)
    # the reliability curves in the same colours, one per setting with a reliability.json
    curve_colours = [to_hex(line.get_color()) for line in curve_ax.get_lines()[1:]]
    assert curve_colours == [to_hex("C0"), to_hex("C1")]
    # ECE bars: val and test means in percent (no val/ece_ts logged in this sweep)
    heights = [round(bar.get_height(), 6) for bar in ece_ax.patches]
    assert heights == [6.0, 3.0, 7.0, 4.0]
