//! Exact int8 depthwise 2-D convolution, channels-last (channel multiplier 1).
//!
//! `x` is uint8 NHWC `(n, h, w, c)`, quantized per image with zero point
//! `zero_points[img]`; the weight is int8 `(kh, kw, c)` (channels innermost,
//! so the inner loop runs over contiguous channels). For output pixel
//! `(img, oy, ox)` and channel `ch`
//!
//! ```text
//! acc = Σ_{ky, kx in bounds} (x[img, iy, ix, ch] - zp[img]) · w[ky, kx, ch]
//! iy  = oy·sh + ky·dh - pad_top,   ix = ox·sw + kx·dw - pad_left
//! ```
//!
//! so a padded position is a real zero (it contributes nothing). `acc` is
//! exact: `|x - zp| <= 255` and `|w| <= 128` make each product fit `i16`
//! (`<= 32640`), and the sum is taken in `i32` (kernels whose tap count could
//! overflow it are refused). The result then goes through the shared output
//! step of [`crate::gemm::output`] with one row per image and one column per
//! channel ([`depthwise_conv2d`]): `Int32` for the raw accumulators, `Float`
//! with `row_scale = scales[img]`, so `f = (f32(acc) · scales[img]) ·
//! col_scale[ch] + bias[ch]` then ReLU, exactly as every int8 GEMM rounds
//! it, or the plan's `Fused` step with `requant` for uint8 out.
//!
//! The body ([`band`]) is portable code over fixed-width channel blocks,
//! compiled once per path (`arch/`, chosen by [`crate::cpu::dispatch`]);
//! integer sums and the shared output step give the same bits on every
//! path. Work is split over `(image, block of output rows)` with
//! [`Ctx::for_each_task`] (serial below its threshold). Nothing is
//! allocated per call once a thread has run a call of the same size (the
//! band and the widened weight are per-thread buffers; a caller that holds
//! a [`Wide`] weight skips the widening), except the output step's zero
//! bias for more than 4096 channels when there is no bias.
//!
//! ```
//! use hwreg_kernels::depthwise::{depthwise_conv2d_i32, Depthwise};
//! use hwreg_kernels::exec::Ctx;
//! // One 1×3 image, 1 channel, zero point 1, kernel 1×2: (3-1)·2 + (5-1)·(-1) = 0, ...
//! let g = Depthwise { n: 1, h: 1, w: 3, c: 1, kernel: (1, 2), stride: (1, 1),
//!                     dilation: (1, 1), padding: [0, 0, 0, 0] };
//! let mut out = [0i32; 2];
//! depthwise_conv2d_i32(&Ctx::serial(), &[3, 5, 1], &[1], &[2, -1], &g, &mut out).unwrap();
//! assert_eq!(out, [0, 8]);
//! ```

use std::mem::MaybeUninit;
use std::ops::Range;

use crate::error::Result;
use crate::exec::{Ctx, SyncPtr};
use crate::gemm::output::{Epilogue, Fused, OutElem, OutputStep, Param};
use crate::{shape_err, value_err};

pub mod arch;
#[doc(hidden)]
pub mod band;
#[cfg(test)]
mod tests;

/// Largest product `|x - zp| · |w|`; the i32 sum of `taps` of them must fit.
const MAX_PRODUCT: i64 = 255 * 128;

/// The geometry of one depthwise convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depthwise {
    /// Images, input rows, input columns, channels.
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    /// `(kh, kw)`, each >= 1.
    pub kernel: (usize, usize),
    /// `(sh, sw)`, each >= 1.
    pub stride: (usize, usize),
    /// `(dh, dw)`, each >= 1.
    pub dilation: (usize, usize),
    /// `[top, left, bottom, right]` zero padding.
    pub padding: [usize; 4],
}

/// One output extent: `(size + lo + hi - d·(k-1) - 1) / s + 1`, checked.
fn out_dim(
    axis: &str,
    size: usize,
    k: usize,
    s: usize,
    d: usize,
    lo: usize,
    hi: usize,
) -> Result<usize> {
    if k == 0 {
        return value_err!("kernel {axis} must be >= 1; got 0");
    }
    if s == 0 {
        return value_err!("stride must be >= 1; got 0 along the {axis}");
    }
    if d == 0 {
        return value_err!("dilation must be >= 1; got 0 along the {axis}");
    }
    let Some(padded) = size.checked_add(lo).and_then(|v| v.checked_add(hi)) else {
        return value_err!("padding along the {axis} overflows");
    };
    let Some(span) = d.checked_mul(k - 1).and_then(|v| v.checked_add(1)) else {
        return value_err!("kernel {axis} {k} with dilation {d} overflows");
    };
    if span > padded {
        return shape_err!(
            "kernel {axis} {k} with dilation {d} spans {span}, more than the padded input {axis} {padded}"
        );
    }
    Ok((padded - span) / s + 1)
}

impl Depthwise {
    /// `(oh, ow)`, checking the geometry (every extent >= 1, no overflow).
    pub fn out_hw(&self) -> Result<(usize, usize)> {
        let [t, l, b, r] = self.padding;
        let oh = out_dim(
            "height",
            self.h,
            self.kernel.0,
            self.stride.0,
            self.dilation.0,
            t,
            b,
        )?;
        let ow = out_dim(
            "width",
            self.w,
            self.kernel.1,
            self.stride.1,
            self.dilation.1,
            l,
            r,
        )?;
        Ok((oh, ow))
    }

    /// Elements of `x`, of the weight and of the output `(n, oh, ow, c)`.
    pub fn sizes(&self) -> Result<(usize, usize, usize)> {
        let (oh, ow) = self.out_hw()?;
        let (kh, kw) = self.kernel;
        let prod = |v: &[usize]| v.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
        let (Some(xs), Some(ws), Some(os)) = (
            prod(&[self.n, self.h, self.w, self.c]),
            prod(&[kh, kw, self.c]),
            prod(&[self.n, oh, ow, self.c]),
        ) else {
            return value_err!("depthwise convolution sizes overflow: {self:?}");
        };
        Ok((xs, ws, os))
    }

    /// Taps `kh · kw`, refused when their i32 sum could overflow.
    fn taps(&self) -> Result<usize> {
        let (kh, kw) = self.kernel;
        match kh.checked_mul(kw) {
            Some(t) if (t as i64).saturating_mul(MAX_PRODUCT) <= i32::MAX as i64 => Ok(t),
            _ => value_err!(
                "kernel {kh}x{kw} has too many taps for an exact int32 sum (at most {})",
                i32::MAX as i64 / MAX_PRODUCT
            ),
        }
    }
}

/// Checks every input against the geometry and `out`'s length; returns `(oh, ow)`.
fn check(
    x: &[u8],
    zero_points: &[i32],
    weight_len: usize,
    g: &Depthwise,
    out_len: usize,
) -> Result<(usize, usize)> {
    let (xs, ws, os) = g.sizes()?;
    g.taps()?;
    if x.len() != xs {
        return shape_err!(
            "x has {} elements; (n, h, w, c) = {:?} needs {xs}",
            x.len(),
            (g.n, g.h, g.w, g.c)
        );
    }
    if weight_len != ws {
        return shape_err!(
            "weight has {weight_len} elements; (kh, kw, c) = {:?} needs {ws}",
            (g.kernel.0, g.kernel.1, g.c)
        );
    }
    if zero_points.len() != g.n {
        return shape_err!(
            "zero_points must have one entry per image ({}); got {}",
            g.n,
            zero_points.len()
        );
    }
    if let Some(z) = zero_points.iter().find(|z| !(0..=255).contains(*z)) {
        return value_err!("zero_points must lie in [0, 255]; got {z}");
    }
    if out_len != os {
        return shape_err!("out has {out_len} elements; (n, oh, ow, c) needs {os}");
    }
    g.out_hw()
}

pub(crate) fn check_positive(name: &str, v: &[f32]) -> Result<()> {
    match v.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        Some(s) => value_err!("{name} must be finite and > 0; got {s}"),
        None => Ok(()),
    }
}

/// The raw exact accumulators, `out` `(n, oh, ow, c)` row-major.
pub fn depthwise_conv2d_i32(
    ctx: &Ctx,
    x: &[u8],
    zero_points: &[i32],
    weight: &[i8],
    g: &Depthwise,
    out: &mut [i32],
) -> Result<()> {
    // SAFETY: an initialised `[i32]` is a valid `[MaybeUninit<i32>]`, and only `i32`s are written.
    let out = unsafe { &mut *(out as *mut [i32] as *mut [MaybeUninit<i32>]) };
    depthwise_conv2d_i32_uninit(ctx, x, zero_points, weight, g, out)
}

/// [`depthwise_conv2d_i32`] into uninitialised memory: on `Ok`, every
/// element of `out` has been written.
pub fn depthwise_conv2d_i32_uninit(
    ctx: &Ctx,
    x: &[u8],
    zero_points: &[i32],
    weight: &[i8],
    g: &Depthwise,
    out: &mut [MaybeUninit<i32>],
) -> Result<()> {
    depthwise_conv2d(ctx, x, zero_points, weight, g, &OutputStep::Int32, out)
}

/// [`depthwise_conv2d_f32_uninit`] into initialised memory.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_conv2d_f32(
    ctx: &Ctx,
    x: &[u8],
    zero_points: &[i32],
    scales: &[f32],
    weight: &[i8],
    col_scale: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &Depthwise,
    out: &mut [f32],
) -> Result<()> {
    // SAFETY: as in `depthwise_conv2d_i32`.
    let out = unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) };
    depthwise_conv2d_f32_uninit(
        ctx,
        x,
        zero_points,
        scales,
        weight,
        col_scale,
        bias,
        relu,
        g,
        out,
    )
}

/// The float output: `(f32(acc) · scales[img]) · col_scale[ch] + bias[ch]`,
/// then `max(·, 0)` if `relu` ([`OutputStep::Float`]). `scales` has one entry
/// per image, `col_scale` and `bias` one per channel. On `Ok`, every element
/// of `out` `(n, oh, ow, c)` has been written.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_conv2d_f32_uninit(
    ctx: &Ctx,
    x: &[u8],
    zero_points: &[i32],
    scales: &[f32],
    weight: &[i8],
    col_scale: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    g: &Depthwise,
    out: &mut [MaybeUninit<f32>],
) -> Result<()> {
    if scales.len() != g.n {
        return shape_err!(
            "scales must have one entry per image ({}); got {}",
            g.n,
            scales.len()
        );
    }
    check_positive("scales", scales)?;
    if col_scale.len() != g.c {
        return shape_err!(
            "col_scale must have one entry per channel ({}); got {}",
            g.c,
            col_scale.len()
        );
    }
    check_positive("col_scale", col_scale)?;
    if let Some(b) = bias {
        if b.len() != g.c {
            return shape_err!(
                "bias must have one entry per channel ({}); got {}",
                g.c,
                b.len()
            );
        }
    }
    let step = OutputStep::Float {
        row_scale: Param::PerIndex(scales),
        col_scale: Param::PerIndex(col_scale),
        bias,
        relu,
    };
    depthwise_conv2d(ctx, x, zero_points, weight, g, &step, out)
}

/// An output type of the depthwise kernel (its entry in the dispatch table).
pub trait DwOut: OutElem {
    #[doc(hidden)]
    fn entry(k: &arch::Kernels) -> arch::TaskFn<Self>;
}
impl DwOut for i32 {
    fn entry(k: &arch::Kernels) -> arch::TaskFn<Self> {
        k.i32
    }
}
impl DwOut for f32 {
    fn entry(k: &arch::Kernels) -> arch::TaskFn<Self> {
        k.f32
    }
}
impl DwOut for u8 {
    fn entry(k: &arch::Kernels) -> arch::TaskFn<Self> {
        k.u8
    }
}

/// The exact sums through any output step without a residual, prepared
/// here for one row per image and one column per channel: row parameters
/// (`row_scale`) are per image, column parameters (`col_scale`, `bias`) per
/// channel. An `OutputStep::Fused` with `requant` writes the `u8` bytes
/// `QuantizeLinear` gives for the float result (the graph plan's static
/// uint8 edges). On `Ok`, every element of `out` `(n, oh, ow, c)` has been
/// written.
pub fn depthwise_conv2d<T: DwOut>(
    ctx: &Ctx,
    x: &[u8],
    zero_points: &[i32],
    weight: &[i8],
    g: &Depthwise,
    step: &OutputStep<'_>,
    out: &mut [MaybeUninit<T>],
) -> Result<()> {
    check(x, zero_points, weight.len(), g, out.len())?;
    let ep = prepare::<T>(g, step)?;
    let wide = band::widen(weight, g);
    run(ctx, x, zero_points, &wide, g, &ep, out);
    Ok(())
}

/// [`depthwise_conv2d`] with the weight widened beforehand ([`Wide`]), as
/// a graph plan holds it: nothing of the weight is touched per call but
/// the reads of the sums.
pub fn depthwise_conv2d_wide<T: DwOut>(
    ctx: &Ctx,
    x: &[u8],
    zero_points: &[i32],
    weight: &Wide,
    g: &Depthwise,
    step: &OutputStep<'_>,
    out: &mut [MaybeUninit<T>],
) -> Result<()> {
    check(
        x,
        zero_points,
        weight.kernel.0 * weight.kernel.1 * weight.c,
        g,
        out.len(),
    )?;
    if (weight.kernel, weight.c) != (g.kernel, g.c) {
        return shape_err!(
            "the widened weight is for kernel {:?} and {} channels; the geometry has {:?} and {}",
            weight.kernel,
            weight.c,
            g.kernel,
            g.c
        );
    }
    let ep = prepare::<T>(g, step)?;
    run(ctx, x, zero_points, &weight.taps, g, &ep, out);
    Ok(())
}

fn prepare<'a, T: DwOut>(g: &Depthwise, step: &OutputStep<'a>) -> Result<Epilogue<'a, T>> {
    if let OutputStep::Fused(Fused {
        residual: Some(_), ..
    }) = step
    {
        return value_err!("a depthwise output step takes no residual");
    }
    step.prepare::<T>(g.n, g.c)
}

/// A depthwise weight `(kh, kw, c)` widened once into the `i16` tap pairs
/// the task body reads (`(kh, ceil(kw/2), cp, 2)`, see [`band`]), for a
/// caller that runs it many times ([`depthwise_conv2d_wide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wide {
    kernel: (usize, usize),
    c: usize,
    taps: Vec<i16>,
}

impl Wide {
    /// Widens `weight` `(kh, kw, c)`; its length must be `kh·kw·c`, and the
    /// widened copy is allocated fallibly.
    pub fn new(weight: &[i8], kernel: (usize, usize), c: usize) -> Result<Self> {
        let (kh, kw) = kernel;
        if kh == 0 || kw == 0 {
            return value_err!("kernel must be >= 1 along each axis; got {kernel:?}");
        }
        let want = kh.checked_mul(kw).and_then(|t| t.checked_mul(c));
        if want != Some(weight.len()) {
            return shape_err!(
                "weight has {} elements; (kh, kw, c) = {:?} needs kh·kw·c",
                weight.len(),
                (kh, kw, c)
            );
        }
        let len = crate::error::checked_len(
            kh * kw.div_ceil(2),
            band::padded_channels(c) * 2,
            "the widened depthwise weight",
        )?;
        let mut taps = crate::error::try_vec(len, 0i16, "the widened depthwise weight")?;
        band::widen_into(weight, kernel, c, &mut taps);
        Ok(Wide { kernel, c, taps })
    }
}

/// A graph plan's depthwise weight: the `(kh, kw, c)` int8 values as given
/// (read as a slice), and their [`Wide`] form once [`Weight::prepare`] has
/// made it (when the plan is built).
#[derive(Debug, Clone, Default)]
pub struct Weight {
    raw: Vec<i8>,
    wide: Option<Wide>,
}

impl Weight {
    /// Widens the weight for `kernel` and `c` channels (again if those changed).
    pub fn prepare(&mut self, kernel: (usize, usize), c: usize) -> Result<()> {
        if self
            .wide
            .as_ref()
            .is_none_or(|w| (w.kernel, w.c) != (kernel, c))
        {
            self.wide = Some(Wide::new(&self.raw, kernel, c)?);
        }
        Ok(())
    }

    /// The widened form, once prepared.
    pub fn wide(&self) -> Option<&Wide> {
        self.wide.as_ref()
    }
}

impl From<Vec<i8>> for Weight {
    fn from(raw: Vec<i8>) -> Self {
        Weight { raw, wide: None }
    }
}

impl FromIterator<i8> for Weight {
    fn from_iter<I: IntoIterator<Item = i8>>(it: I) -> Self {
        Weight::from(it.into_iter().collect::<Vec<i8>>())
    }
}

impl std::ops::Deref for Weight {
    type Target = [i8];
    fn deref(&self) -> &[i8] {
        &self.raw
    }
}

/// Kernel indices `k` with `base + k·d - pad` in `0..size` (a contiguous range).
#[inline]
fn valid_taps(base: usize, pad: usize, size: usize, k: usize, d: usize) -> Range<usize> {
    let lo = if base >= pad {
        0
    } else {
        (pad - base).div_ceil(d)
    };
    let end = pad + size; // <= the padded extent, which did not overflow
    let hi = if end <= base {
        0
    } else {
        (end - base).div_ceil(d).min(k)
    };
    lo.min(hi)..hi
}

/// Bytes of a task's `i16` band this driver aims to stay under (a quarter
/// of a 1 MiB L2); a task always gets at least one output row. Taller bands
/// copy each input row fewer times (a band of `r` output rows copies
/// `(r - 1)·sh + kh` input rows).
const BAND_BYTES: usize = 256 << 10;

/// The driver: tasks of `(image, block of output rows)`, as many blocks per
/// image as the threads want (`Ctx::chunks_for`) and the band budget needs,
/// each writing its own rows through the active path's task body.
fn run<T: DwOut>(
    ctx: &Ctx,
    x: &[u8],
    zero_points: &[i32],
    wide: &[i16],
    g: &Depthwise,
    ep: &Epilogue<'_, T>,
    out: &mut [MaybeUninit<T>],
) {
    let (oh, ow) = match g.out_hw() {
        Ok(v) => v,
        Err(_) => return, // checked by the callers
    };
    if out.is_empty() {
        return;
    }
    let (c, (kh, kw), sh) = (g.c, g.kernel, g.stride.0);
    let work = out.len().saturating_mul(kh * kw);
    let per_image = ctx.chunks_for(work).div_ceil(g.n).clamp(1, oh);
    let band_row = band::band_cols(g, ow) * band::padded_channels(c) * 4; // i16 pairs
    let span = (kh - 1) * g.dilation.0 + 1;
    let fit = (BAND_BYTES / band_row).saturating_sub(span) / sh + 1;
    let rows = oh.div_ceil(per_image).min(fit).max(1);
    let blocks = oh.div_ceil(rows);
    let plane = g.h * g.w * c;
    let optr = SyncPtr(out.as_mut_ptr() as *mut T);
    let body = T::entry(&crate::cpu::dispatch().depthwise);
    let task = |t: usize| {
        let (img, b) = (t / blocks, t % blocks);
        let r = b * rows..((b + 1) * rows).min(oh);
        let job = band::Task {
            x: &x[img * plane..(img + 1) * plane],
            wide,
            g,
            ow,
            img,
            zp: zero_points[img] as i16, // checked in 0..=255
            rows: r.clone(),
        };
        // SAFETY: rows `r` of image `img` lie inside `out` and belong to
        // this task alone; `ep` was prepared for `(n, c)`; the table is the
        // active path's (the CPU has it).
        unsafe { body(&job, ep, optr.get().add((img * oh + r.start) * ow * c)) };
    };
    ctx.for_each_task(work, g.n * blocks, task);
}
