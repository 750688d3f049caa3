"""The README's results section, written from the committed results/ with the one number formatter.

`python -m kdhelpers.course readme` rewrites the part of README.md between START and END from the
results JSON files; `--check` fails when the README differs, so a README number is always the
committed run's. Each chapter's headline is a plain function of its results record, chosen by
name from HEADLINES; a chapter without results is left out.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kdhelpers.course.provenance import read_record
from kdhelpers.course.runner import format_table, summary_rows
from kdhelpers.numfmt import num, pct, points, ratio
from kdhelpers.paths import committed_results_dir, project_root
from kdhelpers.stats import Comparison, comparison_sentence, interval_text
from kdhelpers.targets import checked_latency_history, misses_text, target_text

START = "<!-- results: written by `python -m kdhelpers.course readme` from results/; edit there -->"
END = "<!-- /results -->"

Record = Mapping[str, Any]


def _comparison(record: Record, name: str) -> Comparison | None:
    """The comparison called `name` in a record's details.comparisons, if there is one."""
    for c in record.get("details", {}).get("comparisons", []):
        if c.get("name") == name:
            return Comparison.from_dict(c)
    return None


def _verdict(met: bool) -> str:
    return "**met**" if met else "**not met**"


def _teacher(r: Record) -> list[str]:
    m = r["metrics"]
    n_train = r.get("details", {}).get("settings", {}).get("n_train")
    line = (
        f"- **Teacher** (all-MiniLM-L6-v2 fine-tuned on {n_train:,} labelled movie snippets): "
        f"{pct(m['teacher_test_accuracy'])} test accuracy"
    )
    if "teacher_test_accuracy_mean" in m:
        n = len(r["details"].get("seeds", []))
        line += (
            f" ({pct(m['teacher_test_accuracy_mean'])} on average over {n} training seeds, standard "
            f"deviation {points(m['teacher_test_accuracy_std'], signed=False)})"
        )
    line += f"; target >= 85%: {_verdict(m['teacher_test_accuracy'] >= 0.85)}. "
    line += f"A TF-IDF + logistic-regression baseline reaches {pct(m['tfidf_baseline_accuracy'])}"
    vs = _comparison(r, "teacher vs TF-IDF")
    line += f": {comparison_sentence(vs)}." if vs is not None else "."
    return [line]


_STUDENT_NAMES = {"bag": "bag of embeddings", "cnn": "word-CNN", "tiny-bert": "2-layer Transformer"}


def _model_name(name: str) -> str:
    """'cnn (KD)' -> 'the distilled word-CNN' (other names as they are)."""
    kind, _, rest = name.partition(" ")
    return (
        f"the distilled {_STUDENT_NAMES[kind]}"
        if rest == "(KD)" and kind in _STUDENT_NAMES
        else name
    )


def _distillation(r: Record) -> list[str]:
    m, d = r["metrics"], r.get("details", {})
    n_seeds = len(d.get("seeds", []))
    parts = []
    for kind, label in _STUDENT_NAMES.items():
        if f"{kind}_kd_accuracy" not in m:
            continue
        part = f"{label} {pct(m[f'{kind}_labels_accuracy'])} -> {pct(m[f'{kind}_kd_accuracy'])}"
        vs = _comparison(r, f"{kind}: KD vs labels")
        if vs is not None:
            part += f" ({comparison_sentence(vs, 'KD', 'labels')})"
        parts.append(part)
    seeds = f"; means over {n_seeds} seeds" if n_seeds else ""
    lines = [
        f"- **Distillation against labels alone** (alpha = {m['alpha']:g} and T = {m['temperature']:g} "
        f"chosen on validation{seeds}): " + "; ".join(parts) + "."
    ]
    soft_gold = _comparison(r, "cnn: soft vs gold on the real rows")
    copies = _comparison(r, "cnn: noisy copies vs real rows only (soft)")
    if soft_gold is not None and copies is not None:
        lines.append(
            "- **Softness or more rows?** For the word-CNN on the same real snippets, "
            f"{comparison_sentence(soft_gold, 'training on soft targets', 'training on gold labels')}; "
            f"{comparison_sentence(copies, 'adding the noisy copies', 'the real snippets alone')}."
        )
    lines.append(
        f"- **Best student** ({_model_name(m['best_student'])}, chapter 05): {pct(m['best_student_accuracy'])}, that "
        f"is {pct(m['best_student_of_teacher'])} of the teacher, with {ratio(m['best_student_fewer_params'])} "
        f"fewer parameters and {ratio(m['best_student_speedup_b1'])} lower batch-1 CPU latency (the "
        f"course's latency method, all models timed together). The target ({target_text()}) is "
        f"{_verdict(bool(m['target_met']))}"
        + (
            f": the most accurate student that is small and fast enough, {_model_name(m['best_small'])}, "
            f"keeps {pct(m['best_small_of_teacher'])}."
            if m.get("best_small") and not m["target_met"]
            else "."
        )
    )
    return lines


def _row(record: Record, name: str) -> Mapping[str, Any] | None:
    """A row of a record's details.table by its name."""
    return next(
        (t for t in record.get("details", {}).get("table", []) if t.get("name") == name), None
    )


def _compression(r: Record) -> list[str]:
    m = r["metrics"]
    line = (
        "- **Compression (06)**, the chapter's own students and compressed teachers (section 9): one "
        f"that meets the target ({target_text()}): "
        f"{_verdict(bool(m['target_met']))}. The int8-quantized teacher keeps "
        f"{pct(m['teacher_int8_accuracy'] / m['teacher_accuracy'])} at "
        f"{ratio(m['teacher_int8_speedup_b1'])} lower batch-1 latency and "
        f"{ratio(m['teacher_int8_size_ratio'])} smaller. A 3-layer DistilBERT-style student keeps "
        f"{pct(m['distilbert_style_of_teacher'])}"
    )
    int8 = _row(r, "distilbert-style 3L (KD) int8")
    if int8 is not None:
        line += f"; int8-quantized it keeps {pct(int8['of_teacher'])}"
    line += f" and answers {ratio(m['distilbert_style_int8_speedup_b1'])} faster than the float teacher."
    lines = [line]
    if "headline_of_teacher" in m:
        d = r.get("details", {})
        seeds = m.get("headline_per_seed", [])
        student = {"bilstm": "BiLSTM", "cnn": "word-CNN"}.get(m.get("headline_student", ""), "")
        kind = f"a {student} " if student else ""
        misses = d.get("headline_misses", {})
        history = [m for m, _ in checked_latency_history(d.get("headline_latency_history", []))]
        lines.append(
            f"- **Headline student (06)**, {d.get('headline_source', 'this run')}: {kind}trained on "
            f"{m['headline_transfer_rows']:,} teacher-labelled rows, it keeps "
            f"{pct(m['headline_of_teacher'])} of the teacher's accuracy on average over {len(seeds)} "
            f"seeds ({', '.join(pct(a) for a in seeds)}) with {ratio(m['headline_fewer_params'], 3)} "
            f"fewer parameters and {ratio(m['headline_speedup_b1'], 3)} lower batch-1 latency "
            f"({ratio(m['headline_speedup_b64'])} at batch 64"
            + (
                "; earlier measurements of the same student: "
                + ", ".join(ratio(h["speedup_b1"], 4) for h in history[:-1])
                + ", each with its reason in chapter 06"
                if len(history) > 1
                else ""
            )
            + f"). Target ({target_text()}): {_verdict(bool(m['headline_target_met']))}"
            + (
                f" (short: {misses_text(misses)})"
                if misses and not m["headline_target_met"]
                else ""
            )
            + "."
        )
    return lines


def _cross_domain(r: Record) -> list[str]:
    m = r["metrics"]
    names = {"amazon": "Amazon", "tweets": "tweets", "nyt": "NYT editorials"}
    target = m["target"]
    rounds = [m[f"{target}_round{k}_accuracy"] for k in range(m.get("noisy_student_rounds", 0) + 1)]
    if "seeds" not in m:  # a record from before the three-student ablation and Noisy Student
        parts = [
            f"{label} {pct(m[f'{d}_movie_label_student_accuracy'])} -> {pct(m[f'{d}_kd_student_accuracy'])}"
            for d, label in names.items()
            if f"{d}_kd_student_accuracy" in m
        ]
        rounds = [m[k] for k in sorted(m) if k.startswith(f"{target}_round")]
        return [
            "- **Cross-domain (07)**, one seed per model: movie-label student -> student distilled on "
            f"unlabelled target-domain text: {'; '.join(parts)}; better on "
            f"{m['domains_where_kd_beats_movie_labels']} of 3 domains. Self-training rounds on "
            f"{names.get(target, target)}: "
            + ", ".join(pct(x) for x in rounds)
            + " (round 0 first; "
            "chapter 07 states the limits of this set-up)."
        ]
    parts = []
    for d, label in names.items():
        c = _comparison(r, f"{d}: target soft targets vs movie soft targets")
        text = "" if c is None else f", target text {points(c.diff)} {interval_text(c)}"
        parts.append(
            f"{label} {pct(m[f'{d}_movie_label_student_accuracy'])} (movie labels), "
            f"{pct(m[f'{d}_movie_soft_student_accuracy'])} (movie soft targets), "
            f"{pct(m[f'{d}_kd_student_accuracy'])} (target soft targets{text})"
        )
    first = _comparison(r, "round 1 vs round 0")
    said = "" if first is None else f"; {comparison_sentence(first)}"
    return [
        f"- **Cross-domain (07)**, word-CNN students, means over {m['seeds']} seeds, target students "
        f"chosen without target labels: {'; '.join(parts)}; distilling on target text beats movie "
        f"labels on {m['domains_where_kd_beats_movie_labels']} of 3 domains. Noisy Student on "
        f"{names.get(target, target)} (a MiniLM student as large as its teacher, filtered and "
        "balanced pseudo-labels, labelled movie snippets mixed in): "
        + ", ".join(f"round {k} {pct(x)}" for k, x in enumerate(rounds))
        + said
        + "."
    ]


def _beyond_logits(r: Record) -> list[str]:
    m = r["metrics"]
    d = r.get("details", {})
    seeds = d.get("seeds", [])
    said = "; ".join(comparison_sentence(Comparison.from_dict(c)) for c in d["comparisons"])
    return [
        f"- **Beyond logits (08)**, 2-layer Transformer student on {d['transfer_size']:,} transfer "
        f"snippets, mean pooling, standardised hint targets, beta chosen on validation, means over "
        f"{len(seeds)} seeds: logit-only KD {pct(m['logit_only_accuracy'])}, MSE hints "
        f"{pct(m['mse_accuracy'])}, cosine hints {pct(m['cosine_accuracy'])}, attention matching "
        f"{pct(m['attention_accuracy'])}, TinyBERT's two stages "
        f"{pct(m['mse_attention_two_stage_accuracy'])}; {said}; "
        f"{m['runs_at_epoch_limit']} "
        f"{'run' if m['runs_at_epoch_limit'] == 1 else 'runs'} ended at the epoch limit."
    ]


def _scaling_out(r: Record) -> list[str]:
    m = r["metrics"]
    return [
        "- **Scaling out (09)**: 1 and 2 processes (Accelerate, gloo) take the same steps to within "
        f"{m['early_step_loss_difference']:.0e} in the first step losses and reach "
        f"{pct(m['accuracy_one_process'])} and {pct(m['accuracy_two_processes'])} test accuracy; "
        "rank 0 labels the transfer rows, rank 1 reads the cache."
    ]


def _language_model(r: Record) -> list[str]:
    m, d = r["metrics"], r.get("details", {})
    if "on_policy_test_perplexity" not in m:  # a record from before the on-policy sections
        gain = 1 - m["token_kd_test_perplexity"] / m["text_only_test_perplexity"]
        return [
            "- **Language model (10)**: token-level KD lowers a character GPT-2 student's test "
            f"perplexity from {num(m['text_only_test_perplexity'], 2)} (text only) to "
            f"{num(m['token_kd_test_perplexity'], 2)} ({pct(gain)} lower)."
        ]
    n = len(d.get("seeds", []))

    def said(name: str, a: str, b: str, measure: str = "test perplexity") -> str:
        c = _comparison(r, name)
        if c is None:
            return f"{a} against {b}: no comparison recorded"
        return comparison_sentence(c, a, b, measure=measure, lower_is_better=True)

    off, on = "off-policy, forward KL", "on-policy, forward KL"
    rev = "on-policy, reverse KL"
    samples = f"{on} vs {off} (teacher perplexity of samples)"
    return [
        f"- **Language model (10)**, character GPT-2 students, test perplexity, means over {n} "
        f"seeds (teacher {num(m['teacher_test_perplexity'], 2)}): text only "
        f"{num(m['text_only_test_perplexity'], 2)}, token-level KD {num(m['token_kd_test_perplexity'], 2)} "
        f"({said('token-level KD vs text only', 'token-level KD', 'text only')}). Continuing from the "
        f"text-only student at an equal teacher budget: off-policy {num(m['off_policy_test_perplexity'], 2)}, "
        f"on-policy {num(m['on_policy_test_perplexity'], 2)}, on-policy reverse KL "
        f"{num(m['reverse_kl_test_perplexity'], 2)}, sequence-level KD on the teacher's greedy output "
        f"{num(m['seq_kd_greedy_test_perplexity'], 2)}; "
        f"{said(f'{on} vs {off}', 'on-policy', 'off-policy')}; on the students' own samples, "
        f"{said(samples, 'on-policy', 'off-policy', 'teacher perplexity')}; "
        f"reverse vs forward KL: {said(f'{rev} vs {on}', 'reverse KL', 'forward KL')}."
    ]


#: chapter results file -> its headline lines (in README order)
HEADLINES: dict[str, Callable[[Record], list[str]]] = {
    "03_teacher": _teacher,
    "05_distillation": _distillation,
    "06_compression": _compression,
    "07_cross-domain": _cross_domain,
    "08_beyond-logits": _beyond_logits,
    "09_scaling-out": _scaling_out,
    "10_outlook-and-faq": _language_model,
}


def results_section(results: Mapping[str, Record], table: str) -> str:
    """The README's results section: per-chapter headlines, then `table` (the core metrics)."""
    dates = sorted({r["date"] for r in results.values() if r.get("date")})
    if not dates:
        when = "on an unrecorded date"
    elif len(dates) == 1:
        when = f"on {dates[0]}"
    else:
        when = f"between {dates[0]} and {dates[-1]}"
    lines = [
        "Every figure below comes from the course runner in the `standard` profile on a 2-core x86_64",
        f"CPU without a GPU, run {when} (dates per row in the table), stored in `results/`.",
        "Print it with `python -m kdhelpers.course table`; reproduce it with",
        "`python -m kdhelpers.course run --profile standard`. Comparisons give paired 95% intervals over",
        "training seeds where the chapter ran several; a single-seed number says so.",
        "",
    ]
    for name, headline in HEADLINES.items():
        if name in results:
            lines += headline(results[name])
    return "\n".join([START, *lines, "", table, END])


def replace_section(text: str, start: str, end: str, section: str) -> str:
    """`text` with the part from marker `start` to marker `end` replaced by `section` (which holds
    the markers); ValueError unless each marker stands exactly once."""
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"the file must contain these markers once each:\n{start}\n...\n{end}")
    head, rest = text.split(start)
    return head + section + rest.split(end)[1]


def update_readme(readme: str, section: str) -> str:
    """`readme` with the text between START and END replaced by `section` (which holds the markers)."""
    return replace_section(readme, START, END, section)


#: the results the README's table lists (the core chapters); every chapter's headline is written
CORE_TABLE = ("03_teacher", "04_pseudo-labels", "05_distillation")


def readme_section(results_dir: Path | None = None) -> str:
    """The README's generated results section for the results in `results_dir` (default: results/)."""
    folder = committed_results_dir() if results_dir is None else Path(results_dir)
    records = {p.stem: read_record(p) for p in sorted(folder.glob("*.json"))}
    table = format_table(
        summary_rows(folder, with_run=True, notebooks=CORE_TABLE),
        ("notebook", "metric", "value", "profile", "date"),
    )
    return results_section(records, table)


def write_or_check(path: Path, new: str, check: bool, command: str) -> int:
    """Write `new` to `path`, or with `check` compare it; 1 (and a message naming `command`) when a
    check finds the file stale."""
    text = path.read_text(encoding="utf-8")
    if check:
        if new != text:
            print(f"{path.name}: out of date; run {command}", file=sys.stderr)
            return 1
        print(f"{path.name}: up to date")
        return 0
    path.write_text(new, encoding="utf-8")
    print(f"{path.name}: written ({command})")
    return 0


def readme_command(check: bool = False, readme: Path | None = None) -> int:
    """Rewrite (or with check, verify) README.md's results section; 1 when a check fails."""
    path = project_root() / "README.md" if readme is None else Path(readme)
    new = update_readme(path.read_text(encoding="utf-8"), readme_section())
    return write_or_check(path, new, check, "python -m kdhelpers.course readme")
