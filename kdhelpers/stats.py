"""Comparisons with uncertainty: mean and spread over seeds, paired intervals, McNemar's test.

The course standard for a claim "A beats B": at least 3 seeds and a paired 95% interval for the
difference. Accuracies are fractions in [0, 1]; differences are A - B, reported in percentage
points by `comparison_sentence`. Results JSON stores `Comparison.as_dict()` under
`details.comparisons`.

Methods:
- across seeds (`compare_seeds`): d_s = score_A(seed s) - score_B(seed s); the interval is
  mean(d) +- t_{1 - alpha/2, n-1} * sd(d) / sqrt(n) with the sample sd (ddof=1) and
  scipy.stats.t; the p-value is the two-sided paired t-test. It covers training noise (seeds).
- on one test set (`paired_bootstrap`): resample the test examples with replacement (the same
  indices for A and B, so the pairing is kept), n_resamples times, from
  numpy.random.default_rng(seed); the interval is the (alpha/2, 1 - alpha/2) percentile of the
  resampled mean differences (numpy's linear quantile). It covers test-set sampling noise only.
- McNemar (`mcnemar_test`): from the discordant counts only; exact binomial test when they are
  few, else chi-square with continuity correction.
- Raters' split-half agreement (`split_half_agreement`): the ceiling a model's correlation with
  a crowd's mean judgement can reach, given how much the crowd itself agrees.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats as _scipy_stats

from kdhelpers.numfmt import num, points
from kdhelpers.validate import check_int, check_number, check_seed

#: Seeds the course asks for before a comparison is stated (the helpers refuse fewer than 2).
COURSE_MIN_SEEDS = 3

#: Below this many discordant pairs `mcnemar_test` uses the exact binomial test by default.
EXACT_BELOW = 25


@dataclass(frozen=True)
class SeedSummary:
    """Mean and sample standard deviation (ddof=1) of one score over seeds."""

    mean: float
    std: float
    n: int
    seeds: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {"mean": self.mean, "std": self.std, "n": self.n, "seeds": list(self.seeds)}


@dataclass(frozen=True)
class Comparison:
    """A - B with an interval: a and b are the scores, diff = a - b, seeds the pairing seeds."""

    name: str
    a: float
    b: float
    diff: float
    ci_low: float
    ci_high: float
    seeds: list[int] = field(default_factory=list)
    p_value: float | None = None
    method: str | None = None
    confidence: float = 0.95

    def excludes_zero(self) -> bool:
        """True when the interval lies strictly on one side of zero."""
        return self.ci_low > 0 or self.ci_high < 0

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Comparison:
        """The Comparison that `as_dict` stored (a results file's details.comparisons entry)."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in record.items() if k in known})

    def as_dict(self) -> dict[str, Any]:
        """The `details.comparisons` record: name, a, b, diff, ci_low, ci_high, seeds (+ extras)."""
        out: dict[str, Any] = {
            "name": self.name,
            "a": self.a,
            "b": self.b,
            "diff": self.diff,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "seeds": list(self.seeds),
        }
        if self.p_value is not None:
            out["p_value"] = self.p_value
        if self.method is not None:
            out["method"] = self.method
        if self.confidence != 0.95:  # a record without "confidence" is a 95% interval
            out["confidence"] = self.confidence
        return out


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test: only_a = A right and B wrong, only_b = A wrong and B right."""

    only_a: int
    only_b: int
    statistic: float
    p_value: float
    method: str

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "only_a": self.only_a,
            "only_b": self.only_b,
            "statistic": self.statistic,
            "p_value": self.p_value,
            "method": self.method,
        }


def _check_confidence(confidence: object) -> float:
    """A confidence level strictly between 0 and 1."""
    value = check_number("confidence", confidence, 0.0, 1.0, strict_min=True)
    if value >= 1.0:
        raise ValueError(f"confidence must be a number in (0, 1), e.g. 0.95 (got {value})")
    return value


def _check_name(name: object) -> str:
    """A non-empty comparison name."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty string such as 'KD vs labels' (got {name!r})")
    return name


def _scores_by_seed(name: str, scores: object) -> dict[int, float]:
    """{seed: finite score}, from a mapping of int seeds to numbers."""
    if not isinstance(scores, Mapping):
        raise TypeError(
            f"{name} must map each seed to its score, e.g. {{0: 0.86, 1: 0.87, 2: 0.85}} "
            f"(got {type(scores).__name__})"
        )
    return {
        check_seed(f"{name} seed", s): check_number(f"{name}[{s!r}]", v) for s, v in scores.items()
    }


def over_seeds(scores: Mapping[int, float]) -> SeedSummary:
    """Mean and sample standard deviation (ddof=1) of {seed: score}; refuses fewer than 2 seeds."""
    by_seed = _scores_by_seed("scores", scores)
    if len(by_seed) < 2:
        raise ValueError(
            f"scores has {len(by_seed)} seed(s): a spread over seeds needs at least 2 "
            f"(the course asks for {COURSE_MIN_SEEDS})"
        )
    values = np.array(list(by_seed.values()), dtype=np.float64)
    return SeedSummary(
        float(values.mean()), float(values.std(ddof=1)), len(values), sorted(by_seed)
    )


def compare_seeds(
    name: str,
    scores_a: Mapping[int, float],
    scores_b: Mapping[int, float],
    confidence: float = 0.95,
) -> Comparison:
    """Paired t-interval (n-1 df) for mean(A - B) over seeds; A and B must share their seeds."""
    name = _check_name(name)
    confidence = _check_confidence(confidence)
    a, b = _scores_by_seed("scores_a", scores_a), _scores_by_seed("scores_b", scores_b)
    if set(a) != set(b):
        raise ValueError(
            f"scores_a and scores_b must come from the same seeds to be paired: "
            f"only in scores_a {sorted(set(a) - set(b))}, "
            f"only in scores_b {sorted(set(b) - set(a))}"
        )
    seeds = sorted(a)
    n = len(seeds)
    if n < 2:
        raise ValueError(
            f"scores_a and scores_b have {n} seed(s): a paired interval over seeds needs "
            f"at least 2 (the course asks for {COURSE_MIN_SEEDS}); train more seeds"
        )
    xa = np.array([a[s] for s in seeds], dtype=np.float64)
    xb = np.array([b[s] for s in seeds], dtype=np.float64)
    d = xa - xb
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    p_value = (
        1.0
        if se == 0 and mean == 0
        else (0.0 if se == 0 else float(2 * _scipy_stats.t.sf(abs(mean) / se, n - 1)))
    )
    return Comparison(
        name,
        float(xa.mean()),
        float(xb.mean()),
        mean,
        mean - half,
        mean + half,
        seeds,
        p_value=p_value,
        method=f"paired t-interval over {n} seeds ({n - 1} df)",
        confidence=confidence,
    )


def _as_int_array(name: str, x: object) -> np.ndarray:
    """A 1-d integer (or bool) array from a list, numpy array or tensor."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, (str, bytes)) or not hasattr(x, "__len__"):
        raise TypeError(f"{name} must be a 1-d sequence, array or tensor (got {type(x).__name__})")
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d, one entry per test example (got shape {arr.shape})")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: the comparison needs test examples")
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"{name} must hold ints or bools (got dtype {arr.dtype}): pass predicted class ids "
            "(logits.argmax(-1)) or per-example correctness, not scores"
        )
    return arr


def correctness(predictions: object, labels: object) -> np.ndarray:
    """Per-example correctness (bool array) from predicted class ids and labels."""
    pred, lab = _as_int_array("predictions", predictions), _as_int_array("labels", labels)
    if pred.shape != lab.shape:
        raise ValueError(
            f"predictions and labels must have one entry per example each "
            f"(got {pred.shape[0]} and {lab.shape[0]})"
        )
    return pred == lab


def _paired_correctness(
    correct_a: object, correct_b: object, labels: object | None
) -> tuple[np.ndarray, np.ndarray]:
    """Both correctness arrays, from correctness arrays or (with labels) predictions."""
    if labels is not None:
        ca, cb = correctness(correct_a, labels), correctness(correct_b, labels)
    else:
        ca, cb = _as_int_array("correct_a", correct_a), _as_int_array("correct_b", correct_b)
        for name, arr in (("correct_a", ca), ("correct_b", cb)):
            if arr.dtype != np.bool_ and not np.isin(arr, (0, 1)).all():
                raise ValueError(
                    f"{name} must hold 0/1 or bools (per-example correctness); "
                    "to pass predicted class ids, give labels=... as well"
                )
        ca, cb = ca.astype(bool), cb.astype(bool)
    if ca.shape != cb.shape:
        raise ValueError(
            f"correct_a and correct_b must cover the same test examples "
            f"(got {ca.shape[0]} and {cb.shape[0]} entries)"
        )
    return ca, cb


def paired_bootstrap(
    name: str,
    correct_a: object,
    correct_b: object,
    *,
    labels: object | None = None,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    seeds: Sequence[int] = (),
) -> Comparison:
    """Paired percentile-bootstrap interval for accuracy(A) - accuracy(B) on one test set."""
    name = _check_name(name)
    ca, cb = _paired_correctness(correct_a, correct_b, labels)
    n_resamples = check_int("n_resamples", n_resamples, 100)
    confidence = _check_confidence(confidence)
    seed = check_seed("seed", seed)
    model_seeds = [check_seed(f"seeds[{i}]", s) for i, s in enumerate(seeds)]
    d = ca.astype(np.float64) - cb.astype(np.float64)
    n = d.shape[0]
    rng = np.random.default_rng(seed)
    boot = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // n)  # bounded memory: about 16 MB of indices at a time
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        boot[start:stop] = d[rng.integers(0, n, (stop - start, n))].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return Comparison(
        name,
        float(ca.mean()),
        float(cb.mean()),
        float(d.mean()),
        float(low),
        float(high),
        model_seeds,
        method=f"paired percentile bootstrap over {n} test examples "
        f"({n_resamples} resamples, seed {seed})",
        confidence=confidence,
    )


def mcnemar_test(
    correct_a: object, correct_b: object, *, labels: object | None = None, exact: bool | None = None
) -> McNemarResult:
    """McNemar's test of equal accuracy on one test set (exact binomial or corrected chi-square)."""
    ca, cb = _paired_correctness(correct_a, correct_b, labels)
    if exact is not None and not isinstance(exact, bool):
        raise TypeError(f"exact must be True, False or None (automatic) (got {exact!r})")
    only_a, only_b = int((ca & ~cb).sum()), int((~ca & cb).sum())
    n = only_a + only_b
    if exact is None:
        exact = n < EXACT_BELOW
    if exact:
        statistic = float(min(only_a, only_b))
        p = 1.0 if n == 0 else min(1.0, 2 * float(_scipy_stats.binom.cdf(statistic, n, 0.5)))
        return McNemarResult(only_a, only_b, statistic, p, "exact binomial")
    # Edwards' continuity correction, floored at 0 so that equal counts give p = 1
    statistic = 0.0 if n == 0 else max(0.0, abs(only_a - only_b) - 1.0) ** 2 / n
    p = float(_scipy_stats.chi2.sf(statistic, 1))
    return McNemarResult(only_a, only_b, statistic, p, "chi-square with continuity correction")


def interval_text(comparison: Comparison) -> str:
    """A comparison's interval in percentage points, as the sentences print it: '[0.4, 3.8]'."""
    if not isinstance(comparison, Comparison):
        raise TypeError(f"comparison must be a Comparison (got {type(comparison).__name__})")
    low = points(comparison.ci_low, signed=False, unit=False)
    return f"[{low}, {points(comparison.ci_high, signed=False, unit=False)}]"


def comparison_sentence(
    comparison: Comparison,
    a_label: str | None = None,
    b_label: str | None = None,
    *,
    measure: str | None = None,
    lower_is_better: bool = False,
    digits: int = 2,
) -> str:
    """One sentence: 'KD beats labels by 2.3 points, 95% interval [1.1, 3.5], 3 seeds'.

    Scores are fractions shown in percentage points unless `measure` names another quantity
    (e.g. "perplexity"): then the difference is shown with `digits` decimals ('token KD beats text
    only: perplexity 2.64 lower, 95% interval [...]'), and with lower_is_better a negative A - B
    is the better side.
    """
    if not isinstance(comparison, Comparison):
        raise TypeError(f"comparison must be a Comparison (got {type(comparison).__name__})")
    if a_label is None or b_label is None:
        parts = comparison.name.split(" vs ")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise ValueError(
                f"comparison name {comparison.name!r} is not of the form 'A vs B': "
                "pass a_label and b_label"
            )
        a_label = parts[0].strip() if a_label is None else a_label
        b_label = parts[1].strip() if b_label is None else b_label
    c = comparison
    n = len(c.seeds)
    runs = (
        f"{n} seeds" if n >= 2 else ("1 seed" if n == 1 else "one run") + ", test-set interval only"
    )
    if measure is not None:
        return _measured_sentence(c, a_label, b_label, measure, lower_is_better, digits, runs)
    if lower_is_better:
        raise ValueError("lower_is_better needs a measure, e.g. measure='perplexity'")
    tail = f"{_level(c.confidence)} interval {interval_text(c)}, {runs}"
    if c.ci_low > 0:
        return f"{a_label} beats {b_label} by {points(c.diff, signed=False)}, {tail}"
    if c.ci_high < 0:
        return f"{a_label} trails {b_label} by {points(-c.diff, signed=False)}, {tail}"
    verdict = "not distinguishable from zero"
    return f"{a_label} differs from {b_label} by {points(c.diff)}, {tail}: {verdict}"


def _measured_sentence(
    c: Comparison,
    a_label: str,
    b_label: str,
    measure: str,
    lower_is_better: bool,
    digits: int,
    runs: str,
) -> str:
    """comparison_sentence for a score in its own units (perplexity, seconds...)."""
    if not isinstance(measure, str) or not measure.strip():
        raise ValueError(f"measure must name the score, e.g. 'perplexity' (got {measure!r})")
    digits = check_int("digits", digits, 0, 10)
    tail = f"{_level(c.confidence)} interval [{num(c.ci_low, digits)}, {num(c.ci_high, digits)}], {runs}"
    size = num(abs(c.diff), digits)
    better_a = c.ci_high < 0 if lower_is_better else c.ci_low > 0
    worse_a = c.ci_low > 0 if lower_is_better else c.ci_high < 0
    direction = "lower" if c.diff < 0 else "higher"
    if better_a:
        return f"{a_label} beats {b_label}: {measure} {size} {direction}, {tail}"
    if worse_a:
        return f"{a_label} trails {b_label}: {measure} {size} {direction}, {tail}"
    return (
        f"{a_label} differs from {b_label} by {num(c.diff, digits)} in {measure}, {tail}: "
        "not distinguishable from zero"
    )


def _level(confidence: float) -> str:
    """0.95 -> '95%' (no trailing zeros)."""
    return f"{confidence * 100:.10g}%"


@dataclass(frozen=True)
class SplitHalf:
    """How well two random halves of each item's raters agree (Spearman), averaged over random splits."""

    half_spearman: float
    #: Spearman-Brown: the reliability of the whole panel's score, 2r / (1 + r)
    full_reliability: float
    #: sqrt(full_reliability): about the highest correlation any predictor can reach with the panel's score
    ceiling: float
    n_items: int
    n_splits: int

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "half_spearman": self.half_spearman,
            "full_reliability": self.full_reliability,
            "ceiling": self.ceiling,
            "n_items": self.n_items,
            "n_splits": self.n_splits,
        }


def _check_varies(name: str, values: np.ndarray, why: str) -> None:
    """ValueError saying `name` has no variation (all values equal) when it has none: a rank
    correlation with a constant is 0 / 0, undefined, and the helpers refuse it rather than return NaN."""
    if values.size and float(np.ptp(values)) == 0.0:
        raise ValueError(
            f"{name} has no variation: all {values.size} values are {num(float(values[0]), 4)}, so "
            f"{why} is undefined (0 / 0); there is nothing to correlate"
        )


def _positive_share(scores: np.ndarray) -> float:
    """The share of non-zero ratings that are positive (0.5 when all are 0)."""
    nonzero = scores[scores != 0]
    return float((nonzero > 0).mean()) if nonzero.size else 0.5


def split_half_agreement(
    rater_scores: Sequence[Sequence[float]], n_splits: int = 20, seed: int = 0
) -> SplitHalf:
    """Split each item's raters at random into two halves, score each half by its share of positive
    (non-zero) ratings, and take the Spearman correlation between the halves over items; the mean over
    `n_splits` splits, stepped up to the whole panel with Spearman-Brown.

    Degenerate data is refused (ValueError saying why), never returned as NaN: items whose panels
    all give the same share (e.g. unanimous raters everywhere), a split whose half scores every item
    alike, and halves that always rank the items in opposite order (r = -1)."""
    n_splits = check_int("n_splits", n_splits, 1)
    seed = check_seed("seed", seed)
    items = [np.asarray(r, dtype=float) for r in rater_scores]
    if len(items) < 3:
        raise ValueError(f"rater_scores needs at least 3 items to correlate (got {len(items)})")
    short = [i for i, r in enumerate(items) if r.size < 2]
    if short:
        raise ValueError(
            f"every item needs at least 2 ratings to split (item {short[0]} has {items[short[0]].size})"
        )
    _check_varies(
        "rater_scores (each item's share of positive ratings)",
        np.array([_positive_share(r) for r in items]),
        "the agreement between raters on which items are more positive (unanimous raters?)",
    )
    rng = np.random.default_rng(seed)
    rs = []
    for k in range(n_splits):
        a, b = np.empty(len(items)), np.empty(len(items))
        for i, r in enumerate(items):
            order = rng.permutation(r.size)
            half = r.size // 2
            a[i], b[i] = _positive_share(r[order[:half]]), _positive_share(r[order[half:]])
        for which, half_scores in (("first", a), ("second", b)):
            _check_varies(
                f"the {which} half of split {k} (seed {seed})",
                half_scores,
                "the Spearman correlation between the halves (too few items or raters to split)",
            )
        rs.append(float(_scipy_stats.spearmanr(a, b).statistic))
    r = float(np.mean(rs))
    if r <= -1:
        raise ValueError(
            f"the halves of every split rank the {len(items)} items in exactly opposite order "
            "(mean Spearman -1): the Spearman-Brown step-up 2r / (1 + r) is undefined; "
            "use more items or raters"
        )
    full = 2 * r / (1 + r)
    return SplitHalf(r, full, math.sqrt(full) if full > 0 else 0.0, len(items), n_splits)


@dataclass(frozen=True)
class Correlation:
    """A Spearman correlation over items with a percentile-bootstrap interval (items resampled)."""

    value: float
    ci_low: float
    ci_high: float
    n: int
    method: str
    confidence: float = 0.95

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "n": self.n,
            "method": self.method,
            "confidence": self.confidence,
        }


def spearman_interval(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Correlation:
    """Spearman's correlation of x and y with a percentile-bootstrap interval over the items.

    A constant x or y (no variation: the correlation is 0 / 0) is refused with a ValueError rather
    than returned as NaN; resamples that happen to draw one value only are left out of the interval."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.ndim != 1 or xa.shape != ya.shape:
        raise ValueError(f"x and y must be 1-d and of the same length (got {xa.shape}, {ya.shape})")
    if xa.size < 3 or not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise ValueError("x and y need at least 3 finite values each")
    n_resamples = check_int("n_resamples", n_resamples, 100)
    confidence = _check_confidence(confidence)
    for name, values in (("x", xa), ("y", ya)):
        _check_varies(name, values, "Spearman's correlation")
    rng = np.random.default_rng(check_seed("seed", seed))
    # each resample is ranked afresh, so ties among repeated items are handled as scipy does
    boot = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, xa.size, xa.size)
        boot[i] = _scipy_stats.spearmanr(xa[idx], ya[idx]).statistic
    alpha = 1 - confidence
    if np.isnan(boot).all():  # every resample drew items of one value: no interval to give
        raise ValueError(
            f"every bootstrap resample of the {xa.size} items has no variation in x or y: "
            "the interval is undefined; use more items"
        )
    low, high = np.nanquantile(boot, [alpha / 2, 1 - alpha / 2])
    return Correlation(
        float(_scipy_stats.spearmanr(xa, ya).statistic),
        float(low),
        float(high),
        int(xa.size),
        f"Spearman, percentile bootstrap over {xa.size} items ({n_resamples} resamples, seed {seed})",
        confidence,
    )
