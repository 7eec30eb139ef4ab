//! One row of uint8 A times a packed B (`M = 1`) on the caller's thread: the
//! graph plan's batch-1 dense layers.
//!
//! The blocked driver ([`super::matmul_rows`]) pays a fixed cost per call
//! that a small batch-1 layer never earns back: the checks of A and its zero
//! points, the bound, packing A into a per-thread buffer, the per-thread
//! reused buffers (row sums, zero points, accumulators), the thread decision
//! and the block loops (callgrind, AVX2, one 64x32 static layer: ~2000
//! instructions of setup around a tile of ~300). [`Row1`] is prepared once
//! per layer (the bound checked, whether B's zero points are all 0), and
//! [`row1`] runs the same micro-kernel tiles of one row (`1 × NP_ROW`
//! panels) and the same output step over stack buffers: the same bits as the
//! driver, since the accumulators are exact and each element's output step
//! is the driver's. The step comes prepared ([`Epilogue`]): a plan prepares
//! each layer's once, at build (per call it cost ~260 instructions a layer,
//! as much as the tiles of a small layer).

use std::mem::MaybeUninit;
use std::sync::Arc;

use super::kernel::{self, Kernel};
use super::output::{Epilogue, OutElem};
use super::pack::{self, PackedB, NR};
use super::{Finish, KC_GROUPS};
use crate::cpu;

/// The one-row product of a path, for one output type (see [`row1`]).
pub(crate) type Row1Fn<T> = fn(&Row1, &[u8], i32, &Epilogue<'_, T>, &mut [T]) -> bool;

/// Output types of the one-row path (those a graph plan's dense layer writes).
pub(crate) trait Row1Out: OutElem {
    fn entry(k: &super::arch::Kernels) -> Row1Fn<Self>;
}
impl Row1Out for f32 {
    fn entry(k: &super::arch::Kernels) -> Row1Fn<f32> {
        k.row1_f32
    }
}
impl Row1Out for u8 {
    fn entry(k: &super::arch::Kernels) -> Row1Fn<u8> {
        k.row1_u8
    }
}

/// A packed B prepared for [`row1`] (and for `gemm::tiny`, which adds a K
/// limit): the overflow bound checked for any uint8 row and zero point, and
/// whether the row sums of A are needed.
#[derive(Debug, Clone)]
pub(crate) struct Row1 {
    pub(super) b: Arc<PackedB>,
    /// Every stored zero point of B is 0: the correction needs no row sum.
    pub(super) zb_zero: bool,
}

/// Row elements the stack holds for a kernel that widens A (longer rows
/// take the driver).
const WIDE_ROW: usize = 1024;
/// Accumulators of one `1 × NP_ROW` tile (the widest kernel's 8 panels).
const ACC: usize = 8 * NR;

impl Row1 {
    /// `None` when some uint8 row could overflow int32 with B (the driver
    /// then reports it, for the rows that really do).
    pub(crate) fn new(b: &Arc<PackedB>) -> Option<Row1> {
        pack::check_bound(b.k, 255, b.max_abs).ok()?;
        Some(Row1 {
            zb_zero: b.zp.iter().all(|&z| z == 0),
            b: Arc::clone(b),
        })
    }

    /// Bytes of the row [`row1`] takes: K padded to a multiple of 4.
    pub(crate) fn kp(&self) -> usize {
        self.b.kp
    }
}

/// `out = ep((a - za) · B)` for one row `a` of `kp()` bytes (zeros past
/// K) with the active path's micro-kernel, `out` of N elements, `ep` the
/// output step prepared for `1 × N` (a plan prepares it once per layer,
/// [`super::output::OutputStep::prepare_checked`]). `false`, nothing written, when the
/// arguments do not fit this path (the caller takes the driver).
pub(crate) fn row1<T: Row1Out>(
    r: &Row1,
    a: &[u8],
    za: i32,
    ep: &Epilogue<'_, T>,
    out: &mut [T],
) -> bool {
    (T::entry(&cpu::dispatch().gemm))(r, a, za, ep, out)
}

/// [`row1`] for the micro-kernel `Kr` (the dispatch table's entry).
pub(crate) fn row1_with<Kr: Kernel, T: OutElem>(
    r: &Row1,
    a: &[u8],
    za: i32,
    ep: &Epilogue<'_, T>,
    out: &mut [T],
) -> bool {
    let b = &*r.b;
    let (n, kp) = (b.n, b.kp);
    let wide = <Kr::AElem as pack::PlainElem>::row_bytes(&mut []).is_none();
    if a.len() != kp
        || out.len() != n
        || !(0..=255).contains(&za)
        || (wide && kp > WIDE_ROW)
        || 16 * Kr::NP_ROW > ACC
        || ep.dims() != (1, n)
    {
        return false;
    }
    if n == 0 {
        return true;
    }
    let rowsum = if r.zb_zero { 0 } else { super::byte_sum(a) };
    if wide {
        // Only the row's elements are written (a whole 2 KiB stack row
        // zeroed per call cost more than the tiles of a 64x32 layer).
        let mut widened = [MaybeUninit::<Kr::AElem>::uninit(); WIDE_ROW];
        let w = &mut widened[..kp];
        w.iter_mut().for_each(|v| {
            v.write(Kr::AElem::default());
        });
        // SAFETY: the kp elements were just written.
        let w = unsafe { &mut *(w as *mut [MaybeUninit<Kr::AElem>] as *mut [Kr::AElem]) };
        <Kr::AElem as pack::PlainElem>::widen(a, w);
        // SAFETY: `w` holds the kp elements of the row.
        unsafe { tiles::<Kr, T>(b, w.as_ptr(), za, rowsum, ep, out) };
    } else {
        // SAFETY: the kernel's elements are the row's bytes, kp of them.
        unsafe { tiles::<Kr, T>(b, a.as_ptr().cast(), za, rowsum, ep, out) };
    }
    true
}

/// The tiles of one row at `a_ptr` (`b.kp` elements) and their output step.
///
/// # Safety
/// `a_ptr` is valid for `b.kp` reads; `out` holds `b.n` elements; the
/// kernel's ISA is the active path's; `ep` is prepared for `1 × b.n`.
#[inline(always)]
unsafe fn tiles<Kr: Kernel, T: OutElem>(
    b: &PackedB,
    a_ptr: *const Kr::AElem,
    za: i32,
    rowsum: i32,
    ep: &Epilogue<'_, T>,
    out: &mut [T],
) {
    let (n, kp) = (b.n, b.kp);
    let kg = kp / 4;
    let ps = b.panel_stride();
    let panels = b.panels();
    let ld = 16 * Kr::NP_ROW;
    let float = if Kr::DIRECT {
        ep.plain_float(0..1)
    } else {
        None
    };
    // One tile's accumulators: `ld` of them zeroed, not the widest kernel's `ACC`.
    let mut acc = [MaybeUninit::<i32>::uninit(); ACC];
    acc[..ld].iter_mut().for_each(|v| {
        v.write(0);
    });
    // SAFETY: the first ld values were just written (16·NP_ROW <= ACC, checked by the caller).
    let acc = unsafe { &mut *(&mut acc[..ld] as *mut [MaybeUninit<i32>] as *mut [i32]) };
    let optr = out.as_mut_ptr();
    // LOOP 2 of the driver's `block` for its one row: column blocks of
    // NP_ROW panels, each over the K blocks, then its output step.
    let mut jp = 0;
    while jp < panels {
        let np = Kr::NP_ROW.min(panels - jp);
        let (c0, c1) = (jp * NR, ((jp + np) * NR).min(n));
        let mut pc = 0;
        loop {
            let kcg = KC_GROUPS.min(kg - pc);
            // SAFETY: `a_ptr` holds kp >= 4·(pc + kcg) elements; panels
            // jp..jp+np exist in B, with NR zero points and column terms
            // each; `acc` holds one tile of `ld` values; columns c0..c1 of
            // `out` exist (c1 <= n) and nothing else touches them.
            {
                let fix = kernel::Fix {
                    za: &za,
                    rowsum: &rowsum,
                    zb: b.zp.as_ptr().add(c0),
                    colterm: b.colterm.as_ptr().add(c0),
                    dst: std::ptr::null_mut(),
                    dst_ld: n,
                    dst_cols: c1 - c0,
                    float: float.as_ref().map(|f| kernel::FloatOut {
                        dst: (optr as *mut f32).add(c0),
                        row_scale: f.row_scale,
                        rs_step: f.rs_step,
                        col_scale: f.col_scale.as_ptr().add(c0),
                        bias: f.bias.as_ptr().add(c0),
                        relu: f.relu,
                    }),
                };
                Kr::tile(
                    1,
                    np,
                    &kernel::Tile {
                        kg: kcg,
                        a: a_ptr.add(4 * pc),
                        lda: kp,
                        b: b.data.as_ptr().add(jp * ps + 64 * pc),
                        bs: ps,
                        acc: acc.as_mut_ptr(),
                        ld,
                        load: pc > 0,
                        fix: (pc + kcg >= kg).then_some(&fix),
                    },
                );
            }
            pc += kcg;
            if pc >= kg {
                break;
            }
        }
        if float.is_none() {
            // SAFETY: as above; the kernel's ISA is the active path's.
            Kr::finish(Finish {
                acc: &acc[..ld],
                ld,
                rows: 0..1,
                cols: c0..c1,
                ep,
                out: optr,
                ldc: n,
            });
        }
        jp += np;
    }
}

#[cfg(test)]
mod tests {
    use super::super::output::{Fused, OutputStep, Param, Requant};
    use super::super::tests::bytes;
    use super::super::{matmul, ASource, ZeroPoint};
    use super::*;
    use crate::cpu::each_isa;
    use crate::exec::TEST;

    /// Every shape class of the one-row path (K not a multiple of 4, more
    /// than one K block, N not a multiple of 16, more than one column block)
    /// against the driver's product of the same row, bit for bit, on every
    /// ISA; B int8 or uint8 (stored zero points 0 or not).
    #[test]
    fn one_row_gives_the_drivers_bits_on_every_isa() {
        let shapes = [
            (1, 1),
            (3, 5),
            (64, 10),
            (64, 256),
            (130, 17),
            (7, 300),
            (1030, 33),
            (2100, 20),
        ];
        each_isa(|isa| {
            for (si, &(k, n)) in shapes.iter().enumerate() {
                for (bi, uint8_b) in [false, true].into_iter().enumerate() {
                    let seed = (si * 2 + bi) as u64;
                    let raw = bytes(k * n, seed + 1);
                    let b = Arc::new(if uint8_b {
                        PackedB::from_kn_u8(&TEST, &raw, k, n, ZeroPoint::Scalar(131)).unwrap()
                    } else {
                        let w: Vec<i8> = raw.iter().map(|&v| v as i8).collect();
                        PackedB::from_kn_i8(&TEST, &w, k, n, ZeroPoint::Scalar(0)).unwrap()
                    });
                    let Some(r) = Row1::new(&b) else {
                        // Only a K too long for an exact int32 with any zero point.
                        assert!(k * 255 * 255 > i32::MAX as usize, "{k}x{n}");
                        continue;
                    };
                    let kp = r.kp();
                    let mut a = bytes(kp, seed + 7);
                    a[k..].fill(0);
                    let za = (seed * 37 % 256) as i32;
                    let cs: Vec<f32> = (0..n).map(|j| 1e-3 + j as f32 * 1e-5).collect();
                    let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.01 - 0.2).collect();
                    let float = OutputStep::Float {
                        row_scale: Param::Scalar(0.07),
                        col_scale: Param::PerIndex(&cs),
                        bias: Some(&bias),
                        relu: seed.is_multiple_of(2),
                    };
                    let fused = OutputStep::Fused(Fused {
                        row_scale: Param::Scalar(0.07),
                        col_scale: Param::PerIndex(&cs),
                        bias: Some(&bias),
                        residual: None,
                        relu: true,
                        requant: Some(Requant {
                            y_scale: 0.9,
                            y_zero_point: 7,
                            lo: 7,
                            hi: 200,
                        }),
                    });
                    let src = ASource::U8(&a[..k]);
                    let mut want = vec![0f32; n];
                    matmul(
                        &TEST,
                        src,
                        1,
                        k,
                        ZeroPoint::Scalar(za),
                        &b,
                        &float,
                        &mut want,
                    )
                    .unwrap();
                    // As a plan keeps it: owned, prepared with another row
                    // scale, given this row's per call.
                    let mut kept = float;
                    if let OutputStep::Float { row_scale, .. } = &mut kept {
                        *row_scale = Param::Scalar(3.0);
                    }
                    let kept = kept
                        .prepare_checked::<f32>(1, n)
                        .unwrap()
                        .into_owned()
                        .unwrap();
                    let ep = kept.with_row_scale(0.07).unwrap();
                    let mut got = vec![f32::NAN; n];
                    let took = row1(&r, &a, za, &ep, &mut got);
                    // A kernel that widens A declines rows past WIDE_ROW (its stack row).
                    assert!(took || kp > WIDE_ROW, "{isa:?} {k}x{n}");
                    if took {
                        let (w, g): (Vec<u32>, Vec<u32>) = (
                            want.iter().map(|v| v.to_bits()).collect(),
                            got.iter().map(|v| v.to_bits()).collect(),
                        );
                        assert_eq!(g, w, "{isa:?} float {k}x{n} uint8 B {uint8_b}");
                    }
                    let mut want = vec![0u8; n];
                    matmul(
                        &TEST,
                        src,
                        1,
                        k,
                        ZeroPoint::Scalar(za),
                        &b,
                        &fused,
                        &mut want,
                    )
                    .unwrap();
                    let mut got = vec![1u8; n];
                    let ep = fused
                        .prepare_checked::<u8>(1, n)
                        .unwrap()
                        .into_owned()
                        .unwrap();
                    if row1(&r, &a, za, &ep, &mut got) {
                        assert_eq!(got, want, "{isa:?} uint8 {k}x{n} uint8 B {uint8_b}");
                    }
                }
            }
        });
    }

    /// Arguments that do not describe the prepared product (or a step
    /// prepared for another shape) are declined, nothing written.
    #[test]
    fn a_row_of_the_wrong_length_is_declined() {
        let w: Vec<i8> = bytes(40 * 8, 3).iter().map(|&v| v as i8).collect();
        let b = Arc::new(PackedB::from_kn_i8(&TEST, &w, 40, 8, ZeroPoint::Scalar(0)).unwrap());
        let r = Row1::new(&b).unwrap();
        let mut y = vec![5f32; 8];
        let step = OutputStep::Float {
            row_scale: Param::Scalar(1.0),
            col_scale: Param::Scalar(1.0),
            bias: None,
            relu: false,
        };
        let ep = step.prepare_checked::<f32>(1, 8).unwrap();
        assert!(!row1(&r, &[0u8; 39], 0, &ep, &mut y));
        assert!(!row1(&r, &[0u8; 40], 256, &ep, &mut y));
        assert!(!row1(&r, &[0u8; 40], 0, &ep, &mut y[..7]));
        let two_rows = step.prepare_checked::<f32>(2, 8).unwrap();
        assert!(!row1(&r, &[0u8; 40], 0, &two_rows, &mut y));
        assert_eq!(y, vec![5f32; 8]);
        assert!(row1(&r, &[1u8; 40], 0, &ep, &mut y));
        let direct: i32 = w.iter().step_by(8).map(|&v| v as i32).sum();
        assert_eq!(y[0], direct as f32);
    }
}
