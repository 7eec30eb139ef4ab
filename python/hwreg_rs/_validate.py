"""Input checks shared by the public functions.

Every array that reaches ``_native`` goes through :func:`native_array`: it
becomes C-contiguous, aligned and native-endian here (a cheap, correct copy
when it was not), so the Rust side never sees strided, misaligned or
byte-swapped memory. Read-only arrays are read in place (the kernels only
read their inputs); unaligned ones (from ``np.frombuffer`` on a pickle-5 or
network buffer at an odd offset) are copied once. Wrong dtypes
raise ``TypeError``; bad values and shapes raise ``ValueError``.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

INT8_TYPES = (np.dtype(np.int8), np.dtype(np.uint8))


def native_array(x: Any, name: str, dtypes: Iterable[Any] | None = None, *, cast: Any = None) -> np.ndarray:
    """Return ``x`` as a C-contiguous, aligned, native-endian ndarray.

    A copy is made only when one of those properties is missing (or for
    ``cast``); a read-only input that has them all is returned as is.

    Parameters
    ----------
    x : array_like
        The input.
    name : str
        Argument name used in error messages.
    dtypes : iterable of dtype, optional
        Accepted dtypes; anything else raises ``TypeError``.
    cast : dtype, optional
        Convert to this dtype (only from real or integer inputs).
    """
    if isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except Exception as e:  # ragged lists and the like
            raise TypeError(f"{name} must be array-like, got {type(x).__name__}") from e
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if cast is not None:
        cast = np.dtype(cast)
        if arr.dtype != cast:
            arr = arr.astype(cast)
    if dtypes is not None:
        allowed = tuple(np.dtype(d) for d in dtypes)
        if arr.dtype.newbyteorder("=") not in allowed:
            names = ", ".join(str(d) for d in allowed)
            raise TypeError(f"{name} must have dtype {names}; got {arr.dtype}")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr = np.asarray(arr, order="C")  # keeps 0-d arrays 0-d, unlike ascontiguousarray
    if not arr.flags.aligned:
        arr = arr.copy()  # a fresh allocation is aligned for its dtype
    return arr


def positive_finite(x: Any, name: str) -> np.ndarray:
    """``x`` as float32, every element finite and > 0 (a quantization scale)."""
    arr = native_array(x, name, cast=np.float32)
    if arr.size and not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
        bad = arr[~(np.isfinite(arr) & (arr > 0))].ravel()[0]
        raise ValueError(f"{name} must be finite and > 0; got {bad!r}")
    return arr


def int_in_range(x: Any, name: str, lo: int, hi: int) -> np.ndarray:
    """``x`` as int32, every element an integer in [lo, hi] (a zero point)."""
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integers; got {arr.ravel()[:4]!r}")
    elif arr.dtype.kind not in "iub":
        raise TypeError(f"{name} must be an integer array or scalar; got dtype {arr.dtype}")
    if arr.size and (arr.min() < lo or arr.max() > hi):
        bad = arr[(arr < lo) | (arr > hi)].ravel()[0]
        raise ValueError(f"{name} must lie in [{lo}, {hi}]; got {bad}")
    return native_array(arr, name, cast=np.int32)


def normalize_axis(axis: int, ndim: int, name: str = "axis") -> int:
    """``axis`` as a non-negative index into ``ndim`` dimensions."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array of {ndim} dimensions")
    return int(axis) % ndim
