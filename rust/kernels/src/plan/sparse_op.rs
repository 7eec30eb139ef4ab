//! The sparse linear layer of a [`GraphPlan`](super::GraphPlan): a pruned
//! weight (BSR / CSR or N:M, float32 or int8) through its own product
//! ([`SparseWeight::linear`]), so a pruned layer no longer splits a model
//! into two native calls with Python between them.
//!
//! The product returns a new vector (its own quantization and output
//! buffers), copied into the plan's value: a sparse layer is the one plan
//! op that still allocates per call.

use std::sync::Arc;

use super::Unary;
use crate::error::Result;
use crate::exec::Ctx;
use crate::shape_err;
use crate::sparse::SparseWeight;

/// A sparse linear layer on the last axis (+ bias, then ReLU if `relu`,
/// then `post`): what the runtime's `sparse_linear` op computes, bit for bit.
#[derive(Debug, Clone)]
pub struct SparseDense {
    weight: Arc<SparseWeight>,
    bias: Option<Vec<f32>>,
    relu: bool,
    post: Option<Unary>,
}

impl SparseDense {
    /// The layer `weight` (+ `bias` of `out_features`), ReLU if `relu`, then `post`.
    pub fn new(
        weight: Arc<SparseWeight>,
        bias: Option<Vec<f32>>,
        relu: bool,
        post: Option<Unary>,
    ) -> Result<Self> {
        let n = weight.shape().0;
        if let Some(b) = bias.as_ref().filter(|b| b.len() != n) {
            return shape_err!("bias has {} values, expected {n}", b.len());
        }
        Ok(SparseDense {
            weight,
            bias,
            relu,
            post,
        })
    }

    /// Per-sample output dims for per-sample input dims `x` (features last).
    pub(super) fn out_dims(&self, x: &[usize], what: &str) -> Result<Vec<usize>> {
        let (n, k) = self.weight.shape();
        match x.split_last() {
            Some((&kx, lead)) if kx == k => {
                let mut d = lead.to_vec();
                d.push(n);
                Ok(d)
            }
            Some((&kx, _)) => {
                shape_err!("{what}: input has {kx} features but the sparse weight takes {k}")
            }
            None => shape_err!("{what}: a sparse layer needs at least one input axis"),
        }
    }

    /// `y = layer(x)` for the rows of `x`.
    pub(super) fn run(&self, ctx: &Ctx, x: &[f32], y: &mut [f32]) -> Result<()> {
        let k = self.weight.shape().1;
        let m = x.len().checked_div(k).unwrap_or(0);
        let out = self
            .weight
            .linear(ctx, x, m, k, self.bias.as_deref(), self.relu)?;
        if out.len() != y.len() {
            return shape_err!(
                "the sparse product gave {} values for {}",
                out.len(),
                y.len()
            );
        }
        y.copy_from_slice(&out);
        if let Some(f) = self.post {
            f.run(y);
        }
        Ok(())
    }
}
