"""Sampling from a language model and timing generation."""

from __future__ import annotations

import inspect
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdhelpers.chapters.lm.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
)
from kdhelpers.device import get_device
from kdhelpers.validate import check_int as _check_int
from kdhelpers.validate import (
    check_number,
    check_seed,
)


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
    for name, value, low in (
        ("n", n, 1),
        ("max_new_tokens", max_new_tokens, 1),
        ("batch_size", batch_size, 1),
    ):
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
            if not bool(
                torch.isfinite(logits).all()
            ):  # a tiny temperature: scale after subtracting the maximum
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


def _timed_sample(
    model: nn.Module, new_tokens: int, batch_size: int, seed: int, device: torch.device
) -> float:
    """Seconds to sample `new_tokens` tokens for `batch_size` sequences (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    sample(
        model,
        batch_size,
        new_tokens,
        batch_size=batch_size,
        stop_at_eos=False,
        seed=seed,
        device=device,
    )
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
    """Median tokens per second of each model, timed interleaved (one untimed warm-up each, then
    `rounds` round-robin passes).

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
        out[name] = {
            "tokens_per_s": batch_size * new_tokens / median,
            "ms_per_token": median / new_tokens * 1e3,
            "batch_size": batch_size,
            "seconds": times[name],
        }
    return out


def generation_speed(
    model: nn.Module,
    new_tokens: int = 64,
    batch_size: int = 1,
    repeats: int = 5,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Median tokens per second when sampling `new_tokens` tokens for `batch_size` sequences (one untimed warm-up)."""
    res = generation_speeds(
        {"model": model}, new_tokens, batch_size, rounds=repeats, device=device
    )["model"]
    return {k: res[k] for k in ("tokens_per_s", "ms_per_token", "batch_size")}
