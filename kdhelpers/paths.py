"""Where the course keeps its data, results, checkpoints and caches (independent of the working
folder), and writing there safely: folder checks that name the variable to set, names that stay
inside their folder, temporary files a killed writer's successor can clean up."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from pathlib import Path

#: A temporary file whose owner cannot be checked (older format, other machine) is removed after this.
STALE_AFTER_S = 24 * 3600.0
#: A temporary file of a dead process on this machine is removed once it is this old (clock skew).
DEAD_OWNER_GRACE_S = 60.0
_TMP_SUFFIX = ".tmp"


class UnwritableFolderError(OSError):
    """A folder the course must write to cannot be created or written; the message says what to set."""


def _host() -> str:
    """This machine's name, reduced to characters safe in a file name."""
    return (
        "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:40] or "host"
    )


def unwritable_error(
    folder: Path | str, env: str, what: str, exc: BaseException, argument: str | None = None
) -> UnwritableFolderError:
    """An UnwritableFolderError naming `folder`, the variable `env` (or `argument`) that chose it, and the fix."""
    current = os.environ.get(env)
    if argument:
        source = f"given as {argument}"
    elif current:
        source = f"{env}={current}"
    else:
        source = f"the default; {env} is not set"
    return UnwritableFolderError(
        f"cannot write the {what} folder {folder} ({source}): {exc}. Point {env} at a folder you "
        f"can write (e.g. `export {env}=$HOME/kd-course/{Path(str(folder)).name or 'data'}`), pass "
        "another folder explicitly, or fix the folder's permissions."
    )


def ensure_folder(folder: Path | str, env: str, what: str, argument: str | None = None) -> Path:
    """`folder` created if missing; raises UnwritableFolderError naming `env` when that fails."""
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable_error(path, env, what, exc, argument) from exc
    if not path.is_dir():
        raise unwritable_error(
            path, env, what, NotADirectoryError(f"{path} is not a folder"), argument
        )
    return path


def check_inside(folder: Path | str, path: Path | str, what: str) -> Path:
    """`path` unchanged, or ValueError naming `what` when it resolves (symlinks followed) outside
    `folder` or to the folder itself."""
    base = Path(folder).expanduser().resolve()
    target = Path(path).expanduser().resolve()
    if target == base or base not in target.parents:
        raise ValueError(
            f"{what} leads to {target}, outside the folder {base} it must stay in (a symlink "
            "pointing elsewhere?): name a file inside the folder"
        )
    return Path(path)


def inside(folder: Path | str, name: object, what: str) -> Path:
    """`folder / name` for a name read from a record or an argument, checked to stay inside `folder`.

    Refused with ValueError naming `what` (the argument or record field): a name that is not a
    non-empty string, holds a NUL byte, is absolute, has a '..' part, or resolves (through a
    symlink) outside the folder. A name may name a file in a subfolder ('runs/a.json').
    """
    if not isinstance(name, str):
        raise TypeError(
            f"{what} must be a file name (a string) (got {type(name).__name__} {name!r})"
        )
    if not name.strip() or "\x00" in name:
        raise ValueError(f"{what} must be a non-empty file name (got {name!r})")
    relative = Path(name)
    if relative.is_absolute() or relative.anchor:
        raise ValueError(
            f"{what} is an absolute path ({name!r}): give a name inside {folder}, not a path"
        )
    if ".." in relative.parts:
        raise ValueError(
            f"{what} ({name!r}) has a '..' part and would leave the folder {folder}: "
            "give a plain name inside it"
        )
    return check_inside(folder, Path(folder) / relative, what)


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a process we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def make_temp(target: Path, env: str, what: str) -> Path:
    """A new empty temporary file beside `target` whose name records this machine and process id."""
    prefix = f".{target.name}.{_host()}-{os.getpid()}."
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=_TMP_SUFFIX)
    except OSError as exc:
        raise unwritable_error(target.parent, env, what, exc) from exc
    os.close(fd)
    return Path(tmp)


def _is_stale(path: Path, now: float) -> bool:
    """Whether temporary file `path` was left by a writer that is gone (see remove_stale_temp)."""
    try:
        age = now - path.stat().st_mtime
    except OSError:
        return False
    owner = path.name[: -len(_TMP_SUFFIX)].rsplit(".", 2)
    if len(owner) == 3 and "-" in owner[1]:
        host, _, pid = owner[1].rpartition("-")
        if host == _host() and pid.isdigit():
            return age > DEAD_OWNER_GRACE_S and not _pid_alive(int(pid))
    return age > STALE_AFTER_S


def remove_stale_temp(folder: Path) -> list[Path]:
    """Delete `.<name>.*.tmp` files in `folder` whose writer is gone; returns what was removed."""
    # make_temp's names record machine and process: removed once that process no longer runs here
    # (and the file is over a minute old); other machines' or older-style files only after a day
    removed: list[Path] = []
    now = time.time()
    with contextlib.suppress(OSError):
        for path in Path(folder).glob(f".*{_TMP_SUFFIX}"):
            if _is_stale(path, now):
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
    return removed


# ---------------------------------------------------------------- where things live

#: the solutions notebooks' folder inside the notebooks folder, apart from the chapters they answer
SOLUTIONS_FOLDER = "solutions"


def project_root() -> Path:
    """The repository root when kdhelpers runs from a checkout, else a per-user cache folder."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists() and (here / "kdhelpers").is_dir():
        return here
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kd-course"


def _folder(env: str, default: Path, what: str) -> Path:
    """A folder from env var `env`, else `default`; created if missing (the error names `env`)."""
    path = Path(os.environ[env]).expanduser() if os.environ.get(env) else default
    return ensure_folder(path, env, what)


def data_dir() -> Path:
    """Folder for fetched data sets (env KD_DATA_DIR overrides)."""
    return _folder("KD_DATA_DIR", project_root() / "data", "data")


def results_dir() -> Path:
    """Folder for the JSON results of ad-hoc runs (git-ignored runs/results; env KD_RESULTS_DIR overrides)."""
    return _folder("KD_RESULTS_DIR", project_root() / "runs" / "results", "results")


def committed_results_dir() -> Path:
    """The committed standard run's results (results/), written only by `course run --in-place`."""
    return project_root() / "results"


def checkpoints_dir() -> Path:
    """Folder for model checkpoints (env KD_CHECKPOINT_DIR overrides)."""
    return _folder("KD_CHECKPOINT_DIR", project_root() / "checkpoints", "checkpoint")


def cache_dir() -> Path:
    """Folder for cached teacher logits (env KD_CACHE_DIR overrides)."""
    return _folder("KD_CACHE_DIR", project_root() / ".kd_cache", "cache")


def notebooks_dir() -> Path:
    """The course notebooks folder of the checkout: the chapters (NN_name.ipynb)."""
    return project_root() / "notebooks"


def solutions_dir() -> Path:
    """The solutions notebooks' folder (notebooks/solutions/NN_name_solutions.ipynb)."""
    return notebooks_dir() / SOLUTIONS_FOLDER


def benchmarks_dir() -> Path:
    """The committed benchmark and script runs (benchmarks/), e.g. the headline run chapter 06 shows."""
    return project_root() / "benchmarks"
