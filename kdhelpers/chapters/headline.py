"""The headline student (chapter 06): a large transfer set, a compact vocabulary, a wider student.

Three levers that the students of chapter 05 leave unused:
- more teacher-labelled text: other real sentences (the other VADER domains) and new sentences made
  by swapping words for their neighbours in the teacher's embedding space (TinyBERT's augmentation
  without its masked-language-model head), besides Tang et al.'s masking and n-gram cuts;
- a vocabulary the size of the text it reads: only the word pieces that occur in the transfer set
  keep an embedding row (the rest read [UNK]), so the parameter budget goes into width;
- a wider student: more embedding dimensions and convolution channels, or a BiLSTM (Tang et al.).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kdhelpers.augment import augment_token_ids
from kdhelpers.batching import TextExamples
from kdhelpers.checkpoints import (
    checkpoint_config,
    checkpoint_paths,
    load_checkpoint,
    save_checkpoint,
)
from kdhelpers.data import VADER_DOMAINS, load_sentiment
from kdhelpers.latency import measure_latency, speedup
from kdhelpers.models import count_parameters, project_teacher_embeddings
from kdhelpers.paths import benchmarks_dir, cache_dir, check_inside, checkpoints_dir, inside
from kdhelpers.pseudo import cache_logits
from kdhelpers.stats import compare_seeds, over_seeds
from kdhelpers.students import (
    StudentConfig,
    best_on_validation,
    chosen_alpha_temperature,
    make_student,
    train_student,
)
from kdhelpers.teacher import (
    TextSplit,
    course_settings,
    course_teacher,
    split_accuracy,
    tokenize_splits,
)
from kdhelpers.train import make_kd_loss
from kdhelpers.transfer import concat_splits
from kdhelpers.validate import (
    check_float_tensor,
    check_int,
    check_number,
    check_seed,
    check_token_lists,
)

#: The VADER domains besides movies: their sentences are extra unlabelled text for the transfer set.
OTHER_DOMAINS = tuple(d for d in VADER_DOMAINS if d != "movies")


@dataclass(frozen=True)
class VocabMap:
    """A compact vocabulary: the teacher's token ids that are kept, in order, and the compact id of each.

    Compact id i stands for teacher id `kept[i]`; a teacher id that is not kept maps to `unk`.
    """

    kept: tuple[int, ...]
    unk: int
    teacher_size: int

    def __post_init__(self) -> None:
        size = check_int("teacher_size", self.teacher_size, 2)
        for i, t in enumerate(self.kept):
            check_int(f"kept[{i}]", t, 0, size - 1)  # a row of the teacher's embedding table
        check_int("unk", self.unk, 0, size - 1)
        if len(set(self.kept)) != len(self.kept):
            raise ValueError("kept holds a token id twice")
        if self.unk not in self.kept:
            raise ValueError(f"the [UNK] id {self.unk} must be one of the kept ids")

    @property
    def size(self) -> int:
        """Number of compact ids (rows of the student's embedding table)."""
        return len(self.kept)

    def lookup(self) -> torch.Tensor:
        """A (teacher_size,) tensor: teacher id -> compact id ([UNK]'s compact id when not kept)."""
        table = torch.full((self.teacher_size,), self.kept.index(self.unk), dtype=torch.long)
        table[torch.tensor(self.kept)] = torch.arange(len(self.kept))
        return table

    def remap(self, seqs: Sequence[Sequence[int]]) -> list[list[int]]:
        """Teacher token-id lists rewritten in compact ids."""
        table = self.lookup().tolist()
        return [[table[t] for t in s] for s in check_token_lists("seqs", seqs)]

    def rows_of(self, teacher_table: torch.Tensor) -> torch.Tensor:
        """The rows of a (teacher_size, dim) table for the kept ids, in compact order."""
        if teacher_table.shape[0] != self.teacher_size:
            raise ValueError(
                f"teacher_table has {teacher_table.shape[0]} rows, the teacher vocabulary {self.teacher_size}"
            )
        return teacher_table[torch.tensor(self.kept)]


def compact_vocabulary(
    seqs: Iterable[Sequence[int]], teacher_size: int, special_ids: Sequence[int], unk_id: int
) -> VocabMap:
    """Keep the special ids (padding first, as id 0) and every id that occurs in `seqs`, in id order."""
    check_int("teacher_size", teacher_size, 2)
    if isinstance(special_ids, (str, bytes)) or not isinstance(special_ids, Iterable):
        raise TypeError(
            f"special_ids must be a list of token ids (got {type(special_ids).__name__})"
        )
    special_ids = [
        check_int(f"special_ids[{i}]", t, 0, teacher_size - 1) for i, t in enumerate(special_ids)
    ]
    unk_id = check_int("unk_id", unk_id, 0, teacher_size - 1)
    seen: set[int] = set()
    for s in seqs:
        seen.update(s)
    bad = [t for t in seen if not 0 <= t < teacher_size]
    if bad:
        raise ValueError(f"seqs hold ids outside [0, {teacher_size - 1}], e.g. {bad[0]}")
    specials = sorted(set(special_ids) | {unk_id})
    if 0 not in specials:
        raise ValueError("special_ids must include the padding id 0 (it stays compact id 0)")
    kept = tuple(specials + sorted(seen - set(specials)))
    return VocabMap(kept, unk_id, teacher_size)


def embedding_neighbours(
    table: torch.Tensor, candidates: Sequence[int], k: int = 8, chunk: int = 2048
) -> dict[int, list[int]]:
    """For each candidate id, its k nearest other candidates by cosine similarity of `table` rows."""
    check_int("k", k, 1)
    check_int("chunk", chunk, 1)
    table = check_float_tensor("table", table)
    if table.dim() != 2:
        raise ValueError(
            f"table must be an embedding table of shape (vocabulary, dim) (got {tuple(table.shape)})"
        )
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Iterable):
        raise TypeError(f"candidates must be a list of token ids (got {type(candidates).__name__})")
    rows = table.shape[0]
    candidates = [check_int(f"candidates[{i}]", t, 0, rows - 1) for i, t in enumerate(candidates)]
    ids = torch.tensor(sorted(set(candidates)), dtype=torch.long)
    if len(ids) <= k:
        raise ValueError(f"need more than k = {k} candidates (got {len(ids)})")
    rows = F.normalize(table[ids].float(), dim=-1)
    out: dict[int, list[int]] = {}
    for start in range(0, len(ids), chunk):
        sim = rows[start : start + chunk] @ rows.T
        sim[
            torch.arange(sim.shape[0]), torch.arange(start, start + sim.shape[0])
        ] = -2.0  # not itself
        top = sim.topk(k, dim=-1).indices
        for i, row in enumerate(top.tolist()):
            out[int(ids[start + i])] = [int(ids[j]) for j in row]
    return out


def neighbour_copies(
    input_ids: Sequence[Sequence[int]],
    neighbours: dict[int, list[int]],
    n_copies: int = 1,
    p_replace: float = 0.3,
    special_ids: Sequence[int] = (101, 102),
    seed: int = 0,
) -> list[list[int]]:
    """`n_copies` variants per example in which each replaceable token is, with probability
    `p_replace`, swapped for one of its embedding-space neighbours (specials never change)."""
    check_int("n_copies", n_copies, 0)
    check_number("p_replace", p_replace, 0.0, 1.0)
    rng = random.Random(check_seed("seed", seed))
    special = set(special_ids)
    out = []
    for ids in check_token_lists("input_ids", input_ids):
        for _ in range(n_copies):
            out.append(
                [
                    rng.choice(neighbours[t])
                    if t not in special and t in neighbours and rng.random() < p_replace
                    else t
                    for t in ids
                ]
            )
    return out


def unique_rows(seqs: Sequence[Sequence[int]], exclude: Iterable[Sequence[int]] = ()) -> list[int]:
    """Positions of the first occurrence of each distinct sequence, leaving out any sequence that
    also occurs in `exclude` (e.g. the validation and test texts)."""
    banned = {tuple(s) for s in exclude}
    seen: set[tuple[int, ...]] = set()
    keep = []
    for i, s in enumerate(seqs):
        key = tuple(s)
        if key in seen or key in banned:
            continue
        seen.add(key)
        keep.append(i)
    return keep


def other_domain_split(
    tokenizer: object, max_length: int, seed: int = 0, domains: Sequence[str] = OTHER_DOMAINS
) -> TextSplit:
    """The train and unlabelled splits of other VADER domains (seeded as chapter 07 cuts them, whose
    validation and test splits are left out), as one split with hidden labels (-1)."""
    parts = []
    for domain in domains:
        if domain == "movies" or domain not in VADER_DOMAINS:
            raise ValueError(f"domains must be among {OTHER_DOMAINS} (got {domain!r})")
        splits = tokenize_splits(load_sentiment(domain, seed=seed), tokenizer, max_length)
        for name in ("train", "unlabeled"):
            part = splits[name]
            parts.append(
                TextSplit(
                    list(part.ids),  # already "domain:row"
                    part.texts,
                    part.input_ids,
                    torch.full((len(part),), -1, dtype=torch.long),
                )
            )
    return concat_splits(*parts)


@dataclass(frozen=True, kw_only=True)
class TransferRecipe:
    """How the large transfer set is made from the real sentences (see build_transfer)."""

    other_domains: bool = True
    #: at most this many of the other domains' sentences (None: all of them)
    other_domain_rows: int | None = None
    tang_copies: int = 8
    neighbour_copies: int = 8
    p_replace: float = 0.3
    k_neighbours: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.other_domains, bool):
            raise TypeError(f"other_domains must be True or False (got {self.other_domains!r})")
        if self.other_domain_rows is not None:
            check_int("other_domain_rows", self.other_domain_rows, 1)
        check_int("tang_copies", self.tang_copies, 0)
        check_int("neighbour_copies", self.neighbour_copies, 0)
        check_number("p_replace", self.p_replace, 0.0, 1.0)
        check_int("k_neighbours", self.k_neighbours, 1)
        check_seed("seed", self.seed)


@dataclass
class TransferSet:
    """The transfer rows, how each was made (`source`: real, masked copies, neighbour copies) and from
    which text (`origin`: movie train, movie pool, other domains), and the labels (-1 but on the real
    movie train rows)."""

    split: TextSplit
    source: list[str]
    origin: list[str]
    labels: torch.Tensor

    def rows_where(
        self, source: Iterable[str] | None = None, origin: Iterable[str] | None = None
    ) -> list[int]:
        """Positions of the rows whose source is in `source` and origin in `origin` (None: any)."""
        for name, wanted, have in (
            ("source", source, self.source),
            ("origin", origin, self.origin),
        ):
            unknown = set(wanted or ()) - set(have)
            if unknown:
                raise ValueError(
                    f"no rows with {name} {sorted(unknown)}; there are {sorted(set(have))}"
                )
        src, org = (
            (None if source is None else set(source)),
            (None if origin is None else set(origin)),
        )
        return [
            i
            for i, (s, o) in enumerate(zip(self.source, self.origin, strict=True))
            if (src is None or s in src) and (org is None or o in org)
        ]


def remap_split(split: TextSplit, vocab: VocabMap) -> TextSplit:
    """The split with its token ids rewritten in the compact vocabulary."""
    return TextSplit(split.ids, split.texts, vocab.remap(split.input_ids), split.gold)


def _tagged(split: TextSplit, tag: str, seqs: list[list[int]], per_row: int) -> TextSplit:
    """New rows `seqs` (per_row of them for each row of `split`, in order) as an unlabelled split."""
    ids = [f"{tag}{k}:{i}" for i in split.ids for k in range(per_row)]
    texts = [t for t in split.texts for _ in range(per_row)]
    return TextSplit(ids, texts, seqs, torch.full((len(seqs),), -1, dtype=torch.long))


def build_transfer(
    splits: Mapping[str, TextSplit],
    tokenizer: object,
    teacher_table: torch.Tensor,
    recipe: TransferRecipe,
    max_length: int,
) -> TransferSet:
    """The movie train and pool snippets, the other domains' sentences (if asked), Tang-style noisy
    copies and embedding-neighbour copies of all of them; exact duplicates and any copy that equals a
    validation or test snippet are dropped. Only the movie train rows keep their labels."""
    mask_id, specials = tokenizer.mask_token_id, tuple(tokenizer.all_special_ids)
    real_parts = [splits["train"], splits["unlabeled"]]
    origins = ["movie train"] * len(splits["train"]) + ["movie pool"] * len(splits["unlabeled"])
    if recipe.other_domains:
        other = other_domain_split(tokenizer, max_length, seed=recipe.seed)
        if recipe.other_domain_rows is not None and recipe.other_domain_rows < len(other):
            other = other.head(recipe.other_domain_rows)
        real_parts.append(other)
        origins += ["other domains"] * len(other)
    real = concat_splits(*real_parts)
    parts, source, origin = [real], ["real"] * len(real), list(origins)
    if recipe.tang_copies:
        seqs = augment_token_ids(
            real.input_ids,
            recipe.tang_copies,
            mask_id=mask_id,
            special_ids=specials,
            seed=recipe.seed,
        )
        parts.append(_tagged(real, "mask", seqs, recipe.tang_copies))
        source += ["masked copies"] * len(seqs)
        origin += [o for o in origins for _ in range(recipe.tang_copies)]
    if recipe.neighbour_copies:
        pieces = {t for s in real.input_ids for t in s} - set(specials)
        near = embedding_neighbours(teacher_table, sorted(pieces), recipe.k_neighbours)
        seqs = neighbour_copies(
            real.input_ids,
            near,
            recipe.neighbour_copies,
            recipe.p_replace,
            special_ids=specials,
            seed=recipe.seed,
        )
        parts.append(_tagged(real, "near", seqs, recipe.neighbour_copies))
        source += ["neighbour copies"] * len(seqs)
        origin += [o for o in origins for _ in range(recipe.neighbour_copies)]
    everything = concat_splits(*parts)
    held_out = splits["validation"].input_ids + splits["test"].input_ids
    keep = unique_rows(everything.input_ids, exclude=held_out)
    split = everything.select(keep)
    n_lab = len(splits["train"])
    labels = torch.full((len(split),), -1, dtype=torch.long)
    labelled = [i for i, k in enumerate(keep) if k < n_lab]  # the real movie train rows come first
    labels[labelled] = splits["train"].gold[[keep[i] for i in labelled]]
    return TransferSet(split, [source[k] for k in keep], [origin[k] for k in keep], labels)


# ---------------------------------------------------------------- the experiment


#: Student sizes per kind: about 2 M parameters with a compact vocabulary of about 16,000 pieces.
HEADLINE_STUDENTS: dict[str, dict[str, Any]] = {
    "cnn": {"embed_dim": 100, "channels": 192, "widths": (2, 3, 4, 5)},
    "bilstm": {"embed_dim": 100, "hidden": 160},
}


@dataclass(frozen=True, kw_only=True)
class HeadlinePlan:
    """One headline run: the transfer recipe, the nested transfer sizes (0: every row), seeds,
    epochs, whether to run the source ablation, how many test snippets to time, the student kind,
    and the learning rate (or a grid of them to choose from on validation)."""

    recipe: TransferRecipe
    sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    epochs: int
    #: leave-one-source-out at one size below every row, against random rows of that size
    ablation: bool = False
    #: that size (one of `sizes`; None: the largest below every row)
    ablation_size: int | None = None
    latency_inputs: int = 200
    kind: str = "cnn"
    lr: float = 1e-3
    #: when given, the learning rate is chosen among these on movie validation accuracy (first seed,
    #: every row) and `lr` is not used
    lr_grid: tuple[float, ...] = ()
    batch_size: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.recipe, TransferRecipe):
            raise TypeError(f"recipe must be a TransferRecipe (got {type(self.recipe).__name__})")
        for name, example in (
            ("sizes", "(6000, 0)"),
            ("seeds", "(0, 1, 2)"),
            ("lr_grid", "(1e-3,)"),
        ):
            value = getattr(self, name)
            if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
                raise TypeError(
                    f"{name} must be a tuple or list, e.g. {name}={example} "
                    f"(got {type(value).__name__} {value!r})"
                )
            object.__setattr__(self, name, tuple(value))  # a list becomes the tuple it stands for
        for i, n in enumerate(self.sizes):
            check_int(f"sizes[{i}]", n, 0)
        if not self.sizes or self.sizes[-1] != 0:
            raise ValueError(f"sizes must end with 0 (every row) (got {self.sizes!r})")
        if len(self.seeds) < 1:
            raise ValueError("seeds must hold at least one seed")
        for i, s in enumerate(self.seeds):
            check_seed(f"seeds[{i}]", s)
        check_int("epochs", self.epochs, 1)
        check_int("latency_inputs", self.latency_inputs, 1)
        if self.kind not in HEADLINE_STUDENTS:
            raise ValueError(f"kind must be one of {sorted(HEADLINE_STUDENTS)} (got {self.kind!r})")
        check_number("lr", self.lr, 0.0, strict_min=True)
        for i, lr in enumerate(self.lr_grid):
            check_number(f"lr_grid[{i}]", lr, 0.0, strict_min=True)
        if len(set(self.lr_grid)) != len(self.lr_grid):
            raise ValueError(f"lr_grid holds a learning rate twice (got {self.lr_grid!r})")
        if self.ablation and len(self.sizes) < 2:
            raise ValueError("ablation needs a size below every row in sizes (e.g. (100_000, 0))")
        if self.ablation_size is not None and self.ablation_size not in self.sizes[:-1]:
            raise ValueError(
                f"ablation_size must be one of the sizes below every row {self.sizes[:-1]} "
                f"(got {self.ablation_size!r})"
            )
        check_int("batch_size", self.batch_size, 1)


#: The plans: `quick` (CI smoke test), `standard` (chapter 06 on a CPU, minutes), `cpu-full` (the
#: committed run of scripts/headline_run.py: about 310,000 rows, the learning rate chosen on
#: validation, the source ablation; about 90 minutes on 2 cores).
HEADLINE_PLANS: dict[str, HeadlinePlan] = {
    "quick": HeadlinePlan(
        recipe=TransferRecipe(other_domain_rows=100, tang_copies=1, neighbour_copies=1),
        sizes=(200, 0), seeds=(0, 1, 2), epochs=1, latency_inputs=40, ablation=True,
        lr_grid=(1e-3, 3e-4),
    ),
    "standard": HeadlinePlan(
        recipe=TransferRecipe(other_domain_rows=3000, tang_copies=1, neighbour_copies=1),
        sizes=(6000, 0), seeds=(0, 1, 2), epochs=4, latency_inputs=200, lr_grid=(1e-3, 3e-4),
    ),
    "full": HeadlinePlan(
        recipe=TransferRecipe(tang_copies=8, neighbour_copies=11),
        sizes=(25_000, 50_000, 100_000, 0), seeds=(0, 1, 2), epochs=8, latency_inputs=400,
        ablation=True, lr_grid=(1e-3, 5e-4, 2.5e-4),
    ),
    "cpu-full": HeadlinePlan(
        recipe=TransferRecipe(tang_copies=8, neighbour_copies=11),
        sizes=(25_000, 50_000, 100_000, 0), seeds=(0, 1, 2), epochs=6, latency_inputs=400,
        ablation=True, ablation_size=50_000, lr_grid=(1e-3, 3e-4),
    ),
}  # fmt: skip


def time_headline(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    teacher_ids: Sequence[Sequence[int]],
    student_ids: Sequence[Sequence[int]],
    n_inputs: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Batch-1 and batch-64 CPU latency of the teacher and the student, interleaved, with the course's
    method: the first `n_inputs` test snippets at batch 1, every whole batch of 64 at batch 64 (each
    model reads its own token ids of the same snippets)."""
    check_int("n_inputs", n_inputs, 1)
    if len(teacher_ids) != len(student_ids):
        raise ValueError(
            f"teacher_ids and student_ids must hold the same snippets (got {len(teacher_ids)} and "
            f"{len(student_ids)} rows)"
        )
    models = {"teacher": teacher, "student": student}
    n = min(n_inputs, len(student_ids))
    lat1 = measure_latency(
        models, {"teacher": teacher_ids[:n], "student": student_ids[:n]}, min_inputs=min(200, n)
    )
    n64 = max(1, len(student_ids) // 64)
    inputs64 = {"teacher": teacher_ids[: n64 * 64], "student": student_ids[: n64 * 64]}
    lat64 = measure_latency(models, inputs64, batch_size=64, warmup=2, min_inputs=n64)
    return lat1, lat64


def run_headline(plan: HeadlinePlan, profile: str, device: torch.device) -> dict[str, Any]:
    """Build and label the transfer set, train the student on nested subsets over the plan's seeds,
    time the student beside the teacher; returns the JSON-ready record chapter 06 shows.

    The teacher, alpha and T are chapter 03's and chapter 05's for `profile`. Each size's rows hold
    every labelled movie row plus the first rows of one seeded shuffle of the others, so the
    subsets are nested. The record's 'headline' is the largest size, averaged over the seeds.
    """
    if not isinstance(plan, HeadlinePlan):
        raise TypeError(f"plan must be a HeadlinePlan (got {type(plan).__name__})")
    started = time.perf_counter()
    settings = course_settings(profile, 0)
    teacher, tokenizer, splits, _, _ = course_teacher(settings, device)
    teacher_acc = split_accuracy(teacher, splits["test"], device)
    table = teacher.get_input_embeddings().weight.detach().cpu()
    t0 = time.perf_counter()
    transfer = build_transfer(splits, tokenizer, table, plan.recipe, settings.max_length)
    build_s = time.perf_counter() - t0
    sources = {
        f"{o}, {s}": len(transfer.rows_where(source=[s], origin=[o]))
        for o in sorted(set(transfer.origin))
        for s in sorted(set(transfer.source))
    }
    name = f"headline-{len(transfer.split)}-{plan.recipe.seed}"
    cached = cache_logits(
        teacher,
        transfer.split.ids,
        transfer.split.input_ids,
        cache_dir(),
        name=name,
        batch_size=128,
        device=device,
    )
    logits, label_s = (
        cached.logits,
        cached.compute_seconds,
    )  # the teacher's own time, also when cached
    vm = compact_vocabulary(
        transfer.split.input_ids,
        tokenizer.vocab_size,
        [0, *tokenizer.all_special_ids],
        tokenizer.unk_token_id,
    )
    ids = vm.remap(transfer.split.input_ids)
    val, test = remap_split(splits["validation"], vm), remap_split(splits["test"], vm)
    alpha, temperature, from_05 = chosen_alpha_temperature(profile)
    sizes = HEADLINE_STUDENTS[plan.kind]
    embeddings = vm.rows_of(project_teacher_embeddings(teacher, sizes["embed_dim"])[0])
    config = StudentConfig(epochs=plan.epochs, lr=plan.lr, batch_size=plan.batch_size)
    labelled = (transfer.labels >= 0).nonzero().flatten().tolist()
    g = torch.Generator().manual_seed(0)
    is_labelled = set(labelled)
    others = [i for i in torch.randperm(len(ids), generator=g).tolist() if i not in is_labelled]

    def first_rows(n: int, allowed: Iterable[int] | None = None) -> list[int]:
        """Every labelled row plus the first of the shuffled others (those in `allowed`) up to n rows
        (n = 0: all of them); nested in n, and the same shuffle for every source variant."""
        keep = None if allowed is None else set(allowed)
        pool = others if keep is None else [i for i in others if i in keep]
        return labelled + (pool if n == 0 else pool[: max(0, n - len(labelled))])

    def train(
        rows: list[int], seed: int, lr: float, desc: str
    ) -> tuple[float, dict, torch.nn.Module]:
        """Test accuracy, history and model of a fresh student trained on the transfer rows `rows`."""
        model = make_student(plan.kind, vm.size, embeddings, seed=seed, **sizes)
        data = TextExamples([ids[i] for i in rows], transfer.labels[rows], logits[rows])
        loss = make_kd_loss(alpha, temperature)
        hist = train_student(model, data, val, loss, device, config.replace(seed=seed, lr=lr), desc)
        return split_accuracy(model, test, device), hist, model

    first = plan.seeds[0]
    lr, lr_search, reuse = plan.lr, [], None
    if plan.lr_grid:  # chosen on movie validation accuracy, at every row, with the first seed
        tried = {
            cand: train(first_rows(0), first, cand, f"lr {cand:g}, every row, seed {first}")
            for cand in plan.lr_grid
        }
        lr_search = [
            {"lr": cand, "best_val_accuracy": hist["best_val_accuracy"],
             "best_epoch": hist["best_epoch"], "epoch_limit": plan.epochs}
            for cand, (_, hist, _) in tried.items()
        ]  # fmt: skip
        lr = best_on_validation({cand: hist for cand, (_, hist, _) in tried.items()})
        reuse = tried[lr]  # the chosen run is the first seed's run at every row

    variants = {
        "without the other domains": transfer.rows_where(origin=["movie train", "movie pool"]),
        "without neighbour copies": transfer.rows_where(source=["real", "masked copies"]),
        "without masked copies": transfer.rows_where(source=["real", "neighbour copies"]),
    }
    sizes_to_run = [n for n in plan.sizes if n == 0 or n < len(ids)]
    ablation_rows = 0
    if plan.ablation:  # every variant at one size, against random rows of all sources at that size
        below = [n for n in sizes_to_run if n] or [len(ids) // 2]
        wanted = plan.ablation_size if plan.ablation_size in below else below[-1]
        ablation_rows = min(wanted, *(len(first_rows(0, r)) for r in variants.values()))
        sizes_to_run = sorted({*below, ablation_rows}) + [0]
    curve, models, by_size = [], {}, {}
    for n in sizes_to_run:
        rows = first_rows(n)
        point = {"rows": len(rows), "accuracy": {}, "best_epoch": {}, "epoch_limit": plan.epochs}
        for seed in plan.seeds:
            if n == 0 and seed == first and reuse is not None:
                acc, hist, model = reuse
            else:
                acc, hist, model = train(rows, seed, lr, f"{len(rows)} rows, seed {seed}")
            point["accuracy"][seed], point["best_epoch"][seed] = acc, hist["best_epoch"]
            if n == 0:
                models[seed] = model
        curve.append(point)
        by_size[n] = point
    per_seed = curve[-1]["accuracy"]
    mean = over_seeds(per_seed) if len(per_seed) > 1 else None
    mean_acc = mean.mean if mean is not None else next(iter(per_seed.values()))
    comparisons, ablation = [], []
    if plan.ablation:
        control = by_size[ablation_rows]
        for variant, allowed in variants.items():
            rows = first_rows(ablation_rows, allowed)
            runs = {
                seed: train(rows, seed, lr, f"{variant}, {len(rows)} rows, seed {seed}")[:2]
                for seed in plan.seeds
            }
            accs = {seed: acc for seed, (acc, _) in runs.items()}
            ablation.append(
                {"variant": variant, "rows": len(rows), "accuracy": accs,
                 "best_epoch": {seed: hist["best_epoch"] for seed, (_, hist) in runs.items()},
                 "epoch_limit": plan.epochs}
            )  # fmt: skip
            comparisons.append(
                compare_seeds(
                    f"all sources vs {variant} ({control['rows']:,} rows each)",
                    control["accuracy"],
                    accs,
                ).as_dict()
            )
    student = models[plan.seeds[0]].to("cpu")
    checkpoint = f"headline-{plan.kind}-{len(ids)}-seed{plan.seeds[0]}"
    save_checkpoint(
        student,
        checkpoints_dir() / checkpoint,
        {"kind": plan.kind, "sizes": sizes, "kept": list(vm.kept), "unk": vm.unk,
         "teacher_size": vm.teacher_size, "profile": profile},
    )  # fmt: skip
    cpu_teacher = teacher.to("cpu")
    lat1, lat64 = time_headline(
        cpu_teacher, student, splits["test"].input_ids, test.input_ids, plan.latency_inputs
    )
    n_student, n_teacher = count_parameters(student), count_parameters(cpu_teacher)
    return {
        "date": dt.date.today().isoformat(),
        "profile": profile,
        "plan": {**asdict(plan), "recipe": asdict(plan.recipe)},
        "lr": lr,
        "lr_search": lr_search,
        "ablation_rows": ablation_rows,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "threads": lat1["teacher"].threads},
        "teacher_accuracy": teacher_acc,
        "alpha": alpha,
        "temperature": temperature,
        "alpha_temperature_from_chapter_05": from_05,
        "transfer_rows": len(ids),
        "sources": sources,
        "build_seconds": build_s,
        "labelling_seconds": label_s,
        "labelled_now": not cached.from_cache,
        "seconds": time.perf_counter() - started,
        "vocabulary": vm.size,
        "student": {"kind": plan.kind, **sizes, "parameters": n_student},
        "student_checkpoint": checkpoint,
        "curve": curve,
        "ablation": ablation,
        "comparisons": comparisons,
        "headline": {
            "of_teacher": mean_acc / teacher_acc,
            "accuracy_mean": mean_acc,
            "accuracy_std": mean.std if mean is not None else None,
            "per_seed": per_seed,
            "fewer_params": n_teacher / n_student,
            "speedup_b1": speedup(lat1["teacher"], lat1["student"]),
            "speedup_b64": speedup(lat64["teacher"], lat64["student"]),
            "latency": {m: {"b1": lat1[m].as_dict(), "b64": lat64[m].as_dict()} for m in lat1},
        },
    }  # fmt: skip


def load_headline_run(path: Path | None = None) -> dict[str, Any] | None:
    """The committed headline run (benchmarks/headline.json by default), or None when there is none."""
    path = benchmarks_dir() / "headline.json" if path is None else Path(path)
    if not path.exists():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    missing = {"headline", "curve", "teacher_accuracy", "transfer_rows"} - set(record)
    if missing:
        raise ValueError(f"{path} is not a headline run: it lacks {sorted(missing)}")
    return record


@dataclass(frozen=True)
class HeadlineChoice:
    """The committed headline run chosen on validation: its file, its record, and every candidate's
    best movie-validation accuracy (file name -> accuracy), the only number the choice reads."""

    path: Path
    record: dict[str, Any]
    validation: dict[str, float]


def choose_headline_run(paths: Sequence[Path] | None = None) -> HeadlineChoice | None:
    """The committed headline run (benchmarks/headline*.json by default) whose student reached the
    best movie-validation accuracy in its learning-rate search; None when there is none. Test
    accuracy plays no part; on a tie the first path (sorted by name) wins."""
    if paths is None:
        paths = sorted(benchmarks_dir().glob("headline*.json"))
    records = {Path(p): load_headline_run(Path(p)) for p in paths}
    validation: dict[Path, float] = {}
    for path, record in records.items():
        if record is None:
            raise FileNotFoundError(f"paths holds {path}, which does not exist")
        if not record.get("lr_search"):
            raise ValueError(
                f"{path} has no lr_search: without a validation accuracy it cannot be compared"
            )
        validation[path] = max(float(r["best_val_accuracy"]) for r in record["lr_search"])
        if math.isnan(validation[path]):
            raise ValueError(f"{path} has a NaN validation accuracy")
    if not validation:
        return None
    first = next(iter(records.values()))
    for path, record in records.items():
        for key in ("profile", "teacher_accuracy"):
            if record.get(key) != first.get(key):
                raise ValueError(
                    f"{path} differs from {next(iter(records))} in {key} ({record.get(key)!r} vs "
                    f"{first.get(key)!r}): only runs of the same teacher and profile compare"
                )
    best = max(validation, key=validation.__getitem__)  # max keeps the first of equal values
    return HeadlineChoice(best, records[best], {p.name: v for p, v in validation.items()})


def retime_headline(record: Mapping[str, Any], note: str, repeats: int = 3) -> dict[str, Any]:
    """A copy of a headline run's record with its latency measured again on this machine, now:
    `repeats` independent `time_headline` measurements (the run's own number of inputs) of the
    seed-0 student from its checkpoint beside chapter 03's teacher for the run's profile; the
    headline speed-ups become the median over the repeats. Every measurement stays in
    'latency_history' (date, speed-ups, each repeat's speed-ups and its medians at batch 1 and 64,
    `note`: what was different), the training run's own first."""
    if not isinstance(note, str) or not note.strip():
        raise ValueError("note must say what differs in this measurement (e.g. 'alone, 1 thread')")
    repeats = check_int("repeats", repeats, 1)
    loaded = load_headline_student(record)
    if loaded is None:
        raise FileNotFoundError(
            f"the checkpoint {record.get('student_checkpoint')!r} is not on this machine"
        )
    student, vm = loaded
    cpu = torch.device("cpu")
    profile = record.get("profile", "standard")
    teacher, _, splits, _, _ = course_teacher(course_settings(profile, 0), cpu)
    test = splits["test"]
    student_ids = remap_split(test, vm).input_ids
    n = int(record["plan"]["latency_inputs"])
    teacher = teacher.to(cpu).eval()
    timed = [
        time_headline(teacher, student, test.input_ids, student_ids, n) for _ in range(repeats)
    ]
    b1 = [speedup(lat1["teacher"], lat1["student"]) for lat1, _ in timed]
    b64 = [speedup(lat64["teacher"], lat64["student"]) for _, lat64 in timed]
    middle = sorted(range(repeats), key=b1.__getitem__)[repeats // 2]  # the median repeat, batch 1
    middle64 = sorted(range(repeats), key=b64.__getitem__)[repeats // 2]  # and at batch 64
    lat1, lat64 = timed[middle][0], timed[middle64][1]
    old = record["headline"]
    history = list(old.get("latency_history") or [
        {"date": record.get("date"), "speedup_b1": old["speedup_b1"],
         "speedup_b64": old["speedup_b64"], "note": "the run that trained the student"}
    ])  # fmt: skip
    new = {**record, "machine": {**record["machine"], "threads": lat1["teacher"].threads}}
    new["headline"] = {
        **old,
        "speedup_b1": b1[middle],
        "speedup_b64": b64[middle64],
        "latency": {m: {"b1": lat1[m].as_dict(), "b64": lat64[m].as_dict()} for m in lat1},
    }
    new["headline"]["latency_history"] = [
        *history,
        {"date": dt.date.today().isoformat(), "speedup_b1": b1[middle],
         "speedup_b64": b64[middle64], "note": note.strip(),
         "repeats": [{"speedup_b1": b1[i], "speedup_b64": b64[i],
                      "median_ms_b1": {m: timed[i][0][m].median_ms for m in timed[i][0]},
                      "median_ms_b64": {m: timed[i][1][m].median_ms for m in timed[i][1]}}
                     for i in range(repeats)]},
    ]  # fmt: skip
    return new


def load_headline_student(record: Mapping[str, Any]) -> tuple[torch.nn.Module, VocabMap] | None:
    """The headline run's seed-0 student (CPU, eval mode) and its compact vocabulary, from the
    checkpoint the run saved; None when this machine does not hold it (run scripts/headline_run.py)."""
    name = record.get("student_checkpoint")
    if not name:
        return None
    what = "record['student_checkpoint']"
    folder = checkpoints_dir()
    stem = inside(folder, name, what)
    files = checkpoint_paths(stem)
    for path in files:  # neither file may be a symlink out of the checkpoint folder
        check_inside(folder, path, what)
    if not files[0].exists():
        return None
    config = checkpoint_config(stem)  # the sizes, to build the model first
    vm = VocabMap(tuple(config["kept"]), config["unk"], config["teacher_size"])
    sizes = {k: tuple(v) if isinstance(v, list) else v for k, v in config["sizes"].items()}
    model = make_student(config["kind"], vm.size, None, seed=0, **sizes)
    load_checkpoint(model, stem)
    return model.eval(), vm
