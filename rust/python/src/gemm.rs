//! Bindings of `hwreg_kernels::gemm`: packing B, MatMulInteger, QLinearMatMul
//! and the int8 linear layer steps. Arrays arrive 2-D, C-contiguous and
//! native-endian (the Python layer reshapes batches and checks dtypes);
//! zero points and scales arrive as 1-D arrays of length 1 (scalar) or one
//! per row / column.

use std::sync::Arc;

use hwreg_kernels::exec::Ctx;
use hwreg_kernels::gemm::output::{OutElem, OutputStep, Param};
use hwreg_kernels::gemm::{self, ASource, PackedB, ZeroPoint};
use numpy::{
    PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use crate::errors::{contiguous, OrPy};

/// A uint8 or int8 2-D array.
enum Int8Array<'py> {
    U8(PyReadonlyArray2<'py, u8>),
    I8(PyReadonlyArray2<'py, i8>),
}

impl<'a, 'py> FromPyObject<'a, 'py> for Int8Array<'py> {
    type Error = PyErr;

    /// By type checks, not by trying each variant in turn: a failed
    /// extraction builds a Python error (~10 µs a call).
    fn extract(ob: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let busy = |_| pyo3::exceptions::PyValueError::new_err("array is being written elsewhere");
        if let Ok(v) = ob.cast::<PyArray2<u8>>() {
            return Ok(Int8Array::U8(v.to_owned().try_readonly().map_err(busy)?));
        }
        if let Ok(v) = ob.cast::<PyArray2<i8>>() {
            return Ok(Int8Array::I8(v.to_owned().try_readonly().map_err(busy)?));
        }
        Err(pyo3::exceptions::PyTypeError::new_err(
            "expected a 2-D uint8 or int8 array",
        ))
    }
}

impl Int8Array<'_> {
    fn dims(&self) -> (usize, usize) {
        let s = match self {
            Int8Array::U8(a) => a.shape(),
            Int8Array::I8(a) => a.shape(),
        };
        (s[0], s[1])
    }
    fn source(&self, name: &str) -> PyResult<ASource<'_>> {
        Ok(match self {
            Int8Array::U8(a) => ASource::U8(contiguous(a, name)?),
            Int8Array::I8(a) => ASource::I8(contiguous(a, name)?),
        })
    }
}

fn zp<'a>(v: &'a [i32]) -> ZeroPoint<'a> {
    if v.len() == 1 {
        ZeroPoint::Scalar(v[0])
    } else {
        ZeroPoint::PerIndex(v)
    }
}

pub(crate) fn param<'a>(v: &'a [f32]) -> Param<'a> {
    if v.len() == 1 {
        Param::Scalar(v[0])
    } else {
        Param::PerIndex(v)
    }
}

/// An int8/uint8 `K × N` matrix packed once for the GEMM kernels.
#[pyclass(frozen, name = "_PackedB", module = "hwreg_rs._native")]
pub struct PyPackedB {
    pub(crate) inner: Arc<PackedB>,
}

#[pymethods]
impl PyPackedB {
    /// Rows (K).
    #[getter]
    fn k(&self) -> usize {
        self.inner.k()
    }
    /// Columns (N).
    #[getter]
    fn n(&self) -> usize {
        self.inner.n()
    }
    /// Whether the packed matrix was int8 (else uint8).
    #[getter]
    fn signed(&self) -> bool {
        self.inner.is_signed()
    }
    /// Bytes held by the packed form.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }
    /// The original `K × N` values as int32.
    fn unpack<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<i32>>> {
        let v = py.detach(|| self.inner.unpack());
        PyArray1::from_vec(py, v).reshape([self.inner.k(), self.inner.n()])
    }
}

/// _pack_b(b, zero_point, transposed) -> _PackedB. `b` is (K, N), or (N, K)
/// when `transposed` (a Linear weight).
#[pyfunction]
fn _pack_b(
    py: Python<'_>,
    b: Int8Array<'_>,
    zero_point: PyReadonlyArray1<'_, i32>,
    transposed: bool,
) -> PyResult<PyPackedB> {
    let (r, c) = b.dims();
    let z = contiguous(&zero_point, "b_zero_point")?;
    let src = b.source("b")?;
    let ctx = Ctx::current();
    let inner = py
        .detach(|| match (src, transposed) {
            (ASource::U8(v), false) => PackedB::from_kn_u8(&ctx, v, r, c, zp(z)),
            (ASource::I8(v), false) => PackedB::from_kn_i8(&ctx, v, r, c, zp(z)),
            (ASource::U8(v), true) => PackedB::from_nk_u8(&ctx, v, r, c, zp(z)),
            (ASource::I8(v), true) => PackedB::from_nk_i8(&ctx, v, r, c, zp(z)),
        })
        .or_py()?;
    Ok(PyPackedB {
        inner: Arc::new(inner),
    })
}

/// B of a product: packed once, or a row-major `K × N` array given per call.
enum BArg<'py> {
    Packed(Bound<'py, PyPackedB>),
    Rows(Int8Array<'py>),
}

impl<'a, 'py> FromPyObject<'a, 'py> for BArg<'py> {
    type Error = PyErr;

    fn extract(ob: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(p) = ob.cast::<PyPackedB>() {
            return Ok(BArg::Packed(p.to_owned()));
        }
        Ok(BArg::Rows(ob.extract()?))
    }
}

fn run_out<'py, T: OutElem + numpy::Element>(
    py: Python<'py>,
    a: &Int8Array<'_>,
    a_zp: &[i32],
    b: &PackedB,
    step: &OutputStep<'_>,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    let (m, k) = a.dims();
    let src = a.source("a")?;
    let out = py
        .detach(|| gemm::matmul_vec::<T>(&Ctx::current(), src, m, k, zp(a_zp), b, step))
        .or_py()?;
    PyArray1::from_vec(py, out).reshape([m, b.n()])
}

/// The product with `b` packed or given per call (then with `b_zero_point`).
fn run_b<'py, T: OutElem + numpy::Element>(
    py: Python<'py>,
    a: &Int8Array<'_>,
    a_zp: &[i32],
    b: &BArg<'_>,
    b_zero_point: &Option<PyReadonlyArray1<'_, i32>>,
    step: &OutputStep<'_>,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    let rows = match b {
        BArg::Packed(p) => return run_out::<T>(py, a, a_zp, &p.get().inner, step),
        BArg::Rows(r) => r,
    };
    let (m, k) = a.dims();
    let (kb, n) = rows.dims();
    if kb != k {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "a has K = {k} columns but b has {kb} rows"
        )));
    }
    let src = a.source("a")?;
    let bsrc = rows.source("b")?;
    let zb = match b_zero_point {
        Some(z) => contiguous(z, "b_zero_point")?,
        None => &[0][..],
    };
    let out = py
        .detach(|| {
            gemm::matmul_b_rows_vec::<T>(&Ctx::current(), src, m, k, zp(a_zp), bsrc, n, zp(zb), step)
        })
        .or_py()?;
    PyArray1::from_vec(py, out).reshape([m, n])
}

/// _matmul_integer(a, a_zero_point, b, b_zero_point=None) -> int32 (M, N);
/// `b` packed, or a (K, N) array given per call with its zero point.
#[pyfunction]
#[pyo3(signature = (a, a_zero_point, b, b_zero_point=None))]
fn _matmul_integer<'py>(
    py: Python<'py>,
    a: Int8Array<'py>,
    a_zero_point: PyReadonlyArray1<'py, i32>,
    b: BArg<'py>,
    b_zero_point: Option<PyReadonlyArray1<'py, i32>>,
) -> PyResult<Bound<'py, PyArray2<i32>>> {
    let z = contiguous(&a_zero_point, "a_zero_point")?;
    run_b::<i32>(py, &a, z, &b, &b_zero_point, &OutputStep::Int32)
}

/// _qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, y_scale, y_zero_point, y_signed, b_zero_point=None)
/// -> uint8/int8 (M, N); `b` packed, or a (K, N) array given per call with its zero point.
#[pyfunction]
#[pyo3(signature = (a, a_scale, a_zero_point, b, b_scale, y_scale, y_zero_point, y_signed, b_zero_point=None))]
#[allow(clippy::too_many_arguments)]
fn _qlinear_matmul<'py>(
    py: Python<'py>,
    a: Int8Array<'py>,
    a_scale: PyReadonlyArray1<'py, f32>,
    a_zero_point: PyReadonlyArray1<'py, i32>,
    b: BArg<'py>,
    b_scale: PyReadonlyArray1<'py, f32>,
    y_scale: f32,
    y_zero_point: i32,
    y_signed: bool,
    b_zero_point: Option<PyReadonlyArray1<'py, i32>>,
) -> PyResult<Bound<'py, PyAny>> {
    let z = contiguous(&a_zero_point, "a_zero_point")?;
    let step = OutputStep::QLinear {
        a_scale: param(contiguous(&a_scale, "a_scale")?),
        b_scale: param(contiguous(&b_scale, "b_scale")?),
        y_scale,
        y_zero_point,
    };
    Ok(if y_signed {
        run_b::<i8>(py, &a, z, &b, &b_zero_point, &step)?.into_any()
    } else {
        run_b::<u8>(py, &a, z, &b, &b_zero_point, &step)?.into_any()
    })
}

/// Multiply-accumulates below which a GEMM call runs on the caller's thread.
#[pyfunction]
fn gemm_parallel_min_work() -> usize {
    gemm::GEMM_PARALLEL_MIN_WORK
}

/// _linear_dynamic(x, b, col_scale, bias, relu) -> float32 (M, N)
#[pyfunction]
#[pyo3(signature = (x, b, col_scale, bias, relu))]
fn _linear_dynamic<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    b: &Bound<'py, PyPackedB>,
    col_scale: PyReadonlyArray1<'py, f32>,
    bias: Option<PyReadonlyArray1<'py, f32>>,
    relu: bool,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (m, k) = (x.shape()[0], x.shape()[1]);
    let xs = contiguous(&x, "x")?;
    let cs = param(contiguous(&col_scale, "weight_scale")?);
    let bias = match &bias {
        Some(v) => Some(contiguous(v, "bias")?),
        None => None,
    };
    let pb = &b.get().inner;
    let out = py
        .detach(|| gemm::linear_dynamic_vec(&Ctx::current(), xs, m, k, pb, cs, bias, relu))
        .or_py()?;
    PyArray1::from_vec(py, out).reshape([m, pb.n()])
}

/// _linear_static(x_q, x_scale, x_zero_point, b, col_scale, bias, relu, y_scale, y_zero_point, y_signed)
/// -> float32 when y_scale is None, else uint8/int8 (M, N)
#[pyfunction]
#[pyo3(signature = (x_q, x_scale, x_zero_point, b, col_scale, bias, relu, y_scale, y_zero_point, y_signed))]
#[allow(clippy::too_many_arguments)]
fn _linear_static<'py>(
    py: Python<'py>,
    x_q: Int8Array<'py>,
    x_scale: PyReadonlyArray1<'py, f32>,
    x_zero_point: PyReadonlyArray1<'py, i32>,
    b: &Bound<'py, PyPackedB>,
    col_scale: PyReadonlyArray1<'py, f32>,
    bias: Option<PyReadonlyArray1<'py, f32>>,
    relu: bool,
    y_scale: Option<f32>,
    y_zero_point: i32,
    y_signed: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let z = contiguous(&x_zero_point, "x_zero_point")?;
    let row_scale = param(contiguous(&x_scale, "x_scale")?);
    let col_scale = param(contiguous(&col_scale, "weight_scale")?);
    let bias = match &bias {
        Some(v) => Some(contiguous(v, "bias")?),
        None => None,
    };
    let pb = &b.get().inner;
    Ok(match y_scale {
        None => {
            let step = OutputStep::Float {
                row_scale,
                col_scale,
                bias,
                relu,
            };
            run_out::<f32>(py, &x_q, z, pb, &step)?.into_any()
        }
        Some(y_scale) => {
            let step = OutputStep::Requant {
                row_scale,
                col_scale,
                bias,
                relu,
                y_scale,
                y_zero_point,
            };
            if y_signed {
                run_out::<i8>(py, &x_q, z, pb, &step)?.into_any()
            } else {
                run_out::<u8>(py, &x_q, z, pb, &step)?.into_any()
            }
        }
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPackedB>()?;
    m.add_function(wrap_pyfunction!(_pack_b, m)?)?;
    m.add_function(wrap_pyfunction!(_matmul_integer, m)?)?;
    m.add_function(wrap_pyfunction!(_qlinear_matmul, m)?)?;
    m.add_function(wrap_pyfunction!(_linear_dynamic, m)?)?;
    m.add_function(wrap_pyfunction!(gemm_parallel_min_work, m)?)?;
    m.add_function(wrap_pyfunction!(_linear_static, m)?)?;
    Ok(())
}
