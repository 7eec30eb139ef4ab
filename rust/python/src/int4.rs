//! Bindings of `hwreg_kernels::int4`: packing int4 weights, the float int4
//! linear layer step and the exact group sums. Arrays arrive C-contiguous
//! and native-endian with the right dtypes (the Python layer, `int4.py`,
//! checks and converts them).

use hwreg_kernels::exec::Ctx;
use hwreg_kernels::int4::{self, Int4Weight};
use numpy::{
    PyArray1, PyArray2, PyArray3, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use crate::errors::{contiguous, OrPy};

/// int4 weights packed once for the kernels.
#[pyclass(frozen, name = "_Int4Weight", module = "hwreg_rs._native")]
pub struct PyInt4Weight {
    /// Shared with the graph plans that run the layer (`runtime.rs`).
    pub(crate) inner: std::sync::Arc<Int4Weight>,
}

#[pymethods]
impl PyInt4Weight {
    /// Output features (N).
    #[getter]
    fn n(&self) -> usize {
        self.inner.n()
    }
    /// Input features (K).
    #[getter]
    fn k(&self) -> usize {
        self.inner.k()
    }
    /// Groups along K per output channel.
    #[getter]
    fn ngroups(&self) -> usize {
        self.inner.ngroups()
    }
    /// Bytes held by the packed form.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }
}

/// _int4_pack(packed, in_features, group_size, scales, zero_points) -> _Int4Weight.
/// `packed` is (N, ceil(K/2)) uint8, `scales` (N, ngroups) float32, `zero_points` the same
/// shape in uint8 or None (symmetric).
#[pyfunction]
#[pyo3(signature = (packed, in_features, group_size, scales, zero_points))]
fn _int4_pack(
    py: Python<'_>,
    packed: PyReadonlyArray2<'_, u8>,
    in_features: usize,
    group_size: Option<usize>,
    scales: PyReadonlyArray2<'_, f32>,
    zero_points: Option<PyReadonlyArray2<'_, u8>>,
) -> PyResult<PyInt4Weight> {
    let n = packed.shape()[0];
    let p = contiguous(&packed, "packed")?;
    let s = contiguous(&scales, "scales")?;
    let z = match &zero_points {
        Some(z) => Some(contiguous(z, "zero_points")?),
        None => None,
    };
    let inner = py
        .detach(|| Int4Weight::new(p, n, in_features, group_size, s, z))
        .or_py()?;
    Ok(PyInt4Weight {
        inner: std::sync::Arc::new(inner),
    })
}

/// _int4_linear(x, w, bias, relu) -> float32 (M, N)
#[pyfunction]
#[pyo3(signature = (x, w, bias, relu))]
fn _int4_linear<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    w: &Bound<'py, PyInt4Weight>,
    bias: Option<PyReadonlyArray1<'py, f32>>,
    relu: bool,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (m, k) = (x.shape()[0], x.shape()[1]);
    let xs = contiguous(&x, "x")?;
    let bias = match &bias {
        Some(v) => Some(contiguous(v, "bias")?),
        None => None,
    };
    let w = &w.get().inner;
    let out = py
        .detach(|| int4::linear(&Ctx::current(), xs, m, k, w, bias, relu))
        .or_py()?;
    PyArray1::from_vec(py, out).reshape([m, w.n()])
}

/// _int4_group_sums(x_q, w) -> int32 (M, N, ngroups), exact.
#[pyfunction]
fn _int4_group_sums<'py>(
    py: Python<'py>,
    x_q: PyReadonlyArray2<'py, u8>,
    w: &Bound<'py, PyInt4Weight>,
) -> PyResult<Bound<'py, PyArray3<i32>>> {
    let (m, k) = (x_q.shape()[0], x_q.shape()[1]);
    let xs = contiguous(&x_q, "x_q")?;
    let w = &w.get().inner;
    let out = py
        .detach(|| int4::group_sums(&Ctx::current(), xs, m, k, w))
        .or_py()?;
    PyArray1::from_vec(py, out).reshape([m, w.n(), w.ngroups()])
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyInt4Weight>()?;
    m.add_function(wrap_pyfunction!(_int4_pack, m)?)?;
    m.add_function(wrap_pyfunction!(_int4_linear, m)?)?;
    m.add_function(wrap_pyfunction!(_int4_group_sums, m)?)?;
    Ok(())
}
