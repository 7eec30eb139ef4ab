//! Pruning-mask selection: which entries to drop, by magnitude.
//!
//! Every mask follows one order: entries are ranked by `(|score|, flat index)`
//! ascending, and the first `k` eligible entries in that order are pruned. So
//! among equal magnitudes the entry with the **lower flat index is pruned
//! first**; the result never depends on thread count or SIMD path.
//!
//! [`prune_smallest`] finds the `k`-th entry with a selection, not a sort: a
//! parallel histogram of the top 16 bits of each magnitude's bit pattern finds
//! the bucket that holds the `k`-th entry, the entries of that bucket are
//! gathered, and `select_nth_unstable` on `(key, index)` pairs gives the exact
//! cut, ties included. A last parallel pass writes the mask. Three streaming
//! passes, each split over the library's threads.
//!
//! [`nm_keep`] keeps the `n` largest of every `m` consecutive entries.

use crate::error::Result;
use crate::threads;
use crate::{shape_err, value_err};
use rayon::prelude::*;

/// An element whose magnitude can rank entries: `f32` or `f64`.
pub trait Score: Copy + Send + Sync + 'static {
    /// Bits in [`Score::key`].
    const BITS: u32;
    /// An integer with the order of `|self|`, or `None` for NaN.
    fn key(self) -> Option<u64>;
}

impl Score for f32 {
    const BITS: u32 = 32;
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
    const BITS: u32 = 64;
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

fn chunk_len(n: usize) -> usize {
    let t = threads::num_threads().max(1);
    if n < PARALLEL_MIN || t == 1 {
        n.max(1)
    } else {
        n.div_ceil(4 * t).max(PARALLEL_MIN / 4)
    }
}

/// Keep-mask that prunes the `k` eligible entries of smallest `|score|`
/// (lower flat index first among ties).
///
/// `eligible` (same length as `scores`) marks the entries still kept by an
/// earlier mask; ineligible entries stay pruned and do not count. `k` must not
/// exceed the number of eligible entries. NaN scores are rejected.
pub fn prune_smallest<T: Score>(scores: &[T], eligible: Option<&[bool]>, k: usize) -> Result<Vec<bool>> {
    let n = scores.len();
    if n > u32::MAX as usize {
        return shape_err!("cannot prune a tensor of {n} elements (at most 2^32 - 1)");
    }
    if let Some(e) = eligible {
        if e.len() != n {
            return shape_err!("mask has {} elements but the weight has {n}", e.len());
        }
    }
    let elig = |i: usize| eligible.map_or(true, |e| e[i]);
    let cl = chunk_len(n);
    let work = n;
    threads::run(work, || {
        // Pass 1: NaN check, eligible count and histogram of top key bits.
        let shift = T::BITS - HIST_BITS;
        let hists: Vec<Result<(usize, Vec<u32>)>> = scores
            .par_chunks(cl)
            .enumerate()
            .map(|(c, ch)| {
                let base = c * cl;
                let mut h = vec![0u32; 1 << HIST_BITS];
                let mut cnt = 0usize;
                for (j, &s) in ch.iter().enumerate() {
                    let Some(key) = s.key() else {
                        return value_err!("scores contain NaN (at flat index {})", base + j);
                    };
                    if elig(base + j) {
                        h[(key >> shift) as usize] += 1;
                        cnt += 1;
                    }
                }
                Ok((cnt, h))
            })
            .collect();
        let mut total = 0usize;
        let mut hist = vec![0usize; 1 << HIST_BITS];
        for r in hists {
            let (cnt, h) = r?;
            total += cnt;
            for (a, b) in hist.iter_mut().zip(h) {
                *a += b as usize;
            }
        }
        if k > total {
            return value_err!("cannot prune {k} entries: only {total} are still kept");
        }
        if k == 0 {
            return Ok((0..n).map(elig).collect());
        }
        // The bucket that holds the k-th smallest entry.
        let mut before = 0usize;
        let mut bucket = 0usize;
        for (b, &c) in hist.iter().enumerate() {
            if before + c >= k {
                bucket = b;
                break;
            }
            before += c;
        }
        let rank = k - before - 1; // 0-based rank inside the bucket
        // Pass 2: gather (key, index) of the bucket's entries.
        let mut cands: Vec<(u64, u32)> = scores
            .par_chunks(cl)
            .enumerate()
            .flat_map_iter(|(c, ch)| {
                let base = c * cl;
                ch.iter().enumerate().filter_map(move |(j, &s)| {
                    let key = s.key().unwrap_or(u64::MAX);
                    let i = base + j;
                    ((key >> shift) as usize == bucket && elig(i)).then_some((key, i as u32))
                })
            })
            .collect();
        let (_, &mut cut, _) = cands.select_nth_unstable(rank);
        // Pass 3: keep what ranks above the cut.
        let mut keep = vec![false; n];
        keep.par_chunks_mut(cl).zip(scores.par_chunks(cl)).enumerate().for_each(|(c, (out, ch))| {
            let base = c * cl;
            for (j, (o, &s)) in out.iter_mut().zip(ch).enumerate() {
                let i = base + j;
                let key = s.key().unwrap_or(u64::MAX);
                *o = elig(i) && (key, i as u32) > cut;
            }
        });
        Ok(keep)
    })
}

/// Keep-mask with exactly `n` kept in every `m` consecutive entries of `w`
/// (`w.len()` a multiple of `m`): the `n` of largest `|w|`, and among equal
/// magnitudes the higher index (lower index pruned first).
pub fn nm_keep<T: Score>(w: &[T], n: usize, m: usize) -> Result<Vec<bool>> {
    if m == 0 || n > m {
        return value_err!("N:M needs 0 <= n <= m and m >= 1; got n={n}, m={m}");
    }
    if w.len() % m != 0 {
        return shape_err!("N:M groups of {m} do not tile {} entries", w.len());
    }
    let groups_per_chunk = (chunk_len(w.len()) / m).max(1);
    let mut keep = vec![false; w.len()];
    threads::run(w.len(), || {
        keep.par_chunks_mut(groups_per_chunk * m)
            .zip(w.par_chunks(groups_per_chunk * m))
            .try_for_each(|(out, ch)| -> Result<()> {
                let mut keys: Vec<(u64, u32)> = Vec::with_capacity(m);
                for (og, g) in out.chunks_exact_mut(m).zip(ch.chunks_exact(m)) {
                    keys.clear();
                    for (j, &s) in g.iter().enumerate() {
                        let Some(key) = s.key() else {
                            return value_err!("weights contain NaN");
                        };
                        keys.push((key, j as u32));
                    }
                    og.fill(true);
                    let drop = m - n;
                    if drop == 0 {
                        continue;
                    }
                    if drop < m {
                        keys.select_nth_unstable(drop - 1);
                    }
                    for &(_, j) in &keys[..drop] {
                        og[j as usize] = false;
                    }
                }
                Ok(())
            })
    })?;
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(scores: &[f32], elig: Option<&[bool]>, k: usize) -> Vec<bool> {
        let mut idx: Vec<usize> = (0..scores.len()).filter(|&i| elig.map_or(true, |e| e[i])).collect();
        idx.sort_by(|&a, &b| scores[a].abs().partial_cmp(&scores[b].abs()).unwrap().then(a.cmp(&b)));
        let mut keep: Vec<bool> = (0..scores.len()).map(|i| elig.map_or(true, |e| e[i])).collect();
        for &i in &idx[..k] {
            keep[i] = false;
        }
        keep
    }

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn matches_sort_reference_with_ties_and_eligibility() {
        let mut seed = 7u64;
        for &n in &[1usize, 5, 100, 70_000, 300_000] {
            let s: Vec<f32> = (0..n).map(|_| (lcg(&mut seed) % 50) as f32 - 25.0).collect();
            let e: Vec<bool> = (0..n).map(|_| lcg(&mut seed) % 4 != 0).collect();
            for &frac in &[0.0, 0.3, 0.5, 1.0] {
                let k = (n as f64 * frac) as usize;
                assert_eq!(prune_smallest(&s, None, k).unwrap(), reference(&s, None, k));
                let ke = e.iter().filter(|&&x| x).count() * k / n.max(1);
                assert_eq!(prune_smallest(&s, Some(&e), ke).unwrap(), reference(&s, Some(&e), ke));
            }
        }
    }

    #[test]
    fn rejects_nan_and_too_many() {
        assert!(prune_smallest(&[1.0f32, f32::NAN], None, 1).is_err());
        assert!(prune_smallest(&[1.0f32, 2.0], None, 3).is_err());
        assert!(prune_smallest(&[1.0f32, 2.0], Some(&[true, false]), 2).is_err());
    }

    #[test]
    fn nm_keeps_n_of_m_higher_index_on_ties() {
        let w = [1.0f32, 1.0, 1.0, 1.0, 0.0, -5.0, 3.0, 2.0];
        let k = nm_keep(&w, 2, 4).unwrap();
        assert_eq!(k, [false, false, true, true, false, true, true, false]);
        assert!(nm_keep(&w, 2, 3).is_err());
    }
}
