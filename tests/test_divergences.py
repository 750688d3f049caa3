"""kdhelpers.divergences: forward/reverse KL and GKD's JSD(beta) against independent references and TRL."""

import math

import pytest
import torch

from kdhelpers.divergences import (
    DivergenceConfig,
    ToyFitConfig,
    bimodal_log_density,
    fit_unimodal,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    token_divergence,
)


def logits_pair(seed=0, shape=(3, 5, 7), scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(*shape, generator=g, dtype=dtype) * scale
    t = torch.randn(*shape, generator=g, dtype=dtype) * scale
    return s, t


def reference(student, teacher, beta, mask=None, temperature=1.0):
    """Plain float64 sums over probabilities, position by position (no log-space tricks)."""
    s, t = student.double() / temperature, teacher.double() / temperature
    vocab = s.shape[-1]
    s, t = s.reshape(-1, vocab), t.reshape(-1, vocab)
    keep = torch.ones(s.shape[0], dtype=torch.bool) if mask is None else mask.reshape(-1).bool()
    total, n = 0.0, 0
    for row in range(s.shape[0]):
        if not keep[row]:
            continue
        q = [math.exp(v) for v in s[row].tolist()]
        p = [math.exp(v) for v in t[row].tolist()]
        q = [v / sum(q) for v in q]
        p = [v / sum(p) for v in p]

        def kl(a, b):
            return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True))

        if beta == 0:
            value = kl(p, q)
        elif beta == 1:
            value = kl(q, p)
        else:
            m = [beta * x + (1 - beta) * y for x, y in zip(p, q, strict=True)]
            value = beta * kl(p, m) + (1 - beta) * kl(q, m)
        total, n = total + value, n + 1
    return total / n


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_jsd_matches_probability_space_reference(beta, temperature):
    s, t = logits_pair()
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    mask[2, 1] = False
    got = generalized_jsd(s, t, beta=beta, mask=mask, temperature=temperature)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(
        reference(s, t, beta, mask, temperature), rel=1e-12, abs=1e-14
    )


def test_kls_match_reference_and_jsd_endpoints():
    s, t = logits_pair(1)
    assert float(forward_kl(s, t)) == pytest.approx(reference(s, t, 0.0), rel=1e-12)
    assert float(reverse_kl(s, t)) == pytest.approx(reference(s, t, 1.0), rel=1e-12)
    assert torch.equal(generalized_jsd(s, t, beta=0.0), forward_kl(s, t))
    assert torch.equal(generalized_jsd(s, t, beta=1.0), reverse_kl(s, t))
    # the formula itself vanishes at the ends; divided by beta (1 - beta) it tends to forward (reverse) KL
    eps = 1e-6
    assert float(generalized_jsd(s, t, beta=eps)) / eps == pytest.approx(
        float(forward_kl(s, t)), rel=1e-4
    )
    assert float(generalized_jsd(s, t, beta=1 - eps)) / eps == pytest.approx(
        float(reverse_kl(s, t)), rel=1e-4
    )


def test_exact_seeded_values():
    # float32 computation; the numbers are the float64 reference on the same (float32) logits
    s, t = logits_pair(0, dtype=torch.float32)
    assert float(forward_kl(s, t)) == pytest.approx(1.8948822004499333, abs=2e-6)
    assert float(reverse_kl(s, t)) == pytest.approx(1.9699845309781976, abs=2e-6)
    assert float(generalized_jsd(s, t, 0.5)) == pytest.approx(0.3106316113250713, abs=2e-6)
    assert forward_kl(s, t).dtype == torch.float32


def test_token_divergence_dispatch_and_config_errors():
    s, t = logits_pair(2)
    assert torch.equal(
        token_divergence(s, t, DivergenceConfig("forward", temperature=2.0)),
        forward_kl(s, t, temperature=2.0),
    )
    assert torch.equal(token_divergence(s, t, DivergenceConfig("reverse")), reverse_kl(s, t))
    assert torch.equal(
        token_divergence(s, t, DivergenceConfig("jsd", beta=0.3)), generalized_jsd(s, t, 0.3)
    )
    with pytest.raises(ValueError, match="divergence"):
        DivergenceConfig("kl")
    with pytest.raises(ValueError, match="beta"):
        DivergenceConfig("jsd", beta=1.5)
    with pytest.raises(ValueError, match="temperature"):
        DivergenceConfig("jsd", temperature=0.0)
    with pytest.raises(TypeError, match="config"):
        token_divergence(s, t, "jsd")


def test_identical_distributions_give_zero_and_shift_invariance():
    s, _ = logits_pair(3, dtype=torch.float32)
    for beta in (0.0, 0.5, 1.0):
        assert float(generalized_jsd(s, s.clone(), beta)) == pytest.approx(0.0, abs=1e-6)
        # adding a constant per position does not change a softmax
        assert float(generalized_jsd(s, s + 5.0, beta)) == pytest.approx(0.0, abs=1e-5)
    _, t = logits_pair(3, dtype=torch.float32)
    assert float(generalized_jsd(s, t, 0.5)) > 0
    # JSD(beta) is bounded by log 2 for beta = 0.5
    far = torch.tensor([[[1000.0, -1000.0]]])
    assert float(generalized_jsd(far, -far, 0.5)) == pytest.approx(math.log(2), rel=1e-6)


def test_masked_positions_do_not_count():
    s, t = logits_pair(4)
    mask = torch.zeros(3, 5, dtype=torch.long)
    mask[1, 2] = 1
    mask[2, 0] = 1
    junk_s, junk_t = s.clone(), t.clone()
    junk_s[0] = 1e3 * torch.randn(5, 7, dtype=torch.float64)
    junk_t[1, 3] = -50.0
    for beta in (0.0, 0.4, 1.0):
        a = generalized_jsd(s, t, beta, mask=mask)
        assert torch.equal(a, generalized_jsd(junk_s, junk_t, beta, mask=mask))
        kept = torch.stack([s[1, 2], s[2, 0]]), torch.stack([t[1, 2], t[2, 0]])
        assert float(a) == pytest.approx(float(generalized_jsd(*kept, beta)), rel=1e-12)


def test_gradients():
    s, t = logits_pair(5)
    s.requires_grad_(True)
    t.requires_grad_(True)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[:, -1] = False
    for beta in (0.0, 0.5, 1.0):
        s.grad = None
        generalized_jsd(s, t, beta, mask=mask).backward()
        assert t.grad is None  # the teacher is a constant
        assert torch.isfinite(s.grad).all()
        assert torch.all(s.grad[:, -1] == 0)  # masked positions get no gradient
        # a softmax is shift-invariant, so each position's gradient sums to zero
        assert torch.allclose(s.grad.sum(-1), torch.zeros(3, 5, dtype=torch.float64), atol=1e-12)
    # forward KL's gradient wrt the student's logits is (q - p) / (T * positions)
    s.grad = None
    forward_kl(s, t, mask=mask, temperature=2.0).backward()
    q, p = torch.softmax(s.detach() / 2, -1), torch.softmax(t.detach() / 2, -1)
    expected = (q - p) / (2.0 * int(mask.sum())) * mask[..., None]
    assert torch.allclose(s.grad, expected, atol=1e-12)
    # and finite-difference check of JSD(0.3) at one logit
    s2 = s.detach().clone()
    eps = 1e-6
    s2.requires_grad_(True)
    generalized_jsd(s2, t.detach(), 0.3, temperature=1.5).backward()
    up, down = s.detach().clone(), s.detach().clone()
    up[1, 2, 3] += eps
    down[1, 2, 3] -= eps
    numeric = (
        generalized_jsd(up, t.detach(), 0.3, temperature=1.5)
        - generalized_jsd(down, t.detach(), 0.3, temperature=1.5)
    ) / (2 * eps)
    assert float(s2.grad[1, 2, 3]) == pytest.approx(float(numeric), rel=1e-6)


def test_stable_at_extreme_logits():
    s, t = logits_pair(6, dtype=torch.float32)
    s, t = s * 1e4, t * 1e4
    for beta in (0.0, 0.5, 1.0):
        value = generalized_jsd(s, t, beta)
        assert torch.isfinite(value) and float(value) >= 0


def test_argument_errors_name_the_argument():
    s, t = logits_pair(7)
    with pytest.raises(ValueError, match="teacher_logits"):
        forward_kl(s, t[..., :-1])
    with pytest.raises(TypeError, match="student_logits"):
        forward_kl(s.long(), t)
    with pytest.raises(ValueError, match="mask"):
        forward_kl(s, t, mask=torch.ones(3, 4))
    with pytest.raises(ValueError, match="mask"):
        forward_kl(s, t, mask=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="mask"):
        forward_kl(s, t, mask=torch.full((3, 5), 2))
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(s, t, beta=-0.1)
    with pytest.raises(ValueError, match="temperature"):
        reverse_kl(s, t, temperature=-1.0)
    with pytest.raises(ValueError, match="teacher_logits"):
        forward_kl(s, t * math.nan)


# ---------------------------------------------------------------- TRL's own implementation


@pytest.mark.parametrize("beta", [0.0, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_trl_generalized_jsd_loss(beta, temperature):
    pytest.importorskip("trl")
    trainer = _trl_gkd_trainer()
    s, t = logits_pair(8, shape=(2, 6, 11), scale=3.0, dtype=torch.float32)
    labels = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(1))
    labels[0, :2] = -100  # prompt
    labels[1, 4:] = -100  # padding
    theirs = trainer.generalized_jsd_loss(s, t, labels=labels, beta=beta, temperature=temperature)
    ours = generalized_jsd(s, t, beta=beta, mask=labels != -100, temperature=temperature)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5, abs=1e-7)
    # without labels TRL's 'batchmean' divides the sum over positions and vocabulary by the batch
    # size only (not by batch * seq): ours, a mean over all positions, is that / seq_len
    theirs_all = trainer.generalized_jsd_loss(s, t, beta=beta, temperature=temperature)
    ours_all = generalized_jsd(s, t, beta, temperature=temperature)
    assert float(ours_all) * s.shape[1] == pytest.approx(float(theirs_all), rel=1e-5, abs=1e-7)


def _trl_gkd_trainer():
    """TRL's GKDTrainer class (its location moved between TRL versions)."""
    try:
        from trl import GKDTrainer
    except ImportError:  # TRL >= 0.2x (1.16 here) keeps it under trl.experimental.gkd
        from trl.experimental.gkd import GKDTrainer
    return GKDTrainer


# ---------------------------------------------------------------- toy: mode covering vs mode seeking


def test_bimodal_target_is_a_density():
    config = ToyFitConfig()
    grid = torch.linspace(-10, 10, 4001, dtype=torch.float64)
    dens = bimodal_log_density(grid, config).exp()
    assert float(dens.sum() * (grid[1] - grid[0])) == pytest.approx(1.0, abs=1e-9)
    assert float(dens[2000 + 400]) == pytest.approx(float(dens[2000 - 400]), rel=1e-12)  # symmetric


def test_forward_covers_modes_reverse_seeks_one():
    config = ToyFitConfig(grid_points=401, steps=600, lr=0.05)
    fwd = fit_unimodal(config, DivergenceConfig("forward"))
    rev = fit_unimodal(config, DivergenceConfig("reverse"))
    # forward KL: moment matching, mean 0 and std sqrt(2^2 + 0.5^2) = 2.06 (up to grid and steps)
    assert abs(fwd["mean"]) < 0.02
    assert fwd["std"] == pytest.approx(math.sqrt(config.mode**2 + config.mode_std**2), abs=0.02)
    # reverse KL: the mode nearest the start (+2), its width, and loss log 2 (half the mass missed)
    assert rev["mean"] == pytest.approx(config.mode, abs=0.02)
    assert rev["std"] == pytest.approx(config.mode_std, abs=0.02)
    assert rev["loss"] == pytest.approx(math.log(2), abs=1e-3)
    mirrored = fit_unimodal(
        ToyFitConfig(grid_points=401, steps=600, init_mean=-0.5), DivergenceConfig("reverse")
    )
    assert mirrored["mean"] == pytest.approx(-rev["mean"], abs=1e-6)


def test_toy_config_errors():
    with pytest.raises(ValueError, match="grid_max"):
        ToyFitConfig(grid_min=1.0, grid_max=0.0)
    with pytest.raises(ValueError, match="steps"):
        ToyFitConfig(steps=0)
    with pytest.raises(TypeError, match="divergence"):
        fit_unimodal(ToyFitConfig(), "reverse")
