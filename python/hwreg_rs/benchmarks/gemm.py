"""Benchmark suite "gemm": exact int8 GEMM vs NumPy and ONNX Runtime.

Throughput is ``GOP/s = 2·M·K·N / time`` (median of several repeats, each
contender timed side by side in one run). Each shape runs on 1 thread and on
the library's thread count (ours and ONNX Runtime alike), all in the same
round-robin rounds, so the scaling of each side is compared as well. Every answer is checked first: ours
exactly against NumPy int64 (on a row slice for the big shapes), ONNX
Runtime's against the same exact result (its max error is reported, since its
AVX2 u8×s8 path saturates), and the float paths against fp32 NumPy.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Callable, Hashable, Mapping, TypeVar

import numpy as np

from . import Table, median_seconds

SHAPES = [(1, 1024, 1024), (1, 4096, 4096), (32, 1024, 1024), (128, 768, 3072), (512, 1024, 1024),
          (1024, 1024, 1024)]
QUICK_SHAPES = [(1, 1024, 1024), (32, 1024, 1024), (128, 768, 3072)]
NUMPY_INT_MAX_MACS = 40_000_000  # NumPy's integer matmul runs below 1 GOP/s: skip bigger shapes
PAUSE_S = 0.05  # before each sample: the previous contender's spinning pool threads go idle
# Calls before each sample: after another contender (or the pause), a 16 MB operand took ~40
# calls of ours and ~5 of ORT's to be back in L3 (Zen 5, 1x4096x4096: the first calls 2.5-3.5x
# slower), so two warm-up calls timed each side partly cold, by how the other's B was laid out.
WARM_S = 0.03
FLUSH_BYTES = 64 << 20  # the cold table: read before each call, twice a 32 MiB L3

_K = TypeVar("_K", bound=Hashable)  # a contender's name


def _ort_sessions(k: int, n: int, b: np.ndarray, w_float: np.ndarray, threads: int) -> dict[str, Any]:
    """ORT sessions: MatMulInteger with B constant / B input, and the dynamic-quantized float MatMul."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return {}
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    prov = ["CPUExecutionProvider"]
    out: dict[str, Any] = {}

    def mmi(b_const: bool) -> Any:
        inputs = [helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", k])]
        inits = []
        if b_const:
            inits.append(numpy_helper.from_array(b, "B"))
        else:
            inputs.append(helper.make_tensor_value_info("B", TensorProto.INT8, [k, n]))
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        g = helper.make_graph([node], "mmi", inputs, [helper.make_tensor_value_info("Y", TensorProto.INT32, ["M", n])],
                              initializer=inits)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        return ort.InferenceSession(model.SerializeToString(), so, providers=prov)

    out["mmi_const"] = mmi(True)
    out["mmi_input"] = mmi(False)
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        node = helper.make_node("MatMul", ["X", "W"], ["Y"])
        g = helper.make_graph([node], "mm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
                              initializer=[numpy_helper.from_array(w_float, "W")])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        with tempfile.TemporaryDirectory() as d:
            src, dst = os.path.join(d, "f.onnx"), os.path.join(d, "q.onnx")
            onnx.save(model, src)
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
            out["dyn"] = ort.InferenceSession(dst, so, providers=prov)
    except Exception as e:  # quantization tooling missing or failing: report, don't crash
        out["dyn_error"] = repr(e)
    return out


def _interleaved(fns: Mapping[_K, Callable[[], Any]], repeats: int, min_seconds: float = 0.01,
                 warm_s: float = WARM_S) -> dict[_K, float]:
    """Median seconds per call of each function, sampled round-robin with a pause before each
    sample, then ``warm_s`` seconds of calls so that each contender is timed with its own operands
    back in cache (the package's one timer, ``median_seconds``, for each sample)."""
    samples: dict[_K, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, int(repeats))):
        for name, fn in fns.items():
            time.sleep(PAUSE_S)
            end = time.perf_counter() + warm_s
            while time.perf_counter() < end:
                fn()
            samples[name].append(median_seconds(fn, repeats=1, min_seconds=min_seconds))
    return {name: float(np.median(v)) for name, v in samples.items()}


def _cold(fns: Mapping[_K, Callable[[], Any]], repeats: int, calls: int = 5) -> dict[_K, float]:
    """Median seconds of one call of each function with its operands out of cache: a buffer
    twice a 32 MiB L3 is read before every timed call (round-robin, as :func:`_interleaved`)."""
    flush = np.ones(FLUSH_BYTES // 8, np.int64)
    samples: dict[_K, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, int(repeats))):
        for name, fn in fns.items():
            time.sleep(PAUSE_S)
            fn()
            for _ in range(calls):
                flush.sum()
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    return {name: float(np.median(v)) for name, v in samples.items()}


def _on_threads(t: int, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run with the library's kernels on ``t`` threads."""
    import hwreg_rs as hw

    def call() -> Any:
        hw.set_num_threads(t)
        return fn()
    return call


def run(quick: bool = False) -> str:
    import hwreg_rs as hw

    threads = hw.num_threads()
    counts = sorted({1, threads})
    rng = np.random.default_rng(0)
    repeats = 3 if quick else 11  # the 2-vCPU VM drifts by ±30% over seconds: many short rounds
    shapes = QUICK_SHAPES if quick else SHAPES
    notes: list[str] = []
    cols = ["M,K,N", "threads", "ours B/call", "ours packed", "Int8Linear f32", "NumPy fp32", "NumPy int32",
            "ORT MMI const B", "ORT MMI B input", "ORT dyn-quant", "B/call/ORT MMI B input", "packed/ORT MMI",
            "Int8Linear/ORT dyn",
            "Int8Linear/NumPy fp32", "packed/NumPy int"]
    table = Table(cols)
    cold_table = Table(["M,K,N", "threads", "ours B/call", "ORT MMI B input", "ours packed", "ORT MMI const B",
                        "Int8Linear f32", "ORT dyn-quant", "B/call/ORT MMI B input", "packed/ORT MMI",
                        "Int8Linear/ORT dyn"])
    have_ort = False
    for m, k, n in shapes:
        ops = 2.0 * m * k * n
        a = rng.integers(0, 256, (m, k), dtype=np.uint8)
        b = rng.integers(-128, 128, (k, n), dtype=np.int8)
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)  # float MatMul weight (K, N)
        packed = hw.pack_int8(b)
        layer = hw.Int8Linear.from_float(np.ascontiguousarray(w.T))

        # Check answers before timing.
        rows = min(m, 16)
        exact = a[:rows].astype(np.int64) @ b.astype(np.int64)
        got = hw.matmul_integer(a, b)
        assert np.array_equal(got[:rows], exact), "matmul_integer (B per call) is wrong"
        assert np.array_equal(hw.matmul_integer(a, packed)[:rows], exact), "matmul_integer (packed) is wrong"
        y32 = x @ w
        yl = layer(x)
        rel = float(np.abs(yl - y32).max() / (np.abs(y32).max() + 1e-30))
        assert rel < 0.05, f"Int8Linear error too large: {rel}"

        fns: dict[tuple[str, int], Callable[[], Any]] = {}
        for t in counts:
            fns["call", t] = _on_threads(t, lambda: hw.matmul_integer(a, b))
            fns["packed", t] = _on_threads(t, lambda: hw.matmul_integer(a, packed))
            fns["layer", t] = _on_threads(t, lambda: layer(x))
            sess = _ort_sessions(k, n, b, w, t)
            if "mmi_const" in sess:
                have_ort = True
                yo = sess["mmi_const"].run(None, {"A": a})[0]
                err = int(np.abs(yo[:rows].astype(np.int64) - exact).max())
                if err and t == counts[0]:
                    notes.append(f"ORT MatMulInteger at ({m},{k},{n}): max abs error {err} (inexact)")
                fns["mc", t] = lambda s=sess: s["mmi_const"].run(None, {"A": a})
                fns["mi", t] = lambda s=sess: s["mmi_input"].run(None, {"A": a, "B": b})
            if "dyn" in sess:
                if t == counts[0]:
                    yd = sess["dyn"].run(None, {"X": x})[0]
                    rel_d = float(np.abs(yd - y32).max() / (np.abs(y32).max() + 1e-30))
                    notes.append(f"({m},{k},{n}) max rel. error vs fp32: Int8Linear {rel:.2e}, "
                                 f"ORT dyn-quant {rel_d:.2e}")
                fns["dyn", t] = lambda s=sess: s["dyn"].run(None, {"X": x})
            elif "dyn_error" in sess and t == counts[0]:
                notes.append(f"ORT quantize_dynamic failed: {sess['dyn_error']}")
        time.sleep(0.3)  # OpenBLAS threads (from the float check) spin for a while
        try:
            secs = _interleaved(fns, repeats)
            # One row streams all of B once per call: also timed with B out of cache.
            cold = _cold(fns, repeats) if m == 1 else {}
        finally:
            hw.set_num_threads(threads)
        # NumPy last, on its own: OpenBLAS threads keep spinning for a while
        # after each call and would steal the cores from whatever runs next.
        r_np32 = ops / median_seconds(lambda: x @ w, repeats=repeats) / 1e9
        r_npint = None
        if m * k * n <= NUMPY_INT_MAX_MACS:
            a32, b32 = a.astype(np.int32), b.astype(np.int32)
            r_npint = ops / median_seconds(lambda: a32 @ b32, repeats=3, min_seconds=0.0) / 1e9
        time.sleep(0.3)  # let OpenBLAS's spinning threads go to sleep before the next shape

        def ratio(p: float | None, q: float | None) -> str | None:
            return None if p is None or q is None else f"{p / q:.2f}×"

        for t in counts:
            g = {name: ops / s / 1e9 for (name, tt), s in secs.items() if tt == t}
            r_call, r_packed, r_layer = g["call"], g["packed"], g["layer"]
            r_mc, r_mi, r_dyn = g.get("mc"), g.get("mi"), g.get("dyn")
            np32, npint = (r_np32, r_npint) if t == threads else (None, None)  # NumPy runs on its own threads
            table.add(f"{m},{k},{n}", t, r_call, r_packed, r_layer, np32, npint, r_mc, r_mi, r_dyn,
                      ratio(r_call, r_mi), ratio(r_packed, r_mc), ratio(r_layer, r_dyn), ratio(r_layer, np32),
                      ratio(r_packed, npint))
            if cold:
                c = {name: ops / s / 1e9 for (name, tt), s in cold.items() if tt == t}
                cold_table.add(f"{m},{k},{n}", t, c["call"], c.get("mi"), c["packed"], c.get("mc"), c["layer"],
                               c.get("dyn"), ratio(c["call"], c.get("mi")), ratio(c["packed"], c.get("mc")),
                               ratio(c["layer"], c.get("dyn")))
    head = (f"### gemm: exact int8 GEMM (ISA {hw.active_isa()}; threads {', '.join(map(str, counts))}, ours and ORT "
            "intra_op_num_threads alike; NumPy on its own threads)\n\n"
            f"GOP/s = 2·M·K·N / time (median of {repeats} rounds, contenders timed round-robin, each sample "
            f"after {WARM_S * 1e3:.0f} ms of calls of its own, so operands that fit are in cache alike); "
            "A uint8 × B int8 → int32; Int8Linear and ORT dyn-quant are float32 in / float32 out; "
            "ratios > 1 mean ours is faster.\n")
    body = table.markdown()
    if cold_table.rows:
        body += ("\n\nM = 1, B out of cache (a 64 MiB buffer read before each timed call; median of "
                 f"{repeats} rounds × 5 calls):\n\n" + cold_table.markdown())
    tail = "\n\n" + "\n".join(f"- {s}" for s in notes) if notes else ""
    if not have_ort:
        tail += "\n- onnxruntime not installed: ORT columns empty (pip install 'hwreg-rs[bench]')"
    return head + "\n" + body + tail
