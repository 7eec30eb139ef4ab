//! AVX-512 VNNI micro-kernel: `vpdpbusd` (u8 × s8, four products summed into
//! each i32 lane, wrapping, never saturating). One zmm holds one 64-byte
//! K-group of a packed B panel (16 columns × 4 k); four A bytes of a row are
//! broadcast to all lanes. Tile: 6 rows × 4 panels (64 columns) = 24 zmm
//! accumulators + 4 B registers + 1 broadcast, within the 32 zmm registers.
//! A single row (GEMV) uses up to 8 panels: 8 independent accumulator chains.

#![cfg(target_arch = "x86_64")]
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use std::arch::x86_64::*;

use super::kernel::{tile_match, Fix, Kernel};
use super::output::OutElem;
use super::Finish;

pub(crate) struct Avx512Vnni;

impl Kernel for Avx512Vnni {
    const MR: usize = 6;
    const NP: usize = 4;
    const NP_ROW: usize = 8;
    const DIRECT: bool = true;
    type AElem = u8;

    fn widen(src: &[u8], dst: &mut [u8]) {
        dst.copy_from_slice(src);
    }

    fn row_bytes(dst: &mut [u8]) -> Option<&mut [u8]> {
        Some(dst)
    }

    fn copy_sum(src: &[u8], flip: u8, dst: &mut [u8]) -> i32 {
        // SAFETY: this kernel is only used when the CPU has AVX-512 (so AVX2).
        unsafe { super::x86_avx2::copy_sum_avx2(src, flip, dst) }
    }

    unsafe fn finish<T: OutElem>(f: Finish<'_, '_, T>) {
        finish_tf(f)
    }

    fn quantize_row(x: &[f32], dst: &mut [u8]) -> Option<(i32, i32, f32)> {
        // SAFETY: this kernel is only used when the CPU has its ISA.
        unsafe { quantize_tf(x, dst) }
    }

    unsafe fn tile(
        mr: usize,
        np: usize,
        kg: usize,
        a: *const u8,
        lda: usize,
        b: *const i8,
        bs: usize,
        acc: *mut i32,
        ld: usize,
        load: bool,
        fix: Option<&Fix>,
    ) {
        tile_match!(
            mr,
            np,
            tile_tf,
            (kg, a, lda, b, bs, acc, ld, load, fix),
            [
                (1, 1),
                (1, 2),
                (1, 3),
                (1, 4),
                (1, 5),
                (1, 6),
                (1, 7),
                (1, 8),
                (2, 1),
                (2, 2),
                (2, 3),
                (2, 4),
                (3, 1),
                (3, 2),
                (3, 3),
                (3, 4),
                (4, 1),
                (4, 2),
                (4, 3),
                (4, 4),
                (5, 1),
                (5, 2),
                (5, 3),
                (5, 4),
                (6, 1),
                (6, 2),
                (6, 3),
                (6, 4)
            ]
        )
    }
}

#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_tf<const MR: usize, const NP: usize>(
    kg: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    bs: usize,
    acc: *mut i32,
    ld: usize,
    load: bool,
    fix: Option<&Fix>,
) {
    tile_body::<MR, NP>(kg, a, lda, b, bs, acc, ld, load, fix)
}

#[inline(always)]
unsafe fn tile_body<const MR: usize, const NP: usize>(
    kg: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    bs: usize,
    acc: *mut i32,
    ld: usize,
    load: bool,
    fix: Option<&Fix>,
) {
    let mut s = [[_mm512_setzero_si512(); NP]; MR];
    if load {
        for r in 0..MR {
            for p in 0..NP {
                s[r][p] = _mm512_loadu_si512(acc.add(r * ld + 16 * p) as *const _);
            }
        }
    }
    let mut bp = b;
    let mut ap = a;
    for _ in 0..kg {
        let mut bv = [_mm512_setzero_si512(); NP];
        for p in 0..NP {
            bv[p] = _mm512_loadu_si512(bp.add(p * bs) as *const _);
        }
        for r in 0..MR {
            let av = _mm512_set1_epi32((ap.add(r * lda) as *const i32).read_unaligned());
            for p in 0..NP {
                s[r][p] = _mm512_dpbusd_epi32(s[r][p], av, bv[p]);
            }
        }
        bp = bp.add(64);
        ap = ap.add(4);
    }
    if let Some(f) = fix {
        for p in 0..NP {
            let ct = _mm512_loadu_si512(f.colterm.add(16 * p) as *const _);
            let zb = _mm512_loadu_si512(f.zb.add(16 * p) as *const _);
            for r in 0..MR {
                let t = _mm512_add_epi32(
                    _mm512_mullo_epi32(_mm512_set1_epi32(*f.za.add(r)), ct),
                    _mm512_mullo_epi32(_mm512_set1_epi32(*f.rowsum.add(r)), zb),
                );
                s[r][p] = _mm512_sub_epi32(s[r][p], t);
            }
        }
    }
    if let Some(f) = fix.filter(|f| !f.dst.is_null()) {
        // Straight to the i32 output, the last panel masked to its columns.
        for p in 0..NP {
            let left = f.dst_cols.saturating_sub(16 * p);
            if left == 0 {
                break;
            }
            let mask: __mmask16 = if left >= 16 {
                0xFFFF
            } else {
                (1u16 << left) - 1
            };
            for r in 0..MR {
                _mm512_mask_storeu_epi32(f.dst.add(r * f.dst_ld + 16 * p), mask, s[r][p]);
            }
        }
        return;
    }
    for r in 0..MR {
        for p in 0..NP {
            _mm512_storeu_si512(acc.add(r * ld + 16 * p) as *mut _, s[r][p]);
        }
    }
}

#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn finish_tf<T: OutElem>(f: Finish<'_, '_, T>) {
    super::finish_block(f)
}

/// [`super::pack::quantize_row_u8`] in AVX-512: the same arithmetic (so
/// every ISA gives the same bytes), 16 lanes at a time with masked tails and
/// the accumulators in registers.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn quantize_tf(x: &[f32], dst: &mut [u8]) -> Option<(i32, i32, f32)> {
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
    let (scale, zp, inv) = super::pack::row_qparams(lo, hi);
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
