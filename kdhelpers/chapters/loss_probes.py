"""Chapter 02's measurements of its losses: logit gradients, distribution distances, log-log slopes."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from kdhelpers.validate import check_float_tensor


def _check_float_tensor(name: str, x: object) -> torch.Tensor:
    """A finite floating-point tensor (validate.check_float_tensor) that is not empty."""
    x = check_float_tensor(name, x)
    if x.dim() == 0 or x.numel() == 0:
        raise ValueError(f"{name} must be a non-empty tensor with at least one dimension")
    return x


LogitLoss = Callable[[torch.Tensor], torch.Tensor]


def logit_grad(loss_fn: LogitLoss, logits: torch.Tensor) -> torch.Tensor:
    """Gradient of the scalar `loss_fn(logits)` w.r.t. `logits` (on a detached float32 copy)."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (got {type(loss_fn).__name__})")
    z = _check_float_tensor("logits", logits).detach().float().clone().requires_grad_(True)
    loss = loss_fn(z)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ValueError("loss_fn must return a scalar tensor")
    if not loss.requires_grad:
        raise ValueError("loss_fn's result does not depend on the logits it was given")
    (grad,) = torch.autograd.grad(loss, z)
    return grad


def logit_grad_norm(loss_fn: LogitLoss, logits: torch.Tensor) -> float:
    """Euclidean norm of the gradient of the scalar `loss_fn(logits)` with respect to `logits`."""
    return float(logit_grad(loss_fn, logits).norm())


def total_variation(p: torch.Tensor, q: torch.Tensor, atol: float = 1e-4) -> torch.Tensor:
    """Per-row total-variation distance 0.5 * sum |p - q| over the last dimension of probabilities."""
    p = _check_float_tensor("p", p)
    q = _check_float_tensor("q", q)
    if tuple(p.shape) != tuple(q.shape):
        raise ValueError(
            f"p and q must have the same shape (got {tuple(p.shape)} vs {tuple(q.shape)})"
        )
    for name, x in (("p", p), ("q", q)):
        if (x < 0).any():
            raise ValueError(f"{name} holds negative entries: pass probabilities, not logits")
        one = torch.ones((), dtype=x.dtype, device=x.device)
        if not torch.allclose(x.sum(dim=-1), one, atol=atol):
            raise ValueError(f"the rows of {name} must sum to 1 (pass softmax outputs, not logits)")
    return 0.5 * (p - q).abs().sum(dim=-1)


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x): the exponent b in y ~ x^b."""
    xs, ys = list(x), list(y)
    if len(xs) != len(ys):
        raise ValueError(f"x and y must have the same length (got {len(xs)} and {len(ys)})")
    if len(xs) < 2:
        raise ValueError("a slope needs at least two points")
    if any(not (math.isfinite(v) and v > 0) for v in xs + ys):
        raise ValueError("x and y must be finite and > 0 to take logarithms")
    lx = [math.log(v) for v in xs]
    ly = [math.log(v) for v in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    if sxx == 0:
        raise ValueError("x must hold at least two distinct values")
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sxx
