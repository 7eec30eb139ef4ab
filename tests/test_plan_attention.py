"""The attention ops of the native plan (LayerNorm, Softmax, GELU, MatMul of two activations,
Transpose, reshapes, the mean over an outer axis, scalar arithmetic): lowered by the planner,
checked against onnx.reference and against the Python ops they replace."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import hwreg_rs as hw
from hwreg_rs import _native, _planner, runtime, zoo
from test_plan import _node_by_node  # every node's own Python op, one after another


def _native_ops(rt):
    return [n.op for _, c, _ in rt._steps if isinstance(c, _planner.Segment) for n in c.nodes]


def _python_ops(rt):
    return [c.__self__.module.op_type for _, c, _ in rt._steps if not isinstance(c, _planner.Segment)]


def _model(b):
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, None)
    g = helper.make_graph(b.nodes, "m", b.inputs, [out], initializer=b.initializers)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", zoo.OPSET)])
    m.ir_version = 8
    return m


def _attention(*, keepdims=0, left_mul=False, ln_axes=1):
    """x (B, 8, 8) -> heads (B, 2, 8, 4) -> softmax(q qᵀ / 2) q -> back to (B, 8, 8) -> LayerNorm -> GELU
    written with Erf -> mean over the tokens."""
    b = zoo.GraphBuilder(seed=3)
    x = b.input("x", ["batch", 8, 8])
    h = b.node("a", "Reshape", [x, b.const("a", np.array([0, 8, 2, 4], np.int64))])
    q = b.node("a", "Transpose", [h], perm=[0, 2, 1, 3])
    kt = b.node("a", "Transpose", [q], perm=[0, 1, 3, 2])
    s = b.node("a", "MatMul", [q, kt])
    c = b.const("a", np.array([2.0], np.float32))
    s = b.node("a", "Mul", [b.const("a", np.array([0.5], np.float32)), s]) if left_mul else b.node("a", "Div", [s, c])
    p = b.node("a", "Softmax", [s], axis=-1)
    o = b.node("a", "MatMul", [p, q])
    o = b.node("a", "Transpose", [o], perm=[0, 2, 1, 3])
    o = b.node("a", "Reshape", [o, b.const("a", np.array([0, 8, 8], np.int64))])
    d = 8 if ln_axes == 1 else 64
    scale = b.init("ln.w", (1 + 0.1 * b.rng.standard_normal(d)).astype(np.float32).reshape((8,) * ln_axes))
    shift = b.init("ln.b", (0.1 * b.rng.standard_normal(d)).astype(np.float32).reshape((8,) * ln_axes))
    o = b.node("ln", "LayerNormalization", [o, scale, shift], axis=-ln_axes, epsilon=1e-5)
    e = b.node("g", "Erf", [b.node("g", "Div", [o, b.const("g", np.array([np.sqrt(2.0)], np.float32))])])
    e = b.node("g", "Add", [e, b.const("g", np.array([1.0], np.float32))])
    o = b.node("g", "Mul", [b.node("g", "Mul", [o, e]), b.const("g", np.array([0.5], np.float32))])
    b.reduce_mean("m", o, [1], keepdims=keepdims)
    b.nodes[-1].output[0] = "output"
    return _model(b)


@pytest.mark.parametrize("variant", [{}, {"keepdims": 1}, {"left_mul": True}, {"ln_axes": 2}])
def test_an_attention_block_is_one_native_call_that_matches_onnx_reference(variant):
    proto = _attention(**variant)
    rt = runtime.convert(hw.onnx.load(proto).eval(), input_shape=(8, 8))
    assert rt._whole is not None, _python_ops(rt)
    ops = _native_ops(rt)
    for op in ("matmul", "softmax", "layer_norm", "gelu", "transpose", "mean", "scalar", "reshape"):
        assert op in ops, (op, ops)
    ref = ReferenceEvaluator(proto)
    for batch in (1, 3, 33):
        x = np.random.default_rng(batch).standard_normal((batch, 8, 8)).astype(np.float32)
        y = rt.predict(x)
        want = ref.run(None, {"x": x})[0]
        assert y.shape == want.shape
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
        # the Python ops it replaces: the same kernels but for the MatMul's rounding
        np.testing.assert_allclose(y, _node_by_node(rt, x), rtol=1e-6, atol=1e-6)


def test_the_transpose_of_k_folds_into_the_scores_matmul():
    rt = runtime.convert(hw.onnx.load(_attention()).eval(), input_shape=(8, 8))
    mm = [n for n in rt._whole.nodes if n.op == "matmul"]
    assert [n.params["trans_b"] for n in mm] == [True, False]
    assert _native_ops(rt).count("transpose") == 2  # q's heads and the context back; kᵀ is gone
    x = np.random.default_rng(0).standard_normal((3, 8, 8)).astype(np.float32)
    unfused = _planner.Segment(*_unfused(rt))
    np.testing.assert_allclose(rt.predict(x), unfused(x, threads=1), rtol=1e-6, atol=1e-6)


def _unfused(rt):
    """The whole-model segment of ``rt`` (one input: value 0) with its ``kᵀ`` an explicit Transpose again."""
    seg = rt._whole
    nodes, nxt = [], 1 + max(v for n in seg.nodes for v in (*n.inputs, n.output))
    for n in seg.nodes:
        if n.op == "matmul" and n.params["trans_b"]:
            nodes.append(_planner.PlanNode("transpose", [n.inputs[1]], nxt, {"perm": [0, 2, 1]}))
            n = _planner.PlanNode("matmul", [n.inputs[0], nxt], n.output, {"trans_b": False})
            nxt += 1
        nodes.append(n)
    return nodes, [0], [(8, 8)], [seg.nodes[-1].output]


def test_layer_norm_softmax_and_scalar_arithmetic_give_the_python_ops_bytes():
    b = zoo.GraphBuilder(seed=1)
    x = b.input("x", ["batch", 5, 12])
    o = b.node("ln", "LayerNormalization", [x, b.weight("w", [12]), b.bias("b", 12)], axis=-1, epsilon=1e-3)
    o = b.node("s", "Softmax", [o], axis=-1)
    o = b.node("t", "Mul", [o, b.const("t", np.array([7.0], np.float32))])
    b.node("g", "Sub", [b.const("g", np.array([1.5], np.float32)), o], outputs=["output"])
    proto = _model(b)
    rt = runtime.convert(hw.onnx.load(proto).eval(), input_shape=(5, 12))
    assert rt._whole is not None and [n.params.get("fn") for n in rt._whole.nodes if n.op == "scalar"] == \
        ["mul", "rsub"]
    x = np.random.default_rng(0).standard_normal((4, 5, 12)).astype(np.float32)
    assert rt.predict(x).tobytes() == _node_by_node(rt, x).tobytes()
    np.testing.assert_allclose(rt.predict(x), ReferenceEvaluator(proto).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_runs_natively_with_the_python_ops_bytes(approximate):
    net = hw.nn.Sequential(hw.nn.Linear(6, 16, rng=1), hw.nn.GELU(approximate=approximate),
                           hw.nn.Linear(16, 3, rng=2))
    rt = runtime.convert(net.eval(), input_shape=(6,))
    assert rt._whole is not None and "gelu" in _native_ops(rt)
    x = np.random.default_rng(1).standard_normal((7, 6)).astype(np.float32)
    assert rt.predict(x).tobytes() == _node_by_node(rt, x).tobytes()


@pytest.mark.parametrize("name", ["transformer", "transformer_decomposed_ln", "transformer_flat_input",
                                  "transformer_opset21"])
def test_zoo_transformers_are_one_native_call(name):
    kw = {"transformer": {}, "transformer_decomposed_ln": {"layer_norm": "decomposed"},
          "transformer_flat_input": {"flat_input": True}, "transformer_opset21": {"opset": 21}}[name]
    proto = zoo.transformer(**kw)
    shape = zoo.sample_shape(proto)
    g = hw.onnx.load(proto).eval()
    rt = runtime.convert(g, input_shape=shape)
    assert rt._whole is not None, _python_ops(rt)
    x = np.random.default_rng(0).uniform(0, 1, (6,) + shape).astype(np.float32)
    ref = _node_by_node(rt, x)
    np.testing.assert_allclose(rt.predict(x), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # and the float model in ONNX's reference, to int8 accuracy
    want = ReferenceEvaluator(proto).run(None, {g.inputs[0]: x})[0]
    assert np.abs(rt.predict(x) - want).max() < 0.1 * np.abs(want).max()


def test_ops_the_plan_cannot_take_stay_in_python_and_stay_right():
    b = zoo.GraphBuilder(seed=2)
    x = b.input("x", ["batch", 4, 6])
    o = b.node("a", "Softmax", [x], axis=1)  # not the last axis
    o = b.reduce_mean("m", o, [2], keepdims=1)  # the innermost axis: NumPy sums it pairwise
    o = b.node("t", "Transpose", [o], perm=[1, 0, 2])  # moves the batch axis
    o = b.node("r", "Transpose", [o], perm=[1, 0, 2], outputs=["output"])
    proto = _model(b)
    rt = runtime.convert(hw.onnx.load(proto).eval(), input_shape=(4, 6))
    assert _python_ops(rt) == ["Softmax", "ReduceMean", "Transpose", "Transpose"]
    x = np.random.default_rng(0).standard_normal((3, 4, 6)).astype(np.float32)
    np.testing.assert_allclose(rt.predict(x), ReferenceEvaluator(proto).run(None, {"x": x})[0], rtol=1e-6)


def test_a_matmul_of_two_activations_is_native_and_one_with_a_constant_is_a_linear():
    b = zoo.GraphBuilder(seed=2)
    x = b.input("x", ["batch", 3, 4, 5])
    o = b.node("a", "MatMul", [x, b.node("a", "Transpose", [x], perm=[0, 1, 3, 2])])
    o = b.node("a", "MatMul", [o, b.weight("w", [4, 2])], outputs=["output"])  # a constant B: not an activation
    proto = _model(b)
    rt = runtime.convert(hw.onnx.load(proto).eval(), input_shape=(3, 4, 5))
    assert "matmul" in _native_ops(rt)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    want = ReferenceEvaluator(proto).run(None, {"x": x})[0]
    np.testing.assert_allclose(rt.predict(x), want, rtol=0.05, atol=0.05 * np.abs(want).max())  # int8 Linear


@settings(deadline=None)
@given(data=st.data())
def test_transpose_is_numpy_transpose_for_any_permutation(data):
    rank = data.draw(st.integers(1, 4))
    dims = data.draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank))
    perm = data.draw(st.permutations(range(rank)))
    batch = data.draw(st.integers(1, 3))
    plan = _native._GraphPlan([("transpose", [0], 1, {"perm": list(perm)})], [0], [dims], [1])
    x = np.random.default_rng(0).standard_normal((batch, *dims)).astype(np.float32)
    (y,) = plan.forward([x], 1)
    assert np.array_equal(y, np.transpose(x, (0, *(p + 1 for p in perm))))


@settings(deadline=None)
@given(lead=st.integers(1, 3), m=st.integers(1, 9), k=st.integers(0, 17), n=st.integers(1, 9),
       trans_b=st.booleans(), threads=st.sampled_from([1, 2]))
def test_matmul_matches_numpy_within_float_rounding(lead, m, k, n, trans_b, threads):
    bd = [lead, n, k] if trans_b else [lead, k, n]
    plan = _native._GraphPlan([("matmul", [0, 1], 2, {"trans_b": trans_b})], [0, 1], [[lead, m, k], bd], [2])
    rng = np.random.default_rng(k)
    a = rng.standard_normal((2, lead, m, k)).astype(np.float32)
    b = rng.standard_normal((2, *bd)).astype(np.float32)
    (y,) = plan.forward([a, b], threads)
    want = a.astype(np.float64) @ (np.swapaxes(b, -1, -2) if trans_b else b).astype(np.float64)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * max(k, 1))


@pytest.mark.parametrize("node, dims, match", [
    (("matmul", [0, 1], 2, {"trans_b": False}), [[2, 8, 4], [2, 8, 4]], "cannot multiply"),
    (("matmul", [0], 1, {"trans_b": False}), [[8, 4]], "takes 2 input"),
    (("transpose", [0], 1, {"perm": [0, 0, 1]}), [[2, 3, 4]], "not a permutation"),
    (("transpose", [0], 1, {"perm": [0, 1]}), [[2, 3, 4]], "not a permutation"),
    (("layer_norm", [0], 1, {"d": 5, "weight": None, "bias": None, "eps": 1e-5}), [[2, 3, 4]], "normalised"),
    (("layer_norm", [0], 1, {"d": 4, "weight": np.ones(3, np.float32), "bias": None, "eps": 1e-5}), [[2, 4]],
     "weight"),
    (("layer_norm", [0], 1, {"d": 4, "weight": None, "bias": None, "eps": -1.0}), [[2, 4]], "eps"),
    (("mean", [0], 1, {"axis": 1, "keepdims": False}), [[2, 3]], "cannot average"),
    (("mean", [0], 1, {"axis": 4, "keepdims": False}), [[2, 3]], "cannot average"),
    (("softmax", [0], 1, {}), [[3, 0]], "softmax"),
    (("scalar", [0], 1, {"fn": "pow", "value": 2.0}), [[3]], "unknown scalar op"),
    (("gelu", [0], 1, {"approximate": "erf"}), [[3]], "approximate"),
])
def test_bad_attention_nodes_raise_value_errors(node, dims, match):
    with pytest.raises(ValueError, match=match):
        _native._GraphPlan([node], list(range(len(dims))), dims, [node[2]])
