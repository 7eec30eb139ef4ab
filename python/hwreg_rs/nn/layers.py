"""Dense layers, activations, normalisation and dropout (PyTorch semantics)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._validate import check_bool, check_float
from .module import Module, Parameter, as_rng
from .registry import register


def kaiming_uniform(shape: tuple[int, ...], fan_in: int, rng: np.random.Generator,
                    dtype: Any = np.float32) -> np.ndarray:
    """PyTorch's default weight init: ``kaiming_uniform_(a=sqrt(5))`` = U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> w = hw.nn.kaiming_uniform((4, 9), 9, np.random.default_rng(0))
    >>> bool(np.abs(w).max() <= 1 / 3)
    True
    """
    # gain = sqrt(2 / (1 + a^2)) with a = sqrt(5); bound = gain * sqrt(3 / fan_in)
    bound = math.sqrt(2.0 / 6.0) * math.sqrt(3.0 / fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def bias_uniform(n: int, fan_in: int, rng: np.random.Generator, dtype: Any = np.float32) -> np.ndarray:
    """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=(n,)).astype(dtype)


MAX_FEATURES = 2**31 - 1  # a size beyond it is refused before any allocation is attempted


def _positive_int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= MAX_FEATURES:
        raise ValueError(f"{name} must be a positive int (at most {MAX_FEATURES}); got {v!r}")
    return int(v)


@register
class Linear(Module):
    """``y = x @ W.T + b`` with PyTorch's layout, init and names (``weight`` (out, in), ``bias`` (out,)).

    The input is ``(..., in_features)``: leading dimensions (batch, sequence)
    are flattened for the product and restored in the output.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of each input and output sample.
    bias : bool, default True
        Learn an additive bias.
    rng : int or numpy.random.Generator, optional
        Source of the initial weights (default: the generator of :func:`manual_seed`).

    Notes
    -----
    ``weight_fake_quant`` (a callable ``w -> w_q``) and ``input_fake_quant``
    (an object with ``forward(x, training)`` and ``backward(grad)``) are hooks
    that quantization-aware training installs; gradients pass straight through
    the weight hook to the float weights.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> layer = hw.nn.Linear(3, 2, rng=0)
    >>> y = layer(np.ones((4, 3), np.float32))
    >>> gx = layer.backward(np.ones_like(y))
    >>> y.shape, layer.weight.grad.shape, gx.shape
    ((4, 2), (2, 3), (4, 3))
    >>> layer(np.ones((4, 5, 3), np.float32)).shape
    (4, 5, 2)
    """

    op_type = "Linear"

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, rng: Any = None) -> None:
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        g = as_rng(rng)
        self.weight = Parameter(kaiming_uniform((self.out_features, self.in_features), self.in_features, g))
        self.bias = Parameter(bias_uniform(self.out_features, self.in_features, g)) if check_bool(bias, "bias") else None
        self.weight_fake_quant: Any = None
        self.input_fake_quant: Any = None

    def effective_weight(self) -> np.ndarray:
        """The weight the forward pass uses (fake-quantized under QAT)."""
        w = self.weight.data
        return w if self.weight_fake_quant is None else self.weight_fake_quant(w)

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    def _check(self, shape: tuple[int, ...]) -> None:
        if len(shape) < 1 or shape[-1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}) expects input (N, {self.in_features}) "
                             f"or (..., {self.in_features}); got shape {tuple(shape)}")

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check(shape)
        return tuple(shape[:-1]) + (self.out_features,)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check(x.shape)
        if self.input_fake_quant is not None:
            x = self.input_fake_quant.forward(x, self.training)
        w = self.effective_weight()
        self._lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        self._x, self._w = x2, w
        y = x2 @ w.T
        if self.bias is not None:
            y += self.bias.data
        return y.reshape(self._lead + (self.out_features,))

    def backward(self, grad: np.ndarray) -> np.ndarray:
        g2 = grad.reshape(-1, self.out_features)
        self.weight.grad = g2.T @ self._x
        if self.bias is not None:
            self.bias.grad = g2.sum(axis=0)
        gx = (g2 @ self._w).reshape(self._lead + (self.in_features,))
        if self.input_fake_quant is not None:
            gx = self.input_fake_quant.backward(gx)
        return gx

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


@register
class ReLU(Module):
    """``max(x, 0)``.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.nn.ReLU()(np.array([-1.0, 2.0]))
    array([0., 2.])
    """

    op_type = "Relu"

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = np.maximum(x, 0)
        self._mask = y > 0
        return y

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return grad * self._mask


@register
class Flatten(Module):
    """Flattens dimensions ``start_dim`` .. last (PyTorch default ``start_dim=1``).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.nn.Flatten()(np.zeros((2, 3, 4, 5))).shape
    (2, 60)
    """

    op_type = "Flatten"

    def __init__(self, start_dim: int = 1) -> None:
        super().__init__()
        if isinstance(start_dim, bool) or not isinstance(start_dim, (int, np.integer)):
            raise TypeError(f"start_dim must be an int; got {start_dim!r}")
        self.start_dim = int(start_dim)

    def config(self) -> dict[str, Any]:
        return {"start_dim": self.start_dim}

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        head = tuple(shape[: self.start_dim])
        return head + (int(np.prod(shape[len(head):], dtype=np.int64)),)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._shape = x.shape
        return x.reshape(x.shape[: self.start_dim] + (-1,))

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return grad.reshape(self._shape)


@register
class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability ``p`` and scale by ``1/(1-p)``.

    Parameters
    ----------
    p : float, default 0.5
        Drop probability in [0, 1).
    rng : int or numpy.random.Generator, optional
        Source of the masks; :class:`hwreg_rs.train.Trainer` reseeds it from its ``seed``.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> d = hw.nn.Dropout(0.5, rng=0)
    >>> y = d(np.ones((1000,), np.float32))
    >>> sorted(set(y.tolist()))
    [0.0, 2.0]
    >>> d.eval()(np.ones(3, np.float32))
    array([1., 1., 1.], dtype=float32)
    """

    op_type = "Dropout"

    def __init__(self, p: float = 0.5, *, rng: Any = None) -> None:
        super().__init__()
        self.p = check_float(p, "p", 0.0, 1.0, hi_open=True)
        self.rng = as_rng(rng) if rng is not None else np.random.default_rng()

    def config(self) -> dict[str, Any]:
        return {"p": self.p}

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        self._mask = (self.rng.random(x.shape, dtype=np.float32) >= self.p).astype(x.dtype) / x.dtype.type(1.0 - self.p)
        return x * self._mask

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return grad if self._mask is None else grad * self._mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _BatchNorm(Module):
    _dims: tuple[int, ...] = ()

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True) -> None:
        super().__init__()
        self.num_features = _positive_int(num_features, "num_features")
        self.eps = check_float(eps, "eps", 0.0, lo_open=True)
        self.momentum = check_float(momentum, "momentum", 0.0, 1.0)
        if check_bool(affine, "affine"):
            self.weight = Parameter(np.ones(num_features, np.float32))
            self.bias = Parameter(np.zeros(num_features, np.float32))
        else:
            self.weight = self.bias = None
        self.register_buffer("running_mean", np.zeros(num_features, np.float32))
        self.register_buffer("running_var", np.ones(num_features, np.float32))
        self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))

    def config(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.weight is not None}

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        self._axes_shape(tuple(shape))
        return tuple(shape)

    def _axes_shape(self, in_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        ndim = len(in_shape)
        if ndim not in self._dims or in_shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) expects a {self._dims}-D input with "
                             f"{self.num_features} channels in dim 1; got shape {in_shape}")
        axes = (0,) + tuple(range(2, ndim))
        shape = (1, self.num_features) + (1,) * (ndim - 2)
        return axes, shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        axes, shape = self._axes_shape(x.shape)
        if self.training:
            n = x.size // self.num_features
            if n < 2:
                raise ValueError(f"BatchNorm in training needs more than one value per channel; got shape {x.shape}")
            mean = x.mean(axis=axes)
            xc = x - mean.reshape(shape)
            var = np.mean(xc * xc, axis=axes)
            m = self.momentum
            self.running_mean[...] = (1 - m) * self.running_mean + m * mean
            self.running_var[...] = (1 - m) * self.running_var + m * var * (n / (n - 1))
            self.num_batches_tracked[...] = self.num_batches_tracked + 1
        else:
            mean, var = self.running_mean, self.running_var
            xc = x - mean.reshape(shape).astype(x.dtype)
        inv = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)
        xhat = xc * inv.reshape(shape)
        self._xhat, self._inv, self._axes, self._shape = xhat, inv, axes, shape
        if self.weight is None:
            return xhat
        return xhat * self.weight.data.reshape(shape) + self.bias.data.reshape(shape)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        axes, shape, xhat, inv = self._axes, self._shape, self._xhat, self._inv
        if self.weight is not None:
            self.weight.grad = (grad * xhat).sum(axis=axes)
            self.bias.grad = grad.sum(axis=axes)
            gxhat = grad * self.weight.data.reshape(shape)
        else:
            gxhat = grad
        if not self.training:
            return gxhat * inv.reshape(shape)
        n = grad.size // self.num_features
        s1 = gxhat.sum(axis=axes).reshape(shape)
        s2 = (gxhat * xhat).sum(axis=axes).reshape(shape)
        return (inv.reshape(shape) / n) * (n * gxhat - s1 - xhat * s2)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.weight is not None}"


@register
class BatchNorm1d(_BatchNorm):
    """Batch normalisation over (N, C) or (N, C, L) inputs; PyTorch names, defaults and running-stat update.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> bn = hw.nn.BatchNorm1d(3)
    >>> y = bn(np.random.default_rng(0).normal(5, 2, (64, 3)).astype(np.float32))
    >>> bool(abs(y.mean()) < 1e-5), list(bn.state_dict())
    (True, ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'])
    """

    op_type = "BatchNorm1d"
    _dims = (2, 3)


@register
class BatchNorm2d(_BatchNorm):
    """Batch normalisation over (N, C, H, W) inputs, per channel.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> bn = hw.nn.BatchNorm2d(2)
    >>> bn(np.ones((4, 2, 3, 3), np.float32)).shape
    (4, 2, 3, 3)
    """

    op_type = "BatchNorm2d"
    _dims = (4,)
