//! Bindings of `hwreg_kernels::depthwise`: exact int8 depthwise convolution,
//! channels-last. Array conversion, GIL release and error mapping only.

use std::mem::MaybeUninit;

use hwreg_kernels::depthwise::{self, Depthwise};
use hwreg_kernels::exec::Ctx;
use numpy::{
    PyArray1, PyArray4, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray3, PyReadonlyArray4,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyMemoryError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::errors::{contiguous, OrPy};

/// A tuple of `K` non-negative ints: `TypeError` if `v` is not a sequence of
/// ints, `ValueError` naming the argument if it has the wrong length or an
/// entry is negative or too large (never an `OverflowError`).
fn ints<const K: usize>(name: &str, v: &Bound<'_, PyAny>) -> PyResult<[usize; K]> {
    let items: Vec<Bound<'_, PyAny>> = v.extract().map_err(|_| {
        PyTypeError::new_err(format!("{name} must be a tuple of {K} ints; got {v}"))
    })?;
    if items.len() != K {
        return Err(PyValueError::new_err(format!(
            "{name} must have {K} entries; got {v}"
        )));
    }
    let mut out = [0usize; K];
    for (o, item) in out.iter_mut().zip(&items) {
        // Anything with `__index__` (Python or NumPy ints); a negative or huge
        // one is an `OverflowError` in PyO3, reported here as a `ValueError`.
        *o = item.extract::<usize>().map_err(|e| {
            if e.is_instance_of::<PyTypeError>(v.py()) {
                PyTypeError::new_err(format!("{name} must be a tuple of {K} ints; got {v}"))
            } else {
                PyValueError::new_err(format!(
                    "{name} entries must be >= 0 and fit a machine word; got {v}"
                ))
            }
        })?;
    }
    Ok(out)
}

/// The geometry from `x` `(n, h, w, c)`, `weight` `(kh, kw, c)` and the attributes.
fn geometry(
    x: &[usize],
    weight: &[usize],
    stride: &Bound<'_, PyAny>,
    padding: &Bound<'_, PyAny>,
    dilation: &Bound<'_, PyAny>,
) -> PyResult<Depthwise> {
    if weight[2] != x[3] {
        return Err(PyValueError::new_err(format!(
            "weight must have shape (kh, kw, c) with c = {} (x's channels); got {:?}",
            x[3], weight
        )));
    }
    let [sh, sw] = ints("stride", stride)?;
    let [dh, dw] = ints("dilation", dilation)?;
    let padding = ints("padding", padding)?;
    Ok(Depthwise {
        n: x[0],
        h: x[1],
        w: x[2],
        c: x[3],
        kernel: (weight[0], weight[1]),
        stride: (sh, sw),
        dilation: (dh, dw),
        padding,
    })
}

/// Allocates the `(n, oh, ow, c)` output (a `MemoryError` if it cannot be),
/// fills it with `f` with the GIL released and hands it to NumPy.
fn run_into<'py, T: numpy::Element + Send>(
    py: Python<'py>,
    g: &Depthwise,
    f: impl FnOnce(&mut [MaybeUninit<T>]) -> hwreg_kernels::Result<()> + Send,
) -> PyResult<Bound<'py, PyArray4<T>>> {
    let (_, _, len) = g.sizes().or_py()?;
    let (oh, ow) = g.out_hw().or_py()?;
    let mut out: Vec<T> = Vec::new();
    out.try_reserve_exact(len).map_err(|_| {
        PyMemoryError::new_err(format!(
            "cannot allocate the depthwise output ({len} elements)"
        ))
    })?;
    py.detach(|| f(&mut out.spare_capacity_mut()[..len]))
        .or_py()?;
    // SAFETY: on Ok the kernel has written all `len` elements.
    unsafe { out.set_len(len) };
    PyArray1::from_vec(py, out).reshape([g.n, oh, ow, g.c])
}

/// depthwise_conv2d_nhwc(x, zero_points, scales, weight, col_scale, bias, stride, padding, dilation, relu)
/// -> (n, oh, ow, c) float32. Exact int8 depthwise convolution (channel multiplier 1) of uint8
/// NHWC `x` (image `i` quantized with `zero_points[i]`, `scales[i]`) by int8 `weight` `(kh, kw, c)`;
/// padding `(top, left, bottom, right)` is a real zero. Output step as the GEMM's:
/// `(acc * scales[i]) * col_scale[c] + bias[c]`, then ReLU.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn depthwise_conv2d_nhwc<'py>(
    py: Python<'py>,
    x: PyReadonlyArray4<'py, u8>,
    zero_points: PyReadonlyArray1<'py, i32>,
    scales: PyReadonlyArray1<'py, f32>,
    weight: PyReadonlyArray3<'py, i8>,
    col_scale: PyReadonlyArray1<'py, f32>,
    bias: Option<PyReadonlyArray1<'py, f32>>,
    stride: Bound<'py, PyAny>,
    padding: Bound<'py, PyAny>,
    dilation: Bound<'py, PyAny>,
    relu: bool,
) -> PyResult<Bound<'py, PyArray4<f32>>> {
    let g = geometry(x.shape(), weight.shape(), &stride, &padding, &dilation)?;
    let xs = contiguous(&x, "x")?;
    let zp = contiguous(&zero_points, "zero_points")?;
    let sc = contiguous(&scales, "scales")?;
    let ws = contiguous(&weight, "weight")?;
    let cs = contiguous(&col_scale, "col_scale")?;
    let b = match &bias {
        Some(b) => Some(contiguous(b, "bias")?),
        None => None,
    };
    run_into(py, &g, |out| {
        depthwise::depthwise_conv2d_f32_uninit(
            &Ctx::current(),
            xs,
            zp,
            sc,
            ws,
            cs,
            b,
            relu,
            &g,
            out,
        )
    })
}

/// depthwise_conv2d_nhwc_i32(x, zero_points, weight, stride, padding, dilation) -> (n, oh, ow, c) int32:
/// the exact accumulators `sum((x - zero_points[i]) * weight)` of :func:`depthwise_conv2d_nhwc`.
#[pyfunction]
fn depthwise_conv2d_nhwc_i32<'py>(
    py: Python<'py>,
    x: PyReadonlyArray4<'py, u8>,
    zero_points: PyReadonlyArray1<'py, i32>,
    weight: PyReadonlyArray3<'py, i8>,
    stride: Bound<'py, PyAny>,
    padding: Bound<'py, PyAny>,
    dilation: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray4<i32>>> {
    let g = geometry(x.shape(), weight.shape(), &stride, &padding, &dilation)?;
    let xs = contiguous(&x, "x")?;
    let zp = contiguous(&zero_points, "zero_points")?;
    let ws = contiguous(&weight, "weight")?;
    run_into(py, &g, |out| {
        depthwise::depthwise_conv2d_i32_uninit(&Ctx::current(), xs, zp, ws, &g, out)
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(depthwise_conv2d_nhwc, m)?)?;
    m.add_function(wrap_pyfunction!(depthwise_conv2d_nhwc_i32, m)?)?;
    Ok(())
}
