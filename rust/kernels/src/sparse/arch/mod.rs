//! The per-ISA code of the sparse family: the generic bodies of `float.rs` and `int8.rs`
//! compiled for each path (`generic.rs`, `x86_avx2.rs`, `x86_avx512.rs`),
//! plus the AVX-512 VNNI micro-kernel of the int8 4-deep dot layout
//! (`x86_avx512vnni.rs`) and of the int8 output-column panels, chosen by
//! [`crate::cpu::dispatch`].

use std::ops::Range;

use super::formats::{Bsr, Nm};

pub(crate) mod generic;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_avx512;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_avx512vnni;

pub(crate) type BsrF32Fn = unsafe fn(&Bsr<f32>, Range<usize>, &[f32], usize, &mut [f32]);
pub(crate) type BsrF32GemvFn = unsafe fn(&Bsr<f32>, Range<usize>, &[f32], &mut [f32]);
pub(crate) type NmF32Fn = unsafe fn(&Nm<f32>, Range<usize>, &[f32], usize, &mut [f32]);
pub(crate) type NmF32GemvFn = unsafe fn(&Nm<f32>, Range<usize>, &[f32], &mut [f32]);
pub(crate) type BsrI8Fn = unsafe fn(&Bsr<i8>, Range<usize>, &[i16], usize, &mut [i32]);
pub(crate) type BsrI8Dot4Fn = unsafe fn(&Bsr<i8>, Range<usize>, &[u8], usize, &mut [i32]);
pub(crate) type NmI8Fn = unsafe fn(&Nm<i8>, Range<usize>, &[i16], usize, &mut [i32]);
pub(crate) type PanelI8Fn = unsafe fn(&super::panel::PanelCall<'_>, Range<usize>);
pub(crate) type TileF32Fn = unsafe fn(*const f32, usize, *mut f32, usize, *const f32, bool);

/// The sparse entry points of one path (see [`crate::cpu::Dispatch`]). They
/// stay `unsafe`: a caller promises the size invariants of the bodies in
/// `float.rs` / `int8.rs` (the path itself is checked by the dispatch).
#[derive(Clone, Copy)]
pub struct Kernels {
    pub(crate) bsr_f32: BsrF32Fn,
    pub(crate) bsr_f32_gemv: BsrF32GemvFn,
    pub(crate) nm_f32: NmF32Fn,
    pub(crate) nm_f32_gemv: NmF32GemvFn,
    pub(crate) bsr_i8: BsrI8Fn,
    pub(crate) bsr_i8_dot4: BsrI8Dot4Fn,
    pub(crate) nm_i8: NmI8Fn,
    pub(crate) panel_i8: PanelI8Fn,
    pub(crate) tile_f32: TileF32Fn,
}

/// `table!(isa, fma)`: the wrappers of every float / int8 body for `isa`
/// (`#[target_feature]` ones, none for `generic`), with fused multiply-adds
/// when `fma`, and the module's `KERNELS` table of them.
macro_rules! table {
    ($isa:ident, $fma:literal) => {
        mod tf {
            use std::ops::Range;
            use $crate::sparse::formats::{Bsr, Nm};
            use $crate::sparse::{float, int8};
            $crate::cpu::isa_fns!($isa;
                pub(super) unsafe fn bsr_f32(w: &Bsr<f32>, r: Range<usize>, x: &[f32], bp: usize, o: &mut [f32]) {
                    float::bsr_f32_body::<$fma>(w, r, x, bp, o)
                }
                pub(super) unsafe fn bsr_f32_gemv(w: &Bsr<f32>, r: Range<usize>, x: &[f32], o: &mut [f32]) {
                    float::bsr_f32_gemv_body::<$fma>(w, r, x, o)
                }
                pub(super) unsafe fn nm_f32(w: &Nm<f32>, r: Range<usize>, x: &[f32], bp: usize, o: &mut [f32]) {
                    float::nm_f32_body::<$fma>(w, r, x, bp, o)
                }
                pub(super) unsafe fn nm_f32_gemv(w: &Nm<f32>, r: Range<usize>, x: &[f32], o: &mut [f32]) {
                    float::nm_f32_gemv_body::<$fma>(w, r, x, o)
                }
                pub(super) unsafe fn bsr_i8(w: &Bsr<i8>, r: Range<usize>, x: &[i16], bp: usize, o: &mut [i32]) {
                    int8::bsr_i8_body(w, r, x, bp, o)
                }
                pub(super) unsafe fn bsr_i8_dot4(w: &Bsr<i8>, r: Range<usize>, x: &[u8], bp: usize, o: &mut [i32]) {
                    int8::bsr_i8_dot4_body(w, r, x, bp, o)
                }
                pub(super) unsafe fn nm_i8(w: &Nm<i8>, r: Range<usize>, x: &[i16], bp: usize, o: &mut [i32]) {
                    int8::nm_i8_body(w, r, x, bp, o)
                }
                pub(super) unsafe fn panel_i8(c: &$crate::sparse::panel::PanelCall<'_>, r: Range<usize>) {
                    $crate::sparse::panel::panel_i8_body(c, r)
                }
                pub(super) unsafe fn tile_f32(s: *const f32, ss: usize, d: *mut f32, ds: usize, b: *const f32, relu: bool) {
                    float::tile_f32_body(s, ss, d, ds, b, relu)
                }
            );
        }

        pub(crate) const KERNELS: $crate::sparse::arch::Kernels = $crate::sparse::arch::Kernels {
            bsr_f32: tf::bsr_f32,
            bsr_f32_gemv: tf::bsr_f32_gemv,
            nm_f32: tf::nm_f32,
            nm_f32_gemv: tf::nm_f32_gemv,
            bsr_i8: tf::bsr_i8,
            bsr_i8_dot4: tf::bsr_i8_dot4,
            nm_i8: tf::nm_i8,
            panel_i8: tf::panel_i8,
            tile_f32: tf::tile_f32,
        };
    };
}
pub(crate) use table;
