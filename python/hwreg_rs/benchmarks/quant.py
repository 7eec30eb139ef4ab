"""Benchmark suite "quant": quantize / dequantize / dynamic_quantize vs NumPy.

Each row times hwreg_rs and the NumPy expression that computes the same thing,
side by side in one run (median of several repeats), after checking that both
give identical answers. Throughput is elements per second and GB/s of array
traffic (float32 in + int8 out for quantize, the reverse for dequantize).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import Table, median_seconds


def _np_quantize(x: np.ndarray, s: Any, zp: Any, lo: int, hi: int, dtype: Any) -> np.ndarray:
    return np.clip(np.rint(x / s) + zp, lo, hi).astype(dtype)


def _np_dequantize(q: np.ndarray, s: Any, zp: Any) -> np.ndarray:
    return (q.astype(np.float32) - zp) * s


def _np_quantize_out(x: np.ndarray, s: Any, zp: Any, lo: int, hi: int, tmp: np.ndarray,
                     out: np.ndarray) -> np.ndarray:
    np.divide(x, s, out=tmp)
    np.rint(tmp, out=tmp)
    np.add(tmp, zp, out=tmp)
    np.clip(tmp, lo, hi, out=tmp)
    np.copyto(out, tmp, casting="unsafe")
    return out


def _np_dequantize_out(q: np.ndarray, s: Any, zp: Any, out: np.ndarray) -> np.ndarray:
    np.subtract(q, zp, out=out, dtype=np.float32)
    np.multiply(out, s, out=out)
    return out


def _np_dynamic(x: np.ndarray) -> tuple[np.ndarray, np.float32, np.uint8]:
    maxx = np.float32(max(np.float32(0), x.max()))
    minx = np.float32(min(np.float32(0), x.min()))
    scale = np.float32(1.0 if maxx == minx else maxx - minx) / np.float32(255)
    zp = np.rint(np.clip(np.float32(0) - minx / scale, 0, 255))
    return np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.uint8), scale, np.uint8(zp)


def _check(a: Any, b: Any, what: str) -> None:
    if isinstance(a, tuple):
        for u, v in zip(a, b):
            _check(u, v, what)
        return
    if not np.array_equal(np.asarray(a), np.asarray(b)):
        raise AssertionError(f"{what}: hwreg_rs and NumPy disagree")


def run(quick: bool = False) -> str:
    """Time the quantization kernels against NumPy; returns a Markdown section."""
    import hwreg_rs as hw

    rows, cols = (1024, 1024) if quick else (4096, 4096)
    n = rows * cols
    repeats = 3 if quick else 7
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (rows, cols)).astype(np.float32)
    s = np.float32(0.02)
    s_row = rng.uniform(0.01, 0.03, rows).astype(np.float32)  # per axis 0
    s_col = rng.uniform(0.01, 0.03, cols).astype(np.float32)  # per axis 1 (last)
    z_row = rng.integers(-10, 10, rows).astype(np.int32)
    z_col = rng.integers(-10, 10, cols).astype(np.int32)
    # NumPy gets float32 zero points so its expression stays in float32.
    zf_row, zf_col = z_row.astype(np.float32), z_col.astype(np.float32)
    q = hw.quantize(x, s, 3)
    q_out, q_out2 = np.empty_like(q), np.empty_like(q)
    f_out, f_out2, f_tmp = np.empty_like(x), np.empty_like(x), np.empty_like(x)

    cases: list[tuple[str, str, int, Callable[[], Any], Callable[[], Any]]] = [
        ("quantize int8", "per tensor", 5,
         lambda: hw.quantize(x, s, 3), lambda: _np_quantize(x, s, 3, -128, 127, np.int8)),
        ("quantize uint8", "per tensor", 5,
         lambda: hw.quantize(x, s, 128, dtype="uint8"), lambda: _np_quantize(x, s, 128, 0, 255, np.uint8)),
        ("quantize int8", "per axis 0", 5,
         lambda: hw.quantize(x, s_row, z_row, axis=0),
         lambda: _np_quantize(x, s_row[:, None], zf_row[:, None], -128, 127, np.int8)),
        ("quantize int8", "per axis 1", 5,
         lambda: hw.quantize(x, s_col, z_col, axis=1),
         lambda: _np_quantize(x, s_col, zf_col, -128, 127, np.int8)),
        ("dequantize int8", "per tensor", 5,
         lambda: hw.dequantize(q, s, 3), lambda: _np_dequantize(q, s, np.float32(3))),
        ("dequantize int8", "per axis 0", 5,
         lambda: hw.dequantize(q, s_row, z_row, axis=0),
         lambda: _np_dequantize(q, s_row[:, None], zf_row[:, None])),
        ("dequantize int8", "per axis 1", 5,
         lambda: hw.dequantize(q, s_col, z_col, axis=1),
         lambda: _np_dequantize(q, s_col, zf_col)),
        ("dynamic_quantize", "per tensor", 5, lambda: hw.dynamic_quantize(x), lambda: _np_dynamic(x)),
        # Preallocated outputs on both sides (NumPy: in-place ufuncs with out=).
        ("quantize int8 (out=)", "per tensor", 5,
         lambda: hw.quantize(x, s, 3, out=q_out), lambda: _np_quantize_out(x, s, 3, -128, 127, f_tmp, q_out2)),
        ("dequantize int8 (out=)", "per tensor", 5,
         lambda: hw.dequantize(q, s, 3, out=f_out), lambda: _np_dequantize_out(q, s, np.float32(3), f_out2)),
    ]
    t = Table(["op", "params", "elements", "NumPy ms", "hwreg ms", "NumPy GB/s", "hwreg GB/s",
               "hwreg Melem/s", "speed-up"])
    for op, params, bytes_per, ours, theirs in cases:
        _check(ours(), theirs(), f"{op} {params}")
        t_ours = median_seconds(ours, repeats=repeats)
        t_np = median_seconds(theirs, repeats=repeats)
        gb = n * bytes_per / 1e9
        t.add(op, params, f"{rows}x{cols}", t_np * 1e3, t_ours * 1e3, gb / t_np, gb / t_ours,
              n / t_ours / 1e6, f"{t_np / t_ours:.1f}x")
    head = ("## quant: quantize / dequantize / dynamic_quantize vs the NumPy expression\n\n"
            "float32 input, median of %d runs; GB/s counts 4 + 1 bytes per element; NumPy is "
            "`np.clip(np.rint(x / s) + zp, lo, hi).astype(int8)` and `(q.astype(float32) - zp) * s` "
            "(the `out=` rows: both sides write preallocated arrays, NumPy through in-place ufuncs); "
            "answers checked equal before timing.\n\n" % repeats)
    return head + t.markdown()
