//! Packing: B (the weights) once into a layout every ISA path shares, A (the
//! activations) per call into the form the active micro-kernel reads.
//!
//! # B layout ([`PackedB`])
//!
//! B is `K × N`. Its columns are cut into *panels* of [`NR`] = 16 columns (N
//! padded with zero columns) and K into *groups* of 4 (K padded with zero
//! rows). A panel is `kp / 4` groups of 64 bytes stored one after another;
//! inside a group, column `c` of the panel holds its 4 consecutive `k` values
//! at bytes `4c .. 4c + 4`, as `i8`:
//!
//! ```text
//! panel p, group g:  [b(4g..4g+4, 16p+0)] [b(4g..4g+4, 16p+1)] ... [b(4g..4g+4, 16p+15)]
//! ```
//!
//! One group is one zmm register for `vpdpbusd`, or four 16-byte loads for the
//! AVX2 sign-extend path, so switching ISA never invalidates packed data.
//! `uint8` B is stored as `b - 128` (it then fits `i8`); the `-128` is folded
//! into the stored zero point. Column sums of the stored values sit beside the
//! panels so the zero-point correction costs nothing in the inner loop.
//!
//! # A
//!
//! A (`M × K`, `uint8`, `int8` or `float32` quantized on the fly) becomes
//! `Â = a + a_off` with `Â` in `0..=255` (`int8` is shifted by +128) in rows of
//! `kp` elements (zero padded), plus the row sums of `Â` and the stored zero
//! point `za + a_off` of every row.

use crate::error::Result;
use crate::exec::Ctx;
use crate::{shape_err, value_err};

/// Columns per panel of packed B.
pub const NR: usize = 16;

/// `n` rounded up to a multiple of `m`.
#[inline]
pub(crate) fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// Zero point(s) of an operand: one for all rows/columns, or one each.
#[derive(Debug, Clone, Copy)]
pub enum ZeroPoint<'a> {
    Scalar(i32),
    PerIndex(&'a [i32]),
}

impl ZeroPoint<'_> {
    pub(crate) fn check(&self, name: &str, len: usize, lo: i32, hi: i32) -> Result<()> {
        let values: &[i32] = match self {
            ZeroPoint::Scalar(v) => std::slice::from_ref(v),
            ZeroPoint::PerIndex(v) => {
                if v.len() != len {
                    return shape_err!(
                        "{name} must be a scalar or have {len} elements; got {}",
                        v.len()
                    );
                }
                v
            }
        };
        if let Some(bad) = values.iter().find(|&&v| v < lo || v > hi) {
            return value_err!("{name} must lie in [{lo}, {hi}]; got {bad}");
        }
        Ok(())
    }

    #[inline]
    pub(crate) fn get(&self, i: usize) -> i32 {
        match self {
            ZeroPoint::Scalar(v) => *v,
            ZeroPoint::PerIndex(v) => v[i],
        }
    }

    /// Largest |x - zp| over every x of the dtype range `lo..=hi`.
    pub(crate) fn max_abs_diff(&self, lo: i32, hi: i32) -> i64 {
        let one = |z: i32| {
            (z as i64 - lo as i64)
                .abs()
                .max((hi as i64 - z as i64).abs())
        };
        match self {
            ZeroPoint::Scalar(v) => one(*v),
            ZeroPoint::PerIndex(v) => v.iter().map(|&z| one(z)).max().unwrap_or(0),
        }
    }
}

/// A `K × N` int8/uint8 matrix packed once (see the module doc for the layout).
#[derive(Debug, Clone)]
pub struct PackedB {
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) kp: usize,
    /// Panels, each `kp * NR` bytes.
    pub(crate) data: Vec<i8>,
    /// Per column (padded to a multiple of NR): stored zero point `zb + b_off`.
    pub(crate) zp: Vec<i32>,
    /// Per column: `colsum(stored B) - K * stored zero point` (wrapping).
    pub(crate) colterm: Vec<i32>,
    /// Largest |b - zb| any element may have (for the overflow bound).
    pub(crate) max_abs: i64,
    pub(crate) signed: bool,
}

impl PackedB {
    /// Rows (K).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Columns (N).
    pub fn n(&self) -> usize {
        self.n
    }
    /// Whether the source was int8 (else uint8).
    pub fn is_signed(&self) -> bool {
        self.signed
    }
    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        self.data.len() + 4 * (self.zp.len() + self.colterm.len())
    }
    /// Number of 16-column panels.
    pub(crate) fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }
    /// Bytes of one panel.
    pub(crate) fn panel_stride(&self) -> usize {
        self.kp * NR
    }

    /// Packs a row-major `K × N` uint8 matrix (`b[k * n + j]`).
    pub fn from_kn_u8(
        ctx: &Ctx,
        b: &[u8],
        k: usize,
        n: usize,
        zp: ZeroPoint<'_>,
    ) -> Result<PackedB> {
        Self::pack(ctx, b, k, n, zp, false, false)
    }
    /// Packs a row-major `K × N` int8 matrix.
    pub fn from_kn_i8(
        ctx: &Ctx,
        b: &[i8],
        k: usize,
        n: usize,
        zp: ZeroPoint<'_>,
    ) -> Result<PackedB> {
        Self::pack(ctx, as_bytes(b), k, n, zp, true, false)
    }
    /// Packs the transpose of a row-major `N × K` int8 matrix (a Linear weight
    /// `(out, in)`): `B[k, j] = w[j * K + k]`.
    pub fn from_nk_i8(
        ctx: &Ctx,
        w: &[i8],
        n: usize,
        k: usize,
        zp: ZeroPoint<'_>,
    ) -> Result<PackedB> {
        Self::pack(ctx, as_bytes(w), k, n, zp, true, true)
    }
    /// Packs the transpose of a row-major `N × K` uint8 matrix.
    pub fn from_nk_u8(
        ctx: &Ctx,
        w: &[u8],
        n: usize,
        k: usize,
        zp: ZeroPoint<'_>,
    ) -> Result<PackedB> {
        Self::pack(ctx, w, k, n, zp, false, true)
    }

    /// `src` holds the raw bytes; stored value = `(byte ^ mask) as i8` with
    /// `mask = 0x80` for uint8 (b - 128) and 0 for int8.
    fn pack(
        ctx: &Ctx,
        src: &[u8],
        k: usize,
        n: usize,
        zp: ZeroPoint<'_>,
        signed: bool,
        transposed: bool,
    ) -> Result<PackedB> {
        if k.checked_mul(n) != Some(src.len()) {
            return shape_err!("B has {} elements, expected K*N = {k}*{n}", src.len());
        }
        let (lo, hi, off) = if signed {
            (-128, 127, 0)
        } else {
            (0, 255, -128)
        };
        let mask: u8 = if signed { 0 } else { 0x80 };
        zp.check("b_zero_point", n, lo, hi)?;
        let kp = round_up(k, 4);
        let panels = n.div_ceil(NR);
        let np = panels * NR;
        let len = panels
            .checked_mul(kp)
            .and_then(|v| v.checked_mul(NR))
            .ok_or_else(|| {
                crate::error::Error::Shape(format!("packing a ({k}, {n}) matrix overflows"))
            })?;
        let mut data = crate::error::try_vec(len, 0i8, "the packed matrix")?;
        let mut zps = crate::error::try_vec(np, 0i32, "the packed matrix's zero points")?;
        let mut colterm = crate::error::try_vec(np, 0i32, "the packed matrix's column sums")?;
        // Panel p covers columns 16p..16p+16; its group g sits at g*64, column c at 4c.
        // A task packs a run of panels: group by group (reading 4 rows of B
        // sequentially when not transposed), then the column sums.
        let ps = kp * NR;
        let job = PanelJob {
            src,
            k,
            n,
            kp,
            mask,
            transposed,
            zp,
            off,
        };
        let pack_fn = crate::cpu::dispatch().gemm.pack_panels;
        let pack_panels = |p0: usize, out: &mut [i8], zp_out: &mut [i32], ct_out: &mut [i32]| {
            pack_fn(&job, p0, out, zp_out, ct_out)
        };
        if panels > 0 && kp > 0 {
            // Runs of panels of about 64 KiB each.
            let run_len = ((1 << 16) / ps).clamp(1, panels);
            if super::parallel(ctx, k * n) {
                ctx.run(k * n, || {
                    use rayon::prelude::*;
                    data.par_chunks_mut(run_len * ps)
                        .zip(zps.par_chunks_mut(run_len * NR))
                        .zip(colterm.par_chunks_mut(run_len * NR))
                        .enumerate()
                        .for_each(|(i, ((d, z), c))| pack_panels(i * run_len, d, z, c));
                });
            } else {
                data.chunks_mut(run_len * ps)
                    .zip(zps.chunks_mut(run_len * NR))
                    .zip(colterm.chunks_mut(run_len * NR))
                    .enumerate()
                    .for_each(|(i, ((d, z), c))| pack_panels(i * run_len, d, z, c));
            }
        } else {
            for p in 0..panels {
                pack_panels(
                    p,
                    &mut [],
                    &mut zps[p * NR..p * NR + NR],
                    &mut colterm[p * NR..p * NR + NR],
                );
            }
        }
        Ok(PackedB {
            k,
            n,
            kp,
            data,
            zp: zps,
            colterm,
            max_abs: zp.max_abs_diff(lo, hi),
            signed,
        })
    }

    /// The same matrix with K padded to the packed `kp` (a multiple of 4)
    /// by zero rows, when every stored zero point is 0 (symmetric int8
    /// weights): then the padding rows add nothing whatever A holds there,
    /// the column terms are unchanged and no row sums of A are needed, so
    /// a producer of A (a convolution's unfold) can write rows of `kp`
    /// bytes that the GEMM reads in place instead of packing a copy.
    /// `None` when K is already a multiple of 4 or a zero point is not 0.
    pub fn padded_k(&self) -> Option<PackedB> {
        (self.kp != self.k && self.zp.iter().all(|&z| z == 0)).then(|| PackedB {
            k: self.kp,
            ..self.clone()
        })
    }

    /// Unpacks to the row-major `K × N` stored values plus offset, i.e. the
    /// original matrix as i32 (for tests and pickling checks).
    pub fn unpack(&self) -> Vec<i32> {
        let off = if self.signed { 0 } else { 128 };
        let mut out = vec![0i32; self.k * self.n];
        for kk in 0..self.k {
            for j in 0..self.n {
                let (p, c) = (j / NR, j % NR);
                let v = self.data[p * self.panel_stride() + (kk / 4) * 64 + 4 * c + kk % 4];
                out[kk * self.n + j] = v as i32 + off;
            }
        }
        out
    }
}

/// What a packing task needs to know about the whole of B.
pub(crate) struct PanelJob<'a> {
    src: &'a [u8],
    k: usize,
    n: usize,
    kp: usize,
    mask: u8,
    transposed: bool,
    zp: ZeroPoint<'a>,
    off: i32,
}

/// Packs the run of panels starting at panel `p0` into `out` (their packed
/// bytes), their stored zero points and column terms. Always inlined so the
/// per-ISA wrappers (`arch/`) vectorise it.
#[inline(always)]
pub(crate) fn pack_panels(
    job: &PanelJob<'_>,
    p0: usize,
    out: &mut [i8],
    zp_out: &mut [i32],
    ct_out: &mut [i32],
) {
    let PanelJob {
        src,
        k,
        n,
        kp,
        mask,
        transposed,
        zp,
        off,
    } = *job;
    let ps = kp * NR;
    let npan = zp_out.len() / NR;
    if transposed {
        for lp in 0..npan {
            let p = p0 + lp;
            let panel = &mut out[lp * ps..(lp + 1) * ps];
            for c in 0..(n - p * NR).min(NR) {
                let col = &src[(p * NR + c) * k..(p * NR + c) * k + k];
                for (g, q) in col.chunks(4).enumerate() {
                    let dst = &mut panel[g * 64 + 4 * c..g * 64 + 4 * c + q.len()];
                    for (d, &v) in dst.iter_mut().zip(q) {
                        *d = (v ^ mask) as i8;
                    }
                }
            }
        }
    } else {
        for g in 0..kp / 4 {
            let full_k = 4 * g + 4 <= k;
            for lp in 0..npan {
                let p = p0 + lp;
                let ncols = (n - p * NR).min(NR);
                let grp = &mut out[lp * ps + g * 64..lp * ps + g * 64 + 64];
                if full_k && ncols == NR {
                    let rows: [&[u8]; 4] = std::array::from_fn(|t| {
                        &src[(4 * g + t) * n + p * NR..(4 * g + t) * n + p * NR + NR]
                    });
                    super::arch::generic::transpose_4x16(rows, mask, grp);
                } else {
                    for t in 0..(k - 4 * g).min(4) {
                        let row = &src[(4 * g + t) * n + p * NR..(4 * g + t) * n + p * NR + ncols];
                        for (c, &v) in row.iter().enumerate() {
                            grp[4 * c + t] = (v ^ mask) as i8;
                        }
                    }
                }
            }
        }
    }
    // Column sums of the stored values, from the source (vectorises).
    let c0 = p0 * NR;
    let c1 = ((p0 + npan) * NR).min(n);
    let mut sums = vec![0i32; npan * NR];
    if transposed {
        for (j, s) in (c0..c1).zip(sums.iter_mut()) {
            *s = src[j * k..j * k + k]
                .iter()
                .fold(0i32, |acc, &v| acc.wrapping_add((v ^ mask) as i8 as i32));
        }
    } else {
        for kk in 0..k {
            for (s, &v) in sums.iter_mut().zip(&src[kk * n + c0..kk * n + c1]) {
                *s = s.wrapping_add((v ^ mask) as i8 as i32);
            }
        }
    }
    for lp in 0..npan {
        let p = p0 + lp;
        let sums = &sums[lp * NR..lp * NR + NR];
        for c in 0..(n - p * NR).min(NR) {
            let z = zp.get(p * NR + c) + off;
            zp_out[lp * NR + c] = z;
            ct_out[lp * NR + c] = sums[c].wrapping_sub((k as i32).wrapping_mul(z));
        }
    }
}

/// The bytes of an i8 slice.
pub(crate) fn as_bytes(v: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len()) }
}

/// Where the rows of A come from.
#[derive(Debug, Clone, Copy)]
pub enum ASource<'a> {
    U8(&'a [u8]),
    I8(&'a [i8]),
}

impl ASource<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            ASource::U8(a) => a.len(),
            ASource::I8(a) => a.len(),
        }
    }
    pub(crate) fn range(&self) -> (i32, i32) {
        match self {
            ASource::U8(_) => (0, 255),
            ASource::I8(_) => (-128, 127),
        }
    }
}

/// Checks the overflow bound `K * max|a - za| * max|b - zb| <= i32::MAX`
/// under which every wrapping i32 sum is the exact result.
pub(crate) fn check_bound(k: usize, a_max: i64, b_max: i64) -> Result<()> {
    let bound = (k as i128) * (a_max as i128) * (b_max as i128);
    if bound > i32::MAX as i128 {
        return value_err!(
            "K = {k} is too large for an exact int32 result with these zero points: \
             K * max|a - a_zero_point| * max|b - b_zero_point| = {k} * {a_max} * {b_max} > 2^31 - 1"
        );
    }
    Ok(())
}

/// Checks A's zero points and returns the largest |a - za| (for the bound).
pub(crate) fn check_a(a: &ASource<'_>, m: usize, k: usize, zp: ZeroPoint<'_>) -> Result<i64> {
    if m.checked_mul(k) != Some(a.len()) {
        return shape_err!("A has {} elements, expected M*K = {m}*{k}", a.len());
    }
    let (lo, hi) = a.range();
    zp.check("a_zero_point", m, lo, hi)?;
    Ok(zp.max_abs_diff(lo, hi))
}

/// Writes row `i` of Â (`a + a_off`, u8, zero padded to `dst.len()`) with
/// `copy_sum` (a [`super::kernel::Kernel::copy_sum`]) and returns
/// `(rowsum(Â), za + a_off)`.
#[inline]
pub(crate) fn pack_a_row(
    a: &ASource<'_>,
    k: usize,
    i: usize,
    zp: ZeroPoint<'_>,
    dst: &mut [u8],
    copy_sum: fn(&[u8], u8, &mut [u8]) -> i32,
) -> (i32, i32) {
    let (src, flip, off): (&[u8], u8, i32) = match a {
        ASource::U8(a) => (&a[i * k..i * k + k], 0, 0),
        ASource::I8(a) => (as_bytes(&a[i * k..i * k + k]), 0x80, 128),
    };
    let sum = copy_sum(src, flip, &mut dst[..k]);
    // At most 3 padding bytes: a loop, not a call to memset per row.
    for d in dst[k..].iter_mut() {
        *d = 0;
    }
    (sum, zp.get(i) + off)
}

/// `dst[i] = src[i] ^ flip`; returns the wrapping sum of `dst`.
#[inline]
pub(crate) fn copy_sum_scalar(src: &[u8], flip: u8, dst: &mut [u8]) -> i32 {
    let mut sum = 0i32;
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = v ^ flip;
        sum = sum.wrapping_add((v ^ flip) as i32);
    }
    sum
}

/// Element types of packed A rows: plain integers, valid for any bit pattern,
/// so a reused scratch buffer may be viewed as a slice of them.
///
/// # Safety
/// Implementors must be integer types of alignment at most 8.
pub(crate) unsafe trait PlainElem: Copy + Default + Send + Sync + 'static {
    /// Converts one packed row of Â (u8, padded to a multiple of 4) to this type.
    fn widen(src: &[u8], dst: &mut [Self]);
    /// A packed row as bytes when this is `u8`, so that rows are packed in
    /// place instead of through a scratch row and [`PlainElem::widen`].
    fn row_bytes(dst: &mut [Self]) -> Option<&mut [u8]>;
}
// SAFETY: plain integers.
unsafe impl PlainElem for u8 {
    fn widen(src: &[u8], dst: &mut [u8]) {
        dst.copy_from_slice(src);
    }
    fn row_bytes(dst: &mut [u8]) -> Option<&mut [u8]> {
        Some(dst)
    }
}
// SAFETY: plain integers.
unsafe impl PlainElem for i16 {
    fn widen(src: &[u8], dst: &mut [i16]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s as i16;
        }
    }
    fn row_bytes(_: &mut [i16]) -> Option<&mut [u8]> {
        None
    }
}

std::thread_local! {
    static A_SCRATCH: std::cell::Cell<Vec<u64>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Packed-A storage borrowed from a per-thread buffer that later calls on
/// the same thread reuse: a big A then costs no fresh pages (page faults and,
/// once freed, TLB shootdowns across cores) on every call. A nested call
/// finds the buffer taken and allocates its own.
pub(crate) struct AScratch<E: PlainElem> {
    buf: Vec<u64>,
    len: usize,
    _elem: std::marker::PhantomData<E>,
}

/// Scratch buffers up to this size are kept for the next call.
const A_SCRATCH_KEEP: usize = 32 << 20;

impl<E: PlainElem> AScratch<E> {
    /// `len` elements with unspecified (but initialised) contents.
    pub(crate) fn new(len: usize) -> Self {
        let words = (len * std::mem::size_of::<E>()).div_ceil(8);
        let mut buf = A_SCRATCH.with(|c| c.take());
        if buf.len() < words {
            buf = vec![0u64; words];
        }
        AScratch {
            buf,
            len,
            _elem: std::marker::PhantomData,
        }
    }

    pub(crate) fn as_slice(&self) -> &[E] {
        // SAFETY: `buf` holds at least `len` E's worth of initialised bytes,
        // u64 alignment covers E's, and any bit pattern is a valid E.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr() as *const E, self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [E] {
        // SAFETY: as in `as_slice`, with unique access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr() as *mut E, self.len) }
    }
}

impl<E: PlainElem> Drop for AScratch<E> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.len() * 8 <= A_SCRATCH_KEEP {
            let _ = A_SCRATCH.try_with(|c| {
                let old = c.take();
                c.set(if old.len() > buf.len() { old } else { buf });
            });
        }
    }
}
