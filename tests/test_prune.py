"""Pruning masks against NumPy references (torch.nn.utils.prune semantics)."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import hwreg_rs as hw
from hwreg_rs import prune

# ------------------------------------------------------------ references


def ref_prune_smallest(scores, k, eligible=None):
    """Stable sort by (|s|, index): prune the first k eligible."""
    s = np.abs(np.asarray(scores, np.float64)).ravel()
    el = np.ones(s.size, bool) if eligible is None else np.asarray(eligible).ravel()
    idx = np.flatnonzero(el)
    order = idx[np.argsort(s[idx], kind="stable")]
    keep = el.copy()
    keep[order[:k]] = False
    return keep.reshape(np.shape(scores))


def ref_argpartition_mask(w, amount):
    """The usual NumPy implementation (for counts only; ties unspecified)."""
    k = round(amount * w.size)
    keep = np.ones(w.size, bool)
    if k:
        keep[np.argpartition(np.abs(w).ravel(), k - 1)[:k]] = False
    return keep.reshape(w.shape)


arrays = st.integers(1, 300).flatmap(
    lambda n: st.lists(st.integers(-6, 6), min_size=n, max_size=n).map(lambda v: np.array(v, np.float32)))


# ------------------------------------------------------------ magnitude


@given(arrays, st.floats(0, 1))
def test_magnitude_mask_matches_reference_with_ties(w, amount):
    k = round(amount * w.size)  # Python round: halves to even
    got = prune.magnitude_mask(w, amount)
    assert got.dtype == np.bool_ and got.shape == w.shape
    assert np.array_equal(got, ref_prune_smallest(w, k))
    assert np.count_nonzero(~got) == k


def test_rounding_half_to_even():
    w = np.arange(1, 11, dtype=np.float32)
    # 0.25 * 10 = 2.5 -> 2 ; 0.35 * 10 = 3.5 -> 4 ; 0.05 * 10 = 0.5 -> 0
    assert np.count_nonzero(~prune.magnitude_mask(w, 0.25)) == 2
    assert np.count_nonzero(~prune.magnitude_mask(w, 0.35)) == round(0.35 * 10)
    assert np.count_nonzero(~prune.magnitude_mask(w, 0.05)) == 0
    assert np.count_nonzero(~prune.magnitude_mask(np.ones(3), 0.5)) == 2  # 1.5 -> 2


def test_int_amount_is_count_and_ties_prune_lower_index_first():
    w = np.array([2.0, 1.0, -1.0, 1.0, 3.0], np.float32)
    assert prune.magnitude_mask(w, 2).tolist() == [True, False, False, True, True]
    assert prune.magnitude_mask(w, 0).all()
    assert not prune.magnitude_mask(w, 5).any()
    z = np.zeros((3, 4), np.float32)
    assert prune.magnitude_mask(z, 5).ravel().tolist() == [False] * 5 + [True] * 7


@pytest.mark.parametrize("amount", [-1, 1.5, -0.1, float("nan")])
def test_bad_amount_value(amount):
    with pytest.raises(ValueError):
        prune.magnitude_mask(np.ones(4), amount)


@pytest.mark.parametrize("amount", ["0.5", None, True, 1j])
def test_bad_amount_type(amount):
    with pytest.raises(TypeError):
        prune.magnitude_mask(np.ones(4), amount)


def test_int_amount_larger_than_tensor():
    with pytest.raises(ValueError, match="smaller than the number of parameters"):
        prune.magnitude_mask(np.ones(4), 5)
    # ... counted against the entries still kept
    with pytest.raises(ValueError):
        prune.magnitude_mask(np.ones(4), 3, mask=np.array([1, 1, 0, 0], bool))


def test_nan_rejected():
    with pytest.raises(ValueError, match="NaN"):
        prune.magnitude_mask(np.array([1.0, np.nan, 2.0]), 1)


@given(arrays, st.floats(0, 1), st.floats(0, 1))
def test_incremental_pruning_applies_amount_to_kept(w, a1, a2):
    m1 = prune.magnitude_mask(w, a1)
    m2 = prune.magnitude_mask(w, a2, mask=m1)
    kept = int(m1.sum())
    k2 = round(a2 * kept)
    assert np.array_equal(m2, ref_prune_smallest(w, k2, m1))
    assert not (m2 & ~m1).any()
    assert int(m2.sum()) == kept - k2


def test_importance_scores_rank_instead_of_weight():
    w = np.array([5.0, 4.0, 3.0, 2.0])
    s = np.array([0.1, 9.0, -0.2, 8.0])
    assert prune.magnitude_mask(w, 2, importance_scores=s).tolist() == [False, True, False, True]
    with pytest.raises(ValueError):
        prune.magnitude_mask(w, 1, importance_scores=np.ones(3))


def test_large_tensor_parallel_selection_matches_argpartition_counts_and_reference():
    rng = np.random.default_rng(0)
    w = rng.integers(-1000, 1000, size=(700, 900)).astype(np.float32)  # many ties
    got = prune.magnitude_mask(w, 0.7)
    assert np.array_equal(got, ref_prune_smallest(w, round(0.7 * w.size)))
    assert got.sum() == ref_argpartition_mask(w, 0.7).sum()
    w64 = rng.standard_normal(200_003)
    assert np.array_equal(prune.magnitude_mask(w64, 0.4), ref_prune_smallest(w64, round(0.4 * w64.size)))


def test_integer_and_float64_weights():
    w = np.array([3, -1, 2, 0], np.int64)
    assert prune.magnitude_mask(w, 2).tolist() == [True, False, True, False]
    assert prune.magnitude_mask(w.astype(np.float64), 0.5).tolist() == [True, False, True, False]


# ------------------------------------------------------------ global


def test_global_masks_match_concatenated_reference():
    rng = np.random.default_rng(1)
    ws = [rng.integers(-5, 5, (7, 3)).astype(np.float32), rng.integers(-5, 5, 11).astype(np.float32)]
    masks = prune.global_magnitude_masks(ws, 0.6)
    flat = np.concatenate([w.ravel() for w in ws])
    want = ref_prune_smallest(flat, round(0.6 * flat.size))
    assert np.array_equal(np.concatenate([m.ravel() for m in masks]), want)
    assert [m.shape for m in masks] == [w.shape for w in ws]
    # incremental, with earlier masks
    m2 = prune.global_magnitude_masks(ws, 3, masks=masks)
    el = np.concatenate([m.ravel() for m in masks])
    assert np.array_equal(np.concatenate([m.ravel() for m in m2]), ref_prune_smallest(flat, 3, el))
    with pytest.raises(ValueError):
        prune.global_magnitude_masks(ws, 0.5, masks=[None])


# ------------------------------------------------------------ structured


def ref_structured(w, amount, n, dim, mask=None):
    a = np.abs(np.moveaxis(w, dim, 0).reshape(w.shape[dim], -1).astype(np.float64))
    norms = a.max(1) if n == math.inf else (a ** n).sum(1) ** (1 / n)
    kept = np.ones(w.shape[dim], bool) if mask is None else np.moveaxis(mask, dim, 0).reshape(w.shape[dim], -1).any(1)
    k = amount if isinstance(amount, int) else round(amount * kept.sum())
    if k == 0:
        return np.ones(w.shape, bool) if mask is None else mask
    ks = ref_prune_smallest(norms, k, kept)
    shape = [1] * w.ndim
    shape[dim] = -1
    out = np.broadcast_to(ks.reshape(shape), w.shape)
    return out if mask is None else out & mask


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("n", [1, 2, math.inf])
def test_structured_mask_whole_slices(dim, n):
    rng = np.random.default_rng(2)
    w = rng.integers(-3, 4, (6, 5, 3)).astype(np.float32)
    got = prune.structured_mask(w, 0.5, n=n, dim=dim)
    assert np.array_equal(got, ref_structured(w, 0.5, n, dim % 3))
    # whole slices: each slice along dim is all True or all False
    per = np.moveaxis(got, dim, 0).reshape(w.shape[dim], -1)
    assert (per.all(1) | ~per.any(1)).all()
    assert (~per.any(1)).sum() == round(0.5 * w.shape[dim])


def test_structured_incremental_counts_kept_channels_and_ties():
    w = np.ones((5, 4), np.float32)  # all norms tie: lower index pruned first
    m1 = prune.structured_mask(w, 2, dim=0)
    assert m1.all(1).tolist() == [False, False, True, True, True]
    m2 = prune.structured_mask(w, 0.5, dim=0, mask=m1)  # round(0.5*3)=2 of the kept 3
    assert m2.all(1).tolist() == [False, False, False, False, True]
    assert np.array_equal(m2, ref_structured(w, 0.5, 2, 0, m1))


def test_structured_errors():
    with pytest.raises(ValueError, match="multidimensional"):
        prune.structured_mask(np.ones(4), 1)
    with pytest.raises(ValueError):
        prune.structured_mask(np.ones((2, 2)), 1, dim=2)
    with pytest.raises(ValueError):
        prune.structured_mask(np.ones((2, 2)), 3)


# ------------------------------------------------------------ N:M


@given(st.integers(1, 6), st.integers(1, 5), st.sampled_from([(2, 4), (1, 4), (4, 8), (0, 4), (4, 4), (3, 7)]))
def test_nm_mask_exactly_n_per_group(rows, groups, nm):
    n, m = nm
    rng = np.random.default_rng(rows * 31 + groups)
    w = rng.integers(-3, 4, (rows, groups * m)).astype(np.float32)
    got = prune.nm_mask(w, n, m)
    assert (got.reshape(rows, groups, m).sum(-1) == n).all()
    want = np.stack([ref_prune_smallest(g, m - n) for g in w.reshape(-1, m)]).reshape(w.shape)
    assert np.array_equal(got, want)


def test_nm_mask_axis_and_errors():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 3)).astype(np.float32)
    got = prune.nm_mask(w, 2, 4, axis=0)
    assert (got.reshape(2, 4, 3).sum(1) == 2).all()
    assert np.array_equal(got, prune.nm_mask(w.T.copy(), 2, 4).T)
    with pytest.raises(ValueError, match="multiple"):
        prune.nm_mask(w, 2, 4)
    with pytest.raises(ValueError):
        prune.nm_mask(w, 5, 4, axis=0)


# ------------------------------------------------------------ blocks


@pytest.mark.parametrize("block", [(1, 4), (4, 1), (2, 2), (1, 8), (8, 8), (3, 5)])
def test_block_mask_whole_blocks(block):
    rng = np.random.default_rng(4)
    w = rng.integers(-4, 5, (10, 13)).astype(np.float32)
    got = prune.block_mask(w, 0.5, block=block)
    bh, bw = block
    nbr, nbc = -(-10 // bh), -(-13 // bw)
    pad = np.zeros((nbr * bh, nbc * bw))
    pad[:10, :13] = np.abs(w)
    norms = pad.reshape(nbr, bh, nbc, bw).sum((1, 3)).ravel()
    kb = ref_prune_smallest(norms, round(0.5 * norms.size)).reshape(nbr, nbc)
    want = np.repeat(np.repeat(kb, bh, 0), bw, 1)[:10, :13]
    assert np.array_equal(got, want)


def test_block_mask_incremental_and_conv_shape():
    w = np.ones((4, 2, 2, 2), np.float32)  # seen as (4, 8)
    m1 = prune.block_mask(w, 0.25, block=(1, 4))  # 8 blocks, prune 2 (lowest index)
    assert m1.reshape(4, 8)[0].tolist() == [False] * 8
    m2 = prune.block_mask(w, 0.5, block=(1, 4), mask=m1)  # 6 kept, prune 3 more
    assert (~m2).sum() == 5 * 4 and not (m2 & ~m1).any()


# ------------------------------------------------------------ random / threshold


def test_random_mask_seeded_counts():
    a = prune.random_mask((30, 7), 0.3, seed=5)
    b = prune.random_mask(np.zeros((30, 7)), 0.3, seed=5)
    assert np.array_equal(a, b) and (~a).sum() == round(0.3 * 210)
    c = prune.random_mask((30, 7), 0.5, seed=6, mask=a)
    assert (~c).sum() == (~a).sum() + round(0.5 * a.sum()) and not (c & ~a).any()


def test_threshold_mask():
    w = np.array([-0.3, 0.2, 0.2001, 0.0])
    assert prune.threshold_mask(w, 0.2).tolist() == [True, False, True, False]
    assert prune.threshold_mask(w, 0.0, mask=np.array([0, 1, 1, 1])).tolist() == [False, True, True, False]
    with pytest.raises(ValueError):
        prune.threshold_mask(w, -1)


# ------------------------------------------------------------ scores, thresholds, schedules


def test_scores_and_accumulator():
    w = np.array([1.0, -2.0, 0.5])
    g1, g2 = np.array([1.0, 0.5, -2.0]), np.array([0.0, 1.0, 4.0])
    assert prune.gradient_scores(g1).tolist() == [1.0, 0.5, 2.0]
    assert prune.taylor_scores(w, g1).tolist() == [1.0, 1.0, 1.0]
    acc = prune.ScoreAccumulator("gradient").update(w, g1).update(w, g2)
    assert acc.scores_.tolist() == [1.0, 1.5, 6.0] and acc.steps_ == 2
    ema = prune.ScoreAccumulator("taylor", decay=0.5).update(w, g1).update(w, g2)
    assert np.allclose(ema.scores_, 0.5 * (0.5 * np.abs(w * g1)) + 0.5 * np.abs(w * g2))
    assert prune.ScoreAccumulator("magnitude").update(w).mask(1).tolist() == [True, True, False]
    with pytest.raises(ValueError):
        prune.ScoreAccumulator("taylor").update(w)
    with pytest.raises(ValueError):
        prune.ScoreAccumulator("bogus").update(w, g1)


def test_threshold_strategies():
    s = np.array([1.0, 2.0, 3.0, 6.0])
    assert prune.FixedThreshold(2.0).mask(s).tolist() == [False, False, True, True]
    assert prune.MeanThreshold().threshold(s) == 3.0
    assert prune.MeanThreshold().mask(s).tolist() == [False, False, False, True]
    t = prune.TargetSparsity(0.5)
    assert t.mask(s).tolist() == [False, False, True, True]
    assert t.threshold(s) == 2.0
    # already-pruned entries count toward the target
    assert prune.TargetSparsity(0.5).mask(s, mask=np.array([1, 1, 0, 1], bool)).tolist() == [False, True, False, True]
    assert prune.TargetSparsity(0.25).mask(s, mask=np.array([0, 0, 1, 1], bool)).tolist() == [False, False, True, True]


def test_polynomial_decay_zhu_gupta():
    s = prune.PolynomialDecay(0.1, 0.9, begin_step=100, end_step=1100, frequency=100)
    for step in range(0, 1500, 37):
        t = min(max(step, 100), 1100)
        t = 100 + (t - 100) // 100 * 100
        p = (t - 100) / 1000
        want = 0.9 + (0.1 - 0.9) * (1 - p) ** 3
        assert s(step) == pytest.approx(want)
    assert s.should_update(100) and s.should_update(300) and not s.should_update(350)
    assert not s.should_update(99) and not s.should_update(1200)
    values = [s(t) for t in range(0, 2000, 10)]
    assert values == sorted(values)  # monotone
    with pytest.raises(ValueError):
        prune.PolynomialDecay(0.0, 1.5, begin_step=0, end_step=10)(5)


def test_constant_and_exponential_schedules():
    c = prune.ConstantSchedule(0.7, begin_step=5, end_step=20, frequency=5)
    assert [c(t) for t in (0, 4, 5, 100)] == [0.0, 0.0, 0.7, 0.7]
    assert [c.should_update(t) for t in (5, 7, 10, 25)] == [True, False, True, False]
    e = prune.ExponentialThresholdDecay(0.1, 0.9, min_threshold=0.05)
    assert e(0) == 0.1 and e(1) == pytest.approx(0.09) and e(100) == 0.05
    with pytest.raises(ValueError):
        prune.ExponentialThresholdDecay(0.1, 1.5)(1)
    with pytest.raises(ValueError):
        prune.ConstantSchedule(0.5, frequency=0)(1)


def test_flat_api_exports():
    assert hw.prune is prune
    assert "prune" in hw.__all__ and "sparse" in hw.__all__


def test_random_mask_of_a_shape_no_array_can_hold_is_a_value_error():
    with pytest.raises(ValueError, match="w \\(a shape\\).*more than an array can hold"):
        hw.prune.random_mask((10**30,), 0.5)
