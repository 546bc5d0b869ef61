//! The products of a linear layer, `y = x · W` with `W` given as row blocks, with the output's
//! columns shared among threads.
//!
//! Why: `gemm`'s own threading splits a product's work inside each call. A forward pass at batch
//! 1 multiplies 128 rows by a few hundred columns, and each of the Llama family's layers is
//! several such calls (one per block of [`K_BLOCK`](self) inputs); there `gemm` with two threads
//! ran at 120–150 GFLOP/s on the two cores where one single-threaded call per half of the
//! columns ran at 190–250 (measured on 128 × 1536 × 576 and 128 × 576 × 576 f32, 2 threads,
//! AVX-512). Every thread here runs all blocks of its columns with single-threaded calls, so its
//! part of `y` stays in its cache from one block to the next.

use rayon::prelude::*;

use crate::gram::Real;
use crate::SendPtr;

/// Fewer rows than this keep `gemm`'s own threading: `gemm` multiplies products of at most 64
/// rows and 64 columns with another depth blocking (its small-matrix path), so splitting their
/// columns could change how a value is summed; from 65 rows on, every column's sums are the same
/// whatever the split (tested bit for bit), and small products gain nothing from threads anyway.
pub const COLUMN_SPLIT_MIN_ROWS: usize = 65;

/// A thread's share of the columns starts at a multiple of this (64 bytes of f32), so that, when
/// `y`'s rows are 64-byte multiples, two threads rarely write the same cache line.
const COLUMN_ALIGN: usize = 16;

/// `y = Σ_b x[:, block b] · W_b` for the row-major `rows × in_dim` matrix `x` and the row
/// blocks `W_b` (`widths[b] × out_dim`, row-major, `Σ widths = in_dim`): one `gemm` call per
/// block, each adding into `y` (`rows × out_dim`, row-major, overwritten), in block order.
///
/// With `threads > 1` and at least [`COLUMN_SPLIT_MIN_ROWS`] rows, the columns of `y` are cut
/// into up to `threads` slabs (of at least 16 columns), each computed on one of rayon's threads
/// by single-threaded calls; every
/// value of `y` is summed in the same order either way, so the result does not depend on
/// `threads` (tested).
///
/// The bit-for-bit claim rests on how `gemm` 0.19 blocks its sums (its depth blocking depends on
/// the depth only, except in its path for products of at most 64 × 64): the test
/// `splitting_the_columns_changes_no_bit` must pass again after a `gemm` upgrade.
///
/// # Panics
/// When a slice's length does not match its shape, or a size overflows.
///
/// ```
/// // x = [[1, 2, 3]], W = [[1, 0], [0, 1]] then [[1, 1]]: y = [[1 + 3, 2 + 3]]
/// let mut y = vec![0.0f32; 2];
/// let blocks: [&[f32]; 2] = [&[1.0, 0.0, 0.0, 1.0], &[1.0, 1.0]];
/// replens_kernels::blocked_product(&mut y, &[1.0, 2.0, 3.0], 1, &blocks, &[2, 1], 2, 2);
/// assert_eq!(y, vec![4.0, 5.0]);
/// ```
pub fn blocked_product<T: Real>(
    y: &mut [T],
    x: &[T],
    rows: usize,
    blocks: &[&[T]],
    widths: &[usize],
    out_dim: usize,
    threads: usize,
) {
    // Sizes are computed with checks: a product that wrapped around could let slices far too
    // short for the shapes pass the length checks below.
    let in_dim = widths
        .iter()
        .try_fold(0usize, |sum, &w| sum.checked_add(w))
        .expect("blocked_product: the widths' sum overflows");
    let size = |a: usize, b: usize| {
        a.checked_mul(b)
            .expect("blocked_product: a matrix size overflows")
    };
    assert_eq!(
        blocks.len(),
        widths.len(),
        "blocked_product: one width per block"
    );
    assert_eq!(
        x.len(),
        size(rows, in_dim),
        "blocked_product: x is not rows × Σ widths"
    );
    assert_eq!(
        y.len(),
        size(rows, out_dim),
        "blocked_product: y is not rows × out_dim"
    );
    for (block, &width) in blocks.iter().zip(widths) {
        assert_eq!(
            block.len(),
            size(width, out_dim),
            "blocked_product: a block is not width × out_dim"
        );
    }
    if in_dim == 0 {
        y.iter_mut().for_each(|v| *v = T::from_f64(0.0));
        return;
    }
    if rows == 0 || out_dim == 0 {
        return;
    }
    let slabs = if rows >= COLUMN_SPLIT_MIN_ROWS {
        threads.min(out_dim / COLUMN_ALIGN).max(1)
    } else {
        1
    };
    let y_ptr = SendPtr(y.as_mut_ptr());
    let bound = |s: usize| {
        if s == slabs {
            out_dim
        } else {
            s * out_dim / slabs / COLUMN_ALIGN * COLUMN_ALIGN
        }
    };
    // SAFETY: the slabs' column ranges are disjoint, so no two tasks write the same value of
    // `y`, which this call borrows mutably until every task has returned.
    let slab = |s: usize, threads: usize| unsafe {
        slab_product(
            &y_ptr,
            x,
            rows,
            blocks,
            widths,
            (bound(s), bound(s + 1)),
            out_dim,
            threads,
        )
    };
    if slabs == 1 {
        slab(0, threads);
    } else {
        (0..slabs).into_par_iter().for_each(|s| slab(s, 1));
    }
}

/// Columns `j0..j1` of [`blocked_product`]'s `y`, with `threads` for each `gemm` call.
///
/// # Safety
/// `y` must address `rows × out_dim` values that no other thread reads or writes in columns
/// `j0..j1` meanwhile, with `j0 ≤ j1 ≤ out_dim`, and the slices must have the lengths that
/// [`blocked_product`] asserts.
#[allow(clippy::too_many_arguments)]
unsafe fn slab_product<T: Real>(
    y: &SendPtr<T>,
    x: &[T],
    rows: usize,
    blocks: &[&[T]],
    widths: &[usize],
    (j0, j1): (usize, usize),
    out_dim: usize,
    threads: usize,
) {
    let in_dim: usize = widths.iter().sum();
    let parallelism = crate::gemm_parallelism(threads);
    let (mut start, mut written) = (0, false);
    for (w, &width) in blocks.iter().zip(widths) {
        if width > 0 {
            gemm::gemm(
                rows,
                j1 - j0,
                width,
                y.at(j0),
                1,
                out_dim as isize,
                written,
                x.as_ptr().add(start),
                1,
                in_dim as isize,
                w.as_ptr().add(j0),
                1,
                out_dim as isize,
                T::from_f64(1.0),
                T::from_f64(1.0),
                false,
                false,
                false,
                parallelism,
            );
            written = true;
        }
        start += width;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// The blocks' products added in order, each one `gemm` call over all columns.
    fn unsplit(
        x: &[f32],
        rows: usize,
        blocks: &[Vec<f32>],
        widths: &[usize],
        n: usize,
    ) -> Vec<f32> {
        let mut y = vec![0.0f32; rows * n];
        let in_dim: usize = widths.iter().sum();
        let mut start = 0;
        for (w, &width) in blocks.iter().zip(widths) {
            unsafe {
                gemm::gemm(
                    rows,
                    n,
                    width,
                    y.as_mut_ptr(),
                    1,
                    n as isize,
                    start > 0,
                    x.as_ptr().add(start),
                    1,
                    in_dim as isize,
                    w.as_ptr(),
                    1,
                    n as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(2),
                );
            }
            start += width;
        }
        y
    }

    #[test]
    fn splitting_the_columns_changes_no_bit() {
        // Llama's 256-wide blocks and BERT's single blocks, with rows below and above the split
        // threshold and column counts that do not divide evenly.
        for &(rows, ref widths, n) in &[
            (128usize, vec![256usize, 256, 64], 576usize),
            (128, vec![256; 6], 576),
            (1024, vec![256, 256, 64], 192),
            (65, vec![384], 1536),
            (200, vec![1536], 384),
            (300, vec![3000], 77),
            (7, vec![576], 77),
            (64, vec![576], 40),
            (1, vec![256, 32], 300),
        ] {
            let in_dim: usize = widths.iter().sum();
            let x = values(rows * in_dim, 1 + rows as u64);
            let blocks: Vec<Vec<f32>> = widths
                .iter()
                .enumerate()
                .map(|(b, &w)| values(w * n, 100 + b as u64))
                .collect();
            let expected = unsplit(&x, rows, &blocks, widths, n);
            let refs: Vec<&[f32]> = blocks.iter().map(|b| b.as_slice()).collect();
            for threads in [1, 2, 3, 5] {
                let mut y = vec![f32::NAN; rows * n];
                blocked_product(&mut y, &x, rows, &refs, widths, n, threads);
                let same = y
                    .iter()
                    .zip(&expected)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "rows {rows}, widths {widths:?}, n {n}, threads {threads}"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "overflows")]
    fn sizes_that_overflow_are_refused() {
        // the widths' sum and the blocks' sizes wrap around to lengths these slices have
        let mut y = vec![0.0f32; 2];
        let huge = 1usize << (usize::BITS - 1);
        blocked_product(
            &mut y,
            &[1.0],
            1,
            &[&[], &[], &[0.5, 0.5]],
            &[huge, huge, 1],
            2,
            2,
        );
    }

    #[test]
    fn an_empty_reduction_gives_zeros() {
        let mut y = vec![f64::NAN; 6];
        blocked_product::<f64>(&mut y, &[], 3, &[], &[], 2, 2);
        assert_eq!(y, vec![0.0; 6]);
    }

    #[test]
    fn f64_products_match_a_naive_sum() {
        let (rows, k, n) = (100usize, 70usize, 40usize);
        let x: Vec<f64> = values(rows * k, 3).into_iter().map(f64::from).collect();
        let w: Vec<f64> = values(k * n, 4).into_iter().map(f64::from).collect();
        let mut y = vec![0.0f64; rows * n];
        blocked_product(
            &mut y,
            &x,
            rows,
            &[&w[..40 * n], &w[40 * n..]],
            &[40, 30],
            n,
            2,
        );
        for i in 0..rows {
            for j in 0..n {
                let naive: f64 = (0..k).map(|p| x[i * k + p] * w[p * n + j]).sum();
                assert!((y[i * n + j] - naive).abs() < 1e-12, "({i}, {j})");
            }
        }
    }
}
