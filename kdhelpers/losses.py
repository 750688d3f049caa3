"""Distillation losses, computed in float32 with clear errors on bad input."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
        raise ValueError(f"{name} needs at least 2 classes in its last dimension (got {logits.shape[-1]})")
    if not torch.isfinite(logits).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return logits


def _check_temperature(temperature: float) -> float:
    """Validate the softmax temperature (a finite number > 0)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number (got {type(temperature).__name__})")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0 (got {temperature})")
    return float(temperature)


def _check_alpha(alpha: float) -> float:
    """Validate the hard-label weight alpha (in [0, 1])."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number in [0, 1] (got {type(alpha).__name__})")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (got {alpha})")
    return float(alpha)


def soft_targets(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax of `logits / temperature` over the last dimension, in float32."""
    _check_logits("logits", logits)
    t = _check_temperature(temperature)
    return F.softmax(logits.float() / t, dim=-1)


def _check_mask(mask: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor | None:
    """Validate a token mask of shape logits.shape[:-1]; return it as bool (or None)."""
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
    mask = mask.to(device=logits.device).bool()
    if not mask.any():
        raise ValueError("mask selects no position: at least one entry must be true")
    return mask


def _check_labels(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Validate integer class labels matching the logits' leading dimensions."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor (got {type(labels).__name__})")
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"labels must be an integer tensor of class indices (got dtype {labels.dtype})")
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"labels must have shape {tuple(logits.shape[:-1])} to match student_logits "
            f"(got {tuple(labels.shape)})"
        )
    n_classes = logits.shape[-1]
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"labels must be class indices in [0, {n_classes - 1}] "
            f"(got values from {int(labels.min())} to {int(labels.max())})"
        )
    return labels.to(logits.device)


def kd_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over examples (or unmasked tokens)."""
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    if tuple(student_logits.shape) != tuple(teacher_logits.shape):
        raise ValueError(
            "teacher_logits must have the same shape as student_logits "
            f"(got {tuple(teacher_logits.shape)} vs {tuple(student_logits.shape)}); "
            "a class-count mismatch means teacher and student predict different label sets"
        )
    t = _check_temperature(temperature)
    mask = _check_mask(mask, student_logits)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    per_example = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
    if mask is not None:
        per_example = per_example[mask]
    return per_example.mean() * (t * t)


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
    flat_logits = student_logits.float().reshape(-1, student_logits.shape[-1])
    flat_labels = labels.reshape(-1)
    if mask is not None:
        keep = _check_mask(mask, student_logits).reshape(-1)
        flat_logits, flat_labels = flat_logits[keep], flat_labels[keep]
    ce = F.cross_entropy(flat_logits, flat_labels)
    return alpha * ce + (1.0 - alpha) * kd


# ---------------------------------------------------------------- intermediate-layer (feature) losses

def _check_states(name: str, states: object, rank: int, what: str) -> torch.Tensor:
    """Validate a float tensor of the given rank: non-empty batch and finite values."""
    if not isinstance(states, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (got {type(states).__name__})")
    if not states.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (got dtype {states.dtype})")
    if states.dim() != rank:
        raise ValueError(f"{name} must have shape {what} (got shape {tuple(states.shape)})")
    if states.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(states.shape)})")
    if not torch.isfinite(states).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return states


def _project(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, projection: object) -> torch.Tensor:
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
        mapped = student_hidden.float()
    else:
        if not callable(projection):
            raise TypeError(f"projection must be callable, e.g. an nn.Linear (got {type(projection).__name__})")
        params = list(projection.parameters()) if isinstance(projection, torch.nn.Module) else []
        dtype = params[0].dtype if params else torch.float32
        mapped = projection(student_hidden.to(dtype))
        if not isinstance(mapped, torch.Tensor):
            raise TypeError(f"projection must return a tensor (got {type(mapped).__name__})")
        mapped = mapped.float()
    if tuple(mapped.shape) != tuple(teacher_hidden.shape):
        hint = "" if projection is not None else ": pass projection=nn.Linear(student_width, teacher_width)"
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
    sq = (mapped - teacher_hidden.detach().float()) ** 2
    if mask is not None:
        sq = sq[mask]
    return sq.mean()


def hidden_cosine_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    projection: object = None,
    mask: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """1 - cosine similarity between each (projected) student token state and the teacher's, averaged over unmasked tokens."""
    mapped = _project(student_hidden, teacher_hidden, projection)
    mask = _check_mask(mask, mapped)
    target = teacher_hidden.detach().float()
    dot = (mapped * target).sum(-1)
    norms = (mapped.norm(dim=-1) * target.norm(dim=-1)).clamp(min=eps)
    per_token = 1.0 - dot / norms
    if mask is not None:
        per_token = per_token[mask]
    return per_token.mean()


ATTENTION_KINDS = ("kl", "mse")


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
    """
    if not isinstance(kind, str) or kind not in ATTENTION_KINDS:
        raise ValueError(f"kind must be one of {ATTENTION_KINDS} (got {kind!r})")
    what = "(batch, heads, seq, seq)"
    _check_states("student_attn", student_attn, 4, what)
    _check_states("teacher_attn", teacher_attn, 4, what)
    for name, a in (("student_attn", student_attn), ("teacher_attn", teacher_attn)):
        if a.shape[-1] != a.shape[-2]:
            raise ValueError(f"{name} must be square in its last two dimensions {what} (got {tuple(a.shape)})")
        if float(a.detach().min()) < 0.0 or float(a.detach().max()) > 1.0 + 1e-4:
            raise ValueError(f"{name} must hold attention probabilities in [0, 1] (got values in "
                             f"[{float(a.detach().min()):.3g}, {float(a.detach().max()):.3g}]): pass softmax outputs, not scores")
    if student_attn.shape[0] != teacher_attn.shape[0] or student_attn.shape[-1] != teacher_attn.shape[-1]:
        raise ValueError(
            "student_attn and teacher_attn must share batch and seq "
            f"(got {tuple(student_attn.shape)} vs {tuple(teacher_attn.shape)})"
        )
    s, t = student_attn.float(), teacher_attn.detach().float()
    if s.shape[1] != t.shape[1]:
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor (got {type(mask).__name__})")
        if tuple(mask.shape) != (s.shape[0], s.shape[-1]):
            raise ValueError(f"mask must have shape {(s.shape[0], s.shape[-1])} (batch, seq) (got {tuple(mask.shape)})")
        mask = mask.to(device=s.device).bool()
        if not mask.any():
            raise ValueError("mask selects no position: at least one entry must be true")
    else:
        mask = torch.ones(s.shape[0], s.shape[-1], dtype=torch.bool, device=s.device)
    keys = mask[:, None, None, :].to(s.dtype)  # padded keys contribute nothing
    rows = mask[:, None, :].expand(s.shape[0], s.shape[1], s.shape[2])  # (batch, heads, query)
    if kind == "kl":
        per_pair = torch.xlogy(t, t) - t * torch.log(s.clamp(min=eps))
        per_row = (per_pair * keys).sum(-1)
        return per_row[rows].mean()
    sq = ((s - t) ** 2 * keys).sum(-1)[rows]
    n_pairs = s.shape[1] * (mask.sum(-1).float() ** 2).sum()  # heads x unmasked (query, key) pairs
    return sq.sum() / n_pairs
