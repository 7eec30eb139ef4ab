//! Sparse formats (CSR, BSR, N:M; float32 and int8) and their SpMM kernels for
//! the Linear layer (`Y = X · Wᵀ + b`). See `formats` for the storage and
//! `spmm` for the loop design.

pub(crate) mod arch;
pub mod formats;
pub mod spmm;
pub mod weight;

pub use crate::quant::rows::quantize_rows_u8;
pub use formats::{quantize_rows, row_quant, Bsr, Nm, RowQuant};
pub use spmm::{bsr_f32_linear, bsr_i8_linear, nm_f32_linear, nm_i8_linear, QuantX};
pub use weight::{DenseValues, Pattern, SparseWeight};
