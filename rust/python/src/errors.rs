//! The one place kernel errors become Python exceptions.

use hwreg_kernels::Error;
use pyo3::exceptions::{PyMemoryError, PyTypeError, PyValueError};
use pyo3::PyErr;

pub fn to_py(e: Error) -> PyErr {
    match e {
        Error::Shape(m) | Error::Value(m) => PyValueError::new_err(m),
        Error::Dtype(m) => PyTypeError::new_err(m),
        Error::Alloc(m) => PyMemoryError::new_err(m),
    }
}

/// `result.or_py()?` turns a kernel `Result` into a `PyResult`.
pub trait OrPy<T> {
    fn or_py(self) -> pyo3::PyResult<T>;
}

impl<T> OrPy<T> for Result<T, Error> {
    fn or_py(self) -> pyo3::PyResult<T> {
        self.map_err(to_py)
    }
}

/// Contiguous view of a NumPy array or a `ValueError` naming the argument.
/// The Python layer makes arrays contiguous and native-endian first; this is
/// the guard that we never read strided memory as if it were dense.
pub fn contiguous<'a, T: numpy::Element, D: numpy::ndarray::Dimension>(
    a: &'a numpy::PyReadonlyArray<'_, T, D>,
    name: &str,
) -> pyo3::PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| PyValueError::new_err(format!("{name} must be a C-contiguous array")))
}
