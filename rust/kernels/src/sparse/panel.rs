//! The int8 block-sparse product laid out like the dense GEMM's packed B:
//! output-column panels of `R` (4, 8 or 16) outputs, each the list of the
//! input K-groups (4 inputs) it stores. A stored group is `R × 4` bytes,
//! output-major (`[o][0..4]`), so one SIMD register holds it and `vpdpbusd`
//! multiplies it with four broadcast activation bytes: the lanes run over the
//! outputs, not the batch, and a batch of one fills them as well as 128.
//!
//! Made from an int8 BSR weight whose blocks are `R × c` with `c` a multiple
//! of 4 ([`PanelI8::of_bsr`]); groups of a block that are all zero are not
//! stored. Activations come quantized per row by the one row quantizer and
//! are regrouped once per call, per tile of [`TILE_ROWS`] batch rows, into
//! `Xp[g][t][0..4] = xq[b0 + t, 4g..4g+4]`: the rows of a tile read one
//! 4-byte unit each from consecutive bytes, and a tile's activations stay
//! together in L1 while the weights stream past (sequentially). Every
//! tile ends in the dense GEMM's output step (`gemm::output`), applied while
//! the accumulators are hot; the zero points are folded out there
//! (`acc = Σ xq · q − zp_b · Σ q`), exact in int32 (checked at build).

use std::ops::Range;

use super::driver::{balanced_part, check_shapes, new_output};
use super::formats::{Bsr, RowQuant};
use super::int8::{check_quant_x, output_step, pack_x4_into, QuantX};
use crate::error::{try_with_capacity, Result};
use crate::exec::{Ctx, SyncPtr};
use crate::gemm::output::{Epilogue, OutputStep, Param};
use crate::gemm::reuse::Reused;
use crate::shape_err;

use super::weight::{XQ, XQ_SCALE, XQ_ZP};

/// Output lanes a panel may have (one xmm, ymm or zmm of int32).
pub const PANEL_ROWS: [usize; 3] = [4, 8, 16];

/// Output-column panels of an int8 block-sparse weight (see the module doc).
#[derive(Debug, Clone)]
pub struct PanelI8 {
    pub(super) rows: usize,
    pub(super) cols: usize,
    /// Outputs per panel.
    pub(super) r: usize,
    /// Per panel, the range of its groups in `group` (length `panels + 1`).
    pub(super) indptr: Vec<u32>,
    /// K-group (in units of 4 inputs) of each stored group, increasing per panel.
    pub(super) group: Vec<u32>,
    /// `r * 4` values per stored group, `[o][0..4]`.
    pub(super) values: Vec<i8>,
    /// `Σ q` per output row, zero padded to `panels · r` (a whole panel's
    /// sums load as one register; the zero points are folded out with them).
    pub(super) rowsum: Vec<i32>,
}

impl PanelI8 {
    /// The panels of `b` when its blocks fit them (`r` in [`PANEL_ROWS`],
    /// `c` a multiple of 4), else `None`.
    pub fn of_bsr(b: &Bsr<i8>) -> Result<Option<PanelI8>> {
        let (r, c) = (b.r, b.c);
        if !PANEL_ROWS.contains(&r) || c % 4 != 0 {
            return Ok(None);
        }
        let q4 = c / 4;
        let mut indptr = try_with_capacity(b.indptr.len(), "the panel pointers")?;
        indptr.push(0u32);
        let mut group = try_with_capacity(b.bcol.len().saturating_mul(q4), "the panel groups")?;
        let mut values = try_with_capacity(b.values.len(), "the panel values")?;
        for br in 0..b.brows() {
            for j in b.indptr[br] as usize..b.indptr[br + 1] as usize {
                let blk = &b.values[j * r * c..(j + 1) * r * c];
                for q in 0..q4 {
                    let any = (0..r).any(|o| blk[o * c + 4 * q..o * c + 4 * q + 4] != [0; 4]);
                    if any {
                        // Fits: block columns < 2^32 / c, so groups < 2^32 / 4 · c / c.
                        group.push(b.bcol[j] * q4 as u32 + q as u32);
                        for o in 0..r {
                            values.extend_from_slice(&blk[o * c + 4 * q..o * c + 4 * q + 4]);
                        }
                    }
                }
            }
            if group.len() > u32::MAX as usize {
                return shape_err!("too many stored groups (at most 2^32 - 1)");
            }
            indptr.push(group.len() as u32);
        }
        // The row sums fit int32: `row_quant` checked `255 · Σ|q|` of every row.
        let mut rowsum = crate::error::try_vec((indptr.len() - 1) * r, 0i32, "the panel row sums")?;
        for (p, sums) in rowsum.chunks_exact_mut(r).enumerate() {
            for g in values[indptr[p] as usize * r * 4..indptr[p + 1] as usize * r * 4]
                .chunks_exact(r * 4)
            {
                for (o, s) in sums.iter_mut().enumerate() {
                    *s = s.wrapping_add(g[4 * o..4 * o + 4].iter().map(|&v| v as i32).sum::<i32>());
                }
            }
        }
        Ok(Some(PanelI8 {
            rows: b.rows,
            cols: b.cols,
            r,
            indptr,
            group,
            values,
            rowsum,
        }))
    }

    /// Panels (output rows rounded up to `r`, over `r`).
    pub fn panels(&self) -> usize {
        self.indptr.len() - 1
    }

    /// Bytes of the stored arrays.
    pub fn nbytes(&self) -> usize {
        4 * (self.indptr.len() + self.group.len() + self.rowsum.len()) + self.values.len()
    }
}

/// A raw output pointer the threads share; each writes its own panels' columns.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: the threads write disjoint column ranges (their panels).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// What one call hands its bodies.
pub(crate) struct PanelCall<'a> {
    pub w: &'a PanelI8,
    /// Per tile of `mr` rows from `b0`: `Xp[g][t][0..4]` at `b0 · kp`, `mr · 4` bytes per group.
    pub xp: &'a [u8],
    /// Inputs padded to groups of 4.
    pub kp: usize,
    pub batch: usize,
    pub zp: &'a [u8],
    pub ep: &'a Epilogue<'a, f32>,
    /// `Y` `(batch, rows)`.
    pub y: OutPtr,
}

/// Batch rows of a tile on every path (the `Xp` packing follows it).
pub(crate) const TILE_ROWS: usize = 8;

/// Output columns of the staging tile: the tiles of consecutive panels
/// (`STAGE_COLS / R` of them) go through the output step together, so its
/// per-row work is paid once per 128 outputs, not once per panel.
pub(crate) const STAGE_COLS: usize = 128;

/// `staged!(c, panels, b0, mr, R, |p, dst| tile)` runs `tile` for every
/// panel `p` of `panels` on the batch tile `b0..b0 + mr`: `tile` writes the
/// tile's `mr` rows of `R` accumulators, zero points folded out, at `dst`
/// (row stride [`STAGE_COLS`]); every `STAGE_COLS / R` panels the staged
/// columns go through the output step. A macro, not a function taking a
/// closure: a closure is compiled without the caller's `target_feature`s, and
/// the intrinsics inside it would become calls.
///
/// Safety (of the expansion, inside `unsafe`): `panels` within `c.w`,
/// `b0 + mr <= c.batch`, `mr <= TILE_ROWS`, `tile` writing `mr` rows of `R`
/// from `dst`; the caller owns the panels' columns of `Y`.
macro_rules! staged {
    ($c:expr, $panels:expr, $b0:expr, $mr:expr, $r:expr, |$p:ident, $dst:ident| $tile:expr) => {{
        use $crate::sparse::panel::{STAGE_COLS, TILE_ROWS};
        let (c, panels, b0, mr, r) = ($c, $panels, $b0, $mr, $r);
        let per = STAGE_COLS / r;
        let mut stage = [[0i32; STAGE_COLS]; TILE_ROWS];
        let mut p0 = panels.start;
        while p0 < panels.end {
            let pe = (p0 + per).min(panels.end);
            let base = stage.as_mut_ptr() as *mut i32;
            for $p in p0..pe {
                let $dst = base.add(($p - p0) * r);
                $tile;
            }
            let (o0, o1) = (p0 * r, (pe * r).min(c.w.rows));
            let flat = std::slice::from_raw_parts(base as *const i32, TILE_ROWS * STAGE_COLS);
            c.ep.apply_inline(flat, STAGE_COLS, b0..b0 + mr, o0..o1, c.y.0, c.w.rows);
            p0 = pe;
        }
    }};
}
pub(crate) use staged;

/// `acc - zp_b · Σ q` of a panel's `R` outputs for batch row `b` (the true
/// values fit int32, checked at build: wrapping is exact), stored at `dst`.
///
/// # Safety
/// `p` a panel of `c.w`, `b < c.batch`, `dst` valid for `R` writes.
#[inline(always)]
pub(crate) unsafe fn fold_store<const R: usize>(
    c: &PanelCall<'_>,
    p: usize,
    b: usize,
    acc: &[i32; R],
    dst: *mut i32,
) {
    let rs = &*(c.w.rowsum.as_ptr().add(p * R) as *const [i32; R]);
    let zp = *c.zp.get_unchecked(b) as i32;
    for o in 0..R {
        *dst.add(o) = acc[o].wrapping_sub(zp.wrapping_mul(rs[o]));
    }
}

#[inline(always)]
unsafe fn tile_generic<const R: usize, const MR: usize>(
    c: &PanelCall<'_>,
    p: usize,
    b0: usize,
    dst: *mut i32,
) {
    let w = c.w;
    let mut acc = [[0i32; R]; MR];
    let (j0, j1) = (w.indptr[p] as usize, w.indptr[p + 1] as usize);
    let xb = c.xp.as_ptr().add(b0 * c.kp);
    for j in j0..j1 {
        let xs = xb.add(*w.group.get_unchecked(j) as usize * MR * 4);
        let v = w.values.as_ptr().add(j * R * 4);
        for (t, a) in acc.iter_mut().enumerate() {
            let x = xs.add(4 * t);
            let (x0, x1, x2, x3) = (
                *x as i32,
                *x.add(1) as i32,
                *x.add(2) as i32,
                *x.add(3) as i32,
            );
            for (o, a) in a.iter_mut().enumerate() {
                let q = v.add(4 * o);
                let d = x0 * *q as i32
                    + x1 * *q.add(1) as i32
                    + x2 * *q.add(2) as i32
                    + x3 * *q.add(3) as i32;
                *a = a.wrapping_add(d);
            }
        }
    }
    for (t, a) in acc.iter().enumerate() {
        fold_store::<R>(c, p, b0 + t, a, dst.add(t * STAGE_COLS));
    }
}

/// Calls `$tile::<R, MR>(c, p, b0)` with `MR` the tile rows `mr` (1..=`$max`).
macro_rules! by_rows {
    ($tile:ident, $r:expr, $mr:expr, $c:expr, $p:expr, $b0:expr, $dst:expr; $($m:literal)*) => {
        match $mr {
            $($m => $tile::<$r, $m>($c, $p, $b0, $dst),)*
            _ => unreachable!(),
        }
    };
}

#[inline(always)]
unsafe fn body_generic<const R: usize>(c: &PanelCall<'_>, panels: Range<usize>) {
    let mut b0 = 0;
    while b0 < c.batch {
        let mr = TILE_ROWS.min(c.batch - b0);
        staged!(c, panels.clone(), b0, mr, R, |p, dst| {
            by_rows!(tile_generic, R, mr, c, p, b0, dst; 1 2 3 4 5 6 7 8)
        });
        b0 += mr;
    }
}

/// The portable body over `panels` (compiled per ISA in `arch/`).
///
/// # Safety
/// `panels` within `c.w`, `c.xp` packed per tile of [`TILE_ROWS`] for
/// `c.batch` rows and `c.kp` inputs, `c.zp` one per row, and the caller owning the panels' columns of `Y`.
#[inline(always)]
pub(crate) unsafe fn panel_i8_body(c: &PanelCall<'_>, panels: Range<usize>) {
    match c.w.r {
        4 => body_generic::<4>(c, panels),
        8 => body_generic::<8>(c, panels),
        _ => body_generic::<16>(c, panels),
    }
}

/// `Y = dequant(Xq) · dequant(W)ᵀ (+ bias) (ReLU)` over the panels of an int8
/// block-sparse weight, with exact int32 accumulation; the output step is the
/// dense GEMM's (`OutputStep::Float`).
pub fn panel_i8_linear(
    ctx: &Ctx,
    w: &PanelI8,
    wq: &RowQuant,
    xq: &QuantX<'_>,
    batch: usize,
    bias: Option<&[f32]>,
    relu: bool,
) -> Result<Vec<f32>> {
    new_output((w.rows, w.cols), xq.q.len(), batch, bias, |y| {
        panel_i8_linear_into(ctx, w, wq, xq, batch, bias, relu, y)
    })
}

std::thread_local! {
    /// The regrouped activations (`Xp`), kept per thread.
    static XP: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// [`panel_i8_linear`] into `y` `(batch, N)`; the regrouped activations are
/// the caller thread's reused buffer, so a repeated call allocates nothing.
#[allow(clippy::too_many_arguments)]
pub fn panel_i8_linear_into(
    ctx: &Ctx,
    w: &PanelI8,
    wq: &RowQuant,
    xq: &QuantX<'_>,
    batch: usize,
    bias: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) -> Result<()> {
    check_shapes(w.rows, w.cols, xq.q.len(), batch, bias)?;
    check_quant_x(xq, batch, w.cols)?;
    let kern = super::driver::kernels();
    let n = w.rows;
    if batch.checked_mul(n) != Some(y.len()) {
        return shape_err!(
            "y has {} elements, expected (batch={batch}, out_features={n})",
            y.len()
        );
    }
    // The inner-loop operation is a 4-deep dot of one output lane.
    let work = (w.values.len() / 4).saturating_mul(batch.max(1));
    let step = output_step(xq, wq, bias, relu);
    let ep = step.prepare::<f32>(batch, n)?;
    if batch == 0 || n == 0 {
        return Ok(());
    }
    let (cols, kp) = (w.cols, w.cols.div_ceil(4) * 4);
    // Every byte is written by the packing (padding included).
    let mut xp = Reused::try_stale(&XP, batch.saturating_mul(kp), "the regrouped activations")?;
    if kp > 0 {
        let tiles = batch.div_ceil(TILE_ROWS);
        let dst = SyncPtr(xp.as_mut_ptr());
        ctx.for_each_task(batch * kp, tiles, |t| {
            let (b0, mr) = (t * TILE_ROWS, TILE_ROWS.min(batch - t * TILE_ROWS));
            // SAFETY: tile `t` alone writes its `mr · kp` bytes from `b0 · kp`.
            let d = unsafe { std::slice::from_raw_parts_mut(dst.get().add(b0 * kp), mr * kp) };
            pack_x4_into(&xq.q[b0 * cols..(b0 + mr) * cols], mr, cols, kp, mr, d);
        });
    }
    let call = PanelCall {
        w,
        xp: &xp,
        kp,
        batch,
        zp: xq.zero_point,
        ep: &ep,
        y: OutPtr(y.as_mut_ptr()),
    };
    // On the fork-join team, like the dense GEMM: the caller works too and
    // the workers poll between calls (rayon's install parked the caller and
    // woke the pool, which made 2 threads slower than 1 on the 2-vCPU VM).
    // Small tasks (about `PANEL_TASK_WORK` each) from the team's shared
    // counter: a thread slowed by a neighbour takes fewer of them.
    // A task spans at least half a staging tile of panels (`STAGE_COLS / 2`
    // outputs), so that the output step still runs over long rows; work too
    // small to split (a batch of one at high sparsity) stays on the caller.
    let min_panels = (STAGE_COLS / 2 / w.r).max(1);
    let ntasks = (work / PANEL_TASK_WORK).clamp(1, (w.panels() / min_panels).max(1));
    // SAFETY: the tasks' panels are disjoint ranges of `w`; `xp` is packed
    // for `kp` inputs and `batch` rows, `y` is `batch × n`.
    ctx.for_each_task(work, ntasks, |i| unsafe {
        (kern.panel_i8)(&call, balanced_part(&w.indptr, ntasks, i))
    });
    Ok(())
}

/// Whether [`panel_i8_linear_f32_into`] quantizes float rows inside the
/// product's tasks: when the batch gives every thread a tile of its own,
/// and has more than one. (Else the rows are quantized first and the panels
/// split; one tile gains nothing from the fusion, and its extra per-call
/// steps cost 0.2 µs of a 1.5 µs batch-1 layer.)
pub(crate) fn fuses_quantize(ctx: &Ctx, batch: usize) -> bool {
    batch.div_ceil(TILE_ROWS) >= ctx.threads().max(2)
}

/// The panel product of float `x` `(batch, K)`, quantized per row by the
/// one row quantizer, in one fork-join: each task takes one tile of
/// [`TILE_ROWS`] batch rows, quantizes and regroups them and runs every
/// panel over them. Quantizing all rows, packing, then splitting the panels
/// (three joins, the first two serial below the team's threshold) left a
/// serial part of a fifth of the call at batch 32 on two threads. The
/// tile's activations stay in L1 while the weights stream from L2.
#[allow(clippy::too_many_arguments)]
pub(crate) fn panel_i8_linear_f32_into(
    ctx: &Ctx,
    w: &PanelI8,
    wq: &RowQuant,
    x: &[f32],
    batch: usize,
    bias: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) -> Result<()> {
    check_shapes(w.rows, w.cols, x.len(), batch, bias)?;
    let n = w.rows;
    if batch.checked_mul(n) != Some(y.len()) {
        return shape_err!(
            "y has {} elements, expected (batch={batch}, out_features={n})",
            y.len()
        );
    }
    // The column scales and the bias are checked here once; the row scales
    // come from the quantizer (finite, > 0).
    let cols_step = OutputStep::Float {
        row_scale: Param::Scalar(1.0),
        col_scale: Param::PerIndex(&wq.scale),
        bias,
        relu,
    };
    cols_step.prepare::<f32>(batch, n)?;
    if batch == 0 || n == 0 {
        return Ok(());
    }
    let kern = super::driver::kernels();
    let quantize_row = crate::cpu::dispatch().quant.quantize_row;
    let (k, kp) = (w.cols, w.cols.div_ceil(4) * 4);
    let what = "the quantized activations";
    // Rows quantized into `kp` bytes (the quantizer zeroes the padding), the
    // regrouped tiles, the row scales and zero points: each task writes its
    // tile's part of every one.
    let mut q = Reused::try_stale(&XQ, batch.saturating_mul(kp), what)?;
    let mut xp = Reused::try_stale(&XP, batch.saturating_mul(kp), what)?;
    let mut scale = Reused::try_stale(&XQ_SCALE, batch, what)?;
    let mut zp = Reused::try_stale(&XQ_ZP, batch, what)?;
    let (qp, xpp, sp, zpp) = (
        SyncPtr(q.as_mut_ptr()),
        SyncPtr(xp.as_mut_ptr()),
        SyncPtr(scale.as_mut_ptr()),
        SyncPtr(zp.as_mut_ptr()),
    );
    let yp = SyncPtr(y.as_mut_ptr());
    let failed = std::sync::Mutex::new(None);
    let tiles = batch.div_ceil(TILE_ROWS);
    let work = (w.values.len() / 4 + k).saturating_mul(batch);
    ctx.for_each_task(work, tiles, |t| {
        let (b0, mr) = (t * TILE_ROWS, TILE_ROWS.min(batch - t * TILE_ROWS));
        // SAFETY: tile `t` alone writes rows b0..b0 + mr of `q`, `xp`,
        // `scale`, `zp` (each sized for `batch` rows) and of `y`.
        let (qt, xt, st, zt, yt) = unsafe {
            (
                std::slice::from_raw_parts_mut(qp.get().add(b0 * kp), mr * kp),
                std::slice::from_raw_parts_mut(xpp.get().add(b0 * kp), mr * kp),
                std::slice::from_raw_parts_mut(sp.get().add(b0), mr),
                std::slice::from_raw_parts_mut(zpp.get().add(b0), mr),
                yp.get().add(b0 * n),
            )
        };
        for r in 0..mr {
            let b = b0 + r;
            match quantize_row(&x[b * k..b * k + k], &mut qt[r * kp..(r + 1) * kp]) {
                Some((_, z, s)) => (st[r], zt[r]) = (s, z as u8),
                None => {
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(crate::quant::rows::not_finite(x, k, b));
                    return;
                }
            }
        }
        if kp > 0 {
            pack_x4_into(qt, mr, kp, kp, mr, xt);
        }
        let step = OutputStep::Float {
            row_scale: Param::PerIndex(st),
            col_scale: Param::PerIndex(&wq.scale),
            bias,
            relu,
        };
        // Only the lengths are checked, and they fit (checked above).
        let ep = match step.prepare_checked::<f32>(mr, n) {
            Ok(ep) => ep,
            Err(e) => {
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                return;
            }
        };
        let call = PanelCall {
            w,
            xp: xt,
            kp,
            batch: mr,
            zp: zt,
            ep: &ep,
            y: OutPtr(yt),
        };
        // SAFETY: every panel of `w`; `xt` is this tile packed for `kp`
        // inputs, `yt` its `mr` rows of `n` outputs.
        unsafe { (kern.panel_i8)(&call, 0..w.panels()) }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Inner-loop operations per panel task (a few µs of VNNI work).
const PANEL_TASK_WORK: usize = 1 << 15;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse::float::tests::lcg;

    /// The fused product of float rows (quantized inside its tasks) gives
    /// the bits of quantizing every row first and running the panels, on
    /// every ISA, for batches through every tile tail and 1 to 3 threads;
    /// a NaN or infinity is a `Value` error naming its row and column.
    #[test]
    fn fused_quantize_is_quantize_then_panels() {
        let mut s = 11u64;
        let (n, k) = (45, 70);
        let q: Vec<i8> = (0..n * k)
            .map(|i| {
                if (i / 4) % 3 == 1 {
                    0
                } else {
                    ((lcg(&mut s) % 255) as i64 - 127) as i8
                }
            })
            .collect();
        let wscale: Vec<f32> = (0..n).map(|o| 0.01 + o as f32 * 1e-3).collect();
        let bias: Vec<f32> = (0..n).map(|o| o as f32 * 0.25 - 2.0).collect();
        crate::cpu::each_isa(|isa| {
            for (r, c) in [(4, 4), (8, 4), (16, 4), (16, 8)] {
                let b = Bsr::from_dense(&q, n, k, None, r, c).unwrap();
                let rq = crate::sparse::formats::row_quant(n, wscale.clone(), |f| {
                    b.for_each_row_value(f)
                })
                .unwrap();
                let p = PanelI8::of_bsr(&b).unwrap().unwrap();
                for batch in [1usize, 7, 8, 9, 16, 17, 33] {
                    let x: Vec<f32> = (0..batch * k)
                        .map(|i| (lcg(&mut s) % 1000) as f32 * 0.013 - 6.0 + (i % k) as f32 * 0.01)
                        .collect();
                    let one = crate::exec::Ctx::new(1);
                    let (xq, sx, zx) =
                        crate::quant::rows::quantize_rows_u8(&one, &x, batch, k).unwrap();
                    let qx = QuantX {
                        q: &xq,
                        scale: &sx,
                        zero_point: &zx,
                    };
                    let relu = batch % 2 == 1;
                    let want =
                        panel_i8_linear(&one, &p, &rq, &qx, batch, Some(&bias), relu).unwrap();
                    for threads in 1..=3 {
                        let ctx = crate::exec::Ctx::new(threads);
                        let mut y = vec![f32::NAN; batch * n];
                        panel_i8_linear_f32_into(
                            &ctx,
                            &p,
                            &rq,
                            &x,
                            batch,
                            Some(&bias),
                            relu,
                            &mut y,
                        )
                        .unwrap();
                        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&y),
                            bits(&want),
                            "{isa:?} {r}x{c} batch {batch} threads {threads}"
                        );
                        let mut bad = x.clone();
                        bad[(batch - 1) * k + 5] = f32::INFINITY;
                        let e = panel_i8_linear_f32_into(
                            &ctx, &p, &rq, &bad, batch, None, false, &mut y,
                        )
                        .unwrap_err();
                        assert!(
                            e.to_string()
                                .contains(&format!("row {}, column 5", batch - 1)),
                            "{e}"
                        );
                        assert!(panel_i8_linear_f32_into(
                            &ctx,
                            &p,
                            &rq,
                            &x,
                            batch,
                            None,
                            false,
                            &mut y[1..]
                        )
                        .is_err());
                    }
                }
            }
        });
    }

    #[test]
    fn only_vnni_shaped_blocks_make_panels() {
        let q = vec![1i8; 16 * 16];
        for (r, c, ok) in [
            (16, 4, true),
            (8, 8, true),
            (4, 4, true),
            (1, 4, false),
            (2, 4, false),
            (16, 3, false),
        ] {
            let b = Bsr::from_dense(&q, 16, 16, None, r, c).unwrap();
            assert_eq!(PanelI8::of_bsr(&b).unwrap().is_some(), ok, "{r}x{c}");
        }
        // All-zero groups inside a stored block are skipped.
        let mut q = vec![0i8; 16 * 8];
        q[3] = 1;
        let b = Bsr::from_dense(&q, 16, 8, None, 16, 8).unwrap();
        let p = PanelI8::of_bsr(&b).unwrap().unwrap();
        assert_eq!((p.group.clone(), p.values.len()), (vec![0], 64));
    }
}
