//! Bindings of `hwreg_kernels::optim`: fused in-place optimizer updates on float32 arrays.

use hwreg_kernels::optim::{self, AdamStep};
use numpy::{PyReadonlyArrayDyn, PyReadwriteArrayDyn};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::OrPy;

fn slice_mut<'a>(a: &'a mut PyReadwriteArrayDyn<'_, f32>, name: &str) -> PyResult<&'a mut [f32]> {
    a.as_slice_mut()
        .map_err(|_| PyValueError::new_err(format!("{name} must be a C-contiguous array")))
}

/// adam_step(w, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, decoupled, bc1, bc2_sqrt)
/// updates w, exp_avg and exp_avg_sq in place.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn adam_step(
    py: Python<'_>,
    mut w: PyReadwriteArrayDyn<'_, f32>,
    grad: PyReadonlyArrayDyn<'_, f32>,
    mut exp_avg: PyReadwriteArrayDyn<'_, f32>,
    mut exp_avg_sq: PyReadwriteArrayDyn<'_, f32>,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    decoupled: bool,
    bias_correction1: f32,
    bias_correction2_sqrt: f32,
) -> PyResult<()> {
    let h = AdamStep {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        decoupled,
        bias_correction1,
        bias_correction2_sqrt,
    };
    let g = crate::errors::contiguous(&grad, "grad")?;
    let ws = slice_mut(&mut w, "w")?;
    let ms = slice_mut(&mut exp_avg, "exp_avg")?;
    let vs = slice_mut(&mut exp_avg_sq, "exp_avg_sq")?;
    py.detach(|| optim::adam_step(ws, g, ms, vs, h)).or_py()
}

/// sgd_momentum_step(w, grad, buf, lr, momentum, dampening, weight_decay, nesterov) updates w and buf in place.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn sgd_momentum_step(
    py: Python<'_>,
    mut w: PyReadwriteArrayDyn<'_, f32>,
    grad: PyReadonlyArrayDyn<'_, f32>,
    mut buf: PyReadwriteArrayDyn<'_, f32>,
    lr: f32,
    momentum: f32,
    dampening: f32,
    weight_decay: f32,
    nesterov: bool,
) -> PyResult<()> {
    let g = crate::errors::contiguous(&grad, "grad")?;
    let ws = slice_mut(&mut w, "w")?;
    let bs = slice_mut(&mut buf, "buf")?;
    py.detach(|| {
        optim::sgd_momentum_step(ws, g, bs, lr, momentum, dampening, weight_decay, nesterov)
    })
    .or_py()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(adam_step, m)?)?;
    m.add_function(wrap_pyfunction!(sgd_momentum_step, m)?)?;
    Ok(())
}
