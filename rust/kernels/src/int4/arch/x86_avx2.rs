//! The AVX2 path of the int4 family (also taken by the AVX-512 path without
//! VNNI). A 64-byte step of a block is two ymm halves (columns 0..7 and
//! 8..15), each unpacked into low and high nibbles.
//!
//! Why `vpmaddubsw` is exact here: it multiplies u8 (the codes,
//! 0 ≤ u ≤ 15) by s8 (the centred activations, −128 ≤ x' ≤ 127) and adds
//! adjacent pairs into int16 with saturation. One pair is at most
//! 2·15·128 = 3840 in magnitude; the low-nibble and high-nibble results are
//! added in int16 before widening, at most 4·15·128 = 7680 ≤ 32767, so
//! nothing saturates or wraps. `vpmaddwd` by ones then sums pairs of those
//! into int32, exactly. (The general u8 × s8 case saturates, which is why
//! the int8 GEMM does not use it.) The tests run the extremes: x_q = 0 and
//! 255 (x' = −128, 127) with u = 15 and u = 0 everywhere.

#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::{put_groups, put_scaled, Job, Out};
use crate::int4::STEP_K;

pub(crate) const KERNELS: super::Kernels = super::Kernels { tile: tile_tf };

crate::cpu::isa_fns!(avx2;
    unsafe fn tile_tf(j: &Job<'_>) {
        tile(j)
    }
);

/// Rows one or two at a time: 1 row × 2 blocks or 2 rows × 1 block, 4 int32
/// and 4 float ymm accumulators.
#[inline(always)]
unsafe fn tile(j: &Job<'_>) {
    macro_rules! go {
        ($r:literal, $nb:literal, $r0:expr) => {
            super::by_mode!(j, blocks::<$r, $nb, SCALED, SYM>(j, $r0))
        };
    }
    let mut r0 = 0;
    while r0 + 2 <= j.rows {
        go!(2, 1, r0);
        r0 += 2;
    }
    if r0 < j.rows {
        go!(1, 2, r0);
    }
}

#[inline(always)]
unsafe fn blocks<const R: usize, const NB: usize, const SCALED: bool, const SYM: bool>(
    j: &Job<'_>,
    r0: usize,
) {
    let mut bi = 0;
    while bi + NB <= j.nb {
        micro::<R, NB, SCALED, SYM>(j, r0, bi);
        bi += NB;
    }
    while bi < j.nb {
        micro::<R, 1, SCALED, SYM>(j, r0, bi);
        bi += 1;
    }
}

/// Rows `r0..r0 + R` × blocks `bi0..bi0 + NB` of the job.
#[inline(always)]
unsafe fn micro<const R: usize, const NB: usize, const SCALED: bool, const SYM: bool>(
    j: &Job<'_>,
    r0: usize,
    bi0: usize,
) {
    let w = j.w;
    let (kp, ng, ksteps) = (w.kp, w.ng, w.kp / STEP_K);
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let data = w.data.as_ptr();
    let x = j.x.as_ptr();
    let mut facc = [[[_mm256_setzero_ps(); 2]; NB]; R];
    for g in 0..ng {
        let (s0, s1) = w.group_steps(g);
        let mut acc = [[[_mm256_setzero_si256(); 2]; NB]; R];
        for s in s0..s1 {
            let mut lo = [[_mm256_setzero_si256(); 2]; NB];
            let mut hi = [[_mm256_setzero_si256(); 2]; NB];
            for bi in 0..NB {
                let p = data.add(((j.blk + bi0 + bi) * ksteps + s) * 64);
                for h in 0..2 {
                    let v = _mm256_loadu_si256(p.add(32 * h) as *const _);
                    lo[bi][h] = _mm256_and_si256(v, mask);
                    hi[bi][h] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                }
            }
            for r in 0..R {
                let xp = x.add((r0 + r) * kp + STEP_K * s);
                let xl = _mm256_set1_epi32(std::ptr::read_unaligned(xp as *const i32));
                let xh = _mm256_set1_epi32(std::ptr::read_unaligned(xp.add(4) as *const i32));
                for bi in 0..NB {
                    for h in 0..2 {
                        // |·| ≤ 7680 per int16 lane: exact (module doc).
                        let p16 = _mm256_add_epi16(
                            _mm256_maddubs_epi16(lo[bi][h], xl),
                            _mm256_maddubs_epi16(hi[bi][h], xh),
                        );
                        acc[r][bi][h] =
                            _mm256_add_epi32(acc[r][bi][h], _mm256_madd_epi16(p16, ones));
                    }
                }
            }
        }
        for bi in 0..NB {
            let pi = ((j.blk + bi0 + bi) * ng + g) * 16;
            for r in 0..R {
                let xsg = *j.xsum.get_unchecked((r0 + r) * ng + g);
                let mut d = [[0i32; 8]; 2];
                for h in 0..2 {
                    let dv = if SYM {
                        _mm256_sub_epi32(acc[r][bi][h], _mm256_set1_epi32(xsg.wrapping_mul(8)))
                    } else {
                        let z = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                            w.zp_blk.as_ptr().add(pi + 8 * h) as *const _,
                        ));
                        _mm256_sub_epi32(
                            acc[r][bi][h],
                            _mm256_mullo_epi32(z, _mm256_set1_epi32(xsg)),
                        )
                    };
                    if SCALED {
                        let sc = _mm256_loadu_ps(w.scale_blk.as_ptr().add(pi + 8 * h));
                        facc[r][bi][h] = _mm256_add_ps(
                            facc[r][bi][h],
                            _mm256_mul_ps(_mm256_cvtepi32_ps(dv), sc),
                        );
                    } else {
                        _mm256_storeu_si256(d[h].as_mut_ptr() as *mut _, dv);
                    }
                }
                if let (false, Out::Groups(p, ld)) = (SCALED, j.out) {
                    let v: [i32; 16] = std::mem::transmute(d);
                    put_groups(j, p, ld, r0 + r, bi0 + bi, g, &v);
                }
            }
        }
    }
    if let (true, Out::Scaled(p, ld)) = (SCALED, j.out) {
        for r in 0..R {
            for bi in 0..NB {
                let mut v = [0.0f32; 16];
                _mm256_storeu_ps(v.as_mut_ptr(), facc[r][bi][0]);
                _mm256_storeu_ps(v.as_mut_ptr().add(8), facc[r][bi][1]);
                put_scaled(j, p, ld, r0 + r, bi0 + bi, &v);
            }
        }
    }
}
