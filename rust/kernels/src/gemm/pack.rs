//! Packing: B (the weights) once into a layout every ISA path shares, A (the
//! activations) per call into the form the active micro-kernel reads.
//!
//! # B layout ([`PackedB`])
//!
//! B is `K × N`. Its columns are cut into *panels* of [`NR`] = 16 columns (N
//! padded with zero columns) and K into *groups* of 4 (K padded with zero
//! rows). A panel is `kp / 4` groups of 64 bytes stored one after another;
//! inside a group, column `c` of the panel holds its 4 consecutive `k` values
//! at bytes `4c .. 4c + 4`, as `i8`:
//!
//! ```text
//! panel p, group g:  [b(4g..4g+4, 16p+0)] [b(4g..4g+4, 16p+1)] ... [b(4g..4g+4, 16p+15)]
//! ```
//!
//! One group is one zmm register for `vpdpbusd`, or four 16-byte loads for the
//! AVX2 sign-extend path, so switching ISA never invalidates packed data.
//! `uint8` B is stored as `b - 128` (it then fits `i8`); the `-128` is folded
//! into the stored zero point. Column sums of the stored values sit beside the
//! panels so the zero-point correction costs nothing in the inner loop.
//!
//! # A
//!
//! A (`M × K`, `uint8`, `int8` or `float32` quantized on the fly) becomes
//! `Â = a + a_off` with `Â` in `0..=255` (`int8` is shifted by +128) in rows of
//! `kp` elements (zero padded), plus the row sums of `Â` and the stored zero
//! point `za + a_off` of every row.

use crate::error::Result;
use crate::{shape_err, value_err};

/// Columns per panel of packed B.
pub const NR: usize = 16;

/// `n` rounded up to a multiple of `m`.
#[inline]
pub(crate) fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// Zero point(s) of an operand: one for all rows/columns, or one each.
#[derive(Debug, Clone, Copy)]
pub enum ZeroPoint<'a> {
    Scalar(i32),
    PerIndex(&'a [i32]),
}

impl ZeroPoint<'_> {
    fn check(&self, name: &str, len: usize, lo: i32, hi: i32) -> Result<()> {
        let values: &[i32] = match self {
            ZeroPoint::Scalar(v) => std::slice::from_ref(v),
            ZeroPoint::PerIndex(v) => {
                if v.len() != len {
                    return shape_err!("{name} must be a scalar or have {len} elements; got {}", v.len());
                }
                v
            }
        };
        if let Some(bad) = values.iter().find(|&&v| v < lo || v > hi) {
            return value_err!("{name} must lie in [{lo}, {hi}]; got {bad}");
        }
        Ok(())
    }

    #[inline]
    fn get(&self, i: usize) -> i32 {
        match self {
            ZeroPoint::Scalar(v) => *v,
            ZeroPoint::PerIndex(v) => v[i],
        }
    }

    /// Largest |x - zp| over every x of the dtype range `lo..=hi`.
    fn max_abs_diff(&self, lo: i32, hi: i32) -> i64 {
        let one = |z: i32| (z as i64 - lo as i64).abs().max((hi as i64 - z as i64).abs());
        match self {
            ZeroPoint::Scalar(v) => one(*v),
            ZeroPoint::PerIndex(v) => v.iter().map(|&z| one(z)).max().unwrap_or(0),
        }
    }
}

/// A `K × N` int8/uint8 matrix packed once (see the module doc for the layout).
#[derive(Debug, Clone)]
pub struct PackedB {
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) kp: usize,
    /// Panels, each `kp * NR` bytes.
    pub(crate) data: Vec<i8>,
    /// Per column (padded to a multiple of NR): stored zero point `zb + b_off`.
    pub(crate) zp: Vec<i32>,
    /// Per column: `colsum(stored B) - K * stored zero point` (wrapping).
    pub(crate) colterm: Vec<i32>,
    /// Largest |b - zb| any element may have (for the overflow bound).
    pub(crate) max_abs: i64,
    pub(crate) signed: bool,
}

impl PackedB {
    /// Rows (K).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Columns (N).
    pub fn n(&self) -> usize {
        self.n
    }
    /// Whether the source was int8 (else uint8).
    pub fn is_signed(&self) -> bool {
        self.signed
    }
    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        self.data.len() + 4 * (self.zp.len() + self.colterm.len())
    }
    /// Number of 16-column panels.
    pub(crate) fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }
    /// Bytes of one panel.
    pub(crate) fn panel_stride(&self) -> usize {
        self.kp * NR
    }

    /// Packs a row-major `K × N` matrix (`b[k * n + j]`), `uint8` or `int8`.
    pub fn from_kn_u8(b: &[u8], k: usize, n: usize, zp: ZeroPoint<'_>) -> Result<PackedB> {
        Self::pack(k, n, zp, false, b.len(), |kk, j| (b[kk * n + j] ^ 0x80) as i8)
    }
    /// Packs a row-major `K × N` int8 matrix.
    pub fn from_kn_i8(b: &[i8], k: usize, n: usize, zp: ZeroPoint<'_>) -> Result<PackedB> {
        Self::pack(k, n, zp, true, b.len(), |kk, j| b[kk * n + j])
    }
    /// Packs the transpose of a row-major `N × K` matrix (a Linear weight
    /// `(out, in)`): `B[k, j] = w[j * k_total + k]`.
    pub fn from_nk_i8(w: &[i8], n: usize, k: usize, zp: ZeroPoint<'_>) -> Result<PackedB> {
        Self::pack(k, n, zp, true, w.len(), |kk, j| w[j * k + kk])
    }
    /// Packs the transpose of a row-major `N × K` uint8 matrix.
    pub fn from_nk_u8(w: &[u8], n: usize, k: usize, zp: ZeroPoint<'_>) -> Result<PackedB> {
        Self::pack(k, n, zp, false, w.len(), |kk, j| (w[j * k + kk] ^ 0x80) as i8)
    }

    fn pack(
        k: usize,
        n: usize,
        zp: ZeroPoint<'_>,
        signed: bool,
        len: usize,
        get: impl Fn(usize, usize) -> i8 + Sync,
    ) -> Result<PackedB> {
        if k.checked_mul(n) != Some(len) {
            return shape_err!("B has {len} elements, expected K*N = {k}*{n}");
        }
        let (lo, hi, off) = if signed { (-128, 127, 0) } else { (0, 255, -128) };
        zp.check("b_zero_point", n, lo, hi)?;
        let kp = round_up(k, 4);
        let panels = n.div_ceil(NR);
        let np = panels * NR;
        let mut data = vec![0i8; panels * kp * NR];
        let mut zps = vec![0i32; np];
        let mut colterm = vec![0i32; np];
        // Pack panel by panel (in parallel for big B): panel p covers columns
        // 16p..16p+16; its group g at offset g*64, column c at 4c.
        let pack_panel = |p: usize, out: &mut [i8], zp_out: &mut [i32], ct_out: &mut [i32]| {
            let ncols = (n - p * NR).min(NR);
            let mut sums = [0i32; NR];
            for g in 0..kp / 4 {
                let grp = &mut out[g * 64..g * 64 + 64];
                for t in 0..4 {
                    let kk = 4 * g + t;
                    if kk >= k {
                        break;
                    }
                    for c in 0..ncols {
                        let v = get(kk, p * NR + c);
                        grp[4 * c + t] = v;
                        sums[c] = sums[c].wrapping_add(v as i32);
                    }
                }
            }
            for c in 0..NR {
                if c < ncols {
                    let z = zp.get(p * NR + c) + off;
                    zp_out[c] = z;
                    ct_out[c] = sums[c].wrapping_sub((k as i32).wrapping_mul(z));
                }
            }
        };
        let work = k * n;
        if panels > 0 && kp > 0 {
            crate::threads::run(work, || {
                use rayon::prelude::*;
                data.par_chunks_mut(kp * NR)
                    .zip(zps.par_chunks_mut(NR))
                    .zip(colterm.par_chunks_mut(NR))
                    .enumerate()
                    .with_min_len((1 << 16) / (kp * NR).max(1) + 1)
                    .for_each(|(p, ((d, z), c))| pack_panel(p, d, z, c));
            });
        } else {
            for p in 0..panels {
                pack_panel(p, &mut [], &mut zps[p * NR..p * NR + NR], &mut colterm[p * NR..p * NR + NR]);
            }
        }
        Ok(PackedB { k, n, kp, data, zp: zps, colterm, max_abs: zp.max_abs_diff(lo, hi), signed })
    }

    /// Unpacks to the row-major `K × N` stored values plus offset, i.e. the
    /// original matrix as i32 (for tests and pickling checks).
    pub fn unpack(&self) -> Vec<i32> {
        let off = if self.signed { 0 } else { 128 };
        let mut out = vec![0i32; self.k * self.n];
        for kk in 0..self.k {
            for j in 0..self.n {
                let (p, c) = (j / NR, j % NR);
                let v = self.data[p * self.panel_stride() + (kk / 4) * 64 + 4 * c + kk % 4];
                out[kk * self.n + j] = v as i32 + off;
            }
        }
        out
    }
}

/// Where the rows of A come from.
#[derive(Debug, Clone, Copy)]
pub enum ASource<'a> {
    U8(&'a [u8]),
    I8(&'a [i8]),
}

impl ASource<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            ASource::U8(a) => a.len(),
            ASource::I8(a) => a.len(),
        }
    }
    pub(crate) fn range(&self) -> (i32, i32) {
        match self {
            ASource::U8(_) => (0, 255),
            ASource::I8(_) => (-128, 127),
        }
    }
}

/// Checks the overflow bound `K * max|a - za| * max|b - zb| <= i32::MAX`
/// under which every wrapping i32 sum is the exact result.
pub(crate) fn check_bound(k: usize, a_max: i64, b_max: i64) -> Result<()> {
    let bound = (k as i128) * (a_max as i128) * (b_max as i128);
    if bound > i32::MAX as i128 {
        return value_err!(
            "K = {k} is too large for an exact int32 result with these zero points: \
             K * max|a - a_zero_point| * max|b - b_zero_point| = {k} * {a_max} * {b_max} > 2^31 - 1"
        );
    }
    Ok(())
}

/// Checks A's zero points and returns the largest |a - za| (for the bound).
pub(crate) fn check_a(a: &ASource<'_>, m: usize, k: usize, zp: ZeroPoint<'_>) -> Result<i64> {
    if m.checked_mul(k) != Some(a.len()) {
        return shape_err!("A has {} elements, expected M*K = {m}*{k}", a.len());
    }
    let (lo, hi) = a.range();
    zp.check("a_zero_point", m, lo, hi)?;
    Ok(zp.max_abs_diff(lo, hi))
}

/// Writes row `i` of Â (`a + a_off`, u8, zero padded to `dst.len()`) and
/// returns `(rowsum(Â), za + a_off)`.
#[inline]
pub(crate) fn pack_a_row(a: &ASource<'_>, k: usize, i: usize, zp: ZeroPoint<'_>, dst: &mut [u8]) -> (i32, i32) {
    let mut sum = 0i32;
    let off = match a {
        ASource::U8(a) => {
            let src = &a[i * k..i * k + k];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = s;
                sum += s as i32;
            }
            0
        }
        ASource::I8(a) => {
            let src = &a[i * k..i * k + k];
            for (d, &s) in dst.iter_mut().zip(src) {
                let v = (s as u8) ^ 0x80;
                *d = v;
                sum += v as i32;
            }
            128
        }
    };
    for d in dst[k..].iter_mut() {
        *d = 0;
    }
    (sum, zp.get(i) + off)
}

/// Dynamic per-row asymmetric uint8 quantization of one float row (the
/// DynamicQuantizeLinear formula applied to each row): `lo = min(min(x), 0)`,
/// `hi = max(max(x), 0)`, `scale = (hi - lo) / 255` (1 when `hi == lo`),
/// `zp = clamp(round_half_even(-lo / scale), 0, 255)`,
/// `q = clamp(round_half_even(x / scale) + zp, 0, 255)`, all in f32.
/// Writes q (zero padded) to `dst`; returns `(rowsum(q), zp, scale)`, or
/// `None` if the row holds NaN or infinity.
#[inline]
pub fn quantize_row_u8(x: &[f32], dst: &mut [u8]) -> Option<(i32, i32, f32)> {
    let (mut lo, mut hi) = (0.0f32, 0.0f32);
    let mut bad = false;
    for &v in x {
        lo = lo.min(v);
        hi = hi.max(v);
        bad |= !v.is_finite();
    }
    if bad {
        return None;
    }
    let mut scale = (hi - lo) / 255.0;
    if !(scale > 0.0) || !scale.is_finite() {
        scale = 1.0;
    }
    let zp = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as i32;
    let zpf = zp as f32;
    let mut sum = 0i32;
    for (d, &v) in dst.iter_mut().zip(x) {
        let q = ((v / scale).round_ties_even() + zpf).clamp(0.0, 255.0) as u8;
        *d = q;
        sum += q as i32;
    }
    for d in dst[x.len()..].iter_mut() {
        *d = 0;
    }
    Some((sum, zp, scale))
}
