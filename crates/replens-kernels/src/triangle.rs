//! The upper triangle of a symmetric `n × n` matrix, stored by row blocks.

use crate::gram::Real;
use rayon::prelude::*;
use std::marker::PhantomData;
use std::mem::{align_of, size_of, MaybeUninit};

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
#[derive(Debug, Clone)]
pub struct UpperTriangle<T> {
    n: usize,
    /// The storage in 8-byte words, viewed as `T` values: an f64 triangle's memory can then hold
    /// an f32 one ([`UpperTriangle::into_f32`]) and still be freed as what it was allocated as.
    words: Vec<f64>,
    /// Offset of each block in `T` values.
    starts: Vec<usize>,
    values: PhantomData<T>,
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

/// Rows of the block at `r0` of an `n`-row triangle.
fn block_rows(n: usize, r0: usize) -> usize {
    TRIANGLE_BLOCK.min(n - r0)
}

impl<T: Real> UpperTriangle<T> {
    /// The offsets (in `T` values) of the blocks of `n` rows stored one after the other, and
    /// the values they take in all.
    fn layout(n: usize) -> (Vec<usize>, usize) {
        assert!(
            8 % size_of::<T>() == 0 && align_of::<T>() <= 8,
            "UpperTriangle: values must tile 8-byte words"
        );
        let mut starts = Vec::with_capacity(n.div_ceil(TRIANGLE_BLOCK));
        let mut offset = 0;
        for r0 in (0..n).step_by(TRIANGLE_BLOCK) {
            starts.push(offset);
            offset += block_rows(n, r0) * (n - r0);
        }
        (starts, offset)
    }

    /// All values the storage holds (the blocks and any gaps between them).
    fn values(&self) -> &[T] {
        let len = self.words.len() * 8 / size_of::<T>();
        // SAFETY: `words` is initialised and `T` tiles its 8-byte words (checked in `layout`);
        // T (f32 or f64) has no invalid bit patterns.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<T>(), len) }
    }

    fn values_mut(&mut self) -> &mut [T] {
        let len = self.words.len() * 8 / size_of::<T>();
        // SAFETY: as in `values`, with the unique borrow of `words`.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<T>(), len) }
    }

    /// Block `b`'s first row and rows, and the range of its values.
    fn block_range(&self, b: usize) -> (usize, usize, std::ops::Range<usize>) {
        let r0 = b * TRIANGLE_BLOCK;
        let rows = block_rows(self.n, r0);
        let start = self.starts[b];
        (r0, rows, start..start + rows * (self.n - r0))
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
        let (starts, len) = Self::layout(n);
        let word_count = (len * size_of::<T>()).div_ceil(8);
        // Plain 4 KiB pages: advised as transparent huge pages (what numpy does), the MMD
        // benchmark turned bimodal on a VM, 0.82 or 1.03–1.10 s (compaction stalls), against a
        // steady 0.88–0.91 s.
        let mut words: Vec<f64> = Vec::with_capacity(word_count);
        let results = {
            let spare = words.spare_capacity_mut();
            // A last word half filled by f32 values is initialised in full first.
            if let Some(last) = spare[..word_count].last_mut() {
                last.write(0.0);
            }
            // SAFETY: the spare capacity holds `word_count` words, which `T` tiles (`layout`);
            // MaybeUninit<T> has T's layout.
            let mut rest = unsafe {
                std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<MaybeUninit<T>>(), len)
            };
            let mut blocks = Vec::with_capacity(starts.len());
            for (b, r0) in (0..n).step_by(TRIANGLE_BLOCK).enumerate() {
                let rows = block_rows(n, r0);
                let (block, tail) = rest.split_at_mut(rows * (n - r0));
                debug_assert_eq!(starts[b] + block.len() + tail.len(), len);
                rest = tail;
                blocks.push(Block {
                    r0,
                    rows,
                    data: block,
                });
            }
            if parallel {
                blocks.into_par_iter().map(&fill).collect()
            } else {
                blocks.into_iter().map(&fill).collect()
            }
        };
        // SAFETY: `fill` initialised every block (the caller's promise), the blocks tile the
        // first `len` values, and the last word was initialised above.
        unsafe { words.set_len(word_count) };
        let triangle = Self {
            n,
            words,
            starts,
            values: PhantomData,
        };
        (triangle, results)
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
        let (r0, _, range) = self.block_range(i / TRIANGLE_BLOCK);
        let (r, stride) = (i - r0, self.n - r0);
        &self.values()[range.start + r * stride + r..range.start + (r + 1) * stride]
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
        (0..self.starts.len()).map(|b| {
            let (r0, rows, range) = self.block_range(b);
            Block {
                r0,
                rows,
                data: &self.values()[range],
            }
        })
    }

    /// The blocks, top to bottom, for writing in place.
    pub fn blocks_mut(&mut self) -> Vec<Block<&mut [T]>> {
        let ranges: Vec<_> = (0..self.starts.len())
            .map(|b| self.block_range(b))
            .collect();
        let mut rest = self.values_mut();
        let mut consumed = 0;
        let mut blocks = Vec::with_capacity(ranges.len());
        for (r0, rows, range) in ranges {
            let (_, tail) = rest.split_at_mut(range.start - consumed);
            let (block, tail) = tail.split_at_mut(range.len());
            rest = tail;
            consumed = range.end;
            blocks.push(Block {
                r0,
                rows,
                data: block,
            });
        }
        blocks
    }

    /// Values the triangle's memory holds (about n²/2 + n·B/2, twice that for an f32 triangle
    /// made by [`UpperTriangle::into_f32`]).
    pub fn stored_len(&self) -> usize {
        self.values().len()
    }
}

impl<T: Real + PartialEq> PartialEq for UpperTriangle<T> {
    /// Equal sizes and entries on and right of the diagonal.
    fn eq(&self, other: &Self) -> bool {
        self.n == other.n && (0..self.n).all(|i| self.row(i) == other.row(i))
    }
}

impl UpperTriangle<f64> {
    /// An f32 triangle of the same shape in this triangle's memory (no new pages: the blocks
    /// keep their places, each in the first half of its old bytes). For each row i, in order
    /// within a block and blocks on rayon's threads, `row(acc, i, values, out)` gets the row's
    /// values from the diagonal on and writes its f32 entries into `out` (as long); `acc` is the
    /// block's accumulator, from `start(r0)`, returned in block order. Entries left of the
    /// diagonal become zeros.
    pub fn into_f32<A: Send>(
        mut self,
        start: impl Fn(usize) -> A + Sync,
        row: impl Fn(&mut A, usize, &[f64], &mut [f32]) + Sync,
    ) -> (UpperTriangle<f32>, Vec<A>) {
        let n = self.n;
        let starts = self.starts.clone();
        let blocks = self.blocks_mut();
        let accs = blocks
            .into_par_iter()
            .map(|block| {
                let (r0, stride) = (block.r0, n - block.r0);
                let mut acc = start(r0);
                let mut out = vec![0.0f32; stride];
                let base = block.data.as_mut_ptr();
                for r in 0..block.rows {
                    let len = stride - r;
                    {
                        // SAFETY: row r's f64 values from the diagonal lie inside the block;
                        // f32 rows written so far end at f32 index r·stride, i.e. before f64
                        // index r·stride/2 ≤ r·stride + r (the row's start), so they are intact.
                        let values =
                            unsafe { std::slice::from_raw_parts(base.add(r * stride + r), len) };
                        row(&mut acc, r0 + r, values, &mut out[..len]);
                    }
                    // SAFETY: f32 row r spans f32 indices [r·stride, (r + 1)·stride) of the
                    // block, inside it (the block holds rows·stride f64 values, twice as many
                    // bytes); it overlaps only f64 rows ≤ r, whose values were read (row r's just
                    // above, into `out`). No other reference into the block is alive.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(base.cast::<f32>().add(r * stride), stride)
                    };
                    dst[..r].fill(0.0);
                    dst[r..].copy_from_slice(&out[..len]);
                }
                acc
            })
            .collect();
        let triangle = UpperTriangle {
            n,
            words: std::mem::take(&mut self.words),
            starts: starts.iter().map(|s| 2 * s).collect(),
            values: PhantomData,
        };
        (triangle, accs)
    }
}

/// Asserts that every stored entry left of the diagonal is zero.
#[cfg(test)]
pub(crate) fn assert_zeros_left_of_the_diagonal<T: Real + PartialEq>(t: &UpperTriangle<T>) {
    let zero = T::from_f64(0.0);
    for block in t.blocks() {
        let stride = t.n() - block.r0;
        for r in 0..block.rows {
            let left = &block.data[r * stride..r * stride + r];
            assert!(left.iter().all(|&v| v == zero), "row {}", block.r0 + r);
        }
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
                }
                seen += block.rows;
            }
            assert_eq!(seen, n);
            assert_zeros_left_of_the_diagonal(&t);
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

    #[test]
    fn f32_triangles_take_over_the_memory() {
        for n in [1, 2, 127, 128, 300] {
            let t = UpperTriangle::from_fn(n, |i, j| (i * 1000 + j) as f64 + 0.25);
            let words = t.words.as_ptr();
            let (k, sums) = t.into_f32(
                |r0| (r0, 0.0),
                |acc, i, values, out| {
                    assert_eq!(values.len(), n - i);
                    assert_eq!(
                        values[0],
                        (i * 1001) as f64 + 0.25,
                        "row {i} read after a write"
                    );
                    acc.1 += values.iter().sum::<f64>();
                    for (o, v) in out.iter_mut().zip(values) {
                        *o = (*v - 0.25) as f32;
                    }
                },
            );
            assert_eq!(k.words.as_ptr(), words);
            assert_eq!(k, UpperTriangle::from_fn(n, |i, j| (i * 1000 + j) as f32));
            assert_zeros_left_of_the_diagonal(&k);
            let r0s: Vec<usize> = sums.iter().map(|s| s.0).collect();
            assert_eq!(r0s, (0..n).step_by(TRIANGLE_BLOCK).collect::<Vec<_>>());
            let total: f64 = sums.iter().map(|s| s.1).sum();
            let want: f64 = (0..n)
                .flat_map(|i| (i..n).map(move |j| (i * 1000 + j) as f64 + 0.25))
                .sum();
            assert_eq!(total, want);
        }
    }
}
