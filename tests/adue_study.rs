//! The end-to-end AdUE study (src/studies/adue.rs) on a tiny CPU-sized run of the packaged
//! all-MiniLM-L6-v2: 2 classes (CoNLL-2010 certain/uncertain), 48 / 24 / 24 examples, 32 tokens,
//! 2 LoRA epochs, one seed, a 1-point AdUE grid.
//!
//! * the table has every method with a finite ROC-AUC × 100 in [0, 100], equal to an
//!   independent ROC computation (`replens::plot::roc_curve`, trapezoids) on the stored scores;
//! * AdUE leaves the classifier's test accuracy exactly as it was;
//! * frames, Display, HTML and both charts render;
//! * stratified capping keeps the label proportions; bad inputs are errors with clear messages.
//!
//! The full-size run is `notebooks/05-adue.ipynb`, executed (with its assert cells) by
//! `scripts/run_notebooks.py` in the test command.

use replens::display::DisplayHtml;
use replens::studies::adue::*;
use replens::train::adue::{AdueConfig, AdueGrid};
use replens::train::lora::Splits;

fn have_data() -> bool {
    let ok = classification_dirs()
        .iter()
        .any(|d| d.join("conll2010_uncertainty_train.jsonl").exists());
    if !ok {
        eprintln!("skipping: data/classification is missing (run scripts/fetch_data.py)");
    }
    ok
}

#[test]
fn tiny_end_to_end_study() {
    if !have_data() {
        return;
    }
    let cfg = AdueStudyConfig::new("conll2010_uncertainty")
        .max_examples(48, 24, 24)
        .max_len(32)
        .epochs(2)
        .seeds(vec![0])
        .grid(AdueGrid::new(vec![4e-4], vec![0.1], vec![0.1]))
        .adue(AdueConfig::default().epochs(20));
    let t = std::time::Instant::now();
    let res = run_adue_study(&cfg).unwrap();
    eprintln!("tiny study: {:.1} s\n{res}", t.elapsed().as_secs_f64());
    assert_eq!(res.n_classes, 2);
    assert_eq!(res.sizes, [48, 24, 24]);
    assert_eq!(res.runs.len(), 1);
    let run = &res.runs[0];
    eprintln!(
        "seed 0: fine-tune {:.1} s, AdUE {:.1} s, total {:.1} s; AdUE data: {}; selected {:?}",
        run.seconds_finetune, run.seconds_adue, run.seconds, run.adue_data, run.adue_selected
    );

    // Every method is in the table with a finite AUC in [0, 100].
    for m in METHODS {
        let auc = res.auc(m).unwrap_or_else(|| panic!("no row for {m}"));
        assert!(
            auc.mean.is_finite() && (0.0..=100.0).contains(&auc.mean),
            "{m}: {auc}"
        );
        assert_eq!(auc.n, 1);
        assert_eq!(auc.std, 0.0);
    }
    // The AUCs equal an independent trapezoidal ROC over the stored scores.
    for (i, m) in METHODS.iter().enumerate() {
        let (fpr, tpr) = replens::plot::roc_curve(&run.scores[i], &run.errors).unwrap();
        let reference = 100.0 * replens::plot::roc_auc(&fpr, &tpr);
        assert!(
            (run.roc_auc[i] - reference).abs() < 1e-9,
            "{m}: {} vs {reference}",
            run.roc_auc[i]
        );
        assert_eq!(run.scores[i].len(), 24);
    }
    // Accuracy is that of the error indicator, and AdUE does not change it.
    let acc = 1.0 - run.errors.iter().filter(|&&e| e).count() as f64 / 24.0;
    assert!((run.accuracy - acc).abs() < 1e-12);
    assert_eq!(run.accuracy_after_adue, run.accuracy);
    assert!((0.0..=1.0).contains(&run.ece));
    // AUARC at rejection 0 is the accuracy, so every method's AUARC lies in [0, 1].
    assert!(run.auarc.iter().all(|a| (0.0..=1.0).contains(a)));
    assert_eq!(run.adue_grid.len(), 1);
    assert_eq!(run.val_accuracies.len(), 2);

    // Frames and displays.
    let df = res.to_frame().unwrap();
    assert_eq!(df.shape(), (5, 9));
    let seeds = res.seeds_frame().unwrap();
    assert_eq!(seeds.height(), 5);
    let table = results_table(std::slice::from_ref(&res)).unwrap();
    assert_eq!(table.shape(), (7, 2));
    assert!(results_table(&[res.clone(), res.clone()]).is_err()); // same column twice
    let text = res.to_string();
    let html = res.html().into_string();
    for m in METHODS {
        assert!(
            text.contains(m) && html.contains(m),
            "{m} missing from the display"
        );
    }
    let roc = res.roc_chart().unwrap();
    assert!(roc.svg().contains("AdUE"));
    let rej = res.rejection_chart().unwrap();
    assert!(rej.svg().contains("oracle"));
}

/// The notebook's settings at toy size: mean pooling, a probe-initialised head (LP-FT),
/// AdUE fitted on validation halves. The probe's accuracy is recorded per seed, and a
/// warm-started classifier already beats chance on held-out data after one short epoch.
#[test]
fn tiny_study_with_warm_start_and_mean_pooling() {
    if !have_data() {
        return;
    }
    let cfg = AdueStudyConfig::new("spam_assassin")
        .max_examples(48, 32, 32)
        .max_len(24)
        .pooling(replens::train::lora::Pooling::Mean)
        .warm_start(1.0)
        .epochs(1)
        .lr(2e-3)
        .seeds(vec![3])
        .head_data(HeadData::ValidationHalves)
        .grid(AdueGrid::new(vec![4e-4], vec![0.1], vec![0.1]))
        .adue(AdueConfig::default().epochs(10));
    let res = run_adue_study(&cfg).unwrap();
    let run = &res.runs[0];
    eprintln!(
        "{res}
probe train accuracy {:?}",
        run.probe_train_accuracy
    );
    let probe = run
        .probe_train_accuracy
        .expect("warm start records the probe's accuracy");
    assert!((0.5..=1.0).contains(&probe), "{probe}");
    assert!(
        run.adue_data.starts_with("validation halves"),
        "{}",
        run.adue_data
    );
    assert_eq!(run.accuracy_after_adue, run.accuracy);
    // ham is ~70 % of the data: a classifier that learned nothing predicts ham (≤ 0.72 here)
    assert!(run.accuracy > 0.75, "accuracy {}", run.accuracy);

    let e = run_adue_study(&cfg.clone().warm_start(0.0))
        .expect_err("C = 0 is invalid")
        .to_string();
    assert!(e.contains("warm-start probe's C must be positive"), "{e}");
}

#[test]
fn stratified_cap_keeps_proportions() {
    if !have_data() {
        return;
    }
    let full = load_classification("conll2010_uncertainty", None, 0).unwrap();
    let capped = load_classification("conll2010_uncertainty", Some(100), 0).unwrap();
    let again = load_classification("conll2010_uncertainty", Some(100), 0).unwrap();
    assert_eq!(capped.train, again.train, "same seed, same subset");
    for (all, cap) in [
        (&full.train, &capped.train),
        (&full.validation, &capped.validation),
        (&full.test, &capped.test),
    ] {
        assert_eq!(cap.len(), 100.min(all.len()));
        let frac = |s: &[(String, usize)]| {
            s.iter().filter(|(_, y)| *y == 1).count() as f64 / s.len() as f64
        };
        assert!((frac(cap) - frac(all)).abs() <= 0.01 + 1e-12);
        // Kept examples are a subsequence of the file, in order.
        let mut it = all.iter();
        assert!(cap.iter().all(|x| it.any(|y| y == x)));
    }
}

#[test]
fn bad_inputs_are_errors() {
    let msg = |r: replens::Result<AdueStudyResult>| r.expect_err("expected an error").to_string();

    let e = msg(run_adue_study(&AdueStudyConfig::new("no_such_dataset")));
    assert!(
        e.contains("no_such_dataset_train.jsonl") && e.contains("tried"),
        "{e}"
    );

    let e = msg(run_adue_study(
        &AdueStudyConfig::new("conll2010_uncertainty").max_per_split(0),
    ));
    assert!(e.contains("0"), "{e}");
    assert!(load_classification("conll2010_uncertainty", Some(0), 0).is_err());

    let one_class: Vec<(String, usize)> = (0..8).map(|i| (format!("text {i}"), 0)).collect();
    let splits = Splits::new(one_class.clone(), one_class.clone(), one_class);
    let e = msg(run_adue_study(&AdueStudyConfig::from_splits(
        "mono", splits,
    )));
    assert!(e.contains("one class"), "{e}");

    let ok: Vec<(String, usize)> = (0..8).map(|i| (format!("text {i}"), i % 2)).collect();
    let train_one: Vec<(String, usize)> = (0..8).map(|i| (format!("t {i}"), 1)).collect();
    let splits = Splits::new(train_one, ok.clone(), ok.clone());
    let e = msg(run_adue_study(&AdueStudyConfig::from_splits("x", splits)));
    assert!(e.contains("train split has only one class"), "{e}");

    let splits = Splits::new(ok.clone(), Vec::new(), ok.clone());
    let e = msg(run_adue_study(&AdueStudyConfig::from_splits("x", splits)));
    assert!(e.contains("validation split is empty"), "{e}");

    let splits = Splits::new(ok.clone(), ok.clone(), ok.clone());
    let e = msg(run_adue_study(
        &AdueStudyConfig::from_splits("x", splits.clone()).seeds(vec![]),
    ));
    assert!(e.contains("seeds"), "{e}");
    let e = msg(run_adue_study(
        &AdueStudyConfig::from_splits("x", splits).grid(AdueGrid::new(
            vec![],
            vec![0.1],
            vec![0.1],
        )),
    ));
    assert!(e.contains("grid"), "{e}");

    assert!(results_table(&[]).is_err());
}
