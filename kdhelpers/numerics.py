"""Stable arithmetic shared by the losses and divergences: the one place that decides when float32
is not enough and when a value must be refused.

The rule: the usual float32 formula runs whenever it is accurate (results for ordinary inputs
are unchanged, bit for bit); where float32 would overflow, underflow or divide 0 by 0 on finite
input, the same formula runs in float64, which holds every float32 value squared; a result that
does not fit the returned float32 raises ValueError naming what overflowed, and a module whose
weights hold NaN or Inf is refused by name. Never a NaN from finite input.
"""

from __future__ import annotations

import math

import torch

#: Largest finite float32.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
#: float32 softmax formulas are used while every row's span (max - min) / T stays below this.
FLOAT32_SAFE_SPAN = 1e30
#: float64 softmax formulas are refused beyond this span / T (logits / T would overflow float64).
FLOAT64_SAFE_SPAN = 1e300
#: A float32 sum of squares or product of norms below this has lost digits to underflow.
FLOAT32_TINY = 1e-30


def scaled_span(temperature: float, *tensors: torch.Tensor) -> float:
    """The largest (max - min) of a row of any tensor, divided by the temperature (in float64)."""
    spans = [
        float((x.detach().double().amax(-1) - x.detach().double().amin(-1)).max()) for x in tensors
    ]
    return max(spans) / temperature


def softmax_dtype(
    temperature: float, named: dict[str, torch.Tensor], dtype: torch.dtype
) -> torch.dtype:
    """The dtype in which log_softmax(x / T) of every tensor in `named` is safe: `dtype` (at least
    float32) while each row's span / T and every |x| / T stay below FLOAT32_SAFE_SPAN, else float64;
    ValueError naming the tensor when even float64 would overflow."""
    dtype = torch.promote_types(dtype, torch.float32)
    span = scaled_span(temperature, *named.values())
    # x / T itself must fit float32 too: logits near 3e38 with a small span overflow at T < 1
    largest = max(float(x.detach().double().abs().max()) for x in named.values()) / temperature
    if span <= FLOAT32_SAFE_SPAN and largest <= FLOAT32_SAFE_SPAN:
        return dtype
    if span > FLOAT64_SAFE_SPAN:
        worst = max(named, key=lambda k: scaled_span(temperature, named[k]))
        raise ValueError(
            f"{worst} spans {span * temperature:.3g} within a row, {span:.3g} after dividing by the "
            f"temperature {temperature:g}: beyond float64; rescale the logits or raise the temperature"
        )
    return torch.promote_types(dtype, torch.float64)


def to_float32(value: torch.Tensor, what: str, fix: str) -> torch.Tensor:
    """A float64 result cast to float32, or ValueError ('<what> (<value>) overflows float32: <fix>')."""
    if bool(value.detach().abs().max() > FLOAT32_MAX):
        raise ValueError(
            f"{what} ({float(value.detach().abs().max()):.3g}) overflows float32: {fix}"
        )
    return value.float()


def as_float32_input(name: str, x: torch.Tensor) -> torch.Tensor:
    """`x` (finite) in float32, or ValueError naming it when its values lie beyond float32's range."""
    if x.dtype == torch.float32:
        return x
    out = x.float()
    if x.numel() and not bool(torch.isfinite(out).all()):
        raise ValueError(
            f"{name} holds values up to {float(x.detach().abs().max()):.3g}, beyond float32 "
            f"({FLOAT32_MAX:.3g}), in which this loss computes: rescale it (e.g. standardise it)"
        )
    return out


def check_finite_module(name: str, module: object) -> None:
    """ValueError naming `name.<parameter>` when a module's parameters or buffers hold NaN or Inf."""
    if not isinstance(module, torch.nn.Module):
        return
    tensors = [*module.named_parameters(), *module.named_buffers()]
    for key, t in tensors:
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t.detach()).all()):
            raise ValueError(
                f"{name}.{key} holds NaN or Inf values: the {name} is broken (a diverged training "
                "step, or weights loaded from a damaged file); re-initialise it or load good weights"
            )


def mean_squared_error(a: torch.Tensor, b: torch.Tensor, what: str, fix: str) -> torch.Tensor:
    """mean((a - b)^2) of finite float32 tensors: float32 when that is accurate, else float64 (the
    differences squared overflowed, or underflowed to below FLOAT32_TINY), returned as float32;
    ValueError when the true mean overflows float32."""
    result = ((a - b) ** 2).mean()
    value = float(result.detach())
    if math.isfinite(value) and value >= FLOAT32_TINY:
        return result
    wide = ((a.double() - b.double()) ** 2).mean()
    return to_float32(wide, what, fix)


def cosine_rows(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """Per row (last dimension) a.b / max(|a| |b|, eps) of finite float32 tensors, as float32.

    float32 when that is accurate, else float64 (the norms overflowed, or their product fell below
    FLOAT32_TINY). A zero row has cosine 0 with every row, also with eps = 0: the limit of the
    formula as eps -> 0+, and what torch.nn.functional.cosine_similarity returns.
    """
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    n = norms.detach()
    if bool(torch.isfinite(n).all()) and (eps >= FLOAT32_TINY or bool((n >= FLOAT32_TINY).all())):
        return (a * b).sum(-1) / norms.clamp(min=eps)
    x, y = a.double(), b.double()
    denom = (x.norm(dim=-1) * y.norm(dim=-1)).clamp(min=eps)
    # a zero row: the dot product is 0 too, and 0 / 1 keeps the value (and its gradient) defined
    cos = (x * y).sum(-1) / torch.where(denom > 0, denom, torch.ones_like(denom))
    return cos.float()
