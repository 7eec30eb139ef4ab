//! Pruning-mask selection: which entries to drop, by magnitude.
//!
//! Every mask follows one order: entries are ranked by `(|score|, flat index)`
//! ascending, and the first `k` eligible entries in that order are pruned. So
//! among equal magnitudes the entry with the **lower flat index is pruned
//! first**; the result never depends on thread count or SIMD path.
//!
//! [`prune_smallest`] finds the `k`-th entry with a selection, not a sort: a
//! parallel histogram of the top 16 bits of each magnitude's bit pattern finds
//! the bucket that holds the `k`-th entry; a second parallel pass writes the
//! mask of every entry outside that bucket and gathers the few inside it, and
//! `select_nth_unstable` on their `(key, index)` pairs gives the exact cut,
//! ties included. Two streaming passes, each split over the library's threads.
//! Large tensors first try a one-pass variant: an even sample brackets the
//! cut (Floyd–Rivest), one vectorised pass settles everything outside the
//! bracket, and the histogram method is the fallback when the bracket misses.
//!
//! [`nm_keep`] keeps the `n` largest of every `m` consecutive entries.

use crate::error::{try_vec, try_with_capacity, Result};
use crate::exec::{self, Ctx};
use crate::{shape_err, value_err};

#[doc(hidden)]
pub mod arch;

/// An element whose magnitude can rank entries: `f32` or `f64`.
pub trait Score: Copy + Send + Sync + 'static {
    /// Bits in [`Score::key`].
    const BITS: u32;
    /// An integer with the order of `|self|`, or `None` for NaN.
    fn key(self) -> Option<u64>;
    /// The bits of `|self|` (orders like `|self|` when not NaN; NaN keys are
    /// above [`Score::MAX_KEY`]).
    fn raw_key(self) -> u64;
    /// The key of +infinity.
    const MAX_KEY: u64;
    /// The bits of `|self|` in the narrowest unsigned type (u32 for f32), for
    /// the vectorised pass; same order as [`Score::raw_key`].
    type K: Copy + Ord + Send + Sync + Into<u64> + 'static;
    fn k(self) -> Self::K;
    const K_MIN: Self::K;
    const K_MAX: Self::K;
    /// The selection pass for this type in a dispatch table.
    #[doc(hidden)]
    fn band(k: &arch::Kernels) -> arch::BandFn<Self>;
}

impl Score for f32 {
    fn band(k: &arch::Kernels) -> arch::BandFn<Self> {
        k.band_f32
    }
    type K = u32;
    const K_MIN: u32 = 0;
    const K_MAX: u32 = u32::MAX;
    #[inline(always)]
    fn k(self) -> u32 {
        self.to_bits() & 0x7fff_ffff
    }
    const BITS: u32 = 32;
    const MAX_KEY: u64 = 0x7f80_0000;
    #[inline(always)]
    fn raw_key(self) -> u64 {
        (self.to_bits() & 0x7fff_ffff) as u64
    }
    #[inline(always)]
    fn key(self) -> Option<u64> {
        // |x| as bits is monotone in |x| for non-NaN floats (+0 and -0 both map to 0).
        let b = self.to_bits() & 0x7fff_ffff;
        if b > 0x7f80_0000 {
            None
        } else {
            Some(b as u64)
        }
    }
}

impl Score for f64 {
    fn band(k: &arch::Kernels) -> arch::BandFn<Self> {
        k.band_f64
    }
    type K = u64;
    const K_MIN: u64 = 0;
    const K_MAX: u64 = u64::MAX;
    #[inline(always)]
    fn k(self) -> u64 {
        self.to_bits() & 0x7fff_ffff_ffff_ffff
    }
    const BITS: u32 = 64;
    const MAX_KEY: u64 = 0x7ff0_0000_0000_0000;
    #[inline(always)]
    fn raw_key(self) -> u64 {
        self.to_bits() & 0x7fff_ffff_ffff_ffff
    }
    #[inline(always)]
    fn key(self) -> Option<u64> {
        let b = self.to_bits() & 0x7fff_ffff_ffff_ffff;
        if b > 0x7ff0_0000_0000_0000 {
            None
        } else {
            Some(b)
        }
    }
}

/// Below this many entries one thread does the whole selection.
const PARALLEL_MIN: usize = 1 << 16;
const HIST_BITS: u32 = 16;

fn chunk_len(ctx: &Ctx, n: usize) -> usize {
    let t = ctx.threads();
    if n < PARALLEL_MIN || t == 1 {
        n.max(1)
    } else {
        n.div_ceil(4 * t).max(PARALLEL_MIN / 4)
    }
}

/// Histogram of the top key bits of one chunk; `Err(offset)` of a NaN.
#[inline(always)]
fn chunk_hist<T: Score>(
    ch: &[T],
    el: Option<&[bool]>,
    shift: u32,
) -> std::result::Result<(usize, Vec<u32>), usize> {
    let mut h = vec![0u32; 1 << HIST_BITS];
    let mask = (1u64 << HIST_BITS) - 1;
    // NaN check by the largest key (no branch per entry).
    let mut mx = 0u64;
    let cnt = match el {
        None => {
            for &s in ch {
                let key = s.raw_key();
                mx = mx.max(key);
                h[((key >> shift) & mask) as usize] += 1;
            }
            ch.len()
        }
        Some(e) => {
            let mut cnt = 0;
            for (&s, &ok) in ch.iter().zip(e) {
                let key = s.raw_key();
                mx = mx.max(key);
                h[((key >> shift) & mask) as usize] += ok as u32;
                cnt += ok as usize;
            }
            cnt
        }
    };
    if mx > T::MAX_KEY {
        return Err(ch.iter().position(|s| s.key().is_none()).unwrap_or(0));
    }
    Ok((cnt, h))
}

/// Writes the mask of one chunk for every entry outside the cut bucket and
/// returns the `(key, index)` of the entries inside it (left `false`).
#[inline(always)]
fn chunk_mask<T: Score>(
    ch: &[T],
    el: Option<&[bool]>,
    out: &mut [bool],
    base: usize,
    shift: u32,
    bucket: u64,
) -> Vec<(u64, u32)> {
    const BLK: usize = 256;
    let mask = (1u64 << HIST_BITS) - 1;
    let mut inside = Vec::new();
    for (bi, (cb, ob)) in ch.chunks(BLK).zip(out.chunks_mut(BLK)).enumerate() {
        let eb = el.map(|e| &e[bi * BLK..bi * BLK + cb.len()]);
        // Branch-free, vectorisable: keep what lies above the bucket.
        let mut hit = false;
        match eb {
            None => {
                for (&s, o) in cb.iter().zip(ob.iter_mut()) {
                    let b = (s.raw_key() >> shift) & mask;
                    *o = b > bucket;
                    hit |= b == bucket;
                }
            }
            Some(e) => {
                for ((&s, o), &ok) in cb.iter().zip(ob.iter_mut()).zip(e) {
                    let b = (s.raw_key() >> shift) & mask;
                    *o = ok & (b > bucket);
                    hit |= ok & (b == bucket);
                }
            }
        }
        if hit {
            for (j, &s) in cb.iter().enumerate() {
                let key = s.raw_key();
                if (key >> shift) & mask == bucket && eb.map_or(true, |e| e[j]) {
                    inside.push((key, (base + bi * BLK + j) as u32));
                }
            }
        }
    }
    inside
}

/// Tensors at least this large first try the sampled one-pass selection.
const SAMPLED_MIN: usize = 1 << 20;
const SAMPLE: usize = 1 << 18;

/// One chunk of the sampled pass: keys above `hi` kept, below `lo` pruned and
/// counted, those in `[lo, hi]` gathered (left `false`). Returns (count
/// below, candidates, largest key).
#[inline(always)]
pub(crate) fn chunk_band<T: Score>(
    ch: &[T],
    el: Option<&[bool]>,
    out: &mut [bool],
    base: usize,
    lo: T::K,
    hi: T::K,
) -> (usize, Vec<(u64, u32)>, u64) {
    const BLK: usize = 16;
    let mut below = 0usize;
    let mut mx = T::K_MIN;
    let mut cands = Vec::new();
    for (bi, (cb, ob)) in ch.chunks(BLK).zip(out.chunks_mut(BLK)).enumerate() {
        let eb = el.map(|e| &e[bi * BLK..bi * BLK + cb.len()]);
        let mut band = 0u32;
        let mut low = 0u32;
        match eb {
            None => {
                for (&s, o) in cb.iter().zip(ob.iter_mut()) {
                    let key = s.k();
                    mx = mx.max(key);
                    *o = key > hi;
                    low += (key < lo) as u32;
                    band += ((key >= lo) & (key <= hi)) as u32;
                }
            }
            Some(e) => {
                for ((&s, o), &ok) in cb.iter().zip(ob.iter_mut()).zip(e) {
                    let key = s.k();
                    mx = mx.max(key);
                    *o = ok & (key > hi);
                    low += (ok & (key < lo)) as u32;
                    band += (ok & (key >= lo) & (key <= hi)) as u32;
                }
            }
        }
        below += low as usize;
        if band > 0 {
            for (j, &s) in cb.iter().enumerate() {
                let key = s.k();
                if key >= lo && key <= hi && eb.map_or(true, |e| e[j]) {
                    cands.push((key.into(), (base + bi * BLK + j) as u32));
                }
            }
        }
    }
    (below, cands, mx.into())
}

/// Sampled selection (Floyd–Rivest style): the keys of an even sample bracket
/// the `k`-th smallest in `[lo, hi]` with high probability; one streaming pass
/// then decides every entry outside the bracket and gathers the few inside,
/// and a selection among those gives the exact cut. `Ok(None)` when the
/// bracket missed (the caller falls back to the histogram method).
fn prune_sampled<T: Score>(
    scores: &[T],
    eligible: Option<&[bool]>,
    k: usize,
    cl: usize,
) -> Result<Option<Vec<bool>>> {
    let n = scores.len();
    let stride = n / SAMPLE;
    let mut samp: Vec<T::K> = (0..SAMPLE)
        .map(|i| i * stride + (i.wrapping_mul(2_654_435_761) % stride.max(1)))
        .filter(|&i| eligible.map_or(true, |e| e[i]))
        .map(|i| scores[i].k())
        .collect();
    if samp.len() < 4096 {
        return Ok(None);
    }
    let total = match eligible {
        None => n,
        Some(e) => exec::map_chunks(e, cl, |_, c| c.iter().filter(|&&b| b).count())
            .into_iter()
            .sum(),
    };
    if k > total || k == 0 {
        return Ok(None); // the histogram path reports / handles these
    }
    let m = samp.len() as f64;
    let r = k as f64 / total as f64 * m;
    let d = 3.0 * m.sqrt() + 16.0;
    let lo = if r - d < 0.0 {
        T::K_MIN
    } else {
        *samp.select_nth_unstable((r - d) as usize).1
    };
    let hi = if r + d >= m - 1.0 {
        T::K_MAX
    } else {
        *samp.select_nth_unstable((r + d) as usize + 1).1
    };
    // The pass compiled for the active path (see `arch/`).
    let band_fn = T::band(&crate::cpu::dispatch().prune);
    let mut keep = try_vec(n, false, "the keep-mask")?;
    let parts: Vec<(usize, Vec<(u64, u32)>, u64)> =
        exec::map_chunks_mut(&mut keep, cl, |c, out| {
            let ch = &scores[c * cl..c * cl + out.len()];
            let el = eligible.map(|e| &e[c * cl..c * cl + ch.len()]);
            band_fn(ch, el, out, c * cl, lo, hi)
        });
    if parts.iter().any(|p| p.2 > T::MAX_KEY) {
        let i = scores.iter().position(|s| s.key().is_none()).unwrap_or(0);
        return value_err!("scores contain NaN (at flat index {i})");
    }
    let below: usize = parts.iter().map(|p| p.0).sum();
    let ncand: usize = parts.iter().map(|p| p.1.len()).sum();
    if !(below < k && k <= below + ncand) {
        return Ok(None);
    }
    let mut cands = try_with_capacity(ncand, "the pruning candidates")?;
    for p in parts {
        cands.extend_from_slice(&p.1);
    }
    let (_, _, above) = cands.select_nth_unstable(k - below - 1);
    for &(_, i) in above.iter() {
        keep[i as usize] = true;
    }
    Ok(Some(keep))
}

/// Keep-mask that prunes the `k` eligible entries of smallest `|score|`
/// (lower flat index first among ties).
///
/// `eligible` (same length as `scores`) marks the entries still kept by an
/// earlier mask; ineligible entries stay pruned and do not count. `k` must not
/// exceed the number of eligible entries. NaN scores are rejected.
///
/// Two streaming passes: a histogram of the top 16 bits of `|score|`'s bit
/// pattern (which orders like `|score|`), then one pass that writes every
/// entry outside the bucket holding the `k`-th smallest and gathers the few
/// inside it; `select_nth_unstable` on their `(key, index)` gives the exact
/// cut and those entries are filled in last.
pub fn prune_smallest<T: Score>(
    ctx: &Ctx,
    scores: &[T],
    eligible: Option<&[bool]>,
    k: usize,
) -> Result<Vec<bool>> {
    let n = scores.len();
    if n > u32::MAX as usize {
        return shape_err!("cannot prune a tensor of {n} elements (at most 2^32 - 1)");
    }
    if let Some(e) = eligible {
        if e.len() != n {
            return shape_err!("mask has {} elements but the weight has {n}", e.len());
        }
    }
    let cl = chunk_len(ctx, n);
    // Highest bit that can be set: the sign is cleared, so skip it.
    let shift = T::BITS - 1 - HIST_BITS;
    ctx.run(n, || {
        if n >= SAMPLED_MIN {
            if let Some(keep) = prune_sampled(scores, eligible, k, cl)? {
                return Ok(keep);
            }
        }
        let el_chunk = |c: usize, len: usize| eligible.map(|e| &e[c * cl..c * cl + len]);
        let hists: Vec<std::result::Result<(usize, Vec<u32>), usize>> =
            exec::map_chunks(scores, cl, |c, ch| {
                chunk_hist(ch, el_chunk(c, ch.len()), shift).map_err(|j| c * cl + j)
            });
        let mut total = 0usize;
        let mut hist = vec![0usize; 1 << HIST_BITS];
        for r in hists {
            let (cnt, h) = match r {
                Ok(v) => v,
                Err(i) => return value_err!("scores contain NaN (at flat index {i})"),
            };
            total += cnt;
            for (a, b) in hist.iter_mut().zip(h) {
                *a += b as usize;
            }
        }
        if k > total {
            return value_err!("cannot prune {k} entries: only {total} are still kept");
        }
        let mut keep = try_vec(n, false, "the keep-mask")?;
        if k == 0 {
            exec::for_each_chunk_mut(&mut keep, cl, |c, out| match el_chunk(c, out.len()) {
                Some(e) => out.copy_from_slice(e),
                None => out.fill(true),
            });
            return Ok(keep);
        }
        // The bucket that holds the k-th smallest entry, and its rank inside.
        let mut before = 0usize;
        let mut bucket = 0usize;
        for (b, &c) in hist.iter().enumerate() {
            if before + c >= k {
                bucket = b;
                break;
            }
            before += c;
        }
        let rank = k - before - 1;
        let inside: Vec<Vec<(u64, u32)>> = exec::map_chunks_mut(&mut keep, cl, |c, out| {
            let ch = &scores[c * cl..c * cl + out.len()];
            chunk_mask(ch, el_chunk(c, ch.len()), out, c * cl, shift, bucket as u64)
        });
        let mut cands: Vec<(u64, u32)> = inside.concat();
        let (_, _cut, above) = cands.select_nth_unstable(rank);
        for &(_, i) in above.iter() {
            keep[i as usize] = true;
        }
        Ok(keep)
    })
}

/// Keep-mask with exactly `n` kept in every `m` consecutive entries of `w`
/// (`w.len()` a multiple of `m`): the `n` of largest `|w|`, and among equal
/// magnitudes the higher index (lower index pruned first).
pub fn nm_keep<T: Score>(ctx: &Ctx, w: &[T], n: usize, m: usize) -> Result<Vec<bool>> {
    if m == 0 || n > m {
        return value_err!("N:M needs 0 <= n <= m and m >= 1; got n={n}, m={m}");
    }
    if w.len() % m != 0 {
        return shape_err!("N:M groups of {m} do not tile {} entries", w.len());
    }
    if w.is_empty() {
        return Ok(Vec::new()); // no group to fill (any m tiles nothing; no buffer of m keys)
    }
    let groups_per_chunk = (chunk_len(ctx, w.len()) / m).max(1);
    let mut keep = try_vec(w.len(), false, "the N:M keep-mask")?;
    ctx.run(w.len(), || {
        let csz = groups_per_chunk * m;
        exec::map_chunks_mut(&mut keep, csz, |c, out| -> Result<()> {
            let ch = &w[c * csz..c * csz + out.len()];
            let drop = m - n;
            let mut keys: Vec<(u64, u32)> = try_vec(m, (0, 0), "an N:M group's keys")?;
            for (og, g) in out.chunks_exact_mut(m).zip(ch.chunks_exact(m)) {
                for (j, &s) in g.iter().enumerate() {
                    let Some(key) = s.key() else {
                        return value_err!("weights contain NaN");
                    };
                    keys[j] = (key, j as u32);
                }
                og.fill(true);
                if drop == 0 {
                    continue;
                }
                if m <= 16 {
                    // Few entries: take the smallest `drop` one by one.
                    for d in 0..drop {
                        let mut best = d;
                        for j in d + 1..m {
                            if keys[j] < keys[best] {
                                best = j;
                            }
                        }
                        keys.swap(d, best);
                        og[keys[d].1 as usize] = false;
                    }
                } else {
                    if drop < m {
                        keys.select_nth_unstable(drop - 1);
                    }
                    for &(_, j) in &keys[..drop] {
                        og[j as usize] = false;
                    }
                }
            }
            Ok(())
        })
        .into_iter()
        .collect::<Result<Vec<()>>>()
    })?;
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(scores: &[f32], elig: Option<&[bool]>, k: usize) -> Vec<bool> {
        let mut idx: Vec<usize> = (0..scores.len())
            .filter(|&i| elig.map_or(true, |e| e[i]))
            .collect();
        idx.sort_by(|&a, &b| {
            scores[a]
                .abs()
                .partial_cmp(&scores[b].abs())
                .unwrap()
                .then(a.cmp(&b))
        });
        let mut keep: Vec<bool> = (0..scores.len())
            .map(|i| elig.map_or(true, |e| e[i]))
            .collect();
        for &i in &idx[..k] {
            keep[i] = false;
        }
        keep
    }

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn matches_sort_reference_with_ties_and_eligibility() {
        let mut seed = 7u64;
        for &n in &[1usize, 5, 100, 70_000, 300_000, 1_100_000] {
            let s: Vec<f32> = (0..n)
                .map(|_| (lcg(&mut seed) % 50) as f32 - 25.0)
                .collect();
            let e: Vec<bool> = (0..n).map(|_| lcg(&mut seed) % 4 != 0).collect();
            for &frac in &[0.0, 0.3, 0.5, 1.0] {
                let k = (n as f64 * frac) as usize;
                assert_eq!(
                    prune_smallest(&crate::exec::TEST, &s, None, k).unwrap(),
                    reference(&s, None, k)
                );
                let ke = e.iter().filter(|&&x| x).count() * k / n.max(1);
                assert_eq!(
                    prune_smallest(&crate::exec::TEST, &s, Some(&e), ke).unwrap(),
                    reference(&s, Some(&e), ke)
                );
            }
        }
    }

    #[test]
    fn rejects_nan_and_too_many() {
        assert!(prune_smallest(&crate::exec::TEST, &[1.0f32, f32::NAN], None, 1).is_err());
        assert!(prune_smallest(&crate::exec::TEST, &[1.0f32, 2.0], None, 3).is_err());
        assert!(
            prune_smallest(&crate::exec::TEST, &[1.0f32, 2.0], Some(&[true, false]), 2).is_err()
        );
    }

    #[test]
    fn nm_keeps_n_of_m_higher_index_on_ties() {
        let w = [1.0f32, 1.0, 1.0, 1.0, 0.0, -5.0, 3.0, 2.0];
        let k = nm_keep(&crate::exec::TEST, &w, 2, 4).unwrap();
        assert_eq!(k, [false, false, true, true, false, true, true, false]);
        assert!(nm_keep(&crate::exec::TEST, &w, 2, 3).is_err());
    }
}

#[cfg(test)]
mod timing {
    /// `cargo test --release -p hwreg-kernels prune_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn prune_timing() {
        let n = 1 << 24;
        let mut seed = 1u64;
        let s: Vec<f32> = (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
            })
            .collect();
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let k = super::prune_smallest(&crate::exec::TEST, &s, None, n / 2).unwrap();
            println!(
                "prune 16M: {:?} kept {}",
                t.elapsed(),
                k.iter().filter(|&&b| b).count()
            );
        }
    }
}
