//! The per-ISA code of the pruning family: the sampled selection pass
//! (`prune::chunk_band`) compiled for each path (`generic.rs`,
//! `x86_avx2.rs`), chosen by [`crate::cpu::dispatch`]. The loop vectorises
//! 2-4x wider with AVX2 than with the baseline SSE2.

use super::Score;

pub(crate) mod generic;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_avx2;

/// One chunk of the sampled pass: `(scores, eligible, out, base, lo, hi)` ->
/// `(count below, candidates, largest key)`.
#[doc(hidden)]
pub type BandFn<T> = fn(
    &[T],
    Option<&[bool]>,
    &mut [bool],
    usize,
    <T as Score>::K,
    <T as Score>::K,
) -> (usize, Vec<(u64, u32)>, u64);

/// The pruning entry points of one path (see [`crate::cpu::Dispatch`]).
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct Kernels {
    pub(crate) band_f32: BandFn<f32>,
    pub(crate) band_f64: BandFn<f64>,
}

/// `table!(isa)`: the `#[target_feature]` wrappers of the selection pass for
/// `isa` and the module's safe `KERNELS` table of them (handed out by
/// [`crate::cpu::dispatch`] only on CPUs that have `isa`).
macro_rules! table {
    ($isa:ident) => {
        mod tf {
            use $crate::prune::{chunk_band, Score};
            $crate::cpu::isa_fns!($isa;
                pub(super) unsafe fn band<T: Score>(
                    ch: &[T],
                    el: Option<&[bool]>,
                    out: &mut [bool],
                    base: usize,
                    lo: T::K,
                    hi: T::K,
                ) -> (usize, Vec<(u64, u32)>, u64) {
                    chunk_band(ch, el, out, base, lo, hi)
                }
            );
        }

        // SAFETY (both entries): only handed out for a CPU that has `$isa`.
        pub(crate) const KERNELS: $crate::prune::arch::Kernels = $crate::prune::arch::Kernels {
            band_f32: |ch, el, out, base, lo, hi| unsafe { tf::band::<f32>(ch, el, out, base, lo, hi) },
            band_f64: |ch, el, out, base, lo, hi| unsafe { tf::band::<f64>(ch, el, out, base, lo, hi) },
        };
    };
}
pub(crate) use table;
