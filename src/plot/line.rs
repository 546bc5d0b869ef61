//! Line chart: several named series against a shared x axis, optional confidence bands.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{
    cartesian, check_finite, collect, draw_legend, fmt_si, fmt_tick, frame_methods, min_max,
    padded, palette, Chart, DrawResult, Frame, Kind, Legend, Occupancy, PlotValue, Spec,
};
use crate::error::Result;

#[derive(Debug, Clone)]
pub(crate) struct Line {
    name: String,
    xs: Vec<f64>,
    ys: Vec<f64>,
    band: Option<(Vec<f64>, Vec<f64>)>,
}

#[derive(Debug, Clone)]
pub(crate) struct LineSpec {
    /// Series with points sorted by x (x already log10-transformed when `log_x`).
    series: Vec<Line>,
    log_x: bool,
    markers: bool,
    x_range: (f64, f64),
    y_range: (f64, f64),
}

/// Line chart of one or more named series (e.g. a metric per layer, or per model size),
/// each optionally with a shaded confidence band.
///
/// Points of a series are connected in increasing x order. With [`LineChart::log_x`] the x
/// axis is logarithmic (ticks labelled like `135M`, `1.7B`) — the usual choice for model size.
///
/// ```
/// use replens::plot::LineChart;
/// let layers = [0, 1, 2, 3, 4];
/// let trained = [10.0, 25.0, 31.0, 33.5, 30.0];
/// let untrained = [10.0, 11.0, 11.5, 11.8, 12.0];
/// let chart = LineChart::new("eRank per layer")
///     .x_label("layer")
///     .y_label("eRank")
///     .series("trained", &layers, &trained)
///     .band("trained", &[9.0, 23.5, 29.0, 31.0, 28.2], &[11.0, 26.1, 33.2, 35.0, 31.5])
///     .series("untrained", &layers, &untrained)
///     .build()?;
/// assert!(chart.svg().contains("eRank per layer"));
/// # Ok::<(), replens::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct LineChart {
    frame: Frame,
    series: Vec<Line>,
    bands: Vec<(String, Vec<f64>, Vec<f64>)>,
    log_x: bool,
    markers: Option<bool>,
    y_range: Option<(f64, f64)>,
}

impl LineChart {
    /// Start a line chart with the given title.
    pub fn new(title: impl Into<String>) -> Self {
        LineChart {
            frame: Frame::new("line chart", title, Legend::Auto),
            series: Vec::new(),
            bands: Vec::new(),
            log_x: false,
            markers: None,
            y_range: None,
        }
    }

    frame_methods!();

    /// Add a series: `ys[i]` is the value at `xs[i]`. Any numeric element type works
    /// (`&[usize]`, `&Vec<f32>`, `0..n`, ...).
    pub fn series<X: PlotValue, Y: PlotValue>(
        mut self,
        name: impl Into<String>,
        xs: impl IntoIterator<Item = X>,
        ys: impl IntoIterator<Item = Y>,
    ) -> Self {
        self.series.push(Line {
            name: name.into(),
            xs: collect(xs),
            ys: collect(ys),
            band: None,
        });
        self
    }

    /// Shade a band from `lower[i]` to `upper[i]` at each x of the series called `name`
    /// (e.g. a bootstrap 95% confidence interval). The series may be added before or after.
    pub fn band<L: PlotValue, U: PlotValue>(
        mut self,
        name: impl Into<String>,
        lower: impl IntoIterator<Item = L>,
        upper: impl IntoIterator<Item = U>,
    ) -> Self {
        self.bands
            .push((name.into(), collect(lower), collect(upper)));
        self
    }

    /// Logarithmic x axis (all x values must then be > 0).
    pub fn log_x(mut self, yes: bool) -> Self {
        self.log_x = yes;
        self
    }

    /// Draw a dot at every point (default: only when each series has at most 60 points).
    pub fn markers(mut self, yes: bool) -> Self {
        self.markers = Some(yes);
        self
    }

    /// Fix the y range instead of fitting it to the data (and bands).
    pub fn y_range(mut self, min: f64, max: f64) -> Self {
        self.y_range = Some((min, max));
        self
    }

    /// Validate the data and render the chart.
    ///
    /// Errors (naming the series) on: no series, an empty series, `xs`/`ys` or band length
    /// mismatches, NaN or infinite values, duplicate series names, a band for an unknown series,
    /// non-positive x with `log_x`, an invalid size or y range.
    pub fn build(self) -> Result<Chart> {
        let LineChart {
            mut frame,
            mut series,
            bands,
            log_x,
            markers,
            y_range,
        } = self;
        let mut errors = Vec::new();
        frame.check(&mut errors);
        if series.is_empty() {
            errors.push("no series to plot (add one with .series(name, xs, ys))".into());
        }
        for (i, s) in series.iter().enumerate() {
            let what = format!("series '{}'", s.name);
            if series[..i].iter().any(|o| o.name == s.name) {
                errors.push(format!(
                    "{what} is added twice (series names must be unique)"
                ));
            }
            if s.xs.is_empty() || s.ys.is_empty() {
                errors.push(format!("{what} is empty"));
            }
            if s.xs.len() != s.ys.len() {
                errors.push(format!(
                    "{what}: xs has {} values but ys has {}",
                    s.xs.len(),
                    s.ys.len()
                ));
            }
            check_finite(&mut errors, &what, "xs", &s.xs);
            check_finite(&mut errors, &what, "ys", &s.ys);
            if log_x {
                if let Some((j, x)) = s.xs.iter().enumerate().find(|(_, x)| **x <= 0.0) {
                    errors.push(format!(
                        "{what}: xs[{j}] = {x} but a log x axis needs x > 0"
                    ));
                }
            }
        }
        for (name, lo, hi) in bands {
            let what = format!("band of series '{name}'");
            let Some(s) = series.iter_mut().find(|s| s.name == name) else {
                errors.push(format!("{what}: there is no series '{name}'"));
                continue;
            };
            if s.band.is_some() {
                errors.push(format!("{what} is given twice"));
            }
            if lo.len() != s.xs.len() || hi.len() != s.xs.len() {
                errors.push(format!(
                    "{what}: lower has {} and upper has {} values but the series has {} points",
                    lo.len(),
                    hi.len(),
                    s.xs.len()
                ));
            }
            check_finite(&mut errors, &what, "lower", &lo);
            check_finite(&mut errors, &what, "upper", &hi);
            s.band = Some((lo, hi));
        }
        if let Some((lo, hi)) = y_range {
            if !(lo.abs() <= super::MAX_ABS && hi.abs() <= super::MAX_ABS && lo < hi) {
                errors.push(format!("y_range({lo}, {hi}) must be finite with min < max"));
            }
        }
        frame.fail(errors)?;

        // Sort each series by x so lines never zig-zag back; carry the band along.
        for s in &mut series {
            let mut order: Vec<usize> = (0..s.xs.len()).collect();
            order.sort_by(|&a, &b| s.xs[a].total_cmp(&s.xs[b]));
            let pick = |v: &[f64]| order.iter().map(|&i| v[i]).collect::<Vec<_>>();
            s.xs = pick(&s.xs);
            if log_x {
                s.xs.iter_mut().for_each(|x| *x = x.log10());
            }
            s.ys = pick(&s.ys);
            if let Some((lo, hi)) = &s.band {
                s.band = Some((pick(lo), pick(hi)));
            }
        }
        let (x0, x1) =
            min_max(series.iter().flat_map(|s| s.xs.iter().copied())).unwrap_or((0.0, 1.0));
        let x_range = padded(x0, x1, 0.03);
        let y_range = match y_range {
            Some(r) => r,
            None => {
                let all = series.iter().flat_map(|s| {
                    let band = s.band.iter().flat_map(|(l, h)| l.iter().chain(h.iter()));
                    s.ys.iter().chain(band).copied()
                });
                let (y0, y1) = min_max(all).unwrap_or((0.0, 1.0));
                padded(y0, y1, 0.06)
            }
        };
        let markers = markers.unwrap_or_else(|| series.iter().all(|s| s.xs.len() <= 60));
        if frame.legend == Legend::Auto {
            let mut occ = Occupancy::new(x_range, y_range);
            for s in &series {
                let pts: Vec<(f64, f64)> = s.xs.iter().copied().zip(s.ys.iter().copied()).collect();
                occ.polyline(&pts);
                if let Some((lo, hi)) = &s.band {
                    for ((&x, &l), &h) in s.xs.iter().zip(lo).zip(hi) {
                        occ.polyline(&[(x, l), (x, h)]);
                    }
                    let edge = |v: &[f64]| {
                        s.xs.iter()
                            .copied()
                            .zip(v.iter().copied())
                            .collect::<Vec<_>>()
                    };
                    occ.polyline(&edge(lo));
                    occ.polyline(&edge(hi));
                }
            }
            let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
            frame.legend = occ.best_corner(&frame, &names);
        }
        Chart::from_spec(Spec {
            frame,
            kind: Kind::Line(LineSpec {
                series,
                log_x,
                markers,
                x_range,
                y_range,
            }),
        })
    }
}

pub(crate) fn draw<DB: DrawingBackend>(
    frame: &Frame,
    spec: &LineSpec,
    root: &DrawingArea<DB, Shift>,
) -> DrawResult<DB> {
    let log_x = spec.log_x;
    let x_fmt = move |v: &f64| {
        if log_x {
            fmt_si(10f64.powf(*v))
        } else {
            fmt_tick(*v)
        }
    };
    let y_fmt = |v: &f64| fmt_tick(*v);
    let (x0, x1) = spec.x_range;
    let (y0, y1) = spec.y_range;
    let mut chart = cartesian(frame, root, x0..x1, y0..y1, &x_fmt, &y_fmt)?;

    // Bands first so every line is drawn on top of every band.
    for (k, s) in spec.series.iter().enumerate() {
        if let Some((lo, hi)) = &s.band {
            let color = palette(k);
            let mut outline: Vec<(f64, f64)> =
                s.xs.iter().copied().zip(hi.iter().copied()).collect();
            outline.extend(s.xs.iter().copied().zip(lo.iter().copied()).rev());
            chart.draw_series(std::iter::once(Polygon::new(
                outline,
                color.mix(0.18).filled(),
            )))?;
        }
    }
    let stroke = if frame.width >= 500 { 2 } else { 1 };
    for (k, s) in spec.series.iter().enumerate() {
        let color = palette(k);
        let points: Vec<(f64, f64)> = s.xs.iter().copied().zip(s.ys.iter().copied()).collect();
        let has_band = s.band.is_some();
        let drawn = chart.draw_series(LineSeries::new(
            points.iter().copied(),
            color.stroke_width(stroke),
        ))?;
        if !s.name.is_empty() {
            drawn.label(s.name.as_str()).legend(move |(x, y)| {
                let band_alpha = if has_band { 0.18 } else { 0.0 };
                EmptyElement::at((x, y))
                    + Rectangle::new([(0, -6), (22, 6)], color.mix(band_alpha).filled())
                    + PathElement::new(vec![(0, 0), (22, 0)], color.stroke_width(2))
            });
        }
        if spec.markers {
            chart.draw_series(
                points
                    .iter()
                    .map(|&p| Circle::new(p, stroke + 2, color.filled())),
            )?;
        }
    }
    if spec.series.iter().any(|s| !s.name.is_empty()) {
        draw_legend(frame, &mut chart)?;
    }
    Ok(())
}
