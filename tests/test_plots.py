"""Plot helpers return Figures with the expected content."""

import pytest
import torch
from matplotlib.figure import Figure

from kdhelpers.losses import soft_targets
from kdhelpers.plots import line_plot, temperature_softmax, training_curves


def test_temperature_softmax_bars_match_soft_targets():
    logits = [3.0, 1.0, 0.0]
    fig = temperature_softmax(logits, temperatures=(1.0, 4.0), class_names=["a", "b", "c"])
    assert isinstance(fig, Figure)
    bars = fig.axes[0].patches
    assert len(bars) == 6
    expected = torch.cat([soft_targets(torch.tensor([logits]), t)[0] for t in (1.0, 4.0)])
    heights = torch.tensor([b.get_height() for b in bars], dtype=torch.float32)
    torch.testing.assert_close(heights, expected)
    with pytest.raises(ValueError, match="class_names"):
        temperature_softmax(logits, class_names=["a"])


def test_training_curves_one_panel_per_metric():
    fig = training_curves(
        {"labels": {"loss": [1, 0.5], "acc": [0.5, 0.7]}, "kd": {"loss": [1, 0.4]}}
    )
    assert len(fig.axes) == 2
    assert sum(len(ax.lines) for ax in fig.axes) == 3
    with pytest.raises(ValueError, match="history"):
        training_curves({})


def test_line_plot_checks_lengths():
    fig = line_plot([1, 2, 3], {"a": [1, 2, 3]}, "x", "y", logx=True)
    assert fig.axes[0].get_xscale() == "log"
    with pytest.raises(ValueError, match="series"):
        line_plot([1, 2], {"a": [1]}, "x", "y")


def test_reliability_heatmap_scatter():
    from kdhelpers.plots import heatmap, reliability_diagram, scatter_tradeoff

    bins = [
        {"low": 0.5, "high": 0.75, "n": 3, "confidence": 0.6, "accuracy": 0.5},
        {"low": 0.75, "high": 1.0, "n": 0, "confidence": float("nan"), "accuracy": float("nan")},
    ]
    assert len(reliability_diagram(bins).axes[0].patches) == 1
    with pytest.raises(ValueError, match="bin"):
        reliability_diagram([bins[1]])
    fig = heatmap([[0.1, 0.2], [0.3, 0.4]], ["a", "b"], ["x", "y"], "T", "alpha")
    assert len(fig.axes[0].texts) == 4
    with pytest.raises(ValueError, match="shape"):
        heatmap([[0.1]], ["a", "b"], ["x"], "T", "alpha")
    fig = scatter_tradeoff(
        [
            {"name": "t", "latency_ms": 10, "accuracy": 0.8, "size_mb": 90},
            {"name": "s", "latency_ms": 0.1, "accuracy": 0.78, "size_mb": 2},
        ]
    )
    assert len(fig.axes[0].collections) == 2
