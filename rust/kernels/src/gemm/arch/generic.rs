//! Portable micro-kernel over the shared packed layout: the reference path and
//! the path on CPUs without AVX2. Plain Rust the compiler can auto-vectorise:
//! each 64-byte group of B is widened once to i32 and reused by every row of
//! the tile.

#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use crate::gemm::kernel::{kernel_methods, Kernel, Tile};
use crate::gemm::pack::{self, NR};

super::table!(Generic, pack::pack_panels);

/// Portable kernel: 4 rows × 1 panel (16 columns) per tile.
pub(crate) struct Generic;

impl Kernel for Generic {
    const MR: usize = 4;
    const NP: usize = 1;
    const NP_ROW: usize = 1;
    type AElem = u8;

    kernel_methods!(
        tile: tile_body,
        shapes: [(1, 1), (2, 1), (3, 1), (4, 1)]
    );
}

#[inline(always)]
unsafe fn tile_body<const MR: usize, const NP: usize>(t: &Tile<'_, u8>) {
    let (kg, a, lda, b, _bs, acc, ld, load, fix) = t.parts(); // one panel per tile
                                                              // SAFETY (whole body): the driver passes `4 * kg` readable elements per
                                                              // row of A, `64 * kg` bytes of B and a tile-sized `acc`.
    let rows: [&[u8]; MR] =
        std::array::from_fn(|r| std::slice::from_raw_parts(a.add(r * lda), kg * 4));
    let panel = std::slice::from_raw_parts(b, kg * 64);
    // 64 i32 lanes per row: lane 4c+t sums a[k=4g+t] · b[4g+t, c]; the four
    // lanes of a column are added at the end. Elementwise, so it vectorises.
    let mut s = [[0i32; 64]; MR];
    for (g, grp) in panel.chunks_exact(64).enumerate() {
        let bw: [i16; 64] = std::array::from_fn(|i| grp[i] as i16);
        for r in 0..MR {
            let av = &rows[r][4 * g..4 * g + 4];
            let aw: [i16; 64] = std::array::from_fn(|i| av[i & 3] as i16);
            for i in 0..64 {
                // |a·b| <= 255 * 128; the running sum wraps.
                s[r][i] = s[r][i].wrapping_add(aw[i] as i32 * bw[i] as i32);
            }
        }
    }
    for (r, sr) in s.iter().enumerate() {
        let mut cols = [0i32; 16];
        if load {
            std::ptr::copy_nonoverlapping(acc.add(r * ld), cols.as_mut_ptr(), 16);
        }
        for (c, q) in cols.iter_mut().zip(sr.chunks_exact(4)) {
            *c = c.wrapping_add(
                q[0].wrapping_add(q[1])
                    .wrapping_add(q[2])
                    .wrapping_add(q[3]),
            );
        }
        if let Some(f) = fix {
            let (za, rs) = (*f.za.add(r), *f.rowsum.add(r));
            for (j, c) in cols.iter_mut().enumerate() {
                let t = za
                    .wrapping_mul(*f.colterm.add(j))
                    .wrapping_add(rs.wrapping_mul(*f.zb.add(j)));
                *c = c.wrapping_sub(t);
            }
        }
        std::ptr::copy_nonoverlapping(cols.as_ptr(), acc.add(r * ld), 16);
    }
}

/// Interleaves 4 rows of 16 bytes into 16 columns × 4 k (one packed group),
/// flipping the sign bit with `mask`.
#[inline]
pub(crate) fn transpose_4x16(rows: [&[u8]; 4], mask: u8, grp: &mut [i8]) {
    debug_assert!(rows.iter().all(|r| r.len() == NR) && grp.len() == 64);
    // SSE2 is part of the x86-64 baseline: this is portable code there.
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of x86-64; every row has 16 bytes and grp 64.
        unsafe {
            let m = _mm_set1_epi8(mask as i8);
            let r: [__m128i; 4] = std::array::from_fn(|t| {
                _mm_xor_si128(_mm_loadu_si128(rows[t].as_ptr() as *const __m128i), m)
            });
            let lo01 = _mm_unpacklo_epi8(r[0], r[1]);
            let hi01 = _mm_unpackhi_epi8(r[0], r[1]);
            let lo23 = _mm_unpacklo_epi8(r[2], r[3]);
            let hi23 = _mm_unpackhi_epi8(r[2], r[3]);
            let o = grp.as_mut_ptr() as *mut __m128i;
            _mm_storeu_si128(o, _mm_unpacklo_epi16(lo01, lo23));
            _mm_storeu_si128(o.add(1), _mm_unpackhi_epi16(lo01, lo23));
            _mm_storeu_si128(o.add(2), _mm_unpacklo_epi16(hi01, hi23));
            _mm_storeu_si128(o.add(3), _mm_unpackhi_epi16(hi01, hi23));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for c in 0..NR {
        for t in 0..4 {
            grp[4 * c + t] = (rows[t][c] ^ mask) as i8;
        }
    }
}
