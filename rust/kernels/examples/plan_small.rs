//! Batch-1 cost of small graph plans: the digits MLP (64-256-128-10) and
//! its shrunk versions, dynamic and static int8, timed side by side (median
//! of rounds, alternating), or one model run `REPS` times for callgrind:
//!
//! ```text
//! cargo run --release --example plan_small            # the table
//! cargo run --release --example plan_small -- static 256 128 100000   # one model, for a profiler
//! cargo run --release --example plan_small -- conv                      # one 3x3 conv node, by channels
//! cargo run --release --example plan_small -- conv 8 8 8 100000         # one conv (c n h reps), for a profiler
//! ```
use hwreg_kernels::exec::Ctx;
use hwreg_kernels::gemm::{PackedB, ZeroPoint};
use hwreg_kernels::plan::graph::{Gemm, GraphPlan, Node, Op, StaticAct};
use std::sync::Arc;
use std::time::Instant;

fn dense(k: usize, n: usize, relu: bool, stat: bool, seed: usize) -> Op {
    let w: Vec<i8> = (0..k * n)
        .map(|i| (((i * 37 + seed * 11) % 251) as i32 - 125) as i8)
        .collect();
    let packed = PackedB::from_kn_i8(&Ctx::serial(), &w, k, n, ZeroPoint::Scalar(0)).unwrap();
    Op::Dense(Gemm {
        packed: Arc::new(packed),
        scale: (0..n).map(|j| 1e-3 + j as f32 * 1e-6).collect(),
        bias: Some((0..n).map(|j| j as f32 * 0.01 - 0.3).collect()),
        relu,
        post: None,
        act: stat.then_some(StaticAct {
            scale: 0.05,
            zero_point: 3,
        }),
    })
}

fn mlp(widths: &[usize], stat: bool) -> GraphPlan {
    let nodes: Vec<Node> = widths
        .windows(2)
        .enumerate()
        .map(|(i, w)| Node {
            op: dense(w[0], w[1], i + 2 < widths.len(), stat, i),
            inputs: vec![i],
            output: i + 1,
        })
        .collect();
    let last = nodes.len();
    GraphPlan::new(nodes, vec![0], vec![vec![widths[0]]], vec![last]).unwrap()
}

fn time(plan: &GraphPlan, ctx: &Ctx, x: &[f32], y: &mut [f32], reps: usize) -> f64 {
    let t0 = Instant::now();
    for _ in 0..reps {
        plan.forward(ctx, 1, &[x], &mut [&mut *y]).unwrap();
    }
    t0.elapsed().as_secs_f64() / reps as f64 * 1e6
}

/// One dynamic 3x3 (padding 1) conv node over an NHWC `h × h × c` image, `n` outputs.
fn conv(c: usize, n: usize, h: usize) -> GraphPlan {
    let Op::Dense(g) = dense(9 * c, n, true, false, c + n) else {
        unreachable!()
    };
    let node = Node {
        op: Op::Conv {
            gemm: g,
            kernel: (3, 3),
            stride: (1, 1),
            padding: (1, 1),
            nchw_in: false,
        },
        inputs: vec![0],
        output: 1,
    };
    GraphPlan::new(vec![node], vec![0], vec![vec![h, h, c]], vec![1]).unwrap()
}

/// Batch-1 times of conv nodes of the digits ResNet's sizes, side by side.
fn convs() {
    let ctx = Ctx::serial();
    let shapes = [
        (1, 8, 8),
        (8, 8, 8),
        (4, 4, 8),
        (1, 1, 8),
        (16, 16, 4),
        (8, 8, 4),
        (2, 2, 4),
    ];
    let plans: Vec<(GraphPlan, Vec<f32>, Vec<f32>)> = shapes
        .iter()
        .map(|&(c, n, h)| {
            let x = (0..h * h * c)
                .map(|i| ((i * 7 % 17) as f32 - 8.0) * 0.3)
                .collect();
            (conv(c, n, h), x, vec![0f32; h * h * n])
        })
        .collect();
    let mut t = vec![Vec::new(); plans.len()];
    for _ in 0..15 {
        for (i, (p, x, y)) in plans.iter().enumerate() {
            let mut y = y.clone();
            t[i].push(time(p, &ctx, x, &mut y, 5000));
        }
    }
    for (v, &(c, n, h)) in t.iter_mut().zip(&shapes) {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("conv 3x3 {h}x{h}x{c} -> {n}: {:.3} us", v[v.len() / 2]);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("conv") {
        if let [_, c, n, h, reps] = &args[..] {
            let (c, n, h): (usize, usize, usize) =
                (c.parse().unwrap(), n.parse().unwrap(), h.parse().unwrap());
            let x: Vec<f32> = (0..h * h * c)
                .map(|i| ((i * 7 % 17) as f32 - 8.0) * 0.3)
                .collect();
            let mut y = vec![0f32; h * h * n];
            let t = time(
                &conv(c, n, h),
                &Ctx::serial(),
                &x,
                &mut y,
                reps.parse().unwrap(),
            );
            println!("{t:.3} us");
            return;
        }
        return convs();
    }
    let x: Vec<f32> = (0..64).map(|i| ((i * 7 % 17) as f32 - 8.0) * 0.3).collect();
    if args.len() == 4 {
        let stat = args[0] == "static";
        let (h1, h2, reps) = (
            args[1].parse().unwrap(),
            args[2].parse().unwrap(),
            args[3].parse().unwrap(),
        );
        let p = mlp(&[64, h1, h2, 10], stat);
        let mut y = vec![0f32; 10];
        println!("{:.3} us", time(&p, &Ctx::serial(), &x, &mut y, reps));
        return;
    }
    for threads in [1, 2] {
        let ctx = Ctx::new(threads);
        for stat in [false, true] {
            let shapes: [(&str, [usize; 4]); 4] = [
                ("dense", [64, 256, 128, 10]),
                ("50%", [64, 128, 64, 10]),
                ("75%", [64, 64, 32, 10]),
                ("88%", [64, 32, 16, 10]),
            ];
            let plans: Vec<GraphPlan> = shapes.iter().map(|(_, w)| mlp(w, stat)).collect();
            let mut y = vec![0f32; 10];
            let mut t = vec![Vec::new(); plans.len()];
            for _ in 0..15 {
                for (i, p) in plans.iter().enumerate() {
                    t[i].push(time(p, &ctx, &x, &mut y, 20000));
                }
            }
            let med: Vec<f64> = t
                .iter_mut()
                .map(|v| {
                    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
                    v[v.len() / 2]
                })
                .collect();
            let kind = if stat { "static" } else { "dynamic" };
            for (i, (name, _)) in shapes.iter().enumerate() {
                println!(
                    "{threads} thr {kind:7} {name:6} {:.3} us  ratio {:.3}",
                    med[i],
                    med[i] / med[0]
                );
            }
        }
    }
}
