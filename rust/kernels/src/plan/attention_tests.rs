use super::*;
use crate::error::Error;
use crate::exec::TEST;
use crate::nnops::{gelu::gelu_forward, norm::layer_norm_forward, softmax::softmax_forward};
use crate::plan::graph::{GraphPlan, Node, Op};

fn data(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((((i * 37 + seed * 11) % 41) as f32) - 20.0) * 0.07)
        .collect()
}

/// Runs a one-node plan (inputs 0.., output after them) on `batch` samples.
fn run1(op: Op, dims: &[&[usize]], xs: &[&[f32]], batch: usize) -> Result<Vec<f32>> {
    let n_in = dims.len();
    let plan = GraphPlan::new(
        vec![Node {
            op,
            inputs: (0..n_in).collect(),
            output: n_in,
        }],
        (0..n_in).collect(),
        dims.iter().map(|d| d.to_vec()).collect(),
        vec![n_in],
    )?;
    let per: usize = plan.output_dims()[0].iter().product();
    let mut y = vec![f32::NAN; per * batch];
    plan.forward(&TEST, batch, xs, &mut [&mut y])?;
    Ok(y)
}

#[test]
fn layer_norm_softmax_gelu_match_the_nnops_kernels_bit_for_bit() {
    let (batch, dims) = (3, [4usize, 6]);
    let x = data(batch * 24, 1);
    let w: Vec<f32> = (0..6).map(|i| 0.5 + i as f32 * 0.1).collect();
    let b: Vec<f32> = (0..6).map(|i| i as f32 * 0.03 - 0.1).collect();
    let ln = LayerNorm {
        d: 6,
        weight: Some(w.clone()),
        bias: Some(b.clone()),
        eps: 1e-5,
    };
    let got = run1(Op::LayerNorm(ln), &[&dims], &[&x], batch).unwrap();
    let want = layer_norm_forward(&TEST, &x, batch * 4, 6, Some(&w), Some(&b), 1e-5).unwrap();
    assert_eq!(got, want.y);
    // over both per-sample axes: d = 24
    let ln2 = LayerNorm {
        d: 24,
        weight: None,
        bias: None,
        eps: 1e-3,
    };
    let got = run1(Op::LayerNorm(ln2), &[&dims], &[&x], batch).unwrap();
    let want = layer_norm_forward(&TEST, &x, batch, 24, None, None, 1e-3).unwrap();
    assert_eq!(got, want.y);

    let got = run1(Op::Softmax, &[&dims], &[&x], batch).unwrap();
    assert_eq!(got, softmax_forward(&TEST, &x, batch * 4, 6).unwrap());
    for a in [Approximate::None, Approximate::Tanh] {
        let got = run1(Op::Gelu(a), &[&dims], &[&x], batch).unwrap();
        assert_eq!(got, gelu_forward(&TEST, &x, a).unwrap());
    }
}

#[test]
fn layer_norm_rejects_sizes_that_no_trailing_axes_hold() {
    let ln = |d, w: Option<Vec<f32>>| LayerNorm {
        d,
        weight: w,
        bias: None,
        eps: 1e-5,
    };
    let x = data(24, 0);
    for bad in [
        ln(5, None),
        ln(4, None),
        ln(0, None),
        ln(6, Some(vec![1.0; 5])),
    ] {
        let e = run1(Op::LayerNorm(bad), &[&[4, 6]], &[&x], 1).unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{e:?}");
    }
    let mut nan_eps = ln(6, None);
    nan_eps.eps = f64::NAN;
    assert!(matches!(
        run1(Op::LayerNorm(nan_eps), &[&[4, 6]], &[&x], 1).unwrap_err(),
        Error::Value(_)
    ));
}

/// `a @ b` in f64 over `lead` products (b as `(n, k)` rows when `trans_b`).
fn matmul_ref(
    a: &[f32],
    b: &[f32],
    lead: usize,
    m: usize,
    k: usize,
    n: usize,
    trans_b: bool,
) -> Vec<f64> {
    let mut y = vec![0.0f64; lead * m * n];
    for p in 0..lead {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for t in 0..k {
                    let bv = if trans_b {
                        b[p * n * k + j * k + t]
                    } else {
                        b[p * k * n + t * n + j]
                    };
                    s += a[p * m * k + i * k + t] as f64 * bv as f64;
                }
                y[p * m * n + i * n + j] = s;
            }
        }
    }
    y
}

#[test]
fn matmul_matches_a_float64_product_on_awkward_shapes() {
    for &(batch, h, m, k, n) in &[
        (1, 2, 8, 4, 8),
        (3, 2, 8, 8, 4),
        (2, 1, 1, 1, 1),
        (2, 3, 5, 17, 9),
        (1, 1, 3, 0, 2),
        (1, 4, 64, 64, 64), // parallel: 1M MACs
    ] {
        for trans_b in [false, true] {
            let a = data(batch * h * m * k, 2);
            let b = data(batch * h * k * n, 3);
            let bd = if trans_b { [h, n, k] } else { [h, k, n] };
            let got = run1(Op::MatMul { trans_b }, &[&[h, m, k], &bd], &[&a, &b], batch).unwrap();
            let want = matmul_ref(&a, &b, batch * h, m, k, n, trans_b);
            for (g, w) in got.iter().zip(&want) {
                let tol = 1e-5 * (k as f64 + 1.0) * (1.0 + w.abs());
                assert!(
                    (*g as f64 - w).abs() <= tol,
                    "{batch} {h} {m} {k} {n} {trans_b}: {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn matmul_rejects_operands_that_do_not_fit() {
    let a = data(64, 0);
    for (ad, bd) in [
        (vec![2usize, 8, 4], vec![2usize, 8, 4]), // k differs
        (vec![2, 8, 4], vec![1, 4, 16]),          // leading axes differ
        (vec![64], vec![64]),                     // rank 1
        (vec![2, 8, 4], vec![8, 8]),              // ranks differ
    ] {
        let b = vec![0.0f32; bd.iter().product()];
        let e = run1(Op::MatMul { trans_b: false }, &[&ad, &bd], &[&a, &b], 1).unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{ad:?} {bd:?}: {e:?}");
    }
    // one input for a two-input op
    let e = run1(Op::MatMul { trans_b: false }, &[&[8, 8]], &[&a], 1).unwrap_err();
    assert!(matches!(e, Error::Shape(_)));
}

/// `np.transpose` of one sample by explicit index arithmetic.
fn transpose_ref(perm: &[usize], x: &[f32], xd: &[usize]) -> Vec<f32> {
    let r = xd.len();
    let od: Vec<usize> = perm.iter().map(|&p| xd[p]).collect();
    let total: usize = xd.iter().product();
    let mut y = vec![0.0; total];
    for (o, yo) in y.iter_mut().enumerate() {
        // output multi-index
        let mut rem = o;
        let mut oi = vec![0usize; r];
        for ax in (0..r).rev() {
            oi[ax] = rem % od[ax];
            rem /= od[ax];
        }
        let mut ii = vec![0usize; r];
        for ax in 0..r {
            ii[perm[ax]] = oi[ax];
        }
        let off = ii.iter().zip(xd).fold(0, |acc, (&i, &d)| acc * d + i);
        *yo = x[off];
    }
    y
}

#[test]
fn transpose_matches_index_arithmetic_for_every_permutation_of_four_axes() {
    let xd = [2usize, 3, 1, 4];
    let batch = 2;
    let x = data(batch * 24, 5);
    let mut perms = Vec::new();
    for a in 0..4 {
        for b in 0..4 {
            for c in 0..4 {
                for d in 0..4 {
                    let p = vec![a, b, c, d];
                    let mut s = p.clone();
                    s.sort_unstable();
                    if s == [0, 1, 2, 3] {
                        perms.push(p);
                    }
                }
            }
        }
    }
    assert_eq!(perms.len(), 24);
    for perm in perms {
        let got = run1(Op::Transpose(perm.clone()), &[&xd], &[&x], batch).unwrap();
        let mut want = transpose_ref(&perm, &x[..24], &xd);
        want.extend(transpose_ref(&perm, &x[24..], &xd));
        assert_eq!(got, want, "perm {perm:?}");
    }
    // rank 1 and the identity of rank 5
    let got = run1(Op::Transpose(vec![0]), &[&[5]], &[&x[..10]], 2).unwrap();
    assert_eq!(got, &x[..10]);
}

#[test]
fn transpose_rejects_what_is_not_a_permutation() {
    let x = data(24, 0);
    for perm in [vec![0, 0, 1], vec![0, 1], vec![0, 1, 3], vec![2, 1, 0, 3]] {
        let e = run1(Op::Transpose(perm.clone()), &[&[2, 3, 4]], &[&x], 1).unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{perm:?}");
    }
}

#[test]
fn mean_adds_slices_in_order_then_divides() {
    let (batch, xd) = (2, [3usize, 5, 4]);
    let x = data(batch * 60, 7);
    for axis in [0usize, 1] {
        for keepdims in [false, true] {
            let op = Op::Mean { axis, keepdims };
            let got = run1(op, &[&xd], &[&x], batch).unwrap();
            let (outer, n, inner) = if axis == 0 { (1, 3, 20) } else { (3, 5, 4) };
            let mut want = Vec::new();
            for s in 0..batch * outer {
                for i in 0..inner {
                    let at = |t: usize| x[s * n * inner + t * inner + i];
                    let mut acc = at(0);
                    for t in 1..n {
                        acc += at(t);
                    }
                    want.push(acc / n as f32);
                }
            }
            assert_eq!(got, want, "axis {axis}");
        }
    }
    // the innermost axis (NumPy sums it pairwise) and a bad axis are refused
    for axis in [2usize, 3] {
        let e = run1(
            Op::Mean {
                axis,
                keepdims: false,
            },
            &[&xd],
            &[&x],
            1,
        )
        .unwrap_err();
        assert!(matches!(e, Error::Shape(_)));
    }
}

#[test]
fn scalar_ops_follow_ieee_float32() {
    let x = data(12, 9);
    let c = 2.828_427_f32;
    for (s, f) in [
        (
            Scalar::Add(c),
            (|v: f32, c: f32| v + c) as fn(f32, f32) -> f32,
        ),
        (Scalar::Sub(c), |v, c| v - c),
        (Scalar::RSub(c), |v, c| c - v),
        (Scalar::Mul(c), |v, c| v * c),
        (Scalar::Div(c), |v, c| v / c),
        (Scalar::RDiv(c), |v, c| c / v),
    ] {
        let got = run1(Op::Scalar(s), &[&[3, 4]], &[&x], 1).unwrap();
        let want: Vec<f32> = x.iter().map(|&v| f(v, c)).collect();
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{s:?}"
        );
    }
}

#[test]
fn an_attention_block_runs_as_one_plan() {
    // q, k, v (tokens 8, heads 2, head dim 4) -> softmax(q kᵀ / 2) v, transposed back
    let (batch, t, h, d) = (2usize, 8usize, 2usize, 4usize);
    let q = data(batch * t * h * d, 1);
    let k = data(batch * t * h * d, 2);
    let v = data(batch * t * h * d, 3);
    let hd = [t, h, d];
    let tr = |x: usize, y: usize| Node {
        op: Op::Transpose(vec![1, 0, 2]),
        inputs: vec![x],
        output: y,
    };
    let nodes = vec![
        tr(0, 3),
        tr(1, 4),
        tr(2, 5),
        Node {
            op: Op::MatMul { trans_b: true },
            inputs: vec![3, 4],
            output: 6,
        },
        Node {
            op: Op::Scalar(Scalar::Div(2.0)),
            inputs: vec![6],
            output: 7,
        },
        Node {
            op: Op::Softmax,
            inputs: vec![7],
            output: 8,
        },
        Node {
            op: Op::MatMul { trans_b: false },
            inputs: vec![8, 5],
            output: 9,
        },
        tr(9, 10),
        Node {
            op: Op::Reshape(vec![t, h * d]),
            inputs: vec![10],
            output: 11,
        },
    ];
    let plan = GraphPlan::new(nodes, vec![0, 1, 2], vec![hd.to_vec(); 3], vec![11]).unwrap();
    assert_eq!(plan.output_dims(), vec![&[t, h * d][..]]);
    let mut y = vec![f32::NAN; batch * t * h * d];
    plan.forward(&TEST, batch, &[&q, &k, &v], &mut [&mut y])
        .unwrap();
    // reference in f64
    for s in 0..batch {
        for head in 0..h {
            for i in 0..t {
                let at = |x: &[f32], tok: usize, c: usize| {
                    x[s * t * h * d + tok * h * d + head * d + c] as f64
                };
                let sc: Vec<f64> = (0..t)
                    .map(|j| (0..d).map(|c| at(&q, i, c) * at(&k, j, c)).sum::<f64>() / 2.0)
                    .collect();
                let mx = sc.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = sc.iter().map(|v| (v - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    let want: f64 = (0..t).map(|j| e[j] / z * at(&v, j, c)).sum();
                    let got = y[s * t * h * d + i * h * d + head * d + c] as f64;
                    assert!(
                        (got - want).abs() < 1e-5,
                        "{s} {head} {i} {c}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_isa_path_gives_the_same_bits() {
    let x = data(3 * 40, 4);
    let b = data(3 * 40, 6);
    let w: Vec<f32> = (0..40).map(|i| 1.0 + i as f32 * 0.01).collect();
    let ln = || {
        Op::LayerNorm(LayerNorm {
            d: 40,
            weight: Some(w.clone()),
            bias: None,
            eps: 1e-5,
        })
    };
    let run_all = || {
        vec![
            run1(ln(), &[&[40]], &[&x], 3).unwrap(),
            run1(Op::Softmax, &[&[5, 8]], &[&x], 3).unwrap(),
            run1(Op::Gelu(Approximate::None), &[&[40]], &[&x], 3).unwrap(),
            run1(Op::Gelu(Approximate::Tanh), &[&[40]], &[&x], 3).unwrap(),
            run1(
                Op::MatMul { trans_b: false },
                &[&[5, 8], &[8, 5]],
                &[&x, &b],
                3,
            )
            .unwrap(),
            run1(
                Op::MatMul { trans_b: true },
                &[&[4, 10], &[4, 10]],
                &[&x, &b],
                3,
            )
            .unwrap(),
        ]
    };
    let mut first: Option<Vec<Vec<u32>>> = None;
    crate::cpu::each_isa(|isa| {
        let bits: Vec<Vec<u32>> = run_all()
            .iter()
            .map(|v| v.iter().map(|f| f.to_bits()).collect())
            .collect();
        match &first {
            None => first = Some(bits),
            Some(f) => assert_eq!(f, &bits, "isa {}", isa.name()),
        }
    });
}
