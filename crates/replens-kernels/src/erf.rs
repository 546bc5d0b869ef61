//! candle's GELU `(erf(y/√2) + 1) · 0.5 · y` (`gelu_erf`), whose `erf` is the `libm` crate's
//! `erf` / `erff` (FreeBSD's `s_erf.c` / `s_erff.c`, with `libm`'s `exp` / `expf`, FreeBSD's
//! `e_exp.c` / `e_expf.c`), rewritten without branches so that it runs in SIMD lanes.
//!
//! `libm`'s `erf` picks one of five formulas by the size of its argument, and its slowest one
//! (1.25 ≤ |x| < 6) calls `exp` twice. Here every lane computes every formula with the same
//! operations in the same order as `libm` and keeps the one `libm` would have taken, so the
//! values are `libm`'s to the bit (tested in f32 on a stride through all 2³² bit patterns, and in
//! both precisions on every value near a branch point and densely where GELU inputs live); only
//! the time changes: the lanes of AVX-512 or AVX2 share each division and `exp`.
//!
//! The coefficients and the algorithm are FreeBSD msun's, which carries this notice:
//!
//! > Copyright (C) 1993 by Sun Microsystems, Inc. All rights reserved.
//! > Developed at SunPro, a Sun Microsystems, Inc. business.
//! > Permission to use, copy, modify, and distribute this software is freely granted,
//! > provided that this notice is preserved.

use std::ops::Neg;

use crate::encoder::Float;

/// A float type with `libm`'s `erf` coefficients and the bit tests `erf` and `exp` make on it.
/// Thresholds are on the high 32 bits of |x| (all of an f32, the top word of an f64), as
/// `libm` tests them.
pub(crate) trait LibmErf: Float + Neg<Output = Self> {
    const HALF: Self;
    const EIGHTH: Self;
    const EIGHT: Self;
    const TWO: Self;
    const ERFC_SHIFT: Self; // 0.5625
    const FRAC_1_SQRT_2: Self;
    const ERX: Self;
    const EFX8: Self;
    const PP: [Self; 5];
    const QQ: [Self; 5];
    const PA: [Self; 7];
    const QA: [Self; 6];
    const RA: [Self; 8];
    const SA: [Self; 8];
    const RB: [Self; 7];
    const SB: [Self; 7];
    const LN2_HI: Self;
    const LN2_LO: Self;
    const INV_LN2: Self;
    /// The polynomial of `exp`'s primary range, `P1, P2, …`.
    const EXP_P: &'static [Self];
    /// `erf`'s thresholds: NaN/inf, below 2⁻²⁸, below 0.84375, below 1.25,
    /// below 1/0.35, below 6.
    const ERF_INF: u32;
    const ERF_TINY: u32;
    const ERF_SMALL: u32;
    const ERF_NEAR: u32;
    const ERF_MID: u32;
    const ERF_FAR: u32;
    /// `exp`'s thresholds: |x| at least 1.5 ln2, above 0.5 ln2, above its "return 1 + x" cut.
    const EXP_FAR: u32;
    const EXP_REDUCE: u32;
    const EXP_TINY: u32;
    /// The high 32 bits of |x| and the sign bit.
    fn high_word(self) -> (u32, bool);
    /// |x|.
    fn abs(self) -> Self;
    /// |x| with the low bits `erfc` clears (f32: the low 13; f64: the low word).
    fn erfc_split(self) -> Self;
    /// `1 − 2⁻¹²⁰` (f32) / `1 − 2⁻¹⁰²²` (f64), computed as `libm` computes it.
    fn one_minus_tiny() -> Self;
    /// `self as i32` (truncation) for |x| < 2²², the range `exp` needs; some integer, without
    /// a panic, otherwise. Rust's saturating cast would not vectorise.
    fn to_i32(self) -> i32;
    fn from_i32(k: i32) -> Self;
    /// 2^k for `k` in the normal range (clamped into it).
    fn pow2(k: i32) -> Self;
    /// `libm`'s own function, for the tail of a row.
    fn libm_erf(self) -> Self;
}

// The coefficients as libm writes them (the same bits after rounding).
#[allow(clippy::excessive_precision, clippy::approx_constant)]
impl LibmErf for f32 {
    const HALF: Self = 0.5;
    const EIGHTH: Self = 0.125;
    const EIGHT: Self = 8.0;
    const TWO: Self = 2.0;
    const ERFC_SHIFT: Self = 0.5625;
    const FRAC_1_SQRT_2: Self = std::f32::consts::FRAC_1_SQRT_2;
    const ERX: Self = 8.4506291151e-01;
    const EFX8: Self = 1.0270333290e+00;
    const PP: [Self; 5] = [
        1.2837916613e-01,
        -3.2504209876e-01,
        -2.8481749818e-02,
        -5.7702702470e-03,
        -2.3763017452e-05,
    ];
    const QQ: [Self; 5] = [
        3.9791721106e-01,
        6.5022252500e-02,
        5.0813062117e-03,
        1.3249473704e-04,
        -3.9602282413e-06,
    ];
    const PA: [Self; 7] = [
        -2.3621185683e-03,
        4.1485610604e-01,
        -3.7220788002e-01,
        3.1834661961e-01,
        -1.1089469492e-01,
        3.5478305072e-02,
        -2.1663755178e-03,
    ];
    const QA: [Self; 6] = [
        1.0642088205e-01,
        5.4039794207e-01,
        7.1828655899e-02,
        1.2617121637e-01,
        1.3637083583e-02,
        1.1984500103e-02,
    ];
    const RA: [Self; 8] = [
        -9.8649440333e-03,
        -6.9385856390e-01,
        -1.0558626175e+01,
        -6.2375331879e+01,
        -1.6239666748e+02,
        -1.8460508728e+02,
        -8.1287437439e+01,
        -9.8143291473e+00,
    ];
    const SA: [Self; 8] = [
        1.9651271820e+01,
        1.3765776062e+02,
        4.3456588745e+02,
        6.4538726807e+02,
        4.2900814819e+02,
        1.0863500214e+02,
        6.5702495575e+00,
        -6.0424413532e-02,
    ];
    const RB: [Self; 7] = [
        -9.8649431020e-03,
        -7.9928326607e-01,
        -1.7757955551e+01,
        -1.6063638306e+02,
        -6.3756646729e+02,
        -1.0250950928e+03,
        -4.8351919556e+02,
    ];
    const SB: [Self; 7] = [
        3.0338060379e+01,
        3.2579251099e+02,
        1.5367296143e+03,
        3.1998581543e+03,
        2.5530502930e+03,
        4.7452853394e+02,
        -2.2440952301e+01,
    ];
    const LN2_HI: Self = 6.9314575195e-01;
    const LN2_LO: Self = 1.4286067653e-06;
    const INV_LN2: Self = 1.4426950216e+00;
    const EXP_P: &'static [Self] = &[1.6666625440e-1, -2.7667332906e-3];
    const ERF_INF: u32 = 0x7f80_0000;
    const ERF_TINY: u32 = 0x3180_0000;
    const ERF_SMALL: u32 = 0x3f58_0000;
    const ERF_NEAR: u32 = 0x3fa0_0000;
    const ERF_MID: u32 = 0x4036_db6d;
    const ERF_FAR: u32 = 0x40c0_0000;
    const EXP_FAR: u32 = 0x3f85_1593;
    const EXP_REDUCE: u32 = 0x3eb1_7218;
    const EXP_TINY: u32 = 0x3900_0000;
    #[inline(always)]
    fn high_word(self) -> (u32, bool) {
        let bits = self.to_bits();
        (bits & 0x7fff_ffff, bits >> 31 != 0)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f32::from_bits(self.to_bits() & 0x7fff_ffff)
    }
    #[inline(always)]
    fn erfc_split(self) -> Self {
        f32::from_bits(self.to_bits() & 0x7fff_e000)
    }
    #[inline(always)]
    fn one_minus_tiny() -> Self {
        1.0 - f32::from_bits(0x0380_0000)
    }
    #[inline(always)]
    fn to_i32(self) -> i32 {
        // trunc(x) + 1.5·2²³ holds the integer in its low mantissa bits (|x| < 2²²).
        ((self.trunc() + 12_582_912.0).to_bits() as i32).wrapping_sub(0x4b40_0000)
    }
    #[inline(always)]
    fn from_i32(k: i32) -> Self {
        k as f32
    }
    #[inline(always)]
    fn pow2(k: i32) -> Self {
        f32::from_bits(((0x7f + k.clamp(-126, 127)) as u32) << 23)
    }
    fn libm_erf(self) -> Self {
        libm::erff(self)
    }
}

// The coefficients as libm writes them (the same bits after rounding).
#[allow(clippy::excessive_precision, clippy::approx_constant)]
impl LibmErf for f64 {
    const HALF: Self = 0.5;
    const EIGHTH: Self = 0.125;
    const EIGHT: Self = 8.0;
    const TWO: Self = 2.0;
    const ERFC_SHIFT: Self = 0.5625;
    const FRAC_1_SQRT_2: Self = std::f64::consts::FRAC_1_SQRT_2;
    const ERX: Self = 8.45062911510467529297e-01;
    const EFX8: Self = 1.02703333676410069053e+00;
    const PP: [Self; 5] = [
        1.28379167095512558561e-01,
        -3.25042107247001499370e-01,
        -2.84817495755985104766e-02,
        -5.77027029648944159157e-03,
        -2.37630166566501626084e-05,
    ];
    const QQ: [Self; 5] = [
        3.97917223959155352819e-01,
        6.50222499887672944485e-02,
        5.08130628187576562776e-03,
        1.32494738004321644526e-04,
        -3.96022827877536812320e-06,
    ];
    const PA: [Self; 7] = [
        -2.36211856075265944077e-03,
        4.14856118683748331666e-01,
        -3.72207876035701323847e-01,
        3.18346619901161753674e-01,
        -1.10894694282396677476e-01,
        3.54783043256182359371e-02,
        -2.16637559486879084300e-03,
    ];
    const QA: [Self; 6] = [
        1.06420880400844228286e-01,
        5.40397917702171048937e-01,
        7.18286544141962662868e-02,
        1.26171219808761642112e-01,
        1.36370839120290507362e-02,
        1.19844998467991074170e-02,
    ];
    const RA: [Self; 8] = [
        -9.86494403484714822705e-03,
        -6.93858572707181764372e-01,
        -1.05586262253232909814e+01,
        -6.23753324503260060396e+01,
        -1.62396669462573470355e+02,
        -1.84605092906711035994e+02,
        -8.12874355063065934246e+01,
        -9.81432934416914548592e+00,
    ];
    const SA: [Self; 8] = [
        1.96512716674392571292e+01,
        1.37657754143519042600e+02,
        4.34565877475229228821e+02,
        6.45387271733267880336e+02,
        4.29008140027567833386e+02,
        1.08635005541779435134e+02,
        6.57024977031928170135e+00,
        -6.04244152148580987438e-02,
    ];
    const RB: [Self; 7] = [
        -9.86494292470009928597e-03,
        -7.99283237680523006574e-01,
        -1.77579549177547519889e+01,
        -1.60636384855821916062e+02,
        -6.37566443368389627722e+02,
        -1.02509513161107724954e+03,
        -4.83519191608651397019e+02,
    ];
    const SB: [Self; 7] = [
        3.03380607434824582924e+01,
        3.25792512996573918826e+02,
        1.53672958608443695994e+03,
        3.19985821950859553908e+03,
        2.55305040643316442583e+03,
        4.74528541206955367215e+02,
        -2.24409524465858183362e+01,
    ];
    const LN2_HI: Self = 6.93147180369123816490e-01;
    const LN2_LO: Self = 1.90821492927058770002e-10;
    const INV_LN2: Self = 1.44269504088896338700e+00;
    const EXP_P: &'static [Self] = &[
        1.66666666666666019037e-01,
        -2.77777777770155933842e-03,
        6.61375632143793436117e-05,
        -1.65339022054652515390e-06,
        4.13813679705723846039e-08,
    ];
    const ERF_INF: u32 = 0x7ff0_0000;
    const ERF_TINY: u32 = 0x3e30_0000;
    const ERF_SMALL: u32 = 0x3feb_0000;
    const ERF_NEAR: u32 = 0x3ff4_0000;
    const ERF_MID: u32 = 0x4006_db6d;
    const ERF_FAR: u32 = 0x4018_0000;
    const EXP_FAR: u32 = 0x3ff0_a2b2;
    const EXP_REDUCE: u32 = 0x3fd6_2e42;
    const EXP_TINY: u32 = 0x3e30_0000;
    #[inline(always)]
    fn high_word(self) -> (u32, bool) {
        let high = (self.to_bits() >> 32) as u32;
        (high & 0x7fff_ffff, high >> 31 != 0)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f64::from_bits(self.to_bits() & 0x7fff_ffff_ffff_ffff)
    }
    #[inline(always)]
    fn erfc_split(self) -> Self {
        f64::from_bits(self.to_bits() & 0x7fff_ffff_0000_0000)
    }
    #[inline(always)]
    fn one_minus_tiny() -> Self {
        1.0 - f64::from_bits(0x0010_0000_0000_0000)
    }
    #[inline(always)]
    fn to_i32(self) -> i32 {
        // trunc(x) + 1.5·2⁵² holds the integer in its low mantissa bits (|x| < 2⁵¹).
        ((self.trunc() + 6_755_399_441_055_744.0).to_bits() as i64)
            .wrapping_sub(0x4338_0000_0000_0000) as i32
    }
    #[inline(always)]
    fn from_i32(k: i32) -> Self {
        k as f64
    }
    #[inline(always)]
    fn pow2(k: i32) -> Self {
        f64::from_bits(((0x3ff + k.clamp(-1022, 1023)) as u64) << 52)
    }
    fn libm_erf(self) -> Self {
        libm::erf(self)
    }
}

/// `c[0] + x·(c[1] + x·(… + x·c[n−1]))`, `libm`'s nesting.
#[inline(always)]
fn horner<T: LibmErf>(x: T, c: &[T]) -> T {
    let mut acc = c[c.len() - 1];
    for &c in c[..c.len() - 1].iter().rev() {
        acc = c + x * acc;
    }
    acc
}

/// `1 + x·(c[0] + x·(c[1] + …))`, the denominators' nesting.
#[inline(always)]
fn one_plus<T: LibmErf>(x: T, c: &[T]) -> T {
    T::ONE + x * horner(x, c)
}

/// `libm`'s `exp(x)` for the arguments `erf` passes it (|x| < 37: no overflow, underflow or
/// NaN path), without branches. Other inputs give some value without panicking; `erf_lane`
/// discards them.
#[inline(always)]
fn exp_lane<T: LibmErf>(x: T) -> T {
    let (hx, negative) = x.high_word();
    let half = if negative { -T::HALF } else { T::HALF };
    // |x| ≥ 1.5 ln2: k = round(x / ln2); 0.5 ln2 < |x| < 1.5 ln2: k = ±1
    let k_far = (T::INV_LN2 * x + half).to_i32();
    let k_reduced = if hx >= T::EXP_FAR {
        k_far
    } else if negative {
        -1
    } else {
        1
    };
    let kf = T::from_i32(k_reduced);
    let hi_reduced = x - kf * T::LN2_HI;
    let lo_reduced = kf * T::LN2_LO;
    let reduce = hx > T::EXP_REDUCE;
    let k = if reduce { k_reduced } else { 0 };
    let hi = if reduce { hi_reduced } else { x };
    let lo = if reduce { lo_reduced } else { T::ZERO };
    let r = if reduce { hi_reduced - lo_reduced } else { x };
    let rr = r * r;
    let c = r - rr * horner(rr, T::EXP_P);
    let y = T::ONE + (r * c / (T::TWO - c) - lo + hi);
    // libm's scalbn for k in the normal range is one multiplication by 2^k
    let scaled = if k == 0 { y } else { y * T::pow2(k) };
    if hx > T::EXP_TINY {
        scaled
    } else {
        T::ONE + x
    }
}

/// `libm`'s `erf(x)`: every formula computed, the one `libm` takes kept. The formulas below
/// 6 each divide once by a polynomial (`r/s`, `p/q`, `r/S`); a lane needs one of the three, so
/// the quotient is taken once, of the selected pair: the same division `libm` makes.
#[inline(always)]
pub(crate) fn erf_lane<T: LibmErf>(x: T) -> T {
    let (ix, negative) = x.high_word();
    let ax = x.abs();
    // NaN and ±inf: libm's `1 − 2·sign + 1/x` is ±1 for ±inf (1/x = ±0 changes nothing) and NaN
    // for NaN
    #[allow(clippy::eq_op)]
    let special = if x != x {
        x + x
    } else if negative {
        -T::ONE
    } else {
        T::ONE
    };
    // tiny |x|
    let tiny = T::EIGHTH * (T::EIGHT * x + T::EFX8 * x);
    // |x| < 0.84375: x + x·(r/s)
    let z = x * x;
    let (r_small, s_small) = (horner(z, &T::PP), one_plus(z, &T::QQ));
    // erfc for 0.84375 ≤ |x| < 1.25: 1 − erx − p/q
    let s = ax - T::ONE;
    let (p_near, q_near) = (horner(s, &T::PA), one_plus(s, &T::QA));
    // erfc for 1.25 ≤ |x| < 6: exp(−z² − 0.5625) · exp((z − x)(z + x) + R/S) / x
    let s = T::ONE / (ax * ax);
    let (r_far, s_far) = if ix < T::ERF_MID {
        (horner(s, &T::RA), one_plus(s, &T::SA))
    } else {
        (horner(s, &T::RB), one_plus(s, &T::SB))
    };
    let (num, den) = if ix < T::ERF_SMALL {
        (r_small, s_small)
    } else if ix < T::ERF_NEAR {
        (p_near, q_near)
    } else {
        (r_far, s_far)
    };
    let quotient = num / den;
    let small = x + x * quotient;
    let erfc_near = T::ONE - T::ERX - quotient;
    let z = ax.erfc_split();
    let erfc_far = exp_lane(-z * z - T::ERFC_SHIFT) * exp_lane((z - ax) * (z + ax) + quotient) / ax;
    let erfc = if ix < T::ERF_NEAR {
        erfc_near
    } else {
        erfc_far
    };
    let y = if ix < T::ERF_FAR {
        T::ONE - erfc
    } else {
        T::one_minus_tiny()
    };
    let large = if negative { -y } else { y };
    if ix >= T::ERF_INF {
        special
    } else if ix < T::ERF_TINY {
        tiny
    } else if ix < T::ERF_SMALL {
        small
    } else {
        large
    }
}

/// Values per step: a whole number of AVX-512 registers in either precision.
const LANES: usize = 16;

/// `out = gelu(x + bias)` for one row (`x`, `bias`, `out` of one length), candle's `gelu_erf`
/// to the bit.
#[inline(always)]
fn bias_gelu_row_body<T: LibmErf>(x: &[T], bias: &[T], out: &mut [T]) {
    let full = x.len() - x.len() % LANES;
    for ((x, b), o) in x[..full]
        .chunks_exact(LANES)
        .zip(bias[..full].chunks_exact(LANES))
        .zip(out[..full].chunks_exact_mut(LANES))
    {
        let mut y = [T::ZERO; LANES];
        for ((y, &x), &b) in y.iter_mut().zip(x).zip(b) {
            *y = x + b;
        }
        for (o, &y) in o.iter_mut().zip(&y) {
            *o = (erf_lane(y * T::FRAC_1_SQRT_2) + T::ONE) * T::HALF * y;
        }
    }
    for ((o, &x), &b) in out[full..].iter_mut().zip(&x[full..]).zip(&bias[full..]) {
        let y = x + b;
        *o = ((y * T::FRAC_1_SQRT_2).libm_erf() + T::ONE) * T::HALF * y;
    }
}

/// [`bias_gelu_row_body`] in the widest SIMD the CPU has.
pub(crate) fn bias_gelu_row<T: LibmErf>(x: &[T], bias: &[T], out: &mut [T]) {
    assert!(x.len() == bias.len() && x.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    {
        if crate::simd::has_avx512() {
            // SAFETY: the CPU has AVX-512F (checked at run time).
            return unsafe { bias_gelu_row_avx512(x, bias, out) };
        }
        if crate::simd::has_avx2() {
            // SAFETY: the CPU has AVX2 (checked at run time).
            return unsafe { bias_gelu_row_avx2(x, bias, out) };
        }
    }
    bias_gelu_row_body(x, bias, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bias_gelu_row_avx512<T: LibmErf>(x: &[T], bias: &[T], out: &mut [T]) {
    bias_gelu_row_body(x, bias, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bias_gelu_row_avx2<T: LibmErf>(x: &[T], bias: &[T], out: &mut [T]) {
    bias_gelu_row_body(x, bias, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `erf_lane` over a block, in build `build` (0 baseline, 1 AVX2, 2 AVX-512).
    fn erf_block<T: LibmErf>(xs: &[T], out: &mut [T], build: usize) {
        #[inline(always)]
        fn body<T: LibmErf>(xs: &[T], out: &mut [T]) {
            for (o, &x) in out.iter_mut().zip(xs) {
                *o = erf_lane(x);
            }
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<T: LibmErf>(xs: &[T], out: &mut [T]) {
            body(xs, out)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<T: LibmErf>(xs: &[T], out: &mut [T]) {
            body(xs, out)
        }
        match build {
            // SAFETY: only called when the CPU has the feature (see `builds`).
            #[cfg(target_arch = "x86_64")]
            2 => unsafe { avx512(xs, out) },
            #[cfg(target_arch = "x86_64")]
            1 => unsafe { avx2(xs, out) },
            _ => body(xs, out),
        }
    }

    /// The builds this CPU runs.
    fn builds() -> Vec<usize> {
        let mut b = vec![0];
        #[cfg(target_arch = "x86_64")]
        {
            if crate::simd::has_avx2() {
                b.push(1);
            }
            if crate::simd::has_avx512() {
                b.push(2);
            }
        }
        b
    }

    /// `erf_lane` against `libm` on `xs`, in every build (in blocks, so that a dense range
    /// needs little memory).
    fn check<T: LibmErf + std::fmt::Debug>(xs: impl Iterator<Item = T>, bits: impl Fn(T) -> u64) {
        let builds = builds();
        let mut xs = xs.peekable();
        let mut block = Vec::with_capacity(1 << 16);
        let mut out = vec![T::ZERO; 1 << 16];
        while xs.peek().is_some() {
            block.clear();
            block.extend(xs.by_ref().take(1 << 16));
            for &build in &builds {
                erf_block(&block, &mut out[..block.len()], build);
                for (&x, &o) in block.iter().zip(&out) {
                    let want = x.libm_erf();
                    // NaN == NaN is false: compare the bits, accepting any NaN for a NaN (the
                    // only value unequal to itself)
                    #[allow(clippy::eq_op)]
                    let nan = |v: T| v != v;
                    assert!(
                        bits(o) == bits(want) || (nan(o) && nan(want)),
                        "build {build}: erf({x:?} = {:#x}) = {o:?}, libm {want:?}",
                        bits(x)
                    );
                }
            }
        }
    }

    fn check_f32(start: u32, end: u32, step: u32) {
        check(
            (start..end).step_by(step as usize).map(f32::from_bits),
            |v| u64::from(v.to_bits()),
        );
    }

    fn check_f64(start: u64, end: u64, step: u64) {
        check(
            (start..end).step_by(step as usize).map(f64::from_bits),
            f64::to_bits,
        );
    }

    #[test]
    fn erf_lane_is_libms_erff_to_the_bit() {
        // a stride through every bit pattern (both signs, NaN and inf included), and the last ones
        check_f32(0, u32::MAX, 997);
        check_f32(u32::MAX - 16, u32::MAX, 1);
        // every value around each branch point of erff and of the expf calls it makes
        for cut in [
            0x3180_0000u32,
            0x3f58_0000,
            0x3fa0_0000,
            0x4036_db6d,
            0x40c0_0000,
            0x7f80_0000,
        ] {
            for sign in [0, 0x8000_0000] {
                check_f32((cut | sign) - 4096, (cut | sign) + 4096, 1);
            }
        }
        // where GELU inputs live, densely
        check_f32(0x3f00_0000, 0x40d0_0000, 7);
        check_f32(0xbf00_0000, 0xc0d0_0000, 7);
    }

    #[test]
    fn erf_lane_is_libms_erf_to_the_bit() {
        // a stride through the bit patterns (the stride is odd, so the low bits vary too)
        check_f64(0, u64::MAX - (1 << 44), (1 << 44) + 12_345);
        // around each branch point of erf (on the high word) and of exp
        for cut in [
            0x3e30_0000u64,
            0x3feb_0000,
            0x3ff4_0000,
            0x4006_db6d,
            0x4018_0000,
            0x7ff0_0000,
        ] {
            for sign in [0, 0x8000_0000] {
                let high = (cut | sign) << 32;
                check_f64(high - (1 << 36), high + (1 << 36), (1 << 24) + 7);
                check_f64(high - 4096, high + 4096, 1);
            }
        }
        // where GELU inputs live: 0.5 ≤ |x| < 6.5, densely
        for sign in [0, 1u64 << 63] {
            let (lo, hi) = (0.5f64.to_bits() | sign, 6.5f64.to_bits() | sign);
            check_f64(lo, hi, (hi - lo) / 3_000_000);
        }
    }

    #[test]
    fn bias_gelu_row_is_candles_gelu_erf_in_every_build() {
        fn case<T: LibmErf + std::fmt::Debug + PartialEq>(from: impl Fn(f64) -> T) {
            let x: Vec<T> = (0..1000)
                .map(|i| from((i as f64 - 500.0) * 0.0173))
                .collect();
            let bias: Vec<T> = (0..1000)
                .map(|i| from(((i * 37) % 11) as f64 * 0.05))
                .collect();
            let want: Vec<T> = x
                .iter()
                .zip(&bias)
                .map(|(&x, &b)| {
                    let y = x + b;
                    ((y * T::FRAC_1_SQRT_2).libm_erf() + T::ONE) * T::HALF * y
                })
                .collect();
            let mut out = vec![T::ZERO; 1000];
            bias_gelu_row_body(&x, &bias, &mut out);
            assert_eq!(out, want, "baseline build");
            #[cfg(target_arch = "x86_64")]
            {
                if crate::simd::has_avx2() {
                    out.fill(T::ZERO);
                    unsafe { bias_gelu_row_avx2(&x, &bias, &mut out) };
                    assert_eq!(out, want, "AVX2 build");
                }
                if crate::simd::has_avx512() {
                    out.fill(T::ZERO);
                    unsafe { bias_gelu_row_avx512(&x, &bias, &mut out) };
                    assert_eq!(out, want, "AVX-512 build");
                }
            }
        }
        case(|v| v as f32);
        case(|v| v);
    }
}
