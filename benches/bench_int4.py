"""int4 GEMV / small-batch benchmark: `python benches/bench_int4.py [--quick] [--threads 1 2]`.

Side by side in one run, on the same weights: our int4 layer (hw.int4.Int4Linear,
per output channel and per group of 128 / 32 inputs), our int8 layer
(hw.Int8Linear, the packed int8 GEMM) and ONNX Runtime's MatMulNBits (a one-node
model built with onnx.helper from our packed codes and scales; accuracy_level=4,
its int8-activation fast path). Every contender is checked before it is timed:
our int4 output against the float product with the dequantized weight (within
the activation rounding), ORT's against ours. Time: median over rounds that
time every contender once (round-robin, so drifts in machine load hit all
alike); ratios > 1 mean ours is faster.
"""

from __future__ import annotations

import argparse
import platform
from typing import Any

import numpy as np

import hwreg_rs as hw
from hwreg_rs.benchmarks import Table
from hwreg_rs.benchmarks.gemm import _interleaved

SHAPES = [(1, 4096, 4096), (4, 4096, 4096), (16, 4096, 4096), (1, 1024, 1024), (4, 1024, 1024), (16, 1024, 1024)]
QUICK_SHAPES = [(1, 4096, 4096), (1, 1024, 1024), (16, 1024, 1024)]


def ort_matmulnbits(layer: hw.int4.Int4Linear, block: int, threads: int) -> Any:
    """An ORT session of one MatMulNBits node holding ``layer``'s codes and scales (symmetric, ``block`` inputs
    per scale; a per-channel layer repeats its scale over the blocks)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n, k = layer.out_features, layer.in_features
    kb = -(-k // block)
    blob = np.zeros((n, kb * block // 2), np.uint8)
    blob[:, :layer.weight.packed.shape[1]] = layer.weight.packed
    scales = np.repeat(layer.weight.scales, kb // layer.weight.scales.shape[1], axis=1).astype(np.float32)
    node = helper.make_node("MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=block, accuracy_level=4)
    g = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
                          initializer=[numpy_helper.from_array(blob.reshape(n, kb, block // 2), "B"),
                                       numpy_helper.from_array(scales.reshape(-1), "S")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def check(layer: hw.int4.Int4Linear, x: np.ndarray) -> None:
    """Ours against the float product with the dequantized weight, within the rows' activation rounding."""
    wd = layer.dequantized_weight()
    want = x @ wd.T
    scale = (np.maximum(x.max(axis=1), 0) - np.minimum(x.min(axis=1), 0)) / 255
    bound = 0.5 * scale[:, None] * np.abs(wd).sum(axis=1)[None, :] * 1.01 + 1e-3
    assert np.all(np.abs(layer(x) - want) <= bound), "int4 layer is off"


def run(shapes: list[tuple[int, int, int]], threads: list[int], repeats: int) -> str:
    rng = np.random.default_rng(0)
    table = Table(["M,K,N", "threads", "int8 µs", "int4 ch µs", "int4 g128 µs", "ORT NBits 128 µs", "int4 g32 µs",
                   "ORT NBits 32 µs", "int4 ch / int8", "int4 g128 / int8", "int4 g128 / ORT 128",
                   "int4 g32 / ORT 32"])
    for m, k, n in shapes:
        w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
        x = rng.standard_normal((m, k)).astype(np.float32)
        l8 = hw.Int8Linear.from_float(w)
        l4 = {g: hw.int4.Int4Linear.from_float(w, group_size=g) for g in (None, 128, 32)}
        for layer in l4.values():
            check(layer, x)
        for t in threads:
            hw.set_num_threads(t)
            ort = {g: ort_matmulnbits(l4[g], g, t) for g in (128, 32)}
            for g, s in ort.items():
                y = s.run(None, {"A": x})[0]
                ref = l4[g](x)
                assert np.abs(y - ref).max() <= 0.02 * np.abs(ref).max() + 1e-3, f"ORT MatMulNBits {g} is off"
            fns = {"int8": lambda: l8(x), "ch": lambda: l4[None](x), "g128": lambda: l4[128](x),
                   "ort128": lambda: ort[128].run(None, {"A": x}), "g32": lambda: l4[32](x),
                   "ort32": lambda: ort[32].run(None, {"A": x})}
            sec = _interleaved(fns, repeats)
            us = {name: v * 1e6 for name, v in sec.items()}
            table.add(f"{m},{k},{n}", t, us["int8"], us["ch"], us["g128"], us["ort128"], us["g32"], us["ort32"],
                      sec["int8"] / sec["ch"], sec["int8"] / sec["g128"], sec["ort128"] / sec["g128"],
                      sec["ort32"] / sec["g32"])
    hw.set_num_threads(0)
    return table.markdown()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = p.parse_args()
    import onnxruntime

    print(f"hwreg_rs {hw.__version__} | ISA {hw.active_isa()} | onnxruntime {onnxruntime.__version__} | "
          f"{platform.processor() or platform.machine()}")
    print(run(QUICK_SHAPES if a.quick else SHAPES, a.threads, 3 if a.quick else 9))
