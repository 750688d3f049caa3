"""Checkpoints as safetensors (weights) plus JSON (config), written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn


def _atomic_write(target: Path, write: Any) -> None:
    """Call write(tmp_path) on a temporary file beside `target`, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """The (weights, config) file pair for a checkpoint stem such as checkpoints/teacher."""
    stem = Path(path)
    if stem.suffix in (".safetensors", ".json"):
        stem = stem.with_suffix("")
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_checkpoint(model: nn.Module, path: str | Path, config: Mapping[str, Any] | None = None) -> Path:
    """Save `model`'s weights (safetensors) and `config` (JSON) atomically; returns the weights path."""
    from safetensors.torch import save_model

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (got {type(model).__name__})")
    weights, meta = checkpoint_paths(path)
    record = dict(config or {})
    record.setdefault("model_class", type(model).__name__)
    text = json.dumps(record, indent=2, default=str)
    _atomic_write(weights, lambda tmp: save_model(model, tmp))
    _atomic_write(meta, lambda tmp: Path(tmp).write_text(text))
    return weights


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> dict[str, Any]:
    """Load weights saved by save_checkpoint into `model` (in place); returns the stored config."""
    from safetensors.torch import load_model

    weights, meta = checkpoint_paths(path)
    if not weights.exists():
        raise FileNotFoundError(f"no checkpoint weights at {weights}")
    config = json.loads(meta.read_text()) if meta.exists() else {}
    expected = config.get("model_class")
    if expected and expected != type(model).__name__:
        raise ValueError(f"checkpoint holds a {expected}, but model is a {type(model).__name__}")
    load_model(model, str(weights), strict=strict)
    return config
