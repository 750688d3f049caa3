"""The JSON results each notebook writes, and reading another chapter's results.

Every record carries a `run_id` (the UTC time it was written). When the course runner executes a
notebook it sets KD_READS_LOG to a file, and `load_results` notes there each record it hands out
(name and run_id); the runner then stores them as the new record's `reads`, so a test can tell
when a record rests on another chapter's results that have since been re-run.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from kdhelpers.paths import committed_results_dir, inside, results_dir

#: Environment variable naming the file where load_results notes each record it hands out.
READS_LOG_ENV = "KD_READS_LOG"


def _plain(value: Any) -> Any:
    """Convert tensors, numpy scalars and dataclasses (settings, configs) to JSON-friendly values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_notebook_name(notebook: object) -> str:
    """A results file stem such as '05_distillation' (no folders, no dots in front)."""
    if (
        not isinstance(notebook, str)
        or not notebook
        or notebook.startswith(".")
        or any(c in notebook for c in "/\\")
    ):
        raise ValueError(
            f"notebook must be a plain name such as '05_distillation' (got {notebook!r})"
        )
    return notebook


def save_results(
    notebook: str,
    metrics: Mapping[str, Any],
    profile: str,
    details: Mapping[str, Any] | None = None,
    folder: Path | None = None,
) -> Path:
    """Write <results folder>/<notebook>.json atomically: headline `metrics` plus optional `details`."""
    _check_notebook_name(notebook)
    if not metrics:
        raise ValueError("metrics must hold at least one headline figure")
    folder = results_dir() if folder is None else Path(folder)
    if profile == "quick" and folder.resolve() == committed_results_dir().resolve():
        raise ValueError(
            f"refusing to write quick-profile numbers into the committed {folder}: results/ holds "
            "the standard run only; unset KD_RESULTS_DIR (ad-hoc runs write to runs/results)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.UTC)
    record = {
        "notebook": notebook,
        "profile": profile,
        "date": now.date().isoformat(),
        "run_id": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "metrics": _plain(dict(metrics)),
        "details": _plain(dict(details or {})),
    }
    return write_record(inside(folder, f"{notebook}.json", "notebook"), record)


def write_record(target: Path, record: Mapping[str, Any]) -> Path:
    """Write a results record as JSON to `target` atomically (a temporary file, then a rename)."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=2)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_results(
    notebook: str, profile: str | None = None, folder: Path | None = None
) -> dict[str, Any]:
    """A chapter's results record: this run's folder first, then the committed run; {} if none matches `profile`."""
    _check_notebook_name(notebook)
    folders = [Path(folder)] if folder is not None else [results_dir(), committed_results_dir()]
    for place in folders:
        path = inside(place, f"{notebook}.json", "notebook")
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        if profile is None or record.get("profile") == profile:
            _note_read(record)
            return record
    return {}


def _note_read(record: Mapping[str, Any]) -> None:
    """Append the record's name and run_id to the KD_READS_LOG file, when the runner set one."""
    log = os.environ.get(READS_LOG_ENV)
    if log:
        entry = {"notebook": record.get("notebook"), "run_id": record.get("run_id")}
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
