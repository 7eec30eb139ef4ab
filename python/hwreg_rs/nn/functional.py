"""Sliding-window primitives of the layers: im2col, col2im and 2-D pooling.

float32 arrays go to the Rust kernels (``hwreg_rs._native``); any other float
dtype (float64 for gradient checks) takes the NumPy path below, which is also
the reference the tests compare the kernels against. Layouts are NCHW; the
column matrix has one row per output pixel and one column per
``(channel, ky, kx)`` tap, so a convolution is ``cols @ W.reshape(out, -1).T``.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import _native
from .._validate import native_array

Pair = Tuple[int, int]


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
    if min(t) < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {v!r}")
    return t


def out_size(h: int, w: int, k: Pair, s: Pair, p: Pair) -> Pair:
    """Output height and width of a window over an ``(h, w)`` plane."""
    oh = (h + 2 * p[0] - k[0]) // s[0] + 1
    ow = (w + 2 * p[1] - k[1]) // s[1] + 1
    if h + 2 * p[0] < k[0] or w + 2 * p[1] < k[1]:
        raise ValueError(f"kernel {k} is larger than the padded input ({h}+2*{p[0]}, {w}+2*{p[1]})")
    return oh, ow


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
