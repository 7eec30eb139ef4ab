//! Depthwise 2-D convolution (cross-correlation, zero padding), NCHW f32:
//! `groups == in_channels`, channel multiplier `m >= 1`, stride, dilation and
//! asymmetric padding `(top, left, bottom, right)`.
//!
//! Output channel `o = ci·m + j` reads input channel `ci = o / m` with the
//! kernel `weight[o, 0]` (PyTorch's layout `(c·m, 1, kh, kw)`):
//!
//! ```text
//! y[b, o, oy, ox] = bias[o] + Σ_{ky,kx} w[o, ky, kx] · x[b, ci, oy·sh + ky·dh - top, ox·sw + kx·dw - left]
//! ```
//!
//! Every kernel tap is an axpy over the valid span of an output row (a
//! contiguous one at stride 1), computed once per call; no padded copy of the
//! input is made. Work is split over `(image, output channel)` planes
//! (forward), `(image, input channel)` planes (`dx`) and output channels
//! (`dweight`), so no two tasks write the same element.

use super::{check_len, dot_f64, for_rows, sum_f64, zeros};
use crate::error::{Error, Result};
use crate::exec::Ctx;

/// The geometry of a depthwise convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depthwise {
    /// Batch, input channels, input height and width.
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Channel multiplier: `c · m` output channels.
    pub m: usize,
    /// Kernel height and width.
    pub kh: usize,
    pub kw: usize,
    /// Strides.
    pub sh: usize,
    pub sw: usize,
    /// Dilations.
    pub dh: usize,
    pub dw: usize,
    /// Zero padding: top, left, bottom, right.
    pub pads: [usize; 4],
}

/// A [`Depthwise`] geometry that passed [`Depthwise::check`], with its output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub g: Depthwise,
    pub oh: usize,
    pub ow: usize,
}

fn overflow(what: &str) -> Error {
    Error::Shape(format!("{what} overflows"))
}

fn mul(a: usize, b: usize, what: &str) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| overflow(what))
}

/// Output length of one axis, or an error when the (dilated) kernel does not fit.
fn out_len(
    len: usize,
    k: usize,
    s: usize,
    d: usize,
    p0: usize,
    p1: usize,
    axis: &str,
) -> Result<usize> {
    let ek = mul(d, k - 1, "dilated kernel")?
        .checked_add(1)
        .ok_or_else(|| overflow("dilated kernel"))?;
    let padded = len
        .checked_add(p0)
        .and_then(|v| v.checked_add(p1))
        .ok_or_else(|| overflow("padded input"))?;
    if padded < ek {
        return crate::shape_err!(
            "kernel {k} with dilation {d} spans {ek} along {axis}, more than the padded input ({len} + {p0} + {p1})"
        );
    }
    Ok((padded - ek) / s + 1)
}

impl Depthwise {
    /// Checks every size (no zero kernel, stride or dilation; no overflow) and computes the output size.
    pub fn check(self) -> Result<Checked> {
        for (v, name) in [
            (self.kh, "kernel height"),
            (self.kw, "kernel width"),
            (self.sh, "stride"),
            (self.sw, "stride"),
            (self.dh, "dilation"),
            (self.dw, "dilation"),
            (self.m, "channel multiplier"),
        ] {
            if v == 0 {
                return crate::value_err!("{name} must be >= 1; got 0");
            }
        }
        let [pt, pl, pb, pr] = self.pads;
        let oh = out_len(self.h, self.kh, self.sh, self.dh, pt, pb, "the height")?;
        let ow = out_len(self.w, self.kw, self.sw, self.dw, pl, pr, "the width")?;
        let chk = Checked { g: self, oh, ow };
        chk.in_len()?;
        chk.out_len()?;
        chk.weight_len()?;
        Ok(chk)
    }
}

impl Checked {
    /// Output channels `c · m`.
    pub fn oc(&self) -> usize {
        self.g.c * self.g.m
    }
    /// Elements of `x` `(n, c, h, w)`.
    pub fn in_len(&self) -> Result<usize> {
        let g = &self.g;
        mul(mul(mul(g.n, g.c, "input")?, g.h, "input")?, g.w, "input")
    }
    /// Elements of `y` `(n, c·m, oh, ow)`.
    pub fn out_len(&self) -> Result<usize> {
        let g = &self.g;
        let oc = mul(g.c, g.m, "output channels")?;
        mul(
            mul(mul(g.n, oc, "output")?, self.oh, "output")?,
            self.ow,
            "output",
        )
    }
    /// Elements of the weight `(c·m, 1, kh, kw)`.
    pub fn weight_len(&self) -> Result<usize> {
        let g = &self.g;
        mul(
            mul(mul(g.c, g.m, "weight")?, g.kh, "weight")?,
            g.kw,
            "weight",
        )
    }
    fn macs(&self) -> usize {
        self.out_len()
            .unwrap_or(usize::MAX)
            .saturating_mul(self.g.kh * self.g.kw)
    }
    /// Input row of output row `oy` and kernel row `ky`, if inside the image.
    #[inline]
    fn iy(&self, oy: usize, ky: usize) -> Option<usize> {
        let iy = (oy * self.g.sh + ky * self.g.dh).checked_sub(self.g.pads[0])?;
        (iy < self.g.h).then_some(iy)
    }
    /// For each kernel column `kx`: the output columns `ox0..ox1` whose input
    /// column lies inside the image, and the input column `ix0` of `ox0`.
    fn col_spans(&self) -> Vec<Span> {
        let g = &self.g;
        let pl = g.pads[1];
        (0..g.kw)
            .map(|kx| {
                let shift = kx * g.dw; // ix = ox·sw + shift - pl
                let ox0 = pl.saturating_sub(shift).div_ceil(g.sw);
                let ox1 = (g.w + pl).saturating_sub(shift).div_ceil(g.sw).min(self.ow);
                if ox0 >= ox1 {
                    Span {
                        ox0: 0,
                        ox1: 0,
                        ix0: 0,
                    }
                } else {
                    Span {
                        ox0,
                        ox1,
                        ix0: ox0 * g.sw + shift - pl,
                    }
                }
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy)]
struct Span {
    ox0: usize,
    ox1: usize,
    ix0: usize,
}

/// Depthwise forward: `x` `(n, c, h, w)`, `weight` `(c·m, 1, kh, kw)`,
/// optional `bias` `(c·m,)`; returns `y` `(n, c·m, oh, ow)`.
pub fn depthwise_conv2d(
    ctx: &Ctx,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    geom: Depthwise,
) -> Result<(Vec<f32>, Checked)> {
    let k = geom.check()?;
    check_len(x.len(), k.in_len()?, "x")?;
    check_len(weight.len(), k.weight_len()?, "weight")?;
    if let Some(b) = bias {
        check_len(b.len(), k.oc(), "bias")?;
    }
    let mut y = zeros(k.out_len()?, "the output")?;
    if y.is_empty() {
        return Ok((y, k));
    }
    let g = k.g;
    let (plane_in, plane_out, taps, oc) = (g.h * g.w, k.oh * k.ow, g.kh * g.kw, k.oc());
    let spans = k.col_spans();
    for_rows(ctx, &mut y, plane_out, k.macs(), |p0, chunk| {
        for (i, out) in chunk.chunks_exact_mut(plane_out).enumerate() {
            let p = p0 + i;
            let (img, o) = (p / oc, p % oc);
            let ci = o / g.m;
            let xp = &x[(img * g.c + ci) * plane_in..][..plane_in];
            let wk = &weight[o * taps..][..taps];
            out.fill(bias.map_or(0.0, |b| b[o]));
            forward_plane(xp, wk, out, &k, &spans);
        }
    });
    Ok((y, k))
}

fn forward_plane(xp: &[f32], wk: &[f32], out: &mut [f32], k: &Checked, spans: &[Span]) {
    let g = &k.g;
    for (oy, orow) in out.chunks_exact_mut(k.ow).enumerate() {
        for ky in 0..g.kh {
            let Some(iy) = k.iy(oy, ky) else { continue };
            let irow = &xp[iy * g.w..][..g.w];
            for (kx, sp) in spans.iter().enumerate() {
                let wv = wk[ky * g.kw + kx];
                let dst = &mut orow[sp.ox0..sp.ox1];
                if g.sw == 1 {
                    for (o, &v) in dst.iter_mut().zip(&irow[sp.ix0..]) {
                        *o += wv * v;
                    }
                } else {
                    for (o, &v) in dst.iter_mut().zip(irow[sp.ix0..].iter().step_by(g.sw)) {
                        *o += wv * v;
                    }
                }
            }
        }
    }
}

/// Gradients of [`depthwise_conv2d`].
#[derive(Debug, Clone)]
pub struct DepthwiseGrads {
    /// `(n, c, h, w)`.
    pub dx: Vec<f32>,
    /// `(c·m, 1, kh, kw)`.
    pub dweight: Vec<f32>,
    /// `(c·m,)`, when asked for.
    pub dbias: Option<Vec<f32>>,
}

/// Depthwise backward: `dy` `(n, c·m, oh, ow)`, the forward's `x` and `weight`.
pub fn depthwise_conv2d_backward(
    ctx: &Ctx,
    dy: &[f32],
    x: &[f32],
    weight: &[f32],
    geom: Depthwise,
    want_dbias: bool,
) -> Result<DepthwiseGrads> {
    let k = geom.check()?;
    check_len(dy.len(), k.out_len()?, "dy")?;
    check_len(x.len(), k.in_len()?, "x")?;
    check_len(weight.len(), k.weight_len()?, "weight")?;
    let g = k.g;
    let (plane_in, plane_out, taps, oc) = (g.h * g.w, k.oh * k.ow, g.kh * g.kw, k.oc());
    let spans = k.col_spans();
    let mut dx = zeros(x.len(), "dx")?;
    let mut dweight = zeros(weight.len(), "dweight")?;
    let mut dbias = if want_dbias {
        Some(zeros(oc, "dbias")?)
    } else {
        None
    };
    if dy.is_empty() {
        return Ok(DepthwiseGrads { dx, dweight, dbias });
    }
    // dx: one task per (image, input channel) plane, summing its m output channels
    if !dx.is_empty() {
        for_rows(ctx, &mut dx, plane_in, k.macs(), |p0, chunk| {
            for (i, gx) in chunk.chunks_exact_mut(plane_in).enumerate() {
                let p = p0 + i;
                let (img, ci) = (p / g.c, p % g.c);
                for j in 0..g.m {
                    let o = ci * g.m + j;
                    let gp = &dy[(img * oc + o) * plane_out..][..plane_out];
                    let wk = &weight[o * taps..][..taps];
                    dx_plane(gp, wk, gx, &k, &spans);
                }
            }
        });
    }
    // dweight: one task per output channel, over every image
    for_rows(ctx, &mut dweight, taps, k.macs(), |o0, chunk| {
        for (i, gw) in chunk.chunks_exact_mut(taps).enumerate() {
            let o = o0 + i;
            let ci = o / g.m;
            let mut acc = vec![0.0f64; taps];
            for img in 0..g.n {
                let gp = &dy[(img * oc + o) * plane_out..][..plane_out];
                let xp = &x[(img * g.c + ci) * plane_in..][..plane_in];
                dw_plane(gp, xp, &mut acc, &k, &spans);
            }
            for (d, a) in gw.iter_mut().zip(acc) {
                *d = a as f32;
            }
        }
    });
    if let Some(db) = dbias.as_mut() {
        for_rows(ctx, db, 1, dy.len(), |o0, chunk| {
            for (i, b) in chunk.iter_mut().enumerate() {
                let o = o0 + i;
                let s: f64 = (0..g.n)
                    .map(|img| sum_f64(&dy[(img * oc + o) * plane_out..][..plane_out]))
                    .sum();
                *b = s as f32;
            }
        });
    }
    Ok(DepthwiseGrads { dx, dweight, dbias })
}

/// `gx += Wᵀ-scatter of one output-gradient plane` (the adjoint of [`forward_plane`]).
fn dx_plane(gp: &[f32], wk: &[f32], gx: &mut [f32], k: &Checked, spans: &[Span]) {
    let g = &k.g;
    for (oy, grow) in gp.chunks_exact(k.ow).enumerate() {
        for ky in 0..g.kh {
            let Some(iy) = k.iy(oy, ky) else { continue };
            let xrow = &mut gx[iy * g.w..][..g.w];
            for (kx, sp) in spans.iter().enumerate() {
                let wv = wk[ky * g.kw + kx];
                let src = &grow[sp.ox0..sp.ox1];
                if g.sw == 1 {
                    for (d, &v) in xrow[sp.ix0..].iter_mut().zip(src) {
                        *d += wv * v;
                    }
                } else {
                    for (d, &v) in xrow[sp.ix0..].iter_mut().step_by(g.sw).zip(src) {
                        *d += wv * v;
                    }
                }
            }
        }
    }
}

/// `acc[ky, kx] += Σ gp[oy, ox] · xp[iy, ix]` over one image.
fn dw_plane(gp: &[f32], xp: &[f32], acc: &mut [f64], k: &Checked, spans: &[Span]) {
    let g = &k.g;
    for (oy, grow) in gp.chunks_exact(k.ow).enumerate() {
        for ky in 0..g.kh {
            let Some(iy) = k.iy(oy, ky) else { continue };
            let xrow = &xp[iy * g.w..][..g.w];
            for (kx, sp) in spans.iter().enumerate() {
                let src = &grow[sp.ox0..sp.ox1];
                let s = if g.sw == 1 {
                    dot_f64(src, &xrow[sp.ix0..])
                } else {
                    src.iter()
                        .zip(xrow[sp.ix0..].iter().step_by(g.sw))
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum()
                };
                acc[ky * g.kw + kx] += s;
            }
        }
    }
}
