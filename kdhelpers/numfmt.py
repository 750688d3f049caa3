"""One number formatter for tables, prose and the README, with one rounding rule.

The rule: a value is first read to 12 significant digits (this drops binary float noise, e.g.
0.8665 - 0.843 = 0.023499999999999965 is read as 0.0235), then rounded half-up on that decimal
representation, ties away from zero (Decimal ROUND_HALF_UP): 0.8665 -> "86.7%", 0.8205 -> "82.1%",
-0.0235 -> "-2.4 points", 2.45 -> "2.5x". Python's round() and f-strings round the binary float
instead, so a tie goes either way: f"{0.8205:.1%}" is "82.0%" while f"{0.8665:.1%}" is "86.7%",
and f"{(0.8205 - 0.8) * 100:.1f}" is "2.0" where this module prints "+2.1 points".
A result that rounds to zero is printed without a sign ("0.0%", never "-0.0%").

Missing values: None and NaN render as "n/a" (pandas uses NaN for a missing cell; pass
na_rep="n/a" to DataFrame.to_string, which skips formatters on NaN cells); +-inf raises
ValueError, because an infinite accuracy or speed-up is a bug to fix, not a number to print.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from decimal import ROUND_HALF_UP, Context, Decimal

import numpy as np

from kdhelpers.validate import check_int

#: What None and NaN render as.
MISSING = "n/a"

#: Significant digits a float is read to before rounding (removes float noise, keeps real digits).
READ_DIGITS = 12

#: Digits quantize may need: a float's 309 integer digits (x 100 for a percentage: 311) plus up to
#: 12 decimals; 100 made every value above about 1e88 (1.5e120 in the attack) raise InvalidOperation.
_CONTEXT = Context(prec=400, rounding=ROUND_HALF_UP)


def _decimal(name: str, value: object) -> Decimal | None:
    """The value as a Decimal read to READ_DIGITS significant digits (None for None/NaN)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"{name} must be a number or None (got {type(value).__name__} {value!r})")
    x = float(value)
    if math.isnan(x):
        return None
    if math.isinf(x):
        raise ValueError(
            f"{name} is {x}: an infinite value cannot be printed; check what produced it"
        )
    return Decimal(f"{x:.{READ_DIGITS}g}")


def _fixed(d: Decimal, digits: int) -> str:
    """`d` rounded half-up to `digits` decimals, with '-0.0' printed as '0.0'."""
    q = d.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP, context=_CONTEXT)
    if q.is_zero():
        q = abs(q)
    return f"{q:f}"


def num(x: float | None, digits: int = 3) -> str:
    """`x` with `digits` decimals, rounded half-up (0.8665 -> "0.867" at digits=3)."""
    digits = check_int("digits", digits, 0, 12)
    d = _decimal("x", x)
    return MISSING if d is None else _fixed(d, digits)


def pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage (0.8665 -> "86.7%")."""
    digits = check_int("digits", digits, 0, 10)
    d = _decimal("x", x)
    return MISSING if d is None else _fixed(d * 100, digits) + "%"


def points(d: float | None, digits: int = 1, *, signed: bool = True, unit: bool = True) -> str:
    """A difference of fractions in percentage points (0.023 -> "+2.3 points")."""
    digits = check_int("digits", digits, 0, 10)
    value = _decimal("d", d)
    if value is None:
        return MISSING
    text = _fixed(value * 100, digits)
    if signed and not text.startswith("-") and not Decimal(text).is_zero():
        text = "+" + text
    return f"{text} points" if unit else text


def sig(x: float | None, figures: int = 2) -> str:
    """`x` to `figures` significant figures, half-up, never in exponent form (146 -> "150")."""
    figures = check_int("figures", figures, 1, 12)
    d = _decimal("x", x)
    if d is None:
        return MISSING
    if d.is_zero():
        return _fixed(d, figures - 1)
    exponent = d.adjusted()  # power of ten of the leading digit
    rounded = d.quantize(
        Decimal(1).scaleb(exponent - figures + 1), rounding=ROUND_HALF_UP, context=_CONTEXT
    )
    if rounded.adjusted() > exponent:  # 9.96 -> 10.0: one more digit before the point
        exponent += 1
        rounded = d.quantize(
            Decimal(1).scaleb(exponent - figures + 1), rounding=ROUND_HALF_UP, context=_CONTEXT
        )
    return _fixed(rounded, max(0, figures - 1 - exponent))


def ratio(x: float | None, figures: int = 2) -> str:
    """A speed-up or size ratio to two significant figures (46.1 -> "46x", 1.09 -> "1.1x")."""
    text = sig(x, figures)
    return text if text == MISSING else text + "x"


#: Formatter kinds usable in `formatters_for`; "num" takes digits as "num:2".
KINDS: dict[str, Callable[..., str]] = {
    "num": num,
    "pct": pct,
    "points": points,
    "ratio": ratio,
    "sig": sig,
}


def formatters_for(
    kinds: Mapping[str, str | Callable[[object], str]],
) -> dict[str, Callable[[object], str]]:
    """Column -> formatter for pandas (`df.to_string(formatters=...)`, `df.style.format(...)`)."""
    if not isinstance(kinds, Mapping):
        raise TypeError(
            f"kinds must map column names to a kind such as 'pct' (got {type(kinds).__name__})"
        )
    out: dict[str, Callable[[object], str]] = {}
    for column, kind in kinds.items():
        if callable(kind):
            out[column] = kind
            continue
        if not isinstance(kind, str):
            raise TypeError(
                f"kinds[{column!r}] must be a kind name or a function (got {type(kind).__name__})"
            )
        base, _, arg = kind.partition(":")
        if base not in KINDS:
            raise ValueError(
                f"kinds[{column!r}] is {kind!r}: use one of {sorted(KINDS)}, "
                "optionally with digits, e.g. 'num:2' or 'pct:0'"
            )
        func = KINDS[base]
        if arg:
            if not arg.isdigit():
                raise ValueError(
                    f"kinds[{column!r}] is {kind!r}: "
                    "the part after ':' must be digits, e.g. 'num:2'"
                )
            out[column] = _bind(func, int(arg))
        else:
            out[column] = func
    return out


def _bind(func: Callable[..., str], digits: int) -> Callable[[object], str]:
    """`func` with its digits/figures argument fixed (checked now, not at the first cell)."""
    func(0.0, digits)
    return lambda value: func(value, digits)
