//! AVX-512 (F/BW/VL) loops of the quantization kernels: 16 floats per vector, 64 per
//! iteration, masked loads and stores for the tails.
//!
//! Same arithmetic as the scalar reference in `mod.rs` (`vdivps`, `vrndscaleps` to
//! nearest-even, add the zero point, `vmaxps(v, lo)` so NaN -> lo, `vminps`, exact
//! convert, `vpmovdb` truncation of the in-range value).
//!
//! The bodies are `#[inline(always)]`; `table!(avx512)` emits their
//! `#[target_feature]` wrappers and the safe `KERNELS` table, which
//! [`crate::cpu::dispatch`] hands out only on CPUs with AVX-512 F, BW and VL
//! (and AVX2); VNNI is not needed here.

use std::arch::x86_64::*;

use crate::quant::{dequant1, min_max_body, quant1, stream_head};

super::table!(avx512);

#[inline(always)]
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

/// Mask of the first `n` (<= 16) lanes.
#[inline(always)]
fn tail_mask(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

#[inline(always)]
unsafe fn quant_run(x: &[f32], s: f32, zp: f32, lo: f32, hi: f32, out: &mut [u8], stream: bool) {
    let n = x.len().min(out.len());
    // Streaming: scalar head up to a 16-byte aligned output, then `vmovntdq`.
    let head = stream_head(out, n, stream, 16, |j| quant1(x[j], s, zp, lo, hi));
    if stream {
        quant_run_t::<true>(&x[head..n], s, zp, lo, hi, &mut out[head..n]);
        _mm_sfence();
    } else {
        quant_run_t::<false>(&x[..n], s, zp, lo, hi, &mut out[..n]);
    }
}

#[inline(always)]
unsafe fn quant_run_t<const STREAM: bool>(
    x: &[f32],
    s: f32,
    zp: f32,
    lo: f32,
    hi: f32,
    out: &mut [u8],
) {
    let n = x.len().min(out.len());
    let (vs, vz, vlo, vhi) = (
        _mm512_set1_ps(s),
        _mm512_set1_ps(zp),
        _mm512_set1_ps(lo),
        _mm512_set1_ps(hi),
    );
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + 64 <= n {
        for k in 0..4 {
            let o = i + 16 * k;
            let v = q16(_mm512_loadu_ps(xp.add(o)), vs, vz, vlo, vhi);
            if STREAM {
                _mm_stream_si128(op.add(o).cast(), v);
            } else {
                _mm_storeu_si128(op.add(o).cast(), v);
            }
        }
        i += 64;
    }
    while i < n {
        let m = tail_mask((n - i).min(16));
        let v = q16(_mm512_maskz_loadu_ps(m, xp.add(i)), vs, vz, vlo, vhi);
        _mm_mask_storeu_epi8(op.add(i).cast(), m, v);
        i += 16;
    }
}

#[inline(always)]
unsafe fn quant_row(x: &[f32], s: &[f32], zp: &[f32], lo: f32, hi: f32, out: &mut [u8]) {
    let n = x.len().min(out.len()).min(s.len()).min(zp.len());
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let (xp, sp, zpp, op) = (x.as_ptr(), s.as_ptr(), zp.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i < n {
        let m = tail_mask((n - i).min(16));
        // Masked-off lanes load 1.0 as the scale so they never divide by zero.
        let vs = _mm512_mask_loadu_ps(_mm512_set1_ps(1.0), m, sp.add(i));
        let v = q16(
            _mm512_maskz_loadu_ps(m, xp.add(i)),
            vs,
            _mm512_maskz_loadu_ps(m, zpp.add(i)),
            vlo,
            vhi,
        );
        _mm_mask_storeu_epi8(op.add(i).cast(), m, v);
        i += 16;
    }
}

#[inline(always)]
unsafe fn widen16(v: __m128i, signed: bool) -> __m512 {
    let w = if signed {
        _mm512_cvtepi8_epi32(v)
    } else {
        _mm512_cvtepu8_epi32(v)
    };
    _mm512_cvtepi32_ps(w)
}

#[inline(always)]
unsafe fn dequant_run(q: &[u8], signed: bool, s: f32, zp: f32, out: &mut [f32], stream: bool) {
    let n = q.len().min(out.len());
    let head = stream_head(out, n, stream, 64, |j| dequant1(q[j], signed, s, zp));
    let (q, out) = (&q[head..n], &mut out[head..n]);
    if stream {
        dequant_run_t::<true>(q, signed, s, zp, out);
        _mm_sfence();
    } else {
        dequant_run_t::<false>(q, signed, s, zp, out);
    }
}

#[inline(always)]
unsafe fn dequant_run_t<const STREAM: bool>(
    q: &[u8],
    signed: bool,
    s: f32,
    zp: f32,
    out: &mut [f32],
) {
    let n = q.len().min(out.len());
    let (vs, vz) = (_mm512_set1_ps(s), _mm512_set1_ps(zp));
    let (qp, op) = (q.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + 64 <= n {
        for k in 0..4 {
            let o = i + 16 * k;
            let f = widen16(_mm_loadu_si128(qp.add(o).cast()), signed);
            let v = _mm512_mul_ps(_mm512_sub_ps(f, vz), vs);
            if STREAM {
                _mm512_stream_ps(op.add(o), v);
            } else {
                _mm512_storeu_ps(op.add(o), v);
            }
        }
        i += 64;
    }
    while i < n {
        let m = tail_mask((n - i).min(16));
        let f = widen16(_mm_maskz_loadu_epi8(m, qp.add(i).cast()), signed);
        _mm512_mask_storeu_ps(op.add(i), m, _mm512_mul_ps(_mm512_sub_ps(f, vz), vs));
        i += 16;
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
    let head = stream_head(out, n, stream, 64, |j| dequant1(q[j], signed, s[j], zp[j]));
    let (q, s, zp, out) = (&q[head..n], &s[head..n], &zp[head..n], &mut out[head..n]);
    if stream {
        dequant_row_t::<true>(q, signed, s, zp, out);
        _mm_sfence();
    } else {
        dequant_row_t::<false>(q, signed, s, zp, out);
    }
}

#[inline(always)]
unsafe fn dequant_row_t<const STREAM: bool>(
    q: &[u8],
    signed: bool,
    s: &[f32],
    zp: &[f32],
    out: &mut [f32],
) {
    let n = q.len().min(out.len()).min(s.len()).min(zp.len());
    let (qp, sp, zpp, op) = (q.as_ptr(), s.as_ptr(), zp.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + 16 <= n {
        let f = widen16(_mm_loadu_si128(qp.add(i).cast()), signed);
        let r = _mm512_mul_ps(
            _mm512_sub_ps(f, _mm512_loadu_ps(zpp.add(i))),
            _mm512_loadu_ps(sp.add(i)),
        );
        if STREAM {
            _mm512_stream_ps(op.add(i), r);
        } else {
            _mm512_storeu_ps(op.add(i), r);
        }
        i += 16;
    }
    if i < n {
        let m = tail_mask(n - i);
        let f = widen16(_mm_maskz_loadu_epi8(m, qp.add(i).cast()), signed);
        let r = _mm512_mul_ps(
            _mm512_sub_ps(f, _mm512_maskz_loadu_ps(m, zpp.add(i))),
            _mm512_maskz_loadu_ps(m, sp.add(i)),
        );
        _mm512_mask_storeu_ps(op.add(i), m, r);
    }
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
    let mut i = 0;
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
