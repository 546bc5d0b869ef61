//! Study 1: Diff-eRank of a trained model against its untrained twin, with ΔL.
//!
//! Wei, Tan, Li, Wang & Huang, *Diff-eRank: A Novel Rank-Based Metric for Evaluating Large
//! Language Models*, NeurIPS 2024 (arXiv 2401.17139). For every sentence x of a corpus D the
//! representation R is the `N × d` matrix of last-layer hidden states (one row per token);
//! its matrix entropy H is computed by [`crate::metrics::erank`](mod@crate::metrics::erank) and
//!
//! ```text
//!   Diff-eRank(D) = exp(mean_x H(M0, x)) − exp(mean_x H(M1, x))
//!   ΔL(D)         = L(M0) − L(M1)
//! ```
//!
//! with M1 the trained model, M0 the same architecture with Hugging Face's random
//! initialisation ([`Model::untrained`], fixed seed), and L the mean next-token cross-entropy.
//!
//! # Choices (and why)
//! * **Which hidden states.** Decoders: `ln_final.hook_normalized`, the last block output
//!   after the final norm — what the paper uses for OPT (HF's `hidden_states[-1]` is taken
//!   after `final_layer_norm`). Encoders (BERT family, no final norm): the last
//!   `blocks.{n-1}.hook_resid_post`. Special tokens the tokenizer adds are kept, as HF's
//!   tokenizer call in the official code keeps them.
//! * **Truncation.** Token sequences are cut to [`DiffErankConfig::max_tokens`] (2048, as the
//!   paper) and to the model's context window.
//! * **Skipping.** Sentences with N < 2 tokens are skipped before the forward pass (the paper
//!   skips them); a sentence whose rows are all identical under either model (nothing left
//!   after centring) is skipped too. Both are counted. The remaining sentences are *paired*:
//!   each contributes H(M0, x) and H(M1, x), so the bootstrap resamples sentences jointly.
//! * **ΔL.** L of a model is the mean over the used sentences of each sentence's mean token
//!   loss (every sentence weighs the same, as in the eRank average); CI by the same paired
//!   bootstrap. Encoders have no LM head: ΔL is `None`.
//! * **Streaming.** Each model runs over the corpus with [`Model::for_each_doc_ids`]; only
//!   scalars (entropies, losses) are kept per sentence, never the activations.
//! * **Per-layer curves** ([`Layers::All`]): for every block l, the dataset eRank
//!   exp(mean_x H at `blocks.l.hook_resid_post`) of both models over the same used sentences,
//!   with a paired bootstrap CI of their difference.

use candle_core::Tensor;
use polars::prelude::{Column, DataFrame};

use crate::display::{escape_html, table_html, DisplayHtml, Html};
use crate::error::{Error, Result};
use crate::hooks::{HookPoint, HookSpec};
use crate::metrics::erank::{diff_erank, erank_or_skip, ErankOptions, SentenceErank};
use crate::metrics::stats::{mean, paired_bootstrap_ci, Ci};
use crate::model::{Model, RunOptions};

/// Which layers to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layers {
    /// Only the last-layer representation (the paper's Diff-eRank).
    #[default]
    Last,
    /// Also every block's `hook_resid_post`, for per-layer eRank curves.
    All,
}

impl std::str::FromStr for Layers {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "last" => Ok(Layers::Last),
            "all" => Ok(Layers::All),
            other => Err(Error::InvalidInput(format!(
                "unknown layers '{other}': expected 'last' or 'all'"
            ))),
        }
    }
}

/// Settings of [`run_diff_erank`]. Build with the chained setters from `default()`.
///
/// ```
/// use replens::studies::{DiffErankConfig, Layers};
/// let cfg = DiffErankConfig::default().max_texts(64).layers(Layers::All).seed(1);
/// assert_eq!(cfg.max_tokens, 2048);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DiffErankConfig {
    /// Use at most this many texts (the first ones); `None` = all.
    pub max_texts: Option<usize>,
    /// Truncate every text to this many tokens (the paper: 2048).
    pub max_tokens: usize,
    /// Seed of the untrained twin's random initialisation.
    pub seed: u64,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Bootstrap resamples for the confidence intervals.
    pub n_resamples: usize,
    /// Nominal coverage of the intervals, e.g. 0.95.
    pub level: f64,
    /// Seed of the bootstrap resampling.
    pub bootstrap_seed: u64,
    /// Last layer only, or per-layer curves too.
    pub layers: Layers,
    /// Show progress on stderr.
    pub progress: bool,
    /// Side and precision of the eRank computation.
    pub erank: ErankOptions,
}

impl Default for DiffErankConfig {
    fn default() -> Self {
        Self {
            max_texts: None,
            max_tokens: 2048,
            seed: 0,
            batch_size: 8,
            n_resamples: 1000,
            level: 0.95,
            bootstrap_seed: 0,
            layers: Layers::Last,
            progress: true,
            erank: ErankOptions::default(),
        }
    }
}

impl DiffErankConfig {
    pub fn max_texts(mut self, n: usize) -> Self {
        self.max_texts = Some(n);
        self
    }
    pub fn max_tokens(mut self, n: usize) -> Self {
        self.max_tokens = n;
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }
    pub fn n_resamples(mut self, n: usize) -> Self {
        self.n_resamples = n;
        self
    }
    pub fn level(mut self, level: f64) -> Self {
        self.level = level;
        self
    }
    pub fn bootstrap_seed(mut self, seed: u64) -> Self {
        self.bootstrap_seed = seed;
        self
    }
    pub fn layers(mut self, layers: Layers) -> Self {
        self.layers = layers;
        self
    }
    pub fn progress(mut self, yes: bool) -> Self {
        self.progress = yes;
        self
    }
    pub fn erank_options(mut self, opts: ErankOptions) -> Self {
        self.erank = opts;
        self
    }

    fn check(&self) -> Result<()> {
        if self.max_tokens < 2 {
            return Err(Error::InvalidInput(format!(
                "Diff-eRank: max_tokens must be at least 2 (eRank needs 2 tokens), got {}",
                self.max_tokens
            )));
        }
        if self.batch_size == 0 {
            return Err(Error::InvalidInput(
                "Diff-eRank: batch_size must be at least 1".into(),
            ));
        }
        if self.n_resamples == 0 {
            return Err(Error::InvalidInput(
                "Diff-eRank: n_resamples must be at least 1".into(),
            ));
        }
        if !(self.level > 0.0 && self.level < 1.0) {
            return Err(Error::InvalidInput(format!(
                "Diff-eRank: level must be in (0, 1), got {}",
                self.level
            )));
        }
        Ok(())
    }
}

/// Everything [`run_diff_erank`] measured.
#[derive(Debug, Clone)]
pub struct DiffErankResult {
    /// Name of the trained model.
    pub model: String,
    /// Architecture family (`llama`, `bert`, ...).
    pub family: String,
    /// The hook whose states were used for the headline numbers.
    pub hook: String,
    /// Diff-eRank = exp(mean H0) − exp(mean H1) with a paired bootstrap CI over sentences.
    pub diff_erank: Ci,
    /// Dataset eRank exp(mean H) of the untrained twin M0.
    pub erank_untrained: f64,
    /// Dataset eRank exp(mean H) of the trained model M1.
    pub erank_trained: f64,
    /// Mean token loss of M0 (decoders only).
    pub loss_untrained: Option<f64>,
    /// Mean token loss of M1 (decoders only).
    pub loss_trained: Option<f64>,
    /// ΔL = L(M0) − L(M1) with a paired bootstrap CI (decoders only).
    pub delta_loss: Option<Ci>,
    /// Texts given (after `max_texts`).
    pub n_texts: usize,
    /// Sentences that contributed (paired).
    pub n_used: usize,
    /// Sentences skipped because they have fewer than 2 tokens.
    pub skipped_too_few_tokens: usize,
    /// Sentences skipped because under one model all their rows were identical.
    pub skipped_no_variation: usize,
    /// Texts cut to `max_tokens` (or the context window).
    pub n_truncated: usize,
    /// Tokens of the used sentences.
    pub n_tokens: usize,
    /// One row per text: doc, n_tokens, used, entropy_untrained, entropy_trained,
    /// loss_untrained, loss_trained (nulls where skipped / encoder).
    pub per_sentence: DataFrame,
    /// With [`Layers::All`]: layer, erank_trained, erank_untrained, diff, diff_lower, diff_upper.
    pub per_layer: Option<DataFrame>,
    /// The settings used.
    pub config: DiffErankConfig,
}

/// Per-side outcome of one text.
#[derive(Debug, Clone, Default)]
struct SideDoc {
    last: Option<SentenceErank>,
    loss: Option<f64>,
    layers: Vec<Option<f64>>,
}

/// Diff-eRank of `trained` against its untrained twin (`trained.untrained(cfg.seed)`) on
/// `texts`. See the module docs for the exact definition and choices.
///
/// Errors: no text; every sentence skipped (all shorter than 2 tokens or without variation);
/// invalid settings; model errors (each naming the text index and the model).
pub fn run_diff_erank<S: AsRef<str>>(
    trained: &Model,
    texts: &[S],
    cfg: &DiffErankConfig,
) -> Result<DiffErankResult> {
    cfg.check()?;
    check_nonempty(texts.len(), cfg)?;
    let twin = trained.untrained(cfg.seed)?;
    run_diff_erank_with_twin(trained, &twin, texts, cfg)
}

/// [`run_diff_erank`] with an untrained twin built by the caller (e.g. reused across corpora).
/// `untrained` must have the same architecture and tokenizer as `trained`.
pub fn run_diff_erank_with_twin<S: AsRef<str>>(
    trained: &Model,
    untrained: &Model,
    texts: &[S],
    cfg: &DiffErankConfig,
) -> Result<DiffErankResult> {
    cfg.check()?;
    check_nonempty(texts.len(), cfg)?;
    if trained.n_layers() != untrained.n_layers()
        || trained.d_model() != untrained.d_model()
        || trained.config().family() != untrained.config().family()
    {
        return Err(Error::InvalidInput(format!(
            "Diff-eRank: the untrained model '{}' ({}, {} layers, d={}) is not a twin of '{}' ({}, {} layers, d={})",
            untrained.name(),
            untrained.config().family(),
            untrained.n_layers(),
            untrained.d_model(),
            trained.name(),
            trained.config().family(),
            trained.n_layers(),
            trained.d_model()
        )));
    }
    let n_texts = cfg.max_texts.map_or(texts.len(), |m| m.min(texts.len()));
    let texts = &texts[..n_texts];

    // Tokenise once (same tokenizer for both), truncate, and set aside N < 2.
    let limit = cfg.max_tokens.min(trained.config().max_positions());
    let mut n_truncated = 0;
    let mut n_tokens_all = Vec::with_capacity(n_texts);
    let mut run_ids = Vec::new();
    let mut run_index = Vec::new();
    for (i, mut ids) in trained.tokenize(texts)?.into_iter().enumerate() {
        if ids.len() > limit {
            ids.truncate(limit);
            n_truncated += 1;
        }
        n_tokens_all.push(ids.len());
        if ids.len() >= 2 {
            run_ids.push(ids);
            run_index.push(i);
        }
    }
    let skipped_too_few_tokens = n_texts - run_ids.len();
    if run_ids.is_empty() {
        return Err(all_skipped(n_texts, skipped_too_few_tokens, 0));
    }

    let encoder = trained.config().is_encoder();
    let n_layers = trained.n_layers();
    let last_point = if encoder {
        HookPoint::ResidPost(n_layers.saturating_sub(1))
    } else {
        HookPoint::LnFinal
    };
    let layer_points: Vec<HookPoint> = match cfg.layers {
        Layers::Last => Vec::new(),
        Layers::All => (0..n_layers).map(HookPoint::ResidPost).collect(),
    };
    let hooks = HookSpec::points(std::iter::once(last_point).chain(layer_points.iter().copied()));

    let trained_docs = run_side(
        trained,
        "trained",
        &run_ids,
        &hooks,
        last_point,
        &layer_points,
        cfg,
    )?;
    let untrained_docs = run_side(
        untrained,
        "untrained",
        &run_ids,
        &hooks,
        last_point,
        &layer_points,
        cfg,
    )?;

    // Pair the sentences.
    let mut h0 = Vec::new();
    let mut h1 = Vec::new();
    let mut l0 = Vec::new();
    let mut l1 = Vec::new();
    let mut used_flags = vec![false; run_ids.len()];
    let mut skipped_no_variation = 0;
    let mut n_tokens = 0;
    for (k, (d0, d1)) in untrained_docs.iter().zip(&trained_docs).enumerate() {
        match (&d0.last, &d1.last) {
            (Some(SentenceErank::Computed(r0)), Some(SentenceErank::Computed(r1))) => {
                h0.push(r0.entropy);
                h1.push(r1.entropy);
                if let (Some(a), Some(b)) = (d0.loss, d1.loss) {
                    l0.push(a);
                    l1.push(b);
                }
                used_flags[k] = true;
                n_tokens += run_ids[k].len();
            }
            _ => skipped_no_variation += 1,
        }
    }
    if h0.is_empty() {
        return Err(all_skipped(
            n_texts,
            skipped_too_few_tokens,
            skipped_no_variation,
        ));
    }

    let diff = paired_bootstrap_ci(
        &h0,
        &h1,
        diff_erank,
        cfg.n_resamples,
        cfg.level,
        cfg.bootstrap_seed,
    )?;
    let (loss_untrained, loss_trained, delta_loss) = if !encoder && l0.len() == h0.len() {
        let ci = paired_bootstrap_ci(
            &l0,
            &l1,
            |a, b| mean(a) - mean(b),
            cfg.n_resamples,
            cfg.level,
            cfg.bootstrap_seed,
        )?;
        (Some(mean(&l0)), Some(mean(&l1)), Some(ci))
    } else {
        (None, None, None)
    };

    let per_sentence = per_sentence_frame(
        &n_tokens_all,
        &run_index,
        &used_flags,
        &untrained_docs,
        &trained_docs,
    )?;
    let per_layer = match cfg.layers {
        Layers::Last => None,
        Layers::All => Some(per_layer_frame(
            n_layers,
            &used_flags,
            &untrained_docs,
            &trained_docs,
            cfg,
        )?),
    };

    Ok(DiffErankResult {
        model: trained.name().to_string(),
        family: trained.config().family().to_string(),
        hook: last_point.to_string(),
        erank_untrained: mean(&h0).exp(),
        erank_trained: mean(&h1).exp(),
        diff_erank: diff,
        loss_untrained,
        loss_trained,
        delta_loss,
        n_texts,
        n_used: h0.len(),
        skipped_too_few_tokens,
        skipped_no_variation,
        n_truncated,
        n_tokens,
        per_sentence,
        per_layer,
        config: cfg.clone(),
    })
}

fn check_nonempty(n: usize, cfg: &DiffErankConfig) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidInput(
            "Diff-eRank: the corpus is empty (no texts given); pass at least one sentence of 2 or more tokens".into(),
        ));
    }
    if cfg.max_texts == Some(0) {
        return Err(Error::InvalidInput(
            "Diff-eRank: max_texts is 0, so no text would be used".into(),
        ));
    }
    Ok(())
}

fn all_skipped(n_texts: usize, too_few: usize, no_variation: usize) -> Error {
    Error::InvalidInput(format!(
        "Diff-eRank: all {n_texts} sentences were skipped ({too_few} with fewer than 2 tokens, \
         {no_variation} whose token states do not vary); eRank needs sentences of at least 2 tokens"
    ))
}

/// Run one model over the (pre-tokenised, N ≥ 2) sentences, keeping only per-sentence scalars.
fn run_side(
    model: &Model,
    which: &str,
    ids: &[Vec<u32>],
    hooks: &HookSpec,
    last_point: HookPoint,
    layer_points: &[HookPoint],
    cfg: &DiffErankConfig,
) -> Result<Vec<SideDoc>> {
    let ids = model.prepare_ids(ids, true)?;
    let opts = RunOptions::default()
        .batch_size(cfg.batch_size)
        .truncate(true)
        .progress(cfg.progress);
    let mut out: Vec<SideDoc> = vec![SideDoc::default(); ids.len()];
    let ctx = |index: usize, e: Error| match e {
        Error::InvalidInput(msg) => Error::InvalidInput(format!(
            "Diff-eRank, {which} model '{}', text {index}: {msg}",
            model.name()
        )),
        other => other,
    };
    model.for_each_doc_ids(&ids, hooks, &opts, |doc| {
        let index = doc.index;
        let r = doc.cache.get(last_point)?;
        let last = erank_or_skip(r, &cfg.erank).map_err(|e| ctx(index, e))?;
        let loss = doc
            .token_loss
            .as_ref()
            .filter(|l| !l.is_empty())
            .map(|l| l.iter().map(|&v| v as f64).sum::<f64>() / l.len() as f64);
        let mut layers = Vec::with_capacity(layer_points.len());
        for &p in layer_points {
            let r: &Tensor = doc.cache.get(p)?;
            layers.push(
                match erank_or_skip(r, &cfg.erank).map_err(|e| ctx(index, e))? {
                    SentenceErank::Computed(rep) => Some(rep.entropy),
                    SentenceErank::Skipped(_) => None,
                },
            );
        }
        let slot = out.get_mut(index).ok_or_else(|| {
            Error::InvalidInput(format!("Diff-eRank: document index {index} out of range"))
        })?;
        *slot = SideDoc {
            last: Some(last),
            loss,
            layers,
        };
        Ok(())
    })?;
    Ok(out)
}

fn entropy_of(d: &SideDoc) -> Option<f64> {
    match &d.last {
        Some(SentenceErank::Computed(r)) => Some(r.entropy),
        _ => None,
    }
}

fn per_sentence_frame(
    n_tokens_all: &[usize],
    run_index: &[usize],
    used_flags: &[bool],
    untrained: &[SideDoc],
    trained: &[SideDoc],
) -> Result<DataFrame> {
    let n = n_tokens_all.len();
    let mut e0 = vec![None; n];
    let mut e1 = vec![None; n];
    let mut l0 = vec![None; n];
    let mut l1 = vec![None; n];
    let mut used = vec![false; n];
    for (k, &i) in run_index.iter().enumerate() {
        if let (Some(d0), Some(d1), Some(u)) = (untrained.get(k), trained.get(k), used_flags.get(k))
        {
            e0[i] = entropy_of(d0);
            e1[i] = entropy_of(d1);
            l0[i] = d0.loss;
            l1[i] = d1.loss;
            used[i] = *u;
        }
    }
    let doc: Vec<u32> = (0..n as u32).collect();
    let toks: Vec<u32> = n_tokens_all.iter().map(|&t| t as u32).collect();
    Ok(DataFrame::new_infer_height(vec![
        Column::new("doc".into(), doc),
        Column::new("n_tokens".into(), toks),
        Column::new("used".into(), used),
        Column::new("entropy_untrained".into(), e0),
        Column::new("entropy_trained".into(), e1),
        Column::new("loss_untrained".into(), l0),
        Column::new("loss_trained".into(), l1),
    ])?)
}

fn per_layer_frame(
    n_layers: usize,
    used_flags: &[bool],
    untrained: &[SideDoc],
    trained: &[SideDoc],
    cfg: &DiffErankConfig,
) -> Result<DataFrame> {
    let mut layer = Vec::with_capacity(n_layers);
    let (mut e1s, mut e0s, mut diffs, mut lo, mut hi, mut counts) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for l in 0..n_layers {
        let mut h0 = Vec::new();
        let mut h1 = Vec::new();
        for ((d0, d1), &u) in untrained.iter().zip(trained).zip(used_flags) {
            if !u {
                continue;
            }
            if let (Some(Some(a)), Some(Some(b))) = (d0.layers.get(l), d1.layers.get(l)) {
                h0.push(*a);
                h1.push(*b);
            }
        }
        layer.push(l as u32);
        counts.push(h0.len() as u32);
        if h0.is_empty() {
            e0s.push(None);
            e1s.push(None);
            diffs.push(None);
            lo.push(None);
            hi.push(None);
            continue;
        }
        let ci = paired_bootstrap_ci(
            &h0,
            &h1,
            diff_erank,
            cfg.n_resamples,
            cfg.level,
            cfg.bootstrap_seed,
        )?;
        e0s.push(Some(mean(&h0).exp()));
        e1s.push(Some(mean(&h1).exp()));
        diffs.push(Some(ci.estimate));
        lo.push(Some(ci.lower));
        hi.push(Some(ci.upper));
    }
    Ok(DataFrame::new_infer_height(vec![
        Column::new("layer".into(), layer),
        Column::new("erank_trained".into(), e1s),
        Column::new("erank_untrained".into(), e0s),
        Column::new("diff".into(), diffs),
        Column::new("diff_lower".into(), lo),
        Column::new("diff_upper".into(), hi),
        Column::new("sentences".into(), counts),
    ])?)
}

fn fmt_ci(ci: &Ci) -> String {
    format!("{:.4} [{:.4}, {:.4}]", ci.estimate, ci.lower, ci.upper)
}

impl DiffErankResult {
    /// `(quantity, value)` pairs for display and `summary.csv`.
    pub fn summary_rows(&self) -> Vec<(String, String)> {
        let pct = format!("{:.0}%", self.config.level * 100.0);
        let mut rows = vec![
            ("model".to_string(), self.model.clone()),
            ("family".into(), self.family.clone()),
            ("hook".into(), self.hook.clone()),
            (format!("Diff-eRank [{pct} CI]"), fmt_ci(&self.diff_erank)),
            (
                "eRank untrained (M0)".into(),
                format!("{:.4}", self.erank_untrained),
            ),
            (
                "eRank trained (M1)".into(),
                format!("{:.4}", self.erank_trained),
            ),
        ];
        match (&self.delta_loss, self.loss_untrained, self.loss_trained) {
            (Some(dl), Some(a), Some(b)) => {
                rows.push((format!("ΔL = L(M0) − L(M1) [{pct} CI]"), fmt_ci(dl)));
                rows.push(("loss untrained (nats/token)".into(), format!("{a:.4}")));
                rows.push(("loss trained (nats/token)".into(), format!("{b:.4}")));
            }
            _ => rows.push(("ΔL".into(), "n/a (encoder: no LM head)".into())),
        }
        rows.extend([
            ("texts".to_string(), self.n_texts.to_string()),
            ("sentences used".into(), self.n_used.to_string()),
            (
                "skipped: < 2 tokens".into(),
                self.skipped_too_few_tokens.to_string(),
            ),
            (
                "skipped: no variation".into(),
                self.skipped_no_variation.to_string(),
            ),
            ("truncated".into(), self.n_truncated.to_string()),
            ("tokens used".into(), self.n_tokens.to_string()),
            ("twin seed".into(), self.config.seed.to_string()),
            (
                "bootstrap".into(),
                format!(
                    "{} resamples, seed {}",
                    self.config.n_resamples, self.config.bootstrap_seed
                ),
            ),
        ]);
        rows
    }

    /// One wide row (model, family, hook, counts, estimates with CI bounds): stack the rows of
    /// several models with polars' `vstack` to compare them.
    pub fn to_frame(&self) -> Result<DataFrame> {
        let dl = self.delta_loss;
        Ok(DataFrame::new_infer_height(vec![
            Column::new("model".into(), [self.model.as_str()]),
            Column::new("family".into(), [self.family.as_str()]),
            Column::new("hook".into(), [self.hook.as_str()]),
            Column::new("sentences".into(), [self.n_used as u32]),
            Column::new(
                "skipped".into(),
                [(self.skipped_too_few_tokens + self.skipped_no_variation) as u32],
            ),
            Column::new("tokens".into(), [self.n_tokens as u32]),
            Column::new("erank_untrained".into(), [self.erank_untrained]),
            Column::new("erank_trained".into(), [self.erank_trained]),
            Column::new("diff_erank".into(), [self.diff_erank.estimate]),
            Column::new("diff_erank_lower".into(), [self.diff_erank.lower]),
            Column::new("diff_erank_upper".into(), [self.diff_erank.upper]),
            Column::new("loss_untrained".into(), [self.loss_untrained]),
            Column::new("loss_trained".into(), [self.loss_trained]),
            Column::new("delta_loss".into(), [dl.map(|c| c.estimate)]),
            Column::new("delta_loss_lower".into(), [dl.map(|c| c.lower)]),
            Column::new("delta_loss_upper".into(), [dl.map(|c| c.upper)]),
            Column::new("level".into(), [self.config.level]),
            Column::new("seed".into(), [self.config.seed]),
        ])?)
    }

    /// The summary as CSV text (`quantity,value`), quoted where needed.
    pub fn summary_csv(&self) -> String {
        let q = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let mut out = String::from("quantity,value\n");
        for (k, v) in self.summary_rows() {
            out.push_str(&format!("{},{}\n", q(&k), q(&v)));
        }
        out
    }

    /// Called by the evcxr kernel when the result ends a cell: an HTML summary table.
    pub fn evcxr_display(&self) {
        self.html().evcxr_display();
    }
}

impl DisplayHtml for DiffErankResult {
    fn html(&self) -> Html {
        let rows: Vec<Vec<String>> = self
            .summary_rows()
            .into_iter()
            .map(|(k, v)| vec![k, v])
            .collect();
        Html::new(format!(
            "<div><b>Diff-eRank of {}</b>{}</div>",
            escape_html(&self.model),
            table_html(&["quantity", "value"], &rows)
        ))
    }
}

impl std::fmt::Display for DiffErankResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, v) in self.summary_rows() {
            writeln!(f, "{k:<34} {v}")?;
        }
        Ok(())
    }
}
