"""Distillation on one or several processes through Hugging Face Accelerate (DDP underneath).

Accelerate does the engine's work: starting from `torchrun` / `accelerate launch`, process groups,
wrapping the model in DDP, mixed precision and gradient synchronisation. This module adds only
what distillation needs on top:

- the teacher's logits are computed once, by the main process, and read from the on-disk cache
  by the others (`shared_teacher_logits`);
- every rank sees the same seeded order of examples, and each global batch is split across ranks
  by Accelerate's data loader (`split_batches=True`), so 1 and N processes see the same batches;
- the loss of an optimiser step divides summed per-example losses by counts taken over the whole
  step (all micro-batches of gradient accumulation, all ranks: labelled rows for the CE term, all
  rows for the KD term), so accumulation and sharding give exactly the gradient of one big batch (`step_loss`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from kdhelpers.batching import TextExamples, pad_collate
from kdhelpers.device import pin_memory_default, seeded
from kdhelpers.losses import kd_kl
from kdhelpers.progress import progress_bar
from kdhelpers.pseudo import CachedLogits, cache_logits
from kdhelpers.train import OptimiserStep, adamw_with_warmup, forward_logits
from kdhelpers.validate import (
    check_int,
    check_number,
    check_optimiser_settings,
    check_seed,
    check_temperature,
)


@dataclass(frozen=True)
class DistillConfig:
    """Settings of a distillation run; `batch_size` counts examples per optimiser step over all ranks."""

    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64
    grad_accum: int = 1
    alpha: float = 0.0
    temperature: float = 4.0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    max_grad_norm: float | None = 1.0
    seed: int = 0
    normalisation: str = (
        "step"  # "step" (correct) or "micro-batch" (the naive mean of means, for comparison)
    )

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int (got {value!r})")
        # checked, not converted: the config's values (and its asdict record) stay as given
        check_number("alpha", self.alpha, 0.0, 1.0)
        check_temperature("temperature", self.temperature)
        check_seed("seed", self.seed)
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum})"
            )
        check_optimiser_settings(self)
        if self.normalisation not in ("step", "micro-batch"):
            raise ValueError(
                f"normalisation must be 'step' or 'micro-batch' (got {self.normalisation!r})"
            )

    @property
    def micro_batch_size(self) -> int:
        """Examples per forward pass over all ranks (batch_size / grad_accum)."""
        return self.batch_size // self.grad_accum


def make_accelerator(cpu: bool = False, mixed_precision: str | None = None) -> Any:
    """An Accelerator whose data loaders split each global batch across the processes."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    if mixed_precision not in (None, "no", "fp16", "bf16"):
        raise ValueError(
            f"mixed_precision must be None, 'no', 'fp16' or 'bf16' (got {mixed_precision!r})"
        )
    config = DataLoaderConfiguration(split_batches=True, even_batches=False)
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision, dataloader_config=config)


def shared_teacher_logits(
    accelerator: Any,
    teacher: nn.Module,
    ids: Sequence[str],
    input_ids: Sequence[Sequence[int]],
    cache_dir: str | Path,
    name: str = "teacher",
    batch_size: int = 128,
) -> CachedLogits:
    """Teacher logits computed once by the main process; the other ranks wait, then read its cache file."""
    with accelerator.main_process_first():
        return cache_logits(
            teacher,
            ids,
            input_ids,
            cache_dir,
            name=name,
            batch_size=batch_size,
            device=accelerator.device,
            progress=accelerator.is_main_process,
        )


def kd_loss_parts(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
) -> dict[str, torch.Tensor]:
    """Summed (not averaged) loss terms of a micro-batch and their counts: CE over labelled rows, T^2 * KL over all."""
    kd_sum = kd_kl(logits, teacher_logits, temperature=temperature) * logits.shape[0]
    labelled = labels >= 0
    ce_sum = (
        F.cross_entropy(logits.float(), labels, ignore_index=-1, reduction="sum")
        if labelled.any()
        else logits.float().sum() * 0.0
    )
    return {
        "ce_sum": ce_sum,
        "n_labelled": labelled.sum(),
        "kd_sum": kd_sum,
        "n": torch.tensor(logits.shape[0], device=logits.device),
    }


def step_loss(
    parts: Mapping[str, torch.Tensor], n_labelled: int, n: int, alpha: float, world_size: int = 1
) -> torch.Tensor:
    """One rank's micro-batch share of the step loss: alpha * CE / labelled rows + (1 - alpha) * KD / rows.

    `n_labelled` and `n` count the whole optimiser step (every micro-batch, every rank). DDP averages
    gradients over ranks, so the share is multiplied by `world_size`; summed over micro-batches and
    averaged over ranks, the gradients are then exactly those of one big batch.
    """
    if n < 1 or world_size < 1:
        raise ValueError(f"need n >= 1 and world_size >= 1 (got n={n}, world_size={world_size})")
    loss = (1.0 - alpha) * parts["kd_sum"] / n
    if alpha > 0.0 and n_labelled > 0:
        loss = loss + alpha * parts["ce_sum"] / n_labelled
    return loss * world_size


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The same seeded permutation of range(n) on every rank, different for each epoch."""
    n, seed, epoch = check_int("n", n, 0), check_seed("seed", seed), check_int("epoch", epoch, 0)
    # torch seeds are 64-bit: the combined seed wraps (unchanged below 2**64, i.e. for every
    # seed < 1.8e14), so large seeds work instead of overflowing
    generator = torch.Generator().manual_seed((seed * 100_003 + epoch) % 2**64)
    return torch.randperm(n, generator=generator).tolist()


def _windows(loader: Any, size: int) -> Any:
    """Group an iterable of micro-batches into lists of `size` (the last one may be shorter)."""
    window: list[Any] = []
    for batch in loader:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def distributed_step(
    accelerator: Any,
    model: nn.Module,
    window: list[dict[str, Any]],
    step: OptimiserStep,
    config: DistillConfig,
) -> float:
    """One optimiser step over the micro-batches in `window` on every rank: each micro-batch's KD loss
    normalised over the whole step (config.normalisation 'step': by the step's labelled and total
    examples on all ranks; 'micro-batch': by its own, the naive mean of means), gradients
    synchronised on the last micro-batch only.
    Returns the step's mean loss over all ranks."""
    world = accelerator.num_processes
    # count the step's examples first (from the labels, before any forward pass), over all ranks
    local = torch.tensor(
        [
            float(sum(int((b["labels"] >= 0).sum()) for b in window)),
            float(sum(len(b["labels"]) for b in window)),
        ],
        device=accelerator.device,
    )
    n_labelled, n = (int(x) for x in accelerator.reduce(local, "sum").tolist())
    total = torch.zeros((), device=accelerator.device)
    for i, batch in enumerate(window):
        last = i == len(window) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            parts = kd_loss_parts(
                forward_logits(model, batch).float(),
                batch["teacher_logits"],
                batch["labels"],
                config.temperature,
            )
            if config.normalisation == "step":
                loss = step_loss(parts, n_labelled, n, config.alpha, world)
            else:  # 'micro-batch': its own mean, divided by the micro-batches of the step
                own = step_loss(parts, int(parts["n_labelled"]), int(parts["n"]), config.alpha)
                loss = own / len(window)
            step.backward(loss)
        total += loss.detach() / world
    step.update()
    step.zero_grad()
    return float(accelerator.reduce(total, "sum").item())


def _epoch_loader(
    accelerator: Any,
    examples: TextExamples,
    config: DistillConfig,
    epoch: int,
    n_used: int,
    pad_id: int,
) -> Any:
    """This epoch's seeded order of the first `n_used` examples (whole micro-batches only, so that every
    rank gets micro_batch_size / world examples per pass) as a loader prepared by Accelerate."""
    order = Subset(examples, epoch_order(len(examples), config.seed, epoch)[:n_used])
    return accelerator.prepare_data_loader(
        DataLoader(
            order,
            batch_size=config.micro_batch_size,
            shuffle=False,
            collate_fn=lambda f: pad_collate(f, pad_id),
            pin_memory=pin_memory_default(accelerator.device),
        )
    )


def _examples_used(examples: TextExamples, config: DistillConfig, world: int) -> int:
    """How many examples fill whole micro-batches, after checking distill_accelerate's arguments."""
    if examples.teacher_logits is None:
        raise ValueError(
            "examples need teacher_logits: build TextExamples(..., teacher_logits=...)"
        )
    if not isinstance(config, DistillConfig):
        raise TypeError(f"config must be a DistillConfig (got {type(config).__name__})")
    if config.micro_batch_size % world:
        raise ValueError(
            f"batch_size / grad_accum = {config.micro_batch_size} must be divisible by the "
            f"{world} processes"
        )
    n_used = len(examples) // config.micro_batch_size * config.micro_batch_size
    if n_used == 0:
        raise ValueError(
            f"{len(examples)} examples do not fill one micro-batch of {config.micro_batch_size}"
        )
    return n_used


def distill_accelerate(
    accelerator: Any,
    model: nn.Module,
    examples: TextExamples,
    config: DistillConfig,
    pad_id: int = 0,
) -> dict[str, Any]:
    """Distil `model` on `examples` (with teacher_logits) under Accelerate; returns the per-step loss history."""
    world = accelerator.num_processes
    n_used = _examples_used(examples, config, world)
    steps_per_epoch = math.ceil(n_used // config.micro_batch_size / config.grad_accum)
    with seeded(config.seed):  # dropout masks; the caller's RNG is given back afterwards
        optimizer, scheduler = adamw_with_warmup(
            model.parameters(),
            config.lr,
            config.weight_decay,
            config.epochs * steps_per_epoch,
            config.warmup_ratio,
        )
        model, optimizer = accelerator.prepare(model, optimizer)
        # Accelerate does the backward (and any loss scaling) and the clipping; the step is the shared one
        step = OptimiserStep(
            optimizer,
            scheduler,
            tuple(model.parameters()),
            config.max_grad_norm or None,
            backward_fn=accelerator.backward,
            clip_fn=accelerator.clip_grad_norm_,
        )
        history: dict[str, Any] = {"step_loss": [], "epoch_loss": []}
        history.update(world_size=world, config=asdict(config))
        for epoch in range(config.epochs):
            model.train()
            loader = _epoch_loader(accelerator, examples, config, epoch, n_used, pad_id)
            epoch_losses = []
            for window in progress_bar(
                _windows(loader, config.grad_accum),
                f"epoch {epoch + 1}/{config.epochs}",
                enabled=accelerator.is_main_process,
            ):
                mean_loss = distributed_step(accelerator, model, window, step, config)
                history["step_loss"].append(mean_loss)
                epoch_losses.append(mean_loss)
            history["epoch_loss"].append(sum(epoch_losses) / len(epoch_losses))
    return history


def unwrapped_state(accelerator: Any, model: nn.Module) -> Mapping[str, torch.Tensor]:
    """The plain model's weights on the CPU (no DDP 'module.' prefixes)."""
    return {
        k: v.detach().cpu().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()
    }


def max_abs_difference(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """The largest absolute difference between two state dicts with the same keys and shapes."""
    if set(a) != set(b):
        raise ValueError(f"state dicts differ in keys: {sorted(set(a) ^ set(b))[:5]}")
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)
