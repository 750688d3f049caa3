"""The training step every loop shares (AdamW, warm-up, AMP, clipping, keep-best), one epoch of it, and
`fit`, the text loop."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from kdhelpers.checkpoints import save_checkpoint
from kdhelpers.device import autocast, get_device, grad_scaler, seeded, to_device
from kdhelpers.losses import distillation_loss, kd_kl
from kdhelpers.models import logits_of
from kdhelpers.progress import progress_bar
from kdhelpers.validate import (
    check_class_labels,
    check_float_tensor,
    check_int,
    check_number,
    check_optimiser_settings,
    check_optional_positive,
    check_seed,
    check_token_ids,
    vocab_size_of,
)

LossFn = Callable[[torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]


# ---------------------------------------------------------------- the shared training step


@dataclass(frozen=True)
class TrainConfig:
    """Settings of `fit`: epochs, AdamW, warm-up, clipping, early stopping and mixed precision."""

    epochs: int = 3
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    patience: int | None = 2
    use_amp: bool = True
    #: seeds the dropout masks of the run (the caller's RNG is given back); None draws from the caller's RNG
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "epochs", check_int("epochs", self.epochs, 1))
        check_optimiser_settings(self)
        if self.seed is not None:
            check_seed("seed", self.seed)
        if self.patience is not None:
            object.__setattr__(self, "patience", check_int("patience", self.patience, 0))
        if not isinstance(self.use_amp, bool):
            raise TypeError(f"use_amp must be True or False (got {self.use_amp!r})")


def warmup_linear_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_ratio` of the steps, then linear decay to zero."""
    total_steps = check_int("total_steps", total_steps, 1)
    warmup_ratio = check_number("warmup_ratio", warmup_ratio, 0.0, 1.0)
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw_with_warmup(
    parameters: Iterable[nn.Parameter],
    lr: float,
    weight_decay: float,
    total_steps: int,
    warmup_ratio: float,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable `parameters` (the fused kernel where torch has one for their device) and
    its warm-up / linear-decay schedule over `total_steps`."""
    params = [p for p in parameters if p.requires_grad]
    # one fused kernel per step instead of a Python loop over tensors: on a CPU about 10x faster for
    # the students' large embedding tables (torch >= 2.4 on CPU and CUDA); same update rule
    devices = {p.device.type for p in params}
    try:
        optimizer = torch.optim.AdamW(
            params,
            lr=lr,
            weight_decay=weight_decay,
            fused=devices <= {"cpu", "cuda"} and len(devices) == 1,
        )
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the kernel
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return optimizer, warmup_linear_schedule(optimizer, total_steps, warmup_ratio)


def _backward(loss: torch.Tensor) -> None:
    """loss.backward() (the default backward of an OptimiserStep)."""
    loss.backward()


@dataclass(frozen=True)
class OptimiserStep:
    """One optimiser step: zero the gradients, backward (scaled under AMP), unscale, clip, step, schedule.

    `backward_fn` and `clip_fn` default to `loss.backward()` and `torch.nn.utils.clip_grad_norm_`; under
    Accelerate pass `accelerator.backward` and `accelerator.clip_grad_norm_` (Accelerate then does the
    loss scaling, so `scaler` stays None). Call the step with a loss, or, with gradient accumulation,
    call `backward` per micro-batch, then `update` and `zero_grad`.
    """

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    parameters: tuple[nn.Parameter, ...] = ()
    max_grad_norm: float | None = None
    scaler: torch.amp.GradScaler | None = None
    backward_fn: Callable[[torch.Tensor], Any] = _backward
    clip_fn: Callable[[Iterable[nn.Parameter], float], Any] = nn.utils.clip_grad_norm_

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "max_grad_norm", check_optional_positive("max_grad_norm", self.max_grad_norm)
        )
        if self.max_grad_norm is not None and not self.parameters:
            raise ValueError(
                "parameters is empty but max_grad_norm is set: pass the parameters to clip"
            )

    @property
    def scaling(self) -> bool:
        """Whether gradients go through an enabled AMP GradScaler."""
        return self.scaler is not None and self.scaler.is_enabled()

    def zero_grad(self) -> None:
        """Drop the gradients (set them to None)."""
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        """Add the gradients of `loss` (scaled when AMP scaling is on)."""
        self.backward_fn(self.scaler.scale(loss) if self.scaling else loss)

    def update(self) -> None:
        """Unscale, clip to max_grad_norm, step the optimiser (through the scaler) and the schedule."""
        if self.scaling:
            self.scaler.unscale_(self.optimizer)
        if self.max_grad_norm is not None:
            self.clip_fn(self.parameters, self.max_grad_norm)
        if self.scaling:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def __call__(self, loss: torch.Tensor) -> None:
        """A whole step on one loss: zero_grad, backward, update."""
        self.zero_grad()
        self.backward(loss)
        self.update()


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of `model`'s weights on the CPU (undisturbed by further training)."""
    return copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})


class KeepBest:
    """The best validation metric seen so far, when it was seen, and a copy of the weights at that point."""

    def __init__(self, higher_is_better: bool) -> None:
        self.higher_is_better = higher_is_better
        self.value: float = -math.inf if higher_is_better else math.inf
        self.at: int | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def offer(self, model: nn.Module, value: float, at: int) -> bool:
        """Keep a copy of `model` when `value` beats the best so far (strictly); True when it did."""
        better = value > self.value if self.higher_is_better else value < self.value
        if better:
            self.value, self.at, self.state = value, at, state_copy(model)
        return better

    def restore(self, model: nn.Module) -> bool:
        """Load the best weights back into `model` (True), or leave it as it is when none was kept (False)."""
        if self.state is None:
            return False
        model.load_state_dict(self.state)
        return True


# ---------------------------------------------------------------- losses for the loop


def _batch_labels(logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The batch's labels checked against the logits: int64 class ids in [0, classes - 1] or -1, on the
    logits' device."""
    check_float_tensor("logits", logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (batch, classes) (got {tuple(logits.shape)})")
    return check_class_labels(
        'batch["labels"]',
        batch["labels"],
        logits.shape[-1],
        allow_unlabelled=True,
        shape=(logits.shape[0],),
        ref=logits,
    )


def cross_entropy_loss(logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Plain cross-entropy on the batch's labels (rows labelled -1 are ignored), in float32."""
    labels = _batch_labels(logits, batch)
    if not (labels >= 0).any():
        raise ValueError("this batch has no labelled example (labels are all -1)")
    return F.cross_entropy(logits.float(), labels, ignore_index=-1)


def labels_or_teacher_loss(logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Noisy Student's objective: CE on the gold label of labelled rows, KL to the teacher's softmax
    (T = 1) on unlabelled rows (label -1); every row weighs 1/batch, in float32."""
    labels = _batch_labels(logits, batch)
    labelled = labels >= 0
    total = F.cross_entropy(logits[labelled].float(), labels[labelled], reduction="sum")
    if not labelled.all():
        if "teacher_logits" not in batch:
            raise ValueError(
                "unlabelled rows need teacher logits: build TextExamples with teacher_logits=..."
            )
        n_soft = int((~labelled).sum())
        soft = kd_kl(logits[~labelled], batch["teacher_logits"][~labelled], temperature=1.0)
        total = total + soft * n_soft
    return total / len(labels)


#: How make_kd_loss averages the CE term of a batch in which only some rows carry a label.
CE_WEIGHTINGS = ("labelled", "batch")


def make_kd_loss(
    alpha: float = 0.5, temperature: float = 2.0, ce_weighting: str = "labelled"
) -> LossFn:
    """The distillation loss for the loop: KD on every row, CE on the labelled rows (label >= 0).

    With only some rows labelled, `ce_weighting` says how the CE term is averaged: "labelled" takes the
    mean over the labelled rows (each of n labelled rows weighs 1/n, however few they are); "batch"
    sums over them and divides by the batch size (each weighs 1/B, as if the formula were applied row
    by row with no CE on unlabelled rows). They agree when every row is labelled.
    """
    if ce_weighting not in CE_WEIGHTINGS:
        raise ValueError(f"ce_weighting must be one of {CE_WEIGHTINGS} (got {ce_weighting!r})")

    def loss(logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if "teacher_logits" not in batch:
            raise ValueError("KD needs teacher logits: build TextExamples with teacher_logits=...")
        labels, teacher = _batch_labels(logits, batch), batch["teacher_logits"]
        labelled = labels >= 0
        if alpha == 0.0 or not labelled.any():
            return distillation_loss(logits, teacher, None, alpha=0.0, temperature=temperature)
        if labelled.all():
            return distillation_loss(logits, teacher, labels, alpha=alpha, temperature=temperature)
        kd = distillation_loss(logits, teacher, None, alpha=0.0, temperature=temperature)
        ce = F.cross_entropy(logits[labelled].float(), labels[labelled], reduction="sum")
        ce = ce / (int(labelled.sum()) if ce_weighting == "labelled" else len(labels))
        return alpha * ce + (1.0 - alpha) * kd

    distillation_loss(
        torch.zeros(1, 2),
        torch.zeros(1, 2),
        torch.zeros(1, dtype=torch.long),
        alpha=alpha,
        temperature=temperature,
    )  # validate alpha and T now, not mid-run
    return loss


# ---------------------------------------------------------------- the loop


def forward_logits(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Run a classifier on a padded batch and return its logits (token ids checked against its vocabulary)."""
    vocab = vocab_size_of(model)
    if vocab is not None:
        check_token_ids("input_ids", batch["input_ids"], vocab, type(model).__name__)
    return logits_of(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device | str | None = None
) -> dict[str, float]:
    """Accuracy and cross-entropy of `model` on the labelled examples of `loader` (eval mode)."""
    device = get_device() if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device):
            logits = forward_logits(model, batch)
        labels = _batch_labels(logits.float(), batch)
        keep = labels >= 0
        logits, labels = logits[keep].float(), labels[keep]
        correct += int((logits.argmax(-1) == labels).sum())
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum")) if len(labels) else 0.0
        total += len(labels)
    model.train(was_training)
    if total == 0:
        raise ValueError("the evaluation loader holds no labelled example")
    return {"accuracy": correct / total, "loss": loss_sum / total}


def check_finite_parameters(model: nn.Module, when: str) -> None:
    """Raise FloatingPointError when a parameter of `model` holds NaN or Inf (after training `when`)."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p.detach()).all()):
            raise FloatingPointError(
                f"parameter {name} became NaN or Inf after {when}: "
                "lower lr, or check max_grad_norm and the inputs"
            )


def optimiser_step_for(
    model: nn.Module, config: TrainConfig, total_steps: int, device: torch.device
) -> OptimiserStep:
    """The OptimiserStep of `fit`: AdamW with warm-up over `total_steps`, clipping, AMP scaling."""
    optimizer, scheduler = adamw_with_warmup(
        model.parameters(), config.lr, config.weight_decay, total_steps, config.warmup_ratio
    )
    scaler = grad_scaler(device) if config.use_amp else None
    return OptimiserStep(
        optimizer, scheduler, tuple(model.parameters()), config.max_grad_norm, scaler
    )


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: LossFn,
    step: OptimiserStep,
    device: torch.device,
    *,
    use_amp: bool = True,
    desc: str = "train",
) -> float:
    """One pass over `loader`: forward (AMP on CUDA), the loss in float32, one optimiser step per
    batch; returns the mean loss."""
    model.train()
    losses = []
    for batch in progress_bar(loader, desc):
        batch = to_device(batch, device)
        with autocast(device, enabled=use_amp):
            logits = forward_logits(model, batch)
        loss = loss_fn(logits.float(), batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} in {desc}: lower lr?")
        step(loss)
        losses.append(loss.item())
    return sum(losses) / len(losses)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    loss_fn: LossFn = cross_entropy_loss,
    config: TrainConfig = TrainConfig(),
    *,
    device: torch.device | str | None = None,
    checkpoint: str | Path | None = None,
    desc: str = "train",
) -> dict[str, Any]:
    """Train with AdamW, warm-up, clipping, AMP on CUDA and early stopping; restores the best epoch."""
    if not isinstance(config, TrainConfig):
        raise TypeError(
            f"config must be a TrainConfig (got {type(config).__name__}): "
            "fit(..., config=TrainConfig(epochs=3, lr=1e-3))"
        )
    if len(train_loader) == 0:
        raise ValueError("train_loader is empty")
    device = get_device() if device is None else torch.device(device)
    model.to(device)
    step = optimiser_step_for(model, config, config.epochs * len(train_loader), device)
    history: dict[str, Any] = {
        k: [] for k in ("train_loss", "val_accuracy", "val_loss", "epoch_seconds")
    }
    best, bad_epochs, epochs = KeepBest(higher_is_better=True), 0, config.epochs
    with contextlib.nullcontext() if config.seed is None else seeded(config.seed):
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            loss = train_epoch(
                model,
                train_loader,
                loss_fn,
                step,
                device,
                use_amp=config.use_amp,
                desc=f"{desc} {epoch}/{epochs}",
            )
            history["epoch_seconds"].append(time.perf_counter() - start)
            history["train_loss"].append(loss)
            check_finite_parameters(model, f"epoch {epoch}")
            if val_loader is None:
                continue
            metrics = evaluate(model, val_loader, device)
            history["val_accuracy"].append(metrics["accuracy"])
            history["val_loss"].append(metrics["loss"])
            if best.offer(model, metrics["accuracy"], epoch):
                bad_epochs = 0
                if checkpoint is not None:
                    save_checkpoint(model, checkpoint, {"epoch": epoch, "val_accuracy": best.value})
            else:
                bad_epochs += 1
                if config.patience is not None and bad_epochs > config.patience:
                    break
    best.restore(model)
    history["best_epoch"] = best.at if val_loader is not None else epochs
    history["best_val_accuracy"] = best.value if val_loader is not None else None
    return history
