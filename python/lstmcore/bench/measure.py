"""Timing: the contenders' steps built, warmed up and timed, interleaved in blocks in one
process, or each library alone in its own worker process (``python -m lstmcore.bench
--worker PLAN``) alternated over rounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

import lstmcore
from lstmcore.bench.cases import ALL_CASES, Case
from lstmcore.bench.contenders import BUILDERS, RefusedError, Step, precision_of, unavailable

WORKER_TIMEOUT_S = 3600.0


def timed(fn: Step) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(
    steps: dict[str, Step], repeats: int, warmup: int, block: int
) -> dict[str, list[float]]:
    """Interleaves the contenders in blocks (A x block, B x block, A x block, ...) until each has
    ``repeats`` timed steps. The first step of every block is run but not timed: other
    libraries' thread pools (OpenBLAS, OpenMP, XLA) keep spinning for a while after their own
    step and would otherwise be charged to whoever runs next."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    while any(len(t) < repeats for t in times.values()):
        for name, fn in steps.items():
            fn()  # absorbs the previous contender's spinning threads
            for _ in range(min(block, repeats - len(times[name]))):
                times[name].append(timed(fn))
    return times


@dataclass(frozen=True)
class Plan:
    """What one process measures: these families' contenders on these cases."""

    families: tuple[str, ...]
    cases: tuple[str, ...]
    threads: int
    repeats: int | None  # None: each case's own step count
    warmup: int
    block: int
    precisions: tuple[str, ...] = ("fp32",)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> Plan:
        """The plan :meth:`to_json` wrote; ValueError or TypeError when ``text`` is not one."""
        plan = Plan(**json.loads(text))
        return Plan(
            tuple(plan.families),
            tuple(plan.cases),
            plan.threads,
            plan.repeats,
            plan.warmup,
            plan.block,
            tuple(plan.precisions),
        )


Times = dict[str, dict[str, list[float]]]  # case -> contender -> seconds per timed step


def run_plan(plan: Plan, notes: list[str]) -> Times:
    """Builds and times every contender of the plan in this process, case by case."""
    lstmcore.set_num_threads(plan.threads)
    out: Times = {}
    for name in plan.cases:
        case = ALL_CASES[name]
        steps = build_steps(plan.families, case, plan.threads, notes, plan.precisions)
        if steps:
            out[name] = measure(steps, plan.repeats or case.steps, plan.warmup, plan.block)
        print(f"  measured {name} with {plan.threads} thread(s)", file=sys.stderr)
    return out


def build_steps(
    families: Sequence[str],
    case: Case,
    threads: int,
    notes: list[str],
    precisions: Sequence[str] = ("fp32",),
) -> dict[str, Step]:
    steps: dict[str, Step] = {}
    for family in families:
        why = unavailable(family, threads)
        if why is not None:
            add_note(notes, why)
            continue
        for contender, make in BUILDERS.get((family, case.kind), {}).items():
            if precision_of(contender) not in precisions:
                continue
            try:
                step = make(case, np.random.default_rng(0), threads)
            except RefusedError as refused:
                add_note(notes, str(refused))
                continue
            try:  # one untimed step: a library that cannot run the case says so here
                step()
            except Exception as err:  # any library's failure to run the case is a note
                said = str(err).strip().splitlines()
                why = f"{type(err).__name__}: {said[0] if said else ''}"
                add_note(notes, f"{contender} cannot run {case.name}: {why}")
                continue
            steps[contender] = step
    return steps


def add_note(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)


# ---- isolated mode: one process per library, alternated over rounds ------------------------

RoundTimes = dict[int, dict[str, dict[str, list[list[float]]]]]  # threads -> case -> name -> rounds


def worker_env(threads: int) -> dict[str, str]:
    """The worker's environment: every pool sized to the row's threads before any library
    loads (numpy's own BLAS, used by the reference, reads these only at start-up)."""
    env = dict(os.environ)
    for var in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "LSTMCORE_NUM_THREADS",
    ):
        env[var] = str(threads)
    return env


def run_worker(plan: Plan, notes: list[str]) -> Times:
    """Runs the plan in a fresh process (``--worker``) and returns its times ({} on failure,
    with a note)."""
    command = [sys.executable, "-m", "lstmcore.bench", "--worker", plan.to_json()]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=worker_env(plan.threads),
        timeout=WORKER_TIMEOUT_S,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        add_note(notes, f"{'/'.join(plan.families)} worker failed ({done.returncode}): {tail}")
        return {}
    result = json.loads(lines[-1])  # the last line: anything a library printed comes before
    for note in result["notes"]:
        add_note(notes, note)
    times: Times = result["times"]
    return times


def run_isolated(
    base: Plan, threads_list: Sequence[int], rounds: int, notes: list[str]
) -> RoundTimes:
    """Each of the base plan's families alone in its own process, at every thread count; the
    order rotates every round so that no family always runs first (or after a heavy one)."""
    families = base.families
    out: RoundTimes = {t: {} for t in threads_list}
    for r in range(rounds):
        order = [*families[r % len(families) :], *families[: r % len(families)]]
        for threads in threads_list:
            for family in order:
                mine = tuple(c for c in base.cases if (family, ALL_CASES[c].kind) in BUILDERS)
                why = unavailable(family, threads)
                if why is not None:
                    add_note(notes, why)
                if why is not None or not mine:
                    continue
                plan = replace(base, families=(family,), cases=mine, threads=threads)
                start = time.perf_counter()
                for case, by_name in run_worker(plan, notes).items():
                    for name, t in by_name.items():
                        out[threads].setdefault(case, {}).setdefault(name, []).append(t)
                print(
                    f"round {r + 1}/{rounds}: {family} with {threads} thread(s) "
                    f"{time.perf_counter() - start:.1f} s",
                    file=sys.stderr,
                )
    return out
