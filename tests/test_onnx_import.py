"""ONNX import: ``hw.onnx.load`` against ONNX Runtime (whole models) and the ONNX reference (single ops).

Contract (issue #9): ``g = hw.onnx.load(path | bytes | ModelProto, *, input_shape=None)`` is a trainable
``hw.nn.Graph`` in eval mode; ``g(x)`` (``g(x1, x2)`` for several inputs) runs float32 and returns one array,
or a tuple for several outputs; results match ONNX Runtime to ``max|Δ| <= 1e-4 * max|ref|``. Unsupported
ops / opsets / dtypes / attributes raise ``ValueError`` naming the op type and the node; malformed or hostile
files raise ``hw.io.FormatError`` (a ``ValueError``) quickly.

The single-op reference is ONNX Runtime (CPU, graph optimizations off) when it is installed, else
``onnx.reference.ReferenceEvaluator``; hypothesis draws shapes and attributes where they matter.
"""

from __future__ import annotations

import os
import time
import tracemalloc

import numpy as np
import onnx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import hwreg_rs as hw
from hwreg_rs import zoo as F

# keep property tests short whatever the profile (tests/conftest.py: HYPOTHESIS_PROFILE=ci|dev)
EXAMPLES = min(settings.default.max_examples, 25)
prop = settings(max_examples=EXAMPLES, deadline=None)
REL = 1e-4  # max|Δ| <= REL * max|ref|

FIXTURES = F.all_fixtures()


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _ort():
    if os.environ.get("HWREG_TEST_NO_ORT"):  # check the fallback to the reference evaluator
        return None
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


# onnx.reference (1.23) gets these wrong, so without ONNX Runtime they are skipped: BatchNormalization-9
# (opset < 14; the tests use opset 17), MaxPool with SAME_LOWER or padding on inputs smaller than the
# window, Slice with negative steps and INT64_MIN ends, Squeeze with several (negative) axes given as an
# attribute.
needs_ort = pytest.mark.skipif(_ort() is None, reason="onnx.reference disagrees with the spec here; needs onnxruntime")


def ort_run(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def reference(model, feeds):
    """ONNX Runtime when installed (the contract's target), else the onnx reference evaluator."""
    if _ort() is not None:
        try:
            return ort_run(model, feeds)
        except Exception as e:  # ORT lacks a kernel for this case: the reference decides
            if "NOT_IMPLEMENTED" not in str(e) and "NotImplemented" not in type(e).__name__:
                raise
    return ReferenceEvaluator(model).run(None, feeds)


def input_names(model):
    inits = {t.name for t in model.graph.initializer}
    return [vi.name for vi in model.graph.input if vi.name not in inits]


def run_graph(g, model, feeds):
    """``g(*inputs)`` as a list of outputs (one array, or a tuple for several outputs)."""
    out = g(*[feeds[n] for n in input_names(model)])
    if len(model.graph.output) == 1:
        assert isinstance(out, np.ndarray), f"one output must come back as an array, got {type(out)}"
        return [out]
    assert isinstance(out, tuple) and len(out) == len(model.graph.output)
    return list(out)


def assert_close(got, ref, rel=REL, what=""):
    got = np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    assert got.dtype == np.float32, f"{what}: dtype {got.dtype}, want float32"
    scale = max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-6)
    err = float(np.abs(got.astype(np.float64) - ref).max()) if ref.size else 0.0
    assert err <= rel * scale, f"{what}: max|Δ| = {err:.3g} > {rel} * max|ref| = {rel * scale:.3g}"


def rand(shape, seed=0, lo=-1.0, hi=1.0):
    return np.random.default_rng(seed).uniform(lo, hi, size=shape).astype(np.float32)


def i64(v):
    return np.asarray(v, dtype=np.int64)


# ---------------------------------------------------------------------------
# whole models vs ONNX Runtime, at batch 1 and 7
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(FIXTURES))
def test_fixture_matches_ort(name):
    m = FIXTURES[name]
    g = hw.onnx.load(m)
    assert isinstance(g, hw.nn.Graph) and isinstance(g, hw.nn.Module)
    assert g.training is False, "a loaded graph starts in eval mode"
    for batch in (1, 7):
        feeds = F.input_for(m, batch, seed=batch)
        for i, (a, r) in enumerate(zip(run_graph(g, m, feeds), ort_run(m, feeds))):
            assert_close(a, r, what=f"{name} batch {batch} output {i}")


@pytest.mark.parametrize("name", ["transformer", "transformer_flat_input", "transformer_causal",
                                  "transformer_first_token", "transformer_decomposed_ln_opset18"])
def test_folded_shape_subgraphs_keep_the_batch_symbolic(name):
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape is folded at load without freezing the batch: the same
    graph runs at batch 7, then 1, then 3, each row independent of the others."""
    m = FIXTURES[name]
    g = hw.onnx.load(m)
    x7 = F.input_for(m, 7, seed=3)[input_names(m)[0]]
    y7 = g(x7)
    assert_close(y7, ort_run(m, {input_names(m)[0]: x7})[0])
    y1 = g(x7[2:3])
    assert y1.shape[0] == 1
    assert_close(y1, y7[2:3], rel=1e-5, what="row 2 alone")
    y3 = g(x7[4:7])
    assert_close(y3, y7[4:7], rel=1e-5, what="rows 4..6")


@pytest.mark.parametrize("name", ["transformer", "resnet", "mobilenetv2", "transformer_decomposed_ln"])
def test_loaded_graph_does_not_contain_shape_ops_or_unfused_patterns(name):
    """Not required to be visible, but when the graph exposes its nodes, Shape ops must be gone."""
    g = hw.onnx.load(FIXTURES[name])
    nodes = getattr(g, "nodes", None)
    if nodes is None:
        pytest.skip("hw.nn.Graph does not expose .nodes")
    kinds = {getattr(n, "op_type", type(n).__name__) for n in nodes}
    assert "Shape" not in kinds


def _symbolic(model, dims):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    shp = m.graph.input[0].type.tensor_type.shape
    for d, v in zip(shp.dim, dims):
        d.Clear()
        if isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = v
    return m


@pytest.mark.parametrize("name, dims, input_shape", [
    ("cnn", ["batch", "c", "h", "w"], (1, 8, 8)),
    ("resnet", ["N", 1, "H", "W"], (1, 8, 8)),
    ("transformer", ["batch", "seq", 8], (8, 8)),
    ("mlp", ["batch", "features"], (64,)),
])
def test_input_shape_fixes_symbolic_dims(name, dims, input_shape):
    m = _symbolic(FIXTURES[name], dims)
    onnx.checker.check_model(m, full_check=True)
    g = hw.onnx.load(m, input_shape=input_shape)
    for batch in (1, 7):
        x = rand((batch,) + input_shape, seed=batch, lo=0, hi=1)
        assert_close(g(x), ort_run(m, {"input": x})[0], what=f"batch {batch}")


def test_input_shape_that_contradicts_the_model_is_refused():
    with pytest.raises(ValueError):
        hw.onnx.load(FIXTURES["cnn"], input_shape=(3, 8, 8))


def test_several_inputs_and_outputs():
    m = FIXTURES["two_inputs_two_outputs"]
    g = hw.onnx.load(m)
    feeds = F.input_for(m, 5)
    out = g(feeds["x1"], feeds["x2"])
    assert isinstance(out, tuple) and len(out) == 2
    for a, r in zip(out, ort_run(m, feeds)):
        assert_close(a, r)


# ---------------------------------------------------------------------------
# how models may be given
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ModelProto", "bytes", "str path", "pathlib.Path"])
def test_load_accepts_proto_bytes_and_paths(kind, tmp_path):
    m = FIXTURES["cnn"]
    path = tmp_path / "cnn.onnx"
    onnx.save(m, str(path))
    src = {"ModelProto": m, "bytes": m.SerializeToString(), "str path": str(path), "pathlib.Path": path}[kind]
    g = hw.onnx.load(src)
    feeds = F.input_for(m, 3)
    assert_close(g(feeds["input"]), ort_run(m, feeds)[0])


def test_load_does_not_modify_the_proto():
    m = FIXTURES["resnet"]
    before = m.SerializeToString()
    hw.onnx.load(m)
    assert m.SerializeToString() == before


def test_load_rejects_wrong_types():
    with pytest.raises(TypeError):
        hw.onnx.load(12345)


# ---------------------------------------------------------------------------
# parameters: names from the initializers, live values
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, keys", [
    ("mlp", ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]),
    ("cnn", ["conv1.weight", "conv2.weight", "fc.weight", "fc.bias"]),
    ("resnet", ["conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight", "layer2.0.conv1.weight",
                "layer2.0.downsample.0.weight", "fc.weight", "fc.bias"]),
    ("mobilenetv2", ["features.0.0.weight", "features.1.conv.0.0.weight", "features.2.conv.1.0.weight",
                     "classifier.1.weight"]),
    ("concat_branches", ["branch_a.conv.weight", "branch_a.conv.bias", "branch_b.conv.weight", "fc.weight"]),
    ("transformer", ["layer.self_attn.q_proj.bias", "layer.norm1.weight", "layer.norm2.bias", "head.weight"]),
])
def test_state_dict_names_come_from_the_initializers(name, keys):
    g = hw.onnx.load(FIXTURES[name])
    sd = g.state_dict()
    missing = [k for k in keys if k not in sd]
    assert not missing, f"missing {missing}; state_dict has {list(sd)}"
    assert {n for n, _ in g.named_parameters()} >= {k for k in keys if k.endswith((".weight", ".bias"))}


@pytest.mark.parametrize("name", ["mlp", "concat_branches"])
def test_state_dict_values_are_the_initializers(name):
    """Where nothing is fused into a weight, it is the initializer unchanged, in torch layout."""
    m = FIXTURES[name]
    g = hw.onnx.load(m)
    sd = g.state_dict()
    for t in m.graph.initializer:
        if t.name in sd:
            np.testing.assert_array_equal(sd[t.name], numpy_helper.to_array(t), err_msg=t.name)
    if name == "mlp":
        assert {"fc1.weight", "fc2.weight"} <= set(sd)
        assert sd["fc1.weight"].shape == (32, 64)  # Linear layout (out, in), as the Gemm transB=1 weight


def test_parameters_are_live():
    """Changing a parameter through load_state_dict changes what the graph computes."""
    m = FIXTURES["mlp"]
    g = hw.onnx.load(m)
    sd = g.state_dict()
    sd["fc2.weight"] = np.zeros_like(sd["fc2.weight"])
    g.load_state_dict(sd)
    x = F.input_for(m, 4)["input"]
    np.testing.assert_allclose(g(x), np.broadcast_to(sd["fc2.bias"], (4, 10)), rtol=0, atol=1e-6)


def test_graph_is_trainable():
    """A backward pass reaches every parameter (what hw.fit needs; training itself: test_onnx_roundtrip)."""
    m = FIXTURES["resnet"]
    g = hw.onnx.load(m)
    g.train()
    x = F.input_for(m, 4)["input"]
    y = g(x)
    g.zero_grad()
    g.backward(np.ones_like(y) / y.size)
    grads = {n: p.grad for n, p in g.named_parameters()}
    assert "fc.weight" in grads and np.abs(grads["fc.weight"]).sum() > 0
    assert np.abs(grads["conv1.weight"]).sum() > 0, "the gradient reaches the first conv through the residuals"
    g.eval()
    assert g.training is False


# ---------------------------------------------------------------------------
# single ops
#
# The first dim of every graph input is the batch, symbolic ("batch"), and each model is run at two batch
# sizes; ops act on the other axes (what exported models do: an op that mixes or moves the batch has no
# meaning for a graph that serves any batch). "Core" cases are what torch and the model zoos emit and must
# match; "extended" cases (asymmetric pads, ceil_mode, SAME auto_pad, ...) must match or be refused with a
# ValueError naming the op type and the node.
# ---------------------------------------------------------------------------

B = F.BATCH


def feeds_for(model, batch, *, lo=-1.0, hi=1.0, seed=0):
    rng = np.random.default_rng(seed + batch)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = rng.uniform(lo, hi, size=dims).astype(np.float32)
    return out


def check(model, *, batches=(1, 3), lo=-1.0, hi=1.0, rel=REL, g=None):
    """Load once, run at each batch size, compare every output with the reference."""
    g = hw.onnx.load(model) if g is None else g
    for batch in batches:
        feeds = feeds_for(model, batch, lo=lo, hi=hi)
        ref = reference(model, feeds)
        got = run_graph(g, model, feeds)
        assert len(got) == len(ref)
        for i, (a, r) in enumerate(zip(got, ref)):
            assert_close(a, r, rel, what=f"batch {batch} output {i}")
    return g


def check_or_refused(model, **kw):
    """Extended cases: match the reference, or raise ValueError naming the op type and the node."""
    node = model.graph.node[-1]
    try:
        g = hw.onnx.load(model)
    except hw.io.FormatError:
        raise
    except ValueError as e:
        assert node.op_type in str(e) and node.name in str(e), f"refusal must name {node.op_type} {node.name}: {e}"
        return None
    return check(model, g=g, **kw)


UNARY = [
    ("Relu", {}, 17), ("Sigmoid", {}, 17), ("Tanh", {}, 17), ("Erf", {}, 17), ("Identity", {}, 17),
    ("LeakyRelu", {"alpha": 0.1}, 17), ("LeakyRelu", {}, 17), ("HardSigmoid", {}, 17),
    ("HardSigmoid", {"alpha": 0.25, "beta": 0.4}, 17), ("HardSwish", {}, 17), ("Softmax", {}, 17),
    ("Softmax", {"axis": 1}, 17), ("Softmax", {"axis": -3}, 13), ("GlobalAveragePool", {}, 17),
    ("Flatten", {}, 17), ("Flatten", {"axis": 1}, 17), ("Flatten", {"axis": 3}, 17), ("Flatten", {"axis": -1}, 17),
    ("Relu", {}, 13), ("Relu", {}, 21), ("Sigmoid", {}, 21), ("Softmax", {"axis": -1}, 21),
]


@pytest.mark.parametrize("op, attrs, opset", UNARY, ids=[f"{o}-{a}-op{s}" for o, a, s in UNARY])
def test_unary_op(op, attrs, opset):
    check(F.single_op(op, (B, 3, 5, 4), opset=opset, **attrs), lo=-4, hi=4)


def test_sqrt_and_pow():
    check(F.single_op("Sqrt", (B, 7)), lo=0.1, hi=3.0)
    for e in (2.0, 3.0, 0.5, -1.0):
        check(F.make_single_op("Pow", [("x", (B, 7)), ("e", np.array(e, np.float32))]), lo=0.1, hi=3.0)


@pytest.mark.parametrize("opset", [13, 17])
def test_dropout_is_identity_in_inference(opset):
    m = F.make_single_op("Dropout", [("x", (B, 6)), ("ratio", np.array(0.3, np.float32))], opset=opset)
    g = check(m)
    x = rand((4, 6))
    np.testing.assert_array_equal(g(x), x)


@pytest.mark.parametrize("lo, hi", [(0.0, 6.0), (-0.5, None), (None, 0.25), (None, None)])
def test_clip_with_min_max_inputs(lo, hi):
    ins = [("x", (B, 8)),
           ("min", np.array(lo, np.float32)) if lo is not None else ("", None),
           ("max", np.array(hi, np.float32)) if hi is not None else ("", None)]
    while ins[-1][0] == "":
        ins.pop()
    check(F.make_single_op("Clip", ins), lo=-8, hi=8)


@pytest.mark.parametrize("shape", [(B, 3, 4, 5), (B, 3)])
def test_batchnorm_inference(shape):
    c = shape[1]
    rng = np.random.default_rng(0)
    m = F.make_single_op("BatchNormalization", [
        ("x", shape), ("scale", rng.uniform(0.5, 1.5, c).astype(np.float32)),
        ("B", rng.normal(size=c).astype(np.float32)), ("mean", rng.normal(size=c).astype(np.float32)),
        ("var", rng.uniform(0.5, 2, c).astype(np.float32))], epsilon=1e-3, momentum=0.9)
    check(m)


@pytest.mark.parametrize("axis", [-1, -2, 1])
def test_layer_normalization(axis):
    rest = (4, 6)
    norm = rest[axis:] if axis < 0 else rest[axis - 1:]
    rng = np.random.default_rng(0)
    m = F.make_single_op("LayerNormalization", [
        ("x", (B,) + rest), ("scale", rng.uniform(0.5, 1.5, norm).astype(np.float32)),
        ("B", rng.normal(size=norm).astype(np.float32))], axis=axis, epsilon=1e-5)
    check(m, lo=-3, hi=3)


@pytest.mark.parametrize("opset", [13, 17, 18, 21])
@pytest.mark.parametrize("axes, keepdims", [([1], 1), ([-1], 0), ([1, 2], 1), ([2, -1], 0), ([1, 2, 3], 1),
                                            ([-1, -2], 1)])
def test_reduce_mean(opset, axes, keepdims):
    """axes as an attribute below opset 18, as an input from 18 on."""
    if opset >= 18:
        m = F.make_single_op("ReduceMean", [("x", (B, 3, 4, 5)), ("axes", i64(axes))], opset=opset,
                             keepdims=keepdims)
    else:
        m = F.make_single_op("ReduceMean", [("x", (B, 3, 4, 5))], opset=opset, axes=axes, keepdims=keepdims)
    check(m)


# -- binary ops with broadcasting --------------------------------------------

@prop
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=4),
       op=st.sampled_from(["Add", "Sub", "Mul", "Div"]), kind=st.sampled_from(["const", "const_b1", "input"]),
       swap=st.booleans())
def test_binary_op_broadcasting(shapes, op, kind, swap):
    """``x (batch, ...) op c``: c a constant of any rank that broadcasts (with or without a leading 1 for the
    batch), or a second batched input; the constant may come first (``0.5 * x``)."""
    sa, sb = shapes.input_shapes
    r = len(shapes.result_shape)
    a_shape = (B,) + (1,) * (r - len(sa)) + tuple(sa)
    lo = 0.5 if op == "Div" else -1.0
    b_arr = rand(sb, seed=2, lo=lo, hi=2.0)
    if kind == "const":
        b_in = ("b", b_arr)
    elif kind == "const_b1":
        b_in = ("b", b_arr.reshape((1,) + (1,) * (r - len(sb)) + tuple(sb)))
    else:
        b_in = ("b", (B,) + (1,) * (r - len(sb)) + tuple(sb))
    ins = [b_in, ("a", a_shape)] if swap and op in ("Add", "Mul") else [("a", a_shape), b_in]
    m = F.make_single_op(op, ins)
    if op == "Pow" and (kind == "input" or b_arr.size != 1):
        # Only a scalar constant exponent is supported; anything else is refused by name.
        with pytest.raises(ValueError, match="Pow"):
            hw.onnx.load(m)
        return
    check(m, lo=0.5 if op == "Div" else -1.0, hi=2.0)


@pytest.mark.parametrize("kind", ["tensor", "input"])
def test_pow_with_a_tensor_exponent_matches_or_is_refused(kind):
    e = ("e", rand((4,), lo=0.5, hi=2.0)) if kind == "tensor" else ("e", (B, 4))
    check_or_refused(F.make_single_op("Pow", [("x", (B, 4)), e]), lo=0.5, hi=2.0)


@prop
@given(data=st.data(), k=st.integers(1, 5), n=st.integers(1, 5))
def test_matmul_broadcasting(data, k, n):
    """``x (batch, [..., M,] K) @ W``: W a constant (K, N), (K,), or with broadcast batch dims; or a second
    batched input (``q @ k^T`` in attention)."""
    kind = data.draw(st.sampled_from(["2d", "3d_const", "3d_const_1d", "4d_inputs", "3d_const_b"]))
    mm = data.draw(st.integers(1, 4))
    if kind == "2d":
        ins = [("a", (B, k)), ("w", rand((k, n), seed=2))]
    elif kind == "3d_const":
        ins = [("a", (B, mm, k)), ("w", rand((k, n), seed=2))]
    elif kind == "3d_const_1d":
        ins = [("a", (B, mm, k)), ("w", rand((k,), seed=2))]
    elif kind == "3d_const_b":
        ins = [("a", (B, mm, k)), ("w", rand((1, k, n), seed=2))]
    else:
        h = data.draw(st.integers(1, 3))
        hb = data.draw(st.sampled_from([1, h]))
        ins = [("a", (B, h, mm, k)), ("b", (B, hb, k, n))]
    check(F.make_single_op("MatMul", ins))


@prop
@given(k=st.integers(1, 6), n=st.integers(1, 5), transB=st.integers(0, 1), alpha=st.sampled_from([1.0, 0.5]),
       beta=st.sampled_from([1.0, 2.0]), c=st.sampled_from(["none", "scalar", "n", "1n"]))
def test_gemm(k, n, transB, alpha, beta, c):
    sb = (n, k) if transB else (k, n)
    ins = [("a", (B, k)), ("b", rand(sb, seed=2))]
    cshape = {"none": None, "scalar": (), "n": (n,), "1n": (1, n)}[c]
    if cshape is not None:
        ins.append(("c", rand(cshape, seed=3)))
    check(F.make_single_op("Gemm", ins, transB=transB, alpha=alpha, beta=beta))


# -- Conv ----------------------------------------------------------------------

@st.composite
def conv_cases(draw):
    groups_kind = draw(st.sampled_from(["1", "2", "depthwise"]))
    cpg = draw(st.integers(1, 3))
    opg = draw(st.integers(1, 3))
    if groups_kind == "1":
        group, c_in, c_out = 1, cpg, opg * draw(st.integers(1, 2))
    elif groups_kind == "2":
        group, c_in, c_out = 2, 2 * cpg, 2 * opg
    else:
        c = draw(st.integers(2, 5))
        group, c_in, c_out = c, c, c * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    attrs = dict(group=group, strides=[sh, sw], dilations=[dh, dw])
    if draw(st.booleans()):
        attrs["kernel_shape"] = [kh, kw]  # optional: inferred from the weight
    if auto_pad == "NOTSET":
        pads = [draw(st.integers(0, 2)) for _ in range(4)]
        if draw(st.booleans()) or any(pads):
            attrs["pads"] = pads
    else:
        pads = [0, 0, 0, 0]
        attrs["auto_pad"] = auto_pad
    eff_h, eff_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if auto_pad.startswith("SAME"):
        # ORT refuses dilation with SAME, and a kernel smaller than the stride asks for negative padding
        assume(dh == dw == 1 and kh >= sh and kw >= sw)
    if auto_pad in ("NOTSET", "VALID"):
        assume(h + pads[0] + pads[2] >= eff_h and w + pads[1] + pads[3] >= eff_w)
    bias = draw(st.booleans())
    return dict(c_in=c_in, c_out=c_out, h=h, w=w, kh=kh, kw=kw, attrs=attrs, bias=bias)


def conv_model(case, op="Conv"):
    rng = np.random.default_rng(0)
    g = case["attrs"]["group"]
    wshape = (case["c_out"], case["c_in"] // g, case["kh"], case["kw"])
    ins = [("x", (B, case["c_in"], case["h"], case["w"])), ("W", rng.normal(size=wshape).astype(np.float32))]
    if case["bias"]:
        ins.append(("B", rng.normal(size=case["c_out"]).astype(np.float32)))
    return F.make_single_op(op, ins, **case["attrs"])


@prop
@given(case=conv_cases())
def test_conv(case):
    """Conv: groups (1, 2, depthwise), strides, dilations, asymmetric pads, auto_pad, optional kernel_shape."""
    check(conv_model(case))


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
    dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
    dict(kernel_shape=[7, 7], pads=[3, 3, 3, 3], strides=[2, 2]),          # the ResNet stem
    dict(kernel_shape=[3, 3], pads=[2, 2, 2, 2], dilations=[2, 2]),
    dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=4),                 # depthwise
    dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(kernel_shape=[2, 2], auto_pad="SAME_LOWER", strides=[1, 1]),
    dict(kernel_shape=[3, 3], auto_pad="VALID"),
    dict(kernel_shape=[1, 3], pads=[0, 1, 0, 1]),                          # non-square kernel
    dict(kernel_shape=[3, 3], pads=[0, 1, 2, 0]),                          # asymmetric pads
])
def test_conv_cases(attrs):
    c = 4
    group = attrs.get("group", 1)
    w = np.random.default_rng(0).normal(size=(8, c // group) + tuple(attrs["kernel_shape"])).astype(np.float32)
    check(F.make_single_op("Conv", [("x", (B, c, 9, 9)), ("W", w), ("B", rand(8))], **attrs))


def test_conv_transpose_is_supported_or_refused_by_name():
    """ConvTranspose may be refused; if it is, the error names the op type and the node."""
    w = rand((4, 3, 3, 3))
    m = F.make_single_op("ConvTranspose", [("x", (B, 4, 5, 5)), ("W", w)], kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1], output_padding=[1, 1])
    check_or_refused(m)


# -- pools ---------------------------------------------------------------------

def _pool_window_ok(h, w, k, s, pads, d, ceil):
    for size, kk, ss, p0, p1, dd in ((h, k[0], s[0], pads[0], pads[2], d[0]), (w, k[1], s[1], pads[1], pads[3], d[1])):
        if size + p0 + p1 < dd * (kk - 1) + 1:
            return False
        if ceil:  # no window may start in the padding (ORT and torch drop it; the spec is unclear)
            out = -(-(size + p0 + p1 - dd * (kk - 1) - 1) // ss) + 1
            if (out - 1) * ss >= size + p0:
                return False
    return True


@st.composite
def pool_cases(draw, extended=False):
    """Core: symmetric pads <= kernel // 2, ceil_mode 0, VALID, AveragePool with
    count_include_pad=1 when padded (torch's defaults). Extended: asymmetric pads, ceil_mode=1,
    count_include_pad=0, SAME_UPPER / SAME_LOWER."""
    op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw])
    pads = [0, 0, 0, 0]
    if extended:
        auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER"]))
    else:
        auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "NOTSET", "VALID"]))
    if auto_pad == "NOTSET":
        if extended:
            pads = [draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1)),
                    draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))]
            if draw(st.booleans()):
                attrs["ceil_mode"] = 1
        else:
            ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
            pads = [ph, pw, ph, pw]
        attrs["pads"] = pads
    else:
        attrs["auto_pad"] = auto_pad
        if auto_pad.startswith("SAME"):
            assume(kh >= sh and kw >= sw)  # else SAME asks for negative padding (ORT refuses it)
    if extended and op == "MaxPool" and auto_pad == "NOTSET" and draw(st.booleans()):
        attrs["dilations"] = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    if op == "AveragePool" and any(pads):
        attrs["count_include_pad"] = draw(st.integers(0, 1)) if extended else 1
    assume(_pool_window_ok(h, w, [kh, kw], [sh, sw], pads, attrs.get("dilations", [1, 1]), attrs.get("ceil_mode")))
    return op, (B, 3, h, w), attrs


@needs_ort
@prop
@given(case=pool_cases())
def test_pool(case):
    op, shape, attrs = case
    check(F.single_op(op, shape, **attrs), lo=-3, hi=3)


@needs_ort
@prop
@given(case=pool_cases(extended=True))
def test_pool_extended_matches_or_is_refused(case):
    op, shape, attrs = case
    check_or_refused(F.single_op(op, shape, **attrs), lo=-3, hi=3)


@pytest.mark.parametrize("op, attrs", [
    ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2])),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),              # ResNet stem pool
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1])),
    ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=0)),
    ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2])),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=1)),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="VALID")),
])
def test_pool_cases(op, attrs):
    check(F.single_op(op, (B, 3, 8, 8), **attrs), lo=-3, hi=3)


@pytest.mark.parametrize("op, attrs", [
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),                    # ceil_mode=True
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])),           # count_include_pad=0
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1])),               # TF-style asymmetric
    ("MaxPool", dict(kernel_shape=[2, 2], strides=[1, 1], dilations=[2, 2])),                # nn.MaxPool2d(dilation=2)
])
def test_pool_extended_cases(op, attrs):
    check_or_refused(F.single_op(op, (B, 3, 7, 7), **attrs), lo=-3, hi=3)


# -- shape ops -----------------------------------------------------------------

@st.composite
def reshape_cases(draw):
    """``x (batch, *rest)`` reshaped to ``[0 or -1, *regrouped rest]`` with 0 (copy) and one -1 in the rest."""
    rest = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3)))
    target, i = [], 0
    while i < len(rest):
        j = draw(st.integers(i + 1, len(rest)))
        target.append(int(np.prod(rest[i:j])))
        i = j
    if 4 in target and draw(st.booleans()):
        k = target.index(4)
        target[k:k + 1] = [2, 2]
    if draw(st.booleans()):
        target.append(1)  # unsqueeze a trailing 1
    lead = draw(st.sampled_from([0, 0, -1]))
    spec = list(target)
    for k in range(len(spec)):
        if k < len(rest) and target[k] == rest[k] and draw(st.booleans()):
            spec[k] = 0  # copy the input dim at the same position (allowzero = 0)
    free = [k for k in range(len(spec)) if spec[k] != 0]
    if lead == 0 and free and draw(st.booleans()):
        spec[draw(st.sampled_from(free))] = -1
    return (B,) + rest, [lead] + spec


@prop
@given(case=reshape_cases(), opset=st.sampled_from([13, 14, 17, 21]))
def test_reshape_with_zero_and_minus_one(case, opset):
    shape, spec = case
    check(F.make_single_op("Reshape", [("x", shape), ("shape", i64(spec))], opset=opset))


@prop
@given(perm=st.integers(0, 4).flatmap(lambda r: st.permutations(range(1, r + 1))), given_perm=st.booleans())
def test_transpose(perm, given_perm):
    """Any permutation of the non-batch axes (the batch stays first); no perm = reverse (only rank 1 keeps the
    batch first, so ``given_perm=False`` is tried on rank 1)."""
    full = [0] + list(perm)
    shape = (B,) + tuple(range(2, 2 + len(perm)))
    attrs = {"perm": full} if given_perm or len(full) > 1 else {}
    check(F.single_op("Transpose", shape, **attrs))


@prop
@given(rank=st.integers(2, 4), data=st.data())
def test_softmax_axes(rank, data):
    axis = data.draw(st.sampled_from([a for a in range(-rank, rank) if a not in (0, -rank)]))
    rest = tuple(data.draw(st.lists(st.integers(1, 5), min_size=rank - 1, max_size=rank - 1)))
    check(F.single_op("Softmax", (B,) + rest, axis=axis), lo=-5, hi=5)


INT64_MAX = np.iinfo(np.int64).max


@st.composite
def slice_cases(draw):
    rest = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    r = len(rest) + 1
    axes = draw(st.lists(st.integers(1, r - 1), min_size=1, max_size=r - 1, unique=True))
    starts, ends, steps = [], [], []
    for a in axes:
        n = rest[a - 1]
        step = draw(st.sampled_from([1, 1, 2, 3, -1, -2]))
        if step > 0:
            s = draw(st.integers(-n - 2, n - 1))
            e = draw(st.sampled_from([draw(st.integers(-n - 2, n + 2)), INT64_MAX]))  # torch's `x[:, a:]`
        else:
            s = draw(st.sampled_from([draw(st.integers(-n, n + 1)), INT64_MAX]))
            e = draw(st.sampled_from([draw(st.integers(-n - 2, n - 1)), -INT64_MAX - 1]))
        starts.append(s)
        ends.append(e)
        steps.append(step)
    negative_axes = draw(st.booleans())
    give_axes = draw(st.booleans()) or negative_axes or axes != list(range(len(axes)))
    if negative_axes:
        axes = [a - r for a in axes]
    give_steps = draw(st.booleans()) or any(s != 1 for s in steps)
    return (B,) + rest, starts, ends, axes if give_axes else None, steps if give_steps else None


@needs_ort
@prop
@given(case=slice_cases())
def test_slice(case):
    """Slice on non-batch axes: negative starts / ends / axes, INT64 ends, steps > 1 and < 0, clamping."""
    shape, starts, ends, axes, steps = case
    ins = [("x", shape), ("starts", i64(starts)), ("ends", i64(ends))]
    if axes is not None or steps is not None:
        ins.append(("axes", i64(axes)))
    if steps is not None:
        ins.append(("steps", i64(steps)))
    m = F.make_single_op("Slice", ins)
    ref = reference(m, feeds_for(m, 1))
    assume(ref[0].size > 0)  # empty results: not what models do
    check(m)


@prop
@given(rank=st.integers(2, 4), n_in=st.integers(1, 4), data=st.data())
def test_concat(rank, n_in, data):
    axis = data.draw(st.sampled_from([a for a in range(-rank, rank) if a not in (0, -rank)]))
    base = data.draw(st.lists(st.integers(1, 4), min_size=rank - 1, max_size=rank - 1))
    ins = []
    for i in range(n_in):
        s = [B] + list(base)
        s[axis] = data.draw(st.integers(1, 3))
        ins.append((f"x{i}", tuple(s)))
    check(F.make_single_op("Concat", ins, axis=axis))


@prop
@given(data=st.data(), opset=st.sampled_from([13, 17, 18]))
def test_split(data, opset):
    """``split`` sizes as an input (opset >= 13); equal parts from the output count (13-17) or ``num_outputs``
    (18+, where the last part may be smaller)."""
    rank = data.draw(st.integers(2, 4))
    rest = data.draw(st.lists(st.integers(1, 6), min_size=rank - 1, max_size=rank - 1))
    axis = data.draw(st.sampled_from([a for a in range(-rank, rank) if a not in (0, -rank)]))
    shape = [B] + rest
    n = shape[axis]
    mode = data.draw(st.sampled_from(["sizes", "equal"]))
    if mode == "sizes":
        cuts = sorted(data.draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=3, unique=True))) if n > 1 else []
        sizes = np.diff([0] + cuts + [n]).tolist()
        m = F.make_single_op("Split", [("x", shape), ("split", i64(sizes))], n_outputs=len(sizes), axis=axis,
                             opset=opset)
    elif opset >= 18:
        k = data.draw(st.integers(1, n))
        assume(-(-n // k) * (k - 1) < n)  # every part non-empty
        m = F.make_single_op("Split", [("x", shape)], n_outputs=k, axis=axis, num_outputs=k, opset=opset)
    else:
        k = data.draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
        m = F.make_single_op("Split", [("x", shape)], n_outputs=k, axis=axis, opset=opset)
    check(m)


@prop
@given(data=st.data())
def test_gather(data):
    """Gather along a non-batch axis with constant indices: scalar (drops the axis: ``x[:, 0]``), 1-D, 2-D,
    negative."""
    rank = data.draw(st.integers(2, 4))
    rest = data.draw(st.lists(st.integers(1, 5), min_size=rank - 1, max_size=rank - 1))
    axis = data.draw(st.sampled_from([a for a in range(-rank, rank) if a not in (0, -rank)]))
    n = ([0] + rest)[axis]
    ishape = data.draw(st.sampled_from([(), (1,), (3,), (2, 2)]))
    idx = np.asarray(data.draw(hnp.arrays(np.int64, ishape, elements=st.integers(-n, n - 1))), np.int64)
    check(F.make_single_op("Gather", [("x", [B] + rest), ("indices", idx)], axis=axis))


SQUEEZE_OPSETS = [11, 12, 13, 17, 21]


@pytest.mark.parametrize("opset", SQUEEZE_OPSETS)
@pytest.mark.parametrize("axes", [[1], [-1], [1, 3], pytest.param([3, -3], marks=needs_ort), None])
def test_squeeze(opset, axes):
    """axes as an attribute (opset 11, 12), as an input (13+); no axes = every size-1 dim but the batch
    (run at batch 2 and 3, where ORT agrees)."""
    shape = (B, 1, 3, 1)
    if axes is None:
        m = F.make_single_op("Squeeze", [("x", shape)], opset=opset, out_shapes=[[B, 3]])
    elif opset >= 13:
        m = F.make_single_op("Squeeze", [("x", shape), ("axes", i64(axes))], opset=opset)
    else:
        m = F.make_single_op("Squeeze", [("x", shape)], opset=opset, axes=axes)
    onnx.checker.check_model(m, full_check=True)
    check(m, batches=(2, 3) if axes is None else (1, 3))


@pytest.mark.parametrize("opset", SQUEEZE_OPSETS)
@pytest.mark.parametrize("axes", [[1], [2], [-1], [1, 3], [2, -1]])
def test_unsqueeze(opset, axes):
    shape = (B, 3)
    if opset >= 13:
        m = F.make_single_op("Unsqueeze", [("x", shape), ("axes", i64(axes))], opset=opset)
    else:
        m = F.make_single_op("Unsqueeze", [("x", shape)], opset=opset, axes=axes)
    check(m)


@prop
@given(data=st.data())
def test_expand(data):
    """``x (batch, ...)`` expanded by a constant shape with 1 at the batch (keeps it); the shape may also hold 1
    where x is larger."""
    src = tuple(data.draw(st.lists(st.sampled_from([1, 3]), min_size=1, max_size=3)))
    target = [data.draw(st.sampled_from([1, 2, 4])) if s == 1 else data.draw(st.sampled_from([s, 1])) for s in src]
    check(F.make_single_op("Expand", [("x", (B,) + src), ("shape", i64([1] + target))]))


# -- small graphs of the int / mask ops (float in, float out) -----------------

def _graph(build, shape=(B, 3, 4), *, opset=17):
    b = F.GraphBuilder(opset=opset)
    x = b.input("x", list(shape))
    return b.model(build(b, x))


def test_shape_slice_constantofshape():
    """``Shape(x, start=1)`` -> ConstantOfShape(value=2) -> Mul: a constant from the static dims."""
    def sliced(b, x):
        s = b.node("", "Shape", [x], start=1)                  # -> [3, 4]
        c = b.node("", "ConstantOfShape", [s], value=numpy_helper.from_array(np.array([2.0], np.float32)))
        return b.node("", "Mul", [x, c])
    check(_graph(sliced))

    def gathered(b, x):  # x.new_ones(x.shape[-1]) written with Shape -> Gather -> Unsqueeze -> ConstantOfShape
        d = b.dim("", x, 2)
        c = b.node("", "ConstantOfShape", [b.unsqueeze("", d, [0])],
                   value=numpy_helper.from_array(np.array([0.5], np.float32)))
        return b.node("", "Add", [x, c])
    check(_graph(gathered))


def test_constantofshape_of_the_full_shape_matches_or_is_refused():
    """``ConstantOfShape(Shape(x))`` (torch's ``zeros_like`` / ``ones_like``) depends on the batch."""
    m = _graph(lambda b, x: b.node("", "Add", [x, b.node("", "ConstantOfShape", [b.node("", "Shape", [x])],
                                                        value=numpy_helper.from_array(np.array([0.5], np.float32)))]))
    check_or_refused(m)


def test_shape_with_symbolic_batch_feeds_reshape():
    """``x.view(x.size(0), -1)`` as torch writes it (Shape -> Gather(0) -> Unsqueeze -> Concat -> Reshape)."""
    def build(b, x):
        n = b.dim("", x, 0)
        return b.node("", "Reshape", [x, b.shape_of("", [n, -1])])
    check(_graph(build, (B, 2, 3, 4)), batches=(1, 6))


def test_shape_of_static_dims_feeds_reshape():
    """``x.view(-1, x.size(1) * x.size(2))``: the static dims are folded, -1 takes the batch."""
    def build(b, x):
        c = b.dim("", x, 1)
        h = b.dim("", x, 2)
        ch = b.node("", "Mul", [c, h])
        return b.node("", "Reshape", [x, b.shape_of("", [-1, ch])])
    check(_graph(build, (B, 3, 4)), batches=(1, 5))


def test_cast_round_trip_truncates():
    def build(b, x):
        y = b.node("", "Mul", [x, b.const("", np.array(10.0, np.float32))])
        y = b.node("", "Cast", [y], to=TensorProto.INT64)
        y = b.node("", "Cast", [y], to=TensorProto.FLOAT)
        return b.node("", "Add", [y, x])
    check_or_refused(_graph(build), lo=-2, hi=2)


def test_where_with_a_constant_mask():
    """The mask use: ``scores.masked_fill(mask == 0, -1e4)`` with a constant (buffer) mask, broadcast over
    the batch: Equal folded at load, Where on data."""
    def build(b, x):
        mask = b.init("mask", np.tril(np.ones((3, 4), np.float32)))
        eq = b.node("", "Equal", [mask, b.const("", np.array(0.0, np.float32))])
        return b.node("", "Where", [eq, b.const("", np.array(-1e4, np.float32)), x])
    check(_graph(build))

    def build_bool(b, x):
        mask = b.init("mask", np.array([True, False, True, False]))
        return b.node("", "Where", [mask, x, b.const("", np.array(0.0, np.float32))])
    check(_graph(build_bool))


def test_equal_on_data_matches_or_is_refused():
    def build(b, x):
        q = b.node("", "Cast", [b.node("", "Mul", [x, b.const("", np.array(4.0, np.float32))])], to=TensorProto.INT64)
        eq = b.node("", "Equal", [q, b.const("", np.array(1, np.int64))])
        neg = b.node("", "Mul", [x, b.const("", np.array(-1.0, np.float32))])
        return b.node("", "Where", [eq, x, neg])
    m = _graph(build)
    try:
        g = hw.onnx.load(m)
    except ValueError as e:
        assert not isinstance(e, hw.io.FormatError) and any(op in str(e) for op in ("Equal", "Cast", "Where"))
        return
    check(m, g=g, lo=0, hi=1)


@pytest.mark.parametrize("kind", ["value", "value_float", "value_floats"])
def test_constant_node_forms(kind):
    def build(b, x):
        if kind == "value":
            c = b.const("", rand((4,), seed=5))
        else:
            name = b._node_name("", "Constant")
            c = f"{name}_output_0"
            v = 0.25 if kind == "value_float" else [0.1, 0.2, 0.3, 0.4]
            b.nodes.append(helper.make_node("Constant", [], [c], name=name, **{kind: v}))
        return b.node("", "Add", [x, c])
    check(_graph(build))


@pytest.mark.parametrize("layer_norm", ["op", "decomposed"])
def test_layernorm_and_gelu_patterns(layer_norm):
    """The decomposed LayerNorm and the Erf-GELU match ORT whether or not the importer fuses them."""
    check(F.transformer(layer_norm=layer_norm), batches=(1, 7), lo=0, hi=1)


# ---------------------------------------------------------------------------
# refused: unsupported ops, opsets, dtypes and attributes (ValueError naming the node)
# ---------------------------------------------------------------------------

def _lstm():
    rng = np.random.default_rng(0)
    return F.make_single_op("LSTM", [("x", (5, 2, 4)), ("W", rng.normal(size=(1, 12, 4)).astype(np.float32)),
                                     ("R", rng.normal(size=(1, 12, 3)).astype(np.float32))],
                            n_outputs=1, hidden_size=3)


def _topk():
    return F.make_single_op("TopK", [("x", (2, 5)), ("k", i64([2]))], n_outputs=2)


def _custom():
    return F.make_single_op("FancyOp", [("x", (2, 3))], domain="com.example", infer=False, out_shapes=[[2, 3]])


@pytest.mark.parametrize("build, op", [(_lstm, "LSTM"), (_topk, "TopK"), (_custom, "FancyOp")])
def test_unsupported_op_is_named(build, op):
    m = build()
    with pytest.raises(ValueError) as e:
        hw.onnx.load(m)
    msg = str(e.value)
    assert op in msg and f"/op/{op}" in msg, msg
    assert not isinstance(e.value, hw.io.FormatError), "a valid model with an unsupported op is not a format error"


def test_unsupported_op_inside_a_bigger_graph_names_its_node():
    m = onnx.ModelProto()
    m.CopyFrom(FIXTURES["cnn"])
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    relu.op_type = "Selu"  # a valid op outside the supported list
    with pytest.raises(ValueError, match="Selu") as e:
        hw.onnx.load(m)
    assert relu.name in str(e.value)


@pytest.mark.parametrize("opset", [7, 9, 30])
def test_unsupported_opset_is_refused(opset):
    m = F.make_single_op("Relu", [("x", (2, 3))], opset=min(opset, 21), infer=False, out_shapes=[[2, 3]])
    m.opset_import[0].version = opset
    with pytest.raises(ValueError, match=rf"\b{opset}\b"):
        hw.onnx.load(m)


@pytest.mark.parametrize("dtype", [TensorProto.STRING, TensorProto.INT8])
def test_unsupported_dtype_is_refused(dtype):
    b = F.GraphBuilder()
    b.inputs.append(helper.make_tensor_value_info("x", dtype, [2, 3]))
    b.nodes.append(helper.make_node("Identity" if dtype == TensorProto.STRING else "Relu", ["x"], ["output"],
                                    name="/op/Act"))
    m = helper.make_model(helper.make_graph(b.nodes, "g", b.inputs,
                                            [helper.make_tensor_value_info("output", dtype, [2, 3])]),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    with pytest.raises(ValueError) as e:
        hw.onnx.load(m)
    msg = str(e.value)
    assert "/op/Act" in msg or "'x'" in msg, f"name the node or the input: {msg}"
    dname = TensorProto.DataType.Name(dtype)
    assert dname.lower() in msg.lower(), f"name the dtype ({dname}): {msg}"


@pytest.mark.parametrize("case", ["conv3d", "maxpool_indices"])
def test_unsupported_attribute_is_named(case):
    if case == "conv3d":
        m = F.make_single_op("Conv", [("x", (1, 2, 4, 4, 4)), ("W", rand((3, 2, 3, 3, 3)))], kernel_shape=[3, 3, 3])
        op = "Conv"
    else:
        m = F.make_single_op("MaxPool", [("x", (1, 2, 4, 4))], n_outputs=2, kernel_shape=[2, 2])
        op = "MaxPool"
    with pytest.raises(ValueError) as e:
        hw.onnx.load(m)
    assert op in str(e.value) and f"/op/{op}" in str(e.value)


# ---------------------------------------------------------------------------
# hostile files: FormatError, fast, no huge allocation
# ---------------------------------------------------------------------------

def _expect_format_error(src, **kw):
    _expect_refused_fast(hw.io.FormatError, src, **kw)


def _expect_refused_fast(exc, src, **kw):
    """``exc`` within 1 s, and no big allocation on the way (NumPy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(exc):
            hw.onnx.load(src, **kw)
        dt = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert dt < 1.0, f"took {dt:.2f} s"
    assert peak < 64 * 2**20, f"allocated {peak / 2**20:.0f} MiB before refusing"


def test_format_error_is_a_value_error():
    assert issubclass(hw.io.FormatError, ValueError)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(seed):
    _expect_format_error(np.random.default_rng(seed).bytes(4096))


def test_empty_and_garbage_inputs():
    _expect_format_error(b"")
    _expect_format_error(b"\x00" * 64)
    _expect_format_error(b"this is not a protobuf at all, just text\n" * 10)


def test_truncated_protobuf():
    data = FIXTURES["resnet"].SerializeToString()
    cut_points = []
    for frac in (0.1, 0.3, 0.5, 0.77, 0.9, 0.999):
        cut = int(len(data) * frac)
        try:
            onnx.load_from_string(data[:cut])
        except Exception:
            cut_points.append(cut)
    assert cut_points, "no cut point made an unparsable file"
    for cut in cut_points:
        _expect_format_error(data[:cut])


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        hw.onnx.load(tmp_path / "nope.onnx")


def test_truncated_file_on_disk(tmp_path):
    data = FIXTURES["cnn"].SerializeToString()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2 + 3])
    _expect_format_error(p)


def _copy(name="mlp"):
    m = onnx.ModelProto()
    m.CopyFrom(FIXTURES[name])
    return m


def test_cycle():
    b = F.GraphBuilder()
    x = b.input("x", [2, 3])
    b.nodes.append(helper.make_node("Add", [x, "b"], ["a"], name="/A"))
    b.nodes.append(helper.make_node("Relu", ["a"], ["b"], name="/B"))
    b.nodes.append(helper.make_node("Relu", ["b"], ["output"], name="/C"))
    m = helper.make_model(helper.make_graph(b.nodes, "g", b.inputs,
                                            [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2, 3])]),
                          opset_imports=[helper.make_opsetid("", 17)])
    _expect_format_error(m)
    _expect_format_error(m.SerializeToString())


def test_self_loop():
    m = _copy()
    n = m.graph.node[1]  # /relu/Relu
    n.input[0] = n.output[0]
    _expect_format_error(m)


def test_missing_initializer():
    m = _copy("cnn")
    keep = [t for t in m.graph.initializer if t.name != "conv2.weight"]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    _expect_format_error(m)


def test_undefined_value_and_unproduced_output():
    m = _copy()
    m.graph.node[2].input[0] = "nowhere"
    _expect_format_error(m)
    m = _copy()
    m.graph.output[0].name = "not_produced"
    _expect_format_error(m)


def test_value_produced_twice():
    m = _copy()
    m.graph.node[1].output[0] = m.graph.node[0].output[0]
    _expect_format_error(m)


def test_no_graph_or_no_nodes():
    m = onnx.ModelProto()
    m.ir_version = 8
    m.opset_import.add().version = 17
    _expect_format_error(m)
    _expect_format_error(m.SerializeToString())


def _tensor(name, dims, raw=b"", dtype=TensorProto.FLOAT):
    t = TensorProto()
    t.name = name
    t.data_type = dtype
    t.dims.extend(dims)
    if raw:
        t.raw_data = raw
    return t


def _replace_init(m, name, t):
    for i, old in enumerate(m.graph.initializer):
        if old.name == name:
            m.graph.initializer[i].CopyFrom(t)
            return m
    raise KeyError(name)


@pytest.mark.parametrize("dims", [[2**40], [2**20, 2**20, 2**20], [2**62, 4], [32, 2**40]])
def test_huge_initializer_dims(dims):
    m = _copy()
    _replace_init(m, "fc1.weight", _tensor("fc1.weight", dims, raw=b"\0" * 64))
    _expect_format_error(m)


@pytest.mark.parametrize("dims", [[-1, 64], [32, -64], [-2**40, 1]])
def test_negative_initializer_dims(dims):
    m = _copy()
    _replace_init(m, "fc1.weight", _tensor("fc1.weight", dims, raw=b"\0" * 64))
    _expect_format_error(m)


@pytest.mark.parametrize("dim", [2**40, -3])
def test_huge_or_negative_input_dims(dim):
    m = _copy()
    d = m.graph.input[0].type.tensor_type.shape.dim[1]
    d.Clear()
    d.dim_value = dim
    _expect_format_error(m)


def test_huge_input_shape_argument():
    m = _symbolic(FIXTURES["mlp"], ["batch", "features"])
    _expect_refused_fast(ValueError, m, input_shape=(2**40,))


@pytest.mark.parametrize("nbytes", [0, 4, 32 * 64 * 4 - 4, 32 * 64 * 4 + 4, 32 * 64 * 8])
def test_raw_data_length_disagrees_with_dims(nbytes):
    m = _copy()
    t = _tensor("fc1.weight", [32, 64])
    t.raw_data = b"\x01" * nbytes
    if nbytes == 0:
        t.ClearField("raw_data")  # no data at all
    _replace_init(m, "fc1.weight", t)
    _expect_format_error(m)


def test_float_data_length_disagrees_with_dims():
    m = _copy()
    t = _tensor("fc1.weight", [32, 64])
    t.float_data.extend([0.5] * (32 * 64 - 1))
    _replace_init(m, "fc1.weight", t)
    _expect_format_error(m)


def test_initializer_with_both_raw_and_typed_data():
    m = _copy()
    t = _tensor("fc1.bias", [32], raw=b"\0" * 128)
    t.float_data.extend([1.0] * 32)
    _replace_init(m, "fc1.bias", t)
    _expect_format_error(m)


@pytest.mark.parametrize("location", ["/etc/passwd", "../../../../etc/passwd", "weights.bin"])
def test_external_data_is_not_followed_out_of_bytes(location):
    """A model given as bytes / ModelProto whose initializer points at an external file must not read it."""
    m = _copy()
    t = _tensor("fc1.weight", [32, 64])
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", location
    _replace_init(m, "fc1.weight", t)
    _expect_format_error(m)
    _expect_format_error(m.SerializeToString())


def test_constant_of_shape_with_huge_shape_is_refused():
    """Folding a ConstantOfShape at load must check the size before allocating."""
    def build(b, x):
        c = b.node("", "ConstantOfShape", [b.const("", i64([2**20, 2**20, 2**10]))],
                   value=numpy_helper.from_array(np.array([1.0], np.float32)))
        return b.node("", "Add", [x, b.node("", "ReduceMean", [c], keepdims=0)])
    b = F.GraphBuilder()
    x = b.input("x", [3, 4])
    m = b.model(build(b, x), infer=False, out_shapes=[[3, 4]])
    onnx.checker.check_model(m)
    _expect_refused_fast(ValueError, m)


def test_expand_to_huge_shape_is_refused():
    m = F.make_single_op("Expand", [("x", (B, 3)), ("shape", i64([1, 2**40, 3]))], infer=False,
                         out_shapes=[[B, 2**40, 3]])
    onnx.checker.check_model(m)
    _expect_refused_fast(ValueError, m)


def test_reshape_to_a_wrong_size_is_refused_at_load():
    m = F.make_single_op("Reshape", [("x", (B, 3)), ("shape", i64([0, 2]))], infer=False, out_shapes=[[B, 2]])
    with pytest.raises(ValueError):
        hw.onnx.load(m)


def test_deep_graph_does_not_overflow_the_stack():
    """A long chain (10 000 nodes) loads and runs: no recursion limit, no quadratic blow-up."""
    b = F.GraphBuilder()
    x = b.input("x", [2, 3])
    for _ in range(10_000):
        x = b.node("", "Relu", [x])
    m = b.model(x, infer=False, out_shapes=[[2, 3]])
    onnx.checker.check_model(m)
    t0 = time.perf_counter()
    g = hw.onnx.load(m)
    assert time.perf_counter() - t0 < 10.0
    xx = rand((2, 3))
    np.testing.assert_array_equal(g(xx), np.maximum(xx, 0))


def test_node_with_more_outputs_than_its_op_makes_is_a_format_error():
    # Found by the file fuzzer: a flipped byte gave a Relu a second output.
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y", "z"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(hw.io.FormatError, match="Relu .* declares 2 outputs; the op makes 1"):
        hw.onnx.load(m.SerializeToString())
