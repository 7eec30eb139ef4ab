//! The batch-1 path of tiny convolutions: a conv node whose whole unfolded
//! image fits L1 (at most [`MAX_ROWS`] output pixels, [`MAX_A_BYTES`] of
//! unfold) runs on one image, single thread, without the GEMM driver.
//!
//! At batch 1 the driver's conv cost ~0.3 µs fixed plus ~10 ns per output
//! pixel nearly independent of the channels (the digits ResNet's 8×8 convs:
//! 1→1 channels 0.97 µs, 8→8 1.22 µs), so shrinking channels removed almost
//! no time: the per-row unfold (~0.6 µs per 64 pixels) and the driver's
//! per-call setup (~0.66 µs on an unfolded A) dominated. Here what depends
//! only on the geometry is decided when the plan is built ([`Conv1`]): the
//! unfold is a list of byte runs (an image's kernel-row run of `kw·c`
//! bytes, or a piece of one at a border, or padding, or the row's tail)
//! copied from the quantized image, a block of its zero point and a block
//! of zeros, all in the workspace; the product is [`gemm::tiny`]'s tiles
//! over that A, and the output step is prepared once (a dynamic layer swaps
//! its image's scale in per call; a fused residual add is prepared per
//! call, its residual being the call's). The rows are the driver's bytes
//! (padding taps hold the zero point, the tail zeros), so the results are
//! its bits and a model's predictions do not depend on the path.

use super::int8_ops::{requant_of, residual_on_grid, static_step, In};
use super::*;
use crate::gemm::output::{Epilogue, Residual};
use crate::gemm::tiny::{tiny, Tiny};

/// Most output pixels (rows of A) a conv of this path has.
const MAX_ROWS: usize = 256;
/// Most bytes of its unfolded A (the image beside it, and both in L1).
const MAX_A_BYTES: usize = 32 << 10;

/// One run of an unfolded row: `len` bytes to `dst` in A from `src` in the
/// source (the quantized image, then the padding block, then the zeros).
#[derive(Debug, Clone, Copy)]
struct Run {
    dst: u32,
    src: u32,
    len: u32,
}

/// A conv node's batch-1 form (see the module docs).
#[derive(Debug)]
pub(super) struct Conv1 {
    t: Tiny,
    input: ValueId,
    /// Output pixels (rows of A) and the bytes of one row.
    m: usize,
    kp: usize,
    /// Bytes of the image, then of its padding block and its zero block
    /// (as long as the longest run of each).
    img: usize,
    pad_len: usize,
    zero_len: usize,
    runs: Vec<Run>,
    /// `m · n · (k + OUTPUT_MACS)`: the product's weight for the thread decision.
    work: usize,
    step: Step,
}

#[derive(Debug)]
enum Step {
    F32(Epilogue<'static, f32>),
    U8(Epilogue<'static, u8>),
    /// A fused residual add: prepared per call (its residual is the call's).
    Add,
}

impl Conv1 {
    /// Workspace bytes it needs: A, then the source (image, padding, zeros).
    pub(super) fn bytes(&self) -> usize {
        self.m * self.kp + self.img + self.pad_len + self.zero_len
    }
}

/// The unfold's runs for the geometry `win` (one image) into rows of `kp`
/// bytes: per output pixel and kernel row, the taps inside the image as one
/// run of the image row, the taps in the padding as runs of the padding
/// block, the row's tail from the zero block; neighbouring runs of one kind
/// merged. Returns the runs and the longest padding and zero run.
fn unfold_runs(win: &Window, kp: usize) -> (Vec<Run>, usize, usize) {
    #[derive(PartialEq, Clone, Copy)]
    enum Kind {
        Img,
        Pad,
        Zero,
    }
    let c = win.c;
    let img = win.h * win.w * c;
    let taps = win.kh * win.kw * c;
    let mut runs: Vec<(Kind, usize, usize, usize)> = Vec::new();
    let mut push = |kind: Kind, dst: usize, src: usize, len: usize| {
        if len == 0 {
            return;
        }
        if let Some(last) = runs.last_mut() {
            let contiguous =
                last.1 + last.3 == dst && (kind != Kind::Img || last.2 + last.3 == src);
            if last.0 == kind && contiguous {
                last.3 += len;
                return;
            }
        }
        runs.push((kind, dst, src, len));
    };
    for oy in 0..win.oh() {
        for ox in 0..win.ow() {
            let row = (oy * win.ow() + ox) * kp;
            for ky in 0..win.kh {
                for kx in 0..win.kw {
                    let dst = row + (ky * win.kw + kx) * c;
                    let iy = Window::src(oy, ky, win.sh, win.ph, win.h);
                    let ix = Window::src(ox, kx, win.sw, win.pw, win.w);
                    match (iy, ix) {
                        (Some(iy), Some(ix)) => push(Kind::Img, dst, (iy * win.w + ix) * c, c),
                        _ => push(Kind::Pad, dst, 0, c),
                    }
                }
            }
            push(Kind::Zero, row + taps, 0, kp - taps);
        }
    }
    let longest = |k: Kind| {
        runs.iter()
            .filter(|r| r.0 == k)
            .map(|r| r.3)
            .max()
            .unwrap_or(0)
    };
    let (pad_len, zero_len) = (longest(Kind::Pad), longest(Kind::Zero));
    let runs = runs
        .into_iter()
        .map(|(kind, dst, src, len)| Run {
            dst: dst as u32,
            src: match kind {
                Kind::Img => src,
                Kind::Pad => img,
                Kind::Zero => img + pad_len,
            } as u32,
            len: len as u32,
        })
        .collect();
    (runs, pad_len, zero_len)
}

/// The batch-1 form of a conv node, when it is tiny (see the module docs),
/// reads NHWC (or one channel), writes an output the plan holds, and its
/// input and output types are ones the path handles.
pub(super) fn prepare(
    node: &Node,
    dims: &[Vec<usize>],
    dtypes: &[DType],
    storage: &[Storage],
) -> Option<Conv1> {
    let (g, kernel, stride, padding, nchw_in, add) = match &node.op {
        Op::Conv {
            gemm,
            kernel,
            stride,
            padding,
            nchw_in,
        } => (gemm, kernel, stride, padding, nchw_in, false),
        Op::ConvAdd {
            gemm,
            kernel,
            stride,
            padding,
            nchw_in,
            ..
        } => (gemm, kernel, stride, padding, nchw_in, true),
        _ => return None,
    };
    let v = node.inputs[0];
    let (c, h, w) = image(&dims[v], *nchw_in, "conv").ok()?;
    if (*nchw_in && c > 1)
        || matches!(storage[node.output], Storage::Input(_))
        || (g.act.is_none() && dtypes[node.output] != DType::F32)
    {
        return None;
    }
    let win = Window::new(1, c, h, w, *kernel, *stride, *padding)
        .check()
        .ok()?;
    let t = Tiny::new(&g.packed)?;
    let (m, kp, n) = (win.oh() * win.ow(), t.kp(), t.n());
    let taps = c * kernel.0 * kernel.1;
    if m > MAX_ROWS || m * kp > MAX_A_BYTES || kp < taps || kp - taps >= 4 {
        return None;
    }
    let step = match (add, g.act, dtypes[node.output]) {
        (true, _, _) => Step::Add,
        (false, None, _) => Step::F32(
            OutputStep::Float {
                // The image's scale comes per call ([`Epilogue::with_row_scale`]).
                row_scale: Param::Scalar(1.0),
                col_scale: g.col_scale(),
                bias: g.bias.as_deref(),
                relu: g.relu,
            }
            .prepare_checked(m, n)
            .ok()?
            .into_owned()?,
        ),
        (false, Some(a), dt) => {
            let fused = |requant| static_step(g, a, None, requant);
            match dt {
                DType::F32 => Step::F32(fused(None).prepare_checked(m, n).ok()?.into_owned()?),
                DType::U8(grid) => Step::U8(
                    fused(Some(requant_of(grid, g.post).ok()?))
                        .prepare_checked(m, n)
                        .ok()?
                        .into_owned()?,
                ),
            }
        }
    };
    let (runs, pad_len, zero_len) = unfold_runs(&win, kp);
    Some(Conv1 {
        t,
        input: v,
        m,
        kp,
        img: win.in_len(),
        pad_len,
        zero_len,
        runs,
        work: m
            .saturating_mul(n)
            .saturating_mul(g.packed.k() + gemm::OUTPUT_MACS),
        step,
    })
}

/// Runs conv node `node` on its batch-1 form `d` (batch 1, checked by the
/// caller); `None` when the driver's path is to run it (the product wants
/// the thread team, the image is not finite: the driver names the error).
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    d: &Conv1,
    plan: &GraphPlan,
    ctx: &Ctx,
    ws: &mut Workspace,
    node: &Node,
    inputs: &[&[f32]],
    outputs: &mut [&mut [f32]],
) -> Option<Result<()>> {
    let (g, res_act) = match &node.op {
        Op::Conv { gemm, .. } => (gemm, None),
        Op::ConvAdd { gemm, res_act, .. } => (gemm, *res_act),
        _ => return None,
    };
    if gemm::parallel(ctx, d.work) {
        return None;
    }
    let out: *mut f32 = match plan.storage[node.output] {
        Storage::Output(j) => outputs[j].as_mut_ptr(),
        Storage::Buffer(b) => ws.bufs[b].as_mut_ptr(),
        Storage::Input(_) => return None,
    };
    let src = |ws: &Workspace, v: ValueId| -> *const f32 {
        match plan.storage[v] {
            Storage::Input(j) => inputs[j].as_ptr(),
            Storage::Output(j) => outputs[j].as_ptr(),
            Storage::Buffer(b) => ws.bufs[b].as_ptr(),
        }
    };
    let p0 = src(ws, d.input);
    let n = d.t.n();
    let out_len = d.m * n;
    // The residual of a fused add: float, or its float terms on its grid.
    let residual: Option<Residual<'_>> = match node.inputs.get(1) {
        Some(&v) => {
            let p = src(ws, v);
            // SAFETY: as for `x` below (the residual has the output's dims).
            match (plan.dtypes[v], res_act) {
                (DType::F32, None) => Some(Residual::F32(unsafe {
                    std::slice::from_raw_parts(p, out_len)
                })),
                (dt, Some(a)) => {
                    let r = match dt {
                        DType::U8(_) => {
                            In::U8(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), out_len) })
                        }
                        DType::F32 => In::F32(unsafe { std::slice::from_raw_parts(p, out_len) }),
                    };
                    // SAFETY: `ws.res` is not touched again before the product has read it.
                    match unsafe { residual_on_grid(ctx, r, a, &mut ws.res) } {
                        Ok(r) => Some(r),
                        Err(e) => return Some(Err(e)),
                    }
                }
                (DType::U8(_), None) => return None,
            }
        }
        None => None,
    };
    let (a_len, img) = (d.m * d.kp, d.img);
    let (a, source) = ws.row[..d.bytes()].split_at_mut(a_len);
    let (x_q, blocks) = source.split_at_mut(img);
    // SAFETY (the slices from `p0` and `out`): as in `GraphPlan::run_node`,
    // live storages of at least `len_of` elements (a uint8 value's buffer
    // holds as many f32, so its bytes too), the output's distinct from the
    // input's and from the workspace's.
    let (za, row_scale) = match (plan.dtypes[d.input], g.act) {
        (DType::F32, None) => {
            let x = unsafe { std::slice::from_raw_parts(p0, img) };
            // NaN or infinity: the driver's path names the error.
            let (_, zp, scale) = quantize_row_u8(x, x_q)?;
            (zp, scale)
        }
        (DType::F32, Some(act)) => {
            let x = unsafe { std::slice::from_raw_parts(p0, img) };
            if let Err(e) = quantize_fixed_u8(ctx, x, act.scale, act.zero_point, x_q) {
                return Some(Err(e));
            }
            (act.zero_point, act.scale)
        }
        (DType::U8(_), Some(act)) => {
            x_q.copy_from_slice(unsafe { std::slice::from_raw_parts(p0.cast::<u8>(), img) });
            (act.zero_point, act.scale)
        }
        (DType::U8(_), None) => return None,
    };
    let (pad, zeros) = blocks.split_at_mut(d.pad_len);
    pad.fill(za as u8);
    zeros.fill(0);
    let (dst, srcb) = (a.as_mut_ptr(), source.as_ptr());
    for r in &d.runs {
        // SAFETY: the runs were made for these sizes (`unfold_runs`): each
        // lies inside A and inside the source, and the two do not overlap.
        unsafe {
            nhwc::copy_run(
                std::slice::from_raw_parts_mut(dst.add(r.dst as usize), r.len as usize),
                std::slice::from_raw_parts(srcb.add(r.src as usize), r.len as usize),
            )
        };
    }
    let a = &*a;
    let done = match &d.step {
        Step::F32(ep) => {
            let y = unsafe { std::slice::from_raw_parts_mut(out, out_len) };
            let done = match g.act {
                Some(_) => tiny(&d.t, a, d.m, za, ep, y),
                None => tiny(&d.t, a, d.m, za, &ep.with_row_scale(row_scale)?, y),
            };
            if let (true, Some(f)) = (done, g.post) {
                f.run(y);
            }
            done
        }
        // Only static layers write uint8 (the rewrite "int8 between layers").
        Step::U8(ep) => tiny(&d.t, a, d.m, za, ep, unsafe {
            std::slice::from_raw_parts_mut(out.cast::<u8>(), out_len)
        }),
        Step::Add => {
            let act = g.act?;
            let fused = |requant| static_step(g, act, residual, requant);
            match plan.dtypes[node.output] {
                DType::F32 => {
                    let y = unsafe { std::slice::from_raw_parts_mut(out, out_len) };
                    let ep = match fused(None).prepare_checked(d.m, n) {
                        Ok(ep) => ep,
                        Err(e) => return Some(Err(e)),
                    };
                    let done = tiny(&d.t, a, d.m, za, &ep, y);
                    if let (true, Some(f)) = (done, g.post) {
                        f.run(y);
                    }
                    done
                }
                DType::U8(grid) => {
                    let step = match requant_of(grid, g.post) {
                        Ok(rq) => fused(Some(rq)),
                        Err(e) => return Some(Err(e)),
                    };
                    let ep = match step.prepare_checked(d.m, n) {
                        Ok(ep) => ep,
                        Err(e) => return Some(Err(e)),
                    };
                    tiny(&d.t, a, d.m, za, &ep, unsafe {
                        std::slice::from_raw_parts_mut(out.cast::<u8>(), out_len)
                    })
                }
            }
        }
    };
    done.then_some(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{gemm_of, node};
    use super::*;
    use crate::cpu::each_isa;
    use crate::exec::TEST;

    /// Input `(c, h, w)`, kernel, stride, padding, output channels, NCHW in:
    /// channels that are no multiple of 4 (rows of A with a tail), strides
    /// 1 and 2, padding on some sides only, kernels 1, 2, 3 and 5, more
    /// column blocks than one tile (70 outputs), one channel NCHW (the
    /// first conv of the digits ResNet) and a 1×1 stride-2 downsample.
    type Case = (
        (usize, usize, usize),
        (usize, usize),
        (usize, usize),
        (usize, usize),
        usize,
        bool,
    );
    const CASES: [Case; 9] = [
        ((1, 8, 8), (3, 3), (1, 1), (1, 1), 8, true),
        ((8, 8, 8), (3, 3), (1, 1), (1, 1), 8, false),
        ((8, 8, 8), (3, 3), (2, 2), (1, 1), 16, false),
        ((8, 8, 8), (1, 1), (2, 2), (0, 0), 16, false),
        ((5, 7, 6), (3, 3), (2, 1), (0, 1), 19, false),
        ((3, 4, 5), (1, 1), (1, 1), (0, 0), 5, false),
        ((5, 6, 6), (2, 2), (1, 2), (1, 0), 7, false),
        ((6, 5, 5), (5, 5), (1, 1), (2, 2), 70, false),
        ((16, 4, 4), (3, 3), (1, 1), (1, 1), 16, false),
    ];

    fn act(scale: f32, zero_point: i32) -> Option<StaticAct> {
        Some(StaticAct { scale, zero_point })
    }

    fn conv(g: Gemm, case: &Case) -> Op {
        let (_, kernel, stride, padding, _, nchw_in) = *case;
        Op::Conv {
            gemm: g,
            kernel,
            stride,
            padding,
            nchw_in,
        }
    }

    /// A 3×3 same-size conv + add of `n` channels on `n` channels.
    fn conv_add(g: Gemm, res_act: Option<StaticAct>) -> Op {
        Op::ConvAdd {
            gemm: g,
            kernel: (3, 3),
            stride: (1, 1),
            padding: (1, 1),
            nchw_in: false,
            res_act,
        }
    }

    /// uint8 weights with a zero point (the row sums of A are needed).
    fn uint8_b(n: usize, k: usize, seed: usize) -> Gemm {
        let w: Vec<u8> = (0..n * k).map(|i| ((i + seed) * 37 % 251) as u8).collect();
        Gemm {
            packed: Arc::new(PackedB::from_nk_u8(&TEST, &w, n, k, ZeroPoint::Scalar(120)).unwrap()),
            ..gemm_of(n, k, 0, false)
        }
    }

    /// The plans of one case: a dynamic chain (ReLU; uint8 weights, then
    /// HardSwish) and a static one (uint8 out; a fused add of a residual on
    /// the same uint8 grid; a fused add of a float plan input, float out),
    /// as `(nodes, inputs, input dims, output)`.
    #[allow(clippy::type_complexity)]
    fn chains(case: &Case) -> Vec<(Vec<Node>, Vec<ValueId>, Vec<Vec<usize>>, ValueId)> {
        let ((c, h, w), kernel, _, _, n, nchw_in) = *case;
        let k = c * kernel.0 * kernel.1;
        let x_dims = if nchw_in {
            vec![c, h, w]
        } else {
            vec![h, w, c]
        };
        let win = Window::new(1, c, h, w, kernel, case.2, case.3);
        let y_dims = vec![win.oh(), win.ow(), n];
        let dynamic = vec![
            node(conv(gemm_of(n, k, 1, true), case), &[0], 1),
            node(
                conv_add_free(Gemm {
                    post: Some(Unary::HardSwish),
                    ..uint8_b(n, 9 * n, 3)
                }),
                &[1],
                2,
            ),
        ];
        let grid = act(0.03, 5);
        let statics = vec![
            node(
                conv(
                    Gemm {
                        act: act(0.05, 120),
                        ..gemm_of(n, k, 2, true)
                    },
                    case,
                ),
                &[0],
                1,
            ),
            node(
                conv_add(
                    Gemm {
                        act: grid,
                        relu: true,
                        ..uint8_b(n, 9 * n, 5)
                    },
                    grid,
                ),
                &[1, 1],
                2,
            ),
            node(
                conv_add(
                    Gemm {
                        act: act(0.04, 0),
                        ..gemm_of(n, 9 * n, 4, false)
                    },
                    None,
                ),
                &[2, 3],
                4,
            ),
        ];
        vec![
            (dynamic, vec![0], vec![x_dims.clone()], 2),
            (statics, vec![0, 3], vec![x_dims, y_dims], 4),
        ]
    }

    /// A dynamic 3×3 same-size conv (the dynamic chain's second node).
    fn conv_add_free(g: Gemm) -> Op {
        Op::Conv {
            gemm: g,
            kernel: (3, 3),
            stride: (1, 1),
            padding: (1, 1),
            nchw_in: false,
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Every conv node of every case takes the batch-1 form and the plan
    /// gives the driver's bits (the same plan with the forms removed), the
    /// static chains with their uint8 edges, on every ISA; a batch of two
    /// goes through the driver and its first image is the same.
    #[test]
    fn tiny_convs_give_the_drivers_bits_at_batch_1_on_every_isa() {
        each_isa(|isa| {
            for case in &CASES {
                for (ci, (nodes, ins, idims, out)) in chains(case).into_iter().enumerate() {
                    let fast = GraphPlan::new(nodes.clone(), ins.clone(), idims.clone(), vec![out])
                        .unwrap();
                    let mut slow = GraphPlan::new(nodes, ins, idims.clone(), vec![out]).unwrap();
                    assert!(
                        fast.row1
                            .iter()
                            .all(|r| matches!(r, Some(batch1::One::Conv(_)))),
                        "{isa:?} {case:?} chain {ci}: a conv without its batch-1 form"
                    );
                    if ci == 1 {
                        assert!(fast.dtype(1) != Some(DType::F32), "{:?}", fast.dtypes);
                        assert!(fast.dtype(2) != Some(DType::F32), "{:?}", fast.dtypes);
                    }
                    slow.row1.iter_mut().for_each(|r| *r = None);
                    let xs: Vec<Vec<f32>> = idims
                        .iter()
                        .enumerate()
                        .map(|(j, d)| {
                            (0..d.iter().product::<usize>())
                                .map(|i| (((i * 29 + j * 7) % 41) as f32 - 17.0) * 0.05)
                                .collect()
                        })
                        .collect();
                    let x1: Vec<&[f32]> = xs.iter().map(|v| v.as_slice()).collect();
                    let ny = elems(fast.output_dims()[0]).unwrap();
                    let (mut y, mut want) = (vec![f32::NAN; ny], vec![0f32; ny]);
                    fast.forward(&TEST, 1, &x1, &mut [&mut y]).unwrap();
                    slow.forward(&TEST, 1, &x1, &mut [&mut want]).unwrap();
                    assert_eq!(bits(&y), bits(&want), "{isa:?} {case:?} chain {ci}");
                    let x2: Vec<Vec<f32>> = xs.iter().map(|v| [&v[..], &v[..]].concat()).collect();
                    let x2: Vec<&[f32]> = x2.iter().map(|v| v.as_slice()).collect();
                    let mut y2 = vec![0f32; 2 * ny];
                    fast.forward(&TEST, 2, &x2, &mut [&mut y2]).unwrap();
                    assert_eq!(bits(&y2[..ny]), bits(&want), "{isa:?} {case:?} batch 2");
                }
            }
        });
    }

    /// Convs too big for the path, or NCHW with several channels (the
    /// driver transposes), keep the driver; a non-finite image gives the
    /// driver's error.
    #[test]
    fn big_or_nchw_convs_keep_the_driver_and_errors_are_the_drivers() {
        let case: Case = ((3, 8, 8), (3, 3), (1, 1), (1, 1), 4, true);
        let big: Case = ((8, 20, 20), (3, 3), (1, 1), (1, 1), 4, false);
        for c in [case, big] {
            let k = c.0 .0 * 9;
            let (h, w, ch) = (c.0 .1, c.0 .2, c.0 .0);
            let d = if c.5 { vec![ch, h, w] } else { vec![h, w, ch] };
            let p = GraphPlan::new(
                vec![node(conv(gemm_of(4, k, 1, false), &c), &[0], 1)],
                vec![0],
                vec![d],
                vec![1],
            )
            .unwrap();
            assert!(p.row1[0].is_none(), "{c:?}");
        }
        let (nodes, ins, idims, out) = chains(&CASES[1]).swap_remove(0);
        let p = GraphPlan::new(nodes, ins, idims, vec![out]).unwrap();
        let mut x = vec![0.5f32; 8 * 8 * 8];
        x[3] = f32::NAN;
        let mut y = vec![0f32; 8 * 8 * 8];
        let e = p.forward(&TEST, 1, &[&x], &mut [&mut y]).unwrap_err();
        assert!(e.to_string().contains("finite"), "{e}");
    }
}
