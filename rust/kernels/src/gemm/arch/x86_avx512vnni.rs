//! AVX-512 VNNI micro-kernel: `vpdpbusd` (u8 × s8, four products summed into
//! each i32 lane, wrapping, never saturating). One zmm holds one 64-byte
//! K-group of a packed B panel (16 columns × 4 k); four A bytes of a row are
//! broadcast to all lanes. Tile: 6 rows × 4 panels (64 columns) = 24 zmm
//! accumulators + 4 B registers + 1 broadcast, within the 32 zmm registers.
//! A single row (GEMV) uses up to 8 panels: 8 independent accumulator chains.

#![cfg(target_arch = "x86_64")]
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use std::arch::x86_64::*;

use crate::gemm::kernel::{kernel_methods, Fix, FloatOut, Kernel, Tile};
use crate::gemm::{ConvRows, RowsB};

// B is packed by the AVX2 code (the layout is shared; packing is not the hot loop).
super::table!(Avx512Vnni, super::x86_avx2::KERNELS.pack_panels);
super::kernel_fns!(avx512vnni, u8);

pub(crate) struct Avx512Vnni;

impl Kernel for Avx512Vnni {
    const MR: usize = 6;
    const NP: usize = 4;
    const NP_ROW: usize = 8;
    const DIRECT: bool = true;
    type AElem = u8;

    kernel_methods!(
        tile: tile_tf,
        shapes: [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7), (1, 8), (2, 1), (2, 2), (2, 3), (2, 4), (3, 1), (3, 2), (3, 3), (3, 4), (4, 1), (4, 2), (4, 3), (4, 4), (5, 1), (5, 2), (5, 3), (5, 4), (6, 1), (6, 2), (6, 3), (6, 4)],
        finish: finish_tf,
        copy_sum: copy_sum_tf,
        pack_rows: pack_rows_tf,
        gemv_rows: super::x86_avx512vnni_gemv::gemv_rows_tf,
        unfold: unfold_tf
    );
}

#[inline(always)]
unsafe fn tile_body<const MR: usize, const NP: usize>(t: &Tile<'_, u8>) {
    let (kg, a, lda, b, bs, acc, ld, load, fix) = t.parts();
    let mut s = [[_mm512_setzero_si512(); NP]; MR];
    if load {
        for r in 0..MR {
            for p in 0..NP {
                s[r][p] = _mm512_loadu_si512(acc.add(r * ld + 16 * p) as *const _);
            }
        }
    }
    if let Some(f) = fix {
        // The output lines of a direct tile, fetched while the K loop runs
        // (a big output is not in cache: 24 stores that miss at once stall).
        let dst = match &f.float {
            Some(o) => o.dst as *const u8,
            None => f.dst as *const u8,
        };
        if !dst.is_null() {
            for r in 0..MR {
                for p in 0..NP {
                    crate::cpu::prefetch(dst.wrapping_add(4 * (r * f.dst_ld + 16 * p)));
                }
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
        correct(&mut s, f);
        if let Some(o) = &f.float {
            // Out of line, the tile passed by value: inlined, the float
            // step's extra registers beside the 24 accumulators made the
            // compiler store the accumulators on every K step (3× slower).
            float_out_tf::<MR, NP>(s, f, o);
            return;
        }
    }
    if let Some(f) = fix.filter(|f| !f.dst.is_null()) {
        // Straight to the i32 output, the last panel masked to its columns.
        for p in 0..NP {
            let left = f.dst_cols.saturating_sub(16 * p);
            if left == 0 {
                break;
            }
            let mask = panel_mask(left);
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

/// The lanes of a 16-column panel with `left` (> 0) output columns left.
#[inline(always)]
fn panel_mask(left: usize) -> __mmask16 {
    if left >= 16 {
        0xFFFF
    } else {
        (1u16 << left) - 1
    }
}

crate::cpu::isa_fns!(avx512vnni;
    #[inline(never)]
    unsafe fn float_out_tf<const MR: usize, const NP: usize>(s: [[__m512i; NP]; MR], f: &Fix, o: &FloatOut) {
        float_out(s, f, o)
    }
);

/// The plain float output step of a corrected tile ([`FloatOut`]: the
/// float rows' operations in their order), straight to the `f32` output,
/// the last panel masked to its columns.
#[inline(always)]
unsafe fn float_out<const MR: usize, const NP: usize>(
    s: [[__m512i; NP]; MR],
    f: &Fix,
    o: &FloatOut,
) {
    let zero = _mm512_setzero_ps();
    for p in 0..NP {
        let left = f.dst_cols.saturating_sub(16 * p);
        if left == 0 {
            break;
        }
        let mask = panel_mask(left);
        let cs = _mm512_maskz_loadu_ps(mask, o.col_scale.add(16 * p));
        let bias = _mm512_maskz_loadu_ps(mask, o.bias.add(16 * p));
        for r in 0..MR {
            let rs = _mm512_set1_ps(*o.row_scale.add(r * o.rs_step));
            let v = _mm512_mul_ps(_mm512_cvtepi32_ps(s[r][p]), rs);
            let mut v = _mm512_add_ps(_mm512_mul_ps(v, cs), bias);
            if o.relu {
                v = _mm512_max_ps(v, zero);
            }
            _mm512_mask_storeu_ps(o.dst.add(r * f.dst_ld + 16 * p), mask, v);
        }
    }
}

/// The zero-point correction of a tile in registers (see [`Fix`]),
/// without the products known to be zero or alike: with symmetric weights
/// (every `zb` of the tile 0) there is no `rowsum·zb` term, and with one
/// activation zero point for all rows `za·colterm` is one product per panel
/// (a quantized layer has both). The full formula is `2·MR·NP` `vpmulld`,
/// the `vpdpbusd` of two K groups: it shows at short K (convolutions with
/// K = 9..144). The values are the full formula's (the skipped terms are 0
/// or repeated).
#[inline(always)]
unsafe fn correct<const MR: usize, const NP: usize>(s: &mut [[__m512i; NP]; MR], f: &Fix) {
    let zb: [__m512i; NP] =
        std::array::from_fn(|p| _mm512_loadu_si512(f.zb.add(16 * p) as *const _));
    let zb_any = zb
        .iter()
        .fold(0u16, |m, &v| m | _mm512_test_epi32_mask(v, v));
    let za0 = *f.za;
    let same_za = (1..MR).all(|r| *f.za.add(r) == za0);
    if same_za && za0 == 0 && zb_any == 0 {
        return;
    }
    for p in 0..NP {
        let ct = _mm512_loadu_si512(f.colterm.add(16 * p) as *const _);
        let shared = _mm512_mullo_epi32(_mm512_set1_epi32(za0), ct);
        for r in 0..MR {
            let mut t = if same_za {
                shared
            } else {
                _mm512_mullo_epi32(_mm512_set1_epi32(*f.za.add(r)), ct)
            };
            if zb_any != 0 {
                t = _mm512_add_epi32(
                    t,
                    _mm512_mullo_epi32(_mm512_set1_epi32(*f.rowsum.add(r)), zb[p]),
                );
            }
            s[r][p] = _mm512_sub_epi32(s[r][p], t);
        }
    }
}

crate::cpu::isa_fns!(avx512vnni;
    unsafe fn unfold_tf(cv: &ConvRows<'_>, r0: usize, row_len: usize, out: &mut [u8]) {
        cv.write_with(r0, row_len, out, |d, s| {
            let n = d.len().min(s.len());
            // SAFETY: `d` and `s` hold n bytes each.
            unsafe { copy_masked(d.as_mut_ptr(), s.as_ptr(), n) }
        })
    }
);

/// `n` bytes from `s` to `d` in 64-byte moves, the last one masked: one
/// load and one store for each run of an unfold up to 64 bytes (the 21-byte
/// kernel rows of a 3-channel 7×7 stem were two overlapping 16-byte moves
/// each; the 192-byte rows of a 64-channel 3×3 six 32-byte ones).
#[inline(always)]
unsafe fn copy_masked(d: *mut u8, s: *const u8, n: usize) {
    let mut i = 0;
    while i + 64 <= n {
        _mm512_storeu_si512(d.add(i) as *mut _, _mm512_loadu_si512(s.add(i) as *const _));
        i += 64;
    }
    if i < n {
        let m: __mmask64 = u64::MAX >> (64 - (n - i)); // 0 < n - i < 64
        _mm512_mask_storeu_epi8(d.add(i) as *mut _, m, _mm512_maskz_loadu_epi8(m, s.add(i) as *const _));
    }
}

crate::cpu::isa_fns!(avx512vnni;
    unsafe fn copy_sum_tf(src: &[u8], flip: u8, dst: &mut [u8]) -> i32 {
        copy_sum_body(src, flip, dst)
    }
);

/// [`crate::gemm::pack::copy_sum_scalar`] 64 bytes per step, the last step
/// masked (no scalar tail: the rows of a first convolution's unfold are
/// 9 or 27 bytes, and 4096 such rows spent 2/3 of their GEMM in the tail);
/// the sum by `vpsadbw`.
#[inline(always)]
unsafe fn copy_sum_body(src: &[u8], flip: u8, dst: &mut [u8]) -> i32 {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mask = _mm512_set1_epi8(flip as i8);
    let zero = _mm512_setzero_si512();
    let mut acc = _mm512_setzero_si512();
    let mut i = 0;
    while i + 64 <= n {
        let v = _mm512_xor_si512(_mm512_loadu_si512(s.add(i) as *const _), mask);
        _mm512_storeu_si512(d.add(i) as *mut _, v);
        acc = _mm512_add_epi64(acc, _mm512_sad_epu8(v, zero));
        i += 64;
    }
    if n - i <= 16 && n > i {
        // A short row (or tail) in one xmm: the zmm reduction below is a
        // longer dependency chain than the whole copy.
        let m: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
        let v = _mm_maskz_mov_epi8(
            m,
            _mm_xor_si128(
                _mm_maskz_loadu_epi8(m, s.add(i) as *const _),
                _mm512_castsi512_si128(mask),
            ),
        );
        _mm_mask_storeu_epi8(d.add(i) as *mut _, m, v);
        let t = _mm_sad_epu8(v, _mm_setzero_si128());
        let tail = _mm_cvtsi128_si64(t).wrapping_add(_mm_extract_epi64::<1>(t));
        let head = if i > 0 {
            _mm512_reduce_add_epi64(acc)
        } else {
            0
        };
        return head.wrapping_add(tail) as i32;
    }
    if i < n {
        let m: __mmask64 = (1u64 << (n - i)) - 1; // n - i < 64
        let v = _mm512_maskz_mov_epi8(
            m,
            _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, s.add(i) as *const _), mask),
        );
        _mm512_mask_storeu_epi8(d.add(i) as *mut _, m, v);
        acc = _mm512_add_epi64(acc, _mm512_sad_epu8(v, zero));
    }
    _mm512_reduce_add_epi64(acc) as i32
}

crate::cpu::isa_fns!(avx512vnni;
    unsafe fn pack_rows_tf(b: &RowsB<'_>, g0: usize, kcg: usize, jp: usize, np: usize, buf: &mut [i8]) {
        let (n, mask) = (b.n(), _mm512_set1_epi8(b.mask() as i8));
        crate::gemm::b_per_call::pack_rows_with::<4>(b, g0, kcg, jp, np, buf, |src, dst| {
            // SAFETY: `src` holds 3 rows of n bytes plus 64, `dst` 3 panels
            // of 64·kcg bytes plus 64 (`pack_rows_with`'s contract).
            unsafe {
                if b.mask() == 0 {
                    transpose_4x64::<false>(src.as_ptr(), n, mask, dst.as_mut_ptr(), 64 * kcg)
                } else {
                    transpose_4x64::<true>(src.as_ptr(), n, mask, dst.as_mut_ptr(), 64 * kcg)
                }
            }
        })
    }
);

/// One K group (4 rows × 64 columns) of row-major B into 4 packed panels:
/// byte interleaves within 128-bit lanes give each lane 4 columns × 4 k,
/// then a 4 × 4 transpose of the lanes puts the 16 columns of a panel
/// together; uint8 B is XORed with `mask` (`XOR`) on the way. `src` at
/// row 0, rows `n` apart; panel `p` at `dst + p·ps`.
#[inline(always)]
unsafe fn transpose_4x64<const XOR: bool>(
    src: *const u8,
    n: usize,
    mask: __m512i,
    dst: *mut i8,
    ps: usize,
) {
    let r: [__m512i; 4] = std::array::from_fn(|t| {
        let v = _mm512_loadu_si512(src.add(t * n) as *const _);
        if XOR {
            _mm512_xor_si512(v, mask)
        } else {
            v
        }
    });
    let lo01 = _mm512_unpacklo_epi8(r[0], r[1]);
    let hi01 = _mm512_unpackhi_epi8(r[0], r[1]);
    let lo23 = _mm512_unpacklo_epi8(r[2], r[3]);
    let hi23 = _mm512_unpackhi_epi8(r[2], r[3]);
    // Lane L of q_j: columns 16L + 4j .. 16L + 4j + 4, 4 k each.
    let q0 = _mm512_unpacklo_epi16(lo01, lo23);
    let q1 = _mm512_unpackhi_epi16(lo01, lo23);
    let q2 = _mm512_unpacklo_epi16(hi01, hi23);
    let q3 = _mm512_unpackhi_epi16(hi01, hi23);
    // Panel p = lane p of q0, q1, q2, q3.
    let panels = super::x86_avx512vnni_gemv::lanes_4x4([q0, q1, q2, q3]);
    for (p, v) in panels.iter().enumerate() {
        _mm512_storeu_si512(dst.add(p * ps) as *mut _, *v);
    }
}
