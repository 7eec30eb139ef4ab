//! One task of the depthwise driver: output rows `rows` of one image, every
//! channel. The body every path compiles (`arch/`): portable code over
//! fixed-width channel blocks, which each `#[target_feature]` wrapper
//! vectorises with its own registers.
//!
//! The task first copies the input rows it reads into a band of `i16`
//! values `x - zp`, with the padding columns written as 0 and the channels
//! padded to a multiple of 8 with 0 (so every block is full: no tail loop
//! in the sums). A padded tap then contributes `0 · w` like the real zero
//! it stands for, and every output pixel is an interior one: no border
//! cases in the inner loop. Rows of padding are left out of the tap range
//! instead (a contiguous range of `ky`).
//!
//! The weight is widened to `i16` and padded the same way (0 for the
//! padded channels). Sums: `acc[j] += xs[j] · ws[j]` over `i16` lanes into
//! `i32` (`|x - zp| <= 255`, `|w| <= 128`: exact), then the shared output
//! step for the pixel's real channels. The band and the widened weight live
//! in per-thread buffers reused from call to call (no allocation once a
//! thread has run the largest task).

use std::cell::Cell;
use std::ops::Range;

use super::{valid_taps, Depthwise};
use crate::gemm::output::{Epilogue, OutElem};
use crate::gemm::reuse::Reused;

std::thread_local! {
    static BAND: Cell<Vec<i16>> = const { Cell::new(Vec::new()) };
    static WIDE: Cell<Vec<i16>> = const { Cell::new(Vec::new()) };
}

/// Channels of the band: `c` rounded up to a multiple of 8.
#[inline]
pub(crate) fn padded_channels(c: usize) -> usize {
    c.div_ceil(8) * 8
}

/// Padded input columns the output columns read: `(ow-1)·sw + (kw-1)·dw + 1`
/// (at most the padded width, checked by `out_hw`).
#[inline]
pub(crate) fn band_cols(g: &Depthwise, ow: usize) -> usize {
    (ow - 1) * g.stride.1 + (g.kernel.1 - 1) * g.dilation.1 + 1
}

/// Input rows (real ones) that output rows `rows` read.
#[inline]
pub(crate) fn band_rows(g: &Depthwise, rows: &Range<usize>) -> Range<usize> {
    let pt = g.padding[0];
    let py0 = rows.start * g.stride.0;
    let py1 = (rows.end - 1) * g.stride.0 + (g.kernel.0 - 1) * g.dilation.0 + 1;
    py0.saturating_sub(pt).min(g.h)..py1.saturating_sub(pt).min(g.h)
}

/// What one task computes: output rows `rows` of image `img` (`x` that
/// image, `(h, w, c)`), zero point `zp`.
pub struct Task<'a> {
    pub(crate) x: &'a [u8],
    pub(crate) weight: &'a [i8],
    pub(crate) g: &'a Depthwise,
    pub(crate) ow: usize,
    pub(crate) img: usize,
    pub(crate) zp: i16,
    pub(crate) rows: Range<usize>,
}

/// Runs the task; `out` points at output pixel `(img, rows.start, 0)`.
///
/// # Safety
/// `out` must be valid for writes of the task's `rows.len() · ow · c`
/// outputs, which no other thread accesses meanwhile; `ep` prepared for
/// `(n, c)` with `img < n`; the geometry checked (`super::check`).
#[inline(always)]
pub(crate) unsafe fn run_task<T: OutElem>(t: &Task<'_>, ep: &Epilogue<'_, T>, out: *mut T) {
    let cp = padded_channels(t.g.c);
    // The widest block that divides the padded channels.
    if cp % 32 == 0 {
        body::<T, 32>(t, ep, out)
    } else if cp % 16 == 0 {
        body::<T, 16>(t, ep, out)
    } else {
        body::<T, 8>(t, ep, out)
    }
}

/// `acc[j] += x[j] · w[j]`, `i16` lanes widened to `i32` products (LLVM's
/// `pmaddwd` pattern; the product is exact, see the module doc).
#[inline(always)]
fn mac<const CB: usize>(acc: &mut [i32; CB], x: &[i16; CB], w: &[i16; CB]) {
    for j in 0..CB {
        acc[j] += x[j] as i32 * w[j] as i32;
    }
}

#[inline(always)]
unsafe fn body<T: OutElem, const CB: usize>(t: &Task<'_>, ep: &Epilogue<'_, T>, out: *mut T) {
    let g = t.g;
    let (c, w, ow) = (g.c, g.w, t.ow);
    let ((kh, kw), (sh, sw), (dh, dw)) = (g.kernel, g.stride, g.dilation);
    let [pt, pl, _, _] = g.padding;
    let cp = padded_channels(c);
    let wp = band_cols(g, ow);
    let iys = band_rows(g, &t.rows);
    let row_len = wp * cp;

    let mut band = Reused::new(&BAND, iys.len() * row_len, 0i16);
    for (iy, dst) in iys.clone().zip(band.chunks_exact_mut(row_len)) {
        let src = &t.x[iy * w * c..(iy + 1) * w * c];
        // Padded columns `px` with an image column `px - pl` in `0..w`.
        let px0 = pl.min(wp);
        let px1 = (pl + w).min(wp);
        for px in px0..px1 {
            let s = &src[(px - pl) * c..(px - pl + 1) * c];
            let d = &mut dst[px * cp..px * cp + c];
            for (d, &s) in d.iter_mut().zip(s) {
                *d = s as i16 - t.zp;
            }
        }
    }
    let mut wide = Reused::new(&WIDE, kh * kw * cp, 0i16);
    for (d, s) in wide.chunks_exact_mut(cp).zip(t.weight.chunks_exact(c)) {
        for (d, &s) in d.iter_mut().zip(s) {
            *d = s as i16;
        }
    }

    for c0 in (0..cp).step_by(CB) {
        let len = CB.min(c - c0); // c0 < c: cp - c < 8 <= CB
        for (r, oy) in t.rows.clone().enumerate() {
            let kys = valid_taps(oy * sh, pt, g.h, kh, dh);
            // The band row of tap ky (in bounds for the taps in `kys`).
            let brow0 = (oy * sh).wrapping_sub(pt).wrapping_sub(iys.start);
            for ox in 0..ow {
                let mut acc = [0i32; CB];
                for ky in kys.clone() {
                    let xrow = (brow0.wrapping_add(ky * dh)) * row_len + ox * sw * cp + c0;
                    let wrow = ky * kw * cp + c0;
                    for kx in 0..kw {
                        let xo = xrow + kx * dw * cp;
                        let wo = wrow + kx * cp;
                        let (Some(xs), Some(ws)) = (band.get(xo..xo + CB), wide.get(wo..wo + CB))
                        else {
                            continue; // never: the geometry was checked
                        };
                        let (Ok(xs), Ok(ws)) = (xs.try_into(), ws.try_into()) else {
                            continue;
                        };
                        mac::<CB>(&mut acc, xs, ws);
                    }
                }
                // A copy, so the accumulators above stay in registers.
                let sums = acc;
                let px = out.add((r * ow + ox) * c);
                // SAFETY: the pixel's `c` outputs belong to this task (the
                // caller's contract); row stride 0 puts row `img` (its
                // image's parameters) at `px`.
                ep.apply_inline(&sums, CB, t.img..t.img + 1, c0..c0 + len, px, 0);
            }
        }
    }
}
