//! ROC curves with the chance diagonal and the AUC of each curve in the legend.

use std::borrow::Borrow;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{
    cartesian, check_finite, collect, draw_legend, fmt_tick, frame_methods, palette, Chart,
    DrawResult, Frame, Kind, Legend, Occupancy, PlotValue, Spec,
};
use crate::error::Result;

#[derive(Debug, Clone)]
struct Curve {
    name: String,
    fpr: Vec<f64>,
    tpr: Vec<f64>,
}

#[derive(Debug, Clone)]
pub(crate) struct RocSpec {
    /// (legend label with AUC, points sorted by fpr from (0,0) to (1,1))
    curves: Vec<(String, Vec<(f64, f64)>)>,
}

/// ROC curve of binary `scores` (higher = more positive) against `labels`, as `(fpr, tpr)`
/// starting at (0, 0) and ending at (1, 1). Tied scores form one step (one threshold), as in
/// scikit-learn's `roc_curve` (without `drop_intermediate`).
///
/// ```
/// let (fpr, tpr) = replens::plot::roc_curve(&[0.9, 0.8, 0.3, 0.1], &[true, false, true, false])?;
/// assert_eq!(fpr, vec![0.0, 0.0, 0.5, 0.5, 1.0]);
/// assert_eq!(tpr, vec![0.0, 0.5, 0.5, 1.0, 1.0]);
/// assert_eq!(replens::plot::roc_auc(&fpr, &tpr), 0.75);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Result<(Vec<f64>, Vec<f64>)> {
    let curve = crate::metrics::uncertainty::roc_curve(scores, labels)?;
    Ok((curve.fpr, curve.tpr))
}

/// Area under a curve given by points sorted by `fpr` (trapezoidal rule).
pub fn roc_auc(fpr: &[f64], tpr: &[f64]) -> f64 {
    fpr.windows(2)
        .zip(tpr.windows(2))
        .map(|(x, y)| (x[1] - x[0]) * (y[0] + y[1]) / 2.0)
        .sum()
}

/// ROC chart: one curve per named series, the dashed chance diagonal, and each curve's AUC
/// in the legend (`name (AUC = 0.873)`).
///
/// Curves given as `(fpr, tpr)` points are sorted by fpr and completed with (0, 0) and (1, 1)
/// when those end points are missing; [`RocChart::scores`] computes the curve from raw scores.
///
/// ```
/// use replens::plot::RocChart;
/// let chart = RocChart::new("OOD detection")
///     .curve("max softmax", &[0.0, 0.1, 0.3, 1.0], &[0.0, 0.5, 0.8, 1.0])
///     .scores("energy", &[0.9, 0.7, 0.6, 0.2, 0.1], &[true, true, false, true, false])
///     .build()?;
/// assert!(chart.svg().contains("AUC"));
/// # Ok::<(), replens::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RocChart {
    frame: Frame,
    curves: Vec<Curve>,
    errors: Vec<String>,
}

impl RocChart {
    /// Start a ROC chart with the given title (axes default to "false positive rate" and
    /// "true positive rate").
    pub fn new(title: impl Into<String>) -> Self {
        let mut frame = Frame::new("ROC chart", title, Legend::LowerRight);
        frame.x_label = "false positive rate".into();
        frame.y_label = "true positive rate".into();
        RocChart {
            frame,
            curves: Vec::new(),
            errors: Vec::new(),
        }
    }

    frame_methods!();

    /// Add a curve from `(fpr[i], tpr[i])` points (rates in [0, 1]).
    pub fn curve<F: PlotValue, T: PlotValue>(
        mut self,
        name: impl Into<String>,
        fpr: impl IntoIterator<Item = F>,
        tpr: impl IntoIterator<Item = T>,
    ) -> Self {
        self.curves.push(Curve {
            name: name.into(),
            fpr: collect(fpr),
            tpr: collect(tpr),
        });
        self
    }

    /// Add a curve computed from scores (higher = more positive) and binary labels; see
    /// [`roc_curve`].
    pub fn scores<S: PlotValue, B: Borrow<bool>>(
        mut self,
        name: impl Into<String>,
        scores: impl IntoIterator<Item = S>,
        labels: impl IntoIterator<Item = B>,
    ) -> Self {
        let name = name.into();
        let scores = collect(scores);
        let labels: Vec<bool> = labels.into_iter().map(|b| *b.borrow()).collect();
        match roc_curve(&scores, &labels) {
            Ok((fpr, tpr)) => self.curves.push(Curve { name, fpr, tpr }),
            Err(e) => self.errors.push(format!("series '{name}': {e}")),
        }
        self
    }

    /// Validate and render.
    ///
    /// Errors (naming the series) on: no curves, empty curves, fpr/tpr length mismatch, NaN
    /// or rates outside [0, 1], duplicate names, scores/labels problems, an invalid size.
    pub fn build(self) -> Result<Chart> {
        let RocChart {
            mut frame,
            curves,
            mut errors,
        } = self;
        frame.check(&mut errors);
        if curves.is_empty() && errors.is_empty() {
            errors.push("no curves to plot (add one with .curve(name, fpr, tpr))".into());
        }
        for (i, c) in curves.iter().enumerate() {
            let what = format!("series '{}'", c.name);
            if curves[..i].iter().any(|o| o.name == c.name) {
                errors.push(format!(
                    "{what} is added twice (series names must be unique)"
                ));
            }
            if c.fpr.is_empty() || c.tpr.is_empty() {
                errors.push(format!("{what} is empty"));
            }
            if c.fpr.len() != c.tpr.len() {
                errors.push(format!(
                    "{what}: fpr has {} values but tpr has {}",
                    c.fpr.len(),
                    c.tpr.len()
                ));
            }
            check_finite(&mut errors, &what, "fpr", &c.fpr);
            check_finite(&mut errors, &what, "tpr", &c.tpr);
            for (field, v) in [("fpr", &c.fpr), ("tpr", &c.tpr)] {
                if let Some((j, x)) = v
                    .iter()
                    .enumerate()
                    .find(|(_, x)| x.is_finite() && !(-1e-9..=1.0 + 1e-9).contains(*x))
                {
                    errors.push(format!(
                        "{what}: {field}[{j}] = {x} is not a rate in [0, 1]"
                    ));
                }
            }
        }
        frame.fail(errors)?;

        let curves: Vec<(String, Vec<(f64, f64)>)> = curves
            .into_iter()
            .map(|c| {
                let mut pts: Vec<(f64, f64)> = c
                    .fpr
                    .iter()
                    .zip(&c.tpr)
                    .map(|(&f, &t)| (f.clamp(0.0, 1.0), t.clamp(0.0, 1.0)))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
                if pts.first() != Some(&(0.0, 0.0)) {
                    pts.insert(0, (0.0, 0.0));
                }
                if pts.last() != Some(&(1.0, 1.0)) {
                    pts.push((1.0, 1.0));
                }
                let (f, t): (Vec<f64>, Vec<f64>) = pts.iter().copied().unzip();
                let auc = roc_auc(&f, &t);
                let label = if c.name.is_empty() {
                    format!("AUC = {auc:.3}")
                } else {
                    format!("{} (AUC = {auc:.3})", c.name)
                };
                (label, pts)
            })
            .collect();
        if frame.legend == Legend::Auto {
            let mut occ = Occupancy::new((-0.01, 1.01), (-0.01, 1.01));
            occ.polyline(&[(0.0, 0.0), (1.0, 1.0)]);
            curves
                .iter()
                .for_each(|(_, pts): &(String, Vec<(f64, f64)>)| occ.polyline(pts));
            let mut labels: Vec<&str> = curves.iter().map(|(l, _)| l.as_str()).collect();
            labels.push("chance");
            frame.legend = occ.best_corner(&frame, &labels);
        }
        Chart::from_spec(Spec {
            frame,
            kind: Kind::Roc(RocSpec { curves }),
        })
    }
}

pub(crate) fn draw<DB: DrawingBackend>(
    frame: &Frame,
    spec: &RocSpec,
    root: &DrawingArea<DB, Shift>,
) -> DrawResult<DB> {
    let fmt = |v: &f64| fmt_tick(*v);
    let mut chart = cartesian(frame, root, -0.01..1.01, -0.01..1.01, &fmt, &fmt)?;
    let grey = RGBColor(120, 120, 120);
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, 0.0), (1.0, 1.0)],
            8,
            6,
            grey.stroke_width(1),
        ))?
        .label("chance")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], grey.stroke_width(1)));
    for (k, (label, pts)) in spec.curves.iter().enumerate() {
        let color = palette(k);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
            });
    }
    draw_legend(frame, &mut chart)
}
