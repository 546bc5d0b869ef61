//! Charts as values: build one in a single expression, look at it inline in an evcxr notebook,
//! save it as SVG or PNG.
//!
//! Every builder ([`LineChart`], [`HeatmapChart`], [`ScatterChart`], [`HistogramChart`],
//! [`RocChart`]) collects its data with chained calls and validates everything in `build()`,
//! which returns a [`Chart`] or a [`crate::Error`] naming the offending series — bad input never
//! panics. A [`Chart`] keeps its specification, so the SVG (shown in notebooks) and the PNG
//! (written through plotters' `BitMapBackend`) are drawn by the same generic drawing code.
//!
//! Text is drawn with the bundled DejaVu Sans font (registered with plotters' `ab_glyph`
//! feature), so PNG rendering does not depend on system fonts.
//!
//! ```
//! use replens::plot::LineChart;
//! let layers: Vec<usize> = (0..6).collect();
//! let erank = [12.0, 30.5, 41.2, 44.0, 43.1, 39.9];
//! let chart = LineChart::new("effective rank per layer")
//!     .x_label("layer")
//!     .y_label("eRank")
//!     .series("trained", &layers, &erank)
//!     .build()?;
//! assert!(chart.to_svg_string().starts_with("<svg"));
//! // In a notebook, `chart` as the last expression of a cell displays it inline.
//! # Ok::<(), replens::Error>(())
//! ```

mod heatmap;
mod hist;
pub mod kde;
mod line;
mod roc;
mod scatter;

pub use heatmap::{Colormap, HeatmapChart};
pub use hist::HistogramChart;
pub use line::LineChart;
pub use roc::{roc_auc, roc_curve, RocChart};
pub use scatter::ScatterChart;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};

/// Font family name every chart asks plotters for; the bundled font is registered under it.
pub(crate) const FONT: &str = "sans-serif";

/// DejaVu Sans (see assets/DejaVuSans.LICENSE), embedded so that PNG rendering works on
/// machines without fontconfig/freetype: plotters' bitmap backend cannot draw text otherwise.
static DEJAVU_SANS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/DejaVuSans.ttf"
));

static FONT_REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Register the bundled font with plotters exactly once per process. Both backends need it:
/// the SVG backend also asks the font for text extents when laying out labels.
pub(crate) fn ensure_font() -> Result<()> {
    FONT_REGISTERED
        .get_or_init(|| {
            for family in [FONT, "serif", "monospace"] {
                plotters::style::register_font(family, FontStyle::Normal, DEJAVU_SANS).map_err(
                    |_| "the bundled font assets/DejaVuSans.ttf could not be parsed".to_string(),
                )?;
            }
            Ok(())
        })
        .clone()
        .map_err(Error::InvalidInput)
}

/// Default chart width in pixels.
pub const DEFAULT_WIDTH: u32 = 800;
/// Default chart height in pixels.
pub const DEFAULT_HEIGHT: u32 = 500;
/// Smallest and largest accepted chart side, in pixels.
pub const SIZE_LIMITS: (u32, u32) = (100, 8192);

/// The categorical palette (matplotlib's "tab10"): series `i` gets colour `i % 10`.
pub const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// Colour of the `i`-th series.
pub fn palette(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

/// A number that can be plotted: every primitive integer and float, and references to them,
/// so that `&Vec<f32>`, `&[usize]`, `0..12` and `vec![1.0, 2.0]` can all be passed directly.
pub trait PlotValue: Copy {
    /// The value as `f64`.
    fn to_f64(self) -> f64;
}

macro_rules! plot_value {
    ($($t:ty),*) => {$(
        impl PlotValue for $t {
            #[inline]
            fn to_f64(self) -> f64 { self as f64 }
        }
    )*};
}
plot_value!(f32, f64, i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

impl<T: PlotValue> PlotValue for &T {
    #[inline]
    fn to_f64(self) -> f64 {
        (*self).to_f64()
    }
}

/// Collect any iterable of plottable values as `f64`.
pub(crate) fn collect<V: PlotValue>(values: impl IntoIterator<Item = V>) -> Vec<f64> {
    values.into_iter().map(PlotValue::to_f64).collect()
}

/// Where the legend goes (inside the plotting area).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Legend {
    /// The corner where the legend box covers the least data (the default for line, scatter
    /// and histogram charts).
    Auto,
    UpperLeft,
    UpperRight,
    LowerLeft,
    LowerRight,
    /// No legend.
    Hidden,
}

impl Legend {
    fn position(self) -> Option<SeriesLabelPosition> {
        match self {
            Legend::UpperLeft => Some(SeriesLabelPosition::UpperLeft),
            Legend::UpperRight => Some(SeriesLabelPosition::UpperRight),
            Legend::LowerLeft => Some(SeriesLabelPosition::LowerLeft),
            Legend::LowerRight => Some(SeriesLabelPosition::LowerRight),
            Legend::Hidden => None,
            Legend::Auto => Some(SeriesLabelPosition::UpperRight),
        }
    }
}

/// Coarse map of where data is drawn inside the plotting area, used to put the legend in the
/// emptiest corner.
pub(crate) struct Occupancy {
    cells: Vec<u32>,
    x: (f64, f64),
    y: (f64, f64),
}

const OCC_N: usize = 40;

impl Occupancy {
    pub(crate) fn new(x: (f64, f64), y: (f64, f64)) -> Self {
        Occupancy {
            cells: vec![0; OCC_N * OCC_N],
            x,
            y,
        }
    }

    fn cell(&self, x: f64, y: f64) -> Option<(usize, usize)> {
        let fx = (x - self.x.0) / (self.x.1 - self.x.0);
        let fy = (y - self.y.0) / (self.y.1 - self.y.0);
        if !(0.0..=1.0).contains(&fx) || !(0.0..=1.0).contains(&fy) {
            return None;
        }
        let cx = ((fx * OCC_N as f64) as usize).min(OCC_N - 1);
        let cy = ((fy * OCC_N as f64) as usize).min(OCC_N - 1);
        Some((cx, cy))
    }

    pub(crate) fn point(&mut self, x: f64, y: f64) {
        if let Some((cx, cy)) = self.cell(x, y) {
            self.cells[cy * OCC_N + cx] += 1;
        }
    }

    /// Mark a polyline, sampled finely enough to touch every cell it crosses.
    pub(crate) fn polyline(&mut self, pts: &[(f64, f64)]) {
        for w in pts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let steps = 2 * OCC_N;
            for k in 0..=steps {
                let t = k as f64 / steps as f64;
                let (x, y) = (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1));
                if let Some((cx, cy)) = self.cell(x, y) {
                    self.cells[cy * OCC_N + cx] = self.cells[cy * OCC_N + cx].max(1) + 1;
                }
            }
        }
    }

    /// Mark a filled bar from the bottom of the range up to `top` between `x0` and `x1`.
    pub(crate) fn column(&mut self, x0: f64, x1: f64, top: f64) {
        let (Some((c0, _)), Some((c1, ct))) = (
            self.cell(x0.max(self.x.0), self.y.0),
            self.cell(x1.min(self.x.1), top.clamp(self.y.0, self.y.1)),
        ) else {
            return;
        };
        for cx in c0..=c1 {
            for cy in 0..=ct {
                self.cells[cy * OCC_N + cx] += 1;
            }
        }
    }

    /// The corner whose legend-sized box holds the least data; ties keep the conventional
    /// upper right.
    pub(crate) fn best_corner(&self, frame: &Frame, labels: &[&str]) -> Legend {
        let (_, _, _, legend_px) = frame.font_sizes();
        let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as f64;
        let box_w = longest * 0.6 * legend_px + 60.0;
        let box_h = labels.len() as f64 * legend_px * 1.5 + 28.0;
        let plot_w = (f64::from(frame.width) - 140.0).max(50.0);
        let plot_h = (f64::from(frame.height) - 130.0).max(50.0);
        let nx = ((box_w / plot_w * OCC_N as f64).ceil() as usize).clamp(1, OCC_N);
        let ny = ((box_h / plot_h * OCC_N as f64).ceil() as usize).clamp(1, OCC_N);
        let count = |right: bool, top: bool| -> u64 {
            let xs = if right { OCC_N - nx..OCC_N } else { 0..nx };
            let ys = if top { OCC_N - ny..OCC_N } else { 0..ny };
            ys.flat_map(|cy| xs.clone().map(move |cx| (cx, cy)))
                .map(|(cx, cy)| u64::from(self.cells[cy * OCC_N + cx]))
                .sum()
        };
        let candidates = [
            (Legend::UpperRight, count(true, true)),
            (Legend::UpperLeft, count(false, true)),
            (Legend::LowerRight, count(true, false)),
            (Legend::LowerLeft, count(false, false)),
        ];
        let mut best = candidates[0];
        for c in &candidates[1..] {
            if c.1 < best.1 {
                best = *c;
            }
        }
        best.0
    }
}

/// What every chart has: title, axis labels, size, legend placement.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub kind: &'static str,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub width: u32,
    pub height: u32,
    pub legend: Legend,
}

impl Frame {
    pub(crate) fn new(kind: &'static str, title: impl Into<String>, legend: Legend) -> Self {
        Frame {
            kind,
            title: title.into(),
            x_label: String::new(),
            y_label: String::new(),
            width: DEFAULT_WIDTH,
            height: DEFAULT_HEIGHT,
            legend,
        }
    }

    /// Prefix for error messages, e.g. `line chart 'eRank per layer'`.
    pub(crate) fn what(&self) -> String {
        if self.title.is_empty() {
            format!("{} (untitled)", self.kind)
        } else {
            format!("{} '{}'", self.kind, self.title)
        }
    }

    pub(crate) fn check(&self, errors: &mut Vec<String>) {
        let (lo, hi) = SIZE_LIMITS;
        if !(lo..=hi).contains(&self.width) || !(lo..=hi).contains(&self.height) {
            errors.push(format!(
                "size {}x{} is outside the accepted {lo}..={hi} pixels per side",
                self.width, self.height
            ));
        }
    }

    /// Turn collected validation messages into one error that names the chart.
    pub(crate) fn fail(&self, errors: Vec<String>) -> Result<()> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidInput(format!(
                "{}: {}",
                self.what(),
                errors.join("; ")
            )))
        }
    }

    /// Font sizes scale mildly with the chart so small thumbnails stay legible and large
    /// figures do not look empty. Returns (title, axis description, tick labels, legend).
    pub(crate) fn font_sizes(&self) -> (f64, f64, f64, f64) {
        let s = (f64::from(self.width.min(self.height)) / 500.0).clamp(0.6, 2.0);
        (24.0 * s, 17.0 * s, 14.0 * s, 14.0 * s)
    }
}

/// Generate the builder methods every chart shares.
macro_rules! frame_methods {
    () => {
        /// Set (or replace) the chart title.
        pub fn title(mut self, title: impl Into<String>) -> Self {
            self.frame.title = title.into();
            self
        }

        /// Label of the horizontal axis.
        pub fn x_label(mut self, label: impl Into<String>) -> Self {
            self.frame.x_label = label.into();
            self
        }

        /// Label of the vertical axis.
        pub fn y_label(mut self, label: impl Into<String>) -> Self {
            self.frame.y_label = label.into();
            self
        }

        /// Chart size in pixels (default 800×500); each side must lie in
        /// [`SIZE_LIMITS`](crate::plot::SIZE_LIMITS).
        pub fn size(mut self, width: u32, height: u32) -> Self {
            self.frame.width = width;
            self.frame.height = height;
            self
        }

        /// Where to put the legend, or [`Legend::Hidden`](crate::plot::Legend::Hidden).
        pub fn legend(mut self, position: crate::plot::Legend) -> Self {
            self.frame.legend = position;
            self
        }
    };
}
pub(crate) use frame_methods;

/// Check that a series has no NaN/infinite values; names the series and the first bad index.
/// Values beyond this magnitude are rejected: axis arithmetic (spans, padding) would overflow.
pub(crate) const MAX_ABS: f64 = 1e150;

pub(crate) fn check_finite(errors: &mut Vec<String>, what: &str, field: &str, values: &[f64]) {
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        errors.push(format!(
            "{what}: {field}[{i}] is {v} (values must be finite)"
        ));
    } else if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| v.abs() > MAX_ABS) {
        errors.push(format!(
            "{what}: {field}[{i}] = {v:e} is too large to plot (|value| > 1e150)"
        ));
    }
}

/// A value range padded by `frac` on both sides; degenerate ranges get ±0.5 (or ±5% of |v|).
pub(crate) fn padded(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    if hi > lo {
        let pad = (hi - lo) * frac;
        (lo - pad, hi + pad)
    } else {
        let pad = if lo == 0.0 { 0.5 } else { lo.abs() * 0.05 };
        (lo - pad, hi + pad)
    }
}

/// Min and max of an iterator of finite values (`None` if empty).
pub(crate) fn min_max(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values.into_iter().fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Tick label text: short, without floating-point noise (`0.30000000000000004` → `0.3`).
pub fn fmt_tick(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v.is_finite() {
            "0".into()
        } else {
            format!("{v}")
        };
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// Compact number with an SI-style suffix, for log-scaled axes of model sizes:
/// `1.35e8` → `135M`, `7e9` → `7B`.
pub fn fmt_si(v: f64) -> String {
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e12 {
        (v / 1e12, "T")
    } else if a >= 1e9 {
        (v / 1e9, "B")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    // three significant digits
    let digits = if scaled.abs() >= 100.0 {
        0
    } else if scaled.abs() >= 10.0 {
        1
    } else if scaled.abs() >= 1.0 || scaled == 0.0 {
        2
    } else {
        3
    };
    let s = format!("{scaled:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{suffix}")
}

/// Result of drawing on some backend.
pub(crate) type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// What each chart type draws.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Line(line::LineSpec),
    Heatmap(heatmap::HeatmapSpec),
    Scatter(scatter::ScatterSpec),
    Histogram(hist::HistSpec),
    Roc(roc::RocSpec),
}

/// A validated chart description; drawing it cannot fail on data, only on the backend.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub frame: Frame,
    pub kind: Kind,
}

impl Spec {
    /// The one drawing routine, generic over the backend so SVG and PNG show the same thing.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        match &self.kind {
            Kind::Line(s) => line::draw(&self.frame, s, root),
            Kind::Heatmap(s) => heatmap::draw(&self.frame, s, root),
            Kind::Scatter(s) => scatter::draw(&self.frame, s, root),
            Kind::Histogram(s) => hist::draw(&self.frame, s, root),
            Kind::Roc(s) => roc::draw(&self.frame, s, root),
        }?;
        root.present()
    }

    fn size(&self) -> (u32, u32) {
        (self.frame.width, self.frame.height)
    }

    fn render_svg(&self) -> Result<String> {
        ensure_font()?;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, self.size()).into_drawing_area();
            self.draw(&root)
                .map_err(|e| draw_error(&self.frame, "SVG", &e))?;
        }
        Ok(svg)
    }

    fn render_rgb(&self) -> Result<Vec<u8>> {
        ensure_font()?;
        let (w, h) = self.size();
        let mut buf = vec![0u8; (w as usize) * (h as usize) * 3];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            self.draw(&root)
                .map_err(|e| draw_error(&self.frame, "bitmap", &e))?;
        }
        Ok(buf)
    }
}

fn draw_error(frame: &Frame, backend: &str, e: &dyn std::fmt::Display) -> Error {
    Error::InvalidInput(format!(
        "{}: drawing on the {backend} backend failed: {e}",
        frame.what()
    ))
}

/// A finished chart: an SVG rendering plus the specification it was drawn from.
///
/// Build one with a chart builder; as the last expression of an evcxr notebook cell it
/// displays inline (see [`Chart::evcxr_display`]).
///
/// ```
/// use replens::plot::{Chart, HistogramChart};
/// let chart: Chart = HistogramChart::new("scores")
///     .group("in-distribution", &[0.1, 0.2, 0.25, 0.3, 0.4])
///     .group("shifted", &[0.5, 0.6, 0.62, 0.7, 0.9])
///     .size(640, 400)
///     .build()?;
/// assert_eq!((chart.width(), chart.height()), (640, 400));
/// let dir = std::env::temp_dir();
/// chart.save_svg(dir.join("replens-doc-hist.svg"))?;
/// chart.save_png(dir.join("replens-doc-hist.png"))?;
/// let rgb = chart.to_rgb()?; // the same drawing, in memory
/// assert_eq!(rgb.len(), 640 * 400 * 3);
/// assert!(chart.evcxr_payload().starts_with("EVCXR_BEGIN_CONTENT image/svg+xml\n<svg"));
/// # Ok::<(), replens::Error>(())
/// ```
#[derive(Clone)]
pub struct Chart {
    spec: Arc<Spec>,
    svg: String,
}

impl std::fmt::Debug for Chart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chart")
            .field("kind", &self.spec.frame.kind)
            .field("title", &self.spec.frame.title)
            .field("width", &self.spec.frame.width)
            .field("height", &self.spec.frame.height)
            .finish()
    }
}

impl Chart {
    /// Render a validated spec to SVG right away, so drawing problems surface in `build()`.
    pub(crate) fn from_spec(spec: Spec) -> Result<Chart> {
        let svg = spec.render_svg()?;
        Ok(Chart {
            spec: Arc::new(spec),
            svg,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.spec.frame.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.spec.frame.height
    }

    /// The chart's title.
    pub fn title(&self) -> &str {
        &self.spec.frame.title
    }

    /// The SVG document (borrowed).
    pub fn svg(&self) -> &str {
        &self.svg
    }

    /// The SVG document as an owned string.
    pub fn to_svg_string(&self) -> String {
        self.svg.clone()
    }

    /// The same chart drawn at another size (text and margins are re-laid out).
    pub fn resized(&self, width: u32, height: u32) -> Result<Chart> {
        let mut spec = (*self.spec).clone();
        spec.frame.width = width;
        spec.frame.height = height;
        let mut errors = Vec::new();
        spec.frame.check(&mut errors);
        spec.frame.fail(errors)?;
        Chart::from_spec(spec)
    }

    /// Write the SVG document to `path`.
    pub fn save_svg(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.svg.as_bytes()).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Draw the chart into an in-memory RGB buffer (`width * height * 3` bytes, row-major)
    /// with plotters' `BitMapBackend` — exactly what [`Chart::save_png`] writes.
    pub fn to_rgb(&self) -> Result<Vec<u8>> {
        self.spec.render_rgb()
    }

    /// Render with plotters' `BitMapBackend` at the chart's size and write a PNG to `path`
    /// (which must end in `.png`: the encoder picks the format from the extension).
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let is_png = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if !is_png {
            return Err(Error::InvalidInput(format!(
                "save_png: {} does not end in .png",
                path.display()
            )));
        }
        // Draw into memory first so that a drawing failure never leaves a half-written file
        // (BitMapBackend saves on drop), then blit and encode.
        let rgb = self.to_rgb()?;
        let (w, h) = (self.width(), self.height());
        let io_err = |e: &dyn std::fmt::Display| Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        };
        let mut backend = BitMapBackend::new(path, (w, h));
        backend
            .blit_bitmap((0, 0), (w, h), &rgb)
            .map_err(|e| io_err(&e))?;
        backend.present().map_err(|e| io_err(&e))
    }

    /// Save as SVG or PNG depending on the extension of `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("svg") => self.save_svg(path),
            Some("png") => self.save_png(path),
            _ => Err(Error::InvalidInput(format!(
                "cannot tell the image format of {}: use a .svg or .png extension",
                path.display()
            ))),
        }
    }

    /// What [`Chart::evcxr_display`] prints: the SVG framed by evcxr's display protocol.
    pub fn evcxr_payload(&self) -> String {
        format!(
            "EVCXR_BEGIN_CONTENT image/svg+xml\n{}\nEVCXR_END_CONTENT",
            self.svg.trim_end()
        )
    }

    /// Called by the evcxr Jupyter kernel when a chart is the value of a cell: prints the SVG
    /// with evcxr's `EVCXR_BEGIN_CONTENT image/svg+xml` framing so it is shown inline.
    pub fn evcxr_display(&self) {
        println!("{}", self.evcxr_payload());
    }
}

/// A chart context with linear f64 axes.
pub(crate) type XyChart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Draw the caption, mesh and axis descriptions shared by the x/y charts and return the
/// chart context. `x_fmt`/`y_fmt` format tick labels.
pub(crate) fn cartesian<'a, DB: DrawingBackend>(
    frame: &Frame,
    root: &'a DrawingArea<DB, Shift>,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    x_fmt: &dyn Fn(&f64) -> String,
    y_fmt: &dyn Fn(&f64) -> String,
) -> std::result::Result<XyChart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    let (title_px, desc_px, tick_px, _) = frame.font_sizes();
    let x_labels = (frame.width / 90).clamp(3, 12) as usize;
    let y_labels = (frame.height / 60).clamp(3, 12) as usize;
    let desc_gap = |label: &str| if label.is_empty() { 0.0 } else { desc_px * 1.8 };
    let y_chars = tick_chars(y.start, y.end, y_labels, y_fmt) as f64;
    let mut builder = ChartBuilder::on(root);
    builder
        .margin(14)
        .margin_right(24)
        .x_label_area_size((tick_px * 1.8 + desc_gap(&frame.x_label)) as u32)
        .y_label_area_size((y_chars * 0.62 * tick_px + 16.0 + desc_gap(&frame.y_label)) as u32);
    if !frame.title.is_empty() {
        builder.caption(&frame.title, (FONT, title_px).into_font());
    }
    // Ticks computed as lo + k * step can miss 0 by rounding noise (e.g. -1.4e104 on an axis
    // spanning ±1e120): snap values negligible against the span to exact 0.
    let snap = |v: f64, span: f64| if v.abs() < span.abs() * 1e-9 { 0.0 } else { v };
    let (x_span, y_span) = (x.end - x.start, y.end - y.start);
    let x_fmt_snapped = move |v: &f64| x_fmt(&snap(*v, x_span));
    let y_fmt_snapped = move |v: &f64| y_fmt(&snap(*v, y_span));
    let mut chart = builder.build_cartesian_2d(x, y)?;
    let mut mesh = chart.configure_mesh();
    mesh.x_labels(x_labels)
        .y_labels(y_labels)
        .x_label_formatter(&x_fmt_snapped)
        .y_label_formatter(&y_fmt_snapped)
        .label_style((FONT, tick_px).into_font())
        .axis_desc_style((FONT, desc_px).into_font())
        .bold_line_style(RGBColor(0, 0, 0).mix(0.12))
        .light_line_style(RGBColor(0, 0, 0).mix(0.04));
    if !frame.x_label.is_empty() {
        mesh.x_desc(frame.x_label.as_str());
    }
    if !frame.y_label.is_empty() {
        mesh.y_desc(frame.y_label.as_str());
    }
    mesh.draw()?;
    Ok(chart)
}

/// Longest tick label (in characters) on an axis from `lo` to `hi` with about `n` ticks at
/// 1-2-5 steps — what plotters will print, so the label area fits without a wide gap.
pub(crate) fn tick_chars(lo: f64, hi: f64, n: usize, fmt: &dyn Fn(&f64) -> String) -> usize {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return 3;
    }
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut longest = 1;
    let mut t = (lo / step).ceil() * step;
    for _ in 0..100 {
        if t > hi {
            break;
        }
        longest = longest.max(fmt(&t).chars().count());
        t += step;
    }
    longest
}

/// Draw the legend box if the frame asks for one.
pub(crate) fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    frame: &Frame,
    chart: &mut ChartContext<'a, DB, CT>,
) -> DrawResult<DB> {
    if let Some(pos) = frame.legend.position() {
        let (_, _, _, legend_px) = frame.font_sizes();
        chart
            .configure_series_labels()
            .position(pos)
            .margin(10)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(0, 0, 0).mix(0.35))
            .label_font((FONT, legend_px).into_font())
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_and_si_formatting() {
        assert_eq!(fmt_tick(0.30000000000000004), "0.3");
        assert_eq!(fmt_tick(2.0), "2");
        assert_eq!(fmt_tick(-0.0), "0");
        assert_eq!(fmt_tick(123456.0), "1.2e5");
        assert_eq!(fmt_si(1.35e8), "135M");
        assert_eq!(fmt_si(7e9), "7B");
        assert_eq!(fmt_si(3.162e7), "31.6M");
        assert_eq!(fmt_si(12.0), "12");
    }

    #[test]
    fn padding_handles_degenerate_ranges() {
        assert_eq!(padded(1.0, 1.0, 0.1), (0.95, 1.05));
        assert_eq!(padded(0.0, 0.0, 0.1), (-0.5, 0.5));
        let (lo, hi) = padded(0.0, 10.0, 0.1);
        assert!((lo + 1.0).abs() < 1e-12 && (hi - 11.0).abs() < 1e-12);
    }
}
