//! x86-64 paths: `#[target_feature]` trampolines over the generic bodies in
//! `spmm.rs` (the compiler vectorises them for the enabled features), plus the
//! AVX-512 VNNI micro-kernel of the int8 4-deep dot layout (`vpdpbusd`: u8 × s8,
//! four products summed into int32 without saturation, so it is exact).

use std::arch::x86_64::*;
use std::ops::Range;

use super::formats::{Bsr, Nm};
use super::spmm::{self, Kernels};

macro_rules! trampolines {
    ($feat:literal, $fma:literal, $bsr:ident, $bsrg:ident, $nm:ident, $nmg:ident, $i8:ident, $d4:ident, $nmi8:ident) => {
        #[target_feature(enable = $feat)]
        unsafe fn $bsr(w: &Bsr<f32>, r: Range<usize>, x: &[f32], bp: usize, o: &mut [f32]) {
            spmm::bsr_f32_body::<$fma>(w, r, x, bp, o)
        }
        #[target_feature(enable = $feat)]
        unsafe fn $bsrg(w: &Bsr<f32>, r: Range<usize>, x: &[f32], o: &mut [f32]) {
            spmm::bsr_f32_gemv_body::<$fma>(w, r, x, o)
        }
        #[target_feature(enable = $feat)]
        unsafe fn $nm(w: &Nm<f32>, r: Range<usize>, x: &[f32], bp: usize, o: &mut [f32]) {
            spmm::nm_f32_body::<$fma>(w, r, x, bp, o)
        }
        #[target_feature(enable = $feat)]
        unsafe fn $nmg(w: &Nm<f32>, r: Range<usize>, x: &[f32], o: &mut [f32]) {
            spmm::nm_f32_gemv_body::<$fma>(w, r, x, o)
        }
        #[target_feature(enable = $feat)]
        unsafe fn $i8(w: &Bsr<i8>, r: Range<usize>, x: &[i16], bp: usize, o: &mut [i32]) {
            spmm::bsr_i8_body(w, r, x, bp, o)
        }
        #[target_feature(enable = $feat)]
        unsafe fn $d4(w: &Bsr<i8>, r: Range<usize>, x: &[u8], bp: usize, o: &mut [i32]) {
            spmm::bsr_i8_dot4_body(w, r, x, bp, o)
        }
        #[target_feature(enable = $feat)]
        unsafe fn $nmi8(w: &Nm<i8>, r: Range<usize>, x: &[i16], bp: usize, o: &mut [i32]) {
            spmm::nm_i8_body(w, r, x, bp, o)
        }
    };
}

trampolines!(
    "avx2,fma",
    true,
    bsr_f32_avx2,
    bsr_f32_gemv_avx2,
    nm_f32_avx2,
    nm_f32_gemv_avx2,
    bsr_i8_avx2,
    dot4_avx2,
    nm_i8_avx2
);
trampolines!(
    "avx512f,avx512bw,avx512vl,avx2,fma",
    true,
    bsr_f32_avx512,
    bsr_f32_gemv_avx512,
    nm_f32_avx512,
    nm_f32_gemv_avx512,
    bsr_i8_avx512,
    _dot4_avx512_autovec,
    nm_i8_avx512
);

pub(super) fn avx2_kernels() -> Kernels {
    Kernels {
        bsr_f32: bsr_f32_avx2,
        bsr_f32_gemv: bsr_f32_gemv_avx2,
        nm_f32: nm_f32_avx2,
        nm_f32_gemv: nm_f32_gemv_avx2,
        bsr_i8: bsr_i8_avx2,
        bsr_i8_dot4: dot4_avx2,
        nm_i8: nm_i8_avx2,
    }
}

pub(super) fn avx512_kernels() -> Kernels {
    Kernels {
        bsr_f32: bsr_f32_avx512,
        bsr_f32_gemv: bsr_f32_gemv_avx512,
        nm_f32: nm_f32_avx512,
        nm_f32_gemv: nm_f32_gemv_avx512,
        bsr_i8: bsr_i8_avx512,
        bsr_i8_dot4: dot4_vnni,
        nm_i8: nm_i8_avx512,
    }
}

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

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn dot4_vnni(w: &Bsr<i8>, brs: Range<usize>, xp: &[u8], bp: usize, out: &mut [i32]) {
    match w.r {
        1 => dot4_rows_vnni::<1, 4>(w, brs, xp, bp, out),
        2 => dot4_rows_vnni::<2, 4>(w, brs, xp, bp, out),
        4 => dot4_rows_vnni::<4, 2>(w, brs, xp, bp, out),
        8 => dot4_rows_vnni::<8, 2>(w, brs, xp, bp, out),
        _ => dot4_rows_vnni::<16, 1>(w, brs, xp, bp, out),
    }
}
