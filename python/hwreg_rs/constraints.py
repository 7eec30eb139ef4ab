"""Hard constraints for training: each keeps a promise after every optimizer step and can prove it.

A constraint hooks into the training step at fixed points (see
:class:`Constraint`); the :class:`hwreg_rs.train.Trainer` calls them in this
order, whatever order they were given in::

    before_step(step)   pruning: update the masks on its schedule
    forward, loss, backward (QAT fake-quantizes weights and activations inside the layers)
    penalty()           L1 / L2: add λ·∂R/∂w to the gradients, return R
    on_gradients()      pruning mask -> clip by value -> clip by global norm
    optimizer.step()
    after_step()        pruning mask -> clip weights -> max-norm
    check()             every constraint asserts its invariant, raising ConstraintViolation

The projections are ordered so that later ones never undo earlier ones
(scaling and clipping keep zeros zero; scaling a row down keeps it inside
[-c, c]), so any combination holds at once.

Quantization-aware training rounds with the package's own operators
(:func:`hwreg_rs.calibrate`, :func:`hwreg_rs.quantize`,
:func:`hwreg_rs.dequantize`: ONNX round half to even, saturation, PyTorch's
observer formulas), so training and integer inference round the same way.
Gradual pruning takes its masks and schedule from :mod:`hwreg_rs.prune`
(``magnitude_mask``, ``PolynomialDecay``) unless given others.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import numpy as np

from . import prune as _prune
from .nn.conv import Conv2d
from .nn.layers import Linear
from .nn.module import Module, Parameter
from .prune import PolynomialDecay
from .quant import QParams, calibrate, dequantize, quantize
from ._validate import check_array, check_float, check_int

__all__ = [
    "ActivationFakeQuant", "Constraint", "ConstraintViolation", "GradClipNorm", "GradClipValue", "GradualPruning",
    "L1", "L2", "MaxNorm", "PolynomialDecay", "QAT", "WeightClip", "WeightFakeQuant", "fake_quantize",
    "magnitude_mask", "select_params",
]

_EPS32 = float(np.finfo(np.float32).eps)


class ConstraintViolation(AssertionError):
    """Raised by :meth:`Constraint.check` when a constraint's promise does not hold."""


# ---------------------------------------------------------------------------
# the quantization and pruning primitives (switch points to the package ops)
# ---------------------------------------------------------------------------

def _fake_quant(x: np.ndarray, qp: QParams) -> np.ndarray:
    """Quantize then dequantize with the package's ONNX operators (saturating to ``qp``'s grid)."""
    return dequantize(quantize(x, qp), qp).astype(x.dtype, copy=False)


def _magnitude_mask(w: np.ndarray, amount: float) -> np.ndarray:
    """``hwreg_rs.prune.magnitude_mask``: prune ``round(amount * size)`` smallest ``|w|``, lower index first."""
    return _prune.magnitude_mask(w, check_float(amount, "amount", 0.0, 1.0))


def fake_quantize(x: np.ndarray, scale: Any, zero_point: Any = 0, *, bits: int = 8, dtype: str = "int8",
                  axis: int | None = None) -> np.ndarray:
    """Round ``x`` onto the grid ``(q - zero_point) * scale`` with ``q`` on a ``bits``-wide ``dtype`` grid.

    ``dequantize(quantize(x))`` with the package's ONNX operators: round half
    to even, saturate to ``[-2^(b-1), 2^(b-1) - 1]`` (int8) or ``[0, 2^b - 1]``
    (uint8); ``scale`` / ``zero_point`` per tensor or per ``axis``.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.constraints.fake_quantize(np.array([0.25, 0.75, 9.0], np.float32), 0.5, bits=4)
    array([0. , 1. , 3.5], dtype=float32)
    """
    x = check_array(x, "x")
    scale = check_array(scale, "scale").astype(np.float32)
    zp = check_array(zero_point, "zero_point")
    if zp.dtype.kind == "f" and not (np.all(np.isfinite(zp)) and np.all(zp == np.round(zp))):
        raise ValueError(f"zero_point must hold integers; got {zero_point!r}")
    qp = QParams(scale if scale.ndim else np.float32(scale), zp.astype(np.int32) if zp.ndim else int(zp), dtype,
                 axis, _check_bits(bits, "bits"))
    return _fake_quant(x if x.dtype.kind == "f" else x.astype(np.float32), qp)


def magnitude_mask(w: np.ndarray, amount: float) -> np.ndarray:
    """Unstructured magnitude mask (``True`` = keep); :func:`hwreg_rs.prune.magnitude_mask` with a fraction.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.constraints.magnitude_mask(np.array([0.1, -2.0, 0.1, 3.0]), 0.5)
    array([False,  True, False,  True])
    """
    return _magnitude_mask(check_array(w, "w"), amount)


# ---------------------------------------------------------------------------
# base class and parameter selection
# ---------------------------------------------------------------------------

def select_params(model: Module, which: Any = "weights") -> list[tuple[str, Parameter]]:
    """Parameters a constraint applies to.

    ``"weights"``: the ``weight`` of every Linear and Conv2d layer; ``"all"``:
    every parameter; a list of names; or a callable ``(name, param) -> bool``.

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> net = hw.nn.mlp([4, 3, 2], rng=0)
    >>> [n for n, _ in hw.constraints.select_params(net)]
    ['0.weight', '2.weight']
    """
    named = list(model.named_parameters())
    if isinstance(which, str):
        if which == "all":
            return named
        if which == "weights":
            keep = set()
            for mname, m in model.named_modules():
                if isinstance(m, (Linear, Conv2d)):
                    keep.add(f"{mname}.weight" if mname else "weight")
            return [(n, p) for n, p in named if n in keep]
        raise ValueError(f"params must be 'weights', 'all', a list of names or a callable; got {which!r}")
    if callable(which):
        return [(n, p) for n, p in named if which(n, p)]
    names = list(which)
    known = dict(named)
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"unknown parameter names {missing}; the model has {list(known)}")
    return [(n, known[n]) for n in names]


class Constraint:
    """Base class of the hard constraints; every hook is a no-op by default.

    Subclasses set ``grad_order`` / ``project_order`` (lower runs first) and
    implement the hooks they need. :meth:`attach` is called once per fit with
    the model and the optimizer.
    """

    grad_order = 50
    project_order = 50
    params: Any = "weights"

    def attach(self, model: Module, optimizer: Any = None) -> None:
        self.model_ = model
        self.optimizer_ = optimizer
        self.params_ = select_params(model, self.params)

    def before_step(self, step: int) -> None:
        """Start of training step ``step`` (0-based), before the forward pass."""

    def penalty(self) -> float:
        """Add the penalty's gradient to ``param.grad``; return the penalty value."""
        return 0.0

    def on_gradients(self) -> None:
        """Transform ``param.grad`` in place before the optimizer step."""

    def after_step(self) -> None:
        """Project the parameters back onto the feasible set after the optimizer step."""

    def check(self) -> None:
        """Raise :class:`ConstraintViolation` unless the invariant holds."""

    def _attached(self) -> list[tuple[str, Parameter]]:
        if not hasattr(self, "params_"):
            raise RuntimeError(f"{type(self).__name__} is not attached to a model; call attach(model, optimizer)")
        return self.params_


def _bound(c: float, dtype: np.dtype) -> Any:
    """The largest value of ``dtype`` that is <= ``c`` (float32(0.3) is above 0.3)."""
    v = dtype.type(c)
    if float(v) > c:
        v = np.nextafter(v, dtype.type(-np.inf))
    return v


def _positive(v: Any, name: str) -> float:
    return check_float(v, name, 0.0, lo_open=True)


# ---------------------------------------------------------------------------
# clipping and penalties
# ---------------------------------------------------------------------------

class WeightClip(Constraint):
    """Keep every selected weight in ``[-c, c]`` (projection after each step).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> net = hw.nn.Linear(2, 1, rng=0); net.weight.data[:] = [[5.0, -0.5]]
    >>> clip = hw.constraints.WeightClip(1.0); clip.attach(net); clip.after_step(); clip.check()
    >>> net.weight.data
    array([[ 1. , -0.5]], dtype=float32)
    """

    project_order = 10

    def __init__(self, c: float, *, params: Any = "weights") -> None:
        self.c = _positive(c, "c")
        self.params = params

    def after_step(self) -> None:
        for _, p in self._attached():
            b = _bound(self.c, p.data.dtype)
            np.clip(p.data, -b, b, out=p.data)

    def check(self) -> None:
        for name, p in self._attached():
            m = float(np.max(np.abs(p.data))) if p.data.size else 0.0
            if not m <= self.c:
                raise ConstraintViolation(f"WeightClip: max |{name}| = {m} exceeds c = {self.c}")


class MaxNorm(Constraint):
    """Keep the L2 norm of every output neuron's incoming weights ≤ ``max_norm`` (rows of Linear, filters of Conv2d).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> net = hw.nn.Linear(2, 1, rng=0); net.weight.data[:] = [[3.0, 4.0]]
    >>> c = hw.constraints.MaxNorm(1.0); c.attach(net); c.after_step()
    >>> np.round(net.weight.data, 6)
    array([[0.6, 0.8]], dtype=float32)
    """

    project_order = 20

    def __init__(self, max_norm: float, *, params: Any = "weights") -> None:
        self.max_norm = _positive(max_norm, "max_norm")
        self.params = params

    @staticmethod
    def _norms(w: np.ndarray) -> np.ndarray:
        w2 = w.reshape(w.shape[0], -1) if w.ndim > 1 else w.reshape(-1, 1)
        return np.sqrt(np.einsum("ij,ij->i", w2, w2, dtype=np.float64))

    def after_step(self) -> None:
        for _, p in self._attached():
            norms = self._norms(p.data)
            over = norms > self.max_norm
            if over.any():
                shape = (-1,) + (1,) * (p.data.ndim - 1)
                scale = np.where(over, self.max_norm / np.maximum(norms, 1e-30), 1.0)
                p.data *= scale.astype(p.data.dtype).reshape(shape)
                # float32 rounding can leave a norm a hair above the bound: nudge those rows down
                for _ in range(8):
                    still = self._norms(p.data) > self.max_norm
                    if not still.any():
                        break
                    p.data *= np.where(still, 1 - 2 * _EPS32, 1.0).astype(p.data.dtype).reshape(shape)

    def check(self) -> None:
        for name, p in self._attached():
            m = float(self._norms(p.data).max()) if p.data.size else 0.0
            if not m <= self.max_norm:
                raise ConstraintViolation(f"MaxNorm: a neuron of {name} has norm {m} > {self.max_norm}")


class GradClipValue(Constraint):
    """Clip every gradient element to ``[-clip_value, clip_value]`` (``torch.nn.utils.clip_grad_value_``).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> net = hw.nn.Linear(2, 1, rng=0); net.weight.grad = np.array([[3.0, -0.1]], np.float32)
    >>> c = hw.constraints.GradClipValue(1.0); c.attach(net); c.on_gradients()
    >>> net.weight.grad
    array([[ 1. , -0.1]], dtype=float32)
    """

    grad_order = 20

    def __init__(self, clip_value: float, *, params: Any = "all") -> None:
        self.clip_value = _positive(clip_value, "clip_value")
        self.params = params

    def on_gradients(self) -> None:
        for _, p in self._attached():
            b = _bound(self.clip_value, p.grad.dtype)
            np.clip(p.grad, -b, b, out=p.grad)

    def check(self) -> None:
        for name, p in self._attached():
            m = float(np.max(np.abs(p.grad))) if p.grad.size else 0.0
            if not m <= self.clip_value:
                raise ConstraintViolation(f"GradClipValue: max |grad {name}| = {m} > {self.clip_value}")


class GradClipNorm(Constraint):
    """Scale all selected gradients together so their global L2 norm is ≤ ``max_norm`` (``clip_grad_norm_``).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> net = hw.nn.Linear(2, 1, bias=False, rng=0); net.weight.grad = np.array([[3.0, 4.0]], np.float32)
    >>> c = hw.constraints.GradClipNorm(1.0); c.attach(net); c.on_gradients()
    >>> np.round(net.weight.grad, 4)
    array([[0.6, 0.8]], dtype=float32)
    """

    grad_order = 30

    def __init__(self, max_norm: float, *, params: Any = "all") -> None:
        self.max_norm = _positive(max_norm, "max_norm")
        self.params = params

    def _total(self) -> float:
        return math.sqrt(sum(float(np.vdot(p.grad, p.grad)) for _, p in self._attached()))

    def on_gradients(self) -> None:
        total = self._total()
        coef = self.max_norm / (total + 1e-6)
        if coef < 1.0:
            for _, p in self._attached():
                p.grad *= p.grad.dtype.type(coef)
            # float32 rounding can leave the norm a hair above the bound: nudge it down
            for _ in range(8):
                if self._total() <= self.max_norm:
                    break
                for _, p in self._attached():
                    p.grad *= p.grad.dtype.type(1 - 2 * _EPS32)

    def check(self) -> None:
        total = self._total()
        if not total <= self.max_norm:
            raise ConstraintViolation(f"GradClipNorm: global gradient norm {total} > {self.max_norm}")


class _Penalty(Constraint):
    grad_order = 0

    def __init__(self, strength: float, *, params: Any = "weights") -> None:
        self.strength = check_float(strength, "strength", 0.0)
        self.params = params
        self.last_penalty_: float | None = None

    def check(self) -> None:
        v = self.last_penalty_
        if v is None or not (v >= 0 and math.isfinite(v)):
            raise ConstraintViolation(f"{type(self).__name__}: penalty not applied this step or invalid ({v!r})")


class L1(_Penalty):
    """L1 penalty ``strength · Σ|w|``, added to the loss and (as ``strength · sign(w)``) to the gradients.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> net = hw.nn.Linear(2, 1, rng=0); net.weight.data[:] = [[1.0, -2.0]]; net.zero_grad()
    >>> pen = hw.constraints.L1(0.1); pen.attach(net); round(pen.penalty(), 6)
    0.3
    >>> net.weight.grad
    array([[ 0.1, -0.1]], dtype=float32)
    """

    def penalty(self) -> float:
        total = 0.0
        for _, p in self._attached():
            total += float(np.abs(p.data).sum(dtype=np.float64))
            p.grad = p.grad + p.data.dtype.type(self.strength) * np.sign(p.data)
        self.last_penalty_ = self.strength * total
        return self.last_penalty_


class L2(_Penalty):
    """L2 penalty ``strength · Σw²``, added to the loss and (as ``2 · strength · w``) to the gradients.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> net = hw.nn.Linear(2, 1, rng=0); net.weight.data[:] = [[1.0, -2.0]]; net.zero_grad()
    >>> pen = hw.constraints.L2(0.1); pen.attach(net); round(pen.penalty(), 6)
    0.5
    """

    def penalty(self) -> float:
        total = 0.0
        for _, p in self._attached():
            total += float(np.vdot(p.data, p.data))
            p.grad = p.grad + p.data.dtype.type(2 * self.strength) * p.data
        self.last_penalty_ = self.strength * total
        return self.last_penalty_


# ---------------------------------------------------------------------------
# quantization-aware training
# ---------------------------------------------------------------------------

def _check_bits(bits: Any, name: str) -> int:
    return check_int(bits, name, 2, 8)


class WeightFakeQuant:
    """Symmetric fake quantization of a weight (per output channel by default); a callable ``w -> w_q``.

    Parameters come from :func:`hwreg_rs.calibrate` (``method="minmax"``,
    symmetric int8 grid of ``bits`` bits): PyTorch's symmetric min/max
    observer, ``scale = max(|min|, |max|) / ((qmax - qmin) / 2)``, zero point 0
    (so pruned zeros stay exactly zero); rounding is :func:`hwreg_rs.quantize`'s.
    """

    def __init__(self, bits: int = 8, *, per_channel: bool = True, power_of_two: bool = False) -> None:
        self.bits = _check_bits(bits, "bits")
        self.qmin, self.qmax = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        self.per_channel = bool(per_channel)
        self.power_of_two = bool(power_of_two)

    def qparams(self, w: np.ndarray) -> QParams:
        """The quantization parameters of ``w`` (per channel along axis 0, or per tensor)."""
        w = check_array(w, "w")
        axis = 0 if self.per_channel and w.ndim > 1 else None
        return calibrate(w, method="minmax", dtype="int8", symmetric=True, axis=axis, bits=self.bits,
                         power_of_two=self.power_of_two)

    def scale_for(self, w: np.ndarray) -> np.ndarray:
        """Scales shaped to broadcast against ``w`` (``(out, 1, ...)`` per channel, ``()`` per tensor)."""
        qp = self.qparams(w)
        scale = np.asarray(qp.scale, dtype=np.float32)
        return scale.reshape((-1,) + (1,) * (w.ndim - 1)) if qp.axis is not None else scale

    def __call__(self, w: np.ndarray) -> np.ndarray:
        qp = self.qparams(w)
        self.qparams_ = qp
        self.scale_ = np.asarray(qp.scale).reshape((-1,) + (1,) * (w.ndim - 1)) if qp.axis is not None \
            else np.asarray(qp.scale)
        return _fake_quant(w, qp)


class ActivationFakeQuant:
    """Asymmetric fake quantization of an activation with a moving-average min/max observer.

    PyTorch's ``MovingAverageMinMaxObserver``: the first training batch sets
    ``min``/``max``, later ones move them by ``averaging_constant``; the range
    always includes 0; ``[qmin, qmax] = [0, 2^b - 1]``. In evaluation the
    observed range is frozen (inputs pass through unchanged until a training
    batch has been seen). The backward pass is the straight-through
    estimator, zero where the input was clipped.
    """

    def __init__(self, bits: int = 8, *, averaging_constant: float = 0.01, power_of_two: bool = False) -> None:
        self.bits = _check_bits(bits, "bits")
        self.qmin, self.qmax = 0, 2**self.bits - 1
        self.averaging_constant = check_float(averaging_constant, "averaging_constant", 0.0, 1.0, lo_open=True)
        self.power_of_two = bool(power_of_two)
        self.min_: float | None = None
        self.max_: float | None = None

    def qparams(self) -> tuple[float, int]:
        """``(scale, zero_point)`` of the observed range (:func:`hwreg_rs.calibrate`'s affine formula)."""
        qp = self._qp()
        return float(qp.scale), int(qp.zero_point)

    def _qp(self) -> QParams:
        if self.min_ is None or self.max_ is None:
            raise RuntimeError("the activation observer has not seen any training batch")
        return calibrate(np.array([self.min_, self.max_], np.float32), method="minmax", dtype="uint8",
                         symmetric=False, bits=self.bits, power_of_two=self.power_of_two)

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        if training and x.size:
            bmin, bmax = float(x.min()), float(x.max())
            if self.min_ is None or self.max_ is None:
                self.min_, self.max_ = bmin, bmax
            else:
                c = self.averaging_constant
                self.min_ += c * (bmin - self.min_)
                self.max_ += c * (bmax - self.max_)
        if self.min_ is None:
            self._mask = None
            return x
        qp = self._qp()
        scale, zp = float(qp.scale), int(qp.zero_point)
        lo, hi = (qp.qmin - zp) * scale, (qp.qmax - zp) * scale
        self._mask = (x >= lo) & (x <= hi)
        return _fake_quant(x, qp)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return grad if self._mask is None else grad * self._mask


class QAT(Constraint):
    """Quantization-aware training: fake-quantized weights and activations with a straight-through estimator.

    Every selected Linear / Conv2d layer gets a :class:`WeightFakeQuant` on
    its weight (symmetric, per output channel) and an
    :class:`ActivationFakeQuant` on its input (asymmetric, moving-average
    observer); the forward pass sees only grid values, gradients reach the
    float weights unchanged. The hooks stay installed after training, so the
    model evaluates exactly as the integer runtime will (call :meth:`remove`
    to take them out).

    Parameters
    ----------
    weight_bits : int in [2, 8], default 8
    activation_bits : int in [2, 8] or None, default 8
        ``None`` leaves activations in float.
    per_channel : bool, default True
    power_of_two : bool, default False
        Round every scale up to a power of two (shift-only rescaling).
    averaging_constant : float, default 0.01
    layers : "all", list of layer names, or callable(name, layer) -> bool

    Invariant: every layer's effective weight lies on its grid, i.e.
    ``w_q / scale`` is an integer in ``[qmin, qmax]`` (and ``log2(scale)`` an
    integer with ``power_of_two``); observed activation ranges are finite.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> net = hw.nn.mlp([4, 8, 3], rng=0)
    >>> qat = hw.constraints.QAT(weight_bits=4); qat.attach(net)
    >>> _ = net(np.random.default_rng(0).random((16, 4), dtype=np.float32)); qat.check()
    >>> len(np.unique(net[0].effective_weight()[0])) <= 16
    True
    """

    def __init__(self, *, weight_bits: int = 8, activation_bits: int | None = 8, per_channel: bool = True,
                 power_of_two: bool = False, averaging_constant: float = 0.01, layers: Any = "all") -> None:
        self.weight_bits = _check_bits(weight_bits, "weight_bits")
        self.activation_bits = None if activation_bits is None else _check_bits(activation_bits, "activation_bits")
        self.per_channel = bool(per_channel)
        self.power_of_two = bool(power_of_two)
        self.averaging_constant = check_float(averaging_constant, "averaging_constant", 0.0, 1.0, lo_open=True)
        self.layers = layers

    def _select_layers(self, model: Module) -> dict[str, Module]:
        out = {}
        for name, m in model.named_modules():
            if not isinstance(m, (Linear, Conv2d)):
                continue
            if self.layers == "all" or (callable(self.layers) and self.layers(name, m)) or (
                    not isinstance(self.layers, str) and not callable(self.layers) and name in self.layers):
                out[name] = m
        if not out:
            raise ValueError("QAT found no Linear or Conv2d layer to quantize")
        return out

    def attach(self, model: Module, optimizer: Any = None) -> None:
        self.model_ = model
        self.optimizer_ = optimizer
        self.params_ = []
        self.layers_ = self._select_layers(model)
        for m in self.layers_.values():
            wfq = getattr(m, "weight_fake_quant", None)
            if not (isinstance(wfq, WeightFakeQuant) and wfq.bits == self.weight_bits):
                m.weight_fake_quant = WeightFakeQuant(self.weight_bits, per_channel=self.per_channel,
                                                      power_of_two=self.power_of_two)
            if self.activation_bits is None:
                m.input_fake_quant = None
            else:
                afq = getattr(m, "input_fake_quant", None)
                if not (isinstance(afq, ActivationFakeQuant) and afq.bits == self.activation_bits):
                    m.input_fake_quant = ActivationFakeQuant(self.activation_bits,
                                                             averaging_constant=self.averaging_constant,
                                                             power_of_two=self.power_of_two)

    def remove(self) -> None:
        """Take the fake-quant hooks out of the layers (back to float)."""
        for m in getattr(self, "layers_", {}).values():
            m.weight_fake_quant = None
            m.input_fake_quant = None

    def quantized_layers(self) -> dict[str, dict[str, Any]]:
        """Integer weights and quantization parameters of every layer (what an int runtime needs).

        Returns ``{layer name: {"weight_q": int8 array, "weight_scale": array, "weight_bits": int,
        "input_scale": float or None, "input_zero_point": int or None, "activation_bits": int or None}}``.
        """
        out = {}
        for name, m in self._layers():
            fq: WeightFakeQuant = m.weight_fake_quant
            w = m.weight.data
            qp = fq.qparams(w)
            q = quantize(w, qp)
            afq = m.input_fake_quant
            s, zp = afq.qparams() if afq is not None and afq.min_ is not None else (None, None)
            out[name] = {"weight_q": q, "weight_scale": np.asarray(qp.scale, np.float32).reshape(-1),
                         "weight_qparams": qp, "weight_bits": fq.bits, "input_scale": s, "input_zero_point": zp,
                         "activation_bits": None if afq is None else afq.bits}
        return out

    def _layers(self) -> list[tuple[str, Module]]:
        if not hasattr(self, "layers_"):
            raise RuntimeError("QAT is not attached to a model; call attach(model)")
        return list(self.layers_.items())

    def check(self) -> None:
        for name, m in self._layers():
            fq = m.weight_fake_quant
            if not isinstance(fq, WeightFakeQuant):
                raise ConstraintViolation(f"QAT: layer {name!r} lost its weight fake-quant hook")
            wq = m.effective_weight()
            scale = fq.scale_for(m.weight.data).astype(np.float64)
            if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
                raise ConstraintViolation(f"QAT: layer {name!r} has an invalid weight scale")
            q = wq.astype(np.float64) / scale
            off = float(np.max(np.abs(q - np.rint(q)))) if q.size else 0.0
            if off > 1e-3 or (q.size and (np.rint(q).min() < fq.qmin or np.rint(q).max() > fq.qmax)):
                raise ConstraintViolation(
                    f"QAT: weights of {name!r} are off their {fq.bits}-bit grid (max distance {off:.3g} steps)")
            if fq.power_of_two:
                e = np.log2(scale)
                if not np.allclose(e, np.rint(e), atol=1e-9):
                    raise ConstraintViolation(f"QAT: a weight scale of {name!r} is not a power of two")
            afq = m.input_fake_quant
            if self.activation_bits is not None:
                if not isinstance(afq, ActivationFakeQuant):
                    raise ConstraintViolation(f"QAT: layer {name!r} lost its activation fake-quant hook")
                if afq.min_ is not None and not (math.isfinite(afq.min_) and math.isfinite(afq.max_)
                                                 and afq.min_ <= afq.max_):
                    raise ConstraintViolation(f"QAT: activation range of {name!r} is invalid "
                                              f"({afq.min_}, {afq.max_})")


# ---------------------------------------------------------------------------
# gradual pruning
# ---------------------------------------------------------------------------

class GradualPruning(Constraint):
    """Prune weights gradually on a schedule; pruned weights, their gradients and optimizer state stay zero.

    At every update step of ``schedule`` each selected weight gets a new mask
    ``mask_fn(w, amount=s_t)`` (magnitude by default: prune the
    ``round(s_t · size)`` smallest ``|w|``); between updates the masks are
    re-applied to the gradients before and to the weights after every
    optimizer step, and the optimizer's state arrays are zeroed under the mask.

    Parameters
    ----------
    final_sparsity : float, optional
        Target fraction of zeros (with ``end_step``); or give ``schedule``.
    end_step : int, optional
        Step at which ``final_sparsity`` is reached.
    initial_sparsity : float, default 0.0
    begin_step : int, default 0
    frequency : int, default 10
        Steps between mask updates.
    schedule : callable ``schedule(step) -> sparsity`` with ``should_update(step)``, optional
        Overrides the four arguments above; the default is
        :class:`hwreg_rs.prune.PolynomialDecay` (Zhu & Gupta: ``s_t = s_f + (s_i - s_f)(1 - p)^3``).
        When the schedule has ``end_step`` and ``final_sparsity``, the masks are
        also updated at ``end_step`` so the final sparsity is reached exactly even
        if ``frequency`` does not divide the pruning window.
    mask_fn : callable ``(w, amount) -> bool mask``, optional
        ``True`` keeps a weight (default: :func:`hwreg_rs.prune.magnitude_mask`).
    params : see :func:`select_params`, default "weights"

    Invariant: every masked weight, its gradient and its optimizer state are 0.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> net = hw.nn.mlp([8, 16, 4], rng=0)
    >>> prune = hw.constraints.GradualPruning(0.5, end_step=1, frequency=1)
    >>> prune.attach(net); prune.before_step(1); prune.check()
    >>> float((net[0].weight.data == 0).mean())
    0.5
    """

    grad_order = 10
    project_order = 0

    def __init__(self, final_sparsity: float | None = None, *, end_step: int | None = None,
                 initial_sparsity: float = 0.0, begin_step: int = 0, frequency: int = 10, schedule: Any = None,
                 mask_fn: Callable[..., np.ndarray] | None = None, params: Any = "weights") -> None:
        if schedule is None:
            if final_sparsity is None or end_step is None:
                raise ValueError("give final_sparsity and end_step, or a schedule")
            for v, n in ((initial_sparsity, "initial_sparsity"), (final_sparsity, "final_sparsity")):
                check_float(v, n, 0.0, 1.0, hi_open=True)
            for v, n in ((end_step, "end_step"), (begin_step, "begin_step"), (frequency, "frequency")):
                check_int(v, n)
            if int(end_step) <= int(begin_step) or int(begin_step) < 0 or int(frequency) < 1:
                raise ValueError(f"need 0 <= begin_step < end_step and frequency >= 1; "
                                 f"got {begin_step}, {end_step}, {frequency}")
            schedule = PolynomialDecay(float(initial_sparsity), float(final_sparsity), int(begin_step),
                                       int(end_step), frequency=int(frequency))
        if not (callable(schedule) and callable(getattr(schedule, "should_update", None))):
            raise TypeError("schedule must be callable as schedule(step) and have should_update(step)")
        self.schedule = schedule
        self.mask_fn = mask_fn
        self.params = params

    def attach(self, model: Module, optimizer: Any = None) -> None:
        old = getattr(self, "masks_", None)
        super().attach(model, optimizer)
        self.masks_: dict[str, np.ndarray] = {}
        for name, p in self.params_:
            if old is not None and name in old and old[name].shape == p.data.shape:
                self.masks_[name] = old[name]
            else:
                self.masks_[name] = np.ones(p.data.shape, dtype=bool)
        self.sparsity_ = 0.0 if old is None else getattr(self, "sparsity_", 0.0)
        self._apply_all()

    def _mask_for(self, w: np.ndarray, amount: float) -> np.ndarray:
        fn = self.mask_fn if self.mask_fn is not None else _magnitude_mask
        mask = np.asarray(fn(w, amount))
        if mask.shape != w.shape or mask.dtype != np.bool_:
            raise ValueError(f"mask_fn must return a bool array of shape {w.shape}; got {mask.dtype} {mask.shape}")
        return mask

    def update_masks(self, sparsity: float) -> None:
        """Recompute every mask at ``sparsity`` and apply it (weights, gradients, optimizer state)."""
        for name, p in self._attached():
            # pruned weights are exactly zero, so the magnitude order keeps them pruned
            self.masks_[name] = self._mask_for(p.data, sparsity) & self.masks_[name] if sparsity > 0 else self.masks_[name]
        self.sparsity_ = float(sparsity)
        self._apply_all()

    def _apply_all(self) -> None:
        for name, p in self.params_:
            mask = self.masks_[name]
            p.data *= mask
            p.grad = p.grad * mask
            if self.optimizer_ is not None:
                for arr in self.optimizer_.state_arrays(p):
                    arr *= mask

    def before_step(self, step: int) -> None:
        end = getattr(self.schedule, "end_step", None)
        final = getattr(self.schedule, "final_sparsity", None)
        if end is not None and final is not None and step == end:
            self.update_masks(float(final))
        elif self.schedule.should_update(step):
            self.update_masks(float(self.schedule(step)))

    def on_gradients(self) -> None:
        for name, p in self._attached():
            p.grad *= self.masks_[name]

    def after_step(self) -> None:
        for name, p in self._attached():
            p.data *= self.masks_[name]

    def sparsity(self) -> dict[str, float]:
        """Fraction of zeros in every selected weight."""
        return {name: float(np.mean(p.data == 0)) for name, p in self._attached()}

    def check(self) -> None:
        for name, p in self._attached():
            off = ~self.masks_[name]
            if not off.any():
                continue
            if np.any(p.data[off] != 0):
                raise ConstraintViolation(f"GradualPruning: pruned weights of {name} are not zero")
            if np.any(p.grad[off] != 0):
                raise ConstraintViolation(f"GradualPruning: pruned gradients of {name} are not zero")
            if self.optimizer_ is not None:
                for arr in self.optimizer_.state_arrays(p):
                    if np.any(arr[off] != 0):
                        raise ConstraintViolation(f"GradualPruning: optimizer state of pruned {name} is not zero")


def sort_for_gradients(constraints: Iterable[Constraint]) -> list[Constraint]:
    """Constraints in the order their gradient hooks run."""
    return sorted(constraints, key=lambda c: c.grad_order)


def sort_for_projection(constraints: Iterable[Constraint]) -> list[Constraint]:
    """Constraints in the order their projections run."""
    return sorted(constraints, key=lambda c: c.project_order)
