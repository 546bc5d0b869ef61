//! Activation extraction throughput: replens vs HF transformers on the same model, token ids and
//! threads. One work item per process: `extraction-* <model> <batch>` (model `default` or
//! `minilm`), reference `scripts/reference/bench_extract.py <model> <batch>`; `scripts/bench.py`
//! runs both and prints the table of BENCHMARKS.md. Both sides read the same synthetic ids
//! (xorshift, 128 tokens per sequence), keep every residual stream (the embedding and every
//! block's output) and copy it to host memory, as a user reading activations would. Neither
//! computes logits (`HookSpec::without_logits`; the reference runs the decoder's base model).
//! Agreement: both print the mean |x| of block 0's output over the first sequence.

mod common;

use replens::hooks::HookSpec;
use replens::model::{pad_batch, LoadOptions, Model, Precision};

const SEQ: usize = 128;

fn ids(n: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    // xorshift64: the same ids as scripts/reference/bench_extract.py
    let mut s = seed;
    (0..n)
        .map(|_| {
            (0..len)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s % (vocab as u64 - 1000) + 500) as u32
                })
                .collect()
        })
        .collect()
}

fn main() -> replens::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let name = args.first().map(String::as_str).unwrap_or("default");
    let batch: usize = args.get(1).and_then(|b| b.parse().ok()).unwrap_or(1);
    // `<model>-f32`: the model with an f32 encoder (LoadOptions::encoder_precision).
    let (model_name, precision) = match name.strip_suffix("-f32") {
        Some(base) => (base, Precision::F32),
        None => (name, Precision::F64),
    };
    let model = Model::load_with(
        model_name,
        &LoadOptions::default().encoder_precision(precision),
    )?;
    let spec = HookSpec::all_residual().without_logits();
    let data = ids(16, SEQ, model.config().vocab_size(), 42);
    let mut rep = 0;
    let runs = 5;
    let (secs, check) = common::median_time(runs, || -> replens::Result<f64> {
        let start = (rep * batch) % 16;
        rep += 1;
        let chunk = &data[start..(start + batch).min(16)];
        let (input, mask) = pad_batch(chunk, model.device())?;
        let out = model.forward(&input, &mask, &spec)?;
        let mut check = 0.0;
        for (point, t) in out.cache.iter() {
            let host = t.flatten_all()?.to_vec1::<f32>()?;
            if point.to_string() == "blocks.0.hook_resid_post" {
                let first = &host[..SEQ * model.d_model()];
                check = first.iter().map(|v| v.abs() as f64).sum::<f64>() / first.len() as f64;
            }
        }
        Ok(check)
    });
    // `check` is from the last timed run: batch number `runs` (after the warm-up, number 0),
    // which the reference script reproduces
    let tokens_per_s = (batch * SEQ) as f64 / secs;
    common::report(
        &format!("extract-{name}-b{batch}"),
        secs,
        runs,
        check?,
        &format!(
            ", \"tokens_per_s\": {tokens_per_s:.1}, \"threads\": {}",
            candle_core::utils::get_num_threads()
        ),
    );
    Ok(())
}
