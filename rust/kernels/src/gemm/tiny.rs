//! The product of a small A held whole (a tiny convolution's unfolded image
//! at batch 1): all its rows in `MR × NP` tiles over one K block, and the
//! output step, without the blocked driver's per-call setup.
//!
//! At batch 1 a convolution of the digits ResNet (8×8 image, 8 channels in
//! and out) cost ~1.2 µs, and one of 1 channel in and out ~1.0 µs: the
//! driver's checks, thread decision, reused per-thread buffers and block
//! loops (~0.66 µs on an already unfolded A) and the unfold's per-row work,
//! nearly independent of the channels. [`Tiny`] is prepared once per layer
//! (the bound checked, whether B's zero points are all 0) and [`tiny`] runs
//! the micro-kernel's tiles over the caller's rows and the same output step
//! over stack buffers, so what is left scales with the product. The bits
//! are the driver's: the accumulators are exact and each output element
//! takes the same step (as [`super::row1`] for one row).

use std::mem::MaybeUninit;
use std::sync::Arc;

use super::kernel::{self, Kernel};
use super::output::{Epilogue, OutElem};
use super::pack::{self, PackedB, NR};
use super::row1::Row1;
use super::{Finish, KC_GROUPS};
use crate::cpu;

/// The product of a path, for one output type (see [`tiny`]).
pub(crate) type TinyFn<T> = fn(&Tiny, &[u8], usize, i32, &Epilogue<'_, T>, &mut [T]) -> bool;

/// Output types of the path (those a plan's convolution writes).
pub(crate) trait TinyOut: OutElem {
    fn entry(k: &super::arch::Kernels) -> TinyFn<Self>;
}
impl TinyOut for f32 {
    fn entry(k: &super::arch::Kernels) -> TinyFn<f32> {
        k.tiny_f32
    }
}
impl TinyOut for u8 {
    fn entry(k: &super::arch::Kernels) -> TinyFn<u8> {
        k.tiny_u8
    }
}

/// A packed B prepared for [`tiny`]: [`Row1`]'s preparation (the overflow
/// bound for any uint8 row and zero point, whether the row sums of A are
/// needed) for a K within one K block.
#[derive(Debug, Clone)]
pub(crate) struct Tiny(Row1);

/// Most rows of a tile on any path (the VNNI kernel's 6).
const MR_MAX: usize = 8;
/// Accumulators of one `MR × NP` tile (the widest kernel's 6 × 4 panels).
const ACC: usize = MR_MAX * 4 * NR;
/// Row elements a kernel that widens A holds on the stack per tile row.
const WIDE_ROW: usize = 4 * KC_GROUPS;

impl Tiny {
    /// `None` when some uint8 row could overflow int32 with B (the driver
    /// then reports it) or K is longer than one K block.
    pub(crate) fn new(b: &Arc<PackedB>) -> Option<Tiny> {
        (b.kp <= 4 * KC_GROUPS).then(|| Row1::new(b)).flatten().map(Tiny)
    }

    /// Bytes of one row of A: K padded to a multiple of 4.
    pub(crate) fn kp(&self) -> usize {
        self.0.kp()
    }

    /// Output columns.
    pub(crate) fn n(&self) -> usize {
        self.0.b.n
    }
}

/// `out = ep((a - za) · B)` for the `m` rows of `a` (`kp()` bytes each,
/// row after row, zeros past K) with the active path's micro-kernel, `out`
/// of `m × N` elements, `ep` prepared for `m × N`. `false`, nothing
/// written, when the arguments do not fit this path.
pub(crate) fn tiny<T: TinyOut>(
    r: &Tiny,
    a: &[u8],
    m: usize,
    za: i32,
    ep: &Epilogue<'_, T>,
    out: &mut [T],
) -> bool {
    (T::entry(&cpu::dispatch().gemm))(r, a, m, za, ep, out)
}

/// [`tiny`] for the micro-kernel `Kr` (the dispatch table's entry).
pub(crate) fn tiny_with<Kr: Kernel, T: OutElem>(
    r: &Tiny,
    a: &[u8],
    m: usize,
    za: i32,
    ep: &Epilogue<'_, T>,
    out: &mut [T],
) -> bool {
    let b = &*r.0.b;
    let (n, kp) = (b.n, b.kp);
    if Some(a.len()) != m.checked_mul(kp)
        || Some(out.len()) != m.checked_mul(n)
        || !(0..=255).contains(&za)
        || kp > 4 * KC_GROUPS
        || Kr::MR > MR_MAX
        || Kr::MR * 16 * Kr::NP > ACC
        || ep.dims() != (m, n)
    {
        return false;
    }
    if m == 0 || n == 0 {
        return true;
    }
    // SAFETY: `a` holds m rows of kp bytes, `out` m × n elements, `ep` is
    // prepared for m × n, kp is within one K block (checked above).
    unsafe { tiles::<Kr, T>(r, a, m, za, ep, out) };
    true
}

/// # Safety
/// As checked by [`tiny_with`]; the kernel's ISA is the active path's.
#[inline(always)]
unsafe fn tiles<Kr: Kernel, T: OutElem>(
    r: &Tiny,
    a: &[u8],
    m: usize,
    za: i32,
    ep: &Epilogue<'_, T>,
    out: &mut [T],
) {
    let b = &*r.0.b;
    let (n, kp) = (b.n, b.kp);
    let kg = kp / 4;
    let ps = b.panel_stride();
    let panels = b.panels();
    let ld = 16 * Kr::NP;
    let wide = <Kr::AElem as pack::PlainElem>::row_bytes(&mut []).is_none();
    let float = if Kr::DIRECT {
        ep.plain_float(0..m)
    } else {
        None
    };
    // One tile's accumulators (read by the output step only where the
    // kernel wrote them): zeroed once, MR rows of `ld`.
    let mut acc = [MaybeUninit::<i32>::uninit(); ACC];
    acc[..Kr::MR * ld].iter_mut().for_each(|v| {
        v.write(0);
    });
    // SAFETY: the first MR·ld values were just written (MR·ld <= ACC, checked by the caller).
    let acc = unsafe { &mut *(&mut acc[..Kr::MR * ld] as *mut [MaybeUninit<i32>] as *mut [i32]) };
    let za_t = [za; MR_MAX];
    let mut rowsum = [0i32; MR_MAX];
    // The tile's rows widened, for a kernel whose A elements are not bytes
    // (uninitialised stack: only the rows of a tile are written, per tile).
    let mut widened = [MaybeUninit::<Kr::AElem>::uninit(); MR_MAX * WIDE_ROW];
    let optr = out.as_mut_ptr();
    let mut i0 = 0;
    while i0 < m {
        let mr = Kr::MR.min(m - i0);
        let rows = &a[i0 * kp..(i0 + mr) * kp];
        if !r.0.zb_zero {
            for (s, row) in rowsum.iter_mut().zip(rows.chunks_exact(kp)) {
                *s = super::byte_sum(row);
            }
        }
        let a_ptr: *const Kr::AElem = if wide {
            let w = &mut widened[..mr * kp];
            w.iter_mut().for_each(|v| {
                v.write(Kr::AElem::default());
            });
            // SAFETY: the mr·kp elements were just written.
            let w = unsafe { &mut *(w as *mut [MaybeUninit<Kr::AElem>] as *mut [Kr::AElem]) };
            <Kr::AElem as pack::PlainElem>::widen(rows, w);
            w.as_ptr()
        } else {
            rows.as_ptr().cast()
        };
        let mut jp = 0;
        while jp < panels {
            let np = Kr::NP.min(panels - jp);
            let (c0, c1) = (jp * NR, ((jp + np) * NR).min(n));
            // SAFETY: `a_ptr` holds mr rows of kp elements; panels
            // jp..jp+np exist in B, with their zero points and column
            // terms; `acc` holds mr rows of `ld`; rows i0..i0+mr × columns
            // c0..c1 of `out` exist and nothing else touches them.
            unsafe {
                let fix = kernel::Fix {
                    za: za_t.as_ptr(),
                    rowsum: rowsum.as_ptr(),
                    zb: b.zp.as_ptr().add(c0),
                    colterm: b.colterm.as_ptr().add(c0),
                    dst: std::ptr::null_mut(),
                    dst_ld: n,
                    dst_cols: c1 - c0,
                    float: float.as_ref().map(|f| kernel::FloatOut {
                        dst: (optr as *mut f32).add(i0 * n + c0),
                        row_scale: f.row_scale.add(i0 * f.rs_step),
                        rs_step: f.rs_step,
                        col_scale: f.col_scale.as_ptr().add(c0),
                        bias: f.bias.as_ptr().add(c0),
                        relu: f.relu,
                    }),
                };
                Kr::tile(
                    mr,
                    np,
                    &kernel::Tile {
                        kg,
                        a: a_ptr,
                        lda: kp,
                        b: b.data.as_ptr().add(jp * ps),
                        bs: ps,
                        acc: acc.as_mut_ptr(),
                        ld,
                        load: false,
                        fix: Some(&fix),
                    },
                );
                if float.is_none() {
                    Kr::finish(Finish {
                        acc: &acc[..mr * ld],
                        ld,
                        rows: i0..i0 + mr,
                        cols: c0..c1,
                        ep,
                        out: optr,
                        ldc: n,
                    });
                }
            }
            jp += np;
        }
        i0 += mr;
    }
}
