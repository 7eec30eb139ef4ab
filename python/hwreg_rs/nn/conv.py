"""Conv2d and 2-D pooling layers (NCHW; im2col and pooling run in Rust for float32)."""

from __future__ import annotations

from typing import Any, Tuple, Union

import numpy as np

from .. import _native
from .._validate import check_bool, native_array
from . import functional as F
from .layers import bias_uniform, kaiming_uniform, _positive_int
from .module import Module, Parameter, as_rng
from .registry import register

IntOrPair = Union[int, Tuple[int, int]]
Padding = Union[int, Tuple[int, int], Tuple[int, int, int, int]]


@register
class Conv2d(Module):
    """2-D convolution (cross-correlation, zero padding) in PyTorch's layout, with groups and dilation.

    ``weight`` has shape ``(out_channels, in_channels // groups, kh, kw)``,
    ``bias`` ``(out_channels,)``; initialisation matches PyTorch's defaults
    (``fan_in = in_channels // groups * kh * kw``). ``groups == in_channels``
    is a depthwise convolution. The common case (``groups=1``, ``dilation=1``,
    the same padding on both sides) runs on the native im2col kernels, a
    float32 depthwise convolution on the native depthwise kernels, the
    others on :func:`~hwreg_rs.nn.functional.conv2d_taps` (NumPy).

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and output; both divisible by ``groups``.
    kernel_size : int or (int, int)
    stride : int or (int, int), default 1
    padding : int, (int, int) or (int, int, int, int), default 0
        Zeros added on both sides of (H, W), or ONNX's asymmetric
        ``(top, left, bottom, right)``.
    dilation : int or (int, int), default 1
        Spacing between kernel taps.
    groups : int, default 1
        Input and output channels split into ``groups`` independent convolutions.
    bias : bool, default True
    rng : int or numpy.random.Generator, optional

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> conv = hw.nn.Conv2d(1, 4, 3, padding=1, rng=0)
    >>> conv(np.zeros((2, 1, 8, 8), np.float32)).shape
    (2, 4, 8, 8)
    >>> dw = hw.nn.Conv2d(8, 8, 3, padding=(0, 0, 1, 1), groups=8, dilation=2, rng=0)
    >>> dw.weight.shape, dw.out_shape((2, 8, 9, 9))
    ((8, 1, 3, 3), (2, 8, 6, 6))
    """

    op_type = "Conv2d"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair, *, stride: IntOrPair = 1,
                 padding: Padding = 0, dilation: IntOrPair = 1, groups: int = 1, bias: bool = True,
                 rng: Any = None) -> None:
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.kernel_size = F.pair(kernel_size, "kernel_size", minimum=1)
        self.stride = F.pair(stride, "stride", minimum=1)
        self.pads = F.pads4(padding, "padding")
        top, left, bottom, right = self.pads
        # (ph, pw) when symmetric, as every caller of the classic layer reads it
        self.padding = (top, left) if (top, left) == (bottom, right) else self.pads
        self.dilation = F.pair(dilation, "dilation", minimum=1)
        self.groups = _positive_int(groups, "groups")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"groups={self.groups} must divide in_channels={self.in_channels} and "
                             f"out_channels={self.out_channels}")
        g = as_rng(rng)
        fan_in = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        self.weight = Parameter(kaiming_uniform(shape, fan_in, g))
        self.bias = Parameter(bias_uniform(self.out_channels, fan_in, g)) if check_bool(bias, "bias") else None
        self.weight_fake_quant: Any = None
        self.input_fake_quant: Any = None

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups, "bias": self.bias is not None}

    @property
    def _im2col_path(self) -> bool:
        return self.groups == 1 and self.dilation == (1, 1) and len(self.padding) == 2

    def effective_weight(self) -> np.ndarray:
        """The weight the forward pass uses (fake-quantized under QAT)."""
        w = self.weight.data
        return w if self.weight_fake_quant is None else self.weight_fake_quant(w)

    def _check(self, shape: tuple[int, ...]) -> tuple[int, int]:
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ValueError(f"Conv2d expects input (N, {self.in_channels}, H, W); got shape {tuple(shape)}")
        return F.out_size(shape[2], shape[3], self.kernel_size, self.stride, self.pads, self.dilation)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        oh, ow = self._check(shape)
        return (shape[0], self.out_channels, oh, ow)

    def forward(self, x: np.ndarray) -> np.ndarray:
        oh, ow = self._check(x.shape)
        if self.input_fake_quant is not None:
            x = self.input_fake_quant.forward(x, self.training)
        wq = self.effective_weight()
        self._in_shape = x.shape
        if not self._im2col_path:
            self._x, self._w = x, wq
            b = None if self.bias is None else self.bias.data
            # depthwise (groups == in_channels) in float32: the native kernel, bias fused
            self._dw_native = self.groups == self.in_channels and all(
                a is None or a.dtype == np.float32 for a in (x, wq, b))
            if self._dw_native:
                self._x, self._w = native_array(x, "x"), native_array(wq, "weight")
                return _native.depthwise_conv2d(self._x, self._w, None if b is None else native_array(b, "bias"),
                                                self.stride, self.pads, self.dilation)
            y = F.conv2d_taps(x, wq, self.stride, self.pads, self.dilation, self.groups)
            if self.bias is not None:
                y += self.bias.data.reshape(-1, 1, 1)
            return y
        n = x.shape[0]
        w2 = wq.reshape(self.out_channels, -1)
        pad = (self.pads[0], self.pads[1])  # symmetric on this path
        cols = F.im2col(np.ascontiguousarray(x), self.kernel_size, self.stride, pad)
        y = cols @ w2.T
        if self.bias is not None:
            y += self.bias.data
        self._cols, self._w2 = cols, w2
        return np.ascontiguousarray(y.reshape(n, oh, ow, self.out_channels).transpose(0, 3, 1, 2))

    def backward(self, grad: np.ndarray) -> np.ndarray:
        if not self._im2col_path and self._dw_native and grad.dtype == np.float32:
            gx, self.weight.grad, gb = _native.depthwise_conv2d_backward(
                native_array(grad, "grad"), self._x, self._w, self.stride, self.pads, self.dilation,
                self.bias is not None)
            if self.bias is not None:
                self.bias.grad = gb
            if self.input_fake_quant is not None:
                gx = self.input_fake_quant.backward(gx)
            return gx
        if self.bias is not None:
            self.bias.grad = grad.sum(axis=(0, 2, 3))
        if not self._im2col_path:
            gx, self.weight.grad = F.conv2d_taps_backward(grad, self._x, self._w, self.stride, self.pads,
                                                          self.dilation, self.groups)
        else:
            g2 = np.ascontiguousarray(grad.transpose(0, 2, 3, 1)).reshape(-1, self.out_channels)
            self.weight.grad = (g2.T @ self._cols).reshape(self.weight.data.shape)
            pad = (self.pads[0], self.pads[1])
            gx = F.col2im(g2 @ self._w2, self._in_shape, self.kernel_size, self.stride, pad)
        if self.input_fake_quant is not None:
            gx = self.input_fake_quant.backward(gx)
        return gx

    def extra_repr(self) -> str:
        extra = ""
        if self.dilation != (1, 1):
            extra += f", dilation={self.dilation}"
        if self.groups != 1:
            extra += f", groups={self.groups}"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}{extra}, bias={self.bias is not None}")


class _Pool2d(Module):
    def __init__(self, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0) -> None:
        super().__init__()
        self.kernel_size = F.pair(kernel_size, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else F.pair(stride, "stride", minimum=1)
        self.padding = F.pair(padding, "padding", minimum=0)
        if 2 * self.padding[0] > self.kernel_size[0] or 2 * self.padding[1] > self.kernel_size[1]:
            raise ValueError(f"padding {self.padding} must be at most half the kernel size {self.kernel_size}")

    def config(self) -> dict[str, Any]:
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding)}

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != 4:
            raise ValueError(f"{type(self).__name__} expects input (N, C, H, W); got shape {tuple(shape)}")
        return tuple(shape[:2]) + F.out_size(shape[2], shape[3], self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


@register
class MaxPool2d(_Pool2d):
    """Max pooling (PyTorch semantics; ``stride`` defaults to ``kernel_size``; padding is -inf).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.nn.MaxPool2d(2)(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))
    array([[[[ 5.,  7.],
             [13., 15.]]]], dtype=float32)
    """

    op_type = "MaxPool2d"

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.dtype.kind != "f":  # the window's padding value is -inf, which no integer holds
            raise TypeError(f"MaxPool2d: x must be a floating-point array; got dtype {x.dtype}")
        x = np.ascontiguousarray(x)
        out, self._idx = F.max_pool2d(x, self.kernel_size, self.stride, self.padding)
        self._in_shape = x.shape
        return out

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return F.max_pool2d_backward(np.ascontiguousarray(grad), self._idx, self._in_shape, self.kernel_size,
                                     self.stride, self.padding)


@register
class AvgPool2d(_Pool2d):
    """Average pooling (PyTorch defaults: ``count_include_pad=True``, ``stride=kernel_size``).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.nn.AvgPool2d(2)(np.ones((1, 1, 4, 4), np.float32)).shape
    (1, 1, 2, 2)
    """

    op_type = "AvgPool2d"

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x)
        self._in_shape = x.shape
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return F.avg_pool2d_backward(np.ascontiguousarray(grad), self._in_shape, self.kernel_size, self.stride,
                                     self.padding)
