//! `replens` command line: the headless twin of the notebooks.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use replens::frame::{self, Pooling};
use replens::hooks::HookSpec;
use replens::model::{source, Model, RunOptions};

#[derive(Parser)]
#[command(
    name = "replens",
    version,
    about = "Measure what happens inside language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capture activations at hook points and write them as Parquet.
    Activations {
        /// Model: packaged alias (smollm2-135m, minilm), HF directory, .gguf file or hub id.
        #[arg(long, default_value = "default")]
        model: String,
        /// Text to run (repeatable).
        #[arg(long)]
        text: Vec<String>,
        /// File of texts: .txt (one per line), .jsonl or .parquet.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Text column/field for .jsonl and .parquet files.
        #[arg(long, default_value = "text")]
        column: String,
        /// Hooks: `residual` (embed + every resid_post), `all`, or comma-separated names.
        #[arg(long, default_value = "residual")]
        hooks: String,
        /// Output: a directory (Parquet partitioned by model and hook) or a `.parquet` file.
        #[arg(long, default_value = "out/activations")]
        out: PathBuf,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Truncate texts longer than the context window instead of failing.
        #[arg(long)]
        truncate: bool,
        /// Also write one pooled vector per text (mean, last, cls) of the last hook to `pooled.parquet`.
        #[arg(long)]
        pooling: Option<String>,
    },
    /// Show a model's source, architecture and hook names.
    Info {
        #[arg(long, default_value = "default")]
        model: String,
    },
    /// List the packaged models and where they are looked for.
    Models,
    /// Study 1: Diff-eRank and ΔL of a model against its untrained twin (Wei et al. 2024).
    DiffErank {
        /// Model: packaged alias (default, minilm), HF directory, .gguf file or hub id.
        #[arg(long, default_value = "default")]
        model: String,
        /// Corpus: .txt (one text per line), .jsonl or .parquet.
        #[arg(long)]
        file: PathBuf,
        /// Text column/field for .jsonl and .parquet files.
        #[arg(long, default_value = "text")]
        column: String,
        /// Use at most this many texts (the first ones).
        #[arg(long)]
        max_texts: Option<usize>,
        /// Truncate texts to this many tokens (the paper: 2048).
        #[arg(long, default_value_t = 2048)]
        max_tokens: usize,
        /// Seed of the untrained twin's initialisation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Bootstrap resamples for the confidence intervals.
        #[arg(long, default_value_t = 1000)]
        resamples: usize,
        /// Confidence level of the intervals.
        #[arg(long, default_value_t = 0.95)]
        level: f64,
        /// `all` (per-layer curves too) or `last`.
        #[arg(long, default_value = "all")]
        layers: String,
        /// Output directory: summary.csv, summary.parquet, per_sentence.parquet,
        /// per_layer.parquet, per_layer.svg/.png.
        #[arg(long, default_value = "out/diff-erank")]
        out: PathBuf,
    },
}

fn hook_spec(hooks: &str) -> replens::Result<HookSpec> {
    match hooks {
        "residual" => Ok(HookSpec::all_residual()),
        "all" => Ok(HookSpec::all()),
        list => HookSpec::parse(&list.split(',').map(str::trim).collect::<Vec<_>>()),
    }
}

fn load(name: &str) -> replens::Result<Model> {
    let started = Instant::now();
    let model = Model::load(name)?;
    eprintln!(
        "loaded {} ({}, {} layers, d={}) from {} in {:.1} s",
        name,
        model.config().family(),
        model.n_layers(),
        model.d_model(),
        model.source().describe(),
        started.elapsed().as_secs_f32()
    );
    Ok(model)
}

fn run(cli: Cli) -> replens::Result<()> {
    match cli.command {
        Command::Activations {
            model,
            text,
            file,
            column,
            hooks,
            out,
            batch_size,
            truncate,
            pooling,
        } => {
            let spec = hook_spec(&hooks)?;
            let mut texts = text;
            if let Some(file) = file {
                texts.extend(replens::data::read_texts(&file, &column)?);
            }
            if texts.is_empty() {
                return Err(replens::Error::InvalidInput(
                    "no input: give --text or --file".into(),
                ));
            }
            let pooling = pooling.map(|p| p.parse::<Pooling>()).transpose()?;
            let model = load(&model)?;
            spec.validate(model.n_layers())?;
            let opts = RunOptions::default()
                .batch_size(batch_size)
                .truncate(truncate);
            let started = Instant::now();
            let n_tokens: usize = model
                .prepare_ids(&model.tokenize(&texts)?, truncate)?
                .iter()
                .map(Vec::len)
                .sum();
            let rows = if out.extension().is_some_and(|e| e == "parquet") {
                let run = model.run_with(&texts, &spec, &opts)?;
                let df = frame::run_to_frame(&run)?;
                frame::write_parquet(&df, &out)?;
                df.height()
            } else {
                frame::extract_to_parquet(&model, &texts, &spec, &opts, &out)?
            };
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "{} texts, {n_tokens} tokens, {rows} rows → {} in {secs:.1} s ({:.0} tokens/s)",
                texts.len(),
                out.display(),
                n_tokens as f64 / secs
            );
            if let Some(pooling) = pooling {
                let hook = *spec
                    .expand(model.n_layers())
                    .last()
                    .ok_or_else(|| replens::Error::InvalidInput("no hooks selected".into()))?;
                let run = model.run_with(
                    &texts,
                    &HookSpec::points([hook]),
                    &opts.clone().progress(false),
                )?;
                let df = frame::pooled_frame(&run, hook, pooling)?;
                let dir = if out.extension().is_some() {
                    out.parent().map(PathBuf::from).unwrap_or_default()
                } else {
                    out.clone()
                };
                let path = dir.join("pooled.parquet");
                frame::write_parquet(&df, &path)?;
                eprintln!("pooled {hook} ({pooling:?}) → {}", path.display());
            }
            Ok(())
        }
        Command::Info { model } => {
            let model = load(&model)?;
            println!("family: {}", model.config().family());
            println!(
                "layers: {}  d_model: {}  vocab: {}  context: {}",
                model.n_layers(),
                model.d_model(),
                model.config().vocab_size(),
                model.config().max_positions()
            );
            println!("hooks:");
            for p in HookSpec::all().expand(model.n_layers()) {
                println!("  {p}");
            }
            Ok(())
        }
        Command::DiffErank {
            model,
            file,
            column,
            max_texts,
            max_tokens,
            seed,
            batch_size,
            resamples,
            level,
            layers,
            out,
        } => diff_erank_command(
            &model, &file, &column, max_texts, max_tokens, seed, batch_size, resamples, level,
            &layers, &out,
        ),
        Command::Models => {
            println!("models directory: {}", source::models_dir().display());
            for name in source::packaged_names() {
                match source::resolve(name) {
                    Ok(s) => println!("  {name}: {}", s.path.display()),
                    Err(_) => println!("  {name}: not installed (run scripts/setup)"),
                }
            }
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn diff_erank_command(
    model: &str,
    file: &std::path::Path,
    column: &str,
    max_texts: Option<usize>,
    max_tokens: usize,
    seed: u64,
    batch_size: usize,
    resamples: usize,
    level: f64,
    layers: &str,
    out: &std::path::Path,
) -> replens::Result<()> {
    use replens::studies::{run_diff_erank, DiffErankConfig, Layers};
    let layers: Layers = layers.parse()?;
    let texts = replens::data::read_texts(file, column)?;
    let model = load(model)?;
    let mut cfg = DiffErankConfig::default()
        .max_tokens(max_tokens)
        .seed(seed)
        .batch_size(batch_size)
        .n_resamples(resamples)
        .level(level)
        .layers(layers);
    cfg.max_texts = max_texts;
    let started = Instant::now();
    let res = run_diff_erank(&model, &texts, &cfg)?;
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    std::fs::create_dir_all(out).map_err(|source| replens::Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let csv = out.join("summary.csv");
    std::fs::write(&csv, res.summary_csv()).map_err(|source| replens::Error::Io {
        path: csv.clone(),
        source,
    })?;
    frame::write_parquet(&res.to_frame()?, out.join("summary.parquet"))?;
    frame::write_parquet(&res.per_sentence, out.join("per_sentence.parquet"))?;
    if let Some(pl) = &res.per_layer {
        frame::write_parquet(pl, out.join("per_layer.parquet"))?;
        let col = |name: &str| -> replens::Result<Vec<f64>> {
            Ok(pl
                .column(name)?
                .f64()?
                .iter()
                .map(|v| v.unwrap_or(f64::NAN))
                .collect())
        };
        let layer_no: Vec<f64> = (0..pl.height()).map(|l| l as f64).collect();
        let chart = replens::plot::LineChart::new(format!(
            "eRank per layer: {} vs its untrained twin",
            res.model
        ))
        .x_label("block (hook_resid_post)")
        .y_label("dataset eRank exp(mean H)")
        .series("trained", &layer_no, &col("erank_trained")?)
        .series("untrained", &layer_no, &col("erank_untrained")?)
        .build()?;
        chart.save_svg(out.join("per_layer.svg"))?;
        chart.save_png(out.join("per_layer.png"))?;
    }
    print!("{res}");
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.to_string().replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
