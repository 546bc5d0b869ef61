//! Distribution shift between two sets of embeddings: PCA on the union, kernel two-sample
//! tests (MMD), a classifier two-sample test (C2ST), per-component Kolmogorov–Smirnov tests with
//! multiple-testing corrections, and a [`ShiftReport`] that gathers them.
//!
//! Vargas et al. (arXiv 2310.13836) show the Sentiment140 train/test shift *qualitatively*:
//! final-layer embeddings of the two sets separate in a PCA plot with KDE contours. This module
//! turns that into seeded tests with p-values.
//!
//! # The tests
//! * **MMD² with an RBF kernel** (Gretton, Borgwardt, Rasch, Schölkopf & Smola, *A Kernel
//!   Two-Sample Test*, JMLR 13, 2012). With `k(a, b) = exp(−‖a − b‖² / (2σ²))`, samples X (m
//!   rows) and Y (n rows):
//!   ```text
//!     MMD²_u = Σ_{i≠j} k(x_i,x_j)/(m(m−1)) + Σ_{i≠j} k(y_i,y_j)/(n(n−1)) − 2 Σ_{i,j} k(x_i,y_j)/(mn)
//!     MMD²_b = Σ_{i,j} k(x_i,x_j)/m²       + Σ_{i,j} k(y_i,y_j)/n²       − 2 Σ_{i,j} k(x_i,y_j)/(mn)
//!   ```
//!   (the unbiased U-statistic, eq. 3, and the biased V-statistic, eq. 5). **Bandwidth: the
//!   median heuristic in alibi-detect's convention** — σ² = median/2 of the squared Euclidean
//!   distances between distinct pairs of the *pooled* sample (the lower median when the number
//!   of pairs is even), so `k = exp(−‖a − b‖² / median ‖·‖²)`. (Gretton et al. instead set σ
//!   to the median *distance*; pass [`Bandwidth::Fixed`] for that or any other choice.)
//! * **Permutation test** of MMD²: the pooled kernel matrix K is computed once (in f64, over
//!   its upper triangle); each permutation relabels the pooled rows and recomputes the three
//!   block sums from it. With a 0/1 membership column a for x, `S_xx = aᵀKa`,
//!   `S_xy = aᵀ(K1) − S_xx` and `S_yy = 1ᵀK1 − S_xx − 2 S_xy`, so only the quadratic forms aᵀKa
//!   are computed per permutation, in batches of 128 columns, from K's upper triangle centred
//!   by the mean of its first row and rounded to f32, with f32 sums over at most 256 terms
//!   added in f64 (the permuted statistics' error is ~1e-6 of the null distribution's spread;
//!   the observed split is column 0 of the first batch, so it goes through the same
//!   arithmetic as its permutations). With B permutations,
//!   `p = (1 + #{b : MMD²_b ≥ MMD²_obs}) / (1 + B)` — valid at every B (Phipson & Smyth 2010).
//! * **Linear-time MMD** (Gretton et al. 2012, §6, eq. 10): with m₂ = ⌊min(m, n)/2⌋ disjoint
//!   pairs, `h_i = k(x_{2i−1},x_{2i}) + k(y_{2i−1},y_{2i}) − k(x_{2i−1},y_{2i}) − k(x_{2i},y_{2i−1})`,
//!   `MMD²_l = mean(h)`, and under H0 `z = MMD²_l / sqrt(var(h)/m₂)` is asymptotically N(0, 1);
//!   the one-sided p-value is `1 − Φ(z)`. Rows are shuffled with the seed before pairing; the
//!   median bandwidth is taken on at most [`LINEAR_MMD_MEDIAN_ROWS`] pooled rows so the cost
//!   stays linear.
//! * **C2ST** (Lopez-Paz & Oquab, *Revisiting Classifier Two-Sample Tests*, ICLR 2017): label X
//!   as 0 and Y as 1, split each group at random (seeded) into train and test — the **test set
//!   is balanced**, ⌊f · min(m, n)⌋ rows from each group — fit an L2 logistic regression
//!   ([`crate::train::probe`], standardised features) on the train part and count the correct
//!   test predictions. Under H0 the predictions are independent of the test labels, so with a
//!   balanced test set the count is stochastically no larger than Binomial(n_test, ½)
//!   (Hoeffding 1956). **p-value = P(Binomial(n_test, ½) ≥ n_correct)**, the exact tail (the
//!   paper uses its normal approximation).
//! * **KS per principal component**: the two-sample Kolmogorov–Smirnov statistic
//!   `D = sup_t |F_X(t) − F_Y(t)|` on each of the first k PC scores (PCA fitted on the union,
//!   which keeps the tests valid: the union does not depend on which row came from which group).
//!   **p-value: scipy's `ks_2samp(method="auto")` rule** — exact (the lattice-path
//!   distribution, two-sided, no ties assumed) when `max(m, n) ≤ 10 000`, otherwise the
//!   asymptotic Kolmogorov distribution `Q_KS(√(mn/(m+n)) · D)` (scipy's `kstwobign`; scipy
//!   itself now uses `kstwo.sf(D, round(mn/(m+n)))` there, which differs in the third digit).
//!   The k p-values are corrected with **Holm** (family-wise error) and **Benjamini–Hochberg**
//!   (false discovery rate); the global "any PC shifted" test rejects when the smallest
//!   adjusted p-value is ≤ α.
//!
//! ```
//! use replens::candle_core::{Device, Tensor};
//! use replens::metrics::shift::{shift_report, ShiftOptions};
//! let dev = Device::Cpu;
//! let x = Tensor::randn(0f32, 1., (80, 6), &dev)?;
//! let y = (Tensor::randn(0f32, 1., (80, 6), &dev)? + 1.0)?; // every feature shifted
//! let report = shift_report(&x, &y, &ShiftOptions::default().n_permutations(199).seed(3))?;
//! assert!(report.rows.iter().all(|r| r.reject), "{report}");
//! let frame = report.to_frame()?;
//! assert_eq!(frame.height(), report.rows.len());
//! # Ok::<(), replens::Error>(())
//! ```

use candle_core::Tensor;
use polars::prelude::{Column, DataFrame};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use replens_kernels::{KernelSums, UpperTriangle};

use crate::display::{escape_html, table_html, DisplayHtml, Html};
use crate::error::{bail, Result};
use crate::metrics::linalg::{gemm_threads, symmetric_eigen};
use crate::train::probe::{LogisticRegression, Matrix};

/// Pooled rows used for the median bandwidth of the linear-time MMD.
pub const LINEAR_MMD_MEDIAN_ROWS: usize = 1000;

/// Largest group size for which KS p-values are exact (scipy's `MAX_AUTO_N`).
pub const KS_EXACT_MAX_N: usize = 10_000;

/// Permutations evaluated per batch of quadratic forms.
const PERM_BATCH: usize = 128;

fn check_pair(what: &str, x: &Matrix, y: &Matrix) -> Result<()> {
    if x.cols() != y.cols() {
        bail!(
            "{what}: x has {} features (columns) but y has {}; both groups must come from the same embedding",
            x.cols(),
            y.cols()
        );
    }
    Ok(())
}

fn read_pair(what: &str, x: &Tensor, y: &Tensor) -> Result<(Matrix, Matrix)> {
    let mx = Matrix::from_tensor(&format!("{what}: x"), x)?;
    let my = Matrix::from_tensor(&format!("{what}: y"), y)?;
    check_pair(what, &mx, &my)?;
    Ok((mx, my))
}

// ---------------------------------------------------------------------------------------------
// PCA
// ---------------------------------------------------------------------------------------------

/// Principal component analysis by the eigen-decomposition of the covariance matrix (or of the
/// Gram matrix when there are fewer rows than features), in f64.
///
/// Conventions follow scikit-learn's `PCA`: rows are centred by the fitted mean,
/// `explained_variance[i]` is the i-th eigenvalue of the sample covariance with the n − 1
/// denominator, `explained_variance_ratio[i]` is it divided by the total variance (the trace),
/// and each component's sign is chosen so that its largest-magnitude entry is positive (the
/// rule of scikit-learn ≥ 1.5's `svd_flip(u_based_decision=False)`).
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// use replens::metrics::shift::Pca;
/// // Points on the line y = 2x, plus a little noise in y.
/// let x = Tensor::new(&[[0.0f64, 0.1], [1.0, 2.0], [2.0, 3.9], [3.0, 6.1], [4.0, 8.0]], &Device::Cpu)?;
/// let pca = Pca::fit(&x, 2)?;
/// assert!(pca.explained_variance_ratio[0] > 0.99);
/// let c = pca.component(0);
/// assert!((c[1] / c[0] - 2.0).abs() < 0.05);
/// let scores = pca.transform(&x)?; // (5, 2) f64
/// assert_eq!(scores.dims(), &[5, 2]);
/// # Ok::<(), replens::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Pca {
    /// Column means of the fitted data (length d).
    pub mean: Vec<f64>,
    /// The k components, row-major `k × d`, unit length, orthogonal.
    pub components: Vec<f64>,
    /// Variance of the data along each component (eigenvalues, n − 1 denominator).
    pub explained_variance: Vec<f64>,
    /// `explained_variance / total_variance`.
    pub explained_variance_ratio: Vec<f64>,
    /// Total variance (trace of the covariance matrix).
    pub total_variance: f64,
    /// Rows the PCA was fitted on.
    pub n_samples: usize,
    /// Features d.
    pub n_features: usize,
}

impl Pca {
    /// Fit the first `n_components` components of an `(n, d)` float tensor (n ≥ 2,
    /// 1 ≤ n_components ≤ min(n, d)).
    pub fn fit(x: &Tensor, n_components: usize) -> Result<Pca> {
        Pca::fit_matrix(&Matrix::from_tensor("PCA: x", x)?, n_components)
    }

    /// Fit on the union of several groups (their rows stacked), e.g. train and test
    /// embeddings, so that all of them are projected on the same axes.
    pub fn fit_groups(groups: &[&Tensor], n_components: usize) -> Result<Pca> {
        if groups.is_empty() {
            bail!("PCA: no groups given");
        }
        let mats = groups
            .iter()
            .enumerate()
            .map(|(i, g)| Matrix::from_tensor(&format!("PCA: group {i}"), g))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Matrix> = mats.iter().collect();
        Pca::fit_matrix(&Matrix::vstack("PCA", &refs)?, n_components)
    }

    /// [`fit`](Self::fit) on an already checked [`Matrix`].
    ///
    /// Centred data has rank ≤ n − 1: when d ≥ n and `n_components = n`, the last component
    /// has zero variance and is returned as a zero vector (scikit-learn returns an arbitrary
    /// unit vector there).
    pub fn fit_matrix(x: &Matrix, n_components: usize) -> Result<Pca> {
        let (n, d) = (x.rows(), x.cols());
        if n < 2 {
            bail!("PCA: needs at least 2 rows, got {n}");
        }
        if n_components == 0 || n_components > n.min(d) {
            bail!(
                "PCA: n_components must be in 1..={} (min of {n} rows and {d} features), got {n_components}",
                n.min(d)
            );
        }
        let mut xc = x.data().to_vec();
        let mean = crate::metrics::linalg::centre_columns(&mut xc, d);
        let denom = (n - 1) as f64;
        let total_variance = xc.iter().map(|v| v * v).sum::<f64>() / denom;
        if total_variance <= 0.0 {
            bail!("PCA: all {n} rows are identical (zero variance)");
        }
        let xct = crate::metrics::linalg::transpose(&xc, n, d);
        let mut components = vec![0.0; n_components * d];
        let mut explained_variance = Vec::with_capacity(n_components);
        if d <= n {
            let cov = crate::metrics::linalg::matmul(&xct, &xc, d, n, d)?;
            let (values, vectors) = symmetric_eigen(&cov, d)?;
            for c in 0..n_components {
                explained_variance.push((values[c] / denom).max(0.0));
                for j in 0..d {
                    components[c * d + j] = vectors[j * d + c];
                }
            }
        } else {
            // XcXcᵀ = U S² Uᵀ and the components are Xcᵀ u / s: an n×n problem instead of d×d.
            let gram = crate::metrics::linalg::matmul(&xc, &xct, n, d, n)?;
            let (values, vectors) = symmetric_eigen(&gram, n)?;
            for c in 0..n_components {
                let lambda = values[c].max(0.0);
                explained_variance.push(lambda / denom);
                let u: Vec<f64> = (0..n).map(|i| vectors[i * n + c]).collect();
                let comp = &mut components[c * d..(c + 1) * d];
                for (i, &ui) in u.iter().enumerate() {
                    for (cj, &v) in comp.iter_mut().zip(&xc[i * d..(i + 1) * d]) {
                        *cj += ui * v;
                    }
                }
                let norm = comp.iter().map(|v| v * v).sum::<f64>().sqrt();
                if norm > 0.0 {
                    comp.iter_mut().for_each(|v| *v /= norm);
                }
            }
        }
        for comp in components.chunks_exact_mut(d) {
            let (mut best, mut best_abs) = (0, -1.0);
            for (j, v) in comp.iter().enumerate() {
                if v.abs() > best_abs {
                    best = j;
                    best_abs = v.abs();
                }
            }
            if comp[best] < 0.0 {
                comp.iter_mut().for_each(|v| *v = -*v);
            }
        }
        let explained_variance_ratio = explained_variance
            .iter()
            .map(|v| v / total_variance)
            .collect();
        Ok(Pca {
            mean,
            components,
            explained_variance,
            explained_variance_ratio,
            total_variance,
            n_samples: n,
            n_features: d,
        })
    }

    /// Number of fitted components k.
    pub fn n_components(&self) -> usize {
        self.explained_variance.len()
    }

    /// Component `i` (length d). Panics if `i ≥ k`.
    pub fn component(&self, i: usize) -> &[f64] {
        &self.components[i * self.n_features..(i + 1) * self.n_features]
    }

    /// Scores `(x − mean) · componentsᵀ` of every row, row-major `(n, k)`.
    pub fn transform_matrix(&self, x: &Matrix) -> Result<Matrix> {
        let d = self.n_features;
        if x.cols() != d {
            bail!(
                "PCA transform: x has {} features but the PCA was fitted on {d}",
                x.cols()
            );
        }
        let k = self.n_components();
        let mut out = Vec::with_capacity(x.rows() * k);
        for i in 0..x.rows() {
            let row = x.row(i);
            for comp in self.components.chunks_exact(d) {
                out.push(
                    row.iter()
                        .zip(&self.mean)
                        .zip(comp)
                        .map(|((v, m), c)| (v - m) * c)
                        .sum(),
                );
            }
        }
        Matrix::new("PCA scores", out, x.rows(), k)
    }

    /// Scores of an `(n, d)` tensor as an `(n, k)` f64 tensor.
    pub fn transform(&self, x: &Tensor) -> Result<Tensor> {
        self.transform_matrix(&Matrix::from_tensor("PCA transform: x", x)?)?
            .to_tensor()
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel and MMD
// ---------------------------------------------------------------------------------------------

/// How the RBF bandwidth σ of `k(a, b) = exp(−‖a − b‖²/(2σ²))` is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Bandwidth {
    /// alibi-detect's median heuristic on the pooled sample: σ² = median_{i<j} ‖z_i − z_j‖² / 2.
    #[default]
    Median,
    /// A fixed σ > 0.
    Fixed(f64),
}

/// MMD² estimates of two samples under one RBF kernel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mmd {
    /// The unbiased U-statistic MMD²_u (can be negative).
    pub unbiased: f64,
    /// The biased V-statistic MMD²_b (≥ 0).
    pub biased: f64,
    /// The bandwidth σ used.
    pub sigma: f64,
    /// Rows of x.
    pub n_x: usize,
    /// Rows of y.
    pub n_y: usize,
}

/// The pooled RBF kernel (rows of x first, then y), as its block and row sums.
struct PooledKernel {
    sums: KernelSums,
    n: usize,
    n_x: usize,
    sigma: f64,
}

/// The squared distances between the rows of x and y, pooled (x's first), as the upper triangle
/// of [`replens_kernels::sq_distances`] (f64 Gram products of the centred rows: a large common
/// offset would otherwise cancel catastrophically), and when `median` their lower median (NaN
/// otherwise).
fn pooled_sq_distances(x: &Matrix, y: &Matrix, median: bool) -> (UpperTriangle<f64>, f64) {
    let parts = [x.data(), y.data()];
    if median {
        replens_kernels::sq_distances_with_median(&parts, x.cols(), gemm_threads())
    } else {
        let dist = replens_kernels::sq_distances(&parts, x.cols(), gemm_threads());
        (dist, f64::NAN)
    }
}

fn sigma_from(bandwidth: Bandwidth, median: impl FnOnce() -> f64, what: &str) -> Result<f64> {
    match bandwidth {
        Bandwidth::Fixed(s) => {
            if !(s > 0.0 && s.is_finite()) {
                bail!("{what}: the bandwidth must be a positive number, got {s}");
            }
            Ok(s)
        }
        Bandwidth::Median => {
            let med = median();
            if med.is_nan() || med <= 0.0 {
                bail!(
                    "{what}: the median pairwise distance is 0 (more than half of the pooled rows coincide); pass Bandwidth::Fixed"
                );
            }
            Ok((0.5 * med).sqrt())
        }
    }
}

/// The pooled RBF kernel's sums and, when `keep_matrix`, its upper triangle less the offset
/// ([`replens_kernels::KernelSums::offset`]) in f32.
fn pooled_kernel(
    x: &Matrix,
    y: &Matrix,
    bandwidth: Bandwidth,
    what: &str,
    keep_matrix: bool,
) -> Result<(PooledKernel, Option<UpperTriangle<f32>>)> {
    let n = x.rows() + y.rows();
    let (dist, median) = pooled_sq_distances(x, y, matches!(bandwidth, Bandwidth::Median));
    let sigma = sigma_from(bandwidth, || median, what)?;
    let scale = -1.0 / (2.0 * sigma * sigma);
    let (sums, k) = replens_kernels::rbf_upper(dist, scale, x.rows(), keep_matrix);
    let kernel = PooledKernel {
        sums,
        n,
        n_x: x.rows(),
        sigma,
    };
    Ok((kernel, k))
}

impl PooledKernel {
    fn mmd(&self) -> Mmd {
        let s = &self.sums;
        mmd_from_sums(s.xx, s.yy, s.xy, self.n_x, self.n - self.n_x, self.sigma)
    }
}

/// MMD² from block sums that include the diagonals (k(a, a) = 1 for the RBF kernel).
fn mmd_from_sums(sxx: f64, syy: f64, sxy: f64, m: usize, n: usize, sigma: f64) -> Mmd {
    let (mf, nf) = (m as f64, n as f64);
    let cross = 2.0 * sxy / (mf * nf);
    let unbiased = if m >= 2 && n >= 2 {
        (sxx - mf) / (mf * (mf - 1.0)) + (syy - nf) / (nf * (nf - 1.0)) - cross
    } else {
        f64::NAN
    };
    Mmd {
        unbiased,
        biased: sxx / (mf * mf) + syy / (nf * nf) - cross,
        sigma,
        n_x: m,
        n_y: n,
    }
}

/// MMD²_u and MMD²_b of x `(m, d)` and y `(n, d)` under an RBF kernel (see the
/// [module docs](self) for the formulas and the bandwidth convention). m, n ≥ 2.
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// use replens::metrics::shift::{mmd2, Bandwidth};
/// let x = Tensor::new(&[[0.0f64], [1.0]], &Device::Cpu)?;
/// let y = Tensor::new(&[[0.0f64], [3.0]], &Device::Cpu)?;
/// let m = mmd2(&x, &y, Bandwidth::Fixed(1.0))?;
/// let k = |d: f64| (-d * d / 2.0).exp();
/// let expected = k(1.0) + k(3.0) - 0.5 * (k(0.0) + k(3.0) + k(1.0) + k(2.0));
/// assert!((m.unbiased - expected).abs() < 1e-12);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn mmd2(x: &Tensor, y: &Tensor, bandwidth: Bandwidth) -> Result<Mmd> {
    let (mx, my) = read_pair("mmd2", x, y)?;
    mmd2_matrix(&mx, &my, bandwidth)
}

/// [`mmd2`] on checked matrices.
pub fn mmd2_matrix(x: &Matrix, y: &Matrix, bandwidth: Bandwidth) -> Result<Mmd> {
    check_pair("mmd2", x, y)?;
    check_min_rows("mmd2", x, y, 2)?;
    Ok(pooled_kernel(x, y, bandwidth, "mmd2", false)?.0.mmd())
}

fn check_min_rows(what: &str, x: &Matrix, y: &Matrix, min: usize) -> Result<()> {
    for (name, m) in [("x", x), ("y", y)] {
        if m.rows() < min {
            bail!(
                "{what}: {name} has {} rows; at least {min} are needed",
                m.rows()
            );
        }
    }
    Ok(())
}

/// The median-heuristic bandwidth σ of the pooled rows of x and y (alibi-detect's convention:
/// σ = sqrt(median_{i<j} ‖z_i − z_j‖² / 2)).
pub fn median_bandwidth(x: &Tensor, y: &Tensor) -> Result<f64> {
    let (mx, my) = read_pair("median_bandwidth", x, y)?;
    if mx.rows() + my.rows() < 2 {
        bail!("median_bandwidth: needs at least 2 pooled rows");
    }
    let (_, median) = pooled_sq_distances(&mx, &my, true);
    sigma_from(Bandwidth::Median, || median, "median_bandwidth")
}

/// Which MMD estimate the permutation test uses as its statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MmdStatistic {
    /// MMD²_u (default).
    #[default]
    Unbiased,
    /// MMD²_b.
    Biased,
}

/// Settings of [`mmd_permutation_test`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MmdOptions {
    /// Kernel bandwidth (default: median heuristic).
    pub bandwidth: Bandwidth,
    /// Number of random permutations B (default 500).
    pub n_permutations: usize,
    /// Seed of the permutations.
    pub seed: u64,
    /// Statistic (default MMD²_u).
    pub statistic: MmdStatistic,
}

impl Default for MmdOptions {
    fn default() -> Self {
        MmdOptions {
            bandwidth: Bandwidth::Median,
            n_permutations: 500,
            seed: 0,
            statistic: MmdStatistic::Unbiased,
        }
    }
}

/// Result of an MMD permutation test.
#[derive(Debug, Clone, PartialEq)]
pub struct MmdTest {
    /// MMD estimates on the observed split.
    pub mmd: Mmd,
    /// The tested statistic (MMD²_u or MMD²_b, per [`MmdOptions::statistic`]).
    pub statistic: f64,
    /// `(1 + #{perm ≥ observed}) / (1 + B)`.
    pub p_value: f64,
    /// The statistic under each permutation (the null distribution), in order.
    pub null: Vec<f64>,
    /// The options used.
    pub options: MmdOptions,
}

/// Permutation test of H0: x and y come from the same distribution, with MMD² as the
/// statistic (see the [module docs](self)).
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// use replens::metrics::shift::{mmd_permutation_test, MmdOptions};
/// let dev = Device::Cpu;
/// let x = Tensor::randn(0f64, 1., (50, 3), &dev)?;
/// let y = (Tensor::randn(0f64, 1., (50, 3), &dev)? + 1.5)?;
/// let opts = MmdOptions { n_permutations: 199, seed: 1, ..Default::default() };
/// let t = mmd_permutation_test(&x, &y, &opts)?;
/// assert!(t.p_value <= 0.01, "p = {}", t.p_value);
/// assert_eq!(t.null.len(), 199);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn mmd_permutation_test(x: &Tensor, y: &Tensor, opts: &MmdOptions) -> Result<MmdTest> {
    let (mx, my) = read_pair("mmd_permutation_test", x, y)?;
    mmd_permutation_test_matrix(&mx, &my, opts)
}

/// [`mmd_permutation_test`] on checked matrices.
pub fn mmd_permutation_test_matrix(x: &Matrix, y: &Matrix, opts: &MmdOptions) -> Result<MmdTest> {
    let what = "mmd_permutation_test";
    check_pair(what, x, y)?;
    check_min_rows(what, x, y, 2)?;
    if opts.n_permutations == 0 {
        bail!("{what}: n_permutations must be ≥ 1");
    }
    let (kernel, k) = pooled_kernel(x, y, opts.bandwidth, what, true)?;
    let k = k.expect("pooled_kernel keeps the matrix when asked to");
    let mmd = kernel.mmd();
    let (n, m) = (kernel.n, kernel.n_x);
    let pick = |s: Mmd| match opts.statistic {
        MmdStatistic::Unbiased => s.unbiased,
        MmdStatistic::Biased => s.biased,
    };
    let row_sums = &kernel.sums.rows;
    let total: f64 = row_sums.iter().sum();
    // One seed per permutation, drawn in order from the test's seed: each permutation's draw
    // then depends on the seed and its index only, so a batch is drawn on rayon's threads.
    let mut seeds = StdRng::seed_from_u64(opts.seed);
    let perm_seeds: Vec<u64> = (0..opts.n_permutations).map(|_| seeds.gen()).collect();
    // Column 0 of the first batch is the observed split, so that the observed statistic and
    // its permuted copies go through exactly the same arithmetic.
    let mut stats = Vec::with_capacity(opts.n_permutations + 1);
    let mut done = 0;
    while done < opts.n_permutations + 1 {
        let b = (opts.n_permutations + 1 - done).min(PERM_BATCH);
        // The rows each column puts in x: a uniformly random m-subset (m swaps of a
        // Fisher–Yates shuffle), or the observed first m rows.
        let x_rows: Vec<Vec<usize>> = (done..done + b)
            .into_par_iter()
            .map(|column| match column.checked_sub(1) {
                None => (0..m).collect(),
                Some(p) => {
                    let mut rng = StdRng::seed_from_u64(perm_seeds[p]);
                    let mut order: Vec<usize> = (0..n).collect();
                    order.partial_shuffle(&mut rng, m).0.to_vec()
                }
            })
            .collect();
        let mut member = vec![0.0f32; n * b];
        for (c, rows) in x_rows.iter().enumerate() {
            for &i in rows {
                member[i * b + c] = 1.0;
            }
        }
        let sxx = replens_kernels::symmetric_quadratic_forms(&k, &member, b, kernel.sums.offset);
        // aᵀ(K1): the row sums of the rows in x.
        let mut x_rows = vec![0.0f64; b];
        for (row, &r) in member.chunks_exact(b).zip(row_sums) {
            for (s, &a) in x_rows.iter_mut().zip(row) {
                *s += f64::from(a) * r;
            }
        }
        for (&sxx, &x_rows) in sxx.iter().zip(&x_rows) {
            let sxy = x_rows - sxx;
            let syy = total - sxx - 2.0 * sxy;
            stats.push(pick(mmd_from_sums(sxx, syy, sxy, m, n - m, kernel.sigma)));
        }
        done += b;
    }
    let observed = stats[0];
    let null = stats.split_off(1);
    let exceed = null.iter().filter(|&&s| s >= observed).count();
    Ok(MmdTest {
        statistic: pick(mmd),
        mmd,
        p_value: (1 + exceed) as f64 / (1 + null.len()) as f64,
        null,
        options: *opts,
    })
}

/// Result of the linear-time MMD test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearMmd {
    /// MMD²_l = mean of h over the pairs.
    pub statistic: f64,
    /// Sample variance of h (n − 1 denominator).
    pub variance: f64,
    /// z = MMD²_l / sqrt(variance / pairs).
    pub z: f64,
    /// One-sided asymptotic p-value 1 − Φ(z).
    pub p_value: f64,
    /// Number of disjoint pairs m₂.
    pub pairs: usize,
    /// Bandwidth σ.
    pub sigma: f64,
}

/// Linear-time MMD test (Gretton et al. 2012, §6) with its asymptotic normal p-value. Needs at
/// least 4 rows per group (2 pairs), O((m + n) d) time after the bandwidth.
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// use replens::metrics::shift::{linear_mmd_test, Bandwidth};
/// let dev = Device::Cpu;
/// let x = Tensor::randn(0f64, 1., (400, 2), &dev)?;
/// let y = (Tensor::randn(0f64, 1., (400, 2), &dev)? + 1.0)?;
/// let t = linear_mmd_test(&x, &y, Bandwidth::Median, 0)?;
/// assert!(t.p_value < 1e-3 && t.pairs == 200);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn linear_mmd_test(
    x: &Tensor,
    y: &Tensor,
    bandwidth: Bandwidth,
    seed: u64,
) -> Result<LinearMmd> {
    let (mx, my) = read_pair("linear_mmd_test", x, y)?;
    linear_mmd_test_matrix(&mx, &my, bandwidth, seed)
}

/// [`linear_mmd_test`] on checked matrices.
pub fn linear_mmd_test_matrix(
    x: &Matrix,
    y: &Matrix,
    bandwidth: Bandwidth,
    seed: u64,
) -> Result<LinearMmd> {
    let what = "linear_mmd_test";
    check_pair(what, x, y)?;
    check_min_rows(what, x, y, 4)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ix: Vec<usize> = (0..x.rows()).collect();
    let mut iy: Vec<usize> = (0..y.rows()).collect();
    ix.shuffle(&mut rng);
    iy.shuffle(&mut rng);
    let sigma = sigma_from(
        bandwidth,
        || {
            // A random subsample of the pooled rows keeps the bandwidth O(1) in n.
            let half = LINEAR_MMD_MEDIAN_ROWS / 2;
            let sx: Vec<usize> = ix.iter().copied().take(half).collect();
            let sy: Vec<usize> = iy.iter().copied().take(half).collect();
            pooled_sq_distances(&x.select_rows(&sx), &y.select_rows(&sy), true).1
        },
        what,
    )?;
    let pairs = x.rows().min(y.rows()) / 2;
    let gamma = 1.0 / (2.0 * sigma * sigma);
    let k = |a: &[f64], b: &[f64]| {
        let d2: f64 = a.iter().zip(b).map(|(u, v)| (u - v) * (u - v)).sum();
        (-gamma * d2).exp()
    };
    let h: Vec<f64> = (0..pairs)
        .map(|i| {
            let (x1, x2) = (x.row(ix[2 * i]), x.row(ix[2 * i + 1]));
            let (y1, y2) = (y.row(iy[2 * i]), y.row(iy[2 * i + 1]));
            k(x1, x2) + k(y1, y2) - k(x1, y2) - k(x2, y1)
        })
        .collect();
    let mean = h.iter().sum::<f64>() / pairs as f64;
    let variance = h.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (pairs - 1) as f64;
    let (z, p_value) = if variance > 0.0 {
        let z = mean / (variance / pairs as f64).sqrt();
        (z, normal_sf(z))
    } else {
        // Every h_i equal (e.g. all rows identical): no evidence either way.
        (0.0, 1.0)
    };
    Ok(LinearMmd {
        statistic: mean,
        variance,
        z,
        p_value,
        pairs,
        sigma,
    })
}

// ---------------------------------------------------------------------------------------------
// Distributions
// ---------------------------------------------------------------------------------------------

/// The complementary error function erfc(x), ~1e-15 relative accuracy: the positive-term
/// series erf(x) = (2/√π) e^{−x²} Σ_n 2ⁿ x^{2n+1} / (2n+1)!! below x = 1.5 (above it 1 − erf
/// loses digits), Laplace's continued fraction (120 terms) from there on (Abramowitz & Stegun
/// 7.1.6 and 7.1.14).
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 1.5 {
        let x2 = x * x;
        let (mut term, mut sum) = (x, x);
        let mut n = 0.0;
        while term > 1e-17 * sum {
            n += 1.0;
            term *= 2.0 * x2 / (2.0 * n + 1.0);
            sum += term;
        }
        1.0 - 2.0 / std::f64::consts::PI.sqrt() * (-x2).exp() * sum
    } else {
        let mut f = x;
        for k in (1..=120).rev() {
            f = x + (k as f64 / 2.0) / f;
        }
        (-x * x).exp() / std::f64::consts::PI.sqrt() / f
    }
}

/// Upper tail of the standard normal distribution, 1 − Φ(z).
pub fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// P(Binomial(n, ½) ≥ k), exact (summed in log space).
pub fn binomial_half_sf(n: u64, k: u64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    let ln2 = std::f64::consts::LN_2;
    // ln C(n, k), then C(n, j+1) = C(n, j) (n − j)/(j + 1).
    let mut lc: f64 = (1..=k).map(|i| ((n - k + i) as f64 / i as f64).ln()).sum();
    let mut logs = Vec::with_capacity((n - k + 1) as usize);
    for j in k..=n {
        logs.push(lc - n as f64 * ln2);
        lc += ((n - j) as f64).ln() - ((j + 1) as f64).ln();
    }
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (max.exp() * logs.iter().map(|l| (l - max).exp()).sum::<f64>()).min(1.0)
}

/// Central interval `[lo, hi]` of Binomial(n, p) with at most (1 − level)/2 of the mass in
/// each tail outside it: the band a rejection count of n independent level-p tests should fall
/// in (e.g. `binomial_band(200, 0.05, 0.999)`).
///
/// ```
/// let (lo, hi) = replens::metrics::shift::binomial_band(200, 0.05, 0.999);
/// assert!(lo <= 10 && 10 <= hi && lo >= 1 && hi <= 25);
/// ```
pub fn binomial_band(n: usize, p: f64, level: f64) -> (usize, usize) {
    if n == 0 || !(p > 0.0 && p < 1.0) {
        let k = if p >= 1.0 { n } else { 0 };
        return (k, k);
    }
    let pmf = |k: usize| -> f64 {
        let lc: f64 = (1..=k).map(|i| ((n - k + i) as f64 / i as f64).ln()).sum();
        (lc + k as f64 * p.ln() + (n - k) as f64 * (1.0 - p).ln()).exp()
    };
    let tail = (1.0 - level.clamp(0.0, 1.0)) / 2.0;
    let (mut lo, mut acc) = (0, 0.0);
    while lo < n && acc + pmf(lo) <= tail {
        acc += pmf(lo);
        lo += 1;
    }
    let (mut hi, mut acc) = (n, 0.0);
    while hi > lo && acc + pmf(hi) <= tail {
        acc += pmf(hi);
        hi -= 1;
    }
    (lo, hi)
}

/// Survival function of the Kolmogorov distribution (the limit of √n·D_n),
/// `Q(λ) = 2 Σ_{k≥1} (−1)^{k−1} e^{−2k²λ²}` (scipy's `kstwobign.sf`).
pub fn kolmogorov_sf(lambda: f64) -> f64 {
    if lambda <= 0.0 {
        return 1.0;
    }
    if lambda < 1.0 {
        // The alternating series converges slowly here; use the theta-function form of the CDF.
        let c = -std::f64::consts::PI.powi(2) / (8.0 * lambda * lambda);
        let s: f64 = (1..=50)
            .map(|k| ((2 * k - 1) as f64).powi(2))
            .map(|q| (c * q).exp())
            .sum();
        return 1.0 - (2.0 * std::f64::consts::PI).sqrt() / lambda * s;
    }
    let mut s = 0.0;
    for k in 1..=100 {
        let t = (-2.0 * (k * k) as f64 * lambda * lambda).exp();
        s += if k % 2 == 1 { t } else { -t };
        if t < 1e-300 {
            break;
        }
    }
    (2.0 * s).clamp(0.0, 1.0)
}

// ---------------------------------------------------------------------------------------------
// Kolmogorov–Smirnov
// ---------------------------------------------------------------------------------------------

/// How a KS p-value was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KsMethod {
    /// Exact lattice-path distribution.
    Exact,
    /// Asymptotic Kolmogorov distribution.
    Asymptotic,
}

/// A two-sample Kolmogorov–Smirnov test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ks {
    /// D = sup |F_a − F_b|.
    pub statistic: f64,
    /// Two-sided p-value P(D' ≥ D) under H0.
    pub p_value: f64,
    /// How the p-value was computed.
    pub method: KsMethod,
}

/// Two-sample two-sided KS test of `a` against `b` (scipy's `ks_2samp(a, b)` with
/// `method="auto"`: exact when `max(len) ≤ 10 000`, otherwise asymptotic; see the
/// [module docs](self)). Values must be finite; both samples non-empty.
///
/// ```
/// use replens::metrics::shift::ks_2samp;
/// let a = [0.1, 0.4, 0.5, 0.9];
/// let b = [1.1, 1.4, 1.6, 2.0];
/// let t = ks_2samp(&a, &b)?;
/// assert_eq!(t.statistic, 1.0);
/// assert!((t.p_value - 2.0 / 70.0).abs() < 1e-12); // 2 of the C(8,4) = 70 orderings
/// # Ok::<(), replens::Error>(())
/// ```
pub fn ks_2samp(a: &[f64], b: &[f64]) -> Result<Ks> {
    for (name, v) in [("a", a), ("b", b)] {
        if v.is_empty() {
            bail!("ks_2samp: sample {name} is empty");
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!("ks_2samp: {name}[{i}] is not finite ({})", v[i]);
        }
    }
    let (m, n) = (a.len(), b.len());
    let mut sa = a.to_vec();
    let mut sb = b.to_vec();
    sa.sort_by(|p, q| p.total_cmp(q));
    sb.sort_by(|p, q| p.total_cmp(q));
    // D·m·n = max |i·n − j·m| over the ends of tie groups of the merged order, in integers.
    let (mut i, mut j) = (0usize, 0usize);
    let mut dmax: u128 = 0;
    while i < m || j < n {
        let t = match (sa.get(i), sb.get(j)) {
            (Some(&u), Some(&v)) => u.min(v),
            (Some(&u), None) => u,
            (None, Some(&v)) => v,
            (None, None) => break,
        };
        while i < m && sa[i] <= t {
            i += 1;
        }
        while j < n && sb[j] <= t {
            j += 1;
        }
        let diff = (i as i128 * n as i128 - j as i128 * m as i128).unsigned_abs();
        dmax = dmax.max(diff);
    }
    let statistic = dmax as f64 / (m as f64 * n as f64);
    if m.max(n) <= KS_EXACT_MAX_N {
        Ok(Ks {
            statistic,
            p_value: ks_exact_sf(m, n, dmax),
            method: KsMethod::Exact,
        })
    } else {
        let en = (m as f64 * n as f64) / (m + n) as f64;
        Ok(Ks {
            statistic,
            p_value: kolmogorov_sf(en.sqrt() * statistic),
            method: KsMethod::Asymptotic,
        })
    }
}

/// P(max_path |i·n − j·m| ≥ h) for a uniformly random monotone lattice path from (0, 0) to
/// (m, n): the probability mass that first leaves the band, accumulated directly (no
/// 1 − P(inside) cancellation for small p-values). O(m·n).
fn ks_exact_sf(m: usize, n: usize, h: u128) -> f64 {
    if h == 0 {
        return 1.0;
    }
    let outside =
        |i: usize, j: usize| (i as i128 * n as i128 - j as i128 * m as i128).unsigned_abs() >= h;
    let mut cur = vec![0.0f64; n + 2];
    let mut next = vec![0.0f64; n + 2];
    cur[0] = 1.0;
    let mut p_out = 0.0;
    let total = (m + n) as f64;
    for i in 0..=m {
        next.iter_mut().for_each(|v| *v = 0.0);
        for j in 0..=n {
            let mass = cur[j];
            if mass == 0.0 {
                continue;
            }
            if outside(i, j) {
                p_out += mass;
                continue;
            }
            let left = total - (i + j) as f64;
            if left == 0.0 {
                continue;
            }
            if i < m {
                next[j] += mass * (m - i) as f64 / left;
            }
            if j < n {
                cur[j + 1] += mass * (n - j) as f64 / left;
            }
        }
        std::mem::swap(&mut cur, &mut next);
    }
    p_out.clamp(0.0, 1.0)
}

/// Holm's step-down adjusted p-values (Holm 1979), in the input order:
/// `p̃_(i) = max_{j ≤ i} min(1, (k − j + 1) p_(j))` for the ascending order p_(1) ≤ … ≤ p_(k).
/// Reject H_i at family-wise level α when p̃_i ≤ α (as statsmodels' `multipletests(method="holm")`).
pub fn holm(p: &[f64]) -> Vec<f64> {
    let k = p.len();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut out = vec![0.0; k];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((k - rank) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

/// Benjamini–Hochberg adjusted p-values (q-values; Benjamini & Hochberg 1995), in the input
/// order: `q_(i) = min_{j ≥ i} min(1, k p_(j) / j)`. Reject H_i at false discovery rate α when
/// q_i ≤ α (as statsmodels' `multipletests(method="fdr_bh")`).
pub fn benjamini_hochberg(p: &[f64]) -> Vec<f64> {
    let k = p.len();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut out = vec![0.0; k];
    let mut running: f64 = 1.0;
    for (rank, &i) in order.iter().enumerate().rev() {
        running = running.min((k as f64 * p[i] / (rank + 1) as f64).min(1.0));
        out[i] = running;
    }
    out
}

/// KS tests on each principal component, with corrections.
#[derive(Debug, Clone, PartialEq)]
pub struct KsPerComponent {
    /// One test per component, PC 1 first.
    pub tests: Vec<Ks>,
    /// Holm-adjusted p-values.
    pub p_holm: Vec<f64>,
    /// Benjamini–Hochberg-adjusted p-values.
    pub p_bh: Vec<f64>,
    /// Explained-variance ratio of each component (of the PCA on the union).
    pub explained_variance_ratio: Vec<f64>,
}

impl KsPerComponent {
    /// One row per component: `pc` (1-based), `explained_variance_ratio`, `statistic`,
    /// `p_value`, `p_holm`, `p_bh`.
    pub fn to_frame(&self) -> Result<DataFrame> {
        Ok(DataFrame::new_infer_height(vec![
            Column::new(
                "pc".into(),
                (1..=self.tests.len() as u32).collect::<Vec<_>>(),
            ),
            Column::new(
                "explained_variance_ratio".into(),
                self.explained_variance_ratio.clone(),
            ),
            Column::new(
                "statistic".into(),
                self.tests.iter().map(|t| t.statistic).collect::<Vec<_>>(),
            ),
            Column::new(
                "p_value".into(),
                self.tests.iter().map(|t| t.p_value).collect::<Vec<_>>(),
            ),
            Column::new("p_holm".into(), self.p_holm.clone()),
            Column::new("p_bh".into(), self.p_bh.clone()),
        ])?)
    }
}

/// KS test of x against y on each of the first `n_components` principal components of their
/// union.
pub fn ks_per_component(x: &Tensor, y: &Tensor, n_components: usize) -> Result<KsPerComponent> {
    let (mx, my) = read_pair("ks_per_component", x, y)?;
    let pca = Pca::fit_matrix(
        &Matrix::vstack("ks_per_component", &[&mx, &my])?,
        n_components,
    )?;
    ks_per_component_matrix(&mx, &my, &pca)
}

/// [`ks_per_component`] with a given (already fitted) PCA.
pub fn ks_per_component_matrix(x: &Matrix, y: &Matrix, pca: &Pca) -> Result<KsPerComponent> {
    let sx = pca.transform_matrix(x)?;
    let sy = pca.transform_matrix(y)?;
    let k = pca.n_components();
    let column = |m: &Matrix, c: usize| (0..m.rows()).map(|i| m.row(i)[c]).collect::<Vec<_>>();
    let tests = (0..k)
        .map(|c| ks_2samp(&column(&sx, c), &column(&sy, c)))
        .collect::<Result<Vec<_>>>()?;
    let p: Vec<f64> = tests.iter().map(|t| t.p_value).collect();
    Ok(KsPerComponent {
        p_holm: holm(&p),
        p_bh: benjamini_hochberg(&p),
        tests,
        explained_variance_ratio: pca.explained_variance_ratio.clone(),
    })
}

// ---------------------------------------------------------------------------------------------
// C2ST
// ---------------------------------------------------------------------------------------------

/// Settings of [`c2st`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct C2stOptions {
    /// Fraction of the smaller group put in the (balanced) test set, in (0, 1) (default 0.5).
    pub test_fraction: f64,
    /// Inverse L2 penalty of the logistic regression (default 1.0).
    pub c: f64,
    /// Seed of the train/test split.
    pub seed: u64,
}

impl Default for C2stOptions {
    fn default() -> Self {
        C2stOptions {
            test_fraction: 0.5,
            c: 1.0,
            seed: 0,
        }
    }
}

/// Result of a classifier two-sample test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct C2st {
    /// Held-out accuracy n_correct / n_test.
    pub accuracy: f64,
    /// P(Binomial(n_test, ½) ≥ n_correct).
    pub p_value: f64,
    /// Test rows (half from each group).
    pub n_test: usize,
    /// Correct test predictions.
    pub n_correct: usize,
    /// Training rows.
    pub n_train: usize,
    /// Whether the logistic regression met its convergence criterion.
    pub converged: bool,
}

/// Classifier two-sample test (Lopez-Paz & Oquab 2017) with a logistic-regression classifier
/// and the exact binomial p-value (see the [module docs](self)). Each group needs ≥ 2 rows.
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// use replens::metrics::shift::{c2st, C2stOptions};
/// let dev = Device::Cpu;
/// let x = Tensor::randn(0f64, 1., (100, 4), &dev)?;
/// let y = (Tensor::randn(0f64, 1., (100, 4), &dev)? + 2.0)?; // Bayes accuracy Φ(2) ≈ 0.98
/// let t = c2st(&x, &y, &C2stOptions::default())?;
/// assert_eq!(t.n_test, 100);
/// assert!(t.accuracy > 0.85 && t.p_value < 1e-10);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn c2st(x: &Tensor, y: &Tensor, opts: &C2stOptions) -> Result<C2st> {
    let (mx, my) = read_pair("c2st", x, y)?;
    c2st_matrix(&mx, &my, opts)
}

/// [`c2st`] on checked matrices.
pub fn c2st_matrix(x: &Matrix, y: &Matrix, opts: &C2stOptions) -> Result<C2st> {
    let what = "c2st";
    check_pair(what, x, y)?;
    check_min_rows(what, x, y, 2)?;
    if !(opts.test_fraction > 0.0 && opts.test_fraction < 1.0) {
        bail!(
            "{what}: test_fraction must be in (0, 1), got {}",
            opts.test_fraction
        );
    }
    let small = x.rows().min(y.rows());
    let per_group = ((opts.test_fraction * small as f64).floor() as usize).clamp(1, small - 1);
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut ix: Vec<usize> = (0..x.rows()).collect();
    let mut iy: Vec<usize> = (0..y.rows()).collect();
    ix.shuffle(&mut rng);
    iy.shuffle(&mut rng);
    let train = Matrix::vstack(
        what,
        &[
            &x.select_rows(&ix[per_group..]),
            &y.select_rows(&iy[per_group..]),
        ],
    )?;
    let test = Matrix::vstack(
        what,
        &[
            &x.select_rows(&ix[..per_group]),
            &y.select_rows(&iy[..per_group]),
        ],
    )?;
    let labels = |nx: usize, ny: usize| {
        let mut l = vec![0u32; nx];
        l.extend(std::iter::repeat_n(1u32, ny));
        l
    };
    let y_train = labels(x.rows() - per_group, y.rows() - per_group);
    let y_test = labels(per_group, per_group);
    let model = LogisticRegression::new()
        .c(opts.c)
        .standardize(true)
        .fit_matrix(&train, &y_train)?;
    let correct = model.correct_matrix(&test, &y_test)?;
    let n_correct = correct.iter().filter(|&&c| c == 1.0).count();
    let n_test = test.rows();
    Ok(C2st {
        accuracy: n_correct as f64 / n_test as f64,
        p_value: binomial_half_sf(n_test as u64, n_correct as u64),
        n_test,
        n_correct,
        n_train: train.rows(),
        converged: model.converged,
    })
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

/// Settings of [`shift_report`]. Build with the chained setters from `default()`.
///
/// ```
/// use replens::metrics::shift::ShiftOptions;
/// let o = ShiftOptions::default().alpha(0.01).n_permutations(999).seed(7).n_components(5);
/// assert_eq!(o.mmd.n_permutations, 999);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShiftOptions {
    /// Level α of every test (default 0.05).
    pub alpha: f64,
    /// MMD permutation-test settings (bandwidth, B, statistic; its seed is set by [`seed`](Self::seed)).
    pub mmd: MmdOptions,
    /// Run the linear-time MMD too (default `true`).
    pub linear_mmd: bool,
    /// C2ST settings (its seed is set by [`seed`](Self::seed)).
    pub c2st: C2stOptions,
    /// Principal components tested by KS (default 10; capped at min(rows, features)).
    pub n_components: usize,
    /// Master seed: the MMD permutations use `seed`, the linear MMD `seed + 1`, the C2ST split
    /// `seed + 2`.
    pub seed: u64,
}

impl Default for ShiftOptions {
    fn default() -> Self {
        ShiftOptions {
            alpha: 0.05,
            mmd: MmdOptions::default(),
            linear_mmd: true,
            c2st: C2stOptions::default(),
            n_components: 10,
            seed: 0,
        }
    }
}

impl ShiftOptions {
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }
    pub fn n_permutations(mut self, n: usize) -> Self {
        self.mmd.n_permutations = n;
        self
    }
    pub fn bandwidth(mut self, b: Bandwidth) -> Self {
        self.mmd.bandwidth = b;
        self
    }
    pub fn n_components(mut self, k: usize) -> Self {
        self.n_components = k;
        self
    }
    pub fn linear_mmd(mut self, yes: bool) -> Self {
        self.linear_mmd = yes;
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// One row of a [`ShiftReport`].
#[derive(Debug, Clone, PartialEq)]
pub struct ShiftTestRow {
    /// Test name.
    pub test: String,
    /// Test statistic (MMD², accuracy, KS D…).
    pub statistic: f64,
    /// p-value (for the KS rows: the smallest corrected p-value over the components).
    pub p_value: f64,
    /// `p_value ≤ alpha`.
    pub reject: bool,
    /// Bandwidth, sizes, seeds and other particulars.
    pub details: String,
}

/// The two-sample tests of one pair of embedding sets, shown as a table in notebooks.
#[derive(Debug, Clone, PartialEq)]
pub struct ShiftReport {
    /// Level of the tests.
    pub alpha: f64,
    /// Rows of x and y, and the feature dimension.
    pub n_x: usize,
    pub n_y: usize,
    pub dim: usize,
    /// One row per test.
    pub rows: Vec<ShiftTestRow>,
    /// The MMD permutation test in full (with its null distribution).
    pub mmd: MmdTest,
    /// The linear-time MMD test, if run.
    pub linear_mmd: Option<LinearMmd>,
    /// The C2ST.
    pub c2st: C2st,
    /// The per-component KS tests.
    pub ks: KsPerComponent,
    /// The PCA of the union on which the KS tests ran.
    pub pca: Pca,
}

/// Run every test on x `(m, d)` and y `(n, d)`: MMD² permutation test, linear-time MMD (if
/// enabled and both groups have ≥ 4 rows), C2ST, KS on the first principal components of the
/// union with Holm and BH corrections. Each group needs ≥ 2 rows (≥ 4 for the linear MMD).
pub fn shift_report(x: &Tensor, y: &Tensor, opts: &ShiftOptions) -> Result<ShiftReport> {
    let (mx, my) = read_pair("shift_report", x, y)?;
    shift_report_matrix(&mx, &my, opts)
}

/// [`shift_report`] on checked matrices.
pub fn shift_report_matrix(x: &Matrix, y: &Matrix, opts: &ShiftOptions) -> Result<ShiftReport> {
    let what = "shift_report";
    check_pair(what, x, y)?;
    check_min_rows(what, x, y, 2)?;
    if !(opts.alpha > 0.0 && opts.alpha < 1.0) {
        bail!("{what}: alpha must be in (0, 1), got {}", opts.alpha);
    }
    let alpha = opts.alpha;
    let mut rows = Vec::new();

    let mmd_opts = MmdOptions {
        seed: opts.seed,
        ..opts.mmd
    };
    let mmd = mmd_permutation_test_matrix(x, y, &mmd_opts)?;
    let stat_name = match mmd_opts.statistic {
        MmdStatistic::Unbiased => "MMD²_u",
        MmdStatistic::Biased => "MMD²_b",
    };
    rows.push(ShiftTestRow {
        test: format!("{stat_name} (RBF, permutation)"),
        statistic: mmd.statistic,
        p_value: mmd.p_value,
        reject: mmd.p_value <= alpha,
        details: format!(
            "σ = {:.4} ({}), {} permutations, seed {}",
            mmd.mmd.sigma,
            match mmd_opts.bandwidth {
                Bandwidth::Median => "median heuristic",
                Bandwidth::Fixed(_) => "fixed",
            },
            mmd_opts.n_permutations,
            mmd_opts.seed
        ),
    });

    let linear_mmd = if opts.linear_mmd && x.rows() >= 4 && y.rows() >= 4 {
        let t = linear_mmd_test_matrix(x, y, opts.mmd.bandwidth, opts.seed.wrapping_add(1))?;
        rows.push(ShiftTestRow {
            test: "MMD²_l (linear time)".into(),
            statistic: t.statistic,
            p_value: t.p_value,
            reject: t.p_value <= alpha,
            details: format!(
                "z = {:.3}, {} pairs, σ = {:.4}, seed {}",
                t.z,
                t.pairs,
                t.sigma,
                opts.seed.wrapping_add(1)
            ),
        });
        Some(t)
    } else {
        None
    };

    let c2_opts = C2stOptions {
        seed: opts.seed.wrapping_add(2),
        ..opts.c2st
    };
    let c2 = c2st_matrix(x, y, &c2_opts)?;
    rows.push(ShiftTestRow {
        test: "C2ST (logistic regression)".into(),
        statistic: c2.accuracy,
        p_value: c2.p_value,
        reject: c2.p_value <= alpha,
        details: format!(
            "held-out accuracy {}/{} (train {}), C = {}, seed {}",
            c2.n_correct, c2.n_test, c2.n_train, c2_opts.c, c2_opts.seed
        ),
    });

    let k = opts
        .n_components
        .clamp(1, (x.rows() + y.rows()).min(x.cols()));
    let pca = Pca::fit_matrix(&Matrix::vstack(what, &[x, y])?, k)?;
    let ks = ks_per_component_matrix(x, y, &pca)?;
    let max_d = ks.tests.iter().fold(0.0f64, |m, t| m.max(t.statistic));
    for (name, adjusted) in [("Holm", &ks.p_holm), ("Benjamini–Hochberg", &ks.p_bh)] {
        let p_min = adjusted.iter().copied().fold(1.0f64, f64::min);
        let hits: Vec<String> = adjusted
            .iter()
            .enumerate()
            .filter(|(_, &p)| p <= alpha)
            .map(|(i, _)| format!("PC{}", i + 1))
            .collect();
        rows.push(ShiftTestRow {
            test: format!("KS per PC ({name})"),
            statistic: max_d,
            p_value: p_min,
            reject: p_min <= alpha,
            details: format!(
                "{k} PCs ({:.1}% of variance); statistic = max D; rejected: {}",
                100.0 * ks.explained_variance_ratio.iter().sum::<f64>(),
                if hits.is_empty() {
                    "none".to_string()
                } else {
                    hits.join(", ")
                }
            ),
        });
    }

    Ok(ShiftReport {
        alpha,
        n_x: x.rows(),
        n_y: y.rows(),
        dim: x.cols(),
        rows,
        mmd,
        linear_mmd,
        c2st: c2,
        ks,
        pca,
    })
}

impl ShiftReport {
    /// The row of the test whose name starts with `prefix` (e.g. `"C2ST"`, `"MMD²_u"`).
    pub fn get(&self, prefix: &str) -> Option<&ShiftTestRow> {
        self.rows.iter().find(|r| r.test.starts_with(prefix))
    }

    /// Whether any test rejected H0 at α.
    pub fn any_reject(&self) -> bool {
        self.rows.iter().any(|r| r.reject)
    }

    /// One row per test: `test`, `statistic`, `p_value`, `alpha`, `reject`, `details`.
    pub fn to_frame(&self) -> Result<DataFrame> {
        Ok(DataFrame::new_infer_height(vec![
            Column::new(
                "test".into(),
                self.rows
                    .iter()
                    .map(|r| r.test.as_str())
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "statistic".into(),
                self.rows.iter().map(|r| r.statistic).collect::<Vec<_>>(),
            ),
            Column::new(
                "p_value".into(),
                self.rows.iter().map(|r| r.p_value).collect::<Vec<_>>(),
            ),
            Column::new("alpha".into(), vec![self.alpha; self.rows.len()]),
            Column::new(
                "reject".into(),
                self.rows.iter().map(|r| r.reject).collect::<Vec<_>>(),
            ),
            Column::new(
                "details".into(),
                self.rows
                    .iter()
                    .map(|r| r.details.as_str())
                    .collect::<Vec<_>>(),
            ),
        ])?)
    }

    fn cells(&self) -> Vec<Vec<String>> {
        self.rows
            .iter()
            .map(|r| {
                vec![
                    r.test.clone(),
                    format!("{:.6}", r.statistic),
                    format_p(r.p_value),
                    if r.reject { "yes" } else { "no" }.to_string(),
                    r.details.clone(),
                ]
            })
            .collect()
    }

    /// Called by the evcxr kernel when the report ends a cell: an HTML table.
    pub fn evcxr_display(&self) {
        self.html().evcxr_display();
    }
}

fn format_p(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.2e}")
    } else {
        format!("{p:.4}")
    }
}

const REPORT_HEADERS: [&str; 5] = ["test", "statistic", "p-value", "reject H0", "details"];

impl DisplayHtml for ShiftReport {
    fn html(&self) -> Html {
        Html::new(format!(
            "<div><b>Two-sample tests</b> <small>(x: {} rows, y: {} rows, d = {}, α = {})</small>{}</div>",
            self.n_x,
            self.n_y,
            self.dim,
            escape_html(&self.alpha.to_string()),
            table_html(&REPORT_HEADERS, &self.cells())
        ))
    }
}

impl std::fmt::Display for ShiftReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "two-sample tests: x {} rows, y {} rows, d = {}, α = {}",
            self.n_x, self.n_y, self.dim, self.alpha
        )?;
        for row in self.cells() {
            writeln!(
                f,
                "{:<34} {:>12} {:>10} {:>4}  {}",
                row[0], row[1], row[2], row[3], row[4]
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_null_matches_direct_f64_sums() {
        // Each permuted statistic, recomputed from the f64 kernel matrix with the same
        // shuffles, agrees with the f32 quadratic forms; 300 > 1 batch of permutations.
        let (m, n_y, d) = (230, 190, 4);
        let mut rng = StdRng::seed_from_u64(3);
        let mut rows = |k: usize, shift: f64| {
            let v: Vec<f64> = (0..k * d)
                .map(|_| rand::Rng::gen_range(&mut rng, -1.0..1.0) + shift)
                .collect();
            Matrix::new("test", v, k, d).unwrap()
        };
        let (x, y) = (rows(m, 0.0), rows(n_y, 0.1));
        let opts = MmdOptions {
            n_permutations: 300,
            seed: 9,
            ..Default::default()
        };
        let t = mmd_permutation_test_matrix(&x, &y, &opts).unwrap();
        let z = Matrix::vstack("test", &[&x, &y]).unwrap();
        let n = m + n_y;
        let k = |i: usize, j: usize| {
            let d2: f64 = (0..d).map(|c| (z.row(i)[c] - z.row(j)[c]).powi(2)).sum();
            (-d2 / (2.0 * t.mmd.sigma * t.mmd.sigma)).exp()
        };
        let kernel: Vec<f64> = (0..n * n).map(|ij| k(ij / n, ij % n)).collect();
        let mut seeds = StdRng::seed_from_u64(opts.seed);
        let mut worst: f64 = 0.0;
        let mut exact_null = Vec::new();
        for &got in &t.null {
            let mut shuffle = StdRng::seed_from_u64(rand::Rng::gen(&mut seeds));
            let mut order: Vec<usize> = (0..n).collect();
            let mut in_x = vec![false; n];
            let (chosen, _) = order.partial_shuffle(&mut shuffle, m);
            chosen.iter().for_each(|&i| in_x[i] = true);
            let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
            for i in 0..n {
                for j in 0..n {
                    match (in_x[i], in_x[j]) {
                        (true, true) => sxx += kernel[i * n + j],
                        (false, false) => syy += kernel[i * n + j],
                        (true, false) => sxy += kernel[i * n + j],
                        _ => {}
                    }
                }
            }
            let want = mmd_from_sums(sxx, syy, sxy, m, n_y, t.mmd.sigma).unbiased;
            worst = worst.max((got - want).abs());
            exact_null.push(want);
        }
        // The f32 arithmetic's error is negligible beside the null distribution's own spread
        // (the quantity a p-value resolves), and the p-value is the all-f64 one.
        let mean = exact_null.iter().sum::<f64>() / 300.0;
        let spread = (exact_null.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 299.0).sqrt();
        assert!(
            worst < 1e-5 * spread,
            "worst |Δ| {worst:e}, null sd {spread:e}"
        );
        let exceed = exact_null.iter().filter(|&&v| v >= t.statistic).count();
        assert_eq!(t.p_value, (1 + exceed) as f64 / 301.0);
        assert_eq!(t.null.len(), 300);
    }

    #[test]
    fn erfc_matches_known_values() {
        // Reference values from scipy.special.erfc.
        for (x, want) in [
            (0.0, 1.0),
            (0.5, 0.4795001221869535),
            (1.0, 0.15729920705028516),
            (2.9, 4.109787809945884e-05),
            (3.0, 2.2090496998585445e-05),
            (5.0, 1.5374597944280347e-12),
            (-1.0, 1.8427007929497148),
        ] {
            let got = erfc(x);
            assert!(
                ((got - want) / want).abs() < 1e-13,
                "erfc({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn binomial_tail_is_exact() {
        assert_eq!(binomial_half_sf(4, 0), 1.0);
        assert!((binomial_half_sf(4, 3) - 5.0 / 16.0).abs() < 1e-15);
        assert!((binomial_half_sf(10, 10) - 1.0 / 1024.0).abs() < 1e-18);
        assert_eq!(binomial_half_sf(10, 11), 0.0);
    }

    #[test]
    fn corrections_match_statsmodels() {
        // Worked by hand from the definitions (statsmodels' multipletests gives the same).
        let p = [0.01, 0.04, 0.03, 0.2];
        let h = holm(&p);
        for (a, b) in h.iter().zip([0.04, 0.09, 0.09, 0.2]) {
            assert!((a - b).abs() < 1e-12, "{h:?}");
        }
        let q = benjamini_hochberg(&p);
        for (a, b) in q
            .iter()
            .zip([0.04, 0.05333333333333334, 0.05333333333333334, 0.2])
        {
            assert!((a - b).abs() < 1e-12, "{q:?}");
        }
    }
}
