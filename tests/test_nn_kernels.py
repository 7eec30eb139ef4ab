"""The float32 native kernels of LayerNorm, Softmax, LogSoftmax, GELU and the depthwise Conv2d against the
float64 NumPy reference paths of the same classes: forward, backward (input and parameter gradients), shapes
drawn by hypothesis, dispatch (float32 native, other dtypes NumPy), argument errors."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import hwreg_rs as hw
from hwreg_rs import _native
from hwreg_rs.nn import ops

nn = hw.nn
RTOL = 1e-5


def run_pair(module, x, seed=0):
    """(float32 native, float64 NumPy) forward outputs, input gradients and parameter gradients."""
    m32 = module
    m64 = copy.deepcopy(module).astype(np.float64)
    x32 = np.asarray(x, np.float32)
    x64 = x32.astype(np.float64)
    y32, y64 = m32(x32), m64(x64)
    assert y32.dtype == np.float32 and y64.dtype == np.float64
    g = np.random.default_rng(seed).standard_normal(y64.shape)
    gx32, gx64 = m32.backward(g.astype(np.float32)), m64.backward(g)
    assert gx32.dtype == np.float32 and gx32.shape == x32.shape
    p32 = {n: p.grad for n, p in m32.named_parameters()}
    p64 = {n: p.grad for n, p in m64.named_parameters()}
    return (y32, y64), (gx32, gx64), (p32, p64)


def close(a, b, *, rtol=RTOL, atol=None, what=""):
    """assert_allclose with an absolute floor scaled to the reference (float32 rounding of large sums)."""
    b = np.asarray(b)
    scale = float(np.max(np.abs(b))) if b.size else 1.0
    np.testing.assert_allclose(a, b, rtol=rtol, atol=(atol if atol is not None else 1e-5 * max(scale, 1e-3)),
                               err_msg=what)


def check(module, x, *, rtol=RTOL, atol=None, gtol=None):
    (y32, y64), (gx32, gx64), (p32, p64) = run_pair(module, x)
    close(y32, y64, rtol=rtol, atol=atol, what="forward")
    close(gx32, gx64, rtol=gtol or 10 * rtol, atol=atol, what="grad x")
    assert p32.keys() == p64.keys()
    for n in p32:
        assert p32[n].dtype == np.float32, n
        close(p32[n], p64[n], rtol=gtol or 10 * rtol, atol=atol, what=f"grad {n}")


def data(shape, seed=0, scale=1.0, offset=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + offset).astype(np.float32)


# ---------------------------------------------------------------------------
# LayerNorm
# ---------------------------------------------------------------------------

@given(lead=st.lists(st.integers(1, 4), max_size=3), norm=st.lists(st.sampled_from([1, 2, 3, 7, 16]), min_size=1,
       max_size=2), affine=st.sampled_from(["full", "nobias", "none"]), eps=st.sampled_from([1e-5, 1e-3, 0.1]),
       offset=st.sampled_from([0.0, 5.0]), seed=st.integers(0, 2**16))
def test_layer_norm_native_matches_float64(lead, norm, affine, eps, offset, seed):
    ln = ops.LayerNorm(norm, eps=eps, elementwise_affine=affine != "none", bias=affine == "full")
    if ln.weight is not None:
        ln.weight.data[...] = data(ln.weight.shape, seed + 1, 0.5, 1.0)
    if ln.bias is not None:
        ln.bias.data[...] = data(ln.bias.shape, seed + 2)
    check(ln, data(tuple(lead) + tuple(norm), seed, 2.0, offset))


@pytest.mark.parametrize("d", [1, 3, 7, 64, 1000])
def test_layer_norm_sizes(d):
    ln = ops.LayerNorm(d)
    ln.weight.data[...] = data(d, 1, 0.3, 1.0)
    ln.bias.data[...] = data(d, 2)
    check(ln, data((9, d), 3, 3.0))


def test_layer_norm_native_path_is_taken_and_other_dtypes_are_not():
    ln = ops.LayerNorm(4)
    ln(np.ones((2, 4), np.float32))
    assert ln._native_cache is not None
    ln(np.ones((2, 4), np.float64))
    assert ln._native_cache is None
    # float32 forward, float64 gradient: NumPy backward from the saved statistics
    x = data((3, 4))
    y = ln(x)
    g64 = ln.backward(np.ones((3, 4)))
    ref = copy.deepcopy(ln).astype(np.float64)
    ref(x.astype(np.float64))
    np.testing.assert_allclose(g64, ref.backward(np.ones((3, 4))), atol=1e-5)
    assert y.dtype == np.float32


def test_layer_norm_non_contiguous_input():
    ln = ops.LayerNorm(6)
    x = data((6, 5)).T  # (5, 6), F-ordered
    check(ln, x)


# ---------------------------------------------------------------------------
# Softmax / LogSoftmax
# ---------------------------------------------------------------------------

@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), data_=st.data(),
       scale=st.sampled_from([1.0, 20.0, 1e3]), log=st.booleans(), seed=st.integers(0, 2**16))
def test_softmax_native_matches_float64(shape, data_, scale, log, seed):
    axis = data_.draw(st.integers(-len(shape), len(shape) - 1))
    op = ops.LogSoftmax(axis) if log else ops.Softmax(axis)
    check(op, data(tuple(shape), seed, scale, 1e3), atol=1e-5 * scale if log else 1e-6)


@pytest.mark.parametrize("d", [1, 3, 7, 64, 1000])
@pytest.mark.parametrize("op", [ops.Softmax, ops.LogSoftmax])
def test_softmax_sizes_and_large_magnitudes(d, op):
    check(op(-1), data((9, d), 0, 50.0, -3e4), atol=1e-3 if op is ops.LogSoftmax else 1e-6)


def test_softmax_native_dispatch_and_nan_rows():
    sm = ops.Softmax(0)
    y = sm(np.array([[1.0, np.nan], [2.0, 0.0]], np.float32))
    assert sm._on_native and y.dtype == np.float32
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, 0]).all()
    sm(np.zeros((2, 2)))
    assert not sm._on_native


# ---------------------------------------------------------------------------
# GELU and erf
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_native_matches_float64(approximate):
    x = np.concatenate([np.linspace(-12, 12, 4001), [0.0, 1e-6, -1e-6, 40.0, -40.0]]).reshape(1, -1, 1)
    check(ops.GELU(approximate), x, rtol=2e-6, atol=2e-7, gtol=2e-6)


@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=3), approximate=st.sampled_from(["none", "tanh"]),
       seed=st.integers(0, 2**16))
def test_gelu_shapes(shape, approximate, seed):
    check(ops.GELU(approximate), data(tuple(shape), seed, 3.0), rtol=2e-6, atol=2e-7, gtol=2e-6)


def test_native_erf_against_math_erf():
    x = np.linspace(-8, 8, 20001).astype(np.float32)
    ref = np.array([math.erf(float(v)) for v in x])
    got = _native.erf(x).astype(np.float64)
    assert np.max(np.abs(got - ref)) < 1.5e-7
    small = np.array([1e-30, 1e-8, 1e-4, -0.3], np.float32)
    np.testing.assert_allclose(_native.erf(small), [math.erf(float(v)) for v in small], rtol=2e-7)
    assert _native.erf(np.array(0.5, np.float32)).shape == ()


# ---------------------------------------------------------------------------
# depthwise Conv2d
# ---------------------------------------------------------------------------

@given(n=st.integers(1, 2), c=st.sampled_from([1, 3, 5]), m=st.integers(1, 2), k=st.sampled_from([1, 2, 3, 5]),
       s=st.integers(1, 2), d=st.integers(1, 2), pads=st.tuples(*[st.integers(0, 2)] * 4), bias=st.booleans(),
       size=st.integers(9, 12), seed=st.integers(0, 2**16))
def test_depthwise_native_matches_float64(n, c, m, k, s, d, pads, bias, size, seed):
    conv = nn.Conv2d(c, c * m, k, stride=s, padding=pads, dilation=d, groups=c, bias=bias, rng=seed)
    x = data((n, c, size, size + 1), seed)
    check(conv, x)
    assert conv._im2col_path or conv._dw_native  # groups = in_channels = 1 without dilation stays on im2col


@pytest.mark.parametrize("c,m,k,s,d,pads", [(1, 1, 3, 1, 2, (0, 0, 0, 0)), (3, 2, 5, 2, 1, (2, 1, 0, 3)),
                                            (17, 1, 3, 2, 2, (1, 1, 1, 1)), (17, 2, 1, 1, 1, (0, 1, 1, 0)),
                                            (8, 1, 3, 1, 1, (1, 1, 1, 1))])
def test_depthwise_cases(c, m, k, s, d, pads):
    conv = nn.Conv2d(c, c * m, k, stride=s, padding=pads, dilation=d, groups=c, rng=0)
    check(conv, data((2, c, 13, 12), 1))
    assert conv._dw_native


def test_depthwise_dispatch():
    conv = nn.Conv2d(4, 4, 3, groups=4, padding=1, rng=0)
    conv(np.zeros((1, 4, 5, 5), np.float32))
    assert conv._dw_native
    conv(np.zeros((1, 4, 5, 5)))
    assert not conv._dw_native  # float64 input: NumPy taps
    plain = nn.Conv2d(1, 2, 3, rng=0)  # groups=1 with in_channels=1 stays on im2col
    plain(np.zeros((1, 1, 5, 5), np.float32))
    assert not hasattr(plain, "_dw_native")
    grouped = nn.Conv2d(4, 4, 3, groups=2, rng=0)
    grouped(np.zeros((1, 4, 5, 5), np.float32))
    assert not grouped._dw_native


def test_kernels_agree_on_one_and_two_threads():
    x = data((8, 32, 16, 16))
    conv = nn.Conv2d(32, 32, 3, padding=1, groups=32, rng=0)
    ln = ops.LayerNorm(768)
    xl = data((256, 768))
    before = hw.num_threads()
    outs = []
    try:
        for t in (1, 2):
            hw.set_num_threads(t)
            y = conv(x)
            gx = conv.backward(np.ones_like(y))
            outs.append((y, gx, conv.weight.grad.copy(), ln(xl), ln.backward(xl), _native.gelu(xl)))
    finally:
        hw.set_num_threads(before if before else 0)
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# argument errors
# ---------------------------------------------------------------------------

F32 = np.zeros((2, 3), np.float32)
X4 = np.zeros((1, 2, 5, 5), np.float32)
W4 = np.zeros((2, 1, 3, 3), np.float32)


@pytest.mark.parametrize("call, exc, word", [
    (lambda: _native.layer_norm(F32.astype(np.float64), None, None, 1e-5), TypeError, "x"),
    (lambda: _native.layer_norm(F32, np.ones(2, np.float32), None, 1e-5), ValueError, "weight"),
    (lambda: _native.layer_norm(F32, None, np.ones(4, np.float32), 1e-5), ValueError, "bias"),
    (lambda: _native.layer_norm(F32, None, None, -1.0), ValueError, "eps"),
    (lambda: _native.layer_norm(np.zeros((2, 0), np.float32), None, None, 1e-5), ValueError, "d"),
    (lambda: _native.layer_norm_backward(F32[:1], F32, np.zeros(2, np.float32), np.zeros(2, np.float32), None,
                                         False), ValueError, "dy"),
    (lambda: _native.layer_norm_backward(F32, F32, np.zeros(3, np.float32), np.zeros(2, np.float32), None,
                                         False), ValueError, "mean"),
    (lambda: _native.softmax(np.zeros(3, np.float32)), TypeError, "x"),
    (lambda: _native.softmax_backward(F32, F32[:, :2]), ValueError, "dy"),
    (lambda: _native.log_softmax_backward(F32, F32.astype(np.float64)), TypeError, "dy"),
    (lambda: _native.gelu(F32, "erf"), ValueError, "approximate"),
    (lambda: _native.gelu_backward(F32, F32[:1]), ValueError, "dy"),
    (lambda: _native.gelu(np.zeros(3, np.int32)), TypeError, "x"),
    (lambda: _native.depthwise_conv2d(X4, W4[:, :, :1].repeat(2, 1), None, (1, 1), (0, 0, 0, 0), (1, 1)),
     ValueError, "weight"),
    (lambda: _native.depthwise_conv2d(X4, W4[:1].repeat(3, 0), None, (1, 1), (0, 0, 0, 0), (1, 1)),
     ValueError, "weight"),
    (lambda: _native.depthwise_conv2d(X4, W4, np.zeros(3, np.float32), (1, 1), (0, 0, 0, 0), (1, 1)),
     ValueError, "bias"),
    (lambda: _native.depthwise_conv2d(X4, W4, None, (0, 1), (0, 0, 0, 0), (1, 1)), ValueError, "stride"),
    (lambda: _native.depthwise_conv2d(X4, W4, None, (1, 1), (0, 0, 0, 0), (0, 1)), ValueError, "dilation"),
    (lambda: _native.depthwise_conv2d(X4, W4, None, (1, 1), (0, 0, 0, 0), (3, 1)), ValueError, "kernel"),
    (lambda: _native.depthwise_conv2d(X4, W4, None, (1, 1), (0, 0, 0), (1, 1)), ValueError, "length 4"),
    (lambda: _native.depthwise_conv2d(X4[:, :0], W4, None, (1, 1), (0, 0, 0, 0), (1, 1)), ValueError, "channel"),
    (lambda: _native.depthwise_conv2d_backward(X4, X4, W4, (1, 1), (0, 0, 0, 0), (1, 1), True), ValueError, "dy"),
    (lambda: ops.LayerNorm(3).backward(np.zeros((2, 3), np.float32)) if ops.LayerNorm(3)(F32) is None else
     _ln_bad_grad(), ValueError, "grad"),
    (lambda: _softmax_bad_grad(), ValueError, "grad"),
])
def test_bad_arguments_name_the_argument(call, exc, word):
    with pytest.raises(exc, match=word):
        call()


def _ln_bad_grad():
    ln = ops.LayerNorm(3)
    ln(F32)
    ln.backward(np.zeros((3, 3), np.float32))


def _softmax_bad_grad():
    sm = ops.Softmax(0)
    sm(F32)
    sm.backward(np.zeros((3, 2), np.float32))
