//! GPT-2 and GPT-NeoX forward passes against Hugging Face transformers.
//!
//! Fixtures come from `scripts/reference/make_tiny_decoders.py` (tiny random checkpoints in HF
//! layout plus every hook point and the logits that transformers computed for a few token-id
//! sequences and one right-padded batch). No Python is needed here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use replens::hooks::{HookPoint, HookSpec};
use replens::model::init::{random_weights, Init};
use replens::model::{pad_batch, Model, RunOptions};

const TOL: f32 = 1e-4;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The three fixture variants: (label, fixture dir with `model/` and `expected.safetensors`).
const FAMILIES: &[(&str, &str)] = &[
    ("gpt2", "tiny-gpt2"),
    ("gpt_neox (parallel residual)", "tiny-gpt-neox"),
    ("gpt_neox (sequential residual)", "tiny-gpt-neox/sequential"),
];

fn expected(dir: &str) -> HashMap<String, Tensor> {
    let path = fixture(dir).join("expected.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn ids_of(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

fn docs(exp: &HashMap<String, Tensor>) -> Vec<Vec<u32>> {
    (0..)
        .map_while(|k| exp.get(&format!("doc{k}/ids")).map(ids_of))
        .collect()
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

/// Every hook name of a model with `n` blocks, plus "logits".
fn all_keys(n: usize) -> Vec<String> {
    let mut k: Vec<String> = HookSpec::all()
        .expand(n)
        .iter()
        .map(|p| p.to_string())
        .collect();
    k.push("logits".into());
    k
}

/// One forward pass over `batch` with every hook: name → `(batch, seq, ·)` tensor.
fn run_all(model: &Model, batch: &[Vec<u32>]) -> HashMap<String, Tensor> {
    let (ids, mask) = pad_batch(batch, &Device::Cpu).unwrap();
    let out = model.forward(&ids, &mask, &HookSpec::all()).unwrap();
    let mut m: HashMap<String, Tensor> = out
        .cache
        .iter()
        .map(|(p, t)| (p.to_string(), t.clone()))
        .collect();
    m.insert("logits".into(), out.logits.expect("decoders have logits"));
    m
}

#[test]
fn hooks_and_logits_match_transformers() {
    let mut report = vec![];
    for (label, dir) in FAMILIES {
        let model = Model::from_dir(fixture(dir).join("model")).unwrap();
        let exp = expected(dir);
        let docs = docs(&exp);
        assert!(docs.len() >= 3, "{dir}: fixture has too few docs");
        let keys = all_keys(model.n_layers());
        assert_eq!(keys.len(), 2 + 4 * 3 + 1);
        let mut worst = (0f32, String::new());
        // One text at a time.
        for (k, doc) in docs.iter().enumerate() {
            let got = run_all(&model, std::slice::from_ref(doc));
            for key in &keys {
                let want = &exp[&format!("doc{k}/{key}")];
                let d = max_abs_diff(&got[key].i(0).unwrap(), want);
                if d > worst.0 {
                    worst = (d, format!("doc{k}/{key}"));
                }
                assert!(d <= TOL, "{label}: doc{k} {key}: max |Δ| {d:e} > {TOL:e}");
            }
        }
        // The right-padded batch, against HF's own padded run (real tokens only).
        let (ids, mask) = pad_batch(&docs, &Device::Cpu).unwrap();
        assert_eq!(
            ids_of(&ids),
            ids_of(&exp["batch/ids"]),
            "pad_batch differs from the fixture"
        );
        assert_eq!(ids_of(&mask), ids_of(&exp["batch/mask"]));
        let got = run_all(&model, &docs);
        for key in &keys {
            for (k, doc) in docs.iter().enumerate() {
                let n = doc.len();
                let want = exp[&format!("batch/{key}")].i((k, ..n)).unwrap();
                let d = max_abs_diff(&got[key].i((k, ..n)).unwrap(), &want);
                if d > worst.0 {
                    worst = (d, format!("batch row {k}/{key}"));
                }
                assert!(
                    d <= TOL,
                    "{label}: padded batch row {k} {key}: max |Δ| {d:e}"
                );
            }
        }
        report.push(format!(
            "{label}: max |Δ| = {:.3e} (at {})",
            worst.0, worst.1
        ));
    }
    for line in report {
        println!("{line}");
    }
}

#[test]
fn padding_does_not_change_real_tokens() {
    for (label, dir) in FAMILIES {
        let model = Model::from_dir(fixture(dir).join("model")).unwrap();
        let docs = docs(&expected(dir));
        let batch = run_all(&model, &docs);
        let mut worst = 0f32;
        for (k, doc) in docs.iter().enumerate() {
            let single = run_all(&model, std::slice::from_ref(doc));
            for (key, t) in &single {
                let d = max_abs_diff(&batch[key].i((k, ..doc.len())).unwrap(), &t.i(0).unwrap());
                worst = worst.max(d);
            }
        }
        println!("{label}: padded vs unpadded max |Δ| = {worst:.3e}");
        assert!(
            worst <= 1e-5,
            "{label}: padding changed real tokens by {worst:e}"
        );
    }
}

#[test]
fn without_logits_skips_the_head_and_keeps_every_hook() {
    for (label, dir) in FAMILIES {
        let model = Model::from_dir(fixture(dir).join("model")).unwrap();
        let docs = docs(&expected(dir));
        let (input, mask) = pad_batch(&docs, model.device()).unwrap();
        let full = model.forward(&input, &mask, &HookSpec::all()).unwrap();
        let bare = model
            .forward(&input, &mask, &HookSpec::all().without_logits())
            .unwrap();
        assert!(full.logits.is_some(), "{label}");
        assert!(bare.logits.is_none(), "{label}: logits computed anyway");
        let points: Vec<_> = full.cache.iter().map(|(p, _)| p).collect();
        assert_eq!(
            points,
            bare.cache.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
        for ((point, a), (_, b)) in full.cache.iter().zip(bare.cache.iter()) {
            assert_eq!(max_abs_diff(a, b), 0.0, "{label}: {point} changed");
        }
        let mut without_loss = 0;
        let opts = RunOptions::default().progress(false);
        let spec = HookSpec::none().without_logits();
        model
            .for_each_doc_ids(&docs, &spec, &opts, |doc| {
                without_loss += usize::from(doc.token_loss.is_none());
                Ok(())
            })
            .unwrap();
        assert_eq!(without_loss, docs.len(), "{label}: a loss without logits");
    }
}

/// Copy a fixture model dir into a temp dir, letting `edit` change its weight map.
fn edited_copy(dir: &str, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> tempfile::TempDir {
    let src = fixture(dir).join("model");
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let mut w =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    edit(&mut w);
    candle_core::safetensors::save(&w, tmp.path().join("model.safetensors")).unwrap();
    tmp
}

fn load_err(path: &Path) -> String {
    match Model::from_dir(path) {
        Ok(_) => panic!("loading {} should fail", path.display()),
        Err(e) => {
            let msg = e.to_string();
            println!("expected error: {msg}");
            msg
        }
    }
}

#[test]
fn base_model_checkpoints_without_prefix_load_the_same() {
    // GPT2Model / GPTNeoXModel save names without `transformer.` / `gpt_neox.`; transformers 5
    // may name the NeoX head `lm_head`.
    for (dir, prefix) in [
        ("tiny-gpt2", "transformer."),
        ("tiny-gpt-neox", "gpt_neox."),
    ] {
        let tmp = edited_copy(dir, |w| {
            *w = w
                .drain()
                .map(|(k, v)| {
                    let k = k.strip_prefix(prefix).map(str::to_string).unwrap_or(k);
                    let k = if k == "embed_out.weight" {
                        "lm_head.weight".into()
                    } else {
                        k
                    };
                    (k, v)
                })
                .collect();
        });
        let a = Model::from_dir(fixture(dir).join("model")).unwrap();
        let b = Model::from_dir(tmp.path()).unwrap();
        let docs = docs(&expected(dir));
        let (ra, rb) = (run_all(&a, &docs), run_all(&b, &docs));
        for (key, t) in &ra {
            assert_eq!(max_abs_diff(t, &rb[key]), 0.0, "{dir} {key}");
        }
    }
}

#[test]
fn untrained_twin_is_seeded_and_follows_hf_init() {
    for (label, dir) in FAMILIES {
        let model = Model::from_dir(fixture(dir).join("model")).unwrap();
        let docs = docs(&expected(dir));

        // param_specs names and shapes are exactly what HF saved.
        let saved = candle_core::safetensors::load(
            fixture(dir).join("model/model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let specs = model.config().param_specs();
        assert_eq!(specs.len(), saved.len(), "{label}: param count");
        for s in &specs {
            let t = saved
                .get(&s.name)
                .unwrap_or_else(|| panic!("{label}: HF checkpoint lacks {}", s.name));
            assert_eq!(t.dims(), s.shape.as_slice(), "{label}: {}", s.name);
        }

        let u1 = model.untrained(7).unwrap();
        let u1b = model.untrained(7).unwrap();
        let u2 = model.untrained(8).unwrap();
        let (r1, r1b, r2) = (
            run_all(&u1, &docs),
            run_all(&u1b, &docs),
            run_all(&u2, &docs),
        );
        let logits = &r1["logits"];
        assert_eq!(
            max_abs_diff(logits, &r1b["logits"]),
            0.0,
            "{label}: same seed differs"
        );
        assert!(
            max_abs_diff(logits, &r2["logits"]) > 1e-4,
            "{label}: seeds 7 and 8 agree"
        );
        let finite = logits
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|x| x.is_finite());
        assert!(finite, "{label}: non-finite logits");

        // hook_embed of the untrained twin follows the init std: GPT-2 adds two Normal(0.02)
        // tables (std 0.02·√2), NeoX has one (0.02).
        let embed = r1["hook_embed"].i(0).unwrap().flatten_all().unwrap();
        let std = embed
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        let want = if dir.contains("gpt2") {
            0.02 * 2f32.sqrt()
        } else {
            0.02
        };
        assert!(
            (std / want - 1.0).abs() < 0.15,
            "{label}: embed std {std} vs {want}"
        );
    }
}

#[test]
fn gpt2_scaled_residual_init() {
    let model = Model::from_dir(fixture("tiny-gpt2/model")).unwrap();
    let specs = model.config().param_specs();
    let n_layer = model.n_layers() as f64;
    let proj = 0.02 / (2.0 * n_layer).sqrt();
    for s in &specs {
        let want = if s.name.ends_with("c_proj.weight") {
            Init::Normal(proj)
        } else if s.name.ends_with("bias") {
            Init::Zeros
        } else if s.name.contains(".ln_") {
            Init::Ones
        } else {
            Init::Normal(0.02)
        };
        assert_eq!(s.init, want, "{}", s.name);
    }
    // Drawn weights follow the rule.
    let w = random_weights(&specs, 3, &Device::Cpu).unwrap();
    let std_of = |name: &str| {
        let t = w[name].flatten_all().unwrap();
        t.sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt() as f64
    };
    let mlp = std_of("transformer.h.0.mlp.c_proj.weight");
    assert!(
        (mlp / proj - 1.0).abs() < 0.05,
        "mlp c_proj std {mlp} vs {proj}"
    );
    let fc = std_of("transformer.h.0.mlp.c_fc.weight");
    assert!((fc / 0.02 - 1.0).abs() < 0.05, "c_fc std {fc}");
}

#[test]
fn missing_tensor_is_named() {
    for (dir, name) in [
        ("tiny-gpt2", "transformer.h.1.attn.c_proj.weight"),
        (
            "tiny-gpt-neox",
            "gpt_neox.layers.2.attention.query_key_value.bias",
        ),
        ("tiny-gpt-neox", "embed_out.weight"),
    ] {
        let tmp = edited_copy(dir, |w| {
            w.remove(name).unwrap();
        });
        let err = load_err(tmp.path());
        assert!(err.contains(name), "{err}");
    }
    // Without any token embedding the message says which names were looked for.
    let tmp = edited_copy("tiny-gpt2", |w| {
        w.remove("transformer.wte.weight").unwrap();
    });
    let err = load_err(tmp.path());
    assert!(err.contains("transformer.wte.weight"), "{err}");
}

#[test]
fn wrong_shape_is_named() {
    for (dir, name) in [
        ("tiny-gpt2", "transformer.h.0.mlp.c_fc.weight"),
        (
            "tiny-gpt-neox",
            "gpt_neox.layers.1.mlp.dense_4h_to_h.weight",
        ),
    ] {
        let tmp = edited_copy(dir, |w| {
            // Transposed: same numel, wrong layout.
            let t = w[name].t().unwrap().contiguous().unwrap();
            w.insert(name.to_string(), t);
        });
        let err = load_err(tmp.path());
        assert!(err.contains(name) && err.contains("shape"), "{err}");
    }
}

#[test]
fn corrupt_weights_file_is_named() {
    let tmp = edited_copy("tiny-gpt-neox", |_| {});
    let file = tmp.path().join("model.safetensors");
    std::fs::write(&file, b"this is not a safetensors file \x00\x01\x02").unwrap();
    let err = load_err(tmp.path());
    assert!(err.contains(&file.display().to_string()), "{err}");
}

#[test]
fn bad_config_is_an_error() {
    let tmp = edited_copy("tiny-gpt-neox", |_| {});
    let cfg = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"default\"", "\"yarn\"")).unwrap();
    let err = load_err(tmp.path());
    assert!(err.contains("yarn"), "{err}");

    let tmp = edited_copy("tiny-gpt2", |_| {});
    let cfg = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"gelu_new\"", "\"gelu_weird\"")).unwrap();
    let err = load_err(tmp.path());
    assert!(err.contains("gelu_weird"), "{err}");
}

#[test]
fn bad_inputs_are_errors() {
    for (label, dir) in FAMILIES {
        let model = Model::from_dir(fixture(dir).join("model")).unwrap();
        let (ids, mask) = pad_batch(&[vec![1, 2, 3]], &Device::Cpu).unwrap();

        let hooks = HookSpec::parse(&["blocks.99.hook_resid_post"]).unwrap();
        let err = model.forward(&ids, &mask, &hooks).unwrap_err().to_string();
        assert!(err.contains("blocks.99.hook_resid_post"), "{label}: {err}");
        assert!(HookSpec::parse(&["blocks.1.hook_nonsense"]).is_err());

        let vocab = model.config().vocab_size() as u32;
        let (big, m) = pad_batch(&[vec![1, vocab]], &Device::Cpu).unwrap();
        let err = model
            .forward(&big, &m, &HookSpec::none())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&vocab.to_string()), "{label}: {err}");

        let long = vec![vec![1u32; model.config().max_positions() + 1]];
        let (l, m) = pad_batch(&long, &Device::Cpu).unwrap();
        assert!(
            model.forward(&l, &m, &HookSpec::none()).is_err(),
            "{label}: too long"
        );

        let bad_mask = Tensor::ones((1, 2), DType::U32, &Device::Cpu).unwrap();
        assert!(model.forward(&ids, &bad_mask, &HookSpec::none()).is_err());

        // The last token's hook alone is returned and nothing else.
        let spec = HookSpec::points([HookPoint::ResidPost(1)]);
        let out = model.forward(&ids, &mask, &spec).unwrap();
        assert_eq!(
            out.cache.names(),
            vec!["blocks.1.hook_resid_post".to_string()]
        );
    }
}
