//! Similarity indices (study 2) and the f64 linear algebra under them: golden values from
//! scripts/reference/similarity_reference.py (numpy float64, formulas re-derived from
//! Kornblith 2019 / Raghu 2017 / Morcos 2018 / Ding 2021 / platonic-rep), closed-form known
//! answers (invariances, independence), streaming = batch, and bad input.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use replens::candle_core::{DType, Device, Tensor};
use replens::metrics::linalg::{symmetric_eigen, Precision};
use replens::metrics::similarity::{
    debiased_cka, linear_cka, linear_cka_with, mutual_knn, procrustes_distance, pwcca, rbf_cka,
    similarity_frame, similarity_matrix, svcca, LinearCkaAccumulator, Similarity,
};

type R = replens::Result<()>;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/similarity")
}

fn tensors() -> HashMap<String, Tensor> {
    let path = fixture_dir().join("cases.safetensors");
    replens::candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; regenerate with /opt/ref/venv/bin/python scripts/reference/similarity_reference.py",
            path.display()
        )
    })
}

fn expected() -> serde_json::Value {
    let path = fixture_dir().join("expected.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
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

/// Random orthogonal d × d: the eigenvectors of a random symmetric matrix.
fn random_orthogonal(rng: &mut StdRng, d: usize) -> Tensor {
    let a = randn(rng, d * d);
    let mut s = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            s[i * d + j] = a[i * d + j] + a[j * d + i];
        }
    }
    let (_, v) = symmetric_eigen(&s, d).unwrap();
    t64(v, d, d)
}

const CASES: [&str; 3] = ["small", "wide_offset", "rank_deficient"];

#[test]
fn every_index_matches_the_numpy_reference() -> R {
    let t = tensors();
    let exp = expected();
    let mut worst: HashMap<&str, f64> = HashMap::new();
    for case in CASES {
        let x = &t[&format!("{case}.x")];
        let y = &t[&format!("{case}.y")];
        let e = &exp["cases"][case];
        let get = |k: &str| e[k].as_f64().unwrap_or_else(|| panic!("{case}: no {k}"));
        let checks: Vec<(&str, f64, f64)> = vec![
            ("linear_cka", linear_cka(x, y)?, get("linear_cka")),
            ("rbf_cka_0.5", rbf_cka(x, y, 0.5)?, get("rbf_cka_0.5")),
            ("rbf_cka_0.8", rbf_cka(x, y, 0.8)?, get("rbf_cka_0.8")),
            ("debiased_cka", debiased_cka(x, y)?, get("debiased_cka")),
            ("svcca_0.99", svcca(x, y, 0.99)?, get("svcca_0.99")),
            ("svcca_0.9", svcca(x, y, 0.9)?, get("svcca_0.9")),
            ("pwcca_xy", pwcca(x, y)?, get("pwcca_xy")),
            ("pwcca_yx", pwcca(y, x)?, get("pwcca_yx")),
            ("procrustes", procrustes_distance(x, y)?, get("procrustes")),
            ("mutual_knn_5", mutual_knn(x, y, 5)?, get("mutual_knn_5")),
            ("mutual_knn_10", mutual_knn(x, y, 10)?, get("mutual_knn_10")),
        ];
        for (name, got, want) in checks {
            let r = rel(got, want);
            assert!(
                r <= 1e-9,
                "{case} {name}: replens {got} vs numpy {want} (rel {r:.2e})"
            );
            let w = worst.entry(name).or_insert(0.0);
            *w = w.max(r);
        }
        // The enum dispatches to the same functions.
        let via_enum = Similarity::Svcca { keep: 0.99 }.compute(x, y)?;
        assert_eq!(via_enum, svcca(x, y, 0.99)?);
    }
    let mut names: Vec<_> = worst.into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    for (name, r) in names {
        println!("max rel error vs numpy, {name:>14}: {r:.2e}");
    }
    Ok(())
}

#[test]
fn f32_inputs_use_the_fast_gram_within_1e5() -> R {
    let t = tensors();
    let exp = expected();
    for case in CASES {
        let x = &t[&format!("{case}.x")];
        let y = &t[&format!("{case}.y")];
        let (x32, y32) = (x.to_dtype(DType::F32)?, y.to_dtype(DType::F32)?);
        let want = exp["cases"][case]["linear_cka"].as_f64().unwrap();
        let fast = linear_cka(&x32, &y32)?;
        let exact = linear_cka_with(&x32, &y32, Precision::F64)?;
        // f32 rounding of the inputs (incl. the 1000-sized offsets) plus the f32 products.
        assert!(rel(fast, want) < 1e-5, "{case}: f32 {fast} vs {want}");
        assert!(
            rel(fast, exact) < 1e-5,
            "{case}: f32 Gram {fast} vs f64 Gram {exact}"
        );
    }
    Ok(())
}

/// A NaN or infinite value after the rows that set the shifts is reported with its position,
/// in the f32 path that reads the rows in place as in the f64 one.
#[test]
fn non_finite_values_in_a_later_batch_are_located() -> R {
    let (n, d1, d2) = (12, 5, 3);
    let values = |len: usize, seed: usize| -> Vec<f64> {
        (0..len)
            .map(|i| ((i * 7 + seed * 13) % 11) as f64 - 5.0)
            .collect()
    };
    for dtype in [DType::F32, DType::F64] {
        let x = Tensor::from_vec(values(n * d1, 1), (n, d1), &Device::Cpu)?.to_dtype(dtype)?;
        let y = Tensor::from_vec(values(n * d2, 2), (n, d2), &Device::Cpu)?.to_dtype(dtype)?;
        let mut bad = values(n * d1, 1);
        bad[3 * d1 + 1] = f64::NAN;
        let x_nan = Tensor::from_vec(bad, (n, d1), &Device::Cpu)?.to_dtype(dtype)?;
        let mut bad = values(n * d2, 2);
        bad[7 * d2 + 2] = f64::INFINITY;
        let y_inf = Tensor::from_vec(bad, (n, d2), &Device::Cpu)?.to_dtype(dtype)?;
        let mut acc = LinearCkaAccumulator::new(d1, d2);
        acc.push(&x, &y)?;
        let e = acc.clone().push(&x_nan, &y).unwrap_err().to_string();
        assert!(
            e.contains("x") && e.contains("NaN") && e.contains("row 3") && e.contains("column 1"),
            "{dtype:?}: {e}"
        );
        let e = acc.push(&x, &y_inf).unwrap_err().to_string();
        assert!(
            e.contains("y")
                && e.contains("infinite")
                && e.contains("row 7")
                && e.contains("column 2"),
            "{dtype:?}: {e}"
        );
    }
    Ok(())
}

#[test]
fn symmetric_eigen_matches_numpy_eigh() -> R {
    let t = tensors();
    let exp = expected();
    for (name, nvec) in [("sym30", 30usize), ("gram16_rank5", 5)] {
        let e = &exp["eigen"][name];
        let n = e["n"].as_u64().unwrap() as usize;
        let a = t[&format!("eigen.{name}.a")]
            .flatten_all()?
            .to_vec1::<f64>()?;
        let want_v = t[&format!("eigen.{name}.vectors")]
            .flatten_all()?
            .to_vec1::<f64>()?;
        let want: Vec<f64> = e["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let (vals, vecs) = symmetric_eigen(&a, n)?;
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (g, w) in vals.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-12 * scale,
                "{name}: eigenvalue {g} vs {w}"
            );
        }
        // Eigenvectors of distinct eigenvalues agree up to sign (the null space of the
        // rank-5 matrix is only defined as a subspace, so only its top 5 are compared).
        for j in 0..nvec {
            let dot: f64 = (0..n).map(|i| vecs[i * n + j] * want_v[i * n + j]).sum();
            assert!(
                (dot.abs() - 1.0).abs() < 1e-10,
                "{name}: vector {j}, |dot| = {dot}"
            );
        }
        // A = VΛVᵀ and VᵀV = I to 1e-10 (relative to max |a|).
        let amax = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for i in 0..n {
            for j in 0..n {
                let r: f64 = (0..n)
                    .map(|k| vecs[i * n + k] * vals[k] * vecs[j * n + k])
                    .sum();
                assert!(
                    (r - a[i * n + j]).abs() <= 1e-10 * amax,
                    "{name}: A[{i}][{j}]"
                );
                let o: f64 = (0..n).map(|k| vecs[k * n + i] * vecs[k * n + j]).sum();
                let id = if i == j { 1.0 } else { 0.0 };
                assert!((o - id).abs() <= 1e-10, "{name}: VᵀV[{i}][{j}] = {o}");
            }
        }
    }
    Ok(())
}

#[test]
fn cka_is_one_under_rotation_scale_and_shift() -> R {
    let mut rng = StdRng::seed_from_u64(1);
    let (n, d) = (80, 16);
    let x = t64(randn(&mut rng, n * d), n, d);
    let q = random_orthogonal(&mut rng, d);
    let shift = t64(randn(&mut rng, d), 1, d);
    let y = (x.matmul(&q)? * 3.7)?.broadcast_add(&shift)?;
    assert!((linear_cka(&x, &y)? - 1.0).abs() < 1e-12);
    assert!((rbf_cka(&x, &y, 0.8)? - 1.0).abs() < 1e-12);
    assert!((debiased_cka(&x, &y)? - 1.0).abs() < 1e-12);
    assert!(procrustes_distance(&x, &y)? < 1e-12);
    assert!((svcca(&x, &y, 0.99)? - 1.0).abs() < 1e-10);
    assert!((pwcca(&x, &y)? - 1.0).abs() < 1e-10);
    // Cosine neighbours ignore rotation and scale (not shift: kNN works on raw rows).
    let yr = (x.matmul(&q)? * 0.25)?;
    assert_eq!(mutual_knn(&x, &yr, 7)?, 1.0);
    assert_eq!(mutual_knn(&x, &x, 1)?, 1.0);
    // Widths may differ: zero-padding features changes nothing.
    let padded = Tensor::cat(&[&x, &Tensor::zeros((n, 5), DType::F64, &Device::Cpu)?], 1)?;
    assert!((linear_cka(&x, &padded)? - 1.0).abs() < 1e-12);
    assert!(procrustes_distance(&padded, &x)? < 1e-12);
    Ok(())
}

#[test]
fn debiased_cka_is_near_zero_for_independent_noise() -> R {
    let mut rng = StdRng::seed_from_u64(2);
    let (n, d1, d2) = (500, 32, 24);
    let x = t64(randn(&mut rng, n * d1), n, d1);
    let y = t64(randn(&mut rng, n * d2), n, d2);
    let biased = linear_cka(&x, &y)?;
    let debiased = debiased_cka(&x, &y)?;
    println!("independent Gaussians n={n}: linear CKA {biased:.4}, debiased {debiased:.4}");
    assert!(debiased.abs() < 0.05, "debiased CKA {debiased}");
    // The biased estimator is pulled up by ~√(d1·d2)/n: the point of the debiasing.
    assert!(biased > 0.03 && biased > debiased + 0.02, "biased {biased}");
    Ok(())
}

#[test]
fn streaming_linear_cka_equals_batch() -> R {
    let t = tensors();
    for case in CASES {
        let x = &t[&format!("{case}.x")];
        let y = &t[&format!("{case}.y")];
        let (n, d1) = x.dims2()?;
        let d2 = y.dims2()?.1;
        let mut acc = LinearCkaAccumulator::new(d1, d2);
        let mut r0 = 0;
        for len in [7usize, 1, 0, 13, 2]
            .into_iter()
            .chain(std::iter::repeat(11))
        {
            let len = len.min(n - r0);
            acc.push(&x.narrow(0, r0, len)?, &y.narrow(0, r0, len)?)?;
            r0 += len;
            if r0 == n {
                break;
            }
        }
        assert_eq!(acc.n(), n);
        let (s, b) = (acc.finish()?, linear_cka(x, y)?);
        assert!((s - b).abs() < 1e-10, "{case}: streaming {s} vs batch {b}");
    }
    // f32 batches through the fast path stay within the f32 budget.
    let x = t["wide_offset.x"].to_dtype(DType::F32)?;
    let y = t["wide_offset.y"].to_dtype(DType::F32)?;
    let mut acc = LinearCkaAccumulator::new(40, 24);
    acc.push(&x.narrow(0, 0, 50)?, &y.narrow(0, 0, 50)?)?;
    acc.push(&x.narrow(0, 50, 70)?, &y.narrow(0, 50, 70)?)?;
    assert!(rel(acc.finish()?, linear_cka(&x, &y)?) < 1e-5);
    Ok(())
}

#[test]
fn similarity_matrix_within_and_across_models() -> R {
    let t = tensors();
    let layers: Vec<Tensor> = CASES
        .iter()
        .map(|c| t[&format!("{c}.x")].narrow(0, 0, 50).unwrap())
        .collect();
    let other: Vec<Tensor> = CASES
        .iter()
        .map(|c| t[&format!("{c}.y")].narrow(0, 0, 50).unwrap())
        .collect();
    for index in [
        Similarity::LinearCka,
        Similarity::MutualKnn { k: 4 },
        Similarity::Procrustes,
        Similarity::DebiasedCka,
    ] {
        let m = similarity_matrix(&layers, &layers, &index)?;
        let c = similarity_matrix(&layers, &other, &index)?;
        for i in 0..layers.len() {
            for j in 0..layers.len() {
                assert_eq!(m[i][j], m[j][i], "{index:?} not symmetric at ({i},{j})");
                let want = index.compute(&layers[i], &layers[j])?;
                assert!((m[i][j] - want).abs() < 1e-10, "{index:?} ({i},{j})");
                let want = index.compute(&layers[i], &other[j])?;
                assert!((c[i][j] - want).abs() < 1e-10, "{index:?} cross ({i},{j})");
            }
        }
    }
    // PWCCA is asymmetric: the matrix must not be mirrored.
    let m = similarity_matrix(&layers[..2], &layers[..2], &Similarity::Pwcca)?;
    assert!((m[0][1] - pwcca(&layers[0], &layers[1])?).abs() < 1e-12);
    assert!((m[1][0] - pwcca(&layers[1], &layers[0])?).abs() < 1e-12);
    assert!((m[0][1] - m[1][0]).abs() > 1e-6);

    let df = similarity_frame(&layers, &other[..2], &Similarity::LinearCka)?;
    assert_eq!(df.shape(), (6, 3));
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, ["layer_a", "layer_b", "value"]);
    let v = df.column("value")?.f64()?.get(3).unwrap(); // (a[1], b[1])
    assert!((v - linear_cka(&layers[1], &other[1])?).abs() < 1e-12);
    Ok(())
}

fn err(r: replens::Result<f64>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_input_is_an_error_naming_the_problem() -> R {
    let mut rng = StdRng::seed_from_u64(3);
    let x = t64(randn(&mut rng, 40 * 6), 40, 6);
    let y = t64(randn(&mut rng, 30 * 4), 30, 4);
    let e = err(linear_cka(&x, &y));
    assert!(e.contains("40 rows") && e.contains("30"), "{e}");
    for e in [
        err(rbf_cka(&x, &y, 0.8)),
        err(debiased_cka(&x, &y)),
        err(svcca(&x, &y, 0.99)),
        err(pwcca(&x, &y)),
        err(procrustes_distance(&x, &y)),
        err(mutual_knn(&x, &y, 3)),
    ] {
        assert!(e.contains("rows"), "{e}");
    }
    // Too few rows.
    let x2 = x.narrow(0, 0, 2)?;
    assert!(err(linear_cka(&x2, &x2)).contains("at least 3"));
    let x3 = x.narrow(0, 0, 3)?;
    assert!(err(debiased_cka(&x3, &x3)).contains("at least 4"));
    assert!(err(mutual_knn(&x3, &x3, 3)).contains("k + 1"));
    assert!(err(mutual_knn(&x, &x, 0)).contains("k must be"));
    // NaN and inf, with their position.
    let mut v = x.flatten_all()?.to_vec1::<f64>()?;
    v[5 * 6 + 2] = f64::NAN;
    let xn = t64(v.clone(), 40, 6);
    let e = err(linear_cka(&xn, &x));
    assert!(
        e.contains("NaN") && e.contains("row 5") && e.contains("column 2"),
        "{e}"
    );
    v[5 * 6 + 2] = f64::INFINITY;
    let xi = t64(v, 40, 6);
    for e in [
        err(linear_cka(&x, &xi)),
        err(rbf_cka(&xi, &x, 0.8)),
        err(debiased_cka(&xi, &x)),
        err(svcca(&xi, &x, 0.9)),
        err(procrustes_distance(&xi, &x)),
        err(mutual_knn(&xi, &x, 3)),
    ] {
        assert!(e.contains("infinite"), "{e}");
    }
    // Constant representations: undefined, not NaN.
    let c = Tensor::full(2.5f64, (40, 6), &Device::Cpu)?;
    for e in [
        err(linear_cka(&c, &x)),
        err(linear_cka(&x, &c)),
        err(rbf_cka(&c, &x, 0.8)),
        err(debiased_cka(&x, &c)),
        err(svcca(&c, &x, 0.99)),
        err(pwcca(&x, &c)),
        err(procrustes_distance(&c, &x)),
    ] {
        assert!(e.contains("constant") || e.contains("zero"), "{e}");
    }
    let mut acc = LinearCkaAccumulator::new(6, 6);
    acc.push(&c, &x)?;
    assert!(err(acc.finish()).contains("constant"));
    // A zero row has no cosine neighbours.
    let mut z = x.flatten_all()?.to_vec1::<f64>()?;
    z[12..18].iter_mut().for_each(|v| *v = 0.0);
    assert!(err(mutual_knn(&t64(z, 40, 6), &x, 3)).contains("row 2"));
    // Parameters and shapes.
    assert!(err(rbf_cka(&x, &x, 0.0)).contains("sigma_frac"));
    assert!(err(svcca(&x, &x, 1.5)).contains("keep"));
    let wide = t64(randn(&mut rng, 10 * 12), 10, 12);
    assert!(err(pwcca(&wide, &wide)).contains("more rows"));
    let flat = Tensor::zeros(40, DType::F64, &Device::Cpu)?;
    assert!(err(linear_cka(&flat, &x)).contains("2-D"));
    // Accumulator misuse.
    let mut acc = LinearCkaAccumulator::new(6, 4);
    let e = acc.push(&x, &x).unwrap_err().to_string();
    assert!(e.contains("widths"), "{e}");
    assert_eq!(acc.n(), 0);
    assert!(err(acc.finish()).contains("at least 3"));
    // Layers with different row counts name the layer.
    let (xs, ys) = (std::slice::from_ref(&x), std::slice::from_ref(&y));
    let e = similarity_matrix(xs, ys, &Similarity::LinearCka)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a[0]") && e.contains("b[0]"), "{e}");
    let e = similarity_matrix(&[x.clone(), c.clone()], xs, &Similarity::LinearCka)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a[1]") && e.contains("constant"), "{e}");
    Ok(())
}

/// CPU seconds (user + system) of this process so far, from /proc (Linux), so that timings
/// on a loaded machine can be compared by work done as well as by wall time.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat (utime, stime), in clock ticks of 1/100 s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// Timing, not a test: `cargo test --test similarity time_linear -- --ignored --nocapture`;
/// the numpy twin is `similarity_reference.py --bench`.
#[test]
#[ignore]
fn time_linear_cka_50k_by_768() -> R {
    let (n, d) = (50_000, 768);
    let mut rng = StdRng::seed_from_u64(4);
    let x: Vec<f32> = (0..n * d)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    let y: Vec<f32> = x
        .iter()
        .map(|v| v + 0.5 * rng.sample::<f32, _>(StandardNormal))
        .collect();
    let x = Tensor::from_vec(x, (n, d), &Device::Cpu)?;
    let y = Tensor::from_vec(y, (n, d), &Device::Cpu)?;
    let _ = linear_cka(&x.narrow(0, 0, 4096)?, &y.narrow(0, 0, 4096)?)?; // warm-up
    for (label, precision) in [
        ("f32 chunks (default)", Precision::Auto),
        ("f64 gemm", Precision::F64),
    ] {
        let mut best = (f64::INFINITY, 0.0, 0.0);
        for _ in 0..2 {
            let (t0, c0) = (Instant::now(), cpu_seconds());
            let v = linear_cka_with(&x, &y, precision)?;
            let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
            if wall < best.0 {
                best = (wall, cpu, v);
            }
        }
        println!(
            "replens linear_cka {n}x{d} f32 input, {label}: best of 2 {:.2} s wall, {:.2} s CPU (value {:.9})",
            best.0, best.1, best.2
        );
    }
    Ok(())
}
