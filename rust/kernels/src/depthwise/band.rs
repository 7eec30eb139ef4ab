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
//! The band stores pairs of horizontal taps side by side (column `p` holds
//! `(v(p), v(p + dw))` per channel) and the weight is widened to `i16` in
//! the same pairs (0 past the kernel's width and for the padded channels),
//! so two taps of 8-32 channels are one `pmaddwd` over `i16` lanes into
//! `i32` (`|x - zp| <= 255`, `|w| <= 128`: exact), then the shared output
//! step for the pixel's real channels. The band and the widened weight (made
//! once per call, [`widen`], unless the caller holds it: [`super::Wide`])
//! live in per-thread buffers reused from call to call (no allocation once
//! a thread has run the largest task); the band is written whole each time
//! (padding included), never cleared first.

use std::cell::Cell;
use std::ops::Range;

use super::{valid_taps, Depthwise};
use crate::gemm::output::{Epilogue, OutElem};
use crate::gemm::reuse::Reused;

std::thread_local! {
    static BAND: Cell<Vec<i16>> = const { Cell::new(Vec::new()) };
    static WIDE: Cell<Vec<i16>> = const { Cell::new(Vec::new()) };
    static TAPS: Cell<Vec<(usize, usize)>> = const { Cell::new(Vec::new()) };
    static SUMS: Cell<Vec<i32>> = const { Cell::new(Vec::new()) };
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
    /// The weight in tap pairs ([`widen`]).
    pub(crate) wide: &'a [i16],
    pub(crate) g: &'a Depthwise,
    pub(crate) ow: usize,
    pub(crate) img: usize,
    pub(crate) zp: i16,
    pub(crate) rows: Range<usize>,
}

/// The weight `(kh, kw, c)` as `i16` tap pairs, `(kh, ceil(kw/2), cp, 2)`:
/// `(w[ky][2i][ch], w[ky][2i + 1][ch])`, 0 past `kw` and for the padded
/// channels. Made once per call (in a per-thread buffer) and shared by its
/// tasks, unless the caller holds it already ([`super::Wide`]).
pub(crate) fn widen(weight: &[i8], g: &Depthwise) -> Reused<i16> {
    let (c, kw) = (g.c, g.kernel.1);
    let (cp, kp) = (padded_channels(c), kw.div_ceil(2));
    let mut wide = Reused::new(&WIDE, g.kernel.0 * kp * cp * 2, 0i16);
    widen_into(weight, g.kernel, c, &mut wide);
    wide
}

/// [`widen`] into `wide` (its `kh · ceil(kw/2) · cp · 2` elements all 0).
pub(crate) fn widen_into(weight: &[i8], kernel: (usize, usize), c: usize, wide: &mut [i16]) {
    let kw = kernel.1;
    let (cp, kp) = (padded_channels(c), kw.div_ceil(2));
    for (tap, s) in weight.chunks_exact(c.max(1)).enumerate() {
        let (ky, kx) = (tap / kw, tap % kw);
        let o = (ky * kp + kx / 2) * cp * 2 + kx % 2;
        for (d, &s) in wide[o..].iter_mut().step_by(2).zip(s) {
            *d = s as i16;
        }
    }
}

/// Runs the task; `out` points at output pixel `(img, rows.start, 0)`.
///
/// # Safety
/// `out` must be valid for writes of the task's `rows.len() · ow · c`
/// outputs, which no other thread accesses meanwhile; `ep` prepared for
/// `(n, c)` with `img < n`; the geometry checked (`super::check`).
#[inline(always)]
pub(crate) unsafe fn run_task<T: OutElem, M: Madd>(
    t: &Task<'_>,
    ep: &Epilogue<'_, T>,
    out: *mut T,
) {
    let cp = padded_channels(t.g.c);
    // The widest block that divides the padded channels.
    if cp % 32 == 0 {
        body::<T, M, 32, 64>(t, ep, out)
    } else if cp % 16 == 0 {
        body::<T, M, 16, 32>(t, ep, out)
    } else {
        body::<T, M, 8, 16>(t, ep, out)
    }
}

/// The pair product of the body: `acc[j] += x[2j]·w[2j] + x[2j+1]·w[2j+1]`
/// for `j < CB` (`CB2 = 2·CB`), two taps of channel `j`; each product is
/// exact (see the module doc). `pmaddwd` on x86 (`arch/`: LLVM does not
/// find it in the portable loop), fused with the add (`vpdpwssd`) on VNNI.
pub trait Madd {
    /// # Safety
    /// Only called from a body compiled with the implementation's features.
    unsafe fn mac2<const CB: usize, const CB2: usize>(
        acc: &mut [i32; CB],
        x: &[i16; CB2],
        w: &[i16; CB2],
    );
}

/// The portable pair product.
pub struct Portable;
impl Madd for Portable {
    #[inline(always)]
    unsafe fn mac2<const CB: usize, const CB2: usize>(
        acc: &mut [i32; CB],
        x: &[i16; CB2],
        w: &[i16; CB2],
    ) {
        for j in 0..CB {
            acc[j] += x[2 * j] as i32 * w[2 * j] as i32 + x[2 * j + 1] as i32 * w[2 * j + 1] as i32;
        }
    }
}

#[inline(always)]
unsafe fn body<T: OutElem, M: Madd, const CB: usize, const CB2: usize>(
    t: &Task<'_>,
    ep: &Epilogue<'_, T>,
    out: *mut T,
) {
    let g = t.g;
    let (c, w, ow) = (g.c, g.w, t.ow);
    let ((kh, kw), (sh, sw), (dh, dw)) = (g.kernel, g.stride, g.dilation);
    let [pt, pl, _, _] = g.padding;
    let cp = padded_channels(c);
    let wp = band_cols(g, ow);
    let iys = band_rows(g, &t.rows);
    // Pairs of horizontal taps `(kx, kx + 1)`: the band holds, for padded
    // column `p` and channel `ch`, the pair `(v(p), v(p + dw))` side by side.
    let kp = kw.div_ceil(2);
    let row_len = wp * cp * 2;

    // Every element is written below (the padding as 0), so the buffer's
    // old contents are not cleared first.
    let len = iys.len() * row_len;
    let mut band = Reused::try_stale(&BAND, len, "the depthwise band")
        .unwrap_or_else(|_| Reused::new(&BAND, len, 0i16));
    let zp = t.zp;
    for (iy, dst) in iys.clone().zip(band.chunks_exact_mut(row_len)) {
        let src = &t.x[iy * w * c..(iy + 1) * w * c];
        // The image column of padded column `p`, if it is one.
        let col = |p: usize| {
            let ix = p.wrapping_sub(pl);
            (ix < w).then(|| &src[ix * c..(ix + 1) * c])
        };
        // The columns whose pair is two image columns, `[pl, pl + w - dw)`:
        // with no padded channels their pairs are one contiguous run, filled
        // by one loop (per column, the loop's setup and the padding's fill
        // cost more than the copy for a few dozen channels).
        let inner = if cp == c {
            pl.min(wp)..(pl + w.saturating_sub(dw)).clamp(pl.min(wp), wp)
        } else {
            0..0
        };
        if !inner.is_empty() {
            let ix = inner.start - pl;
            let n = inner.len() * c;
            let (d, _) = dst[inner.start * c * 2..inner.end * c * 2].as_chunks_mut::<2>();
            let (a, b) = (
                &src[ix * c..ix * c + n],
                &src[(ix + dw) * c..(ix + dw) * c + n],
            );
            for ((d, &a), &b) in d.iter_mut().zip(a).zip(b) {
                *d = [a as i16 - zp, b as i16 - zp];
            }
        }
        let edges = (0..inner.start).chain(inner.end..wp);
        for p in edges {
            let dst = &mut dst[p * cp * 2..(p + 1) * cp * 2];
            let (real, pad) = dst.split_at_mut(c * 2);
            if !pad.is_empty() {
                pad.fill(0);
            }
            let (d, _) = real.as_chunks_mut::<2>();
            // Each case one branch-free loop over the channels (it vectorises).
            match (col(p), col(p + dw)) {
                (Some(a), Some(b)) => {
                    for ((d, &a), &b) in d.iter_mut().zip(a).zip(b) {
                        *d = [a as i16 - zp, b as i16 - zp];
                    }
                }
                (Some(a), None) => {
                    for (d, &a) in d.iter_mut().zip(a) {
                        *d = [a as i16 - zp, 0];
                    }
                }
                (None, Some(b)) => {
                    for (d, &b) in d.iter_mut().zip(b) {
                        *d = [0, b as i16 - zp];
                    }
                }
                (None, None) => real.fill(0),
            }
        }
    }
    let wide = t.wide;
    // The in-bounds taps of the current output row as offsets into the
    // band (from its pixel at column 0, channel 0) and into the weight, so
    // the pixel loop below is one short loop of two adds per tap pair.
    let mut taps = Reused::new(&TAPS, kh * kp, (0usize, 0usize));
    // A pixel's sums, every channel block's: the output step then runs once
    // per pixel over all its channels, not once per block (its setup per
    // call cost about as much as a block's requantization).
    let mut sums = Reused::new(&SUMS, cp, 0i32);
    for (r, oy) in t.rows.clone().enumerate() {
        let kys = valid_taps(oy * sh, pt, g.h, kh, dh);
        // The band row of tap ky (in bounds for the taps in `kys`).
        let brow0 = (oy * sh).wrapping_sub(pt).wrapping_sub(iys.start);
        let mut n_taps = 0;
        for ky in kys {
            let xrow = brow0.wrapping_add(ky * dh) * row_len;
            for i in 0..kp {
                taps[n_taps] = (xrow + i * 2 * dw * cp * 2, (ky * kp + i) * cp * 2);
                n_taps += 1;
            }
        }
        let taps = &taps[..n_taps];
        // Every read of this row in bounds (the furthest tap at the last
        // pixel and channel block)? Always, as the geometry was checked;
        // the pixel loop then reads without a check per tap.
        let (xmax, wmax) = taps
            .iter()
            .fold((0, 0), |(x, w), &(xo, wo)| (x.max(xo), w.max(wo)));
        let last = (cp - CB) * 2 + CB2;
        let fits = xmax + (ow - 1) * sw * cp * 2 + last <= band.len() && wmax + last <= wide.len();
        for ox in 0..ow {
            for c0 in (0..cp).step_by(CB) {
                let xb = (ox * sw * cp + c0) * 2;
                let mut acc = [0i32; CB];
                for &(xo, wo) in taps {
                    let (xo, wo) = (xo + xb, wo + c0 * 2);
                    if fits {
                        // SAFETY: `xo + CB2 <= band.len()` and `wo + CB2 <=
                        // wide.len()` (`fits`: `xo <= xmax + (ow-1)·sw·cp·2 +
                        // (cp-CB)·2`, likewise `wo`).
                        let (xs, ws) = unsafe {
                            (
                                &*(band.as_ptr().add(xo) as *const [i16; CB2]),
                                &*(wide.as_ptr().add(wo) as *const [i16; CB2]),
                            )
                        };
                        M::mac2::<CB, CB2>(&mut acc, xs, ws);
                        continue;
                    }
                    let (Some(xs), Some(ws)) = (band.get(xo..xo + CB2), wide.get(wo..wo + CB2))
                    else {
                        continue; // never: the geometry was checked
                    };
                    let (Ok(xs), Ok(ws)) = (xs.try_into(), ws.try_into()) else {
                        continue;
                    };
                    M::mac2::<CB, CB2>(&mut acc, xs, ws);
                }
                // A copy, so the accumulators above stay in registers.
                sums[c0..c0 + CB].copy_from_slice(&acc);
            }
            let px = out.add((r * ow + ox) * c);
            // SAFETY: the pixel's `c` outputs belong to this task (the
            // caller's contract); row stride 0 puts row `img` (its image's
            // parameters) at `px`.
            ep.apply_inline(&sums, cp, t.img..t.img + 1, 0..c, px, 0);
        }
    }
}
