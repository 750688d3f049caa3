"""The course's targets: the compression target (HEADLINE_TARGET), its criteria in words, and how a
verdict on any target is worded (never judged in the quick profile)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kdhelpers.numfmt import pct, ratio
from kdhelpers.profiles import PROFILES
from kdhelpers.validate import check_number

#: The course's compression target: at least this share of the teacher's test accuracy, this many
#: times fewer parameters and this batch-1 speed-up (chapters 05 and 06, the README).
HEADLINE_TARGET: dict[str, float] = {"of_teacher": 0.97, "fewer_params": 10.0, "speedup_b1": 10.0}

#: Each criterion of HEADLINE_TARGET: its name, the formatter of a measured value (taking a
#: precision), that precision, and how the line itself reads.
_CRITERIA: dict[str, tuple[str, Callable[[float, int], str], int, Callable[[float], str]]] = {
    "of_teacher": ("share of the teacher's accuracy", pct, 1, lambda v: pct(v, 0)),
    "fewer_params": ("parameter ratio", ratio, 3, ratio),
    "speedup_b1": ("batch-1 speed-up", ratio, 4, ratio),
}


def headline_misses(headline: Mapping[str, Any]) -> dict[str, float]:
    """The criteria of HEADLINE_TARGET that a row ('of_teacher', 'fewer_params', 'speedup_b1')
    falls short of (name -> its value); empty when the target is met."""
    missing = set(HEADLINE_TARGET) - set(headline)
    if missing:
        raise ValueError(f"headline lacks {sorted(missing)}")
    return {
        name: float(headline[name])
        for name, line in HEADLINE_TARGET.items()
        if float(headline[name]) < line
    }


def target_text() -> str:
    """HEADLINE_TARGET in words: '>= 97% of the teacher, >= 10x fewer parameters, >= 10x lower
    batch-1 latency'."""
    t = HEADLINE_TARGET
    return (
        f">= {pct(t['of_teacher'], 0)} of the teacher, >= {ratio(t['fewer_params'])} fewer "
        f"parameters, >= {ratio(t['speedup_b1'])} lower batch-1 latency"
    )


def misses_text(misses: Mapping[str, float]) -> str:
    """headline_misses in words, each value beside its line: 'batch-1 speed-up 9.997x against a
    line of 10x; ...'."""
    unknown = set(misses) - set(_CRITERIA)
    if unknown:
        raise ValueError(f"misses has unknown criteria {sorted(unknown)}; known: {list(_CRITERIA)}")
    parts = []
    for k, v in misses.items():
        name, fmt, precision, line_text = _CRITERIA[k]
        line = HEADLINE_TARGET[k]
        while fmt(v, precision) == fmt(line, precision) and precision < 12:
            precision += 1  # a miss never reads as its line: 0.9696 is 96.96%, not 97.0%
        parts.append(f"{name} {fmt(v, precision)} against a line of {line_text(line)}")
    return "; ".join(parts)


def latency_history_text(history: Sequence[Mapping[str, Any]]) -> str:
    """Every batch-1 speed-up measured for one student, oldest first, each with its reason (and the
    spread of its repeats when it is a median): '10.62x (training run); 11.84x (...; 3 repeats,
    11.81x to 11.85x)'."""
    parts = []
    for i, (m, repeats) in enumerate(checked_latency_history(history)):
        if not isinstance(m.get("note"), str):
            raise TypeError(
                f"history[{i}]['note'] must say what was measured (got {m.get('note')!r})"
            )
        spread = (
            f"; {len(repeats)} repeats, {ratio(min(repeats), 4)} to {ratio(max(repeats), 4)}"
            if repeats
            else ""
        )
        parts.append(f"{ratio(m['speedup_b1'], 4)} ({m['note']}{spread})")
    return "; ".join(parts)


def checked_latency_history(
    history: Sequence[Mapping[str, Any]],
) -> list[tuple[Mapping[str, Any], list[float]]]:
    """Each latency measurement with its repeats' batch-1 speed-ups, after checking that every
    speed-up (a median) is a number > 0: a JSON null or a string is refused naming its place
    (history[i]['speedup_b1'], history[i]['repeats'][j]['speedup_b1'])."""
    if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Sequence):
        raise TypeError(
            f"history must be a list of latency measurements (got {type(history).__name__})"
        )
    out = []
    for i, m in enumerate(history):
        if not isinstance(m, Mapping):
            raise TypeError(f"history[{i}] must be a mapping (got {type(m).__name__})")
        check_number(f"history[{i}]['speedup_b1']", m.get("speedup_b1"), 0.0, strict_min=True)
        repeats = [
            check_number(
                f"history[{i}]['repeats'][{j}]['speedup_b1']",
                r.get("speedup_b1") if isinstance(r, Mapping) else r,
                0.0,
                strict_min=True,
            )
            for j, r in enumerate(m.get("repeats") or [])
        ]
        out.append((m, repeats))
    return out


#: What a verdict line says in the quick profile, which is a smoke test of the code, not a result.
NOT_JUDGED = "not judged in the quick profile (a smoke test of the code, not a result)"


def target_verdict(met: bool, profile: str) -> str:
    """'met' or 'not met' for a standard or full run; in 'quick', a phrase saying no verdict is given."""
    if not isinstance(met, bool):
        raise TypeError(f"met must be a bool (got {type(met).__name__})")
    if profile not in PROFILES or profile == "auto":
        raise ValueError(
            f"profile must be a resolved profile: quick, standard or full (got {profile!r})"
        )
    if profile == "quick":
        return NOT_JUDGED
    return "met" if met else "not met"
