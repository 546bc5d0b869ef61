//! A tiny trainer for toy GPT-2-style transformers (1–4 layers, GeLU or SoLU), for the
//! GeLU↔SoLU stitching-asymmetry experiment of Brown et al. (EMNLP 2023, arXiv 2310.14993, §2 of
//! the studies), whose toy models are TransformerLens' `gelu-{n}l` / `solu-{n}l` (Elhage et al.
//! 2022, "Softmax Linear Units", transformer-circuits.pub/2022/solu).
//!
//! **Vocabulary: bytes.** The toy models read UTF-8 bytes: ids 0–255 are the bytes, id 256 is
//! `<|endoftext|>` (put between documents when packing). The tokenizer is a GPT-2 byte-level BPE
//! with the 256 byte symbols and no merges ([`byte_tokenizer`]), so `Model::from_dir` loads it
//! like any other. Why not a subword vocabulary: the packaged SmolLM2 tokenizer has 49,152 ids,
//! and the embedding plus the `(tokens × vocab)` logits would dominate the cost (≈ 50× the
//! rest of a d=128 model); remapping it to its most frequent ids cannot be expressed as a
//! `tokenizer.json` that other tools read. With 257 ids, one AdamW step of a 1-layer d=128
//! model on 16 windows of 64 bytes took 0.6–1.4 s on two heavily shared CPU cores (load ≈ 8)
//! in the dev profile, so a few hundred steps take minutes; on the Brown corpus the held-out
//! loss drops from ln 257 ≈ 5.55 to ≈ 2.9–3.1 nats per byte after 100 steps and ≈ 2.6 after 300.
//!
//! **Architecture.** HF GPT-2 (learned positions, pre-norm, tied unembedding), with the MLP
//! activation `gelu_new` or TransformerLens' `solu_ln` ([`MlpActivation::SoluLn`]).
//! Initialisation is HF's GPT-2 rule ([`gpt2::param_specs`]), drawn with the seed.
//!
//! **Training.** Next-token cross-entropy on random `n_ctx`-token windows of the packed training
//! texts; AdamW (Loshchilov & Hutter 2019) with a linear warm-up and a cosine decay to 10 % of
//! the peak rate. A held-out share of the texts (split by text, seeded) gives the eval loss.
//!
//! **Checkpoints.** [`ToyModel::save`] writes `config.json` (`model_type: gpt2`,
//! `activation_function: "gelu_new" | "solu_ln"`), `model.safetensors` (GPT2LMHeadModel names)
//! and `tokenizer.json`. GeLU checkpoints are plain HF GPT-2 checkpoints; SoLU ones add
//! `transformer.h.{i}.mlp.ln.{weight,bias}`, which replens (and TransformerLens, after renaming)
//! read but HF transformers does not.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder};
use polars::prelude::{DataFrame, NamedFrom, Series};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokenizers::Tokenizer;

use crate::error::{bail, Context, Error, Result};
use crate::hooks::HookSpec;
use crate::model::gpt2::{self, Activation, Gpt2, MlpActivation};
use crate::model::init::random_weights;
use crate::model::{ArchConfig, Model, ModelSource, Transformer};
use crate::progress::Progress;

/// Number of byte ids; the `<|endoftext|>` id.
pub const EOT_ID: u32 = 256;
/// Vocabulary size of the toy models: 256 bytes + `<|endoftext|>`.
pub const TOY_VOCAB: usize = 257;
/// The document separator token.
pub const EOT: &str = "<|endoftext|>";

/// MLP activation of a toy model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToyActivation {
    /// GELU, tanh approximation (HF `gelu_new`; TransformerLens `gelu_new`).
    Gelu,
    /// `LN(x ⊙ softmax(x))` (Elhage et al. 2022; TransformerLens `solu_ln`).
    Solu,
}

impl ToyActivation {
    /// The `activation_function` written to `config.json`.
    pub fn hf_name(&self) -> &'static str {
        match self {
            ToyActivation::Gelu => "gelu_new",
            ToyActivation::Solu => gpt2::SOLU_LN,
        }
    }
    fn mlp(&self) -> MlpActivation {
        match self {
            ToyActivation::Gelu => MlpActivation::Plain(Activation::GeluTanh),
            ToyActivation::Solu => MlpActivation::SoluLn,
        }
    }
}

impl std::fmt::Display for ToyActivation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ToyActivation::Gelu => "gelu",
            ToyActivation::Solu => "solu",
        })
    }
}

/// Shape, activation, seed and optimiser settings of a toy model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToyConfig {
    /// Transformer blocks (1–4; the paper's toy models have 1–4).
    pub n_layers: usize,
    pub d_model: usize,
    /// Attention heads; must divide `d_model`.
    pub n_heads: usize,
    /// MLP width.
    pub d_mlp: usize,
    /// Context window in tokens (bytes); also the training window.
    pub n_ctx: usize,
    pub activation: ToyActivation,
    /// Seeds the initial weights, the train/eval split and the batches.
    pub seed: u64,
    /// Share of the steps spent warming the learning rate up linearly.
    pub warmup_fraction: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Share of the texts held out for the eval loss.
    pub eval_fraction: f64,
    /// Most held-out windows scored at each evaluation (bounds its cost).
    pub max_eval_windows: usize,
    /// Evaluate every this many steps (0: only before and after training).
    pub eval_every: usize,
    /// Show progress on stderr.
    pub progress: bool,
}

impl ToyConfig {
    /// d_model 128, 4 heads, d_mlp 512, n_ctx 64, seed 0, 5 % warm-up, weight decay 0.01,
    /// 5 % of texts held out.
    pub fn new(n_layers: usize, activation: ToyActivation) -> Self {
        Self {
            n_layers,
            d_model: 128,
            n_heads: 4,
            d_mlp: 512,
            n_ctx: 64,
            activation,
            seed: 0,
            warmup_fraction: 0.05,
            weight_decay: 0.01,
            eval_fraction: 0.05,
            max_eval_windows: 64,
            eval_every: 0,
            progress: true,
        }
    }
    pub fn d_model(mut self, d: usize) -> Self {
        self.d_model = d;
        self
    }
    pub fn n_heads(mut self, h: usize) -> Self {
        self.n_heads = h;
        self
    }
    pub fn d_mlp(mut self, d: usize) -> Self {
        self.d_mlp = d;
        self
    }
    pub fn n_ctx(mut self, n: usize) -> Self {
        self.n_ctx = n;
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
        if !(1..=4).contains(&self.n_layers) {
            bail!("toy model: n_layers must be 1..=4, got {}", self.n_layers);
        }
        if self.d_model == 0 || self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            bail!(
                "toy model: d_model ({}) must be a positive multiple of n_heads ({})",
                self.d_model,
                self.n_heads
            );
        }
        if self.d_mlp == 0 {
            bail!("toy model: d_mlp must be positive");
        }
        if self.n_ctx < 2 {
            bail!(
                "toy model: n_ctx must be at least 2 (one prediction), got {}",
                self.n_ctx
            );
        }
        let unit = |x: f64| x.is_finite() && (0.0..1.0).contains(&x);
        if !unit(self.warmup_fraction) || !unit(self.eval_fraction) || self.eval_fraction == 0.0 {
            bail!(
                "toy model: warmup_fraction ({}) must be in [0, 1) and eval_fraction ({}) in (0, 1)",
                self.warmup_fraction,
                self.eval_fraction
            );
        }
        if !self.weight_decay.is_finite() || self.weight_decay < 0.0 {
            bail!(
                "toy model: weight_decay must be finite and ≥ 0, got {}",
                self.weight_decay
            );
        }
        if self.max_eval_windows == 0 {
            bail!("toy model: max_eval_windows must be at least 1");
        }
        Ok(())
    }

    /// The HF `GPT2Config` of this toy model.
    pub fn gpt2_config(&self) -> gpt2::Config {
        gpt2::Config {
            vocab_size: TOY_VOCAB,
            n_positions: self.n_ctx,
            n_embd: self.d_model,
            n_layer: self.n_layers,
            n_head: self.n_heads,
            n_inner: Some(self.d_mlp),
            activation_function: self.activation.mlp(),
            layer_norm_epsilon: 1e-5,
            initializer_range: 0.02,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            reorder_and_upcast_attn: false,
            tie_word_embeddings: true,
        }
    }

    /// A short name such as `solu-1l-d128`.
    pub fn label(&self) -> String {
        format!("{}-{}l-d{}", self.activation, self.n_layers, self.d_model)
    }
}

/// GPT-2's reversible byte → printable-character map (`bytes_to_unicode` in GPT-2's
/// `encoder.py`), which byte-level BPE vocabularies are written in.
fn byte_symbol(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    // The others are numbered 256, 257, … in byte order.
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('\u{FFFD}')
}

/// The toy models' tokenizer: GPT-2 byte-level BPE with the 256 byte symbols (id = byte value)
/// and no merges, plus `<|endoftext|>` = 256. Every text maps to its UTF-8 bytes; nothing is
/// added around it.
///
/// ```rust
/// let tok = replens::train::toy::byte_tokenizer()?;
/// let enc = tok.encode("hé!", true).unwrap();
/// assert_eq!(enc.get_ids(), &[104, 195, 169, 33]);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn byte_tokenizer() -> Result<Tokenizer> {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..=255u8)
        .map(|b| (byte_symbol(b).to_string(), serde_json::json!(b)))
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": EOT_ID, "content": EOT, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": {
            "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
            "use_regex": false
        },
        "post_processor": null,
        "decoder": {
            "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
            "use_regex": true
        },
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []
        }
    });
    json.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| Error::Tokenizer(format!("byte-level toy tokenizer: {e}")))
}

/// Concatenate token sequences (with `sep` between them, if any) and cut the stream into
/// consecutive windows of exactly `len` tokens; the incomplete tail is dropped.
///
/// ```rust
/// use replens::train::toy::pack_windows;
/// let w = pack_windows(&[vec![1, 2, 3], vec![4, 5]], Some(0), 3);
/// assert_eq!(w, vec![vec![1, 2, 3], vec![0, 4, 5]]);
/// ```
pub fn pack_windows(docs: &[Vec<u32>], sep: Option<u32>, len: usize) -> Vec<Vec<u32>> {
    if len == 0 {
        return vec![];
    }
    let stream = pack_stream(docs, sep);
    stream.chunks_exact(len).map(<[u32]>::to_vec).collect()
}

fn pack_stream(docs: &[Vec<u32>], sep: Option<u32>) -> Vec<u32> {
    let mut stream = Vec::with_capacity(docs.iter().map(|d| d.len() + 1).sum());
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            stream.extend(sep);
        }
        stream.extend_from_slice(d);
    }
    stream
}

/// Split `n` items into (train, eval) index lists by a seeded shuffle; eval gets
/// `round(n · eval_fraction)` items, at least 1, and train keeps at least 1. Indices keep
/// their original order inside each part.
pub(crate) fn split_indices(
    n: usize,
    eval_fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if n < 2 {
        bail!("need at least 2 texts to hold some out for evaluation, got {n}");
    }
    let n_eval = ((n as f64 * eval_fraction).round() as usize).clamp(1, n - 1);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed ^ SPLIT_SALT));
    let mut eval = idx[..n_eval].to_vec();
    let mut train = idx[n_eval..].to_vec();
    eval.sort_unstable();
    train.sort_unstable();
    Ok((train, eval))
}

/// Mixed into the seed so that the split does not reuse the RNG stream of the weights.
const SPLIT_SALT: u64 = 0x5eed_5911;

/// What happened during [`train_toy`].
#[derive(Debug, Clone, Default)]
pub struct TrainLog {
    /// Training loss (mean next-token cross-entropy of the batch, nats) at each step 1..=steps.
    pub loss: Vec<f32>,
    /// Learning rate used at each step.
    pub lr: Vec<f64>,
    /// `(step, held-out loss)`; step 0 is before training.
    pub eval: Vec<(usize, f64)>,
    /// Tokens in the packed training / held-out streams.
    pub train_tokens: usize,
    pub eval_tokens: usize,
    /// Wall-clock seconds of the training loop (evaluations included).
    pub seconds: f64,
}

impl TrainLog {
    /// Held-out loss before training.
    pub fn initial_eval_loss(&self) -> Option<f64> {
        self.eval.first().map(|e| e.1)
    }
    /// Held-out loss after the last step.
    pub fn final_eval_loss(&self) -> Option<f64> {
        self.eval.last().map(|e| e.1)
    }
    /// One row per step: `step`, `lr`, `train_loss`, and `eval_loss` (null where not evaluated).
    /// The step-0 evaluation is the first row (with null `train_loss`).
    pub fn to_frame(&self) -> Result<DataFrame> {
        let evals: HashMap<usize, f64> = self.eval.iter().copied().collect();
        let n = self.loss.len();
        let step: Vec<u32> = (0..=n as u32).collect();
        let lr: Vec<Option<f64>> = std::iter::once(None)
            .chain(self.lr.iter().map(|&x| Some(x)))
            .collect();
        let loss: Vec<Option<f32>> = std::iter::once(None)
            .chain(self.loss.iter().map(|&x| Some(x)))
            .collect();
        let eval: Vec<Option<f64>> = (0..=n).map(|s| evals.get(&s).copied()).collect();
        Ok(DataFrame::new_infer_height(vec![
            Series::new("step".into(), step).into(),
            Series::new("lr".into(), lr).into(),
            Series::new("train_loss".into(), loss).into(),
            Series::new("eval_loss".into(), eval).into(),
        ])?)
    }
}

/// A trained toy model: config, weights, tokenizer and training log.
pub struct ToyModel {
    pub config: ToyConfig,
    pub log: TrainLog,
    vars: Vec<(String, Var)>,
    tokenizer: Tokenizer,
}

impl std::fmt::Debug for ToyModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToyModel")
            .field("config", &self.config)
            .field("final_eval_loss", &self.log.final_eval_loss())
            .finish()
    }
}

impl ToyModel {
    /// The weights under HF `GPT2LMHeadModel` names, detached from the optimiser.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// The `config.json` that [`save`](Self::save) writes (HF `GPT2Config` fields, plus a
    /// `replens_toy` record of how the model was trained).
    pub fn config_json(&self) -> serde_json::Value {
        let c = &self.config;
        serde_json::json!({
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": TOY_VOCAB,
            "n_positions": c.n_ctx,
            "n_ctx": c.n_ctx,
            "n_embd": c.d_model,
            "n_layer": c.n_layers,
            "n_head": c.n_heads,
            "n_inner": c.d_mlp,
            "activation_function": c.activation.hf_name(),
            "layer_norm_epsilon": 1e-5,
            "initializer_range": 0.02,
            "scale_attn_weights": true,
            "tie_word_embeddings": true,
            "bos_token_id": EOT_ID,
            "eos_token_id": EOT_ID,
            "replens_toy": {
                "seed": c.seed,
                "steps": self.log.loss.len(),
                "train_tokens": self.log.train_tokens,
                "eval_tokens": self.log.eval_tokens,
                "initial_eval_loss": self.log.initial_eval_loss(),
                "final_eval_loss": self.log.final_eval_loss(),
                "vocabulary": "UTF-8 bytes (ids 0-255) + <|endoftext|> (256)",
            }
        })
    }

    /// Write an HF-layout directory (`config.json`, `model.safetensors`, `tokenizer.json`) that
    /// [`Model::from_dir`] / [`Model::load`] read like any other checkpoint.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let config = dir.join("config.json");
        let text = serde_json::to_string_pretty(&self.config_json())
            .map_err(|e| Error::InvalidInput(format!("config.json: {e}")))?;
        std::fs::write(&config, text).map_err(io(&config))?;
        let weights = dir.join("model.safetensors");
        candle_core::safetensors::save(&self.weights(), &weights)
            .context(|| format!("cannot write {}", weights.display()))?;
        let tok = dir.join("tokenizer.json");
        self.tokenizer
            .save(&tok, false)
            .map_err(|e| Error::Tokenizer(format!("cannot write {}: {e}", tok.display())))?;
        Ok(())
    }

    /// The trained network as a [`Model`] (hooks, runs, losses), without going through disk.
    /// Its name is the config's label, e.g. `gelu-2l-d64`.
    pub fn to_model(&self) -> Result<Model> {
        self.to_model_named(self.config.label())
    }

    /// [`ToyModel::to_model`] under another name, to tell apart toys that share a config
    /// (e.g. the same shape trained for fewer steps) in stitching results and charts.
    pub fn to_model_named(&self, name: impl Into<String>) -> Result<Model> {
        let label = self.config.label();
        Model::assemble(
            name.into(),
            ArchConfig::Gpt2(self.config.gpt2_config()),
            self.weights(),
            self.tokenizer.clone(),
            ModelSource::local(Path::new(&format!("<in memory: toy {label}>"))),
            Device::Cpu,
        )
    }
}

/// Learning rate at step `s` (1-based) of `total`: linear warm-up over `warmup` steps, then a
/// cosine from `peak` down to `0.1 · peak` at the last step.
fn schedule(s: usize, total: usize, warmup: usize, peak: f64) -> f64 {
    if s <= warmup {
        return peak * s as f64 / warmup.max(1) as f64;
    }
    let rest = (total - warmup).max(1) as f64;
    let progress = ((s - warmup) as f64 / rest).min(1.0);
    let floor = 0.1 * peak;
    floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Mean next-token cross-entropy (nats) of `net` on equal-length windows.
fn windows_loss(net: &Gpt2, windows: &[Vec<u32>], batch: usize) -> Result<f64> {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for chunk in windows.chunks(batch.max(1)) {
        let (ids, mask) = crate::model::pad_batch(chunk, &Device::Cpu)?;
        let logits = net
            .forward(&ids, &mask, &HookSpec::none())?
            .logits
            .ok_or_else(|| Error::InvalidInput("toy model returned no logits".into()))?;
        let losses = crate::model::token_losses(&logits, &ids)?;
        sum += losses.sum_all()?.to_scalar::<f32>()? as f64;
        n += losses.elem_count();
    }
    if n == 0 {
        bail!("no tokens to score");
    }
    Ok(sum / n as f64)
}

/// Cross-entropy of the next token over a `(batch, seq)` id tensor, as a scalar tensor.
fn batch_loss(net: &Gpt2, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let logits = net
        .forward(ids, mask, &HookSpec::none())?
        .logits
        .ok_or_else(|| Error::InvalidInput("toy model returned no logits".into()))?;
    let (b, t, v) = logits.dims3()?;
    let inputs = logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), v))?;
    let targets = ids.narrow(1, 1, t - 1)?.contiguous()?.flatten_all()?;
    Ok(candle_nn::loss::cross_entropy(&inputs, &targets)?)
}

/// Train a toy model on `texts` for `steps` AdamW steps of `batch` random `n_ctx`-byte windows
/// with peak learning rate `lr`; see the module docs for the recipe. The loss is next-token
/// cross-entropy in nats per byte; the held-out loss before and after training is in
/// [`ToyModel::log`].
///
/// ```rust
/// use replens::train::toy::{train_toy, ToyActivation, ToyConfig};
/// let texts: Vec<String> = (0..20).map(|i| format!("the cat sat on mat number {i}. ")).collect();
/// let cfg = ToyConfig::new(1, ToyActivation::Solu).d_model(16).d_mlp(32).n_ctx(16).progress(false);
/// let toy = train_toy(&cfg, &texts, 30, 8, 1e-2)?;
/// let (before, after) = (toy.log.initial_eval_loss().unwrap(), toy.log.final_eval_loss().unwrap());
/// assert!(after < before, "{before} -> {after}");
/// let model = toy.to_model()?; // a replens Model: hooks, runs, losses
/// assert_eq!(model.n_layers(), 1);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn train_toy<S: AsRef<str>>(
    cfg: &ToyConfig,
    texts: &[S],
    steps: usize,
    batch: usize,
    lr: f64,
) -> Result<ToyModel> {
    cfg.validate()?;
    if texts.is_empty() {
        bail!("train_toy: the corpus is empty (0 texts)");
    }
    if steps == 0 || batch == 0 {
        bail!("train_toy: steps ({steps}) and batch ({batch}) must be at least 1");
    }
    if !lr.is_finite() || lr <= 0.0 {
        bail!("train_toy: lr must be positive and finite, got {lr}");
    }
    let started = Instant::now();
    let device = Device::Cpu;
    let tokenizer = byte_tokenizer()?;
    // The byte tokenizer maps a text to its UTF-8 bytes (checked in the tests), so skip it.
    let docs: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| t.as_ref().bytes().map(u32::from).collect())
        .collect();
    let (train_idx, eval_idx) = split_indices(docs.len(), cfg.eval_fraction, cfg.seed)?;
    let pick = |idx: &[usize]| -> Vec<Vec<u32>> {
        idx.iter()
            .filter(|&&i| !docs[i].is_empty())
            .map(|&i| docs[i].clone())
            .collect()
    };
    let train_stream = pack_stream(&pick(&train_idx), Some(EOT_ID));
    let mut eval_windows = pack_windows(&pick(&eval_idx), Some(EOT_ID), cfg.n_ctx);
    eval_windows.truncate(cfg.max_eval_windows);
    if train_stream.len() < cfg.n_ctx {
        bail!(
            "train_toy: the training texts hold {} bytes, fewer than one n_ctx = {} window",
            train_stream.len(),
            cfg.n_ctx
        );
    }
    if eval_windows.is_empty() {
        bail!(
            "train_toy: the held-out texts ({} of {}, eval_fraction {}) hold fewer than n_ctx = {} bytes; give more text or raise eval_fraction",
            eval_idx.len(),
            docs.len(),
            cfg.eval_fraction,
            cfg.n_ctx
        );
    }

    let gcfg = cfg.gpt2_config();
    let specs = gpt2::param_specs(&gcfg);
    let init = random_weights(&specs, cfg.seed, &device)?;
    let mut vars = Vec::with_capacity(specs.len());
    for spec in &specs {
        let t = init
            .get(&spec.name)
            .ok_or_else(|| Error::InvalidInput(format!("no initial value for {}", spec.name)))?;
        vars.push((spec.name.clone(), Var::from_tensor(t)?));
    }
    let tensors: HashMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let net = Gpt2::load(
        &gcfg,
        VarBuilder::from_tensors(tensors, DType::F32, &device),
    )?;
    let mut opt = AdamW::new(
        vars.iter().map(|(_, v)| v.clone()).collect(),
        ParamsAdamW {
            lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;

    let mut log = TrainLog {
        train_tokens: train_stream.len(),
        eval_tokens: eval_windows.len() * cfg.n_ctx,
        ..Default::default()
    };
    let eval_batch = 16;
    log.eval
        .push((0, windows_loss(&net, &eval_windows, eval_batch)?));
    let label = format!("train_toy {}", cfg.label());
    let mut progress = Progress::new(&label, steps, cfg.progress);
    let warmup = (cfg.warmup_fraction * steps as f64).round() as usize;
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(1));
    let last_start = train_stream.len() - cfg.n_ctx;
    let ones = Tensor::ones((batch, cfg.n_ctx), DType::U32, &device)?;
    for step in 1..=steps {
        let mut ids = Vec::with_capacity(batch * cfg.n_ctx);
        for _ in 0..batch {
            let s = rng.gen_range(0..=last_start);
            ids.extend_from_slice(&train_stream[s..s + cfg.n_ctx]);
        }
        let ids = Tensor::from_vec(ids, (batch, cfg.n_ctx), &device)?;
        let rate = schedule(step, steps, warmup, lr);
        opt.set_learning_rate(rate);
        let loss = batch_loss(&net, &ids, &ones)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            bail!("train_toy: the training loss became {value} at step {step} (lr {rate:.3e}); lower lr");
        }
        opt.backward_step(&loss)
            .context(|| format!("train_toy: AdamW step {step}"))?;
        log.loss.push(value);
        log.lr.push(rate);
        if (cfg.eval_every > 0 && step % cfg.eval_every == 0) || step == steps {
            let e = windows_loss(&net, &eval_windows, eval_batch)?;
            log.eval.push((step, e));
            if cfg.progress {
                eprintln!(
                    "{label}: step {step}/{steps} train loss {value:.4} eval loss {e:.4} lr {rate:.2e} ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        progress.inc(1);
    }
    progress.finish();
    log.seconds = started.elapsed().as_secs_f64();
    Ok(ToyModel {
        config: cfg.clone(),
        log,
        vars,
        tokenizer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokenizer_is_the_utf8_bytes() {
        let tok = byte_tokenizer().unwrap();
        assert_eq!(tok.get_vocab_size(true), TOY_VOCAB);
        for text in [
            "Hello, world!",
            "  two  spaces\nand\ttabs",
            "naïve café — ünïcödé ✓",
            "\u{0}\u{7f}",
        ] {
            let ids = tok.encode(text, true).unwrap().get_ids().to_vec();
            let bytes: Vec<u32> = text.bytes().map(u32::from).collect();
            assert_eq!(ids, bytes, "{text:?}");
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
        }
        let symbols: std::collections::HashSet<char> = (0..=255u8).map(byte_symbol).collect();
        assert_eq!(symbols.len(), 256);
        assert_eq!(byte_symbol(b' '), 'Ġ');
        assert_eq!(byte_symbol(b'\n'), 'Ċ');
    }

    #[test]
    fn schedule_warms_up_then_decays_to_a_tenth() {
        assert!((schedule(5, 100, 10, 1.0) - 0.5).abs() < 1e-12);
        assert!((schedule(10, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!((schedule(100, 100, 10, 1.0) - 0.1).abs() < 1e-12);
        assert!((schedule(1, 1, 0, 1.0) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let (t, e) = split_indices(100, 0.1, 3).unwrap();
        assert_eq!((t.len(), e.len()), (90, 10));
        assert!(e.iter().all(|i| !t.contains(i)));
        assert_eq!(split_indices(100, 0.1, 3).unwrap().1, e);
        assert_ne!(split_indices(100, 0.1, 4).unwrap().1, e);
        assert!(split_indices(1, 0.1, 0).is_err());
    }
}
