"""Metrics on logits: accuracy, calibration (reliability bins, ECE, temperature fitting)."""

from __future__ import annotations

import torch

from kdhelpers.validate import (
    check_class_labels,
    check_float_tensor,
    check_int,
    check_number,
)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose arg-max over the last dimension equals the label."""
    _check_logits_and_labels(logits, labels)
    return float((logits.argmax(dim=-1) == labels.to(logits.device)).float().mean())


def _check_logits_and_labels(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Finite float logits (n, classes) with n > 0, and int class labels (n,) in range; returns the labels (int64)."""

    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError("logits and labels must be torch.Tensors")
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (n, classes) (got {tuple(logits.shape)})")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},) (got {tuple(labels.shape)})")
    if logits.shape[0] == 0:
        raise ValueError("logits is empty: accuracy of zero examples is undefined")
    check_float_tensor("logits", logits)
    return check_class_labels("labels", labels, logits.shape[1], ref=logits)


def reliability_bins(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 10
) -> list[dict[str, float]]:
    """Per confidence bin (equal width over [0, 1]): count, mean confidence and accuracy."""

    labels = _check_logits_and_labels(logits, labels)
    n_bins = check_int("n_bins", n_bins, 1)
    conf, pred = torch.softmax(logits.float(), -1).max(-1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    rows = []
    for i in range(n_bins):
        sel = (conf > edges[i]) & (conf <= edges[i + 1])
        n = int(sel.sum())
        rows.append(
            {
                "low": float(edges[i]),
                "high": float(edges[i + 1]),
                "n": n,
                "confidence": float(conf[sel].mean()) if n else float("nan"),
                "accuracy": float(correct[sel].mean()) if n else float("nan"),
            }
        )
    return rows


def expected_calibration_error(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 10
) -> float:
    """ECE: the count-weighted mean gap |accuracy - confidence| over equal-width confidence bins."""
    rows = reliability_bins(logits, labels, n_bins)
    total = sum(r["n"] for r in rows)
    return sum(r["n"] / total * abs(r["accuracy"] - r["confidence"]) for r in rows if r["n"])


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, grid: list[float] | None = None
) -> float:
    """The temperature from `grid` (default 0.5 to 5 in steps of 0.05) that minimises cross-entropy on held-out data."""

    labels = _check_logits_and_labels(logits, labels)
    grid = [round(0.5 + 0.05 * i, 2) for i in range(91)] if grid is None else list(grid)
    if not grid:
        raise ValueError("grid is empty: give temperatures > 0 to try")
    grid = [check_number(f"grid[{i}]", t, 0.0, strict_min=True) for i, t in enumerate(grid)]
    losses = [float(torch.nn.functional.cross_entropy(logits.float() / t, labels)) for t in grid]
    return grid[min(range(len(grid)), key=losses.__getitem__)]
