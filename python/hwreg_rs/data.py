"""Datasets: scikit-learn's digits with a fixed seeded split, and synthetic generators."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

from ._validate import check_array, check_float, check_int

__all__ = ["Split", "load_digits", "make_classification", "make_regression"]


class Split(NamedTuple):
    """A train / test split; unpacks as ``X_train, y_train, X_test, y_test``."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def load_digits(*, seed: int = 0, test_size: int = 360, images: bool = False) -> Split:
    """scikit-learn's 8×8 digits (1797 samples) with a fixed, seeded train / test split.

    Pixels are scaled to [0, 1] (float32), labels are int64. The permutation
    comes from ``numpy.random.default_rng(seed)``, so the split is the same on
    every machine; the default test set has 360 samples.

    Parameters
    ----------
    seed : int, default 0
    test_size : int, default 360
    images : bool, default False
        Return ``(n, 1, 8, 8)`` arrays for convolutions instead of ``(n, 64)``.

    Raises
    ------
    ImportError
        scikit-learn is not installed (``pip install hwreg-rs[data]``).

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> X_train, y_train, X_test, y_test = hw.data.load_digits()
    >>> X_train.shape, X_test.shape
    ((1437, 64), (360, 64))
    """
    seed = check_int(seed, "seed", 0)
    test_size = check_int(test_size, "test_size")
    X, y = _digits()
    n = len(X)
    if not 0 < int(test_size) < n:
        raise ValueError(f"test_size must lie in (0, {n}); got {test_size!r}")
    order = np.random.default_rng(seed).permutation(n)
    test, train = order[: int(test_size)], order[int(test_size):]
    if images:
        X = X.reshape(n, 1, 8, 8)
    return Split(X[train], y[train], X[test], y[test])


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("load_digits needs scikit-learn: pip install 'hwreg-rs[data]'") from e
    d = _sk_digits()
    X = (d.data / 16.0).astype(np.float32)
    X.setflags(write=False)
    y = d.target.astype(np.int64)
    y.setflags(write=False)
    return X, y


def make_regression(n_samples: int = 256, *, n_features: int = 1, coef: Any = None, bias: float = 0.0,
                    noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Linear data ``y = X @ coef + bias + noise·N(0, 1)``, ``X`` ~ U(-1, 1).

    Parameters
    ----------
    n_samples, n_features : int
    coef : float or array of shape (n_features,), optional
        Default: standard normal draws.
    bias, noise : float
    seed : int

    Returns
    -------
    X : float32 array (n_samples, n_features)
    y : float32 array (n_samples,)

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> X, y = hw.data.make_regression(4, coef=3.0, bias=2.0, seed=0)
    >>> bool(abs(y - (3 * X[:, 0] + 2)).max() < 1e-6)
    True
    """
    n_samples = check_int(n_samples, "n_samples", 1, 1 << 28)
    n_features = check_int(n_features, "n_features", 1, 1 << 20)
    bias = check_float(bias, "bias")
    noise = check_float(noise, "noise", 0.0)
    seed = check_int(seed, "seed", 0)
    if coef is not None:
        coef = check_array(coef, "coef", finite=True)
        if coef.size not in (1, n_features) or coef.ndim > 1:
            raise ValueError(f"coef must be a scalar or have shape ({n_features},); got shape {coef.shape}")
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(int(n_samples), int(n_features)))
    c = rng.standard_normal(n_features) if coef is None else np.broadcast_to(np.asarray(coef, float), (n_features,))
    y = X @ c + float(bias) + float(noise) * rng.standard_normal(int(n_samples))
    return X.astype(np.float32), y.astype(np.float32)


def make_classification(n_samples: int = 300, *, n_features: int = 8, n_classes: int = 3, class_sep: float = 2.0,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: one unit-variance cluster per class, centres ``class_sep`` apart on average.

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> X, y = hw.data.make_classification(30, n_features=2, n_classes=3, seed=0)
    >>> X.shape, sorted(set(y.tolist()))
    ((30, 2), [0, 1, 2])
    """
    n_samples = check_int(n_samples, "n_samples", 1, 1 << 28)
    n_features = check_int(n_features, "n_features", 1, 1 << 20)
    n_classes = check_int(n_classes, "n_classes", 2, 1 << 20)
    class_sep = check_float(class_sep, "class_sep")
    seed = check_int(seed, "seed", 0)
    if int(n_classes) < 2 or int(n_samples) < int(n_classes):
        raise ValueError(f"need n_classes >= 2 and n_samples >= n_classes; got {n_samples}, {n_classes}")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((int(n_classes), int(n_features))) * float(class_sep)
    y = np.arange(int(n_samples)) % int(n_classes)
    rng.shuffle(y)
    X = centres[y] + rng.standard_normal((int(n_samples), int(n_features)))
    return X.astype(np.float32), y.astype(np.int64)
