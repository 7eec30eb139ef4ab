"""Suite "prune": mask selection vs NumPy.

Magnitude mask of a 4096×4096 float32 tensor (16.8M weights) at several
amounts: ours (``hwreg_rs.prune.magnitude_mask``: parallel histogram +
selection in Rust, exact ties) against the usual NumPy implementation
(``np.abs`` + ``np.argpartition`` + scatter into a mask; ties unspecified).
Also 2:4 N:M masks against a NumPy ``argsort`` implementation. Both answers
are checked (same pruned count; masks equal except among entries tied at
the cut, whose order NumPy leaves unspecified).
"""

from __future__ import annotations

import numpy as np

from . import Table, median_seconds


def numpy_magnitude_mask(w: np.ndarray, amount: float) -> np.ndarray:
    k = round(amount * w.size)
    keep = np.ones(w.size, bool)
    if k:
        keep[np.argpartition(np.abs(w).ravel(), k - 1)[:k]] = False
    return keep.reshape(w.shape)


def numpy_nm_mask(w: np.ndarray, n: int, m: int) -> np.ndarray:
    g = np.abs(w).reshape(-1, m)
    order = np.argsort(g, axis=1, kind="stable")
    keep = np.ones(g.shape, bool)
    np.put_along_axis(keep, order[:, : m - n], False, axis=1)
    return keep.reshape(w.shape)


def run(quick: bool = False) -> str:
    from .. import num_threads, prune

    side = 2048 if quick else 4096
    repeats = 3 if quick else 5
    rng = np.random.default_rng(0)
    w = rng.standard_normal((side, side)).astype(np.float32)
    t = Table(["task", "elements", "NumPy (ms)", "hwreg_rs (ms)", "speed-up"])
    for amount in (0.5, 0.9):
        ours = prune.magnitude_mask(w, amount)
        ref = numpy_magnitude_mask(w, amount)
        diff = ours != ref
        # Same count; they may differ only among entries tied at the cut
        # (float32 samples repeat), where NumPy's order is unspecified.
        if ours.sum() != ref.sum() or (diff.any() and np.unique(np.abs(w[diff])).size != 1):
            raise AssertionError("magnitude masks differ")
        t_np = median_seconds(lambda: numpy_magnitude_mask(w, amount), repeats=repeats, min_seconds=0)
        t_us = median_seconds(lambda: prune.magnitude_mask(w, amount), repeats=repeats, min_seconds=0)
        t.add(f"magnitude_mask amount={amount}", w.size, t_np * 1e3, t_us * 1e3, f"{t_np / t_us:.1f}×")
    ours = prune.nm_mask(w, 2, 4)
    if not np.array_equal(ours, numpy_nm_mask(w, 2, 4)):  # stable argsort: same tie rule
        raise AssertionError("N:M masks differ")
    t_np = median_seconds(lambda: numpy_nm_mask(w, 2, 4), repeats=repeats, min_seconds=0)
    t_us = median_seconds(lambda: prune.nm_mask(w, 2, 4), repeats=repeats, min_seconds=0)
    t.add("nm_mask 2:4", w.size, t_np * 1e3, t_us * 1e3, f"{t_np / t_us:.1f}×")
    return (f"## prune: mask selection on {side}×{side} float32 (median of {repeats}; hwreg_rs "
            f"{num_threads()} threads, NumPy single-threaded)\n\n" + t.markdown())
