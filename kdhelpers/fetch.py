"""Fetching the VADER corpora: pip download in hash-checking mode, checksums, a lock, atomic install."""

from __future__ import annotations

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
from typing import Any

from kdhelpers import paths
from kdhelpers.paths import STALE_AFTER_S, ensure_folder, unwritable_error

try:  # POSIX; elsewhere the atomic rename alone keeps concurrent fetches safe
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

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
VADER_FILES: MappingProxyType[str, str] = MappingProxyType(
    {
        "movieReviewSnippets_GroundTruth.txt": "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350",
        "movieReviewSnippets_anonDataRatings.txt": "658a086bc7239b98b750baa232cab80e6447789020f96a6c847cc1248d7c82f4",
        "tweets_GroundTruth.txt": "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f",
        "tweets_anonDataRatings.txt": "390d6f8f1b5c7e6f9f94ad7fea1e461ed718312d1856ae71c5812ab8ae943fa6",
        "amazonReviewSnippets_GroundTruth.txt": "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2",
        "amazonReviewSnippets_anonDataRatings.txt": "d7d909adab91e0b4d5084251fc825f15baff66277c52eaa705b40fc464fa274b",
        "nytEditorialSnippets_GroundTruth.txt": "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e",
        "nytEditorialSnippets_anonDataRatings.txt": "803c87c5bb529334bb5ed5fca244aa935e5f342bc0a930d91a0f22e978ee39f2",
    }
)


class DataFetchError(RuntimeError):
    """Data could not be obtained; the message says what to do about it."""


class ChecksumMismatchError(DataFetchError):
    """A downloaded or extracted file does not have the recorded sha256."""


class HubUnavailableError(DataFetchError):
    """A Hugging Face Hub data set was requested but the Hub cannot be used."""


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
        return [
            p for pattern in (_STAGING_PREFIX + "*", _OLD_PREFIX + "*") for p in root.glob(pattern)
        ]
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
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--require-hashes",
        "--requirement",
        str(requirements),
        "--disable-pip-version-check",
        "--no-input",
        "--timeout",
        "20",
        "--retries",
        "2",
        "--dest",
        str(dest),
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
    """Run `cmd` and return (exit code, stdout, stderr); it is killed with its process group if this
    call fails or the caller dies."""
    argv = list(cmd)
    if sys.platform.startswith("linux"):
        argv = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=os.name == "posix",
    )
    finished, deadline = False, time.monotonic() + timeout_s
    try:
        while True:  # short waits, so that Ctrl-C (KeyboardInterrupt) lands within a second
            try:
                out, err = proc.communicate(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:  # retrying communicate loses no output
                if time.monotonic() >= deadline:
                    raise
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
