"""Run chapters 03, 05 and 09 in the `full` profile on a GPU and write docs/gpu-results.md.

    python scripts/gpu_results.py                      # on a CUDA machine
    python scripts/gpu_results.py --profile quick --allow-cpu --out /tmp/gpu-check.md   # dry run

Each notebook is executed with papermill (mixed precision is on by default on CUDA); the page
records the GPU's name, the date, the wall time of each notebook and its saved metrics.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

import torch

from kdhelpers.course.runner import execute_notebook, list_notebooks
from kdhelpers.paths import project_root

CHAPTERS = ("03_teacher", "05_distillation", "09_scaling-out")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--profile", default="full", choices=("quick", "standard", "full"))
    p.add_argument(
        "--allow-cpu", action="store_true", help="run without a GPU (to test this script)"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="markdown page (default docs/gpu-results.md)"
    )
    p.add_argument("--only", nargs="+", default=list(CHAPTERS), help="chapter name prefixes")
    return p.parse_args(argv)


def device_name() -> str:
    """The GPU's name, or 'CPU' without CUDA."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


def main(argv: list[str] | None = None) -> int:
    """Execute the chapters and write the page; return a process exit code."""
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(
            "no CUDA device: this script records GPU results (use --allow-cpu to test it)",
            file=sys.stderr,
        )
        return 2
    work = Path(tempfile.mkdtemp(prefix="kd-gpu-"))
    results = work / "results"
    rows = []
    for nb in list_notebooks(only=args.only):
        seconds = execute_notebook(nb, work / nb.name, args.profile, results)
        saved = json.loads((results / f"{nb.stem}.json").read_text())
        rows.append((nb.stem, seconds, saved["metrics"]))
        print(f"{nb.stem}: {seconds:.0f} s", flush=True)
    lines = [
        "# GPU results",
        "",
        f"Chapters run in the `{args.profile}` profile by `scripts/gpu_results.py` on **{device_name()}**, "
        f"{dt.date.today().isoformat()} (torch {torch.__version__}, CUDA {torch.version.cuda}).",
        "",
        "| notebook | wall time (s) | metric | value |",
        "|---|---|---|---|",
    ]
    for stem, seconds, metrics in rows:
        first = True
        for key, value in metrics.items():
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(
                f"| {stem if first else ''} | {f'{seconds:.0f}' if first else ''} | {key} | {shown} |"
            )
            first = False
    out = args.out or project_root() / "docs" / "gpu-results.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
