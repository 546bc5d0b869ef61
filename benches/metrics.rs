//! Metric kernels timed on the same inputs as `scripts/reference/bench_metrics.py`.
//! Run one work item per process (so that peak memory is per item), e.g.
//! `target/debug/deps/metrics-* erank-10k`; `scripts/bench.py` runs them all with the reference
//! side and prints the table of BENCHMARKS.md.

mod common;

use candle_core::{Device, Tensor};
use replens::metrics::erank::{erank, Centring, ColumnMeanAccumulator, CovarianceAccumulator};
use replens::Result;

const D: usize = 768;
const CHUNK: usize = 4096;

fn chunks(rows: usize, d: usize, seed: u64) -> Result<Vec<Tensor>> {
    (0..rows)
        .step_by(CHUNK)
        .map(|start| {
            let n = CHUNK.min(rows - start);
            Ok(Tensor::from_vec(
                common::matrix(start, n, d, seed),
                (n, d),
                &Device::Cpu,
            )?)
        })
        .collect()
}

/// eRank of one in-memory matrix (the paper's per-sentence computation, at corpus scale).
fn erank_in_memory(rows: usize) -> Result<()> {
    let x = Tensor::from_vec(common::matrix(0, rows, D, 1), (rows, D), &Device::Cpu)?;
    let (secs, value) = common::median_time(5, || erank(&x));
    common::report(&format!("erank-{}k", rows / 1000), secs, 5, value?, "");
    Ok(())
}

/// eRank streamed over 4096-row chunks: column mean pass, then the covariance pass; O(d²) state.
fn erank_streaming(rows: usize) -> Result<()> {
    let data = chunks(rows, D, 1)?;
    let run = || -> Result<f64> {
        let mut mean = ColumnMeanAccumulator::new(D);
        for c in &data {
            mean.push(c)?;
        }
        let mut cov = CovarianceAccumulator::new(D, Centring::Mean(mean.mean()?))?;
        for c in &data {
            cov.push(c)?;
        }
        Ok(cov.report()?.erank)
    };
    let (secs, value) = common::median_time(3, run);
    common::report(
        &format!("erank-stream-{}k", rows / 1000),
        secs,
        3,
        value?,
        "",
    );
    Ok(())
}

fn main() -> Result<()> {
    let work = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| "erank-10k".into());
    match work.as_str() {
        "erank-10k" => erank_in_memory(10_000),
        "erank-100k" => erank_in_memory(100_000),
        "erank-stream-100k" => erank_streaming(100_000),
        other => {
            eprintln!("unknown work item '{other}' (erank-10k, erank-100k, erank-stream-100k)");
            std::process::exit(2)
        }
    }
}
