"""kdhelpers.stats against independent references: scipy.stats, statsmodels, hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats as st
import torch
from statsmodels.stats.contingency_tables import mcnemar

from kdhelpers.stats import (
    COURSE_MIN_SEEDS,
    Comparison,
    McNemarResult,
    SeedSummary,
    compare_seeds,
    comparison_sentence,
    correctness,
    mcnemar_test,
    over_seeds,
    paired_bootstrap,
)

A = {0: 0.871, 1: 0.866, 2: 0.880}
B = {0: 0.850, 1: 0.849, 2: 0.851}


def _pair(n: int, seed: int, pa: float = 0.85, pb: float = 0.80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(n) < pa, rng.random(n) < pb


# ---- over seeds -------------------------------------------------------------------------------


def test_over_seeds_is_mean_and_sample_std() -> None:
    s = over_seeds({0: 0.80, 1: 0.82, 2: 0.87})
    assert isinstance(s, SeedSummary)
    assert s.mean == pytest.approx(0.83)
    # by hand: deviations -0.03, -0.01, 0.04 -> (0.0009 + 0.0001 + 0.0016) / (3 - 1) = 0.0013
    assert s.std == pytest.approx(math.sqrt(0.0013))
    assert s.std == pytest.approx(st.tstd([0.80, 0.82, 0.87]))
    assert (s.n, s.seeds) == (3, [0, 1, 2])
    assert s.as_dict() == {"mean": s.mean, "std": s.std, "n": 3, "seeds": [0, 1, 2]}


def test_over_seeds_refuses_one_seed_and_bad_scores() -> None:
    with pytest.raises(ValueError, match=f"at least 2 .*asks for {COURSE_MIN_SEEDS}"):
        over_seeds({0: 0.8})
    with pytest.raises(TypeError, match="scores must map each seed"):
        over_seeds([0.8, 0.9])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"scores\[1\] must be a finite number"):
        over_seeds({0: 0.8, 1: float("nan")})
    with pytest.raises(TypeError, match="scores seed must be an int"):
        over_seeds({"a": 0.8, "b": 0.9})  # type: ignore[dict-item]


# ---- paired interval over seeds ---------------------------------------------------------------


def test_compare_seeds_matches_scipy_paired_t() -> None:
    c = compare_seeds("KD vs labels", A, B)
    ref = st.ttest_rel([A[s] for s in range(3)], [B[s] for s in range(3)])
    ci = ref.confidence_interval(0.95)
    assert c.ci_low == pytest.approx(ci.low, abs=1e-12)
    assert c.ci_high == pytest.approx(ci.high, abs=1e-12)
    assert c.p_value == pytest.approx(ref.pvalue, abs=1e-12)
    assert c.diff == pytest.approx(0.022333333333333334)
    assert c.a == pytest.approx(0.8723333333333333) and c.b == pytest.approx(0.85)
    assert c.seeds == [0, 1, 2] and c.confidence == 0.95
    assert c.method == "paired t-interval over 3 seeds (2 df)"
    assert (
        comparison_sentence(c) == "KD beats labels by 2.2 points, 95% interval [0.7, 3.8], 3 seeds"
    )  # docs


def test_compare_seeds_by_hand() -> None:
    # d = 0.02, 0.04 -> mean 0.03, sd = sqrt(0.0002) = 0.014142, se = 0.01, t(0.975, 1) = 12.7062047
    c = compare_seeds(
        "A vs B", {5: 0.82, 9: 0.84}, {9: 0.80, 5: 0.80}
    )  # pairing by seed, not by order
    assert c.diff == pytest.approx(0.03)
    assert c.ci_low == pytest.approx(0.03 - 0.127062047361747, abs=1e-9)
    assert c.ci_high == pytest.approx(0.03 + 0.127062047361747, abs=1e-9)
    assert c.seeds == [5, 9]


def test_compare_seeds_other_confidence_and_zero_spread() -> None:
    c90 = compare_seeds("A vs B", A, B, confidence=0.9)
    ref = st.ttest_rel(list(A.values()), list(B.values())).confidence_interval(0.9)
    assert (c90.ci_low, c90.ci_high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert c90.as_dict()["confidence"] == 0.9
    same = compare_seeds("A vs B", {0: 0.9, 1: 0.8}, {0: 0.9, 1: 0.8})
    assert (same.diff, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_compare_seeds_refusals() -> None:
    with pytest.raises(ValueError, match=r"1 seed\(s\).*at least 2 \(the course asks for 3\)"):
        compare_seeds("A vs B", {0: 0.9}, {0: 0.8})
    with pytest.raises(
        ValueError, match=r"same seeds.*only in scores_a \[2\], only in scores_b \[3\]"
    ):
        compare_seeds("A vs B", {0: 0.9, 1: 0.9, 2: 0.9}, {0: 0.8, 1: 0.8, 3: 0.8})
    with pytest.raises(ValueError, match="confidence"):
        compare_seeds("A vs B", A, B, confidence=95)
    with pytest.raises(ValueError, match="confidence"):
        compare_seeds("A vs B", A, B, confidence=1.0)
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        compare_seeds("", A, B)


# ---- paired bootstrap on one test set ---------------------------------------------------------


def test_paired_bootstrap_matches_scipy_percentile_bootstrap() -> None:
    ca, cb = _pair(300, seed=1)
    c = paired_bootstrap("KD vs labels", ca, cb, n_resamples=2000, seed=7)
    ref = st.bootstrap(
        (ca.astype(float), cb.astype(float)),
        lambda x, y, axis=-1: x.mean(axis) - y.mean(axis),
        paired=True,
        vectorized=True,
        n_resamples=2000,
        method="percentile",
        rng=np.random.default_rng(7),
    )
    assert c.ci_low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert c.ci_high == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    # the exact seeded values (300 examples: 262 vs 238 right)
    assert (c.a, c.b, c.diff) == pytest.approx((262 / 300, 238 / 300, 0.08))
    assert (c.ci_low, c.ci_high) == pytest.approx((5 / 300, 42 / 300))
    assert c.method == "paired percentile bootstrap over 300 test examples (2000 resamples, seed 7)"
    assert c.p_value is None and c.seeds == []


def test_paired_bootstrap_chunked_draws_equal_one_draw() -> None:
    """Large test sets are resampled in chunks; the random stream must equal scipy's single draw."""
    ca, cb = _pair(5000, seed=3, pa=0.9, pb=0.89)
    c = paired_bootstrap("A vs B", ca, cb, n_resamples=1000, seed=11, confidence=0.9)  # 3 chunks
    d = ca.astype(float) - cb.astype(float)
    ref = st.bootstrap(
        (d,),
        np.mean,
        vectorized=True,
        n_resamples=1000,
        method="percentile",
        confidence_level=0.9,
        rng=np.random.default_rng(11),
    ).confidence_interval
    assert (c.ci_low, c.ci_high) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_paired_bootstrap_from_predictions_and_labels() -> None:
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 1, 1, 0, 2])
    pred_a = torch.tensor([0, 1, 2, 1, 0, 2, 1, 0, 0, 2])  # 9/10
    pred_b = torch.tensor([0, 1, 0, 1, 0, 1, 1, 0, 0, 2])  # 7/10
    c = paired_bootstrap(
        "A vs B", pred_a, pred_b, labels=labels, n_resamples=500, seed=0, seeds=[4]
    )
    c2 = paired_bootstrap(
        "A vs B",
        correctness(pred_a, labels),
        correctness(pred_b, labels),
        n_resamples=500,
        seed=0,
        seeds=[4],
    )
    assert c == c2
    assert (c.a, c.b, c.diff, c.seeds) == (0.9, 0.7, pytest.approx(0.2), [4])
    # B is never right where A is wrong, so every resampled difference is >= 0
    assert 0.0 <= c.ci_low <= c.diff <= c.ci_high <= 0.5


def test_paired_bootstrap_identical_models_give_a_zero_interval() -> None:
    ca, _ = _pair(50, seed=0)
    c = paired_bootstrap("A vs A", ca, ca.astype(int), n_resamples=200)
    assert (c.diff, c.ci_low, c.ci_high) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_refusals() -> None:
    ca, cb = _pair(20, seed=0)
    with pytest.raises(ValueError, match="same test examples.*20 and 19"):
        paired_bootstrap("A vs B", ca, cb[:-1])
    with pytest.raises(TypeError, match="predicted class ids"):
        paired_bootstrap("A vs B", ca.astype(float) * 0.9, cb)
    with pytest.raises(ValueError, match="correct_a must hold 0/1.*labels="):
        paired_bootstrap("A vs B", np.arange(20), cb)
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap("A vs B", ca, cb, n_resamples=10)
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap("A vs B", [], [])
    with pytest.raises(ValueError, match="1-d"):
        paired_bootstrap("A vs B", ca.reshape(4, 5), cb.reshape(4, 5))
    with pytest.raises(ValueError, match="predictions and labels"):
        correctness([0, 1, 1], [0, 1])
    with pytest.raises(TypeError, match="seed must be an int"):
        paired_bootstrap("A vs B", ca, cb, seed=1.5)


# ---- McNemar ----------------------------------------------------------------------------------


def _table(ca: np.ndarray, cb: np.ndarray) -> np.ndarray:
    return np.array([[(ca & cb).sum(), (ca & ~cb).sum()], [(~ca & cb).sum(), (~ca & ~cb).sum()]])


@pytest.mark.parametrize(
    ("n", "seed", "pb"), [(300, 1, 0.8), (40, 2, 0.8), (200, 5, 0.6), (12, 5, 0.8)]
)
def test_mcnemar_matches_statsmodels(n: int, seed: int, pb: float) -> None:
    """Discordant counts differ in every case (equal counts: see the floor test below)."""
    ca, cb = _pair(n, seed, pb=pb)
    table = _table(ca, cb)
    exact, chi2 = mcnemar_test(ca, cb, exact=True), mcnemar_test(ca, cb, exact=False)
    ref_exact = mcnemar(table, exact=True)
    ref_chi2 = mcnemar(table, exact=False, correction=True)
    assert exact.statistic == ref_exact.statistic
    assert exact.p_value == pytest.approx(ref_exact.pvalue, rel=1e-12)
    assert chi2.statistic == pytest.approx(ref_chi2.statistic, rel=1e-12)
    assert chi2.p_value == pytest.approx(ref_chi2.pvalue, rel=1e-12)
    assert (exact.only_a, exact.only_b) == (table[0, 1], table[1, 0])


def test_mcnemar_by_hand_and_automatic_choice() -> None:
    # 10 discordant pairs, 8 of them for A: p = 2 * P(X <= 2 | Bin(10, 1/2)) = 2 * 56 / 1024
    ca = np.array([1] * 8 + [0] * 2 + [1] * 5, dtype=bool)
    cb = np.array([0] * 8 + [1] * 2 + [1] * 5, dtype=bool)
    r = mcnemar_test(ca, cb)
    assert isinstance(r, McNemarResult)
    assert (r.only_a, r.only_b, r.statistic, r.method) == (8, 2, 2.0, "exact binomial")
    assert r.p_value == pytest.approx(112 / 1024)
    big = mcnemar_test(np.array([1] * 20 + [0] * 10, bool), np.array([0] * 20 + [1] * 10, bool))
    assert big.method == "chi-square with continuity correction"
    assert big.statistic == pytest.approx(81 / 30)  # (|20 - 10| - 1)^2 / 30
    assert big.as_dict()["only_a"] == 20


def test_mcnemar_equal_and_empty_discordance() -> None:
    same = np.array([1, 0, 1], dtype=bool)
    assert mcnemar_test(same, same).p_value == 1.0
    assert mcnemar_test(same, same, exact=False).p_value == 1.0
    # equal counts: the corrected statistic is floored at 0 (statsmodels gives 1 / (b + c) here)
    even = mcnemar_test(
        np.array([1] * 15 + [0] * 15, bool), np.array([0] * 15 + [1] * 15, bool), exact=False
    )
    assert (even.statistic, even.p_value) == (0.0, 1.0)
    with pytest.raises(TypeError, match="exact must be True, False or None"):
        mcnemar_test(same, same, exact="yes")  # type: ignore[arg-type]


# ---- Comparison record and sentence -----------------------------------------------------------


def test_as_dict_has_exactly_the_schema_keys() -> None:
    c = Comparison("KD vs labels", 0.87, 0.85, 0.02, 0.01, 0.03, [0, 1, 2])
    assert list(c.as_dict()) == ["name", "a", "b", "diff", "ci_low", "ci_high", "seeds"]
    full = compare_seeds("KD vs labels", A, B).as_dict()
    assert list(full) == [
        "name",
        "a",
        "b",
        "diff",
        "ci_low",
        "ci_high",
        "seeds",
        "p_value",
        "method",
    ]
    assert (
        json.loads(json.dumps({"details": {"comparisons": [full]}}))["details"]["comparisons"][0]
        == full
    )


@pytest.mark.parametrize(
    ("diff", "low", "high", "expected"),
    [
        (0.023, 0.011, 0.035, "KD beats labels by 2.3 points, 95% interval [1.1, 3.5], 3 seeds"),
        (
            0.004,
            -0.008,
            0.016,
            "KD differs from labels by +0.4 points, 95% interval [-0.8, 1.6], 3 seeds: "
            "not distinguishable from zero",
        ),
        (
            -0.023,
            -0.035,
            -0.011,
            "KD trails labels by 2.3 points, 95% interval [-3.5, -1.1], 3 seeds",
        ),
        (
            0.01,
            0.0,
            0.02,
            "KD differs from labels by +1.0 points, 95% interval [0.0, 2.0], 3 seeds: "
            "not distinguishable from zero",
        ),
    ],
)
def test_comparison_sentence(diff: float, low: float, high: float, expected: str) -> None:
    c = Comparison("KD vs labels", 0.87, 0.87 - diff, diff, low, high, [0, 1, 2])
    assert comparison_sentence(c) == expected


def test_comparison_sentence_labels_levels_and_single_runs() -> None:
    c = compare_seeds("kd_vs_labels", A, B, confidence=0.9)
    assert comparison_sentence(c, "KD", "labels").startswith(
        "KD beats labels by 2.2 points, 90% interval ["
    )
    boot = paired_bootstrap(
        "KD vs labels", *_pair(300, seed=1), n_resamples=2000, seed=7, seeds=[0]
    )
    assert comparison_sentence(boot) == (
        "KD beats labels by 8.0 points, 95% interval [1.7, 14.0], 1 seed, test-set interval only"
    )
    with pytest.raises(ValueError, match="not of the form 'A vs B': pass a_label and b_label"):
        comparison_sentence(c)
    with pytest.raises(TypeError, match="must be a Comparison"):
        comparison_sentence(c.as_dict())  # type: ignore[arg-type]


# ---------------------------------------------------------------- raters' split-half agreement


def test_split_half_agreement_of_unanimous_and_of_random_raters():
    from kdhelpers.stats import split_half_agreement

    # unanimous raters: every half has the whole panel's share, so the halves agree perfectly
    unanimous = [[2, 3, 1], [-1, -2, -4], [1, 2, 3, 4], [-3, -1], [0, 0], [2, 1]]
    got = split_half_agreement(unanimous, n_splits=3)
    assert got.half_spearman == pytest.approx(1.0)
    assert got.full_reliability == pytest.approx(1.0) and got.ceiling == pytest.approx(1.0)
    assert (got.n_items, got.n_splits) == (6, 3)
    # coin-flip raters with the same 50% rate everywhere: the halves share nothing but chance
    rng = np.random.default_rng(3)
    coins = [np.where(rng.random(20) < 0.5, 1, -1) for _ in range(3000)]
    assert abs(split_half_agreement(coins, n_splits=3).half_spearman) < 0.05


def test_split_half_ceiling_matches_the_correlation_with_the_truth():
    """Simulated crowd: each item has a true positive rate; 20 raters vote +1/-1 with it. The ceiling
    (sqrt of the Spearman-Brown reliability) estimates how well the true rate correlates with the
    panel's observed share."""
    from kdhelpers.stats import split_half_agreement

    rng = np.random.default_rng(0)
    truth = rng.beta(0.7, 0.7, size=2000)
    ratings = [np.where(rng.random(20) < p, 1, -1) for p in truth]
    shares = np.array([(r > 0).mean() for r in ratings])
    target = st.spearmanr(truth, shares).statistic
    got = split_half_agreement(ratings, n_splits=5, seed=1)
    assert abs(got.ceiling - target) < 0.02, (got, target)
    assert got.half_spearman < got.full_reliability < 1


def test_split_half_agreement_refuses_bad_input():
    from kdhelpers.stats import split_half_agreement

    with pytest.raises(ValueError, match="at least 3 items"):
        split_half_agreement([[1, 2], [1, -1]])
    with pytest.raises(ValueError, match="at least 2 ratings"):
        split_half_agreement([[1, 2], [1], [2, -1]])
    with pytest.raises(ValueError, match="n_splits"):
        split_half_agreement([[1, 2]] * 3, n_splits=0)


def test_spearman_interval_against_scipy_and_coverage():
    from kdhelpers.stats import spearman_interval

    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    y = 0.5 * x + rng.normal(size=300)
    got = spearman_interval(x, y, n_resamples=500)
    assert got.value == pytest.approx(st.spearmanr(x, y).statistic)
    assert got.ci_low < got.value < got.ci_high and got.n == 300
    # the bootstrap interval is about as wide as the normal approximation (Fisher z) says
    z = np.arctanh(got.value)
    se = 1.06 / np.sqrt(300 - 3)  # Fieller et al.'s standard error for Spearman
    low, high = np.tanh(z - 1.96 * se), np.tanh(z + 1.96 * se)
    assert got.ci_low == pytest.approx(low, abs=0.03) and got.ci_high == pytest.approx(
        high, abs=0.03
    )
    # independent data: the interval covers zero
    assert spearman_interval(rng.normal(size=200), rng.normal(size=200), n_resamples=300).ci_low < 0
    with pytest.raises(ValueError, match="same length"):
        spearman_interval([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 3"):
        spearman_interval([1, 2], [1, 2])


# ---------------------------------------------------------------- sentences in a score's own units


@pytest.mark.parametrize(
    ("diff", "low", "high", "lower", "expected"),
    [
        (-2.7, -3.13, -2.27, True,
         "KD beats text: perplexity 2.70 lower, 95% interval [-3.13, -2.27], 3 seeds"),
        (2.7, 2.27, 3.13, True,
         "KD trails text: perplexity 2.70 higher, 95% interval [2.27, 3.13], 3 seeds"),
        (2.7, 2.27, 3.13, False,
         "KD beats text: perplexity 2.70 higher, 95% interval [2.27, 3.13], 3 seeds"),
        (-0.7, -9.53, 8.13, True,
         "KD differs from text by -0.70 in perplexity, 95% interval [-9.53, 8.13], "
         "3 seeds: not distinguishable from zero"),
    ],
)  # fmt: skip
def test_comparison_sentence_in_a_measure(diff, low, high, lower, expected) -> None:
    c = Comparison("KD vs text", 10.0 + diff, 10.0, diff, low, high, [0, 1, 2])
    got = comparison_sentence(c, measure="perplexity", lower_is_better=lower)
    assert got == expected


def test_comparison_sentence_measure_errors() -> None:
    c = Comparison("KD vs text", 8.0, 10.0, -2.0, -3.0, -1.0, [0, 1, 2])
    with pytest.raises(ValueError, match="lower_is_better needs a measure"):
        comparison_sentence(c, lower_is_better=True)
    with pytest.raises(ValueError, match="measure must name"):
        comparison_sentence(c, measure=" ")
