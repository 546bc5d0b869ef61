//! Kernel-matrix kernels of the MMD tests: squared distances, the median heuristic, the RBF
//! kernel and its block sums over the upper triangle of a symmetric `n × n` row-major matrix,
//! and the quadratic forms zᵀKz behind a batch of permutations.

use crate::gram::{gemm_parallelism, Real};
use crate::triangle::{Block, UpperTriangle, TRIANGLE_BLOCK};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Rows per rayon task of the row-wise passes over an `n × n` triangle (rows get shorter down
/// the triangle, so tasks are small enough for work stealing to even them out).
const ROWS_PER_TASK: usize = 64;

/// The squared distances `‖z_i − z_j‖²` (zero diagonal) between the rows of `z`, the row-major
/// `parts` (each `rows × d`) stacked in order.
///
/// `z`'s columns are centred first (the distances do not change, and the Gram entries lose
/// fewer digits); then `‖z_i‖² + ‖z_j‖² − 2 z_i·z_j`, clamped at 0. Each block of the triangle
/// is one `gemm` product `z_B z_{B..}ᵀ`, written straight into the block (nothing is zeroed
/// first; `threads > 1` lets the product use that many of rayon's threads) and turned into
/// distances while it is fresh.
///
/// # Panics
/// When `d = 0` or a part's length is not a multiple of `d`.
///
/// ```
/// // rows (0, 0), (3, 4) and (0, 1): squared distances 25, 1 and 18
/// let d = replens_kernels::sq_distances(&[&[0.0, 0.0, 3.0, 4.0], &[0.0, 1.0]], 2, 1);
/// assert_eq!(d.row(0), &[0.0, 25.0, 1.0]);
/// assert_eq!(d.row(1), &[0.0, 18.0]);
/// ```
pub fn sq_distances(parts: &[&[f64]], d: usize, threads: usize) -> UpperTriangle<f64> {
    distances_impl(parts, d, threads, false).0
}

/// [`sq_distances`] and the lower median of the pairs' distances, as [`lower_median_upper`]
/// finds it (the same value, bit for bit), without a pass of its own: a sample of
/// [`PAIR_SAMPLE`] random pairs, computed straight from the rows, brackets the median, and each
/// block of the triangle is counted against the bracket right after it is written. Should the
/// bracket miss, [`lower_median_upper`] runs on the result. The median is NaN when n < 2.
///
/// ```
/// // pairs 25, 1 and 18: lower median 18
/// let (d, median) = replens_kernels::sq_distances_with_median(&[&[0.0, 0.0, 3.0, 4.0, 0.0, 1.0]], 2, 1);
/// assert_eq!((d.get(0, 1), median), (25.0, 18.0));
/// ```
pub fn sq_distances_with_median(
    parts: &[&[f64]],
    d: usize,
    threads: usize,
) -> (UpperTriangle<f64>, f64) {
    let (dist, median) = distances_impl(parts, d, threads, true);
    let median = median.unwrap_or_else(|| lower_median_upper(&dist));
    (dist, median)
}

/// Random pairs drawn by [`sq_distances_with_median`] to bracket the median (its bracket then
/// holds about 1.6 % of all pairs).
pub const PAIR_SAMPLE: usize = 1 << 17;

/// [`sq_distances`], and the median when `median` and the bracket holds it.
fn distances_impl(
    parts: &[&[f64]],
    d: usize,
    threads: usize,
    median: bool,
) -> (UpperTriangle<f64>, Option<f64>) {
    assert!(d > 0, "sq_distances: rows without columns");
    for part in parts {
        assert!(
            part.len() % d == 0,
            "sq_distances: a part of {} values is not a whole number of {d}-wide rows",
            part.len()
        );
    }
    let n = parts.iter().map(|p| p.len() / d).sum::<usize>();
    // Column means summed row by row in order, then the centred rows and their squared norms.
    let mut mean = vec![0.0f64; d];
    for part in parts {
        for row in part.chunks_exact(d) {
            mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v);
        }
    }
    let inv = 1.0 / n.max(1) as f64;
    mean.iter_mut().for_each(|m| *m *= inv);
    let mut z = Vec::with_capacity(n * d);
    for part in parts {
        z.extend_from_slice(part);
    }
    let sq_norms: Vec<f64> = z
        .par_chunks_mut(d)
        .with_min_len(ROWS_PER_TASK)
        .map(|row| {
            row.iter_mut().zip(&mean).for_each(|(v, &m)| *v -= m);
            row.iter().map(|v| v * v).sum()
        })
        .collect();
    let z = z.as_slice();
    let pairs = n * n.saturating_sub(1) / 2;
    let rank = lower_median_rank(pairs);
    let bracket = (median && pairs >= 4 * PAIR_SAMPLE).then(|| {
        let sample = sample_pairs(n, PAIR_SAMPLE)
            .into_par_iter()
            .with_min_len(1024)
            .map(|(i, j)| {
                let (a, b) = (&z[i * d..(i + 1) * d], &z[j * d..(j + 1) * d]);
                (sq_norms[i] + sq_norms[j] - 2.0 * crate::dot(a, b)).max(0.0)
            })
            .collect();
        Bracket::around(sample, rank, pairs)
    });
    let parallelism = gemm_parallelism(threads);
    let convert = |block: Block<&mut [MaybeUninit<f64>]>| {
        let (r0, stride) = (block.r0, n - block.r0);
        let data = block.data;
        // SAFETY: the block holds rows × stride values, written row-major with stride
        // `stride` (`read_dst` false: gemm writes without reading); z's rows r0.. lie inside z.
        unsafe {
            gemm::gemm(
                block.rows,
                stride,
                d,
                data.as_mut_ptr().cast::<f64>(),
                1,
                stride as isize,
                false,
                z.as_ptr().add(r0 * d),
                1,
                d as isize,
                z.as_ptr().add(r0 * d),
                d as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        // SAFETY: gemm has just written every value of the block.
        let data = unsafe { &mut *(data as *mut [MaybeUninit<f64>] as *mut [f64]) };
        data.par_chunks_mut(stride)
            .enumerate()
            .with_min_len(ROWS_PER_TASK / 4)
            .map(|(r, row)| {
                let i = r0 + r;
                let ni = sq_norms[i];
                let (left, right) = row.split_at_mut(r);
                left.fill(0.0);
                for (v, &nj) in right.iter_mut().zip(&sq_norms[i..]) {
                    *v = (ni + nj - 2.0 * *v).max(0.0);
                }
                right[0] = 0.0;
                // Counted while the row is still in cache.
                match bracket {
                    Some(bracket) => bracket.split_not_nan(&right[1..]),
                    None => (0, Vec::new()),
                }
            })
            .reduce(|| (0, Vec::new()), Bracket::merge)
    };
    // SAFETY: `convert` writes every value of each block (gemm writes them all).
    let (dist, splits) = unsafe { UpperTriangle::build(n, false, convert) };
    let median = bracket.and_then(|_| {
        let (below, inside) = splits.into_iter().fold((0, Vec::new()), Bracket::merge);
        Bracket::select(below, inside, rank)
    });
    (dist, median)
}

/// `count` pairs (i, j ≠ i) of 0..n drawn uniformly (SplitMix64 from a fixed seed, so the same
/// pairs every call). n ≥ 2.
fn sample_pairs(n: usize, count: usize) -> Vec<(usize, usize)> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = state;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    };
    // The high bits of a 64 × 64-bit product: an unbiased-enough index for n ≪ 2⁶⁴.
    let mut index = move |below: usize| ((next() as u128 * below as u128) >> 64) as usize;
    (0..count)
        .map(|_| {
            let i = index(n);
            let j = index(n - 1);
            (i, if j >= i { j + 1 } else { j })
        })
        .collect()
}

/// The rank of the lower median among `pairs` values (0 for none), shared by
/// [`lower_median_upper`] and [`sq_distances_with_median`] so that both select the same value.
fn lower_median_rank(pairs: usize) -> usize {
    pairs.saturating_sub(1) / 2
}

/// Row `i` of `a` right of its diagonal: the pairs (i, j > i).
fn upper_row(a: &UpperTriangle<f64>, i: usize) -> &[f64] {
    &a.row(i)[1..]
}

/// The lower median of the entries strictly above the diagonal of `a` (the ⌊(P − 1)/2⌋-th
/// smallest of its P = n(n − 1)/2 pairs in [`f64::total_cmp`]'s order), or NaN when n < 2.
///
/// The P values are read but never copied (P = 5·10⁷ for n = 10⁴, a 400 MB copy): a sample of
/// pairs spread over every row brackets the median, one pass over all values (rows shared among rayon's threads)
/// counts those below the bracket and copies out those inside it, and the median is selected
/// among those. Should the bracket miss (or the sample be small), a radix selection on the
/// values' ordered bit patterns takes over: each pass counts the next 16 bits of the values that
/// share the bits chosen so far, until at most 2²² candidates are left.
///
/// ```
/// // pairs 4, 1, 3: lower median 3
/// let a = [0.0, 4.0, 1.0, 9.0, 0.0, 3.0, 9.0, 9.0, 0.0];
/// let a = replens_kernels::UpperTriangle::from_full(&a, 3);
/// assert_eq!(replens_kernels::lower_median_upper(&a), 3.0);
/// ```
pub fn lower_median_upper(a: &UpperTriangle<f64>) -> f64 {
    let n = a.n();
    if n < 2 {
        return f64::NAN;
    }
    let rank = lower_median_rank(n * (n - 1) / 2);
    bracketed_median(a, rank).unwrap_or_else(|| radix_select_upper(a, rank))
}

/// The `rank`-th smallest strictly-upper entry of `a` (n ≥ 2), by radix selection on the ordered
/// bit patterns (see [`lower_median_upper`]).
fn radix_select_upper(a: &UpperTriangle<f64>, mut rank: usize) -> f64 {
    let n = a.n();
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
                    for &v in upper_row(a, i) {
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
            upper_row(a, i)
                .iter()
                .copied()
                .filter(move |&v| matches(order_key(v), prefix, prefix_bits))
        })
        .collect();
    let (_, median, _) = left.select_nth_unstable_by(rank, |x, y| x.total_cmp(y));
    *median
}

/// The `rank`-th smallest strictly-upper entry of `a`, selected between
/// two order statistics of a sample of its pairs taken to bracket it, or `None` when the sample
/// is small or the bracket misses.
fn bracketed_median(a: &UpperTriangle<f64>, rank: usize) -> Option<f64> {
    let n = a.n();
    let pairs = n * (n - 1) / 2;
    // Every `step`-th pair in the row-by-row order of the triangle: every row contributes, in
    // proportion to its length. (A sample of whole rows, taken before, is far from independent
    // (a row's distances all share its point) and missed the bracket on shifted data.)
    let step = (pairs / SAMPLE_VALUES).max(1);
    let sample: Vec<f64> = (0..n - 1)
        .into_par_iter()
        .with_min_len(ROWS_PER_TASK)
        .flat_map_iter(|i| {
            // Pairs before row i: Σ_{r<i} (n − 1 − r).
            let before = i * (n - 1) - i * i.saturating_sub(1) / 2;
            let first = (step - before % step) % step;
            upper_row(a, i).iter().skip(first).step_by(step).copied()
        })
        .collect();
    if sample.len() < SAMPLE_VALUES / 4 {
        return None;
    }
    let bracket = Bracket::around(sample, rank, pairs);
    let (below, inside) = (0..n - 1)
        .into_par_iter()
        .with_min_len(ROWS_PER_TASK)
        .map(|i| bracket.split(upper_row(a, i)))
        .reduce(|| (0, Vec::new()), Bracket::merge);
    Bracket::select(below, inside, rank)
}

/// Bounds on the values around a rank, in [`f64::total_cmp`]'s order.
#[derive(Debug, Clone, Copy)]
struct Bracket {
    lo: f64,
    hi: f64,
}

impl Bracket {
    /// The quantile of `sample` (drawn from `pairs` values) at the rank, widened by ±8 standard
    /// deviations of a sample proportion (√(len/4) values): it bounds the value at that rank
    /// unless the sample is very unusual. `sample` must not be empty.
    fn around(mut sample: Vec<f64>, rank: usize, pairs: usize) -> Self {
        let len = sample.len();
        let centre = (rank as f64 / pairs as f64 * len as f64) as usize;
        let margin = 4 * (len as f64).sqrt() as usize + 1;
        let lo_rank = centre.saturating_sub(margin).min(len - 1);
        let hi_rank = (centre + margin).min(len - 1);
        let (_, &mut lo, above) = sample.select_nth_unstable_by(lo_rank, |x, y| x.total_cmp(y));
        let hi = if hi_rank > lo_rank {
            let (_, &mut hi, _) =
                above.select_nth_unstable_by(hi_rank - lo_rank - 1, |x, y| x.total_cmp(y));
            hi
        } else {
            lo
        };
        Self { lo, hi }
    }

    /// How many of `values` lie below the bracket, and a copy of those inside it.
    fn split(self, values: &[f64]) -> (usize, Vec<f64>) {
        // (Plain comparisons: a `RangeInclusive::contains` here measured 2× slower.)
        let (lo_key, hi_key) = (order_key(self.lo), order_key(self.hi));
        split_by(values, |v| {
            let key = order_key(v);
            (key < lo_key, key >= lo_key && key <= hi_key)
        })
    }

    /// [`Bracket::split`] of values that are never NaN, with plain float comparisons (SIMD in
    /// the baseline x86-64 build, unlike the 64-bit keys). They order as `total_cmp` does when
    /// the bracket starts above zero: −0.0, +0.0 and every negative value are below it both ways.
    fn split_not_nan(self, values: &[f64]) -> (usize, Vec<f64>) {
        let Self { lo, hi } = self;
        if !(lo > 0.0 && hi.is_finite()) {
            return self.split(values);
        }
        split_by(values, |v| (v < lo, v >= lo && v <= hi))
    }

    /// Two [`Bracket::split`]s in one.
    fn merge((b1, mut v1): (usize, Vec<f64>), (b2, v2): (usize, Vec<f64>)) -> (usize, Vec<f64>) {
        v1.extend(v2);
        (b1 + b2, v1)
    }

    /// The `rank`-th smallest of all values from the counts and copies of a split, or `None`
    /// when it lies outside the bracket.
    fn select(below: usize, mut inside: Vec<f64>, rank: usize) -> Option<f64> {
        let rank = rank.checked_sub(below)?;
        if rank >= inside.len() {
            return None;
        }
        let (_, median, _) = inside.select_nth_unstable_by(rank, |x, y| x.total_cmp(y));
        Some(*median)
    }
}

/// How many of `values` are below (`place(v).0`), and a copy of those inside (`place(v).1`).
#[inline(always)]
fn split_by(values: &[f64], place: impl Fn(f64) -> (bool, bool)) -> (usize, Vec<f64>) {
    // Branch-free counts (the loop vectorises; about half the values are below, in random
    // order), then a branch-free copy into an exact-size vector: each value is written at the
    // end and the end moves on when it is inside (3× faster than a filtered `extend`).
    let (mut below, mut inside) = (0usize, 0usize);
    for &v in values {
        let (b, i) = place(v);
        below += usize::from(b);
        inside += usize::from(i);
    }
    let mut copied = vec![0.0; inside + 1];
    let mut len = 0;
    for &v in values {
        copied[len] = v;
        len += usize::from(place(v).1);
    }
    copied.truncate(len);
    (below, copied)
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

/// The RBF kernel `K_ij = exp(scale · d_ij)` of the squared distances `dist`, computed in f64:
/// returns its block and row sums (in f64, each entry counted as in the full symmetric matrix)
/// and, when `keep`, the triangle of `K − offset` rounded to f32 (zeros left of the diagonal),
/// where `offset` ([`KernelSums::offset`]) is the mean of K's first row. The kept triangle takes
/// over `dist`'s memory ([`UpperTriangle::into_f32`]): no fresh pages to fault in, which on a VM
/// cost as much as the kernel itself. Blocks are shared among rayon's threads.
///
/// # Panics
/// When `m > n`.
///
/// ```
/// use replens_kernels::{rbf_upper, UpperTriangle};
/// // two points at squared distance 2, scale −1/2: K = [[1, e⁻¹], [e⁻¹, 1]]
/// let dist = UpperTriangle::from_full(&[0.0, 2.0, 2.0, 0.0], 2);
/// let (s, k) = rbf_upper(dist, -0.5, 1, true);
/// let e = (-1.0f64).exp();
/// let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
/// assert!(s.xx == 1.0 && s.yy == 1.0 && close(s.xy, e));
/// assert!(close(s.rows[0], 1.0 + e) && close(s.rows[1], 1.0 + e));
/// assert!(close(s.offset, (1.0 + e) / 2.0));
/// assert_eq!(k.unwrap().get(0, 1), (s.xy - s.offset) as f32);
/// ```
pub fn rbf_upper(
    dist: UpperTriangle<f64>,
    scale: f64,
    m: usize,
    keep: bool,
) -> (KernelSums, Option<UpperTriangle<f32>>) {
    let n = dist.n();
    assert!(m <= n, "rbf_upper: split {m} is past the {n} rows");
    if n == 0 {
        let sums = KernelSums {
            xx: 0.0,
            yy: 0.0,
            xy: 0.0,
            rows: Vec::new(),
            offset: 0.0,
        };
        return (sums, keep.then(|| UpperTriangle::from_fn(0, |_, _| 0.0)));
    }
    // Row 0 is the whole first row of the symmetric K, read from the upper triangle.
    let mut first_row = vec![0.0; n];
    let (left, right) = kernel_row(dist.row(0), scale, n, &mut first_row);
    let offset = (left + right) / n as f64;
    // Per row i: Σ_{j ≥ i} K_ij split at m, and each K_ij (j > i) added to column j's sum, which
    // is row j's share left of its diagonal. Tasks are blocks, summed in block order, so the
    // result does not depend on how rayon schedules them.
    struct Partial {
        xx: f64,
        yy: f64,
        xy: f64,
        below: Vec<f64>,
        right_of: Vec<f64>,
        values: Vec<f64>,
    }
    let start = |r0: usize| Partial {
        xx: 0.0,
        yy: 0.0,
        xy: 0.0,
        below: vec![0.0; n],
        right_of: Vec::with_capacity(TRIANGLE_BLOCK),
        values: vec![0.0; n - r0],
    };
    // K_ij for j ≥ i into `acc.values`, and the row's sums into `acc`.
    let row_sums = |acc: &mut Partial, i: usize, d: &[f64]| {
        let row = &mut acc.values[..n - i];
        let (left, right) = kernel_row(d, scale, m.saturating_sub(i), row);
        for (b, &v) in acc.below[i + 1..].iter_mut().zip(&row[1..]) {
            *b += v;
        }
        acc.right_of.push(left + right);
        // The diagonal entry counts once, every other entry twice (K_ij and K_ji).
        let diag = row[0];
        if i < m {
            acc.xx += 2.0 * left - diag;
            acc.xy += right;
        } else {
            acc.yy += 2.0 * right - diag;
        }
    };
    let (parts, kept) = if keep {
        let (k, parts) = dist.into_f32(start, |acc, i, d, out| {
            row_sums(acc, i, d);
            for (o, &v) in out.iter_mut().zip(&acc.values) {
                *o = (v - offset) as f32;
            }
        });
        (parts, Some(k))
    } else {
        let blocks: Vec<Block<&[f64]>> = dist.blocks().collect();
        let parts: Vec<Partial> = blocks
            .into_par_iter()
            .map(|block| {
                let mut acc = start(block.r0);
                let stride = n - block.r0;
                for (r, d) in block.data.chunks_exact(stride).enumerate() {
                    row_sums(&mut acc, block.r0 + r, &d[r..]);
                }
                acc
            })
            .collect();
        (parts, None)
    };
    let mut below = vec![0.0; n];
    let (mut xx, mut yy, mut xy) = (0.0, 0.0, 0.0);
    let mut rows = Vec::with_capacity(n);
    for part in parts {
        xx += part.xx;
        yy += part.yy;
        xy += part.xy;
        below.iter_mut().zip(&part.below).for_each(|(a, b)| *a += b);
        rows.extend(part.right_of);
    }
    let sums = KernelSums {
        xx,
        yy,
        xy,
        rows: rows.iter().zip(&below).map(|(r, b)| r + b).collect(),
        offset,
    };
    (sums, kept)
}

/// `values[j] = exp(scale · d[j])` for the distances `d` of one row, and the sums of the values
/// before and from `split` (clamped to the row), in AVX-512 or AVX2 lanes when the CPU has them
/// (the same values either way; AVX-512 over AVX2: RBF pass 93 → 70 ms on the benchmark).
fn kernel_row(d: &[f64], scale: f64, split: usize, values: &mut [f64]) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512() {
        // SAFETY: the CPU supports AVX-512F (checked at run time).
        return unsafe { kernel_row_avx512(d, scale, split, values) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        return unsafe { kernel_row_avx2(d, scale, split, values) };
    }
    kernel_row_generic(d, scale, split, values)
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_row_avx512(d: &[f64], scale: f64, split: usize, values: &mut [f64]) -> (f64, f64) {
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

/// Columns of K per product of [`symmetric_quadratic_forms`]: each product's sums run in f32
/// over at most this many terms and are then added in f64 (1024: 16 % faster than 256 on the
/// 10⁴-row benchmark, with 2× the f32 rounding of one product, still within 1e-7 relative).
const FORM_COLUMNS: usize = 1024;

/// `out[c] = z_cᵀ K z_c` for each column `z_c` of the row-major `n × p` matrix `z`, where K is
/// the symmetric matrix whose upper triangle `k` holds less `offset`: `k_ij = K_ij − offset` (as
/// [`rbf_upper`] keeps it; pass 0 for K itself). The offset is added back exactly,
/// `zᵀKz = zᵀ(K − offset)z + offset·(Σ_i z_i)²`, in f64.
///
/// Only blocks on and right of the diagonal are multiplied (about half the products of Kz): the
/// diagonal block of each row block of `k` (mirrored from its upper triangle) is multiplied once
/// and the columns right of it count twice; entries left of the diagonal are never read. Each
/// `gemm` product sums at most 1024 terms in f32; the products are summed in f64. Row blocks are
/// shared among rayon's threads, each product single-threaded.
///
/// Precision: the stored entries are f32 and each product sums in f32, so the forms carry an
/// error of about 1e-7 of √(number of products) times a product's magnitude. Centred entries (an
/// offset near K's mean) keep those products small.
///
/// # Panics
/// When `z` is not `n × p`.
///
/// ```
/// use replens_kernels::{symmetric_quadratic_forms, UpperTriangle};
/// // K = [[2, 1], [1, 3]], z = [1, 1]ᵀ and [1, 0]ᵀ: zᵀKz = 7 and 2
/// let k = UpperTriangle::from_full(&[2.0f32, 1.0, 1.0, 3.0], 2);
/// let z = [1.0f32, 1.0, 1.0, 0.0];
/// assert_eq!(symmetric_quadratic_forms(&k, &z, 2, 0.0), vec![7.0, 2.0]);
/// // The same K stored less 1.5.
/// let centred = UpperTriangle::from_full(&[0.5f32, -0.5, -0.5, 1.5], 2);
/// assert_eq!(symmetric_quadratic_forms(&centred, &z, 2, 1.5), vec![7.0, 2.0]);
/// ```
pub fn symmetric_quadratic_forms(
    k: &UpperTriangle<f32>,
    z: &[f32],
    p: usize,
    offset: f64,
) -> Vec<f64> {
    forms_impl(k, z, p, offset)
}

/// [`symmetric_quadratic_forms`] in `T`.
fn forms_impl<T: Real>(k: &UpperTriangle<T>, z: &[T], p: usize, offset: f64) -> Vec<f64> {
    let n = k.n();
    assert_eq!(z.len(), n * p, "symmetric_quadratic_forms: z is not n × p");
    if n == 0 || p == 0 {
        return vec![0.0; p];
    }
    let block_forms = |block: Block<&[T]>| -> Vec<f64> {
        let (r0, rows, stride) = (block.r0, block.rows, n - block.r0);
        let mut acc = vec![0.0f64; p];
        let mut kz = vec![T::from_f64(0.0); rows * p];
        // The diagonal block, mirrored from its upper triangle into a square of its own.
        let mut diagonal = vec![T::from_f64(0.0); rows * rows];
        for i in 0..rows {
            for j in i..rows {
                let v = block.data[i * stride + j];
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
                let width = FORM_COLUMNS.min(n - c0);
                (width, 2.0, block.data[c0 - r0..].as_ptr(), stride)
            };
            // SAFETY: `lhs` is the rows × width part of the block at columns c0.. (c0 + width ≤
            // n, row stride n − r0) or the rows × rows `diagonal`; z[c0..c0 + width, ..] lies
            // inside the n × p `z`; `kz` holds rows × p values, written with row stride p.
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
    let blocks: Vec<Block<&[T]>> = k.blocks().collect();
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
        for (n, p) in [(1, 1), (7, 3), (300, 5), (1337, 4), (2200, 2)] {
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
            let upper = |shift: f64| UpperTriangle::from_fn(n, |i, j| k[i * n + j] - shift);
            let poison = |mut t: UpperTriangle<f64>| {
                for block in t.blocks_mut() {
                    let stride = n - block.r0;
                    for (r, row) in block.data.chunks_exact_mut(stride).enumerate() {
                        row[..r].fill(f64::NAN);
                    }
                }
                t
            };
            let got = forms_impl(&poison(upper(0.0)), &z, p, 0.0);
            let to_f32 = |t: UpperTriangle<f64>| {
                let t = poison(t);
                UpperTriangle::from_fn(n, |i, j| t.get(i, j) as f32)
            };
            let z32: Vec<f32> = z.iter().map(|&v| v as f32).collect();
            let got32 = symmetric_quadratic_forms(&to_f32(upper(0.0)), &z32, p, 0.0);
            let centred = symmetric_quadratic_forms(&to_f32(upper(0.5)), &z32, p, 0.5);
            for c in 0..p {
                let scale = want[c].abs().max(1.0);
                assert!((got[c] - want[c]).abs() < 1e-12 * scale, "{n} {c}");
                // f32 entries and f32 sums over ≤ 1024 terms: a few 1e-8 relative, less when
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
        // Several blocks, the split inside the second.
        let (n, m) = (300, 177);
        let dist = symmetric(n, 5);
        let scale = -0.7;
        let (s, k) = rbf_upper(UpperTriangle::from_full(&dist, n), scale, m, true);
        let k = k.unwrap();
        let first_row: f64 = (0..n).map(|j| (dist[j] * scale).exp()).sum();
        assert!((s.offset - first_row / n as f64).abs() < 1e-14);
        let full = |i: usize, j: usize| (dist[i.min(j) * n + i.max(j)] * scale).exp();
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
                    // K − offset rounded once to f32 (half an f32 ulp), from an f64 kernel
                    // within a few f64 ulps.
                    let want = full(i, j) - s.offset;
                    let got = f64::from(k.get(i, j));
                    assert!((got - want).abs() <= 6e-8 * want.abs() + 1e-15, "{i} {j}");
                }
            }
        }
        for (got, want) in [(s.xx, xx), (s.yy, yy), (s.xy, xy)] {
            assert!((got - want).abs() < 1e-12 * want);
        }
        // Without the triangle the sums are the same.
        let dist = UpperTriangle::from_full(&dist, n);
        assert_eq!(rbf_upper(dist, scale, m, false), (s, None));
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
        // The AVX-512 and AVX2 builds compute the same values.
        let d: Vec<f64> = uniform(12, 1001).iter().map(|u| u * 30.0).collect();
        let (mut a, mut b) = (vec![0.0; 1001], vec![0.0; 1001]);
        let sums = kernel_row_generic(&d, -0.5, 400, &mut b);
        assert_eq!(kernel_row(&d, -0.5, 400, &mut a), sums);
        assert_eq!(a, b);
        #[cfg(target_arch = "x86_64")]
        if crate::simd::has_avx2() {
            // SAFETY: the CPU supports AVX2.
            assert_eq!(unsafe { kernel_row_avx2(&d, -0.5, 400, &mut a) }, sums);
            assert_eq!(a, b);
        }
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
            let a = UpperTriangle::from_full(&a, n);
            assert_eq!(lower_median_upper(&a).to_bits(), want.to_bits(), "n = {n}");
            let rank = (pairs.len() - 1) / 2;
            assert_eq!(radix_select_upper(&a, rank).to_bits(), want.to_bits());
            if let Some(m) = bracketed_median(&a, rank) {
                assert_eq!(m.to_bits(), want.to_bits());
            }
        }
        assert!(lower_median_upper(&UpperTriangle::from_full(&[1.0], 1)).is_nan());
    }

    #[test]
    fn the_median_bracket_holds_when_rows_differ() {
        // d_ij = c_i + c_j: each row's values are shifted by its own c_i, as distances from
        // points at different distances from the rest are. A sample of whole rows misses the
        // bracket here (it then falls back to the slower radix selection).
        let n = 3000;
        let c = uniform(6, n);
        let a: Vec<f64> = (0..n * n).map(|k| c[k / n] + c[k % n]).collect();
        let mut pairs: Vec<f64> = (0..n)
            .flat_map(|i| a[i * n + i + 1..(i + 1) * n].to_vec())
            .collect();
        let rank = (pairs.len() - 1) / 2;
        let (_, &mut want, _) = pairs.select_nth_unstable_by(rank, f64::total_cmp);
        let a = UpperTriangle::from_full(&a, n);
        let got = bracketed_median(&a, rank).expect("the bracket missed the median");
        assert_eq!(got.to_bits(), want.to_bits());
    }

    #[test]
    fn the_median_found_with_the_distances_is_the_median() {
        // Two groups apart, rows at different scales (so rows' distances differ as a whole):
        // the sampled bracket must hold, and give what the selection over the triangle gives.
        let (n, d) = (1300, 6);
        let u = uniform(9, n * d + n);
        let z: Vec<f64> = (0..n * d)
            .map(|k| {
                let (i, scale) = (k / d, 0.2 + 3.0 * u[n * d + k / d]);
                scale * (u[k] - 0.5) + if i < 500 { 0.0 } else { 1.5 }
            })
            .collect();
        assert!(n * (n - 1) / 2 >= 4 * PAIR_SAMPLE);
        let (dist, median) = distances_impl(&[&z], d, 2, true);
        let want = lower_median_upper(&dist);
        assert_eq!(median.map(f64::to_bits), Some(want.to_bits()));
        let (again, median) = sq_distances_with_median(&[&z[..700 * d], &z[700 * d..]], d, 1);
        assert_eq!((again, median.to_bits()), (dist, want.to_bits()));
        // Below the sample size the median comes from the triangle.
        let (small, median) = sq_distances_with_median(&[&z[..50 * d]], d, 1);
        assert_eq!(median.to_bits(), lower_median_upper(&small).to_bits());
        assert!(sq_distances_with_median(&[&z[..d]], d, 1).1.is_nan());
    }

    #[test]
    fn distances_match_the_direct_sums() {
        // Several blocks with a ragged last one, the rows in one part or two.
        for (n, d, split) in [(3, 2, 3), (300, 7, 120), (1, 3, 0)] {
            let z: Vec<f64> = uniform(8, n * d).iter().map(|u| u * 4.0 + 10.0).collect();
            let row = |i: usize| &z[i * d..(i + 1) * d];
            let (first, second) = z.split_at(split * d);
            let dist = sq_distances(&[first, second], d, 2);
            assert_eq!(dist.n(), n);
            for i in 0..n {
                assert_eq!(dist.get(i, i), 0.0);
                for j in i + 1..n {
                    let want: f64 = row(i)
                        .iter()
                        .zip(row(j))
                        .map(|(a, b)| (a - b).powi(2))
                        .sum();
                    assert!(
                        (dist.get(i, j) - want).abs() < 1e-12 * want.max(1.0),
                        "{i} {j}"
                    );
                }
            }
            // Left of the diagonal: zeros, not whatever the buffer held.
            crate::triangle::assert_zeros_left_of_the_diagonal(&dist);
        }
    }
}
