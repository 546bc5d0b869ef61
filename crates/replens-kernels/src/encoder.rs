//! Row-wise f64 kernels of a BERT-family encoder layer (residual sum + LayerNorm, bias + GELU,
//! scaled and masked softmax), each one pass over memory on rayon's pool.
//!
//! Each computes what the chain of candle ops it replaces computes, operation for operation
//! (same sums in the same order, the same `erf` and `exp`), so the results are the same to the
//! bit (replens tests this against the candle ops).

use crate::rowwise::for_rows;

/// Below this many values a kernel runs on the calling thread.
const PARALLEL_MIN: usize = 32 * 1024;

/// `out = LayerNorm(a + b)` over rows of width `weight.len()` (or of `a` alone when `b` is
/// `None`): Hugging Face's `nn.LayerNorm` (biased variance, `eps` inside the square root) as
/// candle computes it: `μ = Σx · (1/d)`, `c = x − μ`, `σ² = Σc² · (1/d)`,
/// `out = c / √(σ² + eps) · weight + bias`, sums in row order.
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
    let width = weight.len();
    assert!(width > 0 && bias.len() == width && a.len() == out.len());
    assert!(a.len().is_multiple_of(width) && b.is_none_or(|b| b.len() == a.len()));
    let scale = 1.0 / width as f64;
    for_rows(a, out, width, PARALLEL_MIN, |r, x, o| {
        match b {
            Some(b) => {
                for ((o, &x), &y) in o.iter_mut().zip(x).zip(&b[r * width..(r + 1) * width]) {
                    *o = x + y;
                }
            }
            None => o.copy_from_slice(x),
        }
        let mut sum = 0.0f64;
        for &v in o.iter() {
            sum += v;
        }
        // `+ 0.0`: candle's mean is an affine op, `v · scale + 0`.
        let mean = sum * scale + 0.0;
        let mut sq = 0.0f64;
        for &v in o.iter() {
            let c = v - mean;
            sq += c * c;
        }
        let den = ((sq * scale + 0.0) + eps).sqrt();
        for ((o, &w), &bb) in o.iter_mut().zip(weight).zip(bias) {
            *o = (*o - mean) / den * w + bb;
        }
    });
}

/// `out = gelu(x + bias)` with the exact (erf) GELU, `(erf(y/√2) + 1) · 0.5 · y`, over rows of
/// width `bias.len()` (PyTorch's `nn.GELU()`, candle's `gelu_erf`).
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
    let width = bias.len();
    assert!(width > 0 && x.len() == out.len() && x.len().is_multiple_of(width));
    for_rows(x, out, width, PARALLEL_MIN, |_, x, o| {
        for ((o, &v), &b) in o.iter_mut().zip(x).zip(bias) {
            let y = v + b;
            *o = (libm::erf(y * std::f64::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * y;
        }
    });
}

/// Attention probabilities `softmax(scores · scale + key_bias)` over the last dimension of
/// `scores`, shaped `(batch, heads, queries, keys)` = `dims`, with `key_bias` `(batch, keys)`
/// added to every head and query of its batch row (HF's additive padding mask). The softmax is
/// candle's: subtract the row maximum, `exp`, divide by the sum taken in row order.
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
    let (batch, heads, queries, keys) = dims;
    assert!(keys > 0 && key_bias.len() == batch * keys);
    assert!(scores.len() == batch * heads * queries * keys && out.len() == scores.len());
    let rows_per_batch = heads * queries;
    for_rows(scores, out, keys, PARALLEL_MIN, |r, s, o| {
        let b = r / rows_per_batch;
        let mask = &key_bias[b * keys..(b + 1) * keys];
        // `+ 0.0`: candle's scaling is an affine op, `v · scale + 0`.
        for ((o, &v), &m) in o.iter_mut().zip(s).zip(mask) {
            *o = (v * scale + 0.0) + m;
        }
        let mut max = o[0];
        for &v in o.iter().skip(1) {
            max = max.max(v);
        }
        for v in o.iter_mut() {
            *v = (*v - max).exp();
        }
        let mut sum = 0.0f64;
        for &v in o.iter() {
            sum += v;
        }
        for v in o.iter_mut() {
            *v /= sum;
        }
    });
}
