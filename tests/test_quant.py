"""hwreg_rs quantization: ONNX QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear
bit for bit, and calibration (torch observer formulas, percentile / mse / entropy)."""

from __future__ import annotations

import importlib
import inspect
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import hwreg_rs as hw

RANGES = {"int8": (-128, 127), "uint8": (0, 255)}
F32_EPS = np.float32(np.finfo(np.float32).eps)
with_fixture = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------- references

def _bcast(p, shape, axis):
    """Per-axis parameter `p` reshaped to broadcast along `axis` of `shape`."""
    p = np.asarray(p)
    if axis is None or p.size == 1:
        return p.reshape(())
    dims = [1] * len(shape)
    dims[axis] = p.size
    return p.reshape(dims)


def ref_quantize(x, scale, zp=0, axis=None, dtype="int8"):
    """QuantizeLinear as `onnx/reference/ops/op_quantize_linear.py` computes it:
    float32 division, np.rint (half to even) in float32, + zero point, clip. Where the
    reference casts an out-of-int32 float to int32 (undefined), we saturate by sign, and
    NaN goes to the low end, as hwreg_rs documents."""
    x = np.asarray(x, dtype=np.float32)
    s = _bcast(np.asarray(scale, np.float32), x.shape, axis)
    z = _bcast(np.asarray(zp, np.int64), x.shape, axis)
    lo, hi = RANGES[dtype]
    with np.errstate(all="ignore"):
        r = np.rint(x / s)  # float32 / float32 -> float32, like the reference
        y = r.astype(np.float64) + z
    y = np.where(np.isnan(y), lo, y)
    return np.clip(y, lo, hi).astype(dtype)


def ref_dequantize(q, scale, zp=0, axis=None):
    s = _bcast(np.asarray(scale, np.float32), q.shape, axis)
    z = _bcast(np.asarray(zp, np.int64), q.shape, axis)
    return (q.astype(np.float32) - z.astype(np.float32)) * s


def torch_qparams(mn, mx, *, qmin, qmax, symmetric, unsigned, bits=8):
    """torch.ao.quantization.observer._ObserverBase._calculate_qparams, in float32."""
    mn = np.minimum(np.float32(mn), np.float32(0))
    mx = np.maximum(np.float32(mx), np.float32(0))
    if symmetric:
        amax = np.maximum(-mn, mx)
        scale = np.maximum(amax / np.float32((qmax - qmin) / 2), F32_EPS)
        zp = 0 if not unsigned else (128 if bits == 8 else (qmin + qmax) // 2)
        zp = np.full(np.shape(scale), zp)
    else:
        scale = np.maximum((mx - mn) / np.float32(qmax - qmin), F32_EPS)
        zp = qmin - np.rint(mn / scale).astype(np.int64)
        zp = np.clip(zp, qmin, qmax)
    return np.asarray(scale, np.float32), np.asarray(zp)


def onnx_eval(op, inputs, **attrs):
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    names = list(inputs)
    outs = ["y"] if op != "DynamicQuantizeLinear" else ["y", "s", "z"]
    node = helper.make_node(op, names, outs, **attrs)
    return ReferenceEvaluator(node).run(None, inputs)


# --------------------------------------------------------------------------- strategies

finite = st.floats(-1e6, 1e6, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def tensors_with_axis(draw, max_dims=4):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=1, max_side=9))
    if draw(st.booleans()):  # long last axis: exercises the SIMD loops and their tails
        shape = shape[:-1] + (draw(st.integers(30, 140)),)
    x = draw(hnp.arrays(np.float32, shape, elements=finite))
    axis = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    return x, axis


@st.composite
def params_for(draw, x, axis, dtype):
    n = 1 if axis is None else x.shape[axis]
    scale = draw(hnp.arrays(np.float32, n, elements=st.floats(2.0 ** -10, 1024.0, width=32)))
    lo, hi = RANGES[dtype]
    zp = draw(hnp.arrays(np.int32, n, elements=st.integers(lo, hi)))
    if axis is None:
        return scale[0], int(zp[0])
    return scale, zp


# --------------------------------------------------------------------------- quantize

@with_fixture
@given(data=st.data(), dtype=st.sampled_from(["int8", "uint8"]))
def test_quantize_matches_reference_every_isa(each_isa, data, dtype):
    x, axis = data.draw(tensors_with_axis())
    scale, zp = data.draw(params_for(x, axis, dtype))
    got = hw.quantize(x, scale, zp, axis=axis, dtype=dtype)
    assert got.dtype == np.dtype(dtype) and got.shape == x.shape
    np.testing.assert_array_equal(got, ref_quantize(x, scale, zp, None if axis is None else axis % x.ndim, dtype))


@with_fixture
@given(data=st.data(), dtype=st.sampled_from(["int8", "uint8"]))
def test_dequantize_matches_reference_every_isa(each_isa, data, dtype):
    x, axis = data.draw(tensors_with_axis())
    lo, hi = RANGES[dtype]
    q = data.draw(hnp.arrays(np.dtype(dtype), x.shape, elements=st.integers(lo, hi)))
    scale, zp = data.draw(params_for(x, axis, dtype))
    got = hw.dequantize(q, scale, zp, axis=axis)
    assert got.dtype == np.float32
    want = ref_dequantize(q, scale, zp, None if axis is None else axis % x.ndim)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@given(data=st.data(), dtype=st.sampled_from(["int8", "uint8"]))
def test_quantize_and_dequantize_equal_onnx_reference_evaluator(data, dtype):
    x, axis = data.draw(tensors_with_axis(max_dims=3))
    scale, zp = data.draw(params_for(x, axis, dtype))
    s = np.asarray(scale, np.float32)
    z = np.asarray(zp, dtype)
    attrs = {} if axis is None else {"axis": axis}
    (want,) = onnx_eval("QuantizeLinear", {"x": x, "s": s, "z": z}, **attrs)
    got = hw.quantize(x, scale, zp, axis=axis, dtype=dtype)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    (want_d,) = onnx_eval("DequantizeLinear", {"q": got, "s": s, "z": z}, **attrs)
    got_d = hw.dequantize(got, scale, zp, axis=axis)
    np.testing.assert_array_equal(got_d.view(np.uint32), want_d.view(np.uint32))


def _edge_inputs(scale):
    """Exact halfway points k + 0.5 (scale is a power of two, so x / scale is exact),
    saturation boundaries and large magnitudes (quotients below 2**31 - 256)."""
    k = np.arange(-300, 300, dtype=np.float32)
    vals = np.concatenate([
        (k + np.float32(0.5)) * scale, k * scale, (k + np.float32(0.49999997)) * scale,
        np.array([127.5, 128.5, -128.5, -127.5, 255.5, 254.5, 1e6, -1e6, 2.0e9, -2.0e9,
                  1e-30, -1e-30, 0.0, -0.0], np.float32) * scale,
    ]).astype(np.float32)
    return vals


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("scale", [1.0, 0.25, 2.0 ** -10, 8.0])
def test_halfway_saturation_and_large_values_equal_onnx(each_isa, dtype, scale):
    x = _edge_inputs(np.float32(scale))
    for zp in ({"int8": [0, -1, 127, -128], "uint8": [0, 128, 255]}[dtype]):
        (want,) = onnx_eval("QuantizeLinear", {"x": x, "s": np.float32(scale), "z": np.asarray(zp, dtype)})
        np.testing.assert_array_equal(hw.quantize(x, scale, zp, dtype=dtype), want)


def test_division_not_reciprocal_multiply(each_isa):
    # Near halfway points x / s and x * (1 / s) can round to different integers; the
    # reference divides, so must we. Build such inputs: (k + 0.5) * s and the next
    # few float32 values above it, for scales whose reciprocal is inexact.
    for s in (np.float32(0.1), np.float32(0.3), np.float32(1.7)):
        k = np.arange(-200, 200).astype(np.float32) + np.float32(0.5)
        xs = [(k * s).astype(np.float32)]
        for _ in range(3):
            xs.append(np.nextafter(xs[-1], np.float32(np.inf)))
        x = np.concatenate(xs)
        div = np.rint(x / s)
        mul = np.rint(x * (np.float32(1) / s))
        assert (div != mul).any(), "the data must tell division from multiplication"
        got = hw.quantize(x, s, 0, dtype="int8")
        np.testing.assert_array_equal(got, np.clip(div, -128, 127).astype(np.int8))
        (want,) = onnx_eval("QuantizeLinear", {"x": x, "s": s, "z": np.int8(0)})
        np.testing.assert_array_equal(got, want)


def test_specials_documented_semantics(each_isa):
    x = np.array([np.nan, np.inf, -np.inf, 3e38, -3e38, 1e30], np.float32)
    np.testing.assert_array_equal(hw.quantize(x, 1.0, 0), [-128, 127, -128, 127, -128, 127])
    np.testing.assert_array_equal(hw.quantize(x, 1.0, 5, dtype="uint8"), [0, 255, 0, 255, 0, 255])
    np.testing.assert_array_equal(hw.quantize(x, 1e-3, -7), [-128, 127, -128, 127, -128, 127])
    # NaN agrees with the reference where the reference's int32 cast gives INT_MIN (x86).
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        (want,) = onnx_eval("QuantizeLinear", {"x": x[:1], "s": np.float32(1), "z": np.uint8(3)})
    if want[0] == 0:
        assert hw.quantize(x[:1], 1.0, 3, dtype="uint8")[0] == 0


def test_large_input_threads_agree():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 30, (3, 257, 301)).astype(np.float32)
    np.testing.assert_array_equal(hw.quantize(x, 0.37, 3), ref_quantize(x, 0.37, 3))
    s = np.linspace(0.1, 2, 257, dtype=np.float32)
    z = np.arange(257) % 50
    np.testing.assert_array_equal(hw.quantize(x, s, z, axis=1, dtype="uint8"), ref_quantize(x, s, z, 1, "uint8"))
    s3 = np.linspace(0.1, 2, 301, dtype=np.float32)
    q = hw.quantize(x, s3, 0, axis=-1)
    np.testing.assert_array_equal(q, ref_quantize(x, s3, 0, 2))
    np.testing.assert_array_equal(hw.dequantize(q, s3, 0, axis=2), ref_dequantize(q, s3, 0, 2))


# --------------------------------------------------------------------------- ONNX operator test cases

def _onnx_cases(module_name):
    """(node, inputs, outputs, name) of every case in onnx.backend.test.case.node.<module>."""
    mod = importlib.import_module(f"onnx.backend.test.case.node.{module_name}")
    cases = []

    def capture(node, inputs, outputs, name, **_):
        cases.append((node, inputs, outputs, name))

    original = mod.expect
    mod.expect = capture
    try:
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ != mod.__name__:
                continue
            for attr, fn in vars(cls).items():
                if attr.startswith("export"):
                    getattr(cls, attr)()
    finally:
        mod.expect = original
    return cases


def _attrs(node):
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_onnx_node_cases_quantize_dequantize():
    ran = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    for module in ("quantizelinear", "dequantizelinear"):
        for node, inputs, outputs, name in _onnx_cases(module):
            attrs = _attrs(node)
            if attrs.get("block_size", 0) or attrs.get("output_dtype", 0) or attrs.get("precision", 0):
                continue
            axis = attrs.get("axis", 1)
            if not all(isinstance(v, (np.ndarray, np.generic)) for v in inputs):
                continue  # float8 / int4 / ... given as TensorProto
            if node.op_type == "QuantizeLinear":
                x, s = inputs[0], inputs[1]
                zp = inputs[2] if len(inputs) > 2 else np.uint8(0)
                if x.dtype != np.float32 or s.dtype != np.float32 or zp.dtype.name not in RANGES:
                    continue
                use_axis = axis if np.ndim(s) == 1 and np.size(s) > 1 else None
                got = hw.quantize(x, s, zp, axis=use_axis, dtype=zp.dtype.name)
            else:
                q, s = inputs[0], inputs[1]
                zp = inputs[2] if len(inputs) > 2 else 0
                if q.dtype.name not in RANGES or s.dtype != np.float32:
                    continue
                use_axis = axis if np.ndim(s) == 1 and np.size(s) > 1 else None
                got = hw.dequantize(q, s, zp, axis=use_axis)
            assert got.dtype == outputs[0].dtype, name
            np.testing.assert_array_equal(got, outputs[0], err_msg=name)
            ran[node.op_type] += 1
    assert ran["QuantizeLinear"] >= 2 and ran["DequantizeLinear"] >= 2, ran


def test_onnx_node_cases_dynamic_quantize():
    n = 0
    for node, inputs, outputs, name in _onnx_cases("dynamicquantizelinear"):
        q, s, z = hw.dynamic_quantize(inputs[0])
        np.testing.assert_array_equal(q, outputs[0], err_msg=name)
        assert s.tobytes() == np.asarray(outputs[1], np.float32).tobytes(), name
        assert z == outputs[2], name
        n += 1
    assert n >= 3


# --------------------------------------------------------------------------- dynamic quantize

@with_fixture
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=40),
                    elements=st.floats(-1e4, 1e4, width=32)))
def test_dynamic_quantize_equals_onnx(each_isa, x):
    q, s, z = hw.dynamic_quantize(x)
    ref_scale = (np.maximum(np.float32(0), x.max()) - np.minimum(np.float32(0), x.min())) / np.float32(255)
    if ref_scale == 0 and x.max() != x.min():
        # The reference's scale underflows to 0 and it divides by it; ours
        # stays positive, and the tensor dequantizes to within one step.
        assert s > 0 and np.isfinite(s)
        assert np.abs(hw.dequantize(q, s, z) - x).max() <= s
        return
    wq, ws, wz = onnx_eval("DynamicQuantizeLinear", {"x": x})
    np.testing.assert_array_equal(q, wq)
    assert s.dtype == np.float32 and s.tobytes() == np.asarray(ws, np.float32).tobytes()
    assert z.dtype == np.uint8 and z == wz


def test_dynamic_quantize_edges():
    for x in (np.zeros(5, np.float32), np.full(3, 2.5, np.float32), np.full(3, -2.5, np.float32),
              np.array([-1.0, 1.0], np.float32), np.linspace(-3, 7, 1001, dtype=np.float32)):
        q, s, z = hw.dynamic_quantize(x)
        wq, ws, wz = onnx_eval("DynamicQuantizeLinear", {"x": x})
        np.testing.assert_array_equal(q, wq)
        assert s == ws and z == wz
    _, s, z = hw.dynamic_quantize(np.zeros(4, np.float32))
    assert s == np.float32(1) / np.float32(255) and z == 0
    # Outside the reference's domain (its scale underflows to 0 or overflows):
    # a positive finite scale that dequantizes to within one step.
    big = np.finfo(np.float32).max
    for x in (np.array([1e-45], np.float32), np.array([-1e-45, 1e-45], np.float32)):
        q, s, z = hw.dynamic_quantize(x)
        assert s > 0 and np.isfinite(s), x
        assert np.abs(hw.dequantize(q, s, z) - x).max() <= s, x
    q, s, z = hw.dynamic_quantize(np.array([-big, 0, big], np.float32))  # the range itself overflows
    assert np.isfinite(s) and s == np.float32(big / 255 * 2) and q.tolist() == [0, z, 255]
    with pytest.raises(ValueError, match="NaN or infinite"):
        hw.dynamic_quantize(np.array([1.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        hw.dynamic_quantize(np.array([1.0, -np.inf], np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        hw.dynamic_quantize(np.zeros(0, np.float32))


# --------------------------------------------------------------------------- conversions

def test_non_contiguous_non_native_and_other_float_types():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 5, (6, 40)).astype(np.float32)
    want = ref_quantize(base.T, 0.1, 3)
    np.testing.assert_array_equal(hw.quantize(base.T, 0.1, 3), want)
    np.testing.assert_array_equal(hw.quantize(base.astype(">f4"), 0.1, 3), ref_quantize(base, 0.1, 3))
    np.testing.assert_array_equal(hw.quantize(base[:, ::3], 0.1, 3), ref_quantize(base[:, ::3], 0.1, 3))
    # float64 / float16 / int inputs are converted to float32 first.
    np.testing.assert_array_equal(hw.quantize(base.astype(np.float64), 0.1, 3), ref_quantize(base, 0.1, 3))
    h = base.astype(np.float16)
    np.testing.assert_array_equal(hw.quantize(h, 0.1, 3), ref_quantize(h.astype(np.float32), 0.1, 3))
    np.testing.assert_array_equal(hw.quantize([1, 2, 3], 0.5), [2, 4, 6])
    # Per-axis parameters given big-endian and strided.
    s = np.linspace(0.05, 1, 80, dtype=">f4")[::2]
    np.testing.assert_array_equal(hw.quantize(base, s, 0, axis=1), ref_quantize(base, s.astype(np.float32), 0, 1))
    q = hw.quantize(base, 0.1, 3)
    np.testing.assert_array_equal(hw.dequantize(q.T, 0.1, 3), ref_dequantize(q.T, 0.1, 3))
    np.testing.assert_array_equal(hw.dequantize(q[::2, ::5], 0.1, 3), ref_dequantize(q[::2, ::5], 0.1, 3))
    # 0-d and empty arrays.
    assert hw.quantize(np.float32(2.5), 1.0).shape == ()
    assert hw.quantize(np.float32(2.5), 1.0) == 2
    assert hw.quantize(np.zeros((0, 3), np.float32), [1, 2, 3], axis=1).shape == (0, 3)


def test_qparams_plug_into_quantize_and_dequantize():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (4, 33)).astype(np.float32)
    qp = hw.calibrate(x, axis=0, dtype="uint8", symmetric=False)
    q = hw.quantize(x, qp)
    np.testing.assert_array_equal(q, hw.quantize(x, qp.scale, qp.zero_point, axis=qp.axis, dtype=qp.dtype))
    assert q.dtype == np.uint8
    d = hw.dequantize(q, qp)
    assert np.max(np.abs(d - x) / qp.scale[:, None]) <= 0.5 + 1e-3
    # A 3-bit grid saturates to its own range.
    qp3 = hw.calibrate(x, bits=3)
    q3 = hw.quantize(x, qp3)
    assert q3.min() >= -4 and q3.max() <= 3 and (qp3.qmin, qp3.qmax) == (-4, 3)
    qp3u = hw.calibrate(x, bits=3, dtype="uint8")
    assert (qp3u.qmin, qp3u.qmax, qp3u.zero_point) == (0, 7, 3)
    assert hw.quantize(x, qp3u).max() <= 7


# --------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf, -np.inf, 1e-60])
def test_bad_scale(bad):
    x = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        hw.quantize(x, bad)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        hw.dequantize(np.ones(3, np.int8), bad)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        hw.quantize(np.ones((2, 3), np.float32), [1.0, bad, 2.0], axis=1)


def test_scalar_parameters_take_the_same_path_as_arrays():
    # Plain scalars skip the array validators: same bytes and the same errors as
    # the one-element arrays, float64 scales rounded to float32 alike.
    x = np.random.default_rng(3).standard_normal(1000).astype(np.float32) * 7
    for scale, zp, dt in [(0.1, 3, "int8"), (np.float64(1 / 3), np.int64(-128), "int8"),
                          (np.float32(0.07), np.int32(255), "uint8"), (2, 0, np.uint8)]:
        want = hw.quantize(x, np.array([scale], np.float64), np.array([zp]), dtype=dt)
        got = hw.quantize(x, scale, zp, dtype=dt)
        assert got.dtype == want.dtype and np.array_equal(got, want), (scale, zp, dt)
    for bad in (-0.0, 1e-46, 5e-324):  # a signed zero, float32 underflow
        with pytest.raises(ValueError, match="scale must be finite and > 0"):
            hw.quantize(x, bad)
    with pytest.raises(ValueError, match=r"\[0, 255\]; got 256"):
        hw.quantize(x, 1.0, np.int64(256), dtype="uint8")


def test_bad_zero_point_axis_dtype_and_lengths():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"zero_point must lie in \[-128, 127\]; got 128"):
        hw.quantize(x, 1.0, 128)
    with pytest.raises(ValueError, match=r"\[0, 255\]; got -1"):
        hw.quantize(x, 1.0, -1, dtype="uint8")
    with pytest.raises(ValueError, match="integers"):
        hw.quantize(x, 1.0, 1.5)
    with pytest.raises(TypeError, match="integer"):
        hw.quantize(x, 1.0, "3")
    with pytest.raises(ValueError, match=r"scale has 2 elements but x.shape\[1\] is 3"):
        hw.quantize(x, [1.0, 2.0], axis=1)
    with pytest.raises(ValueError, match=r"zero_point has 2 elements but x.shape\[-1\] is 3"):
        hw.quantize(x, [1.0, 2.0, 3.0], [1, 2], axis=-1)
    with pytest.raises(ValueError, match="per-axis parameters need axis"):
        hw.quantize(x, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="out of range"):
        hw.quantize(x, 1.0, axis=2)
    with pytest.raises(ValueError, match="scalar or 1-D"):
        hw.quantize(x, np.ones((3, 1)), axis=1)
    with pytest.raises(TypeError, match="dtype must be 'int8' or 'uint8'"):
        hw.quantize(x, 1.0, dtype="int16")
    with pytest.raises(TypeError, match="dtype must be 'int8' or 'uint8'"):
        hw.quantize(x, 1.0, dtype=np.int32)
    assert hw.quantize(x, 1.0, dtype=np.uint8).dtype == np.uint8
    with pytest.raises(TypeError, match="floating-point"):
        hw.quantize(np.ones(3, bool), 1.0)
    with pytest.raises(TypeError, match="numeric"):
        hw.quantize(np.array(["a"]), 1.0)
    with pytest.raises(TypeError, match="int8 or uint8"):
        hw.dequantize(np.ones(3, np.int16), 1.0)
    with pytest.raises(TypeError, match="int8 or uint8"):
        hw.dequantize(np.ones(3, np.float32), 1.0)
    with pytest.raises(ValueError, match=r"\[0, 255\]; got 300"):
        hw.dequantize(np.ones(3, np.uint8), 1.0, 300)
    with pytest.raises(TypeError, match="axis must be an int"):
        hw.quantize(x, 1.0, axis=1.0)


def test_calibrate_bad_inputs():
    x = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="unknown calibration method"):
        hw.calibrate(x, method="kl")
    for b in (1, 9, 0, 16):
        with pytest.raises(ValueError, match="bits must be between 2 and 8"):
            hw.calibrate(x, bits=b)
    with pytest.raises(TypeError, match="bits"):
        hw.calibrate(x, bits=4.0)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[3] = bad
        for method in ("minmax", "percentile", "mse", "entropy"):
            with pytest.raises(ValueError, match="NaN or infinite"):
                hw.calibrate(y, method=method)
        with pytest.raises(ValueError, match="NaN or infinite"):
            hw.calibrate(y.reshape(2, 5), axis=1)
    with pytest.raises(ValueError, match="empty"):
        hw.calibrate(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="percentile must lie in"):
        hw.calibrate(x, method="percentile", percentile=120)
    with pytest.raises(TypeError, match="dtype"):
        hw.calibrate(x, dtype="int4")
    with pytest.raises(TypeError):
        hw.calibrate(x, "minmax")  # options are keyword-only


# --------------------------------------------------------------------------- calibrate: minmax

def test_minmax_known_values():
    x = np.array([-1.0, 0.25, 3.0], np.float32)
    qp = hw.calibrate(x, dtype="uint8", symmetric=False)  # torch quint8 per_tensor_affine
    assert qp.scale == np.float32(4) / np.float32(255) and qp.zero_point == 64
    assert isinstance(qp.zero_point, int) and qp.scale.dtype == np.float32 and qp.axis is None
    qp = hw.calibrate(x, dtype="int8", symmetric=False)  # qint8 affine: zp = -128 - round(-63.75)
    assert qp.scale == np.float32(4) / np.float32(255) and qp.zero_point == -64
    qp = hw.calibrate(x)  # qint8 per_tensor_symmetric
    assert qp.scale == np.float32(3) / np.float32(127.5) and qp.zero_point == 0
    qp = hw.calibrate(x, dtype="uint8")  # quint8 symmetric: zero point 128
    assert qp.scale == np.float32(3) / np.float32(127.5) and qp.zero_point == 128
    # Range not containing 0 is widened to it; a constant zero tensor gets eps.
    qp = hw.calibrate(np.array([2.0, 5.0], np.float32), dtype="uint8", symmetric=False)
    assert qp.scale == np.float32(5) / np.float32(255) and qp.zero_point == 0
    qp = hw.calibrate(np.zeros(4, np.float32), symmetric=False)
    assert qp.scale == F32_EPS and qp.zero_point == -128
    # 4-bit signed symmetric: torch divides by (7 - -8) / 2 = 7.5.
    qp = hw.calibrate(np.array([-2.0, 1.0], np.float32), bits=4)
    assert qp.scale == np.float32(2) / np.float32(7.5)
    # Per channel (PerChannelMinMaxObserver, ch_axis=1).
    w = np.array([[1.0, -4.0, 0.0], [-2.0, 2.0, 0.0]], np.float32)
    qp = hw.calibrate(w, axis=1, dtype="uint8", symmetric=False)
    np.testing.assert_array_equal(qp.scale, np.array([3, 6, np.finfo(np.float32).eps * 255], np.float32) / np.float32(255))
    np.testing.assert_array_equal(qp.zero_point, [170, 170, 0])
    assert qp.axis == 1 and qp.scale.dtype == np.float32 and qp.zero_point.dtype == np.int32


@given(data=st.data(), dtype=st.sampled_from(["int8", "uint8"]), symmetric=st.booleans(),
       bits=st.integers(2, 8))
def test_minmax_equals_torch_formula(data, dtype, symmetric, bits):
    x, axis = data.draw(tensors_with_axis(max_dims=3))
    qp = hw.calibrate(x, dtype=dtype, symmetric=symmetric, axis=axis, bits=bits)
    qmin, qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if dtype == "int8" else (0, (1 << bits) - 1)
    if axis is None:
        mn, mx = x.min(), x.max()
    else:
        red = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
        mn, mx = x.min(axis=red), x.max(axis=red)
    s, z = torch_qparams(mn, mx, qmin=qmin, qmax=qmax, symmetric=symmetric, unsigned=dtype == "uint8", bits=bits)
    np.testing.assert_array_equal(qp.scale, s)
    np.testing.assert_array_equal(qp.zero_point, z)
    assert (qp.qmin, qp.qmax, qp.bits, qp.dtype) == (qmin, qmax, bits, dtype)


# --------------------------------------------------------------------------- other methods

def _roundtrip_mse(x, qp):
    return float(np.mean((hw.dequantize(hw.quantize(x, qp), qp).astype(np.float64) - x) ** 2))


def _outlier_data(seed, n=20000):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n).astype(np.float32)
    x[rng.integers(0, n, 5)] = rng.choice([-1, 1], 5) * rng.uniform(20, 40, 5)
    return x


@given(p=st.floats(90, 100), symmetric=st.booleans(), seed=st.integers(0, 2**16))
def test_percentile_matches_numpy(p, symmetric, seed):
    x = np.random.default_rng(seed).normal(0, 1, 1001).astype(np.float32)
    qp = hw.calibrate(x, method="percentile", percentile=p, symmetric=symmetric, dtype="uint8")
    if symmetric:
        t = np.float32(np.percentile(np.abs(x).astype(np.float64), p))
        s, z = torch_qparams(-t, t, qmin=0, qmax=255, symmetric=True, unsigned=True)
    else:
        lo = np.float32(np.percentile(x.astype(np.float64), 100 - p))
        hi = np.float32(np.percentile(x.astype(np.float64), p))
        s, z = torch_qparams(lo, hi, qmin=0, qmax=255, symmetric=False, unsigned=True)
    np.testing.assert_allclose(qp.scale, s, rtol=2e-6)
    assert abs(qp.zero_point - int(z)) <= 1


def test_percentile_per_channel():
    rng = np.random.default_rng(4)
    w = rng.normal(0, 1, (3, 2000)).astype(np.float32) * np.array([[1], [5], [0.1]], np.float32)
    qp = hw.calibrate(w, method="percentile", percentile=99.0, axis=0)
    t = np.percentile(np.abs(w), 99.0, axis=1).astype(np.float32)
    np.testing.assert_allclose(qp.scale, t / np.float32(127.5), rtol=2e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_beats_minmax_with_outliers(seed, symmetric):
    x = _outlier_data(seed)
    mm = hw.calibrate(x, symmetric=symmetric)
    ms = hw.calibrate(x, method="mse", symmetric=symmetric)
    assert ms.scale < mm.scale
    assert _roundtrip_mse(x, ms) < _roundtrip_mse(x, mm)


def test_mse_never_widens_and_keeps_tight_data():
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, 5000).astype(np.float32)
    mm = hw.calibrate(x)
    ms = hw.calibrate(x, method="mse")
    assert ms.scale <= mm.scale
    assert _roundtrip_mse(x, ms) <= _roundtrip_mse(x, mm) * 1.01
    w = rng.normal(0, 1, (4, 500)).astype(np.float32)
    w[2, 7] = 50
    qp = hw.calibrate(w, method="mse", axis=0)
    mm = hw.calibrate(w, axis=0)
    assert np.all(qp.scale <= mm.scale) and qp.scale.shape == (4,)


@pytest.mark.parametrize("bits", [8, 4])
def test_entropy_threshold_within_range_and_clips_outliers(bits):
    x = _outlier_data(7, 50000)
    mm = hw.calibrate(x, bits=bits)
    en = hw.calibrate(x, method="entropy", bits=bits)
    amax = np.abs(x).max()
    # The threshold t = scale * (qmax - qmin) / 2 never exceeds max |x|...
    half = np.float32(((1 << bits) - 1) / 2)
    assert en.scale * half <= amax * (1 + 1e-6)
    # ...and on Gaussian data with rare outliers it clips well inside them.
    assert en.scale < 0.5 * mm.scale
    assert en.scale * half > 2.0
    aff = hw.calibrate(x, method="entropy", symmetric=False, dtype="uint8", bits=bits)
    assert aff.scale <= hw.calibrate(x, symmetric=False, dtype="uint8", bits=bits).scale


def test_entropy_and_mse_edge_tensors():
    for method in ("entropy", "mse", "percentile"):
        qp = hw.calibrate(np.zeros(10, np.float32), method=method)
        assert qp.scale == F32_EPS
        qp = hw.calibrate(np.full(7, 3.0, np.float32), method=method, symmetric=False, dtype="uint8")
        assert qp.scale > 0 and np.isfinite(qp.scale)
        qp = hw.calibrate(np.float32(1.5), method=method)
        assert np.isfinite(qp.scale)


@given(method=st.sampled_from(["minmax", "percentile", "mse", "entropy"]), symmetric=st.booleans(),
       dtype=st.sampled_from(["int8", "uint8"]), bits=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_power_of_two_scales_are_exact_and_cover(method, symmetric, dtype, bits, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(0.3, 2, 700) * rng.uniform(0.01, 100)).astype(np.float32)
    base = hw.calibrate(x, method=method, symmetric=symmetric, dtype=dtype, bits=bits)
    qp = hw.calibrate(x, method=method, symmetric=symmetric, dtype=dtype, bits=bits, power_of_two=True)
    mant, _ = np.frexp(qp.scale)
    assert mant == 0.5, qp  # an exact power of two
    if method != "mse":  # mse searches again on the power-of-two grid
        assert base.scale <= qp.scale < 2 * base.scale
    if method == "minmax":  # the grid still covers the data (to within half a step)
        lo = (qp.qmin - qp.zero_point) * np.float64(qp.scale)
        hi = (qp.qmax - qp.zero_point) * np.float64(qp.scale)
        assert lo - qp.scale / 2 <= x.min() and x.max() <= hi + qp.scale / 2


def test_qparams_is_frozen_and_readonly():
    qp = hw.calibrate(np.ones((2, 3), np.float32), axis=0)
    with pytest.raises(AttributeError):
        qp.scale = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        qp.scale[0] = 2.0
    assert "QParams(" in repr(qp)


def test_out_arrays_are_filled_and_checked():
    rng = np.random.default_rng(8)
    x = rng.normal(0, 3, (5, 70)).astype(np.float32)
    out = np.full(x.shape, 99, np.int8)
    r = hw.quantize(x, 0.05, 2, out=out)
    assert r is out
    np.testing.assert_array_equal(out, ref_quantize(x, 0.05, 2))
    s = np.linspace(0.01, 0.1, 70, dtype=np.float32)
    outu = np.zeros(x.shape, np.uint8)
    hw.quantize(x, s, 128, axis=1, dtype="uint8", out=outu)
    np.testing.assert_array_equal(outu, ref_quantize(x, s, 128, 1, "uint8"))
    d = np.full(x.shape, np.nan, np.float32)
    assert hw.dequantize(out, 0.05, 2, out=d) is d
    np.testing.assert_array_equal(d, ref_dequantize(out, 0.05, 2))
    with pytest.raises(TypeError, match="out must have dtype int8"):
        hw.quantize(x, 0.05, out=np.zeros(x.shape, np.uint8))
    with pytest.raises(ValueError, match="out has shape"):
        hw.quantize(x, 0.05, out=np.zeros((5, 69), np.int8))
    with pytest.raises(ValueError, match="C-contiguous"):
        hw.quantize(x, 0.05, out=np.zeros((70, 5), np.int8).T)
    ro = np.zeros(x.shape, np.int8)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        hw.quantize(x, 0.05, out=ro)
    with pytest.raises(ValueError, match="overlap"):
        hw.quantize(x, 0.05, out=x.reshape(-1).view(np.int8)[:350].reshape(5, 70))
    with pytest.raises(TypeError, match="out must be a numpy array"):
        hw.dequantize(out, 0.05, out=[0.0] * 350)
    with pytest.raises(TypeError, match="float32"):
        hw.dequantize(out, 0.05, out=np.zeros(x.shape, np.float64))


def test_streaming_sized_outputs_through_numpy_allocations():
    # Outputs of 4 MiB and more are written with non-temporal stores after an
    # alignment head; check the whole path through NumPy-allocated arrays.
    rng = np.random.default_rng(9)
    x = rng.normal(0, 3, (1100, 1001)).astype(np.float32)
    q = hw.quantize(x, 0.05, 2)
    np.testing.assert_array_equal(hw.dequantize(q, 0.05, 2), ref_dequantize(q, 0.05, 2))
    s = np.linspace(0.01, 0.1, 1001, dtype=np.float32)
    np.testing.assert_array_equal(hw.dequantize(q, s, 3, axis=1), ref_dequantize(q, s, 3, 1))
    out = np.zeros(x.size + 1, np.float32)[1:].reshape(x.shape)  # misaligned by 4 bytes
    np.testing.assert_array_equal(hw.dequantize(q, 0.05, 2, out=out), ref_dequantize(q, 0.05, 2))
    big = rng.normal(0, 3, 4_300_000).astype(np.float32)
    qo = np.zeros(big.size + 3, np.int8)[3:]
    np.testing.assert_array_equal(hw.quantize(big, 0.05, 2, out=qo), ref_quantize(big, 0.05, 2))


def test_docstring_examples_run():
    import doctest

    import hwreg_rs.quant

    result = doctest.testmod(hwreg_rs.quant)
    assert result.attempted >= 10 and result.failed == 0, result


# A finite row whose range exceeds float32 max ([3e38, -3e38]: hi - lo overflows) used to get a
# made-up scale of 1 on the dense path (garbage out); now every user of the one row quantizer
# quantizes it on its true range, on every ISA path. (`calibrate` refuses such a range with a
# ValueError instead: its QParams are reused on other data, see test_arguments.py.)
WIDE = np.array([[3e38, -3e38], [1.0, 2.0], [-3.4e38, 3.4e38]], np.float32)


def _wide_reference(w):
    """The exact product on the row's own dequantized activations (scale = (hi - lo) / 255)."""
    x = WIDE.astype(np.float64)
    lo, hi = np.minimum(x.min(1), 0), np.maximum(x.max(1), 0)
    step = ((hi - lo) / 255).astype(np.float32).astype(np.float64)
    return x @ w.T.astype(np.float64), step


def test_a_row_wider_than_float32_max_is_exact_within_a_step(each_isa):
    # Weight scale 1: the float epilogue's `acc * x_scale` is then the result itself, so a
    # true value past float32 max overflows to inf of its sign and every other is exact
    # within the row's quantization steps.
    wq = np.array([[1, 0], [0, 1], [1, 1], [1, -1]], np.int8)
    layer = hw.Int8Linear(wq, np.float32(1.0))
    want, step = _wide_reference(wq)
    with np.errstate(over="ignore"):
        got = layer(WIDE).astype(np.float64)
    for r in range(len(WIDE)):
        for j in range(wq.shape[0]):
            err = step[r] * np.abs(wq[j]).sum() * 1.001
            if abs(want[r, j]) + err > np.finfo(np.float32).max and np.isinf(got[r, j]):
                # The true value lies within a step of float32 max: so may its grid point.
                assert np.sign(got[r, j]) == np.sign(want[r, j])
            else:  # each activation is off by at most half a step (ties: one), times sum |w|
                assert abs(got[r, j] - want[r, j]) <= err, (r, j)


def test_the_runtime_treats_wide_rows_like_ordinary_ones(each_isa):
    net = hw.nn.Sequential(hw.nn.Linear(2, 3, rng=0))
    model = hw.runtime.convert(net, input_shape=(2,))
    with np.errstate(over="ignore", invalid="ignore"):
        got = model.predict(WIDE).astype(np.float64)
    lin = net.layers[0] if hasattr(net, "layers") else net[0]
    w = np.asarray(lin.weight.data, np.float64)
    want = WIDE.astype(np.float64) @ w.T + np.asarray(lin.bias.data, np.float64)
    assert np.isfinite(got[1]).all()
    # Finite results are within a few quantization steps of the row (|range| / 255) times
    # sum |w|, plus the int8 weight's own error; the epilogue forms such a row's product in f64,
    # so only a true value near or past float32 max may be inf (of the true sign).
    span = np.abs(WIDE).max(1, keepdims=True).astype(np.float64) * 2
    tol = (span / 255) * np.abs(w).sum(1) * 2 + 0.02 * np.abs(want) + 1e-3
    finite = np.isfinite(got)
    assert (np.abs(got - want)[finite] <= tol[finite]).all(), (got, want)
    assert (np.sign(got[~finite]) == np.sign(want[~finite])).all()
    assert (np.abs(want[~finite]) + tol[~finite] > np.finfo(np.float32).max).all(), (got, want)
