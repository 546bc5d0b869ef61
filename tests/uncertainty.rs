//! Study 5 (AdUE, Zabolotnyi et al., arXiv 2505.15443): uncertainty scores and metrics
//! against golden fixtures from scripts/reference/uncertainty_reference.py (sklearn, numpy,
//! scipy, torch), known answers, the AdUE head (torch parity of a full-batch fit, behaviour
//! at initialisation, a fit that beats SR, the frozen classifier untouched, grid selection),
//! and bad input.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use replens::candle_core::{DType, Device, Tensor, Var};
use replens::metrics::stats::pearson;
use replens::metrics::uncertainty::{
    accuracy_rejection_curve, auarc, calibration_bins, ece, error_indicator, mean_std,
    prediction_rejection_ratio, predictions, predictive_entropy, roc_auc, roc_curve, softmax,
    softmax_response, Mahalanobis, MahalanobisOptions, RelativeMahalanobis,
};
use replens::train::adue::{
    grid_search, AdueConfig, AdueGrid, AdueHead, LinearHead, OneCycle, Split,
};

type R = replens::Result<()>;

fn fixtures() -> &'static HashMap<String, Tensor> {
    static F: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    F.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/uncertainty/uncertainty_cases.safetensors");
        replens::candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e}; regenerate with /opt/ref/venv/bin/python \
                 scripts/reference/uncertainty_reference.py",
                path.display()
            )
        })
    })
}

fn get(key: &str) -> &'static Tensor {
    fixtures()
        .get(key)
        .unwrap_or_else(|| panic!("fixture {key} missing"))
}

fn vec_f64(key: &str) -> Vec<f64> {
    get(key)
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn vec_usize(key: &str) -> Vec<usize> {
    vec_f64(key).into_iter().map(|v| v as usize).collect()
}

fn vec_bool(key: &str) -> Vec<bool> {
    vec_f64(key).into_iter().map(|v| v != 0.0).collect()
}

fn scalar(key: &str) -> f64 {
    vec_f64(key)[0]
}

fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-12))
        .fold(0.0, f64::max)
}

fn t2(v: Vec<f64>, n: usize, d: usize) -> Tensor {
    Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap()
}

fn is_invalid<T: std::fmt::Debug>(r: replens::Result<T>, needle: &str) {
    match r {
        Err(replens::Error::InvalidInput(msg)) => assert!(
            msg.contains(needle),
            "error message {msg:?} should mention {needle:?}"
        ),
        other => panic!("expected an InvalidInput error mentioning {needle:?}, got {other:?}"),
    }
}

const AUC_CASES: [&str; 8] = [
    "int_ties",
    "rounded",
    "continuous",
    "all_tied",
    "perfect",
    "inverted",
    "imbalanced",
    "saturated",
];

// ------------------------------------------------------------------ ROC-AUC / ROC curve

#[test]
fn roc_auc_matches_sklearn_with_ties() -> R {
    let mut worst = 0.0f64;
    for case in AUC_CASES {
        let s = vec_f64(&format!("auc/{case}/scores"));
        let l = vec_bool(&format!("auc/{case}/labels"));
        let want = scalar(&format!("auc/{case}/auc"));
        let got = roc_auc(&s, &l)?;
        worst = worst.max((got - want).abs());
        assert!(
            (got - want).abs() <= 1e-12,
            "{case}: roc_auc {got} vs sklearn {want}"
        );
    }
    eprintln!("roc_auc vs sklearn: max abs error {worst:e}");
    assert_eq!(scalar("auc/all_tied/auc"), 0.5);
    assert_eq!(
        roc_auc(
            &vec_f64("auc/perfect/scores"),
            &vec_bool("auc/perfect/labels")
        )?,
        1.0
    );
    assert_eq!(
        roc_auc(
            &vec_f64("auc/inverted/scores"),
            &vec_bool("auc/inverted/labels")
        )?,
        0.0
    );
    Ok(())
}

#[test]
fn roc_auc_is_order_invariant_and_flips() -> R {
    let s = vec_f64("auc/int_ties/scores");
    let l = vec_bool("auc/int_ties/labels");
    let auc = roc_auc(&s, &l)?;
    let (rs, rl): (Vec<f64>, Vec<bool>) = s.iter().copied().zip(l.iter().copied()).rev().unzip();
    assert_eq!(roc_auc(&rs, &rl)?, auc);
    // negating scores or flipping labels mirrors the AUC (ties stay ties)
    let neg: Vec<f64> = s.iter().map(|v| -v).collect();
    assert!((roc_auc(&neg, &l)? - (1.0 - auc)).abs() < 1e-15);
    let flip: Vec<bool> = l.iter().map(|b| !b).collect();
    assert!((roc_auc(&s, &flip)? - (1.0 - auc)).abs() < 1e-15);
    // -0.0 and 0.0 are one tie
    assert_eq!(roc_auc(&[0.0, -0.0], &[true, false])?, 0.5);
    Ok(())
}

#[test]
fn roc_curve_matches_sklearn() -> R {
    for case in AUC_CASES {
        let s = vec_f64(&format!("auc/{case}/scores"));
        let l = vec_bool(&format!("auc/{case}/labels"));
        let c = roc_curve(&s, &l)?;
        let thr = vec_f64(&format!("auc/{case}/thresholds"));
        assert_eq!(c.thresholds, thr, "{case}: thresholds");
        let (fpr, tpr) = (
            vec_f64(&format!("auc/{case}/fpr")),
            vec_f64(&format!("auc/{case}/tpr")),
        );
        assert!(max_abs(&c.fpr, &fpr) <= 1e-15, "{case}: fpr");
        assert!(max_abs(&c.tpr, &tpr) <= 1e-15, "{case}: tpr");
        assert!(
            (c.auc() - roc_auc(&s, &l)?).abs() < 1e-12,
            "{case}: trapezoid"
        );
    }
    Ok(())
}

// ------------------------------------------------------------------ SR, entropy, ECE

#[test]
fn softmax_response_and_entropy_match_reference() -> R {
    let p = get("cal/probs");
    let sr = softmax_response(p)?;
    assert!(max_abs(&sr, &vec_f64("cal/sr")) <= 1e-15);
    let h = predictive_entropy(p)?;
    let want = vec_f64("cal/entropy");
    let err = max_abs(&h, &want);
    eprintln!("entropy vs scipy: max abs error {err:e}");
    assert!(err <= 1e-12);
    // known values: uniform over C classes and a one-hot row
    let u = Tensor::new(&[[0.25f64; 4], [1.0, 0.0, 0.0, 0.0]], &Device::Cpu)?;
    let h = predictive_entropy(&u)?;
    assert!((h[0] - 4f64.ln()).abs() < 1e-15 && h[1] == 0.0);
    assert_eq!(softmax_response(&u)?, vec![0.75, 0.0]);
    // f32 input works too
    let p32 = Tensor::new(&[[0.5f32, 0.25, 0.25]], &Device::Cpu)?;
    assert_eq!(softmax_response(&p32)?, vec![0.5]);
    Ok(())
}

#[test]
fn ece_matches_numpy() -> R {
    let p = get("cal/probs");
    let y = vec_usize("cal/labels");
    let e10 = ece(p, &y, 10)?;
    let e15 = ece(p, &y, 15)?;
    eprintln!(
        "ECE vs numpy: {:e}, {:e}",
        (e10 - scalar("cal/ece10")).abs(),
        (e15 - scalar("cal/ece15")).abs()
    );
    assert!((e10 - scalar("cal/ece10")).abs() <= 1e-12);
    assert!((e15 - scalar("cal/ece15")).abs() <= 1e-12);
    let bins = calibration_bins(p, &y, 15)?;
    let counts: Vec<f64> = bins.iter().map(|b| b.count as f64).collect();
    assert_eq!(counts, vec_f64("cal/bins15_count"));
    let acc: Vec<f64> = bins.iter().map(|b| b.accuracy).collect();
    let conf: Vec<f64> = bins.iter().map(|b| b.confidence).collect();
    assert!(max_abs(&acc, &vec_f64("cal/bins15_acc")) <= 1e-12);
    assert!(max_abs(&conf, &vec_f64("cal/bins15_conf")) <= 1e-12);
    // a perfectly calibrated toy: confidence 0.75, 3 of 4 right
    let q = Tensor::new(&[[0.75f64, 0.25]; 4], &Device::Cpu)?;
    assert!(ece(&q, &[0, 0, 0, 1], 10)?.abs() < 1e-15);
    Ok(())
}

#[test]
fn softmax_predictions_errors() -> R {
    let logits = Tensor::new(&[[1.0f64, 3.0, 2.0], [5.0, 5.0, 0.0]], &Device::Cpu)?;
    let p = softmax(&logits)?;
    let rows = p.to_vec2::<f64>()?;
    let z: f64 = [1f64, 3.0, 2.0].iter().map(|v| v.exp()).sum();
    assert!((rows[0][1] - 3f64.exp() / z).abs() < 1e-15);
    assert_eq!(predictions(&p)?, vec![1, 0]); // first maximum on ties
    assert_eq!(error_indicator(&p, &[1, 1])?, vec![false, true]);
    Ok(())
}

// ------------------------------------------------------------------ Mahalanobis / RMD

#[test]
fn mahalanobis_and_rmd_match_numpy() -> R {
    for case in ["default", "no_ridge_raw", "rank_deficient"] {
        let k = |s: &str| format!("md/{case}/{s}");
        let train = get(&k("train"));
        let test = get(&k("test"));
        let labels = vec_usize(&k("train_labels"));
        let n_classes = labels.iter().max().unwrap() + 1;
        let opts = MahalanobisOptions {
            l2_normalise: scalar(&k("l2")) != 0.0,
            ridge: scalar(&k("ridge")),
        };
        let md = Mahalanobis::fit_with(train, &labels, n_classes, opts)?;
        let all = md.class_distances(test)?;
        let e_all = max_rel(&all, &vec_f64(&k("md_all")));
        let e_md = max_rel(&md.score(test)?, &vec_f64(&k("md")));
        let rmd = RelativeMahalanobis::fit_with(train, &labels, n_classes, opts)?;
        let e_md0 = max_rel(&rmd.background_distance(test)?, &vec_f64(&k("md0")));
        let want_rmd = vec_f64(&k("rmd"));
        // RMD is a difference and can be near 0: compare against the size of its terms
        let scale = vec_f64(&k("md0"))
            .iter()
            .fold(1.0f64, |a, &b| a.max(b.abs()));
        let e_rmd = max_abs(&rmd.score(test)?, &want_rmd) / scale;
        eprintln!(
            "{case}: MD all {e_all:e}, MD {e_md:e}, MD0 {e_md0:e}, RMD (rel. to max MD0) {e_rmd:e}"
        );
        for (what, e) in [
            ("md_all", e_all),
            ("md", e_md),
            ("md0", e_md0),
            ("rmd", e_rmd),
        ] {
            assert!(e <= 1e-6, "{case}: {what} relative error {e}");
        }
        assert_eq!(rmd.mahalanobis().score(test)?, md.score(test)?);
    }
    Ok(())
}

#[test]
fn mahalanobis_known_answers() -> R {
    // Two classes at ±e1 in 2-D with within-class spread only along e2 (variance 1/4,
    // shared). Without normalisation, MD of (0, 0) to either mean is 1/σ1² along e1 —
    // infinite without a ridge; with features (±1, ±0.5) the tied covariance is
    // diag(0, 0.25), so use points with spread along both axes instead:
    // class 0 at (-1, 0) ± (0.5, 0) and ± (0, 0.5); class 1 mirrored.
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for (c, cx) in [(0usize, -1.0f64), (1, 1.0)] {
        for (dx, dy) in [(0.5, 0.0), (-0.5, 0.0), (0.0, 0.5), (0.0, -0.5)] {
            rows.extend([cx + dx, dy]);
            labels.push(c);
        }
    }
    let x = t2(rows, 8, 2);
    let opts = MahalanobisOptions {
        l2_normalise: false,
        ridge: 0.0,
    };
    let md = Mahalanobis::fit_with(&x, &labels, 2, opts)?;
    // Σ = diag(1/8, 1/8): squared distance = 8·‖x − μ‖²
    let s = md.score(&t2(vec![0.0, 0.0, -1.0, 0.0, 1.0, 1.0], 3, 2))?;
    assert!((s[0] - 8.0).abs() < 1e-12 && s[1].abs() < 1e-12 && (s[2] - 8.0).abs() < 1e-12);
    assert_eq!(md.means(), &[-1.0, 0.0, 1.0, 0.0]);
    // L2 normalisation makes the score scale invariant per row
    let md = Mahalanobis::fit(&x, &labels, 2)?;
    let a = md.score(&t2(vec![0.3, 0.2], 1, 2))?;
    let b = md.score(&t2(vec![3.0, 2.0], 1, 2))?;
    assert!((a[0] - b[0]).abs() <= 1e-12 * a[0].abs().max(1.0));
    Ok(())
}

// ------------------------------------------------------------------ rejection curves, seeds

#[test]
fn accuracy_rejection_known_values() -> R {
    let correct = [false, true, true, true, false, true];
    let oracle = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    let arc = accuracy_rejection_curve(&oracle, &correct)?;
    assert_eq!(arc.len(), 6);
    assert_eq!(arc[0], (0.0, 4.0 / 6.0));
    assert_eq!(arc[2], (2.0 / 6.0, 1.0));
    assert!((prediction_rejection_ratio(&oracle, &correct)? - 1.0).abs() < 1e-15);
    let anti: Vec<f64> = oracle.iter().map(|v| 1.0 - v).collect();
    assert!(prediction_rejection_ratio(&anti, &correct)? < 0.0);
    // a constant score is random rejection in expectation: flat at the base accuracy
    let flat = accuracy_rejection_curve(&[0.5; 6], &correct)?;
    assert!(flat.iter().all(|&(_, a)| (a - 4.0 / 6.0).abs() < 1e-15));
    assert!((auarc(&[0.5; 6], &correct)? - 4.0 / 6.0).abs() < 1e-15);
    assert!(prediction_rejection_ratio(&[0.5; 6], &correct)?.abs() < 1e-15);
    // the curve does not depend on the input order
    let s = vec_f64("auc/int_ties/scores");
    let c = vec_bool("auc/int_ties/labels");
    let (rs, rc): (Vec<f64>, Vec<bool>) = s.iter().copied().zip(c.iter().copied()).rev().unzip();
    let a = accuracy_rejection_curve(&s, &c)?;
    let b = accuracy_rejection_curve(&rs, &rc)?;
    assert!(a
        .iter()
        .zip(&b)
        .all(|(x, y)| (x.1 - y.1).abs() < 1e-12 && x.0 == y.0));
    Ok(())
}

#[test]
fn mean_std_over_seeds() -> R {
    let m = mean_std(&[80.0, 82.0, 84.0, 86.0, 88.0])?;
    assert_eq!(m.mean, 84.0);
    assert!((m.std - 10f64.sqrt()).abs() < 1e-14); // ddof = 1
    assert_eq!(m.n, 5);
    assert_eq!(mean_std(&[3.0])?.std, 0.0);
    assert_eq!(format!("{}", mean_std(&[1.0, 2.0])?), "1.50 ± 0.71");
    Ok(())
}

// ------------------------------------------------------------------ bad input

#[test]
fn bad_input_metrics() {
    is_invalid(roc_auc(&[0.1, 0.2], &[true, true]), "one class only");
    is_invalid(roc_auc(&[0.1, 0.2], &[false, false]), "both classes");
    is_invalid(roc_auc(&[], &[]), "empty");
    is_invalid(roc_auc(&[0.1, f64::NAN], &[true, false]), "score 1 is NaN");
    is_invalid(
        roc_auc(&[0.1, 0.2, 0.3], &[true, false]),
        "3 scores but 2 labels",
    );
    is_invalid(roc_curve(&[0.1], &[true]), "both classes");
    is_invalid(accuracy_rejection_curve(&[], &[]), "empty");
    is_invalid(
        prediction_rejection_ratio(&[0.1, 0.2], &[true, true]),
        "one class",
    );
    is_invalid(mean_std(&[]), "no values");
    is_invalid(mean_std(&[1.0, f64::INFINITY]), "value 1");

    let p = Tensor::new(&[[0.6f64, 0.4], [0.1, 0.9]], &Device::Cpu).unwrap();
    is_invalid(ece(&p, &[0, 2], 10), "label 1 is 2, out of range");
    is_invalid(ece(&p, &[0], 10), "2 rows but 1 labels");
    is_invalid(ece(&p, &[0, 1], 0), "n_bins");
    let logits = Tensor::new(&[[2.0f64, -1.0]], &Device::Cpu).unwrap();
    is_invalid(softmax_response(&logits), "not logits");
    let empty = Tensor::zeros((0, 3), DType::F64, &Device::Cpu).unwrap();
    is_invalid(predictive_entropy(&empty), "empty");
    let nan = Tensor::new(&[[f64::NAN, 1.0]], &Device::Cpu).unwrap();
    is_invalid(softmax_response(&nan), "NaN");
    let one_d = Tensor::new(&[0.5f64, 0.5], &Device::Cpu).unwrap();
    is_invalid(softmax_response(&one_d), "2-D");

    let x = t2((0..20).map(|v| (v as f64).sin() + 2.0).collect(), 10, 2);
    let labels = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1];
    is_invalid(Mahalanobis::fit(&x, &labels, 1), "at least 2 classes");
    is_invalid(
        Mahalanobis::fit(&x, &[0, 1, 0, 1, 0, 1, 0, 1, 0, 3], 2),
        "label 9 is 3",
    );
    is_invalid(
        Mahalanobis::fit(&x, &labels, 3),
        "class 2 has no training examples",
    );
    is_invalid(
        Mahalanobis::fit(&x, &labels[..9], 2),
        "10 rows but 9 labels",
    );
    is_invalid(RelativeMahalanobis::fit(&empty, &[], 2), "empty");
    let md = Mahalanobis::fit(&x, &labels, 2).unwrap();
    is_invalid(md.score(&t2(vec![1.0, 2.0, 3.0], 1, 3)), "3 columns but");
    is_invalid(md.score(&t2(vec![0.0, 0.0], 1, 2)), "all zeros");
    is_invalid(md.score(&t2(vec![f64::NAN, 1.0], 1, 2)), "NaN");
    let opts = MahalanobisOptions {
        l2_normalise: false,
        ridge: 0.0,
    };
    let collinear = t2((0..20).map(|v| (v / 2) as f64).collect(), 10, 2);
    is_invalid(
        Mahalanobis::fit_with(&collinear, &labels, 2, opts),
        "not positive definite",
    );
    let negative = MahalanobisOptions {
        ridge: -1.0,
        ..opts
    };
    is_invalid(Mahalanobis::fit_with(&x, &labels, 2, negative), "ridge");
}

// ------------------------------------------------------------------ AdUE

#[test]
fn one_cycle_matches_torch() {
    for total in [50usize, 137] {
        let lr = vec_f64(&format!("onecycle/{total}/lr"));
        let b1 = vec_f64(&format!("onecycle/{total}/beta1"));
        let s = OneCycle::new(1e-3, total);
        let got_lr: Vec<f64> = (0..total).map(|k| s.lr(k)).collect();
        let got_b1: Vec<f64> = (0..total).map(|k| s.beta1(k)).collect();
        assert!(max_rel(&got_lr, &lr) <= 1e-12, "lr, T = {total}");
        assert!(max_abs(&got_b1, &b1) <= 1e-14, "beta1, T = {total}");
    }
}

struct AdueFixture {
    head: LinearHead,
    z_train: Tensor,
    y_train: Vec<usize>,
    z_val: Tensor,
    y_val: Vec<usize>,
}

fn adue_fixture() -> AdueFixture {
    AdueFixture {
        head: LinearHead::new(get("adue/w"), get("adue/b")).unwrap(),
        z_train: get("adue/z_train").clone(),
        y_train: vec_usize("adue/y_train"),
        z_val: get("adue/z_val").clone(),
        y_val: vec_usize("adue/y_val"),
    }
}

#[test]
fn adue_full_batch_fit_matches_torch() -> R {
    let f = adue_fixture();
    let h = vec_f64("adue/hparams");
    let epochs = h[4] as usize;
    let cfg = AdueConfig::default()
        .lr(h[0])
        .alpha(h[1])
        .beta(h[2])
        .lambda(h[3])
        .epochs(epochs)
        .patience(epochs)
        .batch_size(f.y_train.len());
    let train = Split::new(&f.z_train, &f.y_train);
    let val = Split::new(&f.z_val, &f.y_val);
    let adue = cfg.fit(&f.head, train, val)?;
    assert_eq!(adue.log().len(), epochs);
    let loss: Vec<f64> = adue.log().iter().map(|e| e.loss).collect();
    let auc: Vec<f64> = adue.log().iter().map(|e| e.val_auc).collect();
    let (e_loss, e_auc) = (
        max_rel(&loss, &vec_f64("adue/loss")),
        max_abs(&auc, &vec_f64("adue/val_auc")),
    );
    // the initial head's U against torch's
    let u0 = AdueHead::from_classifier(&f.head, h[3])?.uncertainty(&f.z_val)?;
    let e_u0 = max_abs(&u0, &vec_f64("adue/u_init_val"));
    // the restored weights are those of the best epoch (first maximum of val AUC in torch)
    let torch_auc = vec_f64("adue/val_auc");
    let torch_best = torch_auc
        .iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |b, (i, &a)| if a > b.1 { (i, a) } else { b },
        )
        .0;
    let c = f.head.n_classes();
    let d = f.head.dim();
    let w_all = vec_f64("adue/weights");
    let w_torch = &w_all[torch_best * c * d..(torch_best + 1) * c * d];
    let w: Vec<f64> = adue
        .weight()
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    let e_w = max_abs(&w, w_torch);
    eprintln!(
        "AdUE vs torch: loss rel {e_loss:e}, val AUC abs {e_auc:e}, U_init abs {e_u0:e}, \
         best-epoch weights abs {e_w:e} (best epoch {} vs torch {})",
        adue.best_epoch(),
        torch_best + 1
    );
    assert!(e_loss <= 1e-5, "loss");
    assert!(e_auc <= 1e-3, "val AUC");
    assert!(e_u0 <= 1e-6, "U at init");
    assert_eq!(adue.best_epoch(), torch_best + 1);
    assert!(e_w <= 1e-4, "weights");
    assert!((adue.init_val_auc() - scalar("adue/sr_val_auc")).abs() < 0.01);
    Ok(())
}

/// Average ranks (1-based, ties share their mean rank).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        for &k in &idx[i..=j] {
            r[k] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    r
}

fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b)).unwrap()
}

/// 3 classes in d = 8 with asymmetric label noise: examples predicted as class 0 are wrong
/// 40 % of the time, the others 4 %. Errors are a function of z (through the prediction),
/// but the softmax response, symmetric in the classes, cannot see it; a head that lowers
/// class 0's confidence can.
fn synthetic(rng: &mut StdRng, w: &[f32], b: &[f32], n: usize) -> (Tensor, Vec<usize>) {
    let (c, d) = (3, 8);
    let z: Vec<f32> = (0..n * d)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    let mut labels = Vec::with_capacity(n);
    for row in z.chunks_exact(d) {
        let logits: Vec<f32> = (0..c)
            .map(|k| b[k] + (0..d).map(|j| w[k * d + j] * row[j]).sum::<f32>())
            .collect();
        let pred = (0..c)
            .max_by(|&x, &y| logits[x].total_cmp(&logits[y]))
            .unwrap();
        let noise = if pred == 0 { 0.4 } else { 0.04 };
        labels.push(if rng.gen::<f64>() < noise {
            (pred + rng.gen_range(1..c)) % c
        } else {
            pred
        });
    }
    (Tensor::from_vec(z, (n, d), &Device::Cpu).unwrap(), labels)
}

struct Synthetic {
    head: LinearHead,
    w_var: Var,
    b_var: Var,
    train: (Tensor, Vec<usize>),
    val: (Tensor, Vec<usize>),
    test: (Tensor, Vec<usize>),
}

fn synthetic_setup() -> Synthetic {
    let mut rng = StdRng::seed_from_u64(5);
    let w: Vec<f32> = (0..24)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    let b = vec![0.1f32, -0.2, 0.05];
    // The classifier's parameters as Vars, as they would be in a trained candle model.
    let w_var = Var::from_vec(w.clone(), (3, 8), &Device::Cpu).unwrap();
    let b_var = Var::from_vec(b.clone(), 3, &Device::Cpu).unwrap();
    let head = LinearHead::new(w_var.as_tensor(), b_var.as_tensor()).unwrap();
    Synthetic {
        head,
        train: synthetic(&mut rng, &w, &b, 1500),
        val: synthetic(&mut rng, &w, &b, 800),
        test: synthetic(&mut rng, &w, &b, 800),
        w_var,
        b_var,
    }
}

#[test]
fn adue_at_initialisation_ranks_like_softmax_response() -> R {
    let s = synthetic_setup();
    let head = AdueHead::from_classifier(&s.head, 100.0)?;
    let (z, _) = &s.val;
    let u = head.uncertainty(z)?;
    let sr = softmax_response(&s.head.probs(z)?)?;
    let rho = spearman(&u, &sr);
    eprintln!("AdUE at init vs SR: Spearman {rho:.6}");
    assert!(rho >= 0.99, "Spearman {rho}");
    assert!(u.iter().all(|&v| (1e-8..=1.0).contains(&v)));
    // C = 2: SmoothMax is a monotone function of max p, so the order is the same
    let two = LinearHead::new(
        &Tensor::new(&[[1.5f32, -0.5], [-1.0, 2.0]], &Device::Cpu)?,
        &Tensor::new(&[0.2f32, -0.1], &Device::Cpu)?,
    )?;
    let z2 = z.narrow(1, 0, 2)?;
    let u2 = AdueHead::from_classifier(&two, 100.0)?.uncertainty(&z2)?;
    let sr2 = softmax_response(&two.probs(&z2)?)?;
    assert!(spearman(&u2, &sr2) > 0.9999);
    Ok(())
}

#[test]
fn adue_fit_beats_softmax_response_and_leaves_classifier_alone() -> R {
    let s = synthetic_setup();
    let w_before = s.w_var.as_tensor().to_vec2::<f32>()?;
    let b_before = s.b_var.as_tensor().to_vec1::<f32>()?;
    let preds_before = s.head.predict(&s.test.0)?;
    let cfg = AdueConfig::default()
        .lr(1e-2)
        .alpha(0.01)
        .beta(0.01)
        .epochs(30)
        .seed(1);
    let adue = cfg.fit(
        &s.head,
        Split::new(&s.train.0, &s.train.1),
        Split::new(&s.val.0, &s.val.1),
    )?;
    // SR on validation and test
    let val_err = error_indicator(&s.head.probs(&s.val.0)?, &s.val.1)?;
    let sr_val = roc_auc(&softmax_response(&s.head.probs(&s.val.0)?)?, &val_err)?;
    let test_err = error_indicator(&s.head.probs(&s.test.0)?, &s.test.1)?;
    let sr_test = roc_auc(&softmax_response(&s.head.probs(&s.test.0)?)?, &test_err)?;
    let adue_val = roc_auc(&adue.uncertainty(&s.val.0)?, &val_err)?;
    let adue_test = roc_auc(&adue.uncertainty(&s.test.0)?, &test_err)?;
    eprintln!(
        "SR val {:.2} test {:.2}; AdUE val {:.2} test {:.2} (best epoch {} of {}, init val {:.2})",
        100.0 * sr_val,
        100.0 * sr_test,
        100.0 * adue_val,
        100.0 * adue_test,
        adue.best_epoch(),
        adue.log().len(),
        100.0 * adue.init_val_auc()
    );
    assert!(
        adue_val > sr_val + 0.03,
        "validation AUC {adue_val} vs SR {sr_val}"
    );
    assert!(
        adue_test > sr_test + 0.02,
        "test AUC {adue_test} vs SR {sr_test}"
    );
    // the best epoch's weights were restored: their val AUC is the logged best
    assert!((adue_val - adue.best_val_auc()).abs() < 1e-12);
    let best_logged = adue.log().iter().map(|e| e.val_auc).fold(0.0, f64::max);
    assert_eq!(adue.best_val_auc(), best_logged);
    assert_eq!(adue.log()[adue.best_epoch() - 1].val_auc, best_logged);
    // early stopping: either ran all epochs or stopped `patience` epochs after the best
    let run = adue.log().len();
    assert!(run == 30 || run == adue.best_epoch() + cfg.patience);
    // the frozen classifier is untouched: same parameters, same predictions, same accuracy
    assert_eq!(s.w_var.as_tensor().to_vec2::<f32>()?, w_before);
    assert_eq!(s.b_var.as_tensor().to_vec1::<f32>()?, b_before);
    assert_eq!(s.head.predict(&s.test.0)?, preds_before);
    assert_eq!(s.head.weight().to_vec2::<f32>()?, w_before);
    // ... while the AdUE head did move
    assert_ne!(adue.weight().to_vec2::<f32>()?, w_before);
    // seeded: the same config gives the same head
    let again = cfg.fit(
        &s.head,
        Split::new(&s.train.0, &s.train.1),
        Split::new(&s.val.0, &s.val.1),
    )?;
    assert_eq!(again.log(), adue.log());
    Ok(())
}

#[test]
fn grid_search_picks_by_validation() -> R {
    let s = synthetic_setup();
    let grid = AdueGrid::new(vec![1e-2, 1e-5], vec![0.01], vec![0.01, 1.0]);
    let base = AdueConfig::default().epochs(8).patience(3);
    let res = grid_search(
        &grid,
        &base,
        &s.head,
        Split::new(&s.train.0, &s.train.1),
        Split::new(&s.val.0, &s.val.1),
    )?;
    assert_eq!(res.points.len(), 4);
    let best = res
        .points
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |b, (i, p)| {
            if p.val_auc > b.1 {
                (i, p.val_auc)
            } else {
                b
            }
        });
    assert_eq!(res.best_index, best.0);
    assert_eq!(res.best.best_val_auc(), best.1);
    let cfg = res.best.config().unwrap();
    let p = res.points[res.best_index];
    assert_eq!((cfg.lr, cfg.alpha, cfg.beta), (p.lr, p.alpha, p.beta));
    // the grid order is lr outermost, beta innermost
    let order: Vec<(f64, f64)> = res.points.iter().map(|p| (p.lr, p.beta)).collect();
    assert_eq!(
        order,
        vec![(1e-2, 0.01), (1e-2, 1.0), (1e-5, 0.01), (1e-5, 1.0)]
    );
    // the strong lr wins on this data; the tiny one barely moves from SR
    assert_eq!(p.lr, 1e-2);
    assert_eq!(AdueGrid::paper().len(), 27);
    Ok(())
}

#[test]
fn bad_input_adue() -> R {
    let f = adue_fixture();
    let ok_train = Split::new(&f.z_train, &f.y_train);
    let ok_val = Split::new(&f.z_val, &f.y_val);
    let cfg = AdueConfig::default().epochs(1);
    // empty split
    let empty = Tensor::zeros((0, 6), DType::F32, &Device::Cpu)?;
    is_invalid(
        cfg.fit(&f.head, Split::new(&empty, &[]), ok_val),
        "empty split",
    );
    // label ≥ C
    let mut bad = f.y_val.clone();
    bad[4] = 3;
    is_invalid(
        cfg.fit(&f.head, ok_train, Split::new(&f.z_val, &bad)),
        "label 4 is 3, out of range",
    );
    // length mismatch
    is_invalid(
        cfg.fit(&f.head, Split::new(&f.z_train, &f.y_train[1..]), ok_val),
        "rows but there are",
    );
    // feature dimension mismatch
    let narrow = f.z_val.narrow(1, 0, 5)?;
    is_invalid(
        cfg.fit(&f.head, ok_train, Split::new(&narrow, &f.y_val)),
        "5 columns but the classifier head expects d = 6",
    );
    // NaN feature
    let mut zv = f.z_val.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    zv[2][1] = f32::NAN;
    let nan = Tensor::new(zv, &Device::Cpu)?;
    is_invalid(
        cfg.fit(&f.head, ok_train, Split::new(&nan, &f.y_val)),
        "NaN",
    );
    // one class only in the error indicator: labels = the classifier's own predictions
    let preds = f.head.predict(&f.z_val)?;
    is_invalid(
        cfg.fit(&f.head, ok_train, Split::new(&f.z_val, &preds)),
        "one class only",
    );
    // bad configuration
    is_invalid(
        AdueConfig::default().lr(0.0).fit(&f.head, ok_train, ok_val),
        "lr",
    );
    is_invalid(
        AdueConfig::default()
            .alpha(-1.0)
            .fit(&f.head, ok_train, ok_val),
        "alpha",
    );
    is_invalid(
        AdueConfig::default()
            .batch_size(0)
            .fit(&f.head, ok_train, ok_val),
        "batch_size",
    );
    is_invalid(
        grid_search(
            &AdueGrid::new(vec![], vec![0.1], vec![0.1]),
            &cfg,
            &f.head,
            ok_train,
            ok_val,
        ),
        "grid is empty",
    );
    // classifier head shapes
    let w = Tensor::zeros((3, 6), DType::F32, &Device::Cpu)?;
    is_invalid(
        LinearHead::new(&w, &Tensor::zeros(4, DType::F32, &Device::Cpu)?),
        "bias must have shape (3)",
    );
    is_invalid(
        LinearHead::new(
            &Tensor::zeros((1, 6), DType::F32, &Device::Cpu)?,
            &Tensor::zeros(1, DType::F32, &Device::Cpu)?,
        ),
        "at least 2 classes",
    );
    is_invalid(AdueHead::from_classifier(&f.head, 0.0), "lambda");
    let head = AdueHead::from_classifier(&f.head, 100.0)?;
    is_invalid(head.uncertainty(&narrow), "5 columns");
    Ok(())
}

/// Timing at a realistic size (not run by default):
/// `cargo test --test uncertainty timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_realistic_sizes() -> R {
    let mut rng = StdRng::seed_from_u64(9);
    let (n, d, c) = (8000usize, 768usize, 2usize);
    let z: Vec<f32> = (0..n * d)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    let z = Tensor::from_vec(z, (n, d), &Device::Cpu)?;
    let w: Vec<f32> = (0..c * d)
        .map(|_| rng.sample::<f32, _>(StandardNormal) * 0.05)
        .collect();
    let head = LinearHead::new(
        &Tensor::from_vec(w, (c, d), &Device::Cpu)?,
        &Tensor::zeros(c, DType::F32, &Device::Cpu)?,
    )?;
    let preds = head.predict(&z)?;
    let labels: Vec<usize> = preds
        .iter()
        .map(|&p| if rng.gen::<f64>() < 0.1 { 1 - p } else { p })
        .collect();
    let t = std::time::Instant::now();
    let md = Mahalanobis::fit(&z, &labels, c)?;
    let fit_s = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    md.score(&z)?;
    eprintln!(
        "Mahalanobis n={n} d={d}: fit {fit_s:.2} s, score {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let (tr, va) = (z.narrow(0, 0, 6000)?, z.narrow(0, 6000, 2000)?);
    let t = std::time::Instant::now();
    let adue = AdueConfig::default().epochs(10).patience(10).fit(
        &head,
        Split::new(&tr, &labels[..6000]),
        Split::new(&va, &labels[6000..]),
    )?;
    eprintln!(
        "AdUE n_train=6000 d={d}: {} epochs in {:.2} s",
        adue.log().len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
