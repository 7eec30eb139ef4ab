//! The AVX-512 VNNI path of the int4 family: one 64-byte step of a block is
//! unpacked in registers into two `vpdpbusd` operands of 16 columns × 4
//! values of K: `and 0x0F` (the low nibbles, `u`) and `and 0xF0` (the high
//! ones as `16·u`, no shift). The weights are the unsigned operand and the
//! centred activations `x' = x_q − 128` the signed one, broadcast 4 at a
//! time. `vpdpbusd` sums four u8 × s8 products into int32 without
//! saturation, so both accumulators are exact: the high one is a multiple of
//! 16 (`|·| ≤ 240·128·G < 2^31` for `G ≤ MAX_GROUP_LEN`), shifted back by 4
//! (exactly) when the group ends.

#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::{put_groups, put_scaled, Job, Out};
use crate::int4::STEP_K;

pub(crate) const KERNELS: super::Kernels = super::Kernels { tile: tile_tf };

crate::cpu::isa_fns!(avx512vnni;
    unsafe fn tile_tf(j: &Job<'_>) {
        tile(j)
    }
);

/// Steps per group from which one row takes 8 blocks at a time (groups of
/// 128 inputs and longer; see [`tile`]).
const LONG_GROUP_STEPS: usize = 16;

/// One row × 8 blocks of 16 columns or 2 rows × 2 blocks with the low and
/// high nibbles in separate accumulators (no shift: the high one holds
/// `16·u`), or 3..4 rows × 4 blocks, 5..8 rows × 2 blocks with the high
/// nibbles shifted down and one accumulator each (the float sums then live
/// in memory: they are touched once a group). At most 16 int32
/// accumulators, no spills; more rows per unpacked step pay for the
/// unpacking, which shares the vector pipes with `vpdpbusd`. One row is
/// bound by how fast the weight streams in: 8 blocks read 8 runs side by
/// side (as the int8 GEMV's 8 panels), and 1×4096×4096 on 2 threads ran
/// 2-8% faster than with 4 (`examples/int4_time`, loaded Zen 5); but with
/// short groups the per-group sums of 8 blocks cost more than that (groups
/// of 32: ~9% slower on one thread), so those take 4.
#[inline(always)]
unsafe fn tile(j: &Job<'_>) {
    macro_rules! go {
        ($r:literal, $nb:literal) => {
            super::by_mode!(j, blocks::<$r, $nb, SCALED, SYM, { $r <= 2 }>(j))
        };
    }
    match j.rows {
        1 if j.w.gsteps >= LONG_GROUP_STEPS => go!(1, 8),
        1 => go!(1, 4),
        2 => go!(2, 2),
        3 => go!(3, 4),
        4 => go!(4, 4),
        5 => go!(5, 2),
        6 => go!(6, 2),
        7 => go!(7, 2),
        _ => go!(8, 2),
    }
}

/// Runs the job's blocks `NB` at a time, the rest one by one.
#[inline(always)]
unsafe fn blocks<
    const R: usize,
    const NB: usize,
    const SCALED: bool,
    const SYM: bool,
    const SPLIT: bool,
>(
    j: &Job<'_>,
) {
    let mut bi = 0;
    while bi + NB <= j.nb {
        micro::<R, NB, SCALED, SYM, SPLIT>(j, bi);
        bi += NB;
    }
    // A row's last run of 4 blocks (a thread's share of one row ends on 4).
    if NB > 4 && bi + 4 <= j.nb {
        micro::<R, 4, SCALED, SYM, SPLIT>(j, bi);
        bi += 4;
    }
    while bi < j.nb {
        micro::<R, 1, SCALED, SYM, SPLIT>(j, bi);
        bi += 1;
    }
}

/// `R` rows × `NB` blocks starting at the job's block `bi0`.
#[inline(always)]
unsafe fn micro<
    const R: usize,
    const NB: usize,
    const SCALED: bool,
    const SYM: bool,
    const SPLIT: bool,
>(
    j: &Job<'_>,
    bi0: usize,
) {
    let w = j.w;
    let (kp, ng, ksteps) = (w.kp, w.ng, w.kp / STEP_K);
    let lmask = _mm512_set1_epi8(0x0F);
    let hmask = _mm512_set1_epi8(0xF0u8 as i8);
    let data = w.data.as_ptr();
    let x = j.x.as_ptr();
    let mut facc = [[_mm512_setzero_ps(); NB]; R];
    let mut fmem = [[[0.0f32; 16]; NB]; R];
    for g in 0..ng {
        let (s0, s1) = w.group_steps(g);
        let mut alo = [[_mm512_setzero_si512(); NB]; R];
        let mut ahi = [[_mm512_setzero_si512(); NB]; R];
        for s in s0..s1 {
            let mut lo = [_mm512_setzero_si512(); NB];
            let mut hi = [_mm512_setzero_si512(); NB];
            for bi in 0..NB {
                let p = data.add(((j.blk + bi0 + bi) * ksteps + s) * 64);
                let v = _mm512_loadu_si512(p as *const _);
                lo[bi] = _mm512_and_si512(v, lmask);
                hi[bi] = if SPLIT {
                    _mm512_and_si512(v, hmask)
                } else {
                    _mm512_and_si512(_mm512_srli_epi16::<4>(v), lmask)
                };
            }
            for r in 0..R {
                let xp = x.add(r * kp + STEP_K * s);
                let xl = _mm512_set1_epi32(std::ptr::read_unaligned(xp as *const i32));
                let xh = _mm512_set1_epi32(std::ptr::read_unaligned(xp.add(4) as *const i32));
                for bi in 0..NB {
                    alo[r][bi] = _mm512_dpbusd_epi32(alo[r][bi], lo[bi], xl);
                    if SPLIT {
                        ahi[r][bi] = _mm512_dpbusd_epi32(ahi[r][bi], hi[bi], xh);
                    } else {
                        alo[r][bi] = _mm512_dpbusd_epi32(alo[r][bi], hi[bi], xh);
                    }
                }
            }
        }
        let mut acc = [[_mm512_setzero_si512(); NB]; R];
        for r in 0..R {
            for bi in 0..NB {
                acc[r][bi] = if SPLIT {
                    _mm512_add_epi32(alo[r][bi], _mm512_srai_epi32::<4>(ahi[r][bi]))
                } else {
                    alo[r][bi]
                };
            }
        }
        for bi in 0..NB {
            let pi = ((j.blk + bi0 + bi) * ng + g) * 16;
            let z = if SYM {
                _mm512_setzero_si512()
            } else {
                _mm512_cvtepu8_epi32(_mm_loadu_si128(w.zp_blk.as_ptr().add(pi) as *const _))
            };
            let sc = if SCALED {
                _mm512_loadu_ps(w.scale_blk.as_ptr().add(pi))
            } else {
                _mm512_setzero_ps()
            };
            for r in 0..R {
                let xsg = *j.xsum.get_unchecked(r * ng + g);
                // D - z·Σx (z = 8 when symmetric: a shift of the scalar sum).
                let d = if SYM {
                    _mm512_sub_epi32(acc[r][bi], _mm512_set1_epi32(xsg.wrapping_mul(8)))
                } else {
                    _mm512_sub_epi32(acc[r][bi], _mm512_mullo_epi32(z, _mm512_set1_epi32(xsg)))
                };
                if SCALED && SPLIT {
                    facc[r][bi] =
                        _mm512_add_ps(facc[r][bi], _mm512_mul_ps(_mm512_cvtepi32_ps(d), sc));
                } else if SCALED {
                    let fp = fmem[r][bi].as_mut_ptr();
                    let prod = _mm512_mul_ps(_mm512_cvtepi32_ps(d), sc);
                    _mm512_storeu_ps(fp, _mm512_add_ps(_mm512_loadu_ps(fp), prod));
                } else if let Out::Groups(p, ld) = j.out {
                    let mut v = [0i32; 16];
                    _mm512_storeu_si512(v.as_mut_ptr() as *mut _, d);
                    put_groups(j, p, ld, r, bi0 + bi, g, &v);
                }
            }
        }
    }
    if let (true, Out::Scaled(p, ld)) = (SCALED, j.out) {
        for r in 0..R {
            for bi in 0..NB {
                let mut v = fmem[r][bi];
                if SPLIT {
                    _mm512_storeu_ps(v.as_mut_ptr(), facc[r][bi]);
                }
                put_scaled(j, p, ld, r, bi0 + bi, &v);
            }
        }
    }
}
