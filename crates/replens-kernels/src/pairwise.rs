//! Kernel-matrix kernels of the MMD tests: squared distances, the median heuristic, the RBF
//! kernel and its block sums over the upper triangle of a symmetric `n × n` row-major matrix,
//! and the quadratic forms zᵀKz behind a batch of permutations.

use crate::gram::Real;
use rayon::prelude::*;

/// Rows per rayon task of the row-wise passes over an `n × n` triangle (rows get shorter down
/// the triangle, so tasks are small enough for work stealing to even them out).
const ROWS_PER_TASK: usize = 64;

/// Turns the upper triangle (diagonal included) of the Gram matrix `g = ZZᵀ` of n rows into
/// their squared distances `‖z_i‖² + ‖z_j‖² − 2 z_i·z_j`, clamped at 0, with a zero diagonal;
/// `sq_norms[i] = ‖z_i‖²`. Entries below the diagonal are not touched.
///
/// # Panics
/// When `g` is not `n × n` for `n = sq_norms.len()`.
///
/// ```
/// // rows (0, 0) and (3, 4): G = [[0, 0], [0, 25]]
/// let mut g = vec![0.0, 0.0, 0.0, 25.0];
/// replens_kernels::sq_distances_from_gram_upper(&mut g, &[0.0, 25.0]);
/// assert_eq!(g, vec![0.0, 25.0, 0.0, 0.0]);
/// ```
pub fn sq_distances_from_gram_upper(g: &mut [f64], sq_norms: &[f64]) {
    let n = sq_norms.len();
    assert_eq!(
        g.len(),
        n * n,
        "sq_distances_from_gram_upper: g is not n × n"
    );
    if n == 0 {
        return;
    }
    g.par_chunks_mut(n)
        .enumerate()
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(i, row)| {
            let ni = sq_norms[i];
            for (v, &nj) in row[i..].iter_mut().zip(&sq_norms[i..]) {
                *v = (ni + nj - 2.0 * *v).max(0.0);
            }
            row[i] = 0.0;
        });
}

/// Row `i` of the row-major `n × n` matrix `a` right of its diagonal: the pairs (i, j > i).
fn upper_row(a: &[f64], n: usize, i: usize) -> &[f64] {
    &a[i * n + i + 1..(i + 1) * n]
}

/// The lower median of the entries strictly above the diagonal of the `n × n` row-major `a`
/// (the ⌊(P − 1)/2⌋-th smallest of its P = n(n − 1)/2 pairs in [`f64::total_cmp`]'s order), or
/// NaN when n < 2.
///
/// The P values are read but never copied (P = 5·10⁷ for n = 10⁴, a 400 MB copy): a sample of
/// whole rows brackets the median, one pass over all values (rows shared among rayon's threads)
/// counts those below the bracket and copies out those inside it, and the median is selected
/// among those. Should the bracket miss (or the sample be small), a radix selection on the
/// values' ordered bit patterns takes over: each pass counts the next 16 bits of the values that
/// share the bits chosen so far, until at most 2²² candidates are left.
///
/// ```
/// // pairs 4, 1, 3: lower median 3
/// let a = [0.0, 4.0, 1.0, 9.0, 0.0, 3.0, 9.0, 9.0, 0.0];
/// assert_eq!(replens_kernels::lower_median_upper(&a, 3), 3.0);
/// ```
pub fn lower_median_upper(a: &[f64], n: usize) -> f64 {
    assert_eq!(a.len(), n * n, "lower_median_upper: a is not n × n");
    if n < 2 {
        return f64::NAN;
    }
    let rank = (n * (n - 1) / 2 - 1) / 2;
    bracketed_median(a, n, rank).unwrap_or_else(|| radix_select_upper(a, n, rank))
}

/// The `rank`-th smallest strictly-upper entry of the `n × n` row-major `a` (n ≥ 2), by radix
/// selection on the ordered bit patterns (see [`lower_median_upper`]).
fn radix_select_upper(a: &[f64], n: usize, mut rank: usize) -> f64 {
    let (mut prefix, mut prefix_bits) = (0u64, 0u32);
    let mut candidates = n * (n - 1) / 2;
    let matches = move |key: u64, prefix: u64, bits: u32| bits == 0 || key >> (64 - bits) == prefix;
    while candidates > SELECT_DIRECT_MAX && prefix_bits < 64 {
        let shift = 64 - prefix_bits - 16;
        let counts = (0..n - 1)
            .into_par_iter()
            .with_min_len(ROWS_PER_TASK)
            .fold(
                || vec![0usize; 1 << 16],
                |mut counts, i| {
                    for &v in upper_row(a, n, i) {
                        let key = order_key(v);
                        if matches(key, prefix, prefix_bits) {
                            counts[((key >> shift) & 0xffff) as usize] += 1;
                        }
                    }
                    counts
                },
            )
            .reduce(
                || vec![0usize; 1 << 16],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        let mut digit = 0;
        while rank >= counts[digit] {
            rank -= counts[digit];
            digit += 1;
        }
        candidates = counts[digit];
        prefix = (prefix << 16) | digit as u64;
        prefix_bits += 16;
    }
    let mut left: Vec<f64> = (0..n - 1)
        .into_par_iter()
        .with_min_len(ROWS_PER_TASK)
        .flat_map_iter(|i| {
            upper_row(a, n, i)
                .iter()
                .copied()
                .filter(move |&v| matches(order_key(v), prefix, prefix_bits))
        })
        .collect();
    let (_, median, _) = left.select_nth_unstable_by(rank, |x, y| x.total_cmp(y));
    *median
}

/// The `rank`-th smallest strictly-upper entry of the `n × n` row-major `a`, selected between
/// two order statistics of a sample of rows taken to bracket it, or `None` when the sample is
/// small or the bracket misses.
fn bracketed_median(a: &[f64], n: usize, rank: usize) -> Option<f64> {
    let pairs = n * (n - 1) / 2;
    let step = (pairs / SAMPLE_VALUES).max(1).min(n);
    let mut sample: Vec<f64> = (0..n - 1)
        .step_by(step)
        .flat_map(|i| upper_row(a, n, i).iter().copied())
        .collect();
    let len = sample.len();
    if len < SAMPLE_VALUES / 4 {
        return None;
    }
    // The sample's quantile at the median's rank, widened by ±8 standard deviations of a
    // sample proportion (√(len/4) values), bounds the median unless the sample is very unusual.
    let centre = (rank as f64 / pairs as f64 * len as f64) as usize;
    let margin = 4 * (len as f64).sqrt() as usize + 1;
    let lo_rank = centre.saturating_sub(margin);
    let hi_rank = (centre + margin).min(len - 1);
    let (_, &mut lo, above) = sample.select_nth_unstable_by(lo_rank, |x, y| x.total_cmp(y));
    let hi = if hi_rank > lo_rank {
        let (_, &mut hi, _) =
            above.select_nth_unstable_by(hi_rank - lo_rank - 1, |x, y| x.total_cmp(y));
        hi
    } else {
        lo
    };
    let (lo_key, hi_key) = (order_key(lo), order_key(hi));
    let (below, mut inside) = (0..n - 1)
        .into_par_iter()
        .with_min_len(ROWS_PER_TASK)
        .map(|i| {
            let row = upper_row(a, n, i);
            // The bounds are copied in so that the loops keep them in registers.
            let (lo_key, hi_key) = (lo_key, hi_key);
            // (Plain comparisons: a `RangeInclusive::contains` here measured 2× slower.)
            let within = move |v: f64| {
                let key = order_key(v);
                key >= lo_key && key <= hi_key
            };
            // A branch-free count (the loop vectorises): about half the values are below the
            // bracket, in random order.
            let below: usize = row
                .iter()
                .map(|&v| usize::from(order_key(v) < lo_key))
                .sum();
            // Counting the bracketed values before copying them out (into an exact-size vector)
            // measured twice as fast as filtering alone: 113–150 against 257–294 ms on 10⁴ × 10⁴.
            let inside = row.iter().filter(|&&v| within(v)).count();
            let mut values: Vec<f64> = Vec::with_capacity(inside);
            values.extend(row.iter().filter(|&&v| within(v)));
            (below, values)
        })
        .reduce(
            || (0, Vec::new()),
            |(b1, mut v1), (b2, v2)| {
                v1.extend(v2);
                (b1 + b2, v1)
            },
        );
    let rank = rank.checked_sub(below)?;
    if rank >= inside.len() {
        return None;
    }
    let (_, median, _) = inside.select_nth_unstable_by(rank, |x, y| x.total_cmp(y));
    Some(*median)
}

/// Values in the sample of [`bracketed_median`] (about; whole rows are taken).
const SAMPLE_VALUES: usize = 1 << 20;

/// Candidates few enough for [`lower_median_upper`] to copy out and select directly.
const SELECT_DIRECT_MAX: usize = 1 << 22;

/// `x`'s bits as an unsigned integer ordered as [`f64::total_cmp`] orders the floats.
fn order_key(x: f64) -> u64 {
    let bits = x.to_bits();
    // Negative values: flip every bit (larger magnitude sorts lower); others: flip the sign bit.
    // Written without a branch so that loops over keys vectorise.
    let negative = ((bits as i64) >> 63) as u64;
    bits ^ (negative | (1 << 63))
}

/// Sums of a symmetric kernel matrix K over the split of its n rows into the first `m` and the
/// rest (x and y), from [`rbf_upper`].
#[derive(Debug, Clone, PartialEq)]
pub struct KernelSums {
    /// Σ K_ij over i, j < m (diagonal included).
    pub xx: f64,
    /// Σ K_ij over i, j ≥ m (diagonal included).
    pub yy: f64,
    /// Σ K_ij over i < m ≤ j.
    pub xy: f64,
    /// The row sums Σ_j K_ij of the whole matrix.
    pub rows: Vec<f64>,
    /// The value subtracted from each entry written out (the mean of K's first row), so that
    /// the stored entries are centred and sums over them in f32 lose fewer digits; pass it to
    /// [`symmetric_quadratic_forms`].
    pub offset: f64,
}

/// The RBF kernel `K_ij = exp(scale · d_ij)` of the squared distances in the upper triangle
/// (diagonal included) of the `n × n` row-major `dist`, computed in f64: returns its block and
/// row sums (in f64, each entry counted as in the full symmetric matrix) and, when `out` is
/// given (`n × n`), writes the upper triangle of `K − offset` there, rounded to `T` (entries
/// below the diagonal are not touched), where `offset` ([`KernelSums::offset`]) is the mean of
/// K's first row. Rows are shared among rayon's threads.
///
/// # Panics
/// When `dist` or `out` is not `n × n`, or `m > n`.
///
/// ```
/// use replens_kernels::rbf_upper;
/// // two points at squared distance 2, scale −1/2: K = [[1, e⁻¹], [e⁻¹, 1]]
/// let dist = [0.0, 2.0, 0.0, 0.0];
/// let mut k = vec![0.0f32; 4];
/// let s = rbf_upper(&dist, 2, -0.5, 1, Some(&mut k));
/// let e = (-1.0f64).exp();
/// let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
/// assert!(s.xx == 1.0 && s.yy == 1.0 && close(s.xy, e));
/// assert!(close(s.rows[0], 1.0 + e) && close(s.rows[1], 1.0 + e));
/// assert!(close(s.offset, (1.0 + e) / 2.0));
/// assert_eq!(k[1], (s.xy - s.offset) as f32);
/// ```
pub fn rbf_upper<T: Real>(
    dist: &[f64],
    n: usize,
    scale: f64,
    m: usize,
    out: Option<&mut [T]>,
) -> KernelSums {
    assert_eq!(dist.len(), n * n, "rbf_upper: dist is not n × n");
    assert!(m <= n, "rbf_upper: split {m} is past the {n} rows");
    if let Some(o) = &out {
        assert_eq!(o.len(), n * n, "rbf_upper: out is not n × n");
    }
    if n == 0 {
        return KernelSums {
            xx: 0.0,
            yy: 0.0,
            xy: 0.0,
            rows: Vec::new(),
            offset: 0.0,
        };
    }
    // Row 0 is the whole first row of the symmetric K, read from the upper triangle.
    let mut first_row = vec![0.0; n];
    let (left, right) = kernel_row(&dist[..n], scale, n, &mut first_row);
    let offset = (left + right) / n as f64;
    // Per row i: Σ_{j ≥ i} K_ij split at m, and each K_ij (j > i) added to column j's sum, which
    // is row j's share left of its diagonal. Tasks have fixed row ranges and are summed in
    // order, so the result does not depend on how rayon schedules them.
    #[derive(Default)]
    struct Partial {
        xx: f64,
        yy: f64,
        xy: f64,
        below: Vec<f64>,
    }
    let task = |(t, (d, mut k)): (usize, (&[f64], Option<&mut [T]>))| {
        let mut acc = Partial {
            below: vec![0.0; n],
            ..Partial::default()
        };
        let mut right_of = Vec::with_capacity(ROWS_PER_TASK);
        let mut values = vec![0.0; n];
        for (r, d) in d.chunks_exact(n).enumerate() {
            let i = t * ROWS_PER_TASK + r;
            // K_ij for j ≥ i, and their sums over j < m and j ≥ m.
            let row = &mut values[..n - i];
            let (left, right) = kernel_row(&d[i..], scale, m.saturating_sub(i), row);
            if let Some(k) = k.as_deref_mut() {
                for (o, &v) in k[r * n + i..(r + 1) * n].iter_mut().zip(row.iter()) {
                    *o = T::from_f64(v - offset);
                }
            }
            for (b, &v) in acc.below[i + 1..].iter_mut().zip(&row[1..]) {
                *b += v;
            }
            right_of.push(left + right);
            // The diagonal entry counts once, every other entry twice (K_ij and K_ji).
            let diag = row[0];
            if i < m {
                acc.xx += 2.0 * left - diag;
                acc.xy += right;
            } else {
                acc.yy += 2.0 * right - diag;
            }
        }
        (acc, right_of)
    };
    let chunk = ROWS_PER_TASK * n;
    let parts: Vec<(Partial, Vec<f64>)> = match out {
        Some(out) => dist
            .par_chunks(chunk)
            .zip(out.par_chunks_mut(chunk).map(Some))
            .enumerate()
            .map(task)
            .collect(),
        None => dist
            .par_chunks(chunk)
            .map(|d| (d, None))
            .enumerate()
            .map(task)
            .collect(),
    };
    let mut total = Partial {
        below: vec![0.0; n],
        ..Partial::default()
    };
    let mut rows = Vec::with_capacity(n);
    for (part, right_of) in parts {
        total.xx += part.xx;
        total.yy += part.yy;
        total.xy += part.xy;
        total
            .below
            .iter_mut()
            .zip(&part.below)
            .for_each(|(a, b)| *a += b);
        rows.extend(right_of);
    }
    KernelSums {
        xx: total.xx,
        yy: total.yy,
        xy: total.xy,
        rows: rows.iter().zip(&total.below).map(|(r, b)| r + b).collect(),
        offset,
    }
}

/// `values[j] = exp(scale · d[j])` for the distances `d` of one row, and the sums of the values
/// before and from `split` (clamped to the row), on AVX2 when the CPU has it (the same values
/// either way).
fn kernel_row(d: &[f64], scale: f64, split: usize, values: &mut [f64]) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        return unsafe { kernel_row_avx2(d, scale, split, values) };
    }
    kernel_row_generic(d, scale, split, values)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn kernel_row_avx2(d: &[f64], scale: f64, split: usize, values: &mut [f64]) -> (f64, f64) {
    kernel_row_generic(d, scale, split, values)
}

#[inline(always)]
fn kernel_row_generic(d: &[f64], scale: f64, split: usize, values: &mut [f64]) -> (f64, f64) {
    for (v, &x) in values.iter_mut().zip(d) {
        *v = exp_nonpositive(x * scale);
    }
    let len = values.len().min(d.len());
    let split = split.min(len);
    (lane_sum(&values[..split]), lane_sum(&values[split..len]))
}

/// Σ xs with eight partial sums added pairwise at the end (so that the additions vectorise).
#[inline(always)]
fn lane_sum(xs: &[f64]) -> f64 {
    const LANES: usize = 8;
    let chunks = xs.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().sum();
    let mut acc = [0.0f64; LANES];
    for c in chunks {
        for k in 0..LANES {
            acc[k] += c[k];
        }
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7])) + tail
}

/// exp(x) for x ≤ 0, within 1 ulp of the C library's `exp` on [−745, 0] (checked on 10⁷ points),
/// written without branches or calls so that loops over it vectorise (`f64::exp` is a libm call
/// per value, ~75 % of the RBF pass): exp(x) = 2ᵏ·exp(r) with k = round(x / ln 2) and
/// r = x − k·ln 2 (ln 2 in two parts, Cody & Waite), exp(r) by its Taylor polynomial of degree
/// 13 (|r| ≤ ln 2 / 2, truncation error below 1e-17 relative). Below −708.39, where exp(x) is
/// under 2.3·10⁻³⁰⁸ (subnormal), it returns 0; NaN gives NaN.
#[inline(always)]
fn exp_nonpositive(x: f64) -> f64 {
    // ln 2 = LN2_HI + LN2_LO, the high part with zeros in its low 32 bits (fdlibm's constants).
    const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);
    // 1.5 · 2⁵²: adding it rounds to an integer, which then sits in the low mantissa bits.
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    const FLOOR: f64 = -708.39;
    const TAYLOR: [f64; 14] = [
        1.0,
        1.0,
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5_040.0,
        1.0 / 40_320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
    ];
    let clamped = x.clamp(FLOOR, 0.0);
    let t = clamped * std::f64::consts::LOG2_E + SHIFT;
    let k = t - SHIFT;
    let r = (clamped - k * LN2_HI) - k * LN2_LO;
    let mut p = TAYLOR[13];
    for &c in TAYLOR[..13].iter().rev() {
        p = p * r + c;
    }
    // k (≥ −1022 here) from t's mantissa bits, then 2ᵏ from its biased exponent.
    let k_bits = (t.to_bits() & ((1 << 52) - 1)) as i64 - (1 << 51);
    let two_k = f64::from_bits(((k_bits + 1023) as u64) << 52);
    let value = p * two_k;
    if x.is_nan() {
        x
    } else if x < FLOOR {
        0.0
    } else {
        value
    }
}

/// Rows of K per task of [`symmetric_quadratic_forms`].
const FORM_ROWS: usize = 128;
/// Columns of K per product of [`symmetric_quadratic_forms`]: each product's sums run in `T`
/// over at most this many terms and are then added in f64.
const FORM_COLUMNS: usize = 256;

/// `out[c] = z_cᵀ K z_c` for each column `z_c` of the row-major `n × p` matrix `z`, where K is
/// the symmetric `n × n` row-major matrix whose upper triangle (diagonal included) `k` holds
/// less `offset`: `k_ij = K_ij − offset` (as [`rbf_upper`] writes it; pass 0 for K itself).
/// The offset is added back exactly, `zᵀKz = zᵀ(K − offset)z + offset·(Σ_i z_i)²`, in f64.
///
/// Only blocks on and right of the diagonal are multiplied (about half the products of Kz):
/// K is cut into 128-row blocks, the diagonal block (mirrored from its upper triangle) is
/// multiplied once and the blocks right of it count twice; entries below the diagonal are never
/// read. Each `gemm` product sums at most 256 terms in `T`; the products are summed
/// in f64. Row blocks are shared among rayon's threads, each product single-threaded.
///
/// Precision with `T = f32`: the stored entries round to f32 and each product sums in f32, so
/// the forms carry an error of about 1e-7 of √(number of products) times a product's
/// magnitude. Centred entries (an offset near K's mean) keep those products small.
///
/// # Panics
/// When `k` is not `n × n` or `z` is not `n × p`.
///
/// ```
/// // K = [[2, 1], [1, 3]], z = [1, 1]ᵀ and [1, 0]ᵀ: zᵀKz = 7 and 2
/// let k = [2.0f32, 1.0, 0.0, 3.0];
/// let z = [1.0f32, 1.0, 1.0, 0.0];
/// assert_eq!(replens_kernels::symmetric_quadratic_forms(&k, 2, &z, 2, 0.0), vec![7.0, 2.0]);
/// // The same K stored less 1.5.
/// let centred = [0.5f32, -0.5, 0.0, 1.5];
/// assert_eq!(replens_kernels::symmetric_quadratic_forms(&centred, 2, &z, 2, 1.5), vec![7.0, 2.0]);
/// ```
pub fn symmetric_quadratic_forms<T: Real>(
    k: &[T],
    n: usize,
    z: &[T],
    p: usize,
    offset: f64,
) -> Vec<f64> {
    assert_eq!(k.len(), n * n, "symmetric_quadratic_forms: k is not n × n");
    assert_eq!(z.len(), n * p, "symmetric_quadratic_forms: z is not n × p");
    if n == 0 || p == 0 {
        return vec![0.0; p];
    }
    let blocks: Vec<usize> = (0..n).step_by(FORM_ROWS).collect();
    let block_forms = |r0: usize| -> Vec<f64> {
        let rows = FORM_ROWS.min(n - r0);
        let mut acc = vec![0.0f64; p];
        let mut kz = vec![T::from_f64(0.0); rows * p];
        // The diagonal block, mirrored from its upper triangle into a square of its own.
        let mut diagonal = vec![T::from_f64(0.0); rows * rows];
        for i in 0..rows {
            for j in i..rows {
                let v = k[(r0 + i) * n + r0 + j];
                diagonal[i * rows + j] = v;
                diagonal[j * rows + i] = v;
            }
        }
        let mut c0 = r0;
        while c0 < n {
            // The diagonal block first (counted once), then chunks right of it (twice).
            let (width, weight, lhs, lhs_stride) = if c0 == r0 {
                (rows, 1.0, diagonal.as_ptr(), rows)
            } else {
                (FORM_COLUMNS.min(n - c0), 2.0, k[r0 * n + c0..].as_ptr(), n)
            };
            // SAFETY: `lhs` is the rows × width block K[r0.., c0..] of the n × n `k` (r0 + rows ≤
            // n, c0 + width ≤ n, row stride n) or the rows × rows `diagonal`; z[c0..c0 + width, ..]
            // lies inside the n × p `z`; `kz` holds rows × p values, written with row stride p.
            unsafe {
                gemm::gemm(
                    rows,
                    p,
                    width,
                    kz.as_mut_ptr(),
                    1,
                    p as isize,
                    false,
                    lhs,
                    1,
                    lhs_stride as isize,
                    z.as_ptr().add(c0 * p),
                    1,
                    p as isize,
                    T::from_f64(0.0),
                    T::ONE,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for (kz_row, z_row) in kz.chunks_exact(p).zip(z[r0 * p..].chunks_exact(p)) {
                // Branch-free: z is typically a random 0/1 pattern, which a branch would mispredict.
                for ((a, &v), &w) in acc.iter_mut().zip(kz_row).zip(z_row) {
                    *a += weight * w.into() * v.into();
                }
            }
            c0 += width;
        }
        acc
    };
    // Summed in block order, so that the result does not depend on rayon's scheduling.
    let per_block: Vec<Vec<f64>> = blocks.into_par_iter().map(block_forms).collect();
    let mut forms = vec![0.0; p];
    for block in per_block {
        forms.iter_mut().zip(&block).for_each(|(a, b)| *a += b);
    }
    if offset != 0.0 {
        let mut column_sums = vec![0.0f64; p];
        for row in z.chunks_exact(p) {
            column_sums
                .iter_mut()
                .zip(row)
                .for_each(|(s, &v)| *s += v.into());
        }
        for (f, s) in forms.iter_mut().zip(&column_sums) {
            *f += offset * s * s;
        }
    }
    forms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uniform;

    fn symmetric(n: usize, seed: u64) -> Vec<f64> {
        let u = uniform(seed, n * n);
        let mut k = vec![0.0; n * n];
        for i in 0..n {
            for j in i..n {
                k[i * n + j] = u[i * n + j];
                k[j * n + i] = u[i * n + j];
            }
        }
        k
    }

    #[test]
    fn quadratic_forms_match_the_direct_sums() {
        // n spans several row blocks and column chunks, with ragged ends.
        for (n, p) in [(1, 1), (7, 3), (300, 5), (1337, 4)] {
            let k = symmetric(n, n as u64);
            let z: Vec<f64> = uniform(1, n * p)
                .iter()
                .map(|&u| if u < 0.5 { 1.0 } else { 0.0 })
                .collect();
            let want: Vec<f64> = (0..p)
                .map(|c| {
                    let mut s = 0.0;
                    for i in 0..n {
                        for j in 0..n {
                            s += z[i * p + c] * k[i * n + j] * z[j * p + c];
                        }
                    }
                    s
                })
                .collect();
            // Only the upper triangle is read: poison the rest.
            let mut upper = k.clone();
            for i in 0..n {
                for j in 0..i {
                    upper[i * n + j] = f64::NAN;
                }
            }
            let got = symmetric_quadratic_forms(&upper, n, &z, p, 0.0);
            let upper32: Vec<f32> = upper.iter().map(|&v| v as f32).collect();
            let z32: Vec<f32> = z.iter().map(|&v| v as f32).collect();
            let got32 = symmetric_quadratic_forms(&upper32, n, &z32, p, 0.0);
            let centred32: Vec<f32> = upper.iter().map(|&v| (v - 0.5) as f32).collect();
            let centred = symmetric_quadratic_forms(&centred32, n, &z32, p, 0.5);
            for c in 0..p {
                let scale = want[c].abs().max(1.0);
                assert!((got[c] - want[c]).abs() < 1e-12 * scale, "{n} {c}");
                // f32 entries and f32 sums over ≤ 256 terms: a few 1e-8 relative, less when
                // the entries are centred (uniform in [0, 1) here, so by 0.5).
                assert!((got32[c] - want[c]).abs() < 1e-7 * scale, "{n} {c} f32");
                assert!(
                    (centred[c] - want[c]).abs() < 2e-8 * scale,
                    "{n} {c} centred"
                );
            }
        }
    }

    #[test]
    fn rbf_sums_match_the_full_matrix() {
        let (n, m) = (203, 77);
        let dist = symmetric(n, 5);
        let scale = -0.7;
        let mut k = vec![0.0f64; n * n];
        let s = rbf_upper(&dist, n, scale, m, Some(&mut k));
        let first_row: f64 = (0..n).map(|j| (dist[j] * scale).exp()).sum();
        assert!((s.offset - first_row / n as f64).abs() < 1e-14);
        let full = |i: usize, j: usize| (dist[i.min(j) * n + i.max(j)] * scale).exp();
        let ulp = |a: f64, b: f64| (a.to_bits() as i64 - b.to_bits() as i64).abs();
        let (mut xx, mut yy, mut xy) = (0.0, 0.0, 0.0);
        for i in 0..n {
            let row: f64 = (0..n).map(|j| full(i, j)).sum();
            assert!((s.rows[i] - row).abs() < 1e-12 * row);
            for j in 0..n {
                match (i < m, j < m) {
                    (true, true) => xx += full(i, j),
                    (false, false) => yy += full(i, j),
                    (true, false) => xy += full(i, j),
                    _ => {}
                }
                if j >= i {
                    assert!(ulp(k[i * n + j] + s.offset, full(i, j)) <= 2, "{i} {j}");
                }
            }
        }
        for (got, want) in [(s.xx, xx), (s.yy, yy), (s.xy, xy)] {
            assert!((got - want).abs() < 1e-12 * want);
        }
        // Without an output the sums are the same.
        assert_eq!(rbf_upper::<f32>(&dist, n, scale, m, None), s);
    }

    #[test]
    fn exp_is_within_an_ulp_of_the_c_library() {
        let xs = uniform(11, 200_000);
        for (i, &u) in xs.iter().enumerate() {
            let x = -u * [1e-3, 1.0, 40.0, 708.0][i % 4];
            let (got, want) = (exp_nonpositive(x), x.exp());
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulps <= 1, "exp({x}) = {got}, libm {want}");
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-0.0), 1.0);
        assert_eq!(exp_nonpositive(-800.0), 0.0);
        assert_eq!(exp_nonpositive(f64::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive(f64::NAN).is_nan());
        // The AVX2 build computes the same values.
        let d: Vec<f64> = uniform(12, 1001).iter().map(|u| u * 30.0).collect();
        let (mut a, mut b) = (vec![0.0; 1001], vec![0.0; 1001]);
        let sums = kernel_row(&d, -0.5, 400, &mut a);
        assert_eq!(sums, kernel_row_generic(&d, -0.5, 400, &mut b));
        assert_eq!(a, b);
    }

    #[test]
    fn median_selection_matches_sorting() {
        let cases: Vec<(usize, Vec<f64>)> = vec![
            (2, vec![0.0, 5.0, 5.0, 0.0]),
            // Uniform values (one radix pass), values with many ties, negatives and zeros.
            (40, uniform(3, 1600)),
            (
                3000,
                uniform(4, 9_000_000)
                    .iter()
                    .map(|&u| (u * 7.0).floor() - 2.0)
                    .collect(),
            ),
            (
                3000,
                uniform(5, 9_000_000)
                    .iter()
                    .map(|&u| 700.0 + u * 1e-9)
                    .collect(),
            ),
            (50, vec![-0.0; 2500]),
        ];
        for (n, a) in cases {
            let mut pairs: Vec<f64> = (0..n)
                .flat_map(|i| a[i * n + i + 1..(i + 1) * n].to_vec())
                .collect();
            pairs.sort_by(f64::total_cmp);
            let want = pairs[(pairs.len() - 1) / 2];
            assert_eq!(
                lower_median_upper(&a, n).to_bits(),
                want.to_bits(),
                "n = {n}"
            );
            let rank = (pairs.len() - 1) / 2;
            assert_eq!(radix_select_upper(&a, n, rank).to_bits(), want.to_bits());
            if let Some(m) = bracketed_median(&a, n, rank) {
                assert_eq!(m.to_bits(), want.to_bits());
            }
        }
        assert!(lower_median_upper(&[1.0], 1).is_nan());
    }

    #[test]
    fn distances_from_the_gram_upper_triangle() {
        let rows = [[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]];
        let n = rows.len();
        let mut g = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                g[i * n + j] = rows[i][0] * rows[j][0] + rows[i][1] * rows[j][1];
            }
        }
        let norms: Vec<f64> = (0..n).map(|i| g[i * n + i]).collect();
        sq_distances_from_gram_upper(&mut g, &norms);
        for i in 0..n {
            assert_eq!(g[i * n + i], 0.0);
            for j in i + 1..n {
                let d: f64 = (0..2).map(|c| (rows[i][c] - rows[j][c]).powi(2)).sum();
                assert!((g[i * n + j] - d).abs() < 1e-12);
            }
        }
        assert_eq!(lower_median_upper(&g, n), {
            let mut p = [g[1], g[2], g[5]];
            p.sort_by(f64::total_cmp);
            p[1]
        });
    }
}
