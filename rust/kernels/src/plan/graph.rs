//! [`GraphPlan`]: a whole graph of int8 runtime ops run in one call.
//!
//! The plan is a flat list of [`Node`]s (op, input value ids, output value
//! id) over numbered values, in execution order. Everything a call needs is
//! decided when the plan is built:
//!
//! * the per-sample dims and [`DType`] of every value (inferred node by node
//!   from the plan's input dims; a node whose inputs do not fit is an error
//!   at build time, not at run time);
//! * where every value lives ([`Storage`]): a plan input is read where the
//!   caller holds it, a plan output is written straight into the caller's
//!   buffer, a `Reshape` aliases its input, and every other value gets a
//!   buffer that it shares with values whose lifetimes do not overlap (a
//!   buffer is free again once the last reader of its value has run);
//! * the scratch the kernels need (quantized images, per-row scales), the
//!   largest any node needs (a convolution's unfold needs none: the GEMM
//!   unfolds its A block by block).
//!
//! Sizes scale with the batch only, so a [`Workspace`] sized for a batch is
//! reused by every call with that batch or a smaller one; it grows (and
//! counts the growth in [`GraphPlan::allocations`]) only when a larger batch
//! comes. Workspaces are pooled, so calls from several threads run at once.
//!
//! Every op computes exactly what the Python runtime op it replaces computes
//! (same quantizer, same kernels, same float operations in the same order),
//! so a model's predictions do not change when it runs here.

use std::sync::{Arc, Mutex};

#[cfg(test)]
#[path = "conv_tests.rs"]
mod conv_tests;
#[cfg(test)]
#[path = "graph_tests.rs"]
mod tests;

#[path = "int8_ops.rs"]
mod int8_ops;

#[path = "batch1.rs"]
mod batch1;
#[path = "conv1.rs"]
mod conv1;

#[path = "int4_op.rs"]
mod int4_op;
pub use int4_op::Int4Dense;
#[path = "sparse_op.rs"]
mod sparse_op;
pub use sparse_op::SparseDense;
#[path = "u8_ops.rs"]
mod u8_ops;
pub use u8_ops::StaticAdd;

use super::attention_ops::{self, Approximate, LayerNorm, Scalar};
use crate::conv::nhwc::{self, Pool};
use crate::conv::Window;
use crate::depthwise::{self, Depthwise};
use crate::error::{Error, Result};
use crate::exec::{Ctx, SyncPtr};
use crate::gemm::{
    self, output::OutputStep, output::Param, ARows, ASource, ConvRows, PackedB, ZeroPoint,
};
use crate::quant::fixed::{self, quantize_fixed_u8};
use crate::quant::rows::quantize_row_u8;
use crate::{shape_err, value_err};

/// A value's id: its index in the plan's value table.
pub type ValueId = usize;

/// The element type (and, for quantized values, the quantization) of a
/// value. A `U8` value (the rewrite "int8 between layers", `int8_ops.rs`)
/// lives in a workspace buffer viewed as bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DType {
    F32,
    /// uint8 on this grid: `x ≈ (q - zero_point) · scale`.
    U8(StaticAct),
}

/// Static (calibrated) activation parameters of an int8 layer: its float
/// input is quantized per tensor with this scale and zero point
/// (`QuantizeLinear`, [`quantize_fixed_u8`]) instead of per row or image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StaticAct {
    pub scale: f32,
    pub zero_point: i32,
}

/// An element-wise float function, with NumPy's semantics (NaN propagates).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    /// `np.maximum(x, 0)`.
    Relu,
    /// `np.minimum(np.maximum(x, min), max)`, either side optional.
    Clip(Option<f32>, Option<f32>),
    /// `x * np.clip(x + 3, 0, 6) / 6`.
    HardSwish,
}

impl Unary {
    #[inline(always)]
    fn apply(self, x: f32) -> f32 {
        // NumPy's maximum / minimum: the first operand when it is NaN or wins.
        let max = |a: f32, b: f32| if a >= b || a.is_nan() { a } else { b };
        let min = |a: f32, b: f32| if a <= b || a.is_nan() { a } else { b };
        match self {
            Unary::Relu => max(x, 0.0),
            Unary::Clip(lo, hi) => {
                let y = lo.map_or(x, |lo| max(x, lo));
                hi.map_or(y, |hi| min(y, hi))
            }
            Unary::HardSwish => {
                let z = x + 3.0;
                // np.clip: NaN stays, else `a > b ? a : b` then `a < b ? a : b`.
                let c = if z.is_nan() {
                    z
                } else {
                    let c = if z > 0.0 { z } else { 0.0 };
                    if c < 6.0 {
                        c
                    } else {
                        6.0
                    }
                };
                x * c / 6.0
            }
        }
    }

    fn run(self, x: &mut [f32]) {
        // One loop per case, each a plain vector loop.
        // Against a bound that is not NaN, NumPy's maximum is `b > a ? b : a`
        // (NaN `a` fails the test and stays): one `maxps`, where the general
        // form takes six compare-and-select operations.
        let max = |b: f32| move |a: f32| if b > a { b } else { a };
        let min = |b: f32| move |a: f32| if b < a { b } else { a };
        let nan = |b: Option<f32>| b.is_some_and(f32::is_nan);
        match self {
            Unary::Clip(lo, hi) if nan(lo) || nan(hi) => {
                x.iter_mut().for_each(|v| *v = self.apply(*v))
            }
            Unary::Relu => x.iter_mut().for_each(|v| *v = max(0.0)(*v)),
            Unary::Clip(Some(lo), Some(hi)) => {
                let (lo, hi) = (max(lo), min(hi));
                x.iter_mut().for_each(|v| *v = hi(lo(*v)))
            }
            Unary::Clip(Some(lo), None) => x.iter_mut().for_each(|v| *v = max(lo)(*v)),
            Unary::Clip(None, Some(hi)) => x.iter_mut().for_each(|v| *v = min(hi)(*v)),
            Unary::Clip(None, None) => {}
            Unary::HardSwish => x.iter_mut().for_each(|v| *v = self.apply(*v)),
        }
    }

    /// [`Unary::run`] over a layer's whole output, in chunks on the thread
    /// team: run on one thread it was a serial pass over megabytes of a
    /// dynamic model's float values (every ReLU6 of MobileNetV2), which a
    /// second thread did not shorten.
    pub(super) fn run_par(self, ctx: &Ctx, x: &mut [f32]) {
        const CHUNK: usize = 1 << 14;
        let (n, p) = (x.len(), SyncPtr(x.as_mut_ptr()));
        ctx.for_each_task(n, n.div_ceil(CHUNK), |t| {
            let (a, e) = (t * CHUNK, n.min((t + 1) * CHUNK));
            // SAFETY: task `t` alone touches `x[a..e]`, inside `x`.
            self.run(unsafe { std::slice::from_raw_parts_mut(p.get().add(a), e - a) });
        });
    }
}

/// One int8 GEMM layer: packed `(k, n)` weights, per-column scales (one or
/// `n`), an optional bias, a ReLU fused into the output step and an optional
/// element-wise function applied to the output while it is in cache.
#[derive(Debug, Clone)]
pub struct Gemm {
    pub packed: Arc<PackedB>,
    pub scale: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub relu: bool,
    pub post: Option<Unary>,
    /// Static input quantization; `None`: dynamic (per row / per image).
    pub act: Option<StaticAct>,
}

/// What a node computes. Image values are per-sample `(c, h, w)` (NCHW) or
/// `(h, w, c)` (NHWC) as the op says.
#[derive(Debug, Clone)]
pub enum Op {
    /// Int8 linear layer on the last axis (activations quantized per row).
    Dense(Gemm),
    /// Int4 linear layer on the last axis (activations quantized per row).
    Int4Dense(Int4Dense),
    /// Sparse (pruned) linear layer on the last axis.
    SparseDense(SparseDense),
    /// Int8 convolution as unfold + GEMM: NHWC (or NCHW with `nchw_in`) in,
    /// NHWC out; each image quantized once (one zero point for the batch).
    Conv {
        gemm: Gemm,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        nchw_in: bool,
    },
    /// A static [`Op::Conv`] with a residual `Add` fused into its output step:
    /// `conv(inputs[0]) + inputs[1]`, then ReLU if `gemm.relu` (the ReLU
    /// after the sum; the conv itself has none). NHWC out, like the residual.
    /// With `res_act` the residual is taken on that uint8 grid, as a
    /// [`StaticAdd`] takes it (`u8_ops.rs`).
    ConvAdd {
        gemm: Gemm,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        nchw_in: bool,
        res_act: Option<StaticAct>,
    },
    /// Int8 depthwise convolution, weight `(kh, kw, c)`: NHWC (or NCHW) in,
    /// NHWC out. The plan widens the weight once when it is built.
    Depthwise {
        weight: depthwise::Weight,
        kernel: (usize, usize),
        scale: Vec<f32>,
        bias: Option<Vec<f32>>,
        relu: bool,
        post: Option<Unary>,
        stride: (usize, usize),
        padding: [usize; 4],
        dilation: (usize, usize),
        nchw_in: bool,
        act: Option<StaticAct>,
    },
    /// Max / average pooling, NHWC in and out.
    Pool {
        kind: Pool,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    },
    /// NumPy's `x.mean(axis=(2, 3), keepdims=True)` of an image, bit for bit
    /// (its pairwise sum, then one division): NCHW (or NHWC) in, `(c, 1, 1)` out.
    GlobalAvgPool { channels_last: bool },
    /// `a + b` of two values of the same dims, then ReLU if `relu`.
    Add { relu: bool },
    /// The residual add of a statically converted model: inputs on their
    /// uint8 grids where it has them (`u8_ops.rs`).
    StaticAdd(StaticAdd),
    /// An element-wise function.
    Unary(Unary),
    /// `x * scale[ch] + shift[ch]` (a BatchNorm with nothing to fold into);
    /// the channel is the last axis if `channels_last`, else the first.
    Affine {
        scale: Vec<f32>,
        shift: Vec<f32>,
        channels_last: bool,
    },
    /// `(c, h, w)` to `(h, w, c)`.
    ToNhwc,
    /// `(h, w, c)` to `(c, h, w)`.
    ToNchw,
    /// New per-sample dims, same elements in the same order (no data moves).
    Reshape(Vec<usize>),
    // The float ops of attention blocks ([`attention_ops`]).
    /// LayerNorm over the trailing axes that hold `d` elements.
    LayerNorm(LayerNorm),
    /// Softmax over the last axis.
    Softmax,
    /// GELU, element-wise.
    Gelu(Approximate),
    /// Batched float32 `a @ b` of two values (`a @ bᵀ` of the last two axes with `trans_b`).
    MatMul { trans_b: bool },
    /// A permutation of the per-sample axes (output axis `i` is input axis `perm[i]`).
    Transpose(Vec<usize>),
    /// The mean over one outer per-sample axis, in NumPy's order.
    Mean { axis: usize, keepdims: bool },
    /// An element-wise operation with a scalar constant.
    Scalar(Scalar),
}

/// One step of the plan: `output = op(inputs...)`.
#[derive(Debug, Clone)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
}

/// Where a value lives during a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// The caller's `i`-th input.
    Input(usize),
    /// The caller's `i`-th output buffer.
    Output(usize),
    /// Buffer `b` of the workspace.
    Buffer(usize),
}

/// Scratch sizes per sample (the kernels' temporaries).
#[derive(Debug, Clone, Copy, Default)]
struct Scratch {
    /// Quantized images (and their channels-last copy).
    q: usize,
    /// GEMM rows (one scale and zero point each).
    rows: usize,
    /// A float residual quantized onto its grid and dequantized (float32).
    res: usize,
}

/// The buffers of one call, sized for a batch; reused by later calls.
#[derive(Debug, Default)]
pub struct Workspace {
    batch: usize,
    bufs: Vec<Vec<f32>>,
    q: Vec<u8>,
    qt: Vec<u8>,
    row_scale: Vec<f32>,
    img_scale: Vec<f32>,
    img_zp: Vec<i32>,
    res: Vec<f32>,
    /// One dense layer's quantized input row, padded (the batch-1 path).
    row: Vec<u8>,
    int4: crate::int4::Int4Scratch,
    allocations: usize,
}

/// Grows `v` to at least `len` elements (counting a growth), never shrinks it.
fn grow<T: Clone + Default>(v: &mut Vec<T>, len: usize, count: &mut usize) -> Result<()> {
    if v.len() < len {
        let extra = len - v.len();
        if v.try_reserve_exact(extra).is_err() {
            return Err(Error::Alloc(format!(
                "cannot allocate {len} elements for the graph plan's buffers"
            )));
        }
        v.resize(len, T::default());
        *count += 1;
    }
    Ok(())
}

/// A planned graph (see the module docs).
#[derive(Debug)]
pub struct GraphPlan {
    nodes: Vec<Node>,
    inputs: Vec<ValueId>,
    outputs: Vec<ValueId>,
    dims: Vec<Vec<usize>>,
    dtypes: Vec<DType>,
    storage: Vec<Storage>,
    /// Per-sample elements of each workspace buffer.
    buf_elems: Vec<usize>,
    scratch: Scratch,
    /// Per node: the batch-1 form of a dense or tiny conv node (`batch1.rs`).
    row1: Vec<Option<batch1::One>>,
    /// Bytes of the workspace row the batch-1 forms need at most.
    row_bytes: usize,
    /// Boxed: a call takes one out and puts it back, moving a pointer, not ~300 bytes each way.
    pool: Mutex<Vec<Box<Workspace>>>,
    allocations: std::sync::atomic::AtomicUsize,
}

fn elems(dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Shape(format!("dims {dims:?} overflow")))
}

fn param(v: &[f32]) -> Param<'_> {
    if v.len() == 1 {
        Param::Scalar(v[0])
    } else {
        Param::PerIndex(v)
    }
}

fn image(dims: &[usize], nchw: bool, what: &str) -> Result<(usize, usize, usize)> {
    match *dims {
        [a, b, c] if nchw => Ok((a, b, c)),
        [h, w, c] => Ok((c, h, w)),
        _ => shape_err!("{what} needs an image (3 dims per sample); got {dims:?}"),
    }
}

fn check_gemm(g: &Gemm, k: usize, what: &str) -> Result<()> {
    let n = g.packed.n();
    if g.packed.k() != k {
        return shape_err!(
            "{what}: input has {k} features but the weight takes {}",
            g.packed.k()
        );
    }
    if g.scale.len() != 1 && g.scale.len() != n {
        return shape_err!(
            "{what}: weight_scale has {} values, expected 1 or {n}",
            g.scale.len()
        );
    }
    if g.scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return value_err!("{what}: weight_scale must be finite and > 0");
    }
    if let Some(b) = &g.bias {
        if b.len() != n {
            return shape_err!("{what}: bias has {} values, expected {n}", b.len());
        }
    }
    check_act(g.act, what)
}

impl Gemm {
    /// Spells out one scale for every column and a bias (zeros for none), so
    /// the output step borrows both instead of building them on every call:
    /// the same numbers (`s` per column, `+ 0.0` without a bias).
    fn spell_out(&mut self) -> Result<()> {
        let n = self.packed.n();
        if self.scale.len() == 1 && n != 1 {
            self.scale = crate::error::try_vec(n, self.scale[0], "the weight scales")?;
        }
        if self.bias.is_none() {
            self.bias = Some(crate::error::try_vec(n, 0.0f32, "the zero bias")?);
        }
        Ok(())
    }

    /// The per-column scales as the output step takes them (spelled out:
    /// one per column, borrowed).
    fn col_scale(&self) -> Param<'_> {
        if self.scale.len() == self.packed.n() {
            Param::PerIndex(&self.scale)
        } else {
            param(&self.scale)
        }
    }
}

fn check_act(act: Option<StaticAct>, what: &str) -> Result<()> {
    match act {
        Some(a) => fixed::check_params(a.scale, a.zero_point).map_err(|e| match e {
            Error::Value(m) => Error::Value(format!("{what}: {m}")),
            other => other,
        }),
        None => Ok(()),
    }
}

impl Op {
    /// The per-sample dims of the output, checking the inputs' dims.
    fn out_dims(&self, ins: &[&[usize]], what: &str) -> Result<Vec<usize>> {
        let arity = match self {
            Op::Add { .. } | Op::ConvAdd { .. } | Op::MatMul { .. } | Op::StaticAdd(_) => 2,
            _ => 1,
        };
        if ins.len() != arity {
            return shape_err!("{what} takes {arity} input(s); got {}", ins.len());
        }
        let x = ins[0];
        Ok(match self {
            Op::Dense(g) => {
                let Some((&k, lead)) = x.split_last() else {
                    return shape_err!("{what}: a dense layer needs at least one input axis");
                };
                check_gemm(g, k, what)?;
                let mut d = lead.to_vec();
                d.push(g.packed.n());
                d
            }
            Op::Int4Dense(d) => d.out_dims(x, what)?,
            Op::SparseDense(d) => d.out_dims(x, what)?,
            Op::Conv {
                gemm,
                kernel,
                stride,
                padding,
                nchw_in,
            } => {
                let (c, h, w) = image(x, *nchw_in, what)?;
                let win = Window::new(1, c, h, w, *kernel, *stride, *padding).check()?;
                check_gemm(gemm, c * kernel.0 * kernel.1, what)?;
                vec![win.oh(), win.ow(), gemm.packed.n()]
            }
            Op::ConvAdd {
                gemm,
                kernel,
                stride,
                padding,
                nchw_in,
                res_act,
            } => {
                check_act(*res_act, what)?;
                int8_ops::conv_add_dims(gemm, *kernel, *stride, *padding, *nchw_in, ins, what)?
            }
            Op::Depthwise {
                weight,
                kernel,
                scale,
                bias,
                stride,
                padding,
                dilation,
                nchw_in,
                act,
                ..
            } => {
                check_act(*act, what)?;
                let (c, h, w) = image(x, *nchw_in, what)?;
                let g = Depthwise {
                    n: 1,
                    h,
                    w,
                    c,
                    kernel: *kernel,
                    stride: *stride,
                    dilation: *dilation,
                    padding: *padding,
                };
                let (_, ws, _) = g.sizes()?;
                if weight.len() != ws || scale.len() != c {
                    return shape_err!("{what}: weight / scale do not fit {c} channels");
                }
                if bias.as_ref().is_some_and(|b| b.len() != c) {
                    return shape_err!("{what}: bias does not fit {c} channels");
                }
                let (oh, ow) = g.out_hw()?;
                vec![oh, ow, c]
            }
            Op::Pool {
                kernel,
                stride,
                padding,
                ..
            } => {
                let (c, h, w) = image(x, false, what)?;
                let win = Window::new(1, c, h, w, *kernel, *stride, *padding).check_pool()?;
                vec![win.oh(), win.ow(), c]
            }
            Op::GlobalAvgPool { channels_last } => {
                let (c, _, _) = image(x, !*channels_last, what)?;
                vec![c, 1, 1]
            }
            Op::Add { .. } => {
                if ins[0] != ins[1] {
                    return shape_err!("{what}: adds dims {:?} and {:?}", ins[0], ins[1]);
                }
                x.to_vec()
            }
            Op::StaticAdd(a) => a.out_dims(ins, what)?,
            Op::Unary(_) => x.to_vec(),
            Op::Affine {
                scale,
                shift,
                channels_last,
            } => {
                let c = if *channels_last { x.last() } else { x.first() };
                if c != Some(&scale.len()) || shift.len() != scale.len() {
                    return shape_err!("{what}: affine over {} channels, input {x:?}", scale.len());
                }
                x.to_vec()
            }
            Op::ToNhwc => {
                let (c, h, w) = image(x, true, what)?;
                vec![h, w, c]
            }
            Op::ToNchw => {
                let (c, h, w) = image(x, false, what)?;
                vec![c, h, w]
            }
            Op::Reshape(d) => {
                if elems(d)? != elems(x)? {
                    return shape_err!("{what}: cannot reshape {x:?} to {d:?}");
                }
                d.clone()
            }
            Op::LayerNorm(ln) => attention_ops::layer_norm_dims(ln, x, what)?,
            Op::Softmax => attention_ops::softmax_dims(x, what)?,
            Op::Gelu(_) | Op::Scalar(_) => x.to_vec(),
            Op::MatMul { trans_b } => attention_ops::matmul_dims(x, ins[1], *trans_b, what)?,
            Op::Transpose(perm) => attention_ops::transpose_dims(perm, x, what)?,
            Op::Mean { axis, keepdims } => attention_ops::mean_dims(*axis, *keepdims, x, what)?,
        })
    }

    /// Per-sample scratch this op needs, given its input and output dims.
    fn scratch(&self, x: &[usize], y: &[usize]) -> Scratch {
        let (xe, ye) = (x.iter().product::<usize>(), y.iter().product::<usize>());
        match self {
            Op::Dense(g) if g.act.is_some() => Scratch {
                q: xe,
                rows: 0,
                ..Scratch::default()
            },
            Op::Conv { gemm, .. } | Op::ConvAdd { gemm, .. } => {
                let rows = ye / gemm.packed.n().max(1);
                let res = matches!(
                    self,
                    Op::ConvAdd {
                        res_act: Some(_),
                        ..
                    }
                );
                // No unfold columns: the GEMM unfolds A block by block.
                Scratch {
                    q: xe,
                    rows,
                    res: if res { ye } else { 0 },
                }
            }
            Op::Depthwise { .. } => Scratch {
                q: xe,
                rows: 0,
                ..Scratch::default()
            },
            _ => Scratch::default(),
        }
    }
}

impl GraphPlan {
    /// Builds the plan: `input_dims[i]` are the per-sample dims of value
    /// `inputs[i]`; every other value is written by exactly one node, before
    /// any node reads it; `outputs` are the values the caller gets back.
    pub fn new(
        mut nodes: Vec<Node>,
        inputs: Vec<ValueId>,
        input_dims: Vec<Vec<usize>>,
        outputs: Vec<ValueId>,
    ) -> Result<Self> {
        if inputs.len() != input_dims.len() {
            return shape_err!(
                "{} inputs but {} input dims",
                inputs.len(),
                input_dims.len()
            );
        }
        if outputs.is_empty() {
            return value_err!("a graph plan needs at least one output");
        }
        let n_values = nodes
            .iter()
            .flat_map(|n| n.inputs.iter().chain(std::iter::once(&n.output)))
            .chain(&inputs)
            .chain(&outputs)
            .max()
            .map_or(0, |m| m + 1);
        let mut dims: Vec<Option<Vec<usize>>> = vec![None; n_values];
        for (&v, d) in inputs.iter().zip(input_dims) {
            if dims[v].is_some() {
                return value_err!("value {v} is an input twice");
            }
            elems(&d)?;
            dims[v] = Some(d);
        }
        let mut scratch = Scratch::default();
        let mut res_need = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            let what = format!("node {i}");
            let ins = n
                .inputs
                .iter()
                .map(|&v| {
                    dims[v].as_deref().ok_or_else(|| {
                        Error::Value(format!(
                            "{what} reads value {v}, which nothing wrote before"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let out = n.op.out_dims(&ins, &what)?;
            elems(&out)?;
            let s = n.op.scratch(ins[0], &out);
            scratch.q = scratch.q.max(s.q);
            scratch.rows = scratch.rows.max(s.rows);
            res_need.push(s.res);
            if dims[n.output].is_some() {
                return value_err!("{what} writes value {}, which is already written", n.output);
            }
            dims[n.output] = Some(out);
        }
        for n in &mut nodes {
            if let Op::Dense(g) | Op::Conv { gemm: g, .. } = &mut n.op {
                g.spell_out()?;
            }
            pad_conv_weights(&mut n.op);
            if let Op::Depthwise {
                weight,
                kernel,
                scale,
                ..
            } = &mut n.op
            {
                weight.prepare(*kernel, scale.len())?; // the channels, checked above
            }
        }
        let dims = dims
            .into_iter()
            .enumerate()
            .map(|(v, d)| d.ok_or_else(|| Error::Value(format!("value {v} is never written"))))
            .collect::<Result<Vec<_>>>()?;
        let (storage, buf_elems) = assign_storage(&nodes, &inputs, &outputs, &dims)?;
        let dtypes = int8_ops::dtypes(&nodes, &outputs, dims.len());
        // Only a float residual taken on a grid is dequantized into the
        // workspace; a uint8 one is read as bytes by the output step.
        scratch.res = nodes
            .iter()
            .zip(&res_need)
            .filter(|(n, _)| n.inputs.get(1).is_some_and(|&v| dtypes[v] == DType::F32))
            .map(|(_, &r)| r)
            .max()
            .unwrap_or(0);
        let row1 = batch1::prepare(&nodes, &dims, &dtypes, &storage);
        let row_bytes = row1.iter().flatten().map(|r| r.bytes()).max().unwrap_or(0);
        Ok(GraphPlan {
            row1,
            row_bytes,
            dtypes,
            nodes,
            inputs,
            outputs,
            dims,
            storage,
            buf_elems,
            scratch,
            pool: Mutex::new(Vec::new()),
            allocations: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Per-sample dims of every input, in order.
    pub fn input_dims(&self) -> Vec<&[usize]> {
        self.inputs
            .iter()
            .map(|&v| self.dims[v].as_slice())
            .collect()
    }

    /// Per-sample dims of every output, in order.
    pub fn output_dims(&self) -> Vec<&[usize]> {
        self.outputs
            .iter()
            .map(|&v| self.dims[v].as_slice())
            .collect()
    }

    /// The element type of value `v`.
    pub fn dtype(&self, v: ValueId) -> Option<DType> {
        self.dtypes.get(v).copied()
    }

    /// Where value `v` lives.
    pub fn storage(&self, v: ValueId) -> Option<Storage> {
        self.storage.get(v).copied()
    }

    /// Nodes of the plan.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Workspace buffers the plan uses for its values (after sharing by lifetime).
    pub fn buffers(&self) -> usize {
        self.buf_elems.len()
    }

    /// About how many multiply-accumulates (or element steps) one sample
    /// costs: each node's output elements times the inputs each one reads
    /// (K of a product, the window of a pool or depthwise conv, 1 for an
    /// element-wise op), plus the elements it reads; saturating. A caller weighs a call by it, e.g. to
    /// keep the GIL for a call too short to be worth releasing it.
    pub fn work_per_sample(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| {
                let last_in = |i: usize| {
                    n.inputs
                        .get(i)
                        .and_then(|&v| self.dims.get(v))
                        .and_then(|d| d.last().copied())
                        .unwrap_or(1)
                };
                let per_out = match &n.op {
                    Op::Dense(g) | Op::Conv { gemm: g, .. } | Op::ConvAdd { gemm: g, .. } => {
                        g.packed.k()
                    }
                    Op::Int4Dense(_) | Op::SparseDense(_) | Op::MatMul { .. } => last_in(0),
                    Op::Depthwise { kernel, .. } | Op::Pool { kernel, .. } => {
                        kernel.0.saturating_mul(kernel.1)
                    }
                    _ => 1,
                };
                let size = |v: &ValueId| {
                    self.dims.get(*v).map_or(usize::MAX, |d| {
                        d.iter().fold(1usize, |a, &x| a.saturating_mul(x))
                    })
                };
                let reads = n
                    .inputs
                    .iter()
                    .map(size)
                    .fold(0usize, usize::saturating_add);
                size(&n.output)
                    .saturating_mul(per_out.max(1))
                    .saturating_add(reads)
            })
            .fold(0usize, usize::saturating_add)
    }

    /// How often a workspace buffer was allocated or grown since the plan was
    /// built (0 growths per call once a batch size has run).
    pub fn allocations(&self) -> usize {
        self.allocations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs the plan for a batch of `batch` samples: `inputs[i]` holds
    /// `batch · elems(input_dims[i])` floats, `outputs[i]` receives
    /// `batch · elems(output_dims[i])`.
    pub fn forward(
        &self,
        ctx: &Ctx,
        batch: usize,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
    ) -> Result<()> {
        self.forward_timed(ctx, batch, inputs, outputs, None)
    }

    /// [`GraphPlan::forward`], writing each node's wall-clock seconds into
    /// `seconds` (one entry per node) when given: the plan's profile.
    pub fn forward_timed(
        &self,
        ctx: &Ctx,
        batch: usize,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
        mut seconds: Option<&mut [f64]>,
    ) -> Result<()> {
        if seconds
            .as_ref()
            .is_some_and(|s| s.len() != self.nodes.len())
        {
            return shape_err!(
                "seconds must have one entry per node ({})",
                self.nodes.len()
            );
        }
        if inputs.len() != self.inputs.len() || outputs.len() != self.outputs.len() {
            return shape_err!(
                "the plan takes {} inputs and {} outputs; got {} and {}",
                self.inputs.len(),
                self.outputs.len(),
                inputs.len(),
                outputs.len()
            );
        }
        for (i, (x, &v)) in inputs.iter().zip(&self.inputs).enumerate() {
            let want = batch.checked_mul(elems(&self.dims[v])?);
            if want != Some(x.len()) {
                return shape_err!(
                    "input {i} has {} elements; a batch of {batch} of dims {:?} needs {want:?}",
                    x.len(),
                    self.dims[v]
                );
            }
        }
        for (i, (y, &v)) in outputs.iter().zip(&self.outputs).enumerate() {
            if batch.checked_mul(elems(&self.dims[v])?) != Some(y.len()) {
                return shape_err!(
                    "output {i} has {} elements, not a batch of {batch}",
                    y.len()
                );
            }
        }
        let mut ws = self
            .pool
            .lock()
            .map_err(|_| Error::Value("the plan's workspace pool is poisoned".into()))?
            .pop()
            .unwrap_or_default();
        let res = self.prepare(&mut ws, batch).and_then(|()| {
            self.nodes.iter().enumerate().try_for_each(|(i, n)| {
                // The clock only when timing: two reads per node cost ~50 ns
                // of a ~1 µs batch-1 MLP call.
                let t0 = seconds.is_some().then(std::time::Instant::now);
                let r = self.run_node(ctx, &mut ws, batch, i, n, inputs, outputs);
                if let (Some(s), Some(t0)) = (seconds.as_deref_mut(), t0) {
                    s[i] = t0.elapsed().as_secs_f64();
                }
                r.map_err(|e| at(i, e))
            })
        });
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(ws);
        }
        res
    }

    /// Sizes `ws` for `batch` (growing only, counted).
    fn prepare(&self, ws: &mut Workspace, batch: usize) -> Result<()> {
        if ws.batch >= batch && ws.bufs.len() == self.buf_elems.len() {
            return Ok(());
        }
        let before = ws.allocations;
        let len = |e: usize| {
            e.checked_mul(batch).ok_or_else(|| {
                Error::Alloc(format!("a batch of {batch} overflows the plan's buffers"))
            })
        };
        ws.bufs.resize_with(self.buf_elems.len(), Vec::new);
        for (b, &e) in ws.bufs.iter_mut().zip(&self.buf_elems) {
            grow(b, len(e)?, &mut ws.allocations)?;
        }
        let s = self.scratch;
        grow(&mut ws.q, len(s.q)?, &mut ws.allocations)?;
        grow(&mut ws.qt, len(s.q)?, &mut ws.allocations)?;
        grow(&mut ws.row_scale, len(s.rows)?, &mut ws.allocations)?;
        grow(&mut ws.res, len(s.res)?, &mut ws.allocations)?;
        grow(&mut ws.row, self.row_bytes, &mut ws.allocations)?;
        grow(&mut ws.img_scale, batch, &mut ws.allocations)?;
        grow(&mut ws.img_zp, batch, &mut ws.allocations)?;
        for n in &self.nodes {
            if let Op::Int4Dense(d) = &n.op {
                ws.allocations += d.reserve(&mut ws.int4, self.len_of(n.inputs[0], batch))?;
            }
        }
        ws.batch = batch;
        self.allocations.fetch_add(
            ws.allocations - before,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }

    fn len_of(&self, v: ValueId, batch: usize) -> usize {
        batch * self.dims[v].iter().product::<usize>()
    }

    #[allow(clippy::too_many_arguments)]
    fn run_node(
        &self,
        ctx: &Ctx,
        ws: &mut Workspace,
        batch: usize,
        i: usize,
        node: &Node,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
    ) -> Result<()> {
        if let Some(r) = batch1::run_node(self, ctx, ws, batch, i, node, inputs, outputs) {
            return r;
        }
        if let Op::Reshape(_) = node.op {
            if self.storage[node.output] == self.storage[node.inputs[0]] {
                return Ok(()); // an alias: the data is already where it belongs
            }
        }
        if let Some(r) = int8_ops::run_node(self, ctx, ws, batch, node, inputs, outputs) {
            return r;
        }
        // Resolve storages to raw parts: the planner guarantees that a node's
        // output never shares storage with its inputs (a Reshape that aliases
        // runs no code), so the one mutable slice below overlaps none of the
        // shared ones.
        let out_len = self.len_of(node.output, batch);
        let out_ptr: *mut f32 = match self.storage[node.output] {
            Storage::Output(i) => outputs[i].as_mut_ptr(),
            Storage::Buffer(b) => ws.bufs[b].as_mut_ptr(),
            Storage::Input(_) => return value_err!("a node writes a plan input"),
        };
        let src = |ws: &Workspace, v: ValueId| -> (*const f32, usize) {
            let len = self.len_of(v, batch);
            match self.storage[v] {
                Storage::Input(i) => (inputs[i].as_ptr(), len),
                Storage::Output(i) => (outputs[i].as_ptr(), len),
                Storage::Buffer(b) => (ws.bufs[b].as_ptr(), len),
            }
        };
        let (p0, l0) = src(ws, node.inputs[0]);
        // SAFETY: the pointers come from live slices of at least these lengths
        // (buffers are sized for `batch` by `prepare`); the output's storage
        // differs from every input's (see above), and nothing else touches
        // them during this node.
        let x = unsafe { std::slice::from_raw_parts(p0, l0) };
        let y = unsafe { std::slice::from_raw_parts_mut(out_ptr, out_len) };
        let xd = &self.dims[node.inputs[0]];
        match &node.op {
            Op::Dense(g) => {
                let k = *xd.last().unwrap_or(&1);
                let m = x.len().checked_div(k).unwrap_or(0);
                if let Some(a) = g.act {
                    let q = &mut ws.q[..x.len()];
                    quantize_fixed_u8(ctx, x, a.scale, a.zero_point, q)?;
                    let step = OutputStep::Float {
                        row_scale: Param::Scalar(a.scale),
                        col_scale: g.col_scale(),
                        bias: g.bias.as_deref(),
                        relu: g.relu,
                    };
                    let zp = ZeroPoint::Scalar(a.zero_point);
                    let a = ARows::Matrix(ASource::U8(q));
                    gemm::matmul_rows_checked(ctx, a, m, k, zp, &g.packed, &step, y)?;
                } else {
                    gemm::linear_dynamic_checked(
                        ctx,
                        x,
                        m,
                        k,
                        &g.packed,
                        g.col_scale(),
                        g.bias.as_deref(),
                        g.relu,
                        y,
                    )?;
                }
                if let Some(f) = g.post {
                    f.run_par(ctx, y);
                }
            }
            Op::Int4Dense(d) => d.run(ctx, &mut ws.int4, x, y)?,
            Op::SparseDense(d) => d.run(ctx, x, y)?,
            Op::Conv {
                gemm: g,
                kernel,
                stride,
                padding,
                nchw_in,
            } => conv(
                ctx, ws, x, xd, batch, g, *kernel, *stride, *padding, *nchw_in, y,
            )?,
            Op::ConvAdd { .. } => return value_err!("a fused conv + add runs in int8_ops"),
            Op::StaticAdd(_) => return value_err!("a static add runs in int8_ops"),
            Op::Depthwise { .. } => int8_ops::depthwise(
                ctx,
                ws,
                int8_ops::In::F32(x),
                xd,
                batch,
                &node.op,
                int8_ops::Out::F32(y),
            )?,
            Op::Pool {
                kind,
                kernel,
                stride,
                padding,
            } => {
                let (c, h, w) = image(xd, false, "pool")?;
                let win = Window::new(batch, c, h, w, *kernel, *stride, *padding);
                nhwc::pool2d_into(ctx, x, win, *kind, y)?;
            }
            Op::GlobalAvgPool { channels_last } => {
                let (c, h, w) = image(xd, !*channels_last, "global average pool")?;
                let (hw, per) = (h * w, c * h * w);
                for (img, xi) in x.chunks_exact(per.max(1)).enumerate().take(batch) {
                    let yi = &mut y[img * c..(img + 1) * c];
                    if *channels_last {
                        // NumPy's order for each channel, a block of channels at a time.
                        for c0 in (0..c).step_by(GAP_BLOCK) {
                            let cb = GAP_BLOCK.min(c - c0);
                            let sums = pairwise_sum_block(xi, c, c0, cb, 0, hw);
                            for (o, &sum) in yi[c0..c0 + cb].iter_mut().zip(&sums) {
                                // np.add.reduce starts from 0; np.mean divides in float32.
                                *o = (0.0 + sum) / hw as f32;
                            }
                        }
                    } else {
                        for (ch, o) in yi.iter_mut().enumerate() {
                            let sum = pairwise_sum(&|i| xi[ch * hw + i], 0, hw);
                            *o = (0.0 + sum) / hw as f32;
                        }
                    }
                }
            }
            Op::Add { relu } => {
                let (p1, l1) = src(ws, node.inputs[1]);
                // SAFETY: as for `x`.
                let b = unsafe { std::slice::from_raw_parts(p1, l1) };
                for ((o, &a), &b) in y.iter_mut().zip(x).zip(b) {
                    *o = a + b;
                }
                if *relu {
                    Unary::Relu.run(y);
                }
            }
            Op::Unary(f) => {
                for (o, &v) in y.iter_mut().zip(x) {
                    *o = f.apply(v);
                }
            }
            Op::Affine {
                scale,
                shift,
                channels_last,
            } => {
                let c = scale.len();
                if *channels_last {
                    for (yo, xo) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                        for j in 0..c {
                            yo[j] = xo[j] * scale[j] + shift[j];
                        }
                    }
                } else {
                    let inner: usize = xd[1..].iter().product();
                    for (i, (yo, xo)) in y
                        .chunks_exact_mut(inner.max(1))
                        .zip(x.chunks_exact(inner.max(1)))
                        .enumerate()
                    {
                        let (s, t) = (scale[i % c], shift[i % c]);
                        for (o, &v) in yo.iter_mut().zip(xo) {
                            *o = v * s + t;
                        }
                    }
                }
            }
            Op::ToNhwc => {
                let (c, h, w) = image(xd, true, "layout")?;
                to_nhwc_team(ctx, x, y, batch, c, h * w);
            }
            Op::ToNchw => {
                let (c, h, w) = image(xd, false, "layout")?;
                to_nchw(x, y, batch, c, h * w);
            }
            Op::Reshape(_) => y.copy_from_slice(x),
            Op::LayerNorm(ln) => attention_ops::layer_norm(ctx, ln, x, y)?,
            Op::Softmax => attention_ops::softmax(ctx, x, xd, y)?,
            Op::Gelu(a) => attention_ops::gelu(ctx, *a, x, y)?,
            Op::MatMul { trans_b } => {
                let (p1, l1) = src(ws, node.inputs[1]);
                // SAFETY: as for `x`.
                let b = unsafe { std::slice::from_raw_parts(p1, l1) };
                let bd = &self.dims[node.inputs[1]];
                attention_ops::matmul(ctx, x, xd, b, bd, *trans_b, batch, y)?;
            }
            Op::Transpose(perm) => attention_ops::transpose(perm, x, xd, batch, y)?,
            Op::Mean { axis, .. } => attention_ops::mean(*axis, x, xd, y)?,
            Op::Scalar(s) => attention_ops::scalar(*s, x, y),
        }
        Ok(())
    }
}

/// NumPy's pairwise float32 sum of `x(start..start + n)` (`pairwise_sum_FLOAT`
/// in its `loops_utils.h`): plain below 8, eight accumulators up to 128
/// elements, else the two halves split at a multiple of 8.
fn pairwise_sum(x: &impl Fn(usize) -> f32, start: usize, n: usize) -> f32 {
    if n < 8 {
        let mut res = 0.0f32;
        for i in 0..n {
            res += x(start + i);
        }
        res
    } else if n <= 128 {
        let mut r = [0f32; 8];
        for (j, v) in r.iter_mut().enumerate() {
            *v = x(start + j);
        }
        let mut i = 8;
        while i < n - n % 8 {
            for (j, v) in r.iter_mut().enumerate() {
                *v += x(start + i + j);
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += x(start + i);
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(x, start, n2) + pairwise_sum(x, start + n2, n - n2)
    }
}

/// Channels per [`pairwise_sum_block`].
const GAP_BLOCK: usize = 64;

/// [`pairwise_sum`] of channels `c0..c0 + cb` (`cb <= GAP_BLOCK`) of the
/// pixels `start..start + n` of a channels-last image `x` (`c` channels):
/// each channel's sum in NumPy's order, the channels side by side so the
/// adds vectorise (a channel at a time, a strided closure per element, the
/// global average pool cost more than the layer before it at 1×1 pixels).
fn pairwise_sum_block(
    x: &[f32],
    c: usize,
    c0: usize,
    cb: usize,
    start: usize,
    n: usize,
) -> [f32; GAP_BLOCK] {
    let px = |i: usize| &x[(start + i) * c + c0..(start + i) * c + c0 + cb];
    let add = |acc: &mut [f32; GAP_BLOCK], v: &[f32]| {
        for (a, &v) in acc.iter_mut().zip(v) {
            *a += v;
        }
    };
    if n < 8 {
        let mut res = [0f32; GAP_BLOCK];
        for i in 0..n {
            add(&mut res, px(i));
        }
        res
    } else if n <= 128 {
        let mut r = [[0f32; GAP_BLOCK]; 8];
        for (j, v) in r.iter_mut().enumerate() {
            v[..cb].copy_from_slice(px(j));
        }
        let mut i = 8;
        while i < n - n % 8 {
            for (j, v) in r.iter_mut().enumerate() {
                add(v, px(i + j));
            }
            i += 8;
        }
        let mut res = [0f32; GAP_BLOCK];
        for (k, o) in res.iter_mut().enumerate() {
            *o = ((r[0][k] + r[1][k]) + (r[2][k] + r[3][k]))
                + ((r[4][k] + r[5][k]) + (r[6][k] + r[7][k]));
        }
        while i < n {
            add(&mut res, px(i));
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        let mut res = pairwise_sum_block(x, c, c0, cb, start, n2);
        let b = pairwise_sum_block(x, c, c0, cb, start + n2, n - n2);
        for (a, &b) in res.iter_mut().zip(&b) {
            *a += b;
        }
        res
    }
}

fn at(i: usize, e: Error) -> Error {
    match e {
        Error::Shape(m) => Error::Shape(format!("node {i}: {m}")),
        Error::Value(m) => Error::Value(format!("node {i}: {m}")),
        other => other,
    }
}

/// `(n, c, hw)` to `(n, hw, c)`.
fn to_nhwc<T: Copy>(x: &[T], y: &mut [T], n: usize, c: usize, hw: usize) {
    for img in 0..n {
        nhwc_pixels(x, &mut y[img * c * hw..(img + 1) * c * hw], img, c, hw, 0);
    }
}

/// [`to_nhwc`] on the team, in tasks of [`NHWC_PIXELS`] pixels of one image
/// (serially, resnet18's float input at batch 32 spent a quarter of the
/// stem convolution's time here on 2 threads).
fn to_nhwc_team<T: Copy + Send + Sync>(
    ctx: &Ctx,
    x: &[T],
    y: &mut [T],
    n: usize,
    c: usize,
    hw: usize,
) {
    let blocks = hw.div_ceil(NHWC_PIXELS);
    let len = (n * c * hw).min(y.len());
    let yp = SyncPtr(y.as_mut_ptr());
    ctx.for_each_task(len, n * blocks, |t| {
        let (img, p0) = (t / blocks, t % blocks * NHWC_PIXELS);
        let p1 = hw.min(p0 + NHWC_PIXELS);
        // SAFETY: task t alone writes pixels p0..p1 of image img, inside `y`.
        let yb = unsafe {
            std::slice::from_raw_parts_mut(yp.get().add((img * hw + p0) * c), (p1 - p0) * c)
        };
        nhwc_pixels(x, yb, img, c, hw, p0);
    });
}

/// Pixels of one `(n, hw, c)` task: a block of outputs small enough to
/// stay in L1 while each channel's plane is written into it.
const NHWC_PIXELS: usize = 2048;

/// Pixels `p0..p0 + y.len() / c` of image `img` of `(n, c, hw)` `x` into
/// `y`, in `(hw, c)` order.
#[inline]
fn nhwc_pixels<T: Copy>(x: &[T], y: &mut [T], img: usize, c: usize, hw: usize, p0: usize) {
    let Some(np) = y.len().checked_div(c) else {
        return;
    };
    let xi = &x[img * c * hw..(img + 1) * c * hw];
    for ch in 0..c {
        let plane = &xi[ch * hw + p0..ch * hw + p0 + np];
        for (o, &v) in y[ch..].iter_mut().step_by(c).zip(plane) {
            *o = v;
        }
    }
}

/// `(n, hw, c)` to `(n, c, hw)`.
fn to_nchw<T: Copy>(x: &[T], y: &mut [T], n: usize, c: usize, hw: usize) {
    for img in 0..n {
        let (xi, yi) = (
            &x[img * c * hw..(img + 1) * c * hw],
            &mut y[img * c * hw..(img + 1) * c * hw],
        );
        for p in 0..hw {
            for ch in 0..c {
                yi[ch * hw + p] = xi[p * c + ch];
            }
        }
    }
}

/// Quantizes each image of `x` (`batch` equal parts) into `ws.q` with the
/// one activation quantizer, its scale and zero point into `ws.img_*`.
/// `one_zero_point`: when the images' zero points differ, the batch is
/// quantized as one tensor instead (the unfold pads with a single value).
fn quantize_images(
    ctx: &Ctx,
    ws: &mut Workspace,
    x: &[f32],
    batch: usize,
    one_zero_point: bool,
) -> Result<()> {
    if one_zero_point && batch > 1 {
        return int8_ops::quantize_batch_one_zero_point(ctx, ws, x, batch);
    }
    let len = x.len();
    let per = len.checked_div(batch).unwrap_or(0);
    let q = &mut ws.q[..len];
    let bad = std::sync::atomic::AtomicUsize::new(usize::MAX);
    {
        let (qp, sp, zp) = (
            SyncPtr(q.as_mut_ptr()),
            SyncPtr(ws.img_scale.as_mut_ptr()),
            SyncPtr(ws.img_zp.as_mut_ptr()),
        );
        ctx.for_each_task(len, batch, |img| {
            // SAFETY: image `img` owns its part of `q` and entry `img` of the
            // scale and zero-point scratch (sized for `batch` by `prepare`).
            let dst = unsafe { std::slice::from_raw_parts_mut(qp.get().add(img * per), per) };
            match quantize_row_u8(&x[img * per..(img + 1) * per], dst) {
                Some((_, z, s)) => unsafe {
                    *sp.get().add(img) = s;
                    *zp.get().add(img) = z;
                },
                None => {
                    bad.fetch_min(img, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    let bad = bad.into_inner();
    if bad != usize::MAX {
        let row = &x[bad * per..(bad + 1) * per];
        let col = row.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return value_err!("x is not finite at row {bad}, column {col}");
    }
    Ok(())
}

/// Quantizes `x` into `ws.q` (scales and zero points per image in
/// `ws.img_*`): with the static parameters `act` when the layer has them,
/// else each image dynamically ([`quantize_images`]).
fn quantize_input(
    ctx: &Ctx,
    ws: &mut Workspace,
    x: &[f32],
    batch: usize,
    act: Option<StaticAct>,
    one_zero_point: bool,
) -> Result<()> {
    let Some(a) = act else {
        return quantize_images(ctx, ws, x, batch, one_zero_point);
    };
    quantize_fixed_u8(ctx, x, a.scale, a.zero_point, &mut ws.q[..x.len()])?;
    ws.img_scale[..batch].fill(a.scale);
    ws.img_zp[..batch].fill(a.zero_point);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn conv(
    ctx: &Ctx,
    ws: &mut Workspace,
    x: &[f32],
    xd: &[usize],
    batch: usize,
    g: &Gemm,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    nchw_in: bool,
    y: &mut [f32],
) -> Result<()> {
    let (c, h, w) = image(xd, nchw_in, "conv")?;
    quantize_input(ctx, ws, x, batch, g.act, true)?;
    let len = x.len();
    let q = if nchw_in && c > 1 {
        to_nhwc_team(ctx, &ws.q[..len], &mut ws.qt[..len], batch, c, h * w);
        &ws.qt[..len]
    } else {
        &ws.q[..len]
    };
    let win = Window::new(batch, c, h, w, kernel, stride, padding).check()?;
    let pad = if batch > 0 { ws.img_zp[0] as u8 } else { 0 };
    let rows = win.cols_shape().0;
    // Every image was quantized with one zero point (`quantize_input`'s
    // `one_zero_point`): one zero point for all rows, one scale per image.
    let zp = ZeroPoint::Scalar(pad as i32);
    let row_scale = if let Some(a) = g.act {
        Param::Scalar(a.scale)
    } else {
        let per = win.oh() * win.ow();
        for img in 0..batch {
            ws.row_scale[img * per..(img + 1) * per].fill(ws.img_scale[img]);
        }
        param(&ws.row_scale[..rows])
    };
    let step = OutputStep::Float {
        row_scale,
        col_scale: g.col_scale(),
        bias: g.bias.as_deref(),
        relu: g.relu,
    };
    // Scales checked at build (`check_gemm`) or made by the quantizer.
    let a = ARows::Conv(ConvRows::new(q, win, pad)?);
    gemm::matmul_rows_checked(ctx, a, rows, g.packed.k(), zp, &g.packed, &step, y)?;
    if let Some(f) = g.post {
        f.run_par(ctx, y);
    }
    Ok(())
}

/// A convolution's weights with K padded to a multiple of 4 when that is
/// free ([`PackedB::padded_k`]): the rows of A the GEMM unfolds are then
/// exactly K long, the columns past the unfold zeros (when the unfold was
/// a matrix of its own, a one-channel 3×3 convolution's 9 columns were
/// packed a second time, row by row, into 12).
fn pad_conv_weights(op: &mut Op) {
    if let Op::Conv { gemm: g, .. } | Op::ConvAdd { gemm: g, .. } = op {
        if let Some(p) = g.packed.padded_k() {
            g.packed = Arc::new(p);
        }
    }
}

/// Where each value lives, and the per-sample size of each shared buffer.
///
/// Inputs stay where the caller holds them and outputs are written where the
/// caller wants them; a `Reshape` whose output is not a plan output shares
/// its input's storage. Every other value takes the smallest free buffer
/// that holds it (or a new one): a buffer returns to the free list after the
/// last node that reads any value stored in it.
fn assign_storage(
    nodes: &[Node],
    inputs: &[ValueId],
    outputs: &[ValueId],
    dims: &[Vec<usize>],
) -> Result<(Vec<Storage>, Vec<usize>)> {
    let nv = dims.len();
    let mut storage: Vec<Option<Storage>> = vec![None; nv];
    for (i, &v) in inputs.iter().enumerate() {
        storage[v] = Some(Storage::Input(i));
    }
    for (i, &v) in outputs.iter().enumerate() {
        match storage[v] {
            Some(Storage::Input(_)) => {
                return value_err!("value {v} is both a plan input and a plan output")
            }
            Some(Storage::Output(_)) => return value_err!("value {v} is a plan output twice"),
            _ => storage[v] = Some(Storage::Output(i)),
        }
    }
    // The root each value's storage belongs to (a Reshape alias reads its input's).
    let mut root: Vec<ValueId> = (0..nv).collect();
    for n in nodes {
        if let Op::Reshape(_) = n.op {
            if storage[n.output].is_none() {
                root[n.output] = root[n.inputs[0]];
            }
        }
    }
    // The last node that reads each root (through any alias).
    let mut last = vec![None; nv];
    for (i, n) in nodes.iter().enumerate() {
        for &v in &n.inputs {
            last[root[v]] = Some(i);
        }
    }
    let mut buf_elems: Vec<usize> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let v = n.output;
        if storage[v].is_none() {
            if root[v] != v {
                storage[v] = storage[root[v]];
            } else {
                let need = elems(&dims[v])?;
                // Best fit among the free buffers, else the largest grown, else a new one.
                let pick = free
                    .iter()
                    .enumerate()
                    .filter(|(_, &b)| buf_elems[b] >= need)
                    .min_by_key(|(_, &b)| buf_elems[b])
                    .map(|(j, _)| j)
                    .or_else(|| {
                        free.iter()
                            .enumerate()
                            .max_by_key(|(_, &b)| buf_elems[b])
                            .map(|(j, _)| j)
                    });
                let b = match pick {
                    Some(j) => free.swap_remove(j),
                    None => {
                        buf_elems.push(0);
                        buf_elems.len() - 1
                    }
                };
                buf_elems[b] = buf_elems[b].max(need);
                storage[v] = Some(Storage::Buffer(b));
            }
        }
        // A value nobody reads frees its buffer right after it is written.
        let mut dead: Vec<ValueId> = n
            .inputs
            .iter()
            .map(|&u| root[u])
            .filter(|&r| last[r] == Some(i))
            .collect();
        if last[root[v]].is_none() && root[v] == v {
            dead.push(v);
        }
        dead.sort_unstable();
        dead.dedup();
        for r in dead {
            if let Some(Storage::Buffer(b)) = storage[r] {
                if !free.contains(&b) {
                    free.push(b);
                }
            }
        }
    }
    let storage = storage
        .into_iter()
        .map(|s| s.unwrap_or(Storage::Buffer(usize::MAX)))
        .collect::<Vec<_>>();
    Ok((storage, buf_elems))
}
