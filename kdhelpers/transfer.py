"""Chapter 05's transfer set: the labelled snippets, the unlabelled pool and noisy copies of both,
and the rows of it that chapters 05-06 train on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from kdhelpers.augment import augment_token_ids
from kdhelpers.batching import TextExamples
from kdhelpers.teacher import TextSplit
from kdhelpers.validate import check_int, check_seed


def augmented_split(
    split: TextSplit,
    n_copies: int,
    mask_id: int,
    seed: int = 0,
    special_ids: tuple[int, ...] = (101, 102),
) -> TextSplit:
    """Noisy copies of a split's token ids (masking, n-gram cuts) as a new, unlabelled split."""

    ids = augment_token_ids(
        split.input_ids, n_copies=n_copies, mask_id=mask_id, special_ids=special_ids, seed=seed
    )
    names = [f"aug{k}:{i}" for i in split.ids for k in range(n_copies)]
    texts = [t for t in split.texts for _ in range(n_copies)]
    return TextSplit(names, texts, ids, torch.full((len(ids),), -1, dtype=torch.long))


def concat_splits(*parts: TextSplit) -> TextSplit:
    """One split made of several (ids must stay unique)."""
    ids = [i for p in parts for i in p.ids]
    if len(set(ids)) != len(ids):
        raise ValueError("concat_splits: the parts share example ids")
    return TextSplit(
        ids,
        [t for p in parts for t in p.texts],
        [x for p in parts for x in p.input_ids],
        torch.cat([p.gold for p in parts]),
    )


def transfer_set(
    splits: Mapping[str, TextSplit], aug_copies: int, mask_id: int, seed: int = 0
) -> tuple[TextSplit, torch.Tensor]:
    """Chapter 05's transfer set (train + unlabelled pool + noisy copies) and its labels (-1 beyond train)."""
    if not isinstance(aug_copies, int) or aug_copies < 0:
        raise ValueError(f"aug_copies must be an int >= 0 (got {aug_copies!r})")
    base = concat_splits(splits["train"], splits["unlabeled"])
    transfer = (
        base
        if aug_copies == 0
        else concat_splits(base, augmented_split(base, aug_copies, mask_id, seed=seed))
    )
    n_lab = len(splits["train"])
    labels = torch.cat(
        [splits["train"].gold, torch.full((len(transfer) - n_lab,), -1, dtype=torch.long)]
    )
    return transfer, labels


def one_copy_rows(splits: Mapping[str, TextSplit], aug_copies: int) -> list[int]:
    """Rows of transfer_set(splits, aug_copies, ...): every snippet and its first noisy copy."""
    check_int("aug_copies", aug_copies)
    n_base = len(splits["train"]) + len(splits["unlabeled"])
    if aug_copies == 0:
        return list(range(n_base))
    return list(range(n_base)) + list(range(n_base, n_base * (1 + aug_copies), aug_copies))


def random_rows(n_total: int, n_rows: int | None, seed: int = 0) -> list[int]:
    """`n_rows` distinct rows of `n_total` in a seeded random order (all when None or larger)."""
    check_int("n_total", n_total, minimum=1)
    if n_rows is not None:
        check_int("n_rows", n_rows, minimum=1)
    n = n_total if n_rows is None else min(n_rows, n_total)
    generator = torch.Generator().manual_seed(check_seed("seed", seed))
    order = torch.randperm(n_total, generator=generator)
    return order[:n].tolist()


def transfer_examples(
    transfer: TextSplit,
    labels: torch.Tensor,
    logits: torch.Tensor,
    rows: Sequence[int] | None = None,
) -> TextExamples:
    """Transfer-set rows (all, or `rows`) as TextExamples with their labels and teacher logits."""
    if len(labels) != len(transfer) or len(logits) != len(transfer):
        raise ValueError(
            f"labels and logits must have {len(transfer)} rows like transfer "
            f"(got {len(labels)} and {len(logits)})"
        )
    if rows is None:
        return TextExamples(transfer.input_ids, labels, logits)
    rows = list(rows)
    return TextExamples([transfer.input_ids[i] for i in rows], labels[rows], logits[rows])
