"""Benchmark harness: timing, checking and tables.

Used by ``hwreg-rs bench`` and the scripts in ``benches/``. Every suite checks
its answers before it times them, times each contender side by side in one run
(median of several repeats, :func:`hwreg_rs._timing.median_seconds`), and reports throughput plus ratios, because this
kind of machine is too noisy for absolute numbers to mean much on their own.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .._timing import median_seconds as _timing_median


# The package's one timer, with the benchmarks' default: samples of at least 20 ms.
median_seconds = functools.partial(_timing_median, min_seconds=0.02)


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
SUITES = ["quant", "gemm", "prune", "sparse", "train", "cost", "runtime", "graphs", "shrink"]


def markdown_tables(text: str) -> list[dict[str, Any]]:
    """The Markdown tables in ``text``, as ``{"columns": [...], "rows": [[...], ...]}``.

    Cells stay the strings the table printed (``"2.7x"``, ``"–"`` for a
    missing value), so JSON carries exactly what the Markdown shows.

    Examples
    --------
    >>> t = Table(["shape", "GB/s"]); t.add("4x4", 1.5)
    >>> markdown_tables("## demo\\n\\n" + t.markdown())
    [{'columns': ['shape', 'GB/s'], 'rows': [['4x4', '1.50']]}]
    """
    tables: list[dict[str, Any]] = []
    block: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.lstrip().startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2 and all(set(c) <= set("-: ") for c in block[1]):
            tables.append({"columns": block[0], "rows": block[2:]})
        block = []
    return tables


def _header() -> dict[str, Any]:
    import platform

    from .. import __version__, active_isa, num_threads

    return {"hwreg_rs": __version__, "isa": active_isa(), "threads": num_threads(), "numpy": np.__version__,
            "processor": platform.processor() or platform.machine()}


def main(*, quick: bool = False, suites: Sequence[str] | None = None, as_json: bool = False) -> int:
    """Run the suites and print their tables; returns a process exit code.

    With ``as_json`` nothing is printed until the end, then one JSON object:
    the machine (``hwreg_rs``, ``isa``, ``threads``, ``numpy``,
    ``processor``), ``quick``, and ``suites`` mapping each suite run to
    ``{"title", "markdown", "tables"}`` (the section the suite returned, and
    its tables parsed by :func:`markdown_tables`) or ``{"skipped": reason}``.
    """
    import importlib
    import json

    chosen = list(suites) if suites else SUITES
    unknown = [s for s in chosen if s not in SUITES]
    if unknown:
        raise SystemExit(f"unknown suite(s) {unknown}; choose from {SUITES}")
    head = _header()
    results: dict[str, Any] = {}
    if not as_json:
        print(f"hwreg_rs {head['hwreg_rs']} | ISA {head['isa']} | {head['threads']} threads | "
              f"NumPy {head['numpy']} | {head['processor']}", flush=True)
    for name in chosen:
        try:
            mod = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            continue
        try:
            text = mod.run(quick=quick)
        except ImportError as e:  # an optional contender or data set is not installed
            reason = f"{e}; `pip install 'hwreg-rs[bench,data]'` installs every contender"
            results[name] = {"skipped": reason}
            if not as_json:
                print(f"\n## {name}: skipped ({reason})", flush=True)
            continue
        first = text.lstrip().splitlines()[0] if text.strip() else ""
        results[name] = {"title": first[3:] if first.startswith("## ") else name, "markdown": text,
                         "tables": markdown_tables(text)}
        if not as_json:
            print("\n" + text, flush=True)
    if as_json:
        print(json.dumps({**head, "quick": quick, "suites": results}, indent=2, ensure_ascii=False))
    return 0
