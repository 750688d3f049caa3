"""Run TRL's GKDTrainer and kdhelpers.chapters.lm.onpolicy.distill_on_policy on the same tiny course-style LMs, offline.

Needs `trl` (in the course's dev extras). Chapter 10 runs the same comparison on its own models
through `kdhelpers.chapters.lm.distill_with_trl`; this script keeps the step-by-step loss record
that explains TRL's loss normalisation (docs/onpolicy-notes.md). Both students start from the
same weights and are distilled from the same (briefly trained) teacher with the same settings;
the script prints both training losses and the same sample metrics for both, so a reader can
check they are comparable. CPU only, about a minute or two.

    python scripts/trl_gkd_check.py
"""

from __future__ import annotations

import copy
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from kdhelpers.chapters import lm  # noqa: E402
from kdhelpers.chapters.lm.onpolicy import (  # noqa: E402
    EvalConfig,
    OnPolicyConfig,
    distill_on_policy,
    sample_metrics,
)

TEXTS = [
    "the food was great and the service was friendly.",
    "i loved this movie, the acting was superb!",
    "the plot was boring and far too long.",
    "what a terrible waste of time and money.",
    "the staff were rude but the room was clean.",
    "great phone, the battery lasts all day.",
    "the camera is poor and the screen scratches.",
    "a wonderful story told with warmth and wit.",
    "i would not recommend this hotel to anyone.",
    "the soup was cold and the bread was stale.",
    "best purchase i have made this year!",
    "the sequel is even better than the first film.",
    "shipping was slow and the box was damaged.",
    "the music was lovely and the dancers were great.",
    "it broke after two days, very disappointing.",
    "the service was slow but the food was tasty.",
] * 4
HELD_OUT = [
    "the room was great and the staff were friendly.",
    "the movie was long and the plot was poor.",
    "the battery is terrible and the screen is great.",
    "i loved the soup and the bread.",
]
STEPS, BATCH, LR, LMBDA, BETA, TEMPERATURE, PROMPT, NEW, SEED = 20, 8, 3e-3, 1.0, 0.5, 1.0, 6, 24, 0


def main() -> None:
    """Train a teacher briefly, then distil one student copy with TRL and one with kdhelpers; print both."""
    print(f"trl {lm.trl_version()}, torch {torch.__version__}")
    tok = lm.build_char_tokenizer(TEXTS + HELD_OUT)
    seqs = tok.encode_batch(TEXTS)
    held_out = tok.encode_batch(HELD_OUT)
    teacher = lm.make_lm(
        tok.vocab_size, n_layer=1, n_embd=48, n_head=2, n_positions=64, dropout=0.0, seed=SEED
    )
    start = time.perf_counter()
    lm.train_lm(
        teacher, seqs, lm.LMTrainConfig(steps=150, batch_size=16, lr=1e-2, seed=SEED), device="cpu"
    )
    print(
        f"teacher trained in {time.perf_counter() - start:.0f} s; held-out perplexity "
        f"{lm.perplexity(teacher, held_out, device='cpu'):.2f}"
    )
    student0 = lm.make_lm(
        tok.vocab_size, n_layer=1, n_embd=16, n_head=2, n_positions=64, dropout=0.0, seed=SEED + 1
    )
    config = OnPolicyConfig(
        steps=STEPS,
        batch_size=BATCH,
        lr=LR,
        lmbda=LMBDA,
        divergence="jsd",
        beta=BETA,
        temperature=TEMPERATURE,
        prompt_len=PROMPT,
        max_new_tokens=NEW,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=SEED,
    )
    trl_student, trl_history = lm.distill_with_trl(student0, teacher, tok, seqs, config)
    losses, per_token, counts = (trl_history[k] for k in ("loss", "per_token_loss", "loss_tokens"))
    trl_seconds = trl_history["seconds"]

    ours = copy.deepcopy(student0)
    history = distill_on_policy(ours, teacher, seqs, config, device="cpu")

    def row(values: list[float]) -> str:
        return " ".join(f"{v:.4f}" for v in values)

    print(
        f"\nsettings: steps={STEPS} batch={BATCH} lr={LR} lmbda={LMBDA} beta={BETA} temperature={TEMPERATURE} "
        f"prompt_len={PROMPT} max_new_tokens={NEW}"
    )
    print(f"TRL GKDTrainer loss per step ({trl_seconds:.0f} s):\n  {row(losses)}")
    print(
        f"TRL's JSD averaged over the generated tokens (what kdhelpers reports):\n  {row(per_token)}"
    )
    print(
        f"(generated tokens in the loss, num_items_in_batch TRL divides by) per step:\n  {counts}"
    )
    print(
        f"kdhelpers distill_on_policy loss per step ({history['seconds']:.0f} s, "
        f"{history['teacher_tokens']} teacher tokens):\n  {row(history['loss'])}"
    )
    evaluation = EvalConfig(prompt_len=PROMPT, max_new_tokens=NEW, temperature=1.0, seed=SEED)
    print("\nheld-out metrics (student samples from held-out prompts, teacher scores them):")
    print(
        f"  {'student':<22} {'ppl(held-out)':>13} {'teacher ppl':>11} {'distinct-3':>10} "
        f"{'rep-3':>6} {'KL tf':>7} {'KL fr':>7} {'gap':>7}"
    )
    for name, model in (
        ("initial", student0),
        ("TRL GKDTrainer", trl_student),
        ("kdhelpers", ours),
    ):
        m = sample_metrics(model, teacher, held_out + seqs[:16], evaluation)
        print(
            f"  {name:<22} {lm.perplexity(model, held_out, device='cpu'):>13.2f} {m['teacher_perplexity']:>11.2f} "
            f"{m['distinct_n']:>10.3f} {m['repetition_rate']:>6.3f} {m['exposure_teacher_forced']:>7.3f} "
            f"{m['exposure_free_running']:>7.3f} {m['exposure_gap']:>7.3f}"
        )


if __name__ == "__main__":
    main()
