//! A planned graph allocates nothing per call once a batch size has run:
//! counted by a global allocator (this test binary's own), on one thread: only
//! the allocations of the thread that measures count, so the harness running
//! the other test beside it does not.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hwreg_kernels::conv::nhwc::Pool;
use hwreg_kernels::exec::Ctx;
use hwreg_kernels::gemm::{PackedB, ZeroPoint};
use hwreg_kernels::int4::{self, Int4Weight};
use hwreg_kernels::plan::{Gemm, GraphPlan, Int4Dense, Node, Op, SparseDense, Unary};
use hwreg_kernels::sparse::{Pattern, SparseWeight};

struct Counting;

static COUNT: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    // const-initialised: reading it never allocates, so the allocator may.
    static ON: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    ON.try_with(Cell::get).unwrap_or(false)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if counting() {
            COUNT.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(l.size(), Ordering::Relaxed);
        }
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if counting() {
            COUNT.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(n, Ordering::Relaxed);
        }
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static A: Counting = Counting;

fn gemm(n: usize, k: usize, seed: i32, bias: bool) -> Gemm {
    let w: Vec<i8> = (0..n * k)
        .map(|i| ((i as i32 * 5 + seed) % 21 - 10) as i8)
        .collect();
    Gemm {
        packed: Arc::new(
            PackedB::from_nk_i8(&Ctx::serial(), &w, n, k, ZeroPoint::Scalar(0)).unwrap(),
        ),
        scale: vec![0.02; n],
        bias: bias.then(|| vec![0.1; n]),
        relu: true,
        post: None,
        act: None,
    }
}

fn node(op: Op, inputs: &[usize], output: usize) -> Node {
    Node {
        op,
        inputs: inputs.to_vec(),
        output,
    }
}

/// `(allocations, bytes)` of one call of `plan` after a first call of the same batch.
fn second_call(plan: &GraphPlan, batch: usize) -> (usize, usize) {
    // The counters are global: one measurement at a time, or a test running
    // beside this one adds its allocations to ours.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let ctx = Ctx::serial();
    let n_in: usize = plan.input_dims()[0].iter().product();
    let x: Vec<f32> = (0..batch * n_in)
        .map(|i| ((i * 13) % 17) as f32 * 0.1 - 0.8)
        .collect();
    let mut y = vec![0f32; batch * plan.output_dims()[0].iter().product::<usize>()];
    plan.forward(&ctx, batch, &[&x], &mut [&mut y]).unwrap();
    let first = y.clone();
    COUNT.store(0, Ordering::Relaxed);
    BYTES.store(0, Ordering::Relaxed);
    ON.with(|on| on.set(true));
    plan.forward(&ctx, batch, &[&x], &mut [&mut y]).unwrap();
    ON.with(|on| on.set(false));
    assert_eq!(y, first);
    (COUNT.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed))
}

/// The executor itself allocates nothing per call: a plan of the ops it
/// computes on its own (layouts, pooling, adds, element-wise, affine, reshape).
#[test]
fn the_executor_allocates_nothing_per_call() {
    let (c, h, w) = (4, 8, 6);
    let nodes = vec![
        node(Op::ToNhwc, &[0], 1),
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
        node(Op::Unary(Unary::HardSwish), &[2], 3),
        node(Op::Add { relu: true }, &[3, 2], 4),
        node(
            Op::Affine {
                scale: vec![0.5; c],
                shift: vec![0.1; c],
                channels_last: true,
            },
            &[4],
            5,
        ),
        node(Op::ToNchw, &[5], 6),
        node(Op::Reshape(vec![c * 12]), &[6], 7),
        node(Op::Unary(Unary::Clip(Some(0.0), Some(6.0))), &[7], 8),
    ];
    let plan = GraphPlan::new(nodes, vec![0], vec![vec![c, h, w]], vec![8]).unwrap();
    for batch in [1, 4, 2] {
        assert_eq!(second_call(&plan, batch), (0, 0), "batch {batch}");
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

/// The int8 GEMM layers (convolutions, dense layers with and without a bias,
/// one scale or one per column, dynamic or static activations) allocate
/// nothing per call either: the plan's buffers and the GEMM's per-thread ones.
#[test]
fn int8_conv_and_dense_layers_allocate_nothing_per_call() {
    let (c, h, w, oc) = (3, 8, 8, 16);
    let mut one_scale = gemm(10, oc * 16, 2, false);
    one_scale.scale = vec![0.03];
    let mut stat = gemm(12, 10, 3, true);
    stat.act = Some(hwreg_kernels::plan::graph::StaticAct {
        scale: 0.05,
        zero_point: 7,
    });
    let nodes = vec![
        node(conv(gemm(oc, c * 9, 1, true), true), &[0], 1),
        node(conv(gemm(oc, oc * 9, 4, false), false), &[1], 2),
        node(Op::Add { relu: true }, &[2, 1], 3),
        node(
            Op::Pool {
                kind: Pool::Avg,
                kernel: (2, 2),
                stride: (2, 2),
                padding: (0, 0),
            },
            &[3],
            4,
        ),
        node(Op::ToNchw, &[4], 5),
        node(Op::Reshape(vec![oc * 16]), &[5], 6),
        node(Op::Dense(one_scale), &[6], 7),
        node(Op::Dense(stat), &[7], 8),
    ];
    let plan = GraphPlan::new(nodes, vec![0], vec![vec![c, h, w]], vec![8]).unwrap();
    for batch in [1usize, 4, 2] {
        assert_eq!(second_call(&plan, batch), (0, 0), "batch {batch}");
    }
}

fn depthwise(c: usize, stride: usize, bias: bool, act: Option<(f32, i32)>) -> Op {
    Op::Depthwise {
        weight: (0..9 * c).map(|i| (i % 7) as i8 - 3).collect(),
        kernel: (3, 3),
        scale: vec![0.05; c],
        bias: bias.then(|| vec![0.1; c]),
        relu: false,
        post: Some(Unary::Clip(Some(0.0), Some(6.0))),
        stride: (stride, stride),
        padding: [1, 1, 1, 1],
        dilation: (1, 1),
        nchw_in: false,
        act: act
            .map(|(scale, zero_point)| hwreg_kernels::plan::graph::StaticAct { scale, zero_point }),
    }
}

/// Depthwise layers allocate nothing per call: dynamic and static, with and
/// without a bias, stride 1 and 2, odd channel counts, and a static one
/// writing uint8 for a static conv (their per-thread band and weight buffers
/// and a static zero bias).
#[test]
fn depthwise_layers_allocate_nothing_per_call() {
    let c = 19;
    let stat = Some((0.05, 3));
    let mut conv_s = gemm(8, c * 9, 5, true);
    conv_s.act = Some(hwreg_kernels::plan::graph::StaticAct {
        scale: 0.03,
        zero_point: 0,
    });
    let nodes = vec![
        node(depthwise(c, 1, true, None), &[0], 1),
        node(depthwise(c, 2, false, None), &[1], 2),
        node(depthwise(c, 1, false, stat), &[2], 3),
        // Static with a static reader: uint8 out, on the conv's grid.
        node(depthwise(c, 1, true, stat), &[3], 4),
        node(conv(conv_s, false), &[4], 5),
    ];
    let plan = GraphPlan::new(nodes, vec![0], vec![vec![9, 8, c]], vec![5]).unwrap();
    assert_eq!(
        plan.dtype(4),
        Some(hwreg_kernels::plan::graph::DType::U8(
            hwreg_kernels::plan::graph::StaticAct {
                scale: 0.03,
                zero_point: 0
            }
        )),
        "the static depthwise writes uint8"
    );
    for batch in [1usize, 4, 2] {
        assert_eq!(second_call(&plan, batch), (0, 0), "batch {batch}");
    }
}

fn int4_layer(n: usize, k: usize, group: Option<usize>, seed: usize) -> Arc<Int4Weight> {
    let packed: Vec<u8> = (0..n * k.div_ceil(2))
        .map(|i| ((i * 7 + seed * 3) % 256) as u8)
        .collect();
    let ng = group.map_or(1, |g| k.div_ceil(g));
    let scales: Vec<f32> = (0..n * ng).map(|i| 0.01 + (i % 5) as f32 * 0.002).collect();
    Arc::new(Int4Weight::new(&packed, n, k, group, &scales, None).unwrap())
}

/// int4 layers run on the plan's own scratch: nothing is allocated per call,
/// and the plan computes what the int4 kernel computes layer by layer.
#[test]
fn int4_layers_allocate_nothing_per_call() {
    let (w1, w2) = (int4_layer(40, 64, Some(32), 1), int4_layer(10, 40, None, 2));
    let b1 = vec![0.05f32; 40];
    let nodes = vec![
        node(
            Op::Int4Dense(
                Int4Dense::new(w1.clone(), Some(b1.clone()), false, Some(Unary::Relu)).unwrap(),
            ),
            &[0],
            1,
        ),
        node(
            Op::Int4Dense(Int4Dense::new(w2.clone(), None, true, None).unwrap()),
            &[1],
            2,
        ),
    ];
    let plan = GraphPlan::new(nodes, vec![0], vec![vec![64]], vec![2]).unwrap();
    let ctx = Ctx::serial();
    for batch in [1usize, 4, 2] {
        assert_eq!(second_call(&plan, batch), (0, 0), "batch {batch}");
        let x: Vec<f32> = (0..batch * 64)
            .map(|i| ((i * 13) % 17) as f32 * 0.1 - 0.8)
            .collect();
        let h = int4::linear(&ctx, &x, batch, 64, &w1, Some(&b1), false).unwrap();
        let h: Vec<f32> = h.iter().map(|v| v.max(0.0)).collect();
        let want = int4::linear(&ctx, &h, batch, 40, &w2, None, true).unwrap();
        let mut y = vec![0f32; batch * 10];
        plan.forward(&ctx, batch, &[&x], &mut [&mut y]).unwrap();
        assert_eq!(y, want, "batch {batch}");
    }
}

fn sparse_layer(n: usize, k: usize, pattern: Pattern, int8: bool) -> Arc<SparseWeight> {
    // About 80 % zeros, some whole 4×4 blocks kept, others empty; 2:4 for N:M.
    let nm = matches!(pattern, Pattern::NofM { .. });
    let keep = |i: usize| {
        if nm {
            i % 4 < 2 && i % 3 != 0
        } else {
            (i / k / 4 + (i % k) / 4) % 5 == 0 || i % 7 == 0
        }
    };
    let w: Vec<f32> = (0..n * k)
        .map(|i| {
            if keep(i) {
                ((i * 7) % 13) as f32 * 0.05 - 0.3
            } else {
                0.0
            }
        })
        .collect();
    Arc::new(if int8 {
        let q: Vec<i8> = w.iter().map(|&v| (v * 40.0).round() as i8).collect();
        SparseWeight::from_i8(&q, vec![0.01; n], n, k, None, pattern).unwrap()
    } else {
        SparseWeight::from_f32(&w, n, k, None, pattern).unwrap()
    })
}

/// Sparse dense layers (float CSR, BSR and N:M; int8 output-column panels,
/// CSR, 1×8 blocks and N:M) write the plan's value in place from per-thread workspaces:
/// nothing is allocated per call, on the gather-dot (batch <= 2) and the
/// AXPY path alike, and the plan computes what the weight computes alone.
#[test]
fn sparse_layers_allocate_nothing_per_call() {
    let layers = [
        (
            sparse_layer(48, 40, Pattern::Blocks { r: 1, c: 1 }, false),
            Some(vec![0.1f32; 48]),
        ),
        (
            sparse_layer(32, 48, Pattern::Blocks { r: 4, c: 4 }, false),
            None,
        ),
        (
            sparse_layer(40, 32, Pattern::NofM { n: 2, m: 4 }, false),
            Some(vec![-0.2f32; 40]),
        ),
        (
            sparse_layer(36, 40, Pattern::Blocks { r: 16, c: 4 }, true),
            Some(vec![0.3f32; 36]),
        ),
        (
            sparse_layer(24, 36, Pattern::Blocks { r: 1, c: 1 }, true),
            None,
        ),
        (
            sparse_layer(20, 24, Pattern::Blocks { r: 1, c: 8 }, true),
            Some(vec![0.1f32; 20]),
        ),
        (
            sparse_layer(12, 20, Pattern::NofM { n: 2, m: 4 }, true),
            None,
        ),
    ];
    let nodes: Vec<Node> = layers
        .iter()
        .enumerate()
        .map(|(i, (w, b))| {
            let op = SparseDense::new(w.clone(), b.clone(), i % 2 == 0, None).unwrap();
            node(Op::SparseDense(op), &[i], i + 1)
        })
        .collect();
    let plan = GraphPlan::new(nodes, vec![0], vec![vec![40]], vec![layers.len()]).unwrap();
    let ctx = Ctx::serial();
    for batch in [1usize, 40, 2, 5] {
        assert_eq!(second_call(&plan, batch), (0, 0), "batch {batch}");
        let mut h = x_of(batch);
        for (i, (w, b)) in layers.iter().enumerate() {
            let k = w.shape().1;
            h = w
                .linear(&ctx, &h, batch, k, b.as_deref(), i % 2 == 0)
                .unwrap();
        }
        let mut y = vec![0f32; batch * 12];
        plan.forward(&ctx, batch, &[&x_of(batch)], &mut [&mut y])
            .unwrap();
        assert_eq!(y, h, "batch {batch}");
    }
}

fn x_of(batch: usize) -> Vec<f32> {
    (0..batch * 40)
        .map(|i| ((i * 13) % 17) as f32 * 0.1 - 0.8)
        .collect()
}
