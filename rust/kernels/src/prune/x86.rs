//! x86-64 path of the selection pass: the generic body compiled with AVX2.

use super::{chunk_band, Score};

#[target_feature(enable = "avx2")]
unsafe fn band_avx2<T: Score>(
    ch: &[T],
    el: Option<&[bool]>,
    out: &mut [bool],
    base: usize,
    lo: T::K,
    hi: T::K,
) -> (usize, Vec<(u64, u32)>, u64) {
    chunk_band(ch, el, out, base, lo, hi)
}

/// Safe entry: only handed out by `band_kernel` when the active ISA has AVX2.
pub(super) fn chunk_band_avx2<T: Score>(
    ch: &[T],
    el: Option<&[bool]>,
    out: &mut [bool],
    base: usize,
    lo: T::K,
    hi: T::K,
) -> (usize, Vec<(u64, u32)>, u64) {
    // SAFETY: `band_kernel` returns this function only when `isa::active()`
    // is AVX2 or better, which `isa` checked against the CPU.
    unsafe { band_avx2(ch, el, out, base, lo, hi) }
}
