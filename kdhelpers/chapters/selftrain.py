"""Self-training in the manner of Noisy Student (Xie et al., 2020) for the cross-domain chapter.

One round: the current teacher labels the unlabelled text *clean* (eval mode, no dropout, the
original token ids); a fresh student is then trained *with noise* (dropout on, token-dropped copies
of each text that keep the clean text's soft target) and becomes the next round's teacher.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from kdhelpers.batching import TextExamples
from kdhelpers.chapters.recipes import StudentConfig, TextSplit, concat_splits, train_student
from kdhelpers.pseudo import predict_logits
from kdhelpers.train import make_kd_loss


def _check_probability(name: str, p: object) -> float:
    """Validate a probability in [0, 1)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1) (got {p!r})")
    return float(p)


def _check_special_ids(special_ids: object) -> frozenset[int]:
    """Validate the token ids that token dropping must keep (e.g. a tokenizer's `all_special_ids`)."""
    if isinstance(special_ids, (str, bytes, torch.Tensor)) or not isinstance(special_ids, Sequence):
        raise TypeError(
            f"special_ids must be a sequence of ints such as tokenizer.all_special_ids (got {special_ids!r})"
        )
    if any(isinstance(t, bool) or not isinstance(t, int) for t in special_ids):
        raise TypeError(f"special_ids must hold ints (got {list(special_ids)!r})")
    return frozenset(special_ids)


def _check_copies(n_copies: object) -> int:
    """Validate a non-negative int number of copies."""
    if isinstance(n_copies, bool) or not isinstance(n_copies, int) or n_copies < 0:
        raise ValueError(f"n_copies must be a non-negative int (got {n_copies!r})")
    return n_copies


def unlabelled_pool(*parts: TextSplit) -> TextSplit:
    """The splits' texts as one split with every gold label hidden (-1): text a teacher may label, never train on."""

    if not parts:
        raise ValueError("unlabelled_pool needs at least one split")
    for part in parts:
        if not isinstance(part, TextSplit):
            raise TypeError(f"parts must be TextSplit objects (got {type(part).__name__})")
    pool = concat_splits(*parts)
    return TextSplit(
        pool.ids, pool.texts, pool.input_ids, torch.full((len(pool),), -1, dtype=torch.long)
    )


def drop_tokens(
    input_ids: Sequence[Sequence[int]],
    p_drop: float = 0.1,
    n_copies: int = 1,
    *,
    special_ids: Sequence[int],
    seed: int = 0,
) -> list[list[int]]:
    """`n_copies` variants per example with each ordinary token deleted with probability `p_drop`.

    Tokens in `special_ids` are never deleted: pass the tokenizer's own ids (`tokenizer.all_special_ids`,
    which covers [CLS], [SEP] and the padding id); there is no default, since ids differ between tokenizers.
    Every variant keeps at least one ordinary token when its source has one. Variants come example by
    example (all copies of the first example, then of the second, ...), seeded by `seed`.
    """
    if isinstance(input_ids, (str, torch.Tensor)) or not isinstance(input_ids, Sequence):
        raise TypeError("input_ids must be a sequence of token-id lists")
    p_drop = _check_probability("p_drop", p_drop)
    n_copies = _check_copies(n_copies)
    special = _check_special_ids(special_ids)
    rng = random.Random(seed)
    out: list[list[int]] = []
    for ids in input_ids:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise TypeError(f"each example must be a list of token ids (got {type(ids).__name__})")
        ids = list(ids)
        ordinary = [i for i, t in enumerate(ids) if t not in special]
        for _ in range(n_copies):
            keep = [i for i in ordinary if rng.random() >= p_drop]
            if ordinary and not keep:
                keep = [rng.choice(ordinary)]
            kept = set(keep)
            out.append([t for i, t in enumerate(ids) if t in special or i in kept])
    return out


def clean_logits(
    model: nn.Module,
    data: TextSplit | Sequence[Sequence[int]],
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """A model's logits on a split (or token-id lists) without noise: eval mode, no dropout, original ids."""

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (got {type(model).__name__})")
    input_ids = data.input_ids if isinstance(data, TextSplit) else data
    if len(input_ids) == 0:
        raise ValueError("no examples to label")
    return predict_logits(
        model, input_ids, batch_size=batch_size, device=device
    ).clone()  # a normal tensor


def noisy_student_set(
    input_ids: Sequence[Sequence[int]],
    teacher_logits: torch.Tensor,
    n_copies: int = 2,
    p_drop: float = 0.1,
    keep_clean: bool = True,
    *,
    special_ids: Sequence[int],
    seed: int = 0,
) -> TextExamples:
    """Unlabelled training rows for a noisy student: the clean texts (if `keep_clean`), then token-dropped
    copies (never dropping `special_ids`), each copy paired with the teacher's logits on its clean source text."""
    if not isinstance(teacher_logits, torch.Tensor) or teacher_logits.dim() != 2:
        raise ValueError("teacher_logits must be a 2-D tensor (examples, classes)")
    if len(teacher_logits) != len(input_ids):
        raise ValueError(
            f"teacher_logits has {len(teacher_logits)} rows but there are {len(input_ids)} examples"
        )
    n_copies = _check_copies(n_copies)
    if not keep_clean and n_copies == 0:
        raise ValueError("no rows: keep_clean=False needs n_copies >= 1")
    noisy = drop_tokens(input_ids, p_drop, n_copies, special_ids=special_ids, seed=seed)
    ids = ([list(x) for x in input_ids] if keep_clean else []) + noisy
    logits = teacher_logits.detach().float().cpu()
    parts = ([logits] if keep_clean else []) + [logits.repeat_interleave(n_copies, dim=0)]
    return TextExamples(ids, None, torch.cat(parts))


#: The default training of a noisy student round.
NOISY_STUDENT_CONFIG = StudentConfig(epochs=8, lr=1e-3)


def noisy_student_round(
    teacher_logits: torch.Tensor,
    pool: TextSplit,
    new_student: Callable[[], nn.Module],
    validation: TextSplit,
    device: torch.device | str,
    temperature: float = 2.0,
    n_copies: int = 2,
    p_drop: float = 0.1,
    config: StudentConfig = NOISY_STUDENT_CONFIG,
    desc: str = "noisy student",
    *,
    special_ids: Sequence[int],
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a fresh student (from `new_student()`) on the pool's soft targets with token dropping and dropout.

    `teacher_logits` are the current teacher's clean logits on `pool` (see clean_logits); `pool`'s gold
    labels are never used; `special_ids` (e.g. `tokenizer.all_special_ids`) are never dropped. Early
    stopping runs on `validation` (a labelled split of another domain, or any split whose labels may be
    used for selection). `config.seed` seeds the token dropping too. Returns the trained student and
    its history.
    """
    if not isinstance(pool, TextSplit) or not isinstance(validation, TextSplit):
        raise TypeError(
            "pool and validation must be TextSplit objects (kdhelpers.chapters.recipes.tokenize_splits)"
        )
    data = noisy_student_set(
        pool.input_ids, teacher_logits, n_copies, p_drop, special_ids=special_ids, seed=config.seed
    )
    student = new_student()
    if not isinstance(student, nn.Module):
        raise TypeError(
            f"new_student() must return a torch.nn.Module (got {type(student).__name__})"
        )
    history = train_student(
        student,
        data,
        validation,
        make_kd_loss(0.0, temperature),
        device,
        config,
        desc=desc,
    )
    history["rows"] = len(data)
    return student, history
