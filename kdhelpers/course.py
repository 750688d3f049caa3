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

from kdhelpers.paths import notebooks_dir, project_root
from kdhelpers.profiles import PROFILES


def list_notebooks(folder: Path | None = None, only: Iterable[str] | None = None) -> list[Path]:
    """Course notebooks in order (NN_name.ipynb), optionally only those whose name starts with `only`."""
    folder = notebooks_dir() if folder is None else Path(folder)
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if not p.name.startswith("."))
    if only:
        prefixes = tuple(only)
        found = [p for p in found if p.stem.startswith(prefixes)]
        if not found:
            raise ValueError(f"no notebook matches {list(prefixes)} in {folder.name}/")
    return found


_PROGRESS_LINE = re.compile(r"^.*\d+%\|.*\|.*$")


def _strip_progress(text: str) -> str:
    """Remove tqdm progress-bar lines (carriage-return updates included) from a stderr stream."""
    lines = re.split(r"[\r\n]+", text)
    kept = [line for line in lines if line.strip() and not _PROGRESS_LINE.match(line)]
    return "\n".join(kept) + ("\n" if kept else "")


def clean_notebook(nb: dict[str, Any]) -> dict[str, Any]:
    """Drop run-specific metadata (papermill paths and timings) and progress bars from executed copies."""
    meta = nb.setdefault("metadata", {})
    meta.pop("papermill", None)
    meta.pop("jupytext", None)
    meta.pop("widgets", None)
    meta["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {})
        meta.pop("papermill", None)
        meta.pop("execution", None)
        meta.pop("lines_to_next_cell", None)
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
        if cell.get("cell_type") == "code":
            cell["outputs"] = outputs
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
    results_dir: Path,
    timeout_s: int | None = None,
    extra_parameters: dict[str, Any] | None = None,
) -> float:
    """Execute one notebook with papermill (PROFILE injected); return the wall time in seconds."""
    import nbformat
    import papermill

    params = {"PROFILE": profile, **(extra_parameters or {})}
    # no progress widgets in executed copies; results go where the caller says
    env = {"KD_RESULTS_DIR": str(results_dir), "TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1")}
    start = time.perf_counter()
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
    elapsed = time.perf_counter() - start
    nb = nbformat.read(str(output), as_version=4)
    nbformat.write(nbformat.from_dict(clean_notebook(nb)), str(output))
    return elapsed


def summary_rows(results_dir: Path, with_run: bool = False) -> list[tuple[str, ...]]:
    """(notebook, metric, value[, profile, date]) rows from every results/<notebook>.json."""
    rows = []
    for path in sorted(Path(results_dir).glob("*.json")):
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


def run(
    profile: str,
    only: Sequence[str] | None = None,
    out: Path | None = None,
    in_place: bool = False,
    timeout_s: int | None = None,
) -> Path:
    """Execute the course notebooks into a run folder (or in place) and print a summary table."""
    if profile not in PROFILES:
        raise ValueError(f"--profile must be one of {PROFILES} (got {profile!r})")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out) if out else project_root() / "runs" / f"{stamp}-{profile}"
    results = project_root() / "results" if in_place else out / "results"
    out.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    timings = []
    for nb in list_notebooks(only=only):
        target = nb if in_place else out / nb.name
        print(f"running {nb.name} (profile={profile}) ...", flush=True)
        seconds = execute_notebook(nb, target, profile, results, timeout_s)
        timings.append((nb.stem, f"{seconds:.1f}"))
    print("\nWall time per notebook (s):")
    print(format_table(timings, ("notebook", "seconds")))
    rows = summary_rows(results)
    if rows:
        print("\nResults:")
        print(format_table(rows, ("notebook", "metric", "value")))
    print(f"\nexecuted notebooks: {out if not in_place else nb.parent}; results: {results}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m kdhelpers.course", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="execute the notebooks and print the results table")
    p_run.add_argument("--profile", default="standard", choices=PROFILES)
    p_run.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 02_the-loss")
    p_run.add_argument("--out", type=Path, help="run folder (default runs/<date>-<profile>)")
    p_run.add_argument("--in-place", action="store_true", help="write outputs into notebooks/")
    p_run.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    p_table = sub.add_parser("table", help="print the results table of the committed (or a given) run")
    p_table.add_argument("--results", type=Path, default=None, help="results folder (default results/)")
    args = parser.parse_args(argv)
    if args.command == "table":
        from kdhelpers.paths import results_dir

        rows = summary_rows(args.results or results_dir(), with_run=True)
        print(format_table(rows, ("notebook", "metric", "value", "profile", "date")))
        return 0
    run(args.profile, args.only, args.out, args.in_place, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
