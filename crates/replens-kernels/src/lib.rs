//! The O(n³) dense kernels behind replens's symmetric eigen-solver (Householder
//! tridiagonalisation and implicit QL with Wilkinson shifts; Golub & Van Loan, *Matrix
//! Computations*, 4th ed., §8.3, the EISPACK `tred2`/`tql2` scheme), on row-major `f64`
//! slices, and the fused row-wise f32 kernels of a decoder block ([`rms_norm`], [`add`],
//! [`silu_mul`]) behind `replens`'s f32 CPU forward pass.
//!
//! They live in their own crate only for build reasons: replens's dev/test profile compiles the
//! main crate at opt-level 1 (fast builds), which leaves these loops scalar and bounds-checked,
//! while this crate is built at opt-level 3 (see replens's `Cargo.toml`). The checked, documented
//! entry points are `replens::metrics::linalg::symmetric_eigen` and
//! `replens::metrics::erank::symmetric_eigenvalues`; the row-wise kernels are called by the Llama
//! forward pass (`replens::model::llama`).
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

mod rowwise;
pub use rowwise::{add, rms_norm, silu_mul};

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
pub fn tridiagonalise(
    a: &mut [f64],
    n: usize,
    with_q: bool,
) -> (Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
    let mut diag = vec![0.0; n];
    let mut off = vec![0.0; n];
    let mut reflectors: Vec<(Vec<f64>, f64)> =
        Vec::with_capacity(if with_q { n.saturating_sub(2) } else { 0 });
    let mut p = vec![0.0; n];
    for k in 0..n.saturating_sub(2) {
        diag[k] = a[k * n + k];
        let s = k + 1; // the trailing block is a[s.., s..]
        let m = n - s;
        let mut v: Vec<f64> = (0..m).map(|i| a[(s + i) * n + k]).collect();
        let xnorm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if xnorm == 0.0 {
            off[k] = 0.0;
            if with_q {
                reflectors.push((v, 0.0));
            }
            continue;
        }
        // Reflect x onto alpha·e1 with alpha of the opposite sign of x0 (no cancellation).
        let alpha = if v[0] >= 0.0 { -xnorm } else { xnorm };
        off[k] = alpha;
        v[0] -= alpha;
        let vnorm2: f64 = v.iter().map(|x| x * x).sum();
        if vnorm2 == 0.0 {
            if with_q {
                reflectors.push((v, 0.0));
            }
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
        if with_q {
            reflectors.push((v, beta));
        }
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
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut deflated_early = false;
            let mut i = m;
            while i > l {
                i -= 1;
                let f = s * e[i];
                let b = c * e[i];
                r = f.hypot(g);
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

/// Σ aᵢbᵢ with four independent partial sums: the compiler may not reorder a floating-point
/// sum itself, and one running sum serialises every addition on its latency.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a4, b4) = (a[..n].chunks_exact(4), b[..n].chunks_exact(4));
    let tail: f64 = a4
        .remainder()
        .iter()
        .zip(b4.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut acc = [0.0f64; 4];
    for (x, y) in a4.zip(b4) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    (acc[0] + acc[2]) + (acc[1] + acc[3]) + tail
}
