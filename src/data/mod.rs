//! Reading texts for extraction: plain text (one text per line), JSON lines or Parquet with a
//! text column. Errors name the file, line and column.

use std::path::Path;

use crate::error::{Error, Result};

/// Read texts from `path`: `.txt` (one non-empty line each), `.jsonl` (field `column`),
/// `.parquet` (column `column`).
///
/// ```no_run
/// let texts = replens::data::read_texts("sentences.txt", "text")?;
/// # Ok::<(), replens::Error>(())
/// ```
pub fn read_texts(path: impl AsRef<Path>, column: &str) -> Result<Vec<String>> {
    let path = path.as_ref();
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let texts: Vec<String> = match ext.as_str() {
        "parquet" => {
            let df = crate::frame::read_parquet(path)?;
            let col = df.column(column).map_err(|_| {
                Error::InvalidInput(format!(
                    "{}: no column '{column}' (columns: {})",
                    path.display(),
                    crate::frame::column_names(&df)
                ))
            })?;
            let ca = col.str().map_err(|_| {
                Error::InvalidInput(format!("{}: column '{column}' is not text", path.display()))
            })?;
            ca.iter().flatten().map(str::to_string).collect()
        }
        "jsonl" | "ndjson" => {
            let text = std::fs::read_to_string(path).map_err(io)?;
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, line)| {
                    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                        Error::InvalidInput(format!(
                            "{}:{}: invalid JSON: {e}",
                            path.display(),
                            i + 1
                        ))
                    })?;
                    v.get(column)
                        .and_then(|t| t.as_str())
                        .map(str::to_string)
                        .ok_or_else(|| {
                            Error::InvalidInput(format!(
                                "{}:{}: no string field '{column}'",
                                path.display(),
                                i + 1
                            ))
                        })
                })
                .collect::<Result<_>>()?
        }
        _ => std::fs::read_to_string(path)
            .map_err(io)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
    };
    if texts.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: no texts found",
            path.display()
        )));
    }
    Ok(texts)
}
