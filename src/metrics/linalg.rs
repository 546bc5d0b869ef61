//! Small dense linear algebra in f64 for the representation metrics: a symmetric
//! eigen-decomposition with eigenvectors, Gram / cross products of activation tensors
//! accumulated in f64, column centring, the (pseudo-)inverse square root of a PSD matrix and a
//! thin SVD through the eigen-decomposition of the smaller Gram matrix.
//!
//! Matrices are row-major `Vec<f64>` / `&[f64]` with explicit sizes; activations come in as
//! `(rows, features)` candle tensors of any float dtype.
//!
//! [`crate::metrics::erank::symmetric_eigenvalues`] is the eigenvalues-only twin of
//! [`symmetric_eigen`] (same Householder + implicit QL scheme; kept separate because it
//! skips the O(n³) eigenvector accumulation).
//!
//! The two O(n³) loops (Householder tridiagonalisation, implicit QL) live in the small
//! `replens-kernels` crate, which the dev/test profile builds at opt-level 3; the checks,
//! errors and documented entry points are here.

use candle_core::{DType, Device, Tensor, WithDType};

use replens_kernels::{
    add_cross, add_gram_upper, mirror_upper, tridiagonal_ql, tridiagonalise, GramOf,
};

use crate::error::{bail, Context, Error, Result};

/// Relative asymmetry accepted by [`symmetric_eigen`]: `|a_ij − a_ji| ≤ tol · max|a|`.
/// Loose enough for a Gram matrix from an f32 blocked matmul (asymmetric at ~1e-7 relative),
/// tight enough to reject a matrix that is simply not symmetric.
pub const SYMMETRY_REL_TOL: f64 = 1e-6;

/// Rows per chunk of the chunked Gram / cross products ([`gram_f64`], [`cross_f64`]).
pub const GRAM_CHUNK_ROWS: usize = 2048;

/// Precision of the `rows`-long inner products in [`gram_f64`] / [`cross_f64`] (and the
/// similarity indices built on them). Results are always accumulated and returned in f64.
///
/// * `F64`: every product in f64 (candle's f64 gemm): the Gram matrix is exact to ~1e-15
///   relative, downstream indices agree with a float64 numpy reference to ~1e-10.
/// * `F32`: each chunk of [`GRAM_CHUNK_ROWS`] rows is centred (in f32 for f32 input, exact
///   for large-mean features by Sterbenz' lemma; in f64 then rounded otherwise) and
///   multiplied with candle's f32 gemm (about twice the speed of f64, half the memory
///   traffic); chunk results are added in f64. The error of one entry is that of an f32 sum
///   of at most 2048 terms, ~1e-7…1e-6 relative to `‖x_i‖‖y_j‖`, so similarity indices move
///   by ~1e-6 — far below the sampling noise of any index estimated from activations that were
///   themselves stored in f32. Not suitable for estimators that cancel large terms
///   (debiased HSIC), which always use f64.
/// * `Auto` (default): `F32` when both inputs are f32/f16/bf16 tensors, `F64` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Auto,
    F32,
    F64,
}

impl Precision {
    /// Resolve `Auto` for the given input dtypes.
    pub fn resolve(self, dtypes: &[DType]) -> Precision {
        match self {
            Precision::Auto if dtypes.iter().all(|d| *d != DType::F64) => Precision::F32,
            Precision::Auto => Precision::F64,
            p => p,
        }
    }
}

/// Eigen-decomposition of a real symmetric `n × n` matrix (row-major): returns the
/// eigenvalues sorted **descending** and the eigenvectors as the **columns** of an `n × n`
/// row-major matrix V (column j belongs to eigenvalue j), with A = V Λ Vᵀ and VᵀV = I.
///
/// Householder reduction to tridiagonal form with the orthogonal factor accumulated, then the
/// implicit QL algorithm with Wilkinson shifts applying every rotation to the vectors (Golub &
/// Van Loan, *Matrix Computations*, 4th ed., §8.3; the EISPACK `tred2`/`tql2` scheme).
/// O(n³): ~9n³ flops. The input is symmetrised as (A + Aᵀ)/2 after the checks.
///
/// Errors: `a.len() ≠ n²`, NaN/inf (naming the entry), asymmetry beyond
/// [`SYMMETRY_REL_TOL`]` · max|a_ij|` (naming the worst pair), or (never observed) QL not
/// converging in 100 sweeps for one eigenvalue.
///
/// ```
/// use replens::metrics::linalg::symmetric_eigen;
/// let a = [2.0, 1.0, 1.0, 2.0];
/// let (values, vectors) = symmetric_eigen(&a, 2)?;
/// assert!((values[0] - 3.0).abs() < 1e-12 && (values[1] - 1.0).abs() < 1e-12);
/// // Column 0 is ±(1, 1)/√2.
/// assert!((vectors[0].abs() - 0.5f64.sqrt()).abs() < 1e-12);
/// assert!((vectors[0] - vectors[2]).abs() < 1e-12);
/// # Ok::<(), replens::Error>(())
/// ```
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    if a.len() != n * n {
        bail!(
            "symmetric_eigen: expected {n}x{n} = {} values, got {}",
            n * n,
            a.len()
        );
    }
    if n == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    if let Some(p) = a.iter().position(|v| !v.is_finite()) {
        bail!(
            "symmetric_eigen: entry ({}, {}) is not finite ({})",
            p / n,
            p % n,
            a[p]
        );
    }
    let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut worst = (0.0f64, 0, 0);
    for i in 0..n {
        for j in 0..i {
            let diff = (a[i * n + j] - a[j * n + i]).abs();
            if diff > worst.0 {
                worst = (diff, i, j);
            }
        }
    }
    if worst.0 > SYMMETRY_REL_TOL * scale {
        bail!(
            "symmetric_eigen: matrix is not symmetric: a[{i}][{j}] = {} but a[{j}][{i}] = {} \
             (difference {:.3e} > {SYMMETRY_REL_TOL:e} · max|a| = {:.3e})",
            a[worst.1 * n + worst.2],
            a[worst.2 * n + worst.1],
            worst.0,
            SYMMETRY_REL_TOL * scale,
            i = worst.1,
            j = worst.2,
        );
    }
    let mut w = symmetrise(a.to_vec(), n);
    let (mut diag, mut off, q) = tridiagonalise(&mut w, n, true);
    // Rows of `zt` are the columns of Q: each QL rotation then combines two contiguous rows.
    let mut zt = transpose(&q.unwrap_or_default(), n, n);
    tridiagonal_ql(&mut diag, &mut off, Some(&mut zt))
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| diag[y].total_cmp(&diag[x]));
    let values: Vec<f64> = order.iter().map(|&k| diag[k]).collect();
    let mut vectors = vec![0.0; n * n];
    for (j, &k) in order.iter().enumerate() {
        for (r, &v) in zt[k * n..(k + 1) * n].iter().enumerate() {
            vectors[r * n + j] = v;
        }
    }
    Ok((values, vectors))
}

/// The eigenvalues (unsorted) of the symmetric `n × n` matrix `a` (destroyed; checked and
/// symmetrised by the caller): [`tridiagonalise`] then [`tridiagonal_ql`] without vectors,
/// O(4n³/3). Used by [`symmetric_eigen`]'s callers that need no vectors, e.g.
/// [`crate::metrics::erank::symmetric_eigenvalues`].
pub(crate) fn eigenvalues_in_place(a: &mut [f64], n: usize) -> Result<Vec<f64>> {
    let (mut diag, mut off, _) = tridiagonalise(a, n, false);
    tridiagonal_ql(&mut diag, &mut off, None).map_err(|e| Error::InvalidInput(e.to_string()))?;
    Ok(diag)
}

/// Transpose of a row-major `rows × cols` matrix.
pub fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}

/// Squared Frobenius norm Σ a_ij².
pub fn frobenius_sq(a: &[f64]) -> f64 {
    a.iter().map(|v| v * v).sum()
}

/// A · B for row-major A (`m × k`) and B (`k × n`), through candle's f64 gemm.
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Result<Vec<f64>> {
    if a.len() != m * k || b.len() != k * n {
        bail!(
            "matmul: expected {m}x{k} and {k}x{n} matrices, got {} and {} values",
            a.len(),
            b.len()
        );
    }
    if m == 0 || n == 0 {
        return Ok(vec![0.0; m * n]);
    }
    if k == 0 {
        return Ok(vec![0.0; m * n]);
    }
    let dev = Device::Cpu;
    let what = || format!("matmul of {m}x{k} by {k}x{n}");
    let ta = Tensor::from_slice(a, (m, k), &dev).context(what)?;
    let tb = Tensor::from_slice(b, (k, n), &dev).context(what)?;
    ta.matmul(&tb)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .context(what)
}

/// Check that `x` is a 2-D `(rows, features)` float tensor with at least one feature and
/// return `(rows, features)`. `what` names the argument in the error ("linear_cka: x").
pub fn matrix_dims(x: &Tensor, what: &str) -> Result<(usize, usize)> {
    let (n, d) = x.dims2().map_err(|_| {
        Error::InvalidInput(format!(
            "{what} must be a 2-D (rows, features) tensor, got shape {:?}",
            x.dims()
        ))
    })?;
    if d == 0 {
        bail!(
            "{what} has shape {:?}: it needs at least one feature column",
            x.dims()
        );
    }
    if !x.dtype().is_float() {
        bail!("{what} must be a float tensor, got {:?}", x.dtype());
    }
    Ok((n, d))
}

/// Read a `(rows, d)` float tensor into row-major f64, rejecting NaN / ±inf with the row
/// and column of the first offender. `what` names the argument in errors.
pub fn matrix_f64(x: &Tensor, what: &str) -> Result<(Vec<f64>, usize, usize)> {
    let (n, d) = matrix_dims(x, what)?;
    let data = x
        .to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .context(|| format!("{what}: reading the {n}x{d} matrix as f64"))?;
    check_finite(&data, d, 0, what)?;
    Ok((data, n, d))
}

fn check_finite(data: &[f64], d: usize, row_offset: usize, what: &str) -> Result<()> {
    if let Some(p) = data.iter().position(|v| !v.is_finite()) {
        let v = data[p];
        let kind = if v.is_nan() {
            "NaN"
        } else {
            "an infinite value"
        };
        bail!(
            "{what} contains {kind} ({v}) at row {}, column {}",
            row_offset + p / d,
            p % d
        );
    }
    Ok(())
}

/// Column means of a `(rows, d)` tensor, summed in f64 chunk by chunk (no full f64 copy of
/// a large f32 tensor), rejecting NaN / ±inf with their position. Errors on zero rows.
pub fn column_means(x: &Tensor, what: &str) -> Result<Vec<f64>> {
    let (n, d) = matrix_dims(x, what)?;
    if n == 0 {
        bail!("{what} has no rows");
    }
    let mut sum = vec![0.0; d];
    let mut r0 = 0;
    while r0 < n {
        let len = GRAM_CHUNK_ROWS.min(n - r0);
        let chunk = x
            .narrow(0, r0, len)
            .and_then(|t| t.to_dtype(DType::F64))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .context(|| format!("{what}: reading rows {r0}..{}", r0 + len))?;
        check_finite(&chunk, d, r0, what)?;
        for row in chunk.chunks_exact(d) {
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += v;
            }
        }
        r0 += len;
    }
    let inv = 1.0 / n as f64;
    Ok(sum.into_iter().map(|s| s * inv).collect())
}

/// Centre the columns of a row-major `(rows, d)` matrix in place; returns the means.
pub fn centre_columns(data: &mut [f64], d: usize) -> Vec<f64> {
    let n = data.len().checked_div(d).unwrap_or(0);
    let mut mean = vec![0.0; d];
    if n == 0 {
        return mean;
    }
    for row in data.chunks_exact(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    let inv = 1.0 / n as f64;
    mean.iter_mut().for_each(|m| *m *= inv);
    for row in data.chunks_exact_mut(d) {
        for (v, &m) in row.iter_mut().zip(&mean) {
            *v -= m;
        }
    }
    mean
}

/// A column shift in both float widths.
struct Shift {
    f64: Tensor,
    f32: Tensor,
}

/// Rows `r0..r0+len` of `x`, minus `shift`, in the dtype of `precision`.
fn shifted_chunk(
    x: &Tensor,
    shift: Option<&Shift>,
    r0: usize,
    len: usize,
    precision: Precision,
) -> candle_core::Result<Tensor> {
    let chunk = x.narrow(0, r0, len)?;
    match (shift, precision, chunk.dtype()) {
        // f32 − f32 is exact when the two are within a factor 2 (Sterbenz), which is the case
        // that matters: a huge-mean feature (residual streams have a few) minus its mean. The
        // mean's own f32 rounding shifts the centre by ≤ 6e-8·|μ|, which changes the scatter
        // matrix by n·δ² only (the cross terms sum to zero) — negligible.
        (Some(s), Precision::F32, DType::F32) => chunk.broadcast_sub(&s.f32),
        // Otherwise subtract in f64 before rounding to the working precision.
        (Some(s), _, _) => {
            let c = chunk.to_dtype(DType::F64)?.broadcast_sub(&s.f64)?;
            match precision {
                Precision::F32 => c.to_dtype(DType::F32),
                _ => Ok(c),
            }
        }
        (None, Precision::F32, _) => chunk.to_dtype(DType::F32),
        (None, _, _) => chunk.to_dtype(DType::F64),
    }
}

fn shift_tensor(shift: Option<&[f64]>, d: usize, what: &str) -> Result<Option<Shift>> {
    match shift {
        None => Ok(None),
        Some(s) if s.len() != d => bail!("{what}: shift has {} values for {d} columns", s.len()),
        Some(s) => {
            let t = Tensor::from_slice(s, (1, d), &Device::Cpu)
                .context(|| format!("{what}: shift vector"))?;
            let t32 = t
                .to_dtype(DType::F32)
                .context(|| format!("{what}: shift vector"))?;
            Ok(Some(Shift { f64: t, f32: t32 }))
        }
    }
}

/// Row-major matrix values in their working precision: f32 kept as f32, f64 as f64.
pub(crate) enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Values {
    /// These values borrowed.
    pub(crate) fn rows(&self) -> Rows<'_> {
        match self {
            Values::F32(x) => Rows::F32(x),
            Values::F64(x) => Rows::F64(x),
        }
    }

    /// The values of `t`: as f32 when it is f32, else converted to f64.
    pub(crate) fn of(t: &Tensor) -> candle_core::Result<Values> {
        let flat = t.flatten_all()?;
        Ok(match t.dtype() {
            DType::F32 => Values::F32(flat.to_vec1::<f32>()?),
            _ => Values::F64(flat.to_dtype(DType::F64)?.to_vec1::<f64>()?),
        })
    }

    /// acc (m × m, f64) += the blocks on and above the diagonal of the Gram matrix `of` these
    /// `rows × cols` values ([`replens_kernels::add_gram_upper`]): f64 values straight into
    /// `acc`, f32 values multiplied in f32 and added to `acc` in f64.
    pub(crate) fn add_gram_upper_to(&self, acc: &mut [f64], rows: usize, cols: usize, of: GramOf) {
        match self {
            Values::F64(z) => add_gram_upper(acc, z, rows, cols, of, gemm_threads()),
            Values::F32(z) => {
                let mut g = vec![0.0f32; acc.len()];
                add_gram_upper(&mut g, z, rows, cols, of, gemm_threads());
                add_f32(acc, &g);
            }
        }
    }
}

/// gemm's thread count: candle's, so that every product shares one setting.
pub(crate) fn gemm_threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// acc (d × d) += the blocks of cᵀc on and above the diagonal, for a `(rows, d)` chunk `c`
/// ([`replens_kernels::add_gram_upper`]: a third fewer flops than a full product for d = 768,
/// no temporaries in f64). Entries left of the diagonal blocks are left stale;
/// [`replens_kernels::mirror_upper`] makes the result symmetric. An f32 chunk is multiplied in
/// f32 and added to `acc` in f64.
fn add_gram_chunk(acc: &mut [f64], d: usize, c: &Tensor) -> candle_core::Result<()> {
    let (rows, _) = c.dims2()?;
    Values::of(c)?.add_gram_upper_to(acc, rows, d, GramOf::Columns);
    Ok(())
}

/// acc (d1 × d2) += cxᵀcy for aligned `(rows, d1)` and `(rows, d2)` chunks of one precision.
fn add_cross_chunk(acc: &mut [f64], cx: &Tensor, cy: &Tensor) -> candle_core::Result<()> {
    let ((rows, d1), (_, d2)) = (cx.dims2()?, cy.dims2()?);
    match (Values::of(cx)?, Values::of(cy)?) {
        (Values::F64(x), Values::F64(y)) => add_cross(acc, &x, &y, rows, d1, d2, gemm_threads()),
        (Values::F32(x), Values::F32(y)) => {
            let mut g = vec![0.0f32; d1 * d2];
            add_cross(&mut g, &x, &y, rows, d1, d2, gemm_threads());
            add_f32(acc, &g);
        }
        _ => candle_core::bail!("cross product of chunks in two precisions"),
    }
    Ok(())
}

/// `acc += g` in f64 ([`replens_kernels::add_widened`], compiled at opt-level 3).
fn add_f32(acc: &mut [f64], g: &[f32]) {
    replens_kernels::add_widened(acc, g)
}

/// Runs `f` on the values of `t` when it is a contiguous CPU tensor of type `T` (read in place);
/// `None` otherwise.
fn with_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Option<R> {
    if t.dtype() != T::DTYPE || !t.is_contiguous() {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return None;
    };
    let start = layout.start_offset();
    let values = cpu.as_slice::<T>().ok()?;
    values.get(start..start + t.elem_count()).map(f)
}

/// Row-major matrix values borrowed in their working precision (see [`Values`]).
#[derive(Clone, Copy)]
pub(crate) enum Rows<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

/// Runs `f` on the values of `t` as [`Rows`]: read in place when `t` is a contiguous f32 or f64
/// CPU tensor ([`with_slice`]), else copied by [`Values::of`] (other dtypes converted to f64).
/// `f` runs once.
pub(crate) fn with_rows<R>(t: &Tensor, mut f: impl FnMut(Rows<'_>) -> R) -> candle_core::Result<R> {
    if let Some(r) = with_slice(t, |x: &[f32]| f(Rows::F32(x))) {
        return Ok(r);
    }
    if let Some(r) = with_slice(t, |x: &[f64]| f(Rows::F64(x))) {
        return Ok(r);
    }
    let values = Values::of(t)?;
    Ok(f(values.rows()))
}

/// Gram matrix (X − 1sᵀ)ᵀ(X − 1sᵀ) (`d × d`, row-major f64) of a `(rows, d)` tensor, with an
/// optional column shift s (pass the column means to get the centred scatter matrix).
///
/// Computed chunk by chunk ([`GRAM_CHUNK_ROWS`] rows) with gemm and accumulated in
/// f64; see [`Precision`] for the f32 / f64 trade-off. Only the blocks on and above the
/// diagonal are multiplied (row blocks of 192), so the result is exactly symmetric and
/// costs ~5/8 of a full gemm for d = 768.
/// NaN / inf are *not* checked here (use [`column_means`] or [`matrix_f64`] first).
pub fn gram_f64(x: &Tensor, shift: Option<&[f64]>, precision: Precision) -> Result<Vec<f64>> {
    let (n, d) = matrix_dims(x, "gram_f64: x")?;
    let precision = precision.resolve(&[x.dtype()]);
    let shift = shift_tensor(shift, d, "gram_f64")?;
    let mut acc = vec![0.0; d * d];
    let mut r0 = 0;
    while r0 < n {
        let len = GRAM_CHUNK_ROWS.min(n - r0);
        let what = || format!("gram_f64: rows {r0}..{} of a {n}x{d} matrix", r0 + len);
        let c = shifted_chunk(x, shift.as_ref(), r0, len, precision).context(what)?;
        add_gram_chunk(&mut acc, d, &c).context(what)?;
        r0 += len;
    }
    mirror_upper(&mut acc, d);
    Ok(acc)
}

/// Cross product (X − 1sₓᵀ)ᵀ(Y − 1s_yᵀ) (`d1 × d2`, row-major f64) of two tensors with the
/// same number of rows, optional column shifts as in [`gram_f64`], chunked the same way.
pub fn cross_f64(
    x: &Tensor,
    x_shift: Option<&[f64]>,
    y: &Tensor,
    y_shift: Option<&[f64]>,
    precision: Precision,
) -> Result<Vec<f64>> {
    let (n, d1) = matrix_dims(x, "cross_f64: x")?;
    let (ny, d2) = matrix_dims(y, "cross_f64: y")?;
    if n != ny {
        bail!("cross_f64: x has {n} rows but y has {ny}");
    }
    let precision = precision.resolve(&[x.dtype(), y.dtype()]);
    let sx = shift_tensor(x_shift, d1, "cross_f64 (x)")?;
    let sy = shift_tensor(y_shift, d2, "cross_f64 (y)")?;
    let mut acc = vec![0.0; d1 * d2];
    let mut r0 = 0;
    while r0 < n {
        let len = GRAM_CHUNK_ROWS.min(n - r0);
        let what = || format!("cross_f64: rows {r0}..{} of {n}", r0 + len);
        let cx = shifted_chunk(x, sx.as_ref(), r0, len, precision).context(what)?;
        let cy = shifted_chunk(y, sy.as_ref(), r0, len, precision).context(what)?;
        add_cross_chunk(&mut acc, &cx, &cy).context(what)?;
        r0 += len;
    }
    Ok(acc)
}

/// Relative tolerance of [`is_constant`]: a column whose centred sum of squares is at most
/// this fraction of its raw sum of squares is constant up to the rounding of its mean
/// (f64 rounding leaves ~1e-32; the smallest genuine variation of f32 data, one ulp, ~1e-15).
pub const CONSTANT_REL_TOL: f64 = 1e-20;

/// Whether every column is constant: `centred_diag[j] ≤ CONSTANT_REL_TOL · raw_diag[j]` for
/// all j, with `centred_diag` the diagonal of XcᵀXc and `raw_diag` that of XᵀX.
pub fn is_constant(centred_diag: &[f64], raw_diag: &[f64]) -> bool {
    centred_diag
        .iter()
        .zip(raw_diag)
        .all(|(c, r)| *c <= CONSTANT_REL_TOL * r)
}

/// First-and-second moments of two aligned row streams X (`· × d1`) and Y (`· × d2`) in one
/// pass, for everything built on XcᵀXc, YcᵀYc and XcᵀYc. Rows are shifted by fixed vectors
/// s, t (the column means of the first rows seen) and
///
/// ```text
///   xx = Σ (x − s)(x − s)ᵀ,  xy = Σ (x − s)(y − t)ᵀ,  sum_x = Σ (x − s)
///   XcᵀYc = xy − n (μₓ − s)(μ_y − t)ᵀ,  μₓ − s = sum_x / n
/// ```
///
/// — the shifted-data form of XᵀY − nμₓμ_yᵀ: with s close to μ the correction is small and
/// nothing cancels catastrophically (a feature with mean 1000σ would lose every f32 digit
/// in the textbook form). Products are chunked as in [`gram_f64`]; memory O((d1 + d2)²).
#[derive(Debug, Clone)]
pub struct PairMoments {
    /// Rows consumed.
    pub n: usize,
    /// The shifts s, t (empty until the first non-empty push).
    pub shift_x: Vec<f64>,
    pub shift_y: Vec<f64>,
    /// Σ (x − s), Σ (y − t).
    pub sum_x: Vec<f64>,
    pub sum_y: Vec<f64>,
    /// Σ (x − s)(x − s)ᵀ (d1 × d1), Σ (y − t)(y − t)ᵀ (d2 × d2), Σ (x − s)(y − t)ᵀ (d1 × d2).
    pub xx: Vec<f64>,
    pub yy: Vec<f64>,
    pub xy: Vec<f64>,
    d1: usize,
    d2: usize,
}

impl PairMoments {
    /// Empty moments for widths `d1`, `d2`.
    pub fn new(d1: usize, d2: usize) -> Self {
        Self {
            n: 0,
            shift_x: Vec::new(),
            shift_y: Vec::new(),
            sum_x: vec![0.0; d1],
            sum_y: vec![0.0; d2],
            xx: vec![0.0; d1 * d1],
            yy: vec![0.0; d2 * d2],
            xy: vec![0.0; d1 * d2],
            d1,
            d2,
        }
    }

    /// Add aligned rows. `what` prefixes error messages ("linear_cka"). Checks shapes and
    /// NaN/inf (reported with row and column). On error the moments may hold part of the
    /// batch: clone first where that matters.
    pub fn push(&mut self, x: &Tensor, y: &Tensor, precision: Precision, what: &str) -> Result<()> {
        let (n, d1) = matrix_dims(x, &format!("{what}: x"))?;
        let (ny, d2) = matrix_dims(y, &format!("{what}: y"))?;
        if (d1, d2) != (self.d1, self.d2) {
            bail!(
                "{what}: expected widths ({}, {}), got x {:?} and y {:?}",
                self.d1,
                self.d2,
                x.dims(),
                y.dims()
            );
        }
        if n != ny {
            bail!("{what}: x has {n} rows but y has {ny} (rows must be the same tokens/examples)");
        }
        if n == 0 {
            return Ok(());
        }
        let precision = precision.resolve(&[x.dtype(), y.dtype()]);
        if self.shift_x.is_empty() {
            let m = GRAM_CHUNK_ROWS.min(n);
            let sx = column_means(&x.narrow(0, 0, m)?, &format!("{what}: x"))?;
            let sy = column_means(&y.narrow(0, 0, m)?, &format!("{what}: y"))?;
            self.shift_x = sx;
            self.shift_y = sy;
        }
        if precision == Precision::F32 {
            let pushed = with_slice(x, |xs: &[f32]| {
                with_slice(y, |ys: &[f32]| self.push_f32_side_by_side(xs, ys, n, what))
            });
            if let Some(Some(result)) = pushed {
                return result;
            }
        }
        let sx = shift_tensor(Some(&self.shift_x), d1, what)?;
        let sy = shift_tensor(Some(&self.shift_y), d2, what)?;
        let mut r0 = 0;
        while r0 < n {
            let len = GRAM_CHUNK_ROWS.min(n - r0);
            let ctx = || format!("{what}: rows {r0}..{} of {n}", r0 + len);
            let cx = shifted_chunk(x, sx.as_ref(), r0, len, precision).context(ctx)?;
            let cy = shifted_chunk(y, sy.as_ref(), r0, len, precision).context(ctx)?;
            add_column_sums(&mut self.sum_x, &cx, x, r0, &format!("{what}: x"))?;
            add_column_sums(&mut self.sum_y, &cy, y, r0, &format!("{what}: y"))?;
            add_gram_chunk(&mut self.xx, d1, &cx).context(ctx)?;
            add_gram_chunk(&mut self.yy, d2, &cy).context(ctx)?;
            add_cross_chunk(&mut self.xy, &cx, &cy).context(ctx)?;
            r0 += len;
        }
        mirror_upper(&mut self.xx, d1);
        mirror_upper(&mut self.yy, d2);
        self.n += n;
        Ok(())
    }

    /// [`push`](Self::push) for f32 rows read in place (`xs`: `n × d1`, `ys`: `n × d2`), once
    /// the shifts are set: each chunk is written once as `[x − s | y − t]` and one Gram product
    /// of that `(d1 + d2)`-wide chunk gives all three blocks (its upper triangle: XᵀX, YᵀY and
    /// XᵀY, the same products as three calls), multiplied in f32 and added in f64.
    fn push_f32_side_by_side(
        &mut self,
        xs: &[f32],
        ys: &[f32],
        n: usize,
        what: &str,
    ) -> Result<()> {
        let (d1, d2) = (self.d1, self.d2);
        let w = d1 + d2;
        // the shifts rounded to f32, as the generic path's shift tensors
        let sx: Vec<f32> = self.shift_x.iter().map(|&v| v as f32).collect();
        let sy: Vec<f32> = self.shift_y.iter().map(|&v| v as f32).collect();
        let mut z = vec![0.0f32; GRAM_CHUNK_ROWS.min(n) * w];
        let mut g = vec![0.0f32; w * w];
        let mut r0 = 0;
        while r0 < n {
            let len = GRAM_CHUNK_ROWS.min(n - r0);
            let (xc, yc) = (&xs[r0 * d1..(r0 + len) * d1], &ys[r0 * d2..(r0 + len) * d2]);
            let zc = &mut z[..len * w];
            let sums = replens_kernels::shifted_side_by_side(xc, yc, &sx, &sy, zc);
            if !sums.iter().all(|v| v.is_finite()) {
                for (side, values, d) in [("x", xc, d1), ("y", yc, d2)] {
                    let rows: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
                    check_finite(&rows, d, r0, &format!("{what}: {side}"))?;
                }
                bail!(
                    "{what}: the sums of rows {r0}..{} overflow the working precision (values \
                     near the float limit); rescale the input or use Precision::F64",
                    r0 + len
                );
            }
            for (a, v) in self.sum_x.iter_mut().zip(&sums[..d1]) {
                *a += v;
            }
            for (a, v) in self.sum_y.iter_mut().zip(&sums[d1..]) {
                *a += v;
            }
            g.fill(0.0);
            add_gram_upper(&mut g, zc, len, w, GramOf::Columns, gemm_threads());
            for (i, row) in g.chunks_exact(w).enumerate() {
                if i < d1 {
                    add_f32(&mut self.xx[i * d1 + i..(i + 1) * d1], &row[i..d1]);
                    add_f32(&mut self.xy[i * d2..(i + 1) * d2], &row[d1..]);
                } else {
                    let iy = i - d1;
                    add_f32(&mut self.yy[iy * d2 + iy..(iy + 1) * d2], &row[i..]);
                }
            }
            r0 += len;
        }
        mirror_upper(&mut self.xx, d1);
        mirror_upper(&mut self.yy, d2);
        self.n += n;
        Ok(())
    }

    /// The centred scatter matrices (XcᵀXc, YcᵀYc, XcᵀYc), row-major.
    pub fn centred(&self) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let n = self.n.max(1) as f64;
        let ux: Vec<f64> = self.sum_x.iter().map(|s| s / n).collect();
        let uy: Vec<f64> = self.sum_y.iter().map(|s| s / n).collect();
        let correct = |acc: &[f64], a: &[f64], b: &[f64]| -> Vec<f64> {
            let mut out = acc.to_vec();
            for (row, ai) in out.chunks_exact_mut(b.len()).zip(a) {
                for (o, bj) in row.iter_mut().zip(b) {
                    *o -= n * ai * bj;
                }
            }
            out
        };
        (
            correct(&self.xx, &ux, &ux),
            correct(&self.yy, &uy, &uy),
            correct(&self.xy, &ux, &uy),
        )
    }

    /// Whether all of X's (`side = 0`) or Y's (`side = 1`) columns are constant, given the
    /// centred diagonal from [`PairMoments::centred`] (see [`is_constant`]).
    pub fn is_constant(&self, side: usize, centred: &[f64]) -> bool {
        let (acc, shift, sum, d) = if side == 0 {
            (&self.xx, &self.shift_x, &self.sum_x, self.d1)
        } else {
            (&self.yy, &self.shift_y, &self.sum_y, self.d2)
        };
        if shift.is_empty() {
            return true;
        }
        let n = self.n as f64;
        let cdiag: Vec<f64> = (0..d).map(|j| centred[j * d + j]).collect();
        // Σ x_j² = Σ (x_j − s_j)² + 2 s_j Σ (x_j − s_j) + n s_j²
        let raw: Vec<f64> = (0..d)
            .map(|j| acc[j * d + j] + 2.0 * shift[j] * sum[j] + n * shift[j] * shift[j])
            .collect();
        is_constant(&cdiag, &raw)
    }
}

/// sums += column sums of the shifted chunk `c`; a non-finite sum means NaN/inf in rows r0..
/// of the original `x`, which is then located for the message.
fn add_column_sums(sums: &mut [f64], c: &Tensor, x: &Tensor, r0: usize, what: &str) -> Result<()> {
    let (len, d) = c.dims2()?;
    // 1ᵀC through gemm: a reduction over rows is the slow direction for candle's `sum(0)`.
    // In f32 the sum of ≤ 2048 centred values carries ~1e-7 relative error; it only enters
    // the small correction n(μ − s)(μ − s)ᵀ. NaN/inf propagate into the sums.
    let s = Tensor::ones((1, len), c.dtype(), c.device())
        .and_then(|o| o.matmul(c))
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .context(|| format!("{what}: column sums of rows {r0}..{}", r0 + len))?;
    if s.iter().all(|v| v.is_finite()) {
        for (a, v) in sums.iter_mut().zip(s) {
            *a += v;
        }
        return Ok(());
    }
    let rows = x
        .narrow(0, r0, len)
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .context(|| format!("{what}: reading rows {r0}..{}", r0 + len))?;
    check_finite(&rows, d, r0, what)?;
    bail!(
        "{what}: the sums of rows {r0}..{} overflow the working precision (values near the \
         float limit); rescale the input or use Precision::F64",
        r0 + len
    )
}

/// (Pseudo-)inverse square root of a symmetric PSD `n × n` matrix: A^{-1/2} = Σ λ^{-1/2} v vᵀ
/// over the eigenpairs with λ > `rel_floor · λ_max`; eigen-directions at or below the floor
/// are treated as exactly zero variance and dropped (a pseudo-inverse), so a rank-deficient
/// covariance (constant or collinear columns, fewer rows than columns) gives a finite answer
/// restricted to its column space. Returns the matrix and the number of kept directions.
/// Errors if A has no eigenvalue above the floor (e.g. the zero matrix).
pub fn inv_sqrt_psd(a: &[f64], n: usize, rel_floor: f64) -> Result<(Vec<f64>, usize)> {
    let (values, vectors) = symmetric_eigen(a, n)?;
    let lmax = values.first().copied().unwrap_or(0.0);
    if lmax <= 0.0 {
        bail!("inv_sqrt_psd: the {n}x{n} matrix has no positive eigenvalue");
    }
    let keep = values.iter().take_while(|&&l| l > rel_floor * lmax).count();
    let mut out = vec![0.0; n * n];
    for (k, &l) in values.iter().enumerate().take(keep) {
        let w = 1.0 / l.sqrt();
        for i in 0..n {
            let vi = vectors[i * n + k] * w;
            if vi == 0.0 {
                continue;
            }
            for j in 0..n {
                out[i * n + j] += vi * vectors[j * n + k];
            }
        }
    }
    Ok((out, keep))
}

/// Thin singular value decomposition X = U S Vᵀ of a row-major `rows × cols` matrix, keeping
/// the singular values above `rel_floor · s_max` (so `rank ≤ min(rows, cols)`).
#[derive(Debug, Clone, PartialEq)]
pub struct ThinSvd {
    /// Number of singular triplets kept.
    pub rank: usize,
    /// Singular values, descending (`rank` values).
    pub s: Vec<f64>,
    /// Left singular vectors, `rows × rank` row-major.
    pub u: Vec<f64>,
    /// Right singular vectors, `cols × rank` row-major.
    pub v: Vec<f64>,
}

/// Thin SVD through the eigen-decomposition of the smaller Gram matrix (XᵀX when
/// cols ≤ rows, else XXᵀ): s = √λ, and the other factor is X V / s (or Xᵀ U / s).
///
/// Squaring X squares its condition number: singular values below ~1e-8 · s_max lose their
/// relative accuracy (absolute error ~1e-16 · s_max² / s). That is harmless for the
/// variance-ranked truncations used here (SVCCA keeps the directions carrying most
/// variance); use `rel_floor ≥ 1e-10` to drop the numerically meaningless tail.
pub fn thin_svd(x: &[f64], rows: usize, cols: usize, rel_floor: f64) -> Result<ThinSvd> {
    if x.len() != rows * cols {
        bail!(
            "thin_svd: expected {rows}x{cols} = {} values, got {}",
            rows * cols,
            x.len()
        );
    }
    let tall = cols <= rows;
    let (g, m) = if tall {
        let xt = transpose(x, rows, cols);
        (matmul(&xt, x, cols, rows, cols)?, cols)
    } else {
        let xt = transpose(x, rows, cols);
        (matmul(x, &xt, rows, cols, rows)?, rows)
    };
    let g = symmetrise(g, m);
    let (values, vectors) = symmetric_eigen(&g, m)?;
    let smax = values.first().copied().unwrap_or(0.0).max(0.0).sqrt();
    let rank = values
        .iter()
        .take_while(|&&l| l > 0.0 && l.sqrt() > rel_floor * smax)
        .count();
    let s: Vec<f64> = values[..rank].iter().map(|l| l.sqrt()).collect();
    // The eigenvectors of the kept directions, m × rank.
    let mut w = vec![0.0; m * rank];
    for i in 0..m {
        w[i * rank..(i + 1) * rank].copy_from_slice(&vectors[i * m..i * m + rank]);
    }
    let other = if tall {
        matmul(x, &w, rows, cols, rank)?
    } else {
        let xt = transpose(x, rows, cols);
        matmul(&xt, &w, cols, rows, rank)?
    };
    let other_rows = if tall { rows } else { cols };
    let mut other = other;
    for r in 0..other_rows {
        for (o, &sk) in other[r * rank..(r + 1) * rank].iter_mut().zip(&s) {
            *o /= sk;
        }
    }
    let (u, v) = if tall { (other, w) } else { (w, other) };
    Ok(ThinSvd { rank, s, u, v })
}

/// (A + Aᵀ)/2 of a square row-major matrix.
pub fn symmetrise(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    for i in 0..n {
        for j in 0..i {
            let s = 0.5 * (a[i * n + j] + a[j * n + i]);
            a[i * n + j] = s;
            a[j * n + i] = s;
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, len: usize) -> Vec<f64> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) - 0.5
            })
            .collect()
    }

    fn check_decomposition(a: &[f64], n: usize) {
        let (vals, vecs) = symmetric_eigen(a, n).unwrap();
        let scale = a.iter().fold(1e-300f64, |m, v| m.max(v.abs()));
        for w in vals.windows(2) {
            assert!(w[0] >= w[1]);
        }
        for i in 0..n {
            for j in 0..n {
                let recon: f64 = (0..n)
                    .map(|k| vecs[i * n + k] * vals[k] * vecs[j * n + k])
                    .sum();
                assert!(
                    (recon - a[i * n + j]).abs() <= 1e-12 * scale * n as f64,
                    "A[{i}][{j}]"
                );
                let vtv: f64 = (0..n).map(|k| vecs[k * n + i] * vecs[k * n + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((vtv - want).abs() < 1e-12, "VᵀV[{i}][{j}] = {vtv}");
            }
        }
    }

    #[test]
    fn eigen_reconstructs_random_and_degenerate_matrices() {
        for &n in &[1usize, 2, 3, 7, 40] {
            let b = lcg(n as u64, n * n);
            let a = symmetrise(b, n);
            check_decomposition(&a, n);
        }
        // Rank-2 PSD with a cluster of zero eigenvalues, and a multiple of the identity.
        let n = 12;
        let u = lcg(99, n * 2);
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = u[i * 2] * u[j * 2] + u[i * 2 + 1] * u[j * 2 + 1];
            }
        }
        check_decomposition(&a, n);
        let mut eye = vec![0.0; 25];
        (0..5).for_each(|i| eye[i * 5 + i] = 3.0);
        check_decomposition(&eye, 5);
    }

    #[test]
    fn eigen_rejects_bad_input() {
        assert!(symmetric_eigen(&[1.0, 2.0, 3.0], 2).is_err());
        let e = symmetric_eigen(&[1.0, 2.0, 0.0, 1.0], 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not symmetric"), "{e}");
        let e = symmetric_eigen(&[1.0, f64::NAN, f64::NAN, 1.0], 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("(0, 1)"), "{e}");
    }

    #[test]
    fn thin_svd_both_sides() {
        for &(r, c) in &[(9usize, 4usize), (4, 9)] {
            let x = lcg(r as u64 * 31 + c as u64, r * c);
            let svd = thin_svd(&x, r, c, 1e-12).unwrap();
            assert_eq!(svd.rank, 4);
            for i in 0..r {
                for j in 0..c {
                    let v: f64 = (0..svd.rank)
                        .map(|k| svd.u[i * svd.rank + k] * svd.s[k] * svd.v[j * svd.rank + k])
                        .sum();
                    assert!((v - x[i * c + j]).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn inv_sqrt_drops_null_directions() {
        // diag(4, 1, 0): pseudo-inverse square root diag(1/2, 1, 0), rank 2.
        let a = [4.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        let (m, rank) = inv_sqrt_psd(&a, 3, 1e-12).unwrap();
        assert_eq!(rank, 2);
        let want = [0.5, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        for (g, w) in m.iter().zip(want) {
            assert!((g - w).abs() < 1e-14);
        }
        assert!(inv_sqrt_psd(&[0.0; 4], 2, 1e-12).is_err());
    }

    #[test]
    fn blocked_symmetric_gram_matches_direct_product() {
        // d = 600 → three column blocks; a large offset on one column exercises the f32 shift.
        let (n, d) = (50, 600);
        let mut x = lcg(11, n * d);
        (0..n).for_each(|i| x[i * d + 7] += 1000.0);
        let t = Tensor::from_slice(&x, (n, d), &Device::Cpu).unwrap();
        let mean = column_means(&t, "x").unwrap();
        let mut xc = x.clone();
        centre_columns(&mut xc, d);
        let want = matmul(&transpose(&xc, n, d), &xc, d, n, d).unwrap();
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let g = gram_f64(&t, Some(&mean), Precision::F64).unwrap();
        for (a, b) in g.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12 * scale);
        }
        let t32 = t.to_dtype(DType::F32).unwrap();
        let mean32 = column_means(&t32, "x").unwrap();
        let g = gram_f64(&t32, Some(&mean32), Precision::F32).unwrap();
        // Against the exact Gram of the same f32-rounded data (rounding x + 1000 to f32 alone
        // moves that column by ~6e-5).
        let want32 = gram_f64(&t32, Some(&mean32), Precision::F64).unwrap();
        for (a, b) in g.iter().zip(&want32) {
            assert!((a - b).abs() < 1e-5 * scale, "{a} vs {b}");
        }
        let mut pm = PairMoments::new(d, d);
        pm.push(
            &t.narrow(0, 0, 20).unwrap(),
            &t.narrow(0, 0, 20).unwrap(),
            Precision::F64,
            "t",
        )
        .unwrap();
        pm.push(
            &t.narrow(0, 20, 30).unwrap(),
            &t.narrow(0, 20, 30).unwrap(),
            Precision::F64,
            "t",
        )
        .unwrap();
        let (xx, _, xy) = pm.centred();
        for ((a, b), c) in xx.iter().zip(xy.iter()).zip(&want) {
            assert!((a - c).abs() < 1e-10 * scale && (b - c).abs() < 1e-10 * scale);
        }
        assert!(!pm.is_constant(0, &xx));
    }

    #[test]
    fn chunked_gram_matches_direct_product() {
        let (n, d) = (GRAM_CHUNK_ROWS + 37, 5);
        let x = lcg(5, n * d);
        let t = Tensor::from_slice(&x, (n, d), &Device::Cpu).unwrap();
        let mean = column_means(&t, "x").unwrap();
        let g64 = gram_f64(&t, Some(&mean), Precision::F64).unwrap();
        let mut xc = x.clone();
        centre_columns(&mut xc, d);
        let xt = transpose(&xc, n, d);
        let want = matmul(&xt, &xc, d, n, d).unwrap();
        for (a, b) in g64.iter().zip(&want) {
            assert!((a - b).abs() < 1e-10 * want[0].abs());
        }
        let g32 = gram_f64(&t, Some(&mean), Precision::F32).unwrap();
        for (a, b) in g32.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5 * want[0].abs());
        }
        let c = cross_f64(&t, Some(&mean), &t, Some(&mean), Precision::F64).unwrap();
        for (a, b) in c.iter().zip(&want) {
            assert!((a - b).abs() < 1e-10 * want[0].abs());
        }
    }
}
