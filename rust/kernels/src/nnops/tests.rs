//! Naive float64 references for every kernel of this module, on awkward sizes.

use super::depthwise::{depthwise_conv2d, depthwise_conv2d_backward, Depthwise};
use super::gelu::{self, Approximate};
use super::math;
use super::norm::{layer_norm_backward, layer_norm_forward};
use super::softmax::{
    log_softmax_backward, log_softmax_forward, softmax_backward, softmax_forward,
};
use crate::error::Error;

/// Deterministic values in [-1, 1) (xorshift).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f64], rtol: f64, atol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{what}[{i}]: got {g}, want {w} (err {err:e})"
        );
    }
}

// ---------------------------------------------------------------- erf / exp

/// erf in f64 to ~1e-14: Maclaurin series below 2.5, Lentz-free continued fraction of erfc above.
fn erf_ref(x: f64) -> f64 {
    let a = x.abs();
    let v = if a < 2.5 {
        let (mut term, mut sum, mut n) = (a, a, 0.0f64);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        let mut k = a;
        for i in (1..200).rev() {
            k = a + (i as f64 / 2.0) / k;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * k)
    };
    if x < 0.0 {
        -v
    } else {
        v
    }
}

fn erfc_ref(x: f64) -> f64 {
    if x < 2.5 {
        1.0 - erf_ref(x)
    } else {
        let mut k = x;
        for i in (1..200).rev() {
            k = x + (i as f64 / 2.0) / k;
        }
        (-x * x).exp() / (std::f64::consts::PI.sqrt() * k)
    }
}

#[test]
fn erf_reference_is_sane() {
    assert!((erf_ref(0.5) - 0.520_499_877_813_046_5).abs() < 1e-15);
    assert!((erf_ref(3.0) - 0.999_977_909_503_001_4).abs() < 1e-15);
    assert!((erfc_ref(4.0) - 1.541_725_790_028_002e-8).abs() < 1e-20);
}

#[test]
fn exp_matches_f64_within_two_ulp_and_handles_the_ends() {
    let mut x = -103.0f32;
    while x < 88.7 {
        let got = math::exp(x) as f64;
        let want = (x as f64).exp();
        // relative in the normal range, one subnormal step below it
        let tol = if x > -87.3 { 2.5e-7 * want } else { 1.5e-45 };
        assert!((got - want).abs() <= tol, "exp({x}) = {got}, want {want}");
        x += 0.0137;
    }
    assert_eq!(math::exp(-200.0), 0.0);
    assert_eq!(math::exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(math::exp(100.0), f32::INFINITY);
    assert_eq!(math::exp(f32::INFINITY), f32::INFINITY);
    assert!(math::exp(f32::NAN).is_nan());
    assert_eq!(math::exp(0.0), 1.0);
}

#[test]
fn erf_and_phi_against_a_high_precision_reference() {
    let mut worst_abs = 0.0f64;
    let mut x = -7.0f32;
    while x < 7.0 {
        let got = math::erf(x) as f64;
        let want = erf_ref(x as f64);
        let err = (got - want).abs();
        worst_abs = worst_abs.max(err);
        // relative near 0 too
        assert!(
            err <= 2e-7 * want.abs().max(1e-30) + 1.5e-7,
            "erf({x}) = {got}, want {want}"
        );
        // Φ(x) = erfc(-x/√2)/2 keeps relative precision in the left tail
        let p = math::phi(x) as f64;
        let pw = 0.5 * erfc_ref(-(x as f64) / 2f64.sqrt());
        assert!(
            (p - pw).abs() <= 1e-6 * pw + 1e-7,
            "phi({x}) = {p}, want {pw}"
        );
        x += 0.001_37;
    }
    assert!(worst_abs < 1.5e-7, "worst {worst_abs:e}");
    for x in [1e-30f32, 1e-8, 1e-4, -3e-3] {
        let want = erf_ref(x as f64);
        assert!(
            ((math::erf(x) as f64 - want) / want).abs() < 2e-7,
            "erf({x})"
        );
    }
    assert_eq!(math::erf(f32::INFINITY), 1.0);
    assert_eq!(math::erf(f32::NEG_INFINITY), -1.0);
    assert!(math::erf(f32::NAN).is_nan());
    assert_eq!(math::erf(0.0), 0.0);
}

// ---------------------------------------------------------------- layer norm

const DS: [usize; 5] = [1, 3, 7, 64, 1000];

fn ln_ref(
    x: &[f32],
    d: usize,
    w: Option<&[f32]>,
    b: Option<&[f32]>,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut y = Vec::new();
    let (mut ms, mut is) = (Vec::new(), Vec::new());
    for r in x.chunks(d) {
        let m = r.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = r.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (i, &v) in r.iter().enumerate() {
            let xh = (v as f64 - m) * inv;
            y.push(xh * w.map_or(1.0, |w| w[i] as f64) + b.map_or(0.0, |b| b[i] as f64));
        }
        ms.push(m);
        is.push(inv);
    }
    (y, ms, is)
}

fn ln_backward_ref(
    dy: &[f32],
    x: &[f32],
    d: usize,
    w: Option<&[f32]>,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (_, ms, is) = ln_ref(x, d, None, None, eps);
    let mut dx = Vec::new();
    let (mut dw, mut db) = (vec![0.0; d], vec![0.0; d]);
    for (r, (xr, gr)) in x.chunks(d).zip(dy.chunks(d)).enumerate() {
        let xh: Vec<f64> = xr.iter().map(|&v| (v as f64 - ms[r]) * is[r]).collect();
        let g: Vec<f64> = gr
            .iter()
            .enumerate()
            .map(|(i, &v)| v as f64 * w.map_or(1.0, |w| w[i] as f64))
            .collect();
        let mg = g.iter().sum::<f64>() / d as f64;
        let mgx = g.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / d as f64;
        for i in 0..d {
            dx.push(is[r] * (g[i] - mg - xh[i] * mgx));
            dw[i] += gr[i] as f64 * xh[i];
            db[i] += gr[i] as f64;
        }
    }
    (dx, dw, db)
}

#[test]
fn layer_norm_forward_and_backward_match_the_reference() {
    for d in DS {
        for rows in 1..=9 {
            for affine in 0..4 {
                let x: Vec<f32> = data(rows * d, (d * 31 + rows) as u64)
                    .iter()
                    .map(|v| v * 3.0 + 0.5)
                    .collect();
                let w: Vec<f32> = data(d, 7).iter().map(|v| 1.0 + v).collect();
                let b = data(d, 8);
                let (wo, bo) = match affine {
                    0 => (None, None),
                    1 => (Some(&w[..]), None),
                    2 => (None, Some(&b[..])),
                    _ => (Some(&w[..]), Some(&b[..])),
                };
                let eps = 1e-5;
                let f = layer_norm_forward(&crate::exec::TEST, &x, rows, d, wo, bo, eps).unwrap();
                let (y, m, inv) = ln_ref(&x, d, wo, bo, eps);
                let what = format!("ln d={d} rows={rows} affine={affine}");
                // d = 1: y is bias exactly (x - mean = 0)
                assert_close(&f.y, &y, 1e-5, 2e-6, &what);
                assert_close(&f.mean, &m, 1e-6, 1e-7, &what);
                assert_close(&f.inv_std, &inv, 1e-6, 0.0, &what);
                let dy = data(rows * d, 99);
                let g = layer_norm_backward(
                    &crate::exec::TEST,
                    &dy,
                    &x,
                    &f.mean,
                    &f.inv_std,
                    rows,
                    d,
                    wo,
                    bo.is_some(),
                )
                .unwrap();
                let (dx, dw, db) = ln_backward_ref(&dy, &x, d, wo, eps);
                let scale = dx.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                assert_close(
                    &g.dx,
                    &dx,
                    1e-4,
                    1e-5 * scale.max(1.0),
                    &format!("{what} dx"),
                );
                assert_eq!(g.dweight.is_some(), wo.is_some());
                assert_eq!(g.dbias.is_some(), bo.is_some());
                if let Some(gw) = &g.dweight {
                    assert_close(gw, &dw, 1e-5, 1e-5, &format!("{what} dw"));
                }
                if let Some(gb) = &g.dbias {
                    assert_close(gb, &db, 1e-6, 1e-6, &format!("{what} db"));
                }
            }
        }
    }
}

#[test]
fn layer_norm_large_parallel_and_offset_rows() {
    // rows far above the threading threshold, and a large common offset (cancellation)
    let (rows, d) = (700, 768);
    let x: Vec<f32> = data(rows * d, 5).iter().map(|v| 1000.0 + v).collect();
    let f = layer_norm_forward(&crate::exec::TEST, &x, rows, d, None, None, 1e-5).unwrap();
    let (y, _, _) = ln_ref(&x, d, None, None, 1e-5);
    assert_close(&f.y, &y, 1e-4, 1e-4, "offset rows");
    let dy = data(rows * d, 6);
    let w = data(d, 3);
    let g = layer_norm_backward(
        &crate::exec::TEST,
        &dy,
        &x,
        &f.mean,
        &f.inv_std,
        rows,
        d,
        Some(&w),
        true,
    )
    .unwrap();
    let (_, dw, db) = ln_backward_ref(&dy, &x, d, Some(&w), 1e-5);
    assert_close(g.dweight.as_ref().unwrap(), &dw, 1e-4, 1e-4, "dw");
    assert_close(g.dbias.as_ref().unwrap(), &db, 1e-5, 1e-4, "db");
}

#[test]
fn layer_norm_rejects_bad_shapes() {
    let x = [0.0f32; 6];
    assert!(matches!(
        layer_norm_forward(&crate::exec::TEST, &x, 2, 4, None, None, 1e-5),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        layer_norm_forward(&crate::exec::TEST, &x, 6, 0, None, None, 1e-5),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        layer_norm_forward(&crate::exec::TEST, &x, 2, 3, Some(&[1.0; 2]), None, 1e-5),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        layer_norm_forward(&crate::exec::TEST, &x, 2, 3, None, None, -1.0),
        Err(Error::Value(_))
    ));
    assert!(matches!(
        layer_norm_forward(&crate::exec::TEST, &x, usize::MAX, 2, None, None, 1e-5),
        Err(Error::Shape(_))
    ));
    assert!(
        layer_norm_forward(&crate::exec::TEST, &[], 0, 3, None, None, 1e-5)
            .unwrap()
            .y
            .is_empty()
    );
    let f = layer_norm_forward(&crate::exec::TEST, &x, 2, 3, None, None, 1e-5).unwrap();
    assert!(matches!(
        layer_norm_backward(
            &crate::exec::TEST,
            &x,
            &x,
            &f.mean[..1],
            &f.inv_std,
            2,
            3,
            None,
            false
        ),
        Err(Error::Shape(_))
    ));
}

// ---------------------------------------------------------------- softmax

fn softmax_ref(x: &[f32], d: usize, log: bool) -> Vec<f64> {
    let mut out = Vec::new();
    for r in x.chunks(d) {
        let m = r.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
        let s: f64 = r.iter().map(|&v| (v as f64 - m).exp()).sum();
        for &v in r {
            out.push(if log {
                v as f64 - m - s.ln()
            } else {
                (v as f64 - m).exp() / s
            });
        }
    }
    out
}

#[test]
fn softmax_and_log_softmax_match_the_reference() {
    for d in DS {
        for rows in 1..=9 {
            for scale in [1.0f32, 30.0, 1e4] {
                let x: Vec<f32> = data(rows * d, (d + rows) as u64)
                    .iter()
                    .map(|v| v * scale + 1e3)
                    .collect();
                let what = format!("d={d} rows={rows} scale={scale}");
                let y = softmax_forward(&crate::exec::TEST, &x, rows, d).unwrap();
                assert_close(
                    &y,
                    &softmax_ref(&x, d, false),
                    2e-6,
                    1e-30,
                    &format!("softmax {what}"),
                );
                let ly = log_softmax_forward(&crate::exec::TEST, &x, rows, d).unwrap();
                let lref = softmax_ref(&x, d, true);
                assert_close(&ly, &lref, 1e-6, 1e-5, &format!("log_softmax {what}"));
                let dy = data(rows * d, 4);
                // backward references in f64 from the f64 outputs
                let yr = softmax_ref(&x, d, false);
                let mut dx = Vec::new();
                let mut ldx = Vec::new();
                for (yrow, grow) in yr.chunks(d).zip(dy.chunks(d)) {
                    let s: f64 = yrow.iter().zip(grow).map(|(a, &b)| a * b as f64).sum();
                    let sg: f64 = grow.iter().map(|&v| v as f64).sum();
                    for (a, &b) in yrow.iter().zip(grow) {
                        dx.push(a * (b as f64 - s));
                        ldx.push(b as f64 - a * sg);
                    }
                }
                let gx = softmax_backward(&crate::exec::TEST, &y, &dy, rows, d).unwrap();
                assert_close(&gx, &dx, 1e-4, 1e-6, &format!("softmax dx {what}"));
                let lgx = log_softmax_backward(&crate::exec::TEST, &ly, &dy, rows, d).unwrap();
                assert_close(&lgx, &ldx, 1e-4, 1e-5, &format!("log_softmax dx {what}"));
            }
        }
    }
}

#[test]
fn softmax_propagates_nan_and_handles_empty() {
    let y = softmax_forward(
        &crate::exec::TEST,
        &[1.0, f32::NAN, 2.0, 0.0, 1.0, 2.0],
        2,
        3,
    )
    .unwrap();
    assert!(y[..3].iter().all(|v| v.is_nan()));
    assert!(y[3..].iter().all(|v| v.is_finite()));
    assert!(softmax_forward(&crate::exec::TEST, &[], 0, 5)
        .unwrap()
        .is_empty());
    assert!(softmax_forward(&crate::exec::TEST, &[], 5, 0)
        .unwrap()
        .is_empty());
    assert!(matches!(
        softmax_forward(&crate::exec::TEST, &[1.0; 5], 2, 3),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        softmax_backward(&crate::exec::TEST, &[1.0; 6], &[1.0; 5], 2, 3),
        Err(Error::Shape(_))
    ));
    // a large input takes the parallel path
    let (rows, d) = (4096, 64);
    let x = data(rows * d, 11);
    assert_close(
        &softmax_forward(&crate::exec::TEST, &x, rows, d).unwrap(),
        &softmax_ref(&x, d, false),
        2e-6,
        0.0,
        "large",
    );
}

// ---------------------------------------------------------------- gelu

#[test]
fn gelu_forward_and_backward_match_the_reference() {
    let x: Vec<f32> = (0..20001)
        .map(|i| -10.0 + i as f32 * 1e-3)
        .chain([0.0, 1e-7, -1e-7, 30.0, -30.0])
        .collect();
    let dy = data(x.len(), 2);
    let k = (2.0 / std::f64::consts::PI).sqrt();
    for approx in [Approximate::None, Approximate::Tanh] {
        let mut y = Vec::new();
        let mut dx = Vec::new();
        for (&v, &g) in x.iter().zip(&dy) {
            let v = v as f64;
            let (f, df) = match approx {
                Approximate::None => {
                    let p = 0.5 * erfc_ref(-v / 2f64.sqrt());
                    (
                        v * p,
                        p + v * (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt(),
                    )
                }
                Approximate::Tanh => {
                    let t = (k * (v + 0.044715 * v * v * v)).tanh();
                    (
                        0.5 * v * (1.0 + t),
                        0.5 * (1.0 + t)
                            + 0.5 * v * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * v * v),
                    )
                }
            };
            y.push(f);
            dx.push(g as f64 * df);
        }
        let got = gelu::gelu_forward(&crate::exec::TEST, &x, approx).unwrap();
        assert_close(&got, &y, 2e-6, 1e-7, &format!("{approx:?}"));
        let gd = gelu::gelu_backward(&crate::exec::TEST, &x, &dy, approx).unwrap();
        assert_close(&gd, &dx, 2e-6, 4e-7, &format!("{approx:?} backward"));
    }
    assert!(matches!(
        gelu::gelu_backward(&crate::exec::TEST, &[1.0; 3], &[1.0; 2], Approximate::None),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        Approximate::from_name("erf"),
        Err(Error::Value(_))
    ));
    assert!(
        gelu::gelu_forward(&crate::exec::TEST, &[], Approximate::Tanh)
            .unwrap()
            .is_empty()
    );
}

// ---------------------------------------------------------------- depthwise

struct Case {
    g: Depthwise,
}

fn dw_ref(
    x: &[f32],
    wt: &[f32],
    b: Option<&[f32]>,
    g: &Depthwise,
    oh: usize,
    ow: usize,
) -> Vec<f64> {
    let oc = g.c * g.m;
    let mut y = vec![0.0f64; g.n * oc * oh * ow];
    for img in 0..g.n {
        for o in 0..oc {
            let ci = o / g.m;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = b.map_or(0.0, |b| b[o] as f64);
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let iy = (oy * g.sh + ky * g.dh) as isize - g.pads[0] as isize;
                            let ix = (ox * g.sw + kx * g.dw) as isize - g.pads[1] as isize;
                            if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                continue;
                            }
                            s += wt[(o * g.kh + ky) * g.kw + kx] as f64
                                * x[((img * g.c + ci) * g.h + iy as usize) * g.w + ix as usize]
                                    as f64;
                        }
                    }
                    y[((img * oc + o) * oh + oy) * ow + ox] = s;
                }
            }
        }
    }
    y
}

/// dx, dw, db by the definition (the adjoint of `dw_ref`).
fn dw_backward_ref(
    dy: &[f32],
    x: &[f32],
    wt: &[f32],
    g: &Depthwise,
    oh: usize,
    ow: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let oc = g.c * g.m;
    let mut dx = vec![0.0f64; x.len()];
    let mut dw = vec![0.0f64; wt.len()];
    let mut db = vec![0.0f64; oc];
    for img in 0..g.n {
        for o in 0..oc {
            let ci = o / g.m;
            for oy in 0..oh {
                for ox in 0..ow {
                    let gv = dy[((img * oc + o) * oh + oy) * ow + ox] as f64;
                    db[o] += gv;
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let iy = (oy * g.sh + ky * g.dh) as isize - g.pads[0] as isize;
                            let ix = (ox * g.sw + kx * g.dw) as isize - g.pads[1] as isize;
                            if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                continue;
                            }
                            let xi = ((img * g.c + ci) * g.h + iy as usize) * g.w + ix as usize;
                            let wi = (o * g.kh + ky) * g.kw + kx;
                            dx[xi] += gv * wt[wi] as f64;
                            dw[wi] += gv * x[xi] as f64;
                        }
                    }
                }
            }
        }
    }
    (dx, dw, db)
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for c in [1, 3, 17] {
        for m in [1, 2] {
            for k in [1, 3, 5] {
                for s in [1, 2] {
                    for d in [1, 2] {
                        for pads in [[0, 0, 0, 0], [1, 2, 0, 1], [2, 0, 3, 1]] {
                            let (h, w) = (9 + c % 4, 11 - m);
                            v.push(Case {
                                g: Depthwise {
                                    n: 2,
                                    c,
                                    h,
                                    w,
                                    m,
                                    kh: k,
                                    kw: if k == 5 { 3 } else { k },
                                    sh: s,
                                    sw: if d == 2 { 1 } else { s },
                                    dh: d,
                                    dw: d,
                                    pads,
                                },
                            });
                        }
                    }
                }
            }
        }
    }
    // non-square stride and dilation, a 1-pixel image, a kernel wider than the image with padding
    v.push(Case {
        g: Depthwise {
            n: 1,
            c: 3,
            h: 7,
            w: 13,
            m: 2,
            kh: 3,
            kw: 5,
            sh: 2,
            sw: 3,
            dh: 1,
            dw: 2,
            pads: [1, 3, 2, 0],
        },
    });
    v.push(Case {
        g: Depthwise {
            n: 3,
            c: 2,
            h: 1,
            w: 1,
            m: 1,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            pads: [1, 1, 1, 1],
        },
    });
    v.push(Case {
        g: Depthwise {
            n: 1,
            c: 2,
            h: 4,
            w: 2,
            m: 3,
            kh: 1,
            kw: 5,
            sh: 1,
            sw: 2,
            dh: 1,
            dw: 1,
            pads: [0, 2, 0, 2],
        },
    });
    v
}

#[test]
fn depthwise_forward_and_backward_match_the_reference() {
    for (i, case) in cases().into_iter().enumerate() {
        let g = case.g;
        let chk = g.check().unwrap();
        let (oh, ow) = (chk.oh, chk.ow);
        let x = data(chk.in_len().unwrap(), i as u64);
        let wt = data(chk.weight_len().unwrap(), i as u64 + 1000);
        let b: Vec<f32> = data(g.c * g.m, 5).iter().map(|v| v + 3.0).collect();
        let what = format!("case {i}: {g:?}");
        // bias far from 0: any output element left unwritten would show
        let (y, k2) = depthwise_conv2d(&crate::exec::TEST, &x, &wt, Some(&b), g).unwrap();
        assert_eq!((k2.oh, k2.ow), (oh, ow));
        assert_close(
            &y,
            &dw_ref(&x, &wt, Some(&b), &g, oh, ow),
            1e-5,
            1e-5,
            &what,
        );
        let (y0, _) = depthwise_conv2d(&crate::exec::TEST, &x, &wt, None, g).unwrap();
        assert_close(&y0, &dw_ref(&x, &wt, None, &g, oh, ow), 1e-5, 1e-5, &what);
        let dy = data(y.len(), i as u64 + 77);
        let gr = depthwise_conv2d_backward(&crate::exec::TEST, &dy, &x, &wt, g, true).unwrap();
        let (dx, dw, db) = dw_backward_ref(&dy, &x, &wt, &g, oh, ow);
        assert_close(&gr.dx, &dx, 1e-5, 1e-5, &format!("{what} dx"));
        assert_close(&gr.dweight, &dw, 1e-5, 1e-5, &format!("{what} dw"));
        assert_close(
            gr.dbias.as_ref().unwrap(),
            &db,
            1e-5,
            1e-5,
            &format!("{what} db"),
        );
        assert!(
            depthwise_conv2d_backward(&crate::exec::TEST, &dy, &x, &wt, g, false)
                .unwrap()
                .dbias
                .is_none()
        );
    }
}

#[test]
fn depthwise_large_runs_in_parallel_and_matches() {
    let g = Depthwise {
        n: 4,
        c: 48,
        h: 20,
        w: 20,
        m: 1,
        kh: 3,
        kw: 3,
        sh: 1,
        sw: 1,
        dh: 1,
        dw: 1,
        pads: [1, 1, 1, 1],
    };
    let chk = g.check().unwrap();
    let x = data(chk.in_len().unwrap(), 1);
    let wt = data(chk.weight_len().unwrap(), 2);
    let (y, _) = depthwise_conv2d(&crate::exec::TEST, &x, &wt, None, g).unwrap();
    assert_close(
        &y,
        &dw_ref(&x, &wt, None, &g, chk.oh, chk.ow),
        1e-5,
        1e-5,
        "large",
    );
    let dy = data(y.len(), 3);
    let gr = depthwise_conv2d_backward(&crate::exec::TEST, &dy, &x, &wt, g, true).unwrap();
    let (dx, dw, _) = dw_backward_ref(&dy, &x, &wt, &g, chk.oh, chk.ow);
    assert_close(&gr.dx, &dx, 1e-5, 1e-5, "large dx");
    assert_close(&gr.dweight, &dw, 1e-5, 1e-4, "large dw");
}

#[test]
fn depthwise_rejects_bad_geometry() {
    let base = Depthwise {
        n: 1,
        c: 2,
        h: 5,
        w: 5,
        m: 1,
        kh: 3,
        kw: 3,
        sh: 1,
        sw: 1,
        dh: 1,
        dw: 1,
        pads: [0; 4],
    };
    assert!(matches!(
        Depthwise { sh: 0, ..base }.check(),
        Err(Error::Value(_))
    ));
    assert!(matches!(
        Depthwise { dw: 0, ..base }.check(),
        Err(Error::Value(_))
    ));
    assert!(matches!(
        Depthwise { kh: 0, ..base }.check(),
        Err(Error::Value(_))
    ));
    assert!(matches!(
        Depthwise { m: 0, ..base }.check(),
        Err(Error::Value(_))
    ));
    assert!(matches!(
        Depthwise { dh: 3, ..base }.check(),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        Depthwise {
            pads: [usize::MAX, 0, 1, 0],
            ..base
        }
        .check(),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        Depthwise {
            n: usize::MAX,
            ..base
        }
        .check(),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        Depthwise {
            dh: usize::MAX,
            ..base
        }
        .check(),
        Err(Error::Shape(_))
    ));
    let x = [0.0f32; 50];
    assert!(matches!(
        depthwise_conv2d(&crate::exec::TEST, &x[..49], &[0.0; 18], None, base),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        depthwise_conv2d(&crate::exec::TEST, &x, &[0.0; 17], None, base),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        depthwise_conv2d(&crate::exec::TEST, &x, &[0.0; 18], Some(&[0.0; 3]), base),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        depthwise_conv2d_backward(&crate::exec::TEST, &[0.0; 17], &x, &[0.0; 18], base, true),
        Err(Error::Shape(_))
    ));
    // empty batch
    let (y, _) = depthwise_conv2d(
        &crate::exec::TEST,
        &[],
        &[0.0; 18],
        None,
        Depthwise { n: 0, ..base },
    )
    .unwrap();
    assert!(y.is_empty());
}
