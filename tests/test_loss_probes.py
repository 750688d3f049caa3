"""Measurement helpers against closed forms: softmax gradients, known distances, power laws."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdhelpers.chapters.loss_probes import (
    logit_grad,
    logit_grad_norm,
    loglog_slope,
    total_variation,
)
from kdhelpers.losses import kd_kl


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 4, generator=g) * 2, torch.randn(6, 4, generator=g) * 2


def test_logit_grad_of_cross_entropy_is_softmax_minus_onehot(logits):
    s, _ = logits
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    grad = logit_grad(lambda z: F.cross_entropy(z, y), s)
    want = (F.softmax(s, dim=-1) - F.one_hot(y, 4).float()) / s.shape[0]
    torch.testing.assert_close(grad, want)
    norm = logit_grad_norm(lambda z: F.cross_entropy(z, y), s)
    assert norm == pytest.approx(float(want.norm()), rel=1e-6)


def test_logit_grad_of_kd_term_is_t_times_prob_difference(logits):
    s, t = logits
    temp = 3.0
    grad = logit_grad(lambda z: kd_kl(z, t, temperature=temp), s)
    want = temp * (F.softmax(s / temp, dim=-1) - F.softmax(t / temp, dim=-1)) / s.shape[0]
    torch.testing.assert_close(grad, want)


def test_logit_grad_leaves_the_input_untouched(logits):
    s, _ = logits
    before = s.clone()
    logit_grad(lambda z: (z**2).sum(), s)
    assert not s.requires_grad and s.grad is None
    torch.testing.assert_close(s, before)


def test_logit_grad_rejects_bad_input(logits):
    s, _ = logits
    with pytest.raises(TypeError, match="callable"):
        logit_grad("loss", s)
    with pytest.raises(TypeError, match="floating"):
        logit_grad(lambda z: z.sum(), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="scalar"):
        logit_grad(lambda z: z * 2, s)
    with pytest.raises(ValueError, match="depend"):
        logit_grad(lambda z: torch.tensor(1.0), s)
    with pytest.raises(ValueError, match="NaN"):
        logit_grad(lambda z: z.sum(), torch.tensor([[1.0, float("nan")]]))


def test_total_variation_known_values():
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    q = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.2, 0.3, 0.5]])
    torch.testing.assert_close(total_variation(p, q), torch.tensor([1.0, 0.5, 0.0]))
    torch.testing.assert_close(total_variation(q, p), total_variation(p, q))


def test_total_variation_rejects_logits_and_shape_mismatch(logits):
    s, t = logits
    with pytest.raises(ValueError, match="negative|sum to 1"):
        total_variation(s, t)
    with pytest.raises(ValueError, match="sum to 1"):
        total_variation(torch.full((2, 3), 0.5), torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="same shape"):
        total_variation(F.softmax(s, -1), F.softmax(t[:, :3], -1))


def test_loglog_slope_recovers_power_laws():
    xs = [1.0, 2.0, 4.0, 8.0, 16.0]
    assert loglog_slope(xs, [3 * x**-2 for x in xs]) == pytest.approx(-2.0)
    assert loglog_slope(xs, [0.5 * x**1.5 for x in xs]) == pytest.approx(1.5)
    assert loglog_slope(xs, [7.0] * 5) == pytest.approx(0.0, abs=1e-12)
    assert math.isfinite(loglog_slope([1, 10], [1, 3]))


def test_loglog_slope_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        loglog_slope([1, 2], [1])
    with pytest.raises(ValueError, match="two points"):
        loglog_slope([1], [1])
    with pytest.raises(ValueError, match="> 0"):
        loglog_slope([1, 2], [1, 0])
    with pytest.raises(ValueError, match="distinct"):
        loglog_slope([2, 2], [1, 3])
