"""Text augmentation on token ids, to grow the transfer set the teacher labels (Tang et al. 2019)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from kdhelpers.validate import check_seed


def augment_token_ids(
    input_ids: Sequence[Sequence[int]],
    n_copies: int = 1,
    mask_id: int = 103,
    p_mask: float = 0.1,
    p_ngram: float = 0.25,
    special_ids: Sequence[int] = (101, 102),
    seed: int = 0,
) -> list[list[int]]:
    """`n_copies` noisy variants per example: random tokens masked, and sometimes an n-gram cut out.

    Special tokens (such as [CLS] and [SEP]) are kept in place. Each variant is a new input the
    teacher can label, so the student sees many more teacher distributions than labelled texts.
    """
    for name, p in (("p_mask", p_mask), ("p_ngram", p_ngram)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1] (got {p})")
    if not isinstance(n_copies, int) or n_copies < 0:
        raise ValueError(f"n_copies must be a non-negative int (got {n_copies!r})")
    rng = random.Random(check_seed("seed", seed))
    special = set(special_ids)
    out: list[list[int]] = []
    for ids in input_ids:
        ids = list(ids)
        head = [t for t in ids[:1] if t in special]
        tail = [t for t in ids[-1:] if t in special] if len(ids) > len(head) else []
        body = ids[len(head) : len(ids) - len(tail)]
        for _ in range(n_copies):
            new = [mask_id if (t not in special and rng.random() < p_mask) else t for t in body]
            if len(new) > 3 and rng.random() < p_ngram:
                n = rng.randint(max(2, len(new) // 3), len(new))
                start = rng.randint(0, len(new) - n)
                new = new[start : start + n]
            out.append(head + new + tail)
    return out
