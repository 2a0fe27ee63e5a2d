"""The report's rows (one per case, thread count and contender, with the ratios) and their
tables: the fixed-width one printed, one Markdown table per kind for the README."""

from __future__ import annotations

from typing import Any

import numpy as np

from lstmcore.bench.cases import Case, case_lengths, flops
from lstmcore.bench.contenders import CONTENDERS, baseline, precision_of


def summarise(
    case: Case, threads: int, times: dict[str, list[list[float]]], ceiling: float
) -> list[dict[str, Any]]:
    """One row per contender; ``times[name]`` is a list of rounds (interleaved: one round)."""
    work = flops(case)
    medians = {name: [float(np.median(r)) for r in rounds] for name, rounds in times.items()}
    mid = {name: float(np.median(m)) for name, m in medians.items()}
    rows = []
    for name in sorted(times, key=CONTENDERS.index):
        base_name = baseline(name, list(mid))
        base = mid[base_name] if base_name is not None else None
        rounds = times[name]
        steps = np.concatenate(rounds)
        q1, q3 = (float(v) for v in np.percentile(steps, [25, 75]))
        med = mid[name]
        rows.append(
            {
                "shape": case.name,
                "kind": case.kind,
                "T": case.T,
                "B": case.B,
                "I": case.I,
                "H": case.H,
                "threads": threads,
                "contender": name,
                "precision": precision_of(name),
                "steps": int(steps.size),
                "rounds": len(rounds),
                "median_ms": 1e3 * med,
                "iqr_ms": 1e3 * (q3 - q1),
                # isolated mode: the spread of the rounds' medians (None for a single round)
                "range_ms": [1e3 * min(medians[name]), 1e3 * max(medians[name])]
                if len(rounds) > 1
                else None,
                "round_medians_ms": [1e3 * m for m in medians[name]],
                "samples_per_s": case.B / med,
                "flops": work,
                "gflops": work / med / 1e9,
                "time_vs_lstmcore": med / base if base else None,
                "fraction_of_floor": (work / ceiling) / med,
                **({"sum_lengths": int(case_lengths(case).sum())} if case.kind == "varlen" else {}),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], mode: str) -> None:
    spread = "range ms" if mode == "isolated" else "IQR ms"
    head = (
        f"{'case':<14}{'kind':<7}{'thr':>4} {'contender':<17}{'median ms':>11} {spread:>19}"
        f"{'samples/s':>11}{'GFLOP/s':>9}{'x lstmcore':>11}{'of floor':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if r["range_ms"] is not None:  # None: one round only (a worker failed in the other)
            lo, hi = r["range_ms"]
            width = f"{lo:.3g}-{hi:.3g}"
        else:
            width = f"{r['iqr_ms']:.3g}"
        ratio = f"{r['time_vs_lstmcore']:.2f}" if r["time_vs_lstmcore"] else ""
        print(
            f"{r['shape']:<14}{r['kind']:<7}{r['threads']:>4} {r['contender']:<17}"
            f"{r['median_ms']:>11.3f} {width:>19}{r['samples_per_s']:>11.0f}"
            f"{r['gflops']:>9.1f}{ratio:>11}{100 * r['fraction_of_floor']:>8.0f}%"
        )


def markdown_table(rows: list[dict[str, Any]], mode: str) -> str:
    """One table per kind, its contenders side by side: `median (lo-hi)` ms in isolated mode,
    the median otherwise; "of floor" is lstmcore's (the first baseline found in the line)."""
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    return "\n".join(markdown_kind([r for r in rows if r["kind"] == k], mode) for k in kinds)


def markdown_kind(rows: list[dict[str, Any]], mode: str) -> str:
    names = list(dict.fromkeys(r["contender"] for r in rows))
    groups: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["shape"], r["threads"]), {})[r["contender"]] = r
    kind = rows[0]["kind"]
    lines = [
        f"| {kind} (ms) | T, B, I, H | threads | " + " | ".join(names) + " | of floor |",
        "|" + " --- |" * (4 + len(names)),
    ]
    for (case, threads), by in groups.items():
        first = next(iter(by.values()))
        dims = f"{first['T']}, {first['B']}, {first['I']}, {first['H']}"
        cells = [markdown_cell(by[n], mode) if n in by else "" for n in names]
        base_name = next((n for n in names if n in by and baseline(n, list(by)) == n), None)
        base = by[base_name] if base_name is not None else None
        floor = f"{100 * base['fraction_of_floor']:.0f}%" if base else ""
        lines.append(f"| {case} | {dims} | {threads} | " + " | ".join(cells) + f" | {floor} |")
    return "\n".join(lines) + "\n"


def markdown_cell(row: dict[str, Any], mode: str) -> str:
    if mode == "isolated" and row["range_ms"] is not None:
        lo, hi = row["range_ms"]
        return f"{row['median_ms']:.3g} ({lo:.3g}-{hi:.3g})"
    return f"{row['median_ms']:.3g}"
