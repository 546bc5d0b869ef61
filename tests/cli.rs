//! The `replens` binary: the main job works, bad input gives one line and exit code 2.

use std::process::Command;

fn replens(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_replens"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_clean_error(stderr: &str, needle: &str) {
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Run `args`, expect exit code 2 and one clean `error:` line containing `needle`.
fn fails_cleanly(args: &[&str], needle: &str) {
    let (code, _, err) = replens(args);
    assert_eq!(code, 2, "{err}");
    assert_clean_error(&err, needle);
}

#[test]
fn missing_file_unknown_model_unknown_hook_are_one_line_errors() {
    fails_cleanly(
        &[
            "activations",
            "--model",
            "minilm",
            "--file",
            "/no/such/file.txt",
        ],
        "/no/such/file.txt",
    );

    fails_cleanly(
        &["activations", "--model", "no-such-model", "--text", "hi"],
        "no-such-model",
    );

    fails_cleanly(
        &[
            "activations",
            "--model",
            "minilm",
            "--text",
            "hi",
            "--hooks",
            "blocks.0.hook_nope",
        ],
        "blocks.0.hook_nope",
    );
}

#[test]
fn hook_beyond_the_model_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.parquet");
    let (code, _, err) = replens(&[
        "activations",
        "--model",
        "minilm",
        "--text",
        "hi",
        "--hooks",
        "blocks.6.hook_resid_post",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("blocks.6.hook_resid_post") && err.contains("6 blocks"),
        "{err}"
    );
}

#[test]
fn activations_writes_parquet_for_the_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("acts");
    let (code, _, err) = replens(&[
        "activations",
        "--model",
        "minilm",
        "--text",
        "The cat sat.",
        "--text",
        "A dog ran far away.",
        "--out",
        out.to_str().unwrap(),
        "--pooling",
        "mean",
    ]);
    assert_eq!(code, 0, "{err}");
    let part = out.join("model=minilm/hook=blocks.5.hook_resid_post/part-0.parquet");
    let df = replens::frame::read_parquet(&part).unwrap();
    assert!(df.height() > 5);
    let pooled = replens::frame::read_parquet(out.join("pooled.parquet")).unwrap();
    assert_eq!(pooled.height(), 2);
}

#[test]
fn one_parquet_file_with_pooling_writes_the_librarys_pooled_frame() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("acts.parquet");
    let texts = ["The cat sat on the mat.", "A dog ran far away from home."];
    let (code, _, err) = replens(&[
        "activations",
        "--text",
        texts[0],
        "--text",
        texts[1],
        "--hooks",
        "blocks.2.hook_resid_post",
        "--out",
        out.to_str().unwrap(),
        "--pooling",
        "mean",
    ]);
    assert_eq!(code, 0, "{err}");
    let acts = replens::frame::read_parquet(&out).unwrap();
    assert!(!acts.get_column_names().iter().any(|c| c.as_str() == "loss"));
    let pooled = replens::frame::read_parquet(dir.path().join("pooled.parquet")).unwrap();
    // The same frame as the library computes from a fresh run of that hook.
    use replens::prelude::*;
    let model = Model::load("default").unwrap();
    let hook: HookPoint = "blocks.2.hook_resid_post".parse().unwrap();
    let opts = RunOptions::default().batch_size(8).progress(false);
    let run = model
        .run_with(&texts, &HookSpec::points([hook]), &opts)
        .unwrap();
    let expected = replens::frame::pooled_frame(&run, hook, Pooling::Mean).unwrap();
    assert!(pooled.equals_missing(&expected), "{pooled}\nvs\n{expected}");
    assert!(pooled.column("loss").unwrap().null_count() == 0);
}

fn fixture(path: &str) -> String {
    format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn similarity_train_toy_and_stitch_run_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    let lines: Vec<String> = (0..40)
        .map(|i| format!("The whale swam {i} leagues past the ship before the crew saw it."))
        .collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let corpus = corpus.to_str().unwrap();

    let sim_out = dir.path().join("sim");
    let (code, stdout, err) = replens(&[
        "similarity",
        "--model",
        &fixture("tiny-gpt2/model"),
        "--file",
        corpus,
        "--max-texts",
        "6",
        "--out",
        sim_out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("layer_a"), "{stdout}");
    let csv = std::fs::read_to_string(sim_out.join("similarity.csv")).unwrap();
    assert!(csv.starts_with("layer_a,layer_b,value"), "{csv}");
    assert!(sim_out.join("heatmap.png").exists());

    let mut toys = Vec::new();
    for act in ["gelu", "solu"] {
        let out = dir.path().join(act);
        let (code, stdout, err) = replens(&[
            "train-toy",
            "--file",
            corpus,
            "--activation",
            act,
            "--d-model",
            "16",
            "--steps",
            "3",
            "--batch",
            "4",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(stdout.contains("held-out loss"), "{stdout}");
        assert!(out.join("model.safetensors").exists());
        toys.push(out);
    }
    let st_out = dir.path().join("stitch");
    let (code, _, err) = replens(&[
        "stitch",
        "--model-a",
        toys[0].to_str().unwrap(),
        "--model-b",
        toys[1].to_str().unwrap(),
        "--file",
        corpus,
        "--steps",
        "2",
        "--out",
        st_out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let csv = std::fs::read_to_string(st_out.join("stitch.csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        3,
        "header + both directions at block 0:\n{csv}"
    );
}

#[test]
fn study_commands_reject_bad_options_in_one_line() {
    fails_cleanly(
        &["similarity", "--file", "x.txt", "--index", "cosine"],
        "--index 'cosine'",
    );
    fails_cleanly(
        &[
            "train-toy",
            "--file",
            "x.txt",
            "--activation",
            "relu",
            "--out",
            "/tmp/x",
        ],
        "--activation 'relu'",
    );
    let (code, _, err) = replens(&[
        "emergence",
        "--model",
        &fixture("tiny-gpt2/model"),
        "--task",
        "no_such_task",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("error: ") && err.contains("no_such_task"),
        "{err}"
    );
    let (code, _, err) = replens(&[
        "emergence",
        "--model",
        &fixture("tiny-gpt2/model"),
        "--layers",
        "99",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("block 99 does not exist"), "{err}");
}

#[test]
fn adue_and_shift_reject_bad_input_in_one_line() {
    fails_cleanly(&["adue", "--dataset", "no_such_dataset"], "no_such_dataset");
    fails_cleanly(
        &["adue", "--dataset", "x", "--seeds", "one"],
        "--seeds: 'one'",
    );
    fails_cleanly(
        &["adue", "--dataset", "rt_polarity", "--warm-start", "0"],
        "warm-start probe's C must be positive",
    );
    for (flag, allowed) in [
        ("--pooling", "cls, mean"),
        ("--grid", "small, paper"),
        ("--head-data", "auto, train, validation"),
    ] {
        let (code, _, err) = replens(&["adue", "--dataset", "x", flag, "foo"]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(&format!("invalid value 'foo' for '{flag}"))
                && err.contains(&format!("[possible values: {allowed}]"))
                && !err.contains("panicked"),
            "{err}"
        );
    }
    fails_cleanly(
        &[
            "shift",
            "--train",
            "/no/train.jsonl",
            "--test",
            "/no/test.jsonl",
        ],
        "/no/train.jsonl",
    );
}

#[test]
fn shift_fine_tune_runs_and_rejects_a_decoder_or_bad_epochs_before_embedding() {
    let data = |f: &str| format!("{}/data/sentiment/{f}", env!("CARGO_MANIFEST_DIR"));
    let (train, test) = (
        data("rt_polarity_test.jsonl"),
        data("vader_tweets_test.jsonl"),
    );
    let (gpt2, roberta) = (fixture("tiny-gpt2/model"), fixture("tiny-roberta"));
    let files = ["--train", train.as_str(), "--test", test.as_str()];
    let shift = |model: &str, extra: &[&str]| -> Vec<String> {
        let head = ["shift", "--model", model].into_iter().chain(files);
        head.chain(extra.iter().copied())
            .map(String::from)
            .collect()
    };
    for (args, needle) in [
        (
            shift(&gpt2, &["--fine-tune"]),
            "needs a BERT-family encoder",
        ),
        (
            shift(&roberta, &["--fine-tune", "--ft-epochs", "0"]),
            "fine-tuning: TrainOptions: epochs must be at least 1",
        ),
    ] {
        // The model loads (one "loaded …" line), then the check fails before any embedding.
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = replens(&args);
        assert_eq!(code, 2, "{err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(needle),
            "{err}"
        );
        assert_eq!(err.matches("error:").count(), 1, "{err}");
        assert!(
            !err.contains("panicked") && !err.contains("texts:"),
            "{err}"
        );
    }
    // End to end on the tiny RoBERTa fixture (< 1 s): both arms, tested on the same rows.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let extra = [
        "--n",
        "40",
        "--permutations",
        "19",
        "--fine-tune",
        "--ft-epochs",
        "1",
        "--out",
        out,
    ];
    let args = shift(&roberta, &extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, err) = replens(&args);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("probe vs LoRA fine-tuning"), "{stdout}");
    let csv = std::fs::read_to_string(dir.path().join("comparison.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert_eq!((rows[1][0], rows[2][0]), ("probe", "lora"), "{csv}");
    assert_eq!(
        rows[1][2..4],
        rows[2][2..4],
        "same n_test, n_shifted: {csv}"
    );
}

#[test]
fn activations_take_an_f32_encoder_and_reject_an_unknown_precision() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("acts.parquet");
    let (code, _, err) = replens(&[
        "activations",
        "--model",
        "minilm",
        "--text",
        "The cat sat.",
        "--precision",
        "f32",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(replens::frame::read_parquet(&out).unwrap().height() > 0);
    fails_cleanly(
        &[
            "activations",
            "--model",
            "minilm",
            "--text",
            "hi",
            "--precision",
            "f16",
        ],
        "unknown precision 'f16'",
    );
}
