import pickle

import numpy as np
import pytest

import hwreg_rs as hw
from hwreg_rs import io, runtime


def _rng():
    return np.random.default_rng(0)


def _randomize_bn(net):
    g = _rng()
    for m in net.modules():
        if isinstance(m, (hw.nn.BatchNorm1d, hw.nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean[...] = g.normal(0, 0.5, n)
            m.running_var[...] = g.uniform(0.5, 2.0, n)
            m.weight.data[...] = g.uniform(0.5, 1.5, n)
            m.bias.data[...] = g.normal(0, 0.2, n)
    return net.eval()


def _rel_err(a, b):
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def test_mlp_with_batchnorm_matches_float_model():
    net = _randomize_bn(hw.nn.mlp([64, 128, 32, 10], batch_norm=True, rng=1))
    rt = runtime.convert(net, input_shape=(64,))
    assert [r["op"] for r in rt.summary()] == ["linear", "linear", "linear"]  # BN folded, ReLU fused
    assert [r["relu"] for r in rt.summary()] == [True, True, False]
    x = _rng().standard_normal((33, 64)).astype(np.float32)
    y = rt.predict(x)
    assert y.dtype == np.float32 and y.shape == (33, 10)
    assert _rel_err(y, net(x)) < 0.03


def test_cnn_matches_float_model():
    net = _randomize_bn(hw.nn.small_cnn(rng=2))
    rt = runtime.convert(net, input_shape=(1, 8, 8))
    x = _rng().standard_normal((5, 1, 8, 8)).astype(np.float32)
    assert _rel_err(rt.predict(x), net(x)) < 0.03


def _conv_nets():
    nn = hw.nn
    yield nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, rng=1), nn.ReLU(),  # strided, non-square, avg pool
                        nn.Conv2d(8, 6, (3, 2), stride=(2, 1), padding=(1, 0), rng=2), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(6 * 2 * 3, 5, rng=3)), (3, 8, 8)
    yield nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, rng=4), nn.MaxPool2d(2), nn.BatchNorm2d(4),  # unfused BN
                        nn.ReLU(), nn.Conv2d(4, 3, 1, rng=5)), (2, 6, 6)  # ends channels-last: back to NCHW
    yield nn.Sequential(nn.Conv2d(1, 5, 3, rng=6), nn.Flatten(), nn.ReLU(), nn.Linear(5 * 4 * 4, 7, rng=7),
                        nn.ReLU(), nn.Linear(7, 2, rng=8)), (1, 6, 6)  # ReLU between Flatten and Linear


@pytest.mark.parametrize("case", range(3))
def test_channels_last_plan_equals_the_layer_by_layer_nchw_ops(case):
    net, shape = list(_conv_nets())[case]
    net = _randomize_bn(net)
    rt = runtime.convert(net, input_shape=shape)
    x = _rng().standard_normal((4, *shape)).astype(np.float32)
    y = rt.predict(x)
    z = x
    for op in rt.ops:  # each op on its own takes and returns NCHW
        z = op.forward(z)
    # Same integer products in another order, same output steps: bit for bit.
    np.testing.assert_array_equal(y, z)
    assert _rel_err(y, net(x)) < 0.05


def test_channels_last_kernels_check_their_input():
    from hwreg_rs import _native
    x = np.zeros((1, 4, 4, 2), np.float32)
    with pytest.raises(ValueError, match="kind"):
        _native.pool2d_nhwc(x, (2, 2), (2, 2), (0, 0), "median")
    with pytest.raises(ValueError, match="padding"):
        _native.pool2d_nhwc(x, (2, 2), (2, 2), (2, 2), "max")
    with pytest.raises(ValueError, match="kernel"):
        _native.im2col_nhwc(x.astype(np.uint8), (5, 5), (1, 1), (0, 0), 0.0)
    with pytest.raises(ValueError, match="pad_value"):
        _native.im2col_nhwc(x.astype(np.uint8), (3, 3), (1, 1), (1, 1), 300.0)


def test_weights_on_qat_grid_stay_on_it():
    net = hw.nn.mlp([16, 8, 4], rng=3)
    lin = net[0]
    lin.weight_fake_quant = hw.constraints.WeightFakeQuant(4)
    rt = runtime.convert(net.eval(), input_shape=(16,), weight_bits=8)  # the int8 path; None picks int4 here
    q = rt.ops[0].layer.weight_q
    assert q.min() >= -8 and q.max() <= 7
    np.testing.assert_allclose(q * rt.ops[0].layer.weight_scale[:, None], lin.effective_weight(), rtol=1e-6, atol=1e-7)


def _pruned_mlp(amount=0.9):
    net = hw.nn.mlp([256, 512, 10], rng=4).eval()
    w = net[0].weight.data
    w *= hw.prune.block_mask(w, amount, block=(1, 8))
    return net


def test_pruned_layer_becomes_sparse_and_file_is_small(tmp_path):
    net = _pruned_mlp()
    rt = runtime.convert(net, input_shape=(256,), sparse="always", batch_size=32)
    assert rt.ops[0].kind == "sparse_linear"
    x = _rng().standard_normal((32, 256)).astype(np.float32)
    assert _rel_err(rt.predict(x), net(x)) < 0.03
    size = rt.save(tmp_path / "s.hwreg")
    float_bytes = 4 * sum(p.size for p in net.state_dict().values())
    assert size <= 0.10 * float_bytes + 4096, (size, float_bytes)
    back = runtime.load(tmp_path / "s.hwreg")
    np.testing.assert_array_equal(back.predict(x), rt.predict(x))


def test_save_load_pickle_round_trip(tmp_path):
    net = _randomize_bn(hw.nn.small_cnn(rng=5))
    rt = runtime.convert(net, input_shape=(1, 8, 8), meta={"classes": list(range(10))})
    x = _rng().standard_normal((3, 1, 8, 8)).astype(np.float32)
    size = rt.save(tmp_path / "m.hwreg")
    float_bytes = 4 * sum(p.size for k, p in net.state_dict().items() if "num_batches" not in k)
    assert size <= 0.27 * float_bytes + 4096
    back = runtime.load(tmp_path / "m.hwreg")
    assert back.meta == {"classes": list(range(10))}
    np.testing.assert_array_equal(back.predict(x), rt.predict(x))
    clone = pickle.loads(pickle.dumps(rt))
    np.testing.assert_array_equal(clone.predict(x), rt.predict(x))


def test_threads_setting_gives_same_answer():
    net = hw.nn.mlp([512, 512, 10], rng=6).eval()
    x = _rng().standard_normal((64, 512)).astype(np.float32)
    a = runtime.convert(net, input_shape=(512,), threads=1).predict(x)
    b = runtime.convert(net, input_shape=(512,), threads=2).predict(x)
    np.testing.assert_array_equal(a, b)


def test_refuses_foreign_and_corrupt_files(tmp_path):
    io.save(tmp_path / "other.hwreg", {"w": np.zeros(3, np.float32)}, {"format": "something-else"})
    with pytest.raises(io.FormatError, match="not a runtime model"):
        runtime.load(tmp_path / "other.hwreg")
    rt = runtime.convert(hw.nn.mlp([4, 3], rng=0), input_shape=(4,))
    arrays, meta = rt._to_arrays()
    del arrays["0.weight_q"]
    io.save(tmp_path / "broken.hwreg", arrays, meta)
    with pytest.raises(io.FormatError, match="'0.weight_q' is not in the file"):
        runtime.load(tmp_path / "broken.hwreg")
    meta["graph"]["nodes"][0]["spec"]["op"] = "teleport"
    io.save(tmp_path / "unknown.hwreg", arrays, meta)
    with pytest.raises(io.FormatError, match="unknown operation"):
        runtime.load(tmp_path / "unknown.hwreg")


def test_bad_inputs():
    rt = runtime.convert(hw.nn.mlp([4, 3], rng=0), input_shape=(4,))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        rt.predict(np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match="numeric"):
        rt.predict(np.array([["a"] * 4]))
    with pytest.raises(ValueError, match="sparse"):
        runtime.convert(hw.nn.mlp([4, 3], rng=0), input_shape=(4,), sparse="maybe")

    class Odd(hw.nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="cannot convert layer Odd"):
        runtime.convert(hw.nn.Sequential(hw.nn.Linear(4, 3, rng=0), Odd()), input_shape=(4,))
    with pytest.raises(ValueError):
        runtime.convert(hw.nn.mlp([4, 3], rng=0), input_shape=(5,))


def test_layer_work_feeds_the_cost_model():
    rt = runtime.convert(hw.nn.small_cnn(rng=0).eval(), input_shape=(1, 8, 8))
    work = rt.layer_work(batch=64)
    assert [w.kind for w in work][:2] == ["conv2d", "conv2d"]
    assert work[0].macs == 64 * 8 * 8 * 16 * 9
    est = hw.profiles.estimate(work, hw.profiles.preset("x86-avx512-vnni"))
    assert est.latency_s > 0 and len(est.layers) == len(rt.ops)
