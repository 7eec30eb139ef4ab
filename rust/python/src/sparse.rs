//! Bindings of `hwreg_kernels::sparse`: one frozen class holding a
//! `SparseWeight` (BSR/CSR or N:M, float32 or int8; the type and its
//! products live in the kernel crate).

use numpy::{
    PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::{contiguous, OrPy};
use hwreg_kernels::exec::Ctx;
use hwreg_kernels::sparse::{self, DenseValues, Pattern, QuantX, SparseWeight};

/// A sparse weight `(out_features, in_features)` built from a dense matrix.
#[pyclass(frozen, module = "hwreg_rs._native")]
pub struct SparseMatrix {
    /// Shared with the graph plans that run the layer (`runtime.rs`).
    pub(crate) inner: std::sync::Arc<SparseWeight>,
}

fn mask_slice<'a>(
    mask: &'a Option<PyReadonlyArray2<'_, bool>>,
    shape: &[usize],
) -> PyResult<Option<&'a [bool]>> {
    match mask {
        None => Ok(None),
        Some(m) => {
            if m.shape() != shape {
                return Err(PyValueError::new_err(format!(
                    "mask has shape {:?}, expected {:?}",
                    m.shape(),
                    shape
                )));
            }
            Ok(Some(contiguous(m, "mask")?))
        }
    }
}

fn bias_slice<'a>(bias: &'a Option<PyReadonlyArray1<'_, f32>>) -> PyResult<Option<&'a [f32]>> {
    bias.as_ref().map(|b| contiguous(b, "bias")).transpose()
}

/// Builds a weight from a dense 2-D array with `make(w, rows, cols, mask)`
/// outside the GIL.
fn build<T: numpy::Element + Sync>(
    py: Python<'_>,
    w: &PyReadonlyArray2<'_, T>,
    mask: &Option<PyReadonlyArray2<'_, bool>>,
    make: impl Make<T>,
) -> PyResult<SparseMatrix> {
    let (rows, cols) = (w.shape()[0], w.shape()[1]);
    let m = mask_slice(mask, w.shape())?;
    let ws = contiguous(w, "w")?;
    let inner = py.detach(|| make(ws, rows, cols, m)).or_py()?;
    Ok(SparseMatrix {
        inner: std::sync::Arc::new(inner),
    })
}

/// How [`build`] makes a weight from `(w, rows, cols, mask)`.
trait Make<T>:
    FnOnce(&[T], usize, usize, Option<&[bool]>) -> hwreg_kernels::Result<SparseWeight> + Send
{
}
impl<T, F> Make<T> for F where
    F: FnOnce(&[T], usize, usize, Option<&[bool]>) -> hwreg_kernels::Result<SparseWeight> + Send
{
}

/// A float32 weight in `pattern`.
fn float(pattern: Pattern) -> impl Make<f32> {
    move |w: &[f32], rows, cols, m: Option<&[bool]>| {
        SparseWeight::from_f32(w, rows, cols, m, pattern)
    }
}

/// An int8 weight in `pattern` with one scale per row.
fn int8(scale: &PyReadonlyArray1<'_, f32>, pattern: Pattern) -> PyResult<impl Make<i8>> {
    let sc = contiguous(scale, "scale")?.to_vec();
    Ok(move |w: &[i8], rows, cols, m: Option<&[bool]>| {
        SparseWeight::from_i8(w, sc, rows, cols, m, pattern)
    })
}

#[pymethods]
impl SparseMatrix {
    /// Float32 block CSR (CSR when `r = c = 1`).
    #[staticmethod]
    #[pyo3(signature = (w, mask, r, c))]
    fn bsr_f32(
        py: Python<'_>,
        w: PyReadonlyArray2<'_, f32>,
        mask: Option<PyReadonlyArray2<'_, bool>>,
        r: usize,
        c: usize,
    ) -> PyResult<Self> {
        build(py, &w, &mask, float(Pattern::Blocks { r, c }))
    }

    /// int8 block CSR from an int8 matrix and one scale per row.
    #[staticmethod]
    #[pyo3(signature = (w, scale, mask, r, c))]
    fn bsr_i8(
        py: Python<'_>,
        w: PyReadonlyArray2<'_, i8>,
        scale: PyReadonlyArray1<'_, f32>,
        mask: Option<PyReadonlyArray2<'_, bool>>,
        r: usize,
        c: usize,
    ) -> PyResult<Self> {
        build(py, &w, &mask, int8(&scale, Pattern::Blocks { r, c })?)
    }

    /// Float32 compressed N:M (groups of `m` along the input axis).
    #[staticmethod]
    #[pyo3(signature = (w, mask, n, m))]
    fn nm_f32(
        py: Python<'_>,
        w: PyReadonlyArray2<'_, f32>,
        mask: Option<PyReadonlyArray2<'_, bool>>,
        n: usize,
        m: usize,
    ) -> PyResult<Self> {
        build(py, &w, &mask, float(Pattern::NofM { n, m }))
    }

    /// int8 compressed N:M from an int8 matrix and one scale per row.
    #[staticmethod]
    #[pyo3(signature = (w, scale, mask, n, m))]
    fn nm_i8(
        py: Python<'_>,
        w: PyReadonlyArray2<'_, i8>,
        scale: PyReadonlyArray1<'_, f32>,
        mask: Option<PyReadonlyArray2<'_, bool>>,
        n: usize,
        m: usize,
    ) -> PyResult<Self> {
        build(py, &w, &mask, int8(&scale, Pattern::NofM { n, m })?)
    }

    /// `(out_features, in_features)`.
    #[getter]
    fn shape(&self) -> (usize, usize) {
        self.inner.shape()
    }

    /// "bsr" or "nm".
    #[getter]
    fn format(&self) -> &'static str {
        match self.inner.pattern() {
            Pattern::Blocks { .. } => "bsr",
            Pattern::NofM { .. } => "nm",
        }
    }

    /// "float32" or "int8".
    #[getter]
    fn dtype(&self) -> &'static str {
        if self.inner.is_int8() {
            "int8"
        } else {
            "float32"
        }
    }

    /// `(r, c)` of a BSR matrix, `(n, m)` of an N:M one.
    #[getter]
    fn block(&self) -> (usize, usize) {
        match self.inner.pattern() {
            Pattern::Blocks { r, c } => (r, c),
            Pattern::NofM { n, m } => (n, m),
        }
    }

    /// Nonzero stored values.
    #[getter]
    fn nnz(&self) -> usize {
        self.inner.nnz()
    }

    /// Stored values, padding zeros included.
    #[getter]
    fn stored(&self) -> usize {
        self.inner.stored()
    }

    /// Bytes of the stored arrays (values, indices, row pointers, scales).
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }

    /// The dense matrix in the stored dtype (float32 or int8).
    fn to_dense<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (rows, cols) = self.shape();
        Ok(match self.inner.to_dense() {
            DenseValues::F32(v) => PyArray1::from_vec(py, v).reshape([rows, cols])?.into_any(),
            DenseValues::I8(v) => PyArray1::from_vec(py, v).reshape([rows, cols])?.into_any(),
        })
    }

    /// Per-row weight scales of an int8 matrix, else None.
    fn scale<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray1<f32>>> {
        self.inner.scale().map(|s| PyArray1::from_slice(py, s))
    }

    /// `Y = x · Wᵀ (+ bias) (ReLU)`; int8 weights quantize `x` per row (uint8,
    /// asymmetric) on the fly.
    #[pyo3(signature = (x, bias=None, relu=false))]
    fn linear<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f32>,
        bias: Option<PyReadonlyArray1<'py, f32>>,
        relu: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (batch, k) = (x.shape()[0], x.shape()[1]);
        let xs = contiguous(&x, "x")?;
        let bs = bias_slice(&bias)?;
        let y = py
            .detach(|| self.inner.linear(&Ctx::current(), xs, batch, k, bs, relu))
            .or_py()?;
        PyArray1::from_vec(py, y).reshape([batch, self.shape().0])
    }

    /// The int8 product with `x` already quantized: uint8 `xq`, one scale and
    /// zero point per row.
    #[pyo3(signature = (xq, x_scale, x_zero_point, bias=None, relu=false))]
    fn linear_quantized<'py>(
        &self,
        py: Python<'py>,
        xq: PyReadonlyArray2<'py, u8>,
        x_scale: PyReadonlyArray1<'py, f32>,
        x_zero_point: PyReadonlyArray1<'py, u8>,
        bias: Option<PyReadonlyArray1<'py, f32>>,
        relu: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (batch, k) = (xq.shape()[0], xq.shape()[1]);
        let qx = QuantX {
            q: contiguous(&xq, "xq")?,
            scale: contiguous(&x_scale, "x_scale")?,
            zero_point: contiguous(&x_zero_point, "x_zero_point")?,
        };
        let bs = bias_slice(&bias)?;
        let y = py
            .detach(|| {
                self.inner
                    .linear_quantized(&Ctx::current(), &qx, batch, k, bs, relu)
            })
            .or_py()?;
        PyArray1::from_vec(py, y).reshape([batch, self.shape().0])
    }
}

/// Per-row symmetric int8 quantization of a float weight (masked entries zero):
/// returns `(q int8, scale float32 per row)`.
#[pyfunction]
#[pyo3(signature = (w, mask=None))]
fn quantize_weight_rows<'py>(
    py: Python<'py>,
    w: PyReadonlyArray2<'py, f32>,
    mask: Option<PyReadonlyArray2<'py, bool>>,
) -> PyResult<(Bound<'py, PyArray2<i8>>, Bound<'py, PyArray1<f32>>)> {
    let (rows, cols) = (w.shape()[0], w.shape()[1]);
    let m = mask_slice(&mask, w.shape())?;
    let ws = contiguous(&w, "w")?;
    let (q, s) = py
        .detach(|| sparse::quantize_rows(ws, rows, cols, m))
        .or_py()?;
    Ok((
        PyArray1::from_vec(py, q).reshape([rows, cols])?,
        PyArray1::from_vec(py, s),
    ))
}

/// Per-row uint8 asymmetric quantization of activations `(batch, k)`:
/// returns `(q uint8, scale float32, zero_point uint8)`, one scale per row.
#[pyfunction]
fn quantize_activation_rows<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
) -> PyResult<(
    Bound<'py, PyArray2<u8>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<u8>>,
)> {
    let (batch, k) = (x.shape()[0], x.shape()[1]);
    let xs = contiguous(&x, "x")?;
    let (q, s, z) = py
        .detach(|| sparse::quantize_rows_u8(&Ctx::current(), xs, batch, k))
        .or_py()?;
    Ok((
        PyArray1::from_vec(py, q).reshape([batch, k])?,
        PyArray1::from_vec(py, s),
        PyArray1::from_vec(py, z),
    ))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SparseMatrix>()?;
    m.add_function(wrap_pyfunction!(quantize_weight_rows, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_activation_rows, m)?)?;
    Ok(())
}
