"""One training loop for teachers and students, with the loss as a parameter."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from kdhelpers.checkpoints import save_checkpoint
from kdhelpers.device import autocast, get_device, grad_scaler, to_device
from kdhelpers.losses import distillation_loss
from kdhelpers.models import logits_of
from kdhelpers.progress import progress_bar
from kdhelpers.validate import (
    check_class_labels,
    check_float_tensor,
    check_int,
    check_number,
    check_optional_positive,
    check_token_ids,
    vocab_size_of,
)

LossFn = Callable[[torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]





# ---------------------------------------------------------------- losses for the loop

def _batch_labels(logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The batch's labels checked against the logits: int64 class ids in [0, classes - 1] or -1, on the logits' device."""
    check_float_tensor("logits", logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (batch, classes) (got {tuple(logits.shape)})")
    return check_class_labels('batch["labels"]', batch["labels"], logits.shape[-1], allow_unlabelled=True,
                              shape=(logits.shape[0],), ref=logits)


def cross_entropy_loss(logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Plain cross-entropy on the batch's labels (rows labelled -1 are ignored), in float32."""
    labels = _batch_labels(logits, batch)
    if not (labels >= 0).any():
        raise ValueError("this batch has no labelled example (labels are all -1)")
    return F.cross_entropy(logits.float(), labels, ignore_index=-1)


def make_kd_loss(alpha: float = 0.5, temperature: float = 2.0) -> LossFn:
    """The distillation loss for the loop: KD on every row, CE on the labelled rows (label >= 0)."""
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
        ce = F.cross_entropy(logits[labelled].float(), labels[labelled])
        return alpha * ce + (1.0 - alpha) * kd

    distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long),
                      alpha=alpha, temperature=temperature)  # validate alpha and T now, not mid-run
    return loss


# ---------------------------------------------------------------- the loop

def forward_logits(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Run a classifier on a padded batch and return its logits (token ids checked against its vocabulary)."""
    vocab = vocab_size_of(model)
    if vocab is not None:
        check_token_ids("input_ids", batch["input_ids"], vocab, type(model).__name__)
    return logits_of(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str | None = None) -> dict[str, float]:
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


def warmup_linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_ratio` of the steps, then linear decay to zero."""
    total_steps = check_int("total_steps", total_steps, 1)
    warmup_ratio = check_number("warmup_ratio", warmup_ratio, 0.0, 1.0)
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_finite_parameters(model: nn.Module, when: str) -> None:
    """Raise FloatingPointError when a parameter of `model` holds NaN or Inf (after training `when`)."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p.detach()).all()):
            raise FloatingPointError(f"parameter {name} became NaN or Inf after {when}: "
                                     "lower lr, or check max_grad_norm and the inputs")


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    loss_fn: LossFn = cross_entropy_loss,
    *,
    epochs: int = 3,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.1,
    max_grad_norm: float | None = 1.0,
    patience: int | None = 2,
    device: torch.device | str | None = None,
    checkpoint: str | Path | None = None,
    use_amp: bool = True,
    desc: str = "train",
) -> dict[str, Any]:
    """Train with AdamW, warm-up, clipping, AMP on CUDA and early stopping; restores the best epoch."""
    epochs = check_int("epochs", epochs, 1)
    lr = check_number("lr", lr, 0.0, strict_min=True)
    weight_decay = check_number("weight_decay", weight_decay, 0.0)
    check_number("warmup_ratio", warmup_ratio, 0.0, 1.0)
    max_grad_norm = check_optional_positive("max_grad_norm", max_grad_norm)
    if patience is not None:
        patience = check_int("patience", patience, 0)
    if len(train_loader) == 0:
        raise ValueError("train_loader is empty")
    device = get_device() if device is None else torch.device(device)
    model.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay)
    scheduler = warmup_linear_schedule(optimizer, epochs * len(train_loader), warmup_ratio)
    scaler = grad_scaler(device) if use_amp else None
    history: dict[str, Any] = {"train_loss": [], "val_accuracy": [], "val_loss": [], "epoch_seconds": []}
    best_acc, best_state, best_epoch, bad_epochs = -1.0, None, 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        start, losses = time.perf_counter(), []
        for batch in progress_bar(train_loader, f"{desc} {epoch}/{epochs}"):
            batch = to_device(batch, device)
            with autocast(device, enabled=use_amp):
                logits = forward_logits(model, batch)
            loss = loss_fn(logits.float(), batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}: lower lr?")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None and scaler.is_enabled():
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if max_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            if scaler is not None and scaler.is_enabled():
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        history["epoch_seconds"].append(time.perf_counter() - start)
        history["train_loss"].append(sum(losses) / len(losses))
        check_finite_parameters(model, f"epoch {epoch}")
        if val_loader is None:
            continue
        metrics = evaluate(model, val_loader, device)
        history["val_accuracy"].append(metrics["accuracy"])
        history["val_loss"].append(metrics["loss"])
        if metrics["accuracy"] > best_acc:
            best_acc, best_epoch, bad_epochs = metrics["accuracy"], epoch, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            if checkpoint is not None:
                save_checkpoint(model, checkpoint, {"epoch": epoch, "val_accuracy": best_acc})
        else:
            bad_epochs += 1
            if patience is not None and bad_epochs > patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    history["best_epoch"] = best_epoch if val_loader is not None else epochs
    history["best_val_accuracy"] = best_acc if val_loader is not None else None
    return history
