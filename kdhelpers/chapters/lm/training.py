"""Chapter 10's settings and texts, training a language model (with or without a teacher), and its checkpoints."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdhelpers.chapters.lm.model import _pad_logits, lm_logits, lm_loss, make_lm, perplexity
from kdhelpers.chapters.lm.tokenizer import (
    _check_sequences,
    pad_batch,
)
from kdhelpers.checkpoints import checkpoint_paths, load_checkpoint, save_checkpoint
from kdhelpers.data import VADER_DOMAINS, load_sentiment
from kdhelpers.device import autocast, get_device, seeded
from kdhelpers.paths import check_inside, checkpoints_dir, inside
from kdhelpers.progress import progress_bar
from kdhelpers.train import (
    KeepBest,
    OptimiserStep,
    adamw_with_warmup,
    check_finite_parameters,
    state_copy,
)
from kdhelpers.validate import check_int as _check_int
from kdhelpers.validate import (
    check_number,
    check_optimiser_settings,
    check_seed,
    vocab_size_of,
)


@dataclass(frozen=True)
class LMSize:
    """The shape of a tiny GPT-2 (the keyword arguments of make_lm besides the vocabulary)."""

    n_layer: int
    n_embd: int
    n_head: int

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_embd", "n_head"):
            _check_int(name, getattr(self, name), 1)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")


@dataclass(frozen=True)
class LMSettings:
    """Chapter 10's sizes for one profile: texts, models, training and measurement (vary with dataclasses.replace)."""

    teacher_snippets: int | None
    student_snippets: int | None
    val_snippets: int | None
    test_snippets: int | None
    max_len: int
    teacher: LMSize
    student: LMSize
    tiny: LMSize
    teacher_steps: int
    teacher_batch: int
    student_steps: int
    batch_size: int
    eval_every: int
    lr: float
    alpha: float
    T: float
    generated: int
    speed_tokens: int
    speed_rounds: int

    def replace(self, **changes: Any) -> LMSettings:
        """A copy with `changes` applied (dataclasses.replace; the copy is checked again)."""
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        for name in ("teacher_snippets", "student_snippets", "val_snippets", "test_snippets"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        for name in (
            "max_len",
            "teacher_steps",
            "teacher_batch",
            "student_steps",
            "batch_size",
            "eval_every",
            "generated",
            "speed_tokens",
            "speed_rounds",
        ):
            _check_int(name, getattr(self, name), 1)
        for name in ("teacher", "student", "tiny"):
            if not isinstance(getattr(self, name), LMSize):
                raise TypeError(
                    f"{name} must be an LMSize (got {type(getattr(self, name)).__name__})"
                )
        check_number("lr", self.lr, 0.0, strict_min=True)
        check_number("alpha", self.alpha, 0.0, 1.0)
        check_number("T", self.T, 0.0, strict_min=True)


#: The settings that name chapter 10's teacher checkpoint (hashed with the seed, vocabulary and data).
LM_TEACHER_KEYS = ("teacher", "teacher_steps", "teacher_batch", "lr", "max_len")

#: Sizes per profile for chapter 10 and its solutions (so both use one teacher checkpoint).
LM_PROFILE_SETTINGS: dict[str, LMSettings] = {
    "quick": LMSettings(
        teacher_snippets=2000,
        student_snippets=150,
        val_snippets=150,
        test_snippets=150,
        max_len=64,
        teacher=LMSize(n_layer=1, n_embd=48, n_head=2),
        student=LMSize(n_layer=1, n_embd=32, n_head=2),
        tiny=LMSize(n_layer=1, n_embd=16, n_head=2),
        teacher_steps=60,
        teacher_batch=32,
        student_steps=40,
        batch_size=16,
        eval_every=20,
        lr=3e-3,
        alpha=0.0,
        T=1.0,
        generated=150,
        speed_tokens=16,
        speed_rounds=3,
    ),
    "standard": LMSettings(
        teacher_snippets=None,
        student_snippets=250,
        val_snippets=600,
        test_snippets=1000,
        max_len=128,
        teacher=LMSize(n_layer=2, n_embd=128, n_head=4),
        student=LMSize(n_layer=2, n_embd=64, n_head=2),
        tiny=LMSize(n_layer=1, n_embd=32, n_head=2),
        teacher_steps=500,
        teacher_batch=32,
        student_steps=600,
        batch_size=16,
        eval_every=100,
        lr=3e-3,
        alpha=0.0,
        T=1.0,
        generated=1000,
        speed_tokens=64,
        speed_rounds=7,
    ),
    "full": LMSettings(
        teacher_snippets=None,
        student_snippets=250,
        val_snippets=None,
        test_snippets=None,
        max_len=128,
        teacher=LMSize(n_layer=4, n_embd=256, n_head=4),
        student=LMSize(n_layer=2, n_embd=64, n_head=2),
        tiny=LMSize(n_layer=1, n_embd=32, n_head=2),
        teacher_steps=3000,
        teacher_batch=64,
        student_steps=1000,
        batch_size=16,
        eval_every=100,
        lr=3e-3,
        alpha=0.0,
        T=1.0,
        generated=4000,
        speed_tokens=64,
        speed_rounds=7,
    ),
}


@dataclass(frozen=True)
class LMTrainConfig:
    """Settings of `train_lm`: AdamW steps, batches, the KD loss mix, evaluation, schedule, clipping, seed."""

    steps: int
    batch_size: int = 32
    lr: float = 3e-3
    alpha: float = 1.0
    temperature: float = 1.0
    eval_every: int | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    max_grad_norm: float | None = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 1)
        _check_int("batch_size", self.batch_size, 1)
        check_seed("seed", self.seed)
        check_optimiser_settings(self)
        check_number("alpha", self.alpha, 0.0, 1.0)
        check_number("temperature", self.temperature, 0.0, strict_min=True)
        if self.eval_every is not None:
            _check_int("eval_every", self.eval_every, 1)


def _sample(items: Sequence[str], n: int | None, seed: int) -> list[str]:
    """A seeded random sample of `n` items (all of them, shuffled, when n is None)."""
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    if n is not None:
        _check_int("n", n, 1)
    return [items[i] for i in order[: len(items) if n is None else n]]


def course_texts(
    seed: int = 0,
    teacher_snippets: int | None = None,
    student_snippets: int | None = 250,
    val_snippets: int | None = None,
    test_snippets: int | None = None,
) -> dict[str, list[str]]:
    """The snippets of the four VADER corpora without labels: 'teacher' (train + unlabeled), 'student'
    (a sample of train), 'validation', 'test'."""

    check_seed("seed", seed)
    splits: dict[str, list[str]] = {
        name: [] for name in ("train", "unlabeled", "validation", "test")
    }
    for domain in VADER_DOMAINS:
        ds = load_sentiment(domain, seed=seed)
        for name in splits:
            splits[name] += list(ds[name]["text"])
    return {
        "teacher": _sample(splits["train"] + splits["unlabeled"], teacher_snippets, seed),
        "student": _sample(splits["train"], student_snippets, seed + 1),
        "validation": _sample(splits["validation"], val_snippets, seed + 2),
        "test": _sample(splits["test"], test_snippets, seed + 3),
    }


def _bucketed_batches(
    seqs: Sequence[Sequence[int]], batch_size: int, gen: torch.Generator, bucket: int = 32
) -> list[list[int]]:
    """One epoch of batches: shuffle, sort each run of `bucket` batches by length, shuffle the batches
    (less padding)."""
    perm = torch.randperm(len(seqs), generator=gen).tolist()
    span = batch_size * bucket
    batches = []
    for first in range(0, len(perm), span):
        chunk = sorted(perm[first : first + span], key=lambda i: len(seqs[i]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def _check_lm_data(
    model: nn.Module,
    train_seqs: Sequence[Sequence[int]],
    val_seqs: Sequence[Sequence[int]] | None,
    teacher_logits: Sequence[torch.Tensor] | None,
    config: LMTrainConfig,
) -> tuple[list[list[int]], list[list[int]] | None]:
    """train_lm's sequences, checked: refuse another config type, token ids beyond the model's
    vocabulary, teacher logits that do not match the sequences, and alpha < 1 without them."""
    if not isinstance(config, LMTrainConfig):
        raise TypeError(
            f"config must be an LMTrainConfig (got {type(config).__name__}): "
            "train_lm(model, seqs, LMTrainConfig(steps=100))"
        )
    seqs, alpha = _check_sequences("train_seqs", train_seqs), config.alpha
    vocab = vocab_size_of(model)
    if vocab is not None:
        for name, group in (("train_seqs", seqs), ("val_seqs", val_seqs or [])):
            worst = max((max(s) for s in group), default=0)
            if worst >= vocab:
                raise ValueError(
                    f"{name} holds token id {worst} but the model's vocabulary has {vocab} ids: "
                    "use the tokenizer the model was built for"
                )
    if teacher_logits is not None:
        if len(teacher_logits) != len(seqs):
            raise ValueError(
                f"teacher_logits must hold one tensor per sequence ({len(seqs)}; got {len(teacher_logits)})"
            )
        bad = [
            i
            for i, (t, s) in enumerate(zip(teacher_logits, seqs, strict=True))
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != len(s)
        ]
        if bad:
            raise ValueError(
                f"teacher_logits[{bad[0]}] must have shape (len(train_seqs[{bad[0]}]), vocab)"
            )
    elif alpha != 1.0:
        raise ValueError(
            f"config.alpha={alpha} needs teacher_logits (only alpha=1, plain CE, works without)"
        )
    return seqs, None if val_seqs is None else _check_sequences("val_seqs", val_seqs)


def lm_step(
    model: nn.Module,
    seqs: Sequence[Sequence[int]],
    teacher_logits: Sequence[torch.Tensor] | None,
    config: LMTrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, int]:
    """The loss of one batch of sequences (next-token CE, mixed with token-level KD towards
    `teacher_logits` when given) and the number of predicted tokens; the caller takes the step."""
    ids, mask = pad_batch(seqs)
    ids, mask = ids.to(device), mask.to(device)
    teacher = None
    if teacher_logits is not None:
        teacher = _pad_logits(list(teacher_logits), ids.shape[1]).to(device)
    with autocast(device):
        logits = lm_logits(model, ids, mask)
    loss = lm_loss(
        logits.float(), ids, mask, teacher, alpha=config.alpha, temperature=config.temperature
    )
    return loss, int(mask[:, 1:].sum())


def _validate(
    model: nn.Module,
    val_seqs: list[list[int]],
    device: torch.device,
    step: int,
    window: list[float],
    best: KeepBest,
    history: dict[str, Any],
) -> None:
    """Validation perplexity at `step`, logged with the mean training loss since the last one;
    `best` keeps the model's state when it is the lowest so far."""
    ppl = perplexity(model, val_seqs, device=device)
    model.train()
    history["step"].append(step)
    history["train_loss"].append(sum(window) / len(window))
    history["val_perplexity"].append(ppl)
    if best.offer(model, ppl, step):
        history["best_step"] = step


def train_lm(
    model: nn.Module,
    train_seqs: Sequence[Sequence[int]],
    config: LMTrainConfig,
    *,
    teacher_logits: Sequence[torch.Tensor] | None = None,
    val_seqs: Sequence[Sequence[int]] | None = None,
    device: torch.device | str | None = None,
    desc: str = "lm",
) -> dict[str, Any]:
    """Train a causal LM for `config.steps` AdamW steps on shuffled batches; KD when teacher_logits
    (one per sequence) are given.

    With `val_seqs`, validation perplexity is measured every `config.eval_every` steps (and at the
    end) and the best state is restored. Returns a history dict.
    """
    seqs, val_seqs = _check_lm_data(model, train_seqs, val_seqs, teacher_logits, config)
    steps = config.steps
    eval_every = steps if val_seqs is None or config.eval_every is None else config.eval_every
    device = get_device() if device is None else torch.device(device)
    model.to(device)
    optimizer, scheduler = adamw_with_warmup(
        model.parameters(), config.lr, config.weight_decay, steps, config.warmup_ratio
    )
    step_fn = OptimiserStep(optimizer, scheduler, tuple(model.parameters()), config.max_grad_norm)
    gen = torch.Generator().manual_seed(config.seed)
    history: dict[str, Any] = {"step": [], "train_loss": [], "val_perplexity": []}
    history.update(best_step=steps, best_val_perplexity=None, tokens_seen=0)
    best, window = KeepBest(higher_is_better=False), []
    order: list[list[int]] = []
    start = time.perf_counter()
    with seeded(config.seed):  # dropout masks; the caller's RNG is given back afterwards
        model.train()
        for step in progress_bar(range(1, steps + 1), desc):
            if not order:
                order = _bucketed_batches(seqs, config.batch_size, gen)
            rows = order.pop(0)
            targets = None if teacher_logits is None else [teacher_logits[i] for i in rows]
            loss, tokens = lm_step(model, [seqs[i] for i in rows], targets, config, device)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}: lower lr?")
            step_fn(loss)
            window.append(loss.item())
            history["tokens_seen"] += tokens
            if val_seqs is not None and (step % eval_every == 0 or step == steps):
                _validate(model, val_seqs, device, step, window, best, history)
                window = []
        if val_seqs is None:
            history["step"].append(steps)
            history["train_loss"].append(sum(window) / len(window))
        check_finite_parameters(model, f"{steps} steps")
    if best.restore(model):
        history["best_val_perplexity"] = best.value
    model.eval()
    history["seconds"] = time.perf_counter() - start
    return history


def lm_fingerprint(settings: Mapping[str, Any], seqs: Sequence[Sequence[int]]) -> str:
    """A short hash of training settings and token ids (names a checkpoint)."""
    h = hashlib.sha256(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    for s in seqs:
        h.update(b"|" + ",".join(map(str, s)).encode())
    return h.hexdigest()[:12]


def load_or_train_lm(
    model: nn.Module,
    name: str,
    train: Callable[[nn.Module], Mapping[str, Any]],
    folder: Path | None = None,
) -> dict[str, Any]:
    """Load `model`'s weights from checkpoint `name` if it exists, else run train(model) and save them;
    returns the record."""
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a plain file stem (got {name!r})")
    place = checkpoints_dir() if folder is None else Path(folder)
    stem = inside(place, name, "name")
    weights, config = checkpoint_paths(stem)
    for path in (weights, config):  # neither file may be a symlink out of the folder
        check_inside(place, path, "name")
    if weights.exists():
        fresh = state_copy(model)
        try:
            record = load_checkpoint(model, stem)
            return {"trained_now": False, **record}
        except (
            Exception
        ):  # damaged or incompatible checkpoint: undo any partial load, train again, overwrite it
            model.load_state_dict(fresh)
    history = dict(train(model))
    save_checkpoint(model, stem, {"history": history})
    return {"trained_now": True, "history": history}


def lm_teacher(
    vocab_size: int,
    train_seqs: Sequence[Sequence[int]],
    val_seqs: Sequence[Sequence[int]],
    settings: LMSettings,
    seed: int = 0,
    device: torch.device | str | None = None,
    folder: Path | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Chapter 10's teacher LM (`settings` from LM_PROFILE_SETTINGS): loaded from its checkpoint, else
    trained and saved."""
    _check_settings(settings)
    model = make_lm(
        vocab_size, n_positions=settings.max_len, dropout=0.0, seed=seed, **asdict(settings.teacher)
    )
    name = _lm_teacher_name(settings, vocab_size, seed, train_seqs)
    config = LMTrainConfig(
        steps=settings.teacher_steps,
        batch_size=settings.teacher_batch,
        lr=settings.lr,
        eval_every=max(1, settings.teacher_steps // 5),
        seed=seed,
    )
    record = load_or_train_lm(
        model,
        name,
        lambda m: train_lm(m, train_seqs, config, val_seqs=val_seqs, device=device, desc="teacher"),
        folder,
    )
    return model.to(get_device() if device is None else torch.device(device)), {
        "checkpoint": name,
        **record,
    }


def _lm_teacher_name(
    settings: LMSettings, vocab_size: int, seed: int, train_seqs: Sequence[Sequence[int]]
) -> str:
    """The teacher's checkpoint stem: a hash of its LM_TEACHER_KEYS settings, seed, vocabulary and data."""
    values = asdict(settings)
    key = {k: values[k] for k in LM_TEACHER_KEYS}
    return (
        f"lm-teacher-{lm_fingerprint({**key, 'seed': seed, 'vocab_size': vocab_size}, train_seqs)}"
    )


def _check_settings(settings: object) -> None:
    """Refuse anything but an LMSettings (old string-keyed dicts included), naming the fix."""
    if not isinstance(settings, LMSettings):
        raise TypeError(
            f"settings must be an LMSettings (got {type(settings).__name__}): take one from "
            "kdhelpers.chapters.lm.LM_PROFILE_SETTINGS, varied with dataclasses.replace"
        )


def lm_student(
    vocab_size: int,
    train_seqs: Sequence[Sequence[int]],
    val_seqs: Sequence[Sequence[int]],
    settings: LMSettings,
    *,
    sizes: LMSize | None = None,
    teacher_logits: Sequence[torch.Tensor] | None = None,
    alpha: float = 1.0,
    temperature: float = 1.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    desc: str = "student",
) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh chapter-10 student (`settings.student` sizes unless `sizes`), trained on text or by KD;
    (model, history)."""
    _check_settings(settings)
    sizes = settings.student if sizes is None else sizes
    if not isinstance(sizes, LMSize):
        raise TypeError(
            f"sizes must be an LMSize (got {type(sizes).__name__}): e.g. LMSize(n_layer=1, n_embd=16, n_head=2)"
        )
    model = make_lm(vocab_size, n_positions=settings.max_len, seed=seed, **asdict(sizes))
    config = LMTrainConfig(
        steps=settings.student_steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        alpha=alpha,
        temperature=temperature,
        eval_every=settings.eval_every,
        seed=seed,
    )
    history = train_lm(
        model,
        train_seqs,
        config,
        teacher_logits=teacher_logits,
        val_seqs=val_seqs,
        device=device,
        desc=desc,
    )
    return model, history
