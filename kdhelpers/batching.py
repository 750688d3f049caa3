"""From texts to padded batches: tokenizing, the example dataset, collation and loaders."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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


class LengthBucketSampler(Sampler[list[int]]):
    """Shuffled batches of similar length: each epoch the examples are shuffled, cut into pools of
    `pool_batches` batches, each pool is sorted by length and batched, and the batches are shuffled.

    Dynamic padding then pads each batch to a length close to its own examples' (the idea of Hugging
    Face's `group_by_length`): far less compute on padding, while every batch still mixes examples
    from across the data set. A new order every epoch, drawn from a local generator seeded with `seed`.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, seed: int = 0, pool_batches: int = 50
    ) -> None:
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        if self.lengths.numel() == 0:
            raise ValueError("lengths is empty: nothing to batch")
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.pool_batches = check_int("pool_batches", pool_batches, 1)
        self.generator = torch.Generator().manual_seed(check_seed("seed", seed))

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator)
        pool = self.batch_size * self.pool_batches
        batches = []
        for start in range(0, len(order), pool):
            chunk = order[start : start + pool]
            # stable sort: equal lengths keep their shuffled order
            chunk = chunk[torch.sort(self.lengths[chunk], stable=True).indices]
            batches += [
                chunk[i : i + self.batch_size].tolist()
                for i in range(0, len(chunk), self.batch_size)
            ]
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[b]


def make_loader(
    examples: TextExamples,
    batch_size: int = 32,
    shuffle: bool = False,
    device: torch.device | str = "cpu",
    pad_id: int = 0,
    seed: int = 0,
    bucket: bool = False,
) -> DataLoader:
    """A DataLoader with dynamic padding, seeded shuffling (length-bucketed when `bucket`) and pinned
    memory on CUDA."""
    batch_size = check_int("batch_size", batch_size, 1)
    seed = check_seed("seed", seed)
    if not isinstance(bucket, bool):
        raise TypeError(f"bucket must be True or False (got {bucket!r})")
    if bucket and not shuffle:
        raise ValueError(
            "bucket=True groups shuffled examples by length: use it with shuffle=True "
            "(an evaluation loader keeps the examples' order)"
        )
    collate = lambda f: pad_collate(f, pad_id)  # noqa: E731
    if bucket:
        lengths = [len(ids) for ids in examples.input_ids]
        return DataLoader(
            examples,
            batch_sampler=LengthBucketSampler(lengths, batch_size, seed),
            collate_fn=collate,
            pin_memory=pin_memory_default(device),
        )
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        examples,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=collate,
        pin_memory=pin_memory_default(device),
    )
