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

use super::x86_simd::{self as simd, Lanes};
use crate::quant::min_max_body;

super::table!(avx2);

#[inline(always)]
unsafe fn min_max(x: &[f32]) -> (f32, f32, f32) {
    min_max_body(x)
}

#[inline(always)]
unsafe fn quantize_row(x: &[f32], dst: &mut [u8]) -> Option<(i32, i32, f32)> {
    crate::quant::rows::quantize_row_body(x, dst)
}

/// The AVX2 vector width.
pub(crate) struct Avx2;

impl Lanes for Avx2 {
    const W: usize = 8;
    const QUANT_ALIGN: usize = 32;
    const DEQUANT_ALIGN: usize = 32;
    type F = __m256;
    type I = __m256i;
    #[inline(always)]
    unsafe fn loadu(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn set1(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn store<const STREAM: bool>(p: *mut f32, v: __m256) {
        if STREAM {
            _mm256_stream_ps(p, v)
        } else {
            _mm256_storeu_ps(p, v)
        }
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn q(x: __m256, s: __m256, zp: __m256, lo: __m256, hi: __m256) -> __m256i {
        let v = _mm256_div_ps(x, s);
        let v = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        let v = _mm256_add_ps(v, zp);
        _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi))
    }
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
    unsafe fn widen<const SIGNED: bool>(p: *const u8) -> __m256 {
        let v = _mm_loadl_epi64(p.cast());
        _mm256_cvtepi32_ps(if SIGNED {
            _mm256_cvtepi8_epi32(v)
        } else {
            _mm256_cvtepu8_epi32(v)
        })
    }
    #[inline(always)]
    unsafe fn fence() {
        _mm_sfence()
    }
}

#[inline(always)]
unsafe fn quant_run(x: &[f32], s: f32, zp: f32, lo: f32, hi: f32, out: &mut [u8], stream: bool) {
    simd::quant_run::<Avx2>(x, s, zp, lo, hi, out, stream)
}

#[inline(always)]
unsafe fn quant_row(x: &[f32], s: &[f32], zp: &[f32], lo: f32, hi: f32, out: &mut [u8]) {
    simd::quant_row::<Avx2>(x, s, zp, lo, hi, out)
}

#[inline(always)]
unsafe fn dequant_run(q: &[u8], signed: bool, s: f32, zp: f32, out: &mut [f32], stream: bool) {
    simd::dequant_run::<Avx2>(q, signed, s, zp, out, stream)
}

#[inline(always)]
unsafe fn dequant_row(
    q: &[u8],
    signed: bool,
    s: &[f32],
    zp: &[f32],
    out: &mut [f32],
    stream: bool,
) {
    simd::dequant_row::<Avx2>(q, signed, s, zp, out, stream)
}
