"""Headless course runner: execute every notebook with papermill and summarise their results.

python -m kdhelpers.course run --profile quick
python -m kdhelpers.course run --profile standard --in-place   # refresh the committed outputs
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kdhelpers.headlines import results_section, update_readme
from kdhelpers.paths import committed_results_dir, notebooks_dir, project_root
from kdhelpers.profiles import PROFILES


def list_notebooks(folder: Path | None = None, only: Iterable[str] | None = None) -> list[Path]:
    """Course notebooks in order (NN_name.ipynb), optionally only those whose name starts with an entry
    of `only` (an entry ending in .ipynb names one notebook exactly)."""
    folder = notebooks_dir() if folder is None else Path(folder)
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if not p.name.startswith("."))
    if only:
        prefixes = tuple(o for o in only if not o.endswith(".ipynb"))
        exact = {o for o in only if o.endswith(".ipynb")}
        found = [p for p in found if p.name in exact or p.stem.startswith(prefixes or ("\0",))]
        if not found:
            raise ValueError(f"no notebook matches {list(prefixes)} in {folder.name}/")
    return found


_PROGRESS_LINE = re.compile(r"^.*\d+%\|.*\|.*$")


def _strip_progress(text: str) -> str:
    """Remove tqdm progress-bar lines (carriage-return updates included) from a stderr stream."""
    lines = re.split(r"[\r\n]+", text)
    kept = [line for line in lines if line.strip() and not _PROGRESS_LINE.match(line)]
    return "\n".join(kept) + ("\n" if kept else "")


def clean_notebook(
    nb: dict[str, Any], profile: str | None = None, strip_injected: bool = False
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
    start = time.perf_counter()
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
    finally:
        if Path(output).exists():
            nb = nbformat.read(str(output), as_version=4)
            nbformat.write(nbformat.from_dict(clean_notebook(nb, profile)), str(output))
    return time.perf_counter() - start


def summary_rows(
    results_dir: Path, with_run: bool = False, notebooks: Iterable[str] | None = None
) -> list[tuple[str, ...]]:
    """(notebook, metric, value[, profile, date]) rows from each <notebook>.json (all, or `notebooks`)."""
    rows = []
    wanted = None if notebooks is None else set(notebooks)
    for path in sorted(Path(results_dir).glob("*.json")):
        if wanted is not None and path.stem not in wanted:
            continue
        data = json.loads(path.read_text())
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
    profile = nb.metadata.get("kd_course", {}).get("profile")
    nbformat.write(
        nbformat.from_dict(clean_notebook(nb, profile, strip_injected=True)), str(target)
    )


def run(
    profile: str,
    only: Sequence[str] | None = None,
    out: Path | None = None,
    in_place: bool = False,
    timeout_s: int | None = None,
) -> int:
    """Execute the course notebooks into a run folder (or in place), print a summary; return the exit status.

    Every notebook runs even when an earlier one fails; a failed notebook is reported with the
    path of its executed copy and never replaces the committed one. Results go to
    `KD_RESULTS_DIR` when set, else to results/ with `in_place` and to the run folder otherwise.
    """
    if profile not in PROFILES:
        raise ValueError(f"--profile must be one of {PROFILES} (got {profile!r})")
    notebooks = list_notebooks(only=only)
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
    where = notebooks[0].parent if in_place else out
    print(f"\nexecuted notebooks: {where}; results: {results}")
    if failures:
        print(f"\n{len(failures)} of {len(notebooks)} notebooks failed:")
        for name, path, reason in failures:
            print(f"- {name}: {reason}\n  see {path}")
        return 1
    return 0


#: the results the README's table lists (the core chapters); every chapter's headline is written
CORE_TABLE = ("03_teacher", "04_pseudo-labels", "05_distillation")


def readme_section(results_dir: Path | None = None) -> str:
    """The README's generated results section for the results in `results_dir` (default: results/)."""
    folder = committed_results_dir() if results_dir is None else Path(results_dir)
    records = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    table = format_table(
        summary_rows(folder, with_run=True, notebooks=CORE_TABLE),
        ("notebook", "metric", "value", "profile", "date"),
    )
    return results_section(records, table)


def readme_command(check: bool = False, readme: Path | None = None) -> int:
    """Rewrite (or with check, verify) README.md's results section; 1 when a check fails."""
    path = project_root() / "README.md" if readme is None else Path(readme)
    text = path.read_text(encoding="utf-8")
    new = update_readme(text, readme_section())
    if check:
        if new != text:
            print(
                f"{path.name}: the results section differs from results/; "
                "run python -m kdhelpers.course readme",
                file=sys.stderr,
            )
            return 1
        print(f"{path.name}: the results section matches results/")
        return 0
    path.write_text(new, encoding="utf-8")
    print(f"{path.name}: results section written from {committed_results_dir()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m kdhelpers.course", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="execute the notebooks and print the results table")
    p_run.add_argument("--profile", default="standard", choices=PROFILES)
    p_run.add_argument(
        "--only",
        nargs="*",
        help="notebook name prefixes, e.g. 01 02_the-loss, or file names (03_teacher.ipynb)",
    )
    p_run.add_argument("--out", type=Path, help="run folder (default runs/<date>-<profile>)")
    p_run.add_argument(
        "--in-place",
        action="store_true",
        help="write outputs into notebooks/ and results into results/ (the committed run)",
    )
    p_run.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    p_table = sub.add_parser(
        "table", help="print the results table of the committed (or a given) run"
    )
    p_table.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results folder (default: the committed results/)",
    )
    p_readme = sub.add_parser(
        "readme", help="write README.md's results section from the committed results/"
    )
    p_readme.add_argument(
        "--check",
        action="store_true",
        help="only check that README.md is up to date (exit 1 if not)",
    )
    args = parser.parse_args(argv)
    if args.command == "readme":
        return readme_command(check=args.check)
    if args.command == "table":
        folder = args.results or committed_results_dir()
        if not folder.is_dir():
            parser.error(f"--results: no folder {folder}")
        print(f"Results in {folder}:\n")
        rows = summary_rows(folder, with_run=True)
        print(format_table(rows, ("notebook", "metric", "value", "profile", "date")))
        return 0
    if args.only is not None:
        available = sorted({p.stem.split("_")[0] for p in list_notebooks()})
        try:
            list_notebooks(only=args.only)
        except ValueError:
            p_run.error(
                f"--only {' '.join(args.only)} matches no notebook; available chapters: "
                f"{', '.join(available)} (or a longer prefix such as 05_distillation)"
            )
    return run(args.profile, args.only, args.out, args.in_place, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
