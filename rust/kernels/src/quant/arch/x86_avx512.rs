//! AVX-512 (F/BW/VL) width of the quantization kernels: 16 floats per vector, 64 per
//! iteration: the [`Lanes`] of the x86 bodies in `x86_simd.rs` (`vdivps`,
//! `vrndscaleps` to nearest-even, `vmaxps(v, lo)` then `vminps`, exact convert,
//! `vpmovdb` truncation of the in-range value), and its own activation row
//! quantizer with masked tails.
//!
//! The bodies are `#[inline(always)]`; `table!(avx512)` emits their
//! `#[target_feature]` wrappers and the safe `KERNELS` table, which
//! [`crate::cpu::dispatch`] hands out only on CPUs with AVX-512 F, BW and VL
//! (and AVX2); VNNI is not needed here.

use std::arch::x86_64::*;

use super::x86_simd::Lanes;

super::table!(avx512);

#[inline(always)]
unsafe fn min_max(x: &[f32]) -> (f32, f32, f32) {
    super::x86_simd::min_max::<Avx512>(x)
}

// The AVX-512 vector width.
super::x86_simd::lanes! {
    Avx512 = 16, 16, 64, __m512, __m512i, // 16-byte `vpmovdb` stores, 64-byte float stores
        _mm512_loadu_ps, _mm512_set1_ps, _mm512_storeu_ps, _mm512_stream_ps,
        _mm512_sub_ps, _mm512_mul_ps, _mm512_div_ps, _mm512_add_ps, _mm512_min_ps, _mm512_max_ps,
        _mm512_cvtps_epi32, _mm512_roundscale_ps, _mm512_cvtepi32_ps, _mm512_cvtepi8_epi32, _mm512_cvtepu8_epi32;

    #[inline(always)]
    unsafe fn store_q4<const SIGNED: bool, const STREAM: bool>(p: *mut u8, v: [__m512i; 4]) {
        // In range, so the truncating `vpmovdb` is exact for int8 and uint8 alike.
        for (k, vk) in v.into_iter().enumerate() {
            let b = _mm512_cvtepi32_epi8(vk);
            if STREAM {
                _mm_stream_si128(p.add(16 * k).cast(), b)
            } else {
                _mm_storeu_si128(p.add(16 * k).cast(), b)
            }
        }
    }
    #[inline(always)]
    unsafe fn load_bytes(p: *const u8) -> __m128i {
        _mm_loadu_si128(p.cast())
    }
    // Masked tails: `f32` lanes off the mask load as 0 (and scales as 1), bytes off it
    // are neither read nor written.
    #[inline(always)]
    unsafe fn quant_run_tail(x: &[f32], s: f32, zp: f32, lo: f32, hi: f32, out: &mut [u8]) {
        quant_masked::<false>(x, &[s], &[zp], lo, hi, out)
    }
    #[inline(always)]
    unsafe fn quant_row_tail(x: &[f32], s: &[f32], zp: &[f32], lo: f32, hi: f32, out: &mut [u8]) {
        quant_masked::<true>(x, s, zp, lo, hi, out)
    }
    #[inline(always)]
    unsafe fn dequant_run_tail<const SIGNED: bool>(q: &[u8], s: f32, zp: f32, out: &mut [f32]) {
        dequant_masked::<SIGNED, false>(q, &[s], &[zp], out)
    }
    #[inline(always)]
    unsafe fn dequant_row_tail<const SIGNED: bool>(q: &[u8], s: &[f32], zp: &[f32], out: &mut [f32]) {
        dequant_masked::<SIGNED, true>(q, s, zp, out)
    }
}

// The masked loops of the tails (no closures: a closure's body would not inherit the
// wrapper's target features). `PER_LANE`: `s` and `zp` hold one value per element, else one
// for all. `f32` lanes off the mask load as 0 (a scale as 1, so no lane divides by zero);
// bytes off it are neither read nor written.

#[inline(always)]
unsafe fn quant_masked<const PER_LANE: bool>(
    x: &[f32],
    s: &[f32],
    zp: &[f32],
    lo: f32,
    hi: f32,
    out: &mut [u8],
) {
    let n = x.len().min(out.len());
    if n == 0 {
        return; // (and `s`, `zp` may be empty)
    }
    let (vlo, vhi, one) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi), _mm512_set1_ps(1.0));
    let (mut vs, mut vz) = (_mm512_set1_ps(s[0]), _mm512_set1_ps(zp[0]));
    let mut i = 0;
    while i < n {
        let m = tail_mask(n - i);
        if PER_LANE {
            vs = _mm512_mask_loadu_ps(one, m, s.as_ptr().add(i));
            vz = _mm512_maskz_loadu_ps(m, zp.as_ptr().add(i));
        }
        let xv = _mm512_maskz_loadu_ps(m, x.as_ptr().add(i));
        let v = <Avx512 as Lanes>::q(xv, vs, vz, vlo, vhi);
        _mm512_mask_cvtepi32_storeu_epi8(out.as_mut_ptr().add(i).cast(), m, v);
        i += 16;
    }
}

#[inline(always)]
unsafe fn dequant_masked<const SIGNED: bool, const PER_LANE: bool>(
    q: &[u8],
    s: &[f32],
    zp: &[f32],
    out: &mut [f32],
) {
    let n = q.len().min(out.len());
    if n == 0 {
        return; // (and `s`, `zp` may be empty)
    }
    let (mut vs, mut vz) = (_mm512_set1_ps(s[0]), _mm512_set1_ps(zp[0]));
    let mut i = 0;
    while i < n {
        let m = tail_mask(n - i);
        if PER_LANE {
            vs = _mm512_maskz_loadu_ps(m, s.as_ptr().add(i));
            vz = _mm512_maskz_loadu_ps(m, zp.as_ptr().add(i));
        }
        let f = widen_masked::<SIGNED>(m, q.as_ptr().add(i));
        _mm512_mask_storeu_ps(
            out.as_mut_ptr().add(i),
            m,
            _mm512_mul_ps(_mm512_sub_ps(f, vz), vs),
        );
        i += 16;
    }
}

/// Mask of the first `min(n, 16)` lanes.
#[inline(always)]
fn tail_mask(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// The bytes of the lanes in `m` at `p`, widened to f32 (0 elsewhere).
#[inline(always)]
unsafe fn widen_masked<const SIGNED: bool>(m: __mmask16, p: *const u8) -> __m512 {
    let v = _mm_maskz_loadu_epi8(m, p.cast());
    _mm512_cvtepi32_ps(if SIGNED {
        _mm512_cvtepi8_epi32(v)
    } else {
        _mm512_cvtepu8_epi32(v)
    })
}

/// The activation row quantizer ([`crate::quant::rows`]) in AVX-512: the same arithmetic (so
/// every ISA gives the same bytes), 16 lanes at a time with masked tails and
/// the accumulators in registers.
#[inline(always)]
unsafe fn quantize_row(x: &[f32], dst: &mut [u8]) -> Option<(i32, i32, f32)> {
    let n = x.len();
    let p = x.as_ptr();
    let tail = |i: usize| -> __mmask16 {
        if n - i >= 16 {
            0xffff
        } else {
            ((1u32 << (n - i)) - 1) as __mmask16
        }
    };
    // Pass 1: min / max (with 0) and finiteness (`v * 0` is NaN for inf or NaN).
    let zero = _mm512_setzero_ps();
    let (mut lo0, mut lo1, mut hi0, mut hi1, mut chk) = (zero, zero, zero, zero, zero);
    let mut i = 0;
    while i + 32 <= n {
        let (a, b) = (_mm512_loadu_ps(p.add(i)), _mm512_loadu_ps(p.add(i + 16)));
        lo0 = _mm512_min_ps(lo0, a);
        lo1 = _mm512_min_ps(lo1, b);
        hi0 = _mm512_max_ps(hi0, a);
        hi1 = _mm512_max_ps(hi1, b);
        chk = _mm512_add_ps(
            chk,
            _mm512_add_ps(_mm512_mul_ps(a, zero), _mm512_mul_ps(b, zero)),
        );
        i += 32;
    }
    while i < n {
        // Masked-off lanes read as 0, which changes neither bound (lo <= 0 <= hi).
        let a = _mm512_maskz_loadu_ps(tail(i), p.add(i));
        lo0 = _mm512_min_ps(lo0, a);
        hi0 = _mm512_max_ps(hi0, a);
        chk = _mm512_add_ps(chk, _mm512_mul_ps(a, zero));
        i += 16;
    }
    if _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(chk, zero) != 0xffff {
        return None;
    }
    let lo = _mm512_reduce_min_ps(_mm512_min_ps(lo0, lo1));
    let hi = _mm512_reduce_max_ps(_mm512_max_ps(hi0, hi1));
    let (scale, zp, inv) = crate::quant::rows::row_qparams(lo, hi);
    // Pass 2: q = clamp(round_even(x * inv) + zp, 0, 255), its sum, bytes out.
    let (vinv, vzp, vmax) = (
        _mm512_set1_ps(inv),
        _mm512_set1_ps(zp as f32),
        _mm512_set1_ps(255.0),
    );
    let magic = _mm512_set1_ps(12_582_912.0); // 1.5 * 2^23: (v + M) - M rounds half to even
    let d = dst.as_mut_ptr();
    let mut sum = _mm512_setzero_si512();
    // Full groups of 64: two packs and a dword permute make one 64-byte
    // store (a masked `vpmovdb` store per 16 values cost more than the math).
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let mut i = 0;
    while i + 64 <= n {
        let mut q = [_mm512_setzero_si512(); 4];
        for (k, qk) in q.iter_mut().enumerate() {
            let v = _mm512_mul_ps(_mm512_loadu_ps(p.add(i + 16 * k)), vinv);
            let r = _mm512_sub_ps(_mm512_add_ps(v, magic), magic);
            *qk = _mm512_cvttps_epi32(_mm512_min_ps(
                _mm512_max_ps(_mm512_add_ps(r, vzp), zero),
                vmax,
            ));
            sum = _mm512_add_epi32(sum, *qk);
        }
        // In range [0, 255], so the saturating packs are exact; per 128-bit
        // lane `l` they leave the dwords q0[l], q1[l], q2[l], q3[l].
        let ab = _mm512_packs_epi32(q[0], q[1]);
        let cd = _mm512_packs_epi32(q[2], q[3]);
        let bytes = _mm512_permutexvar_epi32(order, _mm512_packus_epi16(ab, cd));
        _mm512_storeu_si512(d.add(i).cast(), bytes);
        i += 64;
    }
    while i < n {
        let m = tail(i);
        let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p.add(i)), vinv);
        let r = _mm512_sub_ps(_mm512_add_ps(v, magic), magic);
        let q = _mm512_cvttps_epi32(_mm512_min_ps(
            _mm512_max_ps(_mm512_add_ps(r, vzp), zero),
            vmax,
        ));
        sum = _mm512_add_epi32(sum, _mm512_maskz_mov_epi32(m, q));
        _mm512_mask_cvtepi32_storeu_epi8(d.add(i) as *mut i8, m, q);
        i += 16;
    }
    dst[n..].fill(0);
    Some((_mm512_reduce_add_epi32(sum), zp, scale))
}
