//! Row-wise f32 kernels of a transformer block (RMSNorm, residual sum, SwiGLU gate), fused so
//! that each is one pass over memory, on rayon's pool (the pool `gemm` already uses) for large
//! inputs and inline for small ones.

use rayon::prelude::*;

/// Below this many elements a kernel runs on the calling thread: splitting costs more than it saves.
const PARALLEL_MIN: usize = 64 * 1024;

/// Runs `row(index, input row, output row)` over the rows of width `width` of `input` and `out`,
/// inline below `parallel_min` input values, else in tasks of about 16k values on rayon's pool.
pub(crate) fn for_rows<A: Sync, B: Send>(
    input: &[A],
    out: &mut [B],
    width: usize,
    parallel_min: usize,
    row: impl Fn(usize, &[A], &mut [B]) + Sync,
) {
    if input.len() < parallel_min {
        for (r, (x, o)) in input.chunks(width).zip(out.chunks_mut(width)).enumerate() {
            row(r, x, o);
        }
    } else {
        let per_task = (16 * 1024 / width.max(1)).max(1);
        input
            .par_chunks(per_task * width)
            .zip(out.par_chunks_mut(per_task * width))
            .enumerate()
            .for_each(|(task, (x, o))| {
                for (r, (x, o)) in x.chunks(width).zip(o.chunks_mut(width)).enumerate() {
                    row(task * per_task + r, x, o);
                }
            });
    }
}

/// `out[r] = x[r] / sqrt(mean(x[r]²) + eps) * weight` for each row `r` of width `weight.len()`:
/// Hugging Face's `LlamaRMSNorm` in f32, with the mean of squares accumulated in f64 and rounded
/// once (`(mean as f32 + eps).sqrt().recip()`, then `x * inv * weight`, in that order).
///
/// # Panics
/// When `x`, `out` and `weight` disagree in size (the caller checks shapes first).
///
/// ```
/// let mut out = vec![0.0; 2];
/// replens_kernels::rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut out);
/// let inv = 1.0 / (12.5f32).sqrt();
/// assert_eq!(out, vec![3.0 * inv, 4.0 * inv * 2.0]);
/// ```
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    assert!(width > 0 && x.len() == out.len() && x.len().is_multiple_of(width));
    for_rows(x, out, width, PARALLEL_MIN, |_, x, out| {
        let sum: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let inv = ((sum / width as f64) as f32 + eps).sqrt().recip();
        for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
            *o = v * inv * w;
        }
    });
}

/// `out = a + b`, element by element.
///
/// # Panics
/// When the three slices differ in length.
///
/// ```
/// let mut out = vec![0.0; 2];
/// replens_kernels::add(&[1.0, 2.0], &[0.5, -2.0], &mut out);
/// assert_eq!(out, vec![1.5, 0.0]);
/// ```
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    zip_map(a, b, out, |x, y| x + y);
}

/// `out = silu(gate) * up` with `silu(g) = g / (1 + exp(-g))` (candle's and torch's formula):
/// the SwiGLU product of a Llama MLP in one pass.
///
/// # Panics
/// When the three slices differ in length.
///
/// ```
/// let mut out = vec![0.0; 2];
/// replens_kernels::silu_mul(&[0.0, 1.0], &[3.0, 2.0], &mut out);
/// assert_eq!(out, vec![0.0, 1.0 / (1.0 + (-1.0f32).exp()) * 2.0]);
/// ```
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    zip_map(gate, up, out, |g, u| g / (1.0 + (-g).exp()) * u);
}

/// `out[i] = f(a[i], b[i])`: inline below [`PARALLEL_MIN`] elements, else in chunks on rayon's pool.
///
/// # Panics
/// When the three slices differ in length.
fn zip_map(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    assert!(a.len() == b.len() && a.len() == out.len());
    let body = |((a, b), out): ((&[f32], &[f32]), &mut [f32])| {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = f(x, y);
        }
    };
    if a.len() < PARALLEL_MIN {
        body(((a, b), out));
    } else {
        const CHUNK: usize = 16 * 1024;
        a.par_chunks(CHUNK)
            .zip(b.par_chunks(CHUNK))
            .zip(out.par_chunks_mut(CHUNK))
            .for_each(body);
    }
}
