//! The static plan's residual `Add` on uint8 values ([`StaticAdd`]).
//!
//! A model converted with calibration takes an `Add` input that a static
//! layer also reads on that layer's grid (the runtime's `static_add`, as
//! ORT's QDQ form quantizes an Add's inputs): `DequantizeLinear` of
//! `QuantizeLinear(x)`, in float32 `((q - zero_point) as f32) * scale`. So the
//! value can stay uint8 for both readers (`int8_ops::dtypes`), and this node
//! reads either the producer's bytes or the float value quantized here: the
//! same bytes. The sum is the float formula `deq(a) + deq(b)`, then ReLU,
//! evaluated identically on every ISA (no FMA, no reordering), and a uint8
//! output is the one quantizer's bytes of that float (what the reader's
//! quantizer would make of it).

use super::int8_ops::{In, Out};
use super::*;

/// `a + b` (then ReLU if `relu`) of two values of one dims, input `i` taken
/// on the uint8 grid `acts[i]` (`None`: as it is, float).
#[derive(Debug, Clone, PartialEq)]
pub struct StaticAdd {
    pub relu: bool,
    pub acts: [Option<StaticAct>; 2],
}

/// Elements one task adds (whole chunks of [`CHUNK`]).
const TASK: usize = 1 << 14;
/// Elements dequantized, added and requantized at a time, on the stack.
const CHUNK: usize = 512;

impl StaticAdd {
    pub(super) fn out_dims(&self, ins: &[&[usize]], what: &str) -> Result<Vec<usize>> {
        for a in self.acts.iter().flatten() {
            fixed::check_params(a.scale, a.zero_point)
                .map_err(|e| Error::Value(format!("{what}: {e}")))?;
        }
        if ins[0] != ins[1] {
            return shape_err!("{what}: adds dims {:?} and {:?}", ins[0], ins[1]);
        }
        Ok(ins[0].to_vec())
    }

    /// `y = a + b` over whole batches: each input uint8 on its grid (the
    /// producer's bytes) or float (quantized here when it has a grid).
    pub(super) fn run(&self, ctx: &Ctx, a: In<'_>, b: In<'_>, y: Out<'_>) -> Result<()> {
        let n = match &y {
            Out::F32(y) => y.len(),
            Out::U8(y, _) => y.len(),
        };
        let len = |x: &In<'_>| match x {
            In::F32(v) => v.len(),
            In::U8(v) => v.len(),
        };
        if len(&a) != n || len(&b) != n {
            return shape_err!(
                "static add of {} and {} elements into {n}",
                len(&a),
                len(&b)
            );
        }
        let sides = [Side::new(a, self.acts[0])?, Side::new(b, self.acts[1])?];
        let (dst, grid) = match y {
            Out::F32(y) => (Dst::F32(SyncPtr(y.as_mut_ptr())), None),
            Out::U8(y, g) => (Dst::U8(SyncPtr(y.as_mut_ptr())), Some(g)),
        };
        chunked(ctx, n, |c0, c1| {
            let mut s = [0f32; CHUNK];
            let s = &mut s[..c1 - c0];
            sides[0].load(c0..c1, s, false)?;
            sides[1].load(c0..c1, s, true)?;
            if self.relu {
                Unary::Relu.run(s);
            }
            // SAFETY: the chunk's task alone writes elements c0..c1 of the output.
            match (&dst, grid) {
                (Dst::F32(p), _) => {
                    unsafe { std::slice::from_raw_parts_mut(p.get().add(c0), s.len()) }
                        .copy_from_slice(s);
                    Ok(())
                }
                (Dst::U8(p), Some(g)) => {
                    let o = unsafe { std::slice::from_raw_parts_mut(p.get().add(c0), s.len()) };
                    quantize_fixed_u8(&Ctx::serial(), s, g.scale, g.zero_point, o)
                }
                (Dst::U8(_), None) => value_err!("a uint8 output without a grid"),
            }
        })
    }
}

/// `x` taken on the grid `a` (a fused conv + add's residual): its float32
/// terms into `out`, as a [`StaticAdd`] input on that grid.
pub(super) fn dequantized(ctx: &Ctx, x: In<'_>, a: StaticAct, out: &mut [f32]) -> Result<()> {
    let n = out.len();
    let side = Side::new(x, Some(a))?;
    let dst = SyncPtr(out.as_mut_ptr());
    chunked(ctx, n, |c0, c1| {
        // SAFETY: the chunk's task alone writes elements c0..c1 of `out`.
        let o = unsafe { std::slice::from_raw_parts_mut(dst.get().add(c0), c1 - c0) };
        side.load(c0..c1, o, false)
    })
}

/// Runs `f(c0, c1)` over `0..n` in chunks of at most [`CHUNK`], tasks of
/// [`TASK`] elements on the team; the first error any chunk met.
fn chunked(ctx: &Ctx, n: usize, f: impl Fn(usize, usize) -> Result<()> + Sync) -> Result<()> {
    let failed = Mutex::new(None);
    ctx.for_each_task(n, n.div_ceil(TASK), |t| {
        let hi = n.min((t + 1) * TASK);
        for c0 in (t * TASK..hi).step_by(CHUNK) {
            if let Err(e) = f(c0, hi.min(c0 + CHUNK)) {
                if let Ok(mut first) = failed.lock() {
                    first.get_or_insert(e);
                }
                return;
            }
        }
    });
    match failed.into_inner() {
        Ok(None) => Ok(()),
        Ok(Some(e)) => Err(e),
        Err(_) => value_err!("a uint8 add task failed"),
    }
}

enum Dst {
    F32(SyncPtr<f32>),
    U8(SyncPtr<u8>),
}

/// One input of the add and how to make its float32 terms.
enum Side<'a> {
    Float(&'a [f32]),
    /// Float quantized onto the grid here, then dequantized.
    Quantize(&'a [f32], StaticAct, [f32; 256]),
    /// uint8 on the grid: the dequantized value of each byte.
    Bytes(&'a [u8], [f32; 256]),
}

impl<'a> Side<'a> {
    fn new(x: In<'a>, act: Option<StaticAct>) -> Result<Side<'a>> {
        let table = |a: StaticAct| -> [f32; 256] {
            std::array::from_fn(|q| ((q as i32 - a.zero_point) as f32) * a.scale)
        };
        Ok(match (x, act) {
            (In::F32(v), None) => Side::Float(v),
            (In::F32(v), Some(a)) => Side::Quantize(v, a, table(a)),
            (In::U8(v), Some(a)) => Side::Bytes(v, table(a)),
            (In::U8(_), None) => return value_err!("a uint8 value feeds a float add input"),
        })
    }

    /// Elements `r` as float32 terms into `s` (added to it when `add`).
    fn load(&self, r: std::ops::Range<usize>, s: &mut [f32], add: bool) -> Result<()> {
        match self {
            Side::Float(x) => put(s, add, x[r].iter().copied()),
            Side::Bytes(q, t) => put(s, add, q[r].iter().map(|&q| t[q as usize])),
            Side::Quantize(x, a, t) => {
                let mut q = [0u8; CHUNK];
                let q = &mut q[..r.len()];
                quantize_fixed_u8(&Ctx::serial(), &x[r], a.scale, a.zero_point, q)?;
                put(s, add, q.iter().map(|&q| t[q as usize]));
            }
        }
        Ok(())
    }
}

/// `s = v` or `s += v`, element by element.
#[inline(always)]
fn put(s: &mut [f32], add: bool, v: impl Iterator<Item = f32>) {
    if add {
        s.iter_mut().zip(v).for_each(|(o, v)| *o += v);
    } else {
        s.iter_mut().zip(v).for_each(|(o, v)| *o = v);
    }
}

#[cfg(test)]
mod tests {
    use super::super::int8_ops::tests::each_node_alone;
    use super::super::tests::{gemm_of, node};
    use super::*;
    use crate::cpu::each_isa;
    use crate::exec::TEST;

    fn grid(scale: f32, zero_point: i32) -> Option<StaticAct> {
        Some(StaticAct { scale, zero_point })
    }

    fn conv(
        n: usize,
        k: usize,
        seed: i32,
        relu: bool,
        act: Option<StaticAct>,
        nchw_in: bool,
    ) -> Op {
        Op::Conv {
            gemm: Gemm {
                act,
                ..gemm_of(n, k, seed, relu)
            },
            kernel: (3, 3),
            stride: (1, 1),
            padding: (1, 1),
            nchw_in,
        }
    }

    fn conv_add(seed: i32, relu: bool, act: Option<StaticAct>, res_act: Option<StaticAct>) -> Op {
        let Op::Conv { gemm, .. } = conv(4, 36, seed, relu, act, false) else {
            unreachable!()
        };
        Op::ConvAdd {
            gemm,
            kernel: (3, 3),
            stride: (1, 1),
            padding: (1, 1),
            nchw_in: false,
            res_act,
        }
    }

    fn add(relu: bool, acts: [Option<StaticAct>; 2]) -> Op {
        Op::StaticAdd(StaticAdd { relu, acts })
    }

    /// conv (NCHW in, ReLU) -> v1; conv(v1) + v1 on its grid (ReLU) -> v3;
    /// conv(v3) + v3 -> v5 (no ReLU: negative sums); conv(v5) -> v6, and the
    /// plan's second input on a grid + v6 -> v7; fused conv + adds of v5 with
    /// v5 on its grid (ReLU) -> v9 and with the second input on one -> v10.
    fn nodes() -> Vec<Node> {
        let (g1, g3, g5) = (grid(0.03, 0), grid(0.05, 20), grid(0.04, 128));
        vec![
            node(conv(4, 18, 1, true, grid(0.05, 120), true), &[0], 1),
            node(conv(4, 36, 2, false, g1, false), &[1], 2),
            node(add(true, [None, g1]), &[2, 1], 3),
            node(conv(4, 36, 3, false, g3, false), &[3], 4),
            node(add(false, [None, g3]), &[4, 3], 5),
            node(conv(4, 36, 4, false, g5, false), &[5], 6),
            node(add(false, [grid(0.02, 7), None]), &[8, 6], 7),
            node(conv_add(5, true, g5, g5), &[5, 5], 9),
            node(conv_add(6, false, g5, grid(0.1, 50)), &[5, 8], 10),
        ]
    }

    #[test]
    fn uint8_add_inputs_give_the_bytes_of_each_node_run_alone_on_every_isa() {
        let nodes = nodes();
        let plan = GraphPlan::new(
            nodes.clone(),
            vec![0, 8],
            vec![vec![2, 3, 3], vec![3, 3, 4]],
            vec![7, 9, 10],
        )
        .unwrap();
        let u8s: Vec<ValueId> = (0..11)
            .filter(|&v| plan.dtype(v) != Some(DType::F32))
            .collect();
        // The values a conv and an add both read on one grid, written so by a conv or an add.
        assert_eq!(u8s, vec![1, 3, 5], "{:?}", plan.dtypes);
        let dims: Vec<Vec<usize>> = (0..11).map(|v| plan.dims[v].clone()).collect();
        for batch in [1, 3] {
            let x: Vec<f32> = (0..batch * 18)
                .map(|i| ((i * 37 % 53) as f32 - 20.0) * 0.09)
                .collect();
            // Past the grid's range at both ends: saturation.
            let r: Vec<f32> = (0..batch * 36)
                .map(|i| ((i * 11 % 17) as f32 - 8.0) * 0.5)
                .collect();
            each_isa(|isa| {
                let vals = each_node_alone(&nodes, &dims, batch, &[(0, &x), (8, &r)]);
                assert!(vals[5].iter().any(|&v| v < 0.0), "an add without ReLU");
                let mut ys = vec![vec![0f32; batch * 36]; 3];
                let [y0, y1, y2] = &mut ys[..] else {
                    unreachable!()
                };
                plan.forward(&TEST, batch, &[&x, &r], &mut [y0, y1, y2])
                    .unwrap();
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                for (y, v) in ys.iter().zip([7, 9, 10]) {
                    assert_eq!(bits(y), bits(&vals[v]), "{isa:?} batch {batch} value {v}");
                    assert!(
                        vals[v].iter().any(|&e| e != vals[v][0]),
                        "a result that varies"
                    );
                }
            });
        }
    }

    #[test]
    fn an_add_on_its_grids_is_dequantize_of_quantize_then_the_float_sum() {
        let (ga, gb) = (grid(0.1, 10), grid(0.25, 200));
        let a = [-5.0f32, 0.0, 0.04, 0.05, 0.15, 30.0, 1.0, -0.96];
        let b = [0.0f32, -60.0, 0.125, 0.375, 20.0, -1.0, 0.1, 0.2];
        let q = |x: f32, g: StaticAct| {
            let v = (x / g.scale).round_ties_even() + g.zero_point as f32;
            ((v.clamp(0.0, 255.0) as i32 - g.zero_point) as f32) * g.scale
        };
        for relu in [false, true] {
            let plan = GraphPlan::new(
                vec![node(add(relu, [ga, gb]), &[0, 1], 2)],
                vec![0, 1],
                vec![vec![8], vec![8]],
                vec![2],
            )
            .unwrap();
            let mut y = [0f32; 8];
            plan.forward(&TEST, 1, &[&a, &b], &mut [&mut y]).unwrap();
            for i in 0..8 {
                let s = q(a[i], ga.unwrap()) + q(b[i], gb.unwrap());
                let want = if relu { s.max(0.0) } else { s };
                assert_eq!(y[i].to_bits(), want.to_bits(), "{i} relu {relu}");
            }
        }
        let bad = GraphPlan::new(
            vec![node(add(false, [grid(0.0, 0), None]), &[0, 1], 2)],
            vec![0, 1],
            vec![vec![8], vec![8]],
            vec![2],
        );
        assert!(matches!(bad, Err(Error::Value(_))), "{bad:?}");
        let bad = GraphPlan::new(
            vec![node(add(false, [None, None]), &[0, 1], 2)],
            vec![0, 1],
            vec![vec![8], vec![9]],
            vec![2],
        );
        assert!(matches!(bad, Err(Error::Shape(_))), "{bad:?}");
        let plan = GraphPlan::new(
            vec![node(add(false, [ga, None]), &[0, 1], 2)],
            vec![0, 1],
            vec![vec![2], vec![2]],
            vec![2],
        )
        .unwrap();
        let r = plan.forward(
            &TEST,
            1,
            &[&[f32::NAN, 0.0], &[0.0, 0.0]],
            &mut [&mut [0f32; 2]],
        );
        assert!(matches!(r, Err(Error::Value(_))), "{r:?}");
    }
}
