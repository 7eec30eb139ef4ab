//! The portable path of the pruning family.

use super::super::chunk_band;
use super::Kernels;

pub(crate) const KERNELS: Kernels = Kernels {
    band_f32: chunk_band::<f32>,
    band_f64: chunk_band::<f64>,
};
