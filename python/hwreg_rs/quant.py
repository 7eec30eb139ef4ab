"""Quantization with ONNX operator semantics, and calibration of its parameters.

:func:`quantize`, :func:`dequantize` and :func:`dynamic_quantize` are bit for bit
ONNX ``QuantizeLinear``, ``DequantizeLinear`` and ``DynamicQuantizeLinear``
(as computed by ``onnx.reference``): ``x / scale`` as a float32 division, round
half to even, add the zero point, saturate. :func:`calibrate` chooses the scale
and zero point from data (PyTorch's observer formulas for ``"minmax"``).

Numerical notes
---------------
* Inputs are computed in float32. float16 / float64 / integer inputs are
  converted to float32 first (so a float64 input quantizes like its float32
  rounding, not like ONNX's float64 arithmetic would).
* Quotients ``|x / scale|`` of ``2**31`` and beyond (and ``±inf``) saturate to the
  end of the range their sign points at. The ONNX reference casts such values
  to int32 first, which is undefined (x86 NumPy yields ``-2**31``, i.e. the wrong
  end); below ``2**31 - 256`` our results equal the reference exactly.
* ``NaN`` quantizes to the low end of the range (``-128`` for int8, ``0`` for
  uint8): the reference's result on x86 for every uint8 zero point and every
  non-negative int8 zero point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from . import _native
from ._validate import (check_bool, check_choice, check_float, check_int, int_in_range, native_array,
                        normalize_axis, positive_finite)

__all__ = ["QParams", "quantize", "dequantize", "dynamic_quantize", "calibrate"]

_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}
_METHODS = ("minmax", "percentile", "mse", "entropy")


@dataclass(frozen=True, eq=False)
class QParams:
    """Quantization parameters: what :func:`calibrate` returns.

    Parameters
    ----------
    scale : numpy.float32 or ndarray of float32, shape (C,)
        One scale (per tensor) or one per channel along ``axis``.
    zero_point : int or ndarray of int32, shape (C,)
        Zero point(s), in the range of ``dtype``.
    dtype : {"int8", "uint8"}
        Storage type of the quantized values.
    axis : int or None
        The channel axis of per-channel parameters; ``None`` for per tensor.
    bits : int
        Width of the integer grid, 2 to 8 (an extension of the contract's four
        fields): :func:`quantize` saturates to ``[qmin, qmax]`` of this grid.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> qp = hw.calibrate(np.array([-1.0, 0.5, 2.0], dtype=np.float32))
    >>> hw.quantize(np.array([1.0], dtype=np.float32), qp)
    array([64], dtype=int8)
    """

    scale: Union[np.float32, np.ndarray]
    zero_point: Union[int, np.ndarray]
    dtype: str
    axis: Union[int, None]
    bits: int = 8

    def __post_init__(self) -> None:
        # The grid is chosen from dtype and bits: normalise the dtype ("int8" from np.int8 too,
        # which once fell through to the uint8 grid) and keep bits where the grid fits the storage.
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))
        object.__setattr__(self, "bits", check_int(self.bits, "bits", 2, 8))
        if self.axis is not None:
            object.__setattr__(self, "axis", check_int(self.axis, "axis"))

    @property
    def qmin(self) -> int:
        """Lowest value of the grid: ``-2**(bits-1)`` (int8) or 0 (uint8)."""
        return _grid(self.dtype, self.bits)[0]

    @property
    def qmax(self) -> int:
        """Highest value of the grid: ``2**(bits-1) - 1`` (int8) or ``2**bits - 1`` (uint8)."""
        return _grid(self.dtype, self.bits)[1]

    def __repr__(self) -> str:
        return (f"QParams(scale={self.scale!r}, zero_point={self.zero_point!r}, "
                f"dtype={self.dtype!r}, axis={self.axis!r}, bits={self.bits!r})")


def _grid(dtype: str, bits: int) -> tuple[int, int]:
    if dtype == "int8":
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _dtype_name(dtype: Any) -> str:
    """``"int8"`` or ``"uint8"`` from a name, a NumPy type or dtype (TypeError otherwise)."""
    if type(dtype) is str and dtype in _RANGES:  # the common spelling, without np.dtype (~3 us)
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in _RANGES or isinstance(dtype, bool):
        raise TypeError(f"dtype must be 'int8' or 'uint8'; got {dtype!r}")
    return name


def _float_input(x: Any, name: str) -> np.ndarray:
    if (type(x) is np.ndarray and x.dtype == np.float32 and x.dtype.isnative and x.flags.c_contiguous
            and x.flags.aligned):
        return x  # already what the kernels take (the checks below cost ~3 us a call)
    arr = native_array(x, name)
    if arr.dtype.kind == "b":
        raise TypeError(f"{name} must be a floating-point array; got dtype bool")
    # native_array turns a 0-d input into shape (1,) (np.ascontiguousarray); keep 0-d.
    return native_array(arr, name, cast=np.float32).reshape(np.shape(x))


def _params(x_shape: tuple, scale: Any, zero_point: Any, axis: Any, dtype: str) -> tuple:
    """Validated ``(scale 1-D float32, zero_point 1-D int32, axis or None)``."""
    lo, hi = _RANGES[dtype]
    if (axis is None and type(scale) in (float, int, np.float32, np.float64) and 0 < scale < 1e38
            and type(zero_point) in (int, np.int32, np.int64)):
        # One scale and zero point given as plain scalars, the scale within float32's
        # range: the same checks in plain Python (the array validators below cost
        # ~20 us, 8x the kernel on 32K floats). Anything else takes the general path.
        s32 = np.float32(scale)  # the float32 scale the kernel uses (1e-50 -> 0)
        if not s32 > 0:
            raise ValueError(f"scale must be finite and > 0; got {s32!r}")
        if not lo <= zero_point <= hi:
            raise ValueError(f"zero_point must lie in [{lo}, {hi}]; got {zero_point}")
        return np.array([s32], np.float32), np.array([zero_point], np.int32), None
    s = positive_finite(scale, "scale")
    z = int_in_range(zero_point, "zero_point", lo, hi)
    for name, a in (("scale", s), ("zero_point", z)):
        if a.ndim > 1:
            raise ValueError(f"{name} must be a scalar or 1-D; got shape {a.shape}")
    ax = None
    if axis is not None:
        ax = normalize_axis(axis, len(x_shape))
        n = x_shape[ax]
        for name, a in (("scale", s), ("zero_point", z)):
            if a.ndim == 1 and a.size not in (1, n):
                raise ValueError(f"{name} has {a.size} elements but x.shape[{axis}] is {n}; "
                                 f"a per-axis {name} needs one per element along the axis")
    else:
        for name, a in (("scale", s), ("zero_point", z)):
            if a.size != 1:
                raise ValueError(f"{name} has {a.size} elements (shape {a.shape}); per-axis parameters "
                                 f"need axis=..., per-tensor ones a single value")
    return s.reshape(-1), z.reshape(-1), ax


def _check_out(out: Any, shape: tuple, dtype: Any, src: np.ndarray) -> np.ndarray:
    """``out`` as a valid destination: ndarray of ``dtype`` and ``shape``, C-contiguous,
    native-endian, writeable and not overlapping the input ``src``."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array; got {type(out).__name__}")
    if out.dtype != np.dtype(dtype):
        raise TypeError(f"out must have dtype {np.dtype(dtype)}; got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}; expected {shape}")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("out must be a writeable C-contiguous array")
    if np.may_share_memory(out, src):
        raise ValueError("out must not overlap the input")
    return out


def quantize(x: Any, scale: Any, zero_point: Any = 0, *, axis: Any = None, dtype: Any = "int8",
             out: Any = None) -> np.ndarray:
    """ONNX ``QuantizeLinear``: ``saturate(round_half_even(x / scale) + zero_point)``.

    Parameters
    ----------
    x : array_like of float
        The values; converted to float32 (see the module notes).
    scale : float, array_like of shape (C,), or QParams
        Positive finite scale(s): one for the whole tensor, or one per element of
        ``x.shape[axis]``. A :class:`QParams` supplies scale, zero point, axis and
        dtype at once (the other arguments are then ignored), and a grid of fewer
        than 8 bits saturates to that grid's ``[qmin, qmax]``.
    zero_point : int or array_like of int, shape (C,)
        Zero point(s) within the range of ``dtype``; a single one is shared by all channels.
    axis : int, optional
        Axis of per-axis parameters (negative counts from the end). ``None``: per tensor.
    dtype : {"int8", "uint8"} or numpy dtype
        Output type; saturates to [-128, 127] or [0, 255].
    out : ndarray, optional
        Destination (``dtype``, the shape of ``x``, C-contiguous, not overlapping ``x``);
        reusing one avoids allocating (and page-faulting) a fresh array per call.

    Returns
    -------
    ndarray of int8 or uint8, same shape as ``x`` (``out`` when given)

    Raises
    ------
    ValueError
        Scale not finite and > 0, zero point out of range or not an integer, per-axis
        lengths that do not match ``x.shape[axis]``, ``axis`` out of range.
    TypeError
        Non-numeric ``x``, unknown ``dtype``.

    See Also
    --------
    dequantize, dynamic_quantize, calibrate

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.quantize(np.array([0.5, 1.5, 2.5, -300.0], dtype=np.float32), 1.0)
    array([   0,    2,    2, -128], dtype=int8)
    >>> hw.quantize(np.ones((2, 2), np.float32), [0.5, 0.25], [0, 10], axis=1, dtype="uint8")
    array([[ 2, 14],
           [ 2, 14]], dtype=uint8)
    """
    qrange = None
    if isinstance(scale, QParams):
        qp = scale
        scale, zero_point, axis, dtype = qp.scale, qp.zero_point, qp.axis, qp.dtype
        qrange = (qp.qmin, qp.qmax) if qp.bits != 8 else None
    dt = _dtype_name(dtype)
    xa = _float_input(x, "x")
    s, z, ax = _params(xa.shape, scale, zero_point, axis, dt)
    if out is not None:
        _check_out(out, xa.shape, dt, xa)
    return _native.quantize_linear(xa, s, z, ax, dt, qrange, out)


def dequantize(q: Any, scale: Any, zero_point: Any = 0, *, axis: Any = None, out: Any = None) -> np.ndarray:
    """ONNX ``DequantizeLinear``: ``(q - zero_point) * scale`` in float32.

    Parameters
    ----------
    q : ndarray of int8 or uint8
        Quantized values.
    scale : float, array_like of shape (C,), or QParams
        Positive finite scale(s), per tensor or per element of ``q.shape[axis]``. A
        :class:`QParams` supplies scale, zero point and axis.
    zero_point : int or array_like of int, shape (C,)
        Zero point(s) within the range of ``q.dtype``.
    axis : int, optional
        Axis of per-axis parameters. ``None``: per tensor.
    out : ndarray of float32, optional
        Destination (the shape of ``q``, C-contiguous, not overlapping ``q``).

    Returns
    -------
    ndarray of float32, same shape as ``q`` (``out`` when given)

    Raises
    ------
    TypeError
        ``q`` is not int8 or uint8.
    ValueError
        As for :func:`quantize`.

    See Also
    --------
    quantize

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.dequantize(np.array([0, 2, -128], dtype=np.int8), 0.5, 2)
    array([ -1.,   0., -65.], dtype=float32)
    """
    if isinstance(scale, QParams):
        scale, zero_point, axis = scale.scale, scale.zero_point, scale.axis
    qa = native_array(q, "q").reshape(np.shape(q))
    if qa.dtype.name not in _RANGES:
        raise TypeError(f"q must be an int8 or uint8 array; got dtype {qa.dtype}")
    s, z, ax = _params(qa.shape, scale, zero_point, axis, qa.dtype.name)
    if out is not None:
        _check_out(out, qa.shape, np.float32, qa)
    return _native.dequantize_linear(qa, s, z, ax, out)


def dynamic_quantize(x: Any) -> tuple[np.ndarray, np.float32, np.uint8]:
    """ONNX ``DynamicQuantizeLinear``: uint8 quantization with the tensor's own range.

    ``scale = (max(0, max x) - min(0, min x)) / 255`` (``1 / 255`` when that is 0),
    ``zero_point = round_half_even(clamp(-min(0, min x) / scale, 0, 255))``, then
    :func:`quantize` with those, all in float32 as the ONNX reference computes them.

    Parameters
    ----------
    x : array_like of float
        Non-empty, finite values (converted to float32).

    Returns
    -------
    q : ndarray of uint8, same shape as ``x``
    scale : numpy.float32
    zero_point : numpy.uint8

    Raises
    ------
    ValueError
        ``x`` is empty or holds NaN or ±inf (the reference would produce a NaN scale).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> q, s, z = hw.dynamic_quantize(np.array([-1.0, 0.0, 3.0], dtype=np.float32))
    >>> q, bool(s == np.float32(4) / np.float32(255)), int(z)
    (array([  0,  64, 255], dtype=uint8), True, 64)
    """
    xa = _float_input(x, "x")
    q, s, z = _native.dynamic_quantize_linear(xa)
    return q, np.float32(s), np.uint8(z)


def calibrate(x: Any, *, method: str = "minmax", dtype: Any = "int8", symmetric: bool = True,
              axis: Any = None, bits: int = 8, power_of_two: bool = False,
              percentile: float = 99.99, bins: int = 2048) -> QParams:
    """Choose a scale and zero point for ``x``.

    A clipping range is chosen per tensor (or per channel along ``axis``) by
    ``method``, then turned into parameters with PyTorch's observer formula
    (``torch.ao.quantization.observer._calculate_qparams``), in float32::

        min_neg = min(lo, 0);  max_pos = max(hi, 0)
        symmetric: scale = max(-min_neg, max_pos) / ((qmax - qmin) / 2)
                   zero_point = 0 (int8), 128 (uint8, 8 bits), (qmin + qmax) // 2 (uint8, < 8 bits)
        affine:    scale = (max_pos - min_neg) / (qmax - qmin)
                   zero_point = clamp(qmin - round_half_even(min_neg / scale), qmin, qmax)
        scale = max(scale, float32 eps)  (before the zero point)

    With ``method="minmax"`` this is exactly ``MinMaxObserver`` (per tensor) and
    ``PerChannelMinMaxObserver`` (``axis``) with ``dtype=qint8``/``quint8``,
    ``qscheme=*_symmetric``/``*_affine`` and ``reduce_range=False``.

    Parameters
    ----------
    x : array_like of float
        Calibration data (float32 after conversion); must be non-empty and finite.
    method : {"minmax", "percentile", "mse", "entropy"}
        ``"minmax"``: the data's range. ``"percentile"``: symmetric ``[-t, t]`` with ``t``
        the ``percentile``-th percentile of ``|x|``; affine: the ``100 - percentile`` and
        ``percentile`` percentiles of ``x`` (linear interpolation, as ``numpy.percentile``).
        ``"mse"``: among 128 ranges ``f * (min/max range)``, ``f = 1/128 ... 1``, the one
        whose quantize-dequantize round trip has the least squared error (measured on a
        ``bins``-bin histogram; ties go to the wider range). ``"entropy"``: TensorRT's
        KL-divergence threshold on a ``bins``-bin histogram of ``|x|`` with ``2**(bits-1)``
        levels; symmetric ``[-t, t]``, affine ``[max(min x, -t), min(max x, t)]``.
    dtype : {"int8", "uint8"}
        Storage type; the grid is ``[-2**(bits-1), 2**(bits-1) - 1]`` or ``[0, 2**bits - 1]``.
    symmetric : bool
        Symmetric (torch ``*_symmetric``) or affine (``*_affine``) scheme. Symmetric signed
        grids follow torch: the scale divides by ``(qmax - qmin) / 2`` (127.5 for 8 bits),
        so ``-128`` is used and ``+amax`` rounds to 128 and saturates to 127.
    axis : int, optional
        Channel axis for per-channel parameters; ``None`` for one per tensor.
    bits : int
        2 to 8: the width of the grid (values are still stored in int8 / uint8).
    power_of_two : bool
        Round every scale *up* to the next power of two ``2**-p`` (a scale that already is
        one is kept), then compute the zero point, so the grid still covers the range.
    percentile : float
        For ``method="percentile"``: in [50, 100].
    bins : int
        Histogram bins for ``"mse"`` and ``"entropy"``.

    Returns
    -------
    QParams
        Per tensor: ``scale`` a numpy.float32 and ``zero_point`` an int; per channel:
        float32 / int32 arrays of length ``x.shape[axis]``.

    Raises
    ------
    ValueError
        Unknown method, ``bits`` outside 2..8, empty input, NaN or ±inf in ``x``, a
        percentile outside [50, 100].
    TypeError
        Unknown ``dtype``, non-integer ``bits``.

    See Also
    --------
    quantize : takes the returned QParams directly.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> qp = hw.calibrate(np.array([-1.0, 3.0], dtype=np.float32), dtype="uint8", symmetric=False)
    >>> bool(qp.scale == np.float32(4.0) / np.float32(255.0)), qp.zero_point
    (True, 64)
    >>> hw.calibrate(np.array([[1.0, -2.0], [0.5, 4.0]], np.float32), axis=0).scale
    array([0.01568628, 0.03137255], dtype=float32)
    """
    try:
        check_choice(method, "method", _METHODS)
    except ValueError as e:
        raise ValueError(f"unknown calibration method: {e}") from None
    dt = _dtype_name(dtype)
    bits = check_int(bits, "bits")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8; got {bits}")
    bins = check_int(bins, "bins", 1, 1 << 24)
    percentile = check_float(percentile, "percentile", finite=False)
    if not 50.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must lie in [50, 100]; got {percentile!r}")
    symmetric = check_bool(symmetric, "symmetric")
    power_of_two = check_bool(power_of_two, "power_of_two")
    qmin, qmax = _grid(dt, bits)
    if dt == "int8":
        szp = 0
    else:
        szp = 128 if bits == 8 else (qmin + qmax) // 2
    xa = _float_input(x, "x")
    if xa.size == 0:
        raise ValueError("cannot calibrate an empty array")
    ax = None if axis is None else normalize_axis(axis, xa.ndim)
    scale, zp, lo, hi = _native.calibrate(xa, ax, method, percentile, qmin, qmax, symmetric,
                                          szp, power_of_two, bins)
    if not all(np.isfinite(scale)):
        # Refused rather than computed another way: the affine step (hi - lo) / (qmax - qmin)
        # overflows float32 (torch's observer yields inf too), and no finite float32 grid of
        # qmax - qmin steps would then dequantize back inside float32.
        i = next(j for j, v in enumerate(scale) if not np.isfinite(v))
        where = "" if ax is None else f" (channel {i} along axis {ax})"
        raise ValueError(f"cannot calibrate x{where}: its range [{lo[i]!r}, {hi[i]!r}] spans more than "
                         f"float32 can hold, so the scale would be inf; rescale the data or use symmetric=True")
    if ax is None:
        return QParams(np.float32(scale[0]), int(zp[0]), dt, None, bits)
    s = np.asarray(scale, dtype=np.float32)
    z = np.asarray(zp, dtype=np.int32)
    s.setflags(write=False)
    z.setflags(write=False)
    return QParams(s, z, dt, ax, bits)
