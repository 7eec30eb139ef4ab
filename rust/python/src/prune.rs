//! Bindings of `hwreg_kernels::prune`: mask selection by magnitude.

use numpy::{PyArray1, PyReadonlyArrayDyn};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::errors::{contiguous, OrPy};
use hwreg_kernels::exec::Ctx;
use hwreg_kernels::prune;

/// Flat keep-mask pruning the `k` eligible entries of smallest |scores| (lower
/// flat index first among ties). `scores`: float32 or float64, any shape.
#[pyfunction]
#[pyo3(signature = (scores, k, eligible=None))]
fn prune_smallest<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    k: usize,
    eligible: Option<PyReadonlyArrayDyn<'py, bool>>,
) -> PyResult<Bound<'py, PyArray1<bool>>> {
    let el = eligible
        .as_ref()
        .map(|e| contiguous(e, "mask"))
        .transpose()?;
    let keep = if let Ok(s) = scores.extract::<PyReadonlyArrayDyn<'py, f32>>() {
        let s = contiguous(&s, "scores")?;
        py.detach(|| prune::prune_smallest(&Ctx::current(), s, el, k))
            .or_py()?
    } else if let Ok(s) = scores.extract::<PyReadonlyArrayDyn<'py, f64>>() {
        let s = contiguous(&s, "scores")?;
        py.detach(|| prune::prune_smallest(&Ctx::current(), s, el, k))
            .or_py()?
    } else {
        return Err(PyTypeError::new_err(
            "scores must be a float32 or float64 array",
        ));
    };
    Ok(PyArray1::from_vec(py, keep))
}

/// Flat keep-mask with the `n` largest |w| of every `m` consecutive entries
/// (the higher index kept among ties).
#[pyfunction]
fn nm_keep<'py>(
    py: Python<'py>,
    w: &Bound<'py, PyAny>,
    n: usize,
    m: usize,
) -> PyResult<Bound<'py, PyArray1<bool>>> {
    let keep = if let Ok(s) = w.extract::<PyReadonlyArrayDyn<'py, f32>>() {
        let s = contiguous(&s, "w")?;
        py.detach(|| prune::nm_keep(&Ctx::current(), s, n, m))
            .or_py()?
    } else if let Ok(s) = w.extract::<PyReadonlyArrayDyn<'py, f64>>() {
        let s = contiguous(&s, "w")?;
        py.detach(|| prune::nm_keep(&Ctx::current(), s, n, m))
            .or_py()?
    } else {
        return Err(PyTypeError::new_err("w must be a float32 or float64 array"));
    };
    Ok(PyArray1::from_vec(py, keep))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(prune_smallest, m)?)?;
    m.add_function(wrap_pyfunction!(nm_keep, m)?)?;
    Ok(())
}
