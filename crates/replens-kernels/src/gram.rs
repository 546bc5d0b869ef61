//! Gram products and the row preparation of the eRank pipeline, on row-major slices.

use rayon::prelude::*;

/// The two float types the kernels take (f32 and f64).
///
/// The hidden methods are the row kernels' concrete instantiations: a generic function is
/// compiled in the crate that calls it, which for replens is built at opt-level 1, so the
/// generic entry points ([`column_sums`], [`first_non_finite`], [`centred_unit_rows`]) call
/// these, which are compiled here at opt-level 3.
pub trait Real: Copy + Send + Sync + 'static + Into<f64> {
    /// 1 in this type.
    const ONE: Self;
    /// `x` rounded to this type.
    fn from_f64(x: f64) -> Self;
    #[doc(hidden)]
    fn column_sums_of(x: &[Self], d: usize) -> Result<Vec<f64>, usize>;
    #[doc(hidden)]
    fn first_non_finite_of(x: &[Self]) -> Option<usize>;
    #[doc(hidden)]
    fn unit_rows_to_f32(x: &[Self], d: usize, mean: &[f64], tol: f64, out: &mut Vec<f32>) -> usize;
    #[doc(hidden)]
    fn unit_rows_to_f64(x: &[Self], d: usize, mean: &[f64], tol: f64, out: &mut Vec<f64>) -> usize;
    /// [`centred_unit_rows`] into a vector of this type.
    #[doc(hidden)]
    fn unit_rows_from<T: Real>(
        x: &[T],
        d: usize,
        mean: &[f64],
        tol: f64,
        out: &mut Vec<Self>,
    ) -> usize;
}

macro_rules! real_impl {
    ($t:ty, $to_self:ident) => {
        impl Real for $t {
            const ONE: Self = 1.0;
            #[inline]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            fn column_sums_of(x: &[Self], d: usize) -> Result<Vec<f64>, usize> {
                column_sums_body(x, d)
            }
            fn first_non_finite_of(x: &[Self]) -> Option<usize> {
                first_non_finite_body(x)
            }
            fn unit_rows_to_f32(
                x: &[Self],
                d: usize,
                mean: &[f64],
                tol: f64,
                out: &mut Vec<f32>,
            ) -> usize {
                centred_unit_rows_body(x, d, mean, tol, out)
            }
            fn unit_rows_to_f64(
                x: &[Self],
                d: usize,
                mean: &[f64],
                tol: f64,
                out: &mut Vec<f64>,
            ) -> usize {
                centred_unit_rows_body(x, d, mean, tol, out)
            }
            fn unit_rows_from<T: Real>(
                x: &[T],
                d: usize,
                mean: &[f64],
                tol: f64,
                out: &mut Vec<Self>,
            ) -> usize {
                T::$to_self(x, d, mean, tol, out)
            }
        }
    };
}

real_impl!(f32, unit_rows_to_f32);
real_impl!(f64, unit_rows_to_f64);

/// Which Gram matrix of a row-major `rows × cols` matrix A to form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GramOf {
    /// AᵀA (`cols × cols`): products of columns, summed over rows.
    Columns,
    /// AAᵀ (`rows × rows`): products of rows, summed over columns.
    Rows,
}

/// `gemm`'s parallelism for `threads` threads: rayon's pool when there is more than one.
pub fn gemm_parallelism(threads: usize) -> gemm::Parallelism {
    if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// Height of the row blocks of [`add_gram_upper`]: for a 768-wide Gram, 4 products covering
/// 62.5 % of the full one, each tall enough for gemm to run at full speed (measured on 10k × 768
/// f64 rows, 2 threads: 64-row blocks took 1.8× as long as 128–256-row ones, a single full
/// product 1.2×).
pub const GRAM_BLOCK: usize = 192;

/// `dst += G` on and above the diagonal blocks, where G is the Gram matrix of the row-major
/// `rows × cols` matrix `a` chosen by `of`, and `dst` is `m × m` row-major (m = `cols` for
/// [`GramOf::Columns`], `rows` for [`GramOf::Rows`]).
///
/// The result is cut into row blocks of about [`GRAM_BLOCK`]; block `[i0, i1)` gets one `gemm`
/// call, adding into `dst` in place, for its columns `i0..m` only. Entries left of the diagonal
/// blocks are left as they were: call [`mirror_upper`] after the last accumulation to get the
/// symmetric matrix. `threads > 1` lets each product use that many of rayon's threads.
///
/// # Panics
/// When `a.len() != rows * cols` or `dst.len() != m * m`.
///
/// ```
/// use replens_kernels::{add_gram_upper, mirror_upper, GramOf};
/// // A = [[1, 2], [3, 4], [5, 6]]: AᵀA = [[35, 44], [44, 56]]
/// let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
/// let mut g = vec![0.0f64; 4];
/// add_gram_upper(&mut g, &a, 3, 2, GramOf::Columns, 1);
/// mirror_upper(&mut g, 2);
/// assert_eq!(g, vec![35.0, 44.0, 44.0, 56.0]);
/// ```
pub fn add_gram_upper<T: Real>(
    dst: &mut [T],
    a: &[T],
    rows: usize,
    cols: usize,
    of: GramOf,
    threads: usize,
) {
    assert_eq!(a.len(), rows * cols, "add_gram_upper: a is not rows × cols");
    // Index i of the result walks `m_stride` through `a`, the summed index `k_stride`.
    let (m, k, m_stride, k_stride) = match of {
        GramOf::Columns => (cols, rows, 1, cols),
        GramOf::Rows => (rows, cols, cols, 1),
    };
    assert_eq!(dst.len(), m * m, "add_gram_upper: dst is not m × m");
    if m == 0 || k == 0 {
        return;
    }
    let parallelism = gemm_parallelism(threads);
    let blocks = m.div_ceil(GRAM_BLOCK);
    for b in 0..blocks {
        let (i0, i1) = (b * m / blocks, (b + 1) * m / blocks);
        // SAFETY: dst is m × m row-major, so rows i0..i1, columns i0..m lie inside it; `a`
        // holds `rows × cols` values, and every index i·m_stride + r·k_stride with i < m,
        // r < k is below rows·cols by the stride choice above.
        unsafe {
            gemm::gemm(
                i1 - i0,
                m - i0,
                k,
                dst.as_mut_ptr().add(i0 * m + i0),
                1,
                m as isize,
                true,
                a.as_ptr().add(i0 * m_stride),
                k_stride as isize,
                m_stride as isize,
                a.as_ptr().add(i0 * m_stride),
                m_stride as isize,
                k_stride as isize,
                T::ONE,
                T::ONE,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
}

/// `dst += XᵀY` (`d1 × d2`, row-major) for the row-major `rows × d1` matrix `x` and
/// `rows × d2` matrix `y`, as one `gemm` call adding into `dst` in place.
///
/// # Panics
/// When a slice's length does not match its shape.
///
/// ```
/// // X = [[1], [2]], Y = [[3, 4], [5, 6]]: XᵀY = [[13, 16]]
/// let mut c = vec![1.0f64, 1.0];
/// replens_kernels::add_cross(&mut c, &[1.0, 2.0], &[3.0, 4.0, 5.0, 6.0], 2, 1, 2, 1);
/// assert_eq!(c, vec![14.0, 17.0]);
/// ```
pub fn add_cross<T: Real>(
    dst: &mut [T],
    x: &[T],
    y: &[T],
    rows: usize,
    d1: usize,
    d2: usize,
    threads: usize,
) {
    assert_eq!(x.len(), rows * d1, "add_cross: x is not rows × d1");
    assert_eq!(y.len(), rows * d2, "add_cross: y is not rows × d2");
    assert_eq!(dst.len(), d1 * d2, "add_cross: dst is not d1 × d2");
    if rows == 0 || d1 == 0 || d2 == 0 {
        return;
    }
    let parallelism = gemm_parallelism(threads);
    // SAFETY: the three slices have exactly the lengths of their shapes (asserted above), and
    // the strides below address X as d1 × rows (Xᵀ), Y as rows × d2 and dst as d1 × d2.
    unsafe {
        gemm::gemm(
            d1,
            d2,
            rows,
            dst.as_mut_ptr(),
            1,
            d2 as isize,
            true,
            x.as_ptr(),
            d1 as isize,
            1,
            y.as_ptr(),
            1,
            d2 as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `acc += g`, each f32 value widened to f64 (the f32 products' partial results added to an f64
/// accumulator).
///
/// ```
/// let mut acc = vec![1.0f64, 2.0];
/// replens_kernels::add_widened(&mut acc, &[0.5f32, 0.25]);
/// assert_eq!(acc, vec![1.5, 2.25]);
/// ```
pub fn add_widened(acc: &mut [f64], g: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(g) {
        *a += f64::from(v);
    }
}

/// Copies the upper triangle of the square row-major `a` (`n × n`) onto its lower triangle.
pub fn mirror_upper<T: Copy>(a: &mut [T], n: usize) {
    for i in 1..n {
        for j in 0..i {
            a[i * n + j] = a[j * n + i];
        }
    }
}

/// Column sums (in f64) of the row-major `rows × d` matrix `x`, or the index of its first
/// NaN / infinite value.
pub fn column_sums<T: Real>(x: &[T], d: usize) -> Result<Vec<f64>, usize> {
    T::column_sums_of(x, d)
}

fn column_sums_body<T: Real>(x: &[T], d: usize) -> Result<Vec<f64>, usize> {
    let mut sum = vec![0.0f64; d];
    let mut finite = true;
    for row in x.chunks_exact(d) {
        for (s, &v) in sum.iter_mut().zip(row) {
            let v: f64 = v.into();
            finite &= v.is_finite();
            *s += v;
        }
    }
    if !finite {
        return Err(x.iter().position(|&v| !v.into().is_finite()).unwrap_or(0));
    }
    Ok(sum)
}

/// `z = [x − sx | y − sy]`: the aligned row-major `x` (`rows × d1`) and `y` (`rows × d2`), each
/// less its column shift, side by side in the row-major `z` (`rows × (d1 + d2)`), in f32; returns
/// the column sums of `z` in f64 (each block of rows summed on one of rayon's threads, the
/// blocks added in order, so the sums do not depend on the number of threads). NaN and
/// infinite values propagate into the sums.
///
/// # Panics
/// When the slices disagree in size.
///
/// ```
/// let mut z = vec![0.0f32; 6];
/// let sums = replens_kernels::shifted_side_by_side(&[1.0, 2.0], &[3.0, 4.0, 5.0, 6.0], &[1.0], &[0.0, 1.0], &mut z);
/// assert_eq!(z, vec![0.0, 3.0, 3.0, 1.0, 5.0, 5.0]);
/// assert_eq!(sums, vec![1.0, 8.0, 8.0]);
/// ```
pub fn shifted_side_by_side(
    x: &[f32],
    y: &[f32],
    sx: &[f32],
    sy: &[f32],
    z: &mut [f32],
) -> Vec<f64> {
    let (d1, d2) = (sx.len(), sy.len());
    let w = d1 + d2;
    assert!(d1 > 0 && d2 > 0, "shifted_side_by_side: empty side");
    let rows = x.len() / d1;
    assert!(
        x.len() == rows * d1 && y.len() == rows * d2 && z.len() == rows * w,
        "shifted_side_by_side: x, y and z disagree in rows"
    );
    const BLOCK: usize = 64;
    let partial: Vec<Vec<f64>> = z
        .par_chunks_mut(BLOCK * w)
        .enumerate()
        .map(|(b, zb)| {
            let mut sums = vec![0.0f64; w];
            for (i, zr) in zb.chunks_exact_mut(w).enumerate() {
                let r = b * BLOCK + i;
                let (zx, zy) = zr.split_at_mut(d1);
                for ((o, &v), &s) in zx.iter_mut().zip(&x[r * d1..(r + 1) * d1]).zip(sx) {
                    *o = v - s;
                }
                for ((o, &v), &s) in zy.iter_mut().zip(&y[r * d2..(r + 1) * d2]).zip(sy) {
                    *o = v - s;
                }
                for (a, &v) in sums.iter_mut().zip(zr.iter()) {
                    *a += f64::from(v);
                }
            }
            sums
        })
        .collect();
    let mut sums = vec![0.0f64; w];
    for p in partial {
        for (a, v) in sums.iter_mut().zip(p) {
            *a += v;
        }
    }
    sums
}

/// Index of the first NaN / infinite value of `x`, if any.
pub fn first_non_finite<T: Real>(x: &[T]) -> Option<usize> {
    T::first_non_finite_of(x)
}

/// Blocks of 1024 values are checked with a branch-free (vectorised) fold, and only a block
/// that fails is searched. Inputs of [`PARALLEL_MIN`] values or more are cut into chunks
/// checked on rayon's threads, each giving its first non-finite position; the smallest is the
/// answer.
fn first_non_finite_body<T: Real>(x: &[T]) -> Option<usize> {
    if x.len() < PARALLEL_MIN {
        return first_non_finite_serial(x);
    }
    x.par_chunks(PARALLEL_MIN)
        .enumerate()
        .filter_map(|(c, chunk)| first_non_finite_serial(chunk).map(|p| c * PARALLEL_MIN + p))
        .min()
}

fn first_non_finite_serial<T: Real>(x: &[T]) -> Option<usize> {
    for (b, block) in x.chunks(1024).enumerate() {
        if !block
            .iter()
            .fold(true, |all, &v| all & v.into().is_finite())
        {
            return block
                .iter()
                .position(|&v| !v.into().is_finite())
                .map(|p| b * 1024 + p);
        }
    }
    None
}

/// Below this many values [`centred_unit_rows`] runs on the calling thread.
const PARALLEL_MIN: usize = 64 * 1024;

/// Appends to `out` every row of `x` (row-major, width `d`) centred by `mean` and scaled to unit
/// length, computed in f64 and rounded once to `U`, skipping rows whose centred norm is 0 or at
/// most `zero_rel_tol · (‖row‖ + ‖mean‖)`. Returns how many rows were kept. Rows are shared
/// among rayon's threads for large inputs (each row's arithmetic is the same either way).
pub fn centred_unit_rows<T: Real, U: Real>(
    x: &[T],
    d: usize,
    mean: &[f64],
    zero_rel_tol: f64,
    out: &mut Vec<U>,
) -> usize {
    U::unit_rows_from(x, d, mean, zero_rel_tol, out)
}

fn centred_unit_rows_body<T: Real, U: Real>(
    x: &[T],
    d: usize,
    mean: &[f64],
    zero_rel_tol: f64,
    out: &mut Vec<U>,
) -> usize {
    assert_eq!(mean.len(), d, "centred_unit_rows: mean is not d wide");
    let rows = x.len() / d.max(1);
    let mean_norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt();
    let start = out.len();
    out.resize(start + rows * d, U::from_f64(0.0));
    let dst = &mut out[start..];
    let one_row = |(row, unit): (&[T], &mut [U])| -> bool {
        let (mut row_sq, mut centred_sq) = (0.0f64, 0.0f64);
        for (&v, &m) in row.iter().zip(mean) {
            let v: f64 = v.into();
            row_sq += v * v;
            centred_sq += (v - m) * (v - m);
        }
        let centred_norm = centred_sq.sqrt();
        if centred_norm == 0.0 || centred_norm <= zero_rel_tol * (row_sq.sqrt() + mean_norm) {
            return false;
        }
        let inv = 1.0 / centred_norm;
        for ((u, &v), &m) in unit.iter_mut().zip(row).zip(mean) {
            *u = U::from_f64((v.into() - m) * inv);
        }
        true
    };
    let keep: Vec<bool> = if x.len() >= PARALLEL_MIN {
        x.par_chunks(d)
            .zip(dst.par_chunks_mut(d))
            .with_min_len(64)
            .map(one_row)
            .collect()
    } else {
        x.chunks(d).zip(dst.chunks_mut(d)).map(one_row).collect()
    };
    let mut kept = 0;
    for (r, &k) in keep.iter().enumerate() {
        if k {
            if kept != r {
                dst.copy_within(r * d..(r + 1) * d, kept * d);
            }
            kept += 1;
        }
    }
    out.truncate(start + kept * d);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first non-finite value of a large input, checked in parallel chunks, is the first
    /// in order even when a later chunk also has one (and its own chunk is not the first).
    #[test]
    fn the_first_non_finite_value_is_found_across_chunks() {
        let mut x = vec![1.0f32; 5 * PARALLEL_MIN + 17];
        assert_eq!(first_non_finite(&x), None);
        x[4 * PARALLEL_MIN + 3] = f32::NAN;
        x[2 * PARALLEL_MIN + 1000] = f32::INFINITY;
        x[5 * PARALLEL_MIN + 16] = f32::NEG_INFINITY;
        assert_eq!(first_non_finite(&x), Some(2 * PARALLEL_MIN + 1000));
        assert_eq!(first_non_finite(&x[..100]), None);
        assert_eq!(first_non_finite(&x[2 * PARALLEL_MIN..]), Some(1000));
    }

    fn naive(a: &[f64], rows: usize, cols: usize, of: GramOf) -> Vec<f64> {
        let (m, k) = match of {
            GramOf::Columns => (cols, rows),
            GramOf::Rows => (rows, cols),
        };
        let at = |i: usize, r: usize| match of {
            GramOf::Columns => a[r * cols + i],
            GramOf::Rows => a[i * cols + r],
        };
        let mut g = vec![0.0; m * m];
        for i in 0..m {
            for j in 0..m {
                g[i * m + j] = (0..k).map(|r| at(i, r) * at(j, r)).sum();
            }
        }
        g
    }

    #[test]
    fn upper_blocks_and_mirror_give_the_gram_matrix_of_either_side() {
        // 300 columns make 2 blocks of uneven bounds; two pushes check the accumulation.
        for (rows, cols) in [(1, 1), (7, 3), (40, 300), (300, 9)] {
            let a: Vec<f64> = (0..rows * cols)
                .map(|i| ((i * 7919) % 1000) as f64 / 500.0 - 1.0)
                .collect();
            for of in [GramOf::Columns, GramOf::Rows] {
                let want = naive(&a, rows, cols, of);
                let m = (want.len() as f64).sqrt() as usize;
                for threads in [1, 2] {
                    let mut g = vec![0.0; m * m];
                    add_gram_upper(&mut g, &a, rows, cols, of, threads);
                    add_gram_upper(&mut g, &a, rows, cols, of, threads);
                    mirror_upper(&mut g, m);
                    for (x, w) in g.iter().zip(&want) {
                        assert!(
                            (x - 2.0 * w).abs() <= 1e-12 * (1.0 + w.abs()),
                            "{rows}x{cols} {of:?}"
                        );
                    }
                    for i in 0..m {
                        for j in 0..i {
                            assert_eq!(g[i * m + j], g[j * m + i]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn cross_product_adds_xt_y() {
        let (rows, d1, d2) = (300, 5, 7);
        let x: Vec<f64> = (0..rows * d1)
            .map(|i| ((i * 31) % 17) as f64 - 8.0)
            .collect();
        let y: Vec<f64> = (0..rows * d2)
            .map(|i| ((i * 13) % 11) as f64 - 5.0)
            .collect();
        for threads in [1, 2] {
            let mut c = vec![1.0; d1 * d2];
            add_cross(&mut c, &x, &y, rows, d1, d2, threads);
            for i in 0..d1 {
                for j in 0..d2 {
                    let want: f64 = 1.0
                        + (0..rows)
                            .map(|r| x[r * d1 + i] * y[r * d2 + j])
                            .sum::<f64>();
                    assert_eq!(c[i * d2 + j], want, "({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn centred_unit_rows_skip_zero_rows_and_normalise_the_rest() {
        let x = [1.0f32, 2.0, 3.0, 4.0, 2.0, 3.0];
        let mean: Vec<f64> = column_sums(&x, 2)
            .unwrap()
            .iter()
            .map(|s| s / 3.0)
            .collect();
        assert_eq!(mean, vec![2.0, 3.0]);
        let mut out: Vec<f64> = Vec::new();
        // the middle row equals the mean
        let kept = centred_unit_rows(&x, 2, &mean, 1e-12, &mut out);
        let s = 0.5f64.sqrt();
        assert_eq!(kept, 2);
        for (o, w) in out.iter().zip([-s, -s, s, s]) {
            assert!((o - w).abs() < 1e-15, "{out:?}");
        }
        assert_eq!(column_sums(&[1.0, f64::NAN, 0.0, 1.0], 2), Err(1));
        assert_eq!(first_non_finite(&[1.0f32, 2.0, f32::INFINITY]), Some(2));

        // Large enough for the parallel path: every third row equals the mean and is dropped,
        // the kept rows come out in order, as the serial path computes them.
        let (rows, d) = (3000, 64);
        let x: Vec<f64> = (0..rows * d)
            .map(|i| {
                if (i / d) % 3 == 1 {
                    0.0
                } else {
                    ((i * 37) % 101) as f64 - 50.0
                }
            })
            .collect();
        let zero_mean = vec![0.0; d];
        let mut parallel: Vec<f32> = Vec::new();
        let kept = centred_unit_rows(&x, d, &zero_mean, 1e-12, &mut parallel);
        assert_eq!(kept, 2000);
        let mut serial: Vec<f32> = Vec::new();
        for row in x.chunks(d) {
            centred_unit_rows(row, d, &zero_mean, 1e-12, &mut serial);
        }
        assert_eq!(parallel, serial);
    }
}
