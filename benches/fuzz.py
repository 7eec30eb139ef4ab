"""Run the fuzz generators of ``tests/test_fuzz.py`` at scale (not part of the test run).

    python benches/fuzz.py --cases 10000 --files 2000 [--seed 0] [--workers 2] [--timeout 20]

Prints one table: per family (API cases; mutated v2, v1 and ONNX files) the number of cases, the
count of each outcome (result / ValueError / TypeError / MemoryError / FormatError / OSError (a
bad path, accepted only for targets that take one) / crash / hang (timeout) / other exception) and the time; then the first cases of each bad outcome
(crash, hang, other) with the head of their traceback.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # the workers are spawned: they import it by name too
import test_fuzz as F  # noqa: E402

OUTCOMES = ["result", "ValueError", "TypeError", "MemoryError", "FormatError", "OSError", "crash", "hang", "wrong",
            "other"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10000, help="API cases")
    ap.add_argument("--files", type=int, default=2000, help="mutated files (spread over v2, v1 and ONNX)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds before a case counts as a hang")
    ap.add_argument("--chunk", type=int, default=200)
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    pool = F.Pool(workers=a.workers, timeout=a.timeout)
    rows: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    times: dict[str, float] = collections.defaultdict(float)
    bad: dict[tuple[str, str], list[tuple[str, str]]] = collections.defaultdict(list)
    by_target: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    by_mutation: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    refused_small: list[tuple[str, bytes]] = []  # refused files of at most 1 KB, timed again below
    try:
        for family, n in (("api", a.cases), ("file", a.files)):
            done = 0
            while done < n:
                k = min(a.chunk, n - done)
                if family == "api":
                    cases = [F.api_case(rng) for _ in range(k)]
                else:
                    cases = [F.file_case(rng, F.FILE_KINDS[(done + i) % len(F.FILE_KINDS)]) for i in range(k)]
                t0 = time.perf_counter()
                out = pool.run(family, cases)
                dt = time.perf_counter() - t0
                for c, (o, d) in zip(cases, out):
                    row = "API" if family == "api" else _file_row(c[0])
                    rows[row][o] += 1
                    times[row] += dt / len(cases)
                    if family == "api":
                        by_target[c[0]][o] += 1
                    else:
                        by_mutation[f"{_file_row(c[0])}: {c[1].split(':')[0]}"][o] += 1
                        if o in ("FormatError", "ValueError") and len(c[2]) <= 1024:
                            refused_small.append((c[0], c[2]))
                    if not F.ok_outcome(family, c, o):
                        known = F.known_outside(o, d)
                        label = o if known is None else f"{o}, known outside the suite's files: {known}"
                        bad[(row, label)].append((F.describe(c), d))
                done += k
                print(f"  {family}: {done}/{n}", file=sys.stderr)
    finally:
        pool.close()
    head = "| family | cases | " + " | ".join(OUTCOMES) + " | time (s) |"
    print(head)
    print("|" + "---|" * (len(OUTCOMES) + 3))
    total: collections.Counter = collections.Counter()
    for row in ("API", "v2 files", "v1 files", "ONNX files"):
        c = rows.get(row, collections.Counter())
        total.update(c)
        print(f"| {row} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in OUTCOMES) + f" | {times[row]:.1f} |")
    print(f"| total | {sum(total.values())} | " + " | ".join(str(total[o]) for o in OUTCOMES)
          + f" | {sum(times.values()):.1f} |")
    for (row, o), items in sorted(bad.items()):
        print(f"\n### {row}: {o} ({len(items)})")
        for desc, detail in items[:8]:
            print(f"- {desc}\n  " + detail.strip().replace("\n", "\n  ")[-700:])
    print("\n| file family: mutation | cases | " + " | ".join(OUTCOMES) + " |")
    print("|" + "---|" * (len(OUTCOMES) + 2))
    for m, c in sorted(by_mutation.items()):
        print(f"| {m} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in OUTCOMES) + " |")
    _time_refusals(refused_small)
    worst = {t: c for t, c in sorted(by_target.items())
             if c["crash"] + c["hang"] + c["other"] + (c["OSError"] if t not in F.PATH_TARGETS else 0)}
    if worst:
        print("\nbad outcomes by API target:")
        for t, c in worst.items():
            print(f"  {t}: {dict(c)}")
    return 1 if any("known outside" not in o for _, o in bad) else 0


def _time_refusals(files: list[tuple[str, bytes]]) -> None:
    """Median and worst time to refuse a mutated file of at most 1 KB, in this process (the
    campaign already showed these cases refuse cleanly), after one warm-up load of each kind."""
    import statistics
    import tempfile

    import hwreg_rs as hw

    if not files:
        print("\nno refused file of <= 1 KB to time")
        return
    times: dict[str, list[float]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as d:
        for kind, data in files[:400]:
            row = _file_row(kind)
            p = os.path.join(d, "m.hwreg")
            with open(p, "wb") as f:
                f.write(data)
            for _ in range(2):  # the first is a warm-up (imports, caches)
                t0 = time.perf_counter()
                try:
                    hw.onnx.load(data) if kind.startswith("onnx") else hw.runtime.load(p)
                except (hw.io.FormatError, ValueError):
                    pass
                dt = time.perf_counter() - t0
            times[row].append(dt)
    print("\n| refused files <= 1 KB | files | median (ms) | max (ms) |\n|---|---|---|---|")
    for row, ts in sorted(times.items()):
        print(f"| {row} | {len(ts)} | {statistics.median(ts) * 1e3:.2f} | {max(ts) * 1e3:.2f} |")


def _file_row(kind: str) -> str:
    return "ONNX files" if kind.startswith("onnx") else ("v1 files" if kind == "v1" else "v2 files")


if __name__ == "__main__":
    sys.exit(main())
