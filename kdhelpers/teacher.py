"""The text chapters' data and teacher: settings per profile, tokenized splits, the fine-tuned
teacher (trained once, then loaded from its checkpoint) and its cached logits."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

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
    load_teacher,
)
from kdhelpers.paths import cache_dir, checkpoints_dir
from kdhelpers.pseudo import cache_logits
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


def _checkpoint_refusal(
    model: nn.Module, stem: Path, wanted: Mapping[str, Any], data_sha: str
) -> tuple[str | None, dict[str, Any]]:
    """Load the checkpoint at `stem` into `model`: (None, its record) when its digest verifies and its
    settings and data match, else (why it is refused, {})."""
    weights, _ = checkpoint_paths(stem)
    if not weights.exists():
        return f"no checkpoint {weights.name} in the checkpoint folder: trained now", {}
    try:
        record = load_checkpoint(model, stem)
    except (CheckpointError, ValueError, RuntimeError, OSError) as exc:
        return f"checkpoint refused ({exc}): trained again", {}
    stored = record.get("settings") if isinstance(record.get("settings"), dict) else {}
    stored = {k: stored.get(k) for k in TEACHER_KEYS}
    differ = {k: (stored[k], wanted[k]) for k in TEACHER_KEYS if stored[k] != wanted[k]}
    if differ:
        return (
            f"checkpoint {weights.name} was saved with other settings "
            f"(stored, requested: {differ}): not reused, trained again"
        ), {}
    if record.get("data_sha256") != data_sha:
        return (
            f"checkpoint {weights.name} was trained on other train/validation examples "
            "(or records none): not reused, trained again"
        ), {}
    return None, record


def _announce_training(settings: CourseSettings, reason: str) -> None:
    """Log that the chapters' own teacher is fine-tuned now, and roughly how long it takes."""
    given = asdict(settings)
    varied = ("domain", "seed", "teacher_seed")
    for profile, values in PROFILE_SETTINGS.items():
        if all(given[k] == v for k, v in asdict(values).items() if k not in varied):
            log.warning(
                "No usable teacher checkpoint for these settings (%s). Fine-tuning the teacher now "
                "(chapter 03's step, saved so that later chapters reuse it): expect %s in the %s "
                "profile.",
                reason,
                TEACHER_TRAINING_TIME[profile],
                profile,
            )
            return  # exercises that vary the settings asked for that work: no announcement


def _train_teacher(
    settings: CourseSettings, splits: Mapping[str, TextSplit], device: torch.device | str
) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh teacher fine-tuned with `settings` on splits['train'] (early stopping on
    validation), and its training history."""
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
    return model, history


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
    if retrain:
        reason = "retrain=True: trained again"
    else:
        with seeded(settings.training_seed):  # the head is overwritten by a verified checkpoint
            model, _ = load_teacher(None, pooling=settings.pooling)
        reason, record = _checkpoint_refusal(model, stem, wanted, data_sha)
        if reason is None:
            info = {
                "trained_now": False,
                "checkpoint": stem.name,
                "reason": "checkpoint verified: weights digest, settings and data match",
                **record,
            }
            return model.to(device), info
    _announce_training(settings, reason)
    model, history = _train_teacher(settings, splits, device)
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
