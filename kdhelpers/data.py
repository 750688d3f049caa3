"""Sentiment data for the course: the VADER human-rated corpora as splits (and hub data sets online).

The corpora of Hutto & Gilbert (ICWSM 2014) ship inside the source distribution of
``vaderSentiment==3.3.2`` (MIT licence); ``kdhelpers.fetch`` downloads and verifies them.
``load_vader_corpus`` parses one domain and ``load_sentiment`` turns it into
``train`` / ``unlabeled`` / ``validation`` / ``test`` splits.

    python -m kdhelpers.data fetch            # CI calls this; prints where the data is
    python -m kdhelpers.data fetch --sdist ~/Downloads/vaderSentiment-3.3.2.tar.gz   # offline
    python -m kdhelpers.data info             # rows and labels per domain
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from kdhelpers.fetch import (
    VADER_SDIST_NAME,
    VADER_SUBDIR,
    DataFetchError,
    HubUnavailableError,
    _resolve_root,
    fetch_vader_corpora,
)
from kdhelpers.hub import hub_offline_reason
from kdhelpers.paths import UnwritableFolderError
from kdhelpers.validate import check_seed

if TYPE_CHECKING:
    import datasets


VADER_DOMAINS = ("movies", "tweets", "amazon", "nyt")
_FILE_STEMS = MappingProxyType(
    {
        "movies": "movieReviewSnippets",
        "tweets": "tweets",
        "amazon": "amazonReviewSnippets",
        "nyt": "nytEditorialSnippets",
    }
)

#: Hugging Face Hub data sets reachable through ``load_sentiment`` when online.
HUB_DOMAINS = MappingProxyType(
    {
        "rotten_tomatoes": "cornell-movie-review-data/rotten_tomatoes",
        "sst2": "stanfordnlp/sst2",
    }
)
HUB_PROBE_TIMEOUT_S = 2.0

SPLIT_NAMES = ("train", "unlabeled", "validation", "test")
LABEL_NAMES = ("negative", "positive")
#: Seed of the fixed permutation that picks validation and test (independent of `seed`).
HELDOUT_SEED = 2014


class SplitSizes(NamedTuple):
    """Rows in the labelled splits; `unlabeled` gets every remaining row."""

    train: int
    validation: int
    test: int


#: Default sizes (after dropping neutral rows): test ~19 %, validation and train ~10 % each,
#: the remaining ~60 % unlabeled (the transfer pool a teacher labels).
DEFAULT_SPLIT_SIZES: MappingProxyType[str, SplitSizes] = MappingProxyType(
    {
        "movies": SplitSizes(train=1000, validation=1000, test=2000),  # of 10,568
        "tweets": SplitSizes(train=400, validation=400, test=800),  # of 4,196
        "amazon": SplitSizes(train=350, validation=350, test=700),  # of 3,610
        "nyt": SplitSizes(train=500, validation=500, test=1000),  # of 4,946
        "rotten_tomatoes": SplitSizes(
            train=1000, validation=1066, test=1066
        ),  # the hub's own val/test
        "sst2": SplitSizes(
            train=1000, validation=872, test=872
        ),  # test = the hub's validation split
    }
)


# ----------------------------------------------------------------------------- fetching


# ----------------------------------------------------------------------------- parsing


def _decode_line(raw: bytes) -> str:
    """Decode one line: UTF-8, else Windows-1252, else Latin-1 (never fails)."""
    for encoding in ("utf-8", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def _text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the non-blank lines of a file, robust to BOMs, CR/LF and encodings."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    lines = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = _decode_line(raw).lstrip("\ufeff")
        if line.strip():
            lines.append((number, line))
    return lines


def _read_ground_truth(path: Path) -> list[tuple[str, float, str]]:
    """(id, mean score, text) rows of a `*_GroundTruth.txt` file (tab separated)."""
    rows = []
    for number, line in _text_lines(path):
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise ValueError(f"{path.name}:{number}: expected id<TAB>score<TAB>text, got {line!r}")
        ident, score, text = parts
        try:
            rows.append((ident.strip(), float(score), text.strip()))
        except ValueError:
            raise ValueError(f"{path.name}:{number}: bad score {score!r}") from None
    return rows


def _read_ratings(path: Path) -> dict[str, list[int]]:
    """id -> individual human ratings of a `*_anonDataRatings.txt` file."""
    ratings: dict[str, list[int]] = {}
    for number, line in _text_lines(path):
        parts = line.split("\t")
        if len(parts) < 4:
            raise ValueError(f"{path.name}:{number}: expected 4 tab-separated fields")
        body = parts[3].strip().strip("[]")
        try:
            values = [float(item) for item in body.split(",") if item.strip()]
        except ValueError:
            raise ValueError(f"{path.name}:{number}: bad ratings {parts[3]!r}") from None
        if not values or any(v != int(v) or not -4 <= v <= 4 for v in values):
            raise ValueError(f"{path.name}:{number}: ratings must be integers in [-4, 4]")
        ratings[parts[0].strip()] = [int(v) for v in values]
    return ratings


def _check_domain(domain: str) -> None:
    """Raise TypeError/ValueError unless `domain` is the name of a known VADER or Hub domain."""
    if not isinstance(domain, str):
        kind = type(domain).__name__
        raise TypeError(
            f"domain must be one domain name such as 'movies' (got a {kind}: {domain!r}); "
            "load several domains with one call each"
        )
    if domain not in VADER_DOMAINS and domain not in HUB_DOMAINS:
        valid = ", ".join(repr(d) for d in (*VADER_DOMAINS, *HUB_DOMAINS))
        raise ValueError(f"unknown sentiment domain {domain!r}; valid domains: {valid}")


def _vader_columns(domain: str, data_dir: Path | str | None) -> dict[str, list[Any]]:
    """All rows of one VADER domain as columns id, text, score, rater_scores (file order)."""
    folder = fetch_vader_corpora(data_dir)
    stem = _FILE_STEMS[domain]
    truth = _read_ground_truth(folder / f"{stem}_GroundTruth.txt")
    ratings = _read_ratings(folder / f"{stem}_anonDataRatings.txt")
    missing = [ident for ident, _, _ in truth if ident not in ratings]
    if missing:
        raise ValueError(f"{stem}_anonDataRatings.txt lacks ids {missing[:5]} ({len(missing)})")
    return {
        "id": [f"{domain}:{ident}" for ident, _, _ in truth],
        "text": [text for _, _, text in truth],
        "score": [score for _, score, _ in truth],
        "rater_scores": [ratings[ident] for ident, _, _ in truth],
    }


def _features(with_label: bool) -> datasets.Features:
    """The column types of the data sets this module returns."""
    import datasets

    list_type = getattr(datasets, "List", None) or datasets.Sequence
    columns: dict[str, Any] = {"id": datasets.Value("string"), "text": datasets.Value("string")}
    if with_label:
        columns["label"] = datasets.ClassLabel(names=list(LABEL_NAMES))
    columns["score"] = datasets.Value("float64")
    columns["rater_scores"] = list_type(datasets.Value("int8"))
    return datasets.Features(columns)


def load_vader_corpus(domain: str, data_dir: Path | str | None = None) -> datasets.Dataset:
    """Every row of one VADER corpus in file order (neutral rows included), without labels."""
    _check_domain(domain)
    if domain not in VADER_DOMAINS:
        raise ValueError(f"{domain!r} is not a VADER corpus; use one of {list(VADER_DOMAINS)}")
    import datasets

    return datasets.Dataset.from_dict(_vader_columns(domain, data_dir), features=_features(False))


# ----------------------------------------------------------------------------- splitting


def _check_size(name: str, value: object) -> int:
    """Validate a non-negative int split size."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a non-negative int or None (got {value!r})")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 (got {value})")
    return int(value)


def _group_key(text: str) -> str:
    """Texts equal up to case and whitespace land in the same split."""
    return " ".join(text.casefold().split())


def _take(
    groups: list[list[int]], order: Sequence[int], n: int, split: str
) -> tuple[list[int], list[int]]:
    """Walk `order`, taking whole groups while they fit into `n` rows; return (rows, leftover)."""
    rows: list[int] = []
    leftover: list[int] = []
    for g in order:
        if len(rows) + len(groups[g]) <= n:
            rows.extend(groups[g])
        else:
            leftover.append(g)
    if len(rows) != n:
        raise ValueError(
            f"cannot fill {split} with exactly {n} rows ({len(rows)} possible): rows with "
            "identical text stay together; choose a slightly smaller size"
        )
    return rows, leftover  # in the walk's (random) order: no split is sorted by source or score


def _assign_splits(texts: Sequence[str], sizes: SplitSizes, seed: int) -> dict[str, list[int]]:
    """Row indices per split: test and validation from a fixed permutation, train by `seed`."""
    by_key: dict[str, list[int]] = {}
    for index, text in enumerate(texts):
        by_key.setdefault(_group_key(text), []).append(index)
    groups = list(by_key.values())
    heldout_order = np.random.default_rng(HELDOUT_SEED).permutation(len(groups)).tolist()
    test, rest = _take(groups, heldout_order, sizes.test, "test")
    validation, rest = _take(groups, rest, sizes.validation, "validation")
    pool = sorted(rest)  # the same set for every seed and n_train
    pool_order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    train, rest = _take(groups, pool_order, sizes.train, "train")
    unlabeled = [i for g in rest for i in groups[g]]
    return {"train": train, "unlabeled": unlabeled, "validation": validation, "test": test}


def _resolve_sizes(
    domain: str,
    available: int,
    n_train: int | None,
    n_validation: int | None,
    n_test: int | None,
    what: str,
) -> SplitSizes:
    """Defaults filled in and checked against the `available` rows."""
    default = DEFAULT_SPLIT_SIZES[domain]
    sizes = SplitSizes(
        train=default.train if n_train is None else _check_size("n_train", n_train),
        validation=(
            default.validation
            if n_validation is None
            else _check_size("n_validation", n_validation)
        ),
        test=default.test if n_test is None else _check_size("n_test", n_test),
    )
    if sum(sizes) > available:
        raise ValueError(
            f"n_train + n_validation + n_test = {sizes.train} + {sizes.validation} + "
            f"{sizes.test} = {sum(sizes)}, but {domain!r} has only {available} {what}"
        )
    return sizes


def load_sentiment(
    domain: str = "movies",
    seed: int = 0,
    n_train: int | None = None,
    n_validation: int | None = None,
    n_test: int | None = None,
    data_dir: Path | str | None = None,
) -> datasets.DatasetDict:
    """Binary sentiment splits train / unlabeled / validation / test for one domain.

    Domains: 'movies', 'tweets', 'amazon', 'nyt' (the VADER corpora, fetched on first use) and,
    online only, 'rotten_tomatoes' and 'sst2' from the Hugging Face Hub. Columns: id (stable,
    e.g. 'movies:123'), text, label (1 if the mean human score > 0, 0 if < 0; rows scoring exactly
    0 are dropped), score (that mean, -4..4) and rater_scores (the individual ratings). Hub data
    sets have score None and no rater_scores.

    `unlabeled` is the rest of the pool, meant to be labelled by a teacher. Its `label`, `score`
    and `rater_scores` columns are kept only for analysis: training code must not use them.
    Sizes default to DEFAULT_SPLIT_SIZES[domain]; `unlabeled` gets every remaining row. Test and
    validation come from a fixed permutation (HELDOUT_SEED), so they are the same for every
    `seed` and `n_train`; `seed` draws train from the remaining pool (nested across n_train).
    Rows with identical text always share a split. Each split comes in a seeded random order (the
    source files are sorted by score), so its first rows are a fair sample of it.
    """
    _check_domain(domain)
    seed = check_seed("seed", seed)
    if domain in HUB_DOMAINS:
        return _load_hub(domain, seed, n_train, n_validation, n_test)
    import datasets

    columns = _vader_columns(domain, data_dir)
    keep = [i for i, score in enumerate(columns["score"]) if score != 0]
    neutral = len(columns["score"]) - len(keep)
    columns = {name: [values[i] for i in keep] for name, values in columns.items()}
    labels = [int(score > 0) for score in columns["score"]]
    columns = {
        "id": columns["id"],
        "text": columns["text"],
        "label": labels,
        "score": columns["score"],
        "rater_scores": columns["rater_scores"],
    }
    what = f"labelled rows ({neutral} rows with mean score 0 dropped)"
    sizes = _resolve_sizes(domain, len(keep), n_train, n_validation, n_test, what)
    full = datasets.Dataset.from_dict(columns, features=_features(True))
    indices = _assign_splits(columns["text"], sizes, seed)
    return datasets.DatasetDict({name: full.select(indices[name]) for name in SPLIT_NAMES})


# ----------------------------------------------------------------------------- Hugging Face Hub


def _hub_unreachable_reason() -> str | None:
    """Why the Hub cannot be used right now (offline env or failed quick probe), else None."""

    return hub_offline_reason(timeout_s=HUB_PROBE_TIMEOUT_S)


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Disable datasets' progress bars for the duration, then restore the previous setting."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


_HUB_ALTERNATIVE = (
    "Use the packaged corpus instead: load_sentiment('movies') (VADER movie-review "
    "snippets, fetched from PyPI with `python -m kdhelpers.data fetch`)."
)


def _hub_dataset(domain: str) -> datasets.DatasetDict:
    """The hub's data set for `domain`; HubUnavailableError (naming the offline corpus) on failure."""
    reason = _hub_unreachable_reason()
    import datasets

    # in datasets' own offline mode load_dataset only reads its cache, which is quick to try
    if reason is not None and not getattr(datasets.config, "HF_HUB_OFFLINE", False):
        raise HubUnavailableError(
            f"{domain!r} comes from the Hugging Face Hub, which cannot be used: {reason}. "
            f"{_HUB_ALTERNATIVE}"
        )
    try:
        with _quiet_progress_bars():
            return datasets.load_dataset(HUB_DOMAINS[domain])
    except Exception as exc:  # any failure: re-raised with the offline alternative
        message = f"loading {domain!r} from the Hub failed: {exc}. {_HUB_ALTERNATIVE}"
        raise HubUnavailableError(message) from exc


def _hub_split(
    hub: datasets.DatasetDict, domain: str, split: str, rows: Sequence[int] | None = None
) -> datasets.Dataset:
    """Rows of one hub split (all when None) in the VADER splits' columns."""
    import datasets

    text_column = "sentence" if domain == "sst2" else "text"
    part = hub[split] if rows is None else hub[split].select(rows)
    ids = [f"{domain}:{split}:{i}" for i in (range(len(part)) if rows is None else rows)]
    return datasets.Dataset.from_dict(
        {
            "id": ids,
            "text": list(part[text_column]),
            "label": [int(v) for v in part["label"]],
            "score": [None] * len(part),
            "rater_scores": [[] for _ in range(len(part))],
        },
        features=_features(True),
    )


def _load_hub(
    domain: str, seed: int, n_train: int | None, n_validation: int | None, n_test: int | None
) -> datasets.DatasetDict:
    """rotten_tomatoes / sst2 from the Hub, in the same split layout and columns as VADER."""
    import datasets

    hub = _hub_dataset(domain)
    if domain == "sst2":  # the hub's test labels are hidden: its validation split is our test
        pool_split, test_split, val_split = "train", "validation", None
    else:
        pool_split, test_split, val_split = "train", "test", "validation"
    fixed = {"test": len(hub[test_split])}
    if val_split is not None:
        fixed["validation"] = len(hub[val_split])
    for name, value in (("n_test", n_test), ("n_validation", n_validation)):
        split = name[2:]
        if value is not None and split in fixed and value != fixed[split]:
            raise ValueError(f"{name} is fixed at {fixed[split]} for {domain!r} (the hub's split)")
    n_pool = len(hub[pool_split])
    if val_split is not None:
        n_val_carved = 0
    elif n_validation is None:
        n_val_carved = DEFAULT_SPLIT_SIZES[domain].validation
    else:
        n_val_carved = _check_size("n_validation", n_validation)
    sizes = _resolve_sizes(
        domain, n_pool, n_train, n_val_carved, 0, f"rows in the hub's {pool_split} split"
    )
    text_column = "sentence" if domain == "sst2" else "text"
    indices = _assign_splits(list(hub[pool_split][text_column]), sizes, seed)
    return datasets.DatasetDict(
        {
            "train": _hub_split(hub, domain, pool_split, indices["train"]),
            "unlabeled": _hub_split(hub, domain, pool_split, indices["unlabeled"]),
            "validation": (
                _hub_split(hub, domain, val_split)
                if val_split is not None
                else _hub_split(hub, domain, pool_split, indices["validation"])
            ),
            "test": _hub_split(hub, domain, test_split),
        }
    )


# ----------------------------------------------------------------------------- command line


def positive_rater_share(rater_scores: Sequence[Sequence[int]]) -> np.ndarray:
    """Per snippet, the share of non-zero human ratings that are positive (0.5 when every rating is 0)."""
    out = np.empty(len(rater_scores))
    for i, scores in enumerate(rater_scores):
        nonzero = [s for s in scores if s != 0]
        out[i] = np.mean([s > 0 for s in nonzero]) if nonzero else 0.5
    return out


def vader_summary(data_dir: Path | str | None = None) -> list[dict[str, int | str]]:
    """Rows, neutral rows, labels and default split sizes per VADER domain."""
    summary: list[dict[str, int | str]] = []
    for domain in VADER_DOMAINS:
        scores = np.asarray(_vader_columns(domain, data_dir)["score"])
        sizes = DEFAULT_SPLIT_SIZES[domain]
        labelled = int((scores != 0).sum())
        summary.append(
            {
                "domain": domain,
                "rows": int(scores.size),
                "neutral": int((scores == 0).sum()),
                "positive": int((scores > 0).sum()),
                "negative": int((scores < 0).sum()),
                "train": sizes.train,
                "validation": sizes.validation,
                "test": sizes.test,
                "unlabeled": labelled - sum(sizes),
            }
        )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kdhelpers.data fetch|info`: fetch the VADER corpora or print counts."""
    parser = argparse.ArgumentParser(
        prog="python -m kdhelpers.data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download and verify the VADER corpora")
    fetch.add_argument(
        "--sdist",
        type=Path,
        default=None,
        help=f"use a local {VADER_SDIST_NAME} instead of pip download",
    )
    info = commands.add_parser("info", help="print rows and labels per domain")
    for sub in (fetch, info):
        sub.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="data folder (default: kdhelpers.paths.data_dir(), env KD_DATA_DIR)",
        )
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch_vader_corpora(args.data_dir, sdist_path=args.sdist))
            return 0
        rows = vader_summary(args.data_dir)
    except (DataFetchError, UnwritableFolderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"VADER corpora in {_resolve_root(args.data_dir) / VADER_SUBDIR}")
    header = list(rows[0])
    print("  ".join(f"{h:>10}" for h in header))
    for row in rows:
        print("  ".join(f"{row[h]:>10}" for h in header))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
