//! Row-wise kernels of a BERT-family encoder layer (residual sum + LayerNorm, bias, bias + GELU,
//! scaled and masked softmax), each one pass over memory on rayon's pool, in f64 (the
//! encoder's default compute precision) and f32 (its opt-in one).
//!
//! Each computes what the chain of candle ops it replaces computes, operation for operation
//! (the same sums in the same order, the same `erf` and `exp`), so the results are the same to
//! the bit (replens tests this against the candle ops). candle sums an f64 row in order and an
//! f32 row, on CPUs with AVX2, in 32 interleaved partial sums ([`Float::row_sum`]).

use crate::rowwise::for_rows;

/// Below this many values a kernel runs on the calling thread.
const PARALLEL_MIN: usize = 32 * 1024;

/// What the kernels need of their float type: candle's row sum and `exp`.
pub(crate) trait Float:
    'static
    + Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::DivAssign
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    /// A candle op's `f64` parameter (an affine op's factor, an epsilon) as candle converts it.
    fn from_f64(v: f64) -> Self;
    fn sqrt(self) -> Self;
    fn exp(self) -> Self;
    fn max(self, other: Self) -> Self;
    /// Σ f(x) over a row, in the order of candle's `vec_reduce_sum` for this type.
    fn row_sum(xs: &[Self], f: impl Fn(Self) -> Self) -> Self;
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn max(self, other: Self) -> Self {
        f64::max(self, other)
    }
    /// In order: candle's default `vec_reduce_sum`.
    fn row_sum(xs: &[Self], f: impl Fn(Self) -> Self) -> Self {
        let mut sum = 0.0;
        for &x in xs {
            sum += f(x);
        }
        sum
    }
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn max(self, other: Self) -> Self {
        f32::max(self, other)
    }
    /// With AVX2, candle's `vec_sum`: 4 registers of 8 lanes over each 32 values, the registers
    /// added (0+1) + (2+3), the lanes i + (i+4), then (0+1) + (2+3), then the tail in order.
    /// Without AVX2, in order.
    fn row_sum(xs: &[Self], f: impl Fn(Self) -> Self) -> Self {
        if !avx2() {
            let mut sum = 0.0;
            for &x in xs {
                sum += f(x);
            }
            return sum;
        }
        let full = xs.len() - xs.len() % 32;
        let mut acc = [0.0f32; 32];
        for chunk in xs[..full].chunks_exact(32) {
            for (a, &x) in acc.iter_mut().zip(chunk) {
                *a += f(x);
            }
        }
        let mut lanes = [0.0f32; 8];
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane = (acc[l] + acc[8 + l]) + (acc[16 + l] + acc[24 + l]);
        }
        let t: [f32; 4] = std::array::from_fn(|l| lanes[l] + lanes[l + 4]);
        let mut sum = (t[0] + t[1]) + (t[2] + t[3]);
        for &x in &xs[full..] {
            sum += f(x);
        }
        sum
    }
}

/// Whether candle takes its AVX2 path for f32 sums.
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::simd::has_avx2()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out = LayerNorm(a + b)` over rows of width `weight.len()` (or of `a` alone when `b` is
/// `None`), in f64: Hugging Face's `nn.LayerNorm` (biased variance, `eps` inside the square
/// root) as candle computes it: `μ = Σx · (1/d) + 0`, `c = x − μ`, `σ² = Σc² · (1/d) + 0`,
/// `out = c / √(σ² + eps) · weight + bias`.
///
/// # Panics
/// When the slices disagree in size.
///
/// ```
/// let mut out = vec![0.0; 2];
/// replens_kernels::add_layer_norm(&[1.0, 2.0], Some(&[1.0, 4.0]), &[1.0, 1.0], &[0.0, 0.5], 0.0, &mut out);
/// assert_eq!(out, vec![-1.0, 1.5]);
/// ```
pub fn add_layer_norm(
    a: &[f64],
    b: Option<&[f64]>,
    weight: &[f64],
    bias: &[f64],
    eps: f64,
    out: &mut [f64],
) {
    layer_norm_rows(a, b, weight, bias, eps, out)
}

/// [`add_layer_norm`] in f32, as candle computes it in f32 (its row sums included).
///
/// # Panics
/// When the slices disagree in size.
///
/// ```
/// let mut out = vec![0.0f32; 2];
/// replens_kernels::add_layer_norm_f32(&[1.0, 2.0], None, &[1.0, 1.0], &[0.0, 0.0], 0.0, &mut out);
/// assert_eq!(out, vec![-1.0, 1.0]);
/// ```
pub fn add_layer_norm_f32(
    a: &[f32],
    b: Option<&[f32]>,
    weight: &[f32],
    bias: &[f32],
    eps: f64,
    out: &mut [f32],
) {
    layer_norm_rows(a, b, weight, bias, eps, out)
}

fn layer_norm_rows<T: Float>(
    a: &[T],
    b: Option<&[T]>,
    weight: &[T],
    bias: &[T],
    eps: f64,
    out: &mut [T],
) {
    let width = weight.len();
    assert!(width > 0 && bias.len() == width && a.len() == out.len());
    assert!(a.len().is_multiple_of(width) && b.is_none_or(|b| b.len() == a.len()));
    // candle's mean and `+ eps` are affine ops, `v · mul + add` with f64 parameters.
    let scale = T::from_f64(1.0 / width as f64);
    let eps = T::from_f64(eps);
    for_rows(a, out, width, PARALLEL_MIN, |r, x, o| {
        match b {
            Some(b) => {
                for ((o, &x), &y) in o.iter_mut().zip(x).zip(&b[r * width..(r + 1) * width]) {
                    *o = x + y;
                }
            }
            None => o.copy_from_slice(x),
        }
        let mean = T::row_sum(o, |v| v) * scale + T::ZERO;
        for v in o.iter_mut() {
            *v = *v - mean;
        }
        let var = T::row_sum(o, |c| c * c) * scale + T::ZERO;
        let den = (var * T::ONE + eps).sqrt();
        for ((o, &w), &bb) in o.iter_mut().zip(weight).zip(bias) {
            *o = *o / den * w + bb;
        }
    });
}

/// `out = x + bias` over rows of width `bias.len()` (a linear layer's bias, candle's
/// `broadcast_add`), in f64.
///
/// # Panics
/// When the slices disagree in size.
///
/// ```
/// let mut out = vec![0.0; 4];
/// replens_kernels::add_bias(&[1.0, 2.0, 3.0, 4.0], &[0.5, -1.0], &mut out);
/// assert_eq!(out, vec![1.5, 1.0, 3.5, 3.0]);
/// ```
pub fn add_bias(x: &[f64], bias: &[f64], out: &mut [f64]) {
    add_bias_rows(x, bias, out)
}

/// [`add_bias`] in f32.
///
/// # Panics
/// When the slices disagree in size.
///
/// ```
/// let mut out = vec![0.0f32; 2];
/// replens_kernels::add_bias_f32(&[1.0, 2.0], &[0.5, -1.0], &mut out);
/// assert_eq!(out, vec![1.5, 1.0]);
/// ```
pub fn add_bias_f32(x: &[f32], bias: &[f32], out: &mut [f32]) {
    add_bias_rows(x, bias, out)
}

fn add_bias_rows<T: Float>(x: &[T], bias: &[T], out: &mut [T]) {
    let width = bias.len();
    assert!(width > 0 && x.len() == out.len() && x.len().is_multiple_of(width));
    for_rows(x, out, width, PARALLEL_MIN, |_, x, o| {
        for ((o, &v), &b) in o.iter_mut().zip(x).zip(bias) {
            *o = v + b;
        }
    });
}

/// `out = gelu(x + bias)` with the exact (erf) GELU, `(erf(y/√2) + 1) · 0.5 · y`, over rows of
/// width `bias.len()` (PyTorch's `nn.GELU()`, candle's `gelu_erf`), in f64. `libm`'s `erf`, which
/// candle calls, is computed in SIMD lanes without branches: the same values to the bit.
///
/// # Panics
/// When the slices disagree in size.
///
/// ```
/// let mut out = vec![0.0; 2];
/// replens_kernels::bias_gelu(&[-1.0, 0.5], &[1.0, 0.5], &mut out);
/// assert_eq!(out[0], 0.0);
/// assert!((out[1] - 0.8413447460685429).abs() < 1e-15);
/// ```
pub fn bias_gelu(x: &[f64], bias: &[f64], out: &mut [f64]) {
    bias_gelu_rows(x, bias, out)
}

/// Rows of `erf::bias_gelu_row`.
fn bias_gelu_rows<T: crate::erf::LibmErf>(x: &[T], bias: &[T], out: &mut [T]) {
    let width = bias.len();
    assert!(width > 0 && x.len() == out.len() && x.len().is_multiple_of(width));
    for_rows(x, out, width, PARALLEL_MIN, |_, x, o| {
        crate::erf::bias_gelu_row(x, bias, o)
    });
}

/// [`bias_gelu`] in f32 (candle's f32 `gelu_erf`, with `libm`'s `erff` in SIMD lanes).
///
/// # Panics
/// When the slices disagree in size.
///
/// ```
/// let mut out = vec![0.0f32; 2];
/// replens_kernels::bias_gelu_f32(&[-1.0, 0.5], &[1.0, 0.5], &mut out);
/// assert_eq!(out[0], 0.0);
/// assert!((out[1] - 0.841_344_7).abs() < 1e-6);
/// ```
pub fn bias_gelu_f32(x: &[f32], bias: &[f32], out: &mut [f32]) {
    bias_gelu_rows(x, bias, out)
}

/// Attention probabilities `softmax(scores · scale + key_bias)` over the last dimension of
/// `scores`, shaped `(batch, heads, queries, keys)` = `dims`, with `key_bias` `(batch, keys)`
/// added to every head and query of its batch row (HF's additive padding mask), in f64. The
/// softmax is candle's: subtract the row maximum, `exp`, divide by the row sum.
///
/// # Panics
/// When the slices disagree with `dims`, or `keys` is 0.
///
/// ```
/// let mut p = vec![0.0; 2];
/// let mask = [0.0, f64::from(f32::MIN)];
/// replens_kernels::scaled_masked_softmax(&[1.0, 1.0], &mask, 0.5, (1, 1, 1, 2), &mut p);
/// assert_eq!(p, vec![1.0, 0.0]);
/// ```
pub fn scaled_masked_softmax(
    scores: &[f64],
    key_bias: &[f64],
    scale: f64,
    dims: (usize, usize, usize, usize),
    out: &mut [f64],
) {
    softmax_rows(scores, key_bias, scale, dims, out)
}

/// [`scaled_masked_softmax`] in f32 (candle's f32 ops, its row sums included).
///
/// # Panics
/// When the slices disagree with `dims`, or `keys` is 0.
///
/// ```
/// let mut p = vec![0.0f32; 2];
/// replens_kernels::scaled_masked_softmax_f32(&[1.0, 1.0], &[0.0, f32::MIN], 0.5, (1, 1, 1, 2), &mut p);
/// assert_eq!(p, vec![1.0, 0.0]);
/// ```
pub fn scaled_masked_softmax_f32(
    scores: &[f32],
    key_bias: &[f32],
    scale: f64,
    dims: (usize, usize, usize, usize),
    out: &mut [f32],
) {
    softmax_rows(scores, key_bias, scale, dims, out)
}

fn softmax_rows<T: Float>(
    scores: &[T],
    key_bias: &[T],
    scale: f64,
    dims: (usize, usize, usize, usize),
    out: &mut [T],
) {
    let (batch, heads, queries, keys) = dims;
    assert!(keys > 0 && key_bias.len() == batch * keys);
    assert!(scores.len() == batch * heads * queries * keys && out.len() == scores.len());
    let rows_per_batch = heads * queries;
    // candle's scaling is an affine op, `v · scale + 0`.
    let scale = T::from_f64(scale);
    for_rows(scores, out, keys, PARALLEL_MIN, |r, s, o| {
        let b = r / rows_per_batch;
        softmax_row(s, &key_bias[b * keys..(b + 1) * keys], scale, o);
    });
}

/// One row of [`scaled_masked_softmax`]: `o = softmax(s · scale + mask)`, candle's ops in
/// candle's order. A masked entry (−∞ after the mask) gets its `exp(−∞ − max) = 0` without
/// calling `exp`, the same value.
pub(crate) fn softmax_row<T: Float>(s: &[T], mask: &[T], scale: T, o: &mut [T]) {
    for ((o, &v), &m) in o.iter_mut().zip(s).zip(mask) {
        *o = (v * scale + T::ZERO) + m;
    }
    let max = row_max(o);
    for v in o.iter_mut() {
        *v = if *v == T::NEG_INFINITY {
            T::ZERO
        } else {
            (*v - max).exp()
        };
    }
    let sum = T::row_sum(o, |v| v);
    for v in o.iter_mut() {
        *v /= sum;
    }
}

/// The largest value of a non-empty row, in 16 lanes (vectorised). The maximum of values that
/// are not NaN does not depend on the order it is taken in, so this is candle's sequential
/// maximum; with a NaN the softmax row is NaN either way.
fn row_max<T: Float>(xs: &[T]) -> T {
    let mut lanes = [xs[0]; 16];
    let mut chunks = xs.chunks_exact(16);
    for chunk in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l = l.max(x);
        }
    }
    let mut max = lanes[0];
    for &l in &lanes[1..] {
        max = max.max(l);
    }
    for &x in chunks.remainder() {
        max = max.max(x);
    }
    max
}
