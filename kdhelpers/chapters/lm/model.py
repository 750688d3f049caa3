"""Tiny GPT-2 language models, their token-level KD loss, perplexity and the teacher's cached token logits."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdhelpers.chapters.lm.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    _check_sequences,
    pad_batch,
)
from kdhelpers.device import autocast, get_device, seeded
from kdhelpers.losses import distillation_loss
from kdhelpers.pseudo import length_sorted_batches
from kdhelpers.validate import (
    check_float_tensor,
    check_number,
    check_seed,
    check_token_ids,
    to_device_of,
    vocab_size_of,
)
from kdhelpers.validate import check_int as _check_int


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

    for name, value, low in (
        ("vocab_size", vocab_size, 2),
        ("n_layer", n_layer, 1),
        ("n_embd", n_embd, 1),
        ("n_head", n_head, 1),
        ("n_positions", n_positions, 2),
    ):
        _check_int(name, value, low)
    check_seed("seed", seed)
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    if check_number("dropout", dropout, 0.0, 1.0) >= 1.0:
        raise ValueError(f"dropout must be in [0, 1) (got {dropout!r})")
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    with seeded(seed):
        model = GPT2LMHeadModel(config)
    return model.eval()


def lm_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Next-token logits (batch, seq, vocab) of a causal LM on a right-padded batch (ids checked
    against its vocabulary)."""
    for name, t in (("input_ids", input_ids), ("attention_mask", attention_mask)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (got {type(t).__name__})")
    if input_ids.dim() != 2 or 0 in input_ids.shape:
        raise ValueError(
            f"input_ids must have shape (batch, seq) with at least one sequence of at least one "
            f"token (got shape {tuple(input_ids.shape)}): an empty sequence has no logits"
        )
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)} "
            f"(got {tuple(attention_mask.shape)})"
        )
    vocab = vocab_size_of(model)
    if vocab is not None:
        check_token_ids("input_ids", input_ids, vocab, "the language model")
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.logits if hasattr(out, "logits") else out


def _shifted(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """(logits for positions 0..n-2, their targets 1..n-1, mask of real targets), with shape checks."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(
            f"logits must have shape (batch, seq, vocab) (got {getattr(logits, 'shape', None)})"
        )
    check_float_tensor("logits", logits)
    for name, t in (("input_ids", input_ids), ("attention_mask", attention_mask)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (got {type(t).__name__})")
    check_token_ids(
        "input_ids",
        input_ids,
        logits.shape[-1],
        "the logits' last dimension",
        "the targets must be ids of the vocabulary the logits score",
    )
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    if tuple(input_ids.shape) != tuple(logits.shape[:2]) or tuple(attention_mask.shape) != tuple(
        input_ids.shape
    ):
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
    """Next-token loss over the real (unpadded) targets: CE, or distillation_loss(alpha, T, mask) with
    teacher logits."""
    check_number("alpha", alpha, 0.0, 1.0)
    check_number("temperature", temperature, 0.0, strict_min=True)
    s, y, m = _shifted(logits, input_ids, attention_mask)
    if teacher_logits is None:
        if alpha != 1.0:
            raise ValueError(
                f"alpha={alpha} needs teacher_logits (only alpha=1, plain CE, works without)"
            )
        if not m.any():
            raise ValueError("attention_mask selects no target token")
        return F.cross_entropy(s.float()[m], y[m])
    check_float_tensor("teacher_logits", teacher_logits)
    if tuple(teacher_logits.shape) != tuple(logits.shape):
        raise ValueError(
            f"teacher_logits must have the student's shape {tuple(logits.shape)} (got {tuple(teacher_logits.shape)}): "
            "token-level KD needs the same tokenizer (same vocabulary and the same positions)"
        )
    return distillation_loss(
        s, teacher_logits[:, :-1].to(s.device), y, alpha=alpha, temperature=temperature, mask=m
    )


def nll_sum(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[float, int]:
    """(sum of next-token negative log-likelihoods in nats, number of real target tokens)."""
    s, y, m = _shifted(logits, input_ids, attention_mask)
    nll = F.cross_entropy(
        s.float().reshape(-1, s.shape[-1]), y.reshape(-1), reduction="none"
    ).reshape(y.shape)
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
    """A model's logits for every sequence, computed once (length-sorted batches): a list of (len_i,
    vocab) CPU tensors."""
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
