//! Scatter plot of 2-D points per named group, with Gaussian-KDE iso-density contours.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::kde::Kde2d;
use super::{
    cartesian, check_finite, collect, draw_legend, fmt_tick, frame_methods, min_max, padded,
    palette, Chart, DrawResult, Frame, Kind, Legend, Occupancy, PlotValue, Spec,
};
use crate::error::Result;

#[derive(Debug, Clone)]
struct Group {
    name: String,
    xs: Vec<f64>,
    ys: Vec<f64>,
}

/// One group's contours: per level (outermost first), the polylines traced at that level.
type GroupContours = Vec<Vec<Vec<(f64, f64)>>>;

#[derive(Debug, Clone)]
pub(crate) struct ScatterSpec {
    groups: Vec<Group>,
    /// Per group, per level (outermost first): closed or open polylines.
    contours: Vec<GroupContours>,
    show_points: bool,
    x_range: (f64, f64),
    y_range: (f64, f64),
}

/// Scatter plot of named groups of 2-D points (e.g. a PCA projection of activations from two
/// datasets), each with iso-density contours of a Gaussian KDE (Scott's bandwidth) enclosing
/// given fractions of the group's probability mass (default 25%, 50%, 75%).
///
/// Groups with fewer than 3 points, or whose points lie on a line, are drawn without contours
/// (a KDE is not defined for them).
///
/// ```
/// use replens::plot::ScatterChart;
/// let a: Vec<(f64, f64)> = (0..40).map(|i| { let t = i as f64; (t.sin(), (1.7 * t).cos()) }).collect();
/// let b: Vec<(f64, f64)> = a.iter().map(|(x, y)| (x + 2.5, 0.5 * y + 1.0)).collect();
/// let chart = ScatterChart::new("PCA of layer-6 activations")
///     .x_label("PC 1")
///     .y_label("PC 2")
///     .group_pairs("news", &a)
///     .group_pairs("code", &b)
///     .levels([0.5, 0.9])
///     .build()?;
/// assert!(chart.svg().contains("PCA of layer-6 activations"));
/// # Ok::<(), replens::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ScatterChart {
    frame: Frame,
    groups: Vec<Group>,
    levels: Vec<f64>,
    kde: bool,
    show_points: bool,
    grid: usize,
}

/// A 2-D point: `(x, y)` tuples or `[x, y]` arrays of any plottable numbers, or references.
pub trait PlotPoint {
    /// The point as `(x, y)`.
    fn xy(self) -> (f64, f64);
}

impl<A: PlotValue, B: PlotValue> PlotPoint for (A, B) {
    fn xy(self) -> (f64, f64) {
        (self.0.to_f64(), self.1.to_f64())
    }
}
impl<A: PlotValue, B: PlotValue> PlotPoint for &(A, B) {
    fn xy(self) -> (f64, f64) {
        (self.0.to_f64(), self.1.to_f64())
    }
}
impl<A: PlotValue> PlotPoint for [A; 2] {
    fn xy(self) -> (f64, f64) {
        (self[0].to_f64(), self[1].to_f64())
    }
}
impl<A: PlotValue> PlotPoint for &[A; 2] {
    fn xy(self) -> (f64, f64) {
        (self[0].to_f64(), self[1].to_f64())
    }
}

impl ScatterChart {
    /// Start a scatter chart with the given title.
    pub fn new(title: impl Into<String>) -> Self {
        ScatterChart {
            frame: Frame::new("scatter chart", title, Legend::Auto),
            groups: Vec::new(),
            levels: vec![0.25, 0.5, 0.75],
            kde: true,
            show_points: true,
            grid: 80,
        }
    }

    frame_methods!();

    /// Add a group from separate coordinate lists: point `i` is `(xs[i], ys[i])`.
    pub fn group<X: PlotValue, Y: PlotValue>(
        mut self,
        name: impl Into<String>,
        xs: impl IntoIterator<Item = X>,
        ys: impl IntoIterator<Item = Y>,
    ) -> Self {
        self.groups.push(Group {
            name: name.into(),
            xs: collect(xs),
            ys: collect(ys),
        });
        self
    }

    /// Add a group from points (`&[(f64, f64)]`, `&[[f32; 2]]`, ...).
    pub fn group_pairs<P: PlotPoint>(
        mut self,
        name: impl Into<String>,
        points: impl IntoIterator<Item = P>,
    ) -> Self {
        let (xs, ys) = points.into_iter().map(PlotPoint::xy).unzip();
        self.groups.push(Group {
            name: name.into(),
            xs,
            ys,
        });
        self
    }

    /// Contour levels as fractions of each group's probability mass, each in (0, 1): the
    /// contour at 0.5 encloses the densest region holding half the mass.
    pub fn levels(mut self, masses: impl IntoIterator<Item = f64>) -> Self {
        self.levels = masses.into_iter().collect();
        self
    }

    /// Draw KDE contours (default `true`).
    pub fn kde(mut self, yes: bool) -> Self {
        self.kde = yes;
        self
    }

    /// Draw the individual points (default `true`).
    pub fn show_points(mut self, yes: bool) -> Self {
        self.show_points = yes;
        self
    }

    /// KDE grid resolution per axis (default 80, accepted 10..=400).
    pub fn grid(mut self, n: usize) -> Self {
        self.grid = n;
        self
    }

    /// Validate, estimate densities, trace contours and render.
    ///
    /// Errors (naming the group) on: no groups, an empty group, `xs`/`ys` length mismatch,
    /// NaN or infinite coordinates, duplicate group names, levels outside (0, 1), a grid size
    /// outside 10..=400, an invalid chart size.
    pub fn build(self) -> Result<Chart> {
        let ScatterChart {
            mut frame,
            groups,
            mut levels,
            kde,
            show_points,
            grid,
        } = self;
        let mut errors = Vec::new();
        frame.check(&mut errors);
        if groups.is_empty() {
            errors.push("no groups to plot (add one with .group(name, xs, ys))".into());
        }
        for (i, g) in groups.iter().enumerate() {
            let what = format!("group '{}'", g.name);
            if groups[..i].iter().any(|o| o.name == g.name) {
                errors.push(format!(
                    "{what} is added twice (group names must be unique)"
                ));
            }
            if g.xs.is_empty() && g.ys.is_empty() {
                errors.push(format!("{what} is empty"));
            }
            if g.xs.len() != g.ys.len() {
                errors.push(format!(
                    "{what}: xs has {} values but ys has {}",
                    g.xs.len(),
                    g.ys.len()
                ));
            }
            check_finite(&mut errors, &what, "xs", &g.xs);
            check_finite(&mut errors, &what, "ys", &g.ys);
        }
        if let Some(l) = levels.iter().find(|l| !(**l > 0.0 && **l < 1.0)) {
            errors.push(format!(
                "contour level {l} is not a mass fraction in (0, 1)"
            ));
        }
        if !(10..=400).contains(&grid) {
            errors.push(format!("grid size {grid} is outside 10..=400"));
        }
        if !show_points && !kde {
            errors.push("both points and KDE contours are switched off: nothing to draw".into());
        }
        frame.fail(errors)?;

        // Largest mass first = outermost contour first (drawn faintest).
        levels.sort_by(|a, b| b.total_cmp(a));
        let contours: Vec<GroupContours> = groups
            .iter()
            .map(|g| {
                if !kde {
                    return Vec::new();
                }
                // A KDE needs ≥ 3 non-collinear points; other groups get points only.
                let Ok(est) = Kde2d::new(&g.xs, &g.ys) else {
                    return Vec::new();
                };
                let density = est.grid(grid);
                levels
                    .iter()
                    .map(|&m| {
                        density
                            .contours(density.level_for_mass(m))
                            .into_iter()
                            .map(|c| {
                                let mut pts = c.points;
                                if c.closed {
                                    if let Some(&first) = pts.first() {
                                        pts.push(first);
                                    }
                                }
                                pts
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();

        let xs = groups.iter().flat_map(|g| g.xs.iter().copied());
        let cx = contours.iter().flatten().flatten().flatten().map(|p| p.0);
        let (x0, x1) = min_max(xs.chain(cx)).unwrap_or((0.0, 1.0));
        let ys = groups.iter().flat_map(|g| g.ys.iter().copied());
        let cy = contours.iter().flatten().flatten().flatten().map(|p| p.1);
        let (y0, y1) = min_max(ys.chain(cy)).unwrap_or((0.0, 1.0));
        let (x_range, y_range) = (padded(x0, x1, 0.04), padded(y0, y1, 0.04));
        if frame.legend == Legend::Auto {
            let mut occ = Occupancy::new(x_range, y_range);
            for g in &groups {
                if show_points {
                    g.xs.iter().zip(&g.ys).for_each(|(&x, &y)| occ.point(x, y));
                }
            }
            contours
                .iter()
                .flatten()
                .flatten()
                .for_each(|line| occ.polyline(line));
            let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
            frame.legend = occ.best_corner(&frame, &names);
        }
        Chart::from_spec(Spec {
            frame,
            kind: Kind::Scatter(ScatterSpec {
                groups,
                contours,
                show_points,
                x_range,
                y_range,
            }),
        })
    }
}

pub(crate) fn draw<DB: DrawingBackend>(
    frame: &Frame,
    spec: &ScatterSpec,
    root: &DrawingArea<DB, Shift>,
) -> DrawResult<DB> {
    let fmt = |v: &f64| fmt_tick(*v);
    let (x0, x1) = spec.x_range;
    let (y0, y1) = spec.y_range;
    let mut chart = cartesian(frame, root, x0..x1, y0..y1, &fmt, &fmt)?;
    let total: usize = spec.groups.iter().map(|g| g.xs.len()).sum();
    let radius = if total > 3000 {
        1
    } else if total > 500 {
        2
    } else {
        3
    };
    let point_alpha = if total > 3000 { 0.35 } else { 0.6 };
    for (k, g) in spec.groups.iter().enumerate() {
        let color = palette(k);
        let drawn = if spec.show_points {
            chart.draw_series(
                g.xs.iter()
                    .zip(&g.ys)
                    .map(|(&x, &y)| Circle::new((x, y), radius, color.mix(point_alpha).filled())),
            )?
        } else {
            chart.draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
        };
        if !g.name.is_empty() {
            drawn
                .label(g.name.as_str())
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
        }
    }
    // Contours over all points so they stay visible.
    for (k, levels) in spec.contours.iter().enumerate() {
        let color = palette(k);
        let n = levels.len().max(1) as f64;
        for (l, lines) in levels.iter().enumerate() {
            // outer (largest mass) faint and thin, inner strong
            let alpha = 0.45 + 0.55 * (l as f64 + 1.0) / n;
            for line in lines {
                chart.draw_series(std::iter::once(PathElement::new(
                    line.clone(),
                    color.mix(alpha).stroke_width(2),
                )))?;
            }
        }
    }
    if spec.groups.iter().any(|g| !g.name.is_empty()) {
        draw_legend(frame, &mut chart)?;
    }
    Ok(())
}
