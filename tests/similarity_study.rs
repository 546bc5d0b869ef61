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
