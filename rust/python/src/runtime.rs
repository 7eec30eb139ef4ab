//! A chain of int8 linear layers run in one call: the runtime's hot path for
//! MLPs, where per-layer Python dispatch would cost more than the products.

use std::mem::MaybeUninit;

use hwreg_kernels::gemm;
use numpy::{
    PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::{contiguous, OrPy};
use crate::gemm::{param, PyPackedB};

struct Layer {
    packed: Py<PyPackedB>,
    scale: Vec<f32>,
    bias: Option<Vec<f32>>,
    relu: bool,
}

/// `_DenseChain(layers)`: `layers` is a list of `(packed, weight_scale, bias, relu)`
/// whose widths chain (each layer's N is the next one's K).
#[pyclass(frozen, name = "_DenseChain", module = "hwreg_rs._native")]
pub struct PyDenseChain {
    layers: Vec<Layer>,
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
    fn new(py: Python<'_>, layers: Vec<LayerArgs<'_>>) -> PyResult<Self> {
        if layers.is_empty() {
            return Err(PyValueError::new_err(
                "a dense chain needs at least one layer",
            ));
        }
        let mut out = Vec::with_capacity(layers.len());
        let mut prev_n: Option<usize> = None;
        for (i, (packed, scale, bias, relu)) in layers.into_iter().enumerate() {
            let (k, n) = {
                let pb = &packed.bind(py).get().inner;
                (pb.k(), pb.n())
            };
            if let Some(p) = prev_n {
                if p != k {
                    return Err(PyValueError::new_err(format!(
                        "layer {i} has in_features = {k} but layer {} has out_features = {p}",
                        i - 1
                    )));
                }
            }
            let scale = contiguous(&scale, "weight_scale")?.to_vec();
            if scale.len() != 1 && scale.len() != n {
                return Err(PyValueError::new_err(format!(
                    "layer {i}: weight_scale has {} values, expected 1 or {n}",
                    scale.len()
                )));
            }
            let bias = match &bias {
                Some(b) => {
                    let b = contiguous(b, "bias")?.to_vec();
                    if b.len() != n {
                        return Err(PyValueError::new_err(format!(
                            "layer {i}: bias has {} values, expected {n}",
                            b.len()
                        )));
                    }
                    Some(b)
                }
                None => None,
            };
            prev_n = Some(n);
            out.push(Layer {
                packed,
                scale,
                bias,
                relu,
            });
        }
        Ok(PyDenseChain { layers: out })
    }

    /// Float32 `(M, K)` in, float32 `(M, N_last)` out; activations quantized per row before each layer.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f32>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (m, k) = (x.shape()[0], x.shape()[1]);
        let xs = contiguous(&x, "x")?;
        let first_k = self.layers[0].packed.get().inner.k();
        if k != first_k {
            return Err(PyValueError::new_err(format!(
                "x has {k} features but the first layer takes {first_k}"
            )));
        }
        let n_last = self.layers[self.layers.len() - 1].packed.get().inner.n();
        let out = py
            .detach(|| -> hwreg_kernels::Result<Vec<f32>> {
                let mut cur: Vec<f32> = Vec::new();
                for (i, layer) in self.layers.iter().enumerate() {
                    let pb = &layer.packed.get().inner;
                    let n = pb.n();
                    let mut next: Vec<f32> = Vec::with_capacity(m * n);
                    let input: &[f32] = if i == 0 { xs } else { &cur };
                    let spare: &mut [MaybeUninit<f32>] = &mut next.spare_capacity_mut()[..m * n];
                    gemm::linear_dynamic_uninit(
                        input,
                        m,
                        pb.k(),
                        pb,
                        param(&layer.scale),
                        layer.bias.as_deref(),
                        layer.relu,
                        spare,
                    )?;
                    // SAFETY: on Ok the kernel wrote all m*n elements.
                    unsafe { next.set_len(m * n) };
                    cur = next;
                }
                Ok(cur)
            })
            .or_py()?;
        PyArray1::from_vec(py, out).reshape([m, n_last])
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDenseChain>()
}
