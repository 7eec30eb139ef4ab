//! The int4 dense layer of a [`GraphPlan`](super::GraphPlan): the int4
//! kernel ([`crate::int4::linear_into`]) on the plan's buffers, so a model
//! with int4 layers runs in one native call like an int8 one, and allocates
//! nothing per call once a batch size has run.

use std::sync::Arc;

use super::Unary;
use crate::error::Result;
use crate::exec::Ctx;
use crate::int4::{self, Int4Scratch, Int4Weight};
use crate::shape_err;

/// An int4 linear layer on the last axis (activations quantized per row by
/// the one activation quantizer), then ReLU if `relu`, then `post`: what the
/// runtime's `int4_linear` op computes, bit for bit.
#[derive(Debug, Clone)]
pub struct Int4Dense {
    weight: Arc<Int4Weight>,
    /// The bias, zeros for none: `y + 0.0` is what the kernel adds without
    /// one, and a bias spares its output step a zero vector per call.
    bias: Vec<f32>,
    relu: bool,
    post: Option<Unary>,
}

impl Int4Dense {
    /// The layer `weight` (+ `bias` of `n`), ReLU if `relu`, then `post`.
    pub fn new(
        weight: Arc<Int4Weight>,
        bias: Option<Vec<f32>>,
        relu: bool,
        post: Option<Unary>,
    ) -> Result<Self> {
        let n = weight.n();
        let bias = match bias {
            Some(b) if b.len() != n => {
                return shape_err!("bias has {} values, expected {n}", b.len())
            }
            Some(b) => b,
            None => crate::error::try_vec(n, 0.0f32, "the int4 layer's bias")?,
        };
        Ok(Int4Dense {
            weight,
            bias,
            relu,
            post,
        })
    }

    /// The weight.
    pub fn weight(&self) -> &Int4Weight {
        &self.weight
    }

    /// Per-sample output dims for per-sample input dims `x` (features last).
    pub(super) fn out_dims(&self, x: &[usize], what: &str) -> Result<Vec<usize>> {
        match x.split_last() {
            Some((&k, lead)) if k == self.weight.k() => {
                let mut d = lead.to_vec();
                d.push(self.weight.n());
                Ok(d)
            }
            Some((&k, _)) => shape_err!(
                "{what}: input has {k} features but the int4 weight takes {}",
                self.weight.k()
            ),
            None => shape_err!("{what}: an int4 dense layer needs at least one input axis"),
        }
    }

    /// Sizes `scratch` for a batch whose input holds `x_len` floats; returns
    /// how many of its buffers grew.
    pub(super) fn reserve(&self, scratch: &mut Int4Scratch, x_len: usize) -> Result<usize> {
        scratch.reserve(x_len / self.weight.k(), &self.weight)
    }

    /// `y = layer(x)` for the rows of `x`.
    pub(super) fn run(
        &self,
        ctx: &Ctx,
        scratch: &mut Int4Scratch,
        x: &[f32],
        y: &mut [f32],
    ) -> Result<()> {
        let k = self.weight.k();
        let m = x.len() / k;
        int4::linear_into(
            ctx,
            x,
            m,
            k,
            &self.weight,
            Some(&self.bias),
            self.relu,
            scratch,
            y,
        )?;
        if let Some(f) = self.post {
            f.run(y);
        }
        Ok(())
    }
}
