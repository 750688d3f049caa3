"""Plot helpers return Figures with the expected content."""

import pytest
import torch
from matplotlib.figure import Figure

from kdhelpers.losses import soft_targets
from kdhelpers.plots import (
    line_plot,
    seed_curve,
    seed_points,
    temperature_softmax,
    training_curves,
)


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


def test_reliability_diagrams_show_counts_and_sit_side_by_side():
    from kdhelpers.plots import reliability_diagram

    bins = [
        {"low": 0.5, "high": 0.75, "n": 30, "confidence": 0.65, "accuracy": 0.43},
        {"low": 0.75, "high": 1.0, "n": 170, "confidence": 0.95, "accuracy": 0.93},
    ]
    fig = reliability_diagram(bins)
    assert [t.get_text() for t in fig.axes[0].texts] == ["n=30", "n=170"]
    fig = reliability_diagram({"T = 1": bins, "T = 1.6": bins[:1]})
    assert [ax.get_title() for ax in fig.axes] == ["T = 1", "T = 1.6"]
    assert fig.axes[0].get_xlabel().startswith("confidence")


def test_heatmap_colour_range_and_axis_words():
    from kdhelpers.plots import heatmap, scatter_tradeoff

    fig = heatmap(
        [[0.80, 0.81], [0.805, 0.817]], ["0", "0.5"], ["1", "8"], "T", "alpha", vmin=0.7, vmax=0.9
    )
    assert fig.axes[0].images[0].get_clim() == (0.7, 0.9)  # a 1.7-point range stays small
    fig = heatmap([[0.80, 0.817]], ["0"], ["1", "8"], "T", "alpha", colorbar_label="accuracy")
    assert fig.axes[0].images[0].get_clim() == (0.80, 0.817)
    assert fig.axes[1].get_ylabel() == "accuracy"
    fig = scatter_tradeoff(
        [{"name": "t", "ms": 10, "accuracy": 0.8, "size_mb": 90}],
        x="ms",
        xlabel="batch-1 latency (ms)",
        ylabel="test accuracy",
    )
    assert (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()) == (
        "batch-1 latency (ms)",
        "test accuracy",
    )


def test_seed_points_one_row_per_model_and_reference_lines():
    scores = {"a": {0: 1.0, 1: 2.0, 2: 3.0}, "b": {0: 4.0, 1: 5.0}}
    fig = seed_points(scores, "test perplexity", "Students", reference={"teacher": 0.5})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert len(ax.collections) == 2  # one scatter per model
    means = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "-"]
    assert means == pytest.approx([2.0, 4.5])
    with pytest.raises(ValueError, match="b"):
        seed_points({"a": {0: 1.0}, "b": {}}, "x")
    with pytest.raises(ValueError, match="empty"):
        seed_points({}, "x")


def test_seed_curve_mean_line_seed_dots_and_references():
    fig = seed_curve(
        [10, 100], [{0: 0.5, 1: 0.7}, {0: 0.8, 1: 0.9}], "rows", "accuracy", "Curve",
        reference={"teacher": 0.95, "97% of it": 0.92}, logx=True,
    )  # fmt: skip
    ax = fig.axes[0]
    mean_line = next(line for line in ax.lines if line.get_label() == "mean")
    assert list(mean_line.get_ydata()) == pytest.approx([0.6, 0.85])
    assert len(ax.collections) == 2 and ax.get_xscale() == "log"
    assert {line.get_label() for line in ax.lines} >= {"teacher", "97% of it"}
    with pytest.raises(ValueError, match="one dict per x"):
        seed_curve([1, 2], [{0: 1.0}], "x", "y")
    with pytest.raises(ValueError, match="holds no seed"):
        seed_curve([1], [{}], "x", "y")
