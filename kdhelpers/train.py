"""One training loop for teachers and students, with the loss as a parameter."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdhelpers.checkpoints import save_checkpoint
from kdhelpers.device import autocast, get_device, grad_scaler, pin_memory_default, to_device
from kdhelpers.losses import distillation_loss
from kdhelpers.models import logits_of
from kdhelpers.progress import progress_bar  # noqa: F401  (re-exported: chapters import it from here)
from kdhelpers.validate import (
    check_class_labels,
    check_float_tensor,
    check_int,
    check_number,
    check_optional_positive,
    check_seed,
    check_texts,
    check_token_ids,
    check_token_lists,
    vocab_size_of,
)

LossFn = Callable[[torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]


# ---------------------------------------------------------------- data to batches

def tokenize_texts(texts: Sequence[str], tokenizer: Any, max_length: int = 128) -> list[list[int]]:
    """Token ids per text (with special tokens, truncated to `max_length`, unpadded)."""
    texts = check_texts("texts", texts)
    check_int("max_length", max_length, 2)
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def _example_labels(labels: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Integer class ids (-1 = unlabelled) as an int64 CPU tensor; floats are refused, not truncated."""
    if isinstance(labels, torch.Tensor):
        tensor = labels.detach()
    else:
        values = list(labels)
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
        if bad:
            raise TypeError(f"labels must be integer class ids (-1 = unlabelled); found {bad[0]!r} "
                            f"({type(bad[0]).__name__}): map or round them to ints yourself")
        tensor = torch.tensor([int(v) for v in values], dtype=torch.long)
    if tensor.is_floating_point() or tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"labels must be integer class ids (-1 = unlabelled) (got dtype {tensor.dtype}): "
                        "map or round them to ints yourself")
    tensor = tensor.cpu().long()
    if tensor.numel() and int(tensor.min()) < -1:
        raise ValueError(f"labels must be class ids >= 0, or -1 for unlabelled examples (got {int(tensor.min())})")
    return tensor


class TextExamples(Dataset):
    """Tokenized examples with optional labels (-1 = unlabelled) and teacher logits, kept together."""

    def __init__(
        self,
        input_ids: Sequence[Sequence[int]],
        labels: Sequence[int] | torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
    ) -> None:
        n = len(input_ids)
        if n == 0:
            raise ValueError("input_ids is empty: a data set needs at least one example")
        self.input_ids = check_token_lists("input_ids", input_ids)
        self.labels = torch.full((n,), -1, dtype=torch.long) if labels is None else _example_labels(labels)
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have {n} entries (got shape {tuple(self.labels.shape)})")
        if teacher_logits is not None:
            if not isinstance(teacher_logits, torch.Tensor) or teacher_logits.dim() != 2 or len(teacher_logits) != n:
                raise ValueError(f"teacher_logits must be a tensor of shape ({n}, classes)")
            check_float_tensor("teacher_logits", teacher_logits)
            teacher_logits = teacher_logits.detach().float().cpu()
        self.teacher_logits = teacher_logits

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"input_ids": self.input_ids[i], "labels": self.labels[i], "index": i}
        if self.teacher_logits is not None:
            item["teacher_logits"] = self.teacher_logits[i]
        return item


def pad_collate(features: Sequence[Mapping[str, Any]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a list of examples to the longest one (dynamic padding) and stack their fields."""
    longest = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), longest), dtype=torch.long)
    for row, f in enumerate(features):
        ids[row, : len(f["input_ids"])] = torch.as_tensor(f["input_ids"], dtype=torch.long)
        mask[row, : len(f["input_ids"])] = 1
    batch = {"input_ids": ids, "attention_mask": mask,
             "labels": torch.stack([torch.as_tensor(f["labels"]) for f in features]),
             "index": torch.as_tensor([f["index"] for f in features])}
    if "teacher_logits" in features[0]:
        batch["teacher_logits"] = torch.stack([f["teacher_logits"] for f in features])
    return batch


def make_loader(
    examples: TextExamples,
    batch_size: int = 32,
    shuffle: bool = False,
    device: torch.device | str = "cpu",
    pad_id: int = 0,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader with dynamic padding, seeded shuffling and pinned memory on CUDA."""
    batch_size = check_int("batch_size", batch_size, 1)
    seed = check_seed("seed", seed)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(examples, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=lambda f: pad_collate(f, pad_id), pin_memory=pin_memory_default(device))


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
