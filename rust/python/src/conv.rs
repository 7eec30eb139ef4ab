//! Bindings of `hwreg_kernels::conv`: im2col / col2im and 2-D pooling, in
//! NCHW (training, float32) and NHWC (the int8 runtime).
//!
//! Geometry is passed as `(kh, kw)`, `(sh, sw)`, `(ph, pw)` tuples; inputs are
//! C-contiguous arrays (the Python layer guarantees it).

use hwreg_kernels::conv::nhwc::{self, Pool};
use hwreg_kernels::conv::{self, Layout, Window};
use hwreg_kernels::exec::Ctx;
use numpy::{
    PyArray1, PyArray4, PyArrayMethods, PyReadonlyArray2, PyReadonlyArray4, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::{contiguous, OrPy};

type Pair = (usize, usize);

/// The pooled output and PyTorch-style argmax indices.
type PoolWithIndices<'py> = (Bound<'py, PyArray4<f32>>, Bound<'py, PyArray4<i64>>);

/// The window of an NCHW `shape`.
fn window(shape: &[usize], k: Pair, s: Pair, p: Pair) -> Window {
    Window::new(shape[0], shape[1], shape[2], shape[3], k, s, p)
}

fn to4<'py>(py: Python<'py>, v: Vec<f32>, dims: [usize; 4]) -> PyResult<Bound<'py, PyArray4<f32>>> {
    PyArray1::from_vec(py, v).reshape(dims)
}

/// An NCHW image batch of one of the element types im2col accepts.
#[derive(FromPyObject)]
enum Images<'py> {
    F32(PyReadonlyArray4<'py, f32>),
    U8(PyReadonlyArray4<'py, u8>),
    I8(PyReadonlyArray4<'py, i8>),
}

fn unfold<'py, T: numpy::Element + Copy + Send + Sync>(
    py: Python<'py>,
    layout: Layout,
    x: &PyReadonlyArray4<'py, T>,
    (k, s, p): (Pair, Pair, Pair),
    pad: T,
) -> PyResult<Bound<'py, PyAny>> {
    let win = Window::of_shape(x.shape(), layout, k, s, p).or_py()?;
    let xs = contiguous(x, "x")?;
    let cols = py
        .detach(|| conv::unfold(&Ctx::current(), layout, xs, win, pad))
        .or_py()?;
    let (r, kk) = win.cols_shape();
    Ok(PyArray1::from_vec(py, cols).reshape([r, kk])?.into_any())
}

/// The unfold of an image batch of any accepted dtype.
fn unfold_images<'py>(
    py: Python<'py>,
    layout: Layout,
    x: Images<'py>,
    geom: (Pair, Pair, Pair),
    pad_value: f64,
) -> PyResult<Bound<'py, PyAny>> {
    match x {
        Images::F32(a) => unfold(py, layout, &a, geom, pad_value as f32),
        Images::U8(a) => unfold(
            py,
            layout,
            &a,
            geom,
            int_pad::<u8>(pad_value, 0, 255, "uint8")?,
        ),
        Images::I8(a) => unfold(
            py,
            layout,
            &a,
            geom,
            int_pad::<i8>(pad_value, -128, 127, "int8")?,
        ),
    }
}

fn int_pad<T: TryFrom<i64>>(v: f64, lo: i64, hi: i64, dtype: &str) -> PyResult<T> {
    if v.fract() != 0.0 || !(lo as f64..=hi as f64).contains(&v) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "pad_value must be an integer in [{lo}, {hi}] for {dtype} input; got {v}"
        )));
    }
    T::try_from(v as i64)
        .map_err(|_| pyo3::exceptions::PyValueError::new_err("pad_value out of range"))
}

/// `name(x, kernel_size, stride, padding, pad_value=0.0)`: the unfold of an
/// image batch stored in `layout`.
macro_rules! unfold_fn {
    ($(#[$doc:meta])* $name:ident, $layout:expr) => {
        $(#[$doc])*
        #[pyfunction]
        #[pyo3(signature = (x, kernel_size, stride, padding, pad_value=0.0))]
        fn $name<'py>(
            py: Python<'py>,
            x: Images<'py>,
            kernel_size: Pair,
            stride: Pair,
            padding: Pair,
            pad_value: f64,
        ) -> PyResult<Bound<'py, PyAny>> {
            unfold_images(py, $layout, x, (kernel_size, stride, padding), pad_value)
        }
    };
}

unfold_fn!(
    /// im2col(x, kernel_size, stride, padding, pad_value=0.0) -> (n*oh*ow, c*kh*kw), x's dtype
    /// (float32, uint8 or int8; for integers `pad_value` is the zero point written into the padding).
    im2col,
    Layout::Nchw
);

unfold_fn!(
    /// im2col_nhwc(x, kernel_size, stride, padding, pad_value=0.0) -> (n*oh*ow, kh*kw*c), x's dtype.
    /// Columns in `(ky, kx, c)` order; for integer input `pad_value` is the zero point.
    im2col_nhwc,
    Layout::Nhwc
);

/// col2im(cols, input_shape, kernel_size, stride, padding) -> (n, c, h, w) float32
#[pyfunction]
fn col2im<'py>(
    py: Python<'py>,
    cols: PyReadonlyArray2<'py, f32>,
    input_shape: (usize, usize, usize, usize),
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
) -> PyResult<Bound<'py, PyArray4<f32>>> {
    let (n, c, h, w) = input_shape;
    let win = window(&[n, c, h, w], kernel_size, stride, padding);
    let win = win.check().or_py()?;
    let (r, k) = win.cols_shape();
    if cols.shape() != [r, k] {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "cols has shape {:?}; input shape {:?} with this kernel needs ({r}, {k})",
            cols.shape(),
            input_shape
        )));
    }
    let cs = contiguous(&cols, "cols")?;
    let x = py
        .detach(|| conv::col2im(&Ctx::current(), cs, win))
        .or_py()?;
    to4(py, x, [n, c, h, w])
}

/// max_pool2d(x, kernel_size, stride, padding) -> (out float32, indices int64)
#[pyfunction]
fn max_pool2d<'py>(
    py: Python<'py>,
    x: PyReadonlyArray4<'py, f32>,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
) -> PyResult<PoolWithIndices<'py>> {
    let win = window(x.shape(), kernel_size, stride, padding);
    let xs = contiguous(&x, "x")?;
    let (out, idx) = py
        .detach(|| conv::max_pool2d(&Ctx::current(), xs, win))
        .or_py()?;
    let dims = [win.n, win.c, win.oh(), win.ow()];
    Ok((
        to4(py, out, dims)?,
        PyArray1::from_vec(py, idx).reshape(dims)?,
    ))
}

/// max_pool2d_backward(grad, indices, input_shape, kernel_size, stride, padding) -> float32
#[pyfunction]
fn max_pool2d_backward<'py>(
    py: Python<'py>,
    grad: PyReadonlyArray4<'py, f32>,
    indices: PyReadonlyArray4<'py, i64>,
    input_shape: (usize, usize, usize, usize),
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
) -> PyResult<Bound<'py, PyArray4<f32>>> {
    let (n, c, h, w) = input_shape;
    let win = window(&[n, c, h, w], kernel_size, stride, padding);
    let gs = contiguous(&grad, "grad")?;
    let is = contiguous(&indices, "indices")?;
    let gx = py
        .detach(|| conv::max_pool2d_backward(&Ctx::current(), gs, is, win))
        .or_py()?;
    to4(py, gx, [n, c, h, w])
}

/// avg_pool2d(x, kernel_size, stride, padding) -> float32 (count_include_pad)
#[pyfunction]
fn avg_pool2d<'py>(
    py: Python<'py>,
    x: PyReadonlyArray4<'py, f32>,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
) -> PyResult<Bound<'py, PyArray4<f32>>> {
    let win = window(x.shape(), kernel_size, stride, padding);
    let xs = contiguous(&x, "x")?;
    let out = py
        .detach(|| conv::avg_pool2d(&Ctx::current(), xs, win))
        .or_py()?;
    to4(py, out, [win.n, win.c, win.oh(), win.ow()])
}

/// avg_pool2d_backward(grad, input_shape, kernel_size, stride, padding) -> float32
#[pyfunction]
fn avg_pool2d_backward<'py>(
    py: Python<'py>,
    grad: PyReadonlyArray4<'py, f32>,
    input_shape: (usize, usize, usize, usize),
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
) -> PyResult<Bound<'py, PyArray4<f32>>> {
    let (n, c, h, w) = input_shape;
    let win = window(&[n, c, h, w], kernel_size, stride, padding);
    let gs = contiguous(&grad, "grad")?;
    let gx = py
        .detach(|| conv::avg_pool2d_backward(&Ctx::current(), gs, win))
        .or_py()?;
    to4(py, gx, [n, c, h, w])
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
    let win = Window::of_shape(x.shape(), Layout::Nhwc, kernel_size, stride, padding).or_py()?;
    let xs = contiguous(&x, "x")?;
    let out = py
        .detach(|| nhwc::pool2d(&Ctx::current(), xs, win, kind))
        .or_py()?;
    PyArray1::from_vec(py, out).reshape([win.n, win.oh(), win.ow(), win.c])
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(im2col, m)?)?;
    m.add_function(wrap_pyfunction!(col2im, m)?)?;
    m.add_function(wrap_pyfunction!(max_pool2d, m)?)?;
    m.add_function(wrap_pyfunction!(max_pool2d_backward, m)?)?;
    m.add_function(wrap_pyfunction!(avg_pool2d, m)?)?;
    m.add_function(wrap_pyfunction!(avg_pool2d_backward, m)?)?;
    m.add_function(wrap_pyfunction!(im2col_nhwc, m)?)?;
    m.add_function(wrap_pyfunction!(pool2d_nhwc, m)?)?;
    Ok(())
}
