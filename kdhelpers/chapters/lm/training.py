"""Chapter 10's settings and texts, training a language model (with or without a teacher), and its checkpoints."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
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
from kdhelpers.device import autocast, get_device
from kdhelpers.paths import checkpoints_dir
from kdhelpers.progress import progress_bar
from kdhelpers.train import check_finite_parameters, warmup_linear_schedule
from kdhelpers.validate import check_int as _check_int
from kdhelpers.validate import (
    check_number,
    check_optional_positive,
    check_seed,
    vocab_size_of,
)

#: Sizes per profile for chapter 10 and its solutions (so both use one teacher checkpoint).
LM_PROFILE_SETTINGS: dict[str, dict[str, Any]] = {
    "quick": dict(teacher_snippets=2000, student_snippets=150, val_snippets=150, test_snippets=150, max_len=64,
                  teacher=dict(n_layer=1, n_embd=48, n_head=2), student=dict(n_layer=1, n_embd=32, n_head=2),
                  tiny=dict(n_layer=1, n_embd=16, n_head=2), teacher_steps=60, teacher_batch=32,
                  student_steps=40, batch_size=16, eval_every=20, lr=3e-3, alpha=0.0, T=1.0, generated=150,
                  speed_tokens=16, speed_rounds=3),
    "standard": dict(teacher_snippets=None, student_snippets=250, val_snippets=600, test_snippets=1000, max_len=128,
                     teacher=dict(n_layer=2, n_embd=128, n_head=4), student=dict(n_layer=2, n_embd=64, n_head=2),
                     tiny=dict(n_layer=1, n_embd=32, n_head=2), teacher_steps=500, teacher_batch=32,
                     student_steps=600, batch_size=16, eval_every=100, lr=3e-3, alpha=0.0, T=1.0, generated=1000,
                     speed_tokens=64, speed_rounds=7),
    "full": dict(teacher_snippets=None, student_snippets=250, val_snippets=None, test_snippets=None, max_len=128,
                 teacher=dict(n_layer=4, n_embd=256, n_head=4), student=dict(n_layer=2, n_embd=64, n_head=2),
                 tiny=dict(n_layer=1, n_embd=32, n_head=2), teacher_steps=3000, teacher_batch=64,
                 student_steps=1000, batch_size=16, eval_every=100, lr=3e-3, alpha=0.0, T=1.0, generated=4000,
                 speed_tokens=64, speed_rounds=7),
}


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
    """The snippets of the four VADER corpora without labels: 'teacher' (train + unlabeled), 'student' (a sample of train), 'validation', 'test'."""

    check_seed("seed", seed)
    splits: dict[str, list[str]] = {name: [] for name in ("train", "unlabeled", "validation", "test")}
    for domain in VADER_DOMAINS:
        ds = load_sentiment(domain, seed=seed)
        for name in splits:
            splits[name] += list(ds[name]["text"])
    return {"teacher": _sample(splits["train"] + splits["unlabeled"], teacher_snippets, seed),
            "student": _sample(splits["train"], student_snippets, seed + 1),
            "validation": _sample(splits["validation"], val_snippets, seed + 2),
            "test": _sample(splits["test"], test_snippets, seed + 3)}


def _bucketed_batches(seqs: Sequence[Sequence[int]], batch_size: int, gen: torch.Generator,
                      bucket: int = 32) -> list[list[int]]:
    """One epoch of batches: shuffle, sort each run of `bucket` batches by length, shuffle the batches (less padding)."""
    perm = torch.randperm(len(seqs), generator=gen).tolist()
    span = batch_size * bucket
    batches = []
    for first in range(0, len(perm), span):
        chunk = sorted(perm[first : first + span], key=lambda i: len(seqs[i]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def train_lm(
    model: nn.Module,
    train_seqs: Sequence[Sequence[int]],
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    teacher_logits: Sequence[torch.Tensor] | None = None,
    alpha: float = 1.0,
    temperature: float = 1.0,
    val_seqs: Sequence[Sequence[int]] | None = None,
    eval_every: int | None = None,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.05,
    max_grad_norm: float | None = 1.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    desc: str = "lm",
) -> dict[str, Any]:
    """Train a causal LM for `steps` AdamW steps on shuffled batches; KD when teacher_logits (one per sequence) are given.

    With `val_seqs`, validation perplexity is measured every `eval_every` steps (and at the end)
    and the best state is restored. Returns a history dict.
    """
    seqs = _check_sequences("train_seqs", train_seqs)
    _check_int("steps", steps, 1)
    _check_int("batch_size", batch_size, 1)
    check_seed("seed", seed)
    check_number("lr", lr, 0.0, strict_min=True)
    check_number("weight_decay", weight_decay, 0.0)
    check_number("warmup_ratio", warmup_ratio, 0.0, 1.0)
    max_grad_norm = check_optional_positive("max_grad_norm", max_grad_norm)
    check_number("alpha", alpha, 0.0, 1.0)
    check_number("temperature", temperature, 0.0, strict_min=True)
    vocab = vocab_size_of(model)
    if vocab is not None:
        for name, group in (("train_seqs", seqs), ("val_seqs", val_seqs or [])):
            worst = max((max(s) for s in group), default=0)
            if worst >= vocab:
                raise ValueError(f"{name} holds token id {worst} but the model's vocabulary has {vocab} ids: "
                                 "use the tokenizer the model was built for")
    if teacher_logits is not None:
        if len(teacher_logits) != len(seqs):
            raise ValueError(f"teacher_logits must hold one tensor per sequence ({len(seqs)}; got {len(teacher_logits)})")
        bad = [i for i, (t, s) in enumerate(zip(teacher_logits, seqs, strict=True))
               if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != len(s)]
        if bad:
            raise ValueError(f"teacher_logits[{bad[0]}] must have shape (len(train_seqs[{bad[0]}]), vocab)")
    elif alpha != 1.0:
        raise ValueError(f"alpha={alpha} needs teacher_logits (only alpha=1, plain CE, works without)")
    if val_seqs is not None:
        val_seqs = _check_sequences("val_seqs", val_seqs)
        eval_every = steps if eval_every is None else _check_int("eval_every", eval_every, 1)
    device = get_device() if device is None else torch.device(device)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = warmup_linear_schedule(optimizer, steps, warmup_ratio)
    gen = torch.Generator().manual_seed(seed)
    history: dict[str, Any] = {"step": [], "train_loss": [], "val_perplexity": [], "best_step": steps,
                               "best_val_perplexity": None, "tokens_seen": 0}
    best_state, best_ppl, window = None, math.inf, []
    order: list[list[int]] = []
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # dropout masks
        model.train()
        for step in progress_bar(range(1, steps + 1), desc):
            if not order:
                order = _bucketed_batches(seqs, batch_size, gen)
            rows = order.pop(0)
            ids, mask = pad_batch([seqs[i] for i in rows])
            ids, mask = ids.to(device), mask.to(device)
            teacher = None
            if teacher_logits is not None:
                teacher = _pad_logits([teacher_logits[i] for i in rows], ids.shape[1]).to(device)
            with autocast(device):
                logits = lm_logits(model, ids, mask)
            loss = lm_loss(logits.float(), ids, mask, teacher, alpha=alpha, temperature=temperature)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}: lower lr?")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            window.append(loss.item())
            history["tokens_seen"] += int(mask[:, 1:].sum())
            if val_seqs is not None and (step % eval_every == 0 or step == steps):
                ppl = perplexity(model, val_seqs, device=device)
                model.train()
                history["step"].append(step)
                history["train_loss"].append(sum(window) / len(window))
                history["val_perplexity"].append(ppl)
                window = []
                if ppl < best_ppl:
                    best_ppl, history["best_step"] = ppl, step
                    best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        if val_seqs is None:
            history["step"].append(steps)
            history["train_loss"].append(sum(window) / len(window))
        check_finite_parameters(model, f"{steps} steps")
    if best_state is not None:
        model.load_state_dict(best_state)
        history["best_val_perplexity"] = best_ppl
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
    """Load `model`'s weights from checkpoint `name` if it exists, else run train(model) and save them; returns the record."""
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a plain file stem (got {name!r})")
    stem = (checkpoints_dir() if folder is None else Path(folder)) / name
    weights, _ = checkpoint_paths(stem)
    if weights.exists():
        fresh = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        try:
            record = load_checkpoint(model, stem)
            return {"trained_now": False, **record}
        except Exception:  # damaged or incompatible checkpoint: undo any partial load, train again, overwrite it
            model.load_state_dict(fresh)
    history = dict(train(model))
    save_checkpoint(model, stem, {"history": history})
    return {"trained_now": True, "history": history}


def course_teacher(
    vocab_size: int,
    train_seqs: Sequence[Sequence[int]],
    val_seqs: Sequence[Sequence[int]],
    settings: Mapping[str, Any],
    seed: int = 0,
    device: torch.device | str | None = None,
    folder: Path | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Chapter 10's teacher LM (`settings` from LM_PROFILE_SETTINGS): loaded from its checkpoint, else trained and saved."""
    keys = ("teacher", "teacher_steps", "teacher_batch", "lr", "max_len")
    missing = [k for k in keys if k not in settings]
    if missing:
        raise ValueError(f"settings lack {missing} (see kdhelpers.chapters.lm.LM_PROFILE_SETTINGS)")
    model = make_lm(vocab_size, n_positions=settings["max_len"], dropout=0.0, seed=seed, **settings["teacher"])
    key = {k: settings[k] for k in keys}
    name = f"lm-teacher-{lm_fingerprint({**key, 'seed': seed, 'vocab_size': vocab_size}, train_seqs)}"
    record = load_or_train_lm(model, name, lambda m: train_lm(
        m, train_seqs, steps=settings["teacher_steps"], batch_size=settings["teacher_batch"], lr=settings["lr"],
        val_seqs=val_seqs, eval_every=max(1, settings["teacher_steps"] // 5), seed=seed, device=device,
        desc="teacher"), folder)
    return model.to(get_device() if device is None else torch.device(device)), {"checkpoint": name, **record}


def course_student(
    vocab_size: int,
    train_seqs: Sequence[Sequence[int]],
    val_seqs: Sequence[Sequence[int]],
    settings: Mapping[str, Any],
    *,
    sizes: Mapping[str, int] | None = None,
    teacher_logits: Sequence[torch.Tensor] | None = None,
    alpha: float = 1.0,
    temperature: float = 1.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    desc: str = "student",
) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh chapter-10 student (`settings["student"]` sizes unless `sizes`), trained on text or by KD; (model, history)."""
    keys = ("student", "max_len", "student_steps", "batch_size", "lr", "eval_every")
    missing = [k for k in keys if k not in settings]
    if missing:
        raise ValueError(f"settings lack {missing} (see kdhelpers.chapters.lm.LM_PROFILE_SETTINGS)")
    model = make_lm(vocab_size, n_positions=settings["max_len"], seed=seed, **(sizes or settings["student"]))
    history = train_lm(model, train_seqs, steps=settings["student_steps"], batch_size=settings["batch_size"],
                       lr=settings["lr"], teacher_logits=teacher_logits, alpha=alpha, temperature=temperature,
                       val_seqs=val_seqs, eval_every=settings["eval_every"], seed=seed, device=device, desc=desc)
    return model, history
