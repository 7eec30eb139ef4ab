//! The x86-64 AVX2 + FMA path of the sparse family: the generic bodies
//! compiled for it (the compiler vectorises them over the batch), and an
//! exact AVX2 tile for the int8 output panels: the weights sign-extended to
//! i16 and `vpmaddwd` with the activations (u8 → i16): products of at most
//! 255 · 128 summed in pairs into int32 never saturate (`vpmaddubsw` would).

use std::arch::x86_64::*;
use std::ops::Range;

use crate::sparse::panel::{fold_store, staged, PanelCall, STAGE_COLS, TILE_ROWS};

mod bodies {
    super::super::table!(avx2, true);
}

pub(crate) const KERNELS: super::Kernels = super::Kernels {
    panel_i8: panel_avx2_tf,
    ..bodies::KERNELS
};

/// `M` batch rows × one panel of `R` outputs. Register `i` of a row holds
/// outputs `4i..4i+4`, two pair sums each; the pairs are added at the end.
#[inline(always)]
unsafe fn panel_tile<const R: usize, const M: usize>(
    c: &PanelCall<'_>,
    p: usize,
    b0: usize,
    t0: usize,
    mt: usize,
    dst: *mut i32,
) {
    let w = c.w;
    let nw = R / 4;
    let (j0, j1) = (w.indptr[p] as usize, w.indptr[p + 1] as usize);
    let (gp, vp) = (w.group.as_ptr(), w.values.as_ptr());
    // The tile's `Xp` (`mt` rows from `b0`), rows `t0..t0+M` of it.
    let xb = c.xp.as_ptr().add(b0 * c.kp + 4 * t0);
    let stride = mt * 4;
    let mut acc = [[_mm256_setzero_si256(); 4]; M];
    for j in j0..j1 {
        let xs = xb.add(*gp.add(j) as usize * stride);
        let v = vp.add(j * R * 4);
        let mut wv = [_mm256_setzero_si256(); 4];
        for (i, wi) in wv.iter_mut().enumerate().take(nw) {
            *wi = _mm256_cvtepi8_epi16(_mm_loadu_si128(v.add(16 * i) as *const _));
        }
        for (t, a) in acc.iter_mut().enumerate() {
            let x4 = _mm_cvtsi32_si128((xs.add(4 * t) as *const i32).read_unaligned());
            let xv = _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(x4));
            for i in 0..nw {
                a[i] = _mm256_add_epi32(a[i], _mm256_madd_epi16(wv[i], xv));
            }
        }
    }
    for (t, a) in acc.iter().enumerate() {
        let mut pairs = [0i32; 32];
        for i in 0..nw {
            _mm256_storeu_si256(pairs.as_mut_ptr().add(8 * i) as *mut _, a[i]);
        }
        let mut row = [0i32; R];
        for (o, v) in row.iter_mut().enumerate() {
            *v = pairs[2 * o].wrapping_add(pairs[2 * o + 1]);
        }
        fold_store::<R>(c, p, b0 + t0 + t, &row, dst.add((t0 + t) * STAGE_COLS));
    }
}

#[inline(always)]
unsafe fn panel_rows<const R: usize>(c: &PanelCall<'_>, panels: Range<usize>) {
    let mut b0 = 0;
    while b0 < c.batch {
        let mt = TILE_ROWS.min(c.batch - b0);
        staged!(c, panels.clone(), b0, mt, R, |p, dst| {
            let mut t0 = 0;
            // Two rows at a time: 4 accumulators each, 4 weights, within 16 ymm.
            while t0 + 2 <= mt {
                panel_tile::<R, 2>(c, p, b0, t0, mt, dst);
                t0 += 2;
            }
            if t0 < mt {
                panel_tile::<R, 1>(c, p, b0, t0, mt, dst);
            }
        });
        b0 += mt;
    }
}

crate::cpu::isa_fns!(avx2;
    unsafe fn panel_avx2_tf(c: &PanelCall<'_>, panels: Range<usize>) {
        match c.w.r {
            4 => panel_rows::<4>(c, panels),
            8 => panel_rows::<8>(c, panels),
            _ => panel_rows::<16>(c, panels),
        }
    }
);
