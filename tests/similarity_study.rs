//! Layer × layer similarity on real forward passes (tiny fixture models, so it is fast).

use std::path::PathBuf;

use replens::frame::Pooling;
use replens::metrics::similarity::{linear_cka, Similarity};
use replens::model::{Model, RunOptions};
use replens::studies::similarity::{layer_representations, layer_similarity, Rows};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

const TEXTS: [&str; 4] = [
    "The quick brown fox jumps over the lazy dog.",
    "Representations change from layer to layer.",
    "A short one.",
    "Model stitching maps one residual stream into another.",
];

#[test]
fn within_model_matrix_is_symmetric_with_unit_diagonal() -> replens::Result<()> {
    let model = Model::from_dir(fixture("tiny-gpt2/model"))?;
    let opts = RunOptions::default().progress(false);
    let reps = layer_representations(&model, &TEXTS, Rows::Tokens, &opts)?;
    assert_eq!(reps.matrices.len(), model.n_layers() + 1);
    let n_tokens: usize = reps.token_ids.iter().map(Vec::len).sum();
    assert_eq!(reps.n_rows(), n_tokens);
    let sim = layer_similarity(&reps, &reps, Similarity::LinearCka)?;
    let k = sim.values.len();
    for i in 0..k {
        assert!((sim.values[i][i] - 1.0).abs() < 1e-9);
        for j in 0..k {
            assert!((sim.values[i][j] - sim.values[j][i]).abs() < 1e-12);
            assert!((0.0..=1.0 + 1e-12).contains(&sim.values[i][j]));
        }
    }
    // each entry is the plain index of the two layer matrices
    let direct = linear_cka(&reps.matrices[0], &reps.matrices[k - 1])?;
    assert!((sim.values[0][k - 1] - direct).abs() < 1e-12);
    assert_eq!(sim.frame.height(), k * k);
    let chart = sim.heatmap()?;
    assert!(chart.svg().contains("linear CKA"));
    Ok(())
}

#[test]
fn across_models_needs_matching_rows() -> replens::Result<()> {
    let opts = RunOptions::default().progress(false);
    let gpt2 = Model::from_dir(fixture("tiny-gpt2/model"))?;
    let roberta = Model::from_dir(fixture("tiny-roberta"))?;
    let a = layer_representations(&gpt2, &TEXTS, Rows::Tokens, &opts)?;
    let b = layer_representations(&roberta, &TEXTS, Rows::Tokens, &opts)?;
    let err = layer_similarity(&a, &b, Similarity::LinearCka).unwrap_err();
    assert!(err.to_string().contains("Rows::Pooled"), "{err}");
    // pooled rows: one per text, comparable across tokenizers
    let a = layer_representations(&gpt2, &TEXTS, Rows::Pooled(Pooling::Mean), &opts)?;
    let b = layer_representations(&roberta, &TEXTS, Rows::Pooled(Pooling::Mean), &opts)?;
    let sim = layer_similarity(&a, &b, Similarity::LinearCka)?;
    assert_eq!(sim.values.len(), gpt2.n_layers() + 1);
    assert_eq!(sim.values[0].len(), roberta.n_layers() + 1);
    assert!(layer_representations(&gpt2, &[] as &[&str], Rows::Tokens, &opts).is_err());
    Ok(())
}

#[test]
fn select_and_every_thin_the_layers() -> replens::Result<()> {
    let model = Model::from_dir(fixture("tiny-gpt2/model"))?;
    let opts = RunOptions::default().progress(false);
    let reps = layer_representations(&model, &TEXTS, Rows::Tokens, &opts)?;
    let n = reps.matrices.len();
    let last = n - 1;
    let picked = reps.select(&[last, 0])?;
    assert_eq!(picked.hooks, vec![reps.hooks[last], reps.hooks[0]]);
    assert_eq!(picked.labels()[1], "emb");
    assert_eq!(picked.n_rows(), reps.n_rows());
    // a thinned matrix holds the same entries as the full one
    let full = layer_similarity(&reps, &reps, Similarity::LinearCka)?;
    let thin = layer_similarity(&picked, &picked, Similarity::LinearCka)?;
    assert!((thin.values[0][1] - full.values[last][0]).abs() < 1e-12);
    // every(step) keeps the embeddings and always the last layer
    let every = reps.every(n + 5)?;
    assert_eq!(every.hooks, vec![reps.hooks[0], reps.hooks[last]]);
    assert_eq!(reps.every(1)?.hooks, reps.hooks);
    assert!(reps.every(0).is_err());
    assert!(reps.select(&[]).is_err());
    let err = reps.select(&[n]).unwrap_err().to_string();
    assert!(err.contains("out of range"), "{err}");
    Ok(())
}

#[test]
fn penalty_chart_draws_both_directions() -> replens::Result<()> {
    use replens::studies::similarity::stitch_penalty_chart;
    use replens::train::stitch::{stitch_matrix, StitchConfig, StitchMatrix};
    use replens::train::toy::{train_toy, ToyActivation, ToyConfig};
    let texts: Vec<String> = (0..40)
        .map(|i| format!("a ship sails the sea on day {i} and comes home. "))
        .collect();
    let small = |act| {
        ToyConfig::new(2, act)
            .d_model(16)
            .d_mlp(32)
            .n_ctx(16)
            .progress(false)
    };
    let gelu = train_toy(&small(ToyActivation::Gelu), &texts, 3, 4, 1e-2)?.to_model()?;
    let solu = train_toy(&small(ToyActivation::Solu), &texts, 3, 4, 1e-2)?.to_model()?;
    let cfg = StitchConfig::default().steps(1).seq_len(16).progress(false);
    let m = stitch_matrix(&gelu, &solu, &[0, 1], &texts, &cfg)?;
    let svg = stitch_penalty_chart(&m)?.svg().to_string();
    assert!(svg.contains("stitching penalty"), "title");
    assert!(svg.contains("gelu-2l-d16 → solu-2l-d16"), "A → B line");
    assert!(svg.contains("solu-2l-d16 → gelu-2l-d16"), "B → A line");
    let empty = StitchMatrix {
        a: m.a.clone(),
        b: m.b.clone(),
        a_to_b: vec![],
        b_to_a: vec![],
    };
    assert!(stitch_penalty_chart(&empty).is_err());
    Ok(())
}

#[test]
fn pooling_token_reps_matches_a_pooled_pass() -> replens::Result<()> {
    let model = Model::from_dir(fixture("tiny-gpt2/model"))?;
    let opts = RunOptions::default().progress(false);
    let tokens = layer_representations(&model, &TEXTS, Rows::Tokens, &opts)?;
    for pooling in [Pooling::Mean, Pooling::LastToken, Pooling::Cls] {
        let direct = layer_representations(&model, &TEXTS, Rows::Pooled(pooling), &opts)?;
        let pooled = tokens.pooled(pooling)?;
        assert_eq!(pooled.n_rows(), TEXTS.len());
        assert_eq!(pooled.hooks, direct.hooks);
        for (a, b) in pooled.matrices.iter().zip(&direct.matrices) {
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{pooling:?}: {diff}");
        }
    }
    // already pooled rows cannot be pooled again
    let err = tokens
        .pooled(Pooling::Mean)?
        .pooled(Pooling::Mean)
        .unwrap_err();
    assert!(err.to_string().contains("only token"), "{err}");
    Ok(())
}
