//! Neural mutual-information estimators trained with candle-nn: MINE (Donsker–Varadhan bound
//! with the moving-average gradient correction) and InfoNCE.
//!
//! * **MINE** — Belghazi et al., *Mutual Information Neural Estimation*, ICML 2018
//!   (arXiv 1801.04062). For a critic T_θ(x, y),
//!   I(X; Y) ≥ E_P\[T\] − log E_{P_X ⊗ P_Y}[e^T] (Donsker–Varadhan). Minibatch gradients of the
//!   log term are biased (∇log E[e^T] = E[∇T e^T] / E[e^T], and the denominator is estimated
//!   from the same batch); §3.2 replaces the denominator by an exponential moving average of
//!   E[e^T] over batches. We implement that correction in log space: the surrogate
//!   loss is −(mean T_joint − exp(lme − log ma)) with lme = log mean e^{T_marg} and the moving
//!   average `ma` held constant, whose gradient is −(∇E\[T\] − ∇E[e^T] / ma).
//! * **InfoNCE** — van den Oord et al., *Representation Learning with Contrastive Predictive
//!   Coding* (arXiv 1807.03748); as an MI bound, Poole et al., *On Variational Bounds of
//!   Mutual Information*, ICML 2019: I ≥ E[(1/B) Σ_i log( e^{f(x_i, y_i)} / ((1/B) Σ_j
//!   e^{f(x_i, y_j)}) )]. The bound can never exceed log B ([`MiEstimate::cap_bits`]).
//!
//! This is the estimator of Information Emergence (Chen et al., ACL 2025, arXiv 2405.12617),
//! improved as `STUDIES.md` §3 asks: the official code reports the running maximum of the
//! training-batch bound (optimistic) and never clips gradients; here the estimate is the bound
//! on **held-out** samples the critic never saw, with a bootstrap confidence interval,
//! early stopping on a separate validation split, and gradient clipping by global norm.
//!
//! ## Protocol
//! 1. Rows are shuffled (seeded) and split into train / validation / test; `holdout` is the
//!    fraction held out, split equally into validation (early stopping) and test (the
//!    reported estimate). Keeping the test split out of model selection matters: picking the
//!    best of many checkpoints on the same samples that are reported would bias the estimate
//!    upwards, visibly so for independent variables where the truth is 0.
//! 2. Every column of x and of y is z-scored with the **train** mean and standard deviation.
//!    MI is invariant under invertible per-column affine maps, so the target does not change,
//!    but the optimisation does: residual-stream states have a few "massive activation"
//!    dimensions hundreds of times larger than the rest, which would dominate the first layer
//!    of a Xavier-initialised critic, saturate e^T in the DV term and make a fixed learning
//!    rate meaningless across layers. Constant columns (std 0) are only centred.
//! 3. Adam (candle-nn `AdamW` with weight decay 0). After `loss.backward()` the global L2
//!    norm of all gradients is computed and, when it exceeds `clip_norm`, every gradient in
//!    the `GradStore` is scaled by clip_norm / norm before the optimiser step (candle-nn's
//!    optimisers have no clipping). [`MiEstimate::clipped_steps`] counts those steps.
//! 4. Every `eval_every` steps the bound is computed on the validation split; the best
//!    weights are kept and training stops after `patience` evaluations without improvement.
//! 5. With the best weights the bound is computed on the test split. MINE: each test row i
//!    gives a joint score a_i = T(x_i, y_i) and a marginal score b_i = T(x_i, y_σ(i)) with σ a
//!    random derangement of the test rows; Î = mean(a) − log mean(e^b), and the CI is a
//!    percentile bootstrap resampling rows (a_i, b_i) jointly. InfoNCE: the test rows are cut
//!    into batches of `batch_size` (the bound depends on the batch size, so evaluation uses
//!    the training one); each row gives v_i = f(x_i, y_i) − log Σ_j e^{f(x_i, y_j)} + log B,
//!    Î = mean(v), and the CI is a percentile bootstrap over rows (rows of one batch share
//!    their negatives, so this interval is somewhat narrow).
//!
//! The critic starts as a constant (its last weight matrix is zero, the other layers are
//! Xavier-uniform): a constant critic gives exactly 0 for both bounds, so the validation bound
//! at step 0 is 0 and early stopping never returns a critic that does worse than "no
//! information" on validation — without it, a randomly initialised critic starts at a
//! negative bound and independent variables come out credibly below 0.
//!
//! Everything is seeded: weights (Xavier uniform drawn from [`StdRng`]), splits, batches and
//! shuffles. Estimates are reported in bits.

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::error::{bail, Result};
use crate::metrics::stats::{bootstrap_ci, mean, paired_bootstrap_ci, Ci};

const LN2: f64 = std::f64::consts::LN_2;

/// Which bound an estimate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MiMethod {
    /// Donsker–Varadhan bound with the moving-average gradient correction (Belghazi et al. 2018).
    Mine,
    /// InfoNCE bound (van den Oord et al. 2018; Poole et al. 2019), capped at log(batch).
    InfoNce,
}

impl std::fmt::Display for MiMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MiMethod::Mine => "MINE",
            MiMethod::InfoNce => "InfoNCE",
        })
    }
}

/// The InfoNCE critic f(x, y).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoNceCritic {
    /// f(x, y) = MLP([x; y]) as for MINE. All B × B pairs of a batch are scored; the first
    /// layer is split as W [x; y] = W_x x + W_y y so it costs 2B rows, but the later layers
    /// run on B² rows: use one hidden layer or a small batch.
    Concat,
    /// f(x, y) = g(x) · h(y) with two MLPs ending in `embed_dim` units: B × B scores from one
    /// matrix product.
    Separable {
        /// Output size of g and h.
        embed_dim: usize,
    },
}

/// Settings of [`mine`] and [`infonce`]; builder-style setters.
///
/// ```
/// use replens::train::mine::MiConfig;
/// let cfg = MiConfig::default().hidden(&[64]).batch_size(128).max_steps(300).seed(3);
/// assert_eq!(cfg.batch_size, 128);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MiConfig {
    /// Hidden layer sizes of the critic MLP (at least one).
    pub hidden: Vec<usize>,
    /// Adam learning rate.
    pub lr: f64,
    /// Minibatch size (also the number of in-batch negatives of InfoNCE).
    pub batch_size: usize,
    /// Upper limit on optimiser steps.
    pub max_steps: usize,
    /// Stop after this many validation evaluations without improvement.
    pub patience: usize,
    /// Evaluate on the validation split every this many steps.
    pub eval_every: usize,
    /// Fraction of rows held out (half validation, half test), in (0, 1).
    pub holdout: f64,
    /// Clip the global gradient norm to this value; `None` disables clipping.
    pub clip_norm: Option<f64>,
    /// Weight of the newest batch in the moving average of E[e^T] (MINE only), in (0, 1].
    pub ema_rate: f64,
    /// Negative slope of the LeakyReLU activations.
    pub leaky_slope: f64,
    /// InfoNCE critic form.
    pub infonce_critic: InfoNceCritic,
    /// Nominal coverage of the confidence interval.
    pub level: f64,
    /// Bootstrap resamples for the confidence interval.
    pub n_resamples: usize,
    /// Seed of every random choice (weights, split, batches, shuffles, bootstrap).
    pub seed: u64,
}

impl Default for MiConfig {
    fn default() -> Self {
        MiConfig {
            hidden: vec![256],
            lr: 1e-3,
            batch_size: 256,
            max_steps: 2000,
            patience: 5,
            eval_every: 50,
            holdout: 0.3,
            clip_norm: Some(5.0),
            ema_rate: 0.01,
            leaky_slope: 0.01,
            infonce_critic: InfoNceCritic::Separable { embed_dim: 64 },
            level: 0.95,
            n_resamples: 1000,
            seed: 0,
        }
    }
}

impl MiConfig {
    /// Hidden layer sizes of the critic.
    pub fn hidden(mut self, sizes: &[usize]) -> Self {
        self.hidden = sizes.to_vec();
        self
    }
    /// Adam learning rate.
    pub fn lr(mut self, lr: f64) -> Self {
        self.lr = lr;
        self
    }
    /// Minibatch size.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }
    /// Upper limit on optimiser steps.
    pub fn max_steps(mut self, n: usize) -> Self {
        self.max_steps = n;
        self
    }
    /// Early-stopping patience, in evaluations.
    pub fn patience(mut self, n: usize) -> Self {
        self.patience = n;
        self
    }
    /// Steps between validation evaluations.
    pub fn eval_every(mut self, n: usize) -> Self {
        self.eval_every = n;
        self
    }
    /// Held-out fraction (half validation, half test).
    pub fn holdout(mut self, fraction: f64) -> Self {
        self.holdout = fraction;
        self
    }
    /// Global gradient-norm clip; `None` disables it.
    pub fn clip_norm(mut self, norm: Option<f64>) -> Self {
        self.clip_norm = norm;
        self
    }
    /// Moving-average rate of MINE's bias correction.
    pub fn ema_rate(mut self, rate: f64) -> Self {
        self.ema_rate = rate;
        self
    }
    /// LeakyReLU negative slope.
    pub fn leaky_slope(mut self, slope: f64) -> Self {
        self.leaky_slope = slope;
        self
    }
    /// InfoNCE critic form.
    pub fn infonce_critic(mut self, critic: InfoNceCritic) -> Self {
        self.infonce_critic = critic;
        self
    }
    /// Confidence level of the interval.
    pub fn level(mut self, level: f64) -> Self {
        self.level = level;
        self
    }
    /// Bootstrap resamples.
    pub fn n_resamples(mut self, n: usize) -> Self {
        self.n_resamples = n;
        self
    }
    /// Seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    fn check(&self, what: &str) -> Result<()> {
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            bail!(
                "{what}: hidden sizes must be non-empty and positive, got {:?}",
                self.hidden
            );
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("{what}: lr must be positive, got {}", self.lr);
        }
        if self.batch_size < 2 {
            bail!("{what}: batch_size must be ≥ 2, got {}", self.batch_size);
        }
        if self.max_steps == 0 || self.eval_every == 0 || self.patience == 0 {
            bail!(
                "{what}: max_steps, eval_every and patience must be ≥ 1 (got {}, {}, {})",
                self.max_steps,
                self.eval_every,
                self.patience
            );
        }
        if !(self.holdout > 0.0 && self.holdout < 1.0) {
            bail!("{what}: holdout must be in (0, 1), got {}", self.holdout);
        }
        if let Some(c) = self.clip_norm {
            if !(c.is_finite() && c > 0.0) {
                bail!("{what}: clip_norm must be positive, got {c}");
            }
        }
        if !(self.ema_rate > 0.0 && self.ema_rate <= 1.0) {
            bail!("{what}: ema_rate must be in (0, 1], got {}", self.ema_rate);
        }
        if !(self.leaky_slope.is_finite() && self.leaky_slope >= 0.0) {
            bail!("{what}: leaky_slope must be ≥ 0, got {}", self.leaky_slope);
        }
        if let InfoNceCritic::Separable { embed_dim: 0 } = self.infonce_critic {
            bail!("{what}: the separable critic's embed_dim must be ≥ 1");
        }
        if !(self.level > 0.0 && self.level < 1.0) || self.n_resamples == 0 {
            bail!(
                "{what}: level must be in (0, 1) and n_resamples ≥ 1 (got {}, {})",
                self.level,
                self.n_resamples
            );
        }
        Ok(())
    }
}

/// A held-out mutual-information estimate and how it was obtained.
#[derive(Debug, Clone, PartialEq)]
pub struct MiEstimate {
    /// Which bound.
    pub method: MiMethod,
    /// The test-split bound in bits with its bootstrap CI (see the module docs).
    pub bits: Ci,
    /// InfoNCE only: log2(batch_size), the largest value the bound can take.
    pub cap_bits: Option<f64>,
    /// Optimiser steps run.
    pub steps: usize,
    /// Step whose weights gave the best validation bound (0: the untrained critic).
    pub best_step: usize,
    /// Whether patience ran out before `max_steps`.
    pub stopped_early: bool,
    /// Steps whose gradient norm exceeded `clip_norm` and were scaled down.
    pub clipped_steps: usize,
    /// Largest global gradient norm seen (before clipping).
    pub max_grad_norm: f64,
    /// Validation bound in bits at each evaluation: (step, bits).
    pub history: Vec<(usize, f64)>,
    /// Rows in the train split.
    pub n_train: usize,
    /// Rows in the validation split (early stopping).
    pub n_val: usize,
    /// Rows in the test split (the reported estimate).
    pub n_test: usize,
    /// Wall time of the whole estimate (standardising, training, evaluation, bootstrap).
    pub seconds: f64,
}

impl MiEstimate {
    /// The point estimate in bits.
    pub fn value(&self) -> f64 {
        self.bits.estimate
    }
    /// The point estimate in nats.
    pub fn nats(&self) -> f64 {
        self.bits.estimate * LN2
    }
}

impl std::fmt::Display for MiEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} I = {:.4} bits [{:.4}, {:.4}] ({:.0}% CI), {} steps (best {}), {} clipped, {:.2} s",
            self.method,
            self.bits.estimate,
            self.bits.lower,
            self.bits.upper,
            self.bits.level * 100.0,
            self.steps,
            self.best_step,
            self.clipped_steps,
            self.seconds
        )?;
        if let Some(cap) = self.cap_bits {
            write!(f, ", cap log2(B) = {cap:.3} bits")?;
        }
        Ok(())
    }
}

/// Mutual information between the rows of `x` (n, d_x) and `y` (n, d_y) by MINE with the
/// moving-average bias correction (Belghazi et al., ICML 2018, §3.2), reported on held-out
/// rows in bits with a bootstrap CI. Row i of `x` and row i of `y` are one joint sample.
///
/// Critic: MLP on [x; y] with `hidden` layers, LeakyReLU, Xavier-uniform weights (the last
/// layer zero, see the module docs), zero biases. Marginal samples pair x_i with y of another row of the same batch (a random
/// derangement). See the module docs for the split, standardisation, clipping and CI.
///
/// Errors on: non-2-D inputs, different row counts, non-finite values, too few rows for
/// the batch size, invalid settings, and a diverging loss.
///
/// ```
/// use replens::train::mine::{correlated_gaussians, gaussian_mi_bits, mine, MiConfig};
/// // y = 0.8 x + 0.6 ε: I = −½ log2(1 − 0.64) = 0.737 bits.
/// let (x, y) = correlated_gaussians(1500, 1, 0.8, 1)?;
/// assert!((gaussian_mi_bits(0.8, 1) - 0.737).abs() < 1e-3);
/// let cfg = MiConfig::default().hidden(&[32]).batch_size(128).max_steps(300).lr(5e-3);
/// let est = mine(&x, &y, &cfg)?;
/// assert!(est.value() > 0.3 && est.value() < 1.2, "{est}");
/// # Ok::<(), replens::Error>(())
/// ```
pub fn mine(x: &Tensor, y: &Tensor, cfg: &MiConfig) -> Result<MiEstimate> {
    estimate(MiMethod::Mine, x, y, cfg)
}

/// Mutual information between the rows of `x` and `y` by the InfoNCE lower bound, reported on
/// held-out rows in bits with a bootstrap CI. The bound is at most log2(batch_size) bits
/// ([`MiEstimate::cap_bits`]): when the true MI is near or above the cap it is only a lower
/// bound (Poole et al., ICML 2019; McAllester & Stratos, AISTATS 2020).
///
/// ```
/// use replens::train::mine::{correlated_gaussians, infonce, MiConfig};
/// let (x, y) = correlated_gaussians(1500, 1, 0.8, 1)?;
/// let cfg = MiConfig::default().hidden(&[32]).batch_size(128).max_steps(300).lr(5e-3);
/// let est = infonce(&x, &y, &cfg)?;
/// assert!(est.value() > 0.3 && est.value() < 1.0, "{est}");
/// assert_eq!(est.cap_bits, Some(7.0));
/// # Ok::<(), replens::Error>(())
/// ```
pub fn infonce(x: &Tensor, y: &Tensor, cfg: &MiConfig) -> Result<MiEstimate> {
    estimate(MiMethod::InfoNce, x, y, cfg)
}

/// Closed-form MI of jointly Gaussian x, y ∈ ℝ^d whose coordinates are pairwise correlated
/// with coefficient ρ (x_k with y_k, independent across k): I = −(d/2) · log2(1 − ρ²) bits.
///
/// ```
/// let i = replens::train::mine::gaussian_mi_bits(0.5, 8);
/// assert!((i - 8.0 * 0.2075187).abs() < 1e-6);
/// ```
pub fn gaussian_mi_bits(rho: f64, d: usize) -> f64 {
    -0.5 * d as f64 * (1.0 - rho * rho).log2()
}

/// `n` seeded samples of x ~ N(0, I_d) and y = ρx + √(1−ρ²)ε (ε ~ N(0, I_d) independent):
/// coordinate k of y is correlated with coordinate k of x only, with coefficient ρ, so
/// I(X; Y) = [`gaussian_mi_bits`]`(ρ, d)`. Returns `(x, y)`, each `(n, d)` f32.
///
/// ```
/// use replens::train::mine::correlated_gaussians;
/// let (x, y) = correlated_gaussians(100, 3, 0.5, 7)?;
/// assert_eq!(x.dims(), &[100, 3]);
/// assert_eq!(y.dims(), &[100, 3]);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn correlated_gaussians(n: usize, d: usize, rho: f64, seed: u64) -> Result<(Tensor, Tensor)> {
    if !(rho > -1.0 && rho < 1.0) {
        bail!("correlated_gaussians: rho must be in (−1, 1), got {rho}");
    }
    if n == 0 || d == 0 {
        bail!("correlated_gaussians: n and d must be ≥ 1 (got {n}, {d})");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let s = (1.0 - rho * rho).sqrt();
    let (mut x, mut y) = (Vec::with_capacity(n * d), Vec::with_capacity(n * d));
    for _ in 0..n * d {
        let a: f64 = rng.sample(rand_distr::StandardNormal);
        let e: f64 = rng.sample(rand_distr::StandardNormal);
        x.push(a as f32);
        y.push((rho * a + s * e) as f32);
    }
    Ok((
        Tensor::from_vec(x, (n, d), &Device::Cpu)?,
        Tensor::from_vec(y, (n, d), &Device::Cpu)?,
    ))
}

/// A row-major f32 matrix on the host, used for splitting and standardising.
struct Rows {
    data: Vec<f32>,
    n: usize,
    d: usize,
}

fn host_rows(what: &str, name: &str, t: &Tensor) -> Result<Rows> {
    let dims = t.dims();
    if dims.len() != 2 {
        bail!("{what}: {name} must be 2-D (samples, features), got shape {dims:?}");
    }
    let (n, d) = (dims[0], dims[1]);
    if d == 0 {
        bail!("{what}: {name} has no columns (shape {dims:?})");
    }
    let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        bail!(
            "{what}: {name} has a non-finite value ({}) at row {}, column {}",
            data[i],
            i / d,
            i % d
        );
    }
    Ok(Rows { data, n, d })
}

/// Column means and standard deviations of the rows in `idx` (std 0 → 1, so constant
/// columns are only centred).
fn column_stats(r: &Rows, idx: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let mut mu = vec![0.0f64; r.d];
    for &i in idx {
        for (m, &v) in mu.iter_mut().zip(&r.data[i * r.d..(i + 1) * r.d]) {
            *m += v as f64;
        }
    }
    mu.iter_mut().for_each(|m| *m /= idx.len() as f64);
    let mut var = vec![0.0f64; r.d];
    for &i in idx {
        for ((s, &v), m) in var.iter_mut().zip(&r.data[i * r.d..(i + 1) * r.d]).zip(&mu) {
            *s += (v as f64 - m).powi(2);
        }
    }
    let sd = var
        .into_iter()
        .map(|s| {
            let sd = (s / idx.len() as f64).sqrt();
            if sd > 1e-12 {
                sd
            } else {
                1.0
            }
        })
        .collect();
    (mu, sd)
}

fn standardised(r: &Rows, idx: &[usize], mu: &[f64], sd: &[f64]) -> Result<Tensor> {
    let mut out = Vec::with_capacity(idx.len() * r.d);
    for &i in idx {
        for ((&v, m), s) in r.data[i * r.d..(i + 1) * r.d].iter().zip(mu).zip(sd) {
            out.push(((v as f64 - m) / s) as f32);
        }
    }
    Ok(Tensor::from_vec(out, (idx.len(), r.d), &Device::Cpu)?)
}

/// A random derangement (no fixed point) of 0..n by Sattolo's algorithm (a uniform random
/// n-cycle), so no marginal pair is accidentally a joint one.
fn derangement(n: usize, rng: &mut StdRng) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = rng.gen_range(0..i);
        p.swap(i, j);
    }
    p
}

fn xavier(fan_in: usize, fan_out: usize, rng: &mut StdRng) -> Result<Var> {
    let a = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
    let w: Vec<f32> = (0..fan_in * fan_out)
        .map(|_| rng.gen_range(-a..a))
        .collect();
    Ok(Var::from_tensor(&Tensor::from_vec(
        w,
        (fan_in, fan_out),
        &Device::Cpu,
    )?)?)
}

fn zeros(n: usize) -> Result<Var> {
    Ok(Var::zeros(n, DType::F32, &Device::Cpu)?)
}

/// Dense layers `(W: (in, out), b: (out))` with LeakyReLU between them, none after the last.
struct Mlp {
    layers: Vec<(Var, Var)>,
    slope: f64,
}

impl Mlp {
    /// Xavier-uniform weights and zero biases; with `zero_last` the last weight matrix is
    /// zero too, so the network starts as the constant 0.
    fn new(sizes: &[usize], slope: f64, zero_last: bool, rng: &mut StdRng) -> Result<Mlp> {
        let n = sizes.len() - 1;
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(k, w)| {
                let weight = if zero_last && k + 1 == n {
                    Var::zeros((w[0], w[1]), DType::F32, &Device::Cpu)?
                } else {
                    xavier(w[0], w[1], rng)?
                };
                Ok((weight, zeros(w[1])?))
            })
            .collect::<Result<_>>()?;
        Ok(Mlp { layers, slope })
    }

    /// Forward over the last dimension of a 2-D input.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (k, (w, b)) in self.layers.iter().enumerate() {
            h = h.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
            if k + 1 < self.layers.len() {
                h = candle_nn::ops::leaky_relu(&h, self.slope)?;
            }
        }
        Ok(h)
    }

    fn vars(&self) -> impl Iterator<Item = &Var> {
        self.layers.iter().flat_map(|(w, b)| [w, b])
    }
}

/// T(x, y) = tail(LeakyReLU(W_x x + W_y y + b)): an MLP on [x; y] whose first layer is split
/// so that any pairing of precomputed W_x x and W_y y rows can be scored cheaply.
struct ConcatCritic {
    wx: Var,
    wy: Var,
    b: Var,
    tail: Mlp,
}

impl ConcatCritic {
    fn new(dx: usize, dy: usize, cfg: &MiConfig, rng: &mut StdRng) -> Result<Self> {
        let h = cfg.hidden[0];
        // Xavier on the full (d_x + d_y) × h matrix, then split it.
        let w = xavier(dx + dy, h, rng)?;
        let wx = Var::from_tensor(&w.as_tensor().narrow(0, 0, dx)?.contiguous()?)?;
        let wy = Var::from_tensor(&w.as_tensor().narrow(0, dx, dy)?.contiguous()?)?;
        let mut sizes = cfg.hidden.clone();
        sizes.push(1);
        Ok(ConcatCritic {
            wx,
            wy,
            b: zeros(h)?,
            tail: Mlp::new(&sizes, cfg.leaky_slope, true, rng)?,
        })
    }

    /// Scores of the pairs (hx_i, hy_i) given first-layer projections; `(n,)`.
    fn score(&self, hx: &Tensor, hy: &Tensor) -> Result<Tensor> {
        let h = (hx + hy)?.broadcast_add(self.b.as_tensor())?;
        let h = candle_nn::ops::leaky_relu(&h, self.tail.slope)?;
        Ok(self.tail.forward(&h)?.squeeze(D::Minus1)?)
    }

    /// All B × B scores f(x_i, y_j).
    fn score_matrix(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let hx = x.matmul(self.wx.as_tensor())?;
        let hy = y.matmul(self.wy.as_tensor())?;
        let (b, h) = hx.dims2()?;
        let pairs = hx
            .unsqueeze(1)?
            .broadcast_add(&hy.unsqueeze(0)?)?
            .reshape((b * b, h))?;
        let zeros = Tensor::zeros((b * b, h), DType::F32, &Device::Cpu)?;
        Ok(self.score(&pairs, &zeros)?.reshape((b, b))?)
    }

    fn vars(&self) -> Vec<Var> {
        let mut v = vec![self.wx.clone(), self.wy.clone(), self.b.clone()];
        v.extend(self.tail.vars().cloned());
        v
    }
}

enum Critic {
    Concat(ConcatCritic),
    Separable { g: Mlp, h: Mlp },
}

impl Critic {
    fn vars(&self) -> Vec<Var> {
        match self {
            Critic::Concat(c) => c.vars(),
            Critic::Separable { g, h } => g.vars().chain(h.vars()).cloned().collect(),
        }
    }

    fn score_matrix(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        match self {
            Critic::Concat(c) => c.score_matrix(x, y),
            Critic::Separable { g, h } => Ok(g.forward(x)?.matmul(&h.forward(y)?.t()?)?),
        }
    }
}

/// MINE's per-row joint and marginal scores: (T(x_i, y_i), T(x_i, y_perm(i))).
fn mine_scores(
    c: &ConcatCritic,
    x: &Tensor,
    y: &Tensor,
    perm: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let hx = x.matmul(c.wx.as_tensor())?;
    let hy = y.matmul(c.wy.as_tensor())?;
    let joint = c.score(&hx, &hy)?;
    let marg = c.score(&hx, &hy.index_select(perm, 0)?)?;
    Ok((joint, marg))
}

/// Per-row InfoNCE terms f_ii − logsumexp_j f_ij + log B of one batch; `(B,)`.
fn infonce_rows(c: &Critic, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let s = c.score_matrix(x, y)?;
    let b = s.dim(0)?;
    let diag = s
        .mul(&Tensor::eye(b, DType::F32, &Device::Cpu)?)?
        .sum(D::Minus1)?;
    Ok(((diag - s.log_sum_exp(D::Minus1)?)? + (b as f64).ln())?)
}

fn log_mean_exp(v: &[f64]) -> f64 {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + (v.iter().map(|x| (x - m).exp()).sum::<f64>() / v.len() as f64).ln()
}

fn dv_bound(a: &[f64], b: &[f64]) -> f64 {
    mean(a) - log_mean_exp(b)
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
}

/// A split: standardised tensors plus, for MINE, a fixed marginal derangement.
struct Split {
    x: Tensor,
    y: Tensor,
    perm: Tensor,
    n: usize,
}

struct Trainer<'a> {
    method: MiMethod,
    cfg: &'a MiConfig,
    critic: Critic,
}

impl Trainer<'_> {
    /// Per-row values whose aggregate is the bound in nats: MINE → (joint, marginal) scores,
    /// InfoNCE → (row terms, empty).
    fn rows(&self, s: &Split) -> Result<(Vec<f64>, Vec<f64>)> {
        match (&self.critic, self.method) {
            (Critic::Concat(c), MiMethod::Mine) => {
                let (a, b) = mine_scores(c, &s.x, &s.y, &s.perm)?;
                Ok((to_f64(&a)?, to_f64(&b)?))
            }
            _ => {
                let bsz = self.cfg.batch_size;
                let mut v = Vec::with_capacity(s.n);
                for k in 0..s.n / bsz {
                    let xb = s.x.narrow(0, k * bsz, bsz)?;
                    let yb = s.y.narrow(0, k * bsz, bsz)?;
                    v.extend(to_f64(&infonce_rows(&self.critic, &xb, &yb)?)?);
                }
                Ok((v, Vec::new()))
            }
        }
    }

    fn bound(&self, s: &Split) -> Result<f64> {
        let (a, b) = self.rows(s)?;
        Ok(match self.method {
            MiMethod::Mine => dv_bound(&a, &b),
            MiMethod::InfoNce => mean(&a),
        })
    }
}

fn global_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut sq = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    Ok(sq.sqrt())
}

fn scale_grads(grads: &mut GradStore, vars: &[Var], factor: f64) -> Result<()> {
    for v in vars {
        if let Some(g) = grads.remove(v.as_tensor()) {
            grads.insert(v.as_tensor(), (g * factor)?);
        }
    }
    Ok(())
}

fn estimate(method: MiMethod, x: &Tensor, y: &Tensor, cfg: &MiConfig) -> Result<MiEstimate> {
    let start = Instant::now();
    let what = match method {
        MiMethod::Mine => "mine",
        MiMethod::InfoNce => "infonce",
    };
    cfg.check(what)?;
    let rx = host_rows(what, "x", x)?;
    let ry = host_rows(what, "y", y)?;
    if rx.n != ry.n {
        bail!(
            "{what}: x has {} rows but y has {} (row i of each is one joint sample)",
            rx.n,
            ry.n
        );
    }
    let n = rx.n;
    let n_hold = (n as f64 * cfg.holdout).round() as usize;
    let n_val = n_hold / 2;
    let n_test = n_hold - n_val;
    let n_train = n - n_hold;
    let bsz = cfg.batch_size;
    // MINE's held-out bound is pooled over all rows, so its splits only need 2 rows;
    // InfoNCE evaluates whole batches of the training size.
    let min_eval = match method {
        MiMethod::Mine => 2,
        MiMethod::InfoNce => bsz,
    };
    if n_train < bsz || n_val < min_eval || n_test < min_eval {
        bail!(
            "{what}: {n} samples split into {n_train} train / {n_val} validation / {n_test} test rows \
             (holdout {}), but training needs ≥ batch_size = {bsz} rows and each held-out split ≥ {min_eval}; \
             provide more samples or lower batch_size",
            cfg.holdout
        );
    }

    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let (train_idx, rest) = order.split_at(n_train);
    let (val_idx, test_idx) = rest.split_at(n_val);
    let (mx, sx) = column_stats(&rx, train_idx);
    let (my, sy) = column_stats(&ry, train_idx);
    let mut split = |idx: &[usize]| -> Result<Split> {
        let perm = derangement(idx.len(), &mut rng);
        Ok(Split {
            x: standardised(&rx, idx, &mx, &sx)?,
            y: standardised(&ry, idx, &my, &sy)?,
            perm: Tensor::from_vec(perm, idx.len(), &Device::Cpu)?,
            n: idx.len(),
        })
    };
    let train = split(train_idx)?;
    let val = split(val_idx)?;
    let test = split(test_idx)?;

    let critic = match (method, cfg.infonce_critic) {
        (MiMethod::Mine, _) | (MiMethod::InfoNce, InfoNceCritic::Concat) => {
            Critic::Concat(ConcatCritic::new(rx.d, ry.d, cfg, &mut rng)?)
        }
        (MiMethod::InfoNce, InfoNceCritic::Separable { embed_dim }) => {
            let mut gs = vec![rx.d];
            gs.extend(&cfg.hidden);
            gs.push(embed_dim);
            let mut hs = vec![ry.d];
            hs.extend(&cfg.hidden);
            hs.push(embed_dim);
            let g = Mlp::new(&gs, cfg.leaky_slope, false, &mut rng)?;
            // h starts at 0 (so every score is 0); g must not, or neither would get a gradient.
            let h = Mlp::new(&hs, cfg.leaky_slope, true, &mut rng)?;
            Critic::Separable { g, h }
        }
    };
    let trainer = Trainer {
        method,
        cfg,
        critic,
    };
    let vars = trainer.critic.vars();
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;

    let snapshot = |vars: &[Var]| -> Result<Vec<Tensor>> {
        vars.iter().map(|v| Ok(v.as_tensor().copy()?)).collect()
    };
    let mut best = trainer.bound(&val)?;
    let mut best_step = 0;
    let mut best_weights = snapshot(&vars)?;
    let mut history = vec![(0, best / LN2)];
    let mut since_best = 0;
    let mut stopped_early = false;
    let mut clipped_steps = 0;
    let mut max_grad_norm = 0.0f64;
    let mut log_ma: Option<f64> = None;
    let mut epoch: Vec<u32> = Vec::new();
    let mut steps = 0;

    for step in 1..=cfg.max_steps {
        if epoch.len() < bsz {
            epoch = (0..n_train as u32).collect();
            epoch.shuffle(&mut rng);
        }
        let batch: Vec<u32> = epoch.split_off(epoch.len() - bsz);
        let idx = Tensor::from_vec(batch, bsz, &Device::Cpu)?;
        let xb = train.x.index_select(&idx, 0)?;
        let yb = train.y.index_select(&idx, 0)?;
        let loss = match &trainer.critic {
            Critic::Concat(c) if method == MiMethod::Mine => {
                let perm = Tensor::from_vec(derangement(bsz, &mut rng), bsz, &Device::Cpu)?;
                let (joint, marg) = mine_scores(c, &xb, &yb, &perm)?;
                let lme = (marg.log_sum_exp(0)? - (bsz as f64).ln())?;
                let lme_now = lme.to_scalar::<f32>()? as f64;
                let a = cfg.ema_rate;
                // Moving average of E[e^T] kept in log space: e^T overflows f32 long before
                // the bound is large.
                let lma = match log_ma {
                    None => lme_now,
                    Some(prev) => {
                        let (p, q) = ((1.0 - a).ln() + prev, a.ln() + lme_now);
                        let m = p.max(q);
                        m + ((p - m).exp() + (q - m).exp()).ln()
                    }
                };
                log_ma = Some(lma);
                // d/dθ exp(lme − lma) = ∇E[e^T] / ma: the corrected gradient of log E[e^T].
                let corrected = (lme - lma)?.exp()?;
                (corrected - joint.mean_all()?)?
            }
            _ => infonce_rows(&trainer.critic, &xb, &yb)?.mean_all()?.neg()?,
        };
        let loss_value = loss.to_scalar::<f32>()?;
        if !loss_value.is_finite() {
            bail!(
                "{what}: the training loss became {loss_value} at step {step}; lower lr ({}) or set clip_norm",
                cfg.lr
            );
        }
        let mut grads = loss.backward()?;
        let norm = global_norm(&grads, &vars)?;
        if !norm.is_finite() {
            bail!(
                "{what}: the gradient norm became {norm} at step {step}; lower lr ({})",
                cfg.lr
            );
        }
        max_grad_norm = max_grad_norm.max(norm);
        if let Some(c) = cfg.clip_norm {
            if norm > c {
                scale_grads(&mut grads, &vars, c / norm)?;
                clipped_steps += 1;
            }
        }
        opt.step(&grads)?;
        steps = step;

        if step % cfg.eval_every == 0 || step == cfg.max_steps {
            let v = trainer.bound(&val)?;
            history.push((step, v / LN2));
            if v.is_finite() && v > best {
                best = v;
                best_step = step;
                best_weights = snapshot(&vars)?;
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= cfg.patience {
                    stopped_early = step < cfg.max_steps;
                    break;
                }
            }
        }
    }
    for (v, w) in vars.iter().zip(&best_weights) {
        v.set(w)?;
    }

    let (a, b) = trainer.rows(&test)?;
    let seed = cfg.seed ^ 0x9e37_79b9_7f4a_7c15;
    let ci_nats = match method {
        MiMethod::Mine => paired_bootstrap_ci(&a, &b, dv_bound, cfg.n_resamples, cfg.level, seed)?,
        MiMethod::InfoNce => bootstrap_ci(&a, mean, cfg.n_resamples, cfg.level, seed)?,
    };
    let bits = Ci {
        estimate: ci_nats.estimate / LN2,
        lower: ci_nats.lower / LN2,
        upper: ci_nats.upper / LN2,
        ..ci_nats
    };
    Ok(MiEstimate {
        method,
        bits,
        cap_bits: (method == MiMethod::InfoNce).then(|| (bsz as f64).log2()),
        steps,
        best_step,
        stopped_early,
        clipped_steps,
        max_grad_norm,
        history,
        n_train,
        n_val,
        n_test,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derangement_has_no_fixed_point() {
        let mut rng = StdRng::seed_from_u64(1);
        for n in [2, 3, 10, 257] {
            let p = derangement(n, &mut rng);
            assert!(p.iter().enumerate().all(|(i, &j)| i as u32 != j));
            let mut s = p.clone();
            s.sort();
            assert_eq!(s, (0..n as u32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn log_mean_exp_is_stable() {
        let v = [1000.0, 1000.0];
        assert!((log_mean_exp(&v) - 1000.0).abs() < 1e-9);
        assert!((log_mean_exp(&[0.0, 2f64.ln()]) - 1.5f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn infonce_rows_match_hand_computation() -> Result<()> {
        let s = Tensor::new(&[[2f32, 0.0], [1.0, 3.0]], &Device::Cpu)?;
        // Separable critic with identity-like g, h is awkward; test the formula on the matrix.
        let b = 2usize;
        let diag = s
            .mul(&Tensor::eye(b, DType::F32, &Device::Cpu)?)?
            .sum(D::Minus1)?;
        let v = ((diag - s.log_sum_exp(D::Minus1)?)? + (b as f64).ln())?.to_vec1::<f32>()?;
        let want0 = 2.0 - (2f64.exp() + 1.0).ln() + 2f64.ln();
        let want1 = 3.0 - (1f64.exp() + 3f64.exp()).ln() + 2f64.ln();
        assert!((v[0] as f64 - want0).abs() < 1e-5 && (v[1] as f64 - want1).abs() < 1e-5);
        Ok(())
    }
}
