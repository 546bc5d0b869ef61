//! Histograms / densities of several groups on shared bins.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::kde::Kde1d;
use super::{
    cartesian, check_finite, collect, draw_legend, fmt_tick, frame_methods, min_max, palette,
    Chart, DrawResult, Frame, Kind, Legend, Occupancy, PlotValue, Spec,
};
use crate::error::Result;

#[derive(Debug, Clone)]
pub(crate) struct HistSpec {
    names: Vec<String>,
    edges: Vec<f64>,
    /// Per group, per bin: count or density.
    heights: Vec<Vec<f64>>,
    /// Per group: KDE curve (empty when off or undefined for the group).
    curves: Vec<Vec<(f64, f64)>>,
    bars: bool,
    y_max: f64,
}

/// Overlaid histograms of several groups on shared bins (e.g. an uncertainty score on
/// in-distribution vs shifted data), optionally with a Gaussian KDE curve per group.
///
/// By default bars show a *density* (area 1 per group) so groups of different sizes compare;
/// [`HistogramChart::density`]`(false)` shows counts. Bins are shared by all groups: by default
/// their number follows the Freedman–Diaconis rule on the pooled values (clamped to 5..=80).
///
/// ```
/// use replens::plot::HistogramChart;
/// let id: Vec<f64> = (0..200).map(|i| ((i * 37 % 101) as f64 / 101.0)).collect();
/// let ood: Vec<f64> = id.iter().map(|v| 0.6 + 0.8 * v).collect();
/// let chart = HistogramChart::new("uncertainty score")
///     .x_label("score")
///     .group("in-distribution", &id)
///     .group("shifted", &ood)
///     .bins(25)
///     .kde(true)
///     .build()?;
/// assert!(chart.svg().contains("uncertainty score"));
/// # Ok::<(), replens::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct HistogramChart {
    frame: Frame,
    groups: Vec<(String, Vec<f64>)>,
    bins: Option<usize>,
    range: Option<(f64, f64)>,
    density: bool,
    kde: bool,
    bars: bool,
}

impl HistogramChart {
    /// Start a histogram with the given title.
    pub fn new(title: impl Into<String>) -> Self {
        HistogramChart {
            frame: Frame::new("histogram", title, Legend::Auto),
            groups: Vec::new(),
            bins: None,
            range: None,
            density: true,
            kde: false,
            bars: true,
        }
    }

    frame_methods!();

    /// Add a group of values.
    pub fn group<V: PlotValue>(
        mut self,
        name: impl Into<String>,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        self.groups.push((name.into(), collect(values)));
        self
    }

    /// Number of shared bins (1..=1000).
    pub fn bins(mut self, n: usize) -> Self {
        self.bins = Some(n);
        self
    }

    /// Bin over `[min, max]` instead of the pooled data range; values outside are not counted.
    pub fn range(mut self, min: f64, max: f64) -> Self {
        self.range = Some((min, max));
        self
    }

    /// Normalise each group to unit area (default `true`); `false` shows counts.
    pub fn density(mut self, yes: bool) -> Self {
        self.density = yes;
        self
    }

    /// Overlay a Gaussian KDE curve (Scott's bandwidth) per group, scaled like the bars.
    /// Groups with fewer than 2 distinct values get no curve.
    pub fn kde(mut self, yes: bool) -> Self {
        self.kde = yes;
        self
    }

    /// Draw the bars (default `true`); `bars(false).kde(true)` is a pure density plot.
    pub fn bars(mut self, yes: bool) -> Self {
        self.bars = yes;
        self
    }

    /// Validate, bin and render.
    ///
    /// Errors (naming the group) on: no groups, an empty group, NaN or infinite values,
    /// duplicate names, bins outside 1..=1000, an invalid range, neither bars nor KDE.
    pub fn build(self) -> Result<Chart> {
        let HistogramChart {
            mut frame,
            groups,
            bins,
            range,
            density,
            kde,
            bars,
        } = self;
        let mut errors = Vec::new();
        frame.check(&mut errors);
        if groups.is_empty() {
            errors.push("no groups to plot (add one with .group(name, values))".into());
        }
        for (i, (name, values)) in groups.iter().enumerate() {
            let what = format!("group '{name}'");
            if groups[..i].iter().any(|(o, _)| o == name) {
                errors.push(format!(
                    "{what} is added twice (group names must be unique)"
                ));
            }
            if values.is_empty() {
                errors.push(format!("{what} is empty"));
            }
            check_finite(&mut errors, &what, "values", values);
        }
        if let Some(b) = bins {
            if !(1..=1000).contains(&b) {
                errors.push(format!("bins({b}) is outside 1..=1000"));
            }
        }
        if let Some((lo, hi)) = range {
            if !(lo.abs() <= super::MAX_ABS && hi.abs() <= super::MAX_ABS && lo < hi) {
                errors.push(format!("range({lo}, {hi}) must be finite with min < max"));
            }
        }
        if !bars && !kde {
            errors.push("bars and KDE are both switched off: nothing to draw".into());
        }
        frame.fail(errors)?;

        let pooled: Vec<f64> = groups.iter().flat_map(|(_, v)| v.iter().copied()).collect();
        let (lo, hi) = match range {
            Some(r) => r,
            None => {
                let (lo, hi) = min_max(pooled.iter().copied()).unwrap_or((0.0, 1.0));
                if hi > lo {
                    (lo, hi)
                } else {
                    super::padded(lo, hi, 0.0)
                }
            }
        };
        let n_bins = bins.unwrap_or_else(|| freedman_diaconis(&pooled, lo, hi));
        let width = (hi - lo) / n_bins as f64;
        let edges: Vec<f64> = (0..=n_bins).map(|k| lo + width * k as f64).collect();
        let heights: Vec<Vec<f64>> = groups
            .iter()
            .map(|(_, values)| {
                let mut counts = vec![0.0; n_bins];
                for &v in values {
                    if v < lo || v > hi {
                        continue;
                    }
                    let k = (((v - lo) / width) as usize).min(n_bins - 1);
                    counts[k] += 1.0;
                }
                if density {
                    let scale = 1.0 / (values.len() as f64 * width);
                    counts.iter_mut().for_each(|c| *c *= scale);
                }
                counts
            })
            .collect();
        let curves: Vec<Vec<(f64, f64)>> = groups
            .iter()
            .map(|(_, values)| {
                if !kde {
                    return Vec::new();
                }
                let Ok(est) = Kde1d::new(values) else {
                    return Vec::new();
                };
                let scale = if density {
                    1.0
                } else {
                    values.len() as f64 * width
                };
                est.curve(lo, hi, 300)
                    .into_iter()
                    .map(|(x, d)| (x, d * scale))
                    .collect()
            })
            .collect();
        let bar_max = heights.iter().flatten().copied().fold(0.0, f64::max);
        let curve_max = curves.iter().flatten().map(|p| p.1).fold(0.0, f64::max);
        let y_max = if bars {
            bar_max.max(curve_max)
        } else {
            curve_max
        };
        let y_max = if y_max > 0.0 { y_max * 1.08 } else { 1.0 };
        if frame.legend == Legend::Auto {
            let pad = (hi - lo) * 0.02;
            let mut occ = Occupancy::new((lo - pad, hi + pad), (0.0, y_max));
            if bars {
                for h in &heights {
                    for (e, &v) in edges.windows(2).zip(h) {
                        occ.column(e[0], e[1], v);
                    }
                }
            }
            curves.iter().for_each(|c| occ.polyline(c));
            let names: Vec<&str> = groups.iter().map(|(n, _)| n.as_str()).collect();
            frame.legend = occ.best_corner(&frame, &names);
        }
        if frame.y_label.is_empty() {
            frame.y_label = if density { "density" } else { "count" }.into();
        }
        Chart::from_spec(Spec {
            frame,
            kind: Kind::Histogram(HistSpec {
                names: groups.into_iter().map(|(n, _)| n).collect(),
                edges,
                heights,
                curves,
                bars,
                y_max,
            }),
        })
    }
}

/// Freedman–Diaconis bin count `range / (2 IQR n^(-1/3))`, Sturges when the IQR is 0,
/// clamped to 5..=80 so charts stay readable.
fn freedman_diaconis(values: &[f64], lo: f64, hi: f64) -> usize {
    let n = values.len().max(1);
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let idx = ((sorted.len().max(1) - 1) as f64 * p).round() as usize;
        sorted.get(idx).copied().unwrap_or(0.0)
    };
    let iqr = q(0.75) - q(0.25);
    let bins = if iqr > 0.0 {
        let h = 2.0 * iqr * (n as f64).powf(-1.0 / 3.0);
        ((hi - lo) / h).ceil()
    } else {
        (n as f64).log2().ceil() + 1.0
    };
    if bins.is_finite() {
        (bins as usize).clamp(5, 80)
    } else {
        20
    }
}

pub(crate) fn draw<DB: DrawingBackend>(
    frame: &Frame,
    spec: &HistSpec,
    root: &DrawingArea<DB, Shift>,
) -> DrawResult<DB> {
    let fmt = |v: &f64| fmt_tick(*v);
    let lo = spec.edges.first().copied().unwrap_or(0.0);
    let hi = spec.edges.last().copied().unwrap_or(1.0);
    let pad = (hi - lo) * 0.02;
    let mut chart = cartesian(
        frame,
        root,
        (lo - pad)..(hi + pad),
        0.0..spec.y_max,
        &fmt,
        &fmt,
    )?;
    let single = spec.names.len() == 1;
    for (k, (name, heights)) in spec.names.iter().zip(&spec.heights).enumerate() {
        let color = palette(k);
        let bins = spec.edges.windows(2).zip(heights);
        let drawn = if spec.bars {
            let fill = color.mix(if single { 0.6 } else { 0.35 }).filled();
            chart.draw_series(
                bins.clone()
                    .filter(|(_, &h)| h > 0.0)
                    .map(|(e, &h)| Rectangle::new([(e[0], 0.0), (e[1], h)], fill)),
            )?;
            // Step outline keeps overlapping groups distinguishable.
            let mut outline = Vec::with_capacity(2 * heights.len() + 2);
            for (e, &h) in bins {
                outline.push((e[0], h));
                outline.push((e[1], h));
            }
            if let (Some(&(x0, _)), Some(&(x1, _))) = (outline.first(), outline.last()) {
                outline.insert(0, (x0, 0.0));
                outline.push((x1, 0.0));
            }
            chart.draw_series(std::iter::once(PathElement::new(
                outline,
                color.stroke_width(if spec.curves[k].is_empty() { 2 } else { 1 }),
            )))?
        } else {
            chart.draw_series(std::iter::empty::<PathElement<(f64, f64)>>())?
        };
        if !name.is_empty() {
            let alpha = if spec.bars { 0.35 } else { 0.0 };
            drawn.label(name.as_str()).legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + Rectangle::new([(0, -6), (18, 6)], color.mix(alpha).filled())
                    + PathElement::new(vec![(0, 0), (18, 0)], color.stroke_width(2))
            });
        }
        if let Some(curve) = spec.curves.get(k).filter(|c| !c.is_empty()) {
            chart.draw_series(LineSeries::new(
                curve.iter().copied(),
                color.stroke_width(2),
            ))?;
        }
    }
    if spec.names.iter().any(|n| !n.is_empty()) {
        draw_legend(frame, &mut chart)?;
    }
    Ok(())
}
