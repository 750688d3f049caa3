"""Small plotting functions that return matplotlib Figures in one shared style."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

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
        fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
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
    from kdhelpers.losses import soft_targets

    z = torch.as_tensor(logits, dtype=torch.float32).reshape(1, -1)
    n = z.shape[-1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"class_names must have {n} entries (got {len(names)})")
    fig, ax = new_figure(width=7, height=3.5)
    width = 0.8 / len(temperatures)
    for i, t in enumerate(temperatures):
        p = soft_targets(z, t)[0].numpy()
        ax.bar(np.arange(n) + (i - (len(temperatures) - 1) / 2) * width, p, width, label=f"T = {t:g}")
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
    runs = history if history and isinstance(next(iter(history.values())), Mapping) else {"": history}
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
