"""Rows of chapter 05's transfer set (recipes.transfer_set) that chapters 05-06 train on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from kdhelpers.batching import TextExamples
from kdhelpers.chapters.recipes import TextSplit
from kdhelpers.validate import check_int, check_seed


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
