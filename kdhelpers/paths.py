"""Where the course keeps its data, results and checkpoints, independent of the working folder."""

from __future__ import annotations

import os
from pathlib import Path

from kdhelpers.folders import ensure_folder

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
