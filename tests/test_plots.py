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
    fig = training_curves({"labels": {"loss": [1, 0.5], "acc": [0.5, 0.7]}, "kd": {"loss": [1, 0.4]}})
    assert len(fig.axes) == 2
    assert sum(len(ax.lines) for ax in fig.axes) == 3
    with pytest.raises(ValueError, match="history"):
        training_curves({})


def test_line_plot_checks_lengths():
    fig = line_plot([1, 2, 3], {"a": [1, 2, 3]}, "x", "y", logx=True)
    assert fig.axes[0].get_xscale() == "log"
    with pytest.raises(ValueError, match="series"):
        line_plot([1, 2], {"a": [1]}, "x", "y")
