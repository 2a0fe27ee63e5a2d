"""docs/benchmarks.md and its chart from a benchmark's JSON (python -m lstmcore.bench --json).

    python tools/bench_page.py bench.json docs/benchmarks.md docs/bench.png

The tables are the benchmark's own Markdown (lstmcore.bench.tables); the chart shows, per row,
each peer's time over lstmcore's of the same precision (above 1: lstmcore is faster).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lstmcore.bench.tables import markdown_table


def chart(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = [r for r in rows if r["time_vs_lstmcore"] and not r["contender"].startswith("lstmcore")]
    labels = [f"{r['shape']} {r['threads']}t {r['contender']}" for r in peers]
    ratios = [r["time_vs_lstmcore"] for r in peers]
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(peers) + 1.2))
    ax.barh(labels, ratios, color=["#2a7" if v >= 1 else "#c44" for v in ratios])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("peer's time / lstmcore's (above 1: lstmcore faster)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def page(report: dict[str, Any], image: str) -> str:
    rates = ", ".join(f"{t} thread(s) {c / 1e9:.1f}" for t, c in report["ceilings_flops"].items())
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    notes = "".join(f"- {n}\n" for n in report["notes"])
    return (
        "# Benchmarks\n\n"
        f"CPU: {report['cpu']} ({' '.join(report['cpu_flags'])}), {report['usable_cores']} "
        f"cores; lstmcore's kernels {report['isa']} (bf16: {report.get('isa_bf16', '-')}), "
        f"BLAS {report['blas_core']}; {versions}. sgemm rate (the floor's divisor, GFLOP/s): "
        f"{rates}. Mode: {report['mode']}, {report['rounds']} round(s); median ms and the "
        "range of the rounds' medians.\n\n"
        + (f"Notes:\n\n{notes}\n" if notes else "")
        + f"![ratio to lstmcore]({image})\n\n"
        + markdown_table(report["rows"], report["mode"])
    )


def main(argv: list[str]) -> int:
    source, markdown, image = (Path(a) for a in argv)
    report = json.loads(source.read_text())
    chart(report["rows"], image)
    markdown.write_text(page(report, image.name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
