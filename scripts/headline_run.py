"""The headline run (issue: a student >= 97% of the teacher, >= 10x smaller and faster), on a CPU.

    python scripts/headline_run.py                          # the committed run: plan cpu-full (about 1.5 h, 2 cores)
    python scripts/headline_run.py --plan quick --out /tmp/headline.json   # smoke test (a minute)
    python scripts/headline_run.py --kind bilstm --every-row-only --out benchmarks/headline-bilstm.json
    python scripts/headline_run.py --retime benchmarks/headline-bilstm.json --note alone   # latency again

Builds the large transfer set (movie snippets, the other VADER domains' sentences, masked copies and
embedding-neighbour copies; no validation or test text), labels it once with chapter 03's teacher
(cached), gives the student a compact vocabulary, and trains it with chapter 05's alpha and T on
nested subsets of growing size, over three seeds (`kdhelpers.chapters.headline.run_headline`), with
the learning rate chosen on validation and, in cpu-full, each source of rows left out in turn.
`--every-row-only` trains at the full size only (no curve, no ablation): to compare another student.
`--retime FILE` trains nothing: it measures the latency of FILE's saved student again, three times
(run it on an otherwise idle machine), takes the median, and writes it into FILE, keeping every
earlier measurement beside it (FILE's own profile picks the teacher).
Writes one JSON file (default benchmarks/headline.json) that chapter 06 reads and shows: the curve
of accuracy against transfer-set size and the headline row (accuracy, share of the teacher,
parameters, batch-1 and batch-64 latency with the course's latency method). The teacher and alpha/T
come from the `standard` profile's chapters 03 and 05 (`--profile`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from kdhelpers.chapters.headline import (
    HEADLINE_PLANS,
    HEADLINE_STUDENTS,
    HeadlinePlan,
    load_headline_run,
    retime_headline,
    run_headline,
)
from kdhelpers.paths import project_root
from kdhelpers.session import start


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--plan", default="cpu-full", choices=tuple(HEADLINE_PLANS))
    p.add_argument("--profile", default="standard", choices=("quick", "standard", "full"))
    p.add_argument("--kind", default=None, choices=tuple(HEADLINE_STUDENTS))
    p.add_argument(
        "--every-row-only",
        action="store_true",
        help="train on every row only (no curve, no source ablation)",
    )
    p.add_argument("--out", type=Path, default=project_root() / "benchmarks" / "headline.json")
    p.add_argument(
        "--retime",
        type=Path,
        default=None,
        metavar="FILE",
        help="measure the latency of FILE's saved student again and update FILE (no training)",
    )
    p.add_argument("--note", default="", help="with --retime: what differs in this measurement")
    return p.parse_args(argv)


def plan_from_args(args: argparse.Namespace) -> HeadlinePlan:
    """The named plan with the command line's changes (student kind, every row only)."""
    plan = HEADLINE_PLANS[args.plan]
    if args.kind is not None:
        plan = dataclasses.replace(plan, kind=args.kind)
    if args.every_row_only:
        plan = dataclasses.replace(plan, sizes=(0,), ablation=False, ablation_size=None)
    return plan


def main(argv: list[str] | None = None) -> int:
    """Run the experiment and write its JSON; 0 when it ran."""
    args = parse_args(argv)
    if args.retime is not None:
        record = load_headline_run(args.retime)
        if record is None:
            raise SystemExit(f"--retime: {args.retime} does not exist")
        if not args.note:
            raise SystemExit("--retime needs --note: what differs in this measurement")
        start(record.get("profile", "standard"), 0)
        record = retime_headline(record, args.note)
        args.retime.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        for m in record["headline"]["latency_history"]:
            print(f"{m['date']}: batch-1 speed-up {m['speedup_b1']:.3f}x ({m['note']})")
        print("written", args.retime)
        return 0
    plan = plan_from_args(args)
    session = start(args.profile, 0)
    record = run_headline(plan, args.profile, session.device)
    record["plan_name"] = args.plan
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(record["headline"], indent=1))
    print("written", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
