//! The per-row arithmetic of the AdUE uncertainty head (Zabolotnyi et al. 2025, arXiv
//! 2505.15443), in f64 on the f32 logits of a linear head:
//!
//! ```text
//!   p = softmax(a),   SmoothMax_λ(p) = (1/λ) · log Σ_c exp(λ p_c)
//!   U = clamp((1 − SmoothMax_λ(p)) / (1 − 1/C), 1e-8, 1 − 1e-8)
//! ```
//!
//! and the gradient of the AdUE loss with respect to the logits. The formulas and their
//! derivation are documented at `replens::train::adue`; they live here only so that they are
//! compiled at opt-level 3 (see the crate's documentation): they run once per row and epoch,
//! between the logits and the gradient of a group of rows in [`crate::linear_head_pass`].

use rayon::prelude::*;

/// Lower bound of U (as in the official code).
pub const U_MIN: f64 = 1e-8;
/// Upper bound of U.
pub const U_MAX: f64 = 1.0 - 1e-8;

/// Rows of logits per task of [`smooth_max_uncertainties`].
const ROWS_PER_TASK: usize = 256;

/// U of one row of logits `a` (C values). Fills `p` = softmax(a) and `q` = softmax(λp), which
/// is ∂SmoothMax_λ/∂p; returns U and whether the clamp was inactive (its gradient is 1 there
/// and 0 outside). Both softmaxes subtract their maximum before exponentiating (exp(100)
/// overflows f32, and in f64 it keeps the sums well scaled).
///
/// # Panics
/// When there are fewer than 2 classes, or `p` or `q` is not as long as `a`.
///
/// ```
/// // equal logits: p = (½, ½), SmoothMax = ½ + ln 2 / λ, U = 1 − 2 ln 2 / λ
/// let (mut p, mut q) = ([0.0; 2], [0.0; 2]);
/// let (u, inside) = replens_kernels::smooth_max_uncertainty(&[0.3, 0.3], 100.0, &mut p, &mut q);
/// assert!((u - (1.0 - 2.0 * 2f64.ln() / 100.0)).abs() < 1e-15 && inside);
/// assert_eq!((p, q), ([0.5, 0.5], [0.5, 0.5]));
/// ```
pub fn smooth_max_uncertainty(a: &[f32], lambda: f64, p: &mut [f64], q: &mut [f64]) -> (f64, bool) {
    assert!(
        a.len() >= 2 && p.len() == a.len() && q.len() == a.len(),
        "smooth_max_uncertainty: needs C ≥ 2 logits and p, q of length C"
    );
    if let ([a0, a1], [p0, p1], [q0, q1]) = (a, &mut *p, &mut *q) {
        // Two classes (the common case) with lengths the compiler knows: the same operations
        // in the same order, so the same values, without the loops' overhead.
        let (mut p2, mut q2) = ([0.0; 2], [0.0; 2]);
        let result = uncertainty_of(&[*a0, *a1], lambda, &mut p2, &mut q2);
        (*p0, *p1, *q0, *q1) = (p2[0], p2[1], q2[0], q2[1]);
        return result;
    }
    uncertainty_of(a, lambda, p, q)
}

/// [`smooth_max_uncertainty`]'s arithmetic, inlined into its callers so that fixed lengths
/// unroll.
#[inline(always)]
fn uncertainty_of(a: &[f32], lambda: f64, p: &mut [f64], q: &mut [f64]) -> (f64, bool) {
    let max_a = a
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let mut sum = 0.0;
    for (pc, &ac) in p.iter_mut().zip(a) {
        *pc = exp_or_one(f64::from(ac) - max_a);
        sum += *pc;
    }
    p.iter_mut().for_each(|pc| *pc /= sum);
    let max_lp = lambda * p.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum_q = 0.0;
    for (qc, &pc) in q.iter_mut().zip(p.iter()) {
        *qc = exp_or_one(lambda * pc - max_lp);
        sum_q += *qc;
    }
    q.iter_mut().for_each(|qc| *qc /= sum_q);
    // Σ q is exactly 1 whenever the other terms are below half an ulp of 1 (confident rows with
    // λ = 100), and ln 1 = 0 exactly: no logarithm needed.
    let log_sum_q = if sum_q == 1.0 { 0.0 } else { sum_q.ln() };
    let smooth_max = (max_lp + log_sum_q) / lambda;
    let u = (1.0 - smooth_max) / (1.0 - 1.0 / a.len() as f64);
    (u.clamp(U_MIN, U_MAX), (U_MIN..=U_MAX).contains(&u))
}

/// eˣ, without calling `exp` for the maximum's own term (x = 0 exactly, e⁰ = 1 exactly): with
/// two classes that is half of the exponentials.
#[inline(always)]
fn exp_or_one(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        x.exp()
    }
}

/// U ([`smooth_max_uncertainty`]) of every row of `logits` (`C` per row) into `out`, rows
/// shared among rayon's threads (each row's value does not depend on the split).
///
/// # Panics
/// When `out` does not have one value per row.
///
/// ```
/// let mut u = vec![0.0; 2];
/// replens_kernels::smooth_max_uncertainties(&[0.3, 0.3, 20.0, -20.0], 2, 100.0, &mut u);
/// assert!(u[0] > 0.98 && u[1] == replens_kernels::U_MIN);
/// ```
pub fn smooth_max_uncertainties(logits: &[f32], c: usize, lambda: f64, out: &mut [f64]) {
    assert!(c >= 2 && logits.len() == out.len() * c);
    logits
        .par_chunks(ROWS_PER_TASK * c)
        .zip(out.par_chunks_mut(ROWS_PER_TASK))
        .for_each(|(a, u)| {
            let (mut p, mut q) = (vec![0.0; c], vec![0.0; c]);
            for (a, u) in a.chunks_exact(c).zip(u) {
                *u = smooth_max_uncertainty(a, lambda, &mut p, &mut q).0;
            }
        });
}

/// Classes up to which [`adue_row_gradients`] keeps its per-row values on the stack.
const STACK_CLASSES: usize = 16;

/// The AdUE loss's constants for [`adue_row_gradients`].
#[derive(Debug, Clone, Copy)]
pub struct AdueLoss {
    /// λ of SmoothMax.
    pub lambda: f64,
    /// Weight α of the mean squared distance to the softmax response.
    pub alpha: f64,
    /// Rows in the batch (the loss is a mean over them).
    pub batch_rows: usize,
}

/// The AdUE loss terms of a block of rows and their gradient with respect to the logits:
/// `logits` and `grad` hold `C` values per row, `e` (the classifier's errors, 0 or 1) and
/// `u_sr` (its softmax response) one per row. Returns the block's (Σ BCE, Σ (U − U_SR)²), each
/// not yet divided by the batch size; `grad` gets, per row, with B the batch size,
///
/// ```text
///   g_U   = (1/B)·[(1 − e)/(1 − U) − e/U] + (2α/B)·(U − U_SR)
///   g_p,c = −g_U · q_c / (1 − 1/C)             (q = softmax(λp), zero where U is clamped)
///   g_a,c = p_c · (g_p,c − Σ_k p_k g_p,k)      (softmax Jacobian)
/// ```
///
/// The BCE's logarithms are clamped at −100 like `torch.nn.BCELoss`.
///
/// # Panics
/// When the slices' lengths disagree.
///
/// ```
/// use replens_kernels::{adue_row_gradients, AdueLoss};
/// let loss = AdueLoss { lambda: 100.0, alpha: 0.0, batch_rows: 1 };
/// let mut g = [0.0f32; 2];
/// // a confident, correct row: BCE = −ln(1 − U) ≈ U, and a descent step lowers U further by
/// // raising the top logit
/// let (bce, _) = adue_row_gradients(&[2.0, -2.0], 2, &[0.0], &[0.0], loss, &mut g);
/// assert!(bce > 0.0 && bce < 0.1 && g[0] < 0.0 && g[1] > 0.0);
/// ```
pub fn adue_row_gradients(
    logits: &[f32],
    c: usize,
    e: &[f64],
    u_sr: &[f64],
    loss: AdueLoss,
    grad: &mut [f32],
) -> (f64, f64) {
    assert!(c >= 2 && logits.len() == e.len() * c && e.len() == u_sr.len());
    assert_eq!(grad.len(), logits.len());
    let inv_b = 1.0 / loss.batch_rows as f64;
    let norm = 1.0 / (1.0 - 1.0 / c as f64);
    // p, q and g side by side: on the stack for the usual few classes (this runs per group of
    // rows, where three allocations cost as much as the arithmetic)
    let (mut stack, mut heap) = ([0.0f64; 3 * STACK_CLASSES], Vec::new());
    let buffer: &mut [f64] = if c <= STACK_CLASSES {
        &mut stack[..3 * c]
    } else {
        heap.resize(3 * c, 0.0);
        &mut heap
    };
    let (p, rest) = buffer.split_at_mut(c);
    let (q, g) = rest.split_at_mut(c);
    let (mut bce, mut reg) = (0.0, 0.0);
    for (((a, ga), &ei), &si) in logits
        .chunks_exact(c)
        .zip(grad.chunks_exact_mut(c))
        .zip(e)
        .zip(u_sr)
    {
        let (u, inside) = smooth_max_uncertainty(a, loss.lambda, p, q);
        // e is 0 or 1, and then one of the two logarithms has weight 0 and is not needed
        // (it is finite, as U is clamped, so it adds exactly 0)
        let log_u = if ei == 0.0 { 0.0 } else { u.ln().max(-100.0) };
        let log_1mu = if ei == 1.0 {
            0.0
        } else {
            (1.0 - u).ln().max(-100.0)
        };
        bce -= ei * log_u + (1.0 - ei) * log_1mu;
        reg += (u - si) * (u - si);
        if !inside {
            ga.fill(0.0);
            continue;
        }
        let g_u = inv_b * ((1.0 - ei) / (1.0 - u) - ei / u) + 2.0 * loss.alpha * inv_b * (u - si);
        let mut dot = 0.0;
        for k in 0..c {
            g[k] = -g_u * q[k] * norm;
            dot += p[k] * g[k];
        }
        for k in 0..c {
            ga[k] = (p[k] * (g[k] - dot)) as f32;
        }
    }
    (bce, reg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// U against the formula written with the plain (unshifted) softmaxes, for logits where
    /// those do not overflow.
    #[test]
    fn uncertainty_matches_the_plain_formula() {
        let lambda = 7.0;
        for a in [[0.1f32, -0.4, 0.9], [3.0, 3.0, -1.0], [0.0, 0.0, 0.0]] {
            let (mut p, mut q) = ([0.0; 3], [0.0; 3]);
            let (u, inside) = smooth_max_uncertainty(&a, lambda, &mut p, &mut q);
            let ea: Vec<f64> = a.iter().map(|&v| f64::from(v).exp()).collect();
            let pe: Vec<f64> = ea.iter().map(|v| v / ea.iter().sum::<f64>()).collect();
            let sm = pe.iter().map(|v| (lambda * v).exp()).sum::<f64>().ln() / lambda;
            let expected = (1.0 - sm) / (1.0 - 1.0 / 3.0);
            assert!((u - expected.clamp(U_MIN, U_MAX)).abs() < 1e-14, "{a:?}");
            assert_eq!(inside, (U_MIN..=U_MAX).contains(&expected));
            for k in 0..3 {
                assert!((p[k] - pe[k]).abs() < 1e-15);
            }
        }
    }

    /// The gradient against central differences of the loss in f64.
    #[test]
    fn gradient_matches_finite_differences() {
        let loss = AdueLoss {
            lambda: 10.0,
            alpha: 0.3,
            batch_rows: 4,
        };
        let c = 3;
        let logits = [0.2f32, -0.1, 0.5, 1.0, 0.0, -1.0];
        let (e, u_sr) = ([1.0, 0.0], [0.4, 0.2]);
        // the loss in f64 from the plain formulas (no clamp is active at these logits)
        let total = |a: &[f64]| -> f64 {
            let mut sum = 0.0;
            for (i, row) in a.chunks_exact(c).enumerate() {
                let ea: Vec<f64> = row.iter().map(|v| v.exp()).collect();
                let s: f64 = ea.iter().sum();
                let sm = ea
                    .iter()
                    .map(|v| (loss.lambda * v / s).exp())
                    .sum::<f64>()
                    .ln()
                    / loss.lambda;
                let u = (1.0 - sm) / (1.0 - 1.0 / c as f64);
                let bce = -(e[i] * u.ln() + (1.0 - e[i]) * (1.0 - u).ln());
                sum += (bce + loss.alpha * (u - u_sr[i]).powi(2)) / loss.batch_rows as f64;
            }
            sum
        };
        let mut grad = [0.0f32; 6];
        adue_row_gradients(&logits, c, &e, &u_sr, loss, &mut grad);
        let base: Vec<f64> = logits.iter().map(|&v| f64::from(v)).collect();
        for j in 0..6 {
            let h = 1e-6;
            let (mut up, mut down) = (base.clone(), base.clone());
            up[j] += h;
            down[j] -= h;
            let numeric = (total(&up) - total(&down)) / (2.0 * h);
            assert!(
                (f64::from(grad[j]) - numeric).abs() < 1e-5 * numeric.abs().max(1e-3),
                "{j}: {} vs {numeric}",
                grad[j]
            );
        }
    }

    #[test]
    fn a_clamped_row_has_no_gradient() {
        let loss = AdueLoss {
            lambda: 100.0,
            alpha: 0.1,
            batch_rows: 1,
        };
        let mut g = [1.0f32; 2];
        adue_row_gradients(&[60.0, -60.0], 2, &[0.0], &[0.0], loss, &mut g);
        assert_eq!(g, [0.0, 0.0]);
    }
}
