"""int4 weights that are really 4-bit: two codes per byte, per-channel or per-group scales.

A weight ``(out_features, in_features)`` is stored as 4-bit codes
``u in [0, 15]``, two per byte: row ``n`` is ``ceil(in_features / 2)`` bytes,
byte ``i`` holds ``u[n, 2i]`` in its low nibble and ``u[n, 2i + 1]`` in its
high one (the order of ONNX Runtime's ``MatMulNBits``). The integer weight is
``u - z`` with a zero point ``z`` per ``(row, group)``; symmetric weights use
``z = 8`` (``w in [-8, 7]``) and store no zero points. Groups run along the
input axis (``group_size`` of 32, 64 or 128, the last one may be short) or
cover a whole row (``group_size=None``, one scale per output channel).

:class:`Int4Linear` runs ``x @ W.T + bias`` with the kernel crate's int4
kernels: each row of ``x`` is quantized to uint8 on the fly (the same row
quantizer as :class:`hwreg_rs.Int8Linear`), multiplied exactly in int32 per
group (:meth:`Int4Linear.group_sums`), and scaled in float32 (the formulas are
in the docstring of ``rust/kernels/src/int4/mod.rs``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import _native
from ._validate import check_bool, native_array
from .quant import calibrate, quantize

__all__ = ["Int4Linear", "QuantizedInt4", "pack_nibbles", "quantize_weight", "unpack_nibbles"]

GROUP_SIZES = (None, 32, 64, 128)


class QuantizedInt4(NamedTuple):
    """An int4 weight as :func:`quantize_weight` returns it (and the ``.hwreg`` file stores it).

    Attributes
    ----------
    packed : ndarray of uint8, shape (out_features, ceil(in_features / 2))
        The codes, two per byte (low nibble first).
    scales : ndarray of float32, shape (out_features, ngroups)
    zero_points : ndarray of uint8, shape (out_features, ngroups), or None
        ``None``: symmetric (every zero point is 8).
    in_features : int
    group_size : int or None
        ``None``: one group per output channel.
    """

    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    in_features: int
    group_size: int | None


def _check_group_size(group_size: Any) -> int | None:
    if group_size is not None and (isinstance(group_size, (bool, np.bool_))
                                   or not isinstance(group_size, (int, np.integer))):
        raise TypeError(f"group_size must be None or an int; got {type(group_size).__name__}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}; got {group_size!r}")
    return None if group_size is None else int(group_size)


def _check_weight(w: Any) -> np.ndarray:
    w = native_array(w, "weight", cast=np.float32)
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features); got shape {w.shape}")
    if w.shape[1] == 0:
        raise ValueError(f"weight must have at least one input column; got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weight must be finite")
    return w


def pack_nibbles(codes: Any) -> np.ndarray:
    """Pack 4-bit codes ``(rows, k)`` in ``[0, 15]`` two per byte (low nibble first).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.int4.pack_nibbles(np.array([[1, 2, 15]], np.uint8))
    array([[33, 15]], dtype=uint8)
    """
    c = native_array(codes, "codes", [np.uint8, np.int8, np.int16, np.int32, np.int64])
    if c.ndim != 2:
        raise ValueError(f"codes must be 2-D; got shape {c.shape}")
    if c.size and (c.min() < 0 or c.max() > 15):
        raise ValueError(f"codes must lie in [0, 15]; got [{c.min()}, {c.max()}]")
    c = c.astype(np.uint8)
    if c.shape[1] % 2:
        c = np.concatenate([c, np.zeros((c.shape[0], 1), np.uint8)], axis=1)
    return np.ascontiguousarray(c[:, 0::2] | (c[:, 1::2] << 4))


def unpack_nibbles(packed: Any, in_features: int) -> np.ndarray:
    """The codes ``(rows, in_features)`` of :func:`pack_nibbles`'s bytes.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.int4.unpack_nibbles(np.array([[33, 15]], np.uint8), 3)
    array([[ 1,  2, 15]], dtype=uint8)
    """
    p = native_array(packed, "packed", [np.uint8])
    if p.ndim != 2 or p.shape[1] != (int(in_features) + 1) // 2:
        raise ValueError(f"packed must have shape (rows, {(int(in_features) + 1) // 2}); got {p.shape}")
    out = np.empty((p.shape[0], 2 * p.shape[1]), np.uint8)
    out[:, 0::2] = p & 15
    out[:, 1::2] = p >> 4
    return out[:, :in_features]


def _groups(a: np.ndarray, group: int) -> np.ndarray:
    """``(n, k)`` zero-padded to whole groups, as ``(n * ngroups, group)``."""
    n, k = a.shape
    ng = -(-k // group)
    padded = np.zeros((n, ng * group), a.dtype)
    padded[:, :k] = a
    return padded.reshape(n * ng, group)


def quantize_weight(w: Any, *, group_size: int | None = None, symmetric: bool = True) -> QuantizedInt4:
    """Quantize a float weight ``(out, in)`` to packed int4 codes with per-channel or per-group scales.

    Each group (``group_size`` inputs of a row, or the whole row) gets
    :func:`hwreg_rs.calibrate`'s min/max parameters on a 4-bit grid
    (PyTorch's observer formulas): symmetric ``scale = max|w| / 7.5``,
    ``q = clip(round_half_even(w / scale), -8, 7)`` stored as ``u = q + 8``;
    asymmetric ``scale = (max(w, 0) - min(w, 0)) / 15``, a zero point in
    ``[0, 15]`` and ``u = clip(round_half_even(w / scale) + zp, 0, 15)``.

    Parameters
    ----------
    w : array_like of float, shape (out_features, in_features)
    group_size : {None, 32, 64, 128}, default None
        Inputs per scale along a row; ``None``: one scale per output channel.
    symmetric : bool, default True

    Returns
    -------
    QuantizedInt4

    See Also
    --------
    Int4Linear.from_float

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> q = hw.int4.quantize_weight(np.array([[1.0, -1.0, 0.5]], np.float32))
    >>> q.packed, q.scales, q.zero_points
    (array([[31, 12]], dtype=uint8), array([[0.13333334]], dtype=float32), None)
    """
    w = _check_weight(w)
    group = _check_group_size(group_size)
    symmetric = check_bool(symmetric, "symmetric")
    n, k = w.shape
    g = k if group is None else group
    ng = -(-k // g)
    if n == 0:
        scales = np.ones((0, ng), np.float32)
        return QuantizedInt4(np.zeros((0, (k + 1) // 2), np.uint8), scales,
                             None if symmetric else np.zeros((0, ng), np.uint8), k, group)
    wg = _groups(w, g)
    qp = calibrate(wg, method="minmax", dtype="int8" if symmetric else "uint8", symmetric=symmetric,
                   axis=0, bits=4)
    q = quantize(wg, qp).reshape(n, ng * g)[:, :k]
    codes = (q.astype(np.int16) + 8) if symmetric else q
    zps = None if symmetric else np.asarray(qp.zero_point).astype(np.uint8).reshape(n, ng)
    return QuantizedInt4(pack_nibbles(codes), np.asarray(qp.scale, np.float32).reshape(n, ng), zps, k, group)


class Int4Linear:
    """A linear layer ``y = x @ W.T + bias`` with int4 weights (two per byte) packed once.

    Parameters
    ----------
    weight : QuantizedInt4
        From :func:`quantize_weight` (or read back from a file).
    bias : ndarray of shape (out_features,), optional
    relu : bool, default False
        Apply ReLU in the output step.

    Attributes
    ----------
    in_features, out_features, group_size : int (group_size None per channel)
    weight : QuantizedInt4
    bias : ndarray of float32 or None
    relu : bool
    nbytes : int
        Bytes of the stored form: packed codes, scales, zero points and bias.

    See Also
    --------
    quantize_weight, hwreg_rs.Int8Linear

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> w = np.array([[1.0, -1.0], [0.5, 0.25]], dtype=np.float32)
    >>> layer = hw.int4.Int4Linear.from_float(w, np.array([0.0, 1.0], np.float32))
    >>> np.round(layer(np.array([[2.0, 1.0]], np.float32)), 1)
    array([[0.9, 2.2]], dtype=float32)
    """

    def __init__(self, weight: QuantizedInt4, bias: Any = None, *, relu: bool = False) -> None:
        if not isinstance(weight, QuantizedInt4):
            raise TypeError(f"weight must be a QuantizedInt4 (see quantize_weight); got {type(weight).__name__}")
        k = weight.in_features
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"in_features must be an int >= 1; got {k!r}")
        group = _check_group_size(weight.group_size)
        packed = native_array(weight.packed, "packed", [np.uint8])
        if packed.ndim != 2:
            raise ValueError(f"packed must be 2-D (out_features, ceil(in_features / 2)); got shape {packed.shape}")
        n = packed.shape[0]
        ng = 1 if group is None else -(-int(k) // group)
        scales = native_array(weight.scales, "scales", cast=np.float32)
        if scales.shape != (n, ng):
            raise ValueError(f"scales must have shape ({n}, {ng}); got {scales.shape}")
        zps = None
        if weight.zero_points is not None:
            zps = native_array(weight.zero_points, "zero_points", [np.uint8])
            if zps.shape != (n, ng):
                raise ValueError(f"zero_points must have shape ({n}, {ng}); got {zps.shape}")
        if bias is not None:
            bias = native_array(bias, "bias", cast=np.float32)
            if bias.shape != (n,):
                raise ValueError(f"bias must have shape ({n},); got {bias.shape}")
            if not np.all(np.isfinite(bias)):
                raise ValueError("bias must be finite")
        self.relu = check_bool(relu, "relu")
        self._w = _native._int4_pack(packed, int(k), group, scales, zps)
        self.weight = QuantizedInt4(packed, scales, zps, int(k), group)
        self.bias = bias
        self.in_features = int(k)
        self.out_features = n
        self.group_size = group

    @classmethod
    def from_float(cls, weight: Any, bias: Any = None, *, group_size: int | None = None, symmetric: bool = True,
                   relu: bool = False) -> "Int4Linear":
        """Quantize a float weight ``(out, in)`` with :func:`quantize_weight` and pack it.

        Examples
        --------
        >>> import numpy as np, hwreg_rs as hw
        >>> hw.int4.Int4Linear.from_float(np.ones((3, 64), np.float32), group_size=32).weight.scales.shape
        (3, 2)
        """
        return cls(quantize_weight(weight, group_size=group_size, symmetric=symmetric), bias, relu=relu)

    @classmethod
    def from_int(cls, q: Any, scales: Any, bias: Any = None, *, group_size: int | None = None,
                 relu: bool = False) -> "Int4Linear":
        """A symmetric layer from integer weights ``q`` in ``[-8, 7]`` and their scales ``(out, ngroups)``.

        For weights already on a 4-bit grid (a QAT layer's): nothing is re-quantized.

        Examples
        --------
        >>> import numpy as np, hwreg_rs as hw
        >>> layer = hw.int4.Int4Linear.from_int(np.array([[-8, 7]], np.int8), np.array([[0.5]], np.float32))
        >>> layer.dequantized_weight()
        array([[-4. ,  3.5]], dtype=float32)
        """
        q = native_array(q, "q", [np.int8, np.int16, np.int32, np.int64])
        if q.ndim != 2 or q.shape[1] == 0:
            raise ValueError(f"q must be 2-D (out_features, in_features >= 1); got shape {q.shape}")
        if q.size and (q.min() < -8 or q.max() > 7):
            raise ValueError(f"q must lie in [-8, 7]; got [{q.min()}, {q.max()}]")
        scales = native_array(scales, "scales", cast=np.float32)
        return cls(QuantizedInt4(pack_nibbles(q.astype(np.int16) + 8), scales, None, q.shape[1],
                                 _check_group_size(group_size)), bias, relu=relu)

    @property
    def nbytes(self) -> int:
        zp = 0 if self.weight.zero_points is None else self.weight.zero_points.nbytes
        return self.weight.packed.nbytes + self.weight.scales.nbytes + zp + (0 if self.bias is None else self.bias.nbytes)

    def codes(self) -> np.ndarray:
        """The codes ``u`` as uint8 ``(out, in)``."""
        return unpack_nibbles(self.weight.packed, self.in_features)

    def int_weight(self) -> np.ndarray:
        """The integer weight ``u - z`` as int8 ``(out, in)``."""
        z = self._per_input(np.full(self.weight.scales.shape, 8, np.uint8) if self.weight.zero_points is None
                            else self.weight.zero_points)
        return (self.codes().astype(np.int16) - z).astype(np.int8)

    def _per_input(self, a: np.ndarray) -> np.ndarray:
        """A per-group array ``(out, ngroups)`` repeated along the inputs ``(out, in)``."""
        g = self.in_features if self.group_size is None else self.group_size
        return np.repeat(a, g, axis=1)[:, :self.in_features]

    def dequantized_weight(self) -> np.ndarray:
        """The float32 weight the layer multiplies by: ``(u - z) * scale``."""
        return (self.int_weight().astype(np.float32) * self._per_input(self.weight.scales)).astype(np.float32)

    def _rows(self, x: Any, name: str, dtypes: Any = None, cast: Any = None) -> tuple[np.ndarray, tuple]:
        x = native_array(x, name, dtypes, cast=cast)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{name} must have shape (..., {self.in_features}); got {x.shape}")
        return np.ascontiguousarray(x.reshape(-1, self.in_features)), x.shape[:-1]

    def __call__(self, x: Any) -> np.ndarray:
        """Float32 ``x`` of shape ``(..., in_features)`` -> float32 ``(..., out_features)``."""
        return self.forward(x)

    def forward(self, x: Any) -> np.ndarray:
        """Float32 ``x`` of shape ``(..., in_features)`` -> float32 ``(..., out_features)``.

        Examples
        --------
        >>> import numpy as np, hwreg_rs as hw
        >>> layer = hw.int4.Int4Linear.from_float(np.eye(2, dtype=np.float32), relu=True)
        >>> np.round(layer.forward(np.array([[1.0, -1.0]], np.float32)), 2)  # 1.0 -> 7 / 7.5 on the grid
        array([[0.93, 0.  ]], dtype=float32)
        """
        x2, lead = self._rows(x, "x", cast=np.float32)
        y = _native._int4_linear(x2, self._w, self.bias, self.relu)
        return y.reshape(*lead, self.out_features)

    def group_sums(self, x_q: Any) -> np.ndarray:
        """Exact ``D[m, n, g] = sum over group g of x_q[m, k] * (u - z)[n, k]`` of uint8 ``x_q``, int32.

        Examples
        --------
        >>> import numpy as np, hwreg_rs as hw
        >>> layer = hw.int4.Int4Linear.from_int(np.array([[-8, 7, 1]], np.int8), np.ones((1, 1), np.float32))
        >>> layer.group_sums(np.array([[255, 255, 2]], np.uint8))
        array([[[-253]]], dtype=int32)
        """
        x2, lead = self._rows(x_q, "x_q", [np.uint8])
        d = _native._int4_group_sums(x2, self._w)
        return d.reshape(*lead, self.out_features, d.shape[-1])
