//! Softmax and LogSoftmax along the rows of a `(rows, d)` view.
//!
//! ```text
//! softmax:      z = x - max(x),  y = e^z / Σ e^z
//! log_softmax:  y = z - ln Σ e^z
//! backward:     dx = y · (dy - Σ dy·y)            (softmax)
//!               dx = dy - e^y · Σ dy              (log_softmax)
//! ```
//!
//! The sums are taken in f64; `e^z` is [`super::math::exp`]. A NaN anywhere in
//! a row makes the whole row NaN (as in NumPy), so does `+inf`.

use super::math::exp;
use super::{check_len, checked_len, for_rows, sum_f64, zeros, LANES};
use crate::error::Result;
use crate::exec::Ctx;

/// Which of the two ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Softmax,
    LogSoftmax,
}

/// Largest element of a row (NaN ignored here; it reaches the output through `x - max`).
#[inline(always)]
fn row_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(it.remainder()) {
        m = if v > m { v } else { m };
    }
    m
}

fn forward(ctx: &Ctx, x: &[f32], rows: usize, d: usize, kind: Kind) -> Result<Vec<f32>> {
    let len = checked_len(rows, d)?;
    check_len(x.len(), len, "x")?;
    let mut y = zeros(len, "y")?;
    forward_into(ctx, x, d, kind, &mut y);
    Ok(y)
}

/// The rows of `x` (`d` elements each, `y.len() == x.len()`) into `y`.
fn forward_into(ctx: &Ctx, x: &[f32], d: usize, kind: Kind, y: &mut [f32]) {
    let len = y.len();
    if len == 0 || d == 0 {
        return;
    }
    let f = crate::cpu::dispatch().nnops.softmax;
    let log = kind == Kind::LogSoftmax;
    // ~1.5 ns an element (the exp) on the baseline x86-64 build: threads from ~32K elements
    for_rows(ctx, y, d, len.saturating_mul(4), |r0, yc| {
        f(&x[r0 * d..r0 * d + yc.len()], yc, d, log)
    });
}

/// The row body every path of the dispatch table compiles: each `d`-element
/// row of `x` into `y` (`d > 0`, `y.len() == x.len()`).
#[inline(always)]
pub(crate) fn softmax_chunk(x: &[f32], y: &mut [f32], d: usize, log: bool) {
    for (yr, xr) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let m = row_max(xr);
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = exp(v - m);
        }
        let s = sum_f64(yr);
        if log {
            let lse = s.ln() as f32;
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = (v - m) - lse;
            }
        } else {
            let inv = (1.0 / s) as f32;
            for o in yr.iter_mut() {
                *o *= inv;
            }
        }
    }
}

/// Softmax of each `d`-element row of `x` into `y` (the same values as
/// [`softmax_forward`], written where the caller wants them).
pub fn softmax_into(ctx: &Ctx, x: &[f32], d: usize, y: &mut [f32]) -> Result<()> {
    check_len(y.len(), x.len(), "y")?;
    if d == 0 || x.len() % d != 0 {
        return crate::shape_err!("softmax rows of {d} do not divide {} elements", x.len());
    }
    forward_into(ctx, x, d, Kind::Softmax, y);
    Ok(())
}

fn backward(
    ctx: &Ctx,
    y: &[f32],
    dy: &[f32],
    rows: usize,
    d: usize,
    kind: Kind,
) -> Result<Vec<f32>> {
    let len = checked_len(rows, d)?;
    check_len(y.len(), len, "y")?;
    check_len(dy.len(), len, "dy")?;
    let mut dx = zeros(len, "dx")?;
    if len == 0 {
        return Ok(dx);
    }
    for_rows(ctx, &mut dx, d, len.saturating_mul(4), |r0, dxc| {
        let rng = r0 * d..r0 * d + dxc.len();
        let (yc, gc) = (&y[rng.clone()], &dy[rng]);
        for ((o, yr), gr) in dxc
            .chunks_exact_mut(d)
            .zip(yc.chunks_exact(d))
            .zip(gc.chunks_exact(d))
        {
            match kind {
                Kind::Softmax => {
                    let s = super::dot_f64(gr, yr) as f32;
                    for ((o, &yi), &gi) in o.iter_mut().zip(yr).zip(gr) {
                        *o = yi * (gi - s);
                    }
                }
                Kind::LogSoftmax => {
                    let s = sum_f64(gr) as f32;
                    for ((o, &yi), &gi) in o.iter_mut().zip(yr).zip(gr) {
                        *o = gi - exp(yi) * s;
                    }
                }
            }
        }
    });
    Ok(dx)
}

/// Softmax of each row of `x` `(rows, d)`.
pub fn softmax_forward(ctx: &Ctx, x: &[f32], rows: usize, d: usize) -> Result<Vec<f32>> {
    forward(ctx, x, rows, d, Kind::Softmax)
}

/// LogSoftmax of each row of `x` `(rows, d)`.
pub fn log_softmax_forward(ctx: &Ctx, x: &[f32], rows: usize, d: usize) -> Result<Vec<f32>> {
    forward(ctx, x, rows, d, Kind::LogSoftmax)
}

/// Gradient of [`softmax_forward`] from its output `y` and the output gradient `dy`.
pub fn softmax_backward(
    ctx: &Ctx,
    y: &[f32],
    dy: &[f32],
    rows: usize,
    d: usize,
) -> Result<Vec<f32>> {
    backward(ctx, y, dy, rows, d, Kind::Softmax)
}

/// Gradient of [`log_softmax_forward`] from its output `y` and the output gradient `dy`.
pub fn log_softmax_backward(
    ctx: &Ctx,
    y: &[f32],
    dy: &[f32],
    rows: usize,
    d: usize,
) -> Result<Vec<f32>> {
    backward(ctx, y, dy, rows, d, Kind::LogSoftmax)
}
