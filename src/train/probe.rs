//! Linear probes: L2-penalised logistic regression (binary and multinomial) on frozen
//! features, fitted full-batch in f64 with L-BFGS.
//!
//! # The model
//! Binary (2 classes): `P(y = 1 | x) = σ(wᵀx + b)`. Multinomial (K ≥ 3 classes):
//! `P(y = k | x) = softmax(Wᵀx + b)_k` with one weight vector per class (the symmetric,
//! over-parametrised form that the penalty makes identifiable, as scikit-learn's).
//!
//! # The objective
//! scikit-learn's `LogisticRegression(penalty="l2", C=C)`:
//!
//! ```text
//!   minimise  ½‖W‖²_F + C · Σ_i ℓ(y_i, Wᵀx_i + b)        (the intercept b is not penalised)
//! ```
//!
//! with ℓ the cross-entropy. It is minimised in the equivalent form
//! `f(θ) = (1/n) Σ_i ℓ_i + ‖W‖²/(2Cn)`, whose gradient has a scale that does not grow with n,
//! so one tolerance fits every data size (scikit-learn ≥ 1.1 scales its loss the same way).
//!
//! # The solver and its convergence criterion
//! L-BFGS (Nocedal & Wright, *Numerical Optimization*, 2nd ed., Alg. 7.4/7.5) with a history
//! of [`LogisticRegression::history`] pairs and a backtracking Armijo line search. The
//! objective is strongly convex (modulus ≥ 1/(Cn)), so every accepted step has sᵀy > 0 and
//! the quasi-Newton update stays positive definite. **Stop when ‖∇f(θ)‖_∞ ≤ `tol`**
//! (default 1e-6 on the mean-scaled objective, i.e. 100× tighter than scikit-learn's default
//! `tol=1e-4` on the same quantity), or after `max_iter` iterations, or when the line search
//! can no longer decrease f in floating point; [`LogisticModel::converged`] says whether the
//! gradient criterion was met. Products with X run through candle's f64 matmul; nothing is
//! random, so two fits on the same data give bit-identical coefficients.
//!
//! ```
//! use replens::candle_core::{Device, Tensor};
//! use replens::train::probe::LogisticRegression;
//! // Two separable-ish clusters on a line.
//! let x = Tensor::new(&[[-2.0f64], [-1.5], [-1.0], [-0.2], [0.3], [1.0], [1.4], [2.2]], &Device::Cpu)?;
//! let y = [0u32, 0, 0, 0, 1, 1, 1, 1];
//! let model = LogisticRegression::new().c(10.0).fit(&x, &y)?;
//! assert!(model.converged);
//! assert_eq!(model.predict(&x)?, y.to_vec());
//! assert_eq!(model.accuracy(&x, &y)?, 1.0);
//! let p = model.predict_proba(&x)?.to_vec2::<f64>()?;
//! assert!(p[0][0] > 0.9 && (p[0][0] + p[0][1] - 1.0).abs() < 1e-12);
//! # Ok::<(), replens::Error>(())
//! ```

use candle_core::{DType, Device, Tensor};

use crate::error::{Context, Error, Result};

/// A dense row-major f64 matrix checked to be finite: the input format of the probes and of
/// the two-sample tests in [`crate::metrics::shift`].
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    data: Vec<f64>,
    rows: usize,
    cols: usize,
}

impl Matrix {
    /// Wrap row-major `data` of shape `rows × cols`. Errors (naming `what`) on a length that
    /// does not match, zero rows or columns, or a NaN / infinite entry.
    pub fn new(what: &str, data: Vec<f64>, rows: usize, cols: usize) -> Result<Matrix> {
        if rows == 0 {
            return Err(Error::InvalidInput(format!("{what} has no rows")));
        }
        if cols == 0 {
            return Err(Error::InvalidInput(format!(
                "{what} has no columns (shape ({rows}, 0))"
            )));
        }
        if data.len() != rows * cols {
            return Err(Error::InvalidInput(format!(
                "{what}: {} values do not fill a {rows}×{cols} matrix",
                data.len()
            )));
        }
        if let Some(pos) = data.iter().position(|v| !v.is_finite()) {
            let v = data[pos];
            let kind = if v.is_nan() {
                "NaN"
            } else {
                "an infinite value"
            };
            return Err(Error::InvalidInput(format!(
                "{what} contains {kind} ({v}) at row {}, column {}",
                pos / cols,
                pos % cols
            )));
        }
        Ok(Matrix { data, rows, cols })
    }

    /// Read a 2-D tensor of any float dtype (f16, bf16, f32, f64) as f64. Errors name `what`
    /// and the shape, or the row and column of the first NaN / infinite entry.
    pub fn from_tensor(what: &str, x: &Tensor) -> Result<Matrix> {
        let (rows, cols) = x.dims2().map_err(|_| {
            Error::InvalidInput(format!(
                "{what} must be a 2-D (rows, features) tensor, got shape {:?}",
                x.dims()
            ))
        })?;
        if !x.dtype().is_float() {
            return Err(Error::InvalidInput(format!(
                "{what} must be a float tensor (f16, bf16, f32 or f64), got {:?}",
                x.dtype()
            )));
        }
        if rows == 0 || cols == 0 {
            return Err(Error::InvalidInput(format!(
                "{what} is empty (shape ({rows}, {cols}))"
            )));
        }
        let data = x
            .to_dtype(DType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .context(|| format!("reading {what} ({rows}×{cols}) as f64"))?;
        Matrix::new(what, data, rows, cols)
    }

    /// Number of rows (samples).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The row-major values.
    pub fn data(&self) -> &[f64] {
        &self.data
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The rows at `indices`, in that order.
    pub fn select_rows(&self, indices: &[usize]) -> Matrix {
        let mut data = Vec::with_capacity(indices.len() * self.cols);
        for &i in indices {
            data.extend_from_slice(self.row(i));
        }
        Matrix {
            data,
            rows: indices.len(),
            cols: self.cols,
        }
    }

    /// Stack the rows of `parts` (all with the same number of columns).
    pub fn vstack(what: &str, parts: &[&Matrix]) -> Result<Matrix> {
        let Some(first) = parts.first() else {
            return Err(Error::InvalidInput(format!("{what}: nothing to stack")));
        };
        let cols = first.cols;
        let mut data = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            if p.cols != cols {
                return Err(Error::InvalidInput(format!(
                    "{what}: part {i} has {} columns but part 0 has {cols}",
                    p.cols
                )));
            }
            data.extend_from_slice(&p.data);
        }
        let rows = data.len() / cols;
        Ok(Matrix { data, rows, cols })
    }

    /// The matrix as an `(rows, cols)` f64 tensor on the CPU.
    pub fn to_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.data,
            (self.rows, self.cols),
            &Device::Cpu,
        )?)
    }
}

/// Settings of an L2-penalised logistic regression (see the [module docs](self) for the
/// objective and the convergence criterion). Build with the chained setters.
///
/// ```
/// use replens::train::probe::LogisticRegression;
/// let lr = LogisticRegression::new().c(0.5).tol(1e-8).max_iter(500).standardize(true);
/// assert_eq!(lr.c, 0.5);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticRegression {
    /// Inverse penalty strength, scikit-learn's `C` (> 0; larger = weaker penalty).
    pub c: f64,
    /// Fit an unpenalised intercept (default `true`).
    pub fit_intercept: bool,
    /// Most L-BFGS iterations (default 1000).
    pub max_iter: usize,
    /// Stop when the largest absolute entry of the gradient of the mean-scaled objective is
    /// at most this (default 1e-6).
    pub tol: f64,
    /// L-BFGS memory: how many (s, y) pairs are kept (default 10).
    pub history: usize,
    /// Standardise every feature with the training mean and standard deviation before fitting
    /// (default `false`, as scikit-learn). The fitted model applies the same transform when
    /// predicting; its coefficients are then in standardised units.
    pub standardize: bool,
}

impl Default for LogisticRegression {
    fn default() -> Self {
        LogisticRegression {
            c: 1.0,
            fit_intercept: true,
            max_iter: 1000,
            tol: 1e-6,
            history: 10,
            standardize: false,
        }
    }
}

/// A fitted logistic regression.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticModel {
    /// Number of classes K (≥ 2).
    pub n_classes: usize,
    /// Number of input features d.
    pub n_features: usize,
    /// Coefficients, row-major: one row of d values for the binary model (the positive
    /// class, like scikit-learn's `coef_` of shape (1, d)), K rows for the multinomial one.
    pub coef: Vec<f64>,
    /// One intercept (binary) or K (multinomial).
    pub intercept: Vec<f64>,
    /// Feature means and standard deviations applied before the linear map (only with
    /// [`LogisticRegression::standardize`]).
    pub scaling: Option<(Vec<f64>, Vec<f64>)>,
    /// L-BFGS iterations taken.
    pub n_iter: usize,
    /// Whether ‖∇f‖_∞ ≤ tol was reached.
    pub converged: bool,
    /// Final value of the mean-scaled objective f.
    pub objective: f64,
    /// Final ‖∇f‖_∞.
    pub grad_norm: f64,
}

impl LogisticRegression {
    /// The defaults: C = 1, intercept, tol 1e-6, at most 1000 iterations.
    pub fn new() -> Self {
        Self::default()
    }
    pub fn c(mut self, c: f64) -> Self {
        self.c = c;
        self
    }
    pub fn fit_intercept(mut self, yes: bool) -> Self {
        self.fit_intercept = yes;
        self
    }
    pub fn max_iter(mut self, n: usize) -> Self {
        self.max_iter = n;
        self
    }
    pub fn tol(mut self, tol: f64) -> Self {
        self.tol = tol;
        self
    }
    pub fn history(mut self, m: usize) -> Self {
        self.history = m;
        self
    }
    pub fn standardize(mut self, yes: bool) -> Self {
        self.standardize = yes;
        self
    }

    /// Fit on an `(n, d)` float tensor and labels `y[i] ∈ {0, …, K−1}` (every class in that
    /// range must occur; K = max label + 1 ≥ 2).
    pub fn fit(&self, x: &Tensor, y: &[u32]) -> Result<LogisticModel> {
        self.fit_matrix(&Matrix::from_tensor("logistic regression: x", x)?, y)
    }

    /// [`fit`](Self::fit) on an already checked [`Matrix`].
    pub fn fit_matrix(&self, x: &Matrix, y: &[u32]) -> Result<LogisticModel> {
        let what = "logistic regression";
        if !(self.c > 0.0 && self.c.is_finite()) {
            return Err(Error::InvalidInput(format!(
                "{what}: C must be a positive number, got {}",
                self.c
            )));
        }
        if self.tol.is_nan() || self.tol <= 0.0 {
            return Err(Error::InvalidInput(format!(
                "{what}: tol must be > 0, got {}",
                self.tol
            )));
        }
        if self.history == 0 {
            return Err(Error::InvalidInput(format!("{what}: history must be ≥ 1")));
        }
        let (n, d) = (x.rows, x.cols);
        if y.len() != n {
            return Err(Error::InvalidInput(format!(
                "{what}: x has {n} rows but y has {} labels",
                y.len()
            )));
        }
        let n_classes = y.iter().copied().max().unwrap_or(0) as usize + 1;
        if n_classes < 2 {
            return Err(Error::InvalidInput(format!(
                "{what}: needs at least two classes, every label is {}",
                y[0]
            )));
        }
        let mut counts = vec![0usize; n_classes];
        for &l in y {
            counts[l as usize] += 1;
        }
        if let Some(k) = counts.iter().position(|&c| c == 0) {
            return Err(Error::InvalidInput(format!(
                "{what}: labels must be 0..{} with every class present; class {k} has no rows",
                n_classes - 1
            )));
        }

        let scaling = self.standardize.then(|| feature_scaling(x));
        let xs = match &scaling {
            Some((mean, sd)) => apply_scaling(x, mean, sd),
            None => x.clone(),
        };
        let problem = Problem::new(&xs, y, n_classes, self.c, self.fit_intercept)?;
        let out = lbfgs(&problem, self)?;
        let k = problem.k;
        // θ = [W (d×k, row-major), b (k)] → coef rows per class (k×d).
        let mut coef = vec![0.0; k * d];
        for j in 0..d {
            for c in 0..k {
                coef[c * d + j] = out.theta[j * k + c];
            }
        }
        let intercept = if self.fit_intercept {
            out.theta[d * k..].to_vec()
        } else {
            vec![0.0; k]
        };
        Ok(LogisticModel {
            n_classes,
            n_features: d,
            coef,
            intercept,
            scaling,
            n_iter: out.n_iter,
            converged: out.converged,
            objective: out.f,
            grad_norm: out.grad_norm,
        })
    }
}

fn feature_scaling(x: &Matrix) -> (Vec<f64>, Vec<f64>) {
    let (n, d) = (x.rows, x.cols);
    let mut mean = vec![0.0; d];
    for row in x.data.chunks_exact(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut var = vec![0.0; d];
    for row in x.data.chunks_exact(d) {
        for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (v - m) * (v - m);
        }
    }
    // A constant feature gets scale 1 (as scikit-learn's StandardScaler) instead of 1/0.
    let sd = var
        .iter()
        .map(|s| {
            let sd = (s / n as f64).sqrt();
            if sd > 0.0 {
                sd
            } else {
                1.0
            }
        })
        .collect();
    (mean, sd)
}

fn apply_scaling(x: &Matrix, mean: &[f64], sd: &[f64]) -> Matrix {
    let mut data = x.data.clone();
    for row in data.chunks_exact_mut(x.cols) {
        for ((v, m), s) in row.iter_mut().zip(mean).zip(sd) {
            *v = (*v - m) / s;
        }
    }
    Matrix {
        data,
        rows: x.rows,
        cols: x.cols,
    }
}

/// The data and the penalty of one fit; evaluates f and ∇f.
struct Problem {
    x: Tensor,
    xt: Tensor,
    y: Vec<u32>,
    n: usize,
    d: usize,
    /// Columns of W: 1 for the binary model, K for the multinomial one.
    k: usize,
    lambda: f64,
    intercept: bool,
}

impl Problem {
    fn new(x: &Matrix, y: &[u32], n_classes: usize, c: f64, intercept: bool) -> Result<Problem> {
        let xt = x.to_tensor()?;
        let xtt = xt.t()?.contiguous()?;
        Ok(Problem {
            x: xt,
            xt: xtt,
            y: y.to_vec(),
            n: x.rows,
            d: x.cols,
            k: if n_classes == 2 { 1 } else { n_classes },
            lambda: 1.0 / (c * x.rows as f64),
            intercept,
        })
    }

    fn dim(&self) -> usize {
        self.d * self.k + if self.intercept { self.k } else { 0 }
    }

    /// Linear scores Z = X W + b, `(n, k)` row-major.
    fn scores(&self, theta: &[f64]) -> Result<Vec<f64>> {
        let (d, k) = (self.d, self.k);
        let w = Tensor::from_slice(&theta[..d * k], (d, k), &Device::Cpu)?;
        let mut z = self.x.matmul(&w)?.flatten_all()?.to_vec1::<f64>()?;
        if self.intercept {
            let b = &theta[d * k..];
            for row in z.chunks_exact_mut(k) {
                for (v, bb) in row.iter_mut().zip(b) {
                    *v += bb;
                }
            }
        }
        Ok(z)
    }

    /// f(θ) and ∇f(θ).
    fn eval(&self, theta: &[f64]) -> Result<(f64, Vec<f64>)> {
        let (n, d, k) = (self.n, self.d, self.k);
        let mut g = self.scores(theta)?; // overwritten in place with ∂ℓ/∂z
        let mut loss = 0.0;
        if k == 1 {
            for (z, &y) in g.iter_mut().zip(&self.y) {
                // ℓ = log(1 + e^z) − y z, computed without overflow.
                let softplus = if *z > 0.0 {
                    *z + (-*z).exp().ln_1p()
                } else {
                    z.exp().ln_1p()
                };
                loss += softplus - if y == 1 { *z } else { 0.0 };
                *z = sigmoid(*z) - f64::from(y);
            }
        } else {
            for (row, &y) in g.chunks_exact_mut(k).zip(&self.y) {
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row.iter().map(|z| (z - max).exp()).sum();
                let lse = max + sum.ln();
                loss += lse - row[y as usize];
                for v in row.iter_mut() {
                    *v = (*v - lse).exp();
                }
                row[y as usize] -= 1.0;
            }
        }
        let inv_n = 1.0 / n as f64;
        let gm = Tensor::from_vec(g, (n, k), &Device::Cpu)?;
        let mut grad = self.xt.matmul(&gm)?.flatten_all()?.to_vec1::<f64>()?;
        let w = &theta[..d * k];
        let mut penalty = 0.0;
        for (gv, wv) in grad.iter_mut().zip(w) {
            *gv = *gv * inv_n + self.lambda * wv;
            penalty += wv * wv;
        }
        if self.intercept {
            let col_sums = gm.sum(0)?.to_vec1::<f64>()?;
            grad.extend(col_sums.iter().map(|s| s * inv_n));
        }
        Ok((loss * inv_n + 0.5 * self.lambda * penalty, grad))
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

struct LbfgsOut {
    theta: Vec<f64>,
    f: f64,
    grad_norm: f64,
    n_iter: usize,
    converged: bool,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn inf_norm(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn lbfgs(p: &Problem, cfg: &LogisticRegression) -> Result<LbfgsOut> {
    let dim = p.dim();
    let mut theta = vec![0.0; dim];
    let (mut f, mut g) = p.eval(&theta)?;
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut rho_hist: Vec<f64> = Vec::new();
    let mut n_iter = 0;
    let mut converged = inf_norm(&g) <= cfg.tol;
    while !converged && n_iter < cfg.max_iter {
        // Two-loop recursion: direction = −H g.
        let mut q = g.clone();
        let m = s_hist.len();
        let mut alpha = vec![0.0; m];
        for i in (0..m).rev() {
            alpha[i] = rho_hist[i] * dot(&s_hist[i], &q);
            for (qv, yv) in q.iter_mut().zip(&y_hist[i]) {
                *qv -= alpha[i] * yv;
            }
        }
        let gamma = match m {
            0 => 1.0 / inf_norm(&g).max(1.0),
            _ => dot(&s_hist[m - 1], &y_hist[m - 1]) / dot(&y_hist[m - 1], &y_hist[m - 1]),
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for i in 0..m {
            let beta = rho_hist[i] * dot(&y_hist[i], &q);
            for (qv, sv) in q.iter_mut().zip(&s_hist[i]) {
                *qv += (alpha[i] - beta) * sv;
            }
        }
        let dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        let dir = if slope < 0.0 {
            dir
        } else {
            // Cannot happen with exact arithmetic (H is positive definite); restart on −g.
            s_hist.clear();
            y_hist.clear();
            rho_hist.clear();
            slope = -dot(&g, &g);
            g.iter().map(|v| -v).collect()
        };

        // Backtracking Armijo search. The slack of a few ulps of f lets a step through when the
        // decrease is below f's rounding error but the gradient still shrinks.
        let mut step = 1.0;
        let slack = 4.0 * f64::EPSILON * f.abs();
        let mut accepted = None;
        for _ in 0..60 {
            let trial: Vec<f64> = theta.iter().zip(&dir).map(|(t, d)| t + step * d).collect();
            let (ft, gt) = p.eval(&trial)?;
            if ft.is_finite() && ft <= f + 1e-4 * step * slope + slack {
                accepted = Some((trial, ft, gt));
                break;
            }
            step *= 0.5;
        }
        n_iter += 1;
        let Some((trial, ft, gt)) = accepted else {
            break;
        };
        let s: Vec<f64> = trial.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = gt.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &yv);
        let progress = inf_norm(&s) > 0.0;
        theta = trial;
        f = ft;
        g = gt;
        if sy > 1e-300 {
            if s_hist.len() == cfg.history {
                s_hist.remove(0);
                y_hist.remove(0);
                rho_hist.remove(0);
            }
            s_hist.push(s);
            y_hist.push(yv);
            rho_hist.push(1.0 / sy);
        }
        converged = inf_norm(&g) <= cfg.tol;
        if !progress {
            break;
        }
    }
    if !f.is_finite() {
        return Err(Error::InvalidInput(
            "logistic regression: the objective became non-finite (features too large?)".into(),
        ));
    }
    Ok(LbfgsOut {
        grad_norm: inf_norm(&g),
        theta,
        f,
        n_iter,
        converged,
    })
}

impl LogisticModel {
    /// Class scores `(n, K')` (K' = 1 for the binary model: the log-odds of class 1).
    fn decision_rows(&self, x: &Matrix) -> Result<Vec<f64>> {
        if x.cols != self.n_features {
            return Err(Error::InvalidInput(format!(
                "logistic model: x has {} features but the model was fitted on {}",
                x.cols, self.n_features
            )));
        }
        let x = match &self.scaling {
            Some((mean, sd)) => apply_scaling(x, mean, sd),
            None => x.clone(),
        };
        let d = self.n_features;
        let k = self.intercept.len();
        let mut out = Vec::with_capacity(x.rows * k);
        for row in x.data.chunks_exact(d) {
            for c in 0..k {
                out.push(dot(row, &self.coef[c * d..(c + 1) * d]) + self.intercept[c]);
            }
        }
        Ok(out)
    }

    /// Class probabilities of every row of `x`, row-major `(n, K)` (the binary model gives
    /// `[P(0), P(1)]` per row, as scikit-learn's `predict_proba`).
    pub fn predict_proba_matrix(&self, x: &Matrix) -> Result<Vec<f64>> {
        let z = self.decision_rows(x)?;
        if self.intercept.len() == 1 {
            Ok(z.iter()
                .flat_map(|&s| {
                    let p1 = sigmoid(s);
                    [1.0 - p1, p1]
                })
                .collect())
        } else {
            let k = self.n_classes;
            let mut p = z;
            for row in p.chunks_exact_mut(k) {
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                row.iter_mut().for_each(|v| *v = (*v - max).exp());
                let sum: f64 = row.iter().sum();
                row.iter_mut().for_each(|v| *v /= sum);
            }
            Ok(p)
        }
    }

    /// Class probabilities as an `(n, K)` f64 tensor.
    pub fn predict_proba(&self, x: &Tensor) -> Result<Tensor> {
        let m = Matrix::from_tensor("logistic model: x", x)?;
        let p = self.predict_proba_matrix(&m)?;
        Ok(Tensor::from_vec(p, (m.rows, self.n_classes), &Device::Cpu)?)
    }

    /// Most probable class of every row (ties go to the lower class index).
    pub fn predict_matrix(&self, x: &Matrix) -> Result<Vec<u32>> {
        let z = self.decision_rows(x)?;
        let k = self.intercept.len();
        if k == 1 {
            return Ok(z.iter().map(|&s| u32::from(s > 0.0)).collect());
        }
        Ok(z.chunks_exact(k)
            .map(|row| {
                let mut best = 0;
                for c in 1..k {
                    if row[c] > row[best] {
                        best = c;
                    }
                }
                best as u32
            })
            .collect())
    }

    /// Most probable class of every row of an `(n, d)` tensor.
    pub fn predict(&self, x: &Tensor) -> Result<Vec<u32>> {
        self.predict_matrix(&Matrix::from_tensor("logistic model: x", x)?)
    }

    /// Per-row correctness (1.0 when the prediction equals `y[i]`, else 0.0): the values to
    /// bootstrap for an accuracy CI.
    pub fn correct_matrix(&self, x: &Matrix, y: &[u32]) -> Result<Vec<f64>> {
        if y.len() != x.rows {
            return Err(Error::InvalidInput(format!(
                "logistic model: x has {} rows but y has {} labels",
                x.rows,
                y.len()
            )));
        }
        Ok(self
            .predict_matrix(x)?
            .iter()
            .zip(y)
            .map(|(p, t)| f64::from(u8::from(p == t)))
            .collect())
    }

    /// Fraction of rows whose predicted class equals `y[i]`.
    pub fn accuracy_matrix(&self, x: &Matrix, y: &[u32]) -> Result<f64> {
        let c = self.correct_matrix(x, y)?;
        Ok(c.iter().sum::<f64>() / c.len() as f64)
    }

    /// Fraction of rows of an `(n, d)` tensor classified as `y`.
    pub fn accuracy(&self, x: &Tensor, y: &[u32]) -> Result<f64> {
        self.accuracy_matrix(&Matrix::from_tensor("logistic model: x", x)?, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize, d: usize, k: usize, seed: u64) -> (Matrix, Vec<u32>) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let c = (i % k) as u32;
            for j in 0..d {
                let shift = if j == c as usize % d { 1.5 } else { 0.0 };
                data.push(rng.gen_range(-1.0..1.0) + shift);
            }
            y.push(c);
        }
        (Matrix::new("x", data, n, d).unwrap(), y)
    }

    /// At the optimum the gradient of ½‖W‖² + C Σ ℓ vanishes: check it independently
    /// with finite differences of the objective.
    #[test]
    fn gradient_matches_finite_differences() {
        for k in [2, 3] {
            let (x, y) = toy(30, 4, k, 3);
            let p = Problem::new(&x, &y, k, 0.7, true).unwrap();
            let theta: Vec<f64> = (0..p.dim()).map(|i| 0.1 * i as f64 - 0.3).collect();
            let (_, g) = p.eval(&theta).unwrap();
            for i in 0..p.dim() {
                let h = 1e-6;
                let mut a = theta.clone();
                a[i] += h;
                let mut b = theta.clone();
                b[i] -= h;
                let fd = (p.eval(&a).unwrap().0 - p.eval(&b).unwrap().0) / (2.0 * h);
                assert!((fd - g[i]).abs() < 1e-7, "k={k} i={i}: {fd} vs {}", g[i]);
            }
        }
    }

    #[test]
    fn fits_are_deterministic_and_converge() {
        let (x, y) = toy(200, 5, 3, 1);
        let lr = LogisticRegression::new().tol(1e-9);
        let a = lr.fit_matrix(&x, &y).unwrap();
        let b = lr.fit_matrix(&x, &y).unwrap();
        assert!(a.converged, "{} iterations, grad {}", a.n_iter, a.grad_norm);
        assert_eq!(a.coef, b.coef);
        assert!(a.accuracy_matrix(&x, &y).unwrap() > 0.6);
    }

    #[test]
    fn bad_input_is_reported() {
        let (x, y) = toy(10, 2, 2, 0);
        let e = LogisticRegression::new()
            .fit_matrix(&x, &y[..9])
            .unwrap_err();
        assert!(e.to_string().contains("10 rows but y has 9"), "{e}");
        let e = LogisticRegression::new()
            .fit_matrix(&x, &[0; 10])
            .unwrap_err();
        assert!(e.to_string().contains("two classes"), "{e}");
        let e = LogisticRegression::new()
            .fit_matrix(&x, &[0, 2, 0, 2, 0, 2, 0, 2, 0, 2])
            .unwrap_err();
        assert!(e.to_string().contains("class 1 has no rows"), "{e}");
        let e = LogisticRegression::new()
            .c(0.0)
            .fit_matrix(&x, &y)
            .unwrap_err();
        assert!(e.to_string().contains("C must be"), "{e}");
        let e = Matrix::new("x", vec![1.0, f64::NAN], 1, 2).unwrap_err();
        assert!(
            e.to_string().contains("NaN") && e.to_string().contains("column 1"),
            "{e}"
        );
        let m = LogisticRegression::new().fit_matrix(&x, &y).unwrap();
        let wide = Matrix::new("x", vec![0.0; 3], 1, 3).unwrap();
        assert!(m
            .predict_matrix(&wide)
            .unwrap_err()
            .to_string()
            .contains("3 features"));
    }
}
