//! The int8 sparse products (BSR/CSR and N:M) with exact int32
//! accumulation over activations quantized per row by the one activation
//! quantizer ([`crate::quant::rows`]): the generic `#[inline(always)]`
//! bodies that `arch/` compiles per ISA (plus the VNNI micro-kernel there),
//! and their drivers.

use std::ops::Range;

use super::driver::{bp_of, check_shapes, kernels, new_output, Rows, GEMV_MAX_BATCH, LANE};
use super::formats::{Bsr, Nm, RowQuant};
use crate::error::Result;
use crate::exec::{self, Ctx, SyncPtr};
use crate::gemm::output::{OutputStep, Param};
use crate::gemm::reuse::Reused;
use crate::{shape_err, value_err};

/// Dynamically quantized activations: per-row uint8, asymmetric (made by
/// [`crate::quant::rows::quantize_rows_u8`], the quantizer the dense GEMM uses).
pub use crate::quant::rows::QuantRows as QuantX;

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

std::thread_local! {
    /// The int8 products' per-call buffers, kept per thread: the activations
    /// transposed (`xq - zp` as i16) or regrouped 4-deep, one activation row
    /// (`xq - zp` as i32, padded), and the accumulators `Yt`.
    static XT_I16: std::cell::Cell<Vec<i16>> = const { std::cell::Cell::new(Vec::new()) };
    static XP_U8: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    static XS_I32: std::cell::Cell<Vec<i32>> = const { std::cell::Cell::new(Vec::new()) };
    static YT_I32: std::cell::Cell<Vec<i32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The output step of every int8 sparse product: the dense GEMM's
/// (`gemm::output`, `OutputStep::Float`), so every int8 path rounds the same:
/// `Y[b, o] = (f32(acc) · sx_b) · sw_o + bias[o]`, ReLU, with `acc` the exact
/// `Σ (xq - zp_b) · q`.
pub(super) fn output_step<'a>(
    xq: &QuantX<'a>,
    wq: &'a RowQuant,
    bias: Option<&'a [f32]>,
    relu: bool,
) -> OutputStep<'a> {
    OutputStep::Float {
        row_scale: Param::PerIndex(xq.scale),
        col_scale: Param::PerIndex(&wq.scale),
        bias,
        relu,
    }
}

/// Output rows of one task of the int8 products (the rows of its output tiles).
const CHUNK_ROWS: usize = 16;

/// `Xt[k, b] = xq[b, k] - zp_b` as i16 into `(kp, bp)`, zero padded, in the
/// caller's reused buffer; bands of rows on the team (a band's writes stay
/// in L1 while the reads run along each batch row).
fn transpose_minus_zp(
    ctx: &Ctx,
    xq: &QuantX<'_>,
    batch: usize,
    k: usize,
    kp: usize,
    bp: usize,
) -> Result<Reused<i16>> {
    let len = crate::error::checked_len(kp, bp, "the transposed activations")?;
    let mut xt = Reused::try_stale(&XT_I16, len, "the transposed activations")?;
    let rows_per = (8192 / bp).max(16);
    let dst = SyncPtr(xt.as_mut_ptr());
    ctx.for_each_task(len, kp.div_ceil(rows_per), |c| {
        let (k0, k1) = (c * rows_per, ((c + 1) * rows_per).min(kp));
        // SAFETY: band `c` alone writes rows `k0..k1`.
        let d = unsafe { std::slice::from_raw_parts_mut(dst.get().add(k0 * bp), (k1 - k0) * bp) };
        d.fill(0);
        let nk = k1.min(k).saturating_sub(k0);
        for b in 0..batch {
            let zp = xq.zero_point[b] as i16;
            for (kk, &v) in xq.q[b * k + k0..b * k + k0 + nk].iter().enumerate() {
                d[kk * bp + b] = v as i16 - zp;
            }
        }
    });
    Ok(xt)
}

/// The int8 product over `g`'s rows into `y` `(batch, N)`, on the team in
/// tasks of [`CHUNK_ROWS`] output rows (handed out by the team's counter,
/// so uneven rows split evenly): the gather-dot per activation row for a
/// batch of at most [`GEMV_MAX_BATCH`], else the AXPY body `axpy` over the
/// activations `act` (`xq - zp` transposed, or `xq` 4-deep when `fold_zp`:
/// the zero points are then folded out as `zp_b · Σ q`). Each task ends in
/// the dense GEMM's output step on its rows while they are in cache; the
/// buffers are the caller thread's, reused.
#[allow(clippy::too_many_arguments)]
fn i8_linear_into<X: Copy + Sync + 'static>(
    ctx: &Ctx,
    g: &Rows,
    xq: &QuantX<'_>,
    wq: &RowQuant,
    batch: usize,
    bias: Option<&[f32]>,
    relu: bool,
    gemv: impl Fn(Range<usize>, &[i32], &mut [i32]) + Sync,
    act: impl FnOnce(usize) -> Result<(Reused<X>, bool)>,
    axpy: impl Fn(Range<usize>, &[X], usize, &mut [i32]) + Sync,
    y: &mut [f32],
) -> Result<()> {
    let n = g.n;
    if batch.checked_mul(n) != Some(y.len()) {
        return shape_err!(
            "y has {} elements, expected (batch={batch}, out_features={n})",
            y.len()
        );
    }
    let step = output_step(xq, wq, bias, relu);
    let ep = step.prepare::<f32>(batch, n)?;
    if batch == 0 || n == 0 {
        return Ok(());
    }
    let per = (CHUNK_ROWS / g.unit).max(1);
    let chunks = g.units.div_ceil(per);
    let yp = SyncPtr(y.as_mut_ptr());
    let rows_of = |c: usize| {
        let (u0, u1) = (c * per, ((c + 1) * per).min(g.units));
        let o0 = u0 * g.unit;
        (u0..u1, o0, (u1 * g.unit).min(n).saturating_sub(o0))
    };
    if batch <= GEMV_MAX_BATCH {
        let mut xs = Reused::try_stale(&XS_I32, g.kp, "the activation row")?;
        for b in 0..batch {
            let zp = xq.zero_point[b] as i32;
            xs.fill(0);
            for (d, &v) in xs.iter_mut().zip(&xq.q[b * g.cols..(b + 1) * g.cols]) {
                *d = v as i32 - zp;
            }
            let xs = &xs;
            ctx.for_each_task(g.work / batch, chunks, |c| {
                let (us, o0, rows) = rows_of(c);
                let mut acc = [0i32; CHUNK_ROWS];
                gemv(us, xs, &mut acc);
                // SAFETY: chunk `c` alone owns outputs `o0..o0 + rows` of row `b`.
                unsafe { ep.apply_raw(&acc, rows, b..b + 1, o0..o0 + rows, yp.get(), n) }
            });
        }
        return Ok(());
    }
    let bp = bp_of(batch);
    let (xa, fold_zp) = act(bp)?;
    let len = crate::error::checked_len(g.padded, bp, "the sparse product's accumulators")?;
    let mut yt = Reused::try_stale(&YT_I32, len, "the sparse product's accumulators")?;
    let ytp = SyncPtr(yt.as_mut_ptr());
    let xa: &[X] = &xa;
    ctx.for_each_task(g.work, chunks, |c| {
        let (us, o0, rows) = rows_of(c);
        // SAFETY: chunk `c` alone owns rows `u0 · unit..` of `Yt` (the body
        // writes every batch column of them) and outputs `o0..o0 + rows` of `Y`.
        unsafe {
            let yt = std::slice::from_raw_parts_mut(
                ytp.get().add(us.start * g.unit * bp),
                us.len() * g.unit * bp,
            );
            axpy(us, xa, bp, yt);
            let mut acc = [0i32; CHUNK_ROWS * LANE];
            for b0 in (0..batch).step_by(LANE) {
                let nb = LANE.min(batch - b0);
                for t in 0..nb {
                    let zp = if fold_zp {
                        xq.zero_point[b0 + t] as i32
                    } else {
                        0
                    };
                    for oo in 0..rows {
                        // The true value fits int32 (checked at build): wrapping is exact.
                        let v = yt[oo * bp + b0 + t];
                        acc[t * rows + oo] = v.wrapping_sub(zp.wrapping_mul(wq.sum[o0 + oo]));
                    }
                }
                ep.apply_raw(&acc, rows, b0..b0 + nb, o0..o0 + rows, yp.get(), n);
            }
        }
    });
    Ok(())
}

/// `Xp[g, b, 0..4] = xq[b, 4g..4g+4]` (`g < kp / 4`, `b < batch`) into `xp`
/// (`kp · bp` bytes, zeroed: the padding stays zero): the 4-deep dot layout
/// of the activations, a transpose of 4-byte units (row `b` of `xq` is read
/// contiguously).
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
    new_output((w.rows, w.cols), xq.q.len(), batch, bias, |y| {
        bsr_i8_linear_into(ctx, w, wq, xq, batch, bias, relu, y)
    })
}

/// [`bsr_i8_linear`] into `y` `(batch, N)`, allocating nothing on a repeated call.
#[allow(clippy::too_many_arguments)]
pub fn bsr_i8_linear_into(
    ctx: &Ctx,
    w: &Bsr<i8>,
    wq: &RowQuant,
    xq: &QuantX<'_>,
    batch: usize,
    bias: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) -> Result<()> {
    check_shapes(w.rows, w.cols, xq.q.len(), batch, bias)?;
    check_quant_x(xq, batch, w.cols)?;
    let k = kernels();
    let g = Rows::of_bsr(w, batch);
    let (kp, cols) = (g.kp, g.cols);
    let gemv = |rg, x: &[i32], out: &mut [i32]| bsr_i8_gemv(w, rg, x, out);
    // SAFETY (both bodies): `i8_linear_into` hands them row ranges and
    // buffers sized from `g`, the bounds the bodies rely on.
    if w.c % 4 == 0 {
        let act = |bp: usize| {
            let len = crate::error::checked_len(kp, bp, "the regrouped activations")?;
            let mut xp = Reused::try_stale(&XP_U8, len, "the regrouped activations")?;
            xp.fill(0);
            pack_x4_into(xq.q, batch, cols, kp, bp, &mut xp);
            Ok((xp, true))
        };
        let axpy =
            |rg, xp: &[u8], bp, out: &mut [i32]| unsafe { (k.bsr_i8_dot4)(w, rg, xp, bp, out) };
        i8_linear_into(ctx, &g, xq, wq, batch, bias, relu, gemv, act, axpy, y)
    } else {
        let act = |bp: usize| Ok((transpose_minus_zp(ctx, xq, batch, cols, kp, bp)?, false));
        let axpy = |rg, xt: &[i16], bp, out: &mut [i32]| unsafe { (k.bsr_i8)(w, rg, xt, bp, out) };
        i8_linear_into(ctx, &g, xq, wq, batch, bias, relu, gemv, act, axpy, y)
    }
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
    new_output((w.rows, w.cols), xq.q.len(), batch, bias, |y| {
        nm_i8_linear_into(ctx, w, wq, xq, batch, bias, relu, y)
    })
}

/// [`nm_i8_linear`] into `y` `(batch, N)`, allocating nothing on a repeated call.
#[allow(clippy::too_many_arguments)]
pub fn nm_i8_linear_into(
    ctx: &Ctx,
    w: &Nm<i8>,
    wq: &RowQuant,
    xq: &QuantX<'_>,
    batch: usize,
    bias: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) -> Result<()> {
    check_shapes(w.rows, w.cols, xq.q.len(), batch, bias)?;
    check_quant_x(xq, batch, w.cols)?;
    let k = kernels();
    let g = Rows::of_nm(w, batch);
    let gemv = |rg, x: &[i32], out: &mut [i32]| nm_i8_gemv(w, rg, x, out);
    let act = |bp: usize| Ok((transpose_minus_zp(ctx, xq, batch, g.cols, g.kp, bp)?, false));
    // SAFETY (the body): as in `bsr_i8_linear_into`.
    let axpy = |rg, xt: &[i16], bp, out: &mut [i32]| unsafe { (k.nm_i8)(w, rg, xt, bp, out) };
    i8_linear_into(ctx, &g, xq, wq, batch, bias, relu, gemv, act, axpy, y)
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
