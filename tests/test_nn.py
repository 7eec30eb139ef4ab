"""Layers: gradients by finite differences, PyTorch math and layouts, state dicts, Rust vs NumPy paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import hwreg_rs as hw
from hwreg_rs.nn import functional as F

nn = hw.nn


# ---------------------------------------------------------------------------
# finite-difference gradient check (float64)
# ---------------------------------------------------------------------------

def gradcheck(module, x, *, reseed=None, n_probe=25, eps=1e-6, rtol=1e-5, atol=1e-7, seed=0):
    """Compare backward() with central differences of sum(forward(x) * R) for inputs and parameters."""
    module.astype(np.float64)
    x = x.astype(np.float64)
    rng = np.random.default_rng(seed)

    def fwd(inp):
        if reseed is not None:
            reseed()
        return module.forward(inp)

    out = fwd(x)
    R = rng.standard_normal(out.shape)
    gx = module.backward(R)
    grads = {n: p.grad.copy() for n, p in module.named_parameters()}

    def f(inp):
        return float(np.sum(fwd(inp) * R))

    def probe(arr, analytic, name, setter):
        flat = arr.reshape(-1)
        idx = rng.choice(flat.size, size=min(n_probe, flat.size), replace=False)
        for i in idx:
            old = flat[i]
            flat[i] = old + eps
            setter()
            fp = f(x)
            flat[i] = old - eps
            setter()
            fm = f(x)
            flat[i] = old
            setter()
            num = (fp - fm) / (2 * eps)
            ana = analytic.reshape(-1)[i]
            assert abs(num - ana) <= atol + rtol * max(abs(num), abs(ana)) * 10 + 1e-6 * abs(num), (
                f"{name}[{i}]: numeric {num} vs analytic {ana}")

    probe(x, gx, "input", lambda: None)
    for name, p in module.named_parameters():
        probe(p.data, grads[name], name, lambda: None)


def spread(shape, seed=0, lo=-2.0, hi=2.0):
    """Distinct, well-separated values (no ReLU kinks, no max-pool ties under eps)."""
    n = int(np.prod(shape))
    v = np.linspace(lo, hi, n) + 0.01
    v = v[np.abs(v) > 1e-3]
    v = np.resize(v, n)
    return np.random.default_rng(seed).permutation(v).reshape(shape)


def test_gradcheck_linear():
    gradcheck(nn.Linear(5, 3, rng=0), np.random.default_rng(1).standard_normal((4, 5)))


def test_gradcheck_linear_no_bias():
    gradcheck(nn.Linear(5, 3, bias=False, rng=0), np.random.default_rng(1).standard_normal((4, 5)))


def test_gradcheck_relu_flatten():
    gradcheck(nn.Sequential(nn.ReLU(), nn.Flatten()), spread((3, 2, 2, 2)))


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (3, 2, 0), ((2, 3), (2, 1), (1, 0)), (1, 1, 0)])
def test_gradcheck_conv2d(k, s, p):
    conv = nn.Conv2d(2, 3, k, stride=s, padding=p, rng=0)
    gradcheck(conv, np.random.default_rng(2).standard_normal((2, 2, 5, 6)))


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 1, 1), (3, 2, 1), ((2, 3), (1, 2), (1, 1))])
def test_gradcheck_max_pool(k, s, p):
    gradcheck(nn.MaxPool2d(k, stride=s, padding=p), spread((2, 2, 5, 6), lo=-3, hi=3), eps=1e-7)


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 1, 1), (3, 2, 1)])
def test_gradcheck_avg_pool(k, s, p):
    gradcheck(nn.AvgPool2d(k, stride=s, padding=p), np.random.default_rng(3).standard_normal((2, 2, 5, 6)))


@pytest.mark.parametrize("train", [True, False])
def test_gradcheck_batchnorm1d(train):
    bn = nn.BatchNorm1d(4)
    bn.weight.data[:] = [1.0, 2.0, -0.5, 0.3]
    bn.bias.data[:] = [0.1, 0.0, 1.0, -1.0]
    bn.running_mean[:] = [0.5, -0.2, 0.0, 1.0]
    bn.running_var[:] = [1.5, 0.7, 2.0, 1.0]
    bn.train(train)
    gradcheck(bn, np.random.default_rng(4).standard_normal((6, 4)) * 2 + 1)


@pytest.mark.parametrize("train", [True, False])
def test_gradcheck_batchnorm2d(train):
    bn = nn.BatchNorm2d(3)
    bn.weight.data[:] = [1.0, 2.0, -0.5]
    bn.train(train)
    gradcheck(bn, np.random.default_rng(5).standard_normal((3, 3, 2, 3)))


def test_gradcheck_dropout_fixed_mask():
    d = nn.Dropout(0.4, rng=0)

    def reseed():
        d.rng = np.random.default_rng(7)

    gradcheck(d, np.random.default_rng(6).standard_normal((5, 7)), reseed=reseed)


def test_gradcheck_small_cnn():
    net = nn.small_cnn(channels=(2, 3), hidden=5, num_classes=3, rng=0)
    gradcheck(net, np.random.default_rng(8).standard_normal((3, 1, 8, 8)), n_probe=10, rtol=1e-4)


# ---------------------------------------------------------------------------
# PyTorch math, written out in NumPy
# ---------------------------------------------------------------------------

def conv_reference(x, w, b, stride, padding):
    """Direct 7-loop cross-correlation (PyTorch's conv2d)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph: ph + h, pw: pw + wd] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * sh: i * sh + kh, j * sw: j * sw + kw]
            y[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return y + b[None, :, None, None]


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (3, 2, 0), ((2, 3), (2, 1), (1, 2))])
def test_conv2d_matches_direct_convolution(k, s, p):
    conv = nn.Conv2d(3, 4, k, stride=s, padding=p, rng=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 6)).astype(np.float32)
    got = conv(x)
    want = conv_reference(x.astype(np.float64), conv.weight.data.astype(np.float64), conv.bias.data,
                          conv.stride, conv.padding)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_linear_matches_formula_and_layout():
    lin = nn.Linear(3, 2, rng=0)
    assert lin.weight.data.shape == (2, 3) and lin.bias.data.shape == (2,)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_allclose(lin(x), x @ lin.weight.data.T + lin.bias.data, rtol=1e-6)


def test_default_init_bounds_and_spread():
    lin = nn.Linear(100, 400, rng=0)
    bound = 1 / math.sqrt(100)
    assert np.abs(lin.weight.data).max() <= bound and np.abs(lin.bias.data).max() <= bound
    # uniform on [-b, b]: std b/sqrt(3)
    assert abs(lin.weight.data.std() - bound / math.sqrt(3)) < 0.02 * bound
    conv = nn.Conv2d(4, 8, 3, rng=0)
    cb = 1 / math.sqrt(4 * 9)
    assert np.abs(conv.weight.data).max() <= cb and abs(np.abs(conv.weight.data).max() - cb) < 0.1 * cb
    assert lin.weight.data.dtype == np.float32


def test_batchnorm_training_statistics_follow_pytorch():
    bn = nn.BatchNorm2d(2, momentum=0.1)
    x = np.random.default_rng(0).normal(3.0, 2.0, (4, 2, 3, 3)).astype(np.float32)
    y = bn(x)
    mean = x.mean(axis=(0, 2, 3))
    var_b = x.var(axis=(0, 2, 3))
    var_u = x.var(axis=(0, 2, 3), ddof=1)
    want = (x - mean[None, :, None, None]) / np.sqrt(var_b[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean, 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * var_u, rtol=1e-5)
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    y2 = bn(x)
    want2 = (x - bn.running_mean[None, :, None, None]) / np.sqrt(bn.running_var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y2, want2, rtol=1e-5, atol=1e-5)
    assert int(bn.num_batches_tracked) == 1


def test_batchnorm_rejects_bad_input():
    with pytest.raises(ValueError, match="channels"):
        nn.BatchNorm1d(3)(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="more than one value"):
        nn.BatchNorm1d(3)(np.zeros((1, 3), np.float32))


def test_dropout_scales_and_is_identity_in_eval():
    d = nn.Dropout(0.25, rng=0)
    y = d(np.ones((4000,), np.float32))
    assert set(np.unique(y).tolist()) == {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.03
    d.eval()
    x = np.arange(5, dtype=np.float32)
    assert d(x) is x
    with pytest.raises(ValueError):
        nn.Dropout(1.0)


def test_max_pool_matches_pytorch_semantics_and_indices():
    x = np.array([[[[1, 5, 2, 2], [5, 0, 2, 2], [-1, -2, 9, 3], [-3, -4, 3, 9]]]], np.float32)
    out, idx = F.max_pool2d(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(out, [[[[5, 2], [-1, 9]]]])
    np.testing.assert_array_equal(idx, [[[[1, 2], [8, 10]]]])  # first maximum in window order
    out64, idx64 = F.max_pool2d(x.astype(np.float64), (2, 2), (2, 2))
    np.testing.assert_array_equal(idx64, idx)


def test_layers_reject_wrong_shapes():
    with pytest.raises(ValueError, match=r"expects input \(N, 3\)"):
        nn.Linear(3, 2)(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="Conv2d expects"):
        nn.Conv2d(1, 2, 3)(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="larger than the padded input"):
        nn.Conv2d(1, 2, 5)(np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="at most half"):
        nn.MaxPool2d(2, padding=2)
    with pytest.raises(TypeError):
        nn.Conv2d(1, 2, "3")
    with pytest.raises(ValueError):
        nn.Linear(0, 2)


# ---------------------------------------------------------------------------
# Rust kernels against the NumPy path
# ---------------------------------------------------------------------------

geometry = st.tuples(
    st.integers(1, 3), st.integers(1, 4), st.integers(1, 9), st.integers(1, 9),  # n c h w
    st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2), st.integers(0, 2),
)


@given(geometry, st.integers(0, 2**31 - 1))
def test_native_im2col_col2im_match_numpy(g, seed):
    n, c, h, w, kh, kw, sh, sw, ph, pw = g
    if h + 2 * ph < kh or w + 2 * pw < kw:
        with pytest.raises(ValueError):
            F.im2col(np.zeros((n, c, h, w), np.float32), (kh, kw), (sh, sw), (ph, pw))
        return
    x = np.random.default_rng(seed).standard_normal((n, c, h, w))
    cols32 = F.im2col(x.astype(np.float32), (kh, kw), (sh, sw), (ph, pw))
    cols64 = F.im2col(x, (kh, kw), (sh, sw), (ph, pw))
    assert cols32.dtype == np.float32 and cols64.dtype == np.float64
    np.testing.assert_array_equal(cols32, cols64.astype(np.float32))
    back32 = F.col2im(cols64.astype(np.float32), (n, c, h, w), (kh, kw), (sh, sw), (ph, pw))
    back64 = F.col2im(cols64, (n, c, h, w), (kh, kw), (sh, sw), (ph, pw))
    np.testing.assert_allclose(back32, back64, rtol=1e-5, atol=1e-5)


@given(geometry, st.integers(0, 2**31 - 1))
def test_native_pooling_matches_numpy(g, seed):
    n, c, h, w, kh, kw, sh, sw, ph, pw = g
    ph, pw = min(ph, kh // 2), min(pw, kw // 2)
    if h + 2 * ph < kh or w + 2 * pw < kw:
        return
    rng = np.random.default_rng(seed)
    x = rng.integers(-4, 5, (n, c, h, w)).astype(np.float64)  # integers: ties exercise the first-max rule
    k, s, p = (kh, kw), (sh, sw), (ph, pw)
    o32, i32 = F.max_pool2d(x.astype(np.float32), k, s, p)
    o64, i64 = F.max_pool2d(x, k, s, p)
    np.testing.assert_array_equal(o32, o64)
    np.testing.assert_array_equal(i32, i64)
    gout = rng.standard_normal(o64.shape)
    np.testing.assert_allclose(F.max_pool2d_backward(gout.astype(np.float32), i32, x.shape, k, s, p),
                               F.max_pool2d_backward(gout, i64, x.shape, k, s, p), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(F.avg_pool2d(x.astype(np.float32), k, s, p), F.avg_pool2d(x, k, s, p),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(F.avg_pool2d_backward(gout.astype(np.float32), x.shape, k, s, p),
                               F.avg_pool2d_backward(gout, x.shape, k, s, p), rtol=1e-5, atol=1e-5)


def test_native_conv_kernels_reject_bad_input():
    from hwreg_rs import _native

    with pytest.raises(ValueError, match="stride"):
        _native.im2col(np.zeros((1, 1, 4, 4), np.float32), (2, 2), (0, 1), (0, 0))
    with pytest.raises(ValueError, match="cols has shape"):
        _native.col2im(np.zeros((3, 4), np.float32), (1, 1, 4, 4), (2, 2), (2, 2), (0, 0))
    with pytest.raises(ValueError, match="outside a plane"):
        _native.max_pool2d_backward(np.zeros((1, 1, 2, 2), np.float32), np.full((1, 1, 2, 2), 99, np.int64),
                                    (1, 1, 4, 4), (2, 2), (2, 2), (0, 0))
    with pytest.raises(TypeError):
        _native.im2col(np.zeros((1, 1, 4, 4), np.float64), (2, 2), (1, 1), (0, 0))
    with pytest.raises(ValueError, match="C-contiguous"):
        _native.avg_pool2d(np.zeros((1, 1, 4, 8), np.float32)[..., ::2], (2, 2), (2, 2), (0, 0))


def test_non_contiguous_inputs_are_handled():
    conv = nn.Conv2d(2, 3, 3, padding=1, rng=0)
    x = np.random.default_rng(0).standard_normal((2, 6, 5, 5)).astype(np.float32)[:, ::3]
    np.testing.assert_allclose(conv(x), conv(np.ascontiguousarray(x)), rtol=1e-6)
    pool = nn.MaxPool2d(2)
    xt = np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32).transpose(0, 1, 3, 2)
    np.testing.assert_array_equal(pool(xt), pool(np.ascontiguousarray(xt)))


# ---------------------------------------------------------------------------
# state dicts in PyTorch layout
# ---------------------------------------------------------------------------

def torch_like_cnn_state():
    """What ``{k: v.numpy() for k, v in torch_model.state_dict().items()}`` gives for small_cnn."""
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return {
        "0.weight": f(4, 1, 3, 3), "0.bias": f(4),
        "1.weight": f(4), "1.bias": f(4), "1.running_mean": f(4), "1.running_var": np.abs(f(4)) + 0.5,
        "1.num_batches_tracked": np.array(7, dtype=np.int64),
        "3.weight": f(6, 4, 3, 3), "3.bias": f(6),
        "4.weight": f(6), "4.bias": f(6), "4.running_mean": f(6), "4.running_var": np.abs(f(6)) + 0.5,
        "4.num_batches_tracked": np.array(7, dtype=np.int64),
        "8.weight": f(5, 6 * 4 * 4), "8.bias": f(5),
        "10.weight": f(10, 5), "10.bias": f(10),
    }


def cnn_reference(sd, x):
    """The same network's eval-mode forward pass in plain NumPy (float64)."""
    def bn(h, p):
        return ((h - sd[p + ".running_mean"][None, :, None, None]) / np.sqrt(sd[p + ".running_var"][None, :, None, None] + 1e-5)
                * sd[p + ".weight"][None, :, None, None] + sd[p + ".bias"][None, :, None, None])

    h = np.maximum(bn(conv_reference(x, sd["0.weight"], sd["0.bias"], (1, 1), (1, 1)), "1"), 0)
    h = np.maximum(bn(conv_reference(h, sd["3.weight"], sd["3.bias"], (1, 1), (1, 1)), "4"), 0)
    n, c, hh, ww = h.shape
    h = h.reshape(n, c, hh // 2, 2, ww // 2, 2).max(axis=(3, 5)).reshape(n, -1)
    h = np.maximum(h @ sd["8.weight"].T + sd["8.bias"], 0)
    return h @ sd["10.weight"].T + sd["10.bias"]


def test_state_dict_names_and_order_follow_pytorch():
    net = nn.small_cnn(channels=(4, 6), hidden=5, rng=0)
    assert list(net.state_dict()) == list(torch_like_cnn_state())
    sd = net.state_dict()
    assert sd["1.num_batches_tracked"].dtype == np.int64 and sd["1.num_batches_tracked"].shape == ()
    sd["0.weight"][:] = 0  # a copy, not a view
    assert np.any(net[0].weight.data != 0)


def test_load_torch_layout_state_dict_gives_pytorch_outputs():
    net = nn.small_cnn(channels=(4, 6), hidden=5, rng=1)
    sd = torch_like_cnn_state()
    assert net.load_state_dict(sd) == ([], [])
    net.eval()
    x = np.random.default_rng(3).standard_normal((3, 1, 8, 8)).astype(np.float32)
    want = cnn_reference({k: v.astype(np.float64) for k, v in sd.items()}, x.astype(np.float64))
    np.testing.assert_allclose(net(x), want, rtol=1e-4, atol=1e-4)
    assert int(net[1].num_batches_tracked) == 7
    # round trip
    net2 = nn.small_cnn(channels=(4, 6), hidden=5, rng=2)
    net2.load_state_dict(net.state_dict())
    np.testing.assert_array_equal(net2.eval()(x), net(x))


def test_load_state_dict_errors_are_clear():
    net = nn.mlp([4, 3, 2], rng=0)
    sd = net.state_dict()
    missing = {k: v for k, v in sd.items() if k != "2.bias"}
    with pytest.raises(KeyError, match=r"missing keys \['2.bias'\]"):
        net.load_state_dict(missing)
    with pytest.raises(KeyError, match=r"unexpected keys \['9.weight'\]"):
        net.load_state_dict({**sd, "9.weight": np.zeros(3)})
    bad = dict(sd)
    bad["0.weight"] = np.zeros((4, 3))  # transposed
    with pytest.raises(ValueError, match=r"'0.weight': expected shape \(3, 4\), got \(4, 3\)"):
        net.load_state_dict(bad)
    with pytest.raises(TypeError):
        net.load_state_dict({**sd, "0.bias": np.array(["a", "b", "c"])})
    with pytest.raises(TypeError):
        net.load_state_dict([("0.weight", sd["0.weight"])])
    res = net.load_state_dict(missing, strict=False)
    assert res.missing_keys == ["2.bias"] and res.unexpected_keys == []
    # a failed load changes nothing
    before = net.state_dict()
    with pytest.raises(ValueError):
        net.load_state_dict({**sd, "0.bias": np.zeros(3), "2.weight": np.zeros((9, 9))})
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_float64_state_dict_is_cast_to_float32():
    net = nn.Linear(2, 2, rng=0)
    net.load_state_dict({"weight": np.eye(2), "bias": np.zeros(2)})
    assert net.weight.data.dtype == np.float32


def test_sequential_container_and_repr():
    net = nn.mlp([4, 8, 3], batch_norm=True, dropout=0.1, rng=0)
    assert [type(m).__name__ for m in net] == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert "BatchNorm1d" in repr(net) and len(net) == 5
    names = [n for n, _ in net.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"]
    with pytest.raises(TypeError):
        nn.Sequential(lambda x: x)


def test_manual_seed_makes_init_reproducible():
    nn.manual_seed(123)
    a = nn.mlp([5, 4, 3]).state_dict()
    nn.manual_seed(123)
    b = nn.mlp([5, 4, 3]).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = nn.mlp([5, 4, 3], rng=7).state_dict()
    assert not np.array_equal(a["0.weight"], c["0.weight"])


def test_gradcheck_catches_a_wrong_backward():
    class Broken(nn.ReLU):
        def backward(self, grad):
            return grad * self._mask * 1.01

    with pytest.raises(AssertionError, match="numeric"):
        gradcheck(Broken(), spread((3, 4)))


@pytest.mark.parametrize("dtype,pad", [(np.uint8, 128), (np.int8, -3), (np.int8, 0)])
def test_native_im2col_integer_images_pad_with_the_zero_point(dtype, pad):
    """The int8 convolution builds on im2col: integer images, padding filled with the zero point."""
    from hwreg_rs import _native

    info = np.iinfo(dtype)
    x = np.random.default_rng(0).integers(info.min, info.max + 1, (2, 3, 5, 4)).astype(dtype)
    cols = _native.im2col(x, (3, 2), (2, 1), (1, 1), pad)
    assert cols.dtype == dtype
    # reference: pad with the zero point, then take the windows
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=pad)
    from numpy.lib.stride_tricks import sliding_window_view

    win = sliding_window_view(xp, (3, 2), axis=(2, 3))[:, :, ::2, ::1]
    want = win.transpose(0, 2, 3, 1, 4, 5).reshape(cols.shape)
    np.testing.assert_array_equal(cols, want)
    with pytest.raises(ValueError, match="pad_value"):
        _native.im2col(x, (3, 2), (2, 1), (1, 1), 1000)
    with pytest.raises(ValueError, match="pad_value"):
        _native.im2col(x, (3, 2), (2, 1), (1, 1), 0.5)
