"""Exact int8 GEMM benchmark: `python benches/bench_gemm.py [--quick]`.

Prints the Markdown table of the "gemm" suite (hwreg_rs.benchmarks.gemm):
GOP/s = 2·M·K·N / time for our matmul_integer (B per call and prepacked), the
Int8Linear layer, NumPy fp32 / integer matmul and ONNX Runtime. Set
HWREG_NUM_THREADS to pick the thread count, HWREG_FORCE_ISA=avx2 for the AVX2 path.
"""

import argparse

from hwreg_rs.benchmarks import main

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    raise SystemExit(main(quick=p.parse_args().quick, suites=["gemm"]))
