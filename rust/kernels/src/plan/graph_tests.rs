use super::*;
use crate::exec::TEST;
use crate::quant::rows::quantize_rows_u8;

fn packed(n: usize, k: usize, seed: i32) -> Arc<PackedB> {
    let w: Vec<i8> = (0..n * k)
        .map(|i| ((i as i32 * 7 + seed) % 23 - 11) as i8)
        .collect();
    Arc::new(PackedB::from_nk_i8(&TEST, &w, n, k, ZeroPoint::Scalar(0)).unwrap())
}

pub(super) fn gemm_of(n: usize, k: usize, seed: i32, relu: bool) -> Gemm {
    Gemm {
        packed: packed(n, k, seed),
        scale: (0..n).map(|j| 0.01 + j as f32 * 1e-3).collect(),
        bias: Some((0..n).map(|j| j as f32 * 0.05 - 0.1).collect()),
        relu,
        post: None,
        act: None,
    }
}

fn input(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 31 + seed * 17) % 29) as f32 - 14.0) * 0.13)
        .collect()
}

pub(super) fn node(op: Op, inputs: &[ValueId], output: ValueId) -> Node {
    Node {
        op,
        inputs: inputs.to_vec(),
        output,
    }
}

/// The reference of a conv node: the kernels called one by one, each
/// allocating its own result (what the Python runtime did).
fn conv_ref(
    x: &[f32],
    n: usize,
    (c, h, w): (usize, usize, usize),
    g: &Gemm,
    nchw: bool,
) -> Vec<f32> {
    let per = c * h * w;
    let (mut q, mut s, z8) = quantize_rows_u8(&TEST, x, n, per).unwrap();
    let mut z: Vec<i32> = z8.iter().map(|&v| v as i32).collect();
    if n > 1 && z.iter().any(|&v| v != z[0]) {
        let (q1, s1, z1) = quantize_rows_u8(&TEST, x, 1, n * per).unwrap();
        q = q1;
        s = vec![s1[0]; n];
        z = vec![z1[0] as i32; n];
    }
    if nchw {
        let mut t = vec![0u8; q.len()];
        to_nhwc(&q, &mut t, n, c, h * w);
        q = t;
    }
    let win = Window::new(n, c, h, w, (3, 3), (1, 1), (1, 1));
    let cols = nhwc::im2col(&TEST, &q, win, z[0] as u8).unwrap();
    let (rows, k) = win.check().unwrap().cols_shape();
    let per_img = rows / n;
    let rs: Vec<f32> = (0..rows).map(|r| s[r / per_img]).collect();
    let rz: Vec<i32> = (0..rows).map(|r| z[r / per_img]).collect();
    let step = OutputStep::Float {
        row_scale: Param::PerIndex(&rs),
        col_scale: Param::PerIndex(&g.scale),
        bias: g.bias.as_deref(),
        relu: g.relu,
    };
    gemm::matmul_vec::<f32>(
        &TEST,
        ASource::U8(&cols),
        rows,
        k,
        ZeroPoint::PerIndex(&rz),
        &g.packed,
        &step,
    )
    .unwrap()
}

/// A residual block: x (NCHW) -> conv (NHWC) -> [conv -> + skip, ReLU] ->
/// maxpool -> clip -> NCHW -> flatten -> dense.
fn block_plan() -> (GraphPlan, Gemm, Gemm, Gemm) {
    let (c, h, w, oc) = (3, 6, 5, 8);
    let (g1, g2) = (gemm_of(oc, c * 9, 1, true), gemm_of(oc, oc * 9, 2, false));
    let dense = gemm_of(4, oc * 3 * 2, 3, false);
    let conv = |g: &Gemm, nchw_in| Op::Conv {
        gemm: g.clone(),
        kernel: (3, 3),
        stride: (1, 1),
        padding: (1, 1),
        nchw_in,
    };
    let nodes = vec![
        node(conv(&g1, true), &[0], 1),
        node(conv(&g2, false), &[1], 2),
        node(Op::Add { relu: true }, &[2, 1], 3),
        node(
            Op::Pool {
                kind: Pool::Max,
                kernel: (2, 2),
                stride: (2, 2),
                padding: (0, 0),
            },
            &[3],
            4,
        ),
        node(Op::Unary(Unary::Clip(Some(0.0), Some(6.0))), &[4], 5),
        node(Op::ToNchw, &[5], 6),
        node(Op::Reshape(vec![oc * 3 * 2]), &[6], 7),
        node(Op::Dense(dense.clone()), &[7], 8),
    ];
    let plan = GraphPlan::new(nodes, vec![0], vec![vec![c, h, w]], vec![8]).unwrap();
    (plan, g1, g2, dense)
}

fn block_ref(x: &[f32], n: usize, g1: &Gemm, g2: &Gemm, dense: &Gemm) -> Vec<f32> {
    let (c, h, w, oc) = (3, 6, 5, 8);
    let y1 = conv_ref(x, n, (c, h, w), g1, true);
    let y2 = conv_ref(&y1, n, (oc, h, w), g2, false);
    let s: Vec<f32> = y2.iter().zip(&y1).map(|(a, b)| (a + b).max(0.0)).collect();
    let win = Window::new(n, oc, h, w, (2, 2), (2, 2), (0, 0));
    let p = nhwc::pool2d(&TEST, &s, win, Pool::Max).unwrap();
    let p: Vec<f32> = p.iter().map(|v| v.clamp(0.0, 6.0)).collect();
    let mut t = vec![0.0; p.len()];
    to_nchw(&p, &mut t, n, oc, 6);
    gemm::linear_dynamic_vec(
        &TEST,
        &t,
        n,
        oc * 6,
        &dense.packed,
        Param::PerIndex(&dense.scale),
        dense.bias.as_deref(),
        false,
    )
    .unwrap()
}

fn run(plan: &GraphPlan, ctx: &Ctx, x: &[f32], n: usize) -> Vec<f32> {
    let out_elems: usize = plan.output_dims()[0].iter().product();
    let mut y = vec![f32::NAN; n * out_elems];
    plan.forward(ctx, n, &[x], &mut [&mut y]).unwrap();
    y
}

#[test]
fn a_residual_block_is_its_kernels_one_after_another() {
    let (plan, g1, g2, dense) = block_plan();
    assert_eq!(plan.output_dims(), vec![&[4usize][..]]);
    for n in [1, 3] {
        let x = input(n * 90, n);
        let want = block_ref(&x, n, &g1, &g2, &dense);
        assert_eq!(run(&plan, &TEST, &x, n), want, "batch {n}");
        assert_eq!(
            run(&plan, &Ctx::serial(), &x, n),
            want,
            "batch {n}, one thread"
        );
    }
}

#[test]
fn every_isa_gives_the_same_bytes() {
    let (plan, ..) = block_plan();
    let x = input(2 * 90, 5);
    let mut first: Option<Vec<u32>> = None;
    crate::cpu::each_isa(|isa| {
        let y: Vec<u32> = run(&plan, &TEST, &x, 2)
            .iter()
            .map(|v| v.to_bits())
            .collect();
        match &first {
            None => first = Some(y),
            Some(f) => assert_eq!(&y, f, "{isa:?}"),
        }
    });
}

#[test]
fn no_buffer_is_allocated_after_the_first_call_of_a_batch_size() {
    let (plan, ..) = block_plan();
    let x = input(4 * 90, 1);
    run(&plan, &TEST, &x[..2 * 90], 2);
    let after_first = plan.allocations();
    assert!(after_first > 0);
    for _ in 0..3 {
        run(&plan, &TEST, &x[..2 * 90], 2);
    }
    assert_eq!(plan.allocations(), after_first, "batch 2 again");
    run(&plan, &TEST, &x, 4);
    let grown = plan.allocations();
    assert!(grown > after_first, "a larger batch re-plans the buffers");
    run(&plan, &TEST, &x, 4);
    run(&plan, &TEST, &x[..90], 1);
    run(&plan, &TEST, &x[..2 * 90], 2);
    assert_eq!(
        plan.allocations(),
        grown,
        "smaller batches fit the grown buffers"
    );
}

#[test]
fn buffers_are_shared_by_values_whose_lifetimes_do_not_overlap() {
    // A chain of six element-wise ops: two buffers suffice (read one, write the other).
    let nodes: Vec<Node> = (0..6)
        .map(|i| node(Op::Unary(Unary::HardSwish), &[i], i + 1))
        .collect();
    let plan = GraphPlan::new(nodes, vec![0], vec![vec![10]], vec![6]).unwrap();
    assert_eq!(plan.buffers(), 2);
    assert_eq!(plan.storage(0), Some(Storage::Input(0)));
    assert_eq!(plan.storage(6), Some(Storage::Output(0)));
    let x = input(10, 0);
    let y = run(&plan, &TEST, &x, 1);
    let hs = |v: f32| v * (v + 3.0).clamp(0.0, 6.0) / 6.0;
    let want: Vec<f32> = x.iter().map(|&v| (0..6).fold(v, |a, _| hs(a))).collect();
    assert_eq!(y, want);
    // A value read late keeps its buffer: 1 is read by node 3, so 2 and 3 need others.
    let nodes = vec![
        node(Op::Unary(Unary::Relu), &[0], 1),
        node(Op::Unary(Unary::Relu), &[1], 2),
        node(Op::Unary(Unary::Relu), &[2], 3),
        node(Op::Add { relu: false }, &[3, 1], 4),
    ];
    let plan = GraphPlan::new(nodes, vec![0], vec![vec![4]], vec![4]).unwrap();
    let b = |v| plan.storage(v).unwrap();
    assert_ne!(b(1), b(2));
    assert_ne!(b(1), b(3));
    let y = run(&plan, &TEST, &[-1.0, 2.0, -3.0, 4.0], 1);
    assert_eq!(y, vec![0.0, 4.0, 0.0, 8.0]);
}

#[test]
fn reshapes_alias_their_input_and_layouts_round_trip() {
    let nodes = vec![
        node(Op::ToNhwc, &[0], 1),
        node(Op::Reshape(vec![2, 3, 4]), &[1], 2),
        node(Op::Reshape(vec![2, 3, 4]), &[2], 3),
        node(Op::ToNchw, &[3], 4),
    ];
    let plan = GraphPlan::new(nodes, vec![0], vec![vec![4, 2, 3]], vec![4]).unwrap();
    assert_eq!(plan.storage(1), plan.storage(3));
    let x = input(2 * 24, 3);
    assert_eq!(run(&plan, &TEST, &x, 2), x);
    // A reshape of an input straight to an output copies.
    let plan = GraphPlan::new(
        vec![node(Op::Reshape(vec![6]), &[0], 1)],
        vec![0],
        vec![vec![2, 3]],
        vec![1],
    )
    .unwrap();
    assert_eq!(run(&plan, &TEST, &x[..12], 2), x[..12].to_vec());
}

#[test]
fn affine_and_unary_follow_numpy() {
    let (scale, shift) = (vec![2.0, -1.0], vec![0.5, 0.25]);
    let nchw = Op::Affine {
        scale: scale.clone(),
        shift: shift.clone(),
        channels_last: false,
    };
    let plan = GraphPlan::new(
        vec![node(nchw, &[0], 1)],
        vec![0],
        vec![vec![2, 3]],
        vec![1],
    )
    .unwrap();
    let x = input(12, 2);
    let want: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| v * scale[(i / 3) % 2] + shift[(i / 3) % 2])
        .collect();
    assert_eq!(run(&plan, &TEST, &x, 2), want);
    let nan = f32::NAN;
    assert!(Unary::Relu.apply(nan).is_nan());
    assert!(Unary::Clip(Some(0.0), Some(6.0)).apply(nan).is_nan());
    assert!(Unary::HardSwish.apply(nan).is_nan());
    assert_eq!(Unary::Clip(None, Some(1.0)).apply(-5.0), -5.0);
    assert_eq!(Unary::HardSwish.apply(-4.0), 0.0);
    assert_eq!(Unary::HardSwish.apply(1.0), 1.0 * 4.0 / 6.0);
}

/// `Unary::run` (one vector loop per case) and its threaded `run_par` give
/// the bits of NumPy's maximum / minimum written out as branches, for NaN,
/// infinities, signed zeros and values at the bounds, NaN bounds included.
#[test]
fn unary_loops_give_numpys_bits_for_nan_infinities_and_signed_zeros() {
    let max = |a: f32, b: f32| if a >= b || a.is_nan() { a } else { b };
    let min = |a: f32, b: f32| if a <= b || a.is_nan() { a } else { b };
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        6.0,
        -1.0,
        7.5,
        1e-40,
    ];
    let x: Vec<f32> = (0..70_000)
        .map(|i| {
            specials
                .get(i % 23)
                .copied()
                .unwrap_or((i % 97) as f32 * 0.1 - 3.0)
        })
        .collect();
    let bounds = [None, Some(0.0), Some(-0.0), Some(6.0), Some(f32::NAN)];
    let mut fs = vec![Unary::Relu, Unary::HardSwish];
    for lo in bounds {
        for hi in bounds {
            fs.push(Unary::Clip(lo, hi));
        }
    }
    let two = Ctx::new(2);
    for f in fs {
        let want: Vec<u32> = x
            .iter()
            .map(|&v| match f {
                Unary::Relu => max(v, 0.0),
                Unary::Clip(lo, hi) => {
                    let y = lo.map_or(v, |lo| max(v, lo));
                    hi.map_or(y, |hi| min(y, hi))
                }
                Unary::HardSwish => f.apply(v),
            })
            .map(f32::to_bits)
            .collect();
        let (mut a, mut b) = (x.clone(), x.clone());
        f.run(&mut a);
        f.run_par(&two, &mut b);
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), want, "{f:?}");
        assert_eq!(bits(&b), want, "{f:?} threaded");
        let one: Vec<u32> = x.iter().map(|&v| f.apply(v).to_bits()).collect();
        assert_eq!(one, want, "{f:?} apply");
    }
}

#[test]
fn bad_plans_and_calls_are_errors() {
    let relu = || Op::Unary(Unary::Relu);
    // Reads a value nothing wrote.
    assert!(GraphPlan::new(vec![node(relu(), &[1], 2)], vec![0], vec![vec![3]], vec![2]).is_err());
    // Adds values of different dims.
    let add = node(Op::Add { relu: false }, &[0, 1], 2);
    assert!(GraphPlan::new(vec![add], vec![0, 1], vec![vec![3], vec![4]], vec![2]).is_err());
    // A value written twice; a dense layer of the wrong width.
    assert!(GraphPlan::new(
        vec![node(relu(), &[0], 1), node(relu(), &[0], 1)],
        vec![0],
        vec![vec![3]],
        vec![1]
    )
    .is_err());
    let e = GraphPlan::new(
        vec![node(Op::Dense(gemm_of(4, 5, 0, false)), &[0], 1)],
        vec![0],
        vec![vec![6]],
        vec![1],
    )
    .unwrap_err();
    assert!(e.to_string().contains("node 0"), "{e}");
    // A conv on a non-image.
    let (plan, ..) = block_plan();
    let x = input(90, 0);
    let mut y = vec![0.0; 4];
    assert!(plan.forward(&TEST, 2, &[&x], &mut [&mut y]).is_err());
    assert!(plan.forward(&TEST, 1, &[&x[..89]], &mut [&mut y]).is_err());
    let mut bad = x.clone();
    bad[7] = f32::INFINITY;
    let e = plan.forward(&TEST, 1, &[&bad], &mut [&mut y]).unwrap_err();
    assert!(e.to_string().contains("not finite"), "{e}");
    // The plan still runs after a failed call.
    plan.forward(&TEST, 1, &[&x], &mut [&mut y]).unwrap();
}

#[test]
fn calls_from_several_threads_run_at_once() {
    let (plan, g1, g2, dense) = block_plan();
    let x = input(2 * 90, 9);
    let want = block_ref(&x, 2, &g1, &g2, &dense);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..5 {
                    assert_eq!(run(&plan, &TEST, &x, 2), want);
                }
            });
        }
    });
}

#[test]
fn global_average_pool_is_numpys_pairwise_mean() {
    // Below 8 elements a plain sum; 8..=128 eight accumulators; above, halves at multiples of 8.
    let seq: Vec<f32> = (0..300).map(|i| 1.0 + (i as f32) * 1e-3).collect();
    let plain = |n: usize| seq[..n].iter().fold(0.0f32, |a, &v| a + v);
    assert_eq!(pairwise_sum(&|i| seq[i], 0, 5), plain(5));
    let mut r = [0f32; 8];
    for (i, v) in seq[..20].iter().enumerate().take(16) {
        r[i % 8] += *v;
    }
    let want = ((r[0] + r[1]) + (r[2] + r[3]))
        + ((r[4] + r[5]) + (r[6] + r[7]))
        + seq[16]
        + seq[17]
        + seq[18]
        + seq[19];
    assert_eq!(pairwise_sum(&|i| seq[i], 0, 20), want);
    assert_eq!(
        pairwise_sum(&|i| seq[i], 0, 300),
        pairwise_sum(&|i| seq[i], 0, 144) + pairwise_sum(&|i| seq[i], 144, 156)
    );
    // Both layouts give the same means.
    let (c, h, w) = (3, 5, 4);
    let x = input(2 * c * h * w, 4);
    let mut t = vec![0.0; x.len()];
    to_nhwc(&x, &mut t, 2, c, h * w);
    let gap = |last| {
        GraphPlan::new(
            vec![node(
                Op::GlobalAvgPool {
                    channels_last: last,
                },
                &[0],
                1,
            )],
            vec![0],
            vec![if last { vec![h, w, c] } else { vec![c, h, w] }],
            vec![1],
        )
        .unwrap()
    };
    let a = run(&gap(false), &TEST, &x, 2);
    assert_eq!(a, run(&gap(true), &TEST, &t, 2));
    assert_eq!(
        a[4],
        (0.0 + pairwise_sum(&|i| x[(c + 1) * h * w + i], 0, h * w)) / (h * w) as f32
    );
}

/// The channels-last pool sums a block of channels side by side: each
/// channel's sum must be NumPy's pairwise sum of it, bit for bit, across
/// the plain, eight-lane and split cases and partial channel blocks.
#[test]
fn channel_blocks_sum_each_channel_in_numpys_pairwise_order() {
    for c in [1usize, 3, 64, 65, 130] {
        for hw in [1usize, 5, 8, 9, 20, 128, 129, 300, 1031] {
            // Magnitudes from 1e-3 to 1e4 and both signs: reordering the adds changes the sum.
            let x: Vec<f32> = input(c * hw, c + hw)
                .iter()
                .enumerate()
                .map(|(i, v)| v * 10f32.powi((i % 8) as i32 - 3))
                .collect();
            for c0 in (0..c).step_by(GAP_BLOCK) {
                let cb = GAP_BLOCK.min(c - c0);
                let got = pairwise_sum_block(&x, c, c0, cb, 0, hw);
                for j in 0..cb {
                    let want = pairwise_sum(&|i| x[i * c + c0 + j], 0, hw);
                    assert_eq!(
                        got[j].to_bits(),
                        want.to_bits(),
                        "c {c} hw {hw} channel {}",
                        c0 + j
                    );
                }
            }
        }
    }
}

#[test]
fn a_depthwise_node_is_the_kernel_on_per_image_quantized_channels_last_input() {
    let (c, h, w) = (5, 6, 7);
    let weight: Vec<i8> = (0..9 * c).map(|i| ((i * 5) % 13) as i8 - 6).collect();
    let scale: Vec<f32> = (0..c).map(|j| 0.02 + j as f32 * 0.01).collect();
    let dw = |nchw_in| Op::Depthwise {
        weight: weight.clone().into(),
        kernel: (3, 3),
        scale: scale.clone(),
        bias: None,
        relu: true,
        post: Some(Unary::HardSwish),
        stride: (2, 1),
        padding: [1, 0, 1, 2],
        dilation: (1, 1),
        nchw_in,
        act: None,
    };
    for n in [1, 3] {
        let x = input(n * c * h * w, n + 7);
        let (q, s, z) = quantize_rows_u8(&TEST, &x, n, c * h * w).unwrap();
        let z: Vec<i32> = z.iter().map(|&v| v as i32).collect();
        let mut qt = vec![0u8; q.len()];
        to_nhwc(&q, &mut qt, n, c, h * w);
        let g = Depthwise {
            n,
            h,
            w,
            c,
            kernel: (3, 3),
            stride: (2, 1),
            dilation: (1, 1),
            padding: [1, 0, 1, 2],
        };
        let (_, _, os) = g.sizes().unwrap();
        let mut want = vec![0f32; os];
        depthwise::depthwise_conv2d_f32(
            &TEST, &qt, &z, &s, &weight, &scale, None, true, &g, &mut want,
        )
        .unwrap();
        Unary::HardSwish.run(&mut want);
        let plan = GraphPlan::new(
            vec![node(dw(true), &[0], 1)],
            vec![0],
            vec![vec![c, h, w]],
            vec![1],
        )
        .unwrap();
        assert_eq!(run(&plan, &TEST, &x, n), want, "NCHW in, batch {n}");
        let mut xt = vec![0f32; x.len()];
        to_nhwc(&x, &mut xt, n, c, h * w);
        let plan = GraphPlan::new(
            vec![node(dw(false), &[0], 1)],
            vec![0],
            vec![vec![h, w, c]],
            vec![1],
        )
        .unwrap();
        assert_eq!(run(&plan, &TEST, &xt, n), want, "NHWC in, batch {n}");
    }
}

/// The int8 weights `packed(n, k, seed)` holds, `(n, k)` row-major.
fn weights(n: usize, k: usize, seed: i32) -> Vec<i32> {
    (0..n * k)
        .map(|i| (i as i32 * 7 + seed) % 23 - 11)
        .collect()
}

/// The documented float output step of one element, from the exact sum.
fn step_ref(acc: i32, s: f32, g: &Gemm, j: usize) -> f32 {
    let f = (acc as f32 * s) * g.scale[j] + g.bias.as_ref().map_or(0.0, |b| b[j]);
    if g.relu {
        f.max(0.0)
    } else {
        f
    }
}

const ACT: StaticAct = StaticAct {
    scale: 0.0137,
    zero_point: 131,
};

fn q_ref(x: &[f32], a: StaticAct) -> Vec<i32> {
    x.iter()
        .map(|&v| ((v / a.scale).round_ties_even() + a.zero_point as f32).clamp(0.0, 255.0) as i32)
        .collect()
}

#[test]
fn a_static_dense_node_is_quantize_linear_then_the_exact_product_on_every_isa() {
    let (k, n) = (37, 6);
    let mut g = gemm_of(n, k, 4, true);
    g.act = Some(ACT);
    let w = weights(n, k, 4);
    let plan = GraphPlan::new(
        vec![node(Op::Dense(g.clone()), &[0], 1)],
        vec![0],
        vec![vec![k]],
        vec![1],
    )
    .unwrap();
    for m in [1, 5] {
        // Reaches past the grid at both ends (saturation) and lands on ties.
        let x: Vec<f32> = input(m * k, m).iter().map(|v| v * 2.5).collect();
        let q = q_ref(&x, ACT);
        let mut want = vec![0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                let acc: i32 = (0..k)
                    .map(|c| (q[r * k + c] - ACT.zero_point) * w[j * k + c])
                    .sum();
                want[r * n + j] = step_ref(acc, ACT.scale, &g, j);
            }
        }
        assert!(
            q.contains(&0) && q.contains(&255),
            "the test input saturates"
        );
        crate::cpu::each_isa(|isa| assert_eq!(run(&plan, &TEST, &x, m), want, "{isa:?} batch {m}"));
    }
}

#[test]
fn a_static_conv_node_is_quantize_linear_then_the_exact_convolution_on_every_isa() {
    let (c, h, w, oc) = (3, 5, 4, 7);
    let mut g = gemm_of(oc, c * 9, 5, false);
    g.act = Some(ACT);
    let wt = weights(oc, c * 9, 5); // columns in (ky, kx, ch) order
    let conv = |nchw_in| Op::Conv {
        gemm: g.clone(),
        kernel: (3, 3),
        stride: (1, 1),
        padding: (1, 1),
        nchw_in,
    };
    for n in [1, 2] {
        let x: Vec<f32> = input(n * c * h * w, n + 3)
            .iter()
            .map(|v| v * 1.5)
            .collect();
        let q = q_ref(&x, ACT); // NCHW
        let mut want = vec![0f32; n * h * w * oc];
        for img in 0..n {
            for (oy, ox) in (0..h).flat_map(|y| (0..w).map(move |x| (y, x))) {
                for j in 0..oc {
                    let mut acc = 0i32;
                    for (ky, kx, ch) in (0..3)
                        .flat_map(|a| (0..3).flat_map(move |b| (0..c).map(move |d| (a, b, d))))
                    {
                        let (iy, ix) = (oy + ky, ox + kx); // padded coordinates
                        let v = if iy < 1 || ix < 1 || iy > h || ix > w {
                            ACT.zero_point // padding is the real zero
                        } else {
                            q[((img * c + ch) * h + iy - 1) * w + ix - 1]
                        };
                        acc += (v - ACT.zero_point) * wt[j * c * 9 + (ky * 3 + kx) * c + ch];
                    }
                    want[((img * h + oy) * w + ox) * oc + j] = step_ref(acc, ACT.scale, &g, j);
                }
            }
        }
        let plan = GraphPlan::new(
            vec![node(conv(true), &[0], 1)],
            vec![0],
            vec![vec![c, h, w]],
            vec![1],
        )
        .unwrap();
        let mut xt = vec![0f32; x.len()];
        to_nhwc(&x, &mut xt, n, c, h * w);
        let nhwc = GraphPlan::new(
            vec![node(conv(false), &[0], 1)],
            vec![0],
            vec![vec![h, w, c]],
            vec![1],
        )
        .unwrap();
        crate::cpu::each_isa(|isa| {
            assert_eq!(run(&plan, &TEST, &x, n), want, "{isa:?} NCHW in, batch {n}");
            assert_eq!(
                run(&nhwc, &TEST, &xt, n),
                want,
                "{isa:?} NHWC in, batch {n}"
            );
        });
    }
}

#[test]
fn a_static_depthwise_node_is_the_kernel_on_quantize_linear_input() {
    let (c, h, w, n) = (4, 5, 6, 3);
    let weight: Vec<i8> = (0..9 * c).map(|i| ((i * 5) % 13) as i8 - 6).collect();
    let scale: Vec<f32> = (0..c).map(|j| 0.02 + j as f32 * 0.01).collect();
    let op = Op::Depthwise {
        weight: weight.clone().into(),
        kernel: (3, 3),
        scale: scale.clone(),
        bias: None,
        relu: false,
        post: None,
        stride: (1, 1),
        padding: [1, 1, 1, 1],
        dilation: (1, 1),
        nchw_in: false,
        act: Some(ACT),
    };
    let x = input(n * h * w * c, 11);
    let q: Vec<u8> = q_ref(&x, ACT).iter().map(|&v| v as u8).collect();
    let g = Depthwise {
        n,
        h,
        w,
        c,
        kernel: (3, 3),
        stride: (1, 1),
        dilation: (1, 1),
        padding: [1, 1, 1, 1],
    };
    let mut want = vec![0f32; n * h * w * c];
    depthwise::depthwise_conv2d_f32(
        &TEST,
        &q,
        &[ACT.zero_point; 3],
        &[ACT.scale; 3],
        &weight,
        &scale,
        None,
        false,
        &g,
        &mut want,
    )
    .unwrap();
    let plan = GraphPlan::new(
        vec![node(op, &[0], 1)],
        vec![0],
        vec![vec![h, w, c]],
        vec![1],
    )
    .unwrap();
    crate::cpu::each_isa(|isa| assert_eq!(run(&plan, &TEST, &x, n), want, "{isa:?}"));
}

#[test]
fn static_parameters_are_checked_at_build_and_input_at_run_time() {
    for (scale, zero_point) in [(0.0f32, 0), (f32::NAN, 0), (-1.0, 3), (0.1, 256), (0.1, -1)] {
        let mut g = gemm_of(3, 4, 1, false);
        g.act = Some(StaticAct { scale, zero_point });
        let e = GraphPlan::new(
            vec![node(Op::Dense(g), &[0], 1)],
            vec![0],
            vec![vec![4]],
            vec![1],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("node 0") && e.to_string().contains("activation"),
            "{e}"
        );
    }
    let mut g = gemm_of(3, 4, 1, false);
    g.act = Some(ACT);
    let plan = GraphPlan::new(
        vec![node(Op::Dense(g), &[0], 1)],
        vec![0],
        vec![vec![4]],
        vec![1],
    )
    .unwrap();
    let mut y = vec![0f32; 6];
    let e = plan
        .forward(
            &TEST,
            2,
            &[&[0.0, 1.0, 2.0, 3.0, 4.0, f32::NAN, 0.0, 0.0]],
            &mut [&mut y],
        )
        .unwrap_err();
    assert!(e.to_string().contains("not finite at element 5"), "{e}");
}

#[test]
fn work_per_sample_counts_each_node_outputs_times_its_reads() {
    let nodes = vec![
        node(Op::Dense(gemm_of(16, 8, 1, true)), &[0], 1),
        node(Op::Unary(Unary::Relu), &[1], 2),
        node(Op::Dense(gemm_of(3, 16, 2, false)), &[2], 3),
    ];
    let plan = GraphPlan::new(nodes, vec![0], vec![vec![8]], vec![3]).unwrap();
    // (16·8 + 8) + (16 + 16) + (3·16 + 16)
    assert_eq!(plan.work_per_sample(), 136 + 32 + 64);
    let (block, ..) = block_plan();
    // the convolutions alone: 6·5·8 outputs of K = 3·9 and of K = 8·9
    assert!(block.work_per_sample() > 6 * 5 * 8 * (27 + 72));
}
