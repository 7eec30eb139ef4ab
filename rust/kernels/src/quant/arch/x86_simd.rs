//! The quantization loops of the x86 family, written once over the vector
//! width: [`Lanes`] is what one width (AVX2's 8 floats, AVX-512's 16) provides,
//! and the bodies below are the loops of every x86 path. `x86_avx2.rs` and
//! `x86_avx512.rs` implement [`Lanes`] and hand these bodies to `table!`.
//!
//! Same arithmetic as the scalar reference in `quant/mod.rs`: IEEE division,
//! round to nearest-even, add the zero point, `max(v, lo)` (NaN -> lo) then
//! `min(v, hi)`, an exact convert of the now in-range integer; dequantize is
//! `(q - zp) * scale`. Full groups of four vectors run in SIMD; the tail (under
//! one group) runs the width's tail methods: `quant1` / `dequant1` (the same
//! values) by default, masked vectors where the width has them.

use crate::quant::{dequant1, quant1, stream_head};

/// One vector width. Every method is `#[inline(always)]` and only called from
/// the `#[target_feature]` wrappers of the width's own table.
pub(crate) trait Lanes {
    /// f32 lanes per vector.
    const W: usize;
    /// Output alignment (bytes) of the streaming quantize stores.
    const QUANT_ALIGN: usize;
    /// Output alignment (bytes) of the streaming dequantize stores.
    const DEQUANT_ALIGN: usize;
    type F: Copy;
    type I: Copy;
    unsafe fn loadu(p: *const f32) -> Self::F;
    unsafe fn set1(v: f32) -> Self::F;
    unsafe fn store<const STREAM: bool>(p: *mut f32, v: Self::F);
    unsafe fn sub(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// `round_half_even(x / s) + zp`, clamped to `[lo, hi]`, as i32 lanes.
    unsafe fn q(x: Self::F, s: Self::F, zp: Self::F, lo: Self::F, hi: Self::F) -> Self::I;
    /// Four vectors of in-range i32 written as `4 W` bytes at `p`, in element order.
    unsafe fn store_q4<const SIGNED: bool, const STREAM: bool>(p: *mut u8, v: [Self::I; 4]);
    /// `W` bytes at `p` (int8 if `SIGNED`, else uint8) widened to f32.
    unsafe fn widen<const SIGNED: bool>(p: *const u8) -> Self::F;
    /// Orders the streaming stores before what follows.
    unsafe fn fence();

    // The tails (from `i`, under one group of four vectors): scalar unless the width has
    // masked loads and stores (AVX-512 overrides them, so short rows stay in SIMD).

    #[inline(always)]
    unsafe fn quant_run_tail(
        x: &[f32],
        s: f32,
        zp: f32,
        lo: f32,
        hi: f32,
        out: &mut [u8],
        i: usize,
    ) {
        for j in i..x.len().min(out.len()) {
            out[j] = quant1(x[j], s, zp, lo, hi);
        }
    }
    #[inline(always)]
    unsafe fn quant_row_tail(
        x: &[f32],
        s: &[f32],
        zp: &[f32],
        lo: f32,
        hi: f32,
        out: &mut [u8],
        i: usize,
    ) {
        for j in i..x.len().min(out.len()).min(s.len()).min(zp.len()) {
            out[j] = quant1(x[j], s[j], zp[j], lo, hi);
        }
    }
    #[inline(always)]
    unsafe fn dequant_run_tail<const SIGNED: bool>(
        q: &[u8],
        s: f32,
        zp: f32,
        out: &mut [f32],
        i: usize,
    ) {
        for j in i..q.len().min(out.len()) {
            out[j] = dequant1(q[j], SIGNED, s, zp);
        }
    }
    #[inline(always)]
    unsafe fn dequant_row_tail<const SIGNED: bool>(
        q: &[u8],
        s: &[f32],
        zp: &[f32],
        out: &mut [f32],
        i: usize,
    ) {
        for j in i..q.len().min(out.len()).min(s.len()).min(zp.len()) {
            out[j] = dequant1(q[j], SIGNED, s[j], zp[j]);
        }
    }
}

#[inline(always)]
pub(crate) unsafe fn quant_run<L: Lanes>(
    x: &[f32],
    s: f32,
    zp: f32,
    lo: f32,
    hi: f32,
    out: &mut [u8],
    stream: bool,
) {
    let n = x.len().min(out.len());
    // Streaming: scalar head up to an aligned output, then non-temporal stores.
    let head = stream_head(out, n, stream, L::QUANT_ALIGN, |j| {
        quant1(x[j], s, zp, lo, hi)
    });
    let (x, out) = (&x[head..n], &mut out[head..n]);
    match (lo < 0.0, stream) {
        (true, false) => quant_run_t::<L, true, false>(x, s, zp, lo, hi, out),
        (false, false) => quant_run_t::<L, false, false>(x, s, zp, lo, hi, out),
        (true, true) => quant_run_t::<L, true, true>(x, s, zp, lo, hi, out),
        (false, true) => quant_run_t::<L, false, true>(x, s, zp, lo, hi, out),
    }
    if stream {
        L::fence();
    }
}

#[inline(always)]
unsafe fn quant_run_t<L: Lanes, const SIGNED: bool, const STREAM: bool>(
    x: &[f32],
    s: f32,
    zp: f32,
    lo: f32,
    hi: f32,
    out: &mut [u8],
) {
    let n = x.len().min(out.len());
    let (vs, vz, vlo, vhi) = (L::set1(s), L::set1(zp), L::set1(lo), L::set1(hi));
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + 4 * L::W <= n {
        let v = [0, 1, 2, 3].map(|k| L::q(L::loadu(xp.add(i + k * L::W)), vs, vz, vlo, vhi));
        L::store_q4::<SIGNED, STREAM>(op.add(i), v);
        i += 4 * L::W;
    }
    L::quant_run_tail(&x[..n], s, zp, lo, hi, out, i);
}

#[inline(always)]
pub(crate) unsafe fn quant_row<L: Lanes>(
    x: &[f32],
    s: &[f32],
    zp: &[f32],
    lo: f32,
    hi: f32,
    out: &mut [u8],
) {
    if lo < 0.0 {
        quant_row_t::<L, true>(x, s, zp, lo, hi, out)
    } else {
        quant_row_t::<L, false>(x, s, zp, lo, hi, out)
    }
}

#[inline(always)]
unsafe fn quant_row_t<L: Lanes, const SIGNED: bool>(
    x: &[f32],
    s: &[f32],
    zp: &[f32],
    lo: f32,
    hi: f32,
    out: &mut [u8],
) {
    let n = x.len().min(out.len()).min(s.len()).min(zp.len());
    let (vlo, vhi) = (L::set1(lo), L::set1(hi));
    let (xp, sp, zpp, op) = (x.as_ptr(), s.as_ptr(), zp.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + 4 * L::W <= n {
        let v = [0, 1, 2, 3].map(|k| {
            let o = i + k * L::W;
            L::q(
                L::loadu(xp.add(o)),
                L::loadu(sp.add(o)),
                L::loadu(zpp.add(o)),
                vlo,
                vhi,
            )
        });
        L::store_q4::<SIGNED, false>(op.add(i), v);
        i += 4 * L::W;
    }
    L::quant_row_tail(&x[..n], s, zp, lo, hi, out, i);
}

#[inline(always)]
pub(crate) unsafe fn dequant_run<L: Lanes>(
    q: &[u8],
    signed: bool,
    s: f32,
    zp: f32,
    out: &mut [f32],
    stream: bool,
) {
    let n = q.len().min(out.len());
    let head = stream_head(out, n, stream, L::DEQUANT_ALIGN, |j| {
        dequant1(q[j], signed, s, zp)
    });
    let (q, out) = (&q[head..n], &mut out[head..n]);
    match (signed, stream) {
        (true, false) => dequant_run_t::<L, true, false>(q, s, zp, out),
        (false, false) => dequant_run_t::<L, false, false>(q, s, zp, out),
        (true, true) => dequant_run_t::<L, true, true>(q, s, zp, out),
        (false, true) => dequant_run_t::<L, false, true>(q, s, zp, out),
    }
    if stream {
        L::fence();
    }
}

#[inline(always)]
unsafe fn dequant_run_t<L: Lanes, const SIGNED: bool, const STREAM: bool>(
    q: &[u8],
    s: f32,
    zp: f32,
    out: &mut [f32],
) {
    let n = q.len().min(out.len());
    let (vs, vz) = (L::set1(s), L::set1(zp));
    let (qp, op) = (q.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + 4 * L::W <= n {
        for k in 0..4 {
            let o = i + k * L::W;
            let v = L::mul(L::sub(L::widen::<SIGNED>(qp.add(o)), vz), vs);
            L::store::<STREAM>(op.add(o), v);
        }
        i += 4 * L::W;
    }
    L::dequant_run_tail::<SIGNED>(&q[..n], s, zp, out, i);
}

#[inline(always)]
pub(crate) unsafe fn dequant_row<L: Lanes>(
    q: &[u8],
    signed: bool,
    s: &[f32],
    zp: &[f32],
    out: &mut [f32],
    stream: bool,
) {
    let n = q.len().min(out.len()).min(s.len()).min(zp.len());
    let head = stream_head(out, n, stream, L::DEQUANT_ALIGN, |j| {
        dequant1(q[j], signed, s[j], zp[j])
    });
    let (q, s, zp, out) = (&q[head..n], &s[head..n], &zp[head..n], &mut out[head..n]);
    match (signed, stream) {
        (true, false) => dequant_row_t::<L, true, false>(q, s, zp, out),
        (false, false) => dequant_row_t::<L, false, false>(q, s, zp, out),
        (true, true) => dequant_row_t::<L, true, true>(q, s, zp, out),
        (false, true) => dequant_row_t::<L, false, true>(q, s, zp, out),
    }
    if stream {
        L::fence();
    }
}

#[inline(always)]
unsafe fn dequant_row_t<L: Lanes, const SIGNED: bool, const STREAM: bool>(
    q: &[u8],
    s: &[f32],
    zp: &[f32],
    out: &mut [f32],
) {
    let n = q.len().min(out.len()).min(s.len()).min(zp.len());
    let (qp, sp, zpp, op) = (q.as_ptr(), s.as_ptr(), zp.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + L::W <= n {
        let f = L::widen::<SIGNED>(qp.add(i));
        let r = L::mul(L::sub(f, L::loadu(zpp.add(i))), L::loadu(sp.add(i)));
        L::store::<STREAM>(op.add(i), r);
        i += L::W;
    }
    L::dequant_row_tail::<SIGNED>(&q[..n], s, zp, out, i);
}
