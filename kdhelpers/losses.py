"""Distillation losses, computed in float32 with clear errors on bad input."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdhelpers.numerics import (
    as_float32_input,
    check_finite_module,
    cosine_rows,
    mean_squared_error,
    scaled_span,
    to_float32,
)
from kdhelpers.validate import (
    check_class_labels,
    check_float_tensor,
    check_number,
    check_real_device,
    check_temperature,
    to_device_of,
)

#: The float32 formulas are used (and are accurate to ~1e-5) up to this temperature ...
_FLOAT32_MAX_TEMPERATURE = 64.0
#: ... and while every row's logit span (max - min) divided by T stays below this (no float32 overflow).
_FLOAT32_MAX_SCALED_SPAN = 1e30
#: The float32 KD value is kept when it exceeds this many times its rounding-error bound (else float64).
_FLOAT32_TRUST = 1e3


def _check_logits(name: str, logits: object) -> torch.Tensor:
    """Validate a logits tensor: a float tensor of rank >= 2, non-empty and finite."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (got {type(logits).__name__})")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (got dtype {logits.dtype})")
    if logits.dim() < 2:
        raise ValueError(
            f"{name} must have shape (batch, classes) or (batch, seq, classes) "
            f"(got shape {tuple(logits.shape)})"
        )
    if logits.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(logits.shape)})")
    if logits.shape[-1] < 2:
        raise ValueError(
            f"{name} needs at least 2 classes in its last dimension (got {logits.shape[-1]})"
        )
    check_float_tensor(name, logits)
    return logits


def _check_alpha(alpha: float) -> float:
    """Validate the hard-label weight alpha (in [0, 1])."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number in [0, 1] (got {type(alpha).__name__} {alpha!r})")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (got {alpha})")
    return float(alpha)


_scaled_span = scaled_span  # the largest row span (max - min) / T, in float64 (kdhelpers.numerics)


def _fits_float32(temperature: float, *tensors: torch.Tensor) -> bool:
    """Whether the float32 formulas are accurate here (moderate T, no overflow of logits / T)."""
    return (
        temperature <= _FLOAT32_MAX_TEMPERATURE
        and _scaled_span(temperature, *tensors) <= _FLOAT32_MAX_SCALED_SPAN
    )


def _float32_error_bound(temperature: float, *tensors: torch.Tensor) -> float:
    """A (pessimistic) bound on the float32 rounding error of T^2 * sum p_t (log p_t - log p_s)."""
    largest = max(float(x.detach().abs().max()) for x in tensors)
    eps = float(torch.finfo(torch.float32).eps)
    return (
        4
        * eps
        * temperature
        * temperature
        * (largest / temperature + math.log(tensors[0].shape[-1]))
    )


def _as_float32(value: torch.Tensor, what: str) -> torch.Tensor:
    """A float64 result cast to float32, with a clear error when it does not fit."""
    return to_float32(
        value,
        what,
        "the logits are too large for this temperature; rescale them (e.g. standardise the model outputs)",
    )


def _log_softmax64(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) in float64, after subtracting each row's maximum (no overflow)."""
    x = logits.double()
    return F.log_softmax((x - x.detach().amax(-1, keepdim=True)) / temperature, dim=-1)


def _kl_rows64(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) per row, in float64 and without cancellation.

    KL = sum_i (pt_i v_i - pt_i + ps_i) with v = log(pt / ps): every term is >= 0. Where the two
    distributions are close (large T), v comes from the logit differences instead of the difference
    of two nearly equal log-probabilities, and small terms use the series ps * (v^2/2 + v^3/3 + ...).
    """
    x, y = student.double(), teacher.double()
    a = x - x.detach().amax(-1, keepdim=True)
    b = y - y.detach().amax(-1, keepdim=True)
    ls = F.log_softmax(a / temperature, dim=-1)
    lt = F.log_softmax(b / temperature, dim=-1)
    ps, pt = ls.exp(), lt.exp()
    delta = (b - a) / temperature
    delta = delta - (ps * delta).sum(-1, keepdim=True)
    close = delta.abs().amax(-1, keepdim=True) <= 0.5
    d = torch.where(close, delta, torch.zeros_like(delta))
    v_close = d - torch.log1p((ps * torch.expm1(d)).sum(-1, keepdim=True))
    v = torch.where(close, v_close, lt - ls)
    small = v.abs() < 1e-2
    w = torch.where(small, v, torch.zeros_like(v))
    series = ps * w * w * (0.5 + w * (1 / 3 + w * (1 / 8 + w * (1 / 30 + w / 144))))
    plain = pt * v - pt + ps
    return torch.where(small, series, plain).sum(-1)


def soft_targets(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax of `logits / temperature` over the last dimension, in float32 (float64 inside when
    logits / T is huge)."""
    _check_logits("logits", logits)
    t = check_temperature("temperature", temperature)
    if _scaled_span(t, logits) <= _FLOAT32_MAX_SCALED_SPAN:
        return F.softmax(logits.float() / t, dim=-1)
    return _log_softmax64(logits, t).exp().float()


def _check_mask(mask: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor | None:
    """Validate a token mask of shape logits.shape[:-1] holding 0/1 (or bools); return it as bool (or None)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor (got {type(mask).__name__})")
    if logits.dim() != 3:
        raise ValueError(
            "mask is only for token-level logits of shape (batch, seq, classes) "
            f"(got student_logits of shape {tuple(logits.shape)})"
        )
    if tuple(mask.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"mask must have shape {tuple(logits.shape[:-1])} (batch, seq) (got {tuple(mask.shape)})"
        )
    return _binary_mask(mask, logits, "student_logits")


def _binary_mask(mask: torch.Tensor, ref: torch.Tensor, ref_name: str) -> torch.Tensor:
    """A 0/1 (or bool) mask on ref's device as bool; values other than 0 and 1 and empty masks are refused."""
    mask = to_device_of("mask", check_real_device("mask", mask), ref_name, ref)
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(
                "mask must hold only 0 and 1 (or booleans): 1 keeps a position, 0 drops it"
            )
        mask = mask.bool()
    if not mask.any():
        raise ValueError("mask selects no position: at least one entry must be true")
    return mask


def _check_labels(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Validate integer class labels matching the logits' leading dimensions (int64 on the logits' device)."""
    return check_class_labels(
        "labels",
        labels,
        logits.shape[-1],
        shape=tuple(logits.shape[:-1]),
        ref_name="student_logits",
        ref=logits,
    )


def kd_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over examples (or unmasked tokens).

    Computed in float32 for T <= 64 and moderate logits when float32 rounding is negligible (relative
    error below about 1e-4); otherwise (large or tiny T, near-equal teacher and student, logits near
    the float32 limit) in float64 without cancellation, returned as float32. T must lie in
    validate.TEMPERATURE_RANGE.
    """
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    if tuple(student_logits.shape) != tuple(teacher_logits.shape):
        raise ValueError(
            "teacher_logits must have the same shape as student_logits "
            f"(got {tuple(teacher_logits.shape)} vs {tuple(student_logits.shape)}); "
            "a class-count mismatch means teacher and student predict different label sets"
        )
    teacher_logits = to_device_of(
        "teacher_logits", teacher_logits, "student_logits", student_logits
    )
    t = check_temperature("temperature", temperature)
    mask = _check_mask(mask, student_logits)
    if _fits_float32(t, student_logits, teacher_logits):
        log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
        log_p_t = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
        per_example = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
        if mask is not None:
            per_example = per_example[mask]
        loss = per_example.mean() * (t * t)
        if float(loss.detach()) >= _FLOAT32_TRUST * _float32_error_bound(
            t, student_logits, teacher_logits
        ):
            return loss
        # else: the KL is so small (near-equal distributions) that float32 rounding would dominate it
    per_example = _kl_rows64(student_logits, teacher_logits.detach(), t) * (t * t)
    if mask is not None:
        per_example = per_example[mask]
    return _as_float32(per_example.mean(), "the KD loss T^2 * KL")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    alpha: float = 0.5,
    temperature: float = 2.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T), as a float32 scalar."""
    alpha = _check_alpha(alpha)
    kd = kd_kl(student_logits, teacher_logits, temperature=temperature, mask=mask)
    if labels is None:
        if alpha != 0.0:
            raise ValueError(f"labels=None is only allowed with alpha=0 (got alpha={alpha})")
        return kd
    labels = _check_labels(labels, student_logits)
    flat_logits = student_logits.reshape(-1, student_logits.shape[-1])
    flat_labels = labels.reshape(-1)
    if mask is not None:
        keep = _check_mask(mask, student_logits).reshape(-1)
        flat_logits, flat_labels = flat_logits[keep], flat_labels[keep]
    if _scaled_span(1.0, flat_logits) <= _FLOAT32_MAX_SCALED_SPAN:
        ce = F.cross_entropy(flat_logits.float(), flat_labels)
    else:
        ce = _as_float32(
            F.nll_loss(_log_softmax64(flat_logits, 1.0), flat_labels), "the cross-entropy"
        )
    loss = alpha * ce + (1.0 - alpha) * kd
    if not bool(torch.isfinite(loss.detach())):
        raise ValueError(
            f"the loss ({float(loss.detach()):.3g}) overflows float32: the logits are too large; "
            "rescale them (e.g. standardise the model outputs)"
        )
    return loss


# ---------------------------------------------------------------- intermediate-layer (feature) losses


def _check_states(name: str, states: object, rank: int, what: str) -> torch.Tensor:
    """Validate a float tensor of the given rank: non-empty, on a real device, finite values."""
    if not isinstance(states, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (got {type(states).__name__})")
    if not states.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (got dtype {states.dtype})")
    if states.dim() != rank:
        raise ValueError(f"{name} must have shape {what} (got shape {tuple(states.shape)})")
    if states.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(states.shape)})")
    check_float_tensor(name, states)
    return states


def _project(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, projection: object
) -> torch.Tensor:
    """Check both hidden-state tensors, map the student's through `projection`, return it in float32."""
    _check_states("student_hidden", student_hidden, 3, "(batch, seq, width)")
    _check_states("teacher_hidden", teacher_hidden, 3, "(batch, seq, width)")
    if tuple(student_hidden.shape[:2]) != tuple(teacher_hidden.shape[:2]):
        raise ValueError(
            "student_hidden and teacher_hidden must share (batch, seq) "
            f"(got {tuple(student_hidden.shape[:2])} vs {tuple(teacher_hidden.shape[:2])}): "
            "both models must read the same tokens"
        )
    if projection is None:
        mapped = as_float32_input("student_hidden", student_hidden)
    else:
        if not callable(projection):
            raise TypeError(
                f"projection must be callable, e.g. an nn.Linear (got {type(projection).__name__})"
            )
        check_finite_module("projection", projection)
        params = list(projection.parameters()) if isinstance(projection, torch.nn.Module) else []
        dtype = params[0].dtype if params else torch.float32
        width = student_hidden.shape[-1]
        expects = getattr(projection, "in_features", None)
        fix = f"use nn.Linear({width}, {teacher_hidden.shape[-1]}) (student width -> teacher width)"
        if isinstance(expects, int) and expects != width:
            raise ValueError(
                f"projection expects inputs of width {expects} but student_hidden has width {width}: {fix}"
            )
        if params and params[0].device != student_hidden.device:
            raise ValueError(
                f"projection is on device {params[0].device} but student_hidden is on "
                f"{student_hidden.device}: move it with projection.to(student_hidden.device)"
            )
        try:
            mapped = projection(student_hidden.to(dtype))
        except RuntimeError as err:
            raise ValueError(
                f"projection could not map student_hidden of shape {tuple(student_hidden.shape)} "
                f"({err}): {fix}"
            ) from err
        if not isinstance(mapped, torch.Tensor):
            raise TypeError(f"projection must return a tensor (got {type(mapped).__name__})")
        mapped = mapped.float()
        if not bool(torch.isfinite(mapped.detach()).all()):
            raise ValueError(
                "projection maps the finite student_hidden to NaN or Inf (beyond float32): its "
                "weights or the states are too large; rescale the states (e.g. standardise them)"
            )
    if tuple(mapped.shape) != tuple(teacher_hidden.shape):
        hint = (
            ""
            if projection is not None
            else ": pass projection=nn.Linear(student_width, teacher_width)"
        )
        raise ValueError(
            f"the (projected) student states have shape {tuple(mapped.shape)} but teacher_hidden has "
            f"{tuple(teacher_hidden.shape)}{hint}"
        )
    return mapped


def hidden_mse_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    projection: object = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """FitNets hint: mean squared error between projection(student states) and teacher states, over unmasked tokens.

    Shapes (batch, seq, width); `projection` (e.g. nn.Linear(student_width, teacher_width)) maps the
    student's width to the teacher's; the mean runs over unmasked tokens and all teacher dimensions.
    """
    mapped = _project(student_hidden, teacher_hidden, projection)
    mask = _check_mask(mask, mapped)
    target = as_float32_input("teacher_hidden", teacher_hidden.detach())
    if mask is not None:
        mapped, target = mapped[mask], target[mask]
    return mean_squared_error(
        mapped,
        target,
        "the mean squared difference of the (projected) student_hidden and teacher_hidden",
        "the states are too large; standardise them (features.standardise_hidden)",
    )


def hidden_cosine_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    projection: object = None,
    mask: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """1 - cosine similarity between each (projected) student token state and the teacher's, averaged
    over unmasked tokens.

    The cosine is a.b / max(|a| |b|, eps) (eps >= 0), exact for states of any float32 size (float64
    inside where float32 would overflow or underflow); a zero state has cosine 0 with every state,
    so its loss is 1, with eps = 0 as with eps > 0 (the limit as eps -> 0+).
    """
    eps = check_number("eps", eps, 0.0)
    mapped = _project(student_hidden, teacher_hidden, projection)
    mask = _check_mask(mask, mapped)
    target = as_float32_input("teacher_hidden", teacher_hidden.detach())
    per_token = 1.0 - cosine_rows(mapped, target, eps)
    if mask is not None:
        per_token = per_token[mask]
    return per_token.mean()


ATTENTION_KINDS = ("kl", "mse")
#: How far an unmasked attention row may sum from 1 (room for fp16/bf16 attention maps).
ATTENTION_ROW_TOLERANCE = 2e-2


def _check_rows_sum_to_one(name: str, attn: torch.Tensor, mask: torch.Tensor) -> None:
    """Every unmasked query row, summed over unmasked keys, must be 1 (a distribution, not zeros)."""
    keys = mask[:, None, None, :].to(attn.dtype)
    sums = (attn.detach() * keys).sum(-1)  # (batch, heads, query)
    rows = mask[:, None, :].expand_as(sums)
    gap = (sums[rows] - 1.0).abs()
    if gap.numel() and float(gap.max()) > ATTENTION_ROW_TOLERANCE:
        worst = float(sums[rows][int(gap.argmax())])
        raise ValueError(
            f"{name} must hold attention probabilities whose unmasked rows sum to 1 over the unmasked keys "
            f"(found a row summing to {worst:.3g}): pass softmax outputs without dropout, and a mask that "
            "marks padded positions with 0"
        )


def _attention_maps(
    student_attn: object, teacher_attn: object, mask: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two attention maps as float32 on the student's device (the teacher's detached) and the
    boolean (batch, seq) mask, after checking shapes, probabilities and the mask (errors name each)."""
    what = "(batch, heads, seq, seq)"
    _check_states("student_attn", student_attn, 4, what)
    _check_states("teacher_attn", teacher_attn, 4, what)
    for name, a in (("student_attn", student_attn), ("teacher_attn", teacher_attn)):
        if a.shape[-1] != a.shape[-2]:
            raise ValueError(
                f"{name} must be square in its last two dimensions {what} (got {tuple(a.shape)})"
            )
        if float(a.detach().min()) < 0.0 or float(a.detach().max()) > 1.0 + 1e-4:
            raise ValueError(
                f"{name} must hold attention probabilities in [0, 1] (got values in "
                f"[{float(a.detach().min()):.3g}, {float(a.detach().max()):.3g}]): pass softmax outputs, not scores"
            )
    if (
        student_attn.shape[0] != teacher_attn.shape[0]
        or student_attn.shape[-1] != teacher_attn.shape[-1]
    ):
        raise ValueError(
            "student_attn and teacher_attn must share batch and seq "
            f"(got {tuple(student_attn.shape)} vs {tuple(teacher_attn.shape)})"
        )
    teacher_attn = to_device_of("teacher_attn", teacher_attn, "student_attn", student_attn)
    s, t = student_attn.float(), teacher_attn.detach().float()
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor (got {type(mask).__name__})")
        if tuple(mask.shape) != (s.shape[0], s.shape[-1]):
            raise ValueError(
                f"mask must have shape {(s.shape[0], s.shape[-1])} (batch, seq) (got {tuple(mask.shape)})"
            )
        mask = _binary_mask(mask, s, "student_attn")
    else:
        mask = torch.ones(s.shape[0], s.shape[-1], dtype=torch.bool, device=s.device)
    for name, a in (("student_attn", s), ("teacher_attn", t)):
        _check_rows_sum_to_one(name, a, mask)
    return s, t, mask


def attention_transfer_loss(
    student_attn: torch.Tensor,
    teacher_attn: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: str = "kl",
    eps: float = 1e-12,
) -> torch.Tensor:
    """Attention-map transfer: KL(teacher row || student row) (MiniLM) or MSE (TinyBERT-style, on probabilities).

    Maps have shape (batch, heads, seq, seq) and hold attention probabilities (each query row sums to 1).
    When the head counts differ, both maps are averaged over heads first. Padded tokens (mask == 0)
    are dropped as queries and as keys. 'kl' sums over keys and averages over heads and unmasked
    query rows; 'mse' averages the squared differences over heads and unmasked (query, key) pairs.
    `eps` (>= 0) floors the student's probabilities inside the log; a key the teacher gives 0 adds
    0 (0 log 0 = 0), and with eps = 0 a student 0 where the teacher attends (an infinite KL) is refused.
    """
    if not isinstance(kind, str) or kind not in ATTENTION_KINDS:
        raise ValueError(f"kind must be one of {ATTENTION_KINDS} (got {kind!r})")
    eps = check_number("eps", eps, 0.0)
    s, t, mask = _attention_maps(student_attn, teacher_attn, mask)
    if s.shape[1] != t.shape[1]:
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    keys = mask[:, None, None, :].to(s.dtype)  # padded keys contribute nothing
    rows = mask[:, None, :].expand(s.shape[0], s.shape[1], s.shape[2])  # (batch, heads, query)
    if kind == "kl":
        # only unmasked keys the teacher attends to enter t * log(s): 0 * log(0) is 0, not NaN
        used = (t > 0) & mask[:, None, None, :]
        if eps == 0.0 and bool((used & (s == 0)).any()):
            raise ValueError(
                "student_attn gives probability 0 to a key that teacher_attn attends to: with eps=0 "
                "the KL is infinite; keep the default eps (1e-12) or pass eps > 0"
            )
        log_s = torch.log(torch.where(used, s.clamp(min=eps), torch.ones_like(s)))
        per_pair = torch.xlogy(t, t) - torch.where(used, t * log_s, torch.zeros_like(s))
        per_row = (per_pair * keys).sum(-1)
        return per_row[rows].mean()
    sq = ((s - t) ** 2 * keys).sum(-1)[rows]
    n_pairs = s.shape[1] * (mask.sum(-1).float() ** 2).sum()  # heads x unmasked (query, key) pairs
    return sq.sum() / n_pairs
