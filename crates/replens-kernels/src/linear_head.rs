//! A small linear head `a = W z + b` (C classes, C ≪ d) over many rows, for training it with a
//! hand-written gradient: the logits, the caller's per-row gradient ∂loss/∂a and the weight
//! gradient Σᵢ gᵢ zᵢᵀ in **one pass** over the rows.
//!
//! Why: with C = 2 both products of a training step (`Z Wᵀ` and `Gᵀ Z`) do 2 multiply-adds per
//! value of Z they read, so a step is bound by reading Z, and a general matrix product reads it
//! twice (and packs the skinny operand for each call). Here each block of rows is read from
//! memory once, and read again from cache for its share of the gradient.

use rayon::prelude::*;

/// Rows per block: a block of 768-wide f32 rows (192 KiB) stays in a core's L2 cache between
/// computing its logits and adding its share of the gradient, and 6000 rows make 47 tasks.
const BLOCK_ROWS: usize = 128;

/// Partial sums per dot product: four AVX2 registers, so that the additions of one dot product
/// are not serialised on the add latency.
const LANES: usize = 32;

/// The partial sums of a dot product, added pairwise (the same order in every build).
#[inline(always)]
fn reduce_lanes(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for k in 0..width {
            acc[k] += acc[k + width];
        }
    }
    acc[0]
}

/// (w₀·z, w₁·z) in f32, each with 32 partial sums, reading `z` once for both (the compiler may
/// not reorder a floating-point sum, so the lanes are written out).
#[inline(always)]
fn dot_pair(w0: &[f32], w1: &[f32], z: &[f32]) -> (f32, f32) {
    let n = z.len().min(w0.len()).min(w1.len());
    let full = n - n % LANES;
    let (mut acc0, mut acc1) = ([0.0f32; LANES], [0.0f32; LANES]);
    for ((x, a), b) in z[..full]
        .chunks_exact(LANES)
        .zip(w0[..full].chunks_exact(LANES))
        .zip(w1[..full].chunks_exact(LANES))
    {
        for k in 0..LANES {
            acc0[k] += a[k] * x[k];
            acc1[k] += b[k] * x[k];
        }
    }
    let (mut tail0, mut tail1) = (0.0f32, 0.0f32);
    for j in full..n {
        tail0 += w0[j] * z[j];
        tail1 += w1[j] * z[j];
    }
    (reduce_lanes(acc0) + tail0, reduce_lanes(acc1) + tail1)
}

/// Logits of `rows` (row-major, width `d`) into `out` (`C` per row): `out[i·C + k] = wₖ·zᵢ + bₖ`,
/// two classes per pass over a row (the last one paired with itself when C is odd).
#[inline(always)]
fn block_logits(rows: &[f32], d: usize, w: &[f32], b: &[f32], out: &mut [f32]) {
    let c = b.len();
    for (z, a) in rows.chunks_exact(d).zip(out.chunks_exact_mut(c)) {
        for k in (0..c).step_by(2) {
            let k1 = (k + 1).min(c - 1);
            let (s0, s1) = dot_pair(&w[k * d..(k + 1) * d], &w[k1 * d..(k1 + 1) * d], z);
            a[k] = s0 + b[k];
            a[k1] = s1 + b[k1];
        }
    }
}

/// `acc[k·d + j] += Σᵢ g[i·C + k] · rows[i·d + j]` over the rows of one block, in row order.
#[inline(always)]
fn block_grad(rows: &[f32], d: usize, g: &[f32], c: usize, acc: &mut [f32]) {
    for (z, gi) in rows.chunks_exact(d).zip(g.chunks_exact(c)) {
        for (acc_k, &gk) in acc.chunks_exact_mut(d).zip(gi) {
            if gk == 0.0 {
                continue;
            }
            for (s, &zj) in acc_k.iter_mut().zip(z) {
                *s += gk * zj;
            }
        }
    }
}

/// [`block_logits`], on AVX2 when the CPU has it (the same values either way).
fn logits_of_block(rows: &[f32], d: usize, w: &[f32], b: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        unsafe { simd::block_logits_avx2(rows, d, w, b, out) };
        return;
    }
    block_logits(rows, d, w, b, out);
}

/// [`block_grad`], on AVX2 when the CPU has it (the same values either way).
fn grad_of_block(rows: &[f32], d: usize, g: &[f32], c: usize, acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        unsafe { simd::block_grad_avx2(rows, d, g, c, acc) };
        return;
    }
    block_grad(rows, d, g, c, acc);
}

/// One block of [`linear_head_pass`]: the caller's value, the block's share of ∂/∂W (f32) and
/// of ∂/∂b (its rows' gradients summed in f64, in row order).
fn head_block<T>(
    rows: &[f32],
    first_row: usize,
    d: usize,
    w: &[f32],
    b: &[f32],
    row_grads: &(impl Fn(usize, &[f32], &mut [f32]) -> T + Sync),
) -> (T, Vec<f32>, Vec<f64>) {
    let c = b.len();
    let n = rows.len() / d;
    let mut logits = vec![0.0f32; n * c];
    let mut g = vec![0.0f32; n * c];
    let mut acc = vec![0.0f32; c * d];
    logits_of_block(rows, d, w, b, &mut logits);
    let value = row_grads(first_row, &logits, &mut g);
    grad_of_block(rows, d, &g, c, &mut acc);
    let mut sum_g = vec![0.0f64; c];
    for gi in g.chunks_exact(c) {
        for (s, &v) in sum_g.iter_mut().zip(gi) {
            *s += f64::from(v);
        }
    }
    (value, acc, sum_g)
}

/// One training pass of a linear head over `z` (`n × d`, row-major) with weights `w` (`C × d`,
/// row-major) and bias `b` (`C`):
///
/// 1. the logits `aᵢ = W zᵢ + b` of a block of rows (f32 dot products);
/// 2. `row_grads(first_row, logits, grad)` fills `grad` with ∂loss/∂a for those rows (`C` per
///    row, same layout as `logits`) and returns a value of the caller's (its share of the loss);
/// 3. `grad_w = Σᵢ gᵢ zᵢᵀ` (`C × d`) and `grad_b = Σᵢ gᵢ` (`C`), overwritten.
///
/// Blocks of 128 rows run on rayon's pool. Within a block the gradient is summed in f32, in row
/// order; the blocks' sums are added in f64, in block order, as are the values returned, which
/// come back in block order: the result does not depend on the number of threads.
///
/// # Panics
/// When the slices disagree in size.
///
/// ```
/// // One class score: a = 2·z₀ + 3·z₁ + 1, and the loss Σ a, so ∂loss/∂a = 1 per row.
/// let z = [1.0f32, 0.0, 0.0, 1.0];
/// let (mut gw, mut gb) = (vec![0.0; 2], vec![0.0; 1]);
/// let losses = replens_kernels::linear_head_pass(&z, 2, &[2.0, 3.0], &[1.0], &mut gw, &mut gb,
///     |_, a, g| { g.fill(1.0); a.iter().map(|&v| f64::from(v)).sum::<f64>() });
/// assert_eq!(losses, vec![7.0]);
/// assert_eq!((gw, gb), (vec![1.0, 1.0], vec![2.0]));
/// ```
pub fn linear_head_pass<T: Send>(
    z: &[f32],
    d: usize,
    w: &[f32],
    b: &[f32],
    grad_w: &mut [f64],
    grad_b: &mut [f64],
    row_grads: impl Fn(usize, &[f32], &mut [f32]) -> T + Sync,
) -> Vec<T> {
    let c = b.len();
    assert!(d > 0 && c > 0 && z.len().is_multiple_of(d));
    assert!(w.len() == c * d && grad_w.len() == c * d && grad_b.len() == c);
    let blocks: Vec<(T, Vec<f32>, Vec<f64>)> = z
        .par_chunks(BLOCK_ROWS * d)
        .enumerate()
        .map(|(i, rows)| head_block(rows, i * BLOCK_ROWS, d, w, b, &row_grads))
        .collect();
    grad_w.fill(0.0);
    grad_b.fill(0.0);
    let mut values = Vec::with_capacity(blocks.len());
    for (value, acc, sum_g) in blocks {
        for (s, &v) in grad_w.iter_mut().zip(&acc) {
            *s += f64::from(v);
        }
        for (s, v) in grad_b.iter_mut().zip(sum_g) {
            *s += v;
        }
        values.push(value);
    }
    values
}

/// The logits `out[i·C + k] = wₖ·zᵢ + bₖ` of every row of `z` (`n × d`), as computed by
/// [`linear_head_pass`] (the same values), blocks of rows on rayon's pool.
///
/// # Panics
/// When the slices disagree in size.
///
/// ```
/// let mut a = vec![0.0f32; 2];
/// replens_kernels::linear_head_logits(&[1.0, 2.0, 3.0, 4.0], 2, &[1.0, -1.0], &[0.5], &mut a);
/// assert_eq!(a, vec![-0.5, -0.5]);
/// ```
pub fn linear_head_logits(z: &[f32], d: usize, w: &[f32], b: &[f32], out: &mut [f32]) {
    let c = b.len();
    assert!(d > 0 && c > 0 && z.len().is_multiple_of(d));
    assert!(w.len() == c * d && out.len() == z.len() / d * c);
    z.par_chunks(BLOCK_ROWS * d)
        .zip(out.par_chunks_mut(BLOCK_ROWS * c))
        .for_each(|(rows, a)| logits_of_block(rows, d, w, b, a));
}

/// The loops compiled for AVX2 as well (8 f32 lanes against SSE2's 4), chosen at run time; no
/// multiply-add is fused, so both builds give the same values.
#[cfg(target_arch = "x86_64")]
mod simd {
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn block_logits_avx2(
        rows: &[f32],
        d: usize,
        w: &[f32],
        b: &[f32],
        out: &mut [f32],
    ) {
        super::block_logits(rows, d, w, b, out)
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn block_grad_avx2(
        rows: &[f32],
        d: usize,
        g: &[f32],
        c: usize,
        acc: &mut [f32],
    ) {
        super::block_grad(rows, d, g, c, acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seed: u64, len: usize) -> Vec<f32> {
        crate::uniform(seed, len)
            .into_iter()
            .map(|v| (2.0 * v - 1.0) as f32)
            .collect()
    }

    /// Logits, gradients and the caller's values against an f64 reference, over a row count
    /// that leaves a partial last block and a width that leaves a tail of the 16 lanes.
    #[test]
    fn pass_matches_f64_reference() {
        let (n, d, c) = (300, 37, 3);
        let (z, w, b) = (sample(1, n * d), sample(2, c * d), sample(3, c));
        let target = sample(4, n * c);
        let (mut gw, mut gb) = (vec![0.0; c * d], vec![0.0; c]);
        // loss = ½ Σ (a − t)², so ∂loss/∂a = a − t
        let values = linear_head_pass(&z, d, &w, &b, &mut gw, &mut gb, |first, a, g| {
            let mut loss = 0.0f64;
            for (i, (ai, gi)) in a.chunks_exact(c).zip(g.chunks_exact_mut(c)).enumerate() {
                for k in 0..c {
                    let r = ai[k] - target[(first + i) * c + k];
                    gi[k] = r;
                    loss += 0.5 * f64::from(r) * f64::from(r);
                }
            }
            loss
        });
        assert_eq!(values.len(), n.div_ceil(BLOCK_ROWS));
        let mut a_ref = vec![0.0f64; n * c];
        for i in 0..n {
            for k in 0..c {
                a_ref[i * c + k] = (0..d)
                    .map(|j| f64::from(w[k * d + j]) * f64::from(z[i * d + j]))
                    .sum::<f64>()
                    + f64::from(b[k]);
            }
        }
        let loss_ref: f64 = a_ref
            .iter()
            .zip(&target)
            .map(|(a, &t)| 0.5 * (a - f64::from(t)).powi(2))
            .sum();
        let loss: f64 = values.iter().sum();
        assert!(
            (loss - loss_ref).abs() < 1e-5 * loss_ref,
            "{loss} {loss_ref}"
        );
        for k in 0..c {
            let gb_ref: f64 = (0..n)
                .map(|i| a_ref[i * c + k] - f64::from(target[i * c + k]))
                .sum();
            assert!((gb[k] - gb_ref).abs() < 1e-4, "{} {gb_ref}", gb[k]);
            for j in 0..d {
                let gw_ref: f64 = (0..n)
                    .map(|i| {
                        (a_ref[i * c + k] - f64::from(target[i * c + k])) * f64::from(z[i * d + j])
                    })
                    .sum();
                assert!(
                    (gw[k * d + j] - gw_ref).abs() < 1e-4,
                    "{} {gw_ref}",
                    gw[k * d + j]
                );
            }
        }
        let mut logits = vec![0.0f32; n * c];
        linear_head_logits(&z, d, &w, &b, &mut logits);
        for (a, r) in logits.iter().zip(&a_ref) {
            assert!((f64::from(*a) - r).abs() < 1e-5);
        }
    }

    /// The same sums whatever the number of threads, and the AVX2 build equals the baseline.
    #[test]
    fn pass_is_deterministic_and_builds_agree() {
        let (n, d, c) = (1000, 64, 2);
        let (z, w, b) = (sample(5, n * d), sample(6, c * d), sample(7, c));
        let run = || {
            let (mut gw, mut gb) = (vec![0.0; c * d], vec![0.0; c]);
            let values = linear_head_pass(&z, d, &w, &b, &mut gw, &mut gb, |first, a, g| {
                g.iter_mut().zip(a).for_each(|(g, &a)| *g = a * 0.5 - 0.25);
                first as f64 + a.iter().map(|&v| f64::from(v)).sum::<f64>()
            });
            (values, gw, gb)
        };
        let pool = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
        };
        let one = pool(1).install(run);
        let three = pool(3).install(run);
        assert_eq!(one, three);
        let mut generic = vec![0.0f32; 4 * c];
        block_logits(&z[..4 * d], d, &w, &b, &mut generic);
        let mut acc = vec![0.0f32; c * d];
        block_grad(&z[..4 * d], d, &generic, c, &mut acc);
        #[cfg(target_arch = "x86_64")]
        if crate::simd::has_avx2() {
            let mut fast = vec![0.0f32; 4 * c];
            let mut acc_fast = vec![0.0f32; c * d];
            unsafe {
                simd::block_logits_avx2(&z[..4 * d], d, &w, &b, &mut fast);
                simd::block_grad_avx2(&z[..4 * d], d, &generic, c, &mut acc_fast);
            }
            assert_eq!(fast, generic);
            assert_eq!(acc_fast, acc);
        }
    }
}
