//! Compact HTML tables for notebooks: polars DataFrames and replens result types show as
//! tables in the evcxr Jupyter kernel.
//!
//! evcxr shows a value richly when its type has an `evcxr_display(&self)` method that prints
//! `EVCXR_BEGIN_CONTENT <mime>\n...\nEVCXR_END_CONTENT`. A `DataFrame` is a foreign type, so
//! wrap it: `replens::display::show(&df)` or `df.html()` (with [`DisplayHtml`] in scope)
//! returns an [`Html`] value that displays as a table when it ends a cell.
//!
//! ```
//! use replens::display::{show, DisplayHtml};
//! use replens::polars::prelude::*;
//! let df = df!("layer" => [0u32, 1, 2], "erank" => [12.5f64, 30.25, 41.0])?;
//! let html = show(&df);
//! assert!(html.as_str().contains("shape: (3, 2)"));
//! assert!(df.html().evcxr_payload().starts_with("EVCXR_BEGIN_CONTENT text/html\n"));
//! # Ok::<(), replens::Error>(())
//! ```

use polars::prelude::{AnyValue, Column, DataFrame, DataType, Series};

/// Rows shown by [`show`] / [`DisplayHtml::html`] before the middle is elided.
pub const DEFAULT_MAX_ROWS: usize = 20;
/// Columns shown before the middle ones are elided.
pub const DEFAULT_MAX_COLS: usize = 24;
/// Longest string cell shown in full (in characters).
const MAX_STR: usize = 60;
/// List/array cells show this many leading values.
const LIST_HEAD: usize = 3;

/// A fragment of HTML that displays itself in evcxr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Html(String);

impl Html {
    /// Wrap already-built HTML (it is not escaped).
    pub fn new(html: impl Into<String>) -> Html {
        Html(html.into())
    }

    /// The HTML text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The HTML text, owned.
    pub fn into_string(self) -> String {
        self.0
    }

    /// What [`Html::evcxr_display`] prints: the HTML framed by evcxr's display protocol.
    pub fn evcxr_payload(&self) -> String {
        format!(
            "EVCXR_BEGIN_CONTENT text/html\n{}\nEVCXR_END_CONTENT",
            self.0
        )
    }

    /// Called by the evcxr Jupyter kernel when the value ends a cell: shows the HTML inline.
    pub fn evcxr_display(&self) {
        println!("{}", self.evcxr_payload());
    }
}

impl std::fmt::Display for Html {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Things that render as an HTML table. Implemented for polars `DataFrame` and `Series`;
/// replens result types implement it with [`table_html`].
pub trait DisplayHtml {
    /// The HTML rendering, ready to display in a notebook.
    fn html(&self) -> Html;
}

impl DisplayHtml for DataFrame {
    fn html(&self) -> Html {
        show(self)
    }
}

impl DisplayHtml for Series {
    fn html(&self) -> Html {
        show(&self.clone().into_frame())
    }
}

/// The frame as a displayable HTML table (at most [`DEFAULT_MAX_ROWS`] rows).
pub fn show(df: &DataFrame) -> Html {
    Html(frame_html(df, DEFAULT_MAX_ROWS))
}

/// Like [`show`] with a row limit of your choice.
pub fn show_rows(df: &DataFrame, max_rows: usize) -> Html {
    Html(frame_html(df, max_rows))
}

/// Escape `&`, `<`, `>`, `"` and `'` for HTML text and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const TABLE_OPEN: &str = "<table class=\"dataframe replens\" style=\"border-collapse:collapse;\
font-size:12px;font-variant-numeric:tabular-nums\">";
const CELL_STYLE: &str = "padding:2px 8px;border-bottom:1px solid #e5e5e5;white-space:nowrap";

/// A plain HTML table from headers and rows of already formatted cells (all text escaped).
/// Rows shorter than the header are padded with empty cells.
///
/// ```
/// let html = replens::display::table_html(&["model", "AUC"], &[vec!["gpt2".into(), "0.91".into()]]);
/// assert!(html.contains("<th"));
/// assert!(html.contains("gpt2"));
/// ```
pub fn table_html(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from(TABLE_OPEN);
    out.push_str("<thead><tr>");
    for h in headers {
        out.push_str(&format!(
            "<th style=\"{CELL_STYLE};text-align:left\">{}</th>",
            escape_html(h)
        ));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        let n = row.len().max(headers.len());
        for k in 0..n {
            let cell = row.get(k).map_or("", String::as_str);
            out.push_str(&format!(
                "<td style=\"{CELL_STYLE}\">{}</td>",
                escape_html(cell)
            ));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A compact HTML table of `df`: its shape, column names with dtypes, and at most `max_rows`
/// rows (the first and last halves, with a `…` row between). Strings are cut at 60
/// characters, list/array cells are abbreviated like `[0.12, -0.40, … 384 values]`, and all
/// text is HTML-escaped.
pub fn frame_html(df: &DataFrame, max_rows: usize) -> String {
    frame_html_with(df, max_rows, DEFAULT_MAX_COLS)
}

/// [`frame_html`] with a column limit too (the middle columns are elided with `…`).
pub fn frame_html_with(df: &DataFrame, max_rows: usize, max_cols: usize) -> String {
    let (height, width) = df.shape();
    let columns: &[Column] = df.columns();
    // Which columns to show: None marks the elision column.
    let col_plan: Vec<Option<&Column>> = if width > max_cols.max(1) {
        let head = max_cols.max(1).div_ceil(2);
        let tail = max_cols.max(1) / 2;
        columns[..head]
            .iter()
            .map(Some)
            .chain(std::iter::once(None))
            .chain(columns[width - tail..].iter().map(Some))
            .collect()
    } else {
        columns.iter().map(Some).collect()
    };
    // Which rows to show: None marks the elision row.
    let row_plan: Vec<Option<usize>> = if height > max_rows {
        let head = max_rows.div_ceil(2);
        let tail = max_rows / 2;
        (0..head)
            .map(Some)
            .chain(std::iter::once(None))
            .chain((height - tail..height).map(Some))
            .collect()
    } else {
        (0..height).map(Some).collect()
    };

    let mut out = String::from("<div class=\"replens-frame\">");
    out.push_str(&format!(
        "<small style=\"color:#666\">shape: ({height}, {width})</small>"
    ));
    out.push_str(TABLE_OPEN);
    out.push_str("<thead><tr>");
    for col in &col_plan {
        match col {
            Some(c) => out.push_str(&format!(
                "<th style=\"{CELL_STYLE};text-align:left\">{}<br>\
                 <span style=\"font-weight:normal;color:#888\">{}</span></th>",
                escape_html(c.name()),
                escape_html(&c.dtype().to_string())
            )),
            None => out.push_str(&format!("<th style=\"{CELL_STYLE}\">…</th>")),
        }
    }
    out.push_str("</tr></thead><tbody>");
    for row in &row_plan {
        out.push_str("<tr>");
        for col in &col_plan {
            let (text, right) = match (row, col) {
                (Some(i), Some(c)) => match c.get(*i) {
                    Ok(v) => (format_value(&v), is_numeric(c.dtype())),
                    Err(e) => (format!("<error: {e}>"), false),
                },
                _ => ("…".to_string(), false),
            };
            let align = if right { ";text-align:right" } else { "" };
            out.push_str(&format!(
                "<td style=\"{CELL_STYLE}{align}\">{}</td>",
                escape_html(&text)
            ));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

fn is_numeric(dtype: &DataType) -> bool {
    dtype.is_primitive_numeric()
}

/// Short, readable text for one cell (not escaped).
pub fn format_value(v: &AnyValue) -> String {
    match v {
        AnyValue::Null => "null".into(),
        AnyValue::Float32(x) => format_float(f64::from(*x)),
        AnyValue::Float64(x) => format_float(*x),
        AnyValue::String(s) => shorten(s, MAX_STR),
        AnyValue::StringOwned(s) => shorten(s.as_str(), MAX_STR),
        AnyValue::List(s) => format_list(s),
        AnyValue::Array(s, _) => format_list(s),
        other => shorten(&other.to_string(), MAX_STR),
    }
}

fn format_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let a = x.abs();
    if a != 0.0 && !(1e-4..1e6).contains(&a) {
        return format!("{x:.3e}");
    }
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0');
    if s.ends_with('.') {
        format!("{s}0")
    } else {
        s.to_string()
    }
}

/// `[0.12, -0.40, … 384 values]`: the first few values, then the total count.
fn format_list(s: &Series) -> String {
    let n = s.len();
    let shown = if n <= LIST_HEAD + 1 { n } else { LIST_HEAD };
    let items: Vec<String> = (0..shown)
        .map(|i| match s.get(i) {
            Ok(AnyValue::Float32(x)) => format!("{x:.2}"),
            Ok(AnyValue::Float64(x)) => format!("{x:.2}"),
            Ok(v) => shorten(&format_value(&v), 16),
            Err(_) => "?".into(),
        })
        .collect();
    if shown < n {
        format!("[{}, … {n} values]", items.join(", "))
    } else {
        format!("[{}]", items.join(", "))
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_compact() {
        assert_eq!(format_float(3.0), "3.0");
        assert_eq!(format_float(0.123456), "0.1235");
        assert_eq!(format_float(1.5e-7), "1.500e-7");
        assert_eq!(format_float(f64::NAN), "NaN");
    }

    #[test]
    fn escaping() {
        assert_eq!(escape_html("<a & 'b'>"), "&lt;a &amp; &#39;b&#39;&gt;");
    }
}
