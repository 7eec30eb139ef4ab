//! int4 weights × uint8 activations: packed nibbles, per-channel or per-group
//! scales, exact int32 group sums, float output.
//!
//! # The weight
//!
//! A Linear weight `(N, K)` of 4-bit codes `u ∈ [0, 15]`, two per byte in the
//! canonical (file / ONNX `MatMulNBits`) order: row `n` is `ceil(K/2)` bytes,
//! byte `i` holds `u[n, 2i]` in its low nibble and `u[n, 2i+1]` in its high
//! one. The integer weight is `w = u - z` with a zero point `z ∈ [0, 15]` per
//! `(n, group)`; symmetric weights have `z = 8`, so `w ∈ [-8, 7]`. Groups run
//! along K: `group_size` `G` (a multiple of 8) or one group per output channel
//! (`G = K`); the last group may be short (`K mod G`). Each `(n, group)` has a
//! float scale `s`.
//!
//! [`Int4Weight::new`] repacks the codes once for the kernels: blocks of 16
//! columns, each a run of 64-byte steps covering 8 values of K, byte
//! `4j + t` of step `p` holding `u[16b + j, 8p + t]` (low nibble) and
//! `u[16b + j, 8p + 4 + t]` (high nibble). One step is two `vpdpbusd`
//! operands (low nibbles: K 0..3, high: K 4..7 of 16 columns) after a mask
//! and a shift, the same bytes feed the AVX2 `vpmaddubsw` path as two halves,
//! and the weight stays 4 bits wide in memory (GEMV is memory-bound).
//!
//! # What is exact
//!
//! Activations are quantized per row by the one activation quantizer
//! ([`crate::quant::rows`]): `x_q ∈ [0, 255]` with a scale `xs` and zero
//! point `xz` per row. The kernels read them as `x' = x_q − 128 ∈ [−128, 127]`
//! (an `xor 0x80` of the byte, so the weights can be the unsigned operand of
//! `vpdpbusd` and the high nibble needs no shift) and compute, exactly in
//! int32 on every path, the *centred group sums*
//!
//! ```text
//! Q[m, n, g] = Σ_{k in g} (x_q[m, k] − 128) · w[n, k]          (|Q| ≤ G·128·15)
//! ```
//!
//! from which the group sums of the activations as quantized follow exactly,
//! `D = Σ_{k in g} x_q·w = Q + 128·T` and `Σ (x_q − xz)·w = Q + (128 − xz)·T`
//! with `T[n, g] = Σ_{k in g} w[n, k]` ([`group_sums`] returns `D`). Then,
//! in float32:
//!
//! * one group per channel: the exact total `Q + (128 − xz[m])·T[n]` goes
//!   through the shared output step
//!   ([`crate::gemm::output::OutputStep::Float`]), so the result is
//!   `((acc · xs[m]) · s[n]) + bias[n]` as in every int8 layer;
//! * per-group scales: `f = Σ_g f32(Q_g) · s[n, g]` (products and sums in
//!   f32, groups in order, no fused multiply-add, on every path), then
//!   `y = ((f + f32(128 − xz[m]) · C[n]) · xs[m]) + bias[n]` with
//!   `C[n] = f32(Σ_g s[n, g] · T[n, g])` (summed in f64), then ReLU. `Q_g` is
//!   exactly representable in f32 for `G ≤ 8738`, so every path gives the
//!   same bits.
//!
//! A group longer than [`MAX_GROUP_LEN`] could overflow the int32
//! accumulators of the high nibbles (`(16·u) · x'`, up to `240·128` a term)
//! and is a `Value` error (a per-channel weight with that many inputs
//! included: use groups).

#[doc(hidden)]
pub mod arch;
#[cfg(test)]
mod tests;

use crate::error::{try_vec, Result};
use crate::exec::{Ctx, SyncPtr};
use crate::gemm::output::{OutputStep, Param};
use crate::{cpu, quant, shape_err, value_err};

/// Values of K per packed step (two `vpdpbusd` operands of 4 each).
pub const STEP_K: usize = 8;
/// Columns per packed block.
pub const BLOCK_N: usize = 16;
const STEP_BYTES: usize = STEP_K * BLOCK_N / 2;
/// Longest group whose accumulators fit int32 (`G · 240 · 128 < 2^31`).
pub const MAX_GROUP_LEN: usize = 1 << 16;
/// Rows and blocks one kernel call covers at most (see `arch::Tile`).
const TILE_ROWS: usize = 8;
const TILE_BLOCKS: usize = 8;
/// Blocks of the unit one row's share of the columns is cut in (see `drive`).
const RUN_BLOCKS: usize = 4;

/// int4 weights packed for the kernels (see the module doc).
#[derive(Debug, Clone)]
pub struct Int4Weight {
    n: usize,
    k: usize,
    /// The group length along K (`k` for one group per channel).
    group: usize,
    per_channel: bool,
    ng: usize,
    /// K padded to a multiple of [`STEP_K`].
    kp: usize,
    /// Steps per group (`ceil(group / 8)`).
    gsteps: usize,
    nblk: usize,
    symmetric: bool,
    /// `nblk × kp/8` steps of 64 bytes.
    data: Vec<u8>,
    /// Per `(block, group)`, 16 columns each: scale and zero point.
    scale_blk: Vec<f32>,
    zp_blk: Vec<u8>,
    /// Canonical `(n, group)` scales and `T = Σ w` over each group.
    scales: Vec<f32>,
    tsum: Vec<i32>,
    /// `C[n] = Σ_g s·T` (grouped output), `T[n]` (per-channel output).
    zcorr: Vec<f32>,
    tsum_col: Vec<i32>,
}

impl Int4Weight {
    /// Packs `(n, k)` int4 codes given in the canonical nibble order
    /// (`n × ceil(k/2)` bytes), with `group` (`None`: one group per output
    /// channel; else a multiple of 8), `scales` `(n, ngroups)` (finite and
    /// positive) and `zero_points` `(n, ngroups)` in `[0, 15]` (`None`:
    /// symmetric, `z = 8`). The high nibble of a row's last byte is
    /// ignored when `k` is odd.
    pub fn new(
        packed: &[u8],
        n: usize,
        k: usize,
        group: Option<usize>,
        scales: &[f32],
        zero_points: Option<&[u8]>,
    ) -> Result<Int4Weight> {
        if k == 0 {
            return shape_err!("an int4 weight needs in_features >= 1; got 0");
        }
        let (group, per_channel) = match group {
            None => (k, true),
            Some(g) if g == 0 || !g.is_multiple_of(STEP_K) => {
                return value_err!("group_size must be a positive multiple of {STEP_K}; got {g}")
            }
            Some(g) => (g, false),
        };
        let glen = group.min(k);
        if glen > MAX_GROUP_LEN {
            return value_err!(
                "a group of {glen} inputs could overflow the int32 sums (at most {MAX_GROUP_LEN}); \
                 use group_size"
            );
        }
        let ng = k.div_ceil(group);
        let row_bytes = k.div_ceil(2);
        if n.checked_mul(row_bytes) != Some(packed.len()) {
            return shape_err!(
                "packed has {} bytes, expected out_features * ceil(in_features / 2) = {n} * {row_bytes}",
                packed.len()
            );
        }
        let nng = n.checked_mul(ng);
        if nng != Some(scales.len()) {
            return shape_err!("scales has {} elements, expected ({n}, {ng})", scales.len());
        }
        if let Some(i) = scales.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return value_err!(
                "scales must be finite and > 0; got {} at ({}, {})",
                scales[i],
                i / ng,
                i % ng
            );
        }
        if let Some(z) = zero_points {
            if z.len() != scales.len() {
                return shape_err!("zero_points has {} elements, expected ({n}, {ng})", z.len());
            }
            if let Some(i) = z.iter().position(|&v| v > 15) {
                return value_err!(
                    "zero_points must lie in [0, 15]; got {} at ({}, {})",
                    z[i],
                    i / ng,
                    i % ng
                );
            }
        }
        let kp = k.div_ceil(STEP_K) * STEP_K;
        let ksteps = kp / STEP_K;
        let gsteps = group.div_ceil(STEP_K);
        let nblk = n.div_ceil(BLOCK_N);
        let too_big = || shape_err!("an int4 weight of shape ({n}, {k}) is too large");
        let Some(data_len) = nblk
            .checked_mul(ksteps)
            .and_then(|v| v.checked_mul(STEP_BYTES))
        else {
            return too_big();
        };
        let Some(blk_len) = nblk.checked_mul(ng).and_then(|v| v.checked_mul(BLOCK_N)) else {
            return too_big();
        };
        let mut data = try_vec(data_len, 0u8, "the packed int4 weight")?;
        let mut scale_blk = try_vec(blk_len, 1.0f32, "the int4 scales")?;
        let mut zp_blk = try_vec(blk_len, 8u8, "the int4 zero points")?;
        let mut tsum = try_vec(n * ng, 0i32, "the int4 group sums")?;
        let mut zcorr = try_vec(n, 0.0f32, "the int4 zero-point terms")?;
        let mut tsum_col = try_vec(n, 0i32, "the int4 column sums")?;
        for c in 0..n {
            let (b, j) = (c / BLOCK_N, c % BLOCK_N);
            let row = &packed[c * row_bytes..(c + 1) * row_bytes];
            for kk in 0..k {
                let u = (row[kk / 2] >> (4 * (kk % 2))) & 15;
                let g = kk / group;
                let z = zero_points.map_or(8, |z| z[c * ng + g]);
                tsum[c * ng + g] += i32::from(u) - i32::from(z);
                let (p, t) = (kk / STEP_K, kk % STEP_K);
                let byte = &mut data[(b * ksteps + p) * STEP_BYTES + 4 * j + t % 4];
                *byte |= u << (4 * (t / 4));
            }
            let mut cterm = 0.0f64;
            for g in 0..ng {
                let i = (b * ng + g) * BLOCK_N + j;
                scale_blk[i] = scales[c * ng + g];
                zp_blk[i] = zero_points.map_or(8, |z| z[c * ng + g]);
                cterm += f64::from(scales[c * ng + g]) * f64::from(tsum[c * ng + g]);
                tsum_col[c] += tsum[c * ng + g];
            }
            zcorr[c] = cterm as f32;
        }
        Ok(Int4Weight {
            n,
            k,
            group,
            per_channel,
            ng,
            kp,
            gsteps,
            nblk,
            symmetric: zero_points.is_none(),
            data,
            scale_blk,
            zp_blk,
            scales: scales.to_vec(),
            tsum,
            zcorr,
            tsum_col,
        })
    }

    /// Output features (N).
    pub fn n(&self) -> usize {
        self.n
    }
    /// Input features (K).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Groups along K per output channel.
    pub fn ngroups(&self) -> usize {
        self.ng
    }
    /// The group length (`None`: one group per output channel).
    pub fn group_size(&self) -> Option<usize> {
        (!self.per_channel).then_some(self.group)
    }
    /// Whether the zero points are all 8 (no zero points stored).
    pub fn is_symmetric(&self) -> bool {
        self.symmetric
    }
    /// `T[n, g] = Σ_{k in g} w[n, k]`, `(n, ngroups)`.
    pub fn weight_sums(&self) -> &[i32] {
        &self.tsum
    }
    /// Bytes held by the packed form (nibbles, scales, zero points, sums).
    pub fn nbytes(&self) -> usize {
        self.data.len()
            + 4 * self.scale_blk.len()
            + if self.symmetric { 0 } else { self.zp_blk.len() }
            + 4 * (self.scales.len() + self.tsum.len() + self.zcorr.len() + self.tsum_col.len())
    }

    /// Steps `s0..s1` of group `g`.
    #[inline(always)]
    pub(crate) fn group_steps(&self, g: usize) -> (usize, usize) {
        let s0 = g * self.gsteps;
        (s0, (s0 + self.gsteps).min(self.kp / STEP_K))
    }
}

/// Reusable buffers of [`linear_into`]: the rows of `x` quantized, padded to
/// `kp` with zeros and centred, their sums per group, scales and zero points.
/// Grown by [`Int4Scratch::reserve`] (or by the call that needs more), never
/// shrunk, so a caller that keeps one allocates nothing from call to call.
#[derive(Debug, Default)]
pub struct Int4Scratch {
    q: Vec<u8>,
    xsum: Vec<i32>,
    scale: Vec<f32>,
    zp: Vec<i32>,
}

/// Grows `v` to `len` elements; whether it grew.
fn grow_to<T: Clone + Default>(v: &mut Vec<T>, len: usize) -> Result<bool> {
    if v.len() >= len {
        return Ok(false);
    }
    if v.try_reserve_exact(len - v.len()).is_err() {
        return Err(crate::Error::Alloc(format!(
            "cannot allocate {len} elements for the int4 layer's activations"
        )));
    }
    v.resize(len, T::default());
    Ok(true)
}

impl Int4Scratch {
    /// Sizes the buffers for `m` rows of input to `w`; returns how many
    /// buffers grew (0 when they were already large enough).
    pub fn reserve(&mut self, m: usize, w: &Int4Weight) -> Result<usize> {
        let (Some(len), Some(slen)) = (m.checked_mul(w.kp), m.checked_mul(w.ng)) else {
            return shape_err!("x with {m} rows of {} inputs is too large", w.k);
        };
        Ok(usize::from(grow_to(&mut self.q, len)?)
            + usize::from(grow_to(&mut self.xsum, slen)?)
            + usize::from(grow_to(&mut self.scale, m)?)
            + usize::from(grow_to(&mut self.zp, m)?))
    }
}

fn a_buffers(m: usize, w: &Int4Weight) -> Result<(Vec<u8>, Vec<i32>)> {
    let Some(len) = m.checked_mul(w.kp) else {
        return shape_err!("x with {m} rows of {} inputs is too large", w.k);
    };
    let Some(slen) = m.checked_mul(w.ng) else {
        return shape_err!("x with {m} rows is too large");
    };
    Ok((
        try_vec(len, 0u8, "the quantized activations")?,
        try_vec(slen, 0i32, "the activation group sums")?,
    ))
}

/// Centres one padded row of `x_q` in place (`x' = x_q − 128` as the byte
/// `x_q ^ 0x80`, padding left 0) and writes `Σ x'` of each group to `out`.
fn centre_row(q: &mut [u8], w: &Int4Weight, out: &mut [i32]) {
    for (g, o) in out.iter_mut().enumerate() {
        let lo = g * w.group;
        let hi = (lo + w.group).min(w.k);
        let mut sum = 0i32;
        for v in &mut q[lo..hi] {
            sum += i32::from(*v) - 128;
            *v ^= 0x80;
        }
        *o = sum;
    }
}

/// Quantizes the `m` rows of `x` into `a` (sized by [`Int4Scratch::reserve`])
/// and centres them for the kernel.
fn quantize_a(ctx: &Ctx, x: &[f32], m: usize, w: &Int4Weight, a: &mut Int4Scratch) -> Result<()> {
    let (k, kp) = (w.k, w.kp);
    let bad = std::sync::atomic::AtomicUsize::new(usize::MAX);
    {
        let (qp, sp, zp) = (
            SyncPtr(a.q.as_mut_ptr()),
            SyncPtr(a.scale.as_mut_ptr()),
            SyncPtr(a.zp.as_mut_ptr()),
        );
        ctx.for_each_task(x.len(), m, |r| {
            // SAFETY: row `r` alone owns its `kp` bytes of `q` and entry `r`
            // of the scales and zero points (sized for `m` rows by `reserve`).
            let qr = unsafe { std::slice::from_raw_parts_mut(qp.get().add(r * kp), kp) };
            match quant::rows::quantize_row_u8(&x[r * k..(r + 1) * k], qr) {
                Some((_, z, s)) => unsafe {
                    *sp.get().add(r) = s;
                    *zp.get().add(r) = z;
                },
                None => {
                    bad.fetch_min(r, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    let r = bad.into_inner();
    if r != usize::MAX {
        let row = &x[r * k..(r + 1) * k];
        let col = row.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return value_err!("x is not finite at row {r}, column {col}");
    }
    for r in 0..m {
        centre_row(
            &mut a.q[r * kp..(r + 1) * kp],
            w,
            &mut a.xsum[r * w.ng..(r + 1) * w.ng],
        );
    }
    Ok(())
}

fn check_x(len: usize, m: usize, k: usize, w: &Int4Weight) -> Result<()> {
    if k != w.k {
        return shape_err!(
            "x has {k} features but the weight has in_features = {}",
            w.k
        );
    }
    if m.checked_mul(k) != Some(len) {
        return shape_err!("x has {len} elements, expected {m}*{k}");
    }
    Ok(())
}

/// What a tile's kernel call writes (see `arch::Out`), as the driver asks.
#[derive(Clone, Copy)]
enum Mode {
    /// `D` per group, into the `(M, N, ngroups)` output.
    Groups,
    /// One group per channel: the exact total, then the output step.
    Total,
    /// `Σ_g f32(D_g)·s`, then the grouped float formula.
    Scaled,
}

/// `finish(rows, cols, tile)` of [`drive`].
type Finish<'a> = dyn Fn(std::ops::Range<usize>, std::ops::Range<usize>, &mut Tile) + Sync + 'a;

/// Runs the tile kernel over the whole `M × N` output, threads over runs of
/// column blocks; `finish(rows, cols, tile)` runs on each tile while hot.
///
/// One row (a GEMV, bound by the weight streaming in from L3 or memory):
/// a few runs of blocks per thread, shrinking ([`crate::gemm::guided`],
/// biggest first, cut on [`RUN_BLOCKS`]), each streamed front to back, so
/// the thread that finishes last waits on a few blocks (one task per 4
/// blocks, a new set of streams for the prefetchers every 128 KiB, ran
/// 1×4096×4096 ~10% slower on one thread). More rows: one tile of blocks a
/// task (its rows reuse it from L2).
#[allow(clippy::too_many_arguments)]
fn drive(
    ctx: &Ctx,
    w: &Int4Weight,
    q: &[u8],
    xsum: &[i32],
    m: usize,
    mode: Mode,
    groups_out: Option<SyncPtr<i32>>,
    finish: &Finish<'_>,
) {
    let tile_fn = cpu::dispatch().int4.tile;
    let work = m.saturating_mul(w.kp).saturating_mul(w.n);
    let runs = w.nblk.div_ceil(RUN_BLOCKS);
    let tasks = if m == 1 {
        ctx.chunks_for(work).min(runs).max(1)
    } else {
        w.nblk.div_ceil(TILE_BLOCKS)
    };
    ctx.for_each_task(work, tasks, |t| {
        let span = if m == 1 {
            let r = crate::gemm::guided(runs, tasks, t);
            r.start * RUN_BLOCKS..(r.end * RUN_BLOCKS).min(w.nblk)
        } else {
            t * TILE_BLOCKS..((t + 1) * TILE_BLOCKS).min(w.nblk)
        };
        let mut buf = Tile::default();
        for blk in span.clone().step_by(TILE_BLOCKS) {
            let nb = TILE_BLOCKS.min(span.end - blk);
            let cols = blk * BLOCK_N..((blk + nb) * BLOCK_N).min(w.n);
            for r0 in (0..m).step_by(TILE_ROWS) {
                let rows = TILE_ROWS.min(m - r0);
                let out = match (mode, groups_out) {
                    (Mode::Groups, Some(p)) => {
                        // SAFETY: (r0, cols.start, 0) of the (M, N, ng) output.
                        arch::Out::Groups(
                            unsafe { p.get().add((r0 * w.n + cols.start) * w.ng) },
                            w.n * w.ng,
                        )
                    }
                    (Mode::Scaled, _) => arch::Out::Scaled(buf.f.as_mut_ptr(), TILE_COLS),
                    _ => arch::Out::Groups(buf.i.as_mut_ptr(), TILE_COLS),
                };
                let job = arch::Job {
                    w,
                    blk,
                    nb,
                    rows,
                    x: &q[r0 * w.kp..(r0 + rows) * w.kp],
                    xsum: &xsum[r0 * w.ng..(r0 + rows) * w.ng],
                    out,
                };
                // SAFETY: blocks, rows and the output tile are within bounds
                // (`Job`'s contract); tasks write disjoint columns.
                unsafe { tile_fn(&job) };
                if !matches!(mode, Mode::Groups) {
                    finish(r0..r0 + rows, cols.clone(), &mut buf);
                }
            }
        }
    });
}

const TILE_COLS: usize = TILE_BLOCKS * BLOCK_N;

/// One task's tile of results (`TILE_ROWS × TILE_COLS`, row stride `TILE_COLS`).
pub(crate) struct Tile {
    i: [i32; TILE_ROWS * TILE_COLS],
    f: [f32; TILE_ROWS * TILE_COLS],
}

impl Default for Tile {
    fn default() -> Self {
        Tile {
            i: [0; TILE_ROWS * TILE_COLS],
            f: [0.0; TILE_ROWS * TILE_COLS],
        }
    }
}

/// The exact group sums `D[m, n, g] = Σ_{k in g} x_q[m, k] · w[n, k]` of
/// uint8 activations `x_q` `(m, k)`, as an `(m, n, ngroups)` vector.
pub fn group_sums(ctx: &Ctx, x_q: &[u8], m: usize, k: usize, w: &Int4Weight) -> Result<Vec<i32>> {
    check_x(x_q.len(), m, k, w)?;
    let (mut q, mut xsum) = a_buffers(m, w)?;
    for r in 0..m {
        q[r * w.kp..r * w.kp + k].copy_from_slice(&x_q[r * k..(r + 1) * k]);
        centre_row(
            &mut q[r * w.kp..(r + 1) * w.kp],
            w,
            &mut xsum[r * w.ng..(r + 1) * w.ng],
        );
    }
    let Some(len) = m.checked_mul(w.n).and_then(|v| v.checked_mul(w.ng)) else {
        return shape_err!("group sums of shape ({m}, {}, {}) are too large", w.n, w.ng);
    };
    let mut out = try_vec(len, 0i32, "the group sums")?;
    let p = SyncPtr(out.as_mut_ptr());
    drive(ctx, w, &q, &xsum, m, Mode::Groups, Some(p), &|_, _, _| {});
    // D = Q + 128·T.
    for row in out.chunks_exact_mut((w.n * w.ng).max(1)) {
        for (d, t) in row.iter_mut().zip(&w.tsum) {
            *d = d.wrapping_add(t.wrapping_mul(128));
        }
    }
    Ok(out)
}

/// The float-in / float-out int4 linear layer: each row of `x` `(m, k)` is
/// quantized to uint8 ([`crate::quant::rows`]), multiplied by the int4
/// weight with exact int32 group sums and written as float32 `(m, n)` by the
/// formulas of the module doc (`bias` of `n`, then ReLU if `relu`).
pub fn linear(
    ctx: &Ctx,
    x: &[f32],
    m: usize,
    k: usize,
    w: &Int4Weight,
    bias: Option<&[f32]>,
    relu: bool,
) -> Result<Vec<f32>> {
    check_x(x.len(), m, k, w)?;
    let Some(len) = m.checked_mul(w.n) else {
        return shape_err!("output of shape ({m}, {}) is too large", w.n);
    };
    let mut out = try_vec(len, 0.0f32, "the int4 layer's output")?;
    linear_into(
        ctx,
        x,
        m,
        k,
        w,
        bias,
        relu,
        &mut Int4Scratch::default(),
        &mut out,
    )?;
    Ok(out)
}

/// [`linear`] into the caller's `out` (`m × n`), with the caller's reusable
/// `scratch`: with a scratch already sized for `m` rows (and a `bias`, which
/// saves the output step its zero vector), it allocates nothing.
#[allow(clippy::too_many_arguments)]
pub fn linear_into(
    ctx: &Ctx,
    x: &[f32],
    m: usize,
    k: usize,
    w: &Int4Weight,
    bias: Option<&[f32]>,
    relu: bool,
    scratch: &mut Int4Scratch,
    out: &mut [f32],
) -> Result<()> {
    check_x(x.len(), m, k, w)?;
    if let Some(b) = bias {
        if b.len() != w.n {
            return shape_err!("bias must have {} elements; got {}", w.n, b.len());
        }
    }
    if m.checked_mul(w.n) != Some(out.len()) {
        return shape_err!("out has {} elements, expected {m}*{}", out.len(), w.n);
    }
    scratch.reserve(m, w)?;
    quantize_a(ctx, x, m, w, scratch)?;
    let a = &*scratch;
    let op = SyncPtr(out.as_mut_ptr());
    let n = w.n;
    if w.per_channel {
        let step = OutputStep::Float {
            row_scale: Param::PerIndex(&a.scale[..m]),
            col_scale: Param::PerIndex(&w.scales),
            bias,
            relu,
        };
        let ep = step.prepare::<f32>(m, n)?;
        drive(
            ctx,
            w,
            &a.q[..m * w.kp],
            &a.xsum[..m * w.ng],
            m,
            Mode::Total,
            None,
            &|rows, cols, tile| {
                // The exact totals in place (a copy of the tile per call
                // cost a 4 KiB memset per 128 columns of a row).
                for (ri, r) in rows.clone().enumerate() {
                    let zterm = 128 - a.zp[r];
                    let row = &mut tile.i[ri * TILE_COLS..][..cols.len()];
                    for (v, t) in row.iter_mut().zip(&w.tsum_col[cols.clone()]) {
                        *v = v.wrapping_add(zterm.wrapping_mul(*t));
                    }
                }
                // SAFETY: this task alone writes columns `cols` of `out`.
                unsafe { ep.apply_raw(&tile.i, TILE_COLS, rows, cols, op.get(), n) };
            },
        );
    } else {
        drive(
            ctx,
            w,
            &a.q[..m * w.kp],
            &a.xsum[..m * w.ng],
            m,
            Mode::Scaled,
            None,
            &|rows, cols, tile| {
                let c0 = cols.start;
                for (ri, r) in rows.enumerate() {
                    let (xs, xz) = (a.scale[r], (128 - a.zp[r]) as f32);
                    for c in cols.clone() {
                        let f = tile.f[ri * TILE_COLS + c - c0];
                        let mut y = ((f + xz * w.zcorr[c]) * xs) + bias.map_or(0.0, |b| b[c]);
                        if relu {
                            y = y.max(0.0);
                        }
                        // SAFETY: this task alone writes columns `cols` of `out`.
                        unsafe { *op.get().add(r * n + c) = y };
                    }
                }
            },
        );
    }
    Ok(())
}
