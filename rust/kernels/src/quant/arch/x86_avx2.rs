//! AVX2 width of the quantization kernels (8 floats per vector, 32 per
//! iteration): the [`Lanes`] of the x86 bodies in `x86_simd.rs` (`vdivps`,
//! `vroundps` to nearest-even, `vmaxps(v, lo)` then `vminps`, `vcvtps2dq`,
//! saturating packs in element order).
//!
//! The bodies are `#[inline(always)]`; `table!(avx2)` emits their
//! `#[target_feature]` wrappers and the safe `KERNELS` table, which
//! [`crate::cpu::dispatch`] hands out only on CPUs with AVX2 and FMA. The
//! activation row quantizer is its own, in explicit vectors.

use std::arch::x86_64::*;

use super::x86_simd::Lanes;

super::table!(avx2);

#[inline(always)]
unsafe fn min_max(x: &[f32]) -> (f32, f32, f32) {
    super::x86_simd::min_max::<Avx2>(x)
}

/// The activation row quantizer ([`crate::quant::rows`]) in explicit AVX2
/// vectors: the same arithmetic as `quantize_row_body` (so the same bytes),
/// 32 values per step with the bounds and the sum in registers, the tail
/// (under 32 values) in the body's scalar steps. The portable body compiled
/// for AVX2 kept its 16-lane arrays in memory.
#[inline(always)]
unsafe fn quantize_row(x: &[f32], dst: &mut [u8]) -> Option<(i32, i32, f32)> {
    const G: usize = 32;
    let n = x.len();
    let p = x.as_ptr();
    let full = n / G * G;
    // Pass 1: min / max (with 0) and finiteness (`v * 0` is NaN for inf or
    // NaN). A NaN can win `vminps` here, but then the row is rejected.
    let zero = _mm256_setzero_ps();
    let (mut lo, mut hi, mut chk) = ([zero; 4], [zero; 4], [zero; 4]);
    let mut i = 0;
    while i < full {
        for k in 0..4 {
            let a = _mm256_loadu_ps(p.add(i + 8 * k));
            lo[k] = _mm256_min_ps(lo[k], a);
            hi[k] = _mm256_max_ps(hi[k], a);
            chk[k] = _mm256_add_ps(chk[k], _mm256_mul_ps(a, zero));
        }
        i += G;
    }
    let (l, h, c) = (
        _mm256_min_ps(_mm256_min_ps(lo[0], lo[1]), _mm256_min_ps(lo[2], lo[3])),
        _mm256_max_ps(_mm256_max_ps(hi[0], hi[1]), _mm256_max_ps(hi[2], hi[3])),
        _mm256_add_ps(_mm256_add_ps(chk[0], chk[1]), _mm256_add_ps(chk[2], chk[3])),
    );
    let (mut lv, mut hv, mut cv) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    _mm256_storeu_ps(lv.as_mut_ptr(), l);
    _mm256_storeu_ps(hv.as_mut_ptr(), h);
    _mm256_storeu_ps(cv.as_mut_ptr(), c);
    let (mut lo, mut hi, mut bad) = (0.0f32, 0.0f32, false);
    for j in 0..8 {
        lo = if lv[j] < lo { lv[j] } else { lo };
        hi = if hv[j] > hi { hv[j] } else { hi };
        bad |= cv[j] != 0.0;
    }
    for &v in &x[full..] {
        lo = if v < lo { v } else { lo };
        hi = if v > hi { v } else { hi };
        bad |= v * 0.0 != 0.0;
    }
    if bad {
        return None;
    }
    let (scale, zp, inv) = crate::quant::rows::row_qparams(lo, hi);
    // Pass 2: q = clamp(round_even(x * inv) + zp, 0, 255), its sum, bytes out.
    let (vinv, vzp, vmax) = (
        _mm256_set1_ps(inv),
        _mm256_set1_ps(zp as f32),
        _mm256_set1_ps(255.0),
    );
    let magic = _mm256_set1_ps(12_582_912.0); // 1.5 * 2^23: (v + M) - M rounds half to even
    let d = dst.as_mut_ptr();
    let mut sum = _mm256_setzero_si256();
    let mut i = 0;
    while i < full {
        let mut q = [_mm256_setzero_si256(); 4];
        for (k, qk) in q.iter_mut().enumerate() {
            let v = _mm256_mul_ps(_mm256_loadu_ps(p.add(i + 8 * k)), vinv);
            let r = _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
            *qk = _mm256_cvttps_epi32(_mm256_min_ps(
                _mm256_max_ps(_mm256_add_ps(r, vzp), zero),
                vmax,
            ));
            sum = _mm256_add_epi32(sum, *qk);
        }
        Avx2::store_q4::<false, false>(d.add(i), q);
        i += G;
    }
    let mut s = [0i32; 8];
    _mm256_storeu_si256(s.as_mut_ptr().cast(), sum);
    let mut total = s.iter().fold(0i32, |a, &b| a.wrapping_add(b));
    let zpf = zp as f32;
    for (dd, &v) in dst[full..n].iter_mut().zip(&x[full..]) {
        let q = (crate::gemm::output::round_even_f32(v * inv) + zpf).clamp(0.0, 255.0);
        // SAFETY: q is an integer-valued float in [0, 255].
        let qi: i32 = q.to_int_unchecked();
        *dd = qi as u8;
        total = total.wrapping_add(qi);
    }
    dst[n..].fill(0);
    Some((total, zp, scale))
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
