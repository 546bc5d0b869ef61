//! `replens` command line: the headless twin of the notebooks.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use replens::frame::{self, Pooling};
use replens::hooks::HookSpec;
use replens::model::{source, LoadOptions, Model, RunOptions};
use replens::studies::distribution_shift::FineTuneOptions;

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
        /// Arithmetic of BERT-family encoders: f64 (within 1e-4 of HF) or f32 (faster, as HF
        /// runs; up to ~2e-4 from HF at MiniLM's outlier features). Decoders always use f32.
        #[arg(long, default_value = "f64")]
        precision: String,
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
    /// Study 2: layer × layer similarity (CKA and others) within one model or across two.
    Similarity {
        /// Model whose layers are the rows.
        #[arg(long, default_value = "default")]
        model: String,
        /// Second model (columns); omitted: the first model against itself.
        #[arg(long)]
        model_b: Option<String>,
        /// Corpus: .txt, .jsonl or .parquet.
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value = "text")]
        column: String,
        #[arg(long, default_value_t = 64)]
        max_texts: usize,
        /// linear-cka, rbf-cka, debiased-cka, svcca, pwcca, procrustes, mknn.
        #[arg(long, default_value = "linear-cka")]
        index: String,
        /// Rows of each layer matrix: `tokens` (same tokenizer needed) or a pooling: mean, last, cls.
        #[arg(long, default_value = "tokens")]
        rows: String,
        /// Output directory: similarity.csv, heatmap.svg/.png.
        #[arg(long, default_value = "out/similarity")]
        out: PathBuf,
    },
    /// Study 2: train a toy GPT-2-style model (byte vocabulary, GeLU or SoLU MLPs) on a corpus.
    TrainToy {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value = "text")]
        column: String,
        #[arg(long, default_value_t = 1)]
        layers: usize,
        /// gelu or solu.
        #[arg(long, default_value = "gelu")]
        activation: String,
        #[arg(long, default_value_t = 128)]
        d_model: usize,
        #[arg(long, default_value_t = 300)]
        steps: usize,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Checkpoint directory (config.json, model.safetensors, tokenizer.json).
        #[arg(long)]
        out: PathBuf,
    },
    /// Study 2: stitch A's residual stream into B (and B's into A) at each layer.
    Stitch {
        /// Model A (a directory, e.g. from `train-toy`).
        #[arg(long)]
        model_a: String,
        /// Model B (must tokenize like A; the receiving model must be GPT-2-style).
        #[arg(long)]
        model_b: String,
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value = "text")]
        column: String,
        /// Comma-separated blocks, or `all`.
        #[arg(long, default_value = "all")]
        layers: String,
        #[arg(long, default_value_t = 200)]
        steps: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output directory: stitch.csv, asymmetry.csv.
        #[arg(long, default_value = "out/stitch")]
        out: PathBuf,
    },
    /// Study 4: distribution shift between two labelled corpora (MMD, C2ST, per-PC KS, probe).
    Shift {
        #[arg(long, default_value = "minilm")]
        model: String,
        /// The "train" distribution: JSONL with `text` and an integer label field.
        #[arg(long)]
        train: PathBuf,
        /// The possibly shifted distribution (same format).
        #[arg(long)]
        test: PathBuf,
        /// Integer label field of both files.
        #[arg(long, default_value = "label")]
        label: String,
        /// Texts drawn from each file.
        #[arg(long, default_value_t = 500)]
        n: usize,
        /// mean, last or cls.
        #[arg(long, default_value = "mean")]
        pooling: String,
        #[arg(long, default_value_t = 500)]
        permutations: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Also fine-tune a LoRA classifier (BERT-family encoder only) on the probe's training
        /// rows and compare it with the probe on the same test rows (comparison.csv).
        #[arg(long)]
        fine_tune: bool,
        /// Epochs of the LoRA fine-tuning.
        #[arg(long, default_value_t = FineTuneOptions::default().epochs)]
        ft_epochs: usize,
        /// Peak learning rate of the LoRA fine-tuning.
        #[arg(long, default_value_t = FineTuneOptions::default().lr)]
        ft_lr: f64,
        /// Output directory: report.csv, projections.parquet, pca.svg/.png (+ comparison.csv).
        #[arg(long, default_value = "out/shift")]
        out: PathBuf,
    },
    /// Study 5: AdUE — LoRA-fine-tune MiniLM on a classification set, then compare uncertainty
    /// scores (SR, entropy, MD, RMD, AdUE) by ROC-AUC of the error indicator.
    Adue {
        /// data/classification/<name>_{train,validation,test}.jsonl, e.g. conll2010_uncertainty.
        #[arg(long)]
        dataset: String,
        /// Examples kept per split (stratified).
        #[arg(long, default_value_t = 1000)]
        max_per_split: usize,
        #[arg(long, default_value_t = 3)]
        epochs: usize,
        /// Peak learning rate of the LoRA adapters and the classification head.
        #[arg(long, default_value_t = 5e-4)]
        lr: f64,
        /// Tokens per example (longer texts are truncated).
        #[arg(long, default_value_t = 64)]
        max_len: usize,
        /// The classifier's feature: `cls` (first token, the paper's) or `mean` (masked mean,
        /// how MiniLM was trained).
        #[arg(long, value_enum, default_value_t = PoolingArg::Cls)]
        pooling: PoolingArg,
        /// Before LoRA, fit the head as a logistic-regression probe with this inverse penalty C
        /// on the frozen features (LP-FT); without it the head starts random.
        #[arg(long)]
        warm_start: Option<f64>,
        /// AdUE hyper-parameter grid: `small` (lr {4e-4, 1e-4} × α 0.1 × β 0.1) or `paper` (27 points).
        #[arg(long, value_enum, default_value_t = GridArg::Small)]
        grid: GridArg,
        /// What the AdUE head is fitted on: `auto`, `train` or `validation` (seeded halves).
        #[arg(long, value_enum, default_value_t = HeadDataArg::Auto)]
        head_data: HeadDataArg,
        /// Mini-batch size of the AdUE head's training (the paper's 128 when not given).
        #[arg(long)]
        adue_batch_size: Option<usize>,
        /// Comma-separated seeds (one fine-tuning + AdUE run each).
        #[arg(long, default_value = "0,1,2")]
        seeds: String,
        /// Output directory: results.csv, per_seed.csv, roc.svg, rejection.svg.
        #[arg(long, default_value = "out/adue")]
        out: PathBuf,
    },
    /// Study 3: Information Emergence per layer (macro MI − mean micro MI).
    Emergence {
        #[arg(long, default_value = "default")]
        model: String,
        /// An ICL task (country_capital, animal, colour) or `natural` (needs --file).
        #[arg(long, default_value = "country_capital")]
        task: String,
        #[arg(long, default_value_t = 4)]
        shots: usize,
        /// Number of prompts / sequences.
        #[arg(long, default_value_t = 64)]
        n: usize,
        /// Corpus for `--task natural`.
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, default_value = "text")]
        column: String,
        /// Tokens per natural sequence.
        #[arg(long, default_value_t = 8)]
        tokens: usize,
        /// Comma-separated blocks, or `all`.
        #[arg(long, default_value = "all")]
        layers: String,
        /// mine or infonce.
        #[arg(long, default_value = "mine")]
        estimator: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output directory: emergence.csv, emergence.svg/.png.
        #[arg(long, default_value = "out/emergence")]
        out: PathBuf,
    },
}

fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> replens::Error + '_ {
    move |source| replens::Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn parse_layers(spec: &str, n_layers: usize) -> replens::Result<Vec<usize>> {
    if spec == "all" {
        return Ok((0..n_layers).collect());
    }
    spec.split(',')
        .map(|s| {
            let l: usize = s.trim().parse().map_err(|_| {
                replens::Error::InvalidInput(format!("--layers: '{s}' is not a block number"))
            })?;
            if l >= n_layers {
                return Err(replens::Error::InvalidInput(format!(
                    "--layers: block {l} does not exist (the model has {n_layers})"
                )));
            }
            Ok(l)
        })
        .collect()
}

fn parse_index(name: &str) -> replens::Result<replens::metrics::similarity::Similarity> {
    use replens::metrics::similarity::Similarity;
    Ok(match name {
        "linear-cka" => Similarity::LinearCka,
        "rbf-cka" => Similarity::RbfCka { sigma_frac: 0.8 },
        "debiased-cka" => Similarity::DebiasedCka,
        "svcca" => Similarity::Svcca { keep: 0.99 },
        "pwcca" => Similarity::Pwcca,
        "procrustes" => Similarity::Procrustes,
        "mknn" => Similarity::MutualKnn { k: 10 },
        other => {
            return Err(replens::Error::InvalidInput(format!(
                "--index '{other}': expected linear-cka, rbf-cka, debiased-cka, svcca, pwcca, procrustes or mknn"
            )))
        }
    })
}

fn hook_spec(hooks: &str) -> replens::Result<HookSpec> {
    match hooks {
        "residual" => Ok(HookSpec::all_residual()),
        "all" => Ok(HookSpec::all()),
        list => HookSpec::parse(&list.split(',').map(str::trim).collect::<Vec<_>>()),
    }
}

fn load(name: &str) -> replens::Result<Model> {
    load_with(name, &LoadOptions::default())
}

fn load_with(name: &str, options: &LoadOptions) -> replens::Result<Model> {
    let started = Instant::now();
    let model = Model::load_with(name, options)?;
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
            precision,
        } => {
            let spec = hook_spec(&hooks)?;
            let options = LoadOptions::default().encoder_precision(precision.parse()?);
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
            let model = load_with(&model, &options)?;
            spec.validate(model.n_layers())?;
            // the activation frames have no loss column: skip the unembedding, unless the same
            // in-memory run also gives the pooled frame (whose `loss` column needs the logits)
            let single_file = out.extension().is_some_and(|e| e == "parquet");
            let pooled_from_same_run = pooling.is_some() && single_file;
            let spec = if pooled_from_same_run {
                spec
            } else {
                spec.without_logits()
            };
            let opts = RunOptions::default()
                .batch_size(batch_size)
                .truncate(truncate);
            let started = Instant::now();
            let n_tokens: usize = model
                .prepare_ids(&model.tokenize(&texts)?, truncate)?
                .iter()
                .map(Vec::len)
                .sum();
            let mut kept_run = None;
            let rows = if single_file {
                let run = model.run_with(&texts, &spec, &opts)?;
                let df = frame::run_to_frame(&run)?;
                frame::write_parquet(&df, &out)?;
                if pooled_from_same_run {
                    kept_run = Some(run);
                }
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
                // The directory output streams batch by batch and keeps no run: run the last
                // hook again.
                let run = match kept_run {
                    Some(run) => run,
                    None => model.run_with(
                        &texts,
                        &HookSpec::points([hook]),
                        &opts.clone().progress(false),
                    )?,
                };
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
        Command::Similarity {
            model,
            model_b,
            file,
            column,
            max_texts,
            index,
            rows,
            out,
        } => {
            use replens::studies::similarity::{layer_representations, layer_similarity, Rows};
            let index = parse_index(&index)?;
            let rows = match rows.as_str() {
                "tokens" => Rows::Tokens,
                pooling => Rows::Pooled(pooling.parse::<Pooling>()?),
            };
            let mut texts = replens::data::read_texts(&file, &column)?;
            texts.truncate(max_texts);
            let opts = RunOptions::default().truncate(true);
            let a = load(&model)?;
            let reps_a = layer_representations(&a, &texts, rows, &opts)?;
            let reps_b = match &model_b {
                Some(name) => layer_representations(&load(name)?, &texts, rows, &opts)?,
                None => reps_a.clone(),
            };
            let started = Instant::now();
            let sim = layer_similarity(&reps_a, &reps_b, index)?;
            eprintln!(
                "{} on {} rows × {} × {} layer pairs in {:.1} s",
                index.name(),
                reps_a.n_rows(),
                sim.values.len(),
                sim.values.first().map_or(0, Vec::len),
                started.elapsed().as_secs_f64()
            );
            std::fs::create_dir_all(&out).map_err(io_err(&out))?;
            frame::write_csv(&sim.frame, out.join("similarity.csv"))?;
            let chart = sim.heatmap()?;
            chart.save_svg(out.join("heatmap.svg"))?;
            chart.save_png(out.join("heatmap.png"))?;
            println!("{}", sim.frame);
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Command::TrainToy {
            file,
            column,
            layers,
            activation,
            d_model,
            steps,
            batch,
            lr,
            seed,
            out,
        } => {
            use replens::train::toy::{train_toy, ToyActivation, ToyConfig};
            let activation = match activation.as_str() {
                "gelu" => ToyActivation::Gelu,
                "solu" => ToyActivation::Solu,
                other => {
                    return Err(replens::Error::InvalidInput(format!(
                        "--activation '{other}': expected gelu or solu"
                    )))
                }
            };
            let texts = replens::data::read_texts(&file, &column)?;
            let cfg = ToyConfig::new(layers, activation)
                .d_model(d_model)
                .d_mlp(4 * d_model)
                .seed(seed);
            let toy = train_toy(&cfg, &texts, steps, batch, lr)?;
            toy.save(&out)?;
            println!(
                "{}: held-out loss {:.4} → {:.4} nats/byte; saved to {}",
                cfg.label(),
                toy.log.initial_eval_loss().unwrap_or(f64::NAN),
                toy.log.final_eval_loss().unwrap_or(f64::NAN),
                out.display()
            );
            Ok(())
        }
        Command::Stitch {
            model_a,
            model_b,
            file,
            column,
            layers,
            steps,
            seed,
            out,
        } => {
            use replens::train::stitch::{stitch_matrix, StitchConfig};
            let texts = replens::data::read_texts(&file, &column)?;
            let a = load(&model_a)?;
            let b = load(&model_b)?;
            let layers = parse_layers(&layers, a.n_layers().min(b.n_layers()))?;
            let cfg = StitchConfig::default().steps(steps).seed(seed);
            let m = stitch_matrix(&a, &b, &layers, &texts, &cfg)?;
            std::fs::create_dir_all(&out).map_err(io_err(&out))?;
            frame::write_csv(&m.to_frame()?, out.join("stitch.csv"))?;
            frame::write_csv(&m.asymmetry_frame()?, out.join("asymmetry.csv"))?;
            println!("{}", m.summary());
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Command::Shift {
            model,
            train,
            test,
            label,
            n,
            pooling,
            permutations,
            seed,
            fine_tune,
            ft_epochs,
            ft_lr,
            out,
        } => {
            use replens::studies::distribution_shift::{
                run_distribution_shift, LabelledTexts, ShiftConfig,
            };
            let name_of = |p: &std::path::Path| {
                p.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| p.display().to_string())
            };
            let (train_name, mut test_name) = (name_of(&train), name_of(&test));
            if train_name == test_name {
                test_name.push_str(" (test)");
            }
            let a = LabelledTexts::from_jsonl(&train, train_name, &label)?;
            let b = LabelledTexts::from_jsonl(&test, test_name, &label)?;
            let mut cfg = ShiftConfig::default()
                .model(model.clone())
                .pooling(pooling.parse::<Pooling>()?)
                .n_per_group(n)
                .n_permutations(permutations)
                .seed(seed)
                .progress(true);
            if fine_tune {
                cfg = cfg.fine_tune(FineTuneOptions::default().epochs(ft_epochs).lr(ft_lr));
            }
            let model = load(&model)?;
            let started = Instant::now();
            let res = run_distribution_shift(&model, &a, &b, &cfg)?;
            eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
            std::fs::create_dir_all(&out).map_err(io_err(&out))?;
            frame::write_csv(&res.report.to_frame()?, out.join("report.csv"))?;
            frame::write_parquet(&res.projections, out.join("projections.parquet"))?;
            let chart = res.scatter_chart(1, 2)?;
            chart.save_svg(out.join("pca.svg"))?;
            chart.save_png(out.join("pca.png"))?;
            println!("{}", res.report);
            if let Some(probe) = &res.probe {
                println!("{}", probe.to_frame(&res.train_name, &res.shifted_name)?);
            }
            if res.fine_tune.is_some() {
                let cmp = res.comparison_frame()?;
                frame::write_csv(&cmp, out.join("comparison.csv"))?;
                println!("probe vs LoRA fine-tuning (same test rows):\n{cmp}");
            }
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Command::Adue {
            dataset,
            max_per_split,
            epochs,
            lr,
            max_len,
            pooling,
            warm_start,
            grid,
            head_data,
            adue_batch_size,
            seeds,
            out,
        } => {
            use replens::studies::adue::{run_adue_study, AdueStudyConfig, HeadData};
            use replens::train::adue::AdueGrid;
            use replens::train::lora::Pooling;
            let seeds = seeds
                .split(',')
                .map(|s| {
                    s.trim().parse::<u64>().map_err(|_| {
                        replens::Error::InvalidInput(format!("--seeds: '{s}' is not a seed"))
                    })
                })
                .collect::<replens::Result<Vec<_>>>()?;
            let cfg = AdueStudyConfig::new(dataset)
                .max_per_split(max_per_split)
                .epochs(epochs)
                .lr(lr)
                .max_len(max_len)
                .pooling(match pooling {
                    PoolingArg::Cls => Pooling::Cls,
                    PoolingArg::Mean => Pooling::Mean,
                })
                .head_data(match head_data {
                    HeadDataArg::Auto => HeadData::Auto,
                    HeadDataArg::Train => HeadData::Train,
                    HeadDataArg::Validation => HeadData::ValidationHalves,
                })
                .seeds(seeds)
                .progress(true);
            let cfg = match warm_start {
                Some(c) => cfg.warm_start(c),
                None => cfg,
            };
            let cfg = match grid {
                GridArg::Small => cfg, // AdueStudyConfig's default grid
                GridArg::Paper => cfg.grid(AdueGrid::paper()),
            };
            let cfg = match adue_batch_size {
                Some(n) => {
                    let adue = replens::train::adue::AdueConfig {
                        batch_size: n,
                        ..cfg.adue.clone()
                    };
                    cfg.adue(adue)
                }
                None => cfg,
            };
            let res = run_adue_study(&cfg)?;
            std::fs::create_dir_all(&out).map_err(io_err(&out))?;
            frame::write_csv(&res.to_frame()?, out.join("results.csv"))?;
            frame::write_csv(&res.seeds_frame()?, out.join("per_seed.csv"))?;
            res.roc_chart()?.save_svg(out.join("roc.svg"))?;
            res.rejection_chart()?.save_svg(out.join("rejection.svg"))?;
            println!("{res}");
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Command::Emergence {
            model,
            task,
            shots,
            n,
            file,
            column,
            tokens,
            layers,
            estimator,
            seed,
            out,
        } => {
            use replens::metrics::emergence::{
                icl_prompts, information_emergence, information_emergence_ids, natural_sequences,
                IclTask, IeConfig, MiEstimator,
            };
            use replens::train::mine::MiConfig;
            let estimator = match estimator.as_str() {
                "mine" => MiEstimator::Mine,
                "infonce" => MiEstimator::InfoNce,
                other => {
                    return Err(replens::Error::InvalidInput(format!(
                        "--estimator '{other}': expected mine or infonce"
                    )))
                }
            };
            let model = load(&model)?;
            let layers = parse_layers(&layers, model.n_layers())?;
            let cfg = IeConfig::default()
                .estimator(estimator)
                .mi(MiConfig::default().seed(seed));
            let result = if task == "natural" {
                let file = file.ok_or_else(|| {
                    replens::Error::InvalidInput("--task natural needs --file".into())
                })?;
                let texts = replens::data::read_texts(&file, &column)?;
                let ids = natural_sequences(&model, &texts, tokens, n)?;
                information_emergence_ids(&model, &ids, &layers, &cfg)?
            } else {
                let prompts = icl_prompts(&IclTask::load(&task)?, shots, n, seed)?;
                information_emergence(&model, &prompts, &layers, &cfg)?
            };
            std::fs::create_dir_all(&out).map_err(io_err(&out))?;
            frame::write_csv(&result.to_frame()?, out.join("emergence.csv"))?;
            println!("{result}");
            eprintln!("wrote {}", out.display());
            Ok(())
        }
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
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let csv = out.join("summary.csv");
    std::fs::write(&csv, res.summary_csv()).map_err(io_err(&csv))?;
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

/// `replens adue --pooling`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum PoolingArg {
    Cls,
    Mean,
}

/// `replens adue --grid`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum GridArg {
    Small,
    Paper,
}

/// `replens adue --head-data`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum HeadDataArg {
    Auto,
    Train,
    Validation,
}
