//! A decoder block's rotary, grouped-query, masked self-attention in f32, one task per
//! (sequence, head) on rayon's pool, reading the projections where they are.
//!
//! It computes what replens's chain of candle ops for Llama-family attention computes, operation
//! for operation: candle's `rope` (`x₁ cos − x₂ sin`, `x₁ sin + x₂ cos`), `gemm` products with the
//! same operand layouts (`q` and `v` rows of `head_dim` values, `kᵀ` rows of `seq` values), the
//! affine scale, the additive mask and candle's softmax (see the encoder kernels). So the values
//! are the same to the bit (replens tests this). What it saves is the memory traffic around
//! them: the head transposes of q, k and v, the copies that `repeat_kv` and `kᵀ` make, the scaled
//! and masked score tensors, the transpose of the output, and `exp` of masked scores.

use rayon::prelude::*;

use crate::SendPtr;

use crate::encoder::Float;

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionDims {
    /// Sequences in the batch.
    pub batch: usize,
    /// Positions per sequence (queries = keys).
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; query head `j` reads key/value head `j / (heads / kv_heads)`.
    pub kv_heads: usize,
    /// Width of a head (even: rotary pairs value `i` with value `i + head_dim / 2`).
    pub head_dim: usize,
}

/// `out = softmax(rope(q) rope(k)ᵀ · scale + mask) · v` for every sequence and query head.
///
/// * `q`: `(batch, seq, heads · head_dim)`, `k` and `v`: `(batch, seq, kv_heads · head_dim)`,
///   row-major, as the projections return them (before rotary);
/// * `cos`, `sin`: `(seq, head_dim / 2)`, the rotary angles of positions `0..seq`;
/// * `mask`: `(batch, seq, seq)`, added to the scaled scores of query `i` and key `j` (0 or −∞);
///   each query must see at least one key;
/// * `out`: `(batch, seq, heads · head_dim)`, every value written.
///
/// # Panics
/// When a slice's length disagrees with `dims`, `heads` is not a multiple of `kv_heads`, or
/// `head_dim` is odd or 0.
///
/// ```
/// use replens_kernels::{rotary_attention_f32, AttentionDims};
/// // one sequence of two positions, one head of width 2, angle 0 (cos 1, sin 0)
/// let dims = AttentionDims { batch: 1, seq: 2, heads: 1, kv_heads: 1, head_dim: 2 };
/// let (q, k, v) = ([1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0], [1.0, 2.0, 3.0, 4.0]);
/// let (cos, sin) = ([1.0, 1.0], [0.0, 0.0]);
/// let mask = [0.0, f32::NEG_INFINITY, 0.0, 0.0]; // causal
/// let mut out = [0.0f32; 4];
/// rotary_attention_f32(&q, &k, &v, &cos, &sin, &mask, 1.0, dims, &mut out);
/// // position 0 sees only itself; position 1 sees both keys with equal scores
/// assert_eq!(out, [1.0, 2.0, 2.0, 3.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn rotary_attention_f32(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cos: &[f32],
    sin: &[f32],
    mask: &[f32],
    scale: f64,
    dims: AttentionDims,
    out: &mut [f32],
) {
    let AttentionDims {
        batch,
        seq: t,
        heads,
        kv_heads,
        head_dim: hd,
    } = dims;
    assert!(
        hd > 0 && hd.is_multiple_of(2),
        "head_dim must be even and positive"
    );
    assert!(
        kv_heads > 0 && heads.is_multiple_of(kv_heads),
        "heads must be a multiple of kv_heads"
    );
    let (q_width, kv_width) = (heads * hd, kv_heads * hd);
    assert_eq!(
        q.len(),
        batch * t * q_width,
        "q is not (batch, seq, heads·head_dim)"
    );
    assert_eq!(
        k.len(),
        batch * t * kv_width,
        "k is not (batch, seq, kv_heads·head_dim)"
    );
    assert_eq!(v.len(), k.len(), "v is not (batch, seq, kv_heads·head_dim)");
    assert_eq!(cos.len(), t * hd / 2, "cos is not (seq, head_dim / 2)");
    assert_eq!(sin.len(), cos.len(), "sin is not (seq, head_dim / 2)");
    assert_eq!(mask.len(), batch * t * t, "mask is not (batch, seq, seq)");
    assert_eq!(
        out.len(),
        q.len(),
        "out is not (batch, seq, heads·head_dim)"
    );
    if out.is_empty() {
        return;
    }
    let group = heads / kv_heads;
    // candle's scaling is an affine op with the factor rounded to f32.
    let scale = scale as f32;
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..batch * heads).into_par_iter().for_each(|task| {
        let (row, head) = (task / heads, task % heads);
        let kv_head = head / group;
        let q_rows = &q[row * t * q_width..(row + 1) * t * q_width];
        let k_rows = &k[row * t * kv_width..(row + 1) * t * kv_width];
        let v_rows = &v[row * t * kv_width..(row + 1) * t * kv_width];
        let mut q_rot = vec![0.0f32; t * hd];
        let mut k_rot_t = vec![0.0f32; hd * t];
        let mut v_head = vec![0.0f32; t * hd];
        let half = hd / 2;
        for i in 0..t {
            let (c, s) = (
                &cos[i * half..(i + 1) * half],
                &sin[i * half..(i + 1) * half],
            );
            let x = &q_rows[i * q_width + head * hd..][..hd];
            let dst = &mut q_rot[i * hd..(i + 1) * hd];
            for d in 0..half {
                dst[d] = x[d] * c[d] - x[d + half] * s[d];
                dst[d + half] = x[d] * s[d] + x[d + half] * c[d];
            }
            let x = &k_rows[i * kv_width + kv_head * hd..][..hd];
            for d in 0..half {
                k_rot_t[d * t + i] = x[d] * c[d] - x[d + half] * s[d];
                k_rot_t[(d + half) * t + i] = x[d] * s[d] + x[d + half] * c[d];
            }
            v_head[i * hd..(i + 1) * hd]
                .copy_from_slice(&v_rows[i * kv_width + kv_head * hd..][..hd]);
        }
        // SAFETY: q_rot and v_head are t × hd and k_rot_t hd × t, row-major; this task writes
        // rows `row · t ..` (t of them, `heads · hd` apart) at columns `head · hd ..` (hd of
        // them) of `out`, which has batch · t rows of heads · hd: inside `out`, and disjoint from
        // every other task's (row, head) block.
        unsafe {
            head_attention(
                (t, hd),
                &q_rot,
                (&k_rot_t, (t, 1)),
                &v_head,
                (&mask[row * t * t..(row + 1) * t * t], t),
                scale,
                (out_ptr.at(row * t * q_width + head * hd), q_width),
            );
        }
    });
}

/// A BERT-family encoder's self-attention from its projections, in f64:
/// `out = softmax(q kᵀ · scale + key_bias) v` for every sequence and head, as replens's candle
/// ops compute it (HF's eager attention): `gemm` products with the layouts of the head-major
/// copies those ops make (`q` and `k` as `seq × head_dim` blocks, `kᵀ` a transposed view), the
/// affine scale, the additive key mask and candle's softmax, so the same values to the bit.
///
/// * `q`, `k`, `v`: `(batch · seq, heads · head_dim)` row-major, as the projections return them;
/// * `key_bias`: `(batch, seq)`, added to the scores of every query for that key (0 for a token,
///   a large negative value for padding);
/// * `out`: `(batch · seq, heads · head_dim)`, every value written.
///
/// # Panics
/// When a slice's length disagrees with `dims` (whose `kv_heads` must equal `heads`).
///
/// ```
/// use replens_kernels::{encoder_attention, AttentionDims};
/// let dims = AttentionDims { batch: 1, seq: 2, heads: 1, kv_heads: 1, head_dim: 1 };
/// let mut out = [0.0; 2];
/// // equal scores; the second key is padding
/// encoder_attention(&[1.0, 1.0], &[1.0, 1.0], &[3.0, 5.0], &[0.0, -1e30], 1.0, dims, &mut out);
/// assert_eq!(out, [3.0, 3.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn encoder_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    key_bias: &[f64],
    scale: f64,
    dims: AttentionDims,
    out: &mut [f64],
) {
    encoder_attention_rows(q, k, v, key_bias, scale, dims, out)
}

/// [`encoder_attention`] in f32.
///
/// # Panics
/// When a slice's length disagrees with `dims` (whose `kv_heads` must equal `heads`).
///
/// ```
/// use replens_kernels::{encoder_attention_f32, AttentionDims};
/// let dims = AttentionDims { batch: 1, seq: 2, heads: 1, kv_heads: 1, head_dim: 1 };
/// let mut out = [0.0f32; 2];
/// let bias = [0.0, f32::MIN];
/// encoder_attention_f32(&[1.0, 1.0], &[1.0, 1.0], &[3.0, 5.0], &bias, 1.0, dims, &mut out);
/// assert_eq!(out, [3.0, 3.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn encoder_attention_f32(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    key_bias: &[f32],
    scale: f64,
    dims: AttentionDims,
    out: &mut [f32],
) {
    encoder_attention_rows(q, k, v, key_bias, scale, dims, out)
}

#[allow(clippy::too_many_arguments)]
fn encoder_attention_rows<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    key_bias: &[T],
    scale: f64,
    dims: AttentionDims,
    out: &mut [T],
) {
    let AttentionDims {
        batch,
        seq: t,
        heads,
        kv_heads,
        head_dim: hd,
    } = dims;
    assert_eq!(
        kv_heads, heads,
        "an encoder has as many key/value heads as query heads"
    );
    let width = heads * hd;
    assert_eq!(
        q.len(),
        batch * t * width,
        "q is not (batch·seq, heads·head_dim)"
    );
    assert_eq!(k.len(), q.len(), "k is not (batch·seq, heads·head_dim)");
    assert_eq!(v.len(), q.len(), "v is not (batch·seq, heads·head_dim)");
    assert_eq!(key_bias.len(), batch * t, "key_bias is not (batch, seq)");
    assert_eq!(out.len(), q.len(), "out is not (batch·seq, heads·head_dim)");
    if out.is_empty() {
        return;
    }
    // candle's scaling is an affine op with the factor in the tensor's type.
    let scale = T::from_f64(scale);
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..batch * heads).into_par_iter().for_each(|task| {
        let (row, head) = (task / heads, task % heads);
        let rows = row * t * width..(row + 1) * t * width;
        let head_block = |x: &[T]| -> Vec<T> {
            x[rows.clone()]
                .chunks_exact(width)
                .flat_map(|r| r[head * hd..(head + 1) * hd].iter().copied())
                .collect()
        };
        let (q_head, k_head, v_head) = (head_block(q), head_block(k), head_block(v));
        // SAFETY: q_head, k_head and v_head are t × hd, row-major, kᵀ read as k_head's
        // transposed view (row stride 1, column stride hd); this task writes rows `row · t ..`
        // (t of them, `width` apart) at columns `head · hd ..` (hd of them) of `out`, which has
        // batch · t rows of `width`: inside `out`, and disjoint from every other task's block.
        unsafe {
            head_attention(
                (t, hd),
                &q_head,
                (&k_head, (1, hd)),
                &v_head,
                (&key_bias[row * t..(row + 1) * t], 0),
                scale,
                (out_ptr.at(row * t * width + head * hd), width),
            );
        }
    });
}

/// One (sequence, head) of attention: `dst = softmax(q kᵀ · scale + mask) v`, with `q` and `v`
/// row-major `t × hd`, `kᵀ` the `hd × t` operand `k` read with strides `(row, column)`, and the
/// mask of query `i` at `mask[i · mask_rs ..][..t]` (`mask_rs = t` for a mask per query, 0 for one
/// key mask shared by all queries). The products are single-threaded `gemm` calls (the caller
/// spreads the heads over threads), the softmax candle's.
///
/// # Safety
/// `dst` must address `t` rows of `hd` values, `dst_rs` apart, inside a live allocation that no
/// other thread reads or writes meanwhile; `k` must hold the `hd × t` operand its strides read.
unsafe fn head_attention<T: Float>(
    (t, hd): (usize, usize),
    q: &[T],
    (k, k_strides): (&[T], (usize, usize)),
    v: &[T],
    (mask, mask_rs): (&[T], usize),
    scale: T,
    (dst, dst_rs): (*mut T, usize),
) {
    let mut scores = vec![T::ZERO; t * t];
    matmul_into(
        (t, t, hd),
        scores.as_mut_ptr(),
        t,
        q.as_ptr(),
        hd,
        k.as_ptr(),
        k_strides,
    );
    let mut probs = vec![T::ZERO; t * t];
    for (i, (s, p)) in scores
        .chunks_exact(t)
        .zip(probs.chunks_exact_mut(t))
        .enumerate()
    {
        crate::encoder::softmax_row(s, &mask[i * mask_rs..i * mask_rs + t], scale, p);
    }
    matmul_into(
        (t, hd, t),
        dst,
        dst_rs,
        probs.as_ptr(),
        t,
        v.as_ptr(),
        (hd, 1),
    );
}

/// `dst = a · b` for `a` (`m × k`, row stride `a_rs`) and `b` (`k × n`, strides `b_rs`, `b_cs`)
/// into row-major `dst` (`m × n`, row stride `dst_rs`), one thread, as candle's matmul calls
/// `gemm` for operands of these layouts.
///
/// # Safety
/// The three matrices must lie inside live allocations, `dst` not overlapping the others.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_into<T: Float>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    dst_rs: usize,
    a: *const T,
    a_rs: usize,
    b: *const T,
    (b_rs, b_cs): (usize, usize),
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        false,
        a,
        1,
        a_rs as isize,
        b,
        b_cs as isize,
        b_rs as isize,
        T::ZERO,
        T::ONE,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}
