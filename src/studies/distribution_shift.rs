//! Study 4: distribution shift between a training set and a test set, seen in a model's
//! embeddings.
//!
//! Vargas, Lin, Meng, Ghosh, Garber & Gamarnik (arXiv 2310.13836) embed Sentiment140's
//! training tweets (labelled automatically from emoticons) and its small hand-labelled test set
//! with foundation models, and show — qualitatively, with PCA scatter plots and KDE contours on
//! the top components — that the two sets separate; fine-tuning on the training set does not
//! carry over to the test set, while a linear probe on frozen features is more robust.
//!
//! This study makes the comparison quantitative:
//! 1. embed both sets with any loaded [`Model`] (a pooled vector per text: mean, last token
//!    or CLS, from the last-layer representation by default);
//! 2. PCA on the union (explained variance), projections as a frame for plots with KDE contours
//!    ([`ShiftResult::scatter_chart`]);
//! 3. seeded two-sample tests with p-values in a [`ShiftReport`]
//!    ([`crate::metrics::shift`]: MMD² permutation test, linear-time MMD, C2ST, KS per PC with
//!    Holm and Benjamini–Hochberg corrections);
//! 4. a logistic-regression probe on the frozen embeddings, trained on part of the "train"
//!    distribution and evaluated on its held-out part and on the shifted set, with bootstrap
//!    CIs of both accuracies;
//! 5. optionally ([`ShiftConfig::fine_tune`], [`fine_tune_lora`]) the paper's other arm: a
//!    classifier fine-tuned with LoRA (Hu et al., arXiv 2106.09685; [`crate::train::lora`]) on
//!    the same training rows and evaluated on exactly the probe's test rows, so the two
//!    accuracies, their CIs and their drops compare row for row ([`comparison_frame`]).
//!
//! The data (see `docs/DATA.md`): Sentiment140 ships in no registry package. Its closest
//! analogue here is `rt_polarity` (Pang & Lee's Rotten Tomatoes snippets, labelled
//! *automatically* by the review's fresh/rotten tag) as the training distribution and VADER's
//! human-rated tweets (`vader_tweets`, label = sign of ≥ 20 raters' mean) as the test set:
//! another domain (tweets, like Sentiment140's test set) and another labelling process. The
//! negative control is a random split of one set.
//!
//! ```no_run
//! use replens::prelude::*;
//! use replens::studies::distribution_shift::{run_distribution_shift, LabelledTexts, ShiftConfig};
//! let train = LabelledTexts::from_jsonl("data/sentiment/rt_polarity_train.jsonl", "rt_polarity", "label")?;
//! let test = LabelledTexts::from_jsonl("data/sentiment/vader_tweets_test.jsonl", "vader_tweets", "label")?;
//! let model = Model::load("minilm")?;
//! let cfg = ShiftConfig::default().n_per_group(200).seed(1);
//! let result = run_distribution_shift(&model, &train, &test, &cfg)?;
//! println!("{}", result.report);
//! # Ok::<(), replens::Error>(())
//! ```

use std::path::Path;
use std::time::Instant;

use candle_core::{Tensor, D};
use polars::prelude::{Column, DataFrame};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::display::{escape_html, table_html, DisplayHtml, Html};
use crate::error::{bail, Error, Result};
use crate::frame::{embed, Pooling};
use crate::hooks::HookPoint;
use crate::metrics::shift::{
    binomial_band, c2st_matrix, mmd_permutation_test_matrix, shift_report_matrix, C2stOptions,
    MmdOptions, Pca, ShiftOptions, ShiftReport,
};
use crate::metrics::stats::{bootstrap_ci, mean, Ci};
use crate::model::source::SourceKind;
use crate::model::{Model, RunOptions};
use crate::plot::{Chart, ScatterChart};
use crate::train::lora::{
    ClassifierConfig, LoraConfig, Pooling as HeadPooling, Precision, SequenceClassifier, Splits,
    TrainOptions,
};
use crate::train::probe::{LogisticRegression, Matrix};

/// A named list of texts with integer class labels (0 = negative, 1 = positive for the
/// sentiment sets).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledTexts {
    /// Name used in tables and plots (e.g. "rt_polarity").
    pub name: String,
    pub texts: Vec<String>,
    /// One label per text.
    pub labels: Vec<u32>,
}

impl LabelledTexts {
    /// Wrap texts and labels; errors when the lengths differ or there are no texts.
    pub fn new(name: impl Into<String>, texts: Vec<String>, labels: Vec<u32>) -> Result<Self> {
        let name = name.into();
        if texts.is_empty() {
            bail!("{name}: no texts");
        }
        if texts.len() != labels.len() {
            bail!("{name}: {} texts but {} labels", texts.len(), labels.len());
        }
        Ok(LabelledTexts {
            name,
            texts,
            labels,
        })
    }

    /// Read a JSON-lines file with a string field `text` and an integer field `label_field`
    /// (e.g. `label`, or `label_human` in `rt_polarity_*`). Rows whose label is null are
    /// skipped (their count is not kept); errors name the file and line.
    pub fn from_jsonl(
        path: impl AsRef<Path>,
        name: impl Into<String>,
        label_field: &str,
    ) -> Result<Self> {
        let path = path.as_ref();
        let body = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (mut texts, mut labels) = (Vec::new(), Vec::new());
        for (i, line) in body.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let where_ = || format!("{}:{}", path.display(), i + 1);
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| Error::InvalidInput(format!("{}: invalid JSON: {e}", where_())))?;
            let text = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
                Error::InvalidInput(format!("{}: no string field 'text'", where_()))
            })?;
            let label = match v.get(label_field) {
                None => bail!("{}: no field '{label_field}'", where_()),
                Some(serde_json::Value::Null) => continue,
                Some(l) => l
                    .as_u64()
                    .and_then(|l| u32::try_from(l).ok())
                    .ok_or_else(|| {
                        Error::InvalidInput(format!(
                            "{}: '{label_field}' is not a non-negative integer ({l})",
                            where_()
                        ))
                    })?,
            };
            texts.push(text.to_string());
            labels.push(label);
        }
        LabelledTexts::new(name, texts, labels)
            .map_err(|_| Error::InvalidInput(format!("{}: no labelled texts", path.display())))
    }

    /// Number of texts.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether there are no texts.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// `n` texts drawn at random without replacement (seeded), in random order. Errors when
    /// `n` exceeds the number of texts or is 0.
    pub fn sample(&self, n: usize, seed: u64) -> Result<LabelledTexts> {
        if n == 0 || n > self.len() {
            bail!("{}: cannot sample {n} of {} texts", self.name, self.len());
        }
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut StdRng::seed_from_u64(seed));
        idx.truncate(n);
        Ok(self.select(&idx, self.name.clone()))
    }

    /// A random split (seeded) into `n_first` texts named `<name> (A)` and the rest named
    /// `<name> (B)`: the negative control, two samples of one distribution.
    pub fn random_split(
        &self,
        n_first: usize,
        seed: u64,
    ) -> Result<(LabelledTexts, LabelledTexts)> {
        if n_first == 0 || n_first >= self.len() {
            bail!(
                "{}: a split needs 0 < n_first < {}, got {n_first}",
                self.name,
                self.len()
            );
        }
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut StdRng::seed_from_u64(seed));
        Ok((
            self.select(&idx[..n_first], format!("{} (A)", self.name)),
            self.select(&idx[n_first..], format!("{} (B)", self.name)),
        ))
    }

    fn select(&self, idx: &[usize], name: String) -> LabelledTexts {
        LabelledTexts {
            name,
            texts: idx.iter().map(|&i| self.texts[i].clone()).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        }
    }
}

/// Settings of the study. Build with the chained setters from `default()`.
///
/// ```
/// use replens::studies::distribution_shift::ShiftConfig;
/// use replens::frame::Pooling;
/// let cfg = ShiftConfig::default().n_per_group(100).pooling(Pooling::Cls).n_permutations(999).seed(3);
/// assert_eq!(cfg.model, "minilm");
/// assert_eq!(cfg.tests().mmd.n_permutations, 999);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ShiftConfig {
    /// Model alias or path, for [`ShiftConfig::load_model`] (default `"minilm"`, the packaged
    /// all-MiniLM-L6-v2).
    pub model: String,
    /// How a text's token states become one vector (default mean, as sentence-transformers).
    pub pooling: Pooling,
    /// Which activations to pool; `None` = the last-layer representation (`ln_final` for
    /// decoders, the last `hook_resid_post` for encoders, which have no final norm).
    pub hook: Option<HookPoint>,
    /// Texts drawn at random from each group before embedding; `None` = all.
    pub n_per_group: Option<usize>,
    /// Master seed: sampling uses `seed` and `seed + 1`, the tests `seed` (see
    /// [`ShiftOptions::seed`]), the probe split `seed + 3`, the bootstrap `seed + 4`, the
    /// fine-tuning's validation slice `seed + 5`, its LoRA/head initialisation and shuffling
    /// `seed + 6`.
    pub seed: u64,
    /// MMD permutations (default 500).
    pub n_permutations: usize,
    /// Level of the tests (default 0.05).
    pub alpha: f64,
    /// Principal components kept in the projections and tested by KS (default 10).
    pub n_components: usize,
    /// Inverse L2 penalty of the probe and of the C2ST classifier (default 1.0).
    pub c: f64,
    /// Fraction of the train group held out to evaluate the probe in distribution (default 0.3).
    pub probe_test_fraction: f64,
    /// Bootstrap resamples for the accuracy CIs (default 2000).
    pub n_resamples: usize,
    /// Nominal CI coverage (default 0.95).
    pub level: f64,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Show embedding progress (and fine-tuning progress) on stderr.
    pub progress: bool,
    /// Also fine-tune a LoRA classifier and compare it with the probe (default `None`: off);
    /// see [`fine_tune_lora`].
    pub fine_tune: Option<FineTuneOptions>,
}

impl Default for ShiftConfig {
    fn default() -> Self {
        ShiftConfig {
            model: "minilm".into(),
            pooling: Pooling::Mean,
            hook: None,
            n_per_group: None,
            seed: 0,
            n_permutations: 500,
            alpha: 0.05,
            n_components: 10,
            c: 1.0,
            probe_test_fraction: 0.3,
            n_resamples: 2000,
            level: 0.95,
            batch_size: 16,
            progress: false,
            fine_tune: None,
        }
    }
}

impl ShiftConfig {
    pub fn model(mut self, name: impl Into<String>) -> Self {
        self.model = name.into();
        self
    }
    pub fn pooling(mut self, pooling: Pooling) -> Self {
        self.pooling = pooling;
        self
    }
    pub fn hook(mut self, hook: HookPoint) -> Self {
        self.hook = Some(hook);
        self
    }
    pub fn n_per_group(mut self, n: usize) -> Self {
        self.n_per_group = Some(n);
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    pub fn n_permutations(mut self, n: usize) -> Self {
        self.n_permutations = n;
        self
    }
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }
    pub fn n_components(mut self, k: usize) -> Self {
        self.n_components = k;
        self
    }
    pub fn c(mut self, c: f64) -> Self {
        self.c = c;
        self
    }
    pub fn probe_test_fraction(mut self, f: f64) -> Self {
        self.probe_test_fraction = f;
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
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }
    pub fn progress(mut self, yes: bool) -> Self {
        self.progress = yes;
        self
    }
    /// Turn on the fine-tuned arm ([`fine_tune_lora`]) with these settings.
    pub fn fine_tune(mut self, opts: FineTuneOptions) -> Self {
        self.fine_tune = Some(opts);
        self
    }

    /// Load [`ShiftConfig::model`].
    pub fn load_model(&self) -> Result<Model> {
        Model::load(&self.model)
    }

    /// The two-sample test settings this configuration implies.
    pub fn tests(&self) -> ShiftOptions {
        let mut o = ShiftOptions::default()
            .alpha(self.alpha)
            .n_permutations(self.n_permutations)
            .n_components(self.n_components)
            .seed(self.seed);
        o.c2st.c = self.c;
        o
    }
}

/// The hook whose pooled states serve as the embedding: `cfg.hook`, or the last-layer
/// representation (`ln_final.hook_normalized` for decoders, the last block's
/// `hook_resid_post` for encoders).
pub fn representation_hook(model: &Model, cfg: &ShiftConfig) -> HookPoint {
    cfg.hook.unwrap_or_else(|| {
        if model.config().is_encoder() {
            HookPoint::ResidPost(model.n_layers().saturating_sub(1))
        } else {
            HookPoint::LnFinal
        }
    })
}

/// Embed `texts` with `model`: one pooled vector per text, `(n, d)` f32 (long texts are
/// truncated to the context window).
pub fn embed_texts<S: AsRef<str>>(model: &Model, texts: &[S], cfg: &ShiftConfig) -> Result<Tensor> {
    let opts = RunOptions::default()
        .batch_size(cfg.batch_size)
        .truncate(true)
        .progress(cfg.progress);
    embed(
        model,
        texts,
        representation_hook(model, cfg),
        cfg.pooling,
        &opts,
    )
}

/// Accuracy of the probe (trained on part of the train group) on its held-out part and on
/// the shifted group.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    /// Accuracy on the held-out part of the train distribution, with a bootstrap CI.
    pub in_distribution: Ci,
    /// Accuracy on the shifted group, with a bootstrap CI.
    pub shifted: Ci,
    /// Training rows.
    pub n_train: usize,
    /// Held-out rows of the train distribution.
    pub n_test: usize,
    /// Rows of the shifted group.
    pub n_shifted: usize,
    /// Whether the logistic regression converged.
    pub converged: bool,
}

impl ProbeResult {
    /// Accuracy drop in distribution → shifted (positive = worse on the shifted set).
    pub fn drop(&self) -> f64 {
        self.in_distribution.estimate - self.shifted.estimate
    }

    /// Two rows: `evaluated_on`, `n`, `accuracy`, `lower`, `upper`, `level`.
    pub fn to_frame(&self, train_name: &str, shifted_name: &str) -> Result<DataFrame> {
        accuracy_frame(
            [&self.in_distribution, &self.shifted],
            [self.n_test, self.n_shifted],
            train_name,
            shifted_name,
        )
    }
}

/// The two-row accuracy frame shared by [`ProbeResult::to_frame`] and
/// [`FineTuneResult::to_frame`].
fn accuracy_frame(
    cis: [&Ci; 2],
    n: [usize; 2],
    train_name: &str,
    shifted_name: &str,
) -> Result<DataFrame> {
    Ok(DataFrame::new_infer_height(vec![
        Column::new(
            "evaluated_on".into(),
            [format!("{train_name} (held out)"), shifted_name.to_string()],
        ),
        Column::new("n".into(), n.map(|n| n as u32)),
        Column::new("accuracy".into(), cis.map(|c| c.estimate)),
        Column::new("lower".into(), cis.map(|c| c.lower)),
        Column::new("upper".into(), cis.map(|c| c.upper)),
        Column::new("level".into(), cis.map(|c| c.level)),
    ])?)
}

/// Everything the study produces for one pair of groups.
#[derive(Debug, Clone)]
pub struct ShiftResult {
    /// Name of the train (reference) group.
    pub train_name: String,
    /// Name of the shifted (test) group.
    pub shifted_name: String,
    /// The two-sample tests.
    pub report: ShiftReport,
    /// PCA fitted on the union of both groups.
    pub pca: Pca,
    /// One row per text: `group` (name), `index` (within its group), `label` (null when not
    /// given), `pc1` … `pck`.
    pub projections: DataFrame,
    /// The linear probe, when both groups have labels.
    pub probe: Option<ProbeResult>,
    /// The LoRA-fine-tuned classifier, when [`ShiftConfig::fine_tune`] is set (filled by
    /// [`run_distribution_shift`]; [`analyze_shift`] sees only embeddings and leaves it `None`).
    pub fine_tune: Option<FineTuneResult>,
    /// The settings used.
    pub config: ShiftConfig,
}

/// Embed both groups with `model` (after drawing `cfg.n_per_group` texts from each) and
/// analyse them with [`analyze_shift`]; when [`ShiftConfig::fine_tune`] is set, also fine-tune
/// a LoRA classifier on the same rows ([`fine_tune_lora`]; `model` must then be a BERT-family
/// encoder, checked before anything is embedded).
pub fn run_distribution_shift(
    model: &Model,
    train: &LabelledTexts,
    shifted: &LabelledTexts,
    cfg: &ShiftConfig,
) -> Result<ShiftResult> {
    let (a, b) = match cfg.n_per_group {
        Some(n) => (
            train.sample(n.min(train.len()), cfg.seed)?,
            shifted.sample(n.min(shifted.len()), cfg.seed.wrapping_add(1))?,
        ),
        None => (train.clone(), shifted.clone()),
    };
    if let Some(opts) = &cfg.fine_tune {
        encoder_dir(model)?;
        opts.check()?;
    }
    let ea = embed_texts(model, &a.texts, cfg)?;
    let eb = embed_texts(model, &b.texts, cfg)?;
    let mut result = analyze_shift(
        (&a.name, &ea, Some(&a.labels)),
        (&b.name, &eb, Some(&b.labels)),
        cfg,
    )?;
    if let Some(opts) = &cfg.fine_tune {
        result.fine_tune = Some(fine_tune_lora(model, &a, &b, cfg, opts)?);
    }
    Ok(result)
}

/// A group for [`analyze_shift`]: name, `(n, d)` embeddings, optional labels.
pub type Group<'a> = (&'a str, &'a Tensor, Option<&'a [u32]>);

/// PCA, two-sample tests and (when both groups carry labels) the linear probe, on embeddings
/// computed elsewhere — e.g. embed one large sample once and compare slices of it.
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// use replens::studies::distribution_shift::{analyze_shift, ShiftConfig};
/// let dev = Device::Cpu;
/// let a = Tensor::randn(0f32, 1., (60, 5), &dev)?;
/// let b = (Tensor::randn(0f32, 1., (60, 5), &dev)? + 0.8)?;
/// let la: Vec<u32> = (0..60).map(|i| i % 2).collect();
/// let cfg = ShiftConfig::default().n_permutations(99).n_resamples(200).n_components(3);
/// let r = analyze_shift(("a", &a, Some(&la)), ("b", &b, Some(&la)), &cfg)?;
/// assert!(r.report.get("MMD²_u").unwrap().reject);
/// assert_eq!(r.projections.height(), 120);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn analyze_shift(train: Group, shifted: Group, cfg: &ShiftConfig) -> Result<ShiftResult> {
    let (name_a, ea, la) = train;
    let (name_b, eb, lb) = shifted;
    if name_a == name_b {
        bail!("analyze_shift: both groups are named '{name_a}'; give them distinct names");
    }
    let xa = Matrix::from_tensor(&format!("group '{name_a}'"), ea)?;
    let xb = Matrix::from_tensor(&format!("group '{name_b}'"), eb)?;
    for (name, x, l) in [(name_a, &xa, la), (name_b, &xb, lb)] {
        if let Some(l) = l {
            if l.len() != x.rows() {
                bail!(
                    "group '{name}': {} embeddings but {} labels",
                    x.rows(),
                    l.len()
                );
            }
        }
    }
    let report = shift_report_matrix(&xa, &xb, &cfg.tests())?;
    let pca = report.pca.clone();
    let projections = projection_frame(&pca, &[(name_a, &xa, la), (name_b, &xb, lb)])?;
    let probe = match (la, lb) {
        (Some(la), Some(lb)) => Some(linear_probe(&xa, la, &xb, lb, cfg)?),
        _ => None,
    };
    Ok(ShiftResult {
        train_name: name_a.to_string(),
        shifted_name: name_b.to_string(),
        report,
        pca,
        projections,
        probe,
        fine_tune: None,
        config: cfg.clone(),
    })
}

fn projection_frame(pca: &Pca, groups: &[(&str, &Matrix, Option<&[u32]>)]) -> Result<DataFrame> {
    let k = pca.n_components();
    let (mut group, mut index, mut label) = (Vec::new(), Vec::new(), Vec::new());
    let mut pcs = vec![Vec::new(); k];
    for (name, x, l) in groups {
        let s = pca.transform_matrix(x)?;
        for i in 0..x.rows() {
            group.push(name.to_string());
            index.push(i as u32);
            label.push(l.map(|l| l[i]));
            for (c, col) in pcs.iter_mut().enumerate() {
                col.push(s.row(i)[c]);
            }
        }
    }
    let mut cols = vec![
        Column::new("group".into(), group),
        Column::new("index".into(), index),
        Column::new("label".into(), label),
    ];
    for (c, col) in pcs.into_iter().enumerate() {
        cols.push(Column::new(format!("pc{}", c + 1).into(), col));
    }
    Ok(DataFrame::new_infer_height(cols)?)
}

/// Stratified (by label) random split of `0..labels.len()` into (train, test) indices.
fn stratified_split(labels: &[u32], test_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let n_classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for c in 0..n_classes {
        let mut idx: Vec<usize> = (0..labels.len())
            .filter(|&i| labels[i] as usize == c)
            .collect();
        idx.shuffle(&mut rng);
        let n_test =
            ((test_fraction * idx.len() as f64).round() as usize).min(idx.len().saturating_sub(1));
        test.extend_from_slice(&idx[..n_test]);
        train.extend_from_slice(&idx[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// The probe's (train, held-out test) row indices of the train group: stratified by label,
/// seed `cfg.seed + 3`. The fine-tuned arm uses the same call, hence the same rows.
fn probe_split(labels: &[u32], cfg: &ShiftConfig, what: &str) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(cfg.probe_test_fraction > 0.0 && cfg.probe_test_fraction < 1.0) {
        bail!(
            "{what}: probe_test_fraction must be in (0, 1), got {}",
            cfg.probe_test_fraction
        );
    }
    let (train, test) = stratified_split(labels, cfg.probe_test_fraction, cfg.seed.wrapping_add(3));
    if test.is_empty() {
        bail!(
            "{what}: the train group ({} rows) is too small to hold out a test part",
            labels.len()
        );
    }
    Ok((train, test))
}

fn linear_probe(
    xa: &Matrix,
    la: &[u32],
    xb: &Matrix,
    lb: &[u32],
    cfg: &ShiftConfig,
) -> Result<ProbeResult> {
    let (train, test) = probe_split(la, cfg, "linear probe")?;
    let pick = |idx: &[usize]| idx.iter().map(|&i| la[i]).collect::<Vec<u32>>();
    let model = LogisticRegression::new()
        .c(cfg.c)
        .standardize(true)
        .fit_matrix(&xa.select_rows(&train), &pick(&train))?;
    let correct_in = model.correct_matrix(&xa.select_rows(&test), &pick(&test))?;
    // Labels the probe never saw (a class index beyond the train classes) simply count as wrong.
    let correct_shift = model.correct_matrix(xb, lb)?;
    let seed = cfg.seed.wrapping_add(4);
    Ok(ProbeResult {
        in_distribution: bootstrap_ci(&correct_in, mean, cfg.n_resamples, cfg.level, seed)?,
        shifted: bootstrap_ci(&correct_shift, mean, cfg.n_resamples, cfg.level, seed)?,
        n_train: train.len(),
        n_test: test.len(),
        n_shifted: lb.len(),
        converged: model.converged,
    })
}

// ---------------------------------------------------------------------------------------------
// The fine-tuned arm: a LoRA classifier beside the probe
// ---------------------------------------------------------------------------------------------

/// Settings of the LoRA-fine-tuned classifier of [`fine_tune_lora`].
///
/// The defaults are sized for a CPU: MiniLM (6 layers, d = 384) with LoRA r = 8, α = 16 on
/// query/key/value, f32 arithmetic, texts cut to 48 tokens (movie snippets and tweets average
/// 25–30 tokens), batches of 16, 3 epochs at a peak learning rate of 2e-3 (AdamW, linear decay,
/// gradient norm clipped to 1). The head reads the mean-pooled last hidden state — the feature
/// the probe reads, so both arms start from the same representation.
///
/// ```
/// use replens::studies::distribution_shift::{FineTuneOptions, ShiftConfig};
/// let cfg = ShiftConfig::default().fine_tune(FineTuneOptions::default().epochs(2).lr(1e-3));
/// let ft = cfg.fine_tune.as_ref().unwrap();
/// assert_eq!((ft.epochs, ft.lr, ft.max_len), (2, 1e-3, 48));
/// assert_eq!(ft.lora.rank, 8);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FineTuneOptions {
    /// Passes over the training rows (default 3).
    pub epochs: usize,
    /// Peak AdamW learning rate (default 2e-3), decayed linearly to 0.
    pub lr: f64,
    /// Texts per optimiser step (default 16).
    pub batch_size: usize,
    /// Tokens kept per text, special tokens included (default 48).
    pub max_len: usize,
    /// Fraction of the training rows held out (stratified) for the validation accuracy after
    /// each epoch (default 0.1); the classifier does not train on them.
    pub validation_fraction: f64,
    /// What the head reads (default the token mean, as the probe).
    pub pooling: HeadPooling,
    /// Encoder arithmetic (default f32, ~1.6× faster to train than f64).
    pub precision: Precision,
    /// Rank, α, dropout and target layers (default r = 8, α = 16 on query/key/value). Its
    /// `seed` is not used: the initialisation is seeded by [`ShiftConfig::seed`] + 6, so one
    /// master seed fixes the whole study.
    pub lora: LoraConfig,
}

impl Default for FineTuneOptions {
    fn default() -> Self {
        FineTuneOptions {
            epochs: 3,
            lr: 2e-3,
            batch_size: 16,
            max_len: 48,
            validation_fraction: 0.1,
            pooling: HeadPooling::Mean,
            precision: Precision::F32,
            lora: LoraConfig::default(),
        }
    }
}

impl FineTuneOptions {
    /// Set [`FineTuneOptions::epochs`].
    pub fn epochs(mut self, n: usize) -> Self {
        self.epochs = n;
        self
    }
    /// Set [`FineTuneOptions::lr`].
    pub fn lr(mut self, lr: f64) -> Self {
        self.lr = lr;
        self
    }
    /// Set [`FineTuneOptions::batch_size`].
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }
    /// Set [`FineTuneOptions::max_len`].
    pub fn max_len(mut self, n: usize) -> Self {
        self.max_len = n;
        self
    }
    /// Set [`FineTuneOptions::validation_fraction`].
    pub fn validation_fraction(mut self, f: f64) -> Self {
        self.validation_fraction = f;
        self
    }
    /// Set [`FineTuneOptions::pooling`].
    pub fn pooling(mut self, p: HeadPooling) -> Self {
        self.pooling = p;
        self
    }
    /// Set [`FineTuneOptions::precision`].
    pub fn precision(mut self, p: Precision) -> Self {
        self.precision = p;
        self
    }
    /// Set [`FineTuneOptions::lora`].
    pub fn lora(mut self, l: LoraConfig) -> Self {
        self.lora = l;
        self
    }

    /// The options [`SequenceClassifier::train`] gets (the rest at their defaults).
    fn train_options(&self, seed: u64, progress: bool) -> TrainOptions {
        TrainOptions {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            seed,
            progress,
            ..TrainOptions::default()
        }
    }

    /// Cheap checks, so that bad settings fail before a model is loaded or a text embedded.
    fn check(&self) -> Result<()> {
        self.train_options(0, false)
            .check()
            .map_err(|e| Error::InvalidInput(format!("fine-tuning: {e}")))?;
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            bail!(
                "fine-tuning: validation_fraction must be in (0, 1), got {}",
                self.validation_fraction
            );
        }
        self.lora.resolve_targets()?;
        Ok(())
    }
}

/// Accuracy of the LoRA-fine-tuned classifier on the probe's held-out rows of the train
/// distribution and on the shifted group, with bootstrap CIs computed exactly as the probe's
/// ([`bootstrap_ci`] of the per-row 0/1 correctness, same resamples count, level and seed).
#[derive(Debug, Clone, PartialEq)]
pub struct FineTuneResult {
    /// Accuracy on the held-out part of the train distribution (the probe's test rows).
    pub in_distribution: Ci,
    /// Accuracy on the shifted group (all its rows, as the probe).
    pub shifted: Ci,
    /// Rows trained on: the probe's training rows minus the validation slice.
    pub n_train: usize,
    /// Validation rows (taken from the probe's training rows).
    pub n_validation: usize,
    /// Held-out rows of the train distribution (= the probe's `n_test`).
    pub n_test: usize,
    /// Rows of the shifted group.
    pub n_shifted: usize,
    /// Epochs trained.
    pub epochs: usize,
    /// Validation accuracy after each epoch.
    pub val_accuracies: Vec<f64>,
    /// Mean training loss of each epoch.
    pub train_losses: Vec<f64>,
    /// Trainable scalars (LoRA `A`, `B` and the head).
    pub n_trainable: usize,
    /// Wall time: loading, training and evaluation.
    pub seconds: f64,
}

impl FineTuneResult {
    /// Accuracy drop in distribution → shifted (positive = worse on the shifted set).
    pub fn drop(&self) -> f64 {
        self.in_distribution.estimate - self.shifted.estimate
    }

    /// Two rows, as [`ProbeResult::to_frame`]: `evaluated_on`, `n`, `accuracy`, `lower`,
    /// `upper`, `level`.
    pub fn to_frame(&self, train_name: &str, shifted_name: &str) -> Result<DataFrame> {
        accuracy_frame(
            [&self.in_distribution, &self.shifted],
            [self.n_test, self.n_shifted],
            train_name,
            shifted_name,
        )
    }
}

/// The model directory a [`SequenceClassifier`] can be built from, or a clear error: LoRA
/// fine-tuning here needs a pretrained BERT-family encoder on disk.
fn encoder_dir(model: &Model) -> Result<&Path> {
    if !model.config().is_encoder() {
        bail!(
            "fine-tuning: LoRA fine-tuning needs a BERT-family encoder (e.g. \"minilm\"), but \
             model '{}' is a {} decoder; use an encoder or turn fine-tuning off",
            model.name(),
            model.config().family()
        );
    }
    if model.source().kind == SourceKind::Untrained {
        bail!(
            "fine-tuning: model '{}' is an untrained twin (its weights are not on disk); \
             fine-tune a pretrained encoder",
            model.name()
        );
    }
    Ok(model.source().path.as_path())
}

/// 1.0 where the arg-max of a row of `logits` equals the label, else 0.0. Labels the classifier
/// has no class for count as wrong, as in the probe.
fn correct_rows(logits: &Tensor, labels: &[u32]) -> Result<Vec<f64>> {
    let pred: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
    Ok(pred
        .iter()
        .zip(labels)
        .map(|(p, y)| if p == y { 1.0 } else { 0.0 })
        .collect())
}

/// The paper's other arm (Vargas et al., arXiv 2310.13836: fine-tuning on the training set
/// does not carry over to the test set, while a linear probe holds up): fine-tune `model` with
/// LoRA ([`SequenceClassifier`], Hu et al., arXiv 2106.09685) on the train group and evaluate it
/// where the probe is evaluated.
///
/// Rows: the train group is split exactly as for the probe (stratified,
/// [`ShiftConfig::probe_test_fraction`], seed `cfg.seed + 3`), so the fine-tuned classifier is
/// tested on the probe's held-out rows and on every row of `shifted`. From the probe's training
/// rows a stratified `opts.validation_fraction` is kept aside (seed `cfg.seed + 5`) for the
/// validation accuracy after each epoch; the rest is trained on. Classes are `0..=max label` of
/// the train group; a shifted row with a label beyond them counts as wrong. Accuracy CIs:
/// [`bootstrap_ci`] with `cfg.n_resamples`, `cfg.level`, seed `cfg.seed + 4` (the probe's).
///
/// Errors: `model` is not a pretrained BERT-family encoder; the train group has one class only;
/// too few rows for a test part or a validation slice; bad options.
///
/// ```no_run
/// use replens::prelude::*;
/// use replens::studies::distribution_shift::{fine_tune_lora, FineTuneOptions, LabelledTexts, ShiftConfig};
/// let rt = LabelledTexts::from_jsonl("data/sentiment/rt_polarity_train.jsonl", "rt_polarity", "label")?;
/// let tw = LabelledTexts::from_jsonl("data/sentiment/vader_tweets_test.jsonl", "vader_tweets", "label")?;
/// let cfg = ShiftConfig::default().seed(0).progress(true);
/// let model = Model::load("minilm")?;
/// let ft = fine_tune_lora(&model, &rt.sample(400, 0)?, &tw.sample(100, 1)?, &cfg, &FineTuneOptions::default())?;
/// println!("in distribution {}, shifted {}", ft.in_distribution, ft.shifted);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn fine_tune_lora(
    model: &Model,
    train: &LabelledTexts,
    shifted: &LabelledTexts,
    cfg: &ShiftConfig,
    opts: &FineTuneOptions,
) -> Result<FineTuneResult> {
    let dir = encoder_dir(model)?;
    opts.check()?;
    let n_classes = train.labels.iter().copied().max().unwrap_or(0) as usize + 1;
    if train.labels.iter().all(|&y| y == train.labels[0]) {
        bail!(
            "fine-tuning: the train group '{}' has one class only (every label is {}); a \
             classifier needs at least two",
            train.name,
            train.labels[0]
        );
    }
    let (rows, test) = probe_split(&train.labels, cfg, "fine-tuning")?;
    let row_labels: Vec<u32> = rows.iter().map(|&i| train.labels[i]).collect();
    let (fit, val) = stratified_split(
        &row_labels,
        opts.validation_fraction,
        cfg.seed.wrapping_add(5),
    );
    if val.is_empty() {
        bail!(
            "fine-tuning: the {} training rows of '{}' are too few to keep a validation slice \
             of {}",
            rows.len(),
            train.name,
            opts.validation_fraction
        );
    }
    let examples = |idx: &[usize]| -> Vec<(String, usize)> {
        idx.iter()
            .map(|&i| (train.texts[i].clone(), train.labels[i] as usize))
            .collect()
    };
    let of_rows = |idx: &[usize]| -> Vec<usize> { idx.iter().map(|&j| rows[j]).collect() };
    let splits = Splits::new(
        examples(&of_rows(&fit)),
        examples(&of_rows(&val)),
        examples(&test),
    );

    let started = Instant::now();
    let seed = cfg.seed.wrapping_add(6);
    let ccfg = ClassifierConfig::new(n_classes)
        .max_len(opts.max_len)
        .pooling(opts.pooling)
        .precision(opts.precision)
        .lora(LoraConfig {
            seed,
            ..opts.lora.clone()
        });
    let mut clf = SequenceClassifier::from_dir(dir, ccfg)?;
    let mut log = clf.train(&splits, &opts.train_options(seed, cfg.progress))?;
    // The held-out rows were scored by training's last pass (the test split).
    let test_logits = match log.test_outputs.take() {
        Some(o) => o.logits,
        None => {
            let texts: Vec<&str> = splits.test.iter().map(|(t, _)| t.as_str()).collect();
            clf.logits(&texts)?
        }
    };
    let test_labels: Vec<u32> = test.iter().map(|&i| train.labels[i]).collect();
    let correct_in = correct_rows(&test_logits, &test_labels)?;
    let correct_shift = correct_rows(&clf.logits(&shifted.texts)?, &shifted.labels)?;
    let boot = cfg.seed.wrapping_add(4);
    let result = FineTuneResult {
        in_distribution: bootstrap_ci(&correct_in, mean, cfg.n_resamples, cfg.level, boot)?,
        shifted: bootstrap_ci(&correct_shift, mean, cfg.n_resamples, cfg.level, boot)?,
        n_train: splits.train.len(),
        n_validation: splits.validation.len(),
        n_test: test.len(),
        n_shifted: shifted.len(),
        epochs: opts.epochs,
        val_accuracies: log.val_accuracies(),
        train_losses: log.train_losses(),
        n_trainable: clf.n_trainable(),
        seconds: started.elapsed().as_secs_f64(),
    };
    if cfg.progress {
        eprintln!(
            "lora: {} training rows, {:.1} s; accuracy {} (held out), {} ({})",
            result.n_train, result.seconds, result.in_distribution, result.shifted, shifted.name
        );
    }
    Ok(result)
}

/// Probe and fine-tuned classifier side by side, one row per method present (`probe`, `lora`):
/// `method`, `n_train`, `n_test`, `n_shifted`, `in_distribution`, `in_lower`, `in_upper`,
/// `shifted`, `shifted_lower`, `shifted_upper`, `drop` (= in_distribution − shifted), `level`.
/// Both are evaluated on the same rows (see [`fine_tune_lora`]); errors when both are `None`.
pub fn comparison_frame(
    probe: Option<&ProbeResult>,
    lora: Option<&FineTuneResult>,
) -> Result<DataFrame> {
    // (method, n_train, n_test, n_shifted, in-distribution CI, shifted CI)
    let mut rows = Vec::new();
    if let Some(p) = probe {
        rows.push((
            "probe",
            p.n_train,
            p.n_test,
            p.n_shifted,
            p.in_distribution,
            p.shifted,
        ));
    }
    if let Some(f) = lora {
        rows.push((
            "lora",
            f.n_train,
            f.n_test,
            f.n_shifted,
            f.in_distribution,
            f.shifted,
        ));
    }
    if rows.is_empty() {
        bail!("comparison_frame: neither a probe nor a fine-tuned result to compare");
    }
    let counts =
        |k: usize| -> Vec<u32> { rows.iter().map(|r| [r.1, r.2, r.3][k] as u32).collect() };
    let values =
        |f: fn(&Ci, &Ci) -> f64| -> Vec<f64> { rows.iter().map(|r| f(&r.4, &r.5)).collect() };
    Ok(DataFrame::new_infer_height(vec![
        Column::new(
            "method".into(),
            rows.iter().map(|r| r.0).collect::<Vec<&str>>(),
        ),
        Column::new("n_train".into(), counts(0)),
        Column::new("n_test".into(), counts(1)),
        Column::new("n_shifted".into(), counts(2)),
        Column::new("in_distribution".into(), values(|a, _| a.estimate)),
        Column::new("in_lower".into(), values(|a, _| a.lower)),
        Column::new("in_upper".into(), values(|a, _| a.upper)),
        Column::new("shifted".into(), values(|_, b| b.estimate)),
        Column::new("shifted_lower".into(), values(|_, b| b.lower)),
        Column::new("shifted_upper".into(), values(|_, b| b.upper)),
        Column::new("drop".into(), values(|a, b| a.estimate - b.estimate)),
        Column::new("level".into(), values(|a, _| a.level)),
    ])?)
}

/// How often the MMD permutation test and the C2ST reject over repeated random draws: the
/// level under H0 ([`null_rejections`]) or the power under a shift ([`power`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RejectionRates {
    /// What was repeated (e.g. "random halves of rt_polarity").
    pub label: String,
    /// Number of draws.
    pub trials: usize,
    /// Rows per group in each draw.
    pub n_per_group: usize,
    /// Level α of each test.
    pub alpha: f64,
    /// Draws in which the MMD²_u permutation test rejected.
    pub mmd_rejections: usize,
    /// Draws in which the C2ST rejected.
    pub c2st_rejections: usize,
    /// 99.9 % band of Binomial(trials, α): where the counts of an exact level-α test on
    /// independent draws fall 999 times in 1000.
    pub band: (usize, usize),
}

impl RejectionRates {
    /// MMD rejection rate.
    pub fn mmd_rate(&self) -> f64 {
        self.mmd_rejections as f64 / self.trials as f64
    }

    /// C2ST rejection rate.
    pub fn c2st_rate(&self) -> f64 {
        self.c2st_rejections as f64 / self.trials as f64
    }

    /// Two rows (MMD, C2ST): `draws`, `test`, `trials`, `n_per_group`, `rejections`, `rate`,
    /// `alpha`, `band_lo`, `band_hi`.
    pub fn to_frame(&self) -> Result<DataFrame> {
        let t = self.trials as u32;
        Ok(DataFrame::new_infer_height(vec![
            Column::new("draws".into(), [self.label.as_str(), self.label.as_str()]),
            Column::new("test".into(), ["MMD²_u (permutation)", "C2ST"]),
            Column::new("trials".into(), [t, t]),
            Column::new(
                "n_per_group".into(),
                [self.n_per_group as u32, self.n_per_group as u32],
            ),
            Column::new(
                "rejections".into(),
                [self.mmd_rejections as u32, self.c2st_rejections as u32],
            ),
            Column::new("rate".into(), [self.mmd_rate(), self.c2st_rate()]),
            Column::new("alpha".into(), [self.alpha, self.alpha]),
            Column::new("band_lo".into(), [self.band.0 as u32, self.band.0 as u32]),
            Column::new("band_hi".into(), [self.band.1 as u32, self.band.1 as u32]),
        ])?)
    }
}

fn count_rejections(
    label: String,
    trials: usize,
    n_per_group: usize,
    cfg: &ShiftConfig,
    mut draw: impl FnMut(usize) -> Result<(Matrix, Matrix)>,
) -> Result<RejectionRates> {
    if trials == 0 {
        bail!("rejection rates: trials must be ≥ 1");
    }
    let opts = cfg.tests();
    let (mut mmd, mut c2) = (0, 0);
    for t in 0..trials {
        let (x, y) = draw(t)?;
        let seed = cfg.seed.wrapping_add(t as u64);
        let mo = MmdOptions { seed, ..opts.mmd };
        mmd += usize::from(mmd_permutation_test_matrix(&x, &y, &mo)?.p_value <= cfg.alpha);
        let co = C2stOptions { seed, ..opts.c2st };
        c2 += usize::from(c2st_matrix(&x, &y, &co)?.p_value <= cfg.alpha);
    }
    Ok(RejectionRates {
        label,
        trials,
        n_per_group,
        alpha: cfg.alpha,
        mmd_rejections: mmd,
        c2st_rejections: c2,
        band: binomial_band(trials, cfg.alpha, 0.999),
    })
}

/// The negative control repeated: `trials` random splits of one set of embeddings `(n, d)`
/// into two halves of ⌊n/2⌋ rows, each tested with the MMD permutation test
/// (`cfg.n_permutations`) and the C2ST at `cfg.alpha`. Both tests are exact or conservative
/// under H0, so each split rejects with probability ≤ α. (The splits reuse the same rows, so
/// their outcomes are not independent; the binomial band is a guide, not an exact bound.)
///
/// ```
/// use replens::candle_core::{Device, Tensor};
/// use replens::studies::distribution_shift::{null_rejections, ShiftConfig};
/// let emb = Tensor::randn(0f32, 1., (60, 4), &Device::Cpu)?;
/// let r = null_rejections(&emb, 20, &ShiftConfig::default().n_permutations(49))?;
/// assert!(r.mmd_rejections <= r.band.1 && r.c2st_rejections <= r.band.1);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn null_rejections(emb: &Tensor, trials: usize, cfg: &ShiftConfig) -> Result<RejectionRates> {
    let all = Matrix::from_tensor("null_rejections: embeddings", emb)?;
    let half = all.rows() / 2;
    if half < 4 {
        bail!(
            "null_rejections: needs at least 8 rows to split, got {}",
            all.rows()
        );
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(1000));
    let mut idx: Vec<usize> = (0..all.rows()).collect();
    count_rejections(
        format!("random halves of {} rows", all.rows()),
        trials,
        half,
        cfg,
        |_| {
            idx.shuffle(&mut rng);
            Ok((
                all.select_rows(&idx[..half]),
                all.select_rows(&idx[half..2 * half]),
            ))
        },
    )
}

/// Power of the MMD permutation test and the C2ST: `trials` draws of `n_per_group` random
/// rows (without replacement) from each of x and y, each tested at `cfg.alpha`.
pub fn power(
    x: &Tensor,
    y: &Tensor,
    n_per_group: usize,
    trials: usize,
    cfg: &ShiftConfig,
) -> Result<RejectionRates> {
    let mx = Matrix::from_tensor("power: x", x)?;
    let my = Matrix::from_tensor("power: y", y)?;
    if n_per_group < 4 || n_per_group > mx.rows().min(my.rows()) {
        bail!(
            "power: n_per_group must be in 4..={} (the smaller group), got {n_per_group}",
            mx.rows().min(my.rows())
        );
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(2000));
    let mut ix: Vec<usize> = (0..mx.rows()).collect();
    let mut iy: Vec<usize> = (0..my.rows()).collect();
    count_rejections(
        format!("{n_per_group} random rows of each group"),
        trials,
        n_per_group,
        cfg,
        |_| {
            ix.shuffle(&mut rng);
            iy.shuffle(&mut rng);
            Ok((
                mx.select_rows(&ix[..n_per_group]),
                my.select_rows(&iy[..n_per_group]),
            ))
        },
    )
}

impl ShiftResult {
    /// Probe vs fine-tuned classifier, one row each ([`comparison_frame`]); errors when the
    /// result has neither (no labels and no fine-tuning).
    pub fn comparison_frame(&self) -> Result<DataFrame> {
        comparison_frame(self.probe.as_ref(), self.fine_tune.as_ref())
    }

    /// Scores of principal component `pc` (1-based) for the rows of `group`.
    pub fn scores(&self, group: &str, pc: usize) -> Result<Vec<f64>> {
        if pc == 0 || pc > self.pca.n_components() {
            bail!(
                "scores: pc must be in 1..={}, got {pc}",
                self.pca.n_components()
            );
        }
        let g = self.projections.column("group")?.str()?;
        let v = self.projections.column(&format!("pc{pc}"))?.f64()?;
        let out: Vec<f64> = g
            .iter()
            .zip(v.iter())
            .filter(|(name, _)| *name == Some(group))
            .filter_map(|(_, x)| x)
            .collect();
        if out.is_empty() {
            bail!(
                "scores: no group '{group}' (groups: '{}', '{}')",
                self.train_name,
                self.shifted_name
            );
        }
        Ok(out)
    }

    /// Scatter plot of the two groups on principal components `pc_x` and `pc_y` (1-based),
    /// with Gaussian-KDE contours enclosing 25 %, 50 % and 75 % of each group's mass.
    pub fn scatter_chart(&self, pc_x: usize, pc_y: usize) -> Result<Chart> {
        let ev = |pc: usize| 100.0 * self.pca.explained_variance_ratio[pc - 1];
        let mut chart = ScatterChart::new(format!(
            "{} vs {}: PCA of the embeddings",
            self.train_name, self.shifted_name
        ));
        for g in [&self.train_name, &self.shifted_name] {
            chart = chart.group(g.as_str(), self.scores(g, pc_x)?, self.scores(g, pc_y)?);
        }
        chart
            .x_label(format!("PC {pc_x} ({:.1}% of variance)", ev(pc_x)))
            .y_label(format!("PC {pc_y} ({:.1}% of variance)", ev(pc_y)))
            .build()
    }

    fn summary_rows(&self) -> Vec<(String, String)> {
        let mut rows = vec![
            (
                "groups".to_string(),
                format!(
                    "{} ({} texts) vs {} ({} texts)",
                    self.train_name, self.report.n_x, self.shifted_name, self.report.n_y
                ),
            ),
            ("embedding dimension".into(), self.report.dim.to_string()),
            (
                "PCA: variance of PC1, PC2".into(),
                format!(
                    "{:.1}%, {:.1}%",
                    100.0 * self.pca.explained_variance_ratio[0],
                    100.0
                        * self
                            .pca
                            .explained_variance_ratio
                            .get(1)
                            .copied()
                            .unwrap_or(0.0)
                ),
            ),
        ];
        if let Some(p) = &self.probe {
            rows.push((
                format!("probe accuracy: {} (held out)", self.train_name),
                p.in_distribution.to_string(),
            ));
            rows.push((
                format!("probe accuracy: {}", self.shifted_name),
                p.shifted.to_string(),
            ));
        }
        if let Some(f) = &self.fine_tune {
            rows.push((
                format!("LoRA accuracy: {} (held out)", self.train_name),
                f.in_distribution.to_string(),
            ));
            rows.push((
                format!("LoRA accuracy: {}", self.shifted_name),
                f.shifted.to_string(),
            ));
        }
        rows
    }

    /// Called by the evcxr kernel when the result ends a cell: the summary, then the tests.
    pub fn evcxr_display(&self) {
        self.html().evcxr_display();
    }
}

impl DisplayHtml for ShiftResult {
    fn html(&self) -> Html {
        let rows: Vec<Vec<String>> = self
            .summary_rows()
            .into_iter()
            .map(|(k, v)| vec![k, v])
            .collect();
        Html::new(format!(
            "<div><b>Distribution shift: {} vs {}</b>{}{}</div>",
            escape_html(&self.train_name),
            escape_html(&self.shifted_name),
            table_html(&["quantity", "value"], &rows),
            self.report.html().as_str()
        ))
    }
}

impl std::fmt::Display for ShiftResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, v) in self.summary_rows() {
            writeln!(f, "{k:<40} {v}")?;
        }
        write!(f, "{}", self.report)
    }
}
