//! LoRA fine-tuning of a sequence classifier on a pretrained BERT-family encoder (CPU,
//! candle-nn): the model of study 5 (AdUE, Zabolotnyi et al., arXiv 2505.15443), which trains
//! uncertainty heads on a classifier fine-tuned with LoRA (r = 8, α = 16 on query/key/value).
//!
//! **LoRA** (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
//! arXiv 2106.09685): a frozen linear layer `y = x Wᵀ + b` becomes
//!
//! ```text
//! y = x Wᵀ + b + (α / r) · (dropout(x) Aᵀ) Bᵀ,     A: (r, in),  B: (out, r)
//! ```
//!
//! with `A ~ U(−1/√in, 1/√in)` (PEFT's `kaiming_uniform_(a = √5)`) and `B = 0`, so training
//! starts exactly at the base model. Merging folds the adapter into the weight:
//! `W' = W + (α / r) · B A`.
//!
//! **Classifier**: `logits = z Wₕᵀ + bₕ`, `Wₕ: (C, d)`, on the feature `z` = the last layer's
//! hidden state of the first token (`[CLS]` / `<s>`; [`Pooling::Cls`], the default, as AdUE does
//! for encoders) or the masked mean over tokens ([`Pooling::Mean`], how all-MiniLM-L6-v2 was
//! trained as a sentence encoder). There is no pooler/tanh layer and no dropout before the head
//! (unlike HF `BertForSequenceClassification`): `z` is exactly what the head sees, which is what
//! AdUE's uncertainty head needs. The head is initialised as HF does (`N(0, 0.02)`, zero bias).
//!
//! Only `A`, `B` and the head are trainable ([`VarMap`] variables); the encoder's weights are
//! plain tensors, so no optimiser can touch them.
//!
//! **Precision**: [`Precision::F64`] (default) runs the encoder exactly as [`crate::model`] does
//! (f64 arithmetic, bit-identical hidden states when `B = 0`); [`Precision::F32`] trains faster.
//! Measured on all-MiniLM-L6-v2, one AdamW step on a batch of 16 × 64 tokens (a shared 2-core
//! machine, `tests/lora.rs::timing_train_step_f64_vs_f32`): f32 3.6 CPU-s, f64 5.9 CPU-s;
//! inference on the same batch 1.1 / 1.9 CPU-s. Trainable variables are stored in f32 either way
//! (what is saved), and converted exactly to f64 in the f64 path.
//!
//! **For uncertainty heads** (AdUE, [`crate::train::adue`]): [`SequenceClassifier::outputs`]
//! gives per text the feature `z` `(n, d)` and the logits `(n, C)`;
//! [`SequenceClassifier::head_weights`] gives `W` `(C, d)` and `b` `(C,)` with
//! `logits = z Wᵀ + b`.
//!
//! **Saved adapters** use PEFT names for a bare `BertModel` wrapped by `get_peft_model`:
//! `base_model.model.encoder.layer.{i}.attention.self.query.lora_A.weight` `(r, in)`,
//! `….lora_B.weight` `(out, r)`, `base_model.model.classifier.weight` `(C, d)` /
//! `….bias` `(C,)` in `adapter_model.safetensors`, plus `adapter_config.json` (PEFT's LoRA
//! fields and a `replens` block with the head's settings).
//!
//! ```no_run
//! use replens::train::lora::*;
//! let data = |split: &str| read_labelled_jsonl(format!("data/classification/bbc_news_{split}.jsonl"), "text", "label");
//! let splits = Splits::new(data("train")?, data("validation")?, data("test")?);
//! let cfg = ClassifierConfig::new(5).max_len(64);
//! let mut clf = SequenceClassifier::load("minilm", cfg)?;
//! let log = clf.train(&splits, &TrainOptions::default())?;
//! println!("validation accuracy per epoch: {:?}", log.val_accuracies());
//! let out = clf.outputs(&["Shares rose sharply."])?; // features z and logits, for AdUE
//! let (w, b) = clf.head_weights()?;
//! # Ok::<(), replens::Error>(())
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal, Uniform};
use serde::{Deserialize, Serialize};
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{bail, Context, Error, Result};
use crate::hooks::HookSpec;
use crate::model::bert::{Bert, BertLinear, LinearAdapter};
use crate::model::{pad_batch, source, ArchConfig, SourceKind};
use crate::progress::Progress;
use crate::train::probe::LogisticRegression;

/// Prefix PEFT gives every tensor of a wrapped model.
const PEFT_PREFIX: &str = "base_model.model";
/// Name of the weights file PEFT writes and reads.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// Name of the config file PEFT writes and reads.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// LoRA hyper-parameters (PEFT `LoraConfig` names in the docs).
///
/// ```
/// use replens::train::lora::LoraConfig;
/// let cfg = LoraConfig::default(); // AdUE's: r = 8, α = 16 on query/key/value
/// assert_eq!(cfg.scaling(), 2.0);
/// assert_eq!(cfg.target_modules, ["query", "key", "value"]);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// `r`: rank of `B A`. At least 1.
    pub rank: usize,
    /// `lora_alpha`: the update is scaled by `alpha / rank`.
    pub alpha: f64,
    /// `lora_dropout`: dropout on the adapter's input in training, in `[0, 1)`.
    pub dropout: f64,
    /// `target_modules`: PEFT-style names matched against each block's linear layers
    /// (`attention.self.query`, `attention.self.key`, `attention.self.value`,
    /// `attention.output.dense`, `intermediate.dense`, `output.dense`): a name matches a layer if
    /// it equals its path or is a `.`-separated suffix of it, so `"query"` hits the query
    /// projection and `"dense"` all three dense layers. A name that matches nothing is an error.
    pub target_modules: Vec<String>,
    /// Seed of `A`'s (and the head's) initialisation.
    pub seed: u64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: vec!["query".into(), "key".into(), "value".into()],
            seed: 0,
        }
    }
}

impl LoraConfig {
    /// `alpha / rank`, the factor of `B A`.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The layers each target name selects, in block order, checked.
    pub fn resolve_targets(&self) -> Result<Vec<BertLinear>> {
        if self.rank == 0 {
            bail!("LoraConfig: rank must be at least 1");
        }
        if !self.alpha.is_finite() {
            bail!("LoraConfig: alpha must be finite, got {}", self.alpha);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!(
                "LoraConfig: dropout must be in [0, 1), got {}",
                self.dropout
            );
        }
        if self.target_modules.is_empty() {
            bail!("LoraConfig: target_modules is empty (e.g. [\"query\", \"key\", \"value\"])");
        }
        let mut out = Vec::new();
        for name in &self.target_modules {
            let hits: Vec<BertLinear> = BertLinear::ALL
                .into_iter()
                .filter(|l| {
                    let p = l.module_path();
                    p == name || p.ends_with(&format!(".{name}"))
                })
                .collect();
            if hits.is_empty() {
                bail!(
                    "LoraConfig: target module '{name}' matches no linear layer of a BERT block \
                     (query, key, value, attention.output.dense, intermediate.dense, output.dense)"
                );
            }
            out.extend(hits);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// How the feature `z` is read from the last hidden state `(seq, d)` of one text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The first token (`[CLS]` for BERT, `<s>` for RoBERTa), as AdUE and HF classifiers do.
    #[default]
    Cls,
    /// Mean over real (unmasked) tokens, as sentence-transformers' all-MiniLM-L6-v2.
    Mean,
}

/// Precision of the encoder's arithmetic (see the module docs): the same type as the model
/// loader's [`crate::model::LoadOptions::encoder_precision`]. F64 is bit-identical to the
/// default [`crate::model::Model`] forward pass and about 2× slower than F32, whose states agree
/// with the f64 path to ~1e-4 (MiniLM's outlier features).
pub use crate::model::Precision;

/// Everything that defines a classifier apart from the base model's weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// Number of classes `C` (at least 2); labels are `0..C`.
    pub n_classes: usize,
    pub pooling: Pooling,
    /// Texts are cut to this many tokens, special tokens included (HF `truncation=True`).
    pub max_len: usize,
    pub precision: Precision,
    pub lora: LoraConfig,
}

impl ClassifierConfig {
    /// `n_classes` classes, CLS pooling, 64 tokens, f64, [`LoraConfig::default`].
    pub fn new(n_classes: usize) -> Self {
        Self {
            n_classes,
            pooling: Pooling::Cls,
            max_len: 64,
            precision: Precision::F64,
            lora: LoraConfig::default(),
        }
    }
    pub fn pooling(mut self, p: Pooling) -> Self {
        self.pooling = p;
        self
    }
    pub fn max_len(mut self, n: usize) -> Self {
        self.max_len = n;
        self
    }
    pub fn precision(mut self, p: Precision) -> Self {
        self.precision = p;
        self
    }
    pub fn lora(mut self, l: LoraConfig) -> Self {
        self.lora = l;
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// Train / validation / test examples, each `(text, label)`.
#[derive(Debug, Clone, Default)]
pub struct Splits {
    pub train: Vec<(String, usize)>,
    pub validation: Vec<(String, usize)>,
    pub test: Vec<(String, usize)>,
}

impl Splits {
    pub fn new(
        train: Vec<(String, usize)>,
        validation: Vec<(String, usize)>,
        test: Vec<(String, usize)>,
    ) -> Self {
        Self {
            train,
            validation,
            test,
        }
    }

    /// Errors on an empty split, a label `≥ n_classes`, or a training split with one class.
    pub fn check(&self, n_classes: usize) -> Result<()> {
        for (name, split) in [
            ("train", &self.train),
            ("validation", &self.validation),
            ("test", &self.test),
        ] {
            check_labels(name, split, n_classes)?;
        }
        let first = self.train[0].1;
        if self.train.iter().all(|(_, y)| *y == first) {
            bail!(
                "train split has only one class (every label is {first}): a classifier needs examples of at least two classes"
            );
        }
        Ok(())
    }
}

fn check_labels(name: &str, split: &[(String, usize)], n_classes: usize) -> Result<()> {
    if split.is_empty() {
        bail!("{name} split is empty");
    }
    if let Some((i, (_, y))) = split.iter().enumerate().find(|(_, (_, y))| *y >= n_classes) {
        bail!("{name} split: example {i} has label {y}, but n_classes is {n_classes} (labels must be 0..{n_classes})");
    }
    Ok(())
}

/// Read `(text, label)` pairs from a JSON-lines file (one object per line; `label_key` must be a
/// non-negative integer), e.g. `data/classification/*.jsonl` with `"text"` / `"label"`.
pub fn read_labelled_jsonl(
    path: impl AsRef<Path>,
    text_key: &str,
    label_key: &str,
) -> Result<Vec<(String, usize)>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let t = v.get(text_key).and_then(|t| t.as_str()).ok_or_else(|| {
            Error::InvalidInput(format!(
                "{} line {}: no string field '{text_key}'",
                path.display(),
                i + 1
            ))
        })?;
        let y = v.get(label_key).and_then(|y| y.as_u64()).ok_or_else(|| {
            Error::InvalidInput(format!(
                "{} line {}: no non-negative integer field '{label_key}'",
                path.display(),
                i + 1
            ))
        })?;
        out.push((t.to_string(), y as usize));
    }
    Ok(out)
}

/// Fraction of rows of `logits` `(n, C)` whose arg-max equals the label.
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// let logits = Tensor::new(&[[2.0f32, 1.0], [0.0, 3.0], [1.0, 0.5]], &Device::Cpu)?;
/// let acc = replens::train::lora::accuracy(&logits, &[0, 1, 1])?;
/// assert!((acc - 2.0 / 3.0).abs() < 1e-12);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn accuracy(logits: &Tensor, labels: &[usize]) -> Result<f64> {
    let (n, c) = logits
        .dims2()
        .context(|| format!("accuracy: logits must be (n, C), got {:?}", logits.shape()))?;
    if n != labels.len() {
        bail!(
            "accuracy: logits has {n} rows but there are {} labels",
            labels.len()
        );
    }
    if n == 0 {
        bail!("accuracy: no examples");
    }
    if let Some(y) = labels.iter().find(|&&y| y >= c) {
        bail!("accuracy: label {y} is out of range for {c} classes");
    }
    let pred: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
    let hits = pred
        .iter()
        .zip(labels)
        .filter(|(p, y)| **p as usize == **y)
        .count();
    Ok(hits as f64 / n as f64)
}

// ---------------------------------------------------------------------------------------------
// LoRA adapters
// ---------------------------------------------------------------------------------------------

/// PEFT name of a LoRA matrix, e.g.
/// `base_model.model.encoder.layer.0.attention.self.query.lora_A.weight`.
pub fn lora_tensor_name(layer: usize, which: BertLinear, matrix: char) -> String {
    format!(
        "{PEFT_PREFIX}.encoder.layer.{layer}.{}.lora_{matrix}.weight",
        which.module_path()
    )
}

/// PEFT name of the head's weight (`"weight"`) or bias (`"bias"`).
pub fn head_tensor_name(what: &str) -> String {
    format!("{PEFT_PREFIX}.classifier.{what}")
}

/// The LoRA matrices of every targeted layer; an encoder [`LinearAdapter`].
pub struct LoraAdapters {
    /// `(A (r, in), B (out, r))` per targeted `(layer, linear)`, f32 variables.
    pairs: BTreeMap<(usize, BertLinear), (Var, Var)>,
    scaling: f64,
    dropout: f64,
    /// Dropout masks in training come from here, so runs are reproducible.
    rng: RefCell<rand::rngs::StdRng>,
}

impl LoraAdapters {
    /// `α / r`.
    pub fn scaling(&self) -> f64 {
        self.scaling
    }

    /// The targeted `(layer, linear)` pairs.
    pub fn targets(&self) -> Vec<(usize, BertLinear)> {
        self.pairs.keys().copied().collect()
    }

    /// `(A, B)` of one targeted layer (f32 variables), if it is targeted.
    pub fn matrices(&self, layer: usize, which: BertLinear) -> Option<(&Var, &Var)> {
        self.pairs.get(&(layer, which)).map(|(a, b)| (a, b))
    }

    /// `ΔW = (α / r) · B A`, `(out, in)`, in `dtype`, for every targeted layer.
    pub fn weight_deltas(&self, dtype: DType) -> Result<Vec<(usize, BertLinear, Tensor)>> {
        self.pairs
            .iter()
            .map(|(&(layer, which), (a, b))| {
                let a = a.as_tensor().to_dtype(dtype)?;
                let b = b.as_tensor().to_dtype(dtype)?;
                Ok((layer, which, (b.matmul(&a)? * self.scaling)?))
            })
            .collect()
    }
}

impl LinearAdapter for LoraAdapters {
    fn delta(
        &self,
        layer: usize,
        which: BertLinear,
        x: &Tensor,
        train: bool,
    ) -> candle_core::Result<Option<Tensor>> {
        let Some((a, b)) = self.pairs.get(&(layer, which)) else {
            return Ok(None);
        };
        let x = if train && self.dropout > 0.0 {
            let keep = 1.0 - self.dropout;
            let n = x.elem_count();
            let mut rng = self.rng.borrow_mut();
            let mask: Vec<f64> = (0..n)
                .map(|_| {
                    if rng.gen::<f64>() < keep {
                        1.0 / keep
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
            (x * mask)?
        } else {
            x.clone()
        };
        let a = a.as_tensor().to_dtype(x.dtype())?;
        let b = b.as_tensor().to_dtype(x.dtype())?;
        let delta = (x.matmul(&a.t()?)?.matmul(&b.t()?)? * self.scaling)?;
        Ok(Some(delta))
    }
}

// ---------------------------------------------------------------------------------------------
// The classifier
// ---------------------------------------------------------------------------------------------

/// Features and logits of a batch of texts, both f32 `(n, d)` / `(n, C)`. `logits` are computed
/// in the encoder's precision from the unrounded features (`logits ≈ features · Wᵀ + b` to
/// ~1e-6 in f32).
#[derive(Debug, Clone)]
pub struct ClassifierOutputs {
    /// `z`: pooled last-layer hidden state (see [`Pooling`]).
    pub features: Tensor,
    pub logits: Tensor,
}

/// Accuracy, mean cross-entropy and logits of a labelled split.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub accuracy: f64,
    /// Mean `−log softmax(logits)[y]`.
    pub loss: f64,
    /// `(n, C)` f32.
    pub logits: Tensor,
}

/// A LoRA-adapted BERT-family encoder with a linear classification head.
pub struct SequenceClassifier {
    encoder: Bert,
    tokenizer: Tokenizer,
    cfg: ClassifierConfig,
    /// The model directory, written to `adapter_config.json` as `base_model_name_or_path`.
    base_dir: PathBuf,
    device: Device,
    /// `None` after [`merge`](Self::merge).
    lora: Option<LoraAdapters>,
    head_w: Var,
    head_b: Var,
    /// Every trainable variable under its PEFT name.
    vars: VarMap,
}

/// Configuration, tokenizer and f32 weights of an HF-layout BERT-family directory.
fn read_bert_dir(
    dir: &Path,
) -> Result<(
    crate::model::bert::Config,
    Tokenizer,
    HashMap<String, Tensor>,
)> {
    let cfg = match ArchConfig::from_file(&dir.join("config.json"))? {
        ArchConfig::Bert(c) => c,
        other => bail!(
            "{}: a sequence classifier needs a BERT-family encoder, but this is a {} model",
            dir.display(),
            other.family()
        ),
    };
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.exists() {
        return Err(Error::Tokenizer(format!(
            "missing tokenizer: {} does not exist",
            tok_path.display()
        )));
    }
    let tokenizer = Tokenizer::from_file(&tok_path)
        .map_err(|e| Error::Tokenizer(format!("cannot read {}: {e}", tok_path.display())))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no *.safetensors weights in {}", dir.display());
    }
    let mut weights = HashMap::new();
    for file in files {
        let tensors = candle_core::safetensors::load(&file, &Device::Cpu)
            .context(|| format!("cannot read safetensors {}", file.display()))?;
        for (name, t) in tensors {
            let t = t
                .to_dtype(DType::F32)
                .context(|| format!("tensor {name} in {}", file.display()))?;
            weights.insert(name, t);
        }
    }
    Ok((cfg, tokenizer, weights))
}

impl SequenceClassifier {
    /// Resolve `model` like [`crate::model::Model::load`] (a directory, or a packaged alias such
    /// as `"minilm"`, the HF cache, the hub) and build a fresh classifier on it: `B = 0`, `A` and
    /// the head drawn with `cfg.lora.seed`.
    pub fn load(model: &str, cfg: ClassifierConfig) -> Result<Self> {
        let src = source::resolve(model)?;
        if src.kind == SourceKind::Gguf {
            bail!(
                "{} is a GGUF (decoder) file: a sequence classifier needs a BERT-family encoder directory",
                src.path.display()
            );
        }
        Self::from_dir(&src.path, cfg)
    }

    /// [`load`](Self::load) from an HF-layout directory (config.json, tokenizer.json, weights).
    pub fn from_dir(dir: impl AsRef<Path>, cfg: ClassifierConfig) -> Result<Self> {
        let dir = dir.as_ref();
        if cfg.n_classes < 2 {
            bail!(
                "ClassifierConfig: n_classes must be at least 2, got {}",
                cfg.n_classes
            );
        }
        let targets = cfg.lora.resolve_targets()?;
        let (bert_cfg, mut tokenizer, weights) = read_bert_dir(dir)?;
        let max = bert_cfg.max_sequence_len();
        if cfg.max_len < 3 || cfg.max_len > max {
            bail!(
                "ClassifierConfig: max_len must be in 3..={max} (the model's positions), got {}",
                cfg.max_len
            );
        }
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: cfg.max_len,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", dir.display())))?;
        let device = Device::Cpu;
        let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F32, &device);
        let encoder =
            Bert::load_with_dtype(&bert_cfg, vb, cfg.precision.dtype()).map_err(|e| match e {
                Error::InvalidInput(m) => {
                    Error::InvalidInput(format!("{m} (model in {})", dir.display()))
                }
                other => other,
            })?;

        let d = bert_cfg.hidden_size;
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.lora.seed);
        let vars = VarMap::new();
        let mut pairs = BTreeMap::new();
        {
            let mut data = vars.data().lock().map_err(|_| {
                Error::InvalidInput("SequenceClassifier: variable map lock poisoned".into())
            })?;
            let r = cfg.lora.rank;
            for layer in 0..bert_cfg.num_hidden_layers {
                for &which in &targets {
                    let (w, _) = encoder.linear_weights(layer, which)?;
                    let (out_dim, in_dim) = w.dims2()?;
                    // PEFT: kaiming_uniform_(a=√5) ⇒ U(−1/√fan_in, 1/√fan_in).
                    let bound = 1.0 / (in_dim as f32).sqrt();
                    let u = Uniform::new(-bound, bound);
                    let a: Vec<f32> = (0..r * in_dim).map(|_| u.sample(&mut rng)).collect();
                    let a = Var::from_tensor(&Tensor::from_vec(a, (r, in_dim), &device)?)?;
                    let b = Var::from_tensor(&Tensor::zeros((out_dim, r), DType::F32, &device)?)?;
                    data.insert(lora_tensor_name(layer, which, 'A'), a.clone());
                    data.insert(lora_tensor_name(layer, which, 'B'), b.clone());
                    pairs.insert((layer, which), (a, b));
                }
            }
        }
        let std = bert_cfg.initializer_range as f32;
        let normal = Normal::new(0.0f32, std).map_err(|e| {
            Error::InvalidInput(format!("config.json: bad initializer_range {std}: {e}"))
        })?;
        let c = cfg.n_classes;
        let w: Vec<f32> = (0..c * d).map(|_| normal.sample(&mut rng)).collect();
        let head_w = Var::from_tensor(&Tensor::from_vec(w, (c, d), &device)?)?;
        let head_b = Var::from_tensor(&Tensor::zeros(c, DType::F32, &device)?)?;
        {
            let mut data = vars.data().lock().map_err(|_| {
                Error::InvalidInput("SequenceClassifier: variable map lock poisoned".into())
            })?;
            data.insert(head_tensor_name("weight"), head_w.clone());
            data.insert(head_tensor_name("bias"), head_b.clone());
        }
        let lora = LoraAdapters {
            pairs,
            scaling: cfg.lora.scaling(),
            dropout: cfg.lora.dropout,
            rng: RefCell::new(rand::rngs::StdRng::seed_from_u64(cfg.lora.seed)),
        };
        Ok(Self {
            encoder,
            tokenizer,
            cfg,
            base_dir: dir.to_path_buf(),
            device,
            lora: Some(lora),
            head_w,
            head_b,
            vars,
        })
    }

    pub fn config(&self) -> &ClassifierConfig {
        &self.cfg
    }

    /// The frozen encoder (its weights never change; LoRA acts beside them).
    pub fn encoder(&self) -> &Bert {
        &self.encoder
    }

    /// The LoRA adapters; `None` for a merged classifier.
    pub fn adapters(&self) -> Option<&LoraAdapters> {
        self.lora.as_ref()
    }

    /// All trainable variables under their PEFT names (LoRA `A`, `B`, head weight and bias).
    pub fn trainable(&self) -> &VarMap {
        &self.vars
    }

    /// Number of trainable scalars.
    pub fn n_trainable(&self) -> usize {
        self.vars.all_vars().iter().map(|v| v.elem_count()).sum()
    }

    /// Hidden size `d` (the length of `z`).
    pub fn d_model(&self) -> usize {
        self.encoder.config().hidden_size
    }

    /// Head weight `W` `(C, d)` and bias `b` `(C,)`, f32 copies: `logits = z Wᵀ + b`.
    pub fn head_weights(&self) -> Result<(Tensor, Tensor)> {
        Ok((
            self.head_w.as_tensor().copy()?,
            self.head_b.as_tensor().copy()?,
        ))
    }

    /// Token ids of each text, truncated to `max_len` (special tokens kept). `what` names the
    /// input in errors; a text with no tokens besides the special ones is an error.
    pub fn tokenize<S: AsRef<str>>(&self, texts: &[S], what: &str) -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let enc = self
                    .tokenizer
                    .encode(t.as_ref(), true)
                    .map_err(|e| Error::Tokenizer(format!("{what}: text {i}: {e}")))?;
                if enc.get_special_tokens_mask().iter().all(|&m| m == 1) {
                    bail!("{what}: text {i} is empty (it produced no tokens)");
                }
                Ok(enc.get_ids().to_vec())
            })
            .collect()
    }

    /// One padded batch through encoder (+ adapter unless `base`) and head: `(z, logits)` in
    /// compute precision. Differentiable in the trainable variables.
    fn forward_batch(&self, ids: &[Vec<u32>], train: bool, base: bool) -> Result<(Tensor, Tensor)> {
        let (input, mask) = pad_batch(ids, &self.device)?;
        let adapter = if base {
            None
        } else {
            self.lora.as_ref().map(|l| l as &dyn LinearAdapter)
        };
        let (_, hidden) = self
            .encoder
            .encode(&input, &mask, &HookSpec::none(), adapter, train)?;
        let dtype = hidden.dtype();
        let z = match self.cfg.pooling {
            Pooling::Cls => hidden.i((.., 0, ..))?.contiguous()?,
            Pooling::Mean => {
                let m = mask.to_dtype(dtype)?.unsqueeze(2)?;
                let sum = hidden.broadcast_mul(&m)?.sum(1)?;
                sum.broadcast_div(&m.sum(1)?)?
            }
        };
        let w = self.head_w.as_tensor().to_dtype(dtype)?;
        let b = self.head_b.as_tensor().to_dtype(dtype)?;
        let logits = z.matmul(&w.t()?)?.broadcast_add(&b)?;
        Ok((z, logits))
    }

    fn outputs_ids(
        &self,
        ids: &[Vec<u32>],
        base: bool,
        batch_size: usize,
    ) -> Result<ClassifierOutputs> {
        if ids.is_empty() {
            bail!("no texts given");
        }
        let batch_size = batch_size.max(1);
        let mut zs = Vec::new();
        let mut ls = Vec::new();
        for batch in ids.chunks(batch_size) {
            let (z, l) = self.forward_batch(batch, false, base)?;
            zs.push(z.detach().to_dtype(DType::F32)?);
            ls.push(l.detach().to_dtype(DType::F32)?);
        }
        Ok(ClassifierOutputs {
            features: Tensor::cat(&zs, 0)?,
            logits: Tensor::cat(&ls, 0)?,
        })
    }

    /// Features `z` `(n, d)` and logits `(n, C)` (f32) of each text, in inference mode, batches
    /// of 32. This is what an uncertainty head (AdUE) is trained on.
    pub fn outputs<S: AsRef<str>>(&self, texts: &[S]) -> Result<ClassifierOutputs> {
        let ids = self.tokenize(texts, "outputs")?;
        self.outputs_ids(&ids, false, 32)
    }

    /// [`outputs`](Self::outputs) of the same head on the encoder without the adapter: the frozen
    /// base model.
    pub fn base_outputs<S: AsRef<str>>(&self, texts: &[S]) -> Result<ClassifierOutputs> {
        let ids = self.tokenize(texts, "base_outputs")?;
        self.outputs_ids(&ids, true, 32)
    }

    /// Logits `(n, C)` f32 of each text.
    pub fn logits<S: AsRef<str>>(&self, texts: &[S]) -> Result<Tensor> {
        Ok(self.outputs(texts)?.logits)
    }

    /// Features `z` `(n, d)` f32 of each text.
    pub fn features<S: AsRef<str>>(&self, texts: &[S]) -> Result<Tensor> {
        Ok(self.outputs(texts)?.features)
    }

    /// Accuracy, mean cross-entropy and logits on labelled examples (inference mode).
    pub fn evaluate(&self, data: &[(String, usize)]) -> Result<Evaluation> {
        check_labels("evaluate", data, self.cfg.n_classes)?;
        let texts: Vec<&str> = data.iter().map(|(t, _)| t.as_str()).collect();
        let labels: Vec<usize> = data.iter().map(|(_, y)| *y).collect();
        let ids = self.tokenize(&texts, "evaluate")?;
        let out = self.outputs_ids(&ids, false, 32)?;
        evaluation(out.logits, &labels)
    }

    /// The same classifier with the adapters folded into the encoder,
    /// `W ← W + (α / r) · B A` (in compute precision), and no adapter left. Its outputs equal the
    /// adapted model's up to rounding (≤ 1e-5 on MiniLM logits, see `tests/lora.rs`).
    pub fn merge(&self) -> Result<SequenceClassifier> {
        let encoder = match &self.lora {
            Some(l) => self
                .encoder
                .with_weight_deltas(&l.weight_deltas(self.encoder.dtype())?)?,
            None => self.encoder.clone(),
        };
        let head_w = Var::from_tensor(&self.head_w.as_tensor().copy()?)?;
        let head_b = Var::from_tensor(&self.head_b.as_tensor().copy()?)?;
        let vars = VarMap::new();
        {
            let mut data = vars
                .data()
                .lock()
                .map_err(|_| Error::InvalidInput("merge: variable map lock poisoned".into()))?;
            data.insert(head_tensor_name("weight"), head_w.clone());
            data.insert(head_tensor_name("bias"), head_b.clone());
        }
        Ok(SequenceClassifier {
            encoder,
            tokenizer: self.tokenizer.clone(),
            cfg: self.cfg.clone(),
            base_dir: self.base_dir.clone(),
            device: self.device.clone(),
            lora: None,
            head_w,
            head_b,
            vars,
        })
    }

    // -----------------------------------------------------------------------------------------
    // Saving and loading
    // -----------------------------------------------------------------------------------------

    /// Write `adapter_model.safetensors` (LoRA `A`/`B` and the head, f32, PEFT names) and
    /// `adapter_config.json` into `dir` (created if needed). A merged classifier has no adapter
    /// to save: error.
    pub fn save_adapter(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        if self.lora.is_none() {
            bail!("save_adapter: this classifier is merged (it has no adapter); save the unmerged one");
        }
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let weights = dir.join(ADAPTER_WEIGHTS);
        self.vars
            .save(&weights)
            .context(|| format!("cannot write {}", weights.display()))?;
        let json = AdapterConfigFile::from_config(&self.cfg, &self.base_dir);
        let path = dir.join(ADAPTER_CONFIG);
        let text = serde_json::to_string_pretty(&json).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, text).map_err(|source| Error::Io { path, source })
    }

    /// Rebuild a classifier saved by [`save_adapter`](Self::save_adapter): the base model from
    /// `base` if given, else `base_model_name_or_path` in the config; every saved tensor must be
    /// present with its shape, and no other tensor may be in the file.
    pub fn load_adapter(dir: impl AsRef<Path>, base: Option<&str>) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg_path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| Error::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let file: AdapterConfigFile =
            serde_json::from_str(&text).map_err(|source| Error::Json {
                path: cfg_path.clone(),
                source,
            })?;
        let cfg = file.to_config()?;
        let base = base.unwrap_or(&file.base_model_name_or_path);
        let clf = Self::load(base, cfg)?;
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        let saved = candle_core::safetensors::load(&weights_path, &Device::Cpu)
            .context(|| format!("cannot read {}", weights_path.display()))?;
        {
            let data = clf.vars.data().lock().map_err(|_| {
                Error::InvalidInput("load_adapter: variable map lock poisoned".into())
            })?;
            if let Some(extra) = saved.keys().find(|k| !data.contains_key(*k)) {
                bail!(
                    "{}: unexpected tensor {extra} (not a LoRA/head tensor of this configuration)",
                    weights_path.display()
                );
            }
            for (name, var) in data.iter() {
                let t = saved.get(name).ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "{}: missing tensor {name}",
                        weights_path.display()
                    ))
                })?;
                if t.dims() != var.dims() {
                    bail!(
                        "{}: tensor {name} has shape {:?}, expected {:?}",
                        weights_path.display(),
                        t.dims(),
                        var.dims()
                    );
                }
                var.set(&t.to_dtype(DType::F32)?)
                    .context(|| format!("setting {name}"))?;
            }
        }
        Ok(clf)
    }

    /// Linear probing before fine-tuning (LP-FT; Kumar, Raghunathan, Jones, Ma & Liang, "Fine-Tuning
    /// can Distort Pretrained Features and Underperform Out-of-Distribution", ICLR 2022,
    /// arXiv 2202.10054): set the head to an L2-regularised logistic regression (scikit-learn's
    /// objective with inverse penalty `c`, [`LogisticRegression`]) fitted on the frozen base
    /// model's features `z` of `train`. With `B = 0` the adapted model starts exactly at that
    /// probe, so a short LoRA run refines a classifier that already works instead of first
    /// having to train a random head. Returns the probe's training accuracy.
    ///
    /// Two classes: the binary model `σ(wᵀz + c₀)` becomes the head `W = [−w/2; w/2]`,
    /// `b = [−c₀/2, c₀/2]`, whose softmax is the same probability. More classes: the
    /// multinomial coefficients are the head. Every class `0..n_classes` must occur in `train`.
    ///
    /// ```no_run
    /// use replens::train::lora::*;
    /// let data = |split: &str| read_labelled_jsonl(format!("data/classification/spam_assassin_{split}.jsonl"), "text", "label");
    /// let mut clf = SequenceClassifier::load("minilm", ClassifierConfig::new(2).pooling(Pooling::Mean))?;
    /// let train = data("train")?;
    /// let probe_accuracy = clf.warm_start_head(&train[..200], 1.0)?;
    /// println!("the head starts at training accuracy {probe_accuracy:.3}");
    /// # Ok::<(), replens::Error>(())
    /// ```
    pub fn warm_start_head(&mut self, train: &[(String, usize)], c: f64) -> Result<f64> {
        let k = self.cfg.n_classes;
        check_labels("warm_start_head: train", train, k)?;
        let mut counts = vec![0usize; k];
        for (_, y) in train {
            counts[*y] += 1;
        }
        if let Some(missing) = counts.iter().position(|&n| n == 0) {
            bail!("warm_start_head: class {missing} has no example in the training split (a probe needs every class 0..{k})");
        }
        let texts: Vec<&str> = train.iter().map(|(t, _)| t.as_str()).collect();
        let y: Vec<u32> = train.iter().map(|(_, y)| *y as u32).collect();
        let ids = self.tokenize(&texts, "warm_start_head: train")?;
        let z = self.outputs_ids(&ids, true, 32)?.features;
        let probe = LogisticRegression::new()
            .c(c)
            .fit(&z, &y)
            .map_err(|e| Error::InvalidInput(format!("warm_start_head: {e}")))?;
        let d = self.d_model();
        let (w, b): (Vec<f32>, Vec<f32>) = if k == 2 {
            let half: Vec<f32> = probe.coef.iter().map(|&v| (v / 2.0) as f32).collect();
            let w = half
                .iter()
                .map(|v| -v)
                .chain(half.iter().copied())
                .collect();
            let c0 = (probe.intercept[0] / 2.0) as f32;
            (w, vec![-c0, c0])
        } else {
            (
                probe.coef.iter().map(|&v| v as f32).collect(),
                probe.intercept.iter().map(|&v| v as f32).collect(),
            )
        };
        self.head_w
            .set(&Tensor::from_vec(w, (k, d), &self.device)?)?;
        self.head_b.set(&Tensor::from_vec(b, k, &self.device)?)?;
        probe.accuracy(&z, &y)
    }

    // -----------------------------------------------------------------------------------------
    // Training
    // -----------------------------------------------------------------------------------------

    /// Fine-tune `A`, `B` and the head with AdamW on cross-entropy, with the learning-rate
    /// schedule of `opts`; validation accuracy after every epoch, test accuracy at the end.
    /// Splits are checked first (empty split, label ≥ `n_classes`, one class only: errors).
    pub fn train(&mut self, splits: &Splits, opts: &TrainOptions) -> Result<TrainLog> {
        splits.check(self.cfg.n_classes)?;
        opts.check()?;
        if self.lora.is_none() {
            bail!("train: this classifier is merged; train the unmerged one");
        }
        let texts: Vec<&str> = splits.train.iter().map(|(t, _)| t.as_str()).collect();
        let labels: Vec<u32> = splits.train.iter().map(|(_, y)| *y as u32).collect();
        let ids = self.tokenize(&texts, "train split")?;
        // Validation and test are tokenized up front so that a bad text fails before training.
        let val_texts: Vec<&str> = splits.validation.iter().map(|(t, _)| t.as_str()).collect();
        let val_labels: Vec<usize> = splits.validation.iter().map(|(_, y)| *y).collect();
        let val_ids = self.tokenize(&val_texts, "validation split")?;
        let test_texts: Vec<&str> = splits.test.iter().map(|(t, _)| t.as_str()).collect();
        let test_labels: Vec<usize> = splits.test.iter().map(|(_, y)| *y).collect();
        let test_ids = self.tokenize(&test_texts, "test split")?;

        let vars = self.vars.all_vars();
        let mut opt = AdamW::new(
            vars.clone(),
            ParamsAdamW {
                lr: opts.lr,
                weight_decay: opts.weight_decay,
                ..Default::default()
            },
        )?;
        if let Some(l) = &self.lora {
            *l.rng.borrow_mut() = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0x5eed_d409);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
        let steps_per_epoch = ids.len().div_ceil(opts.batch_size);
        let total = steps_per_epoch * opts.epochs;
        let warmup = (opts.warmup_ratio * total as f64).ceil() as usize;
        let mut log = TrainLog::default();
        let mut order: Vec<usize> = (0..ids.len()).collect();
        let mut step = 0usize;
        let started = Instant::now();
        for epoch in 0..opts.epochs {
            let t0 = Instant::now();
            order.shuffle(&mut rng);
            let mut progress = Progress::new(
                &format!("lora epoch {}/{}", epoch + 1, opts.epochs),
                steps_per_epoch,
                opts.progress,
            );
            let mut loss_sum = 0.0;
            for chunk in order.chunks(opts.batch_size) {
                let lr = opts.schedule.lr(opts.lr, step, warmup, total);
                opt.set_learning_rate(lr);
                let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
                let y: Vec<u32> = chunk.iter().map(|&i| labels[i]).collect();
                let (_, logits) = self.forward_batch(&batch, true, false)?;
                let y = Tensor::from_vec(y, chunk.len(), &self.device)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
                let loss_v = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                if !loss_v.is_finite() {
                    bail!("train: the loss became {loss_v} at step {step} (learning rate {lr} too high?)");
                }
                let mut grads = loss.backward()?;
                if let Some(max_norm) = opts.max_grad_norm {
                    clip_grad_norm(&mut grads, &vars, max_norm)?;
                }
                opt.step(&grads)?;
                log.step_losses.push(loss_v);
                loss_sum += loss_v * chunk.len() as f64;
                step += 1;
                progress.inc(1);
            }
            progress.finish();
            let train_seconds = t0.elapsed().as_secs_f64();
            let val_outputs = self.outputs_ids(&val_ids, false, opts.eval_batch_size)?;
            let val = evaluation(val_outputs.logits.clone(), &val_labels)?;
            log.validation_outputs = Some(val_outputs);
            let e = EpochLog {
                epoch: epoch + 1,
                train_loss: loss_sum / ids.len() as f64,
                val_loss: val.loss,
                val_accuracy: val.accuracy,
                lr: opts
                    .schedule
                    .lr(opts.lr, step.saturating_sub(1), warmup, total),
                seconds: t0.elapsed().as_secs_f64(),
                seconds_per_step: train_seconds / steps_per_epoch as f64,
            };
            if opts.progress {
                eprintln!(
                    "lora epoch {}/{}: train loss {:.4}, validation loss {:.4}, validation accuracy {:.3} ({:.1} s)",
                    e.epoch, opts.epochs, e.train_loss, e.val_loss, e.val_accuracy, e.seconds
                );
            }
            log.epochs.push(e);
        }
        log.seconds = started.elapsed().as_secs_f64();
        let test = self.outputs_ids(&test_ids, false, opts.eval_batch_size)?;
        log.test_accuracy = evaluation(test.logits.clone(), &test_labels)?.accuracy;
        log.test_outputs = Some(test);
        Ok(log)
    }
}

fn evaluation(logits: Tensor, labels: &[usize]) -> Result<Evaluation> {
    let acc = accuracy(&logits, labels)?;
    let y: Vec<u32> = labels.iter().map(|&y| y as u32).collect();
    let y = Tensor::from_vec(y, labels.len(), logits.device())?;
    let loss =
        candle_nn::loss::cross_entropy(&logits.to_dtype(DType::F64)?, &y)?.to_scalar::<f64>()?;
    Ok(Evaluation {
        accuracy: acc,
        loss,
        logits,
    })
}

/// Scale all gradients by `min(1, max_norm / ‖g‖₂)`, the global norm over every variable
/// (PyTorch `clip_grad_norm_`).
fn clip_grad_norm(
    grads: &mut candle_core::backprop::GradStore,
    vars: &[Var],
    max_norm: f64,
) -> Result<()> {
    let mut sq = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    if !norm.is_finite() {
        bail!("train: gradient norm is {norm}");
    }
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * factor)?);
            }
        }
    }
    Ok(())
}

/// Learning-rate schedule over optimiser steps `0..total` after `warmup` linear warm-up steps
/// (HF `get_linear_schedule_with_warmup` / `get_cosine_schedule_with_warmup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// `lr · (total − step) / (total − warmup)` after warm-up.
    #[default]
    Linear,
    /// `lr · ½ (1 + cos(π · progress))` after warm-up.
    Cosine,
}

impl Schedule {
    /// Learning rate of optimiser step `step` (0-based).
    ///
    /// ```
    /// use replens::train::lora::Schedule;
    /// assert_eq!(Schedule::Linear.lr(1e-3, 0, 0, 10), 1e-3);
    /// assert!((Schedule::Linear.lr(1e-3, 5, 0, 10) - 5e-4).abs() < 1e-12);
    /// assert!((Schedule::Cosine.lr(1e-3, 5, 0, 10) - 5e-4).abs() < 1e-12);
    /// assert_eq!(Schedule::Linear.lr(1e-3, 1, 4, 10), 2.5e-4); // warm-up
    /// ```
    pub fn lr(self, base: f64, step: usize, warmup: usize, total: usize) -> f64 {
        if step < warmup {
            return base * step as f64 / warmup as f64;
        }
        let rest = total.saturating_sub(warmup).max(1) as f64;
        let progress = ((step - warmup) as f64 / rest).min(1.0);
        match self {
            Schedule::Constant => base,
            Schedule::Linear => base * (1.0 - progress),
            Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

/// Options of [`SequenceClassifier::train`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate of AdamW.
    pub lr: f64,
    /// AdamW's decoupled weight decay (HF Trainer default 0).
    pub weight_decay: f64,
    pub schedule: Schedule,
    /// Fraction of all steps spent warming up linearly from 0.
    pub warmup_ratio: f64,
    /// Clip the global gradient norm to this (HF Trainer default 1.0); `None`: no clipping.
    pub max_grad_norm: Option<f64>,
    /// Seed of the shuffling and of LoRA dropout.
    pub seed: u64,
    /// Batch size of validation/test passes.
    pub eval_batch_size: usize,
    /// Progress bar per epoch and a summary line after each.
    pub progress: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 16,
            lr: 5e-4,
            weight_decay: 0.0,
            schedule: Schedule::Linear,
            warmup_ratio: 0.0,
            max_grad_norm: Some(1.0),
            seed: 0,
            eval_batch_size: 32,
            progress: true,
        }
    }
}

impl TrainOptions {
    /// The checks [`SequenceClassifier::train`] runs first; callers that build options for it
    /// run them early, before anything is embedded.
    pub(crate) fn check(&self) -> Result<()> {
        if self.epochs == 0 {
            bail!("TrainOptions: epochs must be at least 1");
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            bail!("TrainOptions: batch_size and eval_batch_size must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("TrainOptions: lr must be positive, got {}", self.lr);
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            bail!(
                "TrainOptions: warmup_ratio must be in [0, 1), got {}",
                self.warmup_ratio
            );
        }
        if self
            .max_grad_norm
            .is_some_and(|m| !m.is_finite() || m <= 0.0)
        {
            bail!("TrainOptions: max_grad_norm must be positive and finite");
        }
        Ok(())
    }
}

/// One epoch of [`SequenceClassifier::train`].
#[derive(Debug, Clone, PartialEq)]
pub struct EpochLog {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (in training mode, weighted by batch size).
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Wall time of the epoch including validation.
    pub seconds: f64,
    /// Mean wall time of one optimiser step (forward, backward, update).
    pub seconds_per_step: f64,
}

/// What [`SequenceClassifier::train`] returns.
#[derive(Debug, Clone, Default)]
pub struct TrainLog {
    pub epochs: Vec<EpochLog>,
    /// Loss of every optimiser step, in order.
    pub step_losses: Vec<f64>,
    /// Accuracy on the test split after the last epoch.
    pub test_accuracy: f64,
    /// Features and logits of the validation split after the last epoch and of the test
    /// split, from the passes that measured their accuracies. With the default
    /// `eval_batch_size` (32) they are exactly what [`SequenceClassifier::outputs`] returns
    /// for those texts afterwards, so callers need not run them through the model again.
    /// `None` only in a default-constructed log.
    pub validation_outputs: Option<ClassifierOutputs>,
    pub test_outputs: Option<ClassifierOutputs>,
    /// Total wall time.
    pub seconds: f64,
}

impl TrainLog {
    pub fn val_accuracies(&self) -> Vec<f64> {
        self.epochs.iter().map(|e| e.val_accuracy).collect()
    }
    pub fn train_losses(&self) -> Vec<f64> {
        self.epochs.iter().map(|e| e.train_loss).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// adapter_config.json
// ---------------------------------------------------------------------------------------------

/// The PEFT `LoraConfig` fields we write, plus our head settings under `replens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AdapterConfigFile {
    peft_type: String,
    task_type: String,
    base_model_name_or_path: String,
    r: usize,
    lora_alpha: f64,
    lora_dropout: f64,
    target_modules: Vec<String>,
    bias: String,
    fan_in_fan_out: bool,
    modules_to_save: Vec<String>,
    inference_mode: bool,
    replens: HeadConfigFile,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HeadConfigFile {
    n_classes: usize,
    pooling: Pooling,
    max_len: usize,
    precision: Precision,
    seed: u64,
}

impl AdapterConfigFile {
    fn from_config(cfg: &ClassifierConfig, base: &Path) -> Self {
        Self {
            peft_type: "LORA".into(),
            task_type: "SEQ_CLS".into(),
            base_model_name_or_path: base.to_string_lossy().into_owned(),
            r: cfg.lora.rank,
            lora_alpha: cfg.lora.alpha,
            lora_dropout: cfg.lora.dropout,
            target_modules: cfg.lora.target_modules.clone(),
            bias: "none".into(),
            fan_in_fan_out: false,
            modules_to_save: vec!["classifier".into()],
            inference_mode: true,
            replens: HeadConfigFile {
                n_classes: cfg.n_classes,
                pooling: cfg.pooling,
                max_len: cfg.max_len,
                precision: cfg.precision,
                seed: cfg.lora.seed,
            },
        }
    }

    fn to_config(&self) -> Result<ClassifierConfig> {
        if self.peft_type != "LORA" {
            bail!(
                "adapter_config.json: peft_type is '{}', expected 'LORA'",
                self.peft_type
            );
        }
        if self.bias != "none" || self.fan_in_fan_out {
            bail!("adapter_config.json: only bias = \"none\" and fan_in_fan_out = false are supported");
        }
        Ok(ClassifierConfig {
            n_classes: self.replens.n_classes,
            pooling: self.replens.pooling,
            max_len: self.replens.max_len,
            precision: self.replens.precision,
            lora: LoraConfig {
                rank: self.r,
                alpha: self.lora_alpha,
                dropout: self.lora_dropout,
                target_modules: self.target_modules.clone(),
                seed: self.replens.seed,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_match_peft_suffix_rule() {
        let mut cfg = LoraConfig::default();
        assert_eq!(
            cfg.resolve_targets().unwrap(),
            [BertLinear::Query, BertLinear::Key, BertLinear::Value]
        );
        cfg.target_modules = vec!["dense".into()];
        assert_eq!(
            cfg.resolve_targets().unwrap(),
            [
                BertLinear::AttentionOutput,
                BertLinear::Intermediate,
                BertLinear::Output
            ]
        );
        cfg.target_modules = vec!["output.dense".into()];
        assert_eq!(
            cfg.resolve_targets().unwrap(),
            [BertLinear::AttentionOutput, BertLinear::Output]
        );
        cfg.target_modules = vec!["self.query".into(), "query".into()];
        assert_eq!(cfg.resolve_targets().unwrap(), [BertLinear::Query]);
        cfg.target_modules = vec!["q_proj".into()];
        let err = cfg.resolve_targets().unwrap_err().to_string();
        assert!(err.contains("'q_proj'"), "{err}");
        cfg.target_modules = vec!["query".into()];
        cfg.rank = 0;
        assert!(cfg.resolve_targets().is_err());
    }

    #[test]
    fn splits_are_checked() {
        let s = |v: &[usize]| v.iter().map(|&y| (format!("t{y}"), y)).collect::<Vec<_>>();
        assert!(Splits::new(s(&[0, 1]), s(&[1]), s(&[0])).check(2).is_ok());
        let e = Splits::new(s(&[0, 0]), s(&[1]), s(&[0]))
            .check(2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("only one class"), "{e}");
        let e = Splits::new(s(&[0, 1]), s(&[]), s(&[0]))
            .check(2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("validation split is empty"), "{e}");
        let e = Splits::new(s(&[0, 1]), s(&[1]), s(&[0, 2]))
            .check(2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("test split: example 1 has label 2"), "{e}");
    }

    #[test]
    fn accuracy_checks_shapes() {
        let l = Tensor::new(&[[1.0f32, 0.0]], &Device::Cpu).unwrap();
        assert_eq!(accuracy(&l, &[0]).unwrap(), 1.0);
        assert!(accuracy(&l, &[0, 1]).is_err());
        assert!(accuracy(&l, &[2]).is_err());
    }

    #[test]
    fn schedules_end_near_zero() {
        let total = 12;
        for s in [Schedule::Linear, Schedule::Cosine] {
            assert_eq!(s.lr(1.0, 0, 0, total), 1.0);
            let last = s.lr(1.0, total - 1, 0, total);
            assert!(last > 0.0 && last < 0.1, "{s:?} {last}");
        }
        assert_eq!(Schedule::Constant.lr(0.5, 7, 0, total), 0.5);
    }
}
