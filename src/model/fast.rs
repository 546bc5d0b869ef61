//! CPU fast paths for the hot operations of a forward pass: in f32 for a decoder block (RMSNorm,
//! residual sums, the SwiGLU gate, blocked linear layers), in f64 or f32 for a BERT-family
//! encoder layer (residual sum + LayerNorm, bias + GELU, scaled masked softmax), and the
//! attention's batched products in either.
//!
//! Why: each of candle's element-wise ops over 64k elements or more runs on candle's own
//! barrier pool, whose workers then spin for ~25,000 `pause`s, while the matmuls run on rayon's
//! threads; on a 2–4 core machine the spinning workers take cores from the matmuls (a quarter of
//! an extraction's samples in `perf`). These kernels (`replens_kernels`, built at opt-level 3)
//! are fused (one pass over memory each) and run on rayon's pool, the one `gemm` uses.
//!
//! Each function returns `None` when its inputs are not plain CPU tensors of its precision, or
//! when autograd tracks them; callers then run the generic candle ops, which compute the same
//! values.

use candle_core::{DType, Tensor, WithDType};
use rayon::prelude::*;

/// Whether `t` can take a fast path in `dtype`: of that dtype, on the CPU, not tracked by
/// autograd.
fn eligible(t: &Tensor, dtype: DType) -> bool {
    t.dtype() == dtype && t.device().is_cpu() && !t.track_op()
}

/// Runs `f` on the contents of `tensors` (made contiguous), all of type `T`, and wraps its
/// output in a tensor of `shape` on their device. `None` when any tensor is not [`eligible`].
fn with_cpu<T: WithDType>(
    tensors: &[&Tensor],
    shape: &[usize],
    f: impl FnOnce(&[&[T]], &mut [T]),
) -> candle_core::Result<Option<Tensor>> {
    if !tensors.iter().all(|t| eligible(t, T::DTYPE)) {
        return Ok(None);
    }
    let contiguous = tensors
        .iter()
        .map(|t| t.contiguous())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let guards = contiguous
        .iter()
        .map(|t| t.storage_and_layout())
        .collect::<Vec<_>>();
    let mut slices = Vec::with_capacity(guards.len());
    for ((storage, layout), tensor) in guards.iter().zip(&contiguous) {
        let candle_core::Storage::Cpu(cpu) = &**storage else {
            return Ok(None);
        };
        let start = layout.start_offset();
        let data = cpu.as_slice::<T>()?;
        let end = start + tensor.elem_count();
        if end > data.len() {
            candle_core::bail!(
                "tensor of shape {:?} is shorter than its storage",
                tensor.dims()
            );
        }
        slices.push(&data[start..end]);
    }
    let mut out = vec![T::zero(); shape.iter().product()];
    f(&slices, &mut out);
    let device = tensors[0].device().clone();
    drop(guards);
    Ok(Some(Tensor::from_vec(out, shape, &device)?))
}

/// [`with_cpu`] for f32 tensors (the decoders' fast paths).
fn with_f32(
    tensors: &[&Tensor],
    shape: &[usize],
    f: impl FnOnce(&[&[f32]], &mut [f32]),
) -> candle_core::Result<Option<Tensor>> {
    with_cpu(tensors, shape, f)
}

/// [`with_cpu`] in the tensors' precision (that of `tensors[0]`): `f64_kernel` for f64,
/// `f32_kernel` for f32, `None` for other dtypes. For the encoder's kernels, which exist in both.
fn with_f64_or_f32(
    tensors: &[&Tensor],
    shape: &[usize],
    f64_kernel: impl FnOnce(&[&[f64]], &mut [f64]),
    f32_kernel: impl FnOnce(&[&[f32]], &mut [f32]),
) -> candle_core::Result<Option<Tensor>> {
    match tensors.first().map(|t| t.dtype()) {
        Some(DType::F64) => with_cpu(tensors, shape, f64_kernel),
        Some(DType::F32) => with_cpu(tensors, shape, f32_kernel),
        _ => Ok(None),
    }
}

/// Whether `bias` is a vector over the last dimension of `x` (a linear layer's bias).
fn is_row_bias(x: &Tensor, bias: &Tensor) -> bool {
    let width = bias.elem_count();
    bias.rank() == 1 && x.dims().last() == Some(&width) && width > 0
}

/// `a + b` for two tensors of the same shape.
pub(crate) fn add(a: &Tensor, b: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if a.dims() != b.dims() {
        return Ok(None);
    }
    with_f32(&[a, b], a.dims(), |s, out| {
        replens_kernels::add(s[0], s[1], out)
    })
}

/// `silu(gate) * up` for two tensors of the same shape.
pub(crate) fn silu_mul(gate: &Tensor, up: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if gate.dims() != up.dims() {
        return Ok(None);
    }
    with_f32(&[gate, up], gate.dims(), |s, out| {
        replens_kernels::silu_mul(s[0], s[1], out)
    })
}

/// HF's `LlamaRMSNorm` over the last dimension of `x`, whose size must be `weight`'s.
pub(crate) fn rms_norm(
    x: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> candle_core::Result<Option<Tensor>> {
    let width = weight.elem_count();
    if weight.rank() != 1 || x.dims().last() != Some(&width) || width == 0 {
        return Ok(None);
    }
    with_f32(&[x, weight], x.dims(), |s, out| {
        replens_kernels::rms_norm(s[0], s[1], eps, out)
    })
}

/// `y = x · W` for a `(rows, Σ kᵢ)` matrix `x` and `W` given as row blocks `(kᵢ, out)`, as one
/// `gemm` call per block adding into a single output (`y += x[:, block] · W_block`): the blocked
/// sums of [`super::llama`]'s linear layers, in the same order and so bit for bit the same as
/// separate products added with candle, without their copies, temporaries and additions. The
/// output's columns are shared among the threads ([`replens_kernels::blocked_product`]).
pub(crate) fn blocked_matmul(
    x: &Tensor,
    blocks: &[Tensor],
    out_dim: usize,
) -> candle_core::Result<Option<Tensor>> {
    let (rows, in_dim) = x.dims2()?;
    let widths = blocks
        .iter()
        .map(|b| b.dims2())
        .collect::<candle_core::Result<Vec<_>>>()?;
    if widths.iter().map(|(k, _)| k).sum::<usize>() != in_dim
        || widths.iter().any(|&(_, n)| n != out_dim)
    {
        candle_core::bail!(
            "blocked linear layer: blocks {widths:?} do not make a ({in_dim}, {out_dim}) weight"
        );
    }
    let mut inputs = vec![x];
    inputs.extend(blocks);
    let widths: Vec<usize> = widths.iter().map(|&(k, _)| k).collect();
    let threads = candle_core::utils::get_num_threads();
    with_f32(&inputs, &[rows, out_dim], |s, y| {
        replens_kernels::blocked_product(y, s[0], rows, &s[1..], &widths, out_dim, threads)
    })
}

/// `x · w_t` for `x` of shape `(…, in)` and the contiguous `(in, out)` weight `w_t` of a linear
/// layer, in f64 or f32 ([`replens_kernels::blocked_product`] with one block: the output's
/// columns shared among the threads). Each value is summed as by candle's own matmul, so the
/// result is bit for bit `x.matmul(w_t)` (tested). `None` when the shapes do not fit (the
/// caller's candle op then reports them) or a tensor is not eligible.
pub(crate) fn dense_matmul(x: &Tensor, w_t: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let Ok((in_dim, out_dim)) = w_t.dims2() else {
        return Ok(None);
    };
    if x.dims().last() != Some(&in_dim) || x.rank() < 2 || w_t.dtype() != x.dtype() {
        return Ok(None);
    }
    let rows: usize = x.dims()[..x.rank() - 1].iter().product();
    let mut shape = x.dims().to_vec();
    *shape.last_mut().expect("rank ≥ 2") = out_dim;
    let threads = candle_core::utils::get_num_threads();
    with_f64_or_f32(
        &[x, w_t],
        &shape,
        |s, y| {
            replens_kernels::blocked_product(y, s[0], rows, &[s[1]], &[in_dim], out_dim, threads)
        },
        |s, y| {
            replens_kernels::blocked_product(y, s[0], rows, &[s[1]], &[in_dim], out_dim, threads)
        },
    )
}

/// `x.matmul(w_t)` for a linear layer's `(in, out)` weight: through [`dense_matmul`] where it
/// applies (the same values), else candle's.
pub(crate) fn linear_matmul(x: &Tensor, w_t: &Tensor) -> candle_core::Result<Tensor> {
    match dense_matmul(x, w_t)? {
        Some(y) => Ok(y),
        None => x.matmul(w_t),
    }
}

/// Llama-family self-attention from the projections: `softmax(rope(q) rope(k)ᵀ · scale + mask) v`
/// per sequence and head, [`replens_kernels::rotary_attention_f32`]. `q`: `(b, t, heads ·
/// head_dim)`, `k` and `v`: `(b, t, kv_heads · head_dim)`, `cos` and `sin`: `(t, head_dim / 2)`,
/// `mask`: `(b, 1, t, t)`; returns `(b, t, heads · head_dim)`, the heads side by side as the
/// output projection reads them. `None` when a shape does not fit (the caller's candle ops then
/// report it) or a tensor is not an untracked f32 CPU tensor.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rotary_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    mask: &Tensor,
    scale: f64,
    heads: usize,
    kv_heads: usize,
) -> candle_core::Result<Option<Tensor>> {
    let (Ok((batch, seq, q_width)), Ok(k_dims)) = (q.dims3(), k.dims3()) else {
        return Ok(None);
    };
    if heads == 0
        || kv_heads == 0
        || !heads.is_multiple_of(kv_heads)
        || !q_width.is_multiple_of(heads)
    {
        return Ok(None);
    }
    let head_dim = q_width / heads;
    let fits = k_dims == (batch, seq, kv_heads * head_dim)
        && v.dims() == k.dims()
        && head_dim.is_multiple_of(2)
        && cos.dims() == [seq, head_dim / 2]
        && sin.dims() == cos.dims()
        && mask.dims() == [batch, 1, seq, seq];
    if !fits {
        return Ok(None);
    }
    let dims = replens_kernels::AttentionDims {
        batch,
        seq,
        heads,
        kv_heads,
        head_dim,
    };
    with_f32(&[q, k, v, cos, sin, mask], q.dims(), |s, out| {
        replens_kernels::rotary_attention_f32(s[0], s[1], s[2], s[3], s[4], s[5], scale, dims, out)
    })
}

/// HF `nn.LayerNorm` of `a + b` (or of `a`) over the last dimension, in the encoder's compute
/// precision (f64 by default, f32 opt-in): [`replens_kernels::add_layer_norm`] and its f32 twin.
pub(crate) fn add_layer_norm(
    a: &Tensor,
    b: Option<&Tensor>,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Option<Tensor>> {
    let width = weight.elem_count();
    if weight.rank() != 1
        || bias.dims() != weight.dims()
        || a.dims().last() != Some(&width)
        || width == 0
        || b.is_some_and(|b| b.dims() != a.dims())
    {
        return Ok(None);
    }
    let mut inputs = vec![a, weight, bias];
    inputs.extend(b);
    with_f64_or_f32(
        &inputs,
        a.dims(),
        |s, out| replens_kernels::add_layer_norm(s[0], s.get(3).copied(), s[1], s[2], eps, out),
        |s, out| replens_kernels::add_layer_norm_f32(s[0], s.get(3).copied(), s[1], s[2], eps, out),
    )
}

/// `gelu_erf(xw + bias)` for `xw` `(rows, width)` and `bias` `(width,)`, in f64 or f32:
/// [`replens_kernels::bias_gelu`] and its f32 twin.
pub(crate) fn bias_gelu(xw: &Tensor, bias: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !is_row_bias(xw, bias) {
        return Ok(None);
    }
    with_f64_or_f32(
        &[xw, bias],
        xw.dims(),
        |s, out| replens_kernels::bias_gelu(s[0], s[1], out),
        |s, out| replens_kernels::bias_gelu_f32(s[0], s[1], out),
    )
}

/// `x + bias` for a bias over the last dimension of `x` (a linear layer's), in f64 or f32:
/// [`replens_kernels::add_bias`] and its f32 twin, the value of candle's `broadcast_add`.
pub(crate) fn add_bias(x: &Tensor, bias: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !is_row_bias(x, bias) {
        return Ok(None);
    }
    with_f64_or_f32(
        &[x, bias],
        x.dims(),
        |s, out| replens_kernels::add_bias(s[0], s[1], out),
        |s, out| replens_kernels::add_bias_f32(s[0], s[1], out),
    )
}

/// `softmax(scores · scale + key_bias)` for attention scores `(b, h, q, k)` and an additive key
/// mask `(b, 1, 1, k)`, in f64 or f32: [`replens_kernels::scaled_masked_softmax`] and its f32
/// twin.
pub(crate) fn scaled_masked_softmax(
    scores: &Tensor,
    key_bias: &Tensor,
    scale: f64,
) -> candle_core::Result<Option<Tensor>> {
    let Ok((b, h, q, k)) = scores.dims4() else {
        return Ok(None);
    };
    if key_bias.dims() != [b, 1, 1, k] || k == 0 {
        return Ok(None);
    }
    let dims = (b, h, q, k);
    with_f64_or_f32(
        &[scores, key_bias],
        scores.dims(),
        |s, out| replens_kernels::scaled_masked_softmax(s[0], s[1], scale, dims, out),
        |s, out| replens_kernels::scaled_masked_softmax_f32(s[0], s[1], scale, dims, out),
    )
}

/// A BERT-family encoder's self-attention from the projections `q`, `k`, `v` (`(b·t, heads ·
/// head_dim)`) and the additive key mask `(b, 1, 1, t)`: `softmax(q kᵀ · scale + mask) v` per
/// sequence and head, the heads side by side `(b·t, heads · head_dim)`, in f64 or f32
/// ([`replens_kernels::encoder_attention`] and its f32 twin). `None` when a shape does not fit or
/// a tensor is not an untracked CPU tensor of the encoder's precision.
pub(crate) fn encoder_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_bias: &Tensor,
    scale: f64,
    heads: usize,
) -> candle_core::Result<Option<Tensor>> {
    let Ok((rows, width)) = q.dims2() else {
        return Ok(None);
    };
    let Ok((b, _, _, t)) = key_bias.dims4() else {
        return Ok(None);
    };
    let fits = heads > 0
        && width.is_multiple_of(heads)
        && k.dims() == q.dims()
        && v.dims() == q.dims()
        && key_bias.dims() == [b, 1, 1, t]
        && rows == b * t;
    if !fits {
        return Ok(None);
    }
    let dims = replens_kernels::AttentionDims {
        batch: b,
        seq: t,
        heads,
        kv_heads: heads,
        head_dim: width / heads,
    };
    with_f64_or_f32(
        &[q, k, v, key_bias],
        q.dims(),
        |s, out| replens_kernels::encoder_attention(s[0], s[1], s[2], s[3], scale, dims, out),
        |s, out| replens_kernels::encoder_attention_f32(s[0], s[1], s[2], s[3], scale, dims, out),
    )
}

/// Strides of a batched matrix operand: (batch count, batch stride, row stride, column stride),
/// when its leading dimensions collapse into one batch dimension with a constant stride.
fn batch_strides(dims: &[usize], stride: &[usize]) -> Option<(usize, usize, usize, usize)> {
    let r = dims.len();
    if r < 3 {
        return None;
    }
    let batches: usize = dims[..r - 2].iter().product();
    for i in 0..r - 3 {
        if dims[i + 1] > 1 && stride[i] != stride[i + 1] * dims[i + 1] {
            return None;
        }
    }
    Some((batches, stride[r - 3], stride[r - 2], stride[r - 1]))
}

/// `a · b` for batched operands `(…, m, k)` and `(…, k, n)` with the same leading dimensions (any
/// strides, e.g. a transposed view), as candle computes it — one `gemm` call per batch element
/// with the same operands, so the same values — but with the batch elements (the attention's
/// heads) shared among rayon's threads, each product on one thread, instead of every small
/// product split across all threads in turn. `None` when the operands are not plain f32 / f64
/// CPU tensors, need broadcasting, or have fewer than 2 batch elements or a number that does not
/// share out evenly among the threads.
pub(crate) fn batched_matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Option<Tensor>> {
    match a.dtype() {
        DType::F32 => batched_matmul_as::<f32>(a, b),
        DType::F64 => batched_matmul_as::<f64>(a, b),
        _ => Ok(None),
    }
}

fn batched_matmul_as<T: WithDType>(a: &Tensor, b: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let (ad, bd) = (a.dims(), b.dims());
    let r = ad.len();
    if !eligible(a, T::DTYPE)
        || !eligible(b, T::DTYPE)
        || r < 3
        || bd.len() != r
        || ad[..r - 2] != bd[..r - 2]
        || ad[r - 1] != bd[r - 2]
    {
        return Ok(None);
    }
    let (m, k, n) = (ad[r - 2], ad[r - 1], bd[r - 1]);
    let (a_guard, a_layout) = a.storage_and_layout();
    let (b_guard, b_layout) = b.storage_and_layout();
    let (Some(sa), Some(sb)) = (
        batch_strides(ad, a_layout.stride()),
        batch_strides(bd, b_layout.stride()),
    ) else {
        return Ok(None);
    };
    let batches = sa.0;
    // Whole products per thread: with, say, 9 heads on 2 threads one thread would do 5 products
    // while candle's split of each product keeps both busy, so the batch must divide evenly (or
    // be large enough that the uneven share is small).
    let threads = rayon::current_num_threads();
    let balanced = batches.is_multiple_of(threads) || batches >= 8 * threads;
    if batches < 2 || !balanced || m == 0 || n == 0 || k == 0 {
        return Ok(None);
    }
    let (candle_core::Storage::Cpu(ca), candle_core::Storage::Cpu(cb)) = (&*a_guard, &*b_guard)
    else {
        return Ok(None);
    };
    let (da, db) = (ca.as_slice::<T>()?, cb.as_slice::<T>()?);
    // The last element each operand addresses must lie inside its storage.
    let last = |start: usize, (count, bs, rs, cs): (usize, usize, usize, usize), rows, cols| {
        start + (count - 1) * bs + (rows - 1) * rs + (cols - 1) * cs
    };
    if last(a_layout.start_offset(), sa, m, k) >= da.len()
        || last(b_layout.start_offset(), sb, k, n) >= db.len()
    {
        candle_core::bail!("batched matmul: operand layout outside its storage");
    }
    let (pa, pb) = (
        SendPtr(da[a_layout.start_offset()..].as_ptr()),
        SendPtr(db[b_layout.start_offset()..].as_ptr()),
    );
    let mut out = vec![T::zero(); batches * m * n];
    out.par_chunks_mut(m * n).enumerate().for_each(|(i, dst)| {
        let (pa, pb) = (&pa, &pb);
        // SAFETY: batch i of each operand starts i batch strides in and spans the rows and
        // columns checked against the storage length above; dst is this batch's m × n block.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                pa.0.add(i * sa.1),
                sa.3 as isize,
                sa.2 as isize,
                pb.0.add(i * sb.1),
                sb.3 as isize,
                sb.2 as isize,
                T::zero(),
                T::one(),
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
    drop((a_guard, b_guard));
    let mut shape = ad[..r - 1].to_vec();
    shape.push(n);
    Ok(Some(Tensor::from_vec(out, shape, a.device())?))
}

/// `a.matmul(b)` through [`batched_matmul`] where it applies, else candle's.
pub(crate) fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    match batched_matmul(a, b)? {
        Some(y) => Ok(y),
        None => a.matmul(b),
    }
}

/// A read-only pointer shared with rayon's threads (the storage guards outlive the loop).
struct SendPtr<T>(*const T);
// SAFETY: only read through, while the storage read guards are held by the caller.
unsafe impl<T> Sync for SendPtr<T> {}
unsafe impl<T> Send for SendPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    use candle_core::{Device, Var, D};

    #[test]
    fn batched_matmul_equals_candles_bit_for_bit() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            // attention-sized heads and a small odd case; b contiguous and as a transposed view
            let threads = rayon::current_num_threads();
            for (batch, heads, m, k, n) in [(threads, 4, 128, 64, 128), (threads * 2, 1, 5, 7, 3)] {
                let a = Tensor::randn(0f32, 1., (batch, heads, m, k), &dev)?.to_dtype(dtype)?;
                let b = Tensor::randn(0f32, 1., (batch, heads, k, n), &dev)?.to_dtype(dtype)?;
                let bt = Tensor::randn(0f32, 1., (batch, heads, n, k), &dev)?.to_dtype(dtype)?;
                for rhs in [b, bt.t()?] {
                    let fast = batched_matmul(&a, &rhs)?.expect("eligible");
                    let want = a.matmul(&rhs)?;
                    assert_eq!(fast.dims(), want.dims());
                    let diff = (fast.to_dtype(DType::F64)? - want.to_dtype(DType::F64)?)?
                        .abs()?
                        .flatten_all()?
                        .max(0)?
                        .to_scalar::<f64>()?;
                    assert_eq!(diff, 0.0, "{dtype:?} {batch}x{heads}x{m}x{k}x{n}");
                }
            }
        }
        // Not taken: heads that do not share out evenly, a tracked operand, broadcasting, a single
        // matrix.
        let threads = rayon::current_num_threads();
        if threads > 1 {
            let uneven = Tensor::randn(0f32, 1., (threads + 1, 4, 3), &dev)?;
            let rhs = Tensor::randn(0f32, 1., (threads + 1, 3, 5), &dev)?;
            assert!(batched_matmul(&uneven, &rhs)?.is_none());
        }
        let a = Tensor::randn(0f32, 1., (2, 4, 3), &dev)?;
        let v = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 5), &dev)?)?;
        assert!(batched_matmul(&a, v.as_tensor())?.is_none());
        let b1 = Tensor::randn(0f32, 1., (1, 3, 5), &dev)?;
        assert!(batched_matmul(&a, &b1)?.is_none());
        let single = Tensor::randn(0f32, 1., (4, 3), &dev)?;
        assert!(batched_matmul(&single, &Tensor::randn(0f32, 1., (3, 5), &dev)?)?.is_none());
        Ok(())
    }

    fn random(shape: &[usize], seed: u64) -> Tensor {
        // A fixed xorshift stream with a few large values, as SmolLM2's residual stream has.
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let data: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let v = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                if i % 97 == 0 {
                    v * 2.0e4
                } else {
                    v * 3.0
                }
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    // Sizes on both sides of the kernels' parallel threshold (64k elements).
    const SHAPES: [[usize; 3]; 2] = [[1, 7, 576], [2, 128, 576]];

    #[test]
    fn add_and_silu_mul_equal_candles_ops_bit_for_bit() {
        for shape in SHAPES {
            let (a, b) = (random(&shape, 1), random(&shape, 2));
            let sum = add(&a, &b)
                .unwrap()
                .expect("f32 CPU tensors take the fast path");
            assert_eq!(values(&sum), values(&(&a + &b).unwrap()));
            let product = silu_mul(&a, &b).unwrap().unwrap();
            let expected = (candle_nn::ops::silu(&a).unwrap() * &b).unwrap();
            assert_eq!(values(&product), values(&expected));
        }
    }

    #[test]
    fn rms_norm_matches_an_f64_reference() {
        for shape in SHAPES {
            let x = random(&shape, 3);
            let weight = random(&[576], 4);
            let y = rms_norm(&x, &weight, 1e-5).unwrap().unwrap();
            let x64 = x.to_dtype(DType::F64).unwrap();
            let inv = (x64.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-5)
                .unwrap()
                .sqrt()
                .unwrap()
                .recip()
                .unwrap();
            let expected = x64
                .broadcast_mul(&inv)
                .unwrap()
                .broadcast_mul(&weight.to_dtype(DType::F64).unwrap())
                .unwrap();
            let expected: Vec<f64> = expected.flatten_all().unwrap().to_vec1().unwrap();
            for (got, want) in values(&y).iter().zip(&expected) {
                // f32 rounding of x * inv * w: a few ulps of the result
                assert!(
                    (*got as f64 - want).abs() <= 4.0 * f32::EPSILON as f64 * want.abs().max(1e-30),
                    "{got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn blocked_matmul_equals_separate_products_added_bit_for_bit() {
        for rows in [5, 300] {
            let x = random(&[rows, 600], 5);
            let blocks: Vec<Tensor> = [256, 256, 88]
                .iter()
                .enumerate()
                .map(|(i, &k)| random(&[k, 130], 10 + i as u64))
                .collect();
            let y = blocked_matmul(&x, &blocks, 130).unwrap().unwrap();
            let mut start = 0;
            let mut expected: Option<Tensor> = None;
            for block in &blocks {
                let len = block.dim(0).unwrap();
                let part = x
                    .narrow(1, start, len)
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .matmul(block)
                    .unwrap();
                expected = Some(match expected {
                    None => part,
                    Some(acc) => (acc + part).unwrap(),
                });
                start += len;
            }
            assert_eq!(values(&y), values(&expected.unwrap()));
        }
    }

    #[test]
    fn dense_matmul_equals_candles_matmul_bit_for_bit() {
        // MiniLM's shapes (1536 inputs are summed in several depth blocks by gemm), below and
        // above the row count from which the columns are shared among threads, in f32 and f64.
        for (rows, in_dim, out_dim) in [(7, 384, 1536), (300, 1536, 384), (128, 384, 384)] {
            let x = random(&[rows, in_dim], 21);
            let w_t = random(&[in_dim, out_dim], 22);
            for dtype in [DType::F32, DType::F64] {
                let (x, w_t) = (x.to_dtype(dtype).unwrap(), w_t.to_dtype(dtype).unwrap());
                let y = dense_matmul(&x, &w_t).unwrap().unwrap();
                let expected = x.matmul(&w_t).unwrap();
                let bits = |t: &Tensor| -> Vec<u64> {
                    let t = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
                    t.to_vec1::<f64>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect()
                };
                assert_eq!(
                    bits(&y),
                    bits(&expected),
                    "{rows} x {in_dim} x {out_dim} {dtype:?}"
                );
            }
        }
        let x = random(&[4, 10], 23);
        assert!(dense_matmul(&x, &random(&[9, 3], 24)).unwrap().is_none());
        // no inputs: zeros of the right shape, as candle's matmul gives
        let (x, w_t) = (random(&[5, 0], 25), random(&[0, 3], 26));
        let y = dense_matmul(&x, &w_t).unwrap().unwrap();
        assert_eq!((y.dims(), values(&y)), (&[5, 3][..], vec![0.0; 15]));
    }

    #[test]
    fn blocks_that_do_not_make_the_weight_are_an_error() {
        let x = random(&[4, 10], 6);
        let err = blocked_matmul(&x, &[random(&[6, 3], 7)], 3).unwrap_err();
        assert!(
            err.to_string().contains("do not make a (10, 3) weight"),
            "{err}"
        );
    }

    #[test]
    fn other_dtypes_and_autograd_take_the_generic_path() {
        let a = random(&[2, 3], 8);
        assert!(add(
            &a.to_dtype(DType::F64).unwrap(),
            &a.to_dtype(DType::F64).unwrap()
        )
        .unwrap()
        .is_none());
        let var = Var::from_tensor(&a).unwrap();
        assert!(add(var.as_tensor(), &a).unwrap().is_none());
        let tracked = (var.as_tensor() * 2.0).unwrap();
        assert!(silu_mul(&tracked, &a).unwrap().is_none());
        assert!(add(&a, &random(&[3, 2], 9)).unwrap().is_none());
    }
}
