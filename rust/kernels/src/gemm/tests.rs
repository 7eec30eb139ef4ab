//! Exactness tests of the GEMM on every ISA path this CPU has, against a naive
//! i64 reference.

use super::output::{OutputStep, Param};
use super::*;
use crate::cpu::{each_isa, Isa};

/// Deterministic pseudo-random bytes (xorshift).
pub(super) fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

fn naive(a: &[i32], b: &[i32], m: usize, k: usize, n: usize, za: &[i32], zb: &[i32]) -> Vec<i32> {
    let mut c = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0i64;
            for kk in 0..k {
                s += (a[i * k + kk] - za[i]) as i64 * (b[kk * n + j] - zb[j]) as i64;
            }
            c[i * n + j] = i32::try_from(s).unwrap();
        }
    }
    c
}

/// Runs one case with A and B of the given signedness; checks exact equality.
fn check(
    m: usize,
    k: usize,
    n: usize,
    a_signed: bool,
    b_signed: bool,
    za: Option<Vec<i32>>,
    zb: Option<Vec<i32>>,
    seed: u64,
    fill: Option<(u8, u8)>,
) {
    let (ab, bb) = match fill {
        Some((x, y)) => (vec![x; m * k], vec![y; k * n]),
        None => (bytes(m * k, seed), bytes(k * n, seed + 1)),
    };
    let av: Vec<i32> = ab
        .iter()
        .map(|&x| if a_signed { x as i8 as i32 } else { x as i32 })
        .collect();
    let bv: Vec<i32> = bb
        .iter()
        .map(|&x| if b_signed { x as i8 as i32 } else { x as i32 })
        .collect();
    let za_full = za.clone().unwrap_or_else(|| vec![0; m]);
    let zb_full = zb.clone().unwrap_or_else(|| vec![0; n]);
    let want = naive(&av, &bv, m, k, n, &za_full, &zb_full);
    let zbp = match &zb {
        Some(v) => ZeroPoint::PerIndex(v),
        None => ZeroPoint::Scalar(0),
    };
    let packed = if b_signed {
        let bi: Vec<i8> = bb.iter().map(|&x| x as i8).collect();
        PackedB::from_kn_i8(&crate::exec::TEST, &bi, k, n, zbp).unwrap()
    } else {
        PackedB::from_kn_u8(&crate::exec::TEST, &bb, k, n, zbp).unwrap()
    };
    assert_eq!(packed.unpack(), bv);
    let ai: Vec<i8> = ab.iter().map(|&x| x as i8).collect();
    let src = if a_signed {
        ASource::I8(&ai)
    } else {
        ASource::U8(&ab)
    };
    let zap = match &za {
        Some(v) => ZeroPoint::PerIndex(v),
        None => ZeroPoint::Scalar(0),
    };
    each_isa(|i| {
        let mut out = vec![i32::MIN + 7; m * n]; // poisoned: must be fully written
        matmul(
            &crate::exec::TEST,
            src,
            m,
            k,
            zap,
            &packed,
            &OutputStep::Int32,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out,
            want,
            "isa {} m={m} k={k} n={n} a_signed={a_signed} b_signed={b_signed}",
            i.name()
        );
        // The same product with B row-major per call (no whole-B pack).
        let bi: Vec<i8> = bb.iter().map(|&x| x as i8).collect();
        let bsrc = if b_signed {
            ASource::I8(&bi)
        } else {
            ASource::U8(&bb)
        };
        let mut out = vec![i32::MIN + 7; m * n];
        matmul_b_rows(
            &crate::exec::TEST,
            src,
            m,
            k,
            zap,
            bsrc,
            n,
            zbp,
            &OutputStep::Int32,
            as_uninit(&mut out),
        )
        .unwrap();
        assert_eq!(
            out,
            want,
            "B per call: isa {} m={m} k={k} n={n} a_signed={a_signed} b_signed={b_signed}",
            i.name()
        );
    });
}

#[test]
fn small_sizes_every_sign_combination() {
    for m in 0..10 {
        for k in [0, 1, 2, 3, 4, 5, 7, 8, 9, 13] {
            for n in [0, 1, 5, 15, 16, 17, 33, 64, 65] {
                for (sa, sb) in [(false, false), (false, true), (true, false), (true, true)] {
                    check(
                        m,
                        k,
                        n,
                        sa,
                        sb,
                        None,
                        None,
                        (m * 1000 + k * 10 + n) as u64,
                        None,
                    );
                }
            }
        }
    }
}

#[test]
fn sizes_0_to_20() {
    for s in 0..=20 {
        check(s, s, s, false, true, None, None, s as u64, None);
    }
}

#[test]
fn awkward_shapes_and_zero_points() {
    check(
        17,
        257,
        33,
        false,
        true,
        Some((0..17).map(|i| (i * 15) % 256).collect()),
        Some((0..33).map(|j| j % 20 - 10).collect()),
        3,
        None,
    );
    check(
        266,
        265,
        70,
        true,
        false,
        Some((0..266).map(|i| i % 256 - 128).collect()),
        Some((0..70).map(|j| (j * 3) % 256).collect()),
        4,
        None,
    );
    check(
        1,
        300,
        129,
        false,
        true,
        Some(vec![255]),
        Some(vec![-128; 129]),
        5,
        None,
    );
    check(50, 1, 40, true, true, None, None, 6, None);
    // One row, wide enough for the direct GEMV over row-major B (with and
    // without column sums, odd K, uint8 B, extremes, a tail of columns).
    check(1, 333, 600, false, true, None, None, 12, None);
    check(
        1,
        257,
        300,
        false,
        false,
        None,
        Some((0..300).map(|j| j % 256).collect()),
        13,
        None,
    );
    check(1, 99, 520, true, false, Some(vec![-5]), None, 14, None);
    check(
        1,
        1001,
        256,
        false,
        true,
        Some(vec![0]),
        None,
        15,
        Some((255, 0x80)),
    );
    check(
        1,
        1001,
        384,
        true,
        false,
        Some(vec![127]),
        Some(vec![0; 384]),
        16,
        Some((0x80, 255)),
    );
    check(13, 64, 1, false, false, None, None, 7, None);
    // Big enough to use threads and both partitions.
    check(300, 96, 150, false, true, None, None, 8, None);
    check(2, 512, 1000, false, true, None, None, 9, None);
    // Above the threading threshold (16M MACs): split over rows, then over columns.
    check(
        300,
        256,
        250,
        true,
        false,
        Some((0..300).map(|i| i % 256 - 128).collect()),
        None,
        10,
        None,
    );
    check(
        3,
        6000,
        1000,
        false,
        true,
        None,
        Some((0..1000).map(|j| j % 256 - 128).collect()),
        11,
        None,
    );
}

/// Every pattern of zero points the micro-kernel's correction tells apart
/// (one for all rows or one per row, zero or not; weights' zero points all
/// 0, all nonzero, or 0 except one column), in one K block and in several.
#[test]
fn correction_zero_point_patterns() {
    let m = 14;
    let za_cases: [Vec<i32>; 4] = [
        vec![0; m],
        vec![77; m],
        (0..m as i32).map(|i| (i * 37) % 256).collect(),
        // equal over the first tile, different in the last
        (0..m as i32)
            .map(|i| if i < 12 { 9 } else { 200 })
            .collect(),
    ];
    for k in [36, 1030] {
        for n in [16, 70] {
            let zb_cases: [Vec<i32>; 3] = [
                vec![0; n],
                (0..n as i32)
                    .map(|j| j % 7 - 3)
                    .map(|z| if z == 0 { 5 } else { z })
                    .collect(),
                (0..n).map(|j| if j == n - 1 { -4 } else { 0 }).collect(),
            ];
            for (ia, za) in za_cases.iter().enumerate() {
                for (ib, zb) in zb_cases.iter().enumerate() {
                    let seed = (k * 100 + n * 10 + ia * 3 + ib) as u64;
                    check(
                        m,
                        k,
                        n,
                        false,
                        true,
                        Some(za.clone()),
                        Some(zb.clone()),
                        seed,
                        None,
                    );
                }
                // uint8 B: its stored zero points are never all 0
                check(
                    m,
                    k,
                    n,
                    false,
                    false,
                    Some(za.clone()),
                    None,
                    99 + ia as u64,
                    None,
                );
            }
        }
    }
}

#[test]
fn extreme_values() {
    // all 255 × all -128, zero points at both ends.
    check(7, 1000, 20, false, true, None, None, 0, Some((255, 0x80)));
    check(
        7,
        1000,
        20,
        false,
        true,
        Some(vec![0; 7]),
        Some(vec![127; 20]),
        0,
        Some((255, 0x80)),
    );
    check(
        7,
        1000,
        20,
        true,
        false,
        Some(vec![127; 7]),
        Some(vec![0; 20]),
        0,
        Some((0x80, 255)),
    );
    check(
        7,
        1000,
        20,
        true,
        false,
        Some(vec![-128; 7]),
        Some(vec![255; 20]),
        0,
        Some((0x7f, 0)),
    );
    // Largest K the bound allows with u8 × s8 and zero zero points: 255*128*K <= 2^31-1.
    let k = (i32::MAX as usize) / (255 * 128);
    check(2, k, 17, false, true, None, None, 0, Some((255, 0x80)));
}

#[test]
fn overflow_bound_is_an_error() {
    let k = (i32::MAX as usize) / (255 * 128) + 1;
    let a = vec![0u8; k];
    let b = PackedB::from_kn_i8(
        &crate::exec::TEST,
        &vec![0i8; k],
        k,
        1,
        ZeroPoint::Scalar(0),
    )
    .unwrap();
    let mut out = [0i32; 1];
    let e = matmul(
        &crate::exec::TEST,
        ASource::U8(&a),
        1,
        k,
        ZeroPoint::Scalar(0),
        &b,
        &OutputStep::Int32,
        &mut out,
    )
    .unwrap_err();
    assert!(e.to_string().contains(&format!("K = {k}")), "{e}");
}

#[test]
fn bad_shapes_and_zero_points() {
    let b = PackedB::from_kn_i8(&crate::exec::TEST, &[0i8; 6], 2, 3, ZeroPoint::Scalar(0)).unwrap();
    let mut out = [0i32; 3];
    assert!(matmul(
        &crate::exec::TEST,
        ASource::U8(&[0u8; 3]),
        1,
        3,
        ZeroPoint::Scalar(0),
        &b,
        &OutputStep::Int32,
        &mut out
    )
    .is_err());
    assert!(matmul(
        &crate::exec::TEST,
        ASource::U8(&[0u8; 2]),
        1,
        2,
        ZeroPoint::Scalar(256),
        &b,
        &OutputStep::Int32,
        &mut out
    )
    .is_err());
    assert!(matmul(
        &crate::exec::TEST,
        ASource::I8(&[0i8; 2]),
        1,
        2,
        ZeroPoint::Scalar(200),
        &b,
        &OutputStep::Int32,
        &mut out
    )
    .is_err());
    assert!(PackedB::from_kn_i8(
        &crate::exec::TEST,
        &[0i8; 6],
        2,
        3,
        ZeroPoint::PerIndex(&[0, 0])
    )
    .is_err());
    assert!(
        PackedB::from_kn_u8(&crate::exec::TEST, &[0u8; 6], 2, 3, ZeroPoint::Scalar(-1)).is_err()
    );
    assert!(
        PackedB::from_kn_u8(&crate::exec::TEST, &[0u8; 5], 2, 3, ZeroPoint::Scalar(0)).is_err()
    );
}

#[test]
fn transposed_packing_matches() {
    let (n, k) = (37, 29);
    let w: Vec<i8> = bytes(n * k, 11).into_iter().map(|x| x as i8).collect();
    let wt: Vec<i8> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
    let p1 = PackedB::from_nk_i8(&crate::exec::TEST, &w, n, k, ZeroPoint::Scalar(3)).unwrap();
    let p2 = PackedB::from_kn_i8(&crate::exec::TEST, &wt, k, n, ZeroPoint::Scalar(3)).unwrap();
    assert_eq!(p1.data, p2.data);
    assert_eq!(p1.colterm, p2.colterm);
}

#[test]
fn linear_dynamic_matches_dequantized_reference() {
    let (m, k, n) = (9, 70, 21);
    let x: Vec<f32> = bytes(m * k, 1)
        .into_iter()
        .map(|v| (v as f32 - 100.0) / 37.0)
        .collect();
    let w: Vec<i8> = bytes(n * k, 2)
        .into_iter()
        .map(|v| (v as i8).max(-127))
        .collect();
    let ws: Vec<f32> = (0..n).map(|j| 0.01 + j as f32 * 0.001).collect();
    let bias: Vec<f32> = (0..n).map(|j| j as f32 - 10.0).collect();
    let p = PackedB::from_nk_i8(&crate::exec::TEST, &w, n, k, ZeroPoint::Scalar(0)).unwrap();
    each_isa(|isa| {
        for relu in [false, true] {
            let mut out = vec![f32::NAN; m * n];
            linear_dynamic(
                &crate::exec::TEST,
                &x,
                m,
                k,
                &p,
                Param::PerIndex(&ws),
                Some(&bias),
                relu,
                &mut out,
            )
            .unwrap();
            for i in 0..m {
                let mut q = vec![0u8; k];
                let (_, zp, s) =
                    crate::quant::rows::quantize_row_u8(&x[i * k..i * k + k], &mut q).unwrap();
                for j in 0..n {
                    let acc: i64 = (0..k)
                        .map(|kk| (q[kk] as i64 - zp as i64) * w[j * k + kk] as i64)
                        .sum();
                    let mut want = acc as f64 * s as f64 * ws[j] as f64 + bias[j] as f64;
                    if relu {
                        want = want.max(0.0);
                    }
                    let got = out[i * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{} {i} {j}: {got} vs {want}",
                        isa.name()
                    );
                }
            }
        }
    });
    let mut bad = x.clone();
    bad[5 * k + 3] = f32::NAN;
    let mut out = vec![0.0; m * n];
    let e = linear_dynamic(
        &crate::exec::TEST,
        &bad,
        m,
        k,
        &p,
        Param::PerIndex(&ws),
        None,
        false,
        &mut out,
    )
    .unwrap_err();
    assert!(e.to_string().contains("row 5"), "{e}");
}

/// Raw micro-kernel throughput (not a test: `cargo test --release -- --ignored kernel_speed --nocapture`).
#[test]
#[ignore]
fn kernel_speed() {
    let kg: usize = std::env::var("KG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let a = bytes(8 * kg * 4, 1);
    let b: Vec<i8> = bytes(8 * kg * 64, 2).into_iter().map(|x| x as i8).collect();
    let mut acc = vec![0i32; 8 * 64];
    fn go<Kr: Kernel<AElem = u8>>(name: &str, a: &[u8], b: &[i8], acc: &mut [i32], kg: usize) {
        let reps = 5_000_000 / kg;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            unsafe {
                Kr::tile(
                    Kr::MR,
                    Kr::NP,
                    &kernel::Tile {
                        kg,
                        a: a.as_ptr(),
                        lda: kg * 4,
                        b: b.as_ptr(),
                        bs: kg * 64,
                        acc: acc.as_mut_ptr(),
                        ld: 16 * Kr::NP,
                        load: false,
                        fix: None,
                    },
                )
            };
        }
        let s = t.elapsed().as_secs_f64();
        let macs = (reps * Kr::MR * Kr::NP * 16 * kg * 4) as f64;
        eprintln!("{name}: {:.1} GMAC/s", macs / s / 1e9);
    }
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx512Vnni.is_supported() {
        go::<super::arch::x86_avx512vnni::Avx512Vnni>("vnni", &a, &b, &mut acc, kg);
    }
    go::<super::arch::generic::Generic>("generic", &a, &b, &mut acc, kg);
}

/// Packing speed (not a test: `cargo test --release -- --ignored pack_speed --nocapture`).
#[test]
#[ignore]
fn pack_speed() {
    let (k, n) = (1024, 1024);
    let b: Vec<i8> = bytes(k * n, 3).into_iter().map(|x| x as i8).collect();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let reps = 50;
        for _ in 0..reps {
            std::hint::black_box(
                PackedB::from_kn_i8(&crate::exec::TEST, &b, k, n, ZeroPoint::Scalar(0)).unwrap(),
            );
        }
        eprintln!(
            "pack {k}x{n}: {:.0} us",
            t.elapsed().as_secs_f64() / reps as f64 * 1e6
        );
        let t = std::time::Instant::now();
        for _ in 0..reps {
            std::hint::black_box(
                PackedB::from_nk_i8(&crate::exec::TEST, &b, n, k, ZeroPoint::Scalar(0)).unwrap(),
            );
        }
        eprintln!(
            "pack transposed {k}x{n}: {:.0} us",
            t.elapsed().as_secs_f64() / reps as f64 * 1e6
        );
        let t = std::time::Instant::now();
        for _ in 0..reps {
            std::hint::black_box(b.clone());
        }
        eprintln!(
            "memcpy {k}x{n}: {:.0} us",
            t.elapsed().as_secs_f64() / reps as f64 * 1e6
        );
    }
}

/// The thread count travels with the call: one and several threads give the
/// same exact result, without touching any process-wide setting.
#[test]
fn threaded_splits_cover_every_row_and_column() {
    // Above the parallel threshold on two threads: row chunks of whole row
    // blocks (many, and fewer blocks than chunks), and single-row column
    // chunks in GEMV units with N no multiple of them, with and without
    // column sums (A's zero point).
    check(300, 64, 64, false, true, None, None, 31, None);
    check(40, 512, 64, false, true, Some(vec![3; 40]), None, 32, None);
    check(1, 2048, 1000, false, true, None, None, 33, None);
    check(1, 2048, 1000, false, true, Some(vec![7]), None, 34, None);
    check(
        1,
        1500,
        1300,
        true,
        false,
        None,
        Some(vec![5; 1300]),
        35,
        None,
    );
}

#[test]
fn result_does_not_depend_on_the_context() {
    use crate::exec::Ctx;
    let (m, k, n) = (64, 256, 96); // 1.5M MACs: above the parallel threshold
    let a = bytes(m * k, 11);
    let b: Vec<i8> = bytes(k * n, 12).into_iter().map(|v| v as i8).collect();
    let mut outs = Vec::new();
    for ctx in [Ctx::serial(), Ctx::new(2), Ctx::new(3)] {
        let p = PackedB::from_kn_i8(&ctx, &b, k, n, ZeroPoint::Scalar(0)).unwrap();
        let src = ASource::U8(&a);
        outs.push(
            matmul_vec::<i32>(
                &ctx,
                src,
                m,
                k,
                ZeroPoint::Scalar(3),
                &p,
                &OutputStep::Int32,
            )
            .unwrap(),
        );
    }
    assert!(outs.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn guided_chunks_tile_the_range_biggest_first() {
    for units in 0..200 {
        for chunks in 1..13 {
            let parts: Vec<_> = (0..chunks).map(|c| guided(units, chunks, c)).collect();
            assert_eq!(parts[0].start, 0);
            assert_eq!(parts[chunks - 1].end, units);
            assert!(parts
                .windows(2)
                .all(|w| w[0].end == w[1].start && w[0].len() + 1 >= w[1].len()));
        }
    }
    assert_eq!(guided(64, 8, 0), 0..15);
    assert_eq!(guided(64, 8, 7), 63..64);
}

#[test]
fn single_row_b_per_call_split_over_k() {
    // M = 1 with K long enough to be split over the threads (parts of whole
    // rows, summed after): K not a multiple of 4, N past the GEMV's column
    // chunk, zero points that need the column sums; and K just below the
    // split (columns split instead).
    let shapes = [(1027, 1030), (512, 2100), (2048, 4100), (508, 2100)];
    for (k, n) in shapes {
        for (sa, sb) in [(false, false), (false, true), (true, false), (true, true)] {
            let zb: Vec<i32> = (0..n as i32)
                .map(|j| if sb { j % 256 - 128 } else { j % 256 })
                .collect();
            let za = if sa { -3 } else { 200 };
            check(1, k, n, sa, sb, None, Some(zb), 31, None);
            check(1, k, n, sa, sb, Some(vec![za]), None, 32, None);
        }
    }
}

#[test]
fn single_row_b_per_call_does_not_depend_on_the_context() {
    use crate::exec::Ctx;
    let (k, n) = (3001, 1500);
    let a = bytes(k, 41);
    let b = bytes(k * n, 42);
    let zb: Vec<i32> = (0..n as i32).map(|j| (7 * j) % 256).collect();
    let cs: Vec<f32> = (0..n).map(|j| 0.01 + j as f32 * 1e-4).collect();
    let step = OutputStep::Float {
        row_scale: Param::Scalar(0.02),
        col_scale: Param::PerIndex(&cs),
        bias: None,
        relu: false,
    };
    each_isa(|i| {
        let outs: Vec<Vec<u32>> = [Ctx::serial(), Ctx::new(2), Ctx::new(3), Ctx::new(4)]
            .iter()
            .map(|ctx| {
                let y = matmul_b_rows_vec::<f32>(
                    ctx,
                    ASource::U8(&a),
                    1,
                    k,
                    ZeroPoint::Scalar(77),
                    ASource::U8(&b),
                    n,
                    ZeroPoint::PerIndex(&zb),
                    &step,
                )
                .unwrap();
                y.iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        assert!(outs.windows(2).all(|w| w[0] == w[1]), "isa {}", i.name());
    });
}

#[test]
fn b_per_call_output_steps_match_the_packed_product() {
    // Float and requantized output through the same step, bit for bit, on
    // every path, single-row and tiled, serial and threaded.
    for (m, k, n) in [(1, 300, 70), (7, 129, 33), (64, 256, 96), (1, 1024, 1100)] {
        let a = bytes(m * k, 21);
        let b = bytes(k * n, 22);
        let zb: Vec<i32> = (0..n as i32).map(|j| j % 256).collect();
        let cs: Vec<f32> = (0..n).map(|j| 0.01 + j as f32 * 1e-4).collect();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 - 20.0).collect();
        let steps = [
            OutputStep::Float {
                row_scale: Param::Scalar(0.02),
                col_scale: Param::PerIndex(&cs),
                bias: Some(&bias),
                relu: true,
            },
            OutputStep::QLinear {
                a_scale: Param::Scalar(0.05),
                b_scale: Param::PerIndex(&cs),
                y_scale: 3.0,
                y_zero_point: 5,
            },
        ];
        for ctx in [crate::exec::Ctx::serial(), crate::exec::TEST] {
            let packed = PackedB::from_kn_u8(&ctx, &b, k, n, ZeroPoint::PerIndex(&zb)).unwrap();
            // (packed, B per call) for one output step.
            fn both<T: OutElem>(
                ctx: &crate::exec::Ctx,
                (a, b, m, k, n): (&[u8], &[u8], usize, usize, usize),
                zb: &[i32],
                packed: &PackedB,
                step: &OutputStep<'_>,
            ) -> (Vec<T>, Vec<T>) {
                let za = ZeroPoint::Scalar(9);
                let want = matmul_vec(ctx, ASource::U8(a), m, k, za, packed, step).unwrap();
                let got = matmul_b_rows_vec(
                    ctx,
                    ASource::U8(a),
                    m,
                    k,
                    za,
                    ASource::U8(b),
                    n,
                    ZeroPoint::PerIndex(zb),
                    step,
                )
                .unwrap();
                (want, got)
            }
            let args = (&a[..], &b[..], m, k, n);
            each_isa(|i| {
                let (want, got) = both::<f32>(&ctx, args, &zb, &packed, &steps[0]);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&want), bits(&got), "isa {}", i.name());
                let (want, got) = both::<u8>(&ctx, args, &zb, &packed, &steps[1]);
                assert_eq!(want, got, "isa {}", i.name());
            });
        }
    }
}

#[test]
fn b_per_call_rejects_bad_input() {
    // (A, M, K, its zero point, B, N, its zero point) -> the error, if any.
    fn run(
        (a, m, k, za): (&[u8], usize, usize, i32),
        (b, n, zb): (ASource<'_>, usize, ZeroPoint<'_>),
    ) -> std::result::Result<(), String> {
        let step = &OutputStep::Int32;
        let src = ASource::U8(a);
        let out = matmul_b_rows_vec::<i32>(
            &crate::exec::TEST,
            src,
            m,
            k,
            ZeroPoint::Scalar(za),
            b,
            n,
            zb,
            step,
        );
        out.map(|_| ()).map_err(|e| e.to_string())
    }
    let (a, b) = (vec![1u8; 6], vec![1i8; 12]);
    let a23 = (&a[..], 2, 3, 0);
    assert!(run(a23, (ASource::I8(&b), 4, ZeroPoint::Scalar(0))).is_ok());
    // B of the wrong size, zero points out of range or of the wrong length.
    assert!(run(a23, (ASource::I8(&b), 5, ZeroPoint::Scalar(0))).is_err());
    assert!(run(a23, (ASource::I8(&b), 4, ZeroPoint::Scalar(200))).is_err());
    assert!(run(a23, (ASource::U8(&[0u8; 12]), 4, ZeroPoint::Scalar(-1))).is_err());
    assert!(run(a23, (ASource::I8(&b), 4, ZeroPoint::PerIndex(&[0, 0, 0]))).is_err());
    // A whose K disagrees with B's.
    assert!(run(
        (&a[..], 3, 2, 0),
        (ASource::I8(&b), 4, ZeroPoint::Scalar(0))
    )
    .is_err());
    // The exactness bound holds as for packed B.
    let k = 40_000;
    let (a, b) = (vec![0u8; k], vec![0u8; k]);
    let e = run(
        (&a[..], 1, k, 255),
        (ASource::U8(&b), 1, ZeroPoint::Scalar(255)),
    );
    assert!(e.unwrap_err().contains("K = 40000"));
}

/// Speed of the product with B per call against the packed product (not a
/// test: `cargo test --release -- --ignored b_per_call_speed --nocapture`;
/// `HWREG_SPEED_SHAPE=m,k,n`).
#[test]
#[ignore]
fn b_per_call_speed() {
    let shape: Vec<usize> = std::env::var("HWREG_SPEED_SHAPE")
        .unwrap_or_else(|_| "1,1024,1024".into())
        .split(',')
        .filter_map(|v| v.parse().ok())
        .collect();
    let (m, k, n) = (shape[0], shape[1], shape[2]);
    let a = bytes(m * k, 1);
    let b: Vec<i8> = bytes(k * n, 2).into_iter().map(|x| x as i8).collect();
    let ctx = crate::exec::Ctx::serial();
    let p = PackedB::from_kn_i8(&ctx, &b, k, n, ZeroPoint::Scalar(0)).unwrap();
    let mut out = vec![0i32; m * n];
    let reps = (200_000_000 / (m * k * n)).max(3);
    for _ in 0..3 {
        let t = std::time::Instant::now();
        for _ in 0..reps {
            matmul_b_rows(
                &ctx,
                ASource::U8(&a),
                m,
                k,
                ZeroPoint::Scalar(0),
                ASource::I8(&b),
                n,
                ZeroPoint::Scalar(0),
                &OutputStep::Int32,
                as_uninit(&mut out),
            )
            .unwrap();
        }
        let r = t.elapsed().as_secs_f64() / reps as f64;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            matmul(
                &ctx,
                ASource::U8(&a),
                m,
                k,
                ZeroPoint::Scalar(0),
                &p,
                &OutputStep::Int32,
                &mut out,
            )
            .unwrap();
        }
        let q = t.elapsed().as_secs_f64() / reps as f64;
        eprintln!(
            "{m}x{k}x{n}: B per call {:.1} us, packed {:.1} us",
            r * 1e6,
            q * 1e6
        );
    }
}

#[test]
fn b_per_call_single_row_every_edge() {
    // The GEMV over row-major B: K across its bands of 16 rows and partial
    // groups, N across its 64-column steps and 2048-column chunks (and over
    // threads), uint8 and int8 B, with and without zero points (the column
    // sums). 1×1100×4200 is over a million MACs: it runs on 2 threads.
    let cases = [
        (1, 1),
        (3, 63),
        (4, 64),
        (15, 65),
        (16, 130),
        (17, 2047),
        (35, 2049),
        (67, 300),
        (1100, 4200),
    ];
    for (c, &(k, n)) in cases.iter().enumerate() {
        for sb in [false, true] {
            let zb: Vec<i32> = (0..n as i32)
                .map(|j| if sb { j % 7 - 3 } else { j % 251 })
                .collect();
            let seed = 7000 + c as u64;
            check(1, k, n, false, sb, None, None, seed, None);
            check(1, k, n, true, sb, Some(vec![-5]), Some(zb), seed, None);
        }
    }
}

#[test]
fn float_output_in_registers_matches_the_output_step() {
    // The plain float step applied by a direct kernel in registers gives the
    // bits of the step applied to the exact i32 product (`Epilogue::apply`):
    // tails of rows and columns, GEMV rows, several K blocks, zero points,
    // scalar and per-index scales, with and without bias and ReLU, and a
    // row scale wide enough for the f64 formula (no direct path then).
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (m, k, n) in [
        (1, 70, 130),
        (7, 1030, 70),
        (13, 64, 17),
        (50, 9, 200),
        (6, 4, 64),
        (1, 2100, 33),
    ] {
        let a = bytes(m * k, 31);
        let b = bytes(k * n, 32);
        let za: Vec<i32> = (0..m as i32).map(|i| (i * 37) % 256).collect();
        let cs: Vec<f32> = (0..n).map(|j| 0.003 + j as f32 * 1e-4).collect();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.7 - 30.0).collect();
        let rs: Vec<f32> = (0..m).map(|i| 0.001 * (1 + i % 5) as f32).collect();
        let mut rs_wide = rs.clone();
        rs_wide[m / 2] = 1e30;
        for ctx in [crate::exec::Ctx::serial(), crate::exec::TEST] {
            let packed = PackedB::from_kn_u8(&ctx, &b, k, n, ZeroPoint::Scalar(3)).unwrap();
            let zap = ZeroPoint::PerIndex(&za);
            for (row_scale, col_scale, bias, relu) in [
                (
                    Param::PerIndex(&rs),
                    Param::PerIndex(&cs),
                    Some(&bias[..]),
                    false,
                ),
                (
                    Param::PerIndex(&rs),
                    Param::PerIndex(&cs),
                    Some(&bias[..]),
                    true,
                ),
                (Param::Scalar(0.002), Param::Scalar(0.5), None, true),
                (Param::Scalar(0.002), Param::PerIndex(&cs), None, false),
                (
                    Param::PerIndex(&rs_wide),
                    Param::PerIndex(&cs),
                    Some(&bias[..]),
                    false,
                ),
            ] {
                let step = OutputStep::Float {
                    row_scale,
                    col_scale,
                    bias,
                    relu,
                };
                each_isa(|i| {
                    let acc: Vec<i32> = matmul_vec(
                        &ctx,
                        ASource::U8(&a),
                        m,
                        k,
                        zap,
                        &packed,
                        &OutputStep::Int32,
                    )
                    .unwrap();
                    let mut want = vec![f32::NAN; m * n];
                    step.prepare::<f32>(m, n)
                        .unwrap()
                        .apply(&acc, n, 0..m, 0..n, &mut want, n);
                    let got: Vec<f32> =
                        matmul_vec(&ctx, ASource::U8(&a), m, k, zap, &packed, &step).unwrap();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "isa {} {m}x{k}x{n} relu={relu}",
                        i.name()
                    );
                });
            }
        }
    }
}
