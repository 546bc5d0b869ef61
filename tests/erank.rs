//! eRank / Diff-eRank (Wei et al., NeurIPS 2024, arXiv 2401.17139) and the bootstrap
//! statistics: golden fixtures from scripts/reference/erank_reference.py (torch, f64),
//! known answers, invariances, streaming = batch, degenerate input, eigen-solver checks.

use std::collections::HashMap;
use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use replens::candle_core::{DType, Device, Tensor};
use replens::metrics::erank::{
    alignment_of_eranks, diff_erank, entropy, erank, erank_or_skip, erank_ratio, erank_report,
    erank_report_with, image_reduction_ratio, image_text_alignment, symmetric_eigenvalues,
    Centring, ColumnMeanAccumulator, CovarianceAccumulator, DiffErank, DiffErankAccumulator,
    ErankAccumulator, ErankOptions, GramPrecision, SentenceErank, Side, Skip,
};
use replens::metrics::stats::{
    bootstrap_ci, mean, paired_bootstrap_ci, pearson, pearson_ci, quantile,
};

type R = replens::Result<()>;

fn fixtures() -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/erank/erank_cases.safetensors");
    replens::candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; regenerate with /opt/ref/venv/bin/python scripts/reference/erank_reference.py",
            path.display()
        )
    })
}

fn scalar(t: &HashMap<String, Tensor>, key: &str) -> f64 {
    t[key]
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()[0]
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

fn randn(rng: &mut StdRng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| rng.sample::<f64, _>(StandardNormal))
        .collect()
}

fn t64(v: Vec<f64>, n: usize, d: usize) -> Tensor {
    Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap()
}

fn t32(v: &[f64], n: usize, d: usize) -> Tensor {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap()
}

/// Random orthogonal d x d (modified Gram–Schmidt of a Gaussian matrix), row-major.
fn random_orthogonal(rng: &mut StdRng, d: usize) -> Vec<f64> {
    let mut q = randn(rng, d * d); // rows are the vectors
    for i in 0..d {
        for j in 0..i {
            let dot: f64 = (0..d).map(|k| q[i * d + k] * q[j * d + k]).sum();
            for k in 0..d {
                q[i * d + k] -= dot * q[j * d + k];
            }
        }
        let nrm: f64 = (0..d).map(|k| q[i * d + k].powi(2)).sum::<f64>().sqrt();
        for k in 0..d {
            q[i * d + k] /= nrm;
        }
    }
    q
}

fn matmul(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * m];
    for i in 0..n {
        for l in 0..k {
            let x = a[i * k + l];
            for j in 0..m {
                c[i * m + j] += x * b[l * m + j];
            }
        }
    }
    c
}

/// Cyclic Jacobi eigenvalues (the slow, simple oracle for the Householder+QL solver).
fn jacobi_eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        let total: f64 = a.iter().map(|x| x * x).sum();
        if off <= 1e-30 * total.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    let mut e: Vec<f64> = (0..n).map(|i| a[i * n + i]).collect();
    e.sort_by(|x, y| y.total_cmp(x));
    e
}

// ---------------------------------------------------------------------------------------
// Golden fixtures
// ---------------------------------------------------------------------------------------

#[test]
fn matches_reference_fixtures() -> R {
    let fx = fixtures();
    let mut cases: Vec<String> = fx
        .keys()
        .filter(|k| k.ends_with(".input") && !k.starts_with("dataset."))
        .map(|k| k.trim_end_matches(".input").to_string())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 8,
        "expected >= 8 fixture cases, found {cases:?}"
    );
    let (mut worst, mut worst_f32, mut worst_fp32_official) = (0.0f64, 0.0f64, 0.0f64);
    for case in &cases {
        let input = &fx[&format!("{case}.input")];
        let want_h = scalar(&fx, &format!("{case}.entropy"));
        let want_e = scalar(&fx, &format!("{case}.erank"));
        let want_e32 = scalar(&fx, &format!("{case}.erank_fp32"));
        let want_zero = scalar(&fx, &format!("{case}.zero_rows")) as usize;
        let want_spec = fx[&format!("{case}.spectrum")].to_vec1::<f64>()?;
        for side in [Side::Auto, Side::Covariance, Side::Gram] {
            let opts = ErankOptions {
                side,
                precision: GramPrecision::F64,
            };
            let rep = erank_report_with(input, &opts)?;
            let r = rel(rep.erank, want_e);
            worst = worst.max(r);
            assert!(
                r <= 1e-5,
                "{case} {side:?}: eRank {} vs reference {want_e} (rel {r:.2e})",
                rep.erank
            );
            assert!(
                (rep.entropy - want_h).abs() <= 1e-6 * want_h.max(1.0),
                "{case}: entropy"
            );
            assert_eq!(rep.zero_rows, want_zero, "{case}: zero rows");
            // Leading eigenvalues agree with torch's singular values.
            for (k, (a, b)) in rep.spectrum.iter().zip(&want_spec).take(10).enumerate() {
                assert!((a - b).abs() <= 1e-9, "{case} {side:?}: λ{k} {a} vs {b}");
            }
        }
        let f32rep = erank_report_with(
            input,
            &ErankOptions {
                side: Side::Auto,
                precision: GramPrecision::F32,
            },
        )?;
        worst_f32 = worst_f32.max(rel(f32rep.erank, want_e));
        worst_fp32_official = worst_fp32_official.max(rel(want_e32, want_e));
        println!(
            "{case:18} eRank {:.12} ref {want_e:.12} rel {:.1e} | f32 Gram rel {:.1e} | torch fp32 rel {:.1e}",
            erank(input)?,
            rel(erank(input)?, want_e),
            rel(f32rep.erank, want_e),
            rel(want_e32, want_e)
        );
    }
    println!(
        "max rel |ΔeRank| vs f64 reference: f64 Gram {worst:.2e}, f32 Gram {worst_f32:.2e} \
         (official code in fp32: {worst_fp32_official:.2e})"
    );
    assert!(worst_f32 <= 1e-4, "f32 Gram drifted: {worst_f32:.2e}");
    Ok(())
}

#[test]
fn dataset_fixture_diff_erank() -> R {
    let fx = fixtures();
    let n = scalar(&fx, "dataset.num_sentences") as usize;
    let want_h0 = fx["dataset.entropies_untrained"].to_vec1::<f64>()?;
    let want_h1 = fx["dataset.entropies_trained"].to_vec1::<f64>()?;
    let want_diff = scalar(&fx, "dataset.diff_erank");

    let (mut a0, mut a1) = (ErankAccumulator::new(), ErankAccumulator::new());
    let mut paired = DiffErankAccumulator::new();
    for i in 0..n {
        let r0 = &fx[&format!("dataset.untrained.{i}")];
        let r1 = &fx[&format!("dataset.trained.{i}")];
        a0.push(r0)?;
        a1.push(r1)?;
        paired.push_pair(r0, r1)?;
    }
    for (got, want) in [(a0.entropies(), &want_h0), (a1.entropies(), &want_h1)] {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want.iter()) {
            assert!((g - w).abs() <= 1e-9 * w.max(1.0), "entropy {g} vs {w}");
        }
    }
    let d = DiffErank::from_accumulators(&a0, &a1)?;
    assert!(rel(d.diff, want_diff) <= 1e-8, "{} vs {want_diff}", d.diff);
    assert!(rel(d.untrained.erank, scalar(&fx, "dataset.erank_untrained")) <= 1e-8);
    assert!(rel(d.trained.erank, scalar(&fx, "dataset.erank_trained")) <= 1e-8);
    assert_eq!(d.untrained.skipped_too_few_rows, 1);
    assert_eq!(d.trained.sentences, n - 1);
    assert!(rel(diff_erank(a0.entropies(), a1.entropies()), want_diff) <= 1e-12);
    let p = paired.result()?;
    assert!(rel(p.diff, want_diff) <= 1e-8);
    assert_eq!(p.untrained.skipped_too_few_rows, 1);
    assert_eq!(paired.skipped_pairs(), 1);
    let ci = paired.bootstrap_ci(500, 0.9, 3)?;
    assert!(
        ci.lower <= ci.estimate && ci.estimate <= ci.upper && ci.lower > 0.0,
        "{ci}"
    );
    println!(
        "dataset Diff-eRank {} (ref {want_diff}); paired bootstrap {ci}",
        p.diff
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Known answers and invariances
// ---------------------------------------------------------------------------------------

#[test]
fn isotropic_gaussian_has_erank_close_to_d() -> R {
    let mut rng = StdRng::seed_from_u64(1);
    let (n, d) = (20_000, 32);
    let x = randn(&mut rng, n * d);
    let e = erank(&t32(&x, n, d))?;
    // Sampling: eigenvalues of the sample covariance fluctuate by ~sqrt(d/n) = 4%,
    // which lowers exp(H) by O(d/n) relative.
    assert!(rel(e, d as f64) < 0.01, "eRank {e} vs d = {d}");
    Ok(())
}

#[test]
fn exact_small_answers() -> R {
    // ±e_1..±e_k around the origin: Z has k orthogonal directions, each 2 of 2k rows: eRank k.
    for k in 1..=6 {
        let d = 9;
        let mut v = vec![0.0; 2 * k * d];
        for i in 0..k {
            v[(2 * i) * d + i] = 1.0;
            v[(2 * i + 1) * d + i] = -1.0;
        }
        let e = erank(&t32(&v, 2 * k, d))?;
        assert!((e - k as f64).abs() < 1e-10, "k={k}: {e}");
    }
    // Rank one after centring.
    let mut rng = StdRng::seed_from_u64(2);
    let (n, d) = (50, 40);
    let (a, u, c) = (randn(&mut rng, n), randn(&mut rng, d), randn(&mut rng, d));
    let x: Vec<f64> = (0..n * d).map(|i| a[i / d] * u[i % d] + c[i % d]).collect();
    let e = erank(&t32(&x, n, d))?;
    assert!((e - 1.0).abs() < 1e-6, "rank-1: {e}");
    // Two rows are always ±w after centring: eRank 1, entropy 0.
    assert!(entropy(&t32(&randn(&mut rng, 2 * 7), 2, 7))?.abs() < 1e-12);
    Ok(())
}

#[test]
fn invariances() -> R {
    let mut rng = StdRng::seed_from_u64(3);
    let (n, d) = (60, 24);
    // Anisotropic data so the eRank is not trivially d.
    let x: Vec<f64> = randn(&mut rng, n * d)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (-((i % d) as f64) / 5.0).exp())
        .collect();
    let base = erank(&t64(x.clone(), n, d))?;
    // Global scaling (any sign).
    for c in [-3.7, 1e-3, 1e3] {
        let y: Vec<f64> = x.iter().map(|v| v * c).collect();
        assert!(rel(erank(&t64(y, n, d))?, base) < 1e-10, "scale {c}");
    }
    // Same vector added to every row.
    let shift = randn(&mut rng, d);
    let y: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, v)| v + 10.0 * shift[i % d])
        .collect();
    assert!(rel(erank(&t64(y, n, d))?, base) < 1e-9, "translation");
    // Row permutation.
    let mut y = Vec::with_capacity(n * d);
    for i in (0..n).rev() {
        y.extend_from_slice(&x[i * d..(i + 1) * d]);
    }
    assert!(rel(erank(&t64(y, n, d))?, base) < 1e-10, "permutation");
    // Rotation of the feature space R -> RQ.
    let q = random_orthogonal(&mut rng, d);
    let y = matmul(&x, &q, n, d, d);
    assert!(rel(erank(&t64(y, n, d))?, base) < 1e-9, "rotation");
    // NOT invariant to per-row scaling (centring comes before normalisation).
    let y: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + (i / d) as f64))
        .collect();
    assert!(
        rel(erank(&t64(y, n, d))?, base) > 1e-4,
        "per-row scaling should change eRank"
    );
    Ok(())
}

#[test]
fn covariance_side_equals_gram_side() -> R {
    let mut rng = StdRng::seed_from_u64(4);
    for (n, d) in [(50, 30), (30, 50), (17, 17), (3, 200)] {
        let x = randn(&mut rng, n * d);
        let t = t64(x, n, d);
        let get = |side| {
            erank_report_with(
                &t,
                &ErankOptions {
                    side,
                    precision: GramPrecision::F64,
                },
            )
        };
        let (a, b, auto) = (get(Side::Covariance)?, get(Side::Gram)?, get(Side::Auto)?);
        assert!(
            rel(a.erank, b.erank) < 1e-10,
            "{n}x{d}: {} vs {}",
            a.erank,
            b.erank
        );
        assert_eq!(
            auto.side,
            if d <= n { Side::Covariance } else { Side::Gram }
        );
        for (x, y) in a.spectrum.iter().zip(&b.spectrum).take(n.min(d)) {
            assert!((x - y).abs() < 1e-12);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------

#[test]
fn accumulators_equal_batch() -> R {
    let mut rng = StdRng::seed_from_u64(5);
    let d = 20;
    let lens = [5usize, 1, 30, 12, 2, 44];
    let blocks: Vec<Vec<f64>> = lens.iter().map(|&n| randn(&mut rng, n * d)).collect();

    let mut acc = ErankAccumulator::new();
    for (b, &n) in blocks.iter().zip(&lens) {
        let got = acc.push(&t64(b.clone(), n, d))?;
        if n < 2 {
            assert_eq!(got, None);
        } else {
            assert_eq!(got, Some(entropy(&t64(b.clone(), n, d))?));
        }
    }
    let res = acc.result()?;
    assert_eq!(res.sentences, lens.len() - 1);
    assert_eq!(res.skipped_too_few_rows, 1);
    assert!(rel(res.erank, mean(acc.entropies()).exp()) < 1e-15);

    // Pooled rows, two passes (mean, then Σ zzᵀ) == eRank of the concatenation.
    let all: Vec<f64> = blocks.concat();
    let n_all: usize = lens.iter().sum();
    let batch = erank(&t64(all.clone(), n_all, d))?;
    let mut means = ColumnMeanAccumulator::new(d);
    for (b, &n) in blocks.iter().zip(&lens) {
        means.push(&t64(b.clone(), n, d))?;
    }
    let mut cov = CovarianceAccumulator::new(d, Centring::Mean(means.mean()?))?;
    for (b, &n) in blocks.iter().zip(&lens) {
        cov.push(&t64(b.clone(), n, d))?;
    }
    let rep = cov.report()?;
    assert_eq!(rep.rows, n_all);
    assert!(
        rel(rep.erank, batch) < 1e-10,
        "pooled {} vs batch {batch}",
        rep.erank
    );

    // The same pooled eRank with each block's Gram product in f32, summed in f64: within f32
    // rounding of the f64 answer, and the f32 blocks do change the arithmetic.
    let mut cov = CovarianceAccumulator::new(d, Centring::Mean(means.mean()?))?
        .with_precision(GramPrecision::F32);
    for (b, &n) in blocks.iter().zip(&lens) {
        cov.push(&t32(b, n, d))?;
    }
    let f32_blocks = cov.report()?.erank;
    assert!(
        rel(f32_blocks, batch) < 1e-6 && f32_blocks != batch,
        "pooled with f32 blocks {f32_blocks} vs batch {batch}"
    );

    // Per-block centring == eRank of the concatenated per-block-centred rows
    // (the single-row block is zero after its own centring and is skipped).
    let mut cov = CovarianceAccumulator::new(d, Centring::PerBlock)?;
    let mut centred = Vec::new();
    for (b, &n) in blocks.iter().zip(&lens) {
        cov.push(&t64(b.clone(), n, d))?;
        if n >= 2 {
            let m: Vec<f64> = (0..d)
                .map(|j| (0..n).map(|i| b[i * d + j]).sum::<f64>() / n as f64)
                .collect();
            centred.extend(b.iter().enumerate().map(|(i, v)| v - m[i % d]));
        }
    }
    let rep = cov.report()?;
    assert_eq!(rep.zero_rows, 1);
    let want = erank(&t64(centred, n_all - 1, d))?;
    assert!(
        rel(rep.erank, want) < 1e-10,
        "per-block {} vs {want}",
        rep.erank
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Degenerate input
// ---------------------------------------------------------------------------------------

fn err_text(r: replens::Result<f64>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn degenerate_input() -> R {
    let one = t64(vec![1.0, 2.0, 3.0], 1, 3);
    assert!(err_text(erank(&one)).contains("at least 2 rows"));
    assert_eq!(
        erank_or_skip(&one, &ErankOptions::default())?,
        SentenceErank::Skipped(Skip::TooFewRows { rows: 1 })
    );
    let mut v = vec![0.5; 12];
    v[2 * 3 + 1] = f64::NAN;
    let msg = err_text(erank(&t64(v.clone(), 4, 3)));
    assert!(
        msg.contains("NaN") && msg.contains("row 2, column 1"),
        "{msg}"
    );
    v[2 * 3 + 1] = f64::INFINITY;
    assert!(err_text(erank(&t64(v, 4, 3))).contains("infinite"));
    let same = t64([1.0, -2.0, 3.0].repeat(5), 5, 3);
    assert!(err_text(erank(&same)).contains("identical"));
    let flat = Tensor::new(&[1f32, 2., 3.], &Device::Cpu)?;
    assert!(err_text(erank(&flat)).contains("2-D"));
    let cube = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu)?;
    assert!(err_text(erank(&cube)).contains("2-D"));
    let empty_d = Tensor::zeros((4, 0), DType::F32, &Device::Cpu)?;
    assert!(erank(&empty_d).is_err());

    // One zero row (equal to the column mean) is skipped and counted.
    let rows = [[2.0, 0.0], [-2.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, -1.0]];
    let rep = erank_report(&t64(rows.concat(), 5, 2))?;
    assert_eq!(rep.zero_rows, 1);
    assert!((rep.erank - 2.0).abs() < 1e-12);

    // The accumulator skips and counts, and names the sentence on real errors.
    let mut acc = ErankAccumulator::new();
    assert_eq!(acc.push(&same)?, None);
    assert_eq!(acc.push(&one)?, None);
    assert!(acc.result().is_err());
    let mut bad = vec![0.0; 6];
    bad[4] = f64::NAN;
    let msg = acc.push(&t64(bad, 2, 3)).unwrap_err().to_string();
    assert!(msg.contains("sentence 2") && msg.contains("NaN"), "{msg}");
    let msg = acc.push(&t64(vec![0.0; 8], 2, 4)).unwrap_err().to_string();
    assert!(msg.contains("dimension 4"), "{msg}");
    assert!(CovarianceAccumulator::new(3, Centring::Mean(vec![0.0; 2])).is_err());
    assert!(diff_erank(&[], &[1.0]).is_nan());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Multi-modal ratios (synthetic, exact answers)
// ---------------------------------------------------------------------------------------

#[test]
fn multimodal_ratios() -> R {
    // "Image tokens" before the projector: ±e_1..±e_8 in 16 dims (eRank 8). The "projector"
    // maps e_{2j} and e_{2j+1} to the same direction f_j of a 32-dim space (eRank 4).
    let (k, d0, d1) = (8, 16, 32);
    let mut before = vec![0.0; 2 * k * d0];
    let mut after = vec![0.0; 2 * k * d1];
    for i in 0..k {
        for (s, sign) in [(0, 1.0), (1, -1.0)] {
            before[(2 * i + s) * d0 + i] = sign;
            after[(2 * i + s) * d1 + 3 * (i / 2)] = sign;
        }
    }
    let (b, a) = (t32(&before, 2 * k, d0), t32(&after, 2 * k, d1));
    assert!((erank(&b)? - 8.0).abs() < 1e-9);
    assert!((erank(&a)? - 4.0).abs() < 1e-9);
    assert!((image_reduction_ratio(&b, &a)? - 0.5).abs() < 1e-9);
    assert!((erank_ratio(&b, &a)? - 2.0).abs() < 1e-9);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Eigen-solver
// ---------------------------------------------------------------------------------------

#[test]
fn symmetric_eigenvalues_match_jacobi_and_known_spectra() -> R {
    let mut rng = StdRng::seed_from_u64(6);
    for n in [1usize, 2, 3, 5, 10, 33, 64] {
        let g = randn(&mut rng, n * n);
        let a: Vec<f64> = (0..n * n).map(|i| g[i] + g[(i % n) * n + i / n]).collect();
        let got = symmetric_eigenvalues(a.clone(), n)?;
        let want = jacobi_eigenvalues(a, n);
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (x, y) in got.iter().zip(&want) {
            assert!((x - y).abs() <= 1e-11 * scale, "n={n}: {x} vs {y}");
        }
    }
    // Prescribed spectrum with multiplicities and zeros: Q diag(λ) Qᵀ.
    let n = 40;
    let lam: Vec<f64> = (0..n)
        .map(|i| [5.0, 5.0, 5.0, 1.0, 1e-6, 0.0][i % 6])
        .collect();
    let q = random_orthogonal(&mut rng, n);
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = (0..n).map(|k| q[k * n + i] * lam[k] * q[k * n + j]).sum();
        }
    }
    let got = symmetric_eigenvalues(a, n)?;
    let mut want = lam.clone();
    want.sort_by(|x, y| y.total_cmp(x));
    for (x, y) in got.iter().zip(&want) {
        assert!((x - y).abs() < 1e-12, "{x} vs {y}");
    }
    // A rank-deficient Gram matrix (a big cluster of zero eigenvalues): QL must converge.
    let (n, r) = (150, 5);
    let z = randn(&mut rng, n * r);
    let mut g = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            g[i * n + j] = (0..r).map(|k| z[i * r + k] * z[j * r + k]).sum();
        }
    }
    let got = symmetric_eigenvalues(g.clone(), n)?;
    let want = jacobi_eigenvalues(g, n);
    let scale = want[0];
    for (x, y) in got.iter().zip(&want) {
        assert!((x - y).abs() <= 1e-11 * scale, "rank-5 Gram: {x} vs {y}");
    }
    assert!(got[r..].iter().all(|v| v.abs() < 1e-12 * scale));
    // Zero, diagonal, 2x2 analytic.
    assert_eq!(symmetric_eigenvalues(vec![0.0; 9], 3)?, vec![0.0; 3]);
    assert_eq!(
        symmetric_eigenvalues(vec![1.0, 0.0, 0.0, 3.0], 2)?,
        vec![3.0, 1.0]
    );
    let e = symmetric_eigenvalues(vec![2.0, 1.0, 1.0, 2.0], 2)?;
    assert!((e[0] - 3.0).abs() < 1e-15 && (e[1] - 1.0).abs() < 1e-15);
    assert!(symmetric_eigenvalues(vec![1.0; 5], 2).is_err());
    assert!(symmetric_eigenvalues(vec![f64::NAN, 0.0, 0.0, 1.0], 2).is_err());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Bootstrap statistics
// ---------------------------------------------------------------------------------------

#[test]
fn quantile_and_pearson_known_answers() -> R {
    assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
    assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.0), 1.0);
    assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 1.0), 4.0);
    assert!((quantile(&[10.0, 20.0], 0.25) - 12.5).abs() < 1e-12);
    assert!((pearson(&[1., 2., 3., 4., 5.], &[2., 1., 4., 3., 5.])? - 0.8).abs() < 1e-12);
    assert!((pearson(&[1., 2., 3.], &[-2., -4., -6.])? + 1.0).abs() < 1e-12);
    assert!(pearson(&[1., 1., 1.], &[1., 2., 3.]).is_err());
    assert!(pearson(&[1., 2.], &[1.]).is_err());
    assert!(pearson(&[1.], &[1.]).is_err());
    Ok(())
}

#[test]
fn bootstrap_mean_ci_covers_at_nominal_rate_and_shrinks() -> R {
    let mut rng = StdRng::seed_from_u64(7);
    let (mu, sigma) = (1.5, 2.0);
    let reps = 1000;
    let mut covered = 0;
    for r in 0..reps {
        let x: Vec<f64> = randn(&mut rng, 40).iter().map(|z| mu + sigma * z).collect();
        let ci = bootstrap_ci(&x, mean, 1000, 0.95, r as u64)?;
        assert!(ci.lower <= ci.estimate && ci.estimate <= ci.upper);
        covered += ci.contains(mu) as usize;
    }
    let rate = covered as f64 / reps as f64;
    println!(
        "95% percentile-bootstrap CI of the mean, n=40: coverage {rate:.3} over {reps} samples"
    );
    // Percentile intervals under-cover slightly at n = 40 (≈ 0.93); binomial sd ≈ 0.008 at 1000 samples.
    assert!((0.91..=0.97).contains(&rate), "coverage {rate}");

    // Width ~ 1/sqrt(n): n = 100 vs n = 1600 should differ by ~4x.
    let width = |n: usize, rng: &mut StdRng| -> replens::Result<f64> {
        let mut w = 0.0;
        for s in 0..5 {
            let x: Vec<f64> = randn(rng, n).iter().map(|z| mu + sigma * z).collect();
            w += bootstrap_ci(&x, mean, 1000, 0.95, s)?.width();
        }
        Ok(w / 5.0)
    };
    let ratio = width(100, &mut rng)? / width(1600, &mut rng)?;
    println!("CI width ratio n=100 / n=1600: {ratio:.3} (expected 4)");
    assert!((3.3..=4.8).contains(&ratio), "ratio {ratio}");
    Ok(())
}

#[test]
fn bootstrap_is_seeded_and_validates() -> R {
    let x: Vec<f64> = (0..50).map(|i| (i as f64).sin()).collect();
    let a = bootstrap_ci(&x, mean, 300, 0.9, 11)?;
    let b = bootstrap_ci(&x, mean, 300, 0.9, 11)?;
    let c = bootstrap_ci(&x, mean, 300, 0.9, 12)?;
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(bootstrap_ci(&[], mean, 10, 0.9, 0).is_err());
    assert!(bootstrap_ci(&x, mean, 0, 0.9, 0).is_err());
    assert!(bootstrap_ci(&x, mean, 10, 1.0, 0).is_err());
    assert!(bootstrap_ci(&[1.0, f64::NAN], mean, 10, 0.9, 0).is_err());
    assert!(paired_bootstrap_ci(&x, &x[1..], |a, _| mean(a), 10, 0.9, 0).is_err());
    Ok(())
}

#[test]
fn paired_bootstrap_and_pearson_ci() -> R {
    let mut rng = StdRng::seed_from_u64(8);
    // Correlated normal pairs with rho = 0.6.
    let rho: f64 = 0.6;
    let n = 500;
    let (z1, z2) = (randn(&mut rng, n), randn(&mut rng, n));
    let x = z1.clone();
    let y: Vec<f64> = z1
        .iter()
        .zip(&z2)
        .map(|(a, b)| rho * a + (1.0 - rho * rho).sqrt() * b)
        .collect();
    let ci = pearson_ci(&x, &y, 2000, 0.95, 1)?;
    println!("pearson {ci}");
    assert!(ci.contains(rho), "{ci}");
    assert!(ci.width() < 0.2 && ci.n_valid == 2000);

    // Pairing matters: for strongly correlated entropies the paired CI of Diff-eRank is
    // much narrower than what independent resampling would give.
    let h0: Vec<f64> = (0..200)
        .map(|_| 3.0 + 0.3 * rng.sample::<f64, _>(StandardNormal))
        .collect();
    let h1: Vec<f64> = h0
        .iter()
        .map(|h| h - 1.0 + 0.01 * rng.sample::<f64, _>(StandardNormal))
        .collect();
    let paired = paired_bootstrap_ci(&h0, &h1, diff_erank, 1000, 0.95, 2)?;
    let e0 = bootstrap_ci(&h0, |h| mean(h).exp(), 1000, 0.95, 3)?;
    let e1 = bootstrap_ci(&h1, |h| mean(h).exp(), 1000, 0.95, 4)?;
    assert!(paired.contains(diff_erank(&h0, &h1)));
    assert!(
        paired.width() < 0.5 * (e0.width() + e1.width()),
        "{paired} vs {e0} {e1}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Timing (run with --ignored --nocapture)
// ---------------------------------------------------------------------------------------

#[test]
#[ignore]
fn timing_10000x768() -> R {
    let mut rng = StdRng::seed_from_u64(9);
    let (n, d) = (10_000, 768);
    let x = t32(&randn(&mut rng, n * d), n, d);
    for precision in [GramPrecision::F64, GramPrecision::F32] {
        let opts = ErankOptions {
            side: Side::Auto,
            precision,
        };
        let t0 = std::time::Instant::now();
        let rep = erank_report_with(&x, &opts)?;
        println!(
            "erank 10000x768 ({precision:?} Gram): {:.3} s, eRank {:.4}",
            t0.elapsed().as_secs_f64(),
            rep.erank
        );
    }
    let q = Tensor::randn(0f64, 1.0, (768, 768), &Device::Cpu)?;
    let q = (q.t()? + &q)?.flatten_all()?.to_vec1::<f64>()?;
    let t0 = std::time::Instant::now();
    symmetric_eigenvalues(q, 768)?;
    println!(
        "symmetric_eigenvalues 768x768: {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[test]
fn image_text_alignment_known_answers() -> replens::Result<()> {
    let dev = Device::Cpu;
    // k orthogonal directions, each with its negative: eRank exactly k, at any width.
    let spread = |k: usize, width: usize| -> replens::Result<Tensor> {
        let eye = Tensor::eye(width, DType::F32, &dev)?.narrow(0, 0, k)?;
        Ok(Tensor::cat(&[&eye, &eye.neg()?], 0)?)
    };
    // equal spreads: perfectly aligned, whatever the widths
    let a = image_text_alignment(&spread(3, 8)?, &spread(3, 5)?, &spread(3, 16)?)?;
    assert!((a - 1.0).abs() < 1e-9, "{a}");
    // 2, 4, 8 directions: min/max = 1/4
    let a = image_text_alignment(&spread(2, 8)?, &spread(4, 8)?, &spread(8, 8)?)?;
    assert!((a - 0.25).abs() < 1e-9, "{a}");
    // order does not matter, and it is never above 1
    let b = image_text_alignment(&spread(8, 8)?, &spread(2, 8)?, &spread(4, 8)?)?;
    assert!((a - b).abs() < 1e-12 && b <= 1.0);
    assert!(alignment_of_eranks(&[]).is_err());
    assert!(alignment_of_eranks(&[3.0, f64::NAN]).is_err());
    assert!(alignment_of_eranks(&[3.0, 0.0]).is_err());
    // a degenerate set is an error, not NaN
    let one_row = Tensor::ones((1, 4), DType::F32, &dev)?;
    assert!(image_text_alignment(&one_row, &spread(2, 4)?, &spread(2, 4)?).is_err());
    Ok(())
}
