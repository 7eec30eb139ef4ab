"""Benchmark harness: timing, checking and tables.

Used by ``hwreg-rs bench`` and the scripts in ``benches/``. Every suite checks
its answers before it times them, times each contender side by side in one run
(median of several repeats), and reports throughput plus ratios, because this
kind of machine is too noisy for absolute numbers to mean much on their own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


def median_seconds(fn: Callable[[], Any], *, repeats: int = 7, min_seconds: float = 0.02) -> float:
    """Median wall time of one call of ``fn``.

    Each of ``repeats`` samples runs ``fn`` enough times to last at least
    ``min_seconds`` and records the mean; one warm-up call comes first.
    """
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-9)
    inner = max(1, int(min_seconds / once))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return float(np.median(samples))


@dataclass
class Table:
    """A Markdown table built row by row."""

    columns: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        self.rows.append([_fmt(c) for c in cells])

    def markdown(self) -> str:
        widths = [max(len(str(c)), *(len(r[i]) for r in self.rows)) if self.rows else len(str(c))
                  for i, c in enumerate(self.columns)]
        line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
        out = [line(self.columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [line(r) for r in self.rows]
        return "\n".join(out)


def _fmt(c: Any) -> str:
    if c is None:
        return "–"
    if isinstance(c, float):
        if c >= 100:
            return f"{c:.0f}"
        if c >= 10:
            return f"{c:.1f}"
        return f"{c:.2f}"
    return str(c)


# Suites in run order: each is a module of this package with
# ``run(quick: bool) -> str`` returning its Markdown section. A suite whose
# module is missing is skipped, so the list can name suites before they land.
SUITES = ["quant", "gemm", "prune", "sparse", "train", "cost", "runtime", "graphs"]


def main(*, quick: bool = False, suites: Sequence[str] | None = None) -> int:
    """Run the suites and print their tables; returns a process exit code."""
    import importlib
    import platform

    from .. import __version__, active_isa, num_threads

    chosen = list(suites) if suites else SUITES
    unknown = [s for s in chosen if s not in SUITES]
    if unknown:
        raise SystemExit(f"unknown suite(s) {unknown}; choose from {SUITES}")
    print(f"hwreg_rs {__version__} | ISA {active_isa()} | {num_threads()} threads | "
          f"NumPy {np.__version__} | {platform.processor() or platform.machine()}")
    for name in chosen:
        try:
            mod = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            continue
        print()
        try:
            print(mod.run(quick=quick), flush=True)
        except ImportError as e:  # an optional contender or data set is not installed
            print(f"## {name}: skipped ({e}; `pip install 'hwreg-rs[bench,data]'` installs every contender)")
    return 0
