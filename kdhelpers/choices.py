"""Choices among candidates (settings, students, runs) read validation scores only, and say so:
the one helper every choice goes through, and the record of it that a results file keeps."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The only split a choice may read; test scores are for the headline, after choosing.
CHOICE_SPLIT = "validation"


@dataclass(frozen=True)
class Choice:
    """The candidate chosen, the split its scores came from, and every candidate's score."""

    chosen: Any
    scores: dict[Any, float]
    higher_is_better: bool = True
    chosen_on: str = CHOICE_SPLIT

    def as_dict(self) -> dict[str, Any]:
        """The record a results file keeps (details['choices'])."""
        return {
            "chosen": self.chosen,
            "chosen_on": self.chosen_on,
            "higher_is_better": self.higher_is_better,
            "scores": {str(k): v for k, v in self.scores.items()},
        }


def choose_on_validation(
    validation_scores: Mapping[Any, float], higher_is_better: bool = True
) -> Choice:
    """The candidate with the best validation score; the first such on ties (list the default first).

    Pass validation scores only: the returned Choice records `chosen_on='validation'` for the
    results file, and the notebooks' test scores never enter a choice."""
    if not isinstance(validation_scores, Mapping) or not validation_scores:
        raise ValueError("validation_scores must be a non-empty mapping of candidate -> score")
    scores = {}
    for key, value in validation_scores.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ValueError(f"validation_scores[{key!r}] must be a number (got {value!r})")
        scores[key] = float(value)
    if not isinstance(higher_is_better, bool):
        raise TypeError(f"higher_is_better must be True or False (got {higher_is_better!r})")
    pick = max if higher_is_better else min
    return Choice(pick(scores, key=scores.__getitem__), scores, higher_is_better)
