//! LoRA sequence classification on the packaged all-MiniLM-L6-v2 (src/train/lora.rs).
//!
//! * A fresh adapter (`B = 0`) leaves every hidden state bit-identical to the plain encoder
//!   ([`Model`]'s forward pass), and the logits bit-identical to the same head on the base model.
//! * A PEFT-named adapter drawn in PyTorch (`scripts/reference/lora_reference.py`, rank 1 on
//!   q/k/v, float64 HF `BertModel` with the LoRA term added by hand) gives the reference logits
//!   and CLS features; merged weights give the reference merged logits.
//! * Merged == unmerged, save → reload is exact, a short training run on BBC News learns, only
//!   LoRA and head variables move, bad input gives clear errors.
//!
//! Timings (`cargo test --test lora -- --ignored --nocapture timing`) are not part of the run.

use std::path::{Path, PathBuf};

use replens::candle_core::{DType, Device, Tensor, D};
use replens::hooks::{HookPoint, HookSpec};
use replens::model::bert::BertLinear;
use replens::model::{pad_batch, Model};
use replens::train::lora::*;

fn minilm_dir() -> PathBuf {
    let dir = replens::model::source::models_dir().join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "the packaged all-MiniLM-L6-v2 is missing at {}: run scripts/setup",
        dir.display()
    );
    dir
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// Give every `B` seeded random values N(0, std²) so that the adapter changes the model.
fn randomize_b(clf: &SequenceClassifier, std: f32) {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let normal = Normal::new(0f32, std).unwrap();
    let adapters = clf.adapters().expect("unmerged");
    for (layer, which) in adapters.targets() {
        let (_, b) = adapters.matrices(layer, which).unwrap();
        let v: Vec<f32> = (0..b.elem_count())
            .map(|_| normal.sample(&mut rng))
            .collect();
        b.set(&Tensor::from_vec(v, b.dims(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

const TEXTS: [&str; 4] = [
    "Hello world.",
    "The cat sat on the mat.",
    "Layers change representations!",
    "A quick brown fox jumps over the lazy dog while the markets close higher.",
];

#[test]
fn fresh_adapter_is_bit_identical_to_the_base_model() {
    let dir = minilm_dir();
    let model = Model::load(dir.to_str().unwrap()).unwrap();
    let clf = SequenceClassifier::from_dir(&dir, ClassifierConfig::new(3)).unwrap();
    let adapters = clf.adapters().unwrap();
    assert_eq!(adapters.targets().len(), 6 * 3);
    // A is drawn (non-zero), B is zero: the test is about the zero product, not a zero A.
    let (a, b) = adapters.matrices(0, BertLinear::Query).unwrap();
    assert!(
        a.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 1.0
    );
    assert_eq!(
        b.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );

    // Every hook of every layer, padded batch, through the adapter vs through Model.
    let ids = model.tokenize(&TEXTS).unwrap();
    let (input, mask) = pad_batch(&ids, &Device::Cpu).unwrap();
    let hooks = HookSpec::all();
    let plain = model.forward(&input, &mask, &hooks).unwrap();
    let (cache, last) = clf
        .encoder()
        .encode(&input, &mask, &hooks.clone(), Some(adapters), false)
        .unwrap();
    let mut n_points = 0;
    for (point, t) in plain.cache.iter() {
        let mine = cache.get(point).unwrap();
        assert_eq!(bits(t), bits(mine), "{point} differs");
        n_points += 1;
    }
    assert!(n_points >= 6 * 4, "{n_points} hook points compared");
    let last_plain = plain.cache.get(HookPoint::ResidPost(5)).unwrap();
    assert_eq!(bits(last_plain), bits(&last));

    // Logits and features: with the adapter vs the same head on the adapter-free encoder.
    let out = clf.outputs(&TEXTS).unwrap();
    let base = clf.base_outputs(&TEXTS).unwrap();
    assert_eq!(bits(&out.logits), bits(&base.logits));
    assert_eq!(bits(&out.features), bits(&base.features));
    assert_eq!(out.features.dims(), [4, 384]);
    assert_eq!(out.logits.dims(), [4, 3]);
    // CLS pooling is row 0 of the last hidden state.
    for i in 0..ids.len() {
        let cls = last_plain.get(i).unwrap().get(0).unwrap();
        assert_eq!(bits(&cls), bits(&out.features.get(i).unwrap()));
    }
    // The head: logits = z Wᵀ + b (f32 recomputation agrees to rounding).
    let (w, hb) = clf.head_weights().unwrap();
    assert_eq!(w.dims(), [3, 384]);
    assert_eq!(hb.dims(), [3]);
    let again = out
        .features
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(&hb)
        .unwrap();
    assert!(max_abs_diff(&again, &out.logits) < 1e-5);

    // Mean pooling: masked mean of the base model's last states.
    let clf_mean =
        SequenceClassifier::from_dir(&dir, ClassifierConfig::new(2).pooling(Pooling::Mean))
            .unwrap();
    let feats = clf_mean.features(&TEXTS).unwrap();
    for (i, doc) in ids.iter().enumerate() {
        let rows = last_plain.get(i).unwrap().narrow(0, 0, doc.len()).unwrap();
        let mean = rows.mean(0).unwrap();
        assert!(max_abs_diff(&mean, &feats.get(i).unwrap()) < 1e-6);
    }
}

#[test]
fn peft_named_adapter_matches_torch_reference() {
    let dir = minilm_dir();
    let sentences: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("sentences.json")).unwrap())
            .unwrap();
    let expected = replens::candle_core::safetensors::load(
        fixtures().join("expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let clf = SequenceClassifier::load_adapter(
        fixtures().join("peft_rank1"),
        Some(dir.to_str().unwrap()),
    )
    .unwrap();
    assert_eq!(clf.config().lora.rank, 1);
    assert_eq!(clf.config().lora.scaling(), 4.0);
    let out = clf.outputs(&sentences).unwrap();
    let base = clf.base_outputs(&sentences).unwrap();
    let merged = clf.merge().unwrap().outputs(&sentences).unwrap();
    let d_logits = max_abs_diff(&out.logits, &expected["logits"]);
    let d_feats = max_abs_diff(&out.features, &expected["features"]);
    let d_base = max_abs_diff(&base.logits, &expected["base_logits"]);
    let d_merged = max_abs_diff(&merged.logits, &expected["merged_logits"]);
    println!("vs torch f64: logits {d_logits:.2e}, features {d_feats:.2e}, base {d_base:.2e}, merged {d_merged:.2e}");
    // f64 arithmetic on both sides; the outputs are rounded once to f32 (|logits| ≲ 10).
    for d in [d_logits, d_feats, d_base, d_merged] {
        assert!(d < 1e-5, "{d}");
    }
    // The adapter matters: the fixture's LoRA moves the logits by ~0.9.
    assert!(max_abs_diff(&expected["logits"], &expected["base_logits"]) > 0.1);
}

#[test]
fn merged_equals_unmerged_and_save_reload_is_exact() {
    let dir = minilm_dir();
    let tmp = tempfile::tempdir().unwrap();
    for precision in [Precision::F64, Precision::F32] {
        let lora = LoraConfig {
            target_modules: vec!["query".into(), "value".into(), "dense".into()],
            seed: 7,
            ..Default::default()
        };
        let cfg = ClassifierConfig::new(2).precision(precision).lora(lora);
        let clf = SequenceClassifier::from_dir(&dir, cfg).unwrap();
        randomize_b(&clf, 0.02);
        let out = clf.outputs(&TEXTS).unwrap();
        let base = clf.base_outputs(&TEXTS).unwrap();
        let moved = max_abs_diff(&out.features, &base.features);
        assert!(
            moved > 1e-2,
            "{precision:?}: the adapter should change features ({moved})"
        );

        let merged = clf.merge().unwrap();
        assert!(merged.adapters().is_none());
        let m = merged.outputs(&TEXTS).unwrap();
        let dl = max_abs_diff(&m.logits, &out.logits);
        let df = max_abs_diff(&m.features, &out.features);
        println!("{precision:?}: merged vs adapter: logits {dl:.2e}, features {df:.2e}");
        // f32: W + ΔW is rounded to f32 once; features reach |z| ≈ 10 and keep ~1e-6 relative.
        let tol = match precision {
            Precision::F64 => 1e-5,
            Precision::F32 => 5e-5,
        };
        assert!(dl <= 1e-5, "{precision:?} logits {dl}");
        assert!(df <= tol, "{precision:?} features {df}");
        // The encoder of the merged model has W + (α/r)·B·A in its weights; the original is untouched.
        let (w0, _) = clf.encoder().linear_weights(0, BertLinear::Query).unwrap();
        let (w1, _) = merged
            .encoder()
            .linear_weights(0, BertLinear::Query)
            .unwrap();
        let (a, b) = clf
            .adapters()
            .unwrap()
            .matrices(0, BertLinear::Query)
            .unwrap();
        let delta = (b.as_tensor().matmul(a.as_tensor()).unwrap() * 2.0).unwrap();
        let got = (w1 - &w0).unwrap();
        assert!(max_abs_diff(&got, &delta) < 1e-6);
        assert!(merged.save_adapter(tmp.path()).is_err());

        // Save → reload (base given explicitly: the saved path is the absolute model dir anyway).
        let sub = tmp.path().join(format!("{precision:?}"));
        clf.save_adapter(&sub).unwrap();
        let cfg_json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(sub.join(ADAPTER_CONFIG)).unwrap())
                .unwrap();
        assert_eq!(cfg_json["peft_type"], "LORA");
        assert_eq!(cfg_json["r"], 8);
        assert_eq!(cfg_json["lora_alpha"], 16.0);
        assert_eq!(cfg_json["target_modules"][2], "dense");
        let saved =
            replens::candle_core::safetensors::load(sub.join(ADAPTER_WEIGHTS), &Device::Cpu)
                .unwrap();
        // 6 layers × (query, value, attention.output.dense, intermediate.dense, output.dense) × 2 + head.
        assert_eq!(saved.len(), 6 * 5 * 2 + 2);
        let a_name = "base_model.model.encoder.layer.3.attention.self.value.lora_A.weight";
        assert_eq!(saved[a_name].dims(), [8, 384]);
        let b_name = "base_model.model.encoder.layer.3.intermediate.dense.lora_B.weight";
        assert_eq!(saved[b_name].dims(), [1536, 8]);
        assert_eq!(saved["base_model.model.classifier.weight"].dims(), [2, 384]);
        let back = SequenceClassifier::load_adapter(&sub, None).unwrap();
        assert_eq!(back.config(), clf.config());
        let r = back.outputs(&TEXTS).unwrap();
        assert_eq!(bits(&r.logits), bits(&out.logits));
        assert_eq!(bits(&r.features), bits(&out.features));
    }

    // A damaged file is named.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(
        fixtures().join("peft_rank1/adapter_config.json"),
        bad.join(ADAPTER_CONFIG),
    )
    .unwrap();
    let mut t = replens::candle_core::safetensors::load(
        fixtures().join("peft_rank1/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    t.remove("base_model.model.encoder.layer.2.attention.self.key.lora_B.weight");
    replens::candle_core::safetensors::save(&t, bad.join(ADAPTER_WEIGHTS)).unwrap();
    let err = SequenceClassifier::load_adapter(&bad, Some(dir.to_str().unwrap()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(
            "missing tensor base_model.model.encoder.layer.2.attention.self.key.lora_B.weight"
        ),
        "{err}"
    );
}

fn bbc_two_class(split: &str, n_per_class: usize) -> Vec<(String, usize)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("data/classification/bbc_news_{split}.jsonl"));
    let all = read_labelled_jsonl(path, "text", "label").unwrap();
    // business (0) vs sport (3) → 0 / 1, alternating so every batch has both.
    let business = all.iter().filter(|(_, y)| *y == 0).take(n_per_class);
    let sport = all.iter().filter(|(_, y)| *y == 3).take(n_per_class);
    business
        .zip(sport)
        .flat_map(|(b, s)| [(b.0.clone(), 0), (s.0.clone(), 1)])
        .collect()
}

#[test]
fn short_training_run_learns_and_moves_only_adapter_and_head() {
    let splits = Splits::new(
        bbc_two_class("train", 24),
        bbc_two_class("validation", 12),
        bbc_two_class("test", 12),
    );
    let cfg = ClassifierConfig::new(2)
        .max_len(32)
        .precision(Precision::F32);
    let mut clf = SequenceClassifier::from_dir(minilm_dir(), cfg).unwrap();
    // 6 layers × 3 × (8·384 + 384·8) + 2·384 + 2
    assert_eq!(clf.n_trainable(), 6 * 3 * 2 * 8 * 384 + 2 * 384 + 2);
    let before_vars: Vec<(String, Vec<u32>)> = {
        let data = clf.trainable().data().lock().unwrap();
        let mut v: Vec<_> = data
            .iter()
            .map(|(k, v)| (k.clone(), bits(v.as_tensor())))
            .collect();
        v.sort();
        v
    };
    let before_weights: Vec<Vec<u32>> = (0..6)
        .flat_map(|l| BertLinear::ALL.map(|w| (l, w)))
        .map(|(l, w)| {
            let (w, b) = clf.encoder().linear_weights(l, w).unwrap();
            [bits(&w), bits(&b)].concat()
        })
        .collect();
    let loss_before = clf.evaluate(&splits.train).unwrap().loss;

    let opts = TrainOptions {
        epochs: 3,
        batch_size: 16,
        lr: 2e-3,
        progress: false,
        ..Default::default()
    };
    let log = clf.train(&splits, &opts).unwrap();
    let loss_after = clf.evaluate(&splits.train).unwrap().loss;
    println!(
        "train loss {loss_before:.4} → {loss_after:.4}; per epoch {:?}; val acc {:?}; test acc {:.3}; {:.2} s/step; {:.1} s",
        log.train_losses(),
        log.val_accuracies(),
        log.test_accuracy,
        log.epochs[0].seconds_per_step,
        log.seconds
    );
    assert_eq!(log.epochs.len(), 3);
    assert_eq!(log.step_losses.len(), 3 * 3);
    assert!(log.step_losses.iter().all(|l| l.is_finite()));
    assert!(
        loss_after < 0.8 * loss_before,
        "training loss did not drop: {loss_before} → {loss_after}"
    );
    let val = *log.val_accuracies().last().unwrap();
    assert!(
        val > 0.75,
        "validation accuracy {val} does not beat chance (0.5) clearly"
    );
    assert!(
        log.test_accuracy > 0.75,
        "test accuracy {}",
        log.test_accuracy
    );

    // Every trainable variable moved (B from zero, A and the head from their init) ...
    let data = clf.trainable().data().lock().unwrap();
    for (name, old) in &before_vars {
        assert_ne!(&bits(data[name].as_tensor()), old, "{name} did not change");
    }
    drop(data);
    // ... and no encoder weight did.
    let after_weights: Vec<Vec<u32>> = (0..6)
        .flat_map(|l| BertLinear::ALL.map(|w| (l, w)))
        .map(|(l, w)| {
            let (w, b) = clf.encoder().linear_weights(l, w).unwrap();
            [bits(&w), bits(&b)].concat()
        })
        .collect();
    assert!(before_weights == after_weights, "base weights changed");
    // And the trained model is no longer the base model.
    let texts: Vec<&str> = splits
        .test
        .iter()
        .take(4)
        .map(|(t, _)| t.as_str())
        .collect();
    let out = clf.outputs(&texts).unwrap();
    let base = clf.base_outputs(&texts).unwrap();
    assert!(max_abs_diff(&out.features, &base.features) > 1e-3);
    // Predictions agree with evaluate's accuracy.
    let eval = clf.evaluate(&splits.test).unwrap();
    let labels: Vec<usize> = splits.test.iter().map(|(_, y)| *y).collect();
    assert_eq!(accuracy(&eval.logits, &labels).unwrap(), log.test_accuracy);
    assert_eq!(eval.logits.argmax(D::Minus1).unwrap().dims(), [24]);
    // The log's validation / test outputs are exactly what `outputs` gives afterwards.
    for (split, kept) in [
        (&splits.validation, &log.validation_outputs),
        (&splits.test, &log.test_outputs),
    ] {
        let kept = kept.as_ref().expect("train() keeps the last outputs");
        let texts: Vec<&str> = split.iter().map(|(t, _)| t.as_str()).collect();
        let again = clf.outputs(&texts).unwrap();
        assert_eq!(bits(&kept.logits), bits(&again.logits));
        assert_eq!(bits(&kept.features), bits(&again.features));
    }
}

/// LP-FT warm start: the head becomes the logistic-regression probe, so the classifier's
/// softmax on the frozen features equals the probe's predicted probabilities (binary: the
/// symmetric two-row head; three classes: the multinomial coefficients).
#[test]
fn warm_started_head_reproduces_the_probe() {
    use replens::train::probe::LogisticRegression;
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/classification/bbc_news_train.jsonl");
    let all = read_labelled_jsonl(path, "text", "label").unwrap();
    for k in [2usize, 3] {
        let train: Vec<(String, usize)> = (0..k)
            .flat_map(|c| all.iter().filter(move |(_, y)| *y == c).take(10))
            .cloned()
            .collect();
        let cfg = ClassifierConfig::new(k)
            .max_len(24)
            .pooling(Pooling::Mean)
            .precision(Precision::F32);
        let mut clf = SequenceClassifier::from_dir(minilm_dir(), cfg).unwrap();
        let acc = clf.warm_start_head(&train, 0.5).unwrap();
        let texts: Vec<&str> = train.iter().map(|(t, _)| t.as_str()).collect();
        let y: Vec<u32> = train.iter().map(|(_, y)| *y as u32).collect();
        let out = clf.base_outputs(&texts).unwrap();
        let probe = LogisticRegression::new()
            .c(0.5)
            .fit(&out.features, &y)
            .unwrap();
        assert_eq!(acc, probe.accuracy(&out.features, &y).unwrap());
        let e = out.logits.exp().unwrap();
        let p_head = e.broadcast_div(&e.sum_keepdim(1).unwrap()).unwrap();
        let p_probe = probe
            .predict_proba(&out.features)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let diff = max_abs_diff(&p_head, &p_probe);
        eprintln!(
            "{k} classes: probe train accuracy {acc:.3}, head vs probe probabilities {diff:.2e}"
        );
        assert!(diff < 1e-5, "{k} classes: {diff}");
        // and the adapted model (B = 0) starts exactly there
        assert_eq!(
            bits(&clf.outputs(&texts).unwrap().logits),
            bits(&out.logits)
        );
    }
}

#[test]
fn warm_start_needs_every_class() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-roberta");
    let mut clf = SequenceClassifier::from_dir(&dir, ClassifierConfig::new(3).max_len(16)).unwrap();
    let ex = |t: &str, y: usize| (t.to_string(), y);
    let e = clf
        .warm_start_head(&[ex("the cat sat", 0), ex("a dog ran", 2)], 1.0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("class 1 has no example in the training split"),
        "{e}"
    );
    let e = clf
        .warm_start_head(&[ex("the cat sat", 0), ex("a dog ran", 3)], 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("label 3"), "{e}");
    let e = clf.warm_start_head(&[], 1.0).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let e = clf
        .warm_start_head(
            &[ex("the cat sat", 0), ex("a dog ran", 1), ex("a bird", 2)],
            0.0,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("C must be a positive number"), "{e}");
}

#[test]
fn bad_input_gives_clear_errors() {
    // The tiny RoBERTa fixture (weights under `roberta.`) is enough for input checks.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-roberta");
    let cfg = ClassifierConfig::new(2).max_len(16);
    let mut clf = SequenceClassifier::from_dir(&dir, cfg.clone()).unwrap();
    let ex = |t: &str, y: usize| (t.to_string(), y);
    let good = vec![ex("the cat sat", 0), ex("a dog ran", 1)];
    let opts = TrainOptions {
        epochs: 1,
        progress: false,
        ..Default::default()
    };
    let err =
        |s: Splits, clf: &mut SequenceClassifier| clf.train(&s, &opts).unwrap_err().to_string();

    let e = err(
        Splits::new(
            vec![ex("the cat sat", 1), ex("a dog ran", 1)],
            good.clone(),
            good.clone(),
        ),
        &mut clf,
    );
    assert!(e.contains("only one class"), "{e}");
    let e = err(
        Splits::new(good.clone(), vec![ex("the cat", 2)], good.clone()),
        &mut clf,
    );
    assert!(
        e.contains("validation split: example 0 has label 2, but n_classes is 2"),
        "{e}"
    );
    let e = err(Splits::new(good.clone(), good.clone(), vec![]), &mut clf);
    assert!(e.contains("test split is empty"), "{e}");
    let e = err(Splits::new(vec![], good.clone(), good.clone()), &mut clf);
    assert!(e.contains("train split is empty"), "{e}");
    let e = err(
        Splits::new(
            vec![ex("the cat", 0), ex("", 1)],
            good.clone(),
            good.clone(),
        ),
        &mut clf,
    );
    assert!(e.contains("train split: text 1 is empty"), "{e}");
    let e = clf
        .train(
            &Splits::new(good.clone(), good.clone(), good.clone()),
            &TrainOptions {
                batch_size: 0,
                ..opts.clone()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch_size"), "{e}");
    let e = clf.evaluate(&[ex("the cat", 5)]).unwrap_err().to_string();
    assert!(e.contains("label 5"), "{e}");
    assert!(accuracy(&clf.logits(&["the cat"]).unwrap(), &[0, 1]).is_err());

    let build = |c: ClassifierConfig| {
        SequenceClassifier::from_dir(&dir, c)
            .err()
            .expect("should fail")
            .to_string()
    };
    let e = build(ClassifierConfig::new(1));
    assert!(e.contains("n_classes must be at least 2"), "{e}");
    let e = build(cfg.clone().max_len(10_000));
    assert!(e.contains("max_len"), "{e}");
    let lora = LoraConfig {
        target_modules: vec!["q_proj".into()],
        ..Default::default()
    };
    let e = build(cfg.clone().lora(lora));
    assert!(e.contains("'q_proj' matches no linear layer"), "{e}");
    let e = SequenceClassifier::load("smollm2-135m", cfg.clone())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("BERT-family"), "{e}");

    // A RoBERTa checkpoint works end to end: fresh adapter == base, a training step runs.
    let out = clf.outputs(&["the cat sat", "hello"]).unwrap();
    let base = clf.base_outputs(&["the cat sat", "hello"]).unwrap();
    assert_eq!(bits(&out.logits), bits(&base.logits));
    let log = clf
        .train(&Splits::new(good.clone(), good.clone(), good), &opts)
        .unwrap();
    assert_eq!(log.step_losses.len(), 1);
}

/// CPU seconds (user + system) this process has used: on a shared machine wall time alone
/// says little.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|x| x.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

/// Seconds per optimiser step (batch 16, 64 tokens) in f64 and f32, and per inference batch.
/// `cargo test --test lora -- --ignored --nocapture timing`
#[test]
#[ignore]
fn timing_train_step_f64_vs_f32() {
    let train = bbc_two_class("train", 40);
    let splits = Splits::new(
        train[..48].to_vec(),
        train[48..64].to_vec(),
        train[64..80].to_vec(),
    );
    for precision in [Precision::F32, Precision::F64] {
        let cfg = ClassifierConfig::new(2).max_len(64).precision(precision);
        let mut clf = SequenceClassifier::from_dir(minilm_dir(), cfg).unwrap();
        let texts: Vec<&str> = splits.train[..16].iter().map(|(t, _)| t.as_str()).collect();
        let ids = clf.tokenize(&texts, "timing").unwrap();
        assert!(ids.iter().all(|i| i.len() == 64));
        let (w0, c0) = (std::time::Instant::now(), cpu_seconds());
        clf.outputs(&texts).unwrap();
        let (inf_wall, inf_cpu) = (w0.elapsed().as_secs_f64(), cpu_seconds() - c0);
        let opts = TrainOptions {
            epochs: 1,
            batch_size: 16,
            progress: false,
            ..Default::default()
        };
        let (w0, c0) = (std::time::Instant::now(), cpu_seconds());
        let log = clf.train(&splits, &opts).unwrap();
        let steps = log.step_losses.len() as f64;
        // The epoch also runs validation (16 texts) and test (16 texts): two inference batches.
        let wall = log.epochs[0].seconds_per_step;
        let cpu = (cpu_seconds() - c0 - 2.0 * inf_cpu) / steps;
        println!(
            "{precision:?}: train step {wall:.2} s wall / {cpu:.2} s CPU; inference batch {inf_wall:.2} s wall / {inf_cpu:.2} s CPU (total {:.1} s)",
            w0.elapsed().as_secs_f64()
        );
    }
}
