//! Study 1 (Diff-eRank) end to end on the packaged real models: SmolLM2-135M (decoder) and
//! all-MiniLM-L6-v2 (encoder), on short real English sentences (Wikipedia, CoNLL-2010 task 1,
//! and the Brown corpus; copied here so that the test needs no data download).

use std::path::Path;
use std::sync::OnceLock;

use replens::hooks::{HookPoint, HookSpec};
use replens::metrics::erank::entropy;
use replens::model::{Model, RunOptions};
use replens::studies::{run_diff_erank, run_diff_erank_with_twin, DiffErankConfig, Layers};

const SENTENCES: [&str; 12] = [
    "In children, this type of hearing loss can lead to social isolation for several reasons.",
    "This can result in a deaf person becoming generally irritable.",
    "The Milesians attack, and like Arthur's expedition, lose most of their force.",
    "Sarah Higley suggests a common story that influenced these various Welsh and Irish accounts.",
    "Some suggest that the origin of music likely stems from naturally occurring sounds and rhythms.",
    "Human music may echo these phenomena using patterns, repetition and tonality.",
    "Implementation of Georgia's automobile title law was also recommended by the outgoing jury.",
    "Attorneys for the mayor said that an amicable property settlement has been agreed upon.",
    "Henry L. Bowden was listed on the petition as the mayor's attorney.",
    "Sheriff Felix Tabb said the ordinary apparently made good his promise.",
    "Cox argued that the bill is \"probably unconstitutional\" since, he said, it would impair contracts.",
    "There was no debate as the Senate passed the bill on to the House.",
];

fn require(alias: &str, file: &str) -> Model {
    let dir = replens::model::source::models_dir();
    assert!(
        Path::new(&dir).join(file).exists(),
        "{} is missing: run scripts/setup to install the packaged models",
        dir.join(file).display()
    );
    Model::load(alias).unwrap_or_else(|e| panic!("loading {alias}: {e}"))
}

fn smol() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        require(
            "default",
            "SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
        )
    })
}

fn smol_twin() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| smol().untrained(0).expect("untrained twin"))
}

fn minilm() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| require("minilm", "all-MiniLM-L6-v2/model.safetensors"))
}

fn cfg() -> DiffErankConfig {
    DiffErankConfig::default()
        .progress(false)
        .n_resamples(500)
        .batch_size(4)
}

/// Entropies computed directly from each sentence's full activation matrix.
fn direct_entropies(model: &Model, point: HookPoint) -> Vec<f64> {
    let run = model
        .run_with(
            &SENTENCES,
            &HookSpec::points([point]),
            &RunOptions::default().progress(false),
        )
        .unwrap();
    run.docs
        .iter()
        .map(|d| entropy(d.cache.get(point).unwrap()).unwrap())
        .collect()
}

fn column_f64(df: &replens::polars::prelude::DataFrame, name: &str) -> Vec<f64> {
    df.column(name)
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect()
}

#[test]
fn smollm2_diff_erank_and_delta_loss_match_direct_erank() {
    let (model, twin) = (smol(), smol_twin());
    let res =
        run_diff_erank_with_twin(model, twin, &SENTENCES, &cfg().layers(Layers::All)).unwrap();
    eprintln!("{res}");
    eprintln!("{}", res.per_layer.as_ref().unwrap());
    assert_eq!(res.hook, "ln_final.hook_normalized");
    assert_eq!(res.n_used, SENTENCES.len());
    assert_eq!(res.skipped_too_few_tokens + res.skipped_no_variation, 0);

    // The paper claims trained representations have a lower eRank (Diff-eRank > 0). For
    // SmolLM2-135M this does NOT hold at the last layer: its untrained twin (HF init, std 0.02,
    // 30 pre-norm blocks) collapses the token states (eRank ≈ 4.4 on these sentences) while the
    // trained model keeps eRank ≈ 9.6, so Diff-eRank ≈ −5.3 with the CI below 0. The test pins
    // the observed sign (the run is deterministic) so that a change in it is noticed.
    let d = res.diff_erank;
    assert!(d.estimate < 0.0 && d.upper < 0.0, "Diff-eRank {d}");
    assert!(res.erank_untrained > 1.0 && res.erank_trained > res.erank_untrained);
    assert!(d.contains(d.estimate));
    assert!((d.estimate - (res.erank_untrained - res.erank_trained)).abs() < 1e-9);
    let dl = res.delta_loss.expect("decoder has ΔL");
    assert!(dl.estimate > 0.0 && dl.lower > 0.0, "ΔL {dl}");
    assert!(dl.contains(dl.estimate));
    let (l0, l1) = (res.loss_untrained.unwrap(), res.loss_trained.unwrap());
    assert!((dl.estimate - (l0 - l1)).abs() < 1e-9);
    let chance = (model.config().vocab_size() as f64).ln();
    assert!(
        (l0 - chance).abs() < 1.5,
        "untrained loss {l0} near ln(vocab) {chance}"
    );

    // Streaming equals eRank of each sentence's whole matrix computed directly.
    let e1 = column_f64(&res.per_sentence, "entropy_trained");
    let e0 = column_f64(&res.per_sentence, "entropy_untrained");
    let h1 = direct_entropies(model, HookPoint::LnFinal);
    let h0 = direct_entropies(twin, HookPoint::LnFinal);
    for (ours, direct) in [(&e1, &h1), (&e0, &h0)] {
        for (i, (a, b)) in ours.iter().zip(direct.iter()).enumerate() {
            assert!(
                (a - b).abs() < 1e-9,
                "sentence {i}: streamed {a} vs direct {b}"
            );
        }
    }
    let direct_diff = replens::metrics::diff_erank(&h0, &h1);
    assert!((direct_diff - d.estimate).abs() < 1e-9);

    // Per-layer curves: one row per block, finite, and the per-sentence frame is complete.
    let pl = res.per_layer.as_ref().unwrap();
    assert_eq!(pl.height(), model.n_layers());
    assert!(column_f64(pl, "erank_trained")
        .iter()
        .all(|v| v.is_finite() && *v >= 1.0));
    assert_eq!(res.per_sentence.height(), SENTENCES.len());
    assert_eq!(res.to_frame().unwrap().height(), 1);
    assert!(res.summary_csv().starts_with("quantity,value\n"));
}

#[test]
fn smollm2_is_deterministic_given_the_seed() {
    let model = smol();
    let texts = &SENTENCES[..4];
    let c = cfg().seed(0);
    // The twin built inside run_diff_erank from seed 0 equals the shared one from seed 0.
    let a = run_diff_erank(model, texts, &c).unwrap();
    let b = run_diff_erank_with_twin(model, smol_twin(), texts, &c).unwrap();
    assert_eq!(a.diff_erank, b.diff_erank);
    assert_eq!(a.delta_loss, b.delta_loss);
    for col in a.per_sentence.columns() {
        let other = b.per_sentence.column(col.name()).unwrap();
        assert!(col.equals_missing(other), "column {} differs", col.name());
    }
    // A different bootstrap seed moves only the interval, not the estimate.
    let c2 =
        run_diff_erank_with_twin(model, smol_twin(), texts, &c.clone().bootstrap_seed(9)).unwrap();
    assert_eq!(c2.diff_erank.estimate, a.diff_erank.estimate);
}

#[test]
fn minilm_encoder_diff_erank() {
    let model = minilm();
    let res = run_diff_erank(model, &SENTENCES, &cfg().layers(Layers::All)).unwrap();
    eprintln!("{res}");
    eprintln!("{}", res.per_layer.as_ref().unwrap());
    assert_eq!(
        res.hook,
        format!("blocks.{}.hook_resid_post", model.n_layers() - 1)
    );
    assert!(res.delta_loss.is_none() && res.loss_trained.is_none());
    let d = res.diff_erank;
    assert!(d.estimate > 0.0 && d.lower > 0.0, "Diff-eRank {d}");
    let twin = model.untrained(0).unwrap();
    let direct = direct_entropies(&twin, HookPoint::ResidPost(model.n_layers() - 1));
    for (a, b) in column_f64(&res.per_sentence, "entropy_untrained")
        .iter()
        .zip(&direct)
    {
        assert!((a - b).abs() < 1e-9, "streamed {a} vs direct {b}");
    }
}

#[test]
fn empty_corpus_is_a_clear_error() {
    let texts: [&str; 0] = [];
    let err = run_diff_erank(smol(), &texts, &cfg())
        .unwrap_err()
        .to_string();
    assert!(err.contains("corpus is empty"), "{err}");
}

#[test]
fn all_one_token_corpus_says_everything_was_skipped() {
    let model = smol();
    let texts = ["the", "Hello", "cat"];
    let ids = model.tokenize(&texts).unwrap();
    assert!(
        ids.iter().all(|t| t.len() < 2),
        "expected single tokens: {ids:?}"
    );
    let err = run_diff_erank_with_twin(model, smol_twin(), &texts, &cfg())
        .unwrap_err()
        .to_string();
    assert!(err.contains("all 3 sentences were skipped"), "{err}");
    assert!(err.contains("3 with fewer than 2 tokens"), "{err}");

    // Mixed: single-token sentences are skipped and counted, the rest are used.
    let mixed = ["the", SENTENCES[0], SENTENCES[1]];
    let res = run_diff_erank_with_twin(model, smol_twin(), &mixed, &cfg()).unwrap();
    assert_eq!((res.n_used, res.skipped_too_few_tokens), (2, 1));
    let used = res
        .per_sentence
        .column("used")
        .unwrap()
        .bool()
        .unwrap()
        .get(0);
    assert_eq!(used, Some(false));
}

#[test]
fn empty_text_in_the_corpus_is_an_error_naming_it() {
    let err = run_diff_erank_with_twin(smol(), smol_twin(), &["a cat sat", ""], &cfg())
        .unwrap_err()
        .to_string();
    assert!(err.contains("text 1 is empty"), "{err}");
}
