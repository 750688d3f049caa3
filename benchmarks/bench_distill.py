"""Distillation cost and student speed, measured side by side in one process.

    python benchmarks/bench_distill.py            # full run (several minutes), writes results.md/json
    python benchmarks/bench_distill.py --quick    # smoke run (< 2 min); CI runs this
    python benchmarks/bench_distill.py --device cuda

Measures, on the same data and machine: (1) a distillation epoch with cached teacher logits vs.
the teacher run online in every step vs. label-only training of the same student; (2) teacher vs.
students: parameters, size, CPU latency at batch 1 and 64, throughput; (3) teacher labelling
throughput with and without length-sorted batches; (4) the headline student of
scripts/headline_run.py beside the fine-tuned teacher (accuracy retained, parameter and latency
ratios), when this machine holds that run; (5) optionally, the quick-profile wall time of every
notebook (the CI budget).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdhelpers.batching import TextExamples, make_loader
from kdhelpers.chapters.headline import (
    choose_headline_run,
    load_headline_student,
    remap_split,
    time_headline,
)
from kdhelpers.device import get_device, to_device
from kdhelpers.latency import measure_latency, speedup
from kdhelpers.losses import distillation_loss
from kdhelpers.models import (
    count_parameters,
    load_teacher,
    logits_of,
    model_size_mb,
    project_teacher_embeddings,
)
from kdhelpers.pseudo import predict_logits
from kdhelpers.students import make_student
from kdhelpers.teacher import (
    course_data,
    course_settings,
    course_teacher,
    split_accuracy,
    tokenize_splits,
)
from kdhelpers.train import (
    OptimiserStep,
    adamw_with_warmup,
    cross_entropy_loss,
    forward_logits,
    make_kd_loss,
)

HERE = Path(__file__).resolve().parent


def timed_epoch(student, loader, loss_step, device) -> float:
    """Seconds for one training epoch of `student` (the course's optimiser step) where
    loss_step(logits, batch) gives the loss."""
    student.to(device).train()
    optimizer, _ = adamw_with_warmup(student.parameters(), 1e-3, 0.01, len(loader), 0.0)
    step = OptimiserStep(optimizer)
    start = time.perf_counter()
    for batch in loader:
        batch = to_device(batch, device)
        step(loss_step(forward_logits(student, batch), batch))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_epochs(teacher, emb, ids, labels, device, repeats: int) -> dict:
    """Median epoch time: label-only, KD with cached logits, KD with the teacher run online."""
    teacher.to(device).eval()
    cached = predict_logits(teacher, ids, batch_size=128, device=device)
    kd = make_kd_loss(alpha=0.5, temperature=4.0)

    def online_step(logits, batch):
        with torch.inference_mode():
            t = logits_of(
                teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            ).float()
        return distillation_loss(logits, t.clone(), batch["labels"], alpha=0.5, temperature=4.0)

    runs = {
        "labels only": (TextExamples(ids, labels), cross_entropy_loss),
        "KD, cached teacher logits": (TextExamples(ids, labels, cached), kd),
        "KD, teacher run online": (TextExamples(ids, labels), online_step),
    }
    out = {}
    for name, (data, step) in runs.items():
        times = []
        for r in range(repeats):
            student = make_student("bag", teacher.config.vocab_size, emb, seed=r)
            times.append(
                timed_epoch(
                    student,
                    make_loader(data, 64, shuffle=True, device=device, seed=r),
                    step,
                    device,
                )
            )
        out[name] = statistics.median(times)
    return out


def bench_models(teacher, emb, inputs, min_inputs: int) -> list[dict]:
    """Parameters, size and CPU latency/throughput of the teacher and each student kind, timed together
    with the course's latency method (different inputs, warm-up, one thread, interleaved)."""
    vocab = teacher.config.vocab_size
    models = {
        "teacher (MiniLM-L6)": teacher,
        "bag": make_student("bag", vocab, emb),
        "cnn": make_student("cnn", vocab, emb),
        "tiny-bert": make_student("tiny-bert", vocab),
    }
    models = {name: model.to("cpu").eval() for name, model in models.items()}
    n64 = len(inputs) // 64
    b1 = measure_latency(models, inputs, min_inputs=min_inputs)
    b64 = measure_latency(models, inputs[: n64 * 64], batch_size=64, warmup=2, min_inputs=n64)
    first = next(iter(models))
    return [
        {
            "model": name,
            "params_m": count_parameters(model) / 1e6,
            "size_mb": model_size_mb(model),
            "latency_b1_ms": b1[name].median_ms,
            "iqr_b1_ms": b1[name].iqr_ms,
            "latency_b64_ms": b64[name].median_ms,
            "throughput_b64": b64[name].examples_per_s,
            "speedup_b1": speedup(b1[first], b1[name]),
            "speedup_b64": speedup(b64[first], b64[name]),
            "inputs_b1": b1[name].n,
            "threads": b1[name].threads,
        }
        for name, model in models.items()
    ]


def bench_headline(splits, settings, lat_inputs: int) -> dict | None:
    """The headline student (scripts/headline_run.py; the committed run chosen on validation, as in
    chapter 06) beside the fine-tuned teacher, timed together:
    accuracy retained, parameter ratio, batch-1 and batch-64 latency ratios; None when this machine
    holds no headline run or no checkpoint of its student."""
    choice = choose_headline_run()  # the committed run chapter 06 shows, chosen on validation
    record = choice.record if choice is not None else None
    loaded = load_headline_student(record) if record is not None else None
    if loaded is None:
        return None
    student, vm = loaded
    teacher = course_teacher(settings, torch.device("cpu"))[0].to("cpu").eval()
    test = splits["test"]
    compact = remap_split(test, vm)
    cpu = torch.device("cpu")
    acc_teacher, acc_student = (
        split_accuracy(teacher, test, cpu),
        split_accuracy(student, compact, cpu),
    )
    n = min(lat_inputs, len(test))
    b1, b64 = time_headline(teacher, student, test.input_ids[:n], compact.input_ids[:n], n)
    return {
        "student": f"{record['student']['kind']} on {record['transfer_rows']:,} rows ({record['date']})",
        "teacher_accuracy": acc_teacher,
        "student_accuracy": acc_student,
        "accuracy_retained": acc_student / acc_teacher,
        "fewer_params": count_parameters(teacher) / count_parameters(student),
        "speedup_b1": speedup(b1["teacher"], b1["student"]),
        "speedup_b64": speedup(b64["teacher"], b64["student"]),
        "inputs_b1": b1["student"].n,
        "threads": b1["student"].threads,
    }


def bench_labelling(teacher, ids, device, batch_sizes) -> list[dict]:
    """Teacher labelling throughput with and without length-sorted batches."""
    teacher.to(device).eval()
    predict_logits(teacher, ids[:64], batch_size=32, device=device)  # warm-up
    rows = []
    for bs in batch_sizes:
        row = {"batch_size": bs}
        for sort in (False, True):
            start = time.perf_counter()
            predict_logits(teacher, ids, batch_size=bs, device=device, sort_by_length=sort)
            if device.type == "cuda":
                torch.cuda.synchronize()
            row["sorted" if sort else "padded_to_max"] = len(ids) / (time.perf_counter() - start)
        row["speedup"] = row["sorted"] / row["padded_to_max"]
        rows.append(row)
    return rows


def bench_notebooks() -> list[dict]:
    """Quick-profile wall time of every notebook, executed with papermill in this process's order."""
    from kdhelpers.course.runner import execute_notebook, list_notebooks, temporary_env

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "KD_CHECKPOINT_DIR": f"{tmp}/ck",
            "KD_CACHE_DIR": f"{tmp}/cache",
            "KD_RESULTS_DIR": f"{tmp}/res",
        }
        with temporary_env(**env):
            for nb in list_notebooks():
                seconds = execute_notebook(
                    nb, Path(tmp) / nb.name, "quick", Path(env["KD_RESULTS_DIR"])
                )
                rows.append({"notebook": nb.stem, "seconds": seconds})
    return rows


def table(rows: list[dict], fmt: dict[str, str] | None = None) -> str:
    """Markdown table of dict rows."""
    fmt = fmt or {}
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [
            fmt.get(k, "{:.3g}").format(v) if isinstance(v, float) else str(v) for k, v in r.items()
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (CI)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    parser.add_argument(
        "--notebooks",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time every notebook in the quick profile (default: on unless --quick)",
    )
    parser.add_argument(
        "--out", type=Path, default=HERE, help="folder for results.md and results.json"
    )
    args = parser.parse_args(argv)
    device = get_device(args.device)
    n, repeats, lat_inputs = (256, 1, 64) if args.quick else (3000, 3, 2000)
    run_notebooks = (not args.quick) if args.notebooks is None else args.notebooks

    import transformers

    transformers.logging.set_verbosity_error()
    settings = course_settings("standard")
    ds = course_data(settings)
    teacher, tokenizer = load_teacher(None, pooling="mean")
    splits = tokenize_splits(ds, tokenizer, max_length=settings.max_length)
    ids = (splits["train"].input_ids + splits["unlabeled"].input_ids)[:n]
    labels = torch.cat([splits["train"].gold, splits["unlabeled"].gold])[:n]
    emb, _ = project_teacher_embeddings(teacher, 64)

    header = {
        "date": dt.date.today().isoformat(),
        "mode": "quick" if args.quick else "full",
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "examples": n,
    }
    if device.type == "cuda":
        header["gpu"] = torch.cuda.get_device_name(device)
    print("benchmark:", header, flush=True)

    epochs = bench_epochs(teacher, emb, ids, labels, device, repeats)
    ratios = {
        "cached_kd_over_labels": epochs["KD, cached teacher logits"] / epochs["labels only"],
        "online_kd_over_cached_kd": epochs["KD, teacher run online"]
        / epochs["KD, cached teacher logits"],
    }
    print(epochs, ratios, flush=True)
    test_ids = splits["test"].input_ids[:lat_inputs]
    models = bench_models(teacher, emb, test_ids, min_inputs=min(200, len(test_ids)))
    labelling = bench_labelling(teacher, ids, device, [16, 64] if args.quick else [16, 64, 128])
    headline = None if args.quick else bench_headline(splits, settings, lat_inputs)
    notebooks = bench_notebooks() if run_notebooks else []

    best_student = next(
        r for r in models if r["model"] == "cnn"
    )  # chapter 05's best distilled student
    best_sort = max(r["speedup"] for r in labelling)
    targets = [
        (
            "cached-logit KD epoch <= 1.15x the label-only epoch",
            ratios["cached_kd_over_labels"] <= 1.15,
            f"{ratios['cached_kd_over_labels']:.2f}x",
        ),
        (
            "online-teacher epoch several (>= 3x) times slower than cached",
            ratios["online_kd_over_cached_kd"] >= 3,
            f"{ratios['online_kd_over_cached_kd']:.1f}x",
        ),
        (
            "best distilled student (cnn, chapter 05) >= 10x faster than the teacher at batch 1",
            best_student["speedup_b1"] >= 10,
            f"{best_student['model']}: {best_student['speedup_b1']:.0f}x",
        ),
        (
            "length-sorted labelling >= 1.5x faster than padding to the maximum",
            best_sort >= 1.5,
            f"{best_sort:.2f}x",
        ),
    ]
    if notebooks:
        slowest = max(notebooks, key=lambda r: r["seconds"])
        targets.append(
            (
                "every notebook <= 60 s in the quick profile",
                slowest["seconds"] <= 60,
                f"slowest {slowest['notebook']}: {slowest['seconds']:.0f} s; "
                f"all: {sum(r['seconds'] for r in notebooks):.0f} s",
            )
        )

    md = [
        f"# Benchmark results ({header['mode']} run)",
        "",
        "Produced by `python benchmarks/bench_distill.py"
        + (" --quick" if args.quick else "")
        + "`; all figures "
        "from one process on one machine.",
        "",
        table([header]),
        "",
        "## 1. Distillation epoch time (bag student, batch 64)",
        "",
        table([{"training": k, "seconds per epoch": v} for k, v in epochs.items()]),
        "",
        f"Cached KD / label-only: **{ratios['cached_kd_over_labels']:.2f}x**; "
        f"online teacher / cached KD: **{ratios['online_kd_over_cached_kd']:.1f}x**.",
        "",
        "## 2. Teacher vs. students (CPU latency: `kdhelpers.latency.measure_latency`, every model on "
        "the same different test snippets, warm-up, one thread, interleaved; medians and IQR in ms)",
        "",
        table(models),
        "",
        "## 3. Teacher labelling throughput (examples/s)",
        "",
        table(labelling),
        "",
    ]
    md += ["## 4. The headline student beside the teacher (scripts/headline_run.py)", ""]
    md += (
        [table([headline]), ""]
        if headline is not None
        else ["Not measured: " + ("the quick run skips it." if args.quick else
              "no headline run or student checkpoint here (run `python scripts/headline_run.py`)."), ""]
    )  # fmt: skip
    if notebooks:
        md += [
            "## 5. Quick-profile wall time per notebook (s)",
            "",
            table(notebooks),
            "",
            f"Whole suite: **{sum(r['seconds'] for r in notebooks):.0f} s** (papermill only; CI also re-runs "
            "each notebook under nbval).",
            "",
        ]
    md += ["## Targets", "", "| target | met | measured |", "|---|---|---|"]
    md += [f"| {name} | {'yes' if ok else '**no**'} | {value} |" for name, ok, value in targets]
    text = "\n".join(md) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if not args.quick else "-quick"
    (args.out / f"results{suffix}.md").write_text(text)
    (args.out / f"results{suffix}.json").write_text(
        json.dumps(
            {
                "header": header,
                "epochs": epochs,
                "ratios": ratios,
                "models": models,
                "labelling": labelling,
                "notebooks": notebooks,
                "headline": headline,
                "targets": [{"target": a, "met": b, "measured": c} for a, b, c in targets],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
