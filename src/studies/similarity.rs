//! Study 2 (Brown et al., EMNLP 2023, arXiv 2310.14993), the similarity half: every layer's
//! representation of a corpus, and layer × layer similarity matrices within one model or across
//! two. The indices themselves are in [`crate::metrics::similarity`]; stitching is in
//! [`crate::train::stitch`].

use candle_core::{Device, Tensor};
use polars::prelude::{Column, DataFrame};

use crate::error::{Error, Result};
use crate::frame::{pool, Pooling};
use crate::hooks::{HookPoint, HookSpec};
use crate::metrics::similarity::{similarity_matrix, Similarity};
use crate::model::{Model, RunOptions};
use crate::plot::{Chart, HeatmapChart};

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
    let spec = HookSpec::all_residual();
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
