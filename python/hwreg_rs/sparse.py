"""Sparse weights and their Linear product, ``Y = X · Wᵀ + b``.

Three formats, each in float32 or int8:

* :class:`CSRMatrix` — unstructured sparsity (compressed sparse rows);
* :class:`BSRMatrix` — block sparsity; blocks matched to the SIMD width
  (1×4, 4×1, 1×8, 8×1, 4×4, 8×8, ...) run as small dense micro-kernels; int8
  blocks of 4, 8 or 16 rows × a multiple of 4 columns (16×4, 8×4, 4×4, ...) run
  over output-column panels laid out like the dense int8 GEMM's packed weights
  (``vpdpbusd`` on one register of outputs per stored group of 4 inputs), the
  fastest int8 pattern at any batch;
* :class:`NMMatrix` — compressed N:M (e.g. 2:4 along the input axis: two
  values and two offsets per group of four).

Build one with ``from_dense(w, mask=None, ...)`` from a dense ``(out, in)``
weight; ``matmul(x)`` computes ``x @ W.T (+ bias) (ReLU)`` for ``x`` of shape
``(batch, in)`` in Rust (SIMD, threads, GIL released). int8 weights are stored
with one symmetric scale per output row; ``matmul`` quantizes ``x`` per row
(uint8, asymmetric) on the fly, or takes it already quantized via
``matmul_quantized``. int8 products accumulate in int32 exactly: the build
checks that no row can overflow.

:func:`choose` says which execution path (dense float32, dense int8, sparse
float32 CSR / BSR / N:M, sparse int8) is fastest for a given
weight, mask and batch size on a hardware profile, from the package's one
cost model (:func:`hwreg_rs.profiles.estimate`); :func:`would_speed_up`
answers whether a proposed pattern and sparsity would speed anything up at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _native
from ._layerwork import LayerWork
from ._timing import median_seconds
from ._validate import check_array, check_bool, check_float, check_int, native_array

__all__ = [
    "CSRMatrix",
    "BSRMatrix",
    "NMMatrix",
    "linear",
    "quantize_activations",
    "choose",
    "would_speed_up",
    "Choice",
]

_DTYPES = ("float32", "int8")


def _weight_and_mask(w: Any, mask: Any) -> tuple[np.ndarray, np.ndarray | None]:
    w = native_array(w, "w")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (out_features, in_features); got shape {w.shape}")
    if mask is None:
        return w, None
    m = check_array(mask, "mask")
    if m.shape != w.shape:
        raise ValueError(f"mask has shape {m.shape}, expected {w.shape}")
    if m.dtype != np.bool_:
        if m.dtype.kind not in "biuf":
            raise TypeError(f"mask must be a boolean array; got dtype {m.dtype}")
        m = m != 0
    return w, np.ascontiguousarray(m)


def _int8_parts(w: np.ndarray, mask: np.ndarray | None, dtype: str, scale: Any) -> tuple[np.ndarray, np.ndarray]:
    """(q int8, scale per row) from a float weight (quantized here) or an
    int8 weight plus ``scale``."""
    if w.dtype == np.int8:
        if scale is None:
            raise ValueError("an int8 weight needs scale= (a scalar or one per output row)")
        s = native_array(scale, "scale", cast=np.float32)
        if s.size and not (np.all(np.isfinite(s)) and np.all(s > 0)):
            raise ValueError("scale must be finite and > 0")
        if s.ndim == 0:
            s = np.full(w.shape[0], s, np.float32)
        if s.shape != (w.shape[0],):
            raise ValueError(f"scale must be a scalar or have shape ({w.shape[0]},); got {s.shape}")
        return w, np.ascontiguousarray(s)
    if scale is not None:
        raise ValueError("scale= is only for int8 weights; a float weight is quantized per row here")
    if w.dtype.kind != "f":
        raise TypeError(f"w must be float or int8 for dtype='int8'; got {w.dtype}")
    return _native.quantize_weight_rows(np.ascontiguousarray(w, np.float32), mask)


def _float_weight(w: np.ndarray, scale: Any) -> np.ndarray:
    if scale is not None:
        raise ValueError("scale= is only for int8 weights")
    if w.dtype.kind not in "fiub":
        raise TypeError(f"w must be numeric; got {w.dtype}")
    return np.ascontiguousarray(w, np.float32)


def _check_dtype(dtype: Any) -> str:
    try:
        d = str(np.dtype(dtype)) if not isinstance(dtype, str) else dtype
    except TypeError:
        raise TypeError(f"dtype must be one of {_DTYPES}; got {type(dtype).__name__} {dtype!r}") from None
    if d not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}; got {dtype!r}")
    return d


class _SparseMatrix:
    """Common behaviour of the sparse formats (wraps ``_native.SparseMatrix``)."""

    _m: Any

    @classmethod
    def _wrap(cls, native: Any) -> Any:
        obj = cls.__new__(cls)
        obj._m = native
        return obj

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features)``."""
        return tuple(self._m.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> str:
        """``"float32"`` or ``"int8"``."""
        return str(self._m.dtype)

    @property
    def nnz(self) -> int:
        """Stored nonzero values."""
        return int(self._m.nnz)

    @property
    def stored(self) -> int:
        """Stored values including the zeros that pad blocks or N:M groups."""
        return int(self._m.stored)

    @property
    def density(self) -> float:
        """``nnz / (out · in)``."""
        n = self.shape[0] * self.shape[1]
        return 0.0 if n == 0 else self.nnz / n

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays: values, indices, row pointers, scales."""
        return int(self._m.nbytes)

    @property
    def scale(self) -> np.ndarray | None:
        """Per-row weight scale of an int8 matrix (``w ≈ q · scale[:, None]``)."""
        return self._m.scale()

    def to_dense(self) -> np.ndarray:
        """The dense weight in the stored dtype (int8 values for int8)."""
        return self._m.to_dense()

    def dequantize(self) -> np.ndarray:
        """The dense float32 weight (``q · scale`` for int8)."""
        d = self.to_dense()
        s = self.scale
        return d if s is None else d.astype(np.float32) * s[:, None]

    def matmul(self, x: Any, *, bias: Any = None, relu: bool = False) -> np.ndarray:
        """``x @ W.T (+ bias) (ReLU)``.

        Parameters
        ----------
        x : ndarray of shape (batch, in_features) or (in_features,)
            Activations (converted to float32). For an int8 weight they are
            quantized per row (uint8, asymmetric, range holding 0).
        bias : ndarray of shape (out_features,), optional
        relu : bool

        Returns
        -------
        ndarray of float32, shape (batch, out_features) (or (out_features,))
        """
        xa = native_array(x, "x", cast=np.float32)
        one = xa.ndim == 1
        if one:
            xa = xa.reshape(1, -1)
        if xa.ndim != 2:
            raise ValueError(f"x must be 1-D or 2-D; got shape {xa.shape}")
        b = None if bias is None else native_array(bias, "bias", cast=np.float32)
        if b is not None and b.shape != (self.shape[0],):
            raise ValueError(f"bias must have shape ({self.shape[0]},); got {b.shape}")
        y = self._m.linear(xa, b, check_bool(relu, "relu"))
        return y[0] if one else y

    def matmul_quantized(self, xq: Any, x_scale: Any, x_zero_point: Any, *, bias: Any = None,
                         relu: bool = False) -> np.ndarray:
        """int8 product with pre-quantized activations (int8 weights only).

        ``x ≈ (xq - x_zero_point[:, None]) · x_scale[:, None]``; ``xq`` is uint8
        ``(batch, in)``, ``x_scale`` / ``x_zero_point`` scalars or one per row.
        The integer part is exact (int32 accumulation, never saturated).
        """
        q = native_array(xq, "xq", [np.uint8])
        if q.ndim != 2:
            raise ValueError(f"xq must be 2-D (batch, in_features); got shape {q.shape}")
        bsz = q.shape[0]
        s = np.broadcast_to(np.asarray(x_scale, np.float32), (bsz,)).copy()
        zp = np.asarray(x_zero_point)
        if zp.dtype.kind not in "iu" or (zp.size and (zp.min() < 0 or zp.max() > 255)):
            raise ValueError("x_zero_point must hold integers in [0, 255]")
        z = np.broadcast_to(zp.astype(np.uint8), (bsz,)).copy()
        b = None if bias is None else native_array(bias, "bias", cast=np.float32)
        return self._m.linear_quantized(q, s, z, b, bool(relu))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, nnz={self.nnz}, "
                f"density={self.density:.3f}, nbytes={self.nbytes})")


class BSRMatrix(_SparseMatrix):
    """Block-sparse weight: ``r × c`` blocks, only nonzero blocks stored.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> w = np.arange(32, dtype=np.float32).reshape(4, 8)
    >>> mask = hw.prune.block_mask(w, 0.5, block=(1, 4))
    >>> m = hw.sparse.BSRMatrix.from_dense(w, mask, block=(1, 4))
    >>> m.nnz, m.block
    (16, (1, 4))
    >>> x = np.ones((3, 8), np.float32)
    >>> bool(np.allclose(m.matmul(x), x @ (w * mask).T))
    True
    """

    @classmethod
    def from_dense(cls, w: Any, mask: Any = None, *, block: tuple[int, int] = (1, 4), dtype: Any = None,
                   scale: Any = None) -> "BSRMatrix":
        """Build from a dense ``(out, in)`` weight.

        Parameters
        ----------
        w : ndarray of shape (out_features, in_features)
            Float weight, or int8 weight with ``scale``.
        mask : ndarray of bool, optional
            True = keep; entries it drops are zero.
        block : (int, int)
            Block shape ``(rows, cols)``: rows in {1, 2, 4, 8, 16}, cols in
            1..64 (int8 blocks of 4, 8 or 16 rows and width 4, 8, ... run over
            output-column panels; other int8 widths of 4, 8, ... the batch-lane
            dot kernel).
        dtype : {"float32", "int8"}, optional
            Storage type; default float32, or int8 for an int8 ``w``.
        scale : float or ndarray, optional
            Per-row (or one) scale of an int8 ``w``.
        """
        w, m = _weight_and_mask(w, mask)
        if (not isinstance(block, (tuple, list)) or len(block) != 2
                or not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in block)):
            raise TypeError(f"block must be a pair of ints; got {block!r}")
        r, c = check_int(block[0], "block[0]", 1, 1 << 16), check_int(block[1], "block[1]", 1, 1 << 16)
        d = _check_dtype(dtype if dtype is not None else ("int8" if w.dtype == np.int8 else "float32"))
        if d == "float32":
            return cls._wrap(_native.SparseMatrix.bsr_f32(_float_weight(w, scale), m, r, c))
        q, s = _int8_parts(w, m, d, scale)
        return cls._wrap(_native.SparseMatrix.bsr_i8(q, s, m, r, c))

    @property
    def block(self) -> tuple[int, int]:
        """Block shape ``(rows, cols)``."""
        return tuple(self._m.block)  # type: ignore[return-value]


class CSRMatrix(BSRMatrix):
    """Unstructured sparse weight (CSR: row pointers, column indices, values).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> w = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, -1.0]], np.float32)
    >>> m = hw.sparse.CSRMatrix.from_dense(w)
    >>> m.nnz, m.matmul(np.array([1.0, 1.0, 1.0])).tolist()
    (3, [2.0, 0.0])
    """

    @classmethod
    def from_dense(cls, w: Any, mask: Any = None, *, dtype: Any = None,  # type: ignore[override]
                   scale: Any = None, block: tuple[int, int] = (1, 1)) -> "CSRMatrix":
        """Build from a dense ``(out, in)`` weight (see :meth:`BSRMatrix.from_dense`)."""
        if tuple(block) != (1, 1):
            raise ValueError("CSRMatrix has 1x1 blocks; use BSRMatrix for blocks")
        return super().from_dense(w, mask, block=(1, 1), dtype=dtype, scale=scale)  # type: ignore[return-value]


class NMMatrix(_SparseMatrix):
    """Compressed N:M weight: per group of ``m`` input columns, ``n`` values
    and their offsets (uint8).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> w = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    >>> mask = hw.prune.nm_mask(w, 2, 4)
    >>> m = hw.sparse.NMMatrix.from_dense(w, mask, n=2, m=4)
    >>> m.density, bool(np.array_equal(m.to_dense(), w * mask))
    (0.5, True)
    """

    @classmethod
    def from_dense(cls, w: Any, mask: Any = None, *, n: int = 2, m: int = 4, dtype: Any = None,
                   scale: Any = None) -> "NMMatrix":
        """Build from a dense weight whose kept entries number at most ``n``
        in every group of ``m`` consecutive input columns (see
        :func:`hwreg_rs.prune.nm_mask`); ``ValueError`` names the first group
        that has more."""
        w, mk = _weight_and_mask(w, mask)
        m = check_int(m, "m", 1, 1 << 16)
        n = check_int(n, "n", 0, m)
        d = _check_dtype(dtype if dtype is not None else ("int8" if w.dtype == np.int8 else "float32"))
        if d == "float32":
            return cls._wrap(_native.SparseMatrix.nm_f32(_float_weight(w, scale), mk, int(n), int(m)))
        q, s = _int8_parts(w, mk, d, scale)
        return cls._wrap(_native.SparseMatrix.nm_i8(q, s, mk, int(n), int(m)))

    @property
    def n(self) -> int:
        return int(self._m.block[0])

    @property
    def m(self) -> int:
        return int(self._m.block[1])


def linear(x: Any, w: _SparseMatrix, bias: Any = None, *, relu: bool = False) -> np.ndarray:
    """``x @ W.T (+ bias) (ReLU)`` with a sparse weight (one-shot form of
    :meth:`BSRMatrix.matmul`).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> w = hw.sparse.CSRMatrix.from_dense(np.eye(3, dtype=np.float32))
    >>> hw.sparse.linear(np.array([[1.0, -2.0, 3.0]]), w, relu=True).tolist()
    [[1.0, 0.0, 3.0]]
    """
    if not isinstance(w, _SparseMatrix):
        raise TypeError(f"w must be a CSRMatrix, BSRMatrix or NMMatrix; got {type(w).__name__}")
    return w.matmul(x, bias=bias, relu=relu)


def quantize_activations(x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row uint8 asymmetric quantization of ``x`` ``(batch, k)``: the kernel crate's one
    dynamic activation quantizer, shared by the dense GEMM, the int8 sparse products and the
    runtime's convolutions (per image): ``scale = (max(0, max) - min(0, min)) / 255``,
    ``zp = round_half_even(-min / scale)``, ``q = saturate(round_half_even(x * (1 / scale)) + zp)``
    in float32 (multiplying by the reciprocal can move a value one step at a tie against a true
    division); an all-zero row gets scale 1, zero point 0.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> q, s, z = hw.sparse.quantize_activations(np.array([[-1.0, 0.0, 3.0]]))
    >>> q.tolist(), z.tolist()
    ([[0, 64, 255]], [64])
    """
    xa = native_array(x, "x", cast=np.float32)
    if xa.ndim != 2:
        raise ValueError(f"x must be 2-D (batch, k); got shape {xa.shape}")
    return _native.quantize_activation_rows(xa)


# ------------------------------------------------------------------ chooser

# int8 blocks of 4, 8 or 16 rows (4×4, 8×4, 8×8, 16×4) run over output-column panels, the
# int8 block kernel whose efficiency the profiles measure (``measure_host``: 16×4); the
# float blocks are costed with the profile's "block/fp32" efficiency (measured on 16×4 too).
# Taller blocks first: a mask that several shapes store alike (a 16×4 mask fills 8×4 and 4×4 as
# tightly) costs them alike, and the first of equal estimates wins; the taller panel shares each
# activation broadcast over more outputs and is the fastest of them.
_BLOCKS = ((16, 4), (8, 8), (8, 4), (4, 4), (8, 1), (1, 8), (4, 1), (1, 4))


def _panel_block(blk: tuple[int, int]) -> bool:
    """Whether an int8 BSR of this block runs over the output-column panels."""
    return blk[0] in (4, 8, 16) and blk[1] % 4 == 0


@dataclass
class Choice:
    """The answer of :func:`choose`.

    Attributes
    ----------
    path : str
        ``"dense_f32"``, ``"dense_int8"``, ``"csr_f32"``, ``"bsr_f32"``,
        ``"nm_f32"``, ``"csr_int8"``, ``"bsr_int8"`` or ``"nm_int8"``.
    block : tuple or None
        Block ``(r, c)`` for BSR, ``(n, m)`` for N:M.
    seconds : dict
        Estimated seconds per call of every path considered (keys
        ``"bsr_f32(1, 4)"`` etc.).
    speedup : float
        Estimated speed-up of ``path`` over the fastest dense path.
    """

    path: str
    block: tuple[int, int] | None
    seconds: dict[str, float] = field(default_factory=dict)
    speedup: float = 1.0

    def build(self, w: Any, mask: Any = None) -> Any:
        """The weight in the chosen format (a dense float32 array for
        ``dense_f32``, an :class:`hwreg_rs.Int8Linear` for ``dense_int8``)."""
        dtype = "int8" if self.path.endswith("int8") else "float32"
        if self.path == "dense_int8":
            from .gemm import Int8Linear

            wa = np.asarray(w, np.float32)
            return Int8Linear.from_float(wa if mask is None else wa * mask)
        if self.path.startswith("dense"):
            wa = np.asarray(w, np.float32)
            return wa if mask is None else wa * mask
        if self.path.startswith("nm"):
            n, m = self.block  # type: ignore[misc]
            return NMMatrix.from_dense(w, mask, n=n, m=m, dtype=dtype)
        if self.path.startswith("csr"):
            return CSRMatrix.from_dense(w, mask, dtype=dtype)
        return BSRMatrix.from_dense(w, mask, block=self.block or (1, 4), dtype=dtype)  # type: ignore[arg-type]


def _build(kind: str, w: np.ndarray, mask: np.ndarray | None, block: tuple[int, int] | None) -> Any:
    dtype = "int8" if kind.endswith("int8") else "float32"
    if kind.startswith("csr"):
        return CSRMatrix.from_dense(w, mask, dtype=dtype)
    if kind.startswith("bsr"):
        return BSRMatrix.from_dense(w, mask, block=block, dtype=dtype)  # type: ignore[arg-type]
    n, m = block  # type: ignore[misc]
    return NMMatrix.from_dense(w, mask, n=n, m=m, dtype=dtype)


def _stored_for_block(keep: np.ndarray, block: tuple[int, int]) -> int:
    r, c = block
    rows, cols = keep.shape
    pr, pc = -(-rows // r) * r, -(-cols // c) * c
    pad = np.zeros((pr, pc), bool)
    pad[:rows, :cols] = keep
    return int(pad.reshape(pr // r, r, pc // c, c).any(axis=(1, 3)).sum()) * r * c


def _nm_of(keep: np.ndarray) -> tuple[int, int] | None:
    """The tightest N:M (m in 4, 8, 16) the mask satisfies, if any, with n/m < 1."""
    rows, cols = keep.shape
    for m in (4, 8, 16):
        if cols % m:
            continue
        n = int(keep.reshape(rows, cols // m, m).sum(axis=2).max(initial=0))
        if 0 < n and 2 * n <= m:  # only patterns that halve the work or better
            return n, m
    return None


def _check_dtypes(dtypes: Any) -> tuple[str, ...]:
    if isinstance(dtypes, str) or not isinstance(dtypes, (tuple, list)):
        raise TypeError(f"dtypes must be a tuple of dtype names {_DTYPES}; got {type(dtypes).__name__} {dtypes!r}")
    if not dtypes:
        raise ValueError("dtypes must name at least one dtype")
    return tuple(_check_dtype(d) for d in dtypes)


def _candidate_work(path: str, shape: tuple[int, int], stored: int, batch: int) -> LayerWork:
    """What one execution path of a ``(n, k)`` Linear weight with ``stored`` stored values computes
    and moves for ``batch`` rows, for the cost model."""
    n, k = shape
    prec = "int8" if path.endswith("int8") else "fp32"
    size = 1 if prec == "int8" else 4
    rows = (batch, k, n)
    if path.startswith("dense"):
        return LayerWork(path, "linear", batch * k * n, size * k * n + 8 * n, batch * k * 4, batch * n * 4, prec,
                         gemm=rows)
    pattern = "n:m" if path.startswith("nm") else "block" if path.startswith("bsr") else "unstructured"
    index = 1 if pattern == "n:m" else 4 / 8 if pattern == "block" else 4
    return LayerWork(path, "linear", batch * k * n, int(stored * (size + index)) + 8 * n, batch * k * 4,
                     batch * n * 4, prec, density=min(1.0, stored / max(n * k, 1)), pattern=pattern, gemm=rows,
                     sparse_kernel=True)


def _measured(path: str, block: tuple[int, int] | None, w: np.ndarray, mask: np.ndarray | None,
              batch: int) -> float:
    """Seconds of one call of ``path`` at the real shape, with the package's one timer."""
    x = np.random.default_rng(99).standard_normal((batch, w.shape[1])).astype(np.float32)
    built = Choice(path, block).build(w, mask)
    if path == "dense_f32":
        return median_seconds(lambda: x @ built.T)
    if path == "dense_int8":
        return median_seconds(lambda: built(x))
    return median_seconds(lambda: built.matmul(x))


def choose(w: Any, mask: Any = None, batch: int = 1, *, dtypes: tuple[str, ...] = ("float32", "int8"),
           profile: Any = None, verify: bool | None = None) -> Choice:
    """The fastest way to run ``x @ (w * mask).T`` for ``x`` of ``batch`` rows.

    Candidates: dense float32 (NumPy), dense int8, CSR, the SIMD block shapes
    the mask fills best (1×4, 4×1, 1×8, 8×1, 4×4, 8×4, 8×8, 16×4; in int8 those
    that run over output-column panels: 4×4, 8×4, 8×8, 16×4), N:M when the mask
    is N:M with n/m <= 1/2, each in float32 and int8. Every candidate is
    costed by the one cost model, :func:`hwreg_rs.profiles.estimate` on
    ``profile``, from the exact count of values it stores (blocks padded):
    the profile holds each sparsity pattern's efficiency per precision
    (``"block"`` for the int8 panels, ``"block/fp32"`` for the float blocks,
    ...), measured on this machine by :func:`hwreg_rs.profiles.measure_host`.
    The answer is the candidate of least estimated time. On the host the best
    candidate, when sparse, is then timed once against the best dense path at
    the real shape (the package's one timer), and kept only if it is faster.

    Parameters
    ----------
    w : ndarray of shape (out_features, in_features)
    mask : ndarray of bool, optional
        Default: the nonzeros of ``w``.
    batch : int
        Rows of ``x``.
    dtypes : tuple of str
        Which value types are acceptable.
    profile : HardwareProfile or str, optional
        The target (a profile, a preset name or ``"host"``); default this
        machine (:func:`hwreg_rs.profiles.host_profile`).
    verify : bool, optional
        Time the best sparse candidate against dense (default: when the
        profile is the host's).

    Returns
    -------
    Choice

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> w = np.random.default_rng(0).normal(size=(256, 256)).astype(np.float32)
    >>> c = hw.sparse.choose(w, hw.prune.magnitude_mask(w, 0.95), batch=32, profile="x86-avx2")
    >>> c.path in {"csr_f32", "bsr_f32", "csr_int8", "bsr_int8", "dense_f32", "dense_int8"}
    True
    """
    from . import profiles

    wa, m = _weight_and_mask(w, mask)
    keep = (wa != 0) if m is None else (m & (wa != 0))
    # A verification times this batch: bound it so the measurement stays a measurement.
    batch = check_int(batch, "batch", 1, 1 << 16)
    dtypes = _check_dtypes(dtypes)
    if wa.size == 0:
        raise ValueError(f"w is empty (shape {wa.shape}): there is no product to choose a path for")
    prof = profiles.resolve(profile)
    shape = (int(wa.shape[0]), int(wa.shape[1]))
    stored: dict[str, int] = {"dense_f32": wa.size}
    if "int8" in dtypes:
        stored["dense_int8"] = wa.size
    nnz = int(keep.sum())
    nm = _nm_of(keep)
    for d in dtypes:
        suf = "f32" if d == "float32" else "int8"
        stored[f"csr_{suf}"] = nnz
        for blk in _BLOCKS:
            if d == "int8" and not _panel_block(blk):
                # Narrower int8 blocks run the batch-lane dot kernels, slower per stored value
                # than the panels and not what the profile's int8 "block" efficiency measures:
                # a mask of such blocks is costed as CSR int8 or as panels with the padding.
                continue
            count = _stored_for_block(keep, blk)
            if count <= 0.75 * wa.size:
                stored[f"bsr_{suf}{blk}"] = count
        if nm is not None:
            stored[f"nm_{suf}{nm}"] = wa.shape[0] * wa.shape[1] // nm[1] * nm[0]
    est = {key: profiles.estimate([_candidate_work(key.split("(")[0], shape, count, batch)], prof).latency_s
           for key, count in stored.items()}
    dense_key = min((k for k in est if k.startswith("dense")), key=lambda k: est[k])
    best = min(est, key=lambda k: est[k])
    if (prof.name == "host" if verify is None else verify) and not best.startswith("dense"):
        path, block = _parse_key(best)
        dpath, _ = _parse_key(dense_key)
        est[best] = _measured(path, block, wa, m, batch)
        est[dense_key] = _measured(dpath, None, wa, m, batch)
        if est[best] >= est[dense_key]:
            best = dense_key
    path, block = _parse_key(best)
    speedup = est[dense_key] / est[best] if est[best] > 0 else math.inf
    return Choice(path, block, est, speedup)


def _parse_key(key: str) -> tuple[str, tuple[int, int] | None]:
    """``"bsr_int8(1, 4)"`` -> ``("bsr_int8", (1, 4))``; CSR's block is ``(1, 1)``."""
    path = key.split("(")[0]
    if "(" in key:
        a, b = (int(v) for v in key[key.index("(") + 1:-1].split(","))
        return path, (a, b)
    return path, (1, 1) if path.startswith("csr") else None


def would_speed_up(pattern: Any, sparsity: float, batch: int, *, shape: tuple[int, int] = (1024, 1024),
                   dtypes: tuple[str, ...] = ("float32", "int8"), profile: Any = None) -> bool:
    """Whether pruning to ``pattern`` at ``sparsity`` would make a Linear
    layer of ``shape`` faster than dense on this machine at ``batch``.

    Parameters
    ----------
    pattern : "unstructured", "n:m" (e.g. "2:4") or a block ``(r, c)``
    sparsity : float
        Fraction pruned (ignored for N:M, where it is ``1 - n/m``).
    batch : int
    shape : (int, int)
        ``(out_features, in_features)`` of the layer.
    dtypes : tuple of str
        Value types allowed for the sparse path.
    profile : HardwareProfile or str, optional
        The target, as for :func:`choose` (default: this machine).

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> isinstance(hw.sparse.would_speed_up("unstructured", 0.5, 32, shape=(256, 256)), bool)
    True
    """
    from . import prune

    sparsity = check_float(sparsity, "sparsity", 0.0, 1.0)
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        raise TypeError(f"shape must be a pair of ints (out_features, in_features); got {shape!r}")
    shape = (check_int(shape[0], "shape[0]", 1, 1 << 16), check_int(shape[1], "shape[1]", 1, 1 << 16))
    batch = check_int(batch, "batch", 1, 1 << 16)
    dtypes = _check_dtypes(dtypes)
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    if isinstance(pattern, str) and pattern == "unstructured":
        mask = prune.magnitude_mask(w, sparsity)
    elif isinstance(pattern, str) and ":" in pattern:
        try:
            n, m = (int(v) for v in pattern.split(":"))
        except ValueError:
            raise ValueError(f"pattern must be 'unstructured', 'n:m' or a block (r, c); got {pattern!r}") from None
        mask = prune.nm_mask(w, n, m)
    elif isinstance(pattern, (tuple, list)) and len(pattern) == 2:
        mask = prune.block_mask(w, sparsity, block=tuple(pattern))  # type: ignore[arg-type]
    else:
        raise ValueError(f"pattern must be 'unstructured', 'n:m' or a block (r, c); got {pattern!r}")
    c = choose(w, mask, batch, dtypes=dtypes, profile=profile)
    return not c.path.startswith("dense") and c.speedup > 1.0
