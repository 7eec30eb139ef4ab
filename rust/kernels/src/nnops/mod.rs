//! Float32 kernels of the trainable graph ops, forward and backward:
//! LayerNorm ([`norm`]), Softmax / LogSoftmax ([`softmax`]), GELU ([`gelu`])
//! and the depthwise 2-D convolution ([`depthwise`]).
//!
//! Layouts: the row ops take a row-major `(rows, d)` view (the Python layer
//! moves the reduced axis last); the convolution takes NCHW. Every kernel
//! checks its lengths and returns [`crate::Error`] instead of panicking.
//! Reductions (sums over a row, over a batch) accumulate in f64, so the
//! float32 results agree with a float64 computation to within the rounding
//! of the per-element f32 arithmetic. Loops are written over contiguous
//! slices for LLVM to vectorise; nothing here names an ISA. Work above
//! [`crate::exec::PARALLEL_MIN_WORK`] is split over rows (or channels)
//! in the library pool.

pub mod arch;
pub mod depthwise;
pub mod gelu;
pub mod math;
pub mod norm;
pub mod softmax;

#[cfg(test)]
mod tests;

use crate::error::{Error, Result};
use crate::exec::Ctx;

/// Independent accumulators in the row reductions (one or two vector registers).
pub(crate) const LANES: usize = 8;

/// Sum of `x` in f64, over [`LANES`] interleaved accumulators.
#[inline(always)]
pub(crate) fn sum_f64(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v as f64;
        }
    }
    let mut s: f64 = acc.iter().sum();
    for &v in it.remainder() {
        s += v as f64;
    }
    s
}

/// `sum(a[i] * b[i])` in f64, over [`LANES`] interleaved accumulators.
#[inline]
pub(crate) fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; LANES];
    let mut ia = a.chunks_exact(LANES);
    let mut ib = b.chunks_exact(LANES);
    for (ca, cb) in (&mut ia).zip(&mut ib) {
        for ((s, &x), &y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += x as f64 * y as f64;
        }
    }
    let mut s: f64 = acc.iter().sum();
    for (&x, &y) in ia.remainder().iter().zip(ib.remainder()) {
        s += x as f64 * y as f64;
    }
    s
}

/// A zero-filled output of `len` elements, or an error when it cannot be allocated.
pub(crate) fn zeros(len: usize, what: &str) -> Result<Vec<f32>> {
    crate::error::try_vec(len, 0.0, what) // Error::Alloc: a MemoryError, like every other kernel
}

/// `rows * d`, or a shape error when it overflows.
pub(crate) fn checked_len(rows: usize, d: usize) -> Result<usize> {
    rows.checked_mul(d)
        .ok_or_else(|| Error::Shape(format!("shape ({rows}, {d}) overflows")))
}

pub(crate) fn check_len(got: usize, want: usize, name: &str) -> Result<()> {
    if got != want {
        return crate::shape_err!("{name} has {got} elements; the shape needs {want}");
    }
    Ok(())
}

/// Rows per task so that `rows` rows of `work` total operations make about
/// [`Ctx::chunks_for`] tasks; `rows` (one task) when the work is small.
pub(crate) fn rows_per_task(ctx: &Ctx, rows: usize, work: usize) -> usize {
    let chunks = ctx.chunks_for(work);
    if chunks <= 1 {
        rows.max(1)
    } else {
        rows.div_ceil(chunks).max(1)
    }
}

/// `f(first_row, out_rows)` over chunks of whole rows of `out` (`d` elements
/// each; `d > 0`), in the library pool when `work` is large enough.
pub(crate) fn for_rows(
    ctx: &Ctx,
    out: &mut [f32],
    d: usize,
    work: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    let rows = out.len() / d.max(1);
    let per = rows_per_task(ctx, rows, work);
    if per >= rows {
        f(0, out);
        return;
    }
    ctx.run(work, || {
        crate::exec::for_each_chunk_mut(out, per * d, |i, c| f(i * per, c))
    });
}
