"""The ``hwreg-rs`` command (also ``python -m hwreg_rs``)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _bench(args: argparse.Namespace) -> int:
    from . import benchmarks

    return benchmarks.main(quick=args.quick, suites=args.suite)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwreg-rs", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="time the kernels against NumPy and peers and print a table")
    b.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    b.add_argument("--suite", action="append", help="run only this suite (repeatable)")
    b.set_defaults(func=_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
