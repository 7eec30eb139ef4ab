"""Cost model check: `python benches/bench_cost_model.py [--quick]`.

Prints the Markdown table of the "cost" suite (hwreg_rs.benchmarks.cost): per
layer of the digits MLP and the small CNN (int8 runtime models, and the float
models in NumPy) at batch 1 and 64, the latency the cost model estimates on the
measured host profile against the measured latency, and the error; then, per
compression candidate kind the planner offers (shrinking, 1x8-block sparsity,
int4 per channel and per group of 32/64/128), the predicted speed-up over dense
int8 of the layers it changes against the measured one (target: within 25%).
Set HWREG_NUM_THREADS to pick the thread count.
"""

import argparse

from hwreg_rs.benchmarks import main

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="quick profile and fewer repeats")
    raise SystemExit(main(quick=p.parse_args().quick, suites=["cost"]))
