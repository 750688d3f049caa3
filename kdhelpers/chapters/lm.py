"""Small causal language models for token-level and sequence-level distillation (chapter 10).

A character vocabulary built from the course's own text, tiny GPT-2 models (configured locally, no
download), a training loop whose loss is `kdhelpers.losses.distillation_loss` with a padding mask,
perplexity, sampling with a key/value cache, and a generation-speed measurement.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdhelpers.checkpoints import checkpoint_paths, load_checkpoint, save_checkpoint
from kdhelpers.data import VADER_DOMAINS, load_sentiment
from kdhelpers.device import autocast, get_device
from kdhelpers.losses import distillation_loss
from kdhelpers.paths import checkpoints_dir
from kdhelpers.pseudo import length_sorted_batches
from kdhelpers.train import check_finite_parameters, progress_bar, warmup_linear_schedule
from kdhelpers.validate import (
    check_float_tensor,
    check_number,
    check_optional_positive,
    check_seed,
    check_texts,
    check_token_ids,
    check_token_lists,
    to_device_of,
    vocab_size_of,
)
from kdhelpers.validate import check_int as _check_int

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
UNK_CHAR = "\N{REPLACEMENT CHARACTER}"


def _check_texts(texts: object) -> list[str]:
    """A non-empty list of strings."""
    return check_texts("texts", texts)


def _check_sequences(name: str, seqs: object) -> list[list[int]]:
    """A non-empty list of token-id lists, each with at least 2 tokens (one prediction)."""
    seqs = check_token_lists(name, seqs)
    if not seqs:
        raise ValueError(f"{name} is empty")
    short = [i for i, s in enumerate(seqs) if len(s) < 2]
    if short:
        raise ValueError(f"{name}[{short[0]}] has fewer than 2 tokens: nothing to predict")
    return seqs


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


# ---------------------------------------------------------------- characters as tokens


@dataclass(frozen=True)
class CharTokenizer:
    """Characters as tokens, after 4 special ids (pad 0, bos 1, eos 2, unk 3); optionally lowercased."""

    chars: tuple[str, ...]
    lowercase: bool = False

    def __post_init__(self) -> None:
        if any(not isinstance(c, str) or len(c) != 1 for c in self.chars):
            raise ValueError("chars must be single characters")
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("chars must not repeat")
        object.__setattr__(self, "_index", {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(self.chars)})

    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    @property
    def vocab_size(self) -> int:
        """Number of ids: the 4 special tokens plus one per character."""
        return len(SPECIAL_TOKENS) + len(self.chars)

    def normalize(self, text: str) -> str:
        """The text as this tokenizer sees it (lowercased if `lowercase`)."""
        return text.lower() if self.lowercase else text

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """[bos] + one id per character (unknown ones -> unk) + [eos], cut to `max_length` ids (eos dropped then)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str (got {type(text).__name__})")
        ids = [BOS_ID] + [self._index.get(c, UNK_ID) for c in self.normalize(text)] + [EOS_ID]  # type: ignore[attr-defined]
        if max_length is not None:
            _check_int("max_length", max_length, 2)
            ids = ids[:max_length]
        return ids

    def encode_batch(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """encode() for every text."""
        return [self.encode(t, max_length) for t in _check_texts(texts)]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Characters of the ids up to the first eos; pad and bos are skipped, unk shows as U+FFFD."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"ids must be ints (got {type(i).__name__})")
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside this vocabulary (0..{self.vocab_size - 1})")
            if i == EOS_ID:
                break
            if i in (PAD_ID, BOS_ID):
                continue
            out.append(UNK_CHAR if i == UNK_ID else self.chars[i - len(SPECIAL_TOKENS)])
        return "".join(out)

    def token(self, i: int) -> str:
        """The readable name of one id (a character or a special token)."""
        return SPECIAL_TOKENS[i] if i < len(SPECIAL_TOKENS) else self.chars[i - len(SPECIAL_TOKENS)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description (for checkpoints)."""
        return {"chars": "".join(self.chars), "lowercase": self.lowercase}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> CharTokenizer:
        """The tokenizer described by to_dict()."""
        return cls(tuple(record["chars"]), bool(record.get("lowercase", False)))


def build_char_tokenizer(texts: Sequence[str], lowercase: bool = False, min_count: int = 1) -> CharTokenizer:
    """A CharTokenizer over the characters seen at least `min_count` times in `texts` (most frequent first)."""
    texts = _check_texts(texts)
    _check_int("min_count", min_count, 1)
    counts = Counter("".join(t.lower() if lowercase else t for t in texts))
    chars = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
    if not chars:
        raise ValueError(f"no character occurs {min_count} or more times")
    return CharTokenizer(tuple(chars), lowercase)


def vocab_map(source: CharTokenizer, target: CharTokenizer) -> torch.Tensor:
    """For each id of `source`, the id of `target` its character becomes (after target's lowercasing), else unk."""
    if not isinstance(source, CharTokenizer) or not isinstance(target, CharTokenizer):
        raise TypeError("source and target must be CharTokenizers")
    out = list(range(len(SPECIAL_TOKENS)))
    for c in source.chars:
        ids = target.encode(c)[1:-1]
        out.append(ids[0] if len(ids) == 1 else UNK_ID)
    return torch.tensor(out, dtype=torch.long)


def project_logits(logits: torch.Tensor, mapping: torch.Tensor, target_vocab_size: int) -> torch.Tensor:
    """Log-probabilities over a coarser vocabulary: the probabilities of source ids that map to one target id are summed."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError("logits must be a floating-point tensor")
    if not isinstance(mapping, torch.Tensor) or mapping.dim() != 1 or mapping.shape[0] != logits.shape[-1]:
        raise ValueError(f"mapping must be a 1-d tensor with one entry per source id ({logits.shape[-1]})")
    _check_int("target_vocab_size", target_vocab_size, 2)
    if mapping.min() < 0 or mapping.max() >= target_vocab_size:
        raise ValueError(f"mapping values must lie in [0, {target_vocab_size - 1}]")
    probs = F.softmax(logits.float(), dim=-1)
    out = torch.zeros(*probs.shape[:-1], target_vocab_size, dtype=probs.dtype, device=probs.device)
    out.index_add_(probs.dim() - 1, mapping.to(probs.device), probs)
    return out.clamp_min(1e-12).log()


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token-id lists to the longest: (input_ids, attention_mask), both (batch, longest) int64."""
    seqs = [list(s) for s in seqs]
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("pad_batch needs at least one sequence and no empty sequence")
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids, mask


def count_tokens(seqs: Sequence[Sequence[int]]) -> int:
    """Number of predicted tokens in the sequences (every token after the first of each)."""
    return sum(max(0, len(s) - 1) for s in seqs)


# ---------------------------------------------------------------- models


def make_lm(
    vocab_size: int,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 256,
    dropout: float = 0.1,
    seed: int = 0,
) -> nn.Module:
    """A freshly initialised (seeded) GPT-2 language model of the given size, built offline."""
    from transformers import GPT2Config, GPT2LMHeadModel

    for name, value, low in (("vocab_size", vocab_size, 2), ("n_layer", n_layer, 1), ("n_embd", n_embd, 1),
                             ("n_head", n_head, 1), ("n_positions", n_positions, 2)):
        _check_int(name, value, low)
    check_seed("seed", seed)
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    if check_number("dropout", dropout, 0.0, 1.0) >= 1.0:
        raise ValueError(f"dropout must be in [0, 1) (got {dropout!r})")
    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model.eval()


def lm_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token logits (batch, seq, vocab) of a causal LM on a right-padded batch (ids checked against its vocabulary)."""
    vocab = vocab_size_of(model)
    if vocab is not None:
        check_token_ids("input_ids", input_ids, vocab, "the language model")
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.logits if hasattr(out, "logits") else out


# ---------------------------------------------------------------- losses and perplexity


def _shifted(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """(logits for positions 0..n-2, their targets 1..n-1, mask of real targets), with shape checks."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(f"logits must have shape (batch, seq, vocab) (got {getattr(logits, 'shape', None)})")
    check_float_tensor("logits", logits)
    for name, t in (("input_ids", input_ids), ("attention_mask", attention_mask)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (got {type(t).__name__})")
    check_token_ids("input_ids", input_ids, logits.shape[-1], "the logits' last dimension",
                    "the targets must be ids of the vocabulary the logits score")
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    if tuple(input_ids.shape) != tuple(logits.shape[:2]) or tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
            f"must both have shape {tuple(logits.shape[:2])}"
        )
    if logits.shape[1] < 2:
        raise ValueError("sequences need at least 2 positions: nothing to predict")
    ids = to_device_of("input_ids", input_ids, "logits", logits).long()
    mask = to_device_of("attention_mask", attention_mask, "logits", logits)
    return logits[:, :-1], ids[:, 1:], mask[:, 1:].bool()


def lm_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    alpha: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Next-token loss over the real (unpadded) targets: CE, or distillation_loss(alpha, T, mask) with teacher logits."""
    check_number("alpha", alpha, 0.0, 1.0)
    check_number("temperature", temperature, 0.0, strict_min=True)
    s, y, m = _shifted(logits, input_ids, attention_mask)
    if teacher_logits is None:
        if alpha != 1.0:
            raise ValueError(f"alpha={alpha} needs teacher_logits (only alpha=1, plain CE, works without)")
        if not m.any():
            raise ValueError("attention_mask selects no target token")
        return F.cross_entropy(s.float()[m], y[m])
    check_float_tensor("teacher_logits", teacher_logits)
    if tuple(teacher_logits.shape) != tuple(logits.shape):
        raise ValueError(
            f"teacher_logits must have the student's shape {tuple(logits.shape)} (got {tuple(teacher_logits.shape)}): "
            "token-level KD needs the same tokenizer (same vocabulary and the same positions)"
        )
    return distillation_loss(s, teacher_logits[:, :-1].to(s.device), y, alpha=alpha, temperature=temperature, mask=m)


def nll_sum(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[float, int]:
    """(sum of next-token negative log-likelihoods in nats, number of real target tokens)."""
    s, y, m = _shifted(logits, input_ids, attention_mask)
    nll = F.cross_entropy(s.float().reshape(-1, s.shape[-1]), y.reshape(-1), reduction="none").reshape(y.shape)
    return float(nll[m].sum()), int(m.sum())


@torch.no_grad()
def perplexity(
    model: nn.Module,
    seqs: Sequence[Sequence[int]],
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> float:
    """exp(mean next-token NLL) over all real target tokens of `seqs` (padding ignored; eval mode)."""
    seqs = _check_sequences("seqs", seqs)
    _check_int("batch_size", batch_size, 1)
    device = get_device() if device is None else torch.device(device)
    was_training = model.training
    model.eval().to(device)
    total, n = 0.0, 0
    for rows in length_sorted_batches([len(s) for s in seqs], batch_size):
        ids, mask = pad_batch([seqs[i] for i in rows])
        ids, mask = ids.to(device), mask.to(device)
        with autocast(device):
            logits = lm_logits(model, ids, mask)
        s, k = nll_sum(logits.float(), ids, mask)
        total, n = total + s, n + k
    model.train(was_training)
    return math.exp(total / n)


@torch.no_grad()
def token_logits(
    model: nn.Module,
    seqs: Sequence[Sequence[int]],
    batch_size: int = 64,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float16,
) -> list[torch.Tensor]:
    """A model's logits for every sequence, computed once (length-sorted batches): a list of (len_i, vocab) CPU tensors."""
    seqs = _check_sequences("seqs", seqs)
    _check_int("batch_size", batch_size, 1)
    device = get_device() if device is None else torch.device(device)
    was_training = model.training
    model.eval().to(device)
    out: list[torch.Tensor | None] = [None] * len(seqs)
    for rows in length_sorted_batches([len(s) for s in seqs], batch_size):
        ids, mask = pad_batch([seqs[i] for i in rows])
        with autocast(device):
            logits = lm_logits(model, ids.to(device), mask.to(device))
        for j, i in enumerate(rows):
            out[i] = logits[j, : len(seqs[i])].float().to("cpu", dtype)
    model.train(was_training)
    return out  # type: ignore[return-value]


def _pad_logits(parts: Sequence[torch.Tensor], longest: int) -> torch.Tensor:
    """Stack per-sequence logits (len_i, vocab) into (batch, longest, vocab), zeros after each end."""
    out = torch.zeros(len(parts), longest, parts[0].shape[-1])
    for row, p in enumerate(parts):
        out[row, : p.shape[0]] = p.float()
    return out


# ---------------------------------------------------------------- training


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


# ---------------------------------------------------------------- generation


def _cache_argument(model: nn.Module) -> str:
    """The name of the key/value-cache argument of `model.forward` ('cache' in recent transformers)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def sample(
    model: nn.Module,
    n: int,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    batch_size: int = 64,
    stop_at_eos: bool = True,
    seed: int = 0,
    device: torch.device | str | None = None,
    forbid: Sequence[int] = (PAD_ID, BOS_ID, UNK_ID),
) -> list[list[int]]:
    """`n` sequences sampled from bos with a key/value cache: [bos, ...] ending in eos when one was drawn (seeded)."""
    for name, value, low in (("n", n, 1), ("max_new_tokens", max_new_tokens, 1), ("batch_size", batch_size, 1)):
        _check_int(name, value, low)
    check_seed("seed", seed)
    check_number("temperature", temperature, 0.0, strict_min=True)
    if top_k is not None:
        _check_int("top_k", top_k, 1)
    device = get_device() if device is None else torch.device(device)
    was_training = model.training
    model.eval().to(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    cache_arg = _cache_argument(model)
    out: list[list[int]] = []
    for first in range(0, n, batch_size):
        b = min(batch_size, n - first)
        seqs = torch.full((b, 1), BOS_ID, dtype=torch.long)
        done = torch.zeros(b, dtype=torch.bool)
        step_input, past = seqs.to(device), None
        for _ in range(max_new_tokens):
            res = model(input_ids=step_input, use_cache=True, **{cache_arg: past})
            past = getattr(res, cache_arg)
            raw = res.logits[:, -1].float().cpu()
            logits = raw / temperature
            if not bool(torch.isfinite(logits).all()):  # a tiny temperature: scale after subtracting the maximum
                logits = (raw.double() - raw.double().amax(-1, keepdim=True)) / temperature
                logits = logits.clamp(min=-1e30).float()
            if forbid:
                logits[:, list(forbid)] = -math.inf
            if top_k is not None and top_k < logits.shape[-1]:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, -math.inf)
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=gen)
            seqs = torch.cat([seqs, nxt], dim=1)
            done |= nxt[:, 0] == EOS_ID
            if stop_at_eos and bool(done.all()):
                break
            step_input = nxt.to(device)
        for row in seqs.tolist():
            out.append(row[: row.index(EOS_ID) + 1] if EOS_ID in row else row)
    model.train(was_training)
    return out


def _timed_sample(model: nn.Module, new_tokens: int, batch_size: int, seed: int, device: torch.device) -> float:
    """Seconds to sample `new_tokens` tokens for `batch_size` sequences (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    sample(model, batch_size, new_tokens, batch_size=batch_size, stop_at_eos=False, seed=seed, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def generation_speeds(
    models: Mapping[str, nn.Module],
    new_tokens: int = 64,
    batch_size: int = 1,
    rounds: int = 5,
    device: torch.device | str | None = None,
) -> dict[str, dict[str, Any]]:
    """Median tokens per second of each model, timed interleaved (one untimed warm-up each, then `rounds` round-robin passes).

    Interleaving spreads any slow period of the machine over all models instead of penalising the
    one that happened to run during it; every other round runs the models in reverse order.
    Returns {name: {"tokens_per_s", "ms_per_token", "batch_size", "seconds"}} in the order of `models`.
    """
    if not isinstance(models, Mapping):
        raise TypeError(f"models must be a dict of name -> model (got {type(models).__name__})")
    if not models:
        raise ValueError("models is empty")
    bad = [name for name, m in models.items() if not isinstance(m, nn.Module)]
    if bad:
        raise TypeError(f"models[{bad[0]!r}] is not a torch.nn.Module")
    _check_int("new_tokens", new_tokens, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("rounds", rounds, 1)
    device = get_device() if device is None else torch.device(device)
    names = list(models)
    for name in names:  # warm-up: first-call allocations, caches
        _timed_sample(models[name], new_tokens, batch_size, 0, device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(_timed_sample(models[name], new_tokens, batch_size, r + 1, device))
    out = {}
    for name in names:
        median = statistics.median(times[name])
        out[name] = {"tokens_per_s": batch_size * new_tokens / median, "ms_per_token": median / new_tokens * 1e3,
                     "batch_size": batch_size, "seconds": times[name]}
    return out


def generation_speed(
    model: nn.Module,
    new_tokens: int = 64,
    batch_size: int = 1,
    repeats: int = 5,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Median tokens per second when sampling `new_tokens` tokens for `batch_size` sequences (one untimed warm-up)."""
    res = generation_speeds({"model": model}, new_tokens, batch_size, rounds=repeats, device=device)["model"]
    return {k: res[k] for k in ("tokens_per_s", "ms_per_token", "batch_size")}
