//! Study 5, end to end: AdUE against the classic uncertainty baselines on a LoRA-fine-tuned
//! classifier (Zabolotnyi et al., *AdUE: Improving Uncertainty Estimation Head for LoRA
//! Adapters in LLMs*, arXiv 2505.15443; official code `github.com/zaaabik/AdUE`).
//!
//! For every seed:
//!
//! 1. fine-tune a [`SequenceClassifier`] (the packaged all-MiniLM-L6-v2 by default) with LoRA
//!    (r = 8, α = 16 on query/key/value) on the training split, monitoring the validation
//!    split, then freeze it. Optionally the head first becomes a logistic-regression probe on
//!    the frozen features ([`AdueStudyConfig::warm_start`], LP-FT), which lets a short CPU run
//!    end with a classifier that has learned;
//! 2. read the features z (last-layer `[CLS]` state, or the masked mean with
//!    [`AdueStudyConfig::pooling`]) and logits on train / validation / test;
//! 3. score every test example with
//!    * SR = 1 − max_c p_c (softmax response),
//!    * predictive entropy −Σ_c p_c ln p_c,
//!    * MD: Mahalanobis distance to the nearest class mean (tied covariance, L2-normalised
//!      features), fitted on the training features and gold labels,
//!    * RMD: MD minus the distance to one background Gaussian (fitted the same way),
//!    * AdUE: `U = (1 − SmoothMax_λ(softmax(head'(z)))) / (1 − 1/C)`, a head initialised
//!      from the classifier head and trained with BCE against the error indicator plus the SR
//!      and L2-SP regularisers ([`crate::train::adue`]), its hyper-parameters picked on the
//!      validation split over an [`AdueGrid`];
//! 4. measure ROC-AUC × 100 of each score against the error indicator e = 1[ŷ ≠ y] on test,
//!    the area under the accuracy–rejection curve (AUARC), accuracy and ECE.
//!
//! Results are aggregated as mean ± sample std over seeds, as in the paper's tables
//! ([`mean_std`]).
//!
//! **Which data trains the AdUE head.** `STUDIES.md` specifies the selection (pick by the
//! validation ROC-AUC, report test) but not the data the head's BCE is fitted on. We follow the
//! paper's description: the head is trained on the classifier's predictions on the *training*
//! split and early-stopped / selected on validation ([`HeadData::Train`]). A fine-tuned
//! classifier can be right on every training example, and then the error target has one class;
//! [`HeadData::Auto`] (the default) falls back to splitting the validation set into two
//! halves (fit on one, early-stop and select on the other, [`HeadData::ValidationHalves`]).
//! Each seed records which one it used ([`SeedRun::adue_data`]).
//!
//! AdUE never touches the classifier (its head is a copy), so accuracy is the same for every
//! method; [`SeedRun::accuracy_after_adue`] re-measures it after the AdUE fit to show it.
//!
//! ```no_run
//! use replens::studies::adue::{run_adue_study, AdueStudyConfig};
//! use replens::train::lora::Pooling;
//! // the settings of notebooks/05-adue.ipynb: 45–100 s per seed on a 2-core CPU
//! let cfg = AdueStudyConfig::new("rt_polarity")
//!     .max_per_split(300)
//!     .max_len(32)
//!     .pooling(Pooling::Mean)
//!     .warm_start(1.0)
//!     .epochs(1)
//!     .lr(2e-3)
//!     .seeds(vec![0, 1]);
//! let result = run_adue_study(&cfg)?;
//! println!("{result}");
//! let roc = result.roc_chart()?; // one ROC curve per method, first seed
//! # Ok::<(), replens::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use polars::prelude::{Column, DataFrame};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::display::{escape_html, table_html, DisplayHtml, Html};
use crate::error::{bail, Error, Result};
use crate::metrics::uncertainty::{
    accuracy_rejection_curve, auarc, ece, error_indicator, mean_std, predictive_entropy, roc_auc,
    softmax, softmax_response, Mahalanobis, MeanStd, RelativeMahalanobis,
};
use crate::plot::{Chart, LineChart, RocChart};
use crate::train::adue::{grid_search, AdueConfig, AdueGrid, GridPoint, LinearHead, Split};
use crate::train::lora::{
    accuracy, read_labelled_jsonl, ClassifierConfig, LoraConfig, Pooling, Precision,
    SequenceClassifier, Splits, TrainOptions,
};

/// The methods of the results table, in the paper's row order.
pub const METHODS: [&str; 5] = ["SR", "Entropy", "MD", "RMD", "AdUE"];

/// Split names in file order (`<name>_<split>.jsonl`).
pub const SPLITS: [&str; 3] = ["train", "validation", "test"];

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// Directories searched for `<name>_{train,validation,test}.jsonl`, in order:
/// `$REPLENS_DATA/classification`, `data/classification` and `../data/classification`
/// (relative to the working directory, so a notebook in `notebooks/` finds them), and the
/// crate's own `data/classification`.
pub fn classification_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(root) = std::env::var_os("REPLENS_DATA") {
        dirs.push(PathBuf::from(root).join("classification"));
    }
    dirs.push(PathBuf::from("data/classification"));
    dirs.push(PathBuf::from("../data/classification"));
    dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/classification"));
    dirs
}

/// Keep at most `cap` of `examples`, stratified by label: each class keeps
/// `cap · n_c / n` examples (largest remainders get the rounding, so the total is exactly
/// `cap`), drawn at random with `seed`; the kept examples stay in their original order.
/// Fewer than `cap` examples are returned unchanged. A `cap` of 0 is an error.
///
/// ```
/// use replens::studies::adue::stratified_subsample;
/// let data: Vec<(String, usize)> = (0..100).map(|i| (format!("t{i}"), usize::from(i < 20))).collect();
/// let kept = stratified_subsample(&data, 10, 0, "train")?;
/// assert_eq!(kept.len(), 10);
/// assert_eq!(kept.iter().filter(|(_, y)| *y == 1).count(), 2); // 20 % of 10
/// assert!(stratified_subsample(&data, 0, 0, "train").is_err());
/// # Ok::<(), replens::Error>(())
/// ```
pub fn stratified_subsample(
    examples: &[(String, usize)],
    cap: usize,
    seed: u64,
    what: &str,
) -> Result<Vec<(String, usize)>> {
    if cap == 0 {
        bail!("{what}: the cap on examples per split is 0 (use at least 1, or no cap)");
    }
    let n = examples.len();
    if n <= cap {
        return Ok(examples.to_vec());
    }
    // A map, not a Vec indexed by label: a stray huge label must not allocate memory.
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, (_, y)) in examples.iter().enumerate() {
        groups.entry(*y).or_default().push(i);
    }
    let mut by_class: Vec<Vec<usize>> = groups.into_values().collect();
    let n_classes = by_class.len();
    // Largest-remainder (Hamilton) allocation: proportional, summing to exactly `cap`.
    let quotas: Vec<f64> = by_class
        .iter()
        .map(|ix| ix.len() as f64 * cap as f64 / n as f64)
        .collect();
    let mut take: Vec<usize> = quotas.iter().map(|q| q.floor() as usize).collect();
    let mut rest: Vec<usize> = (0..n_classes).collect();
    rest.sort_by(|&a, &b| {
        (quotas[b] - quotas[b].floor())
            .total_cmp(&(quotas[a] - quotas[a].floor()))
            .then(a.cmp(&b))
    });
    let mut missing = cap - take.iter().sum::<usize>();
    for c in rest {
        if missing == 0 {
            break;
        }
        if take[c] < by_class[c].len() {
            take[c] += 1;
            missing -= 1;
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut keep: Vec<usize> = Vec::with_capacity(cap);
    for (ix, &k) in by_class.iter_mut().zip(&take) {
        ix.shuffle(&mut rng);
        keep.extend_from_slice(&ix[..k]);
    }
    keep.sort_unstable();
    Ok(keep.into_iter().map(|i| examples[i].clone()).collect())
}

/// Read `<dir>/<name>_{train,validation,test}.jsonl` (fields `text`, `label`), capping each
/// split at `max_per_split[k]` examples by [`stratified_subsample`] with `seed`.
pub fn load_classification_from(
    dir: impl AsRef<Path>,
    name: &str,
    max_per_split: [Option<usize>; 3],
    seed: u64,
) -> Result<Splits> {
    let dir = dir.as_ref();
    let mut out: Vec<Vec<(String, usize)>> = Vec::with_capacity(3);
    for (split, cap) in SPLITS.iter().zip(max_per_split) {
        let path = dir.join(format!("{name}_{split}.jsonl"));
        if !path.exists() {
            bail!(
                "load_classification: dataset '{name}': {} does not exist",
                path.display()
            );
        }
        let all = read_labelled_jsonl(&path, "text", "label")?;
        if all.is_empty() {
            bail!("load_classification: {} has no examples", path.display());
        }
        let kept = match cap {
            Some(c) => stratified_subsample(&all, c, seed, &path.display().to_string())?,
            None => all,
        };
        out.push(kept);
    }
    let test = out.pop().unwrap_or_default();
    let validation = out.pop().unwrap_or_default();
    let train = out.pop().unwrap_or_default();
    Ok(Splits::new(train, validation, test))
}

/// Load the classification data set `name` (e.g. `"conll2010_uncertainty"`, `"bbc_news"`,
/// `"spam_assassin"`, `"brown_genre"`; see `docs/DATA.md`) from the first of
/// [`classification_dirs`] that holds its training file, keeping at most `max_per_split`
/// examples of each split (stratified by label, drawn with `seed`; `None`: all).
///
/// Errors name every file tried when the data set is not found, and the file and line of a
/// malformed row; a cap of 0 is an error.
///
/// ```no_run
/// let splits = replens::studies::adue::load_classification("conll2010_uncertainty", Some(100), 0)?;
/// assert_eq!(splits.train.len(), 100);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn load_classification(name: &str, max_per_split: Option<usize>, seed: u64) -> Result<Splits> {
    load_classification_capped(name, [max_per_split; 3], seed)
}

/// [`load_classification`] with one cap per split (train, validation, test).
pub fn load_classification_capped(
    name: &str,
    max_per_split: [Option<usize>; 3],
    seed: u64,
) -> Result<Splits> {
    if max_per_split.contains(&Some(0)) {
        bail!("load_classification: the cap on examples per split is 0 (use at least 1, or None)");
    }
    if name.is_empty() || name.contains(['/', '\\']) {
        bail!("load_classification: '{name}' is not a data set name (e.g. \"bbc_news\")");
    }
    let dirs = classification_dirs();
    for dir in &dirs {
        if dir.join(format!("{name}_train.jsonl")).exists() {
            return load_classification_from(dir, name, max_per_split, seed);
        }
    }
    let tried: Vec<String> = dirs
        .iter()
        .map(|d| d.join(format!("{name}_train.jsonl")).display().to_string())
        .collect();
    bail!(
        "load_classification: no data set '{name}': tried {} (run scripts/fetch_data.py, or set \
         REPLENS_DATA)",
        tried.join(", ")
    )
}

/// Number of classes of the splits (1 + the largest label), checked: every split non-empty,
/// at least two classes in the training split.
fn n_classes_of(splits: &Splits) -> Result<usize> {
    let c = [&splits.train, &splits.validation, &splits.test]
        .iter()
        .flat_map(|s| s.iter().map(|(_, y)| y + 1))
        .max()
        .unwrap_or(0);
    if c < 2 {
        bail!(
            "AdUE study: the data has only one class (every label is 0): uncertainty of a \
             classifier needs at least two classes"
        );
    }
    splits.check(c)?;
    Ok(c)
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Which examples the AdUE head is trained on (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadData {
    /// Fit on the training split's features and errors, early-stop / select on validation.
    Train,
    /// Fit on one seeded half of the validation split, early-stop / select on the other.
    ValidationHalves,
    /// [`HeadData::Train`] when the classifier makes both errors and correct predictions on
    /// the training split, otherwise [`HeadData::ValidationHalves`].
    #[default]
    Auto,
}

/// Where the data comes from.
#[derive(Debug, Clone)]
enum Source {
    Named,
    Explicit(Splits),
}

/// Settings of [`run_adue_study`]. Build with [`AdueStudyConfig::new`] (a data set by name)
/// or [`AdueStudyConfig::from_splits`] and the builder methods.
///
/// Defaults are CPU-sized: MiniLM, 64 tokens, f32 training, 2 LoRA epochs at lr 5e-4 in
/// batches of 16, seeds `[0, 1, 2]`, a 2-point AdUE grid (lr {4e-4, 1e-4}, α 0.1, β 0.1;
/// [`AdueGrid::paper`] is the paper's 27 points), 15 ECE bins, no cap on split sizes.
///
/// ```
/// use replens::studies::adue::AdueStudyConfig;
/// use replens::train::adue::AdueGrid;
/// let cfg = AdueStudyConfig::new("bbc_news").max_per_split(100).seeds(vec![0, 1]).grid(AdueGrid::paper());
/// assert_eq!(cfg.max_examples, [Some(100); 3]);
/// assert_eq!(cfg.grid.len(), 27);
/// ```
#[derive(Debug, Clone)]
pub struct AdueStudyConfig {
    /// Data set name (the row label in tables; the file stem for a named data set).
    pub dataset: String,
    source: Source,
    /// At most this many examples of train / validation / test (stratified subsample).
    pub max_examples: [Option<usize>; 3],
    /// Seed of the subsampling (the same data for every training seed).
    pub data_seed: u64,
    /// Model directory or alias for [`SequenceClassifier::load`] (`"minilm"`).
    pub model: String,
    /// Tokens per text, special tokens included.
    pub max_len: usize,
    /// The classifier's feature `z` (the paper: the first token; MiniLM was trained with the mean).
    pub pooling: Pooling,
    /// `Some(c)`: before LoRA, fit the head as a logistic-regression probe with inverse penalty
    /// `c` on the frozen base features (LP-FT, [`SequenceClassifier::warm_start_head`]);
    /// `None`: the head starts at HF's random init, as in the paper.
    pub warm_start: Option<f64>,
    /// LoRA settings; its `seed` is replaced by each run's seed.
    pub lora: LoraConfig,
    /// Encoder precision while training and scoring.
    pub precision: Precision,
    /// LoRA fine-tuning epochs.
    pub epochs: usize,
    /// LoRA peak learning rate (AdamW, linear decay).
    pub lr: f64,
    /// LoRA batch size.
    pub batch_size: usize,
    /// One full run per seed (LoRA init, shuffling, AdUE shuffling).
    pub seeds: Vec<u64>,
    /// Hyper-parameters searched for AdUE.
    pub grid: AdueGrid,
    /// All other AdUE settings (epochs, patience, batch size, λ); lr / α / β come from `grid`.
    pub adue: AdueConfig,
    /// Data the AdUE head is fitted on.
    pub head_data: HeadData,
    /// Bins of the ECE.
    pub ece_bins: usize,
    /// Progress bars and per-epoch lines on stderr.
    pub progress: bool,
}

impl AdueStudyConfig {
    /// A study of the data set `dataset` read by [`load_classification`].
    pub fn new(dataset: impl Into<String>) -> Self {
        Self {
            dataset: dataset.into(),
            source: Source::Named,
            max_examples: [None; 3],
            data_seed: 0,
            model: "minilm".into(),
            max_len: 64,
            pooling: Pooling::Cls,
            warm_start: None,
            lora: LoraConfig::default(),
            precision: Precision::F32,
            epochs: 2,
            lr: 5e-4,
            batch_size: 16,
            seeds: vec![0, 1, 2],
            grid: AdueGrid::new(vec![4e-4, 1e-4], vec![0.1], vec![0.1]),
            adue: AdueConfig::default(),
            head_data: HeadData::Auto,
            ece_bins: 15,
            progress: false,
        }
    }

    /// A study of explicit splits (labels `0..C`), called `name` in tables.
    pub fn from_splits(name: impl Into<String>, splits: Splits) -> Self {
        let mut cfg = Self::new(name);
        cfg.source = Source::Explicit(splits);
        cfg
    }

    /// Cap every split at `n` examples.
    pub fn max_per_split(mut self, n: usize) -> Self {
        self.max_examples = [Some(n); 3];
        self
    }

    /// Cap train / validation / test at these sizes.
    pub fn max_examples(mut self, train: usize, validation: usize, test: usize) -> Self {
        self.max_examples = [Some(train), Some(validation), Some(test)];
        self
    }

    /// Seed of the subsampling.
    pub fn data_seed(mut self, seed: u64) -> Self {
        self.data_seed = seed;
        self
    }

    /// Model directory or alias.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// Tokens per text.
    pub fn max_len(mut self, n: usize) -> Self {
        self.max_len = n;
        self
    }

    /// The classifier's feature: first token ([`Pooling::Cls`], default) or masked mean.
    pub fn pooling(mut self, p: Pooling) -> Self {
        self.pooling = p;
        self
    }

    /// Warm-start the head as a logistic-regression probe with inverse penalty `c` before
    /// LoRA (LP-FT); see [`SequenceClassifier::warm_start_head`].
    pub fn warm_start(mut self, c: f64) -> Self {
        self.warm_start = Some(c);
        self
    }

    /// LoRA settings.
    pub fn lora(mut self, lora: LoraConfig) -> Self {
        self.lora = lora;
        self
    }

    /// Encoder precision (f32 trains ~1.6× faster than f64).
    pub fn precision(mut self, p: Precision) -> Self {
        self.precision = p;
        self
    }

    /// LoRA epochs.
    pub fn epochs(mut self, n: usize) -> Self {
        self.epochs = n;
        self
    }

    /// LoRA learning rate.
    pub fn lr(mut self, lr: f64) -> Self {
        self.lr = lr;
        self
    }

    /// LoRA batch size.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// Seeds, one full run each.
    pub fn seeds(mut self, seeds: Vec<u64>) -> Self {
        self.seeds = seeds;
        self
    }

    /// AdUE grid ([`AdueGrid::paper`] for the paper's 27 points).
    pub fn grid(mut self, grid: AdueGrid) -> Self {
        self.grid = grid;
        self
    }

    /// Base AdUE settings (epochs, patience, batch size, λ).
    pub fn adue(mut self, adue: AdueConfig) -> Self {
        self.adue = adue;
        self
    }

    /// Data the AdUE head is fitted on.
    pub fn head_data(mut self, h: HeadData) -> Self {
        self.head_data = h;
        self
    }

    /// ECE bins.
    pub fn ece_bins(mut self, n: usize) -> Self {
        self.ece_bins = n;
        self
    }

    /// Progress reporting on stderr.
    pub fn progress(mut self, yes: bool) -> Self {
        self.progress = yes;
        self
    }

    fn check(&self) -> Result<()> {
        if self.seeds.is_empty() {
            bail!("AdueStudyConfig: seeds is empty (e.g. vec![0, 1, 2])");
        }
        if self.max_examples.contains(&Some(0)) {
            bail!(
                "AdueStudyConfig: the cap on examples per split is 0 (max_examples {:?})",
                self.max_examples
            );
        }
        if self.grid.is_empty() {
            bail!("AdueStudyConfig: the AdUE grid is empty");
        }
        if self.ece_bins == 0 {
            bail!("AdueStudyConfig: ece_bins must be at least 1");
        }
        if self.max_len < 2 {
            bail!(
                "AdueStudyConfig: max_len must be at least 2 tokens, got {}",
                self.max_len
            );
        }
        if self.epochs == 0 || self.batch_size == 0 {
            bail!("AdueStudyConfig: epochs and batch_size must be at least 1");
        }
        if let Some(c) = self.warm_start {
            if !(c.is_finite() && c > 0.0) {
                bail!("AdueStudyConfig: the warm-start probe's C must be positive, got {c}");
            }
        }
        Ok(())
    }

    /// The splits this study runs on (read and capped, not yet checked).
    pub fn load_splits(&self) -> Result<Splits> {
        match &self.source {
            Source::Named => {
                load_classification_capped(&self.dataset, self.max_examples, self.data_seed)
            }
            Source::Explicit(s) => {
                let cap = |data: &[(String, usize)], k: usize| match self.max_examples[k] {
                    Some(c) => stratified_subsample(data, c, self.data_seed, SPLITS[k]),
                    None => Ok(data.to_vec()),
                };
                Ok(Splits::new(
                    cap(&s.train, 0)?,
                    cap(&s.validation, 1)?,
                    cap(&s.test, 2)?,
                ))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// Everything measured in one seed's run. Per-method vectors follow [`METHODS`].
#[derive(Debug, Clone)]
pub struct SeedRun {
    /// The seed of LoRA's initialisation, the shuffling and AdUE's shuffling.
    pub seed: u64,
    /// Test accuracy of the fine-tuned classifier.
    pub accuracy: f64,
    /// Test accuracy measured again after the AdUE fit (equal to `accuracy`: AdUE cannot
    /// change the classifier).
    pub accuracy_after_adue: f64,
    /// Validation accuracy after each LoRA epoch.
    pub val_accuracies: Vec<f64>,
    /// Training accuracy of the warm-start probe (`None` without warm start).
    pub probe_train_accuracy: Option<f64>,
    /// Test ECE of the classifier's softmax.
    pub ece: f64,
    /// ROC-AUC × 100 of each method's score against the test error indicator.
    pub roc_auc: Vec<f64>,
    /// Area under the accuracy–rejection curve (0..1) of each method on test.
    pub auarc: Vec<f64>,
    /// Test uncertainty scores of each method (higher = more uncertain).
    pub scores: Vec<Vec<f64>>,
    /// Test error indicator 1[ŷ ≠ y].
    pub errors: Vec<bool>,
    /// Every AdUE grid point with its validation ROC-AUC.
    pub adue_grid: Vec<GridPoint>,
    /// The selected grid point.
    pub adue_selected: GridPoint,
    /// What the AdUE head was fitted on (e.g. `"train (n=200)"`).
    pub adue_data: String,
    /// Wall time of the LoRA fine-tuning.
    pub seconds_finetune: f64,
    /// Wall time of the AdUE grid search.
    pub seconds_adue: f64,
    /// Wall time of the whole seed (model load to last metric).
    pub seconds: f64,
}

/// Result of [`run_adue_study`]: per-seed runs and their mean ± std.
#[derive(Debug, Clone)]
pub struct AdueStudyResult {
    /// Data set name.
    pub dataset: String,
    /// Number of classes C.
    pub n_classes: usize,
    /// Examples in train / validation / test.
    pub sizes: [usize; 3],
    /// The configuration that produced it.
    pub config: AdueStudyConfig,
    /// One run per seed, in the order of `config.seeds`.
    pub runs: Vec<SeedRun>,
    /// ROC-AUC × 100 per method (mean ± std over seeds), in [`METHODS`] order.
    pub roc_auc: Vec<MeanStd>,
    /// AUARC per method (mean ± std over seeds).
    pub auarc: Vec<MeanStd>,
    /// Test accuracy of the classifier (mean ± std over seeds); the same for every method.
    pub accuracy: MeanStd,
    /// Test ECE of the classifier's softmax (mean ± std over seeds).
    pub ece: MeanStd,
    /// Wall time of the whole study.
    pub seconds: f64,
}

impl AdueStudyResult {
    /// ROC-AUC × 100 (mean ± std) of `method` (one of [`METHODS`]).
    pub fn auc(&self, method: &str) -> Option<MeanStd> {
        METHODS
            .iter()
            .position(|m| *m == method)
            .map(|i| self.roc_auc[i])
    }

    /// One row per method: `dataset`, `method`, `roc_auc_mean`, `roc_auc_std`,
    /// `auarc_mean`, `auarc_std`, `accuracy_mean`, `ece_mean`, `seeds`. Stack the frames of
    /// several data sets with polars' `vstack`.
    pub fn to_frame(&self) -> Result<DataFrame> {
        let k = METHODS.len();
        Ok(DataFrame::new_infer_height(vec![
            Column::new("dataset".into(), vec![self.dataset.as_str(); k]),
            Column::new("method".into(), METHODS.to_vec()),
            Column::new(
                "roc_auc_mean".into(),
                self.roc_auc.iter().map(|m| m.mean).collect::<Vec<_>>(),
            ),
            Column::new(
                "roc_auc_std".into(),
                self.roc_auc.iter().map(|m| m.std).collect::<Vec<_>>(),
            ),
            Column::new(
                "auarc_mean".into(),
                self.auarc.iter().map(|m| m.mean).collect::<Vec<_>>(),
            ),
            Column::new(
                "auarc_std".into(),
                self.auarc.iter().map(|m| m.std).collect::<Vec<_>>(),
            ),
            Column::new("accuracy_mean".into(), vec![self.accuracy.mean; k]),
            Column::new("ece_mean".into(), vec![self.ece.mean; k]),
            Column::new("seeds".into(), vec![self.runs.len() as u32; k]),
        ])?)
    }

    /// One row per seed and method: `seed`, `method`, `roc_auc`, `auarc`, `accuracy`, `ece`.
    pub fn seeds_frame(&self) -> Result<DataFrame> {
        let mut seed = Vec::new();
        let mut method = Vec::new();
        let mut auc = Vec::new();
        let mut arc = Vec::new();
        let mut acc = Vec::new();
        let mut ece = Vec::new();
        for r in &self.runs {
            for (i, m) in METHODS.iter().enumerate() {
                seed.push(r.seed);
                method.push(*m);
                auc.push(r.roc_auc[i]);
                arc.push(r.auarc[i]);
                acc.push(r.accuracy);
                ece.push(r.ece);
            }
        }
        Ok(DataFrame::new_infer_height(vec![
            Column::new("seed".into(), seed),
            Column::new("method".into(), method),
            Column::new("roc_auc".into(), auc),
            Column::new("auarc".into(), arc),
            Column::new("accuracy".into(), acc),
            Column::new("ece".into(), ece),
        ])?)
    }

    /// ROC curves (score vs error indicator on test) of every method on the first seed, with
    /// the AUC in the legend.
    pub fn roc_chart(&self) -> Result<Chart> {
        let r = self.first_run()?;
        let mut chart = RocChart::new(format!(
            "{}: ROC of uncertainty vs error (seed {})",
            self.dataset, r.seed
        ));
        for (m, s) in METHODS.iter().zip(&r.scores) {
            chart = chart.scores(*m, s, &r.errors);
        }
        chart.build()
    }

    /// Accuracy–rejection curves of every method on the first seed, with the oracle (reject
    /// errors first) for reference.
    pub fn rejection_chart(&self) -> Result<Chart> {
        let r = self.first_run()?;
        let correct: Vec<bool> = r.errors.iter().map(|e| !e).collect();
        let mut chart = LineChart::new(format!(
            "{}: accuracy–rejection (seed {})",
            self.dataset, r.seed
        ))
        .x_label("rejection rate")
        .y_label("accuracy on kept examples")
        .markers(false);
        let oracle: Vec<f64> = r.errors.iter().map(|&e| f64::from(u8::from(e))).collect();
        for (m, s) in METHODS.iter().zip(&r.scores).chain([(&"oracle", &oracle)]) {
            let curve = accuracy_rejection_curve(s, &correct)?;
            let (xs, ys): (Vec<f64>, Vec<f64>) = curve.into_iter().unzip();
            chart = chart.series(*m, xs, ys);
        }
        chart.build()
    }

    fn first_run(&self) -> Result<&SeedRun> {
        self.runs
            .first()
            .ok_or_else(|| Error::InvalidInput("AdueStudyResult: no seed was run".into()))
    }

    fn table_rows(&self) -> Vec<Vec<String>> {
        let mut rows: Vec<Vec<String>> = METHODS
            .iter()
            .enumerate()
            .map(|(i, m)| {
                vec![
                    m.to_string(),
                    format!("{:.2}", self.roc_auc[i]),
                    format!("{:.3}", self.auarc[i]),
                ]
            })
            .collect();
        rows.push(vec![
            "accuracy".into(),
            format!("{:.3}", self.accuracy),
            String::new(),
        ]);
        rows.push(vec![
            "ECE".into(),
            format!("{:.3}", self.ece),
            String::new(),
        ]);
        rows
    }

    fn caption(&self) -> String {
        format!(
            "AdUE study on {} ({} classes; {}/{}/{} train/val/test; {} seed(s); {:.0} s)",
            self.dataset,
            self.n_classes,
            self.sizes[0],
            self.sizes[1],
            self.sizes[2],
            self.runs.len(),
            self.seconds
        )
    }

    /// Called by the evcxr kernel when the result ends a cell: the results table.
    pub fn evcxr_display(&self) {
        self.html().evcxr_display();
    }
}

const TABLE_HEADERS: [&str; 3] = ["method", "ROC-AUC ×100 (mean ± std)", "AUARC"];

impl DisplayHtml for AdueStudyResult {
    fn html(&self) -> Html {
        Html::new(format!(
            "<div><b>{}</b>{}</div>",
            escape_html(&self.caption()),
            table_html(&TABLE_HEADERS, &self.table_rows())
        ))
    }
}

impl std::fmt::Display for AdueStudyResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.caption())?;
        writeln!(
            f,
            "{:<10} {:<28} {}",
            TABLE_HEADERS[0], TABLE_HEADERS[1], TABLE_HEADERS[2]
        )?;
        for row in self.table_rows() {
            writeln!(f, "{:<10} {:<28} {}", row[0], row[1], row[2])?;
        }
        Ok(())
    }
}

/// The paper's layout over several studies: one row per method (SR, Entropy, MD, RMD, AdUE,
/// then accuracy and ECE), one column per data set holding `"mean ± std"` of ROC-AUC × 100
/// (accuracy and ECE to 3 decimals).
pub fn results_table(results: &[AdueStudyResult]) -> Result<DataFrame> {
    if results.is_empty() {
        bail!("results_table: no results");
    }
    let mut rows: Vec<&str> = METHODS.to_vec();
    rows.extend(["accuracy", "ECE"]);
    let mut cols = vec![Column::new("method".into(), rows)];
    for r in results {
        let mut cells: Vec<String> = r.roc_auc.iter().map(|m| format!("{m:.2}")).collect();
        cells.push(format!("{:.3}", r.accuracy));
        cells.push(format!("{:.3}", r.ece));
        if cols.iter().any(|c| c.name().as_str() == r.dataset) {
            bail!("results_table: data set '{}' appears twice", r.dataset);
        }
        cols.push(Column::new(r.dataset.as_str().into(), cells));
    }
    Ok(DataFrame::new_infer_height(cols)?)
}

// ---------------------------------------------------------------------------------------------
// The study
// ---------------------------------------------------------------------------------------------

fn texts(split: &[(String, usize)]) -> Vec<&str> {
    split.iter().map(|(t, _)| t.as_str()).collect()
}

fn labels(split: &[(String, usize)]) -> Vec<usize> {
    split.iter().map(|(_, y)| *y).collect()
}

/// Run the study (see the module docs): per seed, fine-tune, freeze, score the test split with
/// SR, entropy, MD, RMD and AdUE, and measure ROC-AUC × 100 against the error indicator,
/// AUARC, accuracy and ECE; then mean ± std over seeds.
///
/// Errors: an invalid config (no seeds, a cap of 0, an empty grid), an unknown data set
/// (naming the files tried), a split that is empty or has a single class in training, a
/// classifier that is right on every test example (ROC-AUC against the errors is then
/// undefined), and everything the classifier and AdUE fits report.
pub fn run_adue_study(cfg: &AdueStudyConfig) -> Result<AdueStudyResult> {
    cfg.check()?;
    let started = Instant::now();
    let splits = cfg.load_splits()?;
    let n_classes = n_classes_of(&splits)?;
    let mut runs = Vec::with_capacity(cfg.seeds.len());
    for &seed in &cfg.seeds {
        runs.push(
            run_seed(cfg, &splits, n_classes, seed)
                .map_err(|e| Error::InvalidInput(format!("AdUE study, seed {seed}: {e}")))?,
        );
    }
    let per_method =
        |get: &dyn Fn(&SeedRun) -> f64| mean_std(&runs.iter().map(get).collect::<Vec<_>>());
    let roc_auc = (0..METHODS.len())
        .map(|i| per_method(&|r| r.roc_auc[i]))
        .collect::<Result<Vec<_>>>()?;
    let auarc_ms = (0..METHODS.len())
        .map(|i| per_method(&|r| r.auarc[i]))
        .collect::<Result<Vec<_>>>()?;
    let accuracy = per_method(&|r| r.accuracy)?;
    let ece = per_method(&|r| r.ece)?;
    Ok(AdueStudyResult {
        dataset: cfg.dataset.clone(),
        n_classes,
        sizes: [
            splits.train.len(),
            splits.validation.len(),
            splits.test.len(),
        ],
        config: cfg.clone(),
        runs,
        roc_auc,
        auarc: auarc_ms,
        accuracy,
        ece,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn run_seed(
    cfg: &AdueStudyConfig,
    splits: &Splits,
    n_classes: usize,
    seed: u64,
) -> Result<SeedRun> {
    let t0 = Instant::now();
    let mut lora = cfg.lora.clone();
    lora.seed = seed;
    let ccfg = ClassifierConfig::new(n_classes)
        .max_len(cfg.max_len)
        .pooling(cfg.pooling)
        .precision(cfg.precision)
        .lora(lora);
    let mut clf = SequenceClassifier::load(&cfg.model, ccfg)?;
    let probe_train_accuracy = match cfg.warm_start {
        Some(c) => Some(clf.warm_start_head(&splits.train, c)?),
        None => None,
    };
    let opts = TrainOptions {
        epochs: cfg.epochs,
        batch_size: cfg.batch_size,
        lr: cfg.lr,
        seed,
        progress: cfg.progress,
        ..TrainOptions::default()
    };
    let mut log = clf.train(splits, &opts)?;
    let seconds_finetune = log.seconds;

    let (y_train, y_val, y_test) = (
        labels(&splits.train),
        labels(&splits.validation),
        labels(&splits.test),
    );
    let out_train = clf.outputs(&texts(&splits.train))?;
    // Validation and test were scored by the last passes of training (same batches of 32).
    let out_val = match log.validation_outputs.take() {
        Some(o) => o,
        None => clf.outputs(&texts(&splits.validation))?,
    };
    let out_test = match log.test_outputs.take() {
        Some(o) => o,
        None => clf.outputs(&texts(&splits.test))?,
    };

    let probs = softmax(&out_test.logits)?;
    let errors = error_indicator(&probs, &y_test)?;
    let n_err = errors.iter().filter(|&&e| e).count();
    if n_err == 0 {
        bail!(
            "the classifier is right on all {} test examples, so ROC-AUC against its errors is \
             undefined (use a larger or harder test split)",
            errors.len()
        );
    }
    let accuracy_test = accuracy(&out_test.logits, &y_test)?;
    let ece_test = ece(&probs, &y_test, cfg.ece_bins)?;
    let sr = softmax_response(&probs)?;
    let entropy = predictive_entropy(&probs)?;
    let md =
        Mahalanobis::fit(&out_train.features, &y_train, n_classes)?.score(&out_test.features)?;
    let rmd = RelativeMahalanobis::fit(&out_train.features, &y_train, n_classes)?
        .score(&out_test.features)?;

    // AdUE: a head initialised from the classifier head, fitted and selected as configured.
    let t_adue = Instant::now();
    let (w, b) = clf.head_weights()?;
    let head = LinearHead::new(&w, &b)?;
    let train_has_both = {
        let p = softmax(&out_train.logits)?;
        let e = error_indicator(&p, &y_train)?;
        e.iter().any(|&x| x) && e.iter().any(|&x| !x)
    };
    let use_train = match cfg.head_data {
        HeadData::Train => true,
        HeadData::ValidationHalves => false,
        HeadData::Auto => train_has_both,
    };
    let base = cfg.adue.clone().seed(seed).verbose(cfg.progress);
    let (search, adue_data) = if use_train {
        let s = grid_search(
            &cfg.grid,
            &base,
            &head,
            Split::new(&out_train.features, &y_train),
            Split::new(&out_val.features, &y_val),
        )?;
        (s, format!("train (n={})", y_train.len()))
    } else {
        let n = y_val.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 0xad0e));
        let (fit_ix, sel_ix) = order.split_at(n / 2);
        if fit_ix.is_empty() {
            bail!("the validation split has {n} example(s): too few to halve for AdUE");
        }
        let take = |ix: &[usize]| -> Result<(Tensor, Vec<usize>)> {
            let idx = Tensor::from_vec(
                ix.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                ix.len(),
                out_val.features.device(),
            )?;
            Ok((
                out_val.features.index_select(&idx, 0)?,
                ix.iter().map(|&i| y_val[i]).collect(),
            ))
        };
        let (z_fit, y_fit) = take(fit_ix)?;
        let (z_sel, y_sel) = take(sel_ix)?;
        let s = grid_search(
            &cfg.grid,
            &base,
            &head,
            Split::new(&z_fit, &y_fit),
            Split::new(&z_sel, &y_sel),
        )?;
        let why = if cfg.head_data == HeadData::Auto {
            ": the classifier makes no training error"
        } else {
            ""
        };
        (
            s,
            format!(
                "validation halves (fit n={}, select n={}){why}",
                y_fit.len(),
                y_sel.len()
            ),
        )
    };
    let adue = search.best.uncertainty(&out_test.features)?;
    let seconds_adue = t_adue.elapsed().as_secs_f64();
    // Re-measured from the classifier itself, not from stored logits.
    let accuracy_after_adue = accuracy(&clf.logits(&texts(&splits.test))?, &y_test)?;

    let scores = vec![sr, entropy, md, rmd, adue];
    let correct: Vec<bool> = errors.iter().map(|e| !e).collect();
    let mut roc = Vec::with_capacity(METHODS.len());
    let mut arc = Vec::with_capacity(METHODS.len());
    for (m, s) in METHODS.iter().zip(&scores) {
        let auc =
            roc_auc(s, &errors).map_err(|e| Error::InvalidInput(format!("ROC-AUC of {m}: {e}")))?;
        roc.push(100.0 * auc);
        arc.push(auarc(s, &correct)?);
    }
    Ok(SeedRun {
        seed,
        accuracy: accuracy_test,
        accuracy_after_adue,
        val_accuracies: log.val_accuracies(),
        probe_train_accuracy,
        ece: ece_test,
        roc_auc: roc,
        auarc: arc,
        scores,
        errors,
        adue_selected: search.points[search.best_index],
        adue_grid: search.points,
        adue_data,
        seconds_finetune,
        seconds_adue,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
