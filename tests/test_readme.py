"""The README's results section is written from results/ and must match the committed run."""

import pytest

from kdhelpers.course.readme import END, START, readme_command, results_section, update_readme
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


def test_cross_domain_headline_reads_the_seeded_record_and_its_comparisons():
    seeds = (0, 1, 2)
    metrics = {
        "target": "amazon",
        "seeds": 3,
        "domains_where_kd_beats_movie_labels": 2,
        "noisy_student_rounds": 1,
        "amazon_round0_accuracy": 0.79,
        "amazon_round1_accuracy": 0.8,
    }
    comparisons = []
    for d, base in (("amazon", 0.64), ("tweets", 0.56), ("nyt", 0.66)):
        metrics[f"{d}_movie_label_student_accuracy"] = base
        metrics[f"{d}_movie_soft_student_accuracy"] = base + 0.01
        metrics[f"{d}_kd_student_accuracy"] = base + 0.05
        comparisons.append(
            compare_seeds(
                f"{d}: target soft targets vs movie soft targets",
                {s: base + 0.05 + 0.001 * s for s in seeds},
                {s: base + 0.01 for s in seeds},
            ).as_dict()
        )
    comparisons.append(
        compare_seeds(
            "round 1 vs round 0", {0: 0.8, 1: 0.81, 2: 0.79}, {0: 0.79, 1: 0.80, 2: 0.78}
        ).as_dict()
    )
    record = {"date": "2026-12-07", "metrics": metrics, "details": {"comparisons": comparisons}}
    text = results_section({"07_cross-domain": record}, "")
    assert "means over 3 seeds" in text and "Amazon 64.0% (movie labels), 65.0% (movie soft" in text
    assert "69.0% (target soft targets, target text +4.1 points [" in text
    assert "round 0 79.0%, round 1 80.0%; round 1 beats round 0 by 1.0 points" in text
    assert "beats movie labels on 2 of 3 domains" in text


def test_compression_headline_names_the_student_and_what_falls_short():
    import copy
    import json

    from kdhelpers.paths import project_root

    record = json.loads(
        (project_root() / "results" / "06_compression.json").read_text(encoding="utf-8")
    )
    r = copy.deepcopy(record)
    r["metrics"].update(
        headline_of_teacher=0.993, headline_fewer_params=10.83, headline_speedup_b1=9.9972,
        headline_speedup_b64=43.3, headline_transfer_rows=310877, headline_per_seed=[0.855, 0.85],
        headline_target_met=False, headline_student="bilstm",
    )  # fmt: skip
    r["details"].update(
        headline_source="benchmarks/x.json",
        headline_misses={"speedup_b1": 9.9972},
        headline_latency_history=[],
    )
    text = results_section({"06_compression": r}, "")
    assert "benchmarks/x.json: a BiLSTM trained on 310,877 teacher-labelled rows" in text
    assert "99.3% of the teacher's accuracy on average over 2 seeds (85.5%, 85.0%)" in text
    assert "10.0x lower batch-1 latency" in text  # three figures next to a 10x line
    assert (
        "lower batch-1 latency): **not met** (short: batch-1 speed-up 9.997x against a line of 10x)."
        in text
    )
    assert "10.8x fewer parameters" in text and "earlier measurements" not in text
    r["metrics"].update(headline_speedup_b1=11.61, headline_target_met=True)
    r["details"]["headline_misses"] = {}
    r["details"]["headline_latency_history"] = [{"speedup_b1": 10.618}, {"speedup_b1": 9.9972},
                                                {"speedup_b1": 11.61}]  # fmt: skip
    met = results_section({"06_compression": r}, "")
    assert "11.6x lower batch-1 latency (43x at batch 64; earlier measurements of the same " in met
    assert (
        "student: 10.62x, 9.997x, each with its reason in chapter 06). Target (>= 97% of the teacher, "
        in met
    )
    assert ">= 10x fewer parameters, >= 10x lower batch-1 latency): **met**." in met


def test_misses_text_names_each_miss_beside_its_line():
    from kdhelpers.targets import misses_text

    assert misses_text({}) == ""
    assert misses_text({"of_teacher": 0.9612, "speedup_b1": 9.9972}) == (
        "share of the teacher's accuracy 96.1% against a line of 97%; "
        "batch-1 speed-up 9.997x against a line of 10x"
    )
    # a miss never reads as its line: more digits until it does not
    assert misses_text({"of_teacher": 0.9696, "fewer_params": 9.99996}) == (
        "share of the teacher's accuracy 96.96% against a line of 97%; "
        "parameter ratio 9.99996x against a line of 10x"
    )
    assert misses_text({"fewer_params": 8.127}) == "parameter ratio 8.13x against a line of 10x"
    with pytest.raises(ValueError, match="latency"):
        misses_text({"latency": 1.0})


def test_latency_history_text_keeps_order_reasons_and_spread():
    from kdhelpers.targets import latency_history_text

    history = [
        {"speedup_b1": 10.618, "note": "training run"},
        {"speedup_b1": 11.84, "note": "alone", "repeats": [{"speedup_b1": 11.85}, {"speedup_b1": 11.81}]},
    ]  # fmt: skip
    assert latency_history_text(history) == (
        "10.62x (training run); 11.84x (alone; 2 repeats, 11.81x to 11.85x)"
    )
    assert latency_history_text([]) == ""


def test_chapter_05_line_reads_the_chapters_own_verdict():
    import copy
    import json

    from kdhelpers.paths import project_root

    record = json.loads(
        (project_root() / "results" / "05_distillation.json").read_text(encoding="utf-8")
    )
    r = copy.deepcopy(record)
    r["metrics"].update(target_met=False, best_small="cnn (KD)", best_small_of_teacher=0.9532)
    text = results_section({"05_distillation": r}, "")
    assert (
        "lower batch-1 latency) is **not met**: the most accurate student that is small and "
        in text
    )
    assert "fast enough, the distilled word-CNN, keeps 95.3%." in text
    r["metrics"].update(target_met=True)
    assert "lower batch-1 latency) is **met**." in results_section({"05_distillation": r}, "")
    r["metrics"].update(target_met=False, best_small=None, best_small_of_teacher=None)
    assert "lower batch-1 latency) is **not met**." in results_section({"05_distillation": r}, "")
