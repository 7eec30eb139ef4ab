"""Pruning masks, importance scores, thresholds and sparsity schedules.

Masks are boolean arrays of the weight's shape, ``True`` = keep. The mask
functions follow :mod:`torch.nn.utils.prune`:

* an ``int`` amount is a count, a ``float`` amount a fraction in [0, 1]; the
  pruned count is ``round(amount * n)`` with Python's ``round`` (halves to
  even), where ``n`` counts the entries (or slices, or blocks) *still kept*;
* given ``mask=`` (the mask of an earlier pruning step) the amount applies to
  the entries still kept and the new mask is never looser than the old one,
  exactly as torch's ``PruningContainer`` combines successive prunings;
* ``importance_scores=`` replaces the weight as the ranking key (its
  magnitude is used, as torch does).

**Ties** in magnitude are broken deterministically: among equal magnitudes the
entry (slice, block) with the **lower flat index is pruned first**. The order
does not depend on thread count or SIMD path. (torch leaves the tie order to
``torch.topk``, which is unspecified.)

Selection runs in Rust (``_native.prune_smallest``): a parallel histogram of
magnitude bits finds the cut, a selection (not a sort) resolves it exactly,
and the GIL is released throughout.

The stateful helpers (:class:`ScoreAccumulator`, the threshold strategies and
the schedules) are plain objects meant to be driven by a training loop: a
schedule's ``__call__(step)`` gives the target for that step and
``should_update(step)`` says whether the mask should be recomputed.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np

from . import _native
from ._validate import check_array, check_choice, check_float, check_int, native_array, normalize_axis
from .shrink import ChannelGroup, ShrinkPlan, shrink, shrink_plan  # structured pruning that shrinks the model

__all__ = [
    "magnitude_mask",
    "structured_mask",
    "global_magnitude_masks",
    "nm_mask",
    "block_mask",
    "random_mask",
    "threshold_mask",
    "gradient_scores",
    "taylor_scores",
    "ScoreAccumulator",
    "FixedThreshold",
    "MeanThreshold",
    "TargetSparsity",
    "ConstantSchedule",
    "PolynomialDecay",
    "ExponentialThresholdDecay",
    "sparsity",
    "shrink", "shrink_plan", "ShrinkPlan", "ChannelGroup",
]


# --------------------------------------------------------------- validation

def _validate_amount(amount: Any) -> None:
    """torch's ``_validate_pruning_amount_init`` (bools are rejected)."""
    if isinstance(amount, (bool, np.bool_)) or not isinstance(amount, numbers.Real):
        raise TypeError(f"Invalid type for amount: {amount!r}. Must be int or float.")
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise ValueError(f"amount={amount} should either be a float in the range [0, 1] or a non-negative integer")
    elif not (0.0 <= float(amount) <= 1.0):  # also rejects NaN
        raise ValueError(f"amount={amount} should either be a float in the range [0, 1] or a non-negative integer")


def _nparams_to_prune(amount: Any, size: int) -> int:
    """torch's ``_compute_nparams_toprune`` + ``_validate_pruning_amount``."""
    _validate_amount(amount)
    if isinstance(amount, numbers.Integral):
        k = int(amount)
        if k > size:
            raise ValueError(f"amount={k} should be smaller than the number of parameters to prune={size}")
        return k
    return int(round(float(amount) * size))


def _scores(w: Any, importance_scores: Any, name: str = "w") -> np.ndarray:
    w = native_array(w, name)
    if importance_scores is None:
        s = w
    else:
        s = native_array(importance_scores, "importance_scores")
        if s.shape != w.shape:
            raise ValueError(f"importance_scores has shape {s.shape}, expected {w.shape}")
    if s.dtype not in (np.float32, np.float64):
        # float32 holds every value of the small types exactly; wider ones go to float64.
        small = s.dtype.kind == "b" or s.dtype.itemsize <= 2
        s = s.astype(np.float32 if small else np.float64)
    return np.asarray(s, order="C")  # np.ascontiguousarray would make a 0-d weight shape (1,)


def _mask(mask: Any, shape: tuple, name: str = "mask") -> np.ndarray | None:
    if mask is None:
        return None
    m = check_array(mask, name)
    if m.shape != tuple(shape):
        raise ValueError(f"{name} has shape {m.shape}, expected {tuple(shape)}")
    if m.dtype != np.bool_:
        if m.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a boolean (or 0/1) array; got dtype {m.dtype}")
        m = m != 0
    return np.asarray(m, order="C")


def _smallest(scores: np.ndarray, k: int, eligible: np.ndarray | None) -> np.ndarray:
    """Flat keep-mask pruning the k smallest |scores| among eligible."""
    el = None if eligible is None else np.ascontiguousarray(eligible.reshape(-1))
    return _native.prune_smallest(np.ascontiguousarray(scores.reshape(-1)), k, el)


# -------------------------------------------------------------------- masks

def magnitude_mask(w: Any, amount: Any, *, mask: Any = None, importance_scores: Any = None) -> np.ndarray:
    """Unstructured magnitude mask (torch ``l1_unstructured``).

    Parameters
    ----------
    w : ndarray
        The weight, any shape, float or integer.
    amount : int or float
        Entries to prune: an int is a count, a float a fraction of the entries
        still kept (pruned count ``round(amount * n)``, halves to even).
    mask : ndarray of bool, optional
        Mask of an earlier step; only its kept entries are candidates and the
        amount applies to them.
    importance_scores : ndarray, optional
        Rank by ``|importance_scores|`` instead of ``|w|``.

    Returns
    -------
    ndarray of bool, shape ``w.shape``
        ``True`` = keep. Among equal magnitudes the lower flat index is pruned
        first.

    See Also
    --------
    global_magnitude_masks, threshold_mask, TargetSparsity

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.prune.magnitude_mask(np.array([3.0, -1.0, 2.0, 0.5]), 0.5)
    array([ True, False,  True, False])
    """
    s = _scores(w, importance_scores)
    m = _mask(mask, s.shape)
    size = int(s.size if m is None else np.count_nonzero(m))
    k = _nparams_to_prune(amount, size)
    return _smallest(s, k, m).reshape(s.shape)


def global_magnitude_masks(ws: Sequence[Any], amount: Any, *, masks: Sequence[Any] | None = None,
                           importance_scores: Sequence[Any] | None = None) -> list[np.ndarray]:
    """One magnitude threshold over several tensors (torch ``global_unstructured``).

    Parameters
    ----------
    ws : sequence of ndarray
        The weights.
    amount : int or float
        Count or fraction of all still-kept entries, over every tensor together.
    masks : sequence of (ndarray of bool or None), optional
        Earlier masks, one per weight.
    importance_scores : sequence of (ndarray or None), optional
        Scores to rank by, one per weight.

    Returns
    -------
    list of ndarray of bool
        One mask per weight. Ties: lower index in the concatenation of the
        flattened tensors (in order) pruned first.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> a, b = np.array([1.0, 4.0]), np.array([[2.0, 3.0]])
    >>> [m.tolist() for m in hw.prune.global_magnitude_masks([a, b], 2)]
    [[False, True], [[False, True]]]
    """
    if isinstance(ws, (np.ndarray, str, bytes, dict)) or not hasattr(ws, "__iter__"):
        raise TypeError(f"ws must be a sequence (list or tuple) of arrays; got {type(ws).__name__}")
    ws = list(ws)
    if not ws:
        raise ValueError("ws must hold at least one array")
    masks = [None] * len(ws) if masks is None else list(masks)
    imps = [None] * len(ws) if importance_scores is None else list(importance_scores)
    if len(masks) != len(ws) or len(imps) != len(ws):
        raise ValueError(f"got {len(ws)} weights, {len(masks)} masks and {len(imps)} importance score arrays")
    scores = [_scores(w, s, f"ws[{i}]") for i, (w, s) in enumerate(zip(ws, imps))]
    dtype = np.float64 if any(s.dtype == np.float64 for s in scores) else np.float32
    flat = np.concatenate([s.reshape(-1).astype(dtype, copy=False) for s in scores])
    ms = [_mask(m, s.shape, f"masks[{i}]") for i, (m, s) in enumerate(zip(masks, scores))]
    el = None
    if any(m is not None for m in ms):
        el = np.concatenate([(np.ones(s.size, bool) if m is None else m.reshape(-1)) for m, s in zip(ms, scores)])
    size = int(flat.size if el is None else np.count_nonzero(el))
    keep = _smallest(flat, _nparams_to_prune(amount, size), el)
    out, start = [], 0
    for s in scores:
        out.append(keep[start:start + s.size].reshape(s.shape))
        start += s.size
    return out


def _slice_norms(s: np.ndarray, n: Any, axis: int) -> np.ndarray:
    """torch ``_compute_norm``: the Ln norm of each slice along ``axis``."""
    a = np.abs(np.moveaxis(s, axis, 0).reshape(s.shape[axis], -1).astype(np.float64))
    if isinstance(n, str) and n == "fro":
        n = 2
    if isinstance(n, str) or isinstance(n, bool) or not isinstance(n, numbers.Real) or math.isnan(n):
        raise ValueError(f"norm order n must be a real number, inf, -inf or 'fro'; got {n!r}")
    if a.shape[1] == 0:
        return np.zeros(a.shape[0])
    if n == math.inf:
        return a.max(axis=1)
    if n == -math.inf:
        return a.min(axis=1)
    if n == 0:
        return np.count_nonzero(a, axis=1).astype(np.float64)
    return (a ** n).sum(axis=1) ** (1.0 / n)


def structured_mask(w: Any, amount: Any, *, n: Any = 2, dim: int = 0, mask: Any = None,
                    importance_scores: Any = None) -> np.ndarray:
    """Drop whole slices along ``dim`` by their Ln norm (torch ``ln_structured``).

    Parameters
    ----------
    w : ndarray of at least 2 dimensions
        The weight, e.g. Linear ``(out, in)`` or Conv2d ``(out, in, kh, kw)``.
    amount : int or float
        Slices to prune: count, or fraction of the slices still kept (a slice
        is kept while ``mask`` keeps any entry of it).
    n : int, float, inf, -inf or "fro"
        Norm order, as torch's ``n``.
    dim : int
        0 prunes output neurons / filters, 1 input channels.
    mask : ndarray of bool, optional
        Earlier mask, combined as torch's ``PruningContainer``.
    importance_scores : ndarray, optional
        Norms are taken of these instead of ``w``.

    Returns
    -------
    ndarray of bool
        Ties in norm: lower slice index pruned first.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> w = np.array([[1.0, 1.0], [3.0, 0.0], [0.1, 0.1]])
    >>> hw.prune.structured_mask(w, 1, n=1, dim=0).all(axis=1)
    array([ True,  True, False])
    """
    s = _scores(w, importance_scores)
    if s.ndim < 2:
        raise ValueError(
            f"Structured pruning can only be applied to multidimensional tensors. Found tensor of shape "
            f"{s.shape} with {s.ndim} dims")
    dim = normalize_axis(dim, s.ndim, "dim")
    m = _mask(mask, s.shape)
    other = tuple(d for d in range(s.ndim) if d != dim)
    kept_slices = np.ones(s.shape[dim], bool) if m is None else m.any(axis=other)
    size = int(np.count_nonzero(kept_slices))
    k = _nparams_to_prune(amount, size)
    if k == 0:
        return np.ones(s.shape, bool) if m is None else m.copy()
    norms = _slice_norms(s, n, dim)
    keep_slice = _smallest(norms, k, kept_slices)
    shape = [1] * s.ndim
    shape[dim] = s.shape[dim]
    out = np.broadcast_to(keep_slice.reshape(shape), s.shape).copy()
    return out if m is None else out & m


def nm_mask(w: Any, n: int = 2, m: int = 4, *, axis: int = -1, importance_scores: Any = None) -> np.ndarray:
    """N:M mask: keep the ``n`` largest ``|w|`` of every ``m`` consecutive entries.

    Parameters
    ----------
    w : ndarray
        The weight; ``w.shape[axis]`` must be a multiple of ``m``. For a Linear
        weight ``(out, in)`` the default ``axis=-1`` groups along the input.
    n, m : int
        Keep ``n`` of every ``m`` (``0 <= n <= m``), e.g. 2:4.
    axis : int
        Axis along which groups run.
    importance_scores : ndarray, optional
        Rank by these instead of ``w``.

    Returns
    -------
    ndarray of bool
        Exactly ``n`` True in every group. Ties: the lower index is pruned.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.prune.nm_mask(np.array([[0.1, -3.0, 2.0, 0.5]]), 2, 4)
    array([[False,  True,  True, False]])
    """
    s = _scores(w, importance_scores)
    m = check_int(m, "m", 1, 1 << 31)
    n = check_int(n, "n", 0, m)
    if not (m >= 1 and 0 <= n <= m):
        raise ValueError(f"N:M needs m >= 1 and 0 <= n <= m; got n={n}, m={m}")
    if s.ndim == 0:
        raise ValueError("nm_mask needs an array of at least 1 dimension")
    axis = normalize_axis(axis, s.ndim)
    if s.shape[axis] % m:
        raise ValueError(f"w.shape[{axis}]={s.shape[axis]} is not a multiple of m={m}")
    moved = np.ascontiguousarray(np.moveaxis(s, axis, -1))
    keep = _native.nm_keep(moved.reshape(-1), int(n), int(m)).reshape(moved.shape)
    return np.ascontiguousarray(np.moveaxis(keep, -1, axis))


def _as_2d(shape: tuple) -> tuple[int, int]:
    if len(shape) == 0:
        raise ValueError("block_mask needs an array of at least 1 dimension")
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], int(np.prod(shape[1:]))


def block_mask(w: Any, amount: Any, *, block: tuple[int, int] = (1, 4), n: Any = 1, mask: Any = None,
               importance_scores: Any = None) -> np.ndarray:
    """Drop whole ``block`` tiles by their Ln norm.

    The weight is seen as 2-D ``(w.shape[0], prod(w.shape[1:]))`` (a 1-D weight
    as one row) and tiled with ``block = (rows, cols)`` from the top-left;
    edge tiles may be partial. Blocks matched to the SIMD width (1×4, 4×1,
    1×8, 8×1, 4×4, 8×8) are what :class:`hwreg_rs.sparse.BSRMatrix` runs fast.

    Parameters
    ----------
    w : ndarray
        The weight.
    amount : int or float
        Blocks to prune: count, or fraction of the blocks still kept (a block
        is kept while ``mask`` keeps any entry of it).
    block : (int, int)
        Tile shape.
    n : int, float, inf or -inf
        Norm order of a block (default 1: sum of ``|w|``).
    mask : ndarray of bool, optional
        Earlier mask; the result keeps only what it keeps.
    importance_scores : ndarray, optional
        Norms are taken of these instead of ``w``.

    Returns
    -------
    ndarray of bool
        Whole blocks pruned; ties: lower block index (row-major) first.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> w = np.array([[1.0, 1.0, 5.0, 5.0]])
    >>> hw.prune.block_mask(w, 1, block=(1, 2))
    array([[False, False,  True,  True]])
    """
    s = _scores(w, importance_scores)
    if (not isinstance(block, (tuple, list)) or len(block) != 2
            or not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in block)):
        raise TypeError(f"block must be a pair of ints; got {block!r}")
    bh, bw = check_int(block[0], "block[0]", 1, 1 << 31), check_int(block[1], "block[1]", 1, 1 << 31)
    m = _mask(mask, s.shape)
    rows, cols = _as_2d(s.shape)
    nbr, nbc = -(-rows // bh), -(-cols // bw)
    pad = np.zeros((nbr * bh, nbc * bw), np.float64)
    pad[:rows, :cols] = s.reshape(rows, cols)
    tiles = np.abs(pad.reshape(nbr, bh, nbc, bw)).transpose(0, 2, 1, 3).reshape(nbr * nbc, bh * bw)
    if m is None:
        kept_blocks = np.ones(nbr * nbc, bool)
    else:
        mp = np.zeros((nbr * bh, nbc * bw), bool)
        mp[:rows, :cols] = m.reshape(rows, cols)
        kept_blocks = mp.reshape(nbr, bh, nbc, bw).any(axis=(1, 3)).reshape(-1)
    k = _nparams_to_prune(amount, int(np.count_nonzero(kept_blocks)))
    if k == 0:
        return np.ones(s.shape, bool) if m is None else m.copy()
    norms = _slice_norms(tiles, n, 0)
    keep_b = _smallest(norms, k, kept_blocks).reshape(nbr, nbc)
    full = np.repeat(np.repeat(keep_b, bh, axis=0), bw, axis=1)[:rows, :cols].reshape(s.shape)
    return full if m is None else full & m


def random_mask(w: Any, amount: Any, *, seed: Any = None, mask: Any = None) -> np.ndarray:
    """Prune entries chosen uniformly at random (torch ``random_unstructured``).

    Parameters
    ----------
    w : ndarray or tuple of int
        The weight (only its shape is used) or a shape.
    amount : int or float
        Count or fraction of the entries still kept.
    seed : int or numpy.random.Generator, optional
        Seed; the same seed gives the same mask.
    mask : ndarray of bool, optional
        Earlier mask.

    Returns
    -------
    ndarray of bool

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> int(hw.prune.random_mask((4, 5), 0.25, seed=0).sum())
    15
    """
    if isinstance(w, tuple):
        shape = tuple(check_int(d, "w (a shape)", 0) for d in w)
        if math.prod(shape) > np.iinfo(np.intp).max:  # NumPy could not even count the entries
            raise ValueError(f"w (a shape) {shape} has {math.prod(shape)} entries, more than an array can hold")
    else:
        shape = check_array(w, "w").shape
    if seed is not None and not isinstance(seed, np.random.Generator):
        seed = check_int(seed, "seed", 0)
    m = _mask(mask, shape)
    size = int(np.prod(shape, dtype=np.int64) if m is None else np.count_nonzero(m))
    k = _nparams_to_prune(amount, size)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    scores = rng.random(int(np.prod(shape, dtype=np.int64)))
    return _smallest(scores, k, m).reshape(shape)


def threshold_mask(w: Any, threshold: float, *, mask: Any = None) -> np.ndarray:
    """Keep entries with ``|w| > threshold``.

    Parameters
    ----------
    w : ndarray
        Weight or scores.
    threshold : float
        Non-negative threshold.
    mask : ndarray of bool, optional
        Earlier mask; pruned entries stay pruned.

    Returns
    -------
    ndarray of bool

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.prune.threshold_mask(np.array([0.1, -0.5, 0.2]), 0.2)
    array([False,  True, False])
    """
    s = native_array(w, "w")
    t = check_float(threshold, "threshold", 0.0, finite=False)
    if s.dtype.kind == "f" and np.isnan(s).any():
        raise ValueError("w contains NaN")
    keep = np.abs(s) > t
    m = _mask(mask, s.shape)
    return keep if m is None else keep & m


def sparsity(mask: Any) -> float:
    """Fraction of pruned entries of a mask (or of zeros of a weight).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.prune.sparsity(np.array([True, False, False, True]))
    0.5
    """
    a = check_array(mask, "mask")
    return 0.0 if a.size == 0 else 1.0 - float(np.count_nonzero(a)) / a.size


# ---------------------------------------------------------- importance scores

def gradient_scores(grad: Any) -> np.ndarray:
    """Gradient sensitivity ``|dL/dw|``.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.prune.gradient_scores(np.array([-2.0, 1.0]))
    array([2., 1.])
    """
    return np.abs(native_array(grad, "grad"))


def taylor_scores(w: Any, grad: Any) -> np.ndarray:
    """First-order Taylor importance ``|w · dL/dw|`` (Molchanov et al. 2017).

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.prune.taylor_scores(np.array([2.0, -3.0]), np.array([0.5, 1.0]))
    array([1., 3.])
    """
    w = native_array(w, "w")
    g = native_array(grad, "grad")
    if w.shape != g.shape:
        raise ValueError(f"grad has shape {g.shape}, expected {w.shape}")
    return np.abs(w * g)


class ScoreAccumulator:
    """Importance scores accumulated over training steps.

    Parameters
    ----------
    method : {"taylor", "gradient", "magnitude"}
        Score of one step: ``|w·g|``, ``|g|`` or ``|w|``.
    decay : float, optional
        With a decay ``d`` in [0, 1) the scores are an exponential moving
        average ``d·S + (1-d)·s``; without, a running sum.

    Attributes
    ----------
    scores_ : ndarray or None
        The accumulated scores (None before the first update).
    steps_ : int
        Updates seen.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> acc = hw.prune.ScoreAccumulator("taylor")
    >>> w = np.array([1.0, -2.0, 0.5])
    >>> _ = acc.update(w, np.array([1.0, 1.0, 1.0])).update(w, np.array([0.0, 1.0, 4.0]))
    >>> acc.scores_.tolist()
    [1.0, 4.0, 2.5]
    >>> acc.mask(1).tolist()
    [False, True, True]
    """

    _METHODS = ("taylor", "gradient", "magnitude")

    def __init__(self, method: str = "taylor", *, decay: float | None = None) -> None:
        self.method = method
        self.decay = decay

    def reset(self) -> "ScoreAccumulator":
        """Forget the accumulated scores."""
        self.scores_ = None
        self.steps_ = 0
        return self

    def update(self, w: Any, grad: Any = None) -> "ScoreAccumulator":
        """Add one step's scores of weight ``w`` with gradient ``grad``."""
        check_choice(self.method, "method", self._METHODS)
        if self.decay is not None:
            check_float(self.decay, "decay", 0.0, 1.0, hi_open=True)
        if self.method == "magnitude":
            s = np.abs(native_array(w, "w"))
        elif grad is None:
            raise ValueError(f"method {self.method!r} needs grad")
        elif self.method == "gradient":
            s = gradient_scores(grad)
        else:
            s = taylor_scores(w, grad)
        prev = getattr(self, "scores_", None)
        if prev is None:
            self.scores_ = s.astype(np.float64 if s.dtype == np.float64 else np.float32, copy=True)
            if self.decay is not None:
                self.scores_ *= 1.0 - float(self.decay)
            self.steps_ = 1
            return self
        if prev.shape != s.shape:
            raise ValueError(f"scores have shape {s.shape}, accumulated {prev.shape}")
        if self.decay is None:
            prev += s
        else:
            d = float(self.decay)
            prev *= d
            prev += (1.0 - d) * s
        self.steps_ += 1
        return self

    def mask(self, amount: Any, *, mask: Any = None) -> np.ndarray:
        """Magnitude mask on the accumulated scores (see :func:`magnitude_mask`)."""
        if getattr(self, "scores_", None) is None:
            raise ValueError("no scores yet: call update() first")
        return magnitude_mask(self.scores_, amount, mask=mask)


# ------------------------------------------------------ threshold strategies

class FixedThreshold:
    """Keep scores above a fixed threshold.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.prune.FixedThreshold(0.3).mask(np.array([0.1, 0.5, -0.4])).tolist()
    [False, True, True]
    """

    def __init__(self, threshold: float) -> None:
        self.threshold_value = threshold

    def threshold(self, scores: Any, *, mask: Any = None) -> float:
        """The threshold for these scores."""
        return check_float(self.threshold_value, "threshold", 0.0, finite=False)

    def mask(self, scores: Any, *, mask: Any = None) -> np.ndarray:
        """Keep ``|scores| > threshold`` (and what ``mask`` keeps)."""
        return threshold_mask(scores, self.threshold(scores, mask=mask), mask=mask)


class MeanThreshold(FixedThreshold):
    """Dynamic threshold: ``factor ×`` the mean ``|score|`` of the kept entries.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.prune.MeanThreshold().mask(np.array([1.0, 2.0, 3.0, 6.0])).tolist()
    [False, False, False, True]
    """

    def __init__(self, *, factor: float = 1.0) -> None:
        self.factor = factor

    def threshold(self, scores: Any, *, mask: Any = None) -> float:
        s = np.abs(native_array(scores, "scores"))
        m = _mask(mask, s.shape)
        kept = s if m is None else s[m]
        factor = check_float(self.factor, "factor", 0.0)
        return 0.0 if kept.size == 0 else factor * float(kept.mean(dtype=np.float64))


class TargetSparsity:
    """Threshold chosen so that a given fraction of all entries is pruned.

    With ``mask``, entries it already prunes count toward the target and stay
    pruned; if they exceed it nothing more is pruned.

    Examples
    --------
    >>> import numpy as np, hwreg_rs as hw
    >>> hw.prune.TargetSparsity(0.75).mask(np.array([4.0, 1.0, 3.0, 2.0])).tolist()
    [True, False, False, False]
    """

    def __init__(self, sparsity: float) -> None:
        self.sparsity = sparsity

    def _k(self, size: int, kept: int) -> int:
        sparsity = check_float(self.sparsity, "sparsity", 0.0, 1.0)
        return max(0, int(round(sparsity * size)) - (size - kept))

    def mask(self, scores: Any, *, mask: Any = None) -> np.ndarray:
        """Prune the smallest ``|scores|`` up to the target sparsity."""
        s = _scores(scores, None, "scores")
        m = _mask(mask, s.shape)
        kept = s.size if m is None else int(np.count_nonzero(m))
        return magnitude_mask(s, self._k(s.size, kept), mask=m)

    def threshold(self, scores: Any, *, mask: Any = None) -> float:
        """The largest pruned ``|score|`` (0 when nothing is pruned)."""
        s = np.abs(_scores(scores, None, "scores"))
        m = _mask(mask, s.shape)
        keep = self.mask(s, mask=m)
        pruned = ~keep if m is None else (~keep & m)
        return float(s[pruned].max()) if pruned.any() else 0.0


# ------------------------------------------------------------------ schedules

_NO_STEP = object()


def _check_steps(begin_step: int, end_step: int | None, frequency: int, step: Any = _NO_STEP) -> None:
    check_int(frequency, "frequency", 1)
    check_int(begin_step, "begin_step", 0)
    if end_step is not None and check_int(end_step, "end_step") < begin_step:
        raise ValueError(f"end_step={end_step} is before begin_step={begin_step}")
    if step is not _NO_STEP:
        check_int(step, "step")


class _Schedule:
    begin_step: int
    end_step: int | None
    frequency: int

    def should_update(self, step: int) -> bool:
        """Whether the mask should be recomputed at ``step``."""
        _check_steps(self.begin_step, self.end_step, self.frequency, step)
        if step < self.begin_step or (self.end_step is not None and step > self.end_step):
            return False
        return (step - self.begin_step) % self.frequency == 0

    def _last_update(self, step: int) -> int:
        """The latest update step <= ``step`` (clamped to the window)."""
        if self.end_step is not None:
            step = min(step, self.end_step)
        if step < self.begin_step:
            return self.begin_step
        return self.begin_step + (step - self.begin_step) // self.frequency * self.frequency


class ConstantSchedule(_Schedule):
    """Constant target sparsity from ``begin_step`` (0 before it).

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> s = hw.prune.ConstantSchedule(0.8, begin_step=10)
    >>> s(5), s(10), s.should_update(10)
    (0.0, 0.8, True)
    """

    def __init__(self, sparsity: float, *, begin_step: int = 0, end_step: int | None = None,
                 frequency: int = 1) -> None:
        self.sparsity = sparsity
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency

    def __call__(self, step: int) -> float:
        _check_steps(self.begin_step, self.end_step, self.frequency, step)
        sparsity = check_float(self.sparsity, "sparsity", 0.0, 1.0)
        return 0.0 if step < self.begin_step else sparsity


class PolynomialDecay(_Schedule):
    """Gradual pruning of Zhu & Gupta (2017).

    ``s_t = s_f + (s_i - s_f) (1 - p)^power`` with
    ``p = (t - begin_step) / (end_step - begin_step)`` clipped to [0, 1], where
    ``t`` is the latest update step (``begin_step + j·frequency``): the target
    moves only when the mask is recomputed, and stays at ``s_f`` after
    ``end_step``. Before ``begin_step`` it is ``s_i``.

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> s = hw.prune.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=100, frequency=10)
    >>> round(s(0), 4), round(s(55), 4), s(100), s(1000)
    (0.0, 0.7875, 0.9, 0.9)
    """

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int, end_step: int, *,
                 power: float = 3, frequency: int = 1) -> None:
        self.initial_sparsity = initial_sparsity
        self.final_sparsity = final_sparsity
        self.begin_step = begin_step
        self.end_step = end_step
        self.power = power
        self.frequency = frequency

    def __call__(self, step: int) -> float:
        _check_steps(self.begin_step, self.end_step, self.frequency, step)
        check_int(self.end_step, "end_step")
        si = check_float(self.initial_sparsity, "initial_sparsity", 0.0, 1.0)
        sf = check_float(self.final_sparsity, "final_sparsity", 0.0, 1.0)
        power = check_float(self.power, "power", 0.0)
        span = self.end_step - self.begin_step
        t = self._last_update(step)
        p = 1.0 if span == 0 else min(max((t - self.begin_step) / span, 0.0), 1.0)
        if step < self.begin_step:
            p = 0.0
        return sf + (si - sf) * (1.0 - p) ** power


class ExponentialThresholdDecay(_Schedule):
    """Magnitude threshold decaying by ``decay`` per step:
    ``t = max(min_threshold, threshold_init · decay^(t_u - begin_step))``, with
    ``t_u`` the latest update step (``threshold_init`` before ``begin_step``).

    Examples
    --------
    >>> import hwreg_rs as hw
    >>> s = hw.prune.ExponentialThresholdDecay(0.1, 0.5)
    >>> s(0), s(2)
    (0.1, 0.025)
    """

    def __init__(self, threshold_init: float, decay: float, *, min_threshold: float = 0.0, begin_step: int = 0,
                 end_step: int | None = None, frequency: int = 1) -> None:
        self.threshold_init = threshold_init
        self.decay = decay
        self.min_threshold = min_threshold
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency

    def __call__(self, step: int) -> float:
        _check_steps(self.begin_step, self.end_step, self.frequency, step)
        decay = check_float(self.decay, "decay", 0.0, 1.0, lo_open=True)
        t0 = check_float(self.threshold_init, "threshold_init", 0.0)
        tmin = check_float(self.min_threshold, "min_threshold", 0.0)
        if step < self.begin_step:
            return t0
        n = self._last_update(step) - self.begin_step
        return max(tmin, t0 * decay ** n)
