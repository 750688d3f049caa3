"""Compression after distillation: int8 dynamic quantization, ONNX export, pruning, and an
accuracy/size report that handles them."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.dynamic as nnqd
from torch import nn

from kdhelpers.latency import time_interleaved
from kdhelpers.metrics import accuracy
from kdhelpers.models import model_size_mb
from kdhelpers.pseudo import predict_logits
from kdhelpers.validate import check_int, check_number, check_seed


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


def _quantizable_linears(
    model: object, embeddings: object, per_channel: object, keep_float: object
) -> set[str]:
    """The qualified names of `model`'s nn.Linear layers, after checking quantize_dynamic_int8's
    arguments (each error names the argument and what to do)."""
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
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be True or False (got {per_channel!r})")
    if isinstance(keep_float, str):
        raise TypeError("keep_float must be a sequence of module names, e.g. ('classifier',)")
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    unknown = [n for n in keep_float if n not in linears]
    if unknown:
        raise ValueError(
            f"keep_float names no nn.Linear of {type(model).__name__}: {unknown} "
            f"(its Linear layers include {sorted(linears)[-3:]})"
        )
    if torch.backends.quantized.engine == "none":
        raise RuntimeError("this PyTorch build has no quantized CPU engine")
    return linears


def quantize_dynamic_int8(
    model: nn.Module,
    embeddings: bool = False,
    per_channel: bool = False,
    keep_float: Sequence[str] = (),
) -> nn.Module:
    """A CPU copy of `model` with int8 dynamic-quantized Linear layers (and 8-bit embedding tables if
    asked); `model` is left as it was.

    per_channel=True gives every output row of a weight matrix its own scale (one scale per matrix
    otherwise); Linear layers whose qualified names are in `keep_float` (e.g. the classifier head,
    "classifier") stay float32.
    """
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        float_qparams_weight_only_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    linears = _quantizable_linears(model, embeddings, per_channel, keep_float)
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    # by name, so that keep_float can leave some out
    spec: dict[Any, Any] = {name: qconfig for name in linears if name not in set(keep_float)}
    if embeddings:
        spec.update(
            {
                name: float_qparams_weight_only_qconfig
                for name, m in model.named_modules()
                if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
            }
        )
    float_copy = copy.deepcopy(model).cpu().eval()
    # torch.ao.quantization announces its move to torchao on every call
    with warnings.catch_warnings():
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


def accuracy_report(
    model: nn.Module,
    name: str,
    input_ids: Sequence[Sequence[int]],
    labels: torch.Tensor,
    device: torch.device | str,
) -> tuple[dict[str, Any], torch.Tensor]:
    """One model's row without timing (accuracy, weights, size on disk, int8 or not) and its logits;
    quantized models run on the CPU whatever `device` is."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (got {type(model).__name__})")
    if len(input_ids) == 0:
        raise ValueError("input_ids is empty: the report needs test examples")
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.shape != (len(input_ids),):
        raise ValueError(f"labels must have shape ({len(input_ids)},) (got {tuple(labels.shape)})")
    logits = predict_logits(model, input_ids, batch_size=128, device=eval_device(model, device))
    row = {
        "name": name,
        "accuracy": accuracy(logits, labels),
        "params_m": count_weights(model) / 1e6,
        "size_mb": model_size_mb(model),
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


# ---------------------------------------------------------------- ONNX Runtime


def export_onnx(
    model: nn.Module, path: str | Path, example_ids: Sequence[Sequence[int]], min_length: int = 2
) -> Path:
    """Export a classifier (input_ids, attention_mask -> logits) to ONNX with a dynamic batch size and
    sequence length (>= min_length) through torch.export; returns the path."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (got {type(model).__name__})")
    if is_quantized(model):
        raise ValueError(
            "export the float model: PyTorch's dynamic int8 modules do not export to ONNX"
        )
    check_int("min_length", min_length, 2)
    rows = [list(r) for r in example_ids[:2]]
    longest = max(min_length + 1, *(len(r) for r in rows))
    ids = torch.zeros((len(rows), longest), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", min=min_length, max=4096)
    home, was_training = _model_device(model), model.training
    model = model.cpu().eval()
    path = Path(path)
    onnx_log = logging.getLogger("torch.onnx")  # it logs optional packages it skips (torchvision)
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (ids, mask),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["logits"],
                dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}),
                dynamo=True,
                external_data=False,  # one self-contained file (the course's models are far below 2 GB)
                verbose=False,
            )
    finally:
        onnx_log.setLevel(level)
        model.to(home).train(was_training)
    return path


class OnnxClassifier(nn.Module):
    """An ONNX Runtime session behind the course's classifier interface (CPU, a fixed thread count),
    so that predict_logits and measure_latency treat it like any other model."""

    def __init__(self, path: str | Path, threads: int = 1, min_length: int = 2) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = check_int("threads", threads, 1)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.threads, self.min_length = threads, check_int("min_length", min_length, 1)
        self.register_buffer("_device", torch.zeros(0), persistent=False)  # says "CPU" to callers

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object
    ) -> torch.Tensor:
        """Logits of shape (batch, classes), computed by ONNX Runtime."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        short = self.min_length - input_ids.shape[1]
        if short > 0:  # the export fixed a minimum length: pad (masked) up to it
            input_ids = nn.functional.pad(input_ids, (0, short))
            attention_mask = nn.functional.pad(attention_mask, (0, short))
        feeds = {
            "input_ids": input_ids.cpu().numpy().astype("int64"),
            "attention_mask": attention_mask.cpu().numpy().astype("int64"),
        }
        return torch.from_numpy(self.session.run(["logits"], feeds)[0])


# ---------------------------------------------------------------- pruning


def magnitude_pruned(model: nn.Module, sparsity: float) -> nn.Module:
    """A copy of `model` whose Linear weights (all of them pooled) have the `sparsity` share of smallest
    magnitudes set to zero (torch.nn.utils.prune.global_unstructured, made permanent); `model` is kept."""
    from torch.nn.utils import prune

    check_number("sparsity", sparsity, 0.0, 1.0)
    pruned = copy.deepcopy(model)
    targets = [(m, "weight") for m in pruned.modules() if isinstance(m, nn.Linear)]
    if not targets:
        raise ValueError(f"{type(model).__name__} has no nn.Linear weight to prune")
    if sparsity > 0:
        prune.global_unstructured(targets, prune.L1Unstructured, amount=float(sparsity))
        for module, name in targets:
            prune.remove(module, name)
    return pruned


def linear_sparsity(model: nn.Module) -> float:
    """The share of exactly-zero weights over all Linear weight matrices of `model`."""
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]
    if not weights:
        raise ValueError(f"{type(model).__name__} has no nn.Linear weight")
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


# ---------------------------------------------------------------- why int8 can be slower


def linear_layer_timings(
    shapes: Sequence[tuple[int, int]], rows: int = 1, n: int = 300, seed: int = 0
) -> list[dict[str, Any]]:
    """Median time of one float32 and one dynamic-int8 Linear(in, out) on `rows` input rows, per shape,
    timed interleaved with one thread: a micro-benchmark of one operation (one fixed input), to show
    the cost int8 adds per call (quantizing the input on the fly) against what it saves."""
    out = []
    g = torch.Generator().manual_seed(check_seed("seed", seed))
    for fan_in, fan_out in shapes:
        layer = nn.Linear(fan_in, fan_out)
        x = torch.randn(rows, fan_in, generator=g)
        q = quantize_dynamic_int8(nn.Sequential(layer))
        runs = {"float32": lambda i, m=layer, x=x: m(x), "int8": lambda i, m=q, x=x: m(x)}
        with torch.inference_mode():
            lat = time_interleaved(runs, n, warmup=20, threads=1, min_inputs=1)
        out.append(
            {
                "shape": f"{fan_in}x{fan_out}",
                "rows": rows,
                "float32_us": lat["float32"].median_ms * 1e3,
                "int8_us": lat["int8"].median_ms * 1e3,
                "int8_speedup": lat["float32"].median_ms / lat["int8"].median_ms,
            }
        )
    return out
