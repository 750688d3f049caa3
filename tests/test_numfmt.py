"""kdhelpers.numfmt: one rounding rule (half-up on the decimal reading), edge cases by hand."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from kdhelpers.numfmt import MISSING, formatters_for, num, pct, points, ratio, sig


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (0.8665, "86.7%"),
        (0.8205, "82.1%"),  # f"{0.8205:.1%}" prints 82.0% (0.8205 * 100 is 82.04999...)
        (0.12345, "12.3%"),
        (0.12355, "12.4%"),
        (1.0, "100.0%"),
        (0.0, "0.0%"),
        (-0.0, "0.0%"),
        (-0.00001, "0.0%"),  # rounds to zero: no "-0.0%"
        (np.float32(0.5), "50.0%"),
        (1, "100.0%"),
    ],
)
def test_pct_half_up_on_decimal_reading(x: float, expected: str) -> None:
    assert pct(x) == expected


def test_pct_and_num_agree_on_the_same_value() -> None:
    """The motivating case: 0.8665 rendered as 0.867, 0.866 and 86.7% in different places."""
    assert num(0.8665, 3) == "0.867"
    assert pct(0.8665) == "86.7%"
    assert pct(0.8665, 2) == "86.65%"
    assert num(0.12345, 4) == "0.1235"
    assert num(0.8205, 3) == "0.821" and num(0.12355, 4) == "0.1236"
    assert num(2.5, 0) == "3" and num(-2.5, 0) == "-3"  # ties away from zero, not to even
    assert num(0.0004, 3) == "0.000" and num(-0.0004, 3) == "0.000"


def test_float_noise_from_arithmetic_is_ignored() -> None:
    d = 0.8205 - 0.8
    assert d == pytest.approx(0.0205) and d < 0.0205  # 0.020499999999999963
    assert f"{d * 100:.1f}" == "2.0"  # what an f-string prints
    assert points(d) == "+2.1 points"
    assert points(-d) == "-2.1 points"
    assert pct(0.9125 - 0.8) == "11.3%"  # 0.11249999999999993


@pytest.mark.parametrize(
    ("d", "expected"),
    [
        (0.023, "+2.3 points"),
        (-0.008, "-0.8 points"),
        (0.0, "0.0 points"),
        (-0.0004, "0.0 points"),
        (0.0235, "+2.4 points"),
        (0.1, "+10.0 points"),
    ],
)
def test_points(d: float, expected: str) -> None:
    assert points(d) == expected


def test_points_options() -> None:
    assert points(0.023, signed=False, unit=False) == "2.3"
    assert points(-0.008, unit=False) == "-0.8"
    assert points(0.02345, 2) == "+2.35 points"


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        (46.1, "46x"),
        (2.45, "2.5x"),  # half-up: a tie goes up (half-even would print 2.4x)
        (2.44, "2.4x"),
        (1.09, "1.1x"),
        (1.05, "1.1x"),
        (1.04, "1.0x"),
        (1.0, "1.0x"),
        (9.96, "10x"),
        (99.5, "100x"),
        (146.0, "150x"),
        (995.0, "1000x"),
        (0.123, "0.12x"),
        (0.5, "0.50x"),
        (0.0, "0.0x"),
    ],
)
def test_ratio_two_significant_figures(x: float, expected: str) -> None:
    assert ratio(x) == expected


def test_sig_other_figures() -> None:
    assert sig(12345.0, 3) == "12300"
    assert sig(0.00012345, 3) == "0.000123"
    assert sig(-2.45) == "-2.5"
    assert sig(7.0, 1) == "7"


@pytest.mark.parametrize("func", [num, pct, points, ratio, sig])
def test_missing_values_render_as_n_a(func: Callable[..., str]) -> None:
    assert func(None) == MISSING == "n/a"
    assert func(float("nan")) == MISSING
    assert func(np.nan) == MISSING


@pytest.mark.parametrize("func", [num, pct, points, ratio, sig])
def test_infinity_is_refused(func: Callable[..., str]) -> None:
    with pytest.raises(ValueError, match="infinite"):
        func(math.inf)
    with pytest.raises(ValueError, match="infinite"):
        func(-math.inf)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="x must be a number"):
        pct("0.5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="x must be a number"):
        num(True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="digits"):
        num(0.5, -1)
    with pytest.raises(ValueError, match="figures"):
        ratio(2.0, 0)


def test_huge_values_do_not_overflow_the_decimal_context() -> None:
    assert num(1e30, 3) == "1000000000000000000000000000000.000"
    assert ratio(1.234e20) == "120000000000000000000x"


def test_formatters_for_pandas_tables() -> None:
    df = pd.DataFrame(
        {
            "model": ["teacher", "student"],
            "accuracy": [0.8665, 0.8205],
            "gain": [float("nan"), -0.0235],
            "speedup": [1.0, 46.1],
            "loss": [0.12345, 0.5],
        }
    )
    fmts = formatters_for(
        {
            "accuracy": "pct",
            "gain": "points",
            "speedup": "ratio",
            "loss": "num:2",
            "model": str.upper,
        }
    )
    assert [fmts["accuracy"](v) for v in df["accuracy"]] == ["86.7%", "82.1%"]
    assert [fmts["gain"](v) for v in df["gain"]] == ["n/a", "-2.4 points"]
    assert [fmts["speedup"](v) for v in df["speedup"]] == ["1.0x", "46x"]
    assert [fmts["loss"](v) for v in df["loss"]] == ["0.12", "0.50"]
    text = df.to_string(
        formatters=fmts, index=False, na_rep=MISSING
    )  # pandas skips formatters on NaN
    assert "86.7%" in text and "46x" in text and "TEACHER" in text and "n/a" in text
    styled = df.style.format({k: v for k, v in fmts.items() if k != "model"}).to_html()
    assert "82.1%" in styled and "-2.4 points" in styled


def test_formatters_for_refuses_unknown_kinds() -> None:
    with pytest.raises(ValueError, match=r"kinds\['acc'\] is 'percent'"):
        formatters_for({"acc": "percent"})
    with pytest.raises(ValueError, match="after ':'"):
        formatters_for({"acc": "pct:x"})
    with pytest.raises(ValueError, match="digits"):
        formatters_for({"acc": "num:99"})
    with pytest.raises(TypeError, match="kinds must map"):
        formatters_for(["pct"])  # type: ignore[arg-type]
