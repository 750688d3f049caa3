"""Choices read validation only, through choices.choose_on_validation, and the records say so."""

import json
import re
from collections import Counter

import pytest

from kdhelpers.choices import choose_on_validation
from kdhelpers.course.provenance import read_record
from kdhelpers.course.runner import list_notebooks
from kdhelpers.paths import committed_results_dir
from kdhelpers.students import best_on_validation

#: Ranking idioms written out in a notebook instead of the helper (a choice, or a description of
#: the test scores that reads like one).
RANKING = re.compile(r"\.idx(max|min)\(|\.n(largest|smallest)\(|\b(max|min|sorted)\([^)]*\bkey=")
#: Notebooks committed before the helper, with how many ranking lines each holds; each entry
#: shrinks when its chapter is re-run with its choices through choose_on_validation.
RANKED_BY_HAND = {
    "04_pseudo-labels": 2,
    "05_distillation": 4,
    "06_compression": 5,
    "10_outlook-and-faq_solutions": 2,
}


def test_the_best_validation_score_wins_and_the_first_on_ties():
    c = choose_on_validation({"a": 0.8, "b": 0.9, "c": 0.9})
    assert c.chosen == "b" and c.chosen_on == "validation"
    assert c.as_dict() == {
        "chosen": "b",
        "chosen_on": "validation",
        "higher_is_better": True,
        "scores": {"a": 0.8, "b": 0.9, "c": 0.9},
    }
    assert choose_on_validation({1.0: 3.2, 2.0: 2.9}, higher_is_better=False).chosen == 2.0
    hist = {1e-3: {"best_val_accuracy": 0.7}, 3e-3: {"best_val_accuracy": 0.75}}
    assert best_on_validation(hist) == 3e-3


@pytest.mark.parametrize(
    ("scores", "match"),
    [
        ({}, "non-empty"),
        ({"a": float("nan")}, r"validation_scores\['a'\]"),
        ({"a": "0.9"}, "number"),
    ],
)
def test_bad_scores_are_refused(scores, match):
    with pytest.raises(ValueError, match=match):
        choose_on_validation(scores)


def test_every_choice_a_committed_record_keeps_was_made_on_validation():
    bad = [
        (p.stem, c)
        for p in sorted(committed_results_dir().glob("*.json"))
        for c in read_record(p).get("details", {}).get("choices", [])
        if c.get("chosen_on") != "validation"
    ]
    assert not bad, f"choices not made on validation: {bad}"


def ranking_lines(source: str) -> int:
    """How many lines of notebook code rank candidates by hand."""
    return sum(bool(RANKING.search(line)) for line in source.splitlines())


def test_notebooks_rank_only_through_the_helper():
    found = Counter()
    for path in list_notebooks():
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        found[path.stem] = sum(
            ranking_lines("".join(c["source"])) for c in cells if c["cell_type"] == "code"
        )
    assert dict(+found) == RANKED_BY_HAND, (
        "rank candidates with kdhelpers.choices.choose_on_validation (validation scores only) and "
        f"keep its as_dict() in details['choices']: found {dict(+found)}, known {RANKED_BY_HAND}"
    )


def test_the_ranking_check_sees_a_choice_by_hand():
    assert ranking_lines("best = table.loc[table['test accuracy'].idxmax()]") == 1
    assert ranking_lines("best = max(scores, key=scores.get)\nx = max(a, b)") == 1
    assert ranking_lines("c = choose_on_validation(val_scores).chosen") == 0
