"""Sparse formats and SpMM against dense NumPy references, on every SIMD path."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import hwreg_rs as hw
from hwreg_rs import prune, sparse

BLOCKS = [(1, 1), (1, 4), (4, 1), (1, 8), (8, 1), (2, 2), (4, 4), (8, 8), (16, 3), (2, 5)]
BATCHES = [1, 2, 3, 17, 64, 130]


def int_weight(rng, shape, density):
    """Small integer values: float32 products and sums are exact."""
    w = rng.integers(-8, 9, shape).astype(np.float32)
    w[rng.random(shape) > density] = 0
    return w


def build(fmt, w, mask=None, dtype="float32", block=(1, 4)):
    if fmt == "csr":
        return sparse.CSRMatrix.from_dense(w, mask, dtype=dtype)
    if fmt == "bsr":
        return sparse.BSRMatrix.from_dense(w, mask, block=block, dtype=dtype)
    return sparse.NMMatrix.from_dense(w, mask, n=2, m=4, dtype=dtype)


# ------------------------------------------------------------ round trips


@given(st.integers(1, 20), st.integers(1, 20), st.floats(0, 1), st.sampled_from(BLOCKS), st.integers(0, 2**31))
def test_bsr_round_trip(rows, cols, density, block, seed):
    rng = np.random.default_rng(seed)
    w = int_weight(rng, (rows, cols), density)
    m = sparse.BSRMatrix.from_dense(w, block=block)
    assert np.array_equal(m.to_dense(), w)
    assert m.nnz == np.count_nonzero(w) and m.shape == (rows, cols)
    assert m.density == pytest.approx(np.count_nonzero(w) / w.size)
    assert m.stored % (block[0] * block[1]) == 0 and m.stored >= m.nnz
    mask = rng.random(w.shape) < 0.5
    assert np.array_equal(sparse.BSRMatrix.from_dense(w, mask, block=block).to_dense(), w * mask)


@given(st.integers(1, 12), st.integers(1, 6), st.integers(0, 2**31))
def test_nm_round_trip(rows, groups, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, groups * 4)).astype(np.float32)
    mask = prune.nm_mask(w, 2, 4)
    m = sparse.NMMatrix.from_dense(w, mask, n=2, m=4)
    assert np.array_equal(m.to_dense(), w * mask)
    assert m.stored == rows * groups * 2
    assert m.nbytes == m.stored * 4 + m.stored  # values + one offset byte each


def test_int8_round_trip_and_quantization():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((9, 16)).astype(np.float32)
    mask = prune.magnitude_mask(w, 0.5)
    m = sparse.CSRMatrix.from_dense(w, mask, dtype="int8")
    q, s = m.to_dense(), m.scale
    assert q.dtype == np.int8 and s.shape == (9,)
    wm = w * mask
    want_s = np.abs(wm).max(1) / np.float32(127)
    assert np.allclose(s, want_s, rtol=1e-6)
    assert np.array_equal(q, np.clip(np.rint(wm / s[:, None]), -127, 127).astype(np.int8))
    assert np.abs(m.dequantize() - wm).max() <= s.max() / 2 + 1e-6
    # given int8 weights + scale
    m2 = sparse.BSRMatrix.from_dense(q, block=(1, 4), scale=s)
    assert np.array_equal(m2.to_dense(), q) and np.array_equal(m2.scale, s)


def test_nbytes_reports_footprint():
    w = np.zeros((64, 64), np.float32)
    w[::2, ::3] = 1.0
    csr = sparse.CSRMatrix.from_dense(w)
    assert csr.nbytes == 4 * (65 + csr.nnz) + 4 * csr.nnz
    q = sparse.CSRMatrix.from_dense(w, dtype="int8")
    assert q.nbytes == 4 * (65 + q.nnz) + q.nnz + 8 * 64
    assert q.nbytes < csr.nbytes


# ------------------------------------------------------------ float SpMM


@pytest.mark.parametrize("fmt,block", [("csr", (1, 1))] + [("bsr", b) for b in BLOCKS[1:]] + [("nm", (2, 4))])
def test_float_spmm_matches_dense(each_isa, fmt, block):
    rng = np.random.default_rng(7)
    n, k = 37, 44
    w = int_weight(rng, (n, k), 0.3)
    mask = prune.nm_mask(w, 2, 4) if fmt == "nm" else None
    m = build(fmt, w, mask, block=block)
    wd = w if mask is None else w * mask
    bias = rng.integers(-3, 4, n).astype(np.float32)
    for batch in BATCHES:
        x = rng.integers(-4, 5, (batch, k)).astype(np.float32)
        assert np.array_equal(m.matmul(x), x @ wd.T)  # integers: exact
        y = m.matmul(x, bias=bias, relu=True)
        assert np.array_equal(y, np.maximum(x @ wd.T + bias, 0))


@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40), st.floats(0, 1), st.sampled_from(BLOCKS),
       st.integers(0, 2**31))
def test_float_spmm_awkward_shapes(n, k, batch, density, block, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[rng.random((n, k)) > density] = 0
    x = rng.standard_normal((batch, k)).astype(np.float32)
    m = sparse.BSRMatrix.from_dense(w, block=block)
    np.testing.assert_allclose(m.matmul(x), x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", ["csr", "bsr", "nm"])
def test_empty_rows_fully_pruned_and_fully_dense(fmt):
    rng = np.random.default_rng(8)
    w = rng.standard_normal((20, 32)).astype(np.float32)
    x = rng.standard_normal((5, 32)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    if fmt == "nm":
        zero = sparse.NMMatrix.from_dense(np.zeros_like(w))
        assert zero.nnz == 0 and np.array_equal(zero.matmul(x, bias=b), np.broadcast_to(b, (5, 20)))
        return
    zero = build(fmt, w, np.zeros(w.shape, bool))
    assert zero.nnz == 0 and zero.nbytes > 0
    assert np.array_equal(zero.matmul(x, bias=b), np.broadcast_to(b, (5, 20)))
    dense = build(fmt, w)
    np.testing.assert_allclose(dense.matmul(x), x @ w.T, rtol=1e-5, atol=1e-5)
    rows = w.copy()
    rows[::3] = 0  # empty rows
    np.testing.assert_allclose(build(fmt, rows).matmul(x), x @ rows.T, rtol=1e-5, atol=1e-5)


def test_one_dim_x_and_linear_function():
    w = np.eye(3, dtype=np.float32) * 2
    m = sparse.CSRMatrix.from_dense(w)
    assert m.matmul(np.array([1.0, 2.0, 3.0])).tolist() == [2.0, 4.0, 6.0]
    assert sparse.linear(np.ones((1, 3)), m, np.ones(3), relu=True).tolist() == [[3.0, 3.0, 3.0]]


# ------------------------------------------------------------ int8 SpMM


def ref_int8(q, wscale, xq, xs, xz, bias=None, relu=False):
    acc = (xq.astype(np.int64) - xz.astype(np.int64)[:, None]) @ q.astype(np.int64).T
    y = (acc.astype(np.float32) * xs[:, None]) * wscale[None, :]  # the GEMM output step order
    if bias is not None:
        y = y + bias
    return np.maximum(y, 0) if relu else y, acc


@pytest.mark.parametrize("fmt,block", [("csr", (1, 1)), ("bsr", (1, 4)), ("bsr", (4, 4)), ("bsr", (8, 8)),
                                       ("bsr", (2, 3)), ("bsr", (16, 4)), ("bsr", (8, 4)), ("bsr", (16, 8)),
                                       ("bsr", (4, 12)), ("nm", (2, 4))])
def test_int8_spmm_exact_accumulation(each_isa, fmt, block):
    rng = np.random.default_rng(9)
    n, k = 23, 72
    q = rng.integers(-127, 128, (n, k)).astype(np.int8)  # full range
    q[rng.random((n, k)) < 0.4] = 0
    if fmt == "nm":
        q = np.where(prune.nm_mask(q.astype(np.float32), 2, 4), q, 0).astype(np.int8)
    ws = np.ones(n, np.float32)
    if fmt == "csr":
        m = sparse.CSRMatrix.from_dense(q, scale=ws)
    elif fmt == "nm":
        m = sparse.NMMatrix.from_dense(q, n=2, m=4, scale=ws)
    else:
        m = sparse.BSRMatrix.from_dense(q, block=block, scale=ws)
    for batch in BATCHES:
        xq = rng.integers(0, 256, (batch, k)).astype(np.uint8)
        xz = rng.integers(0, 256, batch).astype(np.uint8)
        xs = np.ones(batch, np.float32)
        y = m.matmul_quantized(xq, xs, xz)
        want, acc = ref_int8(q, ws, xq, xs, xz)
        assert np.abs(acc).max() < 2**24  # so float32 holds the exact integer
        assert np.array_equal(y, acc.astype(np.float32))


@pytest.mark.parametrize("block", [(16, 4), (8, 4), (4, 4), (16, 8)])
@pytest.mark.parametrize("n,k", [(1, 1), (15, 5), (33, 71), (48, 64), (300, 40), (520, 260)])
def test_int8_panel_blocks_exact_for_any_shape(each_isa, block, n, k):
    """The blocks of 4, 8 or 16 rows x 4k run over output-column panels (one SIMD register per
    stored group): exact on every path, for shapes that leave partial panels and K-groups, every
    batch tail of the tiles, the extreme bytes and zero points, bias and ReLU; 300 and 520 rows
    span several staged output tiles (128 columns) and, at 520 x 260, several tasks on the team."""
    rng = np.random.default_rng(n * 100 + k)
    q = rng.integers(-127, 128, (n, k)).astype(np.int8)
    q[0, :] = 127
    mask = prune.block_mask(q.astype(np.float32), 0.5, block=block)
    q = np.where(mask, q, 0).astype(np.int8)
    ws = rng.uniform(0.5, 2.0, n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    m = sparse.BSRMatrix.from_dense(q, block=block, scale=ws)
    assert np.array_equal(m.to_dense(), q)
    for batch in (1, 2, 3, 5, 8, 9, 16, 33):
        xq = rng.integers(0, 256, (batch, k)).astype(np.uint8)
        xq[:, 0] = 255
        xz = np.array([(0, 255, 128, 3)[i % 4] for i in range(batch)], np.uint8)
        xs = rng.uniform(0.01, 1.0, batch).astype(np.float32)
        # The output step's float formula on the exact accumulators, bit for bit.
        want, acc = ref_int8(q, ws, xq, xs, xz, b, True)
        assert np.array_equal(m.matmul_quantized(xq, xs, xz, bias=b, relu=True), want), batch
        m1 = sparse.BSRMatrix.from_dense(q, block=block, scale=1.0)
        assert np.array_equal(m1.matmul_quantized(xq, np.ones(batch, np.float32), xz), acc.astype(np.float32))


def test_int8_spmm_scales_bias_relu_and_dynamic_quant(each_isa):
    rng = np.random.default_rng(10)
    w = rng.standard_normal((30, 64)).astype(np.float32)
    mask = prune.block_mask(w, 0.6, block=(4, 4))
    m = sparse.BSRMatrix.from_dense(w, mask, block=(4, 4), dtype="int8")
    x = rng.standard_normal((9, 64)).astype(np.float32)
    b = rng.standard_normal(30).astype(np.float32)
    xq, xs, xz = sparse.quantize_activations(x)
    want, _ = ref_int8(m.to_dense(), m.scale, xq, xs, xz, b, True)
    np.testing.assert_allclose(m.matmul(x, bias=b, relu=True), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m.matmul_quantized(xq, xs, xz, bias=b, relu=True), want, rtol=1e-5, atol=1e-5)
    # close to the float product
    ref = x @ (w * mask).T
    np.testing.assert_allclose(m.matmul(x), ref, atol=0.03 * np.abs(ref).max())


def test_quantize_activations_matches_dynamic_quantize_linear_per_row():
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(n, TensorProto.UNDEFINED, None) for n in "ysz"])
    ev = ReferenceEvaluator(helper.make_model(graph))
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((6, 33)) * [[0.1], [1], [10], [3], [0.5], [2]]).astype(np.float32)
    x[3] = np.abs(x[3])  # all positive row
    q, s, z = sparse.quantize_activations(x)
    for i in range(6):
        yq, ys, yz = ev.run(None, {"x": x[i]})
        assert np.array_equal(q[i], yq) and s[i] == ys and z[i] == yz


def test_int8_overflow_guard():
    k = 70_000  # 255 * 127 * 70000 > 2^31
    q = np.full((1, k), 127, np.int8)
    with pytest.raises(ValueError, match="overflow"):
        sparse.CSRMatrix.from_dense(q, scale=1.0)


# ------------------------------------------------------------ errors


def test_bad_inputs():
    w = np.ones((4, 8), np.float32)
    m = sparse.CSRMatrix.from_dense(w)
    with pytest.raises(ValueError, match="features"):
        m.matmul(np.ones((2, 7), np.float32))
    with pytest.raises(ValueError, match="bias"):
        m.matmul(np.ones((2, 8)), bias=np.ones(3))
    with pytest.raises(ValueError, match="2-D"):
        sparse.CSRMatrix.from_dense(np.ones(4))
    with pytest.raises(ValueError, match="mask"):
        sparse.CSRMatrix.from_dense(w, np.ones((4, 7), bool))
    with pytest.raises(ValueError, match="block"):
        sparse.BSRMatrix.from_dense(w, block=(3, 4))
    with pytest.raises(TypeError):
        sparse.BSRMatrix.from_dense(w, block=4)
    with pytest.raises(ValueError, match="more than 2"):
        sparse.NMMatrix.from_dense(w, n=2, m=4)
    with pytest.raises(ValueError, match="tile"):
        sparse.NMMatrix.from_dense(np.ones((2, 6), np.float32), prune.nm_mask(np.ones((2, 6)), 1, 3), n=2, m=4)
    with pytest.raises(ValueError, match="scale"):
        sparse.CSRMatrix.from_dense(w.astype(np.int8))
    with pytest.raises(ValueError, match="dtype"):
        sparse.CSRMatrix.from_dense(w, dtype="int4")
    with pytest.raises(TypeError):
        m.matmul_quantized(np.ones((1, 8), np.uint8), 1.0, 0)  # float weight
    with pytest.raises(TypeError):
        m.matmul(np.array([["a"] * 8]))
    q = sparse.CSRMatrix.from_dense(w, dtype="int8")
    with pytest.raises(ValueError, match="finite"):
        q.matmul_quantized(np.ones((1, 8), np.uint8), 0.0, 0)
    with pytest.raises(ValueError, match="finite"):
        q.matmul(np.full((1, 8), np.nan, np.float32))
    with pytest.raises(ValueError):
        q.matmul_quantized(np.ones((1, 8), np.uint8), 1.0, 300)
    with pytest.raises(ValueError, match="finite"):
        sparse.CSRMatrix.from_dense(np.full((2, 2), np.inf, np.float32), dtype="int8")


def test_non_contiguous_inputs_are_handled():
    rng = np.random.default_rng(12)
    w = rng.standard_normal((16, 32)).astype(np.float32)
    wt = np.asfortranarray(w)
    m = sparse.CSRMatrix.from_dense(wt)
    x = rng.standard_normal((32, 10)).astype(np.float32).T  # strided view
    np.testing.assert_allclose(m.matmul(x), x @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m.matmul(x.astype(">f4")), x @ w.T, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ chooser


def test_choose_and_would_speed_up():
    rng = np.random.default_rng(13)
    w = rng.standard_normal((128, 128)).astype(np.float32)
    c = sparse.choose(w, prune.magnitude_mask(w, 0.97), batch=32)
    assert c.path in {"dense_f32", "dense_int8", "csr_f32", "bsr_f32", "csr_int8", "bsr_int8"}
    assert "dense_int8" in c.seconds and c.build(w).__class__.__name__ in {"ndarray", "Int8Linear", "CSRMatrix", "BSRMatrix"}
    assert "dense_f32" in c.seconds and "csr_f32" in c.seconds and c.speedup > 0
    built = c.build(w, prune.magnitude_mask(w, 0.97))
    assert built is not None
    nm = sparse.choose(w, prune.nm_mask(w, 2, 4), batch=8)
    assert any(k.startswith("nm_f32") for k in nm.seconds)
    assert isinstance(sparse.would_speed_up("2:4", 0.5, 8, shape=(64, 64)), bool)
    assert isinstance(sparse.would_speed_up((1, 8), 0.9, 8, shape=(64, 64)), bool)
    with pytest.raises(ValueError):
        sparse.would_speed_up("diagonal", 0.5, 8)
    with pytest.raises(ValueError):
        sparse.choose(w, batch=0)


def test_choose_asks_the_profile():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((256, 256)).astype(np.float32)
    mask = prune.block_mask(w, 0.95, block=(1, 8))
    # A preset: the cost model alone decides (no timing), the same answer every time.
    a = sparse.choose(w, mask, batch=32, profile="x86-avx2")
    assert a == sparse.choose(w, mask, batch=32, profile="x86-avx2")
    prof = hw.profiles.preset("x86-avx2")
    want = min(a.seconds, key=a.seconds.get)
    assert a.path == want.split("(")[0] and a.path.startswith("bsr")  # blocks of 0.7 efficiency at 95% pruned
    assert a.speedup == pytest.approx(min(v for k, v in a.seconds.items() if k.startswith("dense")) / a.seconds[want])
    # No sparse kernel on the profile: the zeros are multiplied like any weight, dense wins.
    m7 = sparse.choose(w, mask, batch=32, profile="cortex-m7")
    assert m7.path.startswith("dense") and not sparse.would_speed_up((1, 8), 0.95, 32, shape=(256, 256),
                                                                    profile="cortex-m7")
    # A profile is the one model: a slower machine's estimates are the same ratios, scaled.
    slow = sparse.choose(w, mask, batch=32, profile=prof.scaled(3.0))
    assert slow.path == a.path and slow.seconds[want] == pytest.approx(3 * a.seconds[want])


def test_choose_picks_the_least_estimate_with_each_precisions_efficiency():
    import dataclasses

    from hwreg_rs.sparse import _candidate_work

    rng = np.random.default_rng(5)
    w = rng.standard_normal((256, 256)).astype(np.float32)
    mask = prune.block_mask(w, 0.9, block=(16, 4))
    # int8 panels nearly as fast per kept weight as dense int8, float blocks 20x slower than dense fp32.
    prof = dataclasses.replace(
        hw.profiles.preset("x86-avx512-vnni"),
        sparsity_patterns={"block": 0.9, "block/fp32": 0.05, "unstructured": 0.3, "unstructured/fp32": 0.05},
        sparsity_patterns_one_row={"block": 0.8, "block/fp32": 0.04})
    for batch in (1, 32):
        c = sparse.choose(w, mask, batch=batch, profile=prof)
        # Every estimate is the cost model's for that candidate, and the pick is the least of them.
        for key, sec in c.seconds.items():
            path, blk = sparse._parse_key(key)
            stored = 256 * 256 if blk is None else sparse._stored_for_block(mask, blk)
            want = hw.profiles.estimate([_candidate_work(path, (256, 256), stored, batch)], prof).latency_s
            assert sec == pytest.approx(want), key
        best = min(c.seconds, key=c.seconds.get)
        assert (c.path, c.block) == sparse._parse_key(best)
        # The 16x4 blocks fill 8x4 and 4x4 as tightly: equal estimates, and the tallest panel wins.
        assert (c.path, c.block) == ("bsr_int8", (16, 4))
        # int8 blocks that would not run over panels are not candidates.
        assert not any(k.startswith("bsr_int8(1,") for k in c.seconds)
        # Float only: the float blocks are costed with their own (low) efficiency, not the int8
        # panels'; at batch 32 (compute-bound) that makes dense fp32 the answer, where the int8
        # figure (no "/fp32" key) would have had the float blocks win.
        f = sparse.choose(w, mask, batch=batch, profile=prof, dtypes=("float32",))
        plain_prof = dataclasses.replace(prof, sparsity_patterns={"block": 0.9},
                                         sparsity_patterns_one_row={"block": 0.8})
        plain = sparse.choose(w, mask, batch=batch, profile=plain_prof, dtypes=("float32",))
        assert f.seconds["bsr_f32(16, 4)"] > plain.seconds["bsr_f32(16, 4)"]
        if batch == 32:
            assert (f.path, plain.path) == ("dense_f32", "bsr_f32")


def test_profile_pattern_keys_per_precision():
    import dataclasses

    base = hw.profiles.preset("x86-avx2")
    ok = dataclasses.replace(base, sparsity_patterns={"block": 0.5, "block/fp32": 0.2, "n:m/int8": 0.4})
    assert ok.sparsity_patterns["block/fp32"] == 0.2
    for bad in ({"block/int4": 0.5}, {"diagonal/fp32": 0.5}, {"block/fp32": 1.5}):
        with pytest.raises(ValueError):
            dataclasses.replace(base, sparsity_patterns=bad)


def test_flat_api():
    assert hw.sparse is sparse


# ------------------------------------------------------------ float AXPY panels (batch ≥ 3)
# The float product for a batch of 3 or more runs over batch panels of 32 columns (the last one
# 16 wide when the padded batch is an odd multiple of 16); these cover every panel layout, rows
# with no stored block, all-zero weights and batch 1, against a float64 NumPy reference.

PANEL_BATCHES = [1, 3, 16, 31, 32, 33, 48, 63, 64, 65, 100, 128]


def _f64_ref(x, w, bias=None, relu=False):
    y = x.astype(np.float64) @ w.astype(np.float64).T
    if bias is not None:
        y = y + bias.astype(np.float64)
    return np.maximum(y, 0) if relu else y


def _random_format(rng, fmt, n, k, density, block):
    w = rng.standard_normal((n, k)).astype(np.float32)
    if fmt == "nm":
        mask = prune.nm_mask(w, 2, 4)
    else:
        mask = rng.random((n, k)) < density
        mask[rng.random(n) < 0.3] = False  # whole rows pruned: empty rows
    return build(fmt, w, mask, block=block), w * mask


@pytest.mark.parametrize("fmt,block", [("csr", (1, 1)), ("bsr", (1, 8)), ("bsr", (4, 4)), ("bsr", (8, 1)),
                                       ("bsr", (16, 3)), ("nm", (2, 4))])
def test_float_panels_match_f64_reference(each_isa, fmt, block):
    rng = np.random.default_rng(11)
    n, k = 45, 52
    m, wd = _random_format(rng, fmt, n, k, 0.1, block)
    bias = rng.standard_normal(n).astype(np.float32)
    for batch in PANEL_BATCHES:
        x = rng.standard_normal((batch, k)).astype(np.float32)
        np.testing.assert_allclose(m.matmul(x), _f64_ref(x, wd), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(m.matmul(x, bias=bias, relu=True), _f64_ref(x, wd, bias, True),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["csr", "bsr", "nm"])
def test_float_panels_all_zero_weights(each_isa, fmt):
    rng = np.random.default_rng(12)
    w = np.zeros((19, 24), np.float32)
    m = build(fmt, w, block=(4, 4))
    bias = rng.standard_normal(19).astype(np.float32)
    for batch in PANEL_BATCHES:
        x = rng.standard_normal((batch, 24)).astype(np.float32)
        assert np.array_equal(m.matmul(x), np.zeros((batch, 19), np.float32))
        assert np.array_equal(m.matmul(x, bias=bias), np.broadcast_to(bias, (batch, 19)))


@given(st.integers(1, 70), st.integers(1, 70), st.sampled_from(PANEL_BATCHES + [2, 5, 17, 129]),
       st.floats(0, 1), st.sampled_from([("csr", (1, 1)), ("bsr", (1, 4)), ("bsr", (2, 2)), ("bsr", (8, 8)),
                                         ("nm", (2, 4))]), st.integers(0, 2**31))
def test_float_panels_hypothesis(n, k, batch, density, fmt_block, seed):
    fmt, block = fmt_block
    if fmt == "nm":
        k = (k + 3) // 4 * 4
    rng = np.random.default_rng(seed)
    m, wd = _random_format(rng, fmt, n, k, density, block)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    want = _f64_ref(x, wd)
    # float32 accumulation over at most k terms of magnitude |w|·|x|
    tol = 1e-6 * k * (np.abs(x).astype(np.float64) @ np.abs(wd).astype(np.float64).T) + 1e-6
    assert np.all(np.abs(m.matmul(x) - want) <= tol)


def test_float_panels_unaligned_and_strided_x():
    # The panels are copied out of x, so an x that starts off a cache line (a slice of a larger
    # buffer) or is not contiguous gives the same answer.
    rng = np.random.default_rng(13)
    w = rng.standard_normal((33, 40)).astype(np.float32)
    m = sparse.CSRMatrix.from_dense(w, rng.random(w.shape) < 0.2)
    buf = rng.standard_normal(70 * 40 + 1).astype(np.float32)
    x = buf[1:].reshape(70, 40)
    np.testing.assert_allclose(m.matmul(x), _f64_ref(x, m.to_dense()), rtol=1e-5, atol=1e-5)
    xs = rng.standard_normal((70, 80)).astype(np.float32)[:, ::2]
    np.testing.assert_allclose(m.matmul(xs), _f64_ref(xs, m.to_dense()), rtol=1e-5, atol=1e-5)
