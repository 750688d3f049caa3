"""Cross-domain distillation and self-training (chapter 07).

Distilling on a target domain's unlabelled text (`noisy_student_round`): the teacher labels the
text *clean* (eval mode, no dropout, the original token ids); a fresh student is trained *with
noise* (dropout on, token-dropped copies of each text that keep the clean text's soft target).

Label-free model selection (`target_domain`, `hold_out`, `agreement_split`): a slice of the
unlabelled pool is held out, and students stop early on agreement with their teacher there.

Noisy Student as Xie et al. (2020) describe it (`noisy_student_rounds`): a student at least as
large as its teacher, noise on the student only, confidence-filtered and class-balanced
pseudo-labels (`filter_and_balance`), labelled source rows mixed in (`labels_or_teacher_loss`),
each round's student teaching the next.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from kdhelpers.batching import TextExamples
from kdhelpers.data import load_sentiment
from kdhelpers.profiles import choose
from kdhelpers.pseudo import confident, predict_logits, top_probability
from kdhelpers.students import STUDENT_KINDS, StudentConfig, make_student, train_student
from kdhelpers.teacher import TextSplit, tokenize_splits
from kdhelpers.train import labels_or_teacher_loss, make_kd_loss
from kdhelpers.transfer import concat_splits, random_rows
from kdhelpers.validate import check_int, check_number, check_seed


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
    rng = random.Random(check_seed("seed", seed))
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
    return predict_logits(model, input_ids, batch_size=batch_size, device=device)


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
            "pool and validation must be TextSplit objects (kdhelpers.teacher.tokenize_splits)"
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


@dataclass(frozen=True, kw_only=True, eq=False)
class SoftTargetRecipe:
    """Chapter 07's small soft-target student: a fresh `kind` student (make_student, starting from
    `embeddings` when given) trained by noisy_student_round on a pool's soft targets at
    `temperature`, with `n_copies` noisy copies per text (word pieces dropped with `p_drop`,
    `special_ids` kept) and `training`'s settings; vary one setting with dataclasses.replace."""

    kind: str
    vocab_size: int
    embeddings: torch.Tensor | None = None
    temperature: float = 2.0
    n_copies: int = 2
    p_drop: float = 0.1
    training: StudentConfig = NOISY_STUDENT_CONFIG
    special_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        check_number("temperature", self.temperature, 0.0, strict_min=True)
        _check_copies(self.n_copies)
        _check_probability("p_drop", self.p_drop)
        if not isinstance(self.training, StudentConfig):
            raise TypeError(
                f"training must be a StudentConfig (got {type(self.training).__name__})"
            )
        if self.kind not in STUDENT_KINDS:
            raise ValueError(f"kind must be one of {STUDENT_KINDS} (got {self.kind!r})")
        check_int("vocab_size", self.vocab_size, 2)
        if self.embeddings is not None:
            if self.kind == "tiny-bert":
                raise ValueError(
                    "embeddings: the tiny-bert student starts from its own (give None)"
                )
            if not isinstance(self.embeddings, torch.Tensor) or self.embeddings.dim() != 2:
                raise TypeError("embeddings must be a 2-D tensor (vocab_size, width) or None")
            if self.embeddings.shape[0] != self.vocab_size:
                raise ValueError(
                    f"embeddings has {self.embeddings.shape[0]} rows but vocab_size is "
                    f"{self.vocab_size}"
                )
        _check_special_ids(self.special_ids)
        object.__setattr__(self, "special_ids", tuple(self.special_ids))

    def new_student(self, seed: int) -> nn.Module:
        """A fresh student of this recipe, seeded."""
        return make_student(self.kind, self.vocab_size, self.embeddings, seed=seed)

    def train(
        self,
        pool: TextSplit,
        logits: torch.Tensor,
        validation: TextSplit,
        device: torch.device | str,
        seed: int,
        desc: str = "soft-target student",
    ) -> tuple[nn.Module, dict[str, Any]]:
        """A fresh student (seed `seed`, which also seeds its batches and noise) trained on `pool`'s
        soft targets `logits`, early stopping on `validation`; the student and its history."""
        return noisy_student_round(
            logits,
            pool,
            lambda: self.new_student(seed),
            validation,
            device,
            temperature=self.temperature,
            n_copies=self.n_copies,
            p_drop=self.p_drop,
            config=self.training.replace(seed=seed),
            desc=desc,
            special_ids=self.special_ids,
        )

    @classmethod
    def for_profile(
        cls,
        profile: str,
        vocab_size: int,
        embeddings: torch.Tensor | None,
        temperature: float,
        special_ids: Sequence[int],
    ) -> SoftTargetRecipe:
        """Chapter 07's recipe for a course profile ('quick', 'standard', 'full' or 'auto'): the
        student kind, noise and training settings that the chapter and its solutions share."""
        settings = choose(profile, **RECIPE_PROFILES)
        return cls(
            kind=settings["kind"],
            vocab_size=vocab_size,
            embeddings=embeddings,
            temperature=temperature,
            n_copies=settings["n_copies"],
            p_drop=settings["p_drop"],
            training=StudentConfig(epochs=settings["epochs"], lr=settings["lr"]),
            special_ids=special_ids,
        )


# chapter 07's small soft-target student per profile: a bag of embeddings for the smoke test,
# a CNN on the CPU and the GPU (the full profile adds a second noisy copy of each text)
RECIPE_PROFILES: dict[str, dict[str, Any]] = {
    "quick": dict(kind="bag", epochs=3, lr=1e-2, n_copies=1, p_drop=0.1),
    "standard": dict(kind="cnn", epochs=10, lr=1e-3, n_copies=1, p_drop=0.1),
    "full": dict(kind="cnn", epochs=10, lr=1e-3, n_copies=2, p_drop=0.1),
}


# ---------------------------------------------------------------- label-free model selection


def hold_out(pool: TextSplit, n_select: int, seed: int = 0) -> tuple[TextSplit, TextSplit]:
    """A seeded split of an unlabelled pool: (the rows a teacher labels for training, `n_select`
    held-out rows on which students are selected without labels)."""
    if not isinstance(pool, TextSplit):
        raise TypeError(f"pool must be a TextSplit (got {type(pool).__name__})")
    n_select = check_int("n_select", n_select, 1, len(pool) - 1)
    order = random_rows(len(pool), None, seed)
    return pool.select(sorted(order[n_select:])), pool.select(sorted(order[:n_select]))


class TargetDomain(NamedTuple):
    """A target domain without labels: text to learn from, a held-out slice for label-free selection
    (both with labels hidden) and the labelled test split that only reports."""

    pool: TextSplit
    select: TextSplit
    test: TextSplit


def target_domain(
    domain: str,
    tokenizer: Any,
    max_length: int,
    select_share: float = 0.2,
    seed: int = 0,
    pool_size: int | None = None,
    **sizes: int,
) -> TargetDomain:
    """A target domain's train + unlabeled text as one pool with labels hidden (its first `pool_size`
    texts when given), split by `hold_out` into text to learn from and a `select_share` selection
    slice; and its test split. `sizes` go to load_sentiment (n_train=..., n_test=...)."""
    select_share = check_number("select_share", select_share, 0.0, 1.0, strict_min=True)
    if select_share >= 1.0:
        raise ValueError(
            f"select_share must be < 1 (got {select_share}): a share of 1 holds out the whole pool "
            "for selection and leaves no text to learn from"
        )
    splits = tokenize_splits(
        load_sentiment(domain, seed=seed, **sizes), tokenizer, max_length=max_length
    )
    pool = unlabelled_pool(splits["train"], splits["unlabeled"])
    if pool_size is not None and check_int("pool_size", pool_size, 2) < len(pool):
        pool = pool.head(pool_size)
    n_select = max(1, int(select_share * len(pool)))
    if n_select > len(pool) - 1:
        raise ValueError(
            f"select_share={select_share} of the {len(pool)}-text pool holds out {n_select} texts "
            "and leaves none to learn from: lower select_share or use a larger pool"
        )
    learn, select = hold_out(pool, n_select, seed=seed)
    return TargetDomain(learn, select, splits["test"])


def agreement_split(split: TextSplit, logits: torch.Tensor) -> TextSplit:
    """`split` with a teacher's predicted classes as its labels: accuracy on it is agreement with that
    teacher, a validation score for early stopping that needs no gold label."""
    if not isinstance(split, TextSplit):
        raise TypeError(f"split must be a TextSplit (got {type(split).__name__})")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != len(split):
        raise ValueError(f"logits must be a tensor of shape ({len(split)}, classes)")
    return TextSplit(split.ids, split.texts, split.input_ids, logits.argmax(-1).cpu())


# ---------------------------------------------------------------- Noisy Student (Xie et al., 2020)


def filter_and_balance(
    logits: torch.Tensor, threshold: float, per_class: int | None = None
) -> list[int]:
    """Xie et al.'s choice of pseudo-labelled rows: those whose top probability reaches `threshold`,
    then `per_class` rows per predicted class, most confident first; a class with fewer confident
    rows repeats them (default per_class: the confident rows shared out evenly over the classes)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) == 0:
        raise ValueError("logits must be a non-empty 2-D tensor (rows, classes)")
    threshold = check_number("threshold", threshold, 0.0, 1.0)
    confidence, predicted = top_probability(logits.detach().float().cpu())
    keep = confidence >= threshold  # confident(logits, threshold), from the same probabilities
    n_classes = logits.shape[1]
    if per_class is None:
        per_class = int(keep.sum()) // n_classes
    per_class = check_int("per_class", per_class, 0)
    rows: list[int] = []
    for c in range(n_classes):
        mine = torch.nonzero(keep & (predicted == c)).flatten()
        if len(mine) == 0 or per_class == 0:
            continue
        order = mine[torch.argsort(confidence[mine], descending=True, stable=True)].tolist()
        rows += [order[k % len(order)] for k in range(per_class)]
    return rows


@dataclass(frozen=True, kw_only=True)
class NoisyStudentConfig:
    """One Noisy Student round: the confidence threshold of the pseudo-labels, per-class rows (None:
    even share of the confident ones), the word-piece drop probability of the student's input noise,
    how many labelled source rows are mixed in (None: all) and how the student trains."""

    threshold: float = 0.7
    per_class: int | None = None
    p_drop: float = 0.1
    source_rows: int | None = None
    training: StudentConfig = StudentConfig(epochs=3, lr=1e-4, batch_size=32, patience=1)

    def __post_init__(self) -> None:
        check_number("threshold", self.threshold, 0.0, 1.0)
        if self.per_class is not None:
            check_int("per_class", self.per_class, 1)
        _check_probability("p_drop", self.p_drop)
        if self.source_rows is not None:
            check_int("source_rows", self.source_rows, 1)
        if not isinstance(self.training, StudentConfig):
            raise TypeError(
                f"training must be a StudentConfig (got {type(self.training).__name__})"
            )


def noisy_student_examples(
    pool: TextSplit,
    pool_logits: torch.Tensor,
    source: TextSplit,
    config: NoisyStudentConfig,
    *,
    special_ids: Sequence[int],
    seed: int = 0,
) -> tuple[TextExamples, dict[str, int]]:
    """The noisy student's training rows: the filtered and class-balanced pseudo-labelled pool rows
    (soft targets, label -1) and labelled source rows (gold labels), every row with word pieces
    dropped (`special_ids` kept); and the counts (pool, confident, pseudo, source rows)."""
    if not isinstance(pool, TextSplit) or not isinstance(source, TextSplit):
        raise TypeError("pool and source must be TextSplit objects")
    if not isinstance(pool_logits, torch.Tensor) or pool_logits.shape[:1] != (len(pool),):
        raise ValueError(f"pool_logits must have {len(pool)} rows, one per pool text")
    if not isinstance(config, NoisyStudentConfig):
        raise TypeError(f"config must be a NoisyStudentConfig (got {type(config).__name__})")
    rows = filter_and_balance(pool_logits, config.threshold, config.per_class)
    if not rows:
        raise ValueError(
            f"no pool row reaches threshold={config.threshold}: lower it or label more text"
        )
    source_rows = sorted(random_rows(len(source), config.source_rows, seed))
    if (source.gold[source_rows] < 0).any():
        raise ValueError("source must be a labelled split (gold labels >= 0)")
    clean = [pool.input_ids[i] for i in rows] + [source.input_ids[i] for i in source_rows]
    noisy = drop_tokens(clean, config.p_drop, 1, special_ids=special_ids, seed=seed)
    logits = pool_logits.detach().float().cpu()
    targets = torch.cat([logits[rows], torch.zeros(len(source_rows), logits.shape[1])])
    labels = torch.cat(
        [torch.full((len(rows),), -1, dtype=torch.long), source.gold[source_rows].long()]
    )
    counts = {
        "pool": len(pool),
        "confident": int(confident(logits, config.threshold).sum()),
        "pseudo_rows": len(rows),
        "source_rows": len(source_rows),
    }
    return TextExamples(noisy, labels, targets), counts


def train_noisy_student(
    student: nn.Module,
    pool: TextSplit,
    pool_logits: torch.Tensor,
    source: TextSplit,
    select: TextSplit,
    device: torch.device | str,
    config: NoisyStudentConfig = NoisyStudentConfig(),
    desc: str = "noisy student",
    *,
    special_ids: Sequence[int],
) -> dict[str, Any]:
    """Train `student` (dropout on, noisy inputs) on the teacher's pseudo-labels of `pool` plus labelled
    `source` rows, with `labels_or_teacher_loss`; early stopping on `select` (e.g. an agreement_split of a
    held-out pool slice). Returns its history with the row counts; config.training.seed seeds the noise."""
    if not isinstance(student, nn.Module):
        raise TypeError(f"student must be a torch.nn.Module (got {type(student).__name__})")
    seed = config.training.seed
    data, counts = noisy_student_examples(
        pool, pool_logits, source, config, special_ids=special_ids, seed=seed
    )
    history = train_student(
        student, data, select, labels_or_teacher_loss, device, config.training, desc=desc
    )
    history.update(counts, epoch_limit=config.training.epochs)
    return history


class _Chain(NamedTuple):
    """What every round of noisy_student_rounds shares: the student builder, the splits, the settings."""

    new_student: Callable[[int], nn.Module]
    pool: TextSplit
    select: TextSplit
    source: TextSplit
    test: TextSplit
    device: torch.device | str
    config: NoisyStudentConfig
    special_ids: Sequence[int]


def _noisy_round(
    chain: _Chain,
    teacher: nn.Module,
    label: Callable[[nn.Module, TextSplit, str], torch.Tensor],
    first: torch.Tensor,
    r: int,
    seed: int,
) -> tuple[nn.Module, dict[str, Any]]:
    """Round r of one chain: `teacher` labels the pool (through `label`), a fresh student learns it
    with noise; returns the student and its row (test accuracy, agreement with the round-0
    predictions `first`, selection agreement, best epoch and row counts)."""
    new_student, pool, select, source, test, device, config, special_ids = chain
    round_config = dataclasses.replace(
        config, training=config.training.replace(seed=seed + 100 * r)
    )
    pool_logits = label(teacher, pool, "pool")
    chooser = agreement_split(select, label(teacher, select, "select"))
    student = new_student(seed + 100 * r)
    hist = train_noisy_student(
        student,
        pool,
        pool_logits,
        source,
        chooser,
        device,
        round_config,
        desc=f"round {r}, seed {seed}",
        special_ids=special_ids,
    )
    said = clean_logits(student, test, device).argmax(-1)
    row = {
        "round": r,
        "seed": seed,
        "test_accuracy": float((said == test.gold).float().mean()),
        "agrees_with_teacher": float((said == first).float().mean()),
        "selection_agreement": hist["best_val_accuracy"],
        "best_epoch": hist["best_epoch"],
        "epoch_limit": hist["epoch_limit"],
        **{k: hist[k] for k in ("pool", "confident", "pseudo_rows", "source_rows")},
    }
    return student, row


def noisy_student_rounds(
    teachers: Mapping[int, nn.Module],
    new_student: Callable[[int], nn.Module],
    pool: TextSplit,
    select: TextSplit,
    source: TextSplit,
    test: TextSplit,
    rounds: int,
    device: torch.device | str,
    config: NoisyStudentConfig = NoisyStudentConfig(),
    *,
    special_ids: Sequence[int],
    round0_logits: Callable[[nn.Module, TextSplit, str], torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Noisy Student chains, one per seed: teachers[seed] labels `pool` (clean), a fresh
    `new_student(seed)` learns it with noise (selected by agreement with its teacher on `select`),
    then teaches the next round. One row per (round, seed), round 0 being the teacher: test accuracy,
    agreement with the round-0 teacher on `test`, best epoch, epoch limit and row counts.
    `round0_logits(model, split, part)` gives a round-0 teacher's clean logits on `split`, `part`
    being "pool", "select" or "test" (default: clean_logits); to share them with other cells and
    later runs through the logit cache, pass e.g. `lambda m, s, part: teacher.teacher_logits(m, s,
    device, name=f"amazon-{part}")`. Students are labelled afresh: they are retrained on every run,
    so caching their logits would save little and add a file per student and split."""

    def fresh(model: nn.Module, split: TextSplit, part: str) -> torch.Tensor:
        """The model's clean logits computed now (students always; round-0 teachers by default)."""
        return clean_logits(model, split, device)

    round0 = fresh if round0_logits is None else round0_logits

    if not teachers:
        raise ValueError("teachers is empty: give one teacher per seed, e.g. {0: t0, 1: t1, 2: t2}")
    rounds = check_int("rounds", rounds, 1)
    chain = _Chain(new_student, pool, select, source, test, device, config, special_ids)
    out: list[dict[str, Any]] = []
    for seed, teacher in teachers.items():
        label = round0
        first = label(teacher, test, "test").argmax(-1)
        out.append(
            {
                "round": 0,
                "seed": seed,
                "test_accuracy": float((first == test.gold).float().mean()),
                "agrees_with_teacher": 1.0,
            }
        )
        for r in range(1, rounds + 1):
            student, row = _noisy_round(chain, teacher, label, first, r, seed)
            out.append(row)
            teacher, label = student, fresh
    return out
