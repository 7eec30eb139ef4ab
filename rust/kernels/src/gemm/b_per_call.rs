//! Products with B given row-major per call (ONNX MatMulInteger with B an
//! input, a product of two activations): B is never packed whole.
//!
//! Each task owns a range of output rows × column blocks. For one column
//! block it packs one K block of B at a time (the layout of [`super::pack`],
//! `kc × 16·np` bytes) into a small buffer that stays in L1, and runs the
//! active path's micro-kernel over it for every row tile of the task, the
//! same tiles, zero-point correction and output step as the packed product.
//! The column sums the correction needs come from the same micro-kernel run
//! over a row of ones (one extra row per block), so no second pass over B.
//! Column blocks go to different threads when there are enough of them (each
//! thread then packs only its own share of B); otherwise rows do.
//!
//! A single row (M = 1) takes the kernel's GEMV straight over row-major B
//! when it has one ([`Kernel::gemv_rows`]: no packing, each row of B read
//! front to back); on several threads K is split, each task streaming a
//! band of whole rows ([`gemv_split`]), or the columns when K is short.

use std::mem::MaybeUninit;

use super::kernel::{self, Kernel};
use super::output::{Epilogue, OutElem, OutKind, OutputStep};
use super::pack::{self, ASource, ZeroPoint, NR};
use super::{arch::generic::transpose_4x16, check_out, reuse, Finish, KC_GROUPS};
use crate::cpu;
use crate::error::Result;
use crate::exec::{Ctx, SyncPtr};
use crate::shape_err;

/// Row-major `K × N` B as the per-call driver reads it (built by [`matmul_b_rows`]).
#[doc(hidden)]
pub struct RowsB<'a> {
    src: &'a [u8],
    k: usize,
    n: usize,
    /// `0x80` for uint8 (stored as `b - 128`), else 0.
    mask: u8,
    zp: ZeroPoint<'a>,
    /// Added to a zero point to give the stored one (`-128` for uint8).
    off: i32,
}

impl RowsB<'_> {
    /// Columns (N): the row stride of B.
    pub(crate) fn n(&self) -> usize {
        self.n
    }
    /// Rows (K).
    pub(crate) fn k(&self) -> usize {
        self.k
    }
    /// The bytes of B, row-major.
    pub(crate) fn src(&self) -> &[u8] {
        self.src
    }
    /// XOR mask that turns a byte of B into its stored `i8`.
    pub(crate) fn mask(&self) -> u8 {
        self.mask
    }
    /// Stored zero point of column `j`.
    #[inline]
    fn zp(&self, j: usize) -> i32 {
        self.zp.get(j) + self.off
    }
}

/// `C = (A - za) · (B - zb)` with B row-major `K × N` (uint8 or int8, zero
/// point per tensor or per column), then the output step `step`, into `out`
/// (row-major `M × N`). The result is that of packing B with
/// [`super::PackedB`] and calling [`super::matmul`], bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn matmul_b_rows<T: OutElem>(
    ctx: &Ctx,
    a: ASource<'_>,
    m: usize,
    k: usize,
    a_zp: ZeroPoint<'_>,
    b: ASource<'_>,
    n: usize,
    b_zp: ZeroPoint<'_>,
    step: &OutputStep<'_>,
    out: &mut [MaybeUninit<T>],
) -> Result<()> {
    let a_max = pack::check_a(&a, m, k, a_zp)?;
    if k.checked_mul(n) != Some(b.len()) {
        return shape_err!("B has {} elements, expected K*N = {k}*{n}", b.len());
    }
    let (lo, hi) = b.range();
    b_zp.check("b_zero_point", n, lo, hi)?;
    pack::check_bound(k, a_max, b_zp.max_abs_diff(lo, hi))?;
    check_out(out.len(), m, n)?;
    let ep = step.prepare::<T>(m, n)?;
    let rows = match b {
        ASource::U8(src) => RowsB {
            src,
            k,
            n,
            mask: 0x80,
            zp: b_zp,
            off: -128,
        },
        ASource::I8(src) => RowsB {
            src: pack::as_bytes(src),
            k,
            n,
            mask: 0,
            zp: b_zp,
            off: 0,
        },
    };
    (T::b_rows_entry(&cpu::dispatch().gemm))(ctx, &a, m, k, a_zp, &rows, &ep, out);
    Ok(())
}

/// [`matmul_b_rows`] into a new `M × N` vector.
#[allow(clippy::too_many_arguments)]
pub fn matmul_b_rows_vec<T: OutElem>(
    ctx: &Ctx,
    a: ASource<'_>,
    m: usize,
    k: usize,
    a_zp: ZeroPoint<'_>,
    b: ASource<'_>,
    n: usize,
    b_zp: ZeroPoint<'_>,
    step: &OutputStep<'_>,
) -> Result<Vec<T>> {
    super::filled(m, n, |out| {
        matmul_b_rows(ctx, a, m, k, a_zp, b, n, b_zp, step, out)
    })
}

/// A one-row product over row-major B ([`Kernel::gemv_rows`]): row `a` of
/// packed Â (`kp` elements, zero padded), output columns from `c0`, over
/// rows `k0..k1` of B (`k0` a multiple of 4); `sums`: whether the column
/// sums are wanted.
#[derive(Clone, Copy)]
pub(crate) struct RowGemv<'a, E> {
    pub b: &'a RowsB<'a>,
    pub a: &'a [E],
    pub c0: usize,
    pub k0: usize,
    pub k1: usize,
    pub sums: bool,
}

/// Columns per call of [`Kernel::gemv_rows`]: its raw sums go to a buffer
/// of this size (no allocation sized by N), then through the correction
/// and the output step.
const GEMV_COLS: usize = 4096;

/// Columns per thread chunk of a single-row product on a kernel without a
/// GEMV, where N allows as many chunks as threads anyway.
const GEMV_RUN: usize = 1024;

/// Fewest K groups (of 4 rows) per part of a single-row product split over
/// K ([`gemv_split`]).
const GEMV_MIN_GROUPS: usize = 64;

/// Rows of output whose accumulators stay in L2 while one packed slice of B
/// is reused by all of them (B is packed again for every such pass).
const ROWS_PER_PASS: usize = 240;

/// Bytes of i32 accumulators per pass: as many column blocks are packed
/// together as fit, so that packing reads long runs of each row of B (a
/// 64-byte-wide column strip of row-major B defeats the prefetchers).
const ACC_BYTES: usize = 256 << 10;

/// Bytes of packed B per K block of a pass (L1: packing writes it and the
/// micro-kernel reads it back at once); the K block shrinks for
/// wide passes.
const BBUF_BYTES: usize = 32 << 10;

/// The driver for the micro-kernel `Kr` (in the dispatch table).
#[allow(clippy::too_many_arguments)]
pub(crate) fn b_rows_with<Kr: Kernel, T: OutElem>(
    ctx: &Ctx,
    a: &ASource<'_>,
    m: usize,
    k: usize,
    a_zp: ZeroPoint<'_>,
    b: &RowsB<'_>,
    ep: &Epilogue<'_, T>,
    out: &mut [MaybeUninit<T>],
) {
    let n = b.n;
    if m == 0 || n == 0 {
        return;
    }
    let zb_zero = (0..n).all(|j| b.zp(j) == 0);
    let pa = super::borrow_a::<Kr>(a, m, k, a_zp, zb_zero).unwrap_or_else(|| {
        super::pack_a::<Kr>(ctx, m, k, |i, dst| {
            pack::pack_a_row(a, k, i, a_zp, dst, Kr::copy_sum)
        })
    });
    let (mr_max, np_max) = if m == 1 {
        (1, Kr::NP_ROW)
    } else {
        (Kr::MR, Kr::NP)
    };
    let blocks = n.div_ceil(NR).div_ceil(np_max);
    let tiles = m.div_ceil(mr_max);
    let work = m.saturating_mul(n).saturating_mul(k + super::OUTPUT_MACS);
    let nt = ctx.threads();
    // One row with K long enough for a part per thread: split over K
    // (else over columns, below).
    if m == 1
        && super::parallel(ctx, work)
        && k / 4 >= nt * GEMV_MIN_GROUPS
        && has_gemv::<Kr>(&pa, b)
    {
        gemv_split::<Kr, T>(ctx, &pa, b, ep, work, SyncPtr(out.as_mut_ptr() as *mut T));
        return;
    }
    // Column blocks spread over the threads whenever there are enough of
    // them: each thread packs only its share of B and A is small or re-read
    // from L2; else row tiles, each thread packing all of B.
    let (row_chunks, col_chunks) = if !super::parallel(ctx, work) {
        (1, 1)
    } else if m == 1 {
        // Packing reads each row of B in runs of a chunk's width: wide chunks
        // (at least GEMV_RUN columns where N allows more chunks than threads).
        let wide = (n / GEMV_RUN).max(nt);
        (1, ctx.chunks_for(work).min(blocks).min(wide).max(1))
    } else if blocks >= 2 * nt || tiles < 2 * nt {
        (1, ctx.chunks_for(work).min(blocks).max(1))
    } else {
        (ctx.chunks_for(work).min(tiles).max(1), 1)
    };
    let optr = SyncPtr(out.as_mut_ptr() as *mut T);
    let task = |c: usize| {
        let (rc, cc) = (c / col_chunks, c % col_chunks);
        let (t0, t1) = (tiles * rc / row_chunks, tiles * (rc + 1) / row_chunks);
        let (b0, b1) = (blocks * cc / col_chunks, blocks * (cc + 1) / col_chunks);
        let rows = t0 * mr_max..(t1 * mr_max).min(m);
        b_rows_block::<Kr, T>(&pa, b, ep, rows, b0..b1, (mr_max, np_max), optr);
    };
    ctx.for_each_task(work, row_chunks * col_chunks, task);
}

/// One task: output rows `rows` × column blocks `blocks` (of `np_max` panels).
///
/// Passes of up to `mc` rows × `nb` column blocks; per pass, K blocks of
/// `kcg_max` groups: pack the K block ([`Kernel::pack_rows`]) of every column of the pass, then run
/// the row of ones (column sums) and every row tile over each column block.
fn b_rows_block<Kr: Kernel, T: OutElem>(
    pa: &super::PackedA<'_, Kr::AElem>,
    b: &RowsB<'_>,
    ep: &Epilogue<'_, T>,
    rows: std::ops::Range<usize>,
    blocks: std::ops::Range<usize>,
    (mr_max, np_max): (usize, usize),
    out: SyncPtr<T>,
) {
    let (n, k) = (b.n, b.k);
    let kg = pa.kp / 4;
    let ld = 16 * np_max;
    // Column sums only matter through A's stored zero points (`za'·colterm`).
    let sums = pa.zp[rows.clone()].iter().any(|&z| z != 0);
    // A single row: the kernel's direct GEMV over row-major B, when it has
    // one, takes every column; else they go the packed way.
    if rows.len() == 1
        && gemv::<Kr, T>(
            pa,
            b,
            ep,
            rows.start,
            blocks.start * ld..(blocks.end * ld).min(n),
            sums,
            out,
        )
    {
        return;
    }
    let mc = ((ROWS_PER_PASS / mr_max).max(1) * mr_max).min(rows.len());
    // Several row tiles: K blocks as long as the buffer allows for one
    // column block (each K block costs a load and store of the
    // accumulators of every tile), then as many column blocks per pass as
    // still fit. One row tile (GEMV-like): packing dominates, so as many
    // column blocks as the accumulators allow, for long runs of each row
    // of B (column strips of row-major B ran 5× slower at M = 1), and the
    // K block the buffer leaves.
    let (nb, kcg_max) = if mc > mr_max {
        let kcg = (BBUF_BYTES / (64 * np_max))
            .clamp(1, KC_GROUPS)
            .min(kg.max(1));
        let nb = (BBUF_BYTES / (64 * np_max * kcg)).min(ACC_BYTES / (4 * mc.max(1) * ld));
        (nb.clamp(1, blocks.len().max(1)), kcg)
    } else {
        let nb = (ACC_BYTES / (4 * mc.max(1) * ld)).clamp(1, blocks.len().max(1));
        let kcg = (BBUF_BYTES / (64 * nb * np_max))
            .clamp(1, KC_GROUPS)
            .min(kg.max(1));
        (nb, kcg)
    };
    let lda = nb * ld; // row stride of the accumulators of a pass
    let panels = n.div_ceil(NR);
    // Sized by the block constants, not by the input.
    let mut acc = vec![0i32; mc * lda];
    let mut bbuf = vec![0i8; nb * np_max * kcg_max * 64];
    let mut ones = vec![Kr::AElem::default(); 4 * kcg_max];
    <Kr::AElem as pack::PlainElem>::widen(&vec![1u8; 4 * kcg_max], &mut ones);
    let (mut colsum, mut zbs, mut colterm) = (vec![0i32; lda], vec![0i32; lda], vec![0i32; lda]);
    let direct = Kr::DIRECT && ep.is_identity() && T::KIND == OutKind::I32;
    let mut ic = rows.start;
    while ic < rows.end {
        let ic_end = (ic + mc).min(rows.end);
        let mut bc = blocks.start;
        while bc < blocks.end {
            let bc_end = (bc + nb).min(blocks.end);
            let jp0 = bc * np_max;
            let np_pass = (bc_end * np_max).min(panels) - jp0;
            let (c0, c1) = (jp0 * NR, ((jp0 + np_pass) * NR).min(n));
            for (c, z) in zbs.iter_mut().enumerate() {
                *z = if c0 + c < c1 { b.zp(c0 + c) } else { 0 };
            }
            // K blocks (at least one, so that K = 0 writes zeros).
            let mut pc = 0;
            loop {
                let kcg = kcg_max.min(kg - pc);
                Kr::pack_rows(b, pc, kcg, jp0, np_pass, &mut bbuf);
                let last = pc + kcg >= kg;
                for lb in 0..bc_end - bc {
                    let np = np_max.min(np_pass - lb * np_max);
                    let bptr = bbuf[lb * np_max * 64 * kcg..].as_ptr();
                    let col = lb * ld; // first column of the block within the pass
                                       // SAFETY: `ones` holds 4·kcg elements, `bptr` np panels of
                                       // 64·kcg bytes, `colsum` 16·np values from `col`.
                    if sums {
                        unsafe {
                            Kr::tile(
                                1,
                                np,
                                &kernel::Tile {
                                    kg: kcg,
                                    a: ones.as_ptr(),
                                    lda: 0,
                                    b: bptr,
                                    bs: 64 * kcg,
                                    acc: colsum.as_mut_ptr().add(col),
                                    ld,
                                    load: pc > 0,
                                    fix: None,
                                },
                            )
                        }
                    }
                    if last && sums {
                        for c in col..col + 16 * np {
                            colterm[c] = colsum[c].wrapping_sub((k as i32).wrapping_mul(zbs[c]));
                        }
                    }
                    let cb0 = c0 + col;
                    // SAFETY: rows ic..ic_end of packed A hold kp >=
                    // 4·(pc+kcg) elements; `bptr` holds np panels of the
                    // K block; acc holds mc rows of lda values; this task
                    // alone writes rows ic..ic_end × columns c0..c1 of `out`.
                    unsafe {
                        super::row_tiles::<Kr>(
                            ic_end - ic,
                            mr_max,
                            np,
                            &kernel::Tile {
                                kg: kcg,
                                a: pa.data.ptr().add(ic * pa.kp + 4 * pc),
                                lda: pa.kp,
                                b: bptr,
                                bs: 64 * kcg,
                                acc: acc.as_mut_ptr().add(col),
                                ld: lda,
                                load: pc > 0,
                                fix: None,
                            },
                            last.then_some(&kernel::Fix {
                                za: pa.zp.as_ptr().add(ic),
                                rowsum: pa.rowsum.as_ptr().add(ic),
                                zb: zbs.as_ptr().add(col),
                                colterm: colterm.as_ptr().add(col),
                                dst: if direct {
                                    (out.get() as *mut i32).add(ic * n + cb0)
                                } else {
                                    std::ptr::null_mut()
                                },
                                dst_ld: n,
                                dst_cols: (c1 - cb0).min(16 * np),
                                float: None,
                            }),
                        );
                    }
                }
                pc += kcg;
                if last {
                    break;
                }
            }
            if !direct {
                let rows_blk = ic_end - ic;
                // SAFETY: as above; the kernel's ISA is supported (it was dispatched).
                unsafe {
                    Kr::finish(Finish {
                        acc: &acc[..rows_blk * lda],
                        ld: lda,
                        rows: ic..ic_end,
                        cols: c0..c1,
                        ep,
                        out: out.get(),
                        ldc: n,
                    })
                };
            }
            bc = bc_end;
        }
        ic = ic_end;
    }
}

/// Row `i` × columns `cols` of the output by the kernel's GEMV over
/// row-major B ([`Kernel::gemv_rows`]), [`GEMV_COLS`] columns at a time, each
/// corrected and through the output step at once; false (nothing written)
/// when the kernel has no GEMV.
#[allow(clippy::too_many_arguments)]
fn gemv<Kr: Kernel, T: OutElem>(
    pa: &super::PackedA<'_, Kr::AElem>,
    b: &RowsB<'_>,
    ep: &Epilogue<'_, T>,
    i: usize,
    cols: std::ops::Range<usize>,
    sums: bool,
    out: SyncPtr<T>,
) -> bool {
    let mut raw = [0i32; GEMV_COLS];
    let mut csum = [0i32; GEMV_COLS];
    // SAFETY: row i of packed A holds kp >= k elements.
    let arow = unsafe { std::slice::from_raw_parts(pa.data.ptr().add(i * pa.kp), pa.kp) };
    let mut c0 = cols.start;
    while c0 < cols.end {
        let w = (cols.end - c0).min(GEMV_COLS);
        let job = RowGemv {
            b,
            a: arow,
            c0,
            k0: 0,
            k1: b.k,
            sums,
        };
        if !Kr::gemv_rows(&job, &mut raw[..w], &mut csum[..w]) {
            return false; // only ever on the first call: the kernel has none
        }
        gemv_finish::<Kr, T>(pa, b, ep, i, c0, &mut raw[..w], &csum[..w], out);
        c0 += w;
    }
    true
}

/// Whether the kernel has a GEMV over row-major B (asked with no columns).
fn has_gemv<Kr: Kernel>(pa: &super::PackedA<'_, Kr::AElem>, b: &RowsB<'_>) -> bool {
    // SAFETY: row 0 of packed A holds kp elements.
    let arow = unsafe { std::slice::from_raw_parts(pa.data.ptr(), pa.kp) };
    let job = RowGemv {
        b,
        a: arow,
        c0: 0,
        k0: 0,
        k1: 0,
        sums: false,
    };
    Kr::gemv_rows(&job, &mut [], &mut [])
}

/// A single row on several threads by the kernel's GEMV ([`has_gemv`]): K
/// split into parts, each a contiguous band of whole rows of B that one
/// task streams front to back as one thread would (split by columns, each
/// thread read every row in runs of N / threads bytes, and 2 threads ran
/// 1×4096×4096 at 1.5–1.7× one), shrinking ([`super::guided`]); the parts'
/// raw sums (and column sums) are added (wrapping: exact in any order),
/// then corrected once.
fn gemv_split<Kr: Kernel, T: OutElem>(
    ctx: &Ctx,
    pa: &super::PackedA<'_, Kr::AElem>,
    b: &RowsB<'_>,
    ep: &Epilogue<'_, T>,
    work: usize,
    out: SyncPtr<T>,
) {
    let n = b.n;
    let kg = b.k.div_ceil(4);
    // Column sums only matter through A's stored zero point.
    let sums = pa.zp[0] != 0;
    let stride = if sums { 2 * n } else { n };
    let parts = ctx
        .chunks_for(work)
        .min(2 * ctx.threads())
        .min(kg / GEMV_MIN_GROUPS)
        .max(1);
    // Every task writes all of its part (raw sums, then column sums).
    let mut part = reuse::Reused::new(&reuse::ACC, parts * stride, 0);
    let pp = SyncPtr(part.as_mut_ptr());
    // SAFETY: row 0 of packed A holds kp >= k elements.
    let arow = unsafe { std::slice::from_raw_parts(pa.data.ptr(), pa.kp) };
    ctx.for_each_task(work, parts, |p| {
        let gs = super::guided(kg, parts, p);
        // SAFETY: task p alone writes elements p·stride .. (p+1)·stride.
        let mine = unsafe { std::slice::from_raw_parts_mut(pp.get().add(p * stride), stride) };
        let (raw, cs) = mine.split_at_mut(n);
        let job = RowGemv {
            b,
            a: arow,
            c0: 0,
            k0: 4 * gs.start,
            k1: (4 * gs.end).min(b.k),
            sums,
        };
        // Cannot fail: has_gemv said yes, and these rows and columns exist.
        let done = Kr::gemv_rows(&job, raw, cs);
        debug_assert!(done);
    });
    let (first, rest) = part.split_at_mut(stride);
    for other in rest.chunks_exact(stride) {
        for (x, &y) in first.iter_mut().zip(other) {
            *x = x.wrapping_add(y);
        }
    }
    let (raw, cs) = first.split_at_mut(n);
    gemv_finish::<Kr, T>(pa, b, ep, 0, 0, raw, cs, out);
}

/// Row `i` × columns `c0 .. c0 + raw.len()` of the output from the GEMV's
/// raw sums `raw` and column sums `csum` (read only when A's stored zero
/// point is not 0): the zero-point correction, then the output step.
#[allow(clippy::too_many_arguments)]
fn gemv_finish<Kr: Kernel, T: OutElem>(
    pa: &super::PackedA<'_, Kr::AElem>,
    b: &RowsB<'_>,
    ep: &Epilogue<'_, T>,
    i: usize,
    c0: usize,
    raw: &mut [i32],
    csum: &[i32],
    out: SyncPtr<T>,
) {
    let k = b.k as i32;
    let (za, rs) = (pa.zp[i], pa.rowsum[i]);
    for (j, v) in raw.iter_mut().enumerate() {
        let zb = b.zp(c0 + j);
        let colterm = if za != 0 {
            csum[j].wrapping_sub(k.wrapping_mul(zb))
        } else {
            0
        };
        *v = v.wrapping_sub(za.wrapping_mul(colterm).wrapping_add(rs.wrapping_mul(zb)));
    }
    let w = raw.len();
    // SAFETY: the caller alone writes row i × columns c0..c0+w; the
    // kernel's ISA is supported (it was dispatched).
    unsafe {
        Kr::finish(Finish {
            acc: raw,
            ld: w,
            rows: i..i + 1,
            cols: c0..c0 + w,
            ep,
            out: out.get(),
            ldc: b.n,
        })
    };
}

/// Packs groups `g0..g0+kcg` of panels `jp..jp+np` of row-major B into
/// `buf` (panel `p` at `64·kcg·p`, group `g` at `64·g` within it), zero
/// padded past K and N. `wide(src, dst)` packs `WIDE` whole panels of one
/// group: `src` at row `4g`, column `16p` of B (rows `n` apart), `dst` at
/// the group in panel `p` (panels `64·kcg` apart).
#[inline(always)]
pub(crate) fn pack_rows_with<const WIDE: usize>(
    b: &RowsB<'_>,
    g0: usize,
    kcg: usize,
    jp: usize,
    np: usize,
    buf: &mut [i8],
    wide: impl Fn(&[u8], &mut [i8]),
) {
    let RowsB {
        src, k, n, mask, ..
    } = *b;
    let ps = 64 * kcg;
    for g in 0..kcg {
        let k0 = 4 * (g0 + g);
        let full_k = k0 + 4 <= k;
        let mut lp = 0;
        if full_k {
            while lp + WIDE <= np && (jp + lp + WIDE) * NR <= n {
                let s0 = k0 * n + (jp + lp) * NR;
                let d0 = lp * ps + 64 * g;
                // The same columns PREFETCH_GROUPS groups down: four short
                // strided runs per group are too short for the hardware
                // prefetchers to follow.
                for t in (0..4).filter(|_| WIDE * NR % 64 == 0) {
                    let ahead = s0 + (4 * PREFETCH_GROUPS + t) * n;
                    for l in (0..WIDE * NR).step_by(64) {
                        crate::cpu::prefetch(src.as_ptr().wrapping_add(ahead + l));
                    }
                }
                wide(
                    &src[s0..s0 + 3 * n + WIDE * NR],
                    &mut buf[d0..d0 + (WIDE - 1) * ps + 64],
                );
                lp += WIDE;
            }
        }
        for lp in lp..np {
            let c0 = (jp + lp) * NR;
            let ncols = (n - c0).min(NR);
            let grp = &mut buf[lp * ps + 64 * g..lp * ps + 64 * g + 64];
            if full_k && ncols == NR {
                let rows: [&[u8]; 4] =
                    std::array::from_fn(|t| &src[(k0 + t) * n + c0..(k0 + t) * n + c0 + NR]);
                transpose_4x16(rows, mask, grp);
            } else {
                grp.fill(0);
                for t in 0..k.saturating_sub(k0).min(4) {
                    let row = &src[(k0 + t) * n + c0..(k0 + t) * n + c0 + ncols];
                    for (c, &v) in row.iter().enumerate() {
                        grp[4 * c + t] = (v ^ mask) as i8;
                    }
                }
            }
        }
    }
}

/// How many K groups ahead [`pack_rows_with`] prefetches the rows of B.
const PREFETCH_GROUPS: usize = 4;

/// [`pack_rows_with`] one panel at a time (the portable packing).
pub(crate) fn pack_rows(
    b: &RowsB<'_>,
    g0: usize,
    kcg: usize,
    jp: usize,
    np: usize,
    buf: &mut [i8],
) {
    let n = b.n;
    pack_rows_with::<1>(b, g0, kcg, jp, np, buf, |src, dst| {
        let rows: [&[u8]; 4] = std::array::from_fn(|t| &src[t * n..t * n + NR]);
        transpose_4x16(rows, b.mask, dst)
    })
}
