//! Similarity indices between two sets of representations of the *same* inputs: X (`n × d1`)
//! and Y (`n × d2`), one row per token or example (rows aligned), any widths, any float
//! dtype; everything downstream of the Gram products is computed in f64.
//!
//! | index | formula (Xc, Yc: column-centred) | paper | conventions of |
//! |---|---|---|---|
//! | [`linear_cka`] | ‖YcᵀXc‖²_F / (‖XcᵀXc‖_F ‖YcᵀYc‖_F) | Kornblith et al., ICML 2019 | Kornblith's `cka.py`, anatome |
//! | [`rbf_cka`] | ⟨HKH, HLH⟩ / (‖HKH‖ ‖HLH‖), Gaussian K, L | Kornblith et al. 2019 | Kornblith's `gram_rbf` |
//! | [`debiased_cka`] | HSIC₁(K,L) / √(HSIC₁(K,K) HSIC₁(L,L)), linear K, L | Song et al. 2012; Nguyen et al. 2021 | platonic-rep `unbiased_cka` |
//! | [`svcca`] | mean canonical correlation after SVD truncation | Raghu et al., NeurIPS 2017 | the paper (variance = s²) |
//! | [`pwcca`] | Σ αᵢρᵢ / Σ αᵢ, αᵢ = Σⱼ \|⟨hᵢ, xⱼ⟩\| | Morcos et al., NeurIPS 2018 | the paper / google `pwcca.py` |
//! | [`procrustes_distance`] | 2 − 2‖X̂ᵀŶ‖_*, X̂ = Xc/‖Xc‖_F | Ding et al., NeurIPS 2021 | 2 × anatome's value |
//! | [`mutual_knn`] | mean_i \|N_k^X(i) ∩ N_k^Y(i)\| / k, cosine | Huh et al., ICML 2024 | platonic-rep `mutual_knn` |
//!
//! All but Procrustes are similarities (1 = identical up to the index's invariances);
//! Procrustes is a distance in [0, 2] (0 = identical up to rotation and scale).
//! Invariances: every index here is invariant to permuting features and to a global scale of
//! X or Y; CKA, Procrustes and mutual kNN to orthogonal transforms; SVCCA/PWCCA to any
//! invertible linear map of the kept subspace.
//!
//! # Errors instead of NaN
//! Mismatched row counts, fewer than 3 rows (4 for [`debiased_cka`], k+1 for
//! [`mutual_knn`]), NaN/inf (with its position), and inputs that make an index undefined —
//! e.g. an X whose columns are all constant (zero after centring) for CKA, CCA and
//! Procrustes, or an all-zero row for mutual kNN (it has no direction) — are errors naming
//! the argument. A single constant column is fine where the index is defined without it.
//!
//! # Cost
//! Feature-space indices (linear/debiased CKA, SVCCA, PWCCA, Procrustes) are O(n·d²) time and
//! O(d²) extra memory; [`rbf_cka`] needs two n × n kernels (O(n²) memory, refused above
//! [`MAX_KERNEL_ROWS`] rows); [`mutual_knn`] is O(n²·d) time, O(n·k) memory.

use candle_core::{DType, Device, Tensor};
use polars::prelude::*;

use crate::error::{bail, Context, Error, Result};
use crate::metrics::linalg::{
    centre_columns, column_means, cross_f64, frobenius_sq, gram_f64, is_constant, matmul,
    matrix_dims, matrix_f64, symmetric_eigen, symmetrise, transpose, PairMoments, Precision,
};

/// Largest `n` accepted by [`rbf_cka`]: two n × n f64 kernels of this size take ~6 GiB.
pub const MAX_KERNEL_ROWS: usize = 20_000;

/// Relative floor below which a covariance eigenvalue counts as zero variance in the CCA
/// indices (`λ ≤ floor · λ_max` is dropped, a pseudo-inverse): constant or collinear columns
/// make the covariance singular, and whitening a numerically-null direction would only
/// amplify rounding noise into a spurious perfect correlation.
pub const CCA_REL_FLOOR: f64 = 1e-10;

fn check_pair(
    x: &Tensor,
    y: &Tensor,
    what: &str,
    min_rows: usize,
) -> Result<(usize, usize, usize)> {
    let (n, d1) = matrix_dims(x, &format!("{what}: x"))?;
    let (ny, d2) = matrix_dims(y, &format!("{what}: y"))?;
    if n != ny {
        bail!("{what}: x has {n} rows but y has {ny} (rows must be the same tokens/examples)");
    }
    if n < min_rows {
        bail!("{what}: needs at least {min_rows} rows (tokens/examples), got {n}");
    }
    Ok((n, d1, d2))
}

/// Row-major f64 copy of `x`, column-centred; errors on NaN/inf and on a matrix that is
/// constant (every column zero after centring), which leaves nothing to compare.
fn centred_f64(x: &Tensor, what: &str) -> Result<(Vec<f64>, usize, usize)> {
    let (mut data, n, d) = matrix_f64(x, what)?;
    let raw: Vec<f64> = (0..d)
        .map(|j| data.iter().skip(j).step_by(d).map(|v| v * v).sum())
        .collect();
    centre_columns(&mut data, d);
    let centred: Vec<f64> = (0..d)
        .map(|j| data.iter().skip(j).step_by(d).map(|v| v * v).sum())
        .collect();
    if is_constant(&centred, &raw) {
        bail!("{what} is constant: every column has zero variance, the index is undefined");
    }
    Ok((data, n, d))
}

fn tensor_f64(data: &[f64], n: usize, d: usize, what: &str) -> Result<Tensor> {
    Tensor::from_slice(data, (n, d), &Device::Cpu).context(|| format!("{what}: building tensor"))
}

// ---------------------------------------------------------------------------------------
// Linear CKA (batch and streaming)
// ---------------------------------------------------------------------------------------

/// Linear centred kernel alignment in feature space (Kornblith, Norouzi, Lee & Hinton,
/// *Similarity of Neural Network Representations Revisited*, ICML 2019, eq. 5):
///
/// ```text
///   Xc = X − 1μₓᵀ,  Yc = Y − 1μ_yᵀ
///   CKA(X, Y) = ‖YcᵀXc‖²_F / (‖XcᵀXc‖_F · ‖YcᵀYc‖_F)   ∈ [0, 1]
/// ```
///
/// O(n·(d1² + d2² + d1·d2)) time, O(d1² + d2² + d1·d2) memory, never an n × n matrix, one
/// pass over the rows (the streaming form of [`LinearCkaAccumulator`]). The products are
/// taken in chunks of 2048 rows with candle's gemm, only the upper block triangle of the
/// symmetric XcᵀXc and YcᵀYc: f32 inputs use f32 chunk products accumulated in f64 (the
/// index moves by ~1e-7…1e-6 relative to the exact value — ~3e-8 measured on 50 000 × 768,
/// against 6e-7 for numpy's all-f32 products; see [`Precision`]), f64 inputs are exact to
/// ~1e-12. Use [`linear_cka_with`] to force a precision.
///
/// Errors: different row counts, n < 3, NaN/inf, or X or Y constant (all columns zero after
/// centring: the denominator vanishes).
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// use replens::metrics::similarity::linear_cka;
/// let x = Tensor::new(&[[1f64, 0.], [0., 2.], [3., 1.], [2., 5.]], &Device::Cpu)?;
/// // Rotating by 90°, scaling by 3 and shifting by (1, 0) leaves CKA at 1 …
/// let y = Tensor::new(&[[1f64, -3.], [7., 0.], [4., -9.], [16., -6.]], &Device::Cpu)?;
/// assert!((linear_cka(&x, &y)? - 1.0).abs() < 1e-12);
/// // … and an unrelated representation gives less.
/// let z = Tensor::new(&[[1f64], [-1.], [-1.], [1.]], &Device::Cpu)?;
/// assert!(linear_cka(&x, &z)? < 0.5);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn linear_cka(x: &Tensor, y: &Tensor) -> Result<f64> {
    linear_cka_with(x, y, Precision::Auto)
}

/// [`linear_cka`] with an explicit precision for the Gram products.
pub fn linear_cka_with(x: &Tensor, y: &Tensor, precision: Precision) -> Result<f64> {
    let what = "linear_cka";
    let (_, d1, d2) = check_pair(x, y, what, 3)?;
    let mut m = PairMoments::new(d1, d2);
    m.push(x, y, precision, what)?;
    cka_from_moments(&m, what)
}

fn cka_from_moments(m: &PairMoments, what: &str) -> Result<f64> {
    let (xx, yy, xy) = m.centred();
    if m.is_constant(0, &xx) {
        bail!("{what}: x is constant (every column has zero variance): CKA is undefined");
    }
    if m.is_constant(1, &yy) {
        bail!("{what}: y is constant (every column has zero variance): CKA is undefined");
    }
    cka_from_products(&xx, &yy, &xy, what)
}

fn cka_from_products(xx: &[f64], yy: &[f64], xy: &[f64], what: &str) -> Result<f64> {
    let nx = frobenius_sq(xx).sqrt();
    let ny = frobenius_sq(yy).sqrt();
    if nx == 0.0 {
        bail!("{what}: x is constant (every column has zero variance): CKA is undefined");
    }
    if ny == 0.0 {
        bail!("{what}: y is constant (every column has zero variance): CKA is undefined");
    }
    Ok(frobenius_sq(xy) / (nx * ny))
}

/// Streaming linear CKA: feed aligned batches of X and Y rows, get [`linear_cka`] of the
/// concatenation. Memory O((d1 + d2)²): keeps Σ(x − s), Σ(y − t), and the products
/// (X − s)ᵀ(X − s), (Y − t)ᵀ(Y − t), (X − s)ᵀ(Y − t) in f64, where the shifts s, t are
/// the column means of the first (up to 2048) rows pushed; at the end
///
/// ```text
///   XcᵀYc = (X − s)ᵀ(Y − t) − n (μₓ − s)(μ_y − t)ᵀ
/// ```
///
/// (the textbook XᵀY − nμₓμ_yᵀ, shifted so that features with a large mean — residual
/// streams have a few — do not cancel catastrophically). With f64 input (or
/// [`Precision::F64`]) the result equals the batch [`linear_cka`] to ~1e-12.
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// use replens::metrics::similarity::{linear_cka, LinearCkaAccumulator};
/// let x = Tensor::new(&[[1f64, 0.], [0., 2.], [3., 1.], [2., 5.], [1., 1.]], &Device::Cpu)?;
/// let y = Tensor::new(&[[1f64], [2.], [2.], [4.], [0.]], &Device::Cpu)?;
/// let mut acc = LinearCkaAccumulator::new(2, 1);
/// acc.push(&x.narrow(0, 0, 2)?, &y.narrow(0, 0, 2)?)?;
/// acc.push(&x.narrow(0, 2, 3)?, &y.narrow(0, 2, 3)?)?;
/// assert_eq!(acc.n(), 5);
/// assert!((acc.finish()? - linear_cka(&x, &y)?).abs() < 1e-12);
/// # Ok::<(), replens::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct LinearCkaAccumulator {
    precision: Precision,
    moments: PairMoments,
}

impl LinearCkaAccumulator {
    /// An empty accumulator for X of width `d1` and Y of width `d2` (precision `Auto`).
    pub fn new(d1: usize, d2: usize) -> Self {
        Self::with_precision(d1, d2, Precision::Auto)
    }

    /// An empty accumulator with an explicit Gram precision (see [`Precision`]).
    pub fn with_precision(d1: usize, d2: usize, precision: Precision) -> Self {
        Self {
            precision,
            moments: PairMoments::new(d1, d2),
        }
    }

    /// Add aligned batches `x` (`b × d1`) and `y` (`b × d2`). Empty batches are ignored.
    /// Errors on a width other than the constructor's, different row counts, or NaN/inf (the
    /// accumulator is unchanged then).
    pub fn push(&mut self, x: &Tensor, y: &Tensor) -> Result<()> {
        // One pass over the batch validates as it accumulates, so keep the state to restore.
        let before = self.moments.clone();
        let r = self
            .moments
            .push(x, y, self.precision, "LinearCkaAccumulator::push");
        if r.is_err() {
            self.moments = before;
        }
        r
    }

    /// Rows consumed so far.
    pub fn n(&self) -> usize {
        self.moments.n
    }

    /// Linear CKA of everything pushed. Errors when fewer than 3 rows were pushed or when X
    /// or Y is constant. The accumulator is not consumed (more batches may follow).
    pub fn finish(&self) -> Result<f64> {
        let what = "LinearCkaAccumulator::finish";
        if self.moments.n < 3 {
            bail!(
                "{what}: needs at least 3 rows (tokens/examples), got {}",
                self.moments.n
            );
        }
        cka_from_moments(&self.moments, what)
    }
}

// ---------------------------------------------------------------------------------------
// RBF CKA and debiased CKA
// ---------------------------------------------------------------------------------------

/// CKA with a Gaussian (RBF) kernel (Kornblith et al., ICML 2019, §3 and their `cka.py`):
///
/// ```text
///   D_ij = ‖x_i − x_j‖²,   σ² = sigma_frac² · median_{i,j}(D_ij)
///   K_ij = exp(−D_ij / (2σ²)),  L likewise from Y,  H = I − 11ᵀ/n
///   CKA = ⟨HKH, HLH⟩_F / (‖HKH‖_F ‖HLH‖_F)
/// ```
///
/// As in Kornblith's `gram_rbf(x, threshold)`: `sigma_frac` is their `threshold`, the
/// median is taken over all n² entries of D including the zero diagonal (numpy's median,
/// the mean of the two middle values when n² is even), so σ = sigma_frac × √median(D).
/// Kornblith et al. use sigma_frac ∈ {0.2, 0.4, 0.8}; 0.8 is theirs in most figures.
///
/// O(n²·(d1 + d2)) time and two n × n kernels in memory (refused for n > [`MAX_KERNEL_ROWS`];
/// subsample rows or use [`linear_cka`]). Errors: n < 3, row mismatch, NaN/inf,
/// `sigma_frac ≤ 0`, a zero median distance (more than half the rows identical) or a kernel
/// that vanishes after centring.
pub fn rbf_cka(x: &Tensor, y: &Tensor, sigma_frac: f64) -> Result<f64> {
    let what = "rbf_cka";
    let (n, _, _) = check_pair(x, y, what, 3)?;
    if !(sigma_frac.is_finite() && sigma_frac > 0.0) {
        bail!("{what}: sigma_frac must be a positive number, got {sigma_frac}");
    }
    if n > MAX_KERNEL_ROWS {
        bail!(
            "{what}: {n} rows would need two {n}x{n} kernels; at most {MAX_KERNEL_ROWS} are \
             accepted (subsample the rows, or use linear_cka)"
        );
    }
    let k = centred_rbf_kernel(x, sigma_frac, &format!("{what}: x"))?;
    let l = centred_rbf_kernel(y, sigma_frac, &format!("{what}: y"))?;
    let kl: f64 = k.iter().zip(&l).map(|(a, b)| a * b).sum();
    Ok(kl / (frobenius_sq(&k).sqrt() * frobenius_sq(&l).sqrt()))
}

/// H K H of the Gaussian kernel of `x` (n × n, row-major).
fn centred_rbf_kernel(x: &Tensor, sigma_frac: f64, what: &str) -> Result<Vec<f64>> {
    // Distances are translation invariant; centring first keeps ‖x‖² small relative to the
    // distances, so −2xᵢ·xⱼ + ‖xᵢ‖² + ‖xⱼ‖² cancels less.
    let (data, n, d) = centred_f64(x, what)?;
    let t = tensor_f64(&data, n, d, what)?;
    let g = t
        .matmul(&t.t().context(|| what.to_string())?)
        .and_then(|g| g.flatten_all())
        .and_then(|g| g.to_vec1::<f64>())
        .context(|| format!("{what}: {n}x{n} Gram matrix"))?;
    let sq: Vec<f64> = (0..n).map(|i| g[i * n + i]).collect();
    let mut dist = g;
    for i in 0..n {
        for j in 0..n {
            let v = if i == j {
                0.0
            } else {
                (sq[i] + sq[j] - 2.0 * dist[i * n + j]).max(0.0)
            };
            dist[i * n + j] = v;
        }
    }
    let median = median_of(&dist);
    if median <= 0.0 {
        bail!(
            "{what}: the median pairwise squared distance is 0 (more than half of the rows are \
             identical), so the RBF bandwidth is undefined"
        );
    }
    let scale = 1.0 / (2.0 * sigma_frac * sigma_frac * median);
    let mut k: Vec<f64> = dist.into_iter().map(|v| (-v * scale).exp()).collect();
    centre_kernel(&mut k, n);
    let norm = frobenius_sq(&k);
    if norm == 0.0 || !norm.is_finite() {
        bail!("{what}: the centred RBF kernel is zero (sigma_frac {sigma_frac} too small?)");
    }
    Ok(k)
}

/// numpy-style median (mean of the two middle values for an even count).
fn median_of(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    let len = v.len();
    let mid = len / 2;
    let (_, &mut hi, _) = v.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
    if len % 2 == 1 {
        return hi;
    }
    let lo = v[..mid].iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
    0.5 * (lo + hi)
}

/// K ← HKH for a symmetric n × n K: K_ij − r_i − r_j + m (r row means, m grand mean).
fn centre_kernel(k: &mut [f64], n: usize) {
    let r: Vec<f64> = k
        .chunks_exact(n)
        .map(|row| row.iter().sum::<f64>() / n as f64)
        .collect();
    let m = r.iter().sum::<f64>() / n as f64;
    for (i, row) in k.chunks_exact_mut(n).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v += m - r[i] - r[j];
        }
    }
}

/// Debiased linear CKA: CKA with the unbiased HSIC estimator of Song, Smola, Gretton,
/// Bedo & Borgwardt (*Feature Selection via Dependence Maximization*, JMLR 2012, eq. 5), as
/// recommended for small n by Nguyen, Raghu & Kornblith (ICLR 2021) and used by
/// platonic-rep's `unbiased_cka` (Huh et al. 2024). With K = XcXcᵀ, L = YcYcᵀ and K̃, L̃
/// their copies with a zero diagonal,
///
/// ```text
///   HSIC₁(K, L) = [ tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n−1)(n−2)) − 2·1ᵀK̃L̃1/(n−2) ] / (n(n−3))
///   dCKA = HSIC₁(K, L) / √(HSIC₁(K, K) · HSIC₁(L, L))
/// ```
///
/// Unlike biased CKA it is ≈ 0 (not ≈ d/n) for independent representations, and can be
/// slightly negative. Computed in feature space without n × n matrices, in f64 throughout
/// (the estimator cancels large terms): tr(K̃L̃) = ‖XcᵀYc‖²_F − Σᵢ‖xᵢ‖²‖yᵢ‖²,
/// 1ᵀK̃1 = ‖Xcᵀ1‖² − Σᵢ‖xᵢ‖², K̃1 = Xc(Xcᵀ1) − (‖xᵢ‖²)ᵢ. Centring does not change the
/// estimator (it is invariant to the kernel shifts a translation causes); platonic-rep skips
/// it, replens centres for accuracy. platonic-rep also adds 1e-6 to the denominator; replens
/// does not, and returns an error when HSIC₁(K,K) or HSIC₁(L,L) is ≤ 0 instead.
///
/// Errors: n < 4 (the estimator divides by n − 3), row mismatch, NaN/inf, constant X or Y.
pub fn debiased_cka(x: &Tensor, y: &Tensor) -> Result<f64> {
    let what = "debiased_cka";
    let (n, d1, d2) = check_pair(x, y, what, 4)?;
    let (xc, _, _) = centred_f64(x, &format!("{what}: x"))?;
    let (yc, _, _) = centred_f64(y, &format!("{what}: y"))?;
    let tx = tensor_f64(&xc, n, d1, what)?;
    let ty = tensor_f64(&yc, n, d2, what)?;
    let xx = gram_f64(&tx, None, Precision::F64)?;
    let yy = gram_f64(&ty, None, Precision::F64)?;
    let xy = cross_f64(&tx, None, &ty, None, Precision::F64)?;
    let sx = HsicParts::new(&xc, n, d1);
    let sy = HsicParts::new(&yc, n, d2);
    let nf = n as f64;
    let hsic = |frob_cross: f64, a: &HsicParts, b: &HsicParts| -> f64 {
        let diag: f64 = a.row_sq.iter().zip(&b.row_sq).map(|(p, q)| p * q).sum();
        let trace = frob_cross - diag;
        let ab: f64 = a.k1.iter().zip(&b.k1).map(|(p, q)| p * q).sum();
        (trace + a.total * b.total / ((nf - 1.0) * (nf - 2.0)) - 2.0 * ab / (nf - 2.0))
            / (nf * (nf - 3.0))
    };
    let kl = hsic(frobenius_sq(&xy), &sx, &sy);
    let kk = hsic(frobenius_sq(&xx), &sx, &sx);
    let ll = hsic(frobenius_sq(&yy), &sy, &sy);
    if kk <= 0.0 {
        bail!("{what}: the unbiased HSIC of x with itself is {kk:.3e} ≤ 0 (too few rows or x nearly constant): debiased CKA is undefined");
    }
    if ll <= 0.0 {
        bail!("{what}: the unbiased HSIC of y with itself is {ll:.3e} ≤ 0 (too few rows or y nearly constant): debiased CKA is undefined");
    }
    Ok(kl / (kk * ll).sqrt())
}

/// Row statistics of the unbiased HSIC for a linear kernel K = XXᵀ with zeroed diagonal.
struct HsicParts {
    /// ‖xᵢ‖² (the diagonal of K).
    row_sq: Vec<f64>,
    /// K̃1 = X(Xᵀ1) − diag(K).
    k1: Vec<f64>,
    /// 1ᵀK̃1.
    total: f64,
}

impl HsicParts {
    fn new(x: &[f64], n: usize, d: usize) -> Self {
        let mut colsum = vec![0.0; d];
        for row in x.chunks_exact(d) {
            for (s, v) in colsum.iter_mut().zip(row) {
                *s += v;
            }
        }
        let row_sq: Vec<f64> = x.chunks_exact(d).map(frobenius_sq).collect();
        let k1: Vec<f64> = x
            .chunks_exact(d)
            .zip(&row_sq)
            .map(|(row, sq)| row.iter().zip(&colsum).map(|(a, b)| a * b).sum::<f64>() - sq)
            .collect();
        let total = frobenius_sq(&colsum) - row_sq.iter().sum::<f64>();
        debug_assert_eq!(k1.len(), n);
        HsicParts { row_sq, k1, total }
    }
}

// ---------------------------------------------------------------------------------------
// CCA family: SVCCA, PWCCA
// ---------------------------------------------------------------------------------------

/// Covariance eigen-basis of one side: Xc = U Λ^{1/2} Vᵀ restricted to kept directions.
struct Basis {
    /// Kept eigenvalues of XcᵀXc, descending.
    lambda: Vec<f64>,
    /// Matching eigenvectors, d × k row-major.
    v: Vec<f64>,
    d: usize,
}

impl Basis {
    fn k(&self) -> usize {
        self.lambda.len()
    }

    /// Eigen-basis of the d × d scatter matrix `c`, keeping the leading directions that
    /// explain `keep` of the variance (1.0: all), never a direction at or below
    /// [`CCA_REL_FLOOR`] · λ_max.
    fn new(c: &[f64], d: usize, keep: f64, what: &str) -> Result<Basis> {
        let (values, vectors) = symmetric_eigen(c, d)?;
        let lmax = values.first().copied().unwrap_or(0.0);
        if lmax <= 0.0 {
            bail!("{what} is constant: every column has zero variance, the index is undefined");
        }
        let rank = values
            .iter()
            .take_while(|&&l| l > CCA_REL_FLOOR * lmax)
            .count();
        let total: f64 = values[..rank].iter().sum();
        let mut k = rank;
        if keep < 1.0 {
            let mut cum = 0.0;
            for (i, &l) in values[..rank].iter().enumerate() {
                cum += l;
                if cum >= keep * total {
                    k = i + 1;
                    break;
                }
            }
        }
        let mut v = vec![0.0; d * k];
        for i in 0..d {
            v[i * k..(i + 1) * k].copy_from_slice(&vectors[i * d..i * d + k]);
        }
        Ok(Basis {
            lambda: values[..k].to_vec(),
            v,
            d,
        })
    }
}

/// CCA between the whitened bases: returns (ρ descending, P = left singular vectors of
/// M = Λₓ^{-1/2}Vₓᵀ Cxy V_y Λ_y^{-1/2}, kx × m row-major) with m = min(kx, ky).
fn cca_between(bx: &Basis, by: &Basis, cxy: &[f64]) -> Result<(Vec<f64>, Vec<f64>)> {
    let (kx, ky) = (bx.k(), by.k());
    let vxt = transpose(&bx.v, bx.d, kx);
    let t = matmul(&vxt, cxy, kx, bx.d, by.d)?;
    let mut m = matmul(&t, &by.v, kx, by.d, ky)?;
    for i in 0..kx {
        for j in 0..ky {
            m[i * ky + j] /= (bx.lambda[i] * by.lambda[j]).sqrt();
        }
    }
    let mt = transpose(&m, kx, ky);
    let mmt = symmetrise(matmul(&m, &mt, kx, ky, kx)?, kx);
    let (values, vectors) = symmetric_eigen(&mmt, kx)?;
    let r = kx.min(ky);
    let rho: Vec<f64> = values[..r]
        .iter()
        .map(|v| v.max(0.0).sqrt().min(1.0))
        .collect();
    let mut p = vec![0.0; kx * r];
    for i in 0..kx {
        p[i * r..(i + 1) * r].copy_from_slice(&vectors[i * kx..i * kx + r]);
    }
    Ok((rho, p))
}

/// Column-centred scatter matrices XcᵀXc, YcᵀYc, XcᵀYc in f64 (one pass); errors if X or Y
/// is constant.
fn centred_products(x: &Tensor, y: &Tensor, what: &str) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let (_, d1) = matrix_dims(x, &format!("{what}: x"))?;
    let (_, d2) = matrix_dims(y, &format!("{what}: y"))?;
    let mut m = PairMoments::new(d1, d2);
    m.push(x, y, Precision::F64, what)?;
    let (xx, yy, xy) = m.centred();
    for (side, c) in [(0, &xx), (1, &yy)] {
        if m.is_constant(side, c) {
            let name = if side == 0 { "x" } else { "y" };
            bail!("{what}: {name} is constant: every column has zero variance, the index is undefined");
        }
    }
    Ok((symmetrise(xx, d1), symmetrise(yy, d2), xy))
}

/// SVCCA similarity (Raghu, Gilmer, Yosinski & Sohl-Dickstein, *SVCCA: Singular Vector
/// Canonical Correlation Analysis for Deep Learning Dynamics and Interpretability*, NeurIPS
/// 2017): centre the columns; keep the top singular directions of X explaining a fraction
/// `keep` of its variance (the smallest k with Σ_{i≤k} sᵢ² ≥ keep · Σ sᵢ²; the paper uses
/// 0.99), same for Y; then the canonical correlations ρ₁ ≥ … ≥ ρ_m (m = min(kx, ky)) of the
/// reduced matrices, and
///
/// ```text
///   SVCCA(X, Y) = (1/m) Σᵢ ρᵢ
/// ```
///
/// Computed in covariance space: with XcᵀXc = VΛVᵀ, the reduced, whitened X is
/// XcV_kΛ_k^{-1/2}, so the ρ are the singular values of Λₓ^{-1/2}VₓᵀXcᵀYcV_yΛ_y^{-1/2}.
/// Directions with variance ≤ [`CCA_REL_FLOOR`] · max are never kept. Conventions: the
/// paper's (variance = squared singular values). anatome's `svcca_distance` returns 1 − this
/// but ranks by cumulative |s| (not s²), counts the directions strictly below the threshold
/// and reduces the uncentred matrix, so it keeps fewer directions; platonic-rep's `svcca`
/// keeps a fixed number (10) via randomised SVD after standardising the columns.
///
/// Errors: `keep` outside (0, 1], n < 3, n ≤ the number of kept directions (CCA then finds
/// spurious perfect correlations), row mismatch, NaN/inf, constant X or Y.
pub fn svcca(x: &Tensor, y: &Tensor, keep: f64) -> Result<f64> {
    let what = "svcca";
    let (n, d1, d2) = check_pair(x, y, what, 3)?;
    if !(keep > 0.0 && keep <= 1.0) {
        bail!("{what}: keep must be a fraction of variance in (0, 1], got {keep}");
    }
    let (xx, yy, xy) = centred_products(x, y, what)?;
    let bx = Basis::new(&xx, d1, keep, &format!("{what}: x"))?;
    let by = Basis::new(&yy, d2, keep, &format!("{what}: y"))?;
    let kmax = bx.k().max(by.k());
    if n <= kmax {
        bail!(
            "{what}: {n} rows for {kmax} kept directions; CCA needs more rows than dimensions \
             (lower keep or add rows)"
        );
    }
    let (rho, _) = cca_between(&bx, &by, &xy)?;
    Ok(rho.iter().sum::<f64>() / rho.len() as f64)
}

/// Projection-weighted CCA similarity (Morcos, Raghu & Bengio, *Insights on representational
/// similarity in neural networks with canonical correlation*, NeurIPS 2018, §2.2 and
/// google/svcca `pwcca.py`): canonical correlations ρᵢ of the centred X and Y with the
/// X-side canonical variates hᵢ (unit-norm n-vectors, hᵢ = Xc aᵢ), weighted by how much of
/// X's neurons they account for,
///
/// ```text
///   αᵢ = Σⱼ |⟨hᵢ, xⱼ⟩|  (xⱼ: the j-th centred column of X)
///   PWCCA(X, Y) = Σᵢ αᵢ ρᵢ / Σᵢ αᵢ,   i = 1 … min(rank X, rank Y)
/// ```
///
/// Not symmetric: the weights come from X (the first argument, as in anatome's
/// `pwcca_distance`, which returns 1 − this). Since the hᵢ are orthonormal and centred,
/// Morcos's re-orthonormalising QR is a no-op and the raw and centred columns give the same
/// weights. anatome differs: it sums |x·a| over *data points* rather than neurons, which
/// makes its weights close to uniform — replens follows the paper. Rank-deficient
/// covariances are handled as a pseudo-inverse ([`CCA_REL_FLOOR`]).
///
/// Errors: n ≤ max(d1, d2) (full CCA then overfits to perfect correlations; reduce with
/// [`svcca`] or add rows), row mismatch, NaN/inf, constant X or Y.
pub fn pwcca(x: &Tensor, y: &Tensor) -> Result<f64> {
    let what = "pwcca";
    let (n, d1, d2) = check_pair(x, y, what, 3)?;
    if n <= d1.max(d2) {
        bail!(
            "{what}: {n} rows for widths {d1} and {d2}; CCA needs more rows than features \
             (use svcca, or more rows)"
        );
    }
    let (xx, yy, xy) = centred_products(x, y, what)?;
    let bx = Basis::new(&xx, d1, 1.0, &format!("{what}: x"))?;
    let by = Basis::new(&yy, d2, 1.0, &format!("{what}: y"))?;
    let (rho, p) = cca_between(&bx, &by, &xy)?;
    let (kx, m) = (bx.k(), rho.len());
    // ⟨hᵢ, xⱼ⟩ = (XcᵀXc Vₓ Λₓ^{-1/2} P)ⱼᵢ = (Vₓ Λₓ^{1/2} P)ⱼᵢ.
    let mut vs = bx.v.clone();
    for row in vs.chunks_exact_mut(kx) {
        for (v, l) in row.iter_mut().zip(&bx.lambda) {
            *v *= l.sqrt();
        }
    }
    let proj = matmul(&vs, &p, d1, kx, m)?;
    let mut alpha = vec![0.0; m];
    for row in proj.chunks_exact(m) {
        for (a, v) in alpha.iter_mut().zip(row) {
            *a += v.abs();
        }
    }
    let total: f64 = alpha.iter().sum();
    Ok(alpha.iter().zip(&rho).map(|(a, r)| a * r).sum::<f64>() / total)
}

// ---------------------------------------------------------------------------------------
// Procrustes, mutual kNN
// ---------------------------------------------------------------------------------------

/// Orthogonal Procrustes distance (Schönemann 1966; as a representation distance: Ding,
/// Denain & Steinhardt, *Grounding Representation Similarity with Statistical Testing*,
/// NeurIPS 2021; Williams et al., NeurIPS 2021). With X̂ = Xc/‖Xc‖_F, Ŷ = Yc/‖Yc‖_F,
///
/// ```text
///   d²_Proc = min_{QᵀQ = I} ‖X̂Q − Ŷ‖²_F = 2 − 2‖X̂ᵀŶ‖_*   ∈ [0, 2]
/// ```
///
/// (‖·‖_* the nuclear norm; when d1 ≠ d2 the narrower side is implicitly zero-padded.)
/// This is Ding et al.'s squared distance; anatome's `orthogonal_procrustes_distance` returns
/// 1 − ‖X̂ᵀŶ‖_* (half of it), netrep's angular metric arccos ‖X̂ᵀŶ‖_*. 0 iff Y is a rotation
/// and scaling of X (after centring). The nuclear norm is the sum of √eig of the smaller of
/// MᵀM, MMᵀ (M = X̂ᵀŶ), with eigenvalues ≤ d·ε·max treated as 0; the result is clamped
/// to [0, 2] against rounding.
///
/// Errors: n < 3, row mismatch, NaN/inf, constant X or Y.
pub fn procrustes_distance(x: &Tensor, y: &Tensor) -> Result<f64> {
    let what = "procrustes_distance";
    let (_, d1, d2) = check_pair(x, y, what, 3)?;
    let (xx, yy, xy) = centred_products(x, y, what)?;
    let tx: f64 = (0..d1).map(|i| xx[i * d1 + i]).sum();
    let ty: f64 = (0..d2).map(|i| yy[i * d2 + i]).sum();
    if tx <= 0.0 {
        bail!("{what}: x is constant (every column has zero variance): the distance is undefined");
    }
    if ty <= 0.0 {
        bail!("{what}: y is constant (every column has zero variance): the distance is undefined");
    }
    let nuc = nuclear_norm(&xy, d1, d2)? / (tx * ty).sqrt();
    Ok((2.0 - 2.0 * nuc).clamp(0.0, 2.0))
}

fn nuclear_norm(m: &[f64], rows: usize, cols: usize) -> Result<f64> {
    let mt = transpose(m, rows, cols);
    let (g, k) = if cols <= rows {
        (matmul(&mt, m, cols, rows, cols)?, cols)
    } else {
        (matmul(m, &mt, rows, cols, rows)?, rows)
    };
    let (values, _) = symmetric_eigen(&symmetrise(g, k), k)?;
    let lmax = values.first().copied().unwrap_or(0.0);
    let floor = k as f64 * f64::EPSILON * lmax;
    Ok(values
        .iter()
        .filter(|&&l| l > floor)
        .map(|l| l.sqrt())
        .sum())
}

/// Mutual k-nearest-neighbour alignment (Huh, Cheung, Wang & Isola, *The Platonic
/// Representation Hypothesis*, ICML 2024, §2 and platonic-rep's `mutual_knn`): L2-normalise
/// every row of X and of Y, find each row's k nearest other rows by cosine similarity in X
/// (N_k^X(i)) and in Y (N_k^Y(i)), and average the overlap:
///
/// ```text
///   mKNN(X, Y) = (1/n) Σᵢ |N_k^X(i) ∩ N_k^Y(i)| / k   ∈ [0, 1]
/// ```
///
/// A row is never its own neighbour (platonic-rep fills the diagonal with −1e8). Ties in
/// similarity go to the lower row index (platonic-rep's `argsort` leaves them arbitrary);
/// with real activations ties have probability zero. Similarities in f64, computed in blocks
/// of rows: O(n²·(d1 + d2)) time, O(n·k) memory. Symmetric in X and Y.
///
/// Errors: k = 0, n < k + 1, row mismatch, NaN/inf, an all-zero row (it has no direction;
/// platonic-rep's `F.normalize` would silently give it similarity 0 to everything).
pub fn mutual_knn(x: &Tensor, y: &Tensor, k: usize) -> Result<f64> {
    let what = "mutual_knn";
    if k == 0 {
        bail!("{what}: k must be at least 1");
    }
    let (n, _, _) = check_pair(x, y, what, 1)?;
    if n < k + 1 {
        bail!(
            "{what}: needs at least k + 1 = {} rows for k = {k} neighbours, got {n}",
            k + 1
        );
    }
    let a = knn_sets(x, k, &format!("{what}: x"))?;
    let b = knn_sets(y, k, &format!("{what}: y"))?;
    Ok(knn_overlap(&a, &b, k))
}

fn knn_overlap(a: &[Vec<u32>], b: &[Vec<u32>], k: usize) -> f64 {
    let total: usize = a
        .iter()
        .zip(b)
        .map(|(p, q)| {
            // Both lists are sorted: a linear merge counts the intersection.
            let (mut i, mut j, mut c) = (0, 0, 0);
            while i < p.len() && j < q.len() {
                match p[i].cmp(&q[j]) {
                    std::cmp::Ordering::Less => i += 1,
                    std::cmp::Ordering::Greater => j += 1,
                    std::cmp::Ordering::Equal => {
                        c += 1;
                        i += 1;
                        j += 1;
                    }
                }
            }
            c
        })
        .sum();
    total as f64 / (k as f64 * a.len() as f64)
}

/// Row-block size of the kNN similarity products.
const KNN_BLOCK_ROWS: usize = 512;

/// For every row, the indices (sorted ascending) of its k most cosine-similar other rows.
fn knn_sets(x: &Tensor, k: usize, what: &str) -> Result<Vec<Vec<u32>>> {
    let (mut data, n, d) = matrix_f64(x, what)?;
    if n < k + 1 {
        bail!("{what}: needs at least k + 1 = {} rows, got {n}", k + 1);
    }
    for (i, row) in data.chunks_exact_mut(d).enumerate() {
        let norm = frobenius_sq(row).sqrt();
        if norm == 0.0 {
            bail!("{what}: row {i} is all zeros, so it has no cosine similarity (drop it)");
        }
        row.iter_mut().for_each(|v| *v /= norm);
    }
    let t = tensor_f64(&data, n, d, what)?;
    let tt = t.t().context(|| what.to_string())?;
    let mut out = Vec::with_capacity(n);
    let mut idx: Vec<u32> = Vec::with_capacity(n);
    let mut r0 = 0;
    while r0 < n {
        let len = KNN_BLOCK_ROWS.min(n - r0);
        let sims = t
            .narrow(0, r0, len)
            .and_then(|b| b.matmul(&tt))
            .and_then(|s| s.flatten_all())
            .and_then(|s| s.to_vec1::<f64>())
            .context(|| format!("{what}: similarities of rows {r0}..{}", r0 + len))?;
        for (bi, row) in sims.chunks_exact(n).enumerate() {
            let i = r0 + bi;
            idx.clear();
            idx.extend((0..n as u32).filter(|&j| j as usize != i));
            let better =
                |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
            if k < idx.len() {
                idx.select_nth_unstable_by(k - 1, better);
            }
            let mut nb: Vec<u32> = idx[..k].to_vec();
            nb.sort_unstable();
            out.push(nb);
        }
        r0 += len;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// One enum for all indices; layer × layer matrices and frames
// ---------------------------------------------------------------------------------------

/// A similarity index with its parameters, for [`similarity_matrix`] and notebooks that
/// switch indices by value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Similarity {
    /// [`linear_cka`].
    LinearCka,
    /// [`rbf_cka`] with bandwidth `sigma_frac` × √median squared distance.
    RbfCka { sigma_frac: f64 },
    /// [`debiased_cka`].
    DebiasedCka,
    /// [`svcca`] keeping `keep` of the variance (e.g. 0.99).
    Svcca { keep: f64 },
    /// [`pwcca`] (asymmetric: weights from the first argument).
    Pwcca,
    /// [`procrustes_distance`] (a distance: 0 = identical).
    Procrustes,
    /// [`mutual_knn`] with `k` neighbours.
    MutualKnn { k: usize },
}

impl Similarity {
    /// The index of `x` and `y`.
    pub fn compute(&self, x: &Tensor, y: &Tensor) -> Result<f64> {
        match *self {
            Similarity::LinearCka => linear_cka(x, y),
            Similarity::RbfCka { sigma_frac } => rbf_cka(x, y, sigma_frac),
            Similarity::DebiasedCka => debiased_cka(x, y),
            Similarity::Svcca { keep } => svcca(x, y, keep),
            Similarity::Pwcca => pwcca(x, y),
            Similarity::Procrustes => procrustes_distance(x, y),
            Similarity::MutualKnn { k } => mutual_knn(x, y, k),
        }
    }

    /// Whether index(x, y) = index(y, x) (all but PWCCA).
    pub fn is_symmetric(&self) -> bool {
        !matches!(self, Similarity::Pwcca)
    }

    /// A short name for tables and chart titles.
    pub fn name(&self) -> String {
        match self {
            Similarity::LinearCka => "linear CKA".into(),
            Similarity::RbfCka { sigma_frac } => format!("RBF CKA (σ = {sigma_frac} × median)"),
            Similarity::DebiasedCka => "debiased CKA".into(),
            Similarity::Svcca { keep } => format!("SVCCA ({keep} of variance)"),
            Similarity::Pwcca => "PWCCA".into(),
            Similarity::Procrustes => "Procrustes distance".into(),
            Similarity::MutualKnn { k } => format!("mutual {k}-NN"),
        }
    }
}

/// Per-layer work shared by every pair that layer takes part in.
enum Prepared {
    Cka { mean: Vec<f64>, norm: f64 },
    Knn(Vec<Vec<u32>>),
    None,
}

fn prepare(t: &Tensor, index: &Similarity, precision: Precision, what: &str) -> Result<Prepared> {
    match index {
        Similarity::LinearCka => {
            let (n, d) = matrix_dims(t, what)?;
            let mean = column_means(t, what)?;
            let g = gram_f64(t, Some(&mean), precision)?;
            let centred: Vec<f64> = (0..d).map(|j| g[j * d + j]).collect();
            let raw: Vec<f64> = (0..d)
                .map(|j| centred[j] + n as f64 * mean[j] * mean[j])
                .collect();
            if is_constant(&centred, &raw) {
                bail!("{what} is constant (every column has zero variance): CKA is undefined");
            }
            let norm = frobenius_sq(&g).sqrt();
            Ok(Prepared::Cka { mean, norm })
        }
        Similarity::MutualKnn { k } => {
            if *k == 0 {
                bail!("mutual_knn: k must be at least 1");
            }
            Ok(Prepared::Knn(knn_sets(t, *k, what)?))
        }
        _ => Ok(Prepared::None),
    }
}

/// The layer × layer matrix `m[i][j] = index(a[i], b[j])`: rows are the layers of `a`,
/// columns those of `b` (e.g. two models' residual streams over the same tokens; widths may
/// differ between and within `a` and `b`, row counts may not).
///
/// Within one model, pass the same slice twice (`similarity_matrix(&layers, &layers, ..)`):
/// then only the upper triangle is computed and mirrored for symmetric indices (all but
/// PWCCA). For linear CKA each layer's mean and ‖XcᵀXc‖_F, and for mutual kNN each layer's
/// neighbour lists, are computed once, so an L × L matrix costs L Gram products plus one cross
/// product per pair.
///
/// Errors name the layer pair: different row counts, NaN/inf, or whatever the index refuses.
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// use replens::metrics::similarity::{similarity_matrix, Similarity};
/// let dev = Device::Cpu;
/// let l0 = Tensor::new(&[[1f64, 0.], [0., 2.], [3., 1.], [2., 5.]], &dev)?;
/// let l1 = (&l0 * 3.0)?; // a rescaled copy
/// let l2 = Tensor::new(&[[1f64], [-1.], [-1.], [1.]], &dev)?;
/// let layers = [l0, l1, l2];
/// let m = similarity_matrix(&layers, &layers, &Similarity::LinearCka)?;
/// assert!((m[0][1] - 1.0).abs() < 1e-12 && m[1][0] == m[0][1]);
/// assert!(m[0][2] < 0.5 && (m[2][2] - 1.0).abs() < 1e-12);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn similarity_matrix(a: &[Tensor], b: &[Tensor], index: &Similarity) -> Result<Vec<Vec<f64>>> {
    if a.is_empty() || b.is_empty() {
        bail!(
            "similarity_matrix: need at least one layer on each side (got {} and {})",
            a.len(),
            b.len()
        );
    }
    let same = std::ptr::eq(a, b);
    let mut rows = None;
    for (side, layers) in [("a", a), ("b", b)] {
        for (i, t) in layers.iter().enumerate() {
            let (n, _) = matrix_dims(t, &format!("similarity_matrix: {side}[{i}]"))?;
            match rows {
                None => rows = Some((n, side, i)),
                Some((n0, s0, i0)) if n0 != n => bail!(
                    "similarity_matrix: {s0}[{i0}] has {n0} rows but {side}[{i}] has {n} \
                     (every layer must cover the same tokens/examples)"
                ),
                _ => {}
            }
        }
    }
    let precision = Precision::Auto.resolve(
        &a.iter()
            .chain(b.iter())
            .map(|t| t.dtype())
            .collect::<Vec<DType>>(),
    );
    let prep_a = a
        .iter()
        .enumerate()
        .map(|(i, t)| prepare(t, index, precision, &format!("similarity_matrix: a[{i}]")))
        .collect::<Result<Vec<_>>>()?;
    let prep_b = if same {
        Vec::new()
    } else {
        b.iter()
            .enumerate()
            .map(|(j, t)| prepare(t, index, precision, &format!("similarity_matrix: b[{j}]")))
            .collect::<Result<Vec<_>>>()?
    };
    let prep_b = if same { &prep_a } else { &prep_b };
    let mut m = vec![vec![f64::NAN; b.len()]; a.len()];
    for i in 0..a.len() {
        for j in 0..b.len() {
            if same && index.is_symmetric() && j < i {
                m[i][j] = m[j][i];
                continue;
            }
            let v = match (&prep_a[i], &prep_b[j]) {
                (Prepared::Cka { mean: ma, norm: na }, Prepared::Cka { mean: mb, norm: nb }) => {
                    let xy = cross_f64(&a[i], Some(ma), &b[j], Some(mb), precision)?;
                    Ok(frobenius_sq(&xy) / (na * nb))
                }
                (Prepared::Knn(ka), Prepared::Knn(kb)) => {
                    let Similarity::MutualKnn { k } = index else {
                        unreachable!()
                    };
                    Ok(knn_overlap(ka, kb, *k))
                }
                _ => index.compute(&a[i], &b[j]),
            }
            .map_err(|e| match e {
                Error::InvalidInput(msg) => Error::InvalidInput(format!(
                    "similarity_matrix: layer pair (a[{i}], b[{j}]): {msg}"
                )),
                other => other,
            })?;
            m[i][j] = v;
        }
    }
    Ok(m)
}

/// [`similarity_matrix`] as a long polars frame with one row per layer pair: columns
/// `layer_a` (u32, index into `a`), `layer_b` (u32, index into `b`), `value` (f64), in
/// row-major order — the shape [`crate::plot::HeatmapChart`]-style plots and CSV exports use.
pub fn similarity_frame(a: &[Tensor], b: &[Tensor], index: &Similarity) -> Result<DataFrame> {
    let m = similarity_matrix(a, b, index)?;
    let mut la = Vec::with_capacity(a.len() * b.len());
    let mut lb = Vec::with_capacity(a.len() * b.len());
    let mut value = Vec::with_capacity(a.len() * b.len());
    for (i, row) in m.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            la.push(i as u32);
            lb.push(j as u32);
            value.push(v);
        }
    }
    Ok(DataFrame::new_infer_height(vec![
        Column::new("layer_a".into(), la),
        Column::new("layer_b".into(), lb),
        Column::new("value".into(), value),
    ])?)
}
