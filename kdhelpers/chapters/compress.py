"""Compression after distillation: int8 dynamic quantization and a size/speed/accuracy report that handles it."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.dynamic as nnqd
from torch import nn

from kdhelpers.metrics import accuracy, cpu_latency
from kdhelpers.models import model_size_mb
from kdhelpers.pseudo import predict_logits


class QuantizedEmbedding(nnq.Embedding):
    """PyTorch's weight-only 8-bit embedding table, made to accept non-contiguous indices (BERT slices
    its position ids)."""

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """Rows of the table for `indices`, as floats."""
        return super().forward(indices.contiguous())


QUANTIZED_TYPES = (nnqd.Linear, nnq.Embedding, nnq.EmbeddingBag)


def is_quantized(model: nn.Module) -> bool:
    """True when `model` holds a quantized module (such models run on the CPU only)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (got {type(model).__name__})")
    return any(isinstance(m, QUANTIZED_TYPES) for m in model.modules())


def quantize_dynamic_int8(model: nn.Module, embeddings: bool = False) -> nn.Module:
    """A CPU copy of `model` with int8 dynamic-quantized Linear layers (and 8-bit embedding tables if
    asked); `model` is left as it was."""
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        float_qparams_weight_only_qconfig,
        quantize_dynamic,
    )

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (got {type(model).__name__})")
    if not isinstance(embeddings, bool):
        raise TypeError(f"embeddings must be True or False (got {embeddings!r})")
    if is_quantized(model):
        raise ValueError("model is already quantized: quantize the float model instead")
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    n_embed = sum(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in model.modules())
    if n_linear == 0 and not (embeddings and n_embed):
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer to quantize"
            + ("" if embeddings else " (embeddings=True also quantizes embedding tables)")
        )
    if embeddings:
        for name, m in model.named_modules():
            if isinstance(m, nn.EmbeddingBag) and m.padding_idx is not None:
                raise ValueError(
                    f"{name or 'model'} is an nn.EmbeddingBag with padding_idx: PyTorch's quantized "
                    "EmbeddingBag ignores padding_idx and would average the padding in"
                )
    if torch.backends.quantized.engine == "none":
        raise RuntimeError("this PyTorch build has no quantized CPU engine")
    spec: dict[type, Any] = {nn.Linear: default_dynamic_qconfig}
    if embeddings:
        spec[nn.Embedding] = float_qparams_weight_only_qconfig
        spec[nn.EmbeddingBag] = float_qparams_weight_only_qconfig
    float_copy = copy.deepcopy(model).cpu().eval()
    with (
        warnings.catch_warnings()
    ):  # torch.ao.quantization announces its move to torchao on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantized = quantize_dynamic(float_copy, spec, dtype=torch.qint8)
    for m in quantized.modules():
        if type(m) is nnq.Embedding:
            m.__class__ = QuantizedEmbedding
    return quantized


def count_weights(model: nn.Module) -> int:
    """Number of weights, counting those packed inside quantized modules (count_parameters misses them)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (got {type(model).__name__})")
    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, nnqd.Linear):
            total += m.weight().numel() + (m.bias().numel() if m.bias() is not None else 0)
        elif isinstance(m, (nnq.Embedding, nnq.EmbeddingBag)):
            total += m.weight().numel()
    return total


def _model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU when it has none)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def eval_device(model: nn.Module, device: torch.device | str) -> torch.device:
    """Where to evaluate `model`: `device`, except the CPU for quantized models."""
    return torch.device("cpu") if is_quantized(model) else torch.device(device)


def compressed_report(
    model: nn.Module,
    name: str,
    input_ids: Sequence[Sequence[int]],
    labels: torch.Tensor,
    device: torch.device | str,
    repeats: int = 20,
    latency_examples: int = 64,
    b64_repeats: int | None = None,
) -> tuple[dict[str, Any], torch.Tensor]:
    """model_report's row (accuracy, weights, size, median CPU latency b1/b64) for float or quantized
    models, and the logits.

    Quantized models are evaluated on the CPU whatever `device` is; b64_repeats defaults to max(3, repeats // 4).
    """

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (got {type(model).__name__})")
    if len(input_ids) == 0:
        raise ValueError("input_ids is empty: the report needs test examples")
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.shape != (len(input_ids),):
        raise ValueError(f"labels must have shape ({len(input_ids)},) (got {tuple(labels.shape)})")
    b64_repeats = max(3, repeats // 4) if b64_repeats is None else b64_repeats
    for what, value in (("repeats", repeats), ("b64_repeats", b64_repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive int (got {value!r})")
    home, was_training = _model_device(model), model.training
    logits = predict_logits(model, input_ids, batch_size=128, device=eval_device(model, device))
    sample = [list(x) for x in input_ids[:latency_examples]]
    b1 = cpu_latency(model, sample, batch_size=1, repeats=repeats, warmup=3)
    b64 = cpu_latency(model, sample, batch_size=64, repeats=b64_repeats, warmup=1)
    model.to(home).train(was_training)  # cpu_latency moved it to the CPU in eval mode
    row = {
        "name": name,
        "accuracy": accuracy(logits, labels),
        "params_m": count_weights(model) / 1e6,
        "size_mb": model_size_mb(model),
        "latency_b1_ms": b1["median_ms"],
        "latency_b64_ms": b64["median_ms"],
        "int8": is_quantized(model),
    }
    return row, logits


def prediction_changes(
    reference: torch.Tensor, other: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """How `other` logits differ from `reference` on labelled rows: accuracies, agreement, predictions
    fixed and broken, McNemar z."""

    for name, t in (("reference", reference), ("other", other)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be a logits tensor of shape (n, classes)")
    if reference.shape != other.shape:
        raise ValueError(
            f"reference {tuple(reference.shape)} and other {tuple(other.shape)} differ in shape"
        )
    accuracy(reference, labels)  # same label checks
    a, b = reference.argmax(-1), other.argmax(-1)
    right_a, right_b = a == labels, b == labels
    n = len(labels)
    fixed, broken = int((~right_a & right_b).sum()), int((right_a & ~right_b).sum())
    return {
        "reference_accuracy": int(right_a.sum()) / n,
        "accuracy": int(right_b.sum()) / n,
        "agreement": int((a == b).sum()) / n,
        "fixed": fixed,
        "broken": broken,
        "n": n,
        "z": (fixed - broken) / math.sqrt(fixed + broken) if fixed + broken else 0.0,
        "max_abs_logit_diff": float((reference.float() - other.float()).abs().max()),
    }
