"""Graph ops and the node protocol: forward against NumPy / math / onnx.reference, backward by finite
differences, config round trips, out_shape, argument errors; Conv2d groups, dilation, asymmetric pads."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import hwreg_rs as hw
from hwreg_rs.nn import functional as F
from hwreg_rs.nn import ops
from hwreg_rs.nn.registry import REGISTRY, build
from hwreg_rs.nn.special import erf

nn = hw.nn
INT64_MAX, INT64_MIN = 2**63 - 1, -2**63


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def check_grad(module, *inputs, eps=1e-6, rtol=1e-5, atol=1e-7, seed=0):
    """backward() against central differences of sum(forward(*inputs) * R) in float64.

    Every float input and every Parameter is perturbed element by element
    (keep them small); integer inputs must get a ``None`` gradient.
    """
    module.astype(np.float64)
    xs = [np.array(x, dtype=np.float64) if np.asarray(x).dtype.kind == "f" else np.asarray(x) for x in inputs]
    rng = np.random.default_rng(seed)
    out = module.forward(*xs)
    multi = isinstance(out, tuple)
    R = tuple(rng.standard_normal(o.shape) for o in (out if multi else (out,)))
    g = module.backward(R if multi else R[0])
    g_inputs = g if len(xs) > 1 else (g,)
    assert len(g_inputs) == len(xs)
    g_params = {n: p.grad.copy() for n, p in module.named_parameters()}

    def loss():
        o = module.forward(*xs)
        return sum(float(np.sum(a * r)) for a, r in zip(o if multi else (o,), R))

    def probe(arr, analytic, name):
        assert analytic is not None and analytic.shape == arr.shape, name
        flat = arr.reshape(-1)  # a view: arr is contiguous
        num = np.empty(flat.size)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            fp = loss()
            flat[i] = old - eps
            fm = loss()
            flat[i] = old
            num[i] = (fp - fm) / (2 * eps)
        np.testing.assert_allclose(np.asarray(analytic).reshape(-1), num, rtol=rtol, atol=atol, err_msg=name)

    for k, (x, gx) in enumerate(zip(xs, g_inputs)):
        if x.dtype.kind == "f":
            probe(x, gx, f"input {k}")
        else:
            assert gx is None, f"input {k} is integer and must get no gradient"
    for name, p in module.named_parameters():
        probe(p.data, g_params[name], name)


def away(x, kinks, gap=1e-2):
    """``x`` with values within ``gap`` of a kink moved off it (finite differences need smoothness)."""
    x = np.array(x, dtype=np.float64)
    for k in kinks:
        near = np.abs(x - k) < gap
        x[near] = k + 2 * gap
    return x


def u(rng, shape, lo=-2.0, hi=2.0):
    return rng.uniform(lo, hi, size=shape)


def onnx_ref(op_type, inputs, n_out=1, **attrs):
    """Outputs of one ONNX node under onnx.reference (inputs named by dict keys; "" skips an optional one)."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op_type, list(inputs), outs, **attrs)
    feeds = {k: v for k, v in inputs.items() if k}
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in feeds.items()],
        [helper.make_empty_tensor_value_info(o) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return ReferenceEvaluator(model).run(None, feeds)


_erf_ref = np.vectorize(math.erf)


# ---------------------------------------------------------------------------
# the op table: (factory, inputs(rng)) used by the gradient, config and shape tests
# ---------------------------------------------------------------------------

def _c(factory, make, id):
    return pytest.param(factory, make, id=id)


CASES = [
    # binary elementwise, with broadcasting on either side
    _c(ops.Add, lambda r: (u(r, (2, 1, 3)), u(r, (4, 1))), "Add"),
    _c(ops.Sub, lambda r: (u(r, (3,)), u(r, (2, 3))), "Sub"),
    _c(ops.Mul, lambda r: (u(r, (2, 3)), u(r, (2, 1))), "Mul"),
    _c(ops.Div, lambda r: (u(r, (2, 3)), u(r, (3,), 0.5, 2.0) * np.array([1, -1, 1])), "Div"),
    _c(ops.Mul, lambda r: (u(r, (2, 3)), u(r, ())), "Mul-scalar"),
    _c(ops.Where, lambda r: (r.random((2, 1, 3)) < 0.5, u(r, (4, 3)), u(r, (2, 1, 1))), "Where"),
    # unary
    _c(ops.Sigmoid, lambda r: (u(r, (2, 5), -6, 6),), "Sigmoid"),
    _c(ops.Tanh, lambda r: (u(r, (2, 5)),), "Tanh"),
    _c(ops.Sqrt, lambda r: (u(r, (2, 5), 0.2, 3.0),), "Sqrt"),
    _c(ops.Erf, lambda r: (u(r, (3, 5), -3.5, 3.5),), "Erf"),
    _c(ops.Exp, lambda r: (u(r, (2, 5)),), "Exp"),
    _c(ops.Neg, lambda r: (u(r, (2, 5)),), "Neg"),
    _c(lambda: ops.Pow(3.0), lambda r: (u(r, (2, 5)),), "Pow3"),
    _c(lambda: ops.Pow(-1.5), lambda r: (u(r, (2, 5), 0.3, 2.0),), "Pow-1.5"),
    _c(lambda: ops.LeakyReLU(0.1), lambda r: (away(u(r, (2, 5)), [0]),), "LeakyReLU"),
    _c(lambda: ops.Clip(-0.5, 0.7), lambda r: (away(u(r, (3, 5)), [-0.5, 0.7]),), "Clip"),
    _c(lambda: ops.Clip(max=0.3), lambda r: (away(u(r, (3, 5)), [0.3]),), "Clip-max"),
    _c(ops.ReLU6, lambda r: (away(u(r, (3, 5), -2, 8), [0, 6]),), "ReLU6"),
    _c(ops.HardSigmoid, lambda r: (away(u(r, (3, 5), -4, 4), [-2.5, 2.5]),), "HardSigmoid"),
    _c(lambda: ops.HardSigmoid(alpha=1 / 6, beta=0.5), lambda r: (away(u(r, (3, 5), -4, 4), [-3, 3]),),
       "HardSigmoid-torch"),
    _c(ops.HardSwish, lambda r: (away(u(r, (3, 5), -5, 5), [-3, 3]),), "HardSwish"),
    _c(ops.GELU, lambda r: (u(r, (3, 5), -4, 4),), "GELU"),
    _c(lambda: ops.GELU("tanh"), lambda r: (u(r, (3, 5), -4, 4),), "GELU-tanh"),
    _c(lambda: ops.Softmax(axis=1), lambda r: (u(r, (2, 4, 3)),), "Softmax"),
    _c(lambda: ops.LogSoftmax(0), lambda r: (u(r, (3, 4)),), "LogSoftmax"),
    # normalisation and reductions
    _c(lambda: ops.LayerNorm(4), lambda r: (u(r, (2, 3, 4)),), "LayerNorm"),
    _c(lambda: ops.LayerNorm([3, 4], eps=1e-3), lambda r: (u(r, (2, 3, 4)),), "LayerNorm-2d"),
    _c(lambda: ops.LayerNorm(4, elementwise_affine=False), lambda r: (u(r, (3, 4)),), "LayerNorm-plain"),
    _c(lambda: ops.LayerNorm(4, bias=False), lambda r: (u(r, (3, 4)),), "LayerNorm-nobias"),
    _c(ops.GlobalAvgPool2d, lambda r: (u(r, (2, 3, 3, 2)),), "GlobalAvgPool2d"),
    _c(lambda: ops.ReduceMean([1]), lambda r: (u(r, (2, 3, 4)),), "ReduceMean"),
    _c(lambda: ops.ReduceMean(None, keepdims=False), lambda r: (u(r, (2, 3)),), "ReduceMean-all"),
    _c(lambda: ops.ReduceSum([0, -1], keepdims=False), lambda r: (u(r, (2, 3, 4)),), "ReduceSum"),
    # matmul of activations
    _c(ops.MatMul, lambda r: (u(r, (2, 3, 4)), u(r, (4, 2))), "MatMul"),
    _c(ops.MatMul, lambda r: (u(r, (2, 1, 3, 4)), u(r, (3, 4, 2))), "MatMul-batch-broadcast"),
    _c(ops.MatMul, lambda r: (u(r, (4,)), u(r, (2, 4, 3))), "MatMul-1d-left"),
    _c(ops.MatMul, lambda r: (u(r, (2, 3, 4)), u(r, (4,))), "MatMul-1d-right"),
    _c(ops.MatMul, lambda r: (u(r, (4,)), u(r, (4,))), "MatMul-1d-both"),
    # shape ops
    _c(lambda: ops.Reshape([0, -1]), lambda r: (u(r, (2, 3, 2)),), "Reshape"),
    _c(lambda: ops.Reshape([3, 1, 4]), lambda r: (u(r, (2, 6)),), "Reshape-fixed"),
    _c(ops.Transpose, lambda r: (u(r, (2, 3, 4)),), "Transpose-reverse"),
    _c(lambda: ops.Transpose([0, 2, 1, 3]), lambda r: (u(r, (2, 3, 1, 2)),), "Transpose"),
    _c(lambda: ops.Squeeze([1, -1]), lambda r: (u(r, (2, 1, 3, 1)),), "Squeeze"),
    _c(ops.Squeeze, lambda r: (u(r, (1, 3, 1)),), "Squeeze-all"),
    _c(lambda: ops.Unsqueeze([0, -1]), lambda r: (u(r, (2, 3)),), "Unsqueeze"),
    _c(lambda: ops.Concat(1), lambda r: (u(r, (2, 1, 2)), u(r, (2, 3, 2)), u(r, (2, 2, 2))), "Concat"),
    _c(lambda: ops.Concat(-1), lambda r: (u(r, (2, 3)),), "Concat-one"),
    _c(lambda: ops.Split([1, 0, 2], axis=-1), lambda r: (u(r, (2, 3)),), "Split"),
    _c(lambda: ops.Slice([1, -1], [INT64_MAX, -4], axes=[2, 1], steps=[2, -1]), lambda r: (u(r, (2, 4, 5)),),
       "Slice"),
    _c(lambda: ops.Expand([2, 1, 3]), lambda r: (u(r, (4, 1)),), "Expand"),
    _c(lambda: ops.Gather([0, 2, 0, -1], axis=1), lambda r: (u(r, (2, 3, 2)),), "Gather"),
    _c(lambda: ops.Gather(1), lambda r: (u(r, (3, 2)),), "Gather-scalar"),
    _c(lambda: ops.Gather([[0, 1], [1, 1]], axis=-1), lambda r: (u(r, (2, 3)),), "Gather-2d"),
    _c(ops.Identity, lambda r: (u(r, (2, 3)),), "Identity"),
    _c(lambda: ops.Cast("float64"), lambda r: (u(r, (2, 3)),), "Cast"),
    _c(lambda: ops.Embedding(5, 3, rng=0), lambda r: (np.array([[0, 4, 4], [2, 0, 1]]),), "Embedding"),
    # the classic layers under the protocol
    _c(lambda: nn.Linear(3, 2, rng=0), lambda r: (u(r, (2, 4, 3)),), "Linear-3d"),
    _c(lambda: nn.Conv2d(4, 6, 3, groups=2, padding=1, rng=0), lambda r: (u(r, (1, 4, 4, 4)),), "Conv2d-groups"),
    _c(lambda: nn.Conv2d(3, 6, 3, groups=3, stride=2, rng=0), lambda r: (u(r, (2, 3, 5, 5)),), "Conv2d-depthwise"),
    _c(lambda: nn.Conv2d(2, 3, 2, dilation=(2, 1), padding=(1, 0, 0, 2), rng=0), lambda r: (u(r, (1, 2, 4, 4)),),
       "Conv2d-dilated-asym"),
    _c(lambda: nn.Conv2d(2, 3, 3, padding=1, bias=False, rng=0), lambda r: (u(r, (1, 2, 4, 4)),), "Conv2d"),
]

LAYER_CASES = CASES + [
    _c(nn.ReLU, lambda r: (away(u(r, (2, 3)), [0]),), "Relu"),
    _c(lambda: nn.Flatten(2), lambda r: (u(r, (2, 3, 2, 2)),), "Flatten"),
    _c(lambda: nn.Dropout(0.3).eval(), lambda r: (u(r, (2, 3)),), "Dropout"),
    _c(lambda: nn.BatchNorm1d(3, eps=1e-3, momentum=0.2), lambda r: (u(r, (4, 3)),), "BatchNorm1d"),
    _c(lambda: nn.BatchNorm2d(2, affine=False), lambda r: (u(r, (2, 2, 3, 3)),), "BatchNorm2d"),
    _c(lambda: nn.MaxPool2d(3, stride=2, padding=1), lambda r: (u(r, (1, 2, 5, 5)),), "MaxPool2d"),
    _c(lambda: nn.AvgPool2d((2, 3), stride=1), lambda r: (u(r, (1, 2, 4, 4)),), "AvgPool2d"),
]


@pytest.mark.parametrize("factory, make", CASES)
def test_backward_matches_finite_differences(factory, make):
    check_grad(factory(), *make(np.random.default_rng(1)))


@pytest.mark.parametrize("factory, make", LAYER_CASES)
def test_config_round_trip_reproduces_forward_bit_for_bit(factory, make):
    m = factory()
    cfg = m.config()
    cfg2 = json.loads(json.dumps(cfg))  # JSON-able, and survives the trip
    assert cfg2 == cfg and "rng" not in cfg
    m2 = type(m)(**cfg2)
    m2.load_state_dict(m.state_dict())
    m2.train(m.training)
    assert m2.config() == cfg
    x = [a.astype(np.float32) if a.dtype.kind == "f" else a for a in make(np.random.default_rng(2))]
    y, y2 = m(*x), m2(*x)
    for a, b in zip(y if isinstance(y, tuple) else (y,), y2 if isinstance(y2, tuple) else (y2,)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("factory, make", LAYER_CASES)
def test_out_shape_agrees_with_forward_and_float32_stays_float32(factory, make):
    m = factory()
    x = [a.astype(np.float32) if a.dtype.kind == "f" else a for a in make(np.random.default_rng(3))]
    y = m(*x)
    shape = m.out_shape(*(a.shape for a in x))
    if isinstance(y, tuple):
        assert shape == tuple(o.shape for o in y)
        assert all(o.dtype == np.float32 for o in y)
    else:
        assert shape == y.shape and all(isinstance(d, int) for d in shape)
        assert y.dtype == (np.float64 if isinstance(m, ops.Cast) else np.float32)


def test_every_op_is_registered_under_its_op_type():
    classes = {getattr(ops, n) for n in ops.__all__} | {nn.Linear, nn.ReLU, nn.Flatten, nn.Dropout, nn.BatchNorm1d,
                                                        nn.BatchNorm2d, nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d}
    for cls in classes:
        assert REGISTRY[cls.op_type] is cls, cls
    assert ops.Mean is ops.ReduceMean
    conv = build("Conv2d", nn.Conv2d(4, 4, 3, groups=4, padding=(0, 1, 1, 0)).config())
    assert conv.groups == 4 and conv.padding == (0, 1, 1, 0)
    with pytest.raises(ValueError, match="bad configuration"):
        build("Pow", {})


# ---------------------------------------------------------------------------
# forward against references
# ---------------------------------------------------------------------------

binary_refs = {ops.Add: np.add, ops.Sub: np.subtract, ops.Mul: np.multiply, ops.Div: np.divide}


@given(mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3), st.sampled_from(list(binary_refs)),
       st.integers(0, 2**31 - 1))
def test_binary_ops_broadcast_either_operand(shapes, cls, seed):
    rng = np.random.default_rng(seed)
    (sa, sb), out = shapes.input_shapes, shapes.result_shape
    a = rng.standard_normal(sa).astype(np.float32)
    b = (rng.uniform(0.5, 2, sb) * rng.choice([-1, 1], sb)).astype(np.float32)
    m = cls()
    y = m(a, b)
    np.testing.assert_array_equal(y, binary_refs[cls](a, b))
    assert y.shape == out == m.out_shape(sa, sb) and y.dtype == np.float32
    ga, gb = m.backward(np.ones_like(y))
    assert ga.shape == sa and gb.shape == sb


def test_integer_operands_truncate_and_get_no_gradient():
    a, b = np.array([-7, 7, -6]), np.array([2, -2, 3])
    np.testing.assert_array_equal(ops.Div()(a, b), [-3, -3, -2])  # towards zero, like ONNX and C
    m = ops.Mul()
    m(np.ones(3), np.array([1, 2, 3]))
    ga, gb = m.backward(np.ones(3))
    assert gb is None and ga.tolist() == [1.0, 2.0, 3.0]


def test_erf_matches_math_erf():
    x = np.concatenate([np.linspace(-7, 7, 20001), np.geomspace(1e-300, 10, 2000), -np.geomspace(1e-12, 3, 500),
                        [0.0, 1.0, -1.0, 6.0, -6.0, np.inf, -np.inf]])
    err = np.abs(erf(x) - _erf_ref(x))
    assert err.max() < 1e-14
    assert np.isnan(erf(np.array([np.nan])))[0]
    assert erf(np.ones(3, np.float32)).dtype == np.float32
    assert erf(np.array([1, 2])).dtype == np.float64


@given(st.lists(st.floats(-8, 8), min_size=1, max_size=20))
def test_erf_property_odd_and_close_to_math(xs):
    x = np.array(xs)
    np.testing.assert_allclose(erf(x), _erf_ref(x), rtol=0, atol=1e-14)
    np.testing.assert_array_equal(erf(-x), -erf(x))


def test_unary_ops_match_formulas():
    x = np.linspace(-7, 7, 141)
    sq2 = math.sqrt(2)
    refs = {
        ops.Sigmoid(): 1 / (1 + np.exp(-x)),
        ops.Tanh(): np.tanh(x),
        ops.Exp(): np.exp(x),
        ops.Neg(): -x,
        ops.Erf(): _erf_ref(x),
        ops.Pow(2.0): x * x,
        ops.LeakyReLU(): np.where(x > 0, x, 0.01 * x),
        ops.Clip(-1.0, 2.0): np.clip(x, -1, 2),
        ops.Clip(): x,
        ops.ReLU6(): np.clip(x, 0, 6),
        ops.HardSigmoid(): np.clip(0.2 * x + 0.5, 0, 1),
        ops.HardSwish(): x * np.clip(x + 3, 0, 6) / 6,
        ops.GELU(): 0.5 * x * (1 + _erf_ref(x / sq2)),
        ops.GELU("tanh"): 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    }
    for m, ref in refs.items():
        np.testing.assert_allclose(m(x), ref, rtol=1e-12, atol=1e-14, err_msg=type(m).__name__)
        assert m(x.astype(np.float32)).dtype == np.float32, type(m).__name__
    np.testing.assert_allclose(ops.Sqrt()(np.abs(x)), np.sqrt(np.abs(x)))
    assert np.isfinite(ops.Sigmoid()(np.array([-1e4, 1e4], np.float32))).all()


def test_boundary_gradients_follow_pytorch():
    # clamp passes the gradient on the closed range; hardtanh (ReLU6) and hardsigmoid on the open one
    c = ops.Clip(0.0, 1.0)
    c(np.array([0.0, 1.0]))
    assert c.backward(np.ones(2)).tolist() == [1.0, 1.0]
    r = ops.ReLU6()
    r(np.array([0.0, 6.0, 3.0]))
    assert r.backward(np.ones(3)).tolist() == [0.0, 0.0, 1.0]
    hs = ops.HardSigmoid(alpha=1 / 6)
    hs(np.array([-3.0, 3.0, 0.0]))
    np.testing.assert_allclose(hs.backward(np.ones(3)), [0.0, 0.0, 1 / 6])
    hw_ = ops.HardSwish()
    hw_(np.array([-3.0, 3.0, -4.0, 4.0]))
    np.testing.assert_allclose(hw_.backward(np.ones(4)), [-0.5, 1.5, 0.0, 1.0])
    lr = ops.LeakyReLU(0.2)
    lr(np.array([0.0]))
    assert lr.backward(np.ones(1)).tolist() == [0.2]


def test_softmax_and_layernorm_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5)) * 30
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(ops.Softmax(1)(x), e / e.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(ops.LogSoftmax(1)(x), np.log(e / e.sum(axis=1, keepdims=True)), atol=1e-10)
    ln = ops.LayerNorm([3, 5], eps=1e-4)
    ln.weight.data = rng.standard_normal((3, 5)).astype(np.float32)
    ln.bias.data = rng.standard_normal((3, 5)).astype(np.float32)
    x32 = x.astype(np.float32)
    mu = x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2), keepdims=True)
    ref = (x - mu) / np.sqrt(var + 1e-4) * ln.weight.data + ln.bias.data
    y = ln(x32)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_reductions_and_matmul_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4))
    np.testing.assert_allclose(ops.ReduceMean([0, 2])(x), x.mean(axis=(0, 2), keepdims=True))
    np.testing.assert_allclose(ops.ReduceSum(-1, keepdims=False)(x), x.sum(axis=-1))
    np.testing.assert_allclose(ops.ReduceMean([])(x), x.mean(keepdims=True))  # ONNX: empty axes = all
    np.testing.assert_allclose(ops.GlobalAvgPool2d()(x[None]), x[None].mean(axis=(2, 3), keepdims=True))
    for sa, sb in [((2, 3, 4), (4, 5)), ((4,), (3, 4, 2)), ((3, 4), (4,)), ((4,), (4,)), ((2, 1, 3, 4), (5, 4, 1))]:
        a, b = rng.standard_normal(sa), rng.standard_normal(sb)
        m = ops.MatMul()
        np.testing.assert_array_equal(m(a, b), np.matmul(a, b))
        assert m.out_shape(sa, sb) == np.matmul(a, b).shape


@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.data())
def test_slice_follows_onnx_clamping(dims, data):
    x = np.arange(int(np.prod(dims))).reshape(dims)
    k = data.draw(st.integers(1, len(dims)))
    axes = data.draw(st.permutations(range(len(dims))))[:k]
    bound = st.one_of(st.integers(-6, 6), st.sampled_from([INT64_MAX, INT64_MIN]))
    starts = [data.draw(bound) for _ in axes]
    ends = [data.draw(bound) for _ in axes]
    steps = [data.draw(st.sampled_from([-3, -2, -1, 1, 2, 3])) for _ in axes]
    neg_axes = [a - len(dims) if data.draw(st.booleans()) else a for a in axes]
    m = ops.Slice(starts, ends, axes=neg_axes, steps=steps)
    y = m(x)
    assert m.out_shape(x.shape) == y.shape
    assert m.backward(np.ones(y.shape)) is None  # integer input
    # NumPy's basic slicing with the raw bounds clamps the same way, except with a negative step that
    # starts before the beginning (the spec clamps it to 0) or ends at INT64_MAX (ONNX Runtime: "to the end")
    if not any(st_ < 0 and (s < -dims[a] or e == INT64_MAX) for a, s, e, st_ in zip(axes, starts, ends, steps)):
        idx = [slice(None)] * len(dims)
        for a, s, e, st_ in zip(axes, starts, ends, steps):
            idx[a] = slice(s, e, st_)
        np.testing.assert_array_equal(y, x[tuple(idx)])
    ort_y = ort_slice(x, starts, ends, neg_axes, steps)
    if ort_y is not None:
        np.testing.assert_array_equal(y, ort_y)


def ort_slice(x, starts, ends, axes, steps):
    """ONNX Runtime's Slice (None when onnxruntime is not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from onnx import TensorProto, helper

    names = ["x", "s", "e", "a", "st"]
    node = helper.make_node("Slice", names, ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.INT64, None) for n in names],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = dict(zip(names, [x, np.array(starts), np.array(ends), np.array(axes), np.array(steps)]))
    return sess.run(None, feeds)[0]


def test_slice_edge_cases_follow_the_spec_and_onnx_runtime():
    x = np.arange(3)
    assert ops.Slice([INT64_MIN], [INT64_MIN], steps=[-1])(x).tolist() == [0]
    assert ops.Slice([-1], [INT64_MIN], steps=[-2])(x).tolist() == [2, 0]
    assert ops.Slice([5], [INT64_MAX])(x).tolist() == []
    assert ops.Slice([1], [INT64_MAX], steps=[-1])(x).tolist() == [1, 0]  # ONNX Runtime's reading
    assert ops.Slice([1], [2**31 - 1], steps=[-1])(x).tolist() == [1, 0]


def test_shape_ops_follow_onnx_semantics():
    x = np.arange(24.0).reshape(2, 3, 4)
    assert ops.Reshape([0, 0, -1])(x).shape == (2, 3, 4)
    assert ops.Reshape([-1, 0])(x).shape == (8, 3)  # the 0 copies dimension 1
    assert ops.Reshape([0, 4, 0], allowzero=True).out_shape((0, 3)) == (0, 4, 0)
    assert ops.Reshape([2, 0, 0]).out_shape((2, 3, 4)) == (2, 3, 4)
    assert ops.Unsqueeze(1)(x).shape == (2, 1, 3, 4)
    assert ops.Expand([3, 1, 1, 4])(x[:, :, :1]).shape == (3, 2, 3, 4)
    assert ops.Expand([1])(x).shape == (2, 3, 4)  # bidirectional: a 1 keeps the input's size
    a, b = ops.Split([3, 1], axis=2)(x)
    np.testing.assert_array_equal(np.concatenate([a, b], axis=2), x)
    np.testing.assert_array_equal(ops.Gather([[1, 0]], axis=0)(x), x[[[1, 0]]])
    sp = ops.Split([1, 1], axis=0)
    outs = sp(x.astype(np.float32))
    g = sp.backward((None, np.ones_like(outs[1])))
    assert g.dtype == np.float32 and g[0].sum() == 0 and g[1].sum() == 12
    c = ops.Cast("int64")
    assert c(np.array([1.7, -1.7])).tolist() == [1, -1] and c.backward(np.ones(2)) is None
    assert ops.Cast(np.float16).config() == {"to": "float16"}


def test_ops_agree_with_onnx_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    pos = np.abs(x) + 0.1
    w, b = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    c = lambda *v: np.array(v, np.int64)  # noqa: E731
    f = lambda v: np.array(v, np.float32)  # noqa: E731
    cases = [
        (ops.Add(), "Add", {"x": x, "b": b}, {}),
        (ops.Sub(), "Sub", {"b": b, "x": x}, {}),
        (ops.Mul(), "Mul", {"x": x, "b": b}, {}),
        (ops.Div(), "Div", {"x": x, "p": pos}, {}),
        (ops.Sigmoid(), "Sigmoid", {"x": x}, {}),
        (ops.Tanh(), "Tanh", {"x": x}, {}),
        (ops.Sqrt(), "Sqrt", {"p": pos}, {}),
        (ops.Erf(), "Erf", {"x": x}, {}),
        (ops.Exp(), "Exp", {"x": x}, {}),
        (ops.Neg(), "Neg", {"x": x}, {}),
        (ops.Pow(1.5), "Pow", {"p": pos, "e": f(1.5)}, {}),
        (ops.LeakyReLU(0.3), "LeakyRelu", {"x": x}, {"alpha": 0.3}),
        (ops.Clip(-0.5, 0.5), "Clip", {"x": x, "lo": f(-0.5), "hi": f(0.5)}, {}),
        (ops.Clip(max=0.2), "Clip", {"x": x, "": None, "hi": f(0.2)}, {}),
        (ops.HardSigmoid(), "HardSigmoid", {"x": x * 4}, {}),
        (ops.HardSwish(), "HardSwish", {"x": x * 4}, {}),
        (ops.GELU(), "Gelu", {"x": x}, {}),
        (ops.GELU("tanh"), "Gelu", {"x": x}, {"approximate": "tanh"}),
        (ops.Softmax(1), "Softmax", {"x": x}, {"axis": 1}),
        (ops.LogSoftmax(), "LogSoftmax", {"x": x}, {}),
        (ops.ReduceMean([1]), "ReduceMean", {"x": x, "a": c(1)}, {}),
        (ops.ReduceSum([0, 2], keepdims=False), "ReduceSum", {"x": x, "a": c(0, 2)}, {"keepdims": 0}),
        (ops.GlobalAvgPool2d(), "GlobalAveragePool", {"x": x[None]}, {}),
        (ops.MatMul(), "MatMul", {"x": x, "y": rng.standard_normal((4, 5)).astype(np.float32)}, {}),
        (ops.Reshape([0, -1]), "Reshape", {"x": x, "s": c(0, -1)}, {}),
        (ops.Transpose([2, 0, 1]), "Transpose", {"x": x}, {"perm": [2, 0, 1]}),
        (ops.Transpose(), "Transpose", {"x": x}, {}),
        (ops.Squeeze([0]), "Squeeze", {"x": x[:1], "a": c(0)}, {}),
        (ops.Unsqueeze([0, 4]), "Unsqueeze", {"x": x, "a": c(0, 4)}, {}),
        (ops.Concat(-1), "Concat", {"x": x, "y": x[..., :2]}, {"axis": -1}),
        (ops.Expand([3, 1, 1, 4]), "Expand", {"x": x[:, :1], "s": c(3, 1, 1, 4)}, {}),
        (ops.Gather([[2, 0], [-1, 1]], axis=1), "Gather", {"x": x, "i": c([2, 0], [-1, 1])}, {"axis": 1}),
        (ops.Identity(), "Identity", {"x": x}, {}),
        (ops.Cast("int32"), "Cast", {"x": x * 3}, {"to": 6}),
        (ops.Where(), "Where", {"m": x[0] > 0, "x": x, "b": f(-np.inf)}, {}),
    ]
    for m, op_type, inputs, attrs in cases:
        args = [v for k, v in inputs.items() if k in ("m", "x", "y", "p", "b")]
        (ref,) = onnx_ref(op_type, inputs, **attrs)
        y = m(*args)
        assert y.shape == ref.shape and y.dtype == ref.dtype, op_type
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6, err_msg=f"{op_type} {m!r}")
    # LayerNormalization (last axis) and Split (two outputs)
    ln = ops.LayerNorm(4)
    ln.weight.data, ln.bias.data = w, b
    (ref,) = onnx_ref("LayerNormalization", {"x": x, "w": w, "b": b}, axis=-1, epsilon=1e-5)
    np.testing.assert_allclose(ln(x), ref, rtol=1e-5, atol=1e-5)
    refs = onnx_ref("Split", {"x": x, "s": c(1, 3)}, 2, axis=2)
    for y, r in zip(ops.Split([1, 3], axis=2)(x), refs):
        np.testing.assert_array_equal(y, r)


def test_embedding_gathers_rows_and_accumulates():
    emb = ops.Embedding(6, 3, rng=0)
    assert emb.weight.shape == (6, 3) and emb.weight.data.dtype == np.float32
    assert abs(ops.Embedding(1000, 50, rng=1).weight.data.std() - 1.0) < 0.02  # PyTorch's N(0, 1)
    idx = np.array([[5, 0], [5, 5]])
    y = emb(idx)
    np.testing.assert_array_equal(y, emb.weight.data[idx])
    assert emb.backward(np.ones_like(y)) is None
    np.testing.assert_array_equal(emb.weight.grad[:, 0], [1, 0, 0, 0, 0, 3])
    assert emb.out_shape((2, 2)) == (2, 2, 3)


# ---------------------------------------------------------------------------
# Linear on (..., in) and Conv2d's groups, dilation and asymmetric padding
# ---------------------------------------------------------------------------

def test_linear_applies_to_the_last_dimension():
    lin = nn.Linear(4, 3, rng=0)
    x = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
    y = lin(x)
    np.testing.assert_allclose(y, x @ lin.weight.data.T + lin.bias.data, rtol=1e-6, atol=1e-6)
    gx = lin.backward(np.ones_like(y))
    assert gx.shape == x.shape
    np.testing.assert_allclose(lin.weight.grad, np.ones((3, 10)) @ x.reshape(10, 4), rtol=1e-5)
    assert lin.out_shape((7, 4)) == (7, 3) and lin.out_shape((2, 5, 4)) == (2, 5, 3)
    with pytest.raises(ValueError, match="expects input"):
        lin.out_shape((2, 3))


def conv_reference(x, w, b, stride, pads, dilation, groups):
    """Direct loops over output channels and positions."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (dh, dw), (top, left, bottom, right) = stride, dilation, pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, o, oh, ow))
    og = o // groups
    for oc in range(o):
        gi = oc // og
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, gi * cg:(gi + 1) * cg, i * sh: i * sh + dh * (kh - 1) + 1: dh,
                           j * sw: j * sw + dw * (kw - 1) + 1: dw]
                y[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3))
    return y + (0 if b is None else b[None, :, None, None])


conv_geometry = st.fixed_dictionaries({
    "n": st.integers(1, 2), "groups": st.integers(1, 3), "cg": st.integers(1, 2), "og": st.integers(1, 2),
    "h": st.integers(1, 7), "w": st.integers(1, 7), "k": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "s": st.tuples(st.integers(1, 2), st.integers(1, 2)), "d": st.tuples(st.integers(1, 2), st.integers(1, 2)),
    "p": st.tuples(*[st.integers(0, 2)] * 4), "bias": st.booleans(),
})


@given(conv_geometry, st.integers(0, 2**31 - 1))
def test_conv2d_variants_match_direct_loops(g, seed):
    cin, cout = g["groups"] * g["cg"], g["groups"] * g["og"]
    (kh, kw), (dh, dw), (t, l, b_, r) = g["k"], g["d"], g["p"]
    if g["h"] + t + b_ < dh * (kh - 1) + 1 or g["w"] + l + r < dw * (kw - 1) + 1:
        with pytest.raises(ValueError, match="larger than the padded input"):
            nn.Conv2d(cin, cout, g["k"], padding=g["p"], dilation=g["d"])(np.zeros((1, cin, g["h"], g["w"])))
        return
    conv = nn.Conv2d(cin, cout, g["k"], stride=g["s"], padding=g["p"], dilation=g["d"], groups=g["groups"],
                     bias=g["bias"], rng=seed)
    assert conv.weight.shape == (cout, g["cg"], kh, kw)
    x = np.random.default_rng(seed).standard_normal((g["n"], cin, g["h"], g["w"])).astype(np.float32)
    ref = conv_reference(x.astype(np.float64), conv.weight.data.astype(np.float64),
                         None if conv.bias is None else conv.bias.data, g["s"], (t, l, b_, r), g["d"], g["groups"])
    y = conv(x)
    assert y.dtype == np.float32 and y.shape == ref.shape == conv.out_shape(x.shape)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    gx = conv.backward(np.ones_like(y))
    assert gx.shape == x.shape and conv.weight.grad.shape == conv.weight.shape


def test_conv2d_matches_onnx_reference_conv():
    rng = np.random.default_rng(0)
    for cin, cout, groups, k, s, d, pads in [(4, 6, 2, (3, 2), (2, 1), (1, 2), (1, 0, 2, 1)),
                                             (3, 3, 3, (3, 3), (1, 1), (2, 2), (2, 2, 2, 2)),
                                             (2, 4, 1, (1, 3), (1, 2), (1, 1), (0, 1, 0, 0))]:
        conv = nn.Conv2d(cin, cout, k, stride=s, padding=pads, dilation=d, groups=groups, rng=0)
        x = rng.standard_normal((2, cin, 7, 6)).astype(np.float32)
        (ref,) = onnx_ref("Conv", {"x": x, "w": conv.weight.data, "b": conv.bias.data}, group=groups,
                          kernel_shape=list(k), strides=list(s), dilations=list(d), pads=list(pads))
        np.testing.assert_allclose(conv(x), ref, rtol=1e-5, atol=1e-5)


def test_conv2d_fast_path_and_padding_forms():
    sym = nn.Conv2d(2, 3, 3, padding=(1, 2, 1, 2), rng=0)
    assert sym.padding == (1, 2) and sym._im2col_path  # symmetric 4-tuple: the native im2col path
    asym = nn.Conv2d(2, 3, 3, padding=(1, 2, 0, 2), rng=0)
    assert asym.padding == (1, 2, 0, 2) and not asym._im2col_path
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(np.float32)
    taps = F.conv2d_taps(x, sym.weight.data, (1, 1), (1, 2, 1, 2)) + sym.bias.data.reshape(-1, 1, 1)
    np.testing.assert_allclose(sym(x), taps, rtol=1e-5, atol=1e-5)
    # PyTorch's init bound uses fan_in = in_channels / groups * kh * kw
    dw = nn.Conv2d(64, 64, 3, groups=64, rng=0)
    assert 0.25 < np.abs(dw.weight.data).max() <= 1 / 3


def test_depthwise_conv_is_vectorised():
    import time

    dw = nn.Conv2d(128, 128, 3, padding=1, groups=128, rng=0)
    x = np.random.default_rng(0).standard_normal((8, 128, 28, 28)).astype(np.float32)
    t0 = time.perf_counter()
    y = dw(x)
    dw.backward(y)
    # no Python loop over the 128 channels (9 taps only): well under a second even on a slow CPU
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize("activation_bits", [None, 8])
def test_qat_hooks_work_on_grouped_dilated_conv(activation_bits):
    net = nn.Sequential(nn.Conv2d(4, 8, 3, groups=4, dilation=2, padding=(1, 0, 2, 1), rng=0), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 5 * 4, 3, rng=1))
    qat = hw.constraints.QAT(weight_bits=4, activation_bits=activation_bits)
    qat.attach(net)
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 7)).astype(np.float32)
    y = net(x)
    conv = net[0]
    wq = conv.effective_weight()
    assert len(np.unique(wq[0])) <= 16 and not np.array_equal(wq, conv.weight.data)
    if activation_bits is None:
        ref = F.conv2d_taps(x, wq, (1, 1), (1, 0, 2, 1), (2, 2), 4) + conv.bias.data.reshape(-1, 1, 1)
        np.testing.assert_allclose(conv(x), ref, rtol=1e-6, atol=1e-6)
    gx = net.backward(np.ones_like(y))
    assert gx.shape == x.shape and np.abs(conv.weight.grad).sum() > 0
    qat.check()


# ---------------------------------------------------------------------------
# argument errors name the argument
# ---------------------------------------------------------------------------

BAD = [
    (lambda: nn.Conv2d(4, 4, 3, groups=3), ValueError, "groups"),
    (lambda: nn.Conv2d(4, 4, 3, groups=0), ValueError, "groups"),
    (lambda: nn.Conv2d(4, 4, 3, dilation=0), ValueError, "dilation"),
    (lambda: nn.Conv2d(4, 4, 3, padding=(1, 2, 3)), TypeError, "padding"),
    (lambda: nn.Conv2d(4, 4, 3, padding=(1, -1, 0, 0)), ValueError, "padding"),
    (lambda: nn.Flatten("1"), TypeError, "start_dim"),
    (lambda: ops.Pow("2"), TypeError, "exponent"),
    (lambda: ops.LeakyReLU(alpha=None), TypeError, "alpha"),
    (lambda: ops.Clip(1.0, 0.0), ValueError, "min"),
    (lambda: ops.Clip(min="a"), TypeError, "min"),
    (lambda: ops.HardSigmoid(beta=[1]), TypeError, "beta"),
    (lambda: ops.GELU("erf"), ValueError, "approximate"),
    (lambda: ops.Softmax(axis=1.5), TypeError, "axis"),
    (lambda: ops.Softmax(axis=3)(np.zeros((2, 2))), ValueError, "axis"),
    (lambda: ops.LayerNorm(0), ValueError, "normalized_shape"),
    (lambda: ops.LayerNorm("4"), TypeError, "normalized_shape"),
    (lambda: ops.LayerNorm(4, eps="small"), TypeError, "eps"),
    (lambda: ops.LayerNorm(4)(np.zeros((2, 3))), ValueError, "LayerNorm"),
    (lambda: ops.ReduceMean(axes="a"), TypeError, "axes"),
    (lambda: ops.ReduceMean(axes=[2])(np.zeros((2, 2))), ValueError, "axes"),
    (lambda: ops.ReduceSum(axes=[0, -2])(np.zeros((2, 2))), ValueError, "axes"),
    (lambda: ops.Add()(np.zeros((2, 3)), np.zeros(4)), ValueError, "broadcast"),
    (lambda: ops.MatMul()(np.zeros((2, 3)), np.zeros((4, 2))), ValueError, "inner"),
    (lambda: ops.MatMul().out_shape((), (2,)), ValueError, "rank"),
    (lambda: ops.Reshape([-1, -1]), ValueError, "shape"),
    (lambda: ops.Reshape([0, -1], allowzero=True), ValueError, "shape"),
    (lambda: ops.Reshape([5])(np.zeros(6)), ValueError, "reshape"),
    (lambda: ops.Reshape([0, 0, 0])(np.zeros((4, 1))), ValueError, "copies dimension"),
    (lambda: ops.Transpose([0, 0])(np.zeros((2, 2))), ValueError, "perm"),
    (lambda: ops.Transpose("01"), TypeError, "perm"),
    (lambda: ops.Squeeze([0])(np.zeros((2, 1))), ValueError, "axes"),
    (lambda: ops.Unsqueeze([]), ValueError, "axes"),
    (lambda: ops.Unsqueeze([0, 0]).out_shape((2,)), ValueError, "axes"),
    (lambda: ops.Concat(0)(np.zeros((2, 3)), np.zeros((2, 4))), ValueError, "Concat"),
    (lambda: ops.Concat(None), TypeError, "axis"),
    (lambda: ops.Split([1, 1], axis=1)(np.zeros((2, 3))), ValueError, "split"),
    (lambda: ops.Split([]), ValueError, "split"),
    (lambda: ops.Slice([0], [1], steps=[0]), ValueError, "steps"),
    (lambda: ops.Slice([0, 1], [1]), ValueError, "ends"),
    (lambda: ops.Slice([0], [1], axes=[2])(np.zeros((2, 2))), ValueError, "axes"),
    (lambda: ops.Expand([3])(np.zeros(2)), ValueError, "broadcast"),
    (lambda: ops.Gather([5])(np.zeros(3)), ValueError, "indices"),
    (lambda: ops.Gather([0.5]), TypeError, "indices"),
    (lambda: ops.Gather([0], axis=2)(np.zeros(3)), ValueError, "axis"),
    (lambda: ops.Cast("nope"), ValueError, "to"),
    (lambda: ops.Cast(None), ValueError, "to"),
    (lambda: ops.Embedding(0, 3), ValueError, "num_embeddings"),
    (lambda: ops.Embedding(3, 2)(np.array([0.5])), TypeError, "indices"),
    (lambda: ops.Embedding(3, 2)(np.array([3])), ValueError, "indices"),
    (lambda: ops.Where()(np.array([1, 0]), np.zeros(2), np.zeros(2)), TypeError, "condition"),
    (lambda: ops.Where()(np.array([True]), np.zeros(2), np.zeros(3)), ValueError, "broadcast"),
]


@pytest.mark.parametrize("call, exc, name", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_arguments_raise_naming_the_argument(call, exc, name):
    with pytest.raises(exc, match=name):
        call()


@pytest.mark.parametrize("module", ["ops", "special", "conv", "layers", "functional"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"hwreg_rs.nn.{module}")
    result = doctest.testmod(mod)
    assert result.attempted >= 3 and result.failed == 0, result
