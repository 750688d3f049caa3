"""End-to-end steps the text chapters share: tokenized splits, the fine-tuned teacher, its logits."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from kdhelpers.augment import augment_token_ids
from kdhelpers.batching import TextExamples, make_loader, tokenize_texts
from kdhelpers.checkpoints import (
    CheckpointError,
    checkpoint_paths,
    load_checkpoint,
    save_checkpoint,
)
from kdhelpers.data import load_sentiment
from kdhelpers.device import seeded
from kdhelpers.models import (
    BagOfEmbeddingsStudent,
    BiLSTMStudent,
    CNNStudent,
    init_embeddings_from_teacher,
    load_teacher,
    tiny_bert_student,
)
from kdhelpers.paths import cache_dir, checkpoints_dir
from kdhelpers.pseudo import cache_logits
from kdhelpers.results import load_results
from kdhelpers.train import TrainConfig, evaluate, fit
from kdhelpers.validate import check_int, check_number, check_seed

log = logging.getLogger(__name__)

#: Rough wall time of fine-tuning the teacher per profile (2-core CPU for quick/standard).
TEACHER_TRAINING_TIME = {
    "quick": "about 10 s",
    "standard": "about 5 minutes on a 2-core CPU",
    "full": "a few minutes on a GPU (much longer on a CPU)",
}

#: The settings that name and guard the teacher checkpoint (hashed as JSON, stored in its record).
TEACHER_KEYS = (
    "domain",
    "seed",
    "teacher_seed",
    "n_train",
    "pooling",
    "max_length",
    "epochs",
    "lr",
    "batch_size",
    "bucket",
)


@dataclass(frozen=True, kw_only=True)
class CourseSettings:
    """Data and teacher settings of the text chapters (vary one with .replace)."""

    domain: str = "movies"
    #: seeds the data split, and the teacher too unless teacher_seed is set
    seed: int = 0
    #: seeds the teacher's new head, batch order and dropout (None: `seed`); the split stays `seed`'s
    teacher_seed: int | None = None
    n_train: int | None
    n_validation: int | None = None
    n_test: int | None = None
    n_unlabeled: int | None = None
    pooling: str = "mean"
    max_length: int
    epochs: int
    lr: float
    batch_size: int
    #: the teacher's training batches group examples of similar length (much less padding)
    bucket: bool = True

    def replace(self, **changes: Any) -> CourseSettings:
        """A copy with `changes` applied (dataclasses.replace; the copy is checked again)."""
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        if not isinstance(self.domain, str) or not self.domain:
            raise TypeError(f"domain must be a non-empty string (got {self.domain!r})")
        check_seed("seed", self.seed)
        if self.teacher_seed is not None:
            check_seed("teacher_seed", self.teacher_seed)
        if not isinstance(self.bucket, bool):
            raise TypeError(f"bucket must be True or False (got {self.bucket!r})")
        for name in ("n_train", "n_validation", "n_test", "n_unlabeled"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 0 if name == "n_unlabeled" else 1)
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean' (got {self.pooling!r})")
        for name in ("max_length", "epochs", "batch_size"):
            check_int(name, getattr(self, name), 1)
        check_number("lr", self.lr, 0.0, strict_min=True)

    @property
    def training_seed(self) -> int:
        """The seed of the teacher's training: teacher_seed, else seed."""
        return self.seed if self.teacher_seed is None else self.teacher_seed

    def teacher_key(self) -> dict[str, Any]:
        """The TEACHER_KEYS fields as a dict, teacher_seed resolved (what names and guards the checkpoint)."""
        values = {**asdict(self), "teacher_seed": self.training_seed}
        return {k: values[k] for k in TEACHER_KEYS}


#: Data and teacher sizes per profile, shared by chapters 03-10 so they reuse one teacher checkpoint.
PROFILE_SETTINGS: dict[str, CourseSettings] = {
    "quick": CourseSettings(
        n_train=160,
        n_validation=100,
        n_test=200,
        n_unlabeled=300,
        pooling="mean",
        max_length=48,
        epochs=1,
        lr=1e-4,
        batch_size=16,
    ),
    "standard": CourseSettings(
        n_train=6000,
        n_validation=None,
        n_test=None,
        n_unlabeled=None,
        pooling="mean",
        max_length=64,
        epochs=3,
        lr=1e-4,
        batch_size=32,
    ),
    "full": CourseSettings(
        n_train=6000,
        n_validation=None,
        n_test=None,
        n_unlabeled=None,
        pooling="mean",
        max_length=64,
        epochs=4,
        lr=1e-4,
        batch_size=32,
    ),
}


def course_settings(profile: str, seed: int = 0, domain: str = "movies") -> CourseSettings:
    """The data and teacher settings of a resolved profile ('quick', 'standard' or 'full')."""
    if profile not in PROFILE_SETTINGS:
        raise ValueError(
            f"profile must be one of {tuple(PROFILE_SETTINGS)} (resolve 'auto' first; got {profile!r})"
        )
    return replace(PROFILE_SETTINGS[profile], domain=domain, seed=seed)


def _check_settings(settings: object) -> CourseSettings:
    """Refuse anything but CourseSettings (old string-keyed dicts included), naming the fix."""
    if not isinstance(settings, CourseSettings):
        raise TypeError(
            f"settings must be CourseSettings (got {type(settings).__name__}): use course_settings(profile), "
            "varied with dataclasses.replace(settings, n_train=...)"
        )
    return settings


def course_data(settings: CourseSettings) -> Any:
    """The DatasetDict for `settings` (kdhelpers.data.load_sentiment, unlabelled pool trimmed if asked)."""
    settings = _check_settings(settings)
    ds = load_sentiment(
        settings.domain,
        seed=settings.seed,
        n_train=settings.n_train,
        n_validation=settings.n_validation,
        n_test=settings.n_test,
    )
    n_unl = settings.n_unlabeled
    if n_unl is not None and n_unl < len(ds["unlabeled"]):
        ds["unlabeled"] = ds["unlabeled"].select(range(n_unl))
    return ds


@dataclass
class TextSplit:
    """One split, tokenized: ids, texts, token ids and gold labels (withheld from training when unlabelled)."""

    ids: list[str]
    texts: list[str]
    input_ids: list[list[int]]
    gold: torch.Tensor

    def examples(
        self, with_labels: bool = True, teacher_logits: torch.Tensor | None = None
    ) -> TextExamples:
        """TextExamples for the loop; with_labels=False hides the gold labels (-1)."""
        return TextExamples(self.input_ids, self.gold if with_labels else None, teacher_logits)

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, n: int) -> TextSplit:
        """The first `n` examples of the split."""
        if not isinstance(n, int) or not 0 < n <= len(self.ids):
            raise ValueError(f"n must be an int in [1, {len(self.ids)}] (got {n!r})")
        return TextSplit(self.ids[:n], self.texts[:n], self.input_ids[:n], self.gold[:n])

    def select(self, rows: list[int]) -> TextSplit:
        """The examples at positions `rows`, in that order."""
        if not rows or any(not isinstance(i, int) or not 0 <= i < len(self.ids) for i in rows):
            raise ValueError(
                f"rows must be a non-empty list of positions in [0, {len(self.ids) - 1}]"
            )
        return TextSplit(
            [self.ids[i] for i in rows],
            [self.texts[i] for i in rows],
            [self.input_ids[i] for i in rows],
            self.gold[rows],
        )


def tokenize_splits(dataset: Any, tokenizer: Any, max_length: int = 64) -> dict[str, TextSplit]:
    """Tokenize every split of a DatasetDict from kdhelpers.data.load_sentiment."""
    out = {}
    for name, split in dataset.items():
        texts = list(split["text"])
        out[name] = TextSplit(
            list(split["id"]),
            texts,
            tokenize_texts(texts, tokenizer, max_length),
            torch.tensor(split["label"], dtype=torch.long),
        )
    return out


def _teacher_name(settings: CourseSettings, splits: Mapping[str, TextSplit]) -> str:
    """Checkpoint stem from the teacher's settings and the ids of its training data."""
    h = hashlib.sha256(json.dumps(_check_settings(settings).teacher_key(), sort_keys=True).encode())
    for name in ("train", "validation"):
        h.update("|".join(splits[name].ids).encode())
    return f"teacher-{settings.domain}-{h.hexdigest()[:12]}"


def load_or_train_teacher(
    settings: CourseSettings,
    splits: Mapping[str, TextSplit],
    device: torch.device | str,
    folder: Path | None = None,
    retrain: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher fine-tuned with `settings` on splits['train']: from its checkpoint when it verifies
    and matches, else trained now (info['reason'] says why)."""
    # a checkpoint is reused only if its digest verifies and its stored settings and data match;
    # a refused one (damaged, old format without digest, other settings) is retrained and replaced
    stem_name = _teacher_name(settings, splits)
    folder = checkpoints_dir() if folder is None else folder  # names KD_CHECKPOINT_DIR if unusable
    stem = Path(folder) / stem_name
    # what the stored record must repeat for the checkpoint to be reused (JSON-normalised)
    wanted = json.loads(json.dumps(settings.teacher_key(), default=str))
    data_sha = hashlib.sha256(
        "\n".join("|".join(splits[name].ids) for name in ("train", "validation")).encode()
    ).hexdigest()
    with seeded(settings.training_seed):  # the head is overwritten by a checkpoint, if one verifies
        model, _ = load_teacher(None, pooling=settings.pooling)
    weights, _ = checkpoint_paths(stem)
    if retrain:
        reason = "retrain=True: trained again"
    elif not weights.exists():
        reason = f"no checkpoint {weights.name} in the checkpoint folder: trained now"
    else:
        try:
            record = load_checkpoint(model, stem)
            stored = record.get("settings") if isinstance(record.get("settings"), dict) else {}
            stored = {k: stored.get(k) for k in TEACHER_KEYS}
            differ = {k: (stored[k], wanted[k]) for k in TEACHER_KEYS if stored[k] != wanted[k]}
            if differ:
                reason = (
                    f"checkpoint {weights.name} was saved with other settings "
                    f"(stored, requested: {differ}): not reused, trained again"
                )
            elif record.get("data_sha256") != data_sha:
                reason = (
                    f"checkpoint {weights.name} was trained on other train/validation examples "
                    "(or records none): not reused, trained again"
                )
            else:
                info = {
                    "trained_now": False,
                    "checkpoint": stem.name,
                    "reason": "checkpoint verified: weights digest, settings and data match",
                    **record,
                }
                return model.to(device), info
        except (CheckpointError, ValueError, RuntimeError, OSError) as exc:
            reason = f"checkpoint refused ({exc}): trained again"
    given = asdict(settings)
    profile = next(
        (
            name
            for name, values in PROFILE_SETTINGS.items()
            if all(
                given[k] == v
                for k, v in asdict(values).items()
                if k not in ("domain", "seed", "teacher_seed")
            )
        ),
        None,
    )
    if profile is not None:  # the chapters' own teacher; exercises that vary it ask for that work
        log.warning(
            "No usable teacher checkpoint for these settings (%s). Fine-tuning the teacher now "
            "(chapter 03's step, saved so that later chapters reuse it): expect %s in the %s profile.",
            reason,
            TEACHER_TRAINING_TIME[profile],
            profile,
        )
    seed = settings.training_seed
    with seeded(seed):  # the new head's initial weights; the caller's RNG is given back
        model, _ = load_teacher(None, pooling=settings.pooling)
    train = make_loader(
        splits["train"].examples(),
        settings.batch_size,
        shuffle=True,
        device=device,
        seed=seed,
        bucket=settings.bucket,
    )
    val = make_loader(splits["validation"].examples(), 128, device=device)
    config = TrainConfig(epochs=settings.epochs, lr=settings.lr, patience=1, seed=seed)
    history = fit(model, train, val, config=config, device=device, desc=f"teacher (seed {seed})")
    stored = {**asdict(settings), **settings.teacher_key()}  # teacher_seed resolved
    record = {"settings": stored, "data_sha256": data_sha, "history": history}
    save_checkpoint(model, stem, record)
    return model, {"trained_now": True, "checkpoint": stem.name, "reason": reason, **record}


class CourseTeacher(NamedTuple):
    """What a text chapter starts from: the fine-tuned teacher, its tokenizer, the tokenized splits,
    the raw DatasetDict and how the teacher was obtained (load_or_train_teacher's info)."""

    teacher: nn.Module
    tokenizer: Any
    splits: dict[str, TextSplit]
    dataset: Any
    info: dict[str, Any]


def course_teacher(settings: CourseSettings, device: torch.device | str) -> CourseTeacher:
    """The data of `settings`, tokenized, and chapter 03's teacher for it (its checkpoint, else trained now)."""
    dataset = course_data(settings)
    _, tokenizer = load_teacher(None)
    splits = tokenize_splits(dataset, tokenizer, max_length=settings.max_length)
    teacher, info = load_or_train_teacher(settings, splits, device)
    return CourseTeacher(teacher, tokenizer, splits, dataset, info)


def seed_teachers(
    settings: CourseSettings,
    splits: Mapping[str, TextSplit],
    device: torch.device | str,
    seeds: list[int],
) -> dict[int, nn.Module]:
    """Chapter 03's teacher fine-tuned with each training seed in `seeds` on the same data (settings'
    split): from their checkpoints, else trained now."""
    if not seeds:
        raise ValueError("seeds is empty: give the teacher training seeds, e.g. [0, 1, 2]")
    return {
        s: load_or_train_teacher(
            settings.replace(teacher_seed=check_seed("seeds", s)), splits, device
        )[0]
        for s in seeds
    }


def teacher_logits(
    teacher: nn.Module,
    split: TextSplit,
    device: torch.device | str,
    name: str = "teacher",
    folder: Path | None = None,
    batch_size: int = 128,
) -> torch.Tensor:
    """The teacher's logits on a split, through the on-disk cache (computed once per teacher and data)."""
    folder = cache_dir() if folder is None else Path(folder)
    return cache_logits(
        teacher, split.ids, split.input_ids, folder, name=name, batch_size=batch_size, device=device
    ).logits


def split_accuracy(model: nn.Module, split: TextSplit, device: torch.device | str) -> float:
    """Accuracy of `model` on a labelled split."""
    return evaluate(model, make_loader(split.examples(), 128, device=device), device)["accuracy"]


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


def chosen_alpha_temperature(
    profile: str, default: tuple[float, float] = (0.1, 4.0)
) -> tuple[float, float, bool]:
    """alpha and T that chapter 05's sweep chose for `profile` (from its results file), else `default`; and which."""

    record = load_results("05_distillation", profile)
    if record:
        return float(record["metrics"]["alpha"]), float(record["metrics"]["temperature"]), True
    return float(default[0]), float(default[1]), False


STUDENT_KINDS = ("bag", "cnn", "bilstm", "tiny-bert")


def make_student(
    kind: str,
    vocab_size: int,
    teacher: nn.Module | torch.Tensor | None = None,
    seed: int = 0,
    **sizes: Any,
) -> nn.Module:
    """A fresh student ('bag', 'cnn', 'bilstm', 'tiny-bert') built from `seed`, leaving the caller's RNG
    alone; all but tiny-bert copy word embeddings from `teacher` (a model or a projected table) when given."""

    if kind not in STUDENT_KINDS:
        raise ValueError(f"kind must be one of {STUDENT_KINDS} (got {kind!r})")
    builders = {
        "bag": BagOfEmbeddingsStudent,
        "cnn": CNNStudent,
        "bilstm": BiLSTMStudent,
        "tiny-bert": tiny_bert_student,
    }
    with seeded(seed):  # the caller's RNG is given back afterwards
        model = builders[kind](vocab_size, **sizes)
    if teacher is not None and kind != "tiny-bert":
        init_embeddings_from_teacher(model, teacher)
    return model


@dataclass(frozen=True, kw_only=True)
class StudentConfig:
    """How `train_student` trains a text student: epochs, AdamW learning rate, batch size, early-stopping
    patience, the seed of its batch order and dropout, and length-bucketed batches."""

    epochs: int = 8
    lr: float = 2e-3
    batch_size: int = 64
    patience: int | None = 2
    seed: int = 0
    bucket: bool = True

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size, 1)
        if not isinstance(self.bucket, bool):
            raise TypeError(f"bucket must be True or False (got {self.bucket!r})")
        self.train_config()  # checks epochs, lr, patience and seed now, naming the bad one

    def replace(self, **changes: Any) -> StudentConfig:
        """A copy with `changes` applied (checked again)."""
        return dataclasses.replace(self, **changes)

    def train_config(self) -> TrainConfig:
        """The TrainConfig of `fit` (5% warm-up, AdamW's default weight decay, clipping at 1)."""
        return TrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            patience=self.patience,
            warmup_ratio=0.05,
            seed=self.seed,
        )


def train_student(
    model: nn.Module,
    train: TextExamples,
    validation: TextSplit,
    loss_fn: Any,
    device: torch.device | str,
    config: StudentConfig = StudentConfig(),
    desc: str = "student",
) -> dict[str, Any]:
    """Train a student with the course loop (early stopping on validation accuracy); returns its history."""
    if not isinstance(config, StudentConfig):
        raise TypeError(
            f"config must be a StudentConfig (got {type(config).__name__}): "
            "train_student(..., config=StudentConfig(epochs=8, lr=2e-3, seed=0))"
        )
    loader = make_loader(
        train,
        config.batch_size,
        shuffle=True,
        device=device,
        seed=config.seed,
        bucket=config.bucket,
    )
    val = make_loader(validation.examples(), 256, device=device)
    return fit(model, loader, val, loss_fn, config.train_config(), device=device, desc=desc)


def best_on_validation(histories: Mapping[Any, Mapping[str, Any]]) -> Any:
    """The key (a setting tried) whose training history has the highest best validation accuracy;
    the first such key on ties, so list the default first."""
    if not histories:
        raise ValueError("histories is empty: train at least one setting")
    for key, hist in histories.items():
        if hist.get("best_val_accuracy") is None:
            raise ValueError(
                f"the history of {key!r} has no best_val_accuracy (trained without validation?)"
            )
    return max(histories, key=lambda k: histories[k]["best_val_accuracy"])


def widen_grid(
    tried: Sequence[float], best: float, low: float, high: float, factor: float = 10.0
) -> float | None:
    """The next value to try when the best of a multiplicative grid sits at its edge: best * factor
    at the top edge, best / factor at the bottom, while within [low, high]; None when the best is
    inside the grid or the next value would leave the range."""
    values = sorted(check_number("tried[...]", v, 0.0, strict_min=True) for v in tried)
    if not values or best not in values:
        raise ValueError(f"best ({best!r}) must be one of the values tried {values}")
    check_number("factor", factor, 1.0, strict_min=True)
    if len(values) > 1 and values[0] < best < values[-1]:
        return None
    candidates = []
    if best == values[-1]:
        candidates.append(best * factor)
    if best == values[0]:
        candidates.append(best / factor)
    for value in candidates:
        if low <= value <= high and value not in values:
            return value
    return None
