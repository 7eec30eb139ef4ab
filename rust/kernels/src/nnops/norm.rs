//! Layer normalisation over the last `d` elements: rows of a `(rows, d)` view.
//!
//! Forward (two passes over each row, sums in f64):
//!
//! ```text
//! mean = Σx / d,  var = Σ(x - mean)² / d  (biased),  inv_std = 1 / sqrt(var + eps)
//! y = (x - mean) · inv_std · weight + bias
//! ```
//!
//! Backward, with `x̂ = (x - mean) · inv_std` recomputed from the saved row
//! statistics and `g = dy · weight`:
//!
//! ```text
//! dx = inv_std · (g - mean(g) - x̂ · mean(g · x̂))
//! dweight = Σ_rows dy · x̂,   dbias = Σ_rows dy
//! ```

use rayon::prelude::*;

use super::{check_len, checked_len, rows_per_task, sum_f64, zeros, LANES};
use crate::error::Result;
use crate::exec::{self, Ctx};

/// Output of [`layer_norm_forward`].
#[derive(Debug, Clone)]
pub struct LayerNormForward {
    /// `(rows, d)`.
    pub y: Vec<f32>,
    /// Per-row mean, `(rows,)`.
    pub mean: Vec<f32>,
    /// Per-row `1 / sqrt(var + eps)`, `(rows,)`.
    pub inv_std: Vec<f32>,
}

/// Output of [`layer_norm_backward`].
#[derive(Debug, Clone)]
pub struct LayerNormBackward {
    /// `(rows, d)`.
    pub dx: Vec<f32>,
    /// `(d,)`, when a weight was given.
    pub dweight: Option<Vec<f32>>,
    /// `(d,)`, when asked for.
    pub dbias: Option<Vec<f32>>,
}

fn check_affine(d: usize, weight: Option<&[f32]>, bias: Option<&[f32]>) -> Result<()> {
    if let Some(w) = weight {
        check_len(w.len(), d, "weight")?;
    }
    if let Some(b) = bias {
        check_len(b.len(), d, "bias")?;
    }
    Ok(())
}

fn check_d(d: usize) -> Result<()> {
    if d == 0 {
        return crate::shape_err!("the normalised size d must be >= 1; got 0");
    }
    Ok(())
}

/// LayerNorm forward of `x` `(rows, d)` with optional `weight` and `bias` `(d,)`.
pub fn layer_norm_forward(
    ctx: &Ctx,
    x: &[f32],
    rows: usize,
    d: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f64,
) -> Result<LayerNormForward> {
    check_d(d)?;
    let len = checked_len(rows, d)?;
    check_len(x.len(), len, "x")?;
    check_affine(d, weight, bias)?;
    if !(eps.is_finite() && eps >= 0.0) {
        return crate::value_err!("eps must be finite and >= 0; got {eps}");
    }
    let mut y = zeros(len, "y")?;
    let mut mean = zeros(rows, "mean")?;
    let mut inv_std = zeros(rows, "inv_std")?;
    if rows == 0 {
        return Ok(LayerNormForward { y, mean, inv_std });
    }
    let f = crate::cpu::dispatch().nnops.layer_norm;
    let task = |r0: usize, yc: &mut [f32], mc: &mut [f32], ic: &mut [f32]| {
        let xc = &x[r0 * d..r0 * d + yc.len()];
        f(xc, yc, d, weight, bias, eps, mc, ic);
    };
    // about 0.5 ns an element on one core: threads only from ~64K elements on
    let work = len.saturating_mul(2);
    let per = rows_per_task(ctx, rows, work);
    if per >= rows {
        task(0, &mut y, &mut mean, &mut inv_std);
    } else {
        ctx.run(work, || {
            y.par_chunks_mut(per * d)
                .zip(mean.par_chunks_mut(per))
                .zip(inv_std.par_chunks_mut(per))
                .enumerate()
                .for_each(|(i, ((yc, mc), ic))| task(i * per, yc, mc, ic));
        });
    }
    Ok(LayerNormForward { y, mean, inv_std })
}

/// LayerNorm of each `d`-element row of `x` into `y` (the values of
/// [`layer_norm_forward`], without the saved statistics).
pub fn layer_norm_into(
    ctx: &Ctx,
    x: &[f32],
    d: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f64,
    y: &mut [f32],
) -> Result<()> {
    check_d(d)?;
    check_len(y.len(), x.len(), "y")?;
    if x.len() % d != 0 {
        return crate::shape_err!("rows of {d} do not divide {} elements", x.len());
    }
    check_affine(d, weight, bias)?;
    if !(eps.is_finite() && eps >= 0.0) {
        return crate::value_err!("eps must be finite and >= 0; got {eps}");
    }
    let f = crate::cpu::dispatch().nnops.layer_norm;
    super::for_rows(ctx, y, d, x.len().saturating_mul(2), |r0, yc| {
        let xc = &x[r0 * d..r0 * d + yc.len()];
        f(xc, yc, d, weight, bias, eps, &mut [], &mut []);
    });
    Ok(())
}

/// The row body every path of the dispatch table compiles: each `d`-element
/// row of `x` into `y`, its mean and `inv_std` into `mean` / `inv` unless
/// they are empty (`d > 0`, `y.len() == x.len()`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn layer_norm_chunk(
    x: &[f32],
    y: &mut [f32],
    d: usize,
    w: Option<&[f32]>,
    b: Option<&[f32]>,
    eps: f64,
    mean: &mut [f32],
    inv: &mut [f32],
) {
    let stats = !mean.is_empty() && !inv.is_empty();
    for (r, (yr, xr)) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
        let (m, s) = forward_row(xr, yr, w, b, eps);
        if stats {
            mean[r] = m;
            inv[r] = s;
        }
    }
}

/// One row: writes `y`, returns `(mean, inv_std)`.
#[inline(always)]
fn forward_row(
    x: &[f32],
    y: &mut [f32],
    w: Option<&[f32]>,
    b: Option<&[f32]>,
    eps: f64,
) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = sum_f64(x) / n;
    let mut acc = [0.0f64; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for (a, &v) in acc.iter_mut().zip(c) {
            let t = v as f64 - mean;
            *a += t * t;
        }
    }
    let mut ss: f64 = acc.iter().sum();
    for &v in it.remainder() {
        let t = v as f64 - mean;
        ss += t * t;
    }
    let inv = 1.0 / (ss / n + eps).sqrt();
    // the mean as f32 plus the f32 remainder: `(v - m) - ml` keeps the f64 mean's precision
    let m = mean as f32;
    let ml = (mean - m as f64) as f32;
    let s = inv as f32;
    match (w, b) {
        (Some(w), Some(b)) => {
            for (((o, &v), &wi), &bi) in y.iter_mut().zip(x).zip(w).zip(b) {
                *o = ((v - m) - ml) * s * wi + bi;
            }
        }
        (Some(w), None) => {
            for ((o, &v), &wi) in y.iter_mut().zip(x).zip(w) {
                *o = ((v - m) - ml) * s * wi;
            }
        }
        (None, Some(b)) => {
            for ((o, &v), &bi) in y.iter_mut().zip(x).zip(b) {
                *o = ((v - m) - ml) * s + bi;
            }
        }
        (None, None) => {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = ((v - m) - ml) * s;
            }
        }
    }
    (m, s)
}

/// One task's partial sums of `dweight` and `dbias` (each empty when not wanted).
type Partial = (Vec<f64>, Vec<f64>);

/// LayerNorm backward: `dy` and `x` `(rows, d)`, the forward's `mean` and
/// `inv_std` `(rows,)`, its `weight` (if any). `dbias` is computed when `want_dbias`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    ctx: &Ctx,
    dy: &[f32],
    x: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    rows: usize,
    d: usize,
    weight: Option<&[f32]>,
    want_dbias: bool,
) -> Result<LayerNormBackward> {
    check_d(d)?;
    let len = checked_len(rows, d)?;
    check_len(dy.len(), len, "dy")?;
    check_len(x.len(), len, "x")?;
    check_len(mean.len(), rows, "mean")?;
    check_len(inv_std.len(), rows, "inv_std")?;
    check_affine(d, weight, None)?;
    let mut dx = zeros(len, "dx")?;
    let want_dw = weight.is_some();
    let task = |r0: usize, dxc: &mut [f32]| -> Partial {
        let nr = dxc.len() / d;
        let mut dw = if want_dw { vec![0.0f64; d] } else { Vec::new() };
        let mut db = if want_dbias {
            vec![0.0f64; d]
        } else {
            Vec::new()
        };
        let rng = r0 * d..(r0 + nr) * d;
        let rows_iter = dxc
            .chunks_exact_mut(d)
            .zip(x[rng.clone()].chunks_exact(d))
            .zip(dy[rng].chunks_exact(d))
            .zip(&mean[r0..r0 + nr])
            .zip(&inv_std[r0..r0 + nr]);
        for ((((dxr, xr), gr), &m), &s) in rows_iter {
            let ml = backward_row(dxr, xr, gr, m, s, weight);
            if want_dw {
                for ((a, &v), &g) in dw.iter_mut().zip(xr).zip(gr) {
                    *a += (((v - m) - ml) * s) as f64 * g as f64;
                }
            }
            if want_dbias {
                for (a, &g) in db.iter_mut().zip(gr) {
                    *a += g as f64;
                }
            }
        }
        (dw, db)
    };
    let work = len.saturating_mul(3);
    let per = rows_per_task(ctx, rows, work);
    let parts = if rows == 0 {
        Vec::new()
    } else if per >= rows {
        vec![task(0, &mut dx)]
    } else {
        ctx.run(work, || {
            exec::map_chunks_mut(&mut dx, per * d, |i, c| task(i * per, c))
        })
    };
    let reduce = |want: bool, pick: fn(&Partial) -> &Vec<f64>| -> Option<Vec<f32>> {
        want.then(|| {
            let mut acc = vec![0.0f64; d];
            for p in &parts {
                for (a, &v) in acc.iter_mut().zip(pick(p)) {
                    *a += v;
                }
            }
            acc.into_iter().map(|v| v as f32).collect()
        })
    };
    let dweight = reduce(want_dw, |p| &p.0);
    let dbias = reduce(want_dbias, |p| &p.1);
    Ok(LayerNormBackward { dx, dweight, dbias })
}

/// One row of `dx`; returns the correction `ml` to the saved f32 mean
/// (`x̂ = ((x - m) - ml) · s`), recovered from the row in the same pass.
#[inline]
fn backward_row(dx: &mut [f32], x: &[f32], dy: &[f32], m: f32, s: f32, w: Option<&[f32]>) -> f32 {
    let n = x.len() as f64;
    // g = dy · w lands in dx first, so the later passes read one array less
    match w {
        Some(w) => {
            for ((o, &g), &wi) in dx.iter_mut().zip(dy).zip(w) {
                *o = g * wi;
            }
        }
        None => dx.copy_from_slice(dy),
    }
    // Σg, Σ(x - m) and Σ g·(x - m) in one pass
    let (mut ag, mut ax, mut agx) = ([0.0f64; LANES], [0.0f64; LANES], [0.0f64; LANES]);
    let mut ig = dx.chunks_exact(LANES);
    let mut ix = x.chunks_exact(LANES);
    for (cg, cx) in (&mut ig).zip(&mut ix) {
        for i in 0..LANES {
            let (g, t) = (cg[i] as f64, cx[i] as f64 - m as f64);
            ag[i] += g;
            ax[i] += t;
            agx[i] += g * t;
        }
    }
    let (mut sg, mut sx, mut sgx): (f64, f64, f64) =
        (ag.iter().sum(), ax.iter().sum(), agx.iter().sum());
    for (&g, &v) in ig.remainder().iter().zip(ix.remainder()) {
        let (g, t) = (g as f64, v as f64 - m as f64);
        sg += g;
        sx += t;
        sgx += g * t;
    }
    let ml = sx / n;
    // Σ g·(x - m - ml) = Σ g·(x - m) - ml·Σg
    let mean_g = (sg / n) as f32;
    let mean_gx = ((sgx - ml * sg) * s as f64 / n) as f32;
    let ml = ml as f32;
    for (o, &v) in dx.iter_mut().zip(x) {
        let xhat = ((v - m) - ml) * s;
        *o = s * (*o - mean_g - xhat * mean_gx);
    }
    ml
}
