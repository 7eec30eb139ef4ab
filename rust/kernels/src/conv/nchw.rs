//! NCHW convolution building blocks: im2col / col2im and 2-D pooling.
//!
//! Layouts follow PyTorch: activations are `(n, c, h, w)` row-major. The
//! column matrix of [`im2col`] has one *row per output pixel* and one column
//! per `(channel, ky, kx)` tap:
//!
//! ```text
//! cols[(img * oh + oy) * ow + ox, (ci * kh + ky) * kw + kx]
//!     = x[img, ci, oy * sh + ky - ph, ox * sw + kx - pw]   (or `pad` outside)
//! ```
//!
//! so a convolution with weight `(out, c, kh, kw)` is one GEMM
//! `cols (n·oh·ow, c·kh·kw) × Wᵀ (c·kh·kw, out)`. `im2col` is generic over the
//! element type (f32 for training, u8 / i8 for the integer convolution, where
//! `pad` is the zero point). Work is split over images in the library pool
//! when it is large enough (see [`crate::exec`]).

use super::{check_len, unfold_buffer, Window};
use crate::error::{try_vec, Result};
use crate::exec::{self, Ctx, SyncPtr};

/// Unfolds `x` (NCHW) into the column matrix described in the module docs.
/// Positions in the padding take the value `pad`.
pub fn im2col<T: Copy + Send + Sync>(ctx: &Ctx, x: &[T], win: Window, pad: T) -> Result<Vec<T>> {
    let (win, mut cols) = unfold_buffer(x.len(), win, pad)?;
    let total = cols.len();
    let per_img = win.oh() * win.ow() * win.cols_shape().1;
    let img_len = win.c * win.h * win.w;
    if per_img == 0 || img_len == 0 {
        return Ok(cols);
    }
    ctx.run(total, || {
        exec::for_each_chunk_mut(&mut cols, per_img, |i, dst| {
            im2col_image(&x[i * img_len..(i + 1) * img_len], dst, &win)
        })
    });
    Ok(cols)
}

fn im2col_image<T: Copy>(x: &[T], cols: &mut [T], win: &Window) {
    let (oh, ow) = (win.oh(), win.ow());
    let k = win.c * win.kh * win.kw;
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &mut cols[(oy * ow + ox) * k..(oy * ow + ox + 1) * k];
            let mut j = 0;
            for ci in 0..win.c {
                let plane = &x[ci * win.h * win.w..(ci + 1) * win.h * win.w];
                for ky in 0..win.kh {
                    // a kernel row in the padding stays `pad`
                    if let Some(iy) = Window::src(oy, ky, win.sh, win.ph, win.h) {
                        let line = &plane[iy * win.w..(iy + 1) * win.w];
                        let x0 = ox * win.sw;
                        if x0 >= win.pw && x0 - win.pw + win.kw <= win.w {
                            // the kernel row lies inside the image: one contiguous copy
                            row[j..j + win.kw]
                                .copy_from_slice(&line[x0 - win.pw..x0 - win.pw + win.kw]);
                        } else {
                            for kx in 0..win.kw {
                                if let Some(ix) = Window::src(ox, kx, win.sw, win.pw, win.w) {
                                    row[j + kx] = line[ix];
                                }
                            }
                        }
                    }
                    j += win.kw;
                }
            }
        }
    }
}

/// Element types that [`col2im`] can accumulate.
pub trait Accumulate: Copy + Send + Sync + Default + std::ops::AddAssign {}
impl Accumulate for f32 {}
impl Accumulate for f64 {}
impl Accumulate for i32 {}

/// The adjoint of [`im2col`]: sums every column entry back into the input
/// position it was read from (padding entries are dropped). This is the
/// gradient of a convolution with respect to its input.
pub fn col2im<T: Accumulate>(ctx: &Ctx, cols: &[T], win: Window) -> Result<Vec<T>> {
    let win = win.check()?;
    let (rows, k) = win.cols_shape();
    check_len(cols.len(), rows * k, "cols")?;
    let mut x = try_vec(win.in_len(), T::default(), "the col2im image")?;
    let per_img = win.oh() * win.ow() * k;
    let img_len = win.c * win.h * win.w;
    if per_img == 0 || img_len == 0 {
        return Ok(x);
    }
    ctx.run(rows.saturating_mul(k), || {
        exec::for_each_chunk_mut(&mut x, img_len, |i, dst| {
            col2im_image(&cols[i * per_img..(i + 1) * per_img], dst, &win)
        })
    });
    Ok(x)
}

fn col2im_image<T: Accumulate>(cols: &[T], x: &mut [T], win: &Window) {
    let (oh, ow) = (win.oh(), win.ow());
    let k = win.c * win.kh * win.kw;
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &cols[(oy * ow + ox) * k..(oy * ow + ox + 1) * k];
            let mut j = 0;
            for ci in 0..win.c {
                let plane = &mut x[ci * win.h * win.w..(ci + 1) * win.h * win.w];
                for ky in 0..win.kh {
                    if let Some(iy) = Window::src(oy, ky, win.sh, win.ph, win.h) {
                        let line = &mut plane[iy * win.w..(iy + 1) * win.w];
                        let x0 = ox * win.sw;
                        if x0 >= win.pw && x0 - win.pw + win.kw <= win.w {
                            let dst = &mut line[x0 - win.pw..x0 - win.pw + win.kw];
                            for (d, &s) in dst.iter_mut().zip(&row[j..j + win.kw]) {
                                *d += s;
                            }
                        } else {
                            for kx in 0..win.kw {
                                if let Some(ix) = Window::src(ox, kx, win.sw, win.pw, win.w) {
                                    line[ix] += row[j + kx];
                                }
                            }
                        }
                    }
                    j += win.kw;
                }
            }
        }
    }
}

/// Max pooling (PyTorch `max_pool2d`: padding counts as -inf, the first
/// maximum in row-major window order wins, NaN propagates). Returns the output
/// `(n, c, oh, ow)` and, for each output, the flat index `iy * w + ix` of the
/// chosen input inside its `(h, w)` plane (PyTorch's `return_indices` layout).
pub fn max_pool2d(ctx: &Ctx, x: &[f32], win: Window) -> Result<(Vec<f32>, Vec<i64>)> {
    let win = win.check_pool()?;
    check_len(x.len(), win.in_len(), "x")?;
    let (oh, ow) = (win.oh(), win.ow());
    let planes = win.n * win.c;
    let plane_in = win.h * win.w;
    let plane_out = oh * ow;
    let mut out = try_vec(planes * plane_out, 0f32, "the max-pooled output")?;
    let mut idx = try_vec(planes * plane_out, 0i64, "the max-pooling indices")?;
    if plane_out == 0 || plane_in == 0 {
        return Ok((out, idx));
    }
    let idx_at = SyncPtr(idx.as_mut_ptr());
    ctx.run(out.len().saturating_mul(win.kh * win.kw), || {
        exec::for_each_chunk_mut(&mut out, plane_out, |i, o| {
            // SAFETY: plane `i` owns elements i·plane_out.. of `idx`, written
            // by this call alone.
            let ix = unsafe {
                std::slice::from_raw_parts_mut(idx_at.get().add(i * plane_out), plane_out)
            };
            max_pool_plane(&x[i * plane_in..(i + 1) * plane_in], o, ix, &win)
        })
    });
    Ok((out, idx))
}

fn max_pool_plane(p: &[f32], out: &mut [f32], idx: &mut [i64], win: &Window) {
    let (oh, ow) = (win.oh(), win.ow());
    for oy in 0..oh {
        for ox in 0..ow {
            let mut best = f32::NEG_INFINITY;
            let mut arg: Option<usize> = None;
            for ky in 0..win.kh {
                let Some(iy) = Window::src(oy, ky, win.sh, win.ph, win.h) else {
                    continue;
                };
                for kx in 0..win.kw {
                    let Some(ix) = Window::src(ox, kx, win.sw, win.pw, win.w) else {
                        continue;
                    };
                    let v = p[iy * win.w + ix];
                    // `v > best` is false for NaN: test it so NaN wins and sticks.
                    if arg.is_none() || v > best || (v.is_nan() && !best.is_nan()) {
                        best = v;
                        arg = Some(iy * win.w + ix);
                    }
                }
            }
            // Padding of at most half the kernel leaves every window one real input.
            out[oy * ow + ox] = best;
            idx[oy * ow + ox] = arg.unwrap_or(0) as i64;
        }
    }
}

/// Gradient of [`max_pool2d`]: scatters `grad` (n, c, oh, ow) to the chosen
/// inputs (adding where windows overlap).
pub fn max_pool2d_backward(ctx: &Ctx, grad: &[f32], idx: &[i64], win: Window) -> Result<Vec<f32>> {
    let win = win.check()?;
    check_len(grad.len(), win.out_len(), "grad")?;
    check_len(idx.len(), win.out_len(), "indices")?;
    let plane_in = win.h * win.w;
    let plane_out = win.oh() * win.ow();
    let mut gx = try_vec(win.in_len(), 0f32, "the max-pooling gradient")?;
    if plane_out == 0 || plane_in == 0 {
        return Ok(gx);
    }
    if let Some(&bad) = idx.iter().find(|&&i| i < 0 || i as usize >= plane_in) {
        return crate::value_err!("index {bad} is outside a plane of {plane_in} elements");
    }
    ctx.run(grad.len(), || {
        exec::for_each_chunk_mut(&mut gx, plane_in, |p, g| {
            let (go, ix) = (
                &grad[p * plane_out..],
                &idx[p * plane_out..(p + 1) * plane_out],
            );
            for (&v, &i) in go.iter().zip(ix) {
                g[i as usize] += v;
            }
        })
    });
    Ok(gx)
}

/// Average pooling (PyTorch `avg_pool2d` defaults: `count_include_pad=True`,
/// so every window divides by `kh * kw`).
pub fn avg_pool2d(ctx: &Ctx, x: &[f32], win: Window) -> Result<Vec<f32>> {
    let win = win.check_pool()?;
    check_len(x.len(), win.in_len(), "x")?;
    let (oh, ow) = (win.oh(), win.ow());
    let plane_in = win.h * win.w;
    let plane_out = oh * ow;
    let mut out = try_vec(win.out_len(), 0f32, "the average-pooled output")?;
    if plane_out == 0 || plane_in == 0 {
        return Ok(out);
    }
    let inv = 1.0 / (win.kh * win.kw) as f32;
    ctx.run(out.len().saturating_mul(win.kh * win.kw), || {
        exec::for_each_chunk_mut(&mut out, plane_out, |i, o| {
            let p = &x[i * plane_in..(i + 1) * plane_in];
            {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = 0f32;
                        for ky in 0..win.kh {
                            let Some(iy) = Window::src(oy, ky, win.sh, win.ph, win.h) else {
                                continue;
                            };
                            for kx in 0..win.kw {
                                if let Some(ix) = Window::src(ox, kx, win.sw, win.pw, win.w) {
                                    s += p[iy * win.w + ix];
                                }
                            }
                        }
                        o[oy * ow + ox] = s * inv;
                    }
                }
            }
        })
    });
    Ok(out)
}

/// Gradient of [`avg_pool2d`].
pub fn avg_pool2d_backward(ctx: &Ctx, grad: &[f32], win: Window) -> Result<Vec<f32>> {
    let win = win.check()?;
    check_len(grad.len(), win.out_len(), "grad")?;
    let (oh, ow) = (win.oh(), win.ow());
    let plane_in = win.h * win.w;
    let plane_out = oh * ow;
    let mut gx = try_vec(win.in_len(), 0f32, "the average-pooling gradient")?;
    if plane_out == 0 || plane_in == 0 {
        return Ok(gx);
    }
    let inv = 1.0 / (win.kh * win.kw) as f32;
    ctx.run(grad.len().saturating_mul(win.kh * win.kw), || {
        exec::for_each_chunk_mut(&mut gx, plane_in, |i, g| {
            let go = &grad[i * plane_out..(i + 1) * plane_out];
            {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let v = go[oy * ow + ox] * inv;
                        for ky in 0..win.kh {
                            let Some(iy) = Window::src(oy, ky, win.sh, win.ph, win.h) else {
                                continue;
                            };
                            for kx in 0..win.kw {
                                if let Some(ix) = Window::src(ox, kx, win.sw, win.pw, win.w) {
                                    g[iy * win.w + ix] += v;
                                }
                            }
                        }
                    }
                }
            }
        })
    });
    Ok(gx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct definition of one im2col entry.
    fn reference(x: &[i32], wn: &Window, r: usize, col: usize, pad: i32) -> i32 {
        let (oh, ow) = (wn.oh(), wn.ow());
        let (img, pix) = (r / (oh * ow), r % (oh * ow));
        let (oy, ox) = (pix / ow, pix % ow);
        let (ci, t) = (col / (wn.kh * wn.kw), col % (wn.kh * wn.kw));
        let (ky, kx) = (t / wn.kw, t % wn.kw);
        let iy = (oy * wn.sh + ky) as isize - wn.ph as isize;
        let ix = (ox * wn.sw + kx) as isize - wn.pw as isize;
        if iy < 0 || ix < 0 || iy >= wn.h as isize || ix >= wn.w as isize {
            return pad;
        }
        x[((img * wn.c + ci) * wn.h + iy as usize) * wn.w + ix as usize]
    }

    #[test]
    fn im2col_matches_definition_on_awkward_shapes() {
        for &(n, c, h, w, k, s, p) in &[
            (2, 3, 5, 7, (3, 3), (1, 1), (1, 1)),
            (1, 2, 8, 8, (3, 2), (2, 3), (0, 1)),
            (3, 1, 4, 4, (4, 4), (1, 1), (0, 0)),
            (1, 1, 1, 1, (3, 3), (1, 1), (1, 1)),
            (2, 4, 9, 6, (5, 3), (2, 1), (2, 1)),
        ] {
            let wn = Window::new(n, c, h, w, k, s, p).check().unwrap();
            let x: Vec<i32> = (0..wn.in_len() as i32).map(|v| v * 7 - 3).collect();
            let cols = im2col(&crate::exec::TEST, &x, wn, -99).unwrap();
            let (rows, kk) = wn.cols_shape();
            assert_eq!(cols.len(), rows * kk);
            for r in 0..rows {
                for col in 0..kk {
                    assert_eq!(
                        cols[r * kk + col],
                        reference(&x, &wn, r, col, -99),
                        "{wn:?} r={r} c={col}"
                    );
                }
            }
        }
    }

    #[test]
    fn im2col_is_generic_over_int8() {
        let wn = Window::new(1, 1, 2, 2, (2, 2), (1, 1), (1, 1))
            .check()
            .unwrap();
        let x: Vec<u8> = vec![1, 2, 3, 4];
        let cols = im2col(&crate::exec::TEST, &x, wn, 128u8).unwrap();
        // first output pixel sees only x[0,0] at its bottom-right tap
        assert_eq!(&cols[..4], &[128, 128, 128, 1]);
        let xi: Vec<i8> = vec![-1, 2, -3, 4];
        let ci = im2col(&crate::exec::TEST, &xi, wn, 0i8).unwrap();
        assert_eq!(&ci[16..20], &[-1, 2, -3, 4]); // centre pixel sees all of x
        assert_eq!(&ci[32..36], &[4, 0, 0, 0]); // last pixel: x[1,1] then padding
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), c> == <x, col2im(c)> exactly on integers.
        for &(n, c, h, w, k, s, p) in &[
            (2, 3, 5, 7, (3, 3), (1, 1), (1, 1)),
            (1, 2, 8, 8, (3, 2), (2, 3), (0, 1)),
            (2, 4, 9, 6, (5, 3), (2, 1), (2, 1)),
        ] {
            let wn = Window::new(n, c, h, w, k, s, p).check().unwrap();
            let x: Vec<i32> = (0..wn.in_len() as i32).map(|v| (v * 37) % 11 - 5).collect();
            let (rows, kk) = wn.cols_shape();
            let cv: Vec<i32> = (0..(rows * kk) as i32).map(|v| (v * 13) % 7 - 3).collect();
            let lhs: i64 = im2col(&crate::exec::TEST, &x, wn, 0)
                .unwrap()
                .iter()
                .zip(&cv)
                .map(|(&a, &b)| a as i64 * b as i64)
                .sum();
            let back = col2im(&crate::exec::TEST, &cv, wn).unwrap();
            let rhs: i64 = x
                .iter()
                .zip(&back)
                .map(|(&a, &b)| a as i64 * b as i64)
                .sum();
            assert_eq!(lhs, rhs);
        }
    }

    #[test]
    fn bad_geometry_is_an_error() {
        assert!(Window::new(1, 1, 2, 2, (3, 3), (1, 1), (0, 0))
            .check()
            .is_err());
        assert!(Window::new(1, 1, 2, 2, (0, 3), (1, 1), (0, 0))
            .check()
            .is_err());
        assert!(Window::new(1, 1, 2, 2, (1, 1), (0, 1), (0, 0))
            .check()
            .is_err());
        let wn = Window::new(1, 1, 4, 4, (2, 2), (2, 2), (0, 0));
        assert!(im2col(&crate::exec::TEST, &[0f32; 15], wn, 0.0).is_err());
        assert!(col2im(&crate::exec::TEST, &[0f32; 3], wn).is_err());
        assert!(max_pool2d(
            &crate::exec::TEST,
            &[0f32; 16],
            Window::new(1, 1, 4, 4, (2, 2), (2, 2), (2, 2))
        )
        .is_err());
        assert!(max_pool2d_backward(&crate::exec::TEST, &[0f32; 4], &[0, 1, 2, 99], wn).is_err());
    }

    #[test]
    fn max_pool_picks_first_maximum_and_routes_gradient() {
        let wn = Window::new(1, 1, 4, 4, (2, 2), (2, 2), (0, 0))
            .check()
            .unwrap();
        let x = [
            1., 5., 2., 2., 5., 0., 2., 2., -1., -2., 9., 3., -3., -4., 3., 9.,
        ];
        let (out, idx) = max_pool2d(&crate::exec::TEST, &x, wn).unwrap();
        assert_eq!(out, vec![5., 2., -1., 9.]);
        assert_eq!(idx, vec![1, 2, 8, 10]);
        let g = max_pool2d_backward(&crate::exec::TEST, &[1., 2., 3., 4.], &idx, wn).unwrap();
        let mut want = [0f32; 16];
        want[1] = 1.;
        want[2] = 2.;
        want[8] = 3.;
        want[10] = 4.;
        assert_eq!(g, want.to_vec());
    }

    #[test]
    fn max_pool_with_padding_and_nan() {
        let wn = Window::new(1, 1, 2, 2, (2, 2), (1, 1), (1, 1))
            .check()
            .unwrap();
        let x = [-5., f32::NAN, -7., -8.];
        let (out, _) = max_pool2d(&crate::exec::TEST, &x, wn).unwrap();
        assert_eq!(out[0], -5.);
        assert!(out[1].is_nan() && out[4].is_nan());
        assert_eq!(out[8], -8.);
    }

    #[test]
    fn avg_pool_counts_padding() {
        let wn = Window::new(1, 1, 2, 2, (2, 2), (2, 2), (1, 1))
            .check()
            .unwrap();
        let x = [4., 8., 12., 16.];
        let out = avg_pool2d(&crate::exec::TEST, &x, wn).unwrap();
        assert_eq!(out, vec![1., 2., 3., 4.]);
        let g = avg_pool2d_backward(&crate::exec::TEST, &[4., 4., 4., 4.], wn).unwrap();
        assert_eq!(g, vec![1., 1., 1., 1.]);
    }

    #[test]
    fn large_batch_runs_in_parallel_and_matches_serial() {
        let wn = Window::new(64, 8, 12, 12, (3, 3), (1, 1), (1, 1))
            .check()
            .unwrap();
        let x: Vec<f32> = (0..wn.in_len())
            .map(|v| ((v * 31) % 17) as f32 - 8.0)
            .collect();
        let cols = im2col(&crate::exec::TEST, &x, wn, 0.0).unwrap();
        let one = Window { n: 1, ..wn };
        let img = one.in_len();
        let per = one.cols_shape().0 * one.cols_shape().1;
        for i in [0, 17, 63] {
            let c1 = im2col(&Ctx::serial(), &x[i * img..(i + 1) * img], one, 0.0).unwrap();
            assert_eq!(&cols[i * per..(i + 1) * per], &c1[..]);
        }
        let back = col2im(&crate::exec::TEST, &cols, wn).unwrap();
        let back1 = col2im(&Ctx::serial(), &cols[..per], one).unwrap();
        assert_eq!(&back[..img], &back1[..]);
    }
}
