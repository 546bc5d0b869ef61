//! A small linear head `a = W z + b` (C classes, C ≪ d) over many rows, for training it with a
//! hand-written gradient: the logits, the caller's per-row gradient ∂loss/∂a and the weight
//! gradient Σᵢ gᵢ zᵢᵀ in **one pass** over the rows.
//!
//! Why: with C = 2 both products of a training step (`Z Wᵀ` and `Gᵀ Z`) do 2 multiply-adds per
//! value of Z they read, so a step is bound by reading Z, and a general matrix product reads it
//! twice (and packs the skinny operand for each call). Here each group of 8 rows is read from
//! memory once, and read again from the L1 cache for its share of the gradient.

use rayon::prelude::*;

/// Rows per task on rayon's pool and per f32 partial sum of the gradient (6000 rows make 47
/// tasks).
const BLOCK_ROWS: usize = 128;

/// Partial sums per dot product: four AVX2 registers, so that the additions of one dot product
/// are not serialised on the add latency.
const LANES: usize = 32;

/// The partial sums of a dot product, added pairwise (the same order in every build).
#[inline(always)]
fn reduce_lanes(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for k in 0..width {
            acc[k] += acc[k + width];
        }
    }
    acc[0]
}

/// (w₀·z, w₁·z) in f32, each with 32 partial sums, reading `z` once for both (the compiler may
/// not reorder a floating-point sum, so the lanes are written out).
///
/// `ahead` points at the data to be read after `z` (a later row): its cache lines are
/// prefetched while `z` is multiplied, so the memory stream is not waited for row by row.
#[inline(always)]
fn dot_pair(w0: &[f32], w1: &[f32], z: &[f32], ahead: *const f32) -> (f32, f32) {
    let n = z.len().min(w0.len()).min(w1.len());
    let full = n - n % LANES;
    let (mut acc0, mut acc1) = ([0.0f32; LANES], [0.0f32; LANES]);
    for (i, ((x, a), b)) in z[..full]
        .chunks_exact(LANES)
        .zip(w0[..full].chunks_exact(LANES))
        .zip(w1[..full].chunks_exact(LANES))
        .enumerate()
    {
        prefetch(ahead.wrapping_add(i * LANES));
        prefetch(ahead.wrapping_add(i * LANES + LANES / 2));
        for k in 0..LANES {
            acc0[k] += a[k] * x[k];
            acc1[k] += b[k] * x[k];
        }
    }
    let (mut tail0, mut tail1) = (0.0f32, 0.0f32);
    for j in full..n {
        tail0 += w0[j] * z[j];
        tail1 += w1[j] * z[j];
    }
    (reduce_lanes(acc0) + tail0, reduce_lanes(acc1) + tail1)
}

/// Asks the CPU to bring the cache line at `p` into its caches (a hint: never faults, even
/// outside an allocation, and changes no value).
#[inline(always)]
fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program can observe and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Rows ahead of the current one whose cache lines [`block_logits`] prefetches.
const PREFETCH_ROWS: usize = 4;

/// Logits of `rows` (row-major, width `d`) into `out` (`C` per row): `out[i·C + k] = wₖ·zᵢ + bₖ`,
/// two classes per pass over a row (the last one paired with itself when C is odd). Rows are
/// assumed to continue past the end of `rows` (the next group of the same matrix), which are
/// prefetched too.
#[inline(always)]
fn block_logits(rows: &[f32], d: usize, w: &[f32], b: &[f32], out: &mut [f32]) {
    let c = b.len();
    for (z, a) in rows.chunks_exact(d).zip(out.chunks_exact_mut(c)) {
        let ahead = z.as_ptr().wrapping_add(PREFETCH_ROWS * d);
        for k in (0..c).step_by(2) {
            let k1 = (k + 1).min(c - 1);
            // the row is in cache after the first pair: prefetch once per row
            let ahead = if k == 0 { ahead } else { z.as_ptr() };
            let (s0, s1) = dot_pair(&w[k * d..(k + 1) * d], &w[k1 * d..(k1 + 1) * d], z, ahead);
            a[k] = s0 + b[k];
            a[k1] = s1 + b[k1];
        }
    }
}

/// Rows whose terms [`block_grad`] adds to register-held slices of the gradient before storing
/// them: the gradient is loaded and stored once per group instead of once per row.
const GRAD_GROUP: usize = 8;

/// `acc[k·d + j] += Σᵢ g[i·C + k] · rows[i·d + j]` over the rows of one block, in row order, so
/// each `acc` value is the same sequence of additions whatever the grouping and `L`, the
/// columns taken at a time (64 fill 8 AVX-512 registers for two classes, 32 fill 8 AVX2 ones):
/// independent sums, so that the additions are not serialised on their latency.
///
/// Terms of rows with a zero gradient are added too. For finite rows ([`linear_head_pass`]
/// requires them) that changes no bit: the products are ±0, and a sum that starts at +0 never becomes −0, so
/// adding ±0 leaves it as it is.
#[inline(always)]
fn block_grad<const L: usize>(rows: &[f32], d: usize, g: &[f32], c: usize, acc: &mut [f32]) {
    for (group, g_group) in rows.chunks(GRAD_GROUP * d).zip(g.chunks(GRAD_GROUP * c)) {
        for k in (0..c).step_by(2) {
            if k + 1 < c {
                let (acc0, acc1) = acc[k * d..(k + 2) * d].split_at_mut(d);
                grad_pair::<L>(group, d, g_group, c, k, acc0, acc1);
            } else {
                for (z, gi) in group.chunks_exact(d).zip(g_group.chunks_exact(c)) {
                    for (s, &zj) in acc[k * d..(k + 1) * d].iter_mut().zip(z) {
                        *s += gi[k] * zj;
                    }
                }
            }
        }
    }
}

/// Classes `k` and `k + 1` of [`block_grad`] for one group of rows, reading each row once.
#[inline(always)]
fn grad_pair<const L: usize>(
    group: &[f32],
    d: usize,
    g_group: &[f32],
    c: usize,
    k: usize,
    acc0: &mut [f32],
    acc1: &mut [f32],
) {
    let full = d - d % L;
    for j0 in (0..full).step_by(L) {
        let (mut a0, mut a1) = ([0.0f32; L], [0.0f32; L]);
        a0.copy_from_slice(&acc0[j0..j0 + L]);
        a1.copy_from_slice(&acc1[j0..j0 + L]);
        for (z, gi) in group.chunks_exact(d).zip(g_group.chunks_exact(c)) {
            let (g0, g1) = (gi[k], gi[k + 1]);
            let z = &z[j0..j0 + L];
            for l in 0..L {
                a0[l] += g0 * z[l];
                a1[l] += g1 * z[l];
            }
        }
        acc0[j0..j0 + L].copy_from_slice(&a0);
        acc1[j0..j0 + L].copy_from_slice(&a1);
    }
    for (z, gi) in group.chunks_exact(d).zip(g_group.chunks_exact(c)) {
        for j in full..d {
            acc0[j] += gi[k] * z[j];
            acc1[j] += gi[k + 1] * z[j];
        }
    }
}

/// [`block_grad`] one row at a time (the order of additions it must keep), for its test.
#[cfg(test)]
fn block_grad_by_row(rows: &[f32], d: usize, g: &[f32], c: usize, acc: &mut [f32]) {
    for (z, gi) in rows.chunks_exact(d).zip(g.chunks_exact(c)) {
        for (acc_k, &gk) in acc.chunks_exact_mut(d).zip(gi) {
            if gk == 0.0 {
                continue;
            }
            for (s, &zj) in acc_k.iter_mut().zip(z) {
                *s += gk * zj;
            }
        }
    }
}

/// [`block_logits`], on AVX-512 or AVX2 when the CPU has it (the same values either way).
fn logits_of_block(rows: &[f32], d: usize, w: &[f32], b: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512() {
        // SAFETY: the CPU supports AVX-512F (checked at run time).
        unsafe { simd::block_logits_avx512(rows, d, w, b, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        unsafe { simd::block_logits_avx2(rows, d, w, b, out) };
        return;
    }
    block_logits(rows, d, w, b, out);
}

/// [`block_grad`], on AVX-512 or AVX2 when the CPU has it (the same values either way).
fn grad_of_block(rows: &[f32], d: usize, g: &[f32], c: usize, acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512() {
        // SAFETY: the CPU supports AVX-512F (checked at run time).
        unsafe { simd::block_grad_avx512(rows, d, g, c, acc) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        unsafe { simd::block_grad_avx2(rows, d, g, c, acc) };
        return;
    }
    block_grad::<32>(rows, d, g, c, acc);
}

/// Rows per call of the caller's `row_grads` in [`linear_head_pass`]: 8 rows of 768 f32 (24 KiB)
/// are still in the core's L1 cache (48 KiB, with the weights and the gradient) when their share
/// of the gradient is added (16 rows were 10 % slower, 4 no faster).
pub const ROW_GROUP: usize = 8;

/// One block of [`linear_head_pass`], [`ROW_GROUP`] rows at a time: the caller's values, the
/// block's share of ∂/∂W (f32, in row order) and of ∂/∂b (its rows' gradients summed in f64,
/// in row order).
fn head_block<T>(
    rows: &[f32],
    first_row: usize,
    d: usize,
    w: &[f32],
    b: &[f32],
    row_grads: &(impl Fn(usize, &[f32], &mut [f32]) -> T + Sync),
) -> (Vec<T>, Vec<f32>, Vec<f64>) {
    let c = b.len();
    let mut logits = vec![0.0f32; ROW_GROUP * c];
    let mut g = vec![0.0f32; ROW_GROUP * c];
    let mut acc = vec![0.0f32; c * d];
    let mut sum_g = vec![0.0f64; c];
    let mut values = Vec::with_capacity(rows.len().div_ceil(ROW_GROUP * d));
    for (i, group) in rows.chunks(ROW_GROUP * d).enumerate() {
        let n = group.len() / d;
        let (logits, g) = (&mut logits[..n * c], &mut g[..n * c]);
        g.fill(0.0);
        logits_of_block(group, d, w, b, logits);
        values.push(row_grads(first_row + i * ROW_GROUP, logits, g));
        grad_of_block(group, d, g, c, &mut acc);
        for gi in g.chunks_exact(c) {
            for (s, &v) in sum_g.iter_mut().zip(gi) {
                *s += f64::from(v);
            }
        }
    }
    (values, acc, sum_g)
}

/// One training pass of a linear head over `z` (`n × d`, row-major) with weights `w` (`C × d`,
/// row-major) and bias `b` (`C`):
///
/// 1. the logits `aᵢ = W zᵢ + b` of a group of [`ROW_GROUP`] rows (f32 dot products);
/// 2. `row_grads(first_row, logits, grad)` fills `grad` with ∂loss/∂a for those rows (`C` per
///    row, same layout as `logits`, zeros on entry) and returns a value of the caller's (its
///    share of the loss);
/// 3. the group's share of `grad_w = Σᵢ gᵢ zᵢᵀ` (`C × d`) and `grad_b = Σᵢ gᵢ` (`C`), both
///    overwritten, while its rows are still in cache.
///
/// Blocks of 128 rows run on rayon's pool. Within a block the gradient is summed in f32, in row
/// order; the blocks' sums are added in f64, in block order. The values come back one per
/// group, in row order. The result does not depend on the number of threads.
///
/// `z` must be finite (the caller checks it): a row's terms are added to the gradient even
/// where its gradient is 0, which for an infinite value would give NaN.
///
/// # Panics
/// When the slices disagree in size.
///
/// ```
/// // One class score: a = 2·z₀ + 3·z₁ + 1, and the loss Σ a, so ∂loss/∂a = 1 per row.
/// let z = [1.0f32, 0.0, 0.0, 1.0];
/// let (mut gw, mut gb) = (vec![0.0; 2], vec![0.0; 1]);
/// let losses = replens_kernels::linear_head_pass(&z, 2, &[2.0, 3.0], &[1.0], &mut gw, &mut gb,
///     |_, a, g| { g.fill(1.0); a.iter().map(|&v| f64::from(v)).sum::<f64>() });
/// assert_eq!(losses, vec![7.0]);
/// assert_eq!((gw, gb), (vec![1.0, 1.0], vec![2.0]));
/// ```
pub fn linear_head_pass<T: Send>(
    z: &[f32],
    d: usize,
    w: &[f32],
    b: &[f32],
    grad_w: &mut [f64],
    grad_b: &mut [f64],
    row_grads: impl Fn(usize, &[f32], &mut [f32]) -> T + Sync,
) -> Vec<T> {
    let c = b.len();
    assert!(d > 0 && c > 0 && z.len().is_multiple_of(d));
    assert!(w.len() == c * d && grad_w.len() == c * d && grad_b.len() == c);
    let blocks: Vec<(Vec<T>, Vec<f32>, Vec<f64>)> = z
        .par_chunks(BLOCK_ROWS * d)
        .enumerate()
        .map(|(i, rows)| head_block(rows, i * BLOCK_ROWS, d, w, b, &row_grads))
        .collect();
    grad_w.fill(0.0);
    grad_b.fill(0.0);
    let mut values = Vec::with_capacity(z.len().div_ceil(ROW_GROUP * d));
    for (block_values, acc, sum_g) in blocks {
        for (s, &v) in grad_w.iter_mut().zip(&acc) {
            *s += f64::from(v);
        }
        for (s, v) in grad_b.iter_mut().zip(sum_g) {
            *s += v;
        }
        values.extend(block_values);
    }
    values
}

/// The logits `out[i·C + k] = wₖ·zᵢ + bₖ` of every row of `z` (`n × d`), as computed by
/// [`linear_head_pass`] (the same values), blocks of rows on rayon's pool.
///
/// # Panics
/// When the slices disagree in size.
///
/// ```
/// let mut a = vec![0.0f32; 2];
/// replens_kernels::linear_head_logits(&[1.0, 2.0, 3.0, 4.0], 2, &[1.0, -1.0], &[0.5], &mut a);
/// assert_eq!(a, vec![-0.5, -0.5]);
/// ```
pub fn linear_head_logits(z: &[f32], d: usize, w: &[f32], b: &[f32], out: &mut [f32]) {
    let c = b.len();
    assert!(d > 0 && c > 0 && z.len().is_multiple_of(d));
    assert!(w.len() == c * d && out.len() == z.len() / d * c);
    z.par_chunks(BLOCK_ROWS * d)
        .zip(out.par_chunks_mut(BLOCK_ROWS * c))
        .for_each(|(rows, a)| logits_of_block(rows, d, w, b, a));
}

/// The loops compiled for AVX2 and AVX-512 as well (8 and 16 f32 lanes against SSE2's 4),
/// chosen at run time; no multiply-add is fused, so every build gives the same values.
#[cfg(target_arch = "x86_64")]
mod simd {
    /// The two loops built for one target feature, `$lanes` columns at a time in the gradient.
    macro_rules! build_for {
        ($feature:literal, $logits:ident, $grad:ident, $lanes:literal) => {
            /// # Safety
            /// The CPU must support the target feature.
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn $logits(
                rows: &[f32],
                d: usize,
                w: &[f32],
                b: &[f32],
                out: &mut [f32],
            ) {
                super::block_logits(rows, d, w, b, out)
            }

            /// # Safety
            /// The CPU must support the target feature.
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn $grad(
                rows: &[f32],
                d: usize,
                g: &[f32],
                c: usize,
                acc: &mut [f32],
            ) {
                super::block_grad::<$lanes>(rows, d, g, c, acc)
            }
        };
    }

    build_for!("avx512f", block_logits_avx512, block_grad_avx512, 64);
    build_for!("avx2", block_logits_avx2, block_grad_avx2, 32);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seed: u64, len: usize) -> Vec<f32> {
        crate::uniform(seed, len)
            .into_iter()
            .map(|v| (2.0 * v - 1.0) as f32)
            .collect()
    }

    /// Logits, gradients and the caller's values against an f64 reference, over a row count
    /// that leaves a partial last block and a width that leaves a tail of the 16 lanes.
    #[test]
    fn pass_matches_f64_reference() {
        let (n, d, c) = (300, 37, 3);
        let (z, w, b) = (sample(1, n * d), sample(2, c * d), sample(3, c));
        let target = sample(4, n * c);
        let (mut gw, mut gb) = (vec![0.0; c * d], vec![0.0; c]);
        // loss = ½ Σ (a − t)², so ∂loss/∂a = a − t
        let values = linear_head_pass(&z, d, &w, &b, &mut gw, &mut gb, |first, a, g| {
            let mut loss = 0.0f64;
            for (i, (ai, gi)) in a.chunks_exact(c).zip(g.chunks_exact_mut(c)).enumerate() {
                for k in 0..c {
                    let r = ai[k] - target[(first + i) * c + k];
                    gi[k] = r;
                    loss += 0.5 * f64::from(r) * f64::from(r);
                }
            }
            loss
        });
        assert_eq!(values.len(), n.div_ceil(ROW_GROUP));
        let mut a_ref = vec![0.0f64; n * c];
        for i in 0..n {
            for k in 0..c {
                a_ref[i * c + k] = (0..d)
                    .map(|j| f64::from(w[k * d + j]) * f64::from(z[i * d + j]))
                    .sum::<f64>()
                    + f64::from(b[k]);
            }
        }
        let loss_ref: f64 = a_ref
            .iter()
            .zip(&target)
            .map(|(a, &t)| 0.5 * (a - f64::from(t)).powi(2))
            .sum();
        let loss: f64 = values.iter().sum();
        assert!(
            (loss - loss_ref).abs() < 1e-5 * loss_ref,
            "{loss} {loss_ref}"
        );
        for k in 0..c {
            let gb_ref: f64 = (0..n)
                .map(|i| a_ref[i * c + k] - f64::from(target[i * c + k]))
                .sum();
            assert!((gb[k] - gb_ref).abs() < 1e-4, "{} {gb_ref}", gb[k]);
            for j in 0..d {
                let gw_ref: f64 = (0..n)
                    .map(|i| {
                        (a_ref[i * c + k] - f64::from(target[i * c + k])) * f64::from(z[i * d + j])
                    })
                    .sum();
                assert!(
                    (gw[k * d + j] - gw_ref).abs() < 1e-4,
                    "{} {gw_ref}",
                    gw[k * d + j]
                );
            }
        }
        let mut logits = vec![0.0f32; n * c];
        linear_head_logits(&z, d, &w, &b, &mut logits);
        for (a, r) in logits.iter().zip(&a_ref) {
            assert!((f64::from(*a) - r).abs() < 1e-5);
        }
    }

    /// The grouped gradient adds the same terms in the same order as one row at a time that
    /// skips zero gradients, for an odd class count, a partial last group and a tail of the
    /// lanes, at both widths.
    #[test]
    fn grouped_gradient_equals_row_by_row() {
        let (n, d, c) = (21, 77, 3);
        let z = sample(8, n * d);
        let mut g = sample(9, n * c);
        for i in [0, 5, 6, 7, 20] {
            g[i * c + 1] = 0.0;
        }
        let mut by_row = sample(10, c * d);
        block_grad_by_row(&z, d, &g, c, &mut by_row);
        let (mut narrow, mut wide) = (sample(10, c * d), sample(10, c * d));
        block_grad::<32>(&z, d, &g, c, &mut narrow);
        block_grad::<64>(&z, d, &g, c, &mut wide);
        assert_eq!(narrow, by_row);
        assert_eq!(wide, by_row);
    }

    /// The same sums whatever the number of threads, and the AVX2 and AVX-512 builds equal the
    /// baseline.
    #[test]
    fn pass_is_deterministic_and_builds_agree() {
        let (n, d, c) = (1000, 64, 2);
        let (z, w, b) = (sample(5, n * d), sample(6, c * d), sample(7, c));
        let run = || {
            let (mut gw, mut gb) = (vec![0.0; c * d], vec![0.0; c]);
            let values = linear_head_pass(&z, d, &w, &b, &mut gw, &mut gb, |first, a, g| {
                g.iter_mut().zip(a).for_each(|(g, &a)| *g = a * 0.5 - 0.25);
                first as f64 + a.iter().map(|&v| f64::from(v)).sum::<f64>()
            });
            (values, gw, gb)
        };
        let pool = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
        };
        let one = pool(1).install(run);
        let three = pool(3).install(run);
        assert_eq!(one, three);
        let mut generic = vec![0.0f32; 4 * c];
        block_logits(&z[..4 * d], d, &w, &b, &mut generic);
        let mut acc = vec![0.0f32; c * d];
        block_grad::<32>(&z[..4 * d], d, &generic, c, &mut acc);
        #[cfg(target_arch = "x86_64")]
        if crate::simd::has_avx2() {
            let mut fast = vec![0.0f32; 4 * c];
            let mut acc_fast = vec![0.0f32; c * d];
            unsafe {
                simd::block_logits_avx2(&z[..4 * d], d, &w, &b, &mut fast);
                simd::block_grad_avx2(&z[..4 * d], d, &generic, c, &mut acc_fast);
            }
            assert_eq!(fast, generic);
            assert_eq!(acc_fast, acc);
        }
        #[cfg(target_arch = "x86_64")]
        if crate::simd::has_avx512() {
            let mut fast = vec![0.0f32; 4 * c];
            let mut acc_fast = vec![0.0f32; c * d];
            unsafe {
                simd::block_logits_avx512(&z[..4 * d], d, &w, &b, &mut fast);
                simd::block_grad_avx512(&z[..4 * d], d, &generic, c, &mut acc_fast);
            }
            assert_eq!(fast, generic);
            assert_eq!(acc_fast, acc);
        }
    }
}
