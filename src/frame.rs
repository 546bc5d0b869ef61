//! Activations as polars DataFrames, pooling, and Parquet read/write.
//!
//! Long format: one row per (doc, position, hook) with columns
//! `doc` (u32), `position` (u32), `hook` (str), `layer` (i32, null for `hook_embed` /
//! `ln_final`), `token` (u32 id), `text` (str, the token decoded alone) and `activation`
//! (`Array(Float32, d)`).

use std::fs::File;
use std::path::Path;

use candle_core::{Device, IndexOp, Tensor};
use polars::prelude::*;

use crate::error::{Error, Result};
use crate::hooks::HookPoint;
use crate::hooks::HookSpec;
use crate::model::{DocRun, Model, Run, RunOptions};

/// Column names of a frame, comma-separated, for error messages.
pub fn column_names(df: &DataFrame) -> String {
    df.get_column_names()
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Name of the vector column in every activation frame.
pub const ACTIVATION: &str = "activation";

/// How to turn a text's `(seq, d)` states into one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the text's tokens (sentence-transformers' default).
    Mean,
    /// The last token (the usual choice for decoders: it has seen the whole text).
    LastToken,
    /// The first token (`[CLS]` for BERT-family encoders).
    Cls,
}

impl std::str::FromStr for Pooling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "mean" => Ok(Pooling::Mean),
            "last" | "last_token" | "last-token" => Ok(Pooling::LastToken),
            "cls" | "first" => Ok(Pooling::Cls),
            _ => Err(Error::InvalidInput(format!(
                "unknown pooling '{s}' (use mean, last or cls)"
            ))),
        }
    }
}

/// Pool one text's `(seq, d)` activations into a `(d,)` vector.
///
/// ```
/// use replens::prelude::*;
/// let t = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?;
/// assert_eq!(pool(&t, Pooling::Mean)?.to_vec1::<f32>()?, vec![2., 3.]);
/// assert_eq!(pool(&t, Pooling::LastToken)?.to_vec1::<f32>()?, vec![3., 4.]);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn pool(states: &Tensor, pooling: Pooling) -> Result<Tensor> {
    let (seq, _) = states.dims2().map_err(|_| {
        Error::InvalidInput(format!(
            "pooling expects a (seq, d) tensor, got shape {:?}",
            states.dims()
        ))
    })?;
    if seq == 0 {
        return Err(Error::InvalidInput("cannot pool an empty sequence".into()));
    }
    Ok(match pooling {
        Pooling::Mean => states.mean(0)?,
        Pooling::LastToken => states.i(seq - 1)?,
        Pooling::Cls => states.i(0)?,
    })
}

/// A `Array(Float32, d)` column from a row-major `(rows, d)` buffer.
pub fn vectors_column(name: &str, values: Vec<f32>, d: usize) -> Result<Column> {
    if d == 0 || !values.len().is_multiple_of(d) {
        return Err(Error::InvalidInput(format!(
            "column {name}: {} values do not split into rows of width {d}",
            values.len()
        )));
    }
    let series = Series::new(name.into(), values).reshape_array(&[
        ReshapeDimension::Infer,
        ReshapeDimension::new_dimension(d as u64),
    ])?;
    Ok(series.into())
}

fn doc_rows(doc: &DocRun, cols: &mut RowBuffers) -> Result<()> {
    for (point, t) in doc.cache.iter() {
        let (seq, d) = t.dims2()?;
        if cols.width.get_or_insert(d) != &d {
            return Err(Error::InvalidInput(format!(
                "hook {point} has width {d} but earlier hooks have {}; frame one width at a time",
                cols.width.unwrap_or(0)
            )));
        }
        let hook = point.to_string();
        let layer = point.layer().map(|l| l as i32);
        for pos in 0..seq {
            cols.doc.push(doc.index as u32);
            cols.position.push(pos as u32);
            cols.hook.push(hook.clone());
            cols.layer.push(layer);
            cols.token
                .push(doc.token_ids.get(pos).copied().unwrap_or(0));
            cols.text
                .push(doc.tokens.get(pos).cloned().unwrap_or_default());
        }
        cols.values.extend(t.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(())
}

#[derive(Default)]
struct RowBuffers {
    doc: Vec<u32>,
    position: Vec<u32>,
    hook: Vec<String>,
    layer: Vec<Option<i32>>,
    token: Vec<u32>,
    text: Vec<String>,
    values: Vec<f32>,
    width: Option<usize>,
}

impl RowBuffers {
    fn into_frame(self) -> Result<DataFrame> {
        let d = self.width.unwrap_or(1);
        let activation = if self.doc.is_empty() {
            Series::new_empty(
                ACTIVATION.into(),
                &DataType::Array(Box::new(DataType::Float32), d),
            )
            .into()
        } else {
            vectors_column(ACTIVATION, self.values, d)?
        };
        Ok(DataFrame::new_infer_height(vec![
            Column::new("doc".into(), self.doc),
            Column::new("position".into(), self.position),
            Column::new("hook".into(), self.hook),
            Column::new("layer".into(), self.layer),
            Column::new("token".into(), self.token),
            Column::new("text".into(), self.text),
            activation,
        ])?)
    }
}

/// One text's activations as a long frame (see the module docs for the columns).
pub fn doc_to_frame(doc: &DocRun) -> Result<DataFrame> {
    let mut cols = RowBuffers::default();
    doc_rows(doc, &mut cols)?;
    cols.into_frame()
}

/// All texts of a run as one long frame, ordered by doc, hook depth, position.
///
/// ```no_run
/// use replens::prelude::*;
/// let model = Model::load("minilm")?;
/// let run = model.run(&["a cat", "a dog"], &HookSpec::all_residual())?;
/// let df = run_to_frame(&run)?;
/// assert_eq!(df.width(), 7);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn run_to_frame(run: &Run) -> Result<DataFrame> {
    let mut cols = RowBuffers::default();
    for doc in &run.docs {
        doc_rows(doc, &mut cols)?;
    }
    cols.into_frame()
}

/// One row per text: `doc`, `n_tokens`, `loss` (mean token loss, null for encoders) and the
/// pooled vector of `hook` in an `embedding` column.
pub fn pooled_frame(run: &Run, hook: HookPoint, pooling: Pooling) -> Result<DataFrame> {
    let mut doc = Vec::new();
    let mut n_tokens = Vec::new();
    let mut loss = Vec::new();
    let mut values = Vec::new();
    let mut d = 0;
    for r in &run.docs {
        let v = pool(r.cache.get(hook)?, pooling)?;
        d = v.dim(0)?;
        values.extend(v.to_vec1::<f32>()?);
        doc.push(r.index as u32);
        n_tokens.push(r.token_ids.len() as u32);
        loss.push(
            r.token_loss
                .as_ref()
                .filter(|l| !l.is_empty())
                .map(|l| l.iter().map(|&x| x as f64).sum::<f64>() / l.len() as f64),
        );
    }
    if doc.is_empty() {
        return Err(Error::InvalidInput(
            "pooled_frame: the run has no texts".into(),
        ));
    }
    Ok(DataFrame::new_infer_height(vec![
        Column::new("doc".into(), doc),
        Column::new("n_tokens".into(), n_tokens),
        Column::new("loss".into(), loss),
        vectors_column("embedding", values, d)?,
    ])?)
}

/// Embed texts with `model`: one pooled vector per text from `hook`, as an `(n_texts, d)` tensor.
/// Streams batch by batch, so only the pooled vectors are kept.
pub fn embed<S: AsRef<str>>(
    model: &Model,
    texts: &[S],
    hook: HookPoint,
    pooling: Pooling,
    opts: &RunOptions,
) -> Result<Tensor> {
    let spec = HookSpec::points([hook]).without_logits();
    let mut rows = Vec::with_capacity(texts.len());
    model.for_each_doc(texts, &spec, opts, |doc| {
        rows.push(pool(doc.cache.get(hook)?, pooling)?);
        Ok(())
    })?;
    if rows.is_empty() {
        return Err(Error::InvalidInput("embed: no texts given".into()));
    }
    Ok(Tensor::stack(&rows, 0)?)
}

/// The `(rows, d)` f32 matrix held in an `Array(Float32, d)` column, for metrics.
pub fn column_to_tensor(df: &DataFrame, column: &str) -> Result<Tensor> {
    let col = df.column(column).map_err(|_| {
        Error::InvalidInput(format!(
            "no column '{column}' (columns: {})",
            crate::frame::column_names(df)
        ))
    })?;
    let DataType::Array(inner, d) = col.dtype() else {
        return Err(Error::InvalidInput(format!(
            "column '{column}' has type {} but a fixed-size Array(Float32, d) column is needed",
            col.dtype()
        )));
    };
    let d = *d;
    let series = col
        .as_materialized_series()
        .cast(&DataType::Array(Box::new(DataType::Float32), d))?;
    if **inner != DataType::Float32 && !inner.is_primitive_numeric() {
        return Err(Error::InvalidInput(format!(
            "column '{column}' does not hold numbers"
        )));
    }
    let arr = series.array()?;
    if arr.null_count() > 0 {
        return Err(Error::InvalidInput(format!(
            "column '{column}' has null rows"
        )));
    }
    let inner = arr.get_inner();
    let values: Vec<f32> = inner
        .f32()?
        .iter()
        .map(|v| v.ok_or_else(|| Error::InvalidInput(format!("column '{column}' has null values"))))
        .collect::<Result<_>>()?;
    Ok(Tensor::from_vec(values, (df.height(), d), &Device::Cpu)?)
}

/// The rows of `df` whose `hook` column is `name` (eager: the crate builds polars without its
/// lazy engine, which would bring an async runtime and cloud I/O into every build).
fn rows_of_hook(df: &DataFrame, name: &str) -> Result<DataFrame> {
    let hooks = df.column("hook")?.str()?;
    Ok(df.filter(&hooks.equal(name))?)
}

/// Rows of `df` for one hook, as an `(rows, d)` tensor.
pub fn hook_matrix(df: &DataFrame, hook: HookPoint) -> Result<Tensor> {
    let name = hook.to_string();
    let rows = rows_of_hook(df, &name)?;
    if rows.height() == 0 {
        return Err(Error::UnknownHook {
            name,
            reason: "no rows for this hook in the frame".into(),
        });
    }
    column_to_tensor(&rows, ACTIVATION)
}

/// Write a frame as one Parquet file.
pub fn write_parquet(df: &DataFrame, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let file = File::create(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    ParquetWriter::new(file).finish(&mut df.clone())?;
    Ok(())
}

/// Write a frame as CSV: a header row of column names, then one line per row. Floats are
/// written with the shortest digits that read back exactly (`1e-300`, not 300 digits), nulls
/// as empty fields, and a field with a comma, quote or line break is quoted (RFC 4180). A
/// nested value (an `activation` array) is written in full as `"[a, b, …]"`.
///
/// ```
/// use replens::frame::write_csv;
/// use replens::polars::prelude::*;
/// let df = df!("hook" => ["embed", "a,b"], "erank" => [1.5f64, 0.1])?;
/// let path = std::env::temp_dir().join("replens-doc-write-csv.csv");
/// write_csv(&df, &path)?;
/// let text = std::fs::read_to_string(&path)?;
/// assert_eq!(text, "hook,erank\nembed,1.5\n\"a,b\",0.1\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_csv(df: &DataFrame, path: impl AsRef<Path>) -> Result<()> {
    use std::io::Write;
    let path = path.as_ref();
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut out = std::io::BufWriter::new(File::create(path).map_err(io)?);
    let columns = df.columns();
    let header: Vec<String> = columns.iter().map(|c| csv_field(c.name())).collect();
    writeln!(out, "{}", header.join(",")).map_err(io)?;
    for row in 0..df.height() {
        let mut fields = Vec::with_capacity(columns.len());
        for column in columns {
            fields.push(csv_field(&value_text(column.get(row)?)?));
        }
        writeln!(out, "{}", fields.join(",")).map_err(io)?;
    }
    out.flush().map_err(io)
}

/// A value as CSV text, before quoting. Nested values are written in full (polars' display
/// of a list shortens it), as `[a, b, …]`.
fn value_text(value: AnyValue) -> Result<String> {
    Ok(match value {
        AnyValue::Null => String::new(),
        AnyValue::String(v) => v.to_string(),
        AnyValue::StringOwned(v) => v.to_string(),
        AnyValue::Float64(v) => float_text(v),
        AnyValue::Float32(v) => float_text(v),
        AnyValue::List(inner) | AnyValue::Array(inner, _) => {
            let items = inner.iter().map(value_text).collect::<Result<Vec<_>>>()?;
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    })
}

/// Shortest round-trip digits; exponent form for very small or large magnitudes, which Rust's
/// plain `Display` would spell out in hundreds of digits.
fn float_text<F>(v: F) -> String
where
    F: std::fmt::Display + std::fmt::LowerExp + Into<f64> + Copy,
{
    let magnitude = v.into().abs();
    if magnitude != 0.0 && magnitude.is_finite() && !(1e-5..1e16).contains(&magnitude) {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Read a Parquet file written by [`write_parquet`] (or any Parquet file).
pub fn read_parquet(path: impl AsRef<Path>) -> Result<DataFrame> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    ParquetReader::new(file)
        .finish()
        .map_err(|e| Error::InvalidInput(format!("cannot read Parquet {}: {e}", path.display())))
}

/// Run `texts` through `model` and stream the long frame into Parquet files partitioned by
/// hook (`<dir>/model=<name>/hook=<hook>/part-0.parquet`), batch by batch, so a corpus larger
/// than memory can be extracted and later scanned by polars, DuckDB or Spark.
/// Returns the number of rows written.
pub fn extract_to_parquet<S: AsRef<str>>(
    model: &Model,
    texts: &[S],
    hooks: &HookSpec,
    opts: &RunOptions,
    dir: impl AsRef<Path>,
) -> Result<usize> {
    let dir = dir.as_ref();
    let model_name: String = model
        .name()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut writers: std::collections::BTreeMap<
        String,
        polars::io::parquet::write::BatchedWriter<File>,
    > = Default::default();
    let mut rows = 0;
    // the long frame has no loss column: skip the unembedding
    let hooks = &hooks.clone().without_logits();
    model.for_each_doc(texts, hooks, opts, |doc| {
        let df = doc_to_frame(&doc)?;
        rows += df.height();
        for point in doc.cache.points() {
            let name = point.to_string();
            let part = rows_of_hook(&df, &name)?;
            if !writers.contains_key(&name) {
                let sub = dir
                    .join(format!("model={model_name}"))
                    .join(format!("hook={name}"));
                std::fs::create_dir_all(&sub).map_err(|source| Error::Io {
                    path: sub.clone(),
                    source,
                })?;
                let path = sub.join("part-0.parquet");
                let file = File::create(&path).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                writers.insert(
                    name.clone(),
                    ParquetWriter::new(file).batched(part.schema())?,
                );
            }
            if let Some(w) = writers.get_mut(&name) {
                w.write_batch(&part)?;
            }
        }
        Ok(())
    })?;
    for (_, w) in writers {
        w.finish()?;
    }
    Ok(rows)
}
