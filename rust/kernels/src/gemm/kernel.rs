//! The micro-kernel contract every ISA path implements (one zero-sized struct
//! per ISA, as in bluss/matrixmultiply's `GemmKernel`).

/// A micro-kernel: computes a tile of `mr` rows × `np` panels (16 columns
/// each) of `Σ_k Â[i,k]·B̂[k,j]` in wrapping `i32` over the packed layouts.
#[allow(clippy::too_many_arguments)]
pub(crate) trait Kernel {
    /// Most rows per tile.
    const MR: usize;
    /// Most 16-column panels per tile.
    const NP: usize;
    /// Most panels per tile when the tile has a single row (GEMV: more
    /// independent accumulators hide the multiply latency).
    const NP_ROW: usize;
    /// Whether the kernel can write a corrected tile straight to an `i32`
    /// output (`Fix::dst`) or through the plain float step to an `f32` one
    /// (`Fix::float`).
    const DIRECT: bool = false;
    /// Element of packed A rows (`u8` for `vpdpbusd`, `i16` for `vpmaddwd`).
    type AElem: super::pack::PlainElem;

    /// `dst[i] = src[i] ^ flip`, returning the (wrapping) sum of `dst`;
    /// `flip` is 0x80 to turn int8 into `int8 + 128`.
    fn copy_sum(src: &[u8], flip: u8, dst: &mut [u8]) -> i32 {
        super::pack::copy_sum_scalar(src, flip, dst)
    }

    /// Rows `r0..` of a convolution's A into `out` (rows of `row_len`
    /// bytes, [`crate::conv::nhwc::ConvRows::write`]), compiled for this
    /// kernel's ISA.
    fn unfold(cv: &super::ConvRows<'_>, r0: usize, row_len: usize, out: &mut [u8]) {
        cv.write(r0, row_len, out)
    }

    /// Packs K groups `g0..g0+kcg` of panels `jp..jp+np` of row-major B
    /// into `buf` (see [`super::b_per_call::pack_rows_with`]), compiled for
    /// this kernel's ISA.
    fn pack_rows(
        b: &super::RowsB<'_>,
        g0: usize,
        kcg: usize,
        jp: usize,
        np: usize,
        buf: &mut [i8],
    ) {
        super::b_per_call::pack_rows(b, g0, kcg, jp, np, buf)
    }

    /// GEMV over row-major B for one packed row of Â (see [`super::b_per_call::RowGemv`]):
    /// the raw sums `Σ_k Â[k]·B̂[k, c0 + j]` into `acc[j]` for every `j`
    /// of `acc` and, when `g.sums`, the column sums of B̂ into `colsum[j]`;
    /// returns false (nothing written) when the kernel has no such GEMV
    /// (the default: the columns then go the packed way).
    fn gemv_rows(
        _g: &super::b_per_call::RowGemv<'_, Self::AElem>,
        _acc: &mut [i32],
        _colsum: &mut [i32],
    ) -> bool {
        false
    }

    /// Zero-point correction and output step of a block
    /// ([`super::finish_block`]), compiled for this kernel's ISA.
    ///
    /// # Safety
    /// As for [`super::finish_block`]; the CPU supports the kernel's ISA.
    unsafe fn finish<T: super::output::OutElem>(f: super::Finish<'_, '_, T>) {
        super::finish_block(f)
    }

    /// The micro-kernel: `Σ_k Â[i,k]·B̂[k,j]` for a tile of `mr` rows ×
    /// `np` panels (16 columns each) over the K block described by `t`
    /// ([`Tile`]), in wrapping `i32`.
    ///
    /// # Safety
    /// `1 <= mr <= MR`, `1 <= np <= NP` (`NP_ROW` when `mr == 1`); `a` points at `mr` rows of `4 * kg`
    /// elements, `lda` apart; `b` at `np` panels of `64 * kg` bytes, `bs`
    /// apart; `acc` is writable for `mr` rows of `16 * np` values, `ld` apart
    /// (unless `!load` and `fix.dst` or `fix.float` is set: a DIRECT kernel then never touches it);
    /// and the CPU supports the kernel's ISA.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(mr: usize, np: usize, t: &Tile<'_, Self::AElem>);
}

/// One call of the micro-kernel ([`Kernel::tile`]) over `kg` K-groups (4 k each):
///
/// * `a`: row `r` of the tile's packed A at `a + r·lda` (`4·kg` elements);
/// * `b`: panel `p` of packed B at `b + p·bs` (`64·kg` bytes, the K block);
/// * `acc`: the tile is written to `acc[r·ld + 16·p + c]` (r < mr, p < np,
///   c < 16), added to the values already there when `load` (a K block after
///   the first);
/// * `fix`: after the last K block, the zero-point correction ([`Fix`]),
///   applied in registers before the store (straight to the output when
///   `fix.dst` is set and the kernel is `DIRECT`).
#[derive(Clone, Copy)]
pub(crate) struct Tile<'a, E> {
    pub kg: usize,
    pub a: *const E,
    pub lda: usize,
    pub b: *const i8,
    pub bs: usize,
    pub acc: *mut i32,
    pub ld: usize,
    pub load: bool,
    pub fix: Option<&'a Fix>,
}

impl<'a, E> Tile<'a, E> {
    /// The fields in declaration order, for the kernels' local variables.
    #[allow(clippy::type_complexity)]
    #[inline(always)]
    pub fn parts(
        &self,
    ) -> (
        usize,
        *const E,
        usize,
        *const i8,
        usize,
        *mut i32,
        usize,
        bool,
        Option<&'a Fix>,
    ) {
        let t = self;
        (t.kg, t.a, t.lda, t.b, t.bs, t.acc, t.ld, t.load, t.fix)
    }
}

/// The zero-point correction a tile applies after its last K block:
/// `acc[r][c] -= za[r]·colterm[c] + rowsum[r]·zb[c]` (wrapping). Pointers to the
/// tile's first row (`za`, `rowsum`: `mr` values) and first column (`zb`,
/// `colterm`: `16·np` values, B's padding included).
///
/// When `dst` is not null (only for kernels with `DIRECT`), the corrected
/// tile goes straight to the `i32` output instead of `acc`: row `r` at
/// `dst + r·dst_ld`, its first `dst_cols` columns only. When `float` is set
/// (only for kernels with `DIRECT`; `dst` is then null), the tile goes
/// through the plain float output step in registers to the `f32` output
/// instead ([`FloatOut`], the same rows and columns).
pub(crate) struct Fix {
    pub za: *const i32,
    pub rowsum: *const i32,
    pub zb: *const i32,
    pub colterm: *const i32,
    pub dst: *mut i32,
    pub dst_ld: usize,
    pub dst_cols: usize,
    pub float: Option<FloatOut>,
}

/// The plain float output step of a tile, `(f32(acc) · row_scale[r]) ·
/// col_scale[c] + bias[c]` then `max(·, 0)` when `relu`: the operations and
/// their order of [`super::output`]'s float rows (no fused multiply-add),
/// so the same bits. Row `r` of the output at `dst + r·Fix::dst_ld`; the
/// row scale of row `r` at `row_scale + r·rs_step` (`rs_step` 0: one for
/// all rows); `col_scale` and `bias` at the tile's first column, readable
/// for its first `Fix::dst_cols` columns only.
#[derive(Clone, Copy)]
pub(crate) struct FloatOut {
    pub dst: *mut f32,
    pub row_scale: *const f32,
    pub rs_step: usize,
    pub col_scale: *const f32,
    pub bias: *const f32,
    pub relu: bool,
}

/// The methods of a `Kernel` impl that forward to the module's functions:
/// `tile` dispatches `(mr, np)` onto the listed const-generic instantiations
/// of `tile: f` (called `f::<MR, NP>(&Tile)`);
/// `finish`, `copy_sum`, `pack_rows`, `gemv_rows` and `unfold`, when given, override the portable defaults with
/// the `#[target_feature]` versions.
macro_rules! kernel_methods {
    (
        tile: $f:ident,
        shapes: [$(($m:literal, $p:literal)),* $(,)?]
        $(, finish: $fin:ident)?
        $(, copy_sum: $cs:path)?
        $(, pack_rows: $pr:path)?
        $(, gemv_rows: $gv:path)?
        $(, unfold: $uf:path)?
    ) => {
        $(
            fn unfold(cv: &$crate::gemm::ConvRows<'_>, r0: usize, row_len: usize, out: &mut [u8]) {
                // SAFETY: a kernel is only used on a CPU that has its ISA.
                unsafe { $uf(cv, r0, row_len, out) }
            }
        )?
        $(
            fn gemv_rows(
                g: &$crate::gemm::b_per_call::RowGemv<'_, Self::AElem>,
                acc: &mut [i32],
                colsum: &mut [i32],
            ) -> bool {
                // SAFETY: a kernel is only used on a CPU that has its ISA.
                unsafe { $gv(g, acc, colsum) }
            }
        )?
        $(
            fn pack_rows(b: &$crate::gemm::RowsB<'_>, g0: usize, kcg: usize, jp: usize, np: usize, buf: &mut [i8]) {
                // SAFETY: a kernel is only used on a CPU that has its ISA.
                unsafe { $pr(b, g0, kcg, jp, np, buf) }
            }
        )?
        $(
            unsafe fn finish<T: $crate::gemm::output::OutElem>(f: $crate::gemm::Finish<'_, '_, T>) {
                $fin(f)
            }
        )?
        $(
            fn copy_sum(src: &[u8], flip: u8, dst: &mut [u8]) -> i32 {
                // SAFETY: a kernel is only used on a CPU that has its ISA.
                unsafe { $cs(src, flip, dst) }
            }
        )?
        unsafe fn tile(mr: usize, np: usize, t: &$crate::gemm::kernel::Tile<'_, Self::AElem>) {
            match (mr, np) {
                $(($m, $p) => $f::<$m, $p>(t),)*
                _ => unreachable!("tile shape out of range"),
            }
        }
    };
}
pub(crate) use kernel_methods;
