"""Structured shrinking (hw.prune.shrink): the shrunk model is the original with the removed channels masked."""

import copy
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import hwreg_rs as hw
from hwreg_rs.nn.graph import Graph, Node
from hwreg_rs.nn.ops import Add, Concat, GlobalAvgPool2d, MatMul, Transpose

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


# ------------------------------------------------------------ helpers

def masked(model, plan):
    """The original model with every removed channel's column zeroed in the layers that read it."""
    m = copy.deepcopy(model)
    params = dict(m.named_parameters())
    for name, kept in plan.kept.items():
        if name.endswith(".weight") and len(kept) == 2 and kept[1] is not None:
            w = params[name].data
            gone = np.ones(w.shape[1], bool)
            gone[kept[1]] = False
            w[:, gone] = 0
    return m


def n_params(model):
    return sum(p.data.size for p in model.parameters())


def assert_same(a, b, x):
    ya, yb = a.eval()(x), b.eval()(x)
    assert ya.shape == yb.shape
    np.testing.assert_allclose(yb, ya, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(ya).max())))


def assert_shrinks_like_mask(model, x, **kw):
    before = model.state_dict()
    plan = hw.prune.shrink_plan(model, **kw)
    small = plan.apply()
    assert_same(masked(model, plan), small, x)
    after = model.state_dict()  # the original is untouched
    assert list(before) == list(after) and all(np.array_equal(before[k], after[k]) for k in before)
    return plan, small


def rand_x(shape, n=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n,) + tuple(shape)).astype(np.float32)


def randomize_bn(model, seed=0):
    """BatchNorm with non-trivial statistics and affine terms, so a wrong entry shows."""
    g = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, (hw.nn.BatchNorm1d, hw.nn.BatchNorm2d)):
            c = m.num_features
            m.weight.data[:] = g.uniform(0.5, 1.5, c)
            m.bias.data[:] = g.normal(0, 0.5, c)
            m.register_buffer("running_mean", g.normal(0, 0.5, c).astype(np.float32))
            m.register_buffer("running_var", g.uniform(0.5, 2.0, c).astype(np.float32))
    return model


def conv(cin, cout, k=3, **kw):
    return hw.nn.Conv2d(cin, cout, k, padding=k // 2, rng=kw.pop("rng", 0), **kw)


# ------------------------------------------------------------ chains

def test_mlp_counts_rounding_and_masking():
    net = hw.nn.mlp([8, 10, 6, 3], rng=0)
    plan, small = assert_shrinks_like_mask(net, rand_x((8,)), amount=0.25)
    # round(2.5) = 2 of 10, round(1.5) = 2 of 6 (halves to even); the output layer is a graph output
    assert [(g.layers, g.channels, g.prunable) for g in plan.groups] == [(("0",), 10, 10), (("2",), 6, 6),
                                                                       (("4",), 3, 0)]
    assert isinstance(small, hw.nn.Sequential)
    assert (small[0].out_features, small[2].in_features, small[2].out_features, small[4].in_features) == (8, 8, 4, 4)
    assert n_params(small) == 8 * 8 + 8 + 8 * 4 + 4 + 4 * 3 + 3
    # the l1-smallest rows went
    l1 = np.abs(net[0].weight.data).sum(1)
    assert set(plan.removed["0"].tolist()) == set(np.argsort(l1, kind="stable")[:2].tolist())


def test_zero_is_identity_and_one_keeps_a_channel():
    net = hw.nn.mlp([5, 7, 2], rng=1)
    same = hw.prune.shrink(net, 0.0)
    assert same is not net and same[0] is not net[0]
    x = rand_x((5,))
    assert np.array_equal(same(x), net(x))
    assert all(np.array_equal(a, b) for a, b in zip(same.state_dict().values(), net.state_dict().values()))
    one = hw.prune.shrink(net, 1.0)
    assert one[0].out_features == 1 and one[2].in_features == 1


def test_cnn_with_batchnorm_and_flatten():
    net = randomize_bn(hw.nn.small_cnn(channels=(6, 8), hidden=12, rng=0))
    plan, small = assert_shrinks_like_mask(net, rand_x((1, 8, 8)), amount=0.5, input_shape=(1, 8, 8))
    conv1, bn1, conv2, bn2, fc1 = small[0], small[1], small[3], small[4], small[8]
    assert (conv1.out_channels, bn1.num_features, conv2.in_channels, conv2.out_channels) == (3, 3, 3, 4)
    assert bn2.running_var.shape == (4,) and fc1.in_features == 4 * 16 and fc1.out_features == 6
    # Flatten: channel c of conv2 owns features c*16 .. c*16+15 of fc1
    keep2 = np.setdiff1d(np.arange(8), plan.removed["3"])
    cols = (keep2[:, None] * 16 + np.arange(16)).ravel()
    np.testing.assert_array_equal(plan.kept["8.weight"][1], cols)
    np.testing.assert_array_equal(small[1].running_mean, net[1].running_mean[plan.kept["1.running_mean"][0]])


def test_importance_bn_and_taylor_rank_differently():
    net = hw.nn.Sequential(hw.nn.Linear(4, 4, rng=0), hw.nn.BatchNorm1d(4), hw.nn.ReLU(), hw.nn.Linear(4, 2, rng=1))
    net[0].weight.data[:] = np.diag([4.0, 3.0, 2.0, 1.0]).astype(np.float32)
    net[1].weight.data[:] = [0.1, 5.0, 5.0, 5.0]
    assert hw.prune.shrink_plan(net, 0.25).removed["0"].tolist() == [3]  # l1: the smallest row
    assert hw.prune.shrink_plan(net, 0.25, importance="bn").removed["0"].tolist() == [0]  # smallest |gamma|
    grads = {n: np.ones_like(p.data) for n, p in net.named_parameters()}
    grads["0.weight"] = np.diag([0.0, 1.0, 1.0, 1.0]).astype(np.float32)  # |w * g| = 0, 3, 2, 1
    assert hw.prune.shrink_plan(net, 0.25, importance="taylor", grads=grads).removed["0"].tolist() == [0]
    assert hw.prune.shrink_plan(net, 0.5, importance="l2").removed["0"].tolist() == [2, 3]


def test_taylor_from_data_leaves_the_model_alone():
    X, y = hw.data.make_classification(64, n_features=6, n_classes=3, seed=0)
    net = hw.nn.mlp([6, 12, 3], batch_norm=True, rng=0).train()
    for p in net.parameters():
        p.grad[...] = 7.0
    state = net.state_dict()
    plan, small = assert_shrinks_like_mask(net, rand_x((6,)), amount=0.5, importance="taylor", data=(X, y))
    assert net.training and all(np.all(p.grad == 7.0) for p in net.parameters())
    assert all(np.array_equal(v, net.state_dict()[k]) for k, v in state.items())
    # the reference: |w * dL/dw| per row from the same batch through an eval copy
    ref = copy.deepcopy(net).eval()
    loss = hw.losses.get_loss("cross_entropy")
    loss.forward(ref(X.astype(np.float32)), y)
    ref.backward(loss.backward())
    score = np.abs(ref[0].weight.data.astype(np.float64) * ref[0].weight.grad).sum(1)
    assert set(plan.removed["0"].tolist()) == set(np.argsort(score, kind="stable")[:6].tolist())


def test_an_int_amount_is_a_count():
    net = hw.nn.mlp([8, 10, 6, 3], rng=0)
    plan = hw.prune.shrink_plan(net, 2)
    assert {k: len(v) for k, v in plan.removed.items()} == {"0": 2, "2": 2}
    plan = hw.prune.shrink_plan(net, 100, amount_per_layer={"2": 1})  # a count past the size keeps one
    assert {k: len(v) for k, v in plan.removed.items()} == {"0": 9, "2": 1}
    assert len(hw.prune.shrink_plan(net, 1.0).removed["0"]) == 9  # the fraction 1.0, not the count 1
    with pytest.raises(ValueError, match="non-negative"):
        hw.prune.shrink(net, -1)


def test_amount_per_layer():
    net = hw.nn.mlp([8, 10, 10, 3], rng=0)
    plan = hw.prune.shrink_plan(net, amount_per_layer={"2": 0.5})
    assert "0" not in plan.removed and len(plan.removed["2"]) == 5
    plan = hw.prune.shrink_plan(net, 0.1, amount_per_layer={"2": 0.5})
    assert len(plan.removed["0"]) == 1 and len(plan.removed["2"]) == 5


# ------------------------------------------------------------ graphs

def residual_block(shortcut="conv"):
    """conv1-bn-relu-conv2-bn (+ conv 1x1 - bn shortcut, or the stem's output itself) -> Add -> relu -> pool -> fc."""
    nodes = [Node("stem", conv(2, 6, rng=0), ("x",), ("s",)),
             Node("stem_bn", hw.nn.BatchNorm2d(6), ("s",), ("s1",)),
             Node("stem_relu", hw.nn.ReLU(), ("s1",), ("a",)),
             Node("conv1", conv(6, 5, rng=1), ("a",), ("h1",)),
             Node("bn1", hw.nn.BatchNorm2d(5), ("h1",), ("h2",)),
             Node("relu1", hw.nn.ReLU(), ("h2",), ("h3",)),
             Node("conv2", conv(5, 8 if shortcut == "conv" else 6, rng=2), ("h3",), ("h4",)),
             Node("bn2", hw.nn.BatchNorm2d(8 if shortcut == "conv" else 6), ("h4",), ("b",))]
    short = "a"
    if shortcut == "conv":
        nodes += [Node("down", conv(6, 8, k=1, rng=3), ("a",), ("d1",)),
                  Node("down_bn", hw.nn.BatchNorm2d(8), ("d1",), ("d",))]
        short = "d"
    c = 8 if shortcut == "conv" else 6
    nodes += [Node("add", Add(), ("b", short), ("r",)),
              Node("relu2", hw.nn.ReLU(), ("r",), ("r1",)),
              Node("pool", GlobalAvgPool2d(), ("r1",), ("p",)),
              Node("flat", hw.nn.Flatten(), ("p",), ("f",)),
              Node("fc", hw.nn.Linear(c, 3, rng=4), ("f",), ("y",))]
    return randomize_bn(Graph(nodes, ["x"], ["y"], input_shapes=[(2, 6, 6)]))


def test_residual_add_ties_its_summands():
    g = residual_block("conv")
    plan, small = assert_shrinks_like_mask(g, rand_x((2, 6, 6)), amount=0.5)
    groups = {grp.layers: grp for grp in plan.groups}
    assert ("conv2", "down") in groups and groups[("conv2", "down")].channels == 8
    np.testing.assert_array_equal(plan.removed["conv2"], plan.removed["down"])
    ops = {n.name: n.op for n in small.nodes}
    assert ops["conv2"].out_channels == ops["down"].out_channels == ops["bn2"].num_features == 4
    assert ops["fc"].in_features == 4 and ops["conv1"].out_channels == 3 and ops["stem"].out_channels == 3
    # the importance of a tied channel is summed over both convolutions
    l1 = (np.abs(g.nodes[6].op.weight.data).sum((1, 2, 3)) + np.abs(g.nodes[8].op.weight.data).sum((1, 2, 3)))
    assert set(plan.removed["conv2"].tolist()) == set(np.argsort(l1, kind="stable")[:4].tolist())


def test_identity_shortcut_ties_the_stem_and_the_block():
    g = residual_block("identity")
    plan, small = assert_shrinks_like_mask(g, rand_x((2, 6, 6)), amount=0.5)
    groups = {grp.layers: grp for grp in plan.groups}
    assert groups[("stem", "conv2")].channels == 6
    np.testing.assert_array_equal(plan.removed["stem"], plan.removed["conv2"])


def test_what_is_not_understood_is_left_alone():
    # a Linear whose output feeds a MatMul (as attention scores would) cannot shrink; the others can
    nodes = [Node("a", hw.nn.Linear(4, 6, rng=0), ("x",), ("h",)),
             Node("t", Transpose([0, 2, 1]), ("h",), ("ht",)),
             Node("mm", MatMul(), ("h", "ht"), ("s",)),
             Node("b", hw.nn.Linear(3, 6, rng=1), ("s",), ("u",)),
             Node("relu", hw.nn.ReLU(), ("u",), ("u1",)),
             Node("c", hw.nn.Linear(6, 2, rng=2), ("u1",), ("y",))]
    g = Graph(nodes, ["x"], ["y"], input_shapes=[(3, 4)])
    plan = hw.prune.shrink_plan(g, 0.5)
    groups = {grp.layers: grp for grp in plan.groups}
    assert groups[("a",)].prunable == 0 and "MatMul" in groups[("a",)].reason
    assert groups[("b",)].prunable == 6 and "a" not in plan.removed and len(plan.removed["b"]) == 3
    small = plan.apply()
    x = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)
    assert_same(masked(g, plan), small, x)
    assert small.nodes[0].op.weight.shape == (6, 4)
    with pytest.raises(ValueError, match="cannot be removed.*MatMul"):
        hw.prune.shrink(g, amount_per_layer={"a": 0.5})


def test_concat_offsets_channels():
    nodes = [Node("l", conv(3, 4, rng=0), ("x",), ("a",)),
             Node("r", conv(3, 6, rng=1), ("x",), ("b",)),
             Node("cat", Concat(1), ("a", "x", "b"), ("c",)),  # the input's channels sit in the middle
             Node("relu", hw.nn.ReLU(), ("c",), ("c1",)),
             Node("mix", conv(13, 5, k=1, rng=2), ("c1",), ("d",)),
             Node("pool", GlobalAvgPool2d(), ("d",), ("p",)),
             Node("flat", hw.nn.Flatten(), ("p",), ("f",)),
             Node("fc", hw.nn.Linear(5, 2, rng=3), ("f",), ("y",))]
    g = Graph(nodes, ["x"], ["y"], input_shapes=[(3, 5, 5)])
    plan, small = assert_shrinks_like_mask(g, rand_x((3, 5, 5)), amount=0.5)
    assert [grp.layers for grp in plan.groups if grp.prunable] == [("l",), ("r",), ("mix",)]
    kept_l = np.setdiff1d(np.arange(4), plan.removed["l"])
    kept_r = np.setdiff1d(np.arange(6), plan.removed["r"])
    np.testing.assert_array_equal(plan.kept["mix.weight"][1], np.concatenate([kept_l, [4, 5, 6], 7 + kept_r]))
    assert {n.name: n.op for n in small.nodes}["mix"].in_channels == 2 + 3 + 3


def test_depthwise_separable_block_shrinks_the_depthwise_too():
    net = randomize_bn(hw.nn.Sequential(
        hw.nn.Conv2d(3, 8, 1, rng=0), hw.nn.BatchNorm2d(8), hw.nn.ReLU6(),
        hw.nn.Conv2d(8, 8, 3, padding=1, groups=8, rng=1), hw.nn.BatchNorm2d(8), hw.nn.ReLU6(),
        hw.nn.Conv2d(8, 4, 1, rng=2), hw.nn.GlobalAvgPool2d(), hw.nn.Flatten(), hw.nn.Linear(4, 2, rng=3)))
    plan, small = assert_shrinks_like_mask(net, rand_x((3, 6, 6)), amount=0.5, input_shape=(3, 6, 6))
    dw = small[3]
    assert (dw.in_channels, dw.out_channels, dw.groups, dw.weight.shape) == (4, 4, 4, (4, 1, 3, 3))
    assert small[6].in_channels == 4 and small[4].num_features == 4
    # a depthwise filter is part of its channel's importance
    w0, w3 = net[0].weight.data, net[3].weight.data
    l1 = np.abs(w0).sum((1, 2, 3)) + np.abs(w3).sum((1, 2, 3))
    assert set(plan.removed["0"].tolist()) == set(np.argsort(l1, kind="stable")[:4].tolist())


def test_grouped_convolution_is_left_alone():
    net = hw.nn.Sequential(hw.nn.Conv2d(2, 4, 1, rng=0), hw.nn.ReLU(), hw.nn.Conv2d(4, 4, 3, groups=2, rng=1),
                           hw.nn.Flatten(), hw.nn.Linear(16, 2, rng=2))
    plan = hw.prune.shrink_plan(net, 0.5, input_shape=(2, 4, 4))
    assert [g.prunable for g in plan.groups] == [0, 0] and not plan.removed
    assert "grouped" in plan.groups[0].reason


@pytest.mark.parametrize("name", ["digits_resnet.dynamo", "digits_resnet.ts", "digits_mobilenet.dynamo",
                                  "digits_mobilenet.ts_nofold", "digits_cnn.ts", "digits_mlp.dynamo",
                                  "digits_transformer.ts"])
def test_onnx_fixtures_shrink_like_masks_and_run_smaller(name, tmp_path):
    g = hw.onnx.load(os.path.join(FIXTURES, f"{name}.onnx")).eval()
    shape = g.input_shapes[0]
    x = rand_x(shape, n=8)
    plan, small = assert_shrinks_like_mask(g, x, amount=0.5)
    assert isinstance(small, Graph) and n_params(small) < n_params(g)
    assert any(grp.prunable for grp in plan.groups)
    big_rt, small_rt = hw.runtime.convert(g, input_shape=shape), hw.runtime.convert(small, input_shape=shape)
    assert big_rt.save(tmp_path / "big.hwreg") > small_rt.save(tmp_path / "small.hwreg")
    assert small_rt.predict(x).shape == big_rt.predict(x).shape
    ref = small(x)
    assert np.abs(small_rt.predict(x) - ref).max() <= 0.1 * np.abs(ref).max()  # int8 of the shrunk graph
    ort = pytest.importorskip("onnxruntime")
    proto = hw.onnx.export(small)  # the float ONNX of the shrunk graph runs in ONNX Runtime
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {small.inputs[0]: x})[0], ref, rtol=1e-4,
                               atol=1e-5 * np.abs(ref).max())


def test_resnet_fixture_groups():
    g = hw.onnx.load(os.path.join(FIXTURES, "digits_resnet.dynamo.onnx"))
    groups = [(grp.layers, grp.channels) for grp in hw.prune.shrink_plan(g, 0.0).groups]
    # the stem and layer1's second conv feed the identity shortcut; layer2's conv2 and downsample are summed
    assert (("conv1", "layer1.0.conv2"), 8) in groups
    assert (("layer2.0.downsample.0", "layer2.0.conv2"), 16) in groups


def test_shrunk_model_trains_one_step():
    g = hw.onnx.load(os.path.join(FIXTURES, "digits_resnet.ts_nofold.onnx"))
    small = hw.prune.shrink(g, 0.5).train()
    X, y = rand_x(g.input_shapes[0], n=16), np.arange(16) % 10
    tr = hw.Trainer(small, epochs=1, batch_size=16, verbose=False).fit(X, y)
    assert tr.step_ == 1 and np.isfinite(tr.history_["loss"][0])
    assert all(np.any(p.grad != 0) for n, p in small.named_parameters() if n.endswith("weight"))


# ------------------------------------------------------------ properties

@given(st.lists(st.integers(1, 12), min_size=1, max_size=3), st.floats(0, 1), st.integers(0, 2**16))
def test_mlp_property(hidden, amount, seed):
    sizes = [5] + hidden + [3]
    net = hw.nn.mlp(sizes, rng=seed)
    plan, small = assert_shrinks_like_mask(net, rand_x((5,), seed=seed), amount=amount)
    kept = [h - min(round(amount * h), h - 1) for h in hidden]
    layers = [m for m in small if isinstance(m, hw.nn.Linear)]
    assert [m.out_features for m in layers[:-1]] == kept
    full = [5] + kept + [3]
    assert n_params(small) == sum(a * b + b for a, b in zip(full[:-1], full[1:]))


@given(st.integers(1, 6), st.integers(1, 6), st.integers(2, 5), st.floats(0, 1), st.integers(0, 2**16))
def test_cnn_property(c1, c2, side, amount, seed):
    net = randomize_bn(hw.nn.small_cnn(channels=(c1, c2), hidden=4, image_size=side * 2, rng=seed), seed)
    plan, small = assert_shrinks_like_mask(net, rand_x((1, 2 * side, 2 * side), seed=seed), amount=amount,
                                           input_shape=(1, 2 * side, 2 * side))
    k1, k2 = (c - min(round(amount * c), c - 1) for c in (c1, c2))
    assert (small[0].out_channels, small[3].out_channels, small[8].in_features) == (k1, k2, k2 * side * side)


BLOCKS = ["conv", "bn", "relu", "dw", "res_id", "res_conv", "concat", "pool", "gate"]


def random_graph(data):
    """A random CNN of the blocks above (residual sums, concatenations, depthwise convs, gates, pools)."""
    g = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    c, side = data.draw(st.integers(1, 4), label="in channels"), 4
    nodes, v, k = [], "x", 0

    def add(op, ins):
        nonlocal k
        k += 1
        out = f"v{k}"
        nodes.append(Node(f"n{k}", op, tuple(ins), (out,)))
        return out

    def width():
        return data.draw(st.integers(1, 5), label="width")

    v = add(conv(c, width() + 1, rng=g), [v])
    c = nodes[-1].op.out_channels
    for block in data.draw(st.lists(st.sampled_from(BLOCKS), max_size=6), label="blocks"):
        if block == "conv":
            v = add(conv(c, w := width(), rng=g), [v])
            c = w
        elif block == "bn":
            v = add(randomize_bn(hw.nn.Sequential(hw.nn.BatchNorm2d(c)), int(g.integers(99)))[0], [v])
        elif block == "relu":
            v = add(hw.nn.ReLU(), [v])
        elif block == "dw":
            v = add(hw.nn.Conv2d(c, c, 3, padding=1, groups=c, rng=g), [v])
        elif block == "res_id":
            w = width()
            h = add(hw.nn.ReLU(), [add(conv(c, w, rng=g), [v])])
            v = add(Add(), [v, add(conv(w, c, rng=g), [h])])
        elif block == "res_conv":
            w = width()
            a = add(conv(c, w, rng=g), [v])
            b = add(conv(c, w, k=1, rng=g), [v])
            v, c = add(Add(), [a, b]), w
        elif block == "concat":
            w = width()
            a = add(conv(c, w, rng=g), [v])
            v, c = add(Concat(1), [v, a]), c + w
        elif block == "pool" and side >= 2:
            v, side = add(hw.nn.MaxPool2d(2), [v]), side // 2
        elif block == "gate":
            s_ = add(hw.nn.Sigmoid(), [add(GlobalAvgPool2d(), [v])])
            v = add(hw.nn.ops.Mul(), [v, s_])
    if data.draw(st.booleans(), label="global pool"):
        v = add(GlobalAvgPool2d(), [v])
        feats = c
    else:
        feats = c * side * side
    v = add(hw.nn.Linear(feats, 3, rng=g), [add(hw.nn.Flatten(), [v])])
    return Graph(nodes, ["x"], [v], input_shapes=[(nodes[0].op.in_channels, 4, 4)])


@given(st.data(), st.floats(0, 1), st.sampled_from(["l1", "l2", "bn"]))
def test_random_graphs_shrink_like_masks(data, amount, importance):
    graph = random_graph(data)
    x = rand_x(graph.input_shapes[0], n=3)
    plan, small = assert_shrinks_like_mask(graph, x, amount=amount, importance=importance)
    if amount == 0:
        assert not plan.removed
    assert n_params(small) <= n_params(graph)
    for grp in plan.groups:  # at least one channel of every layer stays
        for layer in grp.layers:
            assert len(plan.removed.get(layer, [])) < {n.name: n.op for n in graph.nodes}[layer].weight.shape[0]


# ------------------------------------------------------------ arguments

def test_bad_arguments():
    net = hw.nn.mlp([4, 6, 6, 2], rng=0)
    with pytest.raises(ValueError, match="amount"):
        hw.prune.shrink(net)
    with pytest.raises(ValueError, match="fraction in"):
        hw.prune.shrink(net, 1.5)
    with pytest.raises(TypeError, match="amount"):
        hw.prune.shrink(net, True)
    with pytest.raises(TypeError, match="amount"):
        hw.prune.shrink(net, "half")
    with pytest.raises(ValueError, match="importance"):
        hw.prune.shrink(net, 0.5, importance="l3")
    with pytest.raises(ValueError, match="not Conv2d/Linear layers"):
        hw.prune.shrink(net, amount_per_layer={"1": 0.5})
    with pytest.raises(ValueError, match="taylor.*grads"):
        hw.prune.shrink(net, 0.5, importance="taylor")
    with pytest.raises(ValueError, match="no gradient for '0.weight'"):
        hw.prune.shrink(net, 0.5, importance="taylor", grads={})
    with pytest.raises(ValueError, match="has shape"):
        hw.prune.shrink(net, 0.5, importance="taylor", grads={n: np.zeros(3) for n, _ in net.named_parameters()})
    with pytest.raises(TypeError, match="Module"):
        hw.prune.shrink(np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="input_shape"):
        hw.prune.shrink(hw.nn.small_cnn(rng=0), 0.5)
    with pytest.raises(ValueError, match="remove names groups"):
        hw.prune.shrink_plan(net, remove={("nope",): 1})
    g = residual_block("conv")
    with pytest.raises(ValueError, match="share their channels"):
        hw.prune.shrink(g, amount_per_layer={"conv2": 0.5, "down": 0.25})
    assert hw.prune.shrink(g, amount_per_layer={"conv2": 0.5, "down": 0.5})  # agreeing is fine


def test_bn_importance_skips_groups_without_batchnorm():
    net = hw.nn.Sequential(hw.nn.Linear(4, 6, rng=0), hw.nn.ReLU(), hw.nn.Linear(6, 6, rng=1), hw.nn.BatchNorm1d(6),
                           hw.nn.ReLU(), hw.nn.Linear(6, 2, rng=2))
    plan = hw.prune.shrink_plan(net, 0.5, importance="bn")
    assert "0" not in plan.removed and len(plan.removed["2"]) == 3 and ("0",) in plan.skipped
    with pytest.raises(ValueError, match="no BatchNorm"):
        hw.prune.shrink(net, amount_per_layer={"0": 0.5}, importance="bn")


# ------------------------------------------------------------ training: replacing the model, gradual shrinking

@pytest.fixture
def blobs():
    return hw.data.make_classification(256, n_features=8, n_classes=3, seed=0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_replace_model_cuts_the_optimizer_state(blobs, optimizer):
    X, y = blobs
    tr = hw.Trainer(hw.nn.mlp([8, 12, 3], rng=0), optimizer=optimizer, momentum=0.9, lr=0.01, epochs=1,
                    verbose=False, scheduler="cosine").fit(X, y)
    old_model, opt = tr.model, tr.optimizer_
    old_state = {n: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in opt.state[p].items()}
                 for n, p in old_model.named_parameters()}
    plan = hw.prune.shrink_plan(old_model, 0.5)
    new = plan.apply()
    tr.replace_model(new, kept=plan.kept)
    assert tr.model is new and tr.optimizer_ is opt and tr.scheduler_.optimizer is opt
    assert [id(p) for p in opt.params] == [id(p) for p in new.parameters()]
    assert set(opt.state) == set(new.parameters())
    for n, p in new.named_parameters():
        st_new, st_old = opt.state[p], old_state[n]
        assert set(st_new) == set(st_old) and st_new
        for k, v in st_old.items():
            if isinstance(v, np.ndarray):
                want = hw.shrink.take_kept(v, plan.kept[n]) if n in plan.kept else v
                assert st_new[k].shape == p.data.shape
                np.testing.assert_array_equal(st_new[k], want)
            else:
                assert st_new[k] == v  # Adam's step count goes on
    tr.fit(X, y)  # training goes on with the new model
    assert tr.step_ == 16 and np.isfinite(tr.history_["loss"][-1])


def test_replace_model_drops_state_that_no_longer_fits_and_reattaches_constraints(blobs):
    X, y = blobs
    clip = hw.constraints.WeightClip(0.3)
    tr = hw.Trainer(hw.nn.mlp([8, 12, 3], rng=0), epochs=1, verbose=False, constraints=[clip]).fit(X, y)
    new = hw.nn.mlp([8, 6, 3], rng=1)
    old_bias_state = tr.optimizer_.state[tr.model[2].bias]["exp_avg"].copy()
    tr.replace_model(new)  # no kept: the state of the changed weights starts afresh
    assert all(tr.optimizer_.state[p] == {} for p in (new[0].weight, new[0].bias, new[2].weight))
    np.testing.assert_array_equal(tr.optimizer_.state[new[2].bias]["exp_avg"], old_bias_state)  # same shape
    assert clip.model_ is new and clip.params_[0][1] is new[0].weight
    tr.fit(X, y)
    clip.check()


def test_gradual_shrinking_in_the_loop(blobs):
    X, y = blobs
    net = hw.nn.mlp([8, 32, 16, 3], batch_norm=True, rng=0)
    cb = hw.train.GradualShrinking(0.5, end_step=20, frequency=5, importance="taylor")
    es = hw.train.EarlyStopping(monitor="loss", patience=50)
    tr = hw.Trainer(net, epochs=4, batch_size=32, lr=0.01, callbacks=[cb], early_stopping=es,
                    verbose=False, constraints=[hw.constraints.GradClipNorm(5.0)]).fit(X, y)
    assert net[0].out_features == 32  # the model given is not changed
    small = tr.model
    assert (small[0].out_features, small[1].num_features, small[3].in_features, small[3].out_features,
            small[4].num_features, small[6].in_features) == (16, 16, 16, 8, 8, 8)
    steps = [u[0] for u in cb.updates_]
    # the cubic schedule reaches round(0.5 n) at step 15 already (0.492 of 32 and of 16): 20 has nothing left to do
    assert steps == [5, 10, 15]
    params = [u[2] for u in cb.updates_]
    assert params == sorted(params, reverse=True) and params[-1] == n_params(small)
    assert [id(p) for p in tr.optimizer_.params] == [id(p) for p in small.parameters()]
    assert tr.history_["accuracy"][-1] > 0.7


def test_gradual_shrinking_arguments():
    with pytest.raises(ValueError, match="final_amount"):
        hw.train.GradualShrinking()
    with pytest.raises(ValueError, match="begin_step < end_step"):
        hw.train.GradualShrinking(0.5, end_step=3, begin_step=5)
    with pytest.raises(ValueError, match="importance"):
        hw.train.GradualShrinking(0.5, end_step=3, importance="magnitude")
    with pytest.raises(TypeError, match="schedule"):
        hw.train.GradualShrinking(schedule=lambda s: 0.5)


def test_a_layer_used_twice_is_left_alone():
    lin = hw.nn.Linear(4, 4, rng=0)
    nodes = [Node("a", lin, ("x",), ("h",)), Node("relu", hw.nn.ReLU(), ("h",), ("h1",)),
             Node("b", lin, ("h1",), ("h2",)), Node("c", hw.nn.Linear(4, 4, rng=1), ("h2",), ("h3",)),
             Node("d", hw.nn.Linear(4, 2, rng=2), ("h3",), ("y",))]
    g = Graph(nodes, ["x"], ["y"], input_shapes=[(4,)])
    plan, small = assert_shrinks_like_mask(g, rand_x((4,)), amount=0.5)
    assert list(plan.removed) == ["c"] and small.nodes[0].op is small.nodes[2].op
    assert small.nodes[0].op.weight.shape == (4, 4)


def test_replace_model_keeps_gradual_pruning_masks(blobs):
    X, y = blobs
    prune = hw.constraints.GradualPruning(0.5, end_step=2, frequency=1)
    tr = hw.Trainer(hw.nn.mlp([8, 12, 6, 3], rng=0), epochs=1, verbose=False, constraints=[prune]).fit(X, y)
    old = {n: m.copy() for n, m in prune.masks_.items()}
    plan = hw.prune.shrink_plan(tr.model, 0.5)
    tr.replace_model(plan.apply(), kept=plan.kept)
    for n, m in prune.masks_.items():
        want = hw.shrink.take_kept(old[n], plan.kept[n]) if n in plan.kept else old[n]
        np.testing.assert_array_equal(m, want)
    tr.fit(X, y)
    prune.check()
    assert all(np.all(p.data[~prune.masks_[n]] == 0) for n, p in tr.model.named_parameters() if n in prune.masks_)


# -- attention heads --------------------------------------------------------------

_ATTENTION = ["digits_transformer.ts.onnx", "digits_transformer.dynamo.onnx", "digits_transformer.ts_nofold.onnx",
              "digits_attention.ts.onnx", "digits_attention.dynamo.onnx"]


def _fixture(name):
    import os

    return hw.onnx.load(os.path.join(os.path.dirname(__file__), "fixtures", name))


@pytest.mark.parametrize("name", _ATTENTION)
def test_heads_are_found_with_their_projection_rows_and_output_columns(name):
    from hwreg_rs.shrink import attention_heads

    (g,) = attention_heads(_fixture(name))
    assert (g.heads, g.head_dim) == (2, 4)
    # q, k and v of each head: 3 x 4 projection rows (fused qkv or torch's in_proj), 4 output-projection columns.
    assert sum(len(per[0]) for per in g.out_rows.values()) == 12
    assert [list(c) for c in g.in_columns] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("name", _ATTENTION)
@pytest.mark.parametrize("dead", [0, 1])
def test_removing_a_zero_importance_head_changes_no_output(name, dead):
    from hwreg_rs.shrink import attention_heads, shrink_heads

    model = _fixture(name)
    (g,) = attention_heads(model)
    mods = dict(model.named_modules())
    for lin, per in g.out_rows.items():  # the head contributes nothing: its q, k, v and output weights are zero
        mods[lin].weight.data[per[dead]] = 0
        if mods[lin].bias is not None:
            mods[lin].bias.data[per[dead]] = 0
    mods[g.consumer].weight.data[:, g.in_columns[dead]] = 0
    x = np.random.default_rng(3).standard_normal((5,) + tuple(model.input_shapes[0])).astype(np.float32)
    for importance in ("l1", "l2"):
        small = shrink_heads(model, 1, importance=importance)
        (h,) = attention_heads(small)
        assert h.heads == 1 and dict(small.named_modules())[g.consumer].in_features == 4
        kept = 1 - dead  # the zero head went, the other stayed, its weights untouched
        for lin, per in g.out_rows.items():
            np.testing.assert_array_equal(dict(small.named_modules())[lin].weight.data, mods[lin].weight.data[per[kept]])
        np.testing.assert_allclose(small(x), model(x), rtol=1e-5, atol=1e-6)
    assert [h.heads for h in attention_heads(model)] == [2]  # the model passed in is not touched


def test_taylor_head_importance_and_bad_arguments():
    from hwreg_rs.shrink import shrink_heads

    model = _fixture("digits_attention.ts.onnx")
    split = hw.data.load_digits()
    small = shrink_heads(model, 0.5, importance="taylor", data=(split.X_test[:32], split.y_test[:32]))
    assert small(split.X_test[:4]).shape == (4, 10)
    with pytest.raises(ValueError, match="taylor"):
        shrink_heads(model, 1, importance="taylor")
    with pytest.raises(ValueError, match="remove names blocks"):
        shrink_heads(model, remove={"nope": 1})
    with pytest.raises(ValueError, match="amount"):
        shrink_heads(model)
    with pytest.raises(TypeError, match="amount"):
        shrink_heads(model, "half")
    with pytest.raises(ValueError, match="importance"):
        shrink_heads(model, 1, importance="bn")
    # At least one head of a block stays.
    from hwreg_rs.shrink import attention_heads

    assert [h.heads for h in attention_heads(shrink_heads(model, 5))] == [1]
