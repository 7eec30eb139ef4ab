//! Times the float32 sparse Linear product (CSR and BSR) on one shape and
//! sparsity, for several batches, one and two threads, round-robin in one
//! process: `cargo run --release --example sparse_time -- N K SPARSITY [BATCH..]`.
use hwreg_kernels::exec::Ctx;
use hwreg_kernels::sparse::{bsr_f32_linear_into, Bsr};
use std::time::Instant;

mod common;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args[0].parse().expect("N");
    let k: usize = args[1].parse().expect("K");
    let s: f64 = args[2].parse().expect("sparsity");
    let batches: Vec<usize> = args[3..]
        .iter()
        .map(|a| a.parse().expect("batch"))
        .collect();
    let mut seed = 12345u64;
    let mut rnd = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    // Blocks (`HWREG_BLOCKS=1x1,1x8,4x4`), each pruned at the block level so
    // that every format stores the same fraction of the weights.
    let spec = std::env::var("HWREG_BLOCKS").unwrap_or_else(|_| "1x1,1x8,4x4".into());
    let formats: Vec<(usize, usize)> = spec
        .split(',')
        .map(|b| {
            let (r, c) = b.split_once('x').expect("RxC");
            (r.parse().expect("r"), c.parse().expect("c"))
        })
        .collect();
    let mats: Vec<Bsr<f32>> = formats
        .iter()
        .map(|&(r, c)| {
            let keep: Vec<bool> = (0..n.div_ceil(r) * k.div_ceil(c))
                .map(|_| rnd() >= s)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| {
                    let (o, j) = (i / k, i % k);
                    if keep[(o / r) * k.div_ceil(c) + j / c] {
                        (rnd() * 2.0 - 1.0) as f32
                    } else {
                        0.0
                    }
                })
                .collect();
            Bsr::from_dense(&w, n, k, None, r, c).expect("bsr")
        })
        .collect();
    for &batch in &batches {
        let x: Vec<f32> = (0..batch * k).map(|_| rnd() as f32 - 0.5).collect();
        // One output reused, as a caller's buffer (no allocation in the timing).
        let mut y = vec![0f32; batch * n];
        let mut samples = vec![Vec::new(); mats.len() * 2];
        for _ in 0..15 {
            for (i, m) in mats.iter().enumerate() {
                for t in 0..2 {
                    let ctx = Ctx::new(t + 1);
                    let reps = 20;
                    let (t0, c0) = (Instant::now(), common::cpu_now());
                    for _ in 0..reps {
                        bsr_f32_linear_into(&ctx, m, &x, batch, None, false, &mut y).unwrap();
                        std::hint::black_box(&mut y);
                    }
                    // One thread: CPU time of this thread; two: wall time.
                    let sec = if t == 0 {
                        common::cpu_now() - c0
                    } else {
                        t0.elapsed().as_secs_f64()
                    };
                    samples[i * 2 + t].push(sec / reps as f64 * 1e6);
                }
            }
        }
        for (i, &(r, c)) in formats.iter().enumerate() {
            for t in 0..2 {
                let v = &mut samples[i * 2 + t];
                v.sort_by(|a, b| a.partial_cmp(b).unwrap());
                let (med, min) = (v[v.len() / 2], v[0]);
                println!("{n}x{k} s={s} batch {batch:4} {r}x{c} threads {}: {med:8.1} us (min {min:8.1})", t + 1);
            }
        }
    }
}
