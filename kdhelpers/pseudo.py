"""Teacher inference, the on-disk logit cache, and pseudo-labels from the teacher."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdhelpers.batching import pad_collate
from kdhelpers.checkpoints import tensor_digest
from kdhelpers.device import autocast, get_device
from kdhelpers.losses import soft_targets
from kdhelpers.models import logits_of
from kdhelpers.paths import (
    ensure_folder,
    inside,
    make_temp,
    remove_stale_temp,
    unwritable_error,
)
from kdhelpers.progress import progress_bar
from kdhelpers.validate import check_int


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches of similar lengths (longest first), so padding stays small."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (got {batch_size!r})")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def predict_logits(
    model: nn.Module,
    input_ids: Sequence[Sequence[int]],
    batch_size: int = 64,
    device: torch.device | str | None = None,
    sort_by_length: bool = True,
    pad_id: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Logits for every example, in input order, computed in eval mode without gradients (float32,
    CPU), as an ordinary tensor (not an inference-mode one, which training code could not use)."""
    batch_size = check_int("batch_size", batch_size, 1)
    return _inference_logits(
        model, input_ids, batch_size, device, sort_by_length, pad_id, progress
    ).clone()


@torch.inference_mode()
def _inference_logits(
    model: nn.Module,
    input_ids: Sequence[Sequence[int]],
    batch_size: int,
    device: torch.device | str | None,
    sort_by_length: bool,
    pad_id: int,
    progress: bool,
) -> torch.Tensor:
    """predict_logits' work, under torch.inference_mode (its result is an inference tensor)."""
    if len(input_ids) == 0:
        raise ValueError("input_ids is empty: nothing to predict")
    device = get_device() if device is None else torch.device(device)
    lengths = [len(ids) for ids in input_ids]
    if sort_by_length:
        batches = length_sorted_batches(lengths, batch_size)
    else:
        batches = [
            list(range(i, min(i + batch_size, len(lengths))))
            for i in range(0, len(lengths), batch_size)
        ]
    was_training = model.training
    model.eval().to(device)
    out: torch.Tensor | None = None
    for idx in progress_bar(batches, "teacher inference", enabled=progress):
        feats = [{"input_ids": input_ids[i], "labels": -1, "index": i} for i in idx]
        batch = pad_collate(feats, pad_id)
        if not sort_by_length:  # pad to the longest example overall, as a naive loop would
            width = max(lengths)
            pad = width - batch["input_ids"].shape[1]
            batch["input_ids"] = nn.functional.pad(batch["input_ids"], (0, pad), value=pad_id)
            batch["attention_mask"] = nn.functional.pad(batch["attention_mask"], (0, pad), value=0)
        with autocast(device):
            logits = (
                logits_of(
                    model(
                        input_ids=batch["input_ids"].to(device),
                        attention_mask=batch["attention_mask"].to(device),
                    )
                )
                .float()
                .cpu()
            )
        if out is None:
            out = torch.empty(len(lengths), logits.shape[-1])
        out[torch.as_tensor(idx)] = logits
    model.train(was_training)
    assert out is not None
    return out


# ---------------------------------------------------------------- the logit cache


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's weights (names, dtypes, shapes and values)."""
    return tensor_digest(model.state_dict())


def data_fingerprint(ids: Sequence[str], input_ids: Sequence[Sequence[int]]) -> str:
    """sha256 of the examples' ids and token ids, in order (a re-ordered data set differs)."""
    if len(ids) != len(input_ids):
        raise ValueError(
            f"ids ({len(ids)}) and input_ids ({len(input_ids)}) must have the same length"
        )
    h = hashlib.sha256()
    for ex_id, tokens in zip(ids, input_ids, strict=True):
        h.update(json.dumps([str(ex_id), list(tokens)]).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class CachedLogits:
    """Teacher logits with where they came from."""

    logits: torch.Tensor
    path: Path
    from_cache: bool
    fingerprint: str
    #: seconds the teacher took to compute these logits (stored with them; None in older files)
    compute_seconds: float | None = None


CACHE_ENV = "KD_CACHE_DIR"
#: Version of the cache file layout; files of another version (or none) are recomputed.
CACHE_FORMAT = "2"


def _read_cache(path: Path, fingerprint: str, n: int) -> tuple[torch.Tensor, float | None] | None:
    """The cached logits and their stored compute time when the file is intact, of this format, and its
    key, digest and size match, else None."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != CACHE_FORMAT or meta.get("fingerprint") != fingerprint:
                return None  # an old file without a digest, or another key: stale
            logits = fh.get_tensor("logits")
    except Exception:  # truncated or damaged file: recompute
        return None
    if meta.get("logits_sha256") != tensor_digest({"logits": logits}):
        return None  # values changed inside a valid file (a flipped sign, re-ordered rows)
    if logits.dim() != 2 or logits.shape[0] != n or not torch.isfinite(logits).all():
        return None
    try:
        seconds = float(meta["compute_seconds"])
    except (KeyError, ValueError):
        seconds = None
    return logits, seconds


def _write_cache(path: Path, logits: torch.Tensor, metadata: dict[str, str]) -> None:
    """Write the logits with their digest to `path` atomically (temp file, then rename)."""
    from safetensors.torch import save_file

    tmp = make_temp(path, CACHE_ENV, "logit cache")
    try:
        save_file(
            {"logits": logits},
            str(tmp),
            metadata={**metadata, "logits_sha256": tensor_digest({"logits": logits})},
        )
        os.replace(tmp, path)
    except OSError as exc:
        raise unwritable_error(path.parent, CACHE_ENV, "logit cache", exc) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def cache_logits(
    teacher: nn.Module,
    ids: Sequence[str],
    input_ids: Sequence[Sequence[int]],
    cache_dir: str | Path,
    name: str = "teacher",
    batch_size: int = 64,
    device: torch.device | str | None = None,
    pad_id: int = 0,
    progress: bool = True,
) -> CachedLogits:
    """Teacher logits for the examples, from disk when the (teacher, data, ids, order) key and the
    stored digest match."""
    if not isinstance(name, str) or not name or any(c in name for c in "/\\"):
        raise ValueError(f"name must be a plain file-name stem (got {name!r})")
    teacher_sha = model_fingerprint(teacher)
    data_sha = data_fingerprint(ids, input_ids)
    fingerprint = hashlib.sha256((teacher_sha + data_sha).encode()).hexdigest()
    folder = ensure_folder(cache_dir, CACHE_ENV, "logit cache")
    remove_stale_temp(folder)
    path = inside(folder, f"{name}-{fingerprint[:16]}.safetensors", "name")
    if path.exists():
        cached = _read_cache(path, fingerprint, len(ids))
        if cached is not None:
            return CachedLogits(cached[0], path, True, fingerprint, cached[1])
    start = time.perf_counter()
    logits = predict_logits(
        teacher, input_ids, batch_size, device, True, pad_id, progress
    ).contiguous()
    seconds = time.perf_counter() - start
    _write_cache(
        path,
        logits,
        {
            "format": CACHE_FORMAT,
            "fingerprint": fingerprint,
            "n": str(len(ids)),
            "name": name,
            "teacher_sha256": teacher_sha,
            "data_sha256": data_sha,
            "compute_seconds": repr(seconds),
        },
    )
    return CachedLogits(logits, path, False, fingerprint, seconds)


# ---------------------------------------------------------------- pseudo-labels


def hard_labels(logits: torch.Tensor) -> torch.Tensor:
    """The teacher's arg-max class per example."""
    return soft_targets(logits, 1.0).argmax(-1)


def soft_labels(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The teacher's class probabilities at `temperature`."""
    return soft_targets(logits, temperature)


def top_probability(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each example's top teacher probability (softmax at T = 1) and the class that has it."""
    top = soft_targets(logits, 1.0).max(-1)
    return top.values, top.indices


def confident(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean mask of examples whose top teacher probability is at least `threshold`."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (got {threshold})")
    return top_probability(logits)[0] >= threshold


def coverage_accuracy(
    logits: torch.Tensor, gold: torch.Tensor, thresholds: Sequence[float]
) -> list[dict[str, float]]:
    """For each confidence threshold: share of examples kept and accuracy of their hard pseudo-labels."""
    if len(gold) != len(logits):
        raise ValueError(f"gold must have {len(logits)} labels (got {len(gold)})")
    pred = hard_labels(logits)
    rows = []
    for t in thresholds:
        keep = confident(logits, t)
        n = int(keep.sum())
        acc = float((pred[keep] == gold[keep]).float().mean()) if n else float("nan")
        rows.append({"threshold": float(t), "coverage": n / len(logits), "accuracy": acc, "n": n})
    return rows


def quality_by_confidence(
    logits: torch.Tensor, gold: torch.Tensor, n_bins: int = 5
) -> list[dict[str, float]]:
    """Pseudo-label accuracy per bin of teacher confidence (equal-width bins over [1/C, 1])."""
    if len(gold) != len(logits):
        raise ValueError(f"gold must have {len(logits)} labels (got {len(gold)})")
    probs = soft_targets(logits, 1.0)
    conf, pred = probs.max(-1)
    low = 1.0 / logits.shape[-1]
    edges = torch.linspace(low, 1.0, n_bins + 1)
    rows = []
    for i in range(n_bins):
        hi_ok = conf <= edges[i + 1] if i == n_bins - 1 else conf < edges[i + 1]
        sel = (conf >= edges[i]) & hi_ok
        n = int(sel.sum())
        rows.append(
            {
                "low": float(edges[i]),
                "high": float(edges[i + 1]),
                "n": n,
                "accuracy": float((pred[sel] == gold[sel]).float().mean()) if n else float("nan"),
                "mean_confidence": float(conf[sel].mean()) if n else float("nan"),
            }
        )
    return rows
