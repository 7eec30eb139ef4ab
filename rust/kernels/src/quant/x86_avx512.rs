//! AVX-512 (F/BW/VL) loops of the quantization kernels: 16 floats per vector, 64 per
//! iteration, masked loads and stores for the tails.
//!
//! Same arithmetic as the scalar reference in `mod.rs` (`vdivps`, `vrndscaleps` to
//! nearest-even, add the zero point, `vmaxps(v, lo)` so NaN -> lo, `vminps`, exact
//! convert, `vpmovdb` truncation of the in-range value).
//!
//! Safety: [`KERNELS`] is handed out only when `isa::active()` is `Avx512Vnni`, which
//! `isa` allows only on CPUs with AVX-512 F, BW, VL and VNNI (and AVX2).

use std::arch::x86_64::*;

use super::{min_max_body, Kernels};

pub(super) const KERNELS: Kernels = Kernels {
    quant_run: |x, s, zp, lo, hi, out| unsafe { quant_run(x, s, zp, lo, hi, out) },
    quant_row: |x, s, zp, lo, hi, out| unsafe { quant_row(x, s, zp, lo, hi, out) },
    dequant_run: |q, signed, s, zp, out| unsafe { dequant_run(q, signed, s, zp, out) },
    dequant_row: |q, signed, s, zp, out| unsafe { dequant_row(q, signed, s, zp, out) },
    min_max: |x| unsafe { min_max(x) },
};

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn min_max(x: &[f32]) -> (f32, f32, f32) {
    min_max_body(x)
}

#[inline(always)]
unsafe fn q16(x: __m512, s: __m512, zp: __m512, lo: __m512, hi: __m512) -> __m128i {
    let v = _mm512_div_ps(x, s);
    let v = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
    let v = _mm512_add_ps(v, zp);
    _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(v, lo), hi)))
}

/// Mask of the first `n` (< 16) lanes.
#[inline(always)]
fn tail_mask(n: usize) -> u16 {
    ((1u32 << n) - 1) as u16
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn quant_run(x: &[f32], s: f32, zp: f32, lo: f32, hi: f32, out: &mut [u8]) {
    let n = x.len().min(out.len());
    let (vs, vz, vlo, vhi) = (_mm512_set1_ps(s), _mm512_set1_ps(zp), _mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + 64 <= n {
        for k in 0..4 {
            let o = i + 16 * k;
            _mm_storeu_si128(op.add(o).cast(), q16(_mm512_loadu_ps(xp.add(o)), vs, vz, vlo, vhi));
        }
        i += 64;
    }
    while i < n {
        let m = tail_mask((n - i).min(16)) as __mmask16;
        let m = if n - i >= 16 { 0xffff } else { m };
        let v = q16(_mm512_maskz_loadu_ps(m, xp.add(i)), vs, vz, vlo, vhi);
        _mm_mask_storeu_epi8(op.add(i).cast(), m, v);
        i += 16;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn quant_row(x: &[f32], s: &[f32], zp: &[f32], lo: f32, hi: f32, out: &mut [u8]) {
    let n = x.len().min(out.len()).min(s.len()).min(zp.len());
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let (xp, sp, zpp, op) = (x.as_ptr(), s.as_ptr(), zp.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i < n {
        let m: __mmask16 = if n - i >= 16 { 0xffff } else { tail_mask(n - i) };
        // Masked-off lanes load 1.0 as the scale so they never divide by zero.
        let vs = _mm512_mask_loadu_ps(_mm512_set1_ps(1.0), m, sp.add(i));
        let v = q16(_mm512_maskz_loadu_ps(m, xp.add(i)), vs, _mm512_maskz_loadu_ps(m, zpp.add(i)), vlo, vhi);
        _mm_mask_storeu_epi8(op.add(i).cast(), m, v);
        i += 16;
    }
}

#[inline(always)]
unsafe fn widen16(v: __m128i, signed: bool) -> __m512 {
    let w = if signed { _mm512_cvtepi8_epi32(v) } else { _mm512_cvtepu8_epi32(v) };
    _mm512_cvtepi32_ps(w)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn dequant_run(q: &[u8], signed: bool, s: f32, zp: f32, out: &mut [f32]) {
    let n = q.len().min(out.len());
    let (vs, vz) = (_mm512_set1_ps(s), _mm512_set1_ps(zp));
    let (qp, op) = (q.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + 64 <= n {
        for k in 0..4 {
            let o = i + 16 * k;
            let f = widen16(_mm_loadu_si128(qp.add(o).cast()), signed);
            _mm512_storeu_ps(op.add(o), _mm512_mul_ps(_mm512_sub_ps(f, vz), vs));
        }
        i += 64;
    }
    while i < n {
        let m: __mmask16 = if n - i >= 16 { 0xffff } else { tail_mask(n - i) };
        let f = widen16(_mm_maskz_loadu_epi8(m, qp.add(i).cast()), signed);
        _mm512_mask_storeu_ps(op.add(i), m, _mm512_mul_ps(_mm512_sub_ps(f, vz), vs));
        i += 16;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn dequant_row(q: &[u8], signed: bool, s: &[f32], zp: &[f32], out: &mut [f32]) {
    let n = q.len().min(out.len()).min(s.len()).min(zp.len());
    let (qp, sp, zpp, op) = (q.as_ptr(), s.as_ptr(), zp.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i < n {
        let m: __mmask16 = if n - i >= 16 { 0xffff } else { tail_mask(n - i) };
        let f = widen16(_mm_maskz_loadu_epi8(m, qp.add(i).cast()), signed);
        let r = _mm512_mul_ps(_mm512_sub_ps(f, _mm512_maskz_loadu_ps(m, zpp.add(i))), _mm512_maskz_loadu_ps(m, sp.add(i)));
        _mm512_mask_storeu_ps(op.add(i), m, r);
        i += 16;
    }
}
