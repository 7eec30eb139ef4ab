//! AVX2 width of the quantization kernels (8 floats per vector, 32 per
//! iteration): the [`Lanes`] of the x86 bodies in `x86_simd.rs` (`vdivps`,
//! `vroundps` to nearest-even, `vmaxps(v, lo)` then `vminps`, `vcvtps2dq`,
//! saturating packs in element order).
//!
//! The bodies are `#[inline(always)]`; `table!(avx2)` emits their
//! `#[target_feature]` wrappers and the safe `KERNELS` table, which
//! [`crate::cpu::dispatch`] hands out only on CPUs with AVX2 and FMA. The
//! activation row quantizer is the portable body compiled for AVX2.

use std::arch::x86_64::*;

super::table!(avx2);

#[inline(always)]
unsafe fn min_max(x: &[f32]) -> (f32, f32, f32) {
    super::x86_simd::min_max::<Avx2>(x)
}

#[inline(always)]
unsafe fn quantize_row(x: &[f32], dst: &mut [u8]) -> Option<(i32, i32, f32)> {
    crate::quant::rows::quantize_row_body(x, dst)
}

// The AVX2 vector width.
super::x86_simd::lanes! {
    // 8 lanes; the packed 32-byte stores stream to 32-byte aligned outputs.
    Avx2 = 8, 32, 32, __m256, __m256i,
        _mm256_loadu_ps, _mm256_set1_ps, _mm256_storeu_ps, _mm256_stream_ps,
        _mm256_sub_ps, _mm256_mul_ps, _mm256_div_ps, _mm256_add_ps, _mm256_min_ps, _mm256_max_ps,
        _mm256_cvtps_epi32, _mm256_round_ps, _mm256_cvtepi32_ps, _mm256_cvtepi8_epi32, _mm256_cvtepu8_epi32;

    #[inline(always)]
    unsafe fn store_q4<const SIGNED: bool, const STREAM: bool>(p: *mut u8, v: [__m256i; 4]) {
        let ab = _mm256_packs_epi32(v[0], v[1]);
        let cd = _mm256_packs_epi32(v[2], v[3]);
        let abcd = if SIGNED {
            _mm256_packs_epi16(ab, cd)
        } else {
            _mm256_packus_epi16(ab, cd)
        };
        // 4-byte groups are now a0 b0 c0 d0 a1 b1 c1 d1 (each lane-half of a source vector).
        let v = _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        if STREAM {
            _mm256_stream_si256(p.cast(), v)
        } else {
            _mm256_storeu_si256(p.cast(), v)
        }
    }
    #[inline(always)]
    unsafe fn load_bytes(p: *const u8) -> __m128i {
        _mm_loadl_epi64(p.cast())
    }
}
