//! Parity of the Llama-family forward pass (src/model/llama.rs, src/model/gguf.rs) with Hugging Face
//! transformers, on golden fixtures written by scripts/reference/make_llama_fixtures.py:
//!
//! * the packaged SmolLM2-135M-Instruct Q4_1 GGUF (real weights, 30 blocks), loaded by transformers'
//!   own GGUF path — tokenizer ids, every hook of every block, logits at the last two positions;
//! * tiny random Llama (tied), Llama (untied, head_dim ≠ d/heads, biases, llama3 rope), Mistral
//!   (sliding window 4) and Qwen2 (q/k/v biases) checkpoints in HF safetensors layout, plus the tied
//!   Llama and the Qwen2 as f32 GGUF files in llama.cpp's layout (q/k rows permuted for `llama`);
//! * padded-batch invariance, the untrained twin, and bad GGUF files.
//!
//! Run `cargo test --test parity_llama -- --nocapture` to see the measured max |Δ| per hook.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Tensor};
use replens::hooks::{HookPoint, HookSpec};
use replens::model::{pad_batch, Model};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

fn load_expected(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn ids_of(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

fn texts(dir: &Path, key: &str) -> Vec<String> {
    let path = dir.join("cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json[key]
        .as_array()
        .unwrap_or_else(|| panic!("{} has no '{key}'", path.display()))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// `(max |a − b|, max |b|)` over all elements.
fn diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let m = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    (d.to_scalar::<f32>().unwrap(), m.to_scalar::<f32>().unwrap())
}

/// Largest |a − b| / max(1, |b|) elementwise: absolute error where values are O(1), relative
/// error on SmolLM2's massive activations (|x| up to ~2.3e4, where one f32 ulp is ~2e-3).
fn scaled_diff(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b.abs().unwrap().maximum(1f32).unwrap();
    ((a - b).unwrap().abs().unwrap() / scale)
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn run_one(model: &Model, ids: &[u32], hooks: &HookSpec) -> replens::model::ForwardOutput {
    let (input, mask) = pad_batch(&[ids.to_vec()], model.device()).unwrap();
    model.forward(&input, &mask, hooks).unwrap()
}

/// The HF tensor that our `point` must match: resid_pre is stored as the previous resid_post.
fn expected_key(prefix: &str, point: HookPoint) -> String {
    match point {
        HookPoint::ResidPre(0) => format!("{prefix}/hook_embed"),
        HookPoint::ResidPre(i) => format!("{prefix}/{}", HookPoint::ResidPost(i - 1)),
        p => format!("{prefix}/{p}"),
    }
}

#[derive(Default)]
struct Worst {
    abs: f32,
    scaled: f32,
    at: String,
    magnitude: f32,
}

impl Worst {
    fn add(&mut self, what: String, ours: &Tensor, theirs: &Tensor) {
        let (d, m) = diff(ours, theirs);
        let s = scaled_diff(ours, theirs);
        if d > self.abs {
            self.abs = d;
            self.at = what;
            self.magnitude = m;
        }
        self.scaled = self.scaled.max(s);
    }
}

// ------------------------------------------------------------------------------------------------
// tiny HF checkpoints (safetensors) and their f32 GGUF twins
// ------------------------------------------------------------------------------------------------

/// Compare every hook and the logits of every doc, and the padded batch, with HF; returns the
/// worst absolute error.
fn check_tiny(name: &str, model: &Model, fixture: &Path) -> f32 {
    let expected = load_expected(&fixture.join("expected.safetensors"));
    let docs = texts(fixture, "texts");
    let ours_ids = model.tokenize(&docs).unwrap();
    let n = model.n_layers();
    let mut worst = Worst::default();
    let mut singles = Vec::new();
    for (k, want_ids) in ours_ids.iter().enumerate() {
        let ids = ids_of(&expected[&format!("doc{k}/ids")]);
        assert_eq!(
            want_ids, &ids,
            "{name}: tokenizer ids of doc {k} differ from HF"
        );
        let out = run_one(model, &ids, &HookSpec::all());
        for point in HookSpec::all().expand(n) {
            let ours = out.cache.get(point).unwrap().i(0).unwrap();
            let theirs = &expected[&expected_key(&format!("doc{k}"), point)];
            worst.add(format!("doc{k}/{point}"), &ours, theirs);
        }
        let logits = out.logits.clone().unwrap().i(0).unwrap();
        worst.add(
            format!("doc{k}/logits"),
            &logits,
            &expected[&format!("doc{k}/logits")],
        );
        singles.push(out);
    }

    // Right-padded batch: real positions match HF's batch and our own unpadded runs.
    let last = HookPoint::ResidPost(n - 1);
    let ids = expected["batch/ids"].to_dtype(DType::U32).unwrap();
    let mask = expected["batch/mask"].to_dtype(DType::U32).unwrap();
    let out = model
        .forward(&ids, &mask, &HookSpec::points([last]))
        .unwrap();
    let mut pad_vs_single = 0f32;
    for (k, single) in singles.iter().enumerate() {
        let len = ours_ids[k].len();
        let ours = out.cache.get(last).unwrap().i((k, ..len)).unwrap();
        let logits = out.logits.as_ref().unwrap().i((k, ..len)).unwrap();
        worst.add(
            format!("batch/{k}/{last}"),
            &ours,
            &expected[&format!("batch/{last}")].i((k, ..len)).unwrap(),
        );
        worst.add(
            format!("batch/{k}/logits"),
            &logits,
            &expected["batch/logits"].i((k, ..len)).unwrap(),
        );
        let solo = single.cache.get(last).unwrap().i(0).unwrap();
        pad_vs_single = pad_vs_single.max(scaled_diff(&ours, &solo));
        let solo_logits = single.logits.as_ref().unwrap().i(0).unwrap();
        pad_vs_single = pad_vs_single.max(scaled_diff(&logits, &solo_logits));
    }
    eprintln!(
        "{name}: max |Δ| vs HF = {:.3e} (at {}, |x| ≤ {:.1}); padded vs unpadded: max |Δ|/max(1,|x|) = {pad_vs_single:.3e}",
        worst.abs, worst.at, worst.magnitude
    );
    assert!(
        worst.abs <= 1e-4,
        "{name}: max |Δ| {} at {}",
        worst.abs,
        worst.at
    );
    // Bit-identical on the machine the fixtures were made on; slack for other CPUs' kernels.
    assert!(
        pad_vs_single <= 1e-6,
        "{name}: padding changed real tokens by {pad_vs_single}"
    );
    worst.abs
}

#[test]
fn tiny_llama_tied_safetensors() {
    let dir = fixtures().join("tiny-llama");
    let model = Model::from_dir(dir.join("model")).unwrap();
    check_tiny("tiny-llama (tied)", &model, &dir);
}

#[test]
fn tiny_llama_untied_llama3_rope_biases() {
    let dir = fixtures().join("tiny-llama").join("untied");
    let model = Model::from_dir(dir.join("model")).unwrap();
    check_tiny("tiny-llama/untied", &model, &dir);
}

#[test]
fn tiny_mistral_sliding_window() {
    let dir = fixtures().join("tiny-llama").join("mistral");
    let model = Model::from_dir(dir.join("model")).unwrap();
    check_tiny("tiny-llama/mistral (window 4)", &model, &dir);
}

#[test]
fn tiny_qwen2_safetensors() {
    let dir = fixtures().join("tiny-qwen2");
    let model = Model::from_dir(dir.join("model")).unwrap();
    check_tiny("tiny-qwen2", &model, &dir);
}

#[test]
fn tiny_llama_gguf_undoes_the_rotary_permutation() {
    let dir = fixtures().join("tiny-llama");
    let model = Model::from_gguf(dir.join("tiny-llama.f32.gguf")).unwrap();
    check_tiny("tiny-llama.f32.gguf", &model, &dir);
}

#[test]
fn tiny_qwen2_gguf() {
    let dir = fixtures().join("tiny-qwen2");
    let model = Model::from_gguf(dir.join("tiny-qwen2.f32.gguf")).unwrap();
    check_tiny("tiny-qwen2.f32.gguf", &model, &dir);
}

#[test]
fn untrained_twin_is_seeded_and_runs() {
    let dir = fixtures().join("tiny-qwen2");
    let model = Model::from_dir(dir.join("model")).unwrap();
    let ids = vec![5u32, 17, 42, 99, 7];
    let logits = |m: &Model| run_one(m, &ids, &HookSpec::none()).logits.unwrap();
    let a = model.untrained(7).unwrap();
    let b = model.untrained(7).unwrap();
    let c = model.untrained(8).unwrap();
    assert_eq!(
        diff(&logits(&a), &logits(&b)).0,
        0.0,
        "same seed, different weights"
    );
    assert!(
        diff(&logits(&a), &logits(&c)).0 > 1e-3,
        "different seeds, same weights"
    );
    assert!(
        diff(&logits(&a), &logits(&model)).0 > 1e-3,
        "the twin equals the trained model"
    );
    let out = run_one(&a, &ids, &HookSpec::all());
    assert_eq!(out.cache.len(), 2 + 4 * model.n_layers());
    for (point, t) in out.cache.iter() {
        let finite = t
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|x| x.is_finite());
        assert!(finite, "{point} of the untrained twin is not finite");
    }
}

// ------------------------------------------------------------------------------------------------
// SmolLM2-135M-Instruct (packaged Q4_1 GGUF)
// ------------------------------------------------------------------------------------------------

fn smollm_path() -> PathBuf {
    let path = replens::model::source::models_dir()
        .join("SmolLM2-135M-Instruct")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup to install the packaged models",
        path.display()
    );
    path
}

/// transformers' own f32 rounding for one hook (HF f32 vs HF f64, from cases.json).
struct Noise {
    abs: f32,
    scaled: f32,
}

fn noise_of(json: &serde_json::Value, hook: &str) -> Noise {
    let entry = &json["hf_f32_vs_f64"][hook];
    let get = |k: &str| {
        entry[k]
            .as_f64()
            .unwrap_or_else(|| panic!("cases.json: hf_f32_vs_f64.{hook}.{k} missing"))
            as f32
    };
    Noise {
        abs: get("max_abs"),
        scaled: get("max_scaled"),
    }
}

/// How far our f32 result may be from transformers' f32 result: 1e-4, or 5 times transformers'
/// own f32 rounding error on that hook (HF f32 vs HF f64) when that is larger. Two f32
/// implementations with independent rounding are each about that far from the exact result, so
/// they can be two or three times it apart (measured here: at most 3.1x, blocks.10); the factor 5
/// leaves room for other CPUs' kernels while still catching real mistakes (a wrong eps, rotary
/// layout or permutation is off by orders of magnitude more). The 1e-4 floor binds for
/// hook_embed, block 0 and block 14's attention output; elsewhere transformers' own error is
/// above 2e-5, and on SmolLM2's massive activation channels (|x| ≈ 2.3e4, where one f32 ulp is
/// 2e-3) it reaches 1.2e-2.
const NOISE_FACTOR: f32 = 5.0;

#[test]
fn smollm2_gguf_matches_transformers() {
    let start = Instant::now();
    let dir = fixtures().join("smollm2");
    let expected = load_expected(&dir.join("expected.safetensors"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let model = Model::from_gguf(smollm_path()).unwrap();
    let loaded = start.elapsed();
    assert_eq!((model.n_layers(), model.d_model()), (30, 576));

    // Tokenizer: the three sentences exactly as transformers' GGUF tokenizer.
    let sentences = texts(&dir, "sentences");
    let ids = model.tokenize(&sentences).unwrap();
    for (k, got) in ids.iter().enumerate() {
        assert_eq!(
            got,
            &ids_of(&expected[&format!("doc{k}/ids")]),
            "sentence {k}: {}",
            sentences[k]
        );
    }
    // Tokenizer-only cases: SmolLM2's own pre-tokenizer (digits one by one). transformers 5.24's
    // GGUF converter ignores tokenizer.ggml.pre = "smollm" and differs on "x  1" (see gguf.rs).
    for (k, case) in json["tokenizer_cases"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let text = case["text"].as_str().unwrap();
        let ours = &model.tokenize(&[text]).unwrap()[0];
        assert_eq!(
            ours,
            &ids_of(&expected[&format!("tok{k}/smollm_ids")]),
            "{text:?}"
        );
        let same_as_hf = ours == &ids_of(&expected[&format!("tok{k}/hf_ids")]);
        assert_eq!(same_as_hf, case["same"].as_bool().unwrap(), "{text:?}");
    }

    // Every hook of every block, one sentence at a time.
    let n = model.n_layers();
    let detail: Vec<usize> = json["detail_layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    // hook (HF name it is compared with) → (max |Δ|, max |Δ|/max(1,|x|), max |x|)
    let mut per_hook: Vec<(String, f32, f32, f32)> = Vec::new();
    let mut note = |hook: String, ours: &Tensor, theirs: &Tensor| {
        let (d, m) = diff(ours, theirs);
        let s = scaled_diff(ours, theirs);
        match per_hook.iter_mut().find(|(h, ..)| *h == hook) {
            Some(e) => {
                e.1 = e.1.max(d);
                e.2 = e.2.max(s);
                e.3 = e.3.max(m);
            }
            None => per_hook.push((hook, d, s, m)),
        }
    };
    let mut singles = Vec::new();
    for (k, doc) in ids.iter().enumerate() {
        let out = run_one(&model, doc, &HookSpec::all());
        for point in HookSpec::all().expand(n) {
            if let HookPoint::AttnOut(i) | HookPoint::MlpOut(i) = point {
                if !detail.contains(&i) {
                    continue;
                }
            }
            let ours = out.cache.get(point).unwrap().i(0).unwrap();
            let key = expected_key(&format!("doc{k}"), point);
            let hook = key.split_once('/').unwrap().1.to_string();
            note(hook, &ours, &expected[&key]);
        }
        let logits = out.logits.as_ref().unwrap().i(0).unwrap();
        let last2 = logits.narrow(0, doc.len() - 2, 2).unwrap();
        note(
            "logits_last2".into(),
            &last2,
            &expected[&format!("doc{k}/logits_last2")],
        );
        singles.push(out);
    }

    // Padded batch of the three sentences: real tokens unchanged.
    let (input, mask) = pad_batch(&ids, model.device()).unwrap();
    let out = model
        .forward(&input, &mask, &HookSpec::all_residual())
        .unwrap();
    let mut pad_worst = 0f32;
    for (k, single) in singles.iter().enumerate() {
        let len = ids[k].len();
        for i in 0..n {
            let p = HookPoint::ResidPost(i);
            let a = out.cache.get(p).unwrap().i((k, ..len)).unwrap();
            let b = single.cache.get(p).unwrap().i(0).unwrap();
            pad_worst = pad_worst.max(scaled_diff(&a, &b));
        }
        let a = out.logits.as_ref().unwrap().i((k, ..len)).unwrap();
        let b = single.logits.as_ref().unwrap().i(0).unwrap();
        pad_worst = pad_worst.max(scaled_diff(&a, &b));
    }

    eprintln!(
        "SmolLM2-135M Q4_1 GGUF vs transformers 5.24 (both f32, eager attention), 3 sentences:"
    );
    eprintln!(
        "  {:<28} {:>10} {:>10} {:>10} {:>12} {:>8}",
        "hook (HF)", "max|Δ|", "HF noise", "max|x|", "max scaled", "Δ/noise"
    );
    let mut failures = Vec::new();
    for (hook, d, s, m) in &per_hook {
        let noise = noise_of(&json, hook);
        let tol_abs = (NOISE_FACTOR * noise.abs).max(1e-4);
        let tol_scaled = (NOISE_FACTOR * noise.scaled).max(1e-4);
        let ratio = if noise.abs > 0.0 { d / noise.abs } else { 0.0 };
        eprintln!(
            "  {hook:<28} {d:>10.3e} {:>10.3e} {m:>10.1} {s:>12.3e} {ratio:>8.2}",
            noise.abs
        );
        if *d > tol_abs || *s > tol_scaled {
            failures.push(format!(
                "{hook}: max|Δ| {d:e} (allowed {tol_abs:e}), scaled {s:e} (allowed {tol_scaled:e})"
            ));
        }
    }
    let worst_small = per_hook
        .iter()
        .filter(|(_, _, _, m)| *m < 100.0)
        .map(|(_, d, ..)| *d)
        .fold(0f32, f32::max);
    eprintln!("  max |Δ| over hooks whose values stay below 100: {worst_small:.3e}");
    eprintln!("  padded batch vs single: max |Δ|/max(1,|x|) {pad_worst:.3e}");
    eprintln!(
        "  wall time: load {:.2?}, test total {:.2?}",
        loaded,
        start.elapsed()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        pad_worst <= 1e-6,
        "padding changed real tokens by {pad_worst}"
    );
}

#[test]
fn smollm2_untrained_twin_runs() {
    let model = Model::from_gguf(smollm_path()).unwrap();
    let twin = model.untrained(0).unwrap();
    let ids = model.tokenize(&["The cat sat on the mat."]).unwrap();
    let out = run_one(&twin, &ids[0], &HookSpec::all_residual());
    let last = out.cache.get(HookPoint::ResidPost(29)).unwrap();
    let values = last.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(values.iter().all(|x| x.is_finite()));
    let trained = run_one(&model, &ids[0], &HookSpec::all_residual());
    assert!(diff(last, trained.cache.get(HookPoint::ResidPost(29)).unwrap()).0 > 1.0);
}

// ------------------------------------------------------------------------------------------------
// bad GGUF input
// ------------------------------------------------------------------------------------------------

fn error_of(path: &Path) -> String {
    match Model::from_gguf(path) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn not_a_gguf_file_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("notes.gguf");
    std::fs::write(&path, "this is not a GGUF file, just text").unwrap();
    let err = error_of(&path);
    assert!(err.contains("notes.gguf"), "{err}");

    let missing = tmp.path().join("absent.gguf");
    let err = error_of(&missing);
    assert!(err.contains("absent.gguf"), "{err}");
}

#[test]
fn truncated_gguf_is_an_error() {
    let source = fixtures().join("tiny-llama").join("tiny-llama.f32.gguf");
    let bytes = std::fs::read(&source).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // Cut inside the metadata, then inside the tensor data.
    for (cut, what) in [
        (bytes.len() / 100, "header"),
        (bytes.len() - 1000, "tensor data"),
    ] {
        let path = tmp.path().join(format!("cut-{cut}.gguf"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = error_of(&path);
        assert!(err.contains(&format!("cut-{cut}.gguf")), "{what}: {err}");
        eprintln!("truncated in the {what}: {err}");
    }
}

#[test]
fn gguf_metadata_errors_name_the_key() {
    use candle_core::quantized::gguf_file::{self, Value};
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, md: &[(&str, &Value)]| {
        let path = tmp.path().join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        gguf_file::write(&mut f, md, &[]).unwrap();
        path
    };
    let path = write(
        "gpt2.gguf",
        &[("general.architecture", &Value::String("gpt2".into()))],
    );
    let err = error_of(&path);
    assert!(
        err.contains("gpt2.gguf") && err.contains("'gpt2'") && err.contains("not supported"),
        "{err}"
    );

    let path = write(
        "nokey.gguf",
        &[
            ("general.architecture", &Value::String("llama".into())),
            ("llama.attention.head_count", &Value::U32(4)),
        ],
    );
    let err = error_of(&path);
    assert!(
        err.contains("nokey.gguf") && err.contains("metadata key") && err.contains("is missing"),
        "{err}"
    );
}
