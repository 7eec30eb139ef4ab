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

use std::arch::x86_64::__m128i;

use crate::quant::{
    dequant1, dequant_row_scalar, dequant_run_scalar, min_max_finish, quant1, quant_row_scalar,
    quant_run_scalar, stream_head, MIN_MAX_LANES,
};

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
    unsafe fn add(a: Self::F, b: Self::F) -> Self::F;
    /// `a < b ? a : b` per lane (x86 `min`: `b` when either is NaN).
    unsafe fn min(a: Self::F, b: Self::F) -> Self::F;
    /// `a > b ? a : b` per lane.
    unsafe fn max(a: Self::F, b: Self::F) -> Self::F;
    /// `round_half_even(x / s) + zp`, clamped to `[lo, hi]`, as i32 lanes.
    unsafe fn q(x: Self::F, s: Self::F, zp: Self::F, lo: Self::F, hi: Self::F) -> Self::I;
    /// Four vectors of in-range i32 written as `4 W` bytes at `p`, in element order.
    unsafe fn store_q4<const SIGNED: bool, const STREAM: bool>(p: *mut u8, v: [Self::I; 4]);
    /// `W` bytes at `p` (int8 if `SIGNED`, else uint8) widened to f32.
    unsafe fn widen<const SIGNED: bool>(p: *const u8) -> Self::F;
    /// `W` bytes at `p` in the low part of a 128-bit vector.
    unsafe fn load_bytes(p: *const u8) -> __m128i;
    /// Orders the streaming stores before what follows.
    unsafe fn fence();

    // The tails (under one group of four vectors, already sliced): the scalar reference
    // loops unless the width has masked loads and stores (AVX-512 overrides them, so short
    // rows stay in SIMD).

    #[inline(always)]
    unsafe fn quant_run_tail(x: &[f32], s: f32, zp: f32, lo: f32, hi: f32, out: &mut [u8]) {
        quant_run_scalar(x, s, zp, lo, hi, out, false)
    }
    #[inline(always)]
    unsafe fn quant_row_tail(x: &[f32], s: &[f32], zp: &[f32], lo: f32, hi: f32, out: &mut [u8]) {
        quant_row_scalar(x, s, zp, lo, hi, out)
    }
    #[inline(always)]
    unsafe fn dequant_run_tail<const SIGNED: bool>(q: &[u8], s: f32, zp: f32, out: &mut [f32]) {
        dequant_run_scalar(q, SIGNED, s, zp, out, false)
    }
    #[inline(always)]
    unsafe fn dequant_row_tail<const SIGNED: bool>(
        q: &[u8],
        s: &[f32],
        zp: &[f32],
        out: &mut [f32],
    ) {
        dequant_row_scalar(q, SIGNED, s, zp, out, false)
    }
}

/// A vector width: `lanes! { Name = W, QUANT_ALIGN, DEQUANT_ALIGN, f32 vector, i32 vector,
/// intrinsics...; its other `Lanes` members }` declares `Name`, implements [`Lanes`] for it (the
/// members that differ between widths only by their intrinsics' names come from here) and emits
/// the four loops `table!` wraps, over the bodies of this file.
macro_rules! lanes {
    ($name:ident = $w:expr, $quant_align:expr, $dequant_align:expr, $f:ty, $i:ty, $loadu:ident,
     $set1:ident, $storeu:ident, $stream:ident, $sub:ident, $mul:ident, $div:ident, $add:ident,
     $min:ident, $max:ident, $cvt:ident, $round:ident, $cvtepi32ps:ident, $sx:ident, $zx:ident;
     $($members:tt)*) => {
        pub(crate) struct $name;

        impl $crate::quant::arch::x86_simd::Lanes for $name {
        const W: usize = $w;
        const QUANT_ALIGN: usize = $quant_align;
        const DEQUANT_ALIGN: usize = $dequant_align;
        type F = $f;
        type I = $i;
        #[inline(always)]
        unsafe fn loadu(p: *const f32) -> $f {
            $loadu(p)
        }
        #[inline(always)]
        unsafe fn set1(v: f32) -> $f {
            $set1(v)
        }
        #[inline(always)]
        unsafe fn store<const STREAM: bool>(p: *mut f32, v: $f) {
            if STREAM {
                $stream(p, v)
            } else {
                $storeu(p, v)
            }
        }
        #[inline(always)]
        unsafe fn sub(a: $f, b: $f) -> $f {
            $sub(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: $f, b: $f) -> $f {
            $mul(a, b)
        }
        #[inline(always)]
        unsafe fn add(a: $f, b: $f) -> $f {
            $add(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: $f, b: $f) -> $f {
            $min(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: $f, b: $f) -> $f {
            $max(a, b)
        }
        #[inline(always)]
        unsafe fn q(x: $f, s: $f, zp: $f, lo: $f, hi: $f) -> $i {
            let v = $round::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>($div(x, s));
            $cvt($min($max($add(v, zp), lo), hi))
        }
        #[inline(always)]
        unsafe fn widen<const SIGNED: bool>(p: *const u8) -> $f {
            let v = Self::load_bytes(p);
            $cvtepi32ps(if SIGNED { $sx(v) } else { $zx(v) })
        }
        #[inline(always)]
        unsafe fn fence() {
            _mm_sfence()
        }
        $($members)*
        }

        $crate::quant::arch::x86_simd::width_loops!($name);
    };
}
pub(crate) use lanes;

/// The four loops of `table!` for the width `$l`: `#[inline(always)]` wrappers over the bodies
/// of this file, in the module it is used in.
macro_rules! width_loops {
    ($l:ty) => {
        #[inline(always)]
        unsafe fn quant_run(
            x: &[f32],
            s: f32,
            zp: f32,
            lo: f32,
            hi: f32,
            out: &mut [u8],
            st: bool,
        ) {
            $crate::quant::arch::x86_simd::quant_run::<$l>(x, s, zp, lo, hi, out, st)
        }
        #[inline(always)]
        unsafe fn quant_row(x: &[f32], s: &[f32], zp: &[f32], lo: f32, hi: f32, out: &mut [u8]) {
            $crate::quant::arch::x86_simd::quant_row::<$l>(x, s, zp, lo, hi, out)
        }
        #[inline(always)]
        unsafe fn dequant_run(q: &[u8], sg: bool, s: f32, zp: f32, out: &mut [f32], st: bool) {
            $crate::quant::arch::x86_simd::dequant_run::<$l>(q, sg, s, zp, out, st)
        }
        #[inline(always)]
        unsafe fn dequant_row(
            q: &[u8],
            sg: bool,
            s: &[f32],
            zp: &[f32],
            out: &mut [f32],
            st: bool,
        ) {
            $crate::quant::arch::x86_simd::dequant_row::<$l>(q, sg, s, zp, out, st)
        }
    };
}
pub(crate) use width_loops;

/// `$f::<L, A, B>(args)` with the const flags `A`, `B` set from the run-time `$a`, `$b`.
macro_rules! with_flags {
    ($a:expr, $b:expr, $f:ident::<$l:ty>($($arg:expr),*)) => {
        match ($a, $b) {
            (true, false) => $f::<$l, true, false>($($arg),*),
            (false, false) => $f::<$l, false, false>($($arg),*),
            (true, true) => $f::<$l, true, true>($($arg),*),
            (false, true) => $f::<$l, false, true>($($arg),*),
        }
    };
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
    with_flags!(lo < 0.0, stream, quant_run_t::<L>(x, s, zp, lo, hi, out));
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
        // Plain code, no closure: a closure's body would not inherit the wrapper's features.
        let mut v = [L::q(L::loadu(xp.add(i)), vs, vz, vlo, vhi); 4];
        for (k, vk) in v.iter_mut().enumerate().skip(1) {
            *vk = L::q(L::loadu(xp.add(i + k * L::W)), vs, vz, vlo, vhi);
        }
        L::store_q4::<SIGNED, STREAM>(op.add(i), v);
        i += 4 * L::W;
    }
    L::quant_run_tail(&x[i..n], s, zp, lo, hi, &mut out[i..n]);
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
        let mut v = [L::q(
            L::loadu(xp.add(i)),
            L::loadu(sp.add(i)),
            L::loadu(zpp.add(i)),
            vlo,
            vhi,
        ); 4];
        for (k, vk) in v.iter_mut().enumerate().skip(1) {
            let o = i + k * L::W;
            *vk = L::q(
                L::loadu(xp.add(o)),
                L::loadu(sp.add(o)),
                L::loadu(zpp.add(o)),
                vlo,
                vhi,
            );
        }
        L::store_q4::<SIGNED, false>(op.add(i), v);
        i += 4 * L::W;
    }
    L::quant_row_tail(&x[i..n], &s[i..n], &zp[i..n], lo, hi, &mut out[i..n]);
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
    with_flags!(signed, stream, dequant_run_t::<L>(q, s, zp, out));
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
    L::dequant_run_tail::<SIGNED>(&q[i..n], s, zp, &mut out[i..n]);
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
    with_flags!(signed, stream, dequant_row_t::<L>(q, s, zp, out));
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
    L::dequant_row_tail::<SIGNED>(&q[i..n], &s[i..n], &zp[i..n], &mut out[i..n]);
}

/// [`crate::quant::min_max_body`] in explicit vectors: the same 16 lanes (one AVX-512
/// vector, two AVX2 ones), the same per-lane operations in the same order (`min(v, mn)` is
/// `v < mn ? v : mn`), the same finish, so the same bits. The compiler left the portable
/// body mostly scalar (2.8 instructions per element on AVX2).
#[inline(always)]
pub(crate) unsafe fn min_max<L: Lanes>(x: &[f32]) -> (f32, f32, f32) {
    const MAXV: usize = 2; // vectors per group of lanes: 16 / W for W = 8 or 16
    let nv = MIN_MAX_LANES / L::W;
    debug_assert!(nv * L::W == MIN_MAX_LANES && nv <= MAXV);
    let zero = L::set1(0.0);
    let mut mn = [L::set1(f32::INFINITY); MAXV];
    let mut mx = [L::set1(f32::NEG_INFINITY); MAXV];
    let mut poison = [zero; MAXV];
    let groups = x.len() / MIN_MAX_LANES;
    let p = x.as_ptr();
    for g in 0..groups {
        for k in 0..nv {
            let v = L::loadu(p.add(g * MIN_MAX_LANES + k * L::W));
            mn[k] = L::min(v, mn[k]);
            mx[k] = L::max(v, mx[k]);
            poison[k] = L::add(poison[k], L::mul(v, zero));
        }
    }
    let (mut a, mut b, mut c) = (
        [0.0f32; MIN_MAX_LANES],
        [0.0f32; MIN_MAX_LANES],
        [0.0f32; MIN_MAX_LANES],
    );
    for k in 0..nv {
        L::store::<false>(a.as_mut_ptr().add(k * L::W), mn[k]);
        L::store::<false>(b.as_mut_ptr().add(k * L::W), mx[k]);
        L::store::<false>(c.as_mut_ptr().add(k * L::W), poison[k]);
    }
    min_max_finish(&a, &b, &c, &x[groups * MIN_MAX_LANES..])
}
