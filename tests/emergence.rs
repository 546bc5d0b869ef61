//! Information Emergence (study 3): the MI estimators on Gaussians with a closed-form MI, their
//! error handling, and the IE sample builders on the packaged default model.
//!
//! Reference values are closed forms: for x ~ N(0, I_d), y = ρx + √(1−ρ²)ε,
//! I(X; Y) = −(d/2)·log2(1 − ρ²) bits (0.2075 bits per dimension at ρ = 0.5).
//! The fast tests use small samples; `#[ignore]`d tests repeat them with larger ones
//! (`cargo test --test emergence -- --ignored --nocapture`).

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use replens::candle_core::{Device, IndexOp, Tensor};
use replens::hooks::{HookPoint, HookSpec};
use replens::metrics::emergence::{
    content_ids, icl_prompts, information_emergence, macro_samples, micro_samples, special_affixes,
    IclTask, IeConfig, MiEstimator, MicroPooling,
};
use replens::model::Model;
use replens::train::mine::{gaussian_mi_bits, infonce, mine, MiConfig, MiEstimate};

/// n joint samples of x ~ N(0, I_d), y = ρ x + √(1−ρ²) ε: per-coordinate correlation ρ.
fn gaussians(n: usize, d: usize, rho: f64, seed: u64) -> (Tensor, Tensor) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut x = Vec::with_capacity(n * d);
    let mut y = Vec::with_capacity(n * d);
    let s = (1.0 - rho * rho).sqrt();
    for _ in 0..n * d {
        let a: f64 = StandardNormal.sample(&mut rng);
        let e: f64 = StandardNormal.sample(&mut rng);
        x.push(a as f32);
        y.push((rho * a + s * e) as f32);
    }
    (
        Tensor::from_vec(x, (n, d), &Device::Cpu).unwrap(),
        Tensor::from_vec(y, (n, d), &Device::Cpu).unwrap(),
    )
}

fn cfg(steps: usize) -> MiConfig {
    MiConfig::default()
        .hidden(&[128])
        .batch_size(128)
        .max_steps(steps)
        .lr(1e-3)
        .eval_every(50)
        .patience(6)
        .n_resamples(500)
}

/// MINE's held-out CI covers the closed form at d = 1 and 8 (moderate MI, ≤ 2 bits).
fn mine_covers(d: usize, n: usize, steps: usize) {
    let (x, y) = gaussians(n, d, 0.5, 100 + d as u64);
    let truth = gaussian_mi_bits(0.5, d);
    let est = mine(&x, &y, &cfg(steps)).unwrap();
    println!("d={d} n={n} truth {truth:.4}: {est}");
    assert!(
        est.bits.contains(truth),
        "d={d}: truth {truth:.4} outside {est}"
    );
    assert!(est.bits.lower < est.value() && est.value() < est.bits.upper);
    assert!(est.n_test > 0 && est.steps > 0 && est.seconds > 0.0);
}

/// InfoNCE is a lower bound: never credibly above the truth, and at moderate MI close to it.
fn infonce_bounds(d: usize, n: usize, steps: usize, tight: f64) {
    let (x, y) = gaussians(n, d, 0.5, 200 + d as u64);
    let truth = gaussian_mi_bits(0.5, d);
    let est = infonce(&x, &y, &cfg(steps)).unwrap();
    println!("d={d} n={n} truth {truth:.4}: {est}");
    assert!(
        est.bits.lower <= truth,
        "d={d}: lower bound above the truth {truth:.4}: {est}"
    );
    assert!(
        est.value() > tight * truth,
        "d={d}: {est} far below {truth:.4}"
    );
    assert!(est.bits.upper <= est.cap_bits.unwrap() + 1e-9);
}

#[test]
fn mine_recovers_gaussian_mi_d1() {
    mine_covers(1, 3000, 800);
}

#[test]
fn mine_recovers_gaussian_mi_d8() {
    mine_covers(8, 3000, 800);
}

#[test]
fn infonce_lower_bounds_gaussian_mi_d1_d8() {
    infonce_bounds(1, 3000, 600, 0.6);
    infonce_bounds(8, 3000, 600, 0.7);
}

/// At d = 64 the truth (13.3 bits) is far beyond what a few thousand samples can certify
/// (a distribution-free lower bound needs ~e^I samples; McAllester & Stratos, AISTATS 2020),
/// and above InfoNCE's cap log2(128) = 7 bits. What is true: both estimates are clearly
/// positive, clearly *below* the truth (downward bias), and InfoNCE stays under its cap.
#[test]
fn d64_estimates_are_biased_down_and_infonce_is_capped() {
    let (x, y) = gaussians(3000, 64, 0.5, 64);
    let truth = gaussian_mi_bits(0.5, 64);
    let m = mine(&x, &y, &cfg(500)).unwrap();
    let i = infonce(&x, &y, &cfg(500)).unwrap();
    println!("d=64 truth {truth:.3}: {m}\n{i}");
    assert!(m.bits.upper < truth && m.value() > 2.0, "{m}");
    assert!(i.bits.upper < truth && i.value() > 2.0, "{i}");
    assert!(i.bits.upper <= 7.0 + 1e-9 && i.cap_bits == Some(7.0));
}

#[test]
fn independent_samples_give_zero() {
    let (x, _) = gaussians(2000, 8, 0.0, 1);
    let (y, _) = gaussians(2000, 8, 0.0, 2);
    for est in [
        mine(&x, &y, &cfg(300)).unwrap(),
        infonce(&x, &y, &cfg(300)).unwrap(),
    ] {
        println!("independent: {est}");
        // A critic fitted to noise scores *below* 0 on new rows (the held-out value of a
        // fixed critic is a lower bound of the truth, 0), so the CI may sit just under 0; what
        // must hold is |Î| ≪ the 1.66 bits of the correlated case and no spurious MI.
        assert!(
            est.bits.contains(0.0) || est.value().abs() < 0.1,
            "independent samples: {est}"
        );
        assert!(est.bits.lower < 0.02, "spurious positive MI: {est}");
    }
}

#[test]
fn clipping_happens_and_is_counted() {
    let (x, y) = gaussians(1000, 8, 0.5, 3);
    let c = cfg(60).batch_size(64).patience(100);
    let clipped = mine(&x, &y, &c.clone().clip_norm(Some(1e-4))).unwrap();
    assert_eq!(clipped.clipped_steps, clipped.steps, "{clipped}");
    assert!(clipped.max_grad_norm > 1e-4);
    let free = mine(&x, &y, &c.clone().clip_norm(None)).unwrap();
    assert_eq!(free.clipped_steps, 0);
    // Clipping changed the updates, so the trained critics differ.
    assert_ne!(clipped.history, free.history);
    let nce = infonce(&x, &y, &c.clip_norm(Some(1e-4))).unwrap();
    assert_eq!(nce.clipped_steps, nce.steps);
}

#[test]
fn seeded_runs_are_identical() {
    let (x, y) = gaussians(1000, 4, 0.5, 4);
    let c = cfg(100).batch_size(64);
    let strip = |e: MiEstimate| (e.bits, e.history, e.steps, e.clipped_steps);
    assert_eq!(
        strip(mine(&x, &y, &c).unwrap()),
        strip(mine(&x, &y, &c).unwrap())
    );
    assert_eq!(
        strip(infonce(&x, &y, &c).unwrap()),
        strip(infonce(&x, &y, &c).unwrap())
    );
    assert_ne!(
        mine(&x, &y, &c).unwrap().bits,
        mine(&x, &y, &c.clone().seed(1)).unwrap().bits
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let (x, y) = gaussians(300, 4, 0.5, 5);
    let c = cfg(10);
    let msg = |r: replens::Result<MiEstimate>| r.unwrap_err().to_string();
    // Fewer samples than the batch needs.
    let e = msg(mine(&x, &y, &c.clone().batch_size(512)));
    assert!(e.contains("batch_size = 512"), "{e}");
    let e = msg(infonce(&x, &y, &c.clone().batch_size(128)));
    assert!(e.contains("batch_size = 128"), "{e}");
    // Mismatched shapes.
    let e = msg(mine(&x, &y.i(..200).unwrap(), &c));
    assert!(e.contains("300 rows") && e.contains("200"), "{e}");
    let e = msg(mine(&x.flatten_all().unwrap(), &y, &c));
    assert!(e.contains("x must be 2-D"), "{e}");
    // NaN.
    let mut v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[4 * 7 + 2] = f32::NAN;
    let y_nan = Tensor::from_vec(v, (300, 4), &Device::Cpu).unwrap();
    let e = msg(infonce(&x, &y_nan, &c));
    assert!(
        e.contains("y has a non-finite value") && e.contains("row 7, column 2"),
        "{e}"
    );
    // Invalid settings.
    assert!(msg(mine(&x, &y, &c.clone().hidden(&[]))).contains("hidden"));
    assert!(msg(mine(&x, &y, &c.clone().holdout(1.0))).contains("holdout"));
    assert!(msg(mine(&x, &y, &c.clone().lr(f64::NAN))).contains("lr"));
}

/// Longer accuracy runs (minutes): `cargo test --test emergence -- --ignored --nocapture`.
#[test]
#[ignore]
fn accuracy_long() {
    mine_covers(1, 8000, 3000);
    mine_covers(8, 8000, 3000);
    infonce_bounds(1, 8000, 3000, 0.8);
    infonce_bounds(8, 8000, 3000, 0.8);
    let (x, y) = gaussians(20000, 64, 0.5, 640);
    let truth = gaussian_mi_bits(0.5, 64);
    let c = cfg(4000).hidden(&[256]).batch_size(256);
    println!(
        "d=64 n=20000 truth {truth:.3}: {}",
        mine(&x, &y, &c).unwrap()
    );
    println!(
        "d=64 n=20000 truth {truth:.3}: {}",
        infonce(&x, &y, &c).unwrap()
    );
}

/// Time per estimate on d = 768 pairs (the size of a residual stream of a 768-wide model).
#[test]
#[ignore]
fn timing_d768() {
    for n in [1000usize, 4000] {
        let (x, y) = gaussians(n, 768, 0.3, 768);
        let c = MiConfig::default()
            .hidden(&[256])
            .batch_size(128)
            .max_steps(300);
        let m = mine(&x, &y, &c).unwrap();
        let i = infonce(&x, &y, &c).unwrap();
        println!(
            "d=768 n={n}: MINE {:.2} s ({} steps, {:.1} ms/step incl. eval), InfoNCE {:.2} s ({} steps)\n  {m}\n  {i}",
            m.seconds,
            m.steps,
            1000.0 * m.seconds / m.steps as f64,
            i.seconds,
            i.steps
        );
    }
}

// ---- sample builders and IE on the packaged default model (SmolLM2-135M, 30 blocks) ----

#[test]
fn ie_samples_and_smoke_on_default_model() {
    let model = Model::load("default").unwrap();
    let (prefix, suffix) = special_affixes(&model).unwrap();
    println!("special affixes: {prefix:?} / {suffix:?}");
    let prompts = icl_prompts(&IclTask::load("country_capital").unwrap(), 1, 32, 0).unwrap();
    let content = content_ids(&model, &prompts).unwrap();
    let layers = [3usize, 4];

    // Macro pairs: resid_pre of block 4 is resid_post of block 3 (the residual stream is
    // passed on unchanged), and the rows are the last content token of the full run.
    let mac = macro_samples(&model, &content, &layers).unwrap();
    assert_eq!(mac[&3].x.dims(), &[32, model.d_model()]);
    let diff = (&mac[&3].y - &mac[&4].x)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    // The macro row 0 is the last content position of a plain run of prompt 0; and, the model
    // being a causal decoder, position 0 of that run sees only prefix + token 0, which is
    // exactly the micro input of token 0.
    let first: Vec<u32> = [prefix.as_slice(), &content[0], suffix.as_slice()].concat();
    let (mut last, mut pos0) = (None, None);
    model
        .for_each_doc_ids(
            &[first],
            &HookSpec::points([HookPoint::ResidPost(3)]),
            &replens::model::RunOptions::default().progress(false),
            |doc| {
                let h = doc.cache.get(HookPoint::ResidPost(3))?;
                last = Some(h.i(prefix.len() + content[0].len() - 1)?);
                pos0 = Some(h.i(prefix.len())?);
                Ok(())
            },
        )
        .unwrap();
    let max_abs = |a: &Tensor, b: &Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let d = max_abs(&last.unwrap(), &mac[&3].y.i(0).unwrap());
    assert!(d < 1e-4, "macro row 0 differs from the full run by {d}");
    let mic = micro_samples(&model, &content, &layers).unwrap();
    let p0 = &mic.per_position[&3][0];
    assert_eq!(p0.y.dims()[0], 32);
    let d = max_abs(&pos0.unwrap(), &p0.y.i(0).unwrap());
    assert!(
        d < 1e-3,
        "micro state of token 0 alone vs position 0 of the full run: {d}"
    );
    assert!(mic.distinct_tokens > 20);

    // IE end to end on 2 layers, small and fast settings.
    let mi = MiConfig::default()
        .hidden(&[32])
        .batch_size(8)
        .max_steps(40)
        .eval_every(10)
        .n_resamples(200);
    for (est, micro) in [
        (
            MiEstimator::Mine,
            MicroPooling::PerPosition {
                max_positions: Some(2),
            },
        ),
        (MiEstimator::InfoNce, MicroPooling::Pooled),
    ] {
        // InfoNCE evaluates whole batches, so it needs smaller ones on 32 sequences.
        let bsz = if est == MiEstimator::Mine { 8 } else { 4 };
        let cfg = IeConfig::default()
            .estimator(est)
            .mi(mi.clone().batch_size(bsz))
            .micro(micro);
        let ie = information_emergence(&model, &prompts, &layers, &cfg).unwrap();
        println!("{ie}");
        let df = ie.to_frame().unwrap();
        assert_eq!(df.height(), 2);
        for r in &ie.layers {
            assert!(r.ie_bits.is_finite() && r.ie_lower <= r.ie_bits && r.ie_bits <= r.ie_upper);
            assert!((r.ie_bits - (r.macro_mi.value() - r.micro_bits)).abs() < 1e-12);
            let expected = if est == MiEstimator::Mine { 2 } else { 1 };
            assert_eq!(r.micro_mi.len(), expected);
        }
    }
    // Bad input.
    let cfg = IeConfig::default().mi(mi);
    assert!(information_emergence(&model, &prompts, &[30], &cfg)
        .unwrap_err()
        .to_string()
        .contains("layer 30 does not exist"));
    let e = information_emergence(&model, &prompts[..4], &[3], &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 samples") && e.contains("batch_size"), "{e}");
    assert!(information_emergence(&model, &["France: Paris", ""], &[3], &cfg).is_err());
}

// ---- notebook 03 (generated) ----
/// The code cells of `notebooks/src/03-information-emergence.txt`, verbatim except for paths
/// (the notebook runs in `notebooks/`), so the notebook's Rust is compiled with the tests.
/// Generated by copying the cells; keep the two in sync. Needs `data/` (scripts/fetch_data.py).
#[allow(clippy::all)]
fn notebook_03() -> Result<(), Box<dyn std::error::Error>> {
    use replens::display::show;
    use replens::metrics::emergence::{
        icl_prompts, information_emergence, information_emergence_ids, natural_sequences, IclTask,
        IeConfig, MicroPooling,
    };
    use replens::plot::LineChart;
    use replens::prelude::*;
    use replens::train::mine::{correlated_gaussians, gaussian_mi_bits, infonce, mine, MiConfig};

    /// A float column as a Vec (nulls as NaN).
    fn col(df: &DataFrame, name: &str) -> Vec<f64> {
        df.column(name)
            .unwrap()
            .f64()
            .unwrap()
            .iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect()
    }
    // ---- next cell ----
    let (gx, gy) = correlated_gaussians(1500, 4, 0.6, 0)?;
    let truth = gaussian_mi_bits(0.6, 4);
    let gcfg = MiConfig::default()
        .hidden(&[32])
        .batch_size(64)
        .max_steps(300)
        .lr(3e-3)
        .seed(0);
    let g_mine = mine(&gx, &gy, &gcfg)?;
    let g_nce = infonce(&gx, &gy, &gcfg)?;
    println!("truth {truth:.3} bits\n{g_mine}\n{g_nce}");
    // ---- next cell ----
    let country = IclTask::load("country_capital")?;
    let n_seq = 32;
    let shots: Vec<usize> = vec![1, 2, 4, 8];
    let prompts: Vec<Vec<String>> = shots
        .iter()
        .map(|&k| icl_prompts(&country, k, n_seq, k as u64))
        .collect::<Result<_>>()?;
    println!("{}", prompts[2][0]);
    // ---- next cell ----
    let model = Model::load("default")?;
    let wiki = replens::data::read_texts("data/corpus/wikipedia_conll2010.jsonl", "text")?;
    let natural = natural_sequences(&model, &wiki, 8, n_seq)?;
    println!(
        "{} sequences; first: {:?}",
        natural.len(),
        model.tokenizer().decode(&natural[0], false).unwrap()
    );
    // ---- next cell ----
    let mi = MiConfig::default()
        .hidden(&[32])
        .batch_size(12)
        .holdout(0.4)
        .max_steps(60)
        .eval_every(10)
        .patience(3)
        .n_resamples(300)
        .seed(0);
    let cfg = IeConfig::default().mi(mi).micro(MicroPooling::Pooled);
    let layers: Vec<usize> = vec![0, 4, 8, 12, 16, 20, 24, 29];
    let mut by_shots = Vec::new();
    for (k, p) in shots.iter().zip(&prompts) {
        let r = information_emergence(&model, p, &layers, &cfg)?;
        println!("{k} shots: {r}");
        by_shots.push(r);
    }
    let icl_frame = by_shots[2].to_frame()?;
    let _ = show(&icl_frame);
    // ---- next cell ----
    let xs: Vec<f64> = layers.iter().map(|&l| l as f64).collect();
    let chart_layers =
        LineChart::new("SmolLM2-135M, 4-shot country prompts: MI and IE per block (bits)")
            .x_label("block l")
            .y_label("bits")
            .series("macro MI", &xs, &col(&icl_frame, "macro_bits"))
            .band(
                "macro MI",
                &col(&icl_frame, "macro_lower"),
                &col(&icl_frame, "macro_upper"),
            )
            .series("micro MI (pooled)", &xs, &col(&icl_frame, "micro_bits"))
            .series("IE", &xs, &col(&icl_frame, "ie_bits"))
            .band(
                "IE",
                &col(&icl_frame, "ie_lower"),
                &col(&icl_frame, "ie_upper"),
            )
            .build()?;
    let _ = &chart_layers;
    // ---- next cell ----
    let shot_means: Vec<f64> = by_shots.iter().map(|r| r.mean_ie()).collect();
    let chart_shots =
        LineChart::new("SmolLM2-135M: mean IE over 8 blocks vs shots (country → capital)")
            .x_label("shots k")
            .y_label("IE (bits)")
            .series("mean IE", &shots, &shot_means)
            .build()?;
    let _ = &chart_shots;
    // ---- next cell ----
    let ie_nat = information_emergence_ids(&model, &natural, &layers, &cfg)?;
    println!("{ie_nat}");
    // ---- next cell ----
    let nat_frame = ie_nat.to_frame()?;
    let chart_nat = LineChart::new("SmolLM2-135M: IE of natural 8-token text vs 4-shot prompts")
        .x_label("block l")
        .y_label("IE (bits)")
        .series("natural text (Wikipedia)", &xs, &col(&nat_frame, "ie_bits"))
        .band(
            "natural text (Wikipedia)",
            &col(&nat_frame, "ie_lower"),
            &col(&nat_frame, "ie_upper"),
        )
        .series("4-shot country prompts", &xs, &col(&icl_frame, "ie_bits"))
        .band(
            "4-shot country prompts",
            &col(&icl_frame, "ie_lower"),
            &col(&icl_frame, "ie_upper"),
        )
        .build()?;
    let _ = &chart_nat;
    // ---- next cell ----
    let encoder = Model::load("default-encoder")?;
    let enc_layers: Vec<usize> = (0..encoder.n_layers()).collect();
    let ie_enc = information_emergence(&encoder, &prompts[2], &enc_layers, &cfg)?;
    println!("{ie_enc}");
    let _ = show(&ie_enc.to_frame()?);
    // ---- next cell ----
    std::fs::create_dir_all("/tmp/replens-notebook-03")?;
    chart_layers.save_png("/tmp/replens-notebook-03/ie-layers.png")?;
    chart_shots.save_png("/tmp/replens-notebook-03/ie-shots.png")?;
    chart_nat.save_png("/tmp/replens-notebook-03/ie-natural-vs-icl.png")?;
    // ---- next cell ----
    assert!(
        (g_mine.value() - truth).abs() < 0.5,
        "MINE near the closed form: {g_mine}"
    );
    assert!(
        g_nce.bits.lower <= truth && g_nce.value() > 0.5 * truth,
        "InfoNCE lower-bounds the closed form: {g_nce}"
    );
    assert!(g_nce.cap_bits.unwrap() >= g_nce.bits.upper);
    for r in &by_shots {
        assert_eq!(r.layers[0].layer, 0);
        assert_eq!(
            r.layers[0].macro_mi.value(),
            0.0,
            "constant macro input at block 0 carries 0 bits"
        );
    }
    for r in by_shots
        .iter()
        .flat_map(|r| &r.layers)
        .chain(&ie_enc.layers)
        .chain(&ie_nat.layers)
    {
        assert!(
            r.ie_bits.is_finite() && r.ie_lower <= r.ie_bits && r.ie_bits <= r.ie_upper,
            "layer {}",
            r.layer
        );
        assert!(
            r.macro_mi.bits.lower <= r.macro_mi.value()
                && r.macro_mi.value() <= r.macro_mi.bits.upper
        );
        assert!(
            r.macro_mi.n_train + r.macro_mi.n_val + r.macro_mi.n_test == n_seq
                && r.macro_mi.seconds > 0.0
        );
    }
    assert_eq!(icl_frame.height(), layers.len());
    assert_eq!(ie_enc.layers.len(), 6);
    assert!(shot_means.iter().all(|m| m.is_finite()));
    println!("all checks passed");
    Ok(())
}

#[test]
#[ignore]
fn notebook_03_runs() {
    if !std::path::Path::new("data/corpus/wikipedia_conll2010.jsonl").exists() {
        eprintln!("skipped: data/corpus missing (run scripts/fetch_data.py)");
        return;
    }
    let t = std::time::Instant::now();
    notebook_03().unwrap();
    println!("notebook 03 code: {:.1} s", t.elapsed().as_secs_f64());
}
