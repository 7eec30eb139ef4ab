//! The x86-64 AVX-512 VNNI path of the sparse family: the AVX-512 table with
//! the micro-kernels of the int8 4-deep dot layout and of the int8 output
//! panels in `vpdpbusd` (u8 × s8, four products summed into int32 without
//! saturation, so it is exact).

use std::arch::x86_64::*;
use std::ops::Range;

use crate::sparse::formats::Bsr;
use crate::sparse::panel::{staged, PanelCall, STAGE_COLS, TILE_ROWS};

pub(crate) const KERNELS: super::Kernels = super::Kernels {
    bsr_i8_dot4: dot4_vnni_tf,
    panel_i8: panel_vnni_tf,
    ..super::x86_avx512::KERNELS
};

/// One register of `R` int32 output lanes (xmm, ymm or zmm) and the
/// `vpdpbusd` on it.
trait Lanes {
    type V: Copy;
    unsafe fn zero() -> Self::V;
    /// The `R × 4` weights of one stored group.
    unsafe fn load(p: *const i8) -> Self::V;
    /// Four activation bytes in every lane.
    unsafe fn bcast(p: *const u8) -> Self::V;
    unsafe fn dp(acc: Self::V, x: Self::V, w: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `a - z · s` in every lane (wrapping).
    unsafe fn sub_mul(a: Self::V, z: i32, s: *const i32) -> Self::V;
    unsafe fn store(p: *mut i32, v: Self::V);
}

struct Z;
struct Y;
struct X;

macro_rules! lanes {
    ($t:ident, $v:ty, $zero:ident, $load:ident, $set1:ident, $dp:ident, $add:ident, $sub:ident, $mullo:ident,
     $store:ident) => {
        impl Lanes for $t {
            type V = $v;
            #[inline(always)]
            unsafe fn zero() -> $v {
                $zero()
            }
            #[inline(always)]
            unsafe fn load(p: *const i8) -> $v {
                $load(p as *const _)
            }
            #[inline(always)]
            unsafe fn bcast(p: *const u8) -> $v {
                $set1((p as *const i32).read_unaligned())
            }
            #[inline(always)]
            unsafe fn dp(acc: $v, x: $v, w: $v) -> $v {
                $dp(acc, x, w)
            }
            #[inline(always)]
            unsafe fn add(a: $v, b: $v) -> $v {
                $add(a, b)
            }
            #[inline(always)]
            unsafe fn sub_mul(a: $v, z: i32, s: *const i32) -> $v {
                $sub(a, $mullo($set1(z), $load(s as *const _)))
            }
            #[inline(always)]
            unsafe fn store(p: *mut i32, v: $v) {
                $store(p as *mut _, v)
            }
        }
    };
}
lanes!(
    Z,
    __m512i,
    _mm512_setzero_si512,
    _mm512_loadu_si512,
    _mm512_set1_epi32,
    _mm512_dpbusd_epi32,
    _mm512_add_epi32,
    _mm512_sub_epi32,
    _mm512_mullo_epi32,
    _mm512_storeu_si512
);
lanes!(
    Y,
    __m256i,
    _mm256_setzero_si256,
    _mm256_loadu_si256,
    _mm256_set1_epi32,
    _mm256_dpbusd_epi32,
    _mm256_add_epi32,
    _mm256_sub_epi32,
    _mm256_mullo_epi32,
    _mm256_storeu_si256
);
lanes!(
    X,
    __m128i,
    _mm_setzero_si128,
    _mm_loadu_si128,
    _mm_set1_epi32,
    _mm_dpbusd_epi32,
    _mm_add_epi32,
    _mm_sub_epi32,
    _mm_mullo_epi32,
    _mm_storeu_si128
);

const MR: usize = TILE_ROWS;

/// `M` batch rows × one panel of `R` outputs, the stored groups dealt
/// round-robin over `U` accumulator chains (a short tile alone would wait on
/// the latency of one chain); the sums, zero points folded out, go to `dst`
/// (row stride [`STAGE_COLS`]).
#[inline(always)]
unsafe fn panel_tile<L: Lanes, const R: usize, const M: usize, const U: usize>(
    c: &PanelCall<'_>,
    p: usize,
    b0: usize,
    dst: *mut i32,
) {
    let w = c.w;
    let stride = M * 4;
    let (j0, j1) = (w.indptr[p] as usize, w.indptr[p + 1] as usize);
    let (gp, vp) = (w.group.as_ptr(), w.values.as_ptr());
    let xb = c.xp.as_ptr().add(b0 * c.kp);
    let mut acc = [[L::zero(); M]; U];
    let mut j = j0;
    while j + U <= j1 {
        for (u, a) in acc.iter_mut().enumerate() {
            let xs = xb.add(*gp.add(j + u) as usize * stride);
            let wv = L::load(vp.add((j + u) * R * 4));
            for (t, a) in a.iter_mut().enumerate() {
                *a = L::dp(*a, L::bcast(xs.add(4 * t)), wv);
            }
        }
        j += U;
    }
    while j < j1 {
        let xs = xb.add(*gp.add(j) as usize * stride);
        let wv = L::load(vp.add(j * R * 4));
        for (t, a) in acc[0].iter_mut().enumerate() {
            *a = L::dp(*a, L::bcast(xs.add(4 * t)), wv);
        }
        j += 1;
    }
    // The true values fit int32 (checked at build): wrapping is exact.
    let rs = w.rowsum.as_ptr().add(p * R);
    for t in 0..M {
        let mut s = acc[0][t];
        for a in &acc[1..] {
            s = L::add(s, a[t]);
        }
        let zp = *c.zp.get_unchecked(b0 + t) as i32;
        L::store(dst.add(t * STAGE_COLS), L::sub_mul(s, zp, rs));
    }
}

#[inline(always)]
unsafe fn panel_rows<L: Lanes, const R: usize>(c: &PanelCall<'_>, panels: Range<usize>) {
    let mut b0 = 0;
    while b0 < c.batch {
        let mr = MR.min(c.batch - b0);
        staged!(c, panels.clone(), b0, mr, R, |p, dst| match mr {
            1 => panel_tile::<L, R, 1, 4>(c, p, b0, dst),
            2 => panel_tile::<L, R, 2, 2>(c, p, b0, dst),
            3 => panel_tile::<L, R, 3, 2>(c, p, b0, dst),
            4 => panel_tile::<L, R, 4, 1>(c, p, b0, dst),
            5 => panel_tile::<L, R, 5, 1>(c, p, b0, dst),
            6 => panel_tile::<L, R, 6, 1>(c, p, b0, dst),
            7 => panel_tile::<L, R, 7, 1>(c, p, b0, dst),
            _ => panel_tile::<L, R, MR, 1>(c, p, b0, dst),
        });
        b0 += mr;
    }
}

crate::cpu::isa_fns!(avx512vnni;
    unsafe fn panel_vnni_tf(c: &PanelCall<'_>, panels: Range<usize>) {
        match c.w.r {
            4 => panel_rows::<X, 4>(c, panels),
            8 => panel_rows::<Y, 8>(c, panels),
            _ => panel_rows::<Z, 16>(c, panels),
        }
    }
);

/// `R` rows × `T` zmm (16 batch columns each) of int32 accumulators.
#[inline(always)]
unsafe fn dot4_rows_vnni<const R: usize, const T: usize>(
    w: &Bsr<i8>,
    brs: Range<usize>,
    xp: &[u8],
    bp: usize,
    out: &mut [i32],
) {
    let c = w.c;
    let q4 = c / 4;
    let blk = R * c;
    for (i, br) in brs.enumerate() {
        let (j0, j1) = (w.indptr[br] as usize, w.indptr[br + 1] as usize);
        let o = &mut out[i * R * bp..(i + 1) * R * bp];
        let mut b0 = 0;
        while b0 + 16 * T <= bp {
            let mut acc = [[_mm512_setzero_si512(); T]; R];
            for j in j0..j1 {
                let bc = w.bcol[j] as usize;
                let v = &w.values[j * blk..(j + 1) * blk];
                for q in 0..q4 {
                    let g = bc * q4 + q;
                    let s = (g * bp + b0) * 4;
                    let xs = &xp[s..s + 64 * T];
                    let mut xv = [_mm512_setzero_si512(); T];
                    for t in 0..T {
                        xv[t] = _mm512_loadu_si512(xs.as_ptr().add(64 * t) as *const _);
                    }
                    for rr in 0..R {
                        let wp = v[rr * c + 4 * q..rr * c + 4 * q + 4].as_ptr() as *const i32;
                        let wv = _mm512_set1_epi32(std::ptr::read_unaligned(wp));
                        for t in 0..T {
                            acc[rr][t] = _mm512_dpbusd_epi32(acc[rr][t], xv[t], wv);
                        }
                    }
                }
            }
            for rr in 0..R {
                for t in 0..T {
                    let d = &mut o[rr * bp + b0 + 16 * t..rr * bp + b0 + 16 * t + 16];
                    _mm512_storeu_si512(d.as_mut_ptr() as *mut _, acc[rr][t]);
                }
            }
            b0 += 16 * T;
        }
        if b0 < bp {
            // Remaining 16-column slices.
            let mut acc = [_mm512_setzero_si512(); R];
            while b0 < bp {
                for a in acc.iter_mut() {
                    *a = _mm512_setzero_si512();
                }
                for j in j0..j1 {
                    let bc = w.bcol[j] as usize;
                    let v = &w.values[j * blk..(j + 1) * blk];
                    for q in 0..q4 {
                        let s = ((bc * q4 + q) * bp + b0) * 4;
                        let xv = _mm512_loadu_si512(xp[s..s + 64].as_ptr() as *const _);
                        for rr in 0..R {
                            let wp = v[rr * c + 4 * q..rr * c + 4 * q + 4].as_ptr() as *const i32;
                            acc[rr] = _mm512_dpbusd_epi32(
                                acc[rr],
                                xv,
                                _mm512_set1_epi32(std::ptr::read_unaligned(wp)),
                            );
                        }
                    }
                }
                for rr in 0..R {
                    let d = &mut o[rr * bp + b0..rr * bp + b0 + 16];
                    _mm512_storeu_si512(d.as_mut_ptr() as *mut _, acc[rr]);
                }
                b0 += 16;
            }
        }
    }
}

crate::cpu::isa_fns!(avx512vnni;
    unsafe fn dot4_vnni_tf(w: &Bsr<i8>, brs: Range<usize>, xp: &[u8], bp: usize, out: &mut [i32]) {
        dot4_vnni(w, brs, xp, bp, out)
    }
);

#[inline(always)]
unsafe fn dot4_vnni(w: &Bsr<i8>, brs: Range<usize>, xp: &[u8], bp: usize, out: &mut [i32]) {
    match w.r {
        1 => dot4_rows_vnni::<1, 4>(w, brs, xp, bp, out),
        2 => dot4_rows_vnni::<2, 4>(w, brs, xp, bp, out),
        4 => dot4_rows_vnni::<4, 2>(w, brs, xp, bp, out),
        8 => dot4_rows_vnni::<8, 2>(w, brs, xp, bp, out),
        _ => dot4_rows_vnni::<16, 1>(w, brs, xp, bp, out),
    }
}
