"""From texts to padded batches: tokenizing, the example dataset, collation and loaders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kdhelpers.device import pin_memory_default
from kdhelpers.validate import (
    check_float_tensor,
    check_int,
    check_seed,
    check_texts,
    check_token_lists,
)


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
            raise TypeError(
                f"labels must be integer class ids (-1 = unlabelled); found {bad[0]!r} "
                f"({type(bad[0]).__name__}): map or round them to ints yourself"
            )
        tensor = torch.tensor([int(v) for v in values], dtype=torch.long)
    if tensor.is_floating_point() or tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(
            f"labels must be integer class ids (-1 = unlabelled) (got dtype {tensor.dtype}): "
            "map or round them to ints yourself"
        )
    tensor = tensor.cpu().long()
    if tensor.numel() and int(tensor.min()) < -1:
        raise ValueError(
            f"labels must be class ids >= 0, or -1 for unlabelled examples (got {int(tensor.min())})"
        )
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
        self.labels = (
            torch.full((n,), -1, dtype=torch.long) if labels is None else _example_labels(labels)
        )
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have {n} entries (got shape {tuple(self.labels.shape)})")
        if teacher_logits is not None:
            if (
                not isinstance(teacher_logits, torch.Tensor)
                or teacher_logits.dim() != 2
                or len(teacher_logits) != n
            ):
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
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.stack([torch.as_tensor(f["labels"]) for f in features]),
        "index": torch.as_tensor([f["index"] for f in features]),
    }
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
    return DataLoader(
        examples,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=lambda f: pad_collate(f, pad_id),
        pin_memory=pin_memory_default(device),
    )
