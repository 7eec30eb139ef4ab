"""Issue 4 targets and training benchmarks: digits accuracies, one MLP epoch vs NumPy, conv kernels.

    python benches/bench_train.py            # everything (a few minutes on 2 cores)
    python benches/bench_train.py --quick    # shortened runs (not the targets' epoch counts)
    python benches/bench_train.py --only targets|epoch|conv

Prints Markdown tables of measured accuracies and times (same as ``hwreg-rs bench --suite train``).
"""

from __future__ import annotations

import argparse
import sys

from hwreg_rs.benchmarks import train


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["targets", "epoch", "conv"])
    args = ap.parse_args()
    if args.only is None:
        print(train.run(quick=args.quick))
    else:
        fn = {"targets": train.targets, "epoch": train.epoch_benchmark, "conv": train.conv_kernels}[args.only]
        print(fn(quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
