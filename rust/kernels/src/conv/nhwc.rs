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
    let k = win.c.saturating_mul(win.kh).saturating_mul(win.kw);
    im2col_rows_into(ctx, x, win, pad, k, pad, cols)
}

/// [`im2col_into`] with rows of `row_len >= c·kh·kw` elements, the columns
/// past the unfold holding `tail`: the int8 GEMM reads rows whose length is
/// a multiple of 4 in place, so the convolution unfolds straight into the
/// GEMM's packed A (no second copy). Work is split over output image rows,
/// so one large image uses the whole team.
pub fn im2col_rows_into<T: Copy + Send + Sync>(
    ctx: &Ctx,
    x: &[T],
    win: Window,
    pad: T,
    row_len: usize,
    tail: T,
    cols: &mut [T],
) -> Result<()> {
    let win = win.check()?;
    check_len(x.len(), win.in_len(), "x")?;
    let (rows, k) = win.cols_shape();
    if row_len < k {
        return crate::shape_err!("im2col rows of {row_len} elements cannot hold {k} columns");
    }
    let total = rows
        .checked_mul(row_len)
        .ok_or_else(|| crate::error::Error::Shape("im2col output overflows".into()))?;
    check_len(cols.len(), total, "cols")?;
    let img_len = win.h * win.w * win.c;
    if total == 0 || img_len == 0 {
        cols.fill(pad);
        for r in cols.chunks_exact_mut(row_len.max(1)) {
            r[k..].fill(tail);
        }
        return Ok(());
    }
    // One task per run of output image rows (`lines`) of about TASK_ELEMS elements.
    let (oh, ow) = (win.oh(), win.ow());
    let line = ow * row_len;
    let lines = win.n * oh;
    let per_task = (TASK_ELEMS / line.max(1)).max(1);
    let dst = SyncPtr(cols.as_mut_ptr());
    ctx.for_each_task(total, lines.div_ceil(per_task), |t| {
        for l in t * per_task..((t + 1) * per_task).min(lines) {
            let (img, oy) = (l / oh, l % oh);
            // SAFETY: output line `l` (rows l·ow .. (l+1)·ow) is written by this task alone.
            let out = unsafe { std::slice::from_raw_parts_mut(dst.get().add(l * line), line) };
            let xi = &x[img * img_len..(img + 1) * img_len];
            unfold_line(xi, out, &win, oy, row_len, (pad, tail));
        }
    });
    Ok(())
}

/// The `ow` rows (each `row_len` long) of output image row `oy` from image
/// `x`; `fill` is the padding's value and the row tail's.
fn unfold_line<T: Copy>(
    x: &[T],
    out: &mut [T],
    win: &Window,
    oy: usize,
    row_len: usize,
    fill: (T, T),
) {
    let line = Line::new(win, oy);
    for ox in 0..win.ow() {
        unfold_pixel(
            x,
            &mut out[ox * row_len..(ox + 1) * row_len],
            win,
            &line,
            ox,
            fill,
            copy_run,
        );
    }
}

/// What the pixels of one output image row share: the top input row of
/// their windows, `y0`, and the kernel rows inside the image, `ky0..ky1`.
struct Line {
    y0: isize,
    ky0: usize,
    ky1: usize,
}

impl Line {
    #[inline(always)]
    fn new(win: &Window, oy: usize) -> Line {
        let y0 = (oy * win.sh) as isize - win.ph as isize;
        let ky0 = (-y0).clamp(0, win.kh as isize) as usize;
        let ky1 = (win.h as isize - y0).clamp(ky0 as isize, win.kh as isize) as usize;
        Line { y0, ky0, ky1 }
    }
}

/// One row of the column matrix (`row.len() >= c·kh·kw`): output pixel
/// `(oy, ox)` of image `x` (`line` is `oy`'s), the padding taps holding
/// `fill.0` and the columns past the unfold `fill.1`.
#[inline(always)]
fn unfold_pixel<T: Copy>(
    x: &[T],
    row: &mut [T],
    win: &Window,
    line: &Line,
    ox: usize,
    (pad, tail): (T, T),
    copy_run: impl Fn(&mut [T], &[T]),
) {
    let c = win.c;
    // One kernel row of taps.
    let run = win.kw * c;
    let taps = win.kh * run;
    let Line { y0, ky0, ky1 } = *line;
    let stride = win.w * c;
    fill_run(&mut row[taps..], tail);
    fill_run(&mut row[..ky0 * run], pad);
    fill_run(&mut row[ky1 * run..taps], pad);
    let x0 = (ox * win.sw) as isize - win.pw as isize;
    if x0 >= 0 && x0 as usize + win.kw <= win.w {
        // The common case: every kernel row is one run of the image row.
        // The bounds are checked once for all of them (checked per run, the
        // checks and their address arithmetic were most of the unfold of a
        // stem's 21-byte runs).
        if ky1 > ky0 {
            let first = (y0 + ky0 as isize) as usize * stride + x0 as usize * c;
            let src = &x[first..first + (ky1 - ky0 - 1) * stride + run];
            for (i, d) in row[ky0 * run..ky1 * run].chunks_exact_mut(run).enumerate() {
                // SAFETY: i < ky1 - ky0, so i·stride + run <= src.len().
                copy_run(d, unsafe { src.get_unchecked(i * stride..i * stride + run) });
            }
        }
        return;
    }
    // At the left and right borders the taps kx0..kx1 of each kernel row
    // lie inside the image: one run of the image row, the rest padding
    // (tap by tap, the border pixels' 3-byte runs of a 3-channel stem
    // cost a fifth of its unfold).
    let kx0 = (-x0).clamp(0, win.kw as isize) as usize;
    let kx1 = (win.w as isize - x0).clamp(kx0 as isize, win.kw as isize) as usize;
    let (in0, in1) = (kx0 * c, kx1 * c);
    if in0 == in1 {
        // No tap inside the image (padding wider than the kernel).
        fill_run(&mut row[ky0 * run..ky1 * run], pad);
        return;
    }
    let src = &x[(x0 + kx0 as isize) as usize * c..];
    for ky in ky0..ky1 {
        let iy = (y0 + ky as isize) as usize;
        let r = &mut row[ky * run..(ky + 1) * run];
        fill_run(&mut r[..in0], pad);
        fill_run(&mut r[in1..], pad);
        copy_run(&mut r[in0..in1], &src[iy * stride..][..in1 - in0]);
    }
}

/// The uint8 column matrix of a convolution over NHWC images as a source of
/// rows that are unfolded only where they are read: the int8 GEMM's
/// convolution A ([`crate::gemm::ARows::Conv`]) writes each block of rows it
/// hands a thread into a small buffer of that thread just before the
/// micro-kernel reads them, so no `M × K` matrix goes through memory. The
/// bytes are those of [`im2col_rows_into`] with the same `pad` and a tail
/// of zeros.
#[derive(Debug, Clone, Copy)]
pub struct ConvRows<'a> {
    x: &'a [u8],
    win: Window,
    pad: u8,
}

impl<'a> ConvRows<'a> {
    /// The rows of the unfold of the NHWC images `x` over `win` (checked;
    /// `x` must hold `win.in_len()` bytes); padding taps read `pad` (the
    /// images' zero point).
    pub fn new(x: &'a [u8], win: Window, pad: u8) -> Result<Self> {
        let win = win.check()?;
        check_len(x.len(), win.in_len(), "x")?;
        Ok(ConvRows { x, win, pad })
    }

    /// Rows of the column matrix: `n · oh · ow`.
    pub fn rows(&self) -> usize {
        self.win.cols_shape().0
    }

    /// Columns of the unfold: `c · kh · kw`.
    pub fn taps(&self) -> usize {
        self.win.cols_shape().1
    }

    /// The images themselves when they already are the column matrix with
    /// rows of `k` columns: a 1×1 stride-1 unpadded convolution with
    /// `k == c` (the GEMM then reads them in place).
    pub(crate) fn as_matrix(&self, k: usize) -> Option<&'a [u8]> {
        let w = &self.win;
        let pointwise = (w.kh, w.kw, w.sh, w.sw, w.ph, w.pw) == (1, 1, 1, 1, 0, 0);
        (pointwise && k == w.c).then_some(self.x)
    }

    /// Writes rows `r0..r0 + out.len() / row_len` (`row_len >= taps()`;
    /// every row in range) into `out`, each followed by zeros up to
    /// `row_len`.
    #[inline]
    pub(crate) fn write(&self, r0: usize, row_len: usize, out: &mut [u8]) {
        self.write_with(r0, row_len, out, copy_run)
    }

    /// [`ConvRows::write`] with `copy(dst, src)` (equal lengths) copying
    /// each run of the image: a kernel's copy for its ISA (a masked vector
    /// move per run of up to 64 bytes with AVX-512).
    #[inline(always)]
    pub(crate) fn write_with(
        &self,
        r0: usize,
        row_len: usize,
        out: &mut [u8],
        copy: impl Fn(&mut [u8], &[u8]) + Copy,
    ) {
        let win = &self.win;
        let (oh, ow) = (win.oh(), win.ow());
        let img_len = win.h * win.w * win.c;
        if row_len == 0 || ow == 0 || oh == 0 {
            return;
        }
        let per_img = oh * ow;
        let (mut img, rem) = (r0 / per_img, r0 % per_img);
        let (mut oy, mut ox) = (rem / ow, rem % ow);
        let mut line = Line::new(win, oy);
        for row in out.chunks_exact_mut(row_len) {
            let xi = &self.x[img * img_len..(img + 1) * img_len];
            unfold_pixel(xi, row, win, &line, ox, (self.pad, 0), copy);
            ox += 1;
            if ox == ow {
                ox = 0;
                oy += 1;
                if oy == oh {
                    oy = 0;
                    img += 1;
                }
                line = Line::new(win, oy);
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for the short runs of an unfold (a few to a
/// few hundred elements): moves of a fixed size, the last one overlapping
/// the run's end, instead of a call to `memmove` per run (which cost more
/// than the GEMM for the 3-byte runs of a one-channel 3×3 convolution).
/// The sizes are constants in the code: spelled as a loop over sizes, the
/// compiler kept the size in a register and called `memcpy` for each move
/// (the unfold of resnet18's stem then took as long as its GEMM).
#[inline(always)]
pub(crate) fn copy_run<T: Copy>(dst: &mut [T], src: &[T]) {
    let len = dst.len().min(src.len());
    let n = len * std::mem::size_of::<T>();
    // SAFETY: both slices hold `len` elements (`n` bytes) and do not
    // overlap (one is borrowed mutably); T is Copy, so bytes copy it.
    unsafe { copy_bytes(dst.as_mut_ptr() as *mut u8, src.as_ptr() as *const u8, n) }
}

/// `N` bytes from `s` to `d`, unaligned.
#[inline(always)]
unsafe fn move_n<const N: usize>(d: *mut u8, s: *const u8) {
    (d as *mut [u8; N]).write_unaligned((s as *const [u8; N]).read_unaligned())
}

/// `n` bytes from `s` to `d` (not overlapping): whole 32-byte moves and one
/// overlapping the end, or two overlapping moves of 16, 8 or 4 bytes, or
/// three single bytes (some the same one) below 4.
#[inline(always)]
unsafe fn copy_bytes(d: *mut u8, s: *const u8, n: usize) {
    if n >= 32 {
        let mut i = 0;
        while i + 32 <= n {
            move_n::<32>(d.add(i), s.add(i));
            i += 32;
        }
        if i < n {
            move_n::<32>(d.add(n - 32), s.add(n - 32));
        }
    } else if n >= 16 {
        move_n::<16>(d, s);
        move_n::<16>(d.add(n - 16), s.add(n - 16));
    } else if n >= 8 {
        move_n::<8>(d, s);
        move_n::<8>(d.add(n - 8), s.add(n - 8));
    } else if n >= 4 {
        move_n::<4>(d, s);
        move_n::<4>(d.add(n - 4), s.add(n - 4));
    } else if n > 0 {
        *d = *s;
        *d.add(n / 2) = *s.add(n / 2);
        *d.add(n - 1) = *s.add(n - 1);
    }
}

/// `dst.fill(v)`, without a call to memset for the few elements of a short
/// padding run or row tail.
#[inline(always)]
fn fill_run<T: Copy>(dst: &mut [T], v: T) {
    match dst {
        [] => {}
        [d0] => *d0 = v,
        [d0, d1] => (*d0, *d1) = (v, v),
        [d0, d1, d2] => (*d0, *d1, *d2) = (v, v, v),
        _ => dst.fill(v),
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

    /// The NHWC column matrix of NHWC `x` by way of the NCHW unfold (an
    /// independent implementation), its columns reordered.
    fn nchw_reference<T: Copy + Send + Sync + Default>(x: &[T], win: Window, pad: T) -> Vec<T> {
        let (n, c, h, w) = (win.n, win.c, win.h, win.w);
        let mut nchw = vec![T::default(); x.len()];
        for i in 0..n {
            for p in 0..h * w {
                for ci in 0..c {
                    nchw[(i * c + ci) * h * w + p] = x[(i * h * w + p) * c + ci];
                }
            }
        }
        let cols = crate::conv::im2col(&crate::exec::TEST, &nchw, win, pad).unwrap();
        let (rows, kk) = win.check().unwrap().cols_shape();
        let mut out = vec![T::default(); cols.len()];
        for r in 0..rows {
            for ci in 0..c {
                for t in 0..win.kh * win.kw {
                    out[r * kk + t * c + ci] = cols[r * kk + ci * win.kh * win.kw + t];
                }
            }
        }
        out
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
    fn padded_rows_hold_the_unfold_then_the_tail() {
        // Runs of kw·c bytes from 1 to 99 (every move size of `copy_run`),
        // borders, strides; the last case is big enough to be split over the team.
        let mut cases = vec![];
        for c in [1, 2, 3, 4, 5, 7, 11, 33] {
            for (k, s, p) in [
                ((3, 3), (1, 1), (1, 1)),
                ((1, 3), (2, 1), (0, 2)),
                ((2, 2), (2, 2), (0, 0)),
            ] {
                cases.push((2, c, 5, 6, k, s, p));
            }
        }
        // Padding wider than the kernel: border windows with no image tap.
        cases.push((2, 3, 4, 5, (2, 2), (1, 1), (2, 3)));
        cases.push((1, 3, 61, 58, (7, 7), (2, 2), (3, 3)));
        for (n, c, h, w, k, s, p) in cases {
            let win = Window::new(n, c, h, w, k, s, p);
            let x: Vec<u8> = (0..n * c * h * w).map(|i| (i * 7 % 251) as u8).collect();
            let want = nchw_reference(&x, win, 200u8);
            assert_eq!(im2col(&crate::exec::TEST, &x, win, 200u8).unwrap(), want);
            let (rows, kk) = win.check().unwrap().cols_shape();
            for extra in [0, 1, 3] {
                let len = kk + extra;
                let mut got = vec![9u8; rows * len];
                im2col_rows_into(&crate::exec::TEST, &x, win, 200, len, 0xEE, &mut got).unwrap();
                for r in 0..rows {
                    assert_eq!(
                        &got[r * len..r * len + kk],
                        &want[r * kk..(r + 1) * kk],
                        "{win:?} row {r}"
                    );
                    assert!(
                        got[r * len + kk..(r + 1) * len].iter().all(|&v| v == 0xEE),
                        "{win:?} tail {r}"
                    );
                }
            }
            let mut short = vec![0u8; rows * (kk - 1)];
            assert!(
                im2col_rows_into(&crate::exec::TEST, &x, win, 0, kk - 1, 0, &mut short).is_err()
            );
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
