//! The fused output step: exact `i32` accumulators -> `i32`, `f32` or
//! requantized `u8`/`i8`, applied to a tile while it is hot.
//!
//! This module is public on purpose: any kernel that ends with exact `i32`
//! dot products (the dense GEMM here, the int8 sparse SpMM, int8 convolution)
//! reuses it, so every int8 path rounds the same way.
//!
//! # Use
//!
//! 1. Describe the step with an [`OutputStep`] (scales, bias, ReLU, output zero
//!    point), borrowing its per-row / per-column parameters.
//! 2. [`OutputStep::prepare`] it once per call for an `m × n` output of element
//!    type `T` ([`OutElem`]: `i32`, `f32`, `u8`, `i8`). This checks parameter
//!    lengths, that `T` fits the step, and expands per-column parameters.
//! 3. For each tile of accumulators call [`Epilogue::apply`] (or the raw-pointer
//!    [`Epilogue::apply_raw`] when threads write disjoint tiles of one output).
//!    `acc[(i - rows.start) * acc_ld + (j - cols.start)]` is the exact value of
//!    output element `(i, j)`; the result goes to `out[i * ldc + j]`. Row
//!    parameters are indexed by the global row `i`, column parameters by `j`.
//!
//! ```
//! use hwreg_kernels::gemm::output::{OutputStep, Param};
//! // 1 x 2 tile of accumulators -> float: acc * row_scale * col_scale[j] + bias[j]
//! let step = OutputStep::Float {
//!     row_scale: Param::Scalar(0.5),
//!     col_scale: Param::PerIndex(&[1.0, 2.0]),
//!     bias: Some(&[0.25, 0.0]),
//!     relu: false,
//! };
//! let ep = step.prepare::<f32>(1, 2).unwrap();
//! let mut out = [0.0f32; 2];
//! ep.apply(&[4, -4], 2, 0..1, 0..2, &mut out, 2);
//! assert_eq!(out, [2.25, -4.0]);
//! ```
//!
//! # Formulas (per output element, `acc` exact)
//!
//! * `Int32`: `acc`.
//! * `Float`: `f = (f32(acc) * row_scale(i)) * col_scale(j) + bias(j)`,
//!   then `max(f, 0)` if `relu`; all in `f32`.
//! * `Requant`: `f` as for `Float`, then
//!   `saturate(round_half_even(f / y_scale) + y_zero_point)` in `f32`.
//! * `QLinear`: ONNX QLinearMatMul as `onnx.reference` computes
//!   it: `m = f32(f32(a_scale[i] * b_scale[j]) / y_scale)`, then
//!   `saturate(round_half_even(f64(acc) * f64(m) + y_zero_point))` in `f64`.

use std::borrow::Cow;
use std::ops::Range;

use crate::error::Result;
use crate::{shape_err, value_err};

/// A scale (or bias) for every row / column, or one for all.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    Scalar(f32),
    PerIndex(&'a [f32]),
}

impl<'a> Param<'a> {
    fn check(&self, name: &str, len: usize, positive: bool) -> Result<()> {
        let vals: &[f32] = match self {
            Param::Scalar(v) => std::slice::from_ref(v),
            Param::PerIndex(v) => {
                if v.len() != len {
                    return shape_err!(
                        "{name} must be a scalar or have {len} elements; got {}",
                        v.len()
                    );
                }
                v
            }
        };
        // One branch-free pass (it vectorises; `v > 0 && v <= MAX` is false
        // for NaN and infinities), then a search only to name a bad value.
        if positive
            && !vals
                .iter()
                .fold(true, |ok, &v| ok & (v > 0.0) & (v <= f32::MAX))
        {
            let bad = vals
                .iter()
                .find(|v| !(v.is_finite() && **v > 0.0))
                .copied()
                .unwrap_or(f32::NAN);
            return value_err!("{name} must be finite and > 0; got {bad}");
        }
        Ok(())
    }
    /// One value per index: borrowed when there already is one each.
    fn expand(&self, n: usize) -> Cow<'a, [f32]> {
        match *self {
            Param::Scalar(v) => Cow::Owned(vec![v; n]),
            Param::PerIndex(v) => Cow::Borrowed(v),
        }
    }
    #[inline]
    fn get(&self, i: usize) -> f32 {
        match self {
            Param::Scalar(v) => *v,
            Param::PerIndex(v) => v[i],
        }
    }
}

/// What to do with the exact accumulators (see the module doc for formulas).
#[derive(Debug, Clone, Copy)]
pub enum OutputStep<'a> {
    /// Write the `i32` values (output `i32`).
    Int32,
    /// Dequantize: output `f32`.
    Float {
        row_scale: Param<'a>,
        col_scale: Param<'a>,
        bias: Option<&'a [f32]>,
        relu: bool,
    },
    /// Dequantize then requantize: output `u8` or `i8`.
    Requant {
        row_scale: Param<'a>,
        col_scale: Param<'a>,
        bias: Option<&'a [f32]>,
        relu: bool,
        y_scale: f32,
        y_zero_point: i32,
    },
    /// The graph plan's fused step (see [`Fused`]): output `f32`, `u8` or `i8`.
    Fused(Fused<'a>),
    /// ONNX QLinearMatMul: output `u8` or `i8`.
    QLinear {
        a_scale: Param<'a>,
        b_scale: Param<'a>,
        y_scale: f32,
        y_zero_point: i32,
    },
}

/// The tensor a fused `Add` adds before the ReLU (row stride beside it in
/// [`Fused::residual`]): float32, or uint8 on a grid, whose term is
/// `((q - zero_point) as f32) * scale` (the float the static `Add` takes for
/// that byte). Read as bytes, a uint8 residual is never widened into a float
/// buffer first: at batch 32 that buffer was 4x the bytes and missed the cache
/// (a fused conv + add of ResNet-18's first stage ran 25% slower than the conv).
#[derive(Debug, Clone, Copy)]
pub enum Residual<'a> {
    F32(&'a [f32]),
    U8 {
        q: &'a [u8],
        scale: f32,
        zero_point: i32,
    },
}

impl Residual<'_> {
    fn len(&self) -> usize {
        match self {
            Residual::F32(r) => r.len(),
            Residual::U8 { q, .. } => q.len(),
        }
    }

    /// Elements `r` (one row of a tile).
    #[inline(always)]
    fn row(&self, r: Range<usize>) -> Residual<'_> {
        match *self {
            Residual::F32(v) => Residual::F32(&v[r]),
            Residual::U8 {
                q,
                scale,
                zero_point,
            } => Residual::U8 {
                q: &q[r],
                scale,
                zero_point,
            },
        }
    }

    /// The float term of element `j`.
    #[inline(always)]
    fn term(&self, j: usize) -> f32 {
        match *self {
            Residual::F32(v) => v[j],
            Residual::U8 {
                q,
                scale,
                zero_point,
            } => u8_term(q[j], scale, zero_point),
        }
    }
}

/// The float term of a uint8 residual byte.
#[inline(always)]
fn u8_term(q: u8, scale: f32, zero_point: i32) -> f32 {
    ((q as i32 - zero_point) as f32) * scale
}

/// The float step with a residual and the next layer's quantizer folded in:
/// `f = (f32(acc) * row_scale(i)) * col_scale(j) + bias(j) + residual[i * ld + j]`,
/// then `max(f, 0)` if `relu` (so a fused `Add` + ReLU is the ReLU after the
/// sum), all in `f32`. An `f32` output is `f`; a `u8` / `i8` output is
/// `clamp(saturate(round_half_even(f / y_scale) + y_zero_point), lo, hi)`:
/// the bytes `QuantizeLinear` gives for `f`, clamped to the quantized bounds
/// of a fused Clip / ReLU6 (exact: quantization is monotone, so it commutes
/// with clamping).
#[derive(Debug, Clone, Copy)]
pub struct Fused<'a> {
    pub row_scale: Param<'a>,
    pub col_scale: Param<'a>,
    pub bias: Option<&'a [f32]>,
    /// The `(m, n)` tensor added before the ReLU, with its row stride.
    pub residual: Option<(Residual<'a>, usize)>,
    pub relu: bool,
    /// For a quantized output: `y_scale`, `y_zero_point` and the `[lo, hi]`
    /// clamp (within the output type's range; the whole range when nothing is fused).
    pub requant: Option<Requant>,
}

/// The output quantization of a [`Fused`] step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Requant {
    pub y_scale: f32,
    pub y_zero_point: i32,
    pub lo: i32,
    pub hi: i32,
}

/// Output element types of the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutKind {
    I32,
    F32,
    U8,
    I8,
}

/// An element the output step can write.
pub trait OutElem: Copy + Send + Sync + Default + 'static {
    const KIND: OutKind;
    /// From an exact i32 (only for `I32`).
    fn from_i32(v: i32) -> Self;
    /// From an f32 (only for `F32`).
    fn from_f32(v: f32) -> Self;
    /// From an integer already clamped to this type's range (`U8`/`I8`).
    fn from_clamped(v: i32) -> Self;
    /// The GEMM driver for this output type in a dispatch table.
    #[doc(hidden)]
    fn matmul_entry(k: &crate::gemm::arch::Kernels) -> crate::gemm::arch::MatmulFn<Self>;
    /// The driver with B given row-major per call, in a dispatch table.
    #[doc(hidden)]
    fn b_rows_entry(k: &crate::gemm::arch::Kernels) -> crate::gemm::arch::BRowsFn<Self>;
}

macro_rules! out_elem {
    ($t:ty, $kind:ident, $entry:ident, $rows:ident, $i:expr, $f:expr, $c:expr) => {
        impl OutElem for $t {
            const KIND: OutKind = OutKind::$kind;
            #[inline(always)]
            fn matmul_entry(k: &crate::gemm::arch::Kernels) -> crate::gemm::arch::MatmulFn<Self> {
                k.$entry
            }
            #[inline(always)]
            fn b_rows_entry(k: &crate::gemm::arch::Kernels) -> crate::gemm::arch::BRowsFn<Self> {
                k.$rows
            }
            #[inline(always)]
            fn from_i32(v: i32) -> Self {
                $i(v)
            }
            #[inline(always)]
            fn from_f32(v: f32) -> Self {
                $f(v)
            }
            #[inline(always)]
            fn from_clamped(v: i32) -> Self {
                $c(v)
            }
        }
    };
}
out_elem!(
    i32,
    I32,
    matmul_i32,
    b_rows_i32,
    |v| v,
    |v: f32| v as i32,
    |v| v
);
out_elem!(
    f32,
    F32,
    matmul_f32,
    b_rows_f32,
    |v: i32| v as f32,
    |v| v,
    |v: i32| v as f32
);
out_elem!(
    u8,
    U8,
    matmul_u8,
    b_rows_u8,
    |v: i32| v as u8,
    |v: f32| v as u8,
    |v: i32| v as u8
);
out_elem!(
    i8,
    I8,
    matmul_i8,
    b_rows_i8,
    |v: i32| v as i8,
    |v: f32| v as i8,
    |v: i32| v as i8
);

fn range_of(kind: OutKind) -> (i32, i32) {
    match kind {
        OutKind::U8 => (0, 255),
        OutKind::I8 => (-128, 127),
        _ => (i32::MIN, i32::MAX),
    }
}

#[derive(Debug, Clone)]
enum Prepared<'a> {
    Int32,
    Float {
        row_scale: Param<'a>,
        col_scale: Cow<'a, [f32]>,
        bias: Cow<'a, [f32]>,
        relu: bool,
        residual: Option<(Residual<'a>, usize)>,
        /// `(y_scale, y_zero_point, lo, hi)`.
        requant: Option<(f32, i32, i32, i32)>,
    },
    QLinear {
        a_scale: Param<'a>,
        b_scale: Cow<'a, [f32]>,
        y_scale: f32,
        y_zero_point: i32,
    },
}

/// The plain float step's parameters ([`Epilogue::plain_float`]): row `i`'s
/// scale at `row_scale + i·rs_step` (valid while the epilogue lives), one
/// column scale and bias per output column.
pub(crate) struct PlainFloat<'a> {
    pub row_scale: *const f32,
    pub rs_step: usize,
    pub col_scale: &'a [f32],
    pub bias: &'a [f32],
    pub relu: bool,
}

/// An [`OutputStep`] checked and prepared for an `m × n` output of `T`.
#[derive(Debug, Clone)]
pub struct Epilogue<'a, T: OutElem> {
    step: Prepared<'a>,
    m: usize,
    n: usize,
    _t: std::marker::PhantomData<T>,
}

impl<'a> OutputStep<'a> {
    /// Checks the parameters against an `m × n` output of `T` and prepares them.
    pub fn prepare<T: OutElem>(&self, m: usize, n: usize) -> Result<Epilogue<'a, T>> {
        self.prepare_with(m, n, true)
    }

    /// [`OutputStep::prepare`] for a caller that checked the values of the
    /// row / column scales once already (the graph plan when it is built, the
    /// dynamic linear step for the row scales its quantizer made): the
    /// output type, every length, the output grid and the clamp are still
    /// checked, but the scales are not scanned again on every call (a scan of
    /// each per-column scale vector, per layer and call, cost as much as the
    /// micro-kernel of a batch-1 layer of 16 columns). A scale that is not
    /// finite and > 0 here gives wrong numbers, never unsafety.
    pub fn prepare_checked<T: OutElem>(&self, m: usize, n: usize) -> Result<Epilogue<'a, T>> {
        self.prepare_with(m, n, false)
    }

    fn prepare_with<T: OutElem>(
        &self,
        m: usize,
        n: usize,
        values: bool,
    ) -> Result<Epilogue<'a, T>> {
        let kind_ok = matches!(
            (self, T::KIND),
            (OutputStep::Int32, OutKind::I32)
                | (OutputStep::Float { .. }, OutKind::F32)
                | (OutputStep::Requant { .. }, OutKind::U8 | OutKind::I8)
                | (OutputStep::QLinear { .. }, OutKind::U8 | OutKind::I8)
                | (OutputStep::Fused(Fused { requant: None, .. }), OutKind::F32)
                | (
                    OutputStep::Fused(Fused {
                        requant: Some(_),
                        ..
                    }),
                    OutKind::U8 | OutKind::I8
                )
        );
        if !kind_ok {
            return Err(crate::Error::Dtype(format!(
                "output type {:?} does not fit this output step",
                T::KIND
            )));
        }
        let (lo, hi) = range_of(T::KIND);
        let check_y = |ys: f32, yzp: i32| -> Result<()> {
            Param::Scalar(ys).check("y_scale", 1, true)?;
            if yzp < lo || yzp > hi {
                return value_err!("y_zero_point must lie in [{lo}, {hi}]; got {yzp}");
            }
            Ok(())
        };
        let step = match *self {
            OutputStep::Int32 => Prepared::Int32,
            OutputStep::Float {
                row_scale,
                col_scale,
                bias,
                relu,
            } => prep_float(m, n, row_scale, col_scale, bias, relu, None, None, values)?,
            OutputStep::Fused(f) => {
                if let Some((r, ld)) = f.residual {
                    let need = if m == 0 {
                        Some(0)
                    } else {
                        (m - 1).checked_mul(ld).and_then(|v| v.checked_add(n))
                    };
                    if ld < n || need.is_none_or(|need| r.len() < need) {
                        return shape_err!(
                            "residual of {} elements (row stride {ld}) does not cover a {m} x {n} output",
                            r.len()
                        );
                    }
                }
                let requant = match f.requant {
                    None => None,
                    Some(q) => {
                        check_y(q.y_scale, q.y_zero_point)?;
                        if q.lo < lo || q.hi > hi || q.lo > q.hi {
                            return value_err!(
                                "clamp bounds [{}, {}] must lie in [{lo}, {hi}] in order",
                                q.lo,
                                q.hi
                            );
                        }
                        Some((q.y_scale, q.y_zero_point, q.lo, q.hi))
                    }
                };
                prep_float(
                    m,
                    n,
                    f.row_scale,
                    f.col_scale,
                    f.bias,
                    f.relu,
                    f.residual,
                    requant,
                    values,
                )?
            }
            OutputStep::Requant {
                row_scale,
                col_scale,
                bias,
                relu,
                y_scale,
                y_zero_point,
            } => {
                check_y(y_scale, y_zero_point)?;
                prep_float(
                    m,
                    n,
                    row_scale,
                    col_scale,
                    bias,
                    relu,
                    None,
                    Some((y_scale, y_zero_point, lo, hi)),
                    values,
                )?
            }
            OutputStep::QLinear {
                a_scale,
                b_scale,
                y_scale,
                y_zero_point,
            } => {
                check_y(y_scale, y_zero_point)?;
                a_scale.check("a_scale", m, values)?;
                b_scale.check("b_scale", n, values)?;
                Prepared::QLinear {
                    a_scale,
                    b_scale: b_scale.expand(n),
                    y_scale,
                    y_zero_point,
                }
            }
        };
        Ok(Epilogue {
            step,
            m,
            n,
            _t: std::marker::PhantomData,
        })
    }
}

/// The bias of a step given none: zeros (adding +0.0 keeps the sums of a
/// step with a bias, -0.0 included), borrowed from a static table up to 4096
/// columns so a call allocates nothing, allocated fallibly above.
fn zero_bias(n: usize) -> Result<Cow<'static, [f32]>> {
    static ZEROS: [f32; 4096] = [0.0; 4096];
    match ZEROS.get(..n) {
        Some(z) => Ok(Cow::Borrowed(z)),
        None => Ok(Cow::Owned(crate::error::try_vec(
            n,
            0.0f32,
            "the zero bias",
        )?)),
    }
}

#[allow(clippy::too_many_arguments)]
fn prep_float<'a>(
    m: usize,
    n: usize,
    row_scale: Param<'a>,
    col_scale: Param<'a>,
    bias: Option<&'a [f32]>,
    relu: bool,
    residual: Option<(Residual<'a>, usize)>,
    requant: Option<(f32, i32, i32, i32)>,
    values: bool,
) -> Result<Prepared<'a>> {
    row_scale.check("row scale", m, values)?;
    col_scale.check("column scale", n, values)?;
    let bias = match bias {
        Some(b) if b.len() != n => {
            return shape_err!("bias must have {n} elements; got {}", b.len())
        }
        Some(b) => Cow::Borrowed(b),
        None => zero_bias(n)?,
    };
    Ok(Prepared::Float {
        row_scale,
        col_scale: col_scale.expand(n),
        bias,
        relu,
        residual,
        requant,
    })
}

impl<T: OutElem> Epilogue<'_, T> {
    /// The `(m, n)` output this step was prepared for.
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.m, self.n)
    }

    /// This step owning its vectors, for a plan to keep beside the weights it
    /// was made from (the batch-1 path prepares each layer's step once);
    /// `None` for per-row scales or a residual (they change with the call).
    pub(crate) fn into_owned(self) -> Option<Epilogue<'static, T>> {
        let step = match self.step {
            Prepared::Float {
                row_scale: Param::Scalar(r),
                col_scale,
                bias,
                relu,
                residual: None,
                requant,
            } => Prepared::Float {
                row_scale: Param::Scalar(r),
                col_scale: Cow::Owned(col_scale.into_owned()),
                bias: Cow::Owned(bias.into_owned()),
                relu,
                residual: None,
                requant,
            },
            _ => return None,
        };
        Some(Epilogue {
            step,
            m: self.m,
            n: self.n,
            _t: std::marker::PhantomData,
        })
    }

    /// This float step with another scalar row scale (a dynamic layer's, from
    /// its quantizer), borrowing the rest; `None` for other steps.
    pub(crate) fn with_row_scale(&self, row_scale: f32) -> Option<Epilogue<'_, T>> {
        match &self.step {
            Prepared::Float {
                col_scale,
                bias,
                relu,
                residual: None,
                requant,
                ..
            } => Some(Epilogue {
                step: Prepared::Float {
                    row_scale: Param::Scalar(row_scale),
                    col_scale: Cow::Borrowed(col_scale),
                    bias: Cow::Borrowed(bias),
                    relu: *relu,
                    residual: None,
                    requant: *requant,
                },
                m: self.m,
                n: self.n,
                _t: std::marker::PhantomData,
            }),
            _ => None,
        }
    }

    /// Whether the step writes the accumulators unchanged (`Int32`).
    pub fn is_identity(&self) -> bool {
        matches!(self.step, Prepared::Int32)
    }

    /// The parameters of the plain float step, for a kernel that applies it
    /// in registers ([`crate::gemm::kernel::FloatOut`]): `Some` only for
    /// `f32` output of the `Float` step without residual or requantization
    /// whose row scales for `rows` are all at most [`WIDE_ROW_SCALE`] (a
    /// wider row takes the f64 formula of [`Epilogue::apply`]).
    pub(crate) fn plain_float(&self, rows: Range<usize>) -> Option<PlainFloat<'_>> {
        match &self.step {
            Prepared::Float {
                row_scale,
                col_scale,
                bias,
                relu,
                residual: None,
                requant: None,
            } if T::KIND == OutKind::F32 => {
                let (ptr, step) = match row_scale {
                    Param::Scalar(v) => (v as *const f32, 0),
                    Param::PerIndex(v) => (v.as_ptr(), 1),
                };
                let narrow = match row_scale {
                    Param::Scalar(v) => *v <= WIDE_ROW_SCALE,
                    Param::PerIndex(v) => v[rows].iter().all(|&s| s <= WIDE_ROW_SCALE),
                };
                narrow.then_some(PlainFloat {
                    row_scale: ptr,
                    rs_step: step,
                    col_scale,
                    bias,
                    relu: *relu,
                })
            }
            _ => None,
        }
    }

    /// Applies the step to a tile of exact accumulators and writes it to `out`
    /// (the whole `m × n` output, row stride `ldc`). See the module doc.
    ///
    /// # Panics
    /// If the tile lies outside the prepared `m × n` shape or `acc`/`out` are
    /// too short for it.
    pub fn apply(
        &self,
        acc: &[i32],
        acc_ld: usize,
        rows: Range<usize>,
        cols: Range<usize>,
        out: &mut [T],
        ldc: usize,
    ) {
        assert!(rows.end <= self.m && cols.end <= self.n && cols.start <= cols.end);
        if rows.is_empty() || cols.is_empty() {
            return;
        }
        let w = cols.end - cols.start;
        assert!(ldc >= cols.end && acc_ld >= w);
        assert!(acc.len() >= (rows.len() - 1) * acc_ld + w);
        assert!(out.len() >= (rows.end - 1) * ldc + cols.end);
        // SAFETY: bounds checked above; `out` is borrowed mutably.
        unsafe { self.apply_raw(acc, acc_ld, rows, cols, out.as_mut_ptr(), ldc) }
    }

    /// [`Epilogue::apply`] writing through a raw pointer to element (0, 0).
    ///
    /// # Safety
    /// `out` must be valid for writes of every `out[i * ldc + j]` of the tile,
    /// and no other thread may access those elements meanwhile; `rows`/`cols`
    /// within the prepared shape and `acc` long enough (as for `apply`).
    #[inline]
    pub unsafe fn apply_raw(
        &self,
        acc: &[i32],
        acc_ld: usize,
        rows: Range<usize>,
        cols: Range<usize>,
        out: *mut T,
        ldc: usize,
    ) {
        self.apply_inline(acc, acc_ld, rows, cols, out, ldc)
    }

    /// [`Epilogue::apply_raw`], always inlined (so a caller compiled for a
    /// wider ISA vectorises it with that ISA).
    ///
    /// # Safety
    /// As for [`Epilogue::apply_raw`].
    #[inline(always)]
    pub unsafe fn apply_inline(
        &self,
        acc: &[i32],
        acc_ld: usize,
        rows: Range<usize>,
        cols: Range<usize>,
        out: *mut T,
        ldc: usize,
    ) {
        let (c0, c1) = (cols.start, cols.end);
        let w = c1 - c0;
        let (lo, hi) = range_of(T::KIND);
        for (r, i) in rows.enumerate() {
            let a = &acc[r * acc_ld..r * acc_ld + w];
            let o = std::slice::from_raw_parts_mut(out.add(i * ldc + c0), w);
            match &self.step {
                Prepared::Int32 => {
                    for (o, &v) in o.iter_mut().zip(a) {
                        *o = T::from_i32(v);
                    }
                }
                Prepared::Float {
                    row_scale,
                    col_scale,
                    bias,
                    relu,
                    residual,
                    requant,
                } => {
                    let rs = row_scale.get(i);
                    let cs = &col_scale[c0..c1];
                    let b = &bias[c0..c1];
                    let res = residual
                        .as_ref()
                        .map(|(r, ld)| r.row(i * ld + c0..i * ld + c1));
                    if rs > WIDE_ROW_SCALE {
                        // A row whose range is near f32::MAX: f32(acc) * rs could overflow where the
                        // result fits, so this (rare) row forms the product in f64.
                        for j in 0..w {
                            let f = ((a[j] as f64 * rs as f64) * cs[j] as f64 + b[j] as f64) as f32;
                            let f = res.as_ref().map_or(f, |r| f + r.term(j));
                            let f = if *relu { f.max(0.0) } else { f };
                            o[j] = match requant {
                                None => T::from_f32(f),
                                Some((ys, yzp, qlo, qhi)) => {
                                    let (lof, hif) = ((qlo - yzp) as f32, (qhi - yzp) as f32);
                                    T::from_clamped(
                                        round_even_f32((f / ys).clamp(lof, hif)) as i32 + yzp,
                                    )
                                }
                            };
                        }
                        continue;
                    }
                    match (requant, res) {
                        (None, None) => float_row(a, rs, cs, b, *relu, o),
                        (None, Some(Residual::F32(r))) => {
                            let r = &r[..w];
                            float_add_row(a, rs, cs, b, |j| r[j], *relu, o)
                        }
                        (
                            None,
                            Some(Residual::U8 {
                                q,
                                scale,
                                zero_point,
                            }),
                        ) => {
                            let q = &q[..w];
                            let r = |j: usize| u8_term(q[j], scale, zero_point);
                            float_add_row(a, rs, cs, b, r, *relu, o)
                        }
                        (Some(q), res) => requant_row(a, rs, cs, b, res, *relu, *q, o),
                    }
                }
                Prepared::QLinear {
                    a_scale,
                    b_scale,
                    y_scale,
                    y_zero_point,
                } => {
                    let asc = a_scale.get(i);
                    let yz = *y_zero_point as f64;
                    let bs = &b_scale[c0..c1];
                    for j in 0..w {
                        let mult = (asc * bs[j]) / *y_scale;
                        let d = (a[j] as f64 * mult as f64 + yz).clamp(lo as f64, hi as f64);
                        o[j] = T::from_clamped(round_even_f64(d) as i32);
                    }
                }
            }
        }
    }
}

/// `f32(acc) * rs * cs + b`, ReLU: one row, written so that it vectorises.
#[inline(always)]
fn float_row<T: OutElem>(a: &[i32], rs: f32, cs: &[f32], b: &[f32], relu: bool, o: &mut [T]) {
    let w = o.len();
    let (a, cs, b) = (&a[..w], &cs[..w], &b[..w]);
    if relu {
        for j in 0..w {
            o[j] = T::from_f32(((a[j] as f32 * rs) * cs[j] + b[j]).max(0.0));
        }
    } else {
        for j in 0..w {
            o[j] = T::from_f32((a[j] as f32 * rs) * cs[j] + b[j]);
        }
    }
}

/// [`float_row`] plus a residual term `r(j)` before the ReLU (a fused `Add`;
/// the caller slices the residual to the row, so its bounds checks go).
#[inline(always)]
fn float_add_row<T: OutElem>(
    a: &[i32],
    rs: f32,
    cs: &[f32],
    b: &[f32],
    r: impl Fn(usize) -> f32,
    relu: bool,
    o: &mut [T],
) {
    let w = o.len();
    let (a, cs, b) = (&a[..w], &cs[..w], &b[..w]);
    if relu {
        for j in 0..w {
            o[j] = T::from_f32((((a[j] as f32 * rs) * cs[j] + b[j]) + r(j)).max(0.0));
        }
    } else {
        for j in 0..w {
            o[j] = T::from_f32(((a[j] as f32 * rs) * cs[j] + b[j]) + r(j));
        }
    }
}

/// The requantizing row: the float step (plus residual, ReLU), then
/// `QuantizeLinear` (true division, round half to even, zero point) and the
/// clamp to `[lo, hi]`. Branch-free lanes (compare-selects, the magic-number
/// rounding read back as integer bits, a truncating narrow) so every path's
/// `#[target_feature]` wrapper vectorises the same `f32` operations: the same
/// bytes on every ISA. `f` is never NaN here (finite parameters; an infinite
/// product only saturates).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn requant_row<T: OutElem>(
    a: &[i32],
    rs: f32,
    cs: &[f32],
    b: &[f32],
    res: Option<Residual<'_>>,
    relu: bool,
    (ys, yzp, lo, hi): (f32, i32, i32, i32),
    o: &mut [T],
) {
    let w = o.len();
    let (a, cs, b) = (&a[..w], &cs[..w], &b[..w]);
    let floor = if relu { 0.0 } else { f32::NEG_INFINITY };
    // Clamp the quotient to the bounds minus the zero point (integers: this
    // commutes with the rounding), so the rounding's operand stays tiny.
    let (lof, hif) = ((lo - yzp) as f32, (hi - yzp) as f32);
    #[inline(always)]
    fn lane(f: f32, floor: f32, ys: f32, lof: f32, hif: f32, yzp: i32) -> i32 {
        let f = if f < floor { floor } else { f };
        let t = f / ys;
        let t = if t < lof { lof } else { t };
        let t = if t > hif { hif } else { t };
        (t + ROUND_MAGIC).to_bits() as i32 - ROUND_MAGIC_BITS + yzp
    }
    match res {
        None => {
            for j in 0..w {
                let f = (a[j] as f32 * rs) * cs[j] + b[j];
                o[j] = T::from_clamped(lane(f, floor, ys, lof, hif, yzp));
            }
        }
        Some(Residual::F32(r)) => {
            let r = &r[..w];
            for j in 0..w {
                let f = ((a[j] as f32 * rs) * cs[j] + b[j]) + r[j];
                o[j] = T::from_clamped(lane(f, floor, ys, lof, hif, yzp));
            }
        }
        Some(Residual::U8 {
            q,
            scale,
            zero_point,
        }) => {
            let q = &q[..w];
            for j in 0..w {
                let f = ((a[j] as f32 * rs) * cs[j] + b[j]) + u8_term(q[j], scale, zero_point);
                o[j] = T::from_clamped(lane(f, floor, ys, lof, hif, yzp));
            }
        }
    }
}

/// `1.5 · 2^23`: `(t + MAGIC)` rounds `t` (|t| <= 2^22) half to even and
/// holds the integer in its low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
const ROUND_MAGIC_BITS: i32 = 0x4B40_0000;

/// Above this row scale `f32(acc) * row_scale` may overflow for an int32
/// accumulator (|acc| <= 2^31); rows past it take the f64 path.
const WIDE_ROW_SCALE: f32 = f32::MAX / 2_147_483_648.0;

/// Round half to even for |v| <= 2^22 without a libm call (vectorises on
/// baseline x86-64): adding and subtracting 1.5·2^23 rounds to an integer in
/// the default round-to-nearest-even mode.
#[inline(always)]
pub fn round_even_f32(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + MAGIC) - MAGIC
}

/// [`round_even_f32`] for f64, |v| <= 2^51.
#[inline(always)]
pub fn round_even_f64(v: f64) -> f64 {
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52
    (v + MAGIC) - MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_rounding_matches_round_ties_even() {
        let mut v = -300.0f32;
        while v <= 300.0 {
            assert_eq!(round_even_f32(v), v.round_ties_even(), "{v}");
            assert_eq!(
                round_even_f64(v as f64),
                (v as f64).round_ties_even(),
                "{v}"
            );
            v += 0.125;
        }
        for v in [
            0.5f32, 1.5, 2.5, -0.5, -2.5, 254.5, 0.49999997, 1e-30, -1e-30, 4194303.5,
        ] {
            assert_eq!(round_even_f32(v), v.round_ties_even(), "{v}");
        }
        for v in [
            0.49999999999999994f64,
            2147483647.5,
            -2147483648.5,
            1e15 + 0.5,
        ] {
            assert_eq!(round_even_f64(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn requant_rounds_half_even_and_saturates() {
        let step = OutputStep::Requant {
            row_scale: Param::Scalar(1.0),
            col_scale: Param::Scalar(1.0),
            bias: None,
            relu: false,
            y_scale: 2.0,
            y_zero_point: 10,
        };
        let ep = step.prepare::<u8>(1, 5).unwrap();
        let mut out = [0u8; 5];
        ep.apply(&[1, 3, 5, -1000, 1000], 5, 0..1, 0..5, &mut out, 5);
        assert_eq!(out, [10, 12, 12, 0, 255]);
    }

    #[test]
    fn a_huge_row_scale_does_not_overflow_a_result_that_fits() {
        // Row 0 has the scale of a row spanning about f32::MAX; row 1 an ordinary one.
        let step = OutputStep::Float {
            row_scale: Param::PerIndex(&[2.6e36, 0.5]),
            col_scale: Param::PerIndex(&[1e-6, 2.0]),
            bias: None,
            relu: false,
        };
        let ep = step.prepare::<f32>(2, 2).unwrap();
        let mut out = [0f32; 4];
        ep.apply(&[40_000, -300_000, 7, -7], 2, 0..2, 0..2, &mut out, 2);
        let want0 = ((40_000f64 * 2.6e36f32 as f64) * 1e-6f32 as f64) as f32;
        assert!(
            want0.is_finite() && (out[0] - want0).abs() <= want0.abs() * 1e-6,
            "{}",
            out[0]
        );
        assert_eq!(out[1], f32::NEG_INFINITY); // -3e5 * 2.6e36 * 2 is past f32::MAX: inf of its sign
        assert_eq!(&out[2..], &[(7.0f32 * 0.5) * 1e-6, (-7.0f32 * 0.5) * 2.0]); // the f32 formula, unchanged
    }

    /// Deterministic pseudo-random values in `[0, 1)`.
    fn uniform(n: usize, seed: u64) -> Vec<f32> {
        crate::gemm::tests::bytes(n, seed)
            .iter()
            .map(|&b| b as f32 / 256.0)
            .collect()
    }

    /// The fused step's documented formula, element by element, with the one
    /// activation quantizer (`quant::quant1`) as the reference of the bytes.
    #[allow(clippy::too_many_arguments)]
    fn fused_ref(
        acc: &[i32],
        m: usize,
        n: usize,
        rs: &[f32],
        cs: &[f32],
        b: &[f32],
        res: Option<&[f32]>,
        relu: bool,
        q: Option<Requant>,
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut f = (acc[i * n + j] as f32 * rs[i]) * cs[j] + b[j];
                if let Some(r) = res {
                    f += r[i * n + j];
                }
                if relu {
                    f = f.max(0.0);
                }
                out[i * n + j] = match q {
                    None => f,
                    Some(q) => {
                        let z = q.y_zero_point as f32;
                        let v = crate::quant::quant1(f, q.y_scale, z, 0.0, 255.0) as i32;
                        v.clamp(q.lo, q.hi) as f32
                    }
                };
            }
        }
        out
    }

    #[test]
    fn the_fused_step_is_the_same_bytes_on_every_isa_and_equals_quantize_linear() {
        use crate::cpu::each_isa;
        use crate::exec::Ctx;
        use crate::gemm::{self, ASource, PackedB, ZeroPoint};
        // Sizes past every kernel's tile (and odd ones) with the GEMM's own accumulators.
        for &(m, k, n) in &[(1, 7, 5), (5, 33, 70), (13, 64, 129), (40, 19, 3)] {
            let a: Vec<u8> = uniform(m * k, 1)
                .iter()
                .map(|v| (v * 256.0) as u8)
                .collect();
            let w: Vec<i8> = uniform(k * n, 2)
                .iter()
                .map(|v| (v * 255.0 - 127.0) as i8)
                .collect();
            let packed =
                PackedB::from_kn_i8(&Ctx::serial(), &w, k, n, ZeroPoint::Scalar(0)).unwrap();
            let rs: Vec<f32> = vec![0.013; m];
            let cs: Vec<f32> = uniform(n, 3).iter().map(|v| 0.002 + v * 0.01).collect();
            let b: Vec<f32> = uniform(n, 4).iter().map(|v| v * 4.0 - 2.0).collect();
            let res: Vec<f32> = uniform(m * n, 5).iter().map(|v| v * 6.0 - 3.0).collect();
            // A uint8 residual on its grid, and its float terms for the reference.
            let (res_q, rq_scale, rq_zp) = (crate::gemm::tests::bytes(m * n, 6), 0.025f32, 131);
            let res_q_terms: Vec<f32> = res_q
                .iter()
                .map(|&q| ((q as i32 - rq_zp) as f32) * rq_scale)
                .collect();
            let zp = 117;
            let mut acc = vec![0i32; m * n];
            let ctx = Ctx::serial();
            gemm::matmul(
                &ctx,
                ASource::U8(&a),
                m,
                k,
                ZeroPoint::Scalar(zp),
                &packed,
                &OutputStep::Int32,
                &mut acc,
            )
            .unwrap();
            // A scale that puts many quotients on exact halves, and an ordinary one.
            for &(ys, yzp, lo, hi) in &[
                (0.03125f32, 9, 0, 255),
                (0.0371, 128, 100, 230),
                (0.05, 0, 0, 255),
            ] {
                for &relu in &[false, true] {
                    for with_res in ["none", "f32", "u8"] {
                        let q = Requant {
                            y_scale: ys,
                            y_zero_point: yzp,
                            lo,
                            hi,
                        };
                        let (r, residual) = match with_res {
                            "f32" => (Some(res.as_slice()), Some(Residual::F32(&res))),
                            "u8" => (
                                Some(res_q_terms.as_slice()),
                                Some(Residual::U8 {
                                    q: &res_q,
                                    scale: rq_scale,
                                    zero_point: rq_zp,
                                }),
                            ),
                            _ => (None, None),
                        };
                        let want = fused_ref(&acc, m, n, &rs, &cs, &b, r, relu, Some(q));
                        let want_f = fused_ref(&acc, m, n, &rs, &cs, &b, r, relu, None);
                        let mk = |requant| {
                            OutputStep::Fused(Fused {
                                row_scale: Param::Scalar(0.013),
                                col_scale: Param::PerIndex(&cs),
                                bias: Some(&b),
                                residual: residual.map(|r| (r, n)),
                                relu,
                                requant,
                            })
                        };
                        let (step_q, step_f) = (mk(Some(q)), mk(None));
                        each_isa(|isa| {
                            for ctx in [Ctx::serial(), Ctx::new(2)] {
                                let mut y = vec![0u8; m * n];
                                gemm::matmul(
                                    &ctx,
                                    ASource::U8(&a),
                                    m,
                                    k,
                                    ZeroPoint::Scalar(zp),
                                    &packed,
                                    &step_q,
                                    &mut y,
                                )
                                .unwrap();
                                let got: Vec<f32> = y.iter().map(|&v| v as f32).collect();
                                assert_eq!(
                                    got, want,
                                    "{isa:?} {m}x{k}x{n} ys {ys} relu {relu} res {with_res}"
                                );
                                let mut yf = vec![0f32; m * n];
                                gemm::matmul(
                                    &ctx,
                                    ASource::U8(&a),
                                    m,
                                    k,
                                    ZeroPoint::Scalar(zp),
                                    &packed,
                                    &step_f,
                                    &mut yf,
                                )
                                .unwrap();
                                assert_eq!(
                                    yf.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                                    want_f.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                                    "{isa:?} float"
                                );
                            }
                        });
                    }
                }
            }
        }
    }

    #[test]
    fn fused_step_rounds_half_even_clamps_and_checks_its_arguments() {
        let q = Requant {
            y_scale: 2.0,
            y_zero_point: 10,
            lo: 11,
            hi: 250,
        };
        let step = OutputStep::Fused(Fused {
            row_scale: Param::Scalar(1.0),
            col_scale: Param::Scalar(1.0),
            bias: None,
            residual: Some((Residual::F32(&[0.0, 0.0, 2.0, 0.0, 0.0, 0.0]), 6)),
            relu: false,
            requant: Some(q),
        });
        let ep = step.prepare::<u8>(1, 6).unwrap();
        let mut out = [0u8; 6];
        ep.apply(&[1, 3, 3, 5, -1000, 1000], 6, 0..1, 0..6, &mut out, 6);
        // 0.5 -> 0, 1.5 -> 2, (3+2)/2 = 2.5 -> 2, 2.5 -> 2; then the clamp [11, 250].
        assert_eq!(out, [11, 12, 12, 12, 11, 250]);
        assert!(
            step.prepare::<f32>(1, 6).is_err(),
            "a quantized step writes u8 / i8"
        );
        assert!(
            step.prepare::<u8>(2, 6).is_err(),
            "the residual covers one row only"
        );
        let bad = |q: Requant| {
            OutputStep::Fused(Fused {
                row_scale: Param::Scalar(1.0),
                col_scale: Param::Scalar(1.0),
                bias: None,
                residual: None,
                relu: false,
                requant: Some(q),
            })
        };
        assert!(bad(Requant { lo: 5, hi: 4, ..q })
            .prepare::<u8>(1, 1)
            .is_err());
        assert!(bad(Requant { lo: -1, ..q }).prepare::<u8>(1, 1).is_err());
        assert!(bad(Requant { y_scale: 0.0, ..q })
            .prepare::<u8>(1, 1)
            .is_err());
        assert!(bad(Requant {
            lo: -128,
            hi: 127,
            y_zero_point: 0,
            ..q
        })
        .prepare::<i8>(1, 1)
        .is_ok());
    }

    /// `prepare_checked` writes what `prepare` writes for good parameters,
    /// and still refuses a wrong output type, length, grid or clamp; it only
    /// skips the scan of the scale values.
    #[test]
    fn a_checked_step_writes_the_prepared_steps_values_and_checks_every_length() {
        let cs = [0.5f32, 2.0, 0.25];
        let b = [0.1f32, -0.2, 0.3];
        let acc = [7, -9, 1000, -3, 0, 41];
        let res = [0.5f32; 6];
        let q = Requant {
            y_scale: 0.5,
            y_zero_point: 3,
            lo: 3,
            hi: 250,
        };
        for requant in [None, Some(q)] {
            for residual in [None, Some((Residual::F32(&res[..]), 3))] {
                let step = OutputStep::Fused(Fused {
                    row_scale: Param::PerIndex(&[0.75, 1.5]),
                    col_scale: Param::PerIndex(&cs),
                    bias: Some(&b),
                    residual,
                    relu: true,
                    requant,
                });
                if requant.is_none() {
                    let (mut a, mut c) = ([0f32; 6], [1f32; 6]);
                    step.prepare::<f32>(2, 3)
                        .unwrap()
                        .apply(&acc, 3, 0..2, 0..3, &mut a, 3);
                    step.prepare_checked::<f32>(2, 3).unwrap().apply(
                        &acc,
                        3,
                        0..2,
                        0..3,
                        &mut c,
                        3,
                    );
                    assert_eq!(a.map(f32::to_bits), c.map(f32::to_bits));
                    assert!(step.prepare_checked::<u8>(2, 3).is_err(), "a float step");
                } else {
                    let (mut a, mut c) = ([0u8; 6], [1u8; 6]);
                    step.prepare::<u8>(2, 3)
                        .unwrap()
                        .apply(&acc, 3, 0..2, 0..3, &mut a, 3);
                    step.prepare_checked::<u8>(2, 3)
                        .unwrap()
                        .apply(&acc, 3, 0..2, 0..3, &mut c, 3);
                    assert_eq!(a, c);
                }
                assert!(
                    step.prepare_checked::<f32>(3, 3).is_err(),
                    "3 rows, 2 row scales"
                );
                assert!(
                    step.prepare_checked::<f32>(2, 4).is_err(),
                    "4 columns, 3 scales"
                );
            }
        }
        let bad_zp = OutputStep::Requant {
            row_scale: Param::Scalar(1.0),
            col_scale: Param::Scalar(1.0),
            bias: None,
            relu: false,
            y_scale: 1.0,
            y_zero_point: 300,
        };
        assert!(
            bad_zp.prepare_checked::<u8>(1, 1).is_err(),
            "the zero point is out of range"
        );
        let short_bias = OutputStep::Float {
            row_scale: Param::Scalar(1.0),
            col_scale: Param::Scalar(1.0),
            bias: Some(&[0.0]),
            relu: false,
        };
        assert!(
            short_bias.prepare_checked::<f32>(1, 2).is_err(),
            "a bias of 1 for 2 columns"
        );
    }

    #[test]
    fn wrong_type_or_length_is_an_error() {
        assert!(OutputStep::Int32.prepare::<f32>(1, 1).is_err());
        let step = OutputStep::QLinear {
            a_scale: Param::PerIndex(&[1.0, 2.0]),
            b_scale: Param::Scalar(1.0),
            y_scale: 1.0,
            y_zero_point: 0,
        };
        assert!(step.prepare::<i8>(3, 1).is_err());
        let step = OutputStep::QLinear {
            a_scale: Param::Scalar(0.0),
            b_scale: Param::Scalar(1.0),
            y_scale: 1.0,
            y_zero_point: 0,
        };
        assert!(step.prepare::<i8>(1, 1).is_err());
    }
}
