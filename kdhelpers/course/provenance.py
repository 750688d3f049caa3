"""Provenance of a run: the records each results record read (`reads`), the record each executed
notebook belongs to (its metadata's `run_id`), and the check that nothing rests on a record that
has since been re-run."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kdhelpers.results import write_record


class ResultsFileError(ValueError):
    """A results JSON file that cannot be read (cut short, not JSON, not a record)."""


def read_record(path: Path) -> dict[str, Any]:
    """One results record (<notebook>.json); ResultsFileError names the file and how to rebuild it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsFileError(
            f"{path} cannot be read as a results record ({type(exc).__name__}: {exc}); write it "
            f"again by re-running its notebook: python -m kdhelpers.course run --only {path.stem} "
            "(add --profile standard --in-place for the committed results/)"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics", {}), dict):
        raise ResultsFileError(
            f"{path} is not a results record (a JSON object with 'metrics'); write it again with "
            f"python -m kdhelpers.course run --only {path.stem} "
            "(add --profile standard --in-place for the committed results/)"
        )
    return data


def reads_from_log(log: Path, own: str) -> dict[str, str | None]:
    """{chapter: run_id} of every record load_results handed out while a notebook ran (its own
    record left out), from the KD_READS_LOG file; {} when nothing was read."""
    log = Path(log)
    reads: dict[str, str | None] = {}
    if not log.exists():
        return reads
    for line in log.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry.get("notebook") and entry["notebook"] != own:
            reads[entry["notebook"]] = entry.get("run_id")
    return dict(sorted(reads.items()))


def stamp_reads(record_path: Path, reads: dict[str, str | None]) -> dict[str, Any]:
    """Store `reads` in the results record at `record_path` (rewritten atomically); returns it."""
    record_path = Path(record_path)
    record = read_record(record_path)
    record["reads"] = reads
    write_record(record_path, record)
    return record


def notebook_run_id(notebook: Path) -> str | None:
    """The run_id of the results record a committed notebook's outputs belong to (its metadata)."""
    meta = json.loads(Path(notebook).read_text(encoding="utf-8")).get("metadata", {})
    return meta.get("kd_course", {}).get("run_id")


def provenance_problems(results_dir: Path, notebooks: Iterable[Path]) -> list[str]:
    """What a re-run left stale: a record that read another chapter's record since re-run (or gone),
    and a notebook whose outputs belong to another run than its record. Empty when all is fresh."""
    records = {p.stem: read_record(p) for p in sorted(Path(results_dir).glob("*.json"))}
    problems = []
    for name, record in records.items():
        if "run_id" in record and "reads" not in record:
            problems.append(
                f"{name} has a run id but no reads: it was written outside the course runner; "
                f"write it with python -m kdhelpers.course run --in-place --only {name}"
            )
        for other, run_id in record.get("reads", {}).items():
            now = records.get(other, {}).get("run_id")
            if other not in records:
                problems.append(
                    f"{name} read {other}, which results/ no longer holds: re-run {name}"
                )
            elif now != run_id:
                problems.append(
                    f"{name} read {other} of run {run_id}, but {other} is now run {now}: "
                    f"re-run {name} (python -m kdhelpers.course run --in-place --only {name})"
                )
    for notebook in notebooks:
        record = records.get(Path(notebook).stem)
        said = notebook_run_id(notebook)
        if record is None or "run_id" not in record:
            if said is not None:
                problems.append(f"{Path(notebook).name} names run {said}, but has no such record")
            continue
        if said != record["run_id"]:
            problems.append(
                f"{Path(notebook).name} shows run {said}, but results/{Path(notebook).stem}.json "
                f"is run {record['run_id']}: commit the notebook and its record from one run"
            )
    return problems


def records_without_run_id(results_dir: Path) -> list[str]:
    """The committed records written before run ids (they cannot be checked until re-run)."""
    return [
        p.stem for p in sorted(Path(results_dir).glob("*.json")) if "run_id" not in read_record(p)
    ]
