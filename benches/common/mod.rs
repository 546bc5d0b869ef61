//! Shared by the bench binaries: deterministic inputs that `scripts/reference/bench_*.py`
//! regenerates bit for bit, median timing, and the one-line JSON protocol `scripts/bench.py` reads.

#![allow(dead_code)]

use std::time::Instant;

/// splitmix64 of `index + seed·2⁴⁰`, top 24 bits mapped to a float in [-1, 1): exact in f32, so
/// numpy computes the same values (`bench_common.py`).
pub fn uniform(index: u64, seed: u64) -> f32 {
    let mut z = index
        .wrapping_add(seed << 40)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// `rows × d` matrix, column `j` scaled by `1/sqrt(1+j)` (a decaying spectrum like hidden states),
/// rows `first_row..first_row+rows` of the infinite matrix for `seed`.
pub fn matrix(first_row: usize, rows: usize, d: usize, seed: u64) -> Vec<f32> {
    let scale: Vec<f32> = (0..d).map(|j| 1.0 / (1.0 + j as f32).sqrt()).collect();
    let mut out = Vec::with_capacity(rows * d);
    for i in first_row..first_row + rows {
        for (j, s) in scale.iter().enumerate() {
            out.push(uniform((i * d + j) as u64, seed) * s);
        }
    }
    out
}

/// Run `work` `runs` times after one warm-up; returns the median seconds and the last value.
pub fn median_time<T>(runs: usize, mut work: impl FnMut() -> T) -> (f64, T) {
    let mut value = work();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        value = work();
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], value)
}

/// The line `scripts/bench.py` parses.
pub fn report(work: &str, seconds: f64, runs: usize, check: f64, extra: &str) {
    println!(
        "{{\"work\": \"{work}\", \"impl\": \"replens\", \"median_s\": {seconds:.6}, \"runs\": {runs}, \"check\": {check:.10e}{extra}}}"
    );
}
