"""One latency method for every chapter: many different inputs, warm-up, fixed threads, interleaved.

The method (`measure_latency`):
- at least MIN_INPUTS (200) different real inputs, one timed forward pass per batch of them
  (batch 1 by default), never one input repeated: caches and input lengths then act as in use;
- `warmup` untimed passes per model first;
- torch.set_num_threads(threads) for the whole measurement (restored afterwards); the count is
  recorded in every result;
- interleaved timing: for batch i each model runs once, in an order rotated by i, so drift,
  thermal throttling and other load affect every model alike;
- model.eval() and torch.inference_mode() (each model's training flag is restored afterwards);
- the result per model: median and quartiles (q25, q75; numpy's linear percentiles) of the
  wall time per batch in milliseconds, with n, threads, batch size, warm-up and device.
Speed-ups are ratios of medians (`speedup`), printed to two significant figures (`speedup_text`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from kdhelpers.numfmt import ratio
from kdhelpers.validate import (
    check_int,
    check_number,
    check_token_ids,
    check_token_lists,
    vocab_size_of,
)

#: Fewest different inputs (timed passes at batch 1) a latency claim is based on.
MIN_INPUTS = 200


@dataclass(frozen=True)
class LatencyStats:
    """Wall time per batch of one model: median and quartiles in ms over n timed passes."""

    name: str
    median_ms: float
    q25_ms: float
    q75_ms: float
    n: int
    threads: int
    batch_size: int
    warmup: int
    device: str = "cpu"

    def __post_init__(self) -> None:
        # a record read back from JSON may hold null (NaN is written as null) or a string
        for key in ("median_ms", "q25_ms", "q75_ms"):
            check_number(key, getattr(self, key), 0.0)
        for key, low in (("n", 1), ("threads", 1), ("batch_size", 1), ("warmup", 0)):
            check_int(key, getattr(self, key), low)

    @property
    def iqr_ms(self) -> float:
        """Inter-quartile range q75 - q25 in ms."""
        return self.q75_ms - self.q25_ms

    @property
    def examples_per_s(self) -> float:
        """Throughput implied by the median: batch_size / median time."""
        return self.batch_size / (self.median_ms / 1e3)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "name": self.name,
            "median_ms": self.median_ms,
            "q25_ms": self.q25_ms,
            "q75_ms": self.q75_ms,
            "n": self.n,
            "threads": self.threads,
            "batch_size": self.batch_size,
            "warmup": self.warmup,
            "device": self.device,
        }


def time_interleaved(
    runs: Mapping[str, Callable[[int], object]],
    n: int,
    *,
    warmup: int = 10,
    threads: int | None = 1,
    batch_size: int = 1,
    min_inputs: int = MIN_INPUTS,
    device: str = "cpu",
    clock: Callable[[], int] = time.perf_counter_ns,
) -> dict[str, LatencyStats]:
    """Time `runs[name](i)` for i in range(n), names in an order rotated by i; stats per name."""
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError(
            "runs must be a non-empty mapping of name -> function(i) that runs input i"
        )
    for name, run in runs.items():
        if not callable(run):
            raise TypeError(
                f"runs[{name!r}] must be a function of the input index (got {type(run).__name__})"
            )
    min_inputs = check_int("min_inputs", min_inputs, 1)
    n = check_int("n", n, 1)
    if n < min_inputs:
        raise ValueError(
            f"n is {n} but a latency measurement needs at least {min_inputs} different inputs: "
            f"pass more test examples, or min_inputs={n} for a quick run (n is recorded)"
        )
    warmup = check_int("warmup", warmup, 0)
    batch_size = check_int("batch_size", batch_size, 1)
    if threads is not None:
        threads = check_int("threads", threads, 1)
    names = list(runs)
    times = {name: np.empty(n, dtype=np.float64) for name in names}
    previous = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        used = torch.get_num_threads()
        with torch.inference_mode():
            for i in range(warmup):
                for name in _rotated(names, i):
                    runs[name](i % n)
            for i in range(n):
                for name in _rotated(names, i):
                    start = clock()
                    runs[name](i)
                    times[name][i] = (clock() - start) / 1e6
    finally:
        torch.set_num_threads(previous)
    out = {}
    for name in names:
        q25, median, q75 = (float(v) for v in np.percentile(times[name], [25, 50, 75]))
        out[name] = LatencyStats(name, median, q25, q75, n, used, batch_size, warmup, device)
    return out


def _rotated(names: list[str], i: int) -> list[str]:
    """`names` rotated left by i (input 0: a, b, c; input 1: b, c, a; ...)."""
    k = i % len(names)
    return names[k:] + names[:k]


def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _batches(
    rows: list[list[int]], batch_size: int, pad_id: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive batches of `rows`, padded to their longest row (as train.pad_collate does)."""
    out = []
    for start in range(0, len(rows) - batch_size + 1, batch_size):
        chunk = rows[start : start + batch_size]
        longest = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), longest), dtype=torch.long)
        for row, r in enumerate(chunk):
            ids[row, : len(r)] = torch.as_tensor(r, dtype=torch.long)
            mask[row, : len(r)] = 1
        out.append((ids.to(device), mask.to(device)))
    return out


def _check_output(name: str, output: object) -> None:
    """The model returned logits: a tensor, or an object with a `.logits` tensor."""
    if isinstance(output, torch.Tensor) or isinstance(
        getattr(output, "logits", None), torch.Tensor
    ):
        return
    raise TypeError(
        f"models[{name!r}] returned {type(output).__name__}, not logits: latency expects "
        "model(input_ids=..., attention_mask=...) to return logits or an object with .logits"
    )


def measure_latency(
    models: Mapping[str, nn.Module],
    inputs: Sequence[Sequence[int]] | Mapping[str, Sequence[Sequence[int]]],
    *,
    batch_size: int = 1,
    warmup: int = 10,
    threads: int | None = 1,
    min_inputs: int = MIN_INPUTS,
    pad_id: int = 0,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> dict[str, LatencyStats]:
    """Interleaved latency of classifiers on >= min_inputs different inputs (see module doc)."""
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping of name -> torch.nn.Module")
    for name, model in models.items():
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"models[{name!r}] must be a torch.nn.Module (got {type(model).__name__})"
            )
    batch_size = check_int("batch_size", batch_size, 1)
    min_inputs = check_int("min_inputs", min_inputs, 1)
    pad_id = check_int("pad_id", pad_id, 0)
    rows = _inputs_per_model(models, inputs)
    n = _timed_batches(rows, isinstance(inputs, Mapping), batch_size, min_inputs)
    batches, devices, modes = {}, {}, {}
    for name, model in models.items():
        device = _device_of(model)
        batches[name] = _batches(rows[name], batch_size, pad_id, device)
        vocab = vocab_size_of(model)
        if vocab is not None:
            for ids, _ in batches[name]:
                check_token_ids(f"inputs for models[{name!r}]", ids, vocab, f"models[{name!r}]")
        devices[name] = device
        modes[name] = model.training
    runs = {name: _runner(model, batches[name], devices[name]) for name, model in models.items()}
    device_names = sorted({str(d) for d in devices.values()})
    try:
        for model in models.values():
            model.eval()
        with torch.inference_mode():
            for name, model in models.items():  # one untimed call each: outputs are logits
                ids, mask = batches[name][0]
                _check_output(name, model(input_ids=ids, attention_mask=mask))
        return time_interleaved(
            runs,
            n,
            warmup=warmup,
            threads=threads,
            batch_size=batch_size,
            min_inputs=min_inputs,
            device=", ".join(device_names),
            clock=clock,
        )
    finally:
        for name, model in models.items():
            model.train(modes[name])


def _timed_batches(
    rows: Mapping[str, list[list[int]]], per_model: bool, batch_size: int, min_inputs: int
) -> int:
    """How many batches of `batch_size` are timed; ValueError when that is below `min_inputs`, or
    when the timed rows hold fewer than `min_inputs` different inputs."""
    count = len(next(iter(rows.values())))
    n = count // batch_size
    if n < min_inputs:
        raise ValueError(
            f"inputs holds {count} examples, {n} batch(es) of {batch_size}, but a latency "
            f"measurement needs at least {min_inputs} timed passes on different inputs "
            f"({min_inputs * batch_size} examples): "
            f"pass more test examples, or min_inputs={max(n, 1)} for a quick run (n is recorded)"
        )
    for name, model_rows in rows.items():
        label = f"inputs[{name!r}]" if per_model else "inputs"
        distinct = len({tuple(r) for r in model_rows[: n * batch_size]})
        if distinct < min(min_inputs, n * batch_size):
            raise ValueError(
                f"{label} holds only {distinct} different inputs among the {n * batch_size} timed: "
                f"latency needs at least {min_inputs} different real inputs, not repeats"
            )
    return n


def _inputs_per_model(
    models: Mapping[str, nn.Module], inputs: object
) -> dict[str, list[list[int]]]:
    """Token-id lists per model: one shared list, or one list per model of the same examples."""
    if isinstance(inputs, Mapping):
        missing = [name for name in models if name not in inputs]
        if missing:
            raise ValueError(
                f"inputs has no token ids for models {missing}: give one list per model "
                "(the same examples, each model's tokenization) or one shared list"
            )
        rows = {name: check_token_lists(f"inputs[{name!r}]", inputs[name]) for name in models}
    else:
        shared = check_token_lists("inputs", inputs)
        rows = {name: shared for name in models}
    lengths = {name: len(r) for name, r in rows.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"inputs per model must hold the same examples, so the same count (got {lengths})"
        )
    for name, per_model in rows.items():
        for i, r in enumerate(per_model):
            if not r:
                raise ValueError(
                    f"inputs for models[{name!r}] holds an empty sequence at {i}: "
                    "latency needs real example inputs"
                )
    return rows


def _runner(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> Callable[[int], object]:
    """A function running batch i through the model (waiting for the GPU to finish)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def run(i: int) -> object:
        ids, mask = batches[i]
        out = model(input_ids=ids, attention_mask=mask)
        if sync is not None:
            sync(device)
        return out

    return run


def speedup(baseline: LatencyStats, model: LatencyStats) -> float:
    """How many times faster `model` is than `baseline`: the ratio of their medians."""
    for label, stats in (("baseline", baseline), ("model", model)):
        if not isinstance(stats, LatencyStats):
            raise TypeError(
                f"{label} must be a LatencyStats from measure_latency (got {type(stats).__name__})"
            )
        if not stats.median_ms > 0:
            raise ValueError(
                f"{label} ({stats.name}) has median {stats.median_ms} ms: "
                "a speed-up needs times > 0"
            )
    if (baseline.threads, baseline.batch_size) != (model.threads, model.batch_size):
        raise ValueError(
            f"baseline ({baseline.name}) and model ({model.name}) were timed with different "
            f"threads/batch size ({baseline.threads}/{baseline.batch_size} vs "
            f"{model.threads}/{model.batch_size}): measure them together with measure_latency"
        )
    return baseline.median_ms / model.median_ms


def speedup_text(baseline: LatencyStats, model: LatencyStats) -> str:
    """The speed-up to two significant figures, e.g. '46x' (through kdhelpers.numfmt.ratio)."""
    return ratio(speedup(baseline, model))
