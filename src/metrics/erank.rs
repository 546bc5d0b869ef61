//! Effective rank (eRank) of representations and the Diff-eRank metric.
//!
//! Wei, Tan, Li, Wang & Huang, *Diff-eRank: A Novel Rank-Based Metric for Evaluating Large
//! Language Models*, NeurIPS 2024 (arXiv 2401.17139; official code
//! `github.com/waltonfuture/Diff-eRank`).
//!
//! For one sentence the representation R is the `N x d` matrix of hidden states (one row per
//! token). With μ the column mean of R,
//!
//! ```text
//!   z_i = (r_i − μ) / ‖r_i − μ‖            (centre, then L2-normalise every row)
//!   A   = ZᵀZ / N                           (d × d, PSD, trace 1)
//!   λ   = eigenvalues of A / tr(A)          (= its singular values: A is symmetric PSD)
//!   H   = −Σ_k λ_k ln λ_k                   (0 · ln 0 = 0)
//!   eRank(R) = exp(H)
//! ```
//!
//! and for a dataset D, a trained model M1 and the same architecture randomly initialised M0,
//!
//! ```text
//!   Diff-eRank(D) = exp(mean_x H(M0, x)) − exp(mean_x H(M1, x))
//! ```
//!
//! averaging the per-sentence *entropies*, then exponentiating (as the official code does).
//! Sentences with N < 2 are skipped. Truncation to the paper's 2048 tokens is the caller's
//! choice (at tokenisation); nothing here truncates.
//!
//! # Implementation choices
//! * The non-zero spectrum of ZᵀZ (d × d) equals that of ZZᵀ (N × N); the smaller side is
//!   used ([`Side::Auto`]). The Gram product (its upper triangle, mirrored) is computed by
//!   `gemm` in f64 by default
//!   (f32 Gram is available through [`GramPrecision::F32`], but it leaves eigenvalue noise of
//!   ~1e-8 in place of exact zeros, which moves the entropy of a low-rank matrix by ~1e-4).
//! * Eigenvalues: Householder tridiagonalisation followed by implicit QL
//!   ([`symmetric_eigenvalues`]), O(n³) with a small constant, all in f64.
//! * Eigenvalues that come out ≤ 0 (rounding of exact zeros) contribute 0, like the
//!   official `nansum` over singular values.
//! * **Zero rows.** A row equal to the column mean is zero after centring and cannot be
//!   normalised (the official code gets NaN for the whole sentence). replens *skips* such rows
//!   and counts them in [`ErankReport::zero_rows`]: a row is treated as zero when
//!   `‖r_i − μ‖ ≤ 1e-12 · (‖r_i‖ + ‖μ‖)` (scale invariant, far above f64 rounding of the
//!   centring and far below any f32 difference). The mean is always taken over all N rows.
//! * **Degenerate inputs.** N < 2 and "every row is a zero row" (no variation at all) give an
//!   error from [`erank`]; the streaming accumulators skip and count them instead
//!   ([`Skip`]). NaN / ±inf anywhere is always an error naming the row and column.
//!
//! # Invariances (tested)
//! eRank is unchanged by a global scaling R → cR (c ≠ 0), by adding the same vector to every
//! row, by permuting rows, and by rotating the feature space R → RQ with Q orthogonal.
//! It is *not* invariant to scaling individual rows: centring happens before
//! normalisation, so a per-row scale changes the centred matrix.

use candle_core::Tensor;
use replens_kernels::{GramOf, Real};

use crate::error::{Context, Error, Result};
use crate::metrics::linalg::{self, Rows, Values};
use crate::metrics::stats::{paired_bootstrap_ci, Ci};

/// Relative tolerance under which a centred row counts as zero (see the module docs).
pub const ZERO_ROW_REL_TOL: f64 = 1e-12;

/// Which Gram matrix to diagonalise. Both have the same non-zero spectrum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Side {
    /// The smaller of the two (d × d when d ≤ N, else N × N).
    #[default]
    Auto,
    /// ZᵀZ / N, d × d (the paper's covariance).
    Covariance,
    /// ZZᵀ / N, N × N (cosine-similarity matrix of the centred rows).
    Gram,
}

/// Precision of the Gram product (the eigen-solve is always f64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GramPrecision {
    /// f64 everywhere (default; exact zeros of low-rank inputs stay ~1e-17).
    #[default]
    F64,
    /// f32 matmul, converted to f64 for the eigen-solve (about 2x faster Gram product).
    F32,
}

/// Options for [`erank_report_with`] and the accumulators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErankOptions {
    pub side: Side,
    pub precision: GramPrecision,
}

/// Everything computed for one representation matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct ErankReport {
    /// Matrix entropy H = −Σ λ ln λ (nats).
    pub entropy: f64,
    /// exp(H).
    pub erank: f64,
    /// Rows given (N).
    pub rows: usize,
    /// Feature dimension d.
    pub dim: usize,
    /// Rows skipped because they were zero after centring.
    pub zero_rows: usize,
    /// Which side was diagonalised (never `Auto`).
    pub side: Side,
    /// Normalised eigenvalues λ (sum 1), descending; negatives from rounding clamped to 0.
    pub spectrum: Vec<f64>,
}

/// Why a sentence could not be given an eRank (the accumulators count these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Fewer than 2 rows (the paper skips sentences with N < 2).
    TooFewRows { rows: usize },
    /// Every row equals the column mean: nothing left after centring.
    NoVariation { rows: usize },
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::TooFewRows { rows } => write!(
                f,
                "eRank needs at least 2 rows (tokens), got {rows}; the paper skips such sentences"
            ),
            Skip::NoVariation { rows } => write!(
                f,
                "all {rows} rows are identical (zero after centring): eRank is undefined"
            ),
        }
    }
}

/// Result of [`erank_or_skip`]: a computed eRank, or the reason it was skipped.
#[derive(Debug, Clone, PartialEq)]
pub enum SentenceErank {
    Computed(ErankReport),
    Skipped(Skip),
}

/// eRank of one `N x d` representation matrix (N ≥ 2): exp of the matrix entropy of the
/// trace-normalised covariance of its centred, L2-normalised rows (Wei et al. 2024, Def. of
/// eRank; arXiv 2401.17139). See the module docs for zero rows and degenerate input.
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// use replens::metrics::erank::erank;
/// // Three points on a line: after centring every row is ±v, so the effective rank is 1.
/// let r = Tensor::new(&[[1f32, 2., 3.], [2., 4., 6.], [4., 8., 12.]], &Device::Cpu)?;
/// assert!((erank(&r)? - 1.0).abs() < 1e-9);
/// // Four orthogonal directions around the origin (±e1, ±e2): eRank 2.
/// let r = Tensor::new(&[[1f32, 0.], [-1., 0.], [0., 1.], [0., -1.]], &Device::Cpu)?;
/// assert!((erank(&r)? - 2.0).abs() < 1e-9);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn erank(r: &Tensor) -> Result<f64> {
    Ok(erank_report(r)?.erank)
}

/// Matrix entropy H (nats) of one `N x d` representation; `erank = exp(entropy)`.
pub fn entropy(r: &Tensor) -> Result<f64> {
    Ok(erank_report(r)?.entropy)
}

/// [`erank`] with the full report (spectrum, skipped zero rows, side used).
pub fn erank_report(r: &Tensor) -> Result<ErankReport> {
    erank_report_with(r, &ErankOptions::default())
}

/// [`erank_report`] with explicit options.
pub fn erank_report_with(r: &Tensor, opts: &ErankOptions) -> Result<ErankReport> {
    match erank_or_skip(r, opts)? {
        SentenceErank::Computed(rep) => Ok(rep),
        SentenceErank::Skipped(skip) => Err(Error::InvalidInput(skip.to_string())),
    }
}

/// Like [`erank_report_with`], but degenerate input (N < 2, no variation) is returned as
/// [`SentenceErank::Skipped`] instead of an error. NaN/inf and wrong shapes are still errors.
pub fn erank_or_skip(r: &Tensor, opts: &ErankOptions) -> Result<SentenceErank> {
    let (n, d, prepared) = with_read_rows(r, |rows, n, d| {
        let mean = finite_column_means(rows, n, d)?;
        let units = (n >= 2).then(|| unit_rows(rows, d, &mean, opts.precision));
        Ok((n, d, units))
    })?;
    let Some((z, used)) = prepared else {
        return Ok(SentenceErank::Skipped(Skip::TooFewRows { rows: n }));
    };
    if used == 0 {
        return Ok(SentenceErank::Skipped(Skip::NoVariation { rows: n }));
    }
    let side = match opts.side {
        Side::Auto if d <= used => Side::Covariance,
        Side::Auto => Side::Gram,
        s => s,
    };
    let gram = gram_matrix(&z, used, d, side);
    drop(z);
    let m = if side == Side::Covariance { d } else { used };
    let eig = symmetric_eigenvalues(gram, m)?;
    let (entropy, spectrum) = spectrum_entropy(&eig)?;
    Ok(SentenceErank::Computed(ErankReport {
        entropy,
        erank: entropy.exp(),
        rows: n,
        dim: d,
        zero_rows: n - used,
        side,
        spectrum,
    }))
}

/// Entropy of a spectrum (e.g. eigenvalues computed elsewhere): λ normalised to sum 1
/// (non-positive values count as 0), H = −Σ λ ln λ. Errors on an all-zero or non-finite
/// spectrum.
pub fn entropy_from_eigenvalues(eigenvalues: &[f64]) -> Result<f64> {
    Ok(spectrum_entropy(eigenvalues)?.0)
}

fn spectrum_entropy(eigenvalues: &[f64]) -> Result<(f64, Vec<f64>)> {
    if let Some(bad) = eigenvalues.iter().find(|v| !v.is_finite()) {
        return Err(Error::InvalidInput(format!(
            "spectrum contains a non-finite eigenvalue ({bad})"
        )));
    }
    let total: f64 = eigenvalues.iter().filter(|&&v| v > 0.0).sum();
    if total <= 0.0 {
        return Err(Error::InvalidInput(
            "spectrum has no positive eigenvalue: entropy undefined".into(),
        ));
    }
    let mut lam: Vec<f64> = eigenvalues
        .iter()
        .map(|&v| if v > 0.0 { v / total } else { 0.0 })
        .collect();
    lam.sort_by(|a, b| b.total_cmp(a));
    let h = -lam
        .iter()
        .filter(|&&l| l > 0.0)
        .map(|&l| l * l.ln())
        .sum::<f64>();
    // Rounding can give −1e-17 for a rank-1 spectrum; entropy is never negative.
    Ok((h.max(0.0), lam))
}

/// Runs `f` on the values of a `(N, d)` tensor of any float dtype with N and d: f32 and f64
/// read in place when contiguous (no copy), other dtypes converted to f64; every later step
/// still computes in f64. NaN / inf are checked later, by [`finite_column_means`] or
/// [`check_rows_finite`].
fn with_read_rows<R>(
    r: &Tensor,
    mut f: impl FnMut(Rows<'_>, usize, usize) -> Result<R>,
) -> Result<R> {
    let (n, d) = r.dims2().map_err(|_| {
        Error::InvalidInput(format!(
            "eRank expects a 2-D (tokens, d) tensor, got shape {:?}",
            r.dims()
        ))
    })?;
    if d == 0 {
        return Err(Error::InvalidInput(format!(
            "eRank expects a (tokens, d) tensor with d ≥ 1, got shape {:?}",
            r.dims()
        )));
    }
    linalg::with_rows(r, |rows| f(rows, n, d))
        .context(|| format!("eRank: reading the {n}x{d} representation"))?
}

/// The error for the non-finite value `v` at flat index `pos` of a row-major matrix of width `d`.
fn non_finite(v: f64, pos: usize, d: usize) -> Error {
    let what = if v.is_nan() {
        "NaN"
    } else {
        "an infinite value"
    };
    Error::InvalidInput(format!(
        "eRank input contains {what} ({v}) at row {}, column {}",
        pos / d,
        pos % d
    ))
}

fn check_finite<T: Real>(data: &[T], d: usize) -> Result<()> {
    match replens_kernels::first_non_finite(data) {
        Some(pos) => Err(non_finite(data[pos].into(), pos, d)),
        None => Ok(()),
    }
}

fn check_rows_finite(rows: Rows<'_>, d: usize) -> Result<()> {
    match rows {
        Rows::F32(x) => check_finite(x, d),
        Rows::F64(x) => check_finite(x, d),
    }
}

/// Column sums of the rows, checking every value is finite on the way.
fn finite_column_sums(rows: Rows<'_>, d: usize) -> Result<Vec<f64>> {
    fn of<T: Real>(x: &[T], d: usize) -> Result<Vec<f64>> {
        replens_kernels::column_sums(x, d).map_err(|pos| non_finite(x[pos].into(), pos, d))
    }
    match rows {
        Rows::F32(x) => of(x, d),
        Rows::F64(x) => of(x, d),
    }
}

/// Column means of the `n` rows (zeros when there are none), checking every value is finite.
fn finite_column_means(rows: Rows<'_>, n: usize, d: usize) -> Result<Vec<f64>> {
    let inv = 1.0 / n.max(1) as f64;
    Ok(finite_column_sums(rows, d)?
        .into_iter()
        .map(|s| s * inv)
        .collect())
}

/// Centre every row by `mean`, drop zero rows (see [`ZERO_ROW_REL_TOL`]), L2-normalise the
/// rest, in f64, rounded once to `U`. Returns the kept unit rows (row-major) and their count.
fn centred_unit_rows<U: Real>(rows: Rows<'_>, d: usize, mean: &[f64]) -> (Vec<U>, usize) {
    let mut z = Vec::new();
    let kept = match rows {
        Rows::F32(x) => replens_kernels::centred_unit_rows(x, d, mean, ZERO_ROW_REL_TOL, &mut z),
        Rows::F64(x) => replens_kernels::centred_unit_rows(x, d, mean, ZERO_ROW_REL_TOL, &mut z),
    };
    (z, kept)
}

/// Centred unit rows (see [`centred_unit_rows`]) in the precision of the Gram product.
fn unit_rows(rows: Rows<'_>, d: usize, mean: &[f64], precision: GramPrecision) -> (Values, usize) {
    match precision {
        GramPrecision::F64 => {
            let (z, used) = centred_unit_rows(rows, d, mean);
            (Values::F64(z), used)
        }
        GramPrecision::F32 => {
            let (z, used) = centred_unit_rows(rows, d, mean);
            (Values::F32(z), used)
        }
    }
}

/// ZᵀZ (d×d) or ZZᵀ (n×n) of the `n` unit rows, divided by n (as in the paper; the scale does
/// not matter after trace normalisation). Returned row-major in f64. Only the blocks on and
/// above the diagonal are multiplied ([`replens_kernels::add_gram_upper`]), then mirrored.
fn gram_matrix(z: &Values, n: usize, d: usize, side: Side) -> Vec<f64> {
    let (m, of) = match side {
        Side::Gram => (n, GramOf::Rows),
        Side::Covariance | Side::Auto => (d, GramOf::Columns),
    };
    let mut g = vec![0.0; m * m];
    z.add_gram_upper_to(&mut g, n, d, of);
    replens_kernels::mirror_upper(&mut g, m);
    let inv = 1.0 / n as f64;
    g.iter_mut().for_each(|v| *v *= inv);
    g
}

/// All eigenvalues of a real symmetric `n x n` matrix (row-major), sorted descending.
///
/// Householder reduction to tridiagonal form, then the implicit QL algorithm with Wilkinson
/// shifts (Golub & Van Loan, *Matrix Computations*, §8.3); eigenvalues only, O(4n³/3).
/// The input is symmetrised as (A + Aᵀ)/2 first (a Gram matrix from a blocked matmul is
/// symmetric only up to rounding). Errors on a wrong length, NaN/inf, or (never observed)
/// failure of QL to converge in 100 sweeps per eigenvalue.
pub fn symmetric_eigenvalues(a: Vec<f64>, n: usize) -> Result<Vec<f64>> {
    if a.len() != n * n {
        return Err(Error::InvalidInput(format!(
            "symmetric_eigenvalues: expected {n}x{n} = {} values, got {}",
            n * n,
            a.len()
        )));
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    check_finite(&a, n)?;
    let mut a = linalg::symmetrise(a, n);
    let mut diag = linalg::eigenvalues_in_place(&mut a, n)?;
    diag.sort_by(|x, y| y.total_cmp(x));
    Ok(diag)
}

// ---------------------------------------------------------------------------------------
// Streaming: per-sentence entropies (dataset-level Diff-eRank) and pooled covariance.
// ---------------------------------------------------------------------------------------

/// Dataset-level eRank of one model: exp(mean over sentences of H).
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetErank {
    /// exp(mean_entropy).
    pub erank: f64,
    /// Mean of the per-sentence entropies.
    pub mean_entropy: f64,
    /// Sentences that contributed an entropy.
    pub sentences: usize,
    /// Sentences skipped because N < 2.
    pub skipped_too_few_rows: usize,
    /// Sentences skipped because every row was identical.
    pub skipped_no_variation: usize,
    /// Zero rows skipped inside the sentences that were used.
    pub zero_rows: usize,
}

/// Consumes one sentence (`N_i x d`) at a time and keeps its entropy, for the dataset-level
/// eRank exp(mean H) of Diff-eRank. Working memory per call is O(min(N_i, d)²); the state
/// kept is one f64 per sentence (kept for bootstrap intervals) plus counters.
#[derive(Debug, Clone, Default)]
pub struct ErankAccumulator {
    opts: ErankOptions,
    entropies: Vec<f64>,
    skipped_too_few_rows: usize,
    skipped_no_variation: usize,
    zero_rows: usize,
    dim: Option<usize>,
    seen: usize,
}

impl ErankAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_options(opts: ErankOptions) -> Self {
        Self {
            opts,
            ..Self::default()
        }
    }

    /// Add one sentence. Returns its entropy, or `None` if it was skipped (N < 2 or no
    /// variation; counted). Errors on NaN/inf, a non-2-D tensor, or a feature dimension that
    /// differs from the earlier sentences'.
    pub fn push(&mut self, r: &Tensor) -> Result<Option<f64>> {
        let index = self.seen;
        let outcome = self.evaluate(r, index)?;
        self.seen += 1;
        Ok(self.record(&outcome))
    }

    fn evaluate(&mut self, r: &Tensor, index: usize) -> Result<SentenceErank> {
        if let Ok((_, d)) = r.dims2() {
            match self.dim {
                Some(d0) if d0 != d => {
                    return Err(Error::InvalidInput(format!(
                    "sentence {index}: feature dimension {d} differs from earlier sentences' {d0}"
                )))
                }
                _ => self.dim = Some(d),
            }
        }
        erank_or_skip(r, &self.opts).map_err(|e| match e {
            Error::InvalidInput(msg) => Error::InvalidInput(format!("sentence {index}: {msg}")),
            other => other,
        })
    }

    fn record(&mut self, outcome: &SentenceErank) -> Option<f64> {
        match outcome {
            SentenceErank::Computed(rep) => {
                self.entropies.push(rep.entropy);
                self.zero_rows += rep.zero_rows;
                Some(rep.entropy)
            }
            SentenceErank::Skipped(Skip::TooFewRows { .. }) => {
                self.skipped_too_few_rows += 1;
                None
            }
            SentenceErank::Skipped(Skip::NoVariation { .. }) => {
                self.skipped_no_variation += 1;
                None
            }
        }
    }

    /// Per-sentence entropies of the sentences used, in push order.
    pub fn entropies(&self) -> &[f64] {
        &self.entropies
    }

    /// Number of sentences that contributed an entropy.
    pub fn len(&self) -> usize {
        self.entropies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entropies.is_empty()
    }

    /// exp(mean H) with counts; errors if no sentence was usable.
    pub fn result(&self) -> Result<DatasetErank> {
        if self.entropies.is_empty() {
            return Err(Error::InvalidInput(format!(
                "no sentence had an eRank ({} pushed: {} with N < 2, {} without variation)",
                self.seen, self.skipped_too_few_rows, self.skipped_no_variation
            )));
        }
        let mean_entropy = mean(&self.entropies);
        Ok(DatasetErank {
            erank: mean_entropy.exp(),
            mean_entropy,
            sentences: self.entropies.len(),
            skipped_too_few_rows: self.skipped_too_few_rows,
            skipped_no_variation: self.skipped_no_variation,
            zero_rows: self.zero_rows,
        })
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Diff-eRank from per-sentence entropies: exp(mean H0) − exp(mean H1), H0 from the
/// untrained model, H1 from the trained one (Wei et al. 2024, Eq. for ΔeRank of a dataset).
/// The slices need not have the same length. An empty slice gives NaN.
///
/// ```
/// use replens::metrics::erank::diff_erank;
/// let h0 = [3.0f64.ln(), 5.0f64.ln()]; // geometric mean eRank sqrt(15)
/// let h1 = [2.0f64.ln(), 2.0f64.ln()]; // eRank 2
/// assert!((diff_erank(&h0, &h1) - (15f64.sqrt() - 2.0)).abs() < 1e-12);
/// ```
pub fn diff_erank(entropies_untrained: &[f64], entropies_trained: &[f64]) -> f64 {
    if entropies_untrained.is_empty() || entropies_trained.is_empty() {
        return f64::NAN;
    }
    mean(entropies_untrained).exp() - mean(entropies_trained).exp()
}

/// Dataset-level Diff-eRank with both eRanks and what was skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffErank {
    /// exp(mean H(M0, x)) − exp(mean H(M1, x)).
    pub diff: f64,
    /// The untrained (randomly initialised) model M0.
    pub untrained: DatasetErank,
    /// The trained model M1.
    pub trained: DatasetErank,
}

impl DiffErank {
    /// Combine two independently filled accumulators (as the official code does: each list
    /// is averaged on its own).
    pub fn from_accumulators(
        untrained: &ErankAccumulator,
        trained: &ErankAccumulator,
    ) -> Result<Self> {
        let untrained = untrained.result()?;
        let trained = trained.result()?;
        Ok(Self {
            diff: untrained.erank - trained.erank,
            untrained,
            trained,
        })
    }
}

/// Pairs each sentence's representation under the untrained and the trained model so that
/// the per-sentence entropies stay aligned (needed for a paired bootstrap). A pair is used
/// only when both sides have an eRank; otherwise it is skipped and counted on the side(s)
/// that were degenerate (the other side's counter for that reason is untouched).
#[derive(Debug, Clone, Default)]
pub struct DiffErankAccumulator {
    untrained: ErankAccumulator,
    trained: ErankAccumulator,
    unpaired: usize,
}

impl DiffErankAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_options(opts: ErankOptions) -> Self {
        Self {
            untrained: ErankAccumulator::with_options(opts),
            trained: ErankAccumulator::with_options(opts),
            unpaired: 0,
        }
    }

    /// Add one sentence seen by both models. Returns `Some((H0, H1))` when used.
    pub fn push_pair(
        &mut self,
        r_untrained: &Tensor,
        r_trained: &Tensor,
    ) -> Result<Option<(f64, f64)>> {
        let index = self.untrained.seen;
        let o0 = self
            .untrained
            .evaluate(r_untrained, index)
            .map_err(|e| prefix(e, "untrained model"))?;
        let o1 = self
            .trained
            .evaluate(r_trained, index)
            .map_err(|e| prefix(e, "trained model"))?;
        self.untrained.seen += 1;
        self.trained.seen += 1;
        match (&o0, &o1) {
            (SentenceErank::Computed(_), SentenceErank::Computed(_)) => {
                let h0 = self.untrained.record(&o0);
                let h1 = self.trained.record(&o1);
                Ok(h0.zip(h1))
            }
            _ => {
                for (acc, o) in [(&mut self.untrained, &o0), (&mut self.trained, &o1)] {
                    if let SentenceErank::Skipped(_) = o {
                        acc.record(o);
                    }
                }
                self.unpaired += 1;
                Ok(None)
            }
        }
    }

    /// Aligned per-sentence entropies (untrained, trained).
    pub fn entropies(&self) -> (&[f64], &[f64]) {
        (self.untrained.entropies(), self.trained.entropies())
    }

    /// Sentences dropped because at least one side was degenerate.
    pub fn skipped_pairs(&self) -> usize {
        self.unpaired
    }

    pub fn result(&self) -> Result<DiffErank> {
        DiffErank::from_accumulators(&self.untrained, &self.trained)
    }

    /// Percentile-bootstrap CI of Diff-eRank, resampling sentences jointly (paired).
    pub fn bootstrap_ci(&self, n_resamples: usize, level: f64, seed: u64) -> Result<Ci> {
        let (h0, h1) = self.entropies();
        paired_bootstrap_ci(h0, h1, diff_erank, n_resamples, level, seed)
    }
}

fn prefix(e: Error, what: &str) -> Error {
    match e {
        Error::InvalidInput(msg) => Error::InvalidInput(format!("{what}, {msg}")),
        other => other,
    }
}

/// Streaming column mean over rows (pass 1 of the pooled eRank). O(d) state.
#[derive(Debug, Clone)]
pub struct ColumnMeanAccumulator {
    sum: Vec<f64>,
    rows: usize,
}

impl ColumnMeanAccumulator {
    pub fn new(dim: usize) -> Self {
        Self {
            sum: vec![0.0; dim],
            rows: 0,
        }
    }

    /// Add a block of rows `(n, d)`.
    pub fn push(&mut self, r: &Tensor) -> Result<()> {
        let (sums, n) = with_read_rows(r, |rows, n, d| {
            check_dim(d, self.sum.len())?;
            Ok((finite_column_sums(rows, d)?, n))
        })?;
        for (s, b) in self.sum.iter_mut().zip(sums) {
            *s += b;
        }
        self.rows += n;
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The column mean; errors if no row was pushed.
    pub fn mean(&self) -> Result<Vec<f64>> {
        if self.rows == 0 {
            return Err(Error::InvalidInput(
                "column mean of zero rows: push at least one row".into(),
            ));
        }
        let inv = 1.0 / self.rows as f64;
        Ok(self.sum.iter().map(|s| s * inv).collect())
    }
}

fn check_dim(got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::InvalidInput(format!(
            "feature dimension {got} differs from the accumulator's {want}"
        )));
    }
    Ok(())
}

/// How [`CovarianceAccumulator`] centres rows before normalising them.
#[derive(Debug, Clone, PartialEq)]
pub enum Centring {
    /// Subtract this (pooled) column mean from every row, e.g. from a first pass with
    /// [`ColumnMeanAccumulator`]. With the pooled mean the result equals [`erank`] of the
    /// concatenated rows.
    Mean(Vec<f64>),
    /// Centre every pushed block by its own column mean (e.g. one sentence at a time):
    /// the eRank of the pool of per-sentence-centred rows.
    PerBlock,
}

/// Streaming Σ z zᵀ (d × d, f64) over centred, unit-normalised rows, giving the eRank of a
/// whole corpus' pooled rows without holding the `N x d` matrix. Rows are centred (see
/// [`Centring`]) — the normalisation is non-linear, so exact pooled centring needs the mean
/// first (two passes). Zero rows are skipped and counted as in [`erank`].
#[derive(Debug, Clone)]
pub struct CovarianceAccumulator {
    dim: usize,
    centring: Centring,
    precision: GramPrecision,
    /// Σ z zᵀ on and above the diagonal blocks ([`replens_kernels::add_gram_upper`]).
    sum: Vec<f64>,
    rows: usize,
    zero_rows: usize,
}

impl CovarianceAccumulator {
    pub fn new(dim: usize, centring: Centring) -> Result<Self> {
        if dim == 0 {
            return Err(Error::InvalidInput(
                "covariance accumulator needs d ≥ 1".into(),
            ));
        }
        if let Centring::Mean(m) = &centring {
            check_dim(m.len(), dim)?;
            check_finite(m, dim)?;
        }
        Ok(Self {
            dim,
            centring,
            precision: GramPrecision::F64,
            sum: vec![0.0; dim * dim],
            rows: 0,
            zero_rows: 0,
        })
    }

    /// The precision of each pushed block's Gram product (default f64). With
    /// [`GramPrecision::F32`] a block's ZᵀZ is formed in f32 (the reference implementation's
    /// precision, about twice as fast) and added to the running sum in f64, so rounding does
    /// not grow with the number of blocks.
    ///
    /// ```
    /// use replens::candle_core::{Device, Tensor};
    /// use replens::metrics::erank::{erank, Centring, CovarianceAccumulator, GramPrecision};
    /// let r = Tensor::new(&[[1f32, 0.], [-1., 0.], [0., 1.], [0., -1.]], &Device::Cpu)?;
    /// let mut acc = CovarianceAccumulator::new(2, Centring::Mean(vec![0.0, 0.0]))?
    ///     .with_precision(GramPrecision::F32);
    /// acc.push(&r)?;
    /// assert!((acc.report()?.erank - erank(&r)?).abs() < 1e-6);
    /// # Ok::<(), replens::Error>(())
    /// ```
    pub fn with_precision(mut self, precision: GramPrecision) -> Self {
        self.precision = precision;
        self
    }

    /// Add a block of rows `(n, d)`.
    pub fn push(&mut self, r: &Tensor) -> Result<()> {
        let (dim, centring, precision) = (self.dim, &self.centring, self.precision);
        let prepared = with_read_rows(r, |rows, n, d| {
            check_dim(d, dim)?;
            if n == 0 {
                return Ok(None);
            }
            let block_mean;
            let mean: &[f64] = match centring {
                Centring::Mean(m) => {
                    check_rows_finite(rows, d)?;
                    m
                }
                Centring::PerBlock => {
                    block_mean = finite_column_means(rows, n, d)?;
                    &block_mean
                }
            };
            Ok(Some((unit_rows(rows, d, mean, precision), n, d)))
        })?;
        let Some(((z, used), n, d)) = prepared else {
            return Ok(());
        };
        self.rows += n;
        self.zero_rows += n - used;
        // Blocks on and above the diagonal only; `report` mirrors them.
        z.add_gram_upper_to(&mut self.sum, used, d, GramOf::Columns);
        Ok(())
    }

    /// Rows pushed (including zero rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// eRank of the pooled rows (`side` is `Covariance`, `rows` counts all rows pushed).
    pub fn report(&self) -> Result<ErankReport> {
        let used = self.rows - self.zero_rows;
        if used == 0 {
            return Err(Error::InvalidInput(format!(
                "covariance accumulator: no usable row ({} pushed, {} zero after centring)",
                self.rows, self.zero_rows
            )));
        }
        let inv = 1.0 / used as f64;
        let mut a: Vec<f64> = self.sum.iter().map(|s| s * inv).collect();
        replens_kernels::mirror_upper(&mut a, self.dim);
        let eig = symmetric_eigenvalues(a, self.dim)?;
        let (entropy, spectrum) = spectrum_entropy(&eig)?;
        Ok(ErankReport {
            entropy,
            erank: entropy.exp(),
            rows: self.rows,
            dim: self.dim,
            zero_rows: self.zero_rows,
            side: Side::Covariance,
            spectrum,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Multi-modal (LLaVA part of the paper): eRank of any set of representations and ratios.
// ---------------------------------------------------------------------------------------

/// eRank(a) / eRank(b) for two sets of representations (any widths).
pub fn erank_ratio(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok(erank(a)? / erank(b)?)
}

/// Image-reduction ratio of a multi-modal model's projector (Wei et al. 2024, multi-modal
/// section):
/// (eRank(before projector) − eRank(after projector)) / eRank(before projector),
/// with `before` the vision encoder's image-token states `(tokens, d_vision)` and `after`
/// the projector's outputs `(tokens, d_llm)` for the same image.
pub fn image_reduction_ratio(before_projector: &Tensor, after_projector: &Tensor) -> Result<f64> {
    let e0 = erank(before_projector)?;
    let e1 = erank(after_projector)?;
    Ok(reduction_ratio(e0, e1))
}

/// (erank_before − erank_after) / erank_before, for eRanks computed elsewhere.
pub fn reduction_ratio(erank_before: f64, erank_after: f64) -> f64 {
    (erank_before - erank_after) / erank_before
}

/// Image–text alignment of a multi-modal model (Wei et al. 2024, multi-modal section):
/// how close the eRanks of the LLM's image-token states (`image`), text-token states (`text`)
/// and the states of the image–text pair (`pair`) are, as
/// `min(eRank₃, eRank₄, eRank₅) / max(eRank₃, eRank₄, eRank₅)` ∈ (0, 1], 1 = the three sets
/// are equally "spread". This is the definition as we read it in the paper (its official code
/// ships no implementation of the multi-modal part); inputs are `(tokens, d)` matrices of any
/// widths.
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// use replens::metrics::erank::image_text_alignment;
/// // ±e1, ±e2 has eRank 2; ±e1..±e4 has eRank 4.
/// let two = Tensor::new(&[[1f32, 0.], [-1., 0.], [0., 1.], [0., -1.]], &Device::Cpu)?;
/// let four = Tensor::eye(4, replens::candle_core::DType::F32, &Device::Cpu)?;
/// let four = Tensor::cat(&[&four, &four.neg()?], 0)?;
/// assert!((image_text_alignment(&two, &two, &four)? - 0.5).abs() < 1e-9);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn image_text_alignment(image: &Tensor, text: &Tensor, pair: &Tensor) -> Result<f64> {
    alignment_of_eranks(&[erank(image)?, erank(text)?, erank(pair)?])
}

/// `min / max` of eRanks computed elsewhere (see [`image_text_alignment`]); errors on an empty
/// slice or a non-positive / non-finite eRank.
pub fn alignment_of_eranks(eranks: &[f64]) -> Result<f64> {
    if eranks.is_empty() {
        return Err(Error::InvalidInput(
            "alignment_of_eranks: no eRank given".into(),
        ));
    }
    if let Some(bad) = eranks.iter().find(|e| !e.is_finite() || **e <= 0.0) {
        return Err(Error::InvalidInput(format!(
            "alignment_of_eranks: eRanks must be finite and positive, got {bad}"
        )));
    }
    let min = eranks.iter().copied().fold(f64::INFINITY, f64::min);
    let max = eranks.iter().copied().fold(0.0, f64::max);
    Ok(min / max)
}
