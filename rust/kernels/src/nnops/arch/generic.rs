//! The portable path of the float row ops.

use super::super::{gelu::gelu_chunk, norm::layer_norm_chunk, softmax::softmax_chunk};
use super::Kernels;
use crate::conv::nhwc::max_pool_u8_rows;
use crate::plan::attention_ops::product;

pub(crate) const KERNELS: Kernels = Kernels {
    gelu: gelu_chunk,
    softmax: softmax_chunk,
    layer_norm: layer_norm_chunk,
    product,
    max_pool_u8: max_pool_u8_rows,
};
