//! Bindings of `hwreg_kernels::nhwc`: channels-last im2col and pooling for
//! the int8 runtime. Inputs are C-contiguous `(n, h, w, c)` arrays.

use hwreg_kernels::conv::Window;
use hwreg_kernels::nhwc::{self, Pool};
use numpy::{PyArray1, PyArray4, PyArrayMethods, PyReadonlyArray4, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::conv::{int_pad, Images, Pair};
use crate::errors::{contiguous, OrPy};

/// The window of an NHWC `shape` (the geometry is the same as for NCHW).
fn window(shape: &[usize], k: Pair, s: Pair, p: Pair) -> Window {
    Window::new(shape[0], shape[3], shape[1], shape[2], k, s, p)
}

fn unfold<'py, T: numpy::Element + Copy + Send + Sync>(
    py: Python<'py>,
    x: &PyReadonlyArray4<'py, T>,
    k: Pair,
    s: Pair,
    p: Pair,
    pad: T,
) -> PyResult<Bound<'py, PyAny>> {
    let win = window(x.shape(), k, s, p);
    let xs = contiguous(x, "x")?;
    let cols = py.detach(|| nhwc::im2col(xs, win, pad)).or_py()?;
    let (r, kk) = win.cols_shape();
    Ok(PyArray1::from_vec(py, cols).reshape([r, kk])?.into_any())
}

/// im2col_nhwc(x, kernel_size, stride, padding, pad_value=0.0) -> (n*oh*ow, kh*kw*c), x's dtype.
/// Columns in `(ky, kx, c)` order; for integer input `pad_value` is the zero point.
#[pyfunction]
#[pyo3(signature = (x, kernel_size, stride, padding, pad_value=0.0))]
fn im2col_nhwc<'py>(
    py: Python<'py>,
    x: Images<'py>,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    pad_value: f64,
) -> PyResult<Bound<'py, PyAny>> {
    match x {
        Images::F32(a) => unfold(py, &a, kernel_size, stride, padding, pad_value as f32),
        Images::U8(a) => unfold(
            py,
            &a,
            kernel_size,
            stride,
            padding,
            int_pad::<u8>(pad_value, 0, 255, "uint8")?,
        ),
        Images::I8(a) => unfold(
            py,
            &a,
            kernel_size,
            stride,
            padding,
            int_pad::<i8>(pad_value, -128, 127, "int8")?,
        ),
    }
}

/// pool2d_nhwc(x, kernel_size, stride, padding, kind) -> (n, oh, ow, c) float32; kind "max" or "avg".
#[pyfunction]
fn pool2d_nhwc<'py>(
    py: Python<'py>,
    x: PyReadonlyArray4<'py, f32>,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    kind: &str,
) -> PyResult<Bound<'py, PyArray4<f32>>> {
    let kind = match kind {
        "max" => Pool::Max,
        "avg" => Pool::Avg,
        other => {
            return Err(PyValueError::new_err(format!(
                "kind must be 'max' or 'avg'; got {other:?}"
            )))
        }
    };
    let win = window(x.shape(), kernel_size, stride, padding);
    let xs = contiguous(&x, "x")?;
    let out = py.detach(|| nhwc::pool2d(xs, win, kind)).or_py()?;
    PyArray1::from_vec(py, out).reshape([win.n, win.oh(), win.ow(), win.c])
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(im2col_nhwc, m)?)?;
    m.add_function(wrap_pyfunction!(pool2d_nhwc, m)?)?;
    Ok(())
}
