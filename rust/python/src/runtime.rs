//! Bindings of `hwreg_kernels::plan`: the runtime's chain of int8 linear
//! layers, run in one call (the executor itself lives in the kernel crate).

use std::sync::Arc;

use hwreg_kernels::exec::Ctx;
use hwreg_kernels::plan::{DenseChain, DenseLayer};
use numpy::{
    PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use crate::errors::{contiguous, OrPy};
use crate::gemm::PyPackedB;

/// `_DenseChain(layers)`: `layers` is a list of `(packed, weight_scale, bias, relu)`
/// whose widths chain (each layer's N is the next one's K).
#[pyclass(frozen, name = "_DenseChain", module = "hwreg_rs._native")]
pub struct PyDenseChain {
    inner: DenseChain,
}

type LayerArgs<'py> = (
    Py<PyPackedB>,
    PyReadonlyArray1<'py, f32>,
    Option<PyReadonlyArray1<'py, f32>>,
    bool,
);

#[pymethods]
impl PyDenseChain {
    #[new]
    fn new(layers: Vec<LayerArgs<'_>>) -> PyResult<Self> {
        let layers = layers
            .into_iter()
            .map(|(packed, scale, bias, relu)| {
                Ok(DenseLayer {
                    packed: Arc::clone(&packed.get().inner),
                    scale: contiguous(&scale, "weight_scale")?.to_vec(),
                    bias: bias
                        .map(|b| contiguous(&b, "bias").map(<[f32]>::to_vec))
                        .transpose()?,
                    relu,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyDenseChain {
            inner: DenseChain::new(layers).or_py()?,
        })
    }

    /// Float32 `(M, K)` in, float32 `(M, N_last)` out; activations quantized per row before each layer.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f32>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (m, k) = (x.shape()[0], x.shape()[1]);
        let xs = contiguous(&x, "x")?;
        let out = py
            .detach(|| self.inner.forward(&Ctx::current(), xs, m, k))
            .or_py()?;
        PyArray1::from_vec(py, out).reshape([m, self.inner.out_features()])
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDenseChain>()
}
