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
//!   Blocks of `R` rows share the `Xt` loads. A task's tiles (16 output
//!   rows for int8, 64 × 32 batch columns for float) go to a small staging
//!   tile (float) or its rows of `Yt` (int8),
//!   which the task then stores into `Y` with the output step while they
//!   are in cache.
//! * **batch ≤ 2 — gather-dot.** One row of `X` at a time, each output is a
//!   dot product of the stored weights with the `X` entries they index, over 8
//!   independent partial sums.
//!
//! The work runs on the fork-join team (`Ctx::for_each_task`) in tasks of
//! 16 to 64 output rows, which the team's shared counter hands out: uneven rows
//! still split evenly, and a thread slowed by a neighbour takes fewer. The
//! per-call buffers are the caller thread's (`gemm::reuse`), so a repeated
//! call allocates nothing. The int8 kernels accumulate in int32 exactly: every int8 matrix is
//! checked at build time (`formats::row_quant`) so that `255 · Σ|q|` per row
//! fits int32. Weights with block width a multiple of 4 use the 4-deep dot
//! layout (`Xp[g, b, 0..4] = xq[b, 4g..4g+4]`), which maps onto the 4-way
//! u8 × s8 dot-product instructions (see `arch/`).

use std::ops::Range;

use super::formats::{Bsr, Elem, Nm};
use crate::error::Result;
use crate::gemm::reuse::Reused;
use crate::shape_err;

/// Largest batch served by the gather-dot path.
pub const GEMV_MAX_BATCH: usize = 2;
/// Batch columns per SIMD slice of the transposed activations.
pub(super) const LANE: usize = 16;

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

/// The output rows of a product as the drivers partition them, whatever
/// the storage: BSR rows come in block rows of `unit = r`, N:M rows one by one.
pub(super) struct Rows {
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

impl Rows {
    pub(super) fn of_bsr<T: Elem>(w: &Bsr<T>, batch: usize) -> Rows {
        Rows {
            units: w.brows(),
            unit: w.r,
            n: w.rows,
            padded: w.brows() * w.r,
            cols: w.cols,
            kp: w.cols.div_ceil(w.c) * w.c,
            work: w.values.len() * batch.max(1),
        }
    }

    /// N:M rows, one partition unit each.
    pub(super) fn of_nm<T: Elem>(w: &Nm<T>, batch: usize) -> Rows {
        Rows {
            units: w.rows,
            unit: 1,
            n: w.rows,
            padded: w.rows,
            cols: w.cols,
            kp: w.cols,
            work: w.values.len() * batch.max(1),
        }
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

/// A new `(batch, rows)` output written by `fill` (a product's `_into`
/// form), after the shapes are checked (so a wrong `x` is a `Shape` error
/// whatever the batch).
pub(super) fn new_output(
    (rows, cols): (usize, usize),
    x_len: usize,
    batch: usize,
    bias: Option<&[f32]>,
    fill: impl FnOnce(&mut [f32]) -> Result<()>,
) -> Result<Vec<f32>> {
    check_shapes(rows, cols, x_len, batch, bias)?;
    let len = crate::error::checked_len(batch, rows, "the sparse product's output")?;
    let mut y = crate::error::try_vec(len, 0f32, "the sparse product's output")?;
    fill(&mut y)?;
    Ok(y)
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
