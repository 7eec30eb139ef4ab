//! Convolutions of the plan against the kernels called one by one on the
//! plain (unpadded) unfold: the GEMM's own unfold of A, block by block
//! (padded K included), must give the same bits, static and dynamic, on
//! every ISA; and the GEMM on a convolution's rows against the GEMM on the
//! unfolded matrix, for every output kind, zero points of B that need the
//! row sums, and both ways the driver takes (unfolded per row block, or
//! once when the threads split the columns).

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

/// K = c·kh·kw: 9, 147, 45, 3, 20, 8, 16, 425, 603, 20, 576, 294 (channels
/// that are no multiple of 4, 16 or 64; kernels 1, 2, 3, 5 and 7; strides
/// 1 and 2; padding 0, 1, 2 and 3; odd image sizes).
const CASES: [Geometry; 12] = [
    ((1, 8, 8), (3, 3), (1, 1), (1, 1), 8),
    ((3, 23, 21), (7, 7), (2, 2), (3, 3), 16),
    ((5, 7, 6), (3, 3), (2, 1), (0, 1), 19),
    ((3, 4, 5), (1, 1), (1, 1), (0, 0), 5),
    ((5, 6, 6), (2, 2), (1, 2), (1, 0), 7),
    // 1x1 with C a multiple of 4: the GEMM reads the NHWC image itself.
    ((8, 5, 3), (1, 1), (1, 1), (0, 0), 6),
    ((16, 4, 4), (1, 1), (1, 1), (0, 0), 24),
    ((17, 9, 11), (5, 5), (1, 1), (3, 3), 21),
    ((67, 6, 5), (3, 3), (2, 2), (1, 1), 33),
    // 1x1 stride 2 (a ResNet downsample): unfolded, not read in place.
    ((20, 5, 7), (1, 1), (2, 2), (0, 0), 40),
    ((64, 7, 7), (3, 3), (1, 1), (1, 1), 64),
    ((6, 12, 10), (7, 7), (1, 2), (3, 2), 9),
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
            residual: Some((crate::gemm::output::Residual::F32(r), nout)),
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
            for n in [1, 3, 5] {
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

/// A convolution's rows for [`gemm::matmul_rows`]: NHWC bytes, the window, the pad.
fn conv_rows(
    n: usize,
    (c, h, w): (usize, usize, usize),
    k: (usize, usize),
    s: (usize, usize),
    p: (usize, usize),
) -> (Vec<u8>, Window) {
    let x: Vec<u8> = (0..n * c * h * w).map(|i| (i * 97 % 251) as u8).collect();
    (x, Window::new(n, c, h, w, k, s, p).check().unwrap())
}

#[test]
fn the_gemm_on_a_convolutions_rows_gives_the_bits_of_the_gemm_on_its_unfold() {
    // (batch, image, kernel, stride, padding, out channels, K padding): the
    // first rows-split and unfolded per row block over several threads, the
    // second with more columns than rows and a big B (the columns split, A
    // unfolded once), then small and odd ones (one thread, a GEMV row,
    // K padded past the unfold).
    let cases = [
        (2, (8, 30, 27), (3, 3), (1, 1), (1, 1), 24, 0),
        (1, (64, 7, 7), (3, 3), (1, 1), (1, 1), 512, 0),
        (1, (3, 9, 7), (3, 3), (2, 2), (0, 0), 5, 3),
        (3, (5, 1, 1), (3, 3), (1, 1), (1, 1), 17, 1),
        (1, (7, 5, 5), (5, 5), (1, 1), (0, 0), 70, 0),
    ];
    for (i, (n, img, kernel, stride, padding, oc, extra)) in cases.into_iter().enumerate() {
        let (x, win) = conv_rows(n, img, kernel, stride, padding);
        let (rows, taps) = win.cols_shape();
        let k = taps + extra;
        let mut cols = vec![0u8; rows * k];
        nhwc::im2col_rows_into(&TEST, &x, win, 77, k, 0, &mut cols).unwrap();
        let wu: Vec<u8> = (0..oc * k).map(|j| (j * 31 % 256) as u8).collect();
        let wi: Vec<i8> = (0..oc * k)
            .map(|j| ((j * 7 % 23) as i32 - 11) as i8)
            .collect();
        let zps: Vec<i32> = (0..oc).map(|j| j as i32 % 5 - 2).collect();
        let bs = [
            // Symmetric int8 (no row sums), uint8 (stored zero point 3) and
            // per-column int8 zero points.
            PackedB::from_nk_i8(&TEST, &wi, oc, k, ZeroPoint::Scalar(0)).unwrap(),
            PackedB::from_nk_u8(&TEST, &wu, oc, k, ZeroPoint::Scalar(131)).unwrap(),
            PackedB::from_nk_i8(&TEST, &wi, oc, k, ZeroPoint::PerIndex(&zps)).unwrap(),
        ];
        let row_zp: Vec<i32> = (0..rows).map(|r| 70 + (r % 13) as i32).collect();
        let scale: Vec<f32> = (0..oc).map(|j| 0.01 + j as f32 * 1e-4).collect();
        let step = OutputStep::Float {
            row_scale: Param::Scalar(0.03),
            col_scale: Param::PerIndex(&scale),
            bias: None,
            relu: false,
        };
        for (bi, b) in bs.iter().enumerate() {
            for (zi, zp) in [ZeroPoint::Scalar(77), ZeroPoint::PerIndex(&row_zp)]
                .into_iter()
                .enumerate()
            {
                let a = ASource::U8(&cols);
                let want_i =
                    gemm::matmul_vec::<i32>(&TEST, a, rows, k, zp, b, &OutputStep::Int32).unwrap();
                let want_f = gemm::matmul_vec::<f32>(&TEST, a, rows, k, zp, b, &step).unwrap();
                assert!(
                    want_i.iter().any(|&v| v != want_i[0]),
                    "case {i}: a result that varies"
                );
                each_isa(|isa| {
                    let what = format!("{isa:?} case {i} B {bi} zp {zi}");
                    let cv = ARows::Conv(ConvRows::new(&x, win, 77).unwrap());
                    let mut got_i = vec![i32::MIN; rows * oc];
                    gemm::matmul_rows(&TEST, cv, rows, k, zp, b, &OutputStep::Int32, &mut got_i)
                        .unwrap();
                    assert_eq!(got_i, want_i, "{what}");
                    let mut got_f = vec![f32::NAN; rows * oc];
                    gemm::matmul_rows(&TEST, cv, rows, k, zp, b, &step, &mut got_f).unwrap();
                    assert_eq!(bits(&got_f), bits(&want_f), "{what}");
                    let serial = crate::exec::Ctx::serial();
                    got_i.fill(i32::MIN);
                    gemm::matmul_rows(&serial, cv, rows, k, zp, b, &OutputStep::Int32, &mut got_i)
                        .unwrap();
                    assert_eq!(got_i, want_i, "{what}, one thread");
                });
            }
        }
    }
}

#[test]
fn a_convolutions_rows_that_do_not_fit_the_gemm_are_an_error() {
    let (x, win) = conv_rows(1, (3, 5, 5), (3, 3), (1, 1), (1, 1));
    let (rows, taps) = win.cols_shape();
    let b = PackedB::from_nk_i8(
        &TEST,
        &vec![1i8; 4 * (taps - 1)],
        4,
        taps - 1,
        ZeroPoint::Scalar(0),
    )
    .unwrap();
    let cv = ARows::Conv(ConvRows::new(&x, win, 0).unwrap());
    let mut y = vec![0i32; rows * 4];
    // K shorter than the unfold, or a row count that is not the unfold's.
    assert!(gemm::matmul_rows(
        &TEST,
        cv,
        rows,
        taps - 1,
        ZeroPoint::Scalar(0),
        &b,
        &OutputStep::Int32,
        &mut y
    )
    .is_err());
    let b =
        PackedB::from_nk_i8(&TEST, &vec![1i8; 4 * taps], 4, taps, ZeroPoint::Scalar(0)).unwrap();
    assert!(gemm::matmul_rows(
        &TEST,
        cv,
        rows - 1,
        taps,
        ZeroPoint::Scalar(0),
        &b,
        &OutputStep::Int32,
        &mut y[4..]
    )
    .is_err());
    assert!(gemm::matmul_rows(
        &TEST,
        cv,
        rows,
        taps,
        ZeroPoint::Scalar(256),
        &b,
        &OutputStep::Int32,
        &mut y
    )
    .is_err());
    assert!(ConvRows::new(&x[1..], win, 0).is_err());
}

#[test]
fn the_teams_nhwc_transpose_is_the_serial_one() {
    // Images of several pixel blocks (and a partial last block), big
    // enough to be split over the team; one and three channels, bytes and floats.
    for (n, c, hw) in [(3, 3, 2 * NHWC_PIXELS + 5), (2, 1, NHWC_PIXELS * 33 + 1), (5, 7, 77)] {
        let x: Vec<u8> = (0..n * c * hw).map(|i| (i * 13 % 251) as u8).collect();
        let mut want = vec![0u8; x.len()];
        to_nhwc(&x, &mut want, n, c, hw);
        for img in 0..n {
            for p in [0, hw / 2, hw - 1] {
                for ch in 0..c {
                    assert_eq!(want[(img * hw + p) * c + ch], x[(img * c + ch) * hw + p]);
                }
            }
        }
        let mut got = vec![0u8; x.len()];
        to_nhwc_team(&TEST, &x, &mut got, n, c, hw);
        assert_eq!(got, want, "({n}, {c}, {hw})");
        let xf: Vec<f32> = x.iter().map(|&v| v as f32 - 0.5).collect();
        let mut gotf = vec![0f32; x.len()];
        to_nhwc_team(&TEST, &xf, &mut gotf, n, c, hw);
        assert!(gotf.iter().zip(&want).all(|(&a, &b)| a == b as f32 - 0.5));
    }
}
