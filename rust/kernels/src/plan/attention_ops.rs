//! The float32 ops of attention blocks in a [`super::graph::GraphPlan`]:
//! LayerNorm, Softmax (last axis) and GELU (the `nnops` kernels the Python
//! ops call, so their values do not change), the batched product of two
//! activations (attention scores `q·kᵀ` and context `p·v`), a general
//! permutation of the per-sample axes, the mean over one axis (NumPy's
//! order) and an element-wise operation with a scalar constant (the `/ √d`
//! of the scores).
//!
//! Dims here are per sample (the batch axis is never named); every function
//! that runs an op takes the whole batch as one flat slice.

use crate::error::Result;
use crate::exec::{Ctx, SyncPtr};
use crate::nnops::{gelu, norm, softmax};
use crate::{shape_err, value_err};

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;

pub use crate::nnops::gelu::Approximate;

/// LayerNorm over the trailing axes holding `d` elements, with optional
/// `weight` and `bias` of `d` values (PyTorch's `LayerNorm`).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub d: usize,
    pub weight: Option<Vec<f32>>,
    pub bias: Option<Vec<f32>>,
    pub eps: f64,
}

/// `x (op) c` with a scalar constant `c`; `RSub` / `RDiv` take the constant
/// on the left (`c - x`, `c / x`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    Add(f32),
    Sub(f32),
    RSub(f32),
    Mul(f32),
    Div(f32),
    RDiv(f32),
}

impl Scalar {
    #[inline(always)]
    fn apply(self, x: f32) -> f32 {
        match self {
            Scalar::Add(c) => x + c,
            Scalar::Sub(c) => x - c,
            Scalar::RSub(c) => c - x,
            Scalar::Mul(c) => x * c,
            Scalar::Div(c) => x / c,
            Scalar::RDiv(c) => c / x,
        }
    }
}

fn elems(d: &[usize]) -> usize {
    d.iter().product()
}

/// Output dims of a LayerNorm: the input's, when some trailing axes hold `d`.
pub fn layer_norm_dims(ln: &LayerNorm, x: &[usize], what: &str) -> Result<Vec<usize>> {
    let mut tail = 1usize;
    let fits = ln.d > 0
        && x.iter().rev().any(|&a| {
            tail = tail.saturating_mul(a);
            tail == ln.d
        });
    if !fits {
        return shape_err!(
            "{what}: no trailing axes of {x:?} hold the {} normalised elements",
            ln.d
        );
    }
    for (a, name) in [(&ln.weight, "weight"), (&ln.bias, "bias")] {
        if a.as_ref().is_some_and(|v| v.len() != ln.d) {
            return shape_err!("{what}: layer norm {name} must have {} values", ln.d);
        }
    }
    if !(ln.eps.is_finite() && ln.eps >= 0.0) {
        return value_err!("{what}: eps must be finite and >= 0; got {}", ln.eps);
    }
    Ok(x.to_vec())
}

pub fn layer_norm(ctx: &Ctx, ln: &LayerNorm, x: &[f32], y: &mut [f32]) -> Result<()> {
    norm::layer_norm_into(
        ctx,
        x,
        ln.d,
        ln.weight.as_deref(),
        ln.bias.as_deref(),
        ln.eps,
        y,
    )
}

/// Output dims of a Softmax over the last axis.
pub fn softmax_dims(x: &[usize], what: &str) -> Result<Vec<usize>> {
    match x.last() {
        Some(&d) if d > 0 => Ok(x.to_vec()),
        _ => shape_err!("{what}: softmax needs a non-empty last axis; got {x:?}"),
    }
}

pub fn softmax(ctx: &Ctx, x: &[f32], xd: &[usize], y: &mut [f32]) -> Result<()> {
    softmax::softmax_into(ctx, x, *xd.last().unwrap_or(&1), y)
}

pub fn gelu(ctx: &Ctx, approximate: Approximate, x: &[f32], y: &mut [f32]) -> Result<()> {
    gelu::gelu_into(ctx, x, approximate, y)
}

pub fn scalar(s: Scalar, x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = s.apply(v);
    }
}

/// The shape of one batched product: `lead` products of `(m, k) x (k, n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mm {
    lead: usize,
    m: usize,
    k: usize,
    n: usize,
}

fn mm_shape(a: &[usize], b: &[usize], trans_b: bool, what: &str) -> Result<Mm> {
    let bad = || {
        shape_err!("{what}: cannot multiply per-sample dims {a:?} and {b:?} (trans_b: {trans_b})")
    };
    if a.len() < 2 || b.len() != a.len() || a[..a.len() - 2] != b[..b.len() - 2] {
        return bad();
    }
    let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
    let (bk, n) = if trans_b {
        (b[b.len() - 1], b[b.len() - 2])
    } else {
        (b[b.len() - 2], b[b.len() - 1])
    };
    if bk != k {
        return bad();
    }
    Ok(Mm {
        lead: elems(&a[..a.len() - 2]),
        m,
        k,
        n,
    })
}

/// Output dims of `a @ b` (`a @ bᵀ` of the last two axes with `trans_b`):
/// `(..., m, k)` and `(..., k, n)` with the same leading axes give `(..., m, n)`.
pub fn matmul_dims(a: &[usize], b: &[usize], trans_b: bool, what: &str) -> Result<Vec<usize>> {
    let s = mm_shape(a, b, trans_b, what)?;
    let mut d = a[..a.len() - 2].to_vec();
    d.extend([s.m, s.n]);
    Ok(d)
}

/// `y = a @ b` over `batch` samples of the per-sample dims `ad` and `bd`, in
/// float32 (each product `(m, k) x (k, n)`, rows of `y` accumulated over `k`
/// so the inner loop runs along contiguous rows of `b`; with `trans_b` each
/// output is a dot product of two contiguous rows). Products run in parallel
/// when the work is large.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    ctx: &Ctx,
    a: &[f32],
    ad: &[usize],
    b: &[f32],
    bd: &[usize],
    trans_b: bool,
    batch: usize,
    y: &mut [f32],
) -> Result<()> {
    let s = mm_shape(ad, bd, trans_b, "matmul")?;
    let count = batch.saturating_mul(s.lead);
    let (sa, sb, sy) = (s.m * s.k, s.k * s.n, s.m * s.n);
    if a.len() != count * sa || b.len() != count * sb || y.len() != count * sy {
        return shape_err!("matmul: operand lengths do not fit a batch of {batch}");
    }
    let work = count
        .saturating_mul(s.m)
        .saturating_mul(s.k)
        .saturating_mul(s.n);
    let f = crate::cpu::dispatch().nnops.product;
    let yp = SyncPtr(y.as_mut_ptr());
    ctx.for_each_task(work, count, |p| {
        // SAFETY: product `p` owns rows `p * sy .. (p + 1) * sy` of `y`, which
        // `y.len() == count * sy` (checked above) holds; tasks never overlap.
        let yo = unsafe { std::slice::from_raw_parts_mut(yp.get().add(p * sy), sy) };
        f(
            &a[p * sa..(p + 1) * sa],
            &b[p * sb..(p + 1) * sb],
            s.m,
            s.k,
            s.n,
            trans_b,
            yo,
        );
    });
    Ok(())
}

/// One product `y (m, n) = a (m, k) x b` (`b` as `(k, n)`, or `(n, k)` rows
/// with `trans_b`): the body every path of the dispatch table compiles.
#[inline(always)]
pub(crate) fn product(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    trans_b: bool,
    y: &mut [f32],
) {
    let len = (m * n).min(y.len());
    let y = &mut y[..len];
    if k == 0 {
        y.fill(0.0);
        return;
    }
    for (yr, ar) in y.chunks_exact_mut(n.max(1)).zip(a.chunks_exact(k)) {
        if trans_b {
            for (o, br) in yr.iter_mut().zip(b.chunks_exact(k)) {
                *o = dot(ar, br);
            }
        } else {
            yr.fill(0.0);
            for (&av, br) in ar.iter().zip(b.chunks_exact(n.max(1))) {
                for (o, &bv) in yr.iter_mut().zip(br) {
                    *o += av * bv;
                }
            }
        }
    }
}

/// `Σ a[i]·b[i]` over eight interleaved f32 accumulators (vectorised by LLVM).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 8;
    let mut acc = [0f32; L];
    let (mut ia, mut ib) = (a.chunks_exact(L), b.chunks_exact(L));
    for (ca, cb) in (&mut ia).zip(&mut ib) {
        for i in 0..L {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (&x, &y) in ia.remainder().iter().zip(ib.remainder()) {
        s += x * y;
    }
    s
}

/// Output dims of a permutation of the per-sample axes: axis `i` of the
/// output is axis `perm[i]` of the input.
pub fn transpose_dims(perm: &[usize], x: &[usize], what: &str) -> Result<Vec<usize>> {
    let mut seen = vec![false; x.len()];
    if perm.len() != x.len()
        || perm
            .iter()
            .any(|&p| p >= x.len() || std::mem::replace(&mut seen[p], true))
    {
        return shape_err!("{what}: {perm:?} is not a permutation of the axes of {x:?}");
    }
    Ok(perm.iter().map(|&p| x[p]).collect())
}

/// `np.transpose` of each of the `batch` samples of per-sample dims `xd`.
pub fn transpose(
    perm: &[usize],
    x: &[f32],
    xd: &[usize],
    batch: usize,
    y: &mut [f32],
) -> Result<()> {
    let od = transpose_dims(perm, xd, "transpose")?;
    let per = elems(xd);
    if x.len() != batch * per || y.len() != x.len() {
        return shape_err!("transpose: lengths do not fit a batch of {batch}");
    }
    if per == 0 {
        return Ok(());
    }
    // input stride of each output axis
    let mut in_stride = vec![1usize; xd.len()];
    for i in (0..xd.len().saturating_sub(1)).rev() {
        in_stride[i] = in_stride[i + 1] * xd[i + 1];
    }
    let st: Vec<usize> = perm.iter().map(|&p| in_stride[p]).collect();
    let r = od.len();
    if r == 0 {
        y.copy_from_slice(x);
        return Ok(());
    }
    let (inner, inner_st) = (od[r - 1], st[r - 1]);
    for (xs, ys) in x.chunks_exact(per).zip(y.chunks_exact_mut(per)) {
        // odometer over the outer output axes; the last one runs in the inner loop
        let mut idx = vec![0usize; r - 1];
        let mut off = 0usize;
        for row in ys.chunks_exact_mut(inner) {
            for (j, o) in row.iter_mut().enumerate() {
                *o = xs[off + j * inner_st];
            }
            for ax in (0..r - 1).rev() {
                idx[ax] += 1;
                off += st[ax];
                if idx[ax] < od[ax] {
                    break;
                }
                off -= st[ax] * od[ax];
                idx[ax] = 0;
            }
        }
    }
    Ok(())
}

/// Output dims of the mean over per-sample `axis`.
pub fn mean_dims(axis: usize, keepdims: bool, x: &[usize], what: &str) -> Result<Vec<usize>> {
    // innermost axes are summed pairwise by NumPy: not this op's order
    if axis >= x.len() || x[axis] == 0 || elems(&x[axis + 1..]) <= 1 {
        return shape_err!(
            "{what}: cannot average axis {axis} of {x:?} (an outer axis, non-empty)"
        );
    }
    let mut d = x.to_vec();
    if keepdims {
        d[axis] = 1;
    } else {
        d.remove(axis);
    }
    Ok(d)
}

/// `x.mean(axis)` of each sample as NumPy computes it over an axis that is
/// not the innermost: the first slice, then each next one added in order,
/// then one float32 division by the count.
pub fn mean(axis: usize, x: &[f32], xd: &[usize], y: &mut [f32]) -> Result<()> {
    mean_dims(axis, false, xd, "mean")?;
    let n = xd[axis];
    let inner = elems(&xd[axis + 1..]);
    let block = n * inner;
    if inner == 0 || x.len() % block != 0 || y.len() * n != x.len() {
        return shape_err!("mean: lengths do not fit dims {xd:?}");
    }
    for (xb, yb) in x.chunks_exact(block).zip(y.chunks_exact_mut(inner)) {
        yb.copy_from_slice(&xb[..inner]);
        for xs in xb.chunks_exact(inner).skip(1) {
            for (o, &v) in yb.iter_mut().zip(xs) {
                *o += v;
            }
        }
        let c = n as f32;
        for o in yb.iter_mut() {
            *o /= c;
        }
    }
    Ok(())
}
