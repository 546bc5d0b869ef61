//! Frames, pooling and Parquet on the real packaged encoder (all-MiniLM-L6-v2).

use replens::frame::{self, Pooling};
use replens::model::source::models_dir;
use replens::polars::prelude::df;
use replens::prelude::*;

fn minilm() -> Model {
    let dir = models_dir().join("all-MiniLM-L6-v2");
    assert!(dir.exists(), "{} missing: run scripts/setup", dir.display());
    Model::load("minilm").expect("packaged MiniLM loads")
}

const TEXTS: [&str; 3] = [
    "A cat.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello world",
];

#[test]
fn long_frame_has_one_row_per_doc_position_hook() {
    let model = minilm();
    let run = model.run(&TEXTS, &HookSpec::all_residual()).unwrap();
    let df = run_to_frame(&run).unwrap();
    let tokens: usize = run.docs.iter().map(|d| d.token_ids.len()).sum();
    let hooks = 1 + model.n_layers();
    assert_eq!(df.height(), tokens * hooks);
    assert_eq!(
        df.get_column_names()
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
        [
            "doc",
            "position",
            "hook",
            "layer",
            "token",
            "text",
            "activation"
        ]
    );
    // The vector column round-trips to exactly the cached tensor.
    let m = frame::hook_matrix(&df, HookPoint::ResidPost(5)).unwrap();
    let expected = Tensor::cat(
        &run.docs
            .iter()
            .map(|d| d.cache.get(HookPoint::ResidPost(5)).unwrap().clone())
            .collect::<Vec<_>>(),
        0,
    )
    .unwrap();
    let diff = (m - expected)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
    // Token text column holds the decoded tokens: [CLS] first.
    let text = df
        .column("text")
        .unwrap()
        .str()
        .unwrap()
        .get(0)
        .unwrap()
        .to_string();
    assert_eq!(text, "[CLS]");
}

#[test]
fn parquet_round_trip_and_partitioned_extraction() {
    let model = minilm();
    let run = model
        .run(
            &TEXTS,
            &HookSpec::parse(&["blocks.0.hook_resid_post", "blocks.5.hook_resid_post"]).unwrap(),
        )
        .unwrap();
    let df = run_to_frame(&run).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acts.parquet");
    frame::write_parquet(&df, &path).unwrap();
    let back = frame::read_parquet(&path).unwrap();
    assert!(
        back.equals_missing(&df),
        "Parquet round trip changed the frame"
    );

    let spec = HookSpec::parse(&["blocks.2.hook_resid_post", "blocks.4.hook_mlp_out"]).unwrap();
    let opts = RunOptions::default().batch_size(2).progress(false);
    let rows =
        frame::extract_to_parquet(&model, &TEXTS, &spec, &opts, dir.path().join("parts")).unwrap();
    let part = dir
        .path()
        .join("parts/model=minilm/hook=blocks.2.hook_resid_post/part-0.parquet");
    let part_df = frame::read_parquet(&part).unwrap();
    assert_eq!(rows, 2 * part_df.height());
    let direct = model.run(&TEXTS, &spec).unwrap();
    let expect =
        frame::hook_matrix(&run_to_frame(&direct).unwrap(), HookPoint::ResidPost(2)).unwrap();
    let got = frame::column_to_tensor(&part_df, "activation").unwrap();
    let diff = (got - expect)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-6, "streamed extraction differs by {diff}");
}

#[test]
fn pooling_matches_definitions_and_batches() {
    let model = minilm();
    let hook = HookPoint::ResidPost(5);
    let run = model.run(&TEXTS, &HookSpec::points([hook])).unwrap();
    let states = run.docs[1].cache.get(hook).unwrap();
    let n = states.dim(0).unwrap();
    let mean = frame::pool(states, Pooling::Mean)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let rows = states.to_vec2::<f32>().unwrap();
    for (j, m) in mean.iter().enumerate() {
        let manual: f32 = rows.iter().map(|r| r[j]).sum::<f32>() / n as f32;
        assert!((m - manual).abs() < 1e-5);
    }
    assert_eq!(
        frame::pool(states, Pooling::Cls)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        rows[0]
    );
    assert_eq!(
        frame::pool(states, Pooling::LastToken)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        rows[n - 1]
    );

    // Batched embedding with padding equals one-by-one embedding.
    let batched = frame::embed(
        &model,
        &TEXTS,
        hook,
        Pooling::Mean,
        &RunOptions::default().batch_size(3),
    )
    .unwrap();
    let single = frame::embed(
        &model,
        &TEXTS,
        hook,
        Pooling::Mean,
        &RunOptions::default().batch_size(1),
    )
    .unwrap();
    let diff = (batched - single)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "padding changed pooled embeddings by {diff}");

    let pooled = frame::pooled_frame(&run, hook, Pooling::Mean).unwrap();
    assert_eq!(pooled.height(), 3);
    assert!(
        pooled.column("loss").unwrap().null_count() == 3,
        "encoders have no LM loss"
    );
}

#[test]
fn csv_quotes_what_needs_quoting_and_keeps_float_digits() {
    let df = df!(
        "name" => [Some("plain"), Some("with, comma"), Some("say \"hi\""), Some("two\nlines"), None],
        "n" => [Some(1i64), Some(-2), None, Some(4), Some(5)],
        "x" => [0.1f64, 1e-300, f64::NAN, -0.0, 1.0 / 3.0],
        "big" => [1e20f64, 123456.0, 2.5e-7, f64::INFINITY, 1e15],
        "ok" => [true, false, true, false, true],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    frame::write_csv(&df, &path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        "name,n,x,big,ok\n\
         plain,1,0.1,1e20,true\n\
         \"with, comma\",-2,1e-300,123456,false\n\
         \"say \"\"hi\"\"\",,NaN,2.5e-7,true\n\
         \"two\nlines\",4,-0,inf,false\n\
         ,5,0.3333333333333333,1000000000000000,true\n"
    );
    // every float reads back exactly
    let last: f64 = text
        .lines()
        .last()
        .unwrap()
        .split(',')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(last, 1.0 / 3.0);

    // An activation frame: the array column is one quoted field per row.
    let run = minilm()
        .run(&TEXTS[..1], &HookSpec::points([HookPoint::ResidPost(0)]))
        .unwrap();
    let acts = run_to_frame(&run).unwrap();
    frame::write_csv(&acts, &path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), acts.height() + 1);
    // The array is written in full: as many numbers as the model's width.
    let first = text.lines().nth(1).unwrap();
    let array = &first[first.find("\"[").unwrap() + 2..first.rfind("]\"").unwrap()];
    let values: Vec<f32> = array.split(", ").map(|v| v.parse().unwrap()).collect();
    let d = acts.column("activation").unwrap().array().unwrap().width();
    assert_eq!(values.len(), d);

    let err = frame::write_csv(&df, "/nonexistent/dir/t.csv")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/dir/t.csv"), "{err}");
}

#[test]
fn frame_errors_name_the_problem() {
    let model = minilm();
    let run = model
        .run(&TEXTS[..1], &HookSpec::points([HookPoint::ResidPost(0)]))
        .unwrap();
    let df = run_to_frame(&run).unwrap();
    let err = frame::hook_matrix(&df, HookPoint::ResidPost(3))
        .unwrap_err()
        .to_string();
    assert!(err.contains("blocks.3.hook_resid_post"), "{err}");
    let err = frame::column_to_tensor(&df, "nope")
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope") && err.contains("activation"), "{err}");
    let err = frame::column_to_tensor(&df, "text")
        .unwrap_err()
        .to_string();
    assert!(err.contains("text") && err.contains("Array"), "{err}");
    let err = frame::read_parquet("/nonexistent/x.parquet")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/x.parquet"), "{err}");
    let t = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(frame::pool(&t, Pooling::Mean)
        .unwrap_err()
        .to_string()
        .contains("[2, 3, 4]"));
    assert!("median"
        .parse::<Pooling>()
        .unwrap_err()
        .to_string()
        .contains("median"));
}

#[test]
fn model_not_found_lists_every_source_tried() {
    let err = Model::load("no-such-model-xyz").unwrap_err().to_string();
    for what in ["path:", "packaged:", "HF cache:", "hub:"] {
        assert!(err.contains(what), "{what} missing in: {err}");
    }
}
