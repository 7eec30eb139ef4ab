"""The residual Add of a model converted with calibration (``static_add``): an input that a static layer
also reads is taken on that layer's uint8 grid, so the native plan passes it as uint8 to both."""

import numpy as np
import pytest

import hwreg_rs as hw
from hwreg_rs import _planner, runtime, zoo
from test_plan import _node_by_node  # every node's own Python op, one after another

nn = hw.nn


def _residual_net():
    """conv-BN-ReLU -> x; ReLU(conv(x)) + x, ReLU -> r1 (an add no conv can take: the conv's own ReLU);
    r1 + conv1x1(r1) (no ReLU: fused into that conv) -> s2; conv, pool, Linear."""
    from hwreg_rs.nn.graph import Graph, Node
    from hwreg_rs.nn.ops import Add

    rng = np.random.default_rng(7)
    bn = nn.BatchNorm2d(4)
    bn.running_mean[...] = rng.standard_normal(4).astype(np.float32) * 0.1
    return Graph([
        Node("c0", nn.Conv2d(2, 4, 3, padding=1, rng=0), ("in",), ("c0",)),
        Node("b0", bn, ("c0",), ("b0",)),
        Node("r0", nn.ReLU(), ("b0",), ("x",)),
        Node("c1", nn.Conv2d(4, 4, 3, padding=1, rng=1), ("x",), ("c1",)),
        Node("h1", nn.ReLU(), ("c1",), ("h1",)),
        Node("s1", Add(), ("h1", "x"), ("s1",)),
        Node("r1", nn.ReLU(), ("s1",), ("r1",)),
        Node("c2", nn.Conv2d(4, 4, 1, rng=2), ("r1",), ("c2",)),
        Node("s2", Add(), ("r1", "c2"), ("s2",)),
        Node("c3", nn.Conv2d(4, 3, 3, padding=1, rng=3), ("s2",), ("c3",)),
        Node("p", nn.MaxPool2d(2), ("c3",), ("p",)),
        Node("f", nn.Flatten(), ("p",), ("f",)),
        Node("fc", nn.Linear(12, 5, rng=4), ("f",), ("out",)),
    ], inputs=["in"], outputs=["out"]).eval()


@pytest.fixture(scope="module")
def residual():
    net = _residual_net()
    calib = np.random.default_rng(0).standard_normal((32, 2, 4, 4)).astype(np.float32)
    return net, runtime.convert(net, input_shape=(2, 4, 4), calibration=calib)


def _adds(rt):
    return [n for n in rt.nodes if n.op.kind == "static_add"]


def _segments(rt):
    return [c for _, c, _ in rt._steps if isinstance(c, _planner.Segment)]


def test_an_add_input_a_static_layer_reads_takes_that_layers_grid(residual):
    _, rt = residual
    by_input = {n.inputs[0]: n.op.act for n in rt.nodes if isinstance(n.op, runtime._OnInt8Linear)}
    adds = _adds(rt)
    assert [a.op.acts for a in adds] == [(None, by_input["x"]), (by_input["r1"], None)]
    assert [a.inputs for a in adds] == [("h1", "x"), ("r1", "c2")]
    dyn = runtime.convert(_residual_net(), input_shape=(2, 4, 4))
    assert not _adds(dyn), "dynamic models keep their float Adds"


def test_the_static_add_is_dequantize_of_quantize_then_the_float_sum(residual):
    _, rt = residual
    op = _adds(rt)[0].op
    s, z = op.acts[1]
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((2, 4, 4, 4)).astype(np.float32) * 3 for _ in range(2))
    q = np.clip(np.rint(b / np.float32(s)) + np.float32(z), 0, 255).astype(np.int32)
    want = a + (q - np.int32(z)).astype(np.float32) * np.float32(s)
    got = op.forward(a, b)
    assert got.dtype == np.float32 and got.tobytes() == want.tobytes()
    with pytest.raises(ValueError, match="one shape"):
        op.forward(a, b[:, :2])


def test_the_native_plan_passes_the_add_inputs_as_uint8_with_the_bytes_of_the_ops(residual, each_isa):
    _, rt = residual
    nodes = [n for s in _segments(rt) for n in s.nodes]
    ops = [n.op for n in nodes]
    assert ops.count("static_add") == 1 and ops.count("conv_add") == 1
    fused = next(n for n in nodes if n.op == "conv_add")
    assert fused.params["res_act"] == tuple(float(v) for v in _adds(rt)[1].op.acts[0])
    # x (the first ReLU), r1 (the add's own ReLU) and s2 (read by the last conv) are uint8.
    assert sum(len(s.plan.uint8_values) for s in _segments(rt)) >= 3
    for batch in (1, 3):
        x = np.random.default_rng(batch).uniform(-2, 2, (batch, 2, 4, 4)).astype(np.float32)
        assert rt.predict(x).tobytes() == _node_by_node(rt, x).tobytes()


def test_the_file_keeps_the_add_grids(residual, tmp_path):
    _, rt = residual
    path = tmp_path / "static.hwreg"
    rt.save(path)
    back = runtime.load(path)
    assert [a.op.acts for a in _adds(back)] == [a.op.acts for a in _adds(rt)]
    x = np.random.default_rng(4).standard_normal((3, 2, 4, 4)).astype(np.float32)
    assert back.predict(x).tobytes() == rt.predict(x).tobytes()


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["b"].update(input_scale=0.0), "input_scale"),
    (lambda s: s["b"].pop("input_zero_point"), "input_zero_point"),
    (lambda s: s["b"].update(input_zero_point=300), "input_zero_point"),
    (lambda s: s.update(b=[1]), "JSON object"),
])
def test_bad_add_grids_in_a_file_are_format_errors(residual, edit, message):
    _, rt = residual
    arrays, meta = rt._to_arrays()
    edit(next(s for s in meta["graph"]["nodes"] if s["spec"]["op"] == "static_add")["spec"])
    with pytest.raises(hw.io.FormatError, match=message):
        runtime.RuntimeModel._from_arrays(arrays, meta)


def test_the_export_quantizes_the_add_inputs_and_ort_agrees(residual, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _, rt = residual
    path = tmp_path / "static.onnx"
    hw.onnx.export(rt, path)
    import onnx

    types = [n.op_type for n in onnx.load(path).graph.node]
    n_layers = sum(isinstance(n.op, runtime._OnInt8Linear) for n in rt.nodes)
    assert types.count("QuantizeLinear") == n_layers + 2 and types.count("DequantizeLinear") == 2
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).uniform(-2, 2, (4, 2, 4, 4)).astype(np.float32)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, rt.predict(x), rtol=1e-3, atol=1e-3 * np.abs(got).max())


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2"])
def test_zoo_residual_adds_read_their_residual_as_uint8(name):
    proto = zoo.digits_models()[name]
    shape = zoo.sample_shape(proto)
    calib = np.random.default_rng(0).uniform(0, 1, (32,) + shape).astype(np.float32)
    rt = runtime.convert(hw.onnx.load(proto).eval(), input_shape=shape, calibration=calib)
    assert any(n.op.kind == "static_add" for n in rt.nodes), "residual adds whose block input a conv also reads"
    for s in _segments(rt):  # fused into the conv before them, the residual on its grid, as uint8
        adds = [n for n in s.nodes if n.op == "static_add" or n.params.get("res_act") is not None]
        assert all(n.op == "conv_add" for n in adds)
        assert all(n.inputs[1] in s.plan.uint8_values for n in adds)
    assert any(n.params.get("res_act") is not None for s in _segments(rt) for n in s.nodes)


def _pn(op, inputs, output, **params):
    base = {"relu": False, "post": None, "act": (0.1, 3)} if op == "conv" else {"relu": False}
    return _planner.PlanNode(op, inputs, output, {**base, **params})


def test_fuse_residual_add_keeps_a_static_adds_residual_on_its_grid():
    g = (0.05, 7)
    nodes = [_pn("conv", [0], 1), _pn("conv", [1], 2), _pn("static_add", [2, 1], 3, acts=[None, g])]
    out = _planner.fuse_residual_add(nodes, keep={3})
    assert [(n.op, n.inputs, n.output) for n in out] == [("conv", [0], 1), ("conv_add", [1, 1], 3)]
    assert out[1].params["res_act"] == g
    # The conv's own output on a grid: its float result is not what the add reads.
    nodes = [_pn("conv", [0], 1), _pn("conv", [1], 2), _pn("static_add", [2, 1], 3, acts=[g, g])]
    assert [n.op for n in _planner.fuse_residual_add(nodes, keep=set())] == ["conv", "conv", "static_add"]
