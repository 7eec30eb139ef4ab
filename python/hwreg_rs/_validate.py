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
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as e:  # ragged lists and the like
        raise TypeError(f"{name} must be an integer array or scalar; got {type(x).__name__}") from e
    if not arr.flags.c_contiguous:  # copied first: a huge broadcast view fails here, not in a long scan
        arr = np.asarray(arr, order="C")
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


# ---------------------------------------------------------------------------
# Scalar argument checks. Every public function checks its options with these,
# so a bad option raises TypeError (wrong type) or ValueError (bad value), and
# the message names the argument and the value it got -- never an
# OverflowError, IndexError or ZeroDivisionError from deeper down.


def _show(value: Any) -> str:
    """A short, one-line repr for an error message (arrays by shape and dtype, long values cut)."""
    if isinstance(value, np.ndarray) and value.size > 4:
        return f"array of shape {value.shape} and dtype {value.dtype}"
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + "..."


def check_int(value: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as a Python int in ``[lo, hi]`` (either bound may be ``None``).

    bool and non-integral numbers (``2.0`` included) raise ``TypeError``.

    >>> check_int(3, "n", 1, 8)
    3
    >>> check_int(10**30, "n", 0, 2**31 - 1)
    Traceback (most recent call last):
    ...
    ValueError: n must be in [0, 2147483647]; got 1000000000000000000000000000000
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {_show(value)}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        if hi is None:
            raise ValueError(f"{name} must be >= {lo}; got {v}")
        if lo is None:
            raise ValueError(f"{name} must be <= {hi}; got {v}")
        raise ValueError(f"{name} must be in [{lo}, {hi}]; got {v}")
    return v


def check_float(value: Any, name: str, lo: float | None = None, hi: float | None = None, *,
                finite: bool = True, lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a Python float in ``[lo, hi]`` (``lo_open`` / ``hi_open`` exclude an end).

    Ints are accepted; bool, strings, arrays of more than one element are ``TypeError``;
    NaN is always ``ValueError``, ±inf too unless ``finite=False``.

    >>> check_float(0.5, "p", 0.0, 1.0, hi_open=True)
    0.5
    >>> check_float(float("nan"), "p", 0.0, 1.0)
    Traceback (most recent call last):
    ...
    ValueError: p must be a number in [0.0, 1.0]; got nan
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number; got {type(value).__name__} {_show(value)}")
    try:
        v = float(value)
    except OverflowError:  # an int beyond float range
        v = float("inf") if value > 0 else float("-inf")
    bad = v != v or (finite and v in (float("inf"), float("-inf")))
    if lo is not None and (v < lo or (lo_open and v == lo)):
        bad = True
    if hi is not None and (v > hi or (hi_open and v == hi)):
        bad = True
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        if lo is None and hi is None:
            what = "a finite number" if finite else "a number"
        else:
            what = f"a number in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ValueError(f"{name} must be {what}; got {_show(value)}")
    return v


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices`` (compared with ``==``), else ``ValueError``.

    >>> check_choice("mse", "method", ("minmax", "mse"))
    'mse'
    >>> check_choice("x", "method", ("minmax", "mse"))
    Traceback (most recent call last):
    ...
    ValueError: method must be one of 'minmax', 'mse'; got 'x'
    """
    options = tuple(choices)
    try:
        hashable_ok = any(type(value) is type(c) and value == c for c in options)
    except Exception:  # an object whose == raises or returns an array
        hashable_ok = False
    if not hashable_ok:
        shown = ", ".join(repr(c) for c in options)
        raise ValueError(f"{name} must be one of {shown}; got {_show(value)}")
    return value


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a bool (Python or NumPy bool only; ``1`` or ``"yes"`` are ``TypeError``)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool; got {type(value).__name__} {_show(value)}")
    return bool(value)


def check_array(x: Any, name: str, *, ndim: int | None = None, min_ndim: int = 0,
                nonempty: bool = False, finite: bool = False, float_only: bool = False,
                bool_ok: bool = True) -> np.ndarray:
    """``x`` as a numeric ndarray (``TypeError`` otherwise), with optional shape / value checks.

    Does not copy a C-contiguous native array; keeps 0-d arrays 0-d.
    """
    if isinstance(x, (str, bytes, dict)) or x is None:
        raise TypeError(f"{name} must be a numeric array; got {type(x).__name__}")
    arr = x if isinstance(x, np.ndarray) else None
    if arr is None:
        try:
            arr = np.asarray(x)
        except Exception as e:  # ragged lists and the like
            raise TypeError(f"{name} must be array-like; got {type(x).__name__}") from e
    if arr.dtype.kind not in "biuf" or (float_only and arr.dtype.kind != "f") or (not bool_ok and arr.dtype.kind == "b"):
        what = "a floating-point" if float_only else "a numeric" if bool_ok else "a numeric (not bool)"
        raise TypeError(f"{name} must be {what} array; got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {arr.shape}")
    if arr.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s); got shape {arr.shape}")
    if nonempty and arr.size == 0:
        raise ValueError(f"{name} must not be empty; got shape {arr.shape}")
    if not arr.flags.c_contiguous:  # strided / broadcast views are copied before any scan (MemoryError if huge)
        arr = np.asarray(arr, order="C")
    if finite and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; it holds NaN or inf")
    return arr
