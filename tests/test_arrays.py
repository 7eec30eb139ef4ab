"""Every public function accepts awkward input arrays and gives the same answer.

Arrays that arrive through pickle protocol 5, shared memory or a network
buffer are often unaligned (``np.frombuffer`` at an odd offset) and read-only;
slices are non-contiguous; files written on other machines can be big-endian.
Each public entry point must read them correctly (copying when needed) and
return exactly what it returns for an ordinary aligned, contiguous,
native-endian array.
"""

import numpy as np
import pytest

import hwreg_rs as hw


def _unaligned(a: np.ndarray, *, writeable: bool = True) -> np.ndarray:
    """``a``'s values in a C-contiguous buffer one byte past an aligned address."""
    data = b"\0" + np.ascontiguousarray(a).tobytes()
    out = np.frombuffer(bytearray(data) if writeable else data, np.uint8)[1:].view(a.dtype).reshape(a.shape)
    if a.dtype.itemsize > 1:
        assert not out.flags.aligned
    assert out.flags.writeable == writeable
    return out


def _read_only(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    out.flags.writeable = False
    return out


def _strided(a: np.ndarray) -> np.ndarray:
    """The same values seen through a view with a step of 2 in the last axis."""
    if a.ndim == 0:
        return a
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    out = big[..., ::2]
    assert not out.flags.c_contiguous or a.shape[-1] <= 1
    return out


def _fortran(a: np.ndarray) -> np.ndarray:
    return np.asfortranarray(a)


def _big_endian(a: np.ndarray) -> np.ndarray:
    out = a.astype(a.dtype.newbyteorder(">"))
    if a.dtype.itemsize > 1:
        assert not out.dtype.isnative
    return out


VARIANTS = {
    "unaligned": _unaligned,
    "unaligned-read-only": lambda a: _unaligned(a, writeable=False),
    "read-only": _read_only,
    "strided": _strided,
    "fortran": _fortran,
    "big-endian": _big_endian,
}


@pytest.fixture(params=sorted(VARIANTS))
def variant(request):
    return VARIANTS[request.param]


def _same(got, want):
    if isinstance(want, (tuple, list)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _same(g, w)
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


rng = np.random.default_rng(0)
X = rng.standard_normal((6, 16)).astype(np.float32)  # a batch of 6 rows of 16 features
W = rng.standard_normal((8, 16)).astype(np.float32)  # a Linear weight (out=8, in=16)
BIAS = rng.standard_normal(8).astype(np.float32)
SCALES = np.linspace(0.01, 0.05, 16, dtype=np.float32)  # per-column scales of X
A_U8 = rng.integers(0, 256, (6, 16), dtype=np.uint8)
B_I8 = rng.integers(-128, 128, (16, 8), dtype=np.int8)
IMG = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)


# --------------------------------------------------------------- quantization

def test_quantize(variant):
    _same(hw.quantize(variant(X), 0.02, 3), hw.quantize(X, 0.02, 3))


def test_quantize_per_axis_scale(variant):
    want = hw.quantize(X, SCALES, axis=1, dtype="uint8")
    _same(hw.quantize(variant(X), variant(SCALES), axis=1, dtype="uint8"), want)


def test_dequantize(variant):
    q = hw.quantize(X, SCALES, axis=1)
    _same(hw.dequantize(variant(q), variant(SCALES), axis=1), hw.dequantize(q, SCALES, axis=1))


def test_dynamic_quantize(variant):
    _same(hw.dynamic_quantize(variant(X)), hw.dynamic_quantize(X))


def test_calibrate(variant):
    got, want = hw.calibrate(variant(X), axis=0), hw.calibrate(X, axis=0)
    _same(got.scale, want.scale)
    _same(got.zero_point, want.zero_point)


# ----------------------------------------------------------------------- GEMM

def test_matmul_integer(variant):
    want = hw.matmul_integer(A_U8, B_I8, a_zero_point=128)
    _same(hw.matmul_integer(variant(A_U8), variant(B_I8), a_zero_point=128), want)


def test_pack_int8(variant):
    want = hw.matmul_integer(A_U8, hw.pack_int8(B_I8))
    _same(hw.matmul_integer(A_U8, hw.pack_int8(variant(B_I8))), want)


def test_qlinear_matmul(variant):
    want = hw.qlinear_matmul(A_U8, 0.02, 128, B_I8, 0.01, 0, 0.5, np.uint8(128))
    got = hw.qlinear_matmul(variant(A_U8), 0.02, 128, variant(B_I8), 0.01, 0, 0.5, np.uint8(128))
    _same(got, want)


def test_int8_linear(variant):
    layer = hw.Int8Linear.from_float(W, BIAS, relu=True)
    want = layer(X)
    _same(layer(variant(X)), want)
    _same(hw.Int8Linear.from_float(variant(W), variant(BIAS), relu=True)(X), want)


# -------------------------------------------------------------------- pruning

@pytest.mark.parametrize("make", [
    lambda w: hw.prune.magnitude_mask(w, 0.5),
    lambda w: hw.prune.structured_mask(w, 0.5, dim=0),
    lambda w: hw.prune.nm_mask(w, 2, 4),
    lambda w: hw.prune.block_mask(w, 0.5, block=(1, 4)),
    lambda w: hw.prune.threshold_mask(w, 0.5),
    lambda w: hw.prune.global_magnitude_masks([w, w[:4]], 0.5),
], ids=["magnitude", "structured", "nm", "block", "threshold", "global"])
def test_prune_masks(variant, make):
    _same(make(variant(W)), make(W))


def test_prune_importance_scores(variant):
    s = np.abs(W[::-1]).copy()
    _same(hw.prune.magnitude_mask(W, 0.5, importance_scores=variant(s)),
          hw.prune.magnitude_mask(W, 0.5, importance_scores=s))


# --------------------------------------------------------------------- sparse

@pytest.mark.parametrize("fmt", ["csr-f32", "csr-i8", "bsr-f32", "bsr-i8", "nm-f32"])
def test_sparse(variant, fmt):
    keep = hw.prune.block_mask(W, 0.5, block=(1, 4)) if fmt.startswith("bsr") else hw.prune.nm_mask(W, 2, 4)
    dtype = "int8" if fmt.endswith("i8") else "float32"

    def build(w):
        if fmt.startswith("csr"):
            return hw.sparse.CSRMatrix.from_dense(w, keep, dtype=dtype)
        if fmt.startswith("bsr"):
            return hw.sparse.BSRMatrix.from_dense(w, keep, block=(1, 4), dtype=dtype)
        return hw.sparse.NMMatrix.from_dense(w, keep, n=2, m=4)

    want = build(W).matmul(X)
    _same(build(W).matmul(variant(X)), want)
    _same(build(variant(W)).matmul(X), want)


def test_sparse_quantize_activations(variant):
    _same(hw.sparse.quantize_activations(variant(X)), hw.sparse.quantize_activations(X))


# ------------------------------------------------------------------ nn layers

def test_nn_linear_and_mlp(variant):
    net = hw.nn.mlp([16, 12, 3], rng=0).eval()
    _same(net(variant(X)), net(X))


def test_nn_conv_cnn(variant):
    net = hw.nn.small_cnn(rng=0).eval()
    _same(net(variant(IMG)), net(IMG))


# -------------------------------------------------------------------- runtime

@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_runtime_predict(name, kind):
    if kind == "mlp":
        rt, x = hw.runtime.convert(hw.nn.mlp([16, 12, 3], rng=0).eval(), input_shape=(16,)), X
    else:
        rt, x = hw.runtime.convert(hw.nn.small_cnn(rng=0).eval(), input_shape=(1, 8, 8)), IMG
    _same(rt.predict(VARIANTS[name](x)), rt.predict(x))


# ----------------------------------------------------------- the helper itself

def test_native_array_copies_only_when_needed():
    from hwreg_rs._validate import native_array

    ro = _read_only(X)
    assert native_array(ro, "x") is ro  # read in place: the kernels only read inputs
    u = _unaligned(X, writeable=False)
    out = native_array(u, "x")
    assert out.flags.aligned and out.flags.c_contiguous and out.dtype.isnative
    np.testing.assert_array_equal(out, X)
    assert native_array(np.float32(2.5), "x").shape == ()
