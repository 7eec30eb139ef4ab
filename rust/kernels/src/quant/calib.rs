//! Calibration: choose a clipping range per tensor or per channel, then turn it into a
//! scale and zero point with PyTorch's observer formula ([`qparams`]).
//!
//! Methods ([`Method`]):
//! - `MinMax`: the data's min and max (torch `MinMaxObserver` / `PerChannelMinMaxObserver`).
//! - `Percentile(p)`: symmetric: `[-t, t]` with `t` the `p`-th percentile of `|x|`;
//!   affine: `[pct(100 - p), pct(p)]` of `x`. Percentiles interpolate linearly between
//!   order statistics, like `numpy.percentile`'s default.
//! - `Mse`: among the ranges `f * [lo, hi]` of the min/max range `[lo, hi]` (symmetric:
//!   `f * [-amax, amax]`), `f = i / 128` for `i = 1..=128`, the one whose quantize-dequantize
//!   round trip has the least squared error. The error is evaluated on a histogram
//!   (count and sum per bin, `bins` bins over `[lo, hi]`): every element of a bin is taken to
//!   round like the bin's mean, which drops only a within-bin term common to all
//!   candidates. Ties go to the wider range.
//! - `Entropy`: TensorRT's KL-divergence calibration on a histogram of `|x|` (`bins` bins
//!   over `[0, amax]`): for each threshold bin `i` from `nq` (the number of positive levels,
//!   `2^(bits-1)`) to `bins`, compare the clipped distribution `p` (outliers folded into its
//!   last bin) with `q`, the same bins merged into `nq` levels and spread back over the
//!   bins where `p` is non-zero (MXNet's `_get_optimal_threshold`); a `q` bin left empty
//!   where `p` is not gets `1e-4`, the effect of MXNet's `_smooth_distribution` (its other
//!   adjustments, below 1e-4 of a count, are left out). The threshold is the upper edge of
//!   bin `i` with the least KL divergence (the first, on ties). Symmetric: `[-t, t]`;
//!   affine: `[max(min, -t), min(max, t)]`. See [`entropy_kls`] for the O(`bins`)
//!   evaluation of all thresholds.

use rayon::prelude::*;

use super::{kernels, min_max, AxisLayout};
use crate::exec::{self, Ctx};
use crate::{value_err, Result};

/// How to choose the clipping range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    MinMax,
    Percentile(f64),
    Mse,
    Entropy,
}

/// The target grid: integer range, scheme and options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spec {
    pub qmin: i32,
    pub qmax: i32,
    pub symmetric: bool,
    /// Zero point of the symmetric scheme (0 for signed; torch uses 128 for full-range
    /// uint8 and `(qmin + qmax) / 2` rounded down for a custom unsigned range).
    pub symmetric_zero_point: i32,
    /// Round every scale up to a power of two.
    pub power_of_two: bool,
    /// Histogram bins of `Mse` and `Entropy`.
    pub bins: usize,
}

impl Spec {
    fn check(&self) -> Result<()> {
        if self.qmin >= self.qmax {
            return value_err!("empty integer range [{}, {}]", self.qmin, self.qmax);
        }
        if !(self.qmin..=self.qmax).contains(&self.symmetric_zero_point) {
            return value_err!(
                "symmetric zero point {} outside [{}, {}]",
                self.symmetric_zero_point,
                self.qmin,
                self.qmax
            );
        }
        let levels = (self.qmax - self.qmin + 1) as usize;
        if self.bins < levels || self.bins > 1 << 20 {
            return value_err!(
                "bins must be between {levels} and {}; got {}",
                1 << 20,
                self.bins
            );
        }
        Ok(())
    }

    /// Positive levels of the entropy search (`2^(bits-1)` for a `2^bits` range).
    fn half_levels(&self) -> usize {
        ((self.qmax - self.qmin + 1) / 2).max(1) as usize
    }
}

/// Calibrated parameters, one entry per channel (one for per-tensor).
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i32>,
    /// The clipping range each scale was computed from.
    pub range_min: Vec<f32>,
    pub range_max: Vec<f32>,
}

/// Smallest power of two `>= s`, for a positive normal finite `s`.
pub fn pow2_ceil(s: f32) -> f32 {
    let bits = s.to_bits();
    if bits & 0x007f_ffff == 0 {
        s
    } else {
        f32::from_bits((bits & 0x7f80_0000) + 0x0080_0000)
    }
}

/// Scale and zero point of the range `[min, max]`, exactly as torch's
/// `_ObserverBase._calculate_qparams` (per-tensor and per-channel alike), all in `f32`:
///
/// ```text
/// min_neg = min(min, 0); max_pos = max(max, 0)
/// symmetric: scale = max(-min_neg, max_pos) / ((qmax - qmin) / 2); zp = symmetric_zero_point
/// affine:    scale = (max_pos - min_neg) / (qmax - qmin);
///            zp = clamp(qmin - round_half_even(min_neg / scale), qmin, qmax)
/// scale = max(scale, f32::EPSILON)   (before the zero point)
/// ```
/// With `power_of_two`, the scale is rounded up to a power of two before the zero point
/// is computed, so the grid still spans the range.
pub fn qparams(min: f32, max: f32, spec: &Spec) -> (f32, i32) {
    let min_neg = min.min(0.0);
    let max_pos = max.max(0.0);
    let finish = |s: f32| {
        let s = s.max(f32::EPSILON);
        if spec.power_of_two {
            pow2_ceil(s)
        } else {
            s
        }
    };
    if spec.symmetric {
        let amax = (-min_neg).max(max_pos);
        let scale = finish(amax / ((spec.qmax - spec.qmin) as f32 / 2.0));
        (scale, spec.symmetric_zero_point)
    } else {
        let scale = finish((max_pos - min_neg) / (spec.qmax - spec.qmin) as f32);
        let zp = spec.qmin - (min_neg / scale).round_ties_even() as i32;
        (scale, zp.clamp(spec.qmin, spec.qmax))
    }
}

/// Per-channel min and max (NaN / inf -> `Value` error).
pub fn channel_min_max(ctx: &Ctx, x: &[f32], layout: AxisLayout) -> Result<(Vec<f32>, Vec<f32>)> {
    if x.len() != layout.len() {
        return value_err!(
            "calibrate: {} elements do not fit the layout {:?}",
            x.len(),
            layout
        );
    }
    if layout.is_empty() {
        return value_err!("cannot calibrate an empty tensor (or an empty channel)");
    }
    let (c, inner) = (layout.channels, layout.inner);
    if c == 1 {
        let (a, b) = min_max(ctx, x)?;
        return Ok((vec![a], vec![b]));
    }
    let k = kernels();
    let per_channel = |ch: usize| -> (f32, f32, f32) {
        let mut acc = (f32::INFINITY, f32::NEG_INFINITY, 0.0f32);
        for o in 0..layout.outer {
            let base = (o * c + ch) * inner;
            let (a, b, p) = (k.min_max)(&x[base..base + inner]);
            acc = (acc.0.min(a), acc.1.max(b), acc.2 + p);
        }
        acc
    };
    let stats: Vec<(f32, f32, f32)> = if inner >= 64 {
        ctx.run(x.len(), || exec::map_range(c, per_channel))
    } else {
        // Short runs: fold whole (channels * inner) blocks elementwise, then reduce.
        let w = c * inner;
        let mut mn = vec![f32::INFINITY; w];
        let mut mx = vec![f32::NEG_INFINITY; w];
        let mut poison = vec![0.0f32; w];
        for block in x.chunks_exact(w) {
            for j in 0..w {
                let v = block[j];
                mn[j] = if v < mn[j] { v } else { mn[j] };
                mx[j] = if v > mx[j] { v } else { mx[j] };
                poison[j] += v * 0.0;
            }
        }
        (0..c)
            .map(|ch| {
                let r = ch * inner..(ch + 1) * inner;
                (
                    mn[r.clone()].iter().fold(f32::INFINITY, |a, &b| a.min(b)),
                    mx[r.clone()]
                        .iter()
                        .fold(f32::NEG_INFINITY, |a, &b| a.max(b)),
                    poison[r].iter().sum(),
                )
            })
            .collect()
    };
    if stats.iter().any(|s| s.2.is_nan()) {
        return value_err!("the tensor holds NaN or infinite values");
    }
    Ok((
        stats.iter().map(|s| s.0).collect(),
        stats.iter().map(|s| s.1).collect(),
    ))
}

/// The elements of channel `ch`, in order.
fn channel_values(x: &[f32], layout: &AxisLayout, ch: usize) -> Vec<f32> {
    let (c, inner) = (layout.channels, layout.inner);
    let mut v = Vec::with_capacity(layout.outer * inner);
    for o in 0..layout.outer {
        let base = (o * c + ch) * inner;
        v.extend_from_slice(&x[base..base + inner]);
    }
    v
}

/// Calibrates `x` (per tensor, or per channel of `layout`) with `method` onto `spec`.
///
/// Errors (`Value`): an empty tensor, NaN or infinite values, a percentile outside
/// [50, 100], an inconsistent `spec`.
pub fn calibrate(
    ctx: &Ctx,
    x: &[f32],
    layout: AxisLayout,
    method: Method,
    spec: &Spec,
) -> Result<Calibration> {
    spec.check()?;
    if let Method::Percentile(p) = method {
        if !(50.0..=100.0).contains(&p) {
            return value_err!("percentile must lie in [50, 100]; got {p}");
        }
    }
    let (mins, maxs) = channel_min_max(ctx, x, layout)?;
    let c = layout.channels;
    let range = |ch: usize, data: &[f32]| -> (f32, f32) {
        let (lo, hi) = (mins[ch], maxs[ch]);
        match method {
            Method::MinMax => (lo, hi),
            Method::Percentile(p) => percentile_range(ctx, data, p, spec.symmetric),
            Method::Mse => mse_range(ctx, data, lo, hi, spec),
            Method::Entropy => {
                let t = entropy_threshold(ctx, data, lo.abs().max(hi.abs()), spec);
                if spec.symmetric {
                    (-t, t)
                } else {
                    (lo.max(-t), hi.min(t))
                }
            }
        }
    };
    let ranges: Vec<(f32, f32)> = if method == Method::MinMax {
        (0..c).map(|ch| (mins[ch], maxs[ch])).collect()
    } else if c == 1 {
        vec![range(0, x)]
    } else {
        ctx.run(x.len().saturating_mul(4), || {
            exec::map_range(c, |ch| range(ch, &channel_values(x, &layout, ch)))
        })
    };
    let mut out = Calibration {
        scale: vec![],
        zero_point: vec![],
        range_min: vec![],
        range_max: vec![],
    };
    for (lo, hi) in ranges {
        let (s, z) = qparams(lo, hi, spec);
        out.scale.push(s);
        out.zero_point.push(z);
        out.range_min.push(lo);
        out.range_max.push(hi);
    }
    Ok(out)
}

/// `p`-th percentile (0..=100) of `v`, linear interpolation between order statistics
/// (`numpy.percentile`'s default). Reorders `v`. `v` must not be empty.
pub fn percentile(v: &mut [f32], p: f64) -> f32 {
    let n = v.len();
    let pos = (p / 100.0) * (n - 1) as f64;
    let k = (pos.floor() as usize).min(n - 1);
    let frac = pos - k as f64;
    let (_, &mut a, rest) = v.select_nth_unstable_by(k, f32::total_cmp);
    let a = a as f64;
    if frac == 0.0 || rest.is_empty() {
        return a as f32;
    }
    let b = rest.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    // numpy's `_lerp`: a + t (b - a), computed from the nearer end.
    let r = if frac >= 0.5 {
        b - (b - a) * (1.0 - frac)
    } else {
        a + (b - a) * frac
    };
    r as f32
}

fn percentile_range(ctx: &Ctx, data: &[f32], p: f64, symmetric: bool) -> (f32, f32) {
    if symmetric {
        let mut a: Vec<f32> = par_map(ctx, data, f32::abs);
        let t = percentile(&mut a, p);
        (-t, t)
    } else {
        let mut a = data.to_vec();
        let hi = percentile(&mut a, p);
        let lo = percentile(&mut a, 100.0 - p);
        (lo, hi)
    }
}

fn par_map(ctx: &Ctx, data: &[f32], f: fn(f32) -> f32) -> Vec<f32> {
    ctx.run(data.len(), || {
        exec::map_chunks(data, 1 << 16, |_, c| {
            c.iter().map(|&v| f(v)).collect::<Vec<f32>>()
        })
    })
    .concat()
}

/// Count (and sum, when `sums`) of `data` in `bins` equal bins over `[lo, hi]`;
/// values outside go to the end bins. `map` is applied to each value first.
fn histogram(
    ctx: &Ctx,
    data: &[f32],
    lo: f32,
    hi: f32,
    bins: usize,
    map: fn(f32) -> f32,
    sums: bool,
) -> (Vec<f64>, Vec<f64>) {
    let width = (hi as f64 - lo as f64) / bins as f64;
    let inv = if width > 0.0 { 1.0 / width } else { 0.0 };
    let build = |chunk: &[f32]| {
        let mut count = vec![0.0f64; bins];
        let mut sum = vec![0.0f64; if sums { bins } else { 0 }];
        for &v in chunk {
            let v = map(v);
            let idx = (((v as f64 - lo as f64) * inv) as usize).min(bins - 1);
            count[idx] += 1.0;
            if sums {
                sum[idx] += v as f64;
            }
        }
        (count, sum)
    };
    let chunk = (data.len() / ctx.chunks_for(data.len()).max(1)).max(1 << 16);
    if chunk >= data.len() {
        return build(data);
    }
    ctx.run(data.len(), || {
        data.par_chunks(chunk).map(build).reduce(
            || (vec![0.0; bins], vec![0.0; if sums { bins } else { 0 }]),
            |mut a, b| {
                a.0.iter_mut().zip(&b.0).for_each(|(x, y)| *x += y);
                a.1.iter_mut().zip(&b.1).for_each(|(x, y)| *x += y);
                a
            },
        )
    })
}

/// Candidate fractions of the min/max range searched by `Mse`.
const MSE_STEPS: usize = 128;

/// Round half to even for `|v| < 2^51` without a libm call (so the loop vectorises
/// on the baseline target): adding and removing 1.5 * 2^52 rounds in the FPU's
/// default round-to-nearest-even mode. Larger values are clamped first (they
/// saturate in the caller anyway).
#[inline(always)]
fn round_even_small(v: f64) -> f64 {
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    let v = if v < -1e15 { -1e15 } else { v };
    let v = if v > 1e15 { 1e15 } else { v };
    (v + MAGIC) - MAGIC
}

fn mse_range(ctx: &Ctx, data: &[f32], lo: f32, hi: f32, spec: &Spec) -> (f32, f32) {
    let (lo, hi) = if spec.symmetric {
        let a = lo.abs().max(hi.abs());
        (-a, a)
    } else {
        (lo.min(0.0), hi.max(0.0))
    };
    if lo == hi {
        return (lo, hi);
    }
    let (count, sum) = histogram(ctx, data, lo, hi, spec.bins, |v| v, true);
    let (ns, ms): (Vec<f64>, Vec<f64>) = count
        .iter()
        .zip(&sum)
        .filter(|(n, _)| **n > 0.0)
        .map(|(&n, &s)| (n, s / n))
        .unzip();
    let (qlo, qhi) = (spec.qmin as f64, spec.qmax as f64);
    let mut best = (f64::INFINITY, lo, hi);
    for i in (1..=MSE_STEPS).rev() {
        let f = i as f32 / MSE_STEPS as f32;
        let (a, b) = (lo * f, hi * f);
        let (s, z) = qparams(a, b, spec);
        let err = round_trip_error(&ns, &ms, s as f64, z as f64, qlo, qhi);
        if err < best.0 {
            best = (err, a, b);
        }
    }
    (best.1, best.2)
}

/// `sum n (dequant(quant(m)) - m)^2` over bins of count `n` and mean `m`, in 8
/// independent lanes of compare-and-select arithmetic so the compiler vectorises it.
fn round_trip_error(ns: &[f64], ms: &[f64], s: f64, z: f64, qlo: f64, qhi: f64) -> f64 {
    const L: usize = 8;
    let inv = 1.0 / s;
    let (qlo, qhi) = (qlo - z, qhi - z);
    #[inline(always)]
    fn term(n: f64, m: f64, s: f64, inv: f64, qlo: f64, qhi: f64) -> f64 {
        let r = round_even_small(m * inv);
        let r = if r < qlo { qlo } else { r };
        let r = if r > qhi { qhi } else { r };
        let d = r * s - m;
        n * d * d
    }
    let len = ns.len().min(ms.len());
    let (ns, ms) = (&ns[..len], &ms[..len]);
    let full = len / L * L;
    let mut acc = [0.0f64; L];
    let mut i = 0;
    while i < full {
        let (n, m) = (&ns[i..i + L], &ms[i..i + L]);
        for j in 0..L {
            acc[j] += term(n[j], m[j], s, inv, qlo, qhi);
        }
        i += L;
    }
    let mut tail = 0.0;
    for k in full..len {
        tail += term(ns[k], ms[k], s, inv, qlo, qhi);
    }
    acc.iter().sum::<f64>() + tail
}

/// Floor for a bin of `q` that must hold mass (its `p` bin does) but got none: the
/// role of `eps = 1e-4` in MXNet's `_smooth_distribution`.
const KL_EPS: f64 = 1e-4;

/// Largest per-channel count for which `ln` of counts comes from a table.
const LN_TABLE_MAX: usize = 1 << 22;

/// `KL(p || q)` for every threshold bin `i` in `nq..=hist.len()` (entry `i - nq`), where
/// `p` is `hist[..i]` with the outliers `hist[i..]` added to its last bin, and `q` merges
/// `hist[..i]` into `nq` groups of `i / nq` bins (the last group takes the remainder)
/// and spreads each group's count evenly over the group's bins where `p` is non-zero.
/// Both are normalised; a `q` bin that gets no mass where `p` has some holds [`KL_EPS`].
///
/// Written out, with `N = sum p`, `H = sum q`, `P_j` the mass of `p` in group `j` and
/// `q_j` the value `q` takes there:
/// `KL = (sum_k p_k ln p_k) / N - ln N - (sum_j P_j ln q_j) / N + ln H`,
/// so with prefix sums of `h`, `h ln h` and of the non-zero count each group costs O(1);
/// groups `0..nq-1` change only with `i / nq`, so all thresholds together cost
/// O(`hist.len()`). Counts are integers, so `ln` is mostly a table lookup.
pub fn entropy_kls(hist: &[f64], nq: usize) -> Vec<f64> {
    let nb = hist.len();
    if nq == 0 || nq > nb {
        return vec![];
    }
    let total: f64 = hist.iter().sum();
    let table: Vec<f64> = if total <= LN_TABLE_MAX as f64 {
        (0..=total as usize).map(|k| (k as f64).ln()).collect()
    } else {
        vec![]
    };
    let ln = |c: f64| -> f64 {
        let k = c as usize;
        if k < table.len() && k as f64 == c {
            table[k]
        } else {
            c.ln()
        }
    };
    let xlnx = |c: f64| if c > 0.0 { c * ln(c) } else { 0.0 };
    let mut cnt = vec![0.0f64; nb + 1];
    let mut plnp = vec![0.0f64; nb + 1];
    let mut nzc = vec![0usize; nb + 1];
    for k in 0..nb {
        cnt[k + 1] = cnt[k] + hist[k];
        plnp[k + 1] = plnp[k] + xlnx(hist[k]);
        nzc[k + 1] = nzc[k] + usize::from(hist[k] != 0.0);
    }
    let ln_total = ln(total);
    // Groups 0..nq-1 depend on i only through `merged = i / nq`: sum them once per value.
    let group = |a: usize, b: usize, extra: f64, extra_nz: usize| -> (f64, f64) {
        let tot = cnt[b] - cnt[a];
        let pj = tot + extra;
        if pj == 0.0 {
            return (0.0, 0.0);
        }
        let nz = nzc[b] - nzc[a] + extra_nz;
        if tot > 0.0 {
            (pj * (ln(tot) - ln(nz as f64)), tot)
        } else {
            (pj * KL_EPS.ln(), KL_EPS * nz as f64)
        }
    };
    let mut base = (usize::MAX, 0.0f64, 0.0f64);
    (nq..=nb)
        .map(|i| {
            let merged = i / nq;
            if base.0 != merged {
                let (mut acc, mut hq) = (0.0, 0.0);
                for j in 0..nq - 1 {
                    let (a, h) = group(j * merged, (j + 1) * merged, 0.0, 0);
                    acc += a;
                    hq += h;
                }
                base = (merged, acc, hq);
            }
            let suffix = total - cnt[i];
            let s_plnp = plnp[i - 1] + xlnx(hist[i - 1] + suffix);
            let extra_nz = usize::from(hist[i - 1] == 0.0 && suffix > 0.0);
            let (a, h) = group((nq - 1) * merged, i, suffix, extra_nz);
            (s_plnp - base.1 - a) / total - ln_total + (base.2 + h).ln()
        })
        .collect()
}

fn entropy_threshold(ctx: &Ctx, data: &[f32], amax: f32, spec: &Spec) -> f32 {
    if amax == 0.0 {
        return 0.0;
    }
    let nbins = spec.bins;
    let nq = spec.half_levels().min(nbins);
    let (hist, _) = histogram(ctx, data, 0.0, amax, nbins, f32::abs, false);
    let kls = entropy_kls(&hist, nq);
    let mut best = (f64::INFINITY, nbins);
    for (k, &kl) in kls.iter().enumerate() {
        if kl < best.0 {
            best = (kl, k + nq);
        }
    }
    let width = amax as f64 / nbins as f64;
    ((best.1 as f64 * width) as f32).min(amax)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `entropy_kls` for one threshold, built bin by bin.
    fn kl_direct(hist: &[f64], i: usize, nq: usize) -> f64 {
        let mut p = hist[..i].to_vec();
        p[i - 1] += hist[i..].iter().sum::<f64>();
        let mut q = vec![0.0; i];
        let merged = i / nq;
        for j in 0..nq {
            let a = j * merged;
            let b = if j == nq - 1 { i } else { a + merged };
            let tot: f64 = hist[a..b].iter().sum();
            let nz = p[a..b].iter().filter(|&&v| v != 0.0).count();
            for k in a..b {
                if p[k] != 0.0 {
                    q[k] = if tot > 0.0 { tot / nz as f64 } else { KL_EPS };
                }
            }
        }
        let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
        p.iter()
            .zip(&q)
            .filter(|(a, _)| **a > 0.0)
            .map(|(&a, &b)| (a / sp) * ((a / sp) / (b / sq)).ln())
            .sum()
    }

    #[test]
    fn fast_kl_equals_direct() {
        let mut s = 12345u64;
        for (nb, nq) in [(64usize, 8usize), (300, 16), (257, 2), (2048, 128)] {
            let hist: Vec<f64> = (0..nb)
                .map(|k| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let r = (s >> 33) % 100;
                    // Mostly decaying counts, with empty bins and a sparse tail.
                    if r < 25 || (k > nb / 2 && r < 80) {
                        0.0
                    } else {
                        ((s >> 40) % (1000 / (1 + k as u64 / 8) + 2)) as f64
                    }
                })
                .collect();
            let fast = entropy_kls(&hist, nq);
            for i in nq..=nb {
                let d = kl_direct(&hist, i, nq);
                let f = fast[i - nq];
                assert!(
                    (f - d).abs() <= 1e-9 * d.abs().max(1.0),
                    "nb {nb} nq {nq} i {i}: {f} vs {d}"
                );
            }
        }
    }
}
