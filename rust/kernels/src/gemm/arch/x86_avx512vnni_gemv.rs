//! AVX-512 VNNI GEMV over row-major B (`y = Â·B̂` for one row of A with B
//! given per call, `K × N` row-major): B is read in bands of whole rows,
//! each row front to back over a chunk of columns, so that B streams at the
//! memory's pace (a strip of a few hundred columns down all K rows reads
//! each row in runs too short for the hardware prefetchers: 1×4096×4096 ran
//! at 15 GB/s that way).
//!
//! `vpdpbusd` wants 4 consecutive k per 32-bit lane: four rows of B are
//! interleaved in registers (`vpunpck[lh]bw`, then `vpunpck[lh]wd`, within
//! 128-bit lanes), which leaves each 32-bit lane holding one column × 4 k
//! with the columns in a fixed permuted order; the accumulators keep that
//! order (in L1, one chunk of columns at a time) and it is undone once per
//! chunk ([`lanes_4x4`]). Exact: the products are summed in wrapping i32.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use crate::gemm::b_per_call::RowGemv;

/// Columns per chunk: the chunk's accumulators (`CHUNK` i32, as many again
/// for column sums) stay in L1/L2 while all of B's rows stream past them,
/// and each row of B is read in runs of `CHUNK` bytes (timed on a loaded
/// Zen 4, 1×4096×4096: 4096 columns with bands of 8 rows ran 1.4× faster
/// than 2048 with 16 rows, and 1.3× faster than bands of 4 rows).
const CHUNK: usize = 4096;

/// K groups (4 rows each) per band: the accumulators of a 64-column step are
/// loaded and stored once per band, and a band reads `4·BAND` rows of B side
/// by side (streams the hardware prefetchers follow; prefetching in
/// software as well ran slower).
const BAND: usize = 2;

crate::cpu::isa_fns!(avx512vnni;
    pub(crate) unsafe fn gemv_rows_tf(g: &RowGemv<'_, u8>, acc: &mut [i32], colsum: &mut [i32]) -> bool {
        gemv_rows(g, acc, colsum)
    }
);

/// The raw sums of columns `g.c0 .. g.c0 + acc.len()` (and, with `g.sums`,
/// their column sums of B̂) over rows `g.k0 .. g.k1` of B. Returns false
/// (nothing written) when the arguments do not describe such columns and rows.
#[inline(always)]
unsafe fn gemv_rows(g: &RowGemv<'_, u8>, acc: &mut [i32], colsum: &mut [i32]) -> bool {
    let RowGemv {
        b,
        a,
        c0,
        k0,
        k1,
        sums,
    } = *g;
    let n = b.n();
    let w = acc.len();
    let fits = c0
        .checked_add(w)
        .is_some_and(|e| e <= n && (!sums || colsum.len() >= w))
        && k0.is_multiple_of(4)
        && k0 <= k1
        && k1 <= b.k()
        && a.len() >= k1.div_ceil(4) * 4
        && b.k().checked_mul(n) == Some(b.src().len());
    if !fits {
        return false;
    }
    let (k, a) = (k1 - k0, &a[k0..]);
    let xor = b.mask() != 0;
    let mut j = 0;
    while j < w {
        let cw = CHUNK.min(w - j);
        let src = b.src().as_ptr().add(k0 * n + c0 + j);
        let (acc_c, cs_c) = (acc.as_mut_ptr().add(j), colsum.as_mut_ptr().wrapping_add(j));
        match (sums, xor) {
            (false, false) => chunk::<false, false>(src, n, k, a, cw, acc_c, cs_c),
            (false, true) => chunk::<false, true>(src, n, k, a, cw, acc_c, cs_c),
            (true, false) => chunk::<true, false>(src, n, k, a, cw, acc_c, cs_c),
            (true, true) => chunk::<true, true>(src, n, k, a, cw, acc_c, cs_c),
        }
        j += cw;
    }
    true
}

/// `cw <= CHUNK` columns of B from `src` (row 0; rows `n` apart, `k` rows):
/// raw sums into `acc[..cw]`, column sums into `colsum[..cw]` when `SUMS`.
/// `XOR`: uint8 B, stored as `b ^ 0x80`.
#[inline(always)]
unsafe fn chunk<const SUMS: bool, const XOR: bool>(
    src: *const u8,
    n: usize,
    k: usize,
    a: &[u8],
    cw: usize,
    acc: *mut i32,
    colsum: *mut i32,
) {
    let z = _mm512_setzero_si512();
    let steps = cw.div_ceil(64);
    let last: __mmask64 = if cw % 64 == 0 {
        !0
    } else {
        (1u64 << (cw % 64)) - 1
    };
    // Only the chunk's steps are zeroed (a narrow chunk is common).
    let mut perm = [MaybeUninit::<__m512i>::uninit(); 4 * CHUNK / 64];
    let mut cperm = [MaybeUninit::<__m512i>::uninit(); 4 * CHUNK / 64];
    for v in &mut perm[..4 * steps] {
        v.write(z);
    }
    if SUMS {
        for v in &mut cperm[..4 * steps] {
            v.write(z);
        }
    }
    let run = Steps {
        steps,
        last,
        perm: perm.as_mut_ptr() as *mut __m512i,
        cperm: cperm.as_mut_ptr() as *mut __m512i,
    };
    let groups = k / 4;
    let mut g = 0;
    while g + BAND <= groups {
        band::<BAND, SUMS, XOR>(src.add(4 * g * n), n, a.as_ptr().add(4 * g), 4, &run);
        g += BAND;
    }
    let rest = groups - g;
    let at = |g: usize| src.add(4 * g * n);
    match rest {
        1 => band::<1, SUMS, XOR>(at(g), n, a.as_ptr().add(4 * g), 4, &run),
        2 => band::<2, SUMS, XOR>(at(g), n, a.as_ptr().add(4 * g), 4, &run),
        3 => band::<3, SUMS, XOR>(at(g), n, a.as_ptr().add(4 * g), 4, &run),
        _ => {}
    }
    g += rest;
    if k % 4 != 0 {
        // The last, partial group: rows past K read as zeros (A is zero padded).
        band::<1, SUMS, XOR>(at(g), n, a.as_ptr().add(4 * g), k % 4, &run);
    }
    // SAFETY (reads): the first 4·steps registers of each were written above.
    let read = |p: *const __m512i, s: usize| -> [__m512i; 4] {
        std::array::from_fn(|j| *p.add(4 * s + j))
    };
    for s in 0..steps {
        let cols = if s + 1 == steps { cw - 64 * s } else { 64 };
        store(lanes_4x4(read(run.perm, s)), acc.add(64 * s), cols);
        if SUMS {
            store(lanes_4x4(read(run.cperm, s)), colsum.add(64 * s), cols);
        }
    }
}

/// The 64-column steps of a chunk and their permuted accumulators.
struct Steps {
    steps: usize,
    /// Load mask of the last step's bytes.
    last: __mmask64,
    /// 4 zmm per step: step `s`, register `j`, lane `L`, dword `d` sums
    /// column `64s + 16L + 4j + d`.
    perm: *mut __m512i,
    cperm: *mut __m512i,
}

/// `G` groups of 4 rows of B from `src` (rows `n` apart) times the A bytes
/// at `a` (`4·G`), added into every step of `run`; `rows`: how many rows of
/// the last group exist (4 but for K's last, partial group; the others read
/// as zeros).
#[inline(always)]
unsafe fn band<const G: usize, const SUMS: bool, const XOR: bool>(
    src: *const u8,
    n: usize,
    a: *const u8,
    rows: usize,
    run: &Steps,
) {
    let av: [__m512i; G] =
        std::array::from_fn(|g| _mm512_set1_epi32((a.add(4 * g) as *const i32).read_unaligned()));
    let ones = _mm512_set1_epi8(1);
    let flip = _mm512_set1_epi8(-128);
    for s in 0..run.steps {
        let mask = if s + 1 == run.steps { run.last } else { !0 };
        let p = run.perm.add(4 * s);
        let mut acc: [__m512i; 4] = std::array::from_fn(|j| *p.add(j));
        let cp = run.cperm.add(4 * s);
        let mut cs: [__m512i; 4] = std::array::from_fn(|j| if SUMS { *cp.add(j) } else { acc[j] });
        for g in 0..G {
            let r: [__m512i; 4] = std::array::from_fn(|t| {
                if g + 1 == G && t >= rows {
                    return _mm512_setzero_si512();
                }
                let at = (4 * g + t) * n + 64 * s;
                let v = _mm512_maskz_loadu_epi8(mask, src.add(at) as *const _);
                if XOR {
                    _mm512_xor_si512(v, flip)
                } else {
                    v
                }
            });
            let lo01 = _mm512_unpacklo_epi8(r[0], r[1]);
            let hi01 = _mm512_unpackhi_epi8(r[0], r[1]);
            let lo23 = _mm512_unpacklo_epi8(r[2], r[3]);
            let hi23 = _mm512_unpackhi_epi8(r[2], r[3]);
            // Lane L of q_j: columns 16L + 4j .. 16L + 4j + 4, 4 k each.
            let q = [
                _mm512_unpacklo_epi16(lo01, lo23),
                _mm512_unpackhi_epi16(lo01, lo23),
                _mm512_unpacklo_epi16(hi01, hi23),
                _mm512_unpackhi_epi16(hi01, hi23),
            ];
            for j in 0..4 {
                acc[j] = _mm512_dpbusd_epi32(acc[j], av[g], q[j]);
                if SUMS {
                    cs[j] = _mm512_dpbusd_epi32(cs[j], ones, q[j]);
                }
            }
        }
        for j in 0..4 {
            *p.add(j) = acc[j];
            if SUMS {
                *cp.add(j) = cs[j];
            }
        }
    }
}

/// The 4 × 4 transpose of 128-bit lanes: lane `p` of output `i` is lane `i`
/// of input `p`. It turns the permuted column order of four interleaved
/// registers (lane `L` of register `j` holding columns `16L + 4j ..`) into
/// 64 consecutive columns (register `p` holding columns `16p .. 16p + 16`).
#[inline(always)]
pub(crate) unsafe fn lanes_4x4(q: [__m512i; 4]) -> [__m512i; 4] {
    let t0 = _mm512_shuffle_i64x2::<0b01_00_01_00>(q[0], q[1]); // q0.L0 q0.L1 q1.L0 q1.L1
    let t1 = _mm512_shuffle_i64x2::<0b11_10_11_10>(q[0], q[1]); // q0.L2 q0.L3 q1.L2 q1.L3
    let t2 = _mm512_shuffle_i64x2::<0b01_00_01_00>(q[2], q[3]);
    let t3 = _mm512_shuffle_i64x2::<0b11_10_11_10>(q[2], q[3]);
    [
        _mm512_shuffle_i64x2::<0b10_00_10_00>(t0, t2),
        _mm512_shuffle_i64x2::<0b11_01_11_01>(t0, t2),
        _mm512_shuffle_i64x2::<0b10_00_10_00>(t1, t3),
        _mm512_shuffle_i64x2::<0b11_01_11_01>(t1, t3),
    ]
}

/// The first `cols` (<= 64) of 64 consecutive i32 columns to `dst`.
#[inline(always)]
unsafe fn store(v: [__m512i; 4], dst: *mut i32, cols: usize) {
    for (p, x) in v.iter().enumerate() {
        let left = cols.saturating_sub(16 * p).min(16);
        if left == 0 {
            break;
        }
        let m: __mmask16 = if left == 16 { !0 } else { (1u16 << left) - 1 };
        _mm512_mask_storeu_epi32(dst.add(16 * p), m, *x);
    }
}
