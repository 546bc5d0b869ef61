//! Charts are looked at: every chart type is rendered to PNG and to an in-memory bitmap, and
//! the pixels are checked (size, not a single colour, text drawn in the title region). Also:
//! SVG content, evcxr display framing, every input error, KDE/contour sanity, HTML tables.
//!
//! Set `REPLENS_PLOT_DIR=/some/dir` to keep one PNG per chart type for eyeballing.

use std::path::{Path, PathBuf};

use replens::display::{frame_html, show, table_html, DisplayHtml};
use replens::plot::kde::Kde2d;
use replens::plot::{
    Chart, Colormap, HeatmapChart, HistogramChart, Legend, LineChart, RocChart, ScatterChart,
};
use replens::polars::prelude::*;

/// Deterministic standard normals (Box–Muller on a fixed LCG): no RNG dependency needed.
fn normals(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15).wrapping_add(1);
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

fn line_chart() -> Chart {
    let layers: Vec<usize> = (0..12).collect();
    let trained: Vec<f64> = layers
        .iter()
        .map(|&l| 20.0 + 30.0 * (1.0 - (-(l as f64) / 3.0).exp()))
        .collect();
    let untrained: Vec<f32> = layers.iter().map(|&l| 14.0 + 0.3 * l as f32).collect();
    LineChart::new("eRank per layer")
        .x_label("layer")
        .y_label("eRank")
        .series("trained", &layers, &trained)
        .band(
            "trained",
            trained.iter().map(|v| v - 3.0),
            trained.iter().map(|v| v + 3.0),
        )
        .series("untrained", &layers, &untrained)
        .build()
        .expect("line chart")
}

fn line_chart_log_x() -> Chart {
    let sizes = [70e6, 160e6, 410e6, 1.0e9, 2.8e9, 6.9e9];
    let score = [0.41, 0.45, 0.52, 0.58, 0.63, 0.66];
    LineChart::new("score vs model size")
        .x_label("parameters")
        .y_label("score")
        .series("pythia", sizes, score)
        .log_x(true)
        .legend(Legend::LowerRight)
        .build()
        .expect("log-x line chart")
}

fn heatmap_chart() -> Chart {
    let n = 8;
    let rows: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            (0..n)
                .map(|j| (-((i as f64 - j as f64).abs()) / 3.0).exp())
                .collect()
        })
        .collect();
    HeatmapChart::new("CKA layer × layer")
        .matrix(&rows)
        .labels((0..n).map(|i| format!("L{i}")))
        .x_label("layer (untrained)")
        .y_label("layer (trained)")
        .range(0.0, 1.0)
        .bar_label("CKA")
        .build()
        .expect("heatmap")
}

fn scatter_chart() -> Chart {
    let (ax, ay) = (normals(300, 1), normals(300, 2));
    let bx: Vec<f64> = normals(250, 3).iter().map(|v| 3.0 + 0.7 * v).collect();
    let by: Vec<f64> = normals(250, 4).iter().map(|v| 1.5 + 1.2 * v).collect();
    ScatterChart::new("projection by dataset")
        .x_label("PC 1")
        .y_label("PC 2")
        .group("wiki", &ax, &ay)
        .group("code", &bx, &by)
        .build()
        .expect("scatter chart")
}

fn histogram_chart() -> Chart {
    let a = normals(400, 5);
    let b: Vec<f32> = normals(300, 6)
        .iter()
        .map(|v| (1.5 + 0.8 * v) as f32)
        .collect();
    HistogramChart::new("score distribution")
        .x_label("score")
        .group("in-distribution", &a)
        .group("shifted", &b)
        .kde(true)
        .build()
        .expect("histogram")
}

fn roc_chart() -> Chart {
    let pos = normals(200, 7);
    let neg = normals(200, 8);
    let scores: Vec<f64> = pos
        .iter()
        .map(|v| v + 1.2)
        .chain(neg.iter().copied())
        .collect();
    let labels: Vec<bool> = (0..400).map(|i| i < 200).collect();
    RocChart::new("OOD detection")
        .scores("energy", &scores, &labels)
        .curve("baseline", [0.0, 0.2, 0.5, 1.0], [0.0, 0.35, 0.7, 1.0])
        .build()
        .expect("roc chart")
}

fn all_charts() -> Vec<(&'static str, Chart)> {
    vec![
        ("line", line_chart()),
        ("line_log_x", line_chart_log_x()),
        ("heatmap", heatmap_chart()),
        ("scatter_kde", scatter_chart()),
        ("histogram", histogram_chart()),
        ("roc", roc_chart()),
    ]
}

/// Width and height from a PNG's IHDR chunk (the `image` crate is not a direct dependency).
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).expect("read png");
    assert!(
        bytes.len() > 1000,
        "{}: only {} bytes",
        path.display(),
        bytes.len()
    );
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{}: not a PNG",
        path.display()
    );
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

/// Pixel checks on the bitmap rendering: not one colour, several distinct colours (series
/// palette), and dark pixels (text) in the title strip at the top.
fn check_pixels(name: &str, chart: &Chart) {
    let (w, h) = (chart.width() as usize, chart.height() as usize);
    let rgb = chart.to_rgb().expect("rgb render");
    assert_eq!(rgb.len(), w * h * 3, "{name}: buffer size");
    let px = |x: usize, y: usize| {
        let k = 3 * (y * w + x);
        (rgb[k], rgb[k + 1], rgb[k + 2])
    };
    let first = px(0, 0);
    assert_eq!(first, (255, 255, 255), "{name}: background should be white");
    let mut distinct = std::collections::HashSet::new();
    for y in (0..h).step_by(3) {
        for x in (0..w).step_by(3) {
            distinct.insert(px(x, y));
        }
    }
    assert!(
        distinct.len() > 20,
        "{name}: only {} colours",
        distinct.len()
    );
    // Title text: dark pixels in the top 40 rows, around the centre.
    let dark_title = (0..40.min(h))
        .flat_map(|y| (w / 4..3 * w / 4).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let (r, g, b) = px(x, y);
            (r as u32 + g as u32 + b as u32) < 200
        })
        .count();
    assert!(
        dark_title > 50,
        "{name}: no title text drawn ({dark_title} dark pixels)"
    );
    // Some coloured (non-grey) pixels: the data.
    let coloured = (0..h)
        .step_by(2)
        .flat_map(|y| (0..w).step_by(2).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let (r, g, b) = px(x, y);
            r.max(g).max(b) as i32 - r.min(g).min(b) as i32 > 60
        })
        .count();
    assert!(coloured > 100, "{name}: only {coloured} coloured pixels");
}

#[test]
fn every_chart_renders_to_png_and_bitmap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keep: Option<PathBuf> = std::env::var_os("REPLENS_PLOT_DIR").map(PathBuf::from);
    if let Some(k) = &keep {
        std::fs::create_dir_all(k).expect("create REPLENS_PLOT_DIR");
    }
    for (name, chart) in all_charts() {
        assert_eq!(
            (chart.width(), chart.height()),
            (800, 500),
            "{name}: default size"
        );
        let path = dir.path().join(format!("{name}.png"));
        chart.save_png(&path).expect("save png");
        assert_eq!(png_size(&path), (800, 500), "{name}: PNG size");
        check_pixels(name, &chart);
        if let Some(k) = &keep {
            chart
                .save_png(k.join(format!("{name}.png")))
                .expect("keep png");
            chart
                .save_svg(k.join(format!("{name}.svg")))
                .expect("keep svg");
        }
    }
}

#[test]
fn custom_size_is_respected() {
    let chart = line_chart().resized(640, 360).expect("resize");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.png");
    chart.save_png(&path).unwrap();
    assert_eq!(png_size(&path), (640, 360));
    check_pixels("resized line", &chart);
    let tall = HeatmapChart::new("tall")
        .matrix([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
        .size(420, 600)
        .build()
        .unwrap();
    tall.save(dir.path().join("tall.png")).unwrap();
    assert_eq!(png_size(&dir.path().join("tall.png")), (420, 600));
    check_pixels("tall heatmap", &tall);
}

#[test]
fn svg_output_and_files() {
    let dir = tempfile::tempdir().unwrap();
    for (name, chart) in all_charts() {
        let svg = chart.to_svg_string();
        assert!(
            svg.starts_with("<svg"),
            "{name}: {}",
            &svg[..40.min(svg.len())]
        );
        assert!(svg.contains("width=\"800\"") && svg.contains("height=\"500\""));
        assert!(
            svg.contains(chart.title()),
            "{name}: title missing from SVG"
        );
        assert!(svg.contains("</svg>"));
        let path = dir.path().join(format!("{name}.svg"));
        chart.save_svg(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), svg);
    }
    // Legends and axis labels are in the SVG as text.
    let svg = line_chart().to_svg_string();
    for text in ["trained", "untrained", "layer", "eRank"] {
        assert!(svg.contains(text), "line SVG lacks {text}");
    }
    let svg = roc_chart().to_svg_string();
    assert!(svg.contains("energy (AUC = 0.") && svg.contains("chance"));
    assert!(svg.contains("false positive rate"));
    let svg = heatmap_chart().to_svg_string();
    assert!(svg.contains("L7") && svg.contains("CKA"));
    // Special characters are escaped.
    let svg = LineChart::new("A & B <1>")
        .series("x<y", [1, 2], [1, 2])
        .build()
        .unwrap()
        .to_svg_string();
    assert!(svg.contains("A &amp; B &lt;1&gt;") && !svg.contains("A & B <1>"));
}

#[test]
fn evcxr_framing() {
    let chart = roc_chart();
    let payload = chart.evcxr_payload();
    assert!(payload.starts_with("EVCXR_BEGIN_CONTENT image/svg+xml\n<svg"));
    assert!(payload.ends_with("</svg>\nEVCXR_END_CONTENT"));
    assert_eq!(payload.matches("EVCXR_BEGIN_CONTENT").count(), 1);

    let df = df!("a" => [1, 2]).unwrap();
    let html = df.html().evcxr_payload();
    assert!(html.starts_with("EVCXR_BEGIN_CONTENT text/html\n<div"));
    assert!(html.ends_with("</div>\nEVCXR_END_CONTENT"));
}

#[test]
fn save_rejects_unknown_extensions_and_bad_paths() {
    let chart = roc_chart();
    let dir = tempfile::tempdir().unwrap();
    let err = chart
        .save_png(dir.path().join("x.jpg"))
        .unwrap_err()
        .to_string();
    assert!(err.contains(".png"), "{err}");
    let err = chart
        .save(dir.path().join("x.pdf"))
        .unwrap_err()
        .to_string();
    assert!(err.contains(".svg or .png"), "{err}");
    let missing = dir.path().join("no/such/dir/x.png");
    let err = chart.save_png(&missing).unwrap_err().to_string();
    assert!(err.contains("no/such/dir"), "{err}");
    let err = chart
        .save_svg(dir.path().join("no/such/x.svg"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no/such"), "{err}");
}

fn err(result: replens::Result<Chart>) -> String {
    match result {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn line_chart_errors() {
    let e = err(LineChart::new("t").build());
    assert!(
        e.contains("line chart 't'") && e.contains("no series"),
        "{e}"
    );
    let e = err(LineChart::new("t")
        .series("a", [1, 2, 3], [1.0, 2.0])
        .build());
    assert!(
        e.contains("series 'a'") && e.contains("3") && e.contains("2"),
        "{e}"
    );
    let e = err(LineChart::new("t")
        .series("nan", [1, 2], [1.0, f64::NAN])
        .build());
    assert!(
        e.contains("series 'nan'") && e.contains("ys[1]") && e.contains("NaN"),
        "{e}"
    );
    let e = err(LineChart::new("t")
        .series("inf", [f64::INFINITY, 2.0], [1, 2])
        .build());
    assert!(e.contains("series 'inf'") && e.contains("xs[0]"), "{e}");
    let e = err(LineChart::new("t")
        .series("e", Vec::<f64>::new(), Vec::<f64>::new())
        .build());
    assert!(e.contains("series 'e' is empty"), "{e}");
    let e = err(LineChart::new("t")
        .series("a", [1], [1])
        .series("a", [1], [2])
        .build());
    assert!(e.contains("'a' is added twice"), "{e}");
    let e = err(LineChart::new("t")
        .series("a", [1, 2], [1, 2])
        .band("b", [0, 1], [2, 3])
        .build());
    assert!(e.contains("no series 'b'"), "{e}");
    let e = err(LineChart::new("t")
        .series("a", [1, 2], [1, 2])
        .band("a", [0], [2, 3])
        .build());
    assert!(e.contains("band of series 'a'"), "{e}");
    let e = err(LineChart::new("t")
        .series("a", [1, 2], [1, 2])
        .band("a", [0.0, f64::NAN], [2, 3])
        .build());
    assert!(
        e.contains("band of series 'a'") && e.contains("lower[1]"),
        "{e}"
    );
    let e = err(LineChart::new("t")
        .series("a", [0, 2], [1, 2])
        .log_x(true)
        .build());
    assert!(e.contains("series 'a'") && e.contains("log"), "{e}");
    let e = err(LineChart::new("t")
        .series("a", [1, 2], [1, 2])
        .size(10, 500)
        .build());
    assert!(e.contains("size 10x500"), "{e}");
    let e = err(LineChart::new("t")
        .series("a", [1, 2], [1, 2])
        .y_range(1.0, 0.0)
        .build());
    assert!(e.contains("y_range"), "{e}");
}

#[test]
fn heatmap_errors() {
    let e = err(HeatmapChart::new("h").build());
    assert!(e.contains("heatmap 'h'") && e.contains("empty"), "{e}");
    let e = err(HeatmapChart::new("h")
        .matrix(vec![vec![1.0, 2.0], vec![3.0]])
        .build());
    assert!(e.contains("row 1 has 1 values"), "{e}");
    let e = err(HeatmapChart::new("h")
        .matrix([[1.0, f64::NAN], [3.0, 4.0]])
        .build());
    assert!(
        e.contains("row 0") && e.contains("column[1]") && e.contains("NaN"),
        "{e}"
    );
    let e = err(HeatmapChart::new("h")
        .matrix([[1.0, 2.0], [3.0, 4.0]])
        .labels(["a"])
        .build());
    assert!(
        e.contains("1 row labels for 2 rows") && e.contains("1 column labels"),
        "{e}"
    );
    let e = err(HeatmapChart::new("h")
        .matrix([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
        .labels(["a", "b"])
        .build());
    assert!(e.contains("2 column labels for 3 columns"), "{e}");
    let e = err(HeatmapChart::new("h").matrix_flat([1, 2, 3], 2).build());
    assert!(e.contains("matrix_flat"), "{e}");
    let e = err(HeatmapChart::new("h")
        .matrix([[1.0]])
        .range(1.0, 1.0)
        .build());
    assert!(e.contains("range"), "{e}");
    let t = replens::candle_core::Tensor::zeros(
        (2, 2, 2),
        replens::candle_core::DType::F32,
        &replens::candle_core::Device::Cpu,
    )
    .unwrap();
    let e = err(HeatmapChart::new("h").tensor(&t).build());
    assert!(e.contains("[2, 2, 2]"), "{e}");
    // Non-square matrices with their own labels are fine; tensors work.
    let t = replens::candle_core::Tensor::new(
        &[[0.1f32, 0.2, 0.3], [0.4, 0.5, 0.6]],
        &replens::candle_core::Device::Cpu,
    )
    .unwrap();
    let chart = HeatmapChart::new("rect")
        .tensor(&t)
        .row_labels(["r0", "r1"])
        .col_labels(["c0", "c1", "c2"])
        .colormap(Colormap::RedBlue)
        .build()
        .unwrap();
    assert!(chart.svg().contains("c2"));
}

#[test]
fn scatter_errors() {
    let e = err(ScatterChart::new("s").build());
    assert!(
        e.contains("scatter chart 's'") && e.contains("no groups"),
        "{e}"
    );
    let e = err(ScatterChart::new("s").group("g", [1, 2, 3], [1, 2]).build());
    assert!(
        e.contains("group 'g'") && e.contains("xs has 3 values but ys has 2"),
        "{e}"
    );
    let e = err(ScatterChart::new("s")
        .group("g", [1.0, f64::NAN], [1, 2])
        .build());
    assert!(e.contains("group 'g'") && e.contains("xs[1]"), "{e}");
    let e = err(ScatterChart::new("s")
        .group("g", Vec::<f64>::new(), Vec::<f64>::new())
        .build());
    assert!(e.contains("group 'g' is empty"), "{e}");
    let e = err(ScatterChart::new("s")
        .group("g", [1, 2], [1, 2])
        .levels([0.5, 1.0])
        .build());
    assert!(e.contains("level 1"), "{e}");
    let e = err(ScatterChart::new("s")
        .group("g", [1, 2], [1, 2])
        .grid(5)
        .build());
    assert!(e.contains("grid size 5"), "{e}");
    // Too few points for a KDE: drawn without contours, not an error.
    ScatterChart::new("s")
        .group_pairs("two", [(0.0, 0.0), (1.0, 1.0)])
        .group_pairs("line", [[0, 0], [1, 1], [2, 2]])
        .build()
        .unwrap();
}

#[test]
fn histogram_errors() {
    let e = err(HistogramChart::new("h").build());
    assert!(
        e.contains("histogram 'h'") && e.contains("no groups"),
        "{e}"
    );
    let e = err(HistogramChart::new("h")
        .group("g", Vec::<f64>::new())
        .build());
    assert!(e.contains("group 'g' is empty"), "{e}");
    let e = err(HistogramChart::new("h").group("g", [1.0, f64::NAN]).build());
    assert!(e.contains("group 'g'") && e.contains("values[1]"), "{e}");
    let e = err(HistogramChart::new("h").group("g", [1.0]).bins(0).build());
    assert!(e.contains("bins(0)"), "{e}");
    let e = err(HistogramChart::new("h")
        .group("g", [1.0])
        .bars(false)
        .build());
    assert!(e.contains("nothing to draw"), "{e}");
    // A constant group is fine (degenerate range is padded), with counts on the y axis.
    let chart = HistogramChart::new("c")
        .group("g", [2.0; 5])
        .density(false)
        .build()
        .unwrap();
    assert!(chart.svg().contains("count"));
}

#[test]
fn roc_errors_and_auc() {
    let e = err(RocChart::new("r").build());
    assert!(
        e.contains("ROC chart 'r'") && e.contains("no curves"),
        "{e}"
    );
    let e = err(RocChart::new("r").curve("c", [0.0, 0.5], [0.0]).build());
    assert!(
        e.contains("series 'c'") && e.contains("fpr has 2 values but tpr has 1"),
        "{e}"
    );
    let e = err(RocChart::new("r")
        .curve("c", [0.0, 1.5], [0.0, 1.0])
        .build());
    assert!(
        e.contains("series 'c'") && e.contains("fpr[1] = 1.5"),
        "{e}"
    );
    let e = err(RocChart::new("r")
        .curve("c", [0.0, f64::NAN], [0.0, 1.0])
        .build());
    assert!(e.contains("series 'c'") && e.contains("NaN"), "{e}");
    let e = err(RocChart::new("r")
        .scores("s", [0.1, 0.2], [true, true])
        .build());
    assert!(
        e.contains("series 's'") && e.contains("both classes"),
        "{e}"
    );
    let e = err(RocChart::new("r").scores("s", [0.1, 0.2], [true]).build());
    assert!(
        e.contains("series 's'") && e.contains("2 scores but 1 labels"),
        "{e}"
    );

    // Perfect separation → AUC 1; reversed → 0; ties → 0.5.
    let (f, t) =
        replens::plot::roc_curve(&[0.9, 0.8, 0.2, 0.1], &[true, true, false, false]).unwrap();
    assert_eq!(replens::plot::roc_auc(&f, &t), 1.0);
    let (f, t) =
        replens::plot::roc_curve(&[0.1, 0.2, 0.8, 0.9], &[true, true, false, false]).unwrap();
    assert_eq!(replens::plot::roc_auc(&f, &t), 0.0);
    let (f, t) = replens::plot::roc_curve(&[0.5; 4], &[true, false, true, false]).unwrap();
    assert_eq!(replens::plot::roc_auc(&f, &t), 0.5);
    // Missing end points are added for the AUC in the legend.
    let svg = RocChart::new("r")
        .curve("c", [0.5], [1.0])
        .build()
        .unwrap()
        .to_svg_string();
    assert!(svg.contains("c (AUC = 0.750)"), "AUC label missing");
}

#[test]
fn kde_integrates_to_one_and_contours_ring_the_mean() {
    let xs: Vec<f64> = normals(400, 11).iter().map(|v| 5.0 + 2.0 * v).collect();
    let ys: Vec<f64> = normals(400, 12).iter().map(|v| -3.0 + v).collect();
    let kde = Kde2d::new(&xs, &ys).unwrap();
    let grid = kde.grid(100);
    assert!(
        (grid.integral() - 1.0).abs() < 5e-3,
        "integral {}",
        grid.integral()
    );
    let (mx, my) = (
        xs.iter().sum::<f64>() / xs.len() as f64,
        ys.iter().sum::<f64>() / ys.len() as f64,
    );
    for mass in [0.3, 0.6, 0.9] {
        let rings = grid.contours(grid.level_for_mass(mass));
        assert_eq!(rings.len(), 1, "mass {mass}");
        let ring = &rings[0];
        assert!(ring.closed, "mass {mass}: open contour");
        // The mean lies inside the ring: winding test along the horizontal ray.
        let crossings = ring
            .points
            .iter()
            .zip(ring.points.iter().cycle().skip(1))
            .filter(|((x0, y0), (x1, y1))| {
                (*y0 > my) != (*y1 > my) && mx < x0 + (my - y0) * (x1 - x0) / (y1 - y0)
            })
            .count();
        assert_eq!(crossings % 2, 1, "mass {mass}: mean not inside the contour");
    }
}

#[test]
fn frame_tables() {
    let emb: Vec<Series> = (0..30)
        .map(|i| {
            Series::new(
                "".into(),
                (0..384)
                    .map(|k| ((i * k) % 7) as f32 * 0.1 - 0.3)
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let emb = Series::new("hidden".into(), emb)
        .cast(&DataType::Array(Box::new(DataType::Float32), 384))
        .unwrap();
    let df = DataFrame::new(
        30,
        vec![
            Column::new("doc".into(), (0..30u32).collect::<Vec<_>>()),
            Column::new(
                "text".into(),
                (0..30)
                    .map(|i| format!("<b>tok{i}</b> & more"))
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "score".into(),
                (0..30).map(|i| i as f64 / 3.0).collect::<Vec<_>>(),
            ),
            emb.into(),
        ],
    )
    .unwrap();
    let html = frame_html(&df, 10);
    assert!(html.contains("shape: (30, 4)"), "{html}");
    assert!(html.contains("&lt;b&gt;tok0&lt;/b&gt; &amp; more"));
    assert!(!html.contains("<b>tok0"));
    assert!(html.contains("… 384 values]"), "{html}");
    assert!(
        html.contains("[-0.30, -0.30, -0.30, … 384 values]"),
        "{html}"
    );
    assert!(html.contains("array[f32, 384]"), "{html}");
    // 5 head rows, an elision row, 5 tail rows
    assert_eq!(html.matches("<tr>").count(), 1 + 11, "{html}");
    assert!(html.contains("tok4") && !html.contains("tok5<") && html.contains("tok29"));
    assert!(html.contains("0.3333") && html.contains("9.6667"));
    // short frames are shown whole
    let small = show(&df.head(Some(3)));
    assert_eq!(small.as_str().matches("<tr>").count(), 4);

    let t = table_html(
        &["model", "AUC <%>"],
        &[vec!["gpt2".into(), "0.91".into()], vec!["x".into()]],
    );
    assert!(t.contains("AUC &lt;%&gt;") && t.contains("gpt2"));
    assert_eq!(t.matches("<td").count(), 4);
}

#[test]
fn degenerate_but_valid_inputs_render() {
    // single points, constant values, 1×1 and large matrices, extreme magnitudes, odd text
    let charts = vec![
        LineChart::new("one point").series("p", [3], [7.0]).build(),
        LineChart::new("").series("", [1, 2, 3], [5, 5, 5]).build(),
        LineChart::new("tiny values")
            .series("t", [0.0, 1e-9], [1e-12, 2e-12])
            .build(),
        LineChart::new("huge values · ünïcödé ✓ 中文")
            .series("h", [1e100, 2e100], [-1e120, 1e120])
            .build(),
        HeatmapChart::new("1x1").matrix([[0.5]]).build(),
        HeatmapChart::new("constant")
            .matrix(vec![vec![2.0; 3]; 3])
            .build(),
        HeatmapChart::new("200x200")
            .matrix((0..200).map(|i| (0..200).map(move |j| ((i * j) % 17) as f64)))
            .build(),
        ScatterChart::new("one point")
            .group("g", [1.0], [2.0])
            .build(),
        HistogramChart::new("one value")
            .group("g", [4.2])
            .kde(true)
            .build(),
        RocChart::new("step")
            .curve("c", [0.0, 0.0, 1.0], [0.0, 1.0, 1.0])
            .build(),
    ];
    for chart in charts {
        let chart = chart.expect("valid input must build");
        let rgb = chart.to_rgb().expect("bitmap render");
        assert_eq!(rgb.len(), 800 * 500 * 3);
        assert!(
            rgb.iter().any(|&b| b < 128),
            "{}: nothing dark drawn",
            chart.title()
        );
    }
    let e = err(LineChart::new("t")
        .series("big", [1.0, 2.0], [0.0, 1e200])
        .build());
    assert!(e.contains("series 'big'") && e.contains("too large"), "{e}");
}

#[test]
fn auto_legend_avoids_the_data() {
    // Data rising to the upper right: the automatic legend must not sit there.
    let xs: Vec<f64> = (0..20).map(f64::from).collect();
    let ys: Vec<f64> = xs.iter().map(|x| x * x).collect();
    let svg = |legend: Legend| {
        LineChart::new("t")
            .series("rising", &xs, &ys)
            .legend(legend)
            .build()
            .unwrap()
            .to_svg_string()
    };
    assert_eq!(svg(Legend::Auto), svg(Legend::UpperLeft));
    assert_ne!(svg(Legend::Auto), svg(Legend::UpperRight));
    let roc = |legend: Legend| {
        RocChart::new("r")
            .curve("c", [0.0, 0.1, 1.0], [0.0, 0.9, 1.0])
            .legend(legend)
            .build()
            .unwrap()
            .to_svg_string()
    };
    assert_eq!(roc(Legend::Auto), roc(Legend::LowerRight));
}
