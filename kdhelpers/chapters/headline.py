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

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdhelpers.augment import augment_token_ids
from kdhelpers.chapters.recipes import TextSplit, concat_splits, tokenize_splits
from kdhelpers.data import VADER_DOMAINS, load_sentiment
from kdhelpers.validate import check_int, check_number, check_seed, check_token_lists

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
