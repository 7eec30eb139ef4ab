//! Times the int4 layer (`int4::linear_into`, per channel and groups of 128
//! and 32) beside the packed int8 GEMM of the same shape, on one and two
//! threads, round-robin in one process (so a noisy machine's drift hits all
//! alike): `cargo run --release --example int4_time -- M K N [rounds]`.
//! Prints the median and the fastest of the rounds' per-call means.
use hwreg_kernels::exec::Ctx;
use hwreg_kernels::gemm::{self, output::OutputStep, ASource, PackedB, ZeroPoint};
use hwreg_kernels::int4::{self, Int4Scratch, Int4Weight};
use std::time::Instant;

mod common;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dims: Vec<usize> = args[..3]
        .iter()
        .map(|a| a.parse().expect("integer argument"))
        .collect();
    let rounds: usize = args.get(3).map_or(15, |a| a.parse().expect("rounds"));
    let (m, k, n) = (dims[0], dims[1], dims[2]);
    let mut lcg = common::Lcg::new(12345);
    let mut rnd = move || lcg.byte();
    let a: Vec<u8> = (0..m * k).map(|_| rnd()).collect();
    let b: Vec<i8> = (0..k * n).map(|_| rnd() as i8).collect();
    let pb = PackedB::from_kn_i8(&Ctx::current(), &b, k, n, ZeroPoint::Scalar(0)).unwrap();
    let x: Vec<f32> = (0..m * k).map(|_| f32::from(rnd()) / 64.0 - 2.0).collect();
    let packed: Vec<u8> = (0..n * k.div_ceil(2)).map(|_| rnd()).collect();
    let weights: Vec<(&str, Int4Weight)> =
        [("ch  ", None), ("g128", Some(128)), ("g32 ", Some(32))]
            .into_iter()
            .map(|(name, g): (&str, Option<usize>)| {
                let ng = k.div_ceil(g.unwrap_or(k));
                let scales: Vec<f32> = (0..n * ng).map(|i| 0.01 + (i % 7) as f32 * 1e-3).collect();
                (
                    name,
                    Int4Weight::new(&packed, n, k, g, &scales, None).unwrap(),
                )
            })
            .collect();
    let mut out8 = vec![0i32; m * n];
    let mut out4 = vec![0f32; m * n];
    let mut scratch = Int4Scratch::default();
    let names: Vec<&str> = std::iter::once("int8")
        .chain(weights.iter().map(|w| w.0))
        .collect();
    let modes: Vec<(usize, usize)> = (0..names.len()).flat_map(|i| [(i, 1), (i, 2)]).collect();
    let mut call = |ctx: &Ctx, i: usize| {
        if i == 0 {
            gemm::matmul(
                ctx,
                ASource::U8(&a),
                m,
                k,
                ZeroPoint::Scalar(0),
                &pb,
                &OutputStep::Int32,
                &mut out8,
            )
            .unwrap()
        } else {
            let w = &weights[i - 1].1;
            int4::linear_into(ctx, &x, m, k, w, None, false, &mut scratch, &mut out4).unwrap()
        }
    };
    let mut samples = vec![Vec::new(); modes.len()];
    for _ in 0..rounds {
        for (s, &(i, threads)) in samples.iter_mut().zip(&modes) {
            let ctx = Ctx::new(threads);
            let t0 = Instant::now();
            while t0.elapsed().as_secs_f64() < 0.01 {
                call(&ctx, i);
            }
            let (mut spent, mut calls) = (0.0, 0u32);
            while spent < 0.01 {
                let t0 = Instant::now();
                call(&ctx, i);
                spent += t0.elapsed().as_secs_f64();
                calls += 1;
            }
            s.push(spent / calls as f64);
        }
    }
    let mut med = vec![0.0; modes.len()];
    for (j, (s, &(i, threads))) in samples.iter_mut().zip(&modes).enumerate() {
        s.sort_by(|x, y| x.total_cmp(y));
        med[j] = s[s.len() / 2];
        let base = med[threads - 1];
        println!(
            "{m}x{k}x{n} {threads} thr {}: median {:7.1} us  min {:7.1} us  int8/this {:.2}",
            names[i],
            med[j] * 1e6,
            s[0] * 1e6,
            base / med[j]
        );
    }
}
