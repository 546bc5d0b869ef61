//! Loading models and running them with hooks.
//!
//! ```no_run
//! use replens::prelude::*;
//! let model = Model::load("smollm2-135m")?;
//! let run = model.run(&["The cat sat on the mat."], &HookSpec::all_residual())?;
//! let last = run.docs[0].cache.get_by_name("blocks.29.hook_resid_post")?;
//! assert_eq!(last.dims()[1], model.d_model());
//! # Ok::<(), replens::Error>(())
//! ```

pub mod bert;
pub mod config;
mod fast;
pub mod gguf;
pub mod gpt2;
pub mod gpt_neox;
pub mod init;
pub mod llama;
pub mod source;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

pub use config::ArchConfig;
pub use source::{ModelSource, SourceKind};

use crate::error::{Context, Error, Result};
use crate::hooks::{ActivationCache, HookPoint, HookSpec};
use crate::progress::Progress;

/// What one batched forward pass returns.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// Requested activations, each `(batch, seq, d)`.
    pub cache: ActivationCache,
    /// `(batch, seq, vocab)` for language models; `None` for encoders.
    pub logits: Option<Tensor>,
}

/// A network of one architecture family: embeddings, blocks with hook points, final norm, head.
pub trait Transformer: Send + Sync {
    /// `input_ids`: `(batch, seq)` u32. `attention_mask`: `(batch, seq)` u32, 1 on real tokens,
    /// 0 on right padding. Padding must not change the states of real tokens.
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        hooks: &HookSpec,
    ) -> Result<ForwardOutput>;

    /// Continue a forward pass from `resid`, the `(batch, seq, d_model)` residual stream entering
    /// block `start` (`start == n_layers`: only the final norm and head), to the logits. Used by
    /// model stitching. Architectures that do not support it return an error.
    fn forward_from(
        &self,
        start: usize,
        resid: &Tensor,
        attention_mask: &Tensor,
        hooks: &HookSpec,
    ) -> Result<ForwardOutput> {
        let _ = (start, resid, attention_mask, hooks);
        Err(Error::InvalidInput(
            "forward_from (continuing from a residual stream) is only implemented for gpt2 models"
                .into(),
        ))
    }
}

/// Options of [`Model::run_with`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Texts per forward pass (right-padded to the longest in the batch).
    pub batch_size: usize,
    /// Cut texts longer than the context window instead of failing.
    pub truncate: bool,
    /// Keep `(seq, vocab)` logits per text (large: off by default). Per-token loss is always kept.
    pub keep_logits: bool,
    /// Show progress (a bar in a terminal, a line every few seconds elsewhere).
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            batch_size: 8,
            truncate: false,
            keep_logits: false,
            progress: true,
        }
    }
}

impl RunOptions {
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }
    pub fn truncate(mut self, yes: bool) -> Self {
        self.truncate = yes;
        self
    }
    pub fn keep_logits(mut self, yes: bool) -> Self {
        self.keep_logits = yes;
        self
    }
    pub fn progress(mut self, yes: bool) -> Self {
        self.progress = yes;
        self
    }
}

/// Everything one forward pass produced for one text.
#[derive(Debug, Clone)]
pub struct DocRun {
    /// Index of the text in the input slice.
    pub index: usize,
    pub token_ids: Vec<u32>,
    /// Each token decoded on its own.
    pub tokens: Vec<String>,
    /// Activations of this text only, each `(seq, d)`.
    pub cache: ActivationCache,
    /// `(seq, vocab)` if [`RunOptions::keep_logits`].
    pub logits: Option<Tensor>,
    /// Cross-entropy of predicting token t+1 from the prefix up to t (length seq−1);
    /// `None` for encoders.
    pub token_loss: Option<Vec<f32>>,
}

/// The result of [`Model::run`]: one [`DocRun`] per input text, in input order.
#[derive(Debug, Clone)]
pub struct Run {
    pub docs: Vec<DocRun>,
}

impl Run {
    /// Mean token cross-entropy over all predicted tokens of all texts.
    pub fn mean_loss(&self) -> Option<f64> {
        let (sum, n) = self
            .docs
            .iter()
            .filter_map(|d| d.token_loss.as_ref())
            .flatten()
            .fold((0.0f64, 0usize), |(s, n), &l| (s + l as f64, n + 1));
        (n > 0).then(|| sum / n as f64)
    }
}

/// Arithmetic precision of a BERT-family encoder (decoders always compute in f32).
///
/// Why f64 is the default: BERT-family MLPs write a few outlier features of magnitude ~10²
/// (all-MiniLM-L6-v2: |x| ≈ 190), where HF's own float32 forward pass is up to 1.95e-4 away from
/// its float64 one; computing in f64 keeps every hidden state within 1e-4 of HF in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// f64 arithmetic: hidden states within 1e-6 of HF float64 (the default).
    #[default]
    F64,
    /// f32 arithmetic, as HF runs by default: about 1.5× faster on MiniLM (see BENCHMARKS.md),
    /// hidden states up to ~2e-4 from HF's at MiniLM's outlier features (HF's own float32 error
    /// there).
    F32,
}

impl Precision {
    pub(crate) fn dtype(self) -> DType {
        match self {
            Precision::F64 => DType::F64,
            Precision::F32 => DType::F32,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    /// `f64` or `f32` (any case).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f64" | "float64" => Ok(Precision::F64),
            "f32" | "float32" => Ok(Precision::F32),
            _ => Err(Error::InvalidInput(format!(
                "unknown precision '{s}' (use f64 or f32)"
            ))),
        }
    }
}

/// Options of [`Model::load_with`] and [`Model::from_dir_with`].
///
/// ```no_run
/// use replens::model::{LoadOptions, Model, Precision};
/// let opts = LoadOptions::default().encoder_precision(Precision::F32);
/// let model = Model::load_with("minilm", &opts)?;
/// assert_eq!(model.load_options().encoder_precision, Precision::F32);
/// # Ok::<(), replens::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    /// Arithmetic of BERT-family encoders (default [`Precision::F64`]); decoders (Llama, GPT-2,
    /// GPT-NeoX) always compute in f32 and ignore it.
    pub encoder_precision: Precision,
}

impl LoadOptions {
    /// Set [`LoadOptions::encoder_precision`].
    pub fn encoder_precision(mut self, precision: Precision) -> Self {
        self.encoder_precision = precision;
        self
    }
}

/// A loaded model: network, tokenizer, config, and where it came from.
pub struct Model {
    name: String,
    config: ArchConfig,
    net: Box<dyn Transformer>,
    tokenizer: Tokenizer,
    source: ModelSource,
    device: Device,
    options: LoadOptions,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("family", &self.config.family())
            .field("n_layers", &self.n_layers())
            .field("d_model", &self.d_model())
            .field("source", &self.source)
            .finish()
    }
}

fn read_tokenizer(path: &Path) -> Result<Tokenizer> {
    if !path.exists() {
        return Err(Error::Tokenizer(format!(
            "missing tokenizer: {} does not exist",
            path.display()
        )));
    }
    let mut tokenizer = Tokenizer::from_file(path)
        .map_err(|e| Error::Tokenizer(format!("cannot read {}: {e}", path.display())))?;
    // Some tokenizer.json files (e.g. sentence-transformers') pad and truncate everything to a
    // fixed length; HF applies those only when asked, and so do we (RunOptions::truncate).
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
    Ok(tokenizer)
}

/// Weight files of an HF directory: `model.safetensors`, sharded `*.safetensors`, or `pytorch_model.bin`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut safetensors: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    safetensors.sort();
    if !safetensors.is_empty() {
        return Ok(safetensors);
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.exists() {
        return Ok(vec![bin]);
    }
    Err(Error::InvalidInput(format!(
        "no weights in {}: expected model.safetensors, *.safetensors shards or pytorch_model.bin",
        dir.display()
    )))
}

/// Read all tensors of the weight files as f32, with the file named in any error.
fn read_weights(files: &[PathBuf], device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut all = HashMap::new();
    for file in files {
        let tensors = if file.extension().is_some_and(|e| e == "bin") {
            candle_core::pickle::read_all(file)
                .context(|| format!("cannot read PyTorch weights {}", file.display()))?
                .into_iter()
                .collect::<Vec<_>>()
        } else {
            candle_core::safetensors::load(file, device)
                .context(|| {
                    format!(
                        "cannot read safetensors {} (missing or corrupt?)",
                        file.display()
                    )
                })?
                .into_iter()
                .collect::<Vec<_>>()
        };
        for (name, t) in tensors {
            let t = t
                .to_dtype(DType::F32)
                .context(|| format!("tensor {name} in {}", file.display()))?;
            all.insert(name, t);
        }
    }
    Ok(all)
}

impl Model {
    /// Resolve `name` and load it: an existing path (HF directory or `.gguf` file), a packaged
    /// model (see [`source`]), the local HF cache, then the hub. The chosen source and why the
    /// others failed are in [`Model::source`].
    pub fn load(name: &str) -> Result<Model> {
        Self::load_with(name, &LoadOptions::default())
    }

    /// [`load`](Self::load) with [`LoadOptions`] (e.g. an f32 encoder).
    pub fn load_with(name: &str, options: &LoadOptions) -> Result<Model> {
        let resolved = source::resolve(name)?;
        let mut model = match &resolved.kind {
            SourceKind::Gguf => Self::from_gguf(&resolved.path)?,
            _ => Self::from_dir_with(&resolved.path, options)?,
        };
        model.name = name.to_string();
        model.source = resolved;
        Ok(model)
    }

    /// Load a Hugging Face layout directory (config.json, tokenizer.json, weights).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Model> {
        Self::from_dir_with(dir, &LoadOptions::default())
    }

    /// [`from_dir`](Self::from_dir) with [`LoadOptions`].
    pub fn from_dir_with(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<Model> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            });
        }
        let config = ArchConfig::from_file(&dir.join("config.json"))?;
        let tokenizer = read_tokenizer(&dir.join("tokenizer.json"))?;
        let device = Device::Cpu;
        let weights = read_weights(&weight_files(dir)?, &device)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::assemble_with(
            name,
            config,
            weights,
            tokenizer,
            ModelSource::local(dir),
            device,
            options,
        )
        .map_err(|e| match e {
            Error::Candle { context, source } => Error::Candle {
                context: format!("{context} (weights in {})", dir.display()),
                source,
            },
            Error::InvalidInput(m) => {
                Error::InvalidInput(format!("{m} (model in {})", dir.display()))
            }
            other => other,
        })
    }

    /// Load a GGUF file (Llama-family), dequantised to f32, with the tokenizer from its metadata.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let device = Device::Cpu;
        let loaded = gguf::load(path, &device)?;
        let name = path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::assemble(
            name,
            loaded.config,
            loaded.weights,
            loaded.tokenizer,
            ModelSource::gguf(path),
            device,
        )
    }

    /// Build from in-memory parts (used by loaders and by the untrained twin).
    pub fn assemble(
        name: String,
        config: ArchConfig,
        weights: HashMap<String, Tensor>,
        tokenizer: Tokenizer,
        source: ModelSource,
        device: Device,
    ) -> Result<Model> {
        Self::assemble_with(
            name,
            config,
            weights,
            tokenizer,
            source,
            device,
            &LoadOptions::default(),
        )
    }

    /// [`assemble`](Self::assemble) with [`LoadOptions`].
    pub fn assemble_with(
        name: String,
        config: ArchConfig,
        weights: HashMap<String, Tensor>,
        tokenizer: Tokenizer,
        source: ModelSource,
        device: Device,
        options: &LoadOptions,
    ) -> Result<Model> {
        let vb = VarBuilder::from_tensors(weights, DType::F32, &device);
        let net = config.build_with(vb, options)?;
        Ok(Model {
            name,
            config,
            net,
            tokenizer,
            source,
            device,
            options: *options,
        })
    }

    /// The untrained twin: same config, tokenizer and [`LoadOptions`], weights drawn by HF's init
    /// rules with `seed`.
    pub fn untrained(&self, seed: u64) -> Result<Model> {
        let specs = self.config.param_specs();
        let weights = init::random_weights(&specs, seed, &self.device)?;
        Self::assemble_with(
            format!("{} (untrained, seed {seed})", self.name),
            self.config.clone(),
            weights,
            self.tokenizer.clone(),
            ModelSource::untrained(&self.source, seed),
            self.device.clone(),
            &self.options,
        )
    }

    /// The options the model was loaded with.
    pub fn load_options(&self) -> &LoadOptions {
        &self.options
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn config(&self) -> &ArchConfig {
        &self.config
    }
    pub fn source(&self) -> &ModelSource {
        &self.source
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    pub fn n_layers(&self) -> usize {
        self.config.n_layers()
    }
    pub fn d_model(&self) -> usize {
        self.config.d_model()
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Token ids of each text (with the tokenizer's special tokens, as HF does by default).
    pub fn tokenize<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .enumerate()
            .map(|(index, t)| {
                let enc = self
                    .tokenizer
                    .encode(t.as_ref(), true)
                    .map_err(|e| Error::Tokenizer(format!("text {index}: {e}")))?;
                // Encoders turn "" into [CLS] [SEP]: only special tokens means no text.
                if enc.get_special_tokens_mask().iter().all(|&m| m == 1) {
                    return Err(Error::EmptyText { index });
                }
                Ok(enc.get_ids().to_vec())
            })
            .collect()
    }

    /// Run texts with default [`RunOptions`].
    pub fn run<S: AsRef<str>>(&self, texts: &[S], hooks: &HookSpec) -> Result<Run> {
        self.run_with(texts, hooks, &RunOptions::default())
    }

    /// Tokenize, batch with right padding, run, and split results per text.
    pub fn run_with<S: AsRef<str>>(
        &self,
        texts: &[S],
        hooks: &HookSpec,
        opts: &RunOptions,
    ) -> Result<Run> {
        let mut docs = Vec::with_capacity(texts.len());
        self.for_each_doc(texts, hooks, opts, |doc| {
            docs.push(doc);
            Ok(())
        })?;
        Ok(Run { docs })
    }

    /// Streaming form of [`run_with`](Self::run_with): `f` sees each text's results as soon as its
    /// batch is done, so a corpus never has to be held in memory.
    pub fn for_each_doc<S: AsRef<str>>(
        &self,
        texts: &[S],
        hooks: &HookSpec,
        opts: &RunOptions,
        f: impl FnMut(DocRun) -> Result<()>,
    ) -> Result<()> {
        let ids = self.prepare_ids(&self.tokenize(texts)?, opts.truncate)?;
        self.for_each_doc_ids(&ids, hooks, opts, f)
    }

    /// Check lengths (empty text, context window) and truncate when asked.
    pub fn prepare_ids(&self, ids: &[Vec<u32>], truncate: bool) -> Result<Vec<Vec<u32>>> {
        let max = self.config.max_positions();
        ids.iter()
            .enumerate()
            .map(|(index, ids)| {
                if ids.is_empty() {
                    return Err(Error::EmptyText { index });
                }
                if ids.len() > max {
                    if !truncate {
                        return Err(Error::ContextTooLong {
                            index,
                            len: ids.len(),
                            max,
                        });
                    }
                    return Ok(ids[..max].to_vec());
                }
                Ok(ids.clone())
            })
            .collect()
    }

    /// Run pre-tokenized ids (already checked by [`prepare_ids`](Self::prepare_ids)).
    pub fn for_each_doc_ids(
        &self,
        ids: &[Vec<u32>],
        hooks: &HookSpec,
        opts: &RunOptions,
        mut f: impl FnMut(DocRun) -> Result<()>,
    ) -> Result<()> {
        let hooks = &self.check_hooks(hooks)?;
        if opts.batch_size == 0 {
            return Err(Error::InvalidInput("batch_size must be at least 1".into()));
        }
        let mut progress = Progress::new(
            &format!("replens: {} texts", self.name),
            ids.len(),
            opts.progress && ids.len() > opts.batch_size,
        );
        for (batch_no, batch) in ids.chunks(opts.batch_size).enumerate() {
            let first = batch_no * opts.batch_size;
            let (input, mask) = pad_batch(batch, &self.device)?;
            let out = self.net.forward(&input, &mask, hooks)?;
            let losses = match &out.logits {
                Some(logits) => Some(token_losses(logits, &input)?),
                None => None,
            };
            for (i, doc_ids) in batch.iter().enumerate() {
                let len = doc_ids.len();
                let mut cache = ActivationCache::new();
                for (point, t) in out.cache.iter() {
                    cache.insert(point, t.i((i, ..len))?.contiguous()?);
                }
                let logits = match (&out.logits, opts.keep_logits) {
                    (Some(l), true) => Some(l.i((i, ..len))?.contiguous()?),
                    _ => None,
                };
                let token_loss = match &losses {
                    Some(l) => Some(l.i((i, ..len - 1))?.to_vec1::<f32>()?),
                    None => None,
                };
                let tokens = doc_ids
                    .iter()
                    .map(|&id| self.tokenizer.decode(&[id], false).unwrap_or_default())
                    .collect();
                f(DocRun {
                    index: first + i,
                    token_ids: doc_ids.clone(),
                    tokens,
                    cache,
                    logits,
                    token_loss,
                })?;
            }
            progress.inc(batch.len());
        }
        progress.finish();
        Ok(())
    }

    /// One raw forward pass over a padded batch (for code that manages batches itself).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        hooks: &HookSpec,
    ) -> Result<ForwardOutput> {
        let hooks = self.check_hooks(hooks)?;
        self.net.forward(input_ids, attention_mask, &hooks)
    }

    /// Continue a forward pass from the residual stream entering block `start` (see
    /// [`Transformer::forward_from`]): e.g. `blocks.{l}.hook_resid_post` of another model mapped
    /// to this one's width, with `start = l + 1`. Logits are `(batch, seq, vocab)`.
    pub fn forward_from(
        &self,
        start: usize,
        resid: &Tensor,
        attention_mask: &Tensor,
        hooks: &HookSpec,
    ) -> Result<ForwardOutput> {
        let hooks = self.check_hooks(hooks)?;
        self.net.forward_from(start, resid, attention_mask, &hooks)
    }

    /// Validate `hooks` against this model; drop the implied `ln_final` of `HookSpec::all()` for
    /// encoders (they have no final norm), but reject it when named explicitly.
    fn check_hooks(&self, hooks: &HookSpec) -> Result<HookSpec> {
        hooks.validate(self.n_layers())?;
        if self.config.is_encoder() {
            if hooks.names_explicitly(HookPoint::LnFinal) {
                return Err(Error::UnknownHook {
                    name: HookPoint::LnFinal.to_string(),
                    reason: format!(
                        "BERT-family encoders have no final norm; use blocks.{}.hook_resid_post",
                        self.n_layers().saturating_sub(1)
                    ),
                });
            }
            return Ok(hooks.without_implied_final_norm());
        }
        Ok(hooks.clone())
    }
}

/// Right-pad token ids to the longest sequence; returns `(ids, mask)` both `(batch, seq)` u32.
pub fn pad_batch(batch: &[Vec<u32>], device: &Device) -> Result<(Tensor, Tensor)> {
    let seq = batch.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(batch.len() * seq);
    let mut mask = Vec::with_capacity(batch.len() * seq);
    for doc in batch {
        ids.extend_from_slice(doc);
        ids.extend(std::iter::repeat_n(0u32, seq - doc.len()));
        mask.extend(std::iter::repeat_n(1u32, doc.len()));
        mask.extend(std::iter::repeat_n(0u32, seq - doc.len()));
    }
    Ok((
        Tensor::from_vec(ids, (batch.len(), seq), device)?,
        Tensor::from_vec(mask, (batch.len(), seq), device)?,
    ))
}

/// Per-token next-token cross-entropy: `(batch, seq-1)`, entry t = −log p(x_{t+1} | x_{≤t}).
pub fn token_losses(logits: &Tensor, input_ids: &Tensor) -> Result<Tensor> {
    let (_, seq, _) = logits.dims3()?;
    if seq < 2 {
        let b = logits.dim(0)?;
        return Ok(Tensor::zeros((b, 0), DType::F32, logits.device())?);
    }
    let log_probs = candle_nn::ops::log_softmax(&logits.narrow(1, 0, seq - 1)?, D::Minus1)?;
    let targets = input_ids
        .narrow(1, 1, seq - 1)?
        .contiguous()?
        .unsqueeze(2)?;
    Ok(log_probs.gather(&targets, 2)?.squeeze(2)?.neg()?)
}
