"""Graph ops: the elementwise, normalisation, reduction, matmul and shape layers of imported models.

Each class is one registered op (:mod:`hwreg_rs.nn.registry`) with
``forward``, ``backward``, ``out_shape`` and ``config``; semantics follow
ONNX where it defines the op and PyTorch for gradients and initialisation.
Ops with several inputs take them as separate arguments (``Add()(a, b)``) and
return one gradient per input from ``backward``; integer inputs (indices,
shapes) get ``None``. Float32 in gives float32 out; float64 (used by gradient
checks) works too. LayerNorm, Softmax, LogSoftmax and GELU run float32 inputs
(forward and backward) on the Rust kernels of ``hwreg_rs._native``
(``layer_norm``, ``softmax``, ``log_softmax``, ``gelu`` and their ``*_backward``);
every other dtype takes the NumPy code in this file, which is also the
reference the tests hold the kernels to.

Examples
--------
>>> import numpy as np
>>> from hwreg_rs.nn import ops
>>> add = ops.Add()
>>> y = add(np.ones((2, 3), np.float32), np.arange(3, dtype=np.float32))
>>> ga, gb = add.backward(np.ones_like(y))
>>> y.dtype, ga.shape, gb
(dtype('float32'), (2, 3), array([2., 2., 2.], dtype=float32))
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .. import _native
from .._validate import native_array
from .layers import _positive_int
from .module import Module, Parameter, as_rng
from .registry import register
from .special import erf

Shape = tuple[int, ...]
_INT_MAX = (2**31 - 1, 2**63 - 1)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _reduce_to(grad: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Sum ``grad`` over the axes broadcasting added or stretched, so that it has ``shape``."""
    shape = tuple(shape)
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and grad.shape[lead + i] != 1)
    return grad.sum(axis=axes, keepdims=True).reshape(shape)


def _is_float(x: np.ndarray) -> bool:
    return x.dtype.kind == "f"


def _float(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a float; got {v!r}")
    return float(v)


def _int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {v!r}")
    return int(v)


def _ints(v: Any, name: str) -> list[int]:
    """An int or a sequence of ints as a list of ints."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return [int(v)]
    if not isinstance(v, (list, tuple)) or not all(
            isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in v):
        raise TypeError(f"{name} must be an int or a list of ints; got {v!r}")
    return [int(e) for e in v]


def _axis(axis: int, ndim: int, name: str = "axis") -> int:
    """``axis`` normalised to [0, ndim) (``ValueError`` naming it when out of range)."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for a {ndim}-D input")
    return axis % ndim


def _axes(axes: Sequence[int], ndim: int, name: str = "axes") -> tuple[int, ...]:
    out = tuple(_axis(a, ndim, name) for a in axes)
    if len(set(out)) != len(out):
        raise ValueError(f"{name} has a repeated axis: {list(axes)}")
    return out


def _broadcast(*shapes: Sequence[int]) -> Shape:
    try:
        return tuple(np.broadcast_shapes(*(tuple(s) for s in shapes)))
    except ValueError:
        raise ValueError(f"shapes {[tuple(s) for s in shapes]} do not broadcast together") from None


def _all_f32(*arrays: np.ndarray | None) -> bool:
    """Whether every array given (``None`` skipped) is float32: then the op runs on the native kernels."""
    return all(a is None or a.dtype == np.float32 for a in arrays)


def _rows(x: np.ndarray, ax: int, name: str) -> tuple[np.ndarray, Shape]:
    """``x`` with axis ``ax`` moved last as a C-contiguous ``(rows, d)`` array, and the moved shape."""
    xm = np.moveaxis(x, ax, -1)
    return native_array(xm, name).reshape(math.prod(xm.shape[:-1]), xm.shape[-1]), xm.shape


def _unrows(y: np.ndarray, shape: Shape, ax: int) -> np.ndarray:
    """Inverse of :func:`_rows`."""
    return np.ascontiguousarray(np.moveaxis(y.reshape(shape), -1, ax))


def _check_grad_shape(grad: np.ndarray, shape: Shape) -> None:
    if tuple(grad.shape) != tuple(shape):
        raise ValueError(f"grad has shape {tuple(grad.shape)}; the output has shape {tuple(shape)}")


class _Op(Module):
    """Base of the ops: shows its configuration in ``repr``."""

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())


class _SameShape(_Op):
    def out_shape(self, shape: Shape) -> Shape:
        return tuple(shape)


# ---------------------------------------------------------------------------
# binary elementwise ops (NumPy broadcasting)
# ---------------------------------------------------------------------------

class _Binary(_Op):
    def out_shape(self, a: Shape, b: Shape) -> Shape:
        return _broadcast(a, b)

    def forward(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.asarray(a), np.asarray(b)
        self._a, self._b = a, b
        return self._f(a, b)

    def backward(self, grad: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        ga, gb = self._grads(grad, self._a, self._b)
        return (_reduce_to(ga, self._a.shape) if _is_float(self._a) else None,
                _reduce_to(gb, self._b.shape) if _is_float(self._b) else None)

    def _f(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _grads(self, g: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[Any, Any]:  # pragma: no cover
        raise NotImplementedError


@register
class Add(_Binary):
    """``a + b`` with NumPy broadcasting (either operand may be broadcast).

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Add()(np.ones((2, 1)), np.arange(3.0))
    array([[1., 2., 3.],
           [1., 2., 3.]])
    """

    op_type = "Add"

    def _f(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def _grads(self, g: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[Any, Any]:
        return g, g


@register
class Sub(_Binary):
    """``a - b`` with NumPy broadcasting.

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Sub()(np.array([3.0, 4.0]), np.array(1.0))
    array([2., 3.])
    """

    op_type = "Sub"

    def _f(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a - b

    def _grads(self, g: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[Any, Any]:
        return g, -g


@register
class Mul(_Binary):
    """``a * b`` with NumPy broadcasting.

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Mul()(np.array([[1.0], [2.0]]), np.array([3.0, 4.0]))
    array([[3., 4.],
           [6., 8.]])
    """

    op_type = "Mul"

    def _f(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a * b

    def _grads(self, g: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[Any, Any]:
        return g * b, g * a


@register
class Div(_Binary):
    """``a / b`` with NumPy broadcasting; two integer operands divide with truncation (ONNX).

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Div()(np.array([1.0, 3.0]), np.array(2.0))
    array([0.5, 1.5])
    >>> ops.Div()(np.array([-7, 7]), np.array(2))
    array([-3,  3])
    """

    op_type = "Div"

    def _f(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if not _is_float(a) and not _is_float(b):
            # truncate towards zero like C and ONNX (NumPy's // floors)
            return (np.abs(a) // np.abs(b)) * (np.sign(a) * np.sign(b))
        return a / b

    def _grads(self, g: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[Any, Any]:
        gb = g / b
        return gb, -gb * (a / b)


@register
class Where(_Op):
    """``numpy.where(condition, x, y)`` with broadcasting (ONNX Where, e.g. an attention mask).

    The condition is a bool array and gets no gradient; ``x`` and ``y`` get
    the output gradient where they were chosen, summed back to their shapes.

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> w = ops.Where()
    >>> y = w(np.array([True, False]), np.array([1.0, 2.0]), np.array(-np.inf))
    >>> y, w.backward(np.ones(2))
    (array([  1., -inf]), (None, array([1., 0.]), array(1.)))
    """

    op_type = "Where"

    def out_shape(self, condition: Shape, x: Shape, y: Shape) -> Shape:
        return _broadcast(condition, x, y)

    def forward(self, condition: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        c = np.asarray(condition)
        if c.dtype != np.bool_:
            raise TypeError(f"condition must be a bool array; got dtype {c.dtype}")
        x, y = np.asarray(x), np.asarray(y)
        self.out_shape(c.shape, x.shape, y.shape)
        self._c, self._x, self._y = c, x, y
        return np.where(c, x, y)

    def backward(self, grad: np.ndarray) -> tuple[None, np.ndarray | None, np.ndarray | None]:
        c = self._c
        gx = _reduce_to(np.where(c, grad, 0), self._x.shape) if _is_float(self._x) else None
        gy = _reduce_to(np.where(c, 0, grad), self._y.shape) if _is_float(self._y) else None
        return None, gx, gy


# ---------------------------------------------------------------------------
# unary elementwise ops
# ---------------------------------------------------------------------------

class _Unary(_SameShape):
    """``y = f(x)`` elementwise; ``backward`` is ``grad * f'(x)`` from the cached input and output."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        y = self._f(x)
        self._x, self._y = x, y
        return y

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return grad * self._df(self._x, self._y)

    def _f(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _df(self, x: np.ndarray, y: np.ndarray) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


@register
class Sigmoid(_Unary):
    """``1 / (1 + exp(-x))``, computed without overflow.

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Sigmoid()(np.array([-1000.0, 0.0, 1000.0]))
    array([0. , 0.5, 1. ])
    """

    op_type = "Sigmoid"

    def _f(self, x: np.ndarray) -> np.ndarray:
        return np.exp(-np.logaddexp(0, -x))

    def _df(self, x: np.ndarray, y: np.ndarray) -> Any:
        return y * (1 - y)


@register
class Tanh(_Unary):
    """``tanh(x)``.

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Tanh()(np.array([0.0]))
    array([0.])
    """

    op_type = "Tanh"

    def _f(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x)

    def _df(self, x: np.ndarray, y: np.ndarray) -> Any:
        return 1 - y * y


@register
class Sqrt(_Unary):
    """``sqrt(x)`` (NaN below zero, like NumPy and PyTorch).

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Sqrt()(np.array([4.0, 9.0]))
    array([2., 3.])
    """

    op_type = "Sqrt"

    def _f(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(x)

    def _df(self, x: np.ndarray, y: np.ndarray) -> Any:
        return 0.5 / y


@register
class Exp(_Unary):
    """``exp(x)``.

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Exp()(np.array([0.0]))
    array([1.])
    """

    op_type = "Exp"

    def _f(self, x: np.ndarray) -> np.ndarray:
        return np.exp(x)

    def _df(self, x: np.ndarray, y: np.ndarray) -> Any:
        return y


@register
class Neg(_Unary):
    """``-x``.

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Neg()(np.array([1.0, -2.0]))
    array([-1.,  2.])
    """

    op_type = "Neg"

    def _f(self, x: np.ndarray) -> np.ndarray:
        return -x

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return -grad


@register
class Erf(_Unary):
    """The error function (:func:`hwreg_rs.nn.special.erf`, NumPy only, ~2e-15 absolute error).

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Erf()(np.array([0.0, 10.0]))
    array([0., 1.])
    """

    op_type = "Erf"

    def _f(self, x: np.ndarray) -> np.ndarray:
        return erf(x)

    def _df(self, x: np.ndarray, y: np.ndarray) -> Any:
        return (2 / math.sqrt(math.pi)) * np.exp(-x * x)


@register
class Pow(_Unary):
    """``x ** exponent`` for a constant exponent (ONNX Pow with a constant second input).

    Parameters
    ----------
    exponent : float

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Pow(2.0)(np.array([-3.0, 0.5]))
    array([9.  , 0.25])
    """

    op_type = "Pow"

    def __init__(self, exponent: float) -> None:
        super().__init__()
        self.exponent = _float(exponent, "exponent")

    def config(self) -> dict[str, Any]:
        return {"exponent": self.exponent}

    def _f(self, x: np.ndarray) -> np.ndarray:
        return x ** self.exponent

    def _df(self, x: np.ndarray, y: np.ndarray) -> Any:
        return self.exponent * x ** (self.exponent - 1.0)


@register
class LeakyReLU(_Unary):
    """``x`` for ``x > 0``, else ``alpha * x`` (gradient ``alpha`` at 0, as in PyTorch).

    Parameters
    ----------
    alpha : float, default 0.01
        Slope below zero (ONNX's ``alpha``, PyTorch's ``negative_slope``).

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.LeakyReLU(0.1)(np.array([-2.0, 3.0]))
    array([-0.2,  3. ])
    """

    op_type = "LeakyRelu"

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        self.alpha = _float(alpha, "alpha")

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def _f(self, x: np.ndarray) -> np.ndarray:
        return np.where(x > 0, x, x * self.alpha)

    def _df(self, x: np.ndarray, y: np.ndarray) -> Any:
        return np.where(x > 0, 1.0, self.alpha).astype(x.dtype)


@register
class Clip(_Unary):
    """``min(max(x, min), max)``; ``None`` leaves that side unbounded.

    The gradient is 1 on the closed range ``min <= x <= max`` and 0 outside,
    PyTorch's ``clamp`` convention (its ``hardtanh``, and so :class:`ReLU6`,
    uses the open range instead).

    Parameters
    ----------
    min, max : float or None, default None

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> c = ops.Clip(0.0, 1.0)
    >>> y = c(np.array([-1.0, 0.0, 0.5, 1.0, 2.0]))
    >>> y, c.backward(np.ones(5))
    (array([0. , 0. , 0.5, 1. , 1. ]), array([0., 1., 1., 1., 0.]))
    """

    op_type = "Clip"
    _closed = True  # gradient at the bounds: clamp passes it, hardtanh does not

    def __init__(self, min: float | None = None, max: float | None = None) -> None:  # noqa: A002 - ONNX names
        super().__init__()
        self.min = None if min is None else _float(min, "min")
        self.max = None if max is None else _float(max, "max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min must not exceed max; got min={min!r}, max={max!r}")

    def config(self) -> dict[str, Any]:
        return {"min": self.min, "max": self.max}

    def _f(self, x: np.ndarray) -> np.ndarray:
        y = x
        if self.min is not None:
            y = np.maximum(y, x.dtype.type(self.min))
        if self.max is not None:
            y = np.minimum(y, x.dtype.type(self.max))
        return y if y is not x else x.copy()

    def _df(self, x: np.ndarray, y: np.ndarray) -> Any:
        inside = np.ones(x.shape, bool)
        if self.min is not None:
            inside &= (x >= self.min) if self._closed else (x > self.min)
        if self.max is not None:
            inside &= (x <= self.max) if self._closed else (x < self.max)
        return inside


@register
class ReLU6(Clip):
    """``min(max(x, 0), 6)`` (PyTorch's ReLU6: gradient 0 at exactly 0 and 6, the hardtanh convention).

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> r = ops.ReLU6()
    >>> r(np.array([-1.0, 3.0, 6.0, 9.0])), r.backward(np.ones(4))
    (array([0., 3., 6., 6.]), array([0., 1., 0., 0.]))
    """

    op_type = "ReLU6"
    _closed = False

    def __init__(self) -> None:
        super().__init__(0.0, 6.0)

    def config(self) -> dict[str, Any]:
        return {}


@register
class HardSigmoid(_Unary):
    """``max(0, min(1, alpha * x + beta))`` with ONNX's defaults (PyTorch's Hardsigmoid is ``alpha=1/6``).

    The gradient is ``alpha`` strictly inside (0, 1) and 0 elsewhere, as in PyTorch.

    Parameters
    ----------
    alpha : float, default 0.2
    beta : float, default 0.5

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.HardSigmoid()(np.array([-5.0, 0.0, 1.0, 5.0]))
    array([0. , 0.5, 0.7, 1. ])
    """

    op_type = "HardSigmoid"

    def __init__(self, alpha: float = 0.2, beta: float = 0.5) -> None:
        super().__init__()
        self.alpha = _float(alpha, "alpha")
        self.beta = _float(beta, "beta")

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta}

    def _f(self, x: np.ndarray) -> np.ndarray:
        self._z = x * self.alpha + self.beta
        return np.clip(self._z, 0, 1)

    def _df(self, x: np.ndarray, y: np.ndarray) -> Any:
        return np.where((self._z > 0) & (self._z < 1), self.alpha, 0.0).astype(x.dtype)


@register
class HardSwish(_Unary):
    """``x * relu6(x + 3) / 6`` (PyTorch and ONNX agree; gradient as PyTorch's, ``x/3 + 1/2`` on [-3, 3]).

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.HardSwish()(np.array([-4.0, 0.0, 1.0, 4.0]))
    array([-0.        ,  0.        ,  0.66666667,  4.        ])
    """

    op_type = "HardSwish"

    def _f(self, x: np.ndarray) -> np.ndarray:
        return x * np.clip(x + 3, 0, 6) / 6

    def _df(self, x: np.ndarray, y: np.ndarray) -> Any:
        return np.where(x < -3, 0.0, np.where(x <= 3, x / 3 + 0.5, 1.0)).astype(x.dtype)


@register
class GELU(_Unary):
    """Gaussian error linear unit, PyTorch semantics.

    ``approximate="none"``: ``x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))``;
    ``"tanh"``: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.

    Parameters
    ----------
    approximate : {"none", "tanh"}, default "none"

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> np.round(ops.GELU()(np.array([-1.0, 0.0, 1.0])), 6)
    array([-0.158655,  0.      ,  0.841345])
    """

    op_type = "Gelu"
    _K = math.sqrt(2 / math.pi)

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh'; got {approximate!r}")
        self.approximate = approximate

    def config(self) -> dict[str, Any]:
        return {"approximate": self.approximate}

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        self._on_native = x.dtype == np.float32
        if not self._on_native:
            return super().forward(x)
        self._x = native_array(x, "x")
        self._y = _native.gelu(self._x, self.approximate)
        return self._y

    def backward(self, grad: np.ndarray) -> np.ndarray:
        if self._on_native:
            grad = np.asarray(grad)
            if grad.dtype == np.float32:
                _check_grad_shape(grad, self._x.shape)
                return _native.gelu_backward(self._x, native_array(grad, "grad"), self.approximate)
            self._f(self._x)  # the caches the NumPy derivative reads
        return super().backward(grad)

    def _f(self, x: np.ndarray) -> np.ndarray:
        if self.approximate == "tanh":
            self._t = np.tanh(self._K * (x + 0.044715 * x ** 3))
            return 0.5 * x * (1 + self._t)
        self._cdf = 0.5 * (1 + erf(x / math.sqrt(2)))
        return x * self._cdf

    def _df(self, x: np.ndarray, y: np.ndarray) -> Any:
        if self.approximate == "tanh":
            t = self._t
            return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * self._K * (1 + 3 * 0.044715 * x * x)
        return self._cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


@register
class Softmax(_SameShape):
    """``exp(x) / sum(exp(x))`` along ``axis`` (ONNX opset >= 13, PyTorch ``dim``).

    Parameters
    ----------
    axis : int, default -1

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Softmax()(np.array([[0.0, np.log(3.0)]]))
    array([[0.25, 0.75]])
    """

    op_type = "Softmax"

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        self.axis = _int(axis, "axis")

    def config(self) -> dict[str, Any]:
        return {"axis": self.axis}

    def out_shape(self, shape: Shape) -> Shape:
        _axis(self.axis, len(shape))
        return tuple(shape)

    _kernels = ("softmax", "softmax_backward")

    def forward(self, x: np.ndarray) -> np.ndarray:
        ax = _axis(self.axis, x.ndim)
        self._on_native = x.dtype == np.float32
        if self._on_native:
            x2, shape = _rows(x, ax, "x")
            self._y = _unrows(getattr(_native, self._kernels[0])(x2), shape, ax)
            return self._y
        return self._forward_np(x, ax)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        grad = np.asarray(grad)
        if self._on_native and grad.dtype == np.float32:
            _check_grad_shape(grad, self._y.shape)
            ax = _axis(self.axis, grad.ndim)
            (y2, shape), (g2, _) = _rows(self._y, ax, "y"), _rows(grad, ax, "grad")
            return _unrows(getattr(_native, self._kernels[1])(y2, g2), shape, ax)
        return self._backward_np(grad)

    def _forward_np(self, x: np.ndarray, ax: int) -> np.ndarray:
        e = np.exp(x - x.max(axis=ax, keepdims=True))
        self._y = e / e.sum(axis=ax, keepdims=True)
        return self._y

    def _backward_np(self, grad: np.ndarray) -> np.ndarray:
        y = self._y
        return y * (grad - (grad * y).sum(axis=self.axis, keepdims=True))


@register
class LogSoftmax(Softmax):
    """``x - log(sum(exp(x)))`` along ``axis``, computed stably.

    Parameters
    ----------
    axis : int, default -1

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> np.exp(ops.LogSoftmax()(np.array([[0.0, np.log(3.0)]])))
    array([[0.25, 0.75]])
    """

    op_type = "LogSoftmax"
    _kernels = ("log_softmax", "log_softmax_backward")

    def _forward_np(self, x: np.ndarray, ax: int) -> np.ndarray:
        z = x - x.max(axis=ax, keepdims=True)
        self._y = z - np.log(np.exp(z).sum(axis=ax, keepdims=True))
        return self._y

    def _backward_np(self, grad: np.ndarray) -> np.ndarray:
        return grad - np.exp(self._y) * grad.sum(axis=self.axis, keepdims=True)


# ---------------------------------------------------------------------------
# normalisation and reductions
# ---------------------------------------------------------------------------

@register
class LayerNorm(_SameShape):
    """Layer normalisation over the last ``len(normalized_shape)`` dimensions (PyTorch semantics and names).

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the biased
    variance; ``weight`` starts at ones and ``bias`` at zeros, both of shape
    ``normalized_shape``.

    Parameters
    ----------
    normalized_shape : int or list of int
        Trailing shape normalised over.
    eps : float, default 1e-5
    elementwise_affine : bool, default True
        Learn ``weight`` (and ``bias``).
    bias : bool, default True
        Learn ``bias`` as well (with ``elementwise_affine``).

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ln = ops.LayerNorm(4)
    >>> y = ln(np.array([[1.0, 2.0, 3.0, 4.0]], np.float32))
    >>> list(ln.state_dict()), y.dtype, bool(abs(y.mean()) < 1e-6)
    (['weight', 'bias'], dtype('float32'), True)
    """

    op_type = "LayerNorm"

    def __init__(self, normalized_shape: int | Sequence[int], *, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True) -> None:
        super().__init__()
        shape = _ints(normalized_shape, "normalized_shape")
        if not shape or min(shape) < 1:
            raise ValueError(f"normalized_shape must be a non-empty list of positive ints; got {normalized_shape!r}")
        self.normalized_shape = tuple(shape)
        self.eps = _float(eps, "eps")
        if elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, np.float32))
            self.bias = Parameter(np.zeros(self.normalized_shape, np.float32)) if bias else None
        else:
            self.weight = self.bias = None

    def config(self) -> dict[str, Any]:
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.weight is not None, "bias": self.bias is not None}

    def _axes_of(self, shape: Shape) -> tuple[int, ...]:
        k = len(self.normalized_shape)
        if tuple(shape[len(shape) - k:]) != self.normalized_shape or len(shape) < k:
            raise ValueError(f"LayerNorm({list(self.normalized_shape)}) expects input (..., "
                             f"{', '.join(map(str, self.normalized_shape))}); got shape {tuple(shape)}")
        return tuple(range(len(shape) - k, len(shape)))

    def out_shape(self, shape: Shape) -> Shape:
        self._axes_of(shape)
        return tuple(shape)

    def _affine(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        return (None if self.weight is None else self.weight.data, None if self.bias is None else self.bias.data)

    def forward(self, x: np.ndarray) -> np.ndarray:
        axes = self._axes_of(x.shape)
        w, b = self._affine()
        self._native_cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if _all_f32(x, w, b):
            d = math.prod(self.normalized_shape)
            x2 = native_array(x, "x").reshape(-1, d)
            flat = [None if a is None else native_array(a, n).reshape(d) for a, n in ((w, "weight"), (b, "bias"))]
            y, mean, inv = _native.layer_norm(x2, flat[0], flat[1], self.eps)
            self._native_cache, self._axes, self._in_shape = (x2, mean, inv), axes, x.shape
            return y.reshape(x.shape)
        xc = x - x.mean(axis=axes, keepdims=True)
        inv = 1 / np.sqrt((xc * xc).mean(axis=axes, keepdims=True) + x.dtype.type(self.eps))
        xhat = xc * inv
        self._xhat, self._inv, self._axes = xhat, inv, axes
        if self.weight is None:
            return xhat
        y = xhat * self.weight.data
        return y if self.bias is None else y + self.bias.data

    def backward(self, grad: np.ndarray) -> np.ndarray:
        grad = np.asarray(grad)
        if self._native_cache is not None:
            x2, mean, inv2 = self._native_cache
            _check_grad_shape(grad, self._in_shape)
            if grad.dtype == np.float32:
                w, b = self._affine()
                w2 = None if w is None else native_array(w, "weight").reshape(-1)
                dx, dw, db = _native.layer_norm_backward(native_array(grad, "grad").reshape(x2.shape), x2, mean, inv2,
                                                         w2, b is not None)
                if self.weight is not None:
                    self.weight.grad = dw.reshape(self.normalized_shape)
                    if self.bias is not None:
                        self.bias.grad = db.reshape(self.normalized_shape)
                return dx.reshape(self._in_shape)
            # another dtype of gradient: the NumPy path, from the saved statistics
            keep = self._in_shape[:grad.ndim - len(self._axes)] + (1,) * len(self._axes)
            self._xhat = ((x2 - mean[:, None]) * inv2[:, None]).reshape(self._in_shape)
            self._inv = inv2.reshape(keep)
        xhat, inv, axes = self._xhat, self._inv, self._axes
        lead = tuple(range(grad.ndim - len(axes)))
        if self.weight is not None:
            self.weight.grad = (grad * xhat).sum(axis=lead)
            if self.bias is not None:
                self.bias.grad = grad.sum(axis=lead)
            grad = grad * self.weight.data
        return inv * (grad - grad.mean(axis=axes, keepdims=True)
                      - xhat * (grad * xhat).mean(axis=axes, keepdims=True))


@register
class GlobalAvgPool2d(_Op):
    """Mean over the spatial dimensions, kept as size 1: (N, C, H, W) -> (N, C, 1, 1) (ONNX GlobalAveragePool).

    Any input of rank >= 3 works: every dimension after the channels is averaged.

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.GlobalAvgPool2d()(np.arange(8.0).reshape(1, 2, 2, 2))
    array([[[[1.5]],
    <BLANKLINE>
            [[5.5]]]])
    """

    op_type = "GlobalAveragePool"

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) < 3:
            raise ValueError(f"GlobalAvgPool2d expects input (N, C, H, W); got shape {tuple(shape)}")
        return tuple(shape[:2]) + (1,) * (len(shape) - 2)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.out_shape(x.shape)
        self._in_shape = x.shape
        return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        count = int(np.prod(self._in_shape[2:]))
        return np.broadcast_to(grad / grad.dtype.type(count), self._in_shape).copy()


class _Reduce(_Op):
    def __init__(self, axes: int | Sequence[int] | None = None, *, keepdims: bool = True) -> None:
        super().__init__()
        self.axes = None if axes is None else _ints(axes, "axes")
        if not isinstance(keepdims, (bool, np.bool_, int)):
            raise TypeError(f"keepdims must be a bool; got {keepdims!r}")
        self.keepdims = bool(keepdims)

    def config(self) -> dict[str, Any]:
        return {"axes": self.axes, "keepdims": self.keepdims}

    def _norm_axes(self, ndim: int) -> tuple[int, ...]:
        # ONNX: no axes (or an empty list, with noop_with_empty_axes=0) reduces every axis
        return tuple(range(ndim)) if not self.axes else _axes(self.axes, ndim)

    def out_shape(self, shape: Shape) -> Shape:
        axes = self._norm_axes(len(shape))
        if self.keepdims:
            return tuple(1 if i in axes else s for i, s in enumerate(shape))
        return tuple(s for i, s in enumerate(shape) if i not in axes)

    def forward(self, x: np.ndarray) -> np.ndarray:
        axes = self._norm_axes(x.ndim)
        self._in_shape, self._red = x.shape, axes
        return self._f(x, axes)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        g = grad.reshape(tuple(1 if i in self._red else s for i, s in enumerate(self._in_shape)))
        count = int(np.prod([self._in_shape[i] for i in self._red]))
        return np.broadcast_to(self._scale(g, count), self._in_shape).copy()

    def _f(self, x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _scale(self, g: np.ndarray, count: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


@register
class ReduceMean(_Reduce):
    """Mean over ``axes`` (ONNX ReduceMean; ``axes=None`` reduces all).

    Parameters
    ----------
    axes : int, list of int or None, default None
    keepdims : bool, default True

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.ReduceMean([-1])(np.array([[1.0, 3.0], [5.0, 7.0]]))
    array([[2.],
           [6.]])
    """

    op_type = "ReduceMean"

    def _f(self, x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        return x.mean(axis=axes, keepdims=self.keepdims)

    def _scale(self, g: np.ndarray, count: int) -> np.ndarray:
        return g / g.dtype.type(count) if count else g


Mean = ReduceMean


@register
class ReduceSum(_Reduce):
    """Sum over ``axes`` (ONNX ReduceSum with constant axes; ``axes=None`` reduces all).

    Parameters
    ----------
    axes : int, list of int or None, default None
    keepdims : bool, default True

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.ReduceSum(0, keepdims=False)(np.array([[1.0, 3.0], [5.0, 7.0]]))
    array([ 6., 10.])
    """

    op_type = "ReduceSum"

    def _f(self, x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        return x.sum(axis=axes, keepdims=self.keepdims)

    def _scale(self, g: np.ndarray, count: int) -> np.ndarray:
        return g


# ---------------------------------------------------------------------------
# matmul of two activations
# ---------------------------------------------------------------------------

@register
class MatMul(_Op):
    """``numpy.matmul(a, b)`` of two activations: batch dimensions broadcast, 1-D operands allowed.

    For a constant right operand use :class:`~hwreg_rs.nn.Linear` (its weight is trained and quantized).

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> mm = ops.MatMul()
    >>> y = mm(np.ones((2, 4, 3)), np.ones((3, 5)))
    >>> ga, gb = mm.backward(np.ones_like(y))
    >>> y.shape, ga.shape, gb.shape
    ((2, 4, 5), (2, 4, 3), (3, 5))
    """

    op_type = "MatMul"

    def out_shape(self, a: Shape, b: Shape) -> Shape:
        a, b = tuple(a), tuple(b)
        if not a or not b:
            raise ValueError(f"MatMul needs operands of rank >= 1; got shapes {a} and {b}")
        a2 = (1,) + a if len(a) == 1 else a
        b2 = b + (1,) if len(b) == 1 else b
        if a2[-1] != b2[-2]:
            raise ValueError(f"MatMul: inner dimensions differ; got shapes {a} and {b}")
        out = _broadcast(a2[:-2], b2[:-2]) + (a2[-2], b2[-1])
        if len(b) == 1:
            out = out[:-1]
        if len(a) == 1:
            out = out[:-2] + out[-1:] if len(b) > 1 else out[:-1]
        return out

    def forward(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.asarray(a), np.asarray(b)
        self.out_shape(a.shape, b.shape)
        self._a, self._b = a, b
        return np.matmul(a, b)

    def backward(self, grad: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        a, b, g = self._a, self._b, grad
        # put back the unit dimensions matmul removed for 1-D operands
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        if b.ndim == 1:
            g = np.expand_dims(g, -1)
        if a.ndim == 1:
            g = np.expand_dims(g, -2)
        ga = _reduce_to(g @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape) if _is_float(a) else None
        gb = _reduce_to(np.swapaxes(a2, -1, -2) @ g, b2.shape).reshape(b.shape) if _is_float(b) else None
        return ga, gb


# ---------------------------------------------------------------------------
# shape ops
# ---------------------------------------------------------------------------

class _Restore(_Op):
    """A one-input op whose gradient is the output gradient reshaped to the input's shape."""

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return grad.reshape(self._in_shape)


@register
class Reshape(_Restore):
    """Reshape with ONNX semantics: ``0`` copies the input dimension at that index, one ``-1`` is inferred.

    Parameters
    ----------
    shape : list of int
        Target shape, batch dimension included.
    allowzero : bool, default False
        Read ``0`` as a literal zero-sized dimension instead.

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Reshape([0, -1])(np.zeros((2, 3, 4))).shape
    (2, 12)
    """

    op_type = "Reshape"

    def __init__(self, shape: Sequence[int], *, allowzero: bool = False) -> None:
        super().__init__()
        self.shape = _ints(shape, "shape")
        self.allowzero = bool(allowzero)
        if sum(s == -1 for s in self.shape) > 1 or any(s < -1 for s in self.shape):
            raise ValueError(f"shape may hold one -1 and otherwise sizes >= 0; got {list(shape)!r}")
        if self.allowzero and 0 in self.shape and -1 in self.shape:
            raise ValueError(f"shape cannot hold both 0 and -1 with allowzero; got {list(shape)!r}")

    def config(self) -> dict[str, Any]:
        return {"shape": self.shape, "allowzero": self.allowzero}

    def out_shape(self, shape: Shape) -> Shape:
        shape = tuple(shape)
        out = []
        for i, s in enumerate(self.shape):
            if s == 0 and not self.allowzero:
                if i >= len(shape):
                    raise ValueError(f"shape {self.shape} copies dimension {i} of a {len(shape)}-D input")
                s = shape[i]
            out.append(s)
        size = int(np.prod(shape, dtype=np.int64))
        if -1 in out:
            known = int(np.prod([s for s in out if s != -1], dtype=np.int64))
            if known == 0 or size % known:
                raise ValueError(f"cannot reshape {shape} to shape {self.shape}")
            out[out.index(-1)] = size // known
        if int(np.prod(out, dtype=np.int64)) != size:
            raise ValueError(f"cannot reshape {shape} ({size} elements) to shape {self.shape}")
        return tuple(out)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._in_shape = x.shape
        return x.reshape(self.out_shape(x.shape))


@register
class Transpose(_Op):
    """Permute the dimensions (``perm=None`` reverses them, as in ONNX and NumPy).

    Parameters
    ----------
    perm : list of int, optional

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Transpose([0, 2, 1])(np.zeros((2, 3, 4))).shape
    (2, 4, 3)
    """

    op_type = "Transpose"

    def __init__(self, perm: Sequence[int] | None = None) -> None:
        super().__init__()
        self.perm = None if perm is None else _ints(perm, "perm")

    def config(self) -> dict[str, Any]:
        return {"perm": self.perm}

    def _perm(self, ndim: int) -> tuple[int, ...]:
        if self.perm is None:
            return tuple(range(ndim - 1, -1, -1))
        if sorted(p % ndim if -ndim <= p < ndim else p for p in self.perm) != list(range(ndim)):
            raise ValueError(f"perm must be a permutation of the {ndim} input axes; got {self.perm}")
        return tuple(p % ndim for p in self.perm)

    def out_shape(self, shape: Shape) -> Shape:
        return tuple(shape[p] for p in self._perm(len(shape)))

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._p = self._perm(x.ndim)
        return np.transpose(x, self._p)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return np.transpose(grad, np.argsort(self._p))


@register
class Squeeze(_Restore):
    """Drop size-1 dimensions: those in ``axes``, or all of them when ``axes`` is None.

    Parameters
    ----------
    axes : int, list of int or None, default None

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Squeeze([-1])(np.zeros((2, 1, 3, 1))).shape
    (2, 1, 3)
    """

    op_type = "Squeeze"

    def __init__(self, axes: int | Sequence[int] | None = None) -> None:
        super().__init__()
        self.axes = None if axes is None else _ints(axes, "axes")

    def config(self) -> dict[str, Any]:
        return {"axes": self.axes}

    def out_shape(self, shape: Shape) -> Shape:
        shape = tuple(shape)
        if self.axes is None:
            return tuple(s for s in shape if s != 1)
        axes = _axes(self.axes, len(shape))
        bad = [a for a in axes if shape[a] != 1]
        if bad:
            raise ValueError(f"axes {self.axes} name dimensions of size != 1 in shape {shape}")
        return tuple(s for i, s in enumerate(shape) if i not in axes)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._in_shape = x.shape
        return x.reshape(self.out_shape(x.shape))


@register
class Unsqueeze(_Restore):
    """Insert size-1 dimensions at ``axes``, which index the output (ONNX and ``numpy.expand_dims``).

    Parameters
    ----------
    axes : int or list of int

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Unsqueeze([0, -1])(np.zeros((2, 3))).shape
    (1, 2, 3, 1)
    """

    op_type = "Unsqueeze"

    def __init__(self, axes: int | Sequence[int]) -> None:
        super().__init__()
        self.axes = _ints(axes, "axes")
        if not self.axes:
            raise ValueError("axes must name at least one axis; got []")

    def config(self) -> dict[str, Any]:
        return {"axes": self.axes}

    def out_shape(self, shape: Shape) -> Shape:
        ndim = len(shape) + len(self.axes)
        axes = _axes(self.axes, ndim)
        rest = iter(shape)
        return tuple(1 if i in axes else next(rest) for i in range(ndim))

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._in_shape = x.shape
        return x.reshape(self.out_shape(x.shape))


@register
class Concat(_Op):
    """Join any number of inputs along ``axis``.

    Parameters
    ----------
    axis : int

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> cat = ops.Concat(1)
    >>> y = cat(np.zeros((2, 3)), np.ones((2, 1)))
    >>> y.shape, [g.shape for g in cat.backward(y)]
    ((2, 4), [(2, 3), (2, 1)])
    """

    op_type = "Concat"

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = _int(axis, "axis")

    def config(self) -> dict[str, Any]:
        return {"axis": self.axis}

    def out_shape(self, *shapes: Shape) -> Shape:
        if not shapes:
            raise ValueError("Concat needs at least one input")
        first = tuple(shapes[0])
        ax = _axis(self.axis, len(first))
        for s in shapes[1:]:
            s = tuple(s)
            if len(s) != len(first) or s[:ax] + s[ax + 1:] != first[:ax] + first[ax + 1:]:
                raise ValueError(f"Concat(axis={self.axis}): shapes {[tuple(t) for t in shapes]} differ off the axis")
        return first[:ax] + (sum(s[ax] for s in shapes),) + first[ax + 1:]

    def forward(self, *xs: np.ndarray) -> np.ndarray:
        self.out_shape(*(x.shape for x in xs))
        ax = _axis(self.axis, xs[0].ndim)
        self._sizes, self._floats, self._ax = [x.shape[ax] for x in xs], [_is_float(x) for x in xs], ax
        return np.concatenate(xs, axis=ax)

    def backward(self, grad: np.ndarray) -> Any:
        parts = np.split(grad, np.cumsum(self._sizes)[:-1], axis=self._ax)
        grads = tuple(g if f else None for g, f in zip(parts, self._floats))
        return grads[0] if len(grads) == 1 else grads


@register
class Split(_Op):
    """Split along ``axis`` into parts of the given sizes (multi-output: returns a tuple).

    Parameters
    ----------
    split : list of int
        Sizes of the parts; they must add up to the input's size along ``axis``.
    axis : int, default 0

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> sp = ops.Split([1, 2], axis=1)
    >>> a, b = sp(np.arange(6.0).reshape(2, 3))
    >>> b, sp.backward((None, np.ones((2, 2))))
    (array([[1., 2.],
           [4., 5.]]), array([[0., 1., 1.],
           [0., 1., 1.]]))
    """

    op_type = "Split"

    def __init__(self, split: Sequence[int], *, axis: int = 0) -> None:
        super().__init__()
        self.split = _ints(split, "split")
        if not self.split or min(self.split) < 0:
            raise ValueError(f"split must be a non-empty list of sizes >= 0; got {split!r}")
        self.axis = _int(axis, "axis")

    def config(self) -> dict[str, Any]:
        return {"split": self.split, "axis": self.axis}

    def out_shape(self, shape: Shape) -> tuple[Shape, ...]:
        shape = tuple(shape)
        ax = _axis(self.axis, len(shape))
        if sum(self.split) != shape[ax]:
            raise ValueError(f"split {self.split} does not add up to dimension {ax} of shape {shape}")
        return tuple(shape[:ax] + (s,) + shape[ax + 1:] for s in self.split)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        self._shapes = self.out_shape(x.shape)
        self._dtype, self._ax = x.dtype, _axis(self.axis, x.ndim)
        return tuple(np.split(x, np.cumsum(self.split)[:-1], axis=self._ax))

    def backward(self, grads: Sequence[np.ndarray | None]) -> np.ndarray:
        if len(grads) != len(self.split):
            raise ValueError(f"Split has {len(self.split)} outputs; got {len(grads)} gradients")
        dtype = next((g.dtype for g in grads if g is not None), self._dtype)
        # an unused output contributes a zero gradient
        parts = [np.zeros(s, dtype) if g is None else g for g, s in zip(grads, self._shapes)]
        return np.concatenate(parts, axis=self._ax)


@register
class Slice(_Op):
    """ONNX Slice: ``x[starts:ends:steps]`` on ``axes``, bounds clamped as ONNX specifies.

    Negative starts and ends count from the end, then starts are clamped to
    ``[0, dim]`` for a positive step and ``[0, dim - 1]`` for a negative one, ends
    to ``[0, dim]`` and ``[-1, dim - 1]``: the ONNX spec as ONNX Runtime implements
    it, including its reading of an end of ``INT32_MAX`` or ``INT64_MAX`` as "to
    the end" in either direction. (``onnx.reference`` slices with NumPy, which
    differs when a negative step starts before the beginning or ends at
    ``INT64_MAX``.)

    Parameters
    ----------
    starts, ends : list of int
    axes : list of int, optional
        Default ``0 .. len(starts) - 1``.
    steps : list of int, optional
        Default all 1; none may be 0.

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Slice([1], [2**63 - 1], axes=[1])(np.arange(6).reshape(2, 3))
    array([[1, 2],
           [4, 5]])
    >>> ops.Slice([-1], [-2**63], steps=[-2])(np.arange(5))
    array([4, 2, 0])
    """

    op_type = "Slice"

    def __init__(self, starts: Sequence[int], ends: Sequence[int], *, axes: Sequence[int] | None = None,
                 steps: Sequence[int] | None = None) -> None:
        super().__init__()
        self.starts = _ints(starts, "starts")
        self.ends = _ints(ends, "ends")
        n = len(self.starts)
        self.axes = list(range(n)) if axes is None else _ints(axes, "axes")
        self.steps = [1] * n if steps is None else _ints(steps, "steps")
        for name, v in (("ends", self.ends), ("axes", self.axes), ("steps", self.steps)):
            if len(v) != n:
                raise ValueError(f"{name} must have one entry per start ({n}); got {v}")
        if 0 in self.steps:
            raise ValueError(f"steps must not be 0; got {self.steps}")

    def config(self) -> dict[str, Any]:
        return {"starts": self.starts, "ends": self.ends, "axes": self.axes, "steps": self.steps}

    def _slices(self, shape: Shape) -> tuple[slice, ...]:
        out = [slice(None)] * len(shape)
        for ax, start, end, step in zip(_axes(self.axes, len(shape)), self.starts, self.ends, self.steps):
            dim = shape[ax]
            start = start + dim if start < 0 else start
            if end in _INT_MAX:  # "to the end" whatever the direction (ONNX Runtime reads it so)
                end = dim if step > 0 else -1
            elif end < 0:
                end += dim
            if step > 0:
                start, end = min(max(start, 0), dim), min(max(end, 0), dim)
            else:  # end -1 means "through index 0"
                start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
            out[ax] = slice(start, None if end < 0 else end, step)
        return tuple(out)

    def out_shape(self, shape: Shape) -> Shape:
        return tuple(len(range(d)[s]) for d, s in zip(shape, self._slices(tuple(shape))))

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._in, self._sl = (x.shape, x.dtype), self._slices(x.shape)
        return x[self._sl]

    def backward(self, grad: np.ndarray) -> np.ndarray | None:
        if self._in[1].kind != "f":
            return None
        gx = np.zeros(self._in[0], grad.dtype)
        gx[self._sl] = grad
        return gx


@register
class Expand(_Op):
    """Broadcast to ``shape`` with ONNX's bidirectional rule (output = ``broadcast(x.shape, shape)``).

    Parameters
    ----------
    shape : list of int

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Expand([2, 1, 3])(np.zeros((4, 1))).shape
    (2, 4, 3)
    """

    op_type = "Expand"

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = _ints(shape, "shape")

    def config(self) -> dict[str, Any]:
        return {"shape": self.shape}

    def out_shape(self, shape: Shape) -> Shape:
        return _broadcast(shape, self.shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._in = x
        return np.broadcast_to(x, self.out_shape(x.shape)).copy()

    def backward(self, grad: np.ndarray) -> np.ndarray | None:
        return _reduce_to(grad, self._in.shape) if _is_float(self._in) else None


@register
class Gather(_Op):
    """``numpy.take(x, indices, axis)`` with constant integer indices (negative ones count from the end).

    For a constant table indexed by an activation use :class:`Embedding`.

    Parameters
    ----------
    indices : int or (nested) list of int
    axis : int, default 0

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> g = ops.Gather([0, -1], axis=1)
    >>> y = g(np.arange(6.0).reshape(2, 3))
    >>> y, g.backward(np.ones_like(y))
    (array([[0., 2.],
           [3., 5.]]), array([[1., 0., 1.],
           [1., 0., 1.]]))
    """

    op_type = "Gather"

    def __init__(self, indices: Any, *, axis: int = 0) -> None:
        super().__init__()
        idx = np.asarray(indices)
        if idx.dtype.kind not in "iu" and not (idx.size == 0 and idx.dtype.kind == "f"):
            raise TypeError(f"indices must be ints; got {indices!r}")
        self.indices = idx.astype(np.int64)
        self.axis = _int(axis, "axis")

    def config(self) -> dict[str, Any]:
        return {"indices": self.indices.tolist(), "axis": self.axis}

    def _check(self, shape: Shape) -> int:
        ax = _axis(self.axis, len(shape))
        dim = shape[ax]
        if self.indices.size and (self.indices.min() < -dim or self.indices.max() >= dim):
            raise ValueError(f"indices {self.indices.tolist()} are out of range for dimension {ax} of size {dim}")
        return ax

    def out_shape(self, shape: Shape) -> Shape:
        shape = tuple(shape)
        ax = self._check(shape)
        return shape[:ax] + self.indices.shape + shape[ax + 1:]

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._ax = self._check(x.shape)
        self._in = (x.shape, x.dtype)
        return np.take(x, self.indices, axis=self._ax)

    def backward(self, grad: np.ndarray) -> np.ndarray | None:
        shape, dtype = self._in
        if dtype.kind != "f":
            return None
        gx = np.zeros(shape, grad.dtype)
        np.add.at(gx, (slice(None),) * self._ax + (self.indices,), grad)  # repeated indices accumulate
        return gx


@register
class Identity(_SameShape):
    """Returns its input.

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> ops.Identity()(np.array([1.0]))
    array([1.])
    """

    op_type = "Identity"

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return grad


@register
class Cast(_SameShape):
    """Convert to the NumPy dtype ``to``; the gradient flows back only from float to float.

    Parameters
    ----------
    to : str or numpy dtype
        The target, e.g. ``"float32"``, ``"int64"``, ``"bool"`` (stored as its NumPy name).

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> c = ops.Cast("float64")
    >>> c(np.ones(2, np.float32)).dtype, c.backward(np.ones(2)).dtype
    (dtype('float64'), dtype('float32'))
    """

    op_type = "Cast"

    def __init__(self, to: Any) -> None:
        super().__init__()
        try:
            if to is None:  # np.dtype(None) is float64: too easy to pass by mistake
                raise TypeError
            self.to = np.dtype(to).name
        except TypeError:
            raise ValueError(f"to must name a NumPy dtype; got {to!r}") from None

    def config(self) -> dict[str, Any]:
        return {"to": self.to}

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._from = x.dtype
        return x.astype(self.to)

    def backward(self, grad: np.ndarray) -> np.ndarray | None:
        if self._from.kind != "f" or np.dtype(self.to).kind != "f":
            return None
        return grad.astype(self._from)


# ---------------------------------------------------------------------------
# embedding
# ---------------------------------------------------------------------------

@register
class Embedding(_Op):
    """A lookup table: ``weight[indices]`` (PyTorch's Embedding; ONNX Gather of a constant table).

    ``weight`` has shape ``(num_embeddings, embedding_dim)`` and starts as
    N(0, 1) like PyTorch's. ``backward`` accumulates into ``weight.grad``
    (repeated indices add up) and returns ``None``: indices have no gradient.

    Parameters
    ----------
    num_embeddings, embedding_dim : int
    rng : int or numpy.random.Generator, optional

    Examples
    --------
    >>> import numpy as np
    >>> from hwreg_rs.nn import ops
    >>> emb = ops.Embedding(10, 4, rng=0)
    >>> y = emb(np.array([[1, 2, 1]]))
    >>> emb.backward(np.ones_like(y)) is None, y.shape, emb.weight.grad[1]
    (True, (1, 3, 4), array([2., 2., 2., 2.], dtype=float32))
    """

    op_type = "Embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, *, rng: Any = None) -> None:
        super().__init__()
        self.num_embeddings = _positive_int(num_embeddings, "num_embeddings")
        self.embedding_dim = _positive_int(embedding_dim, "embedding_dim")
        g = as_rng(rng)
        self.weight = Parameter(g.standard_normal((self.num_embeddings, self.embedding_dim)).astype(np.float32))

    def config(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim}

    def out_shape(self, shape: Shape) -> Shape:
        return tuple(shape) + (self.embedding_dim,)

    def forward(self, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"indices must be an integer array; got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            raise ValueError(f"indices must lie in [0, {self.num_embeddings}); got range "
                             f"[{idx.min()}, {idx.max()}]")
        self._idx = idx
        return self.weight.data[idx]

    def backward(self, grad: np.ndarray) -> None:
        gw = np.zeros_like(self.weight.data, dtype=np.result_type(self.weight.data, grad))
        np.add.at(gw, self._idx, grad)
        self.weight.grad = gw
        return None

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


__all__ = [
    "Add", "Cast", "Clip", "Concat", "Div", "Embedding", "Erf", "Exp", "Expand", "GELU", "Gather",
    "GlobalAvgPool2d", "HardSigmoid", "HardSwish", "Identity", "LayerNorm", "LeakyReLU", "LogSoftmax", "MatMul",
    "Mean", "Mul", "Neg", "Pow", "ReLU6", "ReduceMean", "ReduceSum", "Reshape", "Sigmoid", "Slice", "Softmax",
    "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze", "Where",
]
