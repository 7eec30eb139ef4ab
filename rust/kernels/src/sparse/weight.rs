//! The sparse Linear weight `(out_features, in_features)` the runtime and
//! the Python package hold: one type over the four storages (block CSR or
//! N:M, float32 or int8) with its products `Y = X · Wᵀ (+ bias) (ReLU)`.
//! An int8 weight quantizes float activations per row with the one
//! activation quantizer ([`crate::quant::rows`]) before its exact product.

use super::driver::new_output;
use super::float::{bsr_f32_linear_into, nm_f32_linear_into};
use super::formats::{row_quant, Bsr, Elem, Nm, RowQuant};
use super::int8::{bsr_i8_linear_into, nm_i8_linear_into, QuantX};
use super::panel::{fuses_quantize, panel_i8_linear_f32_into, panel_i8_linear_into, PanelI8};
use crate::error::{Error, Result};
use crate::exec::Ctx;
use crate::gemm::reuse::Reused;
use crate::quant::rows::quantize_rows_u8_into;
use crate::shape_err;

std::thread_local! {
    /// An int8 weight's activations quantized per row, kept per thread.
    pub(super) static XQ: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    pub(super) static XQ_SCALE: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    pub(super) static XQ_ZP: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// How the nonzeros of a weight are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Block CSR with `r × c` blocks (CSR is `1 × 1`).
    Blocks { r: usize, c: usize },
    /// At most `n` nonzeros in every `m` consecutive inputs.
    NofM { n: usize, m: usize },
}

/// A dense copy of a weight in its stored dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum DenseValues {
    F32(Vec<f32>),
    I8(Vec<i8>),
}

#[derive(Debug, Clone)]
enum Store {
    Bsr(Bsr<f32>),
    /// With the output-column panels when the blocks fit them (`panel`).
    BsrI8(Bsr<i8>, RowQuant, Option<PanelI8>),
    Nm(Nm<f32>),
    NmI8(Nm<i8>, RowQuant),
}

/// A sparse weight, built once from a dense matrix.
#[derive(Debug, Clone)]
pub struct SparseWeight {
    store: Store,
}

/// What every storage answers alike.
trait Matrix {
    fn shape(&self) -> (usize, usize);
    fn pattern(&self) -> Pattern;
    fn nnz(&self) -> usize;
    fn stored(&self) -> usize;
    fn nbytes(&self) -> usize;
}

/// `Matrix` for a storage type, given how it names its pattern.
macro_rules! matrix {
    ($t:ident, |$w:ident| $pattern:expr) => {
        impl<T: Elem> Matrix for $t<T> {
            fn shape(&self) -> (usize, usize) {
                (self.rows(), self.cols())
            }
            fn pattern(&self) -> Pattern {
                let $w = self;
                $pattern
            }
            fn nnz(&self) -> usize {
                $t::nnz(self)
            }
            fn stored(&self) -> usize {
                $t::stored(self)
            }
            fn nbytes(&self) -> usize {
                $t::nbytes(self)
            }
        }
    };
}
matrix!(Bsr, |b| {
    let (r, c) = b.block();
    Pattern::Blocks { r, c }
});
matrix!(Nm, |b| {
    let (n, m) = Nm::pattern(b);
    Pattern::NofM { n, m }
});

impl SparseWeight {
    /// A float32 weight from a dense row-major `rows × cols` matrix; entries
    /// where `mask` is false count as zero.
    pub fn from_f32(
        w: &[f32],
        rows: usize,
        cols: usize,
        mask: Option<&[bool]>,
        pattern: Pattern,
    ) -> Result<Self> {
        let store = match pattern {
            Pattern::Blocks { r, c } => Store::Bsr(Bsr::from_dense(w, rows, cols, mask, r, c)?),
            Pattern::NofM { n, m } => Store::Nm(Nm::from_dense(w, rows, cols, mask, n, m)?),
        };
        Ok(SparseWeight { store })
    }

    /// An int8 weight (`w ≈ q · scale[row]`) from a dense row-major int8
    /// matrix and one scale per row; checked so that no int32 accumulation
    /// of a row can overflow.
    pub fn from_i8(
        w: &[i8],
        scale: Vec<f32>,
        rows: usize,
        cols: usize,
        mask: Option<&[bool]>,
        pattern: Pattern,
    ) -> Result<Self> {
        let store = match pattern {
            Pattern::Blocks { r, c } => {
                let b = Bsr::from_dense(w, rows, cols, mask, r, c)?;
                let q = row_quant(rows, scale, |f| b.for_each_row_value(f))?;
                let p = PanelI8::of_bsr(&b)?;
                Store::BsrI8(b, q, p)
            }
            Pattern::NofM { n, m } => {
                let b = Nm::from_dense(w, rows, cols, mask, n, m)?;
                let q = row_quant(rows, scale, |f| b.for_each_row_value(f))?;
                Store::NmI8(b, q)
            }
        };
        Ok(SparseWeight { store })
    }

    fn matrix(&self) -> &dyn Matrix {
        match &self.store {
            Store::Bsr(b) => b,
            Store::BsrI8(b, ..) => b,
            Store::Nm(b) => b,
            Store::NmI8(b, _) => b,
        }
    }

    fn quant(&self) -> Option<&RowQuant> {
        match &self.store {
            Store::BsrI8(_, q, _) | Store::NmI8(_, q) => Some(q),
            Store::Bsr(_) | Store::Nm(_) => None,
        }
    }

    /// `(out_features, in_features)`.
    pub fn shape(&self) -> (usize, usize) {
        self.matrix().shape()
    }
    /// The grouping of the nonzeros.
    pub fn pattern(&self) -> Pattern {
        self.matrix().pattern()
    }
    /// Whether the values are int8 (else float32).
    pub fn is_int8(&self) -> bool {
        self.quant().is_some()
    }
    /// Nonzero stored values.
    pub fn nnz(&self) -> usize {
        self.matrix().nnz()
    }
    /// Stored values, padding zeros included.
    pub fn stored(&self) -> usize {
        self.matrix().stored()
    }
    /// Bytes of the stored arrays (values, indices, row pointers; for int8
    /// the per-row scales and sums too, and the output panels when it has them).
    pub fn nbytes(&self) -> usize {
        let panels = match &self.store {
            Store::BsrI8(_, _, Some(p)) => p.nbytes(),
            _ => 0,
        };
        self.matrix().nbytes() + self.quant().map_or(0, |q| 8 * q.scale().len()) + panels
    }
    /// Per-row weight scales of an int8 weight.
    pub fn scale(&self) -> Option<&[f32]> {
        self.quant().map(RowQuant::scale)
    }
    /// The dense `(out, in)` matrix in the stored dtype.
    pub fn to_dense(&self) -> DenseValues {
        match &self.store {
            Store::Bsr(b) => DenseValues::F32(b.to_dense()),
            Store::Nm(b) => DenseValues::F32(b.to_dense()),
            Store::BsrI8(b, ..) => DenseValues::I8(b.to_dense()),
            Store::NmI8(b, _) => DenseValues::I8(b.to_dense()),
        }
    }

    fn check_features(&self, what: &str, k: usize) -> Result<()> {
        let cols = self.shape().1;
        if k != cols {
            return shape_err!("{what} has {k} features, the weight expects {cols}");
        }
        Ok(())
    }

    /// `Y = x · Wᵀ (+ bias) (ReLU)` for `x` `(batch, k)` float32, `Y`
    /// `(batch, out)`; an int8 weight quantizes `x` per row on the fly.
    pub fn linear(
        &self,
        ctx: &Ctx,
        x: &[f32],
        batch: usize,
        k: usize,
        bias: Option<&[f32]>,
        relu: bool,
    ) -> Result<Vec<f32>> {
        self.check_features("x", k)?;
        new_output((self.shape().0, k), x.len(), batch, bias, |y| {
            self.linear_into(ctx, x, batch, k, bias, relu, y)
        })
    }

    /// [`SparseWeight::linear`] into `y` `(batch, out)`. Every storage
    /// works in per-thread buffers that it reuses, so a repeated call of the
    /// same shape allocates nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_into(
        &self,
        ctx: &Ctx,
        x: &[f32],
        batch: usize,
        k: usize,
        bias: Option<&[f32]>,
        relu: bool,
        y: &mut [f32],
    ) -> Result<()> {
        self.check_features("x", k)?;
        match &self.store {
            Store::Bsr(b) => bsr_f32_linear_into(ctx, b, x, batch, bias, relu, y),
            Store::Nm(b) => nm_f32_linear_into(ctx, b, x, batch, bias, relu, y),
            Store::BsrI8(_, q, Some(p)) if fuses_quantize(ctx, batch) => {
                panel_i8_linear_f32_into(ctx, p, q, x, batch, bias, relu, y)
            }
            Store::BsrI8(..) | Store::NmI8(..) => {
                super::driver::check_shapes(self.shape().0, k, x.len(), batch, bias)?;
                let what = "the quantized activations";
                let mut q = Reused::try_stale(&XQ, x.len(), what)?;
                let mut scale = Reused::try_stale(&XQ_SCALE, batch, what)?;
                let mut zero_point = Reused::try_stale(&XQ_ZP, batch, what)?;
                quantize_rows_u8_into(ctx, x, batch, k, &mut q, &mut scale, &mut zero_point)?;
                let xq = QuantX {
                    q: &q,
                    scale: &scale,
                    zero_point: &zero_point,
                };
                self.linear_quantized_into(ctx, &xq, batch, k, bias, relu, y)
            }
        }
    }

    /// [`SparseWeight::linear_quantized`] into `y` `(batch, out)`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_quantized_into(
        &self,
        ctx: &Ctx,
        xq: &QuantX<'_>,
        batch: usize,
        k: usize,
        bias: Option<&[f32]>,
        relu: bool,
        y: &mut [f32],
    ) -> Result<()> {
        self.check_features("xq", k)?;
        match &self.store {
            Store::BsrI8(_, q, Some(p)) => {
                panel_i8_linear_into(ctx, p, q, xq, batch, bias, relu, y)
            }
            Store::BsrI8(b, q, None) => bsr_i8_linear_into(ctx, b, q, xq, batch, bias, relu, y),
            Store::NmI8(b, q) => nm_i8_linear_into(ctx, b, q, xq, batch, bias, relu, y),
            Store::Bsr(_) | Store::Nm(_) => {
                Err(Error::Dtype("linear_quantized needs an int8 weight".into()))
            }
        }
    }

    /// The int8 product with `x` already quantized (uint8, one scale and
    /// zero point per row); a `Dtype` error for a float32 weight.
    pub fn linear_quantized(
        &self,
        ctx: &Ctx,
        xq: &QuantX<'_>,
        batch: usize,
        k: usize,
        bias: Option<&[f32]>,
        relu: bool,
    ) -> Result<Vec<f32>> {
        self.check_features("xq", k)?;
        new_output((self.shape().0, k), xq.q.len(), batch, bias, |y| {
            self.linear_quantized_into(ctx, xq, batch, k, bias, relu, y)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_four_storages_answer_alike() {
        let (n, k) = (6, 8);
        let w: Vec<f32> = (0..n * k)
            .map(|i| if i % 4 < 2 { i as f32 - 20.0 } else { 0.0 })
            .collect();
        let q: Vec<i8> = w.iter().map(|&v| v as i8).collect();
        let x: Vec<f32> = (0..3 * k).map(|i| (i % 5) as f32 - 2.0).collect();
        for p in [Pattern::Blocks { r: 2, c: 4 }, Pattern::NofM { n: 2, m: 4 }] {
            let f = SparseWeight::from_f32(&w, n, k, None, p).unwrap();
            let i = SparseWeight::from_i8(&q, vec![1.0; n], n, k, None, p).unwrap();
            assert_eq!((f.shape(), f.pattern(), f.is_int8()), ((n, k), p, false));
            assert_eq!((i.shape(), i.pattern(), i.is_int8()), ((n, k), p, true));
            assert_eq!(f.nnz(), i.nnz());
            assert_eq!(i.nbytes(), i.matrix().nbytes() + 8 * n);
            assert_eq!(f.to_dense(), DenseValues::F32(w.clone()));
            assert_eq!(i.to_dense(), DenseValues::I8(q.clone()));
            let yf = f.linear(&crate::exec::TEST, &x, 3, k, None, false).unwrap();
            assert_eq!(yf.len(), 3 * n);
            assert!(i.linear(&crate::exec::TEST, &x, 3, k, None, false).is_ok());
            assert!(matches!(
                f.linear(&crate::exec::TEST, &x, 4, k - 2, None, false),
                Err(Error::Shape(_))
            ));
            let xq = QuantX {
                q: &[0; 8],
                scale: &[1.0],
                zero_point: &[0],
            };
            assert!(matches!(
                f.linear_quantized(&crate::exec::TEST, &xq, 1, k, None, false),
                Err(Error::Dtype(_))
            ));
            assert_eq!(
                i.linear_quantized(&crate::exec::TEST, &xq, 1, k, None, false)
                    .unwrap(),
                vec![0.0; n]
            );
        }
    }
}
