"""``ls-report DIR``: compare the jobs of a Hydra multirun (sweep) directory in a table and a figure.

Reads what the runs wrote (``.hydra/overrides.yaml``, ``metrics.csv``, ``reliability.json``); trains nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ls_lightning.metrics import BinStats

__all__ = [
    "Column",
    "Job",
    "ReportResult",
    "Setting",
    "find_jobs",
    "main",
    "read_job",
    "report",
    "report_figure",
    "summary_table",
]


class Column(NamedTuple):
    """A column of the report: the logged key, its heading, the factor shown (100: percent) and decimals."""

    key: str
    heading: str
    scale: float
    decimals: int


def _columns(stage: str) -> list[Column]:
    return [
        Column(f"{stage}/acc", f"{stage} acc (%)", 100.0, 2),
        Column(f"{stage}/ece", f"{stage} ECE (%)", 100.0, 2),
        Column(f"{stage}/h_pq", f"{stage} H(p,q)", 1.0, 4),
        Column(f"{stage}/overconfidence", f"{stage} conf − acc (%)", 100.0, 2),
    ]


COLUMNS: tuple[Column, ...] = (*_columns("val"), *_columns("test"))
# shown only when some job logged them (calibration.temperature_scaling=true; perplexity: language models)
OPTIONAL_COLUMNS: tuple[Column, ...] = (
    Column("val/temperature", "val T", 1.0, 3),
    Column("val/ece_ts", "val ECE after T (%)", 100.0, 2),
    Column("val/perplexity", "val perplexity", 1.0, 2),
    Column("test/perplexity", "test perplexity", 1.0, 2),
)
# a job without these final values did not finish
REQUIRED = ("val/acc", "test/acc")
SEED_KEY = "seed"


@dataclass
class Job:
    """One job of a sweep: its directory, overrides, final metrics and the per-bin sums of its final validation."""

    path: Path
    overrides: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    curve: BinStats | None = None
    error: str | None = None  # why the job counts as failed

    @property
    def setting(self) -> tuple[str, ...]:
        """The overrides that define the job's setting: all but the seed."""
        return tuple(o for o in self.overrides if _override_key(o) != SEED_KEY)


@dataclass
class Setting:
    """Jobs that differ only in their seed, with a short label for tables and legends."""

    label: str
    jobs: list[Job]

    def values(self, key: str) -> list[float]:
        return [job.metrics[key] for job in self.jobs if key in job.metrics]

    def pooled_curve(self) -> BinStats | None:
        """Per-bin sums of all seeds' final validations (one reliability curve per setting)."""
        from ls_lightning.metrics import BinStats

        curves = [job.curve for job in self.jobs if job.curve is not None]
        if not curves or len({c.counts.numel() for c in curves}) != 1:
            return None
        return BinStats(*(sum(parts) for parts in zip(*curves, strict=True)))


def _override_key(override: str) -> str:
    """The config key of a Hydra override (``+seed=1`` -> ``seed``, ``label_smoothing/schedule=none`` -> its group)."""
    return override.split("=", 1)[0].lstrip("+~")


# ----------------------------------------------------------------------------------------------------------------
# Reading a sweep
# ----------------------------------------------------------------------------------------------------------------


def find_jobs(root: Path) -> list[Path]:
    """The job directories under ``root``: those holding ``.hydra/overrides.yaml``, in job-number order.

    ``root`` itself counts when it is a single run's directory.
    """
    found = {p.parent.parent for p in root.rglob("overrides.yaml") if p.parent.name == ".hydra"}

    def order(path: Path) -> tuple[int, int, str]:
        return (0, int(path.name), str(path)) if path.name.isdigit() else (1, 0, str(path))

    return sorted(found, key=order)


def _read_overrides(path: Path) -> list[str]:
    from omegaconf import ListConfig, OmegaConf

    loaded = OmegaConf.load(path / ".hydra" / "overrides.yaml")
    return [str(o) for o in loaded] if isinstance(loaded, ListConfig) else []


def _last_values(csv_path: Path, keys: Sequence[str]) -> dict[str, float]:
    """Last non-empty value of each of ``keys`` in a Lightning ``metrics.csv`` (the final epoch value)."""
    values: dict[str, float] = {}
    with open(csv_path, newline="") as file:
        for row in csv.DictReader(file):
            for key in keys:
                if row.get(key) not in (None, ""):
                    values[key] = float(row[key])
    return values


def _read_curve(path: Path) -> BinStats | None:
    from ls_lightning.diagrams import RELIABILITY_JSON, bin_stats_from_dict

    found = sorted(path.rglob(RELIABILITY_JSON))
    if not found:
        return None
    try:
        return bin_stats_from_dict(json.loads(found[0].read_text()))
    except (ValueError, OSError):
        return None  # a half-written file of a killed job: the table does not need it


def read_job(path: Path) -> Job:
    """Read one job directory; a job that did not finish is returned with ``error`` set, not raised."""
    job = Job(path, _read_overrides(path))
    found = sorted(path.rglob("metrics.csv"), key=lambda p: (len(p.parts), str(p)))
    if not found:
        job.error = "no metrics.csv"
        return job
    job.metrics = _last_values(found[0], [c.key for c in (*COLUMNS, *OPTIONAL_COLUMNS)])
    missing = [key for key in REQUIRED if key not in job.metrics]
    if missing:
        job.error = f"no final {', '.join(missing)} in {found[0].relative_to(path)}"
    job.curve = _read_curve(path)
    return job


def _settings(jobs: Sequence[Job]) -> tuple[list[Setting], list[str]]:
    """Group finished jobs by setting (in sweep order); also return the overrides common to every job."""
    common = [o for o in jobs[0].overrides if all(o in job.overrides for job in jobs)] if jobs else []
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.setting, []).append(job)
    labels = _short_labels([[o for o in key if o not in common] for key in groups])
    return [Setting(label, group) for label, group in zip(labels, groups.values(), strict=True)], common


def _short_labels(varying: list[list[str]]) -> list[str]:
    """``schedule=none`` for ``label_smoothing/schedule=none`` where the short labels stay distinct."""

    def short(override: str) -> str:
        key, _, value = override.partition("=")
        return f"{key.replace('/', '.').rsplit('.', 1)[-1]}={value}"

    full = [", ".join(v) or "(no override)" for v in varying]
    shortened = [", ".join(short(o) for o in v) or "(no override)" for v in varying]
    return shortened if len(set(shortened)) == len(set(full)) else full


# ----------------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------------


def _cell(values: Sequence[float], column: Column) -> str:
    """``mean ± std`` (sample standard deviation over seeds) in the column's unit; ``n/a`` without values."""
    if not values:
        return "n/a"
    scaled = [v * column.scale for v in values]
    mean = f"{statistics.fmean(scaled):.{column.decimals}f}"
    return mean if len(scaled) < 2 else f"{mean} ± {statistics.stdev(scaled):.{column.decimals}f}"


def _columns_of(jobs: Sequence[Job]) -> list[Column]:
    """The main columns, and the optional ones that some job logged."""
    return [*COLUMNS, *(c for c in OPTIONAL_COLUMNS if any(c.key in job.metrics for job in jobs))]


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def summary_table(settings: Sequence[Setting], columns: Sequence[Column]) -> str:
    """The markdown table of the report: one row per setting, ``mean ± std`` over its seeds."""
    rows = [[s.label, str(len(s.jobs)), *(_cell(s.values(c.key), c) for c in columns)] for s in settings]
    return _markdown(["setting", "seeds", *(c.heading for c in columns)], rows)


def _jobs_table(jobs: Sequence[Job], root: Path, columns: Sequence[Column]) -> str:
    rows = [
        [str(job.path.relative_to(root)), " ".join(job.overrides), *(_cell(_one(job, c.key), c) for c in columns)]
        for job in jobs
    ]
    return _markdown(["job", "overrides", *(c.heading for c in columns)], rows)


def _one(job: Job, key: str) -> list[float]:
    return [job.metrics[key]] if key in job.metrics else []


def _write_csv(path: Path, jobs: Sequence[Job], root: Path, columns: Sequence[Column]) -> None:
    """One row per job, raw values (fractions, not percent), failed jobs included with their reason."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["job", "status", "setting", "seed", "overrides", *(c.key for c in columns)])
        for job in jobs:
            seed = next((o.split("=", 1)[1] for o in job.overrides if _override_key(o) == SEED_KEY), "")
            status = "ok" if job.error is None else f"failed: {job.error}"
            row = [str(job.path.relative_to(root)), status, " ".join(job.setting), seed, " ".join(job.overrides)]
            writer.writerow(row + [repr(job.metrics[c.key]) if c.key in job.metrics else "" for c in columns])


def _markdown_report(
    root: Path, jobs: Sequence[Job], settings: Sequence[Setting], common: Sequence[str], with_figure: bool
) -> str:
    columns = _columns_of(jobs)
    finished = [job for job in jobs if job.error is None]
    parts = [
        f"# Sweep report: {root}",
        f"{len(finished)} of {len(jobs)} jobs finished; overrides common to all jobs: "
        + (", ".join(f"`{o}`" for o in common) or "none")
        + ". Final validation (end of fit) and test values; mean ± sample standard deviation over seeds. "
        "conf − acc is the signed over-confidence (negative: under-confident).",
        summary_table(settings, columns),
        *(["![ECE, accuracy and reliability curves per setting](report.png)"] if with_figure else []),
        "## Jobs",
        _jobs_table(finished, root, columns),
    ]
    failed = [job for job in jobs if job.error is not None]
    if failed:
        parts += ["## Failed jobs", *(f"- {job.path.relative_to(root)} ({' '.join(job.overrides)}): {job.error}"
                                      for job in failed)]  # fmt: skip
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Figure
# ----------------------------------------------------------------------------------------------------------------


def _bars(ax: Axes, settings: Sequence[Setting], key: str, title: str) -> None:
    """Val and test bars of ``key`` (percent) per setting, with the standard deviation over seeds as error bars."""
    import numpy as np

    x = np.arange(len(settings))
    for offset, stage, colour in ((-0.2, "val", "#1f77b4"), (0.2, "test", "#ff7f0e")):
        values = [[v * 100 for v in s.values(f"{stage}/{key}")] for s in settings]
        means = [statistics.fmean(v) if v else math.nan for v in values]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        ax.bar(x + offset, means, 0.4, yerr=stds, capsize=3, color=colour, label=stage)
    ax.set_xticks(x, [s.label for s in settings], rotation=30, ha="right", fontsize="small")
    ax.set(title=title, ylabel="%")
    ax.legend(fontsize="small", frameon=False)


def report_figure(settings: Sequence[Setting]) -> Figure:
    """ECE and accuracy per setting (bars, val and test) and the pooled reliability curves of the final validations."""
    from matplotlib.figure import Figure

    from ls_lightning.plotting import plot_reliability_curves

    figure = Figure(figsize=(15, 5), layout="constrained")
    ece_ax, acc_ax, curve_ax = figure.subplots(1, 3)
    _bars(ece_ax, settings, "ece", "ECE (lower is better)")
    _bars(acc_ax, settings, "acc", "accuracy")
    lows = [min(s.values("val/acc") + s.values("test/acc")) * 100 for s in settings if s.values("val/acc")]
    acc_ax.set_ylim(max(0.0, min(lows, default=0.0) - 5), 100)
    curves = [(s.label, c) for s in settings if (c := s.pooled_curve()) is not None]
    if curves:
        plot_reliability_curves(curves, title="final validation, seeds pooled (dot area ∝ samples)", ax=curve_ax)
    else:
        curve_ax.set_axis_off()
        curve_ax.text(0.5, 0.5, "no reliability.json\n(run with calibration.diagrams=true)", ha="center")
    return figure


# ----------------------------------------------------------------------------------------------------------------
# Command
# ----------------------------------------------------------------------------------------------------------------


class ReportResult(NamedTuple):
    """What :func:`report` found and wrote."""

    jobs: list[Job]
    settings: list[Setting]
    table: str
    written: list[Path]


def report(root: str | Path, *, figure: bool = True) -> ReportResult:
    """Write ``report.md``, ``report.csv`` and (with matplotlib) ``report.png`` into the sweep directory ``root``.

    Args:
        root: A multirun directory (or a single run's directory).
        figure: Draw ``report.png``; skipped, with a warning, when matplotlib is missing.

    Returns:
        The jobs read, the settings (jobs grouped over seeds), the markdown summary table and the files written.

    Raises:
        FileNotFoundError: When ``root`` is not a directory or holds no job (no ``.hydra/overrides.yaml``).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Expected argument `DIR` to be a directory, but got {str(root)!r}")
    jobs = [read_job(path) for path in find_jobs(root)]
    if not jobs:
        raise FileNotFoundError(f"no job found in {root}: expected job directories holding .hydra/overrides.yaml")
    finished = [job for job in jobs if job.error is None]
    settings, common = _settings(finished)
    columns = _columns_of(jobs)
    written = [root / "report.md", root / "report.csv"]
    if figure and settings and _has_matplotlib():
        from ls_lightning.plotting import save_figure

        written.append(save_figure(report_figure(settings), root / "report.png", dpi=110))
    elif figure and settings:
        print("ls-report: warning: report.png needs matplotlib: pip install 'ls-lightning[plot]'", file=sys.stderr)
    (root / "report.md").write_text(_markdown_report(root, jobs, settings, common, len(written) > 2))
    _write_csv(root / "report.csv", jobs, root, columns)
    return ReportResult(jobs, settings, summary_table(settings, columns), written)


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ls-report",
        description="Compare the jobs of an ls-train sweep (-m): one row per setting (seeds grouped into mean ± std) "
        "with final val/test accuracy, ECE, H(p,q) and over-confidence. Writes report.md, report.csv and report.png "
        "into DIR and prints the table.",
        epilog="Exit status: 0 all jobs finished, 1 some jobs failed (listed in the report), 2 no job found.",
    )
    parser.add_argument("dir", metavar="DIR", type=Path, help="the sweep directory, e.g. multirun/train/<date>/<time>")
    parser.add_argument("--no-figure", action="store_true", help="do not draw report.png")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ls-report``; returns the exit status (also raised as ``SystemExit`` by the console script)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result = report(args.dir, figure=not args.no_figure)
    except FileNotFoundError as error:
        parser.error(str(error))  # exits 2 with "ls-report: error: ..."
    print(result.table)
    failed = [job for job in result.jobs if job.error is not None]
    for job in failed:
        print(f"failed: {job.path} ({' '.join(job.overrides)}): {job.error}")
    print("written: " + ", ".join(str(p) for p in result.written))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
