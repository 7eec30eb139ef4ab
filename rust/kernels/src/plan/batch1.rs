//! The batch-1 path of dense nodes: a layer whose input is one row (a batch
//! of one 1-D sample) runs the GEMM's one-row product ([`gemm::row1`]) on
//! the row quantized into the workspace, instead of the blocked driver.
//!
//! At batch 1 a small layer is mostly fixed cost: the digits MLP 64-32-16-10
//! spent ~17% of its instructions in the micro-kernel and output step
//! (callgrind, AVX2); the rest was the driver's checks, packing, reused
//! buffers and block loops. What does not depend on the call is decided when
//! the plan is built ([`Row1::new`]: the overflow bound, whether A's row sums
//! are needed); a call quantizes the row (the same quantizer as the driver's
//! path), runs the tiles and the same output step. The results are the
//! driver's bits (the accumulators are exact; each output element takes
//! the same step), so a model's predictions do not depend on the batch.
//!
//! A product big enough for the thread team (see [`gemm::parallel`]) keeps
//! the driver, which splits its columns over the threads.
//!
//! Tiny convolutions have a batch-1 form too ([`conv1`]): the whole
//! unfolded image as A, multiplied without the driver.

use super::*;
use crate::gemm::output::{Epilogue, Fused};
use crate::gemm::row1::{row1, Row1};

use super::conv1::{self, Conv1};

/// A node's batch-1 form: a dense layer's one-row product, or a tiny
/// convolution's product over its whole unfolded image.
#[derive(Debug)]
pub(super) enum One {
    Dense(Dense1),
    Conv(Conv1),
}

impl One {
    /// Bytes of the workspace's row it needs.
    pub(super) fn bytes(&self) -> usize {
        match self {
            One::Dense(d) => d.r.kp(),
            One::Conv(c) => c.bytes(),
        }
    }
}

/// A dense node's batch-1 form, everything but the row decided at build:
/// the one-row product, where its input and output live, and its output
/// step prepared (for a static layer whole; a dynamic one takes its row
/// scale per call). Preparing the step per call cost ~260 instructions a
/// layer (callgrind, AVX2), as much as the tiles of a 16-column layer.
#[derive(Debug)]
pub(super) struct Dense1 {
    r: Row1,
    input: ValueId,
    /// `n · (k + OUTPUT_MACS)`: the product's weight for the thread decision.
    work: usize,
    step: Step1,
}

#[derive(Debug)]
enum Step1 {
    F32(Epilogue<'static, f32>),
    U8(Epilogue<'static, u8>),
}

/// The batch-1 form of every node that can take one (`None` for other
/// nodes): a dense node with one row per sample (the input's per-sample
/// elements are K), an output the plan writes, input and output types the
/// path handles; a tiny convolution ([`conv1::prepare`]).
pub(super) fn prepare(
    nodes: &[Node],
    dims: &[Vec<usize>],
    dtypes: &[DType],
    storage: &[Storage],
) -> Vec<Option<One>> {
    nodes
        .iter()
        .map(|node| {
            let g = match &node.op {
                Op::Dense(g) => g,
                Op::Conv { .. } | Op::ConvAdd { .. } => {
                    return conv1::prepare(node, dims, dtypes, storage).map(One::Conv)
                }
                _ => return None,
            };
            let (k, n, v) = (g.packed.k(), g.packed.n(), node.inputs[0]);
            if dims[v].iter().product::<usize>() != k
                || matches!(storage[node.output], Storage::Input(_))
                || (g.act.is_none()
                    && (dtypes[v] != DType::F32 || dtypes[node.output] != DType::F32))
            {
                return None;
            }
            // A static layer's row scale is its input grid's; a dynamic one's
            // comes per call ([`Epilogue::with_row_scale`]).
            let row_scale = Param::Scalar(g.act.map_or(1.0, |a| a.scale));
            let step = match dtypes[node.output] {
                DType::F32 => Step1::F32(
                    OutputStep::Float {
                        row_scale,
                        col_scale: g.col_scale(),
                        bias: g.bias.as_deref(),
                        relu: g.relu,
                    }
                    .prepare_checked(1, n)
                    .ok()?
                    .into_owned()?,
                ),
                DType::U8(grid) => Step1::U8(
                    OutputStep::Fused(Fused {
                        row_scale,
                        col_scale: g.col_scale(),
                        bias: g.bias.as_deref(),
                        residual: None,
                        relu: g.relu,
                        requant: Some(int8_ops::requant_of(grid, g.post).ok()?),
                    })
                    .prepare_checked(1, n)
                    .ok()?
                    .into_owned()?,
                ),
            };
            Some(One::Dense(Dense1 {
                r: Row1::new(&g.packed)?,
                input: v,
                work: n.saturating_mul(k + gemm::OUTPUT_MACS),
                step,
            }))
        })
        .collect()
}

/// Runs node `i` on its batch-1 form when it has one, the batch is one
/// sample and the product stays on one thread; `None` when the
/// driver's path is to run it (also when the one-row path declines a case
/// after quantizing: the driver then quantizes again, to the same bytes).
#[allow(clippy::too_many_arguments)]
#[inline]
pub(super) fn run_node(
    plan: &GraphPlan,
    ctx: &Ctx,
    ws: &mut Workspace,
    batch: usize,
    i: usize,
    node: &Node,
    inputs: &[&[f32]],
    outputs: &mut [&mut [f32]],
) -> Option<Result<()>> {
    if batch != 1 {
        return None;
    }
    let d = match plan.row1.get(i)?.as_ref()? {
        One::Dense(d) => d,
        One::Conv(c) => return conv1::run(c, plan, ctx, ws, node, inputs, outputs),
    };
    let Op::Dense(g) = &node.op else { return None };
    if gemm::parallel(ctx, d.work) {
        return None;
    }
    let (k, v) = (g.packed.k(), d.input);
    let p0: *const f32 = match plan.storage[v] {
        Storage::Input(j) => inputs[j].as_ptr(),
        Storage::Output(j) => outputs[j].as_ptr(),
        Storage::Buffer(b) => ws.bufs[b].as_ptr(),
    };
    let out: *mut f32 = match plan.storage[node.output] {
        Storage::Output(j) => outputs[j].as_mut_ptr(),
        Storage::Buffer(b) => ws.bufs[b].as_mut_ptr(),
        Storage::Input(_) => return None,
    };
    let kp = d.r.kp();
    let row = &mut ws.row[..kp];
    // SAFETY (the slices from `p0` and `out`): as in `GraphPlan::run_node`,
    // live storages of at least `len_of` elements (a uint8 value's buffer
    // holds as many f32, so its bytes too), the output's distinct from the
    // input's and from the workspace's row.
    let (a, za, row_scale): (&[u8], i32, f32) = match (plan.dtypes[v], g.act) {
        (DType::F32, None) => {
            let x = unsafe { std::slice::from_raw_parts(p0, k) };
            // NaN or infinity: the driver's path names the error.
            let (_, zp, scale) = quantize_row_u8(x, row)?;
            (&*row, zp, scale)
        }
        (DType::F32, Some(act)) => {
            let x = unsafe { std::slice::from_raw_parts(p0, k) };
            if let Err(e) = quantize_fixed_u8(ctx, x, act.scale, act.zero_point, &mut row[..k]) {
                return Some(Err(e));
            }
            row[k..].fill(0);
            (&*row, act.zero_point, act.scale)
        }
        (DType::U8(_), Some(act)) => {
            let x = unsafe { std::slice::from_raw_parts(p0.cast::<u8>(), k) };
            if k == kp {
                (x, act.zero_point, act.scale)
            } else {
                row[..k].copy_from_slice(x);
                row[k..].fill(0);
                (&*row, act.zero_point, act.scale)
            }
        }
        (DType::U8(_), None) => return None,
    };
    let n = g.packed.n();
    let done = match &d.step {
        Step1::F32(ep) => {
            let y = unsafe { std::slice::from_raw_parts_mut(out, n) };
            let done = match g.act {
                Some(_) => row1(&d.r, a, za, ep, y),
                None => row1(&d.r, a, za, &ep.with_row_scale(row_scale)?, y),
            };
            if let (true, Some(f)) = (done, g.post) {
                f.run(y);
            }
            done
        }
        // Only static layers write uint8 (the rewrite "int8 between layers").
        Step1::U8(ep) => row1(&d.r, a, za, ep, unsafe {
            std::slice::from_raw_parts_mut(out.cast::<u8>(), n)
        }),
    };
    done.then_some(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{gemm_of, node};
    use super::*;
    use crate::cpu::each_isa;
    use crate::exec::TEST;

    fn stat(g: Gemm, scale: f32, zero_point: i32, post: Option<Unary>) -> Op {
        Op::Dense(Gemm {
            act: Some(StaticAct { scale, zero_point }),
            post,
            ..g
        })
    }

    /// Dynamic and static dense layers of every kind the one-row path takes:
    /// K not a multiple of 4, N past one column block, uint8 weights with a
    /// zero point, a scalar scale without bias, element-wise steps after;
    /// the static chain has uint8 edges between its layers.
    fn chains() -> Vec<(Vec<Node>, usize)> {
        let u8w: Vec<u8> = (0..33 * 64).map(|i| (i * 37 % 251) as u8).collect();
        let uint8_b = Gemm {
            packed: Arc::new(
                PackedB::from_nk_u8(&TEST, &u8w, 33, 64, ZeroPoint::Scalar(120)).unwrap(),
            ),
            ..gemm_of(33, 64, 0, true)
        };
        let scalar = Gemm {
            scale: vec![0.02],
            bias: None,
            ..gemm_of(10, 300, 5, false)
        };
        let dynamic = vec![
            node(Op::Dense(uint8_b.clone()), &[0], 1),
            node(
                Op::Dense(Gemm {
                    post: Some(Unary::HardSwish),
                    ..gemm_of(300, 33, 2, false)
                }),
                &[1],
                2,
            ),
            node(Op::Dense(scalar.clone()), &[2], 3),
        ];
        let statics = vec![
            node(stat(uint8_b, 0.05, 100, None), &[0], 1),
            node(
                stat(gemm_of(45, 33, 3, false), 0.04, 3, Some(Unary::Relu)),
                &[1],
                2,
            ),
            node(
                stat(
                    gemm_of(300, 45, 4, false),
                    0.03,
                    0,
                    Some(Unary::Clip(Some(0.0), Some(6.0))),
                ),
                &[2],
                3,
            ),
            node(stat(scalar, 0.1, 7, None), &[3], 4),
        ];
        vec![(dynamic, 64), (statics, 64)]
    }

    fn plan(nodes: &[Node], k: usize, batch1: bool) -> GraphPlan {
        let last = nodes.last().unwrap().output;
        let mut p = GraphPlan::new(nodes.to_vec(), vec![0], vec![vec![k]], vec![last]).unwrap();
        if !batch1 {
            p.row1.iter_mut().for_each(|r| *r = None);
        }
        p
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Every dense node alone takes the batch-1 path and gives the driver's
    /// bits; so does each whole chain (uint8 edges included), on every ISA.
    #[test]
    fn each_dense_node_gives_the_drivers_bits_at_batch_1_on_every_isa() {
        each_isa(|isa| {
            for (nodes, k) in chains() {
                let x: Vec<f32> = (0..k)
                    .map(|i| ((i * 29 % 41) as f32 - 17.0) * 0.11)
                    .collect();
                for n in &nodes {
                    let alone = [node(n.op.clone(), &[0], 1)];
                    let Op::Dense(g) = &n.op else { unreachable!() };
                    let (kin, nout) = (g.packed.k(), g.packed.n());
                    let xin: Vec<f32> = (0..kin)
                        .map(|i| ((i * 13 % 23) as f32 - 9.0) * 0.07)
                        .collect();
                    let (fast, slow) = (plan(&alone, kin, true), plan(&alone, kin, false));
                    let mut ws = Workspace::default();
                    fast.prepare(&mut ws, 1).unwrap();
                    let mut y = vec![f32::NAN; nout];
                    let r = run_node(
                        &fast,
                        &TEST,
                        &mut ws,
                        1,
                        0,
                        &fast.nodes[0],
                        &[&xin],
                        &mut [&mut y],
                    );
                    assert!(
                        matches!(r, Some(Ok(()))),
                        "{isa:?}: the node did not take the batch-1 path"
                    );
                    let mut want = vec![0f32; nout];
                    slow.forward(&TEST, 1, &[&xin], &mut [&mut want]).unwrap();
                    assert_eq!(bits(&y), bits(&want), "{isa:?} {:?}", n.op);
                }
                let (fast, slow) = (plan(&nodes, k, true), plan(&nodes, k, false));
                let nout = fast.output_dims()[0][0];
                let (mut y, mut want) = (vec![0f32; nout], vec![0f32; nout]);
                fast.forward(&TEST, 1, &[&x], &mut [&mut y]).unwrap();
                slow.forward(&TEST, 1, &[&x], &mut [&mut want]).unwrap();
                assert_eq!(bits(&y), bits(&want), "{isa:?} chain");
                // A batch of two goes through the driver: its first row is the same.
                let x2: Vec<f32> = x.iter().chain(&x).copied().collect();
                let mut y2 = vec![0f32; 2 * nout];
                fast.forward(&TEST, 2, &[&x2], &mut [&mut y2]).unwrap();
                assert_eq!(bits(&y2[..nout]), bits(&want), "{isa:?} batch 2");
            }
        });
    }

    /// A sample of several rows (a dense node over `(3, k)` per sample) has
    /// no batch-1 form: its one sample is three rows for the driver, and the
    /// plan gives the driver's bits for it and for a batch of one row after.
    #[test]
    fn a_sample_of_several_rows_keeps_the_driver() {
        each_isa(|isa| {
            let (k, n) = (20, 17);
            let nodes = vec![
                node(Op::Dense(gemm_of(n, k, 1, true)), &[0], 1),
                node(Op::Dense(gemm_of(5, n, 2, false)), &[1], 2),
            ];
            let p = GraphPlan::new(nodes.clone(), vec![0], vec![vec![3, k]], vec![2]).unwrap();
            assert!(p.row1.iter().all(|r| r.is_none()), "{isa:?}");
            let x: Vec<f32> = (0..3 * k).map(|i| (i % 7) as f32 * 0.3 - 0.8).collect();
            let mut y = vec![0f32; 15];
            p.forward(&TEST, 1, &[&x], &mut [&mut y]).unwrap();
            let rows = plan(&nodes, k, true);
            assert!(rows.row1.iter().all(|r| r.is_some()));
            let mut want = vec![0f32; 15];
            rows.forward(&TEST, 3, &[&x], &mut [&mut want]).unwrap();
            assert_eq!(bits(&y), bits(&want), "{isa:?}");
            let mut y1 = vec![0f32; 5];
            rows.forward(&TEST, 1, &[&x[k..2 * k]], &mut [&mut y1])
                .unwrap();
            assert_eq!(bits(&y1), bits(&want[5..10]), "{isa:?} one row");
        });
    }

    /// The static chain really has uint8 edges, and a non-finite input gives
    /// the driver's error on the batch-1 path too.
    #[test]
    fn uint8_edges_and_errors_at_batch_1() {
        let (nodes, k) = chains().pop().unwrap();
        let p = plan(&nodes, k, true);
        assert!(
            (1..4).all(|v| p.dtype(v) != Some(DType::F32)),
            "{:?}",
            p.dtypes
        );
        assert!(p.row1.iter().all(|r| r.is_some()));
        let (dynamic, k) = chains().swap_remove(0);
        let mut x = vec![0.5f32; k];
        x[3] = f32::NAN;
        let mut y = vec![0f32; 10];
        for p in [plan(&dynamic, k, true), plan(&dynamic, k, false)] {
            let e = p.forward(&TEST, 1, &[&x], &mut [&mut y]).unwrap_err();
            assert!(e.to_string().contains("finite"), "{e}");
        }
    }
}
