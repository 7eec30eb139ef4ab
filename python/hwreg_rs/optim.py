"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules (step, cosine), with PyTorch's update rules.

Optimizers update :class:`hwreg_rs.nn.Parameter` objects in place from their
``grad`` (never modifying the gradient itself) and keep per-parameter state
in ``state[param]`` (a dict of arrays shaped like the parameter:
``momentum_buffer``; ``exp_avg``, ``exp_avg_sq``), which the pruning
constraint masks so pruned weights keep zero state.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from . import _native
from ._validate import check_bool, check_float, check_int
from .nn.module import Module, Parameter

__all__ = ["SGD", "Adam", "AdamW", "CosineAnnealingLR", "LRScheduler", "Optimizer", "StepLR", "get_optimizer"]


def _params(params: Any) -> list[Parameter]:
    if isinstance(params, Module):
        params = params.parameters()
    if isinstance(params, (str, bytes, np.ndarray, Parameter)) or not hasattr(params, "__iter__"):
        raise TypeError(f"params must be a Module or an iterable of Parameter objects; got {type(params).__name__}")
    out = list(params)
    for p in out:
        if not isinstance(p, Parameter):
            raise TypeError(f"optimizers take Parameter objects (model.parameters()); got {type(p).__name__}")
    if not out:
        raise ValueError("optimizer got an empty parameter list")
    return out


def _fused(w: np.ndarray, g: Any, *state: np.ndarray) -> bool:
    """Whether the Rust fused update applies: float32, C-contiguous, weight and state writeable."""
    arrays = (w, g) + state
    return (all(isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous for a in arrays)
            and w.flags.writeable and all(a.flags.writeable for a in state))


def _nonneg(v: float, name: str) -> float:
    return check_float(v, name, 0.0)


class Optimizer:
    """Base class: ``params``, learning rate ``lr``, per-parameter ``state`` and ``step()``."""

    def __init__(self, params: Iterable[Parameter] | Module, lr: float) -> None:
        self.params = _params(params)
        self.lr = _nonneg(lr, "lr")
        self.initial_lr = self.lr
        self.state: dict[Parameter, dict[str, Any]] = {p: {} for p in self.params}

    def state_arrays(self, p: Parameter) -> list[np.ndarray]:
        """The state arrays of ``p`` that have its shape (what pruning must keep zero)."""
        return [v for v in self.state.get(p, {}).values() if isinstance(v, np.ndarray) and v.shape == p.data.shape]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = np.zeros_like(p.data)

    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay (``torch.optim.SGD``).

    ``g = grad + wd·w``; ``buf = g`` on the first step, then
    ``buf = momentum·buf + (1 - dampening)·g``; ``g = g + momentum·buf``
    (Nesterov) or ``buf``; ``w -= lr·g``.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> p = hw.nn.Parameter(np.array([1.0])); p.grad = np.array([0.5])
    >>> hw.optim.SGD([p], lr=0.1).step(); p.data
    array([0.95])
    """

    def __init__(self, params: Iterable[Parameter] | Module, lr: float = 0.01, *, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, lr)
        self.momentum = _nonneg(momentum, "momentum")
        self.dampening = _nonneg(dampening, "dampening")
        self.weight_decay = _nonneg(weight_decay, "weight_decay")
        nesterov = check_bool(nesterov, "nesterov")
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0")
        self.nesterov = bool(nesterov)

    def step(self) -> None:
        lr, mom, wd = self.lr, self.momentum, self.weight_decay
        for p in self.params:
            g = p.grad
            if mom:
                buf = self.state[p].get("momentum_buffer")
                if buf is not None and _fused(p.data, g, buf):
                    # one fused pass in Rust (float32)
                    _native.sgd_momentum_step(p.data, g, buf, lr, mom, self.dampening, wd, self.nesterov)
                    continue
            if wd:
                g = g + wd * p.data
            if mom:
                st = self.state[p]
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = np.array(g, dtype=p.data.dtype, copy=True)
                else:
                    buf *= mom
                    buf += (1.0 - self.dampening) * g
                g = g + mom * buf if self.nesterov else buf
            p.data -= p.data.dtype.type(lr) * g


class Adam(Optimizer):
    """Adam (``torch.optim.Adam``; ``weight_decay`` adds ``wd·w`` to the gradient, L2 style).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> p = hw.nn.Parameter(np.array([1.0])); p.grad = np.array([0.5])
    >>> hw.optim.Adam([p], lr=0.1).step(); p.data.round(6)
    array([0.9])
    """

    decoupled = False

    def __init__(self, params: Iterable[Parameter] | Module, lr: float = 1e-3, *,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of floats; got {betas!r}")
        b1, b2 = (check_float(b, f"betas[{i}]", 0.0, 1.0, hi_open=True) for i, b in enumerate(betas))
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must lie in [0, 1); got {betas!r}")
        self.betas = (b1, b2)
        self.eps = _nonneg(eps, "eps")
        self.weight_decay = _nonneg(weight_decay, "weight_decay")

    def step(self) -> None:
        lr, (b1, b2), eps, wd = self.lr, self.betas, self.eps, self.weight_decay
        for p in self.params:
            st = self.state[p]
            g = p.grad
            if "exp_avg" not in st:
                st["step"] = 0
                st["exp_avg"] = np.zeros_like(p.data)
                st["exp_avg_sq"] = np.zeros_like(p.data)
            st["step"] += 1
            t = st["step"]
            m, v = st["exp_avg"], st["exp_avg_sq"]
            if _fused(p.data, g, m, v):
                # one fused pass in Rust (float32); weight decay handled inside
                _native.adam_step(p.data, g, m, v, lr, b1, b2, eps, wd, self.decoupled, 1.0 - b1**t,
                                  math.sqrt(1.0 - b2**t))
                continue
            if wd:
                if self.decoupled:
                    p.data *= p.data.dtype.type(1.0 - lr * wd)
                else:
                    g = g + wd * p.data
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * (g * g)
            denom = np.sqrt(v)
            denom /= math.sqrt(1.0 - b2**t)
            denom += eps
            p.data -= p.data.dtype.type(lr / (1.0 - b1**t)) * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW``: ``w *= 1 - lr·wd`` before the Adam step).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> p = hw.nn.Parameter(np.array([1.0])); p.grad = np.array([0.0])
    >>> hw.optim.AdamW([p], lr=0.1, weight_decay=0.5).step(); p.data
    array([0.95])
    """

    decoupled = True

    def __init__(self, params: Iterable[Parameter] | Module, lr: float = 1e-3, *,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay)


class LRScheduler:
    """Base class: ``step()`` once per epoch sets ``optimizer.lr`` from the epoch count."""

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"scheduler needs an Optimizer; got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.initial_lr
        self.last_epoch = 0

    def lr_at(self, epoch: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self) -> None:
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)

    def get_last_lr(self) -> float:
        return self.optimizer.lr


class StepLR(LRScheduler):
    """``lr = base_lr · gamma^(epoch // step_size)`` (``torch.optim.lr_scheduler.StepLR``).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> opt = hw.optim.SGD([hw.nn.Parameter(np.zeros(1))], lr=1.0)
    >>> s = hw.optim.StepLR(opt, step_size=2, gamma=0.5)
    >>> [s.step() or opt.lr for _ in range(4)]
    [1.0, 0.5, 0.5, 0.25]
    """

    def __init__(self, optimizer: Optimizer, step_size: int, *, gamma: float = 0.1) -> None:
        super().__init__(optimizer)
        self.step_size = check_int(step_size, "step_size", 1)
        self.gamma = _nonneg(gamma, "gamma")

    def lr_at(self, epoch: int) -> float:
        epoch = check_int(epoch, "epoch", 0)
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min)·(1 + cos(π·epoch/T_max))/2`` (closed form of PyTorch's).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> opt = hw.optim.SGD([hw.nn.Parameter(np.zeros(1))], lr=1.0)
    >>> s = hw.optim.CosineAnnealingLR(opt, T_max=2)
    >>> [round(s.step() or opt.lr, 6) for _ in range(2)]
    [0.5, 0.0]
    """

    def __init__(self, optimizer: Optimizer, T_max: int, *, eta_min: float = 0.0) -> None:
        super().__init__(optimizer)
        self.T_max = check_int(T_max, "T_max", 1)
        self.eta_min = _nonneg(eta_min, "eta_min")

    def lr_at(self, epoch: int) -> float:
        epoch = check_int(epoch, "epoch", 0)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


_OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def get_optimizer(name: Any, params: Any, **kwargs: Any) -> Optimizer:
    """An optimizer from an instance (returned as is) or a name (``"sgd"``, ``"adam"``, ``"adamw"``)."""
    if isinstance(name, Optimizer):
        return name
    if isinstance(name, str) and name.lower() in _OPTIMIZERS:
        return _OPTIMIZERS[name.lower()](params, **kwargs)
    raise ValueError(f"optimizer must be an Optimizer or one of {sorted(_OPTIMIZERS)}; got {name!r}")
