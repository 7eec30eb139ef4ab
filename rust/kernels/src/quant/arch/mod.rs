//! The per-ISA code of the quantization family: one [`Kernels`] table per
//! path (`generic.rs`, `x86_avx2.rs`, `x86_avx512.rs`; the two x86 widths
//! share their loops, written once in `x86_simd.rs`), chosen by
//! [`crate::cpu::dispatch`]. The portable loops in `quant/mod.rs` and
//! `quant/rows.rs` are the generic path and the reference every SIMD path
//! is tested against.

pub(crate) mod generic;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_avx512;
#[cfg(target_arch = "x86_64")]
mod x86_simd;

/// Quantize with one scale / zero point for the run: `(x, scale, zp, lo, hi, out, stream)`.
pub(crate) type QuantRunFn = fn(&[f32], f32, f32, f32, f32, &mut [u8], bool);
/// Quantize with one scale / zero point per element: `(x, scale, zp, lo, hi, out)`.
pub(crate) type QuantRowFn = fn(&[f32], &[f32], &[f32], f32, f32, &mut [u8]);
/// Dequantize with one scale / zero point for the run: `(q, signed, scale, zp, out, stream)`.
pub(crate) type DequantRunFn = fn(&[u8], bool, f32, f32, &mut [f32], bool);
/// Dequantize with one scale / zero point per element: `(q, signed, scale, zp, out, stream)`.
pub(crate) type DequantRowFn = fn(&[u8], bool, &[f32], &[f32], &mut [f32], bool);
/// The dynamic activation quantizer of one row (see [`crate::quant::rows`]).
pub(crate) type ActRowFn = fn(&[f32], &mut [u8]) -> Option<(i32, i32, f32)>;

/// The per-element loops of one ISA. `lo`/`hi` are the saturation range as `f32`.
/// `*_run` use one scale and zero point for the whole run; `*_row` one per element.
/// `stream`: non-temporal stores for outputs too big to stay in cache.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub(crate) quant_run: QuantRunFn,
    pub(crate) quant_row: QuantRowFn,
    pub(crate) dequant_run: DequantRunFn,
    pub(crate) dequant_row: DequantRowFn,
    /// `(min, max, poison)`; `poison` is NaN when the slice holds NaN or ±inf.
    pub(crate) min_max: fn(&[f32]) -> (f32, f32, f32),
    /// Dynamic per-row uint8 quantization of activations.
    pub(crate) quantize_row: ActRowFn,
}

/// `table!(isa)`: the `#[target_feature]` wrappers of `isa` over the
/// `#[inline(always)]` bodies `quant_run`, `quant_row`, `dequant_run`,
/// `dequant_row`, `min_max` and `quantize_row` of the module it is used in,
/// and that module's safe `KERNELS` table of them.
///
/// Safety of the entries: a table is only handed out by
/// [`crate::cpu::dispatch`] for a path the CPU supports.
macro_rules! table {
    ($isa:ident) => {
        mod tf {
            #![allow(clippy::too_many_arguments)]
            $crate::cpu::isa_fns!($isa;
                pub(super) unsafe fn quant_run(x: &[f32], s: f32, zp: f32, lo: f32, hi: f32, out: &mut [u8], stream: bool) {
                    super::quant_run(x, s, zp, lo, hi, out, stream)
                }
                pub(super) unsafe fn quant_row(x: &[f32], s: &[f32], zp: &[f32], lo: f32, hi: f32, out: &mut [u8]) {
                    super::quant_row(x, s, zp, lo, hi, out)
                }
                pub(super) unsafe fn dequant_run(q: &[u8], signed: bool, s: f32, zp: f32, out: &mut [f32], stream: bool) {
                    super::dequant_run(q, signed, s, zp, out, stream)
                }
                pub(super) unsafe fn dequant_row(q: &[u8], signed: bool, s: &[f32], zp: &[f32], out: &mut [f32], stream: bool) {
                    super::dequant_row(q, signed, s, zp, out, stream)
                }
                pub(super) unsafe fn min_max(x: &[f32]) -> (f32, f32, f32) {
                    super::min_max(x)
                }
                pub(super) unsafe fn quantize_row(x: &[f32], dst: &mut [u8]) -> Option<(i32, i32, f32)> {
                    super::quantize_row(x, dst)
                }
            );
        }

        // SAFETY (every entry): only handed out for a CPU that has `$isa`.
        pub(crate) const KERNELS: $crate::quant::arch::Kernels = $crate::quant::arch::Kernels {
            quant_run: |x, s, zp, lo, hi, out, stream| unsafe {
                tf::quant_run(x, s, zp, lo, hi, out, stream)
            },
            quant_row: |x, s, zp, lo, hi, out| unsafe { tf::quant_row(x, s, zp, lo, hi, out) },
            dequant_run: |q, signed, s, zp, out, stream| unsafe {
                tf::dequant_run(q, signed, s, zp, out, stream)
            },
            dequant_row: |q, signed, s, zp, out, stream| unsafe {
                tf::dequant_row(q, signed, s, zp, out, stream)
            },
            min_max: |x| unsafe { tf::min_max(x) },
            quantize_row: |x, dst| unsafe { tf::quantize_row(x, dst) },
        };
    };
}
pub(crate) use table;
