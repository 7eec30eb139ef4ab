//! Bindings of `hwreg_kernels::quant`: array conversion, GIL release, error mapping.
//!
//! The Python layer (`hwreg_rs/quant.py`) validates types and normalises `axis`;
//! the kernels validate values and lengths again, so nothing here can be fed garbage.

use hwreg_kernels::exec::Ctx;
use hwreg_kernels::quant::{self, calib, AxisLayout, QElem, QType};
use numpy::ndarray::IxDyn;
use numpy::{
    PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyReadonlyArrayDyn, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::errors::{contiguous, OrPy};

/// A zeroed NumPy array for a kernel's output. NumPy's allocator (calloc plus its
/// huge-page advice) makes the first touch of a large output far cheaper than a
/// fresh `Vec` would be; the kernel then fills it with the GIL released.
fn output<'py, T: numpy::Element>(py: Python<'py>, shape: &[usize]) -> Bound<'py, PyArrayDyn<T>> {
    PyArrayDyn::<T>::zeros(py, IxDyn(shape), false)
}

/// The caller's `out` array (checked: element type `T`, shape `shape`) or a new one.
fn output_or<'py, T: numpy::Element>(
    py: Python<'py>,
    out: Option<&Bound<'py, PyAny>>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let Some(o) = out else {
        return Ok(output::<T>(py, shape));
    };
    let arr = o.cast::<PyArrayDyn<T>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "out must be a numpy array of {}",
            std::any::type_name::<T>()
        ))
    })?;
    if arr.shape() != shape {
        return Err(PyValueError::new_err(format!(
            "out has shape {:?}; expected {:?}",
            arr.shape(),
            shape
        )));
    }
    Ok(arr.clone())
}

/// Runs `f` on the mutable contents of `arr` with the GIL released.
fn fill<'py, T: numpy::Element, R: Send>(
    py: Python<'py>,
    arr: &Bound<'py, PyArrayDyn<T>>,
    f: impl FnOnce(&mut [T]) -> R + Send,
) -> PyResult<R> {
    let mut rw = arr
        .try_readwrite()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let out = rw
        .as_slice_mut()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(py.detach(|| f(out)))
}

#[allow(clippy::too_many_arguments)]
fn quantize_into<'py, T: QElem + numpy::Element>(
    py: Python<'py>,
    x: &[f32],
    shape: &[usize],
    layout: AxisLayout,
    scale: &[f32],
    zero_point: &[i32],
    qrange: Option<(i32, i32)>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let qrange = qrange.unwrap_or(T::QTYPE.range());
    let arr = output_or::<T>(py, out, shape)?;
    fill(py, &arr, |out| {
        quant::quantize_clamped(&Ctx::current(), x, layout, scale, zero_point, qrange, out)
    })?
    .or_py()?;
    Ok(arr.into_any())
}

/// ONNX QuantizeLinear of a float32 array (see `hwreg_rs.quantize`); `qrange`
/// narrows the saturation range (grids of fewer than 8 bits); `out` (checked by the
/// Python layer for contiguity and overlap) receives the result.
#[pyfunction]
#[pyo3(signature = (x, scale, zero_point, axis, dtype, qrange=None, out=None))]
#[allow(clippy::too_many_arguments)]
fn quantize_linear<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    scale: PyReadonlyArray1<'py, f32>,
    zero_point: PyReadonlyArray1<'py, i32>,
    axis: Option<usize>,
    dtype: &str,
    qrange: Option<(i32, i32)>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let shape = x.shape().to_vec();
    let layout = AxisLayout::new(&shape, axis).or_py()?;
    let (xs, s, z) = (
        contiguous(&x, "x")?,
        contiguous(&scale, "scale")?,
        contiguous(&zero_point, "zero_point")?,
    );
    match QType::from_name(dtype) {
        Some(QType::I8) => quantize_into::<i8>(py, xs, &shape, layout, s, z, qrange, out),
        Some(QType::U8) => quantize_into::<u8>(py, xs, &shape, layout, s, z, qrange, out),
        None => Err(PyTypeError::new_err(format!(
            "dtype must be 'int8' or 'uint8'; got {dtype:?}"
        ))),
    }
}

fn dequantize_from<'py, T: QElem + numpy::Element>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, T>,
    axis: Option<usize>,
    scale: &[f32],
    zero_point: &[i32],
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let shape = q.shape().to_vec();
    let layout = AxisLayout::new(&shape, axis).or_py()?;
    let qs = contiguous(&q, "q")?;
    let arr = output_or::<f32>(py, out, &shape)?;
    fill(py, &arr, |out| {
        quant::dequantize(&Ctx::current(), qs, layout, scale, zero_point, out)
    })?
    .or_py()?;
    Ok(arr)
}

/// ONNX DequantizeLinear of an int8 or uint8 array to float32 (see `hwreg_rs.dequantize`).
#[pyfunction]
#[pyo3(signature = (q, scale, zero_point, axis, out=None))]
fn dequantize_linear<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    scale: PyReadonlyArray1<'py, f32>,
    zero_point: PyReadonlyArray1<'py, i32>,
    axis: Option<usize>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let (s, z) = (
        contiguous(&scale, "scale")?,
        contiguous(&zero_point, "zero_point")?,
    );
    if let Ok(a) = q.extract::<PyReadonlyArrayDyn<'py, i8>>() {
        dequantize_from(py, a, axis, s, z, out)
    } else if let Ok(a) = q.extract::<PyReadonlyArrayDyn<'py, u8>>() {
        dequantize_from(py, a, axis, s, z, out)
    } else {
        Err(PyTypeError::new_err("q must be an int8 or uint8 array"))
    }
}

/// ONNX DynamicQuantizeLinear: `(q uint8, scale, zero_point)`.
#[pyfunction]
fn dynamic_quantize_linear<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<(Bound<'py, PyArrayDyn<u8>>, f32, u8)> {
    let shape = x.shape().to_vec();
    let xs = contiguous(&x, "x")?;
    let arr = output::<u8>(py, &shape);
    let (s, z) = fill(py, &arr, |out| {
        quant::dynamic_quantize(&Ctx::current(), xs, out)
    })?
    .or_py()?;
    Ok((arr, s, z))
}

/// `(scale, zero_point, range_min, range_max)`, one entry per channel.
type CalibrationLists = (Vec<f32>, Vec<i32>, Vec<f32>, Vec<f32>);

/// Calibration: `(scale, zero_point, range_min, range_max)`, one entry per channel.
#[pyfunction]
#[pyo3(signature = (x, axis, method, percentile, qmin, qmax, symmetric, symmetric_zero_point, power_of_two, bins))]
#[allow(clippy::too_many_arguments)]
fn calibrate<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    axis: Option<usize>,
    method: &str,
    percentile: f64,
    qmin: i32,
    qmax: i32,
    symmetric: bool,
    symmetric_zero_point: i32,
    power_of_two: bool,
    bins: usize,
) -> PyResult<CalibrationLists> {
    let method = match method {
        "minmax" => calib::Method::MinMax,
        "percentile" => calib::Method::Percentile(percentile),
        "mse" => calib::Method::Mse,
        "entropy" => calib::Method::Entropy,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown calibration method {other:?}; expected 'minmax', 'percentile', 'mse' or 'entropy'"
            )))
        }
    };
    let spec = calib::Spec {
        qmin,
        qmax,
        symmetric,
        symmetric_zero_point,
        power_of_two,
        bins,
    };
    let layout = AxisLayout::new(x.shape(), axis).or_py()?;
    let xs = contiguous(&x, "x")?;
    let c = py
        .detach(|| calib::calibrate(&Ctx::current(), xs, layout, method, &spec))
        .or_py()?;
    Ok((c.scale, c.zero_point, c.range_min, c.range_max))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(quantize_linear, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize_linear, m)?)?;
    m.add_function(wrap_pyfunction!(dynamic_quantize_linear, m)?)?;
    m.add_function(wrap_pyfunction!(calibrate, m)?)?;
    Ok(())
}
