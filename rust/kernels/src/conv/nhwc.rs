//! Channels-last (NHWC) kernels for the int8 runtime's convolutions.
//!
//! The runtime keeps activations between convolutions in `(n, h, w, c)`
//! order: the int8 GEMM of an im2col convolution produces exactly that (one
//! row per output pixel, one column per output channel), and in that order a
//! kernel row of the input, `kw` pixels × `c` channels, is one contiguous run
//! of bytes. So [`im2col`] copies `kh` runs per output pixel instead of
//! `c · kh` runs of `kw` elements (the NCHW unfold in [`super::nchw`]), and
//! pooling reduces whole channel vectors. The column matrix is
//!
//! ```text
//! cols[(img * oh + oy) * ow + ox, (ky * kw + kx) * c + ci]
//!     = x[img, oy * sh + ky - ph, ox * sw + kx - pw, ci]   (or `pad` outside)
//! ```
//!
//! which multiplies a weight stored `(out, kh, kw, c)`, the NCHW weight
//! `(out, c, kh, kw)` with its axes moved.
//!
//! [`Window`] describes the geometry as for NCHW (`n, c, h, w`); only the
//! memory order differs. Work is split over images on the [`crate::exec::team`].

use super::{check_len, unfold_buffer, Window};
use crate::error::Result;
use crate::exec::{Ctx, SyncPtr};

/// Pooling reductions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Padding counts as -inf; NaN propagates (PyTorch `max_pool2d`).
    Max,
    /// Divides by `kh · kw` (PyTorch `avg_pool2d`, `count_include_pad=True`).
    Avg,
}

/// Output elements handed to one task (whole images).
const TASK_ELEMS: usize = 1 << 15;

/// Runs `f(image)` for every image, spread over the team when the output is big.
fn per_image(ctx: &Ctx, images: usize, out_per_image: usize, f: impl Fn(usize) + Sync) {
    let total = images.saturating_mul(out_per_image);
    let per_task = (TASK_ELEMS / out_per_image.max(1)).max(1);
    let tasks = images.div_ceil(per_task);
    ctx.for_each_task(total, tasks, |t| {
        (t * per_task..((t + 1) * per_task).min(images)).for_each(&f)
    });
}

/// Unfolds NHWC `x` into the column matrix of the module docs; taps in the
/// padding hold `pad` (the zero point, for uint8 activations).
pub fn im2col<T: Copy + Send + Sync>(ctx: &Ctx, x: &[T], win: Window, pad: T) -> Result<Vec<T>> {
    let (win, mut cols) = unfold_buffer(x.len(), win, pad)?;
    im2col_into(ctx, x, win, pad, &mut cols)?;
    Ok(cols)
}

/// [`im2col`] into a caller's buffer of exactly `rows · cols` elements (the
/// graph plan's reused scratch); every element is written.
pub fn im2col_into<T: Copy + Send + Sync>(
    ctx: &Ctx,
    x: &[T],
    win: Window,
    pad: T,
    cols: &mut [T],
) -> Result<()> {
    let win = win.check()?;
    check_len(x.len(), win.in_len(), "x")?;
    let (rows, k) = win.cols_shape();
    let total = rows
        .checked_mul(k)
        .ok_or_else(|| crate::error::Error::Shape("im2col output overflows".into()))?;
    check_len(cols.len(), total, "cols")?;
    let per_img = win.oh() * win.ow() * win.cols_shape().1;
    let img_len = win.h * win.w * win.c;
    if total > 0 && img_len > 0 {
        let dst = SyncPtr(cols.as_mut_ptr());
        per_image(ctx, win.n, per_img, |img| {
            // SAFETY: image `img` owns rows img·oh·ow .. (img+1)·oh·ow of `cols`,
            // written by this call alone.
            let out =
                unsafe { std::slice::from_raw_parts_mut(dst.get().add(img * per_img), per_img) };
            unfold_image(&x[img * img_len..(img + 1) * img_len], out, &win, pad);
        });
    } else {
        cols.fill(pad);
    }
    Ok(())
}

fn unfold_image<T: Copy>(x: &[T], cols: &mut [T], win: &Window, pad: T) {
    let (oh, ow, c) = (win.oh(), win.ow(), win.c);
    // One kernel row of taps; `cols` holds oh·ow rows of kh runs (the window was checked).
    let run = win.kw * c;
    let rows = cols.chunks_exact_mut(win.kh * run).take(oh * ow);
    // Output pixels in order, without a division per pixel.
    let pixels = (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy, ox)));
    for ((oy, ox), row) in pixels.zip(rows) {
        let x0 = (ox * win.sw) as isize - win.pw as isize;
        let inside = x0 >= 0 && x0 as usize + win.kw <= win.w;
        for (ky, seg) in row.chunks_exact_mut(run).enumerate() {
            let iy = (oy * win.sh + ky) as isize - win.ph as isize;
            if iy < 0 || iy as usize >= win.h {
                seg.fill(pad);
                continue;
            }
            let line = &x[iy as usize * win.w * c..(iy as usize + 1) * win.w * c];
            if inside {
                seg.copy_from_slice(&line[x0 as usize * c..x0 as usize * c + run]);
            } else {
                for (kx, px) in seg.chunks_exact_mut(c).enumerate() {
                    let ix = x0 + kx as isize;
                    if ix < 0 || ix as usize >= win.w {
                        px.fill(pad);
                    } else {
                        px.copy_from_slice(&line[ix as usize * c..(ix as usize + 1) * c]);
                    }
                }
            }
        }
    }
}

/// 2-D pooling of NHWC `x` into NHWC `(n, oh, ow, c)`.
pub fn pool2d(ctx: &Ctx, x: &[f32], win: Window, kind: Pool) -> Result<Vec<f32>> {
    let win = win.check_pool()?;
    let mut out = crate::error::try_vec(win.out_len(), 0f32, "the pooled output")?;
    pool2d_into(ctx, x, win, kind, &mut out)?;
    Ok(out)
}

/// [`pool2d`] into a caller's buffer of exactly `n · oh · ow · c` elements.
pub fn pool2d_into(ctx: &Ctx, x: &[f32], win: Window, kind: Pool, out: &mut [f32]) -> Result<()> {
    let win = win.check_pool()?;
    check_len(x.len(), win.in_len(), "x")?;
    check_len(out.len(), win.out_len(), "out")?;
    let (oh, ow, c) = (win.oh(), win.ow(), win.c);
    let per_img = oh * ow * c;
    let img_len = win.h * win.w * c;
    if per_img == 0 || img_len == 0 {
        out.fill(0.0);
        return Ok(());
    }
    let dst = SyncPtr(out.as_mut_ptr());
    per_image(ctx, win.n, per_img.saturating_mul(win.kh * win.kw), |img| {
        // SAFETY: image `img` owns its `per_img` outputs, written by this call alone.
        let o = unsafe { std::slice::from_raw_parts_mut(dst.get().add(img * per_img), per_img) };
        pool_image(&x[img * img_len..(img + 1) * img_len], o, &win, kind);
    });
    Ok(())
}

fn pool_image(x: &[f32], out: &mut [f32], win: &Window, kind: Pool) {
    let (oh, ow, c) = (win.oh(), win.ow(), win.c);
    let inv = 1.0 / (win.kh * win.kw) as f32;
    for oy in 0..oh {
        for ox in 0..ow {
            let o = &mut out[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
            o.fill(if kind == Pool::Max {
                f32::NEG_INFINITY
            } else {
                0.0
            });
            win.for_each_tap(oy, ox, |p| {
                let px = &x[p * c..][..c];
                match kind {
                    Pool::Max => max_into(o, px),
                    Pool::Avg => o.iter_mut().zip(px).for_each(|(s, &v)| *s += v),
                }
            });
            if kind == Pool::Avg {
                o.iter_mut().for_each(|s| *s *= inv);
            }
        }
    }
}

/// Channels a uint8 max pool keeps in registers at once (one zmm).
const POOL_LANES: usize = 64;

/// Max pooling of whole output rows `oy0..` of one NHWC uint8 image `x`
/// into `out` (`ow · c` bytes a row): for each block of 64 channels, the
/// max over the window's taps in a fixed-size accumulator, which the
/// per-ISA wrappers (`nnops::arch`) compile to one zmm (two ymm, four xmm)
/// an instruction; the channels past the last whole block as a plain loop.
/// Max pooling commutes with a monotone quantizer, so these are the bytes
/// of quantizing the float pool. A window without an image pixel (which
/// `check_pool` rules out) gives 0.
#[inline(always)]
pub(crate) fn max_pool_u8_rows(x: &[u8], out: &mut [u8], win: &Window, oy0: usize) {
    let (ow, c) = (win.ow(), win.c);
    if ow == 0 || c == 0 {
        return;
    }
    let whole = c - c % POOL_LANES;
    for (r, row) in out.chunks_exact_mut(ow * c).enumerate() {
        for (ox, o) in row.chunks_exact_mut(c).enumerate() {
            let (blocks, tail) = o.split_at_mut(whole);
            for (b, ob) in blocks.chunks_exact_mut(POOL_LANES).enumerate() {
                let mut acc = [0u8; POOL_LANES];
                win.for_each_tap(oy0 + r, ox, |p| {
                    let px = &x[p * c + b * POOL_LANES..][..POOL_LANES];
                    for (m, &v) in acc.iter_mut().zip(px) {
                        *m = (*m).max(v);
                    }
                });
                ob.copy_from_slice(&acc);
            }
            if !tail.is_empty() {
                tail.fill(0);
                win.for_each_tap(oy0 + r, ox, |p| {
                    let px = &x[p * c + whole..][..tail.len()];
                    tail.iter_mut().zip(px).for_each(|(m, &v)| *m = (*m).max(v));
                });
            }
        }
    }
}

/// `o[i] = max(o[i], px[i])` with NaN winning and sticking (`v > m` is
/// false for NaN, so NaN is tested for). Branch-free, so that it vectorizes:
/// the branchy form mispredicted on half the channels and made a 2×2 max
/// pool of 64 small images cost more than both convolutions before it.
#[inline]
fn max_into(o: &mut [f32], px: &[f32]) {
    for (m, &v) in o.iter_mut().zip(px) {
        let take = (v > *m) | (v.is_nan() & !m.is_nan());
        *m = if take { v } else { *m };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NCHW → NHWC.
    fn to_nhwc(x: &[f32], n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
        let mut y = vec![0.0; x.len()];
        for i in 0..n {
            for ci in 0..c {
                for yy in 0..h {
                    for xx in 0..w {
                        y[((i * h + yy) * w + xx) * c + ci] = x[((i * c + ci) * h + yy) * w + xx];
                    }
                }
            }
        }
        y
    }

    #[test]
    fn im2col_matches_the_nchw_unfold_with_columns_reordered() {
        for (n, c, h, w, k, s, p) in [
            (2, 3, 5, 6, (3, 3), (1, 1), (1, 1)),
            (1, 1, 4, 4, (2, 3), (2, 1), (0, 1)),
            (3, 4, 7, 5, (3, 2), (2, 3), (1, 0)),
            (1, 2, 3, 3, (3, 3), (1, 1), (2, 2)),
        ] {
            let wn = Window::new(n, c, h, w, k, s, p);
            let x: Vec<f32> = (0..n * c * h * w).map(|i| i as f32 + 1.0).collect();
            let want = crate::conv::im2col(&crate::exec::TEST, &x, wn, -7.0).unwrap();
            let got = im2col(&crate::exec::TEST, &to_nhwc(&x, n, c, h, w), wn, -7.0).unwrap();
            let (rows, kk) = wn.check().unwrap().cols_shape();
            assert_eq!(got.len(), rows * kk);
            for r in 0..rows {
                for ci in 0..c {
                    for ky in 0..k.0 {
                        for kx in 0..k.1 {
                            let a = want[r * kk + (ci * k.0 + ky) * k.1 + kx];
                            let b = got[r * kk + (ky * k.1 + kx) * c + ci];
                            assert_eq!(a, b, "{wn:?} row {r} tap ({ci},{ky},{kx})");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn pooling_matches_nchw_pooling() {
        for (n, c, h, w, k, s, p) in [
            (2, 3, 6, 6, (2, 2), (2, 2), (0, 0)),
            (1, 5, 7, 5, (3, 3), (2, 1), (1, 1)),
        ] {
            let wn = Window::new(n, c, h, w, k, s, p);
            let mut x: Vec<f32> = (0..n * c * h * w)
                .map(|i| ((i * 37) % 23) as f32 - 11.0)
                .collect();
            x[5] = f32::NAN;
            let (oh, ow) = (wn.oh(), wn.ow());
            let nhwc = to_nhwc(&x, n, c, h, w);
            let (max_want, _) = crate::conv::max_pool2d(&crate::exec::TEST, &x, wn).unwrap();
            let avg_want = crate::conv::avg_pool2d(&crate::exec::TEST, &x, wn).unwrap();
            let max_got = pool2d(&crate::exec::TEST, &nhwc, wn, Pool::Max).unwrap();
            let avg_got = pool2d(&crate::exec::TEST, &nhwc, wn, Pool::Avg).unwrap();
            let to = |v: &[f32]| to_nhwc(v, n, c, oh, ow);
            let same = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .all(|(x, y)| x == y || (x.is_nan() && y.is_nan()))
            };
            assert!(same(&to(&max_want), &max_got), "max {wn:?}");
            assert!(same(&to(&avg_want), &avg_got), "avg {wn:?}");
        }
    }

    #[test]
    fn bad_geometry_is_an_error() {
        assert!(im2col(
            &crate::exec::TEST,
            &[0u8; 4],
            Window::new(1, 1, 2, 2, (3, 3), (1, 1), (0, 0)),
            0
        )
        .is_err());
        assert!(im2col(
            &crate::exec::TEST,
            &[0u8; 3],
            Window::new(1, 1, 2, 2, (1, 1), (1, 1), (0, 0)),
            0
        )
        .is_err());
        assert!(pool2d(
            &crate::exec::TEST,
            &[0.0; 4],
            Window::new(1, 1, 2, 2, (2, 2), (1, 1), (2, 2)),
            Pool::Max
        )
        .is_err());
    }
}
