"""The README's results section, written from the committed results/ with the one number formatter.

`python -m kdhelpers.course readme` rewrites the part of README.md between START and END from the
results JSON files; `--check` fails when the README differs, so a README number is always the
committed run's. Each chapter's headline is a plain function of its results record, chosen by
name from HEADLINES; a chapter without results is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kdhelpers.numfmt import num, pct, points, ratio
from kdhelpers.stats import Comparison, comparison_sentence, interval_text
from kdhelpers.validate import check_number

START = "<!-- results: written by `python -m kdhelpers.course readme` from results/; edit there -->"
END = "<!-- /results -->"

Record = Mapping[str, Any]

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
    for i, (m, repeats) in enumerate(_checked_history(history)):
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


def _checked_history(
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
        history = [m for m, _ in _checked_history(d.get("headline_latency_history", []))]
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


def update_readme(readme: str, section: str) -> str:
    """`readme` with the text between START and END replaced by `section` (which holds the markers)."""
    if readme.count(START) != 1 or readme.count(END) != 1:
        raise ValueError(
            f"README.md must contain the results markers once each:\n{START}\n...\n{END}"
        )
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return head + section + tail
