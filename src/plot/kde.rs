//! Gaussian kernel density estimates (1-D and 2-D, Scott's bandwidth) and iso-density
//! contours by marching squares — what [`ScatterChart`](super::ScatterChart) and
//! [`HistogramChart`](super::HistogramChart) draw, exposed for notebooks that want the numbers.
//!
//! The estimators follow `scipy.stats.gaussian_kde` with its default `bw_method="scott"`:
//! the kernel covariance is the (unbiased) data covariance times `n^(-2/(d+4))`.
//!
//! ```
//! use replens::plot::kde::Kde2d;
//! let xs = [0.0, 1.0, 0.5, -0.3, 0.2, 0.8, -0.6, 0.1];
//! let ys = [0.1, -0.2, 0.9, 0.4, -0.7, 0.3, 0.0, -0.1];
//! let kde = Kde2d::new(&xs, &ys)?;
//! let grid = kde.grid(60);
//! assert!((grid.integral() - 1.0).abs() < 0.02);
//! let level = grid.level_for_mass(0.5); // density above which half of the mass lies
//! let rings = grid.contours(level);
//! assert!(!rings.is_empty());
//! # Ok::<(), replens::Error>(())
//! ```

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Scott's rule bandwidth factor `n^(-1/(d+4))` for `n` points in `d` dimensions.
pub fn scott_factor(n: usize, dims: usize) -> f64 {
    (n as f64).powf(-1.0 / (dims as f64 + 4.0))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Unbiased (n-1) covariance of two equally long samples.
fn covariance(a: &[f64], b: &[f64]) -> f64 {
    let (ma, mb) = (mean(a), mean(b));
    let s: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    s / (a.len() as f64 - 1.0)
}

fn check_values(what: &str, v: &[f64]) -> Result<()> {
    if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(Error::InvalidInput(format!(
            "{what}: value {i} is {x} (values must be finite)"
        )));
    }
    Ok(())
}

/// One-dimensional Gaussian KDE with Scott's bandwidth `σ · n^(-1/5)`.
#[derive(Debug, Clone)]
pub struct Kde1d {
    values: Vec<f64>,
    bandwidth: f64,
}

impl Kde1d {
    /// Fit to `values`; needs at least two finite values that are not all equal.
    pub fn new(values: &[f64]) -> Result<Kde1d> {
        check_values("1-D KDE", values)?;
        if values.len() < 2 {
            return Err(Error::InvalidInput(format!(
                "1-D KDE needs at least 2 values, got {}",
                values.len()
            )));
        }
        let var = covariance(values, values);
        if var.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(Error::InvalidInput(
                "1-D KDE: all values are equal (zero variance), the bandwidth would be 0".into(),
            ));
        }
        Ok(Kde1d {
            values: values.to_vec(),
            bandwidth: var.sqrt() * scott_factor(values.len(), 1),
        })
    }

    /// Kernel standard deviation.
    pub fn bandwidth(&self) -> f64 {
        self.bandwidth
    }

    /// Estimated density at `x`.
    pub fn density(&self, x: f64) -> f64 {
        let h = self.bandwidth;
        let norm = 1.0 / (self.values.len() as f64 * h * (2.0 * std::f64::consts::PI).sqrt());
        norm * self
            .values
            .iter()
            .map(|v| (-0.5 * ((x - v) / h).powi(2)).exp())
            .sum::<f64>()
    }

    /// `n` evenly spaced `(x, density)` points over `[lo, hi]`.
    pub fn curve(&self, lo: f64, hi: f64, n: usize) -> Vec<(f64, f64)> {
        let n = n.max(2);
        (0..n)
            .map(|i| {
                let x = lo + (hi - lo) * i as f64 / (n - 1) as f64;
                (x, self.density(x))
            })
            .collect()
    }
}

/// Two-dimensional Gaussian KDE with full kernel covariance `Σ · n^(-1/3)` (Scott, d = 2).
#[derive(Debug, Clone)]
pub struct Kde2d {
    xs: Vec<f64>,
    ys: Vec<f64>,
    /// Kernel covariance [[sxx, sxy], [sxy, syy]].
    cov: [[f64; 2]; 2],
    inv: [[f64; 2]; 2],
    norm: f64,
}

impl Kde2d {
    /// Fit to the points `(xs[i], ys[i])`. Needs at least 3 finite points whose covariance
    /// is not singular (not all on one line).
    pub fn new(xs: &[f64], ys: &[f64]) -> Result<Kde2d> {
        if xs.len() != ys.len() {
            return Err(Error::InvalidInput(format!(
                "2-D KDE: xs has {} values but ys has {}",
                xs.len(),
                ys.len()
            )));
        }
        check_values("2-D KDE xs", xs)?;
        check_values("2-D KDE ys", ys)?;
        if xs.len() < 3 {
            return Err(Error::InvalidInput(format!(
                "2-D KDE needs at least 3 points, got {}",
                xs.len()
            )));
        }
        let f2 = scott_factor(xs.len(), 2).powi(2);
        let (sxx, syy, sxy) = (
            covariance(xs, xs) * f2,
            covariance(ys, ys) * f2,
            covariance(xs, ys) * f2,
        );
        let det = sxx * syy - sxy * sxy;
        if !(sxx > 0.0 && syy > 0.0 && det > 1e-12 * sxx * syy) {
            return Err(Error::InvalidInput(
                "2-D KDE: the points lie on a line or coincide (singular covariance)".into(),
            ));
        }
        Ok(Kde2d {
            xs: xs.to_vec(),
            ys: ys.to_vec(),
            cov: [[sxx, sxy], [sxy, syy]],
            inv: [[syy / det, -sxy / det], [-sxy / det, sxx / det]],
            norm: 1.0 / (xs.len() as f64 * 2.0 * std::f64::consts::PI * det.sqrt()),
        })
    }

    /// The kernel covariance matrix.
    pub fn kernel_covariance(&self) -> [[f64; 2]; 2] {
        self.cov
    }

    /// Estimated density at `(x, y)`.
    pub fn density(&self, x: f64, y: f64) -> f64 {
        let [[a, b], [_, d]] = self.inv;
        let s: f64 = self
            .xs
            .iter()
            .zip(&self.ys)
            .map(|(px, py)| {
                let (dx, dy) = (x - px, y - py);
                let q = a * dx * dx + 2.0 * b * dx * dy + d * dy * dy;
                // exp(-0.5 q) is below 1e-30 past q = 138: skip the call.
                if q > 138.0 {
                    0.0
                } else {
                    (-0.5 * q).exp()
                }
            })
            .sum();
        self.norm * s
    }

    /// The data's bounding box widened by 3.5 kernel standard deviations, so the density has
    /// fallen to ~0 at the border and contours close inside the grid.
    pub fn extent(&self) -> ((f64, f64), (f64, f64)) {
        let (x0, x1) = bounds(&self.xs);
        let (y0, y1) = bounds(&self.ys);
        let (px, py) = (3.5 * self.cov[0][0].sqrt(), 3.5 * self.cov[1][1].sqrt());
        ((x0 - px, x1 + px), (y0 - py, y1 + py))
    }

    /// Evaluate on an `n × n` grid over [`Kde2d::extent`].
    pub fn grid(&self, n: usize) -> DensityGrid {
        let (xr, yr) = self.extent();
        self.grid_over(xr, yr, n, n)
    }

    /// Evaluate on an `nx × ny` grid over the given ranges (each at least 2 nodes).
    pub fn grid_over(
        &self,
        (x0, x1): (f64, f64),
        (y0, y1): (f64, f64),
        nx: usize,
        ny: usize,
    ) -> DensityGrid {
        let xs = linspace(x0, x1, nx.max(2));
        let ys = linspace(y0, y1, ny.max(2));
        let z = ys
            .iter()
            .flat_map(|&y| xs.iter().map(move |&x| (x, y)))
            .map(|(x, y)| self.density(x, y))
            .collect();
        DensityGrid { xs, ys, z }
    }
}

fn bounds(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

fn linspace(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64)
        .collect()
}

/// Density values on a regular grid: `z[j * xs.len() + i]` is the density at `(xs[i], ys[j])`.
#[derive(Debug, Clone)]
pub struct DensityGrid {
    pub xs: Vec<f64>,
    pub ys: Vec<f64>,
    pub z: Vec<f64>,
}

/// One iso-line. A closed ring does not repeat its first point at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct Contour {
    pub points: Vec<(f64, f64)>,
    pub closed: bool,
}

/// Which grid edge a contour crosses: horizontal edge from node (i, j) to (i+1, j) or
/// vertical edge from (i, j) to (i, j+1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Edge {
    H(usize, usize),
    V(usize, usize),
}

impl DensityGrid {
    fn nx(&self) -> usize {
        self.xs.len()
    }

    /// Density at node `(i, j)` (0 outside the grid).
    pub fn at(&self, i: usize, j: usize) -> f64 {
        if i < self.nx() {
            self.z.get(j * self.nx() + i).copied().unwrap_or(0.0)
        } else {
            0.0
        }
    }

    fn cell_area(&self) -> f64 {
        let dx = (self.xs.last().unwrap_or(&0.0) - self.xs.first().unwrap_or(&0.0))
            / (self.xs.len().max(2) - 1) as f64;
        let dy = (self.ys.last().unwrap_or(&0.0) - self.ys.first().unwrap_or(&0.0))
            / (self.ys.len().max(2) - 1) as f64;
        dx * dy
    }

    /// Integral of the density over the grid (trapezoidal rule); ≈ 1 when the grid covers
    /// the support.
    pub fn integral(&self) -> f64 {
        let (nx, ny) = (self.nx(), self.ys.len());
        let w = |k: usize, n: usize| if k == 0 || k + 1 == n { 0.5 } else { 1.0 };
        let mut s = 0.0;
        for j in 0..ny {
            for i in 0..nx {
                s += w(i, nx) * w(j, ny) * self.at(i, j);
            }
        }
        s * self.cell_area()
    }

    /// The density threshold whose super-level set holds `mass` (in (0, 1)) of the total
    /// mass on the grid — the "highest density region" level, so a contour drawn at
    /// `level_for_mass(0.5)` encloses about half of the points' probability.
    pub fn level_for_mass(&self, mass: f64) -> f64 {
        let mut sorted = self.z.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let total: f64 = sorted.iter().sum();
        let target = mass.clamp(0.0, 1.0) * total;
        let mut acc = 0.0;
        for &v in &sorted {
            acc += v;
            if acc >= target {
                return v;
            }
        }
        sorted.last().copied().unwrap_or(0.0)
    }

    /// Iso-lines where the density equals `level`, by marching squares with linear
    /// interpolation along cell edges; saddle cells are resolved with the cell-centre mean.
    /// Segments are joined into polylines; a line that returns to its start is `closed`.
    pub fn contours(&self, level: f64) -> Vec<Contour> {
        let (nx, ny) = (self.nx(), self.ys.len());
        if nx < 2 || ny < 2 || self.z.len() != nx * ny || !level.is_finite() {
            return Vec::new();
        }
        let inside = |i: usize, j: usize| self.at(i, j) >= level;
        let mut segments: Vec<(Edge, Edge)> = Vec::new();
        for j in 0..ny - 1 {
            for i in 0..nx - 1 {
                // corners: 0 = (i, j), 1 = (i+1, j), 2 = (i+1, j+1), 3 = (i, j+1)
                let c = [
                    inside(i, j),
                    inside(i + 1, j),
                    inside(i + 1, j + 1),
                    inside(i, j + 1),
                ];
                let bottom = Edge::H(i, j);
                let right = Edge::V(i + 1, j);
                let top = Edge::H(i, j + 1);
                let left = Edge::V(i, j);
                // edge k joins corner k and corner k+1
                let edges = [bottom, right, top, left];
                let crossed: Vec<Edge> = (0..4)
                    .filter(|&k| c[k] != c[(k + 1) % 4])
                    .map(|k| edges[k])
                    .collect();
                match crossed.as_slice() {
                    [a, b] => segments.push((*a, *b)),
                    [_, _, _, _] => {
                        // Saddle: cut off each corner whose state differs from the centre.
                        let centre = (self.at(i, j)
                            + self.at(i + 1, j)
                            + self.at(i + 1, j + 1)
                            + self.at(i, j + 1))
                            / 4.0
                            >= level;
                        for k in 0..4 {
                            if c[k] != centre {
                                // corner k touches edges k-1 and k
                                segments.push((edges[(k + 3) % 4], edges[k]));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        self.join(&segments, level)
    }

    fn edge_point(&self, e: Edge, level: f64) -> (f64, f64) {
        let lerp = |a: f64, b: f64, p: f64, q: f64| {
            let t = if b != a { (level - a) / (b - a) } else { 0.5 };
            p + t.clamp(0.0, 1.0) * (q - p)
        };
        let x = |i: usize| self.xs.get(i).copied().unwrap_or(0.0);
        let y = |j: usize| self.ys.get(j).copied().unwrap_or(0.0);
        match e {
            Edge::H(i, j) => (lerp(self.at(i, j), self.at(i + 1, j), x(i), x(i + 1)), y(j)),
            Edge::V(i, j) => (x(i), lerp(self.at(i, j), self.at(i, j + 1), y(j), y(j + 1))),
        }
    }

    fn join(&self, segments: &[(Edge, Edge)], level: f64) -> Vec<Contour> {
        let mut at_edge: HashMap<Edge, Vec<usize>> = HashMap::new();
        for (s, (a, b)) in segments.iter().enumerate() {
            at_edge.entry(*a).or_default().push(s);
            at_edge.entry(*b).or_default().push(s);
        }
        let mut used = vec![false; segments.len()];
        let mut out = Vec::new();
        let degree = |e: &Edge| at_edge.get(e).map_or(0, Vec::len);
        // Open lines first (they start at an edge used by only one segment), then rings.
        let mut starts: Vec<(Edge, usize)> = Vec::new();
        for (s, (a, b)) in segments.iter().enumerate() {
            if degree(a) == 1 {
                starts.push((*a, s));
            }
            if degree(b) == 1 {
                starts.push((*b, s));
            }
        }
        starts.extend(segments.iter().enumerate().map(|(s, (a, _))| (*a, s)));
        for (start, first) in starts {
            if used[first] {
                continue;
            }
            let mut path = vec![start];
            let mut cur = start;
            let mut seg = first;
            let mut closed = false;
            loop {
                used[seg] = true;
                let (a, b) = segments[seg];
                let next = if a == cur { b } else { a };
                if next == start {
                    closed = true;
                    break;
                }
                path.push(next);
                let Some(&n) = at_edge
                    .get(&next)
                    .and_then(|v| v.iter().find(|&&s| !used[s]))
                else {
                    break;
                };
                cur = next;
                seg = n;
            }
            out.push(Contour {
                points: path
                    .into_iter()
                    .map(|e| self.edge_point(e, level))
                    .collect(),
                closed,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic standard normal samples (Box–Muller on a fixed LCG).
    fn normals(n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed;
        let mut uniform = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (u, v) = (uniform(), uniform());
                (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
            })
            .collect()
    }

    #[test]
    fn kde_2d_integrates_to_one() {
        let xs: Vec<f64> = normals(300, 1).iter().map(|v| 2.0 + v).collect();
        let ys: Vec<f64> = normals(300, 2).iter().map(|v| -1.0 + 0.5 * v).collect();
        let kde = Kde2d::new(&xs, &ys).unwrap();
        let grid = kde.grid(120);
        let total = grid.integral();
        assert!((total - 1.0).abs() < 5e-3, "integral {total}");
    }

    #[test]
    fn kde_1d_integrates_to_one() {
        let v = normals(200, 3);
        let kde = Kde1d::new(&v).unwrap();
        let h = kde.bandwidth();
        // scott: sigma * n^(-1/5)
        assert!((h - covariance(&v, &v).sqrt() * 200f64.powf(-0.2)).abs() < 1e-12);
        let curve = kde.curve(-8.0, 8.0, 2001);
        let dx = 16.0 / 2000.0;
        let integral: f64 = curve.iter().map(|(_, d)| d).sum::<f64>() * dx;
        assert!((integral - 1.0).abs() < 1e-3, "integral {integral}");
    }

    #[test]
    fn gaussian_blob_gives_closed_rings_around_mean() {
        let xs: Vec<f64> = normals(2000, 5).iter().map(|v| 3.0 + v).collect();
        let ys: Vec<f64> = normals(2000, 6).iter().map(|v| 1.0 + v).collect();
        let (mx, my) = (mean(&xs), mean(&ys));
        let grid = Kde2d::new(&xs, &ys).unwrap().grid(90);
        for mass in [0.25, 0.5, 0.75] {
            let level = grid.level_for_mass(mass);
            let rings = grid.contours(level);
            assert_eq!(rings.len(), 1, "mass {mass}: {} contours", rings.len());
            let ring = &rings[0];
            assert!(ring.closed, "mass {mass}: contour not closed");
            assert!(ring.points.len() > 20);
            let n = ring.points.len() as f64;
            let cx = ring.points.iter().map(|p| p.0).sum::<f64>() / n;
            let cy = ring.points.iter().map(|p| p.1).sum::<f64>() / n;
            assert!(
                (cx - mx).abs() < 0.3 && (cy - my).abs() < 0.3,
                "centre ({cx}, {cy})"
            );
            // roughly circular: radii within ±35% of their mean
            let radii: Vec<f64> = ring
                .points
                .iter()
                .map(|p| ((p.0 - cx).powi(2) + (p.1 - cy).powi(2)).sqrt())
                .collect();
            let r = mean(&radii);
            let worst = radii
                .iter()
                .map(|x| (x / r - 1.0).abs())
                .fold(0.0, f64::max);
            assert!(worst < 0.35, "mass {mass}: radius deviates {worst}");
            // a standard 2-D normal's HDR with mass p has radius sqrt(-2 ln(1-p)); the KDE
            // is a bit wider (kernel variance added), so allow a generous margin
            let expected = (-2.0 * (1.0 - mass).ln()).sqrt();
            assert!(
                r > 0.8 * expected && r < 1.4 * expected,
                "mass {mass}: r {r} vs {expected}"
            );
        }
    }

    #[test]
    fn marching_squares_on_a_cone_is_a_closed_ring() {
        let n = 41;
        let xs = linspace(-1.0, 1.0, n);
        let ys = xs.clone();
        let z = ys
            .iter()
            .flat_map(|&y| xs.iter().map(move |&x| 1.0 - (x * x + y * y).sqrt()))
            .collect();
        let grid = DensityGrid { xs, ys, z };
        let rings = grid.contours(0.5);
        assert_eq!(rings.len(), 1);
        assert!(rings[0].closed);
        for (x, y) in &rings[0].points {
            let r = (x * x + y * y).sqrt();
            assert!((r - 0.5).abs() < 0.01, "point at radius {r}");
        }
    }

    #[test]
    fn open_contours_at_the_grid_border() {
        // plane z = x: the level line x = 0 runs from bottom to top, not closed
        let xs = linspace(-1.0, 1.0, 11);
        let ys = xs.clone();
        let z = ys.iter().flat_map(|_| xs.iter().copied()).collect();
        let grid = DensityGrid { xs, ys, z };
        let lines = grid.contours(0.05);
        assert_eq!(lines.len(), 1);
        assert!(!lines[0].closed);
        assert_eq!(lines[0].points.len(), 11);
    }

    #[test]
    fn degenerate_inputs_are_errors() {
        assert!(Kde2d::new(&[0.0, 1.0, 2.0], &[0.0, 1.0, 2.0]).is_err()); // collinear
        assert!(Kde2d::new(&[0.0, 1.0], &[0.0, 1.0]).is_err());
        assert!(Kde2d::new(&[0.0, f64::NAN, 1.0], &[0.0, 1.0, 3.0]).is_err());
        assert!(Kde1d::new(&[1.0, 1.0, 1.0]).is_err());
        assert!(Kde1d::new(&[1.0]).is_err());
    }
}
