//! AdUE: a trainable uncertainty head on a frozen classifier (Zabolotnyi et al., *AdUE:
//! Improving Uncertainty Estimation Head for LoRA Adapters in LLMs*, arXiv 2505.15443;
//! official code `github.com/zaaabik/AdUE`).
//!
//! Inputs are plain tensors, so everything runs without a model: features `z` (n × d, the
//! last-layer state the classifier head reads), the classifier head's weight `W` (C × d) and
//! bias `b` (C), and gold labels. With p = softmax(zW'ᵀ + b') for the head's own copy
//! (W', b') of the classifier head,
//!
//! ```text
//!   SmoothMax_λ(p) = (1/λ) · log Σ_c exp(λ p_c)                       λ = 100
//!   U    = clamp((1 − SmoothMax_λ(p)) / (1 − 1/C), 1e-8, 1 − 1e-8)      the uncertainty
//!   e    = 1[argmax_c p_orig,c ≠ y]                                     target: the error
//!   U_SR = (1 − max_c p_orig,c) / (1 − 1/C)                             softmax response
//!   loss = BCE(U, e) + α · mean((U − U_SR)²) + β · Σ_θ ‖θ − θ₀‖²          (L2-SP)
//! ```
//!
//! where p_orig comes from the frozen classifier and θ₀ = (W, b). Training: Adam
//! (β2 = 0.999, ε = 1e-8, no weight decay) with a one-cycle cosine learning rate
//! ([`OneCycle`], 10 % warm-up, β1 cycled 0.95 → 0.85 → 0.95, as torch's `OneCycleLR` in the
//! official code), batches of 128 reshuffled every
//! epoch from a seeded RNG, at most 50 epochs, early stopping on validation ROC-AUC of U
//! against e with patience 5, then the weights of the best epoch are restored. The grid of
//! the paper (lr × α × β, [`AdueGrid::paper`]) is searched by [`grid_search`], picking by
//! validation ROC-AUC.
//!
//! The classifier is never modified: the head owns copies of W and b (even when they are
//! [`candle_core::Var`]s of another model), so the classifier's predictions — and its
//! accuracy — are exactly what they were; AdUE only re-ranks examples by uncertainty.
//!
//! Implementation notes:
//! * The head is one linear layer, so its loss gradient is written out by hand
//!   (the formulas are at `loss_and_grad` in the source) instead of going through autograd. One
//!   pass over the rows computes the logits (f32), the per-row softmax / SmoothMax / BCE
//!   arithmetic (f64) and ∂/∂W (f32 within blocks of 128 rows, f64 across them;
//!   [`replens_kernels::linear_head_pass`]); Adam runs on the flattened parameters (stored in
//!   f32 like torch's). `BENCHMARKS.md` (adue-fit-6k) has the agreement with the official torch
//!   loop and the times.
//! * Both softmaxes subtract their row maximum (exp(100) overflows f32, and in f64 it keeps
//!   the sums well scaled).
//! * The BCE clamps both logarithms at −100 like `torch.nn.BCELoss` (inactive here: U is
//!   clamped to [1e-8, 1 − 1e-8], which f64 keeps apart from 0 and 1).
//! * The initial weights are *not* a candidate for "best epoch" (as with Lightning's
//!   checkpointing in the official code); their validation AUC is logged as
//!   [`AdueHead::init_val_auc`] for comparison.

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::{Context, Error, Result};
use crate::metrics::uncertainty::roc_auc;
use crate::progress::Progress;

fn invalid(msg: String) -> Error {
    Error::InvalidInput(msg)
}

/// Copy any float tensor into a fresh f32 tensor on the CPU (never sharing storage, so a
/// `Var` passed in cannot be changed through the copy).
fn f32_copy(t: &Tensor, what: &str) -> Result<Tensor> {
    let v = t
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .context(|| format!("{what}: reading a tensor of shape {:?} as f32", t.dims()))?;
    check_finite(&v, what)?;
    Ok(Tensor::from_vec(v, t.shape(), &Device::Cpu)?)
}

/// Errors, naming `what` and the first offending element, unless every value is finite.
fn check_finite(v: &[f32], what: &str) -> Result<()> {
    match replens_kernels::first_non_finite(v) {
        Some(i) => Err(invalid(format!(
            "{what}: element {i} (flattened) is {} (must be finite)",
            v[i]
        ))),
        None => Ok(()),
    }
}

/// A frozen linear classifier head `logits = z Wᵀ + b` (the last layer of the fine-tuned
/// classifier). Holds f32 copies of W (C × d) and b (C).
#[derive(Debug, Clone)]
pub struct LinearHead {
    weight: Tensor,
    bias: Tensor,
}

impl LinearHead {
    /// `weight` is `(C, d)` with C ≥ 2, `bias` is `(C)`; any float dtype, finite values.
    pub fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        let (c, d) = weight.dims2().map_err(|_| {
            invalid(format!(
                "LinearHead: weight must be (n_classes, d), got shape {:?}",
                weight.dims()
            ))
        })?;
        if c < 2 || d == 0 {
            return Err(invalid(format!(
                "LinearHead: weight has shape ({c}, {d}); need at least 2 classes and d ≥ 1"
            )));
        }
        if bias.dims() != [c] {
            return Err(invalid(format!(
                "LinearHead: bias must have shape ({c}) to match weight ({c}, {d}), got {:?}",
                bias.dims()
            )));
        }
        Ok(Self {
            weight: f32_copy(weight, "LinearHead weight")?,
            bias: f32_copy(bias, "LinearHead bias")?,
        })
    }

    /// Number of classes C.
    pub fn n_classes(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Feature dimension d.
    pub fn dim(&self) -> usize {
        self.weight.dims()[1]
    }

    /// The weight W, `(C, d)` f32.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias b, `(C)` f32.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// Logits `z Wᵀ + b` of `(n, d)` features, `(n, C)` f32.
    pub fn logits(&self, z: &Tensor) -> Result<Tensor> {
        let z = self.features(z, "LinearHead::logits")?;
        let n = z.dims()[0];
        Ok(Tensor::from_vec(
            self.logits_of(&z)?,
            (n, self.n_classes()),
            &Device::Cpu,
        )?)
    }

    /// The logits of features already checked by [`features`](Self::features), row-major, from
    /// the kernel the training passes use ([`replens_kernels::linear_head_logits`]), so that the
    /// classifier's predictions, AdUE's error targets and the head's own logits agree bit for
    /// bit.
    fn logits_of(&self, z: &Tensor) -> Result<Vec<f32>> {
        let w = self.weight.flatten_all()?.to_vec1::<f32>()?;
        let b = self.bias.to_vec1::<f32>()?;
        let mut logits = vec![0.0f32; z.dims()[0] * self.n_classes()];
        with_rows(z, |rows| {
            replens_kernels::linear_head_logits(rows, self.dim(), &w, &b, &mut logits)
        })?;
        Ok(logits)
    }

    /// Softmax probabilities, `(n, C)` f32.
    pub fn probs(&self, z: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax(&self.logits(z)?, 1)?)
    }

    /// Predicted classes (arg-max of the logits, first on ties).
    pub fn predict(&self, z: &Tensor) -> Result<Vec<usize>> {
        crate::metrics::uncertainty::predictions(&self.logits(z)?)
    }

    fn features(&self, z: &Tensor, what: &str) -> Result<Tensor> {
        let (n, d) = z.dims2().map_err(|_| {
            invalid(format!(
                "{what}: z must be a 2-D (n, d) tensor, got shape {:?}",
                z.dims()
            ))
        })?;
        if d != self.dim() {
            return Err(invalid(format!(
                "{what}: z has {d} columns but the classifier head expects d = {}",
                self.dim()
            )));
        }
        if n == 0 {
            return Err(invalid(format!("{what}: z has no rows (empty split)")));
        }
        let what = format!("{what}: z");
        if z.dtype() != DType::F32 || !z.device().is_cpu() || !z.is_contiguous() {
            return f32_copy(z, &what);
        }
        // Already f32 in one block: checked in place and used as it is (features are only read,
        // and only during the call), instead of copying what can be hundreds of MB.
        with_rows(z, |v| check_finite(v, &what))??;
        Ok(z.clone())
    }
}

/// One split of the data: features `z` `(n, d)` and gold labels in `0..C`.
#[derive(Debug, Clone, Copy)]
pub struct Split<'a> {
    /// Features, `(n, d)`, any float dtype.
    pub z: &'a Tensor,
    /// Gold labels, one per row.
    pub labels: &'a [usize],
}

impl<'a> Split<'a> {
    /// Pair features with labels (checked when used).
    pub fn new(z: &'a Tensor, labels: &'a [usize]) -> Self {
        Self { z, labels }
    }
}

/// A split ready for training: f32 features, error targets e and the SR target U_SR.
struct Prepared {
    z: Tensor,
    e: Vec<f64>,
    u_sr: Vec<f64>,
    errors: Vec<bool>,
    n: usize,
}

fn prepare(classifier: &LinearHead, split: Split<'_>, name: &str) -> Result<Prepared> {
    let what = format!("AdUE {name} split");
    let z = classifier.features(split.z, &what)?;
    let n = z.dims()[0];
    let c = classifier.n_classes();
    if split.labels.len() != n {
        return Err(invalid(format!(
            "{what}: z has {n} rows but there are {} labels",
            split.labels.len()
        )));
    }
    if let Some((i, &l)) = split.labels.iter().enumerate().find(|(_, &l)| l >= c) {
        return Err(invalid(format!(
            "{what}: label {i} is {l}, out of range for {c} classes (0..{})",
            c - 1
        )));
    }
    // The classifier's softmax in f32 (torch's precision in the official code), from its logits
    // (those of `LinearHead::predict`): p_max = e⁰ / Σ_c e^(a_c − a_max) = 1 / Σ.
    let logits = classifier.logits_of(&z)?;
    let scale = 1.0 - 1.0 / c as f32;
    let mut errors = Vec::with_capacity(n);
    let mut u_sr = Vec::with_capacity(n);
    for (row, &y) in logits.chunks_exact(c).zip(split.labels) {
        let mut best = 0;
        for (j, &v) in row.iter().enumerate() {
            if v > row[best] {
                best = j;
            }
        }
        let sum: f32 = row.iter().map(|&v| (v - row[best]).exp()).sum();
        errors.push(best != y);
        u_sr.push((1.0 - 1.0 / sum) / scale);
    }
    let n_err = errors.iter().filter(|&&e| e).count();
    if n_err == 0 || n_err == n {
        return Err(invalid(format!(
            "{what}: the classifier is {} on all {n} examples, so the error indicator has one \
             class only and ROC-AUC / BCE on it are meaningless",
            if n_err == 0 { "right" } else { "wrong" }
        )));
    }
    Ok(Prepared {
        z,
        e: errors.iter().map(|&b| f64::from(u8::from(b))).collect(),
        u_sr: u_sr.into_iter().map(f64::from).collect(),
        errors,
        n,
    })
}

/// One-cycle schedule with cosine annealing (Smith & Topin, *Super-Convergence*, 2018), the
/// same numbers as `torch.optim.lr_scheduler.OneCycleLR(anneal_strategy="cos",
/// three_phase=False)` with its default momentum cycling, which is what the official AdUE
/// code runs. For optimiser step `s` (0-based) of `T`:
///
/// ```text
///   lr_0 = max_lr / div_factor,  lr_min = lr_0 / final_div_factor,  s₁ = pct_start·T − 1
///   s ≤ s₁:     lr = cos(lr_0 → max_lr, s / s₁),          β1 = cos(0.95 → 0.85, s / s₁)
///   otherwise:  lr = cos(max_lr → lr_min, (s − s₁)/(T − 1 − s₁)), β1 = cos(0.85 → 0.95, ·)
///   cos(a → b, t) = b + (a − b)(1 + cos πt) / 2
/// ```
///
/// AdUE uses `pct_start = 0.1` (the warm-up fraction), `div_factor = 25`,
/// `final_div_factor = 1e4`; Adam's β1 is the "momentum" that is cycled. Steps past the end
/// stay at the final values; a warm-up of zero length counts as finished (torch divides by
/// zero there).
///
/// ```
/// use replens::train::adue::OneCycle;
/// let s = OneCycle::new(1e-3, 100);
/// assert!((s.lr(0) - 4e-5).abs() < 1e-15);
/// assert!((s.lr(9) - 1e-3).abs() < 1e-15); // peak at step pct_start·T − 1
/// assert!((s.lr(99) - 4e-9).abs() < 1e-18);
/// assert!((s.beta1(9) - 0.85).abs() < 1e-15 && (s.beta1(99) - 0.95).abs() < 1e-15);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneCycle {
    /// Peak learning rate.
    pub max_lr: f64,
    /// Total number of optimiser steps T.
    pub total_steps: usize,
    /// Fraction of T spent warming up (0.1).
    pub pct_start: f64,
    /// Initial lr = max_lr / div_factor (25).
    pub div_factor: f64,
    /// Final lr = initial lr / final_div_factor (1e4).
    pub final_div_factor: f64,
    /// β1 at the peak learning rate (0.85).
    pub base_momentum: f64,
    /// β1 at the start and the end (0.95).
    pub max_momentum: f64,
}

impl OneCycle {
    /// torch's defaults with AdUE's settings: pct_start 0.1, div 25, final div 1e4,
    /// momentum 0.85–0.95.
    pub fn new(max_lr: f64, total_steps: usize) -> Self {
        Self {
            max_lr,
            total_steps,
            pct_start: 0.1,
            div_factor: 25.0,
            final_div_factor: 1e4,
            base_momentum: 0.85,
            max_momentum: 0.95,
        }
    }

    /// (phase, fraction of the phase) at `step`: phase 0 warms up, phase 1 anneals.
    fn phase(&self, step: usize) -> (usize, f64) {
        let s = step as f64;
        let end1 = self.pct_start * self.total_steps as f64 - 1.0;
        let end2 = self.total_steps as f64 - 1.0;
        let frac = |num: f64, den: f64| {
            if den <= 0.0 {
                1.0
            } else {
                (num / den).clamp(0.0, 1.0)
            }
        };
        if s <= end1 {
            (0, frac(s, end1))
        } else {
            (1, frac(s - end1, end2 - end1))
        }
    }

    /// Learning rate at `step`.
    pub fn lr(&self, step: usize) -> f64 {
        let initial = self.max_lr / self.div_factor;
        match self.phase(step) {
            (0, t) => cos_anneal(initial, self.max_lr, t),
            (_, t) => cos_anneal(self.max_lr, initial / self.final_div_factor, t),
        }
    }

    /// Adam's β1 at `step` (cycled inversely to the learning rate).
    pub fn beta1(&self, step: usize) -> f64 {
        match self.phase(step) {
            (0, t) => cos_anneal(self.max_momentum, self.base_momentum, t),
            (_, t) => cos_anneal(self.base_momentum, self.max_momentum, t),
        }
    }
}

fn cos_anneal(a: f64, b: f64, t: f64) -> f64 {
    b + (a - b) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
}

/// Adam exactly as `torch.optim.Adam` (no weight decay, no amsgrad), with β1 given per step
/// because the one-cycle schedule cycles it. The head has a few thousand parameters, so the
/// update is a plain loop over them (moments in f64, parameters stored in f32 like torch's).
struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    const BETA2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    fn new(n_params: usize) -> Self {
        Self {
            m: vec![0.0; n_params],
            v: vec![0.0; n_params],
            t: 0,
        }
    }

    /// One step on `params` (all of the head's parameters, flattened) with gradient `grad`.
    fn step(&mut self, params: &mut [f32], grad: &[f64], lr: f64, beta1: f64) {
        self.t += 1;
        let bc1 = 1.0 - beta1.powi(self.t);
        let bc2_sqrt = (1.0 - Self::BETA2.powi(self.t)).sqrt();
        for (((p, &g), m), v) in params
            .iter_mut()
            .zip(grad)
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            *m = beta1 * *m + (1.0 - beta1) * g;
            *v = Self::BETA2 * *v + (1.0 - Self::BETA2) * g * g;
            let denom = v.sqrt() / bc2_sqrt + Self::EPS;
            *p = (f64::from(*p) - lr / bc1 * *m / denom) as f32;
        }
    }
}

/// Hyper-parameters of one AdUE fit. `AdueConfig::default()` is the official setup with the
/// middle of the paper's grid (lr 1e-4, α 0.1, β 0.1); adjust with the builder methods.
///
/// ```
/// use replens::train::adue::AdueConfig;
/// let cfg = AdueConfig::default().lr(4e-4).alpha(1.0).beta(0.01).seed(3);
/// assert_eq!((cfg.lr, cfg.batch_size, cfg.epochs, cfg.patience), (4e-4, 128, 50, 5));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AdueConfig {
    /// Peak learning rate of the one-cycle schedule.
    pub lr: f64,
    /// Weight α of the softmax-response regulariser mean((U − U_SR)²).
    pub alpha: f64,
    /// Weight β of the L2-SP penalty Σ‖θ − θ₀‖².
    pub beta: f64,
    /// SmoothMax temperature λ (100 in the paper).
    pub lambda: f64,
    /// Maximum number of epochs (50); also sets the length of the one-cycle schedule.
    pub epochs: usize,
    /// Early-stopping patience in epochs without a strictly better validation ROC-AUC (5).
    pub patience: usize,
    /// Mini-batch size (128).
    pub batch_size: usize,
    /// Seed of the per-epoch shuffling.
    pub seed: u64,
    /// Warm-up fraction of the one-cycle schedule (`pct_start`, 0.1 as in the official code).
    pub warmup_frac: f64,
    /// Initial lr = lr / `div_factor` (25).
    pub div_factor: f64,
    /// Final lr = initial lr / `final_div_factor` (1e4).
    pub final_div_factor: f64,
    /// Report progress on stderr ([`crate::progress::Progress`]).
    pub verbose: bool,
}

impl Default for AdueConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            alpha: 0.1,
            beta: 0.1,
            lambda: 100.0,
            epochs: 50,
            patience: 5,
            batch_size: 128,
            seed: 0,
            warmup_frac: 0.1,
            div_factor: 25.0,
            final_div_factor: 1e4,
            verbose: false,
        }
    }
}

macro_rules! setter {
    ($(#[$doc:meta] $name:ident: $t:ty),* $(,)?) => {
        $(
            #[$doc]
            pub fn $name(mut self, $name: $t) -> Self {
                self.$name = $name;
                self
            }
        )*
    };
}

impl AdueConfig {
    setter! {
        /// Set the peak learning rate.
        lr: f64,
        /// Set α (softmax-response regulariser).
        alpha: f64,
        /// Set β (L2-SP).
        beta: f64,
        /// Set the SmoothMax λ.
        lambda: f64,
        /// Set the maximum number of epochs.
        epochs: usize,
        /// Set the early-stopping patience.
        patience: usize,
        /// Set the batch size.
        batch_size: usize,
        /// Set the shuffling seed.
        seed: u64,
        /// Set the one-cycle warm-up fraction.
        warmup_frac: f64,
        /// Turn progress reporting on or off.
        verbose: bool,
    }

    fn validate(&self) -> Result<()> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(invalid(format!(
                    "AdueConfig: {name} must be finite and > 0, got {v}"
                )))
            }
        };
        positive("lr", self.lr)?;
        positive("lambda", self.lambda)?;
        positive("div_factor", self.div_factor)?;
        positive("final_div_factor", self.final_div_factor)?;
        for (name, v) in [("alpha", self.alpha), ("beta", self.beta)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(format!(
                    "AdueConfig: {name} must be finite and ≥ 0, got {v}"
                )));
            }
        }
        if !(0.0..=1.0).contains(&self.warmup_frac) {
            return Err(invalid(format!(
                "AdueConfig: warmup_frac must lie in [0, 1], got {}",
                self.warmup_frac
            )));
        }
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(invalid(format!(
                "AdueConfig: epochs ({}) and batch_size ({}) must be at least 1",
                self.epochs, self.batch_size
            )));
        }
        Ok(())
    }

    /// Train an AdUE head on `train`, early-stopping on `val` (see the module docs).
    ///
    /// Errors: shape mismatches between z, labels and the classifier head; labels ≥ C;
    /// empty splits; NaN/inf features; a split on which the classifier makes no error (or
    /// only errors), since the target then has one class; an invalid config.
    ///
    /// ```
    /// use replens::candle_core::{Device, Tensor};
    /// use replens::train::adue::{AdueConfig, LinearHead, Split};
    /// // 2 classes on a line; the classifier errs near the boundary x = 0.
    /// let xs: Vec<f32> = (0..200).map(|i| (i as f32 - 99.5) / 50.0).collect();
    /// let labels: Vec<usize> = xs.iter().enumerate()
    ///     .map(|(i, &x)| if (x > 0.0) ^ (i % 7 == 0 && x.abs() < 0.6) { 1 } else { 0 })
    ///     .collect();
    /// let z = Tensor::from_vec(xs, (200, 1), &Device::Cpu)?;
    /// let head = LinearHead::new(
    ///     &Tensor::new(&[[-2f32], [2.0]], &Device::Cpu)?,
    ///     &Tensor::new(&[0f32, 0.0], &Device::Cpu)?,
    /// )?;
    /// let split = Split::new(&z, &labels);
    /// let adue = AdueConfig::default().lr(1e-2).epochs(5).fit(&head, split, split)?;
    /// assert!(adue.best_epoch() >= 1 && adue.log().len() <= 5);
    /// let u = adue.uncertainty(&z)?;
    /// assert!(u[100] > u[199]); // near the boundary vs far from it
    /// # Ok::<(), replens::Error>(())
    /// ```
    pub fn fit(
        &self,
        classifier: &LinearHead,
        train: Split<'_>,
        val: Split<'_>,
    ) -> Result<AdueHead> {
        self.validate()?;
        let train = prepare(classifier, train, "train")?;
        let val = prepare(classifier, val, "validation")?;
        fit_prepared(self, classifier, &train, &val, Some("AdUE epochs"))
    }
}

/// One epoch of an AdUE fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochLog {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (weighted by batch size).
    pub loss: f64,
    /// Mean BCE part.
    pub bce: f64,
    /// Mean softmax-response regulariser mean((U − U_SR)²), before α.
    pub reg: f64,
    /// Mean L2-SP penalty Σ‖θ − θ₀‖², before β.
    pub l2sp: f64,
    /// Validation ROC-AUC of U against the error indicator after the epoch (0..1).
    pub val_auc: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
}

/// A trained (or freshly initialised) AdUE head: its own copy of the classifier head and
/// the training record.
#[derive(Debug, Clone)]
pub struct AdueHead {
    weight: Tensor,
    bias: Tensor,
    lambda: f64,
    log: Vec<EpochLog>,
    best_epoch: usize,
    best_val_auc: f64,
    init_val_auc: f64,
    config: Option<AdueConfig>,
}

impl AdueHead {
    /// The untrained head: a copy of the classifier head, so U is a smooth version of the
    /// normalised softmax response (exactly monotone in it for C = 2).
    pub fn from_classifier(classifier: &LinearHead, lambda: f64) -> Result<Self> {
        if !(lambda.is_finite() && lambda > 0.0) {
            return Err(invalid(format!(
                "AdueHead: lambda must be finite and > 0, got {lambda}"
            )));
        }
        Ok(Self {
            weight: classifier.weight.copy()?,
            bias: classifier.bias.copy()?,
            lambda,
            log: Vec::new(),
            best_epoch: 0,
            best_val_auc: f64::NAN,
            init_val_auc: f64::NAN,
            config: None,
        })
    }

    /// Uncertainty U ∈ [1e-8, 1 − 1e-8] of every row of `z` `(n, d)` (higher = more likely
    /// an error of the classifier).
    pub fn uncertainty(&self, z: &Tensor) -> Result<Vec<f64>> {
        let head = LinearHead {
            weight: self.weight.clone(),
            bias: self.bias.clone(),
        };
        let z = head.features(z, "AdueHead::uncertainty")?;
        let w = self.weight.flatten_all()?.to_vec1::<f32>()?;
        let b = self.bias.to_vec1::<f32>()?;
        with_rows(&z, |z| uncertainties(z, &w, &b, self.lambda))
    }

    /// Per-epoch record (empty for an untrained head).
    pub fn log(&self) -> &[EpochLog] {
        &self.log
    }

    /// The epoch whose weights were kept (1-based; 0 for an untrained head).
    pub fn best_epoch(&self) -> usize {
        self.best_epoch
    }

    /// Validation ROC-AUC at [`AdueHead::best_epoch`] (NaN for an untrained head).
    pub fn best_val_auc(&self) -> f64 {
        self.best_val_auc
    }

    /// Validation ROC-AUC of the initial head (≈ that of the softmax response).
    pub fn init_val_auc(&self) -> f64 {
        self.init_val_auc
    }

    /// The configuration it was trained with (`None` for an untrained head).
    pub fn config(&self) -> Option<&AdueConfig> {
        self.config.as_ref()
    }

    /// The head's weight W' `(C, d)` f32.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The head's bias b' `(C)` f32.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
}

/// Runs `f` on the values of `z`, a contiguous f32 CPU tensor (as [`LinearHead::features`]
/// makes them), without copying them.
fn with_rows<R>(z: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = z.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(invalid("AdUE: features must be on the CPU".into()));
    };
    let start = layout.start_offset();
    let values = cpu.as_slice::<f32>()?;
    match values.get(start..start + z.elem_count()) {
        Some(rows) if z.is_contiguous() => Ok(f(rows)),
        _ => Err(invalid(format!(
            "AdUE: features of shape {:?} are not one contiguous block",
            z.dims()
        ))),
    }
}

/// U = clamp((1 − SmoothMax_λ(softmax(zWᵀ + b))) / (1 − 1/C), 1e-8, 1 − 1e-8) of every row of
/// `z` (`n × d`, row-major); the logits as the training pass computes them.
fn uncertainties(z: &[f32], w: &[f32], b: &[f32], lambda: f64) -> Vec<f64> {
    let c = b.len();
    let d = w.len() / c;
    let rows = z.len() / d;
    let mut logits = vec![0.0f32; rows * c];
    replens_kernels::linear_head_logits(z, d, w, b, &mut logits);
    let mut u = vec![0.0; rows];
    replens_kernels::smooth_max_uncertainties(&logits, c, lambda, &mut u);
    u
}

/// The loss of one batch and its gradient with respect to (W, b), flattened as W then b.
struct Step {
    total: f64,
    bce: f64,
    reg: f64,
    l2sp: f64,
    grad: Vec<f64>,
}

/// Loss and gradient for the batch `z` `(B, d)` with targets `e` and `u_sr`, written out by
/// hand (the head is one linear layer, so autograd's graph would cost far more than the
/// arithmetic). With g_U = ∂loss/∂U of a row:
///
/// ```text
///   g_U   = (1/B)·[(1 − e)/(1 − U) − e/U] + (2α/B)·(U − U_SR)
///   g_p,c = −g_U · q_c / (1 − 1/C)             (q = softmax(λp), zero where U is clamped)
///   g_a,c = p_c · (g_p,c − Σ_k p_k g_p,k)      (softmax Jacobian)
///   ∂/∂W  = g_aᵀ z + 2β(W − W₀),   ∂/∂b = Σ_rows g_a + 2β(b − b₀)
/// ```
///
/// The logits, g_a and g_aᵀ z come from one pass over the rows of `z` (`B × d`, row-major;
/// [`replens_kernels::linear_head_pass`]): with C = 2 a step is bound by reading `z`, which
/// two matrix products read twice. The per-row terms are [`replens_kernels::adue_row_gradients`]
/// (built optimised, like the passes over `z`). The BCE's logarithms are clamped at −100 like
/// `torch.nn.BCELoss` (U ∈ [1e-8, 1 − 1e-8] keeps them far above it in f64).
#[allow(clippy::too_many_arguments)]
fn loss_and_grad(
    z: &[f32],
    e: &[f64],
    u_sr: &[f64],
    params: &[f32],
    params0: &[f32],
    c: usize,
    lambda: f64,
    alpha: f64,
    beta: f64,
) -> Result<Step> {
    let rows = e.len();
    let d = (params.len() - c) / c;
    let (w, b) = params.split_at(c * d);
    let inv_b = 1.0 / rows as f64;
    let loss = replens_kernels::AdueLoss {
        lambda,
        alpha,
        batch_rows: rows,
    };
    let (mut gw, mut gb) = (vec![0.0f64; c * d], vec![0.0f64; c]);
    let blocks = replens_kernels::linear_head_pass(z, d, w, b, &mut gw, &mut gb, |first, a, ga| {
        let block = first..first + ga.len() / c;
        replens_kernels::adue_row_gradients(a, c, &e[block.clone()], &u_sr[block], loss, ga)
    });
    let (bce, reg) = blocks
        .iter()
        .fold((0.0, 0.0), |(b0, r0), (b1, r1)| (b0 + b1, r0 + r1));
    let mut l2sp = 0.0;
    let grad = gw
        .iter()
        .chain(&gb)
        .zip(params.iter().zip(params0))
        .map(|(&gi, (&th, &th0))| {
            let diff = f64::from(th) - f64::from(th0);
            l2sp += diff * diff;
            gi + 2.0 * beta * diff
        })
        .collect();
    let (bce, reg) = (bce * inv_b, reg * inv_b);
    Ok(Step {
        total: bce + alpha * reg + beta * l2sp,
        bce,
        reg,
        l2sp,
        grad,
    })
}

fn val_auc(params: &[f32], c: usize, lambda: f64, val: &Prepared, epoch: usize) -> Result<f64> {
    let (w, b) = params.split_at(params.len() - c);
    let u = with_rows(&val.z, |z| uncertainties(z, w, b, lambda))?;
    if u.iter().any(|v| !v.is_finite()) {
        return Err(invalid(format!(
            "AdUE: training diverged (non-finite uncertainty on validation after epoch {epoch}); \
             lower the learning rate"
        )));
    }
    roc_auc(&u, &val.errors)
}

fn fit_prepared(
    cfg: &AdueConfig,
    classifier: &LinearHead,
    train: &Prepared,
    val: &Prepared,
    progress_label: Option<&str>,
) -> Result<AdueHead> {
    let c = classifier.n_classes();
    // W then b, flattened: fresh vectors, never aliasing the classifier's tensors
    let params0: Vec<f32> = classifier
        .weight
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .chain(classifier.bias.to_vec1::<f32>()?)
        .collect();
    let mut params = params0.clone();
    let mut opt = Adam::new(params.len());
    let init_val_auc = val_auc(&params0, c, cfg.lambda, val, 0)?;
    let batches_per_epoch = train.n.div_ceil(cfg.batch_size);
    let schedule = OneCycle {
        pct_start: cfg.warmup_frac,
        div_factor: cfg.div_factor,
        final_div_factor: cfg.final_div_factor,
        ..OneCycle::new(cfg.lr, cfg.epochs * batches_per_epoch)
    };
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut order: Vec<u32> = (0..train.n as u32).collect();
    let mut log = Vec::new();
    let mut best: Option<(usize, f64, Vec<f32>)> = None;
    let mut since_best = 0;
    let mut step = 0;
    let mut progress = progress_label.map(|l| Progress::new(l, cfg.epochs, cfg.verbose));
    let d = classifier.dim();
    let (mut e, mut u_sr, mut batch_z) = (Vec::new(), Vec::new(), Vec::new());
    // A batch of every row needs no gather: the loss is a sum over rows.
    let full_batch = cfg.batch_size >= train.n;
    let full_pass = |params: &[f32]| -> Result<Step> {
        with_rows(&train.z, |z| {
            loss_and_grad(
                z,
                &train.e,
                &train.u_sr,
                params,
                &params0,
                c,
                cfg.lambda,
                cfg.alpha,
                cfg.beta,
            )
        })?
    };
    // The full-batch pass of the next epoch, computed alongside this epoch's validation.
    let mut next_pass: Option<Result<Step>> = None;
    for epoch in 1..=cfg.epochs {
        if cfg.batch_size < train.n {
            // one batch of every row is a sum over all rows, whatever their order
            order.shuffle(&mut rng);
        }
        let (mut loss_sum, mut bce_sum, mut reg_sum, mut l2sp_sum) = (0.0, 0.0, 0.0, 0.0);
        let mut lr = cfg.lr;
        for chunk in order.chunks(cfg.batch_size) {
            let parts = if full_batch {
                match next_pass.take() {
                    Some(pass) => pass?,
                    None => full_pass(&params)?,
                }
            } else {
                with_rows(&train.z, |z| {
                    batch_z.clear();
                    for &i in chunk {
                        batch_z.extend_from_slice(&z[i as usize * d..(i as usize + 1) * d]);
                    }
                })?;
                e.clear();
                e.extend(chunk.iter().map(|&i| train.e[i as usize]));
                u_sr.clear();
                u_sr.extend(chunk.iter().map(|&i| train.u_sr[i as usize]));
                loss_and_grad(
                    &batch_z, &e, &u_sr, &params, &params0, c, cfg.lambda, cfg.alpha, cfg.beta,
                )?
            };
            let loss = parts.total;
            if !loss.is_finite() {
                return Err(invalid(format!(
                    "AdUE: the training loss became {loss} at epoch {epoch}; lower the learning rate"
                )));
            }
            lr = schedule.lr(step);
            opt.step(&mut params, &parts.grad, lr, schedule.beta1(step));
            step += 1;
            let k = chunk.len() as f64;
            loss_sum += loss * k;
            bce_sum += parts.bce * k;
            reg_sum += parts.reg * k;
            l2sp_sum += parts.l2sp * k;
        }
        let n = train.n as f64;
        let auc = if full_batch && epoch < cfg.epochs {
            // The next epoch's pass reads the parameters this validation reads, so both run at
            // once and share the threads (the serial AUC overlaps the pass). If early stopping
            // ends the fit here, the pass is not used.
            let (auc, pass) = rayon::join(
                || val_auc(&params, c, cfg.lambda, val, epoch),
                || full_pass(&params),
            );
            next_pass = Some(pass);
            auc?
        } else {
            val_auc(&params, c, cfg.lambda, val, epoch)?
        };
        log.push(EpochLog {
            epoch,
            loss: loss_sum / n,
            bce: bce_sum / n,
            reg: reg_sum / n,
            l2sp: l2sp_sum / n,
            val_auc: auc,
            lr,
        });
        if let Some(p) = progress.as_mut() {
            p.inc(1);
        }
        if best.as_ref().is_none_or(|(_, a, _)| auc > *a) {
            best = Some((epoch, auc, params.clone()));
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= cfg.patience {
                break;
            }
        }
    }
    if let Some(p) = progress {
        p.finish();
    }
    let Some((best_epoch, best_val_auc, mut weight)) = best else {
        return Err(invalid("AdUE: no epoch was run".into()));
    };
    let bias = weight.split_off(weight.len() - c);
    let d = weight.len() / c;
    Ok(AdueHead {
        weight: Tensor::from_vec(weight, (c, d), &Device::Cpu)?,
        bias: Tensor::from_vec(bias, c, &Device::Cpu)?,
        lambda: cfg.lambda,
        log,
        best_epoch,
        best_val_auc,
        init_val_auc,
        config: Some(cfg.clone()),
    })
}

/// The hyper-parameter grid searched by [`grid_search`].
#[derive(Debug, Clone, PartialEq)]
pub struct AdueGrid {
    /// Peak learning rates.
    pub lr: Vec<f64>,
    /// α values.
    pub alpha: Vec<f64>,
    /// β values.
    pub beta: Vec<f64>,
}

impl AdueGrid {
    /// The paper's 27 points: lr {4e-4, 1e-4, 1e-5} × α {0.01, 0.1, 1} × β {0.01, 0.1, 1}.
    pub fn paper() -> Self {
        Self {
            lr: vec![4e-4, 1e-4, 1e-5],
            alpha: vec![0.01, 0.1, 1.0],
            beta: vec![0.01, 0.1, 1.0],
        }
    }

    /// A custom (e.g. smaller) grid.
    pub fn new(lr: Vec<f64>, alpha: Vec<f64>, beta: Vec<f64>) -> Self {
        Self { lr, alpha, beta }
    }

    /// Number of points, |lr| · |α| · |β|.
    pub fn len(&self) -> usize {
        self.lr.len() * self.alpha.len() * self.beta.len()
    }

    /// Whether the grid has no point.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The result of one grid point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridPoint {
    /// Peak learning rate.
    pub lr: f64,
    /// α.
    pub alpha: f64,
    /// β.
    pub beta: f64,
    /// Best validation ROC-AUC of the fit (the selection criterion).
    pub val_auc: f64,
    /// Epoch that gave it.
    pub best_epoch: usize,
    /// Epochs run before early stopping.
    pub epochs_run: usize,
}

/// Result of [`grid_search`]: every point, and the head of the best one.
#[derive(Debug, Clone)]
pub struct GridSearch {
    /// All points, in grid order (lr outermost, β innermost).
    pub points: Vec<GridPoint>,
    /// Index into `points` of the selected one.
    pub best_index: usize,
    /// The selected head, to be evaluated on the test split.
    pub best: AdueHead,
}

/// Fit one AdUE head per point of `grid` (all other settings from `base`) and keep the one
/// with the highest validation ROC-AUC (the first on ties), as in the paper: pick by
/// validation, report test. Progress goes through [`crate::progress::Progress`], one step
/// per grid point, when `base.verbose` is set.
///
/// Errors as for [`AdueConfig::fit`], plus an empty grid.
pub fn grid_search(
    grid: &AdueGrid,
    base: &AdueConfig,
    classifier: &LinearHead,
    train: Split<'_>,
    val: Split<'_>,
) -> Result<GridSearch> {
    if grid.is_empty() {
        return Err(invalid(format!(
            "grid_search: the grid is empty ({} lr × {} alpha × {} beta values)",
            grid.lr.len(),
            grid.alpha.len(),
            grid.beta.len()
        )));
    }
    // Every point's config is checked before the first (possibly long) fit.
    let configs: Vec<AdueConfig> = grid
        .lr
        .iter()
        .flat_map(|&lr| {
            grid.alpha.iter().flat_map(move |&alpha| {
                grid.beta
                    .iter()
                    .map(move |&beta| base.clone().lr(lr).alpha(alpha).beta(beta).verbose(false))
            })
        })
        .collect();
    for cfg in &configs {
        cfg.validate()?;
    }
    let train = prepare(classifier, train, "train")?;
    let val = prepare(classifier, val, "validation")?;
    let mut progress = Progress::new("AdUE grid", grid.len(), base.verbose);
    let mut points = Vec::with_capacity(grid.len());
    let mut best: Option<(usize, AdueHead)> = None;
    for cfg in &configs {
        let head = fit_prepared(cfg, classifier, &train, &val, None)?;
        points.push(GridPoint {
            lr: cfg.lr,
            alpha: cfg.alpha,
            beta: cfg.beta,
            val_auc: head.best_val_auc,
            best_epoch: head.best_epoch,
            epochs_run: head.log.len(),
        });
        if best
            .as_ref()
            .is_none_or(|(_, h)| head.best_val_auc > h.best_val_auc)
        {
            best = Some((points.len() - 1, head));
        }
        progress.inc(1);
    }
    progress.finish();
    let (best_index, best) =
        best.ok_or_else(|| invalid("grid_search: no point was fitted".into()))?;
    Ok(GridSearch {
        points,
        best_index,
        best,
    })
}
