"""Shared argument checks: each raises TypeError/ValueError naming the argument and saying what to do."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

#: Largest seed accepted (torch seeds are 64-bit; derived seeds such as seed + 1 must stay in range).
MAX_SEED = 2**63 - 1


def check_int(name: str, value: object, minimum: int = 0, maximum: int | None = None) -> int:
    """An int (numpy ints too, bools refused) in [minimum, maximum]; returned as a Python int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int (got {type(value).__name__} {value!r})")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an int {bound} (got {value})")
    return value


def check_seed(name: str, value: object) -> int:
    """A seed: an int in [0, 2**63 - 1] (a float such as 1.5 is refused, not truncated)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"{name} must be an int seed in [0, 2**63 - 1] (got {type(value).__name__} {value!r})"
        )
    if not 0 <= int(value) <= MAX_SEED:
        raise ValueError(
            f"{name} must be an int seed in [0, 2**63 - 1] (got {value}): pick a smaller seed"
        )
    return int(value)


def check_number(
    name: str,
    value: object,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    strict_min: bool = False,
) -> float:
    """A finite real number (strings and bools refused) in [minimum, maximum] (minimum excluded if strict_min)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(
            f"{name} must be a number (got {type(value).__name__} {value!r}); "
            "convert strings from config files with float(...)"
        )
    value = float(value)
    low_bad = minimum is not None and (value < minimum or (strict_min and value == minimum))
    high_bad = maximum is not None and value > maximum
    if not math.isfinite(value) or low_bad or high_bad:
        low = "" if minimum is None else f"{'>' if strict_min else '>='} {minimum}"
        high = "" if maximum is None else f"<= {maximum}"
        bounds = " and ".join(b for b in (low, high) if b)
        raise ValueError(
            f"{name} must be a finite number{' ' + bounds if bounds else ''} (got {value})"
        )
    return value


#: Temperatures a softmax accepts: beyond them logits / T or T^2 * KL leave the range of float64.
TEMPERATURE_RANGE = (1e-100, 1e100)


def check_temperature(name: str, value: object) -> float:
    """A softmax temperature: a finite number > 0 within TEMPERATURE_RANGE."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"{name} must be a number (got {type(value).__name__} {value!r})")
    value = float(value)
    low, high = TEMPERATURE_RANGE
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0 (got {value})")
    if not low <= value <= high:
        raise ValueError(
            f"{name} must lie in [{low:g}, {high:g}] (got {value:g}): "
            "beyond it logits / T or T^2 * KL leave the range of float64"
        )
    return value


def check_optional_positive(name: str, value: object) -> float | None:
    """None, or a finite number > 0 (e.g. max_grad_norm: None turns clipping off; NaN or <= 0 is refused)."""
    if value is None:
        return None
    return check_number(name, value, 0.0, strict_min=True)


def check_texts(name: str, texts: object) -> list[str]:
    """A non-empty sequence of strings (no None, no numbers inside)."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of strings, not one string: wrap it in a list")
    if not isinstance(texts, Sequence) and not hasattr(texts, "__iter__"):
        raise TypeError(f"{name} must be a sequence of strings (got {type(texts).__name__})")
    texts = list(texts)  # type: ignore[arg-type]
    if not texts:
        raise ValueError(f"{name} is empty")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(
                f"{name}[{i}] is {type(t).__name__} {t!r}, not a string: drop or fill missing texts first"
            )
    return texts


def check_real_device(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Refuse tensors on the 'meta' device (shapes only, no values to compute with)."""
    if tensor.device.type == "meta":
        raise ValueError(
            f"{name} is on the 'meta' device and holds no values: create it on the CPU or a GPU"
        )
    return tensor


def to_device_of(name: str, tensor: torch.Tensor, ref_name: str, ref: torch.Tensor) -> torch.Tensor:
    """`tensor` moved to `ref`'s device (CPU <-> GPU copies are made); a clear error when that is impossible."""
    if tensor.device == ref.device:
        return tensor
    message = (
        f"{name} is on device {tensor.device} but {ref_name} is on {ref.device}: "
        f"put both on one device, e.g. {name}.to({ref_name}.device)"
    )
    if "meta" in (tensor.device.type, ref.device.type):
        raise ValueError(message)
    try:
        return tensor.to(ref.device)
    except RuntimeError as err:  # pragma: no cover - depends on the devices present
        raise ValueError(message) from err


def check_float_tensor(name: str, x: object, *, finite: bool = True) -> torch.Tensor:
    """A floating-point tensor on a real device, finite unless finite=False."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (got {type(x).__name__})")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (got dtype {x.dtype}): "
            f"pass model outputs, or convert with {name}.float()"
        )
    check_real_device(name, x)
    if finite and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"{name} contains NaN or Inf values: check the model or the data that produced it"
        )
    return x


def check_class_labels(
    name: str,
    labels: object,
    n_classes: int,
    *,
    allow_unlabelled: bool = False,
    shape: tuple[int, ...] | None = None,
    ref_name: str = "logits",
    ref: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integer class ids in [0, n_classes - 1] (or -1 = unlabelled when allowed), returned as int64 on ref's device."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (got {type(labels).__name__})")
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(
            f"{name} must be an integer tensor of class indices (got dtype {labels.dtype}): "
            "labels are class ids such as 0, 1, 2, not probabilities or scores"
        )
    check_real_device(name, labels)
    if shape is not None and tuple(labels.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have shape {tuple(shape)} to match {ref_name} (got {tuple(labels.shape)})"
        )
    if ref is not None:
        labels = to_device_of(name, labels, ref_name, ref)
    labels = labels.long()  # int8/16/32 and uint8 class ids convert exactly
    low = -1 if allow_unlabelled else 0
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < low or hi >= n_classes:
            extra = " or -1 (unlabelled)" if allow_unlabelled else ""
            raise ValueError(
                f"{name} must be class indices in [0, {n_classes - 1}]{extra} for {n_classes} output classes "
                f"(got values from {lo} to {hi}): check num_labels of the model, or the label mapping"
            )
    return labels


def _tracing() -> bool:
    """True while torch.export / torch.compile traces a model (data-dependent checks cannot run)."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


def check_token_ids(
    name: str, ids: torch.Tensor, vocab_size: int, what: str = "the model", fix: str | None = None
) -> torch.Tensor:
    """Integer token ids in [0, vocab_size - 1] on a real device (not checked while torch.export or
    torch.compile traces the model: a traced graph holds no Python-side checks)."""
    if _tracing():
        return ids
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids (got {type(ids).__name__})")
    if ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
        raise TypeError(f"{name} must be an integer tensor of token ids (got dtype {ids.dtype})")
    check_real_device(name, ids)
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f"{name} holds token ids from {lo} to {hi} but {what} has a vocabulary of {vocab_size} "
                f"(ids 0..{vocab_size - 1}): {fix or f'use the tokenizer {what} was built for'}"
            )
    return ids


def vocab_size_of(model: Any) -> int | None:
    """The number of rows of a model's input-embedding table (None when it has none)."""
    get = getattr(model, "get_input_embeddings", None)
    table = get() if callable(get) else getattr(model, "embedding", None)
    weight = getattr(table, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def check_token_lists(name: str, seqs: object) -> list[list[int]]:
    """Token-id lists: each entry a list of non-negative ints (no None, no floats)."""
    if isinstance(seqs, (str, bytes, torch.Tensor)) or not isinstance(seqs, Sequence):
        raise TypeError(f"{name} must be a list of token-id lists (got {type(seqs).__name__})")
    out = []
    for i, s in enumerate(seqs):
        if isinstance(s, (str, bytes)) or not hasattr(s, "__iter__"):
            raise TypeError(
                f"{name}[{i}] must be a list of token ids (got {type(s).__name__}): tokenize texts first"
            )
        row = list(s)
        for tok in row:
            if (
                isinstance(tok, (bool, np.bool_))
                or not isinstance(tok, (int, np.integer))
                or tok < 0
            ):
                raise ValueError(
                    f"{name}[{i}] holds {tok!r}: token ids must be ints >= 0 (tokenize the text again)"
                )
        out.append([int(tok) for tok in row])
    return out


def check_optimiser_settings(config: Any) -> None:
    """Check a frozen config's lr, weight_decay, warmup_ratio and max_grad_norm (those it has), in place."""
    checks = {
        "lr": lambda v: check_number("lr", v, 0.0, strict_min=True),
        "weight_decay": lambda v: check_number("weight_decay", v, 0.0),
        "warmup_ratio": lambda v: check_number("warmup_ratio", v, 0.0, 1.0),
        "max_grad_norm": lambda v: check_optional_positive("max_grad_norm", v),
    }
    for name, check in checks.items():
        if hasattr(config, name):
            object.__setattr__(config, name, check(getattr(config, name)))
