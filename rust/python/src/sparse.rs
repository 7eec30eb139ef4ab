//! Bindings of `hwreg_kernels::sparse`: one frozen class holding a sparse
//! weight (BSR/CSR or N:M, float32 or int8) and its Linear product.

use numpy::{
    PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::{contiguous, OrPy};
use hwreg_kernels::sparse::{self, Bsr, Nm, QuantX, RowQuant};

enum Inner {
    Bsr(Bsr<f32>),
    BsrQ(Bsr<i8>, RowQuant),
    Nm(Nm<f32>),
    NmQ(Nm<i8>, RowQuant),
}

/// A sparse weight `(out_features, in_features)` built from a dense matrix.
#[pyclass(frozen, module = "hwreg_rs._native")]
pub struct SparseMatrix {
    inner: Inner,
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

fn quant_of(
    rows: usize,
    scale: Vec<f32>,
    visit: impl FnOnce(&mut dyn FnMut(usize, i8)),
) -> hwreg_kernels::Result<RowQuant> {
    sparse::row_quant(rows, scale, visit)
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
        let (rows, cols) = (w.shape()[0], w.shape()[1]);
        let m = mask_slice(&mask, w.shape())?;
        let ws = contiguous(&w, "w")?;
        let b = py
            .detach(|| Bsr::from_dense(ws, rows, cols, m, r, c))
            .or_py()?;
        Ok(SparseMatrix {
            inner: Inner::Bsr(b),
        })
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
        let (rows, cols) = (w.shape()[0], w.shape()[1]);
        let m = mask_slice(&mask, w.shape())?;
        let ws = contiguous(&w, "w")?;
        let sc = contiguous(&scale, "scale")?.to_vec();
        let (b, q) = py
            .detach(|| {
                let b = Bsr::from_dense(ws, rows, cols, m, r, c)?;
                let q = quant_of(rows, sc, |f| b.for_each_row_value(f))?;
                Ok((b, q))
            })
            .or_py()?;
        Ok(SparseMatrix {
            inner: Inner::BsrQ(b, q),
        })
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
        let (rows, cols) = (w.shape()[0], w.shape()[1]);
        let mk = mask_slice(&mask, w.shape())?;
        let ws = contiguous(&w, "w")?;
        let b = py
            .detach(|| Nm::from_dense(ws, rows, cols, mk, n, m))
            .or_py()?;
        Ok(SparseMatrix {
            inner: Inner::Nm(b),
        })
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
        let (rows, cols) = (w.shape()[0], w.shape()[1]);
        let mk = mask_slice(&mask, w.shape())?;
        let ws = contiguous(&w, "w")?;
        let sc = contiguous(&scale, "scale")?.to_vec();
        let (b, q) = py
            .detach(|| {
                let b = Nm::from_dense(ws, rows, cols, mk, n, m)?;
                let q = quant_of(rows, sc, |f| b.for_each_row_value(f))?;
                Ok((b, q))
            })
            .or_py()?;
        Ok(SparseMatrix {
            inner: Inner::NmQ(b, q),
        })
    }

    /// `(out_features, in_features)`.
    #[getter]
    fn shape(&self) -> (usize, usize) {
        match &self.inner {
            Inner::Bsr(b) => (b.rows(), b.cols()),
            Inner::BsrQ(b, _) => (b.rows(), b.cols()),
            Inner::Nm(b) => (b.rows(), b.cols()),
            Inner::NmQ(b, _) => (b.rows(), b.cols()),
        }
    }

    /// "bsr" or "nm".
    #[getter]
    fn format(&self) -> &'static str {
        match &self.inner {
            Inner::Bsr(_) | Inner::BsrQ(..) => "bsr",
            Inner::Nm(_) | Inner::NmQ(..) => "nm",
        }
    }

    /// "float32" or "int8".
    #[getter]
    fn dtype(&self) -> &'static str {
        match &self.inner {
            Inner::Bsr(_) | Inner::Nm(_) => "float32",
            Inner::BsrQ(..) | Inner::NmQ(..) => "int8",
        }
    }

    /// `(r, c)` of a BSR matrix, `(n, m)` of an N:M one.
    #[getter]
    fn block(&self) -> (usize, usize) {
        match &self.inner {
            Inner::Bsr(b) => b.block(),
            Inner::BsrQ(b, _) => b.block(),
            Inner::Nm(b) => b.pattern(),
            Inner::NmQ(b, _) => b.pattern(),
        }
    }

    /// Nonzero stored values.
    #[getter]
    fn nnz(&self) -> usize {
        match &self.inner {
            Inner::Bsr(b) => b.nnz(),
            Inner::BsrQ(b, _) => b.nnz(),
            Inner::Nm(b) => b.nnz(),
            Inner::NmQ(b, _) => b.nnz(),
        }
    }

    /// Stored values, padding zeros included.
    #[getter]
    fn stored(&self) -> usize {
        match &self.inner {
            Inner::Bsr(b) => b.stored(),
            Inner::BsrQ(b, _) => b.stored(),
            Inner::Nm(b) => b.stored(),
            Inner::NmQ(b, _) => b.stored(),
        }
    }

    /// Bytes of the stored arrays (values, indices, row pointers, scales).
    #[getter]
    fn nbytes(&self) -> usize {
        match &self.inner {
            Inner::Bsr(b) => b.nbytes(),
            Inner::BsrQ(b, q) => b.nbytes() + 8 * q.scale().len(),
            Inner::Nm(b) => b.nbytes(),
            Inner::NmQ(b, q) => b.nbytes() + 8 * q.scale().len(),
        }
    }

    /// The dense matrix in the stored dtype (float32 or int8).
    fn to_dense<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (rows, cols) = self.shape();
        Ok(match &self.inner {
            Inner::Bsr(b) => PyArray1::from_vec(py, b.to_dense())
                .reshape([rows, cols])?
                .into_any(),
            Inner::Nm(b) => PyArray1::from_vec(py, b.to_dense())
                .reshape([rows, cols])?
                .into_any(),
            Inner::BsrQ(b, _) => PyArray1::from_vec(py, b.to_dense())
                .reshape([rows, cols])?
                .into_any(),
            Inner::NmQ(b, _) => PyArray1::from_vec(py, b.to_dense())
                .reshape([rows, cols])?
                .into_any(),
        })
    }

    /// Per-row weight scales of an int8 matrix, else None.
    fn scale<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray1<f32>>> {
        match &self.inner {
            Inner::BsrQ(_, q) | Inner::NmQ(_, q) => {
                Some(PyArray1::from_vec(py, q.scale().to_vec()))
            }
            _ => None,
        }
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
        let (n, cols) = self.shape();
        if k != cols {
            return Err(PyValueError::new_err(format!(
                "x has {k} features, the weight expects {cols}"
            )));
        }
        let xs = contiguous(&x, "x")?;
        let bs = bias_slice(&bias)?;
        let y = py
            .detach(|| match &self.inner {
                Inner::Bsr(b) => sparse::bsr_f32_linear(b, xs, batch, bs, relu),
                Inner::Nm(b) => sparse::nm_f32_linear(b, xs, batch, bs, relu),
                Inner::BsrQ(b, q) => {
                    let (xq, s, z) = sparse::quantize_rows_u8(xs, batch, k)?;
                    let qx = QuantX {
                        q: &xq,
                        scale: &s,
                        zero_point: &z,
                    };
                    sparse::bsr_i8_linear(b, q, &qx, batch, bs, relu)
                }
                Inner::NmQ(b, q) => {
                    let (xq, s, z) = sparse::quantize_rows_u8(xs, batch, k)?;
                    let qx = QuantX {
                        q: &xq,
                        scale: &s,
                        zero_point: &z,
                    };
                    sparse::nm_i8_linear(b, q, &qx, batch, bs, relu)
                }
            })
            .or_py()?;
        Ok(PyArray1::from_vec(py, y).reshape([batch, n])?)
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
        let (n, cols) = self.shape();
        if k != cols {
            return Err(PyValueError::new_err(format!(
                "xq has {k} features, the weight expects {cols}"
            )));
        }
        let qs = contiguous(&xq, "xq")?;
        let ss = contiguous(&x_scale, "x_scale")?;
        let zs = contiguous(&x_zero_point, "x_zero_point")?;
        let bs = bias_slice(&bias)?;
        let qx = QuantX {
            q: qs,
            scale: ss,
            zero_point: zs,
        };
        let y = py
            .detach(|| match &self.inner {
                Inner::BsrQ(b, q) => sparse::bsr_i8_linear(b, q, &qx, batch, bs, relu),
                Inner::NmQ(b, q) => sparse::nm_i8_linear(b, q, &qx, batch, bs, relu),
                _ => Err(hwreg_kernels::Error::Dtype(
                    "linear_quantized needs an int8 weight".into(),
                )),
            })
            .or_py()?;
        Ok(PyArray1::from_vec(py, y).reshape([batch, n])?)
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
        .detach(|| sparse::quantize_rows_u8(xs, batch, k))
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
