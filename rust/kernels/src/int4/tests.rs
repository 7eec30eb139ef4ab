use super::*;
use crate::cpu;
use crate::exec::TEST;

/// Deterministic pseudo-random bytes.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u8
        })
        .collect()
}

/// A weight with codes `u` (`n × k`, 0..15) in canonical nibble order.
struct Case {
    n: usize,
    k: usize,
    group: Option<usize>,
    u: Vec<u8>,
    zp: Option<Vec<u8>>,
    scales: Vec<f32>,
}

impl Case {
    fn random(n: usize, k: usize, group: Option<usize>, sym: bool, seed: u64) -> Case {
        let ng = k.div_ceil(group.unwrap_or(k));
        let u = bytes(n * k, seed).iter().map(|v| v & 15).collect();
        let zp = (!sym).then(|| bytes(n * ng, seed + 1).iter().map(|v| v % 16).collect());
        let scales = bytes(n * ng, seed + 2)
            .iter()
            .map(|&v| (f32::from(v) + 1.0) / 1024.0)
            .collect();
        Case {
            n,
            k,
            group,
            u,
            zp,
            scales,
        }
    }
    fn ng(&self) -> usize {
        self.k.div_ceil(self.group.unwrap_or(self.k))
    }
    fn packed(&self) -> Vec<u8> {
        let rb = self.k.div_ceil(2);
        let mut p = vec![0u8; self.n * rb];
        for c in 0..self.n {
            for kk in 0..self.k {
                p[c * rb + kk / 2] |= self.u[c * self.k + kk] << (4 * (kk % 2));
            }
        }
        p
    }
    fn weight(&self) -> Int4Weight {
        Int4Weight::new(
            &self.packed(),
            self.n,
            self.k,
            self.group,
            &self.scales,
            self.zp.as_deref(),
        )
        .unwrap()
    }
    /// `w[c, k] = u - z`.
    fn w(&self, c: usize, kk: usize) -> i32 {
        let g = kk / self.group.unwrap_or(self.k);
        let z = self.zp.as_ref().map_or(8, |z| z[c * self.ng() + g]);
        i32::from(self.u[c * self.k + kk]) - i32::from(z)
    }
    /// The naive group sums, `(m, n, ng)`, in i64.
    fn group_sums(&self, xq: &[u8], m: usize) -> Vec<i64> {
        let (ng, gl) = (self.ng(), self.group.unwrap_or(self.k));
        let mut out = vec![0i64; m * self.n * ng];
        for r in 0..m {
            for c in 0..self.n {
                for kk in 0..self.k {
                    out[(r * self.n + c) * ng + kk / gl] +=
                        i64::from(xq[r * self.k + kk]) * i64::from(self.w(c, kk));
                }
            }
        }
        out
    }
    /// The float output by the module doc's formulas, from the naive sums.
    fn linear_ref(&self, x: &[f32], m: usize, bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
        let (n, k, ng) = (self.n, self.k, self.ng());
        let mut xq = vec![0u8; m * k];
        let mut qp = vec![];
        for r in 0..m {
            let (_, z, s) = crate::quant::rows::quantize_row_body(
                &x[r * k..(r + 1) * k],
                &mut xq[r * k..(r + 1) * k],
            )
            .unwrap();
            qp.push((z, s));
        }
        let d = self.group_sums(&xq, m);
        let t = |c: usize, g: usize| -> i64 {
            let gl = self.group.unwrap_or(k);
            (g * gl..((g + 1) * gl).min(k))
                .map(|kk| i64::from(self.w(c, kk)))
                .sum()
        };
        let mut out = vec![0.0f32; m * n];
        for r in 0..m {
            let (xz, xs) = qp[r];
            for c in 0..n {
                let b = bias.map_or(0.0, |b| b[c]);
                let mut y = if self.group.is_none() {
                    let acc = d[(r * n + c) * ng] - i64::from(xz) * t(c, 0);
                    ((acc as i32 as f32 * xs) * self.scales[c]) + b
                } else {
                    let mut f = 0.0f32;
                    let mut cc = 0.0f64;
                    for g in 0..ng {
                        let q = d[(r * n + c) * ng + g] - 128 * t(c, g);
                        f += q as f32 * self.scales[c * ng + g];
                        cc += f64::from(self.scales[c * ng + g]) * t(c, g) as f64;
                    }
                    ((f + (128 - xz) as f32 * cc as f32) * xs) + b
                };
                if relu {
                    y = y.max(0.0);
                }
                out[r * n + c] = y;
            }
        }
        out
    }
}

const SHAPES: &[(usize, usize, usize, Option<usize>)] = &[
    // (m, n, k, group)
    (1, 1, 1, None),
    (1, 17, 9, None),
    (2, 33, 100, Some(32)),
    (3, 16, 64, Some(64)),
    (5, 50, 130, Some(128)),
    (4, 65, 257, Some(32)),
    (7, 31, 40, Some(8)),
    (16, 67, 300, Some(64)),
    (1, 129, 1000, None),
    (9, 70, 96, Some(128)),
];

#[test]
fn group_sums_are_exact_on_every_path() {
    cpu::each_isa(|isa| {
        for (i, &(m, n, k, group)) in SHAPES.iter().enumerate() {
            for sym in [true, false] {
                let case = Case::random(n, k, group, sym, i as u64 * 7 + sym as u64);
                let w = case.weight();
                let xq = bytes(m * k, 100 + i as u64);
                let want = case.group_sums(&xq, m);
                for ctx in [Ctx::serial(), TEST] {
                    let got = group_sums(&ctx, &xq, m, k, &w).unwrap();
                    let got: Vec<i64> = got.iter().map(|&v| i64::from(v)).collect();
                    assert_eq!(
                        got,
                        want,
                        "{} m={m} n={n} k={k} g={group:?} sym={sym}",
                        isa.name()
                    );
                }
            }
        }
    });
}

#[test]
fn extremes_do_not_saturate() {
    // x_q = 0 or 255 everywhere (x' = -128, 127); codes 15 with z = 0 (w = 15) and codes 0 with z = 8 (w = -8),
    // over the longest groups we accept in a test-sized weight.
    cpu::each_isa(|isa| {
        for (k, group) in [(4096usize, None), (384, Some(128)), (17, Some(8))] {
            let n = 19;
            let ng = k.div_ceil(group.unwrap_or(k));
            for (code, zp) in [(15u8, Some(vec![0u8; n * ng])), (0u8, None), (15, None)] {
                let case = Case {
                    n,
                    k,
                    group,
                    u: vec![code; n * k],
                    zp,
                    scales: vec![1.0; n * ng],
                };
                let w = case.weight();
                for (m, xv) in [(1, 255u8), (2, 0), (3, 255), (4, 0), (5, 255), (1, 0)] {
                    let xq = vec![xv; m * k];
                    let got = group_sums(&TEST, &xq, m, k, &w).unwrap();
                    let want = case.group_sums(&xq, m);
                    assert!(
                        got.iter().zip(&want).all(|(a, b)| i64::from(*a) == *b),
                        "{} k={k}",
                        isa.name()
                    );
                }
            }
        }
    });
}

#[test]
fn linear_matches_the_formula_bit_for_bit_on_every_path() {
    let mut first: Vec<Vec<f32>> = Vec::new();
    cpu::each_isa(|isa| {
        let mut outs = Vec::new();
        for (i, &(m, n, k, group)) in SHAPES.iter().enumerate() {
            for sym in [true, false] {
                let case = Case::random(n, k, group, sym, 31 + i as u64);
                let w = case.weight();
                let x: Vec<f32> = bytes(m * k, 7 + i as u64)
                    .iter()
                    .map(|&v| (f32::from(v) - 100.0) * 0.013)
                    .collect();
                let bias: Vec<f32> = (0..n).map(|c| c as f32 * 0.25 - 1.0).collect();
                for relu in [false, true] {
                    let want = case.linear_ref(&x, m, Some(&bias), relu);
                    for ctx in [Ctx::serial(), TEST] {
                        let got = linear(&ctx, &x, m, k, &w, Some(&bias), relu).unwrap();
                        assert_eq!(
                            got,
                            want,
                            "{} m={m} n={n} k={k} g={group:?} sym={sym} relu={relu}",
                            isa.name()
                        );
                    }
                    outs.push(want);
                }
            }
        }
        if first.is_empty() {
            first = outs;
        } else {
            assert_eq!(first, outs, "{} differs from generic", isa.name());
        }
    });
}

#[test]
fn large_gemv_with_threads_is_exact() {
    cpu::each_isa(|isa| {
        let (n, k) = (300, 2048);
        for group in [None, Some(128)] {
            let case = Case::random(n, k, group, true, 5);
            let w = case.weight();
            let xq = bytes(k, 9);
            let got = group_sums(&TEST, &xq, 1, k, &w).unwrap();
            let want = case.group_sums(&xq, 1);
            assert!(
                got.iter().zip(&want).all(|(a, b)| i64::from(*a) == *b),
                "{}",
                isa.name()
            );
        }
    });
}

#[test]
fn one_row_in_runs_over_threads_is_exact() {
    // One row is cut into shrinking runs of 4 blocks (see `drive`): shares of
    // 8, 4 and fewer blocks, a short last block, on 1-3 threads, every path.
    cpu::each_isa(|isa| {
        for (i, &(n, k, group, sym)) in [
            (597usize, 1024usize, None, true),
            (600, 512, Some(128), false),
            (200, 2048, Some(32), true),
            (1100, 264, Some(8), false),
        ]
        .iter()
        .enumerate()
        {
            let case = Case::random(n, k, group, sym, 40 + i as u64);
            let w = case.weight();
            let xq = bytes(k, 50 + i as u64);
            let want_d = case.group_sums(&xq, 1);
            let x: Vec<f32> = xq.iter().map(|&v| (f32::from(v) - 90.0) * 0.021).collect();
            let bias: Vec<f32> = (0..n).map(|c| c as f32 * 0.125 - 3.0).collect();
            let want = case.linear_ref(&x, 1, Some(&bias), false);
            for ctx in [Ctx::serial(), TEST, Ctx::new(3)] {
                let d = group_sums(&ctx, &xq, 1, k, &w).unwrap();
                assert!(
                    d.iter().zip(&want_d).all(|(a, b)| i64::from(*a) == *b),
                    "{} n={n} k={k} g={group:?} threads={}",
                    isa.name(),
                    ctx.threads()
                );
                let got = linear(&ctx, &x, 1, k, &w, Some(&bias), false).unwrap();
                assert_eq!(
                    got,
                    want,
                    "{} n={n} k={k} g={group:?} threads={}",
                    isa.name(),
                    ctx.threads()
                );
            }
        }
    });
}

#[test]
fn bad_input_is_an_error() {
    let c = Case::random(3, 10, Some(8), true, 1);
    let p = c.packed();
    let s = &c.scales;
    let is_err = |r: Result<Int4Weight>| assert!(r.is_err());
    is_err(Int4Weight::new(&p, 3, 10, Some(12), s, None)); // not a multiple of 8
    is_err(Int4Weight::new(&p, 3, 10, Some(0), s, None));
    is_err(Int4Weight::new(&p[1..], 3, 10, Some(8), s, None));
    is_err(Int4Weight::new(&p, 3, 10, Some(8), &s[1..], None));
    is_err(Int4Weight::new(&p, 3, 10, Some(8), &[0.0; 6], None));
    is_err(Int4Weight::new(&p, 3, 10, Some(8), &[f32::NAN; 6], None));
    is_err(Int4Weight::new(&p, 3, 10, Some(8), s, Some(&[16; 6])));
    is_err(Int4Weight::new(&p, 3, 10, Some(8), s, Some(&[1; 5])));
    is_err(Int4Weight::new(&[], 0, 0, None, &[], None));
    // A per-channel group too long for int32 sums, and absurd sizes: errors, not aborts.
    assert!(matches!(
        Int4Weight::new(&[], 0, MAX_GROUP_LEN + 1, None, &[], None),
        Err(Error::Value(_))
    ));
    is_err(Int4Weight::new(&p, usize::MAX / 2, 10, Some(8), s, None));
    is_err(Int4Weight::new(&p, 3, usize::MAX, Some(8), s, None));
    let w = c.weight();
    assert!(linear(&TEST, &[0.0; 9], 1, 9, &w, None, false).is_err());
    assert!(linear(&TEST, &[0.0; 10], 2, 10, &w, None, false).is_err());
    assert!(linear(&TEST, &[0.0; 10], 1, 10, &w, Some(&[0.0; 2]), false).is_err());
    assert!(linear(&TEST, &[f32::INFINITY; 10], 1, 10, &w, None, false).is_err());
    assert!(linear(&TEST, &[0.0; 10], usize::MAX, 10, &w, None, false).is_err());
    assert!(group_sums(&TEST, &[0; 10], usize::MAX / 5, 10, &w).is_err());
    // Empty batches and zero outputs are fine.
    assert_eq!(
        linear(&TEST, &[], 0, 10, &w, None, false).unwrap(),
        Vec::<f32>::new()
    );
    let w0 = Int4Weight::new(&[], 0, 10, Some(8), &[], None).unwrap();
    assert_eq!(
        linear(&TEST, &[1.0; 10], 1, 10, &w0, None, false).unwrap(),
        Vec::<f32>::new()
    );
}

use crate::Error;
