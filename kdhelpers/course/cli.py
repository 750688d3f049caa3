"""The command line: `python -m kdhelpers.course run | table | readme | map`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from kdhelpers.course.package_map import map_command
from kdhelpers.course.provenance import ResultsFileError
from kdhelpers.course.readme import readme_command
from kdhelpers.course.runner import format_table, list_notebooks, run, summary_rows
from kdhelpers.paths import committed_results_dir
from kdhelpers.profiles import PROFILES


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The argument parser and its `run` sub-parser."""
    parser = argparse.ArgumentParser(
        prog="python -m kdhelpers.course",
        description="Run the course notebooks, print their results, write the README's results and the package map.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="execute the notebooks and print the results table")
    p_run.add_argument("--profile", default="standard", choices=PROFILES)
    p_run.add_argument(
        "--only",
        nargs="+",
        metavar="CHAPTER",
        help="chapters by name prefix, e.g. 05 or 02_the-loss (their solutions only with "
        "--with-solutions), or notebook file names (03_teacher_solutions.ipynb)",
    )
    p_run.add_argument(
        "--with-solutions",
        action="store_true",
        help="with --only: run each chosen chapter's solutions notebook after it",
    )
    p_run.add_argument("--out", type=Path, help="run folder (default runs/<date>-<profile>)")
    p_run.add_argument(
        "--in-place",
        action="store_true",
        help="write outputs over the notebooks themselves (notebooks/, notebooks/solutions/) and "
        "results into results/ (the committed run)",
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
    p_map = sub.add_parser("map", help="write CONTRIBUTING.md's package map from the code")
    p_map.add_argument(
        "--check", action="store_true", help="only check that the map is up to date (exit 1 if not)"
    )
    return parser, p_run


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser, p_run = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "readme":
            return readme_command(check=args.check)
        if args.command == "map":
            return map_command(check=args.check)
        if args.command == "table":
            folder = args.results or committed_results_dir()
            if not folder.is_dir():
                parser.error(f"--results: no folder {folder}")
            rows = summary_rows(folder, with_run=True)
            print(f"Results in {folder}:\n")
            print(format_table(rows, ("notebook", "metric", "value", "profile", "date")))
            return 0
    except ResultsFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.with_solutions and args.only is None:
        p_run.error("--with-solutions goes with --only (without --only every notebook runs)")
    if args.only is not None:
        try:
            list_notebooks(only=args.only)
        except ValueError:
            available = sorted({p.stem.split("_")[0] for p in list_notebooks()})
            p_run.error(
                f"--only {' '.join(args.only)} matches no notebook; available chapters: "
                f"{', '.join(available)} (or a longer prefix such as 05_distillation)"
            )
    return run(args.profile, args.only, args.out, args.in_place, args.timeout, args.with_solutions)
