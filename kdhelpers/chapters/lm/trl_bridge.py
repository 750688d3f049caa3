"""Chapter 10's on-policy run through Hugging Face TRL's GKDTrainer, offline, with the course's own models.

TRL (`pip install trl`, part of the course's dev extras) is imported only when `distill_with_trl`
runs. The models are saved with `save_pretrained` into a local folder and reloaded from there, so
nothing touches the Hub. The course's `CharTokenizer` is wrapped as a `PreTrainedTokenizerFast`
with the same ids, and a collator hands GKDTrainer the fields it reads (prompt + reference
continuation, labels masked outside the continuation).

What TRL does differently from `distill_on_policy` (checked in docs/onpolicy-notes.md): its loss is
always at temperature 1; its `seq_kd` samples from the teacher (ours: greedy); its logged loss is
normalised by the number of *reference* tokens, so `history['per_token_loss']` recomputes the mean
over the tokens actually in the loss.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdhelpers.chapters.lm.onpolicy import OnPolicyConfig, onpolicy_prompts
from kdhelpers.chapters.lm.tokenizer import CharTokenizer, pad_batch


def trl_version() -> str | None:
    """TRL's version string, or None when it is not installed."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("trl")
    except PackageNotFoundError:
        return None


def char_tokenizer_fast(tok: CharTokenizer):
    """The course's CharTokenizer as a transformers PreTrainedTokenizerFast (same ids, one per character)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if not isinstance(tok, CharTokenizer):
        raise TypeError(f"tok must be a CharTokenizer (got {type(tok).__name__})")
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


class GKDCollator:
    """Batches of prompt (first `prompt_len` ids) + reference continuation, in the fields GKDTrainer reads."""

    def __init__(self, prompt_len: int, max_new_tokens: int) -> None:
        self.prompt_len, self.max_new_tokens = prompt_len, max_new_tokens

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask, labels (-100 on prompt and padding), prompts, prompt_attention_mask."""
        k = self.prompt_len
        ids, attn = pad_batch([list(e["input_ids"])[: k + self.max_new_tokens] for e in examples])
        labels = ids.clone()
        labels[attn == 0] = -100
        labels[:, :k] = -100
        prompts = ids[:, :k].clone()
        return {
            "input_ids": ids,
            "attention_mask": attn,
            "labels": labels,
            "prompts": prompts,
            "prompt_attention_mask": torch.ones_like(prompts),
        }


def _trl_beta(config: OnPolicyConfig) -> float:
    """GKDConfig's beta for our divergence: 0 is forward KL, 1 reverse KL, in between JSD(beta)."""
    return {"forward": 0.0, "reverse": 1.0}.get(config.divergence, config.beta)


def _check_supported(config: OnPolicyConfig) -> None:
    """Refuse the OnPolicyConfig settings GKDTrainer has no equivalent for, naming each."""
    if not isinstance(config, OnPolicyConfig):
        raise TypeError(f"config must be an OnPolicyConfig (got {type(config).__name__})")
    if config.loss_temperature != 1.0:
        raise ValueError(
            f"config.loss_temperature is {config.loss_temperature}: GKDTrainer's loss is always at temperature 1"
        )
    if config.seq_kd:
        raise ValueError(
            "config.seq_kd=True: TRL's seq_kd samples from the teacher, ours takes its greedy output; "
            "compare the two loops with seq_kd=False"
        )
    if config.max_teacher_tokens is not None:
        raise ValueError(
            "config.max_teacher_tokens is set: GKDTrainer counts steps, not teacher tokens; set steps"
        )


def distill_with_trl(
    student: nn.Module,
    teacher: nn.Module,
    tok: CharTokenizer,
    train_seqs: Sequence[Sequence[int]],
    config: OnPolicyConfig,
    folder: Path | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of `student` distilled from `teacher` by TRL's GKDTrainer with `config`'s settings, on the CPU.

    Both models are saved to `folder` (a temporary one by default) and reloaded from it, as a user
    of TRL would. Returns (trained copy in eval mode, history with 'loss' as TRL logs it,
    'per_token_loss' (the same loss averaged over the tokens in it), 'loss_tokens' (per call: tokens
    in the loss, and the num_items_in_batch TRL divides by), 'seconds', 'trl_version').
    """
    _check_supported(config)
    version = trl_version()
    if version is None:
        raise ImportError(
            "distill_with_trl needs TRL: pip install trl (the course's dev extras include it)"
        )
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    pool = onpolicy_prompts(train_seqs, config.prompt_len)
    losses: list[float] = []
    per_token: list[float] = []
    counts: list[tuple[int, int]] = []

    class _Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    class _Trainer(GKDTrainer):
        """GKDTrainer that also records each step's loss averaged over the tokens in it."""

        @staticmethod
        def generalized_jsd_loss(
            student_logits,
            teacher_logits,
            labels=None,
            beta=0.5,
            temperature=1.0,
            reduction="batchmean",
            num_items_in_batch=None,
        ):
            mean = GKDTrainer.generalized_jsd_loss(
                student_logits.detach(), teacher_logits.detach(), labels, beta, temperature
            )
            per_token.append(float(mean))
            if labels is not None and num_items_in_batch is not None:
                counts.append((int((labels != -100).sum()), int(num_items_in_batch)))
            return GKDTrainer.generalized_jsd_loss(
                student_logits,
                teacher_logits,
                labels,
                beta,
                temperature,
                reduction,
                num_items_in_batch,
            )

    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        root = Path(scratch) if folder is None else Path(folder)
        copy.deepcopy(student).cpu().save_pretrained(root / "student")
        copy.deepcopy(teacher).cpu().save_pretrained(root / "teacher")
        hf_tok = char_tokenizer_fast(tok)
        hf_tok.save_pretrained(root / "student")
        args = GKDConfig(
            output_dir=str(root / "out"),
            max_steps=config.steps,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=config.weight_decay,
            max_grad_norm=config.max_grad_norm if config.max_grad_norm is not None else 0.0,
            lmbda=config.lmbda,
            beta=_trl_beta(config),
            temperature=config.temperature,
            max_new_tokens=config.max_new_tokens,
            disable_dropout=not config.dropout,
            seq_kd=False,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=config.seed,
            disable_tqdm=True,  # its notebook progress table would stay in saved outputs
        )
        trainer = _Trainer(
            model=AutoModelForCausalLM.from_pretrained(root / "student"),
            teacher_model=AutoModelForCausalLM.from_pretrained(root / "teacher"),
            args=args,
            data_collator=GKDCollator(config.prompt_len, config.max_new_tokens),
            train_dataset=Dataset.from_dict({"input_ids": pool}),
            processing_class=hf_tok,
            callbacks=[_Losses()],
        )
        for quiet in (PrinterCallback, ProgressCallback):  # no log dicts or bars in saved outputs
            trainer.remove_callback(quiet)
        start = time.perf_counter()
        trainer.train()  # FutureWarnings silenced above: transformers' notices about TRL's calls
        seconds = time.perf_counter() - start
        trained = trainer.model.cpu().eval()
    return trained, {
        "loss": losses,
        "per_token_loss": per_token,
        "loss_tokens": counts,
        "seconds": seconds,
        "trl_version": version,
    }
