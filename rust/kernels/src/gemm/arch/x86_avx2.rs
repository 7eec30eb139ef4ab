//! AVX2 exact micro-kernel: B bytes sign-extended to i16 straight from memory
//! (`vpmovsxbw`: 16 bytes = 4 columns × 4 k), A stored as i16 and broadcast 4
//! k-values at a time (`vpbroadcastq`), products summed pairwise by
//! `vpmaddwd` (exact: |a·b| ≤ 255·128) and accumulated with `vpaddd`. Each
//! accumulator holds two partial sums per column; they are combined once per
//! tile with `vphaddd` + `vpermq`. Tile: 3 rows × 1 panel (1 row × 3 panels for GEMV) = 12 ymm
//! accumulators + 1 B + broadcasts, within the 16 ymm registers.
//!
//! Unlike `vpmaddubsw` (ONNX Runtime's AVX2 path) nothing here saturates.

#![cfg(target_arch = "x86_64")]
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use std::arch::x86_64::*;

use crate::gemm::kernel::{kernel_methods, Kernel, Tile};
use crate::gemm::pack;

super::table!(Avx2, |job, p0, out, zp, ct| unsafe {
    // SAFETY: the table is only handed out on CPUs with AVX2.
    pack_panels_tf(job, p0, out, zp, ct)
});
super::kernel_fns!(avx2, i16);

pub(crate) struct Avx2;

impl Kernel for Avx2 {
    const MR: usize = 3;
    const NP: usize = 1;
    const NP_ROW: usize = 3;
    type AElem = i16;

    kernel_methods!(
        tile: tile_tf,
        shapes: [(1, 1), (1, 2), (1, 3), (2, 1), (3, 1)],
        finish: finish_tf,
        copy_sum: copy_sum_avx2
    );
}

#[inline(always)]
unsafe fn tile_body<const MR: usize, const NP: usize>(t: &Tile<'_, i16>) {
    let (kg, a, lda, b, bs, acc, ld, load, fix) = t.parts();
    let mut s = [[[_mm256_setzero_si256(); 4]; NP]; MR];
    let mut bp = b;
    let mut ap = a;
    for _ in 0..kg {
        for p in 0..NP {
            for q in 0..4 {
                let bv = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                    bp.add(p * bs + 16 * q) as *const __m128i
                ));
                for r in 0..MR {
                    let av = _mm256_set1_epi64x((ap.add(r * lda) as *const i64).read_unaligned());
                    s[r][p][q] = _mm256_add_epi32(s[r][p][q], _mm256_madd_epi16(av, bv));
                }
            }
        }
        bp = bp.add(64);
        ap = ap.add(4);
    }
    for r in 0..MR {
        for p in 0..NP {
            let mut lo =
                _mm256_permute4x64_epi64::<0xD8>(_mm256_hadd_epi32(s[r][p][0], s[r][p][1]));
            let mut hi =
                _mm256_permute4x64_epi64::<0xD8>(_mm256_hadd_epi32(s[r][p][2], s[r][p][3]));
            if load {
                lo = _mm256_add_epi32(
                    lo,
                    _mm256_loadu_si256(acc.add(r * ld + 16 * p) as *const __m256i),
                );
                hi = _mm256_add_epi32(
                    hi,
                    _mm256_loadu_si256(acc.add(r * ld + 16 * p + 8) as *const __m256i),
                );
            }
            if let Some(f) = fix {
                let (za, rs) = (
                    _mm256_set1_epi32(*f.za.add(r)),
                    _mm256_set1_epi32(*f.rowsum.add(r)),
                );
                let col = |v: *const i32, h: usize| {
                    _mm256_loadu_si256(v.add(16 * p + 8 * h) as *const __m256i)
                };
                let t_lo = _mm256_add_epi32(
                    _mm256_mullo_epi32(za, col(f.colterm, 0)),
                    _mm256_mullo_epi32(rs, col(f.zb, 0)),
                );
                let t_hi = _mm256_add_epi32(
                    _mm256_mullo_epi32(za, col(f.colterm, 1)),
                    _mm256_mullo_epi32(rs, col(f.zb, 1)),
                );
                lo = _mm256_sub_epi32(lo, t_lo);
                hi = _mm256_sub_epi32(hi, t_hi);
            }
            _mm256_storeu_si256(acc.add(r * ld + 16 * p) as *mut __m256i, lo);
            _mm256_storeu_si256(acc.add(r * ld + 16 * p + 8) as *mut __m256i, hi);
        }
    }
}

crate::cpu::isa_fns!(avx2;
    /// B packing compiled for AVX2 (the transposes and column sums vectorise wider).
    pub(crate) unsafe fn pack_panels_tf(
        job: &pack::PanelJob<'_>,
        p0: usize,
        out: &mut [i8],
        zp_out: &mut [i32],
        ct_out: &mut [i32],
    ) {
        pack::pack_panels(job, p0, out, zp_out, ct_out)
    }
    pub(crate) unsafe fn copy_sum_avx2(src: &[u8], flip: u8, dst: &mut [u8]) -> i32 {
        copy_sum_body(src, flip, dst)
    }
);

/// [`pack::copy_sum_scalar`] with AVX2: 32 bytes per step, the sum by
/// `vpsadbw` (sums of 8 bytes into 64-bit lanes).
#[inline(always)]
unsafe fn copy_sum_body(src: &[u8], flip: u8, dst: &mut [u8]) -> i32 {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mask = _mm256_set1_epi8(flip as i8);
    let zero = _mm256_setzero_si256();
    let mut acc = _mm256_setzero_si256();
    let mut i = 0;
    while i + 32 <= n {
        let v = _mm256_xor_si256(_mm256_loadu_si256(s.add(i) as *const __m256i), mask);
        _mm256_storeu_si256(d.add(i) as *mut __m256i, v);
        acc = _mm256_add_epi64(acc, _mm256_sad_epu8(v, zero));
        i += 32;
    }
    let lanes: [i64; 4] = std::mem::transmute(acc);
    let head = lanes.iter().fold(0i64, |t, &v| t.wrapping_add(v)) as i32;
    head.wrapping_add(pack::copy_sum_scalar(&src[i..n], flip, &mut dst[i..n]))
}
