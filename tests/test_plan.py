"""The runtime's native planner: segments, layouts, rewrites, per-call threads, buffer reuse."""

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import hwreg_rs as hw
from hwreg_rs import _native, _planner, runtime, zoo

nn = hw.nn


def _node_by_node(rt, x):
    """The reference: every node's own Python op, one after another (no planning, no fusion)."""
    env = dict(rt.constants)
    env[rt.inputs[0]] = x
    for n in rt.nodes:
        y = n.op.forward(*(env[v] for v in n.inputs))
        env.update(zip(n.outputs, y if len(n.outputs) > 1 else (y,)))
    return env[rt.outputs[0]]


def _segments(rt):
    return [c for _, c, _ in rt._steps if isinstance(c, _planner.Segment)]


def _ops(seg):
    return [n.op for n in seg.nodes]


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet", "mobilenetv2", "transformer"])
def test_zoo_models_predict_what_their_ops_compute_one_by_one(name):
    proto = zoo.digits_models()[name]
    shape = zoo.sample_shape(proto)
    rt = runtime.convert(hw.onnx.load(proto).eval(), input_shape=shape)
    assert _segments(rt), "some of the graph runs natively"
    for batch in (1, 4):
        x = np.random.default_rng(batch).standard_normal((batch,) + shape).astype(np.float32)
        for v in (x, np.abs(x)):  # differing and equal zero points per image
            if name == "transformer":  # its float32 MatMuls round unlike NumPy's BLAS (test_plan_attention.py)
                ref = _node_by_node(rt, v)
                np.testing.assert_allclose(rt.predict(v), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
            else:
                assert np.array_equal(rt.predict(v), _node_by_node(rt, v))


def test_a_cnn_is_one_segment_channels_last_with_the_flatten_folded_into_the_linear():
    rt = runtime.convert(nn.small_cnn(rng=0).eval(), input_shape=(1, 8, 8))
    (seg,) = _segments(rt)
    assert len(rt._steps) == 1
    assert _ops(seg) == ["conv", "conv", "maxpool", "reshape", "dense", "dense"]  # no layout change anywhere
    assert seg.nodes[0].params["nchw_in"] and not seg.nodes[1].params["nchw_in"]


def test_unknown_and_python_only_ops_run_between_segments():
    # LogSoftmax has no native kernel: two segments around it.
    net = nn.Sequential(nn.Linear(8, 6, rng=1), nn.ReLU(), nn.LogSoftmax(), nn.Linear(6, 3, rng=2))
    rt = runtime.convert(net.eval(), input_shape=(8,))
    kinds = [("segment" if isinstance(c, _planner.Segment) else c.__self__.kind) for _, c, _ in rt._steps]
    assert kinds == ["segment", "float", "segment"]
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    assert np.array_equal(rt.predict(x), _node_by_node(rt, x))


def test_an_op_class_the_planner_does_not_know_runs_in_python():
    class Twice(runtime._Op):
        kind = "twice"

        def forward(self, x):
            return x * 2

    ops = [runtime._Dense(hw.Int8Linear.from_float(np.eye(4, dtype=np.float32))), Twice(),
           runtime._ReLU()]
    rt = runtime.RuntimeModel(ops, (4,))
    assert [type(c).__name__ for _, c, _ in rt._steps] == ["Segment", "method", "Segment"]
    x = np.array([[1.0, -2.0, 3.0, -4.0]], np.float32)
    assert np.array_equal(rt.predict(x), _node_by_node(rt, x))


def test_residual_add_relu_and_activations_are_fused():
    from hwreg_rs.nn.graph import Graph, Node

    g = Graph([Node("c1", nn.Conv2d(2, 4, 3, padding=1, rng=1), ("x",), ("a",)),
               Node("r1", nn.ReLU(), ("a",), ("r",)),
               Node("c2", nn.Conv2d(4, 4, 3, padding=1, rng=2), ("r",), ("b",)),
               Node("add", nn.ops.Add(), ("b", "r"), ("s",)),
               Node("r2", nn.ReLU(), ("s",), ("t",)),
               Node("c3", nn.Conv2d(4, 4, 1, rng=3), ("t",), ("c",)),
               Node("r6", nn.ops.ReLU6(), ("c",), ("u",)),
               Node("hs", nn.ops.HardSwish(), ("u",), ("h",)),
               Node("pool", nn.MaxPool2d(2), ("h",), ("y",))], inputs=["x"], outputs=["y"],
              input_shapes=[(2, 6, 6)])
    rt = runtime.convert(g.eval(), input_shape=(2, 6, 6))
    (seg,) = _segments(rt)
    assert _ops(seg) == ["conv", "conv", "add", "conv", "unary", "maxpool", "to_nchw"]
    assert seg.nodes[2].params["relu"]  # the ReLU after the Add
    assert seg.nodes[3].params["post"] == ("clip", 0.0, 6.0)  # ReLU6 into the 1x1 conv
    assert seg.nodes[4].params["fn"][0] == "hardswish"  # the conv already has a post step
    xs = np.random.default_rng(3).standard_normal((3, 2, 6, 6)).astype(np.float32)
    assert np.array_equal(rt.predict(xs), _node_by_node(rt, xs))


def _plan_nodes():
    P = _planner.PlanNode
    dense = dict(packed=None, scale=None, bias=None, relu=False, post=None)
    return [P("dense", [0], 1, dict(dense)), P("unary", [1], 2, {"fn": ("relu", None, None)}),
            P("add", [2, 0], 3, {"relu": False}), P("unary", [3], 4, {"fn": ("relu", None, None)})]


def test_fuse_activations_alone():
    nodes = _planner.fuse_activations(_plan_nodes(), keep=set())
    assert [n.op for n in nodes] == ["dense", "add", "unary"]
    assert nodes[0].params["post"] == ("relu", None, None) and nodes[0].output == 2
    # A value the segment must hand out keeps its node.
    assert [n.op for n in _planner.fuse_activations(_plan_nodes(), keep={1})] == ["dense", "unary", "add", "unary"]


def test_fuse_add_relu_alone():
    nodes = _planner.fuse_add_relu(_plan_nodes(), keep=set())
    assert [n.op for n in nodes] == ["dense", "unary", "add"]
    assert nodes[2].params["relu"] and nodes[2].output == 4
    two_readers = _plan_nodes() + [_planner.PlanNode("unary", [3], 5, {"fn": ("relu", None, None)})]
    assert len(_planner.fuse_add_relu(two_readers, keep=set())) == 5


def test_thread_counts_travel_with_each_call_and_never_change_the_process_setting():
    proto = zoo.digits_models()["resnet"]
    shape = zoo.sample_shape(proto)
    g = hw.onnx.load(proto).eval()
    before = hw.num_threads()
    models = {k: runtime.convert(g, input_shape=shape, threads=k) for k in (1, 2, 3)}
    x = np.random.default_rng(0).standard_normal((4,) + shape).astype(np.float32)
    want = models[1].predict(x)
    seen, errors = [], []

    def work(k):
        try:
            for _ in range(20):
                seen.append(np.array_equal(models[k].predict(x), want))
                seen.append(hw.num_threads() == before)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in (1, 2, 3, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(seen) and len(seen) == 200
    assert hw.num_threads() == before


def test_no_buffer_is_allocated_per_predict_after_the_first_of_a_batch_size():
    rt = runtime.convert(hw.onnx.load(zoo.digits_models()["mobilenetv2"]).eval(), input_shape=(1, 8, 8))
    (seg, *_) = _segments(rt)
    x = np.zeros((8, 1, 8, 8), np.float32)
    rt.predict(x)
    n = seg.plan.allocations
    for _ in range(5):
        rt.predict(x)
        rt.predict(x[:3])
    assert seg.plan.allocations == n
    rt.predict(np.zeros((9, 1, 8, 8), np.float32))  # a larger batch grows the buffers once
    assert seg.plan.allocations > n
    assert seg.plan.buffers < len(seg.nodes)  # values share buffers by lifetime


def test_bad_inputs_are_errors_and_the_model_still_runs():
    rt = runtime.convert(nn.small_cnn(rng=0).eval(), input_shape=(1, 8, 8))
    x = np.ones((2, 1, 8, 8), np.float32)
    x[1, 0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        rt.predict(x)
    assert rt.predict(np.ones((0, 1, 8, 8), np.float32)).shape == (0, 10)
    assert np.array_equal(rt.predict(x[:1]), _node_by_node(rt, x[:1]))


@given(st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_random_batches_of_a_conv_net_match_the_ops_one_by_one(batch, seed):
    rt = _CONV_RT
    x = np.random.default_rng(seed).standard_normal((batch, 3, 8, 8)).astype(np.float32) * 3
    assert np.array_equal(rt.predict(x), _node_by_node(rt, x))


_CONV_RT = runtime.convert(
    nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, rng=1), nn.BatchNorm2d(8), nn.ReLU6(),
                  nn.Conv2d(8, 8, 3, padding=1, groups=8, rng=2), nn.ReLU(), nn.AvgPool2d(2),
                  nn.Flatten(), nn.Linear(8 * 4 * 4, 5, rng=3)).eval(), input_shape=(3, 8, 8))


@given(st.integers(1, 70), st.integers(1, 70), st.booleans(), st.integers(0, 2**31 - 1))
def test_the_native_global_average_pool_gives_numpys_mean_bytes(h, w, channels_last, seed):
    x = (np.random.default_rng(seed).standard_normal((2, 3, h, w)) * 5).astype(np.float32)
    src = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if channels_last else x
    plan = hw._native._GraphPlan([("global_avgpool", [0], 1, {"channels_last": channels_last})], [0],
                                 [list(src.shape[1:])], [1])
    assert plan.forward([src], 1)[0].tobytes() == x.mean(axis=(2, 3), keepdims=True).tobytes()


def test_a_resnet_runs_as_one_native_call():
    rt = runtime.convert(hw.onnx.load(zoo.digits_models()["resnet"]).eval(), input_shape=(1, 8, 8))
    assert rt._whole is not None and "global_avgpool" in _ops(rt._whole)
    assert "to_nchw" not in _ops(rt._whole)  # the pool reads the channels-last tensor


def test_a_segment_times_each_graph_node_inside_its_native_call():
    rt = runtime.convert(nn.small_cnn(rng=0).eval(), input_shape=(1, 8, 8))
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    y, per = rt._whole.timed(x, threads=1)
    assert np.array_equal(y, rt.predict(x))
    # Every graph node that ran natively has its entry (the fused ReLUs count with their layers).
    assert set(per) == {n.name for n in rt.nodes}
    assert all(t >= 0 for t in per.values()) and sum(per.values()) > 0


def test_values_whose_leading_axis_is_not_the_batch_stay_in_python():
    from hwreg_rs.nn.graph import Graph, Node

    g = Graph([Node("fc1", nn.Linear(8, 8, rng=1), ("x",), ("h",)),
               Node("rows", nn.ops.Reshape([-1, 4]), ("h",), ("r",)),  # (N, 8) -> (2N, 4)
               Node("fc2", nn.Linear(4, 3, rng=2), ("r",), ("y",))], inputs=["x"], outputs=["y"],
              input_shapes=[(8,)])
    rt = runtime.convert(g.eval(), input_shape=(8,))
    assert [type(c).__name__ for _, c, _ in rt._steps] == ["Segment", "method", "method"]
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 8)).astype(np.float32)
        assert np.array_equal(rt.predict(x), _node_by_node(rt, x))


def test_a_bad_thread_count_is_refused_naming_it():
    with pytest.raises(ValueError, match="threads"):
        runtime.convert(nn.mlp([4, 2], rng=0), input_shape=(4,), threads=0)
    rt = runtime.convert(nn.mlp([4, 2], rng=0), input_shape=(4,), threads=2)
    with pytest.raises(TypeError, match="threads"):
        rt.threads = "2"
    with pytest.raises(ValueError, match="threads"):
        rt.threads = 1 << 40
    assert rt.threads == 2


@pytest.mark.parametrize("group", [None, 32])
def test_int4_layers_run_in_the_native_plan_as_their_ops_compute(group):
    net = nn.Sequential(nn.Linear(70, 33, rng=1), nn.ReLU6(), nn.Linear(33, 16, rng=2), nn.ReLU(),
                        nn.Linear(16, 5, rng=3))
    rt = runtime.convert(net.eval(), input_shape=(70,), weight_bits=4, int4_group_size=group)
    assert [op.kind for op in rt.ops].count("int4_linear") == 3
    (seg,) = _segments(rt)
    assert len(rt._steps) == 1  # the whole model is one native call
    assert _ops(seg) == ["int4_dense", "int4_dense", "int4_dense"]  # the activations fused into the layers
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 70)).astype(np.float32)
        assert np.array_equal(rt.predict(x), _node_by_node(rt, x))
        rt.threads = 2
        assert np.array_equal(rt.predict(x), _node_by_node(rt, x))
        rt.threads = None
    n = seg.plan.allocations
    for _ in range(3):
        rt.predict(x)
    assert seg.plan.allocations == n
    with pytest.raises(ValueError, match="finite"):
        rt.predict(np.full((1, 70), np.nan, np.float32))


def test_sparse_layers_run_in_the_native_plan_as_their_ops_compute():
    net = nn.Sequential(nn.Linear(16, 24, rng=1), nn.ReLU(), nn.Linear(24, 8, rng=2), nn.HardSwish(),
                        nn.Linear(8, 3, rng=3))
    for p in net.parameters():  # prune: three of every four weights
        if p.data.ndim == 2:
            p.data[...] *= (np.arange(p.data.size).reshape(p.data.shape) % 4 == 0)
    rt = runtime.convert(net.eval(), input_shape=(16,), sparse="always")
    assert [op.kind for op in rt.ops].count("sparse_linear") >= 2
    (seg,) = _segments(rt)
    assert len(rt._steps) == 1 and "sparse_dense" in _ops(seg)
    for batch in (1, 6):
        x = np.random.default_rng(batch).standard_normal((batch, 16)).astype(np.float32)
        assert np.array_equal(rt.predict(x), _node_by_node(rt, x))


def test_predict_runs_a_ready_array_in_one_native_call_and_checks_the_rest_as_before():
    rt = runtime.convert(nn.mlp([12, 9, 4], rng=0).eval(), input_shape=(12,))
    (seg,) = _segments(rt)
    x = np.random.default_rng(0).standard_normal((3, 12)).astype(np.float32)
    want = _node_by_node(rt, x)
    assert np.array_equal(seg.plan.forward_ready(x), want) and np.array_equal(rt.predict(x), want)
    raw = np.zeros(x.nbytes + 1, np.uint8)
    unaligned = np.frombuffer(raw.data, np.float32, count=x.size, offset=1).reshape(x.shape)
    unaligned[...] = x
    wide = np.zeros((3, 24), np.float32)
    wide[:, ::2] = x
    for v in (x.astype(np.float64), np.asfortranarray(x), unaligned, wide[:, ::2], x.tolist()):
        assert seg.plan.forward_ready(v) is None  # declined: predict converts it first
        assert np.array_equal(rt.predict(v), want)
    for bad in (x[:, :11], x[0], np.float32(1.0)):
        assert seg.plan.forward_ready(bad) is None
        with pytest.raises(ValueError, match="shape"):
            rt.predict(bad)
    with pytest.raises(TypeError, match="numeric"):
        rt.predict(np.array([["a"] * 12]))
    with pytest.raises(ValueError, match="finite"):
        rt.predict(np.full((1, 12), np.inf, np.float32))


def test_predict_of_a_one_plan_model_is_native_follows_threads_and_frees_the_model():
    import copy
    import gc
    import pickle
    import weakref

    rt = runtime.convert(nn.mlp([12, 9, 4], rng=0).eval(), input_shape=(12,))
    assert isinstance(rt._fast, _native._ReadyPredict)  # predict is the native method: no Python frame
    x = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)
    want = _node_by_node(rt, x)
    assert np.array_equal(rt.predict(x), want) and np.array_equal(rt(x), want)
    assert np.array_equal(rt.predict(x.astype(np.float64)), want)  # not ready: the checked path
    with pytest.raises(ValueError, match="takes 1 input"):
        rt.predict(x, x)
    for threads in (2, 1, None):
        rt.threads = threads
        assert np.array_equal(rt.predict(x), want)
    with pytest.raises(ValueError, match="threads"):
        rt.threads = 0
    for other in (copy.deepcopy(rt), pickle.loads(pickle.dumps(rt))):
        assert other._fast is not rt._fast
        assert np.array_equal(other.predict(x), want) and np.array_equal(other.predict(x.tolist()), want)
    method = pickle.loads(pickle.dumps(rt.predict))  # as Dask ships it: the model travels along
    assert np.array_equal(method(x), want) and np.array_equal(method(x.tolist()), want)
    gone = weakref.ref(rt)
    del rt, method
    gc.collect()
    assert gone() is None  # the model <-> native method cycle is one the GC collects
    plan = _native._GraphPlan([("unary", [0], 1, {"fn": ("relu", None, None)})], [0], [[3]], [1])
    relu = _native._ReadyPredict(plan, lambda x, *more: ("checked", len(more)))
    assert relu.predict(np.zeros((1, 3), np.float64), 1) == ("checked", 1)
    assert np.array_equal(relu.predict(np.array([[-1.0, 0.0, 2.0]], np.float32)), [[0.0, 0.0, 2.0]])
