//! Quantization: ONNX `QuantizeLinear`, `DequantizeLinear`, `DynamicQuantizeLinear`
//! and the statistics behind calibration (min/max, percentiles, histograms).
//!
//! # Arithmetic (bit for bit the ONNX reference, `onnx/reference/ops/op_quantize_linear.py`)
//!
//! `q = saturate(round_half_even(x / scale) + zero_point)`, every step in `f32`: a true
//! IEEE division (never a multiply by the reciprocal, which rounds differently on some
//! inputs), `roundeven` of the `f32` quotient, then the zero point and the clamp. Adding
//! the zero point in `f32` is exact while `|round(x / scale)| < 2^24`; beyond that the
//! value saturates either way, so the result equals the reference's `int32` arithmetic
//! for every quotient below `2^31 - 256` in magnitude. Past that (and for `±inf`) the
//! reference casts an out-of-range float to `int32`, which is undefined (x86 gives
//! `i32::MIN`, i.e. the wrong end of the range); we saturate to the end the sign points at.
//! `NaN` quantizes to the low end of the range (`-128` / `0`), which is what the
//! reference gives on x86 for every uint8 zero point and every non-negative int8 one.
//!
//! `DequantizeLinear` is `(q as f32 - zero_point) * scale` in `f32` (one rounding).
//!
//! # Layout
//!
//! Per-axis parameters view the tensor as `(outer, channels, inner)` ([`AxisLayout`]);
//! per-tensor parameters are the case `channels == 1`.
//!
//! # Dispatch
//!
//! [`crate::cpu::dispatch`] hands out the loops of the active path (`arch/`
//! holds them); the portable loops below are the generic path and the
//! reference the SIMD paths are tested against. Nothing here names an ISA.
//!
//! [`rows`] is the one dynamic *activation* quantizer (per row, uint8) that
//! the int8 GEMM and sparse products share.

use crate::exec::Ctx;
use crate::{shape_err, value_err, Error, Result};

pub(crate) mod arch;
pub mod calib;
pub mod fixed;
pub mod rows;

/// An 8-bit quantized element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QType {
    I8,
    U8,
}

impl QType {
    /// The saturation range `[lo, hi]`.
    pub const fn range(self) -> (i32, i32) {
        match self {
            QType::I8 => (-128, 127),
            QType::U8 => (0, 255),
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            QType::I8 => "int8",
            QType::U8 => "uint8",
        }
    }

    pub fn from_name(name: &str) -> Option<QType> {
        match name {
            "int8" => Some(QType::I8),
            "uint8" => Some(QType::U8),
            _ => None,
        }
    }
}

/// `i8` or `u8`: the element types quantized tensors are stored in.
pub trait QElem: Copy + Send + Sync + 'static {
    const QTYPE: QType;
}
impl QElem for i8 {
    const QTYPE: QType = QType::I8;
}
impl QElem for u8 {
    const QTYPE: QType = QType::U8;
}

/// The tensor seen as `(outer, channels, inner)` around the quantization axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisLayout {
    pub outer: usize,
    pub channels: usize,
    pub inner: usize,
}

impl AxisLayout {
    /// Per-tensor layout of `len` elements.
    pub fn per_tensor(len: usize) -> Self {
        AxisLayout {
            outer: 1,
            channels: 1,
            inner: len,
        }
    }

    /// Layout of a C-order tensor of `shape` around `axis` (`None`: per tensor).
    pub fn new(shape: &[usize], axis: Option<usize>) -> Result<Self> {
        let len = checked_len(shape)?;
        match axis {
            None => Ok(Self::per_tensor(len)),
            Some(a) if a < shape.len() => Ok(AxisLayout {
                outer: shape[..a].iter().product(),
                channels: shape[a],
                inner: shape[a + 1..].iter().product(),
            }),
            Some(a) => shape_err!("axis {a} is out of range for a tensor of shape {shape:?}"),
        }
    }

    pub fn len(&self) -> usize {
        self.outer * self.channels * self.inner
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn checked_len(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::Shape(format!("shape {shape:?} has too many elements")))
}

/// Scale and zero point for each channel, validated and widened to `f32`.
struct Params {
    /// One entry (per tensor) or one per channel.
    scale: Vec<f32>,
    zero_point: Vec<f32>,
}

impl Params {
    /// Checks `scale` (finite, > 0) and `zero_point` (in the range of `qt`), and that each
    /// has one entry or one per channel; broadcasts a lone entry when the other is per channel.
    fn new(layout: &AxisLayout, scale: &[f32], zero_point: &[i32], qt: QType) -> Result<Params> {
        let c = layout.channels;
        for (what, n) in [("scale", scale.len()), ("zero_point", zero_point.len())] {
            if n != 1 && n != c {
                return shape_err!(
                    "{what} has {n} elements but the quantization axis has length {c} (expected 1 or {c})"
                );
            }
        }
        if let Some(s) = scale.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return value_err!("scale must be finite and > 0; got {s}");
        }
        let (lo, hi) = qt.range();
        if let Some(z) = zero_point.iter().find(|z| !(lo..=hi).contains(*z)) {
            return value_err!(
                "zero_point must lie in [{lo}, {hi}] for {}; got {z}",
                qt.name()
            );
        }
        let n = scale.len().max(zero_point.len());
        let widen = |v: Vec<f32>| if v.len() == n { v } else { vec![v[0]; n] };
        Ok(Params {
            scale: widen(scale.to_vec()),
            zero_point: widen(zero_point.iter().map(|&z| z as f32).collect()),
        })
    }
}

/// The loops of the active path.
pub(crate) fn kernels() -> arch::Kernels {
    crate::cpu::dispatch().quant
}

/// One element of `QuantizeLinear`: the reference every SIMD path must equal.
#[inline(always)]
pub(crate) fn quant1(x: f32, scale: f32, zp: f32, lo: f32, hi: f32) -> u8 {
    let v = (x / scale).round_ties_even() + zp;
    // `f32::max` returns `lo` for NaN, like `maxps(v, lo)` in the SIMD paths.
    v.max(lo).min(hi) as i32 as u8
}

#[inline(always)]
pub(crate) fn dequant1(q: u8, signed: bool, scale: f32, zp: f32) -> f32 {
    let v = if signed { q as i8 as f32 } else { q as f32 };
    (v - zp) * scale
}

pub(crate) fn quant_run_scalar(
    x: &[f32],
    s: f32,
    zp: f32,
    lo: f32,
    hi: f32,
    out: &mut [u8],
    _stream: bool,
) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quant1(v, s, zp, lo, hi);
    }
}

pub(crate) fn quant_row_scalar(x: &[f32], s: &[f32], zp: &[f32], lo: f32, hi: f32, out: &mut [u8]) {
    for i in 0..out.len().min(x.len()) {
        out[i] = quant1(x[i], s[i], zp[i], lo, hi);
    }
}

pub(crate) fn dequant_run_scalar(
    q: &[u8],
    signed: bool,
    s: f32,
    zp: f32,
    out: &mut [f32],
    _stream: bool,
) {
    for (o, &v) in out.iter_mut().zip(q) {
        *o = dequant1(v, signed, s, zp);
    }
}

pub(crate) fn dequant_row_scalar(
    q: &[u8],
    signed: bool,
    s: &[f32],
    zp: &[f32],
    out: &mut [f32],
    _stream: bool,
) {
    for i in 0..out.len().min(q.len()) {
        out[i] = dequant1(q[i], signed, s[i], zp[i]);
    }
}

/// Lanes of [`min_max_body`]: element `i` of every full group of 16 goes to lane `i % 16`.
pub(crate) const MIN_MAX_LANES: usize = 16;

/// Min, max and a poison value (NaN iff some element is NaN or ±inf) in one pass.
/// Written in [`MIN_MAX_LANES`] independent lanes (the x86 paths run the same lanes in
/// explicit vectors, `x86_simd::min_max`); NaN elements never win a comparison, so they
/// only show in `poison`.
#[inline(always)]
pub(crate) fn min_max_body(x: &[f32]) -> (f32, f32, f32) {
    const L: usize = MIN_MAX_LANES;
    let mut mn = [f32::INFINITY; L];
    let mut mx = [f32::NEG_INFINITY; L];
    let mut poison = [0.0f32; L];
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for j in 0..L {
            let v = c[j];
            mn[j] = if v < mn[j] { v } else { mn[j] };
            mx[j] = if v > mx[j] { v } else { mx[j] };
            poison[j] += v * 0.0;
        }
    }
    min_max_finish(&mn, &mx, &poison, chunks.remainder())
}

/// The end of [`min_max_body`]: the elements past the last full group of lanes, then the
/// lanes in order (the order fixes which zero, -0.0 or +0.0, a tie keeps).
#[inline(always)]
pub(crate) fn min_max_finish(
    mn: &[f32; MIN_MAX_LANES],
    mx: &[f32; MIN_MAX_LANES],
    poison: &[f32; MIN_MAX_LANES],
    rest: &[f32],
) -> (f32, f32, f32) {
    let (mut a, mut b, mut p) = (f32::INFINITY, f32::NEG_INFINITY, 0.0f32);
    for &v in rest {
        a = if v < a { v } else { a };
        b = if v > b { v } else { b };
        p += v * 0.0;
    }
    for j in 0..MIN_MAX_LANES {
        a = if mn[j] < a { mn[j] } else { a };
        b = if mx[j] > b { mx[j] } else { b };
        p += poison[j];
    }
    (a, b, p)
}

/// Outputs of at least this many bytes are written with non-temporal (streaming)
/// stores: they would not stay in cache anyway, and streaming skips the read for
/// ownership, which cuts the memory traffic of a dequantize by about a third.
const STREAM_MIN_BYTES: usize = 4 << 20;

/// The scalar head of a run written with streaming stores: writes
/// `out[j] = scalar(j)` for the leading elements (`n` at most) before the first
/// `align`-byte boundary and returns how many that was (all `n` when `out`
/// is not element-aligned, none when not `stream`ing). The SIMD loops do
/// the rest.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[inline(always)]
pub(crate) fn stream_head<T>(
    out: &mut [T],
    n: usize,
    stream: bool,
    align: usize,
    scalar: impl Fn(usize) -> T,
) -> usize {
    let (addr, size) = (out.as_ptr() as usize, std::mem::size_of::<T>());
    let head = if !stream {
        0
    } else if addr % size == 0 {
        (((align - addr % align) % align) / size).min(n)
    } else {
        n
    };
    for (j, o) in out[..head].iter_mut().enumerate() {
        *o = scalar(j);
    }
    head
}

/// Below this many elements a quantize, dequantize or min / max pass stays
/// on the caller: each element is a few vector operations (a divide at most),
/// so a 256K-element pass is about 30 µs on one core, and splitting anything
/// smaller saved less than the fork-join costs on a loaded 2-vCPU VM (at 256K
/// the rayon split this replaced took 73 µs on two threads against 34 on one).
const PARALLEL_MIN_ELEMS: usize = 1 << 18;

/// Elements per parallel chunk: a multiple of 64, at least
/// `PARALLEL_MIN_ELEMS / 2`, a few chunks per thread; all of `n` (one
/// chunk) below [`PARALLEL_MIN_ELEMS`] or on one thread.
fn chunk_len(ctx: &Ctx, n: usize) -> usize {
    let t = ctx.threads();
    if t == 1 || n < PARALLEL_MIN_ELEMS {
        return n.max(1);
    }
    let chunks = (n / (PARALLEL_MIN_ELEMS / 2)).clamp(2, 4 * t);
    n.div_ceil(chunks).div_ceil(64) * 64
}

/// Calls `f(start, end, c, per_element)` for the runs of `[start, end)` that share a
/// channel (`per_element == false`, channel `c`) or, when the axis is the last one, for
/// the pieces of rows that start at channel `c` (`per_element == true`).
fn for_each_run(
    layout: &AxisLayout,
    per_channel: bool,
    start: usize,
    end: usize,
    mut f: impl FnMut(usize, usize, usize, bool),
) {
    if !per_channel {
        f(start, end, 0, false);
        return;
    }
    let (c, inner) = (layout.channels, layout.inner);
    let mut pos = start;
    while pos < end {
        if inner == 1 {
            let ch = pos % c;
            let stop = end.min(pos + (c - ch));
            f(pos, stop, ch, true);
            pos = stop;
        } else {
            let block = pos / inner;
            let stop = end.min((block + 1) * inner);
            f(pos, stop, block % c, false);
            pos = stop;
        }
    }
}

fn check_lens(what: &str, layout: &AxisLayout, a: usize, b: usize) -> Result<()> {
    if a != layout.len() || b != layout.len() {
        return shape_err!(
            "{what}: input has {a} elements and output {b}, but the layout {:?} has {}",
            layout,
            layout.len()
        );
    }
    Ok(())
}

fn as_bytes_mut<T: QElem>(out: &mut [T]) -> &mut [u8] {
    // SAFETY: `T` is `i8` or `u8` (sealed by `QElem`'s impls): same size, alignment,
    // and every bit pattern valid in both.
    unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), out.len()) }
}

fn as_bytes<T: QElem>(q: &[T]) -> &[u8] {
    // SAFETY: as in `as_bytes_mut`.
    unsafe { std::slice::from_raw_parts(q.as_ptr().cast::<u8>(), q.len()) }
}

/// ONNX `QuantizeLinear` of `x` into `out` (`i8` or `u8`).
///
/// `scale` and `zero_point` hold one entry (per tensor) or one per channel of `layout`.
/// Errors: length mismatches (`Shape`), a scale that is not finite and > 0 or a zero
/// point outside the range of `T` (`Value`).
pub fn quantize<T: QElem>(
    ctx: &Ctx,
    x: &[f32],
    layout: AxisLayout,
    scale: &[f32],
    zero_point: &[i32],
    out: &mut [T],
) -> Result<()> {
    let (lo, hi) = T::QTYPE.range();
    quantize_clamped(ctx, x, layout, scale, zero_point, (lo, hi), out)
}

/// [`quantize`] saturating to `[qmin, qmax]`, a sub-range of `T`'s (e.g. a 4-bit grid
/// stored in `i8`). The zero point must lie in `[qmin, qmax]`.
pub fn quantize_clamped<T: QElem>(
    ctx: &Ctx,
    x: &[f32],
    layout: AxisLayout,
    scale: &[f32],
    zero_point: &[i32],
    (qmin, qmax): (i32, i32),
    out: &mut [T],
) -> Result<()> {
    check_lens("quantize", &layout, x.len(), out.len())?;
    let (tlo, thi) = T::QTYPE.range();
    if !(tlo <= qmin && qmin < qmax && qmax <= thi) {
        return value_err!(
            "quantization range [{qmin}, {qmax}] is not a non-empty sub-range of {} [{tlo}, {thi}]",
            T::QTYPE.name()
        );
    }
    let p = Params::new(&layout, scale, zero_point, T::QTYPE)?;
    if let Some(z) = p
        .zero_point
        .iter()
        .find(|&&z| z < qmin as f32 || z > qmax as f32)
    {
        return value_err!("zero_point must lie in [{qmin}, {qmax}]; got {z}");
    }
    let (lo, hi) = (qmin as f32, qmax as f32);
    let k = kernels();
    let per_channel = p.scale.len() > 1;
    let out = as_bytes_mut(out);
    let n = x.len();
    let stream = n >= STREAM_MIN_BYTES;
    let work = |start: usize, dst: &mut [u8]| {
        for_each_run(
            &layout,
            per_channel,
            start,
            start + dst.len(),
            |a, b, c, row| {
                let (xs, os) = (&x[a..b], &mut dst[a - start..b - start]);
                if row {
                    (k.quant_row)(
                        xs,
                        &p.scale[c..c + (b - a)],
                        &p.zero_point[c..c + (b - a)],
                        lo,
                        hi,
                        os,
                    );
                } else {
                    (k.quant_run)(xs, p.scale[c], p.zero_point[c], lo, hi, os, stream);
                }
            },
        );
    };
    par_chunks(ctx, out, n, work);
    Ok(())
}

/// ONNX `DequantizeLinear`: `out = (q - zero_point) * scale` in `f32`.
///
/// Same parameter rules and errors as [`quantize`].
pub fn dequantize<T: QElem>(
    ctx: &Ctx,
    q: &[T],
    layout: AxisLayout,
    scale: &[f32],
    zero_point: &[i32],
    out: &mut [f32],
) -> Result<()> {
    check_lens("dequantize", &layout, q.len(), out.len())?;
    let p = Params::new(&layout, scale, zero_point, T::QTYPE)?;
    let signed = T::QTYPE == QType::I8;
    let k = kernels();
    let per_channel = p.scale.len() > 1;
    let q = as_bytes(q);
    let n = q.len();
    let stream = n * 4 >= STREAM_MIN_BYTES;
    let work = |start: usize, dst: &mut [f32]| {
        for_each_run(
            &layout,
            per_channel,
            start,
            start + dst.len(),
            |a, b, c, row| {
                let (qs, os) = (&q[a..b], &mut dst[a - start..b - start]);
                if row {
                    (k.dequant_row)(
                        qs,
                        signed,
                        &p.scale[c..c + (b - a)],
                        &p.zero_point[c..c + (b - a)],
                        os,
                        stream,
                    );
                } else {
                    (k.dequant_run)(qs, signed, p.scale[c], p.zero_point[c], os, stream);
                }
            },
        );
    };
    par_chunks(ctx, out, n, work);
    Ok(())
}

/// Runs `work(start, chunk)` over `out` (`n` elements) in chunks, on the
/// fork-join team when `n` is large (as the GEMMs: a rayon job here woke a
/// second set of threads beside the team's).
fn par_chunks<T: Send + Copy>(ctx: &Ctx, out: &mut [T], n: usize, work: impl Fn(usize, &mut [T]) + Sync) {
    let len = chunk_len(ctx, n);
    if len >= n {
        work(0, out);
        return;
    }
    let p = crate::exec::SyncPtr(out.as_mut_ptr());
    ctx.for_each_task(n, n.div_ceil(len), |i| {
        let start = i * len;
        // SAFETY: task `i` alone takes elements start..start + len of `out` (`n` long).
        let c = unsafe { std::slice::from_raw_parts_mut(p.get().add(start), len.min(n - start)) };
        work(start, c);
    });
}

/// Min and max of `x`, in parallel for large inputs. Errors (`Value`) when `x` holds a
/// NaN or an infinity. `x` must not be empty.
pub fn min_max(ctx: &Ctx, x: &[f32]) -> Result<(f32, f32)> {
    if x.is_empty() {
        return value_err!("cannot take the min and max of an empty tensor");
    }
    let k = kernels();
    let len = chunk_len(ctx, x.len());
    let (mn, mx, poison) = if len >= x.len() {
        (k.min_max)(x)
    } else {
        // One result per chunk, written by its task, combined in order.
        let mut parts = vec![(f32::INFINITY, f32::NEG_INFINITY, 0.0f32); x.len().div_ceil(len)];
        let p = crate::exec::SyncPtr(parts.as_mut_ptr());
        ctx.for_each_task(x.len(), parts.len(), |i| {
            let r = (k.min_max)(&x[i * len..((i + 1) * len).min(x.len())]);
            // SAFETY: task `i` alone writes entry `i` of `parts`.
            unsafe { *p.get().add(i) = r };
        });
        parts
            .into_iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY, 0.0), |a, b| {
                (a.0.min(b.0), a.1.max(b.1), a.2 + b.2)
            })
    };
    if poison.is_nan() {
        return value_err!("the tensor holds NaN or infinite values");
    }
    Ok((mn, mx))
}

/// ONNX `DynamicQuantizeLinear`: returns `(scale, zero_point)` and fills `out`.
///
/// `scale = (max(0, max x) - min(0, min x)) / 255` (1/255 when that range is 0),
/// `zero_point = round_half_even(clamp(0 - min(0, min x) / scale, 0, 255))`, then `out`
/// is [`quantize`] with those. NaN or ±inf in `x` is an error (`Value`): the reference
/// turns them into a NaN scale. An empty `x` is an error too (its min is undefined).
pub fn dynamic_quantize(ctx: &Ctx, x: &[f32], out: &mut [u8]) -> Result<(f32, u8)> {
    if x.len() != out.len() {
        return shape_err!(
            "dynamic_quantize: input has {} elements and output {}",
            x.len(),
            out.len()
        );
    }
    if x.is_empty() {
        return value_err!(
            "dynamic_quantize needs a non-empty tensor (the reference takes its min and max)"
        );
    }
    let (mn, mx) = min_max(ctx, x)
        .map_err(|_| Error::Value("dynamic_quantize: x holds NaN or infinite values".into()))?;
    let (scale, zp) = dynamic_params(mn, mx);
    // Not `quantize`: when max - min overflows f32 the reference's scale is +inf (and
    // every element quantizes to the zero point); we follow it rather than reject it.
    let k = kernels();
    let stream = x.len() >= STREAM_MIN_BYTES;
    par_chunks(ctx, out, x.len(), |start, dst: &mut [u8]| {
        (k.quant_run)(
            &x[start..start + dst.len()],
            scale,
            zp as f32,
            0.0,
            255.0,
            dst,
            stream,
        )
    });
    Ok((scale, zp))
}

/// `(hi - lo) / levels` in f32, the quantizers' scale of a range `lo <= hi`. When `hi - lo`
/// overflows f32 (a finite range wider than f32::MAX, e.g. `[-3e38, 3e38]`) the quotient is
/// computed in f64 and rounded once: still the correctly rounded scale, and finite whenever
/// it fits f32. Ordinary ranges take the f32 expression, so their scales are bit-identical
/// to ONNX's `DynamicQuantizeLinear`.
#[inline(always)]
pub(crate) fn range_scale(lo: f32, hi: f32, levels: f32) -> f32 {
    let s = (hi - lo) / levels;
    if s.is_infinite() && lo.is_finite() && hi.is_finite() {
        ((hi as f64 - lo as f64) / levels as f64) as f32
    } else {
        s
    }
}

/// Scale and zero point of `DynamicQuantizeLinear` from the tensor's min and max.
pub fn dynamic_params(min: f32, max: f32) -> (f32, u8) {
    let maxx = max.max(0.0);
    let minx = min.min(0.0);
    let mut scale = if maxx == minx {
        1.0f32 / 255.0
    } else {
        range_scale(minx, maxx, 255.0)
    };
    // Outside the reference's domain (it divides by a zero or infinite
    // scale there), keep the scale positive and finite so that the result
    // dequantizes: a range past f32::MAX is divided in f64 (`range_scale`), a
    // subnormal range whose scale underflows takes the constant-tensor scale.
    if scale == 0.0 {
        scale = 1.0 / 255.0;
    }
    let initial = 0.0f32 - minx / scale;
    let zp = initial.clamp(0.0, 255.0).round_ties_even();
    (scale, zp as u8)
}

#[cfg(test)]
mod tests;
