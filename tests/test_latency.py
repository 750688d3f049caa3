"""kdhelpers.latency with tiny models; plumbing checked by a fake clock, no speed asserts."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from kdhelpers.latency import (
    MIN_INPUTS,
    LatencyStats,
    measure_latency,
    speedup,
    speedup_text,
    time_interleaved,
)


class Tiny(nn.Module):
    """Embedding + mean pool + Linear, the shape of the course's small students."""

    def __init__(self, vocab: int = 50, classes: int = 2, wrap: bool = False) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, 8)
        self.head = nn.Linear(8, classes)
        self.wrap = wrap

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embedding(input_ids) * mask).sum(1) / mask.sum(1)
        logits = self.head(pooled)
        return SimpleNamespace(logits=logits) if self.wrap else logits


class Recorder(nn.Module):
    """Logs (name, first token, batch rows, threads, grad enabled, training) at every call."""

    def __init__(self, name: str, log: list[tuple]) -> None:
        super().__init__()
        self.name, self.log = name, log
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.log.append(
            (
                self.name,
                int(input_ids[0, 0]),
                input_ids.shape[0],
                torch.get_num_threads(),
                torch.is_grad_enabled(),
                self.training,
                torch.is_inference_mode_enabled(),
            )
        )
        return torch.zeros(input_ids.shape[0], 2)


class FakeClock:
    """A nanosecond clock that only moves when a model 'works'."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now

    def work(self, ms: float) -> None:
        self.now += int(ms * 1e6)


class Worker(nn.Module):
    """Takes `ms_for(first token)` milliseconds of fake time."""

    def __init__(self, clock: FakeClock, ms_for) -> None:  # noqa: ANN001 - any function of the token
        super().__init__()
        self.clock, self.ms_for = clock, ms_for

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.clock.work(self.ms_for(int(input_ids[0, 0])))
        return torch.zeros(input_ids.shape[0], 2)


def _inputs(n: int, start: int = 1) -> list[list[int]]:
    """n different token-id lists of varying length, first token = start + i."""
    return [[start + i] + [1 + (i * 7 + j) % 40 for j in range(i % 5)] for i in range(n)]


def test_median_and_quartiles_from_a_fake_clock() -> None:
    clock = FakeClock()
    # input i (first token i + 1) takes i + 1 ms for "slow" and 0.5 ms for "fast"
    models = {"slow": Worker(clock, lambda t: float(t)), "fast": Worker(clock, lambda t: 0.5)}
    out = measure_latency(models, _inputs(9), min_inputs=9, warmup=3, clock=clock)
    slow, fast = out["slow"], out["fast"]
    ref = np.percentile(np.arange(1, 10, dtype=float), [25, 50, 75])  # 3, 5, 7
    assert (slow.q25_ms, slow.median_ms, slow.q75_ms) == tuple(ref) == (3.0, 5.0, 7.0)
    assert slow.iqr_ms == 4.0
    assert (fast.median_ms, fast.iqr_ms) == (0.5, 0.0)
    assert (slow.n, slow.threads, slow.batch_size, slow.warmup, slow.device) == (9, 1, 1, 3, "cpu")
    assert speedup(slow, fast) == 10.0
    assert speedup_text(slow, fast) == "10x"
    assert slow.examples_per_s == 200.0
    assert slow.as_dict() == {
        "name": "slow",
        "median_ms": 5.0,
        "q25_ms": 3.0,
        "q75_ms": 7.0,
        "n": 9,
        "threads": 1,
        "batch_size": 1,
        "warmup": 3,
        "device": "cpu",
    }


def test_real_sleep_gives_at_least_the_sleep_time() -> None:
    """time.sleep lasts at least its argument: only a lower bound is asserted (never flaky)."""

    class Sleeper(Tiny):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
            time.sleep(0.002)
            return super().forward(input_ids, attention_mask)

    out = measure_latency({"sleeper": Sleeper()}, _inputs(12), min_inputs=12, warmup=1)
    s = out["sleeper"]
    assert 2.0 <= s.q25_ms <= s.median_ms <= s.q75_ms
    assert s.n == 12


def test_models_are_interleaved_in_rotating_order_under_fixed_threads() -> None:
    log: list[tuple] = []
    models = {name: Recorder(name, log) for name in ("a", "b", "c")}
    models["a"].eval(), models["c"].eval()  # b stays in training mode (the nn.Module default)
    before = torch.get_num_threads()
    measure_latency(models, _inputs(5), min_inputs=5, warmup=2, threads=1)
    assert torch.get_num_threads() == before  # restored
    assert models["b"].training and not models["a"].training  # training flags restored
    check, rest = log[:3], log[3:]  # one untimed output check per model, then warm-up + timed
    assert [(r[0], r[1]) for r in check] == [("a", 1), ("b", 1), ("c", 1)]
    order = [(r[0], r[1]) for r in rest]
    warm = [("a", 1), ("b", 1), ("c", 1), ("b", 2), ("c", 2), ("a", 2)]
    timed = [
        ("a", 1),
        ("b", 1),
        ("c", 1),
        ("b", 2),
        ("c", 2),
        ("a", 2),
        ("c", 3),
        ("a", 3),
        ("b", 3),
        ("a", 4),
        ("b", 4),
        ("c", 4),
        ("b", 5),
        ("c", 5),
        ("a", 5),
    ]
    assert order == warm + timed
    assert {r[3] for r in rest} == {1}  # one thread while timing
    assert not any(r[4] for r in log) and all(r[6] for r in log)  # inference mode, no grad
    assert not any(r[5] for r in log)  # eval mode while timing


def test_threads_none_keeps_and_reports_the_current_count() -> None:
    log: list[tuple] = []
    out = measure_latency(
        {"a": Recorder("a", log)}, _inputs(4), min_inputs=4, warmup=0, threads=None
    )
    assert out["a"].threads == torch.get_num_threads() == log[-1][3]


def test_batches_of_different_inputs_and_per_model_tokenizations() -> None:
    log: list[tuple] = []
    models = {"a": Recorder("a", log), "b": Recorder("b", log)}
    inputs = {"a": _inputs(7), "b": _inputs(7, start=100)}  # same examples, other tokenizer
    out = measure_latency(models, inputs, batch_size=2, min_inputs=3, warmup=0)
    assert out["a"].n == 3 and out["a"].batch_size == 2  # 7 // 2 batches, the 7th example unused
    timed = log[2:]
    assert [(r[0], r[1], r[2]) for r in timed] == [
        ("a", 1, 2),
        ("b", 100, 2),
        ("b", 102, 2),
        ("a", 3, 2),
        ("a", 5, 2),
        ("b", 104, 2),
    ]


def test_tiny_real_models_run_with_logits_objects() -> None:
    torch.manual_seed(0)
    out = measure_latency(
        {"plain": Tiny(), "wrapped": Tiny(wrap=True)},
        _inputs(20),
        min_inputs=20,
        warmup=2,
        threads=1,
    )
    assert list(out) == ["plain", "wrapped"]
    for s in out.values():
        assert isinstance(s, LatencyStats)
        assert 0 < s.q25_ms <= s.median_ms <= s.q75_ms and s.n == 20 and s.threads == 1
    assert speedup(out["plain"], out["wrapped"]) > 0


def test_time_interleaved_with_plain_callables() -> None:
    clock = FakeClock()
    calls: list[tuple[str, int]] = []

    def make(name: str, ms: float):  # noqa: ANN202 - local factory
        def run(i: int) -> None:
            calls.append((name, i))
            clock.work(ms * (i + 1))

        return run

    out = time_interleaved(
        {"x": make("x", 1.0), "y": make("y", 2.0)}, 4, warmup=1, min_inputs=4, clock=clock
    )
    assert calls == [
        ("x", 0),
        ("y", 0),
        ("x", 0),
        ("y", 0),
        ("y", 1),
        ("x", 1),
        ("x", 2),
        ("y", 2),
        ("y", 3),
        ("x", 3),
    ]
    assert out["x"].median_ms == 2.5 and out["y"].median_ms == 5.0
    assert (out["x"].q25_ms, out["x"].q75_ms) == (1.75, 3.25)
    assert speedup_text(out["y"], out["x"]) == "2.0x"


def test_too_few_or_repeated_inputs_are_refused() -> None:
    model = {"tiny": Tiny()}
    assert MIN_INPUTS == 200
    with pytest.raises(
        ValueError, match=r"199 examples.*at least 200 timed passes.*min_inputs=199"
    ):
        measure_latency(model, _inputs(199))
    with pytest.raises(
        ValueError, match=r"at least 200 timed passes on different inputs \(400 examples\)"
    ):
        measure_latency(model, _inputs(300), batch_size=2)
    with pytest.raises(ValueError, match=r"^inputs holds only 1 different inputs"):
        measure_latency(model, [[1, 2, 3]] * 250)
    with pytest.raises(ValueError, match=r"^inputs\['tiny'\] holds only 1 different inputs"):
        measure_latency(model, {"tiny": [[1, 2, 3]] * 250})
    with pytest.raises(ValueError, match="n is 3 but .* at least 200"):
        time_interleaved({"x": lambda i: None}, 3)


def test_bad_arguments_are_named() -> None:
    tiny = Tiny(vocab=10)
    with pytest.raises(ValueError, match="models must be a non-empty mapping"):
        measure_latency({}, _inputs(3), min_inputs=3)
    with pytest.raises(TypeError, match=r"models\['f'\] must be a torch.nn.Module"):
        measure_latency({"f": lambda **kw: None}, _inputs(3), min_inputs=3)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"inputs has no token ids for models \['b'\]"):
        measure_latency({"a": tiny, "b": tiny}, {"a": _inputs(3)}, min_inputs=3)
    with pytest.raises(ValueError, match="same count"):
        measure_latency({"a": tiny, "b": tiny}, {"a": _inputs(3), "b": _inputs(4)}, min_inputs=3)
    with pytest.raises(ValueError, match="empty sequence at 1"):
        measure_latency({"a": tiny}, [[1], [], [2]], min_inputs=1)
    with pytest.raises(ValueError, match=r"vocabulary of 10"):
        measure_latency({"a": tiny}, [[1], [2], [30]], min_inputs=3)
    with pytest.raises(ValueError, match="threads"):
        measure_latency({"a": tiny}, [[1], [2], [3]], min_inputs=3, threads=0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        measure_latency({"a": tiny}, [[1], [2], [3]], min_inputs=3, batch_size=1.0)  # type: ignore[arg-type]

    class Bad(Tiny):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
            return {"logits": super().forward(input_ids, attention_mask)}

    bad = Bad()
    bad.train()
    with pytest.raises(TypeError, match=r"models\['bad'\] returned dict, not logits"):
        measure_latency({"bad": bad}, _inputs(3), min_inputs=3)
    assert bad.training  # restored even on error


def test_speedup_refuses_mixed_methods() -> None:
    a = LatencyStats("a", 4.0, 3.0, 5.0, 200, 1, 1, 10)
    b = LatencyStats("b", 2.0, 1.5, 2.5, 200, 4, 1, 10)
    with pytest.raises(ValueError, match="different threads/batch size"):
        speedup(a, b)
    with pytest.raises(ValueError, match="median 0.0 ms"):
        speedup(a, LatencyStats("z", 0.0, 0.0, 0.0, 200, 1, 1, 10))
    with pytest.raises(TypeError, match="LatencyStats"):
        speedup(a, {"median_ms": 2.0})  # type: ignore[arg-type]
    assert speedup_text(a, LatencyStats("c", 4.0 / 46.1, 0.08, 0.09, 200, 1, 1, 10)) == "46x"


def test_default_method_on_200_inputs() -> None:
    torch.manual_seed(0)
    out = measure_latency({"a": Tiny(vocab=300), "b": Tiny(vocab=300)}, _inputs(200))
    assert [(s.n, s.threads, s.batch_size, s.warmup) for s in out.values()] == [(200, 1, 1, 10)] * 2
