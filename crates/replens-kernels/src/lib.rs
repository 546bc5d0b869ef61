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

/// An output pointer shared among rayon's tasks, each writing its own part of the output
/// (a block of rows, or of columns).
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: every use site has its tasks write disjoint parts while the output is borrowed
// mutably, and waits for all of them before the borrow ends.
unsafe impl<T: Send> Sync for SendPtr<T> {}
unsafe impl<T: Send> Send for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer `offset` values in (a method, so that a closure captures the whole `SendPtr`,
    /// not its raw pointer field).
    ///
    /// # Safety
    /// `offset` must stay inside the allocation.
    pub(crate) unsafe fn at(&self, offset: usize) -> *mut T {
        self.0.add(offset)
    }
}

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
/// Only the upper triangle of `a` (entries `a[i·n + j]` with j ≥ i) is read and updated, which
/// halves the memory each step sweeps (a 768 × 768 triangle is 2.4 MB: it stays in the cores'
/// L2 caches, where the whole matrix did not). Step k reads its Householder vector from row k
/// right of the diagonal (column k below it, by symmetry).
///
/// Each step's rank-2 update of the trailing block is fused with the next step's
/// matrix-vector product: a row is updated and multiplied while it is in cache, so the block is
/// read and written once per step. With the upper triangle, row i contributes Σ_{j≥i} a_ij v_j
/// to the product's entry i and a_ij v_i to every entry j > i. Large trailing blocks are cut into
/// 8 row ranges of equal work, each adding into its own partial product on
/// rayon's threads; the partials are then added in range order. The ranges depend only on the
/// block's size, so the result does not depend on the number of threads (tested).
pub fn tridiagonalise(
    a: &mut [f64],
    n: usize,
    with_q: bool,
) -> (Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
    // The steps run on one of rayon's threads, so that each step's parallel sweep is shared
    // with the pool's other threads directly instead of being handed over from outside the pool
    // and waited for (a sleep and a wake-up per step: a third of the time in `perf`).
    rayon::scope(|_| tridiagonalise_on_pool(a, n, with_q))
}

fn tridiagonalise_on_pool(
    a: &mut [f64],
    n: usize,
    with_q: bool,
) -> (Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
    if n == 0 {
        return (Vec::new(), Vec::new(), with_q.then(Vec::new));
    }
    let mut diag = vec![0.0; n];
    let mut off = vec![0.0; n];
    let mut reflectors: Vec<(Vec<f64>, f64)> =
        Vec::with_capacity(if with_q { n.saturating_sub(2) } else { 0 });
    // The previous step's update of rows and columns ≥ its start, not yet applied.
    let mut pending: Option<RankTwo> = None;
    let mut p = vec![0.0; n];
    let mut partials = vec![0.0; STEP_CHUNKS * n];
    for k in 0..n.saturating_sub(2) {
        if let Some(update) = &pending {
            update.apply_upper(&mut a[k * n..(k + 1) * n], k);
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
                update.apply_rows_upper(a, n, s);
            }
            continue;
        }
        let p = &mut p[..m];
        let previous = pending.take();
        let chunks = if m >= PARALLEL_ROWS { STEP_CHUNKS } else { 1 };
        let bounds = equal_work_bounds(m, chunks);
        // Each range's rows, with its partial product (zero from the range's first row on,
        // which is where its rows add).
        let trailing = &mut a[s * n..];
        let mut ranges: Vec<(usize, &mut [f64], &mut [f64])> = Vec::with_capacity(chunks);
        let (mut rows_left, mut partials_left) = (trailing, &mut partials[..]);
        for c in 0..chunks {
            let (r0, r1) = (bounds[c], bounds[c + 1]);
            let (rows, rest) = rows_left.split_at_mut((r1 - r0) * n);
            let (partial, rest_p) = partials_left.split_at_mut(n);
            partial[r0..m].fill(0.0);
            ranges.push((r0, rows, &mut partial[..m]));
            rows_left = rest;
            partials_left = rest_p;
        }
        let sweep = |(r0, rows, partial): &mut (usize, &mut [f64], &mut [f64])| {
            for (t, row) in rows.chunks_mut(n).enumerate() {
                let li = *r0 + t; // row s + li of the matrix
                let row = &mut row[s + li..];
                if let Some(update) = &previous {
                    update.apply_from(row, s + li);
                }
                upper_row(row, &v[li..], &mut partial[li..]);
            }
        };
        if chunks > 1 {
            ranges.par_iter_mut().for_each(sweep);
        } else {
            ranges.iter_mut().for_each(sweep);
        }
        p.fill(0.0);
        for (r0, _, partial) in &ranges {
            for (pj, &x) in p[*r0..].iter_mut().zip(&partial[*r0..]) {
                *pj += x;
            }
        }
        p.iter_mut().for_each(|x| *x *= beta);
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
        update.apply_rows_upper(a, n, update.start);
    }
    if n >= 2 {
        diag[n - 2] = a[(n - 2) * n + n - 2];
        off[n - 2] = a[(n - 2) * n + n - 1];
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
    /// Updates `row`, the part from column `r` on of row `r ≥ start` of the matrix (its upper
    /// triangle).
    fn apply_from(&self, row: &mut [f64], r: usize) {
        let o = r - self.start;
        let (vi, qi) = (self.v[o], self.q[o]);
        let (v, q) = (&self.v[o..], &self.q[o..]);
        #[cfg(target_arch = "x86_64")]
        if simd::has_avx2() {
            // SAFETY: the CPU supports AVX2 (checked at run time).
            unsafe { simd::rank_two_avx2(row, v, q, vi, qi) };
            return;
        }
        rank_two_generic(row, v, q, vi, qi);
    }

    /// Updates the upper triangle of row `r ≥ start` (the whole row `row`).
    fn apply_upper(&self, row: &mut [f64], r: usize) {
        self.apply_from(&mut row[r..], r);
    }

    /// Updates the upper triangle of rows `first..n` of the `n × n` matrix `a`.
    fn apply_rows_upper(&self, a: &mut [f64], n: usize, first: usize) {
        for (i, row) in a[first * n..].chunks_mut(n).enumerate() {
            self.apply_upper(row, first + i);
        }
    }
}

/// Row ranges a large trailing block of [`tridiagonalise`] is cut into.
const STEP_CHUNKS: usize = 8;

/// `chunks + 1` boundaries cutting rows `0..m` of an upper triangle (row i holds m − i values)
/// into ranges of about equal work.
fn equal_work_bounds(m: usize, chunks: usize) -> Vec<usize> {
    let total = m * (m + 1) / 2;
    let mut bounds = vec![0; chunks + 1];
    let (mut row, mut done) = (0, 0);
    for (c, bound) in bounds.iter_mut().enumerate().skip(1) {
        let target = total * c / chunks;
        while row < m && done + (m - row) / 2 < target {
            done += m - row;
            row += 1;
        }
        *bound = if c == chunks { m } else { row };
    }
    bounds
}

/// One row of a tridiagonalisation step over the upper triangle: `row` holds the row from its
/// diagonal on, `v` the Householder vector and `partial` the partial product from the same
/// column on. Adds Σ_j row_j v_j to `partial[0]` and row_j · v₀ to `partial[j]` for j ≥ 1.
fn upper_row(row: &[f64], v: &[f64], partial: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        unsafe { simd::upper_row_avx2(row, v, partial) };
        return;
    }
    upper_row_generic(row, v, partial);
}

/// [`upper_row`]'s loops: the dot product ([`dot`]'s sixteen partial sums), then the scaled row
/// added to `partial[1..]` (the row is in the L1 cache for the second sweep).
#[inline(always)]
fn upper_row_generic(row: &[f64], v: &[f64], partial: &mut [f64]) {
    let n = row.len().min(v.len()).min(partial.len());
    if n == 0 {
        return;
    }
    let v0 = v[0];
    let sum = dot_generic(&row[..n], &v[..n]);
    for (pj, &x) in partial[1..n].iter_mut().zip(&row[1..n]) {
        *pj += x * v0;
    }
    partial[0] += sum;
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
/// built for baseline x86-64 (SSE2, 2 lanes of f64), AVX2 has 4 (AVX-512 builds measured no
/// faster here). Rust does not contract `a * b + c` into a fused multiply-add, so both builds
/// compute the same values.
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

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn upper_row_avx2(row: &[f64], v: &[f64], partial: &mut [f64]) {
        super::upper_row_generic(row, v, partial)
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
                update.apply_upper(&mut fast, len / 2);
                let (vi, qi) = (update.v[len / 2], update.q[len / 2]);
                let h = len / 2;
                rank_two_generic(&mut base[h..], &update.v[h..], &update.q[h..], vi, qi);
            }
            assert_eq!(fast, base);
            let mut partial_fast = values(len, 5);
            let mut partial_base = partial_fast.clone();
            upper_row(&a, &b, &mut partial_fast);
            upper_row_generic(&a, &b, &mut partial_base);
            assert_eq!(partial_fast, partial_base, "{len}");
        }
    }

    /// The unfused two-pass form over the whole matrix (matrix-vector product, then the rank-2
    /// update, as separate sweeps), the reference of the tests.
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
            for i in 0..m {
                p[i] = beta * (0..m).map(|j| a[(s + i) * n + s + j] * v[j]).sum::<f64>();
            }
            // q = p − (beta/2)(vᵀp) v ; A22 −= v qᵀ + q vᵀ
            let kq = 0.5 * beta * (0..m).map(|i| v[i] * p[i]).sum::<f64>();
            for i in 0..m {
                p[i] -= kq * v[i];
            }
            for i in 0..m {
                for j in 0..m {
                    a[(s + i) * n + s + j] -= v[i] * p[j] + p[i] * v[j];
                }
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

    /// Largest |x − y| over two slices, relative to the largest |y|.
    fn max_rel_diff(x: &[f64], y: &[f64]) -> f64 {
        let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
        x.iter()
            .zip(y)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
            / scale
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
    fn upper_triangle_tridiagonalisation_matches_the_two_pass_form() {
        // 300 takes the chunked path for its first steps (trailing blocks ≥ PARALLEL_ROWS). The
        // lower triangle is never read: filled with NaN, it changes nothing.
        for (n, seed) in [(1, 1), (2, 2), (3, 3), (5, 4), (40, 5), (300, 6)] {
            let a = random_symmetric(n, seed);
            let (d_ref, e_ref) = two_pass(&mut a.clone(), n);
            let (d, e, _) = tridiagonalise(&mut a.clone(), n, false);
            // T itself moves by rounding (the sums run in another order); its spectrum, A's,
            // must agree to rounding relative to ‖A‖
            let spectrum = |d: &[f64], e: &[f64]| {
                let (mut d, mut e) = (d.to_vec(), e.to_vec());
                tridiagonal_ql(&mut d, &mut e, None).unwrap();
                d.sort_by(|x, y| x.total_cmp(y));
                d
            };
            let diff = max_rel_diff(&spectrum(&d, &e), &spectrum(&d_ref, &e_ref));
            assert!(diff < 1e-13, "eigenvalues, n = {n}: {diff:e}");
            assert!(max_rel_diff(&d, &d_ref) < 1e-10, "diagonal, n = {n}");
            let mut upper_only = a.clone();
            for i in 0..n {
                for j in 0..i {
                    upper_only[i * n + j] = f64::NAN;
                }
            }
            let (d2, e2, _) = tridiagonalise(&mut upper_only, n, false);
            assert_eq!((d2, e2), (d, e), "n = {n}");
        }
    }

    #[test]
    fn tridiagonalisation_does_not_depend_on_the_thread_count() {
        let n = 400;
        let a = random_symmetric(n, 9);
        let run = || tridiagonalise(&mut a.clone(), n, false);
        let pool = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
        };
        let (one, three) = (pool(1).install(run), pool(3).install(run));
        assert_eq!(one, three);
    }

    #[test]
    fn an_empty_matrix_has_no_eigenvalues() {
        assert_eq!(
            tridiagonalise(&mut [], 0, true),
            (vec![], vec![], Some(vec![]))
        );
    }

    #[test]
    fn equal_work_bounds_cover_the_rows_in_order() {
        for (m, chunks) in [(1, 1), (7, 8), (192, 8), (767, 8)] {
            let b = equal_work_bounds(m, chunks);
            assert_eq!((b[0], b[chunks]), (0, m));
            assert!(b.windows(2).all(|w| w[0] <= w[1]), "{b:?}");
        }
        // equal work: the first range of a triangle has fewer (longer) rows than the last
        let b = equal_work_bounds(767, 8);
        assert!(b[1] - b[0] < b[8] - b[7], "{b:?}");
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
        assert!(max_rel_diff(&d, &d_ref) < 1e-12 && max_rel_diff(&e, &e_ref) < 1e-12);
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
