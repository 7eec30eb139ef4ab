"""hw.int4: packed 4-bit weights, exact group sums on every SIMD path, float output, bad input."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import hwreg_rs as hw
from hwreg_rs.int4 import Int4Linear, QuantizedInt4, pack_nibbles, quantize_weight, unpack_nibbles

GROUPS = [None, 32, 64, 128]


def random_layer(rng, n, k, group, symmetric, bias=True, relu=False):
    ng = 1 if group is None else -(-k // group)
    codes = rng.integers(0, 16, (n, k), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.1, (n, ng)).astype(np.float32)
    zps = None if symmetric else rng.integers(0, 16, (n, ng), dtype=np.uint8)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    return Int4Linear(QuantizedInt4(pack_nibbles(codes), scales, zps, k, group), b, relu=relu), codes


def per_input(a, group, k):
    return np.repeat(a, k if group is None else group, axis=1)[:, :k]


def int_weight_ref(codes, zps, group):
    n, k = codes.shape
    if zps is None:
        return codes.astype(np.int64) - 8
    return codes.astype(np.int64) - per_input(zps.astype(np.int64), group, k)


def group_sums_ref(xq, w, group):
    """D[m, n, g] in int64, by NumPy."""
    k = w.shape[1]
    g = k if group is None else group
    ng = -(-k // g)
    out = np.zeros((xq.shape[0], w.shape[0], ng), np.int64)
    for j in range(ng):
        out[:, :, j] = xq[:, j * g:(j + 1) * g].astype(np.int64) @ w[:, j * g:(j + 1) * g].T
    return out


def quantize_rows_ref(x):
    """The row quantizer's rule (quant/rows.rs) in float32 NumPy."""
    lo = np.minimum(x.min(axis=1), 0).astype(np.float32)
    hi = np.maximum(x.max(axis=1), 0).astype(np.float32)
    scale = ((hi - lo) / np.float32(255)).astype(np.float32)
    scale[~(scale > 0) | ~np.isfinite(scale)] = 1
    zp = np.clip(np.rint(-lo / scale), 0, 255).astype(np.float32)
    inv = (np.float32(1) / scale).astype(np.float32)
    q = np.clip(np.rint(x * inv[:, None]) + zp[:, None], 0, 255).astype(np.uint8)
    return q, scale, zp.astype(np.int64)


def linear_ref(layer, codes, x):
    """The float formulas of rust/kernels/src/int4/mod.rs, in float32 NumPy."""
    wq = layer.weight
    w = int_weight_ref(codes, wq.zero_points, wq.group_size)
    xq, xs, xz = quantize_rows_ref(x)
    d = group_sums_ref(xq, w, wq.group_size)
    t = group_sums_ref(np.ones((1, w.shape[1]), np.uint8), w, wq.group_size)[0]  # T[n, g]
    bias = np.zeros(w.shape[0], np.float32) if layer.bias is None else layer.bias
    if wq.group_size is None:
        acc = (d[:, :, 0] - xz[:, None] * t[None, :, 0]).astype(np.float32)
        y = (acc * xs[:, None]) * wq.scales[None, :, 0] + bias
    else:
        f = np.zeros(d.shape[:2], np.float32)
        c = np.zeros(w.shape[0], np.float64)
        for g in range(d.shape[2]):
            f = f + (d[:, :, g] - 128 * t[None, :, g]).astype(np.float32) * wq.scales[None, :, g]
            c = c + wq.scales[:, g].astype(np.float64) * t[:, g]
        y = ((f + (128 - xz[:, None]).astype(np.float32) * c.astype(np.float32)[None, :]) * xs[:, None]) + bias
    return np.maximum(y, 0) if layer.relu else y


# The SIMD path is the same for every example of one test.
isa_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
shapes = st.tuples(st.integers(1, 6), st.integers(1, 40), st.integers(1, 300), st.sampled_from(GROUPS),
                   st.booleans(), st.integers(0, 2**32 - 1))


@isa_ok
@given(shapes)
def test_group_sums_are_exact_on_every_path(each_isa, shape):
    m, n, k, group, symmetric, seed = shape
    rng = np.random.default_rng(seed)
    layer, codes = random_layer(rng, n, k, group, symmetric)
    xq = rng.integers(0, 256, (m, k), dtype=np.uint8)
    want = group_sums_ref(xq, int_weight_ref(codes, layer.weight.zero_points, group), group)
    got = layer.group_sums(xq)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("k", [1, 7, 100, 1000])
def test_extremes_are_exact(each_isa, group, k):
    # x_q 0 and 255 against w = -8 (codes 0), w = 7 (codes 15) and w = 15 (codes 15, zero point 0).
    n = 17
    ng = 1 if group is None else -(-k // group)
    for code, zps in [(0, None), (15, None), (15, np.zeros((n, ng), np.uint8))]:
        codes = np.full((n, k), code, np.uint8)
        layer = Int4Linear(QuantizedInt4(pack_nibbles(codes), np.ones((n, ng), np.float32), zps, k, group))
        xq = np.concatenate([np.full((3, k), 255, np.uint8), np.zeros((2, k), np.uint8)])
        want = group_sums_ref(xq, int_weight_ref(codes, zps, group), group)
        np.testing.assert_array_equal(layer.group_sums(xq), want)


@isa_ok
@given(shapes, st.booleans())
def test_forward_follows_the_formula(each_isa, shape, relu):
    m, n, k, group, symmetric, seed = shape
    rng = np.random.default_rng(seed)
    layer, codes = random_layer(rng, n, k, group, symmetric, relu=relu)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = layer(x)
    want = linear_ref(layer, codes, x)
    assert y.dtype == np.float32 and y.shape == (m, n)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max() + 1))
    # And it approximates the float product with the dequantized weight, within the rows' rounding.
    wd = layer.dequantized_weight()
    exact = x @ wd.T + layer.bias
    exact = np.maximum(exact, 0) if relu else exact
    _, xs, _ = quantize_rows_ref(x)
    bound = 0.5 * xs[:, None] * np.abs(wd).sum(axis=1)[None, :] * 1.01 + 1e-4
    assert np.all(np.abs(y - exact) <= bound)


def test_paths_agree_bit_for_bit():
    rng = np.random.default_rng(3)
    outs = []
    before = hw.active_isa()
    try:
        for isa in hw.supported_isas():
            hw._native._set_isa(isa)
            for group in GROUPS:
                for m in (1, 3, 16):
                    layer, _ = random_layer(np.random.default_rng(5), 37, 300, group, group != 64)
                    outs.append((isa, group, m, layer(np.random.default_rng(m).standard_normal((m, 300)))))
    finally:
        hw._native._set_isa(before)
    ref = {(g, m): y for isa, g, m, y in outs if isa == "generic"}
    for isa, g, m, y in outs:
        np.testing.assert_array_equal(y, ref[(g, m)], err_msg=f"{isa} group={g} m={m}")
    assert rng is not None


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_quantize_weight_matches_numpy(group, symmetric):
    rng = np.random.default_rng(0)
    n, k = 9, 200
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[2] = 0  # an all-zero row
    q = quantize_weight(w, group_size=group, symmetric=symmetric)
    g = k if group is None else group
    ng = -(-k // g)
    assert q.packed.shape == (n, k // 2) and q.packed.dtype == np.uint8
    assert q.scales.shape == (n, ng) and q.in_features == k and q.group_size == group
    codes = unpack_nibbles(q.packed, k)
    eps = np.finfo(np.float32).eps
    for j in range(ng):
        blk = w[:, j * g:(j + 1) * g]
        lo, hi = np.minimum(blk.min(axis=1), 0), np.maximum(blk.max(axis=1), 0)
        if symmetric:
            scale = np.maximum((np.maximum(-lo, hi) / np.float32(7.5)).astype(np.float32), eps)
            want = np.clip(np.rint(blk / scale[:, None]), -8, 7) + 8
            assert q.zero_points is None
        else:
            scale = np.maximum(((hi - lo) / np.float32(15)).astype(np.float32), eps)
            zp = np.clip(-np.rint(lo / scale), 0, 15)
            want = np.clip(np.rint(blk / scale[:, None]) + zp[:, None], 0, 15)
            np.testing.assert_array_equal(q.zero_points[:, j], zp)
        np.testing.assert_allclose(q.scales[:, j], scale, rtol=1e-7)
        np.testing.assert_array_equal(codes[:, j * g:(j + 1) * g], want)
    # Dequantized, each weight is within half a step of the original.
    layer = Int4Linear(q)
    step = per_input(q.scales, group, k)
    assert np.all(np.abs(layer.dequantized_weight() - w) <= 0.5 * step * 1.0001 + (np.abs(w) > 7 * step) * step)


def test_nibble_round_trip_and_sizes():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 16, (5, 33), dtype=np.uint8)
    p = pack_nibbles(codes)
    assert p.shape == (5, 17)
    np.testing.assert_array_equal(unpack_nibbles(p, 33), codes)
    assert p[0, 0] == codes[0, 0] | (codes[0, 1] << 4)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    l4 = Int4Linear.from_float(w, group_size=128)
    l8 = hw.Int8Linear.from_float(w)
    assert l4.weight.packed.nbytes * 2 == l8.weight_q.nbytes
    assert l4.nbytes == 64 * 128 + 64 * 2 * 4


def test_from_int_keeps_the_grid_and_leading_dims():
    rng = np.random.default_rng(2)
    q = rng.integers(-8, 8, (6, 40)).astype(np.int8)
    s = rng.uniform(0.01, 0.1, (6, 1)).astype(np.float32)
    layer = Int4Linear.from_int(q, s, relu=True)
    np.testing.assert_array_equal(layer.int_weight(), q)
    np.testing.assert_array_equal(layer.dequantized_weight(), q.astype(np.float32) * s)
    x = rng.standard_normal((2, 3, 40)).astype(np.float32)
    y = layer(x)
    assert y.shape == (2, 3, 6) and np.all(y >= 0)
    np.testing.assert_array_equal(y.reshape(6, 6), layer(x.reshape(6, 40)))
    assert layer(np.zeros((0, 40), np.float32)).shape == (0, 6)


def test_bad_input_raises():
    w = np.ones((4, 64), np.float32)
    for g in (16, 0, 256, 33):
        with pytest.raises(ValueError, match="group_size"):
            quantize_weight(w, group_size=g)
    for g in ("32", 32.0, True):
        with pytest.raises(TypeError, match="group_size"):
            quantize_weight(w, group_size=g)
    with pytest.raises(TypeError, match="symmetric"):
        quantize_weight(w, symmetric=1)
    with pytest.raises(ValueError, match="finite"):
        quantize_weight(np.full((2, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        quantize_weight(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="input column"):
        quantize_weight(np.ones((3, 0), np.float32))
    with pytest.raises(ValueError, match="codes"):
        pack_nibbles(np.array([[16]]))
    with pytest.raises(ValueError, match=r"q must lie in \[-8, 7\]"):
        Int4Linear.from_int(np.array([[8]]), np.ones((1, 1), np.float32))
    layer = Int4Linear.from_float(w, np.zeros(4, np.float32), group_size=32)
    with pytest.raises(ValueError, match="x must have shape"):
        layer(np.ones((2, 63), np.float32))
    with pytest.raises(TypeError, match="x"):
        layer(np.ones((2, 64), np.complex64))
    with pytest.raises(ValueError, match="not finite"):
        layer(np.full((1, 64), np.inf, np.float32))
    with pytest.raises(TypeError, match="x_q"):
        layer.group_sums(np.ones((1, 64), np.int8))
    with pytest.raises(ValueError, match="bias"):
        Int4Linear.from_float(w, np.zeros(3, np.float32))
    q = quantize_weight(w, group_size=32)
    with pytest.raises(ValueError, match="scales"):
        Int4Linear(q._replace(scales=np.ones((4, 3), np.float32)))
    with pytest.raises(ValueError, match="scales"):
        Int4Linear(q._replace(scales=np.zeros((4, 2), np.float32)))
    with pytest.raises(ValueError, match="zero_points"):
        Int4Linear(q._replace(zero_points=np.full((4, 2), 16, np.uint8)))
    with pytest.raises(ValueError, match="packed"):
        Int4Linear(q._replace(packed=np.zeros((4, 31), np.uint8)))
    with pytest.raises(TypeError, match="QuantizedInt4"):
        Int4Linear((q.packed, q.scales))
    # Absurd sizes: an error, never an abort.
    with pytest.raises(ValueError, match="overflow"):
        Int4Linear(QuantizedInt4(np.zeros((0, 2**39), np.uint8), np.ones((0, 1), np.float32), None, 2**40, None))
    with pytest.raises(ValueError, match="in_features"):
        Int4Linear(q._replace(in_features=0))


# ---------------------------------------------------------------------------
# The runtime op: conversion, the file, hostile files
# ---------------------------------------------------------------------------

def _qat4_mlp():
    net = hw.nn.mlp([64, 32, 10], rng=0)
    qat = hw.constraints.QAT(weight_bits=4)
    qat.attach(net)
    net(np.random.default_rng(0).random((16, 64), dtype=np.float32))
    return net.eval()


def test_qat4_linear_converts_to_int4_on_its_grid(tmp_path):
    net = _qat4_mlp()
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    rt4 = hw.runtime.convert(net, input_shape=(64,))
    rt8 = hw.runtime.convert(net, input_shape=(64,), weight_bits=8)
    assert [op.kind for op in rt4.ops] == ["int4_linear", "int4_linear"]
    assert [op.kind for op in rt8.ops] == ["linear", "linear"]
    # Same grid, same exact sums, same output step: the same bits as the int8 layers.
    np.testing.assert_array_equal(rt4.predict(x), rt8.predict(x))
    for op4, m in zip(rt4.ops, [net[0], net[2]]):
        np.testing.assert_allclose(op4.layer.dequantized_weight(), m.effective_weight(), rtol=1e-6, atol=1e-7)
    p4, p8 = tmp_path / "m4.hwreg", tmp_path / "m8.hwreg"
    rt4.save(p4)
    rt8.save(p8)
    back = hw.runtime.load(p4)
    np.testing.assert_array_equal(back.predict(x), rt4.predict(x))
    w_bytes4 = sum(op.layer.weight.packed.nbytes for op in back.ops)
    w_bytes8 = sum(op.layer.weight_q.nbytes for op in rt8.ops)
    assert w_bytes4 * 2 == w_bytes8 and p4.stat().st_size < p8.stat().st_size


@pytest.mark.parametrize("group", [None, 32])
def test_convert_weight_bits_4_for_every_linear(tmp_path, group):
    net = hw.nn.mlp([70, 33, 5], rng=1).eval()
    x = np.random.default_rng(2).standard_normal((3, 70)).astype(np.float32)
    rt = hw.runtime.convert(net, input_shape=(70,), weight_bits=4, int4_group_size=group)
    assert [op.kind for op in rt.ops] == ["int4_linear", "int4_linear"]
    assert rt.ops[0].layer.group_size == group
    ref = net(x)
    assert np.abs(rt.predict(x) - ref).max() < 0.2 * np.abs(ref).max()
    rt.save(tmp_path / "m.hwreg")
    np.testing.assert_array_equal(hw.runtime.load(tmp_path / "m.hwreg").predict(x), rt.predict(x))
    with pytest.raises(ValueError, match="weight_bits"):
        hw.runtime.convert(net, input_shape=(70,), weight_bits=3)
    with pytest.raises(ValueError, match="int4_group_size"):
        hw.runtime.convert(net, input_shape=(70,), weight_bits=4, int4_group_size=48)


def test_hostile_int4_files_are_refused(tmp_path):
    import copy
    from hwreg_rs import io

    rt = hw.runtime.convert(hw.nn.mlp([40, 8], rng=0).eval(), input_shape=(40,), weight_bits=4,
                            int4_group_size=32)

    def refused(edit, match):
        arrays, meta = rt._to_arrays()
        arrays, meta = dict(arrays), copy.deepcopy(meta)
        edit(arrays, meta["graph"]["nodes"][0])
        path = tmp_path / "hostile.hwreg"
        io.save(path, arrays, meta)
        with pytest.raises(io.FormatError, match=match):
            hw.runtime.load(path)

    refused(lambda a, n: n["spec"].update(out=2**20, **{"in": 2**20}), "exceeds the bound")
    refused(lambda a, n: n["spec"].update(out=9), "packed")
    refused(lambda a, n: n["spec"].update(group_size=48), "group_size")
    refused(lambda a, n: n["spec"].pop("group_size"), "group_size")
    refused(lambda a, n: n["spec"].update(group_size=None), "scales")
    refused(lambda a, n: a.update({"0.scales": -a["0.scales"]}), "positive")
    refused(lambda a, n: a.update({"0.packed": a["0.packed"].astype(np.int8)}), "dtype")
    refused(lambda a, n: (a.update({"0.zero_points": np.full((8, 2), 16, np.uint8)}),
                          n["arrays"].update(zero_points="0.zero_points")), "zero_points")


@pytest.mark.parametrize("group", [None, 32, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_onnx_export_as_matmulnbits_runs_in_onnxruntime(group, symmetric):
    ort = pytest.importorskip("onnxruntime")
    net = hw.nn.mlp([70, 33, 5], rng=1).eval()
    rt = hw.runtime.convert(net, input_shape=(70,), weight_bits=4, int4_group_size=group)
    if not symmetric:  # the same layers with zero points
        for op in rt.ops:
            w = quantize_weight(op.layer.dequantized_weight(), group_size=group, symmetric=False)
            op.layer = Int4Linear(w, op.layer.bias, relu=op.layer.relu)
        rt = hw.runtime.RuntimeModel(rt.ops, (70,))  # a model plans its layers when it is built
    proto = hw.onnx.export(rt)
    nodes = [n.op_type for n in proto.graph.node]
    assert nodes.count("MatMulNBits") == 2 and "MatMulInteger" not in nodes
    packed = [i for i in proto.graph.initializer if i.name.endswith("weight_packed")]
    assert packed[0].data_type == 2 and np.prod(packed[0].dims) <= 33 * (70 + 127) // 2  # uint8, 4 bits a weight
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((4, 70)).astype(np.float32)
    got, want = sess.run(None, {"input": x})[0], rt.predict(x)
    # ONNX Runtime quantizes the activations itself (int8, per block): equal to their rounding.
    assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()
