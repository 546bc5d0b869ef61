//! Heatmap of a matrix with labelled rows/columns and a colour bar (e.g. layer × layer CKA).

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{
    check_finite, collect, fmt_tick, frame_methods, Chart, DrawResult, Frame, Kind, Legend,
    PlotValue, Spec, FONT,
};
use crate::error::Result;

/// Colour scales for [`HeatmapChart`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colormap {
    /// Perceptually uniform dark-blue → yellow (matplotlib's default); for similarities.
    Viridis,
    /// Diverging blue → white → red (ColorBrewer RdBu, reversed); for signed values such as
    /// correlations. Without an explicit range the scale is symmetric around 0.
    RedBlue,
}

const VIRIDIS: [(u8, u8, u8); 11] = [
    (68, 1, 84),
    (72, 36, 117),
    (65, 68, 135),
    (53, 95, 141),
    (42, 120, 142),
    (33, 145, 140),
    (34, 168, 132),
    (68, 191, 112),
    (122, 209, 81),
    (189, 223, 38),
    (253, 231, 37),
];

const RED_BLUE: [(u8, u8, u8); 11] = [
    (5, 48, 97),
    (33, 102, 172),
    (67, 147, 195),
    (146, 197, 222),
    (209, 229, 240),
    (247, 247, 247),
    (253, 219, 199),
    (244, 165, 130),
    (214, 96, 77),
    (178, 24, 43),
    (103, 0, 31),
];

impl Colormap {
    /// Colour for `t` in [0, 1] (clamped), linearly interpolated between the stops.
    pub fn color(self, t: f64) -> RGBColor {
        let stops = match self {
            Colormap::Viridis => &VIRIDIS,
            Colormap::RedBlue => &RED_BLUE,
        };
        let t = if t.is_finite() {
            t.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let pos = t * (stops.len() - 1) as f64;
        let k = (pos.floor() as usize).min(stops.len() - 2);
        let f = pos - k as f64;
        let (a, b) = (stops[k], stops[k + 1]);
        let mix = |p: u8, q: u8| (f64::from(p) + f * (f64::from(q) - f64::from(p))).round() as u8;
        RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct HeatmapSpec {
    rows: Vec<Vec<f64>>,
    row_labels: Vec<String>,
    col_labels: Vec<String>,
    range: (f64, f64),
    colormap: Colormap,
    annotate: bool,
    bar_label: String,
}

/// Heatmap of a matrix: row 0 at the top, column 0 at the left, a colour bar with the value
/// scale on the right. Rows/columns are labelled `0, 1, ...` unless labels are given.
///
/// ```
/// use replens::plot::{Colormap, HeatmapChart};
/// let cka = vec![
///     vec![1.0, 0.8, 0.5],
///     vec![0.8, 1.0, 0.7],
///     vec![0.5, 0.7, 1.0],
/// ];
/// let chart = HeatmapChart::new("linear CKA, layer × layer")
///     .matrix(&cka)
///     .labels(["L0", "L1", "L2"])
///     .x_label("layer (model B)")
///     .y_label("layer (model A)")
///     .range(0.0, 1.0)
///     .bar_label("CKA")
///     .colormap(Colormap::Viridis)
///     .build()?;
/// assert_eq!(chart.width(), 800);
/// # Ok::<(), replens::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct HeatmapChart {
    frame: Frame,
    rows: Option<Vec<Vec<f64>>>,
    row_labels: Option<Vec<String>>,
    col_labels: Option<Vec<String>>,
    range: Option<(f64, f64)>,
    colormap: Colormap,
    annotate: Option<bool>,
    bar_label: String,
    errors: Vec<String>,
}

impl HeatmapChart {
    /// Start a heatmap with the given title.
    pub fn new(title: impl Into<String>) -> Self {
        HeatmapChart {
            frame: Frame::new("heatmap", title, Legend::Hidden),
            rows: None,
            row_labels: None,
            col_labels: None,
            range: None,
            colormap: Colormap::Viridis,
            annotate: None,
            bar_label: String::new(),
            errors: Vec::new(),
        }
    }

    frame_methods!();

    /// The matrix as rows (`&Vec<Vec<f64>>`, `&[[f32; 4]]`, ...); every row must have the
    /// same length.
    pub fn matrix<R, V>(mut self, rows: impl IntoIterator<Item = R>) -> Self
    where
        R: IntoIterator<Item = V>,
        V: PlotValue,
    {
        self.rows = Some(rows.into_iter().map(collect).collect());
        self
    }

    /// The matrix as a flat row-major slice with `n_cols` columns.
    pub fn matrix_flat<V: PlotValue>(
        mut self,
        values: impl IntoIterator<Item = V>,
        n_cols: usize,
    ) -> Self {
        let flat = collect(values);
        if n_cols == 0 || flat.len() % n_cols != 0 {
            self.errors.push(format!(
                "matrix_flat: {} values cannot be split into rows of {n_cols}",
                flat.len()
            ));
        } else {
            self.rows = Some(flat.chunks(n_cols).map(<[f64]>::to_vec).collect());
        }
        self
    }

    /// The matrix from a 2-D candle tensor (any float or integer dtype).
    pub fn tensor(mut self, t: &candle_core::Tensor) -> Self {
        match t
            .to_dtype(candle_core::DType::F64)
            .and_then(|t| t.to_vec2::<f64>())
        {
            Ok(rows) => self.rows = Some(rows),
            Err(e) => self.errors.push(format!(
                "tensor of shape {:?} is not a 2-D numeric matrix: {e}",
                t.dims()
            )),
        }
        self
    }

    /// Labels of the rows (top to bottom).
    pub fn row_labels<S: ToString>(mut self, labels: impl IntoIterator<Item = S>) -> Self {
        self.row_labels = Some(labels.into_iter().map(|s| s.to_string()).collect());
        self
    }

    /// Labels of the columns (left to right).
    pub fn col_labels<S: ToString>(mut self, labels: impl IntoIterator<Item = S>) -> Self {
        self.col_labels = Some(labels.into_iter().map(|s| s.to_string()).collect());
        self
    }

    /// The same labels for rows and columns (square matrices, e.g. layer × layer).
    pub fn labels<S: ToString>(self, labels: impl IntoIterator<Item = S>) -> Self {
        let labels: Vec<String> = labels.into_iter().map(|s| s.to_string()).collect();
        self.row_labels(labels.clone()).col_labels(labels)
    }

    /// Fix the colour scale to `[min, max]` (values outside are clamped to the end colours).
    /// By default the scale spans the data.
    pub fn range(mut self, min: f64, max: f64) -> Self {
        self.range = Some((min, max));
        self
    }

    /// Colour scale (default [`Colormap::Viridis`]).
    pub fn colormap(mut self, colormap: Colormap) -> Self {
        self.colormap = colormap;
        self
    }

    /// Print each value in its cell (default: when the cells are large enough).
    pub fn annotate(mut self, yes: bool) -> Self {
        self.annotate = Some(yes);
        self
    }

    /// Caption of the colour bar (e.g. `"CKA"`).
    pub fn bar_label(mut self, label: impl Into<String>) -> Self {
        self.bar_label = label.into();
        self
    }

    /// Validate and render.
    ///
    /// Errors on: no matrix, an empty matrix, ragged rows (naming the row), NaN or infinite
    /// cells (naming row and column), label counts that do not match the matrix, an invalid
    /// range or size.
    pub fn build(self) -> Result<Chart> {
        let HeatmapChart {
            frame,
            rows,
            row_labels,
            col_labels,
            range,
            colormap,
            annotate,
            bar_label,
            mut errors,
        } = self;
        frame.check(&mut errors);
        let rows = rows.unwrap_or_default();
        let n_rows = rows.len();
        let n_cols = rows.first().map_or(0, Vec::len);
        if n_rows == 0 || n_cols == 0 {
            errors.push("the matrix is empty (set it with .matrix(rows))".into());
        }
        for (i, r) in rows.iter().enumerate() {
            if r.len() != n_cols {
                errors.push(format!(
                    "row {i} has {} values but row 0 has {n_cols} (the matrix must be rectangular)",
                    r.len()
                ));
            }
            check_finite(&mut errors, &format!("row {i}"), "column", r);
        }
        let row_labels = row_labels.unwrap_or_else(|| (0..n_rows).map(|i| i.to_string()).collect());
        let col_labels = col_labels.unwrap_or_else(|| (0..n_cols).map(|i| i.to_string()).collect());
        if row_labels.len() != n_rows {
            errors.push(format!("{} row labels for {n_rows} rows", row_labels.len()));
        }
        if col_labels.len() != n_cols {
            errors.push(format!(
                "{} column labels for {n_cols} columns",
                col_labels.len()
            ));
        }
        if let Some((lo, hi)) = range {
            if !(lo.abs() <= super::MAX_ABS && hi.abs() <= super::MAX_ABS && lo < hi) {
                errors.push(format!("range({lo}, {hi}) must be finite with min < max"));
            }
        }
        frame.fail(errors)?;

        let range = range.unwrap_or_else(|| {
            let (lo, hi) = super::min_max(rows.iter().flatten().copied()).unwrap_or((0.0, 1.0));
            let (lo, hi) = if colormap == Colormap::RedBlue {
                let m = lo.abs().max(hi.abs());
                (-m, m)
            } else {
                (lo, hi)
            };
            if hi > lo {
                (lo, hi)
            } else {
                super::padded(lo, hi, 0.0)
            }
        });
        let annotate = annotate.unwrap_or(n_rows <= 12 && n_cols <= 12);
        Chart::from_spec(Spec {
            frame,
            kind: Kind::Heatmap(HeatmapSpec {
                rows,
                row_labels,
                col_labels,
                range,
                colormap,
                annotate,
                bar_label,
            }),
        })
    }
}

/// Smallest label stride from 1, 2, 5, 10, 20, 25, 50, 100, ... that is at least `min`, so
/// thinned labels land on round indices.
fn nice_step(min: f64) -> usize {
    if !min.is_finite() || min <= 1.0 {
        return 1;
    }
    for small in [2, 5] {
        if small as f64 >= min {
            return small;
        }
    }
    let mut scale = 1usize;
    while scale < 100_000_000 {
        for base in [10, 20, 25, 50] {
            if (base * scale) as f64 >= min {
                return base * scale;
            }
        }
        scale *= 10;
    }
    usize::MAX
}

/// Shorten a label to `max` characters with an ellipsis.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

pub(crate) fn draw<DB: DrawingBackend>(
    frame: &Frame,
    spec: &HeatmapSpec,
    root: &DrawingArea<DB, Shift>,
) -> DrawResult<DB> {
    let (title_px, desc_px, tick_px, _) = frame.font_sizes();
    let n_rows = spec.rows.len();
    let n_cols = spec.rows.first().map_or(0, Vec::len);
    let row_labels: Vec<String> = spec.row_labels.iter().map(|s| shorten(s, 14)).collect();
    let col_labels: Vec<String> = spec.col_labels.iter().map(|s| shorten(s, 14)).collect();
    let char_w = tick_px * 0.62;
    let longest = |v: &[String]| v.iter().map(|s| s.chars().count()).max().unwrap_or(1) as f64;

    let area = if frame.title.is_empty() {
        root.clone()
    } else {
        root.margin(8, 0, 0, 0)
            .titled(&frame.title, (FONT, title_px).into_font())?
    };
    let (w, _) = area.dim_in_pixel();
    let (lo, hi) = spec.range;
    let bar_ticks = |v: &f64| fmt_tick(*v);
    let bar_chars = super::tick_chars(lo, hi, 6, &bar_ticks) as f64;
    let bar_label_w = (bar_chars * 0.62 * tick_px
        + 14.0
        + if spec.bar_label.is_empty() {
            0.0
        } else {
            desc_px * 1.8
        }) as u32;
    let bar_w = bar_label_w + 34;
    let (main, bar) = area.split_horizontally(w.saturating_sub(bar_w));

    let desc_gap = |label: &str| if label.is_empty() { 0.0 } else { desc_px * 1.8 };
    let x_area = (tick_px * 1.8 + desc_gap(&frame.x_label)) as u32;
    let y_area = (char_w * longest(&row_labels) + 14.0 + desc_gap(&frame.y_label)) as u32;
    let margin = 12u32;
    let mut chart = ChartBuilder::on(&main)
        .margin(margin)
        .x_label_area_size(x_area)
        .y_label_area_size(y_area)
        .build_cartesian_2d(0f64..n_cols as f64, 0f64..n_rows as f64)?;
    {
        let mut mesh = chart.configure_mesh();
        mesh.disable_mesh()
            .x_labels(0)
            .y_labels(0)
            .axis_desc_style((FONT, desc_px).into_font());
        if !frame.x_label.is_empty() {
            mesh.x_desc(frame.x_label.as_str());
        }
        if !frame.y_label.is_empty() {
            mesh.y_desc(frame.y_label.as_str());
        }
        mesh.draw()?;
    }

    let norm = |v: f64| (v - lo) / (hi - lo);
    let top = n_rows as f64;
    chart.draw_series(spec.rows.iter().enumerate().flat_map(|(i, row)| {
        row.iter().enumerate().map(move |(j, &v)| {
            let y = top - i as f64;
            Rectangle::new(
                [(j as f64, y - 1.0), (j as f64 + 1.0, y)],
                spec.colormap.color(norm(v)).filled(),
            )
        })
    }))?;

    // Cell geometry in pixels, for label thinning and annotations.
    let (px0, py0) = chart.backend_coord(&(0.0, top));
    let (px1, py1) = chart.backend_coord(&(n_cols as f64, 0.0));
    let cell_w = f64::from(px1 - px0) / n_cols.max(1) as f64;
    let cell_h = f64::from(py1 - py0) / n_rows.max(1) as f64;

    let tick_style = (FONT, tick_px).into_font().color(&BLACK);
    // Row labels: right-aligned left of the matrix, every k-th so they do not overlap.
    let row_step = nice_step((tick_px * 1.3) / cell_h);
    for (i, label) in row_labels.iter().enumerate().step_by(row_step) {
        let (x, y) = chart.backend_coord(&(0.0, top - i as f64 - 0.5));
        root.draw(&Text::new(
            label.clone(),
            (x - 6, y),
            tick_style.pos(Pos::new(HPos::Right, VPos::Center)),
        ))?;
    }
    let col_step = nice_step((char_w * longest(&col_labels) + 8.0) / cell_w);
    for (j, label) in col_labels.iter().enumerate().step_by(col_step) {
        let (x, y) = chart.backend_coord(&(j as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            label.clone(),
            (x, y + 5),
            tick_style.pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
    }

    if spec.annotate {
        let size = (cell_h * 0.38).min(cell_w * 0.24).min(tick_px);
        if size >= 7.0 {
            for (i, row) in spec.rows.iter().enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    let c = spec.colormap.color(norm(v));
                    let luminance =
                        0.299 * f64::from(c.0) + 0.587 * f64::from(c.1) + 0.114 * f64::from(c.2);
                    let ink = if luminance > 140.0 { BLACK } else { WHITE };
                    let (x, y) = chart.backend_coord(&(j as f64 + 0.5, top - i as f64 - 0.5));
                    root.draw(&Text::new(
                        format!("{v:.2}"),
                        (x, y),
                        (FONT, size)
                            .into_font()
                            .color(&ink)
                            .pos(Pos::new(HPos::Center, VPos::Center)),
                    ))?;
                }
            }
        }
    }

    // Colour bar, vertically aligned with the matrix.
    let mut bar_builder = ChartBuilder::on(&bar);
    bar_builder
        .margin_top(margin)
        .margin_bottom(margin + x_area)
        .margin_left(6)
        .margin_right(4)
        .set_label_area_size(LabelAreaPosition::Right, bar_label_w);
    let mut colour_bar = bar_builder.build_cartesian_2d(0f64..1f64, lo..hi)?;
    {
        let mut mesh = colour_bar.configure_mesh();
        mesh.disable_mesh()
            .disable_x_axis()
            .y_labels(6)
            .set_tick_mark_size(LabelAreaPosition::Right, 5)
            .y_label_formatter(&bar_ticks)
            .label_style((FONT, tick_px).into_font())
            .axis_desc_style((FONT, desc_px).into_font());
        if !spec.bar_label.is_empty() {
            mesh.y_desc(spec.bar_label.as_str());
        }
        mesh.draw()?;
    }
    let steps = 128;
    colour_bar.draw_series((0..steps).map(|k| {
        let a = lo + (hi - lo) * k as f64 / steps as f64;
        let b = lo + (hi - lo) * (k + 1) as f64 / steps as f64;
        Rectangle::new(
            [(0.0, a), (1.0, b)],
            spec.colormap
                .color((k as f64 + 0.5) / steps as f64)
                .filled(),
        )
    }))?;
    colour_bar.draw_series(std::iter::once(Rectangle::new(
        [(0.0, lo), (1.0, hi)],
        RGBColor(0, 0, 0).mix(0.5).stroke_width(1),
    )))?;
    Ok(())
}
