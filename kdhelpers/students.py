"""The text chapters' students: build one by kind, train it with the course loop (StudentConfig),
read chapter 05's alpha and T, and choose settings on validation."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdhelpers.batching import TextExamples, make_loader
from kdhelpers.choices import choose_on_validation
from kdhelpers.device import seeded
from kdhelpers.models import (
    BagOfEmbeddingsStudent,
    BiLSTMStudent,
    CNNStudent,
    init_embeddings_from_teacher,
    tiny_bert_student,
)
from kdhelpers.results import load_results
from kdhelpers.teacher import TextSplit
from kdhelpers.train import TrainConfig, fit
from kdhelpers.validate import check_int, check_number


def chosen_alpha_temperature(
    profile: str, default: tuple[float, float] = (0.1, 4.0)
) -> tuple[float, float, bool]:
    """alpha and T that chapter 05's sweep chose for `profile` (from its results file), else `default`; and which."""

    record = load_results("05_distillation", profile)
    if record:
        return float(record["metrics"]["alpha"]), float(record["metrics"]["temperature"]), True
    return float(default[0]), float(default[1]), False


STUDENT_KINDS = ("bag", "cnn", "bilstm", "tiny-bert")


def make_student(
    kind: str,
    vocab_size: int,
    teacher: nn.Module | torch.Tensor | None = None,
    seed: int = 0,
    **sizes: Any,
) -> nn.Module:
    """A fresh student ('bag', 'cnn', 'bilstm', 'tiny-bert') built from `seed`, leaving the caller's RNG
    alone; all but tiny-bert copy word embeddings from `teacher` (a model or a projected table) when given."""

    if kind not in STUDENT_KINDS:
        raise ValueError(f"kind must be one of {STUDENT_KINDS} (got {kind!r})")
    builders = {
        "bag": BagOfEmbeddingsStudent,
        "cnn": CNNStudent,
        "bilstm": BiLSTMStudent,
        "tiny-bert": tiny_bert_student,
    }
    with seeded(seed):  # the caller's RNG is given back afterwards
        model = builders[kind](vocab_size, **sizes)
    if teacher is not None and kind != "tiny-bert":
        init_embeddings_from_teacher(model, teacher)
    return model


@dataclass(frozen=True, kw_only=True)
class StudentConfig:
    """How `train_student` trains a text student: epochs, AdamW learning rate, batch size, early-stopping
    patience, the seed of its batch order and dropout, and length-bucketed batches."""

    epochs: int = 8
    lr: float = 2e-3
    batch_size: int = 64
    patience: int | None = 2
    seed: int = 0
    bucket: bool = True

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size, 1)
        if not isinstance(self.bucket, bool):
            raise TypeError(f"bucket must be True or False (got {self.bucket!r})")
        self.train_config()  # checks epochs, lr, patience and seed now, naming the bad one

    def replace(self, **changes: Any) -> StudentConfig:
        """A copy with `changes` applied (checked again)."""
        return dataclasses.replace(self, **changes)

    def train_config(self) -> TrainConfig:
        """The TrainConfig of `fit` (5% warm-up, AdamW's default weight decay, clipping at 1)."""
        return TrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            patience=self.patience,
            warmup_ratio=0.05,
            seed=self.seed,
        )


def train_student(
    model: nn.Module,
    train: TextExamples,
    validation: TextSplit,
    loss_fn: Any,
    device: torch.device | str,
    config: StudentConfig = StudentConfig(),
    desc: str = "student",
) -> dict[str, Any]:
    """Train a student with the course loop (early stopping on validation accuracy); returns its history."""
    if not isinstance(config, StudentConfig):
        raise TypeError(
            f"config must be a StudentConfig (got {type(config).__name__}): "
            "train_student(..., config=StudentConfig(epochs=8, lr=2e-3, seed=0))"
        )
    loader = make_loader(
        train,
        config.batch_size,
        shuffle=True,
        device=device,
        seed=config.seed,
        bucket=config.bucket,
    )
    val = make_loader(validation.examples(), 256, device=device)
    return fit(model, loader, val, loss_fn, config.train_config(), device=device, desc=desc)


def best_on_validation(histories: Mapping[Any, Mapping[str, Any]]) -> Any:
    """The key (a setting tried) whose training history has the highest best validation accuracy;
    the first such key on ties, so list the default first."""
    if not histories:
        raise ValueError("histories is empty: train at least one setting")
    for key, hist in histories.items():
        if hist.get("best_val_accuracy") is None:
            raise ValueError(
                f"the history of {key!r} has no best_val_accuracy (trained without validation?)"
            )
    return choose_on_validation({k: h["best_val_accuracy"] for k, h in histories.items()}).chosen


def widen_grid(
    tried: Sequence[float], best: float, low: float, high: float, factor: float = 10.0
) -> float | None:
    """The next value to try when the best of a multiplicative grid sits at its edge: best * factor
    at the top edge, best / factor at the bottom, while within [low, high]; None when the best is
    inside the grid or the next value would leave the range."""
    values = sorted(check_number("tried[...]", v, 0.0, strict_min=True) for v in tried)
    if not values or best not in values:
        raise ValueError(f"best ({best!r}) must be one of the values tried {values}")
    check_number("factor", factor, 1.0, strict_min=True)
    if len(values) > 1 and values[0] < best < values[-1]:
        return None
    candidates = []
    if best == values[-1]:
        candidates.append(best * factor)
    if best == values[0]:
        candidates.append(best / factor)
    for value in candidates:
        if low <= value <= high and value not in values:
            return value
    return None
