"""Sliding-window primitives of the layers: im2col, col2im and 2-D pooling.

float32 arrays go to the Rust kernels (``hwreg_rs._native``); any other float
dtype (float64 for gradient checks) takes the NumPy path below, which is also
the reference the tests compare the kernels against. Layouts are NCHW; the
column matrix has one row per output pixel and one column per
``(channel, ky, kx)`` tap, so a convolution is ``cols @ W.reshape(out, -1).T``.
Grouped, dilated and asymmetrically padded convolutions (:func:`conv2d_taps`)
are NumPy only: one batched matmul per kernel tap, never a loop over channels.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import _native
from .._validate import native_array

Pair = Tuple[int, int]
Pads = Tuple[int, int, int, int]


def pair(v: int | Tuple[int, int], name: str, *, minimum: int = 0) -> Pair:
    """``v`` as an ``(h, w)`` pair of ints >= ``minimum``."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        t = (int(v), int(v))
    elif isinstance(v, (tuple, list)) and len(v) == 2 and all(
        isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in v
    ):
        t = (int(v[0]), int(v[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints; got {v!r}")
    if min(t) < minimum or max(t) > 2**31 - 1:
        raise ValueError(f"{name} must be >= {minimum} (and below 2**31); got {v!r}")
    return t


def pads4(v: int | Tuple[int, ...], name: str) -> Pads:
    """``v`` (an int, an ``(h, w)`` pair or ONNX's ``(top, left, bottom, right)``) as four ints >= 0."""
    if isinstance(v, (tuple, list)) and len(v) == 4:
        if not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in v):
            raise TypeError(f"{name} must be an int, a pair or a 4-tuple of ints; got {v!r}")
        t = tuple(int(e) for e in v)
        if min(t) < 0:
            raise ValueError(f"{name} must be >= 0; got {v!r}")
        return t  # type: ignore[return-value]
    try:
        ph, pw = pair(v, name, minimum=0)
    except TypeError:
        raise TypeError(f"{name} must be an int, a pair or a 4-tuple of ints; got {v!r}") from None
    return ph, pw, ph, pw


def out_size(h: int, w: int, k: Pair, s: Pair, p: Pair | Pads, d: Pair = (1, 1)) -> Pair:
    """Output height and width of a window over an ``(h, w)`` plane.

    ``p`` is ``(ph, pw)`` (both sides) or ``(top, left, bottom, right)``; ``d`` the dilation.
    """
    top, left, bottom, right = (p[0], p[1], p[0], p[1]) if len(p) == 2 else p
    ekh, ekw = d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1
    hp, wp = h + top + bottom, w + left + right
    if hp < ekh or wp < ekw:
        dil = "" if tuple(d) == (1, 1) else f" with dilation {tuple(d)}"
        raise ValueError(f"kernel {tuple(k)}{dil} is larger than the padded input ({h}+{top}+{bottom}, "
                         f"{w}+{left}+{right})")
    return (hp - ekh) // s[0] + 1, (wp - ekw) // s[1] + 1


def _check4(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W); got shape {x.shape}")
    return x


def _native_f32(x: np.ndarray) -> bool:
    return x.dtype == np.float32


def _windows(x: np.ndarray, k: Pair, s: Pair, p: Pair, fill: float) -> np.ndarray:
    """(N, C, OH, OW, kh, kw) strided view of the padded input."""
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])), constant_values=fill)
    return sliding_window_view(xp, k, axis=(2, 3))[:, :, :: s[0], :: s[1]]


def im2col(x: np.ndarray, kernel_size: Pair, stride: Pair = (1, 1), padding: Pair = (0, 0)) -> np.ndarray:
    """Column matrix ``(N*OH*OW, C*kh*kw)`` of ``x`` (N, C, H, W)."""
    _check4(x, "x")
    n, c, h, w = x.shape
    oh, ow = out_size(h, w, kernel_size, stride, padding)
    if _native_f32(x):
        return _native.im2col(native_array(x, "x"), kernel_size, stride, padding)
    return _im2col_np(x, kernel_size, stride, padding)


def _im2col_np(x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair) -> np.ndarray:
    n = x.shape[0]
    win = _windows(x, kernel_size, stride, padding, 0.0)
    return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(n * win.shape[2] * win.shape[3], -1)


def col2im(cols: np.ndarray, input_shape: Tuple[int, int, int, int], kernel_size: Pair,
           stride: Pair = (1, 1), padding: Pair = (0, 0)) -> np.ndarray:
    """Adjoint of :func:`im2col`: sums the columns back into an (N, C, H, W) array."""
    n, c, h, w = input_shape
    oh, ow = out_size(h, w, kernel_size, stride, padding)
    if _native_f32(cols):
        return _native.col2im(native_array(cols, "cols"), tuple(input_shape), kernel_size, stride, padding)
    return _col2im_np(cols, input_shape, kernel_size, stride, padding)


def _col2im_np(cols: np.ndarray, input_shape: Tuple[int, int, int, int], kernel_size: Pair, stride: Pair,
               padding: Pair) -> np.ndarray:
    n, c, h, w = input_shape
    oh, ow = out_size(h, w, kernel_size, stride, padding)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    c6 = cols.reshape(n, oh, ow, c, kh, kw)
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for ky in range(kh):
        for kx in range(kw):
            xp[:, :, ky: ky + sh * oh: sh, kx: kx + sw * ow: sw] += c6[:, :, :, :, ky, kx].transpose(0, 3, 1, 2)
    return np.ascontiguousarray(xp[:, :, ph: ph + h, pw: pw + w])


def _check_pool_padding(k: Pair, p: Pair) -> None:
    if 2 * p[0] > k[0] or 2 * p[1] > k[1]:
        raise ValueError(f"padding {p} must be at most half the kernel size {k}")


def max_pool2d(x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Max pooling; returns the output and PyTorch-style flat indices into each (H, W) plane."""
    _check4(x, "x")
    _check_pool_padding(kernel_size, padding)
    n, c, h, w = x.shape
    oh, ow = out_size(h, w, kernel_size, stride, padding)
    if _native_f32(x):
        return _native.max_pool2d(native_array(x, "x"), kernel_size, stride, padding)
    return _max_pool2d_np(x, kernel_size, stride, padding)


def _max_pool2d_np(x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair) -> tuple[np.ndarray, np.ndarray]:
    n, c, h, w = x.shape
    oh, ow = out_size(h, w, kernel_size, stride, padding)
    win = _windows(x, kernel_size, stride, padding, -np.inf).reshape(n, c, oh, ow, -1)
    arg = np.argmax(win, axis=-1)  # first maximum; NaN counts as the maximum
    out = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    ky, kx = np.divmod(arg, kernel_size[1])
    iy = np.arange(oh)[:, None] * stride[0] + ky - padding[0]
    ix = np.arange(ow)[None, :] * stride[1] + kx - padding[1]
    return np.ascontiguousarray(out), (iy * w + ix).astype(np.int64)


def max_pool2d_backward(grad: np.ndarray, indices: np.ndarray, input_shape: Tuple[int, int, int, int],
                        kernel_size: Pair, stride: Pair, padding: Pair = (0, 0)) -> np.ndarray:
    """Gradient of :func:`max_pool2d` with respect to its input."""
    n, c, h, w = input_shape
    if _native_f32(grad):
        return _native.max_pool2d_backward(native_array(grad, "grad"), native_array(indices, "indices", cast=np.int64),
                                           tuple(input_shape), kernel_size, stride, padding)
    return _max_pool2d_backward_np(grad, indices, input_shape)


def _max_pool2d_backward_np(grad: np.ndarray, indices: np.ndarray, input_shape: Tuple[int, int, int, int]) -> np.ndarray:
    n, c, h, w = input_shape
    gx = np.zeros((n * c, h * w), dtype=grad.dtype)
    rows = np.repeat(np.arange(n * c), grad[0, 0].size)
    np.add.at(gx, (rows, indices.reshape(-1)), grad.reshape(-1))
    return gx.reshape(n, c, h, w)


def avg_pool2d(x: np.ndarray, kernel_size: Pair, stride: Pair, padding: Pair = (0, 0)) -> np.ndarray:
    """Average pooling with PyTorch's default ``count_include_pad=True``."""
    _check4(x, "x")
    _check_pool_padding(kernel_size, padding)
    n, c, h, w = x.shape
    out_size(h, w, kernel_size, stride, padding)
    if _native_f32(x):
        return _native.avg_pool2d(native_array(x, "x"), kernel_size, stride, padding)
    return np.ascontiguousarray(_windows(x, kernel_size, stride, padding, 0.0).mean(axis=(-2, -1)))


def avg_pool2d_backward(grad: np.ndarray, input_shape: Tuple[int, int, int, int], kernel_size: Pair,
                        stride: Pair, padding: Pair = (0, 0)) -> np.ndarray:
    """Gradient of :func:`avg_pool2d` with respect to its input."""
    n, c, h, w = input_shape
    if _native_f32(grad):
        return _native.avg_pool2d_backward(native_array(grad, "grad"), tuple(input_shape), kernel_size, stride, padding)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    oh, ow = grad.shape[2:]
    g = grad / (kh * kw)
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=grad.dtype)
    for ky in range(kh):
        for kx in range(kw):
            xp[:, :, ky: ky + sh * oh: sh, kx: kx + sw * ow: sw] += g
    return np.ascontiguousarray(xp[:, :, ph: ph + h, pw: pw + w])


# ---------------------------------------------------------------------------
# general convolution: groups, dilation, asymmetric padding (NumPy)
# ---------------------------------------------------------------------------

def _taps(kernel_size: Pair, stride: Pair, dilation: Pair, oh: int, ow: int):
    """For each kernel tap ``(ky, kx)``: the strided (rows, cols) slices of the padded input it reads."""
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    for ky in range(kh):
        for kx in range(kw):
            rows = slice(ky * dh, ky * dh + sh * (oh - 1) + 1, sh)
            cols = slice(kx * dw, kx * dw + sw * (ow - 1) + 1, sw)
            yield ky, kx, rows, cols


def conv2d_taps(x: np.ndarray, weight: np.ndarray, stride: Pair = (1, 1), pads: Pads = (0, 0, 0, 0),
                dilation: Pair = (1, 1), groups: int = 1) -> np.ndarray:
    """Grouped, dilated 2-D cross-correlation (no bias) in PyTorch's layout, computed tap by tap.

    ``x`` is (N, C, H, W), ``weight`` (O, C/groups, kh, kw); ``pads`` is
    ``(top, left, bottom, right)``. Each of the kh*kw taps is one batched
    matmul over the groups, so a depthwise 3x3 is 9 vectorised steps.

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import functional as F
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> F.conv2d_taps(x, np.ones((1, 1, 2, 2)), dilation=(2, 2))[0, 0]
    array([[20., 24.],
           [36., 40.]])
    """
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    oh, ow = out_size(h, w, (kh, kw), stride, pads, dilation)
    top, left, bottom, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))).reshape(n, groups, cg, h + top + bottom, -1)
    wg = weight.reshape(groups, o // groups, cg, kh, kw)
    y = np.zeros((n, groups, o // groups, oh * ow), dtype=np.result_type(x, weight))
    for ky, kx, rows, cols in _taps((kh, kw), stride, dilation, oh, ow):
        # (G, O/G, C/G) @ (N, G, C/G, OH*OW) -> (N, G, O/G, OH*OW)
        y += wg[:, :, :, ky, kx] @ xp[:, :, :, rows, cols].reshape(n, groups, cg, -1)
    return y.reshape(n, o, oh, ow)


def conv2d_taps_backward(grad: np.ndarray, x: np.ndarray, weight: np.ndarray, stride: Pair = (1, 1),
                         pads: Pads = (0, 0, 0, 0), dilation: Pair = (1, 1),
                         groups: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Gradients ``(d x, d weight)`` of :func:`conv2d_taps` given the gradient of its output."""
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    oh, ow = grad.shape[2:]
    top, left, bottom, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))).reshape(n, groups, cg, h + top + bottom, -1)
    wg = weight.reshape(groups, o // groups, cg, kh, kw)
    g = grad.reshape(n, groups, o // groups, oh * ow)
    gxp = np.zeros_like(xp, dtype=np.result_type(grad, weight))
    gw = np.zeros(wg.shape, dtype=np.result_type(grad, x))
    gwt = np.swapaxes(wg, 1, 2)  # (G, C/G, O/G, kh, kw)
    for ky, kx, rows, cols in _taps((kh, kw), stride, dilation, oh, ow):
        xs = xp[:, :, :, rows, cols].reshape(n, groups, cg, -1)
        gw[:, :, :, ky, kx] = (g @ np.swapaxes(xs, -1, -2)).sum(axis=0)
        gxp[:, :, :, rows, cols] += (gwt[:, :, :, ky, kx] @ g).reshape(n, groups, cg, oh, ow)
    gx = gxp.reshape(n, c, h + top + bottom, -1)[:, :, top: top + h, left: left + w]
    return np.ascontiguousarray(gx), gw.reshape(weight.shape)
