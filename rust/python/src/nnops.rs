//! Bindings of `hwreg_kernels::nnops`: float32 LayerNorm, Softmax / LogSoftmax,
//! GELU, erf and the depthwise 2-D convolution, forward and backward.
//!
//! Row ops take a C-contiguous `(rows, d)` float32 array (the Python layer
//! reshapes and moves the axis); the convolution takes NCHW. Shapes that do
//! not fit raise `ValueError` naming the argument; other dtypes `TypeError`.

use hwreg_kernels::exec::Ctx;
use hwreg_kernels::nnops::depthwise::{self, Depthwise};
use hwreg_kernels::nnops::gelu::{self as kgelu, Approximate};
use hwreg_kernels::nnops::norm;
use hwreg_kernels::nnops::softmax as ksoftmax;
use numpy::{
    PyArray1, PyArray2, PyArray4, PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyReadonlyArray4, PyReadonlyArrayDyn, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::{contiguous, OrPy};

type Pair = (usize, usize);
type Pads = (usize, usize, usize, usize);
type F32Array1<'py> = Bound<'py, PyArray1<f32>>;
type F32Array2<'py> = Bound<'py, PyArray2<f32>>;
type F32Array4<'py> = Bound<'py, PyArray4<f32>>;

fn same_shape(a: &[usize], name: &str, want: &[usize], of: &str) -> PyResult<()> {
    if a != want {
        return Err(PyValueError::new_err(format!(
            "{name} has shape {a:?}; {of} has shape {want:?}"
        )));
    }
    Ok(())
}

fn to2<'py>(py: Python<'py>, v: Vec<f32>, r: usize, d: usize) -> PyResult<F32Array2<'py>> {
    PyArray1::from_vec(py, v).reshape([r, d])
}

fn opt_slice<'a>(
    a: &'a Option<PyReadonlyArray1<'_, f32>>,
    name: &str,
) -> PyResult<Option<&'a [f32]>> {
    a.as_ref().map(|a| contiguous(a, name)).transpose()
}

/// layer_norm(x, weight, bias, eps) -> (y, mean, inv_std): rows of x (rows, d).
#[pyfunction]
#[pyo3(signature = (x, weight, bias, eps))]
fn layer_norm<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    weight: Option<PyReadonlyArray1<'py, f32>>,
    bias: Option<PyReadonlyArray1<'py, f32>>,
    eps: f64,
) -> PyResult<(F32Array2<'py>, F32Array1<'py>, F32Array1<'py>)> {
    let (r, d) = (x.shape()[0], x.shape()[1]);
    let xs = contiguous(&x, "x")?;
    let (ws, bs) = (opt_slice(&weight, "weight")?, opt_slice(&bias, "bias")?);
    let f = py
        .detach(|| norm::layer_norm_forward(&Ctx::current(), xs, r, d, ws, bs, eps))
        .or_py()?;
    Ok((
        to2(py, f.y, r, d)?,
        PyArray1::from_vec(py, f.mean),
        PyArray1::from_vec(py, f.inv_std),
    ))
}

/// layer_norm_backward(dy, x, mean, inv_std, weight, want_dbias) -> (dx, dweight | None, dbias | None)
#[pyfunction]
#[allow(clippy::type_complexity)]
fn layer_norm_backward<'py>(
    py: Python<'py>,
    dy: PyReadonlyArray2<'py, f32>,
    x: PyReadonlyArray2<'py, f32>,
    mean: PyReadonlyArray1<'py, f32>,
    inv_std: PyReadonlyArray1<'py, f32>,
    weight: Option<PyReadonlyArray1<'py, f32>>,
    want_dbias: bool,
) -> PyResult<(
    F32Array2<'py>,
    Option<F32Array1<'py>>,
    Option<F32Array1<'py>>,
)> {
    same_shape(dy.shape(), "dy", x.shape(), "x")?;
    let (r, d) = (x.shape()[0], x.shape()[1]);
    let (gs, xs) = (contiguous(&dy, "dy")?, contiguous(&x, "x")?);
    let (ms, is) = (contiguous(&mean, "mean")?, contiguous(&inv_std, "inv_std")?);
    let ws = opt_slice(&weight, "weight")?;
    let g = py
        .detach(|| norm::layer_norm_backward(&Ctx::current(), gs, xs, ms, is, r, d, ws, want_dbias))
        .or_py()?;
    Ok((
        to2(py, g.dx, r, d)?,
        g.dweight.map(|v| PyArray1::from_vec(py, v)),
        g.dbias.map(|v| PyArray1::from_vec(py, v)),
    ))
}

type RowFwd = fn(&Ctx, &[f32], usize, usize) -> hwreg_kernels::Result<Vec<f32>>;
type RowBwd = fn(&Ctx, &[f32], &[f32], usize, usize) -> hwreg_kernels::Result<Vec<f32>>;

fn rows_forward<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    f: RowFwd,
) -> PyResult<F32Array2<'py>> {
    let (r, d) = (x.shape()[0], x.shape()[1]);
    let xs = contiguous(&x, "x")?;
    let y = py.detach(|| f(&Ctx::current(), xs, r, d)).or_py()?;
    to2(py, y, r, d)
}

fn rows_backward<'py>(
    py: Python<'py>,
    y: PyReadonlyArray2<'py, f32>,
    dy: PyReadonlyArray2<'py, f32>,
    f: RowBwd,
) -> PyResult<F32Array2<'py>> {
    same_shape(dy.shape(), "dy", y.shape(), "y")?;
    let (r, d) = (y.shape()[0], y.shape()[1]);
    let (ys, gs) = (contiguous(&y, "y")?, contiguous(&dy, "dy")?);
    let dx = py.detach(|| f(&Ctx::current(), ys, gs, r, d)).or_py()?;
    to2(py, dx, r, d)
}

/// softmax(x) -> y: along the last axis of x (rows, d).
#[pyfunction]
fn softmax<'py>(py: Python<'py>, x: PyReadonlyArray2<'py, f32>) -> PyResult<F32Array2<'py>> {
    rows_forward(py, x, ksoftmax::softmax_forward)
}

/// softmax_backward(y, dy) -> dx
#[pyfunction]
fn softmax_backward<'py>(
    py: Python<'py>,
    y: PyReadonlyArray2<'py, f32>,
    dy: PyReadonlyArray2<'py, f32>,
) -> PyResult<F32Array2<'py>> {
    rows_backward(py, y, dy, ksoftmax::softmax_backward)
}

/// log_softmax(x) -> y: along the last axis of x (rows, d).
#[pyfunction]
fn log_softmax<'py>(py: Python<'py>, x: PyReadonlyArray2<'py, f32>) -> PyResult<F32Array2<'py>> {
    rows_forward(py, x, ksoftmax::log_softmax_forward)
}

/// log_softmax_backward(y, dy) -> dx
#[pyfunction]
fn log_softmax_backward<'py>(
    py: Python<'py>,
    y: PyReadonlyArray2<'py, f32>,
    dy: PyReadonlyArray2<'py, f32>,
) -> PyResult<F32Array2<'py>> {
    rows_backward(py, y, dy, ksoftmax::log_softmax_backward)
}

fn shaped<'py>(
    py: Python<'py>,
    v: Vec<f32>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    PyArray1::from_vec(py, v).reshape(shape.to_vec())
}

/// gelu(x, approximate="none") -> y, any shape.
#[pyfunction]
#[pyo3(signature = (x, approximate = "none"))]
fn gelu<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    approximate: &str,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let a = Approximate::from_name(approximate).or_py()?;
    let xs = contiguous(&x, "x")?;
    let y = py
        .detach(|| kgelu::gelu_forward(&Ctx::current(), xs, a))
        .or_py()?;
    shaped(py, y, x.shape())
}

/// gelu_backward(x, dy, approximate="none") -> dx = dy * gelu'(x)
#[pyfunction]
#[pyo3(signature = (x, dy, approximate = "none"))]
fn gelu_backward<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    dy: PyReadonlyArrayDyn<'py, f32>,
    approximate: &str,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let a = Approximate::from_name(approximate).or_py()?;
    same_shape(dy.shape(), "dy", x.shape(), "x")?;
    let (xs, gs) = (contiguous(&x, "x")?, contiguous(&dy, "dy")?);
    let dx = py
        .detach(|| kgelu::gelu_backward(&Ctx::current(), xs, gs, a))
        .or_py()?;
    shaped(py, dx, x.shape())
}

/// erf(x) -> float32 error function of every element (absolute error ~1e-7).
#[pyfunction]
fn erf<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let xs = contiguous(&x, "x")?;
    let y = py.detach(|| kgelu::erf(&Ctx::current(), xs)).or_py()?;
    shaped(py, y, x.shape())
}

/// The geometry of an NCHW input and a `(c·m, 1, kh, kw)` weight.
fn geometry(
    x: &[usize],
    weight: &[usize],
    stride: Pair,
    padding: Pads,
    dilation: Pair,
) -> PyResult<Depthwise> {
    let (n, c, h, w) = (x[0], x[1], x[2], x[3]);
    let (oc, one, kh, kw) = (weight[0], weight[1], weight[2], weight[3]);
    if c == 0 {
        return Err(PyValueError::new_err(
            "x must have at least one channel; got shape with C = 0",
        ));
    }
    if one != 1 || oc == 0 || oc % c != 0 {
        return Err(PyValueError::new_err(format!(
            "weight has shape {weight:?}; a depthwise convolution of {c} channels needs (m*{c}, 1, kh, kw) with m >= 1"
        )));
    }
    Ok(Depthwise {
        n,
        c,
        h,
        w,
        m: oc / c,
        kh,
        kw,
        sh: stride.0,
        sw: stride.1,
        dh: dilation.0,
        dw: dilation.1,
        pads: [padding.0, padding.1, padding.2, padding.3],
    })
}

/// depthwise_conv2d(x, weight, bias, stride, padding, dilation) -> y (n, c*m, oh, ow);
/// padding is (top, left, bottom, right).
#[pyfunction]
fn depthwise_conv2d<'py>(
    py: Python<'py>,
    x: PyReadonlyArray4<'py, f32>,
    weight: PyReadonlyArray4<'py, f32>,
    bias: Option<PyReadonlyArray1<'py, f32>>,
    stride: Pair,
    padding: Pads,
    dilation: Pair,
) -> PyResult<F32Array4<'py>> {
    let g = geometry(x.shape(), weight.shape(), stride, padding, dilation)?;
    let (xs, ws) = (contiguous(&x, "x")?, contiguous(&weight, "weight")?);
    let bs = opt_slice(&bias, "bias")?;
    let (y, k) = py
        .detach(|| depthwise::depthwise_conv2d(&Ctx::current(), xs, ws, bs, g))
        .or_py()?;
    PyArray1::from_vec(py, y).reshape([g.n, k.oc(), k.oh, k.ow])
}

/// depthwise_conv2d_backward(dy, x, weight, stride, padding, dilation, want_dbias)
/// -> (dx, dweight, dbias | None)
#[pyfunction]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn depthwise_conv2d_backward<'py>(
    py: Python<'py>,
    dy: PyReadonlyArray4<'py, f32>,
    x: PyReadonlyArray4<'py, f32>,
    weight: PyReadonlyArray4<'py, f32>,
    stride: Pair,
    padding: Pads,
    dilation: Pair,
    want_dbias: bool,
) -> PyResult<(F32Array4<'py>, F32Array4<'py>, Option<F32Array1<'py>>)> {
    let g = geometry(x.shape(), weight.shape(), stride, padding, dilation)?;
    let k = g.check().or_py()?;
    same_shape(
        dy.shape(),
        "dy",
        &[g.n, k.oc(), k.oh, k.ow],
        "the convolution's output",
    )?;
    let (gs, xs, ws) = (
        contiguous(&dy, "dy")?,
        contiguous(&x, "x")?,
        contiguous(&weight, "weight")?,
    );
    let r = py
        .detach(|| depthwise::depthwise_conv2d_backward(&Ctx::current(), gs, xs, ws, g, want_dbias))
        .or_py()?;
    let (xshape, wshape) = ([g.n, g.c, g.h, g.w], [k.oc(), 1, g.kh, g.kw]);
    Ok((
        PyArray1::from_vec(py, r.dx).reshape(xshape)?,
        PyArray1::from_vec(py, r.dweight).reshape(wshape)?,
        r.dbias.map(|v| PyArray1::from_vec(py, v)),
    ))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(layer_norm, m)?)?;
    m.add_function(wrap_pyfunction!(layer_norm_backward, m)?)?;
    m.add_function(wrap_pyfunction!(softmax, m)?)?;
    m.add_function(wrap_pyfunction!(softmax_backward, m)?)?;
    m.add_function(wrap_pyfunction!(log_softmax, m)?)?;
    m.add_function(wrap_pyfunction!(log_softmax_backward, m)?)?;
    m.add_function(wrap_pyfunction!(gelu, m)?)?;
    m.add_function(wrap_pyfunction!(gelu_backward, m)?)?;
    m.add_function(wrap_pyfunction!(erf, m)?)?;
    m.add_function(wrap_pyfunction!(depthwise_conv2d, m)?)?;
    m.add_function(wrap_pyfunction!(depthwise_conv2d_backward, m)?)?;
    Ok(())
}
