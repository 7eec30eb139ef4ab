//! The static activation quantizer: float activations to uint8 with a fixed
//! (calibrated) per-tensor scale and zero point, by `QuantizeLinear`'s rule
//! (true division, round half to even, zero point, saturate: the active
//! path's `quant_run`, the loop of [`super::quantize`]). Statically quantized
//! runtime layers use it where dynamic ones use [`super::rows`]: no min/max
//! pass, only a finiteness check of each block while it is in cache, so NaN
//! or ±inf is an error as in the dynamic path instead of a saturated byte.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::exec::{Ctx, SyncPtr};
use crate::{shape_err, value_err, Result};

/// Elements per task: small enough to re-read from L1 for the check.
const BLOCK: usize = 4096;

/// Quantizes `x` into `out` (same length): `out[i] = clamp(round_half_even(x[i] / scale)
/// + zero_point, 0, 255)`. `scale` must be finite and > 0, `zero_point` in `[0, 255]`;
/// NaN or ±inf in `x` is a `Value` error naming the first such element.
pub fn quantize_fixed_u8(
    ctx: &Ctx,
    x: &[f32],
    scale: f32,
    zero_point: i32,
    out: &mut [u8],
) -> Result<()> {
    if x.len() != out.len() {
        return shape_err!("x has {} elements but out has {}", x.len(), out.len());
    }
    check_params(scale, zero_point)?;
    let n = x.len();
    let run = super::kernels().quant_run;
    let zp = zero_point as f32;
    let bad = AtomicUsize::new(usize::MAX);
    let dst = SyncPtr(out.as_mut_ptr());
    ctx.for_each_task(n, n.div_ceil(BLOCK), |b| {
        let (a, e) = (b * BLOCK, n.min((b + 1) * BLOCK));
        // SAFETY: task `b` alone writes `out[a..e]`, inside `out` (a < e <= n).
        let o = unsafe { std::slice::from_raw_parts_mut(dst.get().add(a), e - a) };
        let xs = &x[a..e];
        run(xs, scale, zp, 0.0, 255.0, o, false);
        if !all_finite(xs) {
            let i = xs.iter().position(|v| !v.is_finite()).unwrap_or(0);
            bad.fetch_min(a + i, Ordering::Relaxed);
        }
    });
    match bad.into_inner() {
        usize::MAX => Ok(()),
        i => value_err!("x is not finite at element {i}"),
    }
}

/// Checks static activation parameters: `scale` finite and > 0, `zero_point` in `[0, 255]`.
pub fn check_params(scale: f32, zero_point: i32) -> Result<()> {
    if !(scale.is_finite() && scale > 0.0) {
        return value_err!("activation scale must be finite and > 0; got {scale}");
    }
    if !(0..=255).contains(&zero_point) {
        return value_err!("activation zero point must lie in [0, 255]; got {zero_point}");
    }
    Ok(())
}

/// Whether every element is finite, in 16 lanes so it vectorises (`v * 0` is
/// 0 for finite `v` and NaN otherwise).
#[inline]
fn all_finite(x: &[f32]) -> bool {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for j in 0..L {
            acc[j] += c[j] * 0.0;
        }
    }
    for (j, &v) in chunks.remainder().iter().enumerate() {
        acc[j] += v * 0.0;
    }
    acc.iter().all(|a| *a == 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::quant::{quant1, quantize, AxisLayout};

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                match i % 4 {
                    // Exact ties of a 0.5 grid and far outside the range.
                    0 => (i % 9) as f32 * 0.25 - 1.0,
                    1 => ((s >> 40) as f32 - 8e6) * 1e-3,
                    _ => ((s >> 56) as f32 - 100.0) * 0.013,
                }
            })
            .collect()
    }

    #[test]
    fn every_isa_gives_quantize_linear_bytes() {
        let ctx = crate::exec::TEST;
        for (n, seed) in [
            (0usize, 1u64),
            (1, 2),
            (15, 3),
            (16, 4),
            (17, 5),
            (4095, 6),
            (9000, 7),
        ] {
            let x = data(n, seed);
            for (scale, zp) in [
                (0.5f32, 0i32),
                (0.5, 128),
                (0.013, 255),
                (3.0e-3, 37),
                (1e-30, 3),
            ] {
                let want: Vec<u8> = x
                    .iter()
                    .map(|&v| quant1(v, scale, zp as f32, 0.0, 255.0))
                    .collect();
                cpu::each_isa(|isa| {
                    let mut got = vec![7u8; n];
                    quantize_fixed_u8(&ctx, &x, scale, zp, &mut got).unwrap();
                    assert_eq!(got, want, "{isa:?} n={n} scale={scale} zp={zp}");
                    let mut q = vec![0u8; n];
                    quantize(&ctx, &x, AxisLayout::per_tensor(n), &[scale], &[zp], &mut q).unwrap();
                    assert_eq!(q, want, "{isa:?}");
                });
            }
        }
    }

    #[test]
    fn refuses_bad_input_and_parameters() {
        let ctx = crate::exec::TEST;
        let mut x = data(9000, 9);
        let mut out = vec![0u8; x.len()];
        x[5000] = f32::NAN;
        x[8000] = f32::INFINITY;
        let e = quantize_fixed_u8(&ctx, &x, 0.1, 3, &mut out).unwrap_err();
        assert!(e.to_string().contains("element 5000"), "{e}");
        x[5000] = 0.0;
        let e = quantize_fixed_u8(&ctx, &x, 0.1, 3, &mut out).unwrap_err();
        assert!(e.to_string().contains("element 8000"), "{e}");
        x[8000] = 0.0;
        assert!(quantize_fixed_u8(&ctx, &x, 0.1, 3, &mut out).is_ok());
        for (s, z) in [
            (0.0f32, 0i32),
            (-1.0, 0),
            (f32::NAN, 0),
            (f32::INFINITY, 0),
            (1.0, -1),
            (1.0, 256),
        ] {
            assert!(
                quantize_fixed_u8(&ctx, &x, s, z, &mut out).is_err(),
                "{s} {z}"
            );
        }
        assert!(quantize_fixed_u8(&ctx, &x, 1.0, 0, &mut out[1..]).is_err());
    }
}
