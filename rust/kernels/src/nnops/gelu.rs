//! GELU (PyTorch semantics), elementwise, forward and backward; and the f32 `erf`.
//!
//! ```text
//! exact ("none"):  y = x Φ(x),                      y' = Φ(x) + x φ(x)
//! "tanh":          y = x σ(2u),  u = √(2/π)(x + 0.044715 x³)
//!                  y' = σ + 2 x σ (1 - σ) √(2/π)(1 + 3·0.044715 x²)
//! ```
//!
//! The tanh form uses `(1 + tanh u) / 2 = σ(2u)`, which keeps full relative
//! precision where `1 + tanh u` would cancel; `Φ` is [`super::math::phi`].

use super::math::{self, exp, phi, FRAC_1_SQRT_2PI};
use super::{check_len, for_rows, zeros};
use crate::error::Result;
use crate::exec::Ctx;

/// `√(2/π)`.
const K: f32 = 0.797_884_6;
const C: f32 = 0.044_715;

/// The two GELU formulas (PyTorch's `approximate=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approximate {
    /// `x Φ(x)` with the error function.
    None,
    /// The tanh approximation.
    Tanh,
}

impl Approximate {
    /// `"none"` or `"tanh"`.
    pub fn from_name(name: &str) -> Result<Approximate> {
        match name {
            "none" => Ok(Approximate::None),
            "tanh" => Ok(Approximate::Tanh),
            _ => crate::value_err!("approximate must be 'none' or 'tanh'; got {name:?}"),
        }
    }
}

#[inline(always)]
fn sigmoid_2u(x: f32) -> f32 {
    let u = K * (x + C * x * x * x);
    1.0 / (1.0 + exp(-2.0 * u))
}

/// Applies `f` elementwise from `x` into a new vector, in parallel for large inputs.
fn map(
    ctx: &Ctx,
    x: &[f32],
    cost: usize,
    f: impl Fn(f32) -> f32 + Sync + Send,
) -> Result<Vec<f32>> {
    let mut y = zeros(x.len(), "output")?;
    map_into(ctx, x, cost, f, &mut y);
    Ok(y)
}

/// [`map`] into `y` (`y.len() == x.len()`).
fn map_into(
    ctx: &Ctx,
    x: &[f32],
    cost: usize,
    f: impl Fn(f32) -> f32 + Sync + Send,
    y: &mut [f32],
) {
    if x.is_empty() {
        return;
    }
    for_rows(ctx, y, 1, x.len().saturating_mul(cost), |i0, yc| {
        let xc = &x[i0..i0 + yc.len()];
        for (o, &v) in yc.iter_mut().zip(xc) {
            *o = f(v);
        }
    });
}

/// GELU of every element of `x` into `y` (the values of [`gelu_forward`]),
/// on the active path of the dispatch table.
pub fn gelu_into(ctx: &Ctx, x: &[f32], approximate: Approximate, y: &mut [f32]) -> Result<()> {
    check_len(y.len(), x.len(), "y")?;
    if x.is_empty() {
        return Ok(());
    }
    let f = crate::cpu::dispatch().nnops.gelu;
    let cost = if approximate == Approximate::None {
        32
    } else {
        24
    };
    for_rows(ctx, y, 1, x.len().saturating_mul(cost), |i0, yc| {
        f(&x[i0..i0 + yc.len()], yc, approximate)
    });
    Ok(())
}

/// The GELU body every path of the dispatch table compiles (`y.len() == x.len()`).
#[inline(always)]
pub(crate) fn gelu_chunk(x: &[f32], y: &mut [f32], approximate: Approximate) {
    match approximate {
        Approximate::None => {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = v * phi(v);
            }
        }
        Approximate::Tanh => {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = v * sigmoid_2u(v);
            }
        }
    }
}

/// GELU of every element of `x`.
pub fn gelu_forward(ctx: &Ctx, x: &[f32], approximate: Approximate) -> Result<Vec<f32>> {
    let mut y = zeros(x.len(), "output")?;
    gelu_into(ctx, x, approximate, &mut y)?;
    Ok(y)
}

/// `dy · GELU'(x)`.
pub fn gelu_backward(
    ctx: &Ctx,
    x: &[f32],
    dy: &[f32],
    approximate: Approximate,
) -> Result<Vec<f32>> {
    check_len(dy.len(), x.len(), "dy")?;
    let mut dx = zeros(x.len(), "dx")?;
    if x.is_empty() {
        return Ok(dx);
    }
    let cost = 40;
    for_rows(ctx, &mut dx, 1, x.len().saturating_mul(cost), |i0, dc| {
        let rng = i0..i0 + dc.len();
        let (xc, gc) = (&x[rng.clone()], &dy[rng]);
        match approximate {
            Approximate::None => {
                for ((o, &v), &g) in dc.iter_mut().zip(xc).zip(gc) {
                    *o = g * (phi(v) + v * exp(-0.5 * v * v) * FRAC_1_SQRT_2PI);
                }
            }
            Approximate::Tanh => {
                for ((o, &v), &g) in dc.iter_mut().zip(xc).zip(gc) {
                    let s = sigmoid_2u(v);
                    *o = g * (s + 2.0 * v * s * (1.0 - s) * K * (1.0 + 3.0 * C * v * v));
                }
            }
        }
    });
    Ok(dx)
}

/// The error function of every element of `x` ([`math::erf`]).
pub fn erf(ctx: &Ctx, x: &[f32]) -> Result<Vec<f32>> {
    map(ctx, x, 24, math::erf)
}
