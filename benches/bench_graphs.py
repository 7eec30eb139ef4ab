"""ONNX models in (hwreg_rs.zoo, written as torch.onnx.export writes them), trained on digits,
converted to int8 and exported, against ONNX Runtime on the same ONNX.

    python benches/bench_graphs.py [--quick]

Set HWREG_TORCH_ONNX_DIR to a folder of torch exports (tests/fixtures/export_torch.py writes
torchvision's resnet18 and mobilenet_v2 there) to add them to the tables.
"""

import argparse

from hwreg_rs.benchmarks import graphs

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    print(graphs.run(quick=p.parse_args().quick))
