//! Toy-model trainer and model stitching (study 2).
//!
//! Fixtures come from `scripts/reference/toy_reference.py`: a tiny GPT-2 with TransformerLens'
//! `solu_ln` MLP whose forward pass torch computed independently (float64, per-head weights),
//! and a small public-domain corpus sample (Moby Dick). No Python is needed here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, IndexOp, Tensor, Var};
use replens::hooks::{HookPoint, HookSpec};
use replens::model::{pad_batch, Model, RunOptions};
use replens::train::stitch::{stitch, stitch_matrix, StitchConfig, StitchInit};
use replens::train::toy::{byte_tokenizer, train_toy, ToyActivation, ToyConfig, ToyModel};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn corpus() -> &'static [String] {
    static TEXTS: OnceLock<Vec<String>> = OnceLock::new();
    TEXTS.get_or_init(|| {
        replens::data::read_texts(fixture("stitch/corpus.jsonl"), "text").expect("corpus fixture")
    })
}

fn small(act: ToyActivation, layers: usize, d: usize) -> ToyConfig {
    ToyConfig::new(layers, act)
        .d_model(d)
        .d_mlp(2 * d)
        .n_ctx(32)
        .progress(false)
}

/// One trained 2-layer SoLU toy shared by several tests (training is the slow part).
fn solu2() -> &'static ToyModel {
    static M: OnceLock<ToyModel> = OnceLock::new();
    M.get_or_init(|| {
        train_toy(&small(ToyActivation::Solu, 2, 32), corpus(), 60, 8, 3e-3).expect("train solu")
    })
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn solu_forward_matches_torch_reference() {
    let model = Model::from_dir(fixture("stitch/solu-tiny")).unwrap();
    let exp: HashMap<String, Tensor> = candle_core::safetensors::load(
        fixture("stitch/solu-tiny-expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let spec = HookSpec::all();
    let mut worst = (0f32, 0f32); // (max abs error, max relative error to the tensor's scale)
    let mut checked = 0;
    for k in 0.. {
        let Some(ids) = exp.get(&format!("doc{k}/ids")) else {
            break;
        };
        let ids: Vec<u32> = ids
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|x| x as u32)
            .collect();
        let (input, mask) = pad_batch(std::slice::from_ref(&ids), &Device::Cpu).unwrap();
        let out = model.forward(&input, &mask, &spec).unwrap();
        let mut check = |name: &str, got: &Tensor| {
            let want = &exp[&format!("doc{k}/{name}")];
            let err = max_abs_diff(got, want);
            let rel = err / max_abs(want).max(1.0);
            assert!(
                rel <= 1e-5,
                "doc{k} {name}: max abs error {err} (relative {rel})"
            );
            worst = (worst.0.max(err), worst.1.max(rel));
            checked += 1;
        };
        for i in 0..2 {
            for point in [HookPoint::MlpOut(i), HookPoint::ResidPost(i)] {
                check(
                    &point.to_string(),
                    &out.cache.get(point).unwrap().i(0).unwrap(),
                );
            }
        }
        let logits = out.logits.unwrap().i(0).unwrap();
        check("logits", &logits);

        // The differentiable path (taken when the input tracks gradients) computes the same.
        let embed = Var::from_tensor(out.cache.get(HookPoint::Embed).unwrap()).unwrap();
        let grad_logits = model
            .forward_from(0, embed.as_tensor(), &mask, &HookSpec::none())
            .unwrap()
            .logits
            .unwrap()
            .i(0)
            .unwrap();
        check("logits", &grad_logits);
    }
    assert_eq!(checked, 3 * 6);
    eprintln!(
        "solu_ln vs torch: max abs error {:.2e}, max error relative to max(1, |ref|) {:.2e}",
        worst.0, worst.1
    );
}

#[test]
fn byte_tokenizer_matches_gpt2_byte_table() {
    // The fixture's tokenizer.json was written from GPT-2's bytes_to_unicode in Python.
    let python = Model::from_dir(fixture("stitch/solu-tiny")).unwrap();
    let ours = byte_tokenizer().unwrap();
    assert_eq!(python.tokenizer().get_vocab(true), ours.get_vocab(true));
    let text = "Whale ho! é—ok\n\t";
    let ids = ours.encode(text, true).unwrap().get_ids().to_vec();
    assert_eq!(ids, text.bytes().map(u32::from).collect::<Vec<_>>());
    assert_eq!(python.tokenize(&[text]).unwrap()[0], ids);
}

#[test]
fn training_lowers_the_held_out_loss() {
    let gelu = train_toy(&small(ToyActivation::Gelu, 1, 32), corpus(), 60, 8, 3e-3).unwrap();
    for toy in [&gelu, solu2()] {
        let (before, after) = (
            toy.log.initial_eval_loss().unwrap(),
            toy.log.final_eval_loss().unwrap(),
        );
        // Untrained: ≈ ln 257 = 5.55 nats per byte. A unigram byte model is ≈ 3.0.
        assert!((before - 257f64.ln()).abs() < 0.1, "{before}");
        assert!(
            after < before - 1.5,
            "{}: {before} -> {after}",
            toy.config.label()
        );
        assert_eq!(toy.log.loss.len(), 60);
        assert!(toy.log.loss.iter().all(|l| l.is_finite()));
        eprintln!(
            "{}: held-out loss {before:.3} -> {after:.3} in {:.1} s (60 steps of 8x32 bytes)",
            toy.config.label(),
            toy.log.seconds
        );
    }
    let frame = gelu.log.to_frame().unwrap();
    assert_eq!(frame.height(), 61);
    // Same seed, same model.
    let again = train_toy(&small(ToyActivation::Gelu, 1, 32), corpus(), 3, 8, 3e-3).unwrap();
    let again2 = train_toy(&small(ToyActivation::Gelu, 1, 32), corpus(), 3, 8, 3e-3).unwrap();
    assert_eq!(again.log.loss, again2.log.loss);
}

#[test]
fn save_then_from_dir_gives_the_same_logits() {
    let toy = solu2();
    let dir = tempfile::tempdir().unwrap();
    toy.save(dir.path()).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["model_type"], "gpt2");
    assert_eq!(config["activation_function"], "solu_ln");
    let loaded = Model::from_dir(dir.path()).unwrap();
    let memory = toy.to_model().unwrap();
    let texts = &corpus()[..3];
    let opts = RunOptions::default()
        .keep_logits(true)
        .truncate(true)
        .progress(false);
    let a = loaded.run_with(texts, &HookSpec::none(), &opts).unwrap();
    let b = memory.run_with(texts, &HookSpec::none(), &opts).unwrap();
    for (x, y) in a.docs.iter().zip(&b.docs) {
        let d = max_abs_diff(x.logits.as_ref().unwrap(), y.logits.as_ref().unwrap());
        assert_eq!(d, 0.0);
    }
    assert!((a.mean_loss().unwrap() - toy.log.final_eval_loss().unwrap()).abs() < 1.0);
}

#[test]
fn identity_stitch_into_itself_costs_nothing() {
    let model = solu2().to_model().unwrap();
    let texts = corpus();
    for layer in [0, 1] {
        let cfg = StitchConfig::default().steps(0).seq_len(32).progress(false);
        let r = stitch(&model, &model, layer, texts, &cfg).unwrap();
        assert_eq!(r.init, StitchInit::Identity);
        assert!(
            r.penalty_init.abs() <= 1e-6,
            "layer {layer}: {}",
            r.penalty_init
        );
        assert!(r.own_loss.is_finite() && r.own_loss > 0.0);
    }
    // Training moves the map only a little away from the identity: the penalty stays small.
    let cfg = StitchConfig::default()
        .steps(20)
        .seq_len(32)
        .lr(1e-3)
        .progress(false);
    let r = stitch(&model, &model, 0, texts, &cfg).unwrap();
    assert!(r.penalty_init.abs() <= 1e-6);
    assert!(
        r.penalty.abs() <= 0.05,
        "penalty after training {}",
        r.penalty
    );
    assert_eq!(r.train_loss.len(), 20);
    let moved = max_abs_diff(
        &r.map.weight(),
        &Tensor::eye(32, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(moved > 0.0, "the map did not train");
    eprintln!(
        "self-stitch at layer 0: penalty {:.2e} at step 0, {:.2e} after 20 steps ({:.1} s)",
        r.penalty_init, r.penalty, r.seconds
    );
}

#[test]
fn stitching_across_widths_runs_and_training_helps() {
    let narrow = train_toy(
        &small(ToyActivation::Gelu, 2, 16).n_heads(2),
        corpus(),
        40,
        8,
        3e-3,
    )
    .unwrap()
    .to_model()
    .unwrap();
    let wide = solu2().to_model().unwrap();
    let cfg = StitchConfig::default()
        .steps(15)
        .seq_len(32)
        .lr(3e-3)
        .progress(false);
    let m = stitch_matrix(&narrow, &wide, &[0, 1], corpus(), &cfg).unwrap();
    let frame = m.to_frame().unwrap();
    assert_eq!(frame.height(), 4);
    assert_eq!(m.asymmetry_frame().unwrap().height(), 2);
    for r in m.a_to_b.iter().chain(&m.b_to_a) {
        assert_eq!(r.init, StitchInit::LeastSquares);
        assert!(r.penalty.is_finite() && r.penalty_init.is_finite());
        assert!(
            (r.map.d_in(), r.map.d_out()) == (16, 32) || (r.map.d_in(), r.map.d_out()) == (32, 16)
        );
        // The stitched loss is measured against the receiving model's own loss.
        let own = if r.to == wide.name() { &wide } else { &narrow };
        assert_eq!(r.to, own.name());
    }
    // A random map is far worse than the least-squares start; training recovers part of it.
    let rnd = stitch(
        &narrow,
        &wide,
        1,
        corpus(),
        &cfg.clone().init(StitchInit::Random),
    )
    .unwrap();
    assert!(rnd.stitched_loss < rnd.stitched_loss_init, "{rnd:?}");
    eprintln!("{}", m.summary());
    eprintln!("{frame}");
}

#[test]
fn bad_input_is_an_error_naming_it() {
    let model = solu2().to_model().unwrap();
    let cfg = StitchConfig::default().steps(0).seq_len(32).progress(false);
    let texts = corpus();

    let err = stitch(&model, &model, 2, texts, &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer 2 is out of range"), "{err}");

    let empty: Vec<String> = vec![];
    let err = stitch(&model, &model, 0, &empty, &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("corpus is empty"), "{err}");
    let err = train_toy(&small(ToyActivation::Gelu, 1, 16), &empty, 5, 2, 1e-3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("corpus is empty"), "{err}");

    // The HF tiny GPT-2 fixture has its own 512-token BPE vocabulary.
    let other = Model::from_dir(fixture("tiny-gpt2/model")).unwrap();
    let err = stitch(&model, &other, 0, texts, &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("different tokenizers"), "{err}");

    let too_short = vec!["tiny".to_string(), "texts".to_string()];
    let err = stitch(&model, &model, 0, &too_short, &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("fewer than seq_len"), "{err}");

    let err = train_toy(
        &small(ToyActivation::Gelu, 1, 30).n_heads(4),
        texts,
        5,
        2,
        1e-3,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("n_heads"), "{err}");
    let err = train_toy(&small(ToyActivation::Gelu, 1, 16), texts, 5, 2, f64::NAN)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lr"), "{err}");

    let narrow = train_toy(
        &small(ToyActivation::Gelu, 1, 16).n_heads(2),
        texts,
        1,
        2,
        1e-3,
    )
    .unwrap()
    .to_model()
    .unwrap();
    let identity = cfg.clone().init(StitchInit::Identity);
    let err = stitch(&narrow, &model, 0, texts, &identity)
        .unwrap_err()
        .to_string();
    assert!(err.contains("identity init needs equal widths"), "{err}");

    // forward_from checks its arguments.
    let mask = Tensor::ones((1, 4), candle_core::DType::U32, &Device::Cpu).unwrap();
    let resid = Tensor::zeros((1, 4, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = model
        .forward_from(3, &resid, &mask, &HookSpec::none())
        .unwrap_err()
        .to_string();
    assert!(err.contains("start block 3 is out of range"), "{err}");
    let err = model
        .forward_from(
            1,
            &resid.narrow(2, 0, 16).unwrap(),
            &mask,
            &HookSpec::none(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("width 16"), "{err}");
    let neox = Model::from_dir(fixture("tiny-gpt-neox/model")).unwrap();
    let resid = Tensor::zeros(
        (1, 4, neox.d_model()),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let err = neox
        .forward_from(1, &resid, &mask, &HookSpec::none())
        .unwrap_err()
        .to_string();
    assert!(err.contains("only implemented for gpt2"), "{err}");
}

/// Timing and a first GeLU↔SoLU run on the real corpus (not part of the normal run):
/// `REPLENS_TOY_STEPS=300 cargo test --test stitch -- --ignored --nocapture`
/// (`REPLENS_TOY_SAVE=dir` also saves both checkpoints there).
#[test]
#[ignore]
fn timing_d128_toys_and_stitch_matrix() {
    let brown = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/corpus/brown.jsonl");
    let texts = if brown.exists() {
        replens::data::read_texts(&brown, "text").unwrap()
    } else {
        corpus().to_vec()
    };
    let steps: usize = std::env::var("REPLENS_TOY_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let mut models = vec![];
    for act in [ToyActivation::Gelu, ToyActivation::Solu] {
        let cfg = ToyConfig::new(1, act).progress(false);
        let toy = train_toy(&cfg, &texts, steps, 16, 3e-3).unwrap();
        eprintln!(
            "{}: {steps} steps of 16x64 bytes in {:.1} s ({:.3} s/step); held-out {:.3} -> {:.3}",
            cfg.label(),
            toy.log.seconds,
            toy.log.seconds / steps as f64,
            toy.log.initial_eval_loss().unwrap(),
            toy.log.final_eval_loss().unwrap()
        );
        if let Ok(dir) = std::env::var("REPLENS_TOY_SAVE") {
            toy.save(Path::new(&dir).join(cfg.label())).unwrap();
        }
        models.push(toy.to_model().unwrap());
    }
    let cfg = StitchConfig::default().progress(false);
    let started = std::time::Instant::now();
    let m = stitch_matrix(&models[0], &models[1], &[0], &texts[..2000], &cfg).unwrap();
    eprintln!(
        "stitch matrix (1 layer, both directions, {} steps each) in {:.1} s; one stitch {:.1} s",
        cfg.steps,
        started.elapsed().as_secs_f64(),
        m.a_to_b[0].seconds
    );
    eprintln!("{}\n{}", m.summary(), m.to_frame().unwrap());
}
