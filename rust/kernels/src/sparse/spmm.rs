//! SpMM for the Linear layer: `Y = X · Wᵀ (+ b) (ReLU)`, `W` sparse `(N, K)`,
//! `X` dense `(B, K)` row-major, `Y` dense `(B, N)`.
//!
//! Two shapes of loop:
//!
//! * **batch ≥ 3 — AXPY over the batch.** `X` is transposed once into `Xt`
//!   `(K, Bp)` (`Bp` = batch rounded up to 16, zero padded). For every stored
//!   weight `w[o, i]` the kernel adds `w · Xt[i, b0..b0+BT]` into a register
//!   tile of `R × BT` accumulators (one tile per block row and batch slice), so
//!   the SIMD lanes run over the batch and each weight is loaded once per tile.
//!   Blocks of `R` rows share the `Xt` loads. The tile is written to `Yt`
//!   `(N, Bp)`; the output step transposes it into `Y` with bias and ReLU.
//! * **batch ≤ 2 — gather-dot.** One row of `X` at a time, each output is a
//!   dot product of the stored weights with the `X` entries they index, over 8
//!   independent partial sums.
//!
//! Threads split the output rows into ranges of about equal stored-value
//! count. The int8 kernels accumulate in int32 exactly: every int8 matrix is
//! checked at build time (`formats::row_quant`) so that `255 · Σ|q|` per row
//! fits int32. Weights with block width a multiple of 4 use the 4-deep dot
//! layout (`Xp[g, b, 0..4] = xq[b, 4g..4g+4]`), which maps onto `vpdpbusd`.

use std::ops::Range;

use super::formats::{Bsr, Nm, RowQuant};
use crate::error::Result;
use crate::gemm::output::{OutputStep, Param};
use crate::threads;
use crate::{shape_err, value_err};
use rayon::prelude::*;

/// Largest batch served by the gather-dot path.
pub const GEMV_MAX_BATCH: usize = 2;
const LANE: usize = 16;

/// Dynamically quantized activations: per-row uint8, asymmetric (made by
/// [`crate::quant::rows::quantize_rows_u8`], the quantizer the dense GEMM uses).
pub use crate::quant::rows::QuantRows as QuantX;

// ---------------------------------------------------------------- helpers

/// Splits `0..indptr.len()-1` into at most `parts` ranges of about equal
/// `indptr` mass.
fn balanced(indptr: &[u32], parts: usize) -> Vec<Range<usize>> {
    let n = indptr.len() - 1;
    let total = indptr[n] as usize;
    let parts = parts.clamp(1, n.max(1));
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for p in 1..=parts {
        let end = if p == parts {
            n
        } else {
            let target = (total * p / parts) as u32;
            indptr.partition_point(|&v| v < target).clamp(start, n)
        };
        if end > start || (p == parts && start < n) {
            out.push(start..end);
            start = end;
        }
    }
    if out.is_empty() {
        out.push(0..n);
    }
    out
}

/// Cuts `buf` into consecutive pieces of `unit * range.len()` elements.
fn split_by<'a, T>(mut buf: &'a mut [T], ranges: &[Range<usize>], unit: usize) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let (a, b) = std::mem::take(&mut buf).split_at_mut(r.len() * unit);
        out.push(a);
        buf = b;
    }
    out
}

/// Runs `f(range, out_piece)` over balanced row ranges in the pool.
fn par_rows<T: Send>(
    indptr: &[u32],
    work: usize,
    out: &mut [T],
    unit: usize,
    f: impl Fn(Range<usize>, &mut [T]) + Sync,
) {
    let parts = threads::chunks_for(work);
    let ranges = balanced(indptr, parts);
    let pieces = split_by(out, &ranges, unit);
    if ranges.len() == 1 || !threads::in_pool() {
        for (r, p) in ranges.into_iter().zip(pieces) {
            f(r, p);
        }
    } else {
        ranges
            .into_par_iter()
            .zip(pieces)
            .for_each(|(r, p)| f(r, p));
    }
}

/// Implicit `indptr` of an N:M matrix (every row holds the same count).
fn nm_indptr(w: &Nm<impl Copy>) -> Vec<u32> {
    let per = (w.cols / w.m * w.n) as u64;
    (0..=w.rows as u64)
        .map(|r| (r * per).min(u32::MAX as u64) as u32)
        .collect()
}

fn bp_of(batch: usize) -> usize {
    batch.div_ceil(LANE) * LANE
}

/// Values a transposed activation can be made of.
trait XtElem: Copy + Default + Send + Sync {}
impl XtElem for f32 {}
impl XtElem for i16 {}

/// `Xt[k, b] = conv(b, x[b, k])` into `(kp, bp)`, zero padded; blocks of 16
/// batch rows so the reads run along 16 rows and the writes are contiguous.
#[inline(always)]
fn transpose_with<S: Copy + Sync, D: XtElem>(
    x: &[S],
    batch: usize,
    k: usize,
    kp: usize,
    bp: usize,
    conv: impl Fn(usize, S) -> D + Sync + Copy,
) -> Vec<D> {
    let mut xt = vec![D::default(); kp * bp];
    let rows_per = (8192 / bp).max(16);
    threads::for_each_chunk_mut(&mut xt, rows_per * bp, |c, dst| {
        let k0 = c * rows_per;
        let nk = (dst.len() / bp).min(k.saturating_sub(k0));
        let mut b0 = 0;
        while b0 < batch {
            let nb = LANE.min(batch - b0);
            for bb in 0..nb {
                let b = b0 + bb;
                let src = &x[b * k + k0..b * k + k0 + nk];
                for (kk, &v) in src.iter().enumerate() {
                    dst[kk * bp + b] = conv(b, v);
                }
            }
            b0 += LANE;
        }
    });
    xt
}

fn transpose_f32(x: &[f32], batch: usize, k: usize, kp: usize, bp: usize) -> Vec<f32> {
    transpose_with(x, batch, k, kp, bp, |_, v| v)
}

fn transpose_u8_minus_zp(
    x: &[u8],
    zp: &[u8],
    batch: usize,
    k: usize,
    kp: usize,
    bp: usize,
) -> Vec<i16> {
    transpose_with(x, batch, k, kp, bp, move |b, v| v as i16 - zp[b] as i16)
}

fn check_common(
    rows: usize,
    cols: usize,
    x_len: usize,
    batch: usize,
    bias: Option<&[f32]>,
) -> Result<()> {
    if batch.checked_mul(cols) != Some(x_len) {
        return shape_err!("x has {x_len} elements, expected (batch={batch}, in_features={cols})");
    }
    if let Some(b) = bias {
        if b.len() != rows {
            return shape_err!("bias has {} entries, expected out_features={rows}", b.len());
        }
    }
    Ok(())
}

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
    threads::for_each_chunk_mut(&mut y, n.max(1) * LANE, |c, ys| {
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

/// The output step of the int8 path: the dense GEMM's fused output step
/// (`gemm::output`, `OutputStep::Float`), so every int8 path rounds the same:
/// `Y[b, o] = (f32(acc) · sx_b) · sw_o + bias[o]`, ReLU, with `acc` the exact
/// `Σ (xq - zp_b) · q`. `Yt` is `(N, Bp)`; each block of 16 batch rows is
/// transposed into an `(rows, N)` tile (folding `zp_b · rowsum_o` out when the
/// kernel accumulated raw `xq`) and handed to the epilogue.
#[allow(clippy::too_many_arguments)]
fn output_i32(
    yt: &[i32],
    bp: usize,
    batch: usize,
    n: usize,
    xq: &QuantX<'_>,
    fold_zp: bool,
    wq: &RowQuant,
    bias: Option<&[f32]>,
    relu: bool,
) -> Result<Vec<f32>> {
    let mut y = vec![0f32; batch * n];
    let done = threads::map_chunks_mut(&mut y, n.max(1) * LANE, |c, ys| -> Result<()> {
        let b0 = c * LANE;
        let nb = ys.len() / n.max(1);
        let step = OutputStep::Float {
            row_scale: Param::PerIndex(&xq.scale[b0..b0 + nb]),
            col_scale: Param::PerIndex(&wq.scale),
            bias,
            relu,
        };
        let ep = step.prepare::<f32>(nb, n)?;
        let mut acc = vec![0i32; nb * n];
        for o in 0..n {
            let src = &yt[o * bp + b0..o * bp + b0 + nb];
            let rs = wq.sum[o];
            for (bb, &v) in src.iter().enumerate() {
                // The true value fits int32 (checked at build): wrapping is exact.
                let zp = if fold_zp {
                    xq.zero_point[b0 + bb] as i32
                } else {
                    0
                };
                acc[bb * n + o] = v.wrapping_sub(zp.wrapping_mul(rs));
            }
        }
        ep.apply(&acc, n, 0..nb, 0..n, ys, n);
        Ok(())
    });
    done.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(y)
}

// ------------------------------------------------------- float32 kernels

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
pub(super) unsafe fn bsr_f32_body<const FMA: bool>(
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
pub(super) unsafe fn bsr_f32_gemv_body<const FMA: bool>(
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
pub(super) unsafe fn nm_f32_body<const FMA: bool>(
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
pub(super) unsafe fn nm_f32_gemv_body<const FMA: bool>(
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

/// How many stored blocks ahead the AXPY loops prefetch their `Xt` rows.
const PREFETCH: usize = 8;

/// Prefetches `rows` (at most 4) rows of `len` bytes, `stride` apart, from `base + off`.
#[inline(always)]
unsafe fn prefetch_rows(base: *const u8, off: usize, rows: usize, stride: usize, len: usize) {
    let mut r = 0;
    while r < rows.min(4) {
        let mut l = 0;
        while l < len {
            crate::cpu::prefetch(base.wrapping_add(off + r * stride + l));
            l += 64;
        }
        r += 1;
    }
}

// ---------------------------------------------------------- int8 kernels

#[inline(always)]
unsafe fn i8_tile<const R: usize, const BT: usize>(
    cols: &[u32],
    vals: *const i8,
    c: usize,
    xt: *const i16,
    bp: usize,
    b0: usize,
    out: *mut i32,
) {
    let mut acc = [[0i32; BT]; R];
    let mut v = vals;
    let mut j = 0;
    while j < cols.len() {
        let base = *cols.get_unchecked(j) as usize * c;
        let mut cc = 0;
        while cc < c {
            let xr = xt.add((base + cc) * bp + b0);
            for rr in 0..R {
                let wv = *v.add(rr * c + cc) as i16 as i32;
                for t in 0..BT {
                    acc[rr][t] += *xr.add(t) as i32 * wv;
                }
            }
            cc += 1;
        }
        v = v.add(R * c);
        j += 1;
    }
    for rr in 0..R {
        for t in 0..BT {
            *out.add(rr * bp + b0 + t) = acc[rr][t];
        }
    }
}

#[inline(always)]
unsafe fn i8_rows_r<const R: usize>(
    w: &Bsr<i8>,
    brs: Range<usize>,
    xt: &[i16],
    bp: usize,
    out: &mut [i32],
) {
    let c = w.c;
    debug_assert!(out.len() >= brs.len() * R * bp && xt.len() >= w.cols.div_ceil(c) * c * bp);
    for (i, br) in brs.enumerate() {
        let (j0, j1) = (w.indptr[br] as usize, w.indptr[br + 1] as usize);
        let cols = &w.bcol[j0..j1];
        let vals = w.values.as_ptr().add(j0 * R * c);
        let o = out.as_mut_ptr().add(i * R * bp);
        let mut b0 = 0;
        if R <= 4 {
            while bp - b0 >= 32 {
                i8_tile::<R, 32>(cols, vals, c, xt.as_ptr(), bp, b0, o);
                b0 += 32;
            }
        }
        while b0 < bp {
            i8_tile::<R, 16>(cols, vals, c, xt.as_ptr(), bp, b0, o);
            b0 += 16;
        }
    }
}

/// int8 BSR AXPY body over `Xt` `(Kp, Bp)` holding `xq - zp` as i16.
#[inline(always)]
pub(super) unsafe fn bsr_i8_body(
    w: &Bsr<i8>,
    brs: Range<usize>,
    xt: &[i16],
    bp: usize,
    out: &mut [i32],
) {
    match w.r {
        1 => i8_rows_r::<1>(w, brs, xt, bp, out),
        2 => i8_rows_r::<2>(w, brs, xt, bp, out),
        4 => i8_rows_r::<4>(w, brs, xt, bp, out),
        8 => i8_rows_r::<8>(w, brs, xt, bp, out),
        _ => i8_rows_r::<16>(w, brs, xt, bp, out),
    }
}

#[inline(always)]
unsafe fn dot4_tile<const R: usize, const BT: usize>(
    cols: &[u32],
    vals: *const i8,
    c: usize,
    xp: *const u8,
    bp: usize,
    b0: usize,
    out: *mut i32,
) {
    let mut acc = [[0i32; BT]; R];
    let q4 = c / 4;
    let mut v = vals;
    let mut j = 0;
    while j < cols.len() {
        let bc = *cols.get_unchecked(j) as usize;
        for q in 0..q4 {
            let xr = xp.add(((bc * q4 + q) * bp + b0) * 4);
            for rr in 0..R {
                let wv = v.add(rr * c + 4 * q);
                let (w0, w1, w2, w3) = (
                    *wv as i32,
                    *wv.add(1) as i32,
                    *wv.add(2) as i32,
                    *wv.add(3) as i32,
                );
                for t in 0..BT {
                    let x4 = xr.add(4 * t);
                    acc[rr][t] += *x4 as i32 * w0
                        + *x4.add(1) as i32 * w1
                        + *x4.add(2) as i32 * w2
                        + *x4.add(3) as i32 * w3;
                }
            }
        }
        v = v.add(R * c);
        j += 1;
    }
    for rr in 0..R {
        for t in 0..BT {
            *out.add(rr * bp + b0 + t) = acc[rr][t];
        }
    }
}

/// int8 BSR 4-deep dot body (block width a multiple of 4) over
/// `Xp[g, b, 0..4] = xq[b, 4g..4g+4]`; the zero point is folded afterwards.
#[inline(always)]
pub(super) unsafe fn bsr_i8_dot4_body(
    w: &Bsr<i8>,
    brs: Range<usize>,
    xp: &[u8],
    bp: usize,
    out: &mut [i32],
) {
    #[inline(always)]
    unsafe fn rows<const R: usize>(
        w: &Bsr<i8>,
        brs: Range<usize>,
        xp: &[u8],
        bp: usize,
        out: &mut [i32],
    ) {
        let c = w.c;
        debug_assert!(out.len() >= brs.len() * R * bp && xp.len() >= w.cols.div_ceil(c) * c * bp);
        for (i, br) in brs.enumerate() {
            let (j0, j1) = (w.indptr[br] as usize, w.indptr[br + 1] as usize);
            let o = out.as_mut_ptr().add(i * R * bp);
            let vals = w.values.as_ptr().add(j0 * R * c);
            let mut b0 = 0;
            while b0 < bp {
                dot4_tile::<R, 16>(&w.bcol[j0..j1], vals, c, xp.as_ptr(), bp, b0, o);
                b0 += 16;
            }
        }
    }
    match w.r {
        1 => rows::<1>(w, brs, xp, bp, out),
        2 => rows::<2>(w, brs, xp, bp, out),
        4 => rows::<4>(w, brs, xp, bp, out),
        8 => rows::<8>(w, brs, xp, bp, out),
        _ => rows::<16>(w, brs, xp, bp, out),
    }
}

#[inline(always)]
unsafe fn nm_i8_tile<const BT: usize>(
    w: &Nm<i8>,
    row: usize,
    xt: *const i16,
    bp: usize,
    b0: usize,
    out: *mut i32,
) {
    let per = w.cols / w.m * w.n;
    let vals = w.values.as_ptr().add(row * per);
    let offs = w.offsets.as_ptr().add(row * per);
    let mut acc = [0i32; BT];
    let mut j = 0;
    while j < per {
        let col = (j / w.n) * w.m + *offs.add(j) as usize;
        let xr = xt.add(col * bp + b0);
        let wv = *vals.add(j) as i32;
        for t in 0..BT {
            acc[t] += *xr.add(t) as i32 * wv;
        }
        j += 1;
    }
    for t in 0..BT {
        *out.add(b0 + t) = acc[t];
    }
}

#[inline(always)]
pub(super) unsafe fn nm_i8_body(
    w: &Nm<i8>,
    rows: Range<usize>,
    xt: &[i16],
    bp: usize,
    out: &mut [i32],
) {
    debug_assert!(out.len() >= rows.len() * bp && xt.len() >= w.cols * bp);
    for (i, row) in rows.enumerate() {
        let o = out.as_mut_ptr().add(i * bp);
        let mut b0 = 0;
        while bp - b0 >= 32 {
            nm_i8_tile::<32>(w, row, xt.as_ptr(), bp, b0, o);
            b0 += 32;
        }
        while b0 < bp {
            nm_i8_tile::<16>(w, row, xt.as_ptr(), bp, b0, o);
            b0 += 16;
        }
    }
}

/// int8 gather-dot for one activation row `x` (`xq - zp` as i32, padded to
/// the block grid): `out[row] = Σ q · x`, 8 independent partial sums.
fn bsr_i8_gemv(w: &Bsr<i8>, brs: Range<usize>, x: &[i32], out: &mut [i32]) {
    let (r, c) = (w.r, w.c);
    assert!(x.len() >= w.cols.div_ceil(c) * c && out.len() >= brs.len() * r);
    let (cols, vals, xp) = (w.bcol.as_ptr(), w.values.as_ptr(), x.as_ptr());
    for (i, br) in brs.enumerate() {
        let (j0, j1) = (w.indptr[br] as usize, w.indptr[br + 1] as usize);
        for rr in 0..r {
            let mut a = [0i32; 8];
            // SAFETY: `from_dense` invariants bound `bcol` (block columns of
            // the padded grid, `x` is padded to it) and the values per block.
            unsafe {
                if r == 1 && c == 1 {
                    let mut j = j0;
                    while j + 8 <= j1 {
                        for l in 0..8 {
                            let q = *vals.add(j + l) as i32;
                            a[l] = a[l].wrapping_add(q * *xp.add(*cols.add(j + l) as usize));
                        }
                        j += 8;
                    }
                    while j < j1 {
                        a[0] =
                            a[0].wrapping_add(*vals.add(j) as i32 * *xp.add(*cols.add(j) as usize));
                        j += 1;
                    }
                } else {
                    for j in j0..j1 {
                        let xb = xp.add(*cols.add(j) as usize * c);
                        let v = vals.add(j * r * c + rr * c);
                        for cc in 0..c {
                            a[cc & 7] = a[cc & 7].wrapping_add(*v.add(cc) as i32 * *xb.add(cc));
                        }
                    }
                }
            }
            // Exact: the true sum fits int32 (checked at build); wrapping
            // partial sums add up to it.
            out[i * r + rr] = a.iter().fold(0i32, |s, &v| s.wrapping_add(v));
        }
    }
}

fn nm_i8_gemv(w: &Nm<i8>, rows: Range<usize>, x: &[i32], out: &mut [i32]) {
    let per = w.cols / w.m * w.n;
    for (i, row) in rows.enumerate() {
        let vals = &w.values[row * per..(row + 1) * per];
        let offs = &w.offsets[row * per..(row + 1) * per];
        let mut a = [0i32; 8];
        for (j, (&q, &o)) in vals.iter().zip(offs).enumerate() {
            let col = (j / w.n) * w.m + o as usize;
            a[j & 7] = a[j & 7].wrapping_add(q as i32 * x[col]);
        }
        out[i] = a.iter().fold(0i32, |s, &v| s.wrapping_add(v));
    }
}

#[allow(clippy::too_many_arguments)]
/// The batch <= 2 int8 path: per activation row a gather-dot into the `Yt`
/// layout `(rows, LANE)` that `output_i32` reads.
fn i8_gemv_rows(
    indptr: &[u32],
    work: usize,
    nrp: usize,
    kp: usize,
    cols: usize,
    batch: usize,
    unit: usize,
    xq: &QuantX<'_>,
    f: impl Fn(Range<usize>, &[i32], &mut [i32]) + Sync,
) -> Vec<i32> {
    let mut yt = vec![0i32; nrp * LANE];
    let mut xs = vec![0i32; kp];
    let mut yr = vec![0i32; nrp];
    for b in 0..batch {
        let zp = xq.zero_point[b] as i32;
        for (d, &v) in xs.iter_mut().zip(&xq.q[b * cols..(b + 1) * cols]) {
            *d = v as i32 - zp;
        }
        par_rows(indptr, work, &mut yr, unit, |rg, out| f(rg, &xs, out));
        for (o, &v) in yr.iter().enumerate() {
            yt[o * LANE + b] = v;
        }
    }
    yt
}

/// The sparse bodies compiled for the active path (see `arch/`).
fn kernels() -> super::arch::Kernels {
    crate::cpu::dispatch().sparse
}

// ---------------------------------------------------------- drivers

/// `Y = X · Wᵀ (+ bias) (ReLU)` for a float BSR/CSR weight `(N, K)`.
pub fn bsr_f32_linear(
    w: &Bsr<f32>,
    x: &[f32],
    batch: usize,
    bias: Option<&[f32]>,
    relu: bool,
) -> Result<Vec<f32>> {
    check_common(w.rows, w.cols, x.len(), batch, bias)?;
    let k = kernels();
    let (r, c, n) = (w.r, w.c, w.rows);
    let kp = w.cols.div_ceil(c) * c;
    let nrp = w.brows() * r;
    let work = w.values.len() * batch.max(1);
    Ok(threads::run(work, || {
        if batch <= GEMV_MAX_BATCH {
            let mut y = vec![0f32; batch * n];
            let mut xpad = vec![0f32; kp];
            let mut yr = vec![0f32; nrp];
            for b in 0..batch {
                xpad[..w.cols].copy_from_slice(&x[b * w.cols..(b + 1) * w.cols]);
                par_rows(
                    &w.indptr,
                    work / batch.max(1),
                    &mut yr,
                    r,
                    |rg, out| unsafe { (k.bsr_f32_gemv)(w, rg, &xpad, out) },
                );
                for (o, v) in y[b * n..(b + 1) * n].iter_mut().enumerate() {
                    let t = yr[o] + bias.map_or(0.0, |bb| bb[o]);
                    *v = if relu { t.max(0.0) } else { t };
                }
            }
            return y;
        }
        let bp = bp_of(batch);
        let xt = transpose_f32(x, batch, w.cols, kp, bp);
        let mut yt = vec![0f32; nrp * bp];
        par_rows(&w.indptr, work, &mut yt, r * bp, |rg, out| unsafe {
            (k.bsr_f32)(w, rg, &xt, bp, out)
        });
        output_f32(&yt, bp, batch, n, bias, relu)
    }))
}

/// `Y = X · Wᵀ (+ bias) (ReLU)` for a float N:M weight.
pub fn nm_f32_linear(
    w: &Nm<f32>,
    x: &[f32],
    batch: usize,
    bias: Option<&[f32]>,
    relu: bool,
) -> Result<Vec<f32>> {
    check_common(w.rows, w.cols, x.len(), batch, bias)?;
    let k = kernels();
    let n = w.rows;
    let indptr = nm_indptr(w);
    let work = w.values.len() * batch.max(1);
    Ok(threads::run(work, || {
        if batch <= GEMV_MAX_BATCH {
            let mut y = vec![0f32; batch * n];
            let mut yr = vec![0f32; n];
            for b in 0..batch {
                let xr = &x[b * w.cols..(b + 1) * w.cols];
                par_rows(&indptr, work / batch.max(1), &mut yr, 1, |rg, out| unsafe {
                    (k.nm_f32_gemv)(w, rg, xr, out)
                });
                for (o, v) in y[b * n..(b + 1) * n].iter_mut().enumerate() {
                    let t = yr[o] + bias.map_or(0.0, |bb| bb[o]);
                    *v = if relu { t.max(0.0) } else { t };
                }
            }
            return y;
        }
        let bp = bp_of(batch);
        let xt = transpose_f32(x, batch, w.cols, w.cols, bp);
        let mut yt = vec![0f32; n * bp];
        par_rows(&indptr, work, &mut yt, bp, |rg, out| unsafe {
            (k.nm_f32)(w, rg, &xt, bp, out)
        });
        output_f32(&yt, bp, batch, n, bias, relu)
    }))
}

fn check_quant_x(xq: &QuantX<'_>, batch: usize, cols: usize) -> Result<()> {
    if batch.checked_mul(cols) != Some(xq.q.len()) {
        return shape_err!(
            "quantized x has {} elements, expected (batch={batch}, in_features={cols})",
            xq.q.len()
        );
    }
    if xq.scale.len() != batch || xq.zero_point.len() != batch {
        return shape_err!(
            "x scale and zero point need one entry per row ({batch}); got {} and {}",
            xq.scale.len(),
            xq.zero_point.len()
        );
    }
    if let Some(s) = xq.scale.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return value_err!("x scales must be finite and > 0; got {s}");
    }
    Ok(())
}

/// `Y = dequant(Xq) · dequant(W)ᵀ (+ bias) (ReLU)` for an int8 BSR/CSR
/// weight, with exact int32 accumulation.
pub fn bsr_i8_linear(
    w: &Bsr<i8>,
    wq: &RowQuant,
    xq: &QuantX<'_>,
    batch: usize,
    bias: Option<&[f32]>,
    relu: bool,
) -> Result<Vec<f32>> {
    check_common(w.rows, w.cols, xq.q.len(), batch, bias)?;
    check_quant_x(xq, batch, w.cols)?;
    let k = kernels();
    let (r, c, n) = (w.r, w.c, w.rows);
    let kp = w.cols.div_ceil(c) * c;
    let nrp = w.brows() * r;
    let work = w.values.len() * batch.max(1);
    let cols = w.cols;
    threads::run(work, || {
        if batch <= GEMV_MAX_BATCH {
            let yt = i8_gemv_rows(
                &w.indptr,
                work / batch.max(1),
                nrp,
                kp,
                cols,
                batch,
                r,
                xq,
                |rg, x, out| bsr_i8_gemv(w, rg, x, out),
            );
            return output_i32(&yt, LANE, batch, n, xq, false, wq, bias, relu);
        }
        let bp = bp_of(batch);
        let mut yt = vec![0i32; nrp * bp];
        if c % 4 == 0 {
            // Xp[g, b, 0..4] = xq[b, 4g..4g+4]
            let groups = kp / 4;
            let mut xp = vec![0u8; groups * bp * 4];
            // A transpose of 4-byte units: row b of xq is read contiguously.
            let gpc = (4096 / bp).max(8);
            threads::for_each_chunk_mut(&mut xp, gpc * bp * 4, |c, dst| {
                let g0 = c * gpc;
                let ng = dst.len() / (bp * 4);
                for b in 0..batch {
                    let row = &xq.q[b * cols..(b + 1) * cols];
                    let full = ng.min((cols / 4).saturating_sub(g0));
                    let src = &row[4 * g0..4 * (g0 + full)];
                    for (gg, q4) in src.chunks_exact(4).enumerate() {
                        let at = (gg * bp + b) * 4;
                        dst[at..at + 4].copy_from_slice(q4);
                    }
                    for gg in full..ng {
                        let col = 4 * (g0 + gg);
                        for j in 0..4 {
                            dst[(gg * bp + b) * 4 + j] =
                                if col + j < cols { row[col + j] } else { 0 };
                        }
                    }
                }
            });
            par_rows(&w.indptr, work, &mut yt, r * bp, |rg, out| unsafe {
                (k.bsr_i8_dot4)(w, rg, &xp, bp, out)
            });
            output_i32(&yt, bp, batch, n, xq, true, wq, bias, relu)
        } else {
            let xt = transpose_u8_minus_zp(xq.q, xq.zero_point, batch, cols, kp, bp);
            par_rows(&w.indptr, work, &mut yt, r * bp, |rg, out| unsafe {
                (k.bsr_i8)(w, rg, &xt, bp, out)
            });
            output_i32(&yt, bp, batch, n, xq, false, wq, bias, relu)
        }
    })
}

/// int8 N:M version of [`bsr_i8_linear`].
pub fn nm_i8_linear(
    w: &Nm<i8>,
    wq: &RowQuant,
    xq: &QuantX<'_>,
    batch: usize,
    bias: Option<&[f32]>,
    relu: bool,
) -> Result<Vec<f32>> {
    check_common(w.rows, w.cols, xq.q.len(), batch, bias)?;
    check_quant_x(xq, batch, w.cols)?;
    let k = kernels();
    let n = w.rows;
    let indptr = nm_indptr(w);
    let work = w.values.len() * batch.max(1);
    threads::run(work, || {
        if batch <= GEMV_MAX_BATCH {
            let yt = i8_gemv_rows(
                &indptr,
                work / batch.max(1),
                n,
                w.cols,
                w.cols,
                batch,
                1,
                xq,
                |rg, x, out| nm_i8_gemv(w, rg, x, out),
            );
            return output_i32(&yt, LANE, batch, n, xq, false, wq, bias, relu);
        }
        let bp = bp_of(batch);
        let xt = transpose_u8_minus_zp(xq.q, xq.zero_point, batch, w.cols, w.cols, bp);
        let mut yt = vec![0i32; n * bp];
        par_rows(&indptr, work, &mut yt, bp, |rg, out| unsafe {
            (k.nm_i8)(w, rg, &xt, bp, out)
        });
        output_i32(&yt, bp, batch, n, xq, false, wq, bias, relu)
    })
}

#[cfg(test)]
mod tests {
    use super::super::formats::row_quant;
    use super::*;

    fn lcg(seed: &mut u64) -> u64 {
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
                    let y = bsr_f32_linear(&b, &x, batch, None, false).unwrap();
                    for (a, e) in y.iter().zip(&want) {
                        assert_eq!(*a as f64, *e, "isa {isa:?} block {r}x{c} batch {batch}");
                    }
                }
            }
        });
    }

    #[test]
    fn int8_exact_against_i64() {
        let mut s = 5u64;
        let (n, k) = (19, 64);
        let q: Vec<i8> = (0..n * k)
            .map(|_| {
                if lcg(&mut s) % 2 == 0 {
                    (lcg(&mut s) % 256) as i64 as i8
                } else {
                    0
                }
            })
            .collect();
        let q: Vec<i8> = q.into_iter().map(|v| v.max(-127)).collect();
        crate::cpu::each_isa(|isa| {
            for &batch in &[1usize, 5, 40] {
                let xqv: Vec<u8> = (0..batch * k).map(|_| (lcg(&mut s) % 256) as u8).collect();
                let zp: Vec<u8> = (0..batch).map(|_| (lcg(&mut s) % 256) as u8).collect();
                let sx = vec![1f32; batch];
                let xq = QuantX {
                    q: &xqv,
                    scale: &sx,
                    zero_point: &zp,
                };
                for (r, c) in [(1, 1), (1, 4), (4, 4), (8, 8), (2, 3)] {
                    let b = Bsr::from_dense(&q, n, k, None, r, c).unwrap();
                    let rq = row_quant(n, vec![1.0; n], |f| b.for_each_row_value(f)).unwrap();
                    let y = bsr_i8_linear(&b, &rq, &xq, batch, None, false).unwrap();
                    for bb in 0..batch {
                        for o in 0..n {
                            let e: i64 = (0..k)
                                .map(|i| {
                                    (xqv[bb * k + i] as i64 - zp[bb] as i64) * q[o * k + i] as i64
                                })
                                .sum();
                            assert_eq!(y[bb * n + o] as i64, e, "isa {isa:?} block {r}x{c}");
                        }
                    }
                }
            }
        });
    }

    /// A dense int8 layer (`gemm::linear_dynamic`) and the sparse int8
    /// layers quantize the same activation row with the same quantizer, so
    /// on the same int8 weight they give bit-identical outputs, rounding
    /// ties included.
    #[test]
    fn dense_and_sparse_layers_quantize_a_row_identically() {
        use crate::gemm::{self, output::Param, PackedB, ZeroPoint};
        let mut s = 7u64;
        let (n, k) = (21, 48);
        let q: Vec<i8> = (0..n * k)
            .map(|i| {
                if i % 3 == 0 {
                    0
                } else {
                    ((lcg(&mut s) % 255) as i64 - 127) as i8
                }
            })
            .collect();
        let wscale: Vec<f32> = (0..n).map(|o| 0.01 + o as f32 * 1e-3).collect();
        let bias: Vec<f32> = (0..n).map(|o| o as f32 * 0.25 - 2.0).collect();
        let packed = PackedB::from_nk_i8(&q, n, k, ZeroPoint::Scalar(0)).unwrap();
        let nm_mask: Vec<bool> = (0..n * k).map(|i| i % 4 < 2).collect();
        let nm = Nm::from_dense(&q, n, k, Some(&nm_mask), 2, 4).unwrap();
        let nm_q: Vec<i8> = q
            .iter()
            .zip(&nm_mask)
            .map(|(&v, &m)| if m { v } else { 0 })
            .collect();
        let nm_packed = PackedB::from_nk_i8(&nm_q, n, k, ZeroPoint::Scalar(0)).unwrap();
        let nm_rq = row_quant(n, wscale.clone(), |f| nm.for_each_row_value(f)).unwrap();
        crate::cpu::each_isa(|isa| {
            for &batch in &[1usize, 2, 9, 40] {
                // Even rows hold -1.5 and 1.5 (scale 3/255) and values at the
                // ties (j + 1/2)·scale of that grid, where dividing by the
                // scale and multiplying by its reciprocal round apart; odd
                // rows are plain.
                let step = 3.0f32 / 255.0;
                let x: Vec<f32> = (0..batch * k)
                    .map(|i| match ((i / k) % 2, i % k) {
                        (0, 0) => -1.5,
                        (0, 1) => 1.5,
                        (0, t) => (t as f32 - 24.0 + 0.5) * step,
                        _ => (lcg(&mut s) % 1000) as f32 * 0.013 - 6.0,
                    })
                    .collect();
                let splits = x[..k]
                    .iter()
                    .filter(|&&v| {
                        (v / step).round_ties_even() != (v * (1.0 / step)).round_ties_even()
                    })
                    .count();
                assert!(
                    splits > 0,
                    "the data must hold ties where the two roundings differ"
                );
                let dense = |p: &PackedB| {
                    let mut y = vec![0f32; batch * n];
                    let cs = Param::PerIndex(&wscale);
                    gemm::linear_dynamic(&x, batch, k, p, cs, Some(&bias), true, &mut y).unwrap();
                    y
                };
                let want = dense(&packed);
                let (xq, sx, zx) = crate::quant::rows::quantize_rows_u8(&x, batch, k).unwrap();
                let qx = QuantX {
                    q: &xq,
                    scale: &sx,
                    zero_point: &zx,
                };
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                for (r, c) in [(1, 1), (1, 4), (4, 4), (2, 3)] {
                    let b = Bsr::from_dense(&q, n, k, None, r, c).unwrap();
                    let rq = row_quant(n, wscale.clone(), |f| b.for_each_row_value(f)).unwrap();
                    let y = bsr_i8_linear(&b, &rq, &qx, batch, Some(&bias), true).unwrap();
                    assert_eq!(bits(&y), bits(&want), "{isa:?} bsr {r}x{c} batch {batch}");
                }
                let y = nm_i8_linear(&nm, &nm_rq, &qx, batch, Some(&bias), true).unwrap();
                assert_eq!(
                    bits(&y),
                    bits(&dense(&nm_packed)),
                    "{isa:?} 2:4 batch {batch}"
                );
            }
        });
    }
}
