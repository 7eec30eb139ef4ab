//! The per-ISA code of the int4 family: one tile kernel per path, chosen by
//! [`crate::cpu::dispatch`]. `generic.rs` compiles the portable body below
//! (the reference of the others); `x86_avx2.rs` multiplies with `vpmaddubsw`
//! (exact here, see there); `x86_avx512vnni.rs` with `vpdpbusd`. Every
//! path computes the centred group sums `Q` of `int4/mod.rs`.

use super::{Int4Weight, STEP_BYTES, STEP_K};

pub(crate) mod generic;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_avx512vnni;

/// Runs `$body` with the job's output kind and weight symmetry bound as the
/// const items `SCALED` and `SYM`, so each path's tile is compiled once per
/// mode and the inner loops carry no branch on them.
macro_rules! by_mode {
    ($j:expr, $body:expr) => {{
        let scaled = matches!($j.out, $crate::int4::arch::Out::Scaled(..));
        match (scaled, $j.w.symmetric) {
            (true, true) => {
                const SCALED: bool = true;
                const SYM: bool = true;
                $body
            }
            (true, false) => {
                const SCALED: bool = true;
                const SYM: bool = false;
                $body
            }
            (false, true) => {
                const SCALED: bool = false;
                const SYM: bool = true;
                $body
            }
            (false, false) => {
                const SCALED: bool = false;
                const SYM: bool = false;
                $body
            }
        }
    }};
}
#[cfg(target_arch = "x86_64")]
pub(crate) use by_mode;

/// Where a tile's results go. `Groups(p, ld)`: `Q_g` of row `r`, tile column
/// `c` (counted from the job's first column) to `p[r·ld + c·ng + g]`.
/// (`Q_g`, the centred sums of `int4/mod.rs`). `Scaled(p, ld)`: `Σ_g f32(Q_g)·s` to `p[r·ld + c]`. Only columns `< n` are
/// written.
#[derive(Clone, Copy)]
pub(crate) enum Out {
    Groups(*mut i32, usize),
    Scaled(*mut f32, usize),
}

/// One kernel call: `rows` (≤ 8) rows of padded, centred activations `x`
/// (`rows × kp`, bytes `x_q ^ 0x80`) and their group sums `xsum` (`Σ x'`, `rows × ng`), times column
/// blocks `blk..blk + nb` (`nb ≤ 8`) of `w`.
pub(crate) struct Job<'a> {
    pub(crate) w: &'a Int4Weight,
    pub(crate) blk: usize,
    pub(crate) nb: usize,
    pub(crate) rows: usize,
    pub(crate) x: &'a [u8],
    pub(crate) xsum: &'a [i32],
    pub(crate) out: Out,
}

/// `unsafe`: the caller promises `blk + nb ≤ nblk`, `x`/`xsum` of `rows`
/// rows, and an `out` valid for every element the job writes, which no
/// other thread touches meanwhile.
pub(crate) type TileFn = unsafe fn(&Job<'_>);

/// The int4 entry points of one path (see [`crate::cpu::Dispatch`]).
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct Kernels {
    pub(crate) tile: TileFn,
}

/// Columns of block `b` that exist (`< n`).
#[inline(always)]
pub(crate) fn valid_cols(w: &Int4Weight, b: usize) -> usize {
    super::BLOCK_N.min(w.n - b * super::BLOCK_N)
}

/// The bytes of step `s` of block `b`.
#[inline(always)]
pub(crate) fn step(w: &Int4Weight, b: usize, s: usize) -> &[u8] {
    let i = (b * (w.kp / STEP_K) + s) * STEP_BYTES;
    &w.data[i..i + STEP_BYTES]
}

/// Writes the 16 results `v` of block `bi` (of the job), row `r`, group `g`.
///
/// # Safety
/// As for [`TileFn`].
#[inline(always)]
pub(crate) unsafe fn put_groups(
    j: &Job<'_>,
    p: *mut i32,
    ld: usize,
    r: usize,
    bi: usize,
    g: usize,
    v: &[i32; 16],
) {
    let ng = j.w.ng;
    let base = p.add(r * ld + bi * super::BLOCK_N * ng + g);
    for (c, &x) in v.iter().enumerate().take(valid_cols(j.w, j.blk + bi)) {
        *base.add(c * ng) = x;
    }
}

/// Writes the 16 float results `v` of block `bi`, row `r`.
///
/// # Safety
/// As for [`TileFn`].
#[inline(always)]
pub(crate) unsafe fn put_scaled(
    j: &Job<'_>,
    p: *mut f32,
    ld: usize,
    r: usize,
    bi: usize,
    v: &[f32; 16],
) {
    let base = p.add(r * ld + bi * super::BLOCK_N);
    let n = valid_cols(j.w, j.blk + bi);
    std::ptr::copy_nonoverlapping(v.as_ptr(), base, n);
}

/// The portable tile: the reference every path must match bit for bit.
///
/// # Safety
/// As for [`TileFn`].
#[inline(always)]
pub(crate) unsafe fn tile_body(j: &Job<'_>) {
    let w = j.w;
    let ng = w.ng;
    for r in 0..j.rows {
        let xr = &j.x[r * w.kp..(r + 1) * w.kp];
        for bi in 0..j.nb {
            let b = j.blk + bi;
            let mut f = [0.0f32; 16];
            for g in 0..ng {
                let (s0, s1) = w.group_steps(g);
                let mut d = [0i32; 16];
                for s in s0..s1 {
                    let bytes = step(w, b, s);
                    let xs = &xr[STEP_K * s..STEP_K * s + STEP_K];
                    for (c, dc) in d.iter_mut().enumerate() {
                        for t in 0..4 {
                            let v = bytes[4 * c + t];
                            // x' = x_q − 128 is stored as the byte x_q ^ 0x80.
                            *dc += i32::from(xs[t] as i8) * i32::from(v & 15)
                                + i32::from(xs[4 + t] as i8) * i32::from(v >> 4);
                        }
                    }
                }
                let pi = (b * ng + g) * 16;
                let xsg = j.xsum[r * ng + g];
                for (c, dc) in d.iter_mut().enumerate() {
                    *dc = dc.wrapping_sub(i32::from(w.zp_blk[pi + c]).wrapping_mul(xsg));
                }
                match j.out {
                    Out::Groups(p, ld) => put_groups(j, p, ld, r, bi, g, &d),
                    Out::Scaled(..) => {
                        for c in 0..16 {
                            f[c] += d[c] as f32 * w.scale_blk[pi + c];
                        }
                    }
                }
            }
            if let Out::Scaled(p, ld) = j.out {
                put_scaled(j, p, ld, r, bi, &f);
            }
        }
    }
}
