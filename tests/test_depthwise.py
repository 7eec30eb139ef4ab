"""The native exact int8 depthwise convolution (channels-last) and the runtime's use of it."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hwreg_rs as hw
from hwreg_rs import _native, runtime
from hwreg_rs.gemm import Int8Linear


def reference_i64(x, zp, w, stride, padding, dilation):
    """sum over in-bounds taps of (x - zp[n]) * w, int64, from the definition (NHWC, w (kh, kw, c))."""
    n, h, wd, c = x.shape
    kh, kw, _ = w.shape
    (sh, sw), (t, l, b, r), (dh, dw) = stride, padding, dilation
    xc = np.pad(x.astype(np.int64) - zp.astype(np.int64).reshape(-1, 1, 1, 1), ((0, 0), (t, b), (l, r), (0, 0)))
    oh = (h + t + b - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + l + r - dw * (kw - 1) - 1) // sw + 1
    acc = np.zeros((n, oh, ow, c), np.int64)
    for i in range(kh):
        for j in range(kw):
            win = xc[:, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw, :]
            acc += win * w[i, j].astype(np.int64)
    return acc


def float_step(acc, scales, col_scale, bias, relu):
    """The GEMM's float output step in float32: (acc * scale[n]) * col_scale[c] + bias[c], ReLU."""
    y = acc.astype(np.float32) * scales.reshape(-1, 1, 1, 1)
    y = y * col_scale.reshape(1, 1, 1, -1)
    y = y + (bias if bias is not None else np.float32(0.0))
    return np.maximum(y, np.float32(0.0)) if relu else y


@st.composite
def cases(draw):
    n = draw(st.integers(1, 3))
    c = draw(st.sampled_from([1, 2, 3, 17, 32, 33, 64, 129]))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, 3)) for _ in range(4))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    t, l, b, r = padding
    # Keep the kernel inside the padded input (output at least 1x1).
    h = max(h, dilation[0] * (kh - 1) + 1 - t - b)
    w = max(w, dilation[1] * (kw - 1) + 1 - l - r)
    seed = draw(st.integers(0, 2**32 - 1))
    extreme = draw(st.booleans())
    return n, h, w, c, (kh, kw), stride, padding, dilation, seed, extreme, draw(st.booleans()), draw(st.booleans())


def make(n, h, w, c, k, seed, extreme):
    rng = np.random.default_rng(seed)
    if extreme:  # the corners of the ranges, where a saturating path would be wrong
        x = rng.choice(np.array([0, 255], np.uint8), (n, h, w, c))
        wt = rng.choice(np.array([-128, 127], np.int8), (*k, c))
        zp = rng.choice(np.array([0, 255], np.int32), n)
    else:
        x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
        wt = rng.integers(-128, 128, (*k, c), dtype=np.int8)
        zp = rng.integers(0, 256, n, dtype=np.int32)
    scales = rng.uniform(1e-3, 0.1, n).astype(np.float32)
    cs = rng.uniform(1e-3, 0.05, c).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    return x, zp, wt, scales, cs, bias


@given(cases())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the ISA is the same for every example
def test_matches_int64_reference(each_isa, case):
    n, h, w, c, k, stride, padding, dilation, seed, extreme, with_bias, relu = case
    x, zp, wt, scales, cs, bias = make(n, h, w, c, k, seed, extreme)
    want = reference_i64(x, zp, wt, stride, padding, dilation)
    acc = _native.depthwise_conv2d_nhwc_i32(x, zp, wt, stride, padding, dilation)
    assert acc.dtype == np.int32 and acc.shape == want.shape
    np.testing.assert_array_equal(acc.astype(np.int64), want)
    b = bias if with_bias else None
    y = _native.depthwise_conv2d_nhwc(x, zp, scales, wt, cs, b, stride, padding, dilation, relu)
    assert y.dtype == np.float32 and y.shape == want.shape and y.flags.c_contiguous
    np.testing.assert_array_equal(y.view(np.uint32), float_step(want, scales, cs, b, relu).view(np.uint32))


def test_mobilenet_shapes_threaded(each_isa):
    # Above the parallel threshold (64K MACs): (image, row) tasks on several threads.
    for n, h, c, s in [(1, 28, 144, 1), (3, 14, 96, 2)]:
        x, zp, wt, scales, cs, bias = make(n, h, h, c, (3, 3), 5, False)
        want = reference_i64(x, zp, wt, (s, s), (1, 1, 1, 1), (1, 1))
        y = _native.depthwise_conv2d_nhwc(x, zp, scales, wt, cs, bias, (s, s), (1, 1, 1, 1), (1, 1), True)
        np.testing.assert_array_equal(y, float_step(want, scales, cs, bias, True))


# ---------------------------------------------------------------------------
# Bad inputs: ValueError / TypeError naming the argument, never a crash
# ---------------------------------------------------------------------------

def good():
    x, zp, wt, scales, cs, bias = make(2, 5, 5, 3, (3, 3), 0, False)
    return dict(x=x, zero_points=zp, scales=scales, weight=wt, col_scale=cs, bias=bias, stride=(1, 1),
                padding=(1, 1, 1, 1), dilation=(1, 1), relu=False)


def call(**over):
    kw = {**good(), **over}
    return _native.depthwise_conv2d_nhwc(kw["x"], kw["zero_points"], kw["scales"], kw["weight"], kw["col_scale"],
                                         kw["bias"], kw["stride"], kw["padding"], kw["dilation"], kw["relu"])


def test_good_call_runs():
    assert call().shape == (2, 5, 5, 3)
    # Any integers with __index__ (NumPy ones too), in a tuple or a list.
    y = call(stride=(np.int64(2), 2), padding=[1, 1, 1, 1], dilation=(np.int32(1), True))
    assert y.shape == (2, 3, 3, 3)


@pytest.mark.parametrize("name, value", [
    ("x", np.zeros((2, 5, 5, 3), np.float32)),
    ("x", np.zeros((2, 5, 5, 3), np.int8)),
    ("x", np.zeros((5, 5, 3), np.uint8)),
    ("zero_points", np.zeros(2, np.int64)),
    ("scales", np.ones(2, np.float64)),
    ("weight", np.zeros((3, 3, 3), np.uint8)),
    ("weight", np.zeros((3, 1, 3, 3), np.int8)),
    ("col_scale", np.ones(3, np.float64)),
    ("bias", np.zeros(3, np.float64)),
    ("stride", 1),
    ("stride", (1.5, 1)),
    ("padding", "1111"),
])
def test_wrong_type_is_type_error(name, value):
    with pytest.raises(TypeError, match=name):
        call(**{name: value})


@pytest.mark.parametrize("name, value", [
    ("zero_points", np.array([0, 256], np.int32)),
    ("zero_points", np.array([-1, 0], np.int32)),
    ("zero_points", np.zeros(3, np.int32)),
    ("scales", np.array([1.0, 0.0], np.float32)),
    ("scales", np.array([1.0, np.nan], np.float32)),
    ("scales", np.ones(1, np.float32)),
    ("weight", np.zeros((3, 3, 4), np.int8)),
    ("col_scale", np.ones(4, np.float32)),
    ("col_scale", np.array([1.0, np.inf, 1.0], np.float32)),
    ("bias", np.zeros(2, np.float32)),
    ("stride", (0, 1)),
    ("stride", (1, -1)),
    ("dilation", (1, 0)),
    ("padding", (0, -1, 0, 0)),
    ("padding", (0, 0, 0)),
    ("stride", (2**70, 1)),
    ("dilation", (1, -(2**70))),
    ("x", np.zeros((2, 5, 10, 3), np.uint8)[:, :, ::2]),
])
def test_bad_value_is_value_error(name, value):
    with pytest.raises(ValueError, match=name):
        call(**{name: value})


def test_kernel_larger_than_padded_input_or_too_many_taps():
    with pytest.raises(ValueError, match="kernel"):
        call(weight=np.zeros((8, 3, 3), np.int8))
    with pytest.raises(ValueError, match="kernel"):
        call(dilation=(4, 1))
    with pytest.raises(ValueError, match="taps"):  # the int32 sum could overflow: refused, not wrong
        call(weight=np.zeros((300, 300, 3), np.int8), padding=(150, 150, 150, 150))
    with pytest.raises(ValueError, match="padding"):
        call(padding=(2**63 - 1, 2**63 - 1, 0, 0))


def test_empty_batch():
    x = np.zeros((0, 4, 4, 3), np.uint8)
    y = call(x=x, zero_points=np.zeros(0, np.int32), scales=np.zeros(0, np.float32))
    assert y.shape == (0, 4, 4, 3)


# ---------------------------------------------------------------------------
# The runtime: _GroupConv's depthwise case is bit-identical to its NumPy path
# ---------------------------------------------------------------------------

def group_conv(c, k, stride, padding, dilation, relu, with_bias, seed):
    rng = np.random.default_rng(seed)
    wq = rng.integers(-128, 128, (c, k * k), dtype=np.int8)
    ws = rng.uniform(1e-3, 0.05, c).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32) if with_bias else None
    layer = Int8Linear(wq, ws, bias, relu=relu)
    return runtime._GroupConv(layer, c, (k, k), stride, padding, dilation, c)


@pytest.mark.parametrize("k, stride, padding, dilation", [
    (3, (1, 1), (1, 1, 1, 1), (1, 1)),
    (3, (2, 2), (0, 0, 1, 1), (1, 1)),
    (5, (1, 1), (2, 2, 2, 2), (1, 1)),
    (5, (2, 2), (1, 2, 3, 0), (1, 1)),
    (3, (1, 1), (2, 2, 2, 2), (2, 2)),
    (3, (2, 1), (0, 3, 1, 0), (2, 1)),
])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("relu", [False, True])
def test_runtime_depthwise_bit_identical_to_numpy_path(each_isa, k, stride, padding, dilation, batch, relu):
    for c, seed in [(3, 0), (40, 1)]:
        op = group_conv(c, k, stride, padding, dilation, relu, with_bias=seed == 0, seed=seed)
        assert op.depthwise
        x = np.random.default_rng(seed + 10).standard_normal((batch, c, 11, 9)).astype(np.float32)
        x[0, 0, 0, 0] = -4.0  # images with different scales and zero points
        y = op.forward(x)
        want = op._forward_numpy(x)
        assert y.dtype == np.float32 and y.shape == want.shape == op.out_shape(x.shape)
        assert y.flags.c_contiguous
        np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32))
        # The channels-last entry gives the same values, from NCHW or NHWC input.
        want_nhwc = want.transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(op.forward_nhwc(x, nchw_in=True), want_nhwc)
        np.testing.assert_array_equal(op.forward_nhwc(np.ascontiguousarray(x.transpose(0, 2, 3, 1))), want_nhwc)


def test_grouped_but_not_depthwise_keeps_the_numpy_path():
    rng = np.random.default_rng(0)
    layer = Int8Linear(rng.integers(-128, 128, (8, 2 * 9), dtype=np.int8), np.float32(0.01), None)
    op = runtime._GroupConv(layer, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2)
    assert not op.depthwise
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(op.forward(x), op._forward_numpy(x))
    np.testing.assert_array_equal(op.forward_nhwc(x, nchw_in=True), op._forward_numpy(x).transpose(0, 2, 3, 1))
    # groups == in_channels with a channel multiplier of 2 is not the native kernel's case either.
    layer = Int8Linear(rng.integers(-128, 128, (8, 9), dtype=np.int8), np.float32(0.01), None)
    op = runtime._GroupConv(layer, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4)
    assert not op.depthwise
    np.testing.assert_array_equal(op.forward(x), op._forward_numpy(x))


def test_wrong_input_layout_is_value_error():
    op = group_conv(3, 3, (1, 1), (1, 1, 1, 1), (1, 1), False, True, 0)
    with pytest.raises(ValueError, match="expects input"):
        op.forward(np.zeros((1, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match="expects input"):
        op.forward_nhwc(np.zeros((1, 3, 5, 5), np.float32))


def test_converted_depthwise_model_predicts_through_the_kernel():
    net = hw.nn.Sequential(hw.nn.Conv2d(6, 6, 3, stride=2, padding=(0, 0, 1, 1), groups=6, dilation=1, rng=0),
                           hw.nn.ReLU()).eval()
    rt = runtime.convert(net, input_shape=(6, 9, 9))
    op = next(o for o in rt.ops if o.kind == "group_conv2d")
    assert op.depthwise
    x = np.random.default_rng(1).standard_normal((2, 6, 9, 9)).astype(np.float32)
    y = rt.predict(x)
    np.testing.assert_allclose(y, net(x), rtol=0.05, atol=0.05)
