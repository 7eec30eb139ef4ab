//! The one dynamic activation quantizer: float rows to uint8, one scale and
//! zero point per row. The dense int8 GEMM (`gemm::linear_dynamic`), the
//! int8 sparse products and the runtime's layers all quantize activations
//! here, so a dense and a sparse layer see the same bytes for the same row.
//!
//! # The rule (DynamicQuantizeLinear applied to each row, with a reciprocal)
//!
//! All in `f32`: `lo = min(min(x), 0)`, `hi = max(max(x), 0)`,
//! `scale = (hi - lo) / 255` (1 when that is 0 or subnormal-underflowed;
//! when `hi - lo` overflows f32, as for `[3e38, -3e38]`, the quotient is taken
//! in f64 and rounded once, so such a finite row quantizes correctly instead
//! of with a made-up scale), `zp = clamp(round_half_even(-lo / scale), 0, 255)`, and
//! `q = clamp(round_half_even(x · (1 / scale)) + zp, 0, 255)`.
//!
//! The multiply by `1 / scale` (where ONNX's QuantizeLinear divides, as the
//! standalone [`crate::quant::quantize`] op still does) moves a value by at
//! most one step at a rounding tie and makes this pass several times
//! cheaper: a `vdivps` per 16 values cost as much as the whole GEMM of a
//! 256-row MLP layer. It is the rule of every path; the SIMD versions (in
//! `quant/arch`) give the same bytes as `quantize_row_body`.

use crate::error::try_vec;
use crate::exec::{self, Ctx};
use crate::{shape_err, Result};

/// Activations quantized by [`quantize_rows_u8`]: `(batch, k)` uint8 rows
/// with one scale and zero point each.
#[derive(Debug, Clone, Copy)]
pub struct QuantRows<'a> {
    pub q: &'a [u8],
    pub scale: &'a [f32],
    pub zero_point: &'a [u8],
}

/// Quantizes every row of `x` `(batch, k)` (row-major) by the rule above:
/// returns `(q, scale, zero_point)`, `q` of shape `(batch, k)` and one scale
/// and zero point per row; rows are spread over the library's threads for a
/// big `x`. NaN or infinity is a `Value` error naming the first such element.
pub fn quantize_rows_u8(
    ctx: &Ctx,
    x: &[f32],
    batch: usize,
    k: usize,
) -> Result<(Vec<u8>, Vec<f32>, Vec<u8>)> {
    if batch.checked_mul(k) != Some(x.len()) {
        return shape_err!("x has {} elements, expected {batch}x{k}", x.len());
    }
    let mut q = try_vec(x.len(), 0u8, "the quantized rows")?;
    let mut scale = try_vec(batch, 0f32, "the row scales")?;
    let mut zero_point = try_vec(batch, 0u8, "the row zero points")?;
    quantize_rows_u8_into(ctx, x, batch, k, &mut q, &mut scale, &mut zero_point)?;
    Ok((q, scale, zero_point))
}

/// [`quantize_rows_u8`] into caller buffers: `q` of `batch · k` bytes,
/// `scale` and `zero_point` of `batch` entries (so a caller that keeps them
/// allocates nothing per call).
pub fn quantize_rows_u8_into(
    ctx: &Ctx,
    x: &[f32],
    batch: usize,
    k: usize,
    q: &mut [u8],
    scale: &mut [f32],
    zero_point: &mut [u8],
) -> Result<()> {
    if batch.checked_mul(k) != Some(x.len()) {
        return shape_err!("x has {} elements, expected {batch}x{k}", x.len());
    }
    if q.len() != x.len() || scale.len() != batch || zero_point.len() != batch {
        return shape_err!(
            "quantized rows: buffers of {}, {} and {} entries for {batch}x{k}",
            q.len(),
            scale.len(),
            zero_point.len()
        );
    }
    if k == 0 {
        let (s, zp, _) = row_qparams(0.0, 0.0);
        scale.fill(s);
        zero_point.fill(zp as u8);
        return Ok(());
    }
    let quantize_row = crate::cpu::dispatch().quant.quantize_row;
    // On the fork-join team, as the GEMMs that read the rows: a rayon job
    // here woke a second set of threads that then spun beside the team's.
    let rows_per = (ROWS_TASK_ELEMS / k).max(1);
    let (qp, sp, zp) = (
        exec::SyncPtr(q.as_mut_ptr()),
        exec::SyncPtr(scale.as_mut_ptr()),
        exec::SyncPtr(zero_point.as_mut_ptr()),
    );
    ctx.for_each_task(x.len(), batch.div_ceil(rows_per), |t| {
        for b in t * rows_per..((t + 1) * rows_per).min(batch) {
            // SAFETY: task `t` alone writes rows t·rows_per.. of `q` and
            // their entries of `scale` / `zero_point` (sized for `batch` rows).
            unsafe {
                let qr = std::slice::from_raw_parts_mut(qp.get().add(b * k), k);
                // A row's scale is finite and > 0: NaN marks a row that is not finite.
                let (s, z) = match quantize_row(&x[b * k..b * k + k], qr) {
                    Some((_, z, s)) => (s, z as u8),
                    None => (f32::NAN, 0),
                };
                *sp.get().add(b) = s;
                *zp.get().add(b) = z;
            }
        }
    });
    match scale.iter().position(|s| s.is_nan()) {
        Some(b) => Err(not_finite(x, k, b)),
        None => Ok(()),
    }
}

/// The error of a row `b` of `x` `(·, k)` that the quantizer rejected:
/// names its first NaN or infinity.
pub(crate) fn not_finite(x: &[f32], k: usize, b: usize) -> crate::Error {
    let row = &x[b * k..b * k + k];
    let col = row.iter().position(|v| !v.is_finite()).unwrap_or(0);
    crate::Error::Value(format!("x is not finite at row {b}, column {col}"))
}

/// Elements of `x` per task of [`quantize_rows_u8`] (whole rows).
const ROWS_TASK_ELEMS: usize = 1 << 14;

/// `(scale, zero point, 1 / scale)` of a row whose minimum and maximum
/// (each taken with 0) are `lo <= 0 <= hi`.
#[inline(always)]
pub(crate) fn row_qparams(lo: f32, hi: f32) -> (f32, i32, f32) {
    let mut scale = crate::quant::range_scale(lo, hi, 255.0);
    // Zero (constant-zero row) or subnormal underflow: use 1. (A finite row's
    // scale is finite: `range_scale` handles a range past f32::MAX exactly.)
    if scale.is_nan() || scale <= 0.0 {
        scale = 1.0;
    }
    let zp = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as i32;
    (scale, zp, 1.0 / scale)
}

/// Quantizes one row with the active path's code: writes `q` to
/// `dst[..x.len()]` and zeros to the rest of `dst` (padding), and returns
/// `(Σ q, zero point, scale)`, or `None` if the row holds NaN or infinity.
#[inline]
pub fn quantize_row_u8(x: &[f32], dst: &mut [u8]) -> Option<(i32, i32, f32)> {
    (crate::cpu::dispatch().quant.quantize_row)(x, dst)
}

/// The portable body of [`quantize_row_u8`], always inlined so that the
/// per-ISA wrappers vectorise it; the reference of the SIMD versions.
#[inline(always)]
pub(crate) fn quantize_row_body(x: &[f32], dst: &mut [u8]) -> Option<(i32, i32, f32)> {
    // Lane-wise min / max / finiteness over 16 lanes so the loop vectorises;
    // `v * 0` is 0 for finite v and NaN for infinity or NaN.
    const L: usize = 16;
    let (mut lo, mut hi, mut chk) = ([0.0f32; L], [0.0f32; L], [0.0f32; L]);
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for i in 0..L {
            lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
            hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
            chk[i] += c[i] * 0.0;
        }
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        lo[i] = if v < lo[i] { v } else { lo[i] };
        hi[i] = if v > hi[i] { v } else { hi[i] };
        chk[i] += v * 0.0;
    }
    if chk.iter().any(|c| *c != 0.0) {
        return None;
    }
    let lo = lo.iter().fold(0.0f32, |a, &b| a.min(b));
    let hi = hi.iter().fold(0.0f32, |a, &b| a.max(b));
    let (scale, zp, inv) = row_qparams(lo, hi);
    let sum = quantize_row_on(x, inv, zp, dst);
    for d in dst[x.len()..].iter_mut() {
        *d = 0;
    }
    Some((sum, zp, scale))
}

/// The second half of the row quantizer on given parameters (`inv` is
/// `1 / scale` from [`row_qparams`]): `dst[i] = clamp(round_half_even(x[i] ·
/// inv) + zp, 0, 255)` for finite `x`; returns `Σ dst[..x.len()]`. Plain f32
/// operations, so any vectorisation of it gives the same bytes.
#[inline(always)]
pub(crate) fn quantize_row_on(x: &[f32], inv: f32, zp: i32, dst: &mut [u8]) -> i32 {
    let zpf = zp as f32;
    let mut sum = 0i32;
    // Clamped first, so the plain int conversion is exact; it (unlike a
    // saturating `as u8` from float) vectorises.
    for (d, &v) in dst.iter_mut().zip(x) {
        let q = (crate::gemm::output::round_even_f32(v * inv) + zpf).clamp(0.0, 255.0);
        // SAFETY: q is an integer-valued float in [0, 255].
        let qi: i32 = unsafe { q.to_int_unchecked() };
        *d = qi as u8;
        sum += qi;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;

    #[test]
    fn batch_quantizer_is_the_row_quantizer() {
        let (batch, k) = (70, 37);
        let x: Vec<f32> = bytes(batch * k, 8)
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if i % 5 == 0 {
                    (i % 7) as f32 * 0.5 - 1.5
                } else {
                    (v as f32 - 90.0) * 0.01
                }
            })
            .collect();
        let (q, s, z) = quantize_rows_u8(&crate::exec::TEST, &x, batch, k).unwrap();
        for b in 0..batch {
            let mut want = vec![0u8; k];
            let (_, zp, sc) = quantize_row_u8(&x[b * k..b * k + k], &mut want).unwrap();
            assert_eq!(&q[b * k..b * k + k], &want[..]);
            assert_eq!((s[b], z[b] as i32), (sc, zp));
        }
        let mut bad = x.clone();
        bad[3 * k + 5] = f32::NAN;
        let e = quantize_rows_u8(&crate::exec::TEST, &bad, batch, k).unwrap_err();
        assert!(e.to_string().contains("row 3, column 5"), "{e}");
        assert!(quantize_rows_u8(&crate::exec::TEST, &x, batch, k + 1).is_err());
        assert_eq!(
            quantize_rows_u8(&crate::exec::TEST, &[], 2, 0).unwrap(),
            (vec![], vec![1.0; 2], vec![0; 2])
        );
    }

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn every_isa_quantizes_rows_like_the_portable_code() {
        let mut rows: Vec<Vec<f32>> = vec![
            vec![],
            vec![0.0; 5],
            vec![-0.0; 17],
            vec![3.5; 33],
            vec![-2.0; 16],
            vec![1e-45, -1e-45],
        ];
        for (len, seed) in [
            (1usize, 1u64),
            (15, 2),
            (16, 3),
            (31, 4),
            (64, 5),
            (100, 6),
            (257, 7),
        ] {
            let b = bytes(len, seed);
            rows.push(b.iter().map(|&v| (v as f32 - 100.0) * 0.037).collect());
            rows.push(b.iter().map(|&v| v as f32 * 1e3).collect()); // positive only
                                                                    // Values landing exactly on rounding ties of the grid.
            rows.push((0..len).map(|i| (i % 7) as f32 * 0.5 - 1.5).collect());
        }
        cpu::each_isa(|i| {
            for x in &rows {
                let kp = x.len().div_ceil(4) * 4;
                let mut want = vec![7u8; kp];
                let r = quantize_row_body(x, &mut want);
                let mut got = vec![9u8; kp];
                assert_eq!(quantize_row_u8(x, &mut got), r, "{i:?} {x:?}");
                assert_eq!(want, got, "{i:?} {x:?}");
            }
            for bad in [
                [1.0f32, f32::NAN, 2.0],
                [f32::INFINITY, 0.0, 1.0],
                [0.0, 1.0, f32::NEG_INFINITY],
            ] {
                assert!(
                    quantize_row_u8(&bad, &mut [0u8; 4]).is_none(),
                    "{i:?} {bad:?}"
                );
            }
        });
    }

    /// Every length up to past two groups of the widest path (64 values of
    /// AVX-512, 32 of AVX2; so every tail
    /// length and lane of every path), with the row's extreme, a rounding
    /// tie, a signed zero, or a NaN / infinity at every position: the same
    /// bytes, sum, zero point and scale as the portable body on every ISA.
    #[test]
    fn every_isa_matches_the_body_at_every_lane_and_tail_position() {
        cpu::each_isa(|i| {
            for len in (0..=140usize).chain([255, 256, 257]) {
                let base: Vec<f32> = bytes(len, len as u64 + 11)
                    .iter()
                    .map(|&v| (v as f32 - 128.0) * 0.013)
                    .collect();
                let kp = len.div_ceil(4) * 4 + 4;
                let check = |x: &[f32], what: &str| {
                    let mut want = vec![7u8; kp];
                    let r = quantize_row_body(x, &mut want);
                    let mut got = vec![9u8; kp];
                    assert_eq!(quantize_row_u8(x, &mut got), r, "{i:?} {what} {x:?}");
                    if r.is_some() {
                        assert_eq!(want, got, "{i:?} {what} {x:?}");
                    }
                    r
                };
                check(&base, "base");
                let neg: Vec<f32> = base.iter().map(|v| -v.abs() - 0.5).collect();
                check(&neg, "all negative");
                let zeros: Vec<f32> = (0..len)
                    .map(|j| if j % 3 == 0 { -0.0 } else { 0.0 })
                    .collect();
                assert_eq!(check(&zeros, "zeros"), Some((0, 0, 1.0)), "{i:?} {len}");
                for at in 0..len {
                    for (v, finite) in [
                        (9.75f32, true),
                        (-9.75, true),
                        (-0.0, true),
                        (0.5 * 19.5 / 255.0 * 3.0, true),
                        (f32::NAN, false),
                        (f32::INFINITY, false),
                        (f32::NEG_INFINITY, false),
                    ] {
                        let mut x = base.clone();
                        x[at] = v;
                        let r = check(&x, &format!("{v} at {at}"));
                        assert_eq!(r.is_some(), finite, "{i:?} {v} at {at} of {len}");
                    }
                }
            }
        });
    }

    /// A finite row wider than f32::MAX (`hi - lo` overflows) quantizes on
    /// its true range on every path: the scale is `(hi - lo) / 255` rounded
    /// once from f64, and dequantizing gives each value back within a step.
    #[test]
    fn a_row_wider_than_f32_max_quantizes_on_its_true_range() {
        let rows: [&[f32]; 4] = [
            &[3e38, -3e38],
            &[f32::MAX, -f32::MAX, 0.0, 1.0, -1e38, 2e38],
            &[-f32::MAX; 3],
            &[
                f32::MAX,
                -1e30,
                5e37,
                -3.4e38,
                1.0,
                2.0,
                3.0,
                4.0,
                5.0,
                6.0,
                7.0,
                8.0,
                9.0,
                1e38,
                -1e38,
                0.5,
                3e38,
            ],
        ];
        cpu::each_isa(|i| {
            for x in rows {
                let (lo, hi) = x
                    .iter()
                    .fold((0.0f32, 0.0f32), |(a, b), &v| (a.min(v), b.max(v)));
                let want_scale = ((hi as f64 - lo as f64) / 255.0) as f32;
                let kp = x.len().div_ceil(4) * 4;
                let mut q = vec![9u8; kp];
                let (sum, zp, scale) = quantize_row_u8(x, &mut q).expect("a finite row");
                assert!(scale.is_finite() && scale > 0.0, "{i:?} {x:?}");
                if (hi as f64 - lo as f64) > f32::MAX as f64 {
                    assert_eq!(scale, want_scale, "{i:?} {x:?}");
                }
                assert_eq!(sum, q.iter().map(|&v| v as i32).sum::<i32>(), "{i:?}");
                for (&v, &b) in x.iter().zip(&q) {
                    let back = (b as f64 - zp as f64) * scale as f64;
                    assert!(
                        (back - v as f64).abs() <= scale as f64,
                        "{i:?} {v} -> {b} ({back})"
                    );
                }
                let mut body = vec![7u8; kp];
                assert_eq!(
                    quantize_row_body(x, &mut body),
                    Some((sum, zp, scale)),
                    "{i:?}"
                );
                assert_eq!(body, q, "{i:?} {x:?}");
            }
        });
    }
}
