//! Study 2 (Brown et al., EMNLP 2023, arXiv 2310.14993), the similarity half: every layer's
//! representation of a corpus, and layer × layer similarity matrices within one model or across
//! two. The indices themselves are in [`crate::metrics::similarity`]; stitching is in
//! [`crate::train::stitch`] ([`stitch_penalty_chart`] draws its per-layer penalties).

use candle_core::{Device, Tensor};
use polars::prelude::{Column, DataFrame};

use crate::error::{Error, Result};
use crate::frame::{pool, Pooling};
use crate::hooks::{HookPoint, HookSpec};
use crate::metrics::similarity::{similarity_matrix, Similarity};
use crate::model::{Model, RunOptions};
use crate::plot::{Chart, HeatmapChart, LineChart};
use crate::train::stitch::StitchMatrix;

/// Which rows a layer's matrix has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rows {
    /// One row per token of every text (the paper's CKA "over tokens"); two models compared
    /// this way must tokenize the corpus identically.
    Tokens,
    /// One pooled row per text (works across tokenizers).
    Pooled(Pooling),
}

/// The residual stream of a corpus at every layer: `matrices[i]` is `(rows, d)` at `hooks[i]`
/// (`hook_embed`, then `blocks.{l}.hook_resid_post` for every block).
#[derive(Debug, Clone)]
pub struct LayerReps {
    pub model: String,
    pub hooks: Vec<HookPoint>,
    pub matrices: Vec<Tensor>,
    /// Token ids of every text (to check that two models saw the same tokens).
    pub token_ids: Vec<Vec<u32>>,
}

impl LayerReps {
    /// Number of rows of every matrix.
    pub fn n_rows(&self) -> usize {
        self.matrices
            .first()
            .and_then(|m| m.dims().first().copied())
            .unwrap_or(0)
    }

    /// Short labels for chart axes: `emb`, `0`, `1`, ...
    pub fn labels(&self) -> Vec<String> {
        self.hooks
            .iter()
            .map(|h| match h.layer() {
                Some(l) => l.to_string(),
                None => "emb".into(),
            })
            .collect()
    }

    /// Token rows pooled into one row per text, without another forward pass: the same
    /// matrices as `layer_representations(.., Rows::Pooled(pooling), ..)` on the same texts,
    /// e.g. to compare a model with one of another tokenizer after a within-model token CKA.
    ///
    /// Errors: reps whose rows are not one per token (already pooled ones, when some text has
    /// more than one token).
    pub fn pooled(&self, pooling: Pooling) -> Result<LayerReps> {
        let lens: Vec<usize> = self.token_ids.iter().map(Vec::len).collect();
        let total: usize = lens.iter().sum();
        if self.n_rows() != total {
            return Err(Error::InvalidInput(format!(
                "LayerReps::pooled ({}): {} rows but the texts have {total} tokens; only token \
                 rows (Rows::Tokens) can be pooled",
                self.model,
                self.n_rows()
            )));
        }
        let matrices = self
            .matrices
            .iter()
            .map(|m| {
                let mut rows = Vec::with_capacity(lens.len());
                let mut start = 0;
                for &len in &lens {
                    rows.push(pool(&m.narrow(0, start, len)?, pooling)?.unsqueeze(0)?);
                    start += len;
                }
                Ok(Tensor::cat(&rows, 0)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LayerReps {
            model: self.model.clone(),
            hooks: self.hooks.clone(),
            matrices,
            token_ids: self.token_ids.clone(),
        })
    }

    /// Only the layers at positions `which` of [`LayerReps::hooks`] (0 = `hook_embed`), in
    /// that order: a readable heatmap of a deep model, or a cheaper one. The matrices are
    /// shared, not copied (candle tensors are reference-counted).
    ///
    /// Errors: an empty `which`, or a position past the last layer.
    pub fn select(&self, which: &[usize]) -> Result<LayerReps> {
        if which.is_empty() {
            return Err(Error::InvalidInput(format!(
                "LayerReps::select ({}): no layers given",
                self.model
            )));
        }
        if let Some(&bad) = which.iter().find(|&&i| i >= self.hooks.len()) {
            return Err(Error::InvalidInput(format!(
                "LayerReps::select ({}): position {bad} is out of range; there are {} layers \
                 (0 = hook_embed, i = block i - 1)",
                self.model,
                self.hooks.len()
            )));
        }
        Ok(LayerReps {
            model: self.model.clone(),
            hooks: which.iter().map(|&i| self.hooks[i]).collect(),
            matrices: which.iter().map(|&i| self.matrices[i].clone()).collect(),
            token_ids: self.token_ids.clone(),
        })
    }

    /// Every `step`-th layer from the embeddings on, and always the last one (so the first
    /// vs last comparison survives the thinning): positions 0, step, 2·step, …, last.
    ///
    /// Errors: `step` = 0.
    pub fn every(&self, step: usize) -> Result<LayerReps> {
        if step == 0 {
            return Err(Error::InvalidInput(
                "LayerReps::every: step must be at least 1".into(),
            ));
        }
        let last = self.hooks.len().saturating_sub(1);
        let mut which: Vec<usize> = (0..=last).step_by(step).collect();
        if which.last() != Some(&last) {
            which.push(last);
        }
        self.select(&which)
    }
}

/// Run `texts` through `model` and collect every residual-stream layer as a matrix.
///
/// Memory: rows × d × (layers + 1) f32 — for a corpus that does not fit, stream with
/// [`crate::metrics::similarity::LinearCkaAccumulator`] over [`Model::for_each_doc`] instead.
///
/// ```no_run
/// use replens::prelude::*;
/// use replens::studies::similarity::{layer_representations, Rows};
/// let model = Model::load("default")?;
/// let reps = layer_representations(&model, &["The cat sat.", "A dog ran."], Rows::Tokens,
///                                  &RunOptions::default())?;
/// assert_eq!(reps.matrices.len(), model.n_layers() + 1);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn layer_representations<S: AsRef<str>>(
    model: &Model,
    texts: &[S],
    rows: Rows,
    opts: &RunOptions,
) -> Result<LayerReps> {
    if texts.is_empty() {
        return Err(Error::InvalidInput(
            "layer_representations: no texts".into(),
        ));
    }
    let spec = HookSpec::all_residual().without_logits();
    let hooks = spec.expand(model.n_layers());
    let mut per_layer: Vec<Vec<Tensor>> = vec![Vec::new(); hooks.len()];
    let mut token_ids = Vec::with_capacity(texts.len());
    model.for_each_doc(texts, &spec, opts, |doc| {
        for (i, hook) in hooks.iter().enumerate() {
            let states = doc.cache.get(*hook)?;
            per_layer[i].push(match rows {
                Rows::Tokens => states.clone(),
                Rows::Pooled(p) => pool(states, p)?.unsqueeze(0)?,
            });
        }
        token_ids.push(doc.token_ids);
        Ok(())
    })?;
    let matrices = per_layer
        .iter()
        .map(|parts| Ok(Tensor::cat(parts, 0)?.to_device(&Device::Cpu)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(LayerReps {
        model: model.name().to_string(),
        hooks,
        matrices,
        token_ids,
    })
}

/// A layer × layer similarity matrix between two sets of layer representations.
#[derive(Debug, Clone)]
pub struct LayerSimilarity {
    pub index: Similarity,
    pub model_a: String,
    pub model_b: String,
    pub labels_a: Vec<String>,
    pub labels_b: Vec<String>,
    /// `values[i][j]` = index(layer i of A, layer j of B).
    pub values: Vec<Vec<f64>>,
    /// Long form: layer_a, layer_b, value.
    pub frame: DataFrame,
}

impl LayerSimilarity {
    /// The matrix as an inline heatmap (rows: A's layers, columns: B's layers).
    pub fn heatmap(&self) -> Result<Chart> {
        let title = if self.model_a == self.model_b {
            format!("{} between layers of {}", self.index.name(), self.model_a)
        } else {
            format!(
                "{}: {} (rows) vs {} (columns)",
                self.index.name(),
                self.model_a,
                self.model_b
            )
        };
        let mut chart = HeatmapChart::new(title)
            .matrix(&self.values)
            .row_labels(self.labels_a.clone())
            .col_labels(self.labels_b.clone())
            .bar_label(self.index.name());
        if !matches!(self.index, Similarity::Procrustes) {
            chart = chart.range(0.0, 1.0);
        }
        chart.build()
    }
}

/// `index` between every layer of `a` and every layer of `b` (pass the same reps twice for
/// the within-model matrix). Rows must correspond: with [`Rows::Tokens`] both models must have
/// tokenized the corpus identically (checked).
pub fn layer_similarity(
    a: &LayerReps,
    b: &LayerReps,
    index: Similarity,
) -> Result<LayerSimilarity> {
    if a.n_rows() != b.n_rows() || a.token_ids.len() != b.token_ids.len() {
        return Err(Error::InvalidInput(format!(
            "layer_similarity: {} has {} rows from {} texts but {} has {} rows from {} texts; \
             compare the same texts, pooled (Rows::Pooled) if the tokenizers differ",
            a.model,
            a.n_rows(),
            a.token_ids.len(),
            b.model,
            b.n_rows(),
            b.token_ids.len()
        )));
    }
    let token_rows = a.n_rows() != a.token_ids.len();
    if token_rows && a.token_ids != b.token_ids {
        return Err(Error::InvalidInput(format!(
            "layer_similarity: {} and {} tokenize the texts differently, so token rows do not \
             correspond; use Rows::Pooled",
            a.model, b.model
        )));
    }
    let values = similarity_matrix(&a.matrices, &b.matrices, &index)?;
    let (la, lb) = (a.labels(), b.labels());
    let mut col_a = Vec::new();
    let mut col_b = Vec::new();
    let mut col_v = Vec::new();
    for (i, row) in values.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            col_a.push(la[i].clone());
            col_b.push(lb[j].clone());
            col_v.push(v);
        }
    }
    let frame = DataFrame::new_infer_height(vec![
        Column::new("layer_a".into(), col_a),
        Column::new("layer_b".into(), col_b),
        Column::new("value".into(), col_v),
    ])?;
    Ok(LayerSimilarity {
        index,
        model_a: a.model.clone(),
        model_b: b.model.clone(),
        labels_a: la,
        labels_b: lb,
        values,
        frame,
    })
}

/// The stitching penalty `L(B ∘ s ∘ A≤l) − L(B)` at each stitched layer, one line per
/// direction of a [`StitchMatrix`] (A → B and B → A), so the asymmetry of Brown et al. (2023)
/// reads off as the gap between the lines. A negative penalty (the stitched model beats the
/// receiver's own loss, as when a stronger model's early blocks feed a weaker one) is drawn
/// below 0 like any other value.
///
/// Errors: a matrix with no layers, or a non-finite penalty.
///
/// ```rust
/// use replens::studies::similarity::stitch_penalty_chart;
/// use replens::train::stitch::{stitch_matrix, StitchConfig};
/// use replens::train::toy::{train_toy, ToyActivation, ToyConfig};
/// let texts: Vec<String> = (0..40).map(|i| format!("ships sail the sea on day {i}. ")).collect();
/// let small = |act| ToyConfig::new(1, act).d_model(16).d_mlp(32).n_ctx(16).progress(false);
/// let gelu = train_toy(&small(ToyActivation::Gelu), &texts, 5, 4, 1e-2)?.to_model()?;
/// let solu = train_toy(&small(ToyActivation::Solu), &texts, 5, 4, 1e-2)?.to_model()?;
/// let cfg = StitchConfig::default().steps(2).seq_len(16).progress(false);
/// let m = stitch_matrix(&gelu, &solu, &[0], &texts, &cfg)?;
/// assert!(stitch_penalty_chart(&m)?.svg().contains("stitching penalty"));
/// # Ok::<(), replens::Error>(())
/// ```
pub fn stitch_penalty_chart(m: &StitchMatrix) -> Result<Chart> {
    if m.a_to_b.is_empty() || m.b_to_a.is_empty() {
        return Err(Error::InvalidInput(format!(
            "stitch_penalty_chart: {} ↔ {} has no stitched layers",
            m.a, m.b
        )));
    }
    let line = |results: &[crate::train::stitch::StitchResult]| -> (Vec<f64>, Vec<f64>) {
        results.iter().map(|r| (r.layer as f64, r.penalty)).unzip()
    };
    let (xa, ya) = line(&m.a_to_b);
    let (xb, yb) = line(&m.b_to_a);
    // Zero is always in view (the sign is the finding), and headroom above the data keeps the
    // legend box off the lines.
    let (lo, hi) = ya
        .iter()
        .chain(&yb)
        .fold((0.0f64, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let span = (hi - lo).max(1e-3);
    LineChart::new(format!("stitching penalty per layer: {} ↔ {}", m.a, m.b))
        .y_range(lo - 0.1 * span, hi + 0.5 * span)
        .x_label("stitched after block l (A's hook_resid_post → B's block l + 1)")
        .y_label("penalty L(B∘s∘A≤l) − L(B), nats/token")
        .series(format!("{} → {}", m.a, m.b), &xa, &ya)
        .series(format!("{} → {}", m.b, m.a), &xb, &yb)
        .markers(true)
        .build()
}
