//! Metric kernels timed on the same inputs as `scripts/reference/bench_metrics.py`.
//! Run one work item per process (so that peak memory is per item), e.g.
//! `target/debug/deps/metrics-* erank-10k`; `scripts/bench.py` runs them all with the reference
//! side and prints the table of BENCHMARKS.md.

mod common;

use candle_core::{Device, Tensor};
use replens::metrics::erank::{
    erank, erank_report_with, Centring, ColumnMeanAccumulator, CovarianceAccumulator,
    ErankAccumulator, ErankOptions, GramPrecision,
};
use replens::metrics::shift::{mmd_permutation_test, MmdOptions};
use replens::metrics::similarity::linear_cka;
use replens::train::adue::{AdueConfig, LinearHead, Split};
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

/// [`erank_in_memory`] with the Gram product in f32, the precision of the reference (the
/// official code runs in the input's fp32); the eigen-solve stays f64.
fn erank_f32_gram(rows: usize) -> Result<()> {
    let x = Tensor::from_vec(common::matrix(0, rows, D, 1), (rows, D), &Device::Cpu)?;
    let opts = ErankOptions {
        precision: GramPrecision::F32,
        ..ErankOptions::default()
    };
    let (secs, value) = common::median_time(5, || erank_report_with(&x, &opts).map(|r| r.erank));
    common::report(
        &format!("erank-{}k-f32gram", rows / 1000),
        secs,
        5,
        value?,
        "",
    );
    Ok(())
}

/// eRank streamed over 4096-row chunks: column mean pass, then the covariance pass; O(d²) state.
/// `precision` is each chunk's Gram product (summed in f64 either way).
fn erank_streaming(rows: usize, precision: GramPrecision) -> Result<()> {
    let data = chunks(rows, D, 1)?;
    let run = || -> Result<f64> {
        let mut mean = ColumnMeanAccumulator::new(D);
        for c in &data {
            mean.push(c)?;
        }
        let mut cov =
            CovarianceAccumulator::new(D, Centring::Mean(mean.mean()?))?.with_precision(precision);
        for c in &data {
            cov.push(c)?;
        }
        Ok(cov.report()?.erank)
    };
    let (secs, value) = common::median_time(3, run);
    let suffix = if precision == GramPrecision::F32 {
        "-f32gram"
    } else {
        ""
    };
    common::report(
        &format!("erank-stream-{}k{suffix}", rows / 1000),
        secs,
        3,
        value?,
        "",
    );
    Ok(())
}

/// Token counts of the corpus sentences: 16 to 128, spread by a fixed stride (mean ≈ 72).
fn sentence_lengths(sentences: usize) -> Vec<usize> {
    (0..sentences).map(|i| 16 + (37 * i) % 113).collect()
}

/// Diff-eRank's dataset workload: one eRank per sentence (`N_i × 768`, N_i = 16–128 tokens),
/// averaged as exp(mean H) over the corpus. Consecutive rows of one matrix form the sentences.
fn erank_corpus(sentences: usize) -> Result<()> {
    let lengths = sentence_lengths(sentences);
    let mut data = Vec::with_capacity(sentences);
    let mut first_row = 0;
    for &n in &lengths {
        let rows = common::matrix(first_row, n, D, 9);
        data.push(Tensor::from_vec(rows, (n, D), &Device::Cpu)?);
        first_row += n;
    }
    let run = || -> Result<f64> {
        let mut acc = ErankAccumulator::new();
        for sentence in &data {
            acc.push(sentence)?;
        }
        Ok(acc.result()?.erank)
    };
    let (secs, value) = common::median_time(3, run);
    common::report(&format!("erank-corpus-{sentences}"), secs, 3, value?, "");
    Ok(())
}

/// `y = 0.5·x + noise`, both `rows × d` (so that CKA is far from 0 and 1).
fn correlated_pair(rows: usize, d: usize) -> Result<(Tensor, Tensor)> {
    let x = common::matrix(0, rows, d, 2);
    let noise = common::matrix(0, rows, d, 3);
    let y: Vec<f32> = x.iter().zip(&noise).map(|(a, n)| 0.5 * a + n).collect();
    Ok((
        Tensor::from_vec(x, (rows, d), &Device::Cpu)?,
        Tensor::from_vec(y, (rows, d), &Device::Cpu)?,
    ))
}

/// Linear CKA (Kornblith et al. 2019) of two 50k × 768 matrices, in feature space.
fn cka_50k() -> Result<()> {
    let (x, y) = correlated_pair(50_000, D)?;
    let (secs, value) = common::median_time(3, || linear_cka(&x, &y));
    common::report("cka-50k", secs, 3, value?, "");
    Ok(())
}

/// AdUE head fit: 20 full-batch epochs (Adam + one-cycle, the paper's loss) on 6000 × 768
/// training features, validation ROC-AUC after every epoch on 2000 more.
fn adue_fit() -> Result<()> {
    let (n_train, n_val) = (6000, 2000);
    let z = common::matrix(0, n_train + n_val, D, 4);
    let labels: Vec<usize> = (0..n_train + n_val)
        .map(|i| usize::from(common::uniform(i as u64, 6) > 0.0))
        .collect();
    let w: Vec<f32> = common::matrix(0, 2, D, 5).iter().map(|v| 0.1 * v).collect();
    let head = LinearHead::new(
        &Tensor::from_vec(w, (2, D), &Device::Cpu)?,
        &Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu)?,
    )?;
    let z_train = Tensor::from_vec(z[..n_train * D].to_vec(), (n_train, D), &Device::Cpu)?;
    let z_val = Tensor::from_vec(z[n_train * D..].to_vec(), (n_val, D), &Device::Cpu)?;
    let cfg = AdueConfig::default()
        .lr(1e-2)
        .alpha(0.1)
        .beta(0.01)
        .epochs(20)
        .patience(1000)
        .batch_size(n_train)
        .seed(0);
    let run = || -> Result<f64> {
        let fitted = cfg.fit(
            &head,
            Split::new(&z_train, &labels[..n_train]),
            Split::new(&z_val, &labels[n_train..]),
        )?;
        Ok(fitted.log().last().map_or(f64::NAN, |e| e.loss))
    };
    let (secs, value) = common::median_time(3, run);
    common::report("adue-fit-6k", secs, 3, value?, "");
    Ok(())
}

/// MMD permutation test (RBF, median heuristic, 500 permutations), 5000 × 384 per group,
/// the second group shifted by 0.02 in every coordinate.
fn mmd_5k() -> Result<()> {
    let (n, d) = (5000, 384);
    let x = Tensor::from_vec(common::matrix(0, n, d, 7), (n, d), &Device::Cpu)?;
    let y: Vec<f32> = common::matrix(0, n, d, 8)
        .iter()
        .map(|v| v + 0.02)
        .collect();
    let y = Tensor::from_vec(y, (n, d), &Device::Cpu)?;
    let opts = MmdOptions::default();
    let (secs, value) = common::median_time(3, || mmd_permutation_test(&x, &y, &opts));
    common::report("mmd-perm-5k", secs, 3, value?.statistic, "");
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
        "erank-10k-f32gram" => erank_f32_gram(10_000),
        "erank-corpus-50" => erank_corpus(50),
        "erank-stream-100k" => erank_streaming(100_000, GramPrecision::F64),
        "erank-stream-100k-f32gram" => erank_streaming(100_000, GramPrecision::F32),
        "cka-50k" => cka_50k(),
        "adue-fit-6k" => adue_fit(),
        "mmd-perm-5k" => mmd_5k(),
        other => {
            eprintln!("unknown work item '{other}' (erank-10k, erank-10k-f32gram, erank-corpus-50, erank-100k, erank-stream-100k, erank-stream-100k-f32gram, cka-50k, adue-fit-6k, mmd-perm-5k)");
            std::process::exit(2)
        }
    }
}
