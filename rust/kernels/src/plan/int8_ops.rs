//! The plan's rewrite "int8 between layers" and the ops that run on uint8.
//!
//! A statically quantized layer quantizes its float input with its own
//! calibrated scale and zero point ([`StaticAct`]). When every reader of a
//! value takes it on one grid, the value's producer writes it as uint8 on
//! that grid straight from its output step ([`OutputStep::Fused`]:
//! `QuantizeLinear` of the float result, clamped to a fused ReLU / Clip's
//! quantized bounds) and the readers skip their quantizer. The bytes are the
//! ones the reader's quantizer would have made of the float value, so the
//! plan's results do not change; only a float write, a float read and a
//! quantizer pass per edge go.
//!
//! * Producers of uint8: static dense / conv / fused conv + add / depthwise
//!   nodes whose element-wise step (if any) is a ReLU or Clip; max pooling and reshapes
//!   of uint8 values (max pooling commutes with a monotone quantizer).
//! * Readers of uint8: static dense / conv / fused conv + add (its conv
//!   input) / depthwise nodes, max pooling and reshapes.
//! * The residual add of a static model ([`StaticAdd`], `u8_ops.rs`) reads
//!   uint8 on the grids it takes its inputs on and writes uint8 on any grid.
//! * Everything else reads float: average pooling, the global average pool,
//!   a float `Add`, affine and element-wise ops (their float results would
//!   round differently on uint8), and plan outputs are float.
//!
//! [`Op::ConvAdd`] (the planner's pass `fuse_residual_add`) adds the float
//! residual inside the conv's output step before the ReLU and the
//! requantization, as the separate `Add` would.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::gemm::output::{Fused, Requant, Residual};
use crate::quant::quant1;
use crate::quant::rows::{quantize_row_on, row_qparams};

/// The dims of a fused conv + add: the conv's, which the residual must match.
pub(super) fn conv_add_dims(
    g: &Gemm,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    nchw_in: bool,
    ins: &[&[usize]],
    what: &str,
) -> Result<Vec<usize>> {
    if g.act.is_none() {
        return value_err!("{what}: a conv with a fused add needs static quantization (act)");
    }
    let (c, h, w) = image(ins[0], nchw_in, what)?;
    let win = Window::new(1, c, h, w, kernel, stride, padding).check()?;
    check_gemm(g, c * kernel.0 * kernel.1, what)?;
    let d = vec![win.oh(), win.ow(), g.packed.n()];
    if ins[1] != d.as_slice() {
        return shape_err!(
            "{what}: the conv gives {d:?} but the residual is {:?}",
            ins[1]
        );
    }
    Ok(d)
}

/// The grid on which a node takes input `slot` as uint8, if it can:
/// `Some(Some(grid))` a fixed grid, `Some(None)` whatever grid its output
/// is wanted on (max pooling, reshape), `None` float only.
fn takes_u8(op: &Op, slot: usize) -> Option<Option<StaticAct>> {
    match (op, slot) {
        (Op::Dense(g) | Op::Conv { gemm: g, .. } | Op::ConvAdd { gemm: g, .. }, 0) => {
            g.act.map(Some)
        }
        (Op::Depthwise { act, .. }, 0) => act.map(Some),
        (Op::StaticAdd(a), s) => a.acts.get(s).copied().flatten().map(Some),
        (Op::ConvAdd { res_act, .. }, 1) => res_act.map(Some),
        (
            Op::Pool {
                kind: Pool::Max, ..
            }
            | Op::Reshape(_),
            0,
        ) => Some(None),
        _ => None,
    }
}

/// Whether a node can write its output as uint8 given its input's dtype.
fn writes_u8(op: &Op, input: DType, grid: StaticAct) -> bool {
    match op {
        Op::Dense(g) | Op::Conv { gemm: g, .. } | Op::ConvAdd { gemm: g, .. } => {
            g.act.is_some() && matches!(g.post, None | Some(Unary::Relu) | Some(Unary::Clip(..)))
        }
        Op::Depthwise { act, post, .. } => {
            act.is_some() && matches!(post, None | Some(Unary::Relu) | Some(Unary::Clip(..)))
        }
        Op::Pool {
            kind: Pool::Max, ..
        }
        | Op::Reshape(_) => input == DType::U8(grid),
        Op::StaticAdd(_) => true,
        _ => false,
    }
}

/// Every value's dtype (see the module docs): a value is uint8 when it is
/// no plan output, every reader takes it on one grid and its producer can
/// write it so.
pub(super) fn dtypes(nodes: &[Node], outputs: &[ValueId], n_values: usize) -> Vec<DType> {
    // The grid each value's readers want, from the last node back (a pool's
    // input is wanted on the grid its output is wanted on).
    let mut want: Vec<Option<StaticAct>> = vec![None; n_values];
    let mut read = vec![false; n_values];
    for n in nodes.iter().rev() {
        for (slot, &v) in n.inputs.iter().enumerate() {
            let this = match takes_u8(&n.op, slot) {
                Some(Some(g)) => Some(g),
                Some(None) => want[n.output],
                None => None,
            };
            want[v] = if !read[v] || want[v] == this {
                this
            } else {
                None
            };
            read[v] = true;
        }
    }
    let mut dt = vec![DType::F32; n_values];
    for n in nodes {
        let v = n.output;
        let Some(grid) = want[v] else { continue };
        let input = n.inputs.first().map_or(DType::F32, |&u| dt[u]);
        if !outputs.contains(&v) && writes_u8(&n.op, input, grid) {
            dt[v] = DType::U8(grid);
        }
    }
    dt
}

/// A node's input: float32, or uint8 already on the node's grid.
pub(super) enum In<'a> {
    F32(&'a [f32]),
    U8(&'a [u8]),
}

/// A node's output: float32, or uint8 on `grid`.
pub(super) enum Out<'a> {
    F32(&'a mut [f32]),
    U8(&'a mut [u8], StaticAct),
}

/// Runs `node` when it reads or writes uint8 or is a fused conv + add;
/// `None` when it is the float path's (graph.rs) to run.
pub(super) fn run_node(
    plan: &GraphPlan,
    ctx: &Ctx,
    ws: &mut Workspace,
    batch: usize,
    node: &Node,
    inputs: &[&[f32]],
    outputs: &mut [&mut [f32]],
) -> Option<Result<()>> {
    let u8_in = plan.dtypes[node.inputs[0]] != DType::F32;
    let u8_out = plan.dtypes[node.output] != DType::F32;
    if !(u8_in || u8_out || matches!(node.op, Op::ConvAdd { .. } | Op::StaticAdd(_))) {
        return None;
    }
    let src = |ws: &Workspace, v: ValueId| -> *const f32 {
        match plan.storage[v] {
            Storage::Input(i) => inputs[i].as_ptr(),
            Storage::Output(i) => outputs[i].as_ptr(),
            Storage::Buffer(b) => ws.bufs[b].as_ptr(),
        }
    };
    let (l0, out_len) = (
        plan.len_of(node.inputs[0], batch),
        plan.len_of(node.output, batch),
    );
    let p0 = src(ws, node.inputs[0]);
    let p1 = node.inputs.get(1).map(|&v| (v, src(ws, v)));
    let res = match (node.inputs.get(1), &node.op) {
        (
            Some(&v),
            Op::ConvAdd {
                res_act: Some(a), ..
            },
        ) => {
            let (p, l) = (src(ws, v), plan.len_of(v, batch));
            // SAFETY: as for `x` below.
            let r = match plan.dtypes[v] {
                DType::U8(_) => In::U8(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), l) }),
                DType::F32 => In::F32(unsafe { std::slice::from_raw_parts(p, l) }),
            };
            // SAFETY: `ws.res` is not touched again before the conv has read it.
            match unsafe { residual_on_grid(ctx, r, *a, &mut ws.res) } {
                Ok(r) => Some(r),
                Err(e) => return Some(Err(e)),
            }
        }
        (Some(&v), _) => {
            let p = src(ws, v);
            // SAFETY: as for `x` below (the residual is a float value of the output's size).
            Some(Residual::F32(unsafe {
                std::slice::from_raw_parts(p, plan.len_of(v, batch))
            }))
        }
        (None, _) => None,
    };
    let out_ptr: *mut f32 = match plan.storage[node.output] {
        Storage::Output(i) => outputs[i].as_mut_ptr(),
        Storage::Buffer(b) => ws.bufs[b].as_mut_ptr(),
        Storage::Input(_) => return Some(value_err!("a node writes a plan input")),
    };
    // SAFETY: as in `GraphPlan::run_node`: live storages of at least these
    // lengths (a uint8 value's buffer holds as many f32, so its bytes too),
    // the output's storage distinct from the inputs'.
    let x = match plan.dtypes[node.inputs[0]] {
        DType::U8(_) => In::U8(unsafe { std::slice::from_raw_parts(p0.cast::<u8>(), l0) }),
        DType::F32 => In::F32(unsafe { std::slice::from_raw_parts(p0, l0) }),
    };
    let y = match plan.dtypes[node.output] {
        DType::U8(grid) => Out::U8(
            unsafe { std::slice::from_raw_parts_mut(out_ptr.cast::<u8>(), out_len) },
            grid,
        ),
        DType::F32 => Out::F32(unsafe { std::slice::from_raw_parts_mut(out_ptr, out_len) }),
    };
    if let (Op::StaticAdd(add), Some((v, p))) = (&node.op, p1) {
        let l = plan.len_of(v, batch);
        // SAFETY: as for `x`.
        let b = match plan.dtypes[v] {
            DType::U8(_) => In::U8(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), l) }),
            DType::F32 => In::F32(unsafe { std::slice::from_raw_parts(p, l) }),
        };
        return Some(add.run(ctx, x, b, y));
    }
    let xd = &plan.dims[node.inputs[0]];
    Some(run(ctx, ws, batch, &node.op, x, xd, res, y))
}

#[allow(clippy::too_many_arguments)]
fn run(
    ctx: &Ctx,
    ws: &mut Workspace,
    batch: usize,
    op: &Op,
    x: In<'_>,
    xd: &[usize],
    res: Option<Residual<'_>>,
    y: Out<'_>,
) -> Result<()> {
    match op {
        Op::Dense(g) => {
            let k = *xd.last().unwrap_or(&1);
            let a = static_act(g)?;
            let q = static_input(ctx, &mut ws.q, x, a)?;
            let m = q.len().checked_div(k).unwrap_or(0);
            static_gemm(ctx, ARows::Matrix(ASource::U8(q)), m, k, g, a, None, y)
        }
        Op::Conv {
            gemm: g,
            kernel,
            stride,
            padding,
            nchw_in,
        }
        | Op::ConvAdd {
            gemm: g,
            kernel,
            stride,
            padding,
            nchw_in,
            ..
        } => {
            let a = static_act(g)?;
            let (c, h, w) = image(xd, *nchw_in, "conv")?;
            let q = static_input(ctx, &mut ws.q, x, a)?;
            let len = q.len();
            let q = if *nchw_in && c > 1 {
                to_nhwc_team(ctx, q, &mut ws.qt[..len], batch, c, h * w);
                &ws.qt[..len]
            } else {
                q
            };
            let win = Window::new(batch, c, h, w, *kernel, *stride, *padding).check()?;
            // Padding is the real zero: the zero point.
            let cols = ConvRows::new(q, win, a.zero_point as u8)?;
            let (rows, k) = (cols.rows(), g.packed.k());
            static_gemm(ctx, ARows::Conv(cols), rows, k, g, a, res, y)
        }
        Op::Depthwise { .. } => depthwise(ctx, ws, x, xd, batch, op, y),
        Op::Pool {
            kind: Pool::Max,
            kernel,
            stride,
            padding,
        } => {
            let (In::U8(x), Out::U8(y, _)) = (x, y) else {
                return value_err!("a uint8 max pool reads and writes uint8");
            };
            let (c, h, w) = image(xd, false, "pool")?;
            let win = Window::new(batch, c, h, w, *kernel, *stride, *padding).check_pool()?;
            max_pool_u8(ctx, x, win, y)
        }
        Op::Reshape(_) => match (x, y) {
            (In::U8(x), Out::U8(y, _)) => {
                y.copy_from_slice(x);
                Ok(())
            }
            _ => value_err!("a uint8 reshape reads and writes uint8"),
        },
        _ => value_err!("this op reads and writes float only"),
    }
}

/// A depthwise node on float input (quantized here, statically or per image)
/// or on uint8 already on its static grid, writing float, or uint8 on its
/// reader's grid (a static node: the bytes of the reader's quantizer, a
/// ReLU / Clip folded into the clamp, as [`static_gemm`] writes them).
pub(super) fn depthwise(
    ctx: &Ctx,
    ws: &mut Workspace,
    x: In<'_>,
    xd: &[usize],
    batch: usize,
    op: &Op,
    y: Out<'_>,
) -> Result<()> {
    let Op::Depthwise {
        weight,
        kernel,
        scale,
        bias,
        relu,
        post,
        stride,
        padding,
        dilation,
        nchw_in,
        act,
    } = op
    else {
        return value_err!("not a depthwise node");
    };
    let (c, h, w) = image(xd, *nchw_in, "depthwise")?;
    let q: &[u8] = match x {
        In::F32(x) => {
            quantize_input(ctx, ws, x, batch, *act, false)?;
            &ws.q[..x.len()]
        }
        In::U8(q) => {
            let a =
                act.ok_or_else(|| Error::Value("uint8 feeds a dynamic depthwise layer".into()))?;
            ws.img_scale[..batch].fill(a.scale);
            ws.img_zp[..batch].fill(a.zero_point);
            q
        }
    };
    let len = q.len();
    let q = if *nchw_in && c > 1 {
        to_nhwc(q, &mut ws.qt[..len], batch, c, h * w);
        &ws.qt[..len]
    } else {
        q
    };
    let g = Depthwise {
        n: batch,
        h,
        w,
        c,
        kernel: *kernel,
        stride: *stride,
        dilation: *dilation,
        padding: *padding,
    };
    let bias = bias.as_deref();
    let (zps, scales) = (&ws.img_zp[..batch], &ws.img_scale[..batch]);
    match y {
        Out::F32(y) => {
            // As `depthwise_conv2d_f32` checks them.
            depthwise::check_positive("scales", scales)?;
            depthwise::check_positive("col_scale", scale)?;
            let step = OutputStep::Float {
                row_scale: Param::PerIndex(scales),
                col_scale: Param::PerIndex(scale),
                bias,
                relu: *relu,
            };
            // SAFETY: an initialised `[f32]` is a valid `[MaybeUninit<f32>]`; only `f32`s are written.
            let y = unsafe { &mut *(y as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) };
            dw_run(ctx, q, zps, weight, &g, &step, y)?;
            // SAFETY: every element was written (`Ok` above).
            let y = unsafe { &mut *(y as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            if let Some(f) = post {
                f.run_par(ctx, y);
            }
        }
        Out::U8(y, grid) => {
            let step = OutputStep::Fused(Fused {
                row_scale: Param::PerIndex(scales),
                col_scale: Param::PerIndex(scale),
                bias,
                residual: None,
                relu: *relu,
                requant: Some(requant_of(grid, *post)?),
            });
            // SAFETY: an initialised `[u8]` is a valid `[MaybeUninit<u8>]`; only `u8`s are written.
            let y = unsafe { &mut *(y as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
            dw_run(ctx, q, zps, weight, &g, &step, y)?;
        }
    }
    Ok(())
}

/// Quantizes a batch of `batch > 1` images of `x` into `ws.q` for a conv
/// (its unfold pads with one value): each image with its own row-quantizer
/// parameters when their zero points agree, else the whole batch as one
/// row, the bytes `quantize_row_u8` gives either (`ws.img_*` hold the
/// parameters used per image).
///
/// Both passes run over the images on the thread team: the images' ranges
/// first, then the one quantize with the chosen parameters. Before, every
/// image was quantized and, when the zero points differed (the input of
/// each of MobileNetV2's expand convs), the batch again on one thread.
pub(super) fn quantize_batch_one_zero_point(
    ctx: &Ctx,
    ws: &mut Workspace,
    x: &[f32],
    batch: usize,
) -> Result<()> {
    let len = x.len();
    let per = len / batch.max(1);
    let min_max = crate::quant::kernels().min_max;
    // The batch's range (each side taken with 0, as the row quantizer does).
    let range = std::sync::Mutex::new((0f32, 0f32));
    let bad = AtomicUsize::new(usize::MAX);
    let (sp, zp) = (
        SyncPtr(ws.img_scale.as_mut_ptr()),
        SyncPtr(ws.img_zp.as_mut_ptr()),
    );
    ctx.for_each_task(len, batch, |img| {
        let xi = &x[img * per..(img + 1) * per];
        let (mn, mx, poison) = if xi.is_empty() {
            (0.0, 0.0, 0.0)
        } else {
            min_max(xi)
        };
        if poison.is_nan() {
            bad.fetch_min(img, Ordering::Relaxed);
            return;
        }
        // `quantize_row_body`'s lanes start at 0: its range is min(x, 0)..max(x, 0).
        let (lo, hi) = (
            if mn < 0.0 { mn } else { 0.0 },
            if mx > 0.0 { mx } else { 0.0 },
        );
        let (s, z, _) = row_qparams(lo, hi);
        // SAFETY: image `img` alone writes entry `img` of the scratch (sized for `batch`).
        unsafe {
            *sp.get().add(img) = s;
            *zp.get().add(img) = z;
        }
        let mut r = range.lock().unwrap_or_else(|e| e.into_inner());
        *r = (r.0.min(lo), r.1.max(hi));
    });
    let bad = bad.into_inner();
    if bad != usize::MAX {
        let row = &x[bad * per..(bad + 1) * per];
        let col = row.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return value_err!("x is not finite at row {bad}, column {col}");
    }
    let zps = &ws.img_zp[..batch];
    if zps.iter().any(|&z| z != zps[0]) {
        let (lo, hi) = range.into_inner().unwrap_or_else(|e| e.into_inner());
        let (s, z, _) = row_qparams(lo, hi);
        ws.img_scale[..batch].fill(s);
        ws.img_zp[..batch].fill(z);
    }
    let (scales, zps) = (&ws.img_scale[..batch], &ws.img_zp[..batch]);
    let qp = SyncPtr(ws.q.as_mut_ptr());
    ctx.for_each_task(len, batch, |img| {
        // SAFETY: image `img` alone writes its part of `ws.q` (sized for the batch by `prepare`).
        let dst = unsafe { std::slice::from_raw_parts_mut(qp.get().add(img * per), per) };
        quantize_row_on(
            &x[img * per..(img + 1) * per],
            1.0 / scales[img],
            zps[img],
            dst,
        );
    });
    Ok(())
}

/// The depthwise kernel on the plan's weight: its widened form (made when
/// the plan was built), else widened for this call.
fn dw_run<T: depthwise::DwOut>(
    ctx: &Ctx,
    q: &[u8],
    zps: &[i32],
    weight: &depthwise::Weight,
    g: &depthwise::Depthwise,
    step: &OutputStep<'_>,
    y: &mut [std::mem::MaybeUninit<T>],
) -> Result<()> {
    match weight.wide() {
        Some(wide) => depthwise::depthwise_conv2d_wide(ctx, q, zps, wide, g, step, y),
        None => depthwise::depthwise_conv2d(ctx, q, zps, weight, g, step, y),
    }
}

fn static_act(g: &Gemm) -> Result<StaticAct> {
    g.act
        .ok_or_else(|| Error::Value("a uint8 value feeds a dynamically quantized layer".into()))
}

/// The uint8 input of a static layer: the producer's bytes, or `x`
/// quantized with the layer's parameters into `q`.
fn static_input<'a>(ctx: &Ctx, q: &'a mut [u8], x: In<'a>, a: StaticAct) -> Result<&'a [u8]> {
    match x {
        In::U8(v) => Ok(v),
        In::F32(x) => {
            let q = &mut q[..x.len()];
            quantize_fixed_u8(ctx, x, a.scale, a.zero_point, q)?;
            Ok(q)
        }
    }
}

/// A fused add's residual `x` taken on its grid `a`: a uint8 value as its
/// bytes (the output step dequantizes each as the static `Add` does), a float
/// value quantized onto the grid and dequantized into `terms` (the workspace's
/// residual buffer, at least as long as `x`).
///
/// # Safety
/// The caller leaves `terms` alone while the returned residual is in use (it
/// may borrow `terms` beyond this call's borrow).
pub(super) unsafe fn residual_on_grid<'a>(
    ctx: &Ctx,
    x: In<'a>,
    a: StaticAct,
    terms: &mut [f32],
) -> Result<Residual<'a>> {
    match x {
        In::U8(q) => Ok(Residual::U8 {
            q,
            scale: a.scale,
            zero_point: a.zero_point,
        }),
        In::F32(v) => {
            let Some(terms) = terms.get_mut(..v.len()) else {
                return value_err!("the residual buffer is shorter than the residual");
            };
            u8_ops::dequantized(ctx, x, a, terms)?;
            Ok(Residual::F32(std::slice::from_raw_parts(
                terms.as_ptr(),
                terms.len(),
            )))
        }
    }
}

/// The output step of a static layer on input grid `a`: its scales, bias,
/// ReLU and fused residual (rows of the layer's N outputs), then float out
/// or, with `requant`, uint8 on the reader's grid.
pub(super) fn static_step<'a>(
    g: &'a Gemm,
    a: StaticAct,
    res: Option<Residual<'a>>,
    requant: Option<Requant>,
) -> OutputStep<'a> {
    OutputStep::Fused(Fused {
        row_scale: Param::Scalar(a.scale),
        col_scale: param(&g.scale),
        bias: g.bias.as_deref(),
        residual: res.map(|r| (r, g.packed.n())),
        relu: g.relu,
        requant,
    })
}

/// The GEMM of a static layer on uint8 `a_q` `(m, k)` (a matrix, or a
/// convolution's column matrix) with the fused output step: float (then a
/// post step it could not fold), or uint8 on the reader's grid with a
/// ReLU / Clip folded into the clamp. The scales were checked when the plan
/// was built (`check_gemm`, `check_act`), so the step is prepared without
/// scanning them again (`matmul_rows_checked`).
#[allow(clippy::too_many_arguments)]
fn static_gemm(
    ctx: &Ctx,
    a_q: ARows<'_>,
    m: usize,
    k: usize,
    g: &Gemm,
    a: StaticAct,
    res: Option<Residual<'_>>,
    y: Out<'_>,
) -> Result<()> {
    let zp = ZeroPoint::Scalar(a.zero_point);
    let step = |requant| static_step(g, a, res, requant);
    match y {
        Out::F32(y) => {
            gemm::matmul_rows_checked(ctx, a_q, m, k, zp, &g.packed, &step(None), y)?;
            if let Some(f) = g.post {
                f.run_par(ctx, y);
            }
        }
        Out::U8(y, grid) => {
            let requant = requant_of(grid, g.post)?;
            gemm::matmul_rows_checked(ctx, a_q, m, k, zp, &g.packed, &step(Some(requant)), y)?;
        }
    }
    Ok(())
}

/// The output quantization of a layer writing uint8 on `grid`, with its
/// element-wise `post` (a ReLU or Clip) folded into the clamp.
pub(super) fn requant_of(grid: StaticAct, post: Option<Unary>) -> Result<Requant> {
    let q = |v: f32| quant1(v, grid.scale, grid.zero_point as f32, 0.0, 255.0) as i32;
    let (lo, hi) = match post {
        None => (0, 255),
        Some(Unary::Relu) => (q(0.0), 255),
        Some(Unary::Clip(lo, hi)) => {
            let hi = hi.map_or(255, q);
            // Clip's max then min: bounds out of order give `hi` everywhere.
            (lo.map_or(0, q).min(hi), hi)
        }
        Some(Unary::HardSwish) => {
            return value_err!("HardSwish cannot be folded into a uint8 output")
        }
    };
    Ok(Requant {
        y_scale: grid.scale,
        y_zero_point: grid.zero_point,
        lo,
        hi,
    })
}

/// Output bytes of a uint8 max pool handed to one task (whole output rows).
const POOL_TASK_BYTES: usize = 1 << 14;

/// Max pooling of NHWC uint8 images (a window always holds an image pixel:
/// `check_pool`) on the fork-join team, in bands of output rows so that one
/// image is split too: the bytes of quantizing the float max pool.
fn max_pool_u8(ctx: &Ctx, x: &[u8], win: Window, out: &mut [u8]) -> Result<()> {
    let (oh, c) = (win.oh(), win.c);
    let (img_in, row_out) = (win.h * win.w * c, win.ow() * c);
    if x.len() != win.in_len() || out.len() != win.out_len() {
        return shape_err!(
            "uint8 max pool: buffers of {} and {} bytes for {win:?}",
            x.len(),
            out.len()
        );
    }
    if img_in == 0 || row_out == 0 || oh == 0 {
        out.fill(0);
        return Ok(());
    }
    let rows = (POOL_TASK_BYTES / row_out).clamp(1, oh);
    let bands = oh.div_ceil(rows);
    let pool = crate::cpu::dispatch().nnops.max_pool_u8;
    let dst = SyncPtr(out.as_mut_ptr());
    let work = out.len().saturating_mul(win.kh * win.kw);
    ctx.for_each_task(work, win.n * bands, |t| {
        let (img, oy0) = (t / bands, t % bands * rows);
        let n = rows.min(oh - oy0);
        // SAFETY: task `t` owns output rows oy0..oy0 + n of image `img`, written by it alone.
        let o = unsafe {
            std::slice::from_raw_parts_mut(dst.get().add((img * oh + oy0) * row_out), n * row_out)
        };
        pool(&x[img * img_in..][..img_in], o, &win, oy0);
    });
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::tests::{gemm_of, node};
    use super::*;
    use crate::cpu::each_isa;
    use crate::exec::TEST;

    fn gemm(
        n: usize,
        k: usize,
        seed: i32,
        relu: bool,
        post: Option<Unary>,
        act: (f32, i32),
    ) -> Gemm {
        let act = Some(StaticAct {
            scale: act.0,
            zero_point: act.1,
        });
        Gemm {
            post,
            act,
            ..gemm_of(n, k, seed, relu)
        }
    }

    fn conv(g: Gemm, nchw_in: bool) -> Op {
        Op::Conv {
            gemm: g,
            kernel: (3, 3),
            stride: (1, 1),
            padding: (1, 1),
            nchw_in,
        }
    }

    /// conv (NCHW in, ReLU) -> max pool -> conv (ReLU6) -> conv + add (ReLU,
    /// the plan's second input as residual) -> conv -> flatten -> dense -> dense.
    fn nodes() -> Vec<Node> {
        let a1 = (0.02, 0); // the grid of the pool's output (ReLU'd)
        vec![
            node(conv(gemm(4, 18, 1, true, None, (0.05, 120)), true), &[0], 1),
            node(
                Op::Pool {
                    kind: Pool::Max,
                    kernel: (2, 2),
                    stride: (2, 2),
                    padding: (0, 0),
                },
                &[1],
                2,
            ),
            node(
                conv(
                    gemm(4, 36, 2, false, Some(Unary::Clip(Some(0.0), Some(6.0))), a1),
                    false,
                ),
                &[2],
                3,
            ),
            node(
                Op::ConvAdd {
                    gemm: gemm(4, 36, 3, true, None, (0.03, 0)),
                    kernel: (3, 3),
                    stride: (1, 1),
                    padding: (1, 1),
                    nchw_in: false,
                    res_act: None,
                },
                &[3, 9],
                4,
            ),
            node(conv(gemm(5, 36, 4, false, None, (0.04, 3)), false), &[4], 5),
            node(Op::Reshape(vec![3 * 3 * 5]), &[5], 6),
            node(
                Op::Dense(gemm(6, 45, 5, false, Some(Unary::Relu), (0.05, 100))),
                &[6],
                7,
            ),
            node(Op::Dense(gemm(3, 6, 6, false, None, (0.02, 0))), &[7], 8),
        ]
    }

    /// The reference of a plan of `nodes`: every node alone, so every value
    /// is a float plan input / output; `given` holds the plan inputs' values.
    pub(in crate::plan::graph) fn each_node_alone(
        nodes: &[Node],
        dims: &[Vec<usize>],
        batch: usize,
        given: &[(ValueId, &[f32])],
    ) -> Vec<Vec<f32>> {
        let mut vals: Vec<Vec<f32>> = vec![Vec::new(); dims.len()];
        for &(v, x) in given {
            vals[v] = x.to_vec();
        }
        for n in nodes {
            let ins: Vec<ValueId> = (0..n.inputs.len()).collect();
            let alone = node(n.op.clone(), &ins, ins.len());
            let idims = n.inputs.iter().map(|&v| dims[v].clone()).collect();
            let p = GraphPlan::new(vec![alone], ins.clone(), idims, vec![ins.len()]).unwrap();
            let mut y = vec![0f32; batch * elems(&dims[n.output]).unwrap()];
            let xs: Vec<&[f32]> = n.inputs.iter().map(|&v| vals[v].as_slice()).collect();
            p.forward(&TEST, batch, &xs, &mut [&mut y]).unwrap();
            vals[n.output] = y;
        }
        vals
    }

    #[test]
    fn uint8_edges_give_the_bytes_of_each_node_run_alone_on_every_isa() {
        let nodes = nodes();
        let plan = GraphPlan::new(
            nodes.clone(),
            vec![0, 9],
            vec![vec![2, 6, 6], vec![3, 3, 4]],
            vec![8],
        )
        .unwrap();
        let u8s: Vec<ValueId> = (0..10)
            .filter(|&v| plan.dtype(v) != Some(DType::F32))
            .collect();
        // Every edge between layers (through the pool and the reshape, an alias) is uint8.
        assert_eq!(u8s, vec![1, 2, 3, 4, 5, 6, 7], "{:?}", plan.dtypes);
        let dims: Vec<Vec<usize>> = (0..10).map(|v| plan.dims[v].clone()).collect();
        for batch in [1, 3] {
            let x: Vec<f32> = (0..batch * 72)
                .map(|i| ((i * 37 % 53) as f32 - 20.0) * 0.09)
                .collect();
            let r: Vec<f32> = (0..batch * 36)
                .map(|i| ((i * 11 % 17) as f32 - 8.0) * 0.2)
                .collect();
            each_isa(|isa| {
                let vals = each_node_alone(&nodes, &dims, batch, &[(0, &x), (9, &r)]);
                // The fused add alone (float in and out) is the conv, then the Add and its ReLU.
                let Op::ConvAdd { gemm: g, .. } = &nodes[3].op else {
                    unreachable!()
                };
                let split = GraphPlan::new(
                    vec![
                        node(
                            conv(
                                Gemm {
                                    relu: false,
                                    ..g.clone()
                                },
                                false,
                            ),
                            &[0],
                            2,
                        ),
                        node(Op::Add { relu: true }, &[2, 1], 3),
                    ],
                    vec![0, 1],
                    vec![dims[3].clone(), dims[9].clone()],
                    vec![3],
                )
                .unwrap();
                let mut want = vec![0f32; vals[4].len()];
                split
                    .forward(&TEST, batch, &[&vals[3], &r], &mut [&mut want])
                    .unwrap();
                assert_eq!(
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    vals[4].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{isa:?}: conv + add"
                );
                let mut y = vec![0f32; batch * 3];
                plan.forward(&TEST, batch, &[&x, &r], &mut [&mut y])
                    .unwrap();
                assert_eq!(
                    y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    vals[8].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{isa:?} batch {batch}"
                );
                assert!(
                    vals[8].iter().any(|&v| v != vals[8][0]),
                    "a result that varies"
                );
            });
        }
    }

    /// What a plan prepares once (spelled-out scales and biases, scales
    /// checked at build and not rescanned per call) gives the same bytes
    /// whatever ran before: a plan that ran a batch of 3 first gives a fresh
    /// plan's bytes at batch 1, without growing its buffers, and equals the
    /// first sample of the batch of 3 (every layer here quantizes per tensor
    /// or per row).
    #[test]
    fn a_plan_that_ran_another_batch_first_gives_a_fresh_plans_bytes() {
        let mk = || {
            GraphPlan::new(
                nodes(),
                vec![0, 9],
                vec![vec![2, 6, 6], vec![3, 3, 4]],
                vec![8],
            )
            .unwrap()
        };
        let x: Vec<f32> = (0..3 * 72)
            .map(|i| ((i * 29 % 41) as f32 - 17.0) * 0.08)
            .collect();
        let r: Vec<f32> = (0..3 * 36)
            .map(|i| ((i * 13 % 19) as f32 - 9.0) * 0.15)
            .collect();
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        each_isa(|isa| {
            let used = mk();
            let mut y3 = vec![0f32; 9];
            used.forward(&TEST, 3, &[&x, &r], &mut [&mut y3]).unwrap();
            let grown = used.allocations();
            let mut y1 = vec![0f32; 3];
            used.forward(&TEST, 1, &[&x[..72], &r[..36]], &mut [&mut y1])
                .unwrap();
            assert_eq!(used.allocations(), grown, "{isa:?}: batch 1 fits");
            let fresh = mk();
            let mut f1 = vec![0f32; 3];
            fresh
                .forward(&TEST, 1, &[&x[..72], &r[..36]], &mut [&mut f1])
                .unwrap();
            assert_eq!(bits(&y1), bits(&f1), "{isa:?}");
            assert_eq!(bits(&y3[..3]), bits(&f1), "{isa:?}: sample 0 of 3");
            assert!(f1.iter().any(|&v| v != f1[0]), "a result that varies");
        });
    }

    /// Dense layers with one scale for all columns and no bias (which the
    /// plan spells out once at build) give the bytes of the GEMM called with
    /// the scalar scale and no bias, dynamic and static, at batch 1 and 4.
    #[test]
    fn dense_layers_with_a_scalar_scale_and_no_bias_give_the_gemms_bytes() {
        for act in [None, Some((0.04f32, 7i32))] {
            let g1 = Gemm {
                scale: vec![0.013],
                bias: None,
                act: act.map(|(scale, zero_point)| StaticAct { scale, zero_point }),
                ..gemm_of(24, 40, 3, true)
            };
            let plan = GraphPlan::new(
                vec![node(Op::Dense(g1.clone()), &[0], 1)],
                vec![0],
                vec![vec![40]],
                vec![1],
            )
            .unwrap();
            for batch in [4, 1] {
                let x: Vec<f32> = (0..batch * 40)
                    .map(|i| ((i * 37 % 53) as f32 - 26.0) * 0.07)
                    .collect();
                each_isa(|isa| {
                    let mut want = vec![0f32; batch * 24];
                    match g1.act {
                        None => gemm::linear_dynamic(
                            &TEST,
                            &x,
                            batch,
                            40,
                            &g1.packed,
                            Param::Scalar(0.013),
                            None,
                            true,
                            &mut want,
                        )
                        .unwrap(),
                        Some(a) => {
                            let mut q = vec![0u8; x.len()];
                            quantize_fixed_u8(&TEST, &x, a.scale, a.zero_point, &mut q).unwrap();
                            let step = OutputStep::Float {
                                row_scale: Param::Scalar(a.scale),
                                col_scale: Param::Scalar(0.013),
                                bias: None,
                                relu: true,
                            };
                            let zp = ZeroPoint::Scalar(a.zero_point);
                            gemm::matmul(
                                &TEST,
                                ASource::U8(&q),
                                batch,
                                40,
                                zp,
                                &g1.packed,
                                &step,
                                &mut want,
                            )
                            .unwrap();
                        }
                    }
                    let mut y = vec![0f32; batch * 24];
                    plan.forward(&TEST, batch, &[&x], &mut [&mut y]).unwrap();
                    assert_eq!(
                        y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{isa:?} batch {batch} act {act:?}"
                    );
                    assert!(want.iter().any(|&v| v != want[0]), "a result that varies");
                });
            }
        }
    }

    #[test]
    fn the_uint8_max_pool_is_the_max_of_each_windows_pixels_on_every_isa() {
        // Channel counts below, at and past a vector; bands of rows split over tasks (big `oh`).
        for (n, c, h, w, k, s, p) in [
            (1, 64, 112, 112, (3, 3), (2, 2), (1, 1)),
            (3, 3, 7, 5, (3, 3), (2, 1), (1, 1)),
            (2, 70, 9, 9, (2, 2), (2, 2), (0, 0)),
            (1, 130, 6, 40, (3, 2), (1, 3), (1, 0)),
            (2, 1, 5, 5, (5, 5), (1, 1), (2, 2)),
        ] {
            let win = Window::new(n, c, h, w, k, s, p).check_pool().unwrap();
            let x: Vec<u8> = (0..win.in_len())
                .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
                .collect();
            let (oh, ow) = (win.oh(), win.ow());
            let mut want = vec![0u8; win.out_len()];
            for (i, o) in want.iter_mut().enumerate() {
                let (ci, ox, oy, img) = (i % c, i / c % ow, i / c / ow % oh, i / c / ow / oh);
                for ky in 0..k.0 {
                    for kx in 0..k.1 {
                        let (iy, ix) = (
                            (oy * s.0 + ky) as isize - p.0 as isize,
                            (ox * s.1 + kx) as isize - p.1 as isize,
                        );
                        if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                            let v = x[((img * h + iy as usize) * w + ix as usize) * c + ci];
                            *o = (*o).max(v);
                        }
                    }
                }
            }
            each_isa(|isa| {
                let mut got = vec![7u8; win.out_len()];
                max_pool_u8(&TEST, &x, win, &mut got).unwrap();
                assert!(got == want, "{isa:?} {win:?}");
            });
        }
        let win = Window::new(1, 2, 4, 4, (2, 2), (2, 2), (0, 0));
        let bad = max_pool_u8(&TEST, &[0; 31], win, &mut [0; 8]);
        assert!(matches!(bad, Err(Error::Shape(_))), "{bad:?}");
    }

    #[test]
    fn a_fused_add_needs_a_static_conv_and_a_residual_of_its_dims() {
        let mut g = gemm(4, 18, 1, false, None, (0.05, 120));
        let op = |g: Gemm| Op::ConvAdd {
            gemm: g,
            kernel: (3, 3),
            stride: (1, 1),
            padding: (1, 1),
            nchw_in: true,
            res_act: None,
        };
        let bad = GraphPlan::new(
            vec![node(op(g.clone()), &[0, 1], 2)],
            vec![0, 1],
            vec![vec![2, 5, 5], vec![5, 5, 3]],
            vec![2],
        );
        assert!(matches!(bad, Err(Error::Shape(_))), "{bad:?}");
        g.act = None;
        let bad = GraphPlan::new(
            vec![node(op(g), &[0, 1], 2)],
            vec![0, 1],
            vec![vec![2, 5, 5], vec![5, 5, 4]],
            vec![2],
        );
        assert!(matches!(bad, Err(Error::Value(_))), "{bad:?}");
    }

    /// A conv's batch quantizer gives the row quantizer's bytes on every
    /// ISA: each image alone when the zero points agree, else the batch as
    /// one row (the reference: `quantize_row_u8`), and names a bad element.
    #[test]
    fn a_convs_batch_quantizer_gives_the_row_quantizers_bytes() {
        let per = 1000;
        let image = |i: usize, shift: f32| -> Vec<f32> {
            (0..per)
                .map(|j| ((j * 37 + i * 11) % 101) as f32 * 0.05 * (i + 1) as f32 + shift)
                .collect()
        };
        let two = Ctx::new(2);
        crate::cpu::each_isa(|isa| {
            for (what, shifts) in [
                ("agreeing zero points", [0.0f32, 0.0, 0.0, 0.0]),
                ("differing zero points", [-1.0, -0.3, -2.5, 0.4]),
            ] {
                let x: Vec<f32> = (0..4).flat_map(|i| image(i, shifts[i])).collect();
                let mut ws = Workspace {
                    q: vec![0; x.len()],
                    img_scale: vec![0.0; 4],
                    img_zp: vec![0; 4],
                    ..Default::default()
                };
                for ctx in [&TEST, &two] {
                    quantize_batch_one_zero_point(ctx, &mut ws, &x, 4).unwrap();
                    let mut want = vec![0u8; x.len()];
                    let mut params = vec![];
                    let zps: Vec<i32> = (0..4)
                        .map(|i| {
                            let r = &x[i * per..(i + 1) * per];
                            let d = &mut want[i * per..(i + 1) * per];
                            quantize_row_u8(r, d).unwrap().1
                        })
                        .collect();
                    let agree = zps.iter().all(|&z| z == zps[0]);
                    // The data exercise the case they are named for.
                    assert_eq!(agree, what.starts_with("agreeing"), "{zps:?}");
                    if agree {
                        for i in 0..4 {
                            let r = &x[i * per..(i + 1) * per];
                            let (_, z, s) = quantize_row_u8(r, &mut vec![0; per]).unwrap();
                            params.push((s, z));
                        }
                    } else {
                        let (_, z, s) = quantize_row_u8(&x, &mut want).unwrap();
                        params = vec![(s, z); 4];
                    }
                    assert_eq!(ws.q, want, "{isa:?} {what}");
                    let got: Vec<(f32, i32)> =
                        (0..4).map(|i| (ws.img_scale[i], ws.img_zp[i])).collect();
                    assert_eq!(got, params, "{isa:?} {what}");
                }
            }
        });
        let mut x: Vec<f32> = (0..3).flat_map(|i| image(i, -0.5)).collect();
        x[2 * per + 7] = f32::NAN;
        let mut ws = Workspace {
            q: vec![0; x.len()],
            img_scale: vec![0.0; 3],
            img_zp: vec![0; 3],
            ..Default::default()
        };
        let e = quantize_batch_one_zero_point(&TEST, &mut ws, &x, 3).unwrap_err();
        assert!(e.to_string().contains("row 2, column 7"), "{e}");
    }

    fn depthwise_op(c: usize, stride: usize, post: Option<Unary>, relu: bool, bias: bool) -> Op {
        Op::Depthwise {
            weight: (0..9 * c).map(|i| ((i * 7) % 23) as i8 - 11).collect(),
            kernel: (3, 3),
            scale: (0..c).map(|j| 0.01 + j as f32 * 1e-3).collect(),
            bias: bias.then(|| (0..c).map(|j| j as f32 * 0.07 - 0.3).collect()),
            relu,
            post,
            stride: (stride, stride),
            padding: [1, 1, 1, 1],
            dilation: (1, 1),
            nchw_in: false,
            act: Some(StaticAct {
                scale: 0.04,
                zero_point: 9,
            }),
        }
    }

    /// Static depthwise nodes (ReLU6, ReLU, nothing fused; with and without
    /// a bias; stride 1 and 2) feeding static convs write uint8 on the conv's
    /// grid: the plan gives the bytes of each node run alone (float edges).
    #[test]
    fn a_static_depthwise_writes_the_bytes_of_its_readers_quantizer() {
        let c = 13;
        for (post, relu, bias, stride) in [
            (Some(Unary::Clip(Some(0.0), Some(6.0))), false, true, 1),
            (None, true, false, 2),
            (None, false, true, 1),
            (Some(Unary::Relu), false, false, 2),
        ] {
            let nodes = vec![
                node(depthwise_op(c, stride, post, relu, bias), &[0], 1),
                node(
                    Op::Conv {
                        gemm: gemm(5, c, 7, false, None, (0.03, 4)),
                        kernel: (1, 1),
                        stride: (1, 1),
                        padding: (0, 0),
                        nchw_in: false,
                    },
                    &[1],
                    2,
                ),
            ];
            let dims_in = vec![7, 6, c];
            let plan =
                GraphPlan::new(nodes.clone(), vec![0], vec![dims_in.clone()], vec![2]).unwrap();
            assert!(
                matches!(plan.dtype(1), Some(DType::U8(_))),
                "{:?}",
                plan.dtypes
            );
            let mid = plan.dims[1].clone();
            for batch in [1, 3] {
                let x: Vec<f32> = (0..batch * 7 * 6 * c)
                    .map(|i| ((i * 37 % 53) as f32 - 20.0) * 0.05)
                    .collect();
                each_isa(|isa| {
                    let alone = |op: &Op, d: &[usize], x: &[f32], out: usize| {
                        let p = GraphPlan::new(
                            vec![node(op.clone(), &[0], 1)],
                            vec![0],
                            vec![d.to_vec()],
                            vec![1],
                        )
                        .unwrap();
                        let mut y = vec![0f32; batch * out];
                        p.forward(&TEST, batch, &[x], &mut [&mut y]).unwrap();
                        y
                    };
                    let h = alone(&nodes[0].op, &dims_in, &x, elems(&mid).unwrap());
                    let want = alone(&nodes[1].op, &mid, &h, elems(&plan.dims[2]).unwrap());
                    let mut y = vec![0f32; want.len()];
                    plan.forward(&TEST, batch, &[&x], &mut [&mut y]).unwrap();
                    assert_eq!(
                        y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{isa:?} batch {batch} post {post:?}"
                    );
                    assert!(want.iter().any(|&v| v != want[0]), "a result that varies");
                });
            }
        }
    }
}
