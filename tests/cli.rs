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

#[test]
fn missing_file_unknown_model_unknown_hook_are_one_line_errors() {
    let (code, _, err) = replens(&[
        "activations",
        "--model",
        "minilm",
        "--file",
        "/no/such/file.txt",
    ]);
    assert_eq!(code, 2);
    assert_clean_error(&err, "/no/such/file.txt");

    let (code, _, err) = replens(&["activations", "--model", "no-such-model", "--text", "hi"]);
    assert_eq!(code, 2);
    assert_clean_error(&err, "no-such-model");

    let (code, _, err) = replens(&[
        "activations",
        "--model",
        "minilm",
        "--text",
        "hi",
        "--hooks",
        "blocks.0.hook_nope",
    ]);
    assert_eq!(code, 2);
    assert_clean_error(&err, "blocks.0.hook_nope");
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
