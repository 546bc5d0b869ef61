//! Activation extraction throughput (tokens/s): replens vs HF transformers on the same model,
//! inputs and threads. Run: `cargo bench --bench extraction -- [model] [threads]`, and
//! `scripts/reference/bench_extract.py` for the reference side. Both read the same token ids
//! (synthetic, seeded: sequences of 128 tokens), keep every residual hook, batch 1 and 8.
//! Before timing, the two sides' outputs are compared on one batch by the parity tests, not here.

use std::time::Instant;

use replens::hooks::HookSpec;
use replens::model::{pad_batch, Model};

fn ids(n: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    // xorshift: the same ids as scripts/reference/bench_extract.py
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
    let model = Model::load(name)?;
    let seq = 128;
    let spec = HookSpec::all_residual();
    println!(
        "model {name}: {} layers, d={}, threads={}",
        model.n_layers(),
        model.d_model(),
        candle_core::utils::get_num_threads()
    );
    for batch in [1usize, 8] {
        let data = ids(16, seq, model.config().vocab_size(), 42);
        let (input, mask) = pad_batch(&data[..batch], model.device())?;
        model.forward(&input, &mask, &spec)?; // warm-up
        let mut times = Vec::new();
        for rep in 0..5 {
            let chunk =
                &data[(rep * batch) % 16..(rep * batch) % 16 + batch.min(16 - (rep * batch) % 16)];
            let (input, mask) = pad_batch(chunk, model.device())?;
            let started = Instant::now();
            let out = model.forward(&input, &mask, &spec)?;
            // materialise every hook as host memory, as a user reading activations would
            for (_, t) in out.cache.iter() {
                let _ = t.flatten_all()?.to_vec1::<f32>()?;
            }
            times.push((started.elapsed().as_secs_f64(), chunk.len() * seq));
        }
        times.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (secs, tokens) = times[times.len() / 2];
        println!(
            "replens batch={batch} seq={seq}: median {:.3} s/batch, {:.0} tokens/s",
            secs,
            tokens as f64 / secs
        );
    }
    Ok(())
}
