"""Exact int8 matrix products (ONNX MatMulInteger / QLinearMatMul) and the
int8 linear layer.

Every product is computed exactly in int32 by the Rust kernels (AVX-512 VNNI,
AVX2 or portable paths; see ``hwreg_rs.active_isa()``): unlike ONNX Runtime's
AVX2 path, nothing saturates. When the exact result could overflow int32,
i.e. ``K * max|a - a_zero_point| * max|b - b_zero_point| > 2**31 - 1`` over
the dtype ranges, a ``ValueError`` naming K is raised instead.

Constant right-hand sides (weights) can be packed once with :func:`pack_int8`
and the resulting :class:`PackedMatrix` passed as ``b``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _native
from ._validate import INT8_TYPES, check_bool, int_in_range, native_array, positive_finite

__all__ = ["Int8Linear", "PackedMatrix", "matmul_integer", "pack_int8", "qlinear_matmul"]

_RANGE = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


def _int8_array(x: Any, name: str) -> np.ndarray:
    arr = native_array(x, name, INT8_TYPES)
    if arr.ndim == 0:
        raise ValueError(f"{name} must have at least 1 dimension; got a scalar")
    return arr


def _zero_point(zp: Any, name: str, dtype: np.dtype, length: int, what: str) -> np.ndarray:
    """A zero point as int32 of shape (1,) (scalar) or (length,)."""
    lo, hi = _RANGE[np.dtype(dtype).newbyteorder("=")]
    if type(zp) is int:  # fast path for the common scalar case
        if not lo <= zp <= hi:
            raise ValueError(f"{name} must lie in [{lo}, {hi}]; got {zp}")
        return np.array([zp], np.int32)
    z = int_in_range(zp, name, lo, hi)
    if z.ndim == 0 or z.size == 1 and z.ndim == 1:
        return z.reshape(1)
    if z.ndim != 1 or z.shape[0] != length:
        raise ValueError(f"{name} must be a scalar or have shape ({length},) (one per {what}); got shape {z.shape}")
    return z


def _scale(s: Any, name: str, length: int, what: str) -> np.ndarray:
    """A scale as float32 of shape (1,) or (length,), finite and > 0."""
    arr = positive_finite(s, name)
    if arr.ndim == 0 or arr.ndim == 1 and arr.size == 1:
        return arr.reshape(1)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise ValueError(f"{name} must be a scalar or have shape ({length},) (one per {what}); got shape {arr.shape}")
    return arr


class PackedMatrix:
    """An int8 or uint8 ``(K, N)`` matrix packed once for the GEMM kernels.

    Pass it as ``b`` to :func:`matmul_integer` or :func:`qlinear_matmul` to
    skip re-packing a constant right-hand side on every call. The layout is
    shared by every SIMD path, so it stays valid if the path changes.

    Parameters
    ----------
    b : ndarray of shape (K, N), dtype int8 or uint8
        The matrix.
    zero_point : int or ndarray of shape (N,), default 0
        Zero point of ``b``, per tensor or per column.

    Attributes
    ----------
    shape : tuple of int
        ``(K, N)``.
    dtype : numpy.dtype
        ``int8`` or ``uint8``.
    zero_point : ndarray of int32, shape (1,) or (N,)
        The zero point(s) packed with the matrix.
    nbytes : int
        Bytes held by the packed form.

    See Also
    --------
    pack_int8 : The function form.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> w = np.array([[1, -2], [3, 4]], dtype=np.int8)
    >>> packed = hw.pack_int8(w)
    >>> hw.matmul_integer(np.array([[1, 1]], dtype=np.uint8), packed)
    array([[4, 2]], dtype=int32)
    """

    def __init__(self, b: Any, zero_point: Any = 0) -> None:
        b = _int8_array(b, "b")
        if b.ndim != 2:
            raise ValueError(f"b must be 2-D (K, N) to be packed; got shape {b.shape}")
        self._set(b, _zero_point(zero_point, "b_zero_point", b.dtype, b.shape[1], "column"), transposed=False)

    def _set(self, b: np.ndarray, zp: np.ndarray, *, transposed: bool) -> None:
        self._packed = _native._pack_b(b, zp, transposed)
        self.dtype = np.dtype(b.dtype).newbyteorder("=")
        self.zero_point = zp
        self.shape = (self._packed.k, self._packed.n)

    @classmethod
    def _from_transposed(cls, w: np.ndarray, zp: np.ndarray) -> "PackedMatrix":
        """Packs ``w.T`` for a row-major ``(N, K)`` ``w`` without transposing it."""
        self = cls.__new__(cls)
        self._set(w, zp, transposed=True)
        return self

    @property
    def nbytes(self) -> int:
        return int(self._packed.nbytes)

    def unpack(self) -> np.ndarray:
        """The original ``(K, N)`` matrix."""
        return self._packed.unpack().astype(self.dtype)

    def __repr__(self) -> str:
        return f"PackedMatrix(shape={self.shape}, dtype={self.dtype}, nbytes={self.nbytes})"

    def __getstate__(self) -> dict:
        return {"b": self.unpack(), "zero_point": self.zero_point}

    def __setstate__(self, state: dict) -> None:
        self._set(np.ascontiguousarray(state["b"]), np.asarray(state["zero_point"], dtype=np.int32), transposed=False)


def pack_int8(b: Any, zero_point: Any = 0) -> PackedMatrix:
    """Pack a constant int8/uint8 ``(K, N)`` right-hand side once.

    Parameters
    ----------
    b : ndarray of shape (K, N), dtype int8 or uint8
        The matrix (e.g. weights).
    zero_point : int or ndarray of shape (N,), default 0
        Zero point of ``b``, per tensor or per column.

    Returns
    -------
    PackedMatrix
        Accepted as ``b`` by :func:`matmul_integer` and :func:`qlinear_matmul`.

    See Also
    --------
    PackedMatrix, matmul_integer

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> p = hw.pack_int8(np.eye(3, dtype=np.int8))
    >>> hw.matmul_integer(np.array([1, 2, 3], dtype=np.uint8), p)
    array([1, 2, 3], dtype=int32)
    """
    return PackedMatrix(b, zero_point)


def _operands(a: Any, b: Any):
    a = _int8_array(a, "a")
    if not isinstance(b, PackedMatrix):
        b = _int8_array(b, "b")
    return a, b


def _broadcast_product(a: np.ndarray, b: Any, za: np.ndarray, b_zp: Any, run) -> np.ndarray:
    """numpy.matmul shape rules around ``run(a2d, za, b2d, zb) -> (M, N)``.

    ``b2d`` is either the native packed matrix (``zb`` None) or a 2-D
    C-contiguous array given per call with its zero points ``zb``: the
    kernel then reads it row-major instead of packing it whole.
    """
    a_vec = a.ndim == 1
    a3 = a[None, :] if a_vec else a
    if isinstance(b, PackedMatrix):
        b_vec, bshape = False, b.shape
    else:
        b_vec = b.ndim == 1
        b = b[:, None] if b_vec else b
        bshape = b.shape
    m, k = a3.shape[-2:]
    kb, n = bshape[-2:]
    if k != kb:
        raise ValueError(f"a has shape {a.shape} and b has shape {tuple(bshape) if not b_vec else (kb,)}: "
                         f"K mismatch ({k} != {kb})")
    if za.size > 1 and za.shape[0] != m:
        raise ValueError(f"a_zero_point must be a scalar or have shape ({m},) (one per row); got shape {za.shape}")
    if isinstance(b, PackedMatrix) or b.ndim == 2:
        if isinstance(b, PackedMatrix):
            b2, zb = b._packed, None
        else:
            b2, zb = np.ascontiguousarray(b), _zp_b(b_zp, b, n)
        if a3.ndim == 2:  # fast path: one 2-D product
            out = run(a3, za, b2, zb)
        else:
            batch = a3.shape[:-2]
            count = int(np.prod(batch, dtype=np.int64))
            za_full = za if za.size == 1 else np.ascontiguousarray(np.tile(za, count))
            out = run(np.ascontiguousarray(a3.reshape(count * m, k)), za_full, b2, zb)
            out = out.reshape(*batch, m, n)
    else:
        batch = np.broadcast_shapes(a3.shape[:-2], b.shape[:-2])
        ab = np.broadcast_to(a3, (*batch, m, k))
        bb = np.broadcast_to(b, (*batch, k, n))
        zb = _zp_b(b_zp, b, n)
        results = [run(np.ascontiguousarray(ab[idx]), za, np.ascontiguousarray(bb[idx]), zb)
                   for idx in np.ndindex(*batch)]
        if results:
            out = np.stack(results).reshape(*batch, m, n)
        else:
            probe = run(np.zeros((0, k), a.dtype), za[:1], np.zeros((k, n), b.dtype), zb)
            out = np.zeros((*batch, m, n), probe.dtype)
    if a_vec:
        out = out[..., 0, :]
    if b_vec:
        out = out[..., 0]
    return out


def _zp_b(b_zp: Any, b: np.ndarray, n: int) -> np.ndarray:
    return _zero_point(b_zp, "b_zero_point", b.dtype, n, "column")


def _packed_zp_ok(b: PackedMatrix, b_zp: Any) -> None:
    if b_zp is None:
        return
    z = np.asarray(b_zp)
    if not np.array_equal(np.broadcast_to(z, b.zero_point.shape) if z.size == 1 else z, b.zero_point):
        raise ValueError("b is a PackedMatrix: its zero point was fixed by pack_int8; "
                         "pass b_zero_point=None (or the same value)")


def matmul_integer(a: Any, b: Any, a_zero_point: Any = 0, b_zero_point: Any = 0) -> np.ndarray:
    """Exact integer matrix product ``(a - a_zero_point) @ (b - b_zero_point)``.

    ONNX MatMulInteger semantics, computed exactly in int32.

    Parameters
    ----------
    a : ndarray of shape (..., M, K) or (K,), dtype uint8 or int8
        Left operand.
    b : ndarray of shape (..., K, N) or (K,), dtype uint8 or int8, or PackedMatrix
        Right operand; batch dimensions broadcast like :func:`numpy.matmul`.
    a_zero_point : int or ndarray of shape (M,), default 0
        Zero point of ``a``, per tensor or per row.
    b_zero_point : int or ndarray of shape (N,), default 0
        Zero point of ``b``, per tensor or per column. Ignored (must be 0,
        None or the packed value) when ``b`` is a :class:`PackedMatrix`.

    Returns
    -------
    ndarray of int32
        Shape as :func:`numpy.matmul` gives.

    Raises
    ------
    TypeError
        If an operand is not int8/uint8.
    ValueError
        On mismatched K, zero points out of range or of the wrong shape, or
        when ``K * max|a - za| * max|b - zb|`` exceeds ``2**31 - 1``.

    See Also
    --------
    qlinear_matmul, pack_int8

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> a = np.array([[255, 0]], dtype=np.uint8)
    >>> b = np.array([[-128], [127]], dtype=np.int8)
    >>> hw.matmul_integer(a, b, a_zero_point=128)
    array([[-32512]], dtype=int32)
    """
    fast = _fast_2d(a, b, a_zero_point, b_zero_point)
    if fast is not None:
        return _native._matmul_integer(a, _ZP0, *fast)
    a, b = _operands(a, b)
    m = a.shape[-2] if a.ndim >= 2 else 1
    za = _zero_point(a_zero_point, "a_zero_point", a.dtype, m, "row")
    if isinstance(b, PackedMatrix):
        if b_zero_point is not None and not (np.ndim(b_zero_point) == 0 and b_zero_point == 0):
            _packed_zp_ok(b, b_zero_point)
    return _broadcast_product(a, b, za, b_zero_point, _native._matmul_integer)


# The zero points of the common call, shared read-only (the kernels only read them).
_ZP0 = np.zeros(1, np.int32)
_ZP0.flags.writeable = False
_FAST_KINDS = ("B", "b")  # uint8, int8
_F32 = np.dtype(np.float32)


def _fast_2d(a: Any, b: Any, za: Any, zb: Any) -> tuple[Any, Any] | None:
    """``(b, b_zero_point)`` for the native call when the product is the common one that
    needs none of the general path's conversions: ``a`` a C-contiguous 2-D uint8/int8 ndarray,
    ``b`` a PackedMatrix or such a 2-D array with the same K, both zero points the int 0
    (at 1×1024×1024 the general path's checks cost as much as a third of the product).
    None for anything else (the general path checks and converts it)."""
    if (type(a) is not np.ndarray or a.ndim != 2 or a.dtype.char not in _FAST_KINDS
            or not a.flags.c_contiguous or type(za) is not int or za != 0):
        return None
    if type(b) is PackedMatrix:
        if (zb is None or type(zb) is int and zb == 0) and b.shape[0] == a.shape[1]:
            return b._packed, None
        return None
    if (type(b) is np.ndarray and b.ndim == 2 and b.dtype.char in _FAST_KINDS and b.flags.c_contiguous
            and type(zb) is int and zb == 0 and b.shape[0] == a.shape[1]):
        return b, None
    return None


def qlinear_matmul(a: Any, a_scale: Any, a_zero_point: Any, b: Any, b_scale: Any, b_zero_point: Any,
                   y_scale: Any, y_zero_point: Any) -> np.ndarray:
    """Quantized matrix product, ONNX QLinearMatMul, bit for bit.

    ``y = saturate(round_half_even(((a - za) @ (b - zb)) * (a_scale * b_scale / y_scale)) + y_zero_point)``
    where the multiplier is computed in float32 and the product with the exact
    int32 accumulator in float64, as ``onnx.reference`` does.

    Parameters
    ----------
    a : ndarray of shape (..., M, K), dtype uint8 or int8
    a_scale : float or ndarray of shape (M,)
        Per tensor or per row; finite and > 0.
    a_zero_point : int or ndarray of shape (M,)
    b : ndarray of shape (..., K, N), dtype uint8 or int8, or PackedMatrix
    b_scale : float or ndarray of shape (N,)
        Per tensor or per column.
    b_zero_point : int or ndarray of shape (N,)
        Ignored when ``b`` is a PackedMatrix (must be None or the packed value).
    y_scale : float
    y_zero_point : int
        Its dtype (int8 or uint8 NumPy scalar/array) picks the output dtype;
        a plain Python int gives the dtype of ``a``.

    Returns
    -------
    ndarray of uint8 or int8

    See Also
    --------
    matmul_integer

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> a = np.array([[2, 4]], dtype=np.uint8)
    >>> b = np.array([[1], [1]], dtype=np.int8)
    >>> hw.qlinear_matmul(a, 0.5, 0, b, 1.0, 0, 1.0, np.uint8(10))
    array([[13]], dtype=uint8)
    """
    a, b = _operands(a, b)
    m = a.shape[-2] if a.ndim >= 2 else 1
    n = b.shape[-1] if isinstance(b, PackedMatrix) or b.ndim >= 2 else 1
    za = _zero_point(a_zero_point, "a_zero_point", a.dtype, m, "row")
    sa = _scale(a_scale, "a_scale", m, "row")
    sb = _scale(b_scale, "b_scale", n, "column")
    ys = _scale(y_scale, "y_scale", 1, "tensor")
    ydt = getattr(y_zero_point, "dtype", None)
    ydt = np.dtype(ydt).newbyteorder("=") if ydt is not None and np.dtype(ydt) in INT8_TYPES else a.dtype
    yz = _zero_point(y_zero_point, "y_zero_point", ydt, 1, "tensor")
    if isinstance(b, PackedMatrix):
        _packed_zp_ok(b, b_zero_point)
        b_zero_point = None
    signed = ydt == np.dtype(np.int8)

    def run(a2: np.ndarray, za2: np.ndarray, b2: Any, zb2: np.ndarray | None) -> np.ndarray:
        rows = a2.shape[0]
        sa2 = sa if sa.size == 1 else np.ascontiguousarray(np.tile(sa, rows // max(m, 1)))
        return _native._qlinear_matmul(a2, sa2, za2, b2, sb, float(ys[0]), int(yz[0]), signed, zb2)

    return _broadcast_product(a, b, za, b_zero_point, run)


def _quantize_symmetric(w: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 in [-127, 127]: ``scale = max|w| / 127`` (1 for all-zero)."""
    absmax = np.abs(w).max(axis=1) if per_channel else np.array([np.abs(w).max(initial=0.0)])
    scale = (absmax / np.float32(127)).astype(np.float32)
    scale[scale == 0] = 1.0
    s = scale[:, None] if per_channel else scale[0]
    q = np.clip(np.rint(w / s), -127, 127).astype(np.int8)
    return q, scale


class Int8Linear:
    """A linear layer ``y = x @ W.T + bias`` with int8 weights packed once.

    The weight is int8 ``(out_features, in_features)`` with a scale per output
    channel (or one per tensor), zero point 0. Calling the layer on float32
    ``x`` quantizes each row of ``x`` on the fly to uint8 with its own scale
    and zero point (the ONNX DynamicQuantizeLinear formula applied per row,
    more accurate than one scale per tensor at the same cost; ``x`` is
    multiplied by ``1 / scale`` rather than divided by ``scale``, which can
    move a value by one step at a rounding tie and is several times faster), multiplies
    exactly in int32 and fuses the output step: ``acc * x_scale[row] *
    weight_scale[col] + bias[col]`` (then ReLU if ``relu``), in float32.

    Parameters
    ----------
    weight_q : ndarray of shape (out_features, in_features), dtype int8
    weight_scale : float or ndarray of shape (out_features,)
        Finite and > 0.
    bias : ndarray of shape (out_features,), optional
    relu : bool, default False
        Apply ReLU in the output step.

    Attributes
    ----------
    in_features, out_features : int
    weight_q : ndarray of int8
    weight_scale : ndarray of float32, shape (1,) or (out_features,)
    bias : ndarray of float32 or None
    relu : bool
    nbytes : int
        Bytes of the packed weights, scales and bias.

    See Also
    --------
    matmul_integer, pack_int8

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> w = np.array([[1.0, -1.0], [0.5, 0.25]], dtype=np.float32)
    >>> layer = hw.Int8Linear.from_float(w, np.array([0.0, 1.0], np.float32))
    >>> np.round(layer(np.array([[2.0, 1.0]], np.float32)), 2)
    array([[1.  , 2.25]], dtype=float32)
    """

    def __init__(self, weight_q: Any, weight_scale: Any, bias: Any = None, *, relu: bool = False) -> None:
        w = native_array(weight_q, "weight_q", [np.int8])
        if w.ndim != 2:
            raise ValueError(f"weight_q must be 2-D (out_features, in_features); got shape {w.shape}")
        self._setup(w, _scale(weight_scale, "weight_scale", w.shape[0], "output channel"), bias, check_bool(relu, "relu"))

    def _setup(self, w: np.ndarray, scale: np.ndarray, bias: Any, relu: bool) -> None:
        out_f, in_f = w.shape
        if bias is not None:
            bias = native_array(bias, "bias", cast=np.float32)
            if bias.shape != (out_f,):
                raise ValueError(f"bias must have shape ({out_f},); got {bias.shape}")
            if not np.all(np.isfinite(bias)):
                raise ValueError("bias must be finite")
        self.weight_q = w
        self.weight_scale = scale
        self.bias = bias
        self.relu = relu
        self.in_features = in_f
        self.out_features = out_f
        self._packed = PackedMatrix._from_transposed(w, np.zeros(1, np.int32))

    @classmethod
    def from_float(cls, weight: Any, bias: Any = None, *, per_channel: bool = True, relu: bool = False) -> "Int8Linear":
        """Quantize a float weight ``(out, in)`` to symmetric int8 and pack it.

        ``scale = max|w| / 127`` per output channel (or per tensor),
        ``q = clip(round_half_even(w / scale), -127, 127)``.

        Examples
        --------
        >>> import numpy as np, hwreg_rs as hw
        >>> hw.Int8Linear.from_float(np.ones((3, 4), np.float32)).weight_q[0]
        array([127, 127, 127, 127], dtype=int8)
        """
        w = native_array(weight, "weight", cast=np.float32)
        if w.ndim != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features); got shape {w.shape}")
        if w.shape[1] == 0:  # no input to take a range of (zero output rows are fine)
            raise ValueError(f"weight must have at least one input column; got shape {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ValueError("weight must be finite")
        q, scale = _quantize_symmetric(w, check_bool(per_channel, "per_channel"))
        return cls(q, scale, bias, relu=relu)

    @property
    def nbytes(self) -> int:
        return self._packed.nbytes + self.weight_scale.nbytes + (0 if self.bias is None else self.bias.nbytes)

    def _rows(self, x: np.ndarray, name: str) -> tuple[np.ndarray, tuple]:
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{name} must have shape (..., {self.in_features}); got {x.shape}")
        lead = x.shape[:-1]
        return np.ascontiguousarray(x.reshape(-1, self.in_features)), lead

    def __call__(self, x: Any) -> np.ndarray:
        """Float32 ``x`` of shape ``(..., in_features)`` -> float32 ``(..., out_features)``."""
        if (type(x) is np.ndarray and x.ndim == 2 and x.dtype is _F32 and x.flags.c_contiguous
                and x.flags.aligned and x.shape[1] == self.in_features):
            # The common call, already in the kernel's form: no conversion, no reshape.
            return _native._linear_dynamic(x, self._packed._packed, self.weight_scale, self.bias, self.relu)
        x = native_array(x, "x", cast=np.float32)
        x2, lead = self._rows(x, "x")
        y = _native._linear_dynamic(x2, self._packed._packed, self.weight_scale, self.bias, self.relu)
        return y.reshape(*lead, self.out_features)

    def forward_quantized(self, x_q: Any, x_scale: Any, x_zero_point: Any, *, y_scale: Any = None,
                          y_zero_point: Any = 0, y_dtype: Any = "uint8") -> np.ndarray:
        """The static path: already quantized activations.

        ``f = acc * x_scale * weight_scale[col] + bias[col]`` (ReLU if set), then
        float32 output, or, when ``y_scale`` is given,
        ``saturate(round_half_even(f / y_scale) + y_zero_point)`` as ``y_dtype``.

        Parameters
        ----------
        x_q : ndarray of shape (..., in_features), dtype uint8 or int8
        x_scale : float or ndarray of shape x_q.shape[:-1] (per row)
        x_zero_point : int or ndarray of shape x_q.shape[:-1] (per row)
        y_scale : float, optional
        y_zero_point : int, default 0
        y_dtype : {"uint8", "int8"}, default "uint8"

        Examples
        --------
        >>> import numpy as np, hwreg_rs as hw
        >>> layer = hw.Int8Linear(np.array([[2, 1]], np.int8), 0.5)
        >>> layer.forward_quantized(np.array([[3, 4]], np.uint8), 0.1, 2)
        array([[0.2]], dtype=float32)
        """
        x_q = _int8_array(x_q, "x_q")
        x2, lead = self._rows(x_q, "x_q")
        rows = x2.shape[0]
        zp = np.asarray(x_zero_point)
        sc = np.asarray(x_scale)
        za = _zero_point(zp.reshape(-1) if zp.ndim > 1 else zp, "x_zero_point", x_q.dtype, rows, "row")
        sa = _scale(sc.reshape(-1) if sc.ndim > 1 else sc, "x_scale", rows, "row")
        if y_scale is None:
            y = _native._linear_static(x2, sa, za, self._packed._packed, self.weight_scale, self.bias, self.relu,
                                       None, 0, False)
        else:
            ydt = np.dtype(y_dtype)
            if ydt not in INT8_TYPES:
                raise TypeError(f"y_dtype must be uint8 or int8; got {ydt}")
            ys = _scale(y_scale, "y_scale", 1, "tensor")
            yz = _zero_point(y_zero_point, "y_zero_point", ydt, 1, "tensor")
            y = _native._linear_static(x2, sa, za, self._packed._packed, self.weight_scale, self.bias, self.relu,
                                       float(ys[0]), int(yz[0]), ydt == np.dtype(np.int8))
        return y.reshape(*lead, self.out_features)

    def __repr__(self) -> str:
        return (f"Int8Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, relu={self.relu})")

    def __getstate__(self) -> dict:
        return {"weight_q": self.weight_q, "weight_scale": self.weight_scale, "bias": self.bias, "relu": self.relu}

    def __setstate__(self, state: dict) -> None:
        self._setup(np.ascontiguousarray(state["weight_q"], dtype=np.int8),
                    np.asarray(state["weight_scale"], dtype=np.float32), state["bias"], bool(state["relu"]))
