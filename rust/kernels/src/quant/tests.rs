use super::calib::{self, Method, Spec};
use super::*;
use crate::cpu::each_isa;

/// Deterministic pseudo-random floats in [-r, r).
fn data(n: usize, r: f32, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * r
        })
        .collect()
}

/// Values chosen to hit halfway points, saturation, NaN, infinities and huge quotients.
fn edge_values() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        0.5,
        -0.5,
        1.5,
        -1.5,
        2.5,
        -2.5,
        127.5,
        -128.5,
        126.5,
        255.5,
        254.5,
        1e30,
        -1e30,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        f32::MIN,
        1e-40,
        3.4e38,
    ];
    for k in -300..300 {
        v.push(k as f32 * 0.5);
        v.push(k as f32 * 0.1);
    }
    v
}

fn check_quant<T: QElem + Default + Clone>(x: &[f32], scale: f32, zp: i32) {
    let (lo, hi) = T::QTYPE.range();
    let mut out = vec![0u8; x.len()];
    let mut typed = vec![T::default(); x.len()];
    quantize(
        &crate::exec::TEST,
        x,
        AxisLayout::per_tensor(x.len()),
        &[scale],
        &[zp],
        &mut typed,
    )
    .unwrap();
    out.copy_from_slice(as_bytes(&typed));
    for (i, (&v, &o)) in x.iter().zip(&out).enumerate() {
        let expect = quant1(v, scale, zp as f32, lo as f32, hi as f32);
        assert_eq!(o, expect, "x[{i}]={v} scale={scale} zp={zp}");
        // Independent check of the documented semantics.
        let want: i32 = if v.is_nan() {
            lo
        } else {
            let r = (v / scale).round_ties_even() as f64 + zp as f64;
            r.clamp(lo as f64, hi as f64) as i32
        };
        let got = if T::QTYPE == QType::I8 {
            o as i8 as i32
        } else {
            o as i32
        };
        assert_eq!(got, want, "x[{i}]={v} scale={scale} zp={zp}");
    }
}

#[test]
fn quantize_matches_scalar_reference_on_every_isa() {
    let mut x = edge_values();
    x.extend(data(1000, 300.0, 1));
    each_isa(|_| {
        for &(s, z) in &[(1.0f32, 0), (0.5, 3), (0.1, -7), (3.0, 127), (1e-3, -128)] {
            check_quant::<i8>(&x, s, z);
        }
        for &(s, z) in &[(1.0f32, 0), (0.5, 128), (0.1, 255), (7.0, 3)] {
            check_quant::<u8>(&x, s, z);
        }
    });
}

#[test]
fn halfway_points_round_to_even() {
    let x = [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5];
    each_isa(|_| {
        let mut out = [0i8; 7];
        quantize(
            &crate::exec::TEST,
            &x,
            AxisLayout::per_tensor(7),
            &[1.0],
            &[0],
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [0, 2, 2, 0, -2, -2, 4]);
    });
}

#[test]
fn saturation_and_specials() {
    let x = [
        1e30f32,
        -1e30,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        200.0,
        -200.0,
    ];
    each_isa(|_| {
        let mut o8 = [0i8; 7];
        quantize(
            &crate::exec::TEST,
            &x,
            AxisLayout::per_tensor(7),
            &[1.0],
            &[0],
            &mut o8,
        )
        .unwrap();
        assert_eq!(o8, [127, -128, 127, -128, -128, 127, -128]);
        let mut u8o = [0u8; 7];
        quantize(
            &crate::exec::TEST,
            &x,
            AxisLayout::per_tensor(7),
            &[1.0],
            &[10],
            &mut u8o,
        )
        .unwrap();
        assert_eq!(u8o, [255, 0, 255, 0, 0, 210, 0]);
    });
}

#[test]
fn per_axis_matches_per_element_formula() {
    for (shape, axis) in [
        (vec![3usize, 5, 7], 1usize),
        (vec![4, 37], 1),
        (vec![37, 4], 0),
        (vec![2, 3, 70], 2),
        (vec![130], 0),
    ] {
        let layout = AxisLayout::new(&shape, Some(axis)).unwrap();
        let n = layout.len();
        let x = data(n, 50.0, 7);
        let c = layout.channels;
        let scale: Vec<f32> = (0..c).map(|i| 0.05 + i as f32 * 0.07).collect();
        let zp: Vec<i32> = (0..c).map(|i| (i as i32 * 13) % 50 - 20).collect();
        each_isa(|_| {
            let mut q = vec![0i8; n];
            quantize(&crate::exec::TEST, &x, layout, &scale, &zp, &mut q).unwrap();
            let mut d = vec![0f32; n];
            dequantize(&crate::exec::TEST, &q, layout, &scale, &zp, &mut d).unwrap();
            for i in 0..n {
                let ch = (i / layout.inner) % c;
                let want = quant1(x[i], scale[ch], zp[ch] as f32, -128.0, 127.0) as i8;
                assert_eq!(q[i], want, "shape {shape:?} axis {axis} i {i}");
                assert_eq!(
                    d[i].to_bits(),
                    ((q[i] as f32 - zp[ch] as f32) * scale[ch]).to_bits()
                );
            }
        });
    }
}

#[test]
fn dequantize_all_bytes_every_isa() {
    let q: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    each_isa(|_| {
        let mut d = vec![0f32; q.len()];
        dequantize(
            &crate::exec::TEST,
            &q,
            AxisLayout::per_tensor(q.len()),
            &[0.3],
            &[17],
            &mut d,
        )
        .unwrap();
        for (a, b) in q.iter().zip(&d) {
            assert_eq!(b.to_bits(), ((*a as f32 - 17.0) * 0.3).to_bits());
        }
        let qi: Vec<i8> = q.iter().map(|&v| v as i8).collect();
        dequantize(
            &crate::exec::TEST,
            &qi,
            AxisLayout::per_tensor(q.len()),
            &[0.3],
            &[-5],
            &mut d,
        )
        .unwrap();
        for (a, b) in qi.iter().zip(&d) {
            assert_eq!(b.to_bits(), ((*a as f32 + 5.0) * 0.3).to_bits());
        }
    });
}

#[test]
fn large_input_uses_threads_and_agrees() {
    let x = data(300_001, 10.0, 3);
    let mut a = vec![0u8; x.len()];
    quantize(
        &crate::exec::TEST,
        &x,
        AxisLayout::per_tensor(x.len()),
        &[0.05],
        &[128],
        &mut a,
    )
    .unwrap();
    for (v, o) in x.iter().zip(&a) {
        assert_eq!(*o, quant1(*v, 0.05, 128.0, 0.0, 255.0));
    }
}

#[test]
fn bad_parameters_are_errors() {
    let x = [1.0f32; 6];
    let l = AxisLayout::new(&[2, 3], Some(1)).unwrap();
    let mut o = [0i8; 6];
    for s in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            quantize(&crate::exec::TEST, &x, l, &[s], &[0], &mut o),
            Err(Error::Value(_))
        ));
    }
    assert!(matches!(
        quantize(&crate::exec::TEST, &x, l, &[1.0], &[128], &mut o),
        Err(Error::Value(_))
    ));
    assert!(matches!(
        quantize(&crate::exec::TEST, &x, l, &[1.0, 2.0], &[0], &mut o),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        quantize(&crate::exec::TEST, &x[..5], l, &[1.0], &[0], &mut o),
        Err(Error::Shape(_))
    ));
    let mut u = [0u8; 6];
    assert!(matches!(
        quantize(&crate::exec::TEST, &x, l, &[1.0], &[-1], &mut u),
        Err(Error::Value(_))
    ));
    assert!(AxisLayout::new(&[2, 3], Some(2)).is_err());
}

#[test]
fn dynamic_quantize_reference_formula() {
    each_isa(|_| {
        let x = [0.0f32, 2.0, -3.0, 1000.0, -254.0];
        let mut o = [0u8; 5];
        let (s, z) = dynamic_quantize(&crate::exec::TEST, &x, &mut o).unwrap();
        assert_eq!(s, 1254.0f32 / 255.0);
        assert_eq!(z as f32, (0.0f32 - (-254.0f32) / s).round_ties_even());
        for (v, q) in x.iter().zip(&o) {
            assert_eq!(*q, quant1(*v, s, z as f32, 0.0, 255.0));
        }
        // All zero: the reference's scale is 1/255 and the zero point 0.
        let mut o = [9u8; 3];
        assert_eq!(
            dynamic_quantize(&crate::exec::TEST, &[0.0; 3], &mut o).unwrap(),
            (1.0 / 255.0, 0)
        );
        assert_eq!(o, [0; 3]);
        assert!(dynamic_quantize(&crate::exec::TEST, &[1.0, f32::NAN], &mut [0u8; 2]).is_err());
        assert!(dynamic_quantize(&crate::exec::TEST, &[], &mut []).is_err());
    });
}

#[test]
fn min_max_every_isa() {
    let mut x = data(10_007, 5.0, 9);
    x[4321] = 77.0;
    x[17] = -99.0;
    each_isa(|_| {
        assert_eq!(min_max(&crate::exec::TEST, &x).unwrap(), (-99.0, 77.0));
        let mut y = x.clone();
        y[5000] = f32::NAN;
        assert!(min_max(&crate::exec::TEST, &y).is_err());
        y[5000] = f32::NEG_INFINITY;
        assert!(min_max(&crate::exec::TEST, &y).is_err());
    });
}

#[test]
fn min_max_is_the_scalar_bodys_bits_on_every_isa() {
    // Signed zeros, NaN and infinities at every lane and tail position: the vector paths
    // must keep the scalar body's lanes and order (which zero a tie keeps, the poison).
    let specials = [0.0f32, -0.0, 1.5, -2.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
    for len in (1..70).chain([255, 1000]) {
        for (si, &sp) in specials.iter().enumerate() {
            for at in [0, len / 3, len - 1] {
                let mut x: Vec<f32> = (0..len)
                    .map(|i| if (i + si) % 3 == 0 { 0.0 } else { -0.0 })
                    .collect();
                x[at] = sp;
                let want = crate::quant::min_max_body(&x);
                each_isa(|_| {
                    let got = (kernels().min_max)(&x);
                    assert_eq!(
                        (got.0.to_bits(), got.1.to_bits(), got.2.is_nan()),
                        (want.0.to_bits(), want.1.to_bits(), want.2.is_nan()),
                        "len {len}, x[{at}] = {sp}"
                    );
                });
            }
        }
    }
}

fn spec(qmin: i32, qmax: i32, symmetric: bool, szp: i32) -> Spec {
    Spec {
        qmin,
        qmax,
        symmetric,
        symmetric_zero_point: szp,
        power_of_two: false,
        bins: 2048,
    }
}

#[test]
fn torch_qparams_formulas() {
    // Affine uint8 of [-1, 3]: scale = 4/255, zp = 0 - round(-1 / (4/255)) = 64.
    let (s, z) = calib::qparams(-1.0, 3.0, &spec(0, 255, false, 0));
    assert_eq!(s, 4.0f32 / 255.0);
    assert_eq!(z, (0.0f32 - (-1.0f32 / s).round_ties_even()) as i32);
    assert_eq!(z, 64);
    // Symmetric int8 of [-1, 3]: scale = 3 / 127.5, zp 0; symmetric uint8: zp 128.
    assert_eq!(
        calib::qparams(-1.0, 3.0, &spec(-128, 127, true, 0)),
        (3.0f32 / 127.5, 0)
    );
    assert_eq!(
        calib::qparams(-1.0, 3.0, &spec(0, 255, true, 128)),
        (3.0f32 / 127.5, 128)
    );
    // A range that excludes 0 is widened to include it; a zero range clamps to eps.
    assert_eq!(
        calib::qparams(2.0, 5.0, &spec(0, 255, false, 0)),
        (5.0f32 / 255.0, 0)
    );
    assert_eq!(
        calib::qparams(0.0, 0.0, &spec(-128, 127, false, 0)),
        (f32::EPSILON, -128)
    );
    // 4-bit signed symmetric: range [-8, 7], scale = amax / 7.5.
    assert_eq!(
        calib::qparams(-2.0, 1.0, &spec(-8, 7, true, 0)),
        (2.0f32 / 7.5, 0)
    );
}

#[test]
fn pow2_ceil_is_next_power() {
    assert_eq!(calib::pow2_ceil(1.0), 1.0);
    assert_eq!(calib::pow2_ceil(0.75), 1.0);
    assert_eq!(calib::pow2_ceil(0.5000001), 1.0);
    assert_eq!(calib::pow2_ceil(0.25), 0.25);
    assert_eq!(calib::pow2_ceil(3.0 / 127.5), 0.03125);
}

#[test]
fn percentile_matches_linear_interpolation() {
    let mut v: Vec<f32> = (0..11).map(|i| i as f32).collect();
    assert_eq!(calib::percentile(&mut v, 50.0), 5.0);
    assert_eq!(calib::percentile(&mut v, 95.0), 9.5);
    assert_eq!(calib::percentile(&mut v, 100.0), 10.0);
    assert_eq!(calib::percentile(&mut [3.0], 99.0), 3.0);
}

#[test]
fn calibrate_methods_on_outliers() {
    let mut x = data(20_000, 1.0, 5);
    x[100] = 50.0;
    let l = AxisLayout::per_tensor(x.len());
    let sp = spec(-128, 127, true, 0);
    let mm = calib::calibrate(&crate::exec::TEST, &x, l, Method::MinMax, &sp).unwrap();
    assert_eq!(mm.scale, vec![50.0f32 / 127.5]);
    let err = |s: f32| {
        x.iter()
            .map(|&v| {
                let q = quant1(v, s, 0.0, -128.0, 127.0) as i8 as f32;
                ((q * s - v) as f64).powi(2)
            })
            .sum::<f64>()
    };
    for m in [Method::Percentile(99.9), Method::Mse, Method::Entropy] {
        let c = calib::calibrate(&crate::exec::TEST, &x, l, m, &sp).unwrap();
        assert!(
            c.range_max[0] <= 50.0 && c.range_max[0] > 0.5,
            "{m:?} {c:?}"
        );
        assert_eq!(c.range_min[0], -c.range_max[0]);
    }
    // Percentile 99.9 of |x| for uniform [-1, 1) data is about 0.999.
    let p = calib::calibrate(&crate::exec::TEST, &x, l, Method::Percentile(99.9), &sp).unwrap();
    assert!((p.range_max[0] - 0.999).abs() < 0.01, "{p:?}");
    // Mse never does worse than min/max on its own data, and better with an outlier...
    let m = calib::calibrate(&crate::exec::TEST, &x, l, Method::Mse, &sp).unwrap();
    assert!(
        err(m.scale[0]) < err(mm.scale[0]),
        "{} vs {}",
        err(m.scale[0]),
        err(mm.scale[0])
    );
    // ...which it keeps (clipping 50 to ~1 would cost 49^2).
    assert!(m.range_max[0] > 40.0, "{m:?}");
    assert!(calib::calibrate(&crate::exec::TEST, &x, l, Method::Percentile(20.0), &sp).is_err());
    let mut y = x.clone();
    y[3] = f32::NAN;
    assert!(calib::calibrate(&crate::exec::TEST, &y, l, Method::MinMax, &sp).is_err());
    assert!(calib::calibrate(
        &crate::exec::TEST,
        &[],
        AxisLayout::per_tensor(0),
        Method::MinMax,
        &sp
    )
    .is_err());
}

#[test]
fn per_channel_min_max_all_layouts() {
    for (shape, axis) in [
        (vec![4usize, 100], 0usize),
        (vec![100, 4], 1),
        (vec![3, 5, 70], 1),
        (vec![2, 6, 3], 1),
    ] {
        let l = AxisLayout::new(&shape, Some(axis)).unwrap();
        let x = data(l.len(), 3.0, 11);
        let (mn, mx) = calib::channel_min_max(&crate::exec::TEST, &x, l).unwrap();
        for c in 0..l.channels {
            let vals: Vec<f32> = (0..l.len())
                .filter(|i| (i / l.inner) % l.channels == c)
                .map(|i| x[i])
                .collect();
            assert_eq!(mn[c], vals.iter().cloned().fold(f32::INFINITY, f32::min));
            assert_eq!(
                mx[c],
                vals.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
            );
        }
    }
}

#[test]
fn streaming_stores_on_large_misaligned_outputs() {
    // Outputs past STREAM_MIN_BYTES take the non-temporal path, with a scalar head up
    // to the alignment; start one element in so the head is not empty.
    let n = STREAM_MIN_BYTES + 37;
    let x = data(n + 1, 40.0, 13);
    each_isa(|isa| {
        let mut q = vec![0u8; n + 1];
        quantize(
            &crate::exec::TEST,
            &x[1..],
            AxisLayout::per_tensor(n),
            &[0.3],
            &[7],
            &mut q[1..],
        )
        .unwrap();
        for i in 1..=n {
            assert_eq!(q[i], quant1(x[i], 0.3, 7.0, 0.0, 255.0), "{isa:?} {i}");
        }
        let m = STREAM_MIN_BYTES / 4 + 13;
        let mut d = vec![0f32; m + 1];
        dequantize(
            &crate::exec::TEST,
            &q[1..=m],
            AxisLayout::per_tensor(m),
            &[0.3],
            &[7],
            &mut d[1..],
        )
        .unwrap();
        for i in 1..=m {
            assert_eq!(
                d[i].to_bits(),
                dequant1(q[i], false, 0.3, 7.0).to_bits(),
                "{isa:?} {i}"
            );
        }
        // Per axis, last axis: the per-element (row) loop streams too.
        let c = 1001;
        let rows = STREAM_MIN_BYTES / 4 / c + 1;
        assert!(rows * c * 4 >= STREAM_MIN_BYTES && rows * c < n);
        let l = AxisLayout::new(&[rows, c], Some(1)).unwrap();
        let sc: Vec<f32> = (0..c).map(|i| 0.01 + i as f32 * 0.001).collect();
        let zc: Vec<i32> = (0..c).map(|i| (i % 200) as i32).collect();
        let mut d2 = vec![0f32; rows * c + 1];
        assert!(rows * c <= n);
        dequantize(
            &crate::exec::TEST,
            &q[1..=rows * c],
            l,
            &sc,
            &zc,
            &mut d2[1..],
        )
        .unwrap();
        for i in 0..rows * c {
            let ch = i % c;
            assert_eq!(
                d2[i + 1].to_bits(),
                dequant1(q[i + 1], false, sc[ch], zc[ch] as f32).to_bits(),
                "{isa:?} {i}"
            );
        }
        let mut o = vec![0u8; n];
        let (s, z) = dynamic_quantize(&crate::exec::TEST, &x[1..], &mut o).unwrap();
        assert!(o
            .iter()
            .zip(&x[1..])
            .all(|(&q, &v)| q == quant1(v, s, z as f32, 0.0, 255.0)));
    });
}
