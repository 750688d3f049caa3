"""The README's results section is written from results/ and must match the committed run."""

import pytest

from kdhelpers.course import readme_command
from kdhelpers.headlines import END, START, results_section, update_readme
from kdhelpers.stats import Comparison, compare_seeds


def test_the_committed_readme_matches_the_committed_results():
    assert readme_command(check=True) == 0, "run python -m kdhelpers.course readme and commit"


def _teacher_record(acc=0.859, tfidf=0.7785):
    vs = compare_seeds(
        "teacher vs TF-IDF", {0: acc, 1: 0.862, 2: 0.865}, {s: tfidf for s in (0, 1, 2)}
    )
    return {
        "date": "2026-12-06",
        "metrics": {
            "teacher_test_accuracy": acc,
            "teacher_test_accuracy_mean": 0.862,
            "teacher_test_accuracy_std": 0.003,
            "tfidf_baseline_accuracy": tfidf,
        },
        "details": {
            "settings": {"n_train": 6000},
            "seeds": [0, 1, 2],
            "comparisons": [vs.as_dict()],
        },
    }


def test_teacher_headline_uses_the_formatter_and_the_stored_interval():
    text = results_section({"03_teacher": _teacher_record()}, "| table |")
    assert "85.9% test accuracy (86.2% on average over 3 training seeds" in text
    assert "target >= 85%: **met**" in text and "77.9%" in text  # 0.7785 rounds half-up
    assert "teacher beats TF-IDF by 8.4 points, 95% interval [7.6, 9.1], 3 seeds." in text
    assert "run on 2026-12-06" in text and text.startswith(START) and text.endswith(END)
    low = results_section({"03_teacher": _teacher_record(acc=0.84)}, "")
    assert "target >= 85%: **not met**" in low


def test_a_chapter_without_results_is_left_out():
    text = results_section({"03_teacher": _teacher_record()}, "")
    assert "Compression (06)" not in text and "Distillation" not in text


def test_comparison_round_trips_through_its_dict():
    c = compare_seeds("a vs b", {0: 0.8, 1: 0.82, 2: 0.81}, {0: 0.7, 1: 0.71, 2: 0.72})
    assert Comparison.from_dict(c.as_dict()) == c


def test_update_readme_replaces_only_the_marked_section():
    readme = f"# Title\n\nbefore\n{START}\nold numbers\n{END}\nafter\n"
    new = update_readme(readme, f"{START}\nnew numbers\n{END}")
    assert new == f"# Title\n\nbefore\n{START}\nnew numbers\n{END}\nafter\n"
    with pytest.raises(ValueError, match="markers"):
        update_readme("# no markers", f"{START}\n{END}")
