"""Token-level divergences between teacher and student next-token distributions (on-policy KD).

Forward KL(teacher || student) is what chapter 10's token-level KD minimises (mode-covering);
reverse KL(student || teacher) is MiniLLM's objective (Gu et al. 2024, mode-seeking); the
generalised Jensen-Shannon divergence JSD(beta) of GKD (Agarwal et al. 2024) interpolates.

Conventions (they match TRL's `GKDTrainer.generalized_jsd_loss`, checked by
tests/test_divergences.py against TRL itself):

* p = softmax(teacher_logits / T) and q = softmax(student_logits / T); the same temperature for
  both and no T^2 factor (unlike `kdhelpers.losses.kd_kl`).
* JSD(beta) = beta * KL(p || m) + (1 - beta) * KL(q || m) with the mixture m = beta p + (1 - beta) q.
  beta = 0 is *defined* as forward KL(p || q) and beta = 1 as reverse KL(q || p), as in TRL. (The
  formula itself tends to 0 at both ends; JSD(beta) / beta -> KL(p || q) as beta -> 0 and
  JSD(beta) / (1 - beta) -> KL(q || p) as beta -> 1, so the special cases keep the direction.)
* Reduction: sum over the vocabulary, mean over the positions the mask keeps (padding, prompts
  excluded); without a mask, mean over all positions.
* Everything is computed in log-space (log_softmax, the mixture via logsumexp), in float32 or
  the input's wider dtype (float64 inside where logits / T would overflow float32, e.g. logits
  near 3e38; a result beyond float32 raises ValueError). The teacher's logits are constants
  (detached).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from kdhelpers.numerics import softmax_dtype, to_float32
from kdhelpers.validate import (
    check_float_tensor,
    check_int,
    check_number,
    check_temperature,
    to_device_of,
)

#: The divergences `token_divergence` knows.
DIVERGENCES = ("forward", "reverse", "jsd")
Divergence = Literal["forward", "reverse", "jsd"]


def _check_pair(
    student_logits: object, teacher_logits: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated (student, teacher) logits of one shape (..., vocab) on the student's device."""
    s = check_float_tensor("student_logits", student_logits)
    t = check_float_tensor("teacher_logits", teacher_logits)
    if s.dim() < 1 or s.shape[-1] < 2:
        raise ValueError(
            f"student_logits must have a vocabulary dimension of size >= 2 last "
            f"(got shape {tuple(s.shape)})"
        )
    if tuple(s.shape) != tuple(t.shape):
        raise ValueError(
            f"teacher_logits must have the shape of student_logits {tuple(s.shape)} "
            f"(got {tuple(t.shape)}): both must score the same positions and vocabulary"
        )
    return s, to_device_of("teacher_logits", t, "student_logits", s)


def _check_positions_mask(mask: object, logits: torch.Tensor) -> torch.Tensor | None:
    """None, or a 0/1 (bool) mask of shape logits.shape[:-1] selecting at least one position, as bool."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None (got {type(mask).__name__})")
    if tuple(mask.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"mask must have shape {tuple(logits.shape[:-1])} (the logits without the "
            f"vocabulary dimension; got {tuple(mask.shape)})"
        )
    mask = to_device_of("mask", mask, "student_logits", logits)
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must hold only 0 and 1 (or booleans): 1 keeps a position")
        mask = mask.bool()
    if not bool(mask.any()):
        raise ValueError("mask selects no position: at least one entry must be true")
    return mask


def _check_beta(beta: object) -> float:
    """A number in [0, 1]."""
    return check_number("beta", beta, 0.0, 1.0)


def _log_probs(logits: torch.Tensor, temperature: float, wide: bool) -> torch.Tensor:
    """log softmax(logits / T) in float32 or wider (float64 when `wide`)."""
    dtype = torch.promote_types(logits.dtype, torch.float64 if wide else torch.float32)
    return F.log_softmax(logits.to(dtype) / temperature, dim=-1)


def _log_prob_pair(
    s: torch.Tensor, t: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """(log q, log p) of the student and the (detached) teacher, and the dtype the result is returned in.

    float32 or the inputs' wider dtype, as always; float64 inside when a row's span / T would overflow
    float32 (logits near 3e38), where float32 gives -inf log-probabilities and 0 * inf = NaN.
    """
    out = torch.promote_types(torch.promote_types(s.dtype, t.dtype), torch.float32)
    wide = softmax_dtype(temperature, {"student_logits": s, "teacher_logits": t}, out) != out
    return _log_probs(s, temperature, wide), _log_probs(t.detach(), temperature, wide), out


def _result(value: torch.Tensor, dtype: torch.dtype, what: str) -> torch.Tensor:
    """The divergence in the dtype it is returned in (ValueError when it overflows that dtype)."""
    if value.dtype == dtype:
        return value
    return to_float32(
        value,
        what,
        "the logits are too far apart for this temperature; rescale them or raise the temperature",
    )


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position: sum_v p_v (log p_v - log q_v), both given as log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _reduce(per_position: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the masked-in positions (all positions without a mask)."""
    return per_position.mean() if mask is None else per_position[mask].mean()


def _jsd_positions(log_q: torch.Tensor, log_p: torch.Tensor, beta: float) -> torch.Tensor:
    """JSD(beta) per position in TRL's convention (beta=0 forward KL(p||q), beta=1 reverse KL(q||p))."""
    if beta == 0.0:
        return _kl(log_p, log_q)
    if beta == 1.0:
        return _kl(log_q, log_p)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log1p(-beta)]), dim=0)
    return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)


def forward_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """KL(teacher_T || student_T) summed over the vocabulary, averaged over masked-in positions (mode-covering)."""
    s, t = _check_pair(student_logits, teacher_logits)
    mask = _check_positions_mask(mask, s)
    temperature = check_temperature("temperature", temperature)
    log_q, log_p, dtype = _log_prob_pair(s, t, temperature)
    return _result(_reduce(_kl(log_p, log_q), mask), dtype, "the forward KL")


def reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """KL(student_T || teacher_T) summed over the vocabulary, averaged over masked-in positions (mode-seeking)."""
    s, t = _check_pair(student_logits, teacher_logits)
    mask = _check_positions_mask(mask, s)
    temperature = check_temperature("temperature", temperature)
    log_q, log_p, dtype = _log_prob_pair(s, t, temperature)
    return _result(_reduce(_kl(log_q, log_p), mask), dtype, "the reverse KL")


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 0.5,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """GKD's JSD(beta) = beta KL(p||m) + (1-beta) KL(q||m), m = beta p + (1-beta) q (p teacher, q
    student; TRL's convention).

    beta = 0 gives forward KL(teacher || student) and beta = 1 reverse KL(student || teacher),
    exactly as TRL's `generalized_jsd_loss`; sum over the vocabulary, mean over masked-in positions.
    """
    s, t = _check_pair(student_logits, teacher_logits)
    mask = _check_positions_mask(mask, s)
    beta = _check_beta(beta)
    temperature = check_temperature("temperature", temperature)
    log_q, log_p, dtype = _log_prob_pair(s, t, temperature)
    return _result(_reduce(_jsd_positions(log_q, log_p, beta), mask), dtype, "the JSD")


@dataclass(frozen=True)
class DivergenceConfig:
    """Which divergence ('forward', 'reverse' or 'jsd'), GKD's beta (jsd only) and the temperature."""

    divergence: Divergence = "jsd"
    beta: float = 0.5
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES} (got {self.divergence!r})")
        _check_beta(self.beta)
        check_temperature("temperature", self.temperature)


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    config: DivergenceConfig,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The divergence `config` names between teacher and student logits (vocab summed, masked positions averaged)."""
    if not isinstance(config, DivergenceConfig):
        raise TypeError(f"config must be a DivergenceConfig (got {type(config).__name__})")
    if config.divergence == "forward":
        return forward_kl(student_logits, teacher_logits, mask, config.temperature)
    if config.divergence == "reverse":
        return reverse_kl(student_logits, teacher_logits, mask, config.temperature)
    return generalized_jsd(student_logits, teacher_logits, config.beta, mask, config.temperature)


# ---------------------------------------------------------------- toy: mode covering vs mode seeking


@dataclass(frozen=True)
class ToyFitConfig:
    """A 1-d Gaussian student fitted on a grid to an equal mixture of two Gaussians at +-`mode`."""

    mode: float = 2.0
    mode_std: float = 0.5
    grid_min: float = -8.0
    grid_max: float = 8.0
    grid_points: int = 801
    init_mean: float = 0.5
    init_std: float = 1.0
    steps: int = 1500
    lr: float = 0.05

    def __post_init__(self) -> None:
        check_number("mode", self.mode, 0.0, strict_min=True)
        check_number("mode_std", self.mode_std, 0.0, strict_min=True)
        check_number("grid_min", self.grid_min)
        if check_number("grid_max", self.grid_max) <= self.grid_min:
            raise ValueError(f"grid_max ({self.grid_max}) must exceed grid_min ({self.grid_min})")
        check_int("grid_points", self.grid_points, 3)
        check_number("init_mean", self.init_mean)
        check_number("init_std", self.init_std, 0.0, strict_min=True)
        check_int("steps", self.steps, 1)
        check_number("lr", self.lr, 0.0, strict_min=True)


def bimodal_log_density(x: torch.Tensor, config: ToyFitConfig) -> torch.Tensor:
    """log of 0.5 N(-mode, mode_std^2) + 0.5 N(mode, mode_std^2) at the points x (float64)."""
    if not isinstance(config, ToyFitConfig):
        raise TypeError(f"config must be a ToyFitConfig (got {type(config).__name__})")
    x = check_float_tensor("x", x).double()
    comps = torch.stack(
        [
            _gauss_log_density(x, -config.mode, config.mode_std),
            _gauss_log_density(x, config.mode, config.mode_std),
        ]
    )
    return torch.logsumexp(comps, dim=0) + math.log(0.5)


def _gauss_log_density(
    x: torch.Tensor, mean: torch.Tensor | float, std: torch.Tensor | float
) -> torch.Tensor:
    """log N(x; mean, std^2)."""
    std = torch.as_tensor(std, dtype=x.dtype)
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)


def fit_unimodal(config: ToyFitConfig, divergence: DivergenceConfig) -> dict[str, float]:
    """Fit a Gaussian's mean and std to the bimodal target by Adam on `divergence`; returns {'mean', 'std', 'loss'}.

    The densities are discretised on the grid and treated as logits over grid points (a categorical
    'vocabulary'), so the same `token_divergence` as for language models is minimised. Forward KL
    covers both modes (mean near 0, std near sqrt(mode^2 + mode_std^2)); reverse KL seeks the mode
    nearest `init_mean` (mean near +-mode, std near mode_std). Deterministic (no randomness).
    """
    if not isinstance(config, ToyFitConfig):
        raise TypeError(f"config must be a ToyFitConfig (got {type(config).__name__})")
    if not isinstance(divergence, DivergenceConfig):
        raise TypeError(f"divergence must be a DivergenceConfig (got {type(divergence).__name__})")
    grid = torch.linspace(config.grid_min, config.grid_max, config.grid_points, dtype=torch.float64)
    target = bimodal_log_density(grid, config)
    mean = torch.tensor(config.init_mean, dtype=torch.float64, requires_grad=True)
    log_std = torch.tensor(math.log(config.init_std), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([mean, log_std], lr=config.lr)
    loss = torch.tensor(math.nan)
    for _ in range(config.steps):
        student = _gauss_log_density(grid, mean, log_std.exp())
        loss = token_divergence(student[None], target[None], divergence)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {
        "mean": float(mean.detach()),
        "std": float(log_std.detach().exp()),
        "loss": float(loss.detach()),
    }
