//! The sparse linear layer of a [`GraphPlan`](super::GraphPlan): a pruned
//! weight (BSR / CSR or N:M, float32 or int8) through its own product
//! ([`SparseWeight::linear`]), so a pruned layer no longer splits a model
//! into two native calls with Python between them.
//!
//! The product writes the plan's value in place from workspaces it reuses
//! per thread, so a sparse layer allocates nothing per call either.

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

    /// `y = layer(x)` for the rows of `x`, written in place (the product's
    /// buffers are reused per thread: see [`SparseWeight::linear_into`]).
    pub(super) fn run(&self, ctx: &Ctx, x: &[f32], y: &mut [f32]) -> Result<()> {
        let k = self.weight.shape().1;
        let m = x.len().checked_div(k).unwrap_or(0);
        self.weight
            .linear_into(ctx, x, m, k, self.bias.as_deref(), self.relu, y)?;
        if let Some(f) = self.post {
            f.run(y);
        }
        Ok(())
    }
}
