"""Int8 runtime models against the float models in NumPy and ONNX Runtime.

    python benches/bench_runtime.py [--quick]
"""

import argparse

from hwreg_rs.benchmarks import runtime

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    print(runtime.run(quick=p.parse_args().quick))
