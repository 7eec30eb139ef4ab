//! AVX-512 VNNI micro-kernel: `vpdpbusd` (u8 × s8, four products summed into
//! each i32 lane, wrapping, never saturating). One zmm holds one 64-byte
//! K-group of a packed B panel (16 columns × 4 k); four A bytes of a row are
//! broadcast to all lanes. Tile: 6 rows × 4 panels (64 columns) = 24 zmm
//! accumulators + 4 B registers + 1 broadcast, within the 32 zmm registers.
//! A single row (GEMV) uses up to 8 panels: 8 independent accumulator chains.

#![cfg(target_arch = "x86_64")]
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use std::arch::x86_64::*;

use crate::gemm::kernel::{kernel_methods, Kernel, Tile};

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
        copy_sum: super::x86_avx2::copy_sum_avx2
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
