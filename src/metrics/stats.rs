//! Small statistics used by the metrics: percentile bootstrap confidence intervals (one
//! sample and paired), Pearson correlation, quantiles.
//!
//! Bootstrap: Efron & Tibshirani, *An Introduction to the Bootstrap* (1993), ch. 13 — the
//! percentile interval [q_{(1−level)/2}, q_{(1+level)/2}] of the statistic over resamples
//! drawn with replacement. Resampling is seeded ([`rand::rngs::StdRng`]) so every interval
//! is reproducible.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// A point estimate with a confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ci {
    /// The statistic on the original sample.
    pub estimate: f64,
    /// Lower end of the interval.
    pub lower: f64,
    /// Upper end of the interval.
    pub upper: f64,
    /// Nominal coverage, e.g. 0.95.
    pub level: f64,
    /// Resamples whose statistic was finite (the interval is computed from these; a
    /// resample can be undefined, e.g. a correlation of a resample with constant x).
    pub n_valid: usize,
}

impl Ci {
    /// upper − lower.
    pub fn width(&self) -> f64 {
        self.upper - self.lower
    }

    /// Whether `x` lies in [lower, upper].
    pub fn contains(&self, x: f64) -> bool {
        self.lower <= x && x <= self.upper
    }
}

impl std::fmt::Display for Ci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.4} [{:.4}, {:.4}] ({:.0}% CI)",
            self.estimate,
            self.lower,
            self.upper,
            self.level * 100.0
        )
    }
}

/// Arithmetic mean (NaN for an empty slice).
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Quantile `q ∈ [0, 1]` of an ascending-sorted slice with linear interpolation between
/// order statistics (numpy's default `linear` method). NaN for an empty slice.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    let frac = pos - lo as f64;
    match (sorted.get(lo), sorted.get(hi)) {
        (Some(&a), Some(&b)) => a + (b - a) * frac,
        _ => f64::NAN,
    }
}

fn check_args(what: &str, values: &[f64], n_resamples: usize, level: f64) -> Result<()> {
    if values.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{what}: no values to resample"
        )));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::InvalidInput(format!(
            "{what}: value {i} is not finite ({})",
            values[i]
        )));
    }
    if n_resamples == 0 {
        return Err(Error::InvalidInput(format!(
            "{what}: n_resamples must be ≥ 1"
        )));
    }
    if !(level > 0.0 && level < 1.0) {
        return Err(Error::InvalidInput(format!(
            "{what}: level must be in (0, 1), got {level}"
        )));
    }
    Ok(())
}

fn interval(what: &str, estimate: f64, mut stats: Vec<f64>, level: f64) -> Result<Ci> {
    if !estimate.is_finite() {
        return Err(Error::InvalidInput(format!(
            "{what}: the statistic of the original sample is not finite ({estimate})"
        )));
    }
    stats.retain(|s| s.is_finite());
    if stats.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{what}: the statistic was undefined on every resample"
        )));
    }
    stats.sort_by(|a, b| a.total_cmp(b));
    let alpha = 1.0 - level;
    Ok(Ci {
        estimate,
        lower: quantile(&stats, alpha / 2.0),
        upper: quantile(&stats, 1.0 - alpha / 2.0),
        level,
        n_valid: stats.len(),
    })
}

/// Percentile-bootstrap confidence interval of `stat` over `values`.
///
/// ```
/// use replens::metrics::stats::{bootstrap_ci, mean};
/// let x: Vec<f64> = (0..200).map(|i| (i % 10) as f64).collect();
/// let ci = bootstrap_ci(&x, mean, 2000, 0.95, 7)?;
/// assert!(ci.contains(4.5) && ci.lower < ci.estimate && ci.estimate < ci.upper);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn bootstrap_ci(
    values: &[f64],
    stat: impl Fn(&[f64]) -> f64,
    n_resamples: usize,
    level: f64,
    seed: u64,
) -> Result<Ci> {
    check_args("bootstrap_ci", values, n_resamples, level)?;
    let n = values.len();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut buf = vec![0.0; n];
    let mut stats = Vec::with_capacity(n_resamples);
    for _ in 0..n_resamples {
        for b in buf.iter_mut() {
            *b = values[rng.gen_range(0..n)];
        }
        stats.push(stat(&buf));
    }
    interval("bootstrap_ci", stat(values), stats, level)
}

/// Percentile-bootstrap CI of a statistic of two aligned samples (`x[i]` and `y[i]` belong
/// to the same unit, e.g. one sentence under two models): indices are resampled jointly.
///
/// ```
/// use replens::metrics::stats::paired_bootstrap_ci;
/// use replens::metrics::erank::diff_erank;
/// let h0 = [2.0, 2.1, 1.9, 2.2, 2.0, 2.05];
/// let h1 = [1.0, 1.2, 0.9, 1.1, 1.0, 1.05];
/// let ci = paired_bootstrap_ci(&h0, &h1, diff_erank, 1000, 0.9, 1)?;
/// assert!(ci.lower > 0.0);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn paired_bootstrap_ci(
    x: &[f64],
    y: &[f64],
    stat: impl Fn(&[f64], &[f64]) -> f64,
    n_resamples: usize,
    level: f64,
    seed: u64,
) -> Result<Ci> {
    if x.len() != y.len() {
        return Err(Error::InvalidInput(format!(
            "paired_bootstrap_ci: samples are not aligned ({} vs {} values)",
            x.len(),
            y.len()
        )));
    }
    check_args("paired_bootstrap_ci (x)", x, n_resamples, level)?;
    check_args("paired_bootstrap_ci (y)", y, n_resamples, level)?;
    let n = x.len();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut bx, mut by) = (vec![0.0; n], vec![0.0; n]);
    let mut stats = Vec::with_capacity(n_resamples);
    for _ in 0..n_resamples {
        for (a, b) in bx.iter_mut().zip(by.iter_mut()) {
            let i = rng.gen_range(0..n);
            *a = x[i];
            *b = y[i];
        }
        stats.push(stat(&bx, &by));
    }
    interval("paired_bootstrap_ci", stat(x, y), stats, level)
}

/// Pearson correlation without argument checks: NaN when undefined (n < 2, a constant
/// sample, different lengths). Handy as a bootstrap statistic.
pub fn pearson_unchecked(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len();
    if n < 2 || y.len() != n {
        return f64::NAN;
    }
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0)
}

/// Pearson correlation coefficient r of two aligned samples.
///
/// ```
/// use replens::metrics::stats::pearson;
/// let r = pearson(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.1, 5.9, 8.0])?;
/// assert!(r > 0.99);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn pearson(x: &[f64], y: &[f64]) -> Result<f64> {
    if x.len() != y.len() {
        return Err(Error::InvalidInput(format!(
            "pearson: samples have different lengths ({} vs {})",
            x.len(),
            y.len()
        )));
    }
    if x.len() < 2 {
        return Err(Error::InvalidInput(format!(
            "pearson: needs at least 2 pairs, got {}",
            x.len()
        )));
    }
    for (name, v) in [("x", x), ("y", y)] {
        if let Some(i) = v.iter().position(|a| !a.is_finite()) {
            return Err(Error::InvalidInput(format!(
                "pearson: {name}[{i}] is not finite ({})",
                v[i]
            )));
        }
    }
    let r = pearson_unchecked(x, y);
    if r.is_nan() {
        return Err(Error::InvalidInput(
            "pearson: one sample is constant, the correlation is undefined".into(),
        ));
    }
    Ok(r)
}

/// Pearson r with a paired percentile-bootstrap CI (resamples whose x or y is constant are
/// left out and reported through [`Ci::n_valid`]).
pub fn pearson_ci(x: &[f64], y: &[f64], n_resamples: usize, level: f64, seed: u64) -> Result<Ci> {
    pearson(x, y)?;
    paired_bootstrap_ci(x, y, pearson_unchecked, n_resamples, level, seed)
}
