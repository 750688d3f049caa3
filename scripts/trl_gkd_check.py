"""Run TRL's GKDTrainer and kdhelpers.chapters.lm.onpolicy.distill_on_policy on the same tiny course-style LMs, offline.

Needs `trl` (see docs/onpolicy-notes.md: a separate virtualenv). Both students start from the
same weights and are distilled from the same (briefly trained) teacher with the same settings;
the script prints both training losses and the same sample metrics for both, so a reader can
check they are comparable. CPU only, about a minute or two.

    PYTHONPATH=. /tmp/trl-venv/bin/python scripts/trl_gkd_check.py
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path

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


def char_tokenizer_fast(tok: lm.CharTokenizer):
    """The course's character tokenizer as a transformers PreTrainedTokenizerFast (same ids)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok.token(i): i for i in range(tok.vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


class PromptCollator:
    """Batches of prompt (first PROMPT ids) + reference continuation in the fields GKDTrainer reads."""

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        seqs = [list(e["input_ids"])[: PROMPT + NEW] for e in examples]
        ids, attn = lm.pad_batch(seqs)
        labels = ids.clone()
        labels[attn == 0] = -100
        labels[:, :PROMPT] = -100
        prompts = ids[:, :PROMPT].clone()
        return {
            "input_ids": ids,
            "attention_mask": attn,
            "labels": labels,
            "prompts": prompts,
            "prompt_attention_mask": torch.ones_like(prompts),
        }


def main() -> None:
    """Train a teacher briefly, then distil one student copy with TRL and one with kdhelpers; print both."""
    import trl
    from datasets import Dataset
    from transformers import GPT2LMHeadModel, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    print(f"trl {trl.__version__}, torch {torch.__version__}")
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

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        teacher.save_pretrained(root / "teacher")
        student0.save_pretrained(root / "student")
        hf_tok = char_tokenizer_fast(tok)
        hf_tok.save_pretrained(root / "student")
        assert hf_tok(TEXTS[0], add_special_tokens=False)["input_ids"] == tok.encode(TEXTS[0])[1:-1]

        trl_student = GPT2LMHeadModel.from_pretrained(root / "student")
        trl_teacher = GPT2LMHeadModel.from_pretrained(root / "teacher")
        args = GKDConfig(
            output_dir=str(root / "out"),
            max_steps=STEPS,
            per_device_train_batch_size=BATCH,
            learning_rate=LR,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            lmbda=LMBDA,
            beta=BETA,
            temperature=TEMPERATURE,
            max_new_tokens=NEW,
            seq_kd=False,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=SEED,
            disable_tqdm=True,
        )
        losses: list[float] = []

        class Losses(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
                if logs and "loss" in logs:
                    losses.append(float(logs["loss"]))

        # Record, per call, TRL's loss and the same JSD averaged over the generated tokens: the Trainer
        # normalises by num_items_in_batch, counted from the collated (reference) labels before
        # GKDTrainer.training_step swaps in the student's samples.
        per_token: list[float] = []
        counts: list[tuple[int, int]] = []
        original = GKDTrainer.generalized_jsd_loss

        def recording(
            student_logits,
            teacher_logits,
            labels=None,
            beta=0.5,
            temperature=1.0,
            reduction="batchmean",
            num_items_in_batch=None,
        ):  # noqa: ANN001
            mean = original(
                student_logits, teacher_logits, labels=labels, beta=beta, temperature=temperature
            )
            per_token.append(float(mean.detach()))
            if labels is not None and num_items_in_batch is not None:
                counts.append((int((labels != -100).sum()), int(num_items_in_batch)))
            return original(
                student_logits,
                teacher_logits,
                labels,
                beta,
                temperature,
                reduction,
                num_items_in_batch,
            )

        GKDTrainer.generalized_jsd_loss = staticmethod(recording)
        trainer = GKDTrainer(
            model=trl_student,
            teacher_model=trl_teacher,
            args=args,
            data_collator=PromptCollator(),
            train_dataset=Dataset.from_dict({"input_ids": seqs}),
            processing_class=hf_tok,
            callbacks=[Losses()],
        )
        start = time.perf_counter()
        trainer.train()
        trl_seconds = time.perf_counter() - start
        trl_student = trainer.model.cpu().eval()

    ours = copy.deepcopy(student0)
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
