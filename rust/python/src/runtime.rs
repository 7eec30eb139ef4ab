//! Bindings of `hwreg_kernels::plan`: the runtime's planned graphs, built
//! from Python node descriptions and run in one call (the executor itself
//! lives in the kernel crate). Conversion only: every check is the plan's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hwreg_kernels::conv::nhwc::Pool;
use hwreg_kernels::exec::{self, Ctx};
use hwreg_kernels::plan::attention_ops::{Approximate, LayerNorm, Scalar};
use hwreg_kernels::plan::graph::{
    DType, Gemm, GraphPlan, Int4Dense, Node, Op, SparseDense, StaticAct, StaticAdd, Unary,
};
use hwreg_kernels::quant::fixed;
use numpy::ndarray::IxDyn;
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::{contiguous, OrPy};
use crate::gemm::PyPackedB;
use crate::int4::PyInt4Weight;
use crate::sparse::SparseMatrix;

/// `_GraphPlan(nodes, inputs, input_dims, outputs)`: `nodes` is a list of
/// `(op, input_ids, output_id, params)` in execution order (`params` a dict
/// of the op's fields), `input_dims` the per-sample dims of each input.
#[pyclass(frozen, name = "_GraphPlan", module = "hwreg_rs._native")]
pub struct PyGraphPlan {
    inner: GraphPlan,
    /// `(input dims, output dims)` of a plan with one input and one output
    /// (what `forward_ready` checks and allocates by), kept from the build.
    one: Option<(Vec<usize>, Vec<usize>)>,
    /// [`GraphPlan::work_per_sample`], kept from the build.
    work: usize,
}

/// Below this much work a call keeps the GIL: releasing and taking it back
/// costs more than such a call lets another Python thread do (the digits
/// MLP at batch 1, ~50K MACs, runs in about half a microsecond), and the
/// kernels run it on one thread anyway (`exec::PARALLEL_MIN_WORK`).
const HOLD_GIL_BELOW: usize = exec::PARALLEL_MIN_WORK;

fn item<'py>(p: &Bound<'py, PyDict>, key: &str) -> PyResult<Bound<'py, PyAny>> {
    p.get_item(key)?
        .ok_or_else(|| PyKeyError::new_err(format!("node parameter {key:?} is missing")))
}

/// `field!(p, "key")?`: the parameter `key` of a node, extracted.
macro_rules! field {
    ($p:expr, $key:expr) => {
        item($p, $key)?.extract()
    };
}

fn floats(p: &Bound<'_, PyDict>, key: &str) -> PyResult<Vec<f32>> {
    let a: PyReadonlyArrayDyn<'_, f32> = field!(p, key)?;
    Ok(contiguous(&a, key)?.to_vec())
}

fn opt_floats(p: &Bound<'_, PyDict>, key: &str) -> PyResult<Option<Vec<f32>>> {
    let a: Option<PyReadonlyArrayDyn<'_, f32>> = field!(p, key)?;
    a.map(|a| contiguous(&a, key).map(<[f32]>::to_vec))
        .transpose()
}

/// The optional `"act"` parameter: `(scale, zero_point)` of a statically
/// quantized input, or None / absent for dynamic quantization.
fn act(p: &Bound<'_, PyDict>) -> PyResult<Option<StaticAct>> {
    let v: Option<(f32, i32)> = match p.get_item("act")? {
        Some(v) => v.extract()?,
        None => None,
    };
    Ok(v.map(|(scale, zero_point)| StaticAct { scale, zero_point }))
}

/// `("relu" | "hardswish" | "clip", min, max)` or None.
fn unary(v: Option<(String, Option<f32>, Option<f32>)>) -> PyResult<Option<Unary>> {
    Ok(match v {
        None => None,
        Some((name, lo, hi)) => Some(match name.as_str() {
            "relu" => Unary::Relu,
            "hardswish" => Unary::HardSwish,
            "clip" => Unary::Clip(lo, hi),
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown element-wise op {other:?}"
                )))
            }
        }),
    })
}

fn gemm(p: &Bound<'_, PyDict>) -> PyResult<Gemm> {
    let packed: Py<PyPackedB> = field!(p, "packed")?;
    Ok(Gemm {
        packed: Arc::clone(&packed.get().inner),
        scale: floats(p, "scale")?,
        bias: opt_floats(p, "bias")?,
        relu: field!(p, "relu")?,
        post: unary(field!(p, "post")?)?,
        act: act(p)?,
    })
}

fn op(kind: &str, p: &Bound<'_, PyDict>) -> PyResult<Op> {
    Ok(match kind {
        "dense" => Op::Dense(gemm(p)?),
        "sparse_dense" => {
            let w: Py<SparseMatrix> = field!(p, "weight")?;
            Op::SparseDense(
                SparseDense::new(
                    Arc::clone(&w.get().inner),
                    opt_floats(p, "bias")?,
                    field!(p, "relu")?,
                    unary(field!(p, "post")?)?,
                )
                .or_py()?,
            )
        }
        "int4_dense" => {
            let w: Py<PyInt4Weight> = field!(p, "weight")?;
            Op::Int4Dense(
                Int4Dense::new(
                    Arc::clone(&w.get().inner),
                    opt_floats(p, "bias")?,
                    field!(p, "relu")?,
                    unary(field!(p, "post")?)?,
                )
                .or_py()?,
            )
        }
        "conv" => Op::Conv {
            gemm: gemm(p)?,
            kernel: field!(p, "kernel")?,
            stride: field!(p, "stride")?,
            padding: field!(p, "padding")?,
            nchw_in: field!(p, "nchw_in")?,
        },
        "conv_add" => Op::ConvAdd {
            gemm: gemm(p)?,
            kernel: field!(p, "kernel")?,
            stride: field!(p, "stride")?,
            padding: field!(p, "padding")?,
            nchw_in: field!(p, "nchw_in")?,
            res_act: match p.get_item("res_act")? {
                Some(v) => v
                    .extract::<Option<(f32, i32)>>()?
                    .map(|(scale, zero_point)| StaticAct { scale, zero_point }),
                None => None,
            },
        },
        "depthwise" => {
            let w: PyReadonlyArrayDyn<'_, i8> = field!(p, "weight")?;
            Op::Depthwise {
                weight: contiguous(&w, "weight")?.to_vec().into(),
                kernel: field!(p, "kernel")?,
                scale: floats(p, "scale")?,
                bias: opt_floats(p, "bias")?,
                relu: field!(p, "relu")?,
                post: unary(field!(p, "post")?)?,
                stride: field!(p, "stride")?,
                padding: field!(p, "padding")?,
                dilation: field!(p, "dilation")?,
                nchw_in: field!(p, "nchw_in")?,
                act: act(p)?,
            }
        }
        "maxpool" | "avgpool" => Op::Pool {
            kind: if kind == "maxpool" {
                Pool::Max
            } else {
                Pool::Avg
            },
            kernel: field!(p, "kernel")?,
            stride: field!(p, "stride")?,
            padding: field!(p, "padding")?,
        },
        "global_avgpool" => Op::GlobalAvgPool {
            channels_last: field!(p, "channels_last")?,
        },
        "add" => Op::Add {
            relu: field!(p, "relu")?,
        },
        "static_add" => {
            let acts: [Option<(f32, i32)>; 2] = field!(p, "acts")?;
            Op::StaticAdd(StaticAdd {
                relu: field!(p, "relu")?,
                acts: acts.map(|a| a.map(|(scale, zero_point)| StaticAct { scale, zero_point })),
            })
        }
        "unary" => Op::Unary(
            unary(Some(field!(p, "fn")?))?
                .ok_or_else(|| PyValueError::new_err("unary needs fn"))?,
        ),
        "affine" => Op::Affine {
            scale: floats(p, "scale")?,
            shift: floats(p, "shift")?,
            channels_last: field!(p, "channels_last")?,
        },
        "to_nhwc" => Op::ToNhwc,
        "to_nchw" => Op::ToNchw,
        "reshape" => Op::Reshape(field!(p, "dims")?),
        // attention ops
        "layer_norm" => Op::LayerNorm(LayerNorm {
            d: field!(p, "d")?,
            weight: opt_floats(p, "weight")?,
            bias: opt_floats(p, "bias")?,
            eps: field!(p, "eps")?,
        }),
        "softmax" => Op::Softmax,
        "gelu" => {
            let a: String = field!(p, "approximate")?;
            Op::Gelu(Approximate::from_name(&a).or_py()?)
        }
        "matmul" => Op::MatMul {
            trans_b: field!(p, "trans_b")?,
        },
        "transpose" => Op::Transpose(field!(p, "perm")?),
        "mean" => Op::Mean {
            axis: field!(p, "axis")?,
            keepdims: field!(p, "keepdims")?,
        },
        "scalar" => {
            let (name, c): (String, f32) = (field!(p, "fn")?, field!(p, "value")?);
            Op::Scalar(match name.as_str() {
                "add" => Scalar::Add(c),
                "sub" => Scalar::Sub(c),
                "rsub" => Scalar::RSub(c),
                "mul" => Scalar::Mul(c),
                "div" => Scalar::Div(c),
                "rdiv" => Scalar::RDiv(c),
                other => {
                    return Err(PyValueError::new_err(format!(
                        "unknown scalar op {other:?}"
                    )))
                }
            })
        }
        other => return Err(PyValueError::new_err(format!("unknown plan op {other:?}"))),
    })
}

type Arrays<'py> = Vec<Bound<'py, PyArrayDyn<f32>>>;

type NodeArgs<'py> = (String, Vec<usize>, usize, Bound<'py, PyDict>);

#[pymethods]
impl PyGraphPlan {
    #[new]
    fn new(
        nodes: Vec<NodeArgs<'_>>,
        inputs: Vec<usize>,
        input_dims: Vec<Vec<usize>>,
        outputs: Vec<usize>,
    ) -> PyResult<Self> {
        let nodes = nodes
            .into_iter()
            .map(|(kind, ins, out, p)| {
                Ok(Node {
                    op: op(&kind, &p)?,
                    inputs: ins,
                    output: out,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let inner = GraphPlan::new(nodes, inputs, input_dims, outputs).or_py()?;
        let one = match (
            inner.input_dims().as_slice(),
            inner.output_dims().as_slice(),
        ) {
            ([x], [y]) => Some((x.to_vec(), y.to_vec())),
            _ => None,
        };
        let work = inner.work_per_sample();
        Ok(PyGraphPlan { inner, one, work })
    }

    /// Float32 C-contiguous inputs `(batch, *input_dims[i])` in, one array
    /// `(batch, *output_dims[j])` per output out, on `threads` threads.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        inputs: Vec<PyReadonlyArrayDyn<'py, f32>>,
        threads: usize,
    ) -> PyResult<Vec<Bound<'py, PyArrayDyn<f32>>>> {
        self.run(py, inputs, threads, None)
    }

    /// `forward([x], threads)[0]` of a plan with one input and one output,
    /// when `x` is already what the plan reads: a float32, C-contiguous,
    /// aligned array of shape `(batch, *input_dims)`; else None (the caller
    /// converts and checks it, then calls `forward`). No lists and no borrow
    /// registry: the runtime's per-predict path. `threads` None: this
    /// thread's setting (`_local_threads`, else the process's).
    #[pyo3(signature = (x, threads=None))]
    fn forward_ready<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        threads: Option<usize>,
    ) -> PyResult<Option<Bound<'py, PyArrayDyn<f32>>>> {
        let Some((want, dims)) = &self.one else {
            return Err(PyValueError::new_err(
                "forward_ready needs a plan with one input and one output",
            ));
        };
        let Ok(x) = x.cast::<PyArrayDyn<f32>>() else {
            return Ok(None);
        };
        let shape = x.shape();
        let aligned = (x.data() as usize).is_multiple_of(std::mem::align_of::<f32>());
        if shape.is_empty() || shape[1..] != want[..] || !aligned || !x.is_c_contiguous() {
            return Ok(None);
        }
        let batch = shape[0];
        // `(batch, *dims)` without a heap vector for the usual ranks (IxDyn keeps up to 4 inline).
        let mut stack = [0usize; 5];
        let out_shape = match stack.get_mut(..=dims.len()) {
            Some(s) => {
                s[0] = batch;
                s[1..].copy_from_slice(dims);
                IxDyn(s)
            }
            None => IxDyn(&[&[batch][..], &dims[..]].concat()),
        };
        let ctx = threads.map_or_else(Ctx::current, Ctx::new);
        // SAFETY: `x` is C-contiguous and aligned (checked above); nothing in
        // Rust writes it (as with a readonly borrow, a Python thread writing
        // it during the call races only with itself). The output is new, and
        // the plan writes every element before Python sees it.
        let xs = unsafe { x.as_slice() }
            .map_err(|_| PyValueError::new_err("x must be a C-contiguous array"))?;
        let out = unsafe { PyArrayDyn::<f32>::new(py, out_shape, false) };
        let ys = unsafe { out.as_slice_mut() }
            .map_err(|_| PyValueError::new_err("output is not contiguous"))?;
        let mut run = move || self.inner.forward(&ctx, batch, &[xs], &mut [ys]);
        if batch.saturating_mul(self.work) < HOLD_GIL_BELOW {
            run().or_py()?;
        } else {
            py.detach(run).or_py()?;
        }
        Ok(Some(out))
    }

    /// `forward` that also returns each node's seconds (a list, in node order).
    fn forward_timed<'py>(
        &self,
        py: Python<'py>,
        inputs: Vec<PyReadonlyArrayDyn<'py, f32>>,
        threads: usize,
    ) -> PyResult<(Arrays<'py>, Vec<f64>)> {
        let mut seconds = vec![0.0; self.inner.nodes()];
        let out = self.run(py, inputs, threads, Some(&mut seconds))?;
        Ok((out, seconds))
    }

    /// Per-sample dims of every output.
    fn output_dims(&self) -> Vec<Vec<usize>> {
        self.inner
            .output_dims()
            .iter()
            .map(|d| d.to_vec())
            .collect()
    }

    /// Workspace buffers the plan's values share.
    #[getter]
    fn buffers(&self) -> usize {
        self.inner.buffers()
    }

    /// Values passed between int8 layers as uint8 (the plan's rewrite "int8 between layers").
    #[getter]
    fn uint8_values(&self) -> Vec<usize> {
        (0..)
            .map_while(|v| self.inner.dtype(v).map(|d| (v, d)))
            .filter(|(_, d)| matches!(d, DType::U8(_)))
            .map(|(v, _)| v)
            .collect()
    }

    /// Workspace buffer (re)allocations so far (none per call once a batch size has run).
    #[getter]
    fn allocations(&self) -> usize {
        self.inner.allocations()
    }
}

/// `_ReadyPredict(plan, fallback, threads)`: `predict` of a runtime model
/// that is one native plan with one input and one output, as a native method
/// (no Python frame per call): `predict(x)` runs the plan when `x` is ready
/// as it is (`_GraphPlan.forward_ready`), anything else is
/// `fallback(x, *more)`, the model's checking, converting predict. The model
/// holds this object and `fallback` holds the model: a cycle the GC sees
/// (`__traverse__`) and breaks by clearing the model. `threads` None: the
/// library setting at each call.
#[pyclass(frozen, name = "_ReadyPredict", module = "hwreg_rs._native")]
pub struct PyReadyPredict {
    plan: Py<PyGraphPlan>,
    fallback: Py<PyAny>,
    /// The model's thread count; 0 for None.
    threads: AtomicUsize,
}

#[pymethods]
impl PyReadyPredict {
    #[new]
    #[pyo3(signature = (plan, fallback, threads=None))]
    fn new(plan: Py<PyGraphPlan>, fallback: Py<PyAny>, threads: Option<usize>) -> PyResult<Self> {
        if plan.get().one.is_none() {
            return Err(PyValueError::new_err(
                "_ReadyPredict needs a plan with one input and one output",
            ));
        }
        Ok(PyReadyPredict {
            plan,
            fallback,
            threads: AtomicUsize::new(threads.unwrap_or(0)),
        })
    }

    /// The model's outputs for `x` (see the class).
    #[pyo3(signature = (x, *more))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        more: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if more.is_empty() {
            let n = self.threads.load(Ordering::Relaxed);
            if let Some(y) = self.plan.get().forward_ready(py, x, (n > 0).then_some(n))? {
                return Ok(y.into_any());
            }
        }
        let args: Vec<Bound<'py, PyAny>> = std::iter::once(x.clone()).chain(more.iter()).collect();
        self.fallback.bind(py).call1(PyTuple::new(py, args)?)
    }

    /// Pickles as the model's `_fast` (pickling `rt.predict`, as Dask does,
    /// pickles this object): the model travels through its own pickle, and
    /// the copy's `_fast` calls back into the copy.
    fn __reduce__<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyAny>, &'static str))> {
        let getattr = py.import("builtins")?.getattr("getattr")?;
        Ok((
            getattr,
            (self.fallback.bind(py).getattr("__self__")?, "_fast"),
        ))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.fallback)?;
        visit.call(&self.plan)
    }

    /// Sets the thread count of later calls (None: the library setting).
    fn set_threads(&self, n: Option<usize>) {
        self.threads.store(n.unwrap_or(0), Ordering::Relaxed);
    }
}

/// `_local_threads(n)`: the thread count of this OS thread's native calls
/// (None: the process setting); returns the previous one.
#[pyfunction]
fn _local_threads(n: Option<usize>) -> Option<usize> {
    exec::set_local_threads(n)
}

impl PyGraphPlan {
    fn run<'py>(
        &self,
        py: Python<'py>,
        inputs: Vec<PyReadonlyArrayDyn<'py, f32>>,
        threads: usize,
        seconds: Option<&mut [f64]>,
    ) -> PyResult<Vec<Bound<'py, PyArrayDyn<f32>>>> {
        let batch = inputs
            .first()
            .and_then(|x| x.shape().first().copied())
            .unwrap_or(0);
        let xs = inputs
            .iter()
            .map(|x| contiguous(x, "x"))
            .collect::<PyResult<Vec<_>>>()?;
        let outs = self
            .inner
            .output_dims()
            .iter()
            .map(|d| {
                let shape: Vec<usize> = std::iter::once(batch).chain(d.iter().copied()).collect();
                // SAFETY: every element is written by the plan before Python sees the array.
                unsafe { PyArrayDyn::<f32>::new(py, shape, false) }
            })
            .collect::<Vec<_>>();
        {
            let mut views = outs.iter().map(|a| a.readwrite()).collect::<Vec<_>>();
            let mut slices = views
                .iter_mut()
                .map(|v| {
                    v.as_slice_mut()
                        .map_err(|_| PyValueError::new_err("output is not contiguous"))
                })
                .collect::<PyResult<Vec<_>>>()?;
            py.detach(|| {
                self.inner
                    .forward_timed(&Ctx::new(threads), batch, &xs, &mut slices, seconds)
            })
            .or_py()?;
        }
        Ok(outs)
    }
}

/// `_quantize_fixed_u8(x, scale, zero_point)`: float32 `x` (any shape) to
/// uint8 of the same shape with a static per-tensor scale and zero point
/// (`QuantizeLinear`; NaN / ±inf in `x` is a ValueError).
#[pyfunction]
fn _quantize_fixed_u8<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    scale: f32,
    zero_point: i32,
) -> PyResult<Bound<'py, PyArrayDyn<u8>>> {
    let shape = x.shape().to_vec();
    let xs = contiguous(&x, "x")?;
    let mut q =
        hwreg_kernels::error::try_vec(xs.len(), 0u8, "the quantized activations").or_py()?;
    py.detach(|| fixed::quantize_fixed_u8(&Ctx::current(), xs, scale, zero_point, &mut q))
        .or_py()?;
    PyArray1::from_vec(py, q).reshape(shape)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGraphPlan>()?;
    m.add_class::<PyReadyPredict>()?;
    m.add_function(wrap_pyfunction!(_quantize_fixed_u8, m)?)?;
    m.add_function(wrap_pyfunction!(_local_threads, m)?)
}
