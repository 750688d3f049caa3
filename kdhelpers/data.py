"""Sentiment data for the course: the VADER human-rated corpora, fetched from PyPI, as splits.

The corpora of Hutto & Gilbert (ICWSM 2014) ship inside the source distribution of
``vaderSentiment==3.3.2`` (MIT licence). ``fetch_vader_corpora`` downloads that sdist with pip in
hash-checking mode (the recorded sha256 is checked before pip unpacks or runs anything in it),
checks it again and extracts only the corpora; ``load_sentiment`` turns one domain into
``train`` / ``unlabeled`` / ``validation`` / ``test`` splits.

    python -m kdhelpers.data fetch            # CI calls this; prints where the data is
    python -m kdhelpers.data fetch --sdist ~/Downloads/vaderSentiment-3.3.2.tar.gz   # offline
    python -m kdhelpers.data info             # rows and labels per domain
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from kdhelpers import paths
from kdhelpers.folders import STALE_AFTER_S, UnwritableFolderError, ensure_folder, unwritable_error
from kdhelpers.hub import hub_offline_reason

try:  # POSIX; elsewhere the atomic rename alone keeps concurrent fetches safe
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import datasets

VADER_REQUIREMENT = "vaderSentiment==3.3.2"
VADER_SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
VADER_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_INNER_SHA256 = "d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa"
VADER_SUBDIR = "vader"
MANIFEST_NAME = "manifest.json"

_INNER_PREFIX = "hutto_ICWSM_2014/"
_LOCK_NAME = ".vader.lock"
_STAGING_PREFIX = ".vader-staging-"
_OLD_PREFIX = ".vader-old-"
DATA_ENV = "KD_DATA_DIR"
_PIP_KILL_GRACE_S = 5.0

#: sha256 of every file extracted from the inner archive (the manifest must agree).
VADER_FILES: MappingProxyType[str, str] = MappingProxyType({
    "movieReviewSnippets_GroundTruth.txt":
        "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350",
    "movieReviewSnippets_anonDataRatings.txt":
        "658a086bc7239b98b750baa232cab80e6447789020f96a6c847cc1248d7c82f4",
    "tweets_GroundTruth.txt":
        "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f",
    "tweets_anonDataRatings.txt":
        "390d6f8f1b5c7e6f9f94ad7fea1e461ed718312d1856ae71c5812ab8ae943fa6",
    "amazonReviewSnippets_GroundTruth.txt":
        "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2",
    "amazonReviewSnippets_anonDataRatings.txt":
        "d7d909adab91e0b4d5084251fc825f15baff66277c52eaa705b40fc464fa274b",
    "nytEditorialSnippets_GroundTruth.txt":
        "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e",
    "nytEditorialSnippets_anonDataRatings.txt":
        "803c87c5bb529334bb5ed5fca244aa935e5f342bc0a930d91a0f22e978ee39f2",
})

VADER_DOMAINS = ("movies", "tweets", "amazon", "nyt")
_FILE_STEMS = MappingProxyType({
    "movies": "movieReviewSnippets",
    "tweets": "tweets",
    "amazon": "amazonReviewSnippets",
    "nyt": "nytEditorialSnippets",
})

#: Hugging Face Hub data sets reachable through ``load_sentiment`` when online.
HUB_DOMAINS = MappingProxyType({
    "rotten_tomatoes": "cornell-movie-review-data/rotten_tomatoes",
    "sst2": "stanfordnlp/sst2",
})
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
DEFAULT_SPLIT_SIZES: MappingProxyType[str, SplitSizes] = MappingProxyType({
    "movies": SplitSizes(train=1000, validation=1000, test=2000),  # of 10,568
    "tweets": SplitSizes(train=400, validation=400, test=800),  # of 4,196
    "amazon": SplitSizes(train=350, validation=350, test=700),  # of 3,610
    "nyt": SplitSizes(train=500, validation=500, test=1000),  # of 4,946
    "rotten_tomatoes": SplitSizes(train=1000, validation=1066, test=1066),  # the hub's own val/test
    "sst2": SplitSizes(train=1000, validation=872, test=872),  # test = the hub's validation split
})


class DataFetchError(RuntimeError):
    """Data could not be obtained; the message says what to do about it."""


class ChecksumMismatchError(DataFetchError):
    """A downloaded or extracted file does not have the recorded sha256."""


class HubUnavailableError(DataFetchError):
    """A Hugging Face Hub data set was requested but the Hub cannot be used."""


# ----------------------------------------------------------------------------- fetching


def _sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a bytes object."""
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _resolve_root(data_dir: Path | str | None) -> Path:
    """The data folder: `data_dir` if given (created), else kdhelpers.paths.data_dir()."""
    if data_dir is not None:
        return ensure_folder(data_dir, DATA_ENV, "data", argument=f"data_dir={str(data_dir)!r}")
    try:
        return paths.data_dir()
    except OSError as exc:
        chosen = os.environ.get(DATA_ENV) or str(paths.project_root() / "data")
        raise unwritable_error(Path(chosen).expanduser(), DATA_ENV, "data", exc) from exc


def vader_is_fetched(data_dir: Path | str | None = None) -> bool:
    """True when `<data_dir>/vader/` holds every corpus file with its recorded sha256."""
    return _is_verified(_resolve_root(data_dir) / VADER_SUBDIR)


def _is_verified(target: Path) -> bool:
    """True when `target` has a matching manifest and every file hashes to the recorded sha256."""
    try:
        manifest = json.loads((target / MANIFEST_NAME).read_text(encoding="utf-8"))
        if manifest.get("sdist_sha256") != VADER_SDIST_SHA256:
            return False
        recorded = {name: entry["sha256"] for name, entry in manifest["files"].items()}
        if recorded != dict(VADER_FILES):
            return False
        return all(_sha256_file(target / name) == sha for name, sha in VADER_FILES.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _open_lock(lock_path: Path) -> Any:
    """The lock file opened for appending; UnwritableFolderError naming KD_DATA_DIR if impossible."""
    try:
        return open(lock_path, "a+b")
    except OSError as exc:
        raise unwritable_error(lock_path.parent, DATA_ENV, "data", exc) from exc


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on `lock_path`; yields whether a lock is actually held."""
    with _open_lock(lock_path) as fh:
        locked = False
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                locked = True
            except OSError:  # busy (non-blocking), or no flock here: fall back on the atomic rename
                locked = False
        try:
            yield locked
        finally:
            if locked:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _leftovers(root: Path) -> list[Path]:
    """Staging and old folders of earlier fetches in `root`."""
    with contextlib.suppress(OSError):
        return [p for pattern in (_STAGING_PREFIX + "*", _OLD_PREFIX + "*") for p in root.glob(pattern)]
    return []


def _remove_leftovers(root: Path, locked: bool = True) -> None:
    """Delete staging/old folders that an interrupted fetch left behind (unlocked: only day-old ones)."""
    # under the lock every such folder is debris (fetches stage and install only under it); without
    # flock a concurrent fetch may own one, so only folders older than STALE_AFTER_S go
    now = time.time()
    for leftover in _leftovers(root):
        with contextlib.suppress(OSError):
            if not locked and now - leftover.stat().st_mtime < STALE_AFTER_S:
                continue
            shutil.rmtree(leftover, ignore_errors=True)


def _clean_up_after_killed_fetches(root: Path) -> None:
    """Remove a killed fetch's folders when the lock is free right now (never waits, never raises)."""
    if not _leftovers(root):
        return
    with contextlib.suppress(OSError), _exclusive_lock(root / _LOCK_NAME, blocking=False) as locked:
        if locked:
            _remove_leftovers(root)


def _offline_help() -> str:
    """What to do when pip cannot download the sdist."""
    return (
        f"The VADER corpora come from the source distribution of {VADER_REQUIREMENT} on PyPI. "
        "Check the network connection and pip's index settings (`python -m pip config list`, "
        "PIP_INDEX_URL, proxy variables). Without access, download the file on another machine "
        f"with `python -m pip download --no-deps --no-binary :all: --require-hashes -r req.txt -d .` "
        f"where req.txt holds the line `{VADER_REQUIREMENT} --hash=sha256:{VADER_SDIST_SHA256}`, "
        f"copy {VADER_SDIST_NAME} here and run `python -m kdhelpers.data fetch --sdist "
        f"PATH/{VADER_SDIST_NAME}` (or pass sdist_path= to fetch_vader_corpora)."
    )


#: Run by a small launcher before pip (Linux): die with the parent (PR_SET_PDEATHSIG = 1, SIGKILL).
_DIE_WITH_PARENT = (
    "import ctypes, os, sys\n"
    "try:\n    ctypes.CDLL(None, use_errno=True).prctl(1, 9)\nexcept Exception:\n    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n    os._exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _pip_command(dest: Path, requirements: Path) -> list[str]:
    """The pip command that downloads the sdist in hash-checking mode (nothing runs before the check)."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--require-hashes", "--requirement", str(requirements),
        "--disable-pip-version-check", "--no-input", "--timeout", "20", "--retries", "2",
        "--dest", str(dest),
    ]
    if importlib.util.find_spec("setuptools") is not None:
        # pip prepares the sdist's metadata after the hash check; without build isolation it uses
        # the installed setuptools instead of downloading build dependencies that have no hash
        cmd.insert(cmd.index("--require-hashes"), "--no-build-isolation")
    return cmd


def _stop(proc: subprocess.Popen[str]) -> None:
    """Terminate `proc` and its process group (pip and the build helpers it started), then reap it."""
    if proc.poll() is None or os.name == "posix":
        with contextlib.suppress(OSError):
            if os.name == "posix":
                os.killpg(proc.pid, signal.SIGTERM)
            else:  # pragma: no cover - Windows
                proc.terminate()
    try:
        proc.wait(timeout=_PIP_KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            if os.name == "posix":
                os.killpg(proc.pid, signal.SIGKILL)
            else:  # pragma: no cover - Windows
                proc.kill()
        proc.wait()


def _run_killable(cmd: Sequence[str], timeout_s: float) -> tuple[int, str, str]:
    """Run `cmd` and return (exit code, stdout, stderr); it is killed with its process group if this call fails or the caller dies."""
    argv = list(cmd)
    if sys.platform.startswith("linux"):
        argv = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=os.name == "posix")
    finished = False
    try:
        out, err = proc.communicate(timeout=timeout_s)
        finished = True
        return proc.returncode, out, err
    finally:
        if not finished:
            _stop(proc)
        elif os.name == "posix":  # build helpers pip may have left in its group
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)


def _pip_download(dest: Path, timeout_s: float = 600.0) -> Path:
    """Download the vaderSentiment sdist into `dest` with pip, hash-checked before pip unpacks it."""
    with tempfile.TemporaryDirectory(prefix="kd-vader-req-") as req_dir:
        requirements = Path(req_dir) / "requirements.txt"
        requirements.write_text(f"{VADER_REQUIREMENT} --hash=sha256:{VADER_SDIST_SHA256}\n")
        try:
            code, out, err = _run_killable(_pip_command(dest, requirements), timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataFetchError(f"pip download did not finish ({exc}). {_offline_help()}") from exc
    if code != 0:
        if "DO NOT MATCH THE HASHES" in err:
            raise ChecksumMismatchError(
                f"pip refused the {VADER_SDIST_NAME} served by your package index: its sha256 is not "
                f"{VADER_SDIST_SHA256} (recorded in kdhelpers/data.py and data/README.md); nothing "
                "from it was run or installed. Clear pip's copy with `python -m pip cache remove "
                "vaderSentiment` and fetch again; if it still differs, your index serves a modified "
                f"file: do not use it. pip said: {' / '.join(err.strip().splitlines()[-3:])}"
            )
        detail = (err or out or "").strip().splitlines()[-3:]
        raise DataFetchError(
            f"`pip download {VADER_REQUIREMENT}` failed (exit {code}: "
            f"{' / '.join(detail) or 'no output'}). {_offline_help()}"
        )
    found = [p for p in dest.iterdir() if p.name.lower() == VADER_SDIST_NAME.lower()]
    if not found:
        names = sorted(p.name for p in dest.iterdir())
        raise DataFetchError(f"pip download produced {names}, not {VADER_SDIST_NAME}.")
    return found[0]


def _check_sha256(actual: str, expected: str, what: str) -> None:
    """Raise ChecksumMismatchError when `actual` differs from `expected`."""
    if actual != expected:
        raise ChecksumMismatchError(
            f"sha256 of {what} is {actual}, expected {expected} (recorded in kdhelpers/data.py "
            "and data/README.md). The file is corrupt, truncated or not the original "
            f"{VADER_REQUIREMENT} release. Delete it, clear pip's copy with `python -m pip cache "
            "remove vaderSentiment`, and fetch again; if the hash still differs, your package "
            "index serves a modified file: do not use it."
        )


def _read_member(archive: tarfile.TarFile, name: str, archive_label: str) -> bytes:
    """The bytes of regular-file member `name` of an open tar archive."""
    try:
        member = archive.getmember(name)
    except KeyError:
        raise DataFetchError(f"{archive_label} has no member {name!r}.") from None
    handle = archive.extractfile(member) if member.isfile() else None
    if handle is None:
        raise DataFetchError(f"{name!r} in {archive_label} is not a regular file.")
    with handle:
        return handle.read()


def _write_file(path: Path, data: bytes) -> None:
    """Write a new file and flush it to disk."""
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _extract_corpora(sdist: Path, staging: Path) -> None:
    """Verify the inner archive and write the corpora plus a manifest into `staging`."""
    try:
        with tarfile.open(sdist, "r:gz") as outer:
            inner_bytes = _read_member(outer, VADER_INNER_ARCHIVE, sdist.name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataFetchError(f"cannot read {sdist}: {exc}") from exc
    _check_sha256(_sha256_bytes(inner_bytes), VADER_INNER_SHA256, VADER_INNER_ARCHIVE)
    entries = {}
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        for name, expected in VADER_FILES.items():
            data = _read_member(inner, _INNER_PREFIX + name, "hutto_ICWSM_2014.tar.gz")
            _check_sha256(_sha256_bytes(data), expected, _INNER_PREFIX + name)
            _write_file(staging / name, data)
            entries[name] = {"sha256": expected, "bytes": len(data)}
    manifest = {
        "source": f"{VADER_REQUIREMENT} source distribution (PyPI), {VADER_INNER_ARCHIVE}",
        "licence": "MIT",
        "sdist_sha256": VADER_SDIST_SHA256,
        "inner_sha256": VADER_INNER_SHA256,
        "files": entries,
    }
    # the manifest goes last: a folder without it is never trusted
    _write_file(staging / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (renames) to disk where the platform allows it."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _install(staging: Path, target: Path) -> None:
    """Move the complete `staging` folder to `target` with renames, replacing a bad `target`."""
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f"{_OLD_PREFIX}{uuid.uuid4().hex}")
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except OSError:
        if not _is_verified(target):  # another process (no flock available) won the race
            raise
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fetch_vader_corpora(
    data_dir: Path | str | None = None, sdist_path: Path | str | None = None
) -> Path:
    """Fetch the VADER corpora into `<data_dir>/vader/` and return that folder (no-op if verified).

    The sdist of vaderSentiment==3.3.2 is downloaded with pip (or read from `sdist_path`), checked
    against VADER_SDIST_SHA256, and the eight corpus files are written to a staging folder that is
    renamed into place only when complete, under an exclusive lock; a manifest with each file's
    sha256 decides whether an existing folder can be trusted. Raises DataFetchError (offline) or
    ChecksumMismatchError with instructions.
    """
    root = _resolve_root(data_dir)
    target = root / VADER_SUBDIR
    if _is_verified(target):
        _clean_up_after_killed_fetches(root)
        return target
    with _exclusive_lock(root / _LOCK_NAME) as locked:
        if _is_verified(target):  # another process finished while we waited
            return target
        _remove_leftovers(root, locked)
        with tempfile.TemporaryDirectory(prefix="kd-vader-sdist-") as download_dir:
            if sdist_path is not None:
                sdist = Path(sdist_path).expanduser()
                if not sdist.is_file():
                    raise DataFetchError(f"sdist_path {sdist} is not a file. {_offline_help()}")
            else:
                sdist = _pip_download(Path(download_dir))
            _check_sha256(_sha256_file(sdist), VADER_SDIST_SHA256, str(sdist))
            try:
                staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=root))
            except OSError as exc:
                raise unwritable_error(root, DATA_ENV, "data", exc) from exc
            staging.chmod(0o755)  # mkdtemp makes it private; the data is meant to be shared
            try:
                _extract_corpora(sdist, staging)
                _install(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    if not _is_verified(target):
        raise DataFetchError(f"{target} failed verification right after fetching; fetch again.")
    return target


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
    """Raise ValueError unless `domain` is a known VADER or Hub domain."""
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
    domain: str, available: int, n_train: int | None, n_validation: int | None,
    n_test: int | None, what: str,
) -> SplitSizes:
    """Defaults filled in and checked against the `available` rows."""
    default = DEFAULT_SPLIT_SIZES[domain]
    sizes = SplitSizes(
        train=default.train if n_train is None else _check_size("n_train", n_train),
        validation=(
            default.validation if n_validation is None
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


def _check_seed(seed: object) -> int:
    """Validate a non-negative int seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int (got {seed!r})")
    return int(seed)


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
    seed = _check_seed(seed)
    if domain in HUB_DOMAINS:
        return _load_hub(domain, seed, n_train, n_validation, n_test)
    import datasets

    columns = _vader_columns(domain, data_dir)
    keep = [i for i, score in enumerate(columns["score"]) if score != 0]
    neutral = len(columns["score"]) - len(keep)
    columns = {name: [values[i] for i in keep] for name, values in columns.items()}
    labels = [int(score > 0) for score in columns["score"]]
    columns = {"id": columns["id"], "text": columns["text"], "label": labels,
               "score": columns["score"], "rater_scores": columns["rater_scores"]}
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


def _load_hub(
    domain: str, seed: int, n_train: int | None, n_validation: int | None, n_test: int | None
) -> datasets.DatasetDict:
    """rotten_tomatoes / sst2 from the Hub, in the same split layout and columns as VADER."""
    alternative = (
        "Use the packaged corpus instead: load_sentiment('movies') (VADER movie-review "
        "snippets, fetched from PyPI with `python -m kdhelpers.data fetch`)."
    )
    reason = _hub_unreachable_reason()
    import datasets

    # in datasets' own offline mode load_dataset only reads its cache, which is quick to try
    if reason is not None and not getattr(datasets.config, "HF_HUB_OFFLINE", False):
        raise HubUnavailableError(
            f"{domain!r} comes from the Hugging Face Hub, which cannot be used: {reason}. "
            f"{alternative}"
        )

    try:
        with _quiet_progress_bars():
            hub = datasets.load_dataset(HUB_DOMAINS[domain])
    except Exception as exc:  # any failure: re-raised with the offline alternative
        message = f"loading {domain!r} from the Hub failed: {exc}. {alternative}"
        raise HubUnavailableError(message) from exc
    text_column = "sentence" if domain == "sst2" else "text"
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
    pool_texts = list(hub[pool_split][text_column])
    n_val_carved = 0 if val_split is not None else (
        DEFAULT_SPLIT_SIZES[domain].validation if n_validation is None
        else _check_size("n_validation", n_validation)
    )
    sizes = _resolve_sizes(domain, len(pool_texts), n_train, n_val_carved, 0,
                           f"rows in the hub's {pool_split} split")
    indices = _assign_splits(pool_texts, sizes, seed)

    def convert(split: str, rows: Sequence[int] | None = None) -> datasets.Dataset:
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

    return datasets.DatasetDict({
        "train": convert(pool_split, indices["train"]),
        "unlabeled": convert(pool_split, indices["unlabeled"]),
        "validation": (
            convert(val_split) if val_split is not None
            else convert(pool_split, indices["validation"])
        ),
        "test": convert(test_split),
    })


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
        summary.append({
            "domain": domain,
            "rows": int(scores.size),
            "neutral": int((scores == 0).sum()),
            "positive": int((scores > 0).sum()),
            "negative": int((scores < 0).sum()),
            "train": sizes.train,
            "validation": sizes.validation,
            "test": sizes.test,
            "unlabeled": labelled - sum(sizes),
        })
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kdhelpers.data fetch|info`: fetch the VADER corpora or print counts."""
    parser = argparse.ArgumentParser(prog="python -m kdhelpers.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download and verify the VADER corpora")
    fetch.add_argument("--sdist", type=Path, default=None,
                       help=f"use a local {VADER_SDIST_NAME} instead of pip download")
    info = commands.add_parser("info", help="print rows and labels per domain")
    for sub in (fetch, info):
        sub.add_argument("--data-dir", type=Path, default=None,
                         help="data folder (default: kdhelpers.paths.data_dir(), env KD_DATA_DIR)")
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
