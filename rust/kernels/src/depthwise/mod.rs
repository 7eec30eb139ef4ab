//! Exact int8 depthwise 2-D convolution, channels-last (channel multiplier 1).
//!
//! `x` is uint8 NHWC `(n, h, w, c)`, quantized per image with zero point
//! `zero_points[img]`; the weight is int8 `(kh, kw, c)` (channels innermost,
//! so the inner loop runs over contiguous channels). For output pixel
//! `(img, oy, ox)` and channel `ch`
//!
//! ```text
//! acc = Σ_{ky, kx in bounds} (x[img, iy, ix, ch] - zp[img]) · w[ky, kx, ch]
//! iy  = oy·sh + ky·dh - pad_top,   ix = ox·sw + kx·dw - pad_left
//! ```
//!
//! so a padded position is a real zero (it contributes nothing). `acc` is
//! exact: `|x - zp| <= 255` and `|w| <= 128` make each product fit `i16`
//! (`<= 32640`), and the sum is taken in `i32` (kernels whose tap count could
//! overflow it are refused). The result then goes through the shared output
//! step of [`crate::gemm::output`] with one row per output pixel and one
//! column per channel: `Int32` for the raw accumulators, or `Float` with
//! `row_scale = scales[img]`, so `f = (f32(acc) · scales[img]) · col_scale[ch]
//! + bias[ch]` then ReLU, exactly as every int8 GEMM rounds it.
//!
//! The body is portable (no intrinsics): fixed-width channel blocks of
//! [`CB`] `i32` accumulators that LLVM keeps in vector registers across the
//! taps. Work is split over `(image, output row)` with
//! [`Ctx::for_each_task`] (serial below its threshold).
//!
//! ```
//! use hwreg_kernels::depthwise::{depthwise_conv2d_i32, Depthwise};
//! use hwreg_kernels::exec::Ctx;
//! // One 1×3 image, 1 channel, zero point 1, kernel 1×2: (3-1)·2 + (5-1)·(-1) = 0, ...
//! let g = Depthwise { n: 1, h: 1, w: 3, c: 1, kernel: (1, 2), stride: (1, 1),
//!                     dilation: (1, 1), padding: [0, 0, 0, 0] };
//! let mut out = [0i32; 2];
//! depthwise_conv2d_i32(&Ctx::serial(), &[3, 5, 1], &[1], &[2, -1], &g, &mut out).unwrap();
//! assert_eq!(out, [0, 8]);
//! ```

use std::mem::MaybeUninit;
use std::ops::Range;

use crate::error::Result;
use crate::exec::{Ctx, SyncPtr};
use crate::gemm::output::{Epilogue, OutElem, OutputStep, Param};
use crate::{shape_err, value_err};

#[cfg(test)]
mod tests;

/// Channels per accumulator block: 32 `i32` = 8 SSE2 registers (4 AVX2),
/// which stay in registers across the taps of one output pixel.
pub const CB: usize = 32;

/// Largest product `|x - zp| · |w|`; the i32 sum of `taps` of them must fit.
const MAX_PRODUCT: i64 = 255 * 128;

/// The geometry of one depthwise convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depthwise {
    /// Images, input rows, input columns, channels.
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    /// `(kh, kw)`, each >= 1.
    pub kernel: (usize, usize),
    /// `(sh, sw)`, each >= 1.
    pub stride: (usize, usize),
    /// `(dh, dw)`, each >= 1.
    pub dilation: (usize, usize),
    /// `[top, left, bottom, right]` zero padding.
    pub padding: [usize; 4],
}

/// One output extent: `(size + lo + hi - d·(k-1) - 1) / s + 1`, checked.
fn out_dim(
    axis: &str,
    size: usize,
    k: usize,
    s: usize,
    d: usize,
    lo: usize,
    hi: usize,
) -> Result<usize> {
    if k == 0 {
        return value_err!("kernel {axis} must be >= 1; got 0");
    }
    if s == 0 {
        return value_err!("stride must be >= 1; got 0 along the {axis}");
    }
    if d == 0 {
        return value_err!("dilation must be >= 1; got 0 along the {axis}");
    }
    let Some(padded) = size.checked_add(lo).and_then(|v| v.checked_add(hi)) else {
        return value_err!("padding along the {axis} overflows");
    };
    let Some(span) = d.checked_mul(k - 1).and_then(|v| v.checked_add(1)) else {
        return value_err!("kernel {axis} {k} with dilation {d} overflows");
    };
    if span > padded {
        return shape_err!(
            "kernel {axis} {k} with dilation {d} spans {span}, more than the padded input {axis} {padded}"
        );
    }
    Ok((padded - span) / s + 1)
}

impl Depthwise {
    /// `(oh, ow)`, checking the geometry (every extent >= 1, no overflow).
    pub fn out_hw(&self) -> Result<(usize, usize)> {
        let [t, l, b, r] = self.padding;
        let oh = out_dim(
            "height",
            self.h,
            self.kernel.0,
            self.stride.0,
            self.dilation.0,
            t,
            b,
        )?;
        let ow = out_dim(
            "width",
            self.w,
            self.kernel.1,
            self.stride.1,
            self.dilation.1,
            l,
            r,
        )?;
        Ok((oh, ow))
    }

    /// Elements of `x`, of the weight and of the output `(n, oh, ow, c)`.
    pub fn sizes(&self) -> Result<(usize, usize, usize)> {
        let (oh, ow) = self.out_hw()?;
        let (kh, kw) = self.kernel;
        let prod = |v: &[usize]| v.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
        let (Some(xs), Some(ws), Some(os)) = (
            prod(&[self.n, self.h, self.w, self.c]),
            prod(&[kh, kw, self.c]),
            prod(&[self.n, oh, ow, self.c]),
        ) else {
            return value_err!("depthwise convolution sizes overflow: {self:?}");
        };
        Ok((xs, ws, os))
    }

    /// Taps `kh · kw`, refused when their i32 sum could overflow.
    fn taps(&self) -> Result<usize> {
        let (kh, kw) = self.kernel;
        match kh.checked_mul(kw) {
            Some(t) if (t as i64).saturating_mul(MAX_PRODUCT) <= i32::MAX as i64 => Ok(t),
            _ => value_err!(
                "kernel {kh}x{kw} has too many taps for an exact int32 sum (at most {})",
                i32::MAX as i64 / MAX_PRODUCT
            ),
        }
    }
}

/// Checks every input against the geometry and `out`'s length; returns `(oh, ow)`.
fn check(
    x: &[u8],
    zero_points: &[i32],
    weight: &[i8],
    g: &Depthwise,
    out_len: usize,
) -> Result<(usize, usize)> {
    let (xs, ws, os) = g.sizes()?;
    g.taps()?;
    if x.len() != xs {
        return shape_err!(
            "x has {} elements; (n, h, w, c) = {:?} needs {xs}",
            x.len(),
            (g.n, g.h, g.w, g.c)
        );
    }
    if weight.len() != ws {
        return shape_err!(
            "weight has {} elements; (kh, kw, c) = {:?} needs {ws}",
            weight.len(),
            (g.kernel.0, g.kernel.1, g.c)
        );
    }
    if zero_points.len() != g.n {
        return shape_err!(
            "zero_points must have one entry per image ({}); got {}",
            g.n,
            zero_points.len()
        );
    }
    if let Some(z) = zero_points.iter().find(|z| !(0..=255).contains(*z)) {
        return value_err!("zero_points must lie in [0, 255]; got {z}");
    }
    if out_len != os {
        return shape_err!("out has {out_len} elements; (n, oh, ow, c) needs {os}");
    }
    g.out_hw()
}

fn check_positive(name: &str, v: &[f32]) -> Result<()> {
    match v.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        Some(s) => value_err!("{name} must be finite and > 0; got {s}"),
        None => Ok(()),
    }
}

/// The raw exact accumulators, `out` `(n, oh, ow, c)` row-major.
pub fn depthwise_conv2d_i32(
    ctx: &Ctx,
    x: &[u8],
    zero_points: &[i32],
    weight: &[i8],
    g: &Depthwise,
    out: &mut [i32],
) -> Result<()> {
    // SAFETY: an initialised `[i32]` is a valid `[MaybeUninit<i32>]`, and only `i32`s are written.
    let out = unsafe { &mut *(out as *mut [i32] as *mut [MaybeUninit<i32>]) };
    depthwise_conv2d_i32_uninit(ctx, x, zero_points, weight, g, out)
}

/// [`depthwise_conv2d_i32`] into uninitialised memory: on `Ok`, every
/// element of `out` has been written.
pub fn depthwise_conv2d_i32_uninit(
    ctx: &Ctx,
    x: &[u8],
    zero_points: &[i32],
    weight: &[i8],
    g: &Depthwise,
    out: &mut [MaybeUninit<i32>],
) -> Result<()> {
    check(x, zero_points, weight, g, out.len())?;
    let ep = OutputStep::Int32.prepare::<i32>(1, g.c)?;
    run(ctx, x, zero_points, weight, g, &vec![ep; g.n.min(1)], out);
    Ok(())
}

/// [`depthwise_conv2d_f32_uninit`] into initialised memory.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_conv2d_f32(
    ctx: &Ctx,
    x: &[u8],
    zero_points: &[i32],
    scales: &[f32],
    weight: &[i8],
    col_scale: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &Depthwise,
    out: &mut [f32],
) -> Result<()> {
    // SAFETY: as in `depthwise_conv2d_i32`.
    let out = unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) };
    depthwise_conv2d_f32_uninit(
        ctx,
        x,
        zero_points,
        scales,
        weight,
        col_scale,
        bias,
        relu,
        g,
        out,
    )
}

/// The float output: `(f32(acc) · scales[img]) · col_scale[ch] + bias[ch]`,
/// then `max(·, 0)` if `relu` ([`OutputStep::Float`]). `scales` has one entry
/// per image, `col_scale` and `bias` one per channel. On `Ok`, every element
/// of `out` `(n, oh, ow, c)` has been written.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_conv2d_f32_uninit(
    ctx: &Ctx,
    x: &[u8],
    zero_points: &[i32],
    scales: &[f32],
    weight: &[i8],
    col_scale: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &Depthwise,
    out: &mut [MaybeUninit<f32>],
) -> Result<()> {
    check(x, zero_points, weight, g, out.len())?;
    if scales.len() != g.n {
        return shape_err!(
            "scales must have one entry per image ({}); got {}",
            g.n,
            scales.len()
        );
    }
    check_positive("scales", scales)?;
    if col_scale.len() != g.c {
        return shape_err!(
            "col_scale must have one entry per channel ({}); got {}",
            g.c,
            col_scale.len()
        );
    }
    check_positive("col_scale", col_scale)?;
    if let Some(b) = bias {
        if b.len() != g.c {
            return shape_err!(
                "bias must have one entry per channel ({}); got {}",
                g.c,
                b.len()
            );
        }
    }
    // The GEMM adds a zero bias when there is none; one shared row of zeros.
    let zeros;
    let bias = match bias {
        Some(b) => b,
        None => {
            zeros = crate::error::try_vec(g.c, 0.0f32, "the zero bias")?;
            &zeros[..]
        }
    };
    let eps = scales
        .iter()
        .map(|&s| {
            OutputStep::Float {
                row_scale: Param::Scalar(s),
                col_scale: Param::PerIndex(col_scale),
                bias: Some(bias),
                relu,
            }
            .prepare::<f32>(1, g.c)
        })
        .collect::<Result<Vec<_>>>()?;
    run(ctx, x, zero_points, weight, g, &eps, out);
    Ok(())
}

/// Kernel indices `k` with `base + k·d - pad` in `0..size` (a contiguous range).
#[inline]
fn valid_taps(base: usize, pad: usize, size: usize, k: usize, d: usize) -> Range<usize> {
    let lo = if base >= pad {
        0
    } else {
        (pad - base).div_ceil(d)
    };
    let end = pad + size; // <= the padded extent, which did not overflow
    let hi = if end <= base {
        0
    } else {
        (end - base).div_ceil(d).min(k)
    };
    lo.min(hi)..hi
}

/// `acc[j] += (x[j] - zp) · w[j]`, exact: the product fits i16 (|·| <= 32640),
/// the sum is i32. Plain zipped slices, so the loop has no bounds checks and
/// vectorises; with `CB`-long arrays it unrolls completely.
#[inline(always)]
fn mac<W: Weight>(acc: &mut [i32], x: &[u8], w: &[W], zp: i16) {
    for ((a, &xv), &wv) in acc.iter_mut().zip(x).zip(w) {
        // i16 operands widened to an i32 product: LLVM lowers this to
        // `pmaddwd` on i16 lanes (an i16 product truncated and re-extended
        // is promoted to a slow 32-bit multiply on SSE2 instead).
        *a += (xv as i16 - zp) as i32 * wv.into();
    }
}

/// One output pixel's channels `c0..c0 + len` (`len <= CB`): the sum over its
/// in-bounds taps, then the output step.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pixel_block<T: OutElem, W: Weight, const FULL: bool>(
    ximg: &[u8],
    weight: &[W],
    g: &Depthwise,
    zp: i16,
    rows: &Range<usize>,
    cols: &Range<usize>,
    iy0: usize,
    ix0: usize,
    c0: usize,
    len: usize,
    ep: &Epilogue<'_, T>,
    out_px: *mut T,
) {
    let (c, w, kw) = (g.c, g.w, g.kernel.1);
    let (dh, dw) = g.dilation;
    let mut acc = [0i32; CB];
    for ky in rows.clone() {
        let xrow = iy0.wrapping_add(ky * dh) * w; // in bounds for these ky
        for kx in cols.clone() {
            let xo = (xrow + ix0.wrapping_add(kx * dw)) * c + c0;
            let wo = (ky * kw + kx) * c + c0;
            if FULL {
                let xs: &[u8; CB] = ximg[xo..xo + CB].try_into().unwrap();
                let ws: &[W; CB] = weight[wo..wo + CB].try_into().unwrap();
                mac(&mut acc, xs, ws, zp);
            } else {
                mac(
                    &mut acc[..len],
                    &ximg[xo..xo + len],
                    &weight[wo..wo + len],
                    zp,
                );
            }
        }
    }
    // A copy, so the accumulators above stay in registers (a borrowed
    // `acc` is stored back to the stack after every tap).
    let sums = acc;
    // SAFETY: the caller hands each pixel's `c` outputs to one task only.
    unsafe { ep.apply_inline(&sums, CB, 0..1, c0..c0 + len, out_px, c) };
}

/// A weight element: the int8 weight as given, or widened once to `i16`
/// (which saves the sign extension in the inner loop).
trait Weight: Copy + Into<i32> + Send + Sync {}
impl Weight for i8 {}
impl Weight for i16 {}

/// Widens the weight to `i16` once per call (`kh·kw·c` elements: twice the
/// weight's bytes) and runs; if that copy cannot be allocated, runs on the
/// int8 weight directly (same result, a little slower).
fn run<T: OutElem>(
    ctx: &Ctx,
    x: &[u8],
    zero_points: &[i32],
    weight: &[i8],
    g: &Depthwise,
    eps: &[Epilogue<'_, T>],
    out: &mut [MaybeUninit<T>],
) {
    let mut wide: Vec<i16> = Vec::new();
    if wide.try_reserve_exact(weight.len()).is_ok() {
        wide.extend(weight.iter().map(|&v| v as i16));
        run_with(ctx, x, zero_points, &wide, g, eps, out)
    } else {
        run_with(ctx, x, zero_points, weight, g, eps, out)
    }
}

/// The driver: every `(image, output row)` is one task writing its own
/// `ow · c` outputs. `eps` has one prepared epilogue per image, or one for all.
fn run_with<T: OutElem, W: Weight>(
    ctx: &Ctx,
    x: &[u8],
    zero_points: &[i32],
    weight: &[W],
    g: &Depthwise,
    eps: &[Epilogue<'_, T>],
    out: &mut [MaybeUninit<T>],
) {
    let (oh, ow) = match g.out_hw() {
        Ok(v) => v,
        Err(_) => return, // checked by the callers
    };
    if out.is_empty() {
        return;
    }
    let (c, (kh, kw), (sh, sw), (dh, dw)) = (g.c, g.kernel, g.stride, g.dilation);
    let [pt, pl, _, _] = g.padding;
    let plane = g.h * g.w * c;
    let optr = SyncPtr(out.as_mut_ptr() as *mut T);
    let task = |t: usize| {
        let (img, oy) = (t / oh, t % oh);
        let ep = &eps[img.min(eps.len() - 1)];
        let zp = zero_points[img] as i16; // checked in 0..=255
        let ximg = &x[img * plane..(img + 1) * plane];
        let rows = valid_taps(oy * sh, pt, g.h, kh, dh);
        // First input row / column of tap 0 (only used for in-bounds taps).
        let iy0 = (oy * sh).wrapping_sub(pt);
        let row_out = ((img * oh + oy) * ow) * c;
        for ox in 0..ow {
            let cols = valid_taps(ox * sw, pl, g.w, kw, dw);
            let ix0 = (ox * sw).wrapping_sub(pl);
            // SAFETY: pixel (img, oy, ox) lies inside `out`; only this task writes it.
            let out_px = unsafe { optr.get().add(row_out + ox * c) };
            let full = c / CB * CB;
            for c0 in (0..full).step_by(CB) {
                pixel_block::<T, W, true>(
                    ximg, weight, g, zp, &rows, &cols, iy0, ix0, c0, CB, ep, out_px,
                );
            }
            if full < c {
                pixel_block::<T, W, false>(
                    ximg,
                    weight,
                    g,
                    zp,
                    &rows,
                    &cols,
                    iy0,
                    ix0,
                    full,
                    c - full,
                    ep,
                    out_px,
                );
            }
        }
    };
    let work = out.len().saturating_mul(kh * kw);
    ctx.for_each_task(work, g.n * oh, task);
}
