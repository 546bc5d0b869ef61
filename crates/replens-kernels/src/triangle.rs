//! The upper triangle of a symmetric `n × n` matrix, stored by row blocks.

use crate::buffer::advised_vec;
use crate::gram::Real;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Rows per block of an [`UpperTriangle`]: tall enough for `gemm` to fill a block at full speed
/// (measured on 10k × 768 f64 rows: 64-row products took 1.8× as long as 128–256-row ones).
pub const TRIANGLE_BLOCK: usize = 128;

/// The upper triangle (diagonal included) of a symmetric `n × n` matrix, in about half the memory
/// of the full matrix: block `b` holds rows `b·B .. min((b + 1)·B, n)` (B = [`TRIANGLE_BLOCK`]) and
/// columns `b·B .. n`, row-major, so each block is one strided matrix for `gemm`. Entries left of
/// the diagonal inside a block are stored but hold no data (zero unless a writer says otherwise).
///
/// Halving the memory halves the page faults as well: for the pooled kernels of a 5000 + 5000
/// MMD test (10⁸ entries), the kernel's page zeroing was ~20 % of the run with full matrices.
///
/// ```
/// use replens_kernels::UpperTriangle;
/// let t = UpperTriangle::from_fn(3, |i, j| (10 * i + j) as f64);
/// assert_eq!(t.row(1), &[11.0, 12.0]);
/// assert_eq!(t.get(0, 2), 2.0);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct UpperTriangle<T> {
    n: usize,
    data: Vec<T>,
    /// Offset of each block in `data`, and `data.len()` last.
    starts: Vec<usize>,
}

/// One block of an [`UpperTriangle`]: rows `r0 .. r0 + rows`, columns `r0 .. n`, row stride
/// `n − r0`.
#[derive(Debug)]
pub struct Block<S> {
    /// First row (and first column) of the block.
    pub r0: usize,
    /// Rows in the block.
    pub rows: usize,
    /// The block's entries, row-major with stride `n − r0`.
    pub data: S,
}

impl<T: Real> UpperTriangle<T> {
    /// The block offsets for `n` rows.
    fn layout(n: usize) -> Vec<usize> {
        let mut starts = Vec::with_capacity(n.div_ceil(TRIANGLE_BLOCK) + 1);
        let mut offset = 0;
        for r0 in (0..n).step_by(TRIANGLE_BLOCK) {
            starts.push(offset);
            offset += TRIANGLE_BLOCK.min(n - r0) * (n - r0);
        }
        starts.push(offset);
        starts
    }

    /// A triangle whose blocks `fill` writes, block by block (in parallel when `parallel`), and
    /// what `fill` returned for each block, in block order.
    ///
    /// # Safety
    /// `fill` must initialise every entry of the block it is given.
    pub(crate) unsafe fn build<R: Send>(
        n: usize,
        parallel: bool,
        fill: impl Fn(Block<&mut [MaybeUninit<T>]>) -> R + Sync,
    ) -> (Self, Vec<R>) {
        let starts = Self::layout(n);
        let len = *starts.last().unwrap_or(&0);
        let mut data: Vec<T> = advised_vec(len);
        let results = {
            let mut rest = &mut data.spare_capacity_mut()[..len];
            let mut blocks = Vec::with_capacity(starts.len().saturating_sub(1));
            for (b, w) in starts.windows(2).enumerate() {
                let (block, tail) = rest.split_at_mut(w[1] - w[0]);
                rest = tail;
                let r0 = b * TRIANGLE_BLOCK;
                blocks.push(Block {
                    r0,
                    rows: TRIANGLE_BLOCK.min(n - r0),
                    data: block,
                });
            }
            if parallel {
                blocks.into_par_iter().map(&fill).collect()
            } else {
                blocks.into_iter().map(&fill).collect()
            }
        };
        // SAFETY: `fill` initialised every block (the caller's promise), and the blocks tile
        // `data[..len]`.
        unsafe { data.set_len(len) };
        (Self { n, data, starts }, results)
    }

    /// The triangle with entries `f(i, j)` for j ≥ i (zeros left of the diagonal), computed on
    /// rayon's threads.
    pub fn from_fn(n: usize, f: impl Fn(usize, usize) -> T + Sync) -> Self {
        let zero = T::from_f64(0.0);
        // SAFETY: every entry of each block is written.
        unsafe {
            Self::build(n, true, |block| {
                let stride = n - block.r0;
                for (r, row) in block.data.chunks_exact_mut(stride).enumerate() {
                    let i = block.r0 + r;
                    for (c, v) in row.iter_mut().enumerate() {
                        let j = block.r0 + c;
                        v.write(if j >= i { f(i, j) } else { zero });
                    }
                }
            })
            .0
        }
    }

    /// The upper triangle of the row-major `n × n` matrix `a`.
    ///
    /// # Panics
    /// When `a.len() != n * n`.
    pub fn from_full(a: &[T], n: usize) -> Self {
        assert_eq!(a.len(), n * n, "UpperTriangle::from_full: a is not n × n");
        Self::from_fn(n, |i, j| a[i * n + j])
    }

    /// Rows (and columns) of the matrix.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Row `i` on and right of the diagonal: entries (i, i), (i, i + 1), …, (i, n − 1).
    ///
    /// # Panics
    /// When `i ≥ n`.
    pub fn row(&self, i: usize) -> &[T] {
        assert!(i < self.n, "UpperTriangle::row: row {i} of {}", self.n);
        let b = i / TRIANGLE_BLOCK;
        let r0 = b * TRIANGLE_BLOCK;
        let stride = self.n - r0;
        let start = self.starts[b] + (i - r0) * stride + (i - r0);
        &self.data[start..self.starts[b] + (i - r0 + 1) * stride]
    }

    /// Entry (i, j) for i ≤ j.
    ///
    /// # Panics
    /// When `i > j` or `j ≥ n`.
    pub fn get(&self, i: usize, j: usize) -> T {
        assert!(
            i <= j,
            "UpperTriangle::get: ({i}, {j}) is below the diagonal"
        );
        self.row(i)[j - i]
    }

    /// The blocks, top to bottom.
    pub fn blocks(&self) -> impl Iterator<Item = Block<&[T]>> + '_ {
        self.starts.windows(2).enumerate().map(|(b, w)| {
            let r0 = b * TRIANGLE_BLOCK;
            Block {
                r0,
                rows: TRIANGLE_BLOCK.min(self.n - r0),
                data: &self.data[w[0]..w[1]],
            }
        })
    }

    /// The blocks, top to bottom, for writing in place.
    pub fn blocks_mut(&mut self) -> Vec<Block<&mut [T]>> {
        let n = self.n;
        let mut rest = self.data.as_mut_slice();
        let mut blocks = Vec::with_capacity(self.starts.len().saturating_sub(1));
        for (b, w) in self.starts.windows(2).enumerate() {
            let (block, tail) = rest.split_at_mut(w[1] - w[0]);
            rest = tail;
            let r0 = b * TRIANGLE_BLOCK;
            blocks.push(Block {
                r0,
                rows: TRIANGLE_BLOCK.min(n - r0),
                data: block,
            });
        }
        blocks
    }

    /// Entries stored (about n²/2 + n·B/2).
    pub fn stored_len(&self) -> usize {
        self.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_blocks_and_entries_agree() {
        for n in [0, 1, 5, 128, 129, 300] {
            let t = UpperTriangle::from_fn(n, |i, j| (i * 1000 + j) as f64);
            let mut seen = 0;
            for block in t.blocks() {
                let stride = n - block.r0;
                assert_eq!(block.data.len(), block.rows * stride);
                for r in 0..block.rows {
                    let i = block.r0 + r;
                    assert_eq!(&block.data[r * stride + r..(r + 1) * stride], t.row(i));
                    assert!(block.data[r * stride..r * stride + r]
                        .iter()
                        .all(|&v| v == 0.0));
                }
                seen += block.rows;
            }
            assert_eq!(seen, n);
            for i in 0..n {
                assert_eq!(t.row(i).len(), n - i);
                for j in i..n {
                    assert_eq!(t.get(i, j), (i * 1000 + j) as f64);
                }
            }
            let full: Vec<f64> = (0..n * n)
                .map(|k| ((k / n).min(k % n) * 1000 + (k / n).max(k % n)) as f64)
                .collect();
            assert_eq!(UpperTriangle::from_full(&full, n), t);
            assert!(t.stored_len() <= n * (n + 1) / 2 + n * TRIANGLE_BLOCK / 2);
        }
    }
}
