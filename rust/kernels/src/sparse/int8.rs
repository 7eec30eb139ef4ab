//! The int8 sparse products (BSR/CSR and N:M) with exact int32
//! accumulation over activations quantized per row by the one activation
//! quantizer ([`crate::quant::rows`]): the generic `#[inline(always)]`
//! bodies that `arch/` compiles per ISA (plus the VNNI micro-kernel there),
//! and their drivers.

use std::ops::Range;

use super::driver::{
    bp_of, check_common, kernels, par_rows, transpose_with, Rows, GEMV_MAX_BATCH, LANE,
};
use super::formats::{Bsr, Nm, RowQuant};
use crate::error::Result;
use crate::exec::{self, Ctx};
use crate::gemm::output::{OutputStep, Param};
use crate::{shape_err, value_err};

/// Dynamically quantized activations: per-row uint8, asymmetric (made by
/// [`crate::quant::rows::quantize_rows_u8`], the quantizer the dense GEMM uses).
pub use crate::quant::rows::QuantRows as QuantX;

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
    let done = exec::map_chunks_mut(&mut y, n.max(1) * LANE, |c, ys| -> Result<()> {
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
pub(crate) unsafe fn bsr_i8_body(
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
pub(crate) unsafe fn bsr_i8_dot4_body(
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
pub(crate) unsafe fn nm_i8_body(
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

/// The batch <= 2 int8 path: per activation row (`xq - zp` as i32, zero
/// padded to the block grid) a gather-dot into the `Yt` layout
/// `(rows, LANE)` that `output_i32` reads.
fn i8_gemv_rows(
    ctx: &Ctx,
    g: &Rows<'_>,
    batch: usize,
    xq: &QuantX<'_>,
    f: impl Fn(Range<usize>, &[i32], &mut [i32]) + Sync,
) -> Vec<i32> {
    let cols = g.cols;
    let mut yt = vec![0i32; g.padded * LANE];
    let mut xs = vec![0i32; g.kp];
    let mut yr = vec![0i32; g.padded];
    let work = g.work / batch.max(1);
    for b in 0..batch {
        let zp = xq.zero_point[b] as i32;
        for (d, &v) in xs.iter_mut().zip(&xq.q[b * cols..(b + 1) * cols]) {
            *d = v as i32 - zp;
        }
        par_rows(ctx, g, work, &mut yr, g.unit, |rg, out| f(rg, &xs, out));
        for (o, &v) in yr.iter().enumerate() {
            yt[o * LANE + b] = v;
        }
    }
    yt
}

/// The AXPY int8 path over `Xt` `(Kp, Bp)` holding `xq - zp` as i16, with
/// the body `f(rows, xt, bp, out)`; returns `Yt` `(rows, Bp)`.
fn i16_axpy_rows(
    ctx: &Ctx,
    g: &Rows<'_>,
    batch: usize,
    bp: usize,
    xq: &QuantX<'_>,
    f: impl Fn(Range<usize>, &[i16], usize, &mut [i32]) + Sync,
) -> Vec<i32> {
    let xt = transpose_u8_minus_zp(xq.q, xq.zero_point, batch, g.cols, g.kp, bp);
    let mut yt = vec![0i32; g.padded * bp];
    par_rows(ctx, g, g.work, &mut yt, g.unit * bp, |rg, out| {
        f(rg, &xt, bp, out)
    });
    yt
}

/// `Xp[g, b, 0..4] = xq[b, 4g..4g+4]` (`g < kp / 4`, `b < bp`, zero padded):
/// the 4-deep dot layout of the activations, a transpose of 4-byte units
/// (row `b` of `xq` is read contiguously).
pub(super) fn pack_x4(q: &[u8], batch: usize, cols: usize, kp: usize, bp: usize) -> Vec<u8> {
    let mut xp = vec![0u8; kp / 4 * bp * 4];
    pack_x4_into(q, batch, cols, kp, bp, &mut xp);
    xp
}

/// [`pack_x4`] into `xp` (`kp · bp` bytes, zeroed).
pub(super) fn pack_x4_into(
    q: &[u8],
    batch: usize,
    cols: usize,
    kp: usize,
    bp: usize,
    xp: &mut [u8],
) {
    debug_assert_eq!(xp.len(), kp / 4 * bp * 4);
    let gpc = (4096 / bp.max(1)).max(8);
    exec::for_each_chunk_mut(xp, gpc * bp * 4, |c, dst| {
        let g0 = c * gpc;
        let ng = dst.len() / (bp * 4);
        for b in 0..batch {
            let row = &q[b * cols..(b + 1) * cols];
            let full = ng.min((cols / 4).saturating_sub(g0));
            let src = &row[4 * g0..4 * (g0 + full)];
            for (gg, q4) in src.chunks_exact(4).enumerate() {
                let at = (gg * bp + b) * 4;
                dst[at..at + 4].copy_from_slice(q4);
            }
            for gg in full..ng {
                let col = 4 * (g0 + gg);
                for j in 0..4 {
                    dst[(gg * bp + b) * 4 + j] = if col + j < cols { row[col + j] } else { 0 };
                }
            }
        }
    });
}

pub(super) fn check_quant_x(xq: &QuantX<'_>, batch: usize, cols: usize) -> Result<()> {
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
    ctx: &Ctx,
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
    let g = Rows::of_bsr(w, batch);
    let (c, n, kp, cols) = (w.c, g.n, g.kp, g.cols);
    // SAFETY (every body below): the drivers hand them row ranges and
    // buffers sized from `g`, the bounds the bodies rely on.
    ctx.run(g.work, || {
        if batch <= GEMV_MAX_BATCH {
            let yt = i8_gemv_rows(ctx, &g, batch, xq, |rg, x, out| bsr_i8_gemv(w, rg, x, out));
            return output_i32(&yt, LANE, batch, n, xq, false, wq, bias, relu);
        }
        let bp = bp_of(batch);
        if c % 4 == 0 {
            let xp = pack_x4(xq.q, batch, cols, kp, bp);
            let mut yt = vec![0i32; g.padded * bp];
            par_rows(ctx, &g, g.work, &mut yt, g.unit * bp, |rg, out| unsafe {
                (k.bsr_i8_dot4)(w, rg, &xp, bp, out)
            });
            output_i32(&yt, bp, batch, n, xq, true, wq, bias, relu)
        } else {
            let yt = i16_axpy_rows(ctx, &g, batch, bp, xq, |rg, xt, bp, out| unsafe {
                (k.bsr_i8)(w, rg, xt, bp, out)
            });
            output_i32(&yt, bp, batch, n, xq, false, wq, bias, relu)
        }
    })
}

/// int8 N:M version of [`bsr_i8_linear`].
pub fn nm_i8_linear(
    ctx: &Ctx,
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
    let g = Rows::of_nm(w, batch);
    let n = g.n;
    // SAFETY (the body): as in `bsr_i8_linear`.
    ctx.run(g.work, || {
        if batch <= GEMV_MAX_BATCH {
            let yt = i8_gemv_rows(ctx, &g, batch, xq, |rg, x, out| nm_i8_gemv(w, rg, x, out));
            return output_i32(&yt, LANE, batch, n, xq, false, wq, bias, relu);
        }
        let bp = bp_of(batch);
        let yt = i16_axpy_rows(ctx, &g, batch, bp, xq, |rg, xt, bp, out| unsafe {
            (k.nm_i8)(w, rg, xt, bp, out)
        });
        output_i32(&yt, bp, batch, n, xq, false, wq, bias, relu)
    })
}

#[cfg(test)]
mod tests {
    use super::super::float::tests::lcg;
    use super::super::formats::row_quant;
    use super::*;

    /// Every path, batch sizes through the tails of every tile, BSR/CSR and
    /// (for blocks of 4, 8 or 16 rows × 4k) the output panels: the exact
    /// `Σ (xq - zp) · q` against an i64 reference, extreme bytes and zero
    /// points included.
    #[test]
    fn int8_exact_against_i64() {
        use super::super::panel::{panel_i8_linear, PanelI8};
        let mut s = 5u64;
        let (n, k) = (37, 70);
        let q: Vec<i8> = (0..n * k)
            .map(|i| match (lcg(&mut s) % 3, i % 7) {
                (0, 0) => 127,
                (0, 1) => -127,
                (0, _) => ((lcg(&mut s) % 255) as i64 - 127) as i8,
                _ => 0,
            })
            .collect();
        crate::cpu::each_isa(|isa| {
            for &batch in &[1usize, 2, 3, 5, 8, 9, 17, 40] {
                let xqv: Vec<u8> = (0..batch * k)
                    .map(|i| match i % 11 {
                        0 => 255,
                        1 => 0,
                        _ => (lcg(&mut s) % 256) as u8,
                    })
                    .collect();
                let zp: Vec<u8> = (0..batch).map(|b| [0, 255, 128, 7][b % 4]).collect();
                let sx = vec![1f32; batch];
                let xq = QuantX {
                    q: &xqv,
                    scale: &sx,
                    zero_point: &zp,
                };
                let blocks = [
                    (1, 1),
                    (1, 4),
                    (2, 3),
                    (4, 4),
                    (8, 8),
                    (8, 4),
                    (16, 4),
                    (16, 8),
                    (4, 12),
                ];
                for (r, c) in blocks {
                    let b = Bsr::from_dense(&q, n, k, None, r, c).unwrap();
                    let rq = row_quant(n, vec![1.0; n], |f| b.for_each_row_value(f)).unwrap();
                    let ctx = &crate::exec::TEST;
                    let mut got =
                        vec![("bsr", bsr_i8_linear(ctx, &b, &rq, &xq, batch, None, false))];
                    if let Some(p) = PanelI8::of_bsr(&b).unwrap() {
                        got.push((
                            "panel",
                            panel_i8_linear(ctx, &p, &rq, &xq, batch, None, false),
                        ));
                    }
                    for (path, y) in got {
                        let y = y.unwrap();
                        for bb in 0..batch {
                            for o in 0..n {
                                let e: i64 = (0..k)
                                    .map(|i| {
                                        (xqv[bb * k + i] as i64 - zp[bb] as i64)
                                            * q[o * k + i] as i64
                                    })
                                    .sum();
                                assert_eq!(
                                    y[bb * n + o] as i64,
                                    e,
                                    "isa {isa:?} {path} {r}x{c} batch {batch} ({bb}, {o})"
                                );
                            }
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
        let packed =
            PackedB::from_nk_i8(&crate::exec::TEST, &q, n, k, ZeroPoint::Scalar(0)).unwrap();
        let nm_mask: Vec<bool> = (0..n * k).map(|i| i % 4 < 2).collect();
        let nm = Nm::from_dense(&q, n, k, Some(&nm_mask), 2, 4).unwrap();
        let nm_q: Vec<i8> = q
            .iter()
            .zip(&nm_mask)
            .map(|(&v, &m)| if m { v } else { 0 })
            .collect();
        let nm_packed =
            PackedB::from_nk_i8(&crate::exec::TEST, &nm_q, n, k, ZeroPoint::Scalar(0)).unwrap();
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
                    gemm::linear_dynamic(
                        &crate::exec::TEST,
                        &x,
                        batch,
                        k,
                        p,
                        cs,
                        Some(&bias),
                        true,
                        &mut y,
                    )
                    .unwrap();
                    y
                };
                let want = dense(&packed);
                let (xq, sx, zx) =
                    crate::quant::rows::quantize_rows_u8(&crate::exec::TEST, &x, batch, k).unwrap();
                let qx = QuantX {
                    q: &xq,
                    scale: &sx,
                    zero_point: &zx,
                };
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                for (r, c) in [(1, 1), (1, 4), (4, 4), (2, 3)] {
                    let b = Bsr::from_dense(&q, n, k, None, r, c).unwrap();
                    let rq = row_quant(n, wscale.clone(), |f| b.for_each_row_value(f)).unwrap();
                    let y =
                        bsr_i8_linear(&crate::exec::TEST, &b, &rq, &qx, batch, Some(&bias), true)
                            .unwrap();
                    assert_eq!(bits(&y), bits(&want), "{isa:?} bsr {r}x{c} batch {batch}");
                }
                let y = nm_i8_linear(
                    &crate::exec::TEST,
                    &nm,
                    &nm_rq,
                    &qx,
                    batch,
                    Some(&bias),
                    true,
                )
                .unwrap();
                assert_eq!(
                    bits(&y),
                    bits(&dense(&nm_packed)),
                    "{isa:?} 2:4 batch {batch}"
                );
            }
        });
    }
}
