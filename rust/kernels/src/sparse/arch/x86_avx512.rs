//! The x86-64 AVX-512 F/BW/VL path of the sparse family: the generic bodies
//! compiled for it (the int8 4-deep dot included, auto-vectorised), and the
//! float products' 16 × 16 transposing copy in register shuffles.

use std::arch::x86_64::*;

mod bodies {
    super::super::table!(avx512, true);
}

pub(crate) const KERNELS: super::Kernels = super::Kernels {
    tile_f32: tile_f32_avx512_tf,
    ..bodies::KERNELS
};

crate::cpu::isa_fns!(avx512;
    /// [`crate::sparse::float::tile_f32_body`] in zmm: 16 row loads, the
    /// 4-stage unpack / shuffle transpose, 16 row stores.
    unsafe fn tile_f32_avx512_tf(s: *const f32, ss: usize, d: *mut f32, ds: usize, b: *const f32, relu: bool) {
        let mut r = [_mm512_setzero_ps(); 16];
        for (j, v) in r.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(s.add(j * ss));
        }
        // Pairs of rows interleaved by 32-bit, then 64-bit lanes: each 128-bit
        // lane of t[4q + u] holds rows 4q..4q+4 of column 4l + u.
        let mut t = [_mm512_setzero_ps(); 16];
        for q in 0..4 {
            let (a, bb, c, e) = (r[4 * q], r[4 * q + 1], r[4 * q + 2], r[4 * q + 3]);
            let (lo0, hi0) = (_mm512_unpacklo_ps(a, bb), _mm512_unpackhi_ps(a, bb));
            let (lo1, hi1) = (_mm512_unpacklo_ps(c, e), _mm512_unpackhi_ps(c, e));
            let (lo0, hi0) = (_mm512_castps_pd(lo0), _mm512_castps_pd(hi0));
            let (lo1, hi1) = (_mm512_castps_pd(lo1), _mm512_castps_pd(hi1));
            t[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo0, lo1));
            t[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo0, lo1));
            t[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi0, hi1));
            t[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi0, hi1));
        }
        // Then the 128-bit lanes: column 4l + u gathers lane l of t[u], t[4 + u], t[8 + u], t[12 + u].
        let zero = _mm512_setzero_ps();
        for u in 0..4 {
            let ab_lo = _mm512_shuffle_f32x4::<0x44>(t[u], t[4 + u]); // lanes 0,1 of a | 0,1 of b
            let ab_hi = _mm512_shuffle_f32x4::<0xee>(t[u], t[4 + u]); // lanes 2,3 of a | 2,3 of b
            let cd_lo = _mm512_shuffle_f32x4::<0x44>(t[8 + u], t[12 + u]);
            let cd_hi = _mm512_shuffle_f32x4::<0xee>(t[8 + u], t[12 + u]);
            let cols = [
                _mm512_shuffle_f32x4::<0x88>(ab_lo, cd_lo), // lane 0 of each
                _mm512_shuffle_f32x4::<0xdd>(ab_lo, cd_lo), // lane 1
                _mm512_shuffle_f32x4::<0x88>(ab_hi, cd_hi), // lane 2
                _mm512_shuffle_f32x4::<0xdd>(ab_hi, cd_hi), // lane 3
            ];
            for (l, mut v) in cols.into_iter().enumerate() {
                if !b.is_null() {
                    v = _mm512_add_ps(v, _mm512_loadu_ps(b));
                }
                if relu {
                    // max(v, 0) is 0 for a NaN `v`, as f32::max is.
                    v = _mm512_max_ps(v, zero);
                }
                _mm512_storeu_ps(d.add((4 * l + u) * ds), v);
            }
        }
    }
);
