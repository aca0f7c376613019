"""Reliability diagrams drawn from a binned calibration state (no pass over the data), and the penultimate layer's
projection onto the plane of three class templates; needs the ``plot`` extra."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from ls_lightning.metrics.calibration import BinStats
from ls_lightning.metrics.penultimate import template_classes_arg_validation

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ls_lightning.metrics.calibration import _TopLabelBinnedMetric

    StatsLike = BinStats | _TopLabelBinnedMetric

# Light, opaque gap fills so that an under-confident gap drawn over the accuracy bar keeps its own colour.
_OVER = ("#f4b6b6", "#c0392b")  # over-confident gap: fill, hatch/edge; hatched "//"
_UNDER = ("#b9e4b2", "#2e8b3a")  # under-confident gap; hatched "\\"
_ACC = "#1f77b4"
# The three classes of a penultimate-layer projection (colour-blind safe: Okabe and Ito's palette).
_CLASS_COLOURS = ("#0072b2", "#e69f00", "#009e73")


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "Reliability diagrams need matplotlib; install it with `pip install 'ls-lightning[plot]'`"
        ) from err


def _as_stats(stats_or_metric: StatsLike) -> BinStats:
    """The per-bin sums on CPU; a metric gives its current (local, or already synced) state."""
    if isinstance(stats_or_metric, BinStats):
        return stats_or_metric.cpu()
    if hasattr(stats_or_metric, "bin_stats"):
        return stats_or_metric.bin_stats().cpu()
    raise TypeError(
        f"Expected argument `stats_or_metric` to be a BinStats or a binned calibration metric, "
        f"but got {type(stats_or_metric).__name__}"
    )


def _display_bins(stats: BinStats) -> tuple[Any, Any, Any, Any]:
    """Per-bin (left edges, count, accuracy, confidence) as numpy, with the slot for exactly 1.0 drawn in the
    last bin (it is kept apart only so that the ECE equals torchmetrics')."""
    counts, conf, hit = (torch.cat([t[:-2], t[-2:].sum(0, keepdim=True)]).double() for t in stats)
    safe = counts.clamp(min=1e-300)
    return stats.edges[:-1].numpy(), counts.numpy(), (hit / safe).numpy(), (conf / safe).numpy()


def _summary(stats: BinStats) -> str:
    ece, over = stats.calibration_error("l1").item(), stats.overconfidence().item()
    kind = "over-confident" if over > 0 else "under-confident" if over < 0 else "calibrated on average"
    return f"ECE {ece:.2%} · acc {stats.overall_accuracy().item():.2%} · conf − acc {over:+.2%} ({kind})"


def _new_axes(ax: Axes | None) -> tuple[Axes, Axes]:
    """The diagram axes and a count panel below it; in a given ``ax``, both share that space."""
    if ax is None:
        from matplotlib.figure import Figure

        # A bare Figure (not pyplot) keeps no global state and needs no interactive backend.
        fig = Figure(figsize=(5.2, 6.4), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
        return top, bottom
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    bottom = make_axes_locatable(ax).append_axes("bottom", size="33%", pad=0.35, sharex=ax)
    return ax, bottom


def _draw_gaps(ax: Axes, left: Any, width: float, acc: Any, conf: Any, filled: Any) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ax.bar(left[filled], acc[filled], width, align="edge", color=_ACC, edgecolor="white")
    low, high = acc.clip(max=conf), acc.clip(min=conf)
    for mask, (fill, edge), hatch in ((filled & (conf > acc), _OVER, "//"), (filled & (conf < acc), _UNDER, "\\\\")):
        ax.bar(left[mask], (high - low)[mask], width, bottom=low[mask], align="edge", facecolor=fill,
               edgecolor=edge, hatch=hatch, linewidth=0.8)  # fmt: skip
    centres = left[filled] + width / 2
    ax.plot(centres, acc[filled], "_", color="#0b3d6b", markersize=12, markeredgewidth=2)
    ax.plot(centres, conf[filled], "k_", markersize=12, markeredgewidth=2)
    # Explicit handles: both gap kinds are always explained, even when one does not occur.
    mark: dict[str, Any] = {"linestyle": "", "marker": "_", "markersize": 12, "markeredgewidth": 2}
    handles = [
        Line2D([], [], color="0.4", linestyle="--", label="perfect calibration"),
        Line2D([], [], color="#0b3d6b", label="accuracy", **mark),
        Line2D([], [], color="k", label="mean confidence", **mark),
        Patch(facecolor=_OVER[0], edgecolor=_OVER[1], hatch="//", label="gap: over-confident"),
        Patch(facecolor=_UNDER[0], edgecolor=_UNDER[1], hatch="\\\\", label="gap: under-confident"),
    ]
    ax.legend(handles=handles, loc="upper left", fontsize="x-small", frameon=False)


def _draw_counts(ax: Axes, left: Any, width: float, counts: Any, stats: BinStats) -> None:
    total = max(counts.sum(), 1e-300)
    ax.bar(left, counts / total, width, align="edge", color="0.55", edgecolor="white")
    mean_conf = (stats.conf_sums.sum() / max(stats.total.item(), 1e-300)).item()
    ax.axvline(stats.overall_accuracy().item(), color=_ACC, linestyle="--", linewidth=1.2, label="accuracy")
    ax.axvline(mean_conf, color="k", linestyle=":", linewidth=1.2, label="mean confidence")
    ax.set(xlabel="confidence (top-1 probability)", ylabel="fraction of samples", xlim=(0, 1))
    ax.legend(loc="upper left", fontsize="x-small", frameon=False)


def plot_reliability_diagram(stats_or_metric: StatsLike, *, title: str | None = None, ax: Axes | None = None) -> Figure:
    """Reliability diagram: per-bin accuracy against confidence, the calibration gap shaded, and counts below.

    Drawn from the per-bin sums only. In DDP, pass ``metric.bin_stats(sync=True)`` (called on every rank) to plot
    all processes' samples; a metric passed directly is plotted from its local state.

    Args:
        stats_or_metric: A :class:`~ls_lightning.metrics.BinStats` or a binned calibration metric.
        title: First title line; the second gives ECE, signed over-confidence and accuracy.
        ax: Axes to draw into (split to make room for the count panel); a new figure when ``None``.

    Returns:
        The figure holding the diagram.

    Raises:
        TypeError: When ``stats_or_metric`` is neither.
        ModuleNotFoundError: Without matplotlib.

    Example:
        >>> from ls_lightning.metrics.calibration import BinnedCalibrationError
        >>> metric = BinnedCalibrationError(n_bins=10)
        >>> metric.update(torch.tensor([0.95, 0.85, 0.7, 0.62]), torch.tensor([True, False, True, False]))
        >>> fig = plot_reliability_diagram(metric, title="val")
    """
    _require_matplotlib()
    stats = _as_stats(stats_or_metric)
    left, counts, acc, conf = _display_bins(stats)
    width = 1.0 / stats.n_bins
    top, bottom = _new_axes(ax)
    top.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=1)
    _draw_gaps(top, left, width, acc, conf, counts > 0)
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), aspect="auto")
    top.set_title(_summary(stats) if title is None else f"{title}\n{_summary(stats)}", fontsize="small")
    top.tick_params(labelbottom=False)
    _draw_counts(bottom, left, width, counts, stats)
    return cast("Figure", top.figure)


def plot_reliability_curves(
    curves: Sequence[tuple[str, StatsLike]], *, title: str | None = None, ax: Axes | None = None
) -> Figure:
    """Overlay the reliability curves (accuracy against mean confidence per non-empty bin) of several runs.

    Each bin is a dot whose area grows with its share of the run's samples.

    Args:
        curves: ``(label, stats_or_metric)`` pairs; the legend adds each run's ECE.
        title: Figure title.
        ax: Axes to draw into; a new figure when ``None``.

    Returns:
        The figure holding the plot.

    Raises:
        ValueError: When ``curves`` is empty.

    Example:
        >>> from ls_lightning.metrics.calibration import BinStats
        >>> stats = BinStats(torch.tensor([1.0, 3, 0]), torch.tensor([0.3, 2.4, 0]), torch.tensor([0.0, 2, 0]))
        >>> fig = plot_reliability_curves([("ε=0", stats), ("ε=0.1", stats)])
    """
    if not curves:
        raise ValueError("Expected argument `curves` to hold at least one (label, stats) pair, but got none")
    _require_matplotlib()
    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(5.2, 5.2), layout="constrained").subplots()
    ax.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=1, label="perfect calibration")
    for label, item in curves:
        stats = _as_stats(item)
        _, counts, acc, conf = _display_bins(stats)
        filled = counts > 0
        ece = stats.calibration_error("l1").item()
        (line,) = ax.plot(conf[filled], acc[filled], linewidth=1.0, alpha=0.8, label=f"{label} (ECE {ece:.2%})")
        # Marker area follows the bin's share of samples: a bin of two samples should not catch the eye like the
        # bin that holds most of the data.
        share = counts[filled] / max(counts.sum(), 1e-300)
        ax.scatter(
            conf[filled], acc[filled], s=6 + 240 * share, color=line.get_color(), alpha=0.8, zorder=3, clip_on=False
        )
    ax.set(xlabel="mean confidence in bin", ylabel="accuracy in bin", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="lower right", fontsize="small", frameon=False)
    return cast("Figure", ax.figure)


def plot_penultimate_projection(
    panels: Sequence[tuple[str, Tensor, Tensor]],
    classes: Sequence[int],
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Side-by-side scatter plots of penultimate-layer activations projected onto the plane of three templates.

    Each panel draws the points of the three classes in their own colours, with each class's mean as a large cross
    (Müller, Kornblith and Hinton, 2019, Figure 1: without label smoothing the clusters are broad, with it tight and
    equidistant). The coordinates come from :func:`~ls_lightning.metrics.project_to_template_plane`.

    Args:
        panels: ``(panel title, points, labels)`` triples: (M, 2) coordinates and (M,) class indices among
            ``classes`` (other labels are not drawn). A panel with no point says so.
        classes: The three classes (a, b, c) whose templates span the plane.
        class_names: Legend names of the three classes; ``"class a"`` etc. when ``None``.
        title: Figure title.

    Returns:
        The figure.

    Raises:
        ValueError: When ``panels`` is empty, ``classes`` are not three distinct indices, or ``class_names`` does not
            hold three names.
        ModuleNotFoundError: Without matplotlib.

    Example:
        >>> points, labels = torch.randn(30, 2), torch.arange(30) % 3
        >>> fig = plot_penultimate_projection([("train", points, labels), ("val", points, labels)], (0, 1, 2))
    """
    if not panels:
        raise ValueError("Expected argument `panels` to hold at least one (title, points, labels) triple, but got none")
    chosen = template_classes_arg_validation(classes)
    names = [f"class {c}" for c in chosen] if class_names is None else list(class_names)
    if len(names) != 3:
        raise ValueError(f"Expected argument `class_names` to hold three names, but got {class_names!r}")
    _require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.2 * len(panels), 5.0), 4.6), layout="constrained")
    for ax, (panel_title, points, labels) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        _draw_projection(ax, points.detach().cpu().double(), labels.detach().cpu(), chosen, names)
        ax.set_title(panel_title, fontsize="small")
    if title is not None:
        fig.suptitle(title, fontsize="small", wrap=True)
    return fig


def _draw_projection(ax: Axes, points: Tensor, labels: Tensor, classes: Sequence[int], names: Sequence[str]) -> None:
    drawn = False
    for cls, name, colour in zip(classes, names, _CLASS_COLOURS, strict=True):
        mine = points[labels == cls]
        if not len(mine):
            continue
        drawn = True
        ax.scatter(mine[:, 0].numpy(), mine[:, 1].numpy(), s=6, alpha=0.45, color=colour, linewidths=0, label=name)
        centre = mine.mean(0)
        ax.plot(centre[0].item(), centre[1].item(), "X", color=colour, markersize=11, markeredgecolor="k")
    if drawn:
        ax.legend(loc="best", fontsize="x-small", markerscale=2.5, frameon=False)
        ax.set_aspect("equal", adjustable="datalim")
    else:
        ax.text(0.5, 0.5, "no samples of these classes", ha="center", va="center", transform=ax.transAxes)
        ax.set(xticks=[], yticks=[])
    a, b, c = classes
    ax.set(xlabel=rf"along $w_{{{a}}} - w_{{{c}}}$", ylabel=rf"in the plane of $w_{{{a}}}, w_{{{b}}}, w_{{{c}}}$")


def save_reliability_diagram(
    stats_or_metric: StatsLike, path: str | Path, *, title: str | None = None, dpi: int = 150
) -> Path:
    """Write :func:`plot_reliability_diagram` to ``path`` as PNG with the Agg canvas (no display needed).

    Args:
        stats_or_metric: A :class:`~ls_lightning.metrics.BinStats` or a binned calibration metric.
        path: Output file; parent folders are created.
        title: First title line.
        dpi: Resolution.

    Returns:
        The path written.
    """
    return save_figure(plot_reliability_diagram(stats_or_metric, title=title), path, dpi=dpi)


def save_figure(figure: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Write ``figure`` to ``path`` as PNG with the Agg canvas, creating parent folders; no display is needed.

    Args:
        figure: A matplotlib figure (a bare ``Figure`` or one from pyplot).
        path: Output file.
        dpi: Resolution.

    Returns:
        The path written.
    """
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)  # binds the Agg canvas to this figure only; the global backend is left alone
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=dpi)
    return path


__all__ = [
    "plot_penultimate_projection",
    "plot_reliability_curves",
    "plot_reliability_diagram",
    "save_figure",
    "save_reliability_diagram",
]
