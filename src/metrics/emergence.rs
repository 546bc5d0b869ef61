//! Information Emergence (Chen et al., *Quantifying Emergence in Large Language Models*,
//! ACL 2025, arXiv 2405.12617; official code Zodiark-ch/Emergence-of-LLMs).
//!
//! For block l with input x = `blocks.{l}.hook_resid_pre` and output y =
//! `blocks.{l}.hook_resid_post` at the same position,
//!
//! IE(l) = MI(h^macro_{l+1}; h^macro_l) − (1/T) Σ_t MI(h^micro_{t,l+1}; h^micro_{t,l})
//!
//! * **macro** pairs: the state at the *last token of the full sequence*, one pair per
//!   sequence;
//! * **micro** pairs: token t *fed to the model alone*, one pair per sequence for each
//!   position t. The micro MI of position t is estimated from the micro pairs of position t
//!   pooled over sequences (the distribution over sequences of "what token t alone does in
//!   block l"), then averaged over t = 0..T−1 ([`MicroPooling::PerPosition`], the paper's
//!   definition). [`MicroPooling::Pooled`] instead estimates one MI from all positions' pairs
//!   together — cheaper (one estimate per layer instead of T) and usable when sequences have
//!   different lengths, but a different quantity (MI of a mixture, not a mean of MIs).
//!
//! MI is estimated with [`crate::train::mine`] (MINE with bias correction, or InfoNCE), always
//! on held-out pairs with a CI, in bits.
//!
//! **Special tokens.** [`Model::tokenize`] adds the tokenizer's special tokens (e.g. a BOS
//! for Llama-family GGUF files whose metadata asks for it, `[CLS]`/`[SEP]` for BERT). Texts are
//! therefore tokenized *without* special tokens into "content" tokens, and every forward input
//! is `prefix + content + suffix`, with prefix/suffix the special tokens the tokenizer would
//! add ([`special_affixes`]). A micro input is `prefix + [token t] + suffix` and its state is
//! read at the position of token t; the macro state is read at the last content token. So a
//! model trained with a BOS sees the single token after its BOS, as it would at the start of
//! any text, and the macro/micro states are never those of a special token.
//!
//! ICL data (§3 of `STUDIES.md`): k-shot prompts "France: Paris\nItaly: Rome\n…\nSpain:" built
//! from entity lists in `assets/icl/*.json` ([`IclTask`], [`icl_prompts`]); natural text:
//! the first n tokens of corpus texts ([`natural_sequences`]).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::{IndexOp, Tensor};
use polars::prelude::{Column, DataFrame};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::{bail, Error, Result};
use crate::hooks::{HookPoint, HookSpec};
use crate::model::{Model, RunOptions};
use crate::train::mine::{infonce, mine, MiConfig, MiEstimate};

/// Which MI estimator [`information_emergence`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MiEstimator {
    /// [`crate::train::mine::mine`]: Donsker–Varadhan with the moving-average correction
    /// (the paper's estimator family).
    Mine,
    /// [`crate::train::mine::infonce`]: InfoNCE, a lower bound capped at log2(batch) bits.
    InfoNce,
}

/// How micro MI is aggregated over positions (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MicroPooling {
    /// One estimate per position t = 0..T−1 (T = the shortest sequence, optionally capped),
    /// each over that position's pairs from all sequences; micro MI = their mean.
    PerPosition {
        /// Use at most this many positions (from the start); `None` = all.
        max_positions: Option<usize>,
    },
    /// One estimate over the micro pairs of all positions of all sequences.
    Pooled,
}

/// Settings of [`information_emergence`].
#[derive(Debug, Clone, PartialEq)]
pub struct IeConfig {
    /// MI estimator.
    pub estimator: MiEstimator,
    /// Estimator settings (each estimate derives its seed from `mi.seed`, the layer and the
    /// position, so results do not depend on the order of layers).
    pub mi: MiConfig,
    /// Micro aggregation over positions.
    pub micro: MicroPooling,
    /// Texts per forward pass.
    pub forward_batch: usize,
}

impl Default for IeConfig {
    fn default() -> Self {
        IeConfig {
            estimator: MiEstimator::Mine,
            mi: MiConfig::default(),
            micro: MicroPooling::PerPosition {
                max_positions: None,
            },
            forward_batch: 16,
        }
    }
}

impl IeConfig {
    /// MI estimator.
    pub fn estimator(mut self, e: MiEstimator) -> Self {
        self.estimator = e;
        self
    }
    /// Estimator settings.
    pub fn mi(mut self, mi: MiConfig) -> Self {
        self.mi = mi;
        self
    }
    /// Micro aggregation.
    pub fn micro(mut self, m: MicroPooling) -> Self {
        self.micro = m;
        self
    }
    /// Texts per forward pass.
    pub fn forward_batch(mut self, n: usize) -> Self {
        self.forward_batch = n;
        self
    }
}

/// Paired states (x = block input, y = block output), `(n, d)` each.
#[derive(Debug, Clone)]
pub struct Pairs {
    pub x: Tensor,
    pub y: Tensor,
}

/// Special token ids the tokenizer adds before and after a text (e.g. `([BOS], [])` for a
/// Llama GGUF that asks for BOS, `([CLS], [SEP])` for BERT, `([], [])` for GPT-2).
pub fn special_affixes(model: &Model) -> Result<(Vec<u32>, Vec<u32>)> {
    let enc = model
        .tokenizer()
        .encode("a", true)
        .map_err(|e| Error::Tokenizer(format!("special_affixes: {e}")))?;
    let (ids, mask) = (enc.get_ids(), enc.get_special_tokens_mask());
    let first = mask.iter().position(|&m| m == 0).ok_or_else(|| {
        Error::InvalidInput(
            "special_affixes: the tokenizer turned \"a\" into special tokens only".into(),
        )
    })?;
    let last = mask.iter().rposition(|&m| m == 0).unwrap_or(first);
    Ok((ids[..first].to_vec(), ids[last + 1..].to_vec()))
}

/// Token ids of each text without special tokens. Errors name the empty text.
pub fn content_ids<S: AsRef<str>>(model: &Model, texts: &[S]) -> Result<Vec<Vec<u32>>> {
    texts
        .iter()
        .enumerate()
        .map(|(index, t)| {
            let enc = model
                .tokenizer()
                .encode(t.as_ref(), false)
                .map_err(|e| Error::Tokenizer(format!("text {index}: {e}")))?;
            if enc.get_ids().is_empty() {
                return Err(Error::EmptyText { index });
            }
            Ok(enc.get_ids().to_vec())
        })
        .collect()
}

fn check_layers(model: &Model, layers: &[usize]) -> Result<()> {
    if layers.is_empty() {
        bail!("information emergence: no layers given");
    }
    if let Some(&l) = layers.iter().find(|&&l| l >= model.n_layers()) {
        bail!(
            "information emergence: layer {l} does not exist; {} has {} blocks (0..={})",
            model.name(),
            model.n_layers(),
            model.n_layers().saturating_sub(1)
        );
    }
    Ok(())
}

fn hook_spec(layers: &[usize]) -> HookSpec {
    HookSpec::points(
        layers
            .iter()
            .flat_map(|&l| [HookPoint::ResidPre(l), HookPoint::ResidPost(l)]),
    )
    .without_logits()
}

/// Run `inputs` and collect, per layer, the (resid_pre, resid_post) rows at `positions[i]`
/// of input i.
fn states_at(
    model: &Model,
    inputs: &[Vec<u32>],
    positions: &[usize],
    layers: &[usize],
    batch: usize,
) -> Result<BTreeMap<usize, Pairs>> {
    let ids = model.prepare_ids(inputs, false)?;
    let opts = RunOptions::default().batch_size(batch).progress(false);
    let mut rows: BTreeMap<usize, (Vec<Tensor>, Vec<Tensor>)> = BTreeMap::new();
    model.for_each_doc_ids(&ids, &hook_spec(layers), &opts, |doc| {
        let pos = positions[doc.index];
        for &l in layers {
            let e = rows.entry(l).or_default();
            e.0.push(doc.cache.get(HookPoint::ResidPre(l))?.i(pos)?);
            e.1.push(doc.cache.get(HookPoint::ResidPost(l))?.i(pos)?);
        }
        Ok(())
    })?;
    rows.into_iter()
        .map(|(l, (x, y))| {
            Ok((
                l,
                Pairs {
                    x: Tensor::stack(&x, 0)?,
                    y: Tensor::stack(&y, 0)?,
                },
            ))
        })
        .collect()
}

fn check_sequences(what: &str, seqs: &[Vec<u32>]) -> Result<()> {
    if seqs.is_empty() {
        bail!("{what}: no sequences given");
    }
    if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
        return Err(Error::EmptyText { index: i });
    }
    Ok(())
}

/// Macro samples: for each layer, one (resid_pre_l, resid_post_l) pair per sequence, taken at
/// the last content token of the full sequence `prefix + content + suffix`. `content` are
/// token ids without special tokens ([`content_ids`]). Returns `(n_sequences, d)` pairs.
pub fn macro_samples(
    model: &Model,
    content: &[Vec<u32>],
    layers: &[usize],
) -> Result<BTreeMap<usize, Pairs>> {
    macro_samples_batched(model, content, layers, 16)
}

fn macro_samples_batched(
    model: &Model,
    content: &[Vec<u32>],
    layers: &[usize],
    batch: usize,
) -> Result<BTreeMap<usize, Pairs>> {
    check_sequences("macro_samples", content)?;
    check_layers(model, layers)?;
    let (pre, suf) = special_affixes(model)?;
    let inputs: Vec<Vec<u32>> = content
        .iter()
        .map(|c| [pre.as_slice(), c, suf.as_slice()].concat())
        .collect();
    let positions: Vec<usize> = content.iter().map(|c| pre.len() + c.len() - 1).collect();
    states_at(model, &inputs, &positions, layers, batch)
}

/// Micro samples: every token fed alone (`prefix + [t] + suffix`, state read at t).
/// `per_position[l][t]` holds position t's pairs over all sequences at least t+1 tokens long;
/// each distinct token id is run once.
#[derive(Debug, Clone)]
pub struct MicroSamples {
    /// layer → position → pairs `(n_t, d)`.
    pub per_position: BTreeMap<usize, Vec<Pairs>>,
    /// Number of distinct tokens run.
    pub distinct_tokens: usize,
}

/// Build [`MicroSamples`] for `content` sequences (ids without special tokens).
pub fn micro_samples(
    model: &Model,
    content: &[Vec<u32>],
    layers: &[usize],
) -> Result<MicroSamples> {
    micro_samples_batched(model, content, layers, 64)
}

fn micro_samples_batched(
    model: &Model,
    content: &[Vec<u32>],
    layers: &[usize],
    batch: usize,
) -> Result<MicroSamples> {
    check_sequences("micro_samples", content)?;
    check_layers(model, layers)?;
    let (pre, suf) = special_affixes(model)?;
    let mut distinct: Vec<u32> = content.iter().flatten().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    let inputs: Vec<Vec<u32>> = distinct
        .iter()
        .map(|&t| [pre.as_slice(), &[t], suf.as_slice()].concat())
        .collect();
    let positions = vec![pre.len(); inputs.len()];
    let states = states_at(model, &inputs, &positions, layers, batch)?;
    let row_of: HashMap<u32, u32> = distinct
        .iter()
        .enumerate()
        .map(|(i, &t)| (t, i as u32))
        .collect();
    let max_len = content.iter().map(Vec::len).max().unwrap_or(0);
    let mut per_position = BTreeMap::new();
    for (l, p) in states {
        let mut by_t = Vec::with_capacity(max_len);
        for t in 0..max_len {
            let rows: Vec<u32> = content
                .iter()
                .filter_map(|c| c.get(t).map(|id| row_of[id]))
                .collect();
            let idx = Tensor::from_vec(rows.clone(), rows.len(), p.x.device())?;
            by_t.push(Pairs {
                x: p.x.index_select(&idx, 0)?,
                y: p.y.index_select(&idx, 0)?,
            });
        }
        per_position.insert(l, by_t);
    }
    Ok(MicroSamples {
        per_position,
        distinct_tokens: distinct.len(),
    })
}

/// One layer's result.
#[derive(Debug, Clone)]
pub struct LayerIe {
    /// Block index l.
    pub layer: usize,
    /// MI(resid_post_l; resid_pre_l) of the macro pairs.
    pub macro_mi: MiEstimate,
    /// Micro estimates: (position t, estimate); with [`MicroPooling::Pooled`] one entry with
    /// position `usize::MAX`.
    pub micro_mi: Vec<(usize, MiEstimate)>,
    /// Mean of the micro estimates, bits.
    pub micro_bits: f64,
    /// IE(l) = macro − mean micro, bits.
    pub ie_bits: f64,
    /// Approximate CI of IE(l): ie ± sqrt(h_macro² + Σ_t h_t² / T²) where h are the CI
    /// half-widths of the estimates (a normal approximation treating estimates as independent).
    pub ie_lower: f64,
    pub ie_upper: f64,
    /// Wall time of this layer's MI estimates.
    pub seconds: f64,
}

/// Result of [`information_emergence`].
#[derive(Debug, Clone)]
pub struct IeResult {
    /// Model name.
    pub model: String,
    /// One entry per requested layer, in the order given.
    pub layers: Vec<LayerIe>,
    /// Sequences used.
    pub n_sequences: usize,
    /// Wall time of the forward passes (macro and micro).
    pub forward_seconds: f64,
}

impl IeResult {
    /// One row per layer: `layer`, `macro_bits`, `macro_lower`, `macro_upper`, `micro_bits`,
    /// `ie_bits`, `ie_lower`, `ie_upper`, `macro_steps`, `clipped_steps` (all estimates of the
    /// layer), `seconds`.
    pub fn to_frame(&self) -> Result<DataFrame> {
        let l = &self.layers;
        let f = |g: &dyn Fn(&LayerIe) -> f64| l.iter().map(g).collect::<Vec<f64>>();
        let layer: Vec<u32> = l.iter().map(|r| r.layer as u32).collect();
        let steps: Vec<u32> = l.iter().map(|r| r.macro_mi.steps as u32).collect();
        let clipped: Vec<u32> = l
            .iter()
            .map(|r| {
                (r.macro_mi.clipped_steps
                    + r.micro_mi
                        .iter()
                        .map(|(_, e)| e.clipped_steps)
                        .sum::<usize>()) as u32
            })
            .collect();
        Ok(DataFrame::new_infer_height(vec![
            Column::new("layer".into(), layer),
            Column::new("macro_bits".into(), f(&|r| r.macro_mi.bits.estimate)),
            Column::new("macro_lower".into(), f(&|r| r.macro_mi.bits.lower)),
            Column::new("macro_upper".into(), f(&|r| r.macro_mi.bits.upper)),
            Column::new("micro_bits".into(), f(&|r| r.micro_bits)),
            Column::new("ie_bits".into(), f(&|r| r.ie_bits)),
            Column::new("ie_lower".into(), f(&|r| r.ie_lower)),
            Column::new("ie_upper".into(), f(&|r| r.ie_upper)),
            Column::new("macro_steps".into(), steps),
            Column::new("clipped_steps".into(), clipped),
            Column::new("seconds".into(), f(&|r| r.seconds)),
        ])?)
    }

    /// Mean IE over the layers, bits.
    pub fn mean_ie(&self) -> f64 {
        self.layers.iter().map(|r| r.ie_bits).sum::<f64>() / self.layers.len() as f64
    }
}

impl std::fmt::Display for IeResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "Information emergence of {} over {} sequences (forward {:.1} s)",
            self.model, self.n_sequences, self.forward_seconds
        )?;
        for r in &self.layers {
            writeln!(
                f,
                "  layer {:>2}: IE = {:+.3} bits [{:+.3}, {:+.3}]  macro {:.3}, micro {:.3}  ({:.1} s)",
                r.layer, r.ie_bits, r.ie_lower, r.ie_upper, r.macro_mi.bits.estimate, r.micro_bits, r.seconds
            )?;
        }
        Ok(())
    }
}

fn estimate(cfg: &IeConfig, p: &Pairs, seed: u64) -> Result<MiEstimate> {
    let mi = cfg.mi.clone().seed(seed);
    match cfg.estimator {
        MiEstimator::Mine => mine(&p.x, &p.y, &mi),
        MiEstimator::InfoNce => infonce(&p.x, &p.y, &mi),
    }
}

/// IE(l) for each of `layers`, over `texts` (see the module docs for the definition, the
/// special-token handling and the micro aggregation).
///
/// Each text is one sequence; MI estimates need enough sequences for the estimator's
/// splits (with MINE, ≥ batch_size / (1 − holdout) of them), or the estimator's error says
/// how many are missing.
///
/// ```no_run
/// use replens::prelude::*;
/// use replens::metrics::emergence::{icl_prompts, information_emergence, IclTask, IeConfig};
/// let model = Model::load("default")?;
/// let prompts = icl_prompts(&IclTask::load("country_capital")?, 4, 200, 0)?;
/// let ie = information_emergence(&model, &prompts, &[0, 15], &IeConfig::default())?;
/// println!("{ie}");
/// # Ok::<(), replens::Error>(())
/// ```
pub fn information_emergence<S: AsRef<str>>(
    model: &Model,
    texts: &[S],
    layers: &[usize],
    cfg: &IeConfig,
) -> Result<IeResult> {
    let content = content_ids(model, texts)?;
    information_emergence_ids(model, &content, layers, cfg)
}

/// [`information_emergence`] on token ids without special tokens (e.g. from
/// [`natural_sequences`]).
pub fn information_emergence_ids(
    model: &Model,
    content: &[Vec<u32>],
    layers: &[usize],
    cfg: &IeConfig,
) -> Result<IeResult> {
    check_sequences("information_emergence", content)?;
    check_layers(model, layers)?;
    if cfg.forward_batch == 0 {
        bail!("information_emergence: forward_batch must be ≥ 1");
    }
    let t0 = Instant::now();
    let macro_pairs = macro_samples_batched(model, content, layers, cfg.forward_batch)?;
    // One-token inputs are cheap, so they go in bigger batches.
    let micro = micro_samples_batched(model, content, layers, 4 * cfg.forward_batch)?;
    let forward_seconds = t0.elapsed().as_secs_f64();
    let min_len = content.iter().map(Vec::len).min().unwrap_or(0);

    let mut out = Vec::with_capacity(layers.len());
    for &l in layers {
        let t = Instant::now();
        let seed = |pos: u64| cfg.mi.seed ^ ((l as u64 + 1) << 32) ^ pos.wrapping_mul(0x9e37_79b9);
        let macro_mi = estimate(cfg, &macro_pairs[&l], seed(0))?;
        let per_t = &micro.per_position[&l];
        let micro_mi: Vec<(usize, MiEstimate)> = match cfg.micro {
            MicroPooling::PerPosition { max_positions } => {
                let n_pos = max_positions.map_or(min_len, |m| m.min(min_len));
                if n_pos == 0 {
                    bail!("information_emergence: max_positions must be ≥ 1");
                }
                (0..n_pos)
                    .map(|t| Ok((t, estimate(cfg, &per_t[t], seed(t as u64 + 1))?)))
                    .collect::<Result<_>>()?
            }
            MicroPooling::Pooled => {
                let x: Vec<&Tensor> = per_t.iter().map(|p| &p.x).collect();
                let y: Vec<&Tensor> = per_t.iter().map(|p| &p.y).collect();
                let pooled = Pairs {
                    x: Tensor::cat(&x, 0)?,
                    y: Tensor::cat(&y, 0)?,
                };
                vec![(usize::MAX, estimate(cfg, &pooled, seed(u32::MAX as u64))?)]
            }
        };
        let k = micro_mi.len() as f64;
        let micro_bits = micro_mi.iter().map(|(_, e)| e.value()).sum::<f64>() / k;
        let ie_bits = macro_mi.value() - micro_bits;
        let half = |e: &MiEstimate| (e.bits.upper - e.bits.lower) / 2.0;
        let h_micro = micro_mi
            .iter()
            .map(|(_, e)| half(e).powi(2))
            .sum::<f64>()
            .sqrt()
            / k;
        let h = (half(&macro_mi).powi(2) + h_micro.powi(2)).sqrt();
        out.push(LayerIe {
            layer: l,
            macro_mi,
            micro_mi,
            micro_bits,
            ie_bits,
            ie_lower: ie_bits - h,
            ie_upper: ie_bits + h,
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    Ok(IeResult {
        model: model.name().to_string(),
        layers: out,
        n_sequences: content.len(),
        forward_seconds,
    })
}

/// An in-context-learning task: (query, answer) pairs written by us, real facts.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct IclTask {
    /// Short name (`country_capital`, `animal`, `colour`).
    pub name: String,
    /// What the answer is.
    pub description: String,
    /// (query, answer) pairs.
    pub pairs: Vec<(String, String)>,
}

const BUILTIN_TASKS: [(&str, &str); 3] = [
    (
        "country_capital",
        include_str!("../../assets/icl/country_capital.json"),
    ),
    ("animal", include_str!("../../assets/icl/animal.json")),
    ("colour", include_str!("../../assets/icl/colour.json")),
];

impl IclTask {
    /// Names of the built-in tasks (`assets/icl/*.json`, compiled into the crate).
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN_TASKS.iter().map(|(n, _)| *n).collect()
    }

    /// A built-in task by name: `country_capital` (25 countries → capital), `animal`
    /// (16 animals → sound), `colour` (15 colours → object). These mirror the sizes of the
    /// paper's Country / Animal / Color tasks.
    ///
    /// ```
    /// use replens::metrics::emergence::IclTask;
    /// let t = IclTask::load("country_capital")?;
    /// assert_eq!(t.pairs.len(), 25);
    /// assert_eq!(t.pairs[0], ("France".to_string(), "Paris".to_string()));
    /// # Ok::<(), replens::Error>(())
    /// ```
    pub fn load(name: &str) -> Result<IclTask> {
        let (_, text) = BUILTIN_TASKS
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "IclTask::load: unknown task '{name}' (built-in: {})",
                    Self::builtin_names().join(", ")
                ))
            })?;
        Self::from_json_str(name, text)
    }

    /// Read a task from a JSON file `{"name", "description", "pairs": [[query, answer], ..]}`.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<IclTask> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&path.display().to_string(), &text)
    }

    fn from_json_str(origin: &str, text: &str) -> Result<IclTask> {
        let task: IclTask = serde_json::from_str(text)
            .map_err(|e| Error::InvalidInput(format!("ICL task {origin}: invalid JSON: {e}")))?;
        if task.pairs.len() < 2 {
            bail!(
                "ICL task {origin}: needs at least 2 pairs, has {}",
                task.pairs.len()
            );
        }
        if let Some(i) = task
            .pairs
            .iter()
            .position(|(q, a)| q.trim().is_empty() || a.trim().is_empty())
        {
            bail!("ICL task {origin}: pair {i} has an empty query or answer");
        }
        Ok(task)
    }
}

/// `n_prompts` k-shot prompts "q₁: a₁\nq₂: a₂\n…\nq:" with `shots` demonstrations each. The
/// query cycles through the task's pairs in a seeded random order; the demonstrations are
/// `shots` other pairs drawn at random (seeded), so the query's own answer never appears.
///
/// ```
/// use replens::metrics::emergence::{icl_prompts, IclTask};
/// let task = IclTask::load("country_capital")?;
/// let p = icl_prompts(&task, 2, 3, 0)?;
/// assert_eq!(p.len(), 3);
/// assert_eq!(p[0].lines().count(), 3);
/// assert!(p[0].ends_with(':') && p[0].lines().take(2).all(|l| l.contains(": ")));
/// # Ok::<(), replens::Error>(())
/// ```
pub fn icl_prompts(
    task: &IclTask,
    shots: usize,
    n_prompts: usize,
    seed: u64,
) -> Result<Vec<String>> {
    if shots >= task.pairs.len() {
        bail!(
            "icl_prompts: {shots} shots need more than {shots} pairs; task '{}' has {}",
            task.name,
            task.pairs.len()
        );
    }
    if n_prompts == 0 {
        bail!("icl_prompts: n_prompts must be ≥ 1");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..task.pairs.len()).collect();
    order.shuffle(&mut rng);
    Ok((0..n_prompts)
        .map(|i| {
            let q = order[i % order.len()];
            let others: Vec<usize> = (0..task.pairs.len()).filter(|&j| j != q).collect();
            let mut p = String::new();
            for &j in others.choose_multiple(&mut rng, shots) {
                let (a, b) = &task.pairs[j];
                p.push_str(&format!("{a}: {b}\n"));
            }
            p.push_str(&task.pairs[q].0);
            p.push(':');
            p
        })
        .collect())
}

/// Natural sequences: the first `n_tokens` content tokens (no special tokens) of each text
/// that has at least that many, up to `max_sequences` of them (the paper uses 8-token
/// sequences). Errors when fewer texts are long enough.
pub fn natural_sequences<S: AsRef<str>>(
    model: &Model,
    texts: &[S],
    n_tokens: usize,
    max_sequences: usize,
) -> Result<Vec<Vec<u32>>> {
    if n_tokens == 0 || max_sequences == 0 {
        bail!("natural_sequences: n_tokens and max_sequences must be ≥ 1");
    }
    let mut out = Vec::with_capacity(max_sequences);
    for (index, t) in texts.iter().enumerate() {
        if out.len() == max_sequences {
            break;
        }
        let enc = model
            .tokenizer()
            .encode(t.as_ref(), false)
            .map_err(|e| Error::Tokenizer(format!("text {index}: {e}")))?;
        if enc.get_ids().len() >= n_tokens {
            out.push(enc.get_ids()[..n_tokens].to_vec());
        }
    }
    if out.is_empty() {
        bail!(
            "natural_sequences: none of the {} texts has {n_tokens} tokens",
            texts.len()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_tasks_load_with_paper_sizes() {
        let sizes: Vec<usize> = IclTask::builtin_names()
            .iter()
            .map(|n| IclTask::load(n).unwrap().pairs.len())
            .collect();
        assert_eq!(sizes, vec![25, 16, 15]);
        assert!(IclTask::load("nope").is_err());
    }

    #[test]
    fn prompts_never_leak_the_answer() {
        let task = IclTask::load("animal").unwrap();
        for p in icl_prompts(&task, 5, 40, 9).unwrap() {
            let query = p.lines().last().unwrap().trim_end_matches(':');
            let answer = &task.pairs.iter().find(|(q, _)| q == query).unwrap().1;
            assert!(!p.lines().any(|l| l == format!("{query}: {answer}")));
            assert_eq!(p.lines().count(), 6);
        }
        assert!(icl_prompts(&task, 16, 1, 0).is_err());
    }
}
