"""Structured shrinking of the digits CNN / ResNet / MobileNetV2: accuracy after 25% / 50% with a short
fine-tune, parameters, file size, and the int8 runtime's latency at batch 1 against the dense model.

    python benches/bench_shrink.py [--quick]
"""

import argparse

from hwreg_rs.benchmarks import shrink

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    print(shrink.run(quick=p.parse_args().quick))
