//! The dense kernels of replens, on row-major slices:
//! * the O(n³) kernels behind its symmetric eigen-solver (Householder tridiagonalisation and
//!   implicit QL with Wilkinson shifts; Golub & Van Loan, *Matrix Computations*, 4th ed., §8.3,
//!   the EISPACK `tred2`/`tql2` scheme), in `f64`;
//! * Gram and cross products written in place by `gemm` ([`add_gram_upper`], [`add_cross`]) and
//!   the row preparation of eRank ([`column_sums`], [`centred_unit_rows`]);
//! * the kernel-matrix passes of the MMD tests over the [`UpperTriangle`] of an `n × n` matrix
//!   ([`sq_distances`], [`lower_median_upper`], [`rbf_upper`], [`symmetric_quadratic_forms`]);
//! * the fused row-wise f32 kernels of a decoder block ([`rms_norm`], [`add`], [`silu_mul`]), its
//!   rotary grouped-query attention ([`rotary_attention_f32`]), and f64 and f32 kernels of an
//!   encoder layer ([`add_layer_norm`], [`add_bias`], [`bias_gelu`], [`scaled_masked_softmax`],
//!   [`encoder_attention`] and their `_f32` twins) behind `replens`'s CPU inference passes;
//! * the products of a linear layer with the output's columns shared among threads
//!   ([`blocked_product`]), behind the decoder's and encoder's linear layers;
//! * one-pass training steps of a small linear head ([`linear_head_pass`],
//!   [`linear_head_logits`]) behind the AdUE head, and the head's per-row uncertainty and loss
//!   gradient ([`smooth_max_uncertainty`], [`adue_row_gradients`]).
//!
//! They live in their own crate only for build reasons: replens's dev/test profile compiles the
//! main crate at opt-level 1 (fast builds), which leaves these loops scalar and bounds-checked,
//! while this crate is built at opt-level 3 (see replens's `Cargo.toml`). The checked, documented
//! entry points are `replens::metrics::linalg::symmetric_eigen` and
//! `replens::metrics::erank::symmetric_eigenvalues`; the Gram kernels by `replens::metrics`
//! (eRank, CKA); the row-wise kernels by the Llama and BERT forward passes (`replens::model`).
//!
//! ```
//! // eigenvalues of [[2, 1], [1, 2]]: 3 and 1
//! let mut a = vec![2.0, 1.0, 1.0, 2.0];
//! let (mut d, mut e, _) = replens_kernels::tridiagonalise(&mut a, 2, false);
//! replens_kernels::tridiagonal_ql(&mut d, &mut e, None).unwrap();
//! d.sort_by(|x, y| y.total_cmp(x));
//! assert!((d[0] - 3.0).abs() < 1e-12 && (d[1] - 1.0).abs() < 1e-12);
//! ```

use rayon::prelude::*;

mod attention;
mod encoder;
mod erf;
mod gram;
mod linear_head;
mod pairwise;
mod products;
mod rowwise;
mod smooth_max;
mod triangle;
pub use attention::{
    encoder_attention, encoder_attention_f32, rotary_attention_f32, AttentionDims,
};
pub use encoder::{
    add_bias, add_bias_f32, add_layer_norm, add_layer_norm_f32, bias_gelu, bias_gelu_f32,
    scaled_masked_softmax, scaled_masked_softmax_f32,
};
pub use gram::{
    add_cross, add_gram_upper, add_widened, centred_unit_rows, column_sums, first_non_finite,
    gemm_parallelism, mirror_upper, shifted_side_by_side, GramOf, Real, GRAM_BLOCK,
};
pub use linear_head::{linear_head_logits, linear_head_pass, ROW_GROUP};
pub use pairwise::{
    lower_median_upper, rbf_upper, sq_distances, sq_distances_with_median,
    symmetric_quadratic_forms, KernelSums, PAIR_SAMPLE,
};
pub use products::{blocked_product, COLUMN_SPLIT_MIN_ROWS};
pub use rowwise::{add, rms_norm, silu_mul};
pub use smooth_max::{
    adue_row_gradients, smooth_max_uncertainties, smooth_max_uncertainty, AdueLoss, U_MAX, U_MIN,
};
pub use triangle::{Block, UpperTriangle, TRIANGLE_BLOCK};

/// Trailing blocks with at least this many rows are tridiagonalised on rayon's threads.
const PARALLEL_ROWS: usize = 192;

/// The implicit QL iteration did not converge within 100 sweeps for one eigenvalue (never
/// observed on real input; reported rather than looping forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotConverged {
    /// Index of the eigenvalue being isolated.
    pub eigenvalue: usize,
    /// Matrix size.
    pub n: usize,
}

impl std::fmt::Display for NotConverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "symmetric eigen-solver: QL did not converge for eigenvalue {} of {}",
            self.eigenvalue, self.n
        )
    }
}

impl std::error::Error for NotConverged {}

/// Householder tridiagonalisation of the symmetric `a` (destroyed) (Golub & Van Loan §8.3).
/// Returns (diagonal, off-diagonal with `off[k]` coupling k and k+1, Q if `with_q`) with
/// A = Q T Qᵀ, Q row-major.
///
/// `a` must be exactly symmetric (the callers symmetrise it): step k reads its Householder
/// vector from row k instead of column k, which is the same because the rank-2 updates keep the
/// matrix exactly symmetric (`vᵢqⱼ + qᵢvⱼ` and `vⱼqᵢ + qⱼvᵢ` round alike).
///
/// Each step's rank-2 update of the trailing block is fused with the next step's
/// matrix-vector product: a row is updated and multiplied while it is in cache, so the block is
/// read and written once per step instead of read twice and written once (for n = 768 the
/// matrix is 4.7 MB, more than a core's cache). The arithmetic, and so the result, is that of
/// the two-pass form, bit for bit (tested).
pub fn tridiagonalise(
    a: &mut [f64],
    n: usize,
    with_q: bool,
) -> (Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
    let mut diag = vec![0.0; n];
    let mut off = vec![0.0; n];
    let mut reflectors: Vec<(Vec<f64>, f64)> =
        Vec::with_capacity(if with_q { n.saturating_sub(2) } else { 0 });
    // The previous step's update of rows and columns ≥ its start, not yet applied.
    let mut pending: Option<RankTwo> = None;
    let mut p = vec![0.0; n];
    for k in 0..n.saturating_sub(2) {
        if let Some(update) = &pending {
            update.apply(&mut a[k * n..(k + 1) * n], k);
        }
        diag[k] = a[k * n + k];
        let s = k + 1; // the trailing block is a[s.., s..]
        let m = n - s;
        let mut v = a[k * n + s..(k + 1) * n].to_vec();
        let beta = householder(&mut v, &mut off[k]);
        if with_q {
            reflectors.push((v.clone(), beta));
        }
        if beta == 0.0 {
            // No reflection at this step: only the previous update is left to apply.
            if let Some(update) = pending.take() {
                update.apply_rows(a, n, s);
            }
            continue;
        }
        let p = &mut p[..m];
        let previous = pending.take();
        let step = |(i, (row, pi)): (usize, (&mut [f64], &mut f64))| {
            if let Some(update) = &previous {
                update.apply(row, s + i);
            }
            *pi = beta * dot(&row[s..], &v);
        };
        // Rows are independent, so the rows of a large trailing block are shared among rayon's
        // threads; every row's arithmetic, and so the result, is the same.
        let trailing = &mut a[s * n..];
        if m >= PARALLEL_ROWS {
            trailing
                .par_chunks_mut(n)
                .zip(p.par_iter_mut())
                .enumerate()
                .with_min_len(16)
                .for_each(step);
        } else {
            trailing
                .chunks_mut(n)
                .zip(p.iter_mut())
                .enumerate()
                .for_each(step);
        }
        // q = p − (beta/2)(vᵀp) v ; A22 −= v qᵀ + q vᵀ (at the next step)
        let kq = 0.5 * beta * dot(&v, p);
        for (pi, vi) in p.iter_mut().zip(v.iter()) {
            *pi -= kq * vi;
        }
        pending = Some(RankTwo {
            start: s,
            v,
            q: p.to_vec(),
        });
    }
    if let Some(update) = pending.take() {
        update.apply_rows(a, n, update.start);
    }
    if n >= 2 {
        diag[n - 2] = a[(n - 2) * n + n - 2];
        off[n - 2] = a[(n - 1) * n + n - 2];
    }
    diag[n - 1] = a[(n - 1) * n + n - 1];
    off[n - 1] = 0.0;
    if !with_q {
        return (diag, off, None);
    }

    // Q = H_0 H_1 … H_{n−3}, accumulated backwards: before H_k is applied the product acts
    // only on indices ≥ k+2, so H_k touches rows and columns ≥ k+1 only.
    let mut q = vec![0.0; n * n];
    for i in 0..n {
        q[i * n + i] = 1.0;
    }
    let mut w = vec![0.0; n];
    for (k, (v, beta)) in reflectors.iter().enumerate().rev() {
        if *beta == 0.0 {
            continue;
        }
        let s = k + 1;
        let w = &mut w[s..n];
        w.iter_mut().for_each(|x| *x = 0.0);
        // w = Qᵀ[s.., s..] v (row combination), then Q[s.., s..] −= beta v wᵀ.
        for (i, &vi) in v.iter().enumerate() {
            let row = &q[(s + i) * n + s..(s + i) * n + n];
            for (wj, &x) in w.iter_mut().zip(row) {
                *wj += vi * x;
            }
        }
        for (i, &vi) in v.iter().enumerate() {
            let f = beta * vi;
            let row = &mut q[(s + i) * n + s..(s + i) * n + n];
            for (x, &wj) in row.iter_mut().zip(w.iter()) {
                *x -= f * wj;
            }
        }
    }
    (diag, off, Some(q))
}

/// Turns `v` (the part of row k right of the diagonal) into the Householder vector that maps it
/// onto `alpha·e1`, with alpha of the opposite sign of v₀ (no cancellation), writes alpha to
/// `off` and returns beta = 2 / ‖v‖² (0 when there is nothing to reflect).
fn householder(v: &mut [f64], off: &mut f64) -> f64 {
    let xnorm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if xnorm == 0.0 {
        *off = 0.0;
        return 0.0;
    }
    let alpha = if v[0] >= 0.0 { -xnorm } else { xnorm };
    *off = alpha;
    v[0] -= alpha;
    let vnorm2: f64 = v.iter().map(|x| x * x).sum();
    if vnorm2 == 0.0 {
        0.0
    } else {
        2.0 / vnorm2
    }
}

/// The symmetric rank-2 update A[start.., start..] −= v qᵀ + q vᵀ of one tridiagonalisation step.
struct RankTwo {
    start: usize,
    v: Vec<f64>,
    q: Vec<f64>,
}

impl RankTwo {
    /// Updates `row`, row `r ≥ start` of the matrix.
    fn apply(&self, row: &mut [f64], r: usize) {
        let (vi, qi) = (self.v[r - self.start], self.q[r - self.start]);
        let row = &mut row[self.start..];
        #[cfg(target_arch = "x86_64")]
        if simd::has_avx2() {
            // SAFETY: the CPU supports AVX2 (checked at run time).
            unsafe { simd::rank_two_avx2(row, &self.v, &self.q, vi, qi) };
            return;
        }
        rank_two_generic(row, &self.v, &self.q, vi, qi);
    }

    /// Updates rows `first..n` of the `n × n` matrix `a`.
    fn apply_rows(&self, a: &mut [f64], n: usize, first: usize) {
        for (i, row) in a[first * n..].chunks_mut(n).enumerate() {
            self.apply(row, first + i);
        }
    }
}

/// Implicit QL with Wilkinson shifts on a symmetric tridiagonal matrix (`d` diagonal, `e[i]`
/// coupling i and i+1; `e` destroyed); eigenvalues in `d` on return, unsorted. With `zt`
/// (`n × n`, rows = the columns of the tridiagonalising Q) every rotation is applied to its
/// rows, so that row i is eigenvector i on return.
pub fn tridiagonal_ql(
    d: &mut [f64],
    e: &mut [f64],
    mut zt: Option<&mut [f64]>,
) -> Result<(), NotConverged> {
    let n = d.len();
    // Negligibility relative to the whole matrix (EISPACK tql1/tql2), not to the neighbours
    // only: in a cluster of (numerically) zero eigenvalues — every rank-deficient Gram matrix —
    // a purely local test never triggers, because those entries are only accurate to ~eps·‖T‖
    // in absolute terms.
    let anorm = (0..n).fold(0.0f64, |acc, i| {
        let left = if i > 0 { e[i - 1].abs() } else { 0.0 };
        acc.max(d[i].abs() + e[i].abs() + left)
    });
    let tol = f64::EPSILON * anorm;
    for l in 0..n {
        let mut iterations = 0;
        loop {
            let mut m = l;
            while m + 1 < n {
                if e[m].abs() <= tol {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            iterations += 1;
            if iterations > 100 {
                return Err(NotConverged { eigenvalue: l, n });
            }
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = pythag(g, 1.0);
            g = d[m] - d[l] + e[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut deflated_early = false;
            let mut i = m;
            while i > l {
                i -= 1;
                let f = s * e[i];
                let b = c * e[i];
                r = pythag(f, g);
                e[i + 1] = r;
                if r == 0.0 {
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    deflated_early = true;
                    break;
                }
                s = f / r;
                c = g / r;
                let g2 = d[i + 1] - p;
                r = (d[i] - g2) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g2 + p;
                g = c * r - b;
                if let Some(zt) = zt.as_deref_mut() {
                    let (lo, hi) = zt.split_at_mut((i + 1) * n);
                    let zi = &mut lo[i * n..];
                    let zi1 = &mut hi[..n];
                    for (a, b) in zi.iter_mut().zip(zi1.iter_mut()) {
                        let f = *b;
                        *b = s * *a + c * f;
                        *a = c * *a - s * f;
                    }
                }
            }
            if deflated_early {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    Ok(())
}

/// √(a² + b²): the direct formula where the squares can neither overflow nor lose precision
/// to underflow (within about 1 ulp of `f64::hypot`, which is 3–4× slower and was a quarter of the
/// eigenvalue-only QL iteration's time), `hypot` elsewhere.
#[inline]
fn pythag(a: f64, b: f64) -> f64 {
    let (a, b) = (a.abs(), b.abs());
    let big = a.max(b);
    if big > 1e-150 && big < 1e150 {
        (a * a + b * b).sqrt()
    } else {
        a.hypot(b)
    }
}

/// Σ aᵢbᵢ with sixteen independent partial sums, added pairwise at the end: the compiler may
/// not reorder a floating-point sum itself, and one running sum serialises every addition on
/// its latency. With AVX2 the partial sums fill four vector registers (the same arithmetic in
/// the same order, so the same result, as the baseline build).
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        return unsafe { simd::dot_avx2(a, b) };
    }
    dot_generic(a, b)
}

#[inline(always)]
fn dot_generic(a: &[f64], b: &[f64]) -> f64 {
    const LANES: usize = 16;
    let n = a.len().min(b.len());
    let (ac, bc) = (a[..n].chunks_exact(LANES), b[..n].chunks_exact(LANES));
    let tail: f64 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut acc = [0.0f64; LANES];
    for (x, y) in ac.zip(bc) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for k in 0..width {
            acc[k] += acc[k + width];
        }
    }
    acc[0] + tail
}

#[inline(always)]
fn rank_two_generic(row: &mut [f64], v: &[f64], q: &[f64], vi: f64, qi: f64) {
    for ((x, &vj), &qj) in row.iter_mut().zip(v).zip(q) {
        *x -= vi * qj + qi * vj;
    }
}

/// The eigen-solver's inner loops compiled for AVX2 as well, chosen at run time: this crate is
/// built for baseline x86-64 (SSE2, 2 lanes of f64), AVX2 has 4. Rust does not contract
/// `a * b + c` into a fused multiply-add, so both builds compute the same values.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::sync::OnceLock;

    pub(crate) fn has_avx2() -> bool {
        static AVX2: OnceLock<bool> = OnceLock::new();
        *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
    }

    pub(crate) fn has_avx512() -> bool {
        static AVX512: OnceLock<bool> = OnceLock::new();
        *AVX512.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn dot_avx2(a: &[f64], b: &[f64]) -> f64 {
        super::dot_generic(a, b)
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn rank_two_avx2(row: &mut [f64], v: &[f64], q: &[f64], vi: f64, qi: f64) {
        super::rank_two_generic(row, v, q, vi, qi)
    }
}

/// A deterministic pseudo-random sequence in [0, 1) for the crate's tests.
#[cfg(test)]
pub(crate) fn uniform(seed: u64, len: usize) -> Vec<f64> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_builds_compute_the_baseline_values() {
        // Lengths around the 16 partial sums, with values of mixed sign and size.
        let values = |len: usize, seed: u64| -> Vec<f64> {
            uniform(seed, len)
                .iter()
                .enumerate()
                .map(|(i, u)| (u - 0.5) * 10f64.powi(i as i32 % 7))
                .collect()
        };
        for len in [0, 1, 15, 16, 17, 100, 771] {
            let (a, b) = (values(len, 1), values(len, 2));
            assert_eq!(
                dot(&a, &b).to_bits(),
                dot_generic(&a, &b).to_bits(),
                "{len}"
            );
            let update = RankTwo {
                start: 0,
                v: values(len, 3),
                q: values(len, 4),
            };
            let mut fast = a.clone();
            let mut base = a.clone();
            if len > 0 {
                update.apply(&mut fast, len / 2);
                let (vi, qi) = (update.v[len / 2], update.q[len / 2]);
                rank_two_generic(&mut base, &update.v, &update.q, vi, qi);
            }
            assert_eq!(fast, base);
        }
    }

    /// The two-pass form this crate used before the fused one (matrix-vector product, then the
    /// rank-2 update, as separate sweeps), kept as the reference of the bit-for-bit test.
    #[allow(clippy::needless_range_loop)]
    fn two_pass(a: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>) {
        let mut diag = vec![0.0; n];
        let mut off = vec![0.0; n];
        let mut p = vec![0.0; n];
        for k in 0..n.saturating_sub(2) {
            diag[k] = a[k * n + k];
            let s = k + 1; // the trailing block is a[s.., s..]
            let m = n - s;
            let mut v: Vec<f64> = (0..m).map(|i| a[(s + i) * n + k]).collect();
            let xnorm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            if xnorm == 0.0 {
                off[k] = 0.0;
                continue;
            }
            // Reflect x onto alpha·e1 with alpha of the opposite sign of x0 (no cancellation).
            let alpha = if v[0] >= 0.0 { -xnorm } else { xnorm };
            off[k] = alpha;
            v[0] -= alpha;
            let vnorm2: f64 = v.iter().map(|x| x * x).sum();
            if vnorm2 == 0.0 {
                continue;
            }
            let beta = 2.0 / vnorm2;
            let p = &mut p[..m];
            // Rows are independent in both passes, so the rows of a large trailing block are shared
            // among rayon's threads; every row's arithmetic, and so the result, is the same.
            let parallel = m >= PARALLEL_ROWS;
            let matvec = |(i, pi): (usize, &mut f64)| {
                let row = &a[(s + i) * n + s..(s + i) * n + n];
                *pi = beta * dot(row, &v);
            };
            if parallel {
                p.par_iter_mut()
                    .enumerate()
                    .with_min_len(16)
                    .for_each(matvec);
            } else {
                p.iter_mut().enumerate().for_each(matvec);
            }
            // q = p − (beta/2)(vᵀp) v ; A22 −= v qᵀ + q vᵀ
            let kq = 0.5 * beta * dot(&v, p);
            for (pi, vi) in p.iter_mut().zip(v.iter()) {
                *pi -= kq * vi;
            }
            let (vr, q) = (&v, &*p);
            let update = |(i, row): (usize, &mut [f64])| {
                let (vi, qi) = (vr[i], q[i]);
                for ((x, &vj), &qj) in row[s..].iter_mut().zip(vr.iter()).zip(q.iter()) {
                    *x -= vi * qj + qi * vj;
                }
            };
            let trailing = &mut a[s * n..];
            if parallel {
                trailing
                    .par_chunks_mut(n)
                    .enumerate()
                    .with_min_len(16)
                    .for_each(update);
            } else {
                trailing.chunks_mut(n).enumerate().for_each(update);
            }
        }
        if n >= 2 {
            diag[n - 2] = a[(n - 2) * n + n - 2];
            off[n - 2] = a[(n - 1) * n + n - 2];
        }
        diag[n - 1] = a[(n - 1) * n + n - 1];
        off[n - 1] = 0.0;
        (diag, off)
    }

    fn random_symmetric(n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let x = next();
                a[i * n + j] = x;
                a[j * n + i] = x;
            }
        }
        a
    }

    #[test]
    fn fused_tridiagonalisation_equals_the_two_pass_form_bit_for_bit() {
        // 300 takes the parallel path for its first steps (trailing blocks ≥ PARALLEL_ROWS).
        for (n, seed) in [(1, 1), (2, 2), (3, 3), (5, 4), (40, 5), (300, 6)] {
            let a = random_symmetric(n, seed);
            let (d_ref, e_ref) = two_pass(&mut a.clone(), n);
            let (d, e, _) = tridiagonalise(&mut a.clone(), n, false);
            assert_eq!(d, d_ref, "diagonal, n = {n}");
            assert_eq!(e, e_ref, "off-diagonal, n = {n}");
        }
    }

    #[test]
    fn steps_with_nothing_to_reflect_still_apply_the_previous_update() {
        // Rows 0..4 are a dense block, rows 4..8 diagonal: from step 4 on, nothing is reflected,
        // step 2's pending update must still reach rows 3.. (and step 3 has a zero vector).
        let n = 8;
        let mut a = random_symmetric(n, 7);
        for i in 0..n {
            for j in 0..n {
                if (i >= 4 || j >= 4) && i != j {
                    a[i * n + j] = 0.0;
                }
            }
        }
        let (d_ref, e_ref) = two_pass(&mut a.clone(), n);
        let (d, e, q) = tridiagonalise(&mut a.clone(), n, true);
        assert_eq!((d.clone(), e.clone()), (d_ref, e_ref));
        // A = Q T Qᵀ
        let q = q.unwrap();
        for i in 0..n {
            for j in 0..n {
                let mut x = 0.0;
                for k in 0..n {
                    let mut t = d[k] * q[j * n + k];
                    if k + 1 < n {
                        t += e[k] * q[j * n + k + 1];
                    }
                    if k > 0 {
                        t += e[k - 1] * q[j * n + k - 1];
                    }
                    x += q[i * n + k] * t;
                }
                assert!(
                    (x - a[i * n + j]).abs() < 1e-12,
                    "({i}, {j}): {x} vs {}",
                    a[i * n + j]
                );
            }
        }
    }
}
