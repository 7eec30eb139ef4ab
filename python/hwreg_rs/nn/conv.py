"""Conv2d and 2-D pooling layers (NCHW; im2col and pooling run in Rust for float32)."""

from __future__ import annotations

from typing import Any, Tuple, Union

import numpy as np

from . import functional as F
from .layers import bias_uniform, kaiming_uniform, _positive_int
from .module import Module, Parameter, as_rng

IntOrPair = Union[int, Tuple[int, int]]


class Conv2d(Module):
    """2-D convolution (cross-correlation, ``groups=1``, ``dilation=1``, zero padding) in PyTorch's layout.

    ``weight`` has shape ``(out_channels, in_channels, kh, kw)``, ``bias``
    ``(out_channels,)``; initialisation matches PyTorch's defaults.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and output.
    kernel_size : int or (int, int)
    stride : int or (int, int), default 1
    padding : int or (int, int), default 0
    bias : bool, default True
    rng : int or numpy.random.Generator, optional

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> conv = hw.nn.Conv2d(1, 4, 3, padding=1, rng=0)
    >>> conv(np.zeros((2, 1, 8, 8), np.float32)).shape
    (2, 4, 8, 8)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair, *, stride: IntOrPair = 1,
                 padding: IntOrPair = 0, bias: bool = True, rng: Any = None) -> None:
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.kernel_size = F.pair(kernel_size, "kernel_size", minimum=1)
        self.stride = F.pair(stride, "stride", minimum=1)
        self.padding = F.pair(padding, "padding", minimum=0)
        g = as_rng(rng)
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        self.weight = Parameter(kaiming_uniform((self.out_channels, self.in_channels) + self.kernel_size, fan_in, g))
        self.bias = Parameter(bias_uniform(self.out_channels, fan_in, g)) if bias else None
        self.weight_fake_quant: Any = None
        self.input_fake_quant: Any = None

    def effective_weight(self) -> np.ndarray:
        """The weight the forward pass uses (fake-quantized under QAT)."""
        w = self.weight.data
        return w if self.weight_fake_quant is None else self.weight_fake_quant(w)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d expects input (N, {self.in_channels}, H, W); got shape {x.shape}")
        if self.input_fake_quant is not None:
            x = self.input_fake_quant.forward(x, self.training)
        n, _, h, w = x.shape
        oh, ow = F.out_size(h, w, self.kernel_size, self.stride, self.padding)
        wq = self.effective_weight()
        w2 = wq.reshape(self.out_channels, -1)
        cols = F.im2col(np.ascontiguousarray(x), self.kernel_size, self.stride, self.padding)
        y = cols @ w2.T
        if self.bias is not None:
            y += self.bias.data
        self._cols, self._w2, self._in_shape = cols, w2, x.shape
        return np.ascontiguousarray(y.reshape(n, oh, ow, self.out_channels).transpose(0, 3, 1, 2))

    def backward(self, grad: np.ndarray) -> np.ndarray:
        g2 = np.ascontiguousarray(grad.transpose(0, 2, 3, 1)).reshape(-1, self.out_channels)
        self.weight.grad = (g2.T @ self._cols).reshape(self.weight.data.shape)
        if self.bias is not None:
            self.bias.grad = g2.sum(axis=0)
        gcols = g2 @ self._w2
        gx = F.col2im(gcols, self._in_shape, self.kernel_size, self.stride, self.padding)
        if self.input_fake_quant is not None:
            gx = self.input_fake_quant.backward(gx)
        return gx

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}")


class _Pool2d(Module):
    def __init__(self, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0) -> None:
        super().__init__()
        self.kernel_size = F.pair(kernel_size, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else F.pair(stride, "stride", minimum=1)
        self.padding = F.pair(padding, "padding", minimum=0)
        if 2 * self.padding[0] > self.kernel_size[0] or 2 * self.padding[1] > self.kernel_size[1]:
            raise ValueError(f"padding {self.padding} must be at most half the kernel size {self.kernel_size}")

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Max pooling (PyTorch semantics; ``stride`` defaults to ``kernel_size``; padding is -inf).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.nn.MaxPool2d(2)(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4))
    array([[[[ 5.,  7.],
             [13., 15.]]]], dtype=float32)
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x)
        out, self._idx = F.max_pool2d(x, self.kernel_size, self.stride, self.padding)
        self._in_shape = x.shape
        return out

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return F.max_pool2d_backward(np.ascontiguousarray(grad), self._idx, self._in_shape, self.kernel_size,
                                     self.stride, self.padding)


class AvgPool2d(_Pool2d):
    """Average pooling (PyTorch defaults: ``count_include_pad=True``, ``stride=kernel_size``).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.nn.AvgPool2d(2)(np.ones((1, 1, 4, 4), np.float32)).shape
    (1, 1, 2, 2)
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x)
        self._in_shape = x.shape
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return F.avg_pool2d_backward(np.ascontiguousarray(grad), self._in_shape, self.kernel_size, self.stride,
                                     self.padding)
