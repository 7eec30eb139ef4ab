//! The loops every sparse product shares: `Y = X · Wᵀ (+ b) (ReLU)`, `W`
//! sparse `(N, K)`, `X` dense `(B, K)` row-major, `Y` dense `(B, N)`.
//! The float products are in `float.rs`, the int8 ones in `int8.rs`, their
//! per-ISA compilations in `arch/`.
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
//! layout (`Xp[g, b, 0..4] = xq[b, 4g..4g+4]`), which maps onto the 4-way
//! u8 × s8 dot-product instructions (see `arch/`).

use std::ops::Range;

use super::formats::{Bsr, Elem, Nm};
use crate::error::Result;
use crate::exec::{self, Ctx};
use crate::gemm::reuse::Reused;
use crate::shape_err;
use rayon::prelude::*;

/// Largest batch served by the gather-dot path.
pub const GEMV_MAX_BATCH: usize = 2;
/// Batch columns per SIMD slice of the transposed activations.
pub(super) const LANE: usize = 16;

/// Splits `0..indptr.len()-1` into at most `parts` ranges of about equal
/// `indptr` mass.
pub(super) fn balanced(indptr: &[u32], parts: usize) -> Vec<Range<usize>> {
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

/// Part `i` of `parts` of `0..indptr.len()-1` in ranges of about equal
/// `indptr` mass (some may be empty), computed without allocating.
pub(super) fn balanced_part(indptr: &[u32], parts: usize, i: usize) -> Range<usize> {
    let n = indptr.len().saturating_sub(1);
    let total = indptr.last().map_or(0, |&v| v as u64);
    let at = |p: usize| {
        if p >= parts {
            n
        } else {
            let target = (total * p as u64 / parts.max(1) as u64) as u32;
            indptr.partition_point(|&v| v < target).min(n)
        }
    };
    at(i)..at(i + 1).max(at(i))
}

/// Cuts `buf` into consecutive pieces of `unit * range.len()` elements.
pub(super) fn split_by<'a, T>(
    mut buf: &'a mut [T],
    ranges: &[Range<usize>],
    unit: usize,
) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let (a, b) = std::mem::take(&mut buf).split_at_mut(r.len() * unit);
        out.push(a);
        buf = b;
    }
    out
}

/// Runs `f(range, out_piece)` over balanced row ranges in the pool.
pub(super) fn par_rows<T: Send>(
    ctx: &Ctx,
    g: &Rows<'_>,
    work: usize,
    out: &mut [T],
    unit: usize,
    f: impl Fn(Range<usize>, &mut [T]) + Sync,
) {
    let parts = ctx.chunks_for(work);
    let ranges = g.balanced(parts);
    let pieces = split_by(out, &ranges, unit);
    if ranges.len() == 1 || !exec::in_pool() {
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

/// The output rows of a product as the drivers partition them, whatever
/// the storage: BSR rows come in block rows of `unit = r`, N:M rows one by one.
pub(super) struct Rows<'a> {
    /// Per partition unit, the running count of stored values (the threads'
    /// split balances it); empty when every unit holds the same count (N:M).
    pub indptr: &'a [u32],
    /// Partition units (block rows, or rows).
    pub units: usize,
    /// Output rows per partition unit.
    pub unit: usize,
    /// Output rows (`N`) and rows of the padded block grid.
    pub n: usize,
    pub padded: usize,
    /// Inputs (`K`) and inputs padded to the block grid.
    pub cols: usize,
    pub kp: usize,
    /// Multiply-accumulates of the whole product.
    pub work: usize,
}

impl<'a> Rows<'a> {
    pub(super) fn of_bsr<T: Elem>(w: &'a Bsr<T>, batch: usize) -> Rows<'a> {
        Rows {
            indptr: &w.indptr,
            units: w.brows(),
            unit: w.r,
            n: w.rows,
            padded: w.brows() * w.r,
            cols: w.cols,
            kp: w.cols.div_ceil(w.c) * w.c,
            work: w.values.len() * batch.max(1),
        }
    }

    /// N:M rows: every row holds the same count.
    pub(super) fn of_nm<T: Elem>(w: &Nm<T>, batch: usize) -> Rows<'a> {
        Rows {
            indptr: &[],
            units: w.rows,
            unit: 1,
            n: w.rows,
            padded: w.rows,
            cols: w.cols,
            kp: w.cols,
            work: w.values.len() * batch.max(1),
        }
    }

    /// At most `parts` ranges of units of about equal stored-value count.
    pub(super) fn balanced(&self, parts: usize) -> Vec<Range<usize>> {
        if !self.indptr.is_empty() {
            return balanced(self.indptr, parts);
        }
        let parts = parts.clamp(1, self.units.max(1));
        (0..parts)
            .map(|p| self.units * p / parts..self.units * (p + 1) / parts)
            .collect()
    }
}

pub(super) fn bp_of(batch: usize) -> usize {
    batch.div_ceil(LANE) * LANE
}

/// A per-thread reused buffer (`gemm::reuse`) whose first element sits on a
/// cache line (64 bytes): the SIMD rows of `Xt`, whose lengths are multiples
/// of 64 bytes, then never straddle two lines (a split load costs about
/// twice a plain one). Its contents are stale: the caller writes every
/// element (so a repeated call neither allocates nor clears it).
pub(super) struct Aligned<T: Copy + Default + 'static> {
    buf: Reused<T>,
    off: usize,
    len: usize,
}

impl<T: Copy + Default + 'static> Aligned<T> {
    pub(super) fn stale(home: &'static Home<T>, len: usize, what: &str) -> Result<Aligned<T>> {
        let extra = 64 / std::mem::size_of::<T>().max(1);
        // (An overflowing length saturates into a size no allocator gives.)
        let buf = Reused::try_stale(home, len.saturating_add(extra), what)?;
        // `align_offset` may decline (usize::MAX); the buffer is then used unaligned.
        let off = buf.as_ptr().align_offset(64).min(extra);
        Ok(Aligned { buf, off, len })
    }

    pub(super) fn as_slice(&self) -> &[T] {
        &self.buf[self.off..self.off + self.len]
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

type Home<T> = std::thread::LocalKey<std::cell::Cell<Vec<T>>>;

std::thread_local! {
    /// The float products' transposed activations (`Xt`), kept per thread.
    pub(super) static XT_F32: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    /// The float gather-dot's activation row padded to the block grid.
    pub(super) static XPAD_F32: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Values a transposed activation can be made of.
pub(super) trait XtElem: Copy + Default + Send + Sync {}
impl XtElem for f32 {}
impl XtElem for i16 {}

/// `Xt[k, b] = conv(b, x[b, k])` into `(kp, bp)`, zero padded; blocks of 16
/// batch rows so the reads run along 16 rows and the writes are contiguous.
#[inline(always)]
pub(super) fn transpose_with<S: Copy + Sync, D: XtElem>(
    x: &[S],
    batch: usize,
    k: usize,
    kp: usize,
    bp: usize,
    conv: impl Fn(usize, S) -> D + Sync + Copy,
) -> Vec<D> {
    let mut xt = vec![D::default(); kp * bp];
    let rows_per = (8192 / bp).max(16);
    exec::for_each_chunk_mut(&mut xt, rows_per * bp, |c, dst| {
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

/// [`check_shapes`], and a probe that the output and accumulators of a
/// product that allocates them (about two `batch × rows` buffers) can be had.
pub(super) fn check_common(
    rows: usize,
    cols: usize,
    x_len: usize,
    batch: usize,
    bias: Option<&[f32]>,
) -> Result<()> {
    check_shapes(rows, cols, x_len, batch, bias)?;
    // The products size their output and accumulators (about two `batch × rows` buffers)
    // from the batch, which an `x` of zero columns does not bound: reserve that much first,
    // so a size no allocator can give is an `Error::Alloc` instead of an abort.
    let out = crate::error::checked_len(batch, rows, "the sparse product's output")?;
    crate::error::try_with_capacity::<f32>(out.saturating_mul(2), "the sparse product's output")?;
    Ok(())
}

/// The shapes of `x` `(batch, cols)` and `bias` (`rows`) of a product.
pub(super) fn check_shapes(
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

/// The sparse bodies compiled for the active path (see `arch/`).
pub(super) fn kernels() -> super::arch::Kernels {
    crate::cpu::dispatch().sparse
}
