//! Where the time of the int8 runtime's NHWC convolutions goes, per shape
//! of resnet18 at 224×224: on 1 thread (thread CPU time, round-robin,
//! median of the rounds), the plan's path (the implicit GEMM that unfolds
//! each row block, [`gemm::ARows::Conv`], into uint8 with the static fused
//! requantizing step) beside the same GEMM over an unfolded A (so the
//! difference is the unfold), both with a plain `i32` output (so the
//! difference is the output step), and the unfold alone:
//! `cargo run --release -p hwreg-kernels --example conv_time [-- BATCH]`.
use hwreg_kernels::conv::{nhwc, Window};
use hwreg_kernels::exec::Ctx;
use hwreg_kernels::gemm::{
    self,
    output::{Fused, OutputStep, Param, Requant},
    ARows, ASource, ConvRows, PackedB, ZeroPoint,
};

mod common;

use common::cpu_now;

/// (name, c, h, w, k, stride, pad, out channels) of resnet18's convolutions.
const SHAPES: [(&str, usize, usize, usize, usize, usize, usize, usize); 7] = [
    ("stem 7x7/2 3->64", 3, 224, 224, 7, 2, 3, 64),
    ("l1 3x3 64->64", 64, 56, 56, 3, 1, 1, 64),
    ("l2.0 3x3/2 64->128", 64, 56, 56, 3, 2, 1, 128),
    ("l2 3x3 128->128", 128, 28, 28, 3, 1, 1, 128),
    ("l3 3x3 256->256", 256, 14, 14, 3, 1, 1, 256),
    ("l4 3x3 512->512", 512, 7, 7, 3, 1, 1, 512),
    ("l2 down 1x1/2 64->128", 64, 56, 56, 1, 2, 0, 128),
];

struct Case {
    name: &'static str,
    x: Vec<u8>,
    win: Window,
    pb: PackedB,
    cols: Vec<u8>,
    scale: Vec<f32>,
    bias: Vec<f32>,
    out_u8: Vec<u8>,
    out_i32: Vec<i32>,
}

const ZA: u8 = 113;

impl Case {
    #[allow(clippy::too_many_arguments)]
    fn new(batch: usize, s: (&'static str, usize, usize, usize, usize, usize, usize, usize)) -> Case {
        let (name, c, h, w, k, st, p, n) = s;
        let mut lcg = common::Lcg::new(777 + c as u64);
        let win = Window::new(batch, c, h, w, (k, k), (st, st), (p, p))
            .check()
            .expect("window");
        let x: Vec<u8> = (0..win.in_len()).map(|_| lcg.byte()).collect();
        let (m, taps) = win.cols_shape();
        // Weights of a quantized layer: small symmetric int8 (as calibrated ones are).
        let b: Vec<i8> = (0..taps * n).map(|_| (lcg.byte() as i8) / 4).collect();
        let ctx = Ctx::new(1);
        let pb = PackedB::from_kn_i8(&ctx, &b, taps, n, ZeroPoint::Scalar(0)).expect("pack B");
        let pb = pb.padded_k().unwrap_or(pb);
        let kp = pb.k();
        let mut cols = vec![0u8; m * kp];
        nhwc::im2col_rows_into(&ctx, &x, win, ZA, kp, 0, &mut cols).expect("unfold");
        Case {
            name,
            x,
            win,
            pb,
            cols,
            scale: (0..n).map(|j| 1e-3 * (1.0 + j as f32 / n as f32)).collect(),
            bias: (0..n).map(|j| j as f32 * 0.01 - 0.3).collect(),
            out_u8: vec![0; m * n],
            out_i32: vec![0; m * n],
        }
    }

    fn m(&self) -> usize {
        self.win.cols_shape().0
    }

    fn step(&self) -> OutputStep<'_> {
        OutputStep::Fused(Fused {
            row_scale: Param::Scalar(0.02),
            col_scale: Param::PerIndex(&self.scale),
            bias: Some(&self.bias),
            residual: None,
            relu: true,
            requant: Some(Requant {
                y_scale: 0.05,
                y_zero_point: 0,
                lo: 0,
                hi: 255,
            }),
        })
    }

    /// Variant `v`: 0 the plan's path, 1 unfolded A with the same step,
    /// 2 unfolded A into `i32`, 3 the plan's path into `i32`, 4 the unfold
    /// alone (into the whole column matrix, the portable code).
    fn call(&mut self, ctx: &Ctx, v: usize) {
        let (m, k) = (self.m(), self.pb.k());
        let zp = ZeroPoint::Scalar(ZA as i32);
        match v {
            0 => {
                let a = ARows::Conv(ConvRows::new(&self.x, self.win, ZA).expect("rows"));
                let mut out = std::mem::take(&mut self.out_u8);
                let step = self.step();
                gemm::matmul_rows(ctx, a, m, k, zp, &self.pb, &step, &mut out).expect("conv");
                self.out_u8 = out;
            }
            1 => {
                let mut out = std::mem::take(&mut self.out_u8);
                let step = self.step();
                let a = ASource::U8(&self.cols);
                gemm::matmul(ctx, a, m, k, zp, &self.pb, &step, &mut out).expect("gemm");
                self.out_u8 = out;
            }
            2 => {
                let a = ASource::U8(&self.cols);
                gemm::matmul(ctx, a, m, k, zp, &self.pb, &OutputStep::Int32, &mut self.out_i32)
                    .expect("gemm");
            }
            3 => {
                let a = ARows::Conv(ConvRows::new(&self.x, self.win, ZA).expect("rows"));
                let (pb, out) = (&self.pb, &mut self.out_i32);
                gemm::matmul_rows(ctx, a, m, k, zp, pb, &OutputStep::Int32, out).expect("conv");
            }
            _ => {
                nhwc::im2col_rows_into(ctx, &self.x, self.win, ZA, k, 0, &mut self.cols)
                    .expect("unfold");
            }
        }
    }
}

fn median(s: &mut [f64]) -> f64 {
    s.sort_by(|x, y| x.total_cmp(y));
    s[s.len() / 2]
}

const VARIANTS: usize = 5;

fn main() {
    let batch: usize = std::env::args()
        .nth(1)
        .map_or(2, |a| a.parse().expect("batch"));
    let ctx = Ctx::new(1);
    let mut cases: Vec<Case> = SHAPES.iter().map(|&s| Case::new(batch, s)).collect();
    let mut samples = vec![Vec::new(); VARIANTS * cases.len()];
    for _ in 0..7 {
        for (i, s) in samples.iter_mut().enumerate() {
            let (c, v) = (&mut cases[i / VARIANTS], i % VARIANTS);
            c.call(&ctx, v);
            let (t0, mut calls) = (cpu_now(), 0u32);
            while cpu_now() - t0 < 0.05 {
                c.call(&ctx, v);
                calls += 1;
            }
            s.push((cpu_now() - t0) / calls as f64);
        }
    }
    println!("batch {batch}, 1 thread, thread CPU ms (median of 7 rounds)");
    println!("| conv | M x K x N | plan (conv rows, u8 step) | GOP/s | unfolded A, u8 step | unfolded A, i32 | conv rows, i32 | unfold alone |");
    println!("|---|---|---|---|---|---|---|---|");
    for (s, c) in samples.chunks_exact_mut(VARIANTS).zip(&cases) {
        let t: Vec<f64> = s.iter_mut().map(|v| median(v) * 1e3).collect();
        let (m, k, n) = (c.m(), c.pb.k(), c.pb.n());
        let gops = 2.0 * (m * c.win.cols_shape().1 * n) as f64 / t[0] / 1e6;
        println!(
            "| {} | {m} x {k} x {n} | {:.3} | {gops:.0} | {:.3} | {:.3} | {:.3} | {:.3} |",
            c.name, t[0], t[1], t[2], t[3], t[4]
        );
    }
}
