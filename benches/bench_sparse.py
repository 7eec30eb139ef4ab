"""Benchmark the pruning and sparse kernels: suites "prune" and "sparse".

    python benches/bench_sparse.py [--quick]

Prints Markdown tables (dense-equivalent GOP/s, ratios measured side by side
in one run). Build with the real release profile first
(``maturin develop --release``) for figures worth quoting.
"""

import argparse
import sys

from hwreg_rs.benchmarks import main

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer shapes, sparsities and repeats")
    a = p.parse_args()
    sys.exit(main(quick=a.quick, suites=["prune", "sparse"]))
