"""Checkpoints as safetensors (weights) plus JSON (config and a digest of the weights), written atomically."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdhelpers.paths import (
    UnwritableFolderError,
    ensure_folder,
    make_temp,
    remove_stale_temp,
    unwritable_error,
)

CHECKPOINT_ENV = "KD_CHECKPOINT_DIR"
#: Key of the JSON config that holds the weights digest (removed from the config load_checkpoint returns).
INTEGRITY_KEY = "kd_integrity"
FORMAT_VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted (damaged, unverifiable or mismatched); the message says what to do."""


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """tensor_digest of every tensor stored in a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return tensor_digest({name: fh.get_tensor(name) for name in fh.keys()})


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """The (weights, config) file pair for a checkpoint stem such as checkpoints/teacher."""
    stem = Path(path)
    if stem.suffix in (".safetensors", ".json"):
        stem = stem.with_suffix("")
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_checkpoint(
    model: nn.Module, path: str | Path, config: Mapping[str, Any] | None = None
) -> Path:
    """Save `model`'s weights (safetensors) and `config` plus the weights digest (JSON) atomically;
    returns the weights path."""
    from safetensors.torch import save_model

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (got {type(model).__name__})")
    weights, meta = checkpoint_paths(path)
    folder = ensure_folder(weights.parent, CHECKPOINT_ENV, "checkpoint")
    remove_stale_temp(folder)
    record = {k: v for k, v in (config or {}).items() if k != INTEGRITY_KEY}
    record.setdefault("model_class", type(model).__name__)
    tmp_weights = make_temp(weights, CHECKPOINT_ENV, "checkpoint")
    tmp_meta = None
    try:
        tmp_meta = make_temp(meta, CHECKPOINT_ENV, "checkpoint")
        save_model(model, str(tmp_weights))
        # the digest is taken from the file as written, so it covers exactly the stored tensors
        record[INTEGRITY_KEY] = {
            "format": FORMAT_VERSION,
            "weights": weights.name,
            "tensors_sha256": file_digest(tmp_weights),
        }
        tmp_meta.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
        # weights first: a run killed between the renames leaves new weights with the old digest,
        # which load_checkpoint refuses
        os.replace(tmp_weights, weights)
        os.replace(tmp_meta, meta)
    except UnwritableFolderError:
        raise
    except OSError as exc:
        raise unwritable_error(folder, CHECKPOINT_ENV, "checkpoint", exc) from exc
    finally:
        for tmp in (tmp_weights, tmp_meta):
            if tmp is not None and tmp.exists():
                tmp.unlink()
    return weights


def _read_config(weights: Path, meta: Path, verify: bool) -> dict[str, Any]:
    """The JSON config of a checkpoint (with its integrity record); CheckpointError when unusable."""
    redo = f"Delete {weights.name} and {meta.name} in {weights.parent} and retrain (or save the checkpoint again)."
    if not meta.exists():
        if verify:
            raise CheckpointError(f"{meta} is missing, so {weights} cannot be verified. {redo}")
        return {}
    try:
        config = json.loads(meta.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{meta} is not valid JSON ({exc}): truncated or damaged. {redo}"
        ) from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{meta} holds a {type(config).__name__}, not a JSON object. {redo}")
    return config


def checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The config stored beside a checkpoint's weights (to build the model before loading them);
    CheckpointError when it is missing or damaged."""
    weights, meta = checkpoint_paths(path)
    return _read_config(weights, meta, verify=True)


def load_checkpoint(
    model: nn.Module, path: str | Path, strict: bool = True, verify: bool = True
) -> dict[str, Any]:
    """Load weights saved by save_checkpoint into `model` (in place) once their digest verifies;
    returns the stored config."""
    # CheckpointError when the JSON is missing or invalid, the weights unreadable or their digest
    # differs; files of older versions (no digest) are refused too: verify=False loads a trusted one
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    weights, meta = checkpoint_paths(path)
    if not weights.exists():
        raise FileNotFoundError(f"no checkpoint weights at {weights}")
    redo = f"Delete {weights.name} and {meta.name} in {weights.parent} and retrain (or save the checkpoint again)."
    config = _read_config(weights, meta, verify)
    integrity = config.pop(INTEGRITY_KEY, None)
    expected = config.get("model_class")
    if expected and expected != type(model).__name__:
        raise ValueError(
            f"checkpoint {weights} holds a {expected}, but model is a {type(model).__name__}"
        )
    if verify:
        stored = integrity.get("tensors_sha256") if isinstance(integrity, dict) else None
        if not isinstance(stored, str):
            raise CheckpointError(
                f"{meta} records no digest of the weights (saved by an older kdhelpers), so {weights} "
                f"cannot be verified. {redo} If you trust the file, load it once with verify=False "
                "and save it again with save_checkpoint."
            )
        try:
            actual = file_digest(weights)
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"{weights} cannot be read ({exc}): truncated or damaged. {redo}"
            ) from exc
        if actual != stored:
            raise CheckpointError(
                f"the weights in {weights} do not match the digest stored in {meta} (stored "
                f"{stored[:16]}..., computed {actual[:16]}...): the file was changed or damaged after "
                f"saving, or the two files come from different checkpoints. {redo}"
            )
    try:
        load_model(model, str(weights), strict=strict)
    except SafetensorError as exc:
        raise CheckpointError(
            f"{weights} cannot be read ({exc}): truncated or damaged. {redo}"
        ) from exc
    return config
