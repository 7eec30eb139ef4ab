"""Loss functions with their gradients: cross-entropy, MSE and knowledge distillation.

A loss object's ``forward(pred, target, ...)`` returns the mean loss as a
float and remembers what ``backward()`` needs; ``backward()`` returns the
gradient with respect to ``pred``. The functions (:func:`cross_entropy`,
:func:`mse_loss`, :func:`distillation_loss`) are the one-shot forms.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validate import check_array, check_float, normalize_axis

__all__ = ["CrossEntropyLoss", "DistillationLoss", "Loss", "MSELoss", "cross_entropy", "distillation_loss",
           "get_loss", "log_softmax", "mse_loss", "softmax"]


def _logits(z: Any, axis: Any, name: str = "z") -> tuple[np.ndarray, int]:
    z = check_array(z, name, min_ndim=1, bool_ok=False)
    axis = normalize_axis(axis, z.ndim)
    if z.shape[axis] == 0:
        raise ValueError(f"{name} has no entries along axis {axis} (shape {z.shape})")
    return z, axis


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable ``log(softmax(z))``."""
    z, axis = _logits(z, axis)
    m = z.max(axis=axis, keepdims=True)
    s = z - m
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """``exp(z) / sum(exp(z))`` along ``axis``."""
    z, axis = _logits(z, axis)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _labels(target: Any, n: int, c: int) -> np.ndarray:
    t = check_array(target, "target")
    if t.dtype.kind not in "iu":
        if t.dtype.kind == "f" and np.all(t == np.round(t)):
            t = t.astype(np.int64)
        else:
            raise TypeError(f"class targets must be integers; got dtype {t.dtype}")
    if t.shape != (n,):
        raise ValueError(f"targets must have shape ({n},) to match the logits; got {t.shape}")
    if t.size and (t.min() < 0 or t.max() >= c):
        raise ValueError(f"class targets must lie in [0, {c}); got range [{t.min()}, {t.max()}]")
    return t


class Loss:
    """Base class: ``forward`` returns the mean loss, ``backward`` its gradient w.r.t. the prediction."""

    #: whether the target is a class index (enables accuracy in the trainer)
    classification = False

    def forward(self, pred: np.ndarray, target: Any) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, pred: np.ndarray, target: Any) -> float:
        return self.forward(pred, target)


class CrossEntropyLoss(Loss):
    """Mean cross-entropy of logits ``(N, C)`` against integer labels ``(N,)`` (PyTorch's ``CrossEntropyLoss``).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> loss = hw.losses.CrossEntropyLoss()
    >>> round(loss(np.zeros((2, 4)), np.array([0, 3])), 6) == round(float(np.log(4)), 6)
    True
    >>> loss.backward().shape
    (2, 4)
    """

    classification = True

    def forward(self, pred: np.ndarray, target: Any) -> float:
        pred = check_array(pred, "pred")
        if pred.ndim != 2:
            raise ValueError(f"logits must be 2-D (N, C); got shape {pred.shape}")
        n, c = pred.shape
        t = _labels(target, n, c)
        logp = log_softmax(pred)
        self._p = np.exp(logp)
        self._t = t
        return float(-logp[np.arange(n), t].mean())

    def backward(self) -> np.ndarray:
        g = self._p.copy()
        n = g.shape[0]
        g[np.arange(n), self._t] -= 1
        g /= n
        return g


class MSELoss(Loss):
    """Mean squared error (PyTorch's ``MSELoss``); a target with the prediction's size is reshaped to it.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.losses.MSELoss()(np.array([[1.0], [3.0]]), np.array([0.0, 1.0]))
    2.5
    """

    def forward(self, pred: np.ndarray, target: Any) -> float:
        pred = check_array(pred, "pred", bool_ok=False)
        t = check_array(target, "target")
        if t.size != pred.size:
            raise ValueError(f"target of shape {t.shape} does not match prediction of shape {pred.shape}")
        d = pred - t.reshape(pred.shape).astype(pred.dtype)
        self._d = d
        return float(np.mean(d * d))

    def backward(self) -> np.ndarray:
        return self._d * (2.0 / self._d.size)


class DistillationLoss(Loss):
    """Knowledge distillation (Hinton et al.): ``alpha * T² * KL(p_t^T || p_s^T) + (1 - alpha) * hard``.

    ``p^T = softmax(logits / T)``; the KL term is averaged over the batch
    (PyTorch ``KLDivLoss(reduction="batchmean")``) and ``hard`` is the usual
    loss against the labels (cross-entropy by default).

    Parameters
    ----------
    temperature : float, default 4.0
    alpha : float, default 0.5
        Weight of the soft (teacher) term, in [0, 1].
    hard_loss : Loss, optional
        Loss against the labels (default :class:`CrossEntropyLoss`).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> kd = hw.losses.DistillationLoss(temperature=2.0, alpha=1.0)
    >>> z = np.array([[1.0, 2.0, 3.0]])
    >>> kd.forward(z, np.array([2]), teacher_logits=z)
    0.0
    """

    classification = True

    def __init__(self, *, temperature: float = 4.0, alpha: float = 0.5, hard_loss: Loss | None = None) -> None:
        self.temperature = check_float(temperature, "temperature", 0.0, lo_open=True)
        self.alpha = check_float(alpha, "alpha", 0.0, 1.0)
        if hard_loss is not None and not isinstance(hard_loss, Loss):
            raise TypeError(f"hard_loss must be a Loss; got {type(hard_loss).__name__}")
        self.hard_loss = hard_loss if hard_loss is not None else CrossEntropyLoss()
        self.classification = self.hard_loss.classification

    def forward(self, pred: np.ndarray, target: Any, teacher_logits: np.ndarray | None = None) -> float:  # type: ignore[override]
        if teacher_logits is None:
            raise ValueError("DistillationLoss needs teacher_logits")
        pred = check_array(pred, "pred", ndim=2)
        teacher_logits = check_array(teacher_logits, "teacher_logits")
        if teacher_logits.shape != pred.shape:
            raise ValueError(f"teacher logits {teacher_logits.shape} do not match student logits {pred.shape}")
        T = self.temperature
        hard = self.hard_loss.forward(pred, target) if self.alpha < 1.0 else 0.0
        log_ps = log_softmax(pred / T)
        log_pt = log_softmax(teacher_logits.astype(pred.dtype) / T)
        pt = np.exp(log_pt)
        n = pred.shape[0]
        kl = float(np.sum(pt * (log_pt - log_ps)) / n)
        self._ps, self._pt, self._n = np.exp(log_ps), pt, n
        return self.alpha * T * T * kl + (1.0 - self.alpha) * hard

    def backward(self) -> np.ndarray:
        g = (self.alpha * self.temperature / self._n) * (self._ps - self._pt)
        if self.alpha < 1.0:
            g += (1.0 - self.alpha) * self.hard_loss.backward()
        return g


def cross_entropy(logits: np.ndarray, target: Any) -> float:
    """Mean cross-entropy of ``logits`` (N, C) against integer labels (N,); see :class:`CrossEntropyLoss`.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> round(hw.losses.cross_entropy(np.array([[0.0, 0.0]]), np.array([1])), 4)
    0.6931
    """
    return CrossEntropyLoss().forward(check_array(logits, "logits"), target)


def mse_loss(pred: np.ndarray, target: Any) -> float:
    """Mean squared error; see :class:`MSELoss`.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.losses.mse_loss(np.array([1.0, 2.0]), np.array([1.0, 0.0]))
    2.0
    """
    return MSELoss().forward(check_array(pred, "pred"), target)


def distillation_loss(student_logits: np.ndarray, target: Any, teacher_logits: np.ndarray, *,
                      temperature: float = 4.0, alpha: float = 0.5) -> float:
    """Distillation loss; see :class:`DistillationLoss`.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> z = np.array([[0.0, 1.0]])
    >>> hw.losses.distillation_loss(z, np.array([1]), z, alpha=1.0)
    0.0
    """
    return DistillationLoss(temperature=temperature, alpha=alpha).forward(check_array(student_logits, "student_logits"), target,
                                                                          teacher_logits)


_NAMES = {"cross_entropy": CrossEntropyLoss, "mse": MSELoss}


def get_loss(loss: Any) -> Loss:
    """A :class:`Loss` from an instance or a name (``"cross_entropy"``, ``"mse"``)."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in _NAMES:
        return _NAMES[loss]()
    raise ValueError(f"loss must be a Loss or one of {sorted(_NAMES)}; got {loss!r}")
