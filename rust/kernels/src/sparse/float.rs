//! The float32 sparse products (BSR/CSR and N:M): the generic
//! `#[inline(always)]` bodies that `arch/` compiles per ISA, and their drivers.

use std::ops::Range;

use super::driver::{
    bp_of, check_common, kernels, par_rows, prefetch_rows, transpose_f32, Rows, GEMV_MAX_BATCH,
    LANE, PREFETCH,
};
use super::formats::{Bsr, Nm};
use crate::error::Result;
use crate::exec::{self, Ctx};

/// The output step of the float path: `Y[b, o] = Yt[o, b] + bias[o]`, ReLU.
fn output_f32(
    yt: &[f32],
    bp: usize,
    batch: usize,
    n: usize,
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    let mut y = vec![0f32; batch * n];
    exec::for_each_chunk_mut(&mut y, n.max(1) * LANE, |c, ys| {
        let b0 = c * LANE;
        let nb = ys.len() / n.max(1);
        for o in 0..n {
            let src = &yt[o * bp + b0..o * bp + b0 + nb];
            let bo = bias.map_or(0.0, |b| b[o]);
            for (bb, &v) in src.iter().enumerate() {
                let v = v + bo;
                ys[bb * n + o] = if relu { v.max(0.0) } else { v };
            }
        }
    });
    y
}

#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        c + a * b
    }
}

// The hot loops below index through raw pointers: every `Bsr` / `Nm` is made
// by `from_dense`, whose invariants (block columns < block count, `indptr`
// monotone and within `bcol`, `r·c` values per block, offsets < m) bound every
// access, and the drivers size `Xt` / `Yt` to the padded block grid. (Iterator
// adapters here were not always inlined into the `#[target_feature]`
// trampolines, which cost 5-10x.)

/// One `R × BT` output tile: `U` accumulator sets take consecutive blocks in
/// turn so that `U·R·BT/16` FMA chains are in flight (the FMA latency, not
/// the load, is the limit with one set). `C1` fixes `c = 1` (CSR, `r×1`).
#[inline(always)]
unsafe fn bsr_tile<
    const R: usize,
    const BT: usize,
    const U: usize,
    const C1: bool,
    const FMA: bool,
>(
    cols: &[u32],
    vals: *const f32,
    c: usize,
    xt: *const f32,
    bp: usize,
    b0: usize,
    out: *mut f32,
) {
    let c = if C1 { 1 } else { c };
    let mut acc = [[[0f32; BT]; R]; U];
    let nb = cols.len();
    let cp = cols.as_ptr();
    let mut j = 0;
    while j + U <= nb {
        if j + PREFETCH + U <= nb {
            for u in 0..U {
                prefetch_rows(
                    xt as *const u8,
                    (*cp.add(j + PREFETCH + u) as usize * c * bp + b0) * 4,
                    c,
                    bp * 4,
                    BT * 4,
                );
            }
        }
        for u in 0..U {
            let base = *cp.add(j + u) as usize * c;
            let v = vals.add((j + u) * R * c);
            let mut cc = 0;
            while cc < c {
                let xr = xt.add((base + cc) * bp + b0);
                for rr in 0..R {
                    let wv = *v.add(rr * c + cc);
                    for t in 0..BT {
                        acc[u][rr][t] = fmadd::<FMA>(wv, *xr.add(t), acc[u][rr][t]);
                    }
                }
                cc += 1;
            }
        }
        j += U;
    }
    while j < nb {
        let base = *cp.add(j) as usize * c;
        let v = vals.add(j * R * c);
        for cc in 0..c {
            let xr = xt.add((base + cc) * bp + b0);
            for rr in 0..R {
                let wv = *v.add(rr * c + cc);
                for t in 0..BT {
                    acc[0][rr][t] = fmadd::<FMA>(wv, *xr.add(t), acc[0][rr][t]);
                }
            }
        }
        j += 1;
    }
    for rr in 0..R {
        for t in 0..BT {
            let mut sum = acc[0][rr][t];
            for u in 1..U {
                sum += acc[u][rr][t];
            }
            *out.add(rr * bp + b0 + t) = sum;
        }
    }
}

#[inline(always)]
unsafe fn bsr_rows_c<const R: usize, const C1: bool, const FMA: bool>(
    w: &Bsr<f32>,
    brs: Range<usize>,
    xt: &[f32],
    bp: usize,
    out: &mut [f32],
) {
    let c = w.c;
    debug_assert!(out.len() >= brs.len() * R * bp && xt.len() >= w.cols.div_ceil(c) * c * bp);
    for (i, br) in brs.enumerate() {
        let (j0, j1) = (w.indptr[br] as usize, w.indptr[br + 1] as usize);
        let cols = &w.bcol[j0..j1];
        let vals = w.values.as_ptr().add(j0 * R * c);
        let o = out.as_mut_ptr().add(i * R * bp);
        let x = xt.as_ptr();
        let mut b0 = 0;
        if R == 1 {
            while bp - b0 >= 64 {
                bsr_tile::<R, 64, 2, C1, FMA>(cols, vals, c, x, bp, b0, o);
                b0 += 64;
            }
            while bp - b0 >= 32 {
                bsr_tile::<R, 32, 2, C1, FMA>(cols, vals, c, x, bp, b0, o);
                b0 += 32;
            }
            while b0 < bp {
                bsr_tile::<R, 16, 4, C1, FMA>(cols, vals, c, x, bp, b0, o);
                b0 += 16;
            }
        } else if R <= 4 {
            while bp - b0 >= 32 {
                bsr_tile::<R, 32, 1, C1, FMA>(cols, vals, c, x, bp, b0, o);
                b0 += 32;
            }
            while b0 < bp {
                bsr_tile::<R, 16, 2, C1, FMA>(cols, vals, c, x, bp, b0, o);
                b0 += 16;
            }
        } else {
            while b0 < bp {
                bsr_tile::<R, 16, 1, C1, FMA>(cols, vals, c, x, bp, b0, o);
                b0 += 16;
            }
        }
    }
}

#[inline(always)]
unsafe fn bsr_rows_r<const R: usize, const FMA: bool>(
    w: &Bsr<f32>,
    brs: Range<usize>,
    xt: &[f32],
    bp: usize,
    out: &mut [f32],
) {
    if w.c == 1 {
        bsr_rows_c::<R, true, FMA>(w, brs, xt, bp, out)
    } else {
        bsr_rows_c::<R, false, FMA>(w, brs, xt, bp, out)
    }
}

/// Float BSR AXPY body for block rows `brs`, writing `R` rows of `Yt` each.
#[inline(always)]
pub(crate) unsafe fn bsr_f32_body<const FMA: bool>(
    w: &Bsr<f32>,
    brs: Range<usize>,
    xt: &[f32],
    bp: usize,
    out: &mut [f32],
) {
    match w.r {
        1 => bsr_rows_r::<1, FMA>(w, brs, xt, bp, out),
        2 => bsr_rows_r::<2, FMA>(w, brs, xt, bp, out),
        4 => bsr_rows_r::<4, FMA>(w, brs, xt, bp, out),
        8 => bsr_rows_r::<8, FMA>(w, brs, xt, bp, out),
        _ => bsr_rows_r::<16, FMA>(w, brs, xt, bp, out),
    }
}

#[inline(always)]
unsafe fn gemv_rows_r<const R: usize, const FMA: bool>(
    w: &Bsr<f32>,
    brs: Range<usize>,
    x: &[f32],
    out: &mut [f32],
) {
    let c = w.c;
    let xp = x.as_ptr();
    for (i, br) in brs.enumerate() {
        let (j0, j1) = (w.indptr[br] as usize, w.indptr[br + 1] as usize);
        let cols = w.bcol.as_ptr();
        let vals = w.values.as_ptr();
        if R == 1 && c == 1 {
            // CSR: 8 independent partial sums over consecutive nonzeros.
            let mut a = [0f32; 8];
            let mut j = j0;
            while j + 8 <= j1 {
                for l in 0..8 {
                    a[l] = fmadd::<FMA>(*vals.add(j + l), *xp.add(*cols.add(j + l) as usize), a[l]);
                }
                j += 8;
            }
            while j < j1 {
                a[0] = fmadd::<FMA>(*vals.add(j), *xp.add(*cols.add(j) as usize), a[0]);
                j += 1;
            }
            *out.get_unchecked_mut(i) =
                ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
            continue;
        }
        let mut acc = [[0f32; 8]; R];
        for j in j0..j1 {
            let xb = xp.add(*cols.add(j) as usize * c);
            let v = vals.add(j * R * c);
            let mut cc = 0;
            while cc < c {
                let xv = *xb.add(cc);
                for rr in 0..R {
                    acc[rr][cc & 7] = fmadd::<FMA>(*v.add(rr * c + cc), xv, acc[rr][cc & 7]);
                }
                cc += 1;
            }
        }
        for rr in 0..R {
            let a = &acc[rr];
            *out.get_unchecked_mut(i * R + rr) =
                ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        }
    }
}

/// Float BSR gather-dot body: `out[row] = Σ w · x` for one activation row
/// `x` (zero padded to the block grid).
#[inline(always)]
pub(crate) unsafe fn bsr_f32_gemv_body<const FMA: bool>(
    w: &Bsr<f32>,
    brs: Range<usize>,
    x: &[f32],
    out: &mut [f32],
) {
    debug_assert!(x.len() >= w.cols.div_ceil(w.c) * w.c && out.len() >= brs.len() * w.r);
    match w.r {
        1 => gemv_rows_r::<1, FMA>(w, brs, x, out),
        2 => gemv_rows_r::<2, FMA>(w, brs, x, out),
        4 => gemv_rows_r::<4, FMA>(w, brs, x, out),
        8 => gemv_rows_r::<8, FMA>(w, brs, x, out),
        _ => gemv_rows_r::<16, FMA>(w, brs, x, out),
    }
}

#[inline(always)]
unsafe fn nm_tile<const BT: usize, const FMA: bool>(
    w: &Nm<f32>,
    row: usize,
    xt: *const f32,
    bp: usize,
    b0: usize,
    out: *mut f32,
) {
    let per = w.cols / w.m * w.n;
    let vals = w.values.as_ptr().add(row * per);
    let offs = w.offsets.as_ptr().add(row * per);
    let mut acc = [0f32; BT];
    let mut j = 0;
    while j < per {
        let col = (j / w.n) * w.m + *offs.add(j) as usize;
        let xr = xt.add(col * bp + b0);
        let wv = *vals.add(j);
        for t in 0..BT {
            acc[t] = fmadd::<FMA>(wv, *xr.add(t), acc[t]);
        }
        j += 1;
    }
    for t in 0..BT {
        *out.add(b0 + t) = acc[t];
    }
}

#[inline(always)]
pub(crate) unsafe fn nm_f32_body<const FMA: bool>(
    w: &Nm<f32>,
    rows: Range<usize>,
    xt: &[f32],
    bp: usize,
    out: &mut [f32],
) {
    debug_assert!(out.len() >= rows.len() * bp && xt.len() >= w.cols * bp);
    for (i, row) in rows.enumerate() {
        let o = out.as_mut_ptr().add(i * bp);
        let mut b0 = 0;
        while bp - b0 >= 64 {
            nm_tile::<64, FMA>(w, row, xt.as_ptr(), bp, b0, o);
            b0 += 64;
        }
        while b0 < bp {
            nm_tile::<16, FMA>(w, row, xt.as_ptr(), bp, b0, o);
            b0 += 16;
        }
    }
}

#[inline(always)]
pub(crate) unsafe fn nm_f32_gemv_body<const FMA: bool>(
    w: &Nm<f32>,
    rows: Range<usize>,
    x: &[f32],
    out: &mut [f32],
) {
    debug_assert!(x.len() >= w.cols && out.len() >= rows.len());
    let per = w.cols / w.m * w.n;
    let xp = x.as_ptr();
    for (i, row) in rows.enumerate() {
        let vals = w.values.as_ptr().add(row * per);
        let offs = w.offsets.as_ptr().add(row * per);
        let mut a = [0f32; 8];
        let mut j = 0;
        while j < per {
            let col = (j / w.n) * w.m + *offs.add(j) as usize;
            a[j & 7] = fmadd::<FMA>(*vals.add(j), *xp.add(col), a[j & 7]);
            j += 1;
        }
        *out.get_unchecked_mut(i) =
            ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
    }
}

/// The float product over `rows` with the bodies `gemv` (one activation
/// row, zero padded to the block grid) and `axpy` (the transposed batch):
/// the gather-dot for a batch of at most [`GEMV_MAX_BATCH`], else the AXPY
/// loop; bias and ReLU in the output step.
#[allow(clippy::too_many_arguments)]
fn linear(
    ctx: &Ctx,
    g: &Rows<'_>,
    x: &[f32],
    batch: usize,
    bias: Option<&[f32]>,
    relu: bool,
    gemv: impl Fn(Range<usize>, &[f32], &mut [f32]) + Sync,
    axpy: impl Fn(Range<usize>, &[f32], usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let n = g.n;
    ctx.run(g.work, || {
        if batch <= GEMV_MAX_BATCH {
            let mut y = vec![0f32; batch * n];
            let mut xpad = vec![0f32; g.kp];
            let mut yr = vec![0f32; g.padded];
            for b in 0..batch {
                xpad[..g.cols].copy_from_slice(&x[b * g.cols..(b + 1) * g.cols]);
                let work = g.work / batch.max(1);
                par_rows(ctx, &g.indptr, work, &mut yr, g.unit, |rg, out| {
                    gemv(rg, &xpad, out)
                });
                for (o, v) in y[b * n..(b + 1) * n].iter_mut().enumerate() {
                    let t = yr[o] + bias.map_or(0.0, |bb| bb[o]);
                    *v = if relu { t.max(0.0) } else { t };
                }
            }
            return y;
        }
        let bp = bp_of(batch);
        let xt = transpose_f32(x, batch, g.cols, g.kp, bp);
        let mut yt = vec![0f32; g.padded * bp];
        par_rows(ctx, &g.indptr, g.work, &mut yt, g.unit * bp, |rg, out| {
            axpy(rg, &xt, bp, out)
        });
        output_f32(&yt, bp, batch, n, bias, relu)
    })
}

/// `Y = X · Wᵀ (+ bias) (ReLU)` for a float BSR/CSR weight `(N, K)`.
pub fn bsr_f32_linear(
    ctx: &Ctx,
    w: &Bsr<f32>,
    x: &[f32],
    batch: usize,
    bias: Option<&[f32]>,
    relu: bool,
) -> Result<Vec<f32>> {
    check_common(w.rows, w.cols, x.len(), batch, bias)?;
    let k = kernels();
    // SAFETY (both bodies): `linear` hands them the row ranges and buffers
    // sized from `Rows::of_bsr`, the bounds the bodies rely on.
    let gemv = |rg, x: &[f32], out: &mut [f32]| unsafe { (k.bsr_f32_gemv)(w, rg, x, out) };
    let axpy = |rg, xt: &[f32], bp, out: &mut [f32]| unsafe { (k.bsr_f32)(w, rg, xt, bp, out) };
    let g = Rows::of_bsr(w, batch);
    Ok(linear(ctx, &g, x, batch, bias, relu, gemv, axpy))
}

/// `Y = X · Wᵀ (+ bias) (ReLU)` for a float N:M weight.
pub fn nm_f32_linear(
    ctx: &Ctx,
    w: &Nm<f32>,
    x: &[f32],
    batch: usize,
    bias: Option<&[f32]>,
    relu: bool,
) -> Result<Vec<f32>> {
    check_common(w.rows, w.cols, x.len(), batch, bias)?;
    let k = kernels();
    // SAFETY (both bodies): as in `bsr_f32_linear`, with `Rows::of_nm`.
    let gemv = |rg, x: &[f32], out: &mut [f32]| unsafe { (k.nm_f32_gemv)(w, rg, x, out) };
    let axpy = |rg, xt: &[f32], bp, out: &mut [f32]| unsafe { (k.nm_f32)(w, rg, xt, bp, out) };
    let g = Rows::of_nm(w, batch);
    Ok(linear(ctx, &g, x, batch, bias, relu, gemv, axpy))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    fn dense_ref(w: &[f32], n: usize, k: usize, x: &[f32], batch: usize) -> Vec<f64> {
        let mut y = vec![0f64; batch * n];
        for b in 0..batch {
            for o in 0..n {
                y[b * n + o] = (0..k)
                    .map(|i| w[o * k + i] as f64 * x[b * k + i] as f64)
                    .sum();
            }
        }
        y
    }

    #[test]

    fn float_formats_match_dense_on_every_isa() {
        let mut s = 3u64;
        let (n, k) = (37, 44);
        let w: Vec<f32> = (0..n * k)
            .map(|_| {
                if lcg(&mut s) % 3 == 0 {
                    (lcg(&mut s) % 9) as f32 - 4.0
                } else {
                    0.0
                }
            })
            .collect();
        crate::cpu::each_isa(|isa| {
            for &batch in &[1usize, 2, 3, 17, 70] {
                let x: Vec<f32> = (0..batch * k)
                    .map(|_| (lcg(&mut s) % 7) as f32 - 3.0)
                    .collect();
                let want = dense_ref(&w, n, k, &x, batch);
                for (r, c) in [(1, 1), (1, 4), (4, 1), (2, 2), (4, 4), (8, 8), (16, 3)] {
                    let b = Bsr::from_dense(&w, n, k, None, r, c).unwrap();
                    let y = bsr_f32_linear(&crate::exec::TEST, &b, &x, batch, None, false).unwrap();
                    for (a, e) in y.iter().zip(&want) {
                        assert_eq!(*a as f64, *e, "isa {isa:?} block {r}x{c} batch {batch}");
                    }
                }
            }
        });
    }
}
