//! The depthwise kernel against a naive i64 reference.

use super::*;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Σ over in-bounds taps of (x - zp) · w, in i64, straight from the definition.
fn reference(x: &[u8], zp: &[i32], w: &[i8], g: &Depthwise) -> Vec<i64> {
    let (oh, ow) = g.out_hw().unwrap();
    let (kh, kw) = g.kernel;
    let [pt, pl, _, _] = g.padding;
    let mut out = vec![0i64; g.n * oh * ow * g.c];
    for n in 0..g.n {
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..g.c {
                    let mut s = 0i64;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * g.stride.0 + ky * g.dilation.0) as i64 - pt as i64;
                            let ix = (ox * g.stride.1 + kx * g.dilation.1) as i64 - pl as i64;
                            if iy < 0 || ix < 0 || iy >= g.h as i64 || ix >= g.w as i64 {
                                continue;
                            }
                            let xv =
                                x[((n * g.h + iy as usize) * g.w + ix as usize) * g.c + ch] as i64;
                            s += (xv - zp[n] as i64) * w[(ky * kw + kx) * g.c + ch] as i64;
                        }
                    }
                    out[((n * oh + oy) * ow + ox) * g.c + ch] = s;
                }
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn geom(
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    k: (usize, usize),
    s: (usize, usize),
    d: (usize, usize),
    p: [usize; 4],
) -> Depthwise {
    Depthwise {
        n,
        h,
        w,
        c,
        kernel: k,
        stride: s,
        dilation: d,
        padding: p,
    }
}

/// Runs every entry point on poisoned outputs, on every path, and compares
/// with the reference (the float and uint8 formulas applied to it).
fn check_case(x: &[u8], zp: &[i32], w: &[i8], g: &Depthwise, rng: &mut Rng) {
    let want = reference(x, zp, w, g);
    let scales: Vec<f32> = (0..g.n)
        .map(|_| 0.001 + rng.below(1000) as f32 * 1e-4)
        .collect();
    let cs: Vec<f32> = (0..g.c)
        .map(|_| 0.002 + rng.below(1000) as f32 * 1e-5)
        .collect();
    let bias: Vec<f32> = (0..g.c)
        .map(|_| rng.below(2001) as f32 * 1e-3 - 1.0)
        .collect();
    let (oh, ow) = g.out_hw().unwrap();
    let float = |i: usize, b: Option<&[f32]>, relu: bool| {
        let (img, ch) = (i / (oh * ow * g.c), i % g.c);
        let f = (want[i] as f32 * scales[img]) * cs[ch] + b.map_or(0.0, |b| b[ch]);
        if relu {
            f.max(0.0)
        } else {
            f
        }
    };
    crate::cpu::each_isa(|isa| {
        let mut got = vec![i32::MIN + 7; want.len()];
        depthwise_conv2d_i32(&crate::exec::TEST, x, zp, w, g, &mut got).unwrap();
        for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a as i64, b, "{isa:?}: i32 output {i} of {g:?}");
        }
        // The weight widened beforehand (a graph plan's): the same sums.
        let wide = Wide::new(w, g.kernel, g.c).unwrap();
        let mut got = vec![MaybeUninit::new(i32::MIN + 7); want.len()];
        depthwise_conv2d_wide(
            &crate::exec::TEST,
            x,
            zp,
            &wide,
            g,
            &OutputStep::Int32,
            &mut got,
        )
        .unwrap();
        for (i, (a, &b)) in got.iter().zip(&want).enumerate() {
            // SAFETY: every element was written (the kernel's contract, checked here).
            let a = unsafe { a.assume_init() };
            assert_eq!(a as i64, b, "{isa:?}: widened i32 output {i} of {g:?}");
        }
        for (b, relu) in [
            (None, false),
            (Some(&bias[..]), false),
            (Some(&bias[..]), true),
            (None, true),
        ] {
            let mut out = vec![f32::NAN; want.len()];
            depthwise_conv2d_f32(
                &crate::exec::TEST,
                x,
                zp,
                &scales,
                w,
                &cs,
                b,
                relu,
                g,
                &mut out,
            )
            .unwrap();
            for (i, &o) in out.iter().enumerate() {
                let f = float(i, b, relu);
                assert_eq!(o.to_bits(), f.to_bits(), "{isa:?}: f32 output {i} of {g:?}");
            }
        }
        // uint8 out (the plan's static edges): QuantizeLinear of the float
        // value, clamped to a ReLU6's quantized bounds.
        let (ys, yzp) = (0.02f32, 5);
        let hi = crate::quant::quant1(6.0, ys, yzp as f32, 0.0, 255.0) as i32;
        let step = OutputStep::Fused(Fused {
            row_scale: Param::PerIndex(&scales),
            col_scale: Param::PerIndex(&cs),
            bias: Some(&bias),
            residual: None,
            relu: true,
            requant: Some(crate::gemm::output::Requant {
                y_scale: ys,
                y_zero_point: yzp,
                lo: yzp,
                hi,
            }),
        });
        let mut out = vec![MaybeUninit::new(0xa5u8); want.len()];
        depthwise_conv2d(&crate::exec::TEST, x, zp, w, g, &step, &mut out).unwrap();
        let mut out_wide = vec![MaybeUninit::new(0x5au8); want.len()];
        depthwise_conv2d_wide(&crate::exec::TEST, x, zp, &wide, g, &step, &mut out_wide).unwrap();
        for (i, (o, ow)) in out.iter().zip(&out_wide).enumerate() {
            // SAFETY: as below.
            assert_eq!(
                unsafe { ow.assume_init() },
                unsafe { o.assume_init() },
                "{isa:?}: widened u8 output {i} of {g:?}"
            );
            let q = crate::quant::quant1(float(i, Some(&bias), true), ys, yzp as f32, 0.0, 255.0);
            let q = (q as i32).clamp(yzp, hi) as u8;
            // SAFETY: every element was written (the kernel's contract, checked here).
            assert_eq!(
                unsafe { o.assume_init() },
                q,
                "{isa:?}: u8 output {i} of {g:?}"
            );
        }
    });
}

fn random_case(rng: &mut Rng, g: &Depthwise) {
    let (xs, ws, _) = g.sizes().unwrap();
    let x: Vec<u8> = (0..xs).map(|_| rng.next() as u8).collect();
    let w: Vec<i8> = (0..ws).map(|_| rng.next() as i8).collect();
    let zp: Vec<i32> = (0..g.n).map(|_| rng.below(256) as i32).collect();
    check_case(&x, &zp, &w, g, rng);
}

#[test]
fn matches_reference_on_awkward_shapes() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for &c in &[1usize, 3, 8, 17, 64, 129] {
        for _ in 0..12 {
            let h = 1 + rng.below(9);
            let w = 1 + rng.below(9);
            let k = (1 + rng.below(5), 1 + rng.below(5));
            let s = (1 + rng.below(3), 1 + rng.below(3));
            let d = (1 + rng.below(3), 1 + rng.below(3));
            let p = [rng.below(4), rng.below(4), rng.below(4), rng.below(4)];
            let g = geom(1 + rng.below(3), h, w, c, k, s, d, p);
            if g.out_hw().is_err() {
                continue;
            }
            random_case(&mut rng, &g);
        }
    }
}

#[test]
fn common_mobilenet_shapes() {
    let mut rng = Rng(42);
    for &(c, k, s, p) in &[
        (32usize, 3usize, 1usize, 1usize),
        (96, 3, 2, 1),
        (40, 5, 1, 2),
        (33, 5, 2, 2),
    ] {
        random_case(
            &mut rng,
            &geom(2, 9, 8, c, (k, k), (s, s), (1, 1), [p, p, p, p]),
        );
    }
    // Dilation 2, asymmetric padding (TF "SAME" with stride 2).
    random_case(
        &mut rng,
        &geom(3, 7, 6, 65, (3, 3), (2, 2), (2, 2), [0, 1, 2, 3]),
    );
}

#[test]
fn extreme_values_are_exact() {
    let mut rng = Rng(7);
    for &c in &[1usize, 3, 8, 17, 64, 129] {
        for &(xv, wv, zp) in &[
            (255u8, -128i8, 0i32),
            (0, -128, 255),
            (255, 127, 0),
            (0, 127, 255),
            (255, -128, 255),
            (0, -128, 0),
        ] {
            let g = geom(2, 5, 4, c, (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]);
            let (xs, ws, _) = g.sizes().unwrap();
            check_case(&vec![xv; xs], &[zp, zp], &vec![wv; ws], &g, &mut rng);
        }
    }
    // The largest kernel whose sum still fits i32 (every tap at the extreme).
    let g = geom(1, 256, 257, 2, (256, 257), (1, 1), (1, 1), [0; 4]);
    assert!(g.taps().is_ok());
    let (xs, ws, _) = g.sizes().unwrap();
    let mut out = [0i32; 2];
    depthwise_conv2d_i32(
        &crate::exec::TEST,
        &vec![0; xs],
        &[255],
        &vec![-128; ws],
        &g,
        &mut out,
    )
    .unwrap();
    assert_eq!(out, [256 * 257 * 255 * 128; 2]);
}

#[test]
fn all_padding_windows_give_zero_then_bias() {
    // Output pixels whose every tap is padding: acc 0, output = bias.
    let g = geom(1, 1, 1, 3, (1, 1), (1, 1), (1, 1), [1, 1, 1, 1]);
    let mut out = [f32::NAN; 27];
    depthwise_conv2d_f32(
        &crate::exec::TEST,
        &[9, 9, 9],
        &[3],
        &[1.0],
        &[1, 1, 1],
        &[1.0; 3],
        Some(&[0.5, -1.0, 2.0]),
        false,
        &g,
        &mut out,
    )
    .unwrap();
    assert_eq!(&out[..3], &[0.5, -1.0, 2.0]);
    assert_eq!(&out[12..15], &[6.0 + 0.5, 6.0 - 1.0, 6.0 + 2.0]);
}

#[test]
fn large_work_runs_threaded_and_matches() {
    // Above the parallel threshold: (image, row) tasks on the team.
    let mut rng = Rng(99);
    random_case(
        &mut rng,
        &geom(3, 20, 19, 70, (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
    );
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let g = geom(1, 4, 4, 2, (3, 3), (1, 1), (1, 1), [0; 4]);
    let (x, w) = (vec![0u8; 32], vec![0i8; 18]);
    let mut out = vec![0i32; 8];
    let run = |g: &Depthwise, x: &[u8], zp: &[i32], w: &[i8], out: &mut [i32]| {
        depthwise_conv2d_i32(&crate::exec::TEST, x, zp, w, g, out)
    };
    assert!(run(&g, &x, &[0], &w, &mut out).is_ok());
    assert!(matches!(
        run(&g, &x[1..], &[0], &w, &mut out),
        Err(crate::Error::Shape(_))
    ));
    assert!(matches!(
        run(&g, &x, &[0], &w[1..], &mut out),
        Err(crate::Error::Shape(_))
    ));
    assert!(matches!(
        run(&g, &x, &[0, 0], &w, &mut out),
        Err(crate::Error::Shape(_))
    ));
    assert!(matches!(
        run(&g, &x, &[256], &w, &mut out),
        Err(crate::Error::Value(_))
    ));
    assert!(matches!(
        run(&g, &x, &[-1], &w, &mut out),
        Err(crate::Error::Value(_))
    ));
    assert!(matches!(
        run(&g, &x, &[0], &w, &mut out[1..]),
        Err(crate::Error::Shape(_))
    ));
    for bad in [
        Depthwise {
            stride: (0, 1),
            ..g
        },
        Depthwise {
            dilation: (1, 0),
            ..g
        },
        Depthwise {
            kernel: (0, 3),
            ..g
        },
        Depthwise {
            kernel: (5, 3),
            ..g
        },
        Depthwise {
            dilation: (2, 2),
            ..g
        },
        Depthwise {
            padding: [usize::MAX, 1, 0, 0],
            ..g
        },
        Depthwise {
            dilation: (usize::MAX, 1),
            ..g
        },
        Depthwise {
            kernel: (300, 300),
            h: 300,
            w: 300,
            ..g
        },
        Depthwise { n: usize::MAX, ..g },
    ] {
        assert!(run(&bad, &x, &[0], &w, &mut out).is_err(), "{bad:?}");
    }
    let f = |s: &[f32], cs: &[f32], b: Option<&[f32]>| {
        let mut o = vec![0f32; 8];
        depthwise_conv2d_f32(
            &crate::exec::TEST,
            &x,
            &[0],
            s,
            &w,
            cs,
            b,
            false,
            &g,
            &mut o,
        )
    };
    assert!(f(&[1.0], &[1.0, 1.0], None).is_ok());
    assert!(f(&[0.0], &[1.0, 1.0], None).is_err());
    assert!(f(&[f32::NAN], &[1.0, 1.0], None).is_err());
    assert!(f(&[1.0, 1.0], &[1.0, 1.0], None).is_err());
    assert!(f(&[1.0], &[1.0], None).is_err());
    assert!(f(&[1.0], &[1.0, f32::INFINITY], None).is_err());
    assert!(f(&[1.0], &[1.0, 1.0], Some(&[0.0])).is_err());
}

#[test]
fn empty_batch_or_channels_write_nothing() {
    let g = geom(0, 3, 3, 4, (3, 3), (1, 1), (1, 1), [0; 4]);
    depthwise_conv2d_i32(&crate::exec::TEST, &[], &[], &[0; 36], &g, &mut []).unwrap();
    let g = geom(2, 3, 3, 0, (3, 3), (1, 1), (1, 1), [0; 4]);
    depthwise_conv2d_f32(
        &crate::exec::TEST,
        &[],
        &[0, 0],
        &[1.0, 1.0],
        &[],
        &[],
        None,
        false,
        &g,
        &mut [],
    )
    .unwrap();
}

#[test]
fn a_residual_in_the_step_is_refused() {
    let g = geom(1, 3, 3, 2, (3, 3), (1, 1), (1, 1), [1; 4]);
    let r = [0f32; 18];
    let step = OutputStep::Fused(Fused {
        row_scale: Param::Scalar(1.0),
        col_scale: Param::Scalar(1.0),
        bias: None,
        residual: Some((crate::gemm::output::Residual::F32(&r), 2)),
        relu: false,
        requant: None,
    });
    let mut out = vec![MaybeUninit::new(0f32); 18];
    let e = depthwise_conv2d(
        &crate::exec::TEST,
        &[0; 18],
        &[0],
        &[0; 18],
        &g,
        &step,
        &mut out,
    );
    assert!(matches!(e, Err(crate::Error::Value(_))), "{e:?}");
}

#[test]
fn bands_split_over_rows_and_threads_match_one_band() {
    // Tall images at batch 1: several row blocks per image (threads), and a
    // band budget that splits rows further (wide rows of many channels).
    let mut rng = Rng(5);
    for g in [
        geom(1, 40, 9, 24, (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
        geom(1, 33, 200, 72, (5, 5), (2, 2), (1, 1), [2, 2, 2, 2]),
        geom(2, 31, 130, 200, (3, 3), (1, 1), (2, 1), [2, 1, 2, 1]),
    ] {
        random_case(&mut rng, &g);
    }
}

/// The band is a reused per-thread buffer that is not cleared between
/// calls: a padded call after one that left large values in it (and after
/// a wider one) still sees its padding as 0.
#[test]
fn a_stale_band_from_an_earlier_call_does_not_leak_into_the_padding() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let big = geom(1, 9, 9, 40, (3, 3), (1, 1), (1, 1), [0, 0, 0, 0]);
    let small = geom(1, 3, 3, 37, (3, 3), (1, 1), (1, 1), [1, 2, 1, 2]);
    crate::cpu::each_isa(|_| {
        for g in [&big, &small, &big, &small] {
            let (xs, ws, os) = g.sizes().unwrap();
            // Zero point 0 and x = 255: the band is full of 255s afterwards.
            let x = vec![255u8; xs];
            let w: Vec<i8> = (0..ws).map(|_| rng.next() as i8).collect();
            let want = reference(&x, &[0], &w, g);
            let mut got = vec![0i32; os];
            depthwise_conv2d_i32(&crate::exec::TEST, &x, &[0], &w, g, &mut got).unwrap();
            assert!(got.iter().zip(&want).all(|(&a, &b)| a as i64 == b), "{g:?}");
        }
    });
}

#[test]
fn a_widened_weight_checks_its_shape_and_geometry() {
    let g = geom(1, 4, 4, 5, (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]);
    let (xs, ws, os) = g.sizes().unwrap();
    let w = vec![1i8; ws];
    assert!(matches!(
        Wide::new(&w[1..], (3, 3), 5),
        Err(crate::error::Error::Shape(_))
    ));
    assert!(matches!(
        Wide::new(&w, (0, 3), 5),
        Err(crate::error::Error::Value(_))
    ));
    assert!(matches!(
        Wide::new(&w, (3, 3), usize::MAX / 4),
        Err(crate::error::Error::Shape(_))
    ));
    let x = vec![3u8; xs];
    let mut out = vec![MaybeUninit::new(0i32); os];
    // Same element count, other kernel / channels: refused, not misread.
    for (k, c) in [((1, 9), 5), ((9, 1), 5)] {
        let other = Wide::new(&w, k, c).unwrap();
        let e = depthwise_conv2d_wide(
            &crate::exec::TEST,
            &x,
            &[0],
            &other,
            &g,
            &OutputStep::Int32,
            &mut out,
        );
        assert!(
            matches!(e, Err(crate::error::Error::Shape(_))),
            "{k:?}: {e:?}"
        );
    }
    let mut plan_w = Weight::from(w.clone());
    assert!(plan_w.wide().is_none());
    plan_w.prepare((3, 3), 5).unwrap();
    assert_eq!(plan_w.wide(), Some(&Wide::new(&w, (3, 3), 5).unwrap()));
    assert_eq!(&plan_w[..], &w[..]);
    assert!(plan_w.prepare((3, 3), 4).is_err());
}
