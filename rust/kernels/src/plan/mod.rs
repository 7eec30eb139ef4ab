//! Executors of planned graphs: a fixed sequence of kernel calls over
//! buffers the plan owns, run in one call so that no per-node dispatch
//! happens in Python.
//!
//! [`graph::GraphPlan`]: a whole graph of int8 runtime ops (dense,
//! convolutions, depthwise, pooling, residual adds, element-wise ops, layout
//! changes) over preallocated buffers planned by value lifetimes.
//!
//! [`DenseChain`]: the runtime's hot path for MLPs, a chain of int8 linear
//! layers whose float activations are quantized per row
//! ([`crate::quant::rows`]) before each layer.

pub mod graph;

use std::sync::Arc;

use crate::error::Result;
use crate::exec::Ctx;
use crate::gemm::{self, output::Param, PackedB};
use crate::{shape_err, value_err};

/// One int8 linear layer of a chain: packed weights (shared with whoever
/// packed them), the per-column weight scale (one value or one per output),
/// an optional bias and a ReLU.
#[derive(Debug, Clone)]
pub struct DenseLayer {
    pub packed: Arc<PackedB>,
    pub scale: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub relu: bool,
}

/// Int8 linear layers whose widths chain (each layer's N is the next one's K).
#[derive(Debug, Clone)]
pub struct DenseChain {
    layers: Vec<DenseLayer>,
}

impl DenseChain {
    /// Checks that the layers chain and that every scale and bias fits its
    /// layer.
    pub fn new(layers: Vec<DenseLayer>) -> Result<Self> {
        if layers.is_empty() {
            return value_err!("a dense chain needs at least one layer");
        }
        for (i, l) in layers.iter().enumerate() {
            let (k, n) = (l.packed.k(), l.packed.n());
            if i > 0 {
                let p = layers[i - 1].packed.n();
                if p != k {
                    return shape_err!(
                        "layer {i} has in_features = {k} but layer {} has out_features = {p}",
                        i - 1
                    );
                }
            }
            if l.scale.len() != 1 && l.scale.len() != n {
                return shape_err!(
                    "layer {i}: weight_scale has {} values, expected 1 or {n}",
                    l.scale.len()
                );
            }
            if let Some(b) = &l.bias {
                if b.len() != n {
                    return shape_err!("layer {i}: bias has {} values, expected {n}", b.len());
                }
            }
        }
        Ok(DenseChain { layers })
    }

    /// Inputs of the first layer.
    pub fn in_features(&self) -> usize {
        self.layers[0].packed.k()
    }

    /// Outputs of the last layer.
    pub fn out_features(&self) -> usize {
        self.layers[self.layers.len() - 1].packed.n()
    }

    /// Runs `x` `(m, k)` float32 through every layer; returns `(m, out)`.
    pub fn forward(&self, ctx: &Ctx, x: &[f32], m: usize, k: usize) -> Result<Vec<f32>> {
        let first_k = self.in_features();
        if k != first_k {
            return shape_err!("x has {k} features but the first layer takes {first_k}");
        }
        let mut cur: Vec<f32> = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let input: &[f32] = if i == 0 { x } else { &cur };
            let pb = &*l.packed;
            let scale = if l.scale.len() == 1 {
                Param::Scalar(l.scale[0])
            } else {
                Param::PerIndex(&l.scale)
            };
            cur = gemm::linear_dynamic_vec(
                ctx,
                input,
                m,
                pb.k(),
                pb,
                scale,
                l.bias.as_deref(),
                l.relu,
            )?;
        }
        Ok(cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::ZeroPoint;

    fn layer(n: usize, k: usize, seed: i32, relu: bool) -> DenseLayer {
        let w: Vec<i8> = (0..n * k)
            .map(|i| ((i as i32 * 7 + seed) % 19 - 9) as i8)
            .collect();
        DenseLayer {
            packed: Arc::new(
                PackedB::from_nk_i8(&crate::exec::TEST, &w, n, k, ZeroPoint::Scalar(0)).unwrap(),
            ),
            scale: vec![0.05],
            bias: Some((0..n).map(|j| j as f32 * 0.1).collect()),
            relu,
        }
    }

    #[test]
    fn chain_is_the_layers_one_after_another() {
        let (m, k) = (5, 12);
        let layers = vec![layer(9, k, 1, true), layer(4, 9, 2, false)];
        let chain = DenseChain::new(layers.clone()).unwrap();
        assert_eq!((chain.in_features(), chain.out_features()), (k, 4));
        let x: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 * 0.3 - 1.4).collect();
        let mut want = x.clone();
        for l in &layers {
            let b = l.bias.as_deref();
            want = gemm::linear_dynamic_vec(
                &crate::exec::TEST,
                &want,
                m,
                l.packed.k(),
                &l.packed,
                Param::Scalar(0.05),
                b,
                l.relu,
            )
            .unwrap();
        }
        assert_eq!(chain.forward(&crate::exec::TEST, &x, m, k).unwrap(), want);
        assert!(chain.forward(&crate::exec::TEST, &x, m * k / 6, 6).is_err());
    }

    #[test]
    fn bad_chains_are_errors() {
        assert!(DenseChain::new(vec![]).is_err());
        let e = DenseChain::new(vec![layer(9, 12, 1, true), layer(4, 8, 2, false)]).unwrap_err();
        assert!(e.to_string().contains("layer 1 has in_features = 8"), "{e}");
        let mut l = layer(9, 12, 1, true);
        l.scale = vec![1.0; 3];
        assert!(DenseChain::new(vec![l.clone()]).is_err());
        l.scale = vec![1.0];
        l.bias = Some(vec![0.0; 2]);
        assert!(DenseChain::new(vec![l]).is_err());
    }
}
