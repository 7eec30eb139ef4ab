//! The micro-kernel contract every ISA path implements (one zero-sized struct
//! per ISA, as in bluss/matrixmultiply's `GemmKernel`).

/// A micro-kernel: computes a tile of `mr` rows × `np` panels (16 columns
/// each) of `Σ_k Â[i,k]·B̂[k,j]` in wrapping `i32` over the packed layouts.
pub(crate) trait Kernel {
    /// Most rows per tile.
    const MR: usize;
    /// Most 16-column panels per tile.
    const NP: usize;
    /// Most panels per tile when the tile has a single row (GEMV: more
    /// independent accumulators hide the multiply latency).
    const NP_ROW: usize;
    /// Element of packed A rows (`u8` for `vpdpbusd`, `i16` for `vpmaddwd`).
    type AElem: Copy + Default + Send + Sync;

    /// Converts one packed row of Â (u8, padded to a multiple of 4) to `AElem`s.
    fn widen(src: &[u8], dst: &mut [Self::AElem]);

    /// Writes the tile to `acc[r * ld + 16 * p + c]` (r < mr, p < np, c < 16),
    /// adding to the values already there when `load` (K blocking).
    ///
    /// # Safety
    /// `1 <= mr <= MR`, `1 <= np <= NP` (`NP_ROW` when `mr == 1`); `a` points at `mr` rows of `4 * kg`
    /// elements, `lda` apart; `b` at `np` panels of `64 * kg` bytes, `bs`
    /// apart; `acc` is writable for `mr` rows of `16 * np` values, `ld` apart;
    /// and the CPU supports the kernel's ISA.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(mr: usize, np: usize, kg: usize, a: *const Self::AElem, lda: usize, b: *const i8, bs: usize, acc: *mut i32, ld: usize, load: bool);
}

/// Expands `match (mr, np)` over every const-generic instantiation of a tile function.
macro_rules! tile_match {
    ($mr:expr, $np:expr, $f:ident, $args:tt, [$(($m:literal, $p:literal)),*]) => {
        match ($mr, $np) {
            $(($m, $p) => $f::<$m, $p> $args,)*
            _ => unreachable!("tile shape out of range"),
        }
    };
}
pub(crate) use tile_match;
