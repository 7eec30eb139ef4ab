//! Sparse formats (CSR, BSR, N:M; float32 and int8) and their products for
//! the Linear layer (`Y = X · Wᵀ + b`), by concern:
//!
//! * `formats`: the storages and their invariants;
//! * `weight`: [`SparseWeight`], the one type the runtime and the bindings hold;
//! * `driver`: the loop design and what every product shares (row
//!   partitions, transposed activations, the dispatch of the bodies);
//! * `float`, `int8`: the float32 and the exact int8 products;
//! * `panel`: the int8 block product over output-column panels (the VNNI
//!   layout of the dense GEMM's packed B), for blocks of 4, 8 or 16 rows × 4k;
//! * `arch/`: the bodies compiled per ISA, and the VNNI micro-kernel.

pub(crate) mod arch;
mod driver;
pub mod float;
pub mod formats;
pub mod int8;
pub mod panel;
pub mod weight;

pub use crate::quant::rows::{quantize_rows_u8, quantize_rows_u8_into};
pub use driver::GEMV_MAX_BATCH;
pub use float::{bsr_f32_linear, bsr_f32_linear_into, nm_f32_linear, nm_f32_linear_into};
pub use formats::{quantize_rows, row_quant, Bsr, Nm, RowQuant};
pub use int8::{bsr_i8_linear, bsr_i8_linear_into, nm_i8_linear, nm_i8_linear_into, QuantX};
pub use panel::{panel_i8_linear, panel_i8_linear_into, PanelI8};
pub use weight::{DenseValues, Pattern, SparseWeight};
