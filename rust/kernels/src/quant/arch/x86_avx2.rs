//! AVX2 loops of the quantization kernels (8 floats per vector, 32 per iteration).
//!
//! Same arithmetic as the scalar reference in `mod.rs`: `vdivps` (IEEE division),
//! `vroundps` to nearest-even, add the zero point, `vmaxps(v, lo)` (NaN -> lo) then
//! `vminps`, and an exact convert of the now in-range integer value.
//!
//! The bodies are `#[inline(always)]`; `table!(avx2)` emits their
//! `#[target_feature]` wrappers and the safe `KERNELS` table, which
//! [`crate::cpu::dispatch`] hands out only on CPUs with AVX2 and FMA. The
//! activation row quantizer is the portable body compiled for AVX2.

use std::arch::x86_64::*;

use crate::quant::{dequant1, min_max_body, quant1, stream_head};

super::table!(avx2);

#[inline(always)]
unsafe fn min_max(x: &[f32]) -> (f32, f32, f32) {
    min_max_body(x)
}

#[inline(always)]
unsafe fn quantize_row(x: &[f32], dst: &mut [u8]) -> Option<(i32, i32, f32)> {
    crate::quant::rows::quantize_row_body(x, dst)
}

/// round_half_even(x / s) + zp, clamped to [lo, hi], as i32 lanes.
#[inline(always)]
unsafe fn q8(x: __m256, s: __m256, zp: __m256, lo: __m256, hi: __m256) -> __m256i {
    let v = _mm256_div_ps(x, s);
    let v = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
    let v = _mm256_add_ps(v, zp);
    _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi))
}

/// Packs four vectors of in-range i32 into 32 bytes in element order.
#[inline(always)]
unsafe fn pack4<const SIGNED: bool>(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m256i {
    let ab = _mm256_packs_epi32(a, b);
    let cd = _mm256_packs_epi32(c, d);
    let abcd = if SIGNED {
        _mm256_packs_epi16(ab, cd)
    } else {
        _mm256_packus_epi16(ab, cd)
    };
    // 4-byte groups are now a0 b0 c0 d0 a1 b1 c1 d1 (each lane-half of a source vector).
    _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

#[inline(always)]
unsafe fn quant_run(x: &[f32], s: f32, zp: f32, lo: f32, hi: f32, out: &mut [u8], stream: bool) {
    let n = x.len().min(out.len());
    // Streaming: scalar head up to a 32-byte aligned output, then `vmovntdq`.
    let head = stream_head(out, n, stream, 32, |j| quant1(x[j], s, zp, lo, hi));
    let (x, out) = (&x[head..n], &mut out[head..n]);
    match (lo < 0.0, stream) {
        (true, false) => quant_run_t::<true, false>(x, s, zp, lo, hi, out),
        (false, false) => quant_run_t::<false, false>(x, s, zp, lo, hi, out),
        (true, true) => quant_run_t::<true, true>(x, s, zp, lo, hi, out),
        (false, true) => quant_run_t::<false, true>(x, s, zp, lo, hi, out),
    }
    if stream {
        _mm_sfence();
    }
}

#[inline(always)]
unsafe fn quant_run_t<const SIGNED: bool, const STREAM: bool>(
    x: &[f32],
    s: f32,
    zp: f32,
    lo: f32,
    hi: f32,
    out: &mut [u8],
) {
    let n = x.len().min(out.len());
    let (vs, vz, vlo, vhi) = (
        _mm256_set1_ps(s),
        _mm256_set1_ps(zp),
        _mm256_set1_ps(lo),
        _mm256_set1_ps(hi),
    );
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + 32 <= n {
        let a = q8(_mm256_loadu_ps(xp.add(i)), vs, vz, vlo, vhi);
        let b = q8(_mm256_loadu_ps(xp.add(i + 8)), vs, vz, vlo, vhi);
        let c = q8(_mm256_loadu_ps(xp.add(i + 16)), vs, vz, vlo, vhi);
        let d = q8(_mm256_loadu_ps(xp.add(i + 24)), vs, vz, vlo, vhi);
        let v = pack4::<SIGNED>(a, b, c, d);
        if STREAM {
            _mm256_stream_si256(op.add(i).cast(), v);
        } else {
            _mm256_storeu_si256(op.add(i).cast(), v);
        }
        i += 32;
    }
    for j in i..n {
        out[j] = quant1(x[j], s, zp, lo, hi);
    }
}

#[inline(always)]
unsafe fn quant_row(x: &[f32], s: &[f32], zp: &[f32], lo: f32, hi: f32, out: &mut [u8]) {
    if lo < 0.0 {
        quant_row_t::<true>(x, s, zp, lo, hi, out)
    } else {
        quant_row_t::<false>(x, s, zp, lo, hi, out)
    }
}

#[inline(always)]
unsafe fn quant_row_t<const SIGNED: bool>(
    x: &[f32],
    s: &[f32],
    zp: &[f32],
    lo: f32,
    hi: f32,
    out: &mut [u8],
) {
    let n = x.len().min(out.len()).min(s.len()).min(zp.len());
    let (vlo, vhi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    let (xp, sp, zpp, op) = (x.as_ptr(), s.as_ptr(), zp.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + 32 <= n {
        let mut v = [_mm256_setzero_si256(); 4];
        for (k, vk) in v.iter_mut().enumerate() {
            let o = i + 8 * k;
            *vk = q8(
                _mm256_loadu_ps(xp.add(o)),
                _mm256_loadu_ps(sp.add(o)),
                _mm256_loadu_ps(zpp.add(o)),
                vlo,
                vhi,
            );
        }
        _mm256_storeu_si256(op.add(i).cast(), pack4::<SIGNED>(v[0], v[1], v[2], v[3]));
        i += 32;
    }
    for j in i..n {
        out[j] = quant1(x[j], s[j], zp[j], lo, hi);
    }
}

/// Eight bytes at `p` widened to f32.
#[inline(always)]
unsafe fn widen8<const SIGNED: bool>(v: __m128i) -> __m256 {
    let w = if SIGNED {
        _mm256_cvtepi8_epi32(v)
    } else {
        _mm256_cvtepu8_epi32(v)
    };
    _mm256_cvtepi32_ps(w)
}

#[inline(always)]
unsafe fn dequant_run(q: &[u8], signed: bool, s: f32, zp: f32, out: &mut [f32], stream: bool) {
    let n = q.len().min(out.len());
    let head = stream_head(out, n, stream, 32, |j| dequant1(q[j], signed, s, zp));
    let (q, out) = (&q[head..n], &mut out[head..n]);
    match (signed, stream) {
        (true, false) => dequant_run_t::<true, false>(q, s, zp, out),
        (false, false) => dequant_run_t::<false, false>(q, s, zp, out),
        (true, true) => dequant_run_t::<true, true>(q, s, zp, out),
        (false, true) => dequant_run_t::<false, true>(q, s, zp, out),
    }
    if stream {
        _mm_sfence();
    }
}

#[inline(always)]
unsafe fn dequant_run_t<const SIGNED: bool, const STREAM: bool>(
    q: &[u8],
    s: f32,
    zp: f32,
    out: &mut [f32],
) {
    let n = q.len().min(out.len());
    let (vs, vz) = (_mm256_set1_ps(s), _mm256_set1_ps(zp));
    let (qp, op) = (q.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + 32 <= n {
        let lo16 = _mm_loadu_si128(qp.add(i).cast());
        let hi16 = _mm_loadu_si128(qp.add(i + 16).cast());
        let parts = [
            lo16,
            _mm_srli_si128::<8>(lo16),
            hi16,
            _mm_srli_si128::<8>(hi16),
        ];
        for (k, p) in parts.into_iter().enumerate() {
            let v = _mm256_mul_ps(_mm256_sub_ps(widen8::<SIGNED>(p), vz), vs);
            if STREAM {
                _mm256_stream_ps(op.add(i + 8 * k), v);
            } else {
                _mm256_storeu_ps(op.add(i + 8 * k), v);
            }
        }
        i += 32;
    }
    for j in i..n {
        out[j] = dequant1(q[j], SIGNED, s, zp);
    }
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
    let n = q.len().min(out.len()).min(s.len()).min(zp.len());
    let head = stream_head(out, n, stream, 32, |j| dequant1(q[j], signed, s[j], zp[j]));
    let (q, s, zp, out) = (&q[head..n], &s[head..n], &zp[head..n], &mut out[head..n]);
    match (signed, stream) {
        (true, false) => dequant_row_t::<true, false>(q, s, zp, out),
        (false, false) => dequant_row_t::<false, false>(q, s, zp, out),
        (true, true) => dequant_row_t::<true, true>(q, s, zp, out),
        (false, true) => dequant_row_t::<false, true>(q, s, zp, out),
    }
    if stream {
        _mm_sfence();
    }
}

#[inline(always)]
unsafe fn dequant_row_t<const SIGNED: bool, const STREAM: bool>(
    q: &[u8],
    s: &[f32],
    zp: &[f32],
    out: &mut [f32],
) {
    let n = q.len().min(out.len()).min(s.len()).min(zp.len());
    let (qp, sp, zpp, op) = (q.as_ptr(), s.as_ptr(), zp.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + 8 <= n {
        let f = widen8::<SIGNED>(_mm_loadl_epi64(qp.add(i).cast()));
        let r = _mm256_mul_ps(
            _mm256_sub_ps(f, _mm256_loadu_ps(zpp.add(i))),
            _mm256_loadu_ps(sp.add(i)),
        );
        if STREAM {
            _mm256_stream_ps(op.add(i), r);
        } else {
            _mm256_storeu_ps(op.add(i), r);
        }
        i += 8;
    }
    for j in i..n {
        out[j] = dequant1(q[j], SIGNED, s[j], zp[j]);
    }
}
