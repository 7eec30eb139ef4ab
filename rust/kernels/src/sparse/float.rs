//! The float32 sparse products (BSR/CSR and N:M): the generic
//! `#[inline(always)]` bodies that `arch/` compiles per ISA, and their drivers.

use std::ops::Range;

use super::driver::{
    bp_of, check_shapes, kernels, new_output, Aligned, Rows, GEMV_MAX_BATCH, XPAD_F32, XT_F32,
};
use super::formats::{Bsr, Nm};
use crate::error::Result;
use crate::exec::{Ctx, SyncPtr};
use crate::gemm::reuse::Reused;
use crate::shape_err;

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
//
// The AXPY loop runs over batch panels: `Xt` is stored panel by panel, each
// at most [`PANEL`] columns wide and `(kp, width)` row-major, in a buffer
// aligned to a cache line (`Aligned`), so the gather of one `Xt` row is one
// or two whole lines. (Measured on Zen 4, 1024², 90 % sparse, batch 32: rows
// straddling lines cost 1.7x; tiling K so a panel's tile stays in L1 saved
// less than its per-row-tile bookkeeping and mispredicted loop exits cost,
// at about 13 blocks per row and tile, so the rows run through K at once.
// Again on Zen 5, CSR at 1024², 90 %, batch 128, one thread: 256-row K tiles
// over 64 rows a task, the sums kept in the same order, were 13 % slower;
// an `Xt` panel in L1 (K = 256) was no faster per stored value either.)

/// Widest batch panel of `Xt`: two zmm (four ymm) of accumulators a row.
const PANEL: usize = 32;

/// The batch panels of a transposed activation of `bp` columns (a multiple
/// of [`LANE`]): `(first column, width)`, width [`PANEL`] but the last's.
fn panels(bp: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..bp)
        .step_by(PANEL)
        .map(move |b0| (b0, PANEL.min(bp - b0)))
}

/// Side of the square blocks the transposing copies move at once.
const TILE: usize = 16;

/// One transposed block: `d[i · ds + j] = s[j · ss + i] (+ b[j]) (ReLU)`
/// for `i, j < 16` (no bias when `b` is null). Portable form of the per-ISA
/// `tile_f32` (`arch/`; the AVX-512 one shuffles registers): the same sums,
/// so every path stores the same values.
///
/// # Safety
/// `s` holds 16 rows of 16 floats `ss` apart, `d` 16 rows `ds` apart, `b`
/// 16 floats or null.
#[inline(always)]
pub(crate) unsafe fn tile_f32_body(
    s: *const f32,
    ss: usize,
    d: *mut f32,
    ds: usize,
    b: *const f32,
    relu: bool,
) {
    for i in 0..TILE {
        for j in 0..TILE {
            let mut v = *s.add(j * ss + i);
            if !b.is_null() {
                v += *b.add(j);
            }
            *d.add(i * ds + j) = if relu { v.max(0.0) } else { v };
        }
    }
}

/// Rows of `Xt` per transpose task: a band's writes (`BAND · w` floats)
/// stay in L1 while the reads run along `BAND` entries of each batch row.
const BAND: usize = 64;

/// `Xt` for the AXPY loop: panel `(b0, w)` at `b0 · kp`, holding
/// `Xt[k, b0 + t]` at `k · w + t`, zero padded to `(kp, bp)`; in the
/// caller's reused buffer, every element written, bands on the team.
fn transpose_panels(
    ctx: &Ctx,
    x: &[f32],
    batch: usize,
    k: usize,
    kp: usize,
    bp: usize,
) -> Result<Aligned<f32>> {
    let len = crate::error::checked_len(kp, bp, "the transposed activations")?;
    let mut xt = Aligned::stale(&XT_F32, len, "the transposed activations")?;
    let bands = kp.div_ceil(BAND);
    let dst = SyncPtr(xt.as_mut_slice().as_mut_ptr());
    let tile = kernels().tile_f32;
    ctx.for_each_task(len, bp.div_ceil(PANEL) * bands, |i| {
        let (b0, k0) = ((i / bands) * PANEL, (i % bands) * BAND);
        let (w, k1) = (PANEL.min(bp - b0), (k0 + BAND).min(kp));
        // SAFETY: task `i` alone writes rows `k0..k1` of panel `b0`, which
        // lies at `b0 · kp` (the panels before it are `PANEL` wide).
        let out = unsafe {
            std::slice::from_raw_parts_mut(dst.get().add(b0 * kp + k0 * w), (k1 - k0) * w)
        };
        let nk = k1.min(k).saturating_sub(k0);
        let valid = w.min(batch.saturating_sub(b0));
        for kk in 0..nk {
            out[kk * w + valid..(kk + 1) * w].fill(0.0);
        }
        out[nk * w..].fill(0.0);
        // Whole 16 × 16 blocks by the path's shuffles, the ragged edges element by element.
        let (vt, vk) = (valid - valid % TILE, nk - nk % TILE);
        for t0 in (0..vt).step_by(TILE) {
            for kk0 in (0..vk).step_by(TILE) {
                // SAFETY: rows `b0 + t0..+16` of `x` hold inputs `k0 + kk0..+16`
                // (`vt <= valid`, `vk <= nk`), and `out` rows `kk0..+16` columns `t0..+16`.
                unsafe {
                    let src = x.as_ptr().add((b0 + t0) * k + k0 + kk0);
                    let o = out.as_mut_ptr().add(kk0 * w + t0);
                    (tile)(src, k, o, w, std::ptr::null(), false);
                }
            }
        }
        for t in 0..valid {
            let src = &x[(b0 + t) * k + k0..(b0 + t) * k + k0 + nk];
            let done = if t < vt { vk } else { 0 };
            for (kk, &v) in src.iter().enumerate().skip(done) {
                out[kk * w + t] = v;
            }
        }
    });
    Ok(xt)
}

/// Output rows a task of the AXPY loop computes at most (its staging tile's
/// rows), and of the gather-dot.
const CHUNK_ROWS: usize = 64;
const GEMV_ROWS: usize = 16;
/// Batch columns a task computes at most (a multiple of [`PANEL`]): with
/// [`CHUNK_ROWS`], an 8 KiB staging tile that stays in L1 until it is stored.
/// (Measured on Zen 5 against 16 × 128 and 32 × 64 tasks, 1024² and 3072×768
/// at 90 %, batch 32 / 128, one thread: 64 × 32 was the fastest for CSR, 1×8
/// and 4×4, by 5-35 %: a task writes 64 outputs (four whole lines) of each
/// row of `Y` it touches, where 16 outputs wrote one line per 4 KiB row.)
const SLICE: usize = 32;

/// Stores a task's staging tile into `Y`: `Y[b0 + t, o0 + rr] = stage[rr · sw + t]
/// (+ bias) (ReLU)` for `rows` outputs from `o0` and `nb` batch rows.
///
/// # Safety
/// `y` holds `(b0 + nb) × n` values, `o0 + rows <= n`, `rows <= CHUNK_ROWS`,
/// and the caller owns that block of `Y`.
#[allow(clippy::too_many_arguments)]
unsafe fn store_tile(
    stage: &[f32],
    sw: usize,
    (o0, rows): (usize, usize),
    (b0, nb): (usize, usize),
    bias: Option<&[f32]>,
    relu: bool,
    y: SyncPtr<f32>,
    n: usize,
) {
    let mut bb = [0f32; CHUNK_ROWS];
    if let Some(b) = bias {
        bb[..rows].copy_from_slice(&b[o0..o0 + rows]);
    }
    // Whole 16 × 16 blocks by the path's shuffles, with the same `+ bb`
    // (zeros without a bias) as the element loop of the ragged edges.
    let (vt, vr) = (nb - nb % TILE, rows - rows % TILE);
    let tile = kernels().tile_f32;
    for t0 in (0..vt).step_by(TILE) {
        for r0 in (0..vr).step_by(TILE) {
            let dst = y.get().add((b0 + t0) * n + o0 + r0);
            tile(
                stage.as_ptr().add(r0 * sw + t0),
                sw,
                dst,
                n,
                bb.as_ptr().add(r0),
                relu,
            );
        }
    }
    for t in 0..nb {
        let done = if t < vt { vr } else { 0 };
        let dst = std::slice::from_raw_parts_mut(y.get().add((b0 + t) * n + o0), rows);
        for (rr, d) in dst.iter_mut().enumerate().skip(done) {
            let v = stage[rr * sw + t] + bb[rr];
            *d = if relu { v.max(0.0) } else { v };
        }
    }
}

/// `out[rr · os + t] = Σ_j W_j[rr, :] · Xt[block j's rows, t]` for one
/// block row's stored blocks `j0..j1`, `R` rows × `BT` batch columns: `U`
/// accumulator sets take consecutive blocks in turn so that `U·R·BT/16` FMA
/// chains are in flight. `x` is the panel at the tile's first column, rows
/// `xs` apart. `C1` fixes `c = 1` (CSR, `r×1`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn bsr_tile<
    const R: usize,
    const BT: usize,
    const U: usize,
    const C1: bool,
    const FMA: bool,
>(
    cols: *const u32,
    vals: *const f32,
    c: usize,
    (j0, j1): (usize, usize),
    x: *const f32,
    xs: usize,
    out: *mut f32,
    os: usize,
) {
    let c = if C1 { 1 } else { c };
    let mut acc = [[[0f32; BT]; R]; U];
    let mut j = j0;
    while j + U <= j1 {
        for u in 0..U {
            let base = *cols.add(j + u) as usize * c;
            let v = vals.add((j + u) * R * c);
            let mut cc = 0;
            while cc < c {
                let xr = x.add((base + cc) * xs);
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
    while j < j1 {
        let base = *cols.add(j) as usize * c;
        let v = vals.add(j * R * c);
        for cc in 0..c {
            let xr = x.add((base + cc) * xs);
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
            *out.add(rr * os + t) = sum;
        }
    }
}

/// The stored blocks `js` of one block row into its `R × w` slice of `Yt`
/// (`out`, rows `bp` apart), for a panel `x` of width `w` (16 or 32): the
/// register tile that fits `R` (16 columns at a time from `R = 8` on).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn bsr_panel<const R: usize, const C1: bool, const FMA: bool>(
    cols: *const u32,
    vals: *const f32,
    c: usize,
    js: (usize, usize),
    x: *const f32,
    w: usize,
    out: *mut f32,
    bp: usize,
) {
    if R == 1 {
        if w == PANEL {
            bsr_tile::<R, 32, 2, C1, FMA>(cols, vals, c, js, x, w, out, bp)
        } else {
            bsr_tile::<R, 16, 4, C1, FMA>(cols, vals, c, js, x, w, out, bp)
        }
    } else if R <= 4 {
        if w == PANEL {
            bsr_tile::<R, 32, 1, C1, FMA>(cols, vals, c, js, x, w, out, bp)
        } else {
            bsr_tile::<R, 16, 2, C1, FMA>(cols, vals, c, js, x, w, out, bp)
        }
    } else {
        for t0 in (0..w).step_by(16) {
            bsr_tile::<R, 16, 1, C1, FMA>(cols, vals, c, js, x.add(t0), w, out.add(t0), bp)
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
    let c = if C1 { 1 } else { w.c };
    let kp = w.cols.div_ceil(c) * c;
    debug_assert!(out.len() >= brs.len() * R * bp && xt.len() >= kp * bp);
    let (ip, cols, vals) = (w.indptr.as_ptr(), w.bcol.as_ptr(), w.values.as_ptr());
    for (b0, pw) in panels(bp) {
        let x = xt.as_ptr().add(b0 * kp);
        for (i, br) in brs.clone().enumerate() {
            let js = (*ip.add(br) as usize, *ip.add(br + 1) as usize);
            let o = out.as_mut_ptr().add(i * R * bp + b0);
            bsr_panel::<R, C1, FMA>(cols, vals, c, js, x, pw, o, bp);
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

/// Float BSR AXPY body for block rows `brs`, writing `R` rows of `Yt`
/// (`(rows, bp)`) each; `xt` in panels (`transpose_panels`).
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

/// `out[t] = Σ W[row, j] · Xt[col_j, t]` over the stored values of groups
/// `g0..g1` of one N:M row (`vals` / `offs` at the row's start; `n` values
/// per group of `m` columns): `U` accumulator sets take consecutive values
/// in turn. `x` is the panel, rows `xs` apart.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn nm_tile<const BT: usize, const U: usize, const FMA: bool>(
    vals: *const f32,
    offs: *const u8,
    (n, m): (usize, usize),
    (g0, g1): (usize, usize),
    x: *const f32,
    xs: usize,
    out: *mut f32,
) {
    let mut acc = [[0f32; BT]; U];
    let (mut j, j1) = (g0 * n, g1 * n);
    // The group base of value `j` and its place in the group, kept running
    // (no division per value).
    let (mut base, mut q) = (g0 * m, 0);
    let mut col = |j: usize| {
        let c = base + *offs.add(j) as usize;
        q += 1;
        if q == n {
            q = 0;
            base += m;
        }
        c
    };
    while j + U <= j1 {
        for u in 0..U {
            let xr = x.add(col(j + u) * xs);
            let wv = *vals.add(j + u);
            for t in 0..BT {
                acc[u][t] = fmadd::<FMA>(wv, *xr.add(t), acc[u][t]);
            }
        }
        j += U;
    }
    while j < j1 {
        let xr = x.add(col(j) * xs);
        let wv = *vals.add(j);
        for t in 0..BT {
            acc[0][t] = fmadd::<FMA>(wv, *xr.add(t), acc[0][t]);
        }
        j += 1;
    }
    for t in 0..BT {
        let mut sum = acc[0][t];
        for u in 1..U {
            sum += acc[u][t];
        }
        *out.add(t) = sum;
    }
}

/// Float N:M AXPY body for `rows`, writing their rows of `Yt` (`(rows, bp)`);
/// `xt` in panels (`transpose_panels`).
#[inline(always)]
pub(crate) unsafe fn nm_f32_body<const FMA: bool>(
    w: &Nm<f32>,
    rows: Range<usize>,
    xt: &[f32],
    bp: usize,
    out: &mut [f32],
) {
    debug_assert!(out.len() >= rows.len() * bp && xt.len() >= w.cols * bp);
    let (n, m) = (w.n, w.m);
    let groups = w.cols / m;
    let per = groups * n;
    for (b0, pw) in panels(bp) {
        let x = xt.as_ptr().add(b0 * w.cols);
        for (i, row) in rows.clone().enumerate() {
            let at = row * per;
            let (v, f) = (w.values.as_ptr().add(at), w.offsets.as_ptr().add(at));
            let o = out.as_mut_ptr().add(i * bp + b0);
            if pw == PANEL {
                nm_tile::<32, 2, FMA>(v, f, (n, m), (0, groups), x, pw, o)
            } else {
                nm_tile::<16, 4, FMA>(v, f, (n, m), (0, groups), x, pw, o)
            }
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
/// row, zero padded to the block grid) and `axpy` (the transposed batch),
/// into `y` `(batch, N)`: the gather-dot for a batch of at most
/// [`GEMV_MAX_BATCH`], else the AXPY loop. Both run on the team in tasks of
/// a few output rows that store their tile into `Y` with bias and ReLU
/// while it is in L1 (no `Yt` pass); the team's shared counter hands out
/// the tasks, so uneven rows still split evenly. The per-call buffers are
/// the caller thread's, reused: a repeated call allocates nothing.
#[allow(clippy::too_many_arguments)]
fn linear_into(
    ctx: &Ctx,
    g: &Rows,
    x: &[f32],
    batch: usize,
    bias: Option<&[f32]>,
    relu: bool,
    gemv: impl Fn(Range<usize>, &[f32], &mut [f32]) + Sync,
    axpy: impl Fn(Range<usize>, &[f32], usize, &mut [f32]) + Sync,
    y: &mut [f32],
) -> Result<()> {
    let n = g.n;
    if batch.checked_mul(n) != Some(y.len()) {
        return shape_err!(
            "y has {} elements, expected (batch={batch}, out_features={n})",
            y.len()
        );
    }
    if batch == 0 || n == 0 {
        return Ok(());
    }
    let units = g.units;
    let yp = SyncPtr(y.as_mut_ptr());
    // The output rows of chunk `c` of `per` units (clipped to `N`) and its units.
    let rows_of = |c: usize, per: usize| {
        let (u0, u1) = (c * per, ((c + 1) * per).min(units));
        let o0 = u0 * g.unit;
        (u0..u1, o0, (u1 * g.unit).min(n).saturating_sub(o0))
    };
    if batch <= GEMV_MAX_BATCH {
        // Partition units (block rows) per task: `GEMV_ROWS` output rows.
        let per = (GEMV_ROWS / g.unit).max(1);
        let chunks = units.div_ceil(per);
        let mut xpad = Reused::try_stale(&XPAD_F32, g.kp, "the padded activation row")?;
        for b in 0..batch {
            let row = &x[b * g.cols..(b + 1) * g.cols];
            let xr: &[f32] = if g.kp == g.cols {
                row
            } else {
                xpad[..g.cols].copy_from_slice(row);
                xpad[g.cols..].fill(0.0);
                &xpad
            };
            ctx.for_each_task(g.work / batch, chunks, |c| {
                let (us, o0, rows) = rows_of(c, per);
                let mut stage = [0f32; GEMV_ROWS];
                gemv(us, xr, &mut stage);
                // SAFETY: chunk `c` alone owns outputs `o0..o0 + rows` of row `b`.
                unsafe { store_tile(&stage, 1, (o0, rows), (b, 1), bias, relu, yp, n) }
            });
        }
        return Ok(());
    }
    let bp = bp_of(batch);
    let xt = transpose_panels(ctx, x, batch, g.cols, g.kp, bp)?;
    let xt = xt.as_slice();
    let per = (CHUNK_ROWS / g.unit).max(1);
    let chunks = units.div_ceil(per);
    let slices = bp.div_ceil(SLICE);
    // Slice-major: the tasks of one batch slice run together, over its panels of `Xt`.
    ctx.for_each_task(g.work, slices * chunks, |i| {
        let (s0, c) = ((i / chunks) * SLICE, i % chunks);
        let sw = SLICE.min(bp - s0);
        let (us, o0, rows) = rows_of(c, per);
        let mut stage = [0f32; CHUNK_ROWS * SLICE];
        // The slice's panels start at `s0 · kp` (those before it are `PANEL` wide).
        axpy(
            us.clone(),
            &xt[s0 * g.kp..(s0 + sw) * g.kp],
            sw,
            &mut stage[..us.len() * g.unit * sw],
        );
        let nb = sw.min(batch - s0);
        // SAFETY: task `i` alone owns outputs `o0..o0 + rows` of batch rows `s0..s0 + nb`.
        unsafe { store_tile(&stage, sw, (o0, rows), (s0, nb), bias, relu, yp, n) }
    });
    Ok(())
}

/// [`bsr_f32_linear`] into `y` `(batch, N)`, allocating nothing on a repeated call.
pub fn bsr_f32_linear_into(
    ctx: &Ctx,
    w: &Bsr<f32>,
    x: &[f32],
    batch: usize,
    bias: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) -> Result<()> {
    check_shapes(w.rows, w.cols, x.len(), batch, bias)?;
    let k = kernels();
    // SAFETY (both bodies): `linear_into` hands them the row ranges and buffers
    // sized from `Rows::of_bsr`, the bounds the bodies rely on.
    let gemv = |rg, x: &[f32], out: &mut [f32]| unsafe { (k.bsr_f32_gemv)(w, rg, x, out) };
    let axpy = |rg, xt: &[f32], bp, out: &mut [f32]| unsafe { (k.bsr_f32)(w, rg, xt, bp, out) };
    let g = Rows::of_bsr(w, batch);
    linear_into(ctx, &g, x, batch, bias, relu, gemv, axpy, y)
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
    new_output((w.rows, w.cols), x.len(), batch, bias, |y| {
        bsr_f32_linear_into(ctx, w, x, batch, bias, relu, y)
    })
}

/// [`nm_f32_linear`] into `y` `(batch, N)`, allocating nothing on a repeated call.
pub fn nm_f32_linear_into(
    ctx: &Ctx,
    w: &Nm<f32>,
    x: &[f32],
    batch: usize,
    bias: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) -> Result<()> {
    check_shapes(w.rows, w.cols, x.len(), batch, bias)?;
    let k = kernels();
    // SAFETY (both bodies): as in `bsr_f32_linear_into`, with `Rows::of_nm`.
    let gemv = |rg, x: &[f32], out: &mut [f32]| unsafe { (k.nm_f32_gemv)(w, rg, x, out) };
    let axpy = |rg, xt: &[f32], bp, out: &mut [f32]| unsafe { (k.nm_f32)(w, rg, xt, bp, out) };
    let g = Rows::of_nm(w, batch);
    linear_into(ctx, &g, x, batch, bias, relu, gemv, axpy, y)
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
    new_output((w.rows, w.cols), x.len(), batch, bias, |y| {
        nm_f32_linear_into(ctx, w, x, batch, bias, relu, y)
    })
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
    fn a_wrong_output_length_is_a_shape_error() {
        let b = Bsr::from_dense(&[1.0f32; 12], 3, 4, None, 1, 1).unwrap();
        let mut y = vec![0f32; 5];
        let e = bsr_f32_linear_into(&crate::exec::TEST, &b, &[0.0; 8], 2, None, false, &mut y);
        assert!(matches!(e, Err(crate::error::Error::Shape(_))), "{e:?}");
    }

    #[test]
    fn float_formats_match_dense_on_every_isa() {
        let mut s = 3u64;
        // One task of output rows, and several (`CHUNK_ROWS`) with a ragged last.
        for (n, k) in [(37, 44), (150, 72)] {
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
                // Tails of every panel, tile and batch slice (`SLICE`).
                for &batch in &[1usize, 2, 3, 17, 32, 33, 70, 128, 130, 161] {
                    let x: Vec<f32> = (0..batch * k)
                        .map(|_| (lcg(&mut s) % 7) as f32 - 3.0)
                        .collect();
                    let want = dense_ref(&w, n, k, &x, batch);
                    for (r, c) in [(1, 1), (1, 4), (4, 1), (2, 2), (4, 4), (8, 8), (16, 3)] {
                        let b = Bsr::from_dense(&w, n, k, None, r, c).unwrap();
                        let y =
                            bsr_f32_linear(&crate::exec::TEST, &b, &x, batch, None, false).unwrap();
                        for (a, e) in y.iter().zip(&want) {
                            assert_eq!(*a as f64, *e, "isa {isa:?} block {r}x{c} batch {batch}");
                        }
                        // Bias and ReLU in the tile store; `_into` over a stale `y`.
                        let bias: Vec<f32> = (0..n).map(|o| o as f32 - 18.0).collect();
                        let mut y = vec![f32::NAN; batch * n];
                        let ctx = &crate::exec::TEST;
                        bsr_f32_linear_into(ctx, &b, &x, batch, Some(&bias), true, &mut y).unwrap();
                        for (i, (a, e)) in y.iter().zip(&want).enumerate() {
                            let e = (*e + bias[i % n] as f64).max(0.0);
                            assert_eq!(
                                *a as f64, e,
                                "isa {isa:?} block {r}x{c} batch {batch} bias"
                            );
                        }
                    }
                    // 2:4: the first two of every four inputs kept.
                    let mask: Vec<bool> = (0..n * k).map(|i| i % 4 < 2).collect();
                    let nm = Nm::from_dense(&w, n, k, Some(&mask), 2, 4).unwrap();
                    let want = dense_ref(&nm.to_dense(), n, k, &x, batch);
                    let y = nm_f32_linear(&crate::exec::TEST, &nm, &x, batch, None, false).unwrap();
                    for (a, e) in y.iter().zip(&want) {
                        assert_eq!(*a as f64, *e, "isa {isa:?} 2:4 batch {batch}");
                    }
                }
            });
        }
    }
}
