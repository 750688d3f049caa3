"""Small plotting functions that return matplotlib Figures in one shared style."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kdhelpers.losses import soft_targets

STYLE = {
    "figure.dpi": 100,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
}
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"]


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.5) -> tuple:
    """A Figure and axes in the course style (use this for any custom plot)."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False
        )
        for ax in axes.flat:
            ax.set_prop_cycle(color=PALETTE)
            ax.spines[["top", "right"]].set_visible(False)
            ax.grid(True, alpha=0.3)
    plt.close(fig)  # notebooks display the returned Figure explicitly; no double rendering
    return fig, (axes[0, 0] if axes.size == 1 else axes.ravel())


def temperature_softmax(
    logits: torch.Tensor | Sequence[float],
    temperatures: Sequence[float] = (1.0, 2.0, 5.0, 10.0),
    class_names: Sequence[str] | None = None,
    title: str = "Soft targets at several temperatures",
) -> Figure:
    """Bar chart of softmax(logits / T) for each temperature T."""

    z = torch.as_tensor(logits, dtype=torch.float32).reshape(1, -1)
    n = z.shape[-1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"class_names must have {n} entries (got {len(names)})")
    fig, ax = new_figure(width=7, height=3.5)
    width = 0.8 / len(temperatures)
    for i, t in enumerate(temperatures):
        p = soft_targets(z, t)[0].numpy()
        ax.bar(
            np.arange(n) + (i - (len(temperatures) - 1) / 2) * width, p, width, label=f"T = {t:g}"
        )
    ax.set_xticks(np.arange(n), names)
    ax.set_ylabel("probability")
    ax.set_xlabel("class")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def training_curves(
    history: Mapping[str, Sequence[float]] | Mapping[str, Mapping[str, Sequence[float]]],
    keys: Sequence[str] | None = None,
    title: str = "Training curves",
    xlabel: str = "epoch",
) -> Figure:
    """Line plot of one or more metric series; a dict of runs gives one line per run and metric."""
    runs = (
        history if history and isinstance(next(iter(history.values())), Mapping) else {"": history}
    )
    all_keys = keys or sorted({k for run in runs.values() for k in run})
    if not all_keys:
        raise ValueError("history holds no metric series to plot")
    fig, axes = new_figure(ncols=len(all_keys), width=4.5)
    axes = np.atleast_1d(axes)
    for ax, key in zip(axes, all_keys, strict=True):
        for run_name, run in runs.items():
            if key in run:
                ys = list(run[key])
                ax.plot(range(1, len(ys) + 1), ys, marker="o", ms=3, label=run_name or key)
        ax.set_title(key)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(runs) > 1:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def line_plot(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
) -> Figure:
    """One line per named series against a shared x axis."""
    fig, ax = new_figure()
    for name, ys in series.items():
        if len(ys) != len(x):
            raise ValueError(f"series {name!r} has {len(ys)} values but x has {len(x)}")
        ax.plot(x, ys, marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    return fig


def _reliability_axes(ax: Any, bins: Sequence[Mapping[str, float]], title: str) -> None:
    """One reliability diagram on `ax`: accuracy bars per confidence bin, each labelled with its count."""
    rows = [b for b in bins if b["n"]]
    if not rows:
        raise ValueError(f"bins of {title!r} hold no non-empty bin")
    centers = [(b["low"] + b["high"]) / 2 for b in rows]
    widths = [b["high"] - b["low"] for b in rows]
    ax.bar(centers, [b["accuracy"] for b in rows], widths, edgecolor="white", label="accuracy")
    ax.plot([0, 1], [0, 1], ls="--", color="gray", label="perfect calibration")
    ax.plot(
        [b["confidence"] for b in rows],
        [b["accuracy"] for b in rows],
        "o",
        color=PALETTE[1],
        ms=4,
        label="bin's mean confidence",
    )
    for c, b in zip(centers, rows, strict=True):
        ax.annotate(
            f"n={b['n']}",
            (c, b["accuracy"]),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            fontsize=7,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title(title)
    ax.legend(loc="upper left")


def reliability_diagram(
    bins: Sequence[Mapping[str, float]] | Mapping[str, Sequence[Mapping[str, float]]],
    title: str = "Reliability diagram",
) -> Figure:
    """Accuracy vs confidence per bin (metrics.reliability_bins) with each bin's count and the diagonal
    of perfect calibration; a mapping {title: bins} draws the diagrams side by side."""
    panels = dict(bins) if isinstance(bins, Mapping) else {title: bins}
    if not panels:
        raise ValueError("bins is empty")
    fig, axes = new_figure(ncols=len(panels), width=4.5, height=4.2)
    for ax, (name, panel) in zip(np.atleast_1d(axes), panels.items(), strict=True):
        _reliability_axes(ax, panel, name)
    fig.tight_layout()
    return fig


def heatmap(
    values: Sequence[Sequence[float]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    xlabel: str,
    ylabel: str,
    title: str = "",
    fmt: str = "{:.3f}",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar_label: str = "",
) -> Figure:
    """An annotated heat map (rows x columns), e.g. accuracy over alpha x temperature; pass vmin/vmax
    to fix the colour range (else the data's own range fills the whole colour scale)."""
    grid = np.asarray(values, dtype=float)
    if grid.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"values has shape {grid.shape}, labels give {(len(row_labels), len(col_labels))}"
        )
    fig, ax = new_figure(width=1.1 * len(col_labels) + 2.5, height=0.6 * len(row_labels) + 1.8)
    ax.grid(False)
    im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(col_labels)), col_labels)
    ax.set_yticks(range(len(row_labels)), row_labels)
    finite = grid[np.isfinite(grid)]
    low = finite.min() if vmin is None and finite.size else (vmin or 0.0)
    high = finite.max() if vmax is None and finite.size else (vmax or 0.0)
    mid = (low + high) / 2
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(
                j,
                i,
                fmt.format(grid[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="black" if grid[i, j] > mid else "white",
            )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    bar = fig.colorbar(im, ax=ax)
    if colorbar_label:
        bar.set_label(colorbar_label)
    fig.tight_layout()
    return fig


def scatter_tradeoff(
    points: Sequence[Mapping[str, Any]],
    x: str = "latency_ms",
    y: str = "accuracy",
    size: str | None = "size_mb",
    label: str = "name",
    logx: bool = True,
    title: str = "Accuracy vs. latency",
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Figure:
    """Scatter of named models (x vs y, marker area from `size`), each point labelled; axis labels in
    words (xlabel, ylabel) default to the column names."""
    if not points:
        raise ValueError("points is empty")
    fig, ax = new_figure(width=6.5, height=4.5)
    sizes = [float(p[size]) for p in points] if size else [1.0] * len(points)
    top = max(sizes) or 1.0
    for p, s in zip(points, sizes, strict=True):
        ax.scatter(p[x], p[y], s=30 + 600 * s / top, alpha=0.6)
        ax.annotate(
            str(p[label]), (p[x], p[y]), textcoords="offset points", xytext=(6, 4), fontsize=8
        )
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x if xlabel is None else xlabel)
    ax.set_ylabel(y if ylabel is None else ylabel)
    ax.set_title(title + (f" (marker area ~ {size})" if size else ""))
    fig.tight_layout()
    return fig


def seed_points(
    scores: Mapping[str, Mapping[int, float]],
    xlabel: str,
    title: str = "",
    reference: Mapping[str, float] | None = None,
) -> Figure:
    """One row per model: a dot per seed, a bar at the mean; `reference` adds labelled vertical lines."""
    if not scores:
        raise ValueError("scores is empty: give {model name: {seed: score}}")
    empty = [name for name, by_seed in scores.items() if not by_seed]
    if empty:
        raise ValueError(f"scores[{empty[0]!r}] holds no seed")
    names = list(scores)
    fig, ax = new_figure(width=6.5, height=0.9 + 0.45 * len(names))
    for row, name in enumerate(names):
        values = [float(v) for v in scores[name].values()]
        ax.scatter(values, [row] * len(values), s=18, color="tab:blue", alpha=0.7)
        ax.plot([np.mean(values)] * 2, [row - 0.3, row + 0.3], color="black", lw=2)
    for label, value in (reference or {}).items():
        ax.axvline(float(value), color="tab:red", ls="--", lw=1)
        ax.annotate(label, (float(value), len(names) - 0.5), color="tab:red", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title + " (dots: seeds, bar: mean)")
    fig.tight_layout()
    return fig


def seed_curve(
    x: Sequence[float],
    scores: Sequence[Mapping[int, float]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    reference: Mapping[str, float] | None = None,
    logx: bool = False,
) -> Figure:
    """A mean curve over seeds with every seed's point: scores[i] holds {seed: score} at x[i];
    `reference` adds labelled horizontal lines (e.g. the teacher, a target)."""
    if len(x) != len(scores) or not len(x):
        raise ValueError(f"x has {len(x)} values but scores has {len(scores)}: give one dict per x")
    empty = [i for i, by_seed in enumerate(scores) if not by_seed]
    if empty:
        raise ValueError(f"scores[{empty[0]}] holds no seed")
    fig, ax = new_figure(width=6.0, height=4.0)
    for xi, by_seed in zip(x, scores, strict=True):
        values = [float(v) for v in by_seed.values()]
        ax.scatter([xi] * len(values), values, s=14, color="tab:blue", alpha=0.6)
    ax.plot(
        x, [float(np.mean(list(s.values()))) for s in scores], "o-", color="black", label="mean"
    )
    for (label, value), colour in zip(
        (reference or {}).items(), ("tab:red", "tab:green", "tab:orange"), strict=False
    ):
        ax.axhline(float(value), color=colour, ls="--", lw=1, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title + " (dots: seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
