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

use super::{dequant1, head_len, min_max_body, quant1, Kernels};

pub(super) const KERNELS: Kernels = Kernels {
    quant_run: |x, s, zp, lo, hi, out, stream| unsafe { quant_run(x, s, zp, lo, hi, out, stream) },
    quant_row: |x, s, zp, lo, hi, out| unsafe { quant_row(x, s, zp, lo, hi, out) },
    dequant_run: |q, signed, s, zp, out, stream| unsafe {
        dequant_run(q, signed, s, zp, out, stream)
    },
    dequant_row: |q, signed, s, zp, out, stream| unsafe {
        dequant_row(q, signed, s, zp, out, stream)
    },
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

/// Mask of the first `n` (<= 16) lanes.
#[inline(always)]
fn tail_mask(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn quant_run(x: &[f32], s: f32, zp: f32, lo: f32, hi: f32, out: &mut [u8], stream: bool) {
    let n = x.len().min(out.len());
    // Streaming: scalar head up to a 16-byte aligned output, then `vmovntdq`.
    let head = if stream {
        head_len(out.as_ptr() as usize, 16, 1).unwrap_or(n).min(n)
    } else {
        0
    };
    for j in 0..head {
        out[j] = quant1(x[j], s, zp, lo, hi);
    }
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

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
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

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn dequant_run(q: &[u8], signed: bool, s: f32, zp: f32, out: &mut [f32], stream: bool) {
    let n = q.len().min(out.len());
    let head = if stream {
        head_len(out.as_ptr() as usize, 64, 4).unwrap_or(n).min(n)
    } else {
        0
    };
    for j in 0..head {
        out[j] = dequant1(q[j], signed, s, zp);
    }
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

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn dequant_row(
    q: &[u8],
    signed: bool,
    s: &[f32],
    zp: &[f32],
    out: &mut [f32],
    stream: bool,
) {
    let n = q.len().min(out.len()).min(s.len()).min(zp.len());
    let head = if stream {
        head_len(out.as_ptr() as usize, 64, 4).unwrap_or(n).min(n)
    } else {
        0
    };
    for j in 0..head {
        out[j] = dequant1(q[j], signed, s[j], zp[j]);
    }
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
