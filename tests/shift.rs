//! Study 4 (distribution shift from embeddings; Vargas et al., arXiv 2310.13836): the
//! two-sample tests, PCA and the logistic probe against numpy / scipy / scikit-learn fixtures
//! (scripts/reference/shift_reference.py), calibration of the tests under H0 (200 independent
//! random splits), power under a mean shift, bad input, and a small end-to-end run on the
//! packaged MiniLM encoder.
//!
//! The MMD permutation-test benchmark (n = 5000 per group, d = 384, 500 permutations) is an
//! ignored test: `cargo test --test shift -- --ignored --nocapture bench`.

use std::collections::HashMap;
use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use replens::candle_core::{DType, Device, Tensor};
use replens::display::DisplayHtml;
use replens::metrics::shift::{
    benjamini_hochberg, binomial_band, binomial_half_sf, c2st, holm, kolmogorov_sf, ks_2samp,
    ks_per_component, linear_mmd_test, median_bandwidth, mmd2, mmd_permutation_test, normal_sf,
    shift_report, shift_report_matrix, Bandwidth, C2stOptions, KsMethod, MmdOptions, Pca,
    ShiftOptions,
};
use replens::model::Model;
use replens::studies::distribution_shift::{
    analyze_shift, embed_texts, run_distribution_shift, LabelledTexts, ShiftConfig,
};
use replens::train::probe::{LogisticRegression, Matrix};

type R = replens::Result<()>;

fn fixtures() -> &'static HashMap<String, Tensor> {
    static F: std::sync::OnceLock<HashMap<String, Tensor>> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/shift/shift_cases.safetensors");
        replens::candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e}; regenerate with /opt/ref/venv/bin/python scripts/reference/shift_reference.py",
                path.display()
            )
        })
    })
}

fn fx(key: &str) -> Tensor {
    fixtures()
        .get(key)
        .unwrap_or_else(|| panic!("fixture {key} missing"))
        .clone()
}

fn vec1(key: &str) -> Vec<f64> {
    fx(key).flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn scalar(key: &str) -> f64 {
    vec1(key)[0]
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

fn randn(rng: &mut StdRng, n: usize, d: usize) -> Tensor {
    let v: Vec<f64> = (0..n * d).map(|_| rng.sample(StandardNormal)).collect();
    Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap()
}

// ------------------------------------------------------------------------------------------
// agreement with the references
// ------------------------------------------------------------------------------------------

#[test]
fn mmd_matches_numpy() -> R {
    let mut worst: f64 = 0.0;
    for case in ["mmd", "mmd0"] {
        let (x, y) = (fx(&format!("{case}.x")), fx(&format!("{case}.y")));
        let m = mmd2(&x, &y, Bandwidth::Median)?;
        for (got, key) in [
            (m.sigma, "sigma"),
            (m.unbiased, "unbiased"),
            (m.biased, "biased"),
        ] {
            let want = scalar(&format!("{case}.{key}"));
            let e = rel(got, want);
            worst = worst.max(e);
            assert!(
                e <= 1e-6,
                "{case}.{key}: {got} vs numpy {want} (rel {e:.2e})"
            );
        }
        assert!((median_bandwidth(&x, &y)? - m.sigma).abs() < 1e-15);
        // f32 input goes through the same f64 path.
        let m32 = mmd2(
            &x.to_dtype(DType::F32)?,
            &y.to_dtype(DType::F32)?,
            Bandwidth::Median,
        )?;
        assert!(rel(m32.biased, m.biased) < 1e-4);
    }
    let (x, y) = (fx("mmd.x"), fx("mmd.y"));
    let m = mmd2(&x, &y, Bandwidth::Fixed(1.5))?;
    for (got, key) in [(m.unbiased, "unbiased"), (m.biased, "biased")] {
        let want = scalar(&format!("mmd.fixed.{key}"));
        worst = worst.max(rel(got, want));
        assert!(rel(got, want) <= 1e-6, "fixed σ {key}: {got} vs {want}");
    }
    // The permutation test reports the same observed statistic.
    let t = mmd_permutation_test(&x, &y, &MmdOptions::default())?;
    assert!(rel(t.statistic, scalar("mmd.unbiased")) <= 1e-6);
    println!("MMD vs numpy: max rel error {worst:.2e}");
    Ok(())
}

#[test]
fn pca_matches_sklearn_up_to_sign() -> R {
    for case in ["pca_tall", "pca_wide"] {
        let x = fx(&format!("{case}.x"));
        let comps = fx(&format!("{case}.components"));
        let (k, d) = comps.dims2()?;
        let want_c = comps.to_vec2::<f64>()?;
        let pca = Pca::fit(&x, k)?;
        let mut worst: f64 = 0.0;
        for (got, key) in [
            (&pca.mean, "mean"),
            (&pca.explained_variance, "explained_variance"),
            (&pca.explained_variance_ratio, "explained_variance_ratio"),
        ] {
            for (g, w) in got.iter().zip(vec1(&format!("{case}.{key}"))) {
                worst = worst.max((g - w).abs() / w.abs().max(1.0));
            }
        }
        let scores = pca.transform(&x)?.to_vec2::<f64>()?;
        let want_s = fx(&format!("{case}.scores")).to_vec2::<f64>()?;
        for c in 0..k {
            let got = pca.component(c);
            let sign = if got.iter().zip(&want_c[c]).map(|(a, b)| a * b).sum::<f64>() < 0.0 {
                -1.0
            } else {
                1.0
            };
            for j in 0..d {
                worst = worst.max((sign * got[j] - want_c[c][j]).abs());
            }
            for (row_g, row_w) in scores.iter().zip(&want_s) {
                worst = worst.max((sign * row_g[c] - row_w[c]).abs() / row_w[c].abs().max(1.0));
            }
        }
        println!("PCA {case}: max error vs sklearn {worst:.2e}");
        assert!(worst < 1e-9, "{case}: {worst}");
        // Components are orthonormal.
        for a in 0..k {
            for b in 0..k {
                let dot: f64 = pca
                    .component(a)
                    .iter()
                    .zip(pca.component(b))
                    .map(|(u, v)| u * v)
                    .sum();
                assert!((dot - f64::from(u8::from(a == b))).abs() < 1e-10);
            }
        }
    }
    // fit_groups = fit on the stacked rows.
    let x = fx("pca_tall.x");
    let (a, b) = (x.narrow(0, 0, 25)?, x.narrow(0, 25, 35)?);
    let p1 = Pca::fit_groups(&[&a, &b], 3)?;
    let p2 = Pca::fit(&x, 3)?;
    assert_eq!(p1, p2);
    Ok(())
}

#[test]
fn ks_matches_scipy() -> R {
    let mut worst_p: f64 = 0.0;
    for case in ["ks_equal", "ks_unequal", "ks_ties", "ks_close", "ks_far"] {
        let a = vec1(&format!("{case}.a"));
        let b = vec1(&format!("{case}.b"));
        let t = ks_2samp(&a, &b)?;
        assert_eq!(t.method, KsMethod::Exact);
        let (ws, wp) = (
            scalar(&format!("{case}.statistic")),
            scalar(&format!("{case}.p_value")),
        );
        assert!(
            (t.statistic - ws).abs() < 1e-12,
            "{case}: D {} vs {ws}",
            t.statistic
        );
        let e = rel(t.p_value, wp);
        worst_p = worst_p.max(e);
        assert!(
            e < 1e-8,
            "{case}: p {} vs scipy {wp} (rel {e:.2e})",
            t.p_value
        );
        // Symmetric in its arguments.
        let r = ks_2samp(&b, &a)?;
        assert_eq!(r.statistic, t.statistic);
        assert!(rel(r.p_value, t.p_value) < 1e-10);
    }
    println!("KS exact p-values vs scipy: max rel error {worst_p:.2e}");
    // The asymptotic branch, on data both sides generate with the same float64 operations.
    let golden =
        |n: usize, mult: f64| -> Vec<f64> { (1..=n).map(|i| (i as f64 * mult) % 1.0).collect() };
    let a = golden(12000, 0.6180339887498949);
    let b: Vec<f64> = golden(11000, std::f64::consts::SQRT_2)
        .iter()
        .map(|v| v.powf(1.02))
        .collect();
    let t = ks_2samp(&a, &b)?;
    assert_eq!(t.method, KsMethod::Asymptotic);
    assert!((t.statistic - scalar("ks_asymp.statistic")).abs() < 1e-12);
    assert!(rel(t.p_value, scalar("ks_asymp.p_value")) < 1e-8);
    Ok(())
}

#[test]
fn distributions_and_corrections_match_scipy() {
    let cases = fx("binom.cases").to_vec2::<f64>().unwrap();
    for (c, want) in cases.iter().zip(vec1("binom.sf")) {
        let got = binomial_half_sf(c[0] as u64, c[1] as u64);
        assert!(rel(got, want) < 1e-10, "binom {c:?}: {got} vs {want}");
    }
    for (z, want) in vec1("norm.z").into_iter().zip(vec1("norm.sf")) {
        assert!(rel(normal_sf(z), want) < 1e-12, "norm.sf({z})");
    }
    for (l, want) in vec1("kolmogorov.lambda")
        .into_iter()
        .zip(vec1("kolmogorov.sf"))
    {
        assert!(rel(kolmogorov_sf(l), want) < 1e-10, "kstwobign.sf({l})");
    }
    let p = vec1("mt.p");
    for (got, want) in holm(&p).into_iter().zip(vec1("mt.holm")) {
        assert!((got - want).abs() < 1e-14);
    }
    for (got, want) in benjamini_hochberg(&p).into_iter().zip(vec1("mt.bh")) {
        assert!((got - want).abs() < 1e-14);
    }
}

#[test]
fn logistic_regression_matches_sklearn() -> R {
    let labels = |key: &str| -> Vec<u32> { vec1(key).iter().map(|&v| v as u32).collect() };
    let mut worst: f64 = 0.0;
    for (case, c, intercept, coef_key) in [
        ("lr_bin", 0.5, true, "lr_bin"),
        ("lr_multi", 2.0, true, "lr_multi"),
        ("lr_bin", 0.5, false, "lr_noint"),
    ] {
        let x = fx(&format!("{case}.x"));
        let y = labels(&format!("{case}.y"));
        let model = LogisticRegression::new()
            .c(c)
            .tol(1e-10)
            .fit_intercept(intercept)
            .fit(&x, &y)?;
        assert!(
            model.converged,
            "{case}: not converged ({})",
            model.grad_norm
        );
        let want = vec1(&format!("{coef_key}.coef"));
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (g, w) in model.coef.iter().zip(&want) {
            worst = worst.max((g - w).abs() / scale);
        }
        if intercept {
            for (g, w) in model
                .intercept
                .iter()
                .zip(vec1(&format!("{case}.intercept")))
            {
                worst = worst.max((g - w).abs() / scale);
            }
            let p = model
                .predict_proba(&x.narrow(0, 0, 10)?)?
                .to_vec2::<f64>()?;
            let wp = fx(&format!("{case}.proba")).to_vec2::<f64>()?;
            for (rg, rw) in p.iter().zip(&wp) {
                for (g, w) in rg.iter().zip(rw) {
                    assert!((g - w).abs() < 1e-6, "{case} proba {g} vs {w}");
                }
            }
        }
    }
    println!("logistic regression vs sklearn: max error {worst:.2e} (relative to max |coef|)");
    assert!(worst < 1e-4, "{worst}");
    Ok(())
}

// ------------------------------------------------------------------------------------------
// calibration and power
// ------------------------------------------------------------------------------------------

/// One pooled Gaussian sample per trial, split at random into two groups of 60 (d = 8).
fn random_split(rng: &mut StdRng, shift: f64) -> (Matrix, Matrix) {
    let (n, d) = (120, 8);
    let mut rows: Vec<Vec<f64>> = (0..n)
        .map(|_| (0..d).map(|_| rng.sample(StandardNormal)).collect())
        .collect();
    rows.shuffle(rng);
    let mut y: Vec<f64> = rows[60..].concat();
    for (i, v) in y.iter_mut().enumerate() {
        if i % d == 0 {
            *v += shift;
        }
    }
    (
        Matrix::new("x", rows[..60].concat(), 60, d).unwrap(),
        Matrix::new("y", y, 60, d).unwrap(),
    )
}

#[test]
fn tests_hold_their_level_on_random_splits_and_have_power() -> R {
    let trials = 200;
    let alpha = 0.05;
    let opts = |seed: u64| {
        ShiftOptions::default()
            .alpha(alpha)
            .n_permutations(99)
            .n_components(4)
            .seed(seed)
    };
    let names = [
        "MMD²_u",
        "MMD²_l",
        "C2ST",
        "KS per PC (Holm)",
        "KS per PC (Benjamini",
    ];
    let mut rejections = [0usize; 5];
    let mut rng = StdRng::seed_from_u64(2026);
    for t in 0..trials {
        let (x, y) = random_split(&mut rng, 0.0);
        let report = shift_report_matrix(&x, &y, &opts(t as u64))?;
        for (count, name) in rejections.iter_mut().zip(names) {
            *count += usize::from(report.get(name).unwrap().reject);
        }
    }
    let (lo, hi) = binomial_band(trials, alpha, 0.999);
    println!(
        "H0, {trials} random splits (n = 60 + 60, d = 8), α = {alpha}, 99.9% band [{lo}, {hi}]:"
    );
    for (count, name) in rejections.iter().zip(names) {
        println!(
            "  {name:<24} {count:>3} rejections ({:.3})",
            *count as f64 / trials as f64
        );
    }
    // The permutation test is exact and the binomial C2ST is valid (conservative): both within
    // the band. KS + Holm / BH are conservative (≤ α); the linear MMD is asymptotic (15 pairs).
    for i in [0, 2] {
        assert!(
            (lo..=hi).contains(&rejections[i]),
            "{}: {} rejections outside [{lo}, {hi}]",
            names[i],
            rejections[i]
        );
    }
    for i in [1, 3, 4] {
        assert!(
            rejections[i] <= hi,
            "{}: {} rejections",
            names[i],
            rejections[i]
        );
    }

    // Power: the first coordinate of y shifted by 1 (one standard deviation).
    let trials = 40;
    let mut hits = [0usize; 5];
    for t in 0..trials {
        let (x, y) = random_split(&mut rng, 1.0);
        let report = shift_report_matrix(&x, &y, &opts(1000 + t as u64))?;
        for (count, name) in hits.iter_mut().zip(names) {
            *count += usize::from(report.get(name).unwrap().reject);
        }
    }
    println!("power, mean shift of 1 sd in one of 8 coordinates, {trials} trials:");
    for (count, name) in hits.iter().zip(names) {
        println!("  {name:<24} {:.3}", *count as f64 / trials as f64);
    }
    assert!(
        hits[0] as f64 / trials as f64 >= 0.7,
        "MMD power {}",
        hits[0]
    );
    assert!(
        hits[2] as f64 / trials as f64 >= 0.5,
        "C2ST power {}",
        hits[2]
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------
// properties
// ------------------------------------------------------------------------------------------

#[test]
fn tests_are_seeded_and_sensible() -> R {
    let mut rng = StdRng::seed_from_u64(5);
    let x = randn(&mut rng, 70, 6);
    let y = (randn(&mut rng, 50, 6) + 0.7)?;
    let opts = ShiftOptions::default().n_permutations(199).seed(11);
    let a = shift_report(&x, &y, &opts)?;
    let b = shift_report(&x, &y, &opts)?;
    assert_eq!(a, b, "same seed, same report");
    assert!(a.rows.iter().all(|r| r.reject), "{a}");
    // p-value of the permutation test: (1 + #exceed) / (1 + B), its smallest possible value here.
    assert!((a.mmd.p_value - 1.0 / 200.0).abs() < 1e-15);
    assert_eq!(a.mmd.null.len(), 199);
    // A different seed changes the permutations but not the observed statistic.
    let c = shift_report(&x, &y, &opts.seed(12))?;
    assert_eq!(c.mmd.statistic, a.mmd.statistic);
    assert_ne!(c.mmd.null, a.mmd.null);
    // Table and display.
    let df = a.to_frame()?;
    assert_eq!(df.shape(), (a.rows.len(), 6));
    let html = a.html();
    assert!(html.as_str().contains("C2ST") && html.as_str().contains("<table"));
    assert!(a.to_string().contains("KS per PC (Holm)"));
    // MMD²_b is a squared norm (≥ 0); here it exceeds MMD²_u, which drops the diagonal terms.
    let m = mmd2(&x, &y, Bandwidth::Median)?;
    assert!(m.biased >= 0.0 && m.biased > m.unbiased);
    // Identical groups: MMD²_b = 0.
    assert!(mmd2(&x, &x, Bandwidth::Median)?.biased.abs() < 1e-12);
    // Linear-time MMD and C2ST on a strong shift.
    let lin = linear_mmd_test(&x, &y, Bandwidth::Median, 0)?;
    assert_eq!(lin.pairs, 25);
    let c2 = c2st(&x, &y, &C2stOptions::default())?;
    assert_eq!(c2.n_test, 50);
    assert_eq!(c2.n_train, 70);
    // KS per component returns one test per PC with monotone corrections.
    let ks = ks_per_component(&x, &y, 3)?;
    assert_eq!(ks.tests.len(), 3);
    for i in 0..3 {
        assert!(ks.p_holm[i] >= ks.tests[i].p_value && ks.p_bh[i] >= ks.tests[i].p_value);
        assert!(ks.p_bh[i] <= ks.p_holm[i] + 1e-15);
    }
    assert_eq!(ks.to_frame()?.height(), 3);
    Ok(())
}

#[test]
fn bad_input_gives_clear_errors() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((5, 3), DType::F32, &dev).unwrap();
    let ok = Tensor::randn(0f32, 1., (6, 3), &dev).unwrap();
    let empty = Tensor::zeros((0, 3), DType::F32, &dev).unwrap();
    let wide = Tensor::randn(0f32, 1., (6, 4), &dev).unwrap();
    let nan = Tensor::new(&[[0f32, 1., 2.], [1., f32::NAN, 0.]], &dev).unwrap();
    let flat = Tensor::zeros(6, DType::F32, &dev).unwrap();
    let ints = Tensor::zeros((6, 3), DType::U32, &dev).unwrap();
    let msg = |r: replens::Result<replens::metrics::shift::ShiftReport>| {
        r.expect_err("should fail").to_string()
    };
    let o = ShiftOptions::default().n_permutations(9);

    let e = msg(shift_report(&empty, &ok, &o));
    assert!(e.contains("x") && e.contains("empty"), "{e}");
    let e = msg(shift_report(&ok, &wide, &o));
    assert!(e.contains("3 features") && e.contains("y has 4"), "{e}");
    let e = msg(shift_report(&ok, &nan, &o));
    assert!(e.contains("NaN") && e.contains("row 1, column 1"), "{e}");
    let e = msg(shift_report(&flat, &ok, &o));
    assert!(e.contains("2-D"), "{e}");
    let e = msg(shift_report(&ints, &ok, &o));
    assert!(e.contains("float"), "{e}");
    let one = ok.narrow(0, 0, 1).unwrap();
    let e = msg(shift_report(&one, &ok, &o));
    assert!(e.contains("at least 2"), "{e}");
    let e = msg(shift_report(&ok, &ok, &o.alpha(1.5)));
    assert!(e.contains("alpha"), "{e}");
    // All rows identical: the median bandwidth is undefined.
    let e = mmd2(&x, &x, Bandwidth::Median).unwrap_err().to_string();
    assert!(e.contains("median pairwise distance is 0"), "{e}");
    let e = mmd2(&ok, &ok, Bandwidth::Fixed(-1.0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bandwidth"), "{e}");
    let e = mmd_permutation_test(
        &ok,
        &ok,
        &MmdOptions {
            n_permutations: 0,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("n_permutations"), "{e}");
    let e = linear_mmd_test(&ok.narrow(0, 0, 3).unwrap(), &ok, Bandwidth::Median, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 4"), "{e}");
    let e = c2st(
        &ok,
        &ok,
        &C2stOptions {
            test_fraction: 1.0,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("test_fraction"), "{e}");
    let e = ks_2samp(&[], &[1.0]).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let e = ks_2samp(&[1.0, f64::INFINITY], &[1.0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("a[1]"), "{e}");
    let e = Pca::fit(&ok, 4).unwrap_err().to_string();
    assert!(e.contains("n_components"), "{e}");
    let e = Pca::fit(&x, 2).unwrap_err().to_string();
    assert!(e.contains("zero variance"), "{e}");
    let pca = Pca::fit(&ok, 2).unwrap();
    let e = pca.transform(&wide).unwrap_err().to_string();
    assert!(e.contains("4 features") && e.contains("fitted on 3"), "{e}");
}

// ------------------------------------------------------------------------------------------
// end to end on the packaged MiniLM encoder
// ------------------------------------------------------------------------------------------

fn fixture_texts(group: &str) -> LabelledTexts {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/shift/texts.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let rows = v[group].as_array().unwrap();
    LabelledTexts::new(
        group,
        rows.iter()
            .map(|r| r["text"].as_str().unwrap().to_string())
            .collect(),
        rows.iter()
            .map(|r| r["label"].as_u64().unwrap() as u32)
            .collect(),
    )
    .unwrap()
}

#[test]
fn minilm_movie_snippets_vs_tweets() -> R {
    let file = replens::model::source::models_dir().join("all-MiniLM-L6-v2/model.safetensors");
    assert!(
        file.exists(),
        "{} is missing: run scripts/setup to install the packaged models",
        file.display()
    );
    let start = std::time::Instant::now();
    let model = Model::load("minilm")?;
    let rt = fixture_texts("rt_polarity");
    let tweets = fixture_texts("vader_tweets");
    let cfg = ShiftConfig::default()
        .n_per_group(30)
        .n_permutations(199)
        .n_resamples(500)
        .seed(1);

    // Positive control: movie snippets (automatic labels) vs tweets (human labels).
    let pos = run_distribution_shift(&model, &rt, &tweets, &cfg)?;
    println!("{pos}");
    assert_eq!(pos.report.dim, 384);
    assert_eq!((pos.report.n_x, pos.report.n_y), (30, 30));
    for test in ["MMD²_u", "C2ST"] {
        let row = pos.report.get(test).unwrap();
        assert!(
            row.reject && row.p_value < 0.01,
            "{test} misses the domain shift: {row:?}"
        );
    }
    assert_eq!(pos.projections.height(), 60);
    assert_eq!(pos.scores("vader_tweets", 1)?.len(), 30);
    let chart = pos.scatter_chart(1, 2)?;
    assert!(chart.svg().contains("rt_polarity"));
    let probe = pos.probe.as_ref().unwrap();
    assert_eq!(probe.n_test + probe.n_train, 30);
    assert!(pos.html().as_str().contains("probe accuracy"));

    // Negative control: a random split of 60 other snippets.
    let (a, b) = rt.sample(60, 7)?.random_split(30, 8)?;
    let ea = embed_texts(&model, &a.texts, &cfg)?;
    let eb = embed_texts(&model, &b.texts, &cfg)?;
    let neg = analyze_shift(
        (&a.name, &ea, Some(&a.labels)),
        (&b.name, &eb, Some(&b.labels)),
        &cfg,
    )?;
    println!("{neg}");
    for test in ["MMD²_u", "C2ST"] {
        let row = neg.report.get(test).unwrap();
        assert!(!row.reject, "{test} fires on a random split: {row:?}");
    }
    println!("end to end: {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

// ------------------------------------------------------------------------------------------
// benchmark (ignored): compare with scripts/reference/bench_mmd.py
// ------------------------------------------------------------------------------------------

#[test]
#[ignore]
fn bench_mmd_permutation_test() -> R {
    let (n, d, perms) = (5000, 384, 500);
    let mut rng = StdRng::seed_from_u64(1);
    let mut group = |offset: f32| -> Tensor {
        let v: Vec<f32> = (0..n * d)
            .map(|_| rng.sample::<f32, _>(StandardNormal) + offset)
            .collect();
        Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap()
    };
    let x = group(0.0);
    let y = group(0.02);
    let t = std::time::Instant::now();
    let m = mmd2(&x, &y, Bandwidth::Median)?;
    let kernel_s = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let opts = MmdOptions {
        n_permutations: perms,
        ..Default::default()
    };
    let test = mmd_permutation_test(&x, &y, &opts)?;
    let total_s = t.elapsed().as_secs_f64();
    println!(
        "replens MMD permutation test: n = {n} per group, d = {d}, {perms} permutations: {total_s:.2} s \
         (kernel matrix + median alone: {kernel_s:.2} s; MMD²_u = {:.6e}, p = {:.4})",
        m.unbiased, test.p_value
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------
// notebooks/src/04-distribution-shift.txt, cell by cell (same code, same seeds, same asserts)
// ------------------------------------------------------------------------------------------

/// Slow (≈ 30 s of CPU: it embeds 320 texts) and needs data/ (`python3 scripts/fetch_data.py`):
/// `cargo test --test shift notebook -- --ignored --nocapture`.
#[test]
#[ignore]
fn notebook_04_cells() -> Result<(), Box<dyn std::error::Error>> {
    use replens::display::show;
    use replens::prelude::*;
    use replens::studies::distribution_shift::{null_rejections, power, representation_hook};
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data/sentiment");
    if !std::path::Path::new(data)
        .join("rt_polarity_train.jsonl")
        .exists()
    {
        println!("skipped: {data} is missing (python3 scripts/fetch_data.py)");
        return Ok(());
    }
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/target/notebook-output");
    let start = std::time::Instant::now();
    // ---- cells from here on: as in the notebook (paths aside)
    let rt = LabelledTexts::from_jsonl(
        format!("{data}/rt_polarity_train.jsonl"),
        "rt_polarity",
        "label",
    )?;
    let tweets = LabelledTexts::from_jsonl(
        format!("{data}/vader_tweets_test.jsonl"),
        "vader_tweets",
        "label",
    )?;
    println!(
        "{}: {} snippets, {}: {} tweets",
        rt.name,
        rt.len(),
        tweets.name,
        tweets.len()
    );
    println!("e.g. {:?}\n     {:?}", rt.texts[0], tweets.texts[0]);

    let (n_rt, n_tw) = (256, 64);
    let cfg = ShiftConfig::default().n_permutations(500).seed(0);
    let model = Model::load(&cfg.model)?;
    let rt_s = rt.sample(n_rt, 0)?;
    let tw_s = tweets.sample(n_tw, 1)?;
    let e_rt = embed_texts(&model, &rt_s.texts, &cfg)?;
    let e_tw = embed_texts(&model, &tw_s.texts, &cfg)?;
    println!(
        "{:?} and {:?} embeddings from {} ({:?} pooling)",
        e_rt.dims(),
        e_tw.dims(),
        representation_hook(&model, &cfg),
        cfg.pooling
    );

    let pos = analyze_shift(
        ("rt_polarity", &e_rt, Some(&rt_s.labels)),
        ("vader_tweets", &e_tw, Some(&tw_s.labels)),
        &cfg,
    )?;
    let chart_pos = pos.scatter_chart(1, 2)?;
    let _ = show(&pos.report.ks.to_frame()?);

    let half = n_rt / 2;
    let (a, b) = (e_rt.narrow(0, 0, half)?, e_rt.narrow(0, half, half)?);
    let neg = analyze_shift(
        ("rt_polarity (A)", &a, Some(&rt_s.labels[..half])),
        ("rt_polarity (B)", &b, Some(&rt_s.labels[half..])),
        &cfg,
    )?;
    let chart_neg = neg.scatter_chart(1, 2)?;

    let cal = cfg.clone().n_permutations(99);
    let null = null_rejections(&e_rt, 40, &cal)?;
    let pw = power(&e_rt, &e_tw, 32, 40, &cal)?;
    let mut rates = null.to_frame()?;
    rates.vstack_mut(&pw.to_frame()?)?;
    let _ = show(&rates);

    let pos_probe = pos.probe.clone().unwrap();
    let neg_probe = neg.probe.clone().unwrap();
    let mut probes = pos_probe.to_frame("rt_polarity", "vader_tweets")?;
    probes.vstack_mut(&neg_probe.to_frame("rt_polarity (A)", "rt_polarity (B)")?)?;
    let _ = show(&probes);

    std::fs::create_dir_all(out)?;
    chart_pos.save_png(format!("{out}/shift-positive-pca.png"))?;
    chart_neg.save_png(format!("{out}/shift-negative-pca.png"))?;
    let _ = show(&pos.report.to_frame()?);
    println!("{pos}\n{neg}\n{rates}\n{probes}");

    let alpha = cfg.alpha;
    for test in ["MMD²_u", "MMD²_l", "C2ST", "KS per PC (Holm)"] {
        let row = pos.report.get(test).unwrap();
        assert!(
            row.reject && row.p_value < 0.01,
            "positive control: {test} should reject: {row:?}"
        );
    }
    assert!(
        (pos.report.mmd.p_value - 1.0 / 501.0).abs() < 1e-12,
        "MMD p-value at its floor"
    );
    assert!(
        pos.report.c2st.accuracy > 0.75,
        "C2ST accuracy {}",
        pos.report.c2st.accuracy
    );
    assert!(pos.report.ks.p_holm[0] <= alpha, "PC 1 separates the sets");
    for row in &neg.report.rows {
        assert!(
            !row.reject && row.p_value > 0.1,
            "negative control: {} fired: {row:?}",
            row.test
        );
    }
    assert!(
        null.mmd_rejections <= null.band.1 && null.c2st_rejections <= null.band.1,
        "level: {null:?}"
    );
    assert!(
        pw.mmd_rate() >= 0.9 && pw.c2st_rate() >= 0.9,
        "power: {pw:?}"
    );
    assert!(
        pos_probe.in_distribution.lower > 0.5,
        "probe above chance in distribution: {}",
        pos_probe.in_distribution
    );
    assert!(
        pos_probe.shifted.estimate < pos_probe.in_distribution.estimate,
        "lower accuracy on the tweets"
    );
    assert!(
        pos_probe.shifted.contains(0.5),
        "on 64 tweets the probe is not distinguishable from chance: {}",
        pos_probe.shifted
    );
    assert!(
        pos_probe.shifted.upper >= pos_probe.in_distribution.lower,
        "the two accuracy CIs overlap"
    );
    assert!(
        neg_probe.shifted.lower > 0.5,
        "on the random half B the probe stays above chance: {}",
        neg_probe.shifted
    );
    println!("all checks passed");
    // ---- end of the notebook's cells
    println!("notebook cells: {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
