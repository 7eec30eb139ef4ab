//! Convolutions of the plan against the kernels called one by one on the
//! plain (unpadded) unfold: the padded-K unfold the GEMM reads in place
//! must give the same bits, static and dynamic, on every ISA.

use super::tests::{gemm_of, node};
use super::*;
use crate::cpu::each_isa;
use crate::exec::TEST;
use crate::quant::rows::quantize_rows_u8;

/// One conv's geometry: input `(c, h, w)`, kernel, stride, padding, out channels.
type Geometry = (
    (usize, usize, usize),
    (usize, usize),
    (usize, usize),
    (usize, usize),
    usize,
);

/// K = c·kh·kw: 9, 147, 45, 3, 20 (only the last a multiple of 4).
const CASES: [Geometry; 7] = [
    ((1, 8, 8), (3, 3), (1, 1), (1, 1), 8),
    ((3, 23, 21), (7, 7), (2, 2), (3, 3), 16),
    ((5, 7, 6), (3, 3), (2, 1), (0, 1), 19),
    ((3, 4, 5), (1, 1), (1, 1), (0, 0), 5),
    ((5, 6, 6), (2, 2), (1, 2), (1, 0), 7),
    // 1x1 with C a multiple of 4: the GEMM reads the NHWC image itself.
    ((8, 5, 3), (1, 1), (1, 1), (0, 0), 6),
    ((16, 4, 4), (1, 1), (1, 1), (0, 0), 24),
];

/// The conv of `x` (NCHW) the old way: quantize, NHWC, the plain unfold, the GEMM.
fn reference(x: &[f32], n: usize, geo: Geometry, g: &Gemm, residual: Option<&[f32]>) -> Vec<f32> {
    let ((c, h, w), k, s, p, _) = geo;
    let per = c * h * w;
    let (q, scales, zp) = match g.act {
        Some(a) => {
            let mut q = vec![0u8; x.len()];
            crate::quant::fixed::quantize_fixed_u8(&TEST, x, a.scale, a.zero_point, &mut q)
                .unwrap();
            (q, vec![a.scale; n], a.zero_point)
        }
        None => {
            let (q, s, z) = quantize_rows_u8(&TEST, x, n, per).unwrap();
            if z.iter().any(|&v| v != z[0]) {
                let (q, s, z) = quantize_rows_u8(&TEST, x, 1, n * per).unwrap();
                (q, vec![s[0]; n], z[0] as i32)
            } else {
                (q, s, z[0] as i32)
            }
        }
    };
    let mut t = vec![0u8; q.len()];
    to_nhwc(&q, &mut t, n, c, h * w);
    let win = Window::new(n, c, h, w, k, s, p);
    let cols = nhwc::im2col(&TEST, &t, win, zp as u8).unwrap();
    let (rows, kk) = win.check().unwrap().cols_shape();
    let rs: Vec<f32> = (0..rows).map(|r| scales[r * n / rows]).collect();
    let nout = g.packed.n();
    let step = match residual {
        None => OutputStep::Float {
            row_scale: Param::PerIndex(&rs),
            col_scale: Param::PerIndex(&g.scale),
            bias: g.bias.as_deref(),
            relu: g.relu,
        },
        Some(r) => OutputStep::Fused(crate::gemm::output::Fused {
            row_scale: Param::Scalar(scales[0]),
            col_scale: Param::PerIndex(&g.scale),
            bias: g.bias.as_deref(),
            residual: Some((r, nout)),
            relu: g.relu,
            requant: None,
        }),
    };
    let zp = ZeroPoint::Scalar(zp);
    gemm::matmul_vec::<f32>(&TEST, ASource::U8(&cols), rows, kk, zp, &g.packed, &step).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn convs_with_k_not_a_multiple_of_4_give_the_bits_of_the_plain_unfold_on_every_isa() {
    for (i, geo) in CASES.into_iter().enumerate() {
        let ((c, h, w), kernel, stride, padding, oc) = geo;
        let k = c * kernel.0 * kernel.1;
        for act in [None, Some((0.037f32, 117)), Some((0.05, 0))] {
            let mut g = gemm_of(oc, k, i as i32 + 1, act.is_none());
            g.act = act.map(|(scale, zero_point)| StaticAct { scale, zero_point });
            let conv = Op::Conv {
                gemm: g.clone(),
                kernel,
                stride,
                padding,
                nchw_in: true,
            };
            let plan = GraphPlan::new(
                vec![node(conv, &[0], 1)],
                vec![0],
                vec![vec![c, h, w]],
                vec![1],
            )
            .unwrap();
            // The plan's weights are padded exactly when K is not a multiple of 4.
            let Op::Conv { gemm: pg, .. } = &plan.nodes[0].op else {
                unreachable!()
            };
            assert_eq!(pg.packed.k(), k.next_multiple_of(4), "case {i}");
            let out = elems(&plan.dims[1]).unwrap();
            for n in [1, 3] {
                let x: Vec<f32> = (0..n * c * h * w)
                    .map(|j| ((j * 37 % 101) as f32 - 40.0) * 0.031 + (j / (c * h * w)) as f32)
                    .collect();
                let want = reference(&x, n, geo, &g, None);
                assert!(want.iter().any(|&v| v != want[0]), "a result that varies");
                each_isa(|isa| {
                    let mut y = vec![f32::NAN; n * out];
                    plan.forward(&TEST, n, &[&x], &mut [&mut y]).unwrap();
                    assert_eq!(
                        bits(&y),
                        bits(&want),
                        "{isa:?} case {i} act {act:?} batch {n}"
                    );
                });
            }
        }
    }
}

#[test]
fn a_fused_conv_add_with_padded_weights_gives_the_bits_of_the_plain_unfold() {
    let geo = CASES[1];
    let ((c, h, w), kernel, stride, padding, oc) = geo;
    let mut g = gemm_of(oc, c * kernel.0 * kernel.1, 5, true);
    g.act = Some(StaticAct {
        scale: 0.02,
        zero_point: 90,
    });
    let op = Op::ConvAdd {
        gemm: g.clone(),
        kernel,
        stride,
        padding,
        nchw_in: true,
        res_act: None,
    };
    let win = Window::new(1, c, h, w, kernel, stride, padding);
    let rdims = vec![win.oh(), win.ow(), oc];
    let plan = GraphPlan::new(
        vec![node(op, &[0, 1], 2)],
        vec![0, 1],
        vec![vec![c, h, w], rdims.clone()],
        vec![2],
    )
    .unwrap();
    let n = 2;
    let x: Vec<f32> = (0..n * c * h * w)
        .map(|j| ((j * 13 % 47) as f32 - 20.0) * 0.05)
        .collect();
    let r: Vec<f32> = (0..n * elems(&rdims).unwrap())
        .map(|j| ((j * 11 % 17) as f32 - 8.0) * 0.2)
        .collect();
    let want = reference(&x, n, geo, &g, Some(&r));
    each_isa(|isa| {
        let mut y = vec![f32::NAN; r.len()];
        plan.forward(&TEST, n, &[&x, &r], &mut [&mut y]).unwrap();
        assert_eq!(bits(&y), bits(&want), "{isa:?}");
    });
}
