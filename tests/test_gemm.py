"""Exact int8 GEMM: MatMulInteger / QLinearMatMul vs NumPy int64 and the ONNX
reference, the Int8Linear layer vs a float64 reference, bad input."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hwreg_rs as hw

RANGE = {np.uint8: (0, 255), np.int8: (-128, 127)}


def ref_matmul(a, b, za=0, zb=0):
    """NumPy int64 reference of MatMulInteger (za per row, zb per column)."""
    za = np.asarray(za, np.int64)
    zb = np.asarray(zb, np.int64)
    a64 = a.astype(np.int64) - (za[:, None] if za.ndim == 1 and a.ndim >= 2 else za)
    b64 = b.astype(np.int64) - zb
    return np.matmul(a64, b64)


def rand(rng, shape, dtype, fill="random"):
    lo, hi = RANGE[dtype]
    if fill == "min":
        return np.full(shape, lo, dtype)
    if fill == "max":
        return np.full(shape, hi, dtype)
    return rng.integers(lo, hi + 1, shape, dtype=dtype)


dtypes = st.sampled_from([np.uint8, np.int8])
# The each_isa fixture pins a process-wide path for the whole test: safe to share across examples.
isa_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@isa_ok
@given(
    m=st.integers(0, 20), k=st.integers(0, 40), n=st.integers(0, 40),
    da=dtypes, db=dtypes, seed=st.integers(0, 2**32 - 1),
    fill_a=st.sampled_from(["random", "random", "min", "max"]),
    fill_b=st.sampled_from(["random", "random", "min", "max"]),
    zmode=st.sampled_from(["none", "scalar", "vector", "extreme"]),
    packed=st.booleans(),
)
def test_matmul_integer_matches_int64(each_isa, m, k, n, da, db, seed, fill_a, fill_b, zmode, packed):
    rng = np.random.default_rng(seed)
    a = rand(rng, (m, k), da, fill_a)
    b = rand(rng, (k, n), db, fill_b)
    if zmode == "none":
        za, zb = 0, 0
    elif zmode == "scalar":
        za, zb = int(rand(rng, (), da)), int(rand(rng, (), db))
    elif zmode == "vector":
        za, zb = rand(rng, (m,), da), rand(rng, (n,), db)
    else:
        za, zb = RANGE[da][1], RANGE[db][0]
    want = ref_matmul(a, b, za, zb)
    got = hw.matmul_integer(a, hw.pack_int8(b, zb) if packed else b, za, None if packed else zb)
    assert got.dtype == np.int32 and got.shape == (m, n)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1000, 33), (17, 257, 33), (266, 265, 70), (64, 512, 64),
                                   (3, 1, 100), (200, 64, 300)])
def test_awkward_shapes_extremes(each_isa, shape):
    m, k, n = shape
    rng = np.random.default_rng(m * k * n)
    for a, b in [(rand(rng, (m, k), np.uint8), rand(rng, (k, n), np.int8)),
                 (np.full((m, k), 255, np.uint8), np.full((k, n), -128, np.int8)),
                 (rand(rng, (m, k), np.int8), rand(rng, (k, n), np.uint8))]:
        za = rand(rng, (m,), a.dtype.type)
        zb = rand(rng, (n,), b.dtype.type)
        np.testing.assert_array_equal(hw.matmul_integer(a, b, za, zb), ref_matmul(a, b, za, zb))


@pytest.mark.parametrize("shape", [(1, 64, 64), (1, 1024, 1100), (2, 300, 129), (7, 129, 200), (70, 260, 190)])
def test_b_per_call_matches_packed(each_isa, shape):
    # B given per call is read row-major (packed a slice at a time, the wide
    # paths need >= 64 columns): same int32 and requantized bytes as packing it.
    m, k, n = shape
    rng = np.random.default_rng(m + k + n)
    for da, db in [(np.uint8, np.int8), (np.int8, np.uint8), (np.uint8, np.uint8), (np.int8, np.int8)]:
        a, b = rand(rng, (m, k), da), rand(rng, (k, n), db)
        for za, zb in [(0, 0), (rand(rng, (m,), da), rand(rng, (n,), db))]:
            got = hw.matmul_integer(a, b, za, zb)
            np.testing.assert_array_equal(got, ref_matmul(a, b, za, zb))
            np.testing.assert_array_equal(got, hw.matmul_integer(a, hw.pack_int8(b, zb), za, None))
        sb = rng.uniform(0.01, 0.02, n).astype(np.float32)
        want = hw.qlinear_matmul(a, 0.03, 1, hw.pack_int8(b, 2), sb, None, 50.0, np.uint8(7))
        np.testing.assert_array_equal(hw.qlinear_matmul(a, 0.03, 1, b, sb, 2, 50.0, np.uint8(7)), want)


@pytest.mark.parametrize("ashape,bshape", [
    ((2, 3, 4, 5), (5, 6)), ((3, 4, 5), (3, 5, 6)), ((1, 4, 5), (3, 5, 6)), ((2, 1, 4, 5), (3, 5, 2)),
    ((5,), (5, 6)), ((4, 5), (5,)), ((5,), (5,)), ((3, 4, 5), (5,)), ((5,), (2, 5, 3)), ((0, 4, 5), (5, 6)),
    ((2, 0, 5), (2, 5, 6)), ((4, 0), (0, 3)),
])
def test_batch_broadcasting_like_numpy(ashape, bshape):
    rng = np.random.default_rng(1)
    a = rand(rng, ashape, np.uint8)
    b = rand(rng, bshape, np.int8)
    want = np.matmul(a.astype(np.int64) - 3, b.astype(np.int64) + 2)
    got = hw.matmul_integer(a, b, 3, -2)
    assert got.shape == want.shape and got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_per_row_zero_point_with_batch():
    rng = np.random.default_rng(2)
    a = rand(rng, (3, 4, 7), np.uint8)
    b = rand(rng, (7, 5), np.uint8)
    za = np.array([0, 10, 200, 255], np.uint8)
    zb = rand(rng, (5,), np.uint8)
    want = np.matmul(a.astype(np.int64) - za[:, None], b.astype(np.int64) - zb)
    np.testing.assert_array_equal(hw.matmul_integer(a, b, za, zb), want)
    np.testing.assert_array_equal(hw.matmul_integer(a, hw.pack_int8(b, zb), za), want)


def _onnx_run(node, feeds):
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(node).run(None, feeds)[0]


@given(m=st.integers(1, 12), k=st.integers(1, 40), n=st.integers(1, 20), da=dtypes, db=dtypes,
       seed=st.integers(0, 2**32 - 1))
def test_matmul_integer_matches_onnx_reference(m, k, n, da, db, seed):
    pytest.importorskip("onnx")
    from onnx import helper

    rng = np.random.default_rng(seed)
    a, b = rand(rng, (m, k), da), rand(rng, (k, n), db)
    za, zb = np.array(rand(rng, (), da)), np.array(rand(rng, (), db))
    node = helper.make_node("MatMulInteger", ["A", "B", "a_zero_point", "b_zero_point"], ["Y"])
    want = _onnx_run(node, {"A": a, "B": b, "a_zero_point": za, "b_zero_point": zb})
    np.testing.assert_array_equal(hw.matmul_integer(a, b, za, zb), want)


@isa_ok
@given(m=st.integers(1, 12), k=st.integers(1, 40), n=st.integers(1, 20), da=dtypes, db=dtypes, dy=dtypes,
       seed=st.integers(0, 2**32 - 1), packed=st.booleans())
def test_qlinear_matmul_matches_onnx_reference_bit_for_bit(each_isa, m, k, n, da, db, dy, seed, packed):
    pytest.importorskip("onnx")
    from onnx import helper

    rng = np.random.default_rng(seed)
    a, b = rand(rng, (m, k), da), rand(rng, (k, n), db)
    za, zb, zy = np.array(rand(rng, (), da)), np.array(rand(rng, (), db)), np.array(rand(rng, (), dy))
    sa, sb = np.float32(rng.uniform(1e-3, 0.1)), np.float32(rng.uniform(1e-3, 0.1))
    sy = np.float32(rng.uniform(0.05, 20.0))
    node = helper.make_node("QLinearMatMul", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"])
    want = _onnx_run(node, {"a": a, "sa": np.array(sa), "za": za, "b": b, "sb": np.array(sb), "zb": zb,
                            "sy": np.array(sy), "zy": zy})
    bb = hw.pack_int8(b, zb) if packed else b
    got = hw.qlinear_matmul(a, sa, za, bb, sb, None if packed else zb, sy, zy)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_qlinear_matmul_per_row_and_column_scales():
    rng = np.random.default_rng(5)
    m, k, n = 7, 30, 9
    a, b = rand(rng, (m, k), np.uint8), rand(rng, (k, n), np.int8)
    sa = rng.uniform(0.01, 0.1, m).astype(np.float32)
    sb = rng.uniform(0.01, 0.1, n).astype(np.float32)
    za, zb = rand(rng, (m,), np.uint8), rand(rng, (n,), np.int8)
    sy, zy = np.float32(0.7), np.int8(-3)
    acc = ref_matmul(a, b, za, zb)
    mult = (sa[:, None] * sb[None, :]) / sy  # float32, as ONNX computes it
    want = np.clip(np.rint(acc * mult.astype(np.float64) + zy), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(hw.qlinear_matmul(a, sa, za, b, sb, zb, sy, zy), want)


def test_threads_give_identical_results():
    code = (
        "import numpy as np, hwreg_rs as hw, sys\n"
        "rng = np.random.default_rng(0)\n"
        "a = rng.integers(0, 256, (300, 200), dtype=np.uint8)\n"
        "b = rng.integers(-128, 128, (200, 150), dtype=np.int8)\n"
        "x = rng.standard_normal((3, 200)).astype(np.float32)\n"
        "l = hw.Int8Linear.from_float(rng.standard_normal((500, 200)).astype(np.float32))\n"
        "sys.stdout.buffer.write(hw.matmul_integer(a, b, 7, 3).tobytes() + l(x).tobytes())\n"
    )
    outs = []
    for t in ("1", "2"):
        env = dict(os.environ, HWREG_NUM_THREADS=t)
        outs.append(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True).stdout)
    assert outs[0] == outs[1] and len(outs[0]) > 0


@pytest.mark.parametrize("shape", [(0, 5, 3), (1, 0, 4), (1, 1024, 33), (7, 13, 0), (9, 64, 17)])
def test_common_call_takes_the_same_path_as_the_general_one(each_isa, shape):
    # 2-D contiguous operands with int zero points 0 skip the general path's
    # conversions: the same result as the general path (a NumPy-scalar zero
    # point, or a batch of one) for every dtype pair, packed or not, read-only or not.
    m, k, n = shape
    rng = np.random.default_rng(m + 100 * k + 10000 * n)
    for da in (np.uint8, np.int8):
        for db in (np.uint8, np.int8):
            a, b = rand(rng, (m, k), da), rand(rng, (k, n), db)
            a.flags.writeable = False
            want = ref_matmul(a, b)
            for bb in (b, hw.pack_int8(b)):
                fast = hw.matmul_integer(a, bb)
                general = hw.matmul_integer(a[None], bb, np.asarray(0, da))[0]
                assert fast.dtype == np.int32 and fast.shape == (m, n)
                np.testing.assert_array_equal(fast, want)
                np.testing.assert_array_equal(general, want)
            np.testing.assert_array_equal(hw.matmul_integer(a, hw.pack_int8(b), 0, None), want)
    with pytest.raises(ValueError, match="K mismatch"):
        hw.matmul_integer(np.zeros((2, 3), np.uint8), hw.pack_int8(np.zeros((4, 2), np.int8)))
    if k:
        layer = hw.Int8Linear.from_float(rng.standard_normal((max(n, 1), k)).astype(np.float32), relu=True)
        x = rng.standard_normal((m, k)).astype(np.float32)
        np.testing.assert_array_equal(layer(x), layer(x[None])[0])
        np.testing.assert_array_equal(layer(x), layer(x.astype(np.float64)))


def test_non_contiguous_and_big_endian_inputs():
    rng = np.random.default_rng(3)
    a = rand(rng, (20, 30), np.uint8)
    b = rand(rng, (30, 30), np.int8)
    assert not b[::2, ::3].flags.c_contiguous
    want = ref_matmul(a[:, ::2], b[::2, ::3])
    np.testing.assert_array_equal(hw.matmul_integer(a[:, ::2], b[::2, ::3]), want)
    np.testing.assert_array_equal(hw.matmul_integer(a[:, ::2].astype(">u1"), b[::2, ::3].astype(">i1")), want)
    bt = rand(rng, (15, 9), np.int8)
    np.testing.assert_array_equal(hw.matmul_integer(a[:, :15], bt.T.copy().T), ref_matmul(a[:, :15], bt))
    x = rng.standard_normal((4, 30)).astype(">f4")
    layer = hw.Int8Linear.from_float(rng.standard_normal((5, 30)).astype(">f4"))
    np.testing.assert_array_equal(layer(x), layer(x.astype(np.float32)))


def test_bad_input():
    a = np.zeros((2, 3), np.uint8)
    b = np.zeros((3, 4), np.int8)
    with pytest.raises(TypeError):
        hw.matmul_integer(a.astype(np.int16), b)
    with pytest.raises(TypeError):
        hw.matmul_integer(a, b.astype(np.float32))
    with pytest.raises(ValueError, match="K mismatch"):
        hw.matmul_integer(a, np.zeros((4, 4), np.int8))
    with pytest.raises(ValueError):
        hw.matmul_integer(np.uint8(3), b)
    with pytest.raises(ValueError, match="a_zero_point"):
        hw.matmul_integer(a, b, a_zero_point=256)
    with pytest.raises(ValueError, match="a_zero_point"):
        hw.matmul_integer(a.view(np.int8), b, a_zero_point=200)
    with pytest.raises(ValueError, match="b_zero_point"):
        hw.matmul_integer(a, b, b_zero_point=np.zeros(3, np.int8))
    with pytest.raises(ValueError, match="a_zero_point"):
        hw.matmul_integer(a, b, a_zero_point=np.zeros((2, 1), np.uint8))
    with pytest.raises(ValueError, match="a_zero_point"):
        hw.matmul_integer(a, b, a_zero_point=1.5)
    with pytest.raises(ValueError, match="zero point"):
        hw.matmul_integer(a, hw.pack_int8(b), b_zero_point=3)
    for bad in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="a_scale"):
            hw.qlinear_matmul(a, bad, 0, b, 1.0, 0, 1.0, np.uint8(0))
        with pytest.raises(ValueError, match="y_scale"):
            hw.qlinear_matmul(a, 1.0, 0, b, 1.0, 0, bad, np.uint8(0))
    with pytest.raises(ValueError, match="b_scale"):
        hw.qlinear_matmul(a, 1.0, 0, b, np.ones(3, np.float32), 0, 1.0, np.uint8(0))
    with pytest.raises(ValueError, match="y_zero_point"):
        hw.qlinear_matmul(a, 1.0, 0, b, 1.0, 0, 1.0, np.int16(300))


def test_overflow_bound_names_k():
    k_ok = (2**31 - 1) // (255 * 128)
    a = np.full((1, k_ok), 255, np.uint8)
    b = np.full((k_ok, 1), -128, np.int8)
    np.testing.assert_array_equal(hw.matmul_integer(a, b), ref_matmul(a, b))
    k = k_ok + 1
    with pytest.raises(ValueError, match=f"K = {k}"):
        hw.matmul_integer(np.zeros((1, k), np.uint8), np.zeros((k, 1), np.int8))
    # A zero point in the middle of the range halves max|a - za|: allowed again.
    hw.matmul_integer(np.zeros((1, k), np.uint8), np.zeros((k, 1), np.int8), a_zero_point=128)


# ---------------------------------------------------------------- Int8Linear

def quant_rows(x):
    """Reference per-row dynamic quantization (float32 arithmetic, as documented: x times 1/scale)."""
    lo = np.minimum(x.min(axis=1, initial=0.0), 0).astype(np.float32)
    hi = np.maximum(x.max(axis=1, initial=0.0), 0).astype(np.float32)
    scale = ((hi - lo) / np.float32(255)).astype(np.float32)
    scale[scale == 0] = 1
    zp = np.clip(np.rint(-lo / scale), 0, 255)
    inv = (np.float32(1) / scale).astype(np.float32)
    q = np.clip(np.rint(x * inv[:, None]) + zp[:, None], 0, 255)
    return q, scale, zp


def linear_ref(layer, x, relu=False):
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float32)
    q, scale, zp = quant_rows(x2)
    xd = (q - zp[:, None]) * scale[:, None].astype(np.float64)
    wd = layer.weight_q.astype(np.float64) * np.asarray(layer.weight_scale, np.float64).reshape(-1, 1)
    y = xd @ wd.T
    if layer.bias is not None:
        y += layer.bias
    if relu:
        y = np.maximum(y, 0)
    return y.reshape(*x.shape[:-1], layer.out_features)


@isa_ok
@given(m=st.integers(0, 9), k=st.integers(1, 70), n=st.integers(1, 40), seed=st.integers(0, 2**32 - 1),
       per_channel=st.booleans(), has_bias=st.booleans(), relu=st.booleans())
def test_int8_linear_matches_float64_reference(each_isa, m, k, n, seed, per_channel, has_bias, relu):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if has_bias else None
    layer = hw.Int8Linear.from_float(w, bias, per_channel=per_channel, relu=relu)
    x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 10)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32 and y.shape == (m, n)
    want = linear_ref(layer, x, relu)
    tol = 1e-5 * (np.abs(want).max(initial=0) + 1) * np.sqrt(k)
    np.testing.assert_allclose(y, want, atol=tol, rtol=1e-5)


def test_int8_linear_quantization_and_accuracy():
    rng = np.random.default_rng(9)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    layer = hw.Int8Linear.from_float(w)
    np.testing.assert_allclose(layer.weight_scale, np.abs(w).max(axis=1) / 127, rtol=1e-6)
    assert np.abs(layer.weight_q).max() == 127 and layer.weight_q.dtype == np.int8
    assert (layer.in_features, layer.out_features) == (128, 64)
    assert layer.nbytes >= 64 * 128
    x = rng.standard_normal((2, 5, 128)).astype(np.float32)
    y = layer(x)
    assert y.shape == (2, 5, 64)
    exact = x @ w.T
    assert np.abs(y - exact).max() < 0.05 * np.abs(exact).max()
    pt = hw.Int8Linear.from_float(w, per_channel=False)
    assert pt.weight_scale.shape == (1,)


def test_int8_linear_static_path():
    rng = np.random.default_rng(4)
    w = rng.integers(-127, 128, (6, 20), dtype=np.int8)
    ws = rng.uniform(0.01, 0.05, 6).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    layer = hw.Int8Linear(w, ws, bias, relu=True)
    xq = rng.integers(0, 256, (5, 20), dtype=np.uint8)
    xs = rng.uniform(0.01, 0.05, 5).astype(np.float32)
    xz = rng.integers(0, 256, 5)
    f = ((xq.astype(np.int64) - xz[:, None]) @ w.T.astype(np.int64)) * xs[:, None].astype(np.float64) * ws + bias
    f = np.maximum(f, 0)
    np.testing.assert_allclose(layer.forward_quantized(xq, xs, xz), f, rtol=1e-5, atol=1e-5)
    y = layer.forward_quantized(xq, xs, xz, y_scale=0.05, y_zero_point=-10, y_dtype="int8")
    want = np.clip(np.rint(f / 0.05) - 10, -128, 127)
    assert y.dtype == np.int8
    assert np.abs(y.astype(np.int64) - want).max() <= 1
    with pytest.raises(ValueError, match="x_scale"):
        layer.forward_quantized(xq, np.ones(4, np.float32), xz)
    with pytest.raises(TypeError):
        layer.forward_quantized(xq, xs, xz, y_scale=1.0, y_dtype="int16")


def test_int8_linear_pickle_and_bad_input():
    rng = np.random.default_rng(6)
    layer = hw.Int8Linear.from_float(rng.standard_normal((7, 9)).astype(np.float32),
                                     rng.standard_normal(7).astype(np.float32), relu=True)
    clone = pickle.loads(pickle.dumps(layer))
    x = rng.standard_normal((3, 9)).astype(np.float32)
    np.testing.assert_array_equal(clone(x), layer(x))
    np.testing.assert_array_equal(clone.weight_q, layer.weight_q)
    packed = hw.pack_int8(rng.integers(0, 256, (9, 4), dtype=np.uint8), 17)
    p2 = pickle.loads(pickle.dumps(packed))
    np.testing.assert_array_equal(p2.unpack(), packed.unpack())
    a = rng.integers(0, 256, (3, 9), dtype=np.uint8)
    np.testing.assert_array_equal(hw.matmul_integer(a, p2), hw.matmul_integer(a, packed))
    with pytest.raises(ValueError, match="in_features|9"):
        layer(np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="finite"):
        layer(np.array([[np.nan] * 9], np.float32))
    with pytest.raises(ValueError, match="weight_scale"):
        hw.Int8Linear(np.zeros((2, 3), np.int8), np.array([1.0, 0.0]))
    with pytest.raises(TypeError):
        hw.Int8Linear(np.zeros((2, 3), np.float32), 1.0)
    with pytest.raises(ValueError, match="bias"):
        hw.Int8Linear(np.zeros((2, 3), np.int8), 1.0, np.zeros(3))
    with pytest.raises(ValueError):
        hw.Int8Linear.from_float(np.zeros(3, np.float32))
