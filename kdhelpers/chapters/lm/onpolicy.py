"""On-policy distillation of chapter 10's character LMs (GKD, Agarwal et al. 2024; MiniLLM, Gu et al. 2024).

Each step takes a batch of training sequences and cuts them into a prompt (the first `prompt_len`
tokens) and a continuation. With probability `lmbda` (GKD's / TRL's student-data fraction) the
student *samples* the continuation itself (on-policy); otherwise the reference continuation of
the data is used (off-policy token-level KD), or with `seq_kd` the teacher's greedy continuation
(sequence-level KD as Kim and Rush define it: train on the teacher's mode). The teacher scores the
whole sequence without gradient and the student minimises a divergence from
`kdhelpers.divergences` over the continuation tokens only (prompt and padding masked).

Every token the teacher processes is counted (scoring and, with seq_kd, generation) so that runs
can be compared at an equal teacher-forward budget.
"""

from __future__ import annotations

import inspect
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdhelpers.chapters.lm.model import lm_logits
from kdhelpers.chapters.lm.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, pad_batch
from kdhelpers.chapters.lm.training import LMSize
from kdhelpers.device import get_device, seeded
from kdhelpers.divergences import DIVERGENCES, Divergence, DivergenceConfig, token_divergence
from kdhelpers.progress import progress_bar
from kdhelpers.train import OptimiserStep
from kdhelpers.validate import (
    check_int,
    check_number,
    check_optimiser_settings,
    check_seed,
    check_token_lists,
)

#: Ids never sampled (as in `kdhelpers.chapters.lm.sample`): padding, bos and unk.
FORBIDDEN_IDS = (PAD_ID, BOS_ID, UNK_ID)


@dataclass(frozen=True)
class OnPolicyConfig:
    """Settings of `distill_on_policy`; names follow TRL's GKDConfig (lmbda, beta, temperature, max_new_tokens, seq_kd).

    temperature is the *sampling* temperature of the student's continuations; loss_temperature the
    one inside the divergence (TRL's GKDTrainer always uses 1 there). With `dropout=False` (TRL's
    disable_dropout=True) the student's dropout is off during training. `max_teacher_tokens` stops
    training once the teacher has processed that many tokens (checked before each step).
    """

    steps: int = 100
    batch_size: int = 16
    lr: float = 3e-3
    lmbda: float = 0.5
    divergence: Divergence = "jsd"
    beta: float = 0.5
    temperature: float = 1.0
    loss_temperature: float = 1.0
    prompt_len: int = 8
    max_new_tokens: int = 32
    seq_kd: bool = False
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    dropout: bool = False
    max_teacher_tokens: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        check_optimiser_settings(self)
        check_number("lmbda", self.lmbda, 0.0, 1.0)
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES} (got {self.divergence!r})")
        check_number("beta", self.beta, 0.0, 1.0)
        check_number("temperature", self.temperature, 0.0, strict_min=True)
        check_number("loss_temperature", self.loss_temperature, 0.0, strict_min=True)
        check_int("prompt_len", self.prompt_len, 1)
        check_int("max_new_tokens", self.max_new_tokens, 1)
        for name in ("seq_kd", "dropout"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False (got {getattr(self, name)!r})")
        if self.max_teacher_tokens is not None:
            check_int("max_teacher_tokens", self.max_teacher_tokens, 1)
        check_seed("seed", self.seed)

    @property
    def divergence_config(self) -> DivergenceConfig:
        """The loss as a DivergenceConfig (divergence, beta, loss_temperature)."""
        return DivergenceConfig(self.divergence, self.beta, self.loss_temperature)


@dataclass(frozen=True)
class EvalConfig:
    """Settings of the sample metrics: prompt length, continuation length, sampling temperature, n-gram size, seed."""

    prompt_len: int = 8
    max_new_tokens: int = 32
    temperature: float = 1.0
    ngram: int = 3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("prompt_len", self.prompt_len, 1)
        check_int("max_new_tokens", self.max_new_tokens, 1)
        check_number("temperature", self.temperature, 0.0, strict_min=True)
        check_int("ngram", self.ngram, 1)
        check_int("batch_size", self.batch_size, 1)
        check_seed("seed", self.seed)


@dataclass(frozen=True)
class GKDSettings:
    """Chapter 10's sizes for on-policy KD, sequence-level KD, the TRL run and the capacity gap, one profile.

    Every distillation run of a comparison stops at `teacher_budget` teacher tokens (or `steps`);
    `gap_teachers` are the teacher sizes of the capacity-gap curve (the chapter's teacher is the
    largest) and `gap_student` the small student they teach.
    """

    seeds: int
    steps: int
    batch_size: int
    lr: float
    prompt_len: int
    max_new_tokens: int
    teacher_budget: int
    eval_prompts: int
    trl_steps: int
    gap_teachers: tuple[LMSize, ...]
    gap_student: LMSize

    def __post_init__(self) -> None:
        for name in ("seeds", "steps", "batch_size", "prompt_len", "max_new_tokens"):
            check_int(name, getattr(self, name), 1)
        for name in ("teacher_budget", "eval_prompts", "trl_steps"):
            check_int(name, getattr(self, name), 1)
        check_number("lr", self.lr, 0.0, strict_min=True)
        if not self.gap_teachers or not all(isinstance(t, LMSize) for t in self.gap_teachers):
            raise TypeError("gap_teachers must be a non-empty tuple of LMSize")
        if not isinstance(self.gap_student, LMSize):
            raise TypeError(
                f"gap_student must be an LMSize (got {type(self.gap_student).__name__})"
            )


#: Per profile: on-policy and capacity-gap sizes for chapter 10 and its solutions.
LM_GKD_SETTINGS: dict[str, GKDSettings] = {
    "quick": GKDSettings(
        seeds=3, steps=6, batch_size=8, lr=1e-3, prompt_len=8, max_new_tokens=16,
        teacher_budget=600, eval_prompts=24, trl_steps=3,
        gap_teachers=(LMSize(1, 16, 2), LMSize(1, 32, 2), LMSize(1, 48, 2)),
        gap_student=LMSize(1, 8, 2),
    ),
    "standard": GKDSettings(
        seeds=3, steps=1000, batch_size=16, lr=1e-3, prompt_len=8, max_new_tokens=48,
        teacher_budget=300_000, eval_prompts=1000, trl_steps=100,
        gap_teachers=(LMSize(1, 32, 2), LMSize(2, 64, 2), LMSize(2, 128, 4)),
        gap_student=LMSize(1, 8, 2),
    ),
    "full": GKDSettings(
        seeds=3, steps=5000, batch_size=32, lr=1e-3, prompt_len=8, max_new_tokens=96,
        teacher_budget=3_000_000, eval_prompts=2000, trl_steps=300,
        gap_teachers=(LMSize(1, 64, 2), LMSize(2, 128, 4), LMSize(4, 256, 4)),
        gap_student=LMSize(1, 16, 2),
    ),
}  # fmt: skip


# ---------------------------------------------------------------- prompts and generation


def _check_model(name: str, model: object) -> nn.Module:
    """A torch module."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module (got {type(model).__name__})")
    return model


def _check_positions(name: str, model: nn.Module, length: int, fix: str) -> None:
    """Refuse sequences longer than the model's position table (GPT-2's n_positions)."""
    limit = getattr(getattr(model, "config", None), "n_positions", None)
    if isinstance(limit, int) and length > limit:
        raise ValueError(
            f"{name} needs {length} positions but the model has n_positions={limit}: {fix}"
        )


def onpolicy_prompts(seqs: Sequence[Sequence[int]], prompt_len: int) -> list[list[int]]:
    """The sequences longer than `prompt_len` tokens (those with a continuation after the prompt), in order."""
    seqs = check_token_lists("seqs", seqs)
    check_int("prompt_len", prompt_len, 1)
    pool = [s for s in seqs if len(s) > prompt_len]
    if not pool:
        raise ValueError(
            f"no sequence in seqs is longer than prompt_len={prompt_len}: lower prompt_len"
        )
    return pool


def _cache_argument(model: nn.Module) -> str:
    """The name of the key/value-cache argument of `model.forward` ('cache' in transformers 5)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def _continue(
    model: nn.Module,
    prompts: torch.Tensor,
    max_new_tokens: int,
    temperature: float | None,
    gen: torch.Generator | None,
) -> list[list[int]]:
    """Continue equal-length prompts (b, k) with a key/value cache: sampled at `temperature`, or greedy when None.

    Each row ends after its first eos (kept) or after max_new_tokens new tokens; pad, bos and unk
    are never produced.
    """
    device = next(model.parameters()).device
    cache_arg = _cache_argument(model)
    seqs = prompts.cpu()
    done = torch.zeros(prompts.shape[0], dtype=torch.bool)
    step_input, past = prompts.to(device), None
    for _ in range(max_new_tokens):
        attn = torch.ones(seqs.shape, dtype=torch.long, device=device)  # no padding inside a batch
        res = model(input_ids=step_input, attention_mask=attn, use_cache=True, **{cache_arg: past})
        past = getattr(res, cache_arg)
        logits = res.logits[:, -1].double().cpu()
        logits[:, list(FORBIDDEN_IDS)] = -math.inf
        if temperature is None:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            scaled = (logits - logits.amax(-1, keepdim=True)) / temperature
            nxt = torch.multinomial(torch.softmax(scaled, -1), 1, generator=gen)
        nxt = torch.where(done[:, None], torch.full_like(nxt, PAD_ID), nxt)
        seqs = torch.cat([seqs, nxt], dim=1)
        done |= nxt[:, 0] == EOS_ID
        if bool(done.all()):
            break
        step_input = nxt.to(device)
    out = []
    for row in seqs.tolist():
        tail = row[prompts.shape[1] :]
        out.append(
            row[: prompts.shape[1]] + (tail[: tail.index(EOS_ID) + 1] if EOS_ID in tail else tail)
        )
    return out


def _generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float | None,
    gen: torch.Generator | None,
    batch_size: int,
) -> list[list[int]]:
    """Continuations of prompts of any lengths: grouped by length, in batches, in the prompts' order (eval mode)."""
    was_training = model.training
    model.eval()
    out: list[list[int] | None] = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    for length in sorted(by_length):
        rows = by_length[length]
        for first in range(0, len(rows), batch_size):
            chunk = rows[first : first + batch_size]
            ids = torch.tensor([prompts[i] for i in chunk], dtype=torch.long)
            for i, seq in zip(
                chunk, _continue(model, ids, max_new_tokens, temperature, gen), strict=True
            ):
                out[i] = seq
    model.train(was_training)
    return out  # type: ignore[return-value]


def _check_prompts(model: nn.Module, prompts: object, max_new_tokens: int) -> list[list[int]]:
    """Non-empty prompts whose ids fit the model's vocabulary and whose continuations fit its positions."""
    prompts = check_token_lists("prompts", prompts)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError(
            "prompts must hold at least one prompt and no empty prompt (start with bos)"
        )
    vocab = (
        model.get_input_embeddings().weight.shape[0]
        if hasattr(model, "get_input_embeddings")
        else None
    )
    worst = max(max(p) for p in prompts)
    if vocab is not None and worst >= vocab:
        raise ValueError(
            f"prompts hold token id {worst} but the model's vocabulary has {vocab} ids"
        )
    check_int("max_new_tokens", max_new_tokens, 1)
    _check_positions(
        "max_new_tokens",
        model,
        max(len(p) for p in prompts) + max_new_tokens,
        "shorten the prompts or lower max_new_tokens",
    )
    return prompts


def sample_continuations(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
) -> list[list[int]]:
    """prompt + up to `max_new_tokens` tokens sampled at `temperature` (ending at the first eos), per prompt.

    Seeded: the same seed and batch_size give the same samples (the draws depend on the batching;
    prompts are grouped by length, then batched in order).
    """
    model = _check_model("model", model)
    prompts = _check_prompts(model, prompts, max_new_tokens)
    check_number("temperature", temperature, 0.0, strict_min=True)
    check_int("batch_size", batch_size, 1)
    gen = torch.Generator().manual_seed(check_seed("seed", seed))
    return _generate(model, prompts, max_new_tokens, float(temperature), gen, batch_size)


def greedy_continuations(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    batch_size: int = 64,
) -> list[list[int]]:
    """prompt + the model's greedy (argmax, temperature 0) continuation of up to `max_new_tokens` tokens, per prompt."""
    model = _check_model("model", model)
    prompts = _check_prompts(model, prompts, max_new_tokens)
    check_int("batch_size", batch_size, 1)
    return _generate(model, prompts, max_new_tokens, None, None, batch_size)


def sequence_kd_targets(
    teacher: nn.Module,
    seqs: Sequence[Sequence[int]],
    prompt_len: int,
    max_new_tokens: int,
    batch_size: int = 64,
) -> list[list[int]]:
    """Kim and Rush's sequence-level KD data: each sequence's first `prompt_len` tokens + the teacher's
    greedy continuation.

    Sequences not longer than `prompt_len` are skipped (see `onpolicy_prompts`). Train the student
    on the result with plain cross-entropy (e.g. `kdhelpers.chapters.lm.train_lm`, alpha=1).
    """
    pool = onpolicy_prompts(seqs, prompt_len)
    return greedy_continuations(
        teacher, [s[:prompt_len] for s in pool], max_new_tokens, batch_size=batch_size
    )


# ---------------------------------------------------------------- the training loop


def _continuation_mask(attention_mask: torch.Tensor, prompt_lens: Sequence[int]) -> torch.Tensor:
    """Mask of shifted targets (batch, seq - 1): real tokens at positions >= the row's prompt length."""
    positions = torch.arange(1, attention_mask.shape[1])[None, :]
    lens = torch.tensor(list(prompt_lens))[:, None]
    return attention_mask[:, 1:].bool() & (positions >= lens)


def _check_on_policy_models(
    student: nn.Module, teacher: nn.Module, pool: Sequence[Sequence[int]], config: OnPolicyConfig
) -> None:
    """Refuse one model as both, positions too few for prompt + continuation, or ids beyond a vocabulary."""
    if student is teacher:
        raise ValueError("student and teacher must be different models")
    longest = config.prompt_len + config.max_new_tokens
    worst = max(max(s) for s in pool)
    for name, model in (("student", student), ("teacher", teacher)):
        _check_positions(
            "prompt_len + max_new_tokens", model, longest, f"lower max_new_tokens ({name})"
        )
        vocab = (
            model.get_input_embeddings().weight.shape[0]
            if hasattr(model, "get_input_embeddings")
            else None
        )
        if vocab is not None and worst >= vocab:
            raise ValueError(
                f"train_seqs hold token id {worst} but the {name}'s vocabulary has {vocab} ids"
            )


def on_policy_step(
    student: nn.Module,
    teacher: nn.Module,
    seqs: Sequence[Sequence[int]],
    prompt_len: int,
    loss_config: DivergenceConfig,
    step: OptimiserStep,
    dropout: bool = False,
) -> tuple[float, int, int]:
    """One distillation step on `seqs` (prompt + continuation): the frozen teacher's next-token
    logits, the student's, their divergence on the continuation tokens only, one optimiser step.
    Returns (loss, tokens the teacher scored, continuation tokens in the loss)."""
    device = next(student.parameters()).device
    ids, attn = pad_batch(seqs)
    mask = _continuation_mask(attn, [prompt_len] * len(seqs))
    ids, attn, mask = ids.to(device), attn.to(device), mask.to(device)
    with torch.no_grad():
        teacher_logits = lm_logits(teacher, ids, attn).float()
    student.train(dropout)
    student_logits = lm_logits(student, ids, attn)
    loss = token_divergence(
        student_logits[:, :-1].float(), teacher_logits[:, :-1], loss_config, mask
    )
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} in an on-policy step: lower lr?")
    step(loss)
    return float(loss.detach()), int(attn.sum()), int(mask.sum())


def _step_sequences(
    student: nn.Module,
    teacher: nn.Module,
    batch: Sequence[Sequence[int]],
    on_policy: bool,
    config: OnPolicyConfig,
    sample_gen: torch.Generator,
    history: dict[str, Any],
) -> list[list[int]]:
    """The step's sequences: the student's samples (on-policy), the teacher's greedy output
    (seq_kd) or the data's own continuations; counts the generated tokens in `history`."""
    k = config.prompt_len
    prompts = [list(x[:k]) for x in batch]
    if on_policy:
        seqs = _generate(
            student, prompts, config.max_new_tokens, config.temperature, sample_gen, len(prompts)
        )
        history["student_generated_tokens"] += sum(len(s) - k for s in seqs)
    elif config.seq_kd:
        seqs = _generate(teacher, prompts, config.max_new_tokens, None, None, len(prompts))
        history["teacher_generated_tokens"] += sum(len(s) for s in seqs)
    else:
        seqs = [list(x[: k + config.max_new_tokens]) for x in batch]
    return seqs


_COUNTS = (
    "teacher_tokens",
    "teacher_scored_tokens",
    "teacher_generated_tokens",
    "student_generated_tokens",
    "loss_tokens",
    "steps_run",
    "on_policy_steps",
)


def _record_step(
    history: dict[str, Any],
    rows: list[int],
    on_policy: bool,
    loss: float,
    scored: int,
    in_loss: int,
) -> None:
    """Add one step of distill_on_policy to its history (per-step lists and running totals)."""
    history["teacher_scored_tokens"] += scored
    history["teacher_tokens"] = (
        history["teacher_scored_tokens"] + history["teacher_generated_tokens"]
    )
    history["loss"].append(loss)
    history["on_policy"].append(on_policy)
    history["rows"].append(rows)
    history["teacher_tokens_per_step"].append(history["teacher_tokens"])
    history["loss_tokens"] += in_loss
    history["steps_run"] += 1
    history["on_policy_steps"] += int(on_policy)


def distill_on_policy(
    student: nn.Module,
    teacher: nn.Module,
    train_seqs: Sequence[Sequence[int]],
    config: OnPolicyConfig,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """GKD-style distillation: per step, on-policy (probability lmbda) or fixed-data continuations,
    loss on continuations only.

    Randomness, all from config.seed: the batches (epochs of a seeded permutation of the sequences
    longer than prompt_len), the on-policy coin (Python's random.Random(seed), drawn every step;
    on-policy when it is < lmbda, so lmbda=0 never and lmbda=1 always samples), the student's
    samples (a torch generator seeded seed + 1) and, with dropout=True, the dropout masks.
    The teacher runs in eval mode under no_grad and is never updated.

    Returns a history: per step 'loss', 'on_policy', 'rows' (indices into the prompt pool) and
    'teacher_tokens' (cumulative); totals 'teacher_tokens' (all tokens the teacher processed:
    non-padding tokens scored, plus prompt and generated tokens with seq_kd), 'teacher_scored_tokens',
    'teacher_generated_tokens', 'student_generated_tokens', 'loss_tokens' (continuation tokens in the
    loss), 'steps_run', 'on_policy_steps' and 'seconds'.
    """
    student, teacher = _check_model("student", student), _check_model("teacher", teacher)
    if not isinstance(config, OnPolicyConfig):
        raise TypeError(f"config must be an OnPolicyConfig (got {type(config).__name__})")
    pool = onpolicy_prompts(train_seqs, config.prompt_len)
    _check_on_policy_models(student, teacher, pool, config)
    device = get_device() if device is None else torch.device(device)
    student.to(device)
    teacher.to(device).eval()
    optimizer = torch.optim.AdamW(
        student.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    # constant lr, as TRL
    step = OptimiserStep(optimizer, None, tuple(student.parameters()), config.max_grad_norm)
    batch_gen = torch.Generator().manual_seed(config.seed)
    sample_gen = torch.Generator().manual_seed(config.seed + 1)  # torch seeds go up to 2**64 - 1
    coin, order = random.Random(config.seed), []
    history: dict[str, Any] = {
        **{k: [] for k in ("loss", "on_policy", "rows", "teacher_tokens_per_step")},
        **dict.fromkeys(_COUNTS, 0),
    }
    start = time.perf_counter()
    with seeded(config.seed):  # dropout masks; the caller's RNG is given back afterwards
        for _ in progress_bar(range(config.steps), "on-policy KD"):
            budget = config.max_teacher_tokens
            if budget is not None and history["teacher_tokens"] >= budget:
                break
            if len(order) < config.batch_size:
                order += torch.randperm(len(pool), generator=batch_gen).tolist()
            rows, order = order[: config.batch_size], order[config.batch_size :]
            on_policy = coin.random() < config.lmbda
            seqs = _step_sequences(
                student, teacher, [pool[i] for i in rows], on_policy, config, sample_gen, history
            )
            loss, scored, in_loss = on_policy_step(
                student,
                teacher,
                seqs,
                config.prompt_len,
                config.divergence_config,
                step,
                config.dropout,
            )
            _record_step(history, rows, on_policy, loss, scored, in_loss)
    student.eval()
    history["seconds"] = time.perf_counter() - start
    return history


# ---------------------------------------------------------------- metrics that need no person


def _scored(
    model: nn.Module,
    seqs: Sequence[Sequence[int]],
    prompt_lens: Sequence[int],
    batch_size: int,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch: (shifted logits, shifted targets, continuation mask), on the model's device, eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for first in range(0, len(seqs), batch_size):
            ids, attn = pad_batch(seqs[first : first + batch_size])
            mask = _continuation_mask(attn, prompt_lens[first : first + batch_size])
            logits = lm_logits(model, ids.to(device), attn.to(device)).float()
            out.append((logits[:, :-1], ids[:, 1:].to(device), mask.to(device)))
    model.train(was_training)
    return out


def _continuation_mean(
    model: object,
    seqs: object,
    prompt_len: int,
    batch_size: int,
    per_position: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> float:
    """Token-weighted mean of per_position(logits, targets) -> (batch, seq) over the continuation tokens."""
    model = _check_model("model", model)
    seqs = check_token_lists("seqs", seqs)
    check_int("prompt_len", prompt_len, 1)
    check_int("batch_size", batch_size, 1)
    if not seqs or all(len(s) <= prompt_len for s in seqs):
        raise ValueError(f"seqs hold no token after the first prompt_len={prompt_len}")
    total, n = 0.0, 0
    for logits, targets, mask in _scored(model, seqs, [prompt_len] * len(seqs), batch_size):
        values = per_position(logits, targets)
        total, n = total + float(values[mask].sum()), n + int(mask.sum())
    return total / n


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of each target token."""
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


def _entropy(logits: torch.Tensor, _targets: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each position's next-token distribution."""
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def continuation_perplexity(
    model: nn.Module,
    seqs: Sequence[Sequence[int]],
    prompt_len: int,
    batch_size: int = 64,
) -> float:
    """exp(mean NLL) of `model` on the tokens after the first `prompt_len` of each sequence (e.g. the
    teacher on student samples)."""
    return math.exp(_continuation_mean(model, seqs, prompt_len, batch_size, _nll))


def token_entropy(
    model: nn.Module,
    seqs: Sequence[Sequence[int]],
    prompt_len: int = 1,
    batch_size: int = 64,
) -> float:
    """Mean entropy (nats) of `model`'s next-token distribution at the predicted positions after the
    first `prompt_len` tokens.

    Low against the teacher's: the model bets on fewer tokens (mode-seeking, as reverse KL trains);
    high: it spreads its bets (mode-covering, as forward KL trains).
    """
    return _continuation_mean(model, seqs, prompt_len, batch_size, _entropy)


def _ngrams(seq: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """The n-grams of one sequence, in order."""
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def _continuations(seqs: object, prompt_len: int) -> list[list[int]]:
    """The tokens after the prompt of each sequence, without a final eos."""
    seqs = check_token_lists("seqs", seqs)
    check_int("prompt_len", prompt_len, 0)
    tails = [s[prompt_len:] for s in seqs]
    return [t[:-1] if t and t[-1] == EOS_ID else t for t in tails]


def distinct_n(seqs: Sequence[Sequence[int]], n: int = 3, prompt_len: int = 0) -> float:
    """Distinct-n (Li et al. 2016): distinct n-grams / all n-grams over all continuations (after
    prompt_len, eos dropped)."""
    check_int("n", n, 1)
    grams = [g for t in _continuations(seqs, prompt_len) for g in _ngrams(t, n)]
    if not grams:
        raise ValueError(f"seqs hold no {n}-gram after the first prompt_len={prompt_len} tokens")
    return len(set(grams)) / len(grams)


def repetition_rate(seqs: Sequence[Sequence[int]], n: int = 3, prompt_len: int = 0) -> float:
    """Mean over continuations of the fraction of their n-grams that already occurred earlier in the
    same continuation."""
    check_int("n", n, 1)
    rates = []
    for t in _continuations(seqs, prompt_len):
        grams = _ngrams(t, n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    if not rates:
        raise ValueError(f"seqs hold no {n}-gram after the first prompt_len={prompt_len} tokens")
    return sum(rates) / len(rates)


def _mean_divergence(
    student: nn.Module,
    teacher: nn.Module,
    seqs: list[list[int]],
    prompt_len: int,
    loss_config: DivergenceConfig,
    batch_size: int,
) -> float:
    """Token-weighted mean divergence(teacher, student) over the continuation tokens of `seqs`."""
    total, n = 0.0, 0
    pairs = zip(
        _scored(student, seqs, [prompt_len] * len(seqs), batch_size),
        _scored(teacher, seqs, [prompt_len] * len(seqs), batch_size),
        strict=True,
    )
    for (s_logits, _, mask), (t_logits, _, _) in pairs:
        if mask.any():
            count = int(mask.sum())
            total += float(token_divergence(s_logits, t_logits, loss_config, mask)) * count
            n += count
    return total / n


def exposure_bias_gap(
    student: nn.Module,
    teacher: nn.Module,
    seqs: Sequence[Sequence[int]],
    config: EvalConfig,
    loss: DivergenceConfig | None = None,
) -> dict[str, float]:
    """The student's per-token divergence from the teacher on its own samples minus that on reference text.

    Prompts are the first `config.prompt_len` tokens of the sequences longer than that.
    'teacher_forced' is the mean over the reference continuations (the next `max_new_tokens`
    tokens of the data) of D(teacher || student) at each position, both conditioned on the
    reference prefix; 'free_running' is the same mean over the student's own continuations
    (sampled at `config.temperature`, seeded), both models conditioned on the student's prefix;
    'gap' = free_running - teacher_forced. D is `loss` (default: forward KL at temperature 1). A
    positive gap means the student matches the teacher worse on the prefixes it produces itself
    than on the ones it was trained on (exposure bias).
    """
    student, teacher = _check_model("student", student), _check_model("teacher", teacher)
    if not isinstance(config, EvalConfig):
        raise TypeError(f"config must be an EvalConfig (got {type(config).__name__})")
    loss = DivergenceConfig("forward") if loss is None else loss
    if not isinstance(loss, DivergenceConfig):
        raise TypeError(f"loss must be a DivergenceConfig or None (got {type(loss).__name__})")
    pool = onpolicy_prompts(seqs, config.prompt_len)
    k = config.prompt_len
    reference = [s[: k + config.max_new_tokens] for s in pool]
    samples = sample_continuations(
        student,
        [s[:k] for s in pool],
        config.max_new_tokens,
        temperature=config.temperature,
        seed=config.seed,
        batch_size=config.batch_size,
    )
    tf = _mean_divergence(student, teacher, reference, k, loss, config.batch_size)
    fr = _mean_divergence(student, teacher, samples, k, loss, config.batch_size)
    return {"teacher_forced": tf, "free_running": fr, "gap": fr - tf}


def sample_metrics(
    student: nn.Module,
    teacher: nn.Module,
    seqs: Sequence[Sequence[int]],
    config: EvalConfig,
) -> dict[str, float]:
    """Metrics without a person: teacher perplexity of the student's samples, distinct-n, repetition
    rate, exposure-bias gap.

    The student continues the first `prompt_len` tokens of each sequence longer than that
    (seeded sampling at `config.temperature`); 'teacher_perplexity' is exp(teacher NLL per
    continuation token), 'distinct_n' and 'repetition_rate' use n = config.ngram; the exposure-bias
    entries are those of `exposure_bias_gap` (forward KL).
    """
    student, teacher = _check_model("student", student), _check_model("teacher", teacher)
    if not isinstance(config, EvalConfig):
        raise TypeError(f"config must be an EvalConfig (got {type(config).__name__})")
    pool = onpolicy_prompts(seqs, config.prompt_len)
    samples = sample_continuations(
        student,
        [s[: config.prompt_len] for s in pool],
        config.max_new_tokens,
        temperature=config.temperature,
        seed=config.seed,
        batch_size=config.batch_size,
    )
    gap = exposure_bias_gap(student, teacher, seqs, config)
    return {
        "teacher_perplexity": continuation_perplexity(
            teacher, samples, config.prompt_len, config.batch_size
        ),
        "distinct_n": distinct_n(samples, config.ngram, config.prompt_len),
        "repetition_rate": repetition_rate(samples, config.ngram, config.prompt_len),
        **{f"exposure_{k}": v for k, v in gap.items()},
    }
