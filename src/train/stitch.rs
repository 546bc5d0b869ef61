//! Model stitching (Bansal et al., NeurIPS 2021, arXiv 2106.07682; as used by Brown et al.,
//! "Understanding the Inner Workings of Language Models Through Representation
//! Dissimilarity", EMNLP 2023, arXiv 2310.14993).
//!
//! Take model A's residual stream after block `l` (`blocks.{l}.hook_resid_post`, A frozen), map it
//! with a trainable affine map `s(x) = x·Wᵀ + b` (`d_A → d_B`), and feed it into model B as the
//! residual stream entering block `l + 1` (B frozen); B's remaining blocks, final norm and head
//! give next-token logits. Only `W` and `b` are trained, on B's next-token cross-entropy. The
//! **stitching penalty** is `L(B ∘ s ∘ A≤l) − L(B)` on held-out text: how much worse B predicts
//! when its first `l + 1` blocks are replaced by A's. Doing A→B and B→A at every `l` gives the
//! asymmetry matrix of the paper (GeLU representations stitch into SoLU models better than the
//! reverse).
//!
//! Both models must share a tokenizer (same ids for every text). Texts are split into training
//! and held-out parts by text (seeded), each packed into `seq_len`-token windows.

use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use polars::prelude::{DataFrame, NamedFrom, Series};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::error::{bail, Context, Error, Result};
use crate::hooks::{HookPoint, HookSpec};
use crate::model::{token_losses, Model};
use crate::progress::Progress;
use crate::train::toy::{pack_windows, split_indices, EOT};

/// How the stitching map starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StitchInit {
    /// Identity when the widths match, least squares otherwise.
    Auto,
    /// `W = I`, `b = 0` (widths must match): stitching a model into itself then changes nothing.
    Identity,
    /// Ridge least-squares regression of B's residual stream on A's over the training tokens
    /// (`W = (X̃ᵀX̃ + λI)⁻¹X̃ᵀỸ` on centred `X̃`, `Ỹ`, `b = ȳ − W x̄`, `λ = 10⁻⁴·tr(X̃ᵀX̃)/d_A`):
    /// the best linear guess before any gradient step, for any widths.
    LeastSquares,
    /// `W ~ Normal(0, 1/d_A)`, `b = 0`, seeded.
    Random,
}

/// Settings of [`stitch`].
#[derive(Debug, Clone, PartialEq)]
pub struct StitchConfig {
    /// AdamW steps on the map (0: only evaluate the initial map).
    pub steps: usize,
    /// Windows per step (and per evaluation batch).
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Window length in tokens (capped by both models' context).
    pub seq_len: usize,
    /// Share of the texts held out for the reported losses.
    pub eval_fraction: f64,
    /// Most training / held-out windows used (bounds memory and time).
    pub max_train_windows: usize,
    pub max_eval_windows: usize,
    pub init: StitchInit,
    /// Seeds the split, the batches and a random init.
    pub seed: u64,
    /// Show progress on stderr.
    pub progress: bool,
}

impl Default for StitchConfig {
    /// 200 steps of 8 windows of 64 tokens at lr 1e-3, no weight decay, 20 % held out.
    fn default() -> Self {
        Self {
            steps: 200,
            batch_size: 8,
            lr: 1e-3,
            weight_decay: 0.0,
            seq_len: 64,
            eval_fraction: 0.2,
            max_train_windows: 512,
            max_eval_windows: 64,
            init: StitchInit::Auto,
            seed: 0,
            progress: true,
        }
    }
}

impl StitchConfig {
    pub fn steps(mut self, n: usize) -> Self {
        self.steps = n;
        self
    }
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }
    pub fn lr(mut self, lr: f64) -> Self {
        self.lr = lr;
        self
    }
    pub fn seq_len(mut self, n: usize) -> Self {
        self.seq_len = n;
        self
    }
    pub fn init(mut self, init: StitchInit) -> Self {
        self.init = init;
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    pub fn progress(mut self, yes: bool) -> Self {
        self.progress = yes;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.max_train_windows == 0 || self.max_eval_windows == 0 {
            bail!("stitch: batch_size, max_train_windows and max_eval_windows must be at least 1");
        }
        if self.seq_len < 2 {
            bail!(
                "stitch: seq_len must be at least 2 (one prediction), got {}",
                self.seq_len
            );
        }
        if !self.lr.is_finite() || self.lr <= 0.0 {
            bail!("stitch: lr must be positive and finite, got {}", self.lr);
        }
        if !self.weight_decay.is_finite() || self.weight_decay < 0.0 {
            bail!(
                "stitch: weight_decay must be finite and ≥ 0, got {}",
                self.weight_decay
            );
        }
        if !(self.eval_fraction > 0.0 && self.eval_fraction < 1.0) {
            bail!(
                "stitch: eval_fraction must be in (0, 1), got {}",
                self.eval_fraction
            );
        }
        Ok(())
    }
}

/// The affine stitching map `s(x) = x·Wᵀ + b` from width `d_in` (model A) to `d_out` (model B),
/// `W` of shape `(d_out, d_in)` as in `nn.Linear`.
#[derive(Debug, Clone)]
pub struct Stitch {
    weight: Var,
    bias: Var,
}

impl Stitch {
    /// From a `(d_out, d_in)` weight and a `(d_out,)` bias (copied into trainable variables).
    pub fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        let (d_out, _) = weight
            .dims2()
            .context(|| "Stitch: weight must be (d_out, d_in)".to_string())?;
        if bias.dims() != [d_out] {
            bail!(
                "Stitch: bias has shape {:?} but weight has {d_out} output rows",
                bias.dims()
            );
        }
        Ok(Self {
            weight: Var::from_tensor(&weight.to_dtype(DType::F32)?)?,
            bias: Var::from_tensor(&bias.to_dtype(DType::F32)?)?,
        })
    }

    /// `W = I_d`, `b = 0`.
    pub fn identity(d: usize, device: &Device) -> Result<Self> {
        Self::new(
            &Tensor::eye(d, DType::F32, device)?,
            &Tensor::zeros(d, DType::F32, device)?,
        )
    }

    /// `W ~ Normal(0, 1/d_in)` (seeded), `b = 0`.
    pub fn random(d_in: usize, d_out: usize, seed: u64, device: &Device) -> Result<Self> {
        if d_in == 0 || d_out == 0 {
            bail!("Stitch::random: widths must be positive, got {d_in} → {d_out}");
        }
        let normal = Normal::new(0.0f32, (1.0 / d_in as f32).sqrt())
            .map_err(|e| Error::InvalidInput(format!("Stitch::random: {e}")))?;
        let mut rng = StdRng::seed_from_u64(seed);
        let w: Vec<f32> = (0..d_in * d_out).map(|_| normal.sample(&mut rng)).collect();
        Self::new(
            &Tensor::from_vec(w, (d_out, d_in), device)?,
            &Tensor::zeros(d_out, DType::F32, device)?,
        )
    }

    /// Ridge least-squares map from rows of `x` `(n, d_in)` to rows of `y` `(n, d_out)`; see
    /// [`StitchInit::LeastSquares`].
    pub fn least_squares(x: &Tensor, y: &Tensor) -> Result<Self> {
        let (n, d_in) = x
            .dims2()
            .context(|| "Stitch::least_squares: x must be (n, d_in)".to_string())?;
        let (ny, d_out) = y
            .dims2()
            .context(|| "Stitch::least_squares: y must be (n, d_out)".to_string())?;
        if n != ny {
            bail!("Stitch::least_squares: x has {n} rows but y has {ny}");
        }
        if n < 2 {
            bail!("Stitch::least_squares: need at least 2 rows, got {n}");
        }
        let x = x.to_dtype(DType::F64)?;
        let y = y.to_dtype(DType::F64)?;
        let x_mean = x.mean_keepdim(0)?;
        let y_mean = y.mean_keepdim(0)?;
        let xc = x.broadcast_sub(&x_mean)?;
        let yc = y.broadcast_sub(&y_mean)?;
        let xtx = xc.t()?.matmul(&xc)?;
        let xty = xc.t()?.matmul(&yc)?;
        let mut a: Vec<f64> = xtx.flatten_all()?.to_vec1()?;
        let trace: f64 = (0..d_in).map(|i| a[i * d_in + i]).sum();
        let lambda = 1e-4 * trace / d_in as f64 + 1e-12;
        for i in 0..d_in {
            a[i * d_in + i] += lambda;
        }
        let b: Vec<f64> = xty.flatten_all()?.to_vec1()?;
        let w = cholesky_solve(a, d_in, b, d_out)?; // (d_in, d_out), row-major
        if w.iter().any(|v| !v.is_finite()) {
            bail!("Stitch::least_squares: the solution is not finite (x has no variation?)");
        }
        let w = Tensor::from_vec(w, (d_in, d_out), x.device())?;
        let bias = (y_mean - x_mean.matmul(&w)?)?.squeeze(0)?;
        Self::new(&w.t()?.contiguous()?, &bias)
    }

    pub fn d_in(&self) -> usize {
        self.weight.dims()[1]
    }
    pub fn d_out(&self) -> usize {
        self.weight.dims()[0]
    }
    /// Current `(d_out, d_in)` weight.
    pub fn weight(&self) -> Tensor {
        self.weight.as_tensor().detach()
    }
    /// Current `(d_out,)` bias.
    pub fn bias(&self) -> Tensor {
        self.bias.as_tensor().detach()
    }

    /// `x·Wᵀ + b` for `x` of shape `(..., d_in)`. The result tracks gradients to `W`, `b`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.last() != Some(&self.d_in()) {
            bail!(
                "Stitch: input has shape {dims:?} but the map expects width {}",
                self.d_in()
            );
        }
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap_or(&mut 0) = self.d_out();
        Ok(x.reshape((rows, self.d_in()))?
            .matmul(&self.weight.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())?
            .reshape(out_dims)?)
    }

    fn vars(&self) -> Vec<Var> {
        vec![self.weight.clone(), self.bias.clone()]
    }
}

/// Solve `A·X = B` for symmetric positive definite `A` `(n, n)` and `B` `(n, m)` (row-major)
/// by Cholesky factorisation. Not in `metrics`: the eigen-solver there gives no solves.
fn cholesky_solve(mut a: Vec<f64>, n: usize, mut b: Vec<f64>, m: usize) -> Result<Vec<f64>> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d.is_nan() || d <= 0.0 {
            bail!("least squares: the Gram matrix is not positive definite (pivot {j} is {d})");
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    for c in 0..m {
        // Forward substitution L·z = b, then back substitution Lᵀ·x = z, in place.
        for i in 0..n {
            let mut s = b[i * m + c];
            for k in 0..i {
                s -= a[i * n + k] * b[k * m + c];
            }
            b[i * m + c] = s / a[i * n + i];
        }
        for i in (0..n).rev() {
            let mut s = b[i * m + c];
            for k in i + 1..n {
                s -= a[k * n + i] * b[k * m + c];
            }
            b[i * m + c] = s / a[i * n + i];
        }
    }
    Ok(b)
}

/// The outcome of one stitch A → B at one layer. Losses are mean next-token cross-entropies
/// (nats per token) over the held-out windows.
#[derive(Debug, Clone)]
pub struct StitchResult {
    /// Name of the model whose first blocks are used (A).
    pub from: String,
    /// Name of the model that finishes the pass and is scored (B).
    pub to: String,
    /// A's block whose output is stitched into B before B's block `layer + 1`.
    pub layer: usize,
    /// B's own loss, `L(B)`.
    pub own_loss: f64,
    /// `L(B ∘ s ∘ A≤l)` with the initial map.
    pub stitched_loss_init: f64,
    /// `L(B ∘ s ∘ A≤l)` after training.
    pub stitched_loss: f64,
    /// `stitched_loss_init − own_loss`.
    pub penalty_init: f64,
    /// `stitched_loss − own_loss`: the stitching penalty.
    pub penalty: f64,
    /// Training loss at each step.
    pub train_loss: Vec<f32>,
    /// The init actually used (`Auto` resolved).
    pub init: StitchInit,
    /// Tokens in the training / held-out windows.
    pub train_tokens: usize,
    pub eval_tokens: usize,
    /// Wall-clock seconds, including A's forward passes.
    pub seconds: f64,
    /// The trained map.
    pub map: Stitch,
}

/// Token windows of a corpus split for stitching.
struct Windows {
    train: Vec<Vec<u32>>,
    eval: Vec<Vec<u32>>,
}

/// Tokenize with both models, check they agree, split by text and pack.
fn windows<S: AsRef<str>>(
    a: &Model,
    b: &Model,
    texts: &[S],
    cfg: &StitchConfig,
) -> Result<Windows> {
    if texts.is_empty() {
        bail!("stitch: the corpus is empty (0 texts)");
    }
    let (va, vb) = (
        a.tokenizer().get_vocab_size(true),
        b.tokenizer().get_vocab_size(true),
    );
    if va != vb {
        bail!(
            "stitch: models {} and {} use different tokenizers (vocabularies of {va} and {vb} tokens); stitching needs a shared tokenizer",
            a.name(),
            b.name()
        );
    }
    let ids_a = a.tokenize(texts)?;
    let ids_b = b.tokenize(texts)?;
    if let Some(i) = (0..ids_a.len()).find(|&i| ids_a[i] != ids_b[i]) {
        bail!(
            "stitch: models {} and {} use different tokenizers: text {i} gives {} vs {} tokens (or different ids); stitching needs a shared tokenizer",
            a.name(),
            b.name(),
            ids_a[i].len(),
            ids_b[i].len()
        );
    }
    let seq_len = cfg
        .seq_len
        .min(a.config().max_positions())
        .min(b.config().max_positions());
    let sep = a.tokenizer().token_to_id(EOT);
    let (train_idx, eval_idx) = split_indices(ids_a.len(), cfg.eval_fraction, cfg.seed)?;
    let pick = |idx: &[usize]| -> Vec<Vec<u32>> { idx.iter().map(|&i| ids_a[i].clone()).collect() };
    let mut train = pack_windows(&pick(&train_idx), sep, seq_len);
    let mut eval = pack_windows(&pick(&eval_idx), sep, seq_len);
    train.truncate(cfg.max_train_windows);
    eval.truncate(cfg.max_eval_windows);
    if train.is_empty() || eval.is_empty() {
        bail!(
            "stitch: the {} part of the corpus ({} texts) holds fewer than seq_len = {seq_len} tokens; give more text, lower seq_len or change eval_fraction",
            if train.is_empty() { "training" } else { "held-out" },
            if train.is_empty() { train_idx.len() } else { eval_idx.len() }
        );
    }
    Ok(Windows { train, eval })
}

/// `blocks.{layer}.hook_resid_post` of `model` for each batch of windows: `(batch, seq, d)`.
fn residuals(
    model: &Model,
    windows: &[Vec<u32>],
    layer: usize,
    batch: usize,
) -> Result<Vec<Tensor>> {
    let spec = HookSpec::points([HookPoint::ResidPost(layer)]);
    windows
        .chunks(batch)
        .map(|chunk| {
            let (ids, mask) = crate::model::pad_batch(chunk, model.device())?;
            let out = model.forward(&ids, &mask, &spec)?;
            Ok(out.cache.get(HookPoint::ResidPost(layer))?.clone())
        })
        .collect()
}

fn logits_of(out: crate::model::ForwardOutput, name: &str) -> Result<Tensor> {
    out.logits
        .ok_or_else(|| Error::InvalidInput(format!("stitch: model {name} has no LM head")))
}

/// `(sum of token losses, count)` of logits over the next tokens of `ids`.
fn loss_sum(logits: &Tensor, ids: &Tensor) -> Result<(f64, usize)> {
    let l = token_losses(logits, ids)?;
    Ok((l.sum_all()?.to_scalar::<f32>()? as f64, l.elem_count()))
}

/// Stitch `a`'s residual stream after block `layer` into `b` (see the module docs), train the
/// map, and report B's own loss, the stitched loss before and after training, and the penalty,
/// on a held-out split of `texts`.
///
/// ```rust
/// use replens::train::stitch::{stitch, StitchConfig};
/// use replens::train::toy::{train_toy, ToyActivation, ToyConfig};
/// let texts: Vec<String> = (0..40).map(|i| format!("a dog ran to the park at {i} o'clock. ")).collect();
/// let cfg = ToyConfig::new(2, ToyActivation::Gelu).d_model(16).d_mlp(32).n_ctx(16).progress(false);
/// let model = train_toy(&cfg, &texts, 5, 4, 1e-2)?.to_model()?;
/// // A model stitched into itself through the identity map changes nothing.
/// let r = stitch(&model, &model, 0, &texts, &StitchConfig::default().steps(0).seq_len(16).progress(false))?;
/// assert!(r.penalty_init.abs() < 1e-6);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn stitch<S: AsRef<str>>(
    a: &Model,
    b: &Model,
    layer: usize,
    texts: &[S],
    cfg: &StitchConfig,
) -> Result<StitchResult> {
    cfg.validate()?;
    let started = Instant::now();
    let depth = a.n_layers().min(b.n_layers());
    if layer >= depth {
        bail!(
            "stitch: layer {layer} is out of range: model {} has {} blocks and {} has {}, so layer must be in 0..{depth}",
            a.name(),
            a.n_layers(),
            b.name(),
            b.n_layers()
        );
    }
    if a.config().is_encoder() || b.config().is_encoder() {
        bail!("stitch: both models must be causal language models (an encoder has no next-token loss)");
    }
    let w = windows(a, b, texts, cfg)?;
    let device = b.device().clone();
    let batch = cfg.batch_size;
    let (d_a, d_b) = (a.d_model(), b.d_model());

    let train_x = residuals(a, &w.train, layer, batch)?;
    let eval_x = residuals(a, &w.eval, layer, batch)?;
    let eval_batches: Vec<(Tensor, Tensor)> = w
        .eval
        .chunks(batch)
        .map(|c| crate::model::pad_batch(c, &device))
        .collect::<Result<_>>()?;

    // B's own loss, batched exactly as the stitched evaluation below (same shapes, same
    // kernels), so that an identity stitch of a model into itself gives exactly zero.
    let (mut own_sum, mut n_eval) = (0.0, 0);
    for (ids, mask) in &eval_batches {
        let logits = logits_of(b.forward(ids, mask, &HookSpec::none())?, b.name())?;
        let (s, n) = loss_sum(&logits, ids)?;
        own_sum += s;
        n_eval += n;
    }
    let own_loss = own_sum / n_eval as f64;

    let init = match cfg.init {
        StitchInit::Auto if d_a == d_b => StitchInit::Identity,
        StitchInit::Auto => StitchInit::LeastSquares,
        other => other,
    };
    let map = match init {
        StitchInit::Identity if d_a != d_b => bail!(
            "stitch: an identity init needs equal widths, but {} has d_model {d_a} and {} has {d_b}",
            a.name(),
            b.name()
        ),
        StitchInit::Identity => Stitch::identity(d_a, &device)?,
        StitchInit::Random => Stitch::random(d_a, d_b, cfg.seed, &device)?,
        _ => {
            let train_y = residuals(b, &w.train, layer, batch)?;
            let flat = |ts: &[Tensor], d: usize| -> Result<Tensor> {
                Ok(Tensor::cat(ts, 0)?.reshape(((), d))?)
            };
            Stitch::least_squares(&flat(&train_x, d_a)?, &flat(&train_y, d_b)?)?
        }
    };

    let evaluate = |map: &Stitch| -> Result<f64> {
        let mut sum = 0.0;
        for ((ids, mask), x) in eval_batches.iter().zip(&eval_x) {
            // Detached: no gradient needed, and the fused kernels stay in use (see gpt2.rs).
            let y = map.forward(x)?.detach();
            let logits = logits_of(
                b.forward_from(layer + 1, &y, mask, &HookSpec::none())?,
                b.name(),
            )?;
            sum += loss_sum(&logits, ids)?.0;
        }
        let loss = sum / n_eval as f64;
        if !loss.is_finite() {
            bail!("stitch: the stitched loss is {loss} (layer {layer}); lower lr");
        }
        Ok(loss)
    };
    let stitched_loss_init = evaluate(&map)?;

    let mut opt = AdamW::new(
        map.vars(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    // The training windows by batch, as (ids, mask, A's residuals) per window.
    let train_ids: Vec<Tensor> = w
        .train
        .iter()
        .map(|ids| Ok(Tensor::new(ids.as_slice(), &device)?))
        .collect::<Result<_>>()?;
    let train_x: Vec<Tensor> = train_x
        .iter()
        .map(|t| -> Result<Vec<Tensor>> {
            Ok((0..t.dim(0)?)
                .map(|i| t.i(i))
                .collect::<candle_core::Result<_>>()?)
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(17));
    let label = format!("stitch {} → {} @ {layer}", a.name(), b.name());
    let mut progress = Progress::new(&label, cfg.steps, cfg.progress && cfg.steps > 0);
    let mut train_loss = Vec::with_capacity(cfg.steps);
    let bsz = batch.min(train_ids.len());
    for step in 1..=cfg.steps {
        let pick: Vec<usize> = (0..bsz)
            .map(|_| rng.gen_range(0..train_ids.len()))
            .collect();
        let ids = Tensor::stack(&pick.iter().map(|&i| &train_ids[i]).collect::<Vec<_>>(), 0)?;
        let x = Tensor::stack(&pick.iter().map(|&i| &train_x[i]).collect::<Vec<_>>(), 0)?;
        let mask = ids.ones_like()?;
        let logits = logits_of(
            b.forward_from(layer + 1, &map.forward(&x)?, &mask, &HookSpec::none())?,
            b.name(),
        )?;
        let (bb, t, v) = logits.dims3()?;
        let inputs = logits.narrow(1, 0, t - 1)?.reshape((bb * (t - 1), v))?;
        let targets = ids.narrow(1, 1, t - 1)?.contiguous()?.flatten_all()?;
        let loss = candle_nn::loss::cross_entropy(&inputs, &targets)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            bail!("stitch: the training loss became {value} at step {step}; lower lr");
        }
        opt.backward_step(&loss)
            .context(|| format!("stitch: AdamW step {step}"))?;
        train_loss.push(value);
        progress.inc(1);
    }
    progress.finish();
    let stitched_loss = if cfg.steps == 0 {
        stitched_loss_init
    } else {
        evaluate(&map)?
    };
    let result = StitchResult {
        from: a.name().to_string(),
        to: b.name().to_string(),
        layer,
        own_loss,
        stitched_loss_init,
        stitched_loss,
        penalty_init: stitched_loss_init - own_loss,
        penalty: stitched_loss - own_loss,
        train_loss,
        init,
        train_tokens: w.train.len() * w.train[0].len(),
        eval_tokens: n_eval,
        seconds: started.elapsed().as_secs_f64(),
        map,
    };
    if cfg.progress {
        eprintln!(
            "{label}: own {:.4}, stitched {:.4} → {:.4}, penalty {:.4} ({:.1} s)",
            result.own_loss,
            result.stitched_loss_init,
            result.stitched_loss,
            result.penalty,
            result.seconds
        );
    }
    Ok(result)
}

/// Stitching in both directions at several layers: [`stitch_matrix`]'s result.
#[derive(Debug, Clone)]
pub struct StitchMatrix {
    /// Name of model A and model B.
    pub a: String,
    pub b: String,
    /// A → B results, one per requested layer (in order).
    pub a_to_b: Vec<StitchResult>,
    /// B → A results, one per requested layer (in order).
    pub b_to_a: Vec<StitchResult>,
}

impl StitchMatrix {
    /// Long table: `direction` ("A→B" / "B→A"), `from`, `to`, `layer`, `own_loss`,
    /// `stitched_loss_init`, `stitched_loss`, `penalty`.
    pub fn to_frame(&self) -> Result<DataFrame> {
        let rows: Vec<(&str, &StitchResult)> = self
            .a_to_b
            .iter()
            .map(|r| ("A→B", r))
            .chain(self.b_to_a.iter().map(|r| ("B→A", r)))
            .collect();
        let col_f = |f: &dyn Fn(&StitchResult) -> f64| -> Vec<f64> {
            rows.iter().map(|(_, r)| f(r)).collect()
        };
        Ok(DataFrame::new_infer_height(vec![
            Series::new(
                "direction".into(),
                rows.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
            )
            .into(),
            Series::new(
                "from".into(),
                rows.iter()
                    .map(|(_, r)| r.from.as_str())
                    .collect::<Vec<_>>(),
            )
            .into(),
            Series::new(
                "to".into(),
                rows.iter().map(|(_, r)| r.to.as_str()).collect::<Vec<_>>(),
            )
            .into(),
            Series::new(
                "layer".into(),
                rows.iter().map(|(_, r)| r.layer as u32).collect::<Vec<_>>(),
            )
            .into(),
            Series::new("own_loss".into(), col_f(&|r| r.own_loss)).into(),
            Series::new(
                "stitched_loss_init".into(),
                col_f(&|r| r.stitched_loss_init),
            )
            .into(),
            Series::new("stitched_loss".into(), col_f(&|r| r.stitched_loss)).into(),
            Series::new("penalty".into(), col_f(&|r| r.penalty)).into(),
        ])?)
    }

    /// One row per layer: `layer`, `penalty_a_to_b`, `penalty_b_to_a`, and
    /// `asymmetry = penalty_b_to_a − penalty_a_to_b` (positive: A's representations serve B
    /// better than B's serve A — the paper's finding for A = GeLU, B = SoLU).
    pub fn asymmetry_frame(&self) -> Result<DataFrame> {
        let layers: Vec<u32> = self.a_to_b.iter().map(|r| r.layer as u32).collect();
        let ab: Vec<f64> = self.a_to_b.iter().map(|r| r.penalty).collect();
        let ba: Vec<f64> = self.b_to_a.iter().map(|r| r.penalty).collect();
        let asym: Vec<f64> = ab.iter().zip(&ba).map(|(x, y)| y - x).collect();
        Ok(DataFrame::new_infer_height(vec![
            Series::new("layer".into(), layers).into(),
            Series::new("penalty_a_to_b".into(), ab).into(),
            Series::new("penalty_b_to_a".into(), ba).into(),
            Series::new("asymmetry".into(), asym).into(),
        ])?)
    }

    /// Mean over layers of `penalty_b_to_a − penalty_a_to_b`.
    pub fn mean_asymmetry(&self) -> f64 {
        let n = self.a_to_b.len().max(1) as f64;
        self.a_to_b
            .iter()
            .zip(&self.b_to_a)
            .map(|(ab, ba)| ba.penalty - ab.penalty)
            .sum::<f64>()
            / n
    }

    /// A one-line summary for logs and notebooks.
    pub fn summary(&self) -> String {
        let wins = self
            .a_to_b
            .iter()
            .zip(&self.b_to_a)
            .filter(|(ab, ba)| ab.penalty < ba.penalty)
            .count();
        format!(
            "stitching {a} ↔ {b}: mean penalty {a}→{b} {:.4}, {b}→{a} {:.4}; {a}→{b} is cheaper at {wins} of {} layers (mean asymmetry {:+.4} nats)",
            mean(self.a_to_b.iter().map(|r| r.penalty)),
            mean(self.b_to_a.iter().map(|r| r.penalty)),
            self.a_to_b.len(),
            self.mean_asymmetry(),
            a = self.a,
            b = self.b
        )
    }
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

/// [`stitch`] A → B and B → A at each of `layers` (same split, same settings): the asymmetry
/// matrix of Brown et al. (2023).
///
/// ```rust
/// use replens::train::stitch::{stitch_matrix, StitchConfig};
/// use replens::train::toy::{train_toy, ToyActivation, ToyConfig};
/// let texts: Vec<String> = (0..40).map(|i| format!("ships sail the sea on day {i}. ")).collect();
/// let small = |act| ToyConfig::new(1, act).d_model(16).d_mlp(32).n_ctx(16).progress(false);
/// let gelu = train_toy(&small(ToyActivation::Gelu), &texts, 5, 4, 1e-2)?.to_model()?;
/// let solu = train_toy(&small(ToyActivation::Solu), &texts, 5, 4, 1e-2)?.to_model()?;
/// let cfg = StitchConfig::default().steps(3).seq_len(16).progress(false);
/// let m = stitch_matrix(&gelu, &solu, &[0], &texts, &cfg)?;
/// assert_eq!(m.to_frame()?.height(), 2);
/// println!("{}", m.summary());
/// # Ok::<(), replens::Error>(())
/// ```
pub fn stitch_matrix<S: AsRef<str>>(
    a: &Model,
    b: &Model,
    layers: &[usize],
    texts: &[S],
    cfg: &StitchConfig,
) -> Result<StitchMatrix> {
    if layers.is_empty() {
        bail!("stitch_matrix: no layers given");
    }
    let mut a_to_b = Vec::with_capacity(layers.len());
    let mut b_to_a = Vec::with_capacity(layers.len());
    for &l in layers {
        a_to_b.push(stitch(a, b, l, texts, cfg)?);
        b_to_a.push(stitch(b, a, l, texts, cfg)?);
    }
    Ok(StitchMatrix {
        a: a.name().to_string(),
        b: b.name().to_string(),
        a_to_b,
        b_to_a,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_a_known_system() {
        // A = [[4, 2], [2, 3]], B = [[2, 8], [1, 7]] → X = [[0.5, 1.25], [0, 1.5]]
        let x = cholesky_solve(vec![4.0, 2.0, 2.0, 3.0], 2, vec![2.0, 8.0, 1.0, 7.0], 2).unwrap();
        let want = [0.5, 1.25, 0.0, 1.5];
        for (g, w) in x.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{x:?}");
        }
        assert!(cholesky_solve(vec![1.0, 2.0, 2.0, 1.0], 2, vec![1.0, 1.0], 1).is_err());
    }

    #[test]
    fn least_squares_recovers_an_affine_map() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (200, 3), &dev).unwrap();
        let w = Tensor::new(
            &[
                [1f32, 0.5, -2.0, 0.0],
                [0.0, 1.0, 3.0, 1.0],
                [2.0, 0.0, 0.0, -1.0],
            ],
            &dev,
        )
        .unwrap();
        let y = x
            .matmul(&w)
            .unwrap()
            .broadcast_add(&Tensor::new(&[1f32, 2.0, 3.0, 4.0], &dev).unwrap())
            .unwrap();
        let s = Stitch::least_squares(&x, &y).unwrap();
        assert_eq!((s.d_in(), s.d_out()), (3, 4));
        let err = (s.forward(&x).unwrap() - &y)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(err < 1e-2, "{err}");
        assert!(Stitch::least_squares(&x, &y.narrow(0, 0, 10).unwrap()).is_err());
    }

    #[test]
    fn identity_map_is_exact_and_shapes_are_checked() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 4), &dev).unwrap();
        let s = Stitch::identity(4, &dev).unwrap();
        let y = s.forward(&x).unwrap();
        let d = (y - &x)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
        let err = s
            .forward(&Tensor::zeros((2, 3), DType::F32, &dev).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("width 4"), "{err}");
    }
}
