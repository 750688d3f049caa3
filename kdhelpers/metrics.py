"""Metrics and the JSON results each notebook writes."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from kdhelpers.paths import results_dir


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose arg-max over the last dimension equals the label."""
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError("logits and labels must be torch.Tensors")
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (n, classes) (got {tuple(logits.shape)})")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},) (got {tuple(labels.shape)})")
    if logits.shape[0] == 0:
        raise ValueError("logits is empty: accuracy of zero examples is undefined")
    return float((logits.argmax(dim=-1) == labels.to(logits.device)).float().mean())


def _plain(value: Any) -> Any:
    """Convert tensors and numpy scalars to JSON-friendly Python values."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def save_results(
    notebook: str,
    metrics: Mapping[str, Any],
    profile: str,
    details: Mapping[str, Any] | None = None,
    folder: Path | None = None,
) -> Path:
    """Write results/<notebook>.json atomically: headline `metrics` (scalars) plus optional `details`."""
    if not metrics:
        raise ValueError("metrics must hold at least one headline figure")
    folder = results_dir() if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "notebook": notebook,
        "profile": profile,
        "date": _dt.date.today().isoformat(),
        "metrics": _plain(dict(metrics)),
        "details": _plain(dict(details or {})),
    }
    target = folder / f"{notebook}.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{notebook}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh, indent=2)
    os.replace(tmp, target)
    return target
