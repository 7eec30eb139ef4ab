"""Quantization benchmark: ``python benches/bench_quant.py [--quick]``.

Same as ``hwreg-rs bench --suite quant``; prints a Markdown table of hwreg_rs vs
the NumPy expressions for quantize, dequantize and dynamic_quantize.
"""

from __future__ import annotations

import argparse

from hwreg_rs.benchmarks import main

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="1M elements and fewer repeats")
    args = p.parse_args()
    raise SystemExit(main(quick=args.quick, suites=["quant"]))
