"""The notebook runner: execute course notebooks with papermill, tidy the executed copies, summarise
their results (`python -m kdhelpers.course run`)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kdhelpers.course.provenance import (
    ResultsFileError,
    read_record,
    reads_from_log,
    stamp_reads,
)
from kdhelpers.paths import SOLUTIONS_FOLDER, committed_results_dir, notebooks_dir, project_root
from kdhelpers.paths import results_dir as default_results_dir
from kdhelpers.profiles import PROFILES
from kdhelpers.results import READS_LOG_ENV


def is_solutions(path: Path) -> bool:
    """Whether a notebook is a chapter's solutions notebook (NN_name_solutions.ipynb)."""
    return Path(path).stem.endswith("_solutions")


def list_notebooks(
    folder: Path | None = None, only: Iterable[str] | None = None, with_solutions: bool = False
) -> list[Path]:
    """Course notebooks in order: all of them, or the chapters named in `only`.

    The chapters (NN_name.ipynb) are in `folder` (default: notebooks/), their solutions
    (NN_name_solutions.ipynb) in its solutions/ subfolder; each chapter comes just before its
    solutions. An entry of `only` is a name prefix ('05', '02_the-loss') and selects chapter
    notebooks; their solutions notebooks come too with `with_solutions`. An entry ending in .ipynb,
    or one naming a solutions notebook ('05_distillation_solutions'), selects that notebook itself.
    """
    folder = notebooks_dir() if folder is None else Path(folder)
    found = sorted(
        (
            p
            for place in (folder, folder / SOLUTIONS_FOLDER)
            for p in place.glob("[0-9][0-9]_*.ipynb")
            if not p.name.startswith(".")
        ),
        key=lambda p: p.name,
    )
    if only is None:
        return found
    if isinstance(only, str | bytes) or not all(isinstance(o, str) for o in only):
        raise TypeError(f"only must be a list of chapter names, e.g. ['05'] (got {only!r})")
    only = list(only)
    if not only:
        raise ValueError("only is empty: name at least one chapter, e.g. ['05'], or pass None")

    def chosen(p: Path) -> bool:
        chapter_stem = len(p.stem) - len("_solutions") if is_solutions(p) else len(p.stem)
        return any(
            p.name == o
            if o.endswith(".ipynb")
            # a prefix that reaches past the chapter's own name names the solutions notebook
            else p.stem.startswith(o)
            and (not is_solutions(p) or with_solutions or len(o) > chapter_stem)
            for o in only
        )

    picked = [p for p in found if chosen(p)]
    if not picked:
        raise ValueError(f"no notebook matches {only} in {folder.name}/")
    return picked


_PROGRESS_LINE = re.compile(r"^.*\d+%\|.*\|.*$")


def _strip_progress(text: str) -> str:
    """Remove tqdm progress-bar lines (carriage-return updates included) from a stderr stream."""
    lines = re.split(r"[\r\n]+", text)
    kept = [line for line in lines if line.strip() and not _PROGRESS_LINE.match(line)]
    return "\n".join(kept) + ("\n" if kept else "")


def clean_notebook(
    nb: dict[str, Any],
    profile: str | None = None,
    strip_injected: bool = False,
    run_id: str | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """Tidy an executed copy: no papermill metadata, no progress bars, the run's profile in metadata.

    With `strip_injected` (for a notebook that will be committed) papermill's injected-parameters
    cell goes too, so the committed notebook keeps the learner's own `PROFILE = "auto"`; the
    profile of the run is then recorded only in the metadata (`kd_course.profile`). An executed
    copy keeps the cell, so re-executing it (nbval) repeats the same run.
    """
    meta = nb.setdefault("metadata", {})
    meta.pop("papermill", None)
    meta.pop("jupytext", None)
    meta.pop("widgets", None)
    meta["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    if profile is not None:
        meta["kd_course"] = {"profile": profile}
    if run_id is not None:  # the results record this run wrote: its outputs belong to it
        meta.setdefault("kd_course", {})["run_id"] = run_id
    if seconds is not None:  # the run's wall time, for the README's time per chapter
        meta.setdefault("kd_course", {})["seconds"] = round(float(seconds), 1)
    if strip_injected:
        nb["cells"] = [
            c
            for c in nb.get("cells", [])
            if "injected-parameters" not in c.get("metadata", {}).get("tags", [])
        ]
    count = 0
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {})
        meta.pop("papermill", None)
        meta.pop("execution", None)
        meta.pop("lines_to_next_cell", None)
        if cell.get("cell_type") != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            if "application/vnd.jupyter.widget-view+json" in out.get("data", {}):
                continue  # a progress widget: nothing to see in a saved notebook
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = _strip_progress("".join(out.get("text", "")))
                if not text:
                    continue
                out["text"] = text
            outputs.append(out)
        cell["outputs"] = outputs
        if cell.get("execution_count") is not None:
            count += 1  # renumber: the dropped injected cell leaves no gap
            cell["execution_count"] = count
            for out in outputs:
                if out.get("output_type") == "execute_result":
                    out["execution_count"] = count
    return nb


@contextlib.contextmanager
def temporary_env(**variables: str) -> Iterator[None]:
    """Set environment variables (inherited by kernels) for the duration of a block."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def execute_notebook(
    path: Path,
    output: Path,
    profile: str,
    results_dir: Path | None = None,
    timeout_s: int | None = None,
    extra_parameters: dict[str, Any] | None = None,
) -> float:
    """Execute one notebook with papermill (PROFILE injected) into `output`; return the wall time in seconds.

    `results_dir` is where the notebook's results JSON goes (default: the kernel's own
    `kdhelpers.paths.results_dir()`, a git-ignored folder). The executed copy is cleaned even when
    a cell fails, and the papermill error is raised again.
    """
    import nbformat
    import papermill

    params = {"PROFILE": profile, **(extra_parameters or {})}
    env = {"TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1")}  # no widgets in executed copies
    if results_dir is not None:
        env["KD_RESULTS_DIR"] = str(results_dir)
    record = (Path(results_dir) if results_dir is not None else default_results_dir()) / (
        f"{path.stem}.json"
    )
    before = _run_id(record)
    log = Path(tempfile.mkdtemp(prefix="kd-reads-")) / "reads.jsonl"
    env[READS_LOG_ENV] = str(log)
    start = time.perf_counter()
    run_id = None
    try:
        with temporary_env(**env):
            papermill.execute_notebook(
                str(path),
                str(output),
                parameters=params,
                cwd=str(path.parent),
                kernel_name="python3",
                language="python",
                progress_bar=False,
                log_output=False,
                execution_timeout=timeout_s,
            )
        if _run_id(record) not in (None, before):  # the notebook wrote its record: what it read
            run_id = stamp_reads(record, reads_from_log(log, path.stem))["run_id"]
    finally:
        shutil.rmtree(log.parent, ignore_errors=True)
        if Path(output).exists():
            nb = nbformat.read(str(output), as_version=4)
            nbformat.write(
                nbformat.from_dict(
                    clean_notebook(nb, profile, run_id=run_id, seconds=time.perf_counter() - start)
                ),
                str(output),
            )
    return time.perf_counter() - start


def _run_id(record: Path) -> str | None:
    """The run_id of the results record at `record`, if it exists, can be read and has one (a
    damaged record is what a re-run repairs, so it must not stop that run)."""
    try:
        return read_record(record).get("run_id") if record.exists() else None
    except ResultsFileError:
        return None


def summary_rows(
    results_dir: Path, with_run: bool = False, notebooks: Iterable[str] | None = None
) -> list[tuple[str, ...]]:
    """(notebook, metric, value[, profile, date]) rows from each <notebook>.json (all, or `notebooks`)."""
    rows = []
    wanted = None if notebooks is None else set(notebooks)
    for path in sorted(Path(results_dir).glob("*.json")):
        if wanted is not None and path.stem not in wanted:
            continue
        data = read_record(path)
        for key, value in data.get("metrics", {}).items():
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            extra = (str(data.get("profile")), str(data.get("date"))) if with_run else ()
            rows.append((path.stem, key, text, *extra))
    return rows


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _commit_copy(executed: Path, target: Path) -> None:
    """Write an executed copy over a committed notebook, without papermill's injected cell."""
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    run = nb.metadata.get("kd_course", {})
    cleaned = clean_notebook(
        nb, run.get("profile"), True, run_id=run.get("run_id"), seconds=run.get("seconds")
    )
    nbformat.write(nbformat.from_dict(cleaned), str(target))


def run(
    profile: str,
    only: Sequence[str] | None = None,
    out: Path | None = None,
    in_place: bool = False,
    timeout_s: int | None = None,
    with_solutions: bool = False,
) -> int:
    """Execute the course notebooks into a run folder (or in place), print a summary; return the exit status.

    Every notebook runs even when an earlier one fails; a failed notebook is reported with the
    path of its executed copy and never replaces the committed one. Results go to
    `KD_RESULTS_DIR` when set, else to results/ with `in_place` and to the run folder otherwise.
    """
    if profile not in PROFILES:
        raise ValueError(f"--profile must be one of {PROFILES} (got {profile!r})")
    notebooks = list_notebooks(only=only, with_solutions=with_solutions)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out) if out else project_root() / "runs" / f"{stamp}-{profile}"
    if os.environ.get("KD_RESULTS_DIR"):
        results = Path(os.environ["KD_RESULTS_DIR"]).expanduser()
    else:
        results = committed_results_dir() if in_place else out / "results"
    out.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    timings, failures = [], []
    for nb in notebooks:
        executed = out / nb.name
        print(f"running {nb.name} (profile={profile}) ...", flush=True)
        start = time.perf_counter()
        try:
            execute_notebook(nb, executed, profile, results, timeout_s)
        except Exception as exc:  # report it, run the rest
            seconds = time.perf_counter() - start
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            failures.append((nb.name, str(executed), reason[:200]))
            timings.append((nb.stem, f"{seconds:.1f}", "FAILED"))
            print(
                f"  FAILED after {seconds:.0f} s: {reason[:200]}\n  executed copy: {executed}",
                flush=True,
            )
            continue
        timings.append((nb.stem, f"{time.perf_counter() - start:.1f}", "ok"))
        if in_place:
            _commit_copy(executed, nb)
    print("\nWall time per notebook (s):")
    print(format_table(timings, ("notebook", "seconds", "status")))
    rows = summary_rows(results, notebooks=[nb.stem for nb in notebooks])
    if rows:
        print(f"\nResults ({results}):")
        print(format_table(rows, ("notebook", "metric", "value")))
    where = ", ".join(sorted({str(nb.parent) for nb in notebooks})) if in_place else out
    print(f"\nexecuted notebooks: {where}; results: {results}")
    if failures:
        print(f"\n{len(failures)} of {len(notebooks)} notebooks failed:")
        for name, path, reason in failures:
            print(f"- {name}: {reason}\n  see {path}")
        return 1
    return 0
