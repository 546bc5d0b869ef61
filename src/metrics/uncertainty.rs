//! Uncertainty scores for a classifier's predictions, and the metrics that judge them
//! (study 5, AdUE: Zabolotnyi et al., arXiv 2505.15443).
//!
//! An uncertainty score u(x) is good when it is high on the examples the classifier gets
//! wrong. With the error indicator e = 1[ŷ ≠ y] the headline metric is
//! ROC-AUC(u, e) × 100 ([`roc_auc`]), reported as mean ± std over seeds ([`mean_std`]).
//!
//! Scores (higher = more uncertain):
//! * [`softmax_response`] SR = 1 − max_c p_c (Hendrycks & Gimpel, ICLR 2017);
//! * [`predictive_entropy`] H = −Σ_c p_c ln p_c (nats);
//! * [`Mahalanobis`] distance to the nearest class mean under a tied covariance, on
//!   L2-normalised features (Lee et al., NeurIPS 2018; as in LM-Polygraph);
//! * [`RelativeMahalanobis`] MD minus the distance to one background Gaussian (Ren et al.,
//!   arXiv 2106.09022, 2021);
//! * the trained AdUE head lives in [`crate::train::adue`].
//!
//! Metrics: [`roc_auc`], [`roc_curve`], [`ece`] / [`calibration_bins`] (Guo et al., ICML
//! 2017), [`accuracy_rejection_curve`], [`auarc`], [`prediction_rejection_ratio`],
//! [`mean_std`].
//!
//! Everything is computed in f64. Matrices (probabilities, features) are `(n, ·)` tensors
//! of any float dtype; per-example values are slices. NaN / ±inf inputs are errors.

use candle_core::{DType, Device, Tensor};

use crate::error::{Context, Error, Result};

fn invalid(msg: String) -> Error {
    Error::InvalidInput(msg)
}

/// Read a `(n, d)` tensor into row-major f64, rejecting NaN / inf and empty shapes.
fn matrix_f64(t: &Tensor, what: &str) -> Result<(Vec<f64>, usize, usize)> {
    let (n, d) = t.dims2().map_err(|_| {
        invalid(format!(
            "{what}: expected a 2-D (n, d) tensor, got shape {:?}",
            t.dims()
        ))
    })?;
    if n == 0 {
        return Err(invalid(format!("{what}: empty input (0 rows)")));
    }
    if d == 0 {
        return Err(invalid(format!("{what}: rows have 0 columns")));
    }
    let data = t
        .to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .context(|| format!("{what}: reading the {n}x{d} tensor as f64"))?;
    if let Some(pos) = data.iter().position(|v| !v.is_finite()) {
        return Err(invalid(format!(
            "{what}: value at row {}, column {} is {} (must be finite)",
            pos / d,
            pos % d,
            data[pos]
        )));
    }
    Ok((data, n, d))
}

/// Check that `probs` holds probability rows: entries ≥ 0, each row summing to 1 ± 1e-4.
fn prob_rows(probs: &Tensor, what: &str) -> Result<(Vec<f64>, usize, usize)> {
    let (p, n, c) = matrix_f64(probs, what)?;
    if c < 2 {
        return Err(invalid(format!(
            "{what}: probabilities need at least 2 classes, got {c} column(s)"
        )));
    }
    for (i, row) in p.chunks_exact(c).enumerate() {
        if let Some(j) = row.iter().position(|&v| v < 0.0) {
            return Err(invalid(format!(
                "{what}: probs[{i}, {j}] = {} is negative; pass softmax probabilities, not logits",
                row[j]
            )));
        }
        let s: f64 = row.iter().sum();
        if (s - 1.0).abs() > 1e-4 {
            return Err(invalid(format!(
                "{what}: row {i} of probs sums to {s}, not 1; pass softmax probabilities, not logits"
            )));
        }
    }
    Ok((p, n, c))
}

fn check_labels(what: &str, labels: &[usize], n: usize, n_classes: usize) -> Result<()> {
    if labels.len() != n {
        return Err(invalid(format!(
            "{what}: {n} rows but {} labels",
            labels.len()
        )));
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= n_classes) {
        return Err(invalid(format!(
            "{what}: label {i} is {l}, out of range for {n_classes} classes (0..{})",
            n_classes - 1
        )));
    }
    Ok(())
}

/// Scores and binary labels of the same non-zero length, scores finite.
fn check_scored(what: &str, scores: &[f64], labels: &[bool]) -> Result<()> {
    if scores.len() != labels.len() {
        return Err(invalid(format!(
            "{what}: {} scores but {} labels",
            scores.len(),
            labels.len()
        )));
    }
    if scores.is_empty() {
        return Err(invalid(format!("{what}: no scores (empty split)")));
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(invalid(format!(
            "{what}: score {i} is {} (scores must be finite)",
            scores[i]
        )));
    }
    Ok(())
}

fn check_both_classes(what: &str, labels: &[bool]) -> Result<(usize, usize)> {
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return Err(invalid(format!(
            "{what}: needs both classes, got {pos} positive and {neg} negative labels \
             (one class only: the metric is undefined)"
        )));
    }
    Ok((pos, neg))
}

/// Area under the ROC curve of `scores` (higher = more likely positive) against
/// `positives`, via the Mann–Whitney U statistic with midranks for ties:
///
/// ```text
///   AUC = (1 / (P·N)) Σ_{i ∈ pos} Σ_{j ∈ neg} ( 1[s_i > s_j] + ½·1[s_i = s_j] )
/// ```
///
/// This is the area under the trapezoidal ROC curve (Hanley & McNeil, Radiology 1982), so it
/// equals scikit-learn's `roc_auc_score` — tied scores count one half. The pair count is
/// accumulated in integers and divided once, so the result is the correctly rounded rational
/// (sklearn's trapezoid sum agrees to ~1e-16). For study 5, pass an uncertainty score and the
/// error indicator 1[ŷ ≠ y], and multiply by 100.
///
/// Errors: different lengths, empty input, a non-finite score, or only one class present.
///
/// ```
/// use replens::metrics::uncertainty::roc_auc;
/// // one positive ranked above both negatives, one tied with a negative: (2 + 1.5) / 4
/// let auc = roc_auc(&[0.9, 0.4, 0.4, 0.1], &[true, true, false, false])?;
/// assert_eq!(auc, 0.875);
/// assert!(roc_auc(&[0.5, 0.7], &[true, true]).is_err()); // one class only
/// # Ok::<(), replens::Error>(())
/// ```
pub fn roc_auc(scores: &[f64], positives: &[bool]) -> Result<f64> {
    check_scored("roc_auc", scores, positives)?;
    let (pos, neg) = check_both_classes("roc_auc", positives)?;
    // Sorted (score, label) pairs: the order within a tie group does not change its counts.
    let mut pairs: Vec<(f64, bool)> = scores
        .iter()
        .copied()
        .zip(positives.iter().copied())
        .collect();
    pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    // Twice the U statistic, in integers: each tie group adds p_g · (2·neg_below + n_g).
    let mut twice_u: u128 = 0;
    let mut neg_below: u128 = 0;
    let mut k = 0;
    while k < pairs.len() {
        let s = pairs[k].0;
        let (mut p_g, mut n_g) = (0u128, 0u128);
        // `==` rather than total_cmp so that -0.0 and 0.0 form one tie group.
        while k < pairs.len() && pairs[k].0 == s {
            if pairs[k].1 {
                p_g += 1;
            } else {
                n_g += 1;
            }
            k += 1;
        }
        twice_u += p_g * (2 * neg_below + n_g);
        neg_below += n_g;
    }
    Ok(twice_u as f64 / (2 * pos as u128 * neg as u128) as f64)
}

/// A ROC curve: one point per distinct score threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct RocCurve {
    /// False-positive rate at each threshold, non-decreasing from 0 to 1.
    pub fpr: Vec<f64>,
    /// True-positive rate at each threshold, non-decreasing from 0 to 1.
    pub tpr: Vec<f64>,
    /// Decreasing thresholds; a point counts `score ≥ threshold` as positive. The first is
    /// `+inf` (nothing predicted positive), as in scikit-learn ≥ 1.3.
    pub thresholds: Vec<f64>,
}

impl RocCurve {
    /// Trapezoidal area under the curve (equals [`roc_auc`] up to rounding).
    pub fn auc(&self) -> f64 {
        self.fpr
            .windows(2)
            .zip(self.tpr.windows(2))
            .map(|(x, y)| (x[1] - x[0]) * (y[0] + y[1]) / 2.0)
            .sum()
    }
}

/// ROC curve of `scores` against `positives`, point for point what scikit-learn's
/// `roc_curve(y, s, drop_intermediate=False)` returns: thresholds are the distinct scores in
/// decreasing order preceded by `+inf`; at threshold t, `tpr = #{pos: s ≥ t}/P` and
/// `fpr = #{neg: s ≥ t}/N`. Tied scores form one point.
///
/// Errors as for [`roc_auc`].
///
/// ```
/// use replens::metrics::uncertainty::roc_curve;
/// let c = roc_curve(&[0.9, 0.4, 0.4, 0.1], &[true, true, false, false])?;
/// assert_eq!(c.thresholds, vec![f64::INFINITY, 0.9, 0.4, 0.1]);
/// assert_eq!(c.tpr, vec![0.0, 0.5, 1.0, 1.0]);
/// assert_eq!(c.fpr, vec![0.0, 0.0, 0.5, 1.0]);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn roc_curve(scores: &[f64], positives: &[bool]) -> Result<RocCurve> {
    check_scored("roc_curve", scores, positives)?;
    let (pos, neg) = check_both_classes("roc_curve", positives)?;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut curve = RocCurve {
        fpr: vec![0.0],
        tpr: vec![0.0],
        thresholds: vec![f64::INFINITY],
    };
    let (mut tp, mut fp) = (0usize, 0usize);
    for (k, &i) in order.iter().enumerate() {
        if positives[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_tie = order
            .get(k + 1)
            .is_none_or(|&next| scores[next] != scores[i]);
        if last_of_tie {
            curve.fpr.push(fp as f64 / neg as f64);
            curve.tpr.push(tp as f64 / pos as f64);
            curve.thresholds.push(scores[i]);
        }
    }
    Ok(curve)
}

/// Row-wise softmax of `(n, C)` logits, in f64 (max-subtracted, so large logits are safe).
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// use replens::metrics::uncertainty::softmax;
/// let p = softmax(&Tensor::new(&[[0f32, 0.0], [1000.0, 0.0]], &Device::Cpu)?)?;
/// assert_eq!(p.to_vec2::<f64>()?, vec![vec![0.5, 0.5], vec![1.0, 0.0]]);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn softmax(logits: &Tensor) -> Result<Tensor> {
    let (z, n, c) = matrix_f64(logits, "softmax")?;
    let mut out = Vec::with_capacity(n * c);
    for row in z.chunks_exact(c) {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row.iter().map(|&v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.into_iter().map(|v| v / s));
    }
    Ok(Tensor::from_vec(out, (n, c), &Device::Cpu)?)
}

/// Predicted class of each row of `(n, C)` probabilities (or logits): the arg-max, the first
/// one on ties (as `numpy.argmax`).
pub fn predictions(probs: &Tensor) -> Result<Vec<usize>> {
    let (p, _, c) = matrix_f64(probs, "predictions")?;
    Ok(p.chunks_exact(c).map(argmax).collect())
}

fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best
}

/// Error indicator e_i = 1[argmax_c p_ic ≠ y_i] of `(n, C)` probabilities (or logits)
/// against labels in `0..C`: the positives for the ROC-AUC of an uncertainty score.
pub fn error_indicator(probs: &Tensor, labels: &[usize]) -> Result<Vec<bool>> {
    let (p, n, c) = matrix_f64(probs, "error_indicator")?;
    check_labels("error_indicator", labels, n, c)?;
    Ok(p.chunks_exact(c)
        .zip(labels)
        .map(|(row, &y)| argmax(row) != y)
        .collect())
}

/// Softmax response (maximum softmax probability; Hendrycks & Gimpel, ICLR 2017) as an
/// uncertainty: `SR_i = 1 − max_c p_ic`. `probs` is `(n, C)` with rows summing to 1.
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// use replens::metrics::uncertainty::softmax_response;
/// let p = Tensor::new(&[[0.75f64, 0.25], [0.5, 0.5]], &Device::Cpu)?;
/// assert_eq!(softmax_response(&p)?, vec![0.25, 0.5]);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn softmax_response(probs: &Tensor) -> Result<Vec<f64>> {
    let (p, _, c) = prob_rows(probs, "softmax_response")?;
    Ok(p.chunks_exact(c)
        .map(|row| 1.0 - row.iter().copied().fold(f64::NEG_INFINITY, f64::max))
        .collect())
}

/// Predictive entropy `H_i = −Σ_c p_ic ln p_ic` in nats (0 · ln 0 = 0); at most ln C.
/// `probs` is `(n, C)` with rows summing to 1.
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// use replens::metrics::uncertainty::predictive_entropy;
/// let p = Tensor::new(&[[0.5f64, 0.5], [1.0, 0.0]], &Device::Cpu)?;
/// let h = predictive_entropy(&p)?;
/// assert!((h[0] - 2f64.ln()).abs() < 1e-15 && h[1] == 0.0);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn predictive_entropy(probs: &Tensor) -> Result<Vec<f64>> {
    let (p, _, c) = prob_rows(probs, "predictive_entropy")?;
    Ok(p.chunks_exact(c)
        .map(|row| {
            -row.iter()
                .filter(|&&v| v > 0.0)
                .map(|&v| v * v.ln())
                .sum::<f64>()
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// Mahalanobis distance
// ---------------------------------------------------------------------------------------

/// How [`Mahalanobis`] and [`RelativeMahalanobis`] treat features and the covariance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MahalanobisOptions {
    /// L2-normalise every feature row before fitting and scoring (default `true`, as in
    /// AdUE / LM-Polygraph). A zero row is then an error.
    pub l2_normalise: bool,
    /// Relative ridge ε: the covariance is inverted as `Σ + ε·(tr Σ / d)·I` (default 1e-6).
    /// Features of a fine-tuned model are often close to rank-deficient (and exactly so
    /// when n < d); the ridge makes the inverse well defined and continuous in the data,
    /// where a pseudo-inverse jumps with its cut-off. ε = 0 is allowed and then requires Σ
    /// to be positive definite.
    pub ridge: f64,
}

impl Default for MahalanobisOptions {
    fn default() -> Self {
        Self {
            l2_normalise: true,
            ridge: 1e-6,
        }
    }
}

/// Gaussians with one shared (tied) covariance: means `μ_c` and the whitener `L⁻¹` with
/// `L Lᵀ = Σ_reg`, so that `(x−μ)ᵀ Σ_reg⁻¹ (x−μ) = ‖L⁻¹x − L⁻¹μ‖²`.
#[derive(Debug, Clone)]
struct TiedGaussians {
    d: usize,
    means: Vec<f64>,
    /// L⁻¹ as a `(d, d)` f64 tensor, applied to rows as `X · (L⁻¹)ᵀ` with candle's matmul.
    whitener_t: Tensor,
    whitened_means: Vec<f64>,
}

impl TiedGaussians {
    /// `x` is row-major `(n, d)` (already normalised if asked), `groups[i] < k`.
    fn fit(
        what: &str,
        x: &[f64],
        n: usize,
        d: usize,
        groups: &[usize],
        k: usize,
        ridge: f64,
    ) -> Result<Self> {
        let mut counts = vec![0usize; k];
        let mut means = vec![0.0; k * d];
        for (row, &g) in x.chunks_exact(d).zip(groups) {
            counts[g] += 1;
            for (m, &v) in means[g * d..(g + 1) * d].iter_mut().zip(row) {
                *m += v;
            }
        }
        if let Some(c) = counts.iter().position(|&c| c == 0) {
            return Err(invalid(format!(
                "{what}: class {c} has no training examples (every class in 0..{k} needs at \
                 least one to have a mean)"
            )));
        }
        for (g, &cnt) in counts.iter().enumerate() {
            means[g * d..(g + 1) * d]
                .iter_mut()
                .for_each(|m| *m /= cnt as f64);
        }
        // Σ = (1/N) Σ_i (x_i − μ_{g_i})(x_i − μ_{g_i})ᵀ: one BLAS-sized product instead of
        // n rank-one updates.
        let centred: Vec<f64> = x
            .chunks_exact(d)
            .zip(groups)
            .flat_map(|(row, &g)| {
                row.iter()
                    .zip(&means[g * d..(g + 1) * d])
                    .map(|(v, m)| v - m)
            })
            .collect();
        let xc = Tensor::from_vec(centred, (n, d), &Device::Cpu)?;
        let mut cov = xc
            .t()
            .and_then(|t| t.matmul(&xc))
            .and_then(|c| c.flatten_all())
            .and_then(|c| c.to_vec1::<f64>())
            .context(|| format!("{what}: covariance of {n} rows of dimension {d}"))?;
        let inv_n = 1.0 / n as f64;
        cov.iter_mut().for_each(|v| *v *= inv_n);
        // The matmul is symmetric only up to rounding; Cholesky reads the lower triangle.
        let trace: f64 = (0..d).map(|i| cov[i * d + i]).sum();
        if trace <= 0.0 {
            return Err(invalid(format!(
                "{what}: the features have no within-class variance (every row equals its \
                 class mean); the covariance is zero"
            )));
        }
        let jitter = ridge * trace / d as f64;
        for i in 0..d {
            cov[i * d + i] += jitter;
        }
        let l = cholesky(&cov, d).map_err(|row| {
            invalid(format!(
                "{what}: the {d}x{d} covariance (ridge {ridge}) is not positive definite \
                 (pivot {row}); with fewer rows than dimensions or collinear features use a \
                 ridge > 0"
            ))
        })?;
        let linv = lower_inverse(&l, d);
        let whitener_t = Tensor::from_vec(linv, (d, d), &Device::Cpu)?.t()?;
        let mut g = Self {
            d,
            means: Vec::new(),
            whitener_t,
            whitened_means: Vec::new(),
        };
        g.whitened_means = g.whiten(&means, k)?;
        g.means = means;
        Ok(g)
    }

    fn whiten(&self, x: &[f64], n: usize) -> Result<Vec<f64>> {
        let t = Tensor::from_vec(x.to_vec(), (n, self.d), &Device::Cpu)?;
        t.matmul(&self.whitener_t)
            .and_then(|y| y.flatten_all())
            .and_then(|y| y.to_vec1::<f64>())
            .context(|| format!("whitening {n} rows of dimension {}", self.d))
    }

    /// Squared distances, row-major `(n, k)`.
    fn distances(&self, x: &[f64], n: usize) -> Result<Vec<f64>> {
        let y = self.whiten(x, n)?;
        let d = self.d;
        let mut out = Vec::with_capacity(n * self.whitened_means.len() / d);
        for row in y.chunks_exact(d) {
            for m in self.whitened_means.chunks_exact(d) {
                out.push(row.iter().zip(m).map(|(a, b)| (a - b) * (a - b)).sum());
            }
        }
        Ok(out)
    }
}

/// Cholesky factor L (row-major, lower) of a symmetric positive-definite matrix, reading its
/// lower triangle. Err(k) when pivot k is not clearly positive: a pivot at or below
/// n·ε·max_i a_ii is rounding noise of a singular matrix, whose "inverse" would be garbage.
fn cholesky(a: &[f64], n: usize) -> std::result::Result<Vec<f64>, usize> {
    let max_diag = (0..n).map(|i| a[i * n + i]).fold(0.0, f64::max);
    let tol = n as f64 * f64::EPSILON * max_diag;
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            if i == j {
                let v = a[i * n + i] - s;
                if v.partial_cmp(&tol) != Some(std::cmp::Ordering::Greater) {
                    return Err(i);
                }
                l[i * n + i] = v.sqrt();
            } else {
                l[i * n + j] = (a[i * n + j] - s) / l[j * n + j];
            }
        }
    }
    Ok(l)
}

/// Inverse of a lower-triangular matrix (row-major), itself lower triangular.
fn lower_inverse(l: &[f64], n: usize) -> Vec<f64> {
    let mut inv = vec![0.0; n * n];
    for j in 0..n {
        inv[j * n + j] = 1.0 / l[j * n + j];
        for i in j + 1..n {
            let s: f64 = (j..i).map(|k| l[i * n + k] * inv[k * n + j]).sum();
            inv[i * n + j] = -s / l[i * n + i];
        }
    }
    inv
}

fn l2_normalise_rows(what: &str, x: &mut [f64], d: usize) -> Result<()> {
    for (i, row) in x.chunks_exact_mut(d).enumerate() {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            return Err(invalid(format!(
                "{what}: feature row {i} is all zeros and cannot be L2-normalised"
            )));
        }
        row.iter_mut().for_each(|v| *v /= norm);
    }
    Ok(())
}

fn prepare_features(
    what: &str,
    t: &Tensor,
    d: Option<usize>,
    opts: &MahalanobisOptions,
) -> Result<(Vec<f64>, usize, usize)> {
    let (mut x, n, dim) = matrix_f64(t, what)?;
    if let Some(d) = d {
        if dim != d {
            return Err(invalid(format!(
                "{what}: features have {dim} columns but the estimator was fitted on {d}"
            )));
        }
    }
    if opts.l2_normalise {
        l2_normalise_rows(what, &mut x, dim)?;
    }
    Ok((x, n, dim))
}

fn check_fit_args(what: &str, n_classes: usize, opts: &MahalanobisOptions) -> Result<()> {
    if n_classes < 2 {
        return Err(invalid(format!(
            "{what}: n_classes is {n_classes}; a classifier has at least 2 classes"
        )));
    }
    if !(opts.ridge >= 0.0 && opts.ridge.is_finite()) {
        return Err(invalid(format!(
            "{what}: ridge must be finite and ≥ 0, got {}",
            opts.ridge
        )));
    }
    Ok(())
}

/// Mahalanobis-distance uncertainty (Lee, Lee, Lee & Shin, *A Simple Unified Framework for
/// Detecting Out-of-Distribution Samples and Adversarial Attacks*, NeurIPS 2018), as used
/// by LM-Polygraph and the AdUE paper:
///
/// ```text
///   x̂      = x / ‖x‖                                   (features L2-normalised)
///   μ_c    = mean of x̂ over training rows of class c
///   Σ      = (1/N) Σ_c Σ_{i: y_i = c} (x̂_i − μ_c)(x̂_i − μ_c)ᵀ      (tied covariance)
///   MD(x)  = min_c (x̂ − μ_c)ᵀ (Σ + ε·(tr Σ/d)·I)⁻¹ (x̂ − μ_c)        (squared distance)
/// ```
///
/// Σ is normalised by N as in Lee et al.; LM-Polygraph divides by N − 1, which scales every
/// score by the same factor (N−1)/N and leaves ROC-AUC unchanged. The inverse goes through
/// a Cholesky factorisation of the ridged covariance ([`MahalanobisOptions::ridge`]).
///
/// Fit on the *training* split with the gold labels (class means of the training data).
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// use replens::metrics::uncertainty::Mahalanobis;
/// let train = Tensor::new(
///     &[[1f64, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0], [1.0, 0.05], [0.05, 1.0]],
///     &Device::Cpu,
/// )?;
/// let md = Mahalanobis::fit(&train, &[0, 0, 1, 1, 0, 1], 2)?;
/// let s = md.score(&Tensor::new(&[[1f64, 0.0], [1.0, 1.0]], &Device::Cpu)?)?;
/// assert!(s[0] < s[1]); // the point between the classes is the uncertain one
/// # Ok::<(), replens::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Mahalanobis {
    gaussians: TiedGaussians,
    n_classes: usize,
    options: MahalanobisOptions,
}

impl Mahalanobis {
    /// Fit with the default options (L2-normalised features, ridge 1e-6).
    /// `features` is `(n, d)`, `labels[i] ∈ 0..n_classes`, every class present.
    pub fn fit(features: &Tensor, labels: &[usize], n_classes: usize) -> Result<Self> {
        Self::fit_with(features, labels, n_classes, MahalanobisOptions::default())
    }

    /// Fit with explicit [`MahalanobisOptions`].
    pub fn fit_with(
        features: &Tensor,
        labels: &[usize],
        n_classes: usize,
        options: MahalanobisOptions,
    ) -> Result<Self> {
        const WHAT: &str = "Mahalanobis::fit";
        let (x, n, d) = prepare_fit(WHAT, features, labels, n_classes, &options)?;
        Self::fit_prepared(WHAT, &x, n, d, labels, n_classes, options)
    }

    /// The class-conditional fit on features already checked and normalised by
    /// [`prepare_fit`] (shared with [`RelativeMahalanobis`]).
    fn fit_prepared(
        what: &str,
        x: &[f64],
        n: usize,
        d: usize,
        labels: &[usize],
        n_classes: usize,
        options: MahalanobisOptions,
    ) -> Result<Self> {
        let gaussians = TiedGaussians::fit(what, x, n, d, labels, n_classes, options.ridge)?;
        Ok(Self {
            gaussians,
            n_classes,
            options,
        })
    }

    /// Feature dimension d.
    pub fn dim(&self) -> usize {
        self.gaussians.d
    }

    /// Number of classes C.
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// Class means μ_c of the (normalised) training features, row-major `(C, d)`.
    pub fn means(&self) -> &[f64] {
        &self.gaussians.means
    }

    /// The options the estimator was fitted with.
    pub fn options(&self) -> MahalanobisOptions {
        self.options
    }

    /// Squared distance of every row to every class mean, row-major `(n, C)`.
    pub fn class_distances(&self, features: &Tensor) -> Result<Vec<f64>> {
        let (x, n, _) = prepare_features(
            "Mahalanobis::score",
            features,
            Some(self.gaussians.d),
            &self.options,
        )?;
        self.gaussians.distances(&x, n)
    }

    /// `MD(x) = min_c` squared distance, one value per row (higher = more uncertain).
    pub fn score(&self, features: &Tensor) -> Result<Vec<f64>> {
        let dist = self.class_distances(features)?;
        Ok(dist
            .chunks_exact(self.n_classes)
            .map(|r| r.iter().copied().fold(f64::INFINITY, f64::min))
            .collect())
    }
}

/// Relative Mahalanobis distance (Ren, Fort, Liu, Roy, Padhy & Lakshminarayanan, *A Simple
/// Fix to Mahalanobis Distance for Improving Near-OOD Detection*, arXiv 2106.09022, 2021):
///
/// ```text
///   MD_0(x) = (x̂ − μ_0)ᵀ (Σ_0 + ε·(tr Σ_0/d)·I)⁻¹ (x̂ − μ_0)
///             μ_0, Σ_0 = mean and (1/N) covariance of all training features, labels ignored
///   RMD(x)  = min_c ( MD_c(x) − MD_0(x) ) = min_c MD_c(x) − MD_0(x)
/// ```
///
/// with MD_c as in [`Mahalanobis`] (same normalisation and ridge rule). RMD can be negative.
#[derive(Debug, Clone)]
pub struct RelativeMahalanobis {
    classes: Mahalanobis,
    background: TiedGaussians,
}

impl RelativeMahalanobis {
    /// Fit with the default options (L2-normalised features, ridge 1e-6).
    pub fn fit(features: &Tensor, labels: &[usize], n_classes: usize) -> Result<Self> {
        Self::fit_with(features, labels, n_classes, MahalanobisOptions::default())
    }

    /// Fit with explicit [`MahalanobisOptions`].
    pub fn fit_with(
        features: &Tensor,
        labels: &[usize],
        n_classes: usize,
        options: MahalanobisOptions,
    ) -> Result<Self> {
        const WHAT: &str = "RelativeMahalanobis::fit";
        let (x, n, d) = prepare_fit(WHAT, features, labels, n_classes, &options)?;
        let classes = Mahalanobis::fit_prepared(WHAT, &x, n, d, labels, n_classes, options)?;
        let background = TiedGaussians::fit(WHAT, &x, n, d, &vec![0; n], 1, options.ridge)?;
        Ok(Self {
            classes,
            background,
        })
    }

    /// The class-conditional part (plain MD).
    pub fn mahalanobis(&self) -> &Mahalanobis {
        &self.classes
    }

    /// Squared distance to the background Gaussian, MD_0, one value per row.
    pub fn background_distance(&self, features: &Tensor) -> Result<Vec<f64>> {
        let (x, n, _) = prepare_features(
            "RelativeMahalanobis::score",
            features,
            Some(self.classes.gaussians.d),
            &self.classes.options,
        )?;
        self.background.distances(&x, n)
    }

    /// `RMD(x) = min_c MD_c(x) − MD_0(x)`, one value per row (higher = more uncertain).
    pub fn score(&self, features: &Tensor) -> Result<Vec<f64>> {
        let (x, n, _) = prepare_features(
            "RelativeMahalanobis::score",
            features,
            Some(self.classes.gaussians.d),
            &self.classes.options,
        )?;
        let md = self.classes.gaussians.distances(&x, n)?;
        let md0 = self.background.distances(&x, n)?;
        Ok(md
            .chunks_exact(self.classes.n_classes)
            .zip(md0)
            .map(|(r, b)| r.iter().copied().fold(f64::INFINITY, f64::min) - b)
            .collect())
    }
}

/// Argument checks and feature preparation shared by the Mahalanobis-family fits.
fn prepare_fit(
    what: &str,
    features: &Tensor,
    labels: &[usize],
    n_classes: usize,
    options: &MahalanobisOptions,
) -> Result<(Vec<f64>, usize, usize)> {
    check_fit_args(what, n_classes, options)?;
    let (x, n, d) = prepare_features(what, features, None, options)?;
    check_labels(what, labels, n, n_classes)?;
    Ok((x, n, d))
}

// ---------------------------------------------------------------------------------------
// Calibration
// ---------------------------------------------------------------------------------------

/// One confidence bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibrationBin {
    /// Lower edge (exclusive) of the bin, `m / M`.
    pub lower: f64,
    /// Upper edge (inclusive), `(m + 1) / M`.
    pub upper: f64,
    /// Examples whose confidence falls in the bin.
    pub count: usize,
    /// Mean confidence max_c p_c of those examples (0 when the bin is empty).
    pub confidence: f64,
    /// Their accuracy (0 when the bin is empty).
    pub accuracy: f64,
}

/// Equal-width confidence bins of Guo, Pleiss, Sun & Weinberger (*On Calibration of Modern
/// Neural Networks*, ICML 2017): bin m ∈ 0..M holds the examples whose confidence
/// `max_c p_c` lies in `(m/M, (m+1)/M]` (bin 0 also takes confidence 0). Predictions are the
/// arg-max (first on ties). `probs` is `(n, C)` with rows summing to 1, `labels[i] ∈ 0..C`.
pub fn calibration_bins(
    probs: &Tensor,
    labels: &[usize],
    n_bins: usize,
) -> Result<Vec<CalibrationBin>> {
    const WHAT: &str = "calibration_bins";
    if n_bins == 0 {
        return Err(invalid(format!("{WHAT}: n_bins must be at least 1")));
    }
    let (p, n, c) = prob_rows(probs, WHAT)?;
    check_labels(WHAT, labels, n, c)?;
    let m_f = n_bins as f64;
    let mut bins: Vec<CalibrationBin> = (0..n_bins)
        .map(|m| CalibrationBin {
            lower: m as f64 / m_f,
            upper: (m + 1) as f64 / m_f,
            count: 0,
            confidence: 0.0,
            accuracy: 0.0,
        })
        .collect();
    for (row, &y) in p.chunks_exact(c).zip(labels) {
        let pred = argmax(row);
        let conf = row[pred];
        // First guess from the product, then fix it against the exact edges used in the
        // docs (m/M as a division), so edge cases land where the comparison says.
        let mut m = ((conf * m_f).ceil() as usize).clamp(1, n_bins) - 1;
        while m > 0 && conf <= m as f64 / m_f {
            m -= 1;
        }
        while m + 1 < n_bins && conf > (m + 1) as f64 / m_f {
            m += 1;
        }
        let b = &mut bins[m];
        b.count += 1;
        b.confidence += conf;
        b.accuracy += f64::from(u8::from(pred == y));
    }
    for b in bins.iter_mut().filter(|b| b.count > 0) {
        b.confidence /= b.count as f64;
        b.accuracy /= b.count as f64;
    }
    Ok(bins)
}

/// Expected calibration error with `n_bins` equal-width confidence bins (Guo et al., ICML
/// 2017; see [`calibration_bins`]): `ECE = Σ_m (|B_m| / n) · |acc(B_m) − conf(B_m)|`.
/// The usual choice is 15 bins (Guo et al.) or 10.
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// use replens::metrics::uncertainty::ece;
/// // confident (0.9) and right twice, confident and wrong twice: |0.5 − 0.9| = 0.4
/// let p = Tensor::new(&[[0.9f64, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]], &Device::Cpu)?;
/// let e = ece(&p, &[0, 1, 1, 0], 10)?;
/// assert!((e - 0.4).abs() < 1e-12);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn ece(probs: &Tensor, labels: &[usize], n_bins: usize) -> Result<f64> {
    let bins = calibration_bins(probs, labels, n_bins)?;
    let n: usize = bins.iter().map(|b| b.count).sum();
    Ok(bins
        .iter()
        .map(|b| b.count as f64 / n as f64 * (b.accuracy - b.confidence).abs())
        .sum())
}

// ---------------------------------------------------------------------------------------
// Rejection curves
// ---------------------------------------------------------------------------------------

/// Accuracy–rejection curve: reject the k most uncertain examples (highest `scores`) for
/// k = 0, 1, …, n−1 and measure the accuracy on the n − k kept ones. Returns
/// `(rejection rate k/n, accuracy)` pairs, n of them, starting at (0, base accuracy).
///
/// Tied scores are broken *in expectation*: rejecting j of a tie group of size g that holds
/// a correct predictions removes j·a/g correct ones, i.e. the mean over all orders of the
/// tie. So the curve does not depend on the input order, and a constant score gives the
/// flat line of random rejection (Nadeem, Zucker & Hanczar, *Accuracy-Rejection Curves
/// (ARCs) for Comparing Classification Methods with a Reject Option*, PMLR 8, 2009).
///
/// ```
/// use replens::metrics::uncertainty::accuracy_rejection_curve;
/// let arc = accuracy_rejection_curve(&[0.9, 0.1, 0.2, 0.8], &[false, true, true, true])?;
/// assert_eq!(arc[0], (0.0, 0.75));
/// assert_eq!(arc[1], (0.25, 1.0)); // the most uncertain one was the error
/// # Ok::<(), replens::Error>(())
/// ```
pub fn accuracy_rejection_curve(scores: &[f64], correct: &[bool]) -> Result<Vec<(f64, f64)>> {
    check_scored("accuracy_rejection_curve", scores, correct)?;
    Ok(arc_unchecked(scores, correct))
}

fn arc_unchecked(scores: &[f64], correct: &[bool]) -> Vec<(f64, f64)> {
    let n = scores.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut kept_correct = correct.iter().filter(|&&c| c).count() as f64;
    let mut curve = Vec::with_capacity(n);
    let mut k = 0;
    while k < n {
        let s = scores[order[k]];
        let end = k + order[k..].iter().take_while(|&&i| scores[i] == s).count();
        let g = (end - k) as f64;
        let a = order[k..end].iter().filter(|&&i| correct[i]).count() as f64;
        for j in 0..end - k {
            let rejected = k + j;
            if rejected == n {
                break;
            }
            let kept = kept_correct - j as f64 * a / g;
            curve.push((rejected as f64 / n as f64, kept / (n - rejected) as f64));
        }
        kept_correct -= a;
        k = end;
    }
    curve
}

/// Area under the accuracy–rejection curve: the mean accuracy over the n points of
/// [`accuracy_rejection_curve`] (rectangle rule on the grid k/n). Higher is better; random
/// rejection gives the base accuracy.
pub fn auarc(scores: &[f64], correct: &[bool]) -> Result<f64> {
    let c = accuracy_rejection_curve(scores, correct)?;
    Ok(c.iter().map(|p| p.1).sum::<f64>() / c.len() as f64)
}

/// Prediction–rejection ratio (Malinin et al., *Uncertainty in Gradient Boosting via
/// Ensembles*, ICLR 2021; as in LM-Polygraph):
/// `PRR = (AUARC(u) − AUARC_random) / (AUARC_oracle − AUARC_random)`, where the random
/// curve is flat at the base accuracy and the oracle rejects all errors first. 1 is
/// perfect, 0 random. Errors when every prediction is right or every one wrong (the
/// denominator is 0).
pub fn prediction_rejection_ratio(scores: &[f64], correct: &[bool]) -> Result<f64> {
    const WHAT: &str = "prediction_rejection_ratio";
    check_scored(WHAT, scores, correct)?;
    check_both_classes(WHAT, correct)?;
    let base = correct.iter().filter(|&&c| c).count() as f64 / correct.len() as f64;
    let area = |c: Vec<(f64, f64)>| c.iter().map(|p| p.1).sum::<f64>() / c.len() as f64;
    let model = area(arc_unchecked(scores, correct));
    let oracle_scores: Vec<f64> = correct.iter().map(|&c| if c { 0.0 } else { 1.0 }).collect();
    let oracle = area(arc_unchecked(&oracle_scores, correct));
    Ok((model - base) / (oracle - base))
}

// ---------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------

/// Mean and standard deviation of a metric over seeds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanStd {
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation (ddof = 1, as `pandas.Series.std`); 0 for a single value.
    pub std: f64,
    /// Number of values.
    pub n: usize,
}

impl std::fmt::Display for MeanStd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = f.precision().unwrap_or(2);
        write!(f, "{:.p$} ± {:.p$}", self.mean, self.std)
    }
}

/// Mean ± sample standard deviation (ddof = 1) of per-seed values, e.g. ROC-AUC × 100
/// over 5 seeds as in the AdUE tables. Errors on an empty slice or a non-finite value.
///
/// ```
/// use replens::metrics::uncertainty::mean_std;
/// let m = mean_std(&[80.0, 82.0, 84.0])?;
/// assert_eq!((m.mean, m.std), (82.0, 2.0));
/// assert_eq!(format!("{m:.1}"), "82.0 ± 2.0");
/// # Ok::<(), replens::Error>(())
/// ```
pub fn mean_std(values: &[f64]) -> Result<MeanStd> {
    if values.is_empty() {
        return Err(invalid("mean_std: no values".into()));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(invalid(format!(
            "mean_std: value {i} is {} (must be finite)",
            values[i]
        )));
    }
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let std = if n > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    Ok(MeanStd { mean, std, n })
}
