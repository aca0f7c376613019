"""``ls-report DIR``: compare the jobs of a Hydra multirun (sweep) directory in a table, a ranking and a figure.

Reads what the runs wrote (``.hydra/overrides.yaml`` and ``hydra.yaml``, ``metrics.csv``, ``reliability.json``);
trains nothing. Any launcher's layout is read: the basic and joblib launchers' ``<sweep>/<job number>/``, submitit's
extra ``.submitit/`` folder, and job directories named by other ``hydra.sweep.subdir`` patterns (nested ones too).
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
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ls_lightning.metrics.calibration import BinStats

__all__ = [
    "Column",
    "Job",
    "ReportResult",
    "Setting",
    "find_jobs",
    "job_directory_message",
    "main",
    "rank_settings",
    "rank_table",
    "read_job",
    "report",
    "report_figure",
    "summary_table",
]


class Column(NamedTuple):
    """A column of the report: the logged key, its heading, the factor shown (100: percent) and decimals.

    ``better`` says how the ranking orders the column: a ``higher`` or ``lower`` mean, or a mean closer to ``zero``
    (the signed over-confidence); ``None``: not ranked (the temperature).
    """

    key: str
    heading: str
    scale: float
    decimals: int
    better: Literal["higher", "lower", "zero"] | None = None


def _columns(stage: str) -> list[Column]:
    return [
        Column(f"{stage}/acc", f"{stage} acc (%)", 100.0, 2, "higher"),
        Column(f"{stage}/ece", f"{stage} ECE (%)", 100.0, 2, "lower"),
        Column(f"{stage}/h_pq", f"{stage} H(p,q)", 1.0, 4, "lower"),
        Column(f"{stage}/overconfidence", f"{stage} conf − acc (%)", 100.0, 2, "zero"),
    ]


COLUMNS: tuple[Column, ...] = (*_columns("val"), *_columns("test"))
# shown only when some job logged them (calibration.temperature_scaling=true; perplexity: language models)
OPTIONAL_COLUMNS: tuple[Column, ...] = (
    Column("val/temperature", "val T", 1.0, 3),
    Column("val/ece_ts", "val ECE after T (%)", 100.0, 2, "lower"),
    Column("val/perplexity", "val perplexity", 1.0, 2, "lower"),
    Column("test/perplexity", "test perplexity", 1.0, 2, "lower"),
    # the comparisons of label smoothing with its relatives (experiment=relatives)
    Column("test/ece_classwise", "test class-wise ECE (%)", 100.0, 2, "lower"),
    Column("test/entropy", "test entropy", 1.0, 3),
    Column("val/penultimate_within_between", "val within/between", 1.0, 3),
)
# A sweep parameter whose values are separate comparisons (experiment=relatives: regime=digits,noisy_labels): the report
# ranks the settings within each of its values, with a figure each.
GROUP_KEY = "regime"
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

    @property
    def group(self) -> str | None:
        """The value of the job's :data:`GROUP_KEY` override (its comparison), ``None`` without one."""
        return next((o.split("=", 1)[1] for o in self.overrides if _override_key(o) == GROUP_KEY), None)


@dataclass
class Setting:
    """Jobs that differ only in their seed, with a short label for tables and legends."""

    label: str
    jobs: list[Job]

    def values(self, key: str) -> list[float]:
        return [job.metrics[key] for job in self.jobs if key in job.metrics]

    def pooled_curve(self) -> BinStats | None:
        """Per-bin sums of all seeds' final validations (one reliability curve per setting)."""
        from ls_lightning.metrics.calibration import BinStats

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
    """The job directories under ``root``, in job-number order (``hydra.job.num``, else a numeric directory name).

    A job directory holds Hydra's output subdirectory: ``.hydra/overrides.yaml``, or, renamed by
    ``hydra.output_subdir``, an ``overrides.yaml`` beside a ``hydra.yaml``. Job directories may have any name and
    depth (``hydra.sweep.subdir``: the job number by default, ``${hydra.job.override_dirname}``, ...), and the sweep
    may hold other files (submitit's ``.submitit/<job id>/`` logs, an Optuna sweep's ``optimization_results.yaml``).
    ``root`` itself counts when it is a single run's directory.
    """
    found = {p.parent.parent for p in root.rglob("overrides.yaml") if _is_hydra_output(p.parent)}
    return sorted(found, key=lambda path: (_job_number(path), str(path)))


def _is_hydra_output(path: Path) -> bool:
    return path.name == ".hydra" or (path / "hydra.yaml").is_file()


def _hydra_output(job: Path) -> Path:
    """The job's Hydra output subdirectory (``.hydra``, or another name given by ``hydra.output_subdir``)."""
    if (job / ".hydra").is_dir():
        return job / ".hydra"
    return next((p for p in job.iterdir() if (p / "overrides.yaml").is_file() and _is_hydra_output(p)), job / ".hydra")


def _job_number(path: Path) -> int:
    """``hydra.job.num`` from the job's ``hydra.yaml`` (launchers may name directories otherwise), else the name."""
    import yaml  # omegaconf's own dependency
    from omegaconf import OmegaConf

    hydra_yaml = _hydra_output(path) / "hydra.yaml"
    try:
        number = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.job.num") if hydra_yaml.is_file() else None
    except (OSError, ValueError, yaml.YAMLError):  # a half-written file of a killed job
        number = None
    if isinstance(number, int):
        return number
    return int(path.name) if path.name.isdigit() else sys.maxsize


def _read_overrides(path: Path) -> list[str]:
    from omegaconf import ListConfig, OmegaConf

    loaded = OmegaConf.load(_hydra_output(path) / "overrides.yaml")
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
    from ls_lightning.integration import RELIABILITY_JSON
    from ls_lightning.metrics import BinStats

    found = sorted(path.rglob(RELIABILITY_JSON))
    if not found:
        return None
    try:
        return BinStats.from_dict(json.loads(found[0].read_text()))
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


def rank_settings(settings: Sequence[Setting], column: Column) -> list[int | None]:
    """Rank of each setting in ``column``: 1 is the best mean over seeds, and equal means share the better rank.

    Means are compared as the table shows them (in the column's unit, rounded to its decimals), so that two cells that
    read the same rank the same. ``column.better`` orders them: ``higher`` (accuracy), ``lower`` (ECE, H(p,q)) or
    ``zero`` (smallest absolute value: the signed over-confidence).

    Returns:
        One rank per setting (``1, 2, 2, 4``: competition ranking), ``None`` for a setting without a value in the
        column and for every setting of a column that is not ranked (``better=None``).
    """
    if column.better is None:
        return [None] * len(settings)
    shown = [_shown_mean(s.values(column.key), column) for s in settings]
    keys = [None if v is None else -v if column.better == "higher" else abs(v) if column.better == "zero" else v
            for v in shown]  # fmt: skip
    return [None if k is None else 1 + sum(1 for other in keys if other is not None and other < k) for k in keys]


def _shown_mean(values: Sequence[float], column: Column) -> float | None:
    return float(f"{statistics.fmean(values) * column.scale:.{column.decimals}f}") if values else None


def rank_table(settings: Sequence[Setting], columns: Sequence[Column]) -> str:
    """The markdown table of each setting's rank (:func:`rank_settings`) in each ranked column; ``–``: no value."""
    ranked = [c for c in columns if c.better is not None]
    ranks = [rank_settings(settings, c) for c in ranked]
    rows = [[s.label, *("–" if r[i] is None else str(r[i]) for r in ranks)] for i, s in enumerate(settings)]
    return _markdown(["setting", *(c.heading for c in ranked)], rows)


RANK_LEGEND = (
    "Rank of each setting per column (1 = best; equal means as shown share a rank): higher accuracy, lower ECE, "
    "H(p,q) (the NLL), perplexity and ECE after T, conf − acc closest to 0."
)


FIGURE_ALT = "ECE and accuracy per setting, reliability curves, ECE against H(p,q) per job"
PENULTIMATE_ALT = "each setting's penultimate-layer activations projected on the plane of three classes' templates"
_ALT = {"report": FIGURE_ALT, "penultimate": PENULTIMATE_ALT}


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


class Comparison(NamedTuple):
    """The settings compared with each other: all of a sweep's, or those of one value of :data:`GROUP_KEY`."""

    name: str | None  # ``regime=digits``; None: the whole sweep
    settings: list[Setting]
    common: list[str]
    figures: list[str]  # file names of its figures (report.png, penultimate.png), relative to the sweep directory


def _markdown_report(root: Path, jobs: Sequence[Job], comparisons: Sequence[Comparison]) -> str:
    columns = _columns_of(jobs)
    finished = [job for job in jobs if job.error is None]
    parts = [
        f"# Sweep report: {root}",
        f"{len(finished)} of {len(jobs)} jobs finished. Final validation (end of fit) and test values; mean ± sample"
        " standard deviation over seeds. conf − acc is the signed over-confidence (negative: under-confident).",
    ]
    for comparison in comparisons:
        if comparison.name is not None:
            parts.append(f"## {comparison.name}")
        parts += [
            "Overrides common to its jobs: " + (", ".join(f"`{o}`" for o in comparison.common) or "none") + ".",
            summary_table(comparison.settings, columns),
            RANK_LEGEND,
            rank_table(comparison.settings, columns),
            *(f"![{_ALT.get(name.split('_')[0].split('.')[0], FIGURE_ALT)}]({name})" for name in comparison.figures),
        ]
    parts += ["## Jobs", _jobs_table(finished, root, columns)]
    failed = [job for job in jobs if job.error is not None]
    if failed:
        parts += ["## Failed jobs", *(f"- {job.path.relative_to(root)} ({' '.join(job.overrides)}): {job.error}"
                                      for job in failed)]  # fmt: skip
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Figure
# ----------------------------------------------------------------------------------------------------------------


# (key, legend, face colour): greys for the stages, so that colours stay the settings' own in the other panels
_ECE_BARS = (("val/ece", "val", "0.35"), ("test/ece", "test", "0.7"), ("val/ece_ts", "val after T", "white"))
_ACC_BARS = (("val/acc", "val", "0.35"), ("test/acc", "test", "0.7"))


def _bars(ax: Axes, settings: Sequence[Setting], series: Sequence[tuple[str, str, str]], title: str) -> None:
    """Bars of each logged key of ``series`` (percent) per setting, with the standard deviation over seeds."""
    import numpy as np

    x = np.arange(len(settings))
    present = [item for item in series if any(s.values(item[0]) for s in settings)]
    width = 0.8 / max(len(present), 1)
    for i, (key, label, colour) in enumerate(present):
        values = [[v * 100 for v in s.values(key)] for s in settings]
        means = [statistics.fmean(v) if v else math.nan for v in values]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        offset = (i - (len(present) - 1) / 2) * width
        ax.bar(x + offset, means, width, yerr=stds, capsize=3, color=colour, edgecolor="0.2", label=label)
    ax.set_xticks(x, [s.label for s in settings], rotation=30, ha="right", fontsize="small")
    ax.set(title=title, ylabel="%")
    ax.legend(fontsize="small", frameon=False)


def _ece_against_nll(ax: Axes, settings: Sequence[Setting]) -> None:
    """One dot per job and stage: ECE against H(p,q), coloured by setting (val: circles, test: triangles)."""
    for i, setting in enumerate(settings):
        for stage, marker in (("val", "o"), ("test", "^")):
            jobs = [j for j in setting.jobs if f"{stage}/h_pq" in j.metrics and f"{stage}/ece" in j.metrics]
            nll = [j.metrics[f"{stage}/h_pq"] for j in jobs]
            ece = [100 * j.metrics[f"{stage}/ece"] for j in jobs]
            label = setting.label if stage == "val" else None
            ax.scatter(nll, ece, marker=marker, color=f"C{i}", alpha=0.85, edgecolors="0.2", label=label)
    ax.set(xlabel="H(p,q): negative log-likelihood (nats)", ylabel="ECE (%)")
    ax.set_title("each job: val ●, test ▲ (lower left is better)")
    ax.legend(fontsize="small", frameon=False)


def report_figure(settings: Sequence[Setting]) -> Figure:
    """Four panels: ECE (val, test, val after temperature scaling when logged) and accuracy per setting (bars, with
    the standard deviation over seeds), the reliability curves of the settings overlaid (final validations, seeds
    pooled) and ECE against H(p,q) per job. Setting ``i`` has colour ``C{i}`` in the last two."""
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure

    from ls_lightning.metrics.plotting import plot_reliability_curves

    figure = Figure(figsize=(13, 10.5), layout="constrained")
    (ece_ax, acc_ax), (curve_ax, scatter_ax) = figure.subplots(2, 2)
    _bars(ece_ax, settings, _ECE_BARS, "ECE (lower is better)")
    _bars(acc_ax, settings, _ACC_BARS, "accuracy")
    accuracies = [100 * v for s in settings for v in s.values("val/acc") + s.values("test/acc")]
    acc_ax.set_ylim(max(0.0, min(accuracies, default=0.0) - 5), min(100.0, max(accuracies, default=100.0) + 5))
    curves = [(to_hex(f"C{i}"), s.label, c) for i, s in enumerate(settings) if (c := s.pooled_curve()) is not None]
    if curves:
        curve_ax.set_prop_cycle(color=[colour for colour, _, _ in curves])  # each setting's colour, as in the scatter
        title = "reliability: final validation, seeds pooled (dot area ∝ samples)"
        plot_reliability_curves([(label, c) for _, label, c in curves], title=title, ax=curve_ax)
    else:
        curve_ax.set_axis_off()
        curve_ax.text(0.5, 0.5, "no reliability.json\n(run with calibration.diagrams=true)", ha="center")
    _ece_against_nll(scatter_ax, settings)
    return figure


def penultimate_figure(settings: Sequence[Setting]) -> Figure | None:
    """Each setting's penultimate-layer picture side by side (its first seed's final ``penultimate_projection.png``,
    written by :class:`~ls_lightning.integration.PenultimateProjection`); ``None`` when no job drew one."""
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    from ls_lightning.integration import PROJECTION_FILE

    found = [(s.label, p) for s in settings for p in [_first_file(s, PROJECTION_FILE)] if p is not None]
    if not found:
        return None
    columns = 2 if len(found) > 1 else 1
    rows = -(-len(found) // columns)
    figure = Figure(figsize=(9 * columns, 4.6 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).reshape(-1)
    for ax, (label, path) in zip(axes, found, strict=False):
        ax.imshow(imread(path))
        ax.set_title(label)
        ax.set_axis_off()
    for ax in axes[len(found) :]:
        ax.set_axis_off()
    return figure


def _first_file(setting: Setting, name: str) -> Path | None:
    return next((path for job in setting.jobs if (path := job.path / name).is_file()), None)


# ----------------------------------------------------------------------------------------------------------------
# Command
# ----------------------------------------------------------------------------------------------------------------


class ReportResult(NamedTuple):
    """What :func:`report` found and wrote."""

    jobs: list[Job]
    settings: list[Setting]
    table: str
    written: list[Path]
    ranks: str = ""  # the markdown rank table (rank_table)
    sent: tuple[str, ...] = ()  # where report.png also went: the loggers every job used (MLflow, W&B, TensorBoard)


def report(root: str | Path, *, figure: bool = True, loggers: bool = True) -> ReportResult:
    """Write ``report.md``, ``report.csv`` and (with matplotlib) ``report.png`` into the sweep directory ``root``.

    Args:
        root: A multirun directory (or a single run's directory).
        figure: Draw ``report.png``; skipped, with a warning, when matplotlib is missing.
        loggers: Also send the figure, as ``report``, to each MLflow, W&B or TensorBoard logger that every job used,
            in a run named ``ls-report`` (:func:`ls_lightning.cli.loggers.sweep_loggers` says where).

    Returns:
        The jobs read, the settings (jobs grouped over seeds), the markdown summary table, the files written and the
        markdown table of the settings' ranks per column.

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
    columns = _columns_of(jobs)
    comparisons = _comparisons(finished)
    written = [root / "report.md", root / "report.csv"]
    sent: list[str] = []
    drawn = figure and any(c.settings for c in comparisons) and _has_matplotlib()
    if figure and not drawn and any(c.settings for c in comparisons):
        print("ls-report: warning: report.png needs matplotlib: pip install 'ls-lightning[plot]'", file=sys.stderr)
    report_figures = [_draw(root, comparison, written) for comparison in (comparisons if drawn else ())]
    if loggers and len(report_figures) == 1 and report_figures[0] is not None:  # one comparison: its figure
        from ls_lightning.cli.loggers import send_report_figure, sweep_loggers

        sent = send_report_figure(sweep_loggers(root, [job.path for job in jobs]), report_figures[0])
    (root / "report.md").write_text(_markdown_report(root, jobs, comparisons))
    _write_csv(root / "report.csv", jobs, root, columns)
    settings = [setting for comparison in comparisons for setting in comparison.settings]
    table = "\n\n".join(_titled(c, summary_table(c.settings, columns)) for c in comparisons)
    ranks = "\n\n".join(_titled(c, rank_table(c.settings, columns)) for c in comparisons)
    return ReportResult(jobs, settings, table, written, ranks, tuple(sent))


def _comparisons(jobs: Sequence[Job]) -> list[Comparison]:
    """One comparison of all jobs, or one per value of :data:`GROUP_KEY` when the sweep varies it (in sweep order)."""
    groups: dict[str | None, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.group, []).append(job)
    if len(groups) < 2:
        settings, common = _settings(jobs)
        return [Comparison(None, settings, common, [])]
    comparisons = []
    for value, members in groups.items():
        settings, common = _settings(members)
        comparisons.append(Comparison(f"{GROUP_KEY}={value}", settings, common, []))
    return comparisons


def _draw(root: Path, comparison: Comparison, written: list[Path]) -> Figure | None:
    """Save ``report.png`` and ``penultimate.png`` of a comparison (``report_<value>.png``, ... for a group's) and
    append their paths to ``written`` and their names to ``comparison.figures``; return its report figure."""
    from ls_lightning.metrics.plotting import save_figure

    if not comparison.settings:
        return None
    suffix = "" if comparison.name is None else "_" + comparison.name.split("=", 1)[1]
    drawn = report_figure(comparison.settings)
    paths = [save_figure(drawn, root / f"report{suffix}.png", dpi=110)]
    picture = penultimate_figure(comparison.settings)
    if picture is not None:
        paths.append(save_figure(picture, root / f"penultimate{suffix}.png", dpi=110))
    written += paths
    comparison.figures.extend(path.name for path in paths)
    return drawn


def _titled(comparison: Comparison, table: str) -> str:
    return table if comparison.name is None else f"{comparison.name}\n{table}"


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ls-report",
        description="Compare the jobs of an ls-train sweep (-m): one row per setting (seeds grouped into mean ± std) "
        "with final val/test accuracy, ECE, H(p,q) and over-confidence (and, when logged, the ECE after temperature "
        "scaling and perplexity), then each setting's rank per column. Writes report.md, report.csv and report.png "
        "(bars, reliability curves, ECE against H(p,q) per job) into DIR and prints the two tables. Reads the sweeps "
        "of any Hydra launcher (basic, joblib, submitit, ...) and sweeper (basic, optuna, ...).",
        epilog="Exit status: 0 all jobs finished, 1 some jobs failed (listed in the report), 2 no job found.",
    )
    parser.add_argument("dir", metavar="DIR", type=Path, help="the sweep directory, e.g. multirun/train/<date>/<time>")
    parser.add_argument("--no-figure", action="store_true", help="do not draw report.png")
    parser.add_argument(
        "--no-logger",
        action="store_true",
        help="do not send report.png to the MLflow, W&B or TensorBoard logger every job used (a run named ls-report)",
    )
    return parser


def job_directory_message(path: Path) -> str | None:
    """Why ``path`` is no sweep to report on: it is the directory of one job of a sweep (its ``.hydra/hydra.yaml``
    says ``mode: MULTIRUN``, or a ``multirun.yaml`` lies above it). The message names the sweep directory above it,
    the nearest holding ``multirun.yaml``, if there is one. ``None`` for anything else, a single run's directory too.

    Example:
        >>> job_directory_message(Path("no/such/dir")) is None
        True
    """
    if not path.is_dir() or not _is_job_directory(path):
        return None
    sweep = next((p for p in path.resolve().parents if (p / "multirun.yaml").is_file()), None)
    if sweep is None and _hydra_mode(path) != "MULTIRUN":
        return None  # a single run (ls-train without -m): its one-job report is what was asked for
    where = f"pass the sweep directory: ls-report {sweep}" if sweep is not None else "pass the sweep directory"
    return f"{path} is the directory of one job of a sweep; {where}"


def _is_job_directory(path: Path) -> bool:
    """Whether ``path`` itself holds a job's Hydra output subdirectory (``.hydra/overrides.yaml``, or renamed)."""
    return any(p.is_dir() and (p / "overrides.yaml").is_file() and _is_hydra_output(p) for p in path.iterdir())


def _hydra_mode(job: Path) -> str | None:
    """``hydra.mode`` from the job's ``hydra.yaml`` (``RUN`` or ``MULTIRUN``), or ``None`` where it cannot be read."""
    import yaml  # omegaconf's own dependency
    from omegaconf import OmegaConf

    hydra_yaml = _hydra_output(job) / "hydra.yaml"
    try:
        mode = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.mode") if hydra_yaml.is_file() else None
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return str(mode) if mode is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ls-report``; returns the exit status (also raised as ``SystemExit`` by the console script).

    The directory of one job of a sweep is refused (exit status 2, one line naming the sweep directory above it): its
    report would hold one job. A single run's directory is reported on.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    refused = job_directory_message(args.dir)
    if refused is not None:
        parser.exit(2, f"ls-report: error: {refused}\n")
    try:
        result = report(args.dir, figure=not args.no_figure, loggers=not args.no_logger)
    except FileNotFoundError as error:
        parser.error(str(error))  # exits 2 with "ls-report: error: ..."
    print(result.table)
    print(f"\n{RANK_LEGEND}\n{result.ranks}")
    failed = [job for job in result.jobs if job.error is not None]
    for job in failed:
        print(f"failed: {job.path} ({' '.join(job.overrides)}): {job.error}")
    print("written: " + ", ".join(str(p) for p in result.written))
    for where in result.sent:
        print(f"sent report.png to {where}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
