//! Times the int8 block panels against the dense int8 layer (both quantize
//! `x` per row inside the call) on one shape, for several sparsities, blocks
//! and batches, one and two threads, round-robin in one process:
//! `cargo run --release --example panel_time -- N K [BATCH..]`
//! (`HWREG_BLOCKS=16x4,8x4`, `HWREG_SPARSITY=0.8,0.9`). One thread: CPU time
//! of the calling thread (a loaded machine's waits for a core do not count);
//! two: wall time. Prints the median and the minimum of 15 rounds.
use hwreg_kernels::exec::Ctx;
use hwreg_kernels::gemm::{self, output::Param, PackedB, ZeroPoint};
use hwreg_kernels::sparse::{quantize_rows_u8_into, Pattern, QuantX, SparseWeight};
use std::time::Instant;

mod common;

fn list<T: std::str::FromStr>(var: &str, default: &str) -> Vec<T> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|v| v.parse().ok().expect("list entry"))
        .collect()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("integer argument"))
        .collect();
    let (n, k) = (args[0], args[1]);
    let batches = if args.len() > 2 {
        args[2..].to_vec()
    } else {
        vec![1, 32]
    };
    let blocks: Vec<String> = list("HWREG_BLOCKS", "16x4,8x4");
    let sparsities: Vec<f64> = list("HWREG_SPARSITY", "0.8,0.9");
    let mut lcg = common::Lcg::new(12345);
    let mut rnd = move || lcg.byte();
    let q: Vec<i8> = (0..n * k).map(|_| rnd() as i8).collect();
    let scale = vec![0.01f32; n];
    let pb = PackedB::from_nk_i8(&Ctx::current(), &q, n, k, ZeroPoint::Scalar(0)).unwrap();
    let mut mats = Vec::new();
    for &s in &sparsities {
        for b in &blocks {
            let (r, c) = b.split_once('x').expect("RxC");
            let (r, c): (usize, usize) = (r.parse().unwrap(), c.parse().unwrap());
            let kc = k.div_ceil(c);
            let keep: Vec<bool> = (0..n.div_ceil(r) * kc)
                .map(|_| (rnd() as f64) / 256.0 >= s)
                .collect();
            let mask: Vec<bool> = (0..n * k)
                .map(|i| keep[(i / k / r) * kc + (i % k) / c])
                .collect();
            let w = SparseWeight::from_i8(
                &q,
                scale.clone(),
                n,
                k,
                Some(&mask),
                Pattern::Blocks { r, c },
            )
            .unwrap();
            mats.push((format!("{r}x{c}@{s}"), w));
        }
    }
    for &batch in &batches {
        let x: Vec<f32> = (0..batch * k).map(|_| rnd() as f32 / 128.0 - 1.0).collect();
        let mut y = vec![0f32; batch * n];
        let (mut xq, mut xs, mut xz) = (vec![0u8; batch * k], vec![0f32; batch], vec![0u8; batch]);
        quantize_rows_u8_into(&Ctx::new(1), &x, batch, k, &mut xq, &mut xs, &mut xz).unwrap();
        let (mut q2, mut s2, mut z2) = (xq.clone(), xs.clone(), xz.clone());
        // `HWREG_PHASES=1`: also the quantizer alone and each sparse product on pre-quantized rows.
        let phases = std::env::var("HWREG_PHASES").is_ok_and(|v| v == "1");
        let mut names: Vec<String> = std::iter::once("dense".to_string())
            .chain(mats.iter().map(|m| m.0.clone()))
            .collect();
        if phases {
            names.push("quantize".into());
            names.extend(mats.iter().map(|m| format!("{}/q", m.0)));
        }
        let mut samples = vec![Vec::new(); names.len() * 2];
        for _ in 0..15 {
            for i in 0..names.len() {
                for t in 0..2 {
                    let ctx = Ctx::new(t + 1);
                    let mut call = || {
                        let nm = mats.len();
                        if i > nm && i == nm + 1 {
                            quantize_rows_u8_into(&ctx, &x, batch, k, &mut q2, &mut s2, &mut z2)
                                .unwrap()
                        } else if i > nm + 1 {
                            let xqv = QuantX {
                                q: &xq,
                                scale: &xs,
                                zero_point: &xz,
                            };
                            mats[i - nm - 2]
                                .1
                                .linear_quantized_into(&ctx, &xqv, batch, k, None, false, &mut y)
                                .unwrap()
                        } else if i == 0 {
                            gemm::linear_dynamic(
                                &ctx,
                                &x,
                                batch,
                                k,
                                &pb,
                                Param::PerIndex(&scale),
                                None,
                                false,
                                &mut y,
                            )
                            .unwrap()
                        } else {
                            mats[i - 1]
                                .1
                                .linear_into(&ctx, &x, batch, k, None, false, &mut y)
                                .unwrap()
                        }
                    };
                    call();
                    let reps = (2000 / batch).clamp(10, 200);
                    let (t0, c0) = (Instant::now(), common::cpu_now());
                    for _ in 0..reps {
                        call();
                    }
                    let sec = if t == 0 {
                        common::cpu_now() - c0
                    } else {
                        t0.elapsed().as_secs_f64()
                    };
                    samples[i * 2 + t].push(sec / reps as f64 * 1e6);
                }
            }
        }
        let stat = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            (v[v.len() / 2], v[0])
        };
        let mut dense = [(0.0, 0.0); 2];
        for t in 0..2 {
            dense[t] = stat(&mut samples[t]);
        }
        for (i, name) in names.iter().enumerate() {
            for t in 0..2 {
                let (med, min) = stat(&mut samples[i * 2 + t]);
                println!(
                    "{n}x{k} batch {batch:4} {name:>10} threads {}: {med:8.1} us (min {min:8.1})  dense/this med {:.2} min {:.2}",
                    t + 1,
                    dense[t].0 / med,
                    dense[t].1 / min
                );
            }
        }
    }
}
