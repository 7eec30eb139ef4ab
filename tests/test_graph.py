"""hw.nn.Graph (forward, fan-out gradients, structure checks), the graph passes, runtime graphs,
the version-2 file (and version-1 files), and the convert / export commands."""

import json

import numpy as np
import pytest

import hwreg_rs as hw
from hwreg_rs import cli, io, runtime
from hwreg_rs.nn import Graph, Node, ops

from hwreg_rs import zoo as F


def _x(model, batch):
    return next(iter(F.input_for(model, batch).values()))


def _residual(rng=0):
    """y = relu(x + fc2(relu(fc1(x)))) * x : x fans out to three readers."""
    return Graph([Node("fc1", hw.nn.Linear(4, 6, rng=rng), ("x",), ("h",)),
                  Node("relu1", hw.nn.ReLU(), ("h",), ("r",)),
                  Node("fc2", hw.nn.Linear(6, 4, rng=rng + 1), ("r",), ("z",)),
                  Node("add", ops.Add(), ("x", "z"), ("s",)),
                  Node("tanh", ops.Tanh(), ("s",), ("t",)),
                  Node("mul", ops.Mul(), ("t", "x"), ("y",))], inputs=["x"], outputs=["y"])


def test_graph_backward_sums_fan_out_gradients():
    g = _residual().astype(np.float64)
    x = np.random.default_rng(0).standard_normal((3, 4))
    gy = np.random.default_rng(1).standard_normal((3, 4))
    g(x)
    gx = g.backward(gy)
    eps = 1e-6
    num = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        num[i] = ((g(xp) * gy).sum() - (g(xm) * gy).sum()) / (2 * eps)
    np.testing.assert_allclose(gx, num, rtol=1e-6, atol=1e-8)
    # Parameter gradients too.
    g(x)
    g.backward(gy)
    w = g.fc1.weight if hasattr(g, "fc1") else dict(g.named_modules())["fc1"].weight
    analytic = w.grad.copy()
    num_w = np.zeros_like(w.data)
    for i in np.ndindex(w.data.shape):
        old = w.data[i]
        w.data[i] = old + eps
        fp = (g(x) * gy).sum()
        w.data[i] = old - eps
        fm = (g(x) * gy).sum()
        w.data[i] = old
        num_w[i] = (fp - fm) / (2 * eps)
    np.testing.assert_allclose(analytic, num_w, rtol=1e-6, atol=1e-8)


def test_graph_structure_is_checked():
    lin = hw.nn.Linear(2, 2, rng=0)
    with pytest.raises(ValueError, match="reads value 'nope'"):
        Graph([Node("a", lin, ("nope",), ("y",))], inputs=["x"], outputs=["y"])
    with pytest.raises(ValueError, match="written twice"):
        Graph([Node("a", lin, ("x",), ("y",)), Node("b", hw.nn.ReLU(), ("x",), ("y",))], inputs=["x"], outputs=["y"])
    with pytest.raises(ValueError, match="two nodes are named"):
        Graph([Node("a", lin, ("x",), ("y",)), Node("a", hw.nn.ReLU(), ("y",), ("z",))], inputs=["x"], outputs=["z"])
    with pytest.raises(ValueError, match="output 'q'"):
        Graph([Node("a", lin, ("x",), ("y",))], inputs=["x"], outputs=["q"])
    with pytest.raises(TypeError, match="Module"):
        Node("a", object(), ("x",), ("y",))
    with pytest.raises(ValueError, match="cycle"):
        from hwreg_rs.nn.graph import topological_order
        topological_order(["a", "b"], {"a": ["b"], "b": ["a"]})


def test_sequential_is_a_chain_graph_sharing_modules():
    net = hw.nn.Sequential(hw.nn.Linear(3, 4, rng=0), hw.nn.Sequential(hw.nn.ReLU(), hw.nn.Linear(4, 2, rng=1)))
    g = Graph.from_module(net)
    assert [n.name for n in g.nodes] == ["0", "1.0", "1.1"]
    assert list(g.state_dict()) == list(net.state_dict())
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(g(x), net(x))
    assert g.infer_shapes((5, 3))[g.outputs[0]] == (5, 2)
    assert g.nodes[0].op is net[0]


def test_training_constraints_work_on_a_graph():
    X, y = hw.data.make_classification(200, n_features=4, n_classes=4, seed=0)
    g = _residual()
    cons = [hw.constraints.WeightClip(0.3), hw.constraints.GradualPruning(0.5, end_step=20, frequency=5)]
    hw.Trainer(g, constraints=cons, epochs=4, lr=0.01, seed=0, verbose=False).fit(X.astype(np.float32), y)
    for name in ("fc1", "fc2"):
        w = dict(g.named_modules())[name].weight.data
        assert np.abs(w).max() <= 0.3 + 1e-7
        assert abs((w == 0).mean() - 0.5) < 0.05


def test_fusion_passes_on_the_transformer_fixture():
    g = hw.onnx.load(F.transformer(layer_norm="decomposed"))
    kinds = [n.op.op_type for n in g.nodes]
    assert "LayerNorm" in kinds and "Gelu" in kinds
    assert not {"Erf", "Pow", "Sqrt", "ReduceMean"} & set(kinds[:-2])


def _models():
    return {"mlp": F.mlp(), "resnet": F.resnet(), "mobilenetv2": F.mobilenetv2(), "transformer": F.transformer(),
            "concat": F.concat_branches()}


@pytest.mark.parametrize("name", ["mlp", "resnet", "mobilenetv2", "transformer", "concat"])
def test_runtime_graph_matches_float_and_round_trips_the_file(name, tmp_path):
    m = _models()[name]
    g = hw.onnx.load(m)
    x = _x(m, 5)
    rt = runtime.convert(g, input_shape=x.shape[1:])
    y, yr = g(x), rt.predict(x)
    assert np.abs(yr - y).max() <= 0.05 * np.abs(y).max()
    rt.save(tmp_path / "m.hwreg")
    back = runtime.load(tmp_path / "m.hwreg")
    np.testing.assert_array_equal(back.predict(x), yr)
    assert [n.name for n in back.nodes] == [n.name for n in rt.nodes]
    # Pickling goes through the same arrays.
    import pickle
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(rt)).predict(x), yr)


def test_depthwise_conv_runs_in_exact_integer_arithmetic():
    conv = hw.nn.Conv2d(4, 8, 3, padding=1, groups=4, rng=0).eval()
    rt = runtime.convert(conv, input_shape=(4, 6, 6))
    op = rt.ops[0]
    assert op.kind == "group_conv2d"
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)
    # Reference: the same quantized image and weights, summed in int64 image by image.
    q8, scale, zp = runtime._quantize_images(x)  # the kernels' one activation quantizer, per image
    q = q8.astype(np.int64) - zp.reshape(-1, 1, 1, 1)
    qp = np.pad(q, ((0, 0), (0, 0), (1, 1), (1, 1)))
    wq = op.layer.weight_q.reshape(8, 1, 3, 3).astype(np.int64)
    acc = np.zeros((2, 8, 6, 6), np.int64)
    for o in range(8):
        c = o // 2
        for i in range(3):
            for j in range(3):
                acc[:, o] += qp[:, c, i:i + 6, j:j + 6] * wq[o, 0, i, j]
    ref = acc * (scale[:, None, None, None] * op.layer.weight_scale[None, :, None, None]) + conv.bias.data[None, :, None, None]
    np.testing.assert_allclose(rt.predict(x), ref, rtol=1e-6, atol=1e-6)


def test_version_1_files_still_load(tmp_path):
    net = hw.nn.mlp([6, 5, 3], rng=0).eval()
    rt = runtime.convert(net, input_shape=(6,))
    # Version 1 was a chain of ops with arrays named "<position>.<param>".
    arrays = {f"{i}.{k}": np.asarray(v) for i, op in enumerate(rt.ops) for k, v in op.arrays().items()}
    v1 = {"format": runtime.FORMAT, "format_version": 1, "input_shape": [6], "ops": [op.spec() for op in rt.ops],
          "meta": {}}
    io.save(tmp_path / "v1.hwreg", arrays, v1)
    back = runtime.load(tmp_path / "v1.hwreg")
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_array_equal(back.predict(x), rt.predict(x))


def test_unknown_layer_is_refused():
    class Odd(hw.nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="Odd"):
        runtime.convert(hw.nn.Sequential(hw.nn.Linear(2, 2, rng=0), Odd()), input_shape=(2,))


def test_convert_and_export_commands(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime as ort

    m = F.resnet()
    onnx.save(m, tmp_path / "resnet.onnx")
    assert cli.main(["convert", str(tmp_path / "resnet.onnx"), "-o", str(tmp_path / "r.hwreg"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ops"]["conv2d"] >= 3
    assert cli.main(["export", str(tmp_path / "r.hwreg"), "-o", str(tmp_path / "r_int8.onnx")]) == 0
    rt = runtime.load(tmp_path / "r.hwreg")
    x = _x(m, 16)
    sess = ort.InferenceSession(str(tmp_path / "r_int8.onnx"), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    yr = rt.predict(x)
    assert (y.argmax(1) == yr.argmax(1)).mean() >= 0.99
    assert np.abs(y - yr).max() <= 1e-4 * np.abs(yr).max()


def test_token_id_inputs_stay_integer_through_convert_file_and_export(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto as T, helper as h, numpy_helper as nh

    rng = np.random.default_rng(0)
    table = rng.standard_normal((20, 8)).astype(np.float32)
    w = rng.standard_normal((3, 8)).astype(np.float32)
    graph = h.make_graph(
        [h.make_node("Gather", ["emb.weight", "ids"], ["e"]), h.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0),
         h.make_node("Gemm", ["m", "fc.weight"], ["y"], transB=1)], "g",
        [h.make_tensor_value_info("ids", T.INT64, ["batch", 5])], [h.make_tensor_value_info("y", T.FLOAT, ["batch", 3])],
        [nh.from_array(table, "emb.weight"), nh.from_array(w, "fc.weight")])
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    g = hw.onnx.load(m)
    assert g.input_dtypes == ["int64"] and list(g.state_dict()) == ["emb.weight", "fc.weight"]
    ids = rng.integers(0, 20, (4, 5))
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    np.testing.assert_allclose(g(ids), ref, rtol=1e-6, atol=1e-6)
    rt = runtime.convert(g, input_shape=(5,))
    y = rt.predict(ids)
    assert np.abs(y - ref).max() <= 0.05 * np.abs(ref).max()
    with pytest.raises(TypeError, match="integer ids"):
        rt.predict(ids.astype(np.float32))
    rt.save(tmp_path / "e.hwreg")
    np.testing.assert_array_equal(runtime.load(tmp_path / "e.hwreg").predict(ids), y)
    sess = ort.InferenceSession(hw.onnx.export(rt).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"ids": ids})[0], y, rtol=1e-5, atol=1e-6)


def test_batchnorm_after_a_linear_on_3d_input_is_not_folded():
    # BatchNorm1d normalises dim 1 (here the 5 tokens), not the Linear's output features.
    net = hw.nn.Sequential(hw.nn.Linear(4, 6, rng=0), hw.nn.BatchNorm1d(5)).eval()
    bn = net[1]
    bn.running_mean[...] = np.arange(5, dtype=np.float32)
    bn.running_var[...] = np.arange(1, 6, dtype=np.float32)
    rt = runtime.convert(net, input_shape=(5, 4))
    x = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)
    assert [op.kind for op in rt.ops] == ["linear", "affine"]
    assert np.abs(rt.predict(x) - net(x)).max() <= 0.05 * np.abs(net(x)).max()


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet"])
def test_planned_graph_is_bit_identical_to_running_the_nodes_one_by_one(name):
    # predict keeps convolutions, depthwise convolutions and the element-wise ops between them
    # channels-last; each op on its own takes and returns NCHW. The numbers must not change.
    m = _models()[name]
    rt = runtime.convert(hw.onnx.load(m), input_shape=F.sample_shape(m))
    x = _x(m, 3)
    env = {rt.inputs[0]: x}
    for node, args in rt.trace(x):
        env.update(zip(node.outputs, (node.op.forward(*args),)))
    np.testing.assert_array_equal(rt.predict(x), env[rt.outputs[0]])


def test_sparse_layers_export_as_their_dense_int8_equivalent():
    ort = pytest.importorskip("onnxruntime")
    net = hw.nn.mlp([16, 32, 4], rng=0).eval()
    w = net[0].weight.data
    w[hw.prune.block_mask(w, 0.9, block=(1, 8)) == 0] = 0
    rt = runtime.convert(net, input_shape=(16,), sparse="always")
    assert rt.ops[0].kind == "sparse_linear"
    proto = hw.onnx.export(rt)
    assert {n.op_type for n in proto.graph.node} >= {"MatMulInteger"}
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    y, yr = sess.run(None, {"input": x})[0], rt.predict(x)
    assert (y.argmax(1) == yr.argmax(1)).mean() >= 0.99
    # The sparse and the dense int8 kernels share one activation quantizer: the same numbers.
    assert np.abs(y - yr).max() <= 1e-5 * np.abs(yr).max()


def test_convert_takes_the_contracts_calibration_keyword():
    net = hw.nn.mlp([4, 3], rng=0).eval()
    assert runtime.convert(net, input_shape=(4,), calibration=None).predict(np.ones((1, 4), np.float32)).shape == (1, 3)
    static = runtime.convert(net, input_shape=(4,), calibration=np.ones((8, 4), np.float32))  # tests/test_static_quant.py
    assert static.ops[0].act is not None


def test_a_mean_over_the_spatial_axes_becomes_a_global_pool_with_the_same_bytes():
    # torch.export's adaptive_avg_pool2d(x, 1): ReduceMean(axes=[-1, -2], keepdims=1), then a Reshape.
    from hwreg_rs.nn import passes

    def graph(axes, keepdims=True):
        return Graph([Node("conv", hw.nn.Conv2d(3, 8, 3, padding=1, rng=0), ("x",), ("h",)),
                      Node("mean", ops.ReduceMean(axes, keepdims=keepdims), ("h",), ("m",)),
                      Node("flat", ops.Reshape([-1, 8 if keepdims else 8 * 5]), ("m",), ("f",)),
                      Node("fc", hw.nn.Linear(8 if keepdims else 40, 4, rng=1), ("f",), ("y",))],
                     inputs=["x"], outputs=["y"], input_shapes=[(3, 5, 6)]).eval()

    x = np.random.default_rng(0).standard_normal((3, 3, 5, 6)).astype(np.float32)
    for axes in ([-1, -2], [2, 3], [3, -2]):
        g = graph(axes)
        new = passes.spatial_mean_to_global_pool(g)
        assert [type(n.op).__name__ for n in new.nodes] == ["Conv2d", "GlobalAvgPool2d", "Reshape", "Linear"]
        np.testing.assert_array_equal(new(x), g(x))
        # The import runs it, and the runtime then plans the pool natively like an exported GlobalAveragePool.
        rt = runtime.convert(new, input_shape=(3, 5, 6), calibration=x)
        np.testing.assert_array_equal(rt.predict(x), runtime.convert(g, input_shape=(3, 5, 6), calibration=x).predict(x))
    # Not both spatial axes, the axes dropped, a 3-D value, or no input shapes: unchanged.
    for g in (graph([-1]), graph([1, 2, 3]), graph([-1], keepdims=False)):
        assert passes.spatial_mean_to_global_pool(g) is g
    flat = Graph([Node("mean", ops.ReduceMean([-1]), ("x",), ("y",))], inputs=["x"], outputs=["y"],
                 input_shapes=[(4, 6)])
    assert passes.spatial_mean_to_global_pool(flat) is flat
    g = graph([-1, -2])
    g.input_shapes = None
    assert passes.spatial_mean_to_global_pool(g) is g
