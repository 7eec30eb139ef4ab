//! Branch-free `exp`, `erf` and the normal CDF in f32, written so that LLVM
//! vectorises loops over them (compares become blends; no table look-ups, no
//! calls into libm).
//!
//! - [`exp`]: Cephes `expf` (range reduction by `ln 2` in two parts, a
//!   degree-6 polynomial), about 1 ulp; 0 below `ln(2^-150)`, `inf` above
//!   `ln(f32::MAX)`, NaN in gives NaN out; subnormal results are kept. The
//!   clamp of the argument is the only compare: the ends come out of the
//!   arithmetic.
//! - [`erfc_pos`]: the Chebyshev-fitted `erfc` of Numerical Recipes
//!   (`erfcc`, fractional error below 1.2e-7 for every `z >= 0`).
//! - [`erf`]: its Maclaurin series for `|x| < 0.5` (relative error ~1e-9
//!   before rounding), `±(1 - erfc(|x|))` beyond; absolute error ~1e-7.
//! - [`phi`]: the standard normal CDF `Φ(x) = erfc(-x/√2) / 2`, accurate in
//!   relative terms in the left tail too (no `1 + erf` cancellation).

/// `1.5 · 2^23`: adding it rounds an f32 of magnitude below `2^22` to an
/// integer (to nearest, ties to even) held in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split so that `n · LN2_HI` is exact for the `n` used here.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Just above `ln(f32::MAX)` (88.72): from here on `e^x` overflows to `inf`
/// through the arithmetic itself, so clamping to it keeps `inf`.
const EXP_MAX: f32 = 88.8;
/// Below about -103.97 `e^x` rounds to 0 even as a subnormal; clamping to
/// -104 gives that 0 through the arithmetic itself.
const EXP_MIN: f32 = -104.0;

/// `e^x` in f32 (about 1 ulp); see the module docs.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // NaN passes through the clamp
    let xc = x.clamp(EXP_MIN, EXP_MAX);
    let t = xc * LOG2E + ROUND_MAGIC;
    let nf = t - ROUND_MAGIC;
    // the integer n sits in the low mantissa bits of t
    let n = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = xc - nf * LN2_HI - nf * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * (r * r) + r + 1.0;
    // 2^n as two normal factors: n ranges over [-150, 128]
    let n1 = n >> 1;
    let n2 = n - n1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n2 + 127) as u32) << 23);
    y * s1 * s2
}

/// `erfc(z)` for `z >= 0` (Numerical Recipes' `erfcc`, fractional error < 1.2e-7).
#[inline(always)]
pub fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_2 + t * 0.170_872_77))))))));
    t * exp(-z * z + poly)
}

/// The error function in f32 (absolute error about 1e-7, relative ~1e-7 near 0).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    // Maclaurin: 2/√π · (x − x³/3 + x⁵/10 − x⁷/42 + x⁹/216 − x¹¹/1320 + x¹³/9360)
    let x2 = x * x;
    let series = x
        * std::f32::consts::FRAC_2_SQRT_PI
        * (1.0
            + x2 * (-1.0 / 3.0
                + x2 * (1.0 / 10.0
                    + x2 * (-1.0 / 42.0
                        + x2 * (1.0 / 216.0 + x2 * (-1.0 / 1320.0 + x2 * (1.0 / 9360.0)))))));
    let tail = 1.0 - erfc_pos(a);
    let tail = if x < 0.0 { -tail } else { tail };
    if a < 0.5 {
        series
    } else {
        tail
    }
}

/// `1/√2`.
pub const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `1/√(2π)`, the peak of the standard normal density.
pub const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// The standard normal CDF `Φ(x) = erfc(-x/√2)/2`.
#[inline(always)]
pub fn phi(x: f32) -> f32 {
    let half = 0.5 * erfc_pos(x.abs() * FRAC_1_SQRT_2);
    if x < 0.0 {
        half
    } else {
        1.0 - half
    }
}
