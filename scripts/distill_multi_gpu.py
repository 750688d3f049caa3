"""Distil the course teacher into a small student on one or several processes (Hugging Face Accelerate).

One process (CPU or one GPU):
    python scripts/distill_multi_gpu.py --profile quick
Several GPUs on one machine (bf16 autocast, losses in fp32):
    accelerate launch --multi_gpu --num_processes 4 --mixed_precision bf16 scripts/distill_multi_gpu.py --profile full
Two CPU processes (gloo), as CI does:
    torchrun --standalone --nproc_per_node 2 scripts/distill_multi_gpu.py --profile quick --cpu

`--batch-size` counts examples per optimiser step over all processes, so the same command line
trains the same model on 1 or N processes. The teacher (chapter 03) is loaded from its checkpoint
or trained by the main process; its logits are computed once by the main process and cached.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import transformers

from kdhelpers.batching import TextExamples
from kdhelpers.chapters.distributed import (
    DistillConfig,
    distill_accelerate,
    make_accelerator,
    shared_teacher_logits,
)
from kdhelpers.models import load_teacher, project_teacher_embeddings, without_dropout
from kdhelpers.paths import cache_dir
from kdhelpers.profiles import choose
from kdhelpers.students import make_student
from kdhelpers.teacher import (
    TextSplit,
    course_data,
    course_settings,
    load_or_train_teacher,
    split_accuracy,
    tokenize_splits,
)
from kdhelpers.transfer import transfer_set

DEFAULTS = {
    "quick": dict(aug_copies=0, epochs=2, batch_size=32, lr=3e-3),
    "standard": dict(aug_copies=6, epochs=4, batch_size=64, lr=1e-3),
    "full": dict(aug_copies=6, epochs=10, batch_size=64, lr=1e-3),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (profile defaults fill what is not given)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--profile", choices=("quick", "standard", "full"), default="quick")
    p.add_argument("--student", choices=("bag", "cnn"), default="cnn")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="examples per optimiser step, over all processes")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step")
    p.add_argument("--lr", type=float)
    p.add_argument("--alpha", type=float, default=0.0)
    p.add_argument("--temperature", type=float, default=8.0)
    p.add_argument("--aug-copies", type=int)
    p.add_argument(
        "--max-rows", type=int, help="train on a seeded random subset of the transfer set"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu", action="store_true", help="force the CPU (gloo) even where GPUs exist")
    p.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        default=None,
        help="default: what `accelerate launch` says, else no",
    )
    p.add_argument(
        "--no-dropout",
        action="store_true",
        help="dropout off: 1 and N processes then agree exactly",
    )
    p.add_argument("--out", type=Path, help="write a JSON summary here (main process)")
    p.add_argument(
        "--save-state", type=Path, help="write the student's final weights here (safetensors)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the distillation and return (and optionally save) its summary."""
    args = parse_args(argv)
    if args.max_rows is not None and args.max_rows < 1:
        raise SystemExit(f"--max-rows must be >= 1 (got {args.max_rows})")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    start = time.perf_counter()
    accelerator = make_accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    d = choose(args.profile, **DEFAULTS)
    pick = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in d.items()}
    settings = course_settings(args.profile, args.seed)
    _, tokenizer = load_teacher(None)
    splits = tokenize_splits(course_data(settings), tokenizer, max_length=settings.max_length)
    # the teacher's new head and its dropout draw from the global generator: seed it, so that a
    # teacher trained now is the same on every run of the same command line
    torch.manual_seed(args.seed)
    with (
        accelerator.main_process_first()
    ):  # the main process trains the teacher if no checkpoint exists
        teacher, _ = load_or_train_teacher(settings, splits, accelerator.device)
    teacher.eval()

    transfer, labels = transfer_set(
        splits, pick["aug_copies"], tokenizer.mask_token_id, seed=args.seed
    )
    if args.max_rows is not None and args.max_rows < len(
        transfer
    ):  # label only the rows we train on
        rows = sorted(
            torch.randperm(len(transfer), generator=torch.Generator().manual_seed(args.seed))[
                : args.max_rows
            ].tolist()
        )
        transfer = TextSplit(
            [transfer.ids[i] for i in rows],
            [transfer.texts[i] for i in rows],
            [transfer.input_ids[i] for i in rows],
            transfer.gold[rows],
        )
        labels = labels[rows]
    cached = shared_teacher_logits(
        accelerator, teacher, transfer.ids, transfer.input_ids, cache_dir(), name="transfer"
    )
    examples = TextExamples(transfer.input_ids, labels, cached.logits)

    emb, _ = project_teacher_embeddings(teacher, 64)
    student = make_student(args.student, tokenizer.vocab_size, emb, seed=args.seed)
    if args.no_dropout:
        without_dropout(student)
    config = DistillConfig(
        epochs=pick["epochs"],
        lr=pick["lr"],
        batch_size=pick["batch_size"],
        grad_accum=args.grad_accum,
        alpha=args.alpha,
        temperature=args.temperature,
        seed=args.seed,
    )
    history = distill_accelerate(accelerator, student, examples, config)
    from accelerate.utils import gather_object

    from_cache = gather_object([cached.from_cache])
    summary: dict = {}
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(student)
        summary = {
            "world_size": accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type),
            "mixed_precision": accelerator.mixed_precision,
            "device": str(accelerator.device),
            "teacher_logits_from_cache_per_rank": from_cache,
            "rows_trained_on": len(examples),
            "test_accuracy": split_accuracy(model, splits["test"], accelerator.device),
            "step_loss": history["step_loss"],
            "epoch_loss": history["epoch_loss"],
            "config": history["config"],
            "seconds": time.perf_counter() - start,
        }
        if args.save_state is not None:
            from safetensors.torch import save_file

            save_file(
                {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                str(args.save_state),
            )
        if args.out is not None:
            args.out.write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    result = main()
    if result:
        print(
            json.dumps(
                {k: v for k, v in result.items() if k not in ("step_loss", "config")}, indent=2
            )
        )
