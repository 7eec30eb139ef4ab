//! Exact int8 GEMM: packing, per-ISA micro-kernels, dispatch and the fused output step.
//!
//! Every case (u8 or s8 A, u8 or s8 B, scalar / per-row / per-column zero
//! points) maps onto one product of a `u8` matrix `Â = a + a_off` and an `i8`
//! matrix `B̂ = b + b_off` (see [`pack`]); zero points are folded into row and
//! column sums. With `za' = za + a_off`, `zb' = zb + b_off`:
//!
//! ```text
//! Σ_k (a-za)(b-zb) = Σ_k Â·B̂ - za'·(colsum B̂ - K·zb') - zb'·rowsum Â      (wrapping i32)
//! ```
//!
//! All sums wrap in `i32`; the result is exact whenever the true value fits
//! `i32`, which `pack::check_bound` guarantees up front
//! (`K · max|a-za| · max|b-zb| ≤ 2^31-1`, else a `Value` error naming K).
//!
//! The driver (`run`, `block`) is generic over a `kernel::Kernel` (one
//! zero-sized struct per ISA in `arch/`) and never names an ISA; [`matmul`]
//! takes the driver instantiated for the active path from
//! [`crate::cpu::dispatch`] once per call. Loops, in the BLIS style:
//!
//! * threads ([`crate::exec::team`]: the caller and workers that stay awake briefly
//!   between calls): the `M × N` output is split over rows, one chunk per
//!   thread, when B is small or `M >= N`, else over column blocks (each
//!   thread streams its share of B once; GEMV with `M = 1` included); serial
//!   below `GEMM_PARALLEL_MIN_WORK` (1M) MACs;
//! * A: packed per call into a reused per-thread buffer (row sums beside),
//!   or read in place when it is uint8 with K a multiple of 4 and B's zero
//!   points are 0; a convolution's A ([`ARows::Conv`]) is unfolded from the
//!   NHWC image one row block at a time, by the thread that multiplies it,
//!   into a small buffer of that thread (no `M × K` column matrix);
//! * LOOP 3: row blocks of `MC` rows (A block stays in L2);
//! * LOOP 2: column blocks of `NP` panels (`16·NP` columns of packed B);
//! * LOOP 4: K blocks of `4·KC_GROUPS` = 1024 k (the accumulators stay in
//!   registers over the whole block; that slice of B streams from L2);
//! * LOOP 1: row tiles of `MR` rows (the micro-kernel accumulates into an i32
//!   block buffer and applies the zero-point correction in registers after the
//!   last K block); then the [`output`] step runs on the block while it is hot.
//!
//! Tiles: AVX-512 VNNI 6 rows × 64 columns (24 zmm accumulators, no spills),
//! 1 × 128 for a single row; AVX2 3 × 16 (12 ymm accumulators; one spills to
//! L1 off the critical path), 1 × 48 for a single row; portable 4 × 16.

#[doc(hidden)]
pub mod arch;
pub(crate) mod b_per_call;
mod kernel;
pub mod output;
pub mod pack;
pub(crate) mod reuse;
pub(crate) mod row1;
pub(crate) mod tiny;

pub use crate::conv::nhwc::ConvRows;
use crate::cpu;
use crate::error::Result;
use crate::exec::{self, Ctx, SyncPtr};
use crate::{shape_err, value_err};
pub(crate) use b_per_call::b_rows_with;
pub use b_per_call::{matmul_b_rows, matmul_b_rows_vec, RowsB};
use kernel::Kernel;
use output::{Epilogue, OutElem, OutputStep, Param};
pub use pack::{ASource, PackedB, ZeroPoint, NR};
use std::mem::MaybeUninit;

/// `C = (A - za) · (B - zb)` followed by the output step `step`, written to
/// `out` (row-major `M × N`, `T` as the step requires: `i32` for
/// [`OutputStep::Int32`], `f32` for `Float`, `u8`/`i8` for requantized output).
///
/// `a` is row-major `M × K`; `a_zp` scalar or one per row; B is packed (its
/// zero points are inside it).
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: OutElem>(
    ctx: &Ctx,
    a: ASource<'_>,
    m: usize,
    k: usize,
    a_zp: ZeroPoint<'_>,
    b: &PackedB,
    step: &OutputStep<'_>,
    out: &mut [T],
) -> Result<()> {
    matmul_uninit(ctx, a, m, k, a_zp, b, step, as_uninit(out))
}

/// [`matmul`] into uninitialised memory (e.g. `Vec::spare_capacity_mut`):
/// on `Ok`, every element of `out` has been written.
#[allow(clippy::too_many_arguments)]
pub fn matmul_uninit<T: OutElem>(
    ctx: &Ctx,
    a: ASource<'_>,
    m: usize,
    k: usize,
    a_zp: ZeroPoint<'_>,
    b: &PackedB,
    step: &OutputStep<'_>,
    out: &mut [MaybeUninit<T>],
) -> Result<()> {
    matmul_rows_uninit(ctx, ARows::Matrix(a), m, k, a_zp, b, step, out)
}

/// Where the rows of A come from: a matrix, or the column matrix of a
/// convolution, unfolded block by block where the micro-kernel reads it
/// (see the module docs).
#[derive(Debug, Clone, Copy)]
pub enum ARows<'a> {
    /// Row-major `M × K`.
    Matrix(ASource<'a>),
    /// The unfold of NHWC uint8 images (`M` its rows); `K` may exceed its
    /// `c·kh·kw` columns (weights padded by [`PackedB::padded_k`]): the
    /// columns past them hold 0.
    Conv(ConvRows<'a>),
}

/// [`matmul`] of A from any [`ARows`]: for a convolution, the product of
/// its column matrix (`m` rows) with B, bit for bit, without that matrix.
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows<T: OutElem>(
    ctx: &Ctx,
    a: ARows<'_>,
    m: usize,
    k: usize,
    a_zp: ZeroPoint<'_>,
    b: &PackedB,
    step: &OutputStep<'_>,
    out: &mut [T],
) -> Result<()> {
    matmul_rows_step(ctx, a, m, k, a_zp, b, step, true, as_uninit(out))
}

/// [`matmul_rows`] into uninitialised memory: on `Ok`, every element of
/// `out` has been written.
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows_uninit<T: OutElem>(
    ctx: &Ctx,
    a: ARows<'_>,
    m: usize,
    k: usize,
    a_zp: ZeroPoint<'_>,
    b: &PackedB,
    step: &OutputStep<'_>,
    out: &mut [MaybeUninit<T>],
) -> Result<()> {
    matmul_rows_step(ctx, a, m, k, a_zp, b, step, true, out)
}

/// [`matmul_rows`] for a caller that checked the step's scale values once,
/// when it was built (the graph plan): [`OutputStep::prepare_checked`]
/// instead of `prepare`, every other check as in [`matmul_rows`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_rows_checked<T: OutElem>(
    ctx: &Ctx,
    a: ARows<'_>,
    m: usize,
    k: usize,
    a_zp: ZeroPoint<'_>,
    b: &PackedB,
    step: &OutputStep<'_>,
    out: &mut [T],
) -> Result<()> {
    matmul_rows_step(ctx, a, m, k, a_zp, b, step, false, as_uninit(out))
}

#[allow(clippy::too_many_arguments)]
fn matmul_rows_step<T: OutElem>(
    ctx: &Ctx,
    a: ARows<'_>,
    m: usize,
    k: usize,
    a_zp: ZeroPoint<'_>,
    b: &PackedB,
    step: &OutputStep<'_>,
    values: bool,
    out: &mut [MaybeUninit<T>],
) -> Result<()> {
    if k != b.k {
        return shape_err!("A has K = {k} columns but B has K = {} rows", b.k);
    }
    let a = match a {
        ARows::Conv(cv) => match cv.as_matrix(k) {
            // A 1x1 convolution's image already is its column matrix.
            Some(x) => ARows::Matrix(ASource::U8(x)),
            None => a,
        },
        ARows::Matrix(_) => a,
    };
    let a_max = match &a {
        ARows::Matrix(a) => pack::check_a(a, m, k, a_zp)?,
        ARows::Conv(cv) => {
            if cv.rows() != m || cv.taps() > k {
                return shape_err!(
                    "a convolution's column matrix is ({}, {}); expected M = {m} rows and at \
                     most K = {k} columns",
                    cv.rows(),
                    cv.taps()
                );
            }
            a_zp.check("a_zero_point", m, 0, 255)?;
            a_zp.max_abs_diff(0, 255)
        }
    };
    pack::check_bound(k, a_max, b.max_abs)?;
    check_out(out.len(), m, b.n)?;
    let ep = if values {
        step.prepare::<T>(m, b.n)?
    } else {
        step.prepare_checked::<T>(m, b.n)?
    };
    if out.is_empty() {
        return Ok(()); // (m, 0) or (0, n): nothing to write, and no per-row buffers for m rows
    }
    (T::matmul_entry(&cpu::dispatch().gemm))(ctx, &a, m, k, a_zp, b, &ep, out);
    Ok(())
}

/// The float-in / float-out int8 linear layer step: each row of `x`
/// (`M × K`, f32) is quantized on the fly to uint8 with its own scale and zero
/// point ([`crate::quant::rows`], the one activation quantizer), multiplied by the packed int8 weights
/// and written as `f32`: `acc · x_scale[i] · col_scale[j] + bias[j]` (+ ReLU).
#[allow(clippy::too_many_arguments)]
pub fn linear_dynamic(
    ctx: &Ctx,
    x: &[f32],
    m: usize,
    k: usize,
    b: &PackedB,
    col_scale: Param<'_>,
    bias: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) -> Result<()> {
    linear_dynamic_uninit(ctx, x, m, k, b, col_scale, bias, relu, as_uninit(out))
}

/// [`linear_dynamic`] into uninitialised memory: on `Ok`, every element of
/// `out` has been written.
#[allow(clippy::too_many_arguments)]
pub fn linear_dynamic_uninit(
    ctx: &Ctx,
    x: &[f32],
    m: usize,
    k: usize,
    b: &PackedB,
    col_scale: Param<'_>,
    bias: Option<&[f32]>,
    relu: bool,
    out: &mut [MaybeUninit<f32>],
) -> Result<()> {
    linear_dynamic_step(ctx, x, m, k, b, col_scale, bias, relu, true, out)
}

/// [`linear_dynamic`] for a caller that checked the column scales once,
/// when it was built (the graph plan): their lengths and the bias's are
/// still checked, their values not scanned again.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_dynamic_checked(
    ctx: &Ctx,
    x: &[f32],
    m: usize,
    k: usize,
    b: &PackedB,
    col_scale: Param<'_>,
    bias: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) -> Result<()> {
    linear_dynamic_step(
        ctx,
        x,
        m,
        k,
        b,
        col_scale,
        bias,
        relu,
        false,
        as_uninit(out),
    )
}

#[allow(clippy::too_many_arguments)]
fn linear_dynamic_step(
    ctx: &Ctx,
    x: &[f32],
    m: usize,
    k: usize,
    b: &PackedB,
    col_scale: Param<'_>,
    bias: Option<&[f32]>,
    relu: bool,
    values: bool,
    out: &mut [MaybeUninit<f32>],
) -> Result<()> {
    if k != b.k {
        return shape_err!(
            "x has {k} features but the weight has in_features = {}",
            b.k
        );
    }
    if m.checked_mul(k) != Some(x.len()) {
        return shape_err!("x has {} elements, expected {m}*{k}", x.len());
    }
    pack::check_bound(k, 255, b.max_abs)?;
    check_out(out.len(), m, b.n)?;
    // Validate the column parameters before quantizing (the driver's own
    // step only checks lengths: these values and the quantizer's row scales
    // are known good then).
    let cols = OutputStep::Float {
        row_scale: Param::Scalar(1.0),
        col_scale,
        bias,
        relu,
    };
    if values {
        cols.prepare::<f32>(m, b.n)?;
    } else {
        cols.prepare_checked::<f32>(m, b.n)?;
    }
    if out.is_empty() && k == 0 {
        return Ok(()); // no value to quantize or write; no per-row buffers for m empty rows
    }
    (cpu::dispatch().gemm.linear)(ctx, x, m, k, b, col_scale, bias, relu, out)
}

/// [`matmul`] into a new `M × N` vector.
pub fn matmul_vec<T: OutElem>(
    ctx: &Ctx,
    a: ASource<'_>,
    m: usize,
    k: usize,
    a_zp: ZeroPoint<'_>,
    b: &PackedB,
    step: &OutputStep<'_>,
) -> Result<Vec<T>> {
    filled(m, b.n, |out| {
        matmul_uninit(ctx, a, m, k, a_zp, b, step, out)
    })
}

/// [`linear_dynamic`] into a new `M × N` vector.
#[allow(clippy::too_many_arguments)]
pub fn linear_dynamic_vec(
    ctx: &Ctx,
    x: &[f32],
    m: usize,
    k: usize,
    b: &PackedB,
    col_scale: Param<'_>,
    bias: Option<&[f32]>,
    relu: bool,
) -> Result<Vec<f32>> {
    filled(m, b.n, |out| {
        linear_dynamic_uninit(ctx, x, m, k, b, col_scale, bias, relu, out)
    })
}

/// A vector of `m * n` elements written by `fill` (which, on `Ok`, wrote
/// every one of them).
fn filled<T>(
    m: usize,
    n: usize,
    fill: impl FnOnce(&mut [MaybeUninit<T>]) -> Result<()>,
) -> Result<Vec<T>> {
    let len = match m.checked_mul(n) {
        Some(l) if l <= isize::MAX as usize / std::mem::size_of::<T>().max(1) => l,
        _ => return shape_err!("output of shape ({m}, {n}) is too large"),
    };
    let mut out = Vec::new();
    if out.try_reserve_exact(len).is_err() {
        return Err(crate::error::Error::Alloc(format!(
            "cannot allocate an output of shape ({m}, {n})"
        )));
    }
    fill(&mut out.spare_capacity_mut()[..len])?;
    // SAFETY: on Ok, `fill` wrote all `len` elements.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// `&mut [T]` as `&mut [MaybeUninit<T>]` (sound: we only ever write initialised values).
fn as_uninit<T>(out: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: MaybeUninit<T> has T's layout; writing a valid T keeps `out` valid.
    unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut MaybeUninit<T>, out.len()) }
}

fn check_out(len: usize, m: usize, n: usize) -> Result<()> {
    if m.checked_mul(n) != Some(len) {
        return shape_err!("output has {len} elements, expected M*N = {m}*{n}");
    }
    Ok(())
}

/// Whether `work` multiply-accumulates (or bytes) are worth the thread pool.
/// Parallel iterators must only run inside [`Ctx::run`] when this holds:
/// outside the library pool they would wake rayon's global pool.
pub(crate) fn parallel(ctx: &Ctx, work: usize) -> bool {
    work >= GEMM_PARALLEL_MIN_WORK && ctx.threads() > 1
}

/// Chunk `c` of `0..units` cut into `chunks` pieces that shrink in steps
/// (sizes in proportion to `2·(chunks − c) − 1`), for tasks that the team
/// hands out in order from its counter: the big ones go first, and the
/// thread that finishes last waits on a small one (with equal pieces, a
/// single row of 1×4096×4096 on 2 threads left one idle for up to an
/// eighth of the call). Some may be empty when `units` is small.
pub(crate) fn guided(units: usize, chunks: usize, c: usize) -> std::ops::Range<usize> {
    let sq = chunks * chunks;
    let at = |c: usize| units - units * (chunks - c) * (chunks - c) / sq;
    at(c)..at(c + 1)
}

/// What writing one output element (correction, output step, store) costs,
/// in multiply-accumulates, for the thread decisions: a product with a short
/// K is mostly output (the first convolution of the digits CNN, 4096×9×16
/// into float, ran on one thread as 0.6M MACs but cost as much as 3M).
pub(crate) const OUTPUT_MACS: usize = 32;

/// Below this many multiply-accumulates (or bytes packed) a GEMM call stays on
/// the caller's thread. Starting the [`crate::exec::team`] costs a few
/// microseconds when its workers are awake; measured side by side on the
/// 2-vCPU machine, two threads already win at 1M MACs (1×1024×1024 1.4×,
/// 256×64×128 1.5×, 32×256×256 1.4×) and break even at 64×144×32.
pub const GEMM_PARALLEL_MIN_WORK: usize = 1 << 20;

/// A packed: rows of `kp` kernel elements, row sums of Â and stored zero points.
struct PackedA<'a, E: pack::PlainElem> {
    data: AData<'a, E>,
    kp: usize,
    rowsum: reuse::Reused<i32>,
    zp: reuse::Reused<i32>,
}

/// Packs every row with `row(i, u8_dst) -> (rowsum, stored zp)` (which
/// writes the `kp` bytes of row `i`), in row chunks spread over the team for
/// big A.
fn pack_a<'a, Kr: Kernel>(
    ctx: &Ctx,
    m: usize,
    k: usize,
    row: impl Fn(usize, &mut [u8]) -> (i32, i32) + Sync,
) -> PackedA<'a, Kr::AElem> {
    let kp = pack::round_up(k, 4);
    let mut data = pack::AScratch::<Kr::AElem>::new(m * kp);
    let mut rowsum = reuse::Reused::new(&reuse::ROWSUM, m, 0);
    let mut zp = reuse::Reused::new(&reuse::ZP, m, 0);
    if kp == 0 {
        for i in 0..m {
            (rowsum[i], zp[i]) = row(i, &mut []);
        }
        return PackedA {
            data: AData::Packed(data),
            kp,
            rowsum,
            zp,
        };
    }
    // Several chunks per thread once A is big enough to share (packing or
    // quantizing a row costs about as much as 16 MACs per element).
    let nt = ctx.threads();
    let shared = m * k >= PACK_A_PARALLEL_MIN && nt > 1;
    let rows_per = if shared { m.div_ceil(4 * nt).max(8) } else { m };
    let (dp, sp, zpp) = (
        SyncPtr(data.as_mut_slice().as_mut_ptr()),
        SyncPtr(rowsum.as_mut_ptr()),
        SyncPtr(zp.as_mut_ptr()),
    );
    let chunk = |c: usize| {
        // The byte row of a kernel that widens A: on the stack for the usual K
        // (a heap vector per call was a third of a small layer's setup).
        let mut stack = [0u8; TMP_ROW_BYTES];
        let mut heap = Vec::new();
        let tmp: &mut [u8] = if kp <= TMP_ROW_BYTES {
            &mut stack[..kp]
        } else if <Kr::AElem as pack::PlainElem>::row_bytes(&mut []).is_none() {
            heap.resize(kp, 0u8);
            &mut heap
        } else {
            &mut []
        };
        for i in c * rows_per..((c + 1) * rows_per).min(m) {
            // SAFETY: chunks cover disjoint rows; each row index is visited once.
            let (drow, s, z) = unsafe {
                (
                    std::slice::from_raw_parts_mut(dp.get().add(i * kp), kp),
                    &mut *sp.get().add(i),
                    &mut *zpp.get().add(i),
                )
            };
            (*s, *z) = match <Kr::AElem as pack::PlainElem>::row_bytes(drow) {
                Some(bytes) => row(i, bytes),
                None => {
                    let r = row(i, tmp);
                    <Kr::AElem as pack::PlainElem>::widen(tmp, drow);
                    r
                }
            };
        }
    };
    let work = if shared { exec::PARALLEL_MIN_WORK } else { 0 };
    ctx.for_each_task(work, m.div_ceil(rows_per.max(1)), chunk);
    PackedA {
        data: AData::Packed(data),
        kp,
        rowsum,
        zp,
    }
}

/// Bytes of the on-stack row of [`pack_a`] (K up to this needs no heap row).
const TMP_ROW_BYTES: usize = 1024;

/// Elements of A from which packing (or quantizing) it is shared by the team.
const PACK_A_PARALLEL_MIN: usize = 1 << 14;

/// Rows of A as the kernel reads them: packed, the caller's uint8 rows
/// themselves when they already are the packed form, or a convolution's
/// rows that [`block`] unfolds one row block at a time.
enum AData<'a, E: pack::PlainElem> {
    Packed(pack::AScratch<E>),
    /// Only for kernels with `AElem = u8` ([`pack::PlainElem::row_bytes`]).
    Bytes(&'a [u8]),
    /// Unfolded by the thread that multiplies each row block, into its own
    /// buffer, with the block's zero points from `zp` and, when `sums`
    /// (a zero point of B is not 0), its row sums; `rowsum` and `zp` of
    /// [`PackedA`] are empty.
    Conv {
        rows: ConvRows<'a>,
        zp: ZeroPoint<'a>,
        sums: bool,
    },
}

impl<E: pack::PlainElem> AData<'_, E> {
    /// Row 0 (null for `Conv`: its rows live in each thread's block buffer).
    fn ptr(&self) -> *const E {
        match self {
            AData::Packed(d) => d.as_slice().as_ptr(),
            AData::Bytes(b) => b.as_ptr() as *const E,
            AData::Conv { .. } => std::ptr::null(),
        }
    }
}

/// A without a copy: a uint8 A whose K is a multiple of 4 already has the
/// layout a byte kernel reads, and when every stored zero point of B is 0
/// (`zb_zero`: symmetric int8 weights) the row sums of A are not needed either.
fn borrow_a<'a, Kr: Kernel>(
    a: &ASource<'a>,
    m: usize,
    k: usize,
    a_zp: ZeroPoint<'_>,
    zb_zero: bool,
) -> Option<PackedA<'a, Kr::AElem>> {
    match a {
        ASource::U8(src)
            if k > 0
                && k.is_multiple_of(4)
                && <Kr::AElem as pack::PlainElem>::row_bytes(&mut []).is_some()
                && zb_zero =>
        {
            Some(PackedA {
                data: AData::Bytes(src),
                kp: k,
                rowsum: reuse::Reused::new(&reuse::ROWSUM, m, 0),
                zp: {
                    let mut zp = reuse::Reused::new(&reuse::ZP, m, 0);
                    zp.iter_mut()
                        .enumerate()
                        .for_each(|(i, z)| *z = a_zp.get(i));
                    zp
                },
            })
        }
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_with<Kr: Kernel, T: OutElem>(
    ctx: &Ctx,
    a: &ARows<'_>,
    m: usize,
    k: usize,
    a_zp: ZeroPoint<'_>,
    b: &PackedB,
    ep: &Epilogue<'_, T>,
    out: &mut [MaybeUninit<T>],
) {
    let zb_zero = b.zp.iter().all(|&z| z == 0);
    let pa = match a {
        ARows::Matrix(a) => borrow_a::<Kr>(a, m, k, a_zp, zb_zero).unwrap_or_else(|| {
            pack_a::<Kr>(ctx, m, k, |i, dst| {
                pack::pack_a_row(a, k, i, a_zp, dst, Kr::copy_sum)
            })
        }),
        ARows::Conv(cv) => conv_a::<Kr>(ctx, cv, m, k, a_zp, b, zb_zero),
    };
    run::<Kr, T>(ctx, &pa, m, b, ep, out);
}

/// A convolution's A. When [`run`] splits the rows over the threads (B
/// small or no wider than A is tall), each row block is unfolded by the
/// thread that multiplies it, just before ([`AData::Conv`]); when it splits
/// the columns, every thread reads every row, so the rows (few: fewer than
/// the columns) are unfolded once, here, as any A is packed.
fn conv_a<'a, Kr: Kernel>(
    ctx: &Ctx,
    cv: &ConvRows<'a>,
    m: usize,
    k: usize,
    a_zp: ZeroPoint<'a>,
    b: &PackedB,
    zb_zero: bool,
) -> PackedA<'a, Kr::AElem> {
    let kp = pack::round_up(k, 4);
    if rows_first(m, b) {
        return PackedA {
            data: AData::Conv {
                rows: *cv,
                zp: a_zp,
                sums: !zb_zero,
            },
            kp,
            rowsum: reuse::Reused::new(&reuse::ROWSUM, 0, 0),
            zp: reuse::Reused::new(&reuse::ZP, 0, 0),
        };
    }
    pack_a::<Kr>(ctx, m, k, |i, dst| {
        Kr::unfold(cv, i, kp, dst);
        (if zb_zero { 0 } else { byte_sum(dst) }, a_zp.get(i))
    })
}

/// The wrapping sum of `v` (a row of Â).
#[inline]
fn byte_sum(v: &[u8]) -> i32 {
    // Blocks of at most 2^23 bytes cannot overflow u32.
    v.chunks(1 << 23).fold(0i32, |s, c| {
        s.wrapping_add(c.iter().map(|&x| x as u32).sum::<u32>() as i32)
    })
}

/// Unfolds rows `ic..ic + za.len()` of a convolution's A into `dst` (rows
/// of `kp` elements), their zero points into `za` and, when `sums`, their
/// row sums into `rowsum` (else left as they are: B's zero points are 0).
/// `tmp` holds `kp` bytes for a kernel whose rows are not bytes.
#[allow(clippy::too_many_arguments)]
fn unfold_block<Kr: Kernel>(
    cv: &ConvRows<'_>,
    a_zp: ZeroPoint<'_>,
    sums: bool,
    ic: usize,
    kp: usize,
    dst: &mut [Kr::AElem],
    za: &mut [i32],
    rowsum: &mut [i32],
    tmp: &mut [u8],
) {
    type E<K> = <K as Kernel>::AElem;
    let nr = za.len();
    for (r, z) in za.iter_mut().enumerate() {
        *z = a_zp.get(ic + r);
    }
    let dst = &mut dst[..nr * kp];
    match <E<Kr> as pack::PlainElem>::row_bytes(dst) {
        Some(bytes) => {
            Kr::unfold(cv, ic, kp, bytes);
            if sums && kp > 0 {
                for (s, row) in rowsum.iter_mut().zip(bytes.chunks_exact(kp)) {
                    *s = byte_sum(row);
                }
            }
        }
        None => {
            for r in 0..nr {
                Kr::unfold(cv, ic + r, kp, tmp);
                <E<Kr> as pack::PlainElem>::widen(tmp, &mut dst[r * kp..(r + 1) * kp]);
                if sums {
                    rowsum[r] = byte_sum(tmp);
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_with<Kr: Kernel>(
    ctx: &Ctx,
    x: &[f32],
    m: usize,
    k: usize,
    b: &PackedB,
    col_scale: Param<'_>,
    bias: Option<&[f32]>,
    relu: bool,
    out: &mut [MaybeUninit<f32>],
) -> Result<()> {
    let mut scales = reuse::Reused::new(&reuse::SCALES, m, 0f32);
    let bad = std::sync::atomic::AtomicUsize::new(usize::MAX);
    let sp = SyncPtr(scales.as_mut_ptr());
    let quantize_row = cpu::dispatch().quant.quantize_row;
    let pa = pack_a::<Kr>(ctx, m, k, |i, dst| {
        match quantize_row(&x[i * k..i * k + k], dst) {
            Some((sum, zp, scale)) => {
                // SAFETY: each row index is visited once, by one thread.
                unsafe { *sp.get().add(i) = scale };
                (sum, zp)
            }
            None => {
                bad.fetch_min(i, std::sync::atomic::Ordering::Relaxed);
                (0, 0)
            }
        }
    });
    let bad = bad.into_inner();
    if bad != usize::MAX {
        return value_err!("x must be finite; row {bad} holds NaN or infinity");
    }
    // The column parameters were checked by `linear_dynamic`; the row
    // scales are the quantizer's (finite and > 0).
    let ep = OutputStep::Float {
        row_scale: Param::PerIndex(&scales[..]),
        col_scale,
        bias,
        relu,
    }
    .prepare_checked::<f32>(m, b.n)?;
    run::<Kr, f32>(ctx, &pa, m, b, &ep, out);
    Ok(())
}

/// The blocked driver: threads over rows or panels, then the block loops.
/// Whether [`run`] prefers to split `m` rows over the threads (each
/// reading all of B): B small enough to sit in L2, or A the bigger operand.
/// [`conv_a`] asks the same to decide where a convolution's rows are unfolded.
fn rows_first(m: usize, b: &PackedB) -> bool {
    m >= b.n || b.data.len() <= SMALL_B_BYTES
}

fn run<Kr: Kernel, T: OutElem>(
    ctx: &Ctx,
    pa: &PackedA<'_, Kr::AElem>,
    m: usize,
    b: &PackedB,
    ep: &Epilogue<'_, T>,
    out: &mut [MaybeUninit<T>],
) {
    let n = b.n;
    let panels = b.panels();
    if m == 0 || n == 0 {
        return;
    }
    let work = m.saturating_mul(n).saturating_mul(b.k + OUTPUT_MACS);
    let nt = ctx.threads();
    // Split over rows (one chunk per thread, each reading all of B) when B
    // is small enough to sit in L2 or A is the bigger operand; else over
    // columns, so that each thread streams only its share of a big B (A is
    // re-read). Rows were 1.2–1.5× faster on 2 threads for 256×64×256 and
    // 128×256×256, where the column split ran slower than one thread.
    let tiles = m.div_ceil(Kr::MR);
    let blocks = panels.div_ceil(Kr::NP);
    let by_rows = tiles >= 2 * nt && rows_first(m, b);
    // Row chunks are whole row blocks (LOOP 3 streams all of B once per
    // block either way), and several per thread: the team hands them out
    // from a counter, so a worker that wakes late or shares its core with
    // another process takes fewer, instead of the caller waiting for its
    // half (one chunk per thread ran 2 threads no faster than one on a busy
    // machine).
    let row_blocks = tiles.div_ceil(MC_TILES);
    let nchunks = if !parallel(ctx, work) {
        1
    } else if by_rows {
        ctx.chunks_for(work).min(row_blocks.max(nt))
    } else {
        ctx.chunks_for(work).min(blocks)
    }
    .max(1);
    let optr = SyncPtr(out.as_mut_ptr() as *mut T);
    let task = |c: usize| {
        let (r0, r1, p0, p1) = if by_rows {
            let unit = if row_blocks >= nchunks { MC_TILES } else { 1 };
            let units = tiles.div_ceil(unit);
            let (u0, u1) = (units * c / nchunks, units * (c + 1) / nchunks);
            let (t0, t1) = (u0 * unit, (u1 * unit).min(tiles));
            (t0 * Kr::MR, (t1 * Kr::MR).min(m), 0, panels)
        } else {
            // A single row: no tile to spread, B's panels are the whole job.
            let bs = if m == 1 {
                guided(blocks, nchunks, c)
            } else {
                blocks * c / nchunks..blocks * (c + 1) / nchunks
            };
            (
                0,
                m,
                (bs.start * Kr::NP).min(panels),
                (bs.end * Kr::NP).min(panels),
            )
        };
        if p0 < p1 {
            block::<Kr, T>(pa, b, ep, r0..r1, p0..p1, optr);
        }
    };
    ctx.for_each_task(work, nchunks, task);
}

/// Packed B up to this size is read whole by every thread (see `run`).
const SMALL_B_BYTES: usize = 256 << 10;

/// Rows per block of A (LOOP 3), in tiles: the i32 accumulators of one
/// block × `16·NP` columns stay in L1/L2 between K blocks, and one K block
/// of its A rows (48 × 1 KiB with the VNNI tile) in L2 beside the B slice.
/// 4, 8 and 16 tiles timed within 1–2% of each other (Zen 4, 1 thread).
const MC_TILES: usize = 8;

/// K groups (of 4) per K block (LOOP 4). Each K block after the first costs
/// a load and a store of every tile's accumulators, and on Zen 4 (32 KiB
/// L1) a slice of B small enough for L1 gained nothing: the tile's B panels
/// stream from L2 at 256 B per 24 `vpdpbusd` either way. Timed on 1 thread
/// (thread CPU time, Zen 4, loaded machine), 256 against the former 96:
/// 3–4% faster at 1024³, 512×1024², 784×1152×128 and 3136×576×64; 48–128
/// slower than 256, 1024 no faster.
const KC_GROUPS: usize = 256;

/// One thread's share: rows `rows` × panels `pans` of the output.
fn block<Kr: Kernel, T: OutElem>(
    pa: &PackedA<'_, Kr::AElem>,
    b: &PackedB,
    ep: &Epilogue<'_, T>,
    rows: std::ops::Range<usize>,
    pans: std::ops::Range<usize>,
    out: SyncPtr<T>,
) {
    let n = b.n;
    let kg = pa.kp / 4;
    let ps = b.panel_stride();
    // A single row (GEMV) takes wider tiles: more independent accumulators.
    let (mr_max, np_max) = if rows.len() == 1 {
        (1, Kr::NP_ROW)
    } else {
        (Kr::MR, Kr::NP)
    };
    let ld = 16 * np_max;
    let mc = MC_TILES * mr_max;
    // Plain int32 output: the kernel writes corrected tiles straight to
    // `out`; so it does with the plain float step, applied in registers
    // (the i32 block's store and reload and the row loop of the output
    // step cost 5-10% of a 512x1024x1024 float product).
    let float = if Kr::DIRECT {
        ep.plain_float(rows.clone())
    } else {
        None
    };
    let direct =
        Kr::DIRECT && ep.is_identity() && T::KIND == output::OutKind::I32 || float.is_some();
    // A direct product in one K block never touches the accumulator block
    // (its fill showed in the profile of a 2048×9×16 product).
    let acc_rows = if direct && kg <= KC_GROUPS {
        0
    } else {
        mc.min(rows.len())
    };
    let mut acc = reuse::Reused::new(&reuse::ACC, acc_rows * ld, 0);
    let kp = pa.kp;
    // A convolution's row block is unfolded into this thread's buffers:
    // its rows, then zero points and row sums.
    let conv = match &pa.data {
        AData::Conv { rows, zp, sums } => Some((rows, *zp, *sums)),
        _ => None,
    };
    let blk = if conv.is_some() {
        mc.min(rows.len())
    } else {
        0
    };
    let mut a_blk = conv.map(|_| pack::AScratch::<Kr::AElem>::new(blk * kp));
    let mut fix_blk = conv.map(|_| reuse::Reused::new(&reuse::BLOCK_ROWS, 2 * blk, 0));
    let wide = <Kr::AElem as pack::PlainElem>::row_bytes(&mut []).is_none();
    let mut tmp = conv.map(|_| reuse::Reused::new(&reuse::BYTES, if wide { kp } else { 0 }, 0));
    // LOOP 3: row blocks.
    let mut ic = rows.start;
    while ic < rows.end {
        let ic_end = (ic + mc).min(rows.end);
        // The block's rows of A, zero points and row sums (from row ic).
        let (a_rows, za, rowsum) = match (conv, &mut a_blk, &mut fix_blk, &mut tmp) {
            (Some((cv, zp, sums)), Some(a_blk), Some(fb), Some(tmp)) => {
                let (za, rs) = fb.split_at_mut(blk);
                let nr = ic_end - ic;
                unfold_block::<Kr>(
                    cv,
                    zp,
                    sums,
                    ic,
                    kp,
                    a_blk.as_mut_slice(),
                    &mut za[..nr],
                    rs,
                    tmp,
                );
                (a_blk.as_slice().as_ptr(), za.as_ptr(), rs.as_ptr())
            }
            // SAFETY: rows ic..ic_end of A exist, and their zero points and row sums.
            _ => unsafe {
                (
                    pa.data.ptr().add(ic * kp),
                    pa.zp.as_ptr().add(ic),
                    pa.rowsum.as_ptr().add(ic),
                )
            },
        };
        // LOOP 2: column blocks of np_max panels.
        let mut jp = pans.start;
        while jp < pans.end {
            let np = np_max.min(pans.end - jp);
            let (c0, c1) = (jp * NR, ((jp + np) * NR).min(n));
            // LOOP 4: K blocks (at least one, so that K = 0 writes zeros).
            let mut pc = 0;
            loop {
                let kcg = KC_GROUPS.min(kg - pc);
                // LOOP 1: row tiles.
                // SAFETY: the rows ic..ic_end of A at `a_rows` hold kp >=
                // 4·(pc+kcg) elements; panels jp..jp+np exist in packed B;
                // acc holds mc rows of ld values; this task alone writes
                // rows ic..ic_end × columns c0..c1 of `out`.
                unsafe {
                    row_tiles::<Kr>(
                        ic_end - ic,
                        mr_max,
                        np,
                        &kernel::Tile {
                            kg: kcg,
                            a: a_rows.add(4 * pc),
                            lda: kp,
                            b: b.data.as_ptr().add(jp * ps + 64 * pc),
                            bs: ps,
                            acc: acc.as_mut_ptr(),
                            ld,
                            load: pc > 0,
                            fix: None,
                        },
                        (pc + kcg >= kg).then_some(&kernel::Fix {
                            za,
                            rowsum,
                            zb: b.zp.as_ptr().add(c0),
                            colterm: b.colterm.as_ptr().add(c0),
                            // T is i32 when the step is the identity.
                            dst: if direct && float.is_none() {
                                (out.get() as *mut i32).add(ic * n + c0)
                            } else {
                                std::ptr::null_mut()
                            },
                            dst_ld: n,
                            dst_cols: c1 - c0,
                            // T is f32 with a plain float step.
                            // (row_tiles offsets by the row within this block)
                            float: float.as_ref().map(|f| kernel::FloatOut {
                                dst: (out.get() as *mut f32).add(ic * n + c0),
                                row_scale: f.row_scale.add(ic * f.rs_step),
                                rs_step: f.rs_step,
                                col_scale: f.col_scale.as_ptr().add(c0),
                                bias: f.bias.as_ptr().add(c0),
                                relu: f.relu,
                            }),
                        }),
                    );
                }
                pc += kcg;
                if pc >= kg {
                    break;
                }
            }
            if direct {
                jp += np;
                continue;
            }
            // Output step while the block is hot (the kernel applied the correction).
            let rows_blk = ic_end - ic;
            // SAFETY: this task alone writes rows ic..ic_end × columns c0..c1
            // of `out`; the kernel's ISA is supported (it was dispatched).
            unsafe {
                Kr::finish(Finish {
                    acc: &acc[..rows_blk * ld],
                    ld,
                    rows: ic..ic_end,
                    cols: c0..c1,
                    ep,
                    out: out.get(),
                    ldc: n,
                })
            };
            jp += np;
        }
        ic = ic_end;
    }
}

/// LOOP 1: the row tiles of a block of `rows` rows over one K block. `t`
/// describes the block from its first row (`t.a`, `t.acc`); so does `fix`,
/// with the last K block: the correction's column data and the block's row
/// data (and `dst`, when not null, the block's first output row).
///
/// # Safety
/// As for [`Kernel::tile`] for every tile of the block.
#[inline(always)]
unsafe fn row_tiles<Kr: Kernel>(
    rows: usize,
    mr_max: usize,
    np: usize,
    t: &kernel::Tile<'_, Kr::AElem>,
    fix: Option<&kernel::Fix>,
) {
    let mut ir = 0;
    while ir < rows {
        let mr = mr_max.min(rows - ir);
        let f = fix.map(|f| kernel::Fix {
            za: f.za.add(ir),
            rowsum: f.rowsum.add(ir),
            dst: if f.dst.is_null() {
                f.dst
            } else {
                f.dst.add(ir * f.dst_ld)
            },
            float: f.float.map(|o| kernel::FloatOut {
                dst: o.dst.add(ir * f.dst_ld),
                row_scale: o.row_scale.add(ir * o.rs_step),
                ..o
            }),
            ..*f
        });
        Kr::tile(
            mr,
            np,
            &kernel::Tile {
                a: t.a.add(ir * t.lda),
                // (wrapping: `acc` is empty for a direct product in one K block)
                acc: t.acc.wrapping_add(ir * t.ld),
                fix: f.as_ref(),
                ..*t
            },
        );
        ir += mr;
    }
}

/// The arguments of [`finish_block`].
pub(crate) struct Finish<'a, 'e, T: OutElem> {
    acc: &'a [i32],
    ld: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    ep: &'a Epilogue<'e, T>,
    out: *mut T,
    ldc: usize,
}

/// The output step of a block of exact (already corrected) sums.
///
/// # Safety
/// `out` is valid for the writes of rows × cols (row stride `ldc`) and no one
/// else touches them meanwhile.
#[inline(always)]
pub(crate) unsafe fn finish_block<T: OutElem>(f: Finish<'_, '_, T>) {
    f.ep.apply_inline(f.acc, f.ld, f.rows, f.cols, f.out, f.ldc);
}

#[cfg(test)]
mod tests;
