//! The portable path of the quantization family: the scalar reference loops.

use super::super::{
    dequant_row_scalar, dequant_run_scalar, min_max_body, quant_row_scalar, quant_run_scalar,
};
use super::Kernels;

pub(crate) const KERNELS: Kernels = Kernels {
    quant_run: quant_run_scalar,
    quant_row: quant_row_scalar,
    dequant_run: dequant_run_scalar,
    dequant_row: dequant_row_scalar,
    min_max: min_max_body,
    quantize_row: crate::quant::rows::quantize_row_body,
};
