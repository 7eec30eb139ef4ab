//! `hwreg_rs._native`: the PyO3 face of `hwreg-kernels`.
//!
//! This crate only converts arrays, releases the GIL around kernel calls and
//! maps errors (see `errors.rs`). One file per kernel family, each with a
//! `register` function; no algorithm lives here.

use pyo3::prelude::*;

mod conv;
mod depthwise;
mod errors;
mod gemm;
mod int4;
mod nnops;
mod optim;
mod prune;
mod quant;
mod runtime;
mod sparse;

use hwreg_kernels::cpu::{self, Isa};

/// Name of the SIMD path the kernels use now ("generic", "avx2", "avx512", "avx512vnni").
#[pyfunction]
fn active_isa() -> &'static str {
    cpu::active().name()
}

/// Names of every SIMD path this CPU supports, most portable first.
#[pyfunction]
fn supported_isas() -> Vec<&'static str> {
    cpu::supported().into_iter().map(Isa::name).collect()
}

/// Pins the SIMD path for this process (tests cover every path with it).
#[pyfunction]
fn _set_isa(name: &str) -> PyResult<()> {
    let isa = Isa::from_name(name).ok_or_else(|| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "unknown ISA {name:?}; expected one of {:?}",
            Isa::ALL.map(Isa::name)
        ))
    })?;
    if !cpu::force(isa) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "this CPU does not support the {name:?} path"
        )));
    }
    Ok(())
}

/// Threads the kernels use (`HWREG_NUM_THREADS`, default: available cores).
#[pyfunction]
fn num_threads() -> usize {
    hwreg_kernels::exec::num_threads()
}

/// Sets the process's thread policy (each later call reads it into its
/// execution context); 0 restores the default.
#[pyfunction]
fn set_num_threads(n: usize) {
    hwreg_kernels::exec::set_num_threads(n)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(active_isa, m)?)?;
    m.add_function(wrap_pyfunction!(supported_isas, m)?)?;
    m.add_function(wrap_pyfunction!(_set_isa, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    quant::register(m)?;
    gemm::register(m)?;
    int4::register(m)?;
    prune::register(m)?;
    sparse::register(m)?;
    conv::register(m)?;
    depthwise::register(m)?;
    runtime::register(m)?;
    optim::register(m)?;
    nnops::register(m)?;
    Ok(())
}
