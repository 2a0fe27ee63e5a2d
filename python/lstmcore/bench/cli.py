"""The command line of ``python -m lstmcore.bench`` (its help is the package's docstring):
flags checked before any work, then the run, the report and its files; ``--worker PLAN`` is
the isolated mode's child process."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace

from lstmcore import _precision, bench
from lstmcore._argtypes import integer, threads, usable_cores
from lstmcore.bench.cases import ALL_CASES, CASE_GROUPS, CASES, QUICK, Case
from lstmcore.bench.contenders import FAMILIES
from lstmcore.bench.host import header, print_header, sgemm_rates
from lstmcore.bench.measure import Plan, run_isolated, run_plan
from lstmcore.bench.tables import markdown_table, print_table, summarise

# --precision: one of the library's precisions, or both
PRECISIONS = {**{name: (name,) for name in _precision.NAMES}, "both": _precision.NAMES}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lstmcore.bench",
        description=bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--mode",
        choices=("isolated", "interleaved"),
        default="isolated",
        help="isolated (default): each library in its own process, alternated over rounds; "
        "interleaved: all in one process, steps interleaved in blocks",
    )
    parser.add_argument(
        "--rounds",
        type=integer(1),
        default=None,
        help="isolated mode: rounds over all libraries (default 3)",
    )
    parser.add_argument(
        "--threads",
        type=threads(),
        nargs="+",
        default=None,
        help=f"thread counts to run (default: 1 and all cores, here {usable_cores()})",
    )
    parser.add_argument(
        "--cases",
        "--shapes",
        dest="cases",
        nargs="+",
        default=None,
        metavar="CASE",
        help=f"subset of the cases, or a group of them (grid: the training grid; stream: the "
        f"streaming steps): {', '.join(ALL_CASES)} (default: the main cases; with --quick the "
        "tiny ones)",
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        choices=FAMILIES,
        default=None,
        metavar="NAME",
        help=f"libraries to run, of {', '.join(FAMILIES)} (default: all that are installed)",
    )
    parser.add_argument(
        "--repeats",
        type=integer(1),
        default=None,
        help="timed steps per contender (and round) for every case (default: per case, "
        ">= 20 for all but pixel-mnist and varlen-long)",
    )
    parser.add_argument(
        "--warmup",
        type=integer(0),
        default=2,
        help="untimed steps per contender before timing (default 2)",
    )
    parser.add_argument(
        "--block",
        type=integer(1),
        default=3,
        help="interleaving: timed steps per contender before switching to the next, after one "
        "untimed step (default 3)",
    )
    parser.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default="fp32",
        help="fp32 (default); bf16: lstmcore-bf16 and torch-bf16 (bf16 autocast) only; both",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the NumPy reference (slow at large shapes)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny cases and a 512^3 sgemm for the rate: a smoke test, not a measurement",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every measurement here")
    parser.add_argument(
        "--markdown",
        metavar="FILE",
        help="also write the table in Markdown, one line per case and thread count, the "
        "contenders side by side (the README's form)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # isolated mode's child process
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What argparse's types cannot see; every failure is one `error:` line and exit 2,
    before any work."""
    if args.cases:
        unknown = [c for c in args.cases if c not in ALL_CASES and c not in CASE_GROUPS]
        if unknown:
            known = ", ".join([*CASE_GROUPS, *ALL_CASES])
            parser.error(f"--cases: unknown {unknown}; known: {known}")
    if args.rounds is not None and args.mode != "isolated":
        parser.error("--rounds: applies to --mode isolated only")
    for flag, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            parser.error(f"{flag}: {path} is a directory")
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            parser.error(f"{flag}: cannot write into {folder} (missing or not writable)")


def worker_main(parser: argparse.ArgumentParser, spec: str) -> int:
    """Isolated mode's child: runs one plan, prints {"times", "notes"} as the last line."""
    try:
        plan = Plan.from_json(spec)
    except (ValueError, TypeError) as bad:
        parser.error(f"--worker: not a plan ({bad})")
    if not set(plan.cases) <= set(ALL_CASES) or not set(plan.families) <= set(FAMILIES):
        parser.error("--worker: unknown case or family")
    notes: list[str] = []
    times = run_plan(plan, notes)
    print(json.dumps({"times": times, "notes": notes}))
    return 0


def selected(args: argparse.Namespace) -> tuple[list[Case], list[str], list[int]]:
    if args.cases:
        names = [
            n
            for c in args.cases
            for n in ([g.name for g in CASE_GROUPS[c]] if c in CASE_GROUPS else [c])
        ]
        cases = [ALL_CASES[n] for n in dict.fromkeys(names)]
    else:
        cases = QUICK if args.quick else CASES
    families = list(args.contenders or FAMILIES)
    if args.no_reference and "reference" in families:
        families.remove("reference")
    threads = sorted(set(args.threads or {1, usable_cores()}))
    return cases, families, threads


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.worker is not None:
        return worker_main(parser, args.worker)
    check_args(parser, args)
    cases, families, threads_list = selected(args)
    ceilings = sgemm_rates(threads_list, 512 if args.quick else 2048)
    rounds = (args.rounds or 3) if args.mode == "isolated" else 1
    names = tuple(c.name for c in cases)
    base = Plan(
        tuple(families),
        names,
        1,
        args.repeats,
        args.warmup,
        args.block,
        PRECISIONS[args.precision],
    )
    notes: list[str] = []
    if args.mode == "isolated":
        results = run_isolated(base, threads_list, rounds, notes)
    else:
        results = {}
        for threads in threads_list:
            once = run_plan(replace(base, threads=threads), notes)
            results[threads] = {c: {n: [t] for n, t in by.items()} for c, by in once.items()}
    rows = [  # a case's thread counts next to each other
        row
        for case in cases
        for threads in threads_list
        if case.name in results[threads]
        for row in summarise(case, threads, results[threads][case.name], ceilings[threads])
    ]
    info = header(args.mode, rounds, ceilings)
    print_header(info)
    for note in notes:
        print(f"note: {note}")
    print_table(rows, args.mode)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({**info, "notes": notes, "rows": rows}, out, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(markdown_table(rows, args.mode))
    return 0
