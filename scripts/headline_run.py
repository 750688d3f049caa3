"""The headline run (issue: a student >= 97% of the teacher, >= 10x smaller and faster), on a CPU.

    python scripts/headline_run.py                         # standard teacher, full-size run (hours)
    python scripts/headline_run.py --profile quick --out /tmp/headline.json   # smoke test (minutes)

Builds the large transfer set (movie snippets, the other VADER domains' sentences, masked copies and
embedding-neighbour copies; no validation or test text), labels it once with chapter 03's teacher
(cached), gives the student a compact vocabulary, and trains it with chapter 05's alpha and T on
nested subsets of growing size, over several seeds. Writes one JSON file (default
benchmarks/headline.json) that chapter 06 reads and shows: the curve of accuracy against
transfer-set size, what each source of text contributes, and the headline row (accuracy, share of
the teacher, parameters, batch-1 and batch-64 latency with the course's latency method).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

from kdhelpers.batching import TextExamples
from kdhelpers.chapters.headline import (
    TransferRecipe,
    build_transfer,
    compact_vocabulary,
    remap_split,
)
from kdhelpers.chapters.recipes import (
    StudentConfig,
    chosen_alpha_temperature,
    course_settings,
    course_teacher,
    make_student,
    split_accuracy,
    teacher_logits,
    train_student,
)
from kdhelpers.latency import measure_latency, speedup
from kdhelpers.models import count_parameters, project_teacher_embeddings
from kdhelpers.paths import project_root
from kdhelpers.session import start
from kdhelpers.stats import compare_seeds, over_seeds
from kdhelpers.train import make_kd_loss

#: student sizes per kind: about 2 M parameters with a vocabulary of about 16,000 pieces
STUDENTS = {
    "cnn": {"embed_dim": 100, "channels": 192, "widths": (2, 3, 4, 5)},
    "bilstm": {"embed_dim": 100, "hidden": 160},
}
PROFILES = {
    "quick": {"recipe": TransferRecipe(other_domain_rows=100, tang_copies=1, neighbour_copies=1), "sizes": [200, 0],
              "seeds": [0, 1], "epochs": 1, "ablation": False, "latency_inputs": 40},
    "standard": {"recipe": TransferRecipe(tang_copies=8, neighbour_copies=8),
                 "sizes": [25_000, 50_000, 100_000, 200_000, 0], "seeds": [0, 1, 2], "epochs": 10,
                 "ablation": True, "latency_inputs": 400},
}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--profile", default="standard", choices=tuple(PROFILES))
    p.add_argument("--kind", default="cnn", choices=tuple(STUDENTS))
    p.add_argument("--out", type=Path, default=project_root() / "benchmarks" / "headline.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the experiment and write its JSON; 0 when it ran."""
    args = parse_args(argv)
    plan = PROFILES[args.profile]
    session = start(args.profile, 0)
    device = session.device
    settings = course_settings(args.profile, 0)
    teacher, tokenizer, splits, _, _ = course_teacher(settings, device)
    teacher_acc = split_accuracy(teacher, splits["test"], device)
    table = teacher.get_input_embeddings().weight.detach().cpu()
    t0 = time.perf_counter()
    transfer = build_transfer(splits, tokenizer, table, plan["recipe"], settings.max_length)
    sources = {
        f"{o}, {s}": len(transfer.rows_where(source=[s], origin=[o]))
        for o in sorted(set(transfer.origin))
        for s in sorted(set(transfer.source))
    }
    print(
        f"transfer set: {len(transfer.split)} rows {sources} ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    t0 = time.perf_counter()
    logits = teacher_logits(teacher, transfer.split, device, name=f"headline-{args.profile}")
    label_s = time.perf_counter() - t0
    vm = compact_vocabulary(
        transfer.split.input_ids,
        tokenizer.vocab_size,
        [0, *tokenizer.all_special_ids],
        tokenizer.unk_token_id,
    )
    ids = vm.remap(transfer.split.input_ids)
    val, test = remap_split(splits["validation"], vm), remap_split(splits["test"], vm)
    alpha, temperature, from_05 = chosen_alpha_temperature(args.profile)
    sizes = STUDENTS[args.kind]
    embeddings = vm.rows_of(project_teacher_embeddings(teacher, sizes["embed_dim"])[0])
    config = StudentConfig(epochs=plan["epochs"], lr=1e-3, batch_size=128)
    labelled = (transfer.labels >= 0).nonzero().flatten().tolist()
    g = torch.Generator().manual_seed(0)
    is_labelled = set(labelled)
    others = [i for i in torch.randperm(len(ids), generator=g).tolist() if i not in is_labelled]

    def train(rows: list[int], seed: int, desc: str) -> tuple[float, dict, torch.nn.Module]:
        """Test accuracy, history and model of a fresh student trained on the transfer rows `rows`."""
        model = make_student(args.kind, vm.size, embeddings, seed=seed, **sizes)
        data = TextExamples([ids[i] for i in rows], transfer.labels[rows], logits[rows])
        hist = train_student(
            model,
            data,
            val,
            make_kd_loss(alpha, temperature),
            device,
            config.replace(seed=seed),
            desc,
        )
        return split_accuracy(model, test, device), hist, model

    variants = {
        "without the other domains": transfer.rows_where(origin=["movie train", "movie pool"]),
        "without neighbour copies": transfer.rows_where(source=["real", "masked copies"]),
        "without masked copies": transfer.rows_where(source=["real", "neighbour copies"]),
    }
    sizes_to_run = list(plan["sizes"])
    if plan["ablation"]:  # random subsets of the same sizes: the paired controls of the ablation
        sizes_to_run = sorted({*plan["sizes"][:-1], *(len(r) for r in variants.values())}) + [0]
    curve, models = [], {}
    for n in sizes_to_run:
        rows = labelled + (others if n == 0 else others[: max(0, n - len(labelled))])
        point = {"rows": len(rows), "accuracy": {}, "best_epoch": {}, "epoch_limit": config.epochs}
        for seed in plan["seeds"]:
            acc, hist, model = train(rows, seed, f"{len(rows)} rows, seed {seed}")
            point["accuracy"][seed], point["best_epoch"][seed] = acc, hist["best_epoch"]
            if n == 0:
                models[seed] = model
            print(
                f"{len(rows)} rows, seed {seed}: {acc:.4f} (best epoch {hist['best_epoch']})",
                flush=True,
            )
        curve.append(point)
    full = curve[-1]
    per_seed = full["accuracy"]
    mean = over_seeds(per_seed)

    comparisons, ablation = [], []
    if plan["ablation"]:
        by_size = {point["rows"]: point["accuracy"] for point in curve}
        for name, rows in variants.items():
            accs = {seed: train(rows, seed, f"{name}, seed {seed}")[0] for seed in plan["seeds"]}
            ablation.append({"variant": name, "rows": len(rows), "accuracy": accs})
            comparisons.append(compare_seeds(f"all sources vs {name}", per_seed, accs).as_dict())
            same_size = by_size[len(rows)]  # a random subset of the whole set, as many rows
            comparisons.append(
                compare_seeds(f"random rows vs {name} (same size)", same_size, accs).as_dict()
            )
            print(name, len(rows), accs, flush=True)

    student = models[plan["seeds"][0]].to("cpu")
    cpu_teacher = teacher.to("cpu")
    test_ids = test.input_ids
    n_lat = min(plan["latency_inputs"], len(test_ids))
    inputs = {"teacher": splits["test"].input_ids[:n_lat], "student": test_ids[:n_lat]}
    models_cpu = {"teacher": cpu_teacher, "student": student}
    lat1 = measure_latency(models_cpu, inputs, min_inputs=min(200, n_lat))
    n64 = len(test_ids) // 64
    inputs64 = {"teacher": splits["test"].input_ids[: n64 * 64], "student": test_ids[: n64 * 64]}
    lat64 = measure_latency(models_cpu, inputs64, batch_size=64, warmup=2, min_inputs=n64)
    n_student, n_teacher = count_parameters(student), count_parameters(cpu_teacher)
    record = {
        "date": dt.date.today().isoformat(),
        "profile": args.profile,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "threads": lat1["teacher"].threads},
        "teacher_accuracy": teacher_acc,
        "alpha": alpha,
        "temperature": temperature,
        "alpha_temperature_from_chapter_05": from_05,
        "transfer_rows": len(ids),
        "sources": sources,
        "labelling_seconds": label_s,
        "vocabulary": vm.size,
        "student": {"kind": args.kind, **sizes, "parameters": n_student},
        "config": {"epochs": config.epochs, "lr": config.lr, "batch_size": config.batch_size},
        "curve": curve,
        "ablation": ablation,
        "comparisons": comparisons,
        "headline": {
            "of_teacher": mean.mean / teacher_acc,
            "accuracy_mean": mean.mean,
            "accuracy_std": mean.std,
            "per_seed": per_seed,
            "fewer_params": n_teacher / n_student,
            "speedup_b1": speedup(lat1["teacher"], lat1["student"]),
            "speedup_b64": speedup(lat64["teacher"], lat64["student"]),
            "latency": {name: {"b1": lat1[name].as_dict(), "b64": lat64[name].as_dict()} for name in lat1},
        },
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(record["headline"], indent=1))
    print("written", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
