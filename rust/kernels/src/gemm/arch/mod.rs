//! The per-ISA code of the GEMM family: one micro-kernel per path (a
//! zero-sized struct implementing `gemm::kernel::Kernel`) and the table of
//! the blocked driver instantiated for it, chosen by
//! [`crate::cpu::dispatch`].
//!
//! * `generic.rs`: portable 4 × 16 kernel (the reference; auto-vectorised);
//! * `x86_avx2.rs`: exact `vpmaddwd` kernel, 3 × 16 (1 × 48 for GEMV);
//! * `x86_avx512vnni.rs`: `vpdpbusd` kernel, 6 × 64 (1 × 128 for GEMV);
//! * `x86_avx512vnni_gemv.rs`: `vpdpbusd` GEMV straight over row-major B (B per call, M = 1).
//!
//! A path without a GEMM kernel of its own (AVX-512 without VNNI) takes the
//! table of a narrower one in `cpu/`.

use std::mem::MaybeUninit;

use super::b_per_call::RowsB;
use super::output::{Epilogue, Param};
use super::pack::{ASource, PackedB, PanelJob, ZeroPoint};
use crate::error::Result;
use crate::exec::Ctx;

pub(crate) mod generic;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_avx512vnni;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_avx512vnni_gemv;

/// The exact product plus output step for one output element type.
#[doc(hidden)]
pub type MatmulFn<T> = fn(
    &Ctx,
    &super::ARows<'_>,
    usize,
    usize,
    ZeroPoint<'_>,
    &PackedB,
    &Epilogue<'_, T>,
    &mut [MaybeUninit<T>],
);
/// The product with B row-major per call plus output step, for one output element type.
#[doc(hidden)]
pub type BRowsFn<T> = fn(
    &Ctx,
    &ASource<'_>,
    usize,
    usize,
    ZeroPoint<'_>,
    &RowsB<'_>,
    &Epilogue<'_, T>,
    &mut [MaybeUninit<T>],
);
/// The float-in / float-out dynamic linear layer.
pub(crate) type LinearFn = fn(
    &Ctx,
    &[f32],
    usize,
    usize,
    &PackedB,
    Param<'_>,
    Option<&[f32]>,
    bool,
    &mut [MaybeUninit<f32>],
) -> Result<()>;
/// Packs a run of panels of B.
pub(crate) type PackFn = fn(&PanelJob<'_>, usize, &mut [i8], &mut [i32], &mut [i32]);

/// The GEMM entry points of one path (see [`crate::cpu::Dispatch`]).
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct Kernels {
    pub(crate) matmul_i32: MatmulFn<i32>,
    pub(crate) matmul_f32: MatmulFn<f32>,
    pub(crate) matmul_u8: MatmulFn<u8>,
    pub(crate) matmul_i8: MatmulFn<i8>,
    pub(crate) b_rows_i32: BRowsFn<i32>,
    pub(crate) b_rows_f32: BRowsFn<f32>,
    pub(crate) b_rows_u8: BRowsFn<u8>,
    pub(crate) b_rows_i8: BRowsFn<i8>,
    pub(crate) linear: LinearFn,
    pub(crate) pack_panels: PackFn,
    pub(crate) row1_f32: super::row1::Row1Fn<f32>,
    pub(crate) row1_u8: super::row1::Row1Fn<u8>,
    pub(crate) tiny_f32: super::tiny::TinyFn<f32>,
    pub(crate) tiny_u8: super::tiny::TinyFn<u8>,
}

/// `table!(Kernel, pack_fn)`: the module's `KERNELS`, the blocked driver
/// instantiated for the micro-kernel `Kernel`.
macro_rules! table {
    ($kr:ty, $pack:expr) => {
        pub(crate) const KERNELS: $crate::gemm::arch::Kernels = $crate::gemm::arch::Kernels {
            matmul_i32: $crate::gemm::matmul_with::<$kr, i32>,
            matmul_f32: $crate::gemm::matmul_with::<$kr, f32>,
            matmul_u8: $crate::gemm::matmul_with::<$kr, u8>,
            matmul_i8: $crate::gemm::matmul_with::<$kr, i8>,
            b_rows_i32: $crate::gemm::b_rows_with::<$kr, i32>,
            b_rows_f32: $crate::gemm::b_rows_with::<$kr, f32>,
            b_rows_u8: $crate::gemm::b_rows_with::<$kr, u8>,
            b_rows_i8: $crate::gemm::b_rows_with::<$kr, i8>,
            linear: $crate::gemm::linear_with::<$kr>,
            pack_panels: $pack,
            row1_f32: $crate::gemm::row1::row1_with::<$kr, f32>,
            row1_u8: $crate::gemm::row1::row1_with::<$kr, u8>,
            tiny_f32: $crate::gemm::tiny::tiny_with::<$kr, f32>,
            tiny_u8: $crate::gemm::tiny::tiny_with::<$kr, u8>,
        };
    };
}
pub(crate) use table;

/// `kernel_fns!(isa, AElem)`: the `#[target_feature]` wrappers `tile_tf`
/// (over the module's `#[inline(always)] tile_body`) and `finish_tf` (the
/// shared output step) of a SIMD kernel.
macro_rules! kernel_fns {
    ($isa:ident, $a:ty) => {
        $crate::cpu::isa_fns!($isa;
            unsafe fn tile_tf<const MR: usize, const NP: usize>(t: &$crate::gemm::kernel::Tile<'_, $a>) {
                tile_body::<MR, NP>(t)
            }
            unsafe fn finish_tf<T: $crate::gemm::output::OutElem>(f: $crate::gemm::Finish<'_, '_, T>) {
                $crate::gemm::finish_block(f)
            }
        );
    };
}
pub(crate) use kernel_fns;
