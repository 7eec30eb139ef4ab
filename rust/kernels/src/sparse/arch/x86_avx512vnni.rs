//! The x86-64 AVX-512 VNNI path of the sparse family: the AVX-512 table with
//! the micro-kernel of the int8 4-deep dot layout in `vpdpbusd` (u8 × s8,
//! four products summed into int32 without saturation, so it is exact).

use std::arch::x86_64::*;
use std::ops::Range;

use crate::sparse::formats::Bsr;

pub(crate) const KERNELS: super::Kernels = super::Kernels {
    bsr_i8_dot4: dot4_vnni_tf,
    ..super::x86_avx512::KERNELS
};

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
