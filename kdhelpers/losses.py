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
